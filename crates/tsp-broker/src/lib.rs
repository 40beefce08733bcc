//! `tsp-broker`: the bundled broker's brain — accounts, address and prefix pools, NAT detection
//! and the session record — implementing `tsp_proto::server::Backend`; [`serve`] puts it on
//! sockets and [`datapath`] carries its tunnels. The `tsp-broker` program (the root package) is
//! a thin command line around it.
//!
//! Depends on `tsp-proto` (the server state machine), `tsp-tunnel` (the same datapaths as the
//! client) and `tsp-config` (atomic writes); must not depend on the client side (`tsp-client`)
//! or on NetworkManager (`tsp-nm`).
//!
//! See docs/tsp-wire.md §1.7.

pub mod accounts;
pub mod config;
pub mod control;
pub mod datapath;
pub mod db;
pub mod echo_limit;
pub mod fleet;
pub mod metrics;
pub mod pool;
pub mod reload;
pub mod serve;
pub mod throttle;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use accounts::Accounts;
use config::BrokerConfig;
use metrics::RefusalReason;
use pool::Pool;

use tsp_proto::caps::{self, Capabilities};
use tsp_proto::client::Transport;
use tsp_proto::sasl::{Mechanism, passdss::HostKeyPair};
use tsp_proto::server::{Backend, LoginAttempt, Refusal, ServerConfig, SessionInfo};
use tsp_proto::status::StatusCode;
use tsp_proto::types::TunnelMode;
use tsp_proto::xml::{CreateRequest, Keepalive, Offer, OfferedPrefix};

/// One negotiated (or offered, awaiting accept) tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// [`Broker::session_key`]; one copy shared by the session table and the pools.
    pub key: Arc<str>,
    pub user: Option<String>,
    /// How the user logged in (the metrics' `auth` label).
    pub mechanism: Option<Mechanism>,
    pub peer: SocketAddr,
    pub transport: Transport,
    pub offer: Offer,
    pub established: bool,
    pub since: SystemTime,
    /// When the offer went out: an offer not accepted within `offer_timeout` is withdrawn.
    pub offered: Instant,
}

/// The three address pools of a broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolKind {
    /// Client IPv6 addresses (v6v4, v6udpv4), `client_pool`.
    Addr6,
    /// Delegated prefixes, `prefix_pool`.
    Prefix6,
    /// Client IPv4 addresses (v4v6), `ipv4_pool`.
    Addr4,
}

impl PoolKind {
    /// The name in the state file and the database.
    pub fn name(self) -> &'static str {
        match self {
            Self::Addr6 => "addr6",
            Self::Prefix6 => "prefix6",
            Self::Addr4 => "addr4",
        }
    }

    /// The empty pool of this kind as `cfg` lays it out, with the addresses that are never
    /// handed out (the pool's first address, ours, the DNS server's; IPv4 network, first host
    /// and broadcast) reserved.
    pub fn empty_pool(self, cfg: &BrokerConfig) -> Pool {
        match self {
            Self::Addr6 => {
                let mut p = Pool::new(u128::from(cfg.client_pool.addr), cfg.client_pool.len, 128);
                p.reserve(u128::from(cfg.client_pool.addr));
                p.reserve(u128::from(cfg.server_ipv6));
                p.reserve(u128::from(cfg.dns_server));
                p
            }
            Self::Prefix6 => Pool::new(u128::from(cfg.prefix_pool.addr), cfg.prefix_pool.len, 128),
            Self::Addr4 => {
                let mut p = Pool::new(u128::from(u32::from(cfg.ipv4_pool.addr)), cfg.ipv4_pool.len, 32);
                let net4 = u32::from(cfg.ipv4_pool.addr) & !(u32::MAX >> cfg.ipv4_pool.len);
                let bcast4 = net4 | (u32::MAX >> cfg.ipv4_pool.len);
                for a in [net4, net4 + 1, bcast4] {
                    p.reserve(u128::from(a));
                }
                p
            }
        }
    }

    /// The address a block of this pool starts at.
    pub fn addr(self, start: u128) -> IpAddr {
        match self {
            Self::Addr4 => IpAddr::V4(Ipv4Addr::from(start as u32)),
            _ => IpAddr::V6(Ipv6Addr::from(start)),
        }
    }
}

/// An offer decided but for the blocks it needs from the pools ([`Broker::plan`]); whoever
/// holds the assignments (the broker's own pools, or the fleet's database) assigns them and
/// [`Broker::finish`] completes the offer.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Whose assignment it is (the session key, [`Broker::session_key`]).
    pub key: Arc<str>,
    /// The pool of the client's address: IPv4 for v4v6, else IPv6.
    pub addr_pool: PoolKind,
    /// A delegated prefix of this length, for a router.
    pub prefix_len: Option<u8>,
    /// The offer with placeholder client address and prefix.
    offer: Offer,
}

/// The blocks assigned for a [`Plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocks {
    pub addr: u128,
    pub prefix: Option<u128>,
}

/// What refuses a plan whose pool is exhausted: `507` for a prefix, `301` for an address.
pub fn exhausted(kind: PoolKind) -> Refusal {
    match kind {
        PoolKind::Prefix6 => StatusCode::PrefixLengthUnavailable.into(),
        _ => StatusCode::NoMoreTunnels.into(),
    }
}

/// How a refusal for v6v4 from behind a NAT starts (the rest names the addresses).
const NAT_REFUSAL: &str = "v6v4 cannot cross the NAT";
/// How a refusal for too many offers pending from one address ends.
const PENDING_REFUSAL: &str = "offers to this address await their accept";

