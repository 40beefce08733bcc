//! Batched datagram I/O for the datapaths: `sendmmsg` whose messages may each carry a UDP GSO
//! segment size (`UDP_SEGMENT`: the kernel cuts one buffer into equal datagrams, a shorter last
//! one allowed), and `recvmmsg` that reads the `UDP_GRO` segment size of datagrams the kernel
//! coalesced. On raw sockets the same calls simply move many packets per system call.
//!
//! The message headers hold raw pointers into the caller's buffers; they are rebuilt inside each
//! call and never outlive it.
//!
//! See docs/ARCHITECTURE.md (the data path).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ops::Range;
use std::os::fd::{AsFd, RawFd};

use nix::sys::socket::{setsockopt, sockopt};

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Room for one `int` control message, 8-byte aligned (CMSG_SPACE(4) is 24 on 64-bit Linux).
const CTRL_WORDS: usize = 4;

/// Asks the kernel to coalesce received datagrams of one flow (`UDP_GRO`, Linux 5.0).
pub fn enable_udp_gro(fd: impl AsFd) -> io::Result<()> {
    setsockopt(&fd, sockopt::UdpGroSegment, &true).map_err(io::Error::from)
}

/// Whether this kernel knows UDP GSO (`UDP_SEGMENT`, Linux 4.18): setting the socket default
/// to 0 (no segmentation) is harmless and fails only where the option is unknown.
pub fn udp_gso_supported(fd: impl AsFd) -> bool {
    setsockopt(&fd, sockopt::UdpGsoSegment, &0).is_ok()
}

/// Whether an error from a GSO send means the path cannot segment (no checksum offload on
/// the route's device, a UDP checksum turned off, too many segments): send without GSO.
pub fn gso_refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL))
}

pub fn to_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid (unspecified) value.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage, which is suitably aligned.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

pub fn from_sockaddr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// One message to send: bytes of the caller's buffer, cut into datagrams of `seg` bytes by the
/// kernel when `seg` is not 0, to `to` (or the connected peer), through the caller's socket
/// number `via` (a broker has several).
#[derive(Debug, Clone)]
pub struct Out {
    pub range: Range<usize>,
    pub seg: u16,
    pub to: Option<SocketAddr>,
    pub via: usize,
}

/// Reusable state for `sendmmsg`.
#[derive(Default)]
pub struct SendBatch {
    pub items: Vec<Out>,
    msgs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    ctrl: Vec<[u64; CTRL_WORDS]>,
    addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)>,
}

// SAFETY: the raw pointers in `msgs` and `iovs` are written and used only inside `send`, while
// the buffers they point to are borrowed; between calls they are dead values.
unsafe impl Send for SendBatch {}
// SAFETY: as above; `&SendBatch` gives no access to the pointers.
unsafe impl Sync for SendBatch {}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch").field("items", &self.items.len()).finish()
    }
}

/// At most this many messages per `sendmmsg` (the kernel's UIO_MAXIOV bounds it at 1024).
const MAX_MSGS: usize = 256;

