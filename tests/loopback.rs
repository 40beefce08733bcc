//! Client ↔ bundled broker over real loopback sockets: every mechanism on both transports,
//! version fallback, UDP→TCP fallback, bad passwords, a full broker, redirection, host keys.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::*;
use tsp_client::net::{NetError, negotiate};
use tsp_proto::client::Transport;
use tsp_proto::error::ProtoError;
use tsp_proto::sasl::Mechanism;
use tsp_proto::status::StatusCode;
use tsp_proto::types::{AuthMethod, TunnelMode, Version};

async fn one(mech: AuthMethod, user: &str, pass: &str, transport: Transport) {
    let dir = scratch_dir(&format!("mech-{mech}-{transport:?}"));
    // A TCP-only broker forces TCP; with both, UDP answers first.
    let extra = if transport == Transport::Tcp { "udp = false" } else { "" };
    let broker = start_broker(&broker_toml(&dir, "127.0.0.1:0", extra), None).await;
    let opts = options(TunnelMode::V6AnyV4, mech, user, pass, dir.join("keys.pub"));
    let est = negotiate(&broker.server(), &opts)
        .await
        .unwrap_or_else(|e| panic!("{mech} over {transport:?}: {e}"));
    assert_eq!(est.conn.transport(), transport);
    assert_eq!(est.negotiated.version, Version::V2_0_2);
    let expected = match mech {
        AuthMethod::Anonymous => Mechanism::Anonymous,
        AuthMethod::Plain => Mechanism::Plain,
        AuthMethod::DigestMd5 => Mechanism::DigestMd5,
        _ => Mechanism::PassDss3Des1,
    };
    assert_eq!(est.negotiated.mechanism, expected);
    let offer = &est.negotiated.offer;
    // On loopback the reported and observed addresses agree: no NAT, so v6v4.
    assert_eq!(offer.mode, TunnelMode::V6V4);
    assert_eq!(offer.client_v4, Ipv4Addr::LOCALHOST);
    assert!(
        offer.client_v6.segments()[0] == 0x2001,
        "client address from the pool: {}",
        offer.client_v6
    );
    assert_eq!(offer.keepalive.map(|k| k.interval), Some(30));
    // The broker recorded the session as established under the user's name.
    assert!(eventually(|| broker.running.shared.lock().sessions().any(|s| s.established)).await);
    let broker_state = broker.running.shared.lock();
    let rec: Vec<_> = broker_state.sessions().filter(|s| s.established).collect();
    assert_eq!(rec.len(), 1, "one established session");
    assert_eq!(rec[0].offer, *offer);
    let expect_user = (mech != AuthMethod::Anonymous).then(|| user.to_owned());
    assert_eq!(rec[0].user, expect_user);
}

#[tokio::test]
async fn every_mechanism_over_udp_and_tcp() {
    for transport in [Transport::Udp, Transport::Tcp] {
        one(AuthMethod::Anonymous, "", "", transport).await;
        one(AuthMethod::Plain, "user1", "pass1", transport).await;
        one(AuthMethod::DigestMd5, "bob", "b\"o\\b", transport).await;
        one(AuthMethod::PassDss3Des1, "alice", "wonder land", transport).await;
        // `any` picks the strongest: PASSDSS-3DES-1.
        one(AuthMethod::Any, "user1", "pass1", transport).await;
    }
}

#[tokio::test]
async fn any_never_picks_plain_unless_allowed() {
    let dir = scratch_dir("plain-only");
    let toml = broker_toml(&dir, "127.0.0.1:0", "").replace(
        "auth = [\"anonymous\", \"plain\", \"digest-md5\", \"passdss-3des-1\"]",
        "auth = [\"plain\"]",
    );
    let broker = start_broker(&toml, None).await;
    let mut opts = options(TunnelMode::V6V4, AuthMethod::Any, "user1", "pass1", dir.join("k"));
    let err = negotiate(&broker.server(), &opts).await.unwrap_err();
    assert!(matches!(err, NetError::Proto(ProtoError::PlainNotAllowed)), "{err}");
    opts.allow_plain = true;
    let est = negotiate(&broker.server(), &opts).await.expect("allowed");
    assert_eq!(est.negotiated.mechanism, Mechanism::Plain);
}

