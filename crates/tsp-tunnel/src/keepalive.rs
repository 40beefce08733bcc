//! Sans-IO tunnel keepalive (docs/tsp-wire.md §5), as gogoc 1.2 / gw6c 6.0 do it: an ICMPv6 echo
//! request (ICMPv4 for v4v6) to the server's keepalive address every server-given interval, the
//! first one a full interval after the tunnel came up; a reply is on time when it arrives within
//! 5000 ms of its request; 3 consecutive missing or late replies mean the tunnel is dead.
//!
//! On top of that, a dead path is found from evidence rather than a faster timer
//! ([`ProbeSettings`]): when packets went into the tunnel and nothing at all came back from the
//! broker for `after` (3 s), an extra echo (a probe) goes out at once, each with a short
//! `timeout` (1 s), and `count` (3) unanswered probes in a row declare the path dead. Any
//! packet from the broker ends the probing. An idle tunnel sends nothing beyond the interval.
//! The datapath reports its traffic with [`Keepalive::on_sent`] and [`Keepalive::on_received`].
//!
//! The caller owns the clock and the datapath: it sleeps until [`Keepalive::next_deadline`],
//! calls [`Keepalive::on_deadline`] and writes the packet into the tunnel on [`Action::Send`],
//! and offers every packet coming out of the tunnel to [`Keepalive::on_packet`], swallowing the
//! ones it claims.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::icmp;

/// gogoc's on-time limit for an echo reply.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_millis(5000);
/// gogoc's number of consecutive missing/late replies that declares the tunnel dead.
pub const DEFAULT_MAX_MISSES: u32 = 3;
/// Bounds applied to the interval: 0 would spin, and a huge one would overflow `Instant`.
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Probing defaults: 3 s of unanswered traffic, 1 s per probe, 3 probes: a path that dies under
/// traffic is declared dead about 6 s after the first packet that got no answer.
pub const DEFAULT_PROBE_AFTER: Duration = Duration::from_secs(3);
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_PROBES: u32 = 3;

/// Evidence-driven dead-path detection (gogoc.conf `keepalive_probe_after`,
/// `keepalive_probe_timeout`, `keepalive_probes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSettings {
    /// Probe when traffic sent into the tunnel got nothing back for this long; `None`: never
    /// probe (only the interval's keepalive judges the path).
    pub after: Option<Duration>,
    /// A probe not answered within this long is a miss.
    pub timeout: Duration,
    /// This many consecutive missed probes declare the path dead (0 behaves like 1).
    pub count: u32,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        Self {
            after: Some(DEFAULT_PROBE_AFTER),
            timeout: DEFAULT_PROBE_TIMEOUT,
            count: DEFAULT_PROBES,
        }
    }
}

/// Echo data. gogoc sent a `struct timeval`; the server only echoes it back, so a fixed marker
/// of the same 16 bytes is as good and is recognisable in captures.
pub const ECHO_PAYLOAD: &[u8; 16] = b"nm-tsp keepalive";
/// How many sent requests are remembered, to recognise (and swallow) late or duplicate replies.
const HISTORY: usize = 32;

/// What the caller must do after [`Keepalive::on_deadline`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `out` holds an echo request packet to write into the tunnel.
    Send,
    /// `misses` consecutive replies were missing or late: tear the tunnel down. Sticky: every
    /// later call returns it again.
    Dead { misses: u32 },
    /// Nothing to do until the next deadline.
    Wait,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Answered,
    /// Counted as a miss (no reply in time, or a late one).
    Missed,
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    seq: u16,
    at: Instant,
    state: State,
    /// A probe (judged by the probe timeout and counted among the probe misses).
    probe: bool,
}

/// A probing episode: traffic went unanswered for `probe.after`.
#[derive(Debug, Clone, Copy)]
struct Probing {
    misses: u32,
    /// A probe is out and not yet judged.
    outstanding: bool,
    /// When the next probe goes (once the previous one was judged a miss).
    due: Instant,
}

