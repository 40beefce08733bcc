//! The client side of one TSP session as a state machine (docs/tsp-wire.md §1.2, §3).
//!
//! The caller sends what a [`Step`] says, collects the reply the step expects (a line, a
//! `Content-length` frame, an acknowledgement, …) with [`take_reply`] or one UDP datagram, and
//! feeds it back with [`ClientSession::on_reply`]. No sockets, no clock, no files.

use super::caps::Capabilities;
use super::error::{ProtoError, Stage};
use super::frame::{self, FrameError};
use super::sasl::{Mechanism, digest_md5, passdss, plain};
use super::status::StatusCode;
use super::types::{AuthMethod, MAX_MESSAGE, TunnelMode, Version};
use super::xml::{self, BrokerAddr, CreateRequest, Offer};
use crate::secret::Secret;

/// Which transport carries the session: it decides whether "writes" are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

/// What the next broker message looks like, so a stream transport knows where it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A CRLF-terminated line (CAPABILITY, a status, a base64 SASL message); a redirection
    /// status drags its XML document along.
    Line,
    /// The PASSDSS server message: base64 with no terminator, delimited by its own structure.
    PassDssServerMessage,
    /// A `Content-length` frame.
    Framed,
    /// Over UDP the broker acknowledges every datagram (payload ignored); over TCP nothing
    /// comes back and the caller feeds an empty reply at once.
    Ack,
}

/// What the caller must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes, then collect a reply of the given shape.
    Send { bytes: Vec<u8>, expect: Expect },
    /// Collect a reply without sending anything (UDP sends an empty "poll" datagram).
    Receive { expect: Expect },
    /// PASSDSS: decide whether to trust the broker's host key, then call
    /// [`ClientSession::host_key_decision`].
    CheckHostKey { host: String, key: passdss::PublicHostKey },
    /// The session is over.
    Done(Outcome),
}

/// How a successful session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Tunnel(Negotiated),
    /// The broker sent us elsewhere; the list is in the order gogoc tries it.
    Redirect(Vec<BrokerAddr>),
}

/// A negotiated tunnel and how we got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub offer: Offer,
    pub version: Version,
    pub mechanism: Mechanism,
    pub capabilities: Capabilities,
}

/// Everything one session needs. `request.client_addr` is filled in by the caller from the
/// socket's local address when the configuration says `auto`.
#[derive(Debug, Clone)]
pub struct ClientParams {
    pub version: Version,
    pub transport: Transport,
    pub auth_method: AuthMethod,
    /// PLAIN sends the password in clear: with `auth_method=any` it is used only if allowed.
    pub allow_plain: bool,
    pub username: String,
    pub password: Secret,
    /// The configured server string, verbatim: DIGEST-MD5's digest-uri and the host-key
    /// file's host name come from it, as in gogoc.
    pub server_name: String,
    pub request: CreateRequest,
    /// DIGEST-MD5 client nonce (gogoc uses the decimal Unix time).
    pub cnonce: String,
}

#[derive(Debug)]
enum State {
    Version,
    AuthAck(Mechanism),
    Auth(Mechanism),
    DigestChallenge,
    DigestRspauth { expected: String },
    DigestFinal,
    PassDssServer(Box<passdss::ClientExchange>),
    PassDssHostKey(Box<passdss::ClientExchange>, Box<passdss::ServerMessage>),
    Create,
    Accept(Box<Offer>),
    Done,
}

impl State {
    fn stage(&self) -> Stage {
        match self {
            Self::Version => Stage::Capability,
            Self::Create => Stage::Create,
            Self::Accept(_) | Self::Done => Stage::Accept,
            _ => Stage::Authentication,
        }
    }
}

