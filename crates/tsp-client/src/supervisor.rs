//! The client `Supervisor`: negotiate → tunnel → keepalive → reconnect, for one profile.
//!
//! It owns the retry policy (gogoc's: first retry at once, then `retry_delay` doubling every
//! three failures up to `retry_delay_max`), reconnects at once when the keepalive declares the
//! path dead, when the local address toward the broker changes (roaming: gogoc kept
//! announcing its old address), after a suspend (the NAT mapping is gone by then) and when
//! the offer's lifetime runs out. What to do with a tunnel once it is up — configure the
//! host (tspc) or report it to NetworkManager (nm-tsp-service) — is the [`Hooks`]' job.
//!
//! See docs/tsp-wire.md §1.6, §5, §7; docs/nm-plugin.md §3.6–3.7.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::net::{Conn, Established, NegotiateOptions, NetError, negotiate, rank};
use tsp_config::sites;
use tsp_proto::client::{Negotiated, Transport};
use tsp_proto::types::{DatapathKind, TunnelMode};
use tsp_tunnel::netlink::{self, Netlink};
use tsp_tunnel::tundev::TunDevice;
use tsp_tunnel::{self, Datapath, Encap, Exit, KeepaliveSpec, TUNNEL_MTU, kernel};

/// When and how often to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// gogoc's `auto_retry_connect`: without it the first failure ends the run.
    pub auto_retry: bool,
    pub delay: Duration,
    pub delay_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            auto_retry: true,
            delay: Duration::from_secs(30),
            delay_max: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt number `failures + 1`: none after the first failure, then
    /// `delay`, doubled after every three consecutive failures, capped at `delay_max`.
    pub fn backoff(&self, failures: u32) -> Duration {
        if failures <= 1 {
            return Duration::ZERO;
        }
        let doublings = (failures - 2) / 3;
        let d = self.delay.saturating_mul(1u32 << doublings.min(16));
        d.min(self.delay_max.max(self.delay))
    }
}

/// Names of the tunnel interfaces per mode (gogoc's `if_tunnel_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceNames {
    pub v6v4: String,
    pub v6udpv4: String,
    pub v4v6: String,
}

impl InterfaceNames {
    pub fn for_mode(&self, mode: TunnelMode) -> &str {
        match mode {
            TunnelMode::V6UdpV4 => &self.v6udpv4,
            TunnelMode::V4V6 => &self.v4v6,
            _ => &self.v6v4,
        }
    }
}

/// gogoc's multi-site files: where redirected brokers and the last good broker are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteFiles {
    pub broker_list: PathBuf,
    pub last_server: PathBuf,
    /// Stick to the last broker that worked (never back to the configured one).
    pub always_use_same_server: bool,
}

/// What to do when a router request (`host_type=router`) is answered without a prefix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NoPrefix {
    /// A host request: no prefix is expected.
    #[default]
    NotRouter,
    /// A failure ([`NetError::NoPrefix`]) before any tunnel is built, retried like a broker's
    /// refusal on the slow schedule: never at once, at least `retry_delay`, doubling up to
    /// `retry_delay_max`; without `auto_retry` the run ends.
    Fail,
    /// `router_fallback_host=yes`: a warning, and the tunnel runs as a host's.
    RunAsHost,
}

/// Everything the supervisor needs for one connection.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The configured broker (server string).
    pub server: String,
    pub negotiate: NegotiateOptions,
    pub retry: RetryPolicy,
    pub interfaces: InterfaceNames,
    pub sites: Option<SiteFiles>,
    /// Make the TUN interface persistent: it outlives the datapath (and a crash, until the
    /// next start removes it by name), so its owner decides when it goes — nm-tsp-service
    /// deletes it after each tunnel. tspc lets it vanish with its descriptor instead.
    pub persist_device: bool,
    /// A router request answered without a prefix: fail or run as a host.
    pub no_prefix: NoPrefix,
    /// gogoc's `proxy_client=yes`: the tunnel is negotiated for an external router, its
    /// endpoint. Nothing is built locally (no device, no datapath, no keepalive): the hooks get
    /// the tunnel with `ifindex` 0 and hand it on; the TSP session is held until stopped or
    /// until the offer's lifetime runs out (then it is negotiated again).
    pub proxy: bool,
    /// gogoc.conf's `datapath_kind`: v6v4 and v4v6 on a kernel link where the kernel has
    /// them, always, or never (`kernel::try_link`).
    pub datapath: DatapathKind,
    /// gogoc.conf's `busy_poll`: how long the userspace datapath polls for the next packet
    /// before it sleeps (zero: never; `tsp_tunnel::busy`).
    pub busy_poll: Duration,
}

