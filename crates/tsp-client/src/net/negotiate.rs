//! Drives `proto::client::ClientSession` over real sockets.
//!
//! Transport choice: gogoc tries RUDP for ~6 s before it falls back to TCP. We send the
//! VERSION over UDP and, if nothing came back after `tcp_race_delay`, race a TCP connection
//! against it (happy-eyeballs style); the first transport to answer carries the session.
//!
//! See docs/tsp-wire.md §1.2, §1.6, §7.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::sleep;

use super::NetError;
use super::conn::{Conn, TcpConn, UdpConn};
use super::hostkeys::{Decision, HostKeyPolicy};
use super::rank::{RankOptions, rank};
use tsp_config::{AutoAddr, GogocConfig, Host, split_server};
use tsp_proto::client::{ClientParams, ClientSession, Negotiated, Outcome, Step, Transport};
use tsp_proto::error::ProtoError;
use tsp_proto::rudp::RttParams;
use tsp_proto::sasl::Mechanism;
use tsp_proto::secret::Secret;
use tsp_proto::types::{AuthMethod, HostType, TSP_PORT, TunnelMode, Version};
use tsp_proto::xml::{BrokerAddr, CreateRequest, RouterRequest};

/// A broker address as configured: `host`, `a.b.c.d`, `[v6]`, each with an optional `:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub host: String,
    pub port: u16,
    /// The configured text, verbatim (DIGEST-MD5 and the host-key file use it).
    pub text: String,
}

impl Server {
    pub fn parse(text: &str) -> Result<Self, NetError> {
        let text = text.trim();
        let (host, port) = split_server(text).map_err(|e| NetError::BadServer {
            server: text.to_owned(),
            reason: e.to_string(),
        })?;
        let host = match host {
            Host::Name(n) => n,
            Host::V4(a) => a.to_string(),
            Host::V6(a) => a.to_string(),
        };
        Ok(Self {
            host,
            port: port.unwrap_or(TSP_PORT),
            text: text.to_owned(),
        })
    }

    /// The configured string for a broker taken from a redirection (IPv6 bracketed, as gogoc
    /// copies it into `server`).
    pub fn from_broker(b: &BrokerAddr) -> String {
        match b {
            BrokerAddr::V4(a) => a.to_string(),
            BrokerAddr::V6(a) => format!("[{a}]"),
            BrokerAddr::Name(n) => n.clone(),
        }
    }
}

/// Everything a negotiation needs besides the broker address.
#[derive(Debug, Clone)]
pub struct NegotiateOptions {
    pub auth_method: AuthMethod,
    pub allow_plain: bool,
    pub username: String,
    pub password: Secret,
    pub mode: TunnelMode,
    pub proxy: bool,
    /// Keepalive interval to request; `None` sends no `<keepalive>` element.
    pub keepalive: Option<u32>,
    /// Evidence-driven dead-path probing on top of the keepalive (docs/tsp-wire.md §5).
    pub probe: tsp_tunnel::keepalive::ProbeSettings,
    pub router: Option<RouterRequest>,
    /// Our tunnel endpoint address to announce; `None` = the local address of the TSP socket.
    pub client_addr: Option<IpAddr>,
    pub first_version: Version,
    pub rtt: RttParams,
    pub tcp_race_delay: Duration,
    pub connect_timeout: Duration,
    pub reply_timeout: Duration,
    pub max_redirects: usize,
    pub host_keys: Arc<dyn HostKeyPolicy>,
    /// Rank the brokers of a redirection with ECHO REQUEST probes (gogoc does); `None` tries
    /// them in the document's order.
    pub rank: Option<RankOptions>,
}

impl NegotiateOptions {
    pub fn new(mode: TunnelMode, host_keys: Arc<dyn HostKeyPolicy>) -> Self {
        Self {
            auth_method: AuthMethod::Anonymous,
            allow_plain: false,
            username: String::new(),
            password: Secret::default(),
            mode,
            proxy: false,
            keepalive: Some(30),
            probe: tsp_tunnel::keepalive::ProbeSettings::default(),
            router: None,
            client_addr: None,
            first_version: Version::V2_0_2,
            rtt: RttParams::default(),
            tcp_race_delay: Duration::from_millis(300),
            connect_timeout: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(10),
            max_redirects: 3,
            host_keys,
            rank: Some(RankOptions::default()),
        }
    }

