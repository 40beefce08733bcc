//! The broker on sockets: TCP and UDP listeners on the same port, one `ServerSession` per
//! client, replies written the way gogoc can read them (docs/tsp-wire.md §1.4).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

use super::config::BrokerConfig;
use super::control::{self, SessionView};
use super::datapath::{BrokerDatapath, Endpoint};
use super::fleet::{self, Fleet};
use super::metrics::{self, Auth, Gauges, Metrics, RefusalReason, TunnelEnd};
use super::{Broker, refusal_reason};
use tsp_proto::client::Transport;
use tsp_proto::rudp::{self, HEADER_LEN, Header};
use tsp_proto::server::{Answer, Need, Progress, Refusal, ServerConfig, ServerError, ServerSession, SessionInfo};
use tsp_proto::status::StatusCode;
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
    /// What new sessions start with; a fleet changes it (busy while its database is away, a
    /// master's list of live brokers).
    protocol: Arc<RwLock<Arc<ServerConfig>>>,
    /// Carries the tunnels' packets, when the configuration asks for it.
    pub datapath: Option<Arc<BrokerDatapath>>,
    /// Accounts and assignments in the fleet's database instead of the broker's own.
    pub fleet: Option<Arc<Fleet>>,
    /// What the operator's metrics count.
    pub metrics: Arc<Metrics>,
    started: SystemTime,
    /// The open TCP connections of clients, each woken to close when its user is
    /// disconnected (gogoc ends the tunnel when its TCP connection closes).
    connections: Arc<Mutex<HashMap<SocketAddr, Arc<Notify>>>>,
}

impl Shared {
    pub fn new(broker: Broker, protocol: ServerConfig) -> Self {
        Self {
            broker: Arc::new(Mutex::new(broker)),
            protocol: Arc::new(RwLock::new(Arc::new(protocol))),
            datapath: None,
            fleet: None,
            metrics: Arc::default(),
            started: SystemTime::now(),
            connections: Arc::default(),
        }
    }

    /// A fleet member: lookups go to the database, and new clients are refused until the
    /// database has answered once.
    pub fn with_fleet(mut self, fleet: Arc<Fleet>) -> Self {
        self.fleet = Some(fleet);
        self.set_busy(Some(fleet::DB_DOWN.to_owned()));
        self
    }