/// A tunnel that is up, as the hooks see it.
#[derive(Debug, Clone)]
pub struct TunnelInfo {
    /// The tunnel interface's name (in proxy mode: the configured name, on the router).
    pub ifname: String,
    /// The local interface's index; 0 in proxy mode, where there is none.
    pub ifindex: u32,
    pub negotiated: Negotiated,
    /// The broker that gave the tunnel, as a server string, and its socket address.
    pub server: String,
    pub peer: SocketAddr,
    /// Our address toward the broker when the tunnel was negotiated.
    pub local: SocketAddr,
    /// The transport that carried the negotiation.
    pub transport: Transport,
}

/// Why a tunnel went down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    Stopped,
    KeepaliveTimeout {
        misses: u32,
    },
    /// Our address toward the broker changed (or disappeared).
    Roamed {
        from: IpAddr,
        to: Option<IpAddr>,
    },
    Resumed,
    LeaseExpired,
    Failed(String),
}

impl std::fmt::Display for DownReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stopped => f.write_str("stopped"),
            Self::KeepaliveTimeout { misses } => write!(f, "broker stopped answering keepalives ({misses} missed)"),
            Self::Roamed { from, to: Some(to) } => write!(f, "local address changed from {from} to {to}"),
            Self::Roamed { from, to: None } => write!(f, "local address {from} is gone (no route to the broker)"),
            Self::Resumed => f.write_str("system resumed from suspend"),
            Self::LeaseExpired => f.write_str("tunnel lifetime expired"),
            Self::Failed(e) => write!(f, "datapath failed: {e}"),
        }
    }
}

/// What the owner of the supervisor does at each step. `up` may refuse the tunnel (bad
/// configuration) — the supervisor then tears it down and reports a failure.
pub trait Hooks: Send {
    fn connecting(&mut self, _attempt: u32, _server: &str) {}
    fn up(&mut self, info: &TunnelInfo) -> impl std::future::Future<Output = Result<(), String>> + Send;
    fn down(&mut self, info: &TunnelInfo, reason: &DownReason) -> impl std::future::Future<Output = ()> + Send;
    fn failed(&mut self, _error: &NetError, _retry_in: Option<Duration>) {}
}

/// How a run ended.
#[derive(Debug)]
pub enum Ended {
    Stopped,
    /// Retrying was not allowed (boot mode, `auto_retry_connect=no`, wrong password).
    GaveUp(NetError),
}

pub struct Supervisor<H: Hooks> {
    profile: Profile,
    hooks: H,
    stop: watch::Receiver<bool>,
    /// The broker of the last tunnel that came up (probed during a path outage): its server
    /// string and socket address.
    last_peer: Option<(String, SocketAddr)>,
}

/// During a path outage the broker is probed this often at first …
pub const HEAL_PROBE_EVERY: Duration = Duration::from_secs(1);
/// … for this long, then ever less often (doubling) up to [`HEAL_PROBE_MAX`].
pub const HEAL_FAST_FOR: Duration = Duration::from_secs(120);
pub const HEAL_PROBE_MAX: Duration = Duration::from_secs(30);

/// The wait before the next reachability probe, `elapsed` into an outage.
pub fn heal_probe_interval(elapsed: Duration) -> Duration {
    if elapsed < HEAL_FAST_FOR {
        return HEAL_PROBE_EVERY;
    }
    let doublings = ((elapsed - HEAL_FAST_FOR).as_secs() / HEAL_FAST_FOR.as_secs()).min(8) as u32 + 1;
    HEAL_PROBE_EVERY.saturating_mul(1 << doublings).min(HEAL_PROBE_MAX)
}

