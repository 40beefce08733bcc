//! The typed model of gogoc.conf / gw6c.conf: limits, dialects, value types and
//! [`GogocConfig`] with gogoc 1.2's defaults (docs/tsp-wire.md §9).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use crate::server::{Host, ServerError, split_server};
use tsp_proto::secret::Secret;
use tsp_proto::types::{AuthMethod, DatapathKind, HostType, TSP_PORT, TunnelMode};

/// Largest configuration text accepted (a real one is about 10 KiB with all its comments).
pub const MAX_TEXT_LEN: usize = 64 * 1024;
/// Longest line: gogoc reads lines into a 2048-byte buffer and would cut longer ones.
pub const MAX_LINE_LEN: usize = 2047;
/// Longest `userid` (gogoc's limit).
pub const MAX_USERID_LEN: usize = 253;
/// Longest `passwd` (gogoc's limit).
pub const MAX_PASSWD_LEN: usize = 128;
/// Longest `dns_server` value (gogoc's limit).
pub const MAX_DNS_SERVER_LEN: usize = 1025;
/// Longest `broker_list`, `last_server` and `log_filename` (gogoc's limit).
pub const MAX_FILENAME_LEN: usize = 256;
/// Longest directory value (`gogoc_dir`, `haccess_document_root`); gogoc sets none, we bound.
pub const MAX_DIR_LEN: usize = 1024;
/// Longest Linux interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;
/// Upper bound of `retry_delay` and `retry_delay_max`, seconds (gogoc's limit).
pub const MAX_RETRY_DELAY: u32 = 3600;
/// Upper bound of `keepalive_interval`, seconds. gogoc sets none; we cap it like the retry
/// delays so every timer stays bounded.
pub const MAX_KEEPALIVE_INTERVAL: u32 = 3600;
/// Bounds of `keepalive_probe_after` (0 = off), `keepalive_probe_timeout` and `keepalive_probes`.
pub const MAX_KEEPALIVE_PROBE_AFTER: u32 = 3600;
pub const MAX_KEEPALIVE_PROBE_TIMEOUT: u32 = 60;
pub const MAX_KEEPALIVE_PROBES: u32 = 10;
/// Upper bound of `busy_poll`, microseconds (one second).
pub const MAX_BUSY_POLL: u32 = 1_000_000;
/// Highest log level (`log_<destination>=0..3`).
pub const MAX_LOG_LEVEL: u8 = 3;

/// Which client's file this is. Detected from the keys (gw6c.conf says `gw6_dir` and
/// `hap6_*` where gogoc.conf says `gogoc_dir` and `haccess_*`, and has no `retry_delay_max`
/// or `dslite_*`) and kept, so that writing the file back produces the same dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Dialect {
    /// gogoCLIENT 1.2 (gogoc.conf).
    #[default]
    Gogoc,
    /// Gateway6 Client 5.x/6.0 (gw6c.conf).
    Gw6c,
}

impl Dialect {
    /// The usual file name.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Gogoc => "gogoc.conf",
            Self::Gw6c => "gw6c.conf",
        }
    }

    /// The key naming the client's home directory (`TSP_HOME_DIR` of the template script).
    pub fn dir_key(self) -> &'static str {
        match self {
            Self::Gogoc => "gogoc_dir",
            Self::Gw6c => "gw6_dir",
        }
    }

    /// `log_filename` when the file does not set it.
    pub fn default_log_filename(self) -> &'static str {
        match self {
            Self::Gogoc => "gogoc.log",
            Self::Gw6c => "gw6c.log",
        }
    }

    /// Home directory used when the directory key is empty (the client's compile-time one).
    pub fn default_home_dir(self) -> &'static str {
        match self {
            Self::Gogoc => "/usr/local/etc/gogoc",
            Self::Gw6c => "/usr/local/etc/gw6c",
        }
    }

    /// The `template` names this client's validator accepts.
    pub fn templates(self) -> &'static [&'static str] {
        match self {
            Self::Gogoc => &GOGOC_TEMPLATES,
            Self::Gw6c => &GW6C_TEMPLATES,
        }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Gogoc => "gogoc",
            Self::Gw6c => "gw6c",
        })
    }
}

const GOGOC_TEMPLATES: [&str; 10] = [
    "linux", "freebsd", "netbsd", "openbsd", "darwin", "windows", "cisco", "sunos", "openwrt", "gogocpe",
];
const GW6C_TEMPLATES: [&str; 11] = [
    "linux",
    "freebsd",
    "netbsd",
    "openbsd",
    "darwin",
    "windows",
    "cisco",
    "solaris",
    "openwrt",
    "checktunnel",
    "dongle6",
];

