//! Resilience of real tunnels in network namespaces (root only; each test prints a skip line
//! otherwise): a broker that dies and comes back, lossy control traffic, a broker whose
//! datapath sends garbage, and teardown that leaves the host exactly as it was.
//!
//! Topology of every test: client `c` (192.0.2.2) and broker `b` (192.0.2.1) on one veth link
//! (plus 2001:db8:1::2 / ::1 where IPv6 outside the tunnel is needed).

mod netns;

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netns::{Host, Lab, Proc, Signal};
use tsp_proto::frame;
use tsp_proto::rudp::{self, Header};
use tsp_proto::status::StatusCode;
use tsp_proto::types::TunnelMode;
use tsp_proto::xml::{self, Offer};
use tsp_tunnel::icmp;

const SEC: Duration = Duration::from_secs(1);
const TSPC: &str = env!("CARGO_BIN_EXE_tspc");
const BROKER: &str = env!("CARGO_BIN_EXE_tsp-broker");
/// The broker's address inside the tunnel (tests/demo.sh's broker TOML).
const BROKER_V6: &str = "2001:db8:b::1";

// ---------------------------------------------------------------------------------------------
// Helpers

/// The demo's broker TOML (anonymous, dual-stack listener) plus `extra` lines.
fn broker_toml(extra: &str) -> String {
    format!(
        "listen = [\"[::]:3653\"]\nauth = [\"anonymous\"]\nrealm = \"resilience\"\n\
         server_ipv6 = \"{BROKER_V6}\"\nclient_pool = \"2001:db8:b::/64\"\n{extra}"
    )
}

/// Starts tsp-broker in `b` with the TOML in `conf` and waits until it listens.
fn start_broker(b: &Host, conf: &Path) -> Proc {
    let p = b.spawn(BROKER, &["-c", conf.to_str().unwrap()]).unwrap();
    p.wait_for_output("listening", 10 * SEC).unwrap();
    p
}

/// Writes a gogoc.conf of these lines into the lab dir.
fn client_conf(lab: &Lab, name: &str, lines: &[&str]) -> PathBuf {
    lab.file(&format!("{name}.conf"), &(lines.join("\n") + "\n")).unwrap()
}

/// Polls until `cond` holds; how long that took, or `None` after `timeout`.
fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The output of `p` after byte `mark` (from [`Proc::mark`]).
fn output_since(p: &Proc, mark: usize) -> String {
    let out = p.output();
    out.get(mark..).unwrap_or(&out).to_string()
}

/// Waits for a line of `p`'s output after `mark` that satisfies `pred`, and returns it. Fails
/// (with the log's tail) on timeout or if the process exits first.
fn wait_line(p: &Proc, mark: usize, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let exited = p.status();
        if let Some(line) = output_since(p, mark).lines().find(|l| pred(l)) {
            return line.to_string();
        }
        let why = match exited {
            Some(s) => format!("it exited ({s})"),
            None if Instant::now() >= deadline => format!("{timeout:?} passed"),
            None => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        let out = p.output();
        let lines: Vec<&str> = out.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        panic!(
            "`{}` never printed {what} ({why}); its log ends with:\n{}",
            p.command(),
            tail
        );
    }
}

/// The value after `key` on the last line that starts with it (`mode:`, `client:`).
fn field(output: &str, key: &str) -> Option<String> {
    output
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(key).map(|v| v.trim().to_owned()))
}

/// The client's tunnel IPv6 address from tspc's `client:      <v6> (IPv4 <v4>)` line.
fn client_v6(output: &str) -> String {
    let v = field(output, "client:").unwrap_or_else(|| panic!("no client: line in\n{output}"));
    v.split_whitespace().next().unwrap().to_string()
}

fn up_lines(output: &str) -> usize {
    output.lines().filter(|l| l.contains("(up)")).count()
}

/// Client `c` (192.0.2.2) and broker `b` (192.0.2.1) on one link (and IPv6 outside the
/// tunnel with `v6`). Returns the lab, both hosts and the client's end of the link.
fn pair(test: &str, v6: bool) -> (Lab, Host, Host, String) {
    let lab = Lab::new(test).unwrap();
    let (c, b) = (lab.host("c").unwrap(), lab.host("b").unwrap());
    let (c_addrs, b_addrs): (&[&str], &[&str]) = if v6 {
        (
            &["192.0.2.2/24", "2001:db8:1::2/64"],
            &["192.0.2.1/24", "2001:db8:1::1/64"],
        )
    } else {
        (&["192.0.2.2/24"], &["192.0.2.1/24"])
    };
    let (c_if, _) = lab.link(&c, c_addrs, &b, b_addrs).unwrap();
    (lab, c, b, c_if)
}

