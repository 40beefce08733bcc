//! `tsp-config`: what a tsp connection is configured with, and the names it is known by.
//! gogoc.conf / gw6c.conf read, checked and written with gogoc 1.2's defaults and rules
//! (docs/tsp-wire.md §9; `tspc -f`), NetworkManager's vpn.data and vpn.secrets checked by the same
//! rules ([`vpn_data`]), the plugin's D-Bus service name, vpn.data keys and secret flags
//! ([`names`]), the broker-list and last-server files ([`sites`], docs/tsp-wire.md §7) and atomic
//! file writes ([`fsutil`]).
//!
//! It is all that the libnm editor plugin and the GTK editors need, so it must not depend on
//! tokio, zbus, rtnetlink, tun, secret-service or anything that opens a socket; only on
//! `tsp-proto` for the protocol's types.
//!
//! Parsing is pure ([`parse`], [`to_text`]); [`load`] and [`save`] are the thin file I/O
//! around it.

mod error;
pub mod fsutil;
mod gogoc;
pub mod names;
mod server;
pub mod sites;
pub mod vpn_data;

#[cfg(test)]
mod tests;

use std::fs;
use std::io::{self, Read as _};
use std::path::Path;

use zeroize::Zeroizing;

pub use error::{ConfigError, Location};
pub use gogoc::{
    AutoAddr, Dialect, GogocConfig, LogLevels, LogRotationSize, MAX_DIR_LEN, MAX_DNS_SERVER_LEN, MAX_FILENAME_LEN,
    MAX_IFNAME_LEN, MAX_KEEPALIVE_INTERVAL, MAX_LINE_LEN, MAX_LOG_LEVEL, MAX_PASSWD_LEN, MAX_RETRY_DELAY, MAX_TEXT_LEN,
    MAX_USERID_LEN, SyslogFacility, kernel_owned_ifname, non_default_keys, parse, parse_without_password, to_text,
    to_text_with,
};
pub use server::{Host, MAX_SERVER_LEN, ServerError, split_server};

/// Largest configuration file [`load`] reads.
pub const MAX_FILE_SIZE: usize = MAX_TEXT_LEN;

/// Reads and parses a gogoc.conf / gw6c.conf. Refuses files over 64 KiB and anything that is
/// not a regular file; every error names `path`.
pub fn load(path: &Path) -> Result<GogocConfig, ConfigError> {
    load_with(path, true)
}

/// [`load`] with [`parse_without_password`]'s rule: an empty `passwd` is no error (import
/// into a NetworkManager profile, which asks for the password when connecting).
pub fn load_without_password(path: &Path) -> Result<GogocConfig, ConfigError> {
    load_with(path, false)
}

fn load_with(path: &Path, require_password: bool) -> Result<GogocConfig, ConfigError> {
    let file = || path.display().to_string();
    let io_err = |source| ConfigError::Io { file: file(), source };
    // Checked before opening: opening a FIFO would block.
    let meta = fs::metadata(path).map_err(io_err)?;
    if !meta.is_file() {
        return Err(io_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    if meta.len() > MAX_FILE_SIZE as u64 {
        return Err(ConfigError::TooLarge {
            file: file(),
            size: meta.len(),
            max: MAX_FILE_SIZE as u64,
        });
    }
    // Sized up front so the buffer (which may hold the password) is never reallocated.
    let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_FILE_SIZE.min(meta.len() as usize) + 1));
    // Bounded read: the file may grow between the check and the read.
    fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_SIZE as u64 + 1).read_to_end(&mut bytes))
        .map_err(io_err)?;
    if bytes.len() > MAX_FILE_SIZE {
        return Err(ConfigError::TooLarge {
            file: file(),
            size: bytes.len() as u64,
            max: MAX_FILE_SIZE as u64,
        });
    }
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()].iter().filter(|b| **b == b'\n').count();
        ConfigError::InvalidUtf8 {
            at: Location {
                file: file(),
                line: Some(line),
            },
        }
    })?;
    if require_password {
        parse(text, path)
    } else {
        parse_without_password(text, path)
    }
}

/// Writes `cfg` to `path` (see [`to_text_with`]) after checking it with
/// [`GogocConfig::validate`]. The file is replaced atomically (temporary file + rename in
/// the same directory); it is created with mode 0600 when it holds a password, else 0644.
pub fn save(path: &Path, cfg: &GogocConfig, include_password: bool) -> io::Result<()> {
    cfg.validate(path)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let text = Zeroizing::new(to_text_with(cfg, include_password));
    let mode = if include_password && !cfg.passwd.is_empty() {
        0o600
    } else {
        0o644
    };
    crate::fsutil::write_atomic(path, text.as_bytes(), mode)
}
