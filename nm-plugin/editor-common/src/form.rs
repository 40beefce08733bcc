//! The editor's fields as plain values, loaded from and written to a connection's vpn.data /
//! vpn.secrets. Validation is nm-tsp's: [`Form::validate`] builds the vpn.data the fields
//! describe and runs it through [`parse_vpn_data`], and reports the first problem with the
//! key it belongs to, so the editor can put the message under that field.

use std::collections::BTreeMap;

use tsp_config::ConfigError;
use tsp_config::GogocConfig;
use tsp_config::names::{DATA_KEYS, KEY_MTU, KEY_PASSWORD_FLAGS, SECRET_PASSWORD, SecretFlags};
use tsp_config::vpn_data::{parse_vpn_data, to_vpn_data};

/// Authentication choices: vpn.data value and what the editor shows.
pub const AUTH_METHODS: [(&str, &str); 5] = [
    ("anonymous", "Anonymous (no account)"),
    ("any", "Any (the strongest the broker offers)"),
    ("digest-md5", "DIGEST-MD5"),
    ("passdss-3des-1", "PASSDSS-3DES-1"),
    ("plain", "PLAIN (password sent in clear)"),
];

/// Tunnel modes: vpn.data value and label.
pub const TUNNEL_MODES: [(&str, &str); 4] = [
    ("v6anyv4", "IPv6 over IPv4, UDP behind NAT (v6anyv4)"),
    ("v6v4", "IPv6 in IPv4, protocol 41 (v6v4)"),
    ("v6udpv4", "IPv6 in IPv4 UDP (v6udpv4)"),
    ("v4v6", "IPv4 in IPv6 (v4v6)"),
];

/// Where NetworkManager keeps the password: `password-flags` value and label, in the order
/// GNOME's own editors offer them.
pub const PASSWORD_STORAGE: [(SecretFlags, &str); 4] = [
    (SecretFlags::AGENT_OWNED, "Store the password only for this user"),
    (SecretFlags::NONE, "Store the password for all users"),
    (SecretFlags::NOT_SAVED, "Ask for this password every time"),
    (SecretFlags::NOT_REQUIRED, "The password is not required"),
];

/// Shown under the authentication choice when PLAIN is picked.
pub const PLAIN_WARNING: &str = "PLAIN sends the password to the broker in clear text: anyone on the path can read it.";

/// vpn.data keys the form has a field for (the others are kept as they were).
pub const FORM_KEYS: [&str; 16] = [
    "server",
    "auth-method",
    "username",
    "tunnel-mode",
    "host-type",
    "prefix-length",
    "lan-interface",
    "dns-server",
    "keepalive",
    "keepalive-interval",
    "client-v4",
    "client-v6",
    "always-use-same-server",
    KEY_MTU,
    KEY_PASSWORD_FLAGS,
    // Not a vpn.data key: the field of the secret.
    SECRET_PASSWORD,
];

/// What the editor shows. Text fields hold what the user typed; an empty one means "the
/// default" and writes no key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Form {
    pub server: String,
    /// One of [`AUTH_METHODS`].
    pub auth_method: String,
    pub username: String,
    pub password: String,
    /// One of [`PASSWORD_STORAGE`].
    pub password_flags: SecretFlags,
    /// One of [`TUNNEL_MODES`].
    pub tunnel_mode: String,
    /// host-type=router: ask for a prefix and advertise it on `lan_interface`.
    pub router: bool,
    pub prefix_length: String,
    pub lan_interface: String,
    /// DNS servers for the reverse delegation, separated by spaces, commas or colons.
    pub dns_server: String,
    pub keepalive: bool,
    pub keepalive_interval: String,
    pub client_v4: String,
    pub client_v6: String,
    pub always_use_same_server: bool,
    pub mtu: String,
    /// vpn.data keys without a field (proxy-client, allow-plain, retry delays, or anything
    /// else the connection had), written back as they were.
    pub extra: BTreeMap<String, String>,
}

/// A problem with the form: the field it belongs to (a vpn.data key, or `password`; `None`
/// when no field shows it) and parse_vpn_data's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub key: Option<String>,
    pub message: String,
}

/// What [`Form::validate`] produces: the connection's new vpn.data and vpn.secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub data: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, String>,
}

