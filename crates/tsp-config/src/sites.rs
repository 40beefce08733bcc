//! gogoc's two small state files (docs/tsp-wire.md §7): the sorted broker list from the last redirection
//! (`broker_list`, default `tsp-broker-list.txt`) and the last server a negotiation succeeded
//! with (`last_server`, default `tsp-last-server.txt`), plus the order in which a client
//! tries servers ([`candidates`]).
//!
//! The text functions are pure; `load_*`/`save_*` are the thin file I/O around them. Both
//! files are written in gogoc's format, so gogoc and this client can share them; reading
//! fixes gogoc's quirk of not bracketing IPv6 brokers from the list (docs/tsp-wire.md §10 item 13).

use std::fs;
use std::io::{self, Read as _};
use std::net::Ipv6Addr;
use std::path::Path;

use crate::{ServerError, split_server};
use tsp_proto::types::MAX_BROKERS;

/// gogoc's default `broker_list` file name.
pub const DEFAULT_BROKER_LIST: &str = "tsp-broker-list.txt";
/// gogoc's default `last_server` file name.
pub const DEFAULT_LAST_SERVER: &str = "tsp-last-server.txt";
/// Longest entry in either file (gogoc's 255-byte buffers, NUL included).
pub const MAX_ENTRY_LEN: usize = 254;
/// Largest file `load_*` reads: far more than 50 entries of 254 bytes.
pub const MAX_FILE_SIZE: usize = 64 * 1024;

/// Why one entry (a line of either file) is not a usable server string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Nothing but whitespace.
    #[error("empty")]
    Empty,
    /// Longer than gogoc's buffers.
    #[error("{0} bytes long, at most {MAX_ENTRY_LEN}")]
    TooLong(usize),
    /// Not `host`, `a.b.c.d` or `[v6]` with an optional `:port`.
    #[error(transparent)]
    Invalid(#[from] ServerError),
}

/// Failure to read or write one of the files; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum SitesError {
    /// Reading, writing or renaming failed (a missing file is not an error when loading).
    #[error("{file}: {source}")]
    Io { file: String, source: io::Error },
    /// Over [`MAX_FILE_SIZE`]: not one of these files.
    #[error("{file} is too large ({size} bytes, at most {max})")]
    TooLarge { file: String, size: u64, max: u64 },
    /// The server string would not read back (see [`normalize_entry`]).
    #[error("{file}: cannot store {server:?}: {reason}")]
    BadEntry {
        file: String,
        server: String,
        reason: EntryError,
    },
}

/// Checks one entry and returns it as a server string: a bare IPv6 address (as gogoc writes
/// them) gets its brackets back, anything else must pass [`split_server`] as it is.
pub fn normalize_entry(entry: &str) -> Result<String, EntryError> {
    if entry.trim().is_empty() {
        return Err(EntryError::Empty);
    }
    if entry.len() > MAX_ENTRY_LEN {
        return Err(EntryError::TooLong(entry.len()));
    }
    if entry.parse::<Ipv6Addr>().is_ok() {
        return Ok(format!("[{entry}]"));
    }
    split_server(entry)?;
    Ok(entry.to_owned())
}

/// The broker list file's text: one entry per line, each `\n`-terminated, no comments, IPv6
/// literals without brackets (`[2001:db8::1]` → `2001:db8::1`), exactly as gogoc writes it.
///
/// An IPv6 literal that carries a port keeps its brackets (without them the port could not be
/// told apart; gogoc never writes ports). Entries [`parse_broker_list`] would drop are left
/// out (with a warning), as is everything after the first [`MAX_BROKERS`], so that the file
/// always reads back as the same list.
///
/// gogoc writes the list only when a redirection carried more than one broker; that choice
/// is the caller's.
pub fn format_broker_list(servers: &[String]) -> String {
    let mut out = String::new();
    let mut kept = 0;
    for server in servers {
        if let Err(e) = normalize_entry(server) {
            tracing::warn!("broker {server:?} left out of the broker list: {e}");
            continue;
        }
        if kept == MAX_BROKERS {
            tracing::warn!("broker list cut at {MAX_BROKERS} entries");
            break;
        }
        let bare = server
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .filter(|s| s.parse::<Ipv6Addr>().is_ok());
        out.push_str(bare.unwrap_or(server));
        out.push('\n');
        kept += 1;
    }
    out
}

