//! The pure half of import and export: a gogoc.conf / gw6c.conf (as [`GogocConfig`]) to
//! vpn.data + vpn.secrets and back, the report of file keys a NetworkManager profile cannot
//! carry, and the suggested file name. No libnm here, so all of it is unit-tested.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use zeroize::Zeroizing;

use tsp_config::names::{DATA_KEYS, SECRET_PASSWORD, SecretFlags};
use tsp_config::vpn_data;
use tsp_config::{ConfigError, GogocConfig};
use tsp_proto::secret::Secret;

/// A file read for import: what goes into the profile, and what stays behind.
#[derive(Debug)]
pub struct Imported {
    /// The profile's name: the file name without its extension.
    pub id: String,
    pub data: BTreeMap<String, String>,
    /// `password` when the file has one (never in `data`).
    pub secrets: BTreeMap<String, String>,
    /// File keys set to a non-default value that have no vpn.data key (in the file's
    /// dialect's spelling), in file order.
    pub unsupported: Vec<&'static str>,
}

/// Maps a configuration read from `path` to a profile.
///
/// The password becomes an agent-owned secret (`password-flags=1`): the user's agent keeps it
/// in the keyring, NetworkManager never writes it to disk, and the auth dialog hands it over
/// when connecting. The flag is set whenever the auth method needs a password, whether the
/// file has one or not, so an exported and re-imported profile reads back identical. Checks
/// the result with the rules the service applies (an imported profile never fails only at
/// connect).
/// The flags of an imported password: kept by the user's agent.
pub const IMPORTED_FLAGS: SecretFlags = SecretFlags::AGENT_OWNED;

pub fn import(cfg: &GogocConfig, path: &Path) -> Result<Imported, ConfigError> {
    // An empty password is fine here (asked for when connecting); every other rule holds.
    let mut check = cfg.clone();
    if check.passwd.is_empty() {
        check.passwd = Secret::new("-");
    }
    check.validate_for_connect(path)?;
    let flags = if cfg.auth_method.needs_password() {
        IMPORTED_FLAGS
    } else {
        SecretFlags::default()
    };
    let data = vpn_data::to_vpn_data(cfg, vpn_data::DEFAULT_MTU, flags);
    // Backstop: the cross-key rules of vpn.data, as nm-tsp-service applies them.
    vpn_data::parse_vpn_data(&data)?;
    Ok(Imported {
        id: profile_id(path),
        data,
        secrets: vpn_data::to_vpn_secrets(&cfg.passwd),
        unsupported: unsupported_keys(cfg),
    })
}

/// The profile name for a file: its name without the last extension, or "tsp".
pub fn profile_id(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "tsp".to_owned())
}

/// Keys of `cfg` that differ from the client's defaults but have no vpn.data key (logging, the
/// template script, interface names — NetworkManager names the device —, the broker-list and
/// last-server files, `auto_retry_connect` — NetworkManager reconnects —, the home directory,
/// and the HTTP-access / DS-Lite keys gogoc itself only carries along), in the file's spelling
/// and order.
pub fn unsupported_keys(cfg: &GogocConfig) -> Vec<&'static str> {
    tsp_config::non_default_keys(cfg)
        .into_iter()
        .filter(|key| !DATA_KEYS.iter().any(|(_, gogoc)| gogoc == key))
        .collect()
}

/// The warning printed for [`Imported::unsupported`] (None when there is nothing to say).
pub fn unsupported_warning(path: &Path, keys: &[&str]) -> Option<String> {
    if keys.is_empty() {
        return None;
    }
    Some(format!(
        "{}: imported without {} (no NetworkManager tsp setting; these keys only matter to gogoc itself)",
        path.display(),
        keys.join(", ")
    ))
}

/// A profile to export, in gogoc.conf's terms.
#[derive(Debug)]
pub struct Exported {
    pub cfg: GogocConfig,
    /// Whether `cfg.passwd` is to be written.
    pub with_password: bool,
    /// Profile settings a gogoc.conf cannot carry, for a warning.
    pub dropped: Vec<String>,
}

/// Maps a profile's vpn.data (and, when `with_password`, the password from vpn.secrets) to a
/// gogoc.conf configuration. Without `with_password` the file's `passwd` stays empty, as
/// NetworkManager-openvpn exports no secrets either (gogoc then wants it filled in; our import
/// takes the file as it is and the profile asks for the password when connecting).
pub fn export(
    data: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, String>,
    with_password: bool,
) -> Result<Exported, ConfigError> {
    let settings = vpn_data::parse_vpn_data(data)?;
    let mut dropped = Vec::new();
    if settings.mtu != vpn_data::DEFAULT_MTU {
        dropped.push(format!("mtu={} (gogoc always uses 1280)", settings.mtu));
    }
    if settings.password_flags != IMPORTED_FLAGS && settings.cfg.auth_method.needs_password() {
        dropped.push(format!(
            "password-flags={} (a re-import sets 1, kept by the user's agent)",
            settings.password_flags
        ));
    }
    let password = secrets.get(SECRET_PASSWORD).filter(|p| !p.is_empty());
    let mut cfg = settings.cfg;
    let with_password = with_password && password.is_some();
    if let Some(p) = password.filter(|_| with_password) {
        let only: BTreeMap<String, String> = [(SECRET_PASSWORD.to_owned(), p.clone())].into();
        let s = vpn_data::VpnSettings {
            cfg,
            mtu: settings.mtu,
            password_flags: settings.password_flags,
        }
        .with_secrets(&only)?;
        cfg = s.cfg;
    } else {
        cfg.passwd = Secret::default();
    }
    Ok(Exported {
        cfg,
        with_password,
        dropped,
    })
}

