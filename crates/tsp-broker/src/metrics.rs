//! What the broker counts for its operator, and the Prometheus endpoint that shows it
//! (`metrics_listen`; `GET /metrics` in the text exposition format, version 0.0.4).
//!
//! The counters here are atomics bumped where the broker decides something (a negotiation
//! starts, a login is decided, a client is refused, a tunnel comes or goes): a relaxed add
//! each, nothing on the packet path. Gauges (sessions, offers pending) and the traffic
//! counters (kept per tunnel by the datapath under the lock it already takes per packet) are
//! read when the endpoint is scraped. Every label has a closed set of values, so the number of
//! series is fixed: user names and addresses never become labels.
//!
//! The responder is a few dozen lines of HTTP/1.1 on tokio, not a web framework: one request
//! per connection (`Connection: close`), a bounded request head, a deadline for slow clients,
//! a cap on connections at once, `404` for any other path.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use tsp_proto::client::Transport;
use tsp_proto::sasl::Mechanism;
use tsp_proto::types::TunnelMode;

/// Why a client was turned away: the `reason` label of `tsp_broker_refusals_total`, and the
/// `reason=` of the refusal's log line. A closed set, so the metric's series stay few.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// `302`: a TSP version this broker does not answer (the client steps down).
    Version,
    /// `300`: wrong password, unknown or disabled user, a mechanism not offered, malformed
    /// credentials.
    AuthFailed,
    /// A malformed or unexpected message, an invalid tunnel request (`500`–`502`).
    BadRequest,
    /// `301`/`507`: `max_tunnels` reached or a pool exhausted.
    Capacity,
    /// `530`: one source address already has `max_pending_per_source` offers awaiting their
    /// accept.
    PendingOffers,
    /// `303`: v6v4 asked for from behind a NAT (or v6udpv4 only over UDP).
    Nat,
    /// `303`, `518`, `522`: a tunnel mode or prefix this broker does not give this client.
    Unsupported,
    /// `530`: the fleet's database is unreachable (or an allocation in it contended).
    DatabaseUnavailable,
    /// `530`: the broker cannot serve now for another reason (a master that knows no live
    /// broker).
    Busy,
    /// `1200`: sent to other brokers (redirector mode, a fleet master, the user's home broker).
    Redirected,
    /// The client's accept came after its offer was withdrawn (`offer_timeout`).
    OfferExpired,
    /// Anything else (`310`, a status this list does not name).
    Other,
}

impl RefusalReason {
    pub const ALL: [Self; 12] = [
        Self::Version,
        Self::AuthFailed,
        Self::BadRequest,
        Self::Capacity,
        Self::PendingOffers,
        Self::Nat,
        Self::Unsupported,
        Self::DatabaseUnavailable,
        Self::Busy,
        Self::Redirected,
        Self::OfferExpired,
        Self::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Version => "version",
            Self::AuthFailed => "auth_failed",
            Self::BadRequest => "bad_request",
            Self::Capacity => "capacity",
            Self::PendingOffers => "pending_offers",
            Self::Nat => "nat",
            Self::Unsupported => "unsupported",
            Self::DatabaseUnavailable => "database_unavailable",
            Self::Busy => "busy",
            Self::Redirected => "redirected",
            Self::OfferExpired => "offer_expired",
            Self::Other => "other",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(Self::ALL.len() - 1)
    }
}

/// How a session logged in, the SASL mechanism: the `auth` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    Anonymous,
    Plain,
    DigestMd5,
    PassDss3Des1,
}

impl Auth {
    pub const ALL: [Self; 4] = [Self::Anonymous, Self::Plain, Self::DigestMd5, Self::PassDss3Des1];
    /// The mechanisms with a password: the `mechanism` label of `logins_total`.
    const PASSWORD: [Self; 3] = [Self::Plain, Self::DigestMd5, Self::PassDss3Des1];

