//! What the broker-side fuzz targets share: the §11.4 DSA host key, broker settings chosen by
//! the input's first two bytes ([`Setup`]), a small in-memory backend, and [`Driver`], which
//! feeds a `ServerSession` over TCP or RUDP framing, answers its lookups at once
//! (`on_bytes`) or through `feed`/`resume` as a broker with a database does, possibly only
//! after more client bytes arrived, and checks after every input the invariants a session
//! keeps whatever the client sends:
//!
//! * no reply is longer than the client's 4096-byte receive buffer, and one session queues
//!   at most five (CAPABILITY, DIGEST-MD5's challenge and rspauth, `200`, the offer);
//! * `on_bytes` fails exactly when the session closes; a closed or established session
//!   ignores further bytes, queues nothing and stays as it is;
//! * a tunnel is established at most once per session, with the offer the backend made;
//! * a login succeeds only for `user1`, the account whose password is known; never for
//!   `locked`, whose stored hash belongs to no known password;
//! * the backend is asked for an offer only after an authentication the broker offers, with
//!   the user that authenticated (none only if ANONYMOUS is offered);
//! * a session waiting for a lookup answers nothing, whatever arrives meanwhile.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, LazyLock};

use rand::{CryptoRng, RngCore};
use tsp_proto::caps::{self, Capabilities};
use tsp_proto::client::Transport;
use tsp_proto::rudp::{self, HEADER_LEN, Header};
use tsp_proto::sasl::Mechanism;
use tsp_proto::sasl::digest_md5;
use tsp_proto::sasl::passdss::HostKeyPair;
use tsp_proto::secret::Secret;
use tsp_proto::server::{
    Answer, Backend, LoginAttempt, Need, Progress, Refusal, ServerConfig, ServerError, ServerSession, SessionInfo,
};
use tsp_proto::types::MAX_MESSAGE;
use tsp_proto::xml::{BrokerAddr, CreateRequest, Keepalive, Offer, OfferedPrefix};
use tsp_proto::{StatusCode, TunnelMode, Version};

/// The DSA key of the §11.4 vector in `HostKeyPair::to_text` form (generating one is slow).
pub const HOST_KEY_TEXT: &str = "\
# nm-tsp PASSDSS-3DES-1 broker host key (DSA). Keep private.
p 92bbf64ddd4de717d0d5e870ec5069db9a724c97db84fcf3a443ed464d612920537b8eaa373800b0d393bf6caf949a50b05fbe926b035269cd1b2c60db7d2ba7793c091ae1cc86e677e6cf487d09298fa63a5983150a1701d0f90edba6c5cd185304a5fa662031ac6e87a1b861cd0a59af88e69374b15b872f3ac3bef6e509dd
q 8d6b1f57e2c7be9e6471db7dc662caabad4f729d
g 1a7a72408fc1df5f3f464f2f3c04d6b0c96aa272617bc4c9ca33ab47810d35910837f104c3f2297b40e1cdec9997865998ec1b3460207e4bf847e1d2782c47a99fc0b3c2357e5ad83740036da4513043731e0a9b72060fcafd0a5438c6eafa482007f39df238f573cc3dc5a33479844ad91472e63c58bccef7f27184e7cba848
x 138adcd0fb98f6bbfcacf6d922a1777c78d618c5
y 493199d6344e3c58600e6ad9ed620a7b1457fc604a7e53be5cc21803af5250f8fa8c82e293f70b35b7ee7a72d5f396d42eb8aba5588b0f108803839eb1e394559ce6573e529fb56b36d046e146c9e615f5a95f2c9ccad752b80a622ec935e13a8d1b71a4e3d9a7d5195dd4ef476efac959edcf4c5a8212c6bd14b8e75be7f3db
";

pub static HOST_KEY: LazyLock<HostKeyPair> =
    LazyLock::new(|| HostKeyPair::from_text(HOST_KEY_TEXT).expect("the §11.4 host key must load"));

/// The DIGEST-MD5 realm the accounts' hashes are computed with (the §11.2 vector's).
pub const REALM: &str = "hexos";
/// The one account whose password is known: a login may succeed only for it.
pub const USER: &str = "user1";
pub const PASSWORD: &str = "pass1";
/// An account whose stored hash is no known password's: a login for it must always fail.
pub const LOCKED: &str = "locked";
const LOCKED_HA1: [u8; 16] = *b"\x9d\x0e\x51\x3c\x77\xa4\x02\xe8\x6b\x1f\xc0\x35\xd2\x48\xaa\x17";

