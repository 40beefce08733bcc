//! The broker side of one TSP session as a state machine (docs/tsp-wire.md §1.4, §1.7, §3).
//!
//! Bytes from the client go in (a TCP stream in arbitrary pieces, or one UDP datagram at a
//! time); replies come out of a queue. Over TCP the caller writes each queued reply with its
//! own `send()` and leaves a pause between two replies produced by one input (DIGEST-MD5's
//! rspauth and `200 Success`), because gogoc reads each with a single `recv()`. Over UDP each
//! client datagram is answered with the next queued reply, or a bare acknowledgement.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use super::caps::Capabilities;
use super::client::Transport;
use super::frame::{self, FrameError};
use super::sasl::{self, Mechanism, SaslError, digest_md5, passdss, plain};
use super::status::StatusCode;
use super::types::{MAX_MESSAGE, Version};
use super::xml::{self, BrokerAddr, CreateRequest, Offer};
use crate::secret::Secret;

/// Broker-wide settings every session reads.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub capabilities: Capabilities,
    /// Versions answered with CAPABILITY; others get `302`.
    pub versions: Vec<Version>,
    /// DIGEST-MD5 realm; the accounts' HA1 values are computed with it.
    pub realm: String,
    /// Needed to offer PASSDSS-3DES-1.
    pub host_key: Option<passdss::HostKeyPair>,
    /// Redirector mode: every client is sent to these brokers.
    pub redirect: Option<Vec<BrokerAddr>>,
    /// Set while the broker cannot serve new clients (its account database is unreachable, a
    /// fleet master knows no live broker): VERSION is answered `530` with this reason, which
    /// gogoc retries after its delay.
    pub busy: Option<String>,
}

/// What the broker knows about the client when it builds an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub peer: SocketAddr,
    /// Our address as the client reached it.
    pub local: SocketAddr,
    pub transport: Transport,
    /// `None` for anonymous sessions.
    pub user: Option<String>,
    /// How the client logged in; `None` until it has.
    pub mechanism: Option<Mechanism>,
    pub version: Version,
}

/// Why the broker refuses a tunnel request: the status code, and optionally words for the
/// client saying why (sent after the status text on the status line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: Option<String>,
    /// With a redirect status: the brokers the client is sent to (§4.4).
    pub brokers: Vec<BrokerAddr>,
}

impl Refusal {
    pub fn because(status: StatusCode, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: Some(reason.into()),
            brokers: Vec::new(),
        }
    }

    /// Sends the client elsewhere (`1200` and the broker list, §4.4).
    pub fn redirect(brokers: Vec<BrokerAddr>) -> Self {
        Self {
            status: StatusCode::Redirect(1200),
            reason: None,
            brokers,
        }
    }
}

impl From<StatusCode> for Refusal {
    fn from(status: StatusCode) -> Self {
        Self {
            status,
            reason: None,
            brokers: Vec::new(),
        }
    }
}

/// The broker's resources: accounts and address pools, answered at once. A broker whose
/// resources are behind I/O (a database) answers the session's [`Need`]s itself instead
/// ([`ServerSession::feed`], [`ServerSession::resume`]).
pub trait Backend {
    /// `MD5(user ":" realm ":" password)` of an account, if the user exists.
    fn account_ha1(&self, user: &str) -> Option<[u8; 16]>;
    /// The offer for this client, or the status (and reason) that refuses it.
    fn offer(&mut self, session: &SessionInfo, request: &CreateRequest) -> Result<Offer, Refusal>;
}

/// What a session waits for before it can go on: the driver looks it up (from a [`Backend`],
/// or asynchronously from a database) and hands the [`Answer`] to [`ServerSession::resume`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// The account of this user (its HA1), to check a login.
    Account { user: String },
    /// The offer for this tunnel request.
    Offer(CreateRequest),
}

/// The answer to a [`Need`]. A refusal of an account lookup (the store cannot be asked) ends the
/// login with that status instead of `300`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Account(Result<Option<[u8; 16]>, Refusal>),
    Offer(Result<Offer, Refusal>),
}

