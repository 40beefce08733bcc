//! Helpers shared by the loopback integration tests: a real `tsp-broker` (in-process, on
//! real sockets) and client options.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tsp_broker::accounts::Accounts;
use tsp_broker::config::BrokerConfig;
use tsp_broker::{Broker, serve};
use tsp_client::net::NegotiateOptions;
use tsp_client::net::hostkeys::{KnownHostsFile, TrustMode};
use tsp_proto::rudp::RttParams;
use tsp_proto::sasl::passdss::HostKeyPair;
use tsp_proto::secret::Secret;
use tsp_proto::types::{AuthMethod, TunnelMode};

pub const REALM: &str = "tsp-test";

/// Users every test broker knows.
pub const USERS: &[(&str, &str)] = &[("user1", "pass1"), ("alice", "wonder land"), ("bob", "b\"o\\b")];

/// One DSA key for all tests (generation is slow in debug builds).
pub fn host_key() -> HostKeyPair {
    static KEY: OnceLock<HostKeyPair> = OnceLock::new();
    KEY.get_or_init(|| HostKeyPair::generate(&mut rand::rngs::OsRng).expect("DSA key"))
        .clone()
}

pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nm-tsp-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A broker config (TOML text) with every mechanism, listening on `listen` (port 0 = any).
pub fn broker_toml(dir: &std::path::Path, listen: &str, extra: &str) -> String {
    let accounts = dir.join("accounts");
    let mut text = String::new();
    for (u, p) in USERS {
        text += &Accounts::line(u, REALM, &Secret::new(*p)).expect("account line");
    }
    std::fs::write(&accounts, text).expect("write accounts");
    format!(
        "listen = [\"{listen}\"]\ndatapath = false\nrealm = \"{REALM}\"\naccounts_file = \"{}\"\nauth = [\"anonymous\", \"plain\", \"digest-md5\", \"passdss-3des-1\"]\nhost_key_file = \"{}\"\n{extra}\n",
        accounts.display(),
        dir.join("unused-host-key").display()
    )
}

pub struct TestBroker {
    pub running: serve::Running,
    pub addr: SocketAddr,
    /// For a TCP-only broker: its port on UDP, held so no other test's UDP socket can take it
    /// and answer this broker's clients (TCP and UDP port numbers are separate spaces).
    _udp_hole: Option<std::net::UdpSocket>,
}

impl TestBroker {
    /// The server string a client configures.
    pub fn server(&self) -> String {
        self.addr.to_string()
    }
}

/// Starts a broker from TOML text; the host key is the shared test key.
pub async fn start_broker(toml: &str, key: Option<HostKeyPair>) -> TestBroker {
    let cfg = Arc::new(BrokerConfig::parse(toml, std::path::Path::new("test.toml")).expect("broker config"));
    let accounts = match &cfg.accounts_file {
        Some(p) => Accounts::load(p, &cfg.realm).expect("accounts"),
        None => Accounts::default(),
    };
    let protocol = Broker::server_config(&cfg, key.or_else(|| Some(host_key())));
    let shared = serve::Shared::new(Broker::new(cfg.clone(), accounts), protocol);
    let running = serve::start(shared, &cfg).await.expect("broker listens");
    let addr = running
        .tcp
        .first()
        .or(running.udp.first())
        .copied()
        .expect("a listener");
    // Silent, never read: datagrams to it vanish as behind a filtering firewall.
    let _udp_hole = if cfg.udp {
        None
    } else {
        std::net::UdpSocket::bind(addr).ok()
    };
    TestBroker {
        running,
        addr,
        _udp_hole,
    }
}

/// Client options with short timers so failing cases end quickly.
pub fn options(mode: TunnelMode, method: AuthMethod, user: &str, password: &str, keys: PathBuf) -> NegotiateOptions {
    let mut o = NegotiateOptions::new(mode, Arc::new(KnownHostsFile::new(keys, TrustMode::AutoAccept)));
    o.auth_method = method;
    o.username = user.to_owned();
    o.password = Secret::new(password);
    o.rtt = RttParams {
        rto_min: Duration::from_millis(200),
        rto_max: Duration::from_secs(1),
        ..RttParams::default()
    };
    o.reply_timeout = Duration::from_secs(3);
    o.connect_timeout = Duration::from_secs(3);
    o
}

/// Polls `cond` until it holds (up to 5 s): the broker may still be reading the client's last
/// message when the client is already done (over TCP the `accept` gets no answer).
pub async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..250 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// A TCP listener on 127.0.0.1 whose port number is also held on UDP (see `TestBroker`).
pub async fn tcp_with_udp_hole() -> (tokio::net::TcpListener, std::net::UdpSocket) {
    for _ in 0..64 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind TCP");
        let addr = listener.local_addr().expect("TCP address");
        if let Ok(hole) = std::net::UdpSocket::bind(addr) {
            return (listener, hole);
        }
    }
    panic!("no port free on both TCP and UDP");
}