/// The client and broker endpoints of the real capture (tests/data/gogoc-tsps-anon-udp.txt).
pub const PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 50947);
pub const LOCAL: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 3653);

/// The broker's randomness in the harness (DIGEST-MD5 nonces, PASSDSS's DH secret and DSA
/// nonce). Deterministic, so an input always meets the same nonce: seeds can carry a valid
/// response, and a crash replays. And small: every random number it draws is one byte long,
/// so PASSDSS's exponentiations take a few steps instead of the 1024-bit arithmetic that
/// costs tens of milliseconds under the sanitizer; every check on what the broker computes
/// from them still runs.
#[derive(Debug, Clone, Default)]
pub struct FuzzRng(u64);

impl RngCore for FuzzRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }

    fn next_u64(&mut self) -> u64 {
        // splitmix64: nonces that look like nonces.
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        // Never 0 or 1: DH secrets and DSA nonces must exceed 1.
        let small = 2 + (self.next_u64() % 250) as u8;
        dest.fill(0);
        if let Some(last) = dest.last_mut() {
            *last = small;
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

// Not cryptographic in the least: the marker only lets the broker's code take it.
impl CryptoRng for FuzzRng {}

/// Broker settings, transport and the way lookups are answered: the first two bytes of an
/// input (the first byte's bits are the `u16`'s low byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup(pub u16);

impl Setup {
    /// RUDP datagrams instead of a TCP stream.
    pub const UDP: u16 = 0x0001;
    pub const ANONYMOUS: u16 = 0x0002;
    pub const PLAIN: u16 = 0x0004;
    pub const DIGEST_MD5: u16 = 0x0008;
    /// PASSDSS-3DES-1, with the §11.4 host key.
    pub const PASSDSS: u16 = 0x0010;
    /// Only 2.0.0 and 1.0.1 are answered; newer versions get `302`.
    pub const OLD_VERSIONS: u16 = 0x0020;
    /// Redirector mode: every client is sent to three other brokers.
    pub const REDIRECT: u16 = 0x0040;
    /// The backend refuses every tunnel request, with a reason.
    pub const REFUSE: u16 = 0x0080;
    /// Lookups go through `feed` and `resume` instead of `on_bytes`.
    pub const ASYNC: u16 = 0x0100;
    /// ... and each is answered only when the next client input has arrived.
    pub const LATE: u16 = 0x0200;
    /// The account store cannot be asked: account lookups are refused with `530`.
    pub const STORE_DOWN: u16 = 0x0400;
    /// Tunnel requests are answered with a redirection to [`redirect_list`].
    pub const REDIRECT_OFFERS: u16 = 0x0800;
    /// The broker cannot serve anyone: VERSION is answered `530`.
    pub const BUSY: u16 = 0x1000;

    /// The setup at the start of an input, and the rest.
    pub fn read(data: &[u8]) -> Option<(Self, &[u8])> {
        let (&[low, high], rest) = data.split_first_chunk::<2>()?;
        Some((Self(u16::from_le_bytes([low, high])), rest))
    }

    pub fn has(self, bit: u16) -> bool {
        self.0 & bit != 0
    }

    pub fn with(self, bits: u16) -> Self {
        Self(self.0 | bits)
    }

    pub fn without(self, bits: u16) -> Self {
        Self(self.0 & !bits)
    }

    pub fn transport(self) -> Transport {
        if self.has(Self::UDP) {
            Transport::Udp
        } else {
            Transport::Tcp
        }
    }

    /// The broker-wide settings (built once per combination: the host key is not cheap).
    pub fn config(self) -> Arc<ServerConfig> {
        // The bits that shape a configuration: mechanisms, versions, redirector, busy.
        const SHAPING: [u16; 7] = [
            Setup::ANONYMOUS,
            Setup::PLAIN,
            Setup::DIGEST_MD5,
            Setup::PASSDSS,
            Setup::OLD_VERSIONS,
            Setup::REDIRECT,
            Setup::BUSY,
        ];
        fn setup_of(index: usize) -> Setup {
            let bits = SHAPING.iter().enumerate().filter(|(i, _)| index >> i & 1 == 1);
            Setup(bits.fold(0, |acc, (_, bit)| acc | bit))
        }
        static CONFIGS: LazyLock<Vec<Arc<ServerConfig>>> = LazyLock::new(|| {
            (0..1 << SHAPING.len())
                .map(|i| Arc::new(build_config(setup_of(i))))
                .collect()
        });
        let index = SHAPING.iter().enumerate().filter(|(_, bit)| self.has(**bit));
        CONFIGS[index.fold(0, |acc, (i, _)| acc | 1 << i)].clone()
    }

    /// Whether the broker answers `mech` (offered, and PASSDSS has its key).
    pub fn offers(self, mech: Mechanism) -> bool {
        self.config().capabilities.auths & mech.cap_bit() != 0
    }
}

/// The reason a busy broker gives (and a refused account lookup).
pub const BUSY_REASON: &str = "account database unreachable";

fn build_config(setup: Setup) -> ServerConfig {
    let auths = [
        (Setup::ANONYMOUS, Mechanism::Anonymous),
        (Setup::PLAIN, Mechanism::Plain),
        (Setup::DIGEST_MD5, Mechanism::DigestMd5),
        (Setup::PASSDSS, Mechanism::PassDss3Des1),
    ]
    .iter()
    .filter(|(bit, _)| setup.has(*bit))
    .fold(0, |acc, (_, m)| acc | m.cap_bit());
    ServerConfig {
        capabilities: Capabilities {
            tunnels: caps::TUNNEL_V6V4 | caps::TUNNEL_V6UDPV4 | caps::TUNNEL_V4V6,
            auths,
            ..Default::default()
        },
        versions: if setup.has(Setup::OLD_VERSIONS) {
            vec![Version::V2_0_0, Version::V1_0_1]
        } else {
            Version::FALLBACK.to_vec()
        },
        realm: REALM.to_owned(),
        host_key: setup.has(Setup::PASSDSS).then(|| HOST_KEY.clone()),
        redirect: setup.has(Setup::REDIRECT).then(redirect_list),
        busy: setup.has(Setup::BUSY).then(|| BUSY_REASON.to_owned()),
    }
}

/// The redirector's brokers: one of each address kind.
pub fn redirect_list() -> Vec<BrokerAddr> {
    vec![
        BrokerAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
        BrokerAddr::V6("2001:db8::10".parse().expect("literal")),
        BrokerAddr::Name("anon-montreal.broker.example.net".to_owned()),
    ]
}

/// The broker's resources: the two accounts, and offers made from the request itself, so
/// that what the client asks for reaches the offer the broker writes (NAT detection as
/// tsp-broker does it, the prefix length, keepalive interval and a DNS name it sent).
#[derive(Debug, Default)]
pub struct FuzzBackend {
    pub refuse: bool,
    pub redirect: bool,
    /// Every request the broker passed on, with the session it came from.
    pub requests: Vec<(SessionInfo, CreateRequest)>,
    /// The offers made, in order.
    pub offers: Vec<Offer>,
}

impl Backend for FuzzBackend {
    fn account_ha1(&self, user: &str) -> Option<[u8; 16]> {
        match user {
            USER => Some(digest_md5::ha1(USER, REALM, &Secret::from(PASSWORD))),
            LOCKED => Some(LOCKED_HA1),
            _ => None,
        }
    }

    fn offer(&mut self, session: &SessionInfo, request: &CreateRequest) -> Result<Offer, Refusal> {
        self.requests.push((session.clone(), request.clone()));
        let dns_name = request.router.as_ref().and_then(|r| r.dns_names.first());
        if self.redirect {
            return Err(Refusal::redirect(redirect_list()));
        }
        if self.refuse {
            // Client-supplied text in the reason: it must come out as one clean status line.
            return Err(Refusal::because(
                StatusCode::ServerTooBusy,
                format!(
                    "no tunnel for {} ({})\r\n<tunnel>",
                    request.client_addr,
                    dns_name.map_or("-", String::as_str)
                ),
            ));
        }
        // §1.7 item 3: a NATed client gets v6udpv4, which exists only over UDP.
        let natted = request.client_addr != session.peer.ip();
        let udp = session.transport == Transport::Udp;
        let mode = match request.mode {
            TunnelMode::V6AnyV4 if natted && udp => TunnelMode::V6UdpV4,
            TunnelMode::V6AnyV4 | TunnelMode::V6V4 if natted => {
                return Err(Refusal::because(
                    StatusCode::UnsupportedTunnelType,
                    "v6v4 cannot cross the NAT",
                ));
            }
            TunnelMode::V6AnyV4 => TunnelMode::V6V4,
            TunnelMode::V6UdpV4 if !udp => {
                return Err(Refusal::because(StatusCode::UnsupportedTunnelType, "v6udpv4 needs UDP"));
            }
            mode => mode,
        };
        let server_v6: Ipv6Addr = "2001:db8::1".parse().expect("literal");
        let v4v6 = mode == TunnelMode::V4V6;
        let prefix = request.router.as_ref().map(|r| match (v4v6, r.prefix_len) {
            (true, 0) => OfferedPrefix {
                addr: IpAddr::V4(Ipv4Addr::new(10, 64, 0, 0)),
                len: 24,
            },
            (true, len) => OfferedPrefix {
                addr: IpAddr::V4(Ipv4Addr::new(10, 64, 0, 0)),
                len,
            },
            (false, 0) => OfferedPrefix {
                addr: "2001:db8:1000::".parse().expect("literal"),
                len: 48,
            },
            (false, len) => OfferedPrefix {
                addr: "2001:db8:1000::".parse().expect("literal"),
                len,
            },
        });
        let offer = Offer {
            mode,
            lifetime: Some(604_800),
            server_v4: Ipv4Addr::new(192, 0, 2, 1),
            server_v6,
            client_v4: match session.peer.ip() {
                IpAddr::V4(a) => a,
                IpAddr::V6(_) => Ipv4Addr::new(192, 0, 2, 2),
            },
            client_v6: "2001:db8::2".parse().expect("literal"),
            client_dns_name: dns_name.map(|n| n.to_ascii_lowercase()),
            client_dns_server: Some(server_v6),
            prefix,
            keepalive: request.keepalive.map(|interval| Keepalive {
                interval,
                address: if v4v6 {
                    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))
                } else {
                    IpAddr::V6(server_v6)
                },
            }),
        };
        self.offers.push(offer.clone());
        Ok(offer)
    }
}

