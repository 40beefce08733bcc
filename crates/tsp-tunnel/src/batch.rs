//! The batched datapath steps both ends share: drain the TUN into MTU-sized packets and send
//! them with as few system calls as the socket allows ([`Outbox`]); receive many datagrams per
//! call and write them to the TUN coalesced ([`Inbox`]).
//!
//! See docs/tsp-wire.md §6; docs/ARCHITECTURE.md (the data path).

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::mmsg::{self, Out, RecvBatch, SendBatch};
use super::offload::{self, Gro, Segments, VNET_HDR_LEN, VnetHdr};
use super::raw::RawSocket;
use super::tundev::TunDevice;
use super::valid_inner;

/// Bytes one TUN read may return: the virtio header and a 64 KB super-segment.
const READ_BUF: usize = VNET_HDR_LEN + 65_536;
/// At most this many TUN reads are gathered before one send (a burst of small packets, such
/// as ACKs, then costs one `sendmmsg`).
const MAX_READS: usize = 16;
/// Stop gathering once this many bytes of packets wait (about four super-segments).
const SEGS_SOFT_LIMIT: usize = 256 * 1024;
/// Bytes per UDP GSO message: the outer IP datagram must stay below 64 KB.
const GSO_MAX_BYTES: usize = 65_000;
/// Datagrams per UDP GSO message (the kernel's UDP_MAX_SEGMENTS was 64 before Linux 6.x).
const GSO_MAX_SEGS: usize = 64;

/// A socket the batches go through.
#[derive(Debug, Clone, Copy)]
pub enum Sock<'a> {
    Udp(&'a UdpSocket),
    Raw(&'a RawSocket),
}

impl Sock<'_> {
    fn raw_fd(&self) -> RawFd {
        match self {
            Self::Udp(s) => s.as_raw_fd(),
            Self::Raw(s) => s.as_raw_fd(),
        }
    }

    async fn io<R>(&self, interest: Interest, mut f: impl FnMut(RawFd) -> io::Result<R>) -> io::Result<R> {
        match self {
            Self::Udp(s) => s.async_io(interest, || f(s.as_raw_fd())).await,
            Self::Raw(s) => s.async_io(interest, f).await,
        }
    }
}

/// What a flush did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Flushed {
    pub sent: u64,
    pub dropped: u64,
}

fn datagrams_in(o: &Out) -> u64 {
    if o.seg == 0 {
        1
    } else {
        o.range.len().div_ceil(usize::from(o.seg)) as u64
    }
}

/// TUN → socket: the read buffer, the packets split from it and the send batch.
#[derive(Debug)]
pub struct Outbox {
    read: Vec<u8>,
    pub segs: Segments,
    pub batch: SendBatch,
    /// UDP GSO usable on this socket (cleared, once, when the kernel refuses it).
    pub gso: bool,
    /// Packets dropped while reading (malformed, unsupported GSO, not an IP packet of the
    /// tunnel's family).
    pub dropped: u64,
}

impl Outbox {
    pub fn new(gso: bool) -> Self {
        Self {
            read: vec![0; READ_BUF],
            segs: Segments::with_capacity(SEGS_SOFT_LIMIT + READ_BUF + 64 * 128, 4 * 64),
            batch: SendBatch::with_capacity(4 * 64),
            gso,
            dropped: 0,
        }
    }

    /// Waits for the TUN to have something; `Ok(n)` is the first read's length (for
    /// [`Outbox::gather`]).
    pub async fn wait(&mut self, tun: &TunDevice) -> io::Result<usize> {
        match tun.recv_vnet(&mut self.read, true).await? {
            Some(n) => Ok(n),
            None => Ok(0),
        }
    }

    /// Reads at once, ignoring tokio's readiness cache (see [`TunDevice::recv_vnet_now`]):
    /// `Some(n)` is the first read's length, for [`Outbox::gather`].
    pub fn read_now(&mut self, tun: &TunDevice) -> io::Result<Option<usize>> {
        tun.recv_vnet_now(&mut self.read)
    }

    /// Reads if tokio last saw the TUN readable: `None` when there was nothing (another
    /// reader, a [`Outbox::read_now`] elsewhere, took it first), the readiness then cleared.
    pub async fn try_read(&mut self, tun: &TunDevice) -> io::Result<Option<usize>> {
        tun.recv_vnet(&mut self.read, false).await
    }

