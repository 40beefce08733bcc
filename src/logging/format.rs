//! gogoc's record format for the file and syslog, one line per record (docs/tsp-wire.md §9).

use std::fmt::{self, Write as _};
use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use super::localtime::LocalTime;

/// Longest record kept for the file and syslog: a longer one is cut (bounded memory per event).
pub(super) const MAX_RECORD: usize = 16 * 1024;

/// gogoc's log-file line, `YYYY/MM/DD HH:MM:SS S ident: message` (S = E, W, I, D), or for
/// syslog, which has its own time and tag, just the message.
pub(super) struct LineFormat {
    pub(super) ident: String,
    pub(super) timestamp: bool,
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

pub(super) fn severity_char(level: &Level) -> char {
    match *level {
        Level::ERROR => 'E',
        Level::WARN => 'W',
        Level::INFO => 'I',
        _ => 'D',
    }
}

/// One record as a single line: the trailing newline dropped, other control characters
/// escaped, so that text from the network cannot forge or split log lines.
pub(super) fn one_line(record: &[u8]) -> String {
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
pub(super) struct EventBuf<F: FnMut(&[u8])> {
    pub(super) buf: Vec<u8>,
    pub(super) deliver: Option<F>,
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
pub(super) type Deliver<'a> = Box<dyn FnMut(&[u8]) + 'a>;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while logging must not silence the log for good.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
