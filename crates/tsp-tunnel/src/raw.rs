//! Raw IP sockets for the userspace encapsulations: IPv4 protocol 41 (IPv6 in IPv4, v6v4)
//! and IPv6 protocol 4 (IPv4 in IPv6, v4v6). Used where the kernel has no sit/ip6tnl.
//!
//! See docs/tsp-wire.md §6.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use nix::sys::socket::SockaddrStorage;
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// IANA protocol numbers of the encapsulations.
pub const IPPROTO_IPV6_IN_IPV4: i32 = 41;
pub const IPPROTO_IPV4_IN_IPV6: i32 = 4;

/// A non-blocking raw socket of one protocol, registered with tokio.
#[derive(Debug)]
pub struct RawSocket {
    fd: AsyncFd<OwnedFd>,
    v6: bool,
}

/// The peer's address as a raw socket takes it: port 0 (raw sockets have none), no flow
/// label or scope.
fn sockaddr(addr: IpAddr) -> SockAddr {
    SockAddr::from(SocketAddr::new(addr, 0))
}

fn from_sockaddr(addr: &SockaddrStorage) -> Option<IpAddr> {
    match (addr.as_sockaddr_in(), addr.as_sockaddr_in6()) {
        (Some(sin), _) => Some(IpAddr::V4(sin.ip())),
        (_, Some(sin6)) => Some(IpAddr::V6(sin6.ip())),
        _ => None,
    }
}

impl AsRawFd for RawSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.get_ref().as_raw_fd()
    }
}

impl RawSocket {
    /// Opens a raw socket for `protocol` (41 over IPv4, 4 over IPv6) and connects it to
    /// `peer`, so the kernel delivers only the peer's packets.
    pub fn connect(protocol: i32, peer: IpAddr) -> io::Result<Self> {
        let sock = Self::open(protocol, peer.is_ipv6())?;
        SockRef::from(&sock.fd).connect(&sockaddr(peer))?;
        Ok(sock)
    }

    /// Opens an unconnected raw socket (the broker side: one socket, many peers).
    pub fn open(protocol: i32, v6: bool) -> io::Result<Self> {
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        // socket2 adds SOCK_CLOEXEC itself.
        let sock = Socket::new(domain, Type::RAW.nonblocking(), Some(Protocol::from(protocol)))?;
        Self::register(OwnedFd::from(sock), v6)
    }

    fn register(owned: OwnedFd, v6: bool) -> io::Result<Self> {
        super::grow_receive_buffer(owned.as_fd());
        // SAFETY: an OwnedFd keeps returning the same open descriptor until it is dropped
        // together with the AsyncFd.
        let fd = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE | Interest::WRITABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self { fd, v6 })
    }

    /// Binds the socket to one local address: what it sends leaves from that address (an
    /// unbound raw socket gets the kernel's choice, the interface's primary address), and it
    /// receives only packets to it.
    pub fn bind(&self, local: IpAddr) -> io::Result<()> {
        SockRef::from(&self.fd).bind(&sockaddr(local))
    }

    /// Restricts the socket to one interface (SO_BINDTODEVICE).
    pub fn bind_device(&self, ifname: &str) -> io::Result<()> {
        SockRef::from(&self.fd).bind_device(Some(ifname.as_bytes()))
    }

    /// Whether this is an IPv6 socket (received packets start with the inner packet; an IPv4
    /// raw socket hands over the outer IPv4 header too).
    pub fn is_v6(&self) -> bool {
        self.v6
    }

    /// Runs `f` on the descriptor when it is ready for `interest`, again after each
    /// `WouldBlock` (for batched system calls).
    pub async fn async_io<R>(&self, interest: Interest, mut f: impl FnMut(RawFd) -> io::Result<R>) -> io::Result<R> {
        self.fd.async_io(interest, |fd| f(fd.as_raw_fd())).await
    }

    /// Sends one inner packet to the connected peer (the kernel adds the outer header).
    pub async fn send(&self, pkt: &[u8]) -> io::Result<usize> {
        self.fd
            .async_io(Interest::WRITABLE, |fd| SockRef::from(fd).send(pkt))
            .await
    }

    /// Sends one inner packet to `peer`.
    pub async fn send_to(&self, pkt: &[u8], peer: IpAddr) -> io::Result<usize> {
        let to = sockaddr(peer);
        self.fd
            .async_io(Interest::WRITABLE, |fd| SockRef::from(fd).send_to(pkt, &to))
            .await
    }

    /// The inner packet's range in a packet this socket received (`buf`): after the outer
    /// IPv4 header on an IPv4 socket. `None` when that header is cut.
    pub fn inner(&self, buf: &[u8]) -> Option<std::ops::Range<usize>> {
        if self.v6 {
            return Some(0..buf.len());
        }
        let ihl = buf.first().map_or(0, |b| usize::from(b & 0x0f) * 4);
        (ihl >= 20 && ihl <= buf.len()).then_some(ihl..buf.len())
    }

    /// Receives one packet; returns the inner packet's range in `buf` and the sender.
    /// IPv4 raw sockets hand over the outer IPv4 header, which is skipped here.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(std::ops::Range<usize>, IpAddr)> {
        let (n, from) = self
            .fd
            .async_io(Interest::READABLE, |fd| {
                nix::sys::socket::recvfrom::<SockaddrStorage>(fd.as_raw_fd(), buf)
                    .map(|(n, from)| (n, from.as_ref().and_then(from_sockaddr)))
                    .map_err(io::Error::from)
            })
            .await?;
        let from =
            from.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "raw socket: unknown address family"))?;
        if self.v6 {
            return Ok((0..n, from));
        }
        let ihl = buf.first().map_or(0, |b| usize::from(b & 0x0f) * 4);
        if ihl < 20 || ihl > n {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "raw socket: truncated IPv4 header",
            ));
        }
        Ok((ihl..n, from))
    }
}
