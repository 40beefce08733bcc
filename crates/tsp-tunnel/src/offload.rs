//! TUN offload over byte buffers: the `virtio_net_hdr` a TUN opened with `IFF_VNET_HDR` puts
//! before each packet, TCP and IPv4 header checksums (summed by [`crate::checksum`]), splitting
//! the kernel's TCP super-segments into MTU-sized packets (GSO in userspace) and coalescing
//! received TCP segments back into one super-segment for the kernel (GRO in userspace).
//!
//! Nothing changes on the wire: the split packets are exactly what the kernel would have sent
//! without offload, one per datagram. The point is to cross the user/kernel boundary once per
//! 64 KB instead of once per 1280 bytes.
//!
//! See docs/ARCHITECTURE.md (the data path).

use std::ops::Range;

use crate::checksum::{checksum, finish, fold, sum};

/// Size of the legacy `virtio_net_hdr` (TUNSETVNETHDRSZ left at its default).
pub const VNET_HDR_LEN: usize = 10;
/// `csum_start`/`csum_offset` describe a checksum the kernel left for us to finish.
pub const F_NEEDS_CSUM: u8 = 1;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
/// Flag bit: the segments carry ECN (CWR only on the first).
pub const GSO_ECN: u8 = 0x80;

const PROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_URG: u8 = 0x20;
const TCP_CWR: u8 = 0x80;

/// Largest IP packet (IPv4 total length, IPv6 payload length + 40) a coalesced segment may
/// grow to: the length fields are 16 bits.
const MAX_COALESCED: usize = 65_535;
/// The kernel's limit on segments per GSO packet is far higher; this bounds our iovec lists.
pub const MAX_COALESCED_SEGS: usize = 64;

/// The legacy virtio-net header, in the host's byte order (a TUN without TUNSETVNETLE/BE
/// uses the legacy, native-endian layout).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    pub fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }
}

/// The TCP/UDP pseudo-header's contribution for a packet whose IP header starts `ip` (v4 or
/// v6, by its version nibble), for an L4 length `len` and protocol `proto`.
fn pseudo(ip: &[u8], proto: u8, len: usize) -> u64 {
    let acc = if ip[0] >> 4 == 4 {
        sum(0, &ip[12..20])
    } else {
        sum(0, &ip[8..40])
    };
    acc + len as u64 + u64::from(proto)
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn set_ipv4_checksum(ip: &mut [u8], ihl: usize) {
    put16(ip, 10, 0);
    let c = checksum(&ip[..ihl]);
    put16(ip, 10, c);
}

/// Where the TCP header starts in an IP packet we can split or coalesce: IPv4 (options
/// allowed, not a fragment) or IPv6 without extension headers, carrying TCP.
fn tcp_offset(pkt: &[u8]) -> Option<usize> {
    match pkt.first()? >> 4 {
        4 if pkt.len() >= 20 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let frag = be16(pkt, 6) & 0x3fff; // MF or an offset
            (ihl >= 20 && pkt[9] == PROTO_TCP && frag == 0).then_some(ihl)
        }
        6 if pkt.len() >= 40 => (pkt[6] == PROTO_TCP).then_some(40),
        _ => None,
    }
}

/// Why a TUN read could not be turned into packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitError {
    /// A GSO type we did not enable (UDP fragmentation offload, USO, …).
    UnsupportedGso(u8),
    /// Header fields that disagree with the packet (a kernel bug or a truncated read).
    Malformed,
}

/// Packets laid end to end in one reusable buffer: the output of [`split`], ready for one
/// `sendmsg` with UDP GSO or one `sendmmsg`.
#[derive(Debug, Default)]
pub struct Segments {
    pub buf: Vec<u8>,
    pub ranges: Vec<Range<usize>>,
}