impl Default for Form {
    fn default() -> Self {
        Self::load(&BTreeMap::new(), &BTreeMap::new())
    }
}

fn choice(value: Option<&str>, choices: &[(&str, &str)], fallback: &str) -> String {
    value
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| choices.iter().any(|(c, _)| c == v))
        .unwrap_or_else(|| fallback.to_owned())
}

/// Reads a yes/no the way gogoc does (case-insensitive `yes`/`no`), else `default`.
fn yes_no(value: Option<&str>, default: bool) -> bool {
    match value.map(str::trim) {
        Some(v) if v.eq_ignore_ascii_case("yes") => true,
        Some(v) if v.eq_ignore_ascii_case("no") => false,
        _ => default,
    }
}

impl Form {
    /// The fields of a connection. A connection without any vpn.data is a new one: its
    /// password is offered for this user's keyring, as GNOME's editors do.
    pub fn load(data: &BTreeMap<String, String>, secrets: &BTreeMap<String, String>) -> Self {
        let d = GogocConfig::default();
        let get = |k: &str| data.get(k).map(String::as_str);
        let text = |k: &str| get(k).unwrap_or_default().to_owned();
        // The effective method when none is written depends on the user name (see
        // parse_vpn_data); take it from there when the data is valid.
        let parsed = parse_vpn_data(data).ok();
        let auth_fallback = match &parsed {
            Some(s) => s.cfg.auth_method.as_str(),
            None if get("username").is_none_or(|u| u.trim().is_empty()) => "anonymous",
            None => "any",
        };
        // The editor offers one choice: the strongest flag set wins.
        let password_flags = match get(KEY_PASSWORD_FLAGS).and_then(|f| f.trim().parse::<u32>().ok()) {
            Some(f) if f & SecretFlags::NOT_REQUIRED.bits() != 0 => SecretFlags::NOT_REQUIRED,
            Some(f) if f & SecretFlags::NOT_SAVED.bits() != 0 => SecretFlags::NOT_SAVED,
            Some(f) if f & SecretFlags::AGENT_OWNED.bits() != 0 => SecretFlags::AGENT_OWNED,
            Some(_) => SecretFlags::NONE,
            None if data.is_empty() => SecretFlags::AGENT_OWNED,
            None => SecretFlags::NONE,
        };
        let extra = data
            .iter()
            .filter(|(k, _)| !FORM_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Form {
            server: text("server"),
            auth_method: choice(get("auth-method"), &AUTH_METHODS, auth_fallback),
            username: text("username"),
            password: secrets.get(SECRET_PASSWORD).cloned().unwrap_or_default(),
            password_flags,
            tunnel_mode: choice(get("tunnel-mode"), &TUNNEL_MODES, d.tunnel_mode.as_str()),
            router: get("host-type").is_some_and(|h| h.trim().eq_ignore_ascii_case("router")),
            prefix_length: text("prefix-length"),
            lan_interface: text("lan-interface"),
            dns_server: text("dns-server"),
            keepalive: yes_no(get("keepalive"), d.keepalive),
            keepalive_interval: text("keepalive-interval"),
            client_v4: text("client-v4"),
            client_v6: text("client-v6"),
            always_use_same_server: yes_no(get("always-use-same-server"), d.always_use_same_server),
            mtu: text(KEY_MTU),
            extra,
        }
    }

    /// Whether the authentication method uses the password at all.
    pub fn uses_password(&self) -> bool {
        self.auth_method != "anonymous"
    }

    /// Whether the password entry means anything: a method that uses it, stored somewhere.
    pub fn password_editable(&self) -> bool {
        self.uses_password() && matches!(self.password_flags, SecretFlags::NONE | SecretFlags::AGENT_OWNED)
    }

    /// Whether to show [`PLAIN_WARNING`].
    pub fn plain_warning(&self) -> bool {
        self.auth_method == "plain"
    }

    /// The vpn.data the fields say, before validation: typed text as it is (trimmed), empty
    /// fields left out, the DNS list joined with `:` as gogoc writes it.
    pub fn raw_data(&self) -> BTreeMap<String, String> {
        let mut m = self.extra.clone();
        let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
        let mut put = |k: &str, v: &str| {
            let v = v.trim();
            if !v.is_empty() {
                m.insert(k.to_owned(), v.to_owned());
            }
        };
        put("server", &self.server);
        put("auth-method", &self.auth_method);
        put("username", &self.username);
        put("tunnel-mode", &self.tunnel_mode);
        put("host-type", if self.router { "router" } else { "host" });
        put("prefix-length", &self.prefix_length);
        put("lan-interface", &self.lan_interface);
        let dns: Vec<&str> = self
            .dns_server
            .split(|c: char| c == ',' || c == ':' || c == ';' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .collect();
        put("dns-server", &dns.join(":"));
        put("keepalive", &yes_no(self.keepalive));
        put("keepalive-interval", &self.keepalive_interval);
        put("client-v4", &self.client_v4);
        put("client-v6", &self.client_v6);
        put("always-use-same-server", &yes_no(self.always_use_same_server));
        put(KEY_MTU, &self.mtu);
        put(KEY_PASSWORD_FLAGS, &self.password_flags.to_string());
        m
    }

    /// Checks every field with nm-tsp's rules; on success, the vpn.data (only keys that
    /// differ from their defaults) and vpn.secrets to store. The password is stored only
    /// when NetworkManager or the user's agent keeps it (flags 0 or 1).
    pub fn validate(&self) -> Result<Output, FieldError> {
        let settings = parse_vpn_data(&self.raw_data()).map_err(|e| field_error(&e))?;
        let mut secrets = BTreeMap::new();
        if self.password_editable() {
            if !self.password.is_empty() {
                secrets.insert(SECRET_PASSWORD.to_owned(), self.password.clone());
            }
            // System-owned means NetworkManager has to have it; an agent may still ask.
            if !secrets.is_empty() || self.password_flags == SecretFlags::NONE {
                settings.clone().with_secrets(&secrets).map_err(|e| field_error(&e))?;
            }
        }
        let data = to_vpn_data(&settings.cfg, settings.mtu, settings.password_flags);
        // Keys to_vpn_data does not know stay as the connection had them (parse_vpn_data
        // refused unknown ones above, so there are none today).
        Ok(Output { data, secrets })
    }
}

/// The field a configuration error belongs to, with its message.
pub fn field_error(e: &ConfigError) -> FieldError {
    let key = match e {
        ConfigError::UnknownKey { key, .. }
        | ConfigError::BadValue { key, .. }
        | ConfigError::OutOfRange { key, .. }
        | ConfigError::ValueTooLong { key, .. }
        | ConfigError::ObsoleteKey { key, .. }
        | ConfigError::DuplicateKey { key, .. }
        | ConfigError::MissingKey { key, .. } => Some(key.clone()),
        ConfigError::ControlChar { key, .. } => key.clone(),
        ConfigError::Conflict { keys, .. } => keys
            .iter()
            .find(|k| *k == SECRET_PASSWORD)
            .or_else(|| keys.first())
            .cloned(),
        _ => None,
    };
    // The file's own rules name gogoc.conf keys; the fields are named by vpn.data keys.
    let key = key.map(|k| match DATA_KEYS.iter().find(|(_, g)| *g == k) {
        Some((d, _)) if !DATA_KEYS.iter().any(|(dk, _)| *dk == k) => (*d).to_owned(),
        _ if k == "passwd" => SECRET_PASSWORD.to_owned(),
        _ => k,
    });
    let key = key.filter(|k| FORM_KEYS.contains(&k.as_str()));
    FieldError {
        key,
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn new_connection_defaults() {
        let f = Form::default();
        assert_eq!(f.auth_method, "anonymous");
        assert_eq!(f.tunnel_mode, "v6anyv4");
        assert_eq!(f.password_flags, SecretFlags::AGENT_OWNED);
        assert!(f.keepalive && !f.router);
        let e = f.validate().unwrap_err();
        assert_eq!(e.key.as_deref(), Some("server"));
    }

    #[test]
    fn load_and_write_back_everything() {
        let data = map(&[
            ("server", "broker.example:3653"),
            ("auth-method", "digest-md5"),
            ("username", "alice"),
            ("tunnel-mode", "v6v4"),
            ("host-type", "router"),
            ("prefix-length", "56"),
            ("lan-interface", "eth1"),
            ("dns-server", "ns1.example:ns2.example"),
            ("keepalive", "no"),
            ("keepalive-interval", "10"),
            ("client-v4", "192.0.2.2"),
            ("client-v6", "2001:db8::2"),
            ("always-use-same-server", "yes"),
            ("allow-plain", "yes"),
            ("retry-delay", "5"),
            ("mtu", "1400"),
            ("password-flags", "1"),
        ]);
        let f = Form::load(&data, &map(&[("password", "pw")]));
        assert_eq!(f.extra, map(&[("allow-plain", "yes"), ("retry-delay", "5")]));
        let out = f.validate().unwrap();
        assert_eq!(out.data, data);
        assert_eq!(out.secrets, map(&[("password", "pw")]));
    }

    #[test]
    fn defaults_are_not_written() {
        let f = Form {
            server: " 192.0.2.1 ".into(),
            prefix_length: "64".into(),
            keepalive_interval: "30".into(),
            mtu: "1280".into(),
            password_flags: SecretFlags::NONE,
            ..Form::default()
        };
        let out = f.validate().unwrap();
        assert_eq!(out.data, map(&[("server", "192.0.2.1"), ("auth-method", "anonymous")]));
        assert!(out.secrets.is_empty());
    }

    #[test]
    fn errors_land_on_their_field() {
        type Change = Box<dyn Fn(&mut Form)>;
        let base = Form {
            server: "192.0.2.1".into(),
            ..Form::default()
        };
        let cases: Vec<(Change, &str, &str)> = vec![
            (
                Box::new(|f| f.prefix_length = "200".into()),
                "prefix-length",
                "out of range",
            ),
            (
                Box::new(|f| f.prefix_length = "0".into()),
                "prefix-length",
                "prefix-length",
            ),
            (Box::new(|f| f.router = true), "lan-interface", "needs lan-interface"),
            (Box::new(|f| f.mtu = "9000".into()), "mtu", "\"mtu\""),
            (Box::new(|f| f.client_v4 = "300.1.1.1".into()), "client-v4", "client-v4"),
            (
                Box::new(|f| f.keepalive_interval = "x".into()),
                "keepalive-interval",
                "keepalive-interval",
            ),
            (Box::new(|f| f.server = "[2001:db8::1".into()), "server", "server"),
            (
                Box::new(|f| {
                    f.auth_method = "plain".into();
                    f.username = "u".into();
                    f.password_flags = SecretFlags::NONE;
                }),
                "password",
                "needs a password",
            ),
            (
                Box::new(|f| f.lan_interface = "bad name".into()),
                "lan-interface",
                "lan-interface",
            ),
        ];
        for (change, key, text) in cases {
            let mut f = base.clone();
            change(&mut f);
            let e = f.validate().unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{e:?}");
            assert!(e.message.contains(text), "{e:?} lacks {text}");
        }
    }

    #[test]
    fn password_storage() {
        let mut f = Form {
            server: "b".into(),
            auth_method: "digest-md5".into(),
            username: "u".into(),
            password: "pw".into(),
            ..Form::default()
        };
        for (flags, stored) in [(0, true), (1, true), (2, false), (4, false)] {
            f.password_flags = SecretFlags::from_bits(flags).unwrap();
            let out = f.validate().unwrap();
            assert_eq!(out.data.get("password-flags"), Some(&flags.to_string()));
            assert_eq!(out.secrets.contains_key("password"), stored, "flags {flags}");
        }
        // Agent-owned without a password is fine (the agent asks); system-owned is not.
        f.password.clear();
        f.password_flags = SecretFlags::AGENT_OWNED;
        assert!(f.validate().is_ok());
        f.password_flags = SecretFlags::NONE;
        assert_eq!(f.validate().unwrap_err().key.as_deref(), Some("password"));
        // Anonymous stores no password even if one was typed.
        f.auth_method = "anonymous".into();
        f.password = "pw".into();
        assert!(f.validate().unwrap().secrets.is_empty());
    }

    #[test]
    fn dns_list_and_unknown_keys() {
        let mut f = Form {
            server: "b".into(),
            dns_server: "ns1.example, ns2.example".into(),
            ..Form::default()
        };
        assert_eq!(f.validate().unwrap().data["dns-server"], "ns1.example:ns2.example");
        f.extra.insert("colour".into(), "blue".into());
        let e = f.validate().unwrap_err();
        assert_eq!(e.key, None);
        assert!(e.message.contains("colour"), "{e:?}");
    }
}
