//! Host configuration for the standalone client: what gogoc's Linux template did with `ip`,
//! `route` and radvd, done through rtnetlink and our own router advertisements — no shell.
//! Everything added is recorded and removed again on teardown.
//!
//! See docs/tsp-wire.md §8.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::netlink::{Applied, Netlink, NetlinkError};
use super::ra::{RaConfig, RaSender};
use tsp_proto::types::TunnelMode;
use tsp_proto::xml::Offer;

/// What to set up besides the tunnel address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSettings {
    /// Routes through the tunnel (gogoc: `::/0` and `2000::/3`; v4v6: `0.0.0.0/0`).
    pub routes: Vec<(IpAddr, u8)>,
    /// Router mode: the LAN interface that gets `<prefix>::1/64` and our advertisements.
    pub lan_interface: Option<String>,
}

impl HostSettings {
    /// gogoc's routes for a mode.
    pub fn default_routes(mode: TunnelMode) -> Vec<(IpAddr, u8)> {
        match mode {
            TunnelMode::V4V6 => vec![(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)],
            _ => vec![
                (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
                (IpAddr::V6(Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0)), 3),
            ],
        }
    }
}

/// The metric of the tunnel's routes (`settings.routes`). gogoc's template added `::/0` with
/// the kernel's default metric (1024), which collides (`EEXIST`) with a default route a
/// native IPv6 network already has (router advertisements install theirs with 1024 too), so
/// tspc failed and renegotiated for ever. With a metric of our own both coexist: a tunnel the
/// user asked for should carry the traffic, so ours is lower (preferred) than the kernel's
/// default 1024 — an RA-learned default route loses to it. A route someone set with a lower
/// metric still (say NetworkManager's 100 on an Ethernet) wins for `::/0`, but then
/// `2000::/3`, more specific, still sends all global unicast through the tunnel, as gogoc did.
/// If a route with exactly this metric exists, the next free metrics are tried.
pub const TUNNEL_ROUTE_METRIC: u32 = 512;

/// How many metrics after [`TUNNEL_ROUTE_METRIC`] are tried when one is taken.
const METRIC_TRIES: u32 = 16;

