//! Tokio transports for TSP and the negotiation driver: UDP with a quick TCP race, version
//! fallback, redirection, host-key checks. The protocol decisions are `proto::client`'s.
//!
//! See docs/tsp-wire.md §1.6.

mod conn;
pub mod hostkeys;
mod negotiate;
pub mod rank;

use std::net::SocketAddr;
use std::time::Duration;

pub use conn::{Conn, TcpConn, UdpConn};
pub use negotiate::{Established, NegotiateOptions, Server, negotiate};

use tsp_proto::client::Transport;
use tsp_proto::error::ProtoError;
use tsp_proto::frame::FrameError;
use tsp_proto::rudp::RudpError;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid server address {server:?}: {reason}")]
    BadServer { server: String, reason: String },
    #[error("cannot resolve broker {server:?}: {source}")]
    Resolve { server: String, source: std::io::Error },
    #[error("{what} failed: {source}")]
    Io { what: &'static str, source: std::io::Error },
    #[error("{transport:?} connection to {peer} refused (no TSP listener there)")]
    Refused { transport: Transport, peer: SocketAddr },
    #[error("the broker closed the connection")]
    Closed,
    #[error("the broker sent an incomplete message and went silent: {preview:?}")]
    Incomplete { preview: String },
    #[error("timed out waiting for {what} after {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error(transparent)]
    Rudp(#[from] RudpError),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error("too many redirections (more than {0})")]
    TooManyRedirects(usize),
    #[error("no broker could be reached: {}", summarize(.0))]
    AllFailed(Vec<(String, NetError)>),
    /// A router request (`host_type=router`) answered with a tunnel but no delegated prefix.
    #[error(
        "host_type=router, but broker {server} answered without a prefix (it delegates none to this account); \
         no tunnel was set up — set router_fallback_host=yes to accept a host tunnel instead"
    )]
    NoPrefix { server: String },
}

fn summarize(errors: &[(String, NetError)]) -> String {
    errors
        .iter()
        .map(|(who, e)| format!("{who}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl NetError {
    pub(crate) fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> NetError {
        move |source| NetError::Io { what, source }
    }

    /// The broker rejected the credentials (or could not prove its identity): retrying with
    /// the same password is pointless; NetworkManager reports LOGIN_FAILED.
    pub fn is_auth_failure(&self) -> bool {
        match self {
            Self::Proto(e) => e.is_auth_failure(),
            Self::AllFailed(list) => !list.is_empty() && list.iter().all(|(_, e)| e.is_auth_failure()),
            _ => false,
        }
    }

    /// A router request answered without a prefix ([`NetError::NoPrefix`]).
    pub fn is_no_prefix(&self) -> bool {
        matches!(self, Self::NoPrefix { .. })
    }

    /// How far the exchange got before this error: 0 nothing listening, 1 connected but
    /// silent or cut off, 2 the broker answered (badly).
    pub fn progress(&self) -> u8 {
        match self {
            Self::Refused { .. } | Self::Rudp(RudpError::NoListener { .. }) | Self::Resolve { .. } => 0,
            Self::Timeout { .. } | Self::Closed | Self::Incomplete { .. } | Self::Rudp(RudpError::Timeout { .. }) => 1,
            _ => 2,
        }
    }

    /// Nothing answered at this address (as opposed to a broker that answered badly).
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Refused { .. } | Self::Timeout { .. } | Self::Rudp(RudpError::NoListener { .. }) | Self::Closed => {
                true
            }
            Self::AllFailed(list) => !list.is_empty() && list.iter().all(|(_, e)| e.is_unreachable()),
            _ => false,
        }
    }
}
