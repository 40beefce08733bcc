//! Router advertisements for router mode (docs/tsp-wire.md §8): gogoc ran radvd on the home
//! interface with `AdvLinkMTU 1280` and the delegated `<prefix>::/64` `AdvOnLink` /
//! `AdvAutonomous`; this module replaces radvd.
//!
//! [`build_ra`] and [`build_ra_packet`] are sans-IO; [`RaSender`] is the small I/O part: a raw
//! ICMPv6 socket on the LAN interface that advertises periodically, answers Router
//! Solicitations and withdraws the router when stopped.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv6Addr, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn6,
};
use socket2::SockRef;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::time::Instant;

use super::icmp;

/// ICMPv6 Router Solicitation / Advertisement types (RFC 4861 §4.1, §4.2).
pub const ND_ROUTER_SOLICIT: u8 = 133;
pub const ND_ROUTER_ADVERT: u8 = 134;
/// Neighbor Discovery option types.
pub const OPT_SOURCE_LINK_ADDR: u8 = 1;
pub const OPT_PREFIX_INFO: u8 = 3;
pub const OPT_MTU: u8 = 5;
pub const OPT_RDNSS: u8 = 25;
/// All-nodes and all-routers link-local multicast groups.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
pub const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
/// Period of unsolicited advertisements, and the bound of its random jitter (RFC 4861 §6.2.4
/// wants the period randomised so routers on a link do not synchronise).
pub const RA_INTERVAL: Duration = Duration::from_secs(10);
pub const RA_JITTER: Duration = Duration::from_secs(1);
/// RFC 4861 §6.2.1: AdvDefaultLifetime is at most 9000 s.
pub const MAX_ROUTER_LIFETIME: u16 = 9000;
/// RFC 4861 §10 MIN_DELAY_BETWEEN_RAS: spacing of multicast answers to solicitations.
const MIN_DELAY_BETWEEN_RAS: Duration = Duration::from_secs(3);
/// Retry delay after a failed send (e.g. the link-local address is still tentative).
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// At most this many unicast answers to solicitations per second, so a flood of
/// solicitations cannot turn us into an amplifier; the periodic RA still reaches everyone.
const MAX_UNICAST_ANSWERS_PER_SEC: u32 = 10;
/// Linux ICMP6_FILTER socket option (linux/icmpv6.h ICMPV6_FILTER); libc does not export it.
const ICMP6_FILTER: libc::c_int = 1;

/// The option neither nix nor socket2 names, declared through nix's own option macro (which
/// passes the value's address and size to setsockopt).
mod opt {
    use nix::{setsockopt_impl, sockopt_impl};
    sockopt_impl!(
        /// `struct icmp6_filter`: a set bit blocks that ICMPv6 type.
        Icmp6Filter,
        SetOnly,
        libc::IPPROTO_ICMPV6,
        super::ICMP6_FILTER,
        [u32; 8]
    );
}

/// What to advertise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaConfig {
    /// Our link-local address on the LAN interface, the source of every RA (hosts ignore RAs
    /// from other addresses). `::` lets the kernel choose.
    pub source: Ipv6Addr,
    /// The delegated prefix; bits past `prefix_len` are cleared when sent.
    pub prefix: Ipv6Addr,
    /// 64 for SLAAC on Ethernet; larger values are clamped to 128.
    pub prefix_len: u8,
    /// Link MTU to advertise (1280, as gogoc's radvd); 0 omits the MTU option.
    pub mtu: u32,
    /// DNS server to advertise with RDNSS (RFC 8106), with the router lifetime as its lifetime:
    /// it is reached through this router, so it is usable exactly as long as the router is.
    pub rdnss: Option<Ipv6Addr>,
    /// Default-router lifetime in seconds (0: not a default router); clamped to 9000.
    pub router_lifetime: u16,
    /// Prefix valid lifetime in seconds (0xffffffff: infinite).
    pub valid_lifetime: u32,
    /// Prefix preferred lifetime in seconds; clamped to the valid lifetime, since hosts
    /// ignore a prefix whose preferred lifetime exceeds its valid one (RFC 4862 §5.5.3).
    pub preferred_lifetime: u32,
    /// MAC of the LAN interface, sent as the Source Link-Layer Address option so hosts need
    /// no neighbor solicitation to reach us.
    pub source_mac: Option<[u8; 6]>,
}

