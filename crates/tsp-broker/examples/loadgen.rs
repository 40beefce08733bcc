//! Load generator for `benches/load.sh`: many anonymous v6udpv4 clients, each from its own
//! source address, negotiate with a running `tsp-broker` over real UDP (tsp-proto's client
//! session and RUDP engine, as tspc does) until the broker holds 1k, 10k, 100k live tunnels.
//! For each step it prints negotiations/s, p50/p95 latency, the broker's RSS per 1,000 sessions
//! (above its RSS at 0 sessions) and its CPU (utime+stime over the step ÷ wall time).
//!
//! Not a shipped program: an example of the tsp-broker crate, built by benches/load.sh, which
//! sets up the namespaces (the source addresses are AnyIP: a local route for 10.0.0.0/8 on lo).
//!
//! Usage: loadgen --server 192.0.2.1:3653 --broker-pid PID [--steps 1000,10000,100000]
//!        [--concurrency 64] [--first 10.0.0.1] [--keepalive 3600] [--step-limit 300]

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::time::timeout_at;
use tsp_proto::client::{ClientParams, ClientSession, Outcome, Step, Transport};
use tsp_proto::rudp::{RttParams, RudpClient};
use tsp_proto::secret::Secret;
use tsp_proto::types::{AuthMethod, TunnelMode, Version};
use tsp_proto::xml::CreateRequest;

struct Args {
    server: SocketAddr,
    broker_pid: u32,
    steps: Vec<usize>,
    concurrency: usize,
    first: Ipv4Addr,
    keepalive: u32,
    step_limit: Duration,
}

fn usage(why: &str) -> ! {
    eprintln!("loadgen: {why}");
    eprintln!(
        "usage: loadgen --server ADDR:PORT --broker-pid PID [--steps 1000,10000,100000] [--concurrency 64] \
         [--first 10.0.0.1] [--keepalive 3600] [--step-limit 300]"
    );
    std::process::exit(2)
}

fn value<T: std::str::FromStr>(flag: &str, v: &str) -> T {
    v.trim()
        .parse()
        .unwrap_or_else(|_| usage(&format!("bad value for {flag}: {v:?}")))
}

fn parse_args() -> Args {
    let mut a = Args {
        server: SocketAddr::from(([192, 0, 2, 1], 3653)),
        broker_pid: 0,
        steps: vec![1_000, 10_000, 100_000],
        concurrency: 64,
        first: Ipv4Addr::new(10, 0, 0, 1),
        keepalive: 3600,
        step_limit: Duration::from_secs(300),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let Some(v) = it.next() else {
            usage(&format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--server" => a.server = value(&flag, &v),
            "--broker-pid" => a.broker_pid = value(&flag, &v),
            "--steps" => a.steps = v.split(',').map(|s| value(&flag, s)).collect(),
            "--concurrency" => a.concurrency = value::<usize>(&flag, &v).max(1),
            "--first" => a.first = value(&flag, &v),
            "--keepalive" => a.keepalive = value(&flag, &v),
            "--step-limit" => a.step_limit = Duration::from_secs(value(&flag, &v)),
            _ => usage(&format!("unknown argument {flag}")),
        }
    }
    if a.broker_pid == 0 {
        usage("--broker-pid is needed (its RSS and CPU are measured)");
    }
    a
}

/// The broker's resident set (VmRSS) in KiB.
fn rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time (utime + stime, all threads) of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let Some(rest) = text.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks: u64 = [11, 12].iter().filter_map(|&i| f.get(i)?.parse::<u64>().ok()).sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks as f64 / hz
}

/// One anonymous v6udpv4 negotiation from `source`, on a socket of its own; the tunnel's
/// keepalive interval is `keepalive` (the bench's broker allows a long one, so the tunnel
/// stays live without echoes).
async fn negotiate(server: SocketAddr, source: Ipv4Addr, keepalive: u32) -> Result<(), String> {
    let socket = UdpSocket::bind((source, 0))
        .await
        .map_err(|e| format!("bind {source}: {e}"))?;
    socket.connect(server).await.map_err(|e| format!("connect: {e}"))?;
    let mut session = ClientSession::new(ClientParams {
        version: Version::V2_0_2,
        transport: Transport::Udp,
        auth_method: AuthMethod::Anonymous,
        allow_plain: false,
        username: String::new(),
        password: Secret::new(""),
        server_name: server.ip().to_string(),
        request: CreateRequest {
            mode: TunnelMode::V6UdpV4,
            proxy: false,
            client_addr: IpAddr::V4(source),
            keepalive: Some(keepalive),
            router: None,
        },
        cnonce: String::new(),
    });
    let mut rudp = RudpClient::new(Instant::now(), RttParams::default());
    let mut buf = vec![0u8; 4096];
    let mut step = session.start().map_err(|e| e.to_string())?;
    loop {
        let msg = match step {
            Step::Send { bytes, .. } => bytes,
            // UDP asks for the next message with an empty "poll" datagram.
            Step::Receive { .. } => Vec::new(),
            Step::Done(Outcome::Tunnel(_)) => return Ok(()),
            Step::Done(Outcome::Redirect(_)) => return Err("redirected".into()),
            Step::CheckHostKey { .. } => return Err("host key asked for".into()),
        };
        let dgram = rudp.send(&msg, Instant::now());
        socket.send(&dgram).await.map_err(|e| format!("send: {e}"))?;
        let reply = loop {
            let deadline = rudp.deadline().unwrap_or_else(Instant::now);
            match timeout_at(deadline.into(), socket.recv(&mut buf)).await {
                Ok(Ok(n)) => {
                    if let Some(p) = rudp.on_datagram(&buf[..n], Instant::now()) {
                        break p.to_vec();
                    }
                }
                Ok(Err(e)) => return Err(format!("receive: {e}")),
                Err(_) => {
                    if let Some(again) = rudp.on_timeout(Instant::now()).map_err(|e| e.to_string())? {
                        socket.send(&again).await.map_err(|e| format!("send: {e}"))?;
                    }
                }
            }
        };
        step = session
            .on_reply(&reply, &mut rand::rngs::OsRng)
            .map_err(|e| e.to_string())?;
    }
}

