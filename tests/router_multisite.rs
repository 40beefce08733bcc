//! Router mode and multi-site, end to end in network namespaces (root only; skipped otherwise).
//!
//! `router_mode_lan_gets_slaac_and_reaches_the_broker`:
//! ```text
//!   lan (SLAAC) ---- router (tspc, host_type=router) 192.0.2.2 ---- 192.0.2.1 broker
//!        IPv6 only: <prefix>::/64 advertised                             2001:db8:b::1
//! ```
//! `redirector_ranks_brokers_and_fails_over`:
//! ```text
//!   c (tspc) 192.0.2.2 ---- 192.0.2.10 redirector   (all on the host "brokers")
//!                           192.0.2.11 broker A     2001:db8:11::1
//!                           192.0.2.12 broker B     2001:db8:12::1
//!                           192.0.2.13 (nothing listening)
//!   d (tspc) 203.0.113.2 -- 203.0.113.1
//! ```
//! `pinned_client_log_does_not_name_the_redirector` (its own lab: the log names only the broker it contacts).
mod netns;

use std::collections::HashMap;
use std::io::Write as _;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netns::{Host, Lab, Proc, Signal};

const SEC: Duration = Duration::from_secs(1);
const TSPC: &str = env!("CARGO_BIN_EXE_tspc");
const BROKER: &str = env!("CARGO_BIN_EXE_tsp-broker");

// ---------------------------------------------------------------------------------------------
// Helpers

/// Calls `f` every 50 ms until it returns `Some`, at most for `timeout`.
fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The IPv6 addresses of `ifname` in `scope` (`link`, `global`), each with whether it is still
/// tentative (duplicate address detection running) or deprecated.
struct Addr6 {
    addr: Ipv6Addr,
    plen: u8,
    tentative: bool,
    deprecated: bool,
}

fn addrs6(host: &Host, ifname: &str, scope: &str) -> Vec<Addr6> {
    let Ok(out) = host.ip(&["-6", "-o", "addr", "show", "dev", ifname, "scope", scope]) else {
        return Vec::new();
    };
    out.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet6")?;
            let (a, p) = words.next()?.split_once('/')?;
            Some(Addr6 {
                addr: a.parse().ok()?,
                plen: p.parse().ok()?,
                tentative: l.contains(" tentative") || l.contains(" dadfailed"),
                deprecated: l.contains(" deprecated"),
            })
        })
        .collect()
}

/// Waits until `ifname` has a link-local address that has left "tentative"; returns it.
fn usable_link_local(host: &Host, ifname: &str) -> Ipv6Addr {
    wait_for(10 * SEC, || {
        addrs6(host, ifname, "link")
            .into_iter()
            .find(|a| !a.tentative)
            .map(|a| a.addr)
    })
    .unwrap_or_else(|| {
        panic!(
            "{ifname} in {} has no usable link-local address: {:?}",
            host.name(),
            host.ip(&["-6", "addr", "show", "dev", ifname])
        )
    })
}

fn first_64(a: Ipv6Addr) -> u128 {
    u128::from(a) & !(u128::MAX >> 64)
}

/// `sysctl -n key` in the host's namespace.
fn sysctl_get(host: &Host, key: &str) -> String {
    let out = host.run("sysctl", &["-n", key]).unwrap().check().unwrap();
    out.stdout.trim().to_string()
}