/// Reads a broker list file's text (ours or gogoc's) as server strings, in file order.
///
/// Lines end with LF or CRLF; surrounding whitespace is ignored; blank lines and lines
/// starting with `#` are skipped (gogoc would take a `#` line for a broker). A line that is
/// a bare IPv6 address becomes `[addr]`, which gogoc forgets to do. Lines longer than
/// [`MAX_ENTRY_LEN`] or that are not a valid server string are dropped with a warning, and
/// only the first [`MAX_BROKERS`] entries are kept (gogoc rejects the whole file then).
pub fn parse_broker_list(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if out.len() == MAX_BROKERS {
            tracing::warn!("broker list: only the first {MAX_BROKERS} entries are used");
            break;
        }
        match normalize_entry(line) {
            Ok(server) => out.push(server),
            Err(e) => tracing::warn!("broker list line {}: entry dropped: {e}", n + 1),
        }
    }
    out
}

/// The last-server file's text: the server string verbatim and `\n`, as gogoc writes it.
pub fn format_last_server(server: &str) -> String {
    format!("{server}\n")
}

/// Reads the last-server file's text the way gogoc does: lines starting with `#`, CR or LF
/// are skipped, the first other line is the server, trailing CR/LF stripped.
///
/// Stricter than gogoc: that line must be a valid server string of at most
/// [`MAX_ENTRY_LEN`] bytes, else `None` (with a warning) — with `always_use_same_server` a
/// garbage entry would otherwise pin the client to it forever. A bare IPv6 address is
/// bracketed, as in the broker list.
pub fn parse_last_server(text: &str) -> Option<String> {
    let line = text
        .split('\n')
        .find(|l| !(l.is_empty() || l.starts_with(['#', '\r'])))?;
    let line = line.trim_end_matches(['\r', '\n']);
    match normalize_entry(line) {
        Ok(server) => Some(server),
        Err(e) => {
            tracing::warn!("last server entry ignored: {e}");
            None
        }
    }
}

/// Reads a broker list file (see [`parse_broker_list`]). A missing file is an empty list.
/// Files over [`MAX_FILE_SIZE`] and anything that is not a regular file are refused.
pub fn load_broker_list(path: &Path) -> Result<Vec<String>, SitesError> {
    Ok(read_bounded(path)?.map(|t| parse_broker_list(&t)).unwrap_or_default())
}

/// Replaces a broker list file with `servers` (see [`format_broker_list`]), atomically.
pub fn save_broker_list(path: &Path, servers: &[String]) -> Result<(), SitesError> {
    write_atomic(path, &format_broker_list(servers))
}

/// Reads a last-server file (see [`parse_last_server`]). A missing file is `None`.
/// Files over [`MAX_FILE_SIZE`] and anything that is not a regular file are refused.
pub fn load_last_server(path: &Path) -> Result<Option<String>, SitesError> {
    Ok(read_bounded(path)?.and_then(|t| parse_last_server(&t)))
}

/// Replaces a last-server file with `server` (see [`format_last_server`]), atomically.
/// Refuses a server string that [`parse_last_server`] would not read back.
pub fn save_last_server(path: &Path, server: &str) -> Result<(), SitesError> {
    // The check also keeps line breaks out of the file.
    normalize_entry(server).map_err(|reason| SitesError::BadEntry {
        file: path.display().to_string(),
        server: server.to_owned(),
        reason,
    })?;
    write_atomic(path, &format_last_server(server))
}

/// The servers a client tries, in order.
///
/// * `always_use_same_server` with a `last` server: only that one. gogoc then never goes back
///   to the configured server; only the transport is cycled.
/// * Otherwise the `configured` server first, then the `broker_list` entries (from
///   [`load_broker_list`]) in file order, without re-ranking. `last` is not used (gogoc
///   reads it only for `always_use_same_server`).
///
/// Exact duplicates are dropped, keeping the first. The caller moves on to the next
/// candidate only when a server could not be reached at all (nothing listening, no answer);
/// a broker that answered — even with an error — ends the walk, as in gogoc, and a
/// redirection replaces the list with its own (ranked) brokers.
pub fn candidates(
    configured: &str,
    last: Option<&str>,
    always_use_same_server: bool,
    broker_list: &[String],
) -> Vec<String> {
    if always_use_same_server && let Some(last) = last.filter(|l| !l.is_empty()) {
        return vec![last.to_owned()];
    }
    let mut out: Vec<String> = Vec::with_capacity(1 + broker_list.len());
    for server in std::iter::once(configured).chain(broker_list.iter().map(String::as_str)) {
        if !server.is_empty() && !out.iter().any(|s| s == server) {
            out.push(server.to_owned());
        }
    }
    out
}