impl SendBatch {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            items: Vec::with_capacity(n),
            msgs: Vec::with_capacity(n.min(MAX_MSGS)),
            iovs: Vec::with_capacity(n.min(MAX_MSGS)),
            ctrl: Vec::with_capacity(n.min(MAX_MSGS)),
            addrs: Vec::with_capacity(n.min(MAX_MSGS)),
        }
    }

    /// Sends `items[from..end]` (some of them) from `buf` with one `sendmmsg`; returns how
    /// many messages the kernel took. An error is the first message's.
    pub fn send(&mut self, fd: RawFd, buf: &[u8], from: usize, end: usize) -> io::Result<usize> {
        let end = end.min(self.items.len());
        let items = &self.items[from.min(end)..end];
        let items = &items[..items.len().min(MAX_MSGS)];
        if items.is_empty() {
            return Ok(0);
        }
        self.msgs.clear();
        self.iovs.clear();
        self.ctrl.clear();
        self.addrs.clear();
        for it in items {
            let Some(bytes) = buf.get(it.range.clone()) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "send batch: range outside buffer",
                ));
            };
            self.iovs.push(libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            });
            let mut ctrl = [0u64; CTRL_WORDS];
            if it.seg != 0 {
                // SAFETY: ctrl is 32 bytes, 8-aligned: room for a cmsghdr and an int.
                unsafe {
                    let c = ctrl.as_mut_ptr().cast::<libc::cmsghdr>();
                    (*c).cmsg_level = SOL_UDP;
                    (*c).cmsg_type = UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), it.seg);
                }
            }
            self.ctrl.push(ctrl);
            let addr = match it.to {
                Some(to) => to_sockaddr(to),
                // SAFETY: an all-zero sockaddr_storage is a valid value.
                None => (unsafe { zeroed() }, 0),
            };
            self.addrs.push(addr);
        }
        for (i, it) in items.iter().enumerate() {
            // SAFETY: mmsghdr is plain data; all-zero is valid before we fill it.
            let mut m: libc::mmsghdr = unsafe { zeroed() };
            if self.addrs[i].1 != 0 {
                m.msg_hdr.msg_name = (&mut self.addrs[i].0 as *mut libc::sockaddr_storage).cast();
                m.msg_hdr.msg_namelen = self.addrs[i].1;
            }
            m.msg_hdr.msg_iov = &mut self.iovs[i];
            m.msg_hdr.msg_iovlen = 1;
            if it.seg != 0 {
                m.msg_hdr.msg_control = self.ctrl[i].as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE is a pure size computation.
                m.msg_hdr.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as _;
            }
            self.msgs.push(m);
        }
        // SAFETY: every msghdr points into self.iovs/ctrl/addrs and `buf`, all alive and
        // unmoved for the duration of the call.
        let n = unsafe { libc::sendmmsg(fd, self.msgs.as_mut_ptr(), self.msgs.len() as libc::c_uint, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Replaces GSO message `i` by one message per datagram (after the kernel refused GSO).
    pub fn expand(&mut self, i: usize) {
        let Some(it) = self.items.get(i).cloned() else { return };
        if it.seg == 0 {
            return;
        }
        let seg = usize::from(it.seg);
        let pieces = (it.range.start..it.range.end).step_by(seg).map(|s| Out {
            range: s..(s + seg).min(it.range.end),
            seg: 0,
            to: it.to,
            via: it.via,
        });
        let rest: Vec<Out> = self.items.drain(i + 1..).collect();
        self.items.truncate(i);
        self.items.extend(pieces);
        self.items.extend(rest);
    }
}

/// Reusable state for `recvmmsg`: `slots` buffers of `slot` bytes.
pub struct RecvBatch {
    pub buf: Vec<u8>,
    slot: usize,
    /// Per received message: bytes, GRO segment size (0: one datagram), sender, truncated.
    lens: Vec<usize>,
    segs: Vec<u16>,
    from: Vec<libc::sockaddr_storage>,
    truncated: Vec<bool>,
    msgs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    ctrl: Vec<[u64; CTRL_WORDS]>,
    n: usize,
}

// SAFETY: as for SendBatch: the pointers are rebuilt and used only inside `recv`.
unsafe impl Send for RecvBatch {}
// SAFETY: as above.
unsafe impl Sync for RecvBatch {}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("slots", &self.lens.len())
            .field("slot", &self.slot)
            .finish()
    }
}

/// One received message.
#[derive(Debug, Clone)]
pub struct In {
    /// Where its bytes are in [`RecvBatch::buf`].
    pub range: Range<usize>,
    /// The datagram size the kernel coalesced at (UDP GRO), or 0 for one datagram.
    pub seg: usize,
    pub from: Option<SocketAddr>,
    /// The message did not fit its slot (and is incomplete).
    pub truncated: bool,
}

impl RecvBatch {
    pub fn new(slots: usize, slot: usize) -> Self {
        Self {
            buf: vec![0; slots * slot],
            slot,
            lens: vec![0; slots],
            segs: vec![0; slots],
            // SAFETY: an all-zero sockaddr_storage is a valid value.
            from: vec![unsafe { zeroed() }; slots],
            truncated: vec![false; slots],
            msgs: Vec::with_capacity(slots),
            iovs: Vec::with_capacity(slots),
            ctrl: vec![[0; CTRL_WORDS]; slots],
            n: 0,
        }
    }

    /// Messages of the last [`RecvBatch::recv`].
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn get(&self, i: usize) -> In {
        In {
            range: i * self.slot..i * self.slot + self.lens[i],
            seg: usize::from(self.segs[i]),
            from: from_sockaddr(&self.from[i]),
            truncated: self.truncated[i],
        }
    }

