//! The control socket: a Unix stream socket (`control_socket`, mode 0600) on which
//! `tsp-broker sessions` and `tsp-broker disconnect USER` ask the running broker.
//!
//! One request per connection, one reply, each a line of JSON:
//!
//! ```text
//! → {"command":"sessions"}
//! ← {"sessions":[{"user":"alice","key":"user:alice","peer":"192.0.2.2:40000",…}]}
//! → {"command":"disconnect","user":"alice"}
//! ← {"disconnected":{"user":"alice","sessions":1}}
//! ← {"error":"…"}
//! ```
//!
//! Only root and the broker's own user are answered (the peer's credentials, SO_PEERCRED);
//! the file mode keeps others out already, the check holds wherever the socket is. Requests
//! are bounded (4 KiB, 5 s) and so are the connections served at once.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::SessionRecord;
use crate::metrics::Traffic;
use crate::serve::Shared;
use tsp_proto::client::Transport;
use tsp_proto::types::TunnelMode;

/// Where the broker listens unless `control_socket` says otherwise: in the runtime directory
/// systemd makes for the unit (`RuntimeDirectory=tsp-broker`).
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/tsp-broker/control";
/// Longest request line.
const MAX_REQUEST: usize = 4096;
/// A client gets this long to send its request, and again to read the reply.
const DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// The tunnels and the offers awaiting their accept.
    Sessions,
    /// Ends the tunnels of a user (or of an anonymous session, by its key).
    Disconnect { user: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reply {
    Sessions(Vec<SessionView>),
    Disconnected { user: String, sessions: usize },
    Error(String),
}

/// One session as `tsp-broker sessions` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    /// `None`: anonymous (the key tells anonymous sessions apart).
    pub user: Option<String>,
    pub key: String,
    /// The client's TSP address and port, as the broker sees it.
    pub peer: SocketAddr,
    pub transport: String,
    pub mode: String,
    /// False while the offer awaits the client's accept.
    pub established: bool,
    /// The client's address inside the tunnel (IPv4 for v4v6).
    pub address: IpAddr,
    /// The delegated prefix of a router, `addr/len`.
    pub prefix: Option<String>,
    /// When the offer was made, in seconds since the Unix epoch.
    pub since: u64,
    pub packets_from_client: u64,
    pub bytes_from_client: u64,
    pub packets_to_client: u64,
    pub bytes_to_client: u64,
}

impl SessionView {
    pub fn new(s: &SessionRecord, t: Traffic) -> Self {
        let address = match s.offer.mode {
            TunnelMode::V4V6 => IpAddr::V4(s.offer.client_v4),
            _ => IpAddr::V6(s.offer.client_v6),
        };
        Self {
            user: s.user.clone(),
            key: s.key.to_string(),
            peer: crate::plain_peer(s.peer),
            transport: match s.transport {
                Transport::Udp => "udp",
                Transport::Tcp => "tcp",
            }
            .to_owned(),
            mode: s.offer.mode.as_str().to_owned(),
            established: s.established,
            address,
            prefix: s.offer.prefix.as_ref().map(|p| format!("{}/{}", p.addr, p.len)),
            since: s.since.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            packets_from_client: t.packets_from_clients,
            bytes_from_client: t.bytes_from_clients,
            packets_to_client: t.packets_to_clients,
            bytes_to_client: t.bytes_to_clients,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "no broker listens on {0} (is tsp-broker running, with this control_socket? `tsp-broker -c FILE …` reads it from FILE)"
    )]
    NotRunning(PathBuf),
    #[error("{0}: permission denied (the control socket answers root and the broker's own user)")]
    Denied(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: the broker's reply is not understood: {message}")]
    BadReply { path: PathBuf, message: String },
    #[error("another broker answers on {0}; give this one another control_socket")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; not replacing it")]
    NotASocket(PathBuf),
    #[error("cannot create the control socket {path}: {source}")]
    Bind { path: PathBuf, source: std::io::Error },
}

/// The control socket file, removed when the broker stops.
#[derive(Debug)]
pub struct SocketFile(PathBuf);

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds the control socket at `path` (mode 0600). A stale socket left by a broker that
/// died is replaced; a live one is not. The default path is best effort: without its
/// directory (systemd's `RuntimeDirectory` makes it) or with another broker on it, the
/// broker runs without a control socket and says so; a configured path must work.
pub fn bind(path: &Path) -> Result<Option<(UnixListener, SocketFile)>, ControlError> {
    let default = path == Path::new(DEFAULT_CONTROL_SOCKET);
    let result = bind_at(path);
    match result {
        Err(ControlError::Bind { source, .. }) if default && source.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(
                path = %path.display(),
                "no control socket (its directory does not exist): `tsp-broker sessions` and `disconnect` cannot reach this broker"
            );
            Ok(None)
        }
        Err(e @ ControlError::InUse(_)) if default => {
            tracing::warn!(error = %e, "no control socket for this broker");
            Ok(None)
        }
        other => other.map(Some),
    }
}

