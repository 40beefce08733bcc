//! Real tunnels in network namespaces: `tsp-broker` in one host, `tspc` in another, IPv6 (or,
//! for v4v6, IPv4) pings through the userspace datapaths, NAT detection, and roaming. Root
//! only (CI is root); each test prints a skip line otherwise.

mod netns;

use std::time::{Duration, Instant};

use netns::{Host, Lab, Proc, Signal, require_root};

const SEC: Duration = Duration::from_secs(1);
const TSPC: &str = env!("CARGO_BIN_EXE_tspc");
const BROKER: &str = env!("CARGO_BIN_EXE_tsp-broker");
const BROKER_V6: &str = "2001:db8:b::1";

fn start_broker(lab: &Lab, b: &Host, extra: &str) -> Proc {
    let toml = format!(
        "listen = [\"[::]:3653\"]\nauth = [\"anonymous\"]\nserver_ipv6 = \"{BROKER_V6}\"\nclient_pool = \"2001:db8:b::/64\"\nkeepalive_min = 1\n{extra}"
    );
    let conf = lab.file("broker.toml", &toml).unwrap();
    let p = b.spawn(BROKER, &["-c", conf.to_str().unwrap()]).unwrap();
    p.wait_for_output("listening", 10 * SEC).unwrap();
    p
}

/// Starts tspc in `host` with these gogoc.conf lines and waits for the tunnel.
fn start_client(lab: &Lab, host: &Host, name: &str, lines: &[&str]) -> Proc {
    let conf = lab.file(&format!("{name}.conf"), &(lines.join("\n") + "\n")).unwrap();
    let p = host.spawn(TSPC, &["-f", conf.to_str().unwrap()]).unwrap();
    p.wait_for_output("(up)", 10 * SEC).unwrap();
    p
}

fn field(output: &str, key: &str) -> Option<String> {
    output
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(key).map(|v| v.trim().to_owned()))
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

/// Every mode: the tunnel comes up, carries pings, and SIGTERM leaves the client's links,
/// addresses and routes exactly as they were.
#[test]
fn each_mode_carries_traffic_and_cleans_up() {
    if !require_root() {
        return;
    }
    for (mode, server, ifname, target) in [
        ("v6udpv4", "192.0.2.1", "tun", BROKER_V6),
        ("v6v4", "192.0.2.1", "sit1", BROKER_V6),
        ("v4v6", "[2001:db8:1::1]", "sit0", "198.51.100.1"),
    ] {
        let (lab, c, b, _) = pair(&format!("modes_{mode}"));
        let before = (
            c.ip(&["-o", "addr"]).unwrap(),
            c.routes_v6().unwrap(),
            c.routes_v4().unwrap(),
        );
        let broker = start_broker(&lab, &b, "");
        let client = start_client(
            &lab,
            &c,
            "c",
            &[
                &format!("server={server}"),
                "auth_method=anonymous",
                &format!("tunnel_mode={mode}"),
            ],
        );
        let out = client.output();
        assert_eq!(field(&out, "mode:").as_deref(), Some(mode), "{out}");
        assert!(c.link_exists(ifname), "{mode}: no {ifname}");
        assert!(c.ping(target, 3, 2), "{mode}: no ping through the tunnel to {target}");
        // The tunnel address is on the device, the routes of gogoc's template point at it.
        let addrs = c.addrs(ifname).unwrap();
        if mode == "v4v6" {
            assert!(addrs.iter().any(|a| a.starts_with("198.51.100.")), "{addrs:?}");
            assert!(
                c.routes_v4().unwrap().iter().any(|r| r.starts_with("default dev sit0")),
                "{:?}",
                c.routes_v4()
            );
        } else {
            assert!(
                addrs
                    .iter()
                    .any(|a| a.starts_with("2001:db8:b::") && a.ends_with("/128")),
                "{addrs:?}"
            );
            let routes = c.routes_v6().unwrap();
            assert!(
                routes.iter().any(|r| r.starts_with(&format!("default dev {ifname}"))),
                "{routes:?}"
            );
            assert!(
                routes.iter().any(|r| r.starts_with(&format!("2000::/3 dev {ifname}"))),
                "{routes:?}"
            );
        }
        assert!(broker.output().contains(&format!("mode={mode}")), "{}", broker.output());
        // The datapath was chosen at run time: this kernel has no sit/ip6tnl links.
        if mode != "v6udpv4" {
            assert!(
                out.contains("userspace datapath"),
                "{mode}: no datapath choice logged:\n{out}"
            );
        }
        client.signal(Signal::Term).unwrap();
        assert!(
            client.wait_exit(5 * SEC).is_some(),
            "{mode}: tspc did not exit on SIGTERM"
        );
        assert!(!c.link_exists(ifname), "{mode}: {ifname} left behind");
        let after = (
            c.ip(&["-o", "addr"]).unwrap(),
            c.routes_v6().unwrap(),
            c.routes_v4().unwrap(),
        );
        assert_eq!(before, after, "{mode}: addresses or routes left behind");
    }
}

