//! The broker's datapath: one TUN device for the IPv6 side (and one for v4v6's IPv4 side), and
//! a table from inner addresses to the outer endpoint of each client's tunnel.
//!
//! Packets from a client are accepted only from its own endpoint and with its own inner
//! source address (or one inside its delegated prefix), as TSPS did. Echo requests to our
//! tunnel address are answered by the kernel: that address sits on the TUN device.
//!
//! See docs/tsp-wire.md §6; docs/ARCHITECTURE.md (the data path).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

mod links;

pub use links::inner_source_rules;

use super::config::{BrokerConfig, DatapathKind};
use super::metrics::Traffic;
use tsp_proto::types::TunnelMode;
use tsp_proto::xml::Offer;
use tsp_tunnel::batch::{Inbox, Outbox, Sock};
use tsp_tunnel::busy::BusyPoll;
use tsp_tunnel::netlink::{Applied, Netlink};
use tsp_tunnel::raw::{self, RawSocket};
use tsp_tunnel::tundev::{self, TunDevice};
use tsp_tunnel::{TUNNEL_MTU, mmsg, valid_inner};

/// Socket numbers of [`Outbox`] messages beyond the UDP listeners (which are 0..): the raw
/// sockets, one per local address (index added to the base).
const VIA_RAW41: usize = usize::MAX / 4;
const VIA_RAW4: usize = usize::MAX / 2;

/// Where a client's tunnel ends on the outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// v6udpv4: a UDP peer of one of our listeners (index into the listener list).
    Udp { listener: usize, peer: SocketAddr },
    /// v6v4: the client's IPv4 address (protocol 41).
    V4(Ipv4Addr),
    /// v4v6: the client's IPv6 address (protocol 4).
    V6(Ipv6Addr),
}

#[derive(Debug, Clone)]
struct Route {
    inner_v6: Option<Ipv6Addr>,
    prefix: Option<(u128, u8)>,
    inner_v4: Option<Ipv4Addr>,
    last_seen: Instant,
    idle_limit: Duration,
    /// Our address the client's tunnel ends at (the offer's server address): its packets
    /// must leave from there, or the client drops them.
    local: Option<IpAddr>,
    /// Bounds the echoes to our keepalive address this client may have answered.
    echo: crate::echo_limit::EchoBudget,
    /// Carried by a kernel link (links.rs): the raw sockets' copies of its packets only show
    /// the client alive, and nothing is delivered to the TUN.
    kernel: bool,
    /// That link's name once it is up: its counters are the tunnel's traffic (the packets
    /// never reach our TUN or, toward the client, any socket of ours).
    link: Option<String>,
    /// Its blocks are routed to the TUN devices one by one (a fleet member: see
    /// [`BrokerDatapath::announce`]); taken back when the tunnel goes.
    announced: Vec<(IpAddr, u8)>,
    /// What it carried, counted under the table's lock the packet path takes anyway.
    traffic: Traffic,
}

impl Route {
    fn accepts_source(&self, pkt: &[u8]) -> bool {
        match pkt.first().map(|b| b >> 4) {
            Some(6) => {
                let Some(src) = v6_at(pkt, 8) else { return false };
                self.inner_v6 == Some(src) || self.prefix.is_some_and(|(base, len)| in_prefix(src, base, len))
            }
            Some(4) => v4_at(pkt, 12).is_some_and(|src| self.inner_v4 == Some(src)),
            _ => false,
        }
    }

    /// What the tunnel carried: counted on the packet path, plus its kernel link's counters
    /// (from /proc/net/dev's `text`; the link's receive side is what the client sent).
    fn traffic_now(&self, net_dev: Option<&str>) -> Traffic {
        let mut t = self.traffic;
        if let (Some(name), Some(text)) = (&self.link, net_dev)
            && let Some(c) = tsp_tunnel::kernel::net_dev(text, name)
        {
            t += Traffic {
                packets_from_clients: c.rx_packets,
                bytes_from_clients: c.rx_bytes,
                packets_to_clients: c.tx_packets,
                bytes_to_clients: c.tx_bytes,
            };
        }
        t
    }

    /// [`Route::traffic_now`], reading /proc/net/dev only for a tunnel on a kernel link.
    fn traffic_read(&self) -> Traffic {
        self.traffic_now(self.link.as_ref().and_then(|_| net_dev_text()).as_deref())
    }
}

/// This network namespace's /proc/net/dev (the kernel links' counters).
fn net_dev_text() -> Option<String> {
    std::fs::read_to_string("/proc/net/dev").ok()
}

fn v6_at(pkt: &[u8], at: usize) -> Option<Ipv6Addr> {
    let b: [u8; 16] = pkt.get(at..at + 16)?.try_into().ok()?;
    Some(Ipv6Addr::from(b))
}

fn v4_at(pkt: &[u8], at: usize) -> Option<Ipv4Addr> {
    let b: [u8; 4] = pkt.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(b))
}

fn in_prefix(a: Ipv6Addr, base: u128, len: u8) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    };
    u128::from(a) & mask == base & mask
}

#[derive(Debug, Default)]
struct Table {
    routes: HashMap<Endpoint, Route>,
    by_v6: HashMap<Ipv6Addr, Endpoint>,
    by_prefix: Vec<(u128, u8, Endpoint)>,
    by_v4: HashMap<Ipv4Addr, Endpoint>,
    /// The traffic of the tunnels gone, so the totals never go back.
    ended: Traffic,
}