/// Keepalive state machine for one tunnel.
///
/// `reply_timeout` and `max_misses` start at gogoc's 5 s and 3 ([`DEFAULT_REPLY_TIMEOUT`],
/// [`DEFAULT_MAX_MISSES`]) and may be changed at any time, e.g. by tests or a faster
/// dead-peer detection option (shorter interval, timeout and/or fewer misses). With an interval
/// shorter than the timeout several requests are outstanding at once; each is judged on its own.
#[derive(Debug, Clone)]
pub struct Keepalive {
    /// A reply arriving this long or longer after its request is late (a miss).
    pub reply_timeout: Duration,
    /// This many consecutive misses declare the tunnel dead (0 behaves like 1).
    pub max_misses: u32,
    /// Evidence-driven probing; may be changed at any time.
    pub probe: ProbeSettings,
    interval: Duration,
    target: IpAddr,
    source: IpAddr,
    id: u16,
    next_send: Instant,
    next_seq: u16,
    sent: VecDeque<Sent>,
    misses: u32,
    last_rtt: Option<Duration>,
    dead_at: Option<Instant>,
    /// The first packet sent into the tunnel since the broker was last heard from.
    unanswered_since: Option<Instant>,
    probing: Option<Probing>,
    probes_sent: u64,
}

/// `t + d`, saturating instead of panicking on overflow (a deadline that far away never comes).
fn add(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).or_else(|| t.checked_add(MAX_INTERVAL)).unwrap_or(t)
}

impl Keepalive {
    /// Starts the keepalive at `now` (the tunnel is up): the first echo goes out at
    /// `now + interval`. `source` must be of the same family as `target`; echo requests carry
    /// identifier `id` (gogoc used its pid) and sequence numbers 0, 1, 2, …
    pub fn new(interval: Duration, target: IpAddr, source: IpAddr, id: u16, now: Instant) -> Self {
        let interval = interval.clamp(MIN_INTERVAL, MAX_INTERVAL);
        Keepalive {
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
            max_misses: DEFAULT_MAX_MISSES,
            probe: ProbeSettings::default(),
            interval,
            target,
            source,
            id,
            next_send: add(now, interval),
            next_seq: 0,
            sent: VecDeque::with_capacity(HISTORY),
            misses: 0,
            last_rtt: None,
            dead_at: None,
            unanswered_since: None,
            probing: None,
            probes_sent: 0,
        }
    }

    /// The datapath sent traffic (not the keepalive's own echoes) toward the broker at `now`.
    pub fn on_sent(&mut self, now: Instant) {
        if self.unanswered_since.is_none() {
            self.unanswered_since = Some(now);
        }
    }

    /// Something came from the broker at `now` (any packet, ours or not): the path works, so
    /// a probing episode ends and the unanswered-traffic clock stops.
    pub fn on_received(&mut self, _now: Instant) {
        self.unanswered_since = None;
        self.probing = None;
    }

    /// Whether probes are out (traffic went unanswered for the probe delay).
    pub fn probing(&self) -> bool {
        self.probing.is_some()
    }

    /// Probes sent since the start.
    pub fn probes_sent(&self) -> u64 {
        self.probes_sent
    }

    fn timeout_of(&self, s: &Sent) -> Duration {
        if s.probe {
            self.probe.timeout
        } else {
            self.reply_timeout
        }
    }

    /// When a probe is due (`None`: none is).
    fn probe_due(&self) -> Option<Instant> {
        match self.probing {
            Some(p) if p.outstanding => None,
            Some(p) => Some(p.due),
            None => {
                let after = self.probe.after?;
                self.unanswered_since.map(|t| add(t, after))
            }
        }
    }

    /// The interval in use (after clamping to [`MIN_INTERVAL`]..=[`MAX_INTERVAL`]).
    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn target(&self) -> IpAddr {
        self.target
    }

    pub fn id(&self) -> u16 {
        self.id
    }

    /// Consecutive missing/late replies so far.
    pub fn misses(&self) -> u32 {
        self.misses
    }

    /// Round-trip time of the latest on-time reply.
    pub fn last_rtt(&self) -> Option<Duration> {
        self.last_rtt
    }

    /// Whether the tunnel has been declared dead.
    pub fn is_dead(&self) -> bool {
        self.dead_at.is_some()
    }

    /// When [`Keepalive::on_deadline`] must be called next: the next send time or the earliest
    /// reply timeout, whichever comes first (or the time of death, once dead).
    pub fn next_deadline(&self) -> Instant {
        if let Some(t) = self.dead_at {
            return t;
        }
        let first = self.probe_due().map_or(self.next_send, |p| p.min(self.next_send));
        self.sent
            .iter()
            .filter(|s| s.state == State::Pending)
            .map(|s| add(s.at, self.timeout_of(s)))
            .fold(first, Instant::min)
    }

