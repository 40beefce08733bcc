//! Kernel links for the broker's v6v4 and v4v6 tunnels: one link per tunnel, a `sit` (6in4)
//! or an `ip6tnl` in mode ipip6 (4in6) with the broker's tunnel endpoint as `local` and the
//! client's as `remote`, as gogoSERVER did; the client's inner address (and prefix) routed to it.
//!
//! Why one link per tunnel and not one NBMA sit with per-client routes: the kernel matches an
//! arriving packet's (destination, source) to a link's (local, remote), so a per-tunnel link
//! only takes packets from its own client's endpoint (the outer-source check the userspace
//! datapath does by endpoint), its routes are exactly the client's, and ending a tunnel is one
//! link deletion; an NBMA sit (remote any) takes protocol 41 from anybody, cannot do v4v6
//! (ip6tnl has no NBMA mode), and would need per-client neighbour-style routes (`via ::a.b.c.d`)
//! that check nothing on receive.
//!
//! The inner-source check with kernel links: v4v6 links get strict reverse-path filtering
//! (`net.ipv4.conf.<link>.rp_filter = 1`), so an inner IPv4 source whose route does not go back
//! through the link (anything but the client's address) is dropped. Linux has no reverse-path
//! filter for IPv6 outside netfilter, so for v6v4 links the broker installs one nftables rule
//! (at start, when v6v4 tunnels go on kernel links; [`SourceFilter`]): a packet that arrives on one of its links and
//! whose source has no route back through that link (`fib saddr . iif oif missing`) is dropped
//! before routing — one lookup per packet whatever the number of tunnels. Without nftables (the
//! `nft` program or the kernel's nf_tables) the broker says so once and the inner IPv6 source
//! is not checked on kernel links (the outer source still is); `datapath_kind = "userspace"`
//! checks both without netfilter.
//!
//! This also keeps the broker host's kernel silent: with the `sit` / `ip6_tunnel` modules
//! loaded (by anything, e.g. a client on the same host), a protocol 41 / 4 packet that matches
//! no kernel tunnel is answered with an ICMP error even though a raw socket of the userspace
//! datapath read it; a link per tunnel claims the packets. (The raw sockets still get a copy of
//! each packet: the datapath uses it only to see the client alive, see `Route::kernel`.)
//!
//! A tunnel the userspace datapath carries while those modules are loaded (`datapath_kind =
//! "userspace"`) gets a *sink* link instead: the same link, with no routes, that delivers
//! nothing (IPv6 disabled on it, so a sit delivers nothing; on an ip6tnl link the strict
//! reverse-path filter drops every inner IPv4 packet, as no route leads back through it), so the kernel finds its tunnel and
//! stays silent while the raw socket's copy is carried. Cheaper fixes do not exist: the raw
//! socket cannot consume the packet, and the kernel's tunnel handlers answer whatever they do
//! not match; a local-only wildcard link (remote any) would do for known endpoints but not for
//! a wildcard listener, where sit's own fallback device `sit0` already holds that slot. The sink
//! is tried for every such tunnel, not only when the modules are loaded already: they may be
//! loaded later (the client's own link on the same host is made after the broker's session is
//! established). Where they are modules, that loads them, and the sink claims what they would
//! answer; a kernel without them refuses the sink (logged at debug level) and is silent anyway.
//!
//! Links are named `<tun_name>k<n>` (n counting up), made by one task in the order the
//! datapath asks, and deleted at the tunnel's end and at the broker's exit.
//!
//! See docs/tsp-wire.md §6.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tokio::sync::{mpsc, oneshot};

use super::Endpoint;
use tsp_proto::types::TunnelMode;
use tsp_tunnel::TUNNEL_MTU;
use tsp_tunnel::kernel;
use tsp_tunnel::netlink::{KernelLinkError, Netlink};

/// What the link task is asked to do.
pub(super) enum Cmd {
    /// A tunnel to carry on a kernel link: `local` is our endpoint, the endpoint the client's;
    /// `routes` the inner destinations to route to the link.
    Up {
        endpoint: Endpoint,
        local: IpAddr,
        routes: Vec<(IpAddr, u8)>,
        /// A sink (see the module docs): delivers nothing, only claims the packets.
        sink: bool,
        /// Told the link's name once it is up (`None`: the tunnel stays on the userspace
        /// datapath).
        done: Box<dyn FnOnce(Option<String>) + Send>,
    },
    Down(Endpoint),
    /// Delete every link made, then stop.
    Shutdown(oneshot::Sender<()>),
}

