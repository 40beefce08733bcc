//! Log setup shared by the programs.
//!
//! * [`init_stderr`]: `tracing` to stderr, `-v` raising the level, `RUST_LOG` overriding both
//!   (tsp-broker, and tspc before its configuration is read).
//! * [`init_gogoc`]: gogoc's four destinations (docs/tsp-wire.md §9), each with its own level:
//!   `log_console` (stdout, as gogoc's `LogToLocal(stdout, …)` on Unix), `log_stderr`,
//!   `log_file` (`log_filename`, rotated at `log_rotation_size` KiB) and `log_syslog`
//!   (`syslog_facility`, RFC 3164 datagrams to `/dev/log`).
//!
//! gogoc tags each message with a verbosity 1..3 and prints it where the destination's level
//! is at least that; `tracing` has severities instead. The map, per destination:
//!
//! | level | our targets (`nm_tsp`, the `tsp_*` crates, `tspc`) | other crates |
//! |---|---|---|
//! | 0 | nothing | nothing |
//! | 1 | info and above (errors, warnings, progress: gogoc's level-1 lines) | warn and above |
//! | 2 | debug and above | info and above |
//! | 3 | trace (everything) | info and above |
//! | 4 (stderr only, `-vvvv`) | trace | trace |
//!
//! `-v`, `-vv`, `-vvv`, `-vvvv` raise stderr to at least level 1, 2, 3, 4. A valid
//! `RUST_LOG` replaces the stderr filter (only that one).

mod file;
mod filter;
mod format;
mod localtime;
mod syslog;
#[cfg(test)]
mod tests;

