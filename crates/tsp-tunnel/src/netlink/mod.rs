//! rtnetlink plumbing for the tunnel: links, addresses, routes, the IPv6 forwarding sysctl, kernel
//! tunnel links (sit, ip6tnl) and an address/route/link monitor.
//!
//! Everything the tunnel configures goes through [`Applied`], which records each change so that
//! teardown removes exactly what this process added (gogoc's template deleted `::/0` and
//! `2000::/3` unconditionally; we do not touch what we did not add).
//!
//! All functions must run inside a tokio runtime: the netlink connection is a spawned task.
//! Sockets (and `/proc/sys/net`) belong to the network namespace of the thread that opens them.
//!
//! See docs/tsp-wire.md §8.
//!
//! `ops` holds the requests ([`Netlink`]), `journal` the record of what was changed ([`Applied`])
//! and `monitor` the change events ([`address_events`]).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use tokio::task::JoinHandle;

mod journal;
mod monitor;
mod ops;
#[cfg(test)]
mod tests;

pub use journal::Applied;
pub use monitor::{AddressEvents, LinkAddrEvent, address_events};
pub use ops::{Netlink, remove_stale_link};

/// A netlink connection's task on the current tokio runtime, stopped when dropped:
/// netlink-proto's connection future never ends on its own while its unsolicited-message
/// channel is open.
struct ConnectionTask(JoinHandle<()>);

impl ConnectionTask {
    /// The runtime to spawn on; checked before a socket is opened.
    fn runtime() -> Result<tokio::runtime::Handle, NetlinkError> {
        tokio::runtime::Handle::try_current().map_err(|_| NetlinkError::NoRuntime)
    }

    fn spawn(rt: &tokio::runtime::Handle, conn: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(rt.spawn(conn))
    }
}

impl Drop for ConnectionTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Errors from the netlink layer. Each message says what was attempted and on which interface,
/// address or route.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink needs a running tokio runtime, and none is current")]
    NoRuntime,
    #[error("cannot open an rtnetlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("{what}: {}", describe(.source))]
    Request {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{what}: the kernel sent no answer")]
    NoAnswer { what: String },
    #[error("invalid prefix {addr}/{plen}: the prefix length exceeds the address length")]
    InvalidPrefix { addr: IpAddr, plen: u8 },
    #[error("sysctl {path}: {source}")]
    Sysctl {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("sysctl {path}: unexpected value {value:?}")]
    SysctlValue { path: &'static str, value: String },
    #[error("no link named {0}")]
    NoSuchLink(String),
    #[error("link {name} exists but is of kind {found}, not {expected}: not ours, leaving it alone")]
    ForeignLink {
        name: String,
        found: String,
        expected: String,
    },
}

impl NetlinkError {
    /// The positive errno the kernel answered with, if this is a kernel refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => m.code.map(|c| -c.get()),
            NetlinkError::Sysctl { source, .. } | NetlinkError::Socket(source) => source.raw_os_error(),
            _ => None,
        }
    }

    /// The object to remove is already gone (link deleted, address or route removed by the
    /// kernel with its link): for teardown that is success.
    fn is_already_gone(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENODEV | libc::EADDRNOTAVAIL | libc::ESRCH | libc::ENOENT)
        )
    }
}

/// Netlink error messages are kernel errnos; show them like `ip` does ("File exists (os error 17)").
fn describe(e: &rtnetlink::Error) -> String {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
        other => other.to_string(),
    }
}

/// Creating a kernel tunnel link (sit, ip6tnl) failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelLinkError {
    /// The kernel has no driver for this link type (EOPNOTSUPP, iproute2's "Unknown device type"):
    /// the caller should fall back to a userspace datapath (TUN + raw socket).
    #[error("the kernel cannot create this tunnel link type (EOPNOTSUPP); a userspace datapath is needed")]
    NotSupported,
    #[error(transparent)]
    Other(NetlinkError),
}

impl KernelLinkError {
    /// Classify a failed link creation: EOPNOTSUPP (or the same refusal spelled as iproute2's
    /// "Unknown device type") means the driver is absent; anything else is a real error.
    fn from_create(e: NetlinkError) -> Self {
        let unsupported = e.errno() == Some(libc::EOPNOTSUPP)
            || matches!(&e, NetlinkError::Request { source, .. } if source.to_string().contains("Unknown device type"));
        if unsupported {
            KernelLinkError::NotSupported
        } else {
            KernelLinkError::Other(e)
        }
    }
}

fn full_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

/// Zero the host bits: the kernel rejects IPv4 routes with host bits set and silently masks IPv6
/// ones; masking here keeps the add, the record and the delete identical.
fn masked(addr: IpAddr, plen: u8) -> Result<IpAddr, NetlinkError> {
    if plen > full_len(addr) {
        return Err(NetlinkError::InvalidPrefix { addr, plen });
    }
    Ok(match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(plen)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(plen)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    })
}

/// The local address of an address message: `IFA_LOCAL` when present (IPv4, and point-to-point
/// IPv6 where `IFA_ADDRESS` is the peer), else `IFA_ADDRESS`.
fn local_addr(msg: &AddressMessage) -> Option<IpAddr> {
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(a) => return Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            _ => {}
        }
    }
    address
}