    fn probe_miss(&mut self, now: Instant) {
        let Some(p) = self.probing.as_mut() else { return };
        p.misses = p.misses.saturating_add(1);
        p.outstanding = false;
        p.due = now;
        if p.misses >= self.probe.count.max(1) && self.dead_at.is_none() {
            self.misses = p.misses;
            self.dead_at = Some(now);
        }
    }

    fn miss(&mut self, now: Instant) {
        self.misses = self.misses.saturating_add(1);
        if self.misses >= self.max_misses.max(1) && self.dead_at.is_none() {
            self.dead_at = Some(now);
        }
    }

    /// Handles the timers due at `now`: counts requests whose reply did not come in time, then
    /// builds the next echo request into `out` if one is due. `out` is cleared and holds a
    /// packet only when `Send` is returned.
    pub fn on_deadline(&mut self, now: Instant, out: &mut Vec<u8>) -> Action {
        out.clear();
        if self.dead_at.is_none() {
            for i in 0..self.sent.len() {
                let s = self.sent[i];
                if s.state == State::Pending && now >= add(s.at, self.timeout_of(&s)) {
                    self.sent[i].state = State::Missed;
                    if s.probe {
                        self.probe_miss(now);
                    } else {
                        self.miss(now);
                    }
                }
            }
        }
        if self.dead_at.is_some() {
            return Action::Dead { misses: self.misses };
        }
        let probe = self.probe_due().is_some_and(|t| now >= t);
        if !probe && now < self.next_send {
            return Action::Wait;
        }
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        match (self.source, self.target) {
            (IpAddr::V6(s), IpAddr::V6(t)) => icmp::echo_request_v6(s, t, self.id, seq, ECHO_PAYLOAD, out),
            (IpAddr::V4(s), IpAddr::V4(t)) => icmp::echo_request_v4(s, t, self.id, seq, ECHO_PAYLOAD, out),
            // Mixed families cannot form a packet; sending nothing lets the misses pile up,
            // which is what an unreachable peer looks like anyway.
            _ => {}
        }
        if self.sent.len() == HISTORY
            && let Some(old) = self.sent.pop_front()
            && old.state == State::Pending
        {
            // Only reachable with a timeout over 32 intervals: forget it as a miss.
            if old.probe {
                self.probe_miss(now);
            } else {
                self.miss(now);
            }
        }
        self.sent.push_back(Sent {
            seq,
            at: now,
            state: State::Pending,
            probe,
        });
        if probe {
            self.probes_sent += 1;
            let p = self.probing.get_or_insert(Probing {
                misses: 0,
                outstanding: false,
                due: now,
            });
            p.outstanding = true;
            if self.dead_at.is_some() {
                return Action::Dead { misses: self.misses };
            }
            return if out.is_empty() { Action::Wait } else { Action::Send };
        }
        // Keep the gogoc cadence relative to the schedule, but do not burst after a stall
        // (e.g. a suspended machine): skip the sends that were missed.
        self.next_send = add(self.next_send, self.interval);
        if self.next_send <= now {
            self.next_send = add(now, self.interval);
        }
        if self.dead_at.is_some() {
            return Action::Dead { misses: self.misses };
        }
        if out.is_empty() { Action::Wait } else { Action::Send }
    }

    /// Offers a packet that came out of the tunnel. Returns `true` when it is a reply to one
    /// of our echo requests (same family, our identifier, a sequence number we sent): the
    /// datapath then swallows it. An on-time reply resets the miss count; a late one counts as
    /// a miss (unless its request was already counted when it timed out). Duplicates are
    /// claimed but change nothing.
    pub fn on_packet(&mut self, pkt: &[u8], now: Instant) -> bool {
        let Some(reply) = icmp::parse_echo_reply(pkt) else {
            return false;
        };
        if reply.id != self.id || reply.src.is_ipv6() != self.target.is_ipv6() {
            return false;
        }
        let Some(i) = self.sent.iter().position(|s| s.seq == reply.seq) else {
            return false;
        };
        let s = self.sent[i];
        if s.state != State::Pending || self.dead_at.is_some() {
            return true;
        }
        let rtt = now.saturating_duration_since(s.at);
        if s.probe {
            // Any answer proves the path, late or not.
            self.sent[i].state = State::Answered;
            self.on_received(now);
            if rtt < self.reply_timeout {
                self.last_rtt = Some(rtt);
            }
            return true;
        }
        if rtt < self.reply_timeout {
            self.sent[i].state = State::Answered;
            self.misses = 0;
            self.last_rtt = Some(rtt);
        } else {
            self.sent[i].state = State::Missed;
            self.miss(now);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0x5c0, 0x1000, 0xb, 0, 0, 0, 0x1b);
    const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0x5c0, 0x1000, 0xb, 0, 0, 0, 0x1c);
    const SERVER4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const CLIENT4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    const ID: u16 = 4242;
    const KA: Duration = Duration::from_secs(30);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn ka6(t0: Instant) -> Keepalive {
        Keepalive::new(KA, SERVER6.into(), CLIENT6.into(), ID, t0)
    }