/// Mechanism choice for `auth_method` against the broker's list (§3.1, with the PLAIN rule).
pub fn choose_mechanism(method: AuthMethod, allow_plain: bool, offered: u8) -> Result<Mechanism, ProtoError> {
    let wanted: &[Mechanism] = match method {
        AuthMethod::Anonymous => &[Mechanism::Anonymous],
        AuthMethod::Any => &[Mechanism::PassDss3Des1, Mechanism::DigestMd5, Mechanism::Plain],
        AuthMethod::PassDss3Des1 => &[Mechanism::PassDss3Des1],
        AuthMethod::DigestMd5 => &[Mechanism::DigestMd5],
        AuthMethod::Plain => &[Mechanism::Plain],
    };
    let plain_ok = allow_plain || method == AuthMethod::Plain;
    if let Some(m) = wanted
        .iter()
        .copied()
        .find(|m| offered & m.cap_bit() != 0 && (*m != Mechanism::Plain || plain_ok))
    {
        return Ok(m);
    }
    if wanted.contains(&Mechanism::Plain) && offered & Mechanism::Plain.cap_bit() != 0 {
        return Err(ProtoError::PlainNotAllowed);
    }
    let names: Vec<_> = wanted.iter().map(|m| m.wire_name()).collect();
    Err(ProtoError::NoCommonAuth {
        wanted: names.join(","),
        offered: Capabilities {
            auths: offered,
            ..Default::default()
        }
        .describe(),
    })
}

pub struct ClientSession {
    params: ClientParams,
    state: State,
    caps: Capabilities,
    mechanism: Mechanism,
}

impl std::fmt::Debug for ClientSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSession")
            .field("state", &self.state)
            .field("mechanism", &self.mechanism)
            .finish()
    }
}

impl ClientSession {
    pub fn new(params: ClientParams) -> Self {
        Self {
            params,
            state: State::Version,
            caps: Capabilities::default(),
            mechanism: Mechanism::Anonymous,
        }
    }

    /// The mechanism chosen after the capability exchange.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }

    /// The first step: `VERSION=x.y.z\r\n`.
    pub fn start(&mut self) -> Result<Step, ProtoError> {
        let v = self.params.version;
        if !v.supports_mode(self.params.request.mode) {
            return Err(ProtoError::ModeNeedsNewerVersion {
                version: v,
                mode: self.params.request.mode,
            });
        }
        Ok(Step::Send {
            bytes: format!("VERSION={v}\r\n").into_bytes(),
            expect: Expect::Line,
        })
    }

    /// Feeds the reply the previous step asked for (one whole message, CRLF included).
    pub fn on_reply<R: rand::RngCore + rand::CryptoRng>(
        &mut self,
        reply: &[u8],
        rng: &mut R,
    ) -> Result<Step, ProtoError> {
        let state = std::mem::replace(&mut self.state, State::Done);
        let stage = state.stage();
        let step = self.advance(state, reply, rng);
        if step.is_err() {
            self.state = State::Done;
        }
        step.map_err(|e| self.scrub(e, stage))
    }

    /// Errors quote broker bytes; a hostile broker could echo the password back (PLAIN sends
    /// it in clear) to get it into logs. Such an error is replaced by one that quotes nothing.
    /// Passwords shorter than 4 bytes would match by chance in almost any text: not checked.
    fn scrub(&self, e: ProtoError, stage: Stage) -> ProtoError {
        let pw = self.params.password.expose();
        if pw.len() < 4 || !(e.to_string().contains(pw) || format!("{e:?}").contains(pw)) {
            return e;
        }
        ProtoError::Unexpected {
            stage,
            preview: "(withheld: the broker's reply contained the password)".into(),
        }
    }

