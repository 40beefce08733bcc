//! Broker ranking after a redirection: gogoc's `ECHO REQUEST` "distance" probe (docs/tsp-wire.md §7).
//!
//! Every broker is probed at the same time, each on its own connected UDP socket, with one
//! RUDP message (docs/tsp-wire.md §2 header, sequence 0xF0) carrying `ECHO REQUEST`. The distance is the
//! round-trip time plus gogoc's penalties; brokers are then sorted nearest first.
//!
//! Unlike gogoc, which waits 10 s per attempt (up to 30 s for a silent broker), the whole
//! ranking here is bounded by `timeout × tries` however many brokers there are: a deadline
//! covers name resolution and every attempt of every probe.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use futures::future::join_all;
use tokio::net::UdpSocket;
use tokio::time::{Instant, timeout_at};

use tsp_config::{Host, ServerError, split_server};
use tsp_proto::rudp::{FIRST_SEQ, HEADER_LEN, Header, datagram};
use tsp_proto::types::{MAX_MESSAGE, TSP_PORT};

/// The probe's payload: 12 bytes, no CRLF, no NUL (gogoc `net_echo_request.c`).
pub const ECHO_REQUEST: &[u8] = b"ECHO REQUEST";

/// Added to a broker that never answered, answered with something other than `200`, could
/// not be resolved or could not be reached (gogoc: +20000 ms).
pub const NO_ANSWER_PENALTY: Duration = Duration::from_secs(20);

/// Starting distance of a broker reachable only over the other address family (gogoc:
/// 30000 ms); the probe's own result (RTT or [`NO_ANSWER_PENALTY`]) is added to it.
pub const WRONG_FAMILY_PENALTY: Duration = Duration::from_secs(30);

/// Tunables of [`rank`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankOptions {
    /// How long one attempt waits for the answer. gogoc waits 10 s; we default to 2 s, the
    /// RUDP engine's initial RTO, since a broker 2 s away is not one to pick anyway.
    pub timeout: Duration,
    /// Attempts per broker (gogoc: 3). 0 is treated as 1.
    pub tries: u32,
    /// Port for brokers whose server string has none (3653). gogoc always probes 3653; an
    /// explicit `:port` in the server string is honoured here.
    pub port: u16,
}

impl Default for RankOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            tries: 3,
            port: TSP_PORT,
        }
    }
}

/// One broker's measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The server string as given to [`rank`].
    pub server: String,
    /// Round-trip time plus penalties; the sort key.
    pub distance: Duration,
    /// The broker answered `200` to the echo request (over whichever family).
    pub answered: bool,
    /// Its host answered, without a broker: a TSP refusal, or an ICMP port unreachable (the
    /// path works; the broker is not listening yet).
    pub host_answered: bool,
}