impl Table {
    fn take(&mut self, ep: &Endpoint) -> Option<Route> {
        let r = self.routes.remove(ep)?;
        // Read before the link task deletes the link (it is told after this).
        self.ended += r.traffic_read();
        if let Some(a) = r.inner_v6 {
            self.by_v6.remove(&a);
        }
        if let Some(a) = r.inner_v4 {
            self.by_v4.remove(&a);
        }
        self.by_prefix.retain(|(_, _, e)| e != ep);
        Some(r)
    }

    /// A packet from `endpoint`: marks its client alive if the inner source is the client's;
    /// true when the packet is ours to deliver (not when a kernel link carries the tunnel: the
    /// raw socket only got a copy).
    fn admit(&mut self, endpoint: &Endpoint, pkt: &[u8]) -> bool {
        match self.routes.get_mut(endpoint) {
            // Kernel-carried packets are the raw sockets' copies: they show the client alive,
            // the kernel delivers them. Ours are delivered within the client's echo budget.
            Some(r) if r.accepts_source(pkt) => {
                let now = Instant::now();
                r.last_seen = now;
                let deliver = !r.kernel && r.echo.allow(pkt, now);
                // A kernel link's packets are counted by the link; until it is up, from the copy.
                if deliver || r.kernel && r.link.is_none() {
                    r.traffic.packets_from_clients += 1;
                    r.traffic.bytes_from_clients += pkt.len() as u64;
                }
                deliver
            }
            _ => false,
        }
    }

    /// What every tunnel carried, the ended ones included.
    fn total(&self) -> Traffic {
        let text = if self.routes.values().any(|r| r.link.is_some()) {
            net_dev_text()
        } else {
            None
        };
        let mut total = self.ended;
        for r in self.routes.values() {
            total += r.traffic_now(text.as_deref());
        }
        total
    }

    fn endpoint_of(&self, inner: IpAddr) -> Option<Endpoint> {
        match inner {
            IpAddr::V6(a) => self.by_v6.get(&a).copied(),
            IpAddr::V4(a) => self.by_v4.get(&a).copied(),
        }
    }

    fn lookup_v6(&self, dst: Ipv6Addr) -> Option<Endpoint> {
        if let Some(ep) = self.by_v6.get(&dst) {
            return Some(*ep);
        }
        self.by_prefix
            .iter()
            .filter(|(base, len, _)| in_prefix(dst, *base, *len))
            .max_by_key(|(_, len, _)| *len)
            .map(|(_, _, ep)| *ep)
    }
}

/// Our tunnel endpoints, when known in advance: the IPv4 ones (`server_ipv4`, else the
/// IPv4 listen addresses) and the IPv6 ones (the IPv6 listen addresses). Empty: a wildcard
/// listener makes them the address each client happens to reach; one unbound socket then.
fn tunnel_endpoints(cfg: &BrokerConfig) -> (Vec<Ipv4Addr>, Vec<Ipv6Addr>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    let wildcard4 = cfg.listen.iter().any(|l| l.ip().is_unspecified());
    let wildcard6 = cfg.listen.iter().any(|l| l.ip().is_unspecified() && l.is_ipv6());
    for l in &cfg.listen {
        match l.ip() {
            IpAddr::V4(a) if !wildcard4 && !v4.contains(&a) => v4.push(a),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(m) if !wildcard4 && !v4.contains(&m) => v4.push(m),
                None if !wildcard6 && !v6.contains(&a) => v6.push(a),
                _ => {}
            },
            _ => {}
        }
    }
    if let Some(a) = cfg.server_ipv4 {
        v4 = vec![a];
    }
    (v4, v6)
}

/// The running datapath.
#[derive(Debug)]
pub struct BrokerDatapath {
    table: Mutex<Table>,
    udp: Vec<Arc<UdpSocket>>,
    tun6: Arc<TunDevice>,
    tun4: Option<Arc<TunDevice>>,
    /// Protocol 41 sockets, each bound to one of our IPv4 tunnel endpoints, plus one unbound
    /// socket when those are not all known in advance and local (a wildcard listener and no
    /// `server_ipv4`, or an endpoint on the public side of a NAT).
    raw41: Vec<(Option<Ipv4Addr>, Arc<RawSocket>)>,
    /// Protocol 4 sockets (v4v6), likewise per IPv6 endpoint; empty without v4v6.
    raw4: Vec<(Option<Ipv6Addr>, Arc<RawSocket>)>,
    /// TUN → clients, one per TUN device: taken by the device's own task when it signals
    /// data, and by a receive path right after it wrote to the device, for the answer the
    /// kernel queued meanwhile (one wake-up per round trip instead of two).
    out6: tokio::sync::Mutex<Outbox>,
    out4: tokio::sync::Mutex<Outbox>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    applied: Mutex<Option<Applied>>,
    /// Kernel links per tunnel (links.rs), when the kernel has them: (sit for v6v4, ip6tnl
    /// for v4v6), and the task that makes them.
    kernel: (bool, bool),
    link_task: Option<tokio::sync::mpsc::UnboundedSender<links::Cmd>>,
    /// A fleet member routes each userspace-carried tunnel's blocks to its TUN devices one by
    /// one (the pools' routes cover delivery already): more specific routes of this host that
    /// a routing daemon can announce, so the network sends a user's traffic to the broker
    /// carrying the tunnel. They go with the tunnel, and with the TUN devices if the broker dies.
    announce: Option<tokio::sync::mpsc::UnboundedSender<RouteChange>>,
    /// `busy_poll_us`: each receive loop polls this long after a packet before it sleeps.
    busy_poll: Duration,
}

