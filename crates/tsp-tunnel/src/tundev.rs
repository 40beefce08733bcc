//! The TUN device of the userspace datapath (v6udpv4 always; v6v4 and v4v6 where the kernel has
//! no sit/ip6tnl, as on the test machine).
//!
//! The device is opened with `IFF_TUN | IFF_NO_PI | IFF_VNET_HDR`: each read or write is one IP
//! packet after a 10-byte `virtio_net_hdr`, with no 4-byte packet-information header. With
//! `TUNSETOFFLOAD` (checksum, TSO4, TSO6) the kernel hands over TCP super-segments of up to
//! 64 KB and accepts them back, which [`super::offload`] splits and builds: one system call per
//! 64 KB instead of per 1280 bytes. Where the kernel refuses the offload the header stays
//! (always zero then) and each read is one packet. The device is not persistent unless asked
//! ([`TunDevice::set_persistent`]), so it disappears when [`TunDevice`] is dropped, including
//! when the process is killed. Addresses and routes are set through [`super::netlink`]: the
//! `tun` crate can only set IPv4 addresses. The crate creates and configures the device; the
//! I/O is ours (`readv`/`writev` on the descriptor) because the header must be read and written
//! with each packet and a burst drained without awaiting per packet.
//!
//! See docs/tsp-wire.md §6.

use std::io;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::offload::{self, VNET_HDR_LEN, VnetHdr};

/// Where the kernel's TUN/TAP clone device lives.
const TUN_CLONE_DEVICE: &str = "/dev/net/tun";

/// Opening the TUN device failed.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("cannot open TUN {name}: no tokio runtime is current")]
    NoRuntime { name: String },
    #[error("cannot open TUN {name}: {TUN_CLONE_DEVICE} is missing (no TUN support, or not visible here)")]
    NoTunDevice { name: String },
    #[error("cannot open TUN {name}: permission denied (CAP_NET_ADMIN is needed): {source}")]
    PermissionDenied {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot open TUN {name}: the device is busy (another process has it open)")]
    Busy { name: String },
    #[error("cannot open TUN {name}: an interface of another type already has that name")]
    NameTaken { name: String },
    #[error("cannot open TUN {name}: {source}")]
    Open {
        name: String,
        #[source]
        source: tun::Error,
    },
}

/// An up, layer-3 TUN interface without packet-information header, with a virtio-net header.
pub struct TunDevice {
    fd: AsyncFd<OwnedFd>,
    name: String,
    mtu: u16,
    offload: bool,
}

/// Set to `off` to open TUN devices without offload and use no UDP GSO/GRO: the
/// one-packet-per-system-call datapath, for comparison and for testing the fallback.
pub const OFFLOAD_ENV: &str = "NM_TSP_OFFLOAD";

/// Whether the environment asks for the one-packet datapath.
pub fn offload_disabled_by_env() -> bool {
    std::env::var_os(OFFLOAD_ENV).is_some_and(|v| v == "off" || v == "0")
}

/// What we ask the kernel to hand over: partial checksums and TCP super-segments of both
/// families. Not USO (UDP segmentation): the inner UDP traffic is rarely bulk, and a UDP
/// super-segment would need its own split.
const OFFLOADS: libc::c_uint = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;

fn set_offload(fd: RawFd, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; fd is an open TUN descriptor.
    if unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD as _, libc::c_ulong::from(flags)) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl std::fmt::Debug for TunDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunDevice")
            .field("name", &self.name)
            .field("mtu", &self.mtu)
            .finish()
    }
}