impl Segments {
    pub fn with_capacity(bytes: usize, packets: usize) -> Self {
        Self {
            buf: Vec::with_capacity(bytes),
            ranges: Vec::with_capacity(packets),
        }
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.ranges.clear();
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn get(&self, i: usize) -> &[u8] {
        &self.buf[self.ranges[i].clone()]
    }

    /// Appends one packet as is.
    pub fn push(&mut self, pkt: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(pkt);
        self.ranges.push(start..self.buf.len());
    }

    /// Drops the packets from index `from` on (a super-segment that turned out malformed).
    fn truncate(&mut self, from: usize) {
        if let Some(r) = self.ranges.get(from) {
            self.buf.truncate(r.start);
        }
        self.ranges.truncate(from);
    }
}

/// Finishes a checksum the kernel left partial (`NEEDS_CSUM`): the field at
/// `csum_start + csum_offset` holds the pseudo-header sum; the checksum covers `csum_start..`.
pub fn complete_checksum(hdr: &VnetHdr, pkt: &mut [u8]) -> Result<(), SplitError> {
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    if field + 2 > pkt.len() {
        return Err(SplitError::Malformed);
    }
    let c = finish(sum(0, &pkt[start..]));
    put16(pkt, field, c);
    Ok(())
}

/// Turns one TUN read (`hdr` and the packet after it) into IP packets appended to `out`: a
/// TCP super-segment (`GSO_TCPV4`/`GSO_TCPV6`) becomes packets of at most `gso_size` payload
/// bytes each, with their own lengths, IPv4 IDs, sequence numbers, flags and checksums, as
/// the kernel's own TSO fallback would make them; anything else is one packet, its checksum
/// finished if the kernel left it partial. `pkt` may be modified.
pub fn split(hdr: &VnetHdr, pkt: &mut [u8], out: &mut Segments) -> Result<(), SplitError> {
    let gso = hdr.gso_type & !GSO_ECN;
    if gso == GSO_NONE {
        if hdr.flags & F_NEEDS_CSUM != 0 {
            complete_checksum(hdr, pkt)?;
        }
        out.push(pkt);
        return Ok(());
    }
    if gso != GSO_TCPV4 && gso != GSO_TCPV6 {
        return Err(SplitError::UnsupportedGso(hdr.gso_type));
    }
    let v6 = gso == GSO_TCPV6;
    let l4 = tcp_offset(pkt).ok_or(SplitError::Malformed)?;
    if (pkt[0] >> 4 == 6) != v6 || l4 != usize::from(hdr.csum_start) || pkt.len() < l4 + 20 {
        return Err(SplitError::Malformed);
    }
    let thl = usize::from(pkt[l4 + 12] >> 4) * 4;
    let hlen = l4 + thl;
    let mss = usize::from(hdr.gso_size);
    if thl < 20 || hlen > pkt.len() || mss == 0 {
        return Err(SplitError::Malformed);
    }
    let (head, payload) = pkt.split_at(hlen);
    let seq0 = be32(head, l4 + 4);
    let id0 = be16(head, 4);
    let flags0 = head[l4 + 13];
    let first = out.len();
    let count = payload.len().div_ceil(mss).max(1);
    for (i, chunk) in payload
        .chunks(mss)
        .chain(payload.is_empty().then_some(&[][..]))
        .enumerate()
    {
        let start = out.buf.len();
        out.buf.extend_from_slice(head);
        out.buf.extend_from_slice(chunk);
        let p = &mut out.buf[start..];
        if v6 {
            let Ok(plen) = u16::try_from(p.len() - 40) else {
                out.truncate(first);
                return Err(SplitError::Malformed);
            };
            put16(p, 4, plen);
        } else {
            let Ok(total) = u16::try_from(p.len()) else {
                out.truncate(first);
                return Err(SplitError::Malformed);
            };
            put16(p, 2, total);
            put16(p, 4, id0.wrapping_add(i as u16));
            set_ipv4_checksum(p, l4);
        }
        let seq = seq0.wrapping_add((i * mss) as u32);
        p[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = flags0;
        if i + 1 < count {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            flags &= !TCP_CWR;
        }
        p[l4 + 13] = flags;
        put16(p, l4 + 16, 0);
        let c = finish(pseudo(p, PROTO_TCP, p.len() - l4) + sum(0, &p[l4..]));
        put16(p, l4 + 16, c);
        out.ranges.push(start..out.buf.len());
    }
    Ok(())
}

/// Groups consecutive packets of `segs` from index `first` on for UDP GSO: each group is
/// contiguous in the buffer, all its packets have the size of its first except a shorter last
/// one, and it holds at most `max_segs` packets and `max_bytes` bytes. Calls
/// `f(first_index, end_index, segment_size)` for each.
pub fn gso_groups(
    segs: &Segments,
    first: usize,
    max_bytes: usize,
    max_segs: usize,
    mut f: impl FnMut(usize, usize, usize),
) {
    let mut i = first;
    while i < segs.ranges.len() {
        let size = segs.ranges[i].len();
        let mut end = i + 1;
        let mut bytes = size;
        while end < segs.ranges.len() && end - i < max_segs {
            let r = &segs.ranges[end];
            if r.start != segs.ranges[end - 1].end || r.len() > size || bytes + r.len() > max_bytes {
                break;
            }
            bytes += r.len();
            end += 1;
            if r.len() < size {
                break;
            }
        }
        f(i, end, size);
        i = end;
    }
}

/// One write to the TUN: a virtio header and the byte ranges (of the receive buffer) that
/// follow it, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunWrite {
    pub hdr: VnetHdr,
    /// Index range into [`Gro::parts`].
    pub parts: Range<usize>,
}

/// An open run of coalescable segments of one TCP flow.
#[derive(Debug, Default)]
struct Run {
    /// The first packet: its header is rewritten in place when the run closes.
    first: Range<usize>,
    l4: usize,
    hlen: usize,
    gso_size: usize,
    next_seq: u32,
    /// Bytes of the coalesced packet so far (headers once, all payloads).
    total: usize,
    /// Payload ranges of the following packets.
    more: Vec<Range<usize>>,
    /// The last packet was shorter than `gso_size` or had PSH: nothing may follow.
    closed: bool,
    psh: bool,
}

/// Userspace GRO: feed received IP packets (ranges of one buffer) in order with
/// [`Gro::push`]; [`Gro::finish`] then lists the TUN writes. Consecutive in-order segments of
/// one TCP flow with equal headers become one `GSO_TCPV4`/`GSO_TCPV6` packet; everything
/// else is written alone, in its flow's order. Segments whose checksums do not verify are
/// never merged (the kernel drops them on its own, as it would have without us).
#[derive(Debug)]
pub struct Gro {
    runs: Vec<Run>,
    open: usize,
    /// Ranges written, in order, by the writes in [`Gro::writes`].
    pub parts: Vec<Range<usize>>,
    pub writes: Vec<TunWrite>,
    /// Whether to merge at all (off: each packet is one write, the no-offload fallback).
    pub enabled: bool,
}

/// At most this many flows are being coalesced at once; a further flow closes the oldest.
const MAX_OPEN_RUNS: usize = 8;

impl Gro {
    pub fn new(enabled: bool) -> Self {
        Self {
            runs: (0..MAX_OPEN_RUNS)
                .map(|_| Run {
                    more: Vec::with_capacity(MAX_COALESCED_SEGS),
                    ..Run::default()
                })
                .collect(),
            open: 0,
            parts: Vec::with_capacity(4 * MAX_COALESCED_SEGS),
            writes: Vec::with_capacity(2 * MAX_COALESCED_SEGS),
            enabled,
        }
    }