impl Drop for BrokerDatapath {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            for t in tasks.iter() {
                t.abort();
            }
        }
    }
}

fn lock(t: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

impl BrokerDatapath {
    /// Creates the TUN devices, gives them our tunnel addresses and routes the pools to them.
    pub async fn start(cfg: &BrokerConfig, udp: Vec<Arc<UdpSocket>>) -> io::Result<Arc<Self>> {
        let v4v6 = cfg.tunnel_modes.contains(&TunnelMode::V4V6);
        let tun6 = Arc::new(TunDevice::open(&cfg.tun_name, TUNNEL_MTU).map_err(io::Error::other)?);
        let tun4 = if v4v6 {
            Some(Arc::new(
                TunDevice::open(&cfg.tun4_name, TUNNEL_MTU).map_err(io::Error::other)?,
            ))
        } else {
            None
        };
        let nl = Netlink::new().map_err(io::Error::other)?;
        let mut applied = Applied::default();
        let err = |e: tsp_tunnel::netlink::NetlinkError| io::Error::other(e.to_string());
        let idx6 = tun6.index().map_err(io::Error::other)?;
        nl.set_up_mtu(idx6, TUNNEL_MTU).await.map_err(err)?;
        applied
            .apply_address(&nl, idx6, IpAddr::V6(cfg.server_ipv6), 128)
            .await
            .map_err(err)?;
        applied
            .apply_route(&nl, IpAddr::V6(cfg.client_pool.addr), cfg.client_pool.len, idx6)
            .await
            .map_err(err)?;
        applied
            .apply_route(&nl, IpAddr::V6(cfg.prefix_pool.addr), cfg.prefix_pool.len, idx6)
            .await
            .map_err(err)?;
        if let Some(t4) = &tun4 {
            let idx4 = t4.index().map_err(io::Error::other)?;
            nl.set_up_mtu(idx4, TUNNEL_MTU).await.map_err(err)?;
            let server4 = Ipv4Addr::from((u32::from(cfg.ipv4_pool.addr) & !(u32::MAX >> cfg.ipv4_pool.len)) + 1);
            applied
                .apply_address(&nl, idx4, IpAddr::V4(server4), 32)
                .await
                .map_err(err)?;
            applied
                .apply_route(&nl, IpAddr::V4(cfg.ipv4_pool.addr), cfg.ipv4_pool.len, idx4)
                .await
                .map_err(err)?;
        }
        if cfg.forwarding {
            applied.apply_forwarding(true).map_err(err)?;
        }
        let kernel = choose_kind(cfg, &nl).await?;
        let (local4, local6) = tunnel_endpoints(cfg);
        // A socket per tunnel endpoint, bound to it; an endpoint not on this host (the public
        // side of a 1:1 NAT in front of the broker) gets the unbound socket instead.
        let open = |protocol: i32, local: Option<IpAddr>| -> io::Result<(bool, Arc<RawSocket>)> {
            let s = RawSocket::open(protocol, protocol == raw::IPPROTO_IPV4_IN_IPV6)?;
            let Some(a) = local else {
                return Ok((false, Arc::new(s)));
            };
            match s.bind(a) {
                Ok(()) => Ok((true, Arc::new(s))),
                Err(e) => {
                    tracing::warn!(%a, protocol, error = %e, "cannot send tunnel packets from this address; the kernel picks the source");
                    Ok((
                        false,
                        Arc::new(RawSocket::open(protocol, protocol == raw::IPPROTO_IPV4_IN_IPV6)?),
                    ))
                }
            }
        };
        let mut raw41 = Vec::new();
        for a in &local4 {
            let (bound, s) = open(raw::IPPROTO_IPV6_IN_IPV4, Some(IpAddr::V4(*a)))?;
            if bound {
                raw41.push((Some(*a), s));
            }
        }
        if raw41.len() < local4.len() || local4.is_empty() {
            raw41.push((None, open(raw::IPPROTO_IPV6_IN_IPV4, None)?.1));
        }
        let mut raw4 = Vec::new();
        if v4v6 {
            for a in &local6 {
                let (bound, s) = open(raw::IPPROTO_IPV4_IN_IPV6, Some(IpAddr::V6(*a)))?;
                if bound {
                    raw4.push((Some(*a), s));
                }
            }
            if raw4.len() < local6.len() || local6.is_empty() {
                raw4.push((None, open(raw::IPPROTO_IPV4_IN_IPV6, None)?.1));
            }
        }
        let udp_gso = !tundev::offload_disabled_by_env() && {
            let ok = udp.iter().all(|s| mmsg::udp_gso_supported(&**s));
            if !ok && tsp_tunnel::first_fallback(&tsp_tunnel::fallback::UDP_GSO) {
                tracing::warn!("UDP GSO (UDP_SEGMENT) unavailable: one datagram per message");
            }
            ok
        };
        // Also for the userspace datapath: its sink links (links.rs).
        let link_task = if cfg.tunnel_modes.contains(&TunnelMode::V6V4) || v4v6 {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(links::run(rx, cfg.tun_name.clone(), kernel.0));
            Some(tx)
        } else {
            None
        };
        let announce = match cfg.fleet {
            Some(_) => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let idx4 = match &tun4 {
                    Some(t) => Some(t.index().map_err(io::Error::other)?),
                    None => None,
                };
                tokio::spawn(announce_routes(rx, idx6, idx4));
                Some(tx)
            }
            None => None,
        };
        let dp = Arc::new(Self {
            kernel,
            link_task,
            announce,
            table: Mutex::new(Table::default()),
            udp,
            tun6,
            tun4,
            raw41,
            raw4,
            out6: tokio::sync::Mutex::new(Outbox::new(udp_gso)),
            out4: tokio::sync::Mutex::new(Outbox::new(udp_gso)),
            tasks: Mutex::new(Vec::new()),
            applied: Mutex::new(Some(applied)),
            busy_poll: cfg.busy_poll,
        });
        // Receive on every bound socket, or on the unbound one alone when there is one: it
        // gets a copy of every packet of its protocol (reading the others too would deliver
        // packets twice); the bound ones then only send.
        fn receivers<A>(socks: &[(Option<A>, Arc<RawSocket>)]) -> Vec<Arc<RawSocket>> {
            match socks.iter().find(|(a, _)| a.is_none()) {
                Some((_, s)) => vec![s.clone()],
                None => socks.iter().map(|(_, s)| s.clone()).collect(),
            }
        }
        let mut tasks = vec![tokio::spawn(dp.clone().tun_loop(true))];
        for sock in receivers(&dp.raw41) {
            tasks.push(tokio::spawn(dp.clone().raw_loop(sock, false)));
        }
        if dp.tun4.is_some() {
            tasks.push(tokio::spawn(dp.clone().tun_loop(false)));
            for sock in receivers(&dp.raw4) {
                tasks.push(tokio::spawn(dp.clone().raw_loop(sock, true)));
            }
        }
        if let Ok(mut t) = dp.tasks.lock() {
            *t = tasks;
        }
        tracing::info!(tun = %cfg.tun_name, server = %cfg.server_ipv6, "broker datapath up");
        Ok(dp)
    }

    /// Removes the kernel links, addresses and routes we added (the TUN devices go with the
    /// process).
    pub async fn shutdown(&self) {
        if let Some(tx) = &self.link_task {
            let (done, wait) = tokio::sync::oneshot::channel();
            if tx.send(links::Cmd::Shutdown(done)).is_ok() {
                let _ = wait.await;
            }
        }
        let applied = self.applied.lock().ok().and_then(|mut a| a.take());
        if let (Some(applied), Ok(nl)) = (applied, Netlink::new()) {
            for e in applied.undo(&nl).await {
                tracing::warn!(error = %e, "broker datapath cleanup");
            }
        }
    }

    /// Starts carrying a negotiated tunnel: on a kernel link where the kernel has them (made
    /// by the link task; userspace until then, and if that fails), else in userspace.
    pub fn add(self: &Arc<Self>, endpoint: Endpoint, offer: &Offer) {
        let idle_limit = Duration::from_secs(u64::from(offer.keepalive.map_or(30, |k| k.interval.max(1))) * 5);
        let prefix = offer.prefix.and_then(|p| match p.addr {
            IpAddr::V6(a) => Some((u128::from(a), p.len)),
            IpAddr::V4(_) => None,
        });
        let echo = crate::echo_limit::EchoBudget::new(offer.keepalive.map(|k| k.address), Instant::now());
        let route = match offer.mode {
            TunnelMode::V4V6 => Route {
                inner_v6: None,
                prefix: None,
                inner_v4: Some(offer.client_v4),
                last_seen: Instant::now(),
                idle_limit,
                local: Some(IpAddr::V6(offer.server_v6)),
                echo,
                kernel: false,
                link: None,
                announced: Vec::new(),
                traffic: Traffic::default(),
            },
            _ => Route {
                inner_v6: Some(offer.client_v6),
                prefix,
                inner_v4: None,
                last_seen: Instant::now(),
                idle_limit,
                local: Some(IpAddr::V4(offer.server_v4)),
                echo,
                kernel: false,
                link: None,
                announced: Vec::new(),
                traffic: Traffic::default(),
            },
        };
        let kernel_kind = match endpoint {
            Endpoint::V4(_) => self.kernel.0,
            Endpoint::V6(_) => self.kernel.1,
            Endpoint::Udp { .. } => false,
        };
        let local_ok = route.local.is_some_and(links::is_local);
        let on_link = kernel_kind && local_ok;
        let sink = !kernel_kind && local_ok && !matches!(endpoint, Endpoint::Udp { .. });
        let mut t = lock(&self.table);
        // A client that reconnects from a new endpoint keeps its addresses: forget the old path
        // (found by its addresses' index: a walk of every route cost O(tunnels) per tunnel).
        let mut stale: Vec<Endpoint> = [
            route.inner_v6.and_then(|a| t.by_v6.get(&a).copied()),
            route.inner_v4.and_then(|a| t.by_v4.get(&a).copied()),
        ]
        .into_iter()
        .flatten()
        .filter(|ep| *ep != endpoint)
        .collect();
        stale.dedup();
        for ep in stale {
            self.forget(&mut t, &ep);
            self.link_down(ep);
        }
        self.forget(&mut t, &endpoint);
        if let Some(a) = route.inner_v6 {
            t.by_v6.insert(a, endpoint);
        }
        if let Some(a) = route.inner_v4 {
            t.by_v4.insert(a, endpoint);
        }
        if let Some((base, len)) = route.prefix {
            t.by_prefix.push((base, len, endpoint));
        }
        let (local, mut routes) = (route.local, Vec::new());
        routes.extend(route.inner_v6.map(|a| (IpAddr::V6(a), 128)));
        routes.extend(route.prefix.map(|(base, len)| (IpAddr::V6(Ipv6Addr::from(base)), len)));
        routes.extend(route.inner_v4.map(|a| (IpAddr::V4(a), 32)));
        let mut route = route;
        if let (Some(tx), false) = (&self.announce, on_link) {
            route.announced = routes.clone();
            let _ = tx.send((true, routes.clone()));
        }
        t.routes.insert(endpoint, route);
        drop(t);
        if let (true, Some(tx), Some(local)) = (sink, &self.link_task, local) {
            let _ = tx.send(links::Cmd::Up {
                endpoint,
                local,
                routes: Vec::new(),
                sink: true,
                done: Box::new(|_| {}),
            });
        } else if let (true, Some(tx), Some(local)) = (on_link, &self.link_task, local) {
            // Marked kernel-carried at once: until the link is up the client's packets are
            // dropped rather than delivered twice (by the link and by the raw socket).
            if let Some(r) = lock(&self.table).routes.get_mut(&endpoint) {
                r.kernel = true;
            }
            let dp = Arc::downgrade(self);
            let done = Box::new(move |link: Option<String>| {
                if let Some(dp) = dp.upgrade()
                    && let Some(r) = lock(&dp.table).routes.get_mut(&endpoint)
                {
                    r.kernel = link.is_some();
                    r.link = link;
                }
            });
            let _ = tx.send(links::Cmd::Up {
                endpoint,
                local,
                routes,
                sink: false,
                done,
            });
        }
    }

    /// Removes a tunnel from the table, and its announced routes from the TUN devices.
    fn forget(&self, t: &mut Table, ep: &Endpoint) -> bool {
        let Some(r) = t.take(ep) else { return false };
        if let (Some(tx), false) = (&self.announce, r.announced.is_empty()) {
            let _ = tx.send((false, r.announced));
        }
        true
    }

    /// Deletes the endpoint's kernel link, if it has one.
    fn link_down(&self, endpoint: Endpoint) {
        if let (Some(tx), Endpoint::V4(_) | Endpoint::V6(_)) = (&self.link_task, endpoint) {
            let _ = tx.send(links::Cmd::Down(endpoint));
        }
    }

    pub fn remove(&self, endpoint: &Endpoint) -> bool {
        let removed = self.forget(&mut lock(&self.table), endpoint);
        if removed {
            self.link_down(*endpoint);
        }
        removed
    }

    pub fn carries(&self, endpoint: &Endpoint) -> bool {
        lock(&self.table).routes.contains_key(endpoint)
    }

    /// Stops carrying the tunnel of this inner address (the client's IPv6 address, or IPv4
    /// for v4v6), wherever its endpoint is; false if none carries it.
    pub fn remove_inner(&self, inner: IpAddr) -> bool {
        let ep = lock(&self.table).endpoint_of(inner);
        ep.is_some_and(|ep| self.remove(&ep))
    }

    /// What the tunnel of this inner address carried so far.
    pub fn traffic_of(&self, inner: IpAddr) -> Option<Traffic> {
        let t = lock(&self.table);
        let ep = t.endpoint_of(inner)?;
        t.routes.get(&ep).map(Route::traffic_read)
    }

    /// What every tunnel carried since the broker started, the ended ones included.
    pub fn traffic(&self) -> Traffic {
        lock(&self.table).total()
    }

    /// False once one of the datapath's tasks stopped (a TUN device or raw socket failed):
    /// the tunnels are no longer carried, though negotiations would still succeed.
    pub fn alive(&self) -> bool {
        self.tasks
            .lock()
            .map(|tasks| tasks.iter().all(|t| !t.is_finished()))
            .unwrap_or(false)
    }

    /// Checks a packet from a client's endpoint and marks the client alive; the packet is
    /// ours to deliver only if its inner source belongs to that client.
    fn admit(&self, endpoint: &Endpoint, pkt: &[u8]) -> bool {
        lock(&self.table).admit(endpoint, pkt)
    }

    /// Whether a data datagram that arrived on UDP listener `listener` from `peer` is a packet
    /// of that client's tunnel, to be written to the TUN (the client is then marked alive).
    pub fn admit_udp(&self, listener: usize, peer: SocketAddr, pkt: &[u8]) -> bool {
        valid_inner(pkt, true) && self.admit(&Endpoint::Udp { listener, peer }, pkt)
    }

    /// A receive batch for a UDP listener's data (merging TCP segments if our TUN takes them).
    pub fn inbox(&self, udp_gro: bool) -> Inbox {
        Inbox::new(udp_gro, self.tun6.offload())
    }

    /// The busy-poll state of a new receive loop (`busy_poll_us`).
    pub fn busy_poll(&self) -> BusyPoll {
        BusyPoll::new(self.busy_poll)
    }

    /// Writes the admitted packets of a UDP listener's batch to the IPv6 TUN.
    pub async fn deliver_udp(&self, inbox: &mut Inbox) {
        match inbox.deliver(&self.tun6).await {
            Ok((0, _)) => {}
            Ok(_) => self.answers_now(true).await,
            Err(e) => tracing::debug!(error = %e, "broker TUN write failed"),
        }
    }

    fn sock(&self, via: usize) -> Option<Sock<'_>> {
        if via >= VIA_RAW4 {
            self.raw4.get(via - VIA_RAW4).map(|(_, s)| Sock::Raw(s))
        } else if via >= VIA_RAW41 {
            self.raw41.get(via - VIA_RAW41).map(|(_, s)| Sock::Raw(s))
        } else {
            self.udp.get(via).map(|s| Sock::Udp(s))
        }
    }

    /// The socket numbers (protocol 41, protocol 4) of the raw sockets bound to `local`, else
    /// of the unbound ones.
    fn raw_via(&self, local: Option<IpAddr>) -> (usize, usize) {
        let i41 = self
            .raw41
            .iter()
            .position(|(a, _)| a.map(IpAddr::V4) == local)
            .or_else(|| self.raw41.iter().position(|(a, _)| a.is_none()))
            .unwrap_or(0);
        let i4 = self
            .raw4
            .iter()
            .position(|(a, _)| a.map(IpAddr::V6) == local)
            .or_else(|| self.raw4.iter().position(|(a, _)| a.is_none()))
            .unwrap_or(0);
        (VIA_RAW41 + i41, VIA_RAW4 + i4)
    }

    fn tun_out(&self, v6: bool) -> Option<(&Arc<TunDevice>, &tokio::sync::Mutex<Outbox>)> {
        if v6 {
            Some((&self.tun6, &self.out6))
        } else {
            self.tun4.as_ref().map(|t| (t, &self.out4))
        }
    }

    /// Packets the kernel routed to our TUN: to the client whose address or prefix they target.
    async fn tun_loop(self: Arc<Self>, v6: bool) {
        let Some((tun, out)) = self.tun_out(v6) else { return };
        let mut busy = self.busy_poll();
        loop {
            // Polling takes the outbox only when a receive path is not using it.
            let polled = busy
                .spin(None, || match out.try_lock() {
                    Ok(mut guard) => Ok(guard.read_now(tun)?.map(|n| (guard, n))),
                    Err(_) => Ok(None),
                })
                .await;
            let r = match polled {
                Ok(Some((mut out, n))) => self.forward_from_tun(&mut out, tun, n, v6).await,
                Err(e) => Err(e),
                Ok(None) => match tun.readable().await {
                    Ok(()) => {
                        let mut out = out.lock().await;
                        match out.try_read(tun).await {
                            Ok(Some(n)) => {
                                busy.traffic(Instant::now());
                                self.forward_from_tun(&mut out, tun, n, v6).await
                            }
                            Ok(None) => Ok(()),
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                },
            };
            if let Err(e) = r {
                tracing::error!(error = %e, "broker TUN read failed; datapath stops");
                return;
            }
        }
    }

    /// After writing to a TUN: what the kernel answered meanwhile goes out now, unless the
    /// device's own task is at it.
    async fn answers_now(&self, v6: bool) {
        let Some((tun, out)) = self.tun_out(v6) else { return };
        let Ok(mut out) = out.try_lock() else { return };
        let r = match out.read_now(tun) {
            Ok(Some(n)) => self.forward_from_tun(&mut out, tun, n, v6).await,
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, "broker TUN read failed");
        }
    }

    /// The read of `n` bytes waiting in `out` and what else the TUN has ready, each packet
    /// to its client. Errors are the TUN's; a failed send is logged and dropped.
    async fn forward_from_tun(&self, out: &mut Outbox, tun: &TunDevice, n: usize, v6: bool) -> io::Result<()> {
        let table = &self.table;
        out.gather(tun, n, v6, |o, first| {
            // All packets of one read share their destination.
            let pkt = o.segs.get(first);
            let (ep, local) = {
                let mut t = lock(table);
                let ep = if v6 {
                    v6_at(pkt, 24).and_then(|d| t.lookup_v6(d))
                } else {
                    v4_at(pkt, 16).and_then(|d| t.by_v4.get(&d).copied())
                };
                let route = ep.and_then(|ep| t.routes.get_mut(&ep));
                // Counted as handed to the socket (a send that fails later is rare).
                let local = route.map(|r| {
                    let sent = &o.segs.ranges[first..];
                    r.traffic.packets_to_clients += sent.len() as u64;
                    r.traffic.bytes_to_clients += sent.iter().map(|p| p.len() as u64).sum::<u64>();
                    r.local
                });
                (ep, local.flatten())
            };
            let (via41, via4) = self.raw_via(local);
            match ep {
                Some(Endpoint::Udp { listener, peer }) => o.queue(first, Some(peer), listener, true),
                Some(Endpoint::V4(a)) => o.queue(first, Some(SocketAddr::new(IpAddr::V4(a), 0)), via41, false),
                Some(Endpoint::V6(a)) => o.queue(first, Some(SocketAddr::new(IpAddr::V6(a), 0)), via4, false),
                None => {}
            }
        })
        .await?;
        if let Err(e) = out.flush(|via| self.sock(via)).await {
            tracing::debug!(error = %e, "tunnel send failed");
        }
        Ok(())
    }

    /// Protocol 41 (IPv6 in IPv4) or protocol 4 (IPv4 in IPv6) from clients.
    async fn raw_loop(self: Arc<Self>, sock: Arc<RawSocket>, v4v6: bool) {
        let tun = if v4v6 {
            self.tun4.clone()
        } else {
            Some(self.tun6.clone())
        };
        let Some(tun) = tun else { return };
        let mut inbox = Inbox::new(false, tun.offload());
        let mut busy = self.busy_poll();
        loop {
            let n = match inbox.recv_polled(Sock::Raw(&sock), &mut busy).await {
                Ok(n) => n,
                Err(e) if tsp_tunnel::transient(&e) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "broker raw socket failed; datapath stops");
                    return;
                }
            };
            for i in 0..n {
                let m = inbox.rx.get(i);
                let ep = match m.from.map(|a| a.ip()) {
                    Some(IpAddr::V4(a)) => Endpoint::V4(a),
                    Some(IpAddr::V6(a)) => Endpoint::V6(a),
                    None => continue,
                };
                if m.truncated {
                    continue;
                }
                let Some(r) = sock.inner(&inbox.rx.buf[m.range.clone()]) else {
                    continue;
                };
                let r = m.range.start + r.start..m.range.start + r.end;
                let pkt = &inbox.rx.buf[r.clone()];
                if valid_inner(pkt, !v4v6) && self.admit(&ep, pkt) {
                    inbox.push(r);
                }
            }
            match inbox.deliver(&tun).await {
                Ok((0, _)) => {}
                Ok(_) => self.answers_now(!v4v6).await,
                Err(e) => tracing::debug!(error = %e, "broker TUN write failed"),
            }
        }
    }

    /// Drops clients silent for five keepalive intervals (TSPS's rule); returns the inner
    /// addresses of the tunnels dropped, so their sessions can end too.
    pub fn sweep(&self) -> Vec<IpAddr> {
        let now = Instant::now();
        let mut t = lock(&self.table);
        let dead: Vec<Endpoint> = t
            .routes
            .iter()
            .filter(|(_, r)| now.duration_since(r.last_seen) > r.idle_limit)
            .map(|(ep, _)| *ep)
            .collect();
        let mut gone = Vec::new();
        for ep in dead {
            if let Some(r) = t.routes.get(&ep) {
                gone.extend(r.inner_v6.map(IpAddr::V6).or(r.inner_v4.map(IpAddr::V4)));
            }
            tracing::info!(?ep, "tunnel silent for five keepalive intervals; dropped");
            self.forget(&mut t, &ep);
            self.link_down(ep);
        }
        gone
    }
}