#[tokio::test]
async fn wrong_password_is_an_authentication_error() {
    let dir = scratch_dir("wrong-pass");
    let broker = start_broker(&broker_toml(&dir, "127.0.0.1:0", ""), None).await;
    for method in [AuthMethod::Plain, AuthMethod::DigestMd5, AuthMethod::PassDss3Des1] {
        let opts = options(TunnelMode::V6V4, method, "user1", "not-the-password", dir.join("k"));
        let err = negotiate(&broker.server(), &opts).await.unwrap_err();
        assert!(err.is_auth_failure(), "{method}: {err}");
        assert!(!err.to_string().contains("not-the-password"), "password leaked: {err}");
        let opts = options(TunnelMode::V6V4, method, "nobody", "x", dir.join("k"));
        assert!(negotiate(&broker.server(), &opts).await.unwrap_err().is_auth_failure());
    }
    assert_eq!(broker.running.shared.lock().sessions().count(), 0);
}

#[tokio::test]
async fn version_fallback_to_older_brokers() {
    let dir = scratch_dir("versions");
    // 2.0.0 only: the client steps down 2.0.2 → 2.0.1 → 2.0.0, staying on UDP.
    let broker = start_broker(&broker_toml(&dir, "127.0.0.1:0", "versions = [\"2.0.0\"]"), None).await;
    let opts = options(TunnelMode::V6UdpV4, AuthMethod::Anonymous, "", "", dir.join("k"));
    let est = negotiate(&broker.server(), &opts).await.expect("2.0.0");
    assert_eq!(est.negotiated.version, Version::V2_0_0);
    assert_eq!(est.conn.transport(), Transport::Udp);
    assert_eq!(est.negotiated.offer.mode, TunnelMode::V6UdpV4);

    // 1.0.1 only: reached over TCP, and the tunnel exists without an accept message.
    let broker = start_broker(&broker_toml(&dir, "127.0.0.1:0", "versions = [\"1.0.1\"]"), None).await;
    let opts = options(TunnelMode::V6V4, AuthMethod::DigestMd5, "user1", "pass1", dir.join("k"));
    let est = negotiate(&broker.server(), &opts).await.expect("1.0.1");
    assert_eq!(est.negotiated.version, Version::V1_0_1);
    assert_eq!(est.conn.transport(), Transport::Tcp);
    assert!(eventually(|| broker.running.shared.lock().sessions().any(|s| s.established)).await);

    // v6udpv4 cannot go below 2.0.0: a clear error, no endless loop.
    let opts = options(TunnelMode::V6UdpV4, AuthMethod::Anonymous, "", "", dir.join("k"));
    let err = negotiate(&broker.server(), &opts).await.unwrap_err();
    assert!(
        matches!(err, NetError::Proto(ProtoError::UnsupportedVersion(Version::V2_0_0))),
        "{err}"
    );
}

#[tokio::test]
async fn silent_udp_falls_back_to_tcp_quickly() {
    let dir = scratch_dir("udp-blocked");
    let broker = start_broker(&broker_toml(&dir, "127.0.0.1:0", "udp = false"), None).await;
    // A TCP-only test broker holds its port on UDP without ever answering: datagrams vanish
    // as behind a filtering firewall (no ICMP error to make the client give up early).
    let mut opts = options(TunnelMode::V6AnyV4, AuthMethod::Anonymous, "", "", dir.join("k"));
    opts.rtt = tsp_proto::rudp::RttParams::default(); // gogoc's timers: 6 s before UDP gives up
    let t0 = Instant::now();
    let est = negotiate(&broker.server(), &opts).await.expect("TCP fallback");
    assert_eq!(est.conn.transport(), Transport::Tcp);
    assert_eq!(est.negotiated.offer.mode, TunnelMode::V6V4);
    // Not a benchmark: proves TCP did not wait for UDP's 6-second give-up, as gogoc does.
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
}