    /// Splits the read of `n` bytes (already in the buffer) and keeps reading what the TUN
    /// has ready, up to a burst. For each read, `route(first packet, first index)` is called
    /// after its packets were appended, so that the caller can queue them to a destination.
    pub async fn gather(
        &mut self,
        tun: &TunDevice,
        mut n: usize,
        v6: bool,
        mut route: impl FnMut(&mut Self, usize),
    ) -> io::Result<()> {
        self.segs.clear();
        self.batch.items.clear();
        for reads in 1.. {
            let first = self.segs.len();
            self.take(n, v6);
            if self.segs.len() > first {
                route(self, first);
            }
            if reads >= MAX_READS || self.segs.buf.len() >= SEGS_SOFT_LIMIT {
                break;
            }
            match tun.recv_vnet(&mut self.read, false).await? {
                Some(m) => n = m,
                None => break,
            }
        }
        Ok(())
    }

    /// One TUN read into packets.
    fn take(&mut self, n: usize, v6: bool) {
        let Some(hdr) = VnetHdr::decode(&self.read[..n.min(self.read.len())]) else {
            self.dropped += 1;
            return;
        };
        let pkt = &mut self.read[VNET_HDR_LEN..n];
        let first = self.segs.len();
        match offload::split(&hdr, pkt, &mut self.segs) {
            Ok(()) => {
                // Checked like any packet the kernel routes into the tunnel (family, lengths);
                // the pieces of one super-segment share the first's header, so its check
                // stands for all of them.
                if self.segs.len() > first && !valid_inner(self.segs.get(first), v6) {
                    self.dropped += (self.segs.len() - first) as u64;
                    self.segs.buf.truncate(self.segs.ranges[first].start);
                    self.segs.ranges.truncate(first);
                }
            }
            Err(e) => {
                tracing::debug!(error = ?e, "TUN read not split; dropped");
                self.dropped += 1;
            }
        }
    }

    /// Queues packets `first..` of [`Outbox::segs`] to `to` (or the connected peer) through
    /// the caller's socket number `via`; `udp`: that socket is a UDP one (GSO applies).
    pub fn queue(&mut self, first: usize, to: Option<SocketAddr>, via: usize, udp: bool) {
        let end = self.segs.len();
        if self.gso && udp {
            let Self { segs, batch, .. } = self;
            offload::gso_groups(segs, first, GSO_MAX_BYTES, GSO_MAX_SEGS, |a, b, size| {
                let range = segs.ranges[a].start..segs.ranges[b - 1].end;
                let seg = if b - a > 1 { size as u16 } else { 0 };
                batch.items.push(Out { range, seg, to, via });
            });
        } else {
            for r in &self.segs.ranges[first..end] {
                self.batch.items.push(Out {
                    range: r.clone(),
                    seg: 0,
                    to,
                    via,
                });
            }
        }
    }

    /// Sends everything queued, each message through `socks(via)` (messages for a socket
    /// that is gone are dropped). Transient errors (ICMP errors reported on the socket, full
    /// buffers) drop the message concerned; others end the datapath.
    pub async fn flush<'s>(&mut self, socks: impl Fn(usize) -> Option<Sock<'s>>) -> io::Result<Flushed> {
        let mut done = Flushed::default();
        let mut i = 0;
        while i < self.batch.items.len() {
            let via = self.batch.items[i].via;
            // Consecutive messages through one socket go in one sendmmsg.
            let end = i + self.batch.items[i..].iter().take_while(|o| o.via == via).count();
            let Some(sock) = socks(via) else {
                done.dropped += self.batch.items[i..end].iter().map(datagrams_in).sum::<u64>();
                i = end;
                continue;
            };
            let Self { segs, batch, .. } = self;
            match sock
                .io(Interest::WRITABLE, |fd| batch.send(fd, &segs.buf, i, end))
                .await
            {
                Ok(n) => {
                    done.sent += self.batch.items[i..i + n].iter().map(datagrams_in).sum::<u64>();
                    i += n;
                }
                Err(e) if self.batch.items[i].seg != 0 && mmsg::gso_refused(&e) => {
                    if self.gso && super::first_fallback(&super::fallback::UDP_GSO) {
                        tracing::warn!(error = %e, "UDP GSO refused on this path: one datagram per message from now on");
                    }
                    self.gso = false;
                    self.batch.expand(i);
                }
                Err(e) if super::transient(&e) => {
                    done.dropped += datagrams_in(&self.batch.items[i]);
                    i += 1;
                }
                Err(e) => return Err(e),
            }
        }
        self.batch.items.clear();
        Ok(done)
    }
}