/// Why a probe got no usable answer; only logged (the penalty is the same for all).
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("invalid server address: {0}")]
    BadServer(#[from] ServerError),
    #[error("cannot resolve: {0}")]
    Resolve(std::io::Error),
    #[error("the name has no address")]
    NoAddress,
    #[error("{what} failed: {source}")]
    Io { what: &'static str, source: std::io::Error },
    #[error("answered {0:?} instead of 200")]
    Refused(String),
    #[error("no answer after {0} tries")]
    NoAnswer(u32),
    #[error("ranking time is up")]
    Deadline,
}

/// Measures every broker's distance in parallel and returns them nearest first.
///
/// `brokers` are server strings (`host`, `a.b.c.d` or `[v6]`, optional `:port`), at most
/// [`MAX_BROKERS`](tsp_proto::types::MAX_BROKERS) of them in practice (the redirection
/// parser enforces it). `want_v6` says which family the TSP transport needs: a broker whose
/// address is of the other family starts at [`WRONG_FAMILY_PENALTY`]; names are resolved
/// preferring the needed family.
///
/// Returns one [`Probe`] per input, sorted by distance. The sort is stable: equal distances
/// (typically several silent brokers at exactly 20 s) keep their input order. gogoc's
/// insertion sort puts a broker before the first one at an equal or greater distance, so its
/// ties come out reversed; keeping the broker's own order is the more useful choice.
///
/// Never takes (much) longer than `opts.timeout × opts.tries`.
pub async fn rank(brokers: &[String], want_v6: bool, opts: &RankOptions) -> Vec<Probe> {
    let tries = opts.tries.max(1);
    let start = Instant::now();
    let budget = opts.timeout.saturating_mul(tries);
    // An absurd budget cannot overflow the clock; a year is "no limit".
    let deadline = start
        .checked_add(budget)
        .unwrap_or_else(|| start + Duration::from_secs(365 * 86_400));
    let probes = brokers.iter().map(|server| async move {
        let (wrong_family, result) = probe(server, want_v6, opts, tries, start, deadline).await;
        let base = if wrong_family {
            WRONG_FAMILY_PENALTY
        } else {
            Duration::ZERO
        };
        let (distance, answered) = match &result {
            Ok(rtt) => (base + *rtt, true),
            Err(_) => (base + NO_ANSWER_PENALTY, false),
        };
        let host_answered = answered || result.as_ref().is_err_and(ProbeError::host_answered);
        match result {
            Ok(rtt) => tracing::debug!(server, ?rtt, wrong_family, "broker answered the echo request"),
            Err(e) => tracing::debug!(server, wrong_family, "broker did not answer the echo request: {e}"),
        }
        Probe {
            server: server.clone(),
            distance,
            answered,
            host_answered,
        }
    });
    let mut ranked = join_all(probes).await;
    // `sort_by_key` is stable: ties stay in input order.
    ranked.sort_by_key(|p| p.distance);
    ranked
}

/// Resolves and probes one broker. Returns whether its address is of the wrong family
/// (known once resolved) and the RTT or why there is none.
async fn probe(
    server: &str,
    want_v6: bool,
    opts: &RankOptions,
    tries: u32,
    epoch: Instant,
    deadline: Instant,
) -> (bool, Result<Duration, ProbeError>) {
    let (addr, wrong_family) = match timeout_at(deadline, resolve(server, want_v6, opts.port)).await {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => return (false, Err(e)),
        Err(_) => return (false, Err(ProbeError::Deadline)),
    };
    let result = match timeout_at(deadline, echo(addr, opts.timeout, tries, epoch, deadline)).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Deadline),
    };
    (wrong_family, result)
}

/// The address to probe: the first one of the needed family, else the first one at all
/// (flagged as the wrong family).
async fn resolve(server: &str, want_v6: bool, default_port: u16) -> Result<(SocketAddr, bool), ProbeError> {
    let (host, port) = split_server(server)?;
    let port = port.unwrap_or(default_port);
    let addrs: Vec<SocketAddr> = match host {
        Host::V4(a) => vec![SocketAddr::from((a, port))],
        Host::V6(a) => vec![SocketAddr::from((a, port))],
        Host::Name(name) => tokio::net::lookup_host((name.as_str(), port))
            .await
            .map_err(ProbeError::Resolve)?
            .collect(),
    };
    if let Some(a) = addrs.iter().find(|a| a.is_ipv6() == want_v6) {
        return Ok((*a, false));
    }
    addrs.first().map(|a| (*a, true)).ok_or(ProbeError::NoAddress)
}