/// Routes of one tunnel to add (true) or delete (false) on the TUN devices.
type RouteChange = (bool, Vec<(IpAddr, u8)>);

/// Adds or deletes routes of single tunnels on the TUN devices, in order.
async fn announce_routes(mut rx: tokio::sync::mpsc::UnboundedReceiver<RouteChange>, idx6: u32, idx4: Option<u32>) {
    let nl = match Netlink::new() {
        Ok(nl) => nl,
        Err(e) => {
            tracing::warn!(error = %e, "cannot route single tunnels (rtnetlink); only the pools are routed");
            return;
        }
    };
    while let Some((add, routes)) = rx.recv().await {
        for (dst, plen) in routes {
            let Some(idx) = (if dst.is_ipv6() { Some(idx6) } else { idx4 }) else {
                continue;
            };
            let r = if add {
                nl.add_route(dst, plen, idx).await
            } else {
                nl.del_route(dst, plen, idx).await
            };
            match r {
                Ok(()) => tracing::debug!(%dst, plen, add, "tunnel route"),
                Err(e) => tracing::warn!(%dst, plen, add, error = %e, "tunnel route"),
            }
        }
    }
}

/// Which tunnels go on kernel links (sit for v6v4, ip6tnl for v4v6), from `datapath_kind` and
/// what the kernel has; logged once. `kernel` without the links is an error.
async fn choose_kind(cfg: &BrokerConfig, nl: &Netlink) -> io::Result<(bool, bool)> {
    let want6v4 = cfg.tunnel_modes.contains(&TunnelMode::V6V4);
    let want4v6 = cfg.tunnel_modes.contains(&TunnelMode::V4V6);
    if cfg.datapath_kind == DatapathKind::Userspace || !(want6v4 || want4v6) {
        tracing::info!("datapath: userspace (TUN + raw sockets) for every tunnel");
        return Ok((false, false));
    }
    let probe_name: String = format!("{}p", cfg.tun_name).chars().take(15).collect();
    let (sit, ip6tnl) = links::probe(nl, &probe_name, want6v4, want4v6).await;
    let missing: Vec<&str> = [(want6v4 && !sit, "sit"), (want4v6 && !ip6tnl, "ip6tnl")]
        .into_iter()
        .filter_map(|(m, k)| m.then_some(k))
        .collect();
    if cfg.datapath_kind == DatapathKind::Kernel && !missing.is_empty() {
        return Err(io::Error::other(format!(
            "datapath_kind = \"kernel\" but this kernel cannot create {} links",
            missing.join(" or ")
        )));
    }
    tracing::info!(
        v6v4 = if sit { "kernel sit link per tunnel" } else { "userspace" },
        v4v6 = if ip6tnl {
            "kernel ip6tnl link per tunnel"
        } else {
            "userspace"
        },
        v6udpv4 = "userspace",
        "datapath: {}",
        if sit || ip6tnl {
            "kernel links where the kernel has them"
        } else {
            "userspace (this kernel has no sit/ip6tnl links)"
        }
    );
    Ok((sit, ip6tnl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_endpoints_follow_the_listeners() {
        let cfg = |t: &str| BrokerConfig::parse(t, std::path::Path::new("t.toml")).unwrap();
        assert_eq!(tunnel_endpoints(&cfg("")), (vec![], vec![]), "wildcard: unbound");
        let c = cfg("listen = [\"192.0.2.11:3653\", \"[2001:db8:1::11]:3653\"]");
        assert_eq!(
            tunnel_endpoints(&c),
            (
                vec!["192.0.2.11".parse().unwrap()],
                vec!["2001:db8:1::11".parse().unwrap()]
            )
        );
        let c = cfg("server_ipv4 = \"192.0.2.12\"");
        assert_eq!(tunnel_endpoints(&c), (vec!["192.0.2.12".parse().unwrap()], vec![]));
    }

    #[test]
    fn prefix_match() {
        let base = u128::from("2001:db8:c000:1200::".parse::<Ipv6Addr>().unwrap());
        assert!(in_prefix("2001:db8:c000:12ff::1".parse().unwrap(), base, 56));
        assert!(!in_prefix("2001:db8:c000:1300::1".parse().unwrap(), base, 56));
        let mut t = Table::default();
        let ep = Endpoint::V4(Ipv4Addr::new(192, 0, 2, 2));
        t.by_prefix.push((base, 56, ep));
        t.routes.insert(
            ep,
            Route {
                inner_v6: None,
                prefix: Some((base, 56)),
                ..route_for_test(false)
            },
        );
        assert_eq!(t.lookup_v6("2001:db8:c000:1234::9".parse().unwrap()), Some(ep));
        assert!(t.take(&ep).is_some());
        assert_eq!(t.lookup_v6("2001:db8:c000:1234::9".parse().unwrap()), None);
    }

    #[test]
    fn kernel_carried_tunnels_are_kept_alive_but_not_delivered() {
        let ep = Endpoint::V4(Ipv4Addr::new(192, 0, 2, 2));
        let long_ago = Instant::now() - Duration::from_secs(60);
        let mut t = Table::default();
        t.routes.insert(
            ep,
            Route {
                last_seen: long_ago,
                ..route_for_test(true)
            },
        );
        let mut pkt = client_packet();
        assert!(!t.admit(&ep, &pkt), "the kernel link delivers it");
        assert!(t.routes[&ep].last_seen > long_ago, "but the client is alive");
        t.routes.get_mut(&ep).unwrap().kernel = false;
        assert!(t.admit(&ep, &pkt), "userspace: delivered");
        let other = Endpoint::V4(Ipv4Addr::new(192, 0, 2, 3));
        assert!(!t.admit(&other, &pkt), "another endpoint");
        pkt[23] = 3;
        t.routes.get_mut(&ep).unwrap().last_seen = long_ago;
        assert!(!t.admit(&ep, &pkt), "another inner source");
        assert_eq!(t.routes[&ep].last_seen, long_ago, "does not keep the client alive");
    }

    /// A kernel-carried tunnel's traffic is its link's counters, also once it has ended.
    #[test]
    fn kernel_links_are_counted_by_their_counters() {
        let text = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
tspbk3:   5000      40    0    0    0     0          0         0     8000      50    0    0    0     0       0          0
";
        let mut r = route_for_test(true);
        r.traffic.packets_from_clients = 2; // copies seen before the link was up
        r.link = Some("tspbk3".into());
        let t = r.traffic_now(Some(text));
        assert_eq!(
            (
                t.packets_from_clients,
                t.bytes_from_clients,
                t.packets_to_clients,
                t.bytes_to_clients
            ),
            (42, 5000, 50, 8000)
        );
        r.link = Some("tspbk4".into());
        assert_eq!(
            r.traffic_now(Some(text)).packets_to_clients,
            0,
            "a link gone: nothing more"
        );
        // Once up, the link counts what the raw socket's copies would count twice.
        r.link = Some("tspbk3".into());
        let ep = Endpoint::V4(Ipv4Addr::new(192, 0, 2, 2));
        let mut table = Table::default();
        table.routes.insert(ep, r);
        table.admit(&ep, &client_packet());
        assert_eq!(table.routes[&ep].traffic.packets_from_clients, 2);
    }

    /// An IPv6 packet from the test route's client (2001:db8:b::2).
    fn client_packet() -> Vec<u8> {
        let mut pkt = vec![0u8; 40];
        pkt[0] = 0x60;
        pkt[8..24].copy_from_slice(&"2001:db8:b::2".parse::<Ipv6Addr>().unwrap().octets());
        pkt
    }

    fn route_for_test(kernel: bool) -> Route {
        Route {
            inner_v6: Some("2001:db8:b::2".parse().unwrap()),
            prefix: None,
            inner_v4: None,
            last_seen: Instant::now(),
            idle_limit: Duration::ZERO,
            local: None,
            echo: crate::echo_limit::EchoBudget::new(None, Instant::now()),
            kernel,
            link: None,
            announced: Vec::new(),
            traffic: Traffic::default(),
        }
    }

    #[test]
    fn sources_are_checked() {
        let r = route_for_test(false);
        let mut pkt = client_packet();
        assert!(r.accepts_source(&pkt));
        pkt[23] = 3;
        assert!(!r.accepts_source(&pkt), "another client's address");
        assert!(!r.accepts_source(b"\x45garbage"));
    }
}