    /// What the server does with our request: the echo reply packet.
    fn answer(req: &[u8]) -> Vec<u8> {
        let mut rep = Vec::new();
        assert!(icmp::echo_reply_for(req, &mut rep));
        rep
    }

    /// Runs deadlines up to and including `until`, replying to each request after `rtt`
    /// (`None`: no reply). Returns the (time, action) of every deadline that was not `Wait`.
    fn drive(
        ka: &mut Keepalive,
        until: Instant,
        mut rtt: impl FnMut(u16) -> Option<Duration>,
    ) -> Vec<(Instant, Action)> {
        let mut log = Vec::new();
        let mut pending: Vec<(Instant, Vec<u8>)> = Vec::new();
        let mut out = Vec::new();
        loop {
            let next_reply = pending.iter().map(|p| p.0).min();
            let dl = ka.next_deadline();
            if let Some(r) = next_reply.filter(|r| *r <= dl && *r <= until) {
                let i = pending.iter().position(|p| p.0 == r).unwrap();
                let (at, pkt) = pending.swap_remove(i);
                assert!(ka.on_packet(&pkt, at));
                continue;
            }
            if dl > until {
                return log;
            }
            let a = ka.on_deadline(dl, &mut out);
            match a {
                Action::Send => {
                    let req = icmp::parse_echo_request(&out).unwrap();
                    assert_eq!((req.id, req.dst), (ID, ka.target()));
                    if let Some(r) = rtt(req.seq) {
                        pending.push((dl + r, answer(&out)));
                    }
                    log.push((dl, a));
                }
                Action::Dead { .. } => {
                    log.push((dl, a));
                    return log;
                }
                Action::Wait => {}
            }
        }
    }

    #[test]
    fn first_echo_one_interval_after_start() {
        let t0 = Instant::now();
        let mut ka = ka6(t0);
        let mut out = Vec::new();
        assert_eq!(ka.next_deadline(), t0 + KA);
        assert_eq!(
            ka.on_deadline(t0 + KA - Duration::from_nanos(1), &mut out),
            Action::Wait
        );
        assert!(out.is_empty());
        assert_eq!(ka.on_deadline(t0 + KA, &mut out), Action::Send);
        let req = icmp::parse_echo_request(&out).unwrap();
        assert_eq!(
            (req.src, req.dst, req.id, req.seq),
            (CLIENT6.into(), SERVER6.into(), ID, 0)
        );
        assert_eq!(out[7], 64, "hop limit");
        assert_eq!(&out[48..], ECHO_PAYLOAD);
        // Next: the reply deadline of seq 0, then the next send.
        assert_eq!(ka.next_deadline(), t0 + KA + DEFAULT_REPLY_TIMEOUT);
    }

    #[test]
    fn on_time_replies_keep_it_alive_forever() {
        let t0 = Instant::now();
        let mut ka = ka6(t0);
        // 1000 intervals, replies just inside the limit.
        let log = drive(&mut ka, t0 + KA * 1000, |_| Some(ms(4999)));
        assert_eq!(log.len(), 1000);
        for (i, (t, a)) in log.iter().enumerate() {
            assert_eq!(*a, Action::Send);
            assert_eq!(*t, t0 + KA * (i as u32 + 1), "sends every interval");
        }
        assert_eq!(ka.misses(), 0);
        assert_eq!(ka.last_rtt(), Some(ms(4999)));
        assert!(!ka.is_dead());
    }