    /// After [`Step::CheckHostKey`]: whether the key is trusted.
    pub fn host_key_decision(&mut self, trusted: bool) -> Result<Step, ProtoError> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::PassDssHostKey(exchange, msg) => {
                if !trusted {
                    return Err(ProtoError::HostKeyNotTrusted {
                        host: self.params.server_name.clone(),
                    });
                }
                let msg2 = exchange
                    .finish(&msg, &self.params.password)
                    .map_err(ProtoError::sasl(Mechanism::PassDss3Des1))?;
                self.state = State::Auth(Mechanism::PassDss3Des1);
                Ok(Step::Send {
                    bytes: msg2,
                    expect: Expect::Line,
                })
            }
            _ => Err(ProtoError::State("no host key is waiting for a decision")),
        }
    }

    fn advance<R: rand::RngCore + rand::CryptoRng>(
        &mut self,
        state: State,
        reply: &[u8],
        rng: &mut R,
    ) -> Result<Step, ProtoError> {
        match state {
            State::Version => self.on_capability(reply),
            State::AuthAck(m) => self.after_auth_line(m, rng),
            State::Auth(m) => self.on_auth_status(m, reply),
            State::DigestChallenge => {
                self.check_raw_status(reply, Stage::Authentication, Mechanism::DigestMd5)?;
                if let Some(out) = self.raw_redirect(reply)? {
                    return Ok(out);
                }
                let ch = digest_md5::parse_challenge(reply).map_err(ProtoError::sasl(Mechanism::DigestMd5))?;
                let (line, expected) = digest_md5::client_response(
                    &ch,
                    &self.params.username,
                    &self.params.password,
                    &self.params.server_name,
                    &self.params.cnonce,
                );
                self.state = State::DigestRspauth { expected };
                Ok(Step::Send {
                    bytes: line,
                    expect: Expect::Line,
                })
            }
            State::DigestRspauth { expected } => {
                self.check_raw_status(reply, Stage::Authentication, Mechanism::DigestMd5)?;
                if let Some(out) = self.raw_redirect(reply)? {
                    return Ok(out);
                }
                digest_md5::check_rspauth(reply, &expected).map_err(ProtoError::sasl(Mechanism::DigestMd5))?;
                self.state = State::DigestFinal;
                Ok(Step::Receive { expect: Expect::Line })
            }
            State::DigestFinal => self.on_auth_status(Mechanism::DigestMd5, reply),
            State::PassDssServer(exchange) => {
                self.check_raw_status(reply, Stage::Authentication, Mechanism::PassDss3Des1)?;
                if let Some(out) = self.raw_redirect(reply)? {
                    return Ok(out);
                }
                let msg = passdss::parse_server_message(reply).map_err(ProtoError::sasl(Mechanism::PassDss3Des1))?;
                let key = msg.host_key.public.clone();
                self.state = State::PassDssHostKey(exchange, Box::new(msg));
                Ok(Step::CheckHostKey {
                    host: self.params.server_name.clone(),
                    key,
                })
            }
            State::PassDssHostKey(..) => Err(ProtoError::State("waiting for a host key decision")),
            State::Create => self.on_offer(reply),
            State::Accept(offer) => Ok(Step::Done(Outcome::Tunnel(Negotiated {
                offer: *offer,
                version: self.params.version,
                mechanism: self.mechanism,
                capabilities: self.caps,
            }))),
            State::Done => Err(ProtoError::State("session already finished")),
        }
    }

    fn on_capability(&mut self, reply: &[u8]) -> Result<Step, ProtoError> {
        let stage = Stage::Capability;
        if frame::looks_like_status(reply) {
            let st = frame::parse_status_line(first_line(reply)).map_err(ProtoError::frame(stage))?;
            return match st.status {
                StatusCode::UnsupportedVersion => Err(ProtoError::UnsupportedVersion(self.params.version)),
                StatusCode::ServerTooBusy => Err(ProtoError::ServerTooBusy),
                StatusCode::Redirect(_) => self.redirect_from(reply),
                status => Err(ProtoError::Status {
                    stage,
                    status,
                    text: st.text.to_owned(),
                }),
            };
        }
        if !Capabilities::is_capability_line(reply) {
            return Err(ProtoError::Unexpected {
                stage,
                preview: frame::preview(reply),
            });
        }
        let caps = Capabilities::parse(reply)?;
        self.caps = caps;
        let mode = self.params.request.mode;
        if !caps.offers_mode(mode) {
            return Err(ProtoError::TunnelModeNotOffered {
                requested: mode,
                offered: caps.describe(),
            });
        }
        let m = choose_mechanism(self.params.auth_method, self.params.allow_plain, caps.auths)?;
        self.mechanism = m;
        let expect = match m {
            Mechanism::Anonymous | Mechanism::DigestMd5 => Expect::Line,
            Mechanism::Plain | Mechanism::PassDss3Des1 => Expect::Ack,
        };
        self.state = match m {
            Mechanism::Anonymous => State::Auth(m),
            Mechanism::DigestMd5 => State::DigestChallenge,
            Mechanism::Plain | Mechanism::PassDss3Des1 => State::AuthAck(m),
        };
        Ok(Step::Send {
            bytes: m.authenticate_line().to_vec(),
            expect,
        })
    }

    /// PLAIN and PASSDSS follow their AUTHENTICATE line with a message of their own, without
    /// waiting for a broker reply (over UDP the broker only acknowledges).
    fn after_auth_line<R: rand::RngCore + rand::CryptoRng>(
        &mut self,
        m: Mechanism,
        rng: &mut R,
    ) -> Result<Step, ProtoError> {
        match m {
            Mechanism::Plain => {
                self.state = State::Auth(m);
                Ok(Step::Send {
                    bytes: plain::client_message(&self.params.username, &self.params.password),
                    expect: Expect::Line,
                })
            }
            Mechanism::PassDss3Des1 => {
                let (exchange, msg1) = passdss::ClientExchange::start(&self.params.username, rng);
                self.state = State::PassDssServer(Box::new(exchange));
                Ok(Step::Send {
                    bytes: msg1,
                    expect: Expect::PassDssServerMessage,
                })
            }
            _ => Err(ProtoError::State("mechanism has no follow-up message")),
        }
    }

    /// A raw status at an authentication step: 300 is an authentication failure, anything
    /// else but a redirect is a refusal.
    fn check_raw_status(&self, reply: &[u8], stage: Stage, m: Mechanism) -> Result<(), ProtoError> {
        if !frame::looks_like_status(reply) {
            return Ok(());
        }
        let st = frame::parse_status_line(first_line(reply)).map_err(ProtoError::frame(stage))?;
        match st.status {
            // A `200` where SASL data belongs is not a refusal: let the mechanism's parser
            // say what is missing (e.g. no rspauth).
            StatusCode::Redirect(_) | StatusCode::Success => Ok(()),
            StatusCode::AuthenticationFailed => Err(ProtoError::AuthenticationFailed {
                mechanism: m.wire_name(),
            }),
            status => Err(ProtoError::Status {
                stage,
                status,
                text: st.text.to_owned(),
            }),
        }
    }

    fn raw_redirect(&mut self, reply: &[u8]) -> Result<Option<Step>, ProtoError> {
        if frame::looks_like_status(reply) {
            let st = frame::parse_status_line(first_line(reply)).map_err(ProtoError::frame(Stage::Authentication))?;
            if let StatusCode::Redirect(_) = st.status {
                return self.redirect_from(reply).map(Some);
            }
        }
        Ok(None)
    }

    fn on_auth_status(&mut self, m: Mechanism, reply: &[u8]) -> Result<Step, ProtoError> {
        let stage = Stage::Authentication;
        if !frame::looks_like_status(reply) {
            return Err(ProtoError::Unexpected {
                stage,
                preview: frame::preview(reply),
            });
        }
        let st = frame::parse_status_line(first_line(reply)).map_err(ProtoError::frame(stage))?;
        match st.status {
            StatusCode::Success => {
                self.state = State::Create;
                let xml = xml::build_create(&self.params.request);
                Ok(Step::Send {
                    bytes: frame::frame_request(&xml),
                    expect: Expect::Framed,
                })
            }
            StatusCode::AuthenticationFailed => Err(ProtoError::AuthenticationFailed {
                mechanism: m.wire_name(),
            }),
            StatusCode::Redirect(_) => self.redirect_from(reply),
            status => Err(ProtoError::Status {
                stage,
                status,
                text: st.text.to_owned(),
            }),
        }
    }

    fn on_offer(&mut self, reply: &[u8]) -> Result<Step, ProtoError> {
        let stage = Stage::Create;
        // Some brokers (TSPS) answer failures with a bare status line; name the status.
        if frame::looks_like_status(reply) {
            let st = frame::parse_status_line(first_line(reply)).map_err(ProtoError::frame(stage))?;
            return match st.status {
                StatusCode::Redirect(_) => self.redirect_from(reply),
                StatusCode::AuthenticationFailed => Err(ProtoError::AuthenticationFailed {
                    mechanism: self.mechanism.wire_name(),
                }),
                StatusCode::Success => Err(ProtoError::Frame {
                    stage,
                    source: FrameError::MissingContentLength(frame::preview(reply)),
                }),
                status => Err(ProtoError::Status {
                    stage,
                    status,
                    text: st.text.to_owned(),
                }),
            };
        }
        let body = match self.params.transport {
            Transport::Udp => frame::parse_framed_datagram(reply, true),
            Transport::Tcp => frame::take_framed(reply, true).and_then(|r| {
                r.map(|(body, _)| body).ok_or(FrameError::Truncated {
                    declared: 0,
                    got: reply.len(),
                })
            }),
        }
        .map_err(ProtoError::frame(stage))?;
        let (st, xml_body) = frame::split_status(body).map_err(ProtoError::frame(stage))?;
        match st.status {
            StatusCode::Success => {}
            StatusCode::Redirect(_) => return Ok(Step::Done(Outcome::Redirect(parse_redirect(xml_body)?))),
            StatusCode::AuthenticationFailed => {
                return Err(ProtoError::AuthenticationFailed {
                    mechanism: self.mechanism.wire_name(),
                });
            }
            status => {
                return Err(ProtoError::Status {
                    stage,
                    status,
                    text: st.text.to_owned(),
                });
            }
        }
        let offer = xml::parse_info(xml_body)?;
        let requested = self.params.request.mode;
        let acceptable = match requested {
            TunnelMode::V6AnyV4 => offer.mode.is_v6_over_v4(),
            m => offer.mode == m,
        };
        if !acceptable {
            return Err(ProtoError::WrongModeOffered {
                requested,
                offered: offer.mode,
            });
        }
        // A v6udpv4 tunnel rides on the TSP socket: it cannot exist over TCP.
        if offer.mode == TunnelMode::V6UdpV4 && self.params.transport == Transport::Tcp {
            return Err(ProtoError::WrongModeOffered {
                requested,
                offered: offer.mode,
            });
        }
        if self.params.version.sends_accept() {
            self.state = State::Accept(Box::new(offer));
            Ok(Step::Send {
                bytes: frame::frame_request(xml::ACCEPT),
                expect: Expect::Ack,
            })
        } else {
            Ok(Step::Done(Outcome::Tunnel(Negotiated {
                offer,
                version: self.params.version,
                mechanism: self.mechanism,
                capabilities: self.caps,
            })))
        }
    }

    fn redirect_from(&mut self, reply: &[u8]) -> Result<Step, ProtoError> {
        let rest = match frame::take_line(reply) {
            Ok(Some((_, used))) => &reply[used..],
            _ => &[][..],
        };
        Ok(Step::Done(Outcome::Redirect(parse_redirect(rest)?)))
    }
}

