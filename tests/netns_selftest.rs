//! Tests of the network-namespace harness (tests/netns/mod.rs) itself. They need root; without
//! it each prints a skip line and passes.
//!
//! Topology of `topology()` (the one of tests/demo.sh):
//!
//! ```text
//!   c 192.0.2.2 ------------------- 192.0.2.1 b (broker) 203.0.113.1
//!     2001:db8:c::2                 2001:db8:c::1              |
//!   n 198.51.100.2 --- 198.51.100.1 r (NAT) 203.0.113.2 -------'
//! ```
mod netns;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netns::{Host, Lab, Signal, bin, require_root};

const SEC: Duration = Duration::from_secs(1);

fn new_lab(test: &str) -> Lab {
    Lab::new(test).unwrap()
}

struct Topo {
    lab: Lab,
    c: Host,
    b: Host,
    n: Host,
    r: Host,
    c_if: String,
    n_if: String,
    r_out: String,
}

fn topology(test: &str) -> Topo {
    let lab = new_lab(test);
    let [c, b, n, r] = ["c", "b", "n", "r"].map(|h| lab.host(h).unwrap());
    let (c_if, _) = lab
        .link(
            &c,
            &["192.0.2.2/24", "2001:db8:c::2/64"],
            &b,
            &["192.0.2.1/24", "2001:db8:c::1/64"],
        )
        .unwrap();
    let (n_if, _) = lab.link(&n, &["198.51.100.2/24"], &r, &["198.51.100.1/24"]).unwrap();
    let (r_out, _) = lab.link(&r, &["203.0.113.2/24"], &b, &["203.0.113.1/24"]).unwrap();
    n.route_add("default", "198.51.100.1").unwrap();
    r.masquerade(&r_out).unwrap();
    Topo {
        lab,
        c,
        b,
        n,
        r,
        c_if,
        n_if,
        r_out,
    }
}

/// Starts the bundled broker in `b` (anonymous only, as in tests/demo.sh) and waits until it listens.
fn start_broker(t: &Topo) -> netns::Proc {
    let toml = "listen = [\"0.0.0.0:3653\"]\nauth = [\"anonymous\"]\nrealm = \"selftest\"\n\
                server_ipv6 = \"2001:db8:b::1\"\nclient_pool = \"2001:db8:b::/64\"\n";
    let conf = t.lab.file("broker.toml", toml).unwrap();
    let broker = t.b.spawn(bin("tsp-broker"), &["-c", conf.to_str().unwrap()]).unwrap();
    broker.wait_for_output("listening", 10 * SEC).unwrap();
    broker
}

/// `tspc --dry-run` against `server` from `host`; returns what it printed.
fn negotiate(t: &Topo, host: &Host, server: &str) -> String {
    let name = format!("{}.conf", host.name());
    let conf = t
        .lab
        .file(
            &name,
            &format!("server={server}\nauth_method=anonymous\ntunnel_mode=v6anyv4\n"),
        )
        .unwrap();
    let out = host
        .run(bin("tspc"), &["-f", conf.to_str().unwrap(), "--dry-run"])
        .unwrap();
    assert!(out.success(), "tspc failed: {}\n{}", out.status, out.stderr);
    out.stdout
}