    /// What a gogoc.conf (or a NetworkManager profile read into one) asks for; where host
    /// keys are kept is the caller's choice.
    pub fn from_config(cfg: &GogocConfig, host_keys: Arc<dyn HostKeyPolicy>) -> Self {
        let mut o = Self::new(cfg.tunnel_mode, host_keys);
        o.auth_method = cfg.auth_method;
        o.allow_plain = cfg.plain_allowed();
        o.username = cfg.userid.clone();
        o.password = cfg.passwd.clone();
        o.proxy = cfg.proxy_client;
        o.keepalive = cfg.keepalive.then_some(cfg.keepalive_interval);
        o.probe = tsp_tunnel::keepalive::ProbeSettings {
            after: (cfg.keepalive_probe_after > 0).then(|| Duration::from_secs(cfg.keepalive_probe_after.into())),
            timeout: Duration::from_secs(cfg.keepalive_probe_timeout.max(1).into()),
            count: cfg.keepalive_probes.max(1),
        };
        o.router = (cfg.host_type == HostType::Router).then(|| RouterRequest {
            prefix_len: cfg.prefixlen,
            dns_names: cfg.dns_server.clone(),
        });
        o.client_addr = match cfg.tunnel_mode {
            TunnelMode::V4V6 => match cfg.client_v6 {
                AutoAddr::Fixed(a) => Some(a.into()),
                AutoAddr::Auto => None,
            },
            _ => match cfg.client_v4 {
                AutoAddr::Fixed(a) => Some(a.into()),
                AutoAddr::Auto => None,
            },
        };
        o
    }

    fn wants_v6_transport(&self) -> bool {
        self.mode == TunnelMode::V4V6
    }

    /// v6udpv4 rides on the UDP socket; every other mode may fall back to TCP.
    fn tcp_allowed(&self) -> bool {
        self.mode != TunnelMode::V6UdpV4
    }
}

/// A negotiated tunnel and the connection that carried it (kept open: v6udpv4 data uses the
/// same UDP socket, and gogoc keeps the TCP connection idle for the tunnel's lifetime).
#[derive(Debug)]
pub struct Established {
    pub conn: Conn,
    pub negotiated: Negotiated,
    /// The broker that gave the tunnel (after redirections), as a server string.
    pub server: String,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// The last redirection's brokers as tried (ranked), for gogoc's `broker_list` file;
    /// empty when no redirection with more than one broker happened.
    pub redirect_list: Vec<String>,
}

/// Negotiates a tunnel with `server`, following redirections.
pub async fn negotiate(server: &str, opts: &NegotiateOptions) -> Result<Established, NetError> {
    negotiate_hops(server.to_owned(), opts, 0).await
}

fn negotiate_hops<'a>(
    server: String,
    opts: &'a NegotiateOptions,
    hops: usize,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Established, NetError>> + Send + 'a>> {
    Box::pin(async move {
        match negotiate_server(&server, opts).await? {
            Attempt::Tunnel(est) => Ok(*est),
            Attempt::Redirect(brokers) => {
                if hops >= opts.max_redirects {
                    return Err(NetError::TooManyRedirects(opts.max_redirects));
                }
                tracing::info!(from = %server, brokers = brokers.len(), "broker redirects");
                let mut list: Vec<String> = brokers.iter().map(Server::from_broker).collect();
                if let (Some(rank_opts), true) = (&opts.rank, list.len() > 1) {
                    let probes = rank(&list, opts.wants_v6_transport(), rank_opts).await;
                    for p in &probes {
                        tracing::info!(broker = %p.server, distance_ms = p.distance.as_millis() as u64, answered = p.answered, "broker ranked");
                    }
                    list = probes.into_iter().map(|p| p.server).collect();
                }
                let mut errors = Vec::new();
                for next in &list {
                    match negotiate_hops(next.clone(), opts, hops + 1).await {
                        Ok(mut est) => {
                            if list.len() > 1 && est.redirect_list.is_empty() {
                                est.redirect_list = list.clone();
                            }
                            return Ok(est);
                        }
                        // Wrong credentials will be wrong at the next broker too, and a
                        // redirection loop stays one.
                        Err(e) if e.is_auth_failure() || matches!(e, NetError::TooManyRedirects(_)) => return Err(e),
                        Err(e) => {
                            tracing::warn!(broker = %next, error = %e, "redirected broker failed");
                            errors.push((next.clone(), e));
                        }
                    }
                }
                Err(NetError::AllFailed(errors))
            }
        }
    })
}