/// Sends the echo request up to `tries` times, each attempt waiting `timeout` (cut short by
/// `deadline`), and returns the time from the answered transmission to the answer.
async fn echo(
    addr: SocketAddr,
    timeout: Duration,
    tries: u32,
    epoch: Instant,
    deadline: Instant,
) -> Result<Duration, ProbeError> {
    let local = if addr.is_ipv6() {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    };
    let io = |what| move |source| ProbeError::Io { what, source };
    let sock = UdpSocket::bind(local).await.map_err(io("bind"))?;
    // Connected: the kernel drops datagrams from anyone else, and ICMP errors surface.
    sock.connect(addr).await.map_err(io("connect"))?;
    let mut buf = vec![0u8; HEADER_LEN + MAX_MESSAGE];
    // (timestamp, send time) of every transmission: the echoed timestamp tells which one a
    // late answer belongs to (retransmissions share the sequence number).
    let mut sent: Vec<(u32, Instant)> = Vec::new();
    for _ in 0..tries {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        // Milliseconds since the ranking started, like gogoc's engine clock; wraps like the
        // 32-bit wire field.
        let timestamp = now.duration_since(epoch).as_millis() as u32;
        sock.send(&datagram(
            Header {
                seq: FIRST_SEQ,
                timestamp,
            },
            ECHO_REQUEST,
        ))
        .await
        .map_err(io("send"))?;
        sent.push((timestamp, now));
        let attempt_end = (now + timeout).min(deadline);
        loop {
            let n = match timeout_at(attempt_end, sock.recv(&mut buf)).await {
                Err(_) => break,
                // Typically ECONNREFUSED from an ICMP port unreachable: nobody listens there.
                Ok(Err(e)) => {
                    return Err(ProbeError::Io {
                        what: "receive",
                        source: e,
                    });
                }
                Ok(Ok(n)) => n,
            };
            let at = Instant::now();
            // Like the real client: anything but our sequence is skipped and we keep waiting.
            let Some((hdr, payload)) = buf.get(..n).and_then(Header::decode) else {
                continue;
            };
            if hdr.seq != FIRST_SEQ {
                continue;
            }
            // Our sequence but not `200`: the broker is there and said no; retrying would
            // only get the same answer.
            if !payload.starts_with(b"200") {
                let status = String::from_utf8_lossy(&payload[..payload.len().min(40)]);
                return Err(ProbeError::Refused(status.trim_end().to_owned()));
            }
            let from = sent
                .iter()
                .rev()
                .find(|(ts, _)| *ts == hdr.timestamp)
                .map_or(now, |(_, t)| *t);
            return Ok(at.saturating_duration_since(from));
        }
    }
    Err(ProbeError::NoAnswer(sent.len() as u32))
}

/// Whether the broker at `addr` answers one `ECHO REQUEST` within `timeout`: the supervisor's
/// cheap check, during a path outage, that negotiating again can succeed. An answer other than
/// `200`, or an ICMP port unreachable (a TCP-only broker), also proves the path.
pub async fn reachable(addr: SocketAddr, timeout: Duration) -> bool {
    let start = Instant::now();
    match echo(addr, timeout, 1, start, start + timeout).await {
        Ok(_) => true,
        Err(e) => e.host_answered(),
    }
}

