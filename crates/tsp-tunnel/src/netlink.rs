//! rtnetlink plumbing for the tunnel: links, addresses, routes, the IPv6 forwarding sysctl, kernel
//! tunnel links (sit, ip6tnl) and an address/route/link monitor.
//!
//! Everything the tunnel configures goes through [`Applied`], which records each change so that
//! teardown removes exactly what this process added (gogoc's template deleted `::/0` and
//! `2000::/3` unconditionally; we do not touch what we did not add).
//!
//! All functions must run inside a tokio runtime: the netlink connection is a spawned task.
//! Sockets (and `/proc/sys/net`) belong to the network namespace of the thread that opens them.
//!
//! See docs/tsp-wire.md §8.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::channel::mpsc::UnboundedReceiver;
use futures::{Stream, StreamExt, TryStreamExt};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::{Ip6TunnelFlags, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope, RouteType};
use rtnetlink::packet_route::{IpProtocol, RouteNetlinkMessage};
use rtnetlink::sys::SocketAddr;
use rtnetlink::{AddressMessageBuilder, Handle, LinkIp6Tnl, LinkSit, LinkUnspec, MulticastGroup, RouteMessageBuilder};
use tokio::task::JoinHandle;

/// `net.ipv6.conf.all.forwarding`: gogoc's router mode set it with `sysctl -w`.
const FORWARDING_V6: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// Errors from the netlink layer. Each message says what was attempted and on which interface,
/// address or route.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink needs a running tokio runtime, and none is current")]
    NoRuntime,
    #[error("cannot open an rtnetlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("{what}: {}", describe(.source))]
    Request {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{what}: the kernel sent no answer")]
    NoAnswer { what: String },
    #[error("invalid prefix {addr}/{plen}: the prefix length exceeds the address length")]
    InvalidPrefix { addr: IpAddr, plen: u8 },
    #[error("sysctl {path}: {source}")]
    Sysctl {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("sysctl {path}: unexpected value {value:?}")]
    SysctlValue { path: &'static str, value: String },
    #[error("no link named {0}")]
    NoSuchLink(String),
    #[error("link {name} exists but is of kind {found}, not {expected}: not ours, leaving it alone")]
    ForeignLink {
        name: String,
        found: String,
        expected: String,
    },
}

impl NetlinkError {
    /// The positive errno the kernel answered with, if this is a kernel refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => m.code.map(|c| -c.get()),
            NetlinkError::Sysctl { source, .. } | NetlinkError::Socket(source) => source.raw_os_error(),
            _ => None,
        }
    }

    /// The object to remove is already gone (link deleted, address or route removed by the
    /// kernel with its link): for teardown that is success.
    fn is_already_gone(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENODEV | libc::EADDRNOTAVAIL | libc::ESRCH | libc::ENOENT)
        )
    }
}

/// Netlink error messages are kernel errnos; show them like `ip` does ("File exists (os error 17)").
fn describe(e: &rtnetlink::Error) -> String {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
        other => other.to_string(),
    }
}

/// Creating a kernel tunnel link (sit, ip6tnl) failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelLinkError {
    /// The kernel has no driver for this link type (EOPNOTSUPP, iproute2's "Unknown device type"):
    /// the caller should fall back to a userspace datapath (TUN + raw socket).
    #[error("the kernel cannot create this tunnel link type (EOPNOTSUPP); a userspace datapath is needed")]
    NotSupported,
    #[error(transparent)]
    Other(NetlinkError),
}

impl KernelLinkError {
    /// Classify a failed link creation: EOPNOTSUPP (or the same refusal spelled as iproute2's
    /// "Unknown device type") means the driver is absent; anything else is a real error.
    fn from_create(e: NetlinkError) -> Self {
        let unsupported = e.errno() == Some(libc::EOPNOTSUPP)
            || matches!(&e, NetlinkError::Request { source, .. } if source.to_string().contains("Unknown device type"));
        if unsupported {
            KernelLinkError::NotSupported
        } else {
            KernelLinkError::Other(e)
        }
    }
}

/// An open rtnetlink connection. Dropping it stops the connection task.
pub struct Netlink {
    handle: Handle,
    task: JoinHandle<()>,
}

impl fmt::Debug for Netlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netlink").finish_non_exhaustive()
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        // netlink-proto's connection future never ends on its own while its unsolicited-message
        // channel is open, so stop it explicitly.
        self.task.abort();
    }
}

fn full_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

/// Zero the host bits: the kernel rejects IPv4 routes with host bits set and silently masks IPv6
/// ones; masking here keeps the add, the record and the delete identical.
fn masked(addr: IpAddr, plen: u8) -> Result<IpAddr, NetlinkError> {
    if plen > full_len(addr) {
        return Err(NetlinkError::InvalidPrefix { addr, plen });
    }
    Ok(match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(plen)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(plen)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    })
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The local address of an address message: `IFA_LOCAL` when present (IPv4, and point-to-point
/// IPv6 where `IFA_ADDRESS` is the peer), else `IFA_ADDRESS`.
fn local_addr(msg: &AddressMessage) -> Option<IpAddr> {
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(a) => return Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            _ => {}
        }
    }
    address
}

fn link_name_of(msg: &LinkMessage) -> Option<&str> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn link_kind_of(msg: &LinkMessage) -> Option<String> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k.to_string()),
            _ => None,
        }),
        _ => None,
    })
}

