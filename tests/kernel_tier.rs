//! The kernel tier: tspc's kernel tunnel links (crates/tsp-tunnel/src/kernel.rs: sit for v6v4,
//! ip6tnl for v4v6) and its fallback to the userspace datapath, under a real Linux kernel that
//! has those links: Debian's user-mode Linux, booted by tests/uml (docs/testbed.md §8), since
//! this machine's kernel has none.
//!
//! Each test boots the kernel and re-runs itself inside (`--exact <test>`, with `TSP_UML_GUEST`
//! set), where it builds the namespace scenario of tests/tunnels.rs: client `c` and broker `b`
//! on one veth, `tsp-broker` in `b`, `tspc` in `c`, each with kernel links (the default where
//! the kernel has them) or its userspace datapath (`datapath_kind`). Root only; each test
//! prints a skip line and passes when it cannot boot the kernel (apt cannot fetch the packages,
//! /dev/shm is noexec).

mod netns;
mod uml;

use std::time::{Duration, Instant};

use netns::{Host, Lab, Proc, Signal, require_root};

const SEC: Duration = Duration::from_secs(1);
const TSPC: &str = env!("CARGO_BIN_EXE_tspc");
const BROKER: &str = env!("CARGO_BIN_EXE_tsp-broker");
const BROKER_V6: &str = "2001:db8:b::1";
/// Boot, scenario and power-off; the guest is slow (one CPU, every syscall trapped).
const GUEST_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs `guest` in the user-mode Linux guest: on the host, boots the kernel with this test
/// binary re-running this test inside and fails unless it passed there; in the guest, runs it.
fn in_uml(guest: fn()) {
    if uml::in_guest() {
        guest();
        return;
    }
    if !require_root() {
        return;
    }
    let name = std::thread::current().name().unwrap_or_default().to_string();
    let kernel = match uml::prepare() {
        Ok(k) => k,
        Err(uml::Skip(why)) => {
            println!("skipped: {name}: {why}");
            return;
        }
    };
    let exe = std::env::current_exe().unwrap();
    let exe = exe.to_str().unwrap();
    let argv = [
        exe,
        "--exact",
        &name,
        "--include-ignored",
        "--nocapture",
        "--test-threads=1",
    ];
    let boot = kernel
        .run(&name, &argv, &[("RUST_BACKTRACE", "1")], GUEST_TIMEOUT)
        .unwrap();
    println!("{name}: boot and guest run took {:.1?}\n{}", boot.elapsed, boot.console);
    assert!(
        boot.success(),
        "{name} failed in the guest (guest status {:?}, linux.uml exit {:?}, timed out: {}); its console is above",
        boot.guest_status,
        boot.exit,
        boot.timed_out,
    );
}

// ---------------------------------------------------------------------------------------------
// The scenario (runs in the guest)

/// One tunnel mode of tests/tunnels.rs: the server= line, tspc's default device, a ping target.
struct Mode {
    mode: &'static str,
    server: &'static str,
    ifname: &'static str,
    target: &'static str,
}

const V6V4: Mode = Mode {
    mode: "v6v4",
    server: "192.0.2.1",
    ifname: "sit1",
    target: BROKER_V6,
};
const V4V6: Mode = Mode {
    mode: "v4v6",
    server: "[2001:db8:1::1]",
    ifname: "tsp-v4v6",
    target: "198.51.100.1",
};