    /// One non-blocking `recvmmsg` into all slots; returns how many messages arrived
    /// (`WouldBlock` when none).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let slots = self.lens.len();
        self.msgs.clear();
        self.iovs.clear();
        let base = self.buf.as_mut_ptr();
        for i in 0..slots {
            self.iovs.push(libc::iovec {
                // SAFETY: i * slot + slot <= buf.len(): each slot lies inside the buffer.
                iov_base: unsafe { base.add(i * self.slot) }.cast(),
                iov_len: self.slot,
            });
        }
        for i in 0..slots {
            // SAFETY: mmsghdr is plain data; all-zero is valid before we fill it.
            let mut m: libc::mmsghdr = unsafe { zeroed() };
            m.msg_hdr.msg_name = (&mut self.from[i] as *mut libc::sockaddr_storage).cast();
            m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            m.msg_hdr.msg_iov = &mut self.iovs[i];
            m.msg_hdr.msg_iovlen = 1;
            m.msg_hdr.msg_control = self.ctrl[i].as_mut_ptr().cast();
            m.msg_hdr.msg_controllen = size_of::<[u64; CTRL_WORDS]>() as _;
            self.msgs.push(m);
        }
        // SAFETY: every msghdr points into self.buf/iovs/from/ctrl, alive and unmoved for the
        // duration of the call; MSG_DONTWAIT keeps it from blocking.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                slots as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.n = 0;
            return Err(io::Error::last_os_error());
        }
        self.n = n as usize;
        for i in 0..self.n {
            let m = &self.msgs[i];
            self.lens[i] = (m.msg_len as usize).min(self.slot);
            self.truncated[i] = m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.segs[i] = 0;
            if m.msg_hdr.msg_namelen == 0 {
                self.from[i].ss_family = libc::AF_UNSPEC as libc::sa_family_t;
            }
            // SAFETY: the kernel filled msg_control with msg_controllen bytes of cmsgs; the
            // CMSG_* walk stays inside them.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&m.msg_hdr);
                while !c.is_null() {
                    if (*c).cmsg_level == SOL_UDP && (*c).cmsg_type == UDP_GRO {
                        let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                        self.segs[i] = u16::try_from(v).unwrap_or(0);
                    }
                    c = libc::CMSG_NXTHDR(&m.msg_hdr, c);
                }
            }
        }
        Ok(self.n)
    }
}

/// The datagrams of a received message: `seg`-byte pieces (the last may be shorter), or the
/// whole message when `seg` is 0.
pub fn datagrams(range: Range<usize>, seg: usize) -> impl Iterator<Item = Range<usize>> {
    let step = if seg == 0 { range.len().max(1) } else { seg };
    let end = range.end;
    (range.start..end).step_by(step).map(move |s| s..(s + step).min(end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_of_a_gro_message() {
        assert_eq!(datagrams(0..10, 4).collect::<Vec<_>>(), [0..4, 4..8, 8..10]);
        assert_eq!(datagrams(100..108, 4).collect::<Vec<_>>(), [100..104, 104..108]);
        assert_eq!(datagrams(5..9, 0).collect::<Vec<_>>(), vec![5..9]);
        assert_eq!(datagrams(5..5, 0).count(), 0);
    }

    #[test]
    fn sockaddr_round_trip() {
        for a in ["192.0.2.1:3653", "[2001:db8::1]:9", "[::ffff:192.0.2.1]:1"] {
            let a: SocketAddr = a.parse().unwrap_or_else(|e| panic!("{e}"));
            let (s, _) = to_sockaddr(a);
            assert_eq!(from_sockaddr(&s), Some(a));
        }
    }

    #[test]
    fn expand_splits_a_gso_message() {
        let mut b = SendBatch::with_capacity(8);
        b.items.push(Out {
            range: 0..5,
            seg: 0,
            to: None,
            via: 0,
        });
        b.items.push(Out {
            range: 5..15,
            seg: 4,
            to: None,
            via: 0,
        });
        b.items.push(Out {
            range: 15..16,
            seg: 0,
            to: None,
            via: 0,
        });
        b.expand(1);
        let r: Vec<_> = b.items.iter().map(|o| (o.range.clone(), o.seg)).collect();
        assert_eq!(r, [(0..5, 0), (5..9, 0), (9..13, 0), (13..15, 0), (15..16, 0)]);
    }

    /// Over loopback (no namespace needed): one GSO message arrives as equal datagrams, and
    /// with UDP_GRO the receiver gets them back as one message with the segment size.
    #[test]
    fn gso_send_and_gro_receive_on_loopback() {
        use std::os::fd::AsRawFd;
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let to = rx.local_addr().unwrap_or_else(|e| panic!("{e}"));
        if !udp_gso_supported(&tx) {
            eprintln!("skip: no UDP GSO here");
            return;
        }
        let gro = enable_udp_gro(&rx).is_ok();
        let data: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        let mut b = SendBatch::with_capacity(2);
        b.items.push(Out {
            range: 0..2500,
            seg: 1000,
            to: Some(to),
            via: 0,
        });
        b.items.push(Out {
            range: 0..7,
            seg: 0,
            to: Some(to),
            via: 0,
        });
        assert_eq!(b.send(tx.as_raw_fd(), &data, 0, 2).ok(), Some(2));
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut r = RecvBatch::new(8, 65_536);
        let mut got: Vec<Vec<u8>> = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < 4 && std::time::Instant::now() < deadline {
            match r.recv(rx.as_raw_fd()) {
                Ok(n) => {
                    for i in 0..n {
                        let m = r.get(i);
                        assert_eq!(m.from, tx.local_addr().ok());
                        assert!(!m.truncated);
                        got.extend(datagrams(m.range, m.seg).map(|d| r.buf[d].to_vec()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(e) => panic!("{e} (gro {gro})"),
            }
        }
        let want: Vec<Vec<u8>> = vec![
            data[..1000].to_vec(),
            data[1000..2000].to_vec(),
            data[2000..].to_vec(),
            data[..7].to_vec(),
        ];
        assert_eq!(got, want);
    }
}
