//! Wall time of whole negotiations over real loopback sockets: the bundled broker runs
//! in-process on 127.0.0.1 and `tsp_client::net::negotiate` talks to it, N times per case, for
//! {ANONYMOUS, DIGEST-MD5} × {UDP, TCP}. Prints median, p90 and min per case.
//!
//! Run with `cargo bench --bench loopback` (N defaults to 50; `LOOPBACK_N` overrides it).
//! Without `--bench` among the arguments (as `cargo test --benches` runs it) it exits at once.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tsp_broker::accounts::Accounts;
use tsp_broker::config::BrokerConfig;
use tsp_broker::{Broker, serve};
use tsp_client::net::hostkeys::{KnownHostsFile, TrustMode};
use tsp_client::net::{NegotiateOptions, negotiate};
use tsp_proto::client::Transport;
use tsp_proto::sasl::Mechanism;
use tsp_proto::secret::Secret;
use tsp_proto::types::{AuthMethod, TunnelMode};

const REALM: &str = "bench-realm";
const USER: &str = "user1";
const PASSWORD: &str = "pass1";
const DEFAULT_N: usize = 50;
const WARM_UP: usize = 3;

/// Starts the bundled broker on 127.0.0.1 (any port), as `tsp-broker` would from `extra`.
async fn start_broker(extra: &str) -> (serve::Running, SocketAddr) {
    // The accounts file path is only checked for presence: accounts come from `Accounts::parse`.
    let toml = format!(
        "listen = [\"127.0.0.1:0\"]\ndatapath = false\nrealm = \"{REALM}\"\naccounts_file = \"/nonexistent/accounts\"\nauth = [\"anonymous\", \"digest-md5\"]\n{extra}\n"
    );
    let cfg = Arc::new(BrokerConfig::parse(&toml, Path::new("bench.toml")).expect("broker config"));
    let line = Accounts::line(USER, REALM, &Secret::new(PASSWORD)).expect("account line");
    let accounts = Accounts::parse(&line, REALM, "<bench>").expect("accounts");
    let protocol = Broker::server_config(&cfg, None);
    let shared = serve::Shared::new(Broker::new(cfg.clone(), accounts), protocol);
    let running = serve::start(shared, &cfg).await.expect("broker listens");
    let addr = running
        .tcp
        .first()
        .or(running.udp.first())
        .copied()
        .expect("a listener");
    (running, addr)
}

struct Case {
    name: &'static str,
    method: AuthMethod,
    mechanism: Mechanism,
    transport: Transport,
}

const CASES: &[Case] = &[
    Case {
        name: "anonymous  / UDP",
        method: AuthMethod::Anonymous,
        mechanism: Mechanism::Anonymous,
        transport: Transport::Udp,
    },
    Case {
        name: "DIGEST-MD5 / UDP",
        method: AuthMethod::DigestMd5,
        mechanism: Mechanism::DigestMd5,
        transport: Transport::Udp,
    },
    Case {
        name: "anonymous  / TCP",
        method: AuthMethod::Anonymous,
        mechanism: Mechanism::Anonymous,
        transport: Transport::Tcp,
    },
    Case {
        name: "DIGEST-MD5 / TCP",
        method: AuthMethod::DigestMd5,
        mechanism: Mechanism::DigestMd5,
        transport: Transport::Tcp,
    },
];

fn options(case: &Case) -> NegotiateOptions {
    // UDP: v6udpv4 can only ride on UDP, so the client never races TCP.
    // TCP: the broker has no UDP listener; v6v4 may use TCP, and with a zero race delay TCP
    // starts at once instead of after 300 ms of UDP silence.
    let mode = match case.transport {
        Transport::Udp => TunnelMode::V6UdpV4,
        Transport::Tcp => TunnelMode::V6V4,
    };
    // No PASSDSS here: the host-key policy is never consulted.
    let keys = std::env::temp_dir().join("nm-tsp-bench-unused-keys.pub");
    let mut o = NegotiateOptions::new(mode, Arc::new(KnownHostsFile::new(keys, TrustMode::Refuse)));
    o.auth_method = case.method;
    o.username = USER.to_owned();
    o.password = Secret::new(PASSWORD);
    o.tcp_race_delay = Duration::ZERO;
    o.reply_timeout = Duration::from_secs(3);
    o.connect_timeout = Duration::from_secs(3);
    o
}

struct Stats {
    median: Duration,
    p90: Duration,
    min: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort_unstable();
    let n = samples.len();
    let median = if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2
    };
    // Nearest-rank 90th percentile.
    let p90 = samples[(n * 9).div_ceil(10).max(1) - 1];
    Stats {
        median,
        p90,
        min: samples[0],
    }
}

async fn measure(case: &Case, server: &str, n: usize) -> Stats {
    let opts = options(case);
    let mut samples = Vec::with_capacity(n);
    for i in 0..WARM_UP + n {
        let t0 = Instant::now();
        let est = negotiate(server, &opts)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let took = t0.elapsed();
        assert_eq!(est.conn.transport(), case.transport, "{}", case.name);
        assert_eq!(est.negotiated.mechanism, case.mechanism, "{}", case.name);
        // Dropping the connection (outside the timing) ends the broker's session.
        drop(est);
        if i >= WARM_UP {
            samples.push(took);
        }
    }
    stats(samples)
}

/// What `tokio::time::sleep(Duration::ZERO)` costs here: the TCP rows pay it once.
fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

async fn run(n: usize) {
    let started = Instant::now();
    // One broker per transport: both listeners for UDP (UDP answers first), TCP only for TCP.
    let (_udp_broker, udp_addr) = start_broker("").await;
    let (_tcp_broker, tcp_addr) = start_broker("udp = false").await;

    println!("loopback negotiation, {n} runs per case after {WARM_UP} warm-up runs (TSP 2.0.2, 127.0.0.1)");
    println!();
    println!("{:<18} {:>12} {:>12} {:>12}", "case", "median µs", "p90 µs", "min µs");
    println!("{}", "-".repeat(57));
    for case in CASES {
        let server = match case.transport {
            Transport::Udp => udp_addr.to_string(),
            Transport::Tcp => tcp_addr.to_string(),
        };
        let s = measure(case, &server, n).await;
        println!(
            "{:<18} {:>12} {:>12} {:>12}",
            case.name,
            us(s.median),
            us(s.p90),
            us(s.min)
        );
    }
    println!();
    println!("UDP: client mode v6udpv4 (RUDP, no TCP race). TCP: broker with udp = false, client mode");
    println!("v6v4 with tcp_race_delay = 0 (a UDP attempt still starts and is refused by ICMP).");
    println!("DIGEST-MD5 over TCP includes the broker's deliberate 50 ms pause between the rspauth");
    println!("reply and `200 Success` (REPLY_GAP in crates/tsp-broker/src/serve.rs): gogoc reads each reply with");
    println!("one recv() and would block on a coalesced pair. Over UDP each reply is its own datagram.");
    println!();
    println!("total wall time: {:.2} s", started.elapsed().as_secs_f64());
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --benches` runs bench binaries without `--bench`: nothing to do there.
        println!("loopback: skipped (run it with `cargo bench --bench loopback`)");
        return;
    }
    let n = std::env::var("LOOPBACK_N")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_N);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run(n));
}