fn bind_at(path: &Path) -> Result<(UnixListener, SocketFile), ControlError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => return Err(ControlError::NotASocket(path.into())),
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(ControlError::InUse(path.into())),
            // Nobody listens: a broker that died left it.
            Err(_) => {
                std::fs::remove_file(path).map_err(|source| ControlError::Bind {
                    path: path.into(),
                    source,
                })?;
            }
        },
        Err(_) => {}
    }
    let bind_err = |source| ControlError::Bind {
        path: path.into(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    let file = SocketFile(path.into());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok((listener, file))
}

/// Answers requests on the control socket until the task is dropped.
pub async fn serve(listener: UnixListener, shared: Shared) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let me = nix::unistd::geteuid().as_raw();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &shared, me).await {
                tracing::debug!(error = %e, "control socket: request not answered");
            }
            drop(slot);
        });
    }
}

async fn answer(stream: UnixStream, shared: &Shared, me: u32) -> std::io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    // The request is read whoever asks: one request, one reply, and a refused client reads
    // why instead of a closed socket.
    let mut line = Vec::new();
    tokio::time::timeout(
        DEADLINE,
        tokio::io::BufReader::new(read.take(MAX_REQUEST as u64 + 1)).read_until(b'\n', &mut line),
    )
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let reply = if uid != 0 && uid != me {
        tracing::warn!(uid, "control socket: request from another user refused");
        Reply::Error("permission denied: only root and the broker's own user may ask".into())
    } else if line.len() > MAX_REQUEST {
        Reply::Error(format!("request longer than {MAX_REQUEST} bytes"))
    } else {
        match serde_json::from_slice::<Request>(&line) {
            Ok(req) => execute(shared, req),
            Err(e) => Reply::Error(format!("not a request: {e}")),
        }
    };
    let mut text = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    text.push(b'\n');
    tokio::time::timeout(DEADLINE, write.write_all(&text))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

fn execute(shared: &Shared, req: Request) -> Reply {
    match req {
        Request::Sessions => Reply::Sessions(shared.session_views()),
        Request::Disconnect { user } => match shared.disconnect(&user) {
            0 => Reply::Error(format!("no session of {user:?}")),
            n => Reply::Disconnected { user, sessions: n },
        },
    }
}

/// Asks the broker listening on `path` (what the `sessions` and `disconnect` commands do).
pub fn ask(path: &Path, req: &Request) -> Result<Reply, ControlError> {
    let io = |source| ControlError::Io {
        path: path.into(),
        source,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => ControlError::NotRunning(path.into()),
        std::io::ErrorKind::PermissionDenied => ControlError::Denied(path.into()),
        _ => io(e),
    })?;
    stream.set_read_timeout(Some(2 * DEADLINE)).map_err(io)?;
    stream.set_write_timeout(Some(DEADLINE)).map_err(io)?;
    let mut text = serde_json::to_vec(req).map_err(|e| io(std::io::Error::other(e)))?;
    text.push(b'\n');
    stream.write_all(&text).map_err(io)?;
    let mut line = String::new();
    BufReader::new(stream.take(16 << 20)).read_line(&mut line).map_err(io)?;
    serde_json::from_str(&line).map_err(|e| ControlError::BadReply {
        path: path.into(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        assert_eq!(
            serde_json::to_string(&Request::Sessions).unwrap(),
            r#"{"command":"sessions"}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::Disconnect { user: "al\"ice".into() }).unwrap(),
            r#"{"command":"disconnect","user":"al\"ice"}"#
        );
        assert_eq!(
            serde_json::to_string(&Reply::Disconnected {
                user: "alice".into(),
                sessions: 2
            })
            .unwrap(),
            r#"{"disconnected":{"user":"alice","sessions":2}}"#
        );
        assert_eq!(
            serde_json::to_string(&Reply::Error("x".into())).unwrap(),
            r#"{"error":"x"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"command":"reboot"}"#).is_err());
    }

    #[test]
    fn a_stale_socket_is_replaced_a_live_one_and_other_files_are_not() {
        let dir = std::env::temp_dir().join(format!("tsp-broker-control-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (listener, file) = bind(&path).unwrap().unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            assert!(matches!(bind(&path), Err(ControlError::InUse(_))));
            // The broker died without removing it: replaced.
            drop(listener);
            std::mem::forget(file);
            let (_l, file) = bind(&path).unwrap().unwrap();
            drop(file);
            assert!(!path.exists(), "removed when the broker stops");
        });
        std::fs::write(&path, "not a socket").unwrap();
        assert!(matches!(bind(&path), Err(ControlError::NotASocket(_))));
        let missing = dir.join("no/such/dir/control");
        assert!(matches!(bind(&missing), Err(ControlError::Bind { .. })));
        assert!(matches!(
            ask(&dir.join("absent"), &Request::Sessions),
            Err(ControlError::NotRunning(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