fn address_message(idx: u32, addr: IpAddr, plen: u8) -> AddressMessage {
    match addr {
        IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
            .index(idx)
            .address(a, plen)
            .build(),
        IpAddr::V6(a) => AddressMessageBuilder::<Ipv6Addr>::new()
            .index(idx)
            .address(a, plen)
            .build(),
    }
}

/// A unicast route `dst/plen dev idx [metric m]`; the same message serves add and delete.
fn device_route(dst: IpAddr, plen: u8, idx: u32, metric: Option<u32>) -> Result<RouteMessage, NetlinkError> {
    let dst = masked(dst, plen)?;
    let mut b = match dst {
        // `ip route add X dev Y` uses link scope for IPv4 device routes; do the same.
        IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(a, plen)
            .scope(RouteScope::Link)
            .output_interface(idx)
            .build(),
        IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(a, plen)
            .output_interface(idx)
            .build(),
    };
    if let Some(m) = metric {
        b.attributes.push(RouteAttribute::Priority(m));
    }
    Ok(b)
}

fn blackhole_route(dst: IpAddr, plen: u8) -> Result<RouteMessage, NetlinkError> {
    let dst = masked(dst, plen)?;
    Ok(match dst {
        IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(a, plen)
            .kind(RouteType::BlackHole)
            .build(),
        IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(a, plen)
            .kind(RouteType::BlackHole)
            .build(),
    })
}