#[tokio::test]
async fn full_broker_answers_301() {
    let dir = scratch_dir("full");
    let broker = start_broker(&broker_toml(&dir, "127.0.0.1:0", "max_tunnels = 1"), None).await;
    let a = options(TunnelMode::V6V4, AuthMethod::DigestMd5, "user1", "pass1", dir.join("k"));
    negotiate(&broker.server(), &a).await.expect("first tunnel");
    // The same user reconnecting takes its own slot again...
    let again = negotiate(&broker.server(), &a).await.expect("reconnect");
    // ...and keeps its address (stable assignment).
    let first_addr = broker
        .running
        .shared
        .lock()
        .sessions()
        .next()
        .map(|s| s.offer.client_v6);
    assert_eq!(Some(again.negotiated.offer.client_v6), first_addr);
    let b = options(
        TunnelMode::V6V4,
        AuthMethod::DigestMd5,
        "alice",
        "wonder land",
        dir.join("k"),
    );
    let err = negotiate(&broker.server(), &b).await.unwrap_err();
    match err {
        NetError::Proto(ProtoError::Status {
            status: StatusCode::NoMoreTunnels,
            ..
        }) => {}
        e => panic!("expected 301, got {e}"),
    }
}

#[tokio::test]
async fn router_mode_gets_a_stable_prefix() {
    let dir = scratch_dir("router");
    let broker = start_broker(&broker_toml(&dir, "127.0.0.1:0", ""), None).await;
    let mut opts = options(
        TunnelMode::V6V4,
        AuthMethod::DigestMd5,
        "alice",
        "wonder land",
        dir.join("k"),
    );
    opts.router = Some(tsp_proto::xml::RouterRequest {
        prefix_len: 56,
        dns_names: vec![],
    });
    let first = negotiate(&broker.server(), &opts).await.expect("router");
    let p = first.negotiated.offer.prefix.expect("prefix offered");
    assert_eq!(p.len, 56);
    let second = negotiate(&broker.server(), &opts).await.expect("router again");
    assert_eq!(second.negotiated.offer.prefix, Some(p));
    // Anonymous routers are refused with 522.
    let mut anon = options(TunnelMode::V6V4, AuthMethod::Anonymous, "", "", dir.join("k"));
    anon.router = opts.router.clone();
    match negotiate(&broker.server(), &anon).await.unwrap_err() {
        NetError::Proto(ProtoError::Status {
            status: StatusCode::PrefixForAnonymous,
            ..
        }) => {}
        e => panic!("expected 522, got {e}"),
    }
}

#[tokio::test]
async fn redirection_is_followed_to_the_next_broker() {
    // Redirect targets carry no port: the client uses 3653, so the target brokers live on
    // their own loopback addresses.
    let dir = scratch_dir("redirect");
    let up = start_broker(&broker_toml(&dir, "127.0.83.2:3653", ""), None).await;
    // Document order [up, dead]: gogoc tries IPv4 entries in reverse, so the dead one first.
    let redirector = start_broker(
        &broker_toml(&dir, "127.0.83.1:0", "redirect = [\"127.0.83.2\", \"127.0.83.3\"]"),
        None,
    )
    .await;
    let opts = options(
        TunnelMode::V6AnyV4,
        AuthMethod::DigestMd5,
        "user1",
        "pass1",
        dir.join("k"),
    );
    let est = negotiate(&redirector.server(), &opts)
        .await
        .expect("followed the redirection");
    assert_eq!(est.server, "127.0.83.2");
    assert_eq!(est.peer.ip(), IpAddr::V4(Ipv4Addr::new(127, 0, 83, 2)));
    assert!(eventually(|| up.running.shared.lock().sessions().any(|s| s.established)).await);
    assert_eq!(redirector.running.shared.lock().sessions().count(), 0);
}