/// Why a refusal this broker gives turned the client away, for the operator (the refusal's
/// log line and `tsp_broker_refusals_total`). The reasons behind `303` and `530` are told
/// apart by the words this crate puts after the code.
pub fn refusal_reason(r: &Refusal) -> RefusalReason {
    let reason = r.reason.as_deref().unwrap_or("");
    match r.status {
        StatusCode::NoMoreTunnels | StatusCode::PrefixLengthUnavailable => RefusalReason::Capacity,
        StatusCode::UnsupportedTunnelType if reason.starts_with(NAT_REFUSAL) => RefusalReason::Nat,
        StatusCode::UnsupportedTunnelType | StatusCode::UnsupportedPrefixLength | StatusCode::PrefixForAnonymous => {
            RefusalReason::Unsupported
        }
        StatusCode::InvalidRequest | StatusCode::InvalidIpv4 | StatusCode::InvalidIpv6 => RefusalReason::BadRequest,
        StatusCode::ServerTooBusy if reason.ends_with(PENDING_REFUSAL) => RefusalReason::PendingOffers,
        StatusCode::ServerTooBusy if reason == fleet::DB_DOWN || reason == fleet::CONTENDED => {
            RefusalReason::DatabaseUnavailable
        }
        StatusCode::ServerTooBusy => RefusalReason::Busy,
        StatusCode::UnsupportedVersion => RefusalReason::Version,
        StatusCode::AuthenticationFailed => RefusalReason::AuthFailed,
        StatusCode::Redirect(_) => RefusalReason::Redirected,
        _ => RefusalReason::Other,
    }
}

#[derive(Debug)]
pub struct Broker {
    cfg: Arc<BrokerConfig>,
    accounts: Accounts,
    addr6: Pool,
    prefix6: Pool,
    addr4: Pool,
    sessions: HashMap<Arc<str>, SessionRecord>,
    /// The offers awaiting their accept, so that nothing walks every session per negotiation:
    /// the order they went out in (expired from the front), the offer of each peer, and how
    /// many each source address has.
    offers: PendingOffers,
    logins: throttle::LoginThrottle,
    /// Assignment lines appended to the state file since it was last written whole.
    state_appended: usize,
}

/// Indexes of the sessions not yet established (see [`Broker::offers`]).
#[derive(Debug, Default)]
struct PendingOffers {
    /// When each offer went out and its session key, oldest first; an entry whose session was
    /// accepted, ended or offered again meanwhile is skipped when it comes up.
    by_age: VecDeque<(Instant, Arc<str>)>,
    /// The key of the latest offer to each peer (the one its accept is for).
    by_peer: HashMap<SocketAddr, Arc<str>>,
    by_source: HashMap<IpAddr, usize>,
}

impl PendingOffers {
    fn added(&mut self, s: &SessionRecord) {
        self.by_age.push_back((s.offered, s.key.clone()));
        self.by_peer.insert(s.peer, s.key.clone());
        *self.by_source.entry(v4_mapped(s.peer.ip())).or_default() += 1;
    }

    /// `s` is no longer pending (accepted, ended or replaced).
    fn gone(&mut self, s: &SessionRecord) {
        if self.by_peer.get(&s.peer) == Some(&s.key) {
            self.by_peer.remove(&s.peer);
        }
        let source = v4_mapped(s.peer.ip());
        if let Some(n) = self.by_source.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_source.remove(&source);
            }
        }
    }

    fn of_source(&self, source: IpAddr) -> usize {
        self.by_source.get(&source).copied().unwrap_or(0)
    }
}

fn v4_mapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A peer as the operator knows it: an IPv4 client of a dual-stack listener shows as IPv4.
pub(crate) fn plain_peer(peer: SocketAddr) -> SocketAddr {
    SocketAddr::new(v4_mapped(peer.ip()), peer.port())
}

impl Broker {
    pub fn new(cfg: Arc<BrokerConfig>, accounts: Accounts) -> Self {
        let addr6 = PoolKind::Addr6.empty_pool(&cfg);
        let prefix6 = PoolKind::Prefix6.empty_pool(&cfg);
        let addr4 = PoolKind::Addr4.empty_pool(&cfg);
        let logins = throttle::LoginThrottle::new(cfg.login_delay, cfg.login_delay_max);
        let mut b = Self {
            cfg,
            accounts,
            addr6,
            prefix6,
            addr4,
            sessions: HashMap::new(),
            offers: PendingOffers::default(),
            logins,
            state_appended: 0,
        };
        b.load_state();
        b
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.cfg
    }

    /// Our IPv4 address inside v4v6 tunnels: the first host of the IPv4 pool.
    pub fn server_tunnel_v4(&self) -> Ipv4Addr {
        Ipv4Addr::from((u32::from(self.cfg.ipv4_pool.addr) & !(u32::MAX >> self.cfg.ipv4_pool.len)) + 1)
    }

    /// What the broker advertises: PASSDSS-3DES-1 only with a host key to sign with.
    pub fn capabilities(cfg: &BrokerConfig, has_host_key: bool) -> Capabilities {
        let tunnels = cfg.tunnel_modes.iter().fold(0, |acc, m| acc | caps::tunnel_bits(*m));
        let auths = cfg
            .auth
            .iter()
            .filter(|m| has_host_key || **m != Mechanism::PassDss3Des1)
            .fold(0, |acc, m| acc | m.cap_bit());
        Capabilities {
            tunnels,
            auths,
            ..Default::default()
        }
    }

