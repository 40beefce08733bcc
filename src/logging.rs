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

use std::fmt::{self, Write as _};
use std::fs::{self, File, OpenOptions};
use std::io::{self, IsTerminal, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{Dispatch, Event, Level, Subscriber};
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::{Layer, SubscriberExt as _};
use tracing_subscriber::registry::{LookupSpan, Registry};

use tsp_config::{GogocConfig, LogLevels, SyslogFacility};

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
/// Targets whose level the gogoc levels set fully; every other crate gets less (see the table).
/// Our library crates, one per layer, then our programs (`tsp_broker` is both the broker
/// library and the program's crate name).
const OUR_TARGETS: [&str; 10] = [
    "nm_tsp",
    "tsp_proto",
    "tsp_config",
    "tsp_tunnel",
    "tsp_client",
    "tsp_broker",
    "tsp_nm",
    "tspc",
    "nm_tsp_service",
    "nm_tsp_auth_dialog",
];
/// The libraries alone: their info lines show on stderr by default.
const OUR_LIBRARIES: &[&str] = OUR_TARGETS.split_at(7).0;
/// The highest stderr rank (`-vvvv`): everything at trace, dependencies included.
const MAX_RANK: u8 = 4;
/// Longest record kept for the file and syslog: a longer one is cut (bounded memory per event).
const MAX_RECORD: usize = 16 * 1024;
/// Longest syslog message text; journald and rsyslog take more, but older daemons cut at ~1 KiB
/// and a datagram must stay well under the socket buffer.
const MAX_SYSLOG_TEXT: usize = 4096;

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

/// The filter for a gogoc level (see the table in the module documentation); `None` = off.
fn rank_filter(rank: u8) -> Option<Targets> {
    let (ours, others) = match rank {
        0 => return None,
        1 => (LevelFilter::INFO, LevelFilter::WARN),
        2 => (LevelFilter::DEBUG, LevelFilter::INFO),
        3 => (LevelFilter::TRACE, LevelFilter::INFO),
        _ => (LevelFilter::TRACE, LevelFilter::TRACE),
    };
    Some(OUR_TARGETS.iter().fold(Targets::new().with_default(others), |t, name| {
        t.with_target(*name, ours)
    }))
}

// ---------------------------------------------------------------------------------------
// Record format of the file and syslog

/// gogoc's log-file line, `YYYY/MM/DD HH:MM:SS S ident: message` (S = E, W, I, D), or for
/// syslog, which has its own time and tag, just the message.
struct LineFormat {
    ident: String,
    timestamp: bool,
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        if self.timestamp {
            let t = LocalTime::of(SystemTime::now());
            write!(
                writer,
                "{:04}/{:02}/{:02} {:02}:{:02}:{:02} {} {}: ",
                t.year,
                t.month,
                t.day,
                t.hour,
                t.minute,
                t.second,
                severity_char(event.metadata().level()),
                self.ident
            )?;
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

fn severity_char(level: &Level) -> char {
    match *level {
        Level::ERROR => 'E',
        Level::WARN => 'W',
        Level::INFO => 'I',
        _ => 'D',
    }
}

/// One record as a single line: the trailing newline dropped, other control characters
/// escaped, so that text from the network cannot forge or split log lines.
fn one_line(record: &[u8]) -> String {
    let text = String::from_utf8_lossy(record);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push('\t'),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// Collects one formatted event (the fmt layer writes it with one `write_all`) and hands it
/// to its destination when dropped, so a record is never split by rotation or datagrams.
struct EventBuf<F: FnMut(&[u8])> {
    buf: Vec<u8>,
    deliver: Option<F>,
}

impl<F: FnMut(&[u8])> io::Write for EventBuf<F> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = MAX_RECORD.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&data[..data.len().min(room)]);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<F: FnMut(&[u8])> Drop for EventBuf<F> {
    fn drop(&mut self) {
        if let Some(mut deliver) = self.deliver.take()
            && !self.buf.is_empty()
        {
            deliver(&self.buf);
        }
    }
}

/// Where a finished record goes (the file, or a syslog datagram).
type Deliver<'a> = Box<dyn FnMut(&[u8]) + 'a>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while logging must not silence the log for good.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------
// Rotating log file

#[derive(Clone)]
struct SharedFile(Arc<Mutex<RotatingFile>>);

impl<'a> MakeWriter<'a> for SharedFile {
    type Writer = EventBuf<Deliver<'a>>;

    fn make_writer(&'a self) -> Self::Writer {
        EventBuf {
            buf: Vec::new(),
            deliver: Some(Box::new(move |record: &[u8]| {
                let mut line = one_line(record);
                line.push('\n');
                lock(&self.0).write_record(line.as_bytes());
            })),
        }
    }
}

struct RotatingFile {
    path: PathBuf,
    /// `None` only if a rotation could not reopen the file.
    file: Option<File>,
    rotate_at: Option<u64>,
    delete_rotated: bool,
    /// One complaint on stderr per kind of failure is enough: the log is not a place to tell.
    write_failed: bool,
    rotate_failed: bool,
}

impl RotatingFile {
    fn open(cfg: FileLog) -> Result<Self, LogError> {
        // Absolute now: rotation renames by path, and the working directory may change later.
        let path = std::path::absolute(&cfg.path).unwrap_or(cfg.path);
        let file = open_append(&path).map_err(|source| LogError::OpenFile {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            path,
            file: Some(file),
            rotate_at: cfg.rotate_at,
            delete_rotated: cfg.delete_rotated,
            write_failed: false,
            rotate_failed: false,
        })
    }

    fn write_record(&mut self, record: &[u8]) {
        if self.file.is_none() {
            // A rotation could not reopen the file; try again now.
            self.file = open_append(&self.path).ok();
        }
        let Some(file) = self.file.as_ref() else {
            return;
        };
        if let Some(limit) = self.rotate_at {
            // The current length, not a counter: another writer or a truncation by logrotate
            // may have changed it.
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            if size > 0 && size.saturating_add(record.len() as u64) > limit {
                self.rotate();
            }
        }
        let Some(file) = self.file.as_mut() else {
            return;
        };
        if let Err(e) = file.write_all(record)
            && !self.write_failed
        {
            self.write_failed = true;
            eprintln!("cannot write the log file {}: {e}", self.path.display());
        }
    }

    /// Starts the file anew: keeps the old content under a timestamped name (gogoc's
    /// `<stem>.<YYYYmmddHHMMSS><.ext>`) or, with `delete_rotated`, drops it. If the rename
    /// fails the content is dropped too: the file must never grow without bound.
    fn rotate(&mut self) {
        if !self.delete_rotated {
            let backup = backup_name(&self.path, LocalTime::of(SystemTime::now()));
            match fs::rename(&self.path, &backup) {
                Ok(()) => {
                    // The old handle now writes into the backup: never use it again.
                    self.file = open_append(&self.path).ok();
                    if self.file.is_none() && !self.rotate_failed {
                        self.rotate_failed = true;
                        eprintln!("cannot reopen the log file {} after rotating it", self.path.display());
                    }
                    return;
                }
                Err(e) => {
                    if !self.rotate_failed {
                        self.rotate_failed = true;
                        eprintln!(
                            "cannot rotate the log file {} to {}: {e}; truncating it instead",
                            self.path.display(),
                            backup.display()
                        );
                    }
                }
            }
        }
        if let Some(file) = self.file.as_ref() {
            // O_APPEND: the next write goes to the new end, offset 0.
            if let Err(e) = file.set_len(0)
                && !self.rotate_failed
            {
                self.rotate_failed = true;
                eprintln!("cannot truncate the log file {}: {e}", self.path.display());
            }
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    // 0600: the log describes the host's tunnel; nobody else needs to read it.
    OpenOptions::new().append(true).create(true).mode(0o600).open(path)
}

/// `gogoc.log` → `gogoc.20240102030405.log` (`-1`, `-2`, … appended to the stamp if that
/// name is taken, so two rotations within a second do not overwrite each other).
fn backup_name(path: &Path, t: LocalTime) -> PathBuf {
    let stamp = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    );
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (stem, ext) = match name.rfind('.') {
        Some(dot) if dot > 0 => (&name[..dot], &name[dot..]),
        _ => (name.as_str(), ""),
    };
    let mut n = 0u32;
    loop {
        let suffix = if n == 0 { String::new() } else { format!("-{n}") };
        let candidate = path.with_file_name(format!("{stem}.{stamp}{suffix}{ext}"));
        // Bounded: after 1000 tries the last name is overwritten rather than looping on.
        if n >= 1000 || !candidate.exists() {
            return candidate;
        }
        n += 1;
    }
}

// ---------------------------------------------------------------------------------------
// Syslog

#[derive(Clone)]
struct SyslogSink(Arc<SyslogInner>);

struct SyslogInner {
    facility: SyslogFacility,
    ident: String,
    path: PathBuf,
    /// Connected lazily and again after a failure: the daemon may start after us or restart.
    socket: Mutex<Option<UnixDatagram>>,
}

impl SyslogSink {
    fn new(facility: SyslogFacility, ident: &str, path: &Path) -> Self {
        Self(Arc::new(SyslogInner {
            facility,
            ident: ident.to_owned(),
            path: path.to_owned(),
            socket: Mutex::new(None),
        }))
    }
}

impl SyslogInner {
    fn send(&self, level: Level, text: &str) {
        let datagram = format_syslog(
            self.facility,
            level,
            &self.ident,
            // Asked each time: the program may fork into the background after set-up.
            std::process::id(),
            LocalTime::of(SystemTime::now()),
            text,
        );
        let mut socket = lock(&self.socket);
        // Two attempts: the first may use a socket whose daemon has gone away.
        for _ in 0..2 {
            if socket.is_none() {
                *socket = connect_syslog(&self.path);
            }
            let Some(s) = socket.as_ref() else {
                return;
            };
            match s.send(datagram.as_bytes()) {
                Ok(_) => return,
                // A full queue: drop the message rather than block the program.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => *socket = None,
            }
        }
    }
}

fn connect_syslog(path: &Path) -> Option<UnixDatagram> {
    let s = UnixDatagram::unbound().ok()?;
    s.connect(path).ok()?;
    s.set_nonblocking(true).ok()?;
    Some(s)
}

impl<'a> MakeWriter<'a> for SyslogSink {
    type Writer = EventBuf<Deliver<'a>>;

    fn make_writer(&'a self) -> Self::Writer {
        self.writer(Level::INFO)
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        self.writer(*meta.level())
    }
}

impl SyslogSink {
    fn writer(&self, level: Level) -> EventBuf<Deliver<'_>> {
        EventBuf {
            buf: Vec::new(),
            deliver: Some(Box::new(move |record: &[u8]| self.0.send(level, &one_line(record)))),
        }
    }
}

/// The syslog facility number (RFC 5424 §6.2.1 table; `LOG_USER` = 1, `LOG_LOCAL0` = 16).
fn facility_code(f: SyslogFacility) -> u8 {
    match f {
        SyslogFacility::User => 1,
        SyslogFacility::Local0 => 16,
        SyslogFacility::Local1 => 17,
        SyslogFacility::Local2 => 18,
        SyslogFacility::Local3 => 19,
        SyslogFacility::Local4 => 20,
        SyslogFacility::Local5 => 21,
        SyslogFacility::Local6 => 22,
        SyslogFacility::Local7 => 23,
    }
}

/// The syslog severity: error 3, warning 4, info 6, debug and trace 7. (gogoc sent its info
/// lines as LOG_DEBUG; info is what they are.)
fn severity_code(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// An RFC 3164 message as libc's `syslog` sends it to `/dev/log`:
/// `<PRI>Mmm dd hh:mm:ss ident[pid]: text`, local time, text cut to [`MAX_SYSLOG_TEXT`].
fn format_syslog(facility: SyslogFacility, level: Level, ident: &str, pid: u32, t: LocalTime, text: &str) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let pri = u16::from(facility_code(facility)) * 8 + u16::from(severity_code(level));
    let month = MONTHS
        .get((t.month as usize).saturating_sub(1))
        .copied()
        .unwrap_or("Jan");
    let mut cut = text.len().min(MAX_SYSLOG_TEXT);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "<{pri}>{month} {:>2} {:02}:{:02}:{:02} {ident}[{pid}]: {}",
        t.day,
        t.hour,
        t.minute,
        t.second,
        &text[..cut]
    )
}

// ---------------------------------------------------------------------------------------
// Local time (gogoc stamps its file and its rotated names in local time, as syslog does)

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LocalTime {
    year: i32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl LocalTime {
    fn of(t: SystemTime) -> Self {
        let secs = t
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Self::local(secs).unwrap_or_else(|| Self::utc(secs))
    }

    fn local(secs: i64) -> Option<Self> {
        use chrono::{Datelike as _, Timelike as _};
        // TZ, else /etc/localtime, as libc's localtime_r would read them.
        let t = chrono::DateTime::from_timestamp(secs, 0)?.with_timezone(&chrono::Local);
        Some(Self {
            year: t.year(),
            month: t.month(),
            day: t.day(),
            hour: t.hour(),
            minute: t.minute(),
            second: t.second(),
        })
    }

    /// UTC from the civil-from-days algorithm, for times chrono cannot represent.
    fn utc(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        let small = |v: i64| u32::try_from(v).unwrap_or(0);
        Self {
            year: i32::try_from(year).unwrap_or(i32::MAX),
            month: small(month),
            day: small(day),
            hour: small(rem / 3600),
            minute: small(rem / 60 % 60),
            second: small(rem % 60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::DirBuilderExt as _;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn temp_dir(tag: &str) -> PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "nm-tsp-log-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::DirBuilder::new().mode(0o700).create(&dir).expect("temp dir");
        dir
    }

    fn levels(stderr: u8, file: u8, syslog: u8) -> LogLevels {
        LogLevels {
            console: 0,
            stderr,
            file,
            syslog,
        }
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .expect("read dir")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn rank_map() {
        assert!(rank_filter(0).is_none());
        let one = rank_filter(1).expect("level 1");
        assert!(one.would_enable("tsp_client::net", &Level::INFO));
        assert!(!one.would_enable("tsp_client::net", &Level::DEBUG));
        assert!(one.would_enable("tspc", &Level::INFO));
        assert!(one.would_enable("zbus", &Level::WARN));
        assert!(!one.would_enable("zbus", &Level::INFO));
        let two = rank_filter(2).expect("level 2");
        assert!(two.would_enable("nm_tsp", &Level::DEBUG));
        assert!(!two.would_enable("nm_tsp", &Level::TRACE));
        assert!(two.would_enable("zbus", &Level::INFO));
        let three = rank_filter(3).expect("level 3");
        assert!(three.would_enable("tsp_broker", &Level::TRACE));
        assert!(!three.would_enable("zbus", &Level::DEBUG));
        let four = rank_filter(4).expect("level 4");
        assert!(four.would_enable("zbus", &Level::TRACE));
    }

    #[test]
    fn file_rotates_and_keeps_old_content() {
        let dir = temp_dir("rot");
        let path = dir.join("gogoc.log");
        let (dispatch, guard) = build(
            &levels(0, 3, 0),
            0,
            Some(FileLog {
                path: path.clone(),
                rotate_at: Some(16 * 1024),
                delete_rotated: false,
            }),
            SyslogFacility::User,
            "gogoc",
            &dir.join("no-syslog"),
        )
        .expect("build");
        assert_eq!(guard.file_path(), Some(path.clone()));
        let filler = "x".repeat(100);
        tracing::dispatcher::with_default(&dispatch, || {
            for i in 0..200 {
                tracing::info!("line {i} {filler}");
            }
        });
        let names = files_in(&dir);
        assert!(names.contains(&"gogoc.log".to_owned()), "{names:?}");
        let rotated: Vec<&String> = names.iter().filter(|n| *n != "gogoc.log").collect();
        assert!(!rotated.is_empty(), "{names:?}");
        for name in &rotated {
            // gogoc.<14 digits>[-n].log
            let middle = name
                .strip_prefix("gogoc.")
                .and_then(|s| s.strip_suffix(".log"))
                .expect("backup name");
            assert!(
                middle.len() >= 14 && middle[..14].bytes().all(|b| b.is_ascii_digit()),
                "{name}"
            );
        }
        let mut total_lines = 0;
        for name in &names {
            let text = fs::read_to_string(dir.join(name)).expect("read");
            assert!(text.len() <= 16 * 1024, "{name} has {} bytes", text.len());
            total_lines += text.lines().count();
        }
        // Nothing lost across rotations.
        assert_eq!(total_lines, 200);
        let current = fs::read_to_string(&path).expect("read");
        assert!(current.contains("line 199"));
        let first = current.lines().next().expect("a line");
        // YYYY/MM/DD HH:MM:SS I gogoc: line …
        assert_eq!(&first[4..5], "/");
        assert_eq!(&first[19..29], " I gogoc: ");
        drop(guard);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn file_rotation_delete_mode() {
        let dir = temp_dir("del");
        let path = dir.join("tspc.log");
        let (dispatch, guard) = build(
            &levels(0, 1, 0),
            0,
            Some(FileLog {
                path: path.clone(),
                rotate_at: Some(16 * 1024),
                delete_rotated: true,
            }),
            SyslogFacility::User,
            "tspc",
            &dir.join("no-syslog"),
        )
        .expect("build");
        let filler = "y".repeat(200);
        tracing::dispatcher::with_default(&dispatch, || {
            for i in 0..300 {
                tracing::warn!("entry {i} {filler}");
            }
        });
        drop(guard);
        assert_eq!(files_in(&dir), vec!["tspc.log".to_owned()]);
        let text = fs::read_to_string(&path).expect("read");
        assert!(text.len() <= 16 * 1024);
        assert!(text.contains("entry 299"));
        assert!(!text.contains("entry 0 "));
        assert!(text.lines().all(|l| l.contains(" W tspc: entry ")));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn existing_oversized_file_rotates_on_first_write_and_no_rotation_grows() {
        let dir = temp_dir("pre");
        let path = dir.join("big");
        fs::write(&path, vec![b'z'; 20 * 1024]).expect("write");
        let mut f = RotatingFile::open(FileLog {
            path: path.clone(),
            rotate_at: Some(16 * 1024),
            delete_rotated: false,
        })
        .expect("open");
        f.write_record(b"fresh\n");
        assert_eq!(fs::read(&path).expect("read"), b"fresh\n");
        let names = files_in(&dir);
        assert_eq!(names.len(), 2, "{names:?}");
        // No extension: big.<stamp>
        assert!(names.iter().any(|n| n.starts_with("big.") && n.len() >= 18));

        let path2 = dir.join("norot.log");
        let mut g = RotatingFile::open(FileLog {
            path: path2.clone(),
            rotate_at: None,
            delete_rotated: false,
        })
        .expect("open");
        for _ in 0..100 {
            g.write_record(&[b'a'; 1000]);
        }
        assert_eq!(fs::metadata(&path2).expect("meta").len(), 100_000);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn backup_names_do_not_collide() {
        let dir = temp_dir("names");
        let t = LocalTime {
            year: 2024,
            month: 1,
            day: 2,
            hour: 3,
            minute: 4,
            second: 5,
        };
        let p = dir.join("gogoc.log");
        let first = backup_name(&p, t);
        assert_eq!(first, dir.join("gogoc.20240102030405.log"));
        fs::write(&first, "").expect("write");
        assert_eq!(backup_name(&p, t), dir.join("gogoc.20240102030405-1.log"));
        assert_eq!(backup_name(&dir.join(".hidden"), t), dir.join(".hidden.20240102030405"));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn per_destination_levels() {
        let dir = temp_dir("lvl");
        let sock_path = dir.join("log.sock");
        let server = UnixDatagram::bind(&sock_path).expect("bind");
        server.set_nonblocking(true).expect("nonblocking");
        let path = dir.join("f.log");
        let (dispatch, guard) = build(
            &levels(0, 1, 3),
            0,
            Some(FileLog {
                path: path.clone(),
                rotate_at: None,
                delete_rotated: false,
            }),
            SyslogFacility::Local3,
            "tspc",
            &sock_path,
        )
        .expect("build");
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::error!("an error");
            tracing::info!("some info");
            tracing::debug!("a debug line");
            tracing::trace!("a trace line");
            tracing::info!(target: "other_crate", "foreign info");
            tracing::warn!(target: "other_crate", "foreign warning");
            tracing::info!("two\nlines");
        });
        drop(guard);
        let file = fs::read_to_string(&path).expect("read");
        assert!(file.contains(" E tspc: an error"));
        assert!(file.contains(" I tspc: some info"));
        assert!(!file.contains("debug line"));
        assert!(!file.contains("trace line"));
        assert!(!file.contains("foreign info"));
        assert!(file.contains(" W tspc: foreign warning"));
        // No forged lines: the newline is escaped.
        assert!(file.contains("two\\nlines"));
        assert_eq!(file.lines().count(), 4);

        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = server.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let pid = std::process::id();
        let tag = format!(" tspc[{pid}]: ");
        assert!(got.iter().all(|m| m.contains(&tag)), "{got:?}");
        let with = |pri: &str, text: &str| {
            got.iter()
                .any(|m| m.starts_with(&format!("<{pri}>")) && m.ends_with(&format!("]: {text}")))
        };
        // local3 = 19: 19*8 + severity.
        assert!(with("155", "an error"), "{got:?}");
        assert!(with("158", "some info"), "{got:?}");
        assert!(with("159", "a debug line"), "{got:?}");
        assert!(with("159", "a trace line"), "{got:?}");
        assert!(with("156", "foreign warning"), "{got:?}");
        assert!(with("158", "foreign info"), "{got:?}");
        assert_eq!(got.len(), 7, "{got:?}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn syslog_without_daemon_does_not_fail() {
        let dir = temp_dir("nosys");
        let (dispatch, guard) = build(
            &levels(0, 0, 3),
            0,
            None,
            SyslogFacility::User,
            "tspc",
            &dir.join("absent.sock"),
        )
        .expect("build");
        assert_eq!(guard.file_path(), None);
        tracing::dispatcher::with_default(&dispatch, || tracing::error!("nobody listens"));
        // A daemon appearing later is found.
        let server = UnixDatagram::bind(dir.join("absent.sock")).expect("bind");
        server.set_nonblocking(true).expect("nonblocking");
        tracing::dispatcher::with_default(&dispatch, || tracing::error!("now someone does"));
        let mut buf = [0u8; 1024];
        let n = server.recv(&mut buf).expect("a datagram");
        assert!(String::from_utf8_lossy(&buf[..n]).ends_with("]: now someone does"));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn global_init_once() {
        // All off, so the global subscriber stays silent for the other tests of this binary.
        let off = LogLevels {
            console: 0,
            stderr: 0,
            file: 0,
            syslog: 0,
        };
        let first = init_gogoc(&off, 0, None, SyslogFacility::User, "tspc");
        let second = init_gogoc(&off, 0, None, SyslogFacility::User, "tspc");
        // Another test binary (or harness) may have installed one before: then both refuse.
        assert!(first.is_ok() || matches!(first, Err(LogError::AlreadySet)));
        assert!(matches!(second, Err(LogError::AlreadySet)));
    }

    #[test]
    fn unwritable_log_file_is_an_error() {
        let dir = temp_dir("bad");
        let r = build(
            &levels(0, 1, 0),
            0,
            Some(FileLog {
                path: dir.join("missing-dir").join("x.log"),
                rotate_at: None,
                delete_rotated: false,
            }),
            SyslogFacility::User,
            "tspc",
            &dir.join("no-syslog"),
        );
        assert!(matches!(r, Err(LogError::OpenFile { .. })));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn syslog_format() {
        let t = LocalTime {
            year: 2024,
            month: 3,
            day: 5,
            hour: 7,
            minute: 8,
            second: 9,
        };
        assert_eq!(
            format_syslog(SyslogFacility::User, Level::ERROR, "tspc", 42, t, "boom"),
            "<11>Mar  5 07:08:09 tspc[42]: boom"
        );
        let t2 = LocalTime {
            day: 25,
            month: 12,
            ..t
        };
        assert_eq!(
            format_syslog(SyslogFacility::Local7, Level::DEBUG, "gogoc", 1, t2, "x"),
            "<191>Dec 25 07:08:09 gogoc[1]: x"
        );
        assert_eq!(
            format_syslog(SyslogFacility::Local0, Level::WARN, "a", 1, t, "")
                .split('>')
                .next(),
            Some("<132")
        );
        let long = "é".repeat(MAX_SYSLOG_TEXT);
        let m = format_syslog(SyslogFacility::User, Level::INFO, "a", 1, t, &long);
        assert!(m.len() <= MAX_SYSLOG_TEXT + 40);
        assert!(m.ends_with('é'));
    }

    #[test]
    fn one_line_escapes_controls() {
        assert_eq!(one_line(b"a\nb\rc\x1b[31m\td\n"), "a\\nb\\rc\\u{1b}[31m\td");
    }

    #[test]
    fn utc_fallback_matches_known_dates() {
        let t = LocalTime::utc(0);
        assert_eq!((t.year, t.month, t.day, t.hour), (1970, 1, 1, 0));
        let t = LocalTime::utc(1_709_600_889); // 2024-03-05T01:08:09Z
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second),
            (2024, 3, 5, 1, 8, 9)
        );
    }

    #[test]
    fn from_config() {
        let mut cfg = GogocConfig::default();
        assert_eq!(FileLog::from_config(&cfg), None);
        cfg.log.file = 2;
        cfg.log_rotation_size = tsp_config::LogRotationSize::K128;
        assert_eq!(
            FileLog::from_config(&cfg),
            Some(FileLog {
                path: PathBuf::from("gogoc.log"),
                rotate_at: Some(128 * 1024),
                delete_rotated: false,
            })
        );
        cfg.log_rotation = false;
        assert_eq!(FileLog::from_config(&cfg).and_then(|f| f.rotate_at), None);
    }
}
