//! NetworkManager end to end: a real NetworkManager (private bus, own mount namespace) in a
//! client namespace spawns the built `nm-tsp-service`, which negotiates with the bundled
//! `tsp-broker` in another namespace; assertions are on what NetworkManager and the kernel
//! show (VPN state, addresses, routes, pings, processes). Root only; skips otherwise.

mod netns;
mod testbed;

use std::time::Duration;

use netns::{Host, Lab, Proc, Signal, require_root};
use testbed::{Nm, require_nm, wait_until};

const SEC: Duration = Duration::from_secs(1);
const BROKER: &str = env!("CARGO_BIN_EXE_tsp-broker");
use testbed::BROKER_V6;
const BROKER_V4_INNER: &str = "198.51.100.1";
const PASSWORD: &str = "s3cret-Pa55";

fn start_broker(lab: &Lab, b: &Host, name: &str, extra: &str) -> Proc {
    start_broker_auth(lab, b, name, "\"anonymous\", \"digest-md5\"", extra)
}

fn start_broker_auth(lab: &Lab, b: &Host, name: &str, auth: &str, extra: &str) -> Proc {
    testbed::start_broker(lab, b, name, auth, extra, "alice", PASSWORD)
}

/// NetworkManager in `c` with a base connection on `c_if`; broker host `b` on the same link.
struct Bed {
    lab: Lab,
    c: Host,
    b: Host,
    c_if: String,
    nm: Nm,
}

fn direct(test: &str) -> Bed {
    let lab = Lab::new(test).unwrap();
    let (c, b) = (lab.host("c").unwrap(), lab.host("b").unwrap());
    let (c_if, _) = lab.link(&c, &[], &b, &["192.0.2.1/24", "2001:db8:1::1/64"]).unwrap();
    let nm = Nm::start(&lab, &c).unwrap();
    nm.base_connection(&c_if, Some("192.0.2.2/24"), None, Some("2001:db8:1::2/64"))
        .unwrap();
    Bed { lab, c, b, c_if, nm }
}

/// The tunnel device of VPN `id`: `tsp-` and the first 8 hex digits of its UUID (one name per
/// profile, so a device left by a killed service is found again).
fn tundev(nm: &Nm, id: &str) -> String {
    let uuid = nm.con_field(id, "connection.uuid");
    format!(
        "tsp-{}",
        uuid.chars().filter(char::is_ascii_hexdigit).take(8).collect::<String>()
    )
}

fn up_and_connected(bed: &Bed, id: &str) -> String {
    let out = bed.nm.up(id, &bed.c_if);
    bed.nm
        .wait_vpn_state(id, 5, 20 * SEC)
        .unwrap_or_else(|e| panic!("{e}\nnmcli: {} {}", out.stdout, out.stderr));
    tundev(&bed.nm, id)
}

fn down_and_gone(bed: &Bed, id: &str, dev: &str) {
    bed.nm.nmcli(&["connection", "down", id]).unwrap();
    assert!(
        wait_until(10 * SEC, || !bed.c.link_exists(dev)).is_ok(),
        "{dev} still exists after `con down`"
    );
    assert!(
        wait_until(10 * SEC, || bed.nm.plugin_pids().is_empty()).is_ok(),
        "nm-tsp-service still runs after `con down`: {:?}",
        bed.nm.plugin_pids()
    );
}

#[test]
fn up_pings_and_down_cleanly_v6v4() {
    if !require_root() || !require_nm() {
        return;
    }
    let bed = direct("nm_up_down_v6v4");
    let _broker = start_broker(&bed.lab, &bed.b, "broker", "");
    bed.nm
        .add_vpn("tsp1", "server=192.0.2.1, tunnel-mode=v6anyv4", None, &[])
        .unwrap();
    let dev = up_and_connected(&bed, "tsp1");
    assert!(dev.starts_with("tsp-"), "tunnel device {dev:?}");
    // The address the broker assigned, from NetworkManager's point of view and the kernel's.
    let ip6 = bed.nm.con_field("tsp1", "IP6.ADDRESS");
    assert!(ip6.contains("2001:db8:b::"), "IP6.ADDRESS {ip6:?}");
    let addrs = bed.c.addrs(&dev).unwrap();
    assert!(addrs.iter().any(|a| a.starts_with("2001:db8:b::")), "{dev}: {addrs:?}");
    let banner = bed.nm.con_field("tsp1", "VPN.BANNER");
    assert!(banner.contains("TSP v6v4 tunnel with 192.0.2.1"), "banner {banner:?}");
    let routes = bed.c.routes_v6().unwrap();
    assert!(
        routes
            .iter()
            .any(|r| r.starts_with("default") && r.contains(&format!("dev {dev}"))),
        "no default route through {dev}: {routes:?}"
    );
    assert!(bed.c.ping(BROKER_V6, 3, 2), "no IPv6 ping through the tunnel");
    assert_least_privilege(&bed.nm);
    down_and_gone(&bed, "tsp1", &dev);
    let routes = bed.c.routes_v6().unwrap();
    assert!(!routes.iter().any(|r| r.contains(&dev)), "routes left: {routes:?}");
}