fn parse_redirect(xml_body: &[u8]) -> Result<Vec<BrokerAddr>, ProtoError> {
    let list = xml::parse_redirect(xml_body)?;
    if list.is_empty() {
        return Err(ProtoError::EmptyRedirect);
    }
    Ok(list)
}

fn first_line(msg: &[u8]) -> &[u8] {
    match msg.iter().position(|&b| b == b'\n') {
        Some(i) => &msg[..=i],
        None => msg,
    }
}

/// Cuts one reply of the expected shape off the front of a TCP receive buffer.
///
/// `Ok(None)`: keep reading. Replies are bounded by [`MAX_MESSAGE`].
pub fn take_reply(buf: &[u8], expect: Expect) -> Result<Option<usize>, FrameError> {
    match expect {
        Expect::Ack => Ok(Some(0)),
        Expect::Framed => {
            // A bare status here is a broker that ignores the framing rule (TSPS does):
            // hand it over whole so the error names the status, not the framing.
            if frame::looks_like_status(buf) {
                return frame::take_line(buf).map(|l| l.map(|(_, used)| used));
            }
            Ok(frame::take_framed(buf, true)?.map(|(_, used)| used))
        }
        Expect::Line => {
            let Some((line, used)) = frame::take_line(buf)? else {
                return Ok(None);
            };
            // A raw redirection carries its XML document after the status line.
            if let Ok(st) = frame::parse_status_line(line)
                && matches!(st.status, StatusCode::Redirect(_))
            {
                return Ok(find_tunnel_end(&buf[used..])?.map(|end| used + end));
            }
            Ok(Some(used))
        }
        Expect::PassDssServerMessage => {
            if frame::looks_like_status(buf) {
                return take_reply(buf, Expect::Line);
            }
            Ok(passdss_server_message_len(buf))
        }
    }
}

