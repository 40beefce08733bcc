//! NetworkManager's `vpn.data` / `vpn.secrets` of a tsp connection, typed and validated.
//!
//! The keys mirror gogoc.conf's (lower case, dash-separated), so each value is checked by the
//! same rules as the file; messages name the vpn.data key. Pure: maps in, settings out. The
//! mapping back ([`to_vpn_data`]) is what import/export and the editor write.
//!
//! See docs/nm-plugin.md §0, §5; docs/tsp-wire.md §9.

use std::collections::BTreeMap;

use super::error::{ConfigError, Location};
use super::gogoc::{self, GogocConfig, edit_distance};
use tsp_proto::secret::Secret;
use tsp_proto::types::{AuthMethod, HostType, TunnelMode};

use crate::names::{
    DATA_KEYS, KEY_AUTH_METHOD, KEY_MTU, KEY_PASSWORD_FLAGS, SECRET_PASSWORD, SECRET_PLACEHOLDER, SecretFlags,
};

/// Where vpn.data problems are reported from.
pub const ORIGIN: &str = "vpn.data";

pub const DEFAULT_MTU: u16 = 1280;
/// Largest MTU per outer path of 1500 bytes: IPv4 header 20 (v6v4), + UDP 8 (v6udpv4), IPv6
/// header 40 (v4v6).
const MAX_MTU: u16 = 1480;

/// A tsp connection as NetworkManager describes it.
#[derive(Debug, Clone)]
pub struct VpnSettings {
    /// The settings in gogoc.conf's terms (interface, log and file keys at their defaults).
    pub cfg: GogocConfig,
    pub mtu: u16,
    pub password_flags: SecretFlags,
}

fn at() -> Location {
    Location {
        file: ORIGIN.to_owned(),
        line: None,
    }
}

fn conflict(keys: &[&str], message: String) -> ConfigError {
    ConfigError::Conflict {
        at: at(),
        keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        message,
    }
}

fn unknown(key: &str) -> ConfigError {
    let known = DATA_KEYS.iter().map(|(k, _)| *k).chain([KEY_MTU, KEY_PASSWORD_FLAGS]);
    let best = known.min_by_key(|k| edit_distance(k, key));
    let hint = match best {
        Some(k) if edit_distance(k, key) <= 2 => format!(" (did you mean \"{k}\"?)"),
        _ => " (not a tsp setting)".to_owned(),
    };
    let shown: String = key.chars().take(64).flat_map(char::escape_default).collect();
    ConfigError::UnknownKey {
        at: at(),
        key: shown,
        hint,
    }
}