/// `client_v4` / `client_v6`: learn the local address (`auto`) or use the given one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AutoAddr<A> {
    /// Use the source address of the connection to the broker.
    #[default]
    Auto,
    /// Announce this address.
    Fixed(A),
}

impl<A: fmt::Display> fmt::Display for AutoAddr<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fixed(a) => a.fmt(f),
        }
    }
}

/// Log level (0 = off … 3 = most verbose) per destination: `log_console`, `log_stderr`,
/// `log_file`, `log_syslog`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LogLevels {
    /// `log_console`.
    pub console: u8,
    /// `log_stderr`.
    pub stderr: u8,
    /// `log_file` (written to `log_filename`).
    pub file: u8,
    /// `log_syslog` (with `syslog_facility`).
    pub syslog: u8,
}

impl Default for LogLevels {
    /// gogoc's Unix defaults: only stderr, at level 1.
    fn default() -> Self {
        Self {
            console: 0,
            stderr: 1,
            file: 0,
            syslog: 0,
        }
    }
}

/// `log_rotation_size`: the log file size, in KiB, at which it is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LogRotationSize {
    K16,
    #[default]
    K32,
    K128,
    K1024,
}

impl LogRotationSize {
    /// All values, as gogoc lists them.
    pub const ALL: [Self; 4] = [Self::K16, Self::K32, Self::K128, Self::K1024];

    /// Size in KiB, as written in the file.
    pub fn kib(self) -> u32 {
        match self {
            Self::K16 => 16,
            Self::K32 => 32,
            Self::K128 => 128,
            Self::K1024 => 1024,
        }
    }

    pub(super) fn from_kib(n: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|s| u64::from(s.kib()) == n)
    }
}

/// `syslog_facility`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SyslogFacility {
    #[default]
    User,
    Local0,
    Local1,
    Local2,
    Local3,
    Local4,
    Local5,
    Local6,
    Local7,
}

impl SyslogFacility {
    /// All values.
    pub const ALL: [Self; 9] = [
        Self::User,
        Self::Local0,
        Self::Local1,
        Self::Local2,
        Self::Local3,
        Self::Local4,
        Self::Local5,
        Self::Local6,
        Self::Local7,
    ];

    /// As written in the file (upper case; gogoc compares case-sensitively).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "USER",
            Self::Local0 => "LOCAL0",
            Self::Local1 => "LOCAL1",
            Self::Local2 => "LOCAL2",
            Self::Local3 => "LOCAL3",
            Self::Local4 => "LOCAL4",
            Self::Local5 => "LOCAL5",
            Self::Local6 => "LOCAL6",
            Self::Local7 => "LOCAL7",
        }
    }
}