    /// The protocol settings a new session starts with.
    pub fn protocol(&self) -> Arc<ServerConfig> {
        self.protocol.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn update_protocol(&self, f: impl FnOnce(&mut ServerConfig)) {
        let mut current = self.protocol.write().unwrap_or_else(|p| p.into_inner());
        let mut next = (**current).clone();
        f(&mut next);
        *current = Arc::new(next);
    }

    /// New clients are answered `530` with this reason (`None`: served again).
    pub fn set_busy(&self, reason: Option<String>) {
        self.update_protocol(|c| c.busy = reason);
    }

    /// A master's live brokers: every client is redirected to them; none, and clients are
    /// told to try later.
    pub fn set_redirect(&self, brokers: &[String]) {
        let entries = fleet::redirect_entries(brokers);
        self.update_protocol(|c| {
            if entries.is_empty() {
                c.busy = Some(fleet::NO_BROKER.to_owned());
                c.redirect = None;
            } else {
                c.busy = None;
                c.redirect = Some(entries);
            }
        });
    }

    /// A session was established: its packets may flow.
    fn established(&self, endpoint: Endpoint, offer: &Offer) {
        if let Some(dp) = &self.datapath {
            dp.add(endpoint, offer);
        }
    }

    /// The client accepted `offer`: records it (false when the offer was withdrawn meanwhile)
    /// and makes this broker the key's home in the fleet.
    fn accept(&self, info: &SessionInfo, offer: &Offer) -> bool {
        let Some(key) = self.lock().mark_established(info, offer) else {
            self.refused(
                info,
                &who(info, None, true),
                RefusalReason::OfferExpired,
                None,
                "accept for an offer withdrawn meanwhile (not accepted within offer_timeout)",
            );
            return false;
        };
        self.metrics.established(offer.mode, Auth::of(info.mechanism));
        if let Some(f) = &self.fleet {
            f.session_up(key);
        }
        true
    }

    /// Sessions ended (their keys), for this reason: the fleet's database hears of it.
    fn ended(&self, keys: Vec<String>, why: TunnelEnd) {
        self.metrics.ended(why, keys.len());
        if let (Some(f), false) = (&self.fleet, keys.is_empty()) {
            f.sessions_down(keys);
        }
    }

    /// Logs a refusal, once, with the user and the reason (never a credential), and counts it.
    fn refused(&self, info: &SessionInfo, user: &str, why: RefusalReason, status: Option<u32>, detail: &str) {
        self.metrics.refused(why);
        let status = status.map_or_else(|| "none".to_owned(), |s| s.to_string());
        let peer = crate::plain_peer(info.peer);
        let reason = why.label();
        // Capacity and the database are the operator's business; the rest is the clients'.
        if matches!(why, RefusalReason::Capacity | RefusalReason::DatabaseUnavailable) {
            tracing::warn!(user, %peer, reason, %status, detail, "client refused");
        } else {
            tracing::info!(user, %peer, reason, %status, detail, "client refused");
        }
    }

    /// After the client's bytes were processed as far as they go: the login's throttling
    /// (how long to hold the replies back) and, if the session ended in a refusal, its log
    /// line and counters.
    fn conclude(&self, neg: &mut Negotiation, result: &Result<Progress, ServerError>) -> Duration {
        let login = neg.session.take_login();
        let hold = match &login {
            Some(l) => {
                self.metrics.login(l.mechanism, l.ok);
                self.lock().login_hold(l, neg.session.info().peer.ip())
            }
            None => Duration::ZERO,
        };
        if !hold.is_zero() {
            self.metrics.throttled();
        }
        if let Err(e) = result {
            let (why, status, mut detail) = neg.classify(e);
            if !hold.is_zero() {
                detail = format!(
                    "{detail}; answer delayed {} ms (failed-login throttle)",
                    hold.as_millis()
                );
            }
            let tried = login.as_ref().and_then(|l| l.user.as_deref()).or(neg.asked.as_deref());
            let user = who(neg.session.info(), tried, neg.created);
            self.refused(neg.session.info(), &user, why, status, &detail);
        }
        hold
    }

    /// The gauges of the metrics, read now.
    pub fn gauges(&self) -> Gauges {
        let mut g = Gauges {
            started: Some(self.started),
            database_up: self.fleet.as_ref().map(|f| f.healthy()),
            ..Gauges::default()
        };
        {
            let broker = self.lock();
            g.max_tunnels = broker.config().max_tunnels as u64;
            for s in broker.sessions() {
                if s.established {
                    g.count_session(s.offer.mode, s.mechanism);
                } else {
                    g.offers_pending += 1;
                }
            }
        }
        if let Some(dp) = &self.datapath {
            g.traffic = dp.traffic();
        }
        g
    }

    /// The metrics in Prometheus' text format.
    pub fn metrics_text(&self) -> String {
        metrics::render(&self.metrics, &self.gauges())
    }

    /// The sessions as `tsp-broker sessions` lists them, established ones first, then by user.
    pub fn session_views(&self) -> Vec<SessionView> {
        let records: Vec<_> = self.lock().sessions().cloned().collect();
        let mut views: Vec<SessionView> = records
            .iter()
            .map(|s| {
                let traffic = self
                    .datapath
                    .as_ref()
                    .and_then(|dp| dp.traffic_of(inner_address(&s.offer)))
                    .unwrap_or_default();
                SessionView::new(s, traffic)
            })
            .collect();
        views.sort_by(|a, b| (!a.established, &a.user, &a.key).cmp(&(!b.established, &b.user, &b.key)));
        views
    }

    /// Ends the tunnels of `who` (a user, or an anonymous session's key): out of the
    /// datapath (its kernel link deleted), its TCP connection closed, the session records and
    /// the fleet's session rows gone. How many tunnels and offers ended.
    pub fn disconnect(&self, who: &str) -> usize {
        let ended = self.lock().end_user(who);
        let mut keys = Vec::new();
        for s in &ended {
            if let Some(dp) = &self.datapath {
                dp.remove_inner(inner_address(&s.offer));
            }
            if s.transport == Transport::Tcp
                && let Some(kick) = self.connections.lock().unwrap_or_else(|p| p.into_inner()).get(&s.peer)
            {
                kick.notify_one();
            }
            if s.established {
                keys.push(s.key.to_string());
            }
            tracing::info!(
                user = s.user.as_deref().unwrap_or("(anonymous)"),
                key = %s.key,
                peer = %crate::plain_peer(s.peer),
                mode = %s.offer.mode,
                established = s.established,
                "disconnected by the operator"
            );
        }
        self.ended(keys, TunnelEnd::Disconnected);
        ended.len()
    }

    pub fn lock(&self) -> MutexGuard<'_, Broker> {
        // A panic while holding the lock cannot leave the pools half-updated in a way that
        // matters more than stopping the broker would; keep serving.
        self.broker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The answer to a session's lookup, when it is at hand: the broker's own accounts and
    /// pools answer at once; a fleet's database does not (`None`: use [`Self::answer`]).
    fn answer_now(&self, need: &Need, info: &SessionInfo) -> Option<Answer> {
        if self.fleet.is_some() {
            return None;
        }
        let mut broker = self.lock();
        Some(Answer::from_backend(need, info, &mut *broker))
    }

    /// The answer to a session's lookup, from wherever accounts and assignments live.
    pub async fn answer(&self, need: &Need, info: &SessionInfo) -> Answer {
        if let Some(now) = self.answer_now(need, info) {
            return now;
        }
        let Some(f) = self.fleet.clone() else {
            return Answer::Offer(Err(tsp_proto::status::StatusCode::ServerError.into()));
        };
        match need {
            Need::Account { user } => Answer::Account(f.account(self, user).await),
            Need::Offer(req) => Answer::Offer(self.fleet_offer(&f, info, req).await),
        }
    }

    /// An offer from the fleet's database: the checks of this broker, the home check (a
    /// tunnel carried by another live broker is redirected there), then the assignment.
    async fn fleet_offer(
        &self,
        f: &Fleet,
        info: &SessionInfo,
        req: &tsp_proto::xml::CreateRequest,
    ) -> Result<Offer, Refusal> {
        let plan = self.lock().plan(info, req)?;
        if let Some(redirect) = f.home_elsewhere(self, &plan.key).await? {
            return Err(redirect);
        }
        let blocks = f.assign(self, &plan).await?;
        Ok(self.lock().finish(info, req, plan, blocks))
    }

    /// Feeds client bytes and answers the lookups the session needs; the result, and how long
    /// to hold the replies back (a failed login's throttling).
    async fn drive(&self, neg: &mut Negotiation, bytes: &[u8]) -> (Result<Progress, ServerError>, Duration) {
        let result = neg.session.feed(bytes, &mut rand::rngs::OsRng);
        let result = self.answer_all(neg, result).await;
        let hold = self.conclude(neg, &result);
        (result, hold)
    }

    /// Answers the session's lookups, one after another, until it needs none.
    async fn answer_all(
        &self,
        neg: &mut Negotiation,
        mut result: Result<Progress, ServerError>,
    ) -> Result<Progress, ServerError> {
        while let Ok(Progress::Need(need)) = &result {
            neg.asking(need);
            let answer = self.answer(need, neg.session.info()).await;
            result = neg.resume(answer);
        }
        result
    }
}

/// The address that names a tunnel in the datapath: the client's IPv6 address, IPv4 for v4v6.
fn inner_address(offer: &Offer) -> IpAddr {
    match offer.mode {
        TunnelMode::V4V6 => IpAddr::V4(offer.client_v4),
        _ => IpAddr::V6(offer.client_v6),
    }
}

/// Who a refusal's log line names: the logged-in user, else the user a login tried, else
/// `(anonymous)` once the client got past the login anonymously, else `(none)`.
fn who(info: &SessionInfo, tried: Option<&str>, logged_in: bool) -> String {
    match info.user.as_deref().or(tried) {
        Some(u) => u.to_owned(),
        None if logged_in => "(anonymous)".to_owned(),
        None => "(none)".to_owned(),
    }
}

/// One client's negotiation: the protocol session, and what the operator is told when it ends
/// in a refusal (the words of a refusal do not survive in the session's error).
#[derive(Debug)]
struct Negotiation {
    session: ServerSession,
    /// The settings it started with (a redirection before the login names their brokers).
    protocol: Arc<ServerConfig>,
    /// The user whose account was looked up last (a login under way).
    asked: Option<String>,
    /// The client made a create request: it logged in (anonymously if the session has no user).
    created: bool,
    /// The last refusal handed to the session.
    refusal: Option<Refusal>,
}

impl Negotiation {
    /// A client begins to negotiate (with the broker's settings of now).
    fn start(shared: &Shared, peer: SocketAddr, local: SocketAddr, transport: Transport) -> Self {
        let protocol = shared.protocol();
        Self {
            session: ServerSession::new(protocol.clone(), peer, local, transport),
            protocol,
            asked: None,
            created: false,
            refusal: None,
        }
    }

