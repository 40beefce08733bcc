//! `tsp-broker` configuration (TOML). Every field has a default that makes a small anonymous
//! broker on 3653, so the shortest config is an empty file.
//!
//! See docs/tsp-wire.md §1.7, §9.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use tsp_proto::sasl::Mechanism;
use tsp_proto::types::{TSP_PORT, TunnelMode, Version};
use tsp_proto::xml::BrokerAddr;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// An address block `addr/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net<A> {
    pub addr: A,
    pub len: u8,
}

impl<A: std::str::FromStr> std::str::FromStr for Net<A> {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not of the form address/length"))?;
        let addr = a.parse::<A>().map_err(|_| format!("{a:?} is not a valid address"))?;
        let len = l.parse::<u8>().map_err(|_| format!("{l:?} is not a prefix length"))?;
        Ok(Self { addr, len })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Raw {
    listen: Vec<String>,
    tcp: bool,
    udp: bool,
    versions: Vec<String>,
    tunnel_modes: Vec<String>,
    auth: Vec<String>,
    realm: String,
    accounts_file: Option<PathBuf>,
    host_key_file: Option<PathBuf>,
    server_ipv4: Option<Ipv4Addr>,
    server_ipv6: Ipv6Addr,
    client_pool: String,
    prefix_pool: String,
    prefix_length_min: u8,
    prefix_length_max: u8,
    ipv4_pool: String,
    dns_server: Option<Ipv6Addr>,
    dns_suffix: Option<String>,
    max_tunnels: usize,
    offer_timeout: u32,
    max_pending_per_source: usize,
    login_delay_ms: u64,
    login_delay_max_ms: u64,
    keepalive_min: u32,
    keepalive_max: u32,
    lifetime: u32,
    state_file: Option<PathBuf>,
    redirect: Vec<String>,
    datapath: bool,
    tun_name: String,
    tun4_name: String,
    forwarding: bool,
    datapath_kind: String,
    busy_poll_us: u64,
    database: Option<String>,
    database_password_file: Option<PathBuf>,
    fleet_id: Option<String>,
    fleet_address: Option<String>,
    fleet_master: bool,
    fleet_heartbeat_ms: u64,
    fleet_dead_after_ms: u64,
    metrics_listen: Option<String>,
    control_socket: String,
}

impl Default for Raw {
    fn default() -> Self {
        Self {
            listen: vec![format!("[::]:{TSP_PORT}")],
            tcp: true,
            udp: true,
            versions: Version::FALLBACK.iter().map(|v| v.to_string()).collect(),
            tunnel_modes: vec!["v6v4".into(), "v6udpv4".into(), "v4v6".into()],
            auth: vec!["anonymous".into()],
            realm: "tsp-broker".into(),
            accounts_file: None,
            host_key_file: None,
            server_ipv4: None,
            server_ipv6: "2001:db8:b::1".parse().unwrap_or(Ipv6Addr::UNSPECIFIED),
            client_pool: "2001:db8:b::/64".into(),
            prefix_pool: "2001:db8:c000::/36".into(),
            prefix_length_min: 48,
            prefix_length_max: 64,
            ipv4_pool: "198.51.100.0/24".into(),
            dns_server: None,
            dns_suffix: None,
            max_tunnels: 1000,
            offer_timeout: 60,
            max_pending_per_source: 4,
            login_delay_ms: 100,
            login_delay_max_ms: 4000,
            keepalive_min: 5,
            keepalive_max: 300,
            lifetime: 604_800,
            state_file: None,
            redirect: Vec::new(),
            datapath: true,
            tun_name: "tspb0".into(),
            tun4_name: "tspb4".into(),
            forwarding: false,
            datapath_kind: "auto".into(),
            busy_poll_us: 0,
            database: None,
            database_password_file: None,
            fleet_id: None,
            fleet_address: None,
            fleet_master: false,
            fleet_heartbeat_ms: 1000,
            fleet_dead_after_ms: 5000,
            metrics_listen: None,
            control_socket: crate::control::DEFAULT_CONTROL_SOCKET.into(),
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub listen: Vec<SocketAddr>,
    pub tcp: bool,
    pub udp: bool,
    pub versions: Vec<Version>,
    pub tunnel_modes: Vec<TunnelMode>,
    pub auth: Vec<Mechanism>,
    pub realm: String,
    pub accounts_file: Option<PathBuf>,
    pub host_key_file: Option<PathBuf>,
    /// Our IPv4 tunnel endpoint; `None` = the address the client reached.
    pub server_ipv4: Option<Ipv4Addr>,
    /// Our IPv6 address inside the tunnel (also the keepalive target).
    pub server_ipv6: Ipv6Addr,
    /// Client addresses for v6 tunnels.
    pub client_pool: Net<Ipv6Addr>,
    /// Prefixes delegated to routers.
    pub prefix_pool: Net<Ipv6Addr>,
    pub prefix_length_min: u8,
    pub prefix_length_max: u8,
    /// v4v6: the first address is ours inside the tunnel, the rest go to clients.
    pub ipv4_pool: Net<Ipv4Addr>,
    /// Told to clients in every offer (gogoc 1.2 needs it); defaults to `server_ipv6`.
    pub dns_server: Ipv6Addr,
    /// Authenticated users get the DNS name `<user>.<dns_suffix>`.
    pub dns_suffix: Option<String>,
    pub max_tunnels: usize,
    /// An offer not accepted within this time is withdrawn (its tunnel slot comes back).
    pub offer_timeout: std::time::Duration,
    /// At most this many offers awaiting their accept per client source address.
    pub max_pending_per_source: usize,
    /// First delay before answering a failed login (doubling per further failure of the same
    /// user or source); zero turns login throttling off.
    pub login_delay: std::time::Duration,
    /// The longest such delay.
    pub login_delay_max: std::time::Duration,
    pub keepalive_min: u32,
    pub keepalive_max: u32,
    pub lifetime: u32,
    /// Where address assignments survive a restart.
    pub state_file: Option<PathBuf>,
    /// Redirector mode: send every client to these brokers.
    pub redirect: Vec<BrokerAddr>,
    /// Carry tunnel traffic (TUN devices, raw sockets: needs root); off = negotiate only.
    pub datapath: bool,
    /// TUN device for the IPv6 side of all tunnels, and for v4v6's IPv4 side.
    pub tun_name: String,
    pub tun4_name: String,
    /// Enable IPv6 forwarding so clients reach beyond the broker.
    pub forwarding: bool,
    /// How v6v4 and v4v6 tunnels are carried: kernel links where the kernel has them, or the
    /// userspace datapath (datapath.rs).
    pub datapath_kind: DatapathKind,
    /// How long the userspace datapath polls for the next packet before it sleeps (`busy_poll_us`;
    /// zero, the default: never). Lower latency for a CPU kept busy while traffic flows.
    pub busy_poll: std::time::Duration,
    /// Accounts and assignments in PostgreSQL, shared by a fleet of brokers (db.rs, fleet.rs);
    /// `None`: the accounts file and the state file.
    pub fleet: Option<FleetConfig>,
    /// Where the Prometheus metrics are served (`GET /metrics`); `None`: nowhere.
    pub metrics_listen: Option<SocketAddr>,
    /// The Unix socket of `tsp-broker sessions` and `disconnect` (control.rs); `None`: none.
    pub control_socket: Option<PathBuf>,
}

/// What a reloaded configuration changes ([`BrokerConfig::changes`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Keys a running broker applies to its next sessions.
    pub live: Vec<&'static str>,
    /// Keys the broker's sockets, devices, pools or fleet membership were made from: only a
    /// restart applies them.
    pub restart: Vec<&'static str>,
}

/// A broker of a fleet: its database and its place in the fleet.
#[derive(Clone)]
pub struct FleetConfig {
    /// The connection string (libpq key=value or URL), without a password.
    pub database: String,
    /// A file holding the database password, read at start.
    pub database_password_file: Option<PathBuf>,
    /// This broker's name in the fleet (its heartbeat row; its sessions).
    pub id: String,
    /// Where the master and the other brokers send clients to reach this broker: an IPv4 or
    /// IPv6 address or a DNS name (TSP's port, 3653: redirections carry no port).
    pub address: BrokerAddr,
    /// A master: answers every client with the live brokers (`1200`); carries no tunnels.
    pub master: bool,
    /// How often the heartbeat row is refreshed (and a master reads the live brokers).
    pub heartbeat: std::time::Duration,
    /// A broker whose heartbeat is older is dead: out of the master's list, its users free.
    pub dead_after: std::time::Duration,
}

impl std::fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection string names hosts and users only (a password in it is refused), but
        // it stays out of debug output all the same.
        f.debug_struct("FleetConfig")
            .field("id", &self.id)
            .field("address", &self.address)
            .field("master", &self.master)
            .field("heartbeat", &self.heartbeat)
            .field("dead_after", &self.dead_after)
            .finish_non_exhaustive()
    }
}

