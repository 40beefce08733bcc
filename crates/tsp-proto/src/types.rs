//! Small wire vocabulary shared by every layer: tunnel modes, host types, protocol versions
//! and the user's `auth_method`. Spelled exactly as gogoc.conf and the TSP XML spell them.
//!
//! See docs/tsp-wire.md §1.1, §4.2.

use std::fmt;
use std::str::FromStr;

/// IANA "tsp" port, TCP and UDP.
pub const TSP_PORT: u16 = 3653;

/// Largest reply the real client accepts (gogoc's receive buffer); also our bound for every
/// framed message in either direction.
pub const MAX_MESSAGE: usize = 4096;

/// Largest broker list we accept from a redirection (gogoc's limit).
pub const MAX_BROKERS: usize = 50;

/// Error for an unknown keyword; carries the offending text for the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{value}` (expected one of: {expected})")]
pub struct UnknownKeyword {
    pub what: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// A keyword enum: the enum, `ALL` (declaration order), `as_str`, `Display`, and a `FromStr`
/// that ignores case (gogoc lower-cases the values it reads) and names every keyword when it
/// refuses one.
macro_rules! keywords {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $(#[$fmeta:meta])* $first:ident = $ftext:literal
            $(, $(#[$vmeta:meta])* $variant:ident = $text:literal)* $(,)?
        }
    ) => {
        $(#[$meta])*
        pub enum $name {
            $(#[$fmeta])* $first,
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            pub const ALL: [Self; [$ftext $(, $text)*].len()] = [Self::$first $(, Self::$variant)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    Self::$first => $ftext,
                    $(Self::$variant => $text,)*
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownKeyword;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .into_iter()
                    .find(|k| k.as_str().eq_ignore_ascii_case(s))
                    .ok_or_else(|| UnknownKeyword {
                        what: $what,
                        value: s.to_owned(),
                        expected: concat!($ftext $(, ", ", $text)*),
                    })
            }
        }
    };
}

keywords! {
    /// Tunnel encapsulation, as requested in `create` (`v6anyv4` lets the broker choose) and as
    /// offered in `info` (always concrete).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum TunnelMode("tunnel mode") {
        /// Either of the two IPv6-over-IPv4 modes; the broker picks by NAT detection.
        V6AnyV4 = "v6anyv4",
        /// IPv6 in IPv4, protocol 41.
        V6V4 = "v6v4",
        /// IPv6 in UDP/IPv4 on the TSP socket (NAT traversal).
        V6UdpV4 = "v6udpv4",
        /// IPv4 in IPv6.
        V4V6 = "v4v6",
    }
}

impl TunnelMode {
    /// A concrete mode is one a tunnel can actually run in (what an offer must carry).
    pub fn is_concrete(self) -> bool {
        self != Self::V6AnyV4
    }

    /// The tunnel carries IPv6 inside IPv4 (the TSP session runs over IPv4).
    pub fn is_v6_over_v4(self) -> bool {
        self != Self::V4V6
    }
}

keywords! {
    /// `host_type`: a host gets one address; a router also asks for a prefix to delegate.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub enum HostType("host type") {
        #[default]
        Host = "host",
        Router = "router",
    }
}

keywords! {
    /// `auth_method` as the user configures it. `Any` picks the strongest mechanism the broker
    /// offers (PASSDSS-3DES-1 > DIGEST-MD5, and PLAIN only where the user allowed it).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub enum AuthMethod("authentication method") {
        Anonymous = "anonymous",
        #[default]
        Any = "any",
        PassDss3Des1 = "passdss-3des-1",
        DigestMd5 = "digest-md5",
        Plain = "plain",
    }
}

impl AuthMethod {
    pub fn needs_password(self) -> bool {
        self != Self::Anonymous
    }
}

keywords! {
    /// How a v6v4 or v4v6 tunnel is carried (the broker's `datapath_kind`, gogoc.conf's
    /// `datapath_kind`): a kernel link (sit, ip6tnl) where the kernel has them and the userspace
    /// datapath (TUN + raw socket) otherwise, a kernel link or nothing, or always userspace.
    /// v6udpv4 is always carried in userspace.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub enum DatapathKind("datapath kind") {
        #[default]
        Auto = "auto",
        Kernel = "kernel",
        Userspace = "userspace",
    }
}

/// TSP protocol versions, newest first, as gogoc 1.2 tries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    V1_0_1,
    V2_0_0,
    V2_0_1,
    V2_0_2,
}

impl Version {
    /// Newest first: the order of the fallback on `302`.
    pub const FALLBACK: [Version; 4] = [Self::V2_0_2, Self::V2_0_1, Self::V2_0_0, Self::V1_0_1];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1_0_1 => "1.0.1",
            Self::V2_0_0 => "2.0.0",
            Self::V2_0_1 => "2.0.1",
            Self::V2_0_2 => "2.0.2",
        }
    }

    /// The next older version to try after a `302`, if any.
    pub fn older(self) -> Option<Version> {
        match self {
            Self::V2_0_2 => Some(Self::V2_0_1),
            Self::V2_0_1 => Some(Self::V2_0_0),
            Self::V2_0_0 => Some(Self::V1_0_1),
            Self::V1_0_1 => None,
        }
    }

    /// 1.0.1 predates the `accept` message and the UDP modes.
    pub fn sends_accept(self) -> bool {
        self != Self::V1_0_1
    }

    /// v6udpv4, v6anyv4 and v4v6 need 2.0.0 or later.
    pub fn supports_mode(self, mode: TunnelMode) -> bool {
        mode == TunnelMode::V6V4 || self >= Self::V2_0_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Version {
    type Err = UnknownKeyword;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::FALLBACK
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownKeyword {
                what: "TSP version",
                value: s.to_owned(),
                expected: "2.0.2, 2.0.1, 2.0.0, 1.0.1",
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_round_trip() {
        for m in TunnelMode::ALL {
            assert_eq!(m.as_str().parse::<TunnelMode>(), Ok(m));
        }
        for a in AuthMethod::ALL {
            assert_eq!(a.as_str().to_uppercase().parse::<AuthMethod>(), Ok(a));
        }
        assert!("v6v5".parse::<TunnelMode>().is_err());
    }

    #[test]
    fn every_keyword_enum_parses_its_own_words_and_names_them_all() {
        for h in HostType::ALL {
            assert_eq!(h.to_string().parse::<HostType>(), Ok(h));
        }
        for k in DatapathKind::ALL {
            assert_eq!(k.as_str().to_uppercase().parse::<DatapathKind>(), Ok(k));
        }
        let e = "bridge".parse::<HostType>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown host type `bridge` (expected one of: host, router)"
        );
        let e = "x".parse::<TunnelMode>().unwrap_err();
        assert_eq!(e.expected, "v6anyv4, v6v4, v6udpv4, v4v6");
        assert_eq!(AuthMethod::default(), AuthMethod::Any);
    }

    #[test]
    fn version_fallback_chain() {
        let chain: Vec<_> = std::iter::successors(Some(Version::V2_0_2), |v| v.older()).collect();
        assert_eq!(chain, Version::FALLBACK);
        assert!(!Version::V1_0_1.sends_accept());
        assert!(!Version::V1_0_1.supports_mode(TunnelMode::V6UdpV4));
    }
}