#[test]
fn pings_cross_and_the_broker_sees_the_nat() {
    if !require_root() {
        return;
    }
    let t = topology("pings_cross_and_the_broker_sees_the_nat");
    assert!(t.c.ping("192.0.2.1", 1, 1), "c -> b (IPv4)");
    assert!(t.c.ping("2001:db8:c::1", 1, 1), "c -> b (IPv6, usable at once)");
    assert!(t.n.ping("203.0.113.1", 1, 1), "n -> b through the NAT");
    assert!(
        !t.n.ping("192.0.2.2", 1, 1),
        "n must not reach c (r has no route there)"
    );
    assert!(t.c.link_exists(&t.c_if) && !t.c.link_exists("nosuch0"));

    let err =
        t.c.run_timeout("sleep", &["5"], Duration::from_millis(200))
            .unwrap_err();
    assert!(err.contains("did not finish"), "{err}");
    let err = t.c.spawn("/nonexistent/tspc", &[]).err().expect("missing program");
    assert!(err.contains("does not exist"), "{err}");

    let broker = start_broker(&t);
    let natted = negotiate(&t, &t.n, "203.0.113.1");
    assert!(
        natted.contains("IPv4 203.0.113.2"),
        "broker did not see the NAT's address:\n{natted}"
    );
    assert!(
        natted.contains("v6udpv4"),
        "NATed client not offered v6udpv4:\n{natted}"
    );
    let direct = negotiate(&t, &t.c, "192.0.2.1");
    assert!(
        direct.contains("IPv4 192.0.2.2") && direct.contains("v6v4"),
        "direct client:\n{direct}"
    );

    let mark = broker.mark();
    assert!(
        broker
            .wait_for_output_since(mark, "listening", Duration::from_millis(100))
            .is_err()
    );
    broker.signal(Signal::Term).unwrap();
    assert!(
        broker.wait_exit(5 * SEC).is_some(),
        "broker ignored SIGTERM:\n{}",
        broker.output()
    );
    assert!(
        broker.signal(Signal::Hup).is_err(),
        "signalling an exited process is an error"
    );
    let err = broker.wait_for_output("never printed", SEC).unwrap_err();
    assert!(
        err.contains("exited") && err.contains("listening"),
        "error should hold the log tail: {err}"
    );
}

#[test]
fn ping_until_measures_when_traffic_resumes() {
    if !require_root() {
        return;
    }
    let t = topology("ping_until_measures_when_traffic_resumes");
    let dst = "203.0.113.1";

    // No route: every ping fails at once; ping_until keeps trying until its deadline.
    t.n.route_del("default", "198.51.100.1").unwrap();
    let start = Instant::now();
    assert_eq!(t.n.ping_until(dst, Duration::from_millis(500)), None);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_millis(900),
        "{waited:?}"
    );

    // The route comes back 300 ms later.
    let n = t.n.clone();
    let fixer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        n.route_add("default", "198.51.100.1").unwrap();
    });
    let took = t.n.ping_until(dst, 5 * SEC).expect("traffic resumed");
    fixer.join().unwrap();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(800),
        "route case: {took:?}"
    );

    // Packets silently dropped on the router (ping keeps running, unanswered), lifted 300 ms later.
    let nft = |args: &[&str]| t.r.run("nft", args).unwrap().check().unwrap();
    nft(&["add", "table", "ip", "blk"]);
    nft(&[
        "add",
        "chain",
        "ip",
        "blk",
        "drops",
        "{ type filter hook forward priority 0; policy drop; }",
    ]);
    assert_eq!(t.n.ping_until(dst, Duration::from_millis(300)), None);
    let r = t.r.clone();
    let fixer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        r.run("nft", &["delete", "table", "ip", "blk"])
            .unwrap()
            .check()
            .unwrap();
    });
    let took = t.n.ping_until(dst, 5 * SEC).expect("traffic resumed");
    fixer.join().unwrap();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(800),
        "drop case: {took:?}"
    );
}