/// Which link kinds this kernel has: (sit, ip6tnl). Creates and deletes a throwaway link of
/// each kind asked for (the kernel loads the module on demand, as for tspc's links).
pub(super) async fn probe(nl: &Netlink, name: &str, sit: bool, ip6tnl: bool) -> (bool, bool) {
    async fn one(nl: &Netlink, r: Result<u32, KernelLinkError>, kind: &str) -> bool {
        match r {
            Ok(idx) => {
                if let Err(e) = nl.delete_link(idx).await {
                    tracing::warn!(error = %e, "cannot delete the {kind} probe link");
                }
                true
            }
            Err(KernelLinkError::NotSupported) => false,
            Err(KernelLinkError::Other(e)) => {
                tracing::warn!(error = %e, "cannot create a {kind} link");
                false
            }
        }
    }
    let doc4 = Ipv4Addr::new(192, 0, 2, 255);
    let doc6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xffff);
    let s = sit && one(nl, nl.create_sit(name, None, doc4, 64).await, "sit").await;
    let t = ip6tnl && one(nl, nl.create_ip6tnl_ipip(name, None, doc6).await, "ip6tnl").await;
    (s, t)
}

/// True when `a` is an address of this host (a socket can be bound to it): a kernel link's
/// `local` must be, or it matches nothing (an endpoint on the public side of a NAT).
pub(super) fn is_local(a: IpAddr) -> bool {
    std::net::UdpSocket::bind((a, 0)).is_ok()
}

/// The link task: makes and deletes links in the order asked. With `sit_links` (v6v4 tunnels
/// go on kernel links) it first installs the inner-source filter, so no tunnel waits for it
/// and none runs before it.
pub(super) async fn run(mut rx: mpsc::UnboundedReceiver<Cmd>, tun_name: String, sit_links: bool) {
    // At most 9 + 1 + 5 characters: within the kernel's 15.
    let prefix: String = tun_name.chars().take(9).collect();
    let nl = match Netlink::new() {
        Ok(nl) => nl,
        Err(e) => {
            tracing::error!(error = %e, "rtnetlink: no kernel links");
            while let Some(cmd) = rx.recv().await {
                match cmd {
                    Cmd::Up { done, .. } => done(None),
                    Cmd::Shutdown(tx) => {
                        let _ = tx.send(());
                        return;
                    }
                    Cmd::Down(_) => {}
                }
            }
            return;
        }
    };
    let mut links: HashMap<Endpoint, (u32, String)> = HashMap::new();
    let mut n = 0u32;
    let mut filter = SourceFilter::new(&prefix);
    if sit_links {
        filter.ensure().await;
    }
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Cmd::Up {
                endpoint,
                local,
                routes,
                sink,
                done,
            } => {
                if let Some((idx, name)) = links.remove(&endpoint) {
                    delete(&nl, idx, &name).await;
                }
                let name = format!("{prefix}k{n}");
                n = (n + 1) % 100_000;
                // One left by a broker that was killed (the prefix is ours: the TUN of that
                // name is, so no other broker runs in this namespace).
                let kind = if matches!(endpoint, Endpoint::V6(_)) {
                    "ip6tnl"
                } else {
                    "sit"
                };
                if let Ok(true) = tsp_tunnel::netlink::remove_stale_link(&nl, &name, kind).await {
                    tracing::info!(link = %name, "removed a stale kernel link");
                }
                match up(&nl, &name, endpoint, local, &routes, sink).await {
                    Ok(idx) if sink => {
                        tracing::info!(?endpoint, link = %name, "sink link: claims the tunnel's packets so the kernel sends no ICMP errors; the userspace datapath carries them");
                        links.insert(endpoint, (idx, name));
                        done(None);
                    }
                    Ok(idx) => {
                        tracing::info!(?endpoint, link = %name, "tunnel on a kernel link");
                        links.insert(endpoint, (idx, name.clone()));
                        done(Some(name));
                    }
                    Err(e) if sink => {
                        tracing::debug!(?endpoint, link = %name, error = %e, "no sink link");
                        done(None);
                    }
                    Err(e) => {
                        tracing::warn!(?endpoint, link = %name, error = %e, "no kernel link for this tunnel: userspace datapath");
                        done(None);
                    }
                }
            }
            Cmd::Down(endpoint) => {
                if let Some((idx, name)) = links.remove(&endpoint) {
                    delete(&nl, idx, &name).await;
                }
            }
            Cmd::Shutdown(tx) => {
                for (_, (idx, name)) in links.drain() {
                    delete(&nl, idx, &name).await;
                }
                filter.remove().await;
                let _ = tx.send(());
                return;
            }
        }
    }
    // The datapath went without a shutdown: still remove what we made.
    for (_, (idx, name)) in links.drain() {
        delete(&nl, idx, &name).await;
    }
    filter.remove().await;
}

/// The inner IPv6 source check of sit links (see the module docs): one nftables table of ours,
/// made when the link task starts, removed at the end.
struct SourceFilter {
    table: String,
    ruleset: String,
    state: FilterState,
}