// ---------------------------------------------------------------------------------------------
// 1. The broker dies and comes back

/// The broker is SIGKILLed under a live v6udpv4 tunnel: the client notices through its
/// keepalive, keeps trying, and when the broker is back (same config, state file) gets the
/// same IPv6 address again and carries traffic.
#[test]
fn broker_restart_keeps_address() {
    if !netns::require_root() {
        return;
    }
    let (lab, c, b, _) = pair("broker_restart_keeps_address", false);
    let state = lab.dir().join("broker.state");
    let toml = broker_toml(&format!("keepalive_min = 1\nstate_file = \"{}\"\n", state.display()));
    let conf = lab.file("broker.toml", &toml).unwrap();
    let broker = start_broker(&b, &conf);

    // A decoy (another session key: it reports another IPv4 address) takes the first free
    // address, so a broker that forgot its assignments would hand our client a different one.
    let decoy = client_conf(
        &lab,
        "decoy",
        &[
            "server=192.0.2.1",
            "auth_method=anonymous",
            "tunnel_mode=v6udpv4",
            "client_v4=192.0.2.77",
        ],
    );
    let out = c
        .run(TSPC, &["-f", decoy.to_str().unwrap(), "--dry-run"])
        .unwrap()
        .check()
        .unwrap();
    let decoy_v6 = client_v6(&out.stdout);

    let conf_c = client_conf(
        &lab,
        "c",
        &[
            "server=192.0.2.1",
            "auth_method=anonymous",
            "tunnel_mode=v6udpv4",
            "keepalive_interval=1",
            "retry_delay=1",
            "retry_delay_max=2",
        ],
    );
    let client = c.spawn(TSPC, &["-f", conf_c.to_str().unwrap()]).unwrap();
    wait_line(&client, 0, 10 * SEC, "(up)", |l| l.contains("(up)"));
    let out = client.output();
    assert_eq!(field(&out, "mode:").as_deref(), Some("v6udpv4"), "{out}");
    assert!(
        field(&out, "keepalive:").is_some_and(|k| k.starts_with("every 1 s")),
        "{out}"
    );
    let first = client_v6(&out);
    assert_ne!(first, decoy_v6, "the decoy and the client got the same address");
    assert!(c.ping(BROKER_V6, 2, 2), "no ping through the first tunnel");
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(
        saved.contains(&format!("{first}/128")),
        "the state file lacks {first}:\n{saved}"
    );

    // SIGKILL: no goodbye of any kind; the broker's TUN device goes with it.
    let mark = client.mark();
    let killed = Instant::now();
    broker.kill();
    assert!(
        wait_for(2 * SEC, || !b.link_exists("tspb0")).is_some(),
        "the dead broker's TUN device is still there"
    );
    let down = wait_line(&client, mark, 15 * SEC, "a \"down:\" line", |l| l.contains("down:"));
    let detected = killed.elapsed();
    assert!(
        down.contains("keepalive"),
        "the tunnel went down for another reason: {down}"
    );
    assert!(client.status().is_none(), "tspc exited:\n{}", client.output());

    // The same broker again, same config and state file.
    let mark = client.mark();
    let restarted = Instant::now();
    let broker = start_broker(&b, &conf);
    wait_line(&client, mark, 20 * SEC, "(up) after the restart", |l| {
        l.contains("(up)")
    });
    let back = restarted.elapsed();
    let again = client_v6(&output_since(&client, mark));
    assert_eq!(again, first, "the client's address changed across the broker's restart");
    let ping = c.ping_until(BROKER_V6, 5 * SEC);
    assert!(ping.is_some(), "no ping through the tunnel after the broker's restart");
    assert!(
        broker.output().contains(&format!("client_v6={first}")),
        "the restarted broker did not log the offer of {first}:\n{}",
        broker.output()
    );
    let failures = output_since(&client, mark).matches("negotiation failed").count();
    println!(
        "broker_restart_keeps_address: keepalive loss reported {detected:.1?} after SIGKILL ({down:?}); \
         tunnel up again {back:.1?} after the restart ({failures} failed attempts while the broker was away), \
         first ping after {:.1?}; address {first} kept (decoy {decoy_v6})",
        ping.unwrap()
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Lossy control traffic

/// `nft <args>` in `host`.
fn nft(host: &Host, args: &[&str]) -> String {
    host.run("nft", args).unwrap().check().unwrap().stdout
}

/// (packets counted, packets dropped) by the two rules of the loss chain.
fn loss_counters(b: &Host) -> (u64, u64) {
    let text = nft(b, &["list", "chain", "inet", "tsploss", "input"]);
    let packets = |l: &str| -> Option<u64> {
        let mut w = l.split_whitespace();
        w.find(|w| *w == "packets")?;
        w.next()?.parse().ok()
    };
    let seen = text.lines().filter(|l| !l.contains("drop")).find_map(packets);
    let dropped = text.lines().filter(|l| l.contains("drop")).find_map(packets);
    match (seen, dropped) {
        (Some(s), Some(d)) => (s, d),
        _ => panic!("no counters in the loss chain:\n{text}"),
    }
}

/// 30% of the TSP control datagrams reaching the broker are dropped (nftables, random); five
/// tspc runs in a row must each get their tunnel, the RUDP engine retransmitting what is lost.
///
/// Full tunnels rather than `--dry-run`: the RUDP engine gives up on the first message after
/// three unanswered tries (gogoc's "no listener" rule, `RttParams::max_tries_no_peer`), so
/// three lost VERSIONs in a row (0.3³ ≈ 2.7% of the runs) end one negotiation; tspc's
/// supervisor then negotiates again at once, and the test reports it.
#[test]
fn negotiation_survives_30pct_control_loss() {
    if !netns::require_root() {
        return;
    }
    let (lab, c, b, _) = pair("negotiation_survives_30pct_control_loss", false);
    // The high nibble 0xF of the first payload byte (bits 64..68 of the transport header)
    // marks TSP control; tunnelled IPv6 starts with 6 and is not touched.
    nft(&b, &["add", "table", "inet", "tsploss"]);
    nft(
        &b,
        &[
            "add",
            "chain",
            "inet",
            "tsploss",
            "input",
            "{ type filter hook input priority 0; policy accept; }",
        ],
    );
    let control = [
        "add", "rule", "inet", "tsploss", "input", "udp", "dport", "3653", "@th,64,4", "==", "15",
    ];
    nft(&b, &[&control[..], &["counter"]].concat());
    nft(
        &b,
        &[
            &control[..],
            &["numgen", "random", "mod", "10", "<", "3", "counter", "drop"],
        ]
        .concat(),
    );
    let conf = lab.file("broker.toml", &broker_toml("")).unwrap();
    let _broker = start_broker(&b, &conf);

    let conf_c = client_conf(
        &lab,
        "c",
        &[
            "server=192.0.2.1",
            "auth_method=anonymous",
            "tunnel_mode=v6udpv4",
            "retry_delay=1",
            "retry_delay_max=2",
        ],
    );
    let mut report = Vec::new();
    for run in 1..=5 {
        let start = Instant::now();
        let client = c.spawn(TSPC, &["-f", conf_c.to_str().unwrap()]).unwrap();
        wait_line(&client, 0, 40 * SEC, &format!("(up) in run {run}"), |l| {
            l.contains("(up)")
        });
        let took = start.elapsed();
        let out = client.output();
        assert_eq!(field(&out, "mode:").as_deref(), Some("v6udpv4"), "run {run}:\n{out}");
        assert!(c.ping(BROKER_V6, 1, 2), "run {run}: no ping through the tunnel");
        client.signal(Signal::Term).unwrap();
        assert!(client.wait_exit(5 * SEC).is_some(), "run {run}: tspc ignored SIGTERM");
        // A negotiation that gave up (three lost VERSIONs: gogoc's no-peer limit) is retried
        // at once by the supervisor; count those too.
        let retried: Vec<&str> = out.lines().filter(|l| l.contains("negotiation failed")).collect();
        for line in &retried {
            println!("negotiation_survives_30pct_control_loss: run {run} retried: {line}");
        }
        let note = if retried.is_empty() {
            String::new()
        } else {
            format!(" ({} retried)", retried.len())
        };
        report.push(format!("{took:.1?}{note}"));
    }
    let (seen, dropped) = loss_counters(&b);
    println!(
        "negotiation_survives_30pct_control_loss: up after {} (5 runs); the broker's host dropped {dropped} of {seen} \
         control datagrams ({:.0}%)",
        report.join(", "),
        100.0 * dropped as f64 / seen.max(1) as f64
    );
    assert!(
        dropped > 0,
        "the loss rule dropped nothing: it does not match TSP control datagrams"
    );
    assert!(dropped < seen, "the loss rule dropped everything ({dropped} of {seen})");
}

// ---------------------------------------------------------------------------------------------
// 3. A hostile broker's datapath

const HOSTILE_SERVER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const HOSTILE_SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 1);
const HOSTILE_CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 2);
/// Identifier of the scripted broker's own echo requests (tspc's keepalive uses its pid).
const HOSTILE_ECHO_ID: u16 = 0x7e57;

