//! One value of gogoc.conf / gw6c.conf: parsed and checked with gogoc's limits, written back,
//! and the [`Problem`] that names what is wrong with it (docs/tsp-wire.md §9).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::model::{
    AutoAddr, Dialect, LogRotationSize, MAX_DIR_LEN, MAX_DNS_SERVER_LEN, MAX_FILENAME_LEN, MAX_IFNAME_LEN,
    MAX_LOG_LEVEL, MAX_PASSWD_LEN, MAX_USERID_LEN, SyslogFacility,
};
use crate::error::{ConfigError, Location};
use crate::server::is_dns_name;
use tsp_proto::types::{TunnelMode, UnknownKeyword};

/// The blanks gogoc drops around names and values.
pub(super) fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// What is wrong with one value; becomes a [`ConfigError`] once file, line and key are known.
/// Never built from a password's text.
#[derive(Debug)]
pub(super) enum Problem {
    Invalid(String),
    Range { value: String, min: u64, max: u64 },
    TooLong { len: usize, max: usize },
}

impl Problem {
    pub(super) fn into_error(self, at: Location, key: &str) -> ConfigError {
        let key = key.to_owned();
        match self {
            Self::Invalid(reason) => ConfigError::BadValue { at, key, reason },
            Self::Range { value, min, max } => ConfigError::OutOfRange {
                at,
                key,
                value,
                min,
                max,
            },
            Self::TooLong { len, max } => ConfigError::ValueTooLong { at, key, len, max },
        }
    }
}

/// `default` for empty text (the key is there but says nothing), else the parsed text.
pub(super) fn or_default<T>(v: &str, default: T, parse: impl FnOnce(&str) -> Result<T, Problem>) -> Result<T, Problem> {
    if v.is_empty() { Ok(default) } else { parse(v) }
}

/// A value as shown in a message: escaped, and cut short so a hostile file cannot flood the
/// log. Never used for `passwd`.
fn shown(v: &str) -> String {
    const MAX: usize = 64;
    let mut out: String = v.chars().take(MAX).flat_map(char::escape_debug).collect();
    if v.chars().nth(MAX).is_some() {
        out.push('…');
    }
    format!("\"{out}\"")
}

pub(super) fn shown_name(name: &str) -> String {
    let quoted = shown(name);
    quoted[1..quoted.len() - 1].to_owned()
}

pub(super) fn parse_bool(v: &str, default: bool) -> Result<bool, Problem> {
    if v.is_empty() {
        Ok(default)
    } else if v.eq_ignore_ascii_case("yes") {
        Ok(true)
    } else if v.eq_ignore_ascii_case("no") {
        Ok(false)
    } else {
        Err(Problem::Invalid(format!("{} is not yes or no", shown(v))))
    }
}

/// A flag as written: the inverse of [`parse_bool`].
pub(super) fn yes_no(b: bool) -> String {
    (if b { "yes" } else { "no" }).to_owned()
}

pub(super) fn parse_keyword<T: std::str::FromStr<Err = UnknownKeyword>>(v: &str) -> Result<T, Problem> {
    v.parse().map_err(|e: UnknownKeyword| {
        Problem::Invalid(format!(
            "{} is not a valid {} (expected one of: {})",
            shown(v),
            e.what,
            e.expected
        ))
    })
}

/// `tunnel_mode`: one of the modes this client supports (not gogoc's `dslite`).
pub(super) fn parse_tunnel_mode(v: &str) -> Result<TunnelMode, Problem> {
    if v.eq_ignore_ascii_case("dslite") {
        return Err(Problem::Invalid(
            "DS-Lite (dslite) is not supported by this client; use v6anyv4, v6v4, \
             v6udpv4 or v4v6"
                .to_owned(),
        ));
    }
    parse_keyword(v)
}

/// A decimal number in `min..=max` (digits only: no sign, no spaces).
pub(super) fn parse_num(v: &str, min: u32, max: u32) -> Result<u32, Problem> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Problem::Invalid(format!("{} is not a whole number", shown(v))));
    }
    let range = || Problem::Range {
        value: shown_name(v),
        min: min.into(),
        max: max.into(),
    };
    let n: u64 = v.parse().map_err(|_| range())?;
    match u32::try_from(n) {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(range()),
    }
}

pub(super) fn parse_log_level(v: &str) -> Result<u8, Problem> {
    parse_num(v, 0, MAX_LOG_LEVEL.into()).map(|n| u8::try_from(n).unwrap_or(MAX_LOG_LEVEL))
}

pub(super) fn parse_rotation_size(v: &str) -> Result<LogRotationSize, Problem> {
    let bad = || Problem::Invalid(format!("{} is not one of 16, 32, 128, 1024 (KiB)", shown(v)));
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    v.parse::<u64>()
        .ok()
        .and_then(LogRotationSize::from_kib)
        .ok_or_else(bad)
}

pub(super) fn parse_facility(v: &str) -> Result<SyslogFacility, Problem> {
    SyslogFacility::ALL
        .into_iter()
        .find(|f| f.as_str().eq_ignore_ascii_case(v))
        .ok_or_else(|| Problem::Invalid(format!("{} is not USER or LOCAL0..LOCAL7", shown(v))))
}

