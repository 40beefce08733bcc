//! PASSDSS host-key trust on first use, with a gogoc-compatible key file
//! (`<server> ssh-dss <base64>` lines, §3.6).
//!
//! Unlike gogoc, an unknown key never hangs a daemon: without a terminal (or with `-y` off and
//! stdin at EOF) the key is refused with a clear error.
//!
//! See docs/tsp-wire.md §3.6.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use tsp_proto::sasl::passdss::{PublicHostKey, Trust, check_known_hosts, known_hosts_line};

/// Largest key file we read; a real one holds a few lines.
const MAX_FILE: u64 = 1 << 20;

/// What to do with a key seen for the first time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustMode {
    /// Add it and go on (gogoc `-y`).
    AutoAccept,
    /// Ask on the terminal; refuse when there is none.
    Ask,
    /// Refuse (NetworkManager and other non-interactive callers pin keys beforehand).
    Refuse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Trusted,
    Rejected,
    /// A different key is stored for this host.
    Mismatch,
}

/// Decides whether a broker's host key is trusted.
pub trait HostKeyPolicy: Send + Sync + std::fmt::Debug {
    fn check(&self, host: &str, key: &PublicHostKey) -> Decision;
}

/// The key file (gogoc: `gogockeys.pub` in its working directory).
#[derive(Debug, Clone)]
pub struct KnownHostsFile {
    pub path: PathBuf,
    pub mode: TrustMode,
}

impl KnownHostsFile {
    pub fn new(path: impl Into<PathBuf>, mode: TrustMode) -> Self {
        Self {
            path: path.into(),
            mode,
        }
    }

    fn read(&self) -> String {
        match std::fs::metadata(&self.path) {
            Ok(m) if m.len() > MAX_FILE => {
                tracing::warn!(path = %self.path.display(), "host key file is too large; ignoring it");
                String::new()
            }
            Ok(_) => std::fs::read_to_string(&self.path).unwrap_or_else(|e| {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read host key file");
                String::new()
            }),
            Err(_) => String::new(),
        }
    }

    fn append(&self, host: &str, key: &PublicHostKey) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        f.write_all(known_hosts_line(host, key).as_bytes())
    }

    fn ask(host: &str) -> bool {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            tracing::error!(%host, "unknown broker host key and no terminal to ask; refusing (use -y to accept it)");
            return false;
        }
        let mut out = std::io::stdout();
        for _ in 0..5 {
            let _ = write!(out, "{host} is an unknown host, do you want to add its key? (Y/N) ");
            let _ = out.flush();
            let mut answer = String::new();
            match stdin.lock().read_line(&mut answer) {
                Ok(0) | Err(_) => return false,
                Ok(_) => match answer.trim().to_ascii_lowercase().as_str() {
                    "y" | "yes" => return true,
                    "n" | "no" => return false,
                    _ => continue,
                },
            }
        }
        false
    }
}

impl HostKeyPolicy for KnownHostsFile {
    fn check(&self, host: &str, key: &PublicHostKey) -> Decision {
        match check_known_hosts(&self.read(), host, key) {
            Trust::Known => Decision::Trusted,
            Trust::Mismatch => {
                tracing::error!(%host, path = %self.path.display(), "stored host key does not match the broker's key; NOT CONNECTING");
                Decision::Mismatch
            }
            Trust::Unknown => {
                let accept = match self.mode {
                    TrustMode::AutoAccept => true,
                    TrustMode::Ask => Self::ask(host),
                    TrustMode::Refuse => false,
                };
                if !accept {
                    return Decision::Rejected;
                }
                match self.append(host, key) {
                    Ok(()) => tracing::info!(%host, path = %self.path.display(), "broker host key added"),
                    Err(e) => tracing::warn!(%host, error = %e, "broker host key accepted but could not be saved"),
                }
                Decision::Trusted
            }
        }
    }
}