    fn asking(&mut self, need: &Need) {
        match need {
            Need::Account { user } => self.asked = Some(user.clone()),
            Need::Offer(_) => self.created = true,
        }
    }

    fn resume(&mut self, answer: Answer) -> Result<Progress, ServerError> {
        if let Answer::Offer(Err(r)) | Answer::Account(Err(r)) = &answer {
            self.refusal = Some(r.clone());
        }
        self.session.resume(answer, &mut rand::rngs::OsRng)
    }

    /// The reason, status and words of the refusal that ended the session with `e`. The
    /// words never quote what the client sent where credentials could be.
    fn classify(&self, e: &ServerError) -> (RefusalReason, Option<u32>, String) {
        let refusal = |r: &Refusal| {
            let words = match r.status {
                StatusCode::Redirect(_) => format!(
                    "sent to {}",
                    r.brokers
                        .iter()
                        .map(crate::config::broker_addr_text)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                s => r.reason.clone().unwrap_or_else(|| s.to_string()),
            };
            (refusal_reason(r), Some(r.status.code()), words)
        };
        // A lookup's refusal ended the session: its words say why.
        if let (ServerError::Refused(_) | ServerError::Redirected | ServerError::Busy(_), Some(r)) = (e, &self.refusal)
        {
            return refusal(r);
        }
        match e {
            ServerError::Refused(s) => (RefusalReason::Other, Some(s.code()), e.to_string()),
            // Before the login: the protocol's own busy (530) and redirection (1200) answers.
            ServerError::Busy(reason) => refusal(&Refusal::because(StatusCode::ServerTooBusy, reason.clone())),
            ServerError::Redirected => refusal(&Refusal::redirect(self.protocol.redirect.clone().unwrap_or_default())),
            ServerError::AuthFailed { mechanism, reason } => (
                RefusalReason::AuthFailed,
                Some(StatusCode::AuthenticationFailed.code()),
                format!("{mechanism}: {reason}"),
            ),
            ServerError::Version(_) => (
                RefusalReason::Version,
                Some(StatusCode::UnsupportedVersion.code()),
                e.to_string(),
            ),
            ServerError::BadRequest(_) => (
                RefusalReason::BadRequest,
                Some(StatusCode::InvalidRequest.code()),
                e.to_string(),
            ),
            ServerError::Frame(_) | ServerError::BadAccept(_) => (RefusalReason::BadRequest, None, e.to_string()),
            // Its preview could be anything the client sent, a password included.
            ServerError::Unexpected(_) => (
                RefusalReason::BadRequest,
                None,
                "client sent an unexpected message".to_owned(),
            ),
            ServerError::NotWaiting => (RefusalReason::Other, None, e.to_string()),
        }
    }
}

/// Listening sockets and their tasks; dropping it stops the broker.
#[derive(Debug)]
pub struct Running {
    pub shared: Shared,
    pub tcp: Vec<SocketAddr>,
    pub udp: Vec<SocketAddr>,
    /// Where the metrics are served.
    pub metrics: Option<SocketAddr>,
    /// The control socket (removed when this is dropped).
    pub control: Option<control::SocketFile>,
    /// The listeners' tasks: their end is the broker's.
    listeners: Vec<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in self.listeners.iter().chain(&self.tasks) {
            t.abort();
        }
    }
}

impl Running {
    /// Waits until a listener task ends (it only does on a fatal socket error).
    pub async fn wait(&mut self) {
        if let Some(t) = self.listeners.last_mut() {
            let _ = t.await;
        }
    }