fn hostile_offer() -> Offer {
    Offer {
        mode: TunnelMode::V6UdpV4,
        lifetime: Some(604_800),
        server_v4: HOSTILE_SERVER_V4,
        server_v6: HOSTILE_SERVER_V6,
        client_v4: Ipv4Addr::new(192, 0, 2, 2),
        client_v6: HOSTILE_CLIENT_V6,
        client_dns_name: None,
        client_dns_server: None,
        prefix: None,
        keepalive: Some(xml::Keepalive {
            interval: 1,
            address: IpAddr::V6(HOSTILE_SERVER_V6),
        }),
    }
}

/// What the scripted broker saw and did.
#[derive(Debug, Default)]
struct HostileState {
    /// The client's endpoint, once it accepted the offer.
    accepted: Option<SocketAddr>,
    /// Control messages received (first line of each, deduplicated retransmissions excluded).
    control: Vec<String>,
    keepalives_answered: u32,
    /// Datagrams of the garbage burst that were sent.
    garbage_sent: usize,
    /// Our echo requests answered: (sequence, source, time since the first request).
    echo_replies: Vec<(u16, IpAddr, Duration)>,
}

enum Cmd {
    Garbage,
    Ping(u16),
}

/// A scripted v6udpv4 "broker": a thread in the broker's namespace with a plain UDP socket.
struct Hostile {
    state: Arc<Mutex<HostileState>>,
    cmds: Option<mpsc::Sender<Cmd>>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Hostile {
    /// Starts the thread in `b`'s network namespace and waits until its socket is bound.
    fn start(b: &Host) -> Hostile {
        let state = Arc::new(Mutex::new(HostileState::default()));
        let (cmd_tx, cmd_rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let ns = Path::new(netns::NETNS_DIR).join(b.ns());
        let st = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name("hostile-broker".into())
            .spawn(move || {
                let sock = (|| -> Result<UdpSocket, String> {
                    let f = File::open(&ns).map_err(|e| format!("{}: {e}", ns.display()))?;
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
                    let sock = UdpSocket::bind((HOSTILE_SERVER_V4, 3653)).map_err(|e| format!("bind: {e}"))?;
                    sock.set_read_timeout(Some(Duration::from_millis(20)))
                        .map_err(|e| e.to_string())?;
                    Ok(sock)
                })();
                let sock = match sock {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.clone()));
                        return Err(e);
                    }
                };
                hostile_loop(&sock, &st, &cmd_rx)
            })
            .unwrap();
        match ready_rx.recv_timeout(5 * SEC) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("scripted broker: {e}"),
            Err(e) => panic!("scripted broker did not start: {e}"),
        }
        Hostile {
            state,
            cmds: Some(cmd_tx),
            thread: Some(thread),
        }
    }

    fn state(&self) -> MutexGuard<'_, HostileState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, cmd: Cmd) {
        self.cmds
            .as_ref()
            .unwrap()
            .send(cmd)
            .expect("the scripted broker's thread is gone");
    }

    /// Stops the thread and returns what it ended with.
    fn stop(mut self) -> Result<(), String> {
        self.cmds = None;
        self.thread
            .take()
            .unwrap()
            .join()
            .unwrap_or_else(|_| Err("the scripted broker panicked".into()))
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.cmds = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The reply of a correct anonymous broker to one client control message.
fn script_reply(payload: &[u8], st: &mut HostileState, from: SocketAddr) -> Vec<u8> {
    let text = String::from_utf8_lossy(payload);
    st.control.push(text.lines().next().unwrap_or("").to_string());
    if payload.starts_with(b"VERSION") {
        b"CAPABILITY TUNNEL=V6UDPV4 AUTH=ANONYMOUS\r\n".to_vec()
    } else if payload.starts_with(b"AUTHENTICATE") {
        frame::status_line(StatusCode::Success)
    } else if text.contains("action=\"create\"") {
        frame::frame_reply(StatusCode::Success, &xml::build_info(&hostile_offer()))
    } else {
        if text.contains("action=\"accept\"") {
            st.accepted = Some(from);
        }
        Vec::new()
    }
}

fn hostile_loop(sock: &UdpSocket, state: &Mutex<HostileState>, cmds: &mpsc::Receiver<Cmd>) -> Result<(), String> {
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    let mut buf = vec![0u8; 70_000];
    // The last control message answered: (from, sequence, the datagram sent back).
    let mut last: Option<(SocketAddr, u32, Vec<u8>)> = None;
    // Our echo request in flight: (sequence, when to send it again, first sent).
    let mut ping: Option<(u16, Instant, Instant)> = None;
    let mut out = Vec::new();
    loop {
        let client = lock().accepted;
        match cmds.try_recv() {
            Ok(Cmd::Garbage) => {
                let to = client.ok_or("garbage asked for before the accept")?;
                let mut sent = 0;
                for dgram in garbage() {
                    if sock.send_to(&dgram, to).is_ok() {
                        sent += 1;
                    }
                    // Paced, so that the client reads every datagram rather than its socket
                    // buffer overflowing with the 60 000-byte ones.
                    std::thread::sleep(Duration::from_millis(1));
                }
                lock().garbage_sent = sent;
            }
            Ok(Cmd::Ping(seq)) => ping = Some((seq, Instant::now(), Instant::now())),
            Err(mpsc::TryRecvError::Empty) => {}
            Err(mpsc::TryRecvError::Disconnected) => return Ok(()),
        }
        if let (Some((seq, next, first)), Some(to)) = (ping, client)
            && Instant::now() >= next
        {
            icmp::echo_request_v6(
                HOSTILE_SERVER_V6,
                HOSTILE_CLIENT_V6,
                HOSTILE_ECHO_ID,
                seq,
                b"hostile",
                &mut out,
            );
            sock.send_to(&out, to)
                .map_err(|e| format!("send the echo request: {e}"))?;
            ping = Some((seq, Instant::now() + Duration::from_millis(250), first));
        }
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(e) => return Err(format!("recv: {e}")),
        };
        let dgram = &buf[..n];
        if rudp::is_control(dgram) {
            let Some((hdr, payload)) = Header::decode(dgram) else {
                continue;
            };
            // A retransmission gets the same answer again.
            if let Some((f, seq, reply)) = &last
                && *f == from
                && *seq == hdr.seq
            {
                sock.send_to(reply, from).map_err(|e| format!("send: {e}"))?;
                continue;
            }
            let mut reply = dgram[..rudp::HEADER_LEN].to_vec();
            reply.extend_from_slice(&script_reply(payload, &mut lock(), from));
            sock.send_to(&reply, from).map_err(|e| format!("send: {e}"))?;
            last = Some((from, hdr.seq, reply));
        } else if let Some(req) = icmp::parse_echo_request(dgram) {
            if req.dst == IpAddr::V6(HOSTILE_SERVER_V6) && icmp::echo_reply_for(dgram, &mut out) {
                sock.send_to(&out, from)
                    .map_err(|e| format!("send the keepalive reply: {e}"))?;
                lock().keepalives_answered += 1;
            }
        } else if let Some(reply) = icmp::parse_echo_reply(dgram)
            && reply.id == HOSTILE_ECHO_ID
            && let Some((seq, _, first)) = ping
            && reply.seq == seq
        {
            lock().echo_replies.push((reply.seq, reply.src, first.elapsed()));
            ping = None;
        }
    }
}