    /// Forgets the writes of the previous batch.
    pub fn clear(&mut self) {
        self.parts.clear();
        self.writes.clear();
        self.open = 0;
    }

    fn emit_alone(&mut self, r: Range<usize>) {
        let at = self.parts.len();
        self.parts.push(r);
        self.writes.push(TunWrite {
            hdr: VnetHdr::default(),
            parts: at..at + 1,
        });
    }

    /// Closes run `i` (writes it) and removes it from the open list.
    fn close(&mut self, buf: &mut [u8], i: usize) {
        self.open -= 1;
        self.runs.swap(i, self.open);
        let run = &mut self.runs[self.open];
        let at = self.parts.len();
        if run.more.is_empty() {
            self.parts.push(run.first.clone());
            self.writes.push(TunWrite {
                hdr: VnetHdr::default(),
                parts: at..at + 1,
            });
            return;
        }
        let p = &mut buf[run.first.clone()];
        let l4 = run.l4;
        let v6 = p[0] >> 4 == 6;
        if v6 {
            put16(p, 4, (run.total - 40) as u16);
        } else {
            put16(p, 2, run.total as u16);
            set_ipv4_checksum(p, l4);
        }
        if run.psh {
            p[l4 + 13] |= TCP_PSH;
        }
        // CHECKSUM_PARTIAL: the field holds the pseudo-header sum over the whole segment's
        // length, as the kernel's own TSO path leaves it; the kernel finishes or trusts it.
        let ph = fold(pseudo(p, PROTO_TCP, run.total - l4));
        put16(p, l4 + 16, ph);
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
            hdr_len: run.hlen as u16,
            gso_size: run.gso_size as u16,
            csum_start: l4 as u16,
            csum_offset: 16,
        };
        self.parts.push(run.first.clone());
        self.parts.append(&mut run.more);
        self.writes.push(TunWrite {
            hdr,
            parts: at..self.parts.len(),
        });
    }