    #[test]
    fn three_missing_replies_dead_at_third_reply_deadline() {
        let t0 = Instant::now();
        let mut ka = ka6(t0);
        // seq 0 and 1 answered; the last good reply is to the request sent at t0 + 60 s.
        let log = drive(&mut ka, t0 + KA * 100, |seq| (seq < 2).then(|| ms(80)));
        let last_good_send = t0 + KA * 2;
        // Requests at +90, +120, +150 go unanswered; the third one's deadline is +155 s.
        let dead_at = last_good_send + KA * 3 + DEFAULT_REPLY_TIMEOUT;
        assert_eq!(log.last(), Some(&(dead_at, Action::Dead { misses: 3 })));
        assert_eq!(log.iter().filter(|(_, a)| *a == Action::Send).count(), 5);
        // ≈ 95 s after the outage began (just after the last good reply), as gogoc with KA=30.
        assert_eq!(dead_at - (last_good_send + ms(80)), ms(95_000 - 80));

        // One nanosecond earlier it is not dead yet, with two misses counted.
        let mut ka = ka6(t0);
        drive(&mut ka, dead_at - Duration::from_nanos(1), |seq| {
            (seq < 2).then(|| ms(80))
        });
        assert_eq!(ka.misses(), 2);
        assert!(!ka.is_dead());
        assert_eq!(ka.next_deadline(), dead_at);
        let mut out = Vec::new();
        assert_eq!(ka.on_deadline(dead_at, &mut out), Action::Dead { misses: 3 });
        // Sticky.
        assert_eq!(ka.next_deadline(), dead_at);
        assert_eq!(ka.on_deadline(dead_at + KA, &mut out), Action::Dead { misses: 3 });
        assert!(out.is_empty());
    }

    #[test]
    fn a_good_reply_resets_the_count() {
        let t0 = Instant::now();
        let mut ka = ka6(t0);
        // Two misses, one good reply, two misses, one good … never three in a row.
        let log = drive(&mut ka, t0 + KA * 300, |seq| (seq % 3 == 2).then(|| ms(10)));
        assert!(log.iter().all(|(_, a)| *a == Action::Send));
        assert!(ka.misses() <= 2);
    }

    #[test]
    fn late_reply_is_a_miss() {
        let t0 = Instant::now();
        let mut out = Vec::new();
        // Late reply seen before the timer fires: counted on arrival, still claimed.
        let mut ka = ka6(t0);
        assert_eq!(ka.on_deadline(t0 + KA, &mut out), Action::Send);
        let rep = answer(&out);
        assert!(ka.on_packet(&rep, t0 + KA + DEFAULT_REPLY_TIMEOUT));
        assert_eq!(ka.misses(), 1);
        assert_eq!(ka.last_rtt(), None);
        // …and not counted a second time by the timer.
        assert_eq!(ka.on_deadline(t0 + KA + ms(6000), &mut out), Action::Wait);
        assert_eq!(ka.misses(), 1);

        // Late reply after the timer fired: already a miss, claimed, not counted again.
        let mut ka = ka6(t0);
        assert_eq!(ka.on_deadline(t0 + KA, &mut out), Action::Send);
        let rep = answer(&out);
        assert_eq!(ka.on_deadline(t0 + KA + DEFAULT_REPLY_TIMEOUT, &mut out), Action::Wait);
        assert_eq!(ka.misses(), 1);
        assert!(ka.on_packet(&rep, t0 + KA + ms(7000)));
        assert_eq!(ka.misses(), 1);

        // Three late replies in a row kill it, even though every request got an answer.
        let mut ka = ka6(t0);
        let log = drive(&mut ka, t0 + KA * 100, |_| Some(ms(5001)));
        assert_eq!(
            log.last(),
            Some(&(t0 + KA * 3 + DEFAULT_REPLY_TIMEOUT, Action::Dead { misses: 3 }))
        );
    }

    #[test]
    fn duplicate_reply_is_claimed_without_effect() {
        let t0 = Instant::now();
        let mut ka = ka6(t0);
        let mut out = Vec::new();
        ka.on_deadline(t0 + KA, &mut out);
        let rep = answer(&out);
        assert!(ka.on_packet(&rep, t0 + KA + ms(20)));
        assert!(ka.on_packet(&rep, t0 + KA + ms(40)));
        assert_eq!(ka.last_rtt(), Some(ms(20)));
    }

