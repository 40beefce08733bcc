//! A long TCP transfer through a tunnel, to show it survives a network change on one
//! connection (issue 13 item 3). The receiver and the sender are this test binary run again in
//! a namespace with `TSP_STREAM` set (`recv <listen>` / `send <target> <seconds>`); a test crate
//! that uses [`Stream`] has `#[test] fn stream_helper() { netns::stream::helper() }`.
//!
//! The sender writes at a steady ~4 MB/s (enough to keep TCP busy, little enough for a debug
//! build on two cores) for the given time, then closes; the receiver reports the bytes, how the
//! connection ended, and the longest pause between two reads.

use std::io::{Read, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{Host, Proc};

const CHUNK: usize = 16 * 1024;
const PACE: Duration = Duration::from_millis(4);

/// The helper's body: runs the role `TSP_STREAM` names, or returns at once.
pub fn helper() {
    let Ok(role) = std::env::var("TSP_STREAM") else { return };
    let args: Vec<&str> = role.split_whitespace().collect();
    match args.as_slice() {
        ["recv", listen] => receive(listen),
        ["send", target, secs] => send(target, Duration::from_secs(secs.parse().unwrap())),
        _ => panic!("TSP_STREAM={role}?"),
    }
}

fn epoch_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()
}

fn receive(listen: &str) {
    let l = std::net::TcpListener::bind(listen).unwrap();
    println!("stream: listening");
    let (mut s, peer) = l.accept().unwrap();
    println!("stream: connection from {peer}");
    let mut buf = vec![0u8; 256 * 1024];
    let (mut total, mut last, mut gap, mut gap_end) = (0u64, None::<Instant>, Duration::ZERO, 0u128);
    let end = loop {
        match s.read(&mut buf) {
            Ok(0) => break "eof".to_owned(),
            Ok(n) => {
                let now = Instant::now();
                if let Some(t) = last
                    && now - t > gap
                {
                    gap = now - t;
                    gap_end = epoch_ms();
                }
                last = Some(now);
                total += n as u64;
            }
            Err(e) => break format!("error {e}"),
        }
    };
    println!(
        "stream: received {total} bytes; end {end}; longest gap {} ms ending at {gap_end}",
        gap.as_millis()
    );
}

fn send(target: &str, secs: Duration) {
    let mut s = std::net::TcpStream::connect(target).unwrap();
    println!("stream: connected from {}", s.local_addr().unwrap());
    let chunk = vec![0x5au8; CHUNK];
    let (start, mut total) = (Instant::now(), 0u64);
    let mut next = start;
    while start.elapsed() < secs {
        if let Err(e) = s.write_all(&chunk) {
            println!("stream: error {e} after {total} bytes");
            return;
        }
        total += CHUNK as u64;
        next += PACE;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    println!("stream: sent {total} bytes");
}

/// A running transfer from one host to another.
pub struct Stream {
    rx: Proc,
    tx: Proc,
}

/// What the receiver saw.
#[derive(Debug)]
pub struct Report {
    pub sent: u64,
    pub received: u64,
    /// Ended with the sender's FIN (not a reset or a timeout).
    pub clean: bool,
    pub longest_gap: Duration,
    /// When that gap ended (ms since the epoch).
    pub gap_end_ms: u128,
    pub log: String,
}

impl Stream {
    /// Starts a receiver on `to` at `listen` and a sender on `from` to `target`, for `secs`.
    pub fn start(from: &Host, to: &Host, listen: &str, target: &str, secs: u64) -> Stream {
        let me = std::env::current_exe().unwrap();
        let me = me.to_str().unwrap();
        let args = ["--exact", "stream_helper", "--nocapture", "--test-threads=1"];
        let rx = to
            .spawn_env(me, &args, &[("TSP_STREAM", &format!("recv {listen}"))])
            .unwrap();
        rx.wait_for_output("stream: listening", Duration::from_secs(10))
            .unwrap();
        let tx = from
            .spawn_env(me, &args, &[("TSP_STREAM", &format!("send {target} {secs}"))])
            .unwrap();
        rx.wait_for_output("stream: connection from", Duration::from_secs(10))
            .unwrap();
        Stream { rx, tx }
    }

    /// Waits for both ends (up to `timeout`) and reads the receiver's report.
    pub fn finish(self, timeout: Duration) -> Report {
        let _ = self.rx.wait_for_output("stream: received", timeout);
        let _ = self.tx.wait_exit(Duration::from_secs(5));
        let (rx, tx) = (self.rx.output(), self.tx.output());
        let log = format!("receiver:\n{rx}\nsender:\n{tx}");
        let field = |text: &str, after: &str| -> Option<u128> {
            let rest = &text[text.find(after)? + after.len()..];
            rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        };
        Report {
            sent: field(&tx, "stream: sent ").unwrap_or(0) as u64,
            received: field(&rx, "stream: received ").unwrap_or(0) as u64,
            clean: rx.contains("; end eof;"),
            longest_gap: Duration::from_millis(field(&rx, "longest gap ").map_or(u64::MAX, |g| g as u64)),
            gap_end_ms: field(&rx, "ending at ").unwrap_or(0),
            log,
        }
    }
}

impl Report {
    /// Panics unless the transfer ended cleanly on its one connection with every byte sent
    /// received and never paused longer than `max_gap` (`what` names the case).
    pub fn assert_carried(&self, what: &str, max_gap: Duration) {
        assert!(self.clean, "{what}: the transfer did not end cleanly:\n{}", self.log);
        assert!(
            self.sent > 0 && self.received == self.sent,
            "{what}: bytes lost:\n{}",
            self.log
        );
        assert!(
            self.longest_gap <= max_gap,
            "{what}: the transfer stalled {:?}:\n{}",
            self.longest_gap,
            self.log
        );
    }
}

/// Now, in ms since the epoch (to compare with [`Report::gap_end_ms`]).
pub fn now_ms() -> u128 {
    epoch_ms()
}
