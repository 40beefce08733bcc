//! The `server` value: `host`, `a.b.c.d` or `[v6]`, each optionally followed by `:port`.
//! The configured string itself is kept verbatim elsewhere (DIGEST-MD5's digest-uri and the
//! host-key file are bound to it); this only splits and checks it.
//!
//! See docs/tsp-wire.md §9.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest `server` value gogoc accepts.
pub const MAX_SERVER_LEN: usize = 1025;

/// Longest DNS name (without a trailing dot), RFC 1035.
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// The host part of a `server` value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name, to be resolved by the transport.
    Name(String),
    /// An IPv4 literal.
    V4(Ipv4Addr),
    /// An IPv6 literal (written in brackets in the configuration).
    V6(Ipv6Addr),
}

impl fmt::Display for Host {
    /// As in gogoc.conf: IPv6 literals in brackets, so that `"{host}:{port}"` is unambiguous.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(name) => f.write_str(name),
            Self::V4(addr) => write!(f, "{addr}"),
            Self::V6(addr) => write!(f, "[{addr}]"),
        }
    }
}

/// Why a `server` value is not usable. Messages quote the value (it is never secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    /// Nothing to connect to.
    #[error("the server address is empty")]
    Empty,
    /// Longer than gogoc accepts.
    #[error("the server address is too long ({0} bytes, at most {MAX_SERVER_LEN})")]
    TooLong(usize),
    /// A character outside `A-Za-z0-9-.:[]`.
    #[error("{0:?} is not allowed in a server address (only letters, digits, '-', '.', ':', '[' and ']')")]
    BadChar(char),
    /// Brackets that do not enclose the whole host.
    #[error("`{0}`: '[' and ']' may only enclose an IPv6 address, as in [2001:db8::1]:3653")]
    MisplacedBracket(String),
    /// Brackets around something that is not an IPv6 address.
    #[error("`{0}` is not an IPv6 address")]
    BadV6(String),
    /// An IPv6 address without brackets (its colons would be read as a port).
    #[error("`{0}`: an IPv6 address must be written in brackets, as in [2001:db8::1]:3653")]
    BareV6(String),
    /// A port that is not 1..=65535.
    #[error("`{0}` is not a port number 1..65535")]
    BadPort(String),
    /// Digits and dots that do not form an IPv4 address.
    #[error("`{0}` looks like an IPv4 address but is not one")]
    BadV4(String),
    /// Not an RFC 1123 host name.
    #[error("`{0}` is not a valid host name")]
    BadName(String),
}

/// Splits a `server` value into host and optional port (absent = the TSP port 3653).
///
/// Accepts `host`, `a.b.c.d` and `[v6]`, each optionally with `:port`, using only the
/// characters gogoc allows (`A-Za-z0-9-.:[]`), at most 1025 bytes.
pub fn split_server(s: &str) -> Result<(Host, Option<u16>), ServerError> {
    if s.is_empty() {
        return Err(ServerError::Empty);
    }
    if s.len() > MAX_SERVER_LEN {
        return Err(ServerError::TooLong(s.len()));
    }
    if let Some(c) = s.chars().find(|c| !is_server_char(*c)) {
        return Err(ServerError::BadChar(c));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err(ServerError::MisplacedBracket(s.to_owned()));
        };
        if inside.contains('[') || after.contains(['[', ']']) {
            return Err(ServerError::MisplacedBracket(s.to_owned()));
        }
        let addr: Ipv6Addr = inside.parse().map_err(|_| ServerError::BadV6(inside.to_owned()))?;
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(p) => Some(parse_port(p)?),
                None => return Err(ServerError::BadPort(after.to_owned())),
            },
        };
        return Ok((Host::V6(addr), port));
    }
    if s.contains(['[', ']']) {
        return Err(ServerError::MisplacedBracket(s.to_owned()));
    }
    let (host, port) = match s.matches(':').count() {
        0 => (s, None),
        1 => match s.split_once(':') {
            Some((h, p)) => (h, Some(parse_port(p)?)),
            None => (s, None),
        },
        _ => return Err(ServerError::BareV6(s.to_owned())),
    };
    Ok((parse_host(host)?, port))
}

fn is_server_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '[' | ']')
}

fn parse_port(p: &str) -> Result<u16, ServerError> {
    let bad = || ServerError::BadPort(p.to_owned());
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad()),
        Ok(port) => Ok(port),
    }
}

fn parse_host(h: &str) -> Result<Host, ServerError> {
    // All digits and dots: an IPv4 literal or a mistake (a top-level domain is never numeric).
    if !h.is_empty() && h.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return h.parse().map(Host::V4).map_err(|_| ServerError::BadV4(h.to_owned()));
    }
    if is_dns_name(h) {
        Ok(Host::Name(h.to_owned()))
    } else {
        Err(ServerError::BadName(h.to_owned()))
    }
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens; one
/// trailing dot allowed.
pub(crate) fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= MAX_LABEL_LEN
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(
            split_server("broker.example.net"),
            Ok((Host::Name("broker.example.net".into()), None))
        );
        assert_eq!(
            split_server("broker:3654"),
            Ok((Host::Name("broker".into()), Some(3654)))
        );
        assert_eq!(
            split_server("192.0.2.1"),
            Ok((Host::V4(Ipv4Addr::new(192, 0, 2, 1)), None))
        );
        assert_eq!(
            split_server("192.0.2.1:80"),
            Ok((Host::V4(Ipv4Addr::new(192, 0, 2, 1)), Some(80)))
        );
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(split_server("[2001:db8::1]"), Ok((Host::V6(v6), None)));
        assert_eq!(split_server("[2001:db8::1]:3653"), Ok((Host::V6(v6), Some(3653))));
        assert_eq!(
            split_server("example.net."),
            Ok((Host::Name("example.net.".into()), None))
        );
    }

    #[test]
    fn rejects() {
        use ServerError::*;
        assert_eq!(split_server(""), Err(Empty));
        assert!(matches!(split_server("2001:db8::1"), Err(BareV6(_))));
        assert!(matches!(split_server("[2001:db8::1"), Err(MisplacedBracket(_))));
        assert!(matches!(split_server("a[b]"), Err(MisplacedBracket(_))));
        assert!(matches!(split_server("[2001:db8::1]x"), Err(BadPort(_))));
        assert!(matches!(split_server("[::1]:"), Err(BadPort(_))));
        assert!(matches!(split_server("[1.2.3.4]"), Err(BadV6(_))));
        assert!(matches!(split_server("host:0"), Err(BadPort(_))));
        assert!(matches!(split_server("host:65536"), Err(BadPort(_))));
        assert!(matches!(split_server("host:"), Err(BadPort(_))));
        assert!(matches!(split_server("1.2.3.256"), Err(BadV4(_))));
        assert!(matches!(split_server("1.2.3"), Err(BadV4(_))));
        assert!(matches!(split_server("a..b"), Err(BadName(_))));
        assert!(matches!(split_server("-a.b"), Err(BadName(_))));
        assert!(matches!(split_server(":3653"), Err(BadName(_))));
        assert_eq!(split_server("a_b"), Err(BadChar('_')));
        assert_eq!(split_server("a b"), Err(BadChar(' ')));
        assert!(matches!(split_server(&"a".repeat(1026)), Err(TooLong(1026))));
        assert!(matches!(split_server(&"a".repeat(64)), Err(BadName(_))));
    }

    #[test]
    fn display_brackets_v6() {
        let (h, _) = split_server("[2001:db8::1]:1").unwrap();
        assert_eq!(h.to_string(), "[2001:db8::1]");
    }
}