enum Attempt {
    Tunnel(Box<Established>),
    Redirect(Vec<BrokerAddr>),
}

async fn negotiate_server(text: &str, opts: &NegotiateOptions) -> Result<Attempt, NetError> {
    let server = Server::parse(text)?;
    let addrs = resolve(&server, opts.wants_v6_transport()).await?;
    let mut errors = Vec::new();
    for addr in addrs {
        match negotiate_addr(&server, addr, opts).await {
            Err(e) if e.is_unreachable() => {
                tracing::debug!(%addr, error = %e, "address unreachable");
                errors.push((addr.to_string(), e));
            }
            other => return other,
        }
    }
    match errors.len() {
        1 => Err(errors.remove(0).1),
        _ => Err(NetError::AllFailed(errors)),
    }
}

async fn resolve(server: &Server, want_v6: bool) -> Result<Vec<SocketAddr>, NetError> {
    let found: Vec<SocketAddr> = tokio::net::lookup_host((server.host.as_str(), server.port))
        .await
        .map_err(|source| NetError::Resolve {
            server: server.text.clone(),
            source,
        })?
        .filter(|a| a.is_ipv6() == want_v6)
        .take(4)
        .collect();
    if found.is_empty() {
        let fam = if want_v6 { "IPv6" } else { "IPv4" };
        return Err(NetError::Resolve {
            server: server.text.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, format!("no {fam} address")),
        });
    }
    Ok(found)
}

fn cnonce() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .to_string()
}

fn session_for(
    server: &Server,
    conn: &Conn,
    version: Version,
    opts: &NegotiateOptions,
) -> Result<ClientSession, NetError> {
    let local = conn.local_addr().map_err(NetError::io("read local address"))?;
    let client_addr = opts.client_addr.unwrap_or(match local.ip() {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    });
    Ok(ClientSession::new(ClientParams {
        version,
        transport: conn.transport(),
        auth_method: opts.auth_method,
        allow_plain: opts.allow_plain,
        username: opts.username.clone(),
        password: opts.password.clone(),
        server_name: server.text.clone(),
        request: CreateRequest {
            mode: opts.mode,
            proxy: opts.proxy,
            client_addr,
            keepalive: opts.keepalive,
            router: opts.router.clone(),
        },
        cnonce: cnonce(),
    }))
}

async fn open(transport: Transport, addr: SocketAddr, opts: &NegotiateOptions) -> Result<Conn, NetError> {
    Ok(match transport {
        Transport::Udp => Conn::Udp(UdpConn::connect(addr, opts.rtt).await?),
        Transport::Tcp => Conn::Tcp(TcpConn::connect(addr, opts.connect_timeout, opts.reply_timeout).await?),
    })
}

/// Opens `transport`, sends VERSION, returns the connection, its session and the first reply.
async fn first_exchange(
    server: &Server,
    transport: Transport,
    addr: SocketAddr,
    version: Version,
    opts: &NegotiateOptions,
) -> Result<(Conn, ClientSession, Vec<u8>), NetError> {
    let mut conn = open(transport, addr, opts).await?;
    let mut session = session_for(server, &conn, version, opts)?;
    let Step::Send { bytes, expect } = session.start()? else {
        return Err(ProtoError::State("session did not start with VERSION").into());
    };
    let reply = conn.exchange(Some(&bytes), expect).await?;
    Ok((conn, session, reply))
}

/// UDP first; TCP joins the race after `tcp_race_delay` without an answer.
async fn race(
    server: &Server,
    addr: SocketAddr,
    version: Version,
    opts: &NegotiateOptions,
) -> Result<(Conn, ClientSession, Vec<u8>), NetError> {
    let udp = first_exchange(server, Transport::Udp, addr, version, opts);
    if !opts.tcp_allowed() {
        return udp.await;
    }
    let tcp = async {
        // tokio rounds even a zero sleep up to its next 1 ms tick.
        if !opts.tcp_race_delay.is_zero() {
            sleep(opts.tcp_race_delay).await;
        }
        tracing::debug!(%addr, "no UDP answer yet; racing TCP");
        first_exchange(server, Transport::Tcp, addr, version, opts).await
    };
    tokio::pin!(udp, tcp);
    let (mut udp_err, mut tcp_err) = (None, None);
    loop {
        tokio::select! {
            r = &mut udp, if udp_err.is_none() => match r {
                Ok(won) => return Ok(won),
                Err(e) => { tracing::debug!(error = %e, "UDP attempt failed"); udp_err = Some(e) }
            },
            r = &mut tcp, if tcp_err.is_none() => match r {
                Ok(won) => return Ok(won),
                Err(e) => { tracing::debug!(error = %e, "TCP attempt failed"); tcp_err = Some(e) }
            },
        }
        if let (Some(u), Some(t)) = (&udp_err, &tcp_err) {
            // Report the transport that got further: a broker that answered badly beats one
            // that accepted and went silent, which beats nothing listening.
            let tcp_first = t.progress() >= u.progress();
            return Err(if tcp_first { tcp_err.take() } else { udp_err.take() }.unwrap_or(NetError::Closed));
        }
    }
}