    /// A session that has not logged in (none is counted before it has) counts as anonymous.
    pub fn of(mechanism: Option<Mechanism>) -> Self {
        match mechanism {
            None | Some(Mechanism::Anonymous) => Self::Anonymous,
            Some(Mechanism::Plain) => Self::Plain,
            Some(Mechanism::DigestMd5) => Self::DigestMd5,
            Some(Mechanism::PassDss3Des1) => Self::PassDss3Des1,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Anonymous => "anonymous",
            Self::Plain => "plain",
            Self::DigestMd5 => "digest-md5",
            Self::PassDss3Des1 => "passdss-3des-1",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The concrete tunnel modes (what an offer carries): the `mode` label.
pub const MODES: [TunnelMode; 3] = [TunnelMode::V6V4, TunnelMode::V6UdpV4, TunnelMode::V4V6];

fn mode_index(mode: TunnelMode) -> Option<usize> {
    MODES.iter().position(|m| *m == mode)
}

/// Why a carried tunnel ended: the `reason` label of `tsp_broker_tunnels_ended_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    /// The client's TCP connection closed (gogoc keeps it for the tunnel's lifetime).
    Closed,
    /// Silent for five keepalive intervals.
    Silent,
    /// Ended by `tsp-broker disconnect`.
    Disconnected,
}

impl TunnelEnd {
    pub const ALL: [Self; 3] = [Self::Closed, Self::Silent, Self::Disconnected];

    pub fn label(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Silent => "silent",
            Self::Disconnected => "disconnected",
        }
    }
}

/// Packets and bytes through the tunnels (inner packets, as the TUN device sees them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets_from_clients: u64,
    pub bytes_from_clients: u64,
    pub packets_to_clients: u64,
    pub bytes_to_clients: u64,
}

impl std::ops::AddAssign for Traffic {
    fn add_assign(&mut self, o: Self) {
        self.packets_from_clients += o.packets_from_clients;
        self.bytes_from_clients += o.bytes_from_clients;
        self.packets_to_clients += o.packets_to_clients;
        self.bytes_to_clients += o.bytes_to_clients;
    }
}

/// The broker's counters (monotonic since it started).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Negotiations begun, by transport (TCP connections; UDP `VERSION`s that start a session).
    negotiations: [AtomicU64; 2],
    /// Tunnels established, by mode and auth.
    established: [[AtomicU64; 4]; 3],
    ended: [AtomicU64; 3],
    /// Password logins decided, by mechanism ([`Auth::index`] - 1): [succeeded, failed].
    logins: [[AtomicU64; 2]; 3],
    /// Logins whose answer was held back by the failed-login throttle.
    throttled: AtomicU64,
    refusals: [AtomicU64; 12],
    /// Configuration reloads (SIGHUP): [applied, refused or failed].
    reloads: [AtomicU64; 2],
}

impl Metrics {
    pub fn negotiation(&self, transport: Transport) {
        let i = match transport {
            Transport::Udp => 0,
            Transport::Tcp => 1,
        };
        self.negotiations[i].fetch_add(1, Relaxed);
    }

    pub fn established(&self, mode: TunnelMode, auth: Auth) {
        if let Some(m) = mode_index(mode) {
            self.established[m][auth.index()].fetch_add(1, Relaxed);
        }
    }

    pub fn ended(&self, why: TunnelEnd, tunnels: usize) {
        self.ended[why as usize].fetch_add(tunnels as u64, Relaxed);
    }

    pub fn login(&self, mechanism: Mechanism, ok: bool) {
        if let Some(i) = Auth::of(Some(mechanism)).index().checked_sub(1) {
            self.logins[i][usize::from(!ok)].fetch_add(1, Relaxed);
        }
    }

    pub fn throttled(&self) {
        self.throttled.fetch_add(1, Relaxed);
    }

    pub fn refused(&self, why: RefusalReason) {
        self.refusals[why.index()].fetch_add(1, Relaxed);
    }