    /// The protocol settings the sessions share.
    pub fn server_config(cfg: &BrokerConfig, host_key: Option<HostKeyPair>) -> ServerConfig {
        ServerConfig {
            capabilities: Self::capabilities(cfg, host_key.is_some()),
            versions: cfg.versions.clone(),
            realm: cfg.realm.clone(),
            host_key,
            redirect: (!cfg.redirect.is_empty()).then(|| cfg.redirect.clone()),
            busy: None,
        }
    }

    pub fn sessions(&self) -> impl Iterator<Item = &SessionRecord> {
        self.sessions.values()
    }

    pub fn session(&self, key: &str) -> Option<&SessionRecord> {
        self.sessions.get(key)
    }

    /// The session key: the user, or for anonymous clients what tells them apart behind one
    /// NAT (the address they report) and where they are (the address we see).
    pub fn session_key(info: &SessionInfo, req: &CreateRequest) -> String {
        match &info.user {
            Some(u) => format!("user:{u}"),
            None => format!("anon:{}@{}", req.client_addr, v4_mapped(info.peer.ip())),
        }
    }

    /// A login from `source` was decided: how long to hold its answer back (failed logins
    /// are throttled per user and per address, [`throttle`]).
    pub fn login_hold(&mut self, attempt: &LoginAttempt, source: IpAddr) -> std::time::Duration {
        self.logins
            .on_login(attempt.user.as_deref(), source, attempt.ok, std::time::Instant::now())
    }

    /// The client accepted its offer: the session's key; `None` when that offer was withdrawn
    /// meanwhile (it expired, [`Self::expire_offers`]) and the tunnel must not be carried.
    pub fn mark_established(&mut self, info: &SessionInfo, offer: &Offer) -> Option<String> {
        self.expire_offers();
        let key = self.offers.by_peer.get(&info.peer)?;
        let s = self
            .sessions
            .get_mut(key)
            .filter(|s| !s.established && &s.offer == offer)?;
        s.established = true;
        self.offers.gone(s);
        Some(s.key.to_string())
    }

    /// Records a session, replacing one with the same key.
    fn insert_session(&mut self, s: SessionRecord) {
        if !s.established {
            self.offers.added(&s);
        }
        if let Some(old) = self.sessions.insert(s.key.clone(), s)
            && !old.established
        {
            self.offers.gone(&old);
        }
    }

    fn remove_session(&mut self, key: &str) -> Option<SessionRecord> {
        let s = self.sessions.remove(key)?;
        if !s.established {
            self.offers.gone(&s);
        }
        Some(s)
    }

    /// The keys of the established sessions (the tunnels this broker carries).
    pub fn established_keys(&self) -> Vec<String> {
        self.sessions
            .values()
            .filter(|s| s.established)
            .map(|s| s.key.to_string())
            .collect()
    }

    /// Withdraws the offers not accepted within `offer_timeout` (a client that sent its create
    /// request and vanished, or never meant to accept): their tunnel slots come back.
    pub fn expire_offers(&mut self) {
        let timeout = self.cfg.offer_timeout;
        while let Some((at, key)) = self.offers.by_age.front() {
            let pending = self
                .sessions
                .get(key)
                .is_some_and(|s| !s.established && s.offered == *at);
            // Entries of offers accepted (or ended) meanwhile go at once, so the queue stays
            // as short as the offers really pending in front.
            if pending && at.elapsed() < timeout {
                break;
            }
            let Some((_, key)) = self.offers.by_age.pop_front() else {
                break;
            };
            if pending && let Some(s) = self.remove_session(&key) {
                tracing::info!(peer = %s.peer, "offer not accepted in time; withdrawn");
            }
        }
    }

    /// The tunnel with this inner address (the client's IPv6, or IPv4 for v4v6) is gone; the
    /// keys of the established sessions that ended.
    pub fn end_tunnel(&mut self, inner: IpAddr) -> Vec<String> {
        self.end_tunnels(&[inner])
    }

    /// [`Self::end_tunnel`] for every tunnel the datapath found silent at once: one walk of
    /// the sessions, not one per tunnel (thousands of clients can vanish together).
    pub fn end_tunnels(&mut self, inner: &[IpAddr]) -> Vec<String> {
        if inner.is_empty() {
            return Vec::new();
        }
        let gone: std::collections::HashSet<IpAddr> = inner.iter().copied().collect();
        self.end_where(|s| {
            let a = match s.offer.mode {
                TunnelMode::V4V6 => IpAddr::V4(s.offer.client_v4),
                _ => IpAddr::V6(s.offer.client_v6),
            };
            gone.contains(&a)
        })
    }

    /// The client's TSP connection went away (TCP closed); the keys of the established
    /// sessions that ended.
    pub fn end_session(&mut self, peer: SocketAddr) -> Vec<String> {
        self.end_where(|s| s.peer == peer)
    }

    /// Ends the sessions of `who` (a user name, or the key of an anonymous session as
    /// `tsp-broker sessions` shows it), established or offered; their records.
    pub fn end_user(&mut self, who: &str) -> Vec<SessionRecord> {
        let keys: Vec<Arc<str>> = self
            .sessions
            .values()
            .filter(|s| s.user.as_deref() == Some(who) || &*s.key == who)
            .map(|s| s.key.clone())
            .collect();
        keys.iter().filter_map(|k| self.remove_session(k)).collect()
    }

    /// A reloaded configuration (its restart-only keys unchanged, [`reload`]) and accounts:
    /// new sessions follow them; sessions and assignments stay.
    pub fn reconfigure(&mut self, cfg: Arc<BrokerConfig>, accounts: Accounts) {
        self.logins.set_limits(cfg.login_delay, cfg.login_delay_max);
        self.cfg = cfg;
        self.accounts = accounts;
    }