/// Socket → TUN: the receive batch and the GRO state.
#[derive(Debug)]
pub struct Inbox {
    pub rx: RecvBatch,
    pub gro: Gro,
}

/// What the caller decides about one received packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it to the TUN.
    Deliver,
    /// Consumed or refused (counted by the caller).
    Skip,
}

impl Inbox {
    /// A batch for UDP with kernel GRO (few large slots) or for single datagrams (many
    /// small slots). `coalesce`: merge TCP segments before writing them to the TUN.
    pub fn new(udp_gro: bool, coalesce: bool) -> Self {
        let rx = if udp_gro {
            RecvBatch::new(8, 65_536)
        } else {
            // Room for a whole TSP control datagram (4096 + header) on the same socket.
            RecvBatch::new(64, 4_224)
        };
        Self {
            rx,
            gro: Gro::new(coalesce),
        }
    }

    /// Waits until the socket has data and receives a batch; returns the message count.
    pub async fn recv(&mut self, sock: Sock<'_>) -> io::Result<usize> {
        let rx = &mut self.rx;
        sock.io(Interest::READABLE, |fd| rx.recv(fd)).await
    }

    /// Receives a batch if one is queued, whatever tokio last saw of the socket's readiness
    /// (for [`crate::busy::BusyPoll`]); `Ok(None)`: nothing queued.
    pub fn recv_now(&mut self, sock: Sock<'_>) -> io::Result<Option<usize>> {
        super::if_queued(self.rx.recv(sock.raw_fd()))
    }

    /// [`Inbox::recv`] after polling the socket for as long as `busy`'s window is open; a
    /// batch received either way opens the window again.
    pub async fn recv_polled(&mut self, sock: Sock<'_>, busy: &mut crate::busy::BusyPoll) -> io::Result<usize> {
        if let Some(n) = busy.spin(None, || self.recv_now(sock)).await? {
            return Ok(n);
        }
        let n = self.recv(sock).await?;
        busy.traffic(std::time::Instant::now());
        Ok(n)
    }

    /// Feeds packet `range` (of [`Inbox::rx`]'s buffer) to GRO.
    pub fn push(&mut self, range: std::ops::Range<usize>) {
        self.gro.push(&mut self.rx.buf, range);
    }

    /// Writes what was pushed to the TUN: returns (packets written, TUN writes that failed
    /// transiently). Clears the GRO state for the next batch.
    pub async fn deliver(&mut self, tun: &TunDevice) -> io::Result<(u64, u64)> {
        self.gro.finish(&mut self.rx.buf);
        let mut written = 0;
        let mut failed = 0;
        for w in &self.gro.writes {
            let hdr = w.hdr.encode();
            let parts = &self.gro.parts[w.parts.clone()];
            let mut iov = [IoSlice::new(&[]); offload::MAX_COALESCED_SEGS + 1];
            iov[0] = IoSlice::new(&hdr);
            for (slot, r) in iov[1..].iter_mut().zip(parts) {
                *slot = IoSlice::new(&self.rx.buf[r.clone()]);
            }
            let count = parts.len().min(offload::MAX_COALESCED_SEGS);
            match tun.send_vnet(&iov[..=count]).await {
                Ok(_) => written += count as u64,
                Err(e) if super::transient(&e) || e.raw_os_error() == Some(libc::EINVAL) => {
                    // EINVAL: the kernel refused a header or packet; the others go on.
                    tracing::debug!(error = %e, "TUN write refused");
                    failed += count as u64;
                }
                Err(e) => {
                    self.gro.clear();
                    return Err(e);
                }
            }
        }
        self.gro.clear();
        Ok((written, failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn must<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => panic!("{e:?}"),
        }
    }

    async fn pair() -> (UdpSocket, UdpSocket, SocketAddr) {
        let rx = must(UdpSocket::bind("127.0.0.1:0").await);
        let tx = must(UdpSocket::bind("127.0.0.1:0").await);
        let to = must(rx.local_addr());
        (tx, rx, to)
    }

    async fn sizes(rx: &UdpSocket, n: usize) -> Vec<usize> {
        let mut buf = [0u8; 2048];
        let mut got = Vec::new();
        for _ in 0..n {
            let r = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv(&mut buf)).await;
            got.push(must(must(r)));
        }
        got
    }