    /// Adds the packet `buf[r]` (a valid IP packet, see [`super::valid_inner`]).
    pub fn push(&mut self, buf: &mut [u8], r: Range<usize>) {
        if !self.enabled {
            return self.emit_alone(r);
        }
        let pkt = &buf[r.clone()];
        let Some(l4) = tcp_offset(pkt) else {
            return self.emit_alone(r);
        };
        if pkt.len() < l4 + 20 {
            return self.emit_alone(r);
        }
        let thl = usize::from(pkt[l4 + 12] >> 4) * 4;
        let hlen = l4 + thl;
        if thl < 20 || hlen > pkt.len() {
            return self.emit_alone(r);
        }
        let flags = pkt[l4 + 13];
        let plen = pkt.len() - hlen;
        // Only plain data segments merge; SYN, FIN, RST, URG and pure ACKs go alone.
        let mergeable = plen > 0 && flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_URG) == 0 && flags & TCP_ACK != 0;
        let flow = self.runs[..self.open]
            .iter()
            .position(|run| same_flow(&buf[run.first.clone()], pkt, run.l4, l4));
        if !mergeable || !segment_checksums_ok(pkt, l4) {
            if let Some(i) = flow {
                self.close(buf, i);
            }
            return self.emit_alone(r);
        }
        let seq = be32(pkt, l4 + 4);
        if let Some(i) = flow {
            let run = &self.runs[i];
            let first = &buf[run.first.clone()];
            let fits = !run.closed
                && run.next_seq == seq
                && run.hlen == hlen
                && plen <= run.gso_size
                && run.total + plen <= MAX_COALESCED
                && run.more.len() + 1 < MAX_COALESCED_SEGS
                && flags & TCP_CWR == 0
                && same_headers(first, pkt, l4, thl);
            if fits {
                let run = &mut self.runs[i];
                run.more.push(r.start + hlen..r.end);
                run.total += plen;
                run.next_seq = seq.wrapping_add(plen as u32);
                run.psh = flags & TCP_PSH != 0;
                run.closed = run.psh || plen < run.gso_size;
                return;
            }
            self.close(buf, i);
        }
        if self.open == MAX_OPEN_RUNS {
            self.close(buf, 0);
        }
        let run = &mut self.runs[self.open];
        self.open += 1;
        run.first = r;
        run.l4 = l4;
        run.hlen = hlen;
        run.gso_size = plen;
        run.next_seq = seq.wrapping_add(plen as u32);
        run.total = hlen + plen;
        run.more.clear();
        run.psh = false;
        // A first segment with PSH ends its burst: merging after it would move the push.
        run.closed = flags & TCP_PSH != 0;
    }

    /// Closes every open run; [`Gro::writes`] is then complete.
    pub fn finish(&mut self, buf: &mut [u8]) {
        while self.open > 0 {
            self.close(buf, 0);
        }
    }
}

/// Same addresses, ports and IP version: a packet of the same TCP connection and direction.
fn same_flow(a: &[u8], b: &[u8], la: usize, lb: usize) -> bool {
    if a[0] >> 4 != b[0] >> 4 || la != lb || a[la..la + 4] != b[lb..lb + 4] {
        return false;
    }
    if a[0] >> 4 == 4 {
        a[12..20] == b[12..20]
    } else {
        a[8..40] == b[8..40]
    }
}

/// The headers a merged segment must share with the run's first (beyond the flow): IP
/// TOS/traffic class, flow label, TTL/hop limit, IPv4 options and DF, TCP ack, flags (PSH
/// aside) and options. The merged packet carries the first's; these must not be lost.
fn same_headers(first: &[u8], pkt: &[u8], l4: usize, thl: usize) -> bool {
    let ip_same = if first[0] >> 4 == 4 {
        // DF set on both (IDs then need not be consecutive), no fragments (checked before).
        first[0..2] == pkt[0..2]
            && first[8] == pkt[8]
            && first[20..l4] == pkt[20..l4]
            && be16(first, 6) & 0x4000 != 0
            && be16(pkt, 6) & 0x4000 != 0
    } else {
        first[0..4] == pkt[0..4] && first[7] == pkt[7]
    };
    ip_same
        && first[l4 + 8..l4 + 12] == pkt[l4 + 8..l4 + 12]
        && first[l4 + 13] & !TCP_PSH == pkt[l4 + 13] & !TCP_PSH
        && first[l4 + 20..l4 + thl] == pkt[l4 + 20..l4 + thl]
}