/// The burst a hostile broker sends down the tunnel after the accept.
fn garbage() -> Vec<Vec<u8>> {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let mut random = |len: usize, first: u8| {
        let mut p = vec![0u8; len];
        rng.fill(&mut p[..]);
        if let Some(b) = p.first_mut() {
            *b = first;
        }
        p
    };
    let mut out = Vec::new();
    // IPv6-looking, but the payload length disagrees with the datagram.
    for len in [40, 41, 100, 600, 1280, 1400, 1472] {
        let mut p = random(len, 0x60);
        let wrong = (len as u16).wrapping_sub(40).wrapping_add(1 + (len as u16 % 7));
        p[4..6].copy_from_slice(&wrong.to_be_bytes());
        out.push(p);
    }
    out.push(random(39, 0x60)); // shorter than an IPv6 header
    out.push(vec![0x60]);
    // Not IPv6 at all: other versions, an IPv4 header, ASCII.
    for first in [0x00, 0x10, 0x20, 0x45, 0x4f, 0x50, 0x70, 0x80, 0x9c, 0xa0, 0xe5] {
        out.push(random(100 + usize::from(first), first));
    }
    out.push(b"GET / HTTP/1.0\r\n\r\n".to_vec());
    // Zero-length datagrams.
    out.extend(std::iter::repeat_n(Vec::new(), 10));
    // 60 000-byte datagrams: random IPv6-looking, non-IPv6, and one well-formed IPv6 packet
    // (no next header) to the client's own address, far above the tunnel's MTU.
    for _ in 0..3 {
        out.push(random(60_000, 0x60));
    }
    out.push(random(60_000, 0x00));
    let mut big = vec![0u8; 60_000];
    big[0] = 0x60;
    big[4..6].copy_from_slice(&(60_000u16 - 40).to_be_bytes());
    big[6] = 59;
    big[7] = 64;
    big[8..24].copy_from_slice(&HOSTILE_SERVER_V6.octets());
    big[24..40].copy_from_slice(&HOSTILE_CLIENT_V6.octets());
    out.push(big);
    // Control-looking: 0xF… noise, a bare RUDP header, stray replies with made-up sequences.
    for len in [1, 7, 8, 9, 100, 1400] {
        out.push(random(len, 0xf0));
    }
    out.push(vec![0xff; 64]);
    let hdr = |seq: u32| Header { seq, timestamp: 0 };
    out.push(rudp::datagram(hdr(0x0abc_def0), &[]));
    out.push(rudp::datagram(hdr(0xf1), &frame::status_line(StatusCode::Success)));
    let mut other = hostile_offer();
    other.client_v6 = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 2);
    out.push(rudp::datagram(
        hdr(0xf3),
        &frame::frame_reply(StatusCode::Success, &xml::build_info(&other)),
    ));
    // More of everything, in random order and sizes.
    for _ in 0..100 {
        let len = rng.gen_range(0..1500);
        let first = rng.r#gen::<u8>();
        let mut p = vec![0u8; len];
        rng.fill(&mut p[..]);
        if let Some(b) = p.first_mut() {
            *b = first;
        }
        out.push(p);
    }
    out
}