/// Interface names: 1..=15 bytes (IFNAMSIZ 16 with the NUL); no '/', ':', '%' or whitespace
/// (the kernel's dev_valid_name, plus ':' for aliases and '%' which would ask the kernel to
/// pick a name for us).
fn validate_name(name: &str) -> Result<(), TunnelError> {
    let invalid = |reason| {
        Err(TunnelError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("empty");
    }
    if name.len() > 15 {
        return invalid("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return invalid("reserved name");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '%' || c.is_whitespace() || c == '\0')
    {
        return invalid("contains '/', ':', '%', NUL or whitespace");
    }
    Ok(())
}

/// Turn the tun crate's error into one that says what to do about it.
fn classify(name: &str, e: tun::Error) -> TunnelError {
    let name = name.to_owned();
    let tun::Error::Io(io) = &e else {
        return TunnelError::Open { name, source: e };
    };
    match io.raw_os_error() {
        Some(libc::ENOENT | libc::ENXIO | libc::ENODEV) if !std::path::Path::new(TUN_CLONE_DEVICE).exists() => {
            TunnelError::NoTunDevice { name }
        }
        Some(libc::EPERM | libc::EACCES) => match e {
            tun::Error::Io(source) => TunnelError::PermissionDenied { name, source },
            other => TunnelError::Open { name, source: other },
        },
        // TUNSETIFF on a TUN that another file descriptor holds.
        Some(libc::EBUSY) => TunnelError::Busy { name },
        // TUNSETIFF on an existing interface that is not a TUN (veth, a TAP, …).
        Some(libc::EINVAL) if nix::net::if_::if_nametoindex(name.as_str()).is_ok() => TunnelError::NameTaken { name },
        _ => TunnelError::Open { name, source: e },
    }
}

impl TunDevice {
    /// Create the TUN interface `name`, set its MTU and bring it up. Must be called inside a
    /// tokio runtime (the device registers with its reactor). The interface lives in the network
    /// namespace of the calling thread.
    pub fn open(name: &str, mtu: u16) -> Result<TunDevice, TunnelError> {
        validate_name(name)?;
        // tun's AsyncDevice panics without a reactor; make that an error instead.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(TunnelError::NoRuntime { name: name.to_owned() });
        }
        let mut cfg = tun::Configuration::default();
        // Layer 3 and no packet information (IFF_NO_PI) are the crate's Linux defaults; `up()`
        // and `mtu()` are applied with SIOCSIFFLAGS / SIOCSIFMTU right after TUNSETIFF.
        cfg.tun_name(name).layer(tun::Layer::L3).mtu(mtu).up();
        cfg.platform_config(|p| {
            p.vnet_hdr(true);
        });
        let dev = tun::create(&cfg).map_err(|e| classify(name, e))?;
        // SAFETY: into_raw_fd hands over the TUN descriptor, which nothing else owns now.
        let owned = unsafe { OwnedFd::from_raw_fd(dev.into_raw_fd()) };
        let io_err = |source: io::Error| TunnelError::Open {
            name: name.to_owned(),
            source: tun::Error::Io(source),
        };
        nonblocking(&owned).map_err(io_err)?;
        let offload = if offload_disabled_by_env() {
            tracing::info!(tun = name, "TUN offload off ({OFFLOAD_ENV}=off): one packet per read");
            let _ = set_offload(owned.as_raw_fd(), 0);
            false
        } else {
            match set_offload(owned.as_raw_fd(), OFFLOADS) {
                Ok(()) => true,
                Err(e) => {
                    // Reads still carry a (zero) virtio header; each is one packet.
                    if super::first_fallback(&super::fallback::TUN_OFFLOAD) {
                        tracing::warn!(tun = name, error = %e, "TUNSETOFFLOAD refused: one packet per read");
                    }
                    false
                }
            }
        };
        // SAFETY: the OwnedFd keeps returning the same open descriptor until it is dropped
        // together with the AsyncFd.
        let fd = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE | Interest::WRITABLE) }
            .map_err(|e| io_err(e.into_parts().1))?;
        tracing::debug!(tun = name, mtu, offload, "TUN device up");
        Ok(TunDevice {
            fd,
            name: name.to_owned(),
            mtu,
            offload,
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface index (`if_nametoindex`, in the calling thread's network namespace).
    pub fn index(&self) -> io::Result<u32> {
        nix::net::if_::if_nametoindex(self.name.as_str())
            .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("index of {}: {e}", self.name)))
    }

    /// Makes the interface outlive this descriptor (`TUNSETPERSIST`), or not. A persistent
    /// TUN survives its process (a killed NetworkManager plugin leaves it behind, and the next
    /// activation finds it by name and removes it); reopening the same name attaches to it
    /// again. Its owner deletes it (rtnetlink) when done.
    pub fn set_persistent(&self, on: bool) -> io::Result<()> {
        nix::ioctl_write_int_bad!(
            tunsetpersist,
            nix::request_code_write!(b'T', 203, std::mem::size_of::<libc::c_int>())
        );
        // SAFETY: TUNSETPERSIST takes its argument by value; the descriptor is our open TUN.
        unsafe { tunsetpersist(self.fd.as_raw_fd(), libc::c_int::from(on)) }
            .map(|_| ())
            .map_err(io::Error::from)
    }

    /// The MTU the device was opened with.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// Whether the kernel hands over TCP super-segments (TUNSETOFFLOAD accepted).
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// Read one IP packet (IPv4 or IPv6, no header) sent by the kernel into the tunnel, its
    /// checksum completed if the kernel left it partial. `buf` should hold at least the MTU; a
    /// longer packet is truncated by the kernel. A TCP super-segment is an `InvalidData`
    /// error here: the datapath reads with [`TunDevice::recv_vnet`].
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut hdr = [0u8; VNET_HDR_LEN];
        let n = self
            .fd
            .async_io(Interest::READABLE, |fd| {
                readv(fd, &mut [io::IoSliceMut::new(&mut hdr), io::IoSliceMut::new(buf)])
            })
            .await?;
        let n = n.saturating_sub(VNET_HDR_LEN);
        let hdr = VnetHdr::decode(&hdr).unwrap_or_default();
        if hdr.gso_type != offload::GSO_NONE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "TUN: a super-segment"));
        }
        if hdr.flags & offload::F_NEEDS_CSUM != 0 {
            offload::complete_checksum(&hdr, &mut buf[..n])
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "TUN: bad checksum offsets"))?;
        }
        Ok(n)
    }

    /// Reads what the kernel sends into the tunnel, virtio header first, into `buf` (which
    /// should hold 64 KB plus the header). Waits for the first; `Ok(None)` once drained.
    pub async fn recv_vnet(&self, buf: &mut [u8], wait: bool) -> io::Result<Option<usize>> {
        if wait {
            return self
                .fd
                .async_io(Interest::READABLE, |fd| readv(fd, &mut [io::IoSliceMut::new(buf)]))
                .await
                .map(Some);
        }
        crate::if_queued(
            self.fd
                .try_io(Interest::READABLE, |fd| readv(fd, &mut [io::IoSliceMut::new(buf)])),
        )
    }

    /// Reads at once, whatever tokio last saw of the device's readiness: a packet the kernel
    /// queued while we were writing (the answer to what we just delivered — an echo reply, a
    /// TCP ACK) is taken by the same wake-up, instead of waiting for the next turn of the
    /// event loop, possibly on another thread. `Ok(None)`: nothing queued.
    pub fn recv_vnet_now(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        crate::if_queued(readv(self.fd.get_ref(), &mut [io::IoSliceMut::new(buf)]))
    }

    /// Waits until the device has something to read (without reading it).
    pub async fn readable(&self) -> io::Result<()> {
        // The guard is dropped without clearing: the read that follows clears the readiness
        // when it finds nothing.
        self.fd.readable().await.map(drop)
    }

    /// Hand one IP packet (no header) to the kernel as if it came out of the tunnel.
    pub async fn send(&self, pkt: &[u8]) -> io::Result<usize> {
        let hdr = VnetHdr::default().encode();
        let n = self.send_vnet(&[IoSlice::new(&hdr), IoSlice::new(pkt)]).await?;
        Ok(n.saturating_sub(VNET_HDR_LEN))
    }

    /// Writes one packet given as slices, the first of which is its virtio header.
    pub async fn send_vnet(&self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        self.fd
            .async_io(Interest::WRITABLE, |fd| {
                nix::sys::uio::writev(fd, parts).map_err(io::Error::from)
            })
            .await
    }
}