impl Netlink {
    /// Open a netlink socket and spawn its connection task on the current tokio runtime.
    pub fn new() -> Result<Self, NetlinkError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| NetlinkError::NoRuntime)?;
        let (conn, handle, _unsolicited) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        let task = rt.spawn(conn);
        Ok(Netlink { handle, task })
    }

    /// The raw rtnetlink handle, for requests this module does not wrap. It stops working when
    /// this `Netlink` is dropped.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// "tun0 (ifindex 5)" for error messages; only looked up on the error path.
    async fn link_label(&self, idx: u32) -> String {
        let mut links = self.handle.link().get().match_index(idx).execute();
        match links.try_next().await {
            Ok(Some(msg)) => match link_name_of(&msg) {
                Some(name) => format!("{name} (ifindex {idx})"),
                None => format!("ifindex {idx}"),
            },
            _ => format!("ifindex {idx}"),
        }
    }

    async fn fail_on_link(&self, what: impl FnOnce(String) -> String, idx: u32, e: rtnetlink::Error) -> NetlinkError {
        NetlinkError::Request {
            what: what(self.link_label(idx).await),
            source: e,
        }
    }

    async fn get_link(&self, idx: u32) -> Result<LinkMessage, NetlinkError> {
        let mut links = self.handle.link().get().match_index(idx).execute();
        let what = || format!("look up link ifindex {idx}");
        match links.try_next().await {
            Ok(Some(msg)) => Ok(msg),
            Ok(None) => Err(NetlinkError::NoAnswer { what: what() }),
            Err(source) => Err(NetlinkError::Request { what: what(), source }),
        }
    }

    /// The index of the link called `name`, or `None` if there is none.
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>, NetlinkError> {
        let mut links = self.handle.link().get().match_name(name).execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(msg.header.index)),
            Ok(None) => Ok(None),
            Err(source) => {
                let e = NetlinkError::Request {
                    what: format!("look up link {name}"),
                    source,
                };
                if e.errno() == Some(libc::ENODEV) {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The link's name.
    pub async fn link_name(&self, idx: u32) -> Result<Option<String>, NetlinkError> {
        Ok(link_name_of(&self.get_link(idx).await?).map(str::to_owned))
    }

    /// The link's `IFLA_INFO_KIND` ("sit", "tun", "veth", …); `None` for links without one
    /// (loopback, physical NICs). An unknown index is an error.
    pub async fn link_kind(&self, idx: u32) -> Result<Option<String>, NetlinkError> {
        Ok(link_kind_of(&self.get_link(idx).await?))
    }

    /// Whether the link is NOARP (point-to-point tunnels); unknown counts as no.
    async fn link_is_noarp(&self, idx: u32) -> bool {
        self.get_link(idx)
            .await
            .is_ok_and(|m| m.header.flags.contains(LinkFlags::Noarp))
    }

    /// The link's MTU and whether it is administratively up.
    pub async fn link_mtu_up(&self, idx: u32) -> Result<(u32, bool), NetlinkError> {
        let msg = self.get_link(idx).await?;
        let mtu = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
            .unwrap_or(0);
        let up = msg.header.flags.contains(LinkFlags::Up);
        Ok((mtu, up))
    }

    /// Set the MTU and bring the link up (gogoc: `ifconfig $IF up; ifconfig $IF mtu 1280`).
    pub async fn set_up_mtu(&self, idx: u32, mtu: u16) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(idx).mtu(u32::from(mtu)).up().build();
        match self.handle.link().set(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) => Err(self
                .fail_on_link(|l| format!("set MTU {mtu} and up on {l}"), idx, e)
                .await),
        }
    }

    /// Bring the link down.
    pub async fn set_down(&self, idx: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(idx).down().build();
        match self.handle.link().set(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail_on_link(|l| format!("set {l} down"), idx, e).await),
        }
    }

    /// Delete the link.
    pub async fn delete_link(&self, idx: u32) -> Result<(), NetlinkError> {
        // Resolve the name first: after the deletion it cannot be looked up for a message.
        let label = self.link_label(idx).await;
        self.handle
            .link()
            .del(idx)
            .execute()
            .await
            .map_err(|source| NetlinkError::Request {
                what: format!("delete link {label}"),
                source,
            })
    }

    /// Add `addr/plen` to the link. IPv6 addresses on NOARP links (tun, sit) are added without
    /// DAD, so they can be bound at once; the kernel still installs the address's local route
    /// from a workqueue a moment later, so a packet arriving in that instant can be dropped.
    pub async fn add_address(&self, idx: u32, addr: IpAddr, plen: u8) -> Result<(), NetlinkError> {
        if plen > full_len(addr) {
            return Err(NetlinkError::InvalidPrefix { addr, plen });
        }
        let mut req = self.handle.address().add(idx, addr, plen);
        if addr.is_ipv6() && self.link_is_noarp(idx).await {
            // The kernel skips DAD on NOARP links (tun, sit, ip6tnl) anyway, but only after a
            // workqueue pass; until then the address is tentative and cannot be bound or used
            // as a source. NODAD makes it usable as soon as this call returns.
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) => Err(self
                .fail_on_link(|l| format!("add address {addr}/{plen} on {l}"), idx, e)
                .await),
        }
    }

    /// Remove `addr/plen` from the link.
    pub async fn del_address(&self, idx: u32, addr: IpAddr, plen: u8) -> Result<(), NetlinkError> {
        if plen > full_len(addr) {
            return Err(NetlinkError::InvalidPrefix { addr, plen });
        }
        let msg = address_message(idx, addr, plen);
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) => Err(self
                .fail_on_link(|l| format!("remove address {addr}/{plen} from {l}"), idx, e)
                .await),
        }
    }

    /// The addresses on the link (both families), as the kernel reports them.
    pub async fn addresses(&self, idx: u32) -> Result<Vec<(IpAddr, u8)>, NetlinkError> {
        let mut req = self.handle.address().get().set_link_index_filter(idx);
        // Ask the kernel to filter too (honoured under strict checking, harmless otherwise).
        req.message_mut().header.index = idx;
        let msgs: Vec<AddressMessage> = match req.execute().try_collect().await {
            Ok(m) => m,
            Err(e) => return Err(self.fail_on_link(|l| format!("list addresses of {l}"), idx, e).await),
        };
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == idx)
            .filter_map(|m| local_addr(m).map(|a| (a, m.header.prefix_len)))
            .collect())
    }

    /// Add the route `dst/plen dev idx` with the kernel's default metric (IPv6 1024, IPv4 0).
    /// Host bits of `dst` are cleared. An identical route already present is `EEXIST`.
    pub async fn add_route(&self, dst: IpAddr, plen: u8, idx: u32) -> Result<(), NetlinkError> {
        self.add_route_with_metric(dst, plen, idx, None).await
    }

    /// [`Netlink::add_route`] with an explicit metric (`None`: the kernel's default).
    pub async fn add_route_with_metric(
        &self,
        dst: IpAddr,
        plen: u8,
        idx: u32,
        metric: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let msg = device_route(dst, plen, idx, metric)?;
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) => Err(self
                .fail_on_link(|l| format!("add route {dst}/{plen} dev {l}"), idx, e)
                .await),
        }
    }

    /// Delete the route `dst/plen dev idx`, whatever its metric.
    pub async fn del_route(&self, dst: IpAddr, plen: u8, idx: u32) -> Result<(), NetlinkError> {
        self.del_route_with_metric(dst, plen, idx, None).await
    }

    /// Delete the route `dst/plen dev idx` with that metric (`None`: any metric).
    pub async fn del_route_with_metric(
        &self,
        dst: IpAddr,
        plen: u8,
        idx: u32,
        metric: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let msg = device_route(dst, plen, idx, metric)?;
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) => Err(self
                .fail_on_link(|l| format!("delete route {dst}/{plen} dev {l}"), idx, e)
                .await),
        }
    }

    /// Add a blackhole route for `dst/plen`: a delegated prefix that is not a /64 is routed
    /// nowhere except where more specific routes say (gogoc's template added it via `lo`).
    pub async fn add_blackhole_route(&self, dst: IpAddr, plen: u8) -> Result<(), NetlinkError> {
        let msg = blackhole_route(dst, plen)?;
        self.handle
            .route()
            .add(msg)
            .execute()
            .await
            .map_err(|source| NetlinkError::Request {
                what: format!("add blackhole route {dst}/{plen}"),
                source,
            })
    }

    /// Delete the blackhole route for `dst/plen`.
    pub async fn del_blackhole_route(&self, dst: IpAddr, plen: u8) -> Result<(), NetlinkError> {
        let msg = blackhole_route(dst, plen)?;
        self.handle
            .route()
            .del(msg)
            .execute()
            .await
            .map_err(|source| NetlinkError::Request {
                what: format!("delete blackhole route {dst}/{plen}"),
                source,
            })
    }

    /// `ip route get dst`: the preferred source address and output link the kernel would use to
    /// reach `dst`, or `None` when `dst` is unreachable. Used to notice roaming (the source
    /// address towards the broker changed).
    pub async fn route_get(&self, dst: IpAddr) -> Result<Option<(IpAddr, u32)>, NetlinkError> {
        let msg = match dst {
            IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(a, 32).build(),
            IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(a, 128)
                .build(),
        };
        let mut answers = self.handle.route().get(msg).execute();
        let route = match answers.try_next().await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(None),
            Err(source) => {
                let e = NetlinkError::Request {
                    what: format!("look up the route to {dst}"),
                    source,
                };
                return match e.errno() {
                    Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EACCES) => Ok(None),
                    _ => Err(e),
                };
            }
        };
        if !matches!(route.header.kind, RouteType::Unicast | RouteType::Local) {
            return Ok(None);
        }
        let mut src = None;
        let mut oif = None;
        for attr in &route.attributes {
            match attr {
                RouteAttribute::PrefSource(a) => src = route_addr(a),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        Ok(src.zip(oif))
    }

    /// The current value of `net.ipv6.conf.all.forwarding`.
    pub fn forwarding_v6(&self) -> Result<bool, NetlinkError> {
        read_forwarding_v6()
    }

    /// Set `net.ipv6.conf.all.forwarding` (router mode); returns the previous value.
    pub fn set_forwarding_v6(&self, enabled: bool) -> Result<bool, NetlinkError> {
        write_forwarding_v6(enabled)
    }

    async fn create_link(&self, name: &str, kind: &'static str, msg: LinkMessage) -> Result<u32, KernelLinkError> {
        if let Err(source) = self.handle.link().add(msg).execute().await {
            let e = KernelLinkError::from_create(NetlinkError::Request {
                what: format!("create {kind} link {name}"),
                source,
            });
            if matches!(e, KernelLinkError::NotSupported) {
                tracing::info!(
                    link = name,
                    kind,
                    "kernel has no {kind} support; userspace datapath needed"
                );
            }
            return Err(e);
        }
        match self.link_index(name).await.map_err(KernelLinkError::Other)? {
            Some(idx) => Ok(idx),
            None => Err(KernelLinkError::Other(NetlinkError::NoAnswer {
                what: format!("find {kind} link {name} after creating it"),
            })),
        }
    }

    /// Create a 6in4 `sit` link (v6v4; gogoc: `ip tunnel add $IF mode sit ttl 64 remote $SERVER`).
    /// The link is left down; returns its index.
    pub async fn create_sit(
        &self,
        name: &str,
        local: Option<Ipv4Addr>,
        remote: Ipv4Addr,
        ttl: u8,
    ) -> Result<u32, KernelLinkError> {
        let mut b = LinkSit::new(name).remote(remote).ttl(ttl);
        if let Some(l) = local {
            b = b.local(l);
        }
        self.create_link(name, "sit", b.build()).await
    }

    /// Create an `ip6tnl` link in mode ipip6 (IPv4 inside IPv6, v4v6). The encapsulation-limit
    /// option is disabled so that packets are plain IPv6 + IPv4 (next header 4), as a userspace
    /// proto-4 peer expects. The link is left down; returns its index.
    pub async fn create_ip6tnl_ipip(
        &self,
        name: &str,
        local: Option<Ipv6Addr>,
        remote: Ipv6Addr,
    ) -> Result<u32, KernelLinkError> {
        let mut b = LinkIp6Tnl::new(name)
            .mode(IpProtocol::Ipip)
            .remote(remote)
            .set_flag(Ip6TunnelFlags::IgnEncapLimit, true);
        if let Some(l) = local {
            b = b.local(l);
        }
        self.create_link(name, "ip6tnl", b.build()).await
    }
}