#[test]
fn addresses_can_be_replaced() {
    if !require_root() {
        return;
    }
    let t = topology("addresses_can_be_replaced");
    let broker = start_broker(&t);
    assert!(negotiate(&t, &t.n, "203.0.113.1").contains("IPv4 203.0.113.2"));

    // The NATed client moves within its subnet: its default route survives.
    t.n.set_addr(&t.n_if, "198.51.100.2/24", "198.51.100.3/24").unwrap();
    let addrs = t.n.addrs(&t.n_if).unwrap();
    assert!(
        addrs.contains(&"198.51.100.3/24".into()) && !addrs.contains(&"198.51.100.2/24".into()),
        "{addrs:?}"
    );
    assert!(
        t.n.routes_v4()
            .unwrap()
            .iter()
            .any(|r| r.starts_with("default via 198.51.100.1"))
    );
    assert!(
        t.n.ping_until("203.0.113.1", 3 * SEC).is_some(),
        "NAT path after the move"
    );

    // The NAT gets a new public address: the broker sees it.
    t.r.set_addr(&t.r_out, "203.0.113.2/24", "203.0.113.3/24").unwrap();
    let out = negotiate(&t, &t.n, "203.0.113.1");
    assert!(
        out.contains("IPv4 203.0.113.3"),
        "broker should see the NAT's new address:\n{out}"
    );

    // IPv6 on the direct client.
    t.c.set_addr(&t.c_if, "2001:db8:c::2/64", "2001:db8:c::3/64").unwrap();
    let addrs = t.c.addrs(&t.c_if).unwrap();
    assert!(
        addrs.contains(&"2001:db8:c::3/64".into()) && !addrs.contains(&"2001:db8:c::2/64".into()),
        "{addrs:?}"
    );
    assert!(
        t.c.routes_v6()
            .unwrap()
            .iter()
            .any(|r| r.starts_with("2001:db8:c::/64"))
    );
    let took = t.c.ping_until("2001:db8:c::1", 3 * SEC);
    assert!(took.is_some_and(|d| d < SEC), "IPv6 after the address change: {took:?}");
    assert!(broker.status().is_none(), "broker died:\n{}", broker.output());
}

/// What a lab left that must be gone once it has dropped.
struct Footprint {
    namespaces: Vec<String>,
    prefix: String,
    dir: PathBuf,
    pids: Vec<u32>,
    sleeps: [String; 2],
}

/// Builds a lab with a process it spawned and an orphan it did not (`setsid -f`, only visible to
/// `ip netns pids`), and records its footprint.
fn populate(lab: &Lab, sleeps: [String; 2]) -> Footprint {
    let [a, b] = ["a", "b"].map(|h| lab.host(h).unwrap());
    lab.link(&a, &["192.0.2.1/24"], &b, &["192.0.2.2/24"]).unwrap();
    a.spawn("sleep", &[&sleeps[0]]).unwrap();
    b.run("setsid", &["-f", "sleep", &sleeps[1]]).unwrap().check().unwrap();
    // `setsid -f` returns before its child has exec'd `sleep`.
    eventually("a sleep in each namespace", || {
        a.pids().len() == 1 && b.pids().len() == 1 && live_sleeps(&sleeps).len() == 2
    });
    let pids: Vec<u32> = a.pids().into_iter().chain(b.pids()).collect();
    let fp = Footprint {
        namespaces: lab.namespaces(),
        prefix: lab.prefix().to_string(),
        dir: lab.dir().to_path_buf(),
        pids,
        sleeps,
    };
    let listed = netns_list();
    assert!(fp.namespaces.iter().all(|n| listed.contains(n)), "{listed:?}");
    fp
}

/// Polls `cond` every 10 ms until it holds; fails the test after 5 s.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < 5 * SEC, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A `sleep` duration (seconds) that names one process of this test run, for pgrep.
fn sleep_arg(k: u32) -> String {
    format!("{}.{k}", std::process::id())
}

fn netns_list() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