    pub fn reload(&self, ok: bool) {
        self.reloads[usize::from(!ok)].fetch_add(1, Relaxed);
    }

    pub fn refusals(&self, why: RefusalReason) -> u64 {
        self.refusals[why.index()].load(Relaxed)
    }
}

/// What is read from the broker's state when the endpoint is scraped.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Established sessions by mode and auth ([`MODES`] × [`Auth::ALL`]).
    pub sessions: [[u64; 4]; 3],
    pub offers_pending: u64,
    pub max_tunnels: u64,
    pub traffic: Traffic,
    /// A fleet member: whether its database answers (`None` without a fleet).
    pub database_up: Option<bool>,
    pub started: Option<SystemTime>,
}

impl Gauges {
    pub fn count_session(&mut self, mode: TunnelMode, mechanism: Option<Mechanism>) {
        if let Some(m) = mode_index(mode) {
            self.sessions[m][Auth::of(mechanism).index()] += 1;
        }
    }
}

/// One metric family after another, in the text exposition format.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.0, "# HELP tsp_broker_{name} {help}");
        let _ = writeln!(self.0, "# TYPE tsp_broker_{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        let _ = write!(self.0, "tsp_broker_{name}");
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape_label(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// A label value as the format wants it: backslash, double quote and line feed escaped.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The exposition text of the counters and the gauges.
pub fn render(m: &Metrics, g: &Gauges) -> String {
    let mut e = Exposition(String::with_capacity(4096));
    e.family(
        "sessions",
        "gauge",
        "Tunnels established and carried now, by tunnel mode and how the user logged in.",
    );
    for (mi, mode) in MODES.iter().enumerate() {
        for auth in Auth::ALL {
            e.sample(
                "sessions",
                &[("mode", mode.as_str()), ("auth", auth.label())],
                g.sessions[mi][auth.index()],
            );
        }
    }
    e.family(
        "offers_pending",
        "gauge",
        "Offers sent and awaiting the client's accept.",
    );
    e.sample("offers_pending", &[], g.offers_pending);
    e.family("max_tunnels", "gauge", "The configured capacity (max_tunnels).");
    e.sample("max_tunnels", &[], g.max_tunnels);
    e.family(
        "negotiations_total",
        "counter",
        "TSP negotiations begun (a TCP connection that spoke, or a VERSION over UDP), by transport.",
    );
    for (i, t) in ["udp", "tcp"].iter().enumerate() {
        e.sample(
            "negotiations_total",
            &[("transport", t)],
            m.negotiations[i].load(Relaxed),
        );
    }
    e.family(
        "tunnels_established_total",
        "counter",
        "Negotiations that ended with an accepted tunnel, by tunnel mode and how the user logged in.",
    );
    for (mi, mode) in MODES.iter().enumerate() {
        for auth in Auth::ALL {
            e.sample(
                "tunnels_established_total",
                &[("mode", mode.as_str()), ("auth", auth.label())],
                m.established[mi][auth.index()].load(Relaxed),
            );
        }
    }
    e.family(
        "tunnels_ended_total",
        "counter",
        "Carried tunnels that ended: TCP connection closed, silent for five keepalive intervals, or disconnected by the operator.",
    );
    for why in TunnelEnd::ALL {
        e.sample(
            "tunnels_ended_total",
            &[("reason", why.label())],
            m.ended[why as usize].load(Relaxed),
        );
    }
    e.family(
        "logins_total",
        "counter",
        "Password logins decided, by SASL mechanism and result.",
    );
    for (i, auth) in Auth::PASSWORD.iter().enumerate() {
        for (r, result) in ["success", "failure"].iter().enumerate() {
            e.sample(
                "logins_total",
                &[("mechanism", auth.label()), ("result", result)],
                m.logins[i][r].load(Relaxed),
            );
        }
    }
    e.family(
        "throttled_logins_total",
        "counter",
        "Logins whose answer was delayed by the failed-login throttle (login_delay_ms).",
    );
    e.sample("throttled_logins_total", &[], m.throttled.load(Relaxed));
    e.family("refusals_total", "counter", "Clients turned away, by reason.");
    for why in RefusalReason::ALL {
        e.sample("refusals_total", &[("reason", why.label())], m.refusals(why));
    }
    e.family(
        "tunnel_packets_total",
        "counter",
        "Inner packets carried by the broker's datapath, by direction (kernel links count only from_clients).",
    );
    e.sample(
        "tunnel_packets_total",
        &[("direction", "from_clients")],
        g.traffic.packets_from_clients,
    );
    e.sample(
        "tunnel_packets_total",
        &[("direction", "to_clients")],
        g.traffic.packets_to_clients,
    );
    e.family(
        "tunnel_bytes_total",
        "counter",
        "Bytes of the inner packets carried by the broker's datapath, by direction (kernel links count only from_clients).",
    );
    e.sample(
        "tunnel_bytes_total",
        &[("direction", "from_clients")],
        g.traffic.bytes_from_clients,
    );
    e.sample(
        "tunnel_bytes_total",
        &[("direction", "to_clients")],
        g.traffic.bytes_to_clients,
    );
    e.family(
        "config_reloads_total",
        "counter",
        "Configuration reloads asked for by SIGHUP, by result (failure: the running configuration was kept).",
    );
    e.sample(
        "config_reloads_total",
        &[("result", "success")],
        m.reloads[0].load(Relaxed),
    );
    e.sample(
        "config_reloads_total",
        &[("result", "failure")],
        m.reloads[1].load(Relaxed),
    );
    if let Some(up) = g.database_up {
        e.family(
            "database_up",
            "gauge",
            "1 while the fleet's database answers, 0 while new clients are refused for want of it.",
        );
        e.sample("database_up", &[], u64::from(up));
    }
    if let Some(t) = g.started.and_then(|s| s.duration_since(SystemTime::UNIX_EPOCH).ok()) {
        e.family(
            "start_time_seconds",
            "gauge",
            "When the broker started, in seconds since the Unix epoch.",
        );
        e.sample("start_time_seconds", &[], t.as_secs());
    }
    e.0
}

/// Longest request head read (request line and headers); larger requests get `431`.
const MAX_REQUEST: usize = 8192;
/// A client gets this long to send its request, and again to read the answer.
const CLIENT_DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 16;

/// Serves `GET /metrics` on `listener` with the text `render` makes, until the task is dropped.
pub async fn serve_http<F>(listener: TcpListener, render: F)
where
    F: Fn() -> String + Send + Sync + 'static,
{
    serve(listener, render, CLIENT_DEADLINE).await
}

async fn serve<F>(listener: TcpListener, render: F, deadline: Duration)
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let render = Arc::new(render);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics endpoint: too many connections; closed");
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &*render, deadline).await {
                tracing::debug!(%peer, error = %e, "metrics endpoint: request not answered");
            }
            drop(slot);
        });
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Metrics { head: bool },
    NotFound { head: bool },
    BadMethod,
    Bad,
}