/// The configuration in force; `remove` takes it back.
#[derive(Debug)]
pub struct Configured {
    applied: Applied,
    ra: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

/// The /64 advertised on the LAN: the first /64 of the delegated prefix.
pub fn lan_prefix(offer: &Offer) -> Option<Ipv6Addr> {
    match offer.prefix?.addr {
        IpAddr::V6(p) => Some(p),
        IpAddr::V4(_) => None,
    }
}

/// Configures the tunnel interface `ifindex` for `offer` and, in router mode, the LAN.
pub async fn configure(
    nl: &Netlink,
    ifindex: u32,
    offer: &Offer,
    settings: &HostSettings,
) -> Result<Configured, NetlinkError> {
    let mut applied = Applied::default();
    let result = apply(nl, &mut applied, ifindex, offer, settings).await;
    settle(nl, applied, result).await
}

type RaTask = Option<(watch::Sender<bool>, JoinHandle<()>)>;

/// The configuration in force, or — after a failure — nothing half-done left behind.
async fn settle(
    nl: &Netlink,
    applied: Applied,
    result: Result<RaTask, NetlinkError>,
) -> Result<Configured, NetlinkError> {
    match result {
        Ok(ra) => Ok(Configured { applied, ra }),
        Err(e) => {
            for e2 in applied.undo(nl).await {
                tracing::warn!(error = %e2, "cleanup after a failed configuration");
            }
            Err(e)
        }
    }
}

async fn apply(
    nl: &Netlink,
    applied: &mut Applied,
    ifindex: u32,
    offer: &Offer,
    settings: &HostSettings,
) -> Result<RaTask, NetlinkError> {
    match offer.mode {
        TunnelMode::V4V6 => {
            applied
                .apply_address(nl, ifindex, IpAddr::V4(offer.client_v4), 32)
                .await?
        }
        _ => {
            applied
                .apply_address(nl, ifindex, IpAddr::V6(offer.client_v6), 128)
                .await?
        }
    }
    // The broker's tunnel address is reached through the tunnel even without a default route.
    match offer.mode {
        TunnelMode::V4V6 => {
            applied
                .apply_route(nl, IpAddr::V4(offer.server_v4), 32, ifindex)
                .await?
        }
        _ => {
            applied
                .apply_route(nl, IpAddr::V6(offer.server_v6), 128, ifindex)
                .await?
        }
    }
    for (dst, len) in &settings.routes {
        apply_route_beside(nl, applied, *dst, *len, ifindex).await?;
    }
    match &settings.lan_interface {
        Some(lan) => apply_lan(nl, applied, offer, lan).await,
        None => Ok(None),
    }
}

/// Adds `dst/len dev ifindex` with [`TUNNEL_ROUTE_METRIC`] (or the next free metric) beside
/// any route to the same destination that is already there; only ours is recorded, so
/// teardown deletes ours (by device and metric) and leaves the other untouched.
async fn apply_route_beside(
    nl: &Netlink,
    applied: &mut Applied,
    dst: IpAddr,
    len: u8,
    ifindex: u32,
) -> Result<(), NetlinkError> {
    let mut metric = TUNNEL_ROUTE_METRIC;
    loop {
        match applied
            .apply_route_with_metric(nl, dst, len, ifindex, Some(metric))
            .await
        {
            Err(e) if e.errno() == Some(libc::EEXIST) && metric < TUNNEL_ROUTE_METRIC + METRIC_TRIES => {
                tracing::debug!(%dst, len, metric, "a route with this metric exists; trying the next metric");
                metric += 1;
            }
            r => return r,
        }
    }
}

/// Router mode without the tunnel's own configuration (NetworkManager configures the tunnel
/// interface; the delegated prefix's LAN side is ours): `<prefix>::1/64` on `lan`,
/// forwarding, and router advertisements. Taken back by [`Configured::remove`].
pub async fn configure_lan(nl: &Netlink, offer: &Offer, lan: &str) -> Result<Configured, NetlinkError> {
    let mut applied = Applied::default();
    let result = apply_lan(nl, &mut applied, offer, lan).await;
    settle(nl, applied, result).await
}

async fn apply_lan(nl: &Netlink, applied: &mut Applied, offer: &Offer, lan: &str) -> Result<RaTask, NetlinkError> {
    let (Some(prefix), Some(p)) = (lan_prefix(offer), offer.prefix) else {
        return Ok(None);
    };
    let lan_idx = nl
        .link_index(lan)
        .await?
        .ok_or_else(|| NetlinkError::NoSuchLink(lan.to_owned()))?;
    applied.apply_forwarding(true)?;
    // A prefix larger than the /64 we advertise: the rest must not loop back into the tunnel.
    if p.len < 64 {
        applied.apply_blackhole(nl, IpAddr::V6(prefix), p.len).await?;
    }
    let router = Ipv6Addr::from(u128::from(prefix) | 1);
    applied.apply_address(nl, lan_idx, IpAddr::V6(router), 64).await?;
    // Router advertisements must come from the LAN interface's link-local address.
    let link_local = nl
        .addresses(lan_idx)
        .await?
        .into_iter()
        .find_map(|(a, _)| match a {
            IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => Some(v6),
            _ => None,
        })
        .ok_or_else(|| NetlinkError::NoSuchLink(format!("{lan} (no IPv6 link-local address to advertise from)")))?;
    let cfg = RaConfig {
        source: link_local,
        prefix,
        prefix_len: 64,
        mtu: u32::from(super::TUNNEL_MTU),
        rdnss: offer.client_dns_server,
        router_lifetime: 1800,
        valid_lifetime: 86_400,
        preferred_lifetime: 14_400,
        source_mac: None,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let ifname = lan.to_owned();
    let task = tokio::spawn(async move {
        if let Err(e) = RaSender::run(cfg, &ifname, stop_rx).await {
            tracing::error!(interface = %ifname, error = %e, "router advertisements stopped");
        }
    });
    tracing::info!(lan = %lan, prefix = %prefix, "router mode: advertising {prefix}/64");
    Ok(Some((stop_tx, task)))
}

impl Configured {
    /// Stops advertising (a last RA with router lifetime 0) and removes what was added.
    pub async fn remove(self, nl: &Netlink) {
        if let Some((stop, task)) = self.ra {
            let _ = stop.send(true);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), task).await;
        }
        for e in self.applied.undo(nl).await {
            tracing::warn!(error = %e, "teardown");
        }
    }
}
