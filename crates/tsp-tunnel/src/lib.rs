//! `tsp-tunnel`: the data plane once a tunnel is negotiated — a TUN device, an encapsulation (UDP,
//! raw protocol 41, raw protocol 4; or the kernel's sit/ip6tnl where it has them) and the loop
//! that moves packets between them, with TUN offload (virtio header, GSO split, userspace GRO)
//! and batched socket I/O; the keepalive (docs/tsp-wire.md §5); host configuration over
//! rtnetlink (addresses, routes, MTU, an undo journal, the address monitor); router
//! advertisements for router mode. Nearly all of the project's `unsafe` (TUN ioctls, mmsg, and
//! handing descriptors to tokio) lives here, each block with its reason.
//!
//! Uses `tsp-proto` for the RUDP header and tunnel modes only; must not depend on the client,
//! the broker, the configuration files or D-Bus: both ends of the tunnel use it.
//!
//! The keepalive is injected into the tunnel by the datapath itself rather than through a raw
//! ICMP socket and the routing table (gogoc's way): it then works before any address or route
//! is configured (NetworkManager configures them after we report the tunnel) and its replies
//! never reach the host's stack.

pub mod batch;
pub mod busy;
pub mod checksum;
pub mod host;
pub mod icmp;
pub mod keepalive;
pub mod kernel;
pub mod mmsg;
pub mod netlink;
pub mod offload;
pub mod ra;
pub mod raw;
#[cfg(test)]
mod testutil;
pub mod tundev;

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use busy::BusyPoll;
use keepalive::{Action, Keepalive};
use raw::RawSocket;
use tsp_proto::rudp;
use tsp_proto::types::TunnelMode;
use tundev::TunDevice;

/// The MTU gogoc's templates forced and brokers assume.
pub const TUNNEL_MTU: u16 = 1280;

/// How the inner packets travel to the broker.
#[derive(Debug, Clone)]
pub enum Encap {
    /// v6udpv4: each IPv6 packet is one UDP payload on the (connected) TSP socket.
    Udp(Arc<UdpSocket>),
    /// v6v4 / v4v6 in userspace: a raw socket connected to the broker.
    Raw(Arc<RawSocket>),
}

impl Encap {
    /// Sends one packet (the keepalive's echo request).
    async fn send(&self, pkt: &[u8]) -> io::Result<usize> {
        match self {
            Self::Udp(s) => s.send(pkt).await,
            Self::Raw(s) => s.send(pkt).await,
        }
    }

    fn sock(&self) -> batch::Sock<'_> {
        match self {
            Self::Udp(s) => batch::Sock::Udp(s),
            Self::Raw(s) => batch::Sock::Raw(s),
        }
    }
}

/// The family of the packets inside the tunnel.
pub fn inner_is_v6(mode: TunnelMode) -> bool {
    mode != TunnelMode::V4V6
}

/// A well-formed IP packet of the expected version whose header fits and whose stated
/// length matches what arrived — anything else from the outside is dropped.
pub fn valid_inner(pkt: &[u8], v6: bool) -> bool {
    if v6 {
        pkt.len() >= 40 && pkt[0] >> 4 == 6 && usize::from(u16::from_be_bytes([pkt[4], pkt[5]])) + 40 == pkt.len()
    } else {
        pkt.len() >= 20
            && pkt[0] >> 4 == 4
            && usize::from(pkt[0] & 0x0f) * 4 >= 20
            && usize::from(u16::from_be_bytes([pkt[2], pkt[3]])) == pkt.len()
    }
}

/// Why a datapath stopped.
#[derive(Debug)]
pub enum Exit {
    /// Asked to stop.
    Stopped,
    /// The keepalive went unanswered: the path to the broker is dead.
    KeepaliveDead { misses: u32 },
    /// The TUN device or the socket failed for good.
    Failed(io::Error),
}

/// Traffic counters, readable while the datapath runs.
#[derive(Debug, Default)]
pub struct Counters {
    pub to_broker: std::sync::atomic::AtomicU64,
    pub from_broker: std::sync::atomic::AtomicU64,
    pub dropped: std::sync::atomic::AtomicU64,
}

/// A running client datapath.
#[derive(Debug)]
pub struct Datapath {
    stop: watch::Sender<bool>,
    /// `None` once [`finished`](Self::finished) has seen the task end.
    task: Option<JoinHandle<Exit>>,
    pub counters: Arc<Counters>,
    pub ifname: String,
}