impl RaConfig {
    /// gogoc's router-mode advertisement with radvd's default lifetimes (router 1800 s, valid
    /// 86400 s, preferred 14400 s): `prefix`/64, MTU 1280, no RDNSS, no MAC.
    pub fn new(source: Ipv6Addr, prefix: Ipv6Addr) -> Self {
        RaConfig {
            source,
            prefix,
            prefix_len: 64,
            mtu: 1280,
            rdnss: None,
            router_lifetime: 1800,
            valid_lifetime: 86_400,
            preferred_lifetime: 14_400,
            source_mac: None,
        }
    }

    /// The advertisement of a router that stops (RFC 4861 §6.2.5): router lifetime 0, so hosts
    /// drop the default route (and the RDNSS), and preferred lifetime 0, so they stop using
    /// the addresses for new connections. The valid lifetime stays: hosts would not shorten
    /// it below two hours anyway (RFC 4862 §5.5.3 e).
    pub fn stopping(&self) -> RaConfig {
        RaConfig {
            router_lifetime: 0,
            preferred_lifetime: 0,
            ..self.clone()
        }
    }
}

/// `addr` with the bits after the first `len` cleared.
fn mask(addr: Ipv6Addr, len: u8) -> Ipv6Addr {
    let bits = u128::from(addr);
    let m = match len {
        0 => 0,
        l => u128::MAX << (128 - u32::from(l.min(128))),
    };
    Ipv6Addr::from(bits & m)
}

/// The ICMPv6 Router Advertisement message (RFC 4861 §4.2), checksum 0: a raw ICMPv6 socket
/// has the kernel fill it in. Options: Source Link-Layer Address (if a MAC is given), MTU
/// (unless 0), Prefix Information with the L and A flags, RDNSS (if a DNS server is given).
pub fn build_ra(cfg: &RaConfig) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + 8 + 8 + 32 + 24);
    let router_lifetime = cfg.router_lifetime.min(MAX_ROUTER_LIFETIME);
    // Cur hop limit 64, no M/O flags (no DHCPv6), reachable time and retrans timer unspecified.
    m.extend_from_slice(&[ND_ROUTER_ADVERT, 0, 0, 0, 64, 0]);
    m.extend_from_slice(&router_lifetime.to_be_bytes());
    m.extend_from_slice(&[0; 8]);
    if let Some(mac) = cfg.source_mac {
        m.extend_from_slice(&[OPT_SOURCE_LINK_ADDR, 1]);
        m.extend_from_slice(&mac);
    }
    if cfg.mtu != 0 {
        m.extend_from_slice(&[OPT_MTU, 1, 0, 0]);
        m.extend_from_slice(&cfg.mtu.to_be_bytes());
    }
    let plen = cfg.prefix_len.min(128);
    // L (on-link) = 0x80, A (autonomous address configuration) = 0x40.
    m.extend_from_slice(&[OPT_PREFIX_INFO, 4, plen, 0xc0]);
    m.extend_from_slice(&cfg.valid_lifetime.to_be_bytes());
    m.extend_from_slice(&cfg.preferred_lifetime.min(cfg.valid_lifetime).to_be_bytes());
    m.extend_from_slice(&[0; 4]);
    m.extend_from_slice(&mask(cfg.prefix, plen).octets());
    if let Some(dns) = cfg.rdnss {
        m.extend_from_slice(&[OPT_RDNSS, 3, 0, 0]);
        m.extend_from_slice(&u32::from(router_lifetime).to_be_bytes());
        m.extend_from_slice(&dns.octets());
    }
    m
}

/// The whole IPv6 packet of the advertisement from `cfg.source` to `dst`: hop limit 255 (hosts
/// drop RAs with any other, RFC 4861 §6.1.2) and the ICMPv6 checksum filled in.
pub fn build_ra_packet(cfg: &RaConfig, dst: Ipv6Addr) -> Vec<u8> {
    let mut out = Vec::new();
    icmp::ipv6_icmp_packet(&cfg.source, &dst, 255, &build_ra(cfg), &mut out);
    out
}