/// The IPv4 header checksum (if any) and the TCP checksum verify.
fn segment_checksums_ok(pkt: &[u8], l4: usize) -> bool {
    if pkt[0] >> 4 == 4 && fold(sum(0, &pkt[..l4])) != 0xffff {
        return false;
    }
    fold(pseudo(pkt, PROTO_TCP, pkt.len() - l4) + sum(0, &pkt[l4..])) == 0xffff
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A TCP packet with valid checksums. `v6` selects the IP version; options are 12 bytes of
    /// timestamps (as Linux sends) when `ts`.
    fn tcp_packet(v6: bool, seq: u32, flags: u8, ts: bool, payload: &[u8]) -> Vec<u8> {
        let thl = if ts { 32 } else { 20 };
        let l4 = if v6 { 40 } else { 20 };
        let mut p = vec![0u8; l4 + thl + payload.len()];
        if v6 {
            p[0] = 0x60;
            put16(&mut p, 4, (thl + payload.len()) as u16);
            p[6] = PROTO_TCP;
            p[7] = 64;
            p[8..24].copy_from_slice(&"2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
            p[24..40].copy_from_slice(&"2001:db8::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        } else {
            p[0] = 0x45;
            let total = p.len() as u16;
            put16(&mut p, 2, total);
            put16(&mut p, 4, 0x1234);
            put16(&mut p, 6, 0x4000);
            p[8] = 64;
            p[9] = PROTO_TCP;
            p[12..16].copy_from_slice(&[192, 0, 2, 1]);
            p[16..20].copy_from_slice(&[192, 0, 2, 2]);
            set_ipv4_checksum(&mut p, 20);
        }
        put16(&mut p, l4, 40000);
        put16(&mut p, l4 + 2, 5201);
        p[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        p[l4 + 8..l4 + 12].copy_from_slice(&7u32.to_be_bytes());
        p[l4 + 12] = ((thl / 4) as u8) << 4;
        p[l4 + 13] = flags;
        put16(&mut p, l4 + 14, 512);
        if ts {
            p[l4 + 20..l4 + 32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 3]);
        }
        p[l4 + thl..].copy_from_slice(payload);
        let c = !fold(pseudo(&p, PROTO_TCP, p.len() - l4) + sum(0, &p[l4..]));
        put16(&mut p, l4 + 16, c);
        p
    }

    /// What the kernel hands over for a super-segment: one big packet whose TCP checksum field
    /// holds the pseudo-header sum only (CHECKSUM_PARTIAL).
    pub(crate) fn super_segment(v6: bool, seq: u32, flags: u8, payload: &[u8], mss: u16) -> (VnetHdr, Vec<u8>) {
        let mut p = tcp_packet(v6, seq, flags, true, payload);
        let l4 = if v6 { 40 } else { 20 };
        let ph = fold(pseudo(&p, PROTO_TCP, p.len() - l4));
        put16(&mut p, l4 + 16, ph);
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
            hdr_len: (l4 + 32) as u16,
            gso_size: mss,
            csum_start: l4 as u16,
            csum_offset: 16,
        };
        (hdr, p)
    }

    #[test]
    fn known_ipv4_header_checksum() {
        // The classic example header (Wikipedia's IPv4 checksum article): checksum b861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
            0x00, 0xc7,
        ];
        set_ipv4_checksum(&mut h, 20);
        assert_eq!(be16(&h, 10), 0xb861);
    }

    #[test]
    fn vnet_header_round_trips_in_native_order() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV6,
            hdr_len: 72,
            gso_size: 1208,
            csum_start: 40,
            csum_offset: 16,
        };
        let b = h.encode();
        assert_eq!(b[0..2], [1, 4]);
        assert_eq!(b[4..6], 1208u16.to_ne_bytes());
        assert_eq!(VnetHdr::decode(&b), Some(h));
        assert_eq!(VnetHdr::decode(&b[..9]), None);
    }

    #[test]
    fn partial_checksum_is_completed() {
        let full = tcp_packet(true, 1, TCP_ACK | TCP_PSH, true, b"hello");
        let (mut hdr, mut p) = super_segment(true, 1, TCP_ACK | TCP_PSH, b"hello", 1000);
        hdr.gso_type = GSO_NONE;
        hdr.gso_size = 0;
        let mut out = Segments::default();
        must(split(&hdr, &mut p, &mut out));
        assert_eq!(out.len(), 1);
        assert_eq!(out.get(0), &full[..]);
    }

    fn must<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn split_v6_matches_hand_built_segments() {
        let payload: Vec<u8> = (0..2500u32).map(|i| (i * 7) as u8).collect();
        let (hdr, mut p) = super_segment(true, 1000, TCP_ACK | TCP_PSH, &payload, 1208);
        let mut out = Segments::default();
        must(split(&hdr, &mut p, &mut out));
        assert_eq!(out.len(), 3);
        let want = [
            tcp_packet(true, 1000, TCP_ACK, true, &payload[..1208]),
            tcp_packet(true, 2208, TCP_ACK, true, &payload[1208..2416]),
            tcp_packet(true, 3416, TCP_ACK | TCP_PSH, true, &payload[2416..]),
        ];
        for (i, w) in want.iter().enumerate() {
            assert_eq!(out.get(i), &w[..], "segment {i}");
        }
        assert_eq!(out.get(0).len(), 1280, "a full segment is exactly the tunnel MTU");
    }

    #[test]
    fn split_v4_sets_ids_and_flags() {
        let payload = vec![0x5a; 3000];
        let (hdr, mut p) = super_segment(false, u32::MAX - 100, TCP_ACK | TCP_CWR | TCP_FIN, &payload, 1228);
        let mut out = Segments::default();
        must(split(&hdr, &mut p, &mut out));
        assert_eq!(out.len(), 3);
        for i in 0..3 {
            let s = out.get(i);
            assert_eq!(be16(s, 4), 0x1234 + i as u16, "IPv4 ID");
            assert_eq!(usize::from(be16(s, 2)), s.len());
            assert_eq!(fold(sum(0, &s[..20])), 0xffff, "IPv4 header checksum");
            assert!(segment_checksums_ok(s, 20), "TCP checksum of segment {i}");
            let flags = s[33];
            assert_eq!(flags & TCP_CWR != 0, i == 0, "CWR only on the first");
            assert_eq!(flags & TCP_FIN != 0, i == 2, "FIN only on the last");
        }
        // Sequence numbers wrap.
        assert_eq!(be32(out.get(2), 24), (u32::MAX - 100).wrapping_add(2 * 1228));
    }

    #[test]
    fn split_refuses_what_it_cannot_do() {
        let (mut hdr, mut p) = super_segment(true, 1, TCP_ACK, &[1; 3000], 1208);
        let mut out = Segments::default();
        hdr.gso_type = 5; // UDP_L4: never enabled
        assert_eq!(split(&hdr, &mut p, &mut out), Err(SplitError::UnsupportedGso(5)));
        hdr.gso_type = GSO_TCPV4; // a v6 packet
        assert_eq!(split(&hdr, &mut p, &mut out), Err(SplitError::Malformed));
        hdr.gso_type = GSO_TCPV6;
        hdr.gso_size = 0;
        assert_eq!(split(&hdr, &mut p, &mut out), Err(SplitError::Malformed));
        hdr.gso_size = 1208;
        p.truncate(60);
        assert_eq!(split(&hdr, &mut p, &mut out), Err(SplitError::Malformed), "header cut");
        assert!(out.is_empty());
        let mut nc = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 40,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        assert_eq!(split(&nc, &mut [0x60; 50], &mut out), Err(SplitError::Malformed));
        nc.csum_start = 0;
        assert!(split(&nc, &mut [0x60; 50], &mut out).is_ok());
    }

    #[test]
    fn gso_groups_cut_at_size_changes_and_limits() {
        let mut s = Segments::default();
        for len in [100, 100, 100, 40, 100, 100, 20, 100] {
            s.push(&vec![0; len]);
        }
        let mut g = Vec::new();
        gso_groups(&s, 0, 1000, 64, |a, b, n| g.push((a, b, n)));
        assert_eq!(g, [(0, 4, 100), (4, 7, 100), (7, 8, 100)]);
        g.clear();
        gso_groups(&s, 0, 250, 64, |a, b, n| g.push((a, b, n)));
        assert_eq!(g, [(0, 2, 100), (2, 4, 100), (4, 7, 100), (7, 8, 100)]);
        g.clear();
        gso_groups(&s, 0, 1000, 2, |a, b, n| g.push((a, b, n)));
        assert_eq!(g, [(0, 2, 100), (2, 4, 100), (4, 6, 100), (6, 7, 20), (7, 8, 100)]);
        g.clear();
        gso_groups(&s, 5, 1000, 64, |a, b, n| g.push((a, b, n)));
        assert_eq!(g, [(5, 7, 100), (7, 8, 100)]);
    }

    /// Runs `pkts` through GRO; returns each TUN write as (header, bytes).
    fn gro(pkts: &[Vec<u8>]) -> Vec<(VnetHdr, Vec<u8>)> {
        let mut buf = Vec::new();
        let mut ranges = Vec::new();
        for p in pkts {
            ranges.push(buf.len()..buf.len() + p.len());
            buf.extend_from_slice(p);
        }
        let mut g = Gro::new(true);
        for r in ranges {
            g.push(&mut buf, r);
        }
        g.finish(&mut buf);
        g.writes
            .iter()
            .map(|w| {
                (
                    w.hdr,
                    g.parts[w.parts.clone()]
                        .iter()
                        .flat_map(|r| buf[r.clone()].to_vec())
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn gro_merges_a_burst_into_what_split_takes_apart() {
        for v6 in [true, false] {
            let payload: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
            let (hdr, p) = super_segment(v6, 77, TCP_ACK | TCP_PSH, &payload, 1208);
            let mut segs = Segments::default();
            must(split(&hdr, &mut p.clone(), &mut segs));
            let pkts: Vec<Vec<u8>> = (0..segs.len()).map(|i| segs.get(i).to_vec()).collect();
            let w = gro(&pkts);
            assert_eq!(w.len(), 1, "one write");
            assert_eq!(w[0].0, hdr, "v6={v6}");
            let mut want = p.clone();
            if !v6 {
                set_ipv4_checksum(&mut want, 20);
            }
            assert_eq!(w[0].1, want, "v6={v6}: the original super-segment");
        }
    }

    #[test]
    fn gro_keeps_apart_what_must_not_merge() {
        let a = tcp_packet(true, 1, TCP_ACK, true, &[1; 100]);
        let gap = tcp_packet(true, 200, TCP_ACK, true, &[2; 100]);
        let w = gro(&[a.clone(), gap.clone()]);
        assert_eq!(w.len(), 2, "sequence gap");
        assert_eq!(w[0].1, a);
        assert_eq!(w[0].0, VnetHdr::default());

        let mut bad = tcp_packet(true, 101, TCP_ACK, true, &[2; 100]);
        bad[70] ^= 1;
        assert_eq!(gro(&[a.clone(), bad.clone()]).len(), 2, "bad checksum");

        let ack = tcp_packet(true, 101, TCP_ACK, true, &[]);
        let w = gro(&[a.clone(), ack.clone()]);
        assert_eq!(
            w.iter().map(|w| w.1.clone()).collect::<Vec<_>>(),
            [a.clone(), ack],
            "pure ACK"
        );

        let longer = tcp_packet(true, 101, TCP_ACK, true, &[2; 101]);
        assert_eq!(gro(&[a.clone(), longer]).len(), 2, "longer than the first");

        let short = tcp_packet(true, 101, TCP_ACK, true, &[2; 50]);
        let after = tcp_packet(true, 151, TCP_ACK, true, &[3; 50]);
        let w = gro(&[a.clone(), short, after.clone()]);
        assert_eq!(w.len(), 2, "nothing after a short segment");
        assert_eq!(w[1].1, after);

        let mut other_ts = tcp_packet(true, 101, TCP_ACK, true, &[2; 100]);
        other_ts[71] = 4; // TSecr differs
        let l4 = 40;
        put16(&mut other_ts, l4 + 16, 0);
        let c = !fold(pseudo(&other_ts, PROTO_TCP, other_ts.len() - l4) + sum(0, &other_ts[l4..]));
        put16(&mut other_ts, l4 + 16, c);
        assert!(segment_checksums_ok(&other_ts, 40));
        assert_eq!(gro(&[a.clone(), other_ts]).len(), 2, "options differ");

        let v4 = tcp_packet(false, 101, TCP_ACK, true, &[2; 100]);
        assert_eq!(gro(&[a.clone(), v4]).len(), 2, "other family");

        let fin = tcp_packet(true, 101, TCP_ACK | TCP_FIN, true, &[2; 100]);
        assert_eq!(gro(&[a, fin]).len(), 2, "FIN");
    }

    #[test]
    fn gro_interleaved_flows_keep_their_order() {
        let a1 = tcp_packet(true, 1, TCP_ACK, true, &[1; 100]);
        let a2 = tcp_packet(true, 101, TCP_ACK, true, &[2; 100]);
        let mut b1 = tcp_packet(false, 1, TCP_ACK, true, &[3; 100]);
        let mut b2 = tcp_packet(false, 101, TCP_ACK, true, &[4; 100]);
        for b in [&mut b1, &mut b2] {
            // A second flow: another source port.
            put16(b, 20, 40001);
            put16(b, 36, 0);
            let c = !fold(pseudo(b, PROTO_TCP, b.len() - 20) + sum(0, &b[20..]));
            put16(b, 36, c);
        }
        let udp = {
            let mut u = vec![0u8; 48];
            u[0] = 0x60;
            u[5] = 8;
            u[6] = 17;
            u
        };
        let w = gro(&[a1, b1, udp.clone(), a2, b2]);
        assert_eq!(
            w.len(),
            3,
            "{:?}",
            w.iter().map(|w| (w.0, w.1.len())).collect::<Vec<_>>()
        );
        assert_eq!(w[0].1, udp, "the UDP packet is not held back");
        assert!(w[1..].iter().all(|w| w.0.gso_type != GSO_NONE && w.1.len() >= 252));
    }

    #[test]
    fn gro_disabled_writes_each_packet() {
        let a = tcp_packet(true, 1, TCP_ACK, true, &[1; 100]);
        let b = tcp_packet(true, 101, TCP_ACK, true, &[2; 100]);
        let mut buf = [a.clone(), b.clone()].concat();
        let mut g = Gro::new(false);
        g.push(&mut buf, 0..a.len());
        g.push(&mut buf, a.len()..a.len() + b.len());
        g.finish(&mut buf);
        assert_eq!(g.writes.len(), 2);
    }

    proptest! {
        /// Split then merge gives back the super-segment; every piece is a valid packet of at
        /// most the header plus gso_size bytes.
        #[test]
        fn split_then_gro_round_trips(
            v6 in any::<bool>(),
            seq in any::<u32>(),
            len in 1usize..20_000,
            mss in 500u16..1300,
            seed in any::<u8>(),
        ) {
            let payload: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
            let (hdr, p) = super_segment(v6, seq, TCP_ACK, &payload, mss);
            let mut segs = Segments::default();
            prop_assert!(split(&hdr, &mut p.clone(), &mut segs).is_ok());
            let l4 = if v6 { 40 } else { 20 };
            prop_assert_eq!(segs.len(), len.div_ceil(usize::from(mss)));
            for i in 0..segs.len() {
                let s = segs.get(i);
                prop_assert!(s.len() <= l4 + 32 + usize::from(mss));
                prop_assert!(crate::valid_inner(s, v6));
                prop_assert!(segment_checksums_ok(s, l4));
            }
            let pkts: Vec<Vec<u8>> = (0..segs.len()).map(|i| segs.get(i).to_vec()).collect();
            let w = gro(&pkts);
            // One write when it fits in 64 KB and 64 segments, and then it is the original.
            if segs.len() == 1 {
                prop_assert_eq!(w.len(), 1);
                prop_assert_eq!(w[0].0, VnetHdr::default());
            } else if segs.len() < MAX_COALESCED_SEGS {
                prop_assert_eq!(w.len(), 1);
                let mut want = p.clone();
                if !v6 {
                    set_ipv4_checksum(&mut want, 20);
                }
                prop_assert_eq!(&w[0].1, &want);
                prop_assert_eq!(w[0].0, hdr);
            }
            // Whatever the grouping, each write is headers then payload, in order.
            let out: Vec<u8> = w.iter().flat_map(|(_, b)| b[l4 + 32..].to_vec()).collect();
            prop_assert_eq!(out, payload);
        }

        /// GRO never panics and never loses or invents bytes, whatever arrives.
        #[test]
        fn gro_survives_garbage(pkts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20)) {
            let mut buf: Vec<u8> = pkts.concat();
            let mut g = Gro::new(true);
            let mut at = 0;
            for p in &pkts {
                g.push(&mut buf, at..at + p.len());
                at += p.len();
            }
            g.finish(&mut buf);
            prop_assert_eq!(g.writes.len(), pkts.len(), "garbage is never merged");
        }
    }
}