    /// Where `tsp-broker sessions` reaches this broker, if anywhere.
    pub fn control_path(&self) -> Option<&std::path::Path> {
        self.control.as_ref().map(|c| c.path())
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

/// Binds every configured listener (and the metrics endpoint and control socket), starts the
/// datapath if configured, and starts serving. Errors name what failed.
pub async fn start(mut shared: Shared, cfg: &BrokerConfig) -> std::io::Result<Running> {
    let context = |what: String| move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"));
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for addr in &cfg.listen {
        let (t, u) = bind_pair(*addr, cfg.tcp, cfg.udp)
            .await
            .map_err(context(format!("listen {addr}")))?;
        if let Some(u) = &u {
            // Every client's tunnel traffic arrives on this one socket.
            tsp_tunnel::grow_receive_buffer(std::os::fd::AsFd::as_fd(u));
        }
        tcp.extend(t);
        udp.extend(u.map(Arc::new));
    }
    let metrics = match cfg.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(context(format!("metrics_listen {addr}")))?,
        ),
        None => None,
    };
    let control = match &cfg.control_socket {
        Some(path) => control::bind(path).map_err(std::io::Error::other)?,
        None => None,
    };
    // A fleet's master only redirects: it carries no tunnel.
    if cfg.datapath && !cfg.fleet.as_ref().is_some_and(|f| f.master) {
        shared.datapath = Some(
            BrokerDatapath::start(cfg, udp.clone())
                .await
                .map_err(context("datapath".into()))?,
        );
    }
    let mut running = Running {
        shared: shared.clone(),
        tcp: Vec::new(),
        udp: Vec::new(),
        metrics: None,
        control: None,
        listeners: Vec::new(),
        tasks: Vec::new(),
    };
    if let Some(l) = metrics {
        running.metrics = Some(l.local_addr()?);
        let s = shared.clone();
        running
            .tasks
            .push(tokio::spawn(metrics::serve_http(l, move || s.metrics_text())));
    }
    if let Some((l, file)) = control {
        running.control = Some(file);
        running.tasks.push(tokio::spawn(control::serve(l, shared.clone())));
    }
    if shared.datapath.is_some() {
        running.tasks.push(tokio::spawn(sweep(shared.clone())));
    }
    if let Some(f) = shared.fleet.clone() {
        running.tasks.push(tokio::spawn(f.run(shared.clone())));
    }
    for t in tcp {
        running.tcp.push(t.local_addr()?);
        running.listeners.push(tokio::spawn(serve_tcp(t, shared.clone())));
    }
    for (i, u) in udp.into_iter().enumerate() {
        running.udp.push(u.local_addr()?);
        running.listeners.push(tokio::spawn(serve_udp(u, i, shared.clone())));
    }
    Ok(running)
}

/// Ends the sessions of tunnels that went silent, so they no longer count against
/// `max_tunnels` (their addresses stay assigned to their owners).
async fn sweep(shared: Shared) {
    let Some(dp) = shared.datapath.clone() else { return };
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let silent = dp.sweep();
        if !silent.is_empty() {
            let ended = shared.lock().end_tunnels(&silent);
            shared.ended(ended, TunnelEnd::Silent);
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

/// Forgets a TCP connection's wake-up when its task ends.
struct Connection<'a> {
    shared: &'a Shared,
    peer: SocketAddr,
}

impl Drop for Connection<'_> {
    fn drop(&mut self) {
        self.shared
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.peer);
    }
}

