//! The broker on sockets: TCP and UDP listeners on the same port, one `ServerSession` per
//! client, replies written the way gogoc can read them (docs/tsp-wire.md §1.4).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

use super::Broker;
use super::config::BrokerConfig;
use super::datapath::{BrokerDatapath, Endpoint};
use tsp_proto::client::Transport;
use tsp_proto::rudp::{self, HEADER_LEN, Header};
use tsp_proto::server::{Progress, ServerConfig, ServerSession};
use tsp_proto::types::MAX_MESSAGE;
use tsp_proto::types::TunnelMode;
use tsp_proto::xml::Offer;

/// Pause between two replies produced by one client message (DIGEST-MD5's rspauth and
/// `200 Success`): gogoc reads each with one `recv()` and would block on a coalesced pair.
const REPLY_GAP: Duration = Duration::from_millis(50);
/// A client must finish negotiating within this time.
const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(60);
/// A UDP peer's control state is forgotten after this long without a control datagram.
const UDP_IDLE: Duration = Duration::from_secs(120);
const MAX_UDP_PEERS: usize = 65_536;
/// What a broker answers to a ranking probe (§7): the client checks for `200`.
const ECHO_REPLY: &[u8] = b"200 Success\r\n";

/// The shared broker state; the lock is held only for synchronous protocol steps.
#[derive(Debug, Clone)]
pub struct Shared {
    pub broker: Arc<Mutex<Broker>>,
    pub protocol: Arc<ServerConfig>,
    /// Carries the tunnels' packets, when the configuration asks for it.
    pub datapath: Option<Arc<BrokerDatapath>>,
}

impl Shared {
    pub fn new(broker: Broker, protocol: ServerConfig) -> Self {
        Self {
            broker: Arc::new(Mutex::new(broker)),
            protocol: Arc::new(protocol),
            datapath: None,
        }
    }