fn readv(fd: impl AsFd, bufs: &mut [io::IoSliceMut<'_>]) -> io::Result<usize> {
    nix::sys::uio::readv(fd, bufs).map_err(io::Error::from)
}

fn nonblocking(fd: impl AsFd) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_retain(fcntl(&fd, FcntlArg::F_GETFL)?);
    fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

impl AsRawFd for TunDevice {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{eventually, in_new_netns, must, run, sh};
    use super::*;
    use std::net::{Ipv6Addr, SocketAddr};
    use std::time::Duration;
    use tokio::time::timeout;

    #[test]
    fn names_are_validated() {
        for bad in [
            "",
            "a/b",
            "a b",
            "tab\t",
            "al:ias",
            "tun%d",
            "sixteen_bytes_xx",
            ".",
            "..",
        ] {
            assert!(
                matches!(validate_name(bad), Err(TunnelError::InvalidName { .. })),
                "{bad:?} accepted"
            );
        }
        for good in ["tun", "tsp0", "fifteen_bytes_x", "gogo-v6udpv4"] {
            assert!(validate_name(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn device_is_shareable_between_tasks() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<TunDevice>();
    }

    #[test]
    fn outside_a_runtime_is_an_error_not_a_panic() {
        assert!(matches!(
            TunDevice::open("nlttun9", 1280),
            Err(TunnelError::NoRuntime { .. })
        ));
    }

    #[test]
    fn open_up_mtu_and_gone_after_drop() {
        in_new_netns(false, || async {
            let tun = must(TunDevice::open("nlttun0", 1280));
            assert_eq!(tun.name(), "nlttun0");
            assert_eq!(tun.mtu(), 1280);
            assert_eq!(tun.index().ok(), nix::net::if_::if_nametoindex("nlttun0").ok());
            let link = sh("ip -d link show nlttun0");
            assert!(link.contains("mtu 1280"), "{link}");
            assert!(link.contains(",UP") || link.contains("<UP"), "{link}");
            // `ip -d` reports the driver: a layer-3 TUN without PI that is not persistent.
            assert!(link.contains("tun type tun pi off"), "{link}");
            assert!(!link.contains("persist on"), "{link}");
            assert!(link.contains("vnet_hdr on"), "{link}");
            assert!(tun.offload(), "TUNSETOFFLOAD refused by this kernel");

            drop(tun);
            // (See busy_and_taken_names_are_clear_errors for why this may take a moment.)
            let gone = eventually(|| nix::net::if_::if_nametoindex("nlttun0").is_err()).await;
            assert!(gone, "nlttun0 survived its drop");
            assert!(
                !run("ip link show nlttun0").status.success(),
                "nlttun0 survived its drop"
            );
        });
    }

    /// nm-tsp-service keeps a persistent TUN between negotiations and reopens it by name with
    /// the same flags (virtio header, offload): that must attach to the same interface.
    #[test]
    fn persistent_device_is_reopened_with_offload() {
        in_new_netns(false, || async {
            let tun = must(TunDevice::open("nlttun0", 1280));
            let index = must(tun.index());
            must(tun.set_persistent(true));
            drop(tun);
            assert!(sh("ip -d link show nlttun0").contains("persist on"));
            let again = eventually(|| TunDevice::open("nlttun0", 1280).is_ok()).await;
            assert!(again, "a persistent TUN could not be reopened");
            // (`eventually` dropped the probe that succeeded.)
            let tun = must(TunDevice::open("nlttun0", 1280));
            assert_eq!(must(tun.index()), index, "the same interface");
            assert!(tun.offload());
            must(tun.set_persistent(false));
            drop(tun);
            let gone = eventually(|| nix::net::if_::if_nametoindex("nlttun0").is_err()).await;
            assert!(gone, "a TUN made non-persistent survived its last descriptor");
        });
    }

    #[test]
    fn busy_and_taken_names_are_clear_errors() {
        in_new_netns(false, || async {
            let first = must(TunDevice::open("nlttun0", 1280));
            match TunDevice::open("nlttun0", 1280) {
                Err(e @ TunnelError::Busy { .. }) => assert!(e.to_string().contains("nlttun0"), "{e}"),
                other => panic!("expected Busy, got {other:?}"),
            }
            drop(first);
            // Free again once the first holder is gone. Not necessarily at once: a process
            // another test thread is spawning can hold a copy of the descriptor until it execs
            // (O_CLOEXEC closes it only then).
            let reopened = eventually(|| TunDevice::open("nlttun0", 1280).is_ok()).await;
            assert!(reopened, "nlttun0 still busy 5 s after its holder closed it");

            sh("ip link add nltveth0 type veth peer name nltveth1");
            match TunDevice::open("nltveth0", 1280) {
                Err(e @ TunnelError::NameTaken { .. }) => assert!(e.to_string().contains("nltveth0"), "{e}"),
                other => panic!("expected NameTaken, got {other:?}"),
            }
        });
    }

    #[test]
    fn missing_clone_device_is_a_clear_error() {
        in_new_netns(true, || async {
            // Hide /dev/net/tun in this thread's private mount namespace only.
            sh("mount -t tmpfs nltest /dev/net");
            match TunDevice::open("nlttun0", 1280) {
                Err(e @ TunnelError::NoTunDevice { .. }) => assert!(e.to_string().contains("/dev/net/tun"), "{e}"),
                other => panic!("expected NoTunDevice, got {other:?}"),
            }
        });
    }

    /// Internet checksum over an IPv6 pseudo-header and a UDP datagram.
    fn udp6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, udp: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        let mut add = |bytes: &[u8]| {
            for c in bytes.chunks(2) {
                let word = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
                sum += u32::from(word);
            }
        };
        add(&src.octets());
        add(&dst.octets());
        let len = u32::try_from(udp.len()).unwrap_or(0);
        add(&len.to_be_bytes());
        add(&[0, 0, 0, 17]);
        add(udp);
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        match !(sum as u16) {
            0 => 0xffff,
            c => c,
        }
    }

    fn udp6_packet(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
        let (SocketAddr::V6(s), SocketAddr::V6(d)) = (src, dst) else {
            panic!("IPv6 only");
        };
        let udp_len = 8 + payload.len();
        let mut udp = Vec::with_capacity(udp_len);
        udp.extend_from_slice(&s.port().to_be_bytes());
        udp.extend_from_slice(&d.port().to_be_bytes());
        udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(payload);
        let ck = udp6_checksum(s.ip(), d.ip(), &udp);
        udp[6..8].copy_from_slice(&ck.to_be_bytes());
        let mut pkt = vec![0x60, 0, 0, 0];
        pkt.extend_from_slice(&(udp_len as u16).to_be_bytes());
        pkt.extend_from_slice(&[17, 64]);
        pkt.extend_from_slice(&s.ip().octets());
        pkt.extend_from_slice(&d.ip().octets());
        pkt.extend_from_slice(&udp);
        pkt
    }

    #[test]
    fn packets_cross_without_packet_information_header() {
        in_new_netns(false, || async {
            let tun = must(TunDevice::open("nlttun0", 1280));
            // `nodad`: without it the address is tentative for a moment and bind() fails.
            sh("ip -6 addr add 2001:db8:7::1/64 dev nlttun0 nodad");
            // Even with nodad the kernel installs the address's local route from a workqueue a
            // moment later; until then a packet to it is dropped (Ip6InAddrErrors).
            let local_route = eventually(|| sh("ip -6 route show table local").contains("local 2001:db8:7::1 ")).await;
            assert!(local_route, "no local route for 2001:db8:7::1");
            let local: SocketAddr = must("[2001:db8:7::1]:0".parse());
            let peer: SocketAddr = must("[2001:db8:7::2]:5555".parse());
            let sock = must(tokio::net::UdpSocket::bind(local).await);
            let local = must(sock.local_addr());
            must(sock.send_to(b"ping", peer).await);

            // Out of the tunnel: the first byte is the IPv6 version nibble, not a PI header.
            // Skip the kernel's own traffic (router solicitations, MLD reports).
            let mut buf = vec![0u8; 2048];
            let got = timeout(Duration::from_secs(5), async {
                loop {
                    let n = must(tun.recv(&mut buf).await);
                    let p = &buf[..n];
                    if n >= 48
                        && p[0] >> 4 == 6
                        && p[6] == 17
                        && p[24..40] == Ipv6Addr::new(0x2001, 0xdb8, 7, 0, 0, 0, 0, 2).octets()
                    {
                        return p[48..].to_vec();
                    }
                }
            })
            .await;
            assert_eq!(must(got), b"ping");

            // Into the tunnel: a bare IPv6 packet is delivered to the socket.
            let reply = udp6_packet(peer, local, b"pong");
            assert_eq!(must(tun.send(&reply).await), reply.len());
            let mut rbuf = [0u8; 64];
            let (n, from) = must(must(timeout(Duration::from_secs(5), sock.recv_from(&mut rbuf)).await));
            assert_eq!((&rbuf[..n], from), (&b"pong"[..], peer));
        });
    }

    /// The kernel's answer to a packet written into the device is queued before the write
    /// returns, and `recv_vnet_now` takes it although tokio has not seen the device readable
    /// (the broker's datapath forwards answers this way, without another wake-up).
    #[test]
    fn the_kernels_answer_is_read_without_waiting_for_readiness() {
        in_new_netns(false, || async {
            let tun = must(TunDevice::open("nlttun1", 1280));
            sh("ip -6 addr add 2001:db8:8::1/64 dev nlttun1 nodad");
            let local_route = eventually(|| sh("ip -6 route show table local").contains("local 2001:db8:8::1 ")).await;
            assert!(local_route, "no local route for 2001:db8:8::1");
            let mut buf = vec![0u8; VNET_HDR_LEN + 65_536];
            // Drain the kernel's own traffic through tokio, which leaves the readiness cleared.
            tokio::time::sleep(Duration::from_millis(200)).await;
            while must(tun.recv_vnet(&mut buf, false).await).is_some() {}
            let me = Ipv6Addr::new(0x2001, 0xdb8, 8, 0, 0, 0, 0, 1);
            let peer = Ipv6Addr::new(0x2001, 0xdb8, 8, 0, 0, 0, 0, 2);
            let mut req = Vec::new();
            crate::icmp::echo_request_v6(peer, me, 0x7e57, 1, b"now", &mut req);
            assert_eq!(must(tun.send(&req).await), req.len());
            // No await from here on: tokio cannot learn of the answer meanwhile.
            assert!(
                must(tun.recv_vnet(&mut buf, false).await).is_none(),
                "tokio's readiness was not cleared"
            );
            let start = std::time::Instant::now();
            let reply = loop {
                if let Some(n) = must(tun.recv_vnet_now(&mut buf)) {
                    match crate::icmp::parse_echo_reply(&buf[VNET_HDR_LEN..n]) {
                        Some(r) if r.id == 0x7e57 => break Some(r),
                        _ => continue, // the kernel's own traffic (MLD)
                    }
                }
                if start.elapsed() > Duration::from_secs(2) {
                    break None;
                }
                std::hint::spin_loop();
            };
            assert!(reply.is_some(), "no echo reply readable from the device");
        });
    }
}
