//! systemd's service notifications (sd_notify(3)) without libsystemd: each message is one
//! datagram to the Unix socket `NOTIFY_SOCKET` names (a path, or with a leading `@` a name in
//! the abstract namespace), and the watchdog's period comes from `WATCHDOG_USEC` (for us only
//! if `WATCHDOG_PID`, when set, is our pid). Outside systemd (`NOTIFY_SOCKET` unset) nothing
//! is sent.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where notifications go; `None` outside a `Type=notify` unit.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    to: SocketAddr,
}

impl Notifier {
    /// The notification socket of the environment, if there is one (and it is usable: a
    /// malformed `NOTIFY_SOCKET` is logged and ignored).
    pub fn from_env() -> Option<Self> {
        let name = std::env::var_os("NOTIFY_SOCKET")?;
        match Self::to(&name) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(error = %e, "NOTIFY_SOCKET is not usable; systemd is not notified");
                None
            }
        }
    }

    fn to(name: &std::ffi::OsStr) -> std::io::Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = name.as_bytes();
        let to = match bytes.split_first() {
            Some((b'@', abstract_name)) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(abstract_name)?
            }
            Some((b'/', _)) => SocketAddr::from_pathname(std::path::Path::new(name))?,
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "neither an absolute path nor an abstract name (@…)",
                ));
            }
        };
        Ok(Self {
            socket: UnixDatagram::unbound()?,
            to,
        })
    }

    /// Sends one message (`KEY=VALUE` lines); a failure is logged at debug level only: the
    /// service goes on whether systemd listens or not.
    pub fn notify(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.to) {
            tracing::debug!(error = %e, message, "systemd notification not sent");
        }
    }
}

/// Sends `message` if there is a notifier.
pub fn notify(notifier: Option<&Notifier>, message: &str) {
    if let Some(n) = notifier {
        n.notify(message);
    }
}

/// The watchdog's timeout when systemd wants `WATCHDOG=1` from this process (ping at half of
/// it); `None` without a watchdog.
pub fn watchdog_timeout() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID")
        && pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id())
    {
        return None;
    }
    let usec = std::env::var("WATCHDOG_USEC").ok()?.parse::<u64>().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// `MONOTONIC_USEC=` of a `RELOADING=1` message: CLOCK_MONOTONIC in microseconds (what
/// systemd compares the reload against).
pub fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_nsec()).unwrap_or(0) / 1_000)
        .unwrap_or(0)
}

/// A value for a `STATUS=` line: one line, whatever the text.
pub fn status_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_reach_a_path_and_an_abstract_socket() {
        let dir = std::env::temp_dir().join(format!("nm-tsp-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::to(path.as_os_str()).unwrap();
        n.notify("READY=1\nSTATUS=up");
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=up");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("nm-tsp-notify-test-{}", std::process::id());
        let abs = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        let n = Notifier::to(std::ffi::OsStr::new(&format!("@{name}"))).unwrap();
        n.notify("WATCHDOG=1");
        let len = abs.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");

        assert!(Notifier::to(std::ffi::OsStr::new("relative/path")).is_err());
        assert!(Notifier::to(std::ffi::OsStr::new("")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn status_is_one_line() {
        assert_eq!(status_line("a\nb\rc"), "a b c");
        assert!(monotonic_usec() > 0);
    }
}
