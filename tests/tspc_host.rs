//! tspc and the host it runs on, in network namespaces: a native IPv6 default route already
//! there, a router request answered without a prefix, and proxy mode (a tunnel negotiated for
//! an external router, nothing configured locally). Root only (CI is root); each test prints a
//! skip line otherwise.

mod netns;

use std::time::Duration;

use netns::{Host, Lab, Proc, Signal, require_root};

const SEC: Duration = Duration::from_secs(1);
const TSPC: &str = env!("CARGO_BIN_EXE_tspc");
const BROKER: &str = env!("CARGO_BIN_EXE_tsp-broker");
const BROKER_V6: &str = "2001:db8:b::1";

fn start_broker(lab: &Lab, b: &Host) -> Proc {
    let toml = format!(
        "listen = [\"[::]:3653\"]\nauth = [\"anonymous\"]\nserver_ipv6 = \"{BROKER_V6}\"\nclient_pool = \"2001:db8:b::/64\"\nkeepalive_min = 1\n"
    );
    let conf = lab.file("broker.toml", &toml).unwrap();
    let p = b.spawn(BROKER, &["-c", conf.to_str().unwrap()]).unwrap();
    p.wait_for_output("listening", 10 * SEC).unwrap();
    p
}

fn spawn_client(lab: &Lab, host: &Host, name: &str, lines: &[&str], args: &[&str]) -> Proc {
    let conf = lab.file(&format!("{name}.conf"), &(lines.join("\n") + "\n")).unwrap();
    let mut all = vec!["-f", conf.to_str().unwrap()];
    all.extend_from_slice(args);
    host.spawn(TSPC, &all).unwrap()
}

/// Client `c` (192.0.2.2, 2001:db8:1::2) and broker `b` (192.0.2.1, 2001:db8:1::1) on one link.
fn pair(test: &str) -> (Lab, Host, Host, String) {
    let lab = Lab::new(test).unwrap();
    let (c, b) = (lab.host("c").unwrap(), lab.host("b").unwrap());
    let (c_if, _) = lab
        .link(
            &c,
            &["192.0.2.2/24", "2001:db8:1::2/64"],
            &b,
            &["192.0.2.1/24", "2001:db8:1::1/64"],
        )
        .unwrap();
    (lab, c, b, c_if)
}

fn defaults_v6(h: &Host) -> Vec<String> {
    h.routes_v6()
        .unwrap()
        .into_iter()
        .filter(|r| r.starts_with("default"))
        .collect()
}

/// The client's links, addresses and routes (what tspc must leave alone or restore). The
/// kernel's fallback devices (`sit0` …) are left out: they appear in every namespace when their
/// module gets loaded, by this test's tunnel or by any other.
fn host_state(h: &Host) -> (Vec<String>, Vec<String>, Vec<String>, Vec<String>) {
    const KERNEL: [&str; 9] = [
        "sit0", "tunl0", "ip6tnl0", "gre0", "gretap0", "erspan0", "ip6gre0", "ip_vti0", "ip6_vti0",
    ];
    let links = h
        .ip(&["-o", "link"])
        .unwrap()
        .lines()
        .filter(|l| {
            let name = l.split(": ").nth(1).unwrap_or_default();
            let name = name.split('@').next().unwrap_or_default();
            !KERNEL.contains(&name)
        })
        .map(str::to_owned)
        .collect();
    // Addresses without their flags (DAD's `tentative` goes away by itself).
    let addrs = h
        .ip(&["-o", "addr"])
        .unwrap()
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.get(1..4).map(|w| w.join(" ")).unwrap_or_default()
        })
        .collect();
    (
        links,
        addrs,
        h.routes_v6().unwrap(),
        h.routes_v4().unwrap(),
    )
}

/// A network with native IPv6: `::/0` via a gateway on another interface exists before tspc
/// starts. The tunnel comes up beside it at once (no `File exists`, no renegotiation), traffic
/// to the broker's IPv6 and to global unicast goes through the tunnel, and after tspc stops the
/// native default route is there exactly as before.
#[test]
fn existing_ipv6_default_route_coexists_and_survives() {
    if !require_root() {
        return;
    }
    for mode in ["v6udpv4", "v6v4"] {
        let (lab, c, b, _) = pair(&format!("native_default_{mode}"));
        let g = lab.host("g").unwrap();
        lab.link(&c, &["2001:db8:9::2/64"], &g, &["2001:db8:9::1/64"]).unwrap();
        c.route_add("default", "2001:db8:9::1").unwrap();
        let native = defaults_v6(&c);
        assert_eq!(native.len(), 1, "{native:?}");
        assert!(native[0].contains("via 2001:db8:9::1"), "{native:?}");
        let before = host_state(&c);
        let _broker = start_broker(&lab, &b);
        let client = spawn_client(
            &lab,
            &c,
            "c",
            &["server=192.0.2.1", "auth_method=anonymous", &format!("tunnel_mode={mode}")],
            &[],
        );
        client.wait_for_output("(up)", 10 * SEC).unwrap();
        let ifname = if mode == "v6udpv4" { "tun" } else { "sit1" };
        let out = client.output();
        assert!(!out.contains("File exists"), "{mode}:\n{out}");
        assert!(!out.contains("could not set up the tunnel"), "{mode}:\n{out}");
        // Both default routes, the native one untouched; the tunnel's preferred.
        let defaults = defaults_v6(&c);
        assert!(defaults.contains(&native[0]), "{mode}: native route changed: {defaults:?}");
        assert!(
            defaults.iter().any(|r| r.starts_with(&format!("default dev {ifname}"))),
            "{mode}: {defaults:?}"
        );
        for dst in [BROKER_V6, "2001:db8:ffff::1"] {
            let get = c.ip(&["-6", "route", "get", dst]).unwrap();
            assert!(get.contains(&format!("dev {ifname}")), "{mode}: {dst} not via the tunnel: {get}");
        }
        assert!(c.ping(BROKER_V6, 3, 2), "{mode}: no ping through the tunnel");
        // Up once: no renegotiation loop.
        std::thread::sleep(2 * SEC);
        let out = client.output();
        assert_eq!(out.matches("(up)").count(), 1, "{mode}: renegotiated:\n{out}");
        client.signal(Signal::Term).unwrap();
        assert!(client.wait_exit(5 * SEC).is_some(), "{mode}: tspc did not exit");
        assert_eq!(defaults_v6(&c), native, "{mode}: the native default route did not survive");
        assert_eq!(host_state(&c), before, "{mode}: links, addresses or routes changed");
    }
}