#[tokio::test]
async fn passdss_host_key_is_pinned() {
    let dir = scratch_dir("hostkey");
    let keys = dir.join("gogockeys.pub");
    let broker = start_broker(&broker_toml(&dir, "127.0.0.1:0", ""), None).await;
    let opts = options(
        TunnelMode::V6V4,
        AuthMethod::PassDss3Des1,
        "user1",
        "pass1",
        keys.clone(),
    );
    negotiate(&broker.server(), &opts)
        .await
        .expect("first use: key accepted");
    let stored = std::fs::read_to_string(&keys).expect("key file written");
    assert!(
        stored.starts_with(&format!("{} ssh-dss AAAAB3NzaC1kc3MAAACA", broker.server())),
        "{stored}"
    );

    // Known key, non-interactive: fine.
    let mut strict = opts.clone();
    strict.host_keys = std::sync::Arc::new(tsp_client::net::hostkeys::KnownHostsFile::new(
        keys.clone(),
        tsp_client::net::hostkeys::TrustMode::Refuse,
    ));
    negotiate(&broker.server(), &strict).await.expect("known key");

    // Pinned key for an address, another key presented there: refused, file unchanged.
    let other = tsp_proto::sasl::passdss::HostKeyPair::generate(&mut rand::rngs::OsRng).expect("DSA key");
    let impostor = start_broker(&broker_toml(&dir, "127.0.0.1:0", ""), Some(other)).await;
    let blob = stored.split_whitespace().nth(2).expect("blob");
    let pinned = format!("{stored}{} ssh-dss {blob}\n", impostor.server());
    std::fs::write(&keys, &pinned).unwrap();
    let err = negotiate(&impostor.server(), &opts).await.unwrap_err();
    assert!(
        matches!(err, NetError::Proto(ProtoError::HostKeyMismatch { .. })),
        "{err}"
    );
    assert!(err.is_auth_failure());
    assert_eq!(std::fs::read_to_string(&keys).unwrap(), pinned);

    // Unknown key and no way to ask: refused without hanging.
    let fresh = dir.join("empty.pub");
    let mut refuse = opts.clone();
    refuse.host_keys = std::sync::Arc::new(tsp_client::net::hostkeys::KnownHostsFile::new(
        fresh.clone(),
        tsp_client::net::hostkeys::TrustMode::Refuse,
    ));
    let err = negotiate(&impostor.server(), &refuse).await.unwrap_err();
    assert!(
        matches!(err, NetError::Proto(ProtoError::HostKeyNotTrusted { .. })),
        "{err}"
    );
    assert!(!fresh.exists());
}

/// A raw RUDP exchange with the broker: send `payload` with sequence `seq`, return the reply.
async fn rudp(sock: &tokio::net::UdpSocket, seq: u32, payload: &[u8]) -> Vec<u8> {
    use tsp_proto::rudp::{Header, datagram};
    sock.send(&datagram(Header { seq, timestamp: 771 }, payload))
        .await
        .unwrap();
    let mut buf = vec![0u8; 4200];
    let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
        .await
        .expect("reply")
        .unwrap();
    let (h, p) = Header::decode(&buf[..n]).expect("control reply");
    assert_eq!(h, Header { seq, timestamp: 771 }, "header echoed verbatim");
    p.to_vec()
}