    #[test]
    fn foreign_replies_are_not_ours() {
        let t0 = Instant::now();
        let mut ka = ka6(t0);
        let mut out = Vec::new();
        let mut pkt = Vec::new();
        // Nothing sent yet: even our id is not ours.
        icmp::echo_request_v6(CLIENT6, SERVER6, ID, 0, b"", &mut pkt);
        assert!(!ka.on_packet(&answer(&pkt), t0));
        ka.on_deadline(t0 + KA, &mut out); // seq 0
        let now = t0 + KA + ms(10);
        // Unknown sequence.
        icmp::echo_request_v6(CLIENT6, SERVER6, ID, 1, b"", &mut pkt);
        assert!(!ka.on_packet(&answer(&pkt), now));
        // Other identifier (e.g. the user's own ping through the tunnel).
        icmp::echo_request_v6(CLIENT6, SERVER6, ID + 1, 0, b"", &mut pkt);
        assert!(!ka.on_packet(&answer(&pkt), now));
        // Other family.
        icmp::echo_request_v4(CLIENT4, SERVER4, ID, 0, b"", &mut pkt);
        assert!(!ka.on_packet(&answer(&pkt), now));
        // A request, not a reply; and plain data.
        assert!(!ka.on_packet(&out, now));
        assert!(!ka.on_packet(&[0x60; 60], now));
        assert_eq!((ka.misses(), ka.last_rtt()), (0, None));
        // The real one still matches afterwards.
        assert!(ka.on_packet(&answer(&out), now));
        assert_eq!(ka.last_rtt(), Some(ms(10)));
    }

    #[test]
    fn v4_keepalive() {
        let t0 = Instant::now();
        let mut ka = Keepalive::new(KA, SERVER4.into(), CLIENT4.into(), ID, t0);
        let mut out = Vec::new();
        assert_eq!(ka.on_deadline(t0 + KA, &mut out), Action::Send);
        assert_eq!(out[0] >> 4, 4);
        assert_eq!(
            (out[8], out[9], out[20]),
            (64, 1, 8),
            "TTL, protocol ICMP, echo request"
        );
        let req = icmp::parse_echo_request(&out).unwrap();
        assert_eq!(
            (req.src, req.dst, req.id, req.seq),
            (CLIENT4.into(), SERVER4.into(), ID, 0)
        );
        assert!(ka.on_packet(&answer(&out), t0 + KA + ms(50)));
        assert_eq!(ka.last_rtt(), Some(ms(50)));
        // An ICMPv6 reply with the same id/seq is not ours.
        let mut pkt = Vec::new();
        icmp::echo_request_v6(CLIENT6, SERVER6, ID, 0, b"", &mut pkt);
        assert!(!ka.on_packet(&answer(&pkt), t0 + KA + ms(60)));

        let log = drive(&mut ka, t0 + KA * 10, |seq| (seq < 1).then(|| ms(1)));
        assert_eq!(
            log.last(),
            Some(&(t0 + KA * 4 + DEFAULT_REPLY_TIMEOUT, Action::Dead { misses: 3 }))
        );
    }

    #[test]
    fn tunable_fast_detection() {
        let t0 = Instant::now();
        let mut ka = Keepalive::new(ms(1000), SERVER6.into(), CLIENT6.into(), ID, t0);
        ka.reply_timeout = ms(500);
        ka.max_misses = 2;
        let log = drive(&mut ka, t0 + ms(60_000), |seq| (seq < 3).then(|| ms(499)));
        // Last good request at +3 s; misses for +4 s and +5 s; dead at +5.5 s.
        assert_eq!(log.last(), Some(&(t0 + ms(5500), Action::Dead { misses: 2 })));

        // Interval shorter than the timeout: several requests outstanding, each judged alone.
        let mut ka = Keepalive::new(ms(1000), SERVER6.into(), CLIENT6.into(), ID, t0);
        let log = drive(&mut ka, t0 + ms(100_000), |seq| (seq < 10).then(|| ms(3000)));
        assert_eq!(log.last(), Some(&(t0 + ms(13_000 + 5000), Action::Dead { misses: 3 })));
    }

    #[test]
    fn no_burst_after_a_stall() {
        let t0 = Instant::now();
        let mut ka = ka6(t0);
        ka.max_misses = u32::MAX;
        let mut out = Vec::new();
        // The caller was suspended for ten intervals: one send, then back on a fresh cadence.
        let late = t0 + KA * 10 + ms(7);
        assert_eq!(ka.on_deadline(late, &mut out), Action::Send);
        assert_eq!(ka.on_deadline(late, &mut out), Action::Wait);
        assert_eq!(ka.next_deadline(), late + DEFAULT_REPLY_TIMEOUT);
        ka.on_deadline(late + DEFAULT_REPLY_TIMEOUT, &mut out);
        assert_eq!(ka.next_deadline(), late + KA);
    }

