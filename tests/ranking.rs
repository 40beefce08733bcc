//! Broker ranking (`ECHO REQUEST`, §7) against real UDP test brokers on 127.0.0.1, followed
//! through the broker-list / last-server files: rank → save → load → try order. The ranking
//! rules themselves are tested case by case in `crates/tsp-client/src/net/rank.rs`.

use std::time::Duration;

use tokio::net::UdpSocket;
use tsp_client::net::rank::{Probe, RankOptions, rank};
use tsp_config::sites;

/// A UDP test broker on 127.0.0.1 that echoes the 8-byte RUDP header with `200 OK`, or,
/// when `silent`, never answers.
async fn responder(silent: bool) -> String {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind test broker");
    let addr = sock.local_addr().expect("test broker address");
    tokio::spawn(async move {
        let mut buf = [0u8; 256];
        while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
            if silent {
                continue;
            }
            let mut reply = buf[..n.min(8)].to_vec();
            reply.extend_from_slice(b"200 OK\r\n");
            let _ = sock.send_to(&reply, peer).await;
        }
    });
    addr.to_string()
}

fn opts(timeout_ms: u64, tries: u32) -> RankOptions {
    RankOptions {
        timeout: Duration::from_millis(timeout_ms),
        tries,
        port: 3653,
    }
}

/// Hang guard only: generous, never a speed assertion.
async fn guarded(brokers: &[String], want_v6: bool, o: RankOptions) -> Vec<Probe> {
    tokio::time::timeout(Duration::from_secs(30), rank(brokers, want_v6, &o))
        .await
        .expect("ranking hung")
}

#[tokio::test]
async fn ranked_list_saved_and_walked() {
    let near = responder(false).await;
    let silent = responder(true).await;
    let ranked = guarded(&[silent.clone(), near.clone()], false, opts(200, 1)).await;
    let order: Vec<String> = ranked.into_iter().map(|p| p.server).collect();
    assert_eq!(order, [near.clone(), silent.clone()]);

    let dir = std::env::temp_dir().join(format!("nm-tsp-ranking-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let list_path = dir.join(sites::DEFAULT_BROKER_LIST);
    let last_path = dir.join(sites::DEFAULT_LAST_SERVER);
    // An IPv6 broker as gogoc copies it into `server`, to check the bracket round trip.
    let mut saved = order.clone();
    saved.push("[2001:db8::1]".to_owned());
    sites::save_broker_list(&list_path, &saved).expect("save broker list");
    let text = std::fs::read_to_string(&list_path).expect("read broker list");
    assert!(text.ends_with("\n2001:db8::1\n"), "{text:?}");
    let loaded = sites::load_broker_list(&list_path).expect("load broker list");
    assert_eq!(loaded, saved);

    // The configured server comes first, then the list.
    let walk = sites::candidates("tsp.example.net", None, false, &loaded);
    assert_eq!(walk[0], "tsp.example.net");
    assert_eq!(&walk[1..], &saved[..]);

    // After a success the server is remembered; with always_use_same_server it is the only one.
    sites::save_last_server(&last_path, &near).expect("save last server");
    let last = sites::load_last_server(&last_path).expect("load last server");
    assert_eq!(last.as_deref(), Some(near.as_str()));
    assert_eq!(
        sites::candidates("tsp.example.net", last.as_deref(), true, &loaded),
        [near.as_str()]
    );
    std::fs::remove_dir_all(&dir).expect("clean up");
}
