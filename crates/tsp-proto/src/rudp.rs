//! Reliable UDP: the 8-byte header and the RTT/retransmission engine (docs/tsp-wire.md §2).
//!
//! Sans-IO: the caller passes `Instant`s in and gets datagrams and deadlines out, so tests
//! drive hours of retransmission in microseconds.

use std::time::{Duration, Instant};

pub const HEADER_LEN: usize = 8;
/// The first sequence number of every connection: puts the 0xF nibble in both the MSB and the
/// LSB of the first word, for brokers that read it little-endian (gogoc "Bug 3334").
pub const FIRST_SEQ: u32 = 0xF0;
const SEQ_MASK: u32 = 0x0FFF_FFFF;
const CONTROL_MARK: u32 = 0xF000_0000;

/// True if a datagram on the TSP socket is a control message (high nibble 0xF) rather than
/// tunnelled data (an IP packet: nibble 4 or 6).
pub fn is_control(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| b >> 4 == 0xF)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// 28-bit sequence number.
    pub seq: u32,
    /// Milliseconds since the sender's engine started.
    pub timestamp: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..4].copy_from_slice(&((self.seq & SEQ_MASK) | CONTROL_MARK).to_be_bytes());
        out[4..].copy_from_slice(&self.timestamp.to_be_bytes());
        out
    }

    /// Reads a header; `None` if the datagram is too short or not a control datagram.
    pub fn decode(datagram: &[u8]) -> Option<(Header, &[u8])> {
        let word: [u8; 4] = datagram.get(..4)?.try_into().ok()?;
        let ts: [u8; 4] = datagram.get(4..8)?.try_into().ok()?;
        let word = u32::from_be_bytes(word);
        if word & CONTROL_MARK != CONTROL_MARK {
            return None;
        }
        Some((
            Header {
                seq: word & SEQ_MASK,
                timestamp: u32::from_be_bytes(ts),
            },
            &datagram[HEADER_LEN..],
        ))
    }
}

/// Builds a datagram: header + payload.
pub fn datagram(header: Header, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(payload);
    out
}

/// Tunables of the RTT engine; the defaults are gogoc's (§2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RttParams {
    pub rto_min: Duration,
    pub rto_max: Duration,
    /// Transmissions of one message before giving up while no reply was ever seen.
    pub max_tries_no_peer: u32,
    /// Transmissions of one message before giving up once the peer has answered.
    pub max_tries: u32,
    /// Timeouts of a message that keep the RTO before exponential backoff starts.
    pub tries_before_backoff: u32,
}

impl Default for RttParams {
    fn default() -> Self {
        Self {
            rto_min: Duration::from_secs(2),
            rto_max: Duration::from_secs(30),
            max_tries_no_peer: 3,
            max_tries: 8,
            tries_before_backoff: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RudpError {
    #[error("no answer from the broker over UDP after {tries} tries (is a TSP listener running?)")]
    NoListener { tries: u32 },
    #[error("the broker stopped answering over UDP ({tries} tries)")]
    Timeout { tries: u32 },
}

#[derive(Debug, Clone)]
struct Pending {
    seq: u32,
    payload: Vec<u8>,
    deadline: Instant,
    tries: u32,
}

/// Client side of one RUDP connection: one outstanding message at a time (TSP is lock-step).
#[derive(Debug, Clone)]
pub struct RudpClient {
    params: RttParams,
    epoch: Instant,
    next_seq: u32,
    srtt: f64,
    rttvar: f64,
    rto: Duration,
    backoff: bool,
    peer_seen: bool,
    pending: Option<Pending>,
}

impl RudpClient {
    pub fn new(now: Instant, params: RttParams) -> Self {
        Self {
            params,
            epoch: now,
            next_seq: FIRST_SEQ,
            srtt: 0.0,
            rttvar: 0.5,
            rto: params.rto_min,
            backoff: false,
            peer_seen: false,
            pending: None,
        }
    }

    fn now_ms(&self, now: Instant) -> u32 {
        // Wraps after 49 days, like the 32-bit wire field.
        now.saturating_duration_since(self.epoch).as_millis() as u32
    }

    /// Current retransmission timeout.
    pub fn rto(&self) -> Duration {
        self.rto
    }

    /// Starts a new message (an empty payload is a "poll"); returns the datagram to send.
    /// Replaces any message still pending.
    pub fn send(&mut self, payload: &[u8], now: Instant) -> Vec<u8> {
        let seq = self.next_seq;
        self.next_seq = (self.next_seq + 1) & SEQ_MASK;
        self.pending = Some(Pending {
            seq,
            payload: payload.to_vec(),
            deadline: now + self.rto,
            tries: 1,
        });
        datagram(
            Header {
                seq,
                timestamp: self.now_ms(now),
            },
            payload,
        )
    }

    /// When the pending message must be retransmitted, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.deadline)
    }

    /// Call at or after [`deadline`](Self::deadline): the datagram to retransmit, or the
    /// reason to give up.
    pub fn on_timeout(&mut self, now: Instant) -> Result<Option<Vec<u8>>, RudpError> {
        let Some(p) = self.pending.as_ref() else {
            return Ok(None);
        };
        if now < p.deadline {
            return Ok(None);
        }
        let (tries, seq) = (p.tries, p.seq);
        if !self.peer_seen && tries >= self.params.max_tries_no_peer {
            self.pending = None;
            return Err(RudpError::NoListener { tries });
        }
        if tries >= self.params.max_tries {
            self.pending = None;
            return Err(RudpError::Timeout { tries });
        }
        if self.peer_seen && tries > self.params.tries_before_backoff {
            self.backoff = true;
        }
        if self.backoff {
            self.rto = (self.rto * 2).min(self.params.rto_max);
        }
        let ts = self.now_ms(now);
        let rto = self.rto;
        let p = self.pending.as_mut().expect("checked above");
        p.tries += 1;
        p.deadline = now + rto;
        Ok(Some(datagram(Header { seq, timestamp: ts }, &p.payload)))
    }

    /// Feeds a received datagram; returns the reply payload if it answers the pending message.
    /// Anything else (stale sequence, data, garbage) is ignored, as the real client does.
    pub fn on_datagram<'a>(&mut self, dgram: &'a [u8], now: Instant) -> Option<&'a [u8]> {
        let (hdr, payload) = Header::decode(dgram)?;
        let p = self.pending.as_ref()?;
        if hdr.seq != p.seq {
            return None;
        }
        self.pending = None;
        self.peer_seen = true;
        let rtt_ms = self.now_ms(now).wrapping_sub(hdr.timestamp);
        // A timestamp from the future (a confused peer) is not a measurement.
        if rtt_ms < 60_000 {
            self.update_rtt(f64::from(rtt_ms) / 1000.0);
        }
        Some(payload)
    }

