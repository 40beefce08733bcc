//! Kernel tunnel links (sit for v6v4, ip6tnl for v4v6) where the kernel has them: the kernel
//! then carries the packets, and only the keepalive runs here, on a raw ICMP socket bound to
//! the link. Kernels without them (like the project's test machines) answer EOPNOTSUPP, and
//! the userspace datapath is used instead; the log says which was chosen.
//!
//! See docs/tsp-wire.md §6; docs/testbed.md §8.

use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use tokio::sync::watch;

use super::keepalive::{Action, Keepalive};
use super::netlink::{KernelLinkError, Netlink};
use super::raw::RawSocket;
use super::{Counters, Datapath, Exit, icmp};
use tsp_proto::types::TunnelMode;

/// Creates the kernel link for `mode`, or says why not (`None`: use userspace).
pub async fn try_link(nl: &Netlink, mode: TunnelMode, ifname: &str, local: IpAddr, remote: IpAddr) -> Option<u32> {
    let (kind, result) = match (mode, local, remote) {
        (TunnelMode::V4V6, IpAddr::V6(l), IpAddr::V6(r)) => ("ip6tnl", nl.create_ip6tnl_ipip(ifname, Some(l), r).await),
        (TunnelMode::V6V4, IpAddr::V4(l), IpAddr::V4(r)) => ("sit", nl.create_sit(ifname, Some(l), r, 64).await),
        _ => return None,
    };
    match result {
        Ok(idx) => {
            tracing::info!(%mode, ifname, kind, "kernel datapath ({kind} link)");
            Some(idx)
        }
        Err(KernelLinkError::NotSupported) => {
            tracing::info!(%mode, ifname, "this kernel has no {kind} links: userspace datapath (TUN + raw socket)");
            None
        }
        Err(KernelLinkError::Other(e)) => {
            tracing::warn!(%mode, ifname, error = %e, "cannot create a {kind} link: userspace datapath");
            None
        }
    }
}

/// Creates a *sink* link under a tunnel the userspace datapath carries: the kernel link of the
/// mode (`local`, `remote` as for [`try_link`]) with IPv6 disabled on it and no routes, set up.
/// Where the kernel has the tunnel modules loaded, a protocol 41 / 4 packet that matches none
/// of its links is answered with an ICMP error even though a raw socket read it; the sink makes
/// the kernel's lookup succeed and then deliver nothing (a sit: IPv6 disabled; an ip6tnl in
/// mode ipip6: strict reverse-path filtering drops every inner IPv4 packet, since no route
/// leads back through it), while the raw socket still gets its copy. Where the modules are
/// modules this loads them; a kernel without them refuses the link (`NotSupported`) and sends
/// no such errors anyway. The caller deletes the link with the tunnel.
///
/// See docs/tsp-wire.md §6.
pub async fn sink_link(
    nl: &Netlink,
    mode: TunnelMode,
    ifname: &str,
    local: IpAddr,
    remote: IpAddr,
) -> Result<u32, KernelLinkError> {
    let idx = match (mode, local, remote) {
        (TunnelMode::V4V6, IpAddr::V6(l), IpAddr::V6(r)) => nl.create_ip6tnl_ipip(ifname, Some(l), r).await?,
        (TunnelMode::V6V4, IpAddr::V4(l), IpAddr::V4(r)) => nl.create_sit(ifname, Some(l), r, 64).await?,
        _ => return Err(KernelLinkError::NotSupported),
    };
    let sysctls = [
        // Before it is up: no addresses (not even link-local), and a sit delivers nothing.
        (format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"), true),
        (
            format!("/proc/sys/net/ipv4/conf/{ifname}/rp_filter"),
            mode == TunnelMode::V4V6,
        ),
    ];
    let configure = async {
        for (path, wanted) in &sysctls {
            if *wanted {
                std::fs::write(path, "1\n").map_err(|e| super::netlink::NetlinkError::Sysctl {
                    path: "sink link sysctl",
                    source: e,
                })?;
            }
        }
        nl.set_up_mtu(idx, super::TUNNEL_MTU).await
    };
    match configure.await {
        Ok(()) => Ok(idx),
        Err(e) => {
            let _ = nl.delete_link(idx).await;
            Err(KernelLinkError::Other(e))
        }
    }
}

/// Runs the keepalive of a kernel link: echo requests out through the link, replies matched.
pub fn keepalive_only(ifname: &str, keepalive: Keepalive) -> io::Result<Datapath> {
    let v6 = keepalive.target().is_ipv6();
    let sock = RawSocket::open(if v6 { libc::IPPROTO_ICMPV6 } else { libc::IPPROTO_ICMP }, v6)?;
    sock.bind_device(ifname)?;
    let (stop, stopped) = watch::channel(false);
    let task = Some(tokio::spawn(run(Arc::new(sock), keepalive, stopped)));
    Ok(Datapath {
        stop,
        task,
        counters: Arc::new(Counters::default()),
        ifname: ifname.to_owned(),
    })
}

async fn run(sock: Arc<RawSocket>, mut ka: Keepalive, mut stop: watch::Receiver<bool>) -> Exit {
    let v6 = ka.target().is_ipv6();
    let (mut out, mut buf, mut pkt) = (Vec::with_capacity(128), vec![0u8; 2048], Vec::with_capacity(2048));
    loop {
        let deadline = tokio::time::Instant::from_std(ka.next_deadline());
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => match ka.on_deadline(std::time::Instant::now(), &mut out) {
                // The kernel writes the IP header: send the ICMP message only.
                Action::Send => {
                    let header = if v6 { icmp::IPV6_HEADER_LEN } else { usize::from(out[0] & 0x0f) * 4 };
                    if let Err(e) = sock.send_to(&out[header..], ka.target()).await {
                        tracing::debug!(error = %e, "keepalive send failed");
                    }
                }
                Action::Dead { misses } => return Exit::KeepaliveDead { misses },
                Action::Wait => {}
            },
            r = sock.recv_from(&mut buf) => match r {
                Ok((range, from)) => {
                    // Raw ICMPv6 sockets drop the IPv6 header; rebuild one for the matcher.
                    let full = match (from, v6) {
                        (IpAddr::V6(src), true) => {
                            icmp::ipv6_icmp_packet(&src, &Ipv6Addr::UNSPECIFIED, 64, &buf[range], &mut pkt);
                            &pkt[..]
                        }
                        _ => &buf[..range.end],
                    };
                    ka.on_packet(full, std::time::Instant::now());
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {}
                Err(e) => return Exit::Failed(e),
            },
            _ = stop.changed() => return Exit::Stopped,
        }
    }
}