/// v6anyv4: the broker sees a NATed client at another address and offers v6udpv4; a client
/// on its own link gets v6v4. Both carry traffic.
#[test]
fn nat_detection_chooses_the_mode() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("nat_detection").unwrap();
    let [c, b, n, r] = ["c", "b", "n", "r"].map(|h| lab.host(h).unwrap());
    lab.link(&c, &["192.0.2.2/24"], &b, &["192.0.2.1/24"]).unwrap();
    lab.link(&n, &["198.51.100.2/24"], &r, &["198.51.100.1/24"]).unwrap();
    let (r_out, _) = lab.link(&r, &["203.0.113.2/24"], &b, &["203.0.113.1/24"]).unwrap();
    n.route_add("default", "198.51.100.1").unwrap();
    r.masquerade(&r_out).unwrap();
    let _broker = start_broker(&lab, &b, "");
    let direct = start_client(
        &lab,
        &c,
        "direct",
        &["server=192.0.2.1", "auth_method=anonymous", "tunnel_mode=v6anyv4"],
    );
    let natted = start_client(
        &lab,
        &n,
        "natted",
        &["server=203.0.113.1", "auth_method=anonymous", "tunnel_mode=v6anyv4"],
    );
    assert_eq!(field(&direct.output(), "mode:").as_deref(), Some("v6v4"));
    assert_eq!(field(&natted.output(), "mode:").as_deref(), Some("v6udpv4"));
    assert!(
        field(&natted.output(), "client:").is_some_and(|v| v.contains("IPv4 203.0.113.2")),
        "{}",
        natted.output()
    );
    assert!(c.ping(BROKER_V6, 2, 2));
    assert!(n.ping(BROKER_V6, 2, 2));
}

/// Roaming: the client's IPv4 address changes while it pings through the tunnel; tspc notices
/// (netlink), negotiates again from the new address, and traffic flows again within 2 s.
#[test]
fn roaming_resumes_within_two_seconds() {
    if !require_root() {
        return;
    }
    for mode in ["v6udpv4", "v6v4"] {
        let (lab, c, b, c_if) = pair(&format!("roaming_{mode}"));
        let broker = start_broker(&lab, &b, "");
        let client = start_client(
            &lab,
            &c,
            "c",
            &[
                "server=192.0.2.1",
                "auth_method=anonymous",
                &format!("tunnel_mode={mode}"),
            ],
        );
        assert!(c.ping(BROKER_V6, 1, 2));
        let mark = client.mark();
        let t0 = Instant::now();
        c.set_addr(&c_if, "192.0.2.2/24", "192.0.2.3/24").unwrap();
        let back = c.ping_until(BROKER_V6, 10 * SEC);
        let elapsed = back.map(|_| t0.elapsed());
        eprintln!("{mode}: traffic back {elapsed:?} after the address change");
        client
            .wait_for_output_since(mark, "local address changed from 192.0.2.2 to 192.0.2.3", 5 * SEC)
            .unwrap();
        client.wait_for_output_since(mark, "(IPv4 192.0.2.3)", 5 * SEC).unwrap();
        // A functional requirement of the issue, not a benchmark: gogoc needed ~95 s.
        assert!(
            elapsed.is_some_and(|e| e <= 2 * SEC),
            "{mode}: traffic back only after {elapsed:?}"
        );
        assert!(broker.output().contains("192.0.2.3"), "the broker saw the new address");
    }
}

/// gogoc's template mode: the script gets the TSP_* environment at creation and teardown and
/// nothing else; tspc does not configure the host itself.
#[test]
fn template_mode_runs_the_script_with_gogocs_environment() {
    if !require_root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let (lab, c, b, _) = pair("template_mode");
    let _broker = start_broker(&lab, &b, "");
    let home = lab.dir().join("home");
    std::fs::create_dir_all(home.join("template")).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(home.join("template"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = lab.dir().join("template.log");
    let script = home.join("template/linux.sh");
    std::fs::write(
        &script,
        format!("env | grep '^TSP_' | sort >> {0}\necho --- >> {0}\n", log.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = lab
        .file(
            "c.conf",
            &format!(
                "server=192.0.2.1\nauth_method=anonymous\ntunnel_mode=v6udpv4\ngogoc_dir={}\n",
                home.display()
            ),
        )
        .unwrap();
    let client = c.spawn(TSPC, &["-f", conf.to_str().unwrap(), "--template"]).unwrap();
    client
        .wait_for_output("configured by the template script", 10 * SEC)
        .unwrap();
    assert!(
        c.addrs("tun").unwrap().iter().all(|a| !a.starts_with("2001:db8:b::")),
        "tspc configured the address itself"
    );
    client.signal(Signal::Term).unwrap();
    assert!(client.wait_exit(5 * SEC).is_some());
    let text = std::fs::read_to_string(&log).unwrap();
    let runs: Vec<&str> = text.split("---\n").filter(|r| !r.trim().is_empty()).collect();
    assert_eq!(runs.len(), 2, "creation and teardown: {text}");
    for (run, op) in runs.iter().zip(["TSP_TUNNEL_CREATION", "TSP_TUNNEL_TEARDOWN"]) {
        for want in [
            format!("TSP_OPERATION={op}"),
            "TSP_TUNNEL_MODE=v6udpv4".into(),
            "TSP_TUNNEL_INTERFACE=tun".into(),
            "TSP_SERVER_ADDRESS_IPV4=192.0.2.1".into(),
            "TSP_CLIENT_ADDRESS_IPV4=192.0.2.2".into(),
            "TSP_SERVER_ADDRESS_IPV6=2001:db8:b::1".into(),
            "TSP_TUNNEL_PREFIXLEN=128".into(),
            "TSP_HOST_TYPE=host".into(),
            format!("TSP_HOME_DIR={}", home.display()),
        ] {
            assert!(run.lines().any(|l| l == want), "missing {want} in:\n{run}");
        }
    }
}