/// Everything one run of a session produced, for the targets' own checks and for comparing
/// two runs of the same stream.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Log {
    /// Non-empty replies in order (over RUDP: the payloads after the echoed header).
    pub replies: Vec<Vec<u8>>,
    pub logins: Vec<LoginAttempt>,
    pub established: Option<Offer>,
    /// How many `on_bytes` calls failed (each closes its session).
    pub failures: usize,
    /// The state after the last input.
    pub closed: bool,
    pub user: Option<String>,
    pub version: Option<Version>,
}

/// Feeds one client's bytes to a broker session and checks the invariants of the module
/// documentation after every input. Over RUDP it answers as tsp-broker does: a datagram
/// whose payload starts with `VERSION=` starts a new session, a retransmission (the last
/// sequence number again) gets the same answer without reaching the session, and every
/// other datagram is answered with one reply (possibly empty) behind the client's header.
pub struct Driver {
    pub setup: Setup,
    cfg: Arc<ServerConfig>,
    pub backend: FuzzBackend,
    rng: FuzzRng,
    session: Option<ServerSession>,
    /// Replies queued by the current session so far.
    queued: usize,
    /// The client's next RUDP sequence number, for [`Driver::send`].
    seq: u32,
    /// The last datagram answered: its sequence number and the answer.
    last: Option<(u32, Vec<u8>)>,
    /// A lookup the session waits for, answered when the next input has arrived
    /// ([`Setup::LATE`]) or by [`Driver::settle`].
    waiting: Option<Need>,
    pub log: Log,
}