impl Datapath {
    /// Starts moving packets between `tun` and `encap`; `keepalive` pings the broker;
    /// `busy_poll`: how long the loop polls for the next packet before it sleeps (zero: never;
    /// see [`busy`]).
    pub fn start(tun: TunDevice, encap: Encap, v6: bool, keepalive: Option<Keepalive>, busy_poll: Duration) -> Self {
        let (stop, stopped) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let ifname = tun.name().to_owned();
        let busy = BusyPoll::new(busy_poll);
        let task = Some(tokio::spawn(run(
            tun,
            encap,
            v6,
            keepalive,
            busy,
            stopped,
            counters.clone(),
        )));
        Self {
            stop,
            task,
            counters,
            ifname,
        }
    }

    /// A datapath with nothing to do (a kernel link without keepalive): ends when stopped.
    pub fn idle(ifname: &str) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let task = Some(tokio::spawn(async move {
            let _ = stopped.changed().await;
            Exit::Stopped
        }));
        Self {
            stop,
            task,
            counters: Arc::new(Counters::default()),
            ifname: ifname.to_owned(),
        }
    }

    /// Waits until the datapath ends by itself (keepalive death, device failure).
    /// Cancel-safe (usable in `select!`); once it returned, it never resolves again.
    pub async fn finished(&mut self) -> Exit {
        let Some(task) = self.task.as_mut() else {
            return std::future::pending().await;
        };
        let exit = match task.await {
            Ok(exit) => exit,
            Err(e) => Exit::Failed(io::Error::other(format!("datapath task ended abnormally: {e}"))),
        };
        // A JoinHandle must not be polled again after it completed.
        self.task = None;
        exit
    }

    /// Stops the loop and releases the TUN device (it disappears with its descriptor).
    pub async fn stop(self) -> Exit {
        let _ = self.stop.send(true);
        match self.task {
            Some(task) => task.await.unwrap_or(Exit::Stopped),
            None => Exit::Stopped,
        }
    }
}

/// A non-blocking read's result with "nothing queued" (`WouldBlock`) as `Ok(None)`.
pub(crate) fn if_queued<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether a send or receive error is one the path gives and takes back (ICMP errors, full
/// buffers): the datapath goes on.
pub fn transient(e: &io::Error) -> bool {
    // ICMP errors from the path surface on a connected socket as errno values: port or
    // protocol unreachable (ECONNREFUSED, ENOPROTOOPT — a broker whose raw socket overflows
    // answers with "protocol unreachable"), ICMPv6 parameter problem (EPROTO), host or net
    // unreachable; buffers fill under load. None of them means the tunnel is dead: the
    // keepalive decides that.
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNREFUSED
                | libc::ENOPROTOOPT
                | libc::EPROTO
                | libc::ENOBUFS
                | libc::EHOSTUNREACH
                | libc::EHOSTDOWN
                | libc::ENETUNREACH
                | libc::ENETDOWN
                | libc::EMSGSIZE
                | libc::EAGAIN
        )
    )
}

/// A fallback the kernel forced (offload refused) is logged once per process, not at every
/// reconnection: `first_fallback(&FLAG)` is true the first time only.
pub fn first_fallback(flag: &std::sync::atomic::AtomicBool) -> bool {
    !flag.swap(true, std::sync::atomic::Ordering::Relaxed)
}

/// One flag per fallback that is logged once.
pub mod fallback {
    use std::sync::atomic::AtomicBool;
    pub static TUN_OFFLOAD: AtomicBool = AtomicBool::new(false);
    pub static UDP_GSO: AtomicBool = AtomicBool::new(false);
    pub static UDP_GRO: AtomicBool = AtomicBool::new(false);
}

/// Asks for a large receive buffer, so that bursts wait in the kernel instead of being
/// dropped (and, on raw sockets, answered with ICMP errors). Root may exceed rmem_max.
pub fn grow_receive_buffer(fd: std::os::fd::BorrowedFd<'_>) {
    use nix::sys::socket::{setsockopt, sockopt};
    const SIZE: usize = 4 << 20;
    if setsockopt(&fd, sockopt::RcvBufForce, &SIZE).is_err() {
        let _ = setsockopt(&fd, sockopt::RcvBuf, &SIZE);
    }
}

/// UDP GSO and GRO on the tunnel's UDP socket, where the kernel has them (and the
/// environment does not ask for the one-packet datapath). Each refusal is logged once.
fn udp_offloads(encap: &Encap) -> (bool, bool) {
    let Encap::Udp(s) = encap else { return (false, false) };
    if tundev::offload_disabled_by_env() {
        return (false, false);
    }
    let gso = mmsg::udp_gso_supported(&**s);
    if !gso && first_fallback(&fallback::UDP_GSO) {
        tracing::warn!("UDP GSO (UDP_SEGMENT) unavailable: one datagram per message");
    }
    let gro = match mmsg::enable_udp_gro(&**s) {
        Ok(()) => true,
        Err(e) => {
            if first_fallback(&fallback::UDP_GRO) {
                tracing::warn!(error = %e, "UDP GRO refused: one datagram per receive slot");
            }
            false
        }
    };
    (gso, gro)
}