/// (packets, bytes) the TUN device `ifname` received, i.e. that tspc wrote into the kernel.
fn tun_rx(c: &Host, ifname: &str) -> (u64, u64) {
    let text = c.ip(&["-s", "link", "show", "dev", ifname]).unwrap();
    let mut lines = text.lines().skip_while(|l| !l.trim_start().starts_with("RX:"));
    let nums: Vec<u64> = lines
        .nth(1)
        .map(|l| l.split_whitespace().filter_map(|w| w.parse().ok()).collect())
        .unwrap_or_default();
    match nums[..] {
        [bytes, packets, ..] => (packets, bytes),
        _ => panic!("no RX statistics in:\n{text}"),
    }
}

/// A scripted broker negotiates correctly, then floods the tunnel with garbage: tspc must
/// stay up (process, TUN device, no reconnection) and still deliver a valid IPv6 packet to its
/// kernel and the kernel's answer back.
#[test]
fn hostile_broker_datapath_does_not_wedge_the_client() {
    if !netns::require_root() {
        return;
    }
    let (lab, c, b, _) = pair("hostile_broker_datapath", false);
    let hostile = Hostile::start(&b);
    let conf = client_conf(
        &lab,
        "c",
        &[
            "server=192.0.2.1",
            "auth_method=anonymous",
            "tunnel_mode=v6udpv4",
            "retry_delay=1",
            "retry_delay_max=2",
        ],
    );
    let client = c.spawn(TSPC, &["-f", conf.to_str().unwrap()]).unwrap();
    wait_line(&client, 0, 10 * SEC, "(up)", |l| l.contains("(up)"));
    let out = client.output();
    assert_eq!(client_v6(&out), HOSTILE_CLIENT_V6.to_string(), "{out}");
    assert!(
        hostile.state().accepted.is_some(),
        "tspc is up but the scripted broker saw no accept"
    );
    // The keepalive (every second) reaches the scripted broker and is answered.
    assert!(
        wait_for(5 * SEC, || hostile.state().keepalives_answered >= 1).is_some(),
        "no keepalive from tspc within 5 s"
    );

    let mark = client.mark();
    hostile.send(Cmd::Garbage);
    assert!(
        wait_for(5 * SEC, || hostile.state().garbage_sent > 0).is_some(),
        "the garbage was not sent"
    );
    let garbage = hostile.state().garbage_sent;
    let keepalives = hostile.state().keepalives_answered;

    // One valid packet after the garbage: an echo request to the client's tunnel address,
    // answered by the client's kernel and carried back by tspc.
    hostile.send(Cmd::Ping(1));
    let answered = wait_for(5 * SEC, || !hostile.state().echo_replies.is_empty());
    let replies = hostile.state().echo_replies.clone();
    assert!(
        answered.is_some(),
        "no echo reply from the client's kernel after the garbage"
    );
    let (seq, src, rtt) = replies[0];
    assert_eq!((seq, src), (1, IpAddr::V6(HOSTILE_CLIENT_V6)), "{replies:?}");
    // The keepalive still works after the burst.
    assert!(
        wait_for(3 * SEC, || hostile.state().keepalives_answered > keepalives).is_some(),
        "tspc's keepalive stopped after the garbage"
    );

    assert!(client.status().is_none(), "tspc exited:\n{}", client.output());
    assert!(c.link_exists("tun"), "the TUN device is gone");
    assert!(
        c.addrs("tun").unwrap().contains(&format!("{HOSTILE_CLIENT_V6}/128")),
        "the tunnel address is gone: {:?}",
        c.addrs("tun")
    );
    // tspc's validation: of the whole burst, only well-formed IPv6 reached the kernel (the
    // 60 000-byte packet, perhaps, and our echo request); keepalive replies are swallowed.
    let (rx_packets, rx_bytes) = tun_rx(&c, "tun");
    assert!(
        rx_packets <= 2,
        "{rx_packets} packets of the burst reached the client's kernel"
    );
    let after = output_since(&client, mark);
    assert!(!after.contains("down:"), "the tunnel went down:\n{after}");
    assert_eq!(up_lines(&client.output()), 1, "tspc reconnected:\n{}", client.output());
    let control = hostile.state().control.clone();
    println!(
        "hostile_broker_datapath_does_not_wedge_the_client: {garbage} garbage datagrams; tspc stayed up, \
         the echo after them answered in {rtt:.1?}; {} keepalives answered; the TUN device received \
         {rx_packets} packets ({rx_bytes} bytes); control messages {control:?}",
        hostile.state().keepalives_answered
    );
    client.signal(Signal::Term).unwrap();
    assert!(client.wait_exit(5 * SEC).is_some(), "tspc ignored SIGTERM");
    hostile.stop().unwrap();
}