async fn handle_tcp(mut stream: TcpStream, peer: SocketAddr, shared: Shared) {
    let Ok(local) = stream.local_addr() else { return };
    let _ = stream.set_nodelay(true);
    let kick = Arc::new(Notify::new());
    shared
        .connections
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(peer, kick.clone());
    let _registered = Connection { shared: &shared, peer };
    let mut neg = Negotiation::start(&shared, peer, local, Transport::Tcp);
    let mut buf = vec![0u8; MAX_MESSAGE];
    let started = Instant::now();
    let mut established = None;
    let mut begun = false;
    loop {
        let read = if neg.session.is_established() {
            // The connection stays open, idle, for the tunnel's lifetime, or until the
            // operator disconnects the user.
            tokio::select! {
                r = stream.read(&mut buf) => r,
                _ = kick.notified() => break,
            }
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
        if !begun {
            // Counted once the client speaks: a connection that loses tspc's UDP/TCP race
            // closes without a word.
            begun = true;
            shared.metrics.negotiation(Transport::Tcp);
        }
        let (result, hold) = shared.drive(&mut neg, &buf[..n]).await;
        if !hold.is_zero() {
            // Failed logins are throttled (and the answers after them held alike).
            sleep(hold).await;
        }
        if flush_tcp(&mut stream, &mut neg.session).await.is_err() {
            break;
        }
        match result {
            Ok(Progress::Established(offer)) => {
                if !shared.accept(neg.session.info(), &offer) {
                    break;
                }
                shared.established(raw_endpoint(&offer), &offer);
                established = Some(raw_endpoint(&offer));
                tracing::info!(%peer, mode = %offer.mode, "tunnel established (TCP)");
            }
            Ok(Progress::Continue | Progress::Need(_)) => {}
            // Logged (a refusal) when it was concluded.
            Err(_) => break,
        }
    }
    let ended = shared.lock().end_session(peer);
    shared.ended(ended, TunnelEnd::Closed);
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
    state: PeerState,
    /// The last answered sequence number and the datagram we answered with: a retransmission
    /// gets the same answer (tsps answered it as a new exchange and broke gogoc).
    last: Option<(u32, Vec<u8>)>,
    touched: Instant,
    /// The last reply is held back until then (login throttling): retransmissions meanwhile
    /// get no answer.
    held_until: Option<Instant>,
}

/// Where a UDP peer's negotiation stands.
enum PeerState {
    Negotiating(Box<Negotiation>),
    /// A lookup of the session's runs in a task of its own ([`answer_later`]).
    LookingUp,
    /// Established: an established session only acknowledges what comes, so the session is
    /// dropped (it is most of a peer's memory) and only the last answer kept. With a datapath
    /// not even that: the peer leaves the table, and the datapath's table says it is a tunnel.
    Established,
}

/// The control state of the UDP peers of one listener, shared with the tasks that answer
/// lookups a fleet's database takes time over.
type Peers = Arc<Mutex<HashMap<SocketAddr, UdpPeer>>>;

fn lock_peers(peers: &Peers) -> MutexGuard<'_, HashMap<SocketAddr, UdpPeer>> {
    peers.lock().unwrap_or_else(|p| p.into_inner())
}