impl fmt::Display for SyslogFacility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every setting of gogoc.conf / gw6c.conf, typed, plus the project's `allow_plain`.
///
/// `Default` is gogoc 1.2's defaults on Linux. `Debug` never shows the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GogocConfig {
    /// Which client's file this is; decides key names and defaults when written back.
    pub dialect: Dialect,
    /// `userid`: account name at the broker (empty for anonymous).
    pub userid: String,
    /// `passwd`: the account's password.
    pub passwd: Secret,
    /// `server`: the broker, verbatim as configured (`host`, `a.b.c.d` or `[v6]`, optional
    /// `:port`). Kept as a string because DIGEST-MD5 and the host-key file use it verbatim;
    /// see [`split_server`] / [`GogocConfig::server_endpoint`].
    pub server: Option<String>,
    /// `auth_method`.
    pub auth_method: AuthMethod,
    /// `allow_plain` (NetworkManager-tsp extension): let `auth_method=any` pick PLAIN, which
    /// sends the password in clear. PLAIN is otherwise only used with `auth_method=plain`.
    pub allow_plain: bool,
    /// `host_type`: one address (host) or also a delegated prefix (router).
    pub host_type: HostType,
    /// `prefixlen`: prefix length a router asks for, 1..=128.
    pub prefixlen: u8,
    /// `if_prefix`: LAN interface a router advertises the prefix on (empty = none).
    pub if_prefix: String,
    /// `router_fallback_host` (NetworkManager-tsp extension): with `host_type=router`, accept
    /// a broker's answer without a prefix and run as a host (with a warning). Without it such
    /// an answer is an error: the LAN would silently get no IPv6.
    pub router_fallback_host: bool,
    /// `dns_server`: names of DNS servers for reverse delegation (`:`-separated in the file).
    pub dns_server: Vec<String>,
    /// `gogoc_dir` (gw6c: `gw6_dir`): home of the template scripts; empty = compile-time one.
    pub gogoc_dir: String,
    /// `auto_retry_connect`: reconnect after a failure.
    pub auto_retry_connect: bool,
    /// `retry_delay`: seconds before a retry, 0..=3600.
    pub retry_delay: u32,
    /// `retry_delay_max`: ceiling of the doubling retry delay, 0..=3600. gw6c has no such key
    /// and a fixed delay, so a gw6c file reads as `retry_delay_max == retry_delay`.
    pub retry_delay_max: u32,
    /// `keepalive`: send keepalives in the tunnel.
    pub keepalive: bool,
    /// `keepalive_interval`: seconds between keepalives (must be > 0 with `keepalive`).
    pub keepalive_interval: u32,
    /// `keepalive_probe_after`: seconds of traffic sent into the tunnel with nothing back
    /// from the broker before it is probed at once; 0 = never probe (gogoc's behaviour).
    pub keepalive_probe_after: u32,
    /// `keepalive_probe_timeout`: seconds one probe waits for its answer, 1..=60.
    pub keepalive_probe_timeout: u32,
    /// `keepalive_probes`: unanswered probes in a row that declare the path dead, 1..=10.
    pub keepalive_probes: u32,
    /// `tunnel_mode`: the encapsulation requested.
    pub tunnel_mode: TunnelMode,
    /// `if_tunnel_v6v4`: interface for v6v4 (empty = not configured).
    pub if_tunnel_v6v4: String,
    /// `if_tunnel_v6udpv4`: interface for v6udpv4 (empty = not configured).
    pub if_tunnel_v6udpv4: String,
    /// `if_tunnel_v4v6`: interface for v4v6 (empty = not configured).
    pub if_tunnel_v4v6: String,
    /// `datapath_kind` (this client's own key): v6v4 and v4v6 on a kernel link (sit,
    /// ip6tnl) where the kernel has them (`auto`), always (`kernel`) or never (`userspace`).
    pub datapath_kind: DatapathKind,
    /// `busy_poll` (this client's own key): microseconds the userspace datapath keeps polling
    /// for the next packet before it sleeps, 0..=1000000; 0 (the default) never polls. Lower
    /// latency for a CPU kept busy while traffic flows (tsp-tunnel's `busy` module).
    pub busy_poll: u32,
    /// `client_v4`: local IPv4 address announced to the broker.
    pub client_v4: AutoAddr<Ipv4Addr>,
    /// `client_v6`: local IPv6 address announced for v4v6 (brackets accepted and dropped).
    pub client_v6: AutoAddr<Ipv6Addr>,
    /// `template`: script name, `<home>/template/<template>.sh`.
    pub template: String,
    /// `proxy_client`: the broker is a TSP proxy.
    pub proxy_client: bool,
    /// `broker_list`: file of brokers from a redirection.
    pub broker_list: String,
    /// `last_server`: file remembering the last broker that worked.
    pub last_server: String,
    /// `always_use_same_server`: stick to the server in `last_server`.
    pub always_use_same_server: bool,
    /// `log_console`, `log_stderr`, `log_file`, `log_syslog`.
    pub log: LogLevels,
    /// `log_filename`.
    pub log_filename: String,
    /// `log_rotation`.
    pub log_rotation: bool,
    /// `log_rotation_size`.
    pub log_rotation_size: LogRotationSize,
    /// `log_rotation_delete`: delete rotated logs instead of keeping them.
    pub log_rotation_delete: bool,
    /// `syslog_facility`.
    pub syslog_facility: SyslogFacility,
    /// `haccess_proxy_enabled` (gw6c: `hap6_proxy_enabled`); accepted and kept, unused.
    pub haccess_proxy_enabled: bool,
    /// `haccess_web_enabled` (gw6c: `hap6_web_enabled`); accepted and kept, unused.
    pub haccess_web_enabled: bool,
    /// `haccess_document_root` (gw6c: `hap6_document_root`); accepted and kept, unused.
    pub haccess_document_root: String,
    /// `dslite_server` (gogoc only); accepted and kept, unused.
    pub dslite_server: Ipv4Addr,
    /// `dslite_client` (gogoc only); accepted and kept, unused.
    pub dslite_client: Ipv4Addr,
}

impl Default for GogocConfig {
    fn default() -> Self {
        Self::default_for(Dialect::Gogoc)
    }
}