/// Validates a Router Solicitation message as received on a raw ICMPv6 socket (no IPv6 header;
/// the kernel has verified the checksum), following RFC 4861 §6.1.1.
fn valid_solicitation(msg: &[u8], src: &Ipv6Addr, hop_limit: Option<u8>) -> bool {
    // Hop limit 255 proves the sender is on the link.
    if hop_limit != Some(255) || msg.len() < 8 || msg[0] != ND_ROUTER_SOLICIT || msg[1] != 0 {
        return false;
    }
    let mut opts = &msg[8..];
    while !opts.is_empty() {
        let [ty, len, ..] = *opts else { return false };
        let n = usize::from(len) * 8;
        if n == 0 || n > opts.len() {
            return false;
        }
        // A host without an address must not announce its link-layer address.
        if ty == OPT_SOURCE_LINK_ADDR && src.is_unspecified() {
            return false;
        }
        opts = &opts[n..];
    }
    true
}

/// Advertised periods: uniformly within `RA_INTERVAL ± RA_JITTER`, from a random number.
fn jittered_interval(r: u64) -> Duration {
    let span = RA_JITTER.as_millis() as u64 * 2 + 1;
    RA_INTERVAL - RA_JITTER + Duration::from_millis(r % span)
}

/// xorshift64*: jitter needs no cryptographic quality, only to differ between routers.
struct Jitter(u64);