impl Answer {
    /// The answer a synchronous [`Backend`] gives.
    pub fn from_backend(need: &Need, session: &SessionInfo, backend: &mut dyn Backend) -> Self {
        match need {
            Need::Account { user } => Self::Account(Ok(backend.account_ha1(user))),
            Need::Offer(request) => Self::Offer(backend.offer(session, request)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    #[error("malformed client message: {0}")]
    Frame(#[from] FrameError),
    #[error("client sent an unexpected message: {0:?}")]
    Unexpected(String),
    #[error("client authentication failed ({mechanism}): {reason}")]
    AuthFailed { mechanism: &'static str, reason: String },
    #[error("client's tunnel request is invalid: {0}")]
    BadRequest(String),
    #[error("client's accept is invalid: {0}")]
    BadAccept(String),
    #[error("tunnel refused: {0}")]
    Refused(StatusCode),
    #[error("client speaks an unsupported TSP version: {0:?}")]
    Version(String),
    #[error("client was redirected")]
    Redirected,
    #[error("broker cannot serve the client now: {0}")]
    Busy(String),
    #[error("no lookup is pending")]
    NotWaiting,
}

/// A login the session just decided, for the broker's throttling of failed logins
/// ([`ServerSession::take_login`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginAttempt {
    /// The user name tried, when the client got as far as naming one.
    pub user: Option<String>,
    pub mechanism: Mechanism,
    pub ok: bool,
}

/// What a call to [`ServerSession::on_bytes`] achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Waiting for more client messages.
    Continue,
    /// The client accepted this offer (or, with TSP 1.0.1, received it): the tunnel exists.
    Established(Offer),
    /// Only from [`ServerSession::feed`] and [`ServerSession::resume`]: the session waits for
    /// this lookup; bytes fed meanwhile are kept for later.
    Need(Need),
}

/// A login or a create request parked until its lookup is answered.
enum Pending {
    Plain {
        user: String,
        password: Secret,
    },
    Digest {
        response: Box<digest_md5::ClientResponse>,
        nonce: String,
    },
    PassDss {
        exchange: Box<passdss::ServerExchange>,
        user: String,
        msg2: Vec<u8>,
    },
    Offer,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No password, digest or exchange state in logs.
        f.write_str(match self {
            Self::Plain { .. } => "Plain",
            Self::Digest { .. } => "Digest",
            Self::PassDss { .. } => "PassDss",
            Self::Offer => "Offer",
        })
    }
}

#[derive(Debug)]
enum State {
    Version,
    Authenticate,
    PlainCredentials,
    DigestResponse {
        nonce: String,
    },
    PassDssMsg1,
    PassDssMsg2(Box<passdss::ServerExchange>, String),
    Create,
    /// Waiting for the driver's [`Answer`].
    Lookup(Pending),
    Accept(Box<Offer>),
    Established,
    Closed,
}

pub struct ServerSession {
    cfg: Arc<ServerConfig>,
    info: SessionInfo,
    state: State,
    buf: Vec<u8>,
    /// gogoc follows every AUTHENTICATE line with one NUL byte (§10.1).
    skip_nul: bool,
    out: VecDeque<Vec<u8>>,
    /// The user name being authenticated (known once the client sent it).
    trying: Option<String>,
    login: Option<LoginAttempt>,
}

impl std::fmt::Debug for ServerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSession")
            .field("info", &self.info)
            .field("state", &self.state)
            .finish()
    }
}

impl ServerSession {
    pub fn new(cfg: Arc<ServerConfig>, peer: SocketAddr, local: SocketAddr, transport: Transport) -> Self {
        let info = SessionInfo {
            peer,
            local,
            transport,
            user: None,
            mechanism: None,
            version: Version::V2_0_2,
        };
        Self {
            cfg,
            info,
            state: State::Version,
            buf: Vec::new(),
            skip_nul: false,
            out: VecDeque::new(),
            trying: None,
            login: None,
        }
    }

