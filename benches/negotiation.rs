//! In-memory benchmarks: a whole client ↔ broker negotiation with no sockets (the two sans-IO
//! state machines wired back to back), and the hot parsers and builders they use.
//!
//! Run with `cargo bench --bench negotiation`. Under `cargo test --all-targets` criterion runs
//! every benchmark once, as a smoke test.
//!
//! Backend choice: the real `tsp_broker::Broker`. Its per-offer state does not grow in
//! this loop: the session record is keyed by user (or, for anonymous clients, by reported and
//! observed address), every iteration uses the same peer, so the record is replaced and the
//! pools hand back the same stable assignment; with no `state_file` nothing is written to
//! disk and with no tracing subscriber the log lines cost a callsite check. So the real one
//! measures what the bundled broker really does per offer, without distortion.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::rngs::StdRng;

use tsp_broker::Broker;
use tsp_broker::accounts::Accounts;
use tsp_broker::config::BrokerConfig;
use tsp_proto::StatusCode;
use tsp_proto::caps::Capabilities;
use tsp_proto::client::{ClientParams, ClientSession, Expect, Outcome, Step, Transport};
use tsp_proto::frame;
use tsp_proto::sasl::Mechanism;
use tsp_proto::sasl::passdss::HostKeyPair;
use tsp_proto::secret::Secret;
use tsp_proto::server::{ServerConfig, ServerSession};
use tsp_proto::types::{AuthMethod, TunnelMode, Version};
use tsp_proto::xml::{self, CreateRequest};

const REALM: &str = "bench-realm";
const USER: &str = "user1";
const PASSWORD: &str = "pass1";

/// The client as the broker sees it, and the broker's own address.
const PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40_000);
const LOCAL: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 3653);

/// §4.3 first example (v6udpv4), the body after the status line.
const OFFER_HOST: &str = "<tunnel action=\"info\" type=\"v6udpv4\" lifetime=\"604800\">\r\n <server>\r\n  <address type=\"ipv4\">192.0.2.6</address>\r\n  <address type=\"ipv6\">2001:0db8:4000:0000:0000:0000:0000:0004</address>\r\n </server>\r\n <client>\r\n  <address type=\"ipv4\">198.51.100.20</address>\r\n  <address type=\"ipv6\">2001:0db8:4000:0000:0000:0000:0000:0005</address>\r\n  <keepalive interval=\"30\">\r\n   <address type=\"ipv6\">2001:0db8:4000:0000:0000:0000:0000:0004</address>\r\n  </keepalive>\r\n </client>\r\n</tunnel>\r\n";

/// §4.3 router example (v6v4, DNS name, DNS server, delegated prefix), after the status line.
const OFFER_ROUTER: &str = "<tunnel action=\"info\" type=\"v6v4\" lifetime=\"604800\">\r\n <server>\r\n  <address type=\"ipv4\">192.0.2.6</address>\r\n  <address type=\"ipv6\">2001:0db8:4000:0000:0000:0000:0000:0004</address>\r\n </server>\r\n <client>\r\n  <address type=\"ipv4\">192.0.2.1</address>\r\n  <address type=\"ipv6\">2001:0db8:4000:0000:0000:0000:0000:0005</address>\r\n  <address type=\"dn\">johnsmith.broker.example.net</address>\r\n  <dns_server>\r\n   <address type=\"ipv6\">2001:0db8:4000:0000:0000:0000:0000:0053</address>\r\n  </dns_server>\r\n  <router>\r\n   <prefix length=\"56\">2001:0db8:4000:1200:0000:0000:0000:0000</prefix>\r\n  </router>\r\n  <keepalive interval=\"30\">\r\n   <address type=\"ipv6\">2001:0db8:4000:0000:0000:0000:0000:0004</address>\r\n  </keepalive>\r\n </client>\r\n</tunnel>\r\n";

/// A CAPABILITY line as gogoc-era brokers send it.
const CAPS_LINE: &[u8] = b"CAPABILITY TUNNEL=V6V4 TUNNEL=V6UDPV4 AUTH=DIGEST-MD5 AUTH=ANONYMOUS AUTH=PLAIN\r\n";

/// The bundled broker's protocol settings and its backend, as `tsp-broker` builds them.
struct Fixture {
    protocol: Arc<ServerConfig>,
    broker: Broker,
}

impl Fixture {
    fn new(host_key: HostKeyPair) -> Self {
        // The file paths are only checked for presence: accounts come from `Accounts::parse`
        // and the host key is passed in, so nothing is read from disk.
        let toml = format!(
            "listen = [\"127.0.0.1:3653\"]\nrealm = \"{REALM}\"\naccounts_file = \"/nonexistent/accounts\"\nhost_key_file = \"/nonexistent/host-key\"\nauth = [\"anonymous\", \"plain\", \"digest-md5\", \"passdss-3des-1\"]\n"
        );
        let cfg = Arc::new(BrokerConfig::parse(&toml, Path::new("bench.toml")).expect("broker config"));
        let line = Accounts::line(USER, REALM, &Secret::new(PASSWORD)).expect("account line");
        let accounts = Accounts::parse(&line, REALM, "<bench>").expect("accounts");
        let protocol = Arc::new(Broker::server_config(&cfg, Some(host_key)));
        Self {
            protocol,
            broker: Broker::new(cfg, accounts),
        }
    }
}