fn read_forwarding_v6() -> Result<bool, NetlinkError> {
    let value = std::fs::read_to_string(FORWARDING_V6).map_err(|source| NetlinkError::Sysctl {
        path: FORWARDING_V6,
        source,
    })?;
    match value.trim() {
        "0" => Ok(false),
        "1" => Ok(true),
        other => Err(NetlinkError::SysctlValue {
            path: FORWARDING_V6,
            value: other.to_owned(),
        }),
    }
}

/// Write the sysctl if it differs; returns the previous value.
fn write_forwarding_v6(enabled: bool) -> Result<bool, NetlinkError> {
    let previous = read_forwarding_v6()?;
    if previous != enabled {
        std::fs::write(FORWARDING_V6, if enabled { "1\n" } else { "0\n" }).map_err(|source| NetlinkError::Sysctl {
            path: FORWARDING_V6,
            source,
        })?;
    }
    Ok(previous)
}

/// Delete a leftover link called `name` if it is of `expected_kind` (e.g. a "sit" left by a
/// killed process). Returns whether one was deleted. A link of another kind (or of no kind) with
/// that name is never touched: that is an error.
pub async fn remove_stale_link(nl: &Netlink, name: &str, expected_kind: &str) -> Result<bool, NetlinkError> {
    let Some(idx) = nl.link_index(name).await? else {
        return Ok(false);
    };
    let kind = nl.link_kind(idx).await?;
    if kind.as_deref() != Some(expected_kind) {
        return Err(NetlinkError::ForeignLink {
            name: name.to_owned(),
            found: kind.unwrap_or_else(|| "(none)".to_owned()),
            expected: expected_kind.to_owned(),
        });
    }
    tracing::info!(link = name, kind = expected_kind, "removing stale link");
    match nl.delete_link(idx).await {
        Ok(()) => Ok(true),
        // Raced with its owner going away: the goal is reached.
        Err(e) if e.errno() == Some(libc::ENODEV) => Ok(true),
        Err(e) => Err(e),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    Address {
        idx: u32,
        addr: IpAddr,
        plen: u8,
    },
    Route {
        dst: IpAddr,
        plen: u8,
        idx: u32,
        metric: Option<u32>,
    },
    Blackhole {
        dst: IpAddr,
        plen: u8,
    },
    Forwarding {
        previous: bool,
    },
    Link {
        idx: u32,
    },
}

/// What this process changed in the kernel, in order, so that [`Applied::undo`] removes exactly
/// that, in reverse order, and nothing that was there before. Dropping it without `undo` leaves
/// the changes in place (and logs a warning).
#[derive(Debug, Default)]
#[must_use = "call undo() at teardown, or the configuration stays in place"]
pub struct Applied {
    changes: Vec<Change>,
}

impl Applied {
    pub fn new() -> Self {
        Self::default()
    }

    /// Nothing recorded.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Number of recorded changes.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Add an address and record it. If the link already has it, nothing is recorded: it is
    /// not ours to remove at teardown.
    pub async fn apply_address(&mut self, nl: &Netlink, idx: u32, addr: IpAddr, plen: u8) -> Result<(), NetlinkError> {
        match nl.add_address(idx, addr, plen).await {
            Ok(()) => {
                self.changes.push(Change::Address { idx, addr, plen });
                Ok(())
            }
            Err(e) if e.errno() == Some(libc::EEXIST) => {
                tracing::debug!(%addr, plen, idx, "address already present; leaving it to its owner");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Add a route with the default metric and record it. An existing identical route is an
    /// error (`EEXIST`): it may belong to someone else and must not be removed at teardown.
    pub async fn apply_route(&mut self, nl: &Netlink, dst: IpAddr, plen: u8, idx: u32) -> Result<(), NetlinkError> {
        self.apply_route_with_metric(nl, dst, plen, idx, None).await
    }

    /// [`Applied::apply_route`] with an explicit metric.
    pub async fn apply_route_with_metric(
        &mut self,
        nl: &Netlink,
        dst: IpAddr,
        plen: u8,
        idx: u32,
        metric: Option<u32>,
    ) -> Result<(), NetlinkError> {
        nl.add_route_with_metric(dst, plen, idx, metric).await?;
        let dst = masked(dst, plen)?;
        self.changes.push(Change::Route { dst, plen, idx, metric });
        Ok(())
    }

    /// Add a blackhole route and record it.
    pub async fn apply_blackhole(&mut self, nl: &Netlink, dst: IpAddr, plen: u8) -> Result<(), NetlinkError> {
        nl.add_blackhole_route(dst, plen).await?;
        let dst = masked(dst, plen)?;
        self.changes.push(Change::Blackhole { dst, plen });
        Ok(())
    }

    /// Set IPv6 forwarding and record the previous value, if it changed.
    pub fn apply_forwarding(&mut self, enabled: bool) -> Result<(), NetlinkError> {
        let previous = write_forwarding_v6(enabled)?;
        if previous != enabled {
            self.changes.push(Change::Forwarding { previous });
        }
        Ok(())
    }

    /// Record a link this process created (e.g. a sit) so that teardown deletes it. Do not adopt
    /// a TUN: it vanishes when its file descriptor closes.
    pub fn adopt_link(&mut self, idx: u32) {
        self.changes.push(Change::Link { idx });
    }

    /// Undo every recorded change in reverse order. Best effort: keeps going after a failure and
    /// returns the failures. Something already gone (e.g. routes removed with their link) counts
    /// as undone.
    pub async fn undo(mut self, nl: &Netlink) -> Vec<NetlinkError> {
        let mut failures = Vec::new();
        for change in std::mem::take(&mut self.changes).into_iter().rev() {
            let result = match change {
                Change::Address { idx, addr, plen } => nl.del_address(idx, addr, plen).await,
                Change::Route { dst, plen, idx, metric } => nl.del_route_with_metric(dst, plen, idx, metric).await,
                Change::Blackhole { dst, plen } => nl.del_blackhole_route(dst, plen).await,
                Change::Forwarding { previous } => write_forwarding_v6(previous).map(|_| ()),
                Change::Link { idx } => nl.delete_link(idx).await,
            };
            match result {
                Ok(()) => {}
                Err(e) if e.is_already_gone() => tracing::debug!("teardown: already gone: {e}"),
                Err(e) => {
                    tracing::warn!("teardown: {e}");
                    failures.push(e);
                }
            }
        }
        failures
    }
}

impl Drop for Applied {
    fn drop(&mut self) {
        if !self.changes.is_empty() {
            tracing::warn!(
                changes = self.changes.len(),
                "tunnel configuration dropped without undo; it stays in the kernel"
            );
        }
    }
}

/// A change seen by [`address_events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkAddrEvent {
    AddressAdded { idx: u32, addr: IpAddr, plen: u8 },
    AddressRemoved { idx: u32, addr: IpAddr, plen: u8 },
    RouteChanged,
    LinkChanged { idx: u32 },
}

type Unsolicited = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

/// The stream returned by [`address_events`]. It ends if the monitor socket fails (e.g. the
/// kernel dropped events on overflow); re-subscribe and re-check then. Dropping it closes the
/// socket.
pub struct AddressEvents {
    rx: Unsolicited,
    task: JoinHandle<()>,
}

impl fmt::Debug for AddressEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddressEvents").finish_non_exhaustive()
    }
}

impl Drop for AddressEvents {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn to_event(msg: NetlinkMessage<RouteNetlinkMessage>) -> Option<LinkAddrEvent> {
    let NetlinkPayload::InnerMessage(inner) = msg.payload else {
        return None;
    };
    match inner {
        RouteNetlinkMessage::NewAddress(m) => local_addr(&m).map(|addr| LinkAddrEvent::AddressAdded {
            idx: m.header.index,
            addr,
            plen: m.header.prefix_len,
        }),
        RouteNetlinkMessage::DelAddress(m) => local_addr(&m).map(|addr| LinkAddrEvent::AddressRemoved {
            idx: m.header.index,
            addr,
            plen: m.header.prefix_len,
        }),
        RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_) => Some(LinkAddrEvent::RouteChanged),
        RouteNetlinkMessage::NewLink(m) | RouteNetlinkMessage::DelLink(m) => {
            Some(LinkAddrEvent::LinkChanged { idx: m.header.index })
        }
        _ => None,
    }
}

impl Stream for AddressEvents {
    type Item = LinkAddrEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<LinkAddrEvent>> {
        loop {
            match self.rx.poll_next_unpin(cx) {
                Poll::Ready(Some((msg, _))) => {
                    if let Some(ev) = to_event(msg) {
                        return Poll::Ready(Some(ev));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Subscribe to address, route and link changes (`ip monitor address route link`). The client
/// treats any event as a cue to re-check [`Netlink::route_get`] towards the broker.
pub fn address_events() -> Result<AddressEvents, NetlinkError> {
    let rt = tokio::runtime::Handle::try_current().map_err(|_| NetlinkError::NoRuntime)?;
    let (conn, _handle, rx) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
    ])
    .map_err(NetlinkError::Socket)?;
    let task = rt.spawn(conn);
    Ok(AddressEvents { rx, task })
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{eventually, in_new_netns, must, sh};
    use super::*;
    use std::time::Duration;

    fn nl() -> Netlink {
        must(Netlink::new())
    }

    /// A veth pair `a`/`b`, both up, with DAD off so IPv6 addresses are usable at once.
    async fn veth(nl: &Netlink, a: &str, b: &str) -> u32 {
        sh("echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad");
        sh(&format!(
            "ip link add {a} type veth peer name {b} && ip link set {a} up && ip link set {b} up"
        ));
        match nl.link_index(a).await {
            Ok(Some(i)) => i,
            other => panic!("veth {a}: {other:?}"),
        }
    }

    fn ip(s: &str) -> IpAddr {
        must(s.parse())
    }

    #[test]
    fn masking_and_prefix_checks() {
        assert_eq!(masked(ip("2001:db8:1:2::1"), 48).ok(), Some(ip("2001:db8:1::")));
        assert_eq!(masked(ip("192.0.2.77"), 24).ok(), Some(ip("192.0.2.0")));
        assert_eq!(masked(ip("::1"), 0).ok(), Some(ip("::")));
        assert_eq!(masked(ip("192.0.2.1"), 32).ok(), Some(ip("192.0.2.1")));
        assert!(matches!(
            masked(ip("192.0.2.1"), 33),
            Err(NetlinkError::InvalidPrefix { .. })
        ));
    }

    #[test]
    fn address_and_route_on_a_link() {
        in_new_netns(false, || async {
            let nl = nl();
            let idx = veth(&nl, "nlta0", "nltb0").await;
            assert_eq!(nl.link_kind(idx).await.ok().flatten().as_deref(), Some("veth"));
            assert!(matches!(nl.link_index("nlt-none").await, Ok(None)));
            assert!(nl.link_kind(99_999).await.is_err());

            let a = ip("2001:db8:1::2");
            must(nl.set_up_mtu(idx, 1280).await);
            assert!(matches!(nl.link_mtu_up(idx).await, Ok((1280, true))));
            must(nl.add_address(idx, a, 128).await);
            let addrs = must(nl.addresses(idx).await);
            assert!(addrs.contains(&(a, 128)), "{addrs:?}");
            assert!(sh("ip -6 addr show dev nlta0").contains("2001:db8:1::2/128"));

            // A second add is EEXIST, and the message names the link.
            match nl.add_address(idx, a, 128).await {
                Err(e) => {
                    assert_eq!(e.errno(), Some(libc::EEXIST));
                    let m = e.to_string();
                    assert!(m.contains("nlta0") && m.contains("2001:db8:1::2/128"), "{m}");
                }
                Ok(()) => panic!("duplicate address accepted"),
            }

            must(nl.add_route(ip("2001:db8:99::"), 48, idx).await);
            must(nl.add_route_with_metric(ip("2000::"), 3, idx, Some(77)).await);
            must(nl.add_route(ip("198.51.100.0"), 24, idx).await);
            let r6 = sh("ip -6 route show");
            assert!(
                r6.contains("2001:db8:99::/48 dev nlta0 proto static metric 1024"),
                "{r6}"
            );
            assert!(r6.contains("2000::/3 dev nlta0 proto static metric 77"), "{r6}");
            assert!(sh("ip -4 route show").contains("198.51.100.0/24 dev nlta0 proto static scope link"));

            must(nl.del_route(ip("2001:db8:99::"), 48, idx).await);
            must(nl.del_route_with_metric(ip("2000::"), 3, idx, Some(77)).await);
            must(nl.del_route(ip("198.51.100.0"), 24, idx).await);
            let r6 = sh("ip -6 route show");
            assert!(!r6.contains("2001:db8:99::") && !r6.contains("2000::/3"), "{r6}");
            assert!(!sh("ip -4 route show").contains("198.51.100.0/24"));

            must(nl.del_address(idx, a, 128).await);
            let addrs = must(nl.addresses(idx).await);
            assert!(!addrs.contains(&(a, 128)), "{addrs:?}");
            assert!(!sh("ip -6 addr show dev nlta0").contains("2001:db8:1::2"));

            must(nl.set_down(idx).await);
            assert!(matches!(nl.link_mtu_up(idx).await, Ok((1280, false))));
            must(nl.delete_link(idx).await);
            assert!(matches!(nl.link_index("nlta0").await, Ok(None)));
        });
    }

    #[test]
    fn tun_addresses_are_usable_at_once() {
        in_new_netns(false, || async {
            let nl = nl();
            let tun = must(super::super::tundev::TunDevice::open("nlttun0", 1280));
            let idx = must(tun.index());
            assert_eq!(must(nl.link_kind(idx).await).as_deref(), Some("tun"));
            for i in 1..=20u16 {
                let a = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 7, 0, 0, 0, 0, i));
                must(nl.add_address(idx, a, 128).await);
                // Binding fails with EADDRNOTAVAIL while the address is still tentative.
                must(std::net::UdpSocket::bind((a, 0)));
            }
        });
    }

    #[test]
    fn applied_undo_removes_exactly_what_it_added() {
        in_new_netns(false, || async {
            let nl = nl();
            let idx = veth(&nl, "nlta0", "nltb0").await;
            // Pre-existing state that must survive: an address, and a route next to ours.
            sh("ip -6 addr add 2001:db8:5::1/64 dev nlta0");
            sh("ip -6 route add 2001:db8:77::/48 dev nlta0");
            let fwd_before = must(nl.forwarding_v6());
            assert!(!fwd_before);

            let mut applied = Applied::new();
            let pre = ip("2001:db8:5::1");
            must(applied.apply_address(&nl, idx, pre, 64).await);
            assert!(applied.is_empty(), "a pre-existing address was recorded");
            let ours = ip("2001:db8:6::2");
            must(applied.apply_address(&nl, idx, ours, 128).await);
            assert_eq!(applied.len(), 1);
            must(applied.apply_address(&nl, idx, ip("192.0.2.9"), 32).await);
            must(applied.apply_route(&nl, ip("::"), 0, idx).await);
            must(applied.apply_route(&nl, ip("2000::"), 3, idx).await);
            must(applied.apply_blackhole(&nl, ip("2001:db8:8::"), 56).await);
            must(applied.apply_forwarding(true));
            assert!(matches!(nl.forwarding_v6(), Ok(true)));
            // An existing route is refused and not recorded.
            assert!(applied.apply_route(&nl, ip("2000::"), 3, idx).await.is_err());
            assert_eq!(applied.len(), 6);

            let r6 = sh("ip -6 route show");
            assert!(r6.contains("default dev nlta0"), "{r6}");
            assert!(r6.contains("blackhole 2001:db8:8::/56"), "{r6}");

            let failures = applied.undo(&nl).await;
            assert!(failures.is_empty(), "{failures:?}");

            let addrs = must(nl.addresses(idx).await);
            assert!(addrs.contains(&(pre, 64)), "pre-existing address removed: {addrs:?}");
            assert!(!addrs.contains(&(ours, 128)), "{addrs:?}");
            assert!(!addrs.iter().any(|(a, _)| *a == ip("192.0.2.9")), "{addrs:?}");
            let r6 = sh("ip -6 route show");
            assert!(
                r6.contains("2001:db8:77::/48 dev nlta0"),
                "pre-existing route removed: {r6}"
            );
            assert!(r6.contains("2001:db8:5::/64 dev nlta0"), "{r6}");
            assert!(
                !r6.contains("default") && !r6.contains("2000::/3") && !r6.contains("blackhole"),
                "{r6}"
            );
            assert!(matches!(nl.forwarding_v6(), Ok(false)));
        });
    }

    #[test]
    fn undo_deletes_an_adopted_link_and_tolerates_what_went_with_it() {
        in_new_netns(false, || async {
            let nl = nl();
            let idx = veth(&nl, "nlta0", "nltb0").await;
            let mut applied = Applied::new();
            applied.adopt_link(idx);
            must(applied.apply_address(&nl, idx, ip("2001:db8:6::2"), 128).await);
            must(applied.apply_route(&nl, ip("::"), 0, idx).await);
            // The link goes first (as when a TUN closes): its address and route go with it.
            must(nl.delete_link(idx).await);
            let failures = applied.undo(&nl).await;
            assert!(failures.is_empty(), "{failures:?}");
        });
    }

    #[test]
    fn route_get_picks_the_source_for_the_destination() {
        in_new_netns(false, || async {
            let nl = nl();
            let idx = veth(&nl, "nlta0", "nltb0").await;
            for (a, p) in [
                ("192.0.2.2", 24),
                ("198.51.100.2", 24),
                ("2001:db8:1::2", 64),
                ("2001:db8:2::2", 64),
            ] {
                must(nl.add_address(idx, ip(a), p).await);
            }
            // Source selection skips tentative addresses; even with DAD off they stay tentative
            // until the kernel's DAD work (or the carrier change on the fresh veth) has run.
            let settled = eventually(|| {
                let link = sh("ip link show nlta0");
                link.contains("state UP") && sh("ip -6 addr show dev nlta0 tentative").trim().is_empty()
            })
            .await;
            assert!(settled, "nlta0 not up with usable addresses after 5 s");
            let get = |d: &'static str| {
                let nl = &nl;
                async move { must(nl.route_get(ip(d)).await) }
            };
            assert_eq!(get("192.0.2.1").await, Some((ip("192.0.2.2"), idx)));
            assert_eq!(get("198.51.100.1").await, Some((ip("198.51.100.2"), idx)));
            assert_eq!(get("2001:db8:1::1").await, Some((ip("2001:db8:1::2"), idx)));
            assert_eq!(get("2001:db8:2::1").await, Some((ip("2001:db8:2::2"), idx)));
            // No route at all: None, not an error.
            assert_eq!(get("203.0.113.1").await, None);
            assert_eq!(get("2001:db8:ff::1").await, None);
            // Roaming: the source towards 203.0.113.1 follows the route's preferred source.
            sh("ip route add 203.0.113.0/24 dev nlta0 src 198.51.100.2");
            assert_eq!(get("203.0.113.1").await, Some((ip("198.51.100.2"), idx)));
            sh("ip route change 203.0.113.0/24 dev nlta0 src 192.0.2.2");
            assert_eq!(get("203.0.113.1").await, Some((ip("192.0.2.2"), idx)));
        });
    }

    #[test]
    fn kernel_tunnels_are_not_supported_here() {
        in_new_netns(false, || async {
            let nl = nl();
            let sit = nl.create_sit(
                "nltsit0",
                Some(Ipv4Addr::new(192, 0, 2, 2)),
                Ipv4Addr::new(192, 0, 2, 1),
                64,
            );
            match sit.await {
                Err(KernelLinkError::NotSupported) => {}
                Ok(idx) => {
                    // A kernel with sit: fine too, but clean up and say so.
                    eprintln!("note: this kernel has sit (ifindex {idx})");
                    must(nl.delete_link(idx).await);
                }
                Err(e) => panic!("sit: unexpected error {e}"),
            }
            let tnl = nl.create_ip6tnl_ipip("nlt6tnl0", None, ip6("2001:db8::1"));
            match tnl.await {
                Err(KernelLinkError::NotSupported) => {}
                Ok(idx) => {
                    eprintln!("note: this kernel has ip6tnl (ifindex {idx})");
                    must(nl.delete_link(idx).await);
                }
                Err(e) => panic!("ip6tnl: unexpected error {e}"),
            }
            assert!(matches!(nl.link_index("nltsit0").await, Ok(None)));
        });
    }

    fn ip6(s: &str) -> Ipv6Addr {
        must(s.parse())
    }

    #[test]
    fn remove_stale_link_refuses_a_foreign_kind() {
        in_new_netns(false, || async {
            let nl = nl();
            let idx = veth(&nl, "nlta0", "nltb0").await;
            match remove_stale_link(&nl, "nlta0", "sit").await {
                Err(e @ NetlinkError::ForeignLink { .. }) => {
                    let m = e.to_string();
                    assert!(m.contains("nlta0") && m.contains("veth") && m.contains("sit"), "{m}");
                }
                other => panic!("expected ForeignLink, got {other:?}"),
            }
            assert_eq!(nl.link_index("nlta0").await.ok().flatten(), Some(idx));
            // Loopback has no kind at all: also refused.
            assert!(matches!(
                remove_stale_link(&nl, "lo", "sit").await,
                Err(NetlinkError::ForeignLink { .. })
            ));
            // Nothing by that name: nothing to do.
            assert!(matches!(remove_stale_link(&nl, "nltsit9", "sit").await, Ok(false)));
            // Our kind: removed.
            assert!(matches!(remove_stale_link(&nl, "nlta0", "veth").await, Ok(true)));
            assert!(matches!(nl.link_index("nlta0").await, Ok(None)));
        });
    }

    #[test]
    fn monitor_sees_an_address_added() {
        in_new_netns(false, || async {
            let nl = nl();
            let idx = veth(&nl, "nlta0", "nltb0").await;
            let mut events = must(address_events());
            let a = ip("192.0.2.44");
            must(nl.add_address(idx, a, 24).await);
            let wanted = LinkAddrEvent::AddressAdded { idx, addr: a, plen: 24 };
            let seen = tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(ev) = events.next().await {
                    if ev == wanted {
                        return true;
                    }
                }
                false
            })
            .await;
            assert!(matches!(seen, Ok(true)), "no AddressAdded within 5 s: {seen:?}");

            let gone = LinkAddrEvent::AddressRemoved { idx, addr: a, plen: 24 };
            must(nl.del_address(idx, a, 24).await);
            let seen = tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(ev) = events.next().await {
                    if ev == gone {
                        return true;
                    }
                }
                false
            })
            .await;
            assert!(matches!(seen, Ok(true)), "no AddressRemoved within 5 s: {seen:?}");
        });
    }

    #[test]
    fn outside_a_runtime_is_an_error_not_a_panic() {
        assert!(matches!(Netlink::new(), Err(NetlinkError::NoRuntime)));
        assert!(matches!(address_events(), Err(NetlinkError::NoRuntime)));
    }
}
