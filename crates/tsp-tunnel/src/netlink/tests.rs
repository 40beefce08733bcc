//! Tests of the netlink layer; most run in a fresh network namespace (docs/tsp-wire.md §8).

use super::*;
use crate::testutil::{eventually, in_new_netns, must, sh};
use futures::StreamExt;
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
        let tun = must(crate::tundev::TunDevice::open("nlttun0", 1280));
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
