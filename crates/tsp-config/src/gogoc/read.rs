//! Reading gogoc.conf / gw6c.conf: lines to a [`GogocConfig`], every error naming file, line and
//! key (docs/tsp-wire.md §9).

use std::path::Path;

use super::check::check_cross;
use super::keys::{Field, KeyKind, Mark, Seen, keys, lookup};
use super::model::{Dialect, GogocConfig, MAX_LINE_LEN, MAX_TEXT_LEN};
use super::values::{is_blank, shown_name};
use crate::error::{ConfigError, Location};

// ---------------------------------------------------------------------------------------
// Reading

/// Reads a gogoc.conf or gw6c.conf text. `origin` only names the file in error messages
/// (and, when no key reveals the dialect, a file name starting with `gw6c` selects gw6c).
///
/// An empty value means the key's default, except for `if_tunnel_*` where it means "no
/// interface" (gogoc has no default for them either; the defaults apply when the key is
/// absent). `server` may be absent; see [`GogocConfig::validate_for_connect`].
pub fn parse(text: &str, origin: &Path) -> Result<GogocConfig, ConfigError> {
    parse_with(text, origin, true)
}

/// [`parse`], except that an empty `passwd` is accepted whatever `auth_method` says: for
/// importing a file into a NetworkManager profile, which asks for the password when it
/// connects (an exported profile's file has `passwd=` left empty).
pub fn parse_without_password(text: &str, origin: &Path) -> Result<GogocConfig, ConfigError> {
    parse_with(text, origin, false)
}

fn parse_with(text: &str, origin: &Path, require_password: bool) -> Result<GogocConfig, ConfigError> {
    let file = origin.display().to_string();
    if text.len() > MAX_TEXT_LEN {
        return Err(ConfigError::TooLarge {
            file,
            size: text.len() as u64,
            max: MAX_TEXT_LEN as u64,
        });
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut cfg = GogocConfig::default();
    let mut seen = Seen::default();
    let mut gogoc_mark: Option<(usize, &'static str)> = None;
    let mut gw6c_mark: Option<(usize, &'static str)> = None;
    let mut log_filename_given = false;

    for (index, raw) in text.split('\n').enumerate() {
        let lineno = index + 1;
        let at = || Location {
            file: file.clone(),
            line: Some(lineno),
        };
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.len() > MAX_LINE_LEN {
            return Err(ConfigError::LineTooLong {
                at: at(),
                len: line.len(),
                max: MAX_LINE_LEN,
            });
        }
        let content = line.trim_matches(is_blank);
        if let Some(c) = line.chars().find(|c| c.is_control() && *c != '\t') {
            // Name the key only when it is one of ours; never show the line.
            let key = content
                .split_once('=')
                .and_then(|(name, _)| lookup(name.trim_matches(is_blank)))
                .map(|(name, _)| name.to_owned());
            return Err(ConfigError::ControlChar {
                at: at(),
                key,
                code: u32::from(c),
            });
        }
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let Some((name, value)) = content.split_once('=') else {
            return Err(ConfigError::MissingEquals { at: at() });
        };
        let (name, value) = (name.trim_matches(is_blank), value.trim_matches(is_blank));
        if name.is_empty() {
            return Err(ConfigError::EmptyKey { at: at() });
        }
        let Some((name, kind)) = lookup(name) else {
            return Err(ConfigError::UnknownKey {
                at: at(),
                key: shown_name(name),
                hint: suggestion(name),
            });
        };
        let (field, mark) = match kind {
            KeyKind::Current(field, mark) => (field, mark),
            KeyKind::Legacy(field) => (field, Mark::Both),
            KeyKind::Obsolete(advice) => {
                return Err(ConfigError::ObsoleteKey {
                    at: at(),
                    key: name.to_owned(),
                    advice,
                });
            }
        };
        if let Some((first_line, _)) = seen.get(field) {
            return Err(ConfigError::DuplicateKey {
                at: at(),
                key: name.to_owned(),
                first_line,
            });
        }
        seen.0[field.index()] = Some((lineno, name));
        match mark {
            Mark::Gogoc => gogoc_mark = gogoc_mark.or(Some((lineno, name))),
            Mark::Gw6c => gw6c_mark = gw6c_mark.or(Some((lineno, name))),
            Mark::Both => {}
        }
        if let (Some((gl, gk)), Some((wl, wk))) = (gogoc_mark, gw6c_mark) {
            return Err(ConfigError::Conflict {
                at: at(),
                keys: vec![gk.to_owned(), wk.to_owned()],
                message: format!(
                    "gogoc key \"{gk}\" (line {gl}) and gw6c key \"{wk}\" (line {wl}) in one \
                     file; use the keys of one client only"
                ),
            });
        }
        if field == Field::LogFilename && !value.is_empty() {
            log_filename_given = true;
        }
        field.read(&mut cfg, value).map_err(|p| p.into_error(at(), name))?;
    }

    cfg.dialect = match (gogoc_mark, gw6c_mark) {
        (_, Some(_)) => Dialect::Gw6c,
        (Some(_), None) => Dialect::Gogoc,
        (None, None) => {
            let named_gw6c = origin
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("gw6c"));
            if named_gw6c { Dialect::Gw6c } else { Dialect::Gogoc }
        }
    };
    if cfg.dialect == Dialect::Gw6c {
        if !log_filename_given {
            cfg.log_filename = Dialect::Gw6c.default_log_filename().to_owned();
        }
        // gw6c waits a fixed retry_delay between attempts: no doubling.
        cfg.retry_delay_max = cfg.retry_delay;
    }
    check_cross(&cfg, &seen, &file, require_password)?;
    Ok(cfg)
}

/// Sets the setting named by the gogoc.conf key `gogoc_key` from `value`, with the rules of
/// the file (an empty value means the default); errors name `at` and `shown_key`. Used for
/// NetworkManager's vpn.data, whose keys map onto gogoc.conf's.
pub(crate) fn set_value(
    cfg: &mut GogocConfig,
    gogoc_key: &str,
    value: &str,
    at: Location,
    shown_key: &str,
) -> Result<(), ConfigError> {
    match lookup(gogoc_key) {
        Some((_, KeyKind::Current(field, _) | KeyKind::Legacy(field))) => {
            field.read(cfg, value).map_err(|p| p.into_error(at, shown_key))
        }
        _ => Err(ConfigError::UnknownKey {
            at,
            key: shown_name(shown_key),
            hint: String::new(),
        }),
    }
}

/// Key-name suggestion for an unknown key: same name in another case, or one close by.
fn suggestion(name: &str) -> String {
    const MAX_EDITS: usize = 2;
    if name.len() > 40 {
        return String::new();
    }
    let lower = name.to_ascii_lowercase();
    keys()
        .map(|(k, _)| (edit_distance(&lower, k), k))
        .filter(|(d, _)| *d <= MAX_EDITS)
        .min()
        .map(|(_, k)| format!(" (did you mean \"{k}\"?)"))
        .unwrap_or_default()
}

/// Levenshtein distance over bytes; the inputs are short (bounded by the caller).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != cb);
            cur.push(subst.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}
