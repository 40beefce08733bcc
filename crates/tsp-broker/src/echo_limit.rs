//! A per-session bound on the echo requests the broker answers (docs/tsp-wire.md §5): clients
//! probe a path that looks dead with extra keepalive echoes, and the broker's kernel answers
//! every echo to its tunnel address without any rate limit of its own; a token bucket per
//! session keeps a client from turning that into a reflector. Other traffic is not touched.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use tsp_tunnel::icmp;

/// Echo requests per second a session may send to the broker's keepalive address …
pub const RATE: u32 = 10;
/// … with bursts of up to this many.
pub const BURST: u32 = 20;

/// The budget of one session.
#[derive(Debug, Clone)]
pub struct EchoBudget {
    /// The broker's keepalive address of this session (what the limit applies to).
    target: Option<IpAddr>,
    tokens: u32,
    /// When the last token was added.
    refilled: Instant,
}

impl EchoBudget {
    pub fn new(target: Option<IpAddr>, now: Instant) -> Self {
        Self {
            target,
            tokens: BURST,
            refilled: now,
        }
    }

    /// Whether `pkt` (an inner packet from this session) may go on: anything but an echo
    /// request to the keepalive address does; such an echo costs a token.
    pub fn allow(&mut self, pkt: &[u8], now: Instant) -> bool {
        let Some(target) = self.target else { return true };
        match icmp::parse_echo_request(pkt) {
            Some(req) if req.dst == target => {}
            _ => return true,
        }
        let step = Duration::from_secs(1) / RATE;
        let earned = now.saturating_duration_since(self.refilled).as_nanos() / step.as_nanos();
        if earned > 0 {
            self.tokens = (u128::from(self.tokens) + earned).min(u128::from(BURST)) as u32;
            self.refilled = if self.tokens == BURST {
                now
            } else {
                self.refilled + step * earned as u32
            };
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    const BROKER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 1);
    const CLIENT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 2);

    fn echo(dst: Ipv6Addr) -> Vec<u8> {
        let mut p = Vec::new();
        icmp::echo_request_v6(CLIENT, dst, 1, 0, b"x", &mut p);
        p
    }

    #[test]
    fn a_flood_is_cut_to_the_rate_and_probes_pass() {
        let t0 = Instant::now();
        let mut b = EchoBudget::new(Some(BROKER.into()), t0);
        let pkt = echo(BROKER);
        // A flood of 1000 in one instant: the burst passes, nothing more.
        let passed = (0..1000).filter(|_| b.allow(&pkt, t0)).count();
        assert_eq!(passed, BURST as usize);
        // Ten seconds of flooding every millisecond: RATE a second.
        let passed = (1..=10_000)
            .filter(|ms| b.allow(&pkt, t0 + Duration::from_millis(*ms)))
            .count();
        assert_eq!(passed, (RATE * 10) as usize);
        // Echoes elsewhere, and other packets, are not limited.
        let other = echo(Ipv6Addr::LOCALHOST);
        assert!((0..100).all(|_| b.allow(&other, t0 + Duration::from_secs(10))));
        assert!(b.allow(&[0x60; 40], t0 + Duration::from_secs(10)));
        // A client's keepalive and probes (a few a second at most) always pass.
        let mut b = EchoBudget::new(Some(BROKER.into()), t0);
        assert!((0..600).all(|i| b.allow(&pkt, t0 + Duration::from_millis(500 * i))));
        // No keepalive address: nothing to limit.
        let mut b = EchoBudget::new(None, t0);
        assert!((0..100).all(|_| b.allow(&pkt, t0)));
    }
}