async fn negotiate_addr(server: &Server, addr: SocketAddr, opts: &NegotiateOptions) -> Result<Attempt, NetError> {
    let mut version = opts.first_version;
    let (mut conn, mut session, mut reply) = race(server, addr, version, opts).await?;
    loop {
        match drive(&mut conn, &mut session, reply, opts).await {
            Ok(Outcome::Tunnel(negotiated)) => {
                log_success(server, &conn, &negotiated, opts);
                let local = conn.local_addr().map_err(NetError::io("read local address"))?;
                let peer = conn.peer_addr();
                return Ok(Attempt::Tunnel(Box::new(Established {
                    conn,
                    negotiated,
                    server: server.text.clone(),
                    local,
                    peer,
                    redirect_list: Vec::new(),
                })));
            }
            Ok(Outcome::Redirect(list)) => return Ok(Attempt::Redirect(list)),
            Err(NetError::Proto(ProtoError::UnsupportedVersion(v))) => {
                let Some(older) = v.older().filter(|o| o.supports_mode(opts.mode)) else {
                    return Err(ProtoError::UnsupportedVersion(v).into());
                };
                // 1.0.1 exists only over TCP.
                let transport = if older == Version::V1_0_1 {
                    Transport::Tcp
                } else {
                    conn.transport()
                };
                if transport == Transport::Tcp && !opts.tcp_allowed() {
                    return Err(ProtoError::UnsupportedVersion(v).into());
                }
                tracing::info!(from = %v, to = %older, ?transport, "broker refused the version; falling back");
                version = older;
                (conn, session, reply) = first_exchange(server, transport, addr, version, opts).await?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs the session to its end, starting from the reply to VERSION.
async fn drive(
    conn: &mut Conn,
    session: &mut ClientSession,
    first: Vec<u8>,
    opts: &NegotiateOptions,
) -> Result<Outcome, NetError> {
    let mut rng = rand::rngs::OsRng;
    let mut step = session.on_reply(&first, &mut rng)?;
    loop {
        step = match step {
            Step::Send { bytes, expect } => {
                let reply = conn.exchange(Some(&bytes), expect).await?;
                session.on_reply(&reply, &mut rng)?
            }
            Step::Receive { expect } => {
                let reply = conn.exchange(None, expect).await?;
                session.on_reply(&reply, &mut rng)?
            }
            Step::CheckHostKey { host, key } => {
                let policy = opts.host_keys.clone();
                let h = host.clone();
                // The policy may read the terminal: keep it off the async workers.
                let decision = tokio::task::spawn_blocking(move || policy.check(&h, &key))
                    .await
                    .unwrap_or(Decision::Rejected);
                if decision == Decision::Mismatch {
                    return Err(ProtoError::HostKeyMismatch { host }.into());
                }
                session.host_key_decision(decision == Decision::Trusted)?
            }
            Step::Done(outcome) => return Ok(outcome),
        };
    }
}

fn log_success(server: &Server, conn: &Conn, n: &Negotiated, opts: &NegotiateOptions) {
    let m = n.mechanism;
    if opts.auth_method == AuthMethod::Any && m != Mechanism::PassDss3Des1 {
        tracing::warn!(broker = %server.text, mechanism = m.wire_name(), "broker does not offer PASSDSS-3DES-1; authenticated with a weaker mechanism");
    }
    if m == Mechanism::Plain {
        tracing::warn!(broker = %server.text, "PLAIN authentication: the password crossed the network unencrypted");
    }
    tracing::info!(
        broker = %server.text,
        transport = ?conn.transport(),
        version = %n.version,
        mechanism = m.wire_name(),
        mode = %n.offer.mode,
        "tunnel negotiated"
    );
}