/// Which datapath tspc must have chosen: a kernel link whose `ip -d link` kind line starts
/// with this, or the userspace TUN.
#[derive(Clone, Copy, Debug)]
enum Expect {
    Kernel(&'static str),
    Tun,
}

/// ICMP destination unreachables a host sent: (IPv4 OutDestUnreachs, ICMPv6 OutDestUnreachs).
fn unreachables_sent(h: &Host) -> (u64, u64) {
    let read = |path: &str| h.run("cat", &[path]).and_then(|o| o.check()).unwrap().stdout;
    let snmp = read("/proc/net/snmp");
    let icmp: Vec<Vec<&str>> = snmp
        .lines()
        .filter(|l| l.starts_with("Icmp: "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let v4 = icmp[0]
        .iter()
        .position(|k| *k == "OutDestUnreachs")
        .and_then(|i| icmp[1][i].parse().ok())
        .unwrap();
    let v6 = read("/proc/net/snmp6")
        .lines()
        .find_map(|l| l.strip_prefix("Icmp6OutDestUnreachs"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    (v4, v6)
}

/// True when the host has a link of this name. Lists the links instead of asking for one by
/// name: a lookup of a missing name makes the kernel load the module that has the alias
/// `netdev-<name>`, and `sit` has `netdev-sit0`, whose fallback device is then found.
fn has_link(h: &Host, ifname: &str) -> bool {
    let links = h.ip(&["-o", "link"]).unwrap();
    links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .any(|name| name.split('@').next() == Some(ifname))
}

/// What a run of [`tunnel`] measured.
struct Run {
    /// ICMP unreachables sent during the pings by the client and by the broker.
    client_unreachables: (u64, u64),
    broker_unreachables: (u64, u64),
}

/// How a run of [`tunnel_with`] is set up and ended.
#[derive(Clone, Copy, Debug)]
struct Sides {
    /// tspc's datapath and its gogoc.conf `datapath_kind` (None: not in the file).
    client: Expect,
    client_kind: Option<&'static str>,
    /// The broker's datapath for the tunnel and its `datapath_kind` (None: not in the file).
    broker: Expect,
    broker_kind: Option<&'static str>,
    /// Stop the broker while the tunnel is up (its exit must remove the link), instead of
    /// ending the tunnel first (the broker drops it after five missed keepalives).
    broker_first: bool,
    /// The broker listens on TCP only (`udp = false`): the tunnel ends with tspc's TCP session,
    /// at once, not after missed keepalives.
    tcp_only: bool,
}

impl Sides {
    /// Both ends on the same kernel, with the defaults (`auto`): both choose the same.
    fn same(expect: Expect) -> Self {
        Self {
            client: expect,
            client_kind: None,
            broker: expect,
            broker_kind: None,
            broker_first: false,
            tcp_only: false,
        }
    }
}

/// The kernel's own fallback devices, which appear in every namespace when their module loads
/// (the broker's probe may load them): not the broker's to remove.
const FALLBACK_DEVICES: [&str; 4] = ["sit0", "ip6tnl0", "tunl0", "ip6_vti0"];

/// A host's links (names, without the fallback devices), addresses and routes.
/// A host's links, addresses, routes and nftables ruleset.
type Snapshot = (Vec<String>, String, Vec<String>, Vec<String>, String);

fn snapshot(h: &Host) -> Snapshot {
    let links = h
        .ip(&["-o", "link"])
        .unwrap()
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .filter(|n| !FALLBACK_DEVICES.contains(&n.as_str()))
        .collect();
    (
        links,
        h.ip(&["-o", "addr"]).unwrap(),
        h.routes_v6().unwrap(),
        h.routes_v4().unwrap(),
        // The broker's inner-source filter is an nftables table: gone at exit too.
        h.run("nft", &["list", "ruleset"]).map(|o| o.stdout).unwrap_or_default(),
    )
}

/// The broker's kernel link for the client (name and `ip -d link` text), if any: a link of the
/// mode's kind whose remote is the client's address.
fn broker_link(b: &Host, m: &Mode) -> Option<(String, String)> {
    let (kind, remote) = if m.mode == "v4v6" {
        ("ip6tnl ipip6 ", "remote 2001:db8:1::2 ")
    } else {
        ("sit ", "remote 192.0.2.2 ")
    };
    let links = b.ip(&["-d", "-o", "link"]).unwrap();
    links.lines().find(|l| l.contains(kind) && l.contains(remote)).map(|l| {
        let name = l.split(": ").nth(1).unwrap_or_default();
        (name.split('@').next().unwrap_or(name).to_owned(), l.to_owned())
    })
}

fn tunnel(m: &Mode, expect: Expect) -> Run {
    tunnel_with(m, Sides::same(expect))
}

/// Client `c` (192.0.2.2, 2001:db8:1::2) and broker `b` (192.0.2.1, 2001:db8:1::1), broker
/// started; tspc brings the tunnel up in `mode`; both ends must have chosen the datapath
/// `sides` expects (the kind in `ip -d link`, the log); pings cross the tunnel; then both ends
/// must be as before: the client after SIGTERM, the broker after the tunnel's end (five missed
/// keepalives) and after its own SIGTERM (or, `broker_first`, after its SIGTERM alone, the
/// tunnel still up).
fn tunnel_with(m: &Mode, sides: Sides) -> Run {
    let t0 = Instant::now();
    let lab = Lab::new(&format!("uml_{}", m.mode)).unwrap();
    let (c, b) = (lab.host("c").unwrap(), lab.host("b").unwrap());
    lab.link(
        &c,
        &["192.0.2.2/24", "2001:db8:1::2/64"],
        &b,
        &["192.0.2.1/24", "2001:db8:1::1/64"],
    )
    .unwrap();
    // The link-local addresses finish duplicate address detection first (slow in the guest),
    // or the snapshot would differ in a `tentative` flag only.
    let settled = Instant::now() + 10 * SEC;
    while (c.ip(&["-o", "addr"]).unwrap().contains("tentative") || b.ip(&["-o", "addr"]).unwrap().contains("tentative"))
        && Instant::now() < settled
    {
        std::thread::sleep(SEC / 10);
    }
    let before = snapshot(&c);
    let broker_before = snapshot(&b);
    let mut broker_kind = sides
        .broker_kind
        .map(|k| format!("datapath_kind = \"{k}\"\n"))
        .unwrap_or_default();
    if sides.tcp_only {
        broker_kind.push_str("udp = false\n");
    }
    let conf = lab
        .file(
            "broker.toml",
            &format!(
                "listen = [\"[::]:3653\"]\nauth = [\"anonymous\"]\nserver_ipv6 = \"{BROKER_V6}\"\nclient_pool = \"2001:db8:b::/64\"\nkeepalive_min = 1\n{broker_kind}"
            ),
        )
        .unwrap();
    let broker = b.spawn(BROKER, &["-c", conf.to_str().unwrap()]).unwrap();
    broker.wait_for_output("listening", 30 * SEC).unwrap();
    let client_kind = sides
        .client_kind
        .map(|k| format!("datapath_kind={k}\n"))
        .unwrap_or_default();
    // Keepalives every 2 s: the broker drops a silent tunnel after five intervals.
    let conf = lab
        .file(
            "c.conf",
            &format!(
                "server={}\nauth_method=anonymous\ntunnel_mode={}\nkeepalive_interval=2\n{client_kind}",
                m.server, m.mode
            ),
        )
        .unwrap();
    let client: Proc = c.spawn(TSPC, &["-f", conf.to_str().unwrap()]).unwrap();
    client.wait_for_output("(up)", 30 * SEC).unwrap();
    let out = client.output();
    let link = c.ip(&["-d", "link", "show", m.ifname]).unwrap();
    println!(
        "{} ({sides:?}): tspc log:\n{out}\nip -d link show {}:\n{link}",
        m.mode, m.ifname
    );
    let kind_line = |prefix: &str| link.lines().any(|l| l.trim_start().starts_with(prefix));
    match sides.client {
        Expect::Kernel(kind) => {
            assert!(
                out.contains(&format!("kernel datapath ({} link)", kind.split(' ').next().unwrap())),
                "{}: tspc did not choose the kernel datapath:\n{out}",
                m.mode
            );
            assert!(
                kind_line(&format!("{kind} ")),
                "{}: {} is no {kind} link:\n{link}",
                m.mode,
                m.ifname
            );
        }
        Expect::Tun => {
            assert!(
                out.contains("userspace datapath"),
                "{}: tspc did not fall back:\n{out}",
                m.mode
            );
            assert!(kind_line("tun "), "{}: {} is no tun device:\n{link}", m.mode, m.ifname);
            let module = if m.mode == "v4v6" { "ip6_tunnel" } else { "sit" };
            if uml::module_loaded(module) {
                assert!(
                    out.contains("sink link"),
                    "{}: no sink link under tspc's TUN:\n{out}",
                    m.mode
                );
            }
        }
    }
    // The broker makes its link when the session is established, maybe after tspc's "(up)";
    // a userspace broker a sink link, when the kernel has the link kind.
    let deadline = Instant::now()
        + match sides.broker {
            Expect::Kernel(_) => 10 * SEC,
            Expect::Tun => 3 * SEC,
        };
    let mut blink = broker_link(&b, m);
    while blink.is_none() && Instant::now() < deadline {
        std::thread::sleep(SEC / 10);
        blink = broker_link(&b, m);
    }
    let blog = broker.output();
    println!("{} ({sides:?}): broker log:\n{blog}\nbroker link: {blink:?}", m.mode);
    match sides.broker {
        Expect::Kernel(kind) => {
            let (name, line) = blink
                .clone()
                .unwrap_or_else(|| panic!("{}: the broker made no {kind} link:\n{blog}", m.mode));
            assert!(name.starts_with("tspb0k"), "{}: broker link {name}", m.mode);
            assert!(
                line.contains(&format!(" {kind} ")),
                "{}: broker link is no {kind}: {line}",
                m.mode
            );
            assert!(
                blog.contains("tunnel on a kernel link"),
                "{}: broker log:\n{blog}",
                m.mode
            );
        }
        Expect::Tun => {
            // With the tunnel modules loaded (by the client's link), a sink link that claims the
            // packets but carries nothing: no route leads to it.
            if let Some((name, _)) = &blink {
                assert!(
                    blog.contains("sink link"),
                    "{}: the broker made a kernel link: {blink:?}",
                    m.mode
                );
                let routes = [b.routes_v6().unwrap(), b.routes_v4().unwrap()].concat();
                assert!(
                    !routes.iter().any(|r| r.contains(&format!("dev {name}"))),
                    "{}: a route leads to the sink {name}: {routes:?}",
                    m.mode
                );
            }
            assert!(
                blog.contains("userspace"),
                "{}: the broker did not log its userspace datapath:\n{blog}",
                m.mode
            );
        }
    }
    let (c0, b0) = (unreachables_sent(&c), unreachables_sent(&b));
    assert!(
        c.ping(m.target, 3, 5),
        "{}: no ping through the tunnel to {}",
        m.mode,
        m.target
    );
    let (c1, b1) = (unreachables_sent(&c), unreachables_sent(&b));
    let run = Run {
        client_unreachables: (c1.0 - c0.0, c1.1 - c0.1),
        broker_unreachables: (b1.0 - b0.0, b1.1 - b0.1),
    };
    println!(
        "{} ({sides:?}): ICMP/ICMPv6 destination unreachables sent during the pings: client {:?}, broker {:?}",
        m.mode, run.client_unreachables, run.broker_unreachables
    );
    let stop_broker = |why: &str| {
        broker.signal(Signal::Term).unwrap();
        assert!(
            broker.wait_exit(10 * SEC).is_some(),
            "{}: tsp-broker did not exit on SIGTERM",
            m.mode
        );
        assert_eq!(
            snapshot(&b),
            broker_before,
            "{}: the broker left links, addresses or routes behind ({why})",
            m.mode
        );
    };
    if sides.broker_first {
        // Longer than five keepalive intervals: the broker must see the client alive through
        // its raw sockets' copies of the packets its kernel link carries, and keep the link.
        std::thread::sleep(12 * SEC);
        assert_eq!(
            broker_link(&b, m).map(|l| l.0),
            blink.clone().map(|l| l.0),
            "{}: the broker's link went while the client was alive",
            m.mode
        );
        assert!(c.ping(m.target, 2, 5), "{}: no ping after 12 s", m.mode);
        stop_broker("stopped with the tunnel up");
    }
    client.signal(Signal::Term).unwrap();
    assert!(
        client.wait_exit(10 * SEC).is_some(),
        "{}: tspc did not exit on SIGTERM",
        m.mode
    );
    assert!(!has_link(&c, m.ifname), "{}: {} left behind", m.mode, m.ifname);
    assert_eq!(
        snapshot(&c),
        before,
        "{}: tspc left links (a sink?), addresses or routes behind",
        m.mode
    );
    if !sides.broker_first {
        // The tunnel's end (five missed 2 s keepalives) removes the broker's link.
        if let Some((name, _)) = &blink {
            let deadline = Instant::now() + if sides.tcp_only { 3 * SEC } else { 30 * SEC };
            while has_link(&b, name) && Instant::now() < deadline {
                std::thread::sleep(SEC / 5);
            }
            assert!(
                !has_link(&b, name),
                "{}: the broker kept {name} after the tunnel's end",
                m.mode
            );
            println!("{}: the broker removed {name} at the tunnel's end", m.mode);
        }
        stop_broker("after the tunnel's end");
    }
    println!("{} ({sides:?}): passed in {:.1?}", m.mode, t0.elapsed());
    run
}

// ---------------------------------------------------------------------------------------------
// Tests

/// v6v4: tspc creates a kernel sit link (the kernel loads `sit` on demand), pings the broker's
/// tunnel address through it, and removes the link, its addresses and routes on SIGTERM.
#[test]
fn v6v4_kernel_sit_link() {
    in_uml(|| {
        tunnel(&V6V4, Expect::Kernel("sit"));
    });
}

/// v4v6: tspc creates a kernel ip6tnl link in ipip6 mode and pings the broker's IPv4 tunnel
/// address through it.
#[test]
fn v4v6_kernel_ip6tnl_link() {
    in_uml(|| {
        tunnel(&V4V6, Expect::Kernel("ip6tnl ipip6"));
    });
}

/// With module autoloading off, the kernel answers both link kinds with EOPNOTSUPP (like this
/// host's): tspc falls back to the TUN datapath and traffic flows. Then, in the same boot,
/// autoloading on again: the kernel link comes back.
#[test]
fn falls_back_to_userspace_without_the_modules() {
    in_uml(|| {
        uml::modprobe(&["ipv6", "veth", "tun"]);
        uml::autoload(false);
        tunnel(&V6V4, Expect::Tun);
        tunnel(&V4V6, Expect::Tun);
        assert!(!uml::module_loaded("sit") && !uml::module_loaded("ip6_tunnel"));
        uml::autoload(true);
        tunnel(&V6V4, Expect::Kernel("sit"));
    });
}

/// Neither host sends ICMP destination unreachables while pings cross the tunnel, with kernel
/// links on both ends.
///
/// Before the broker had kernel links this failed: once the kernel has the tunnel modules (the
/// client's link loads them, for every namespace), the broker's kernel handed each encapsulated
/// packet to its own tunnel handlers as well as to the userspace datapath's raw socket, found no
/// tunnel and answered "port unreachable" (v6v4: one ICMP error per ping; v4v6: ICMPv6 errors,
/// which the client's ip6tnl turned into ICMP errors of its own). The broker's per-tunnel link
/// (crates/tsp-broker/src/datapath/links.rs) now claims them.
#[test]
fn no_icmp_unreachables_from_either_host() {
    in_uml(|| {
        let runs: Vec<(&str, Run)> = [(&V6V4, "sit"), (&V4V6, "ip6tnl ipip6")]
            .into_iter()
            .map(|(m, kind)| (m.mode, tunnel(m, Expect::Kernel(kind))))
            .collect();
        for (mode, run) in &runs {
            assert_eq!(
                run.client_unreachables,
                (0, 0),
                "{mode}: the client sent ICMP/ICMPv6 destination unreachables"
            );
            assert_eq!(
                run.broker_unreachables,
                (0, 0),
                "{mode}: the broker host sent ICMP/ICMPv6 destination unreachables (its kernel's tunnel \
                 handlers answer the encapsulated packets its userspace datapath reads from a raw socket)"
            );
        }
    });
}

/// The harness itself: a failing guest command fails the boot with its status, and a guest that
/// hangs is killed at the time limit instead of hanging the test.
#[test]
fn harness_reports_failures_and_timeouts() {
    if uml::in_guest() || !require_root() {
        return;
    }
    let kernel = match uml::prepare() {
        Ok(k) => k,
        Err(uml::Skip(why)) => {
            println!("skipped: harness_reports_failures_and_timeouts: {why}");
            return;
        }
    };
    let boot = kernel.run("harness_status", &["false"], &[], GUEST_TIMEOUT).unwrap();
    println!("{}", boot.console);
    assert_eq!(
        (boot.guest_status, boot.exit, boot.timed_out),
        (Some(1), Some(1), false)
    );
    assert!(!boot.success());
    let t0 = Instant::now();
    let boot = kernel.run("harness_hang", &["sleep", "600"], &[], 8 * SEC).unwrap();
    println!("{}", boot.console);
    assert!(
        boot.timed_out && boot.guest_status.is_none() && !boot.success(),
        "{boot:?}"
    );
    assert!(
        t0.elapsed() < 20 * SEC,
        "the hung guest was not killed in time: {:.1?}",
        t0.elapsed()
    );
}

/// v4v6 when the kernel already has `sit` loaded (a distribution kernel after any 6in4 use, or
/// after anything looked up a device named `sit0`): every namespace then has sit's fallback
/// device `sit0`, gogoc's old default v4v6 device name. tspc's default (`tsp-v4v6`) is one no
/// module creates, so the ip6tnl link is made as on a fresh kernel.
#[test]
fn v4v6_with_sit_loaded() {
    in_uml(|| {
        uml::modprobe(&["sit"]);
        tunnel(&V4V6, Expect::Kernel("ip6tnl ipip6"));
    });
}

/// Kernel links on the broker with kernel links on the client, v6v4 and v4v6: the broker makes
/// one link per tunnel (asserted above: kind, remote, name), pings cross, the link outlives five
/// keepalive intervals while the client lives, and the broker's exit with the tunnel up removes
/// its link and leaves its links, addresses and routes as before.
#[test]
fn broker_kernel_links_removed_at_exit() {
    in_uml(|| {
        for (m, kind) in [(&V6V4, "sit"), (&V4V6, "ip6tnl ipip6")] {
            tunnel_with(
                m,
                Sides {
                    broker_first: true,
                    ..Sides::same(Expect::Kernel(kind))
                },
            );
        }
    });
}

/// Mixed ends on a kernel that has the links: a kernel-link client with a userspace broker
/// (`datapath_kind = "userspace"`, which then puts a sink link under the tunnel) and a
/// userspace client (`datapath_kind=userspace`) with a kernel-link broker, v6v4 and v4v6; each
/// pings through and tears down exactly, and neither host sends ICMP errors (the userspace end
/// has a sink link under its tunnel).
#[test]
fn kernel_and_userspace_ends_interoperate() {
    in_uml(|| {
        for (m, kind) in [(&V6V4, "sit"), (&V4V6, "ip6tnl ipip6")] {
            let run = tunnel_with(
                m,
                Sides {
                    client: Expect::Kernel(kind),
                    client_kind: Some("kernel"),
                    broker: Expect::Tun,
                    broker_kind: Some("userspace"),
                    broker_first: false,
                    tcp_only: false,
                },
            );
            assert_eq!(
                (run.client_unreachables, run.broker_unreachables),
                ((0, 0), (0, 0)),
                "{}: ICMP errors with a kernel-link client and a userspace broker",
                m.mode
            );
            let run = tunnel_with(
                m,
                Sides {
                    client: Expect::Tun,
                    client_kind: Some("userspace"),
                    broker: Expect::Kernel(kind),
                    broker_kind: Some("kernel"),
                    broker_first: false,
                    tcp_only: false,
                },
            );
            assert_eq!(
                (run.client_unreachables, run.broker_unreachables),
                ((0, 0), (0, 0)),
                "{}: ICMP errors with a userspace client (and its sink link) and a kernel-link broker",
                m.mode
            );
        }
    });
}

/// `datapath_kind = "kernel"` without the modules: the broker refuses to start and tspc fails
/// instead of falling back.
#[test]
fn datapath_kind_kernel_requires_the_links() {
    in_uml(|| {
        uml::modprobe(&["ipv6", "veth", "tun"]);
        uml::autoload(false);
        let lab = Lab::new("uml_kernel_required").unwrap();
        let (c, b) = (lab.host("c").unwrap(), lab.host("b").unwrap());
        lab.link(&c, &["192.0.2.2/24"], &b, &["192.0.2.1/24"]).unwrap();
        let conf = lab
            .file(
                "broker.toml",
                "listen = [\"192.0.2.1:3653\"]\nauth = [\"anonymous\"]\ndatapath_kind = \"kernel\"\n",
            )
            .unwrap();
        let broker = b.spawn(BROKER, &["-c", conf.to_str().unwrap()]).unwrap();
        let status = broker.wait_exit(30 * SEC);
        let out = broker.output();
        println!("tsp-broker with datapath_kind = \"kernel\", no modules:\n{out}");
        assert!(
            status.is_some_and(|s| !s.success()),
            "the broker did not refuse: {status:?}"
        );
        assert!(out.contains("cannot create sit"), "{out}");
        // A userspace broker for tspc to reach.
        let conf = lab
            .file(
                "broker2.toml",
                "listen = [\"192.0.2.1:3653\"]\nauth = [\"anonymous\"]\n",
            )
            .unwrap();
        let broker = b.spawn(BROKER, &["-c", conf.to_str().unwrap()]).unwrap();
        broker.wait_for_output("listening", 30 * SEC).unwrap();
        let conf = lab
            .file(
                "c.conf",
                "server=192.0.2.1\nauth_method=anonymous\ntunnel_mode=v6v4\ndatapath_kind=kernel\nauto_retry_connect=no\n",
            )
            .unwrap();
        let client = c.spawn(TSPC, &["-f", conf.to_str().unwrap()]).unwrap();
        let status = client.wait_exit(30 * SEC);
        let out = client.output();
        println!("tspc with datapath_kind=kernel, no modules:\n{out}");
        assert!(status.is_some_and(|s| !s.success()), "tspc did not fail: {status:?}");
        assert!(out.contains("datapath_kind=kernel but no kernel link"), "{out}");
        assert!(!has_link(&c, "sit1"));
    });
}

// ---------------------------------------------------------------------------------------------
// Benchmark (printed, not asserted)

/// One TCP flow from namespace `from` to `addr` in namespace `to` for `secs`: Mbit/s received.
/// Both ends are threads of this process that joined the namespaces (`setns`).
fn tcp_mbits(from: &Host, to: &Host, addr: std::net::IpAddr, secs: f64) -> f64 {
    use std::io::{Read, Write};
    fn enter(h: &Host) {
        let f = std::fs::File::open(format!("/run/netns/{}", h.ns())).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let (to, from) = (to.clone(), from.clone());
    let sink = std::thread::spawn(move || {
        enter(&to);
        let l = std::net::TcpListener::bind((addr, 5201)).unwrap();
        tx.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let (mut buf, mut n) = (vec![0u8; 1 << 16], 0u64);
        let t0 = Instant::now();
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k as u64,
            }
        }
        n as f64 * 8.0 / t0.elapsed().as_secs_f64() / 1e6
    });
    rx.recv().unwrap();
    let source = std::thread::spawn(move || {
        enter(&from);
        let mut s = std::net::TcpStream::connect((addr, 5201)).unwrap();
        let buf = vec![0x5au8; 1 << 16];
        let t0 = Instant::now();
        while t0.elapsed().as_secs_f64() < secs {
            if s.write_all(&buf).is_err() {
                break;
            }
        }
    });
    source.join().unwrap();
    sink.join().unwrap()
}

/// Average round-trip time (ms) of 50 pings 10 ms apart.
fn rtt_ms(h: &Host, dst: &str) -> f64 {
    let mut args = vec!["-n", "-q", "-c", "50", "-i", "0.01", "-W", "2", dst];
    if dst.contains(':') {
        args.insert(0, "-6");
    }
    let out = h.run("ping", &args).and_then(|o| o.check()).unwrap().stdout;
    // "rtt min/avg/max/mdev = 0.041/0.052/0.090/0.010 ms"
    out.lines()
        .find_map(|l| l.split(" = ").nth(1))
        .and_then(|v| v.split('/').nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no rtt in: {out}"))
}

/// Throughput and latency of a v6v4 tunnel with kernel sit links on both ends and with the
/// userspace datapath on both ends, against the raw veth at MTU 1280, all in one guest;
/// printed as ratios (UML slows everything, so only the ratios mean something).
#[test]
fn bench_kernel_sit_vs_veth() {
    in_uml(|| {
        let lab = Lab::new("uml_bench").unwrap();
        let (c, b) = (lab.host("c").unwrap(), lab.host("b").unwrap());
        let (ci, bi) = lab
            .link(
                &c,
                &["192.0.2.2/24", "2001:db8:1::2/64"],
                &b,
                &["192.0.2.1/24", "2001:db8:1::1/64"],
            )
            .unwrap();
        c.ip(&["link", "set", &ci, "mtu", "1280"]).unwrap();
        b.ip(&["link", "set", &bi, "mtu", "1280"]).unwrap();
        let settled = Instant::now() + 10 * SEC;
        while c.ip(&["-o", "addr"]).unwrap().contains("tentative") && Instant::now() < settled {
            std::thread::sleep(SEC / 10);
        }
        let secs = 3.0;
        let veth = (
            tcp_mbits(&c, &b, "2001:db8:1::1".parse().unwrap(), secs),
            tcp_mbits(&b, &c, "2001:db8:1::2".parse().unwrap(), secs),
            rtt_ms(&c, "2001:db8:1::1"),
        );
        let mut rows = vec![("raw veth, MTU 1280", veth)];
        for (kind, label) in [
            ("kernel", "v6v4, kernel sit both ends"),
            ("userspace", "v6v4, userspace both ends"),
        ] {
            let conf = lab
                .file(
                    &format!("broker-{kind}.toml"),
                    &format!(
                        "listen = [\"192.0.2.1:3653\"]\nauth = [\"anonymous\"]\nserver_ipv6 = \"{BROKER_V6}\"\nclient_pool = \"2001:db8:b::/64\"\ndatapath_kind = \"{kind}\"\n"
                    ),
                )
                .unwrap();
            let broker = b.spawn(BROKER, &["-c", conf.to_str().unwrap()]).unwrap();
            broker.wait_for_output("listening", 30 * SEC).unwrap();
            let conf = lab
                .file(
                    &format!("c-{kind}.conf"),
                    &format!("server=192.0.2.1\nauth_method=anonymous\ntunnel_mode=v6v4\ndatapath_kind={kind}\n"),
                )
                .unwrap();
            let client = c.spawn(TSPC, &["-f", conf.to_str().unwrap()]).unwrap();
            client.wait_for_output("(up)", 30 * SEC).unwrap();
            assert!(c.ping(BROKER_V6, 2, 5), "{label}: no ping");
            // The client's tunnel address: the broker's pool's first client (2001:db8:b::2).
            rows.push((
                label,
                (
                    tcp_mbits(&c, &b, BROKER_V6.parse().unwrap(), secs),
                    tcp_mbits(&b, &c, "2001:db8:b::2".parse().unwrap(), secs),
                    rtt_ms(&c, BROKER_V6),
                ),
            ));
            client.signal(Signal::Term).unwrap();
            client.wait_exit(10 * SEC);
            broker.signal(Signal::Term).unwrap();
            broker.wait_exit(10 * SEC);
        }
        println!("benchmark (user-mode Linux guest, one TCP flow for {secs} s each way, 50 pings):");
        println!("| path | client→broker | broker→client | RTT |");
        println!("|---|---|---|---|");
        for (label, (up, down, rtt)) in &rows {
            println!(
                "| {label} | {up:.0} Mbit/s ({:.1} %) | {down:.0} Mbit/s ({:.1} %) | {rtt:.3} ms (×{:.2}) |",
                100.0 * up / veth.0,
                100.0 * down / veth.1,
                rtt / veth.2
            );
        }
    });
}

/// A tunnel negotiated over TCP (the broker listens on TCP only) ends with tspc's TCP session:
/// the broker deletes its kernel link within 3 s of tspc's exit, v6v4 and v4v6.
#[test]
fn broker_link_goes_with_the_tcp_session() {
    in_uml(|| {
        for (m, kind) in [(&V6V4, "sit"), (&V4V6, "ip6tnl ipip6")] {
            tunnel_with(
                m,
                Sides {
                    tcp_only: true,
                    ..Sides::same(Expect::Kernel(kind))
                },
            );
        }
    });
}

/// Client `c` (192.0.2.2) and broker `b` (192.0.2.1) on one link, no IPv6 outside the tunnel;
/// the broker with its defaults (and `broker_extra` TOML), tspc with its defaults in v6v4 on a
/// kernel sit link. Returns the lab, both hosts, both processes and the broker host's state from
/// before the broker started.
/// `broker_extra`: more broker.toml lines, `@DIR@` standing for the lab's directory.
fn v6v4_defaults(test: &str, broker_extra: &str) -> (Lab, Host, Host, Proc, Proc, Snapshot) {
    let lab = Lab::new(test).unwrap();
    let broker_extra = broker_extra.replace("@DIR@", &lab.dir().to_string_lossy());
    let (c, b) = (lab.host("c").unwrap(), lab.host("b").unwrap());
    lab.link(&c, &["192.0.2.2/24"], &b, &["192.0.2.1/24"]).unwrap();
    // The link-local address first (duplicate address detection is slow in the guest).
    let settled = Instant::now() + 10 * SEC;
    while Instant::now() < settled && {
        let a = b.ip(&["-o", "addr"]).unwrap();
        !a.contains("fe80") || a.contains("tentative")
    } {
        std::thread::sleep(SEC / 10);
    }
    let before = snapshot(&b);
    let conf = lab
        .file(
            "broker.toml",
            &format!(
                "listen = [\"0.0.0.0:3653\"]\nauth = [\"anonymous\"]\nserver_ipv6 = \"{BROKER_V6}\"\nclient_pool = \"2001:db8:b::/64\"\n{broker_extra}"
            ),
        )
        .unwrap();
    let broker = b.spawn(BROKER, &["-c", conf.to_str().unwrap()]).unwrap();
    broker.wait_for_output("listening", 30 * SEC).unwrap();
    let conf = lab
        .file("c.conf", "server=192.0.2.1\nauth_method=anonymous\ntunnel_mode=v6v4\n")
        .unwrap();
    let client = c.spawn(TSPC, &["-f", conf.to_str().unwrap()]).unwrap();
    client.wait_for_output("(up)", 30 * SEC).unwrap();
    assert!(
        client.output().contains("kernel datapath (sit link)"),
        "no kernel sit link:\n{}",
        client.output()
    );
    (lab, c, b, broker, client, before)
}

/// Issue 13 on kernel links: the kernel carries the traffic, so tspc reads the sit link's
/// packet counters for evidence. Default keepalive settings (the broker's 30 s interval); a
/// ping every 200 ms; the broker's replies then vanish silently (a blackhole route on the
/// broker host: no ICMP). tspc declares the path dead within 10 s (its sit link goes away),
/// and once the route is gone the tunnel comes back and carries pings.
#[test]
fn kernel_link_dead_path_detected_within_10s() {
    in_uml(|| {
        let (_lab, c, b, _broker, client, _) = v6v4_defaults("uml_kernel_liveness", "");
        assert!(
            c.ping_until(BROKER_V6, 10 * SEC).is_some(),
            "no ping through the sit link"
        );
        let ifindex = || {
            let out = c.ip(&["-o", "link", "show", "dev", V6V4.ifname]).ok()?;
            out.split(':').next()?.trim().parse::<u32>().ok()
        };
        let first = ifindex().expect("sit1");
        let pinger = c.spawn("ping", &["-6", "-n", "-i", "0.2", BROKER_V6]).unwrap();
        std::thread::sleep(2 * SEC);

        let mark = client.mark();
        b.ip(&["route", "add", "blackhole", "192.0.2.2/32"]).unwrap();
        let cut = Instant::now();
        while ifindex() == Some(first) && cut.elapsed() < 20 * SEC {
            std::thread::sleep(SEC / 20);
        }
        let detected = cut.elapsed();
        let _ = client.wait_for_output_since(mark, "down:", 2 * SEC);
        let out = client.output();
        let since = out.get(mark..).unwrap_or(&out);
        println!("kernel link: dead path detected after {detected:.2?} (goal ≤ 10 s)\n{since}");
        assert!(
            since.lines().any(|l| l.contains("down:") && l.contains("keepalive")),
            "the sit link did not go down for the keepalive:\n{since}"
        );
        assert!(detected <= 10 * SEC, "detection took {detected:?}");

        b.ip(&["route", "del", "blackhole", "192.0.2.2/32"]).unwrap();
        let mended = Instant::now();
        let healed = c.ping_until(BROKER_V6, 20 * SEC);
        pinger.kill();
        println!(
            "kernel link: pings again {:.2?} after the path came back",
            mended.elapsed()
        );
        assert!(
            healed.is_some(),
            "no ping after the path came back:\n{}",
            client.output()
        );
    });
}

/// Issue 12 B on the broker's kernel sit links. Where the kernel has nftables for IPv6: a packet
/// from the client's tunnel whose inner IPv6 source is not the client's (here an address the
/// client adds to its sit link) is dropped by the broker's reverse-path rule before it reaches
/// anything, the client's own address still gets through, and the rule goes with the broker.
/// Debian's user-mode Linux kernel has no nftables for IPv6 (CONFIG_NF_TABLES_IPV6 unset): there
/// the broker must say, once, that the inner source is not checked, and carry the tunnel anyway.
/// (tests/tunnels.rs checks the rule itself on the host's kernel.)
#[test]
fn broker_sit_link_checks_the_inner_ipv6_source() {
    in_uml(|| {
        let (_lab, c, b, broker, client, broker_before) =
            v6v4_defaults("uml_inner_source", "datapath_kind = \"kernel\"\n");
        assert!(
            c.ping_until(BROKER_V6, 10 * SEC).is_some(),
            "no ping from the client's own address"
        );
        let nft_v6 = b
            .run("nft", &["add", "table", "ip6", "probe_v6"])
            .is_ok_and(|o| o.success());
        if !nft_v6 {
            broker
                .wait_for_output("is not checked (needs nftables)", 10 * SEC)
                .unwrap_or_else(|e| panic!("{e}:\n{}", broker.output()));
            assert_eq!(broker.output().matches("is not checked (needs nftables)").count(), 1);
            client.signal(Signal::Term).unwrap();
            client.wait_exit(10 * SEC);
            broker.signal(Signal::Term).unwrap();
            broker.wait_exit(10 * SEC);
            assert_eq!(snapshot(&b), broker_before, "the broker left something behind");
            println!("this kernel has no nftables for IPv6: the broker said so");
            return;
        }
        b.run("nft", &["delete", "table", "ip6", "probe_v6"]).unwrap();
        broker
            .wait_for_output("inner IPv6 sources on sit links checked", 10 * SEC)
            .unwrap_or_else(|e| panic!("{e}:\n{}", broker.output()));

        c.ip(&["-6", "addr", "add", "2001:db8:b::99/128", "dev", V6V4.ifname, "nodad"])
            .unwrap();
        let (table, _) = tsp_broker::datapath::inner_source_rules("tspb0");
        c.assert_spoofed_echoes_dropped("2001:db8:b::99", BROKER_V6, &b, &table);
        assert!(
            c.ping(BROKER_V6, 2, 2),
            "the client's own address no longer gets through"
        );

        client.signal(Signal::Term).unwrap();
        client.wait_exit(10 * SEC);
        broker.signal(Signal::Term).unwrap();
        broker.wait_exit(10 * SEC);
        assert_eq!(snapshot(&b), broker_before, "the broker left something behind");
    });
}

/// Issue 14 (operating the broker): a tunnel the kernel carries on the broker's sit link never
/// passes the broker's TUN or sockets toward the client, so its traffic is the link's counters:
/// `tsp-broker sessions` shows bytes both ways after pings through the kernel link.
#[test]
fn broker_counts_the_traffic_of_kernel_links() {
    in_uml(|| {
        let (lab, c, b, _broker, _client, _) =
            v6v4_defaults("uml_kernel_traffic", "control_socket = \"@DIR@/control\"\n");
        assert!(
            c.ping_until(BROKER_V6, 10 * SEC).is_some(),
            "no ping through the sit link"
        );
        assert!(c.ping(BROKER_V6, 20, 3), "pings through the sit link lost");
        let conf = lab.dir().join("broker.toml");
        let out = b.run(BROKER, &["-c", conf.to_str().unwrap(), "sessions"]).unwrap();
        let table = out.stdout.clone();
        println!("tsp-broker sessions:\n{table}{}", out.stderr);
        let row: Vec<&str> = table
            .lines()
            .nth(1)
            .unwrap_or_else(|| panic!("no session:\n{table}"))
            .split_whitespace()
            .collect();
        let (bytes_in, bytes_out): (u64, u64) = (row[7].parse().unwrap(), row[8].parse().unwrap());
        // 20 echoes of 104 bytes each way at least (the keepalive adds some).
        assert!(
            bytes_in >= 20 * 104 && bytes_out >= 20 * 104,
            "the kernel link's traffic is not counted:\n{table}"
        );
    });
}