/// The running service (with its tunnel up) runs as its system user, holds CAP_NET_ADMIN and
/// CAP_NET_RAW and nothing else, in every set, and no_new_privs: read from /proc as the kernel
/// sees it.
fn assert_least_privilege(nm: &Nm) {
    // CAP_NET_ADMIN is bit 12, CAP_NET_RAW bit 13.
    const NET_ADMIN_RAW: u64 = (1 << 12) | (1 << 13);
    let pids = nm.plugin_pids();
    assert!(!pids.is_empty(), "no nm-tsp-service running");
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_else(|| panic!("{name} missing in /proc/{pid}/status"))
        };
        let set = |name: &str| u64::from_str_radix(field(name), 16).expect("hex capability set");
        assert_eq!(set("CapEff:"), NET_ADMIN_RAW, "effective set of {pid}");
        assert_eq!(set("CapPrm:"), NET_ADMIN_RAW, "permitted set of {pid}");
        assert_eq!(set("CapBnd:"), NET_ADMIN_RAW, "bounding set of {pid}");
        assert_eq!(set("CapInh:"), 0, "inheritable set of {pid}");
        assert_eq!(set("CapAmb:"), 0, "ambient set of {pid}");
        assert_eq!(field("NoNewPrivs:"), "1", "no_new_privs of {pid}");
        let uid = testbed::service_user::ensure().unwrap().to_string();
        assert!(
            field("Uid:").split_whitespace().all(|id| id == uid),
            "uids of {pid}: {} (the service's user is {uid})",
            field("Uid:")
        );
    }
}

/// Behind an nftables masquerade the broker picks v6udpv4; NetworkManager adds the host route
/// to the broker through the base connection's gateway.
#[test]
fn nat_gives_v6udpv4() {
    if !require_root() || !require_nm() {
        return;
    }
    let lab = Lab::new("nm_nat").unwrap();
    let (n, r, b) = (lab.host("n").unwrap(), lab.host("r").unwrap(), lab.host("b").unwrap());
    let (n_if, _) = lab.link(&n, &[], &r, &["198.51.100.1/24"]).unwrap();
    let (r_out, _) = lab.link(&r, &["203.0.113.2/24"], &b, &["203.0.113.1/24"]).unwrap();
    r.masquerade(&r_out).unwrap();
    let nm = Nm::start(&lab, &n).unwrap();
    nm.base_connection(&n_if, Some("198.51.100.2/24"), Some("198.51.100.1"), None)
        .unwrap();
    let _broker = start_broker(&lab, &b, "broker", "");
    nm.add_vpn("natted", "server=203.0.113.1, tunnel-mode=v6anyv4", None, &[])
        .unwrap();
    let out = nm.up("natted", &n_if);
    nm.wait_vpn_state("natted", 5, 20 * SEC)
        .unwrap_or_else(|e| panic!("{e}\n{}{}", out.stdout, out.stderr));
    let banner = nm.con_field("natted", "VPN.BANNER");
    assert!(banner.contains("TSP v6udpv4 tunnel"), "banner {banner:?}");
    let routes = n.routes_v4().unwrap();
    assert!(
        routes.iter().any(|r| r.starts_with("203.0.113.1 via 198.51.100.1")),
        "no host route to the broker: {routes:?}"
    );
    assert!(n.ping(BROKER_V6, 3, 2), "no IPv6 ping through the NATed tunnel");
}

