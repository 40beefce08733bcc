//! The `CAPABILITY` line (docs/tsp-wire.md §1.7, §3.1, §11.3).
//!
//! The tokenizer reproduces the real client on purpose: a broker's line is judged by what
//! gogoc would make of it, so a token without a terminator is lost and a double space turns
//! the next name into garbage. The broker side writes lines that survive that tokenizer.

use super::frame::preview;
use super::types::TunnelMode;

const PREFIX: &[u8] = b"CAPABILITY ";

pub const TUNNEL_V6V4: u8 = 0x01;
pub const TUNNEL_V6UDPV4: u8 = 0x02;
pub const TUNNEL_V4V6: u8 = 0x04;

pub const AUTH_PASSDSS: u8 = 0x80;
pub const AUTH_DIGEST_MD5: u8 = 0x40;
pub const AUTH_PLAIN: u8 = 0x20;
pub const AUTH_ANONYMOUS: u8 = 0x10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapsError {
    #[error("broker reply is not a CAPABILITY line: {0:?}")]
    NotCapability(String),
}

/// What a broker offers: bit sets of tunnel modes and SASL mechanisms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    pub tunnels: u8,
    pub auths: u8,
    /// The line lacked its CRLF, so its last token was dropped (as gogoc drops it).
    pub unterminated: bool,
    /// Tokens that were not understood (double spaces, unknown names or values).
    pub ignored_tokens: usize,
}

/// The capability bit a requested mode needs (`v6anyv4` is satisfied by either v6-in-v4 mode).
pub fn tunnel_bits(mode: TunnelMode) -> u8 {
    match mode {
        TunnelMode::V6V4 => TUNNEL_V6V4,
        TunnelMode::V6UdpV4 => TUNNEL_V6UDPV4,
        TunnelMode::V6AnyV4 => TUNNEL_V6V4 | TUNNEL_V6UDPV4,
        TunnelMode::V4V6 => TUNNEL_V4V6,
    }
}

fn auth_bit(value: &[u8]) -> Option<u8> {
    [
        (&b"PASSDSS-3DES-1"[..], AUTH_PASSDSS),
        (b"DIGEST-MD5", AUTH_DIGEST_MD5),
        (b"PLAIN", AUTH_PLAIN),
        (b"ANONYMOUS", AUTH_ANONYMOUS),
    ]
    .into_iter()
    .find(|(name, _)| name.eq_ignore_ascii_case(value))
    .map(|(_, bit)| bit)
}

fn tunnel_bit(value: &[u8]) -> Option<u8> {
    // TUNNEL values are compared case-sensitively by the real client.
    match value {
        b"V6V4" => Some(TUNNEL_V6V4),
        b"V6UDPV4" => Some(TUNNEL_V6UDPV4),
        b"V4V6" => Some(TUNNEL_V4V6),
        _ => None,
    }
}

impl Capabilities {
    /// True if the line starts like a capability line (as opposed to a status line).
    pub fn is_capability_line(line: &[u8]) -> bool {
        Self::tokens(line).is_some()
    }

    /// What follows `CAPABILITY `; a bare `CAPABILITY` line (nothing offered) has no tokens.
    fn tokens(line: &[u8]) -> Option<&[u8]> {
        let rest = line.strip_prefix(&PREFIX[..PREFIX.len() - 1])?;
        match rest.first() {
            None | Some(b'\r' | b'\n') => Some(&[]),
            Some(b' ') => Some(&rest[1..]),
            Some(_) => None,
        }
    }

    /// Tokenizes a CAPABILITY line as gogoc does.
    pub fn parse(line: &[u8]) -> Result<Self, CapsError> {
        let Some(mut rest) = Self::tokens(line) else {
            return Err(CapsError::NotCapability(preview(line)));
        };
        let mut caps = Capabilities::default();
        let is_sep = |b: &u8| matches!(b, b' ' | b'\r' | b'\n');
        loop {
            // A token is NAME=VALUE ended by a separator; without one it is dropped.
            let Some(eq) = rest.iter().position(|&b| b == b'=') else {
                if rest.iter().any(|b| !is_sep(b)) {
                    caps.ignored_tokens += 1;
                }
                break;
            };
            let Some(end) = rest[eq..].iter().position(is_sep).map(|i| eq + i) else {
                caps.unterminated = true;
                break;
            };
            let (name, value) = (&rest[..eq], &rest[eq + 1..end]);
            let bit = match name {
                b"TUNNEL" => tunnel_bit(value).map(|b| (true, b)),
                b"AUTH" => auth_bit(value).map(|b| (false, b)),
                _ => None,
            };
            match bit {
                Some((true, b)) => caps.tunnels |= b,
                Some((false, b)) => caps.auths |= b,
                None => caps.ignored_tokens += 1,
            }
            rest = &rest[end + 1..];
            // The CR of CRLF ends the last token; the LF after it ends the line.
            if rest.first() == Some(&b'\n') || rest.is_empty() {
                break;
            }
        }
        Ok(caps)
    }