/// Pids of running (not zombie) `sleep <arg>` processes, found with pgrep.
fn live_sleeps(args: &[String]) -> Vec<u32> {
    args.iter()
        .flat_map(|a| {
            let out = Command::new("pgrep")
                .args(["-f", "-x", &format!("sleep {a}")])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .filter(|p| alive(*p))
        .collect()
}

/// Whether a process exists and is not a zombie (an orphan's zombie waits for PID 1 to reap it).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

fn assert_gone(fp: &Footprint) {
    let listed = netns_list();
    for ns in &fp.namespaces {
        assert!(!listed.contains(ns), "namespace {ns} left behind: {listed:?}");
        assert!(
            !std::path::Path::new(netns::NETNS_DIR).join(ns).exists(),
            "{ns} left in /run/netns"
        );
    }
    let live: Vec<u32> = fp.pids.iter().copied().filter(|p| alive(*p)).collect();
    assert!(live.is_empty(), "processes left behind: {live:?}");
    assert!(live_sleeps(&fp.sleeps).is_empty(), "pgrep still finds the sleeps");
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains(&fp.prefix),
        "an interface leaked into the root namespace"
    );
    assert!(!fp.dir.exists(), "temp dir {} left behind", fp.dir.display());
}

#[test]
fn drop_leaves_nothing_behind() {
    if !require_root() {
        return;
    }
    let lab = new_lab("drop_leaves_nothing_behind");
    let fp = populate(&lab, [sleep_arg(1), sleep_arg(2)]);
    let start = Instant::now();
    drop(lab);
    assert!(start.elapsed() < 2 * SEC, "teardown took {:?}", start.elapsed());
    assert_gone(&fp);
}

#[test]
fn drop_cleans_up_after_a_panic() {
    if !require_root() {
        return;
    }
    let seen: Arc<Mutex<Option<Footprint>>> = Arc::default();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let lab = new_lab("drop_cleans_up_after_a_panic");
        *seen.lock().unwrap() = Some(populate(&lab, [sleep_arg(3), sleep_arg(4)]));
        panic!("deliberate panic inside a lab");
    }));
    assert!(result.is_err());
    let fp = seen.lock().unwrap().take().expect("the lab was built before the panic");
    assert_gone(&fp);
}

#[test]
fn stale_entries_are_removed() {
    if !require_root() {
        return;
    }
    let name = "stale_entries_are_removed";
    let quiet = |args: &[&str]| {
        // stdout and stderr to /dev/null: the orphan must not hold the test's output pipe open.
        let status = Command::new("ip")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(status.unwrap().success(), "ip {args:?}");
    };
    // 1. Left under this lab's prefix by this process (the same test name gets the same prefix
    //    again once no lab holds it): a namespace with a process inside, and an entry whose mount
    //    namespace is gone ("Peer netns reference is invalid").
    let prefix = new_lab(name).prefix().to_string();
    let stem = format!("{}-{}-{}-{prefix}", netns::NS_MARK, netns::pid_ns(), std::process::id());
    let (ns, empty) = (
        format!("{stem}-x"),
        PathBuf::from(netns::NETNS_DIR).join(format!("{stem}-y")),
    );
    quiet(&["netns", "add", &ns]);
    quiet(&["netns", "exec", &ns, "setsid", "-f", "sleep", &sleep_arg(5)]);
    std::fs::write(&empty, "").unwrap();
    eventually("the sleep in the stale namespace", || {
        live_sleeps(&[sleep_arg(5)]).len() == 1
    });
    // 2. Left by a test process killed with SIGKILL: its owner is gone. (A pid above the kernel's
    //    PID_MAX_LIMIT, 2^22, cannot exist; a real dead pid may be reused at once on a busy machine.)
    //    Another test process's Lab::new may remove these first, which is fine.
    let dead = format!(
        "{}-{}-99999999-d{}",
        netns::NS_MARK,
        netns::pid_ns(),
        std::process::id()
    );
    let dead_entry = PathBuf::from(netns::NETNS_DIR).join(format!("{dead}-x"));
    let dead_dir = std::env::temp_dir().join(&dead);
    std::fs::write(&dead_entry, "").unwrap();
    std::fs::create_dir_all(&dead_dir).unwrap();
    std::fs::write(dead_dir.join("broker.log"), "listening\n").unwrap();

    let lab = new_lab(name);
    assert_eq!(lab.prefix(), prefix);
    let left: Vec<String> = netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&stem) || n.starts_with(&dead))
        .collect();
    assert!(left.is_empty(), "stale entries survived Lab::new: {left:?}");
    assert!(
        !empty.exists() && !dead_entry.exists(),
        "stale entries left in /run/netns"
    );
    assert!(!dead_dir.exists(), "the temp dir of the killed run survived");
    assert!(
        live_sleeps(&[sleep_arg(5)]).is_empty(),
        "the process in the stale namespace survived"
    );
}