    fn end_where(&mut self, ends: impl Fn(&SessionRecord) -> bool) -> Vec<String> {
        let keys: Vec<Arc<str>> = self
            .sessions
            .values()
            .filter(|s| ends(s))
            .map(|s| s.key.clone())
            .collect();
        keys.iter()
            .filter_map(|k| self.remove_session(k))
            .filter(|s| s.established)
            .map(|s| s.key.to_string())
            .collect()
    }

    fn choose_mode(&self, info: &SessionInfo, req: &CreateRequest) -> Result<TunnelMode, Refusal> {
        let offered = |m: TunnelMode| self.cfg.tunnel_modes.contains(&m);
        let udp = info.transport == Transport::Udp;
        let observed = v4_mapped(info.peer.ip());
        match req.mode {
            TunnelMode::V4V6 => {
                if !req.client_addr.is_ipv6() {
                    return Err(StatusCode::InvalidIpv6.into());
                }
                if offered(TunnelMode::V4V6) && observed.is_ipv6() {
                    Ok(TunnelMode::V4V6)
                } else {
                    Err(StatusCode::UnsupportedTunnelType.into())
                }
            }
            m => {
                if !req.client_addr.is_ipv4() {
                    return Err(StatusCode::InvalidIpv4.into());
                }
                // NAT detection, over either transport: a client whose reported address is
                // not the one we see sits behind a NAT, which protocol 41 cannot cross; it
                // needs the UDP encapsulation, which only the UDP path carries.
                let nat = req.client_addr != observed;
                let behind_nat = || {
                    let how = if udp && offered(TunnelMode::V6UdpV4) {
                        ""
                    } else if offered(TunnelMode::V6UdpV4) {
                        "; v6udpv4 is offered over UDP only and this request came over TCP (is UDP port 3653 blocked?)"
                    } else {
                        "; this broker does not offer v6udpv4"
                    };
                    Refusal::because(
                        StatusCode::UnsupportedTunnelType,
                        format!(
                            "{NAT_REFUSAL} between client and broker (client reports IPv4 {}, broker sees {observed}){how}",
                            req.client_addr
                        ),
                    )
                };
                match m {
                    TunnelMode::V6V4 if offered(m) && nat => Err(behind_nat()),
                    TunnelMode::V6V4 if offered(m) => Ok(m),
                    TunnelMode::V6UdpV4 if offered(m) && udp => Ok(m),
                    TunnelMode::V6AnyV4
                        if udp && offered(TunnelMode::V6UdpV4) && (nat || !offered(TunnelMode::V6V4)) =>
                    {
                        Ok(TunnelMode::V6UdpV4)
                    }
                    TunnelMode::V6AnyV4 if offered(TunnelMode::V6V4) && nat => Err(behind_nat()),
                    TunnelMode::V6AnyV4 if offered(TunnelMode::V6V4) => Ok(TunnelMode::V6V4),
                    _ => Err(StatusCode::UnsupportedTunnelType.into()),
                }
            }
        }
    }

    /// Everything of the offer but its client address and prefix; the checks that need no
    /// pool (prefix length, address families).
    fn plan_offer(
        &self,
        key: &str,
        info: &SessionInfo,
        req: &CreateRequest,
        mode: TunnelMode,
    ) -> Result<Plan, StatusCode> {
        let cfg = &self.cfg;
        let keepalive_interval = req.keepalive.map(|i| i.clamp(cfg.keepalive_min, cfg.keepalive_max));
        let observed = v4_mapped(info.peer.ip());
        let local = v4_mapped(info.local.ip());
        let prefix_len = match &req.router {
            None => None,
            Some(_) if info.user.is_none() => return Err(StatusCode::PrefixForAnonymous),
            Some(_) if mode == TunnelMode::V4V6 => return Err(StatusCode::UnsupportedPrefixLength),
            Some(r) => {
                let len = if r.prefix_len == 0 { 48 } else { r.prefix_len };
                if !(cfg.prefix_length_min..=cfg.prefix_length_max).contains(&len) {
                    return Err(StatusCode::UnsupportedPrefixLength);
                }
                Some(len)
            }
        };
        let client_dns_name = match (&info.user, &cfg.dns_suffix) {
            (Some(u), Some(suffix)) => Some(format!("{}.{suffix}", u.to_ascii_lowercase())),
            _ => None,
        };
        let plan = |addr_pool, offer| Plan {
            key: key.into(),
            addr_pool,
            prefix_len,
            offer,
        };
        if mode == TunnelMode::V4V6 {
            let IpAddr::V6(client_v6) = observed else {
                return Err(StatusCode::InvalidIpv6);
            };
            let IpAddr::V6(server_v6) = local else {
                return Err(StatusCode::ServerError);
            };
            let server_v4 = self.server_tunnel_v4();
            return Ok(plan(
                PoolKind::Addr4,
                Offer {
                    mode,
                    lifetime: Some(cfg.lifetime),
                    server_v4,
                    server_v6,
                    client_v4: Ipv4Addr::UNSPECIFIED,
                    client_v6,
                    client_dns_name,
                    client_dns_server: Some(cfg.dns_server),
                    prefix: None,
                    keepalive: keepalive_interval.map(|interval| Keepalive {
                        interval,
                        address: IpAddr::V4(server_v4),
                    }),
                },
            ));
        }
        let server_v4 = match (cfg.server_ipv4, local) {
            (Some(a), _) => a,
            (None, IpAddr::V4(a)) => a,
            (None, IpAddr::V6(_)) => return Err(StatusCode::ServerError),
        };
        let client_v4 = match (mode, observed, req.client_addr) {
            // Behind a NAT the tunnel endpoint is the public address we see.
            (TunnelMode::V6UdpV4, IpAddr::V4(seen), _) => seen,
            (_, _, IpAddr::V4(reported)) => reported,
            _ => return Err(StatusCode::InvalidIpv4),
        };
        Ok(plan(
            PoolKind::Addr6,
            Offer {
                mode,
                lifetime: Some(cfg.lifetime),
                server_v4,
                server_v6: cfg.server_ipv6,
                client_v4,
                client_v6: Ipv6Addr::UNSPECIFIED,
                client_dns_name,
                client_dns_server: Some(cfg.dns_server),
                prefix: None,
                keepalive: keepalive_interval.map(|interval| Keepalive {
                    interval,
                    address: IpAddr::V6(cfg.server_ipv6),
                }),
            },
        ))
    }