use std::io::{self, IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing::Dispatch;
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::layer::{Layer, SubscriberExt as _};
use tracing_subscriber::registry::Registry;

use tsp_config::{GogocConfig, LogLevels, SyslogFacility};

use file::{RotatingFile, SharedFile};
use filter::{MAX_RANK, OUR_LIBRARIES, rank_filter};
use format::{LineFormat, lock};
use syslog::SyslogSink;

/// Installs the stderr subscriber: 0 = warnings (and our own info lines), 1 = info,
/// 2 = debug, 3 and more = trace.
pub fn init_stderr(verbose: u8) {
    let level = match verbose {
        0 => OUR_LIBRARIES
            .iter()
            .fold(String::from("warn"), |acc, t| acc + "," + t + "=info"),
        1 => "info".to_owned(),
        2 => "debug".to_owned(),
        _ => "trace".to_owned(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// The syslog socket of Linux (systemd-journald, rsyslog and syslog-ng all listen there).
pub const SYSLOG_SOCKET: &str = "/dev/log";

/// The log file: `log_filename` with the rotation settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileLog {
    /// The file, appended to (relative paths are relative to the working directory, as gogoc).
    pub path: PathBuf,
    /// Rotate before a record would grow the file past this many bytes; `None` never rotates
    /// (`log_rotation=no`).
    pub rotate_at: Option<u64>,
    /// On rotation, discard the old content instead of keeping it as
    /// `<stem>.<YYYYmmddHHMMSS>[.<ext>]` (`log_rotation_delete=yes`).
    pub delete_rotated: bool,
}

impl FileLog {
    /// The log file a configuration asks for; `None` when `log_file=0`.
    pub fn from_config(cfg: &GogocConfig) -> Option<Self> {
        (cfg.log.file > 0).then(|| Self {
            path: PathBuf::from(&cfg.log_filename),
            rotate_at: cfg.log_rotation.then(|| u64::from(cfg.log_rotation_size.kib()) * 1024),
            delete_rotated: cfg.log_rotation_delete,
        })
    }
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log file cannot be opened (or created).
    #[error("cannot open the log file {}: {source}", path.display())]
    OpenFile { path: PathBuf, source: io::Error },
    /// Another subscriber is already the global default.
    #[error("logging is already set up")]
    AlreadySet,
}

/// The handle of the installed logging; keep it until the program ends. Dropping it flushes
/// the log file (logging itself goes on: the subscriber owns the file too).
#[must_use = "keep the guard until exit: dropping it flushes the log file"]
pub struct LogGuard {
    file: Option<SharedFile>,
}

impl LogGuard {
    /// The log file written (made absolute when opened), if any.
    pub fn file_path(&self) -> Option<PathBuf> {
        self.file.as_ref().map(|f| lock(&f.0).path.clone())
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(f) = &self.file
            && let Some(handle) = lock(&f.0).file.as_mut()
        {
            let _ = handle.flush();
        }
    }
}

/// Installs gogoc-style logging as the global subscriber: one layer per destination, each
/// filtered at its own level (see the module documentation for the map). `file` is written
/// only when `levels.file > 0`; syslog is used when `levels.syslog > 0`, and a missing
/// `/dev/log` only means those messages are lost (as with libc's `syslog`). `ident` names
/// the program in file lines and syslog tags.
pub fn init_gogoc(
    levels: &LogLevels,
    verbose: u8,
    file: Option<FileLog>,
    syslog_facility: SyslogFacility,
    ident: &str,
) -> Result<LogGuard, LogError> {
    let (dispatch, guard) = build(levels, verbose, file, syslog_facility, ident, Path::new(SYSLOG_SOCKET))?;
    tracing::dispatcher::set_global_default(dispatch).map_err(|_| LogError::AlreadySet)?;
    Ok(guard)
}

/// [`init_gogoc`] with everything taken from a configuration.
pub fn init_from_config(cfg: &GogocConfig, verbose: u8, ident: &str) -> Result<LogGuard, LogError> {
    init_gogoc(&cfg.log, verbose, FileLog::from_config(cfg), cfg.syslog_facility, ident)
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// The subscriber of [`init_gogoc`], not installed (tests install it locally).
fn build(
    levels: &LogLevels,
    verbose: u8,
    file: Option<FileLog>,
    facility: SyslogFacility,
    ident: &str,
    syslog_socket: &Path,
) -> Result<(Dispatch, LogGuard), LogError> {
    let mut layers: Vec<BoxedLayer> = Vec::new();

    let stderr_rank = levels.stderr.max(verbose.min(MAX_RANK));
    let stderr_layer = tracing_subscriber::fmt::layer()
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal());
    // RUST_LOG is the developer's override; an invalid one is ignored like in init_stderr.
    match std::env::var("RUST_LOG").ok().and_then(|s| EnvFilter::try_new(s).ok()) {
        Some(env) => layers.push(stderr_layer.with_filter(env).boxed()),
        None => {
            if let Some(targets) = rank_filter(stderr_rank) {
                layers.push(stderr_layer.with_filter(targets).boxed());
            }
        }
    }

    if let Some(targets) = rank_filter(levels.console) {
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(io::stdout)
            .with_ansi(io::stdout().is_terminal());
        layers.push(layer.with_filter(targets).boxed());
    }

    let mut guard = LogGuard { file: None };
    if let (Some(targets), Some(file)) = (rank_filter(levels.file), file) {
        let shared = SharedFile(Arc::new(Mutex::new(RotatingFile::open(file)?)));
        guard.file = Some(shared.clone());
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .event_format(LineFormat {
                ident: ident.to_owned(),
                timestamp: true,
            })
            .with_writer(shared);
        layers.push(layer.with_filter(targets).boxed());
    }

    if let Some(targets) = rank_filter(levels.syslog) {
        let sink = SyslogSink::new(facility, ident, syslog_socket);
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .event_format(LineFormat {
                ident: String::new(),
                timestamp: false,
            })
            .with_writer(sink);
        layers.push(layer.with_filter(targets).boxed());
    }

    let subscriber = Registry::default().with(layers);
    Ok((Dispatch::new(subscriber), guard))
}