impl Jitter {
    fn new() -> Self {
        use std::hash::{BuildHasher as _, RandomState};
        // std keys each RandomState from the kernel's random pool without ever blocking (as
        // getrandom with GRND_NONBLOCK did): hashing anything with it gives a random seed.
        let mut s = RandomState::new().hash_one(std::process::id());
        if s == 0 {
            s = u64::from(std::process::id()) << 32 | 0x9e37_79b9;
        }
        Jitter(s)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RaError {
    #[error("invalid interface name {0:?}")]
    BadInterfaceName(String),
    #[error("interface {ifname:?}: {source}")]
    NoInterface {
        ifname: String,
        #[source]
        source: io::Error,
    },
    #[error("router advertisements on {ifname}: {op}: {source}")]
    Socket {
        ifname: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("RaSender needs a tokio runtime with I/O enabled")]
    NoRuntime,
}

/// Raw ICMPv6 socket advertising on one LAN interface.
#[derive(Debug)]
pub struct RaSender {
    fd: AsyncFd<OwnedFd>,
    ifname: String,
    ifindex: u32,
}

impl RaSender {
    /// Opens the raw ICMPv6 socket on `ifname` (needs CAP_NET_RAW, and a tokio runtime
    /// context): bound to the device, multicast out of it, hop limit 255 both ways, receiving
    /// only Router Solicitations, member of all-routers (ff02::2) so that solicitations reach it.
    pub fn open(ifname: &str) -> Result<Self, RaError> {
        if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ || ifname.contains(['\0', '/']) {
            return Err(RaError::BadInterfaceName(ifname.to_owned()));
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(RaError::NoRuntime);
        }
        let ifindex = nix::net::if_::if_nametoindex(ifname).map_err(|e| RaError::NoInterface {
            ifname: ifname.to_owned(),
            source: e.into(),
        })?;
        let err = |op, source| RaError::Socket {
            ifname: ifname.to_owned(),
            op,
            source,
        };
        let fd = nix::sys::socket::socket(
            AddressFamily::Inet6,
            SockType::Raw,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            SockProtocol::IcmpV6,
        )
        .map_err(|e| err("socket", e.into()))?;
        let sock = SockRef::from(&fd);
        sock.bind_device(Some(ifname.as_bytes()))
            .map_err(|e| err("SO_BINDTODEVICE", e))?;
        sock.set_multicast_if_v6(ifindex)
            .map_err(|e| err("IPV6_MULTICAST_IF", e))?;
        sock.set_multicast_hops_v6(255)
            .map_err(|e| err("IPV6_MULTICAST_HOPS", e))?;
        sock.set_unicast_hops_v6(255).map_err(|e| err("IPV6_UNICAST_HOPS", e))?;
        sock.set_multicast_loop_v6(false)
            .map_err(|e| err("IPV6_MULTICAST_LOOP", e))?;
        sock.set_recv_hoplimit_v6(true)
            .map_err(|e| err("IPV6_RECVHOPLIMIT", e))?;
        let mut filter = [u32::MAX; 8];
        filter[usize::from(ND_ROUTER_SOLICIT >> 5)] &= !(1u32 << (ND_ROUTER_SOLICIT & 31));
        nix::sys::socket::setsockopt(&fd, opt::Icmp6Filter, &filter).map_err(|e| err("ICMP6_FILTER", e.into()))?;
        sock.join_multicast_v6(&ALL_ROUTERS, ifindex)
            .map_err(|e| err("IPV6_ADD_MEMBERSHIP ff02::2", e))?;
        // SAFETY: an OwnedFd is open and returns the same descriptor until it is dropped with
        // the AsyncFd.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE) }
            .map_err(|e| err("register with tokio", e.into_parts().1))?;
        Ok(RaSender {
            fd,
            ifname: ifname.to_owned(),
            ifindex,
        })
    }

    /// Opens the socket on `ifname` and serves `cfg` until `stop` turns true (or its sender is
    /// dropped); see [`RaSender::serve`].
    pub async fn run(cfg: RaConfig, ifname: &str, stop: watch::Receiver<bool>) -> Result<(), RaError> {
        Self::open(ifname)?.serve(&cfg, stop).await
    }

    /// Advertises `cfg` to ff02::1 at once, then every 10 s ± 1 s; answers each valid Router
    /// Solicitation right away (unicast to its sender, or multicast at most every 3 s when it
    /// came from `::`); when `stop` turns true or its sender is dropped, sends a final RA with
    /// router and preferred lifetimes 0 and returns. Send failures (interface down, address
    /// still tentative) are logged and retried, not fatal.
    pub async fn serve(&self, cfg: &RaConfig, mut stop: watch::Receiver<bool>) -> Result<(), RaError> {
        if *stop.borrow_and_update() {
            return Ok(());
        }
        let ra = build_ra(cfg);
        let mut rng = Jitter::new();
        let mut next = Instant::now();
        let mut last_multicast: Option<Instant> = None;
        let mut failing = false;
        let (mut window, mut answered) = (Instant::now(), 0u32);
        let mut buf = [0u8; 1500];
        loop {
            tokio::select! {
                biased;
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow_and_update() {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(next) => {
                    let now = Instant::now();
                    match self.send(&ra, cfg.source, ALL_NODES).await {
                        Ok(()) => {
                            failing = false;
                            last_multicast = Some(now);
                            next = now + jittered_interval(rng.next());
                        }
                        Err(e) => {
                            if !failing {
                                tracing::warn!(ifname = %self.ifname, error = %e, "router advertisement not sent");
                            }
                            failing = true;
                            next = now + RETRY_DELAY;
                        }
                    }
                }
                r = self.recv_solicitation(&mut buf) => match r {
                    Ok(Some(src)) if src.is_unspecified() => {
                        // Multicast answers are spaced (RFC 4861 §6.2.6): bring the next
                        // periodic RA forward instead of sending more often.
                        let earliest = last_multicast.map_or(Instant::now(), |t| t + MIN_DELAY_BETWEEN_RAS);
                        next = next.min(earliest.max(Instant::now()));
                    }
                    Ok(Some(src)) => {
                        let now = Instant::now();
                        if now.duration_since(window) >= Duration::from_secs(1) {
                            (window, answered) = (now, 0);
                        }
                        if answered < MAX_UNICAST_ANSWERS_PER_SEC {
                            answered += 1;
                            if let Err(e) = self.send(&ra, cfg.source, src).await {
                                tracing::debug!(ifname = %self.ifname, %src, error = %e, "solicited RA not sent");
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!(ifname = %self.ifname, error = %e, "receiving router solicitation");
                        // Do not spin on a persistent error.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        if let Err(e) = self.send(&build_ra(&cfg.stopping()), cfg.source, ALL_NODES).await {
            tracing::warn!(ifname = %self.ifname, error = %e, "final router advertisement not sent");
        }
        Ok(())
    }

    /// Sends one RA message (from [`build_ra`]) from `src` (`::`: the kernel's choice) to `dst`
    /// on our interface.
    pub async fn send(&self, msg: &[u8], src: Ipv6Addr, dst: Ipv6Addr) -> io::Result<()> {
        let to = SockaddrIn6::from(SocketAddrV6::new(dst, 0, 0, self.ifindex));
        let info = libc::in6_pktinfo {
            ipi6_addr: libc::in6_addr { s6_addr: src.octets() },
            ipi6_ifindex: self.ifindex,
        };
        let cmsgs = [ControlMessage::Ipv6PacketInfo(&info)];
        let cmsgs: &[ControlMessage] = if src.is_unspecified() { &[] } else { &cmsgs };
        self.fd
            .async_io(Interest::WRITABLE, |fd| {
                nix::sys::socket::sendmsg(
                    fd.as_fd().as_raw_fd(),
                    &[IoSlice::new(msg)],
                    cmsgs,
                    MsgFlags::empty(),
                    Some(&to),
                )
                .map_err(io::Error::from)
            })
            .await
            .map(drop)
    }

    /// Receives one message; `Some(source)` if it is a valid Router Solicitation.
    async fn recv_solicitation(&self, buf: &mut [u8]) -> io::Result<Option<Ipv6Addr>> {
        self.fd
            .async_io(Interest::READABLE, |fd| {
                let mut cmsg = [0u8; 64];
                let mut iov = [IoSliceMut::new(buf)];
                let msg = nix::sys::socket::recvmsg::<SockaddrIn6>(
                    fd.as_fd().as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::empty(),
                )
                .map_err(io::Error::from)?;
                let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
                let (len, src) = (msg.bytes, msg.address.map(|a| a.ip()));
                let mut hop_limit = None;
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::Ipv6HopLimit(h) = c {
                            hop_limit = u8::try_from(h).ok();
                        }
                    }
                }
                Ok((len, src, hop_limit, truncated))
            })
            .await
            .map(|(len, src, hop_limit, truncated)| {
                let src = src?;
                let msg = buf.get(..len)?;
                (!truncated && valid_solicitation(msg, &src, hop_limit)).then_some(src)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
    const PREFIX: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, 0);
    const DNS: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x53);
    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

    fn full_cfg() -> RaConfig {
        RaConfig {
            rdnss: Some(DNS),
            source_mac: Some(MAC),
            ..RaConfig::new(LL, PREFIX)
        }
    }

    #[test]
    fn ra_bytes_all_options() {
        #[rustfmt::skip]
        let expected: Vec<u8> = vec![
            // RA: type 134, code 0, checksum 0, hop limit 64, flags 0, router lifetime 1800,
            // reachable time 0, retrans timer 0.
            134, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0,
            // Source link-layer address, 1 unit.
            1, 1, 0x02, 0, 0, 0, 0, 0x01,
            // MTU 1280.
            5, 1, 0, 0, 0, 0, 0x05, 0x00,
            // Prefix information: /64, L|A, valid 86400, preferred 14400, reserved, prefix.
            3, 4, 64, 0xc0, 0, 0x01, 0x51, 0x80, 0, 0, 0x38, 0x40, 0, 0, 0, 0,
            0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0,
            // RDNSS, 3 units, lifetime 1800, 2001:db8::53.
            25, 3, 0, 0, 0, 0, 0x07, 0x08,
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x53,
        ];
        assert_eq!(build_ra(&full_cfg()), expected);
    }

    #[test]
    fn ra_bytes_minimal_and_masked() {
        // Host bits of the prefix are cleared; no MAC, no RDNSS, no MTU; preferred clamped.
        let cfg = RaConfig {
            prefix: "2001:db8:1:2::1".parse().unwrap(),
            mtu: 0,
            router_lifetime: 60_000,
            valid_lifetime: 100,
            preferred_lifetime: 200,
            ..RaConfig::new(LL, PREFIX)
        };
        #[rustfmt::skip]
        let expected: Vec<u8> = vec![
            134, 0, 0, 0, 64, 0, 0x23, 0x28, 0, 0, 0, 0, 0, 0, 0, 0,
            3, 4, 64, 0xc0, 0, 0, 0, 100, 0, 0, 0, 100, 0, 0, 0, 0,
            0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(build_ra(&cfg), expected);
        assert_eq!(
            mask("2001:db8:ffff::1".parse().unwrap(), 36),
            "2001:db8:f000::".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(mask(PREFIX, 0), Ipv6Addr::UNSPECIFIED);
        assert_eq!(mask(DNS, 200), DNS);
    }

    #[test]
    fn stopping_ra() {
        let ra = build_ra(&full_cfg().stopping());
        assert_eq!(&ra[6..8], &[0, 0], "router lifetime");
        assert_eq!(&ra[32 + 8..32 + 12], &[0, 0, 0, 0], "preferred lifetime");
        assert_eq!(&ra[32 + 4..32 + 8], &86_400u32.to_be_bytes(), "valid lifetime kept");
        assert_eq!(&ra[64 + 4..64 + 8], &[0, 0, 0, 0], "RDNSS lifetime");
    }

    #[test]
    fn ra_packet_bytes() {
        let pkt = build_ra_packet(&full_cfg(), ALL_NODES);
        let mut expected = vec![0x60, 0, 0, 0, 0, 88, 58, 255];
        expected.extend_from_slice(&LL.octets());
        expected.extend_from_slice(&ALL_NODES.octets());
        let mut msg = build_ra(&full_cfg());
        // Checksum computed independently (Python, RFC 1071 over the pseudo-header + message).
        msg[2..4].copy_from_slice(&[0xde, 0x82]);
        expected.extend_from_slice(&msg);
        assert_eq!(pkt, expected);
        assert_eq!(icmp::icmpv6_checksum(&LL, &ALL_NODES, &pkt[40..]), 0);
    }

    #[test]
    fn solicitation_validation() {
        let rs = [133, 0, 0, 0, 0, 0, 0, 0];
        let host: Ipv6Addr = "fe80::2".parse().unwrap();
        assert!(valid_solicitation(&rs, &host, Some(255)));
        assert!(!valid_solicitation(&rs, &host, Some(254)), "off-link");
        assert!(!valid_solicitation(&rs, &host, None));
        assert!(!valid_solicitation(&rs[..7], &host, Some(255)));
        assert!(!valid_solicitation(&[134, 0, 0, 0, 0, 0, 0, 0], &host, Some(255)));
        assert!(
            !valid_solicitation(&[133, 1, 0, 0, 0, 0, 0, 0], &host, Some(255)),
            "code"
        );
        let mut with_slla = rs.to_vec();
        with_slla.extend_from_slice(&[1, 1, 2, 0, 0, 0, 0, 2]);
        assert!(valid_solicitation(&with_slla, &host, Some(255)));
        assert!(!valid_solicitation(&with_slla, &Ipv6Addr::UNSPECIFIED, Some(255)));
        assert!(valid_solicitation(&rs, &Ipv6Addr::UNSPECIFIED, Some(255)));
        let mut zero_len = rs.to_vec();
        zero_len.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
        assert!(!valid_solicitation(&zero_len, &host, Some(255)));
        let mut overlong = rs.to_vec();
        overlong.extend_from_slice(&[1, 2, 0, 0, 0, 0, 0, 0]);
        assert!(!valid_solicitation(&overlong, &host, Some(255)));
        let mut odd = rs.to_vec();
        odd.push(1);
        assert!(!valid_solicitation(&odd, &host, Some(255)));
    }

    #[test]
    fn jitter_is_bounded() {
        let mut j = Jitter::new();
        let (mut lo, mut hi) = (Duration::MAX, Duration::ZERO);
        for _ in 0..10_000 {
            let d = jittered_interval(j.next());
            assert!(d >= RA_INTERVAL - RA_JITTER && d <= RA_INTERVAL + RA_JITTER, "{d:?}");
            (lo, hi) = (lo.min(d), hi.max(d));
        }
        assert!(hi - lo > Duration::from_millis(1500), "actually jittered");
        assert_eq!(jittered_interval(0), RA_INTERVAL - RA_JITTER);
        assert_eq!(jittered_interval(2000), RA_INTERVAL + RA_JITTER);
    }

    #[test]
    fn open_errors() {
        assert!(matches!(RaSender::open(""), Err(RaError::BadInterfaceName(_))));
        assert!(matches!(
            RaSender::open("a-very-long-interface-name"),
            Err(RaError::BadInterfaceName(_))
        ));
        assert!(matches!(RaSender::open("lo"), Err(RaError::NoRuntime)));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(matches!(
                RaSender::open("nonexistent0"),
                Err(RaError::NoInterface { .. })
            ));
        });
    }

    proptest! {
        #[test]
        fn build_never_panics(
            prefix: u128, prefix_len: u8, mtu: u32, dns: Option<u128>, router_lifetime: u16,
            valid: u32, preferred: u32, mac: Option<[u8; 6]>,
        ) {
            let cfg = RaConfig {
                source: LL, prefix: prefix.into(), prefix_len, mtu, rdnss: dns.map(Ipv6Addr::from), router_lifetime,
                valid_lifetime: valid, preferred_lifetime: preferred, source_mac: mac,
            };
            let pkt = build_ra_packet(&cfg, ALL_NODES);
            prop_assert_eq!(icmp::icmpv6_checksum(&LL, &ALL_NODES, &pkt[40..]), 0);
            prop_assert_eq!(pkt.len() % 8, 0);
        }

        #[test]
        fn solicitation_never_panics(msg in proptest::collection::vec(any::<u8>(), 0..80), unspec: bool, hl: Option<u8>) {
            let src = if unspec { Ipv6Addr::UNSPECIFIED } else { LL };
            let _ = valid_solicitation(&msg, &src, hl);
        }
    }

    /// Real check, as root: the sender in one network namespace, `rdisc6` and a SLAAC host in
    /// another, joined by a veth pair.
    mod netns {
        use super::*;
        use std::process::{Command, Output};
        use std::time::Instant as StdInstant;

        struct Netns(Vec<String>);

        impl Drop for Netns {
            fn drop(&mut self) {
                for ns in &self.0 {
                    let _ = Command::new("ip").args(["netns", "del", ns]).output();
                }
            }
        }

        fn run(args: &[&str]) -> Output {
            let out = Command::new(args[0]).args(&args[1..]).output().expect("spawn");
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out
        }

        fn text(args: &[&str]) -> String {
            String::from_utf8_lossy(&run(args).stdout).into_owned()
        }

        /// Polls `f` every 100 ms for at most `limit`.
        fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
            let end = StdInstant::now() + limit;
            while StdInstant::now() < end {
                if f() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            f()
        }

        #[test]
        fn rdisc6_and_slaac_in_netns() {
            if !nix::unistd::geteuid().is_root() {
                eprintln!("skipped: needs root for network namespaces");
                return;
            }
            let (a, b) = (
                format!("nmtsp-ra-a-{}", std::process::id()),
                format!("nmtsp-ra-b-{}", std::process::id()),
            );
            let guard = Netns(vec![a.clone(), b.clone()]);
            for ns in &guard.0 {
                let out = Command::new("ip").args(["netns", "add", ns]).output();
                if !out.as_ref().is_ok_and(|o| o.status.success()) {
                    eprintln!("skipped: cannot create network namespace {ns}: {out:?}");
                    return;
                }
            }
            run(&[
                "ip", "link", "add", "rav0", "netns", &a, "type", "veth", "peer", "name", "rav1", "netns", &b,
            ]);
            run(&["ip", "-n", &a, "link", "set", "rav0", "address", "02:00:00:00:00:01"]);
            // No DAD, so the link-local addresses are usable at once and the test is quick.
            run(&[
                "ip",
                "netns",
                "exec",
                &a,
                "sysctl",
                "-qw",
                "net.ipv6.conf.rav0.accept_dad=0",
            ]);
            run(&["ip", "-n", &a, "addr", "add", "fe80::1/64", "dev", "rav0", "nodad"]);
            for kv in ["accept_dad=0", "accept_ra=2", "autoconf=1"] {
                run(&[
                    "ip",
                    "netns",
                    "exec",
                    &b,
                    "sysctl",
                    "-qw",
                    &format!("net.ipv6.conf.rav1.{kv}"),
                ]);
            }
            run(&["ip", "-n", &a, "link", "set", "rav0", "up"]);
            run(&["ip", "-n", &b, "link", "set", "rav1", "up"]);

            let (stop_tx, stop_rx) = watch::channel(false);
            let ns_path = format!("/run/netns/{a}");
            let sender = std::thread::spawn(move || -> Result<(), String> {
                let ns = std::fs::File::open(&ns_path).map_err(|e| e.to_string())?;
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(RaSender::run(full_cfg(), "rav0", stop_rx))
                    .map_err(|e| e.to_string())
            });

            // rdisc6 needs a usable link-local address to solicit from.
            let addrs = || text(&["ip", "-n", &b, "-6", "addr", "show", "dev", "rav1"]);
            let ll_ready = |s: String| s.contains("inet6 fe80::") && !s.contains("tentative");
            assert!(wait_for(Duration::from_secs(10), || ll_ready(addrs())), "{}", addrs());

            let have_rdisc6 = Command::new("rdisc6").arg("-V").output().is_ok();
            if have_rdisc6 {
                let out = Command::new("ip")
                    .args(["netns", "exec", &b, "rdisc6", "-1", "-r", "3", "-w", "2000", "rav1"])
                    .output()
                    .expect("rdisc6");
                let s = String::from_utf8_lossy(&out.stdout);
                println!("rdisc6 output:\n{s}");
                assert!(
                    out.status.success(),
                    "rdisc6 failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                // Compare with runs of blanks collapsed; rdisc6 aligns its columns.
                let flat = s.split_whitespace().collect::<Vec<_>>().join(" ");
                for want in [
                    "Router lifetime : 1800",
                    "Source link-layer address: 02:00:00:00:00:01",
                    "MTU : 1280 bytes (valid)",
                    "Prefix : 2001:db8:1:2::/64 On-link : Yes Autonomous address conf.: Yes",
                    "Recursive DNS server : 2001:db8::53",
                    "from fe80::1",
                ] {
                    assert!(flat.contains(want), "{want:?} not in rdisc6 output:\n{s}");
                }
                // A second solicitation long before the next periodic RA (≥ 9 s after the
                // first): only an answer to the solicitation itself can satisfy it.
                let t = StdInstant::now();
                let out = Command::new("ip")
                    .args(["netns", "exec", &b, "rdisc6", "-1", "-r", "1", "-w", "1500", "rav1"])
                    .output()
                    .expect("rdisc6");
                assert!(out.status.success(), "no answer to a router solicitation");
                assert!(t.elapsed() < Duration::from_millis(1500));
            } else {
                println!("rdisc6 part skipped: rdisc6 not installed (Debian package ndisc6)");
            }

            // SLAAC from the advertised /64, the default route via our link-local, MTU 1280.
            assert!(
                wait_for(Duration::from_secs(15), || addrs().contains("inet6 2001:db8:1:2:")),
                "{}",
                addrs()
            );
            let routes = || text(&["ip", "-n", &b, "-6", "route", "show", "default"]);
            assert!(
                wait_for(Duration::from_secs(5), || routes().contains("via fe80::1 ")),
                "{}",
                routes()
            );
            let mtu = text(&["ip", "netns", "exec", &b, "sysctl", "-n", "net.ipv6.conf.rav1.mtu"]);
            assert_eq!(mtu.trim(), "1280");
            println!("host addresses:\n{}", addrs());

            // Stopping withdraws the router and deprecates the address.
            stop_tx.send(true).unwrap();
            sender.join().unwrap().unwrap();
            assert!(
                wait_for(Duration::from_secs(5), || !routes().contains("via fe80::1")),
                "{}",
                routes()
            );
            assert!(
                wait_for(Duration::from_secs(5), || addrs().contains("deprecated")),
                "{}",
                addrs()
            );
            println!("after stop:\n{}", addrs());
            drop(guard);
        }
    }
}