    /// The checks of a tunnel request that need no pool: capacity, offers pending per source,
    /// the mode (NAT detection), the prefix length. What remains is assigning the plan's
    /// blocks ([`Self::assign_local`] or the fleet's database) and [`Self::finish`].
    pub fn plan(&mut self, info: &SessionInfo, req: &CreateRequest) -> Result<Plan, Refusal> {
        let key = Self::session_key(info, req);
        self.expire_offers();
        // The refusals below are logged by the caller, once, with the user and the reason.
        if !self.sessions.contains_key(key.as_str()) {
            if self.sessions.len() >= self.cfg.max_tunnels {
                return Err(Refusal::because(
                    StatusCode::NoMoreTunnels,
                    format!("broker full (max_tunnels = {})", self.cfg.max_tunnels),
                ));
            }
            let pending = self.offers.of_source(v4_mapped(info.peer.ip()));
            if pending >= self.cfg.max_pending_per_source {
                return Err(Refusal::because(
                    StatusCode::ServerTooBusy,
                    format!("{pending} {PENDING_REFUSAL}"),
                ));
            }
        }
        let mode = self.choose_mode(info, req)?;
        Ok(self.plan_offer(&key, info, req, mode)?)
    }

    /// Assigns a plan's blocks from the broker's own pools (and saves them to the state file).
    pub fn assign_local(&mut self, plan: &Plan) -> Result<Blocks, Refusal> {
        let mut new = Vec::new();
        let prefix = match plan.prefix_len {
            Some(len) => {
                let before = self.prefix6.get(&plan.key);
                let start = self
                    .prefix6
                    .assign(plan.key.clone(), len)
                    .ok_or_else(|| exhausted(PoolKind::Prefix6))?;
                if before != Some((start, len)) {
                    new.push((PoolKind::Prefix6, start, len));
                }
                Some(start)
            }
            None => None,
        };
        let pool = match plan.addr_pool {
            PoolKind::Addr4 => &mut self.addr4,
            _ => &mut self.addr6,
        };
        let width = if plan.addr_pool == PoolKind::Addr4 { 32 } else { 128 };
        let before = pool.get(&plan.key);
        let addr = pool
            .assign(plan.key.clone(), width)
            .ok_or_else(|| exhausted(plan.addr_pool))?;
        if before != Some((addr, width)) {
            new.push((plan.addr_pool, addr, width));
        }
        if !new.is_empty() {
            self.record_state(&plan.key, &new);
        }
        Ok(Blocks { addr, prefix })
    }

    /// The offer of a plan whose blocks were assigned; the session is recorded, awaiting the
    /// client's accept.
    pub fn finish(&mut self, info: &SessionInfo, req: &CreateRequest, plan: Plan, blocks: Blocks) -> Offer {
        let mut offer = plan.offer;
        match plan.addr_pool {
            PoolKind::Addr4 => offer.client_v4 = Ipv4Addr::from(blocks.addr as u32),
            _ => offer.client_v6 = Ipv6Addr::from(blocks.addr),
        }
        offer.prefix = plan.prefix_len.zip(blocks.prefix).map(|(len, start)| OfferedPrefix {
            addr: IpAddr::V6(Ipv6Addr::from(start)),
            len,
        });
        tracing::info!(
            peer = %info.peer,
            user = info.user.as_deref().unwrap_or("(anonymous)"),
            requested = %req.mode,
            mode = %offer.mode,
            client_v6 = %offer.client_v6,
            client_v4 = %offer.client_v4,
            prefix = ?offer.prefix.as_ref().map(|p| format!("{}/{}", p.addr, p.len)),
            "tunnel offered"
        );
        self.insert_session(SessionRecord {
            key: plan.key,
            user: info.user.clone(),
            mechanism: info.mechanism,
            peer: info.peer,
            transport: info.transport,
            offer: offer.clone(),
            established: false,
            since: SystemTime::now(),
            offered: Instant::now(),
        });
        offer
    }

