//! Raw IP sockets for the userspace encapsulations: IPv4 protocol 41 (IPv6 in IPv4, v6v4)
//! and IPv6 protocol 4 (IPv4 in IPv6, v4v6). Used where the kernel has no sit/ip6tnl.
//!
//! See docs/tsp-wire.md §6.

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

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

fn sockaddr(addr: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid (unspecified) value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match SocketAddr::new(addr, 0) {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage, which is suitably aligned.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn from_sockaddr(storage: &libc::sockaddr_storage) -> Option<IpAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            Some(IpAddr::V4(Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes())))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

impl RawSocket {
    /// Opens a raw socket for `protocol` (41 over IPv4, 4 over IPv6) and connects it to
    /// `peer`, so the kernel delivers only the peer's packets.
    pub fn connect(protocol: i32, peer: IpAddr) -> io::Result<Self> {
        let sock = Self::open(protocol, peer.is_ipv6())?;
        let (sa, len) = sockaddr(peer);
        // SAFETY: sa/len describe a valid sockaddr of the socket's family.
        if unsafe { libc::connect(sock.fd.as_raw_fd(), &sa as *const _ as *const libc::sockaddr, len) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sock)
    }

    /// Opens an unconnected raw socket (the broker side: one socket, many peers).
    pub fn open(protocol: i32, v6: bool) -> io::Result<Self> {
        let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                family,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Self::register(owned, v6)
    }

    fn register(owned: OwnedFd, v6: bool) -> io::Result<Self> {
        use std::os::fd::AsFd;
        super::grow_receive_buffer(owned.as_fd());
        // SAFETY: an OwnedFd keeps returning the same open descriptor until it is dropped
        // together with the AsyncFd.
        let fd = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE | Interest::WRITABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self { fd, v6 })
    }

    /// Restricts the socket to one interface (SO_BINDTODEVICE).
    pub fn bind_device(&self, ifname: &str) -> io::Result<()> {
        let name = ifname.as_bytes();
        // SAFETY: name is valid for name.len() bytes; the kernel copies at most IFNAMSIZ.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                name.as_ptr().cast(),
                name.len() as libc::socklen_t,
            )
        };
        if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
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
            .async_io(Interest::WRITABLE, |fd| {
                // SAFETY: the buffer is valid for pkt.len() bytes.
                let n = unsafe { libc::send(fd.as_raw_fd(), pkt.as_ptr().cast(), pkt.len(), 0) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            })
            .await
    }

    /// Sends one inner packet to `peer`.
    pub async fn send_to(&self, pkt: &[u8], peer: IpAddr) -> io::Result<usize> {
        let (sa, len) = sockaddr(peer);
        self.fd
            .async_io(Interest::WRITABLE, |fd| {
                // SAFETY: the buffer is valid for pkt.len() bytes; sa/len form a valid address.
                let n = unsafe {
                    libc::sendto(
                        fd.as_raw_fd(),
                        pkt.as_ptr().cast(),
                        pkt.len(),
                        0,
                        &sa as *const _ as *const libc::sockaddr,
                        len,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            })
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
                // SAFETY: zeroed sockaddr_storage is valid; recvfrom fills at most its size.
                let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
                let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                // SAFETY: buf is valid for buf.len() bytes; storage/len as above.
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        &mut storage as *mut _ as *mut libc::sockaddr,
                        &mut len,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok((n as usize, from_sockaddr(&storage)))
                }
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