pub(super) fn parse_v4(v: &str) -> Result<Ipv4Addr, Problem> {
    v.parse()
        .map_err(|_| Problem::Invalid(format!("{} is not an IPv4 address", shown(v))))
}

pub(super) fn parse_client_v4(v: &str) -> Result<AutoAddr<Ipv4Addr>, Problem> {
    if v.eq_ignore_ascii_case("auto") {
        return Ok(AutoAddr::Auto);
    }
    v.parse()
        .map(AutoAddr::Fixed)
        .map_err(|_| Problem::Invalid(format!("{} is neither auto nor an IPv4 address", shown(v))))
}

pub(super) fn parse_client_v6(v: &str) -> Result<AutoAddr<Ipv6Addr>, Problem> {
    if v.eq_ignore_ascii_case("auto") {
        return Ok(AutoAddr::Auto);
    }
    let bare = v.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(v);
    bare.parse()
        .map(AutoAddr::Fixed)
        .map_err(|_| Problem::Invalid(format!("{} is neither auto nor an IPv6 address", shown(v))))
}

pub(super) fn parse_filename(v: &str) -> Result<String, Problem> {
    check_len(v, MAX_FILENAME_LEN)?;
    // gogoc's set for file names; anything else it refuses.
    if !v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./\\".contains(&b)) {
        return Err(Problem::Invalid(format!(
            "{} may only contain letters, digits, '-', '_', '.', '/' and '\\'",
            shown(v)
        )));
    }
    Ok(v.to_owned())
}

pub(super) fn parse_dns_servers(v: &str) -> Result<Vec<String>, Problem> {
    check_len(v, MAX_DNS_SERVER_LEN)?;
    // gogoc splits with strtok, so empty entries ("a::b") are skipped, not errors.
    v.split(':')
        .filter(|name| !name.is_empty())
        .map(|name| {
            if is_dns_name(name) {
                Ok(name.to_owned())
            } else {
                Err(Problem::Invalid(format!(
                    "{} is not a DNS name (names are separated by ':')",
                    shown(name)
                )))
            }
        })
        .collect()
}

pub(super) fn check_userid(v: &str) -> Result<(), Problem> {
    check_printable(v, MAX_USERID_LEN, "may only contain printable ASCII characters")
}

/// Like `check_userid`, but the messages never contain (any part of) the value.
pub(super) fn check_passwd(v: &str) -> Result<(), Problem> {
    check_printable(
        v,
        MAX_PASSWD_LEN,
        "the password may only contain printable ASCII characters",
    )
}

/// At most `max` bytes of printable ASCII, else `TooLong` or `invalid`; never quotes `v`.
fn check_printable(v: &str, max: usize, invalid: &str) -> Result<(), Problem> {
    check_len(v, max)?;
    if !v.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Err(Problem::Invalid(invalid.to_owned()));
    }
    Ok(())
}

/// `TooLong` when `v` has more than `max` bytes.
fn check_len(v: &str, max: usize) -> Result<(), Problem> {
    if v.len() > max {
        return Err(Problem::TooLong { len: v.len(), max });
    }
    Ok(())
}

pub(super) fn check_dir(v: &str) -> Result<(), Problem> {
    check_len(v, MAX_DIR_LEN)?;
    if v.chars().any(char::is_control) {
        return Err(Problem::Invalid("contains a control character".to_owned()));
    }
    Ok(())
}

/// Tunnel interfaces: empty (none), or a Linux interface name made of the characters gogoc
/// allows here (letters, digits, `-`, `.`).
pub(super) fn check_tunnel_ifname(v: &str) -> Result<(), Problem> {
    check_ifname(v, b"-.", "letters, digits, '-' and '.'")
}

/// The LAN interface: empty (none), or a Linux interface name made of the characters gogoc
/// allows for it (its file-name set minus the path separators).
pub(super) fn check_lan_ifname(v: &str) -> Result<(), Problem> {
    check_ifname(v, b"-._", "letters, digits, '-', '_' and '.'")
}

fn check_ifname(v: &str, extra: &[u8], allowed: &str) -> Result<(), Problem> {
    if v.is_empty() {
        return Ok(());
    }
    check_len(v, MAX_IFNAME_LEN)?;
    let chars_ok = v.bytes().all(|b| b.is_ascii_alphanumeric() || extra.contains(&b));
    if !chars_ok || v == "." || v == ".." {
        return Err(Problem::Invalid(format!(
            "{} is not an interface name (1 to {MAX_IFNAME_LEN} {allowed})",
            shown(v)
        )));
    }
    Ok(())
}

pub(super) fn check_template(v: &str) -> Result<(), Problem> {
    let known = |d: Dialect| d.templates().contains(&v);
    if known(Dialect::Gogoc) || known(Dialect::Gw6c) {
        Ok(())
    } else {
        Err(Problem::Invalid(format!(
            "{} is not a known template (gogoc: {})",
            shown(v),
            Dialect::Gogoc.templates().join(", ")
        )))
    }
}