    fn load_state(&mut self) {
        let Some(path) = self.cfg.state_file.clone() else {
            return;
        };
        let Ok(text) = std::fs::read_to_string(&path) else {
            return;
        };
        for line in text.lines().take(1 << 20) {
            let mut f = line.split_whitespace();
            let (Some(pool), Some(key), Some(block)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let Some((addr, len)) = block.split_once('/') else {
                continue;
            };
            let Ok(len) = len.parse::<u8>() else { continue };
            // A later line of a key (appended when its block changed) replaces the earlier.
            match pool {
                "addr6" => self.addr6.release(key),
                "prefix6" => self.prefix6.release(key),
                "addr4" => self.addr4.release(key),
                _ => {}
            }
            let restored = match (pool, addr.parse::<IpAddr>()) {
                ("addr6", Ok(IpAddr::V6(a))) => self.addr6.restore(key, u128::from(a), len),
                ("prefix6", Ok(IpAddr::V6(a))) => self.prefix6.restore(key, u128::from(a), len),
                ("addr4", Ok(IpAddr::V4(a))) => self.addr4.restore(key, u128::from(u32::from(a)), len),
                _ => false,
            };
            if !restored {
                tracing::warn!(path = %path.display(), line, "state line ignored (no longer fits the pools)");
            }
        }
        // Whole again, without the lines that were replaced.
        self.save_state();
    }

    /// One line of the state file: `pool key block`.
    fn state_line(kind: PoolKind, key: &str, start: u128, len: u8) -> String {
        format!("{} {key} {}/{len}\n", kind.name(), kind.addr(start))
    }

    /// Saves new assignments of `key`: appended to the state file (synced, so an assignment
    /// survives a crash as before), and the file written whole again once the appended
    /// lines outnumber the assignments. Writing it whole per assignment cost O(assignments)
    /// per negotiation: 119 negotiations/s at 8,000 anonymous tunnels.
    fn record_state(&mut self, key: &str, blocks: &[(PoolKind, u128, u8)]) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let Some(path) = &self.cfg.state_file else { return };
        let held = self.addr6.len() + self.prefix6.len() + self.addr4.len();
        if self.state_appended >= held.max(1024) {
            self.save_state();
            return;
        }
        let text: String = blocks.iter().map(|&(k, s, l)| Self::state_line(k, key, s, l)).collect();
        let appended = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o644)
            .open(path)
            .and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                f.sync_data()
            });
        match appended {
            Ok(()) => self.state_appended += blocks.len(),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot save broker state"),
        }
    }

    fn save_state(&mut self) {
        let Some(path) = &self.cfg.state_file else { return };
        self.state_appended = 0;
        let mut text = String::from("# tsp-broker address assignments: pool key block\n");
        for (kind, pool) in [
            (PoolKind::Addr6, &self.addr6),
            (PoolKind::Prefix6, &self.prefix6),
            (PoolKind::Addr4, &self.addr4),
        ] {
            for (key, start, len) in pool.assignments() {
                text.push_str(&Self::state_line(kind, key, start, len));
            }
        }
        if let Err(e) = tsp_config::fsutil::write_atomic(path, text.as_bytes(), 0o644) {
            tracing::warn!(path = %path.display(), error = %e, "cannot save broker state");
        }
    }
}

impl Backend for Broker {
    fn account_ha1(&self, user: &str) -> Option<[u8; 16]> {
        self.accounts.ha1(user)
    }