// ---------------------------------------------------------------------------------------------
// 4. Teardown

/// The client's links, addresses and routes as text, one item a line.
fn snapshot(c: &Host) -> Vec<String> {
    let mut lines = Vec::new();
    for args in [&["-o", "link"][..], &["-o", "addr"], &["-6", "route"], &["-4", "route"]] {
        let text = c.ip(args).unwrap();
        lines.extend(text.lines().map(|l| {
            format!(
                "{}: {}",
                args.join(" "),
                l.split_whitespace().collect::<Vec<_>>().join(" ")
            )
        }));
    }
    lines
}

/// Waits (≤ 5 s) until the veth has settled: operstate UP and its link-local address out of
/// DAD. Both happen asynchronously after `link set up` and would otherwise show up as changes
/// that have nothing to do with the tunnel.
fn settle(c: &Host, ifname: &str) {
    let settled = wait_for(5 * SEC, || {
        let link = c.ip(&["-o", "link", "show", "dev", ifname]).unwrap_or_default();
        let ll = c
            .ip(&["-o", "-6", "addr", "show", "dev", ifname, "scope", "link"])
            .unwrap_or_default();
        link.contains("state UP") && ll.contains("fe80") && !ll.contains("tentative")
    });
    if settled.is_none() {
        eprintln!("{ifname} did not settle within 5 s");
    }
}