/// Reads one request head and classifies it.
fn parse_request(head: &[u8]) -> Request {
    let Some(line) = head.split(|b| *b == b'\n').next() else {
        return Request::Bad;
    };
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Request::Bad;
    };
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return Request::Bad;
    }
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Request::BadMethod,
    };
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if path == "/metrics" {
        Request::Metrics { head }
    } else {
        Request::NotFound { head }
    }
}

async fn answer(
    mut stream: TcpStream,
    render: &(dyn Fn() -> String + Send + Sync),
    deadline: Duration,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let read = tokio::time::timeout(deadline, async {
        let mut chunk = [0u8; 1024];
        loop {
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
                return Ok::<_, std::io::Error>(true);
            }
            if buf.len() > MAX_REQUEST {
                return Ok(false);
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?;
    let (status, body, head_only, extra) = match read? {
        false => ("431 Request Header Fields Too Large", String::new(), false, ""),
        true => match parse_request(&buf) {
            Request::Metrics { head } => ("200 OK", render(), head, ""),
            Request::NotFound { head } => ("404 Not Found", "not found; try /metrics\n".to_owned(), head, ""),
            Request::BadMethod => (
                "405 Method Not Allowed",
                "only GET and HEAD\n".to_owned(),
                false,
                "Allow: GET, HEAD\r\n",
            ),
            Request::Bad => ("400 Bad Request", String::new(), false, ""),
        },
    };
    let content_type = if status.starts_with("200") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        reply.extend_from_slice(body.as_bytes());
    }
    tokio::time::timeout(deadline, async {
        stream.write_all(&reply).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
        assert_eq!(escape_label("v6udpv4"), "v6udpv4");
    }

    #[test]
    fn exposition_format() {
        let m = Metrics::default();
        m.refused(RefusalReason::AuthFailed);
        m.refused(RefusalReason::AuthFailed);
        m.established(TunnelMode::V6UdpV4, Auth::DigestMd5);
        m.established(TunnelMode::V6AnyV4, Auth::Anonymous); // a request, not a mode: ignored
        m.login(Mechanism::DigestMd5, false);
        let mut g = Gauges {
            max_tunnels: 10,
            ..Gauges::default()
        };
        g.count_session(TunnelMode::V6V4, None);
        let text = render(&m, &g);
        assert!(
            text.contains("tsp_broker_refusals_total{reason=\"auth_failed\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("tsp_broker_refusals_total{reason=\"nat\"} 0\n"), "{text}");
        assert!(
            text.contains("tsp_broker_tunnels_established_total{mode=\"v6udpv4\",auth=\"digest-md5\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("tsp_broker_sessions{mode=\"v6v4\",auth=\"anonymous\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("tsp_broker_logins_total{mechanism=\"digest-md5\",result=\"failure\"} 1\n"));
        assert!(!text.contains("database_up"), "no fleet, no database gauge");
        // Every sample belongs to the family announced before it; counters end in _total.
        let mut family = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(matches!(kind, "counter" | "gauge"), "{line}");
                assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
                family = name.to_owned();
            } else if !line.starts_with("# HELP ") {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(name, family, "{line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<u64>().is_ok(), "{line}");
            }
        }
    }

    #[test]
    fn requests_are_classified() {
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Metrics { head: false }
        );
        assert_eq!(
            parse_request(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Request::Metrics { head: true }
        );
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\n\r\n"),
            Request::NotFound { head: false }
        );
        assert_eq!(parse_request(b"POST /metrics HTTP/1.1\r\n\r\n"), Request::BadMethod);
        assert_eq!(parse_request(b"GET /metrics\r\n\r\n"), Request::Bad);
        assert_eq!(parse_request(b"\xff\xfe garbage"), Request::Bad);
    }

    #[tokio::test]
    async fn http_endpoint_answers_bounds_and_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let deadline = Duration::from_millis(300);
        let server = tokio::spawn(serve(listener, || "tsp_broker_x 1\n".to_owned(), deadline));
        async fn ask(addr: std::net::SocketAddr, req: &[u8]) -> String {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(req).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }
        let ok = ask(addr, b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Type: text/plain; version=0.0.4"), "{ok}");
        assert!(
            ok.contains("Content-Length: 15\r\n") && ok.ends_with("\r\n\r\ntsp_broker_x 1\n"),
            "{ok}"
        );
        let missing = ask(addr, b"GET /other HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
        let huge = [b"GET /metrics HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 20_000]].concat();
        let refused = ask(addr, &huge).await;
        assert!(refused.starts_with("HTTP/1.1 431 "), "{refused}");
        // A client that never finishes its request is dropped at the deadline.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /met").await.unwrap();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest))
            .await
            .expect("closed at the deadline")
            .unwrap_or(0);
        assert_eq!(n, 0, "no answer to an unfinished request");
        server.abort();
    }
}