    /// A session was established: its packets may flow.
    fn established(&self, endpoint: Endpoint, offer: &Offer) {
        if let Some(dp) = &self.datapath {
            dp.add(endpoint, offer);
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Broker> {
        // A panic while holding the lock cannot leave the pools half-updated in a way that
        // matters more than stopping the broker would; keep serving.
        self.broker.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Listening sockets and their tasks; dropping it stops the broker.
#[derive(Debug)]
pub struct Running {
    pub shared: Shared,
    pub tcp: Vec<SocketAddr>,
    pub udp: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Running {
    /// Waits until a listener task ends (it only does on a fatal socket error).
    pub async fn wait(mut self) {
        if let Some(t) = self.tasks.pop() {
            let _ = t.await;
        }
    }
}

/// Binds TCP and UDP on the same port (port 0 picks one free for both).
async fn bind_pair(
    addr: SocketAddr,
    tcp: bool,
    udp: bool,
) -> std::io::Result<(Option<TcpListener>, Option<UdpSocket>)> {
    let mut last_err = None;
    for _ in 0..32 {
        let u = if udp { Some(UdpSocket::bind(addr).await?) } else { None };
        let port = match &u {
            Some(s) => s.local_addr()?.port(),
            None => addr.port(),
        };
        if !tcp {
            return Ok((None, u));
        }
        match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
            Ok(t) => return Ok((Some(t), u)),
            Err(e) if addr.port() == 0 => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| std::io::ErrorKind::AddrInUse.into()))
}

/// Binds every configured listener, starts the datapath if configured, and starts serving.
pub async fn start(mut shared: Shared, cfg: &BrokerConfig) -> std::io::Result<Running> {
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for addr in &cfg.listen {
        let (t, u) = bind_pair(*addr, cfg.tcp, cfg.udp).await?;
        if let Some(u) = &u {
            // Every client's tunnel traffic arrives on this one socket.
            tsp_tunnel::grow_receive_buffer(std::os::fd::AsFd::as_fd(u));
        }
        tcp.extend(t);
        udp.extend(u.map(Arc::new));
    }
    if cfg.datapath {
        shared.datapath = Some(BrokerDatapath::start(cfg, udp.clone()).await?);
    }
    let mut running = Running {
        shared: shared.clone(),
        tcp: Vec::new(),
        udp: Vec::new(),
        tasks: Vec::new(),
    };
    if shared.datapath.is_some() {
        running.tasks.push(tokio::spawn(sweep(shared.clone())));
    }
    for t in tcp {
        running.tcp.push(t.local_addr()?);
        running.tasks.push(tokio::spawn(serve_tcp(t, shared.clone())));
    }
    for (i, u) in udp.into_iter().enumerate() {
        running.udp.push(u.local_addr()?);
        running.tasks.push(tokio::spawn(serve_udp(u, i, shared.clone())));
    }
    Ok(running)
}

/// Ends the sessions of tunnels that went silent, so they no longer count against
/// `max_tunnels` (their addresses stay assigned to their owners).
async fn sweep(shared: Shared) {
    let Some(dp) = shared.datapath.clone() else { return };
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for inner in dp.sweep() {
            shared.lock().end_tunnel(inner);
        }
    }
}

/// Where the packets of a tunnel negotiated over TCP go: protocol 41 or 4 to the client.
fn raw_endpoint(offer: &Offer) -> Endpoint {
    match offer.mode {
        TunnelMode::V4V6 => Endpoint::V6(offer.client_v6),
        _ => Endpoint::V4(offer.client_v4),
    }
}

async fn serve_tcp(listener: TcpListener, shared: Shared) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(handle_tcp(stream, peer, shared.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "TCP accept failed");
                sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle_tcp(mut stream: TcpStream, peer: SocketAddr, shared: Shared) {
    let Ok(local) = stream.local_addr() else { return };
    let _ = stream.set_nodelay(true);
    let mut session = ServerSession::new(shared.protocol.clone(), peer, local, Transport::Tcp);
    let mut buf = vec![0u8; MAX_MESSAGE];
    let started = Instant::now();
    let mut established = None;
    loop {
        let read = if session.is_established() {
            // The connection stays open, idle, for the tunnel's lifetime.
            stream.read(&mut buf).await
        } else {
            match timeout(
                NEGOTIATION_TIMEOUT.saturating_sub(started.elapsed()),
                stream.read(&mut buf),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => {
                    tracing::info!(%peer, "TCP client did not finish negotiating in time");
                    break;
                }
            }
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let (result, hold) = {
            let mut broker = shared.lock();
            let r = session.on_bytes(&buf[..n], &mut *broker, &mut rand::rngs::OsRng);
            let hold = session.take_login().map(|l| broker.login_hold(&l, peer.ip()));
            (r, hold.unwrap_or_default())
        };
        if !hold.is_zero() {
            // Failed logins are throttled (and the answers after them held alike).
            sleep(hold).await;
        }
        if flush_tcp(&mut stream, &mut session).await.is_err() {
            break;
        }
        match result {
            Ok(Progress::Established(offer)) => {
                if !shared.lock().mark_established(session.info(), &offer) {
                    tracing::info!(%peer, "accept for a withdrawn offer; closing");
                    break;
                }
                shared.established(raw_endpoint(&offer), &offer);
                established = Some(raw_endpoint(&offer));
                tracing::info!(%peer, mode = %offer.mode, "tunnel established (TCP)");
            }
            Ok(Progress::Continue | Progress::Need(_)) => {}
            Err(e) => {
                tracing::info!(%peer, error = %e, "TCP session ended");
                break;
            }
        }
    }
    shared.lock().end_session(peer);
    // gogoc keeps the TCP connection for the tunnel's lifetime: its end is the tunnel's end.
    if let (Some(dp), Some(ep)) = (&shared.datapath, established) {
        dp.remove(&ep);
    }
}

async fn flush_tcp(stream: &mut TcpStream, session: &mut ServerSession) -> std::io::Result<()> {
    let mut first = true;
    while let Some(reply) = session.next_reply() {
        if !first {
            sleep(REPLY_GAP).await;
        }
        first = false;
        stream.write_all(&reply).await?;
    }
    Ok(())
}

struct UdpPeer {
    session: ServerSession,
    /// The last answered sequence number and the datagram we answered with: a retransmission
    /// gets the same answer (tsps answered it as a new exchange and broke gogoc).
    last: Option<(u32, Vec<u8>)>,
    touched: Instant,
    /// The last reply is held back until then (login throttling): retransmissions meanwhile
    /// get no answer.
    held_until: Option<Instant>,
}

/// The local address a reply to `peer` leaves from (the socket may be bound to 0.0.0.0).
fn local_towards(bound: SocketAddr, peer: SocketAddr) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    let any: SocketAddr = match peer.ip() {
        IpAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        IpAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    };
    std::net::UdpSocket::bind(any)
        .and_then(|s| s.connect(peer).and_then(|_| s.local_addr()))
        .map(|a| SocketAddr::new(a.ip(), bound.port()))
        .unwrap_or(bound)
}

async fn serve_udp(socket: Arc<UdpSocket>, listener: usize, shared: Shared) {
    use tsp_tunnel::batch::Sock;
    use tsp_tunnel::{mmsg, tundev};
    let Ok(bound) = socket.local_addr() else { return };
    let mut peers: HashMap<SocketAddr, UdpPeer> = HashMap::new();
    // Data datagrams dominate: receive them in batches, coalesced by the kernel (UDP GRO)
    // where it can; control datagrams are picked out of the same batches.
    let udp_gro = shared.datapath.is_some()
        && !tundev::offload_disabled_by_env()
        && match mmsg::enable_udp_gro(&*socket) {
            Ok(()) => true,
            Err(e) => {
                if tsp_tunnel::first_fallback(&tsp_tunnel::fallback::UDP_GRO) {
                    tracing::warn!(error = %e, "UDP GRO refused: one datagram per receive slot");
                }
                false
            }
        };
    let mut inbox = match &shared.datapath {
        Some(dp) => dp.inbox(udp_gro),
        None => tsp_tunnel::batch::Inbox::new(false, false),
    };
    let mut last_sweep = Instant::now();
    loop {
        let n = match inbox.recv(Sock::Udp(&socket)).await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "UDP receive error");
                continue;
            }
        };
        for i in 0..n {
            let m = inbox.rx.get(i);
            let Some(peer) = m.from else { continue };
            if m.truncated {
                continue;
            }
            for d in mmsg::datagrams(m.range, m.seg) {
                let dgram = &inbox.rx.buf[d.clone()];
                if !rudp::is_control(dgram) {
                    if shared
                        .datapath
                        .as_ref()
                        .is_some_and(|dp| dp.admit_udp(listener, peer, dgram))
                    {
                        inbox.push(d);
                    }
                    continue;
                }
                let Some((_, payload)) = Header::decode(dgram) else {
                    continue;
                };
                let Some((reply, hold)) = answer_udp(&mut peers, &shared, bound, listener, peer, dgram, payload) else {
                    continue;
                };
                if !hold.is_zero() {
                    let socket = socket.clone();
                    tokio::spawn(async move {
                        sleep(hold).await;
                        let _ = socket.send_to(&reply, peer).await;
                    });
                } else if let Err(e) = socket.send_to(&reply, peer).await {
                    tracing::debug!(%peer, error = %e, "UDP send failed");
                }
                if last_sweep.elapsed() > Duration::from_secs(10) || peers.len() > MAX_UDP_PEERS {
                    last_sweep = Instant::now();
                    // The control state of a session matters only while it negotiates (and for a
                    // retransmitted accept just after); its tunnel lives in the datapath's table.
                    peers.retain(|_, p| p.touched.elapsed() < UDP_IDLE);
                    if peers.len() > MAX_UDP_PEERS {
                        // A flood of fresh peers: keep the sessions that got somewhere.
                        peers.retain(|_, p| p.session.is_established());
                    }
                }
            }
        }
        if let Some(dp) = &shared.datapath {
            dp.deliver_udp(&mut inbox).await;
        }
    }
}

/// The datagram answering `dgram` (header echoed verbatim) and how long to hold it back, or
/// `None` to stay silent.
fn answer_udp(
    peers: &mut HashMap<SocketAddr, UdpPeer>,
    shared: &Shared,
    bound: SocketAddr,
    listener: usize,
    peer: SocketAddr,
    dgram: &[u8],
    payload: &[u8],
) -> Option<(Vec<u8>, Duration)> {
    let header = &dgram[..HEADER_LEN];
    let seq = Header::decode(dgram)?.0.seq;
    if payload.starts_with(b"ECHO REQUEST") {
        return Some(([header, ECHO_REPLY].concat(), Duration::ZERO));
    }
    if let Some(p) = peers.get_mut(&peer)
        && let Some((last_seq, last_reply)) = &p.last
        && *last_seq == seq
    {
        p.touched = Instant::now();
        if p.held_until.is_some_and(|t| t > Instant::now()) {
            return None;
        }
        return Some((last_reply.clone(), Duration::ZERO));
    }
    if peers
        .get(&peer)
        .is_some_and(|p| p.held_until.is_some_and(|t| t > Instant::now()))
    {
        // A new message before the held answer went out: the client cannot have read it.
        return None;
    }
    if payload.starts_with(b"VERSION=") {
        let local = local_towards(bound, peer);
        let session = ServerSession::new(shared.protocol.clone(), peer, local, Transport::Udp);
        peers.insert(
            peer,
            UdpPeer {
                session,
                last: None,
                touched: Instant::now(),
                held_until: None,
            },
        );
    }
    let p = peers.get_mut(&peer)?;
    p.touched = Instant::now();
    let (result, hold) = {
        let mut broker = shared.lock();
        let r = p.session.on_bytes(payload, &mut *broker, &mut rand::rngs::OsRng);
        let hold = p.session.take_login().map(|l| broker.login_hold(&l, peer.ip()));
        (r, hold.unwrap_or_default())
    };
    let body = p.session.next_reply().unwrap_or_default();
    let reply = [header, &body].concat();
    p.last = Some((seq, reply.clone()));
    p.held_until = (!hold.is_zero()).then(|| Instant::now() + hold);
    match result {
        Ok(Progress::Established(offer)) if !shared.lock().mark_established(p.session.info(), &offer) => {
            tracing::info!(%peer, "accept for a withdrawn offer (not accepted in time); ignored");
        }
        Ok(Progress::Established(offer)) => {
            let ep = match offer.mode {
                TunnelMode::V6UdpV4 => Endpoint::Udp { listener, peer },
                _ => raw_endpoint(&offer),
            };
            shared.established(ep, &offer);
            tracing::info!(%peer, mode = %offer.mode, "tunnel established (UDP)");
        }
        Ok(Progress::Continue | Progress::Need(_)) => {}
        Err(e) => tracing::info!(%peer, error = %e, "UDP session ended"),
    }
    Some((reply, hold))
}
