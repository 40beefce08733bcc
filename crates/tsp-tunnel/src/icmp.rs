//! Sans-IO ICMP echo packets for the tunnel datapaths: whole IP packets as a TUN device carries
//! them (no link header, no packet-info header).
//!
//! Keepalives (docs/tsp-wire.md §5) are ICMPv6 echo requests, or ICMPv4 for v4v6; the broker answers
//! echo requests aimed at its own tunnel address itself. Identifier and sequence are written in
//! network byte order. (gogoc stored them in host order, but the peer only echoes them back, so
//! the order only matters to the side that matches replies, which is us.)

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::checksum::{checksum, finish, sum};

/// IPv6 header length.
pub const IPV6_HEADER_LEN: usize = 40;
/// IPv4 header length without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// Echo request/reply header: type, code, checksum, identifier, sequence.
pub const ECHO_HEADER_LEN: usize = 8;
/// IP protocol / next-header numbers.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;
/// ICMP message types used here.
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;
pub const ICMPV4_ECHO_REQUEST: u8 = 8;
pub const ICMPV4_ECHO_REPLY: u8 = 0;
/// Hop limit / TTL of packets we originate.
pub const DEFAULT_HOP_LIMIT: u8 = 64;

/// Largest echo payload that still fits the 16-bit IPv6 payload length.
const MAX_PAYLOAD_V6: usize = u16::MAX as usize - ECHO_HEADER_LEN;
/// Largest echo payload that still fits the 16-bit IPv4 total length.
const MAX_PAYLOAD_V4: usize = u16::MAX as usize - IPV4_HEADER_LEN - ECHO_HEADER_LEN;

/// An ICMP / ICMPv6 echo reply addressed to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoReply {
    pub src: IpAddr,
    pub id: u16,
    pub seq: u16,
}

/// An ICMP / ICMPv6 echo request, as seen by whoever has to answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoRequest {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub id: u16,
    pub seq: u16,
}

/// Sum of the IPv6 pseudo-header (RFC 8200 §8.1) for an upper-layer message of `len` bytes.
fn pseudo_header_v6(src: &Ipv6Addr, dst: &Ipv6Addr, len: u32, next_header: u8) -> u64 {
    let mut acc = sum(0, &src.octets());
    acc = sum(acc, &dst.octets());
    acc = sum(acc, &len.to_be_bytes());
    sum(acc, &[0, 0, 0, next_header])
}

/// ICMPv6 checksum of `msg` (whose checksum field must be zero or is being verified).
/// Verifying: a message with a correct checksum field yields 0.
pub fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, msg: &[u8]) -> u16 {
    // Lengths beyond u32 cannot be IPv6 payloads; saturate rather than wrap.
    let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
    finish(sum(pseudo_header_v6(src, dst, len, IPPROTO_ICMPV6), msg))
}

/// Writes an IPv6 header for a payload of `payload_len` bytes (caller guarantees it fits u16).
fn push_ipv6_header(out: &mut Vec<u8>, src: &Ipv6Addr, dst: &Ipv6Addr, payload_len: usize, nh: u8, hops: u8) {
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&(payload_len as u16).to_be_bytes());
    out.push(nh);
    out.push(hops);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
}

/// Writes into `out` (cleared first) an IPv6 packet with hop limit `hops` carrying the ICMPv6
/// message `icmp`, whose checksum field (bytes 2..4) is filled in; truncated to 64 KiB.
pub fn ipv6_icmp_packet(src: &Ipv6Addr, dst: &Ipv6Addr, hops: u8, icmp: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let icmp = &icmp[..icmp.len().min(u16::MAX as usize)];
    push_ipv6_header(out, src, dst, icmp.len(), IPPROTO_ICMPV6, hops);
    let start = out.len();
    out.extend_from_slice(icmp);
    if icmp.len() >= 4 {
        out[start + 2..start + 4].copy_from_slice(&[0, 0]);
        let c = icmpv6_checksum(src, dst, &out[start..]);
        out[start + 2..start + 4].copy_from_slice(&c.to_be_bytes());
    }
}