    /// The outcome of a password login decided by the last [`Self::on_bytes`], once: the
    /// caller may hold the replies back (throttling) before sending them.
    pub fn take_login(&mut self) -> Option<LoginAttempt> {
        self.login.take()
    }

    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established)
    }

    /// True once the session ended (refused, failed or redirected): flush and close.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The next reply to send, in order.
    pub fn next_reply(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// Replies still queued.
    pub fn pending_replies(&self) -> usize {
        self.out.len()
    }

    /// Feeds client bytes; processes every complete message they contain, asking `backend`
    /// whatever the session needs on the way. Never returns [`Progress::Need`].
    pub fn on_bytes<R: rand::RngCore + rand::CryptoRng>(
        &mut self,
        data: &[u8],
        backend: &mut dyn Backend,
        rng: &mut R,
    ) -> Result<Progress, ServerError> {
        let mut progress = self.feed(data, rng)?;
        while let Progress::Need(need) = &progress {
            let answer = Answer::from_backend(need, &self.info, backend);
            progress = self.resume(answer, rng)?;
        }
        Ok(progress)
    }

    /// Feeds client bytes like [`Self::on_bytes`], but stops at the first lookup the session
    /// needs ([`Progress::Need`]): the caller answers it with [`Self::resume`], asynchronously
    /// if it must. Bytes fed meanwhile wait in the session.
    pub fn feed<R: rand::RngCore + rand::CryptoRng>(
        &mut self,
        data: &[u8],
        rng: &mut R,
    ) -> Result<Progress, ServerError> {
        if matches!(self.state, State::Closed | State::Established) {
            return Ok(Progress::Continue);
        }
        if self.buf.len() + data.len() > 2 * MAX_MESSAGE {
            self.state = State::Closed;
            return Err(ServerError::Frame(FrameError::LineTooLong));
        }
        self.buf.extend_from_slice(data);
        if matches!(self.state, State::Lookup(_)) {
            return Ok(Progress::Continue);
        }
        self.run(rng, Progress::Continue)
    }

    /// The answer to the session's [`Progress::Need`]; goes on with the messages waiting.
    pub fn resume<R: rand::RngCore + rand::CryptoRng>(
        &mut self,
        answer: Answer,
        rng: &mut R,
    ) -> Result<Progress, ServerError> {
        if !matches!(self.state, State::Lookup(_)) {
            return Err(ServerError::NotWaiting);
        }
        let State::Lookup(pending) = std::mem::replace(&mut self.state, State::Closed) else {
            return Err(ServerError::NotWaiting);
        };
        if matches!(pending, Pending::Offer) != matches!(answer, Answer::Offer(_)) {
            // A driver bug, not the client's doing: keep waiting for the right answer.
            self.state = State::Lookup(pending);
            return Err(ServerError::NotWaiting);
        }
        let mut progress = Progress::Continue;
        let next = match answer {
            Answer::Offer(result) => {
                let (next, p) = self.offered(result)?;
                if let Some(p) = p {
                    progress = p;
                }
                next
            }
            Answer::Account(Err(refusal)) => {
                // The account could not be looked up: not a failed login, a temporary refusal.
                self.trying = None;
                let reason = refusal.reason.clone().unwrap_or_else(|| refusal.status.to_string());
                self.reply(frame::status_line_because(refusal.status, refusal.reason.as_deref()));
                return Err(ServerError::Busy(reason));
            }
            Answer::Account(Ok(stored)) => self.login_looked_up(pending, stored)?,
        };
        self.state = next;
        if matches!(self.state, State::Established | State::Closed) {
            return Ok(progress);
        }
        self.run(rng, progress)
    }

    /// Processes the buffered messages until one is incomplete, a lookup is needed, or the
    /// session ends.
    fn run<R: rand::RngCore + rand::CryptoRng>(
        &mut self,
        rng: &mut R,
        mut progress: Progress,
    ) -> Result<Progress, ServerError> {
        loop {
            if self.skip_nul && !self.buf.is_empty() {
                if self.buf[0] == 0 {
                    self.buf.remove(0);
                }
                self.skip_nul = false;
            }
            let state = std::mem::replace(&mut self.state, State::Closed);
            match self.step(state, rng) {
                Ok(Some((next, used, p))) => {
                    self.buf.drain(..used);
                    self.state = next;
                    if let Some(p) = p {
                        progress = p;
                    }
                    if matches!(self.state, State::Established | State::Closed | State::Lookup(_)) {
                        return Ok(progress);
                    }
                }
                Ok(None) => return Ok(progress),
                Err(e) => {
                    self.state = State::Closed;
                    return Err(e);
                }
            }
        }
    }

    /// A login whose account was looked up: checks the credentials.
    fn login_looked_up(&mut self, pending: Pending, stored: Option<[u8; 16]>) -> Result<State, ServerError> {
        match pending {
            Pending::Plain { user, password } => {
                let m = Mechanism::Plain;
                let ok =
                    stored.is_some_and(|ha1| constant_eq(&digest_md5::ha1(&user, &self.cfg.realm, &password), &ha1));
                if !ok {
                    return Err(self.auth_failed(m, format!("bad credentials for user {user:?}")));
                }
                self.authenticated(m, user);
            }
            Pending::Digest { response, nonce } => {
                let m = Mechanism::DigestMd5;
                let Some(ha1) = stored else {
                    return Err(self.auth_failed(m, format!("unknown user {:?}", response.username)));
                };
                let rspauth = digest_md5::verify_response(&response, &ha1, &nonce, &self.cfg.realm)
                    .map_err(|e| self.auth_failed(m, e))?;
                self.reply(rspauth);
                self.authenticated(m, response.username);
            }
            Pending::PassDss { exchange, user, msg2 } => {
                let realm = self.cfg.realm.clone();
                let ok = exchange.verify(&msg2, |u: &str, pw: &Secret| {
                    stored.is_some_and(|ha1| u == user && constant_eq(&sasl::digest_md5::ha1(u, &realm, pw), &ha1))
                });
                ok.map_err(|e| self.auth_failed(Mechanism::PassDss3Des1, e))?;
                self.authenticated(Mechanism::PassDss3Des1, user);
            }
            Pending::Offer => return Err(ServerError::NotWaiting),
        }
        Ok(State::Create)
    }

    /// The create request was answered: the offer (then the accept) or the refusal.
    fn offered(&mut self, result: Result<Offer, Refusal>) -> Result<(State, Option<Progress>), ServerError> {
        match result {
            Ok(offer) => {
                self.reply(frame::frame_reply(StatusCode::Success, &xml::build_info(&offer)));
                if self.info.version.sends_accept() {
                    Ok((State::Accept(Box::new(offer)), None))
                } else {
                    Ok((State::Established, Some(Progress::Established(offer))))
                }
            }
            Err(refusal) if matches!(refusal.status, StatusCode::Redirect(_)) => {
                // As the create reply a redirection is framed like any other (§4.4).
                self.reply(frame::frame_reply(
                    refusal.status,
                    &xml::build_redirect(&refusal.brokers),
                ));
                Err(ServerError::Redirected)
            }
            Err(refusal) => {
                let status = refusal.status;
                self.reply(frame::frame_reply_because(status, refusal.reason.as_deref(), ""));
                Err(ServerError::Refused(status))
            }
        }
    }

    fn reply(&mut self, bytes: Vec<u8>) {
        self.out.push_back(bytes);
    }

    fn status(&mut self, status: StatusCode) {
        self.reply(frame::status_line(status));
    }

    fn auth_failed(&mut self, m: Mechanism, e: impl ToString) -> ServerError {
        self.status(StatusCode::AuthenticationFailed);
        self.login = Some(LoginAttempt {
            user: self.trying.take(),
            mechanism: m,
            ok: false,
        });
        ServerError::AuthFailed {
            mechanism: m.wire_name(),
            reason: e.to_string(),
        }
    }

    /// One message: `Ok(None)` = incomplete, else the next state, bytes consumed and progress.
    #[allow(clippy::type_complexity)]
    fn step<R: rand::RngCore + rand::CryptoRng>(
        &mut self,
        state: State,
        rng: &mut R,
    ) -> Result<Option<(State, usize, Option<Progress>)>, ServerError> {
        match state {
            State::Version => {
                let Some((line, used)) = frame::take_line(&self.buf)? else {
                    return self.wait(State::Version);
                };
                let line = String::from_utf8_lossy(frame::trim_crlf(line)).into_owned();
                let Some(v) = line.strip_prefix("VERSION=") else {
                    return Err(ServerError::Unexpected(frame::preview(line.as_bytes())));
                };
                let version = v
                    .trim()
                    .parse::<Version>()
                    .ok()
                    .filter(|v| self.cfg.versions.contains(v));
                // 1.0.1 predates RUDP.
                let version = version.filter(|v| *v != Version::V1_0_1 || self.info.transport == Transport::Tcp);
                let Some(version) = version else {
                    self.status(StatusCode::UnsupportedVersion);
                    return Err(ServerError::Version(v.to_owned()));
                };
                self.info.version = version;
                if let Some(reason) = self.cfg.busy.clone() {
                    self.reply(frame::status_line_because(StatusCode::ServerTooBusy, Some(&reason)));
                    return Err(ServerError::Busy(reason));
                }
                if let Some(brokers) = &self.cfg.redirect {
                    let mut msg = frame::status_line(StatusCode::Redirect(1200));
                    msg.extend_from_slice(xml::build_redirect(brokers).as_bytes());
                    self.reply(msg);
                    return Err(ServerError::Redirected);
                }
                let caps = self.cfg.capabilities.to_line();
                self.reply(caps);
                Ok(Some((State::Authenticate, used, None)))
            }
            State::Authenticate => {
                let Some((line, used)) = frame::take_line(&self.buf)? else {
                    return self.wait(State::Authenticate);
                };
                let text = String::from_utf8_lossy(frame::trim_crlf(line)).into_owned();
                let Some(name) = text.strip_prefix("AUTHENTICATE ") else {
                    return Err(ServerError::Unexpected(frame::preview(text.as_bytes())));
                };
                let mech = Mechanism::from_wire(name.trim())
                    .filter(|m| self.cfg.capabilities.auths & m.cap_bit() != 0)
                    .filter(|m| *m != Mechanism::PassDss3Des1 || self.cfg.host_key.is_some());
                self.skip_nul = true;
                let Some(mech) = mech else {
                    self.status(StatusCode::AuthenticationFailed);
                    return Err(ServerError::AuthFailed {
                        mechanism: "?",
                        reason: format!("mechanism {:?} is not offered", frame::preview(name.as_bytes())),
                    });
                };
                let next = match mech {
                    Mechanism::Anonymous => {
                        self.info.mechanism = Some(Mechanism::Anonymous);
                        self.status(StatusCode::Success);
                        State::Create
                    }
                    Mechanism::Plain => State::PlainCredentials,
                    Mechanism::DigestMd5 => {
                        let nonce = format!("{:016X}", rng.next_u64());
                        let challenge = digest_md5::server_challenge(&self.cfg.realm, &nonce);
                        self.reply(challenge);
                        State::DigestResponse { nonce }
                    }
                    Mechanism::PassDss3Des1 => State::PassDssMsg1,
                };
                Ok(Some((next, used, None)))
            }
            State::PlainCredentials => {
                let Some((line, used)) = frame::take_line(&self.buf)? else {
                    return self.wait(State::PlainCredentials);
                };
                let line = line.to_vec();
                let (user, password) =
                    plain::parse_client_message(&line).map_err(|e| self.auth_failed(Mechanism::Plain, e))?;
                self.trying = Some(user.clone());
                let need = Need::Account { user: user.clone() };
                let pending = Pending::Plain { user, password };
                Ok(Some((State::Lookup(pending), used, Some(Progress::Need(need)))))
            }
            State::DigestResponse { nonce } => {
                let Some((line, used)) = frame::take_line(&self.buf)? else {
                    return self.wait(State::DigestResponse { nonce });
                };
                let line = line.to_vec();
                let m = Mechanism::DigestMd5;
                let resp = digest_md5::parse_response(&line).map_err(|e| self.auth_failed(m, e))?;
                self.trying = Some(resp.username.clone());
                let need = Need::Account {
                    user: resp.username.clone(),
                };
                let pending = Pending::Digest {
                    response: Box::new(resp),
                    nonce,
                };
                Ok(Some((State::Lookup(pending), used, Some(Progress::Need(need)))))
            }
            State::PassDssMsg1 => {
                let Some(used) = passdss::msg1_len(&self.buf) else {
                    return self.wait_bounded(State::PassDssMsg1);
                };
                let m = Mechanism::PassDss3Des1;
                let Some(key) = self.cfg.host_key.as_ref() else {
                    return Err(self.auth_failed(m, "no host key"));
                };
                let msg1 = self.buf[..used].to_vec();
                let (exchange, user, msg) =
                    passdss::ServerExchange::respond(&msg1, key, rng).map_err(|e: SaslError| self.auth_failed(m, e))?;
                self.reply(msg);
                Ok(Some((State::PassDssMsg2(Box::new(exchange), user), used, None)))
            }
            State::PassDssMsg2(exchange, user) => {
                let Some(used) = exchange.msg2_complete(&self.buf) else {
                    return self.wait_bounded(State::PassDssMsg2(exchange, user));
                };
                self.trying = Some(user.clone());
                let need = Need::Account { user: user.clone() };
                let pending = Pending::PassDss {
                    exchange,
                    user,
                    msg2: self.buf[..used].to_vec(),
                };
                Ok(Some((State::Lookup(pending), used, Some(Progress::Need(need)))))
            }
            State::Create => {
                let Some((body, used)) = frame::take_framed(&self.buf, false)? else {
                    return self.wait(State::Create);
                };
                let body = body.to_vec();
                let request = match xml::parse_create(&body) {
                    Ok(r) => r,
                    Err(e) => {
                        self.reply(frame::frame_reply(StatusCode::InvalidRequest, ""));
                        return Err(ServerError::BadRequest(e.to_string()));
                    }
                };
                Ok(Some((
                    State::Lookup(Pending::Offer),
                    used,
                    Some(Progress::Need(Need::Offer(request))),
                )))
            }
            State::Accept(offer) => {
                let Some((body, used)) = frame::take_framed(&self.buf, false)? else {
                    return self.wait(State::Accept(offer));
                };
                xml::parse_accept(body).map_err(|e| ServerError::BadAccept(e.to_string()))?;
                Ok(Some((State::Established, used, Some(Progress::Established(*offer)))))
            }
            State::Established => Ok(Some((State::Established, self.buf.len(), None))),
            State::Lookup(pending) => self.wait(State::Lookup(pending)),
            State::Closed => Ok(None),
        }
    }

    fn wait(&mut self, state: State) -> Result<Option<(State, usize, Option<Progress>)>, ServerError> {
        self.state = state;
        Ok(None)
    }

    /// Waiting on a message with no terminator of its own: refuse to buffer without limit.
    fn wait_bounded(&mut self, state: State) -> Result<Option<(State, usize, Option<Progress>)>, ServerError> {
        if self.buf.len() > MAX_MESSAGE {
            return Err(ServerError::Frame(FrameError::LineTooLong));
        }
        self.wait(state)
    }

    /// A password login succeeded.
    fn authenticated(&mut self, mechanism: Mechanism, user: String) {
        self.trying = None;
        self.login = Some(LoginAttempt {
            user: Some(user.clone()),
            mechanism,
            ok: true,
        });
        self.info.user = Some(user);
        self.info.mechanism = Some(mechanism);
        self.status(StatusCode::Success);
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps;
    use crate::sasl::Mechanism;
    use crate::types::Version;
    use crate::xml::BrokerAddr;

    /// The broker's part, as small as the tests need: one DIGEST-MD5/PLAIN account
    /// (`user1`/`pass1` in realm `hexos`) and the same v6v4 offer for everyone.
    struct TestBackend {
        user1: [u8; 16],
    }

    impl Backend for TestBackend {
        fn account_ha1(&self, user: &str) -> Option<[u8; 16]> {
            (user == "user1").then_some(self.user1)
        }

        fn offer(&mut self, _session: &SessionInfo, _request: &CreateRequest) -> Result<Offer, Refusal> {
            Ok(Offer {
                mode: crate::types::TunnelMode::V6V4,
                lifetime: Some(604_800),
                server_v4: "192.0.2.1".parse().unwrap(),
                server_v6: "2001:db8::1".parse().unwrap(),
                client_v4: "192.168.1.10".parse().unwrap(),
                client_v6: "2001:db8::2".parse().unwrap(),
                client_dns_name: None,
                client_dns_server: None,
                prefix: None,
                keepalive: None,
            })
        }
    }

    /// The protocol settings of a broker offering every tunnel mode and ANONYMOUS, PLAIN and
    /// DIGEST-MD5, optionally with fewer versions or as a redirector.
    fn setup_with(versions: &[Version], redirect: &[&str]) -> (Arc<ServerConfig>, TestBackend) {
        let auths = [Mechanism::Anonymous, Mechanism::Plain, Mechanism::DigestMd5];
        let config = ServerConfig {
            capabilities: caps::Capabilities {
                tunnels: caps::TUNNEL_V6V4 | caps::TUNNEL_V6UDPV4 | caps::TUNNEL_V4V6,
                auths: auths.iter().fold(0, |acc, m| acc | m.cap_bit()),
                ..Default::default()
            },
            versions: versions.to_vec(),
            realm: "hexos".to_owned(),
            host_key: None,
            redirect: (!redirect.is_empty()).then(|| {
                redirect
                    .iter()
                    .map(|r| match r.parse() {
                        Ok(v4) => BrokerAddr::V4(v4),
                        Err(_) => BrokerAddr::Name((*r).to_owned()),
                    })
                    .collect()
            }),
            busy: None,
        };
        let user1 = digest_md5::ha1("user1", "hexos", &Secret::new("pass1"));
        (Arc::new(config), TestBackend { user1 })
    }

    fn setup() -> (Arc<ServerConfig>, TestBackend) {
        setup_with(&Version::FALLBACK, &[])
    }

    fn session(cfg: &Arc<ServerConfig>, transport: Transport) -> ServerSession {
        ServerSession::new(
            cfg.clone(),
            "192.168.1.10:5000".parse().unwrap(),
            "192.0.2.1:3653".parse().unwrap(),
            transport,
        )
    }

    /// The client's whole anonymous TCP stream, as gogoc writes it (stray NUL included).
    fn gogoc_anonymous_stream() -> Vec<u8> {
        let create = xml::build_create(&CreateRequest {
            mode: crate::types::TunnelMode::V6AnyV4,
            proxy: false,
            client_addr: "192.168.1.10".parse().unwrap(),
            keepalive: Some(30),
            router: None,
        });
        let mut s = b"VERSION=2.0.2\r\nAUTHENTICATE ANONYMOUS\r\n\0".to_vec();
        s.extend_from_slice(&frame::frame_request(&create));
        s.extend_from_slice(&frame::frame_request(xml::ACCEPT));
        s
    }

    #[test]
    fn tcp_stream_split_anywhere() {
        let (cfg, mut broker) = setup();
        let stream = gogoc_anonymous_stream();
        assert!(
            stream.windows(21).any(|w| w == b"Content-length: 217\r\n"),
            "§11.3 create length"
        );
        for cut in 0..stream.len() {
            let mut s = session(&cfg, Transport::Tcp);
            let mut rng = rand::rngs::OsRng;
            let a = s.on_bytes(&stream[..cut], &mut broker, &mut rng).unwrap();
            let b = s.on_bytes(&stream[cut..], &mut broker, &mut rng).unwrap();
            assert!(
                matches!(
                    (a, b),
                    (Progress::Continue, Progress::Established(_)) | (Progress::Established(_), Progress::Continue)
                ),
                "cut {cut}"
            );
            let replies: Vec<_> = std::iter::from_fn(|| s.next_reply()).collect();
            assert_eq!(replies.len(), 3, "CAPABILITY, 200, offer (cut {cut})");
            assert!(caps::Capabilities::is_capability_line(&replies[0]));
            assert_eq!(replies[1], b"200 Success\r\n");
            assert!(replies[2].starts_with(b"Content-length: "));
            assert_eq!(s.info().mechanism, Some(Mechanism::Anonymous));
        }
    }

    #[test]
    fn only_an_accept_document_establishes() {
        let (cfg, mut broker) = setup();
        let mut rng = rand::rngs::OsRng;
        let stream = gogoc_anonymous_stream();
        let before_accept = stream.len() - frame::frame_request(xml::ACCEPT).len();
        let not_accept = "<tunnel action=\"reject\"><x>action=\"accept\"</x></tunnel>\r\n";
        let mut s = session(&cfg, Transport::Tcp);
        assert_eq!(
            s.on_bytes(&stream[..before_accept], &mut broker, &mut rng),
            Ok(Progress::Continue)
        );
        assert!(matches!(
            s.on_bytes(&frame::frame_request(not_accept), &mut broker, &mut rng),
            Err(ServerError::BadAccept(_))
        ));
        assert!(s.is_closed() && !s.is_established());
    }

    #[test]
    fn plain_credentials_follow_the_nul_without_a_reply() {
        let (cfg, mut broker) = setup();
        let mut s = session(&cfg, Transport::Tcp);
        let mut rng = rand::rngs::OsRng;
        // §3.3: the stream holds `...PLAIN\r\n\0\0user1\0pass1\r\n`.
        s.on_bytes(
            b"VERSION=2.0.2\r\nAUTHENTICATE PLAIN\r\n\0\0user1\0pass1\r\n",
            &mut broker,
            &mut rng,
        )
        .unwrap();
        let replies: Vec<_> = std::iter::from_fn(|| s.next_reply()).collect();
        assert_eq!(replies.len(), 2);
        assert_eq!(replies[1], b"200 Success\r\n");
        assert_eq!(s.info().user.as_deref(), Some("user1"));
        assert_eq!(s.info().mechanism, Some(Mechanism::Plain));
    }

    #[test]
    fn wrong_plain_password_gets_300() {
        let (cfg, mut broker) = setup();
        let mut s = session(&cfg, Transport::Udp);
        let mut rng = rand::rngs::OsRng;
        s.on_bytes(b"VERSION=2.0.2\r\n", &mut broker, &mut rng).unwrap();
        s.on_bytes(b"AUTHENTICATE PLAIN\r\n\0", &mut broker, &mut rng).unwrap();
        assert!(s.next_reply().is_some(), "capability");
        assert_eq!(s.next_reply(), None, "PLAIN's AUTHENTICATE gets only the RUDP ack");
        let e = s.on_bytes(b"\0user1\0wrong\r\n", &mut broker, &mut rng).unwrap_err();
        assert!(matches!(e, ServerError::AuthFailed { .. }));
        assert!(!e.to_string().contains("wrong"), "no password in errors: {e}");
        let login = s.take_login().unwrap();
        assert_eq!((login.mechanism, login.ok), (Mechanism::Plain, false));
        assert_eq!(s.info().mechanism, None, "not logged in");
        assert_eq!(s.next_reply().as_deref(), Some(&b"300 Authentication failed\r\n"[..]));
        assert!(s.is_closed());
    }

    #[test]
    fn digest_md5_queues_rspauth_then_success() {
        let (cfg, mut broker) = setup();
        let mut s = session(&cfg, Transport::Tcp);
        let mut rng = rand::rngs::OsRng;
        s.on_bytes(b"VERSION=2.0.1\r\nAUTHENTICATE DIGEST-MD5\r\n\0", &mut broker, &mut rng)
            .unwrap();
        s.next_reply();
        let challenge = s.next_reply().unwrap();
        let ch = digest_md5::parse_challenge(&challenge).unwrap();
        assert_eq!(ch.realm.as_deref(), Some("hexos"));
        let (resp, expected) =
            digest_md5::client_response(&ch, "user1", &Secret::new("pass1"), "broker.freenet6.net", "1113923787");
        s.on_bytes(&resp, &mut broker, &mut rng).unwrap();
        assert_eq!(
            s.pending_replies(),
            2,
            "rspauth and 200 are two messages, written apart"
        );
        digest_md5::check_rspauth(&s.next_reply().unwrap(), &expected).unwrap();
        assert_eq!(s.next_reply().as_deref(), Some(&b"200 Success\r\n"[..]));
    }

    #[test]
    fn versions_and_redirects() {
        let (cfg, mut broker) = setup_with(&[Version::V2_0_0, Version::V1_0_1], &[]);
        let mut rng = rand::rngs::OsRng;
        let mut s = session(&cfg, Transport::Udp);
        assert!(matches!(
            s.on_bytes(b"VERSION=2.0.2\r\n", &mut broker, &mut rng),
            Err(ServerError::Version(_))
        ));
        assert_eq!(
            s.next_reply().as_deref(),
            Some(&b"302 Unsupported client version\r\n"[..])
        );
        // 1.0.1 exists only over TCP.
        let mut s = session(&cfg, Transport::Udp);
        assert!(s.on_bytes(b"VERSION=1.0.1\r\n", &mut broker, &mut rng).is_err());
        let mut s = session(&cfg, Transport::Tcp);
        assert!(s.on_bytes(b"VERSION=1.0.1\r\n", &mut broker, &mut rng).is_ok());

        let (cfg, mut broker) = setup_with(
            &Version::FALLBACK,
            &["192.0.2.10", "192.0.2.11", "anon-montreal.broker.example.net"],
        );
        let mut s = session(&cfg, Transport::Tcp);
        assert!(matches!(
            s.on_bytes(b"VERSION=2.0.2\r\n", &mut broker, &mut rng),
            Err(ServerError::Redirected)
        ));
        let r = s.next_reply().unwrap();
        assert!(
            r.starts_with(b"1200 Redirection\r\n<tunnel"),
            "{}",
            String::from_utf8_lossy(&r)
        );
        assert_eq!(r.len(), 262, "the §4.4 document");
    }

    #[test]
    fn lookups_are_answered_later_while_bytes_wait() {
        let (cfg, mut broker) = setup();
        let mut rng = rand::rngs::OsRng;
        let mut s = session(&cfg, Transport::Tcp);
        s.feed(b"VERSION=2.0.2\r\nAUTHENTICATE DIGEST-MD5\r\n\0", &mut rng)
            .unwrap();
        s.next_reply();
        let ch = digest_md5::parse_challenge(&s.next_reply().unwrap()).unwrap();
        let (resp, expected) = digest_md5::client_response(&ch, "user1", &Secret::new("pass1"), "b", "1");
        let need = s.feed(&resp, &mut rng).unwrap();
        assert_eq!(
            need,
            Progress::Need(Need::Account {
                user: "user1".to_owned()
            })
        );
        // The create request arrives before the account does: it waits.
        let create = xml::build_create(&CreateRequest {
            mode: crate::types::TunnelMode::V6V4,
            proxy: false,
            client_addr: "192.168.1.10".parse().unwrap(),
            keepalive: None,
            router: None,
        });
        assert_eq!(
            s.feed(&frame::frame_request(&create), &mut rng).unwrap(),
            Progress::Continue
        );
        assert_eq!(s.pending_replies(), 0);
        let ha1 = broker.account_ha1("user1");
        let Progress::Need(Need::Offer(req)) = s.resume(Answer::Account(Ok(ha1)), &mut rng).unwrap() else {
            panic!("the waiting create request is processed after the login");
        };
        assert_eq!(req.mode, crate::types::TunnelMode::V6V4);
        assert_eq!(
            s.take_login().map(|l| (l.mechanism, l.ok)),
            Some((Mechanism::DigestMd5, true))
        );
        assert_eq!(s.info().mechanism, Some(Mechanism::DigestMd5));
        digest_md5::check_rspauth(&s.next_reply().unwrap(), &expected).unwrap();
        assert_eq!(s.next_reply().as_deref(), Some(&b"200 Success\r\n"[..]));
        let offer = broker.offer(s.info(), &req);
        assert_eq!(s.resume(Answer::Offer(offer), &mut rng).unwrap(), Progress::Continue);
        assert!(s.next_reply().unwrap().starts_with(b"Content-length: "));
        assert!(matches!(
            s.resume(Answer::Account(Ok(None)), &mut rng),
            Err(ServerError::NotWaiting)
        ));
        let accept = s.feed(&frame::frame_request(xml::ACCEPT), &mut rng).unwrap();
        assert!(matches!(accept, Progress::Established(_)));
    }

    #[test]
    fn unreachable_accounts_are_a_temporary_refusal() {
        let (cfg, _) = setup();
        let mut rng = rand::rngs::OsRng;
        let mut s = session(&cfg, Transport::Udp);
        s.feed(b"VERSION=2.0.2\r\n", &mut rng).unwrap();
        s.feed(b"AUTHENTICATE PLAIN\r\n\0", &mut rng).unwrap();
        assert!(matches!(
            s.feed(b"\0user1\0pass1\r\n", &mut rng).unwrap(),
            Progress::Need(Need::Account { .. })
        ));
        let down = Refusal::because(StatusCode::ServerTooBusy, "account database unreachable");
        let e = s.resume(Answer::Account(Err(down)), &mut rng).unwrap_err();
        assert!(matches!(e, ServerError::Busy(_)), "{e}");
        assert!(!e.to_string().contains("pass1"));
        s.next_reply();
        assert_eq!(
            s.next_reply().as_deref(),
            Some(&b"530 Server too busy: account database unreachable\r\n"[..])
        );
        assert_eq!(s.take_login(), None, "not a failed login: nothing to throttle");
        assert!(s.is_closed());
    }

    #[test]
    fn a_busy_broker_answers_version_with_530() {
        let (cfg, _) = setup();
        let mut cfg = Arc::try_unwrap(cfg).unwrap();
        cfg.busy = Some("account database unreachable; try later".to_owned());
        let cfg = Arc::new(cfg);
        let mut s = session(&cfg, Transport::Tcp);
        let e = s.feed(b"VERSION=2.0.2\r\n", &mut rand::rngs::OsRng).unwrap_err();
        assert!(matches!(e, ServerError::Busy(_)));
        assert_eq!(
            s.next_reply().as_deref(),
            Some(&b"530 Server too busy: account database unreachable; try later\r\n"[..])
        );
    }

    #[test]
    fn a_create_request_can_be_redirected() {
        let (cfg, _) = setup();
        let mut rng = rand::rngs::OsRng;
        let mut s = session(&cfg, Transport::Tcp);
        let stream = gogoc_anonymous_stream();
        let Progress::Need(Need::Offer(_)) = s.feed(&stream, &mut rng).unwrap() else {
            panic!("create needs an offer");
        };
        let home = Refusal::redirect(vec![BrokerAddr::V4("192.0.2.11".parse().unwrap())]);
        assert!(matches!(
            s.resume(Answer::Offer(Err(home)), &mut rng),
            Err(ServerError::Redirected)
        ));
        let replies: Vec<_> = std::iter::from_fn(|| s.next_reply()).collect();
        let last = replies.last().unwrap();
        let (body, _) = frame::take_framed(last, true).unwrap().unwrap();
        let (st, doc) = frame::split_status(body).unwrap();
        assert_eq!(st.status, StatusCode::Redirect(1200));
        let brokers = xml::parse_redirect(doc).unwrap();
        assert_eq!(brokers, vec![BrokerAddr::V4("192.0.2.11".parse().unwrap())]);
    }

    #[test]
    fn garbage_is_refused_with_bounded_buffering() {
        let (cfg, mut broker) = setup();
        let mut rng = rand::rngs::OsRng;
        let mut s = session(&cfg, Transport::Tcp);
        assert!(matches!(
            s.on_bytes(b"HELLO\r\n", &mut broker, &mut rng),
            Err(ServerError::Unexpected(_))
        ));
        let mut s = session(&cfg, Transport::Tcp);
        let flood = vec![b'A'; 3000];
        assert!(s.on_bytes(&flood, &mut broker, &mut rng).is_ok());
        assert!(
            s.on_bytes(&flood, &mut broker, &mut rng).is_err(),
            "no line end after 6000 bytes"
        );
        let mut s = session(&cfg, Transport::Tcp);
        s.on_bytes(b"VERSION=2.0.2\r\nAUTHENTICATE ANONYMOUS\r\n\0", &mut broker, &mut rng)
            .unwrap();
        assert!(s.on_bytes(b"Content-length: 99999\r\n", &mut broker, &mut rng).is_err());
    }
}