    #[test]
    fn extreme_values_do_not_panic() {
        let t0 = Instant::now();
        let mut out = Vec::new();
        let mut ka = Keepalive::new(Duration::MAX, SERVER6.into(), CLIENT6.into(), ID, t0);
        ka.reply_timeout = Duration::MAX;
        assert_eq!(ka.interval(), MAX_INTERVAL);
        assert_eq!(ka.on_deadline(ka.next_deadline(), &mut out), Action::Send);
        let _ = ka.next_deadline();
        let mut ka = Keepalive::new(Duration::ZERO, SERVER6.into(), CLIENT4.into(), ID, t0);
        ka.max_misses = 0;
        // Mixed families: nothing to send, so the silence is eventually fatal.
        let log = drive(&mut ka, t0 + ms(10_000), |_| Some(ms(1)));
        assert!(matches!(log.last(), Some((_, Action::Dead { .. }))));
        // Sequence numbers wrap around.
        let mut ka = Keepalive::new(ms(1), SERVER6.into(), CLIENT6.into(), ID, t0);
        let log = drive(&mut ka, t0 + ms(70_000), |_| Some(Duration::ZERO));
        assert_eq!(log.len(), 70_000);
        assert_eq!(ka.misses(), 0);
    }

    /// Sends traffic at every `step` from `from` until the path is declared dead (nothing is
    /// ever received); returns the deadline log.
    fn one_way_traffic(ka: &mut Keepalive, from: Instant, step: Duration, until: Instant) -> Vec<(Instant, Action)> {
        let mut log = Vec::new();
        let mut out = Vec::new();
        let mut next_tx = from;
        loop {
            let dl = ka.next_deadline();
            if next_tx <= dl && next_tx <= until {
                ka.on_sent(next_tx);
                next_tx += step;
                continue;
            }
            if dl > until {
                return log;
            }
            let a = ka.on_deadline(dl, &mut out);
            if a != Action::Wait {
                log.push((dl, a));
            }
            if matches!(a, Action::Dead { .. }) {
                return log;
            }
        }
    }

    #[test]
    fn unanswered_traffic_is_probed_and_declared_dead_within_seconds() {
        let t0 = Instant::now();
        let mut ka = ka6(t0);
        // The interval's echoes at +30, +60, +90 go unanswered in this test (no replies are
        // fed): keep them from judging the path, and look only at what follows the drop.
        ka.max_misses = u32::MAX;
        // The path dies at +100 s; the user keeps pinging every 200 ms and hears nothing.
        let drop = t0 + ms(100_000);
        let log = one_way_traffic(&mut ka, drop, ms(200), t0 + ms(200_000));
        let after: Vec<_> = log.iter().filter(|(t, _)| *t >= drop).collect();
        // Probes at +3, +4, +5 s; the third one's timeout at +6 s kills the path.
        assert_eq!(
            after.iter().map(|(t, a)| (*t - drop, *a)).collect::<Vec<_>>(),
            vec![
                (ms(3000), Action::Send),
                (ms(4000), Action::Send),
                (ms(5000), Action::Send),
                (ms(6000), Action::Dead { misses: 3 }),
            ]
        );
        assert_eq!(ka.probes_sent(), 3);
    }

    #[test]
    fn probes_are_judged_dead_at_default_settings_well_under_ten_seconds() {
        let t0 = Instant::now();
        let mut ka = ka6(t0);
        let mut out = Vec::new();
        // Keep the interval keepalive happy (answered), traffic answered until +40 s.
        assert_eq!(ka.on_deadline(t0 + KA, &mut out), Action::Send);
        assert!(ka.on_packet(&answer(&out), t0 + KA + ms(30)));
        ka.on_received(t0 + KA + ms(30));
        let drop = t0 + ms(40_000);
        ka.on_sent(drop + ms(1));
        let log = one_way_traffic(&mut ka, drop + ms(1), ms(1000), t0 + ms(100_000));
        let (dead_at, a) = *log.last().unwrap();
        assert_eq!(a, Action::Dead { misses: 3 });
        assert!(dead_at - drop <= Duration::from_secs(10), "{:?}", dead_at - drop);
    }