/// How a control datagram is answered.
enum UdpAnswer {
    /// This datagram, after this delay.
    Reply(Vec<u8>, Duration),
    /// Not at all (a retransmission while the answer is held or looked up).
    Silent,
    /// By a task, once a lookup is answered.
    Later(Box<Negotiation>, Result<Progress, ServerError>, u32, [u8; HEADER_LEN]),
}

/// The local address a reply to `peer` leaves from (the socket may be bound to 0.0.0.0).
/// A fresh socket each time: a UDP socket connected once keeps that connection's source
/// address when connected again, so a reused probe would answer the first peer's address
/// for every peer (tests/broker_ops.rs caught it with clients on two links).
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
    use tsp_tunnel::busy::BusyPoll;
    use tsp_tunnel::{mmsg, tundev};
    let Ok(bound) = socket.local_addr() else { return };
    let peers: Peers = Arc::default();
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
    let mut busy = shared
        .datapath
        .as_ref()
        .map_or_else(|| BusyPoll::new(Duration::ZERO), |dp| dp.busy_poll());
    loop {
        let n = match inbox.recv_polled(Sock::Udp(&socket), &mut busy).await {
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
                let answer = answer_udp(&mut lock_peers(&peers), &shared, bound, listener, peer, dgram, payload);
                match answer {
                    UdpAnswer::Silent => {}
                    UdpAnswer::Reply(reply, hold) => send_reply(&socket, peer, reply, hold).await,
                    UdpAnswer::Later(session, first, seq, header) => {
                        let at = UdpAt {
                            socket: socket.clone(),
                            peers: peers.clone(),
                            listener,
                            peer,
                            seq,
                            header,
                        };
                        tokio::spawn(answer_later(shared.clone(), at, session, first));
                    }
                }
                // Every 10 s, or at most once a second while crowded (a sweep walks every peer).
                let since = last_sweep.elapsed();
                if since > Duration::from_secs(10)
                    || since > Duration::from_secs(1) && lock_peers(&peers).len() > MAX_UDP_PEERS
                {
                    last_sweep = Instant::now();
                    let mut peers = lock_peers(&peers);
                    // The control state of a session matters only while it negotiates (and for a
                    // retransmitted accept just after); its tunnel lives in the datapath's table.
                    peers.retain(|_, p| p.touched.elapsed() < UDP_IDLE);
                    if peers.len() > MAX_UDP_PEERS {
                        // A flood of fresh peers: keep the sessions that got somewhere.
                        peers.retain(|_, p| !matches!(p.state, PeerState::Negotiating(_)));
                    }
                    if peers.len() > MAX_UDP_PEERS {
                        // Still crowded (without a datapath established peers stay here): they
                        // would only miss the answer to a retransmitted accept.
                        peers.retain(|_, p| !matches!(p.state, PeerState::Established));
                    }
                }
            }
        }
        if let Some(dp) = &shared.datapath {
            dp.deliver_udp(&mut inbox).await;
        }
    }
}

