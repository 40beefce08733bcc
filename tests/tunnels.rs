//! Real tunnels in network namespaces: `tsp-broker` in one host, `tspc` in another, IPv6 (or,
//! for v4v6, IPv4) pings through the userspace datapaths, NAT detection, and roaming. Root
//! only (CI is root); each test prints a skip line otherwise.

mod netns;

use std::time::{Duration, Instant};

use netns::{Host, Lab, Proc, Signal, behind_nat, client_broker, require_root};

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
        ("v4v6", "[2001:db8:1::1]", "tsp-v4v6", "198.51.100.1"),
    ] {
        let (lab, c, b, _) = client_broker(&format!("modes_{mode}"));
        let before = (
            // A link-local address may still be in DAD (tentative) at the first snapshot.
            c.ip(&["-o", "addr"]).unwrap().replace("tentative ", ""),
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
                c.routes_v4()
                    .unwrap()
                    .iter()
                    .any(|r| r.starts_with("default dev tsp-v4v6")),
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
            // A link-local address may still be in DAD (tentative) at the first snapshot.
            c.ip(&["-o", "addr"]).unwrap().replace("tentative ", ""),
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
        let (lab, c, b, c_if) = client_broker(&format!("roaming_{mode}"));
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
    let (lab, c, b, _) = client_broker("template_mode");
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

/// Bytes a bulk transfer carries: enough for many 64 KB super-segments and TCP windows.
const BULK_BYTES: u64 = 24 << 20;

/// The pseudo-random stream the bulk sender writes (xorshift64; the seed fixes it).
fn bulk_stream(seed: u64, mut f: impl FnMut(&[u8])) {
    let mut x = seed | 1;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut left = BULK_BYTES;
    while left > 0 {
        for w in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(chunk.len() as u64) as usize;
        f(&chunk[..n]);
        left -= n as u64;
    }
}

/// FNV-1a over a byte stream.
#[derive(Clone, Copy)]
struct Fnv(u64);
impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn add(&mut self, b: &[u8]) {
        for &x in b {
            self.0 = (self.0 ^ u64::from(x)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// Not a test by itself: the bulk sender or receiver that `tunnels_carry_bulk_tcp_intact` runs
/// inside a namespace by re-executing this test binary with TSP_BULK set
/// (`recv <addr>` / `send <addr> <seed>`).
#[test]
fn bulk_helper() {
    use std::io::{Read, Write};
    let Ok(role) = std::env::var("TSP_BULK") else { return };
    let args: Vec<&str> = role.split_whitespace().collect();
    match args.as_slice() {
        ["recv", addr] => {
            let l = std::net::TcpListener::bind(addr).unwrap();
            println!("bulk: listening");
            let (mut s, _) = l.accept().unwrap();
            let mut h = Fnv::new();
            let mut n = 0u64;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let k = s.read(&mut buf).unwrap();
                if k == 0 {
                    break;
                }
                h.add(&buf[..k]);
                n += k as u64;
            }
            println!("bulk: received {n} bytes fnv {:016x}", h.0);
        }
        ["send", addr, seed] => {
            let seed: u64 = seed.parse().unwrap();
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            bulk_stream(seed, |b| s.write_all(b).unwrap());
            s.shutdown(std::net::Shutdown::Write).unwrap();
            println!("bulk: sent");
        }
        _ => panic!("TSP_BULK={role}?"),
    }
}

/// Runs one bulk transfer from `from` to a receiver on `to` listening at `listen`, the sender
/// connecting to `target`; asserts every byte arrived, in order.
fn bulk(from: &Host, to: &Host, listen: &str, target: &str, seed: u64, what: &str) {
    let me = std::env::current_exe().unwrap();
    let me = me.to_str().unwrap();
    let args = ["--exact", "bulk_helper", "--nocapture", "--test-threads=1"];
    let rx = to
        .spawn_env(me, &args, &[("TSP_BULK", &format!("recv {listen}"))])
        .unwrap();
    rx.wait_for_output("bulk: listening", 10 * SEC).unwrap();
    let tx = from
        .spawn_env(me, &args, &[("TSP_BULK", &format!("send {target} {seed}"))])
        .unwrap();
    // Generous: debug builds on a busy 2-core machine. The assertion is on the bytes only.
    let done = rx.wait_for_output("bulk: received", 120 * SEC);
    let mut want = Fnv::new();
    bulk_stream(seed, |b| want.add(b));
    let out = rx.output();
    assert!(
        done.is_ok(),
        "{what}: receiver did not finish:\n{out}\nsender:\n{}",
        tx.output()
    );
    let line = format!("bulk: received {BULK_BYTES} bytes fnv {:016x}", want.0);
    assert!(out.contains(&line), "{what}: expected `{line}`, got:\n{out}");
    let _ = tx.wait_exit(10 * SEC);
}

/// Starts broker and client with `envs`, then runs a bulk transfer each way through the tunnel.
#[allow(clippy::too_many_arguments)]
fn bulk_both_ways(lab: &Lab, c: &Host, b: &Host, mode: &str, server: &str, ifname: &str, env: &str, seed: u64) {
    let envs: Vec<(&str, &str)> = if env.is_empty() {
        vec![]
    } else {
        vec![("NM_TSP_OFFLOAD", env)]
    };
    let toml = format!(
        "listen = [\"[::]:3653\"]\nauth = [\"anonymous\"]\nserver_ipv6 = \"{BROKER_V6}\"\nclient_pool = \"2001:db8:b::/64\"\nkeepalive_min = 1\n"
    );
    let conf = lab.file("broker.toml", &toml).unwrap();
    let broker = b.spawn_env(BROKER, &["-c", conf.to_str().unwrap()], &envs).unwrap();
    broker.wait_for_output("listening", 10 * SEC).unwrap();
    let cconf = lab
        .file(
            "c.conf",
            &format!("server={server}\nauth_method=anonymous\ntunnel_mode={mode}\n"),
        )
        .unwrap();
    let client = c.spawn_env(TSPC, &["-f", cconf.to_str().unwrap()], &envs).unwrap();
    client.wait_for_output("(up)", 10 * SEC).unwrap();
    let what = format!("{mode} offload={}", if env.is_empty() { "on" } else { env });
    let (prefix, broker_in) = if mode == "v4v6" {
        ("198.51.100.", "198.51.100.1".to_owned())
    } else {
        ("2001:db8:b::", format!("[{BROKER_V6}]"))
    };
    let addrs = c.addrs(ifname).unwrap();
    let mine = addrs.iter().find(|a| a.starts_with(prefix)).unwrap();
    let mine = mine.split('/').next().unwrap();
    let client_in = if mode == "v4v6" {
        mine.to_owned()
    } else {
        format!("[{mine}]")
    };
    assert!(c.ping(broker_in.trim_matches(['[', ']']), 2, 2), "{what}: no ping");
    let to_b = format!("{broker_in}:5001");
    bulk(c, b, &to_b, &to_b, seed, &format!("{what} client->broker"));
    let to_c = format!("{client_in}:5002");
    let before = rx_stats(c, ifname);
    bulk(b, c, &to_c, &to_c, seed + 1, &format!("{what} broker->client"));
    let after = rx_stats(c, ifname);
    if mode == "v6udpv4" && env.is_empty() {
        // The broker's GSO datagrams arrive as GRO batches and are written to the client's TUN
        // as TCP super-segments: far fewer writes than 1280-byte packets.
        let (bytes, writes) = (after.0 - before.0, (after.1 - before.1).max(1));
        assert!(
            bytes / writes > 4000,
            "{what}: {bytes} bytes in {writes} TUN writes: no coalescing"
        );
    }
    assert!(client.status().is_none(), "{what}: tspc exited:\n{}", client.output());
}

/// (bytes, packets) the kernel received on `ifname` (our writes to the TUN).
fn rx_stats(h: &Host, ifname: &str) -> (u64, u64) {
    let read = |what: &str| {
        let out = h
            .run("cat", &[&format!("/sys/class/net/{ifname}/statistics/{what}")])
            .unwrap();
        out.stdout.trim().parse::<u64>().unwrap()
    };
    (read("rx_bytes"), read("rx_packets"))
}

/// A bulk TCP transfer each way through every userspace datapath, with TUN offload, UDP
/// GSO/GRO and userspace GRO (the default), and with the one-packet fallback
/// (NM_TSP_OFFLOAD=off on both ends): all bytes arrive intact.
#[test]
fn tunnels_carry_bulk_tcp_intact() {
    if !require_root() {
        return;
    }
    for (i, (mode, server, ifname, env)) in [
        ("v6udpv4", "192.0.2.1", "tun", ""),
        ("v6v4", "192.0.2.1", "sit1", ""),
        ("v4v6", "[2001:db8:1::1]", "tsp-v4v6", ""),
        ("v6udpv4", "192.0.2.1", "tun", "off"),
    ]
    .into_iter()
    .enumerate()
    {
        let (lab, c, b, _) = client_broker(&format!("bulk_{mode}{env}"));
        bulk_both_ways(&lab, &c, &b, mode, server, ifname, env, 2 * i as u64 + 1);
    }
}

/// The same through a masquerading NAT (v6udpv4: UDP GSO and GRO datagrams cross conntrack).
#[test]
fn bulk_tcp_through_nat_intact() {
    if !require_root() {
        return;
    }
    let (lab, n, b, _r, _) = behind_nat("bulk_nat");
    bulk_both_ways(&lab, &n, &b, "v6udpv4", "203.0.113.1", "tun", "", 11);
}

/// Packets of rule `rule` (an nftables match) counted in `host`'s input chain of `table`.
fn counted(h: &Host, family: &str, table: &str, needle: &str) -> u64 {
    let out = h.run("nft", &["list", "chain", family, table, "input"]).unwrap();
    out.stdout
        .lines()
        .find(|l| l.contains(needle))
        .and_then(|l| l.split("packets ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no counter for {needle:?} in\n{}", out.stdout))
}

/// Counts, in `h`, the incoming packets of protocol `proto` from `src` and from elsewhere.
fn count_outer_sources(h: &Host, family: &str, proto: &str, src: &str) {
    let table = format!("obs{family}");
    let saddr = if family == "ip" { "ip saddr" } else { "ip6 saddr" };
    let chain = "{ type filter hook input priority 0; policy accept; }";
    h.run("nft", &["add", "table", family, &table])
        .unwrap()
        .check()
        .unwrap();
    h.run("nft", &["add", "chain", family, &table, "input", chain])
        .unwrap()
        .check()
        .unwrap();
    for op in ["==", "!="] {
        let rule = format!("meta l4proto {proto} {saddr} {op} {src} counter");
        let mut args = vec!["add", "rule", family, &table, "input"];
        args.extend(rule.split(' '));
        h.run("nft", &args).unwrap().check().unwrap();
    }
}

/// The broker listens on a secondary address of its interface: the tunnel packets it sends
/// (protocol 41 for v6v4, 4 for v4v6) must leave from that address, not the primary one, or
/// the client drops them and the tunnel carries nothing.
#[test]
fn tunnel_packets_leave_from_the_address_the_client_talks_to() {
    if !require_root() {
        return;
    }
    for (mode, server, secondary, family, proto, target, ifname) in [
        ("v6v4", "192.0.2.11", "192.0.2.11", "ip", "41", BROKER_V6, "sit1"),
        (
            "v4v6",
            "[2001:db8:1::11]",
            "2001:db8:1::11",
            "ip6",
            "4",
            "198.51.100.1",
            "tsp-v4v6",
        ),
    ] {
        let lab = Lab::new(&format!("secondary_{mode}")).unwrap();
        let (c, b) = (lab.host("c").unwrap(), lab.host("b").unwrap());
        let (_, b_if) = lab
            .link(
                &c,
                &["192.0.2.2/24", "2001:db8:1::2/64"],
                &b,
                &["192.0.2.1/24", "2001:db8:1::1/64"],
            )
            .unwrap();
        b.add_addr(&b_if, "192.0.2.11/24").unwrap();
        b.add_addr(&b_if, "2001:db8:1::11/64").unwrap();
        let toml = format!(
            "listen = [\"192.0.2.11:3653\", \"[2001:db8:1::11]:3653\"]\nserver_ipv4 = \"192.0.2.11\"\nauth = [\"anonymous\"]\nserver_ipv6 = \"{BROKER_V6}\"\nclient_pool = \"2001:db8:b::/64\"\nkeepalive_min = 1\n"
        );
        let conf = lab.file("broker.toml", &toml).unwrap();
        let broker = b.spawn(BROKER, &["-c", conf.to_str().unwrap()]).unwrap();
        broker.wait_for_output("listening", 10 * SEC).unwrap();
        count_outer_sources(&c, family, proto, secondary);
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
        assert_eq!(field(&client.output(), "mode:").as_deref(), Some(mode));
        assert!(c.link_exists(ifname), "{mode}: no {ifname}");
        assert!(
            c.ping(target, 3, 2),
            "{mode}: no ping through the tunnel via the secondary address\n{}",
            broker.output()
        );
        let table = format!("obs{family}");
        let from_secondary = counted(&c, family, &table, &format!("saddr {secondary} counter"));
        let from_elsewhere = counted(&c, family, &table, &format!("!= {secondary}"));
        assert!(from_secondary >= 3, "{mode}: {from_secondary} packets from {secondary}");
        assert_eq!(from_elsewhere, 0, "{mode}: tunnel packets from another broker address");
    }
}

/// A client asking for v6anyv4 (or v6v4) from behind a NAT that reaches the broker over TCP
/// only (UDP 3653 filtered) is refused clearly, naming the NAT, and never reports the tunnel up.
#[test]
fn natted_client_over_tcp_is_refused_v6v4_clearly() {
    if !require_root() {
        return;
    }
    let (lab, n, b, r, _) = behind_nat("nat_tcp_refused");
    let chain = "{ type filter hook forward priority 0; policy accept; }";
    r.run("nft", &["add", "table", "inet", "udpblock"])
        .unwrap()
        .check()
        .unwrap();
    r.run("nft", &["add", "chain", "inet", "udpblock", "blockfwd", chain])
        .unwrap()
        .check()
        .unwrap();
    r.run(
        "nft",
        &[
            "add", "rule", "inet", "udpblock", "blockfwd", "udp", "dport", "3653", "drop",
        ],
    )
    .unwrap()
    .check()
    .unwrap();
    let broker = start_broker(&lab, &b, "");
    for mode in ["v6anyv4", "v6v4"] {
        let conf = lab
            .file(
                &format!("{mode}.conf"),
                &format!("server=203.0.113.1\nauth_method=anonymous\ntunnel_mode={mode}\n"),
            )
            .unwrap();
        let client = n.spawn(TSPC, &["-f", conf.to_str().unwrap()]).unwrap();
        let seen = client.wait_for_output("cannot cross the NAT", 30 * SEC);
        let out = client.output();
        client.kill();
        seen.unwrap_or_else(|e| panic!("{mode}: no clear refusal ({e}):\n{out}\nbroker:\n{}", broker.output()));
        assert!(out.contains("303"), "{mode}: {out}");
        assert!(!out.contains("(up)"), "{mode}: tunnel reported up:\n{out}");
    }
    assert!(!broker.output().contains("tunnel established"), "{}", broker.output());
}

/// The broker's inner IPv6 source check for its kernel sit links, on this kernel (which has
/// nftables for IPv6 but no sit links, so a veth stands in for a client's link, named as the
/// broker names its links, and routed as the broker routes them: the client's /128 only). The
/// table `tsp_broker::datapath::inner_source_rules` makes drops what comes in with another
/// source before anything sees it, and lets the client's own address through. The kernel tier
/// covers the broker making and removing it with real sit links.
#[test]
fn broker_inner_source_rule_drops_spoofed_sources() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("inner_source_rule").unwrap();
    let (c, b) = (lab.host("c").unwrap(), lab.host("b").unwrap());
    let link = format!("{}k7", lab.prefix());
    b.ip(&[
        "link",
        "add",
        &link,
        "type",
        "veth",
        "peer",
        "name",
        "cx",
        "netns",
        c.ns(),
    ])
    .unwrap();
    for (h, dev, mine, peer) in [
        (&b, link.as_str(), "2001:db8:b::1", "2001:db8:b::2"),
        (&c, "cx", "2001:db8:b::2", "2001:db8:b::1"),
    ] {
        h.ip(&["link", "set", dev, "up"]).unwrap();
        h.ip(&["-6", "addr", "add", &format!("{mine}/128"), "dev", dev, "nodad"])
            .unwrap();
        h.ip(&["-6", "route", "add", &format!("{peer}/128"), "dev", dev])
            .unwrap();
    }
    c.ip(&["-6", "addr", "add", "2001:db8:b::99/128", "dev", "cx", "nodad"])
        .unwrap();
    assert!(
        c.ping_until("2001:db8:b::1", 5 * SEC).is_some(),
        "no path before the rule"
    );

    let (table, ruleset) = tsp_broker::datapath::inner_source_rules(lab.prefix());
    let rules = lab.file("inner.nft", &ruleset).unwrap();
    b.run("nft", &["-f", rules.to_str().unwrap()]).unwrap().check().unwrap();
    // Installed twice: a table left by a killed broker is replaced, not doubled.
    b.run("nft", &["-f", rules.to_str().unwrap()]).unwrap().check().unwrap();

    let before = b.icmp6_echo_requests_in();
    c.assert_spoofed_echoes_dropped("2001:db8:b::99", "2001:db8:b::1", &b, &table);
    assert!(c.ping("2001:db8:b::1", 2, 2), "the client's own address is dropped too");
    assert!(b.icmp6_echo_requests_in() >= before + 2);
}

/// Nanoseconds on a CPU so far, summed over all threads of `pid` (/proc/PID/task/*/schedstat).
fn cpu_ns(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The share of one CPU (in %) that each of `pids` used during the next `span`.
fn cpu_shares(pids: [u32; 2], span: Duration) -> [u64; 2] {
    let before = pids.map(cpu_ns);
    let start = Instant::now();
    std::thread::sleep(span);
    let ns = start.elapsed().as_nanos() as u64;
    let after = pids.map(cpu_ns);
    [0, 1].map(|i| (after[i] - before[i]) * 100 / ns)
}

/// `busy_poll` on both ends (tspc's gogoc.conf key, the broker's `busy_poll_us`): while light
/// traffic flows (100 pings a second) both datapaths poll instead of sleeping between packets,
/// so each uses a large share of a CPU; once the traffic stops for longer than the window they
/// sleep again. Pings and bulk TCP each way arrive intact through the polling loops (UDP with
/// offload, and the raw-socket datapath).
#[test]
fn busy_polling_datapaths_poll_while_traffic_flows_and_sleep_after() {
    if !require_root() {
        return;
    }
    for (i, mode) in ["v6udpv4", "v6v4"].into_iter().enumerate() {
        let (lab, c, b, _) = client_broker(&format!("busy_{mode}"));
        let broker = start_broker(&lab, &b, "busy_poll_us = 50000\n");
        let client = start_client(
            &lab,
            &c,
            "c",
            &[
                "server=192.0.2.1",
                "auth_method=anonymous",
                &format!("tunnel_mode={mode}"),
                "busy_poll=50000",
            ],
        );
        // An address the broker host's kernel answers (the broker rate-limits the echoes to
        // its own keepalive address).
        b.add_addr("lo", "2001:db8:ff::1/128").unwrap();
        assert!(c.ping("2001:db8:ff::1", 2, 2), "{mode}: no ping through the tunnel");
        let pids = [client.pid(), broker.pid()];
        let quiet_before = cpu_shares(pids, SEC);
        let pinger = c
            .spawn("ping", &["-6", "-n", "-q", "-i", "0.01", "-c", "300", "2001:db8:ff::1"])
            .unwrap();
        std::thread::sleep(SEC / 2);
        let polling = cpu_shares(pids, SEC);
        assert!(pinger.wait_exit(10 * SEC).is_some(), "{mode}: ping did not end");
        assert!(
            pinger.output().contains(" 0% packet loss"),
            "{mode}: pings lost while polling:\n{}",
            pinger.output()
        );
        std::thread::sleep(SEC / 2);
        let quiet_after = cpu_shares(pids, SEC);
        // Without polling each end uses about 1 % of a CPU for 100 pings a second.
        assert!(
            polling.iter().all(|&p| p >= 20),
            "{mode}: CPU % of (tspc, broker) while pinging: {polling:?} — not polling"
        );
        assert!(
            quiet_before.iter().chain(&quiet_after).all(|&p| p < 10),
            "{mode}: CPU % of (tspc, broker) with no traffic: before {quiet_before:?}, after {quiet_after:?}"
        );
        let addrs = c.addrs(if mode == "v6v4" { "sit1" } else { "tun" }).unwrap();
        let mine = addrs.iter().find(|a| a.starts_with("2001:db8:b::")).unwrap();
        let mine = mine.split('/').next().unwrap();
        let seed = 21 + 2 * i as u64;
        let to_b = format!("[{BROKER_V6}]:5001");
        bulk(&c, &b, &to_b, &to_b, seed, &format!("{mode} busy_poll client->broker"));
        let to_c = format!("[{mine}]:5002");
        bulk(
            &b,
            &c,
            &to_c,
            &to_c,
            seed + 1,
            &format!("{mode} busy_poll broker->client"),
        );
        assert!(client.status().is_none(), "{mode}: tspc exited:\n{}", client.output());
        assert!(broker.status().is_none(), "{mode}: broker exited:\n{}", broker.output());
    }
}