    fn offer(&mut self, info: &SessionInfo, req: &CreateRequest) -> Result<Offer, Refusal> {
        let plan = self.plan(info, req)?;
        let blocks = self.assign_local(&plan)?;
        Ok(self.finish(info, req, plan, blocks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tsp_proto::types::Version;

    fn broker(extra: &str) -> Broker {
        let cfg = BrokerConfig::parse(extra, std::path::Path::new("t.toml")).unwrap();
        Broker::new(Arc::new(cfg), Accounts::default())
    }

    fn info(peer: &str, transport: Transport, user: Option<&str>) -> SessionInfo {
        SessionInfo {
            peer: peer.parse().unwrap(),
            local: "192.0.2.1:3653".parse().unwrap(),
            transport,
            user: user.map(str::to_owned),
            mechanism: None,
            version: Version::V2_0_2,
        }
    }

    fn req(mode: TunnelMode, reported: &str) -> CreateRequest {
        CreateRequest {
            mode,
            proxy: false,
            client_addr: reported.parse().unwrap(),
            keepalive: Some(2),
            router: None,
        }
    }

    #[test]
    fn nat_detection_picks_the_mode() {
        let mut b = broker("");
        // Reported = observed: no NAT, protocol 41.
        let o = b
            .offer(
                &info("192.0.2.2:4000", Transport::Udp, None),
                &req(TunnelMode::V6AnyV4, "192.0.2.2"),
            )
            .unwrap();
        assert_eq!(o.mode, TunnelMode::V6V4);
        assert_eq!(o.client_v4.to_string(), "192.0.2.2");
        // Reported private address, seen from the NAT's public one: UDP encapsulation, and the
        // tunnel endpoint is the public address.
        let o = b
            .offer(
                &info("203.0.113.2:40000", Transport::Udp, None),
                &req(TunnelMode::V6AnyV4, "198.51.100.2"),
            )
            .unwrap();
        assert_eq!(o.mode, TunnelMode::V6UdpV4);
        assert_eq!(o.client_v4.to_string(), "203.0.113.2");
        // Over TCP there is no UDP socket to carry v6udpv4, and v6v4 cannot cross the NAT:
        // refused, saying why.
        let r = b
            .offer(
                &info("203.0.113.2:40001", Transport::Tcp, None),
                &req(TunnelMode::V6AnyV4, "198.51.100.3"),
            )
            .unwrap_err();
        assert_eq!(r.status, StatusCode::UnsupportedTunnelType);
        assert_eq!(refusal_reason(&r), RefusalReason::Nat);
        let why = r.reason.unwrap();
        assert!(why.contains("NAT") && why.contains("TCP"), "{why}");
        assert!(why.contains("198.51.100.3") && why.contains("203.0.113.2"), "{why}");
        // An explicit v6v4 from behind a NAT is refused the same way, over either transport.
        for transport in [Transport::Tcp, Transport::Udp] {
            let r = b
                .offer(
                    &info("203.0.113.2:40003", transport, None),
                    &req(TunnelMode::V6V4, "198.51.100.5"),
                )
                .unwrap_err();
            assert_eq!(r.status, StatusCode::UnsupportedTunnelType);
            assert!(r.reason.unwrap().contains("NAT"));
        }
        assert_eq!(
            b.offer(
                &info("203.0.113.2:40002", Transport::Tcp, None),
                &req(TunnelMode::V6UdpV4, "198.51.100.4")
            ),
            Err(StatusCode::UnsupportedTunnelType.into())
        );
        // Without NAT, TCP gets v6v4.
        let o = b
            .offer(
                &info("192.0.2.7:40001", Transport::Tcp, None),
                &req(TunnelMode::V6AnyV4, "192.0.2.7"),
            )
            .unwrap();
        assert_eq!(o.mode, TunnelMode::V6V4);
        // Keepalive intervals are clamped to the configured range (5 s minimum).
        assert_eq!(o.keepalive.map(|k| k.interval), Some(5));
        // Wrong address families are refused with their own codes.
        assert_eq!(
            b.offer(
                &info("192.0.2.2:4000", Transport::Udp, None),
                &req(TunnelMode::V6V4, "2001:db8::1")
            ),
            Err(StatusCode::InvalidIpv4.into())
        );
        assert_eq!(
            b.offer(
                &info("192.0.2.2:4000", Transport::Udp, None),
                &req(TunnelMode::V4V6, "192.0.2.2")
            ),
            Err(StatusCode::InvalidIpv6.into())
        );
    }

    #[test]
    fn v4v6_hands_out_ipv4_addresses() {
        let mut b = broker("");
        let mut i = info("[2001:db8:1::2]:4000", Transport::Udp, Some("alice"));
        i.local = "[2001:db8:1::1]:3653".parse().unwrap();
        let o = b.offer(&i, &req(TunnelMode::V4V6, "2001:db8:1::2")).unwrap();
        assert_eq!(o.mode, TunnelMode::V4V6);
        assert_eq!(o.server_v4.to_string(), "198.51.100.1");
        assert_eq!(o.client_v4.to_string(), "198.51.100.2");
        assert_eq!(o.server_v6.to_string(), "2001:db8:1::1");
        assert_eq!(o.keepalive.map(|k| k.address), Some("198.51.100.1".parse().unwrap()));
    }

    #[test]
    fn silent_tunnels_free_their_slot() {
        let mut b = broker("max_tunnels = 1");
        let a = b
            .offer(
                &info("192.0.2.2:4000", Transport::Udp, Some("a")),
                &req(TunnelMode::V6V4, "192.0.2.2"),
            )
            .unwrap();
        let other = (
            info("192.0.2.3:4000", Transport::Udp, Some("b")),
            req(TunnelMode::V6V4, "192.0.2.3"),
        );
        let full = b.offer(&other.0, &other.1).unwrap_err();
        assert_eq!(full.status, StatusCode::NoMoreTunnels);
        assert_eq!(refusal_reason(&full), RefusalReason::Capacity);
        // The datapath reports `a`'s tunnel silent: the slot is free again.
        b.end_tunnel(IpAddr::V6(a.client_v6));
        assert!(b.offer(&other.0, &other.1).is_ok());
    }

    #[test]
    fn unaccepted_offers_expire_and_are_bounded_per_source() {
        let mut b = broker("max_tunnels = 3\noffer_timeout = 1\nmax_pending_per_source = 2");
        let half = |b: &mut Broker, peer: &str, reported: &str| {
            b.offer(&info(peer, Transport::Udp, None), &req(TunnelMode::V6UdpV4, reported))
        };
        // One source: two pending offers, the third is refused (530), not counted.
        assert!(half(&mut b, "192.0.2.2:1", "10.0.0.1").is_ok());
        assert!(half(&mut b, "192.0.2.2:2", "10.0.0.2").is_ok());
        let r = half(&mut b, "192.0.2.2:3", "10.0.0.3").unwrap_err();
        assert_eq!(r.status, StatusCode::ServerTooBusy);
        assert_eq!(refusal_reason(&r), RefusalReason::PendingOffers);
        // The same client asking again keeps its own slot.
        assert!(half(&mut b, "192.0.2.2:2", "10.0.0.2").is_ok());
        // Another source fills the broker; then everyone gets 301.
        assert!(half(&mut b, "192.0.2.3:1", "10.0.0.1").is_ok());
        assert_eq!(
            half(&mut b, "192.0.2.4:1", "10.0.0.1").unwrap_err().status,
            StatusCode::NoMoreTunnels
        );
        // An accepted offer stays; the others expire and give their slots back.
        let i = info("192.0.2.3:1", Transport::Udp, None);
        let o = b.session("anon:10.0.0.1@192.0.2.3").unwrap().offer.clone();
        assert!(b.mark_established(&i, &o).is_some());
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(half(&mut b, "192.0.2.4:1", "10.0.0.1").is_ok());
        assert!(half(&mut b, "192.0.2.2:4", "10.0.0.4").is_ok());
        assert_eq!(b.sessions().count(), 3);
        assert!(b.session("anon:10.0.0.1@192.0.2.3").is_some_and(|s| s.established));
        // An accept for a withdrawn offer is not honoured.
        let gone = info("192.0.2.2:1", Transport::Udp, None);
        let mut stale = o.clone();
        stale.client_v4 = "192.0.2.2".parse().unwrap();
        assert!(b.mark_established(&gone, &stale).is_none());
    }

    #[test]
    fn the_state_file_takes_appended_assignments_and_reloads() {
        let dir = std::env::temp_dir().join(format!("tsp-broker-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let state = dir.join("state");
        let extra = format!("state_file = \"{}\"\nmax_tunnels = 5000", state.display());
        let mut b = broker(&extra);
        let mut offers = Vec::new();
        for i in 0..300u32 {
            let peer = format!("192.0.{}.{}:4000", 2 + i / 250, 1 + i % 250);
            let reported = peer.split(':').next().unwrap().to_owned();
            let o = b
                .offer(&info(&peer, Transport::Udp, None), &req(TunnelMode::V6UdpV4, &reported))
                .unwrap();
            offers.push(o.client_v6);
        }
        // A router's prefix, then another length for it: the later line replaces the earlier.
        let alice = info("192.0.2.200:4000", Transport::Tcp, Some("alice"));
        let mut r = req(TunnelMode::V6V4, "192.0.2.200");
        r.router = Some(tsp_proto::xml::RouterRequest {
            prefix_len: 56,
            dns_names: Vec::new(),
        });
        b.offer(&alice, &r).unwrap();
        r.router = Some(tsp_proto::xml::RouterRequest {
            prefix_len: 48,
            dns_names: Vec::new(),
        });
        let last = b.offer(&alice, &r).unwrap().prefix.unwrap();
        let text = std::fs::read_to_string(&state).unwrap();
        assert!(text.lines().count() > 300, "one appended line per assignment");
        // A broker started on the file has the same assignments.
        let again = broker(&extra);
        assert_eq!(again.addr6.len(), b.addr6.len());
        for (i, a) in offers.iter().enumerate().step_by(97) {
            let peer = format!("192.0.{}.{}", 2 + i / 250, 1 + i % 250);
            let key = format!("anon:{peer}@{peer}");
            assert_eq!(again.addr6.get(&key).map(|(s, _)| s), Some(u128::from(*a)));
        }
        let IpAddr::V6(p) = last.addr else {
            panic!("an IPv6 prefix")
        };
        assert_eq!(again.prefix6.get("user:alice"), Some((u128::from(p), 48)));
        assert_eq!(again.prefix6.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refusal_reasons_name_the_cause() {
        let busy = |why: &str| Refusal::because(StatusCode::ServerTooBusy, why);
        assert_eq!(
            refusal_reason(&busy(fleet::DB_DOWN)),
            RefusalReason::DatabaseUnavailable
        );
        assert_eq!(
            refusal_reason(&busy(fleet::CONTENDED)),
            RefusalReason::DatabaseUnavailable
        );
        assert_eq!(refusal_reason(&busy(fleet::NO_BROKER)), RefusalReason::Busy);
        assert_eq!(
            refusal_reason(&StatusCode::UnsupportedTunnelType.into()),
            RefusalReason::Unsupported
        );
        assert_eq!(
            refusal_reason(&StatusCode::InvalidIpv4.into()),
            RefusalReason::BadRequest
        );
        assert_eq!(refusal_reason(&exhausted(PoolKind::Prefix6)), RefusalReason::Capacity);
        assert_eq!(refusal_reason(&Refusal::redirect(vec![])), RefusalReason::Redirected);
        assert_eq!(refusal_reason(&StatusCode::ServerError.into()), RefusalReason::Other);
    }

    #[test]
    fn a_user_is_disconnected_by_name_or_key() {
        let mut b = broker("");
        let alice = info("192.0.2.2:4000", Transport::Udp, Some("alice"));
        let o = b.offer(&alice, &req(TunnelMode::V6V4, "192.0.2.2")).unwrap();
        b.mark_established(&alice, &o).unwrap();
        b.offer(
            &info("192.0.2.3:4000", Transport::Udp, None),
            &req(TunnelMode::V6UdpV4, "10.0.0.3"),
        )
        .unwrap();
        assert!(b.end_user("bob").is_empty());
        let ended = b.end_user("alice");
        assert_eq!(ended.len(), 1);
        assert!(ended[0].established && ended[0].offer == o);
        assert_eq!(b.end_user("anon:10.0.0.3@192.0.2.3").len(), 1);
        assert_eq!(b.sessions().count(), 0);
        // Her address stays hers.
        let again = b.offer(&alice, &req(TunnelMode::V6V4, "192.0.2.2")).unwrap();
        assert_eq!(again.client_v6, o.client_v6);
    }

    #[test]
    fn only_offered_modes() {
        let mut b = broker("tunnel_modes = [\"v6udpv4\"]");
        let o = b
            .offer(
                &info("192.0.2.2:4000", Transport::Udp, None),
                &req(TunnelMode::V6AnyV4, "192.0.2.2"),
            )
            .unwrap();
        assert_eq!(o.mode, TunnelMode::V6UdpV4, "v6v4 not offered: UDP even without NAT");
        assert_eq!(
            b.offer(
                &info("192.0.2.2:4001", Transport::Udp, None),
                &req(TunnelMode::V6V4, "192.0.2.3")
            ),
            Err(StatusCode::UnsupportedTunnelType.into())
        );
    }

    #[test]
    fn state_file_keeps_assignments_across_restarts() {
        let dir = std::env::temp_dir().join(format!("nm-tsp-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let state = dir.join("state");
        let _ = std::fs::remove_file(&state);
        let toml = format!("state_file = \"{}\"", state.display());
        let i = info("192.0.2.2:4000", Transport::Udp, Some("carol"));
        let first = broker(&toml).offer(&i, &req(TunnelMode::V6V4, "192.0.2.2")).unwrap();
        let mut other = broker(&toml);
        // Someone else first: carol must still get her old address back.
        other
            .offer(
                &info("192.0.2.9:4000", Transport::Udp, Some("dave")),
                &req(TunnelMode::V6V4, "192.0.2.9"),
            )
            .unwrap();
        let again = other.offer(&i, &req(TunnelMode::V6V4, "192.0.2.2")).unwrap();
        assert_eq!(first.client_v6, again.client_v6);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