fn client_params(method: AuthMethod) -> ClientParams {
    ClientParams {
        version: Version::V2_0_2,
        transport: Transport::Tcp,
        auth_method: method,
        allow_plain: method == AuthMethod::Plain,
        username: USER.to_owned(),
        password: Secret::new(PASSWORD),
        server_name: "127.0.0.1".to_owned(),
        request: host_request(),
        cnonce: "1700000000".to_owned(),
    }
}

fn host_request() -> CreateRequest {
    CreateRequest {
        mode: TunnelMode::V6V4,
        proxy: false,
        client_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        keepalive: Some(30),
        router: None,
    }
}

/// One whole TCP negotiation, bytes passed directly between the two state machines.
fn negotiate_in_memory(fx: &mut Fixture, params: &ClientParams, rng: &mut StdRng) -> Outcome {
    let mut server = ServerSession::new(fx.protocol.clone(), PEER, LOCAL, Transport::Tcp);
    let mut client = ClientSession::new(params.clone());
    let mut step = client.start().expect("client starts");
    loop {
        step = match step {
            Step::Send { bytes, expect } => {
                server
                    .on_bytes(&bytes, &mut fx.broker, rng)
                    .expect("broker accepts the message");
                let reply = match expect {
                    // Over TCP nothing comes back: the client is fed an empty reply at once.
                    Expect::Ack => Vec::new(),
                    _ => server.next_reply().expect("broker queued a reply"),
                };
                client.on_reply(&reply, rng).expect("client accepts the reply")
            }
            Step::Receive { .. } => {
                let reply = server.next_reply().expect("broker queued a second reply");
                client.on_reply(&reply, rng).expect("client accepts the reply")
            }
            Step::CheckHostKey { .. } => client.host_key_decision(true).expect("host key trusted"),
            Step::Done(outcome) => {
                assert!(server.is_established(), "broker saw the accept");
                return outcome;
            }
        };
    }
}

const CASES: &[(&str, AuthMethod, Mechanism)] = &[
    ("anonymous", AuthMethod::Anonymous, Mechanism::Anonymous),
    ("plain", AuthMethod::Plain, Mechanism::Plain),
    ("digest-md5", AuthMethod::DigestMd5, Mechanism::DigestMd5),
    ("passdss-3des-1", AuthMethod::PassDss3Des1, Mechanism::PassDss3Des1),
];

fn bench_negotiation(c: &mut Criterion) {
    // DSA domain-parameter generation takes a while: once, outside every timed loop.
    let host_key = HostKeyPair::generate(&mut rand::rngs::OsRng).expect("DSA host key");
    let mut fx = Fixture::new(host_key);
    // A seeded generator keeps OsRng's syscalls (and their noise) out of the loop.
    let mut rng = StdRng::seed_from_u64(0x5453_5000);

    let mut group = c.benchmark_group("negotiate_in_memory_tcp");
    for &(name, method, mechanism) in CASES {
        let params = client_params(method);
        // Check once, untimed, that the wiring negotiates what it claims to.
        match negotiate_in_memory(&mut fx, &params, &mut rng) {
            Outcome::Tunnel(n) => {
                assert_eq!(n.mechanism, mechanism, "{name}");
                assert_eq!(n.offer.mode, TunnelMode::V6V4, "{name}");
            }
            Outcome::Redirect(list) => panic!("{name}: unexpected redirect to {list:?}"),
        }
        group.bench_function(name, |b| {
            b.iter(|| black_box(negotiate_in_memory(&mut fx, black_box(&params), &mut rng)))
        });
    }
    group.finish();
}

fn bench_parsers(c: &mut Criterion) {
    let mut group = c.benchmark_group("parsers");

    for (name, doc) in [
        ("parse_info/host_4.3", OFFER_HOST),
        ("parse_info/router_4.3", OFFER_ROUTER),
    ] {
        xml::parse_info(doc.as_bytes()).expect("§4.3 offer parses");
        group.throughput(Throughput::Bytes(doc.len() as u64));
        group.bench_function(name, |b| b.iter(|| xml::parse_info(black_box(doc.as_bytes()))));
    }

    let request = host_request();
    group.throughput(Throughput::Bytes(xml::build_create(&request).len() as u64));
    group.bench_function("build_create/host", |b| {
        b.iter(|| xml::build_create(black_box(&request)))
    });

    let ours = Capabilities::parse(CAPS_LINE).expect("caps parse").to_line();
    for (name, line) in [
        ("caps_parse/gogoc_broker", CAPS_LINE),
        ("caps_parse/bundled_broker", &ours[..]),
    ] {
        group.throughput(Throughput::Bytes(line.len() as u64));
        group.bench_function(name, |b| b.iter(|| Capabilities::parse(black_box(line))));
    }

    // The broker's framed answer to `create`, as the client cuts it out of its TCP buffer.
    let offer = xml::parse_info(OFFER_HOST.as_bytes()).expect("§4.3 offer parses");
    let framed = frame::frame_reply(StatusCode::Success, &xml::build_info(&offer));
    let (_, used) = frame::take_framed(&framed, true).expect("frame").expect("whole frame");
    assert_eq!(used, framed.len());
    group.throughput(Throughput::Bytes(framed.len() as u64));
    group.bench_function("take_framed/offer_reply", |b| {
        b.iter(|| frame::take_framed(black_box(&framed), true))
    });
    group.finish();
}

criterion_group!(benches, bench_negotiation, bench_parsers);
criterion_main!(benches);