#[tokio::test]
async fn broker_answers_probes_and_retransmissions() {
    let dir = scratch_dir("rudp-raw");
    let broker = start_broker(&broker_toml(&dir, "127.0.0.1:0", ""), None).await;
    let probe = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    probe.connect(broker.addr).await.unwrap();
    // The broker-ranking probe of §7: 12 bytes, answered with a 200.
    assert!(rudp(&probe, 0xf0, b"ECHO REQUEST").await.starts_with(b"200"));

    let c = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    c.connect(broker.addr).await.unwrap();
    let caps = rudp(&c, 0xf0, b"VERSION=2.0.2\r\n").await;
    assert!(caps.starts_with(b"CAPABILITY ") && caps.ends_with(b"\r\n"));
    // A retransmitted VERSION (same sequence) gets the same answer, not a new exchange.
    assert_eq!(rudp(&c, 0xf0, b"VERSION=2.0.2\r\n").await, caps);
    let challenge = rudp(&c, 0xf1, b"AUTHENTICATE DIGEST-MD5\r\n\0").await;
    // A retransmission must not mint a new nonce: the client computes with the first one.
    assert_eq!(rudp(&c, 0xf1, b"AUTHENTICATE DIGEST-MD5\r\n\0").await, challenge);
    // An empty poll with nothing pending is acknowledged with an empty payload.
    let c2 = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    c2.connect(broker.addr).await.unwrap();
    rudp(&c2, 0xf0, b"VERSION=2.0.2\r\n").await;
    assert_eq!(
        rudp(&c2, 0xf1, b"AUTHENTICATE PLAIN\r\n\0").await,
        b"",
        "PLAIN's line is only acknowledged"
    );
    assert_eq!(rudp(&c2, 0xf2, b"\0user1\0pass1\r\n").await, b"200 Success\r\n");
}

/// Over raw RUDP from `from`: VERSION, ANONYMOUS, a v6udpv4 create reporting `reported`; the
/// create's answer, and the never-accepting client's socket (kept open by the caller).
async fn half_negotiation(broker: std::net::SocketAddr, from: &str, reported: &str) -> (String, tokio::net::UdpSocket) {
    use tsp_proto::xml::{CreateRequest, build_create};
    let c = tokio::net::UdpSocket::bind(from).await.unwrap();
    c.connect(broker).await.unwrap();
    rudp(&c, 0xf0, b"VERSION=2.0.2\r\n").await;
    assert!(
        rudp(&c, 0xf1, b"AUTHENTICATE ANONYMOUS\r\n\0")
            .await
            .starts_with(b"200")
    );
    let req = CreateRequest {
        mode: TunnelMode::V6UdpV4,
        proxy: false,
        client_addr: reported.parse().unwrap(),
        keepalive: Some(30),
        router: None,
    };
    let create = tsp_proto::frame::frame_request(&build_create(&req));
    let answer = rudp(&c, 0xf2, &create).await;
    (String::from_utf8_lossy(&answer).into_owned(), c)
}

/// Once a UDP client's tunnel is established the broker drops its negotiation, but a
/// retransmitted accept (its acknowledgement was lost) is still acknowledged, and the tunnel
/// stays established.
#[tokio::test]
async fn a_retransmitted_accept_is_acknowledged_after_the_session_is_dropped() {
    let dir = scratch_dir("accept-again");
    let broker = start_broker(&broker_toml(&dir, "127.0.0.1:0", ""), None).await;
    let (answer, c) = half_negotiation(broker.addr, "127.0.0.1:0", "10.0.0.1").await;
    assert!(answer.contains("200 Success"), "{answer}");
    let accept = tsp_proto::frame::frame_request(tsp_proto::xml::ACCEPT);
    assert_eq!(rudp(&c, 0xf3, &accept).await, b"");
    assert_eq!(rudp(&c, 0xf3, &accept).await, b"", "the retransmission");
    let shared = &broker.running.shared;
    assert_eq!(shared.lock().sessions().filter(|s| s.established).count(), 1);
}

