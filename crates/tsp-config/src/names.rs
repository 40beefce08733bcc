//! The plugin's names, in one place: the D-Bus service that NetworkManager starts and profiles
//! name in `vpn.service-type`, every `vpn.data` key, the secret, and NetworkManager's secret
//! flags (docs/nm-plugin.md §1, §4–5). The service, the auth dialog, the libnm plugin and the
//! editors all read them from here.

use std::collections::BTreeMap;

/// The D-Bus service: the `.name` file's `service=`, a profile's `vpn.service-type`, the bus
/// name `nm-tsp-service` owns.
pub const SERVICE: &str = "org.freedesktop.NetworkManager.tsp";

/// The system user `nm-tsp-service` runs as once its bus connection and devices can be made
/// with capabilities alone (the package creates it; the D-Bus policy lets it own [`SERVICE`]).
pub const SERVICE_USER: &str = "nm-tsp";

/// vpn.data keys and the gogoc.conf key each one stands for (the values are checked by the
/// file's own rules).
pub const DATA_KEYS: [(&str, &str); 23] = [
    (KEY_SERVER, "server"),
    (KEY_AUTH_METHOD, "auth_method"),
    ("username", "userid"),
    ("tunnel-mode", "tunnel_mode"),
    ("host-type", "host_type"),
    ("prefix-length", "prefixlen"),
    ("lan-interface", "if_prefix"),
    ("dns-server", "dns_server"),
    ("keepalive", "keepalive"),
    ("keepalive-interval", "keepalive_interval"),
    ("client-v4", "client_v4"),
    ("client-v6", "client_v6"),
    ("always-use-same-server", "always_use_same_server"),
    ("proxy-client", "proxy_client"),
    ("allow-plain", "allow_plain"),
    ("router-fallback-host", "router_fallback_host"),
    ("retry-delay", "retry_delay"),
    ("retry-delay-max", "retry_delay_max"),
    ("datapath-kind", "datapath_kind"),
    ("keepalive-probe-after", "keepalive_probe_after"),
    ("keepalive-probe-timeout", "keepalive_probe_timeout"),
    ("keepalive-probes", "keepalive_probes"),
    ("busy-poll", "busy_poll"),
];
/// The broker, `host[:port]` (gogoc.conf `server`).
pub const KEY_SERVER: &str = "server";
/// The SASL mechanism; `anonymous` needs no password.
pub const KEY_AUTH_METHOD: &str = "auth-method";
/// The tunnel MTU (gogoc forced 1280, the IPv6 minimum); no gogoc.conf counterpart.
pub const KEY_MTU: &str = "mtu";
/// NetworkManager's flags of the `password` secret (decimal [`SecretFlags`]).
pub const KEY_PASSWORD_FLAGS: &str = "password-flags";
/// The one secret (vpn.secrets).
pub const SECRET_PASSWORD: &str = "password";
/// What the auth dialog answers when no password is needed (agents want a non-empty reply);
/// the service accepts and ignores it.
pub const SECRET_PLACEHOLDER: &str = "no-secret";

/// NetworkManager's secret flags (`NMSettingSecretFlags`), as `vpn.data` `<secret>-flags` holds
/// them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretFlags(u32);

impl SecretFlags {
    /// Stored by NetworkManager itself (system-owned).
    pub const NONE: Self = Self(0);
    /// Stored by the user's agent (the keyring).
    pub const AGENT_OWNED: Self = Self(1);
    /// Asked for every time, never stored.
    pub const NOT_SAVED: Self = Self(2);
    /// Not needed.
    pub const NOT_REQUIRED: Self = Self(4);
    /// Every flag NetworkManager defines.
    const ALL: u32 = 7;

    /// The flags of these bits, if NetworkManager defines every one.
    pub const fn from_bits(bits: u32) -> Option<Self> {
        if bits & !Self::ALL == 0 { Some(Self(bits)) } else { None }
    }

    /// A decimal value with only known bits, surrounding blanks allowed (as libnm); else `None`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::from_bits(s.trim().parse().ok()?)
    }

    /// The flags of `secret` in `data`; missing or malformed flags are NONE, as in libnm.
    pub fn of(data: &BTreeMap<String, String>, secret: &str) -> Self {
        data.get(&format!("{secret}-flags"))
            .and_then(|v| Self::parse(v))
            .unwrap_or_default()
    }

    /// Whether every flag of `other` is set (NONE is contained in everything).
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn bits(self) -> u32 {
        self.0
    }
}

/// Decimal, as `vpn.data` holds them.
impl std::fmt::Display for SecretFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The error of parsing [`SecretFlags`]: not a decimal of NetworkManager's flag bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadSecretFlags;

impl std::fmt::Display for BadSecretFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not NetworkManager secret flags (0, 1, 2 or 4, or a sum of them)")
    }
}

impl std::error::Error for BadSecretFlags {}

impl std::str::FromStr for SecretFlags {
    type Err = BadSecretFlags;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or(BadSecretFlags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Moved here with the type from the auth dialog, assertions unchanged.
    #[test]
    fn flags() {
        assert_eq!(SecretFlags::parse("0"), Some(SecretFlags::NONE));
        assert_eq!(SecretFlags::parse(" 2 "), Some(SecretFlags::NOT_SAVED));
        assert_eq!(SecretFlags::parse("6").map(SecretFlags::bits), Some(6));
        for bad in ["8", "-1", "x", "", "1.0", "99999999999"] {
            assert_eq!(SecretFlags::parse(bad), None, "{bad:?}");
        }
        let data = |v: &str| BTreeMap::from([(KEY_PASSWORD_FLAGS.to_owned(), v.to_owned())]);
        assert!(SecretFlags::of(&data("6"), SECRET_PASSWORD).contains(SecretFlags::NOT_REQUIRED));
        assert!(SecretFlags::of(&data("6"), SECRET_PASSWORD).contains(SecretFlags::NOT_SAVED));
        assert_eq!(SecretFlags::of(&data("junk"), SECRET_PASSWORD), SecretFlags::NONE);
        assert_eq!(SecretFlags::of(&BTreeMap::new(), SECRET_PASSWORD), SecretFlags::NONE);
    }

    #[test]
    fn keys_are_unique_and_lower_case() {
        let mut all: Vec<&str> = DATA_KEYS
            .iter()
            .map(|(k, _)| *k)
            .chain([KEY_MTU, KEY_PASSWORD_FLAGS])
            .collect();
        assert!(all.iter().all(|k| {
            k.bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'-' || b.is_ascii_digit())
        }));
        all.sort_unstable();
        let n = all.len();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
