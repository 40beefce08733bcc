//! Broker ranking (`ECHO REQUEST`, §7) against real UDP test brokers on 127.0.0.1, and the
//! broker-list / last-server files that follow it: rank → save → load → try order.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use nm_tsp::net::rank::{NO_ANSWER_PENALTY, Probe, RankOptions, WRONG_FAMILY_PENALTY, rank};
use nm_tsp::sites;
use tokio::net::UdpSocket;

/// How a test broker answers echo requests.
#[derive(Clone, Copy)]
enum Behaviour {
    /// `200 OK` after the given delay.
    Answer(Duration),
    /// Never answers.
    Silent,
    /// Answers `200` with the next sequence number.
    WrongSeq,
    /// Answers `500 Server error`.
    Refuse,
}

/// Requests a test broker received, in order.
type Seen = Arc<Mutex<Vec<Vec<u8>>>>;

fn count(seen: &Seen) -> usize {
    seen.lock().map(|v| v.len()).unwrap_or(usize::MAX)
}

/// A UDP test broker on 127.0.0.1: echoes the 8-byte RUDP header and appends its answer.
async fn responder(behaviour: Behaviour) -> (String, Seen) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind test broker");
    let addr = sock.local_addr().expect("test broker address");
    let seen = Seen::default();
    let record = seen.clone();
    tokio::spawn(async move {
        let sock = Arc::new(sock);
        let mut buf = [0u8; 256];
        while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
            let request = buf[..n].to_vec();
            if let Ok(mut v) = record.lock() {
                v.push(request.clone());
            }
            let mut reply = request.get(..8).unwrap_or_default().to_vec();
            let sock = sock.clone();
            tokio::spawn(async move {
                match behaviour {
                    Behaviour::Silent => return,
                    Behaviour::Answer(delay) => {
                        tokio::time::sleep(delay).await;
                        reply.extend_from_slice(b"200 OK\r\n");
                    }
                    Behaviour::WrongSeq => {
                        reply[3] = 0xF1;
                        reply.extend_from_slice(b"200 OK\r\n");
                    }
                    Behaviour::Refuse => reply.extend_from_slice(b"500 Server error\r\n"),
                }
                let _ = sock.send_to(&reply, peer).await;
            });
        }
    });
    (addr.to_string(), seen)
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

fn servers(p: &[Probe]) -> Vec<&str> {
    p.iter().map(|p| p.server.as_str()).collect()
}

#[tokio::test]
async fn nearest_first_with_penalties() {
    let (slow, _) = responder(Behaviour::Answer(Duration::from_millis(150))).await;
    let (fast, _) = responder(Behaviour::Answer(Duration::ZERO)).await;
    let (silent, silent_seen) = responder(Behaviour::Silent).await;
    let (wrong, wrong_seen) = responder(Behaviour::WrongSeq).await;
    let (refusing, refusing_seen) = responder(Behaviour::Refuse).await;
    let list = vec![
        silent.clone(),
        wrong.clone(),
        slow.clone(),
        refusing.clone(),
        fast.clone(),
    ];
    let ranked = guarded(&list, false, opts(500, 2)).await;
    // The three that gave no usable answer tie at 20 s and keep their input order.
    assert_eq!(
        servers(&ranked),
        [
            fast.as_str(),
            slow.as_str(),
            silent.as_str(),
            wrong.as_str(),
            refusing.as_str()
        ]
    );
    assert!(ranked[0].answered && ranked[1].answered);
    assert!(ranked[1].distance >= Duration::from_millis(150));
    assert!(ranked[1].distance < NO_ANSWER_PENALTY);
    for p in &ranked[2..] {
        assert!(!p.answered, "{p:?}");
        assert_eq!(p.distance, NO_ANSWER_PENALTY, "{p:?}");
    }
    // Silence and a wrong sequence are retried; a refusal is final.
    assert_eq!(count(&silent_seen), 2);
    assert_eq!(count(&wrong_seen), 2);
    assert_eq!(count(&refusing_seen), 1);
}

#[tokio::test]
async fn wire_format_of_the_probe() {
    let (silent, seen) = responder(Behaviour::Silent).await;
    guarded(std::slice::from_ref(&silent), false, opts(100, 3)).await;
    let seen = seen.lock().expect("requests").clone();
    assert_eq!(seen.len(), 3);
    for d in &seen {
        assert_eq!(&d[..4], &[0xF0, 0, 0, 0xF0]);
        assert_eq!(&d[8..], b"ECHO REQUEST");
    }
}

#[tokio::test]
async fn wrong_family_starts_at_30_s() {
    let (v4, _) = responder(Behaviour::Answer(Duration::ZERO)).await;
    let (silent, _) = responder(Behaviour::Silent).await;
    // The transport needs IPv6; both test brokers are IPv4 only.
    let ranked = guarded(&[silent.clone(), v4.clone()], true, opts(100, 1)).await;
    assert_eq!(servers(&ranked), [v4.as_str(), silent.as_str()]);
    assert!(ranked[0].answered);
    assert!(ranked[0].distance > WRONG_FAMILY_PENALTY);
    assert!(ranked[0].distance < WRONG_FAMILY_PENALTY + NO_ANSWER_PENALTY);
    assert_eq!(ranked[1].distance, WRONG_FAMILY_PENALTY + NO_ANSWER_PENALTY);
}

#[tokio::test]
async fn unresolvable_and_invalid_are_penalised() {
    let (fast, _) = responder(Behaviour::Answer(Duration::ZERO)).await;
    let list = vec![
        "no-such-broker.invalid".to_owned(),
        "bad server".to_owned(),
        fast.clone(),
    ];
    let ranked = guarded(&list, false, opts(300, 2)).await;
    assert_eq!(
        servers(&ranked),
        [fast.as_str(), "no-such-broker.invalid", "bad server"]
    );
    assert_eq!(ranked[1].distance, NO_ANSWER_PENALTY);
    assert_eq!(ranked[2].distance, NO_ANSWER_PENALTY);
}

#[tokio::test]
async fn fifty_silent_brokers_finish() {
    let mut list = Vec::new();
    for _ in 0..50 {
        list.push(responder(Behaviour::Silent).await.0);
    }
    let ranked = guarded(&list, false, opts(200, 2)).await;
    assert_eq!(servers(&ranked), list.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ranked.iter().all(|p| !p.answered));
}

#[tokio::test]
async fn ranked_list_saved_and_walked() {
    let (near, _) = responder(Behaviour::Answer(Duration::ZERO)).await;
    let (silent, _) = responder(Behaviour::Silent).await;
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