async fn send_reply(socket: &Arc<UdpSocket>, peer: SocketAddr, reply: Vec<u8>, hold: Duration) {
    if !hold.is_zero() {
        let socket = socket.clone();
        tokio::spawn(async move {
            sleep(hold).await;
            let _ = socket.send_to(&reply, peer).await;
        });
    } else if let Err(e) = socket.send_to(&reply, peer).await {
        tracing::debug!(%peer, error = %e, "UDP send failed");
    }
}

/// Where the answer of a lookup finished by [`answer_later`] goes.
struct UdpAt {
    socket: Arc<UdpSocket>,
    peers: Peers,
    listener: usize,
    peer: SocketAddr,
    seq: u32,
    header: [u8; HEADER_LEN],
}

/// Answers a UDP session's lookups (a fleet's database), then its datagram; the session goes
/// back to its peer entry unless the client started over meanwhile.
async fn answer_later(shared: Shared, at: UdpAt, mut neg: Box<Negotiation>, result: Result<Progress, ServerError>) {
    let result = shared.answer_all(&mut neg, result).await;
    let hold = shared.conclude(&mut neg, &result);
    let (reply, carried) = finish_udp(&shared, at.listener, &mut neg.session, result, &at.header);
    {
        let mut peers = lock_peers(&at.peers);
        let Some(p) = peers
            .get_mut(&at.peer)
            .filter(|p| matches!(p.state, PeerState::LookingUp))
        else {
            return;
        };
        p.state = PeerState::Negotiating(neg);
        p.last = Some((at.seq, reply.clone()));
        p.touched = Instant::now();
        p.held_until = (!hold.is_zero()).then(|| Instant::now() + hold);
        settle(&mut peers, &shared, at.peer, carried);
    }
    send_reply(&at.socket, at.peer, reply, hold).await;
}

/// The datagram answering the client's (its header echoed), once the session went as far as
/// it could (a refusal was logged by [`Shared::conclude`]); an established tunnel is handed to
/// the datapath (its endpoint is returned).
fn finish_udp(
    shared: &Shared,
    listener: usize,
    session: &mut ServerSession,
    result: Result<Progress, ServerError>,
    header: &[u8],
) -> (Vec<u8>, Option<Endpoint>) {
    let body = session.next_reply().unwrap_or_default();
    let peer = session.info().peer;
    let mut carried = None;
    match result {
        // Logged as a refusal.
        Ok(Progress::Established(offer)) if !shared.accept(session.info(), &offer) => {}
        Ok(Progress::Established(offer)) => {
            let ep = match offer.mode {
                TunnelMode::V6UdpV4 => Endpoint::Udp { listener, peer },
                _ => raw_endpoint(&offer),
            };
            shared.established(ep, &offer);
            carried = Some(ep);
            tracing::info!(%peer, mode = %offer.mode, "tunnel established (UDP)");
        }
        Ok(Progress::Continue | Progress::Need(_)) | Err(_) => {}
    }
    ([header, &body].concat(), carried)
}