const DEFAULT_TEMPLATE: &str = "linux";
const DEFAULT_IF_V6V4: &str = "sit1";
const DEFAULT_IF_V6UDPV4: &str = "tun";
/// Not gogoc's `sit0`: that is the sit module's fallback device, present in every namespace
/// once the module is loaded (see `check::kernel_owned_ifname`).
const DEFAULT_IF_V4V6: &str = "tsp-v4v6";
const DEFAULT_BROKER_LIST: &str = "tsp-broker-list.txt";
const DEFAULT_LAST_SERVER: &str = "tsp-last-server.txt";
pub(super) const DEFAULT_DSLITE_SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 0, 1);
pub(super) const DEFAULT_DSLITE_CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 0, 2);
const DEFAULT_RETRY_DELAY: u32 = 30;
const DEFAULT_RETRY_DELAY_MAX: u32 = 300;
const DEFAULT_KEEPALIVE_INTERVAL: u32 = 30;
const DEFAULT_KEEPALIVE_PROBE_AFTER: u32 = 3;
const DEFAULT_KEEPALIVE_PROBE_TIMEOUT: u32 = 1;
const DEFAULT_KEEPALIVE_PROBES: u32 = 3;
const DEFAULT_PREFIXLEN: u8 = 64;

impl GogocConfig {
    /// The defaults of the given client on Linux (gw6c: `gw6c.log`, fixed retry delay).
    pub fn default_for(dialect: Dialect) -> Self {
        Self {
            dialect,
            userid: String::new(),
            passwd: Secret::default(),
            server: None,
            auth_method: AuthMethod::Any,
            allow_plain: false,
            host_type: HostType::Host,
            prefixlen: DEFAULT_PREFIXLEN,
            if_prefix: String::new(),
            router_fallback_host: false,
            dns_server: Vec::new(),
            gogoc_dir: String::new(),
            auto_retry_connect: true,
            retry_delay: DEFAULT_RETRY_DELAY,
            retry_delay_max: match dialect {
                Dialect::Gogoc => DEFAULT_RETRY_DELAY_MAX,
                Dialect::Gw6c => DEFAULT_RETRY_DELAY,
            },
            keepalive: true,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_probe_after: DEFAULT_KEEPALIVE_PROBE_AFTER,
            keepalive_probe_timeout: DEFAULT_KEEPALIVE_PROBE_TIMEOUT,
            keepalive_probes: DEFAULT_KEEPALIVE_PROBES,
            tunnel_mode: TunnelMode::V6AnyV4,
            if_tunnel_v6v4: DEFAULT_IF_V6V4.to_owned(),
            if_tunnel_v6udpv4: DEFAULT_IF_V6UDPV4.to_owned(),
            if_tunnel_v4v6: DEFAULT_IF_V4V6.to_owned(),
            datapath_kind: DatapathKind::Auto,
            busy_poll: 0,
            client_v4: AutoAddr::Auto,
            client_v6: AutoAddr::Auto,
            template: DEFAULT_TEMPLATE.to_owned(),
            proxy_client: false,
            broker_list: DEFAULT_BROKER_LIST.to_owned(),
            last_server: DEFAULT_LAST_SERVER.to_owned(),
            always_use_same_server: false,
            log: LogLevels::default(),
            log_filename: dialect.default_log_filename().to_owned(),
            log_rotation: true,
            log_rotation_size: LogRotationSize::K32,
            log_rotation_delete: false,
            syslog_facility: SyslogFacility::User,
            haccess_proxy_enabled: false,
            haccess_web_enabled: false,
            haccess_document_root: String::new(),
            dslite_server: DEFAULT_DSLITE_SERVER,
            dslite_client: DEFAULT_DSLITE_CLIENT,
        }
    }

    /// The broker's host and port (3653 when the value has none).
    pub fn server_endpoint(&self) -> Result<(Host, u16), ServerError> {
        let (host, port) = split_server(self.server.as_deref().unwrap_or_default())?;
        Ok((host, port.unwrap_or(TSP_PORT)))
    }

    /// Whether PLAIN (password in clear) may be used: `auth_method=plain` or `allow_plain`.
    pub fn plain_allowed(&self) -> bool {
        self.auth_method == AuthMethod::Plain || self.allow_plain
    }

    /// The interface configured for a concrete tunnel mode (empty if none; `v6anyv4`, which
    /// is never offered, has none).
    pub fn tunnel_interface(&self, mode: TunnelMode) -> &str {
        match mode {
            TunnelMode::V6V4 => &self.if_tunnel_v6v4,
            TunnelMode::V6UdpV4 => &self.if_tunnel_v6udpv4,
            TunnelMode::V4V6 => &self.if_tunnel_v4v6,
            TunnelMode::V6AnyV4 => "",
        }
    }

    /// `TSP_HOME_DIR` for the template script: the directory key, or the client's
    /// compile-time directory when empty.
    pub fn home_dir(&self) -> &str {
        if self.gogoc_dir.is_empty() {
            self.dialect.default_home_dir()
        } else {
            &self.gogoc_dir
        }
    }

    /// The template script: `<home>/template/<template>.sh`.
    pub fn template_script(&self) -> PathBuf {
        Path::new(self.home_dir())
            .join("template")
            .join(format!("{}.sh", self.template))
    }
}