fn bad(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::BadValue {
        at: at(),
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// Reads vpn.data (the password comes later, see [`VpnSettings::with_secrets`]). Unknown
/// keys are refused with a suggestion, so a typo never silently falls back to a default.
pub fn parse_vpn_data(data: &BTreeMap<String, String>) -> Result<VpnSettings, ConfigError> {
    let mut cfg = GogocConfig::default();
    // NetworkManager owns the interface; the name is chosen per connection.
    let mut mtu = DEFAULT_MTU;
    let mut password_flags = SecretFlags::default();
    let mut auth_given = false;
    for (key, value) in data {
        let value = value.trim();
        if let Some((_, gogoc_key)) = DATA_KEYS.iter().find(|(k, _)| k == key) {
            gogoc::set_value(&mut cfg, gogoc_key, value, at(), key)?;
            auth_given |= key == KEY_AUTH_METHOD;
        } else if key == KEY_MTU {
            mtu = match value.parse::<u16>() {
                Ok(m) if (DEFAULT_MTU..=MAX_MTU).contains(&m) => m,
                _ => {
                    return Err(ConfigError::OutOfRange {
                        at: at(),
                        key: key.clone(),
                        value: value.chars().take(16).collect(),
                        min: DEFAULT_MTU.into(),
                        max: MAX_MTU.into(),
                    });
                }
            };
        } else if key == KEY_PASSWORD_FLAGS {
            password_flags = value.parse::<SecretFlags>().map_err(|e| bad(key, e.to_string()))?;
        } else {
            return Err(unknown(key));
        }
    }
    // Without a user name and an explicit method, the broker is used anonymously (gogoc's
    // default `any` would ask for a password nobody set).
    if !auth_given && cfg.userid.is_empty() {
        cfg.auth_method = AuthMethod::Anonymous;
    }
    let settings = VpnSettings {
        cfg,
        mtu,
        password_flags,
    };
    settings.check()?;
    Ok(settings)
}

impl VpnSettings {
    /// Whether a password has to be supplied (by NetworkManager, an agent or the user).
    pub fn needs_password(&self) -> bool {
        self.cfg.auth_method.needs_password() && !self.password_flags.contains(SecretFlags::NOT_REQUIRED)
    }

    /// Takes the password from vpn.secrets; an empty or absent one is an error only when
    /// [`needs_password`](Self::needs_password).
    pub fn with_secrets(mut self, secrets: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        for key in secrets.keys() {
            if key != SECRET_PASSWORD && key != SECRET_PLACEHOLDER {
                let shown: String = key.chars().take(64).flat_map(char::escape_default).collect();
                return Err(ConfigError::UnknownKey {
                    at: Location {
                        file: "vpn.secrets".to_owned(),
                        line: None,
                    },
                    key: shown,
                    hint: " (the only tsp secret is \"password\")".to_owned(),
                });
            }
        }
        let password = secrets.get(SECRET_PASSWORD).map(String::as_str).unwrap_or_default();
        if password.is_empty() {
            if self.needs_password() {
                return Err(conflict(
                    &[KEY_AUTH_METHOD, SECRET_PASSWORD],
                    format!(
                        "auth-method {} needs a password and none was given",
                        self.cfg.auth_method
                    ),
                ));
            }
            return Ok(self);
        }
        gogoc::set_value(
            &mut self.cfg,
            "passwd",
            password,
            Location {
                file: "vpn.secrets".to_owned(),
                line: None,
            },
            SECRET_PASSWORD,
        )?;
        Ok(self)
    }

    /// Whether vpn.secrets lacks the password this connection needs.
    pub fn missing_password(&self, secrets: &BTreeMap<String, String>) -> bool {
        self.needs_password() && secrets.get(SECRET_PASSWORD).is_none_or(|p| p.is_empty())
    }

    /// Rules between keys, named as in vpn.data; the file's own rules stand behind them.
    fn check(&self) -> Result<(), ConfigError> {
        let c = &self.cfg;
        if c.server.is_none() {
            return Err(ConfigError::MissingKey {
                at: at(),
                key: "server".to_owned(),
                why: "the address of the tunnel broker is needed to connect",
            });
        }
        if c.proxy_client && c.tunnel_mode == TunnelMode::V6UdpV4 {
            return Err(conflict(
                &["proxy-client", "tunnel-mode"],
                "proxy-client=yes cannot be used with tunnel-mode=v6udpv4".to_owned(),
            ));
        }
        if c.proxy_client && c.keepalive {
            return Err(conflict(
                &["proxy-client", "keepalive"],
                "proxy-client=yes cannot be used with keepalive=yes (set keepalive=no)".to_owned(),
            ));
        }
        if c.keepalive && c.keepalive_interval == 0 {
            return Err(conflict(
                &["keepalive-interval", "keepalive"],
                "keepalive-interval must be greater than 0 when keepalive=yes".to_owned(),
            ));
        }
        if c.host_type == HostType::Router && c.if_prefix.is_empty() {
            return Err(conflict(
                &["lan-interface", "host-type"],
                "host-type=router needs lan-interface, the interface to advertise the prefix on".to_owned(),
            ));
        }
        if c.host_type == HostType::Router && c.tunnel_mode == TunnelMode::V4V6 {
            return Err(conflict(
                &["host-type", "tunnel-mode"],
                "host-type=router delegates an IPv6 prefix; it cannot be used with tunnel-mode=v4v6".to_owned(),
            ));
        }
        if c.retry_delay > c.retry_delay_max {
            return Err(conflict(
                &["retry-delay", "retry-delay-max"],
                format!(
                    "retry-delay ({}) is greater than retry-delay-max ({})",
                    c.retry_delay, c.retry_delay_max
                ),
            ));
        }
        let mtu_max = match c.tunnel_mode {
            TunnelMode::V6UdpV4 | TunnelMode::V6AnyV4 => MAX_MTU - 8,
            TunnelMode::V4V6 => MAX_MTU - 20,
            TunnelMode::V6V4 => MAX_MTU,
        };
        if self.mtu > mtu_max {
            return Err(conflict(
                &[KEY_MTU, "tunnel-mode"],
                format!(
                    "mtu {} does not fit tunnel-mode={} over a 1500-byte path (at most {mtu_max})",
                    self.mtu, c.tunnel_mode
                ),
            ));
        }
        // Everything else (lengths, characters) was checked per key; this is the backstop.
        // The password arrives separately (and may never, for a profile whose secret is
        // not required), so a stand-in keeps the file's "password needed" rule quiet.
        let mut c = c.clone();
        if c.passwd.is_empty() {
            c.passwd = Secret::new("-");
        }
        c.validate(std::path::Path::new(ORIGIN))
    }
}

/// The vpn.data of a configuration: every key whose value differs from what an absent key
/// means, so that reading it back gives the same settings. `mtu` is written when not 1280.
pub fn to_vpn_data(cfg: &GogocConfig, mtu: u16, password_flags: SecretFlags) -> BTreeMap<String, String> {
    let d = GogocConfig::default();
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        m.insert(k.to_owned(), v);
    };
    // Written always: the default depends on whether a user name is set.
    put(KEY_AUTH_METHOD, cfg.auth_method.to_string());
    // Every other key as gogoc.conf writes it, when it differs from what an absent key means.
    for (key, gogoc_key) in DATA_KEYS {
        if key != KEY_AUTH_METHOD
            && let Some(v) = gogoc::non_default_value(cfg, &d, gogoc_key)
        {
            put(key, v);
        }
    }
    if mtu != DEFAULT_MTU {
        put(KEY_MTU, mtu.to_string());
    }
    if cfg.auth_method.needs_password() || password_flags != SecretFlags::default() {
        put(KEY_PASSWORD_FLAGS, password_flags.to_string());
    }
    m
}

/// The password as NetworkManager's vpn.secrets carries it.
pub fn to_vpn_secrets(password: &Secret) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    if !password.is_empty() {
        m.insert(SECRET_PASSWORD.to_owned(), password.expose().to_owned());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn minimal_profile_is_anonymous_v6anyv4() {
        let s = parse_vpn_data(&data(&[("server", "192.0.2.1")])).unwrap();
        assert_eq!(s.cfg.server.as_deref(), Some("192.0.2.1"));
        assert_eq!(s.cfg.auth_method, AuthMethod::Anonymous);
        assert_eq!(s.cfg.tunnel_mode, TunnelMode::V6AnyV4);
        assert_eq!(s.mtu, 1280);
        assert!(!s.needs_password());
    }

    #[test]
    fn every_key_reads_and_writes_back() {
        let d = data(&[
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
            ("retry-delay-max", "60"),
            ("datapath-kind", "userspace"),
            ("keepalive-probe-after", "5"),
            ("keepalive-probe-timeout", "2"),
            ("keepalive-probes", "4"),
            ("busy-poll", "20000"),
            ("mtu", "1400"),
            ("password-flags", "1"),
        ]);
        let s = parse_vpn_data(&d).unwrap();
        assert_eq!(s.cfg.userid, "alice");
        assert_eq!(s.cfg.datapath_kind, tsp_proto::types::DatapathKind::Userspace);
        assert_eq!(
            (
                s.cfg.keepalive_probe_after,
                s.cfg.keepalive_probe_timeout,
                s.cfg.keepalive_probes
            ),
            (5, 2, 4)
        );
        assert_eq!(s.cfg.busy_poll, 20_000);
        assert_eq!(s.cfg.prefixlen, 56);
        assert_eq!(s.cfg.dns_server, vec!["ns1.example", "ns2.example"]);
        assert_eq!(s.password_flags, SecretFlags::AGENT_OWNED);
        assert!(s.needs_password());
        assert_eq!(to_vpn_data(&s.cfg, s.mtu, s.password_flags), d);
    }

    /// `to_vpn_data` writes each key through the gogoc.conf field it stands for: every such
    /// key is one the field table knows (an empty value sets its default).
    #[test]
    fn every_data_key_stands_for_a_gogoc_field() {
        for (key, gogoc_key) in DATA_KEYS {
            let mut c = GogocConfig::default();
            assert!(
                gogoc::set_value(&mut c, gogoc_key, "", at(), key).is_ok(),
                "{key} → {gogoc_key}"
            );
        }
    }

    #[test]
    fn errors_name_the_vpn_data_key() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("tunnel-mode", "v6v4")], "key \"server\" is not set"),
            (
                &[("server", "192.0.2.1"), ("tunel-mode", "v6v4")],
                "did you mean \"tunnel-mode\"",
            ),
            (&[("server", "192.0.2.1"), ("colour", "blue")], "not a tsp setting"),
            (
                &[("server", "192.0.2.1"), ("tunnel-mode", "gre")],
                "key \"tunnel-mode\"",
            ),
            (
                &[("server", "192.0.2.1"), ("prefix-length", "200")],
                "key \"prefix-length\": 200 is out of range",
            ),
            (&[("server", "192.0.2.1"), ("keepalive", "maybe")], "key \"keepalive\""),
            (&[("server", "192.0.2.1"), ("mtu", "9000")], "key \"mtu\""),
            (
                &[("server", "192.0.2.1"), ("mtu", "1480"), ("tunnel-mode", "v6udpv4")],
                "at most 1472",
            ),
            (&[("server", "192.0.2.1"), ("password-flags", "8")], "secret flags"),
            (
                &[("server", "192.0.2.1"), ("host-type", "router")],
                "needs lan-interface",
            ),
            (
                &[("server", "192.0.2.1"), ("client-v4", "300.1.1.1")],
                "key \"client-v4\"",
            ),
            (
                &[("server", "192.0.2.1"), ("lan-interface", "bad name")],
                "key \"lan-interface\"",
            ),
            (
                &[("server", "[2001:db8::1"), ("auth-method", "anonymous")],
                "key \"server\"",
            ),
            (
                &[
                    ("server", "192.0.2.1"),
                    ("retry-delay", "100"),
                    ("retry-delay-max", "50"),
                ],
                "retry-delay (100)",
            ),
        ];
        for (pairs, want) in cases {
            let e = parse_vpn_data(&data(pairs)).expect_err(want).to_string();
            assert!(e.starts_with("vpn.data"), "{e}");
            assert!(e.contains(want), "{pairs:?}: {e} lacks {want}");
        }
    }

    #[test]
    fn password_rules() {
        let s = parse_vpn_data(&data(&[("server", "b"), ("username", "bob")])).unwrap();
        // A user name without a method means `any`, which needs the password.
        assert!(s.needs_password());
        assert!(s.missing_password(&BTreeMap::new()));
        let e = s.clone().with_secrets(&BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("needs a password"), "{e}");
        let ok = s.clone().with_secrets(&data(&[("password", "pw")])).unwrap();
        assert_eq!(ok.cfg.passwd.expose(), "pw");
        let e = s
            .clone()
            .with_secrets(&data(&[("password", "bad\u{7}pw")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("vpn.secrets") && !e.contains("bad"), "{e}");
        let anon = parse_vpn_data(&data(&[("server", "b")])).unwrap();
        assert!(
            anon.with_secrets(&data(&[("no-secret", "true")])).is_ok(),
            "the dialog's placeholder"
        );
        let e = s.with_secrets(&data(&[("pin", "1")])).unwrap_err().to_string();
        assert!(e.contains("\"pin\""), "{e}");
        let nr = parse_vpn_data(&data(&[("server", "b"), ("username", "bob"), ("password-flags", "4")])).unwrap();
        assert!(!nr.needs_password());
    }
}
