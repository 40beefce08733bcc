//! gogoc.conf (gogoCLIENT 1.2) and gw6c.conf (Gateway6 Client 5.x): typed model, reader and
//! writer. Pure: text in, [`GogocConfig`] out, and back (docs/tsp-wire.md §9).
//!
//! Format, as gogoc reads it: one `name=value` per line; lines whose first non-blank
//! character is `#` are comments; blank lines are ignored; spaces and tabs around the name
//! and the value are dropped; the value is everything after the first `=` (so it may contain
//! `=` or `#`). We also accept CRLF line ends and a UTF-8 byte-order mark. We are stricter
//! than gogoc where gogoc is silently surprising: unknown keys, duplicate keys, lines
//! without `=` and control characters are errors, each naming file, line and key.
//!
//! [`model`] holds the types; [`keys`] the one list of fields (key names, read, written) that
//! [`read`], [`check`] and [`write`] derive from; [`values`] the rules for one value's text.

mod check;
mod keys;
mod model;
mod read;
mod values;
mod write;

pub use check::kernel_owned_ifname;
pub use model::{
    AutoAddr, Dialect, GogocConfig, LogLevels, LogRotationSize, MAX_DIR_LEN, MAX_DNS_SERVER_LEN, MAX_FILENAME_LEN,
    MAX_IFNAME_LEN, MAX_KEEPALIVE_INTERVAL, MAX_LINE_LEN, MAX_LOG_LEVEL, MAX_PASSWD_LEN, MAX_RETRY_DELAY, MAX_TEXT_LEN,
    MAX_USERID_LEN, SyslogFacility,
};
pub(crate) use read::{edit_distance, set_value};
pub use read::{parse, parse_without_password};
pub(crate) use write::non_default_value;
pub use write::{non_default_keys, to_text, to_text_with};