/// A time without a path to the broker: probed every [`heal_probe_interval`] until it answers.
struct Outage {
    since: tokio::time::Instant,
    /// The broker of the last tunnel (its server string and address), when there was one.
    peer: Option<(String, SocketAddr)>,
    /// No negotiation before this (attempts stay a probe interval apart).
    next_attempt: tokio::time::Instant,
}

/// Why the tunnel went down says whether the path failed (heal fast) or not.
fn path_failure(reason: &DownReason) -> bool {
    matches!(
        reason,
        DownReason::KeepaliveTimeout { .. } | DownReason::Roamed { .. } | DownReason::Resumed
    )
}

impl<H: Hooks> Supervisor<H> {
    pub fn new(profile: Profile, hooks: H, stop: watch::Receiver<bool>) -> Self {
        Self {
            profile,
            hooks,
            stop,
            last_peer: None,
        }
    }

    pub fn hooks(&self) -> &H {
        &self.hooks
    }

    /// Runs until stopped, or until a failure may not be retried.
    pub async fn run(mut self) -> (Ended, H) {
        let mut failures = 0u32;
        let mut attempt = 0u32;
        // A path outage (or a broker not reached yet): brokers are probed until one answers.
        let mut outage: Option<Outage> = None;
        loop {
            if *self.stop.borrow() {
                return (Ended::Stopped, self.hooks);
            }
            if let Some(o) = &outage {
                // Attempts stay a probe interval apart even when probes say "reachable" at
                // once (a broker host whose broker is not listening yet answers them).
                let deadline =
                    o.next_attempt.max(tokio::time::Instant::now()) + self.profile.retry.delay.max(HEAL_PROBE_EVERY);
                // The other brokers of a multi-site setup are probed too: one of them
                // answering is as good a reason to negotiate (failover).
                let peer = o.peer.as_ref().map(|(_, p)| *p);
                let others: Vec<String> = candidates(&self.profile)
                    .into_iter()
                    .filter(|s| o.peer.as_ref().is_none_or(|(server, _)| s != server))
                    .collect();
                tokio::select! {
                    () = async {
                        tokio::time::sleep_until(o.next_attempt).await;
                        wait_reachable(peer, &others, o.since, deadline).await;
                    } => {}
                    _ = self.stop.changed() => return (Ended::Stopped, self.hooks),
                }
            }
            attempt += 1;
            let est = tokio::select! {
                r = negotiate_any(&self.profile, &mut self.hooks, attempt) => r,
                _ = self.stop.changed() => return (Ended::Stopped, self.hooks),
            };
            let est = match est.and_then(|est| self.check_prefix(est)) {
                Ok(est) => est,
                Err(e @ NetError::NoPrefix { .. }) => {
                    failures += 1;
                    if !self.profile.retry.auto_retry {
                        self.hooks.failed(&e, None);
                        return (Ended::GaveUp(e), self.hooks);
                    }
                    // The broker answered; asking again at once would get the same answer.
                    let wait = self.profile.retry.backoff(failures).max(self.profile.retry.delay);
                    self.hooks.failed(&e, Some(wait));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => continue,
                        _ = self.stop.changed() => return (Ended::Stopped, self.hooks),
                    }
                }
                Err(e) => {
                    failures += 1;
                    // A wrong password stays wrong: asking again is the caller's business.
                    if !self.profile.retry.auto_retry || e.is_auth_failure() {
                        self.hooks.failed(&e, None);
                        return (Ended::GaveUp(e), self.hooks);
                    }
                    // No path to any broker (after a path failure, or at the start: a laptop
                    // booting before its network, a broker host not up yet): probe cheaply and
                    // often instead of gogoc's schedule, which is for brokers that answered
                    // (refusals).
                    if e.is_unreachable() {
                        let now = tokio::time::Instant::now();
                        let o = outage.get_or_insert_with(|| Outage {
                            since: now,
                            peer: self.last_peer.clone(),
                            next_attempt: now,
                        });
                        let wait = heal_probe_interval(o.since.elapsed());
                        o.next_attempt = now + wait;
                        self.hooks.failed(&e, Some(wait));
                        continue;
                    }
                    let wait = self.profile.retry.backoff(failures);
                    self.hooks.failed(&e, Some(wait));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => continue,
                        _ = self.stop.changed() => return (Ended::Stopped, self.hooks),
                    }
                }
            };
            outage = None;
            match self.carry(est).await {
                Ok(DownReason::Stopped) => return (Ended::Stopped, self.hooks),
                // The path died or moved: negotiate again as soon as the broker answers a
                // probe (at once if it does already); the counter restarts.
                Ok(reason) => {
                    failures = 0;
                    if path_failure(&reason) {
                        let now = tokio::time::Instant::now();
                        outage = Some(Outage {
                            since: now,
                            peer: self.last_peer.clone(),
                            next_attempt: now,
                        });
                    }
                }
                Err(e) => {
                    failures += 1;
                    tracing::error!(error = %e, "could not set up the tunnel");
                    if !self.profile.retry.auto_retry {
                        return (
                            Ended::GaveUp(NetError::Io {
                                what: "tunnel setup",
                                source: std::io::Error::other(e),
                            }),
                            self.hooks,
                        );
                    }
                    let wait = self.profile.retry.backoff(failures).max(Duration::from_secs(1));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.stop.changed() => return (Ended::Stopped, self.hooks),
                    }
                }
            }
        }
    }

    /// A router request needs a prefix in the offer ([`Profile::no_prefix`]). The session is
    /// dropped with the error: nothing local has been built yet.
    fn check_prefix(&self, est: Established) -> Result<Established, NetError> {
        if est.negotiated.offer.prefix.is_some() {
            return Ok(est);
        }
        match self.profile.no_prefix {
            NoPrefix::NotRouter => Ok(est),
            NoPrefix::Fail => Err(NetError::NoPrefix { server: est.server }),
            NoPrefix::RunAsHost => {
                tracing::warn!(
                    server = %est.server,
                    "host_type=router, but the broker answered without a prefix: running as a host \
                     (router_fallback_host=yes); the LAN gets no IPv6 from this tunnel"
                );
                Ok(est)
            }
        }
    }

    fn open_tun(&self, ifname: &str) -> Result<TunDevice, String> {
        let tun = TunDevice::open(ifname, TUNNEL_MTU).map_err(|e| format!("cannot create TUN device {ifname}: {e}"))?;
        quiet_ipv6(ifname);
        if self.profile.persist_device {
            tun.set_persistent(true)
                .map_err(|e| format!("cannot make {ifname} persistent: {e}"))?;
        }
        Ok(tun)
    }

    /// Builds the datapath for a negotiated tunnel, hands it to the hooks, and waits for the
    /// reason it ends.
    async fn carry(&mut self, est: Established) -> Result<DownReason, String> {
        if self.profile.proxy {
            return self.carry_proxy(est).await;
        }
        let Established {
            conn,
            negotiated,
            server,
            local,
            peer,
            ..
        } = est;
        let offer = &negotiated.offer;
        let mode = offer.mode;
        let ifname = self.profile.interfaces.for_mode(mode).to_owned();
        let transport = conn.transport();
        let keepalive = offer.keepalive.filter(|k| k.interval > 0).map(|k| {
            let source = match k.address {
                IpAddr::V4(_) => IpAddr::V4(offer.client_v4),
                IpAddr::V6(_) => IpAddr::V6(offer.client_v6),
            };
            KeepaliveSpec {
                interval: Duration::from_secs(u64::from(k.interval)),
                target: k.address,
                source,
                probe: self.profile.negotiate.probe,
            }
            .start()
        });
        let remote = if mode == TunnelMode::V4V6 {
            IpAddr::V6(offer.server_v6)
        } else {
            IpAddr::V4(offer.server_v4)
        };
        // Kernel links where the kernel has them; userspace otherwise (decided and logged by
        // `kernel::try_link`).
        let nl = Netlink::new().map_err(|e| format!("rtnetlink: {e}"))?;
        let kernel_link = match (mode, self.profile.datapath) {
            (TunnelMode::V6UdpV4, _) => None,
            (_, DatapathKind::Userspace) => {
                tracing::info!(%mode, ifname, "datapath_kind=userspace: userspace datapath (TUN + raw socket)");
                None
            }
            (_, DatapathKind::Kernel) => Some(
                kernel::try_link(&nl, mode, &ifname, local.ip(), remote)
                    .await
                    .ok_or_else(|| format!("datapath_kind=kernel but no kernel link for {mode} ({ifname})"))?,
            ),
            (_, DatapathKind::Auto) => kernel::try_link(&nl, mode, &ifname, local.ip(), remote).await,
        };
        // `_session` keeps a TCP session open for as long as the tunnel lives: gogoc keeps the
        // TSP connection open but idle, and the bundled broker ends a TCP session's tunnel
        // when it closes.
        let mut sink = None;
        let (mut dp, ifindex, _session) = match (kernel_link, mode, conn) {
            (Some(idx), _, conn) => {
                quiet_ipv6(&ifname);
                nl.set_up_mtu(idx, TUNNEL_MTU)
                    .await
                    .map_err(|e| format!("{ifname}: {e}"))?;
                let dp = match keepalive {
                    Some(k) => kernel::keepalive_only(&ifname, k).map_err(|e| format!("keepalive on {ifname}: {e}"))?,
                    None => Datapath::idle(&ifname),
                };
                (dp, idx, Some(conn))
            }
            (None, TunnelMode::V6UdpV4, Conn::Udp(u)) => {
                let tun = self.open_tun(&ifname)?;
                let idx = tun.index().map_err(|e| format!("{ifname}: {e}"))?;
                let sock = u.into_socket();
                tsp_tunnel::grow_receive_buffer(std::os::fd::AsFd::as_fd(&sock));
                (
                    Datapath::start(tun, Encap::Udp(Arc::new(sock)), true, keepalive, self.profile.busy_poll),
                    idx,
                    None,
                )
            }
            (None, TunnelMode::V6UdpV4, Conn::Tcp(_)) => return Err("v6udpv4 offered over TCP".into()),
            (None, _, conn) => {
                let tun = self.open_tun(&ifname)?;
                let idx = tun.index().map_err(|e| format!("{ifname}: {e}"))?;
                let encap = tsp_tunnel::raw_encap(mode, remote)
                    .map_err(|e| format!("cannot open the raw socket for {mode}: {e}"))?;
                // A sink link keeps this host's kernel from answering the broker's packets with
                // ICMP errors where it has the tunnel modules (`kernel::sink_link`). Named after
                // the TUN's index: unique in the namespace.
                let sink_name = format!("tsps{idx}");
                match kernel::sink_link(&nl, mode, &sink_name, local.ip(), remote).await {
                    Ok(i) => {
                        tracing::info!(%mode, link = %sink_name, "sink link: the kernel sends no ICMP errors for the tunnel's packets");
                        sink = Some(i);
                    }
                    Err(e) => tracing::debug!(%mode, link = %sink_name, error = %e, "no sink link"),
                }
                (
                    Datapath::start(
                        tun,
                        encap,
                        tsp_tunnel::inner_is_v6(mode),
                        keepalive,
                        self.profile.busy_poll,
                    ),
                    idx,
                    Some(conn),
                )
            }
        };
        self.last_peer = Some((server.clone(), peer));
        let info = TunnelInfo {
            ifname,
            ifindex,
            negotiated: negotiated.clone(),
            server,
            peer,
            local,
            transport,
        };
        if let Err(e) = self.hooks.up(&info).await {
            dp.stop().await;
            if kernel_link.is_some() {
                let _ = nl.delete_link(ifindex).await;
            }
            if let Some(i) = sink {
                let _ = nl.delete_link(i).await;
            }
            self.hooks.down(&info, &DownReason::Failed(e.clone())).await;
            return Err(e);
        }
        let lease = offer
            .lifetime
            .filter(|l| *l > 0)
            .map(|l| Duration::from_secs(u64::from(l)));
        let reason = tokio::select! {
            exit = dp.finished() => match exit {
                Exit::KeepaliveDead { misses } => DownReason::KeepaliveTimeout { misses },
                Exit::Failed(e) => DownReason::Failed(e.to_string()),
                Exit::Stopped => DownReason::Stopped,
            },
            r = watch_path(peer.ip(), local.ip(), lease) => r,
            _ = self.stop.changed() => DownReason::Stopped,
        };
        tracing::info!(ifname = %info.ifname, %reason, "tunnel down");
        dp.stop().await;
        if kernel_link.is_some()
            && let Err(e) = nl.delete_link(ifindex).await
        {
            tracing::warn!(ifname = %info.ifname, error = %e, "cannot delete the tunnel link");
        }
        if let Some(i) = sink
            && let Err(e) = nl.delete_link(i).await
        {
            tracing::warn!(ifname = %info.ifname, error = %e, "cannot delete the sink link");
        }
        self.hooks.down(&info, &reason).await;
        Ok(reason)
    }
}