fn find_tunnel_end(rest: &[u8]) -> Result<Option<usize>, FrameError> {
    const END: &[u8] = b"</tunnel>";
    match rest.windows(END.len()).position(|w| w == END) {
        Some(i) => {
            let mut end = i + END.len();
            if rest.get(end) == Some(&b'\r') {
                end += 1;
            }
            if rest.get(end) == Some(&b'\n') {
                end += 1;
            }
            Ok(Some(end))
        }
        None if rest.len() >= MAX_MESSAGE => Err(FrameError::LineTooLong),
        None => Ok(None),
    }
}

/// Length of a complete PASSDSS server message at the front of `buf` (base64, no
/// terminator): the structure says how long it is once its length fields have arrived.
fn passdss_server_message_len(buf: &[u8]) -> Option<usize> {
    use base64::Engine as _;
    let b64_len = buf
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        .count();
    if b64_len < buf.len() {
        // Something after the base64 (a CRLF a lenient broker added): the message is whole.
        return Some(buf.len().min(MAX_MESSAGE));
    }
    let quads = b64_len / 4 * 4;
    let raw = base64::engine::general_purpose::STANDARD.decode(&buf[..quads]).ok()?;
    let read_u32 =
        |at: usize| -> Option<usize> { Some(u32::from_be_bytes(raw.get(at..at + 4)?.try_into().ok()?) as usize) };
    // A length pointing past the size limit cannot complete: hand the bytes over now so the
    // parser reports them instead of waiting for the reply timeout.
    let too_long = |at: usize| at > MAX_MESSAGE;
    let pk = read_u32(0)?;
    let y_at = 4usize.saturating_add(pk);
    if too_long(y_at) {
        return Some(buf.len());
    }
    let y = read_u32(y_at)?;
    let sig_at = y_at.saturating_add(8).saturating_add(y);
    if too_long(sig_at) {
        return Some(buf.len());
    }
    let sig = read_u32(sig_at)?;
    let total = sig_at.saturating_add(4).saturating_add(sig);
    let needed = total.div_ceil(3).saturating_mul(4);
    if needed > MAX_MESSAGE {
        return Some(buf.len());
    }
    (b64_len >= needed).then_some(needed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::{AUTH_ANONYMOUS, AUTH_DIGEST_MD5, AUTH_PASSDSS, AUTH_PLAIN};

    #[test]
    fn mechanism_choice() {
        let all = AUTH_PASSDSS | AUTH_DIGEST_MD5 | AUTH_PLAIN | AUTH_ANONYMOUS;
        assert_eq!(
            choose_mechanism(AuthMethod::Any, false, all).unwrap(),
            Mechanism::PassDss3Des1
        );
        assert_eq!(
            choose_mechanism(AuthMethod::Any, false, AUTH_DIGEST_MD5 | AUTH_PLAIN).unwrap(),
            Mechanism::DigestMd5
        );
        assert_eq!(
            choose_mechanism(AuthMethod::Any, false, AUTH_PLAIN),
            Err(ProtoError::PlainNotAllowed)
        );
        assert_eq!(
            choose_mechanism(AuthMethod::Any, true, AUTH_PLAIN | AUTH_ANONYMOUS).unwrap(),
            Mechanism::Plain
        );
        assert_eq!(
            choose_mechanism(AuthMethod::Plain, false, AUTH_PLAIN).unwrap(),
            Mechanism::Plain
        );
        // `any` never falls back to ANONYMOUS; `anonymous` never tries anything else.
        assert!(matches!(
            choose_mechanism(AuthMethod::Any, true, AUTH_ANONYMOUS),
            Err(ProtoError::NoCommonAuth { .. })
        ));
        assert!(matches!(
            choose_mechanism(AuthMethod::Anonymous, true, AUTH_PLAIN),
            Err(ProtoError::NoCommonAuth { .. })
        ));
        assert!(matches!(
            choose_mechanism(AuthMethod::DigestMd5, true, AUTH_PASSDSS),
            Err(ProtoError::NoCommonAuth { .. })
        ));
    }

    #[test]
    fn tcp_replies_coalesced_and_split() {
        // DIGEST-MD5's rspauth and 200 in one segment: two replies.
        let buf = b"cnNwYXV0aD00MWYzMzg0YmNkODI0ZDExODk3NDNiNTBlM2JjYjc4Ng==\r\n200 Success\r\n";
        let first = take_reply(buf, Expect::Line).unwrap().unwrap();
        assert_eq!(&buf[first..], b"200 Success\r\n");
        assert_eq!(take_reply(&buf[first..], Expect::Line).unwrap(), Some(13));
        // A line split across reads waits.
        assert_eq!(take_reply(b"CAPABILITY TUNNEL=V6V4", Expect::Line).unwrap(), None);
        // An acknowledgement needs no bytes over TCP.
        assert_eq!(take_reply(b"", Expect::Ack).unwrap(), Some(0));
    }

    #[test]
    fn raw_redirect_carries_its_document() {
        let doc = b"1200 Redirection\r\n<tunnel action=\"info\" type=\"v6anyv4\" lifetime=\"1440\">\r\n <broker>\r\n  <address type=\"ipv4\">192.0.2.10</address>\r\n </broker>\r\n</tunnel>\r\n";
        // Complete once `</tunnel>` is in (the CRLF after it is optional).
        for cut in 18..doc.len() - 2 {
            assert_eq!(take_reply(&doc[..cut], Expect::Line).unwrap(), None, "cut {cut}");
        }
        assert_eq!(take_reply(doc, Expect::Line).unwrap(), Some(doc.len()));
        // A bare status where a frame was expected is handed over whole, to name the status.
        assert_eq!(
            take_reply(b"310 Server side error\r\n", Expect::Framed).unwrap(),
            Some(23)
        );
    }

    #[test]
    fn session_reports_status_codes() {
        let mut s = ClientSession::new(ClientParams {
            version: Version::V2_0_2,
            transport: Transport::Udp,
            auth_method: AuthMethod::Anonymous,
            allow_plain: false,
            username: String::new(),
            password: Secret::default(),
            server_name: "b".into(),
            request: CreateRequest {
                mode: TunnelMode::V6UdpV4,
                proxy: false,
                client_addr: "192.0.2.2".parse().unwrap(),
                keepalive: None,
                router: None,
            },
            cnonce: "1".into(),
        });
        let mut rng = rand::rngs::OsRng;
        s.start().unwrap();
        assert_eq!(
            s.on_reply(b"530 Server too busy\r\n", &mut rng),
            Err(ProtoError::ServerTooBusy)
        );
        assert!(
            s.on_reply(b"CAPABILITY TUNNEL=V6UDPV4 AUTH=ANONYMOUS\r\n", &mut rng)
                .is_err(),
            "finished sessions stay finished"
        );
    }
}