    fn fill(out: &mut Outbox) {
        for len in [100, 100, 100, 50] {
            out.segs.push(&vec![0x60; len]);
        }
    }

    /// Equal-sized packets leave as one GSO message and arrive as separate datagrams.
    #[tokio::test]
    async fn flush_with_gso() {
        let (tx, rx, to) = pair().await;
        let mut out = Outbox::new(mmsg::udp_gso_supported(&tx));
        fill(&mut out);
        out.queue(0, Some(to), 0, true);
        let expect_msgs = if out.gso { 1 } else { 4 };
        assert_eq!(out.batch.items.len(), expect_msgs);
        let f = must(out.flush(|_| Some(Sock::Udp(&tx))).await);
        assert_eq!((f.sent, f.dropped), (4, 0));
        assert_eq!(sizes(&rx, 4).await, [100, 100, 100, 50]);
    }

    /// A socket without UDP checksums cannot segment (the kernel answers EINVAL): the batch
    /// is resent one datagram per message, and GSO stays off for this outbox.
    #[tokio::test]
    async fn gso_refused_at_run_time_falls_back() {
        let (tx, rx, to) = pair().await;
        if !mmsg::udp_gso_supported(&tx) {
            eprintln!("skip: no UDP GSO here");
            return;
        }
        // SO_NO_CHECK, which nix does not name, declared through nix's option macro.
        mod opt {
            use nix::{setsockopt_impl, sockopt_impl};
            sockopt_impl!(NoCheck, SetOnly, libc::SOL_SOCKET, libc::SO_NO_CHECK, bool);
        }
        nix::sys::socket::setsockopt(&tx, opt::NoCheck, &true).expect("SO_NO_CHECK");
        let mut out = Outbox::new(true);
        fill(&mut out);
        out.queue(0, Some(to), 0, true);
        assert_eq!(out.batch.items.len(), 1, "one GSO message queued");
        let f = must(out.flush(|_| Some(Sock::Udp(&tx))).await);
        assert_eq!((f.sent, f.dropped), (4, 0));
        assert!(!out.gso, "GSO left on after the kernel refused it");
        assert_eq!(sizes(&rx, 4).await, [100, 100, 100, 50]);
        fill(&mut out);
        out.queue(4, Some(to), 0, true);
        assert_eq!(out.batch.items.len(), 4, "no GSO after the refusal");
    }

    /// A TUN read is split, and dropped whole if its family is not the tunnel's.
    #[test]
    fn take_splits_and_checks_the_family() {
        let (hdr, pkt) = offload::tests::super_segment(true, 9, 0x10, &[7; 3000], 1208);
        let mut out = Outbox::new(true);
        out.read[..VNET_HDR_LEN].copy_from_slice(&hdr.encode());
        out.read[VNET_HDR_LEN..VNET_HDR_LEN + pkt.len()].copy_from_slice(&pkt);
        let n = VNET_HDR_LEN + pkt.len();
        out.take(n, false);
        assert!(out.segs.is_empty(), "IPv6 into an IPv4 tunnel");
        assert_eq!(out.dropped, 3);
        // (take may have finished checksums in place: write the read again.)
        out.read[VNET_HDR_LEN..n].copy_from_slice(&pkt);
        out.take(n, true);
        assert_eq!(out.segs.len(), 3);
        assert!((0..3).all(|i| valid_inner(out.segs.get(i), true)));
        out.take(5, true);
        assert_eq!(out.dropped, 4, "shorter than the virtio header");
    }

    /// Messages for a socket that is gone are counted as dropped, the rest still go.
    #[tokio::test]
    async fn flush_routes_by_socket() {
        let (tx, rx, to) = pair().await;
        let mut out = Outbox::new(false);
        fill(&mut out);
        out.queue(0, Some(to), 7, true);
        out.segs.push(&[0x60; 30]);
        out.queue(4, Some(to), 0, true);
        let f = must(out.flush(|via| (via == 0).then_some(Sock::Udp(&tx))).await);
        assert_eq!((f.sent, f.dropped), (1, 4));
        assert_eq!(sizes(&rx, 1).await, [30]);
    }
}