fn build_echo_v6(src: Ipv6Addr, dst: Ipv6Addr, ty: u8, id: u16, seq: u16, payload: &[u8], out: &mut Vec<u8>) {
    let payload = &payload[..payload.len().min(MAX_PAYLOAD_V6)];
    out.clear();
    push_ipv6_header(
        out,
        &src,
        &dst,
        ECHO_HEADER_LEN + payload.len(),
        IPPROTO_ICMPV6,
        DEFAULT_HOP_LIMIT,
    );
    let start = out.len();
    out.extend_from_slice(&[ty, 0, 0, 0]);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(payload);
    let c = icmpv6_checksum(&src, &dst, &out[start..]);
    out[start + 2..start + 4].copy_from_slice(&c.to_be_bytes());
}

fn build_echo_v4(src: Ipv4Addr, dst: Ipv4Addr, ty: u8, id: u16, seq: u16, payload: &[u8], out: &mut Vec<u8>) {
    let payload = &payload[..payload.len().min(MAX_PAYLOAD_V4)];
    let total = IPV4_HEADER_LEN + ECHO_HEADER_LEN + payload.len();
    out.clear();
    out.extend_from_slice(&[0x45, 0]);
    out.extend_from_slice(&(total as u16).to_be_bytes());
    // The IP identification only matters for fragments, which these never are; the sequence
    // number keeps consecutive packets distinct.
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&[0, 0, DEFAULT_HOP_LIMIT, IPPROTO_ICMP, 0, 0]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    let c = checksum(&out[..IPV4_HEADER_LEN]);
    out[10..12].copy_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&[ty, 0, 0, 0]);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(payload);
    let c = checksum(&out[IPV4_HEADER_LEN..]);
    out[IPV4_HEADER_LEN + 2..IPV4_HEADER_LEN + 4].copy_from_slice(&c.to_be_bytes());
}

/// Writes into `out` (cleared first) an IPv6 packet, hop limit 64, carrying an ICMPv6 echo
/// request. A payload longer than an IPv6 packet can hold is truncated.
pub fn echo_request_v6(src: Ipv6Addr, dst: Ipv6Addr, id: u16, seq: u16, payload: &[u8], out: &mut Vec<u8>) {
    build_echo_v6(src, dst, ICMPV6_ECHO_REQUEST, id, seq, payload, out);
}

/// Writes into `out` (cleared first) an IPv4 packet, TTL 64, carrying an ICMP echo request.
/// A payload longer than an IPv4 packet can hold is truncated.
pub fn echo_request_v4(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16, payload: &[u8], out: &mut Vec<u8>) {
    build_echo_v4(src, dst, ICMPV4_ECHO_REQUEST, id, seq, payload, out);
}

/// An ICMPv6 message located inside a validated IPv6 packet.
struct Icmp6<'a> {
    src: Ipv6Addr,
    dst: Ipv6Addr,
    msg: &'a [u8],
}

/// Validates an IPv6 packet carrying ICMPv6 (skipping hop-by-hop and destination options
/// headers) and its checksum. Routing and fragment headers are not followed: echo traffic does
/// not use them, and the pseudo-header would differ.
fn icmp6_of(pkt: &[u8]) -> Option<Icmp6<'_>> {
    if pkt.len() < IPV6_HEADER_LEN || pkt[0] >> 4 != 6 {
        return None;
    }
    let plen = usize::from(u16::from_be_bytes([pkt[4], pkt[5]]));
    // Anything past the payload length is link padding, not part of the packet; a payload
    // length of 0 with data would be a jumbogram, which tunnels never carry.
    let body = pkt.get(IPV6_HEADER_LEN..IPV6_HEADER_LEN + plen)?;
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&pkt[8..24]).ok()?);
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&pkt[24..40]).ok()?);
    let mut nh = pkt[6];
    let mut off = 0usize;
    // Bounded: each extension header is at least 8 bytes and the body is at most 64 KiB.
    loop {
        match nh {
            IPPROTO_ICMPV6 => break,
            0 | 60 => {
                let hdr = body.get(off..off + 2)?;
                nh = hdr[0];
                off += (usize::from(hdr[1]) + 1) * 8;
            }
            _ => return None,
        }
    }
    let msg = body.get(off..)?;
    if msg.len() < 4 || icmpv6_checksum(&src, &dst, msg) != 0 {
        return None;
    }
    Some(Icmp6 { src, dst, msg })
}

/// An ICMPv4 message located inside a validated IPv4 packet.
struct Icmp4<'a> {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    msg: &'a [u8],
}

