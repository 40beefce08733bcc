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
/// The kernel carries the traffic, so the evidence for probing (traffic in, nothing back) is
/// read from the link's packet counters every [`EVIDENCE_POLL`].
pub fn keepalive_only(ifname: &str, keepalive: Keepalive) -> io::Result<Datapath> {
    let v6 = keepalive.target().is_ipv6();
    let sock = RawSocket::open(if v6 { libc::IPPROTO_ICMPV6 } else { libc::IPPROTO_ICMP }, v6)?;
    sock.bind_device(ifname)?;
    let (stop, stopped) = watch::channel(false);
    let task = Some(tokio::spawn(run(Arc::new(sock), keepalive, ifname.to_owned(), stopped)));
    Ok(Datapath {
        stop,
        task,
        counters: Arc::new(Counters::default()),
        ifname: ifname.to_owned(),
    })
}

/// How often a kernel link's counters are read for probing evidence: with the default probe
/// settings (3 s, then 3 probes of 1 s) a dead path is declared within about 7 s.
pub const EVIDENCE_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// (received, sent) packets of `ifname` in this network namespace's /proc/net/dev.
fn link_packets(ifname: &str) -> Option<(u64, u64)> {
    parse_net_dev(&std::fs::read_to_string("/proc/net/dev").ok()?, ifname)
}

/// One interface's (received, sent) packets from /proc/net/dev's text.
fn parse_net_dev(text: &str, ifname: &str) -> Option<(u64, u64)> {
    net_dev(text, ifname).map(|c| (c.rx_packets, c.tx_packets))
}

/// A link's counters, as /proc/net/dev shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// One interface's counters from /proc/net/dev's text: after `name:`, the receive columns
/// (bytes, packets, errs, drop, fifo, frame, compressed, multicast), then the transmit ones
/// (bytes, packets, …). `None` when the interface is not listed or its line is malformed.
pub fn net_dev(text: &str, ifname: &str) -> Option<LinkCounters> {
    text.lines().find_map(|line| {
        let (name, rest) = line.split_once(':')?;
        if name.trim() != ifname {
            return None;
        }
        let cols: Vec<u64> = rest.split_whitespace().map(|c| c.parse().ok()).collect::<Option<_>>()?;
        Some(LinkCounters {
            rx_bytes: *cols.first()?,
            rx_packets: *cols.get(1)?,
            tx_bytes: *cols.get(8)?,
            tx_packets: *cols.get(9)?,
        })
    })
}

/// Turns successive counter readings into keepalive evidence.
#[derive(Default)]
struct Evidence {
    last: Option<(u64, u64)>,
    /// Echoes and probes sent since the last reading: not traffic.
    own_sent: u64,
}

impl Evidence {
    fn update(&mut self, now: (u64, u64), ka: &mut Keepalive, at: std::time::Instant) {
        if let Some((rx, tx)) = self.last {
            if now.0 > rx {
                ka.on_received(at);
            } else if now.1.saturating_sub(tx) > self.own_sent {
                ka.on_sent(at);
            }
        }
        self.last = Some(now);
        self.own_sent = 0;
    }
}

async fn run(sock: Arc<RawSocket>, mut ka: Keepalive, ifname: String, mut stop: watch::Receiver<bool>) -> Exit {
    let v6 = ka.target().is_ipv6();
    let (mut out, mut buf, mut pkt) = (Vec::with_capacity(128), vec![0u8; 2048], Vec::with_capacity(2048));
    let mut evidence = Evidence::default();
    // Only probing needs the counters: without it an idle tunnel wakes for the interval alone.
    let mut poll = ka.probe.after.map(|_| tokio::time::interval(EVIDENCE_POLL));
    loop {
        let deadline = tokio::time::Instant::from_std(ka.next_deadline());
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => match ka.on_deadline(std::time::Instant::now(), &mut out) {
                // The kernel writes the IP header: send the ICMP message only.
                Action::Send => {
                    let header = if v6 { icmp::IPV6_HEADER_LEN } else { usize::from(out[0] & 0x0f) * 4 };
                    evidence.own_sent += 1;
                    if let Err(e) = sock.send_to(&out[header..], ka.target()).await {
                        tracing::debug!(error = %e, "keepalive send failed");
                    }
                }
                Action::Dead { misses } => return Exit::KeepaliveDead { misses },
                Action::Wait => {}
            },
            _ = async { poll.as_mut().expect("guarded").tick().await }, if poll.is_some() => {
                if let Some(now) = link_packets(&ifname) {
                    evidence.update(now, &mut ka, std::time::Instant::now());
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;
    use std::time::{Duration, Instant};

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     840      10    0    0    0     0          0         0      840      10    0    0    0     0       0          0
  sit1: 1234567     321    0    0    0     0          0         0   765432     123    0    0    0     0       0          0
 sit10:       1       2    3    4    5     6          7         8        9      10   11   12   13    14      15         16
";

    #[test]
    fn net_dev_columns() {
        assert_eq!(parse_net_dev(NET_DEV, "sit1"), Some((321, 123)));
        assert_eq!(parse_net_dev(NET_DEV, "sit10"), Some((2, 10)));
        assert_eq!(
            net_dev(NET_DEV, "sit1"),
            Some(LinkCounters {
                rx_bytes: 1234567,
                rx_packets: 321,
                tx_bytes: 765432,
                tx_packets: 123
            })
        );
        assert_eq!(parse_net_dev(NET_DEV, "sit"), None);
        assert_eq!(parse_net_dev("garbage\nsit1: x y\n", "sit1"), None);
        assert_eq!(parse_net_dev("sit1: 1 2 3\n", "sit1"), None, "short line");
    }

    fn ka(t0: Instant) -> Keepalive {
        let a: IpAddr = Ipv6Addr::LOCALHOST.into();
        Keepalive::new(Duration::from_secs(30), a, a, 1, t0)
    }

    /// Traffic out with nothing back starts probing after the probe delay; the keepalive's own
    /// packets are not traffic; anything received stops it.
    #[test]
    fn counters_become_evidence() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut k = ka(t0);
        let mut ev = Evidence::default();
        ev.update((5, 5), &mut k, t0);
        ev.own_sent = 1;
        ev.update((5, 6), &mut k, t0 + s);
        assert_eq!(k.next_deadline(), t0 + 30 * s, "our own echo is no evidence");
        ev.update((5, 9), &mut k, t0 + 2 * s);
        assert_eq!(k.next_deadline(), t0 + 5 * s, "unanswered traffic: a probe 3 s later");
        ev.update((6, 12), &mut k, t0 + 3 * s);
        assert_eq!(k.next_deadline(), t0 + 30 * s, "an answer ends it");
    }
}