/// What a datapath loop found ready.
enum Ready {
    /// The TUN had a read of this many bytes (in the outbox).
    Up(usize),
    /// The socket's receive: a batch of this many messages, or an error.
    Down(io::Result<usize>),
    Stop,
}

async fn run(
    tun: TunDevice,
    encap: Encap,
    v6: bool,
    keepalive: Option<Keepalive>,
    mut busy: BusyPoll,
    mut stop: watch::Receiver<bool>,
    counters: Arc<Counters>,
) -> Exit {
    let (gso, udp_gro) = udp_offloads(&encap);
    let mut p = Path {
        tun,
        v6,
        // Up: TUN reads (64 KB super-segments with offload) split into packets, sent in batches.
        out: batch::Outbox::new(gso),
        keepalive,
        counters,
    };
    // Down: datagrams received in batches, TCP segments merged when the TUN takes them.
    let mut inbox = batch::Inbox::new(udp_gro, p.tun.offload());
    let sock = encap.sock();
    let mut ka_out = Vec::with_capacity(128);
    let mut up_first = false;
    loop {
        let deadline = p.keepalive.as_ref().map(Keepalive::next_deadline);
        // Inside the busy-poll window: ask both sides directly, without sleeping, each first
        // in turn (a bulk transfer keeps one side always ready; the other, its ACKs, must not
        // wait until it drains).
        let polled = busy
            .spin(deadline, || {
                if stop.has_changed().unwrap_or(true) {
                    return Ok(Some(Ready::Stop));
                }
                up_first = !up_first;
                for up in [up_first, !up_first] {
                    if up {
                        if let Some(n) = p.out.read_now(&p.tun)? {
                            return Ok(Some(Ready::Up(n)));
                        }
                    } else if let Some(r) = inbox.recv_now(sock).transpose() {
                        return Ok(Some(Ready::Down(r)));
                    }
                }
                Ok(None)
            })
            .await;
        let ready = match polled {
            Ok(Some(r)) => r,
            Err(e) => return Exit::Failed(e),
            Ok(None) => tokio::select! {
                r = p.out.wait(&p.tun) => match r {
                    Ok(n) => Ready::Up(n),
                    Err(e) => return Exit::Failed(e),
                },
                r = inbox.recv(sock) => Ready::Down(r),
                _ = async { tokio::time::sleep_until(deadline.map_or_else(tokio::time::Instant::now, tokio::time::Instant::from_std)).await }, if deadline.is_some() => {
                    let Some(k) = p.keepalive.as_mut() else { continue };
                    match k.on_deadline(std::time::Instant::now(), &mut ka_out) {
                        Action::Send => {
                            if let Err(e) = encap.send(&ka_out).await
                                && !transient(&e)
                            {
                                return Exit::Failed(e);
                            }
                        }
                        Action::Dead { misses } => return Exit::KeepaliveDead { misses },
                        Action::Wait => {}
                    }
                    continue;
                },
                _ = stop.changed() => Ready::Stop,
            },
        };
        let r = match ready {
            Ready::Up(n) => p.forward_up(n, sock).await,
            Ready::Down(Ok(n)) => p.forward_down(&encap, &mut inbox, n).await,
            Ready::Down(Err(e)) if transient(&e) => {
                p.counters.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            Ready::Down(Err(e)) => Err(e),
            Ready::Stop => return Exit::Stopped,
        };
        if let Err(e) = r {
            return Exit::Failed(e);
        }
        busy.traffic(std::time::Instant::now());
    }
}

/// The client datapath's state between the TUN and the broker.
struct Path {
    tun: TunDevice,
    v6: bool,
    out: batch::Outbox,
    keepalive: Option<Keepalive>,
    counters: Arc<Counters>,
}

impl Path {
    /// Broker → TUN: a batch of `n` datagrams in `inbox`; then what the host answered while
    /// we wrote (TCP ACKs) goes out in the same wake-up.
    async fn forward_down(&mut self, encap: &Encap, inbox: &mut batch::Inbox, n: usize) -> io::Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = std::time::Instant::now();
        let udp = matches!(encap, Encap::Udp(_));
        let mut dropped = 0;
        for i in 0..n {
            let m = inbox.rx.get(i);
            let inner = match encap {
                _ if m.truncated => None,
                Encap::Udp(_) => Some(m.range.clone()),
                Encap::Raw(r) => r
                    .inner(&inbox.rx.buf[m.range.clone()])
                    .map(|x| m.range.start + x.start..m.range.start + x.end),
            };
            let Some(inner) = inner else {
                dropped += 1;
                continue;
            };
            // Anything from the broker proves the path (docs/tsp-wire.md §5).
            if let Some(k) = self.keepalive.as_mut() {
                k.on_received(now);
            }
            for d in mmsg::datagrams(inner, m.seg) {
                let pkt = &inbox.rx.buf[d.clone()];
                // The broker may still answer a retransmitted control message after the
                // accept; it is not a packet.
                if udp && rudp::is_control(pkt) {
                    continue;
                }
                if self.keepalive.as_mut().is_some_and(|k| k.on_packet(pkt, now)) {
                    continue;
                }
                if !valid_inner(pkt, self.v6) {
                    dropped += 1;
                    continue;
                }
                inbox.push(d);
            }
        }
        self.counters.dropped.fetch_add(dropped, Relaxed);
        let (written, failed) = inbox.deliver(&self.tun).await?;
        self.counters.from_broker.fetch_add(written, Relaxed);
        self.counters.dropped.fetch_add(failed, Relaxed);
        if written > 0
            && let Some(n) = self.out.read_now(&self.tun)?
        {
            self.forward_up(n, encap.sock()).await?;
        }
        Ok(())
    }

    /// TUN → broker: the read of `n` bytes waiting in the outbox, with what else the TUN has
    /// ready.
    async fn forward_up(&mut self, n: usize, sock: batch::Sock<'_>) -> io::Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let udp = matches!(sock, batch::Sock::Udp(_));
        let out = &mut self.out;
        out.gather(&self.tun, n, self.v6, |o, first| o.queue(first, None, 0, udp))
            .await?;
        self.counters
            .dropped
            .fetch_add(std::mem::take(&mut out.dropped), Relaxed);
        let f = out.flush(|_| Some(sock)).await?;
        self.counters.to_broker.fetch_add(f.sent, Relaxed);
        self.counters.dropped.fetch_add(f.dropped, Relaxed);
        if f.sent > 0
            && let Some(k) = self.keepalive.as_mut()
        {
            k.on_sent(std::time::Instant::now());
        }
        Ok(())
    }
}