/// Most replies one session ever queues: CAPABILITY, challenge, rspauth, `200`, the offer.
pub const MAX_REPLIES: usize = 5;

impl Driver {
    pub fn new(setup: Setup) -> Self {
        let mut d = Self {
            setup,
            cfg: setup.config(),
            backend: FuzzBackend {
                refuse: setup.has(Setup::REFUSE),
                redirect: setup.has(Setup::REDIRECT_OFFERS),
                ..Default::default()
            },
            rng: FuzzRng::default(),
            session: None,
            queued: 0,
            seq: rudp::FIRST_SEQ,
            last: None,
            waiting: None,
            log: Log::default(),
        };
        if setup.transport() == Transport::Tcp {
            d.restart();
        }
        d
    }

    pub fn session(&self) -> Option<&ServerSession> {
        self.session.as_ref()
    }

    fn restart(&mut self) {
        self.session = Some(ServerSession::new(
            self.cfg.clone(),
            PEER,
            LOCAL,
            self.setup.transport(),
        ));
        self.queued = 0;
        self.waiting = None;
        self.log.established = None;
        self.log.user = None;
        self.log.version = None;
    }

    /// One client message: a piece of the TCP stream, or one datagram with the next
    /// sequence number. Returns the RUDP reply payload (empty over TCP).
    pub fn send(&mut self, msg: &[u8]) -> Vec<u8> {
        match self.setup.transport() {
            Transport::Tcp => {
                self.stream(msg);
                Vec::new()
            }
            Transport::Udp => {
                let header = Header {
                    seq: self.seq,
                    timestamp: 771,
                };
                self.seq += 1;
                let reply = self.datagram(&rudp::datagram(header, msg));
                reply.map(|r| r[HEADER_LEN..].to_vec()).unwrap_or_default()
            }
        }
    }