/// Writes an [`Exported`] configuration as a complete gogoc.conf (atomically; mode 0600 when
/// it holds the password, else 0644), after checking it with gogoc's rules — all of them but
/// "a password is needed" when the password is left out on purpose.
pub fn write_file(path: &Path, e: &Exported) -> io::Result<()> {
    let mut check = e.cfg.clone();
    if check.passwd.is_empty() {
        check.passwd = Secret::new("-");
    }
    check
        .validate(path)
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err.to_string()))?;
    let text = Zeroizing::new(tsp_config::to_text_with(&e.cfg, e.with_password));
    let mode = if e.with_password { 0o600 } else { 0o644 };
    tsp_config::fsutil::write_atomic(path, text.as_bytes(), mode)
}

/// `<id>.conf`, with every character outside `A-Za-z0-9._-` replaced by `_` (no leading dot,
/// at most 64 characters before the extension); "tsp.conf" for an empty id.
pub fn suggested_filename(id: &str) -> String {
    let mut name: String = id
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    while name.starts_with('.') {
        name.remove(0);
    }
    if name.is_empty() {
        name.push_str("tsp");
    }
    format!("{name}.conf")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tsp_config::{parse, parse_without_password};

    fn cfg(text: &str) -> GogocConfig {
        parse(text, Path::new("/etc/gogoc/gogoc.conf")).expect("parses")
    }

    #[test]
    fn every_mappable_key_goes_to_vpn_data_and_the_password_to_secrets() {
        let c = cfg(
            "userid=alice\npasswd=s3cret\nserver=broker.example:3653\nauth_method=digest-md5\n\
                     host_type=router\nprefixlen=56\nif_prefix=eth1\ndns_server=ns1.example:ns2.example\n\
                     keepalive=yes\nkeepalive_interval=10\ntunnel_mode=v6v4\nclient_v4=192.0.2.2\n\
                     client_v6=2001:db8::2\nalways_use_same_server=yes\nproxy_client=no\nretry_delay=5\n\
                     retry_delay_max=60\n",
        );
        let i = import(&c, Path::new("/etc/gogoc/gogoc.conf")).unwrap();
        assert_eq!(i.id, "gogoc");
        let want: BTreeMap<String, String> = [
            ("server", "broker.example:3653"),
            ("auth-method", "digest-md5"),
            ("username", "alice"),
            ("tunnel-mode", "v6v4"),
            ("host-type", "router"),
            ("prefix-length", "56"),
            ("lan-interface", "eth1"),
            ("dns-server", "ns1.example:ns2.example"),
            ("keepalive-interval", "10"),
            ("client-v4", "192.0.2.2"),
            ("client-v6", "2001:db8::2"),
            ("always-use-same-server", "yes"),
            ("retry-delay", "5"),
            ("retry-delay-max", "60"),
            ("password-flags", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(i.data, want);
        assert!(!i.data.values().any(|v| v.contains("s3cret")));
        assert_eq!(i.secrets.get("password").map(String::as_str), Some("s3cret"));
        assert!(i.unsupported.is_empty(), "{:?}", i.unsupported);
    }

    #[test]
    fn anonymous_file_has_no_password_flags_and_no_secrets() {
        let i = import(
            &cfg("server=192.0.2.1\nauth_method=anonymous\n"),
            Path::new("x/home.conf"),
        )
        .unwrap();
        assert_eq!(i.id, "home");
        assert_eq!(i.data.get("password-flags"), None);
        assert_eq!(i.data.get("auth-method").map(String::as_str), Some("anonymous"));
        assert!(i.secrets.is_empty());
    }

    #[test]
    fn keys_without_vpn_data_counterpart_are_reported_only_when_not_default() {
        // gogoc's own sample writes every key, most at their defaults: nothing to report.
        let defaults = "server=b\nauth_method=anonymous\ngogoc_dir=\nauto_retry_connect=yes\ntemplate=linux\n\
                        if_tunnel_v6v4=sit1\nbroker_list=tsp-broker-list.txt\nlog_stderr=1\nlog_file=0\n\
                        log_filename=gogoc.log\nlog_rotation=yes\nlog_rotation_size=32\nsyslog_facility=USER\n";
        assert!(unsupported_keys(&cfg(defaults)).is_empty());
        let c = cfg(
            "server=b\nauth_method=anonymous\nauto_retry_connect=no\ntemplate=openwrt\n\
                     if_tunnel_v6udpv4=tun9\nlog_file=3\nlog_filename=/var/log/x.log\n\
                     haccess_web_enabled=yes\nhaccess_document_root=/var/www\ndslite_server=192.0.0.9\nlast_server=/tmp/ls\n",
        );
        let keys = unsupported_keys(&c);
        assert_eq!(
            keys,
            [
                "auto_retry_connect",
                "if_tunnel_v6udpv4",
                "template",
                "last_server",
                "log_file",
                "log_filename",
                "haccess_web_enabled",
                "haccess_document_root",
                "dslite_server"
            ]
        );
        let i = import(&c, Path::new("/e/gogoc.conf")).unwrap();
        assert_eq!(i.unsupported, keys);
        let w = unsupported_warning(Path::new("/e/gogoc.conf"), &i.unsupported).unwrap();
        assert!(
            w.starts_with("/e/gogoc.conf: imported without auto_retry_connect, "),
            "{w}"
        );
        assert!(w.contains("template") && w.contains("log_filename"), "{w}");
        assert_eq!(unsupported_warning(Path::new("a"), &[]), None);
    }

    #[test]
    fn gw6c_keys_are_named_in_gw6c_spelling() {
        let c = parse(
            "server=b\nauth_method=anonymous\ngw6_dir=/opt/gw6c\nhap6_proxy_enabled=yes\n",
            Path::new("gw6c.conf"),
        )
        .unwrap();
        assert_eq!(unsupported_keys(&c), ["gw6_dir", "hap6_proxy_enabled"]);
    }

    #[test]
    fn import_refuses_what_the_service_would_refuse() {
        let e = import(&cfg("auth_method=anonymous\n"), Path::new("/e/gogoc.conf"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/e/gogoc.conf") && e.contains("\"server\""), "{e}");
    }

    #[test]
    fn export_round_trips_and_leaves_the_password_out_by_default() {
        let c = cfg(
            "userid=alice\npasswd=s3cret\nserver=192.0.2.1\nauth_method=digest-md5\ntunnel_mode=v6udpv4\n\
                     keepalive_interval=7\nretry_delay=3\n",
        );
        let i = import(&c, Path::new("g.conf")).unwrap();
        let e = export(&i.data, &i.secrets, false).unwrap();
        assert!(!e.with_password && e.cfg.passwd.is_empty());
        assert!(e.dropped.is_empty(), "{:?}", e.dropped);
        let dir = std::env::temp_dir().join(format!("nm-tsp-editor-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("g.conf");
        write_file(&file, &e).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains("s3cret") && text.contains("\npasswd=\n"), "{text}");
        // gogoc wants the password filled in; the import takes the file as it is.
        assert!(parse(&text, &file).is_err());
        let back = import(&parse_without_password(&text, &file).unwrap(), &file).unwrap();
        assert_eq!(back.data, i.data);
        assert!(back.secrets.is_empty());
        // Asked for: the password comes along.
        let e = export(&i.data, &i.secrets, true).unwrap();
        assert!(e.with_password);
        assert_eq!(e.cfg.passwd.expose(), "s3cret");
        write_file(&file, &e).unwrap();
        let back = tsp_config::load(&file).unwrap();
        assert_eq!(back.passwd.expose(), "s3cret");
        assert_eq!(import(&back, &file).unwrap().data, i.data);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
        // Nothing to write when the profile has none.
        assert!(!export(&i.data, &BTreeMap::new(), true).unwrap().with_password);
    }

    #[test]
    fn export_reports_what_gogoc_conf_cannot_hold_and_refuses_bad_data() {
        let data: BTreeMap<String, String> = [
            ("server", "b"),
            ("mtu", "1400"),
            ("password-flags", "0"),
            ("username", "u"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let e = export(&data, &BTreeMap::new(), false).unwrap();
        assert_eq!(e.dropped.len(), 2, "{:?}", e.dropped);
        assert!(e.dropped[0].starts_with("mtu=1400"));
        let bad: BTreeMap<String, String> = [
            ("server".to_owned(), "b".to_owned()),
            ("colour".to_owned(), "x".to_owned()),
        ]
        .into();
        let err = export(&bad, &BTreeMap::new(), false).unwrap_err().to_string();
        assert!(err.contains("\"colour\""), "{err}");
    }

    #[test]
    fn suggested_filenames_are_plain() {
        assert_eq!(suggested_filename("tsp home"), "tsp_home.conf");
        assert_eq!(suggested_filename("../../etc/passwd"), "_.._etc_passwd.conf");
        assert_eq!(suggested_filename(".hidden"), "hidden.conf");
        assert_eq!(suggested_filename(""), "tsp.conf");
        assert_eq!(suggested_filename("Büro/2"), "B_ro_2.conf");
        assert_eq!(suggested_filename(&"x".repeat(100)).len(), 64 + 5);
    }
}
