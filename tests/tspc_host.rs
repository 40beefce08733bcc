//! tspc and the host it runs on, in network namespaces: a native IPv6 default route already
//! there, a router request answered without a prefix, and proxy mode (a tunnel negotiated for
//! an external router, nothing configured locally). Root only (CI is root); each test prints a
//! skip line otherwise.

mod netns;

use std::time::Duration;

use netns::{Host, Lab, Proc, Signal, client_broker, require_root};

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
    (links, addrs, h.routes_v6().unwrap(), h.routes_v4().unwrap())
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
        let (lab, c, b, _) = client_broker(&format!("native_default_{mode}"));
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
            &[
                "server=192.0.2.1",
                "auth_method=anonymous",
                &format!("tunnel_mode={mode}"),
            ],
            &[],
        );
        client.wait_for_output("(up)", 10 * SEC).unwrap();
        let ifname = if mode == "v6udpv4" { "tun" } else { "sit1" };
        let out = client.output();
        assert!(!out.contains("File exists"), "{mode}:\n{out}");
        assert!(!out.contains("could not set up the tunnel"), "{mode}:\n{out}");
        // Both default routes, the native one untouched; the tunnel's preferred.
        let defaults = defaults_v6(&c);
        assert!(
            defaults.contains(&native[0]),
            "{mode}: native route changed: {defaults:?}"
        );
        assert!(
            defaults.iter().any(|r| r.starts_with(&format!("default dev {ifname}"))),
            "{mode}: {defaults:?}"
        );
        for dst in [BROKER_V6, "2001:db8:ffff::1"] {
            let get = c.ip(&["-6", "route", "get", dst]).unwrap();
            assert!(
                get.contains(&format!("dev {ifname}")),
                "{mode}: {dst} not via the tunnel: {get}"
            );
        }
        assert!(c.ping(BROKER_V6, 3, 2), "{mode}: no ping through the tunnel");
        // Up once: no renegotiation loop.
        std::thread::sleep(2 * SEC);
        let out = client.output();
        assert_eq!(out.matches("(up)").count(), 1, "{mode}: renegotiated:\n{out}");
        client.signal(Signal::Term).unwrap();
        assert!(client.wait_exit(5 * SEC).is_some(), "{mode}: tspc did not exit");
        assert_eq!(
            defaults_v6(&c),
            native,
            "{mode}: the native default route did not survive"
        );
        assert_eq!(host_state(&c), before, "{mode}: links, addresses or routes changed");
    }
}

/// A scripted TSP broker over TCP in `host`'s namespace (the bundled broker refuses an
/// anonymous router request and always delegates a prefix otherwise): ANONYMOUS, then a v6v4
/// offer for 192.0.2.2 **without a prefix**, whatever was asked; the session is then held
/// open. Returns the number of sessions served so far.
fn prefixless_broker(host: &Host) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tsp_proto::caps::{self, Capabilities};
    use tsp_proto::frame;
    use tsp_proto::status::StatusCode;
    use tsp_proto::types::TunnelMode;
    use tsp_proto::xml::{self, Offer};

    let ns = std::fs::File::open(format!("/run/netns/{}", host.ns())).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let sessions = Arc::new(AtomicUsize::new(0));
    let count = sessions.clone();
    std::thread::spawn(move || {
        // Only this thread moves; its sockets belong to the broker's namespace.
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let listener = TcpListener::bind("192.0.2.1:3653").unwrap();
        tx.send(()).unwrap();
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut w = conn.try_clone()?;
                let mut r = BufReader::new(conn);
                let mut line = String::new();
                let framed = |r: &mut BufReader<std::net::TcpStream>| -> std::io::Result<()> {
                    let mut header = String::new();
                    r.read_line(&mut header)?;
                    let n: usize = header
                        .trim()
                        .strip_prefix("Content-length:")
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0; n];
                    r.read_exact(&mut body)
                };
                r.read_line(&mut line)?; // VERSION=
                let caps = Capabilities {
                    tunnels: caps::TUNNEL_V6V4,
                    auths: caps::AUTH_ANONYMOUS,
                    ..Default::default()
                };
                w.write_all(&caps.to_line())?;
                r.read_line(&mut line)?; // AUTHENTICATE ANONYMOUS
                w.write_all(&frame::status_line(StatusCode::Success))?;
                framed(&mut r)?; // create, with its <router> element
                let offer = Offer {
                    mode: TunnelMode::V6V4,
                    lifetime: Some(604_800),
                    server_v4: "192.0.2.1".parse().unwrap(),
                    server_v6: BROKER_V6.parse().unwrap(),
                    client_v4: "192.0.2.2".parse().unwrap(),
                    client_v6: "2001:db8:b::2".parse().unwrap(),
                    client_dns_name: None,
                    client_dns_server: None,
                    prefix: None,
                    keepalive: None,
                };
                w.write_all(&frame::frame_reply(StatusCode::Success, &xml::build_info(&offer)))?;
                framed(&mut r)?; // accept
                // Hold the session until the client closes it.
                let mut rest = Vec::new();
                r.read_to_end(&mut rest).map(drop)
            });
        }
    });
    rx.recv_timeout(5 * SEC).expect("the scripted broker did not start");
    sessions
}

