//! The one error type of `config`. Every variant carries where it happened (file, and the line
//! when there is one) and the key(s) involved, so a user can go straight to the line to fix.
//! No variant ever carries a value of `passwd`: messages quote values only for keys that are
//! not secret, and never quote a line that could not be split into name and value.
//!
//! See docs/tsp-wire.md §9.

use std::fmt;
use std::io;

/// Where a problem was found: the file as the caller named it, and the 1-based line number
/// when the problem belongs to one line (cross-key problems point at the last involved line
/// that is present in the file; problems of a configuration built in memory have no line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file name as given to `parse`/`load` (displayed, not canonicalised).
    pub file: String,
    /// 1-based line number, if the problem belongs to a line.
    pub line: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}", self.file),
            None => f.write_str(&self.file),
        }
    }
}

/// Why a gogoc.conf / gw6c.conf could not be read, written or used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A name that is not a gogoc/gw6c key. Only the (shortened, escaped) name is shown.
    #[error("{at}: unknown key \"{key}\"{hint}")]
    UnknownKey {
        at: Location,
        key: String,
        /// Either empty or a `" (did you mean …?)"` suggestion.
        hint: String,
    },
    /// A key of the old tspc 1.x/2.x format that has no equivalent any more.
    #[error("{at}: key \"{key}\" is from the old tspc format and no longer exists: {advice}")]
    ObsoleteKey {
        at: Location,
        key: String,
        advice: &'static str,
    },
    /// A value of the wrong form (not a number, not yes/no, bad characters, …).
    #[error("{at}: key \"{key}\": {reason}")]
    BadValue { at: Location, key: String, reason: String },
    /// A number outside the accepted interval (both ends included).
    #[error("{at}: key \"{key}\": {value} is out of range {min}..{max}")]
    OutOfRange {
        at: Location,
        key: String,
        value: String,
        min: u64,
        max: u64,
    },
    /// A value longer than the key allows.
    #[error("{at}: key \"{key}\": value is too long ({len} bytes, at most {max})")]
    ValueTooLong {
        at: Location,
        key: String,
        len: usize,
        max: usize,
    },
    /// The same setting appears twice (also when spelled two ways, e.g. `tsp_dir` and
    /// `gogoc_dir`).
    #[error("{at}: key \"{key}\" is set twice (first on line {first_line})")]
    DuplicateKey {
        at: Location,
        key: String,
        first_line: usize,
    },
    /// A non-comment line without `=`. The line itself is not shown: it may be a password.
    #[error("{at}: line is neither a comment nor name=value (no \"=\" found)")]
    MissingEquals { at: Location },
    /// A line starting with `=`.
    #[error("{at}: line has a value but no key name before \"=\"")]
    EmptyKey { at: Location },
    /// Bytes that are not UTF-8 (only `load` can see these).
    #[error("{at}: the file is not valid UTF-8 text")]
    InvalidUtf8 { at: Location },
    /// A control character (other than TAB, and CR at the end of the line).
    #[error("{at}: {} contains control character U+{code:04X}", key_phrase(.key))]
    ControlChar {
        at: Location,
        key: Option<String>,
        code: u32,
    },
    /// A line longer than any valid line can be.
    #[error("{at}: line is too long ({len} bytes, at most {max})")]
    LineTooLong { at: Location, len: usize, max: usize },
    /// Settings that are each valid but not together (or a required setting left empty).
    #[error("{at}: {message}")]
    Conflict {
        at: Location,
        keys: Vec<String>,
        message: String,
    },
    /// A setting needed to connect is not set (see `GogocConfig::validate_for_connect`).
    #[error("{at}: key \"{key}\" is not set: {why}")]
    MissingKey {
        at: Location,
        key: String,
        why: &'static str,
    },
    /// The file (or text) is larger than any configuration should be.
    #[error("{file}: configuration is too large ({size} bytes, at most {max})")]
    TooLarge { file: String, size: u64, max: u64 },
    /// Opening, reading or writing the file failed.
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: io::Error,
    },
}

fn key_phrase(key: &Option<String>) -> String {
    match key {
        Some(k) => format!("key \"{k}\""),
        None => "line".to_owned(),
    }
}

impl ConfigError {
    /// The file the error is about.
    pub fn file(&self) -> &str {
        match self {
            Self::TooLarge { file, .. } | Self::Io { file, .. } => file,
            other => other.location().map(|l| l.file.as_str()).unwrap_or_default(),
        }
    }

    /// The 1-based line number, when the error belongs to a line.
    pub fn line(&self) -> Option<usize> {
        self.location().and_then(|l| l.line)
    }

    /// The key(s) the error is about, as spelled in the file (empty for line-level errors).
    pub fn keys(&self) -> Vec<&str> {
        match self {
            Self::UnknownKey { key, .. }
            | Self::ObsoleteKey { key, .. }
            | Self::BadValue { key, .. }
            | Self::OutOfRange { key, .. }
            | Self::ValueTooLong { key, .. }
            | Self::DuplicateKey { key, .. }
            | Self::MissingKey { key, .. } => vec![key.as_str()],
            Self::ControlChar { key: Some(key), .. } => vec![key.as_str()],
            Self::Conflict { keys, .. } => keys.iter().map(String::as_str).collect(),
            _ => Vec::new(),
        }
    }

    fn location(&self) -> Option<&Location> {
        match self {
            Self::UnknownKey { at, .. }
            | Self::ObsoleteKey { at, .. }
            | Self::BadValue { at, .. }
            | Self::OutOfRange { at, .. }
            | Self::ValueTooLong { at, .. }
            | Self::DuplicateKey { at, .. }
            | Self::MissingEquals { at }
            | Self::EmptyKey { at }
            | Self::InvalidUtf8 { at }
            | Self::ControlChar { at, .. }
            | Self::LineTooLong { at, .. }
            | Self::Conflict { at, .. }
            | Self::MissingKey { at, .. } => Some(at),
            Self::TooLarge { .. } | Self::Io { .. } => None,
        }
    }
}