/// Validates an unfragmented IPv4 packet carrying ICMP, its header checksum and ICMP checksum.
fn icmp4_of(pkt: &[u8]) -> Option<Icmp4<'_>> {
    if pkt.len() < IPV4_HEADER_LEN || pkt[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    if ihl < IPV4_HEADER_LEN || total < ihl || total > pkt.len() {
        return None;
    }
    if checksum(&pkt[..ihl]) != 0 || pkt[9] != IPPROTO_ICMP {
        return None;
    }
    // More-fragments set or a non-zero offset: only part of the message is here.
    if u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0 {
        return None;
    }
    let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
    let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
    let msg = &pkt[ihl..total];
    if msg.len() < 4 || checksum(msg) != 0 {
        return None;
    }
    Some(Icmp4 { src, dst, msg })
}

/// An echo message of `ty` in family `v6`: `(src, dst, id, seq, data after the echo header)`.
fn echo_of(pkt: &[u8], ty_v6: u8, ty_v4: u8) -> Option<(IpAddr, IpAddr, u16, u16, &[u8])> {
    let (src, dst, msg, ty) = match pkt.first()? >> 4 {
        6 => {
            let m = icmp6_of(pkt)?;
            (IpAddr::V6(m.src), IpAddr::V6(m.dst), m.msg, ty_v6)
        }
        4 => {
            let m = icmp4_of(pkt)?;
            (IpAddr::V4(m.src), IpAddr::V4(m.dst), m.msg, ty_v4)
        }
        _ => return None,
    };
    if msg.len() < ECHO_HEADER_LEN || msg[0] != ty || msg[1] != 0 {
        return None;
    }
    let id = u16::from_be_bytes([msg[4], msg[5]]);
    let seq = u16::from_be_bytes([msg[6], msg[7]]);
    Some((src, dst, id, seq, &msg[ECHO_HEADER_LEN..]))
}

/// Parses an ICMPv6 echo reply (type 129) or ICMPv4 echo reply (type 0) packet, checking the
/// lengths and all checksums. Anything else, malformed or not, gives `None`.
pub fn parse_echo_reply(pkt: &[u8]) -> Option<EchoReply> {
    let (src, _, id, seq, _) = echo_of(pkt, ICMPV6_ECHO_REPLY, ICMPV4_ECHO_REPLY)?;
    Some(EchoReply { src, id, seq })
}

/// Parses an ICMPv6 (type 128) or ICMPv4 (type 8) echo request packet, checking lengths and
/// checksums; lets a datapath decide whether it is aimed at one of its own addresses.
pub fn parse_echo_request(pkt: &[u8]) -> Option<EchoRequest> {
    let (src, dst, id, seq, _) = echo_of(pkt, ICMPV6_ECHO_REQUEST, ICMPV4_ECHO_REQUEST)?;
    Some(EchoRequest { src, dst, id, seq })
}

/// Whether `a` can be the source of the reply (i.e. is a unicast address we could own).
fn replyable(a: IpAddr) -> bool {
    match a {
        IpAddr::V6(a) => !a.is_unspecified() && !a.is_multicast(),
        IpAddr::V4(a) => !a.is_unspecified() && !a.is_multicast() && !a.is_broadcast(),
    }
}