/// Offers never accepted do not hold tunnel slots forever: `max_tunnels` half-negotiations
/// fill the broker (301), and once they expire (`offer_timeout`) a client gets a tunnel.
#[tokio::test]
async fn unaccepted_offers_expire_and_free_their_slots() {
    let dir = scratch_dir("pending-expire");
    let extra = "max_tunnels = 3\noffer_timeout = 1";
    let broker = start_broker(&broker_toml(&dir, "127.0.0.1:0", extra), None).await;
    let mut held = Vec::new();
    for i in 1..=3 {
        let (answer, sock) = half_negotiation(broker.addr, "127.0.0.1:0", &format!("10.0.0.{i}")).await;
        assert!(answer.contains("200 Success"), "offer {i}: {answer}");
        held.push(sock);
    }
    let opts = options(TunnelMode::V6UdpV4, AuthMethod::Anonymous, "", "", dir.join("k"));
    match negotiate(&broker.server(), &opts).await {
        Err(NetError::Proto(ProtoError::Status {
            status: StatusCode::NoMoreTunnels,
            ..
        })) => {}
        other => panic!(
            "expected 301 while the offers pend, got {:?}",
            other.map(|e| e.negotiated.offer)
        ),
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let est = negotiate(&broker.server(), &opts)
        .await
        .expect("a slot after the offers expired");
    assert_eq!(est.negotiated.offer.mode, TunnelMode::V6UdpV4);
    assert_eq!(broker.running.shared.lock().sessions().count(), 1);
}

/// One source address cannot hold more than `max_pending_per_source` offers; another source
/// still gets its own.
#[tokio::test]
async fn one_source_holds_a_bounded_number_of_pending_offers() {
    let dir = scratch_dir("pending-per-source");
    let broker = start_broker(&broker_toml(&dir, "127.0.0.1:0", "max_pending_per_source = 4"), None).await;
    let mut held = Vec::new();
    for i in 1..=4 {
        let (answer, sock) = half_negotiation(broker.addr, "127.0.0.1:0", &format!("10.0.0.{i}")).await;
        assert!(answer.contains("200 Success"), "offer {i}: {answer}");
        held.push(sock);
    }
    let (answer, _s) = half_negotiation(broker.addr, "127.0.0.1:0", "10.0.0.5").await;
    assert!(
        answer.contains("530 "),
        "fifth pending offer from one address: {answer}"
    );
    // Another address (loopback holds all of 127/8) is not affected.
    let (answer, _s) = half_negotiation(broker.addr, "127.0.0.2:0", "10.0.0.5").await;
    assert!(answer.contains("200 Success"), "{answer}");
    assert_eq!(broker.running.shared.lock().sessions().count(), 5);
}

/// Failed logins are throttled: the answers to repeated wrong DIGEST-MD5 passwords come ever
/// later (a lower bound only), and the right password still works afterwards.
#[tokio::test]
async fn failed_logins_are_throttled_but_never_lock_out() {
    for transport in [Transport::Tcp, Transport::Udp] {
        let dir = scratch_dir(&format!("throttle-{transport:?}"));
        // Short delays so the test is quick: 40 ms doubling up to 320 ms.
        let only = if transport == Transport::Tcp { "udp = false" } else { "" };
        let extra = format!("{only}\nlogin_delay_ms = 40\nlogin_delay_max_ms = 320");
        let broker = start_broker(&broker_toml(&dir, "127.0.0.1:0", &extra), None).await;
        let wrong = options(TunnelMode::V6V4, AuthMethod::DigestMd5, "user1", "wrong", dir.join("k"));
        let t0 = Instant::now();
        let mut tenth = Duration::ZERO;
        for i in 1..=10 {
            let t = Instant::now();
            let err = negotiate(&broker.server(), &wrong).await.unwrap_err();
            assert!(err.is_auth_failure(), "{transport:?} attempt {i}: {err}");
            tenth = t.elapsed();
        }
        // Three free failures per user, then 40, 80, 160, 320, 320, 320, 320 ms.
        assert!(
            tenth >= Duration::from_millis(300),
            "{transport:?}: 10th failure answered after {tenth:?}"
        );
        assert!(
            t0.elapsed() >= Duration::from_millis(1500),
            "{transport:?}: 10 failures took only {:?}",
            t0.elapsed()
        );
        let right = options(TunnelMode::V6V4, AuthMethod::DigestMd5, "user1", "pass1", dir.join("k"));
        let est = negotiate(&broker.server(), &right)
            .await
            .expect("the right password after the burst");
        assert_eq!(est.conn.transport(), transport);
    }
}