    /// A piece of the TCP stream.
    pub fn stream(&mut self, bytes: &[u8]) {
        assert_eq!(self.setup.transport(), Transport::Tcp);
        self.feed(bytes);
        while let Some(r) = self.session.as_mut().and_then(ServerSession::next_reply) {
            self.record(r);
        }
    }

    /// Lets the broker catch up: a lookup still waiting is answered (as if the store replied
    /// before the client sent more), and over RUDP the replies still queued are collected as
    /// the client's empty polls would fetch them.
    pub fn settle(&mut self) {
        while self.waiting.is_some() {
            match self.setup.transport() {
                Transport::Tcp => self.stream(&[]),
                Transport::Udp => self.feed(&[]),
            }
        }
        if self.setup.transport() == Transport::Udp {
            while let Some(r) = self.session.as_mut().and_then(ServerSession::next_reply) {
                self.record(r);
            }
        }
    }

    /// A whole datagram as the broker's UDP socket receives it (header included). Returns the
    /// datagram the broker answers with, or `None` where it stays silent.
    pub fn datagram(&mut self, dgram: &[u8]) -> Option<Vec<u8>> {
        assert_eq!(self.setup.transport(), Transport::Udp);
        // Not a control datagram: tunnelled data, never seen by the session.
        if !rudp::is_control(dgram) {
            return None;
        }
        let (header, payload) = Header::decode(dgram)?;
        if let Some((seq, answer)) = &self.last
            && *seq == header.seq
        {
            return Some(answer.clone());
        }
        if payload.starts_with(b"VERSION=") {
            self.restart();
        }
        self.session.as_ref()?;
        self.feed(payload);
        let body = self
            .session
            .as_mut()
            .and_then(ServerSession::next_reply)
            .unwrap_or_default();
        let reply = [&dgram[..HEADER_LEN], &body].concat();
        assert!(
            reply.len() <= HEADER_LEN + MAX_MESSAGE,
            "RUDP reply of {} bytes",
            reply.len()
        );
        if !body.is_empty() {
            self.record(body);
        }
        self.last = Some((header.seq, reply.clone()));
        Some(reply)
    }

    fn record(&mut self, reply: Vec<u8>) {
        assert!(
            reply.len() <= MAX_MESSAGE,
            "reply of {} bytes exceeds the client's buffer",
            reply.len()
        );
        self.log.replies.push(reply);
    }