/// What the client's datapath needs to know about the negotiated tunnel.
#[derive(Debug, Clone)]
pub struct KeepaliveSpec {
    pub interval: Duration,
    /// The broker's keepalive address (inside the tunnel).
    pub target: IpAddr,
    /// Our tunnel address (the echo's source).
    pub source: IpAddr,
    /// Evidence-driven probing (gogoc.conf `keepalive_probe_*`).
    pub probe: keepalive::ProbeSettings,
}

impl KeepaliveSpec {
    pub fn start(&self) -> Keepalive {
        // gogoc used its pid as the echo identifier.
        let mut k = Keepalive::new(
            self.interval,
            self.target,
            self.source,
            std::process::id() as u16,
            std::time::Instant::now(),
        );
        k.probe = self.probe;
        k
    }
}

/// A raw encapsulation toward the broker's tunnel endpoint (`remote`: the offer's server
/// IPv4 address for v6v4, its IPv6 address for v4v6).
pub fn raw_encap(mode: TunnelMode, remote: IpAddr) -> io::Result<Encap> {
    let proto = if mode == TunnelMode::V4V6 {
        raw::IPPROTO_IPV4_IN_IPV6
    } else {
        raw::IPPROTO_IPV6_IN_IPV4
    };
    Ok(Encap::Raw(Arc::new(RawSocket::connect(proto, remote)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A datapath that ended by itself (keepalive death) is then stopped by the supervisor:
    /// its task must not be awaited twice (tokio panics on that).
    #[tokio::test]
    async fn stop_after_finished() {
        let (stop, _rx) = watch::channel(false);
        let task = Some(tokio::spawn(async { Exit::KeepaliveDead { misses: 3 } }));
        let mut dp = Datapath {
            stop,
            task,
            counters: Arc::default(),
            ifname: "t".into(),
        };
        assert!(matches!(dp.finished().await, Exit::KeepaliveDead { misses: 3 }));
        assert!(matches!(dp.stop().await, Exit::Stopped));
    }

    #[test]
    fn inner_validation() {
        let mut v6 = vec![0u8; 48];
        v6[0] = 0x60;
        v6[5] = 8;
        assert!(valid_inner(&v6, true));
        assert!(!valid_inner(&v6, false));
        assert!(!valid_inner(&v6[..47], true), "length field disagrees");
        let mut v4 = vec![0u8; 28];
        v4[0] = 0x45;
        v4[3] = 28;
        assert!(valid_inner(&v4, false));
        v4[0] = 0x44;
        assert!(!valid_inner(&v4, false), "IHL below 5");
        assert!(!valid_inner(b"\xf0\x00\x00\xf0garbage", true));
        assert!(!valid_inner(&[], true));
    }
}
