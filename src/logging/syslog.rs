//! RFC 3164 datagrams to the syslog socket, as libc's `syslog` sends them (docs/tsp-wire.md §9).

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tracing::Level;
use tracing_subscriber::fmt::MakeWriter;

use tsp_config::SyslogFacility;

use super::format::{Deliver, EventBuf, lock, one_line};
use super::localtime::LocalTime;

/// Longest syslog message text; journald and rsyslog take more, but older daemons cut at ~1 KiB
/// and a datagram must stay well under the socket buffer.
pub(super) const MAX_SYSLOG_TEXT: usize = 4096;

#[derive(Clone)]
pub(super) struct SyslogSink(Arc<SyslogInner>);

pub(super) struct SyslogInner {
    facility: SyslogFacility,
    ident: String,
    path: PathBuf,
    /// Connected lazily and again after a failure: the daemon may start after us or restart.
    socket: Mutex<Option<UnixDatagram>>,
}

impl SyslogSink {
    pub(super) fn new(facility: SyslogFacility, ident: &str, path: &Path) -> Self {
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

pub(super) fn connect_syslog(path: &Path) -> Option<UnixDatagram> {
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
pub(super) fn facility_code(f: SyslogFacility) -> u8 {
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
pub(super) fn severity_code(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// An RFC 3164 message as libc's `syslog` sends it to `/dev/log`:
/// `<PRI>Mmm dd hh:mm:ss ident[pid]: text`, local time, text cut to [`MAX_SYSLOG_TEXT`].
pub(super) fn format_syslog(
    facility: SyslogFacility,
    level: Level,
    ident: &str,
    pid: u32,
    t: LocalTime,
    text: &str,
) -> String {
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