    fn feed(&mut self, bytes: &[u8]) {
        let Some(s) = self.session.as_mut() else { return };
        let was_closed = s.is_closed();
        let was_established = s.is_established();
        let before = s.pending_replies();
        let requests_before = self.backend.requests.len();
        let result = if self.setup.has(Setup::ASYNC) || self.setup.has(Setup::STORE_DOWN) {
            self.feed_and_resume(bytes)
        } else {
            s.on_bytes(bytes, &mut self.backend, &mut self.rng)
        };
        assert!(!matches!(result, Ok(Progress::Need(_))), "a lookup left unanswered");
        assert_ne!(result, Err(ServerError::NotWaiting));
        let s = self.session.as_mut().expect("session present");
        let new = s.pending_replies() - before;
        self.queued += new;
        assert!(self.queued <= MAX_REPLIES, "a session queued {} replies", self.queued);
        if was_closed || was_established {
            assert_eq!(result, Ok(Progress::Continue), "a finished session reacted to input");
            assert_eq!(new, 0, "a finished session queued a reply");
            assert_eq!((s.is_closed(), s.is_established()), (was_closed, was_established));
            return;
        }
        assert_eq!(
            result.is_err(),
            s.is_closed(),
            "on_bytes returned {result:?} but is_closed() is {}",
            s.is_closed()
        );
        assert!(!(s.is_closed() && s.is_established()));
        if let Some(login) = s.take_login() {
            if login.ok {
                assert_eq!(
                    login.user.as_deref(),
                    Some(USER),
                    "login succeeded for {:?}",
                    login.user
                );
                assert!(!self.setup.has(Setup::STORE_DOWN), "a login without the account store");
            }
            self.log.logins.push(login);
        }
        let info = s.info().clone();
        match result {
            Ok(Progress::Established(offer)) => {
                assert!(s.is_established());
                assert!(self.log.established.is_none(), "established twice");
                assert_eq!(
                    self.backend.offers.last(),
                    Some(&offer),
                    "established with an offer the backend did not make"
                );
                self.log.established = Some(offer);
            }
            Ok(Progress::Continue | Progress::Need(_)) => assert!(!s.is_established()),
            Err(_) => self.log.failures += 1,
        }
        for (asked, _) in &self.backend.requests[requests_before..] {
            match asked.user.as_deref() {
                None => assert!(
                    self.setup.offers(Mechanism::Anonymous),
                    "an anonymous request reached the backend while ANONYMOUS is not offered"
                ),
                Some(user) => assert_eq!(user, USER, "a request from an account that cannot log in"),
            }
        }
        assert!(info.user.is_none() || info.user.as_deref() == Some(USER));
        self.log.closed = s.is_closed();
        self.log.user = info.user;
        self.log.version = Some(info.version);
    }
}

impl Driver {
    /// `feed`, then the lookups the session asks for: answered at once, or the first left
    /// waiting until the next input ([`Setup::LATE`]), whose bytes the session must keep.
    fn feed_and_resume(&mut self, bytes: &[u8]) -> Result<Progress, ServerError> {
        let s = self.session.as_mut().expect("session present");
        let queued = s.pending_replies();
        let mut result = s.feed(bytes, &mut self.rng);
        if let Some(need) = self.waiting.take() {
            if result.is_err() {
                // The bytes that came meanwhile broke the session: nothing waits any more.
                return result;
            }
            assert_eq!(result, Ok(Progress::Continue), "a session waiting for a lookup went on");
            assert_eq!(s.pending_replies(), queued, "a session waiting for a lookup answered");
            result = Ok(Progress::Need(need));
        }
        loop {
            let Ok(Progress::Need(need)) = result else {
                return result;
            };
            if self.setup.has(Setup::LATE) && !bytes.is_empty() {
                self.waiting = Some(need);
                return Ok(Progress::Continue);
            }
            let answer = match need {
                Need::Account { .. } if self.setup.has(Setup::STORE_DOWN) => {
                    Answer::Account(Err(Refusal::because(StatusCode::ServerTooBusy, BUSY_REASON)))
                }
                _ => Answer::from_backend(&need, s.info(), &mut self.backend),
            };
            result = s.resume(answer, &mut self.rng);
        }
    }
}

/// Splits a target's input into pieces at every `|||`: TCP stream pieces or RUDP datagrams.
/// Three bytes no TSP message contains, and readable in the committed seeds.
pub fn pieces(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    const SEP: &[u8] = b"|||";
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.windows(SEP.len()).position(|w| w == SEP) {
            Some(i) => {
                rest = Some(&r[i + SEP.len()..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}