    #[test]
    fn any_packet_from_the_broker_ends_probing() {
        let t0 = Instant::now();
        let mut ka = ka6(t0);
        let mut out = Vec::new();
        ka.on_sent(t0 + ms(1000));
        assert_eq!(ka.next_deadline(), t0 + ms(4000));
        assert_eq!(ka.on_deadline(t0 + ms(4000), &mut out), Action::Send);
        assert!(ka.probing());
        let req = icmp::parse_echo_request(&out).unwrap();
        assert_eq!(req.seq, 0);
        // Data comes back before the probe's answer: probing ends, no death later.
        ka.on_received(t0 + ms(4500));
        assert!(!ka.probing());
        assert_eq!(ka.on_deadline(t0 + ms(5000), &mut out), Action::Wait);
        // The probe's late answer is still claimed.
        assert!(ka.on_packet(
            &answer(&{
                let mut p = Vec::new();
                icmp::echo_request_v6(CLIENT6, SERVER6, ID, 0, ECHO_PAYLOAD, &mut p);
                p
            }),
            t0 + ms(5100)
        ));
        assert_eq!(ka.misses(), 0);
        assert!(!ka.is_dead());
        // Nothing pending and nothing unanswered: the next deadline is the interval's.
        assert_eq!(ka.next_deadline(), t0 + KA);
    }

    #[test]
    fn an_answered_probe_resets_and_traffic_restarts_the_clock() {
        let t0 = Instant::now();
        let mut ka = ka6(t0);
        let mut out = Vec::new();
        ka.on_sent(t0);
        assert_eq!(ka.on_deadline(t0 + ms(3000), &mut out), Action::Send);
        assert_eq!(
            ka.on_deadline(t0 + ms(4000), &mut out),
            Action::Send,
            "first probe missed: next at once"
        );
        // Second probe answered by the broker (the datapath claims it).
        assert!(ka.on_packet(&answer(&out), t0 + ms(4200)));
        assert!(!ka.probing());
        assert_eq!(ka.on_deadline(t0 + ms(5000), &mut out), Action::Wait);
        // A one-way stream (say, a UDP upload) costs one probe per `after` at most.
        let log = drive_probes(&mut ka, t0 + ms(5000), t0 + ms(29_000));
        assert!(log <= 8, "{log} probes in 24 s");
    }

    /// One-way traffic every 100 ms with every probe answered after 50 ms; returns the
    /// number of probes sent.
    fn drive_probes(ka: &mut Keepalive, from: Instant, until: Instant) -> u64 {
        let start = ka.probes_sent();
        let mut out = Vec::new();
        let mut t = from;
        let mut reply: Option<(Instant, Vec<u8>)> = None;
        while t < until {
            ka.on_sent(t);
            if let Some((at, pkt)) = reply.take_if(|(at, _)| *at <= t) {
                assert!(ka.on_packet(&pkt, at));
            }
            while ka.next_deadline() <= t {
                let dl = ka.next_deadline();
                match ka.on_deadline(dl, &mut out) {
                    Action::Send => reply = Some((dl + ms(50), answer(&out))),
                    a => assert_eq!(a, Action::Wait),
                }
            }
            t += ms(100);
        }
        ka.probes_sent() - start
    }

    #[test]
    fn idle_tunnel_sends_only_the_interval() {
        let t0 = Instant::now();
        let mut ka = ka6(t0);
        // Ten idle minutes with every echo answered: 20 packets, no probe.
        let log = drive(&mut ka, t0 + ms(600_000), |_| Some(ms(20)));
        assert_eq!(log.len(), 20);
        assert_eq!(ka.probes_sent(), 0);
    }

    #[test]
    fn probing_off_keeps_gogoc_timing() {
        let t0 = Instant::now();
        let mut ka = ka6(t0);
        ka.probe.after = None;
        let log = one_way_traffic(&mut ka, t0, ms(500), t0 + ms(200_000));
        assert_eq!(ka.probes_sent(), 0);
        assert_eq!(
            log.last(),
            Some(&(t0 + KA * 3 + DEFAULT_REPLY_TIMEOUT, Action::Dead { misses: 3 }))
        );
    }

    proptest! {
        #[test]
        fn on_packet_never_panics(pkt in proptest::collection::vec(any::<u8>(), 0..120), dt in 0u64..100_000) {
            let t0 = Instant::now();
            let mut ka = ka6(t0);
            let mut out = Vec::new();
            ka.on_deadline(t0 + KA, &mut out);
            let _ = ka.on_packet(&pkt, t0 + ms(dt));
            let _ = ka.on_deadline(t0 + ms(dt), &mut out);
        }
    }
}