fn teardown_case(mode: &str, server: &str, ifname: &str, target: &str) -> String {
    let (lab, c, b, c_if) = pair(&format!("teardown_{mode}"), true);
    let conf = lab.file("broker.toml", &broker_toml("")).unwrap();
    let _broker = start_broker(&b, &conf);
    settle(&c, &c_if);
    let before = snapshot(&c);
    let conf_c = client_conf(
        &lab,
        "c",
        &[
            &format!("server={server}"),
            "auth_method=anonymous",
            &format!("tunnel_mode={mode}"),
        ],
    );
    let start = Instant::now();
    let client = c.spawn(TSPC, &["-f", conf_c.to_str().unwrap()]).unwrap();
    wait_line(&client, 0, 10 * SEC, "(up)", |l| l.contains("(up)"));
    let up = start.elapsed();
    let out = client.output();
    assert_eq!(field(&out, "mode:").as_deref(), Some(mode), "{out}");
    assert!(c.link_exists(ifname), "{mode}: no {ifname}");
    let during = snapshot(&c);
    let added: Vec<&String> = during.iter().filter(|l| !before.contains(l)).collect();
    assert!(
        added.iter().any(|l| l.contains(ifname)) && added.iter().any(|l| l.contains("route") && l.contains(ifname)),
        "{mode}: the snapshot does not show the tunnel: {added:#?}"
    );
    assert!(c.ping(target, 3, 2), "{mode}: no ping through the tunnel to {target}");

    let stop = Instant::now();
    client.signal(Signal::Term).unwrap();
    assert!(client.wait_exit(5 * SEC).is_some(), "{mode}: tspc ignored SIGTERM");
    let exited = stop.elapsed();
    assert!(
        client.output().contains(&format!("tunnel {ifname} down: stopped")),
        "{}",
        client.output()
    );
    // The device goes with tspc's descriptor; allow the kernel a moment to finish with it.
    let mut after = snapshot(&c);
    if after != before {
        wait_for(2 * SEC, || {
            after = snapshot(&c);
            after == before
        });
    }
    let gone: Vec<&String> = before.iter().filter(|l| !after.contains(l)).collect();
    let left: Vec<&String> = after.iter().filter(|l| !before.contains(l)).collect();
    assert!(
        gone.is_empty() && left.is_empty(),
        "{mode}: left behind: {left:#?}\nremoved: {gone:#?}"
    );
    assert!(!c.link_exists(ifname), "{mode}: {ifname} left behind");
    format!(
        "{mode}: up in {up:.1?}, {} lines added while up, gone {exited:.1?} after SIGTERM",
        added.len()
    )
}

/// For each mode: tunnel up, a ping through it, SIGTERM; the client's links, addresses and
/// routes are then exactly what they were before tspc started.
#[test]
fn teardown_leaves_nothing() {
    if !netns::require_root() {
        return;
    }
    let cases = [
        ("v6udpv4", "192.0.2.1", "tun", BROKER_V6),
        ("v6v4", "192.0.2.1", "sit1", BROKER_V6),
        ("v4v6", "[2001:db8:1::1]", "tsp-v4v6", "198.51.100.1"),
    ];
    let results: Vec<Result<String, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|&(mode, server, ifname, target)| s.spawn(move || teardown_case(mode, server, ifname, target)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().map_err(|p| {
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panicked".into())
                })
            })
            .collect()
    });
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    for r in results.iter().flatten() {
        println!("teardown_leaves_nothing: {r}");
    }
    assert!(
        failures.is_empty(),
        "teardown failed:\n{}",
        failures.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n\n")
    );
}