impl<H: Hooks> Supervisor<H> {
    /// Proxy mode: hands the tunnel to the hooks without building anything locally, and holds
    /// the TSP session (a TCP session's tunnel ends with it at the bundled broker) until
    /// stopped or until the lease runs out.
    async fn carry_proxy(&mut self, est: Established) -> Result<DownReason, String> {
        let Established {
            conn,
            negotiated,
            server,
            local,
            peer,
            ..
        } = est;
        let ifname = self.profile.interfaces.for_mode(negotiated.offer.mode).to_owned();
        let lease = negotiated
            .offer
            .lifetime
            .filter(|l| *l > 0)
            .map(|l| Duration::from_secs(u64::from(l)));
        let info = TunnelInfo {
            ifname,
            ifindex: 0,
            transport: conn.transport(),
            negotiated,
            server,
            peer,
            local,
        };
        let _session = conn;
        if let Err(e) = self.hooks.up(&info).await {
            self.hooks.down(&info, &DownReason::Failed(e.clone())).await;
            return Err(e);
        }
        let reason = tokio::select! {
            _ = async {
                match lease {
                    Some(l) => tokio::time::sleep(l).await,
                    None => std::future::pending().await,
                }
            } => DownReason::LeaseExpired,
            _ = self.stop.changed() => DownReason::Stopped,
        };
        tracing::info!(ifname = %info.ifname, %reason, "proxy tunnel down");
        self.hooks.down(&info, &reason).await;
        Ok(reason)
    }
}