/// What one step measured.
struct StepResult {
    live: usize,
    done: usize,
    failed: usize,
    wall: Duration,
    last_tenth_rate: f64,
    p50: Duration,
    p95: Duration,
    rss_kib: u64,
    cpu: f64,
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() * p).div_ceil(100)).clamp(1, sorted.len()) - 1]
}

/// Negotiates until `target` tunnels are live (or the step's time is up), `concurrency` at a
/// time; `next` is the index of the next source address.
async fn run_step(args: &Args, live: &mut usize, next: &mut u32, target: usize) -> StepResult {
    let start_live = *live;
    let cpu0 = cpu_secs(args.broker_pid);
    let t0 = Instant::now();
    let deadline = t0 + args.step_limit;
    let tenth_from = target - (target - start_live) / 10;
    let mut tenth_start: Option<(Instant, usize)> = None;
    let mut latencies = Vec::with_capacity(target - start_live);
    let mut failed = 0usize;
    let mut errors: Vec<String> = Vec::new();
    let mut inflight = tokio::task::JoinSet::new();
    let first = u32::from(args.first);
    let server = args.server;
    let keepalive = args.keepalive;
    loop {
        let wanted = target.saturating_sub(*live + inflight.len());
        let room = args.concurrency.saturating_sub(inflight.len());
        if Instant::now() < deadline {
            for _ in 0..wanted.min(room) {
                let source = Ipv4Addr::from(first.wrapping_add(*next));
                *next += 1;
                inflight.spawn_local(async move {
                    let t = Instant::now();
                    (negotiate(server, source, keepalive).await, t.elapsed())
                });
            }
        }
        let Some(joined) = inflight.join_next().await else {
            break;
        };
        match joined {
            Ok((Ok(()), took)) => {
                *live += 1;
                latencies.push(took);
                if *live == tenth_from {
                    tenth_start = Some((Instant::now(), *live));
                }
            }
            Ok((Err(e), _)) => {
                failed += 1;
                if errors.len() < 5 && !errors.contains(&e) {
                    errors.push(e);
                }
            }
            Err(e) => {
                failed += 1;
                errors.push(format!("task: {e}"));
            }
        }
    }
    let wall = t0.elapsed();
    let cpu = (cpu_secs(args.broker_pid) - cpu0) / wall.as_secs_f64();
    let last_tenth_rate = match tenth_start {
        Some((at, from)) if *live > from => (*live - from) as f64 / at.elapsed().as_secs_f64(),
        _ => f64::NAN,
    };
    for e in &errors {
        eprintln!("loadgen: failed negotiation: {e}");
    }
    latencies.sort_unstable();
    StepResult {
        live: *live,
        done: *live - start_live,
        failed,
        wall,
        last_tenth_rate,
        p50: percentile(&latencies, 50),
        p95: percentile(&latencies, 95),
        rss_kib: rss_kib(args.broker_pid),
        cpu,
    }
}

fn main() {
    let args = parse_args();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => usage(&format!("tokio runtime: {e}")),
    };
    // One thread: the generator shares the machine with the broker it measures.
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let rss0 = rss_kib(args.broker_pid);
        let me = std::process::id();
        println!(
            "broker pid {}, RSS at 0 sessions {:.1} MiB; {} clients at a time, one source address each",
            args.broker_pid,
            rss0 as f64 / 1024.0,
            args.concurrency
        );
        println!(
            "{:>8} {:>9} {:>9} {:>12} {:>9} {:>9} {:>12} {:>10} {:>8}",
            "live", "new", "failed", "neg/s", "last10%/s", "p50 ms", "p95 ms", "MiB/1000", "CPU"
        );
        let mut rows = VecDeque::new();
        let (mut live, mut next) = (0usize, 0u32);
        let gen_cpu0 = cpu_secs(me);
        let t0 = Instant::now();
        for &target in &args.steps {
            if target <= live {
                continue;
            }
            let r = run_step(&args, &mut live, &mut next, target).await;
            let per_1000 = (r.rss_kib.saturating_sub(rss0)) as f64 / 1024.0 / (r.live.max(1) as f64 / 1000.0);
            println!(
                "{:>8} {:>9} {:>9} {:>12.0} {:>9.0} {:>9.1} {:>12.1} {:>10.2} {:>7.0}%",
                r.live,
                r.done,
                r.failed,
                r.done as f64 / r.wall.as_secs_f64(),
                r.last_tenth_rate,
                r.p50.as_secs_f64() * 1e3,
                r.p95.as_secs_f64() * 1e3,
                per_1000,
                r.cpu * 100.0
            );
            let reached = r.live >= target;
            rows.push_back(r);
            if !reached {
                println!("step {target}: stopped at {live} live sessions (time limit or failures)");
                break;
            }
        }
        let gen_cpu = (cpu_secs(me) - gen_cpu0) / t0.elapsed().as_secs_f64();
        println!("load generator CPU: {:.0}% of a core", gen_cpu * 100.0);
        if rows
            .back()
            .is_none_or(|r| r.live < args.steps.last().copied().unwrap_or(0))
        {
            std::process::exit(1);
        }
    });
}