/// IPv4 in IPv6: NetworkManager gets an Ip4Config with the broker's IPv4 address for us.
#[test]
fn v4v6_gives_ipv4() {
    if !require_root() || !require_nm() {
        return;
    }
    let bed = direct("nm_v4v6");
    let _broker = start_broker(&bed.lab, &bed.b, "broker", "");
    bed.nm
        .add_vpn(
            "v4",
            "server=[2001:db8:1::1], tunnel-mode=v4v6",
            None,
            &["ipv6.method", "disabled"],
        )
        .unwrap();
    let dev = up_and_connected(&bed, "v4");
    let ip4 = bed.nm.con_field("v4", "IP4.ADDRESS");
    assert!(ip4.contains("198.51.100."), "IP4.ADDRESS {ip4:?}");
    let addrs = bed.c.addrs(&dev).unwrap();
    assert!(addrs.iter().any(|a| a.starts_with("198.51.100.")), "{dev}: {addrs:?}");
    assert!(
        bed.c.ping(BROKER_V4_INNER, 3, 2),
        "no IPv4 ping through the v4v6 tunnel"
    );
    down_and_gone(&bed, "v4", &dev);
}

/// DIGEST-MD5 with a password NetworkManager keeps (flags 0); then a wrong one: FAILED with
/// reason login-failed, and neither password in any log.
#[test]
fn digest_md5_and_wrong_password() {
    if !require_root() || !require_nm() {
        return;
    }
    let bed = direct("nm_digest");
    let broker = start_broker(&bed.lab, &bed.b, "broker", "");
    let data = "server=192.0.2.1, auth-method=digest-md5, username=alice, password-flags=0";
    bed.nm
        .add_vpn("good", data, Some(&format!("password={PASSWORD}")), &[])
        .unwrap();
    let dev = up_and_connected(&bed, "good");
    assert!(bed.c.ping(BROKER_V6, 2, 2));
    assert!(bed.nm.con_field("good", "VPN.BANNER").contains("DIGEST-MD5"));
    down_and_gone(&bed, "good", &dev);

    let wrong = "Wr0ng-Guess";
    bed.nm
        .add_vpn("bad", data, Some(&format!("password={wrong}")), &[])
        .unwrap();
    let out = bed.nm.up("bad", &bed.c_if);
    let said = format!("{}{}", out.stdout, out.stderr);
    // nmcli's words for reason LOGIN_FAILED.
    assert!(said.contains("Invalid secrets"), "nmcli said: {said}");
    let log = bed.nm.log();
    assert!(
        log.contains("reason 'login-failed'") || log.contains("login-failed"),
        "NetworkManager did not record login-failed:\n{}",
        testbed::tail(&log, 40)
    );
    assert!(log.contains("login failed"), "the plugin's log does not name the cause");
    for secret in [PASSWORD, wrong] {
        assert!(!log.contains(secret), "a password is in NetworkManager's log");
        assert!(!broker.output().contains(secret), "a password is in the broker's log");
        assert!(!said.contains(secret), "a password is in nmcli's output");
    }
    assert!(wait_until(10 * SEC, || bed.nm.plugin_pids().is_empty()).is_ok());
    // Nothing the plugin wrote (host keys, multi-site files) holds a password.
    let written = files_below(bed.nm.state_dir());
    assert!(!written.is_empty(), "the plugin recorded no last server");
    for file in written {
        let text = std::fs::read(&file).unwrap_or_default();
        for secret in [PASSWORD, wrong] {
            assert!(
                !text.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds a password",
                file.display()
            );
        }
    }
}