/// The IPv6 default routes of a host (`ip -6 route show default`).
fn default_routes6(host: &Host) -> Vec<String> {
    host.ip(&["-6", "route", "show", "default"])
        .map(|o| {
            o.lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// Writes a gogoc.conf (mode 0600: it may hold a password).
fn client_conf(lab: &Lab, name: &str, lines: &[String]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = lab.file(name, &(lines.join("\n") + "\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn start_broker(host: &Host, conf: &Path) -> Proc {
    let p = host.spawn(BROKER, &["-c", conf.to_str().unwrap()]).unwrap();
    p.wait_for_output("listening", 10 * SEC).unwrap();
    p
}

/// What `p` printed after byte `mark`.
fn output_since(p: &Proc, mark: usize) -> String {
    let out = p.output();
    out.get(mark.min(out.len())..).unwrap_or_default().to_string()
}

/// The broker named by the last "tunnel negotiated with <server>" line of `text`.
fn negotiated_with(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("tunnel negotiated with "))
        .next_back()
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string)
}

/// The lines of a file (an empty list when it does not exist).
fn file_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Router mode

/// rdisc6 fields: `Key : value` lines (`MTU`, `Prefix`, `Recursive DNS server`, ...).
fn rdisc6_fields(out: &str, key: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(" : ")?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
        .collect()
}

#[test]
fn router_mode_lan_gets_slaac_and_reaches_the_broker() {
    if !netns::require_root() {
        return;
    }
    let lab = Lab::new("router_mode_lan_gets_slaac_and_reaches_the_broker").unwrap();
    let [broker_h, router, lan] = ["broker", "router", "lan"].map(|h| lab.host(h).unwrap());
    lab.link(&router, &["192.0.2.2/24"], &broker_h, &["192.0.2.1/24"])
        .unwrap();
    // The LAN: IPv6 only, no configured addresses; the LAN host autoconfigures from our RAs.
    let (lan_if, router_lan_if) = lab.link(&lan, &[], &router, &[]).unwrap();
    lan.sysctl(&format!("net.ipv6.conf.{lan_if}.accept_ra"), "2").unwrap();
    lan.sysctl(&format!("net.ipv6.conf.{lan_if}.autoconf"), "1").unwrap();
    let router_ll = usable_link_local(&router, &router_lan_if);
    usable_link_local(&lan, &lan_if);
    let forwarding_key = "net.ipv6.conf.all.forwarding";
    assert_eq!(
        sysctl_get(&router, forwarding_key),
        "0",
        "router forwards before tspc runs"
    );

    // Broker: DIGEST-MD5 only (anonymous clients get no prefix), forwarding on.
    let accounts = lab.file("accounts", "").unwrap();
    let broker_conf = lab
        .file(
            "broker.toml",
            &format!(
                "listen = [\"192.0.2.1:3653\"]\nauth = [\"digest-md5\"]\nrealm = \"lab\"\n\
                 accounts_file = \"{}\"\nserver_ipv6 = \"2001:db8:b::1\"\nclient_pool = \"2001:db8:b::/64\"\n\
                 prefix_pool = \"2001:db8:c000::/36\"\nforwarding = true\n",
                accounts.display()
            ),
        )
        .unwrap();
    let mut add_user = Command::new(BROKER)
        .args(["-c", broker_conf.to_str().unwrap(), "add-user", "homerouter"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    add_user.stdin.take().unwrap().write_all(b"router-password\n").unwrap();
    let added = add_user.wait_with_output().unwrap();
    assert!(
        added.status.success(),
        "add-user: {}",
        String::from_utf8_lossy(&added.stderr)
    );
    let broker = start_broker(&broker_h, &broker_conf);

    let conf = client_conf(
        &lab,
        "router.conf",
        &[
            "server=192.0.2.1".into(),
            "auth_method=digest-md5".into(),
            "userid=homerouter".into(),
            "passwd=router-password".into(),
            "host_type=router".into(),
            "prefixlen=56".into(),
            format!("if_prefix={router_lan_if}"),
            "tunnel_mode=v6udpv4".into(),
            format!("gogoc_dir={}", lab.dir().display()),
        ],
    );
    let started = Instant::now();
    let tspc = router.spawn(TSPC, &["-f", conf.to_str().unwrap()]).unwrap();
    tspc.wait_for_output("(up)", 20 * SEC).unwrap();
    let up_after = started.elapsed();
    let out = tspc.output();
    assert!(out.contains("mode:        v6udpv4"), "{out}");
    let prefix_line = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("prefix:"))
        .unwrap_or_else(|| panic!("tspc printed no prefix:\n{out}"))
        .trim()
        .to_string();
    let (p_addr, p_len) = prefix_line.split_once('/').unwrap();
    let delegated: Ipv6Addr = p_addr.parse().unwrap();
    assert_eq!(p_len, "56", "asked for a /56: {prefix_line}");
    let lan64 = first_64(delegated);
    let lan_prefix = Ipv6Addr::from(lan64);
    let router_addr = format!("{}/64", Ipv6Addr::from(lan64 | 1));

    // The router: <prefix>::1/64 on the LAN interface, forwarding on.
    let router_addrs = router.addrs(&router_lan_if).unwrap();
    assert!(
        router_addrs.contains(&router_addr),
        "{router_addr} not on {router_lan_if}: {router_addrs:?}"
    );
    assert_eq!(
        sysctl_get(&router, forwarding_key),
        "1",
        "tspc did not turn forwarding on"
    );

    // The LAN host: a SLAAC address in the /64, a default route via the router's link-local,
    // the link MTU from the RA.
    let slaac = wait_for(15 * SEC, || {
        addrs6(&lan, &lan_if, "global")
            .into_iter()
            .find(|a| first_64(a.addr) == lan64 && a.plen == 64 && !a.tentative)
    })
    .unwrap_or_else(|| {
        panic!(
            "no SLAAC address in {lan_prefix}/64 on the LAN host: {:?}",
            lan.ip(&["-6", "addr", "show", "dev", &lan_if])
        )
    });
    let slaac_after = started.elapsed();
    assert_ne!(
        slaac.addr,
        Ipv6Addr::from(lan64 | 1),
        "the LAN host took the router's address"
    );
    let via_router = |routes: &[String]| {
        routes
            .iter()
            .any(|r| r.contains(&format!("via {router_ll} ")) && r.contains(&format!("dev {lan_if}")))
    };
    let routes = wait_for(5 * SEC, || Some(default_routes6(&lan)).filter(|r| via_router(r)))
        .unwrap_or_else(|| panic!("no default route via {router_ll}: {:?}", default_routes6(&lan)));
    assert!(routes.iter().any(|r| r.contains("proto ra")), "{routes:?}");
    assert_eq!(
        sysctl_get(&lan, &format!("net.ipv6.conf.{lan_if}.mtu")),
        "1280",
        "RA MTU not applied"
    );

    // What the router advertises, seen by a solicitation (rdisc6, from ndisc6).
    if on_path("rdisc6") {
        let rd = lan
            .run_timeout("rdisc6", &["-1", "-n", "-r", "3", "-w", "1500", &lan_if], 15 * SEC)
            .unwrap();
        assert!(rd.success(), "rdisc6 got no advertisement: {} {}", rd.stdout, rd.stderr);
        let mtu = rdisc6_fields(&rd.stdout, "MTU");
        assert!(
            mtu.iter().any(|v| v.starts_with("1280 bytes")),
            "MTU {mtu:?} in:\n{}",
            rd.stdout
        );
        let prefixes = rdisc6_fields(&rd.stdout, "Prefix");
        assert_eq!(prefixes, vec![format!("{lan_prefix}/64")], "in:\n{}", rd.stdout);
        let dns = rdisc6_fields(&rd.stdout, "Recursive DNS server");
        assert_eq!(dns, vec!["2001:db8:b::1".to_string()], "RDNSS in:\n{}", rd.stdout);
        let lifetime = rdisc6_fields(&rd.stdout, "Router lifetime");
        assert!(lifetime.iter().any(|v| v.starts_with("1800")), "{lifetime:?}");
        assert!(
            rd.stdout.contains(&format!("from {router_ll}")),
            "RA source:\n{}",
            rd.stdout
        );
    } else {
        println!("skipped: rdisc6 check (install ndisc6); the RA MTU was still checked through the kernel");
    }

    // Through the tunnel: LAN host -> router -> tunnel -> broker's tunnel address.
    let took = lan.ping_until("2001:db8:b::1", 10 * SEC);
    assert!(
        took.is_some(),
        "the LAN host cannot reach 2001:db8:b::1 through the tunnel"
    );
    println!(
        "router mode: tunnel up {up_after:?}, LAN SLAAC {} after {slaac_after:?}, first ping through the tunnel {:?}",
        slaac.addr,
        took.unwrap()
    );

    // SIGTERM: a last RA with router lifetime 0, then everything taken back.
    let stop = Instant::now();
    tspc.signal(Signal::Term).unwrap();
    let status = tspc.wait_exit(10 * SEC).expect("tspc ignored SIGTERM");
    assert!(status.success(), "tspc exit {status}:\n{}", tspc.output());
    let exited = stop.elapsed();
    let gone = wait_for(5 * SEC, || Some(default_routes6(&lan)).filter(|r| !via_router(r)));
    assert!(
        gone.is_some(),
        "the LAN host still routes via the router: {:?}",
        default_routes6(&lan)
    );
    let route_gone = stop.elapsed();
    let router_addrs = router.addrs(&router_lan_if).unwrap();
    assert!(
        !router_addrs.contains(&router_addr),
        "{router_addr} left on {router_lan_if}"
    );
    assert_eq!(sysctl_get(&router, forwarding_key), "0", "forwarding left on");
    assert!(!router.link_exists("tun"), "tunnel interface left behind");
    let blackholes: Vec<String> = router
        .routes_v6()
        .unwrap()
        .into_iter()
        .filter(|r| r.contains(&lan_prefix.to_string()))
        .collect();
    assert!(
        blackholes.is_empty(),
        "routes for the delegated prefix left: {blackholes:?}"
    );
    let deprecated = addrs6(&lan, &lan_if, "global")
        .iter()
        .any(|a| a.addr == slaac.addr && a.deprecated);
    println!(
        "router mode: SIGTERM -> exit {exited:?}, LAN default route gone {route_gone:?}; SLAAC address deprecated: {deprecated}"
    );
    assert!(broker.status().is_none(), "broker died:\n{}", broker.output());
}

// ---------------------------------------------------------------------------------------------
// Redirector, ranking, failover

/// A broker of the multi-site test: listening on 192.0.2.<n>, its own TUN and pools.
fn site_broker_toml(n: u8) -> String {
    format!(
        "listen = [\"192.0.2.{n}:3653\"]\nauth = [\"anonymous\"]\ntunnel_modes = [\"v6v4\", \"v6udpv4\"]\n\
         server_ipv6 = \"2001:db8:{n}::1\"\nclient_pool = \"2001:db8:{n}::/64\"\nprefix_pool = \"2001:db8:{n}00::/40\"\n\
         ipv4_pool = \"10.{n}.0.0/24\"\ntun_name = \"tspb{n}\"\ntun4_name = \"tspb{n}v4\"\nkeepalive_min = 1\n"
    )
}

/// The broker's tunnel address for a server string `192.0.2.<n>`.
fn tunnel_addr(server: &str) -> String {
    format!("2001:db8:{}::1", server.rsplit('.').next().unwrap())
}

/// The multi-site lab: client `c` (192.0.2.2) on the brokers' link, client `d` (203.0.113.2)
/// one hop away; `brokers` holds 192.0.2.10 (redirector), .11, .12, .13. An nftables counter on
/// `brokers` counts what `d` sends to the redirector.
struct Sites {
    lab: Lab,
    c: Host,
    bk: Host,
    d: Host,
}

fn sites(test: &str) -> Sites {
    let lab = Lab::new(test).unwrap();
    let [c, bk, d] = ["c", "brokers", "d"].map(|h| lab.host(h).unwrap());
    let site_addrs = ["192.0.2.10/24", "192.0.2.11/24", "192.0.2.12/24", "192.0.2.13/24"];
    lab.link(&c, &["192.0.2.2/24"], &bk, &site_addrs).unwrap();
    lab.link(&d, &["203.0.113.2/24"], &bk, &["203.0.113.1/24"]).unwrap();
    d.route_add("default", "203.0.113.1").unwrap();
    let nft = |args: &[&str]| bk.run("nft", args).unwrap().check().unwrap();
    nft(&["add", "table", "inet", "cnt"]);
    nft(&[
        "add",
        "chain",
        "inet",
        "cnt",
        "in",
        "{ type filter hook input priority 0; policy accept; }",
    ]);
    nft(&[
        "add",
        "rule",
        "inet",
        "cnt",
        "in",
        "ip",
        "saddr",
        "203.0.113.2",
        "ip",
        "daddr",
        "192.0.2.10",
        "counter",
    ]);
    Sites { lab, c, bk, d }
}

impl Sites {
    /// Starts the brokers 192.0.2.<n> for each `n`; returns them by server string.
    fn brokers(&self, ns: &[u8]) -> HashMap<String, Proc> {
        ns.iter()
            .map(|n| {
                let conf = self
                    .lab
                    .file(&format!("broker{n}.toml"), &site_broker_toml(*n))
                    .unwrap();
                (format!("192.0.2.{n}"), start_broker(&self.bk, &conf))
            })
            .collect()
    }

    /// The redirector on 192.0.2.10, sending clients to .11, .12 and .13.
    fn redirector(&self) -> Proc {
        let conf = self
            .lab
            .file(
                "redirector.toml",
                "listen = [\"192.0.2.10:3653\"]\nredirect = [\"192.0.2.11\", \"192.0.2.12\", \"192.0.2.13\"]\n\
                 datapath = false\n",
            )
            .unwrap();
        let r = start_broker(&self.bk, &conf);
        r.wait_for_output("redirector mode", SEC).unwrap();
        r
    }

    /// Packets `d` sent to the redirector's address.
    fn packets_to_redirector(&self) -> u64 {
        let out = self
            .bk
            .run("nft", &["list", "chain", "inet", "cnt", "in"])
            .unwrap()
            .check()
            .unwrap();
        out.stdout
            .split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no counter in:\n{}", out.stdout))
    }

    /// Starts tspc on `host` with `server=192.0.2.10`, v6udpv4, 1 s keepalives and retries, and its
    /// home directory `<lab>/<name>-home` (broker list and last server there); `extra` lines are
    /// appended. Waits until the tunnel is up; returns the process, its home and how long it took.
    fn client(&self, host: &Host, name: &str, extra: &[&str]) -> (Proc, PathBuf, Duration) {
        let home = self.lab.dir().join(format!("{name}-home"));
        std::fs::create_dir_all(&home).unwrap();
        let mut lines: Vec<String> = [
            "server=192.0.2.10",
            "auth_method=anonymous",
            "tunnel_mode=v6udpv4",
            "keepalive_interval=1",
            "retry_delay=1",
        ]
        .map(String::from)
        .to_vec();
        lines.push(format!("gogoc_dir={}", home.display()));
        lines.extend(extra.iter().map(|l| l.to_string()));
        let conf = client_conf(&self.lab, &format!("{name}.conf"), &lines);
        let started = Instant::now();
        let tspc = host.spawn(TSPC, &["-f", conf.to_str().unwrap()]).unwrap();
        tspc.wait_for_output("(up)", 20 * SEC).unwrap();
        (tspc, home, started.elapsed())
    }
}

#[test]
fn redirector_ranks_brokers_and_fails_over() {
    if !netns::require_root() {
        return;
    }
    let s = sites("redirector_ranks_brokers_and_fails_over");
    // .11 and .12 live, .13 down (its address answers with port unreachable).
    let brokers = s.brokers(&[11, 12]);
    let redirector = s.redirector();

    // First client: through the redirector, to the nearest live broker.
    let (tspc, home, first_up) = s.client(&s.c, "c", &[]);
    let (list_file, last_file) = (home.join("tsp-broker-list.txt"), home.join("tsp-last-server.txt"));
    let out = tspc.output();
    let chosen = negotiated_with(&out).unwrap_or_else(|| panic!("no negotiation line:\n{out}"));
    assert!(
        brokers.contains_key(&chosen),
        "came up with {chosen}, not a live broker:\n{out}"
    );
    assert!(
        out.contains("192.0.2.10"),
        "the redirection does not show in the log:\n{out}"
    );
    let other = brokers.keys().find(|b| **b != chosen).unwrap().clone();

    let list = file_lines(&list_file);
    let mut sorted = list.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["192.0.2.11", "192.0.2.12", "192.0.2.13"],
        "broker list: {list:?}"
    );
    assert_eq!(list[2], "192.0.2.13", "the dead broker must be ranked last: {list:?}");
    assert_eq!(list[0], chosen, "the nearest broker is tried first: {list:?}");
    assert_eq!(
        file_lines(&last_file),
        std::slice::from_ref(&chosen),
        "last-server file"
    );
    assert!(
        s.c.ping_until(&tunnel_addr(&chosen), 5 * SEC).is_some(),
        "no ping through the tunnel to {chosen}"
    );

    // The chosen broker dies: keepalive notices, the redirector sends the client to the other.
    let mark = tspc.mark();
    let killed = Instant::now();
    brokers[&chosen].kill();
    tspc.wait_for_output_since(mark, "stopped answering keepalives", 20 * SEC)
        .unwrap();
    let detected = killed.elapsed();
    tspc.wait_for_output_since(mark, "(up)", 20 * SEC).unwrap();
    let failover = killed.elapsed();
    let after = output_since(&tspc, mark);
    assert_eq!(
        negotiated_with(&after).as_deref(),
        Some(other.as_str()),
        "after failover:\n{after}"
    );
    assert!(
        after.contains("192.0.2.10"),
        "the new negotiation did not go through the redirector:\n{after}"
    );
    let took = s.c.ping_until(&tunnel_addr(&other), 10 * SEC);
    assert!(took.is_some(), "no ping through the new tunnel to {other}");
    let traffic = killed.elapsed();
    assert_eq!(
        file_lines(&last_file),
        std::slice::from_ref(&other),
        "last-server file after failover"
    );
    let list = file_lines(&list_file);
    assert_eq!(list.len(), 3, "broker list after failover: {list:?}");
    assert_eq!(list[0], other, "the live broker first after failover: {list:?}");
    println!(
        "multi-site: first tunnel ({chosen}) up {first_up:?}; {chosen} killed: keepalive timeout after {detected:?}, \
         up on {other} after {failover:?}, first ping through it after {traffic:?}"
    );

    // A second client pinned to its last server (a live broker): straight to it. Checked on the
    // wire (nothing reached the redirector) and in the redirector's log; its own log is checked
    // by pinned_client_log_does_not_name_the_redirector.
    let home2 = s.lab.dir().join("d-home");
    std::fs::create_dir_all(&home2).unwrap();
    std::fs::write(home2.join("tsp-last-server.txt"), format!("{other}\n")).unwrap();
    let (tspc2, _, pinned_up) = s.client(&s.d, "d", &["always_use_same_server=yes"]);
    let out2 = tspc2.output();
    assert_eq!(negotiated_with(&out2).as_deref(), Some(other.as_str()), "{out2}");
    assert!(
        !out2.contains("broker redirects"),
        "the pinned client was redirected:\n{out2}"
    );
    assert_eq!(
        s.packets_to_redirector(),
        0,
        "the pinned client sent packets to the redirector"
    );
    assert!(
        !redirector.output().contains("203.0.113.2"),
        "the redirector saw the pinned client:\n{}",
        redirector.output()
    );
    assert!(
        s.d.ping_until(&tunnel_addr(&other), 5 * SEC).is_some(),
        "pinned client: no ping to {other}"
    );
    assert_eq!(
        file_lines(&home2.join("tsp-last-server.txt")),
        std::slice::from_ref(&other)
    );
    println!("multi-site: pinned client up on {other} after {pinned_up:?}, nothing sent to the redirector");
    assert!(
        redirector.status().is_none(),
        "redirector died:\n{}",
        redirector.output()
    );
}

#[test]
fn pinned_client_log_does_not_name_the_redirector() {
    if !netns::require_root() {
        return;
    }
    let s = sites("pinned_client_log_does_not_name_the_redirector");
    let _brokers = s.brokers(&[11, 12]);
    let _redirector = s.redirector();
    let home = s.lab.dir().join("d-home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("tsp-last-server.txt"), "192.0.2.12\n").unwrap();
    let (tspc, _, _) = s.client(&s.d, "d", &["always_use_same_server=yes"]);
    let out = tspc.output();
    assert_eq!(negotiated_with(&out).as_deref(), Some("192.0.2.12"), "{out}");
    assert_eq!(
        s.packets_to_redirector(),
        0,
        "the pinned client sent packets to the redirector"
    );
    assert!(
        !out.contains("192.0.2.10"),
        "the pinned client's log names the redirector:\n{out}"
    );
}
