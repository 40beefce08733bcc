//! Requests on links, addresses and routes, the IPv6 forwarding sysctl and kernel tunnel links
//! (sit, ip6tnl), each error naming what it was for (docs/tsp-wire.md §8).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::IpProtocol;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::{Ip6TunnelFlags, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope, RouteType};
use rtnetlink::{AddressMessageBuilder, Handle, LinkIp6Tnl, LinkSit, LinkUnspec, RouteMessageBuilder};

use super::{ConnectionTask, KernelLinkError, NetlinkError, full_len, local_addr, masked};

/// `net.ipv6.conf.all.forwarding`: gogoc's router mode set it with `sysctl -w`.
const FORWARDING_V6: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// An open rtnetlink connection. Dropping it stops the connection task.
pub struct Netlink {
    // Held for its Drop, which stops the connection.
    _task: ConnectionTask,
    handle: Handle,
}

impl fmt::Debug for Netlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netlink").finish_non_exhaustive()
    }
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
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
        let rt = ConnectionTask::runtime()?;
        let (conn, handle, _unsolicited) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        let task = ConnectionTask::spawn(&rt, conn);
        Ok(Netlink { _task: task, handle })
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

    /// Awaits a request about link `idx`; its error says `what(label)`, the label being looked
    /// up only then.
    async fn on_link<T>(
        &self,
        idx: u32,
        what: impl FnOnce(String) -> String,
        request: impl Future<Output = Result<T, rtnetlink::Error>>,
    ) -> Result<T, NetlinkError> {
        match request.await {
            Ok(v) => Ok(v),
            Err(source) => Err(NetlinkError::Request {
                what: what(self.link_label(idx).await),
                source,
            }),
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
        let what = |l| format!("set MTU {mtu} and up on {l}");
        self.on_link(idx, what, self.handle.link().set(msg).execute()).await
    }

    /// Bring the link down.
    pub async fn set_down(&self, idx: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(idx).down().build();
        let what = |l| format!("set {l} down");
        self.on_link(idx, what, self.handle.link().set(msg).execute()).await
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
        let what = |l| format!("add address {addr}/{plen} on {l}");
        self.on_link(idx, what, req.execute()).await
    }

    /// Remove `addr/plen` from the link.
    pub async fn del_address(&self, idx: u32, addr: IpAddr, plen: u8) -> Result<(), NetlinkError> {
        if plen > full_len(addr) {
            return Err(NetlinkError::InvalidPrefix { addr, plen });
        }
        let msg = address_message(idx, addr, plen);
        let what = |l| format!("remove address {addr}/{plen} from {l}");
        self.on_link(idx, what, self.handle.address().del(msg).execute()).await
    }

    /// The addresses on the link (both families), as the kernel reports them.
    pub async fn addresses(&self, idx: u32) -> Result<Vec<(IpAddr, u8)>, NetlinkError> {
        let mut req = self.handle.address().get().set_link_index_filter(idx);
        // Ask the kernel to filter too (honoured under strict checking, harmless otherwise).
        req.message_mut().header.index = idx;
        let msgs: Vec<AddressMessage> = self
            .on_link(idx, |l| format!("list addresses of {l}"), req.execute().try_collect())
            .await?;
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
        let what = |l| format!("add route {dst}/{plen} dev {l}");
        self.on_link(idx, what, self.handle.route().add(msg).execute()).await
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
        let what = |l| format!("delete route {dst}/{plen} dev {l}");
        self.on_link(idx, what, self.handle.route().del(msg).execute()).await
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
pub(super) fn write_forwarding_v6(enabled: bool) -> Result<bool, NetlinkError> {
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