/// host_type=router answered without a prefix: an error naming the cause, no tunnel left, no
/// retry at once; with -b the run ends with that error. With router_fallback_host=yes: a
/// warning, and a host tunnel.
#[test]
fn router_request_without_prefix_is_an_error_unless_accepted() {
    use std::sync::atomic::Ordering;
    if !require_root() {
        return;
    }
    let (lab, c, b, c_if) = client_broker("router_no_prefix");
    let sessions = prefixless_broker(&b);
    let if_prefix = format!("if_prefix={c_if}");
    let base = [
        "server=192.0.2.1",
        "auth_method=anonymous",
        "tunnel_mode=v6v4",
        "keepalive=no",
        "host_type=router",
        if_prefix.as_str(),
        "retry_delay=30",
    ];
    let before = host_state(&c);

    // Default: an error, retried on the slow schedule (not at once).
    let client = spawn_client(&lab, &c, "router", &base, &[]);
    client.wait_for_output("answered without a prefix", 10 * SEC).unwrap();
    std::thread::sleep(3 * SEC);
    let out = client.output();
    assert!(out.contains("router_fallback_host=yes"), "the fix is not named:\n{out}");
    assert!(out.contains("retrying in 30 s"), "not the slow schedule:\n{out}");
    assert_eq!(
        out.matches("answered without a prefix").count(),
        1,
        "retried at once:\n{out}"
    );
    assert_eq!(sessions.load(Ordering::SeqCst), 1, "retried at once:\n{out}");
    assert!(!out.contains("(up)"), "a tunnel came up:\n{out}");
    assert!(!c.link_exists("tun"), "a tunnel device is left");
    assert_eq!(host_state(&c), before, "tspc changed the host");
    client.signal(Signal::Term).unwrap();
    assert!(client.wait_exit(5 * SEC).is_some());

    // Boot mode: the error ends the run.
    let boot = spawn_client(&lab, &c, "router-boot", &base, &["-b"]);
    let status = boot.wait_exit(10 * SEC).expect("tspc -b did not exit");
    assert!(!status.success(), "{}", boot.output());
    assert!(boot.output().contains("answered without a prefix"), "{}", boot.output());
    assert_eq!(host_state(&c), before, "tspc -b changed the host");

    // Accepted: a warning, and a host tunnel.
    let mut lines = base.to_vec();
    lines.push("router_fallback_host=yes");
    let client = spawn_client(&lab, &c, "router-fallback", &lines, &[]);
    client.wait_for_output("(up)", 10 * SEC).unwrap();
    let out = client.output();
    assert!(out.contains("running as a host"), "no warning:\n{out}");
    assert!(
        c.addrs("sit1").unwrap().iter().any(|a| a == "2001:db8:b::2/128"),
        "no host tunnel address: {:?}",
        c.addrs("sit1")
    );
    client.signal(Signal::Term).unwrap();
    assert!(client.wait_exit(5 * SEC).is_some());
    assert!(!c.link_exists("sit1"), "the tunnel is left behind");
}

/// proxy_client=yes: the tunnel is for an external router. tspc creates no device, address or
/// route in its namespace, prints the tunnel as gogoc's TSP_* variables, holds the session
/// until SIGTERM and then exits cleanly.
#[test]
fn proxy_client_configures_nothing_locally() {
    if !require_root() {
        return;
    }
    let (lab, c, b, _) = client_broker("proxy_client");
    let _broker = start_broker(&lab, &b);
    let before = host_state(&c);
    let client = spawn_client(
        &lab,
        &c,
        "proxy",
        &[
            "server=192.0.2.1",
            "auth_method=anonymous",
            "tunnel_mode=v6v4",
            "keepalive=no",
            "proxy_client=yes",
        ],
        &[],
    );
    client.wait_for_output("TSP_CLIENT_ADDRESS_IPV6=", 10 * SEC).unwrap();
    // Give a (wrong) local configuration time to happen.
    std::thread::sleep(2 * SEC);
    let out = client.output();
    assert!(client.status().is_none(), "tspc ended:\n{out}");
    let var = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k} in:\n{out}"))
            .to_owned()
    };
    assert!(var("TSP_CLIENT_ADDRESS_IPV6").starts_with("2001:db8:b::"), "{out}");
    assert_eq!(var("TSP_SERVER_ADDRESS_IPV6"), BROKER_V6);
    assert_eq!(var("TSP_SERVER_ADDRESS_IPV4"), "192.0.2.1");
    assert_eq!(var("TSP_CLIENT_ADDRESS_IPV4"), "192.0.2.2");
    assert_eq!(var("TSP_TUNNEL_MODE"), "v6v4");
    assert_eq!(var("TSP_OPERATION"), "TSP_TUNNEL_CREATION");
    assert!(!out.contains("(up)"), "{out}");
    assert_eq!(
        host_state(&c),
        before,
        "proxy mode changed the client's links, addresses or routes"
    );
    assert!(!c.link_exists("sit1") && !c.link_exists("tun"));
    client.signal(Signal::Term).unwrap();
    let status = client.wait_exit(5 * SEC).expect("tspc did not exit on SIGTERM");
    assert!(status.success(), "{}", client.output());
    assert_eq!(host_state(&c), before);
}