    fn update_rtt(&mut self, rtt: f64) {
        let delta = rtt - self.srtt;
        self.srtt += delta / 8.0;
        self.rttvar += delta.abs() / 4.0;
        let rto =
            (self.srtt + 4.0 * self.rttvar).clamp(self.params.rto_min.as_secs_f64(), self.params.rto_max.as_secs_f64());
        if !self.backoff {
            self.rto = Duration::from_secs_f64(rto);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_vector() {
        let now = Instant::now();
        let mut c = RudpClient::new(now, RttParams::default());
        let d = c.send(b"VERSION=2.0.2\r\n", now + Duration::from_millis(771));
        assert_eq!(
            d,
            [
                0xf0, 0, 0, 0xf0, 0, 0, 3, 3, b'V', b'E', b'R', b'S', b'I', b'O', b'N', b'=', b'2', b'.', b'0', b'.',
                b'2', 13, 10
            ]
        );
        let d2 = c.send(b"AUTHENTICATE ANONYMOUS\r\n\0", now + Duration::from_millis(771));
        assert_eq!(&d2[..8], &[0xf0, 0, 0, 0xf1, 0, 0, 3, 3]);
        assert_eq!(d2.len(), 8 + 25);
    }

    #[test]
    fn capture_header_decodes() {
        let (h, p) = Header::decode(&[0xf0, 0, 0, 0xf2, 0, 0, 3, 0xc2, b'x']).unwrap();
        assert_eq!(
            h,
            Header {
                seq: 0xf2,
                timestamp: 0x3c2
            }
        );
        assert_eq!(p, b"x");
        assert!(Header::decode(&[0x60, 0, 0, 0, 0, 8, 0x3a, 0xff]).is_none());
        assert!(is_control(&[0xf0]) && !is_control(&[0x60]) && !is_control(&[]));
    }

    #[test]
    fn echo_matching() {
        let t0 = Instant::now();
        let mut c = RudpClient::new(t0, RttParams::default());
        let d = c.send(b"A", t0);
        let mut wrong = d.clone();
        wrong[3] ^= 1;
        assert_eq!(c.on_datagram(&wrong, t0), None);
        assert_eq!(c.on_datagram(b"\x60garbage", t0), None);
        let mut reply = d[..8].to_vec();
        reply.extend_from_slice(b"ok");
        assert_eq!(c.on_datagram(&reply, t0 + Duration::from_millis(5)), Some(&b"ok"[..]));
        assert_eq!(c.deadline(), None);
        // ~2.06 s on a LAN, as the doc computes.
        assert!(c.rto() >= Duration::from_secs(2) && c.rto() < Duration::from_millis(2100));
    }

    #[test]
    fn no_listener_after_three_tries() {
        let t0 = Instant::now();
        let mut c = RudpClient::new(t0, RttParams::default());
        let first = c.send(b"VERSION=2.0.2\r\n", t0);
        let mut t;
        let mut sent = 1;
        loop {
            t = c.deadline().unwrap();
            match c.on_timeout(t) {
                Ok(Some(d)) => {
                    assert_eq!(&d[..4], &first[..4], "retransmissions reuse the sequence");
                    sent += 1;
                }
                Ok(None) => unreachable!(),
                Err(e) => {
                    assert_eq!(e, RudpError::NoListener { tries: 3 });
                    break;
                }
            }
        }
        assert_eq!(sent, 3);
        assert_eq!(t - t0, Duration::from_secs(6));
    }

    #[test]
    fn backoff_after_peer_seen() {
        let t0 = Instant::now();
        let mut c = RudpClient::new(t0, RttParams::default());
        let d = c.send(b"x", t0);
        c.on_datagram(&d[..8], t0);
        c.send(b"y", t0);
        let mut t = t0;
        let mut gaps = Vec::new();
        loop {
            let dl = c.deadline().unwrap();
            gaps.push((dl - t).as_secs());
            t = dl;
            if c.on_timeout(t).is_err() {
                break;
            }
        }
        // 8 transmissions: 2+2+2+2+4+8+16+30 = 66 s, as gogoc.
        assert_eq!(gaps, vec![2, 2, 2, 2, 4, 8, 16, 30]);
        assert_eq!(t - t0, Duration::from_secs(66));
    }
}