/// The servers to try, in order (gogoc's rules, see [`sites::candidates`]).
fn candidates(profile: &Profile) -> Vec<String> {
    let Some(files) = &profile.sites else {
        return vec![profile.server.clone()];
    };
    let last = sites::load_last_server(&files.last_server).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "ignoring the last-server file");
        None
    });
    let list = sites::load_broker_list(&files.broker_list).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "ignoring the broker-list file");
        Vec::new()
    });
    sites::candidates(&profile.server, last.as_deref(), files.always_use_same_server, &list)
}

/// Negotiates with the first candidate that answers; a broker that answered with an error
/// ends the walk (as in gogoc), one that could not be reached passes to the next.
async fn negotiate_any<H: Hooks>(profile: &Profile, hooks: &mut H, attempt: u32) -> Result<Established, NetError> {
    let list = candidates(profile);
    let mut last_err = None;
    for server in &list {
        hooks.connecting(attempt, server);
        match negotiate(server, &profile.negotiate).await {
            Ok(est) => {
                remember(profile, &est);
                return Ok(est);
            }
            Err(e) if e.is_unreachable() => {
                tracing::warn!(%server, error = %e, "broker unreachable; trying the next one");
                last_err = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or(NetError::AllFailed(Vec::new())))
}

/// Records the broker that worked, and a redirection's ranked list, in gogoc's files.
fn remember(profile: &Profile, est: &Established) {
    let Some(files) = &profile.sites else { return };
    if let Err(e) = sites::save_last_server(&files.last_server, &est.server) {
        tracing::warn!(error = %e, "cannot record the last server");
    }
    if !est.redirect_list.is_empty()
        && let Err(e) = sites::save_broker_list(&files.broker_list, &est.redirect_list)
    {
        tracing::warn!(error = %e, "cannot record the broker list");
    }
}

/// No router solicitations from the tunnel device: the broker sends no router advertisements
/// into a tunnel (the offer carries the addresses), and the kernel's solicitations, repeated
/// with back-off for as long as the link lives, would be the only packets of an idle tunnel
/// besides the keepalive (docs/tsp-wire.md §5). Set before the device is up; a missing sysctl
/// (no IPv6) is not an error.
fn quiet_ipv6(ifname: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/router_solicitations");
    if let Err(e) = std::fs::write(&path, "0") {
        tracing::debug!(%path, error = %e, "cannot turn router solicitations off");
    }
}

/// Returns once the broker at `peer`, or one of the `others` (server strings), answers a cheap
/// probe ([`rank::reachable`], [`rank::rank`]), or at
/// `deadline` (a broker that never answers probes is then negotiated with anyway, on gogoc's
/// cadence). Probes every [`heal_probe_interval`] of the outage that began at `since`, and at
/// once when an address or route changes.
async fn wait_reachable(
    peer: Option<SocketAddr>,
    others: &[String],
    since: tokio::time::Instant,
    deadline: tokio::time::Instant,
) {
    let mut events = netlink::address_events().ok().map(Box::pin);
    let opts = rank::RankOptions {
        timeout: HEAL_PROBE_EVERY,
        tries: 1,
        ..Default::default()
    };
    loop {
        let t = tokio::time::Instant::now();
        let (this, other) = futures::join!(
            async {
                match peer {
                    Some(p) => rank::reachable(p, HEAL_PROBE_EVERY).await,
                    None => false,
                }
            },
            async {
                // Without a last peer the candidates are the brokers themselves: their host
                // answering is enough (a broker not listening yet refuses at once).
                !others.is_empty()
                    && rank::rank(others, peer.is_some_and(|p| p.is_ipv6()), &opts)
                        .await
                        .iter()
                        .any(|p| p.answered || (peer.is_none() && p.host_answered))
            }
        );
        if other {
            let what = if peer.is_some() {
                "another broker answers"
            } else {
                "a broker answers"
            };
            tracing::info!(outage = ?since.elapsed(), "{what}");
            return;
        }
        if let (true, Some(peer)) = (this, peer) {
            tracing::info!(%peer, outage = ?since.elapsed(), "broker reachable again");
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        let next = (t + heal_probe_interval(since.elapsed())).min(deadline);
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            ev = async {
                match events.as_mut() {
                    Some(s) => futures::StreamExt::next(s).await,
                    None => std::future::pending().await,
                }
            } => {
                if ev.is_none() {
                    events = None;
                }
                // Let a burst of changes settle a little before probing.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Resolves when the tunnel must be renegotiated although its datapath still runs: the
/// local address toward the broker changed, the system slept, or the lease ran out.
async fn watch_path(broker: IpAddr, local: IpAddr, lease: Option<Duration>) -> DownReason {
    let events = match netlink::address_events() {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no netlink monitor; checking the local address every second only");
            None
        }
    };
    let nl = Netlink::new().ok();
    let mut clock = SuspendClock::new();
    let lease_end = lease.map(|l| clock.boot + l);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut events = events.map(Box::pin);
    loop {
        tokio::select! {
            ev = async {
                match events.as_mut() {
                    Some(s) => futures::StreamExt::next(s).await,
                    None => std::future::pending().await,
                }
            } => {
                if ev.is_none() {
                    events = None;
                }
            }
            _ = tick.tick() => {
                if clock.slept() {
                    return DownReason::Resumed;
                }
                if lease_end.is_some_and(|end| clock.boot >= end) {
                    return DownReason::LeaseExpired;
                }
            }
        }
        if let Some(nl) = &nl {
            match nl.route_get(broker).await {
                Ok(Some((src, _))) if src == local => {}
                Ok(Some((src, _))) => {
                    return DownReason::Roamed {
                        from: local,
                        to: Some(src),
                    };
                }
                Ok(None) => return DownReason::Roamed { from: local, to: None },
                Err(e) => tracing::debug!(error = %e, "route lookup failed"),
            }
        }
    }
}

/// Compares CLOCK_BOOTTIME (counts suspend) with CLOCK_MONOTONIC (does not): a gap between
/// the two means the machine slept, and every NAT mapping and keepalive estimate is stale.
struct SuspendClock {
    boot: Duration,
    mono: Duration,
}

fn clock(id: nix::time::ClockId) -> Duration {
    nix::time::clock_gettime(id).map(Duration::from).unwrap_or_default()
}

impl SuspendClock {
    fn new() -> Self {
        Self {
            boot: clock(nix::time::ClockId::CLOCK_BOOTTIME),
            mono: clock(nix::time::ClockId::CLOCK_MONOTONIC),
        }
    }

    /// True if the machine was suspended since the last call.
    fn slept(&mut self) -> bool {
        let now = Self::new();
        let slept = now.slept_since(self);
        *self = now;
        slept
    }

    /// Whether CLOCK_BOOTTIME ran more than 2 s ahead of CLOCK_MONOTONIC between `earlier` and
    /// this reading (a busy machine delays both alike; only a suspend separates them).
    fn slept_since(&self, earlier: &SuspendClock) -> bool {
        let asleep = (self.boot.saturating_sub(earlier.boot)).saturating_sub(self.mono.saturating_sub(earlier.mono));
        asleep > Duration::from_secs(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gogoc_backoff() {
        let p = RetryPolicy {
            auto_retry: true,
            delay: Duration::from_secs(30),
            delay_max: Duration::from_secs(300),
        };
        let waits: Vec<u64> = (1..=12).map(|f| p.backoff(f).as_secs()).collect();
        // First retry at once, then 30 s three times, doubling every three failures, capped.
        assert_eq!(waits, vec![0, 30, 30, 30, 60, 60, 60, 120, 120, 120, 240, 240]);
        assert_eq!(p.backoff(40).as_secs(), 300);
    }

    #[test]
    fn heal_probes_every_second_then_back_off() {
        assert_eq!(heal_probe_interval(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(heal_probe_interval(Duration::from_secs(119)), Duration::from_secs(1));
        assert_eq!(heal_probe_interval(Duration::from_secs(120)), Duration::from_secs(2));
        assert_eq!(heal_probe_interval(Duration::from_secs(240)), Duration::from_secs(4));
        assert_eq!(heal_probe_interval(Duration::from_secs(600)), Duration::from_secs(30));
        assert_eq!(heal_probe_interval(Duration::from_secs(86_400)), HEAL_PROBE_MAX);
        assert!(path_failure(&DownReason::KeepaliveTimeout { misses: 3 }));
        assert!(!path_failure(&DownReason::LeaseExpired));
        assert!(!path_failure(&DownReason::Stopped));
    }

    #[test]
    fn no_suspend_measured_in_a_test() {
        let mut c = SuspendClock::new();
        assert!(!c.slept());
    }

    /// A suspend cannot be had in a test; its trace in the two clocks can.
    #[test]
    fn suspend_is_told_from_a_stalled_process() {
        let s = Duration::from_secs;
        let at = |boot, mono| SuspendClock {
            boot: s(boot),
            mono: s(mono),
        };
        let t0 = at(1000, 900);
        assert!(!at(1001, 901).slept_since(&t0), "a normal tick");
        assert!(
            !at(1030, 930).slept_since(&t0),
            "a process stopped for 30 s: both clocks ran"
        );
        assert!(at(1601, 901).slept_since(&t0), "ten minutes asleep");
        assert!(!at(1002, 901).slept_since(&t0), "a second of skew is not a suspend");
        assert!(
            path_failure(&DownReason::Resumed),
            "after a resume the broker is probed at once"
        );
    }
}