impl ProbeError {
    /// The broker's host answered although no broker did (see [`Probe::host_answered`]).
    fn host_answered(&self) -> bool {
        match self {
            Self::Refused(_) => true,
            Self::Io { source, .. } => source.kind() == std::io::ErrorKind::ConnectionRefused,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// How a test broker answers echo requests.
    #[derive(Clone, Copy)]
    enum Behaviour {
        /// `200 OK` after the given delay.
        Answer(Duration),
        /// Never answers.
        Silent,
        /// Answers `200` but with the next sequence number.
        WrongSeq,
        /// Answers `500 Server error`.
        Refuse,
    }

    /// Requests a test broker received, in order.
    type Seen = Arc<Mutex<Vec<Vec<u8>>>>;

    fn count(seen: &Seen) -> usize {
        seen.lock().map(|v| v.len()).unwrap_or(usize::MAX)
    }

    /// A broker on 127.0.0.1; returns its server string and the requests it receives.
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
                let mut reply = request.get(..HEADER_LEN).unwrap_or_default().to_vec();
                let sock = sock.clone();
                // Each answer from its own task, so a delayed one does not hold up the next.
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
        (format!("{addr}"), seen)
    }

    fn opts(timeout_ms: u64, tries: u32) -> RankOptions {
        RankOptions {
            timeout: Duration::from_millis(timeout_ms),
            tries,
            port: TSP_PORT,
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

    #[test]
    fn defaults() {
        let d = RankOptions::default();
        assert_eq!((d.timeout, d.tries, d.port), (Duration::from_secs(2), 3, 3653));
    }

    #[tokio::test]
    async fn nearest_first() {
        let (slow, _) = responder(Behaviour::Answer(Duration::from_millis(150))).await;
        let (fast, _) = responder(Behaviour::Answer(Duration::ZERO)).await;
        let (silent, _) = responder(Behaviour::Silent).await;
        let list = vec![silent.clone(), slow.clone(), fast.clone()];
        let ranked = guarded(&list, false, opts(500, 2)).await;
        assert_eq!(servers(&ranked), [fast.as_str(), slow.as_str(), silent.as_str()]);
        assert!(ranked[0].answered && ranked[1].answered && !ranked[2].answered);
        assert!(ranked[1].distance >= Duration::from_millis(150));
        assert!(ranked[1].distance < NO_ANSWER_PENALTY);
        assert_eq!(ranked[2].distance, NO_ANSWER_PENALTY);
    }

    #[tokio::test]
    async fn wire_format() {
        let (silent, seen) = responder(Behaviour::Silent).await;
        guarded(std::slice::from_ref(&silent), false, opts(100, 2)).await;
        let seen = seen.lock().expect("requests").clone();
        assert_eq!(seen.len(), 2);
        for d in &seen {
            assert_eq!(d.len(), 20);
            // Sequence 0xF0 with the control nibble, then the 12-byte payload.
            assert_eq!(&d[..4], &[0xF0, 0, 0, 0xF0]);
            assert_eq!(&d[8..], b"ECHO REQUEST");
        }
        // The timestamp is refreshed on the retransmission.
        let ts = |d: &[u8]| u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
        assert!(ts(&seen[1]) >= ts(&seen[0]) + 90, "{} {}", ts(&seen[0]), ts(&seen[1]));
    }

    #[tokio::test]
    async fn silent_broker_is_retried_then_penalised() {
        let (silent, seen) = responder(Behaviour::Silent).await;
        let ranked = guarded(std::slice::from_ref(&silent), false, opts(100, 3)).await;
        assert_eq!(
            ranked,
            [Probe {
                server: silent,
                distance: NO_ANSWER_PENALTY,
                answered: false,
                host_answered: false,
            }]
        );
        assert_eq!(count(&seen), 3);
    }

    /// A host without a broker refuses at once (ICMP port unreachable): no answer, but the
    /// host is there (what the supervisor waits for while a broker comes up).
    #[tokio::test]
    async fn a_closed_port_is_a_host_that_answered() {
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let server = closed.local_addr().unwrap().to_string();
        drop(closed);
        let ranked = rank(std::slice::from_ref(&server), false, &opts(500, 1)).await;
        assert!(!ranked[0].answered && ranked[0].host_answered, "{ranked:?}");
        assert!(reachable(server.parse().unwrap(), Duration::from_millis(500)).await);
    }

    #[tokio::test]
    async fn wrong_sequence_is_ignored() {
        let (wrong, seen) = responder(Behaviour::WrongSeq).await;
        let ranked = guarded(std::slice::from_ref(&wrong), false, opts(100, 2)).await;
        assert!(!ranked[0].answered);
        assert_eq!(ranked[0].distance, NO_ANSWER_PENALTY);
        assert_eq!(count(&seen), 2, "kept trying after the wrong sequence");
    }

    #[tokio::test]
    async fn refusal_ends_the_probe() {
        let (refusing, seen) = responder(Behaviour::Refuse).await;
        let ranked = guarded(std::slice::from_ref(&refusing), false, opts(2000, 3)).await;
        assert!(!ranked[0].answered);
        assert_eq!(ranked[0].distance, NO_ANSWER_PENALTY);
        assert_eq!(count(&seen), 1);
    }

    #[tokio::test]
    async fn wrong_family_starts_at_30_s() {
        let (v4, _) = responder(Behaviour::Answer(Duration::ZERO)).await;
        let (silent, _) = responder(Behaviour::Silent).await;
        // The transport needs IPv6; both brokers are IPv4 only.
        let ranked = guarded(&[v4.clone(), silent.clone()], true, opts(100, 1)).await;
        assert_eq!(servers(&ranked), [v4.as_str(), silent.as_str()]);
        assert!(ranked[0].answered);
        assert!(ranked[0].distance > WRONG_FAMILY_PENALTY);
        assert!(ranked[0].distance < WRONG_FAMILY_PENALTY + NO_ANSWER_PENALTY);
        assert_eq!(ranked[1].distance, WRONG_FAMILY_PENALTY + NO_ANSWER_PENALTY);
    }

    #[tokio::test]
    async fn errors_and_bad_names_are_penalised() {
        // A port nobody listens on: ICMP port unreachable ends the probe.
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let closed_addr = closed.local_addr().expect("addr").to_string();
        drop(closed);
        let (fast, _) = responder(Behaviour::Answer(Duration::ZERO)).await;
        let list = vec![
            "not a server!".to_owned(),
            closed_addr.clone(),
            "no-such-broker.invalid".to_owned(),
            fast.clone(),
        ];
        let ranked = guarded(&list, false, opts(300, 2)).await;
        assert_eq!(ranked[0].server, fast);
        for p in &ranked[1..] {
            assert!(!p.answered, "{p:?}");
            assert_eq!(p.distance, NO_ANSWER_PENALTY, "{p:?}");
        }
        // Ties keep input order.
        assert_eq!(
            servers(&ranked[1..]),
            ["not a server!", closed_addr.as_str(), "no-such-broker.invalid"]
        );
    }

    #[tokio::test]
    async fn names_resolve_to_the_needed_family() {
        let (fast, _) = responder(Behaviour::Answer(Duration::ZERO)).await;
        let port = fast.rsplit_once(':').map(|(_, p)| p).unwrap_or_default();
        let ranked = guarded(&[format!("localhost:{port}")], false, opts(1000, 2)).await;
        assert!(ranked[0].answered, "{ranked:?}");
        assert!(ranked[0].distance < NO_ANSWER_PENALTY);
    }

    #[tokio::test]
    async fn default_port_applies_without_one() {
        let (fast, _) = responder(Behaviour::Answer(Duration::ZERO)).await;
        let port: u16 = fast.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("port");
        let o = RankOptions { port, ..opts(1000, 2) };
        let ranked = guarded(&["127.0.0.1".to_owned()], false, o).await;
        assert!(ranked[0].answered);
    }

    #[tokio::test]
    async fn ties_keep_input_order() {
        let (a, _) = responder(Behaviour::Silent).await;
        let (b, _) = responder(Behaviour::Silent).await;
        let (c, _) = responder(Behaviour::Silent).await;
        let ranked = guarded(&[b.clone(), c.clone(), a.clone()], false, opts(50, 1)).await;
        assert_eq!(servers(&ranked), [b.as_str(), c.as_str(), a.as_str()]);
    }

    #[tokio::test]
    async fn many_silent_brokers_are_probed_in_parallel() {
        let mut list = Vec::new();
        let mut counts = Vec::new();
        for _ in 0..50 {
            let (s, c) = responder(Behaviour::Silent).await;
            list.push(s);
            counts.push(c);
        }
        let started = std::time::Instant::now();
        let ranked = guarded(&list, false, opts(200, 2)).await;
        assert_eq!(ranked.len(), 50);
        assert!(ranked.iter().all(|p| !p.answered));
        assert_eq!(servers(&ranked), list.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(counts.iter().all(|c| count(c) == 2));
        // Sequential probing would take 50 × 400 ms; parallel about 400 ms. The margin is
        // wide so that a loaded machine cannot fail this.
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn empty_list() {
        assert!(guarded(&[], false, RankOptions::default()).await.is_empty());
    }

    #[tokio::test]
    async fn late_answer_to_an_earlier_transmission_counts_from_that_one() {
        // Answers each request after 250 ms while attempts last 100 ms: the answer to the
        // first transmission arrives during a later attempt.
        let (slow, _) = responder(Behaviour::Answer(Duration::from_millis(250))).await;
        let ranked = guarded(std::slice::from_ref(&slow), false, opts(100, 5)).await;
        assert!(ranked[0].answered);
        assert!(
            ranked[0].distance >= Duration::from_millis(250),
            "{:?}",
            ranked[0].distance
        );
    }
}