/// After a peer's datagram was answered: once its tunnel is established the negotiation is
/// dropped. A v6udpv4 tunnel in the datapath leaves the table altogether (its entry there
/// says the peer is a tunnel, [`answer_udp`]); others keep their last answer.
fn settle(peers: &mut HashMap<SocketAddr, UdpPeer>, shared: &Shared, peer: SocketAddr, carried: Option<Endpoint>) {
    match carried {
        Some(Endpoint::Udp { .. }) if shared.datapath.is_some() => {
            peers.remove(&peer);
        }
        Some(_) => {
            if let Some(p) = peers.get_mut(&peer) {
                p.state = PeerState::Established;
            }
        }
        None => {}
    }
}

/// How to answer the control datagram `dgram` from `peer`.
fn answer_udp(
    peers: &mut HashMap<SocketAddr, UdpPeer>,
    shared: &Shared,
    bound: SocketAddr,
    listener: usize,
    peer: SocketAddr,
    dgram: &[u8],
    payload: &[u8],
) -> UdpAnswer {
    let Some(header) = dgram
        .get(..HEADER_LEN)
        .and_then(|h| <[u8; HEADER_LEN]>::try_from(h).ok())
    else {
        return UdpAnswer::Silent;
    };
    let Some((h, _)) = Header::decode(dgram) else {
        return UdpAnswer::Silent;
    };
    let seq = h.seq;
    if payload.starts_with(b"ECHO REQUEST") {
        return UdpAnswer::Reply([&header[..], ECHO_REPLY].concat(), Duration::ZERO);
    }
    if let Some(p) = peers.get_mut(&peer)
        && let Some((last_seq, last_reply)) = &p.last
        && *last_seq == seq
    {
        p.touched = Instant::now();
        if p.held_until.is_some_and(|t| t > Instant::now()) {
            return UdpAnswer::Silent;
        }
        return UdpAnswer::Reply(last_reply.clone(), Duration::ZERO);
    }
    if peers
        .get(&peer)
        .is_some_and(|p| p.held_until.is_some_and(|t| t > Instant::now()))
    {
        // A new message before the held answer went out: the client cannot have read it.
        return UdpAnswer::Silent;
    }
    if payload.starts_with(b"VERSION=") {
        let local = local_towards(bound, peer);
        shared.metrics.negotiation(Transport::Udp);
        let session = Negotiation::start(shared, peer, local, Transport::Udp);
        peers.insert(
            peer,
            UdpPeer {
                state: PeerState::Negotiating(Box::new(session)),
                last: None,
                touched: Instant::now(),
                held_until: None,
            },
        );
    }
    let Some(p) = peers.get_mut(&peer) else {
        // An established v6udpv4 tunnel's peer (a retransmitted accept): acknowledged, as its
        // established session would have.
        let tunnel = Endpoint::Udp { listener, peer };
        if shared.datapath.as_ref().is_some_and(|dp| dp.carries(&tunnel)) {
            return UdpAnswer::Reply(header.to_vec(), Duration::ZERO);
        }
        return UdpAnswer::Silent;
    };
    p.touched = Instant::now();
    let neg = match &mut p.state {
        PeerState::Negotiating(neg) => neg,
        // A lookup of its runs; the client's retransmissions get the answer once it is there.
        PeerState::LookingUp => return UdpAnswer::Silent,
        PeerState::Established => {
            p.last = Some((seq, header.to_vec()));
            return UdpAnswer::Reply(header.to_vec(), Duration::ZERO);
        }
    };
    let mut result = neg.session.feed(payload, &mut rand::rngs::OsRng);
    while let Ok(Progress::Need(need)) = &result {
        let Some(answer) = shared.answer_now(need, neg.session.info()) else {
            let PeerState::Negotiating(neg) = std::mem::replace(&mut p.state, PeerState::LookingUp) else {
                return UdpAnswer::Silent;
            };
            return UdpAnswer::Later(neg, result, seq, header);
        };
        neg.asking(need);
        result = neg.resume(answer);
    }
    let hold = shared.conclude(neg, &result);
    let (reply, carried) = finish_udp(shared, listener, &mut neg.session, result, &header);
    p.last = Some((seq, reply.clone()));
    p.held_until = (!hold.is_zero()).then(|| Instant::now() + hold);
    settle(peers, shared, peer, carried);
    UdpAnswer::Reply(reply, hold)
}