fn files_below(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_below(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// `vpn.persistent yes`: the broker restarted ⇒ back to activated with the same address; the
/// base IPv4 address changed ⇒ traffic back within 2 s.
#[test]
fn persistent_survives_broker_restart_and_roaming() {
    if !require_root() || !require_nm() {
        return;
    }
    let bed = direct("nm_persist");
    let broker = start_broker(&bed.lab, &bed.b, "broker", "");
    bed.nm
        .add_vpn(
            "p",
            "server=192.0.2.1, tunnel-mode=v6v4, keepalive-interval=1, retry-delay=1, retry-delay-max=2",
            None,
            &["vpn.persistent", "yes"],
        )
        .unwrap();
    let dev = up_and_connected(&bed, "p");
    // The broker's assignment (the link-local address changes with the device).
    let global = |nm: &Nm| {
        nm.con_field("p", "IP6.ADDRESS")
            .split(", ")
            .filter(|a| a.starts_with("2001:"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let before = global(&bed.nm);
    assert!(!before.is_empty());
    assert!(bed.c.ping(BROKER_V6, 1, 2));

    broker.signal(Signal::Kill).unwrap();
    broker.wait_exit(5 * SEC);
    // Three missed keepalives: NetworkManager shows the VPN connecting again.
    bed.nm.wait_vpn_state("p", 3, 15 * SEC).unwrap();
    let _broker2 = start_broker(&bed.lab, &bed.b, "broker", "");
    bed.nm.wait_vpn_state("p", 5, 20 * SEC).unwrap();
    assert_eq!(global(&bed.nm), before, "a different address after the restart");
    assert!(
        bed.c.ping_until(BROKER_V6, 5 * SEC).is_some(),
        "no traffic after the broker restart"
    );

    let t0 = std::time::Instant::now();
    bed.nm
        .nmcli(&["device", "modify", &bed.c_if, "ipv4.addresses", "192.0.2.3/24"])
        .unwrap();
    let back = bed.c.ping_until(BROKER_V6, 10 * SEC).map(|_| t0.elapsed());
    eprintln!("traffic back {back:?} after the base address changed");
    assert!(back.is_some_and(|e| e <= 2 * SEC), "traffic back only after {back:?}");
    bed.nm.wait_vpn_state("p", 5, 5 * SEC).unwrap();
    assert!(bed.c.link_exists(&dev));
}

/// Two tsp connections at once, one process each; NetworkManager killed ⇒ both plugins exit
/// and remove their devices.
#[test]
fn two_connections_then_networkmanager_killed() {
    if !require_root() || !require_nm() {
        return;
    }
    let bed = direct("nm_two");
    let _broker = start_broker(&bed.lab, &bed.b, "broker", "");
    for id in ["one", "two"] {
        bed.nm
            .add_vpn(
                id,
                "server=192.0.2.1, tunnel-mode=v6udpv4",
                None,
                &["ipv6.never-default", "yes"],
            )
            .unwrap();
    }
    let d1 = up_and_connected(&bed, "one");
    let d2 = up_and_connected(&bed, "two");
    assert_ne!(d1, d2);
    assert_eq!(
        bed.nm.vpn_state("one"),
        5,
        "the first VPN dropped when the second came up"
    );
    assert_eq!(bed.nm.plugin_pids().len(), 2, "one nm-tsp-service per connection");
    assert!(bed.c.link_exists(&d1) && bed.c.link_exists(&d2));
    let pids = bed.nm.plugin_pids();
    bed.nm.daemon.signal(Signal::Kill).unwrap();
    for d in [&d1, &d2] {
        assert!(
            wait_until(10 * SEC, || !bed.c.link_exists(d)).is_ok(),
            "{d} outlived NetworkManager"
        );
    }
    assert!(
        wait_until(10 * SEC, || pids
            .iter()
            .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()))
        .is_ok(),
        "plugins outlived NetworkManager"
    );
}

/// A plugin killed with SIGKILL leaves its (persistent) device; the next activation removes
/// it and connects.
#[test]
fn killed_plugin_device_is_cleaned_by_the_next_activation() {
    if !require_root() || !require_nm() {
        return;
    }
    let bed = direct("nm_sigkill");
    let _broker = start_broker(&bed.lab, &bed.b, "broker", "");
    bed.nm
        .add_vpn("k", "server=192.0.2.1, tunnel-mode=v6v4", None, &[])
        .unwrap();
    let dev = up_and_connected(&bed, "k");
    for pid in bed.nm.plugin_pids() {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    assert!(
        wait_until(10 * SEC, || bed.nm.vpn_state("k") != 5).is_ok(),
        "still connected"
    );
    assert!(
        bed.c.link_exists(&dev),
        "the killed plugin's device should be left behind"
    );
    let dev2 = up_and_connected(&bed, "k");
    assert_eq!(dev, dev2);
    assert!(
        bed.c.ping(BROKER_V6, 2, 2),
        "no ping after the stale device was replaced"
    );
    down_and_gone(&bed, "k", &dev2);
}

/// Router mode under NetworkManager: the delegated prefix is advertised on the LAN interface
/// (NetworkManager has no prefix delegation for VPNs), a LAN host autoconfigures from our RAs
/// and reaches the broker through the tunnel; `down` withdraws the LAN side.
#[test]
fn router_mode_serves_the_lan() {
    if !require_root() || !require_nm() {
        return;
    }
    let lab = Lab::new("nm_router").unwrap();
    let [c, b, l] = ["c", "b", "l"].map(|h| lab.host(h).unwrap());
    let (c_if, _) = lab.link(&c, &[], &b, &["192.0.2.1/24"]).unwrap();
    let (l_if, c_lan) = lab.link(&l, &[], &c, &[]).unwrap();
    l.sysctl(&format!("net.ipv6.conf.{l_if}.accept_ra"), "2").unwrap();
    let nm = Nm::start_with(&lab, &c, &[&c_lan]).unwrap();
    nm.base_connection(&c_if, Some("192.0.2.2/24"), None, None).unwrap();
    let broker = start_broker(
        &lab,
        &b,
        "broker",
        "prefix_pool = \"2001:db8:c000::/36\"\nforwarding = true\n",
    );
    nm.add_vpn(
        "router",
        &format!(
            "server=192.0.2.1, auth-method=digest-md5, username=alice, password-flags=0, host-type=router, \
             prefix-length=56, lan-interface={c_lan}"
        ),
        Some(&format!("password={PASSWORD}")),
        &[],
    )
    .unwrap();
    let out = nm.up("router", &c_if);
    nm.wait_vpn_state("router", 5, 20 * SEC)
        .unwrap_or_else(|e| panic!("{e}\n{}{}", out.stdout, out.stderr));
    let banner = nm.con_field("router", "VPN.BANNER");
    let prefix = banner
        .split("; ")
        .find_map(|p| p.strip_prefix("delegated prefix "))
        .and_then(|p| p.split('/').next())
        .unwrap_or_else(|| panic!("no delegated prefix in the banner {banner:?}"))
        .to_owned();
    assert!(banner.contains(&format!("advertised on {c_lan}")), "{banner}");
    let net: std::net::Ipv6Addr = prefix.parse().unwrap();
    let lan64 = u128::from(net) >> 64;
    // Addresses (CIDR text) of `dev` on `host` inside the LAN /64.
    let in_lan = |host: &Host, dev: &str| -> Vec<std::net::Ipv6Addr> {
        host.addrs(dev)
            .unwrap_or_default()
            .iter()
            .filter_map(|a| a.split('/').next()?.parse::<std::net::Ipv6Addr>().ok())
            .filter(|a| u128::from(*a) >> 64 == lan64)
            .collect()
    };
    assert!(
        in_lan(&c, &c_lan).contains(&std::net::Ipv6Addr::from(u128::from(net) | 1)),
        "no <prefix>::1 on {c_lan}: {:?}",
        c.addrs(&c_lan)
    );
    // The LAN host's SLAAC address, from our advertisements.
    assert!(
        wait_until(15 * SEC, || !in_lan(&l, &l_if).is_empty()).is_ok(),
        "no SLAAC address in {net}/64 on the LAN host: {:?}",
        l.addrs(&l_if)
    );
    assert!(
        l.ping_until(BROKER_V6, 10 * SEC).is_some(),
        "the LAN host cannot reach the broker through the tunnel"
    );
    nm.nmcli(&["connection", "down", "router"]).unwrap();
    assert!(
        wait_until(10 * SEC, || in_lan(&c, &c_lan).is_empty()).is_ok(),
        "the router address stayed on {c_lan}"
    );
    // The last advertisement (router lifetime 0) took the LAN host's default route away.
    assert!(
        wait_until(10 * SEC, || !l
            .ip(&["-6", "route", "show", "default"])
            .unwrap_or_default()
            .contains("via"))
        .is_ok(),
        "the LAN host kept its default route"
    );
    assert!(!broker.output().contains(PASSWORD));
}

/// PASSDSS: the broker's host key is pinned on first use in the service's state directory; a
/// different key later fails the connection (login-failed) with a message that says so.
#[test]
fn passdss_host_key_pinned_and_mismatch_refused() {
    if !require_root() || !require_nm() {
        return;
    }
    let bed = direct("nm_passdss");
    let keys: Vec<String> = ["k1", "k2"]
        .iter()
        .map(|k| {
            let path = bed.lab.dir().join(k);
            let out = std::process::Command::new(BROKER)
                .args(["gen-host-key", path.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "gen-host-key: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            path.display().to_string()
        })
        .collect();
    let auth = "\"passdss-3des-1\"";
    let broker = start_broker_auth(
        &bed.lab,
        &bed.b,
        "broker",
        auth,
        &format!("host_key_file = \"{}\"\n", keys[0]),
    );
    let data = "server=192.0.2.1, auth-method=passdss-3des-1, username=alice, password-flags=0";
    bed.nm
        .add_vpn("dss", data, Some(&format!("password={PASSWORD}")), &[])
        .unwrap();
    let dev = up_and_connected(&bed, "dss");
    assert!(bed.nm.con_field("dss", "VPN.BANNER").contains("PASSDSS-3DES-1"));
    let known = std::fs::read_to_string(bed.nm.state_dir().join("known_hosts")).unwrap_or_default();
    assert!(known.contains("192.0.2.1 ssh-dss "), "key not pinned: {known:?}");
    down_and_gone(&bed, "dss", &dev);

    broker.signal(Signal::Kill).unwrap();
    broker.wait_exit(5 * SEC);
    let _impostor = start_broker_auth(
        &bed.lab,
        &bed.b,
        "broker",
        auth,
        &format!("host_key_file = \"{}\"\n", keys[1]),
    );
    let out = bed.nm.up("dss", &bed.c_if);
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(said.contains("Invalid secrets"), "nmcli said: {said}");
    let log = bed.nm.log();
    assert!(
        log.contains("does not match the stored key"),
        "no mismatch message:\n{}",
        testbed::tail(&log, 30)
    );
    assert_ne!(bed.nm.vpn_state("dss"), 5);
    assert_eq!(
        std::fs::read_to_string(bed.nm.state_dir().join("known_hosts")).unwrap_or_default(),
        known,
        "the pinned key changed"
    );
}

/// The TCP helper of [`persistent_vpn_keeps_a_tcp_transfer_across_a_base_change`] (runs only
/// with TSP_STREAM set).
#[test]
fn stream_helper() {
    netns::stream::helper();
}

/// The global (broker-assigned) IPv6 addresses NetworkManager shows for VPN `id`.
fn global6(nm: &Nm, id: &str) -> String {
    nm.con_field(id, "IP6.ADDRESS")
        .split(", ")
        .filter(|a| a.starts_with("2001:"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Issue 13 item 3 under NetworkManager: a persistent tsp VPN (an authenticated user, default
/// keepalive settings) over a base connection whose IPv4 address and default route change
/// while a TCP transfer runs through the tunnel: the transfer completes on its one connection,
/// every byte arrives, it never pauses more than 2 s, and the tunnel address is the same.
#[test]
fn persistent_vpn_keeps_a_tcp_transfer_across_a_base_change() {
    if !require_root() || !require_nm() {
        return;
    }
    let bed = direct("nm_tcp_roam");
    let broker = start_broker(&bed.lab, &bed.b, "broker", "");
    let data = "server=192.0.2.1, tunnel-mode=v6udpv4, auth-method=digest-md5, username=alice, password-flags=0";
    bed.nm
        .add_vpn(
            "roam",
            data,
            Some(&format!("password={PASSWORD}")),
            &["vpn.persistent", "yes"],
        )
        .unwrap();
    up_and_connected(&bed, "roam");
    let before = global6(&bed.nm, "roam");
    assert!(!before.is_empty(), "no broker-assigned address");
    assert!(bed.c.ping_until(BROKER_V6, 5 * SEC).is_some());

    let target = format!("[{BROKER_V6}]:5004");
    let stream = netns::stream::Stream::start(&bed.c, &bed.b, &target, &target, 10);
    std::thread::sleep(3 * SEC);
    let changed = netns::stream::now_ms();
    bed.nm
        .nmcli(&[
            "device",
            "modify",
            &bed.c_if,
            "ipv4.addresses",
            "192.0.2.3/24",
            "ipv4.gateway",
            "192.0.2.1",
        ])
        .unwrap();
    let report = stream.finish(60 * SEC);
    println!(
        "nm tcp roam: {report:?} (the change at {changed}, gap ended {} ms after it)",
        report.gap_end_ms.saturating_sub(changed)
    );
    report.assert_carried("nm tcp roam", 2 * SEC);
    bed.nm.wait_vpn_state("roam", 5, 5 * SEC).unwrap();
    assert_eq!(global6(&bed.nm, "roam"), before, "the tunnel address changed");
    assert!(
        broker.output().contains("192.0.2.3"),
        "the tunnel was not negotiated again from the new address"
    );
    assert!(
        bed.c
            .routes_v4()
            .unwrap()
            .iter()
            .any(|r| r.starts_with("default via 192.0.2.1")),
        "the base connection's new default route"
    );
}

/// Issue 13 item 5 under NetworkManager, default settings: the path dies silently under
/// traffic (nftables drops on both ends, no ICMP) ⇒ within 10 s NetworkManager shows the VPN
/// connecting; the path comes back ⇒ activated again, and pings pass, within a few seconds,
/// with nothing done by the user.
#[test]
fn silent_outage_shows_connecting_then_connected() {
    if !require_root() || !require_nm() {
        return;
    }
    let bed = direct("nm_outage");
    let _broker = start_broker(&bed.lab, &bed.b, "broker", "");
    bed.nm
        .add_vpn(
            "live",
            "server=192.0.2.1, tunnel-mode=v6udpv4",
            None,
            &["vpn.persistent", "yes"],
        )
        .unwrap();
    up_and_connected(&bed, "live");
    assert!(bed.c.ping_until(BROKER_V6, 5 * SEC).is_some());
    let pinger = bed.c.spawn("ping", &["-6", "-n", "-i", "0.2", BROKER_V6]).unwrap();
    std::thread::sleep(SEC);

    netns::cut_silently(&bed.c, &bed.c_if, &bed.b, &["192.0.2.2", "2001:db8:1::2"]);
    let connecting = bed.nm.wait_vpn_state("live", 3, 20 * SEC);
    println!("nm outage: connecting after {connecting:?} (goal ≤ 10 s)");
    let connecting = connecting.unwrap();
    assert!(
        connecting <= 10 * SEC,
        "NetworkManager showed connecting only after {connecting:?}"
    );
    // An outage of some seconds; the plugin probes the broker meanwhile.
    std::thread::sleep(3 * SEC);
    assert_eq!(bed.nm.vpn_state("live"), 3, "not connecting during the outage");

    netns::mend(&bed.c, &bed.b);
    let activated = bed.nm.wait_vpn_state("live", 5, 20 * SEC);
    println!("nm outage: activated again {activated:?} after the path came back");
    activated.unwrap();
    let pings = bed.c.ping_until(BROKER_V6, 5 * SEC);
    pinger.kill();
    assert!(
        pings.is_some(),
        "no ping after NetworkManager showed the VPN activated again"
    );
}

/// A VPN activated while its broker is not up yet (at boot, with its base connection): the
/// plugin keeps probing it instead of failing at once, and the VPN is activated soon after the
/// broker listens.
#[test]
fn vpn_waits_for_a_broker_that_comes_up_later() {
    if !require_root() || !require_nm() {
        return;
    }
    let bed = direct("nm_late_broker");
    bed.nm
        .add_vpn("late", "server=192.0.2.1, tunnel-mode=v6udpv4", None, &[])
        .unwrap();
    // `nmcli connection up` waits for the activation: run it while the broker starts.
    let up = std::thread::scope(|s| {
        let up = s.spawn(|| bed.nm.up("late", &bed.c_if));
        std::thread::sleep(5 * SEC);
        assert_eq!(bed.nm.vpn_state("late"), 3, "not connecting while the broker is down");
        let _broker = start_broker(&bed.lab, &bed.b, "broker", "");
        let t = std::time::Instant::now();
        let activated = bed.nm.wait_vpn_state("late", 5, 20 * SEC);
        println!("nm late broker: activated {:?} after the broker listened", t.elapsed());
        activated.unwrap();
        assert!(
            bed.c.ping_until(BROKER_V6, 5 * SEC).is_some(),
            "no ping through the VPN"
        );
        up.join().unwrap()
    });
    assert!(
        up.stdout.contains("successfully activated"),
        "nmcli: {} {}",
        up.stdout,
        up.stderr
    );
}