/// A redirection entry as text (IPv6 without brackets): what the brokers table holds.
pub fn broker_addr_text(a: &BrokerAddr) -> String {
    match a {
        BrokerAddr::V4(a) => a.to_string(),
        BrokerAddr::V6(a) => a.to_string(),
        BrokerAddr::Name(n) => n.clone(),
    }
}

/// A broker named in a redirection: an IPv4 or IPv6 address (brackets allowed) or a DNS name.
pub fn broker_addr(text: &str) -> Option<BrokerAddr> {
    let t = text.trim_start_matches('[').trim_end_matches(']');
    match t.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => Some(BrokerAddr::V4(a)),
        Ok(IpAddr::V6(a)) => Some(BrokerAddr::V6(a)),
        Err(_)
            if !t.is_empty()
                && t.len() <= 254
                && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') =>
        {
            Some(BrokerAddr::Name(t.to_owned()))
        }
        Err(_) => None,
    }
}

pub use tsp_proto::types::DatapathKind;

impl Default for BrokerConfig {
    fn default() -> Self {
        validate(Raw::default(), Path::new("<defaults>")).unwrap_or_else(|e| unreachable!("defaults are valid: {e}"))
    }
}

impl BrokerConfig {
    /// The keys whose values differ in `new`, by whether a running broker can take them.
    pub fn changes(&self, new: &BrokerConfig) -> Changes {
        let mut c = Changes::default();
        // Every field is named, so a new key cannot be forgotten here.
        let BrokerConfig {
            listen,
            tcp,
            udp,
            versions,
            tunnel_modes,
            auth,
            realm,
            accounts_file,
            host_key_file,
            server_ipv4,
            server_ipv6,
            client_pool,
            prefix_pool,
            prefix_length_min,
            prefix_length_max,
            ipv4_pool,
            dns_server,
            dns_suffix,
            max_tunnels,
            offer_timeout,
            max_pending_per_source,
            login_delay,
            login_delay_max,
            keepalive_min,
            keepalive_max,
            lifetime,
            state_file,
            redirect,
            datapath,
            tun_name,
            tun4_name,
            forwarding,
            datapath_kind,
            busy_poll,
            fleet,
            metrics_listen,
            control_socket,
        } = self;
        macro_rules! key {
            ($list:ident, $field:ident, $name:literal) => {
                if *$field != new.$field {
                    c.$list.push($name);
                }
            };
        }
        key!(live, versions, "versions");
        key!(live, auth, "auth");
        key!(live, realm, "realm");
        key!(live, accounts_file, "accounts_file");
        key!(live, host_key_file, "host_key_file");
        key!(live, prefix_length_min, "prefix_length_min");
        key!(live, prefix_length_max, "prefix_length_max");
        key!(live, dns_server, "dns_server");
        key!(live, dns_suffix, "dns_suffix");
        key!(live, max_tunnels, "max_tunnels");
        key!(live, offer_timeout, "offer_timeout");
        key!(live, max_pending_per_source, "max_pending_per_source");
        key!(live, login_delay, "login_delay_ms");
        key!(live, login_delay_max, "login_delay_max_ms");
        key!(live, keepalive_min, "keepalive_min");
        key!(live, keepalive_max, "keepalive_max");
        key!(live, lifetime, "lifetime");
        key!(live, redirect, "redirect");
        key!(restart, listen, "listen");
        key!(restart, tcp, "tcp");
        key!(restart, udp, "udp");
        // The datapath opened its devices and sockets for the modes offered at start.
        key!(restart, tunnel_modes, "tunnel_modes");
        key!(restart, server_ipv4, "server_ipv4");
        key!(restart, server_ipv6, "server_ipv6");
        key!(restart, client_pool, "client_pool");
        key!(restart, prefix_pool, "prefix_pool");
        key!(restart, ipv4_pool, "ipv4_pool");
        key!(restart, state_file, "state_file");
        key!(restart, datapath, "datapath");
        key!(restart, tun_name, "tun_name");
        key!(restart, tun4_name, "tun4_name");
        key!(restart, forwarding, "forwarding");
        key!(restart, datapath_kind, "datapath_kind");
        key!(restart, busy_poll, "busy_poll_us");
        key!(restart, metrics_listen, "metrics_listen");
        key!(restart, control_socket, "control_socket");
        match (fleet, &new.fleet) {
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => c.restart.push("database"),
            (Some(a), Some(b)) => {
                let FleetConfig {
                    database,
                    database_password_file,
                    id,
                    address,
                    master,
                    heartbeat,
                    dead_after,
                } = a;
                for (changed, name) in [
                    (*database != b.database, "database"),
                    (
                        *database_password_file != b.database_password_file,
                        "database_password_file",
                    ),
                    (*id != b.id, "fleet_id"),
                    (*address != b.address, "fleet_address"),
                    (*master != b.master, "fleet_master"),
                    (*heartbeat != b.heartbeat, "fleet_heartbeat_ms"),
                    (*dead_after != b.dead_after, "fleet_dead_after_ms"),
                ] {
                    if changed {
                        c.restart.push(name);
                    }
                }
            }
        }
        c
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        if meta.len() > 1 << 20 {
            return Err(ConfigError::Parse {
                path: path.into(),
                message: "file is larger than 1 MiB".into(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: Raw = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        validate(raw, path)
    }
}

fn validate(raw: Raw, path: &Path) -> Result<BrokerConfig, ConfigError> {
    let invalid = |key: &'static str, message: String| ConfigError::Invalid {
        path: path.into(),
        key,
        message,
    };
    let listen = raw
        .listen
        .iter()
        .map(|l| {
            l.parse::<SocketAddr>()
                .map_err(|_| invalid("listen", format!("{l:?} is not address:port")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if listen.is_empty() {
        return Err(invalid("listen", "at least one address is needed".into()));
    }
    if !raw.tcp && !raw.udp {
        return Err(invalid("tcp", "tcp and udp cannot both be off".into()));
    }
    let versions = raw
        .versions
        .iter()
        .map(|v| v.parse::<Version>().map_err(|e| invalid("versions", e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let tunnel_modes = raw
        .tunnel_modes
        .iter()
        .map(|m| {
            m.parse::<TunnelMode>()
                .map_err(|e| invalid("tunnel_modes", e.to_string()))
                .and_then(|m| {
                    if m.is_concrete() {
                        Ok(m)
                    } else {
                        Err(invalid(
                            "tunnel_modes",
                            "v6anyv4 is a request, not a mode to offer".into(),
                        ))
                    }
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let auth = raw
        .auth
        .iter()
        .map(|a| {
            Mechanism::from_wire(a).ok_or_else(|| {
                invalid(
                    "auth",
                    format!("unknown mechanism {a:?} (anonymous, plain, digest-md5, passdss-3des-1)"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if auth.iter().any(|m| *m != Mechanism::Anonymous) && raw.accounts_file.is_none() && raw.database.is_none() {
        return Err(invalid(
            "accounts_file",
            "needed when auth includes a mechanism other than anonymous (or a database)".into(),
        ));
    }
    if auth.contains(&Mechanism::PassDss3Des1) && raw.host_key_file.is_none() {
        return Err(invalid("host_key_file", "needed for passdss-3des-1".into()));
    }
    let net6 = |key: &'static str, s: &str| s.parse::<Net<Ipv6Addr>>().map_err(|m| invalid(key, m));
    let client_pool = net6("client_pool", &raw.client_pool)?;
    let prefix_pool = net6("prefix_pool", &raw.prefix_pool)?;
    let ipv4_pool = raw
        .ipv4_pool
        .parse::<Net<Ipv4Addr>>()
        .map_err(|m| invalid("ipv4_pool", m))?;
    if !(8..=126).contains(&client_pool.len) {
        return Err(invalid("client_pool", "length must be 8..=126".into()));
    }
    if !(8..=30).contains(&ipv4_pool.len) {
        return Err(invalid("ipv4_pool", "length must be 8..=30".into()));
    }
    if !(1..=64).contains(&raw.prefix_length_min)
        || raw.prefix_length_min > raw.prefix_length_max
        || raw.prefix_length_max > 64
    {
        return Err(invalid(
            "prefix_length_min",
            "need 1 <= prefix_length_min <= prefix_length_max <= 64".into(),
        ));
    }
    if prefix_pool.len > raw.prefix_length_min {
        return Err(invalid(
            "prefix_pool",
            format!(
                "a /{} pool cannot hold /{} delegations",
                prefix_pool.len, raw.prefix_length_min
            ),
        ));
    }
    if raw.keepalive_min == 0 || raw.keepalive_min > raw.keepalive_max {
        return Err(invalid(
            "keepalive_min",
            "need 0 < keepalive_min <= keepalive_max".into(),
        ));
    }
    if raw.max_tunnels == 0 {
        return Err(invalid("max_tunnels", "must be at least 1".into()));
    }
    if !(1..=60).contains(&raw.offer_timeout) {
        return Err(invalid("offer_timeout", "must be 1..=60 seconds".into()));
    }
    if raw.max_pending_per_source == 0 {
        return Err(invalid("max_pending_per_source", "must be at least 1".into()));
    }
    if raw.login_delay_ms > raw.login_delay_max_ms || raw.login_delay_max_ms > 60_000 {
        return Err(invalid(
            "login_delay_ms",
            "need login_delay_ms <= login_delay_max_ms <= 60000".into(),
        ));
    }
    if raw.redirect.len() > tsp_proto::types::MAX_BROKERS {
        return Err(invalid(
            "redirect",
            format!("at most {} brokers", tsp_proto::types::MAX_BROKERS),
        ));
    }
    let mut redirect = Vec::new();
    for r in &raw.redirect {
        redirect
            .push(broker_addr(r).ok_or_else(|| invalid("redirect", format!("{r:?} is not an address or host name")))?);
    }
    for (key, name) in [("tun_name", &raw.tun_name), ("tun4_name", &raw.tun4_name)] {
        if name.is_empty()
            || name.len() > 15
            || name
                .bytes()
                .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == b'%')
        {
            return Err(invalid(
                key,
                format!("{name:?} is not a valid interface name (1 to 15 characters)"),
            ));
        }
    }
    if raw.busy_poll_us > MAX_BUSY_POLL_US {
        return Err(invalid(
            "busy_poll_us",
            format!("at most {MAX_BUSY_POLL_US} (one second)"),
        ));
    }
    let datapath_kind: DatapathKind = raw
        .datapath_kind
        .parse()
        .map_err(|e: tsp_proto::types::UnknownKeyword| invalid("datapath_kind", e.to_string()))?;
    if let Some(s) = &raw.dns_suffix
        && (s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
    {
        return Err(invalid("dns_suffix", format!("{s:?} is not a domain name")));
    }
    let fleet = fleet_config(&raw, &listen, &invalid)?;
    if fleet.is_some() && raw.accounts_file.is_some() {
        return Err(invalid(
            "accounts_file",
            "not used with a database: the accounts live in the database (`tsp-broker db import-accounts FILE`)".into(),
        ));
    }
    if fleet.is_some() && raw.state_file.is_some() {
        return Err(invalid(
            "state_file",
            "not used with a database: the assignments live in the database".into(),
        ));
    }
    if fleet.as_ref().is_some_and(|f| f.master) && !redirect.is_empty() {
        return Err(invalid(
            "redirect",
            "a fleet master redirects to the live brokers it finds in the database; no fixed list".into(),
        ));
    }
    if fleet.is_some() {
        // The database refuses overlapping blocks across pools (one EXCLUDE constraint).
        let (c, p) = (client_pool, prefix_pool);
        if contains6(c, p.addr) || contains6(p, c.addr) {
            return Err(invalid(
                "prefix_pool",
                "must not overlap client_pool when the assignments live in a database".into(),
            ));
        }
    }
    let metrics_listen = match &raw.metrics_listen {
        Some(l) => Some(
            l.parse::<SocketAddr>()
                .map_err(|_| invalid("metrics_listen", format!("{l:?} is not address:port")))?,
        ),
        None => None,
    };
    let control_socket = match raw.control_socket.as_str() {
        "" => None,
        p if p.starts_with('/') && p.len() < 108 => Some(PathBuf::from(p)),
        p => {
            return Err(invalid(
                "control_socket",
                format!("{p:?} is not an absolute path of at most 107 bytes (\"\" turns it off)"),
            ));
        }
    };
    Ok(BrokerConfig {
        listen,
        tcp: raw.tcp,
        udp: raw.udp,
        versions,
        tunnel_modes,
        auth,
        realm: raw.realm,
        accounts_file: raw.accounts_file,
        host_key_file: raw.host_key_file,
        server_ipv4: raw.server_ipv4,
        server_ipv6: raw.server_ipv6,
        client_pool,
        prefix_pool,
        prefix_length_min: raw.prefix_length_min,
        prefix_length_max: raw.prefix_length_max,
        ipv4_pool,
        dns_server: raw.dns_server.unwrap_or(raw.server_ipv6),
        dns_suffix: raw.dns_suffix,
        max_tunnels: raw.max_tunnels,
        offer_timeout: std::time::Duration::from_secs(u64::from(raw.offer_timeout)),
        max_pending_per_source: raw.max_pending_per_source,
        login_delay: std::time::Duration::from_millis(raw.login_delay_ms),
        login_delay_max: std::time::Duration::from_millis(raw.login_delay_max_ms),
        keepalive_min: raw.keepalive_min,
        keepalive_max: raw.keepalive_max,
        lifetime: raw.lifetime,
        state_file: raw.state_file,
        redirect,
        datapath: raw.datapath,
        tun_name: raw.tun_name,
        tun4_name: raw.tun4_name,
        forwarding: raw.forwarding,
        datapath_kind,
        busy_poll: std::time::Duration::from_micros(raw.busy_poll_us),
        fleet,
        metrics_listen,
        control_socket,
    })
}

/// Upper bound of `busy_poll_us`.
const MAX_BUSY_POLL_US: u64 = 1_000_000;

fn contains6(net: Net<Ipv6Addr>, a: Ipv6Addr) -> bool {
    let mask = if net.len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(net.len))
    };
    u128::from(net.addr) & mask == u128::from(a) & mask
}

/// The `database` and `fleet_*` keys.
fn fleet_config(
    raw: &Raw,
    listen: &[SocketAddr],
    invalid: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<Option<FleetConfig>, ConfigError> {
    let Some(database) = raw.database.clone() else {
        if raw.fleet_master {
            return Err(invalid("fleet_master", "needs a database".into()));
        }
        return Ok(None);
    };
    let parsed = database
        .parse::<tokio_postgres::Config>()
        .map_err(|e| invalid("database", format!("not a PostgreSQL connection string: {e}")))?;
    if parsed.get_password().is_some() {
        // The configuration file is world-readable where packages install it.
        return Err(invalid(
            "database",
            "holds a password; put it in database_password_file (mode 0600) instead".into(),
        ));
    }
    let id = match &raw.fleet_id {
        Some(id) => id.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default(),
    };
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "fleet_id",
            format!("{id:?} is not a broker name (1 to 64 printable characters, no spaces)"),
        ));
    }
    let address = match &raw.fleet_address {
        Some(a) => {
            broker_addr(a).ok_or_else(|| invalid("fleet_address", format!("{a:?} is not an address or host name")))?
        }
        None => match (raw.server_ipv4, listen.iter().find(|l| !l.ip().is_unspecified())) {
            (Some(v4), _) => BrokerAddr::V4(v4),
            (None, Some(l)) => match l.ip() {
                IpAddr::V4(a) => BrokerAddr::V4(a),
                IpAddr::V6(a) => BrokerAddr::V6(a),
            },
            (None, None) if raw.fleet_master => BrokerAddr::Name(id.clone()),
            (None, None) => {
                return Err(invalid(
                    "fleet_address",
                    "needed: where should the master send clients to reach this broker? (no server_ipv4, and every listen address is a wildcard)".into(),
                ));
            }
        },
    };
    if raw.fleet_heartbeat_ms < 100 || raw.fleet_heartbeat_ms > 60_000 {
        return Err(invalid("fleet_heartbeat_ms", "must be 100..=60000".into()));
    }
    if raw.fleet_dead_after_ms < 2 * raw.fleet_heartbeat_ms || raw.fleet_dead_after_ms > 600_000 {
        return Err(invalid(
            "fleet_dead_after_ms",
            "must be at least twice fleet_heartbeat_ms and at most 600000".into(),
        ));
    }
    Ok(Some(FleetConfig {
        database,
        database_password_file: raw.database_password_file.clone(),
        id,
        address,
        master: raw.fleet_master,
        heartbeat: std::time::Duration::from_millis(raw.fleet_heartbeat_ms),
        dead_after: std::time::Duration::from_millis(raw.fleet_dead_after_ms),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_an_anonymous_broker() {
        let c = BrokerConfig::parse("", Path::new("b.toml")).unwrap();
        assert_eq!(c.auth, vec![Mechanism::Anonymous]);
        assert_eq!(c.listen, vec!["[::]:3653".parse().unwrap()]);
        assert_eq!(c.dns_server, c.server_ipv6);
        assert_eq!(c.datapath_kind, DatapathKind::Auto);
    }

    #[test]
    fn datapath_kind_is_one_of_three() {
        let parse = |t: &str| BrokerConfig::parse(t, Path::new("b.toml"));
        for (text, kind) in [
            ("auto", DatapathKind::Auto),
            ("kernel", DatapathKind::Kernel),
            ("userspace", DatapathKind::Userspace),
        ] {
            assert_eq!(
                parse(&format!("datapath_kind = \"{text}\"")).unwrap().datapath_kind,
                kind
            );
        }
        let e = parse("datapath_kind = \"sit\"").unwrap_err().to_string();
        assert!(
            e.contains("datapath_kind") && e.contains("auto, kernel, userspace"),
            "{e}"
        );
    }

    #[test]
    fn shipped_sample_parses_to_the_defaults() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/tsp-broker.toml"));
        let sample = BrokerConfig::load(path).unwrap();
        let defaults = BrokerConfig::default();
        assert_eq!(format!("{sample:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn errors_name_the_key() {
        let e = BrokerConfig::parse("auth = [\"digest-md5\"]", Path::new("b.toml")).unwrap_err();
        assert!(e.to_string().contains("accounts_file"), "{e}");
        let e = BrokerConfig::parse("client_pool = \"2001:db8::/200\"", Path::new("b.toml")).unwrap_err();
        assert!(e.to_string().contains("client_pool"), "{e}");
        let e = BrokerConfig::parse("bogus = 1", Path::new("b.toml")).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = BrokerConfig::parse("tunnel_modes = [\"v6anyv4\"]", Path::new("b.toml")).unwrap_err();
        assert!(e.to_string().contains("tunnel_modes"), "{e}");
    }

    #[test]
    fn operations_keys() {
        let parse = |t: &str| BrokerConfig::parse(t, Path::new("b.toml"));
        let c = parse("metrics_listen = \"127.0.0.1:9653\"\ncontrol_socket = \"\"").unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9653".parse().unwrap()));
        assert_eq!(c.control_socket, None);
        assert_eq!(
            BrokerConfig::default().control_socket.as_deref(),
            Some(Path::new("/run/tsp-broker/control"))
        );
        let e = parse("metrics_listen = \"9653\"").unwrap_err().to_string();
        assert!(e.contains("metrics_listen"), "{e}");
        let e = parse("control_socket = \"run/control\"").unwrap_err().to_string();
        assert!(e.contains("control_socket"), "{e}");
    }

    #[test]
    fn reload_changes_are_sorted_by_what_a_running_broker_can_take() {
        let parse = |t: &str| BrokerConfig::parse(t, Path::new("b.toml")).unwrap();
        let old = parse("");
        assert_eq!(old.changes(&parse("")), Changes::default());
        let c = old.changes(&parse(
            "max_tunnels = 5\nlogin_delay_ms = 10\nredirect = [\"192.0.2.9\"]",
        ));
        assert_eq!(c.live, vec!["max_tunnels", "login_delay_ms", "redirect"]);
        assert!(c.restart.is_empty());
        let c = old.changes(&parse(
            "listen = [\"192.0.2.1:3653\"]\nclient_pool = \"2001:db8:d::/64\"\nmax_tunnels = 5",
        ));
        assert_eq!(c.restart, vec!["listen", "client_pool"]);
        assert_eq!(c.live, vec!["max_tunnels"]);
        let fleet = "database = \"host=db\"\nfleet_address = \"b1\"\nfleet_id = \"b1\"";
        let c = parse(fleet).changes(&parse(&format!("{fleet}\nfleet_heartbeat_ms = 500")));
        assert_eq!(c.restart, vec!["fleet_heartbeat_ms"]);
        assert_eq!(old.changes(&parse(fleet)).restart, vec!["database"]);
        // The datapath's loops took their busy-poll window at start.
        assert_eq!(old.changes(&parse("busy_poll_us = 50")).restart, vec!["busy_poll_us"]);
    }

    #[test]
    fn busy_poll_is_bounded() {
        let parse = |t: &str| BrokerConfig::parse(t, Path::new("b.toml"));
        assert!(parse("").unwrap().busy_poll.is_zero());
        assert_eq!(
            parse("busy_poll_us = 50000").unwrap().busy_poll,
            std::time::Duration::from_millis(50)
        );
        let e = parse("busy_poll_us = 1000001").unwrap_err().to_string();
        assert!(e.contains("busy_poll_us") && e.contains("1000000"), "{e}");
    }

    #[test]
    fn fleet_keys() {
        let parse = |t: &str| BrokerConfig::parse(t, Path::new("b.toml"));
        let c = parse(
            "database = \"host=/run/postgresql dbname=tsp\"\nauth = [\"digest-md5\"]\n\
             listen = [\"192.0.2.11:3653\"]\nfleet_id = \"b1\"",
        )
        .unwrap();
        let f = c.fleet.unwrap();
        assert_eq!(
            (f.id.as_str(), &f.address),
            ("b1", &BrokerAddr::V4("192.0.2.11".parse().unwrap()))
        );
        assert!(!f.master);
        assert!(
            !format!("{f:?}").contains("dbname"),
            "no connection string in debug output"
        );
        let e = parse("database = \"host=db password=hunter2\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("database_password_file") && !e.contains("hunter2"), "{e}");
        let e = parse("database = \"host=db\"\nfleet_id = \"b\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fleet_address"), "{e}");
        let e = parse("fleet_master = true").unwrap_err().to_string();
        assert!(e.contains("needs a database"), "{e}");
        let e = parse("database = \"host=db\"\nfleet_address = \"b1\"\nstate_file = \"/x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("state_file"), "{e}");
        let e = parse("database = \"host=db\"\nfleet_address = \"b1\"\nprefix_pool = \"2001:db8:b::/48\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("overlap"), "{e}");
    }
}