/// Turns a valid echo request into the matching echo reply in `out` (cleared first): addresses
/// swapped, type 129 / 0, same identifier, sequence and data, fresh hop limit 64, checksums
/// recomputed; IPv6 extension headers and IPv4 options are dropped.
///
/// The caller checks that the request's destination is one of its own addresses (see
/// [`parse_echo_request`]). Returns `false`, with `out` empty, for anything that is not a valid
/// echo request, or whose source or destination cannot take part in a unicast reply
/// (multicast, broadcast, unspecified).
pub fn echo_reply_for(request: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    let Some((src, dst, id, seq, data)) = echo_of(request, ICMPV6_ECHO_REQUEST, ICMPV4_ECHO_REQUEST) else {
        return false;
    };
    if !replyable(src) || !replyable(dst) {
        return false;
    }
    match (src, dst) {
        (IpAddr::V6(s), IpAddr::V6(d)) => build_echo_v6(d, s, ICMPV6_ECHO_REPLY, id, seq, data, out),
        (IpAddr::V4(s), IpAddr::V4(d)) => build_echo_v4(d, s, ICMPV4_ECHO_REPLY, id, seq, data, out),
        _ => return false,
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
    const B6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    const A4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    const B4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

    #[test]
    fn echo_request_v6_bytes() {
        let mut out = Vec::new();
        echo_request_v6(A6, B6, 0x1234, 7, b"hi", &mut out);
        // Checksum by hand: pseudo-header words (2001+0db8)*2 + 0002 + 0001 + len 000a + nh 003a
        // = 5bb9, message 8000+1234+0007+6869 = fca4; 5bb9+fca4 = 1565d -> 565e -> !565e = a9a1.
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            &[0x60, 0, 0, 0, 0, 10, 58, 64][..],
            &A6.octets(), &B6.octets(),
            &[128, 0, 0xa9, 0xa1, 0x12, 0x34, 0, 7, b'h', b'i'],
        ].concat();
        assert_eq!(out, expected);
        assert_eq!(
            parse_echo_request(&out),
            Some(EchoRequest {
                src: A6.into(),
                dst: B6.into(),
                id: 0x1234,
                seq: 7
            })
        );
        assert_eq!(parse_echo_reply(&out), None);
    }

    #[test]
    fn echo_request_v4_bytes() {
        let mut out = Vec::new();
        echo_request_v4(A4, B4, 0x1234, 7, b"hi", &mut out);
        // IP header checksum: 4500+001e+0007+0000+4001+c000+0202+c000+0201 = 20929 -> 092b
        // -> f6d4. ICMP: 0800+1234+0007+6869 = 82a4 -> 7d5b.
        #[rustfmt::skip]
        let expected = vec![
            0x45, 0, 0, 30, 0, 7, 0, 0, 64, 1, 0xf6, 0xd4, 192, 0, 2, 2, 192, 0, 2, 1,
            8, 0, 0x7d, 0x5b, 0x12, 0x34, 0, 7, b'h', b'i',
        ];
        assert_eq!(out, expected);
        assert_eq!(
            parse_echo_request(&out),
            Some(EchoRequest {
                src: A4.into(),
                dst: B4.into(),
                id: 0x1234,
                seq: 7
            })
        );
    }

    #[test]
    fn reply_round_trip_both_families() {
        let (mut req, mut rep) = (Vec::new(), Vec::new());
        echo_request_v6(A6, B6, 99, 3, &[0xab; 16], &mut req);
        assert!(echo_reply_for(&req, &mut rep));
        assert_eq!(
            parse_echo_reply(&rep),
            Some(EchoReply {
                src: B6.into(),
                id: 99,
                seq: 3
            })
        );
        assert_eq!(&rep[8..24], &B6.octets());
        assert_eq!(&rep[24..40], &A6.octets());
        assert_eq!(&rep[48..], &[0xab; 16]);
        // A reply is not a request.
        assert!(!echo_reply_for(&rep, &mut req));
        assert!(req.is_empty());

        echo_request_v4(A4, B4, 99, 3, &[0xcd; 8], &mut req);
        assert!(echo_reply_for(&req, &mut rep));
        assert_eq!(
            parse_echo_reply(&rep),
            Some(EchoReply {
                src: B4.into(),
                id: 99,
                seq: 3
            })
        );
        assert_eq!(&rep[28..], &[0xcd; 8]);
    }

    #[test]
    fn rejects_bad_checksums_and_lengths() {
        let (mut req, mut rep) = (Vec::new(), Vec::new());
        echo_request_v6(A6, B6, 1, 2, b"abc", &mut req);
        echo_reply_for(&req, &mut rep);
        let mut bad = rep.clone();
        bad[40 + 2] ^= 1;
        assert_eq!(parse_echo_reply(&bad), None);
        // Payload length longer than the buffer, and too short for an echo header.
        let mut bad = rep.clone();
        bad[5] += 1;
        assert_eq!(parse_echo_reply(&bad), None);
        assert_eq!(parse_echo_reply(&rep[..45]), None);
        // Trailing padding beyond the payload length is ignored.
        let mut padded = rep.clone();
        padded.extend_from_slice(&[0; 5]);
        assert!(parse_echo_reply(&padded).is_some());

        echo_request_v4(A4, B4, 1, 2, b"abc", &mut req);
        echo_reply_for(&req, &mut rep);
        for i in [10, 22] {
            let mut bad = rep.clone();
            bad[i] ^= 0x80;
            assert_eq!(parse_echo_reply(&bad), None, "byte {i}");
        }
        // A fragment (more-fragments flag) is refused even with a fixed header checksum.
        let mut frag = rep.clone();
        frag[6] |= 0x20;
        frag[10..12].copy_from_slice(&[0, 0]);
        let c = checksum(&frag[..20]);
        frag[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(parse_echo_reply(&frag), None);
    }

    #[test]
    fn skips_destination_options() {
        // Echo reply behind an 8-byte destination options header (one PadN option).
        let mut icmp = vec![ICMPV6_ECHO_REPLY, 0, 0, 0, 0, 5, 0, 6];
        let c = icmpv6_checksum(&B6, &A6, &icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut pkt = vec![0x60, 0, 0, 0, 0, 16, 60, 64];
        pkt.extend_from_slice(&B6.octets());
        pkt.extend_from_slice(&A6.octets());
        pkt.extend_from_slice(&[58, 0, 1, 4, 0, 0, 0, 0]);
        pkt.extend_from_slice(&icmp);
        assert_eq!(
            parse_echo_reply(&pkt),
            Some(EchoReply {
                src: B6.into(),
                id: 5,
                seq: 6
            })
        );
        // The same behind a routing header is not followed.
        pkt[6] = 43;
        assert_eq!(parse_echo_reply(&pkt), None);
    }

    #[test]
    fn no_reply_to_multicast_or_unspecified() {
        let (mut req, mut rep) = (Vec::new(), Vec::new());
        echo_request_v6(A6, "ff02::1".parse().unwrap(), 1, 1, b"", &mut req);
        assert!(!echo_reply_for(&req, &mut rep));
        echo_request_v6(Ipv6Addr::UNSPECIFIED, B6, 1, 1, b"", &mut req);
        assert!(!echo_reply_for(&req, &mut rep));
        echo_request_v4(A4, Ipv4Addr::BROADCAST, 1, 1, b"", &mut req);
        assert!(!echo_reply_for(&req, &mut rep));
        assert!(rep.is_empty());
    }

    #[test]
    fn oversized_payload_is_truncated() {
        let big = vec![0u8; 70_000];
        let mut out = Vec::new();
        echo_request_v6(A6, B6, 1, 1, &big, &mut out);
        assert_eq!(out.len(), 40 + 65535);
        assert!(parse_echo_request(&out).is_some());
        echo_request_v4(A4, B4, 1, 1, &big, &mut out);
        assert_eq!(out.len(), 65535);
        assert!(parse_echo_request(&out).is_some());
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(pkt in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut out = Vec::new();
            let _ = parse_echo_reply(&pkt);
            let _ = parse_echo_request(&pkt);
            let _ = echo_reply_for(&pkt, &mut out);
        }

        #[test]
        fn never_panics_on_mutated_packets(
            v6 in any::<bool>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            cut in any::<usize>(),
        ) {
            let (mut req, mut rep) = (Vec::new(), Vec::new());
            if v6 {
                echo_request_v6(A6, B6, 1, 2, &payload, &mut req);
            } else {
                echo_request_v4(A4, B4, 1, 2, &payload, &mut req);
            }
            prop_assert!(echo_reply_for(&req, &mut rep));
            for (i, b) in edits {
                let n = rep.len();
                rep[i % n] = b;
            }
            rep.truncate(cut % (rep.len() + 1));
            let _ = parse_echo_reply(&rep);
            let _ = echo_reply_for(&rep, &mut req);
        }

        #[test]
        fn round_trip(id: u16, seq: u16, v6: bool, payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let (mut req, mut rep) = (Vec::new(), Vec::new());
            let (s, d): (IpAddr, IpAddr) = if v6 {
                echo_request_v6(A6, B6, id, seq, &payload, &mut req);
                (A6.into(), B6.into())
            } else {
                echo_request_v4(A4, B4, id, seq, &payload, &mut req);
                (A4.into(), B4.into())
            };
            prop_assert_eq!(parse_echo_request(&req), Some(EchoRequest { src: s, dst: d, id, seq }));
            prop_assert!(echo_reply_for(&req, &mut rep));
            prop_assert_eq!(parse_echo_reply(&rep), Some(EchoReply { src: d, id, seq }));
            prop_assert_eq!(rep.len(), req.len());
        }
    }
}