    pub fn offers_mode(&self, mode: TunnelMode) -> bool {
        self.tunnels & tunnel_bits(mode) != 0
    }

    /// The broker's line: single spaces, upper-case values, CRLF (so gogoc keeps every token).
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = String::from("CAPABILITY");
        for (bit, name) in [
            (TUNNEL_V6V4, "V6V4"),
            (TUNNEL_V6UDPV4, "V6UDPV4"),
            (TUNNEL_V4V6, "V4V6"),
        ] {
            if self.tunnels & bit != 0 {
                line.push_str(" TUNNEL=");
                line.push_str(name);
            }
        }
        for (bit, name) in [
            (AUTH_PASSDSS, "PASSDSS-3DES-1"),
            (AUTH_DIGEST_MD5, "DIGEST-MD5"),
            (AUTH_ANONYMOUS, "ANONYMOUS"),
            (AUTH_PLAIN, "PLAIN"),
        ] {
            if self.auths & bit != 0 {
                line.push_str(" AUTH=");
                line.push_str(name);
            }
        }
        line.push_str("\r\n");
        line.into_bytes()
    }

    /// Human-readable lists for logs and errors.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (bit, name) in [
            (TUNNEL_V6V4, "v6v4"),
            (TUNNEL_V6UDPV4, "v6udpv4"),
            (TUNNEL_V4V6, "v4v6"),
        ] {
            if self.tunnels & bit != 0 {
                parts.push(name);
            }
        }
        let tunnels = parts.join(",");
        let mut parts = Vec::new();
        for (bit, name) in [
            (AUTH_PASSDSS, "PASSDSS-3DES-1"),
            (AUTH_DIGEST_MD5, "DIGEST-MD5"),
            (AUTH_PLAIN, "PLAIN"),
            (AUTH_ANONYMOUS, "ANONYMOUS"),
        ] {
            if self.auths & bit != 0 {
                parts.push(name);
            }
        }
        format!("tunnels [{tunnels}], auth [{}]", parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_line() {
        let c =
            Capabilities::parse(b"CAPABILITY TUNNEL=V6V4 TUNNEL=V6UDPV4 AUTH=DIGEST-MD5 AUTH=ANONYMOUS AUTH=PLAIN\r\n")
                .unwrap();
        assert_eq!(c.tunnels, TUNNEL_V6V4 | TUNNEL_V6UDPV4);
        assert_eq!(c.auths, AUTH_DIGEST_MD5 | AUTH_ANONYMOUS | AUTH_PLAIN);
        assert!(!c.unterminated);
    }

    #[test]
    fn vector_81_bytes() {
        let line = b"CAPABILITY TUNNEL=V6V4 TUNNEL=V6UDPV4 AUTH=DIGEST-MD5 AUTH=ANONYMOUS AUTH=PLAIN\r\n";
        assert_eq!(line.len(), 81);
    }

    #[test]
    fn missing_crlf_drops_last_token() {
        let c = Capabilities::parse(b"CAPABILITY TUNNEL=V6V4 TUNNEL=V6UDPV4 AUTH=DIGEST-MD5").unwrap();
        assert_eq!(c.tunnels, TUNNEL_V6V4 | TUNNEL_V6UDPV4);
        assert_eq!(c.auths, 0);
        assert!(c.unterminated);
    }

    #[test]
    fn double_space_loses_auth() {
        let c = Capabilities::parse(b"CAPABILITY TUNNEL=V6V4  AUTH=PLAIN\r\n").unwrap();
        assert_eq!(c.tunnels, TUNNEL_V6V4);
        assert_eq!(c.auths, 0);
        assert_eq!(c.ignored_tokens, 1);
    }

    #[test]
    fn case_rules() {
        let c = Capabilities::parse(b"CAPABILITY TUNNEL=v6v4 AUTH=digest-md5\r\n").unwrap();
        assert_eq!(c.tunnels, 0, "TUNNEL values are case-sensitive");
        assert_eq!(c.auths, AUTH_DIGEST_MD5, "AUTH values are not");
    }

    #[test]
    fn capture_line_and_round_trip() {
        let c = Capabilities::parse(b"CAPABILITY TUNNEL=V6UDPV4 AUTH=ANONYMOUS\r\n").unwrap();
        assert_eq!(c.to_line(), b"CAPABILITY TUNNEL=V6UDPV4 AUTH=ANONYMOUS\r\n");
        let all = Capabilities {
            tunnels: 7,
            auths: 0xF0,
            ..Default::default()
        };
        let back = Capabilities::parse(&all.to_line()).unwrap();
        assert_eq!((back.tunnels, back.auths), (7, 0xF0));
        assert!(!back.unterminated);
        assert!(Capabilities::parse(b"302 Unsupported client version\r\n").is_err());
        assert!(Capabilities::parse(b"CAPABILITYX\r\n").is_err());
        // A broker that offers nothing writes a bare line, which reads back as empty.
        let none = Capabilities::default();
        assert_eq!(Capabilities::parse(&none.to_line()).unwrap(), none);
    }
}