/// The nftables table (its name and `nft -f` text) that checks the inner IPv6 source of packets
/// arriving on the broker's links named `<link_prefix>k*`: a source with no route back through
/// the link it came in on is dropped (and counted). The text replaces a table left by a broker
/// that was killed (add, then delete, then make: one transaction, valid whether it existed or
/// not).
pub fn inner_source_rules(link_prefix: &str) -> (String, String) {
    // Table names are identifiers: the link prefix's other characters become '_'.
    let ident: String = link_prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let table = format!("tsp_broker_{ident}");
    let ruleset = format!(
        "add table ip6 {table}\ndelete table ip6 {table}\ntable ip6 {table} {{\n  chain inner_source {{\n    \
         type filter hook prerouting priority raw; policy accept;\n    \
         iifname \"{link_prefix}k*\" fib saddr . iif oif missing counter drop\n  }}\n}}\n"
    );
    (table, ruleset)
}

#[derive(PartialEq)]
enum FilterState {
    NotYet,
    Installed,
    /// Tried and failed (said once): not tried again.
    Unavailable,
}

impl SourceFilter {
    fn new(link_prefix: &str) -> Self {
        let (table, ruleset) = inner_source_rules(link_prefix);
        Self {
            table,
            ruleset,
            state: FilterState::NotYet,
        }
    }

    async fn ensure(&mut self) {
        if self.state != FilterState::NotYet {
            return;
        }
        match nft(&self.ruleset).await {
            Ok(()) => {
                tracing::info!(table = %self.table, "inner IPv6 sources on sit links checked (nftables)");
                self.state = FilterState::Installed;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the inner IPv6 source of v6v4 tunnels on kernel links is not checked (needs nftables); datapath_kind = \"userspace\" checks it");
                self.state = FilterState::Unavailable;
            }
        }
    }

    async fn remove(&mut self) {
        if self.state != FilterState::Installed {
            return;
        }
        match nft(&format!("delete table ip6 {}\n", self.table)).await {
            Ok(()) => tracing::info!(table = %self.table, "nftables table removed"),
            Err(e) => tracing::warn!(table = %self.table, error = %e, "cannot remove the nftables table"),
        }
        self.state = FilterState::NotYet;
    }
}

/// Runs `nft -f -` with `ruleset` on its standard input (no shell).
async fn nft(ruleset: &str) -> Result<(), String> {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ruleset.as_bytes())
            .await
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait_with_output())
        .await
        .map_err(|_| "nft did not finish in 10 s".to_owned())?
        .map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

async fn delete(nl: &Netlink, idx: u32, name: &str) {
    match nl.delete_link(idx).await {
        Ok(()) => tracing::info!(link = %name, "kernel link deleted"),
        Err(e) => tracing::warn!(link = %name, error = %e, "cannot delete kernel link"),
    }
}

/// Creates the link, sets it up and routes the client's addresses to it (a sink: no routes,
/// nothing delivered); a half-made link is deleted again.
async fn up(
    nl: &Netlink,
    name: &str,
    endpoint: Endpoint,
    local: IpAddr,
    routes: &[(IpAddr, u8)],
    sink: bool,
) -> Result<u32, String> {
    if sink {
        let (mode, remote) = match endpoint {
            Endpoint::V4(a) => (TunnelMode::V6V4, IpAddr::V4(a)),
            Endpoint::V6(a) => (TunnelMode::V4V6, IpAddr::V6(a)),
            Endpoint::Udp { .. } => return Err("no kernel link for this endpoint".into()),
        };
        return kernel::sink_link(nl, mode, name, local, remote)
            .await
            .map_err(|e| e.to_string());
    }
    let idx = match (endpoint, local) {
        (Endpoint::V4(remote), IpAddr::V4(l)) => nl.create_sit(name, Some(l), remote, 64).await,
        (Endpoint::V6(remote), IpAddr::V6(l)) => nl.create_ip6tnl_ipip(name, Some(l), remote).await,
        _ => return Err("no kernel link for this endpoint".into()),
    }
    .map_err(|e| e.to_string())?;
    let configure = async {
        if matches!(endpoint, Endpoint::V6(_)) {
            // Strict reverse-path filter: the inner IPv4 source must route back through the link.
            let path = format!("/proc/sys/net/ipv4/conf/{name}/rp_filter");
            std::fs::write(&path, "1\n").map_err(|e| format!("{path}: {e}"))?;
        }
        nl.set_up_mtu(idx, TUNNEL_MTU).await.map_err(|e| e.to_string())?;
        for (dst, plen) in routes {
            nl.add_route(*dst, *plen, idx).await.map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    };
    match configure.await {
        Ok(()) => Ok(idx),
        Err(e) => {
            delete(nl, idx, name).await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_filter_names_and_ruleset() {
        let f = SourceFilter::new("tsp-b.0");
        assert_eq!(f.table, "tsp_broker_tsp_b_0");
        let r = &f.ruleset;
        assert!(r.starts_with("add table ip6 tsp_broker_tsp_b_0\ndelete table ip6 tsp_broker_tsp_b_0\n"));
        assert!(
            r.contains("iifname \"tsp-b.0k*\" fib saddr . iif oif missing counter drop"),
            "{r}"
        );
    }
}