/// The file's text, lossily decoded (a bad byte spoils its line only), or `None` if it does
/// not exist.
fn read_bounded(path: &Path) -> Result<Option<String>, SitesError> {
    let file = || path.display().to_string();
    let io_err = |source| SitesError::Io { file: file(), source };
    // Checked before opening: opening a FIFO would block.
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    if !meta.is_file() {
        return Err(io_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    let too_large = |size| SitesError::TooLarge {
        file: file(),
        size,
        max: MAX_FILE_SIZE as u64,
    };
    if meta.len() > MAX_FILE_SIZE as u64 {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::new();
    // Bounded read: the file may grow between the check and the read.
    fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_SIZE as u64 + 1).read_to_end(&mut bytes))
        .map_err(io_err)?;
    if bytes.len() > MAX_FILE_SIZE {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Writes `text` atomically (see [`crate::fsutil::write_atomic`]); the files hold nothing secret.
fn write_atomic(path: &Path, text: &str) -> Result<(), SitesError> {
    crate::fsutil::write_atomic(path, text.as_bytes(), 0o644).map_err(|source| SitesError::Io {
        file: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    /// The list from a real Freenet6 install (§7).
    const FREENET6: &str =
        "anon-amsterdam.freenet6.net\nanon-montreal.freenet6.net\nanon-taipei.freenet6.net\nanon-sydney.freenet6.net\n";

    #[test]
    fn gogoc_example_list() {
        let list = parse_broker_list(FREENET6);
        assert_eq!(
            list,
            strings(&[
                "anon-amsterdam.freenet6.net",
                "anon-montreal.freenet6.net",
                "anon-taipei.freenet6.net",
                "anon-sydney.freenet6.net",
            ])
        );
        assert_eq!(format_broker_list(&list), FREENET6);
    }

    #[test]
    fn ipv6_round_trip() {
        let list = strings(&[
            "[2001:db8::1]",
            "192.0.2.1",
            "[::ffff:192.0.2.2]",
            "broker.example",
            "[2001:db8::2]:3654",
        ]);
        let text = format_broker_list(&list);
        // gogoc's format: no brackets (except where a port needs them).
        assert_eq!(
            text,
            "2001:db8::1\n192.0.2.1\n::ffff:192.0.2.2\nbroker.example\n[2001:db8::2]:3654\n"
        );
        assert_eq!(parse_broker_list(&text), list);
        // Whatever the brackets, each entry is a valid server string again.
        assert!(parse_broker_list(&text).iter().all(|s| split_server(s).is_ok()));
    }

    #[test]
    fn comments_blank_lines_and_crlf() {
        let text = "# written by hand\r\n\r\n  anon-montreal.freenet6.net  \r\n\n#2001:db8::9\n2001:db8::1\r\n\t\n192.0.2.1:3653";
        assert_eq!(
            parse_broker_list(text),
            strings(&["anon-montreal.freenet6.net", "[2001:db8::1]", "192.0.2.1:3653"])
        );
    }

    #[test]
    fn oversize_and_garbage_dropped() {
        let long = format!("{}.example", "a".repeat(250));
        let text = format!(
            "good.example\n{long}\nbad_name.example\nhas space.example\n[2001:db8::1\n1.2.3.999\n\u{fffd}\0\n\
             fe80::1%eth0\nhost:99999\nalso-good.example\n"
        );
        assert_eq!(
            parse_broker_list(&text),
            strings(&["good.example", "also-good.example"])
        );
        assert_eq!(normalize_entry(&long), Err(EntryError::TooLong(long.len())));
        // Bad entries never make it into the file either.
        let out = format_broker_list(&strings(&["ok.example", "a\nb", "", "x y", "[1.2.3.4]"]));
        assert_eq!(out, "ok.example\n");
    }

    #[test]
    fn at_most_50_entries() {
        let text: String = (0..60).map(|i| format!("b{i}.example\n")).collect();
        let list = parse_broker_list(&text);
        assert_eq!(list.len(), MAX_BROKERS);
        assert_eq!(list[49], "b49.example");
        let servers: Vec<String> = (0..60).map(|i| format!("b{i}.example")).collect();
        assert_eq!(format_broker_list(&servers).lines().count(), MAX_BROKERS);
    }

    #[test]
    fn last_server_format_and_parse() {
        assert_eq!(format_last_server("[2001:db8::1]:3653"), "[2001:db8::1]:3653\n");
        assert_eq!(
            parse_last_server("[2001:db8::1]:3653\n").as_deref(),
            Some("[2001:db8::1]:3653")
        );
        assert_eq!(parse_last_server("broker.example").as_deref(), Some("broker.example"));
        assert_eq!(
            parse_last_server("# comment\n\r\n\nbroker.example\r\nsecond.example\n").as_deref(),
            Some("broker.example")
        );
        assert_eq!(parse_last_server("2001:db8::1\n").as_deref(), Some("[2001:db8::1]"));
        assert_eq!(parse_last_server(""), None);
        assert_eq!(parse_last_server("# only a comment\n\n"), None);
        // The first remaining line decides; garbage there is not a server.
        assert_eq!(parse_last_server("bad server\ngood.example\n"), None);
        assert_eq!(parse_last_server(&format!("{}\n", "a".repeat(255))), None);
        // gogoc skips lines that START with CR only; a line starting with a space is the server.
        assert_eq!(parse_last_server(" \ngood.example\n"), None);
    }

    #[test]
    fn candidates_order() {
        let list = strings(&["b1.example", "[2001:db8::1]", "configured.example", "b1.example"]);
        // Configured first, then the list, duplicates dropped; last ignored.
        assert_eq!(
            candidates("configured.example", Some("last.example"), false, &list),
            strings(&["configured.example", "b1.example", "[2001:db8::1]"])
        );
        // Sticky: only the last server, never back to the configured one.
        assert_eq!(
            candidates("configured.example", Some("last.example"), true, &list),
            strings(&["last.example"])
        );
        // Sticky without a last server behaves as usual.
        assert_eq!(
            candidates("configured.example", None, true, &[]),
            strings(&["configured.example"])
        );
        assert_eq!(
            candidates("configured.example", Some(""), true, &[]),
            strings(&["configured.example"])
        );
        assert_eq!(candidates("c.example", None, false, &[]), strings(&["c.example"]));
    }

    #[test]
    fn files_round_trip() {
        let dir = std::env::temp_dir().join(format!("nm-tsp-sites-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let list_path = dir.join(DEFAULT_BROKER_LIST);
        let last_path = dir.join(DEFAULT_LAST_SERVER);
        // Missing files are simply empty.
        assert_eq!(
            load_broker_list(&list_path).expect("missing list"),
            Vec::<String>::new()
        );
        assert_eq!(load_last_server(&last_path).expect("missing last"), None);

        let list = strings(&["[2001:db8::1]", "anon-taipei.freenet6.net"]);
        save_broker_list(&list_path, &list).expect("save list");
        assert_eq!(
            fs::read_to_string(&list_path).expect("read"),
            "2001:db8::1\nanon-taipei.freenet6.net\n"
        );
        assert_eq!(load_broker_list(&list_path).expect("load list"), list);

        save_last_server(&last_path, "[2001:db8::1]:3653").expect("save last");
        assert_eq!(fs::read_to_string(&last_path).expect("read"), "[2001:db8::1]:3653\n");
        assert_eq!(
            load_last_server(&last_path).expect("load last").as_deref(),
            Some("[2001:db8::1]:3653")
        );
        assert!(matches!(
            save_last_server(&last_path, "a\nb"),
            Err(SitesError::BadEntry { .. })
        ));
        // Unchanged after the refused save, and no temporary file left behind.
        assert_eq!(
            load_last_server(&last_path).expect("load last").as_deref(),
            Some("[2001:db8::1]:3653")
        );
        assert_eq!(fs::read_dir(&dir).expect("list dir").count(), 2);

        fs::write(&list_path, vec![b'#'; MAX_FILE_SIZE + 1]).expect("write big");
        assert!(matches!(load_broker_list(&list_path), Err(SitesError::TooLarge { .. })));
        assert!(
            matches!(load_last_server(&dir), Err(SitesError::Io { .. })),
            "a directory is refused"
        );
        fs::remove_dir_all(&dir).expect("clean up");
    }
}
