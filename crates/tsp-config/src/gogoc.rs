//! gogoc.conf (gogoCLIENT 1.2) and gw6c.conf (Gateway6 Client 5.x): typed model, reader and
//! writer. Pure: text in, [`GogocConfig`] out, and back (docs/tsp-wire.md §9).
//!
//! Format, as gogoc reads it: one `name=value` per line; lines whose first non-blank
//! character is `#` are comments; blank lines are ignored; spaces and tabs around the name
//! and the value are dropped; the value is everything after the first `=` (so it may contain
//! `=` or `#`). We also accept CRLF line ends and a UTF-8 byte-order mark. We are stricter
//! than gogoc where gogoc is silently surprising: unknown keys, duplicate keys, lines
//! without `=` and control characters are errors, each naming file, line and key.

use std::fmt;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use super::error::{ConfigError, Location};
use super::server::{Host, ServerError, is_dns_name, split_server};
use tsp_proto::secret::Secret;
use tsp_proto::types::{AuthMethod, HostType, TSP_PORT, TunnelMode, UnknownKeyword};

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

    fn from_kib(n: u64) -> Option<Self> {
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
    /// `tunnel_mode`: the encapsulation requested.
    pub tunnel_mode: TunnelMode,
    /// `if_tunnel_v6v4`: interface for v6v4 (empty = not configured).
    pub if_tunnel_v6v4: String,
    /// `if_tunnel_v6udpv4`: interface for v6udpv4 (empty = not configured).
    pub if_tunnel_v6udpv4: String,
    /// `if_tunnel_v4v6`: interface for v4v6 (empty = not configured).
    pub if_tunnel_v4v6: String,
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
const DEFAULT_IF_V4V6: &str = "sit0";
const DEFAULT_BROKER_LIST: &str = "tsp-broker-list.txt";
const DEFAULT_LAST_SERVER: &str = "tsp-last-server.txt";
const DEFAULT_DSLITE_SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 0, 1);
const DEFAULT_DSLITE_CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 0, 2);
const DEFAULT_RETRY_DELAY: u32 = 30;
const DEFAULT_RETRY_DELAY_MAX: u32 = 300;
const DEFAULT_KEEPALIVE_INTERVAL: u32 = 30;
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
            tunnel_mode: TunnelMode::V6AnyV4,
            if_tunnel_v6v4: DEFAULT_IF_V6V4.to_owned(),
            if_tunnel_v6udpv4: DEFAULT_IF_V6UDPV4.to_owned(),
            if_tunnel_v4v6: DEFAULT_IF_V4V6.to_owned(),
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

    /// Checks a configuration built or changed in memory with the same rules `parse`
    /// applies, plus that it can be written and read back unchanged. Errors carry `origin`
    /// as file name and no line number.
    pub fn validate(&self, origin: &Path) -> Result<(), ConfigError> {
        let file = origin.display().to_string();
        check_fields(self).map_err(|(field, problem)| {
            problem.into_error(
                Location {
                    file: file.clone(),
                    line: None,
                },
                field.key(self.dialect),
            )
        })?;
        check_cross(self, &Seen::default(), &file, true)
    }

    /// [`validate`](Self::validate), and that everything needed to connect is there (the
    /// `server` key, optional for `parse` as for gogoc, is required to run).
    pub fn validate_for_connect(&self, origin: &Path) -> Result<(), ConfigError> {
        self.validate(origin)?;
        if self.server.is_none() {
            return Err(ConfigError::MissingKey {
                at: Location {
                    file: origin.display().to_string(),
                    line: None,
                },
                key: "server".to_owned(),
                why: "the address of the tunnel broker is needed to connect",
            });
        }
        Ok(())
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

// ---------------------------------------------------------------------------------------
// Keys

/// One setting, whatever its spelling in the file. The order is the order of writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Userid,
    Passwd,
    Server,
    AuthMethod,
    AllowPlain,
    HostType,
    Prefixlen,
    IfPrefix,
    DnsServer,
    Dir,
    AutoRetryConnect,
    RetryDelay,
    RetryDelayMax,
    Keepalive,
    KeepaliveInterval,
    TunnelMode,
    IfTunnelV6v4,
    IfTunnelV6udpv4,
    IfTunnelV4v6,
    ClientV4,
    ClientV6,
    Template,
    ProxyClient,
    BrokerList,
    LastServer,
    AlwaysUseSameServer,
    LogConsole,
    LogStderr,
    LogFile,
    LogSyslog,
    LogFilename,
    LogRotation,
    LogRotationSize,
    LogRotationDelete,
    SyslogFacility,
    HaccessProxyEnabled,
    HaccessWebEnabled,
    HaccessDocumentRoot,
    DsliteServer,
    DsliteClient,
}

const N_FIELDS: usize = 40;

const FIELDS: [Field; N_FIELDS] = {
    use Field::*;
    [
        Userid,
        Passwd,
        Server,
        AuthMethod,
        AllowPlain,
        HostType,
        Prefixlen,
        IfPrefix,
        DnsServer,
        Dir,
        AutoRetryConnect,
        RetryDelay,
        RetryDelayMax,
        Keepalive,
        KeepaliveInterval,
        TunnelMode,
        IfTunnelV6v4,
        IfTunnelV6udpv4,
        IfTunnelV4v6,
        ClientV4,
        ClientV6,
        Template,
        ProxyClient,
        BrokerList,
        LastServer,
        AlwaysUseSameServer,
        LogConsole,
        LogStderr,
        LogFile,
        LogSyslog,
        LogFilename,
        LogRotation,
        LogRotationSize,
        LogRotationDelete,
        SyslogFacility,
        HaccessProxyEnabled,
        HaccessWebEnabled,
        HaccessDocumentRoot,
        DsliteServer,
        DsliteClient,
    ]
};

/// Which dialect a key name belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    Both,
    Gogoc,
    Gw6c,
}

#[derive(Debug, Clone, Copy)]
enum KeyKind {
    /// A key of gogoc.conf or gw6c.conf.
    Current(Field, Mark),
    /// An old tspc 1.x/2.x key with a direct modern equivalent.
    Legacy(Field),
    /// An old tspc key without one; the text says what to do instead.
    Obsolete(&'static str),
}

/// Every key name we understand.
const KEYS: [(&str, KeyKind); 48] = {
    use Field::*;
    use KeyKind::{Current as C, Legacy, Obsolete};
    use Mark::{Both as B, Gogoc as G, Gw6c as W};
    [
        ("userid", C(Userid, B)),
        ("passwd", C(Passwd, B)),
        ("server", C(Server, B)),
        ("auth_method", C(AuthMethod, B)),
        ("allow_plain", C(AllowPlain, B)),
        ("host_type", C(HostType, B)),
        ("prefixlen", C(Prefixlen, B)),
        ("if_prefix", C(IfPrefix, B)),
        ("dns_server", C(DnsServer, B)),
        ("gogoc_dir", C(Dir, G)),
        ("gw6_dir", C(Dir, W)),
        ("auto_retry_connect", C(AutoRetryConnect, B)),
        ("retry_delay", C(RetryDelay, B)),
        ("retry_delay_max", C(RetryDelayMax, G)),
        ("keepalive", C(Keepalive, B)),
        ("keepalive_interval", C(KeepaliveInterval, B)),
        ("tunnel_mode", C(TunnelMode, B)),
        ("if_tunnel_v6v4", C(IfTunnelV6v4, B)),
        ("if_tunnel_v6udpv4", C(IfTunnelV6udpv4, B)),
        ("if_tunnel_v4v6", C(IfTunnelV4v6, B)),
        ("client_v4", C(ClientV4, B)),
        ("client_v6", C(ClientV6, B)),
        ("template", C(Template, B)),
        ("proxy_client", C(ProxyClient, B)),
        ("broker_list", C(BrokerList, B)),
        ("last_server", C(LastServer, B)),
        ("always_use_same_server", C(AlwaysUseSameServer, B)),
        ("log_console", C(LogConsole, B)),
        ("log_stderr", C(LogStderr, B)),
        ("log_file", C(LogFile, B)),
        ("log_syslog", C(LogSyslog, B)),
        ("log_filename", C(LogFilename, B)),
        ("log_rotation", C(LogRotation, B)),
        ("log_rotation_size", C(LogRotationSize, B)),
        ("log_rotation_delete", C(LogRotationDelete, B)),
        ("syslog_facility", C(SyslogFacility, B)),
        ("haccess_proxy_enabled", C(HaccessProxyEnabled, G)),
        ("haccess_web_enabled", C(HaccessWebEnabled, G)),
        ("haccess_document_root", C(HaccessDocumentRoot, G)),
        ("hap6_proxy_enabled", C(HaccessProxyEnabled, W)),
        ("hap6_web_enabled", C(HaccessWebEnabled, W)),
        ("hap6_document_root", C(HaccessDocumentRoot, W)),
        ("dslite_server", C(DsliteServer, G)),
        ("dslite_client", C(DsliteClient, G)),
        // tspc 1.x/2.x (tspc.conf)
        ("tsp_dir", Legacy(Dir)),
        // tspc 1.x only knew v6v4, so its one tunnel interface is the v6v4 one.
        ("if_tunnel", Legacy(IfTunnelV6v4)),
        (
            "tsp_version",
            Obsolete("the protocol version is negotiated (2.0.2 down to 1.0.1); delete the line"),
        ),
        (
            "if_source",
            Obsolete("set client_v4 to the interface's IPv4 address, or to auto; delete the line"),
        ),
    ]
};

fn lookup(name: &str) -> Option<(&'static str, KeyKind)> {
    KEYS.iter().find(|(k, _)| *k == name).copied()
}

impl Field {
    fn index(self) -> usize {
        self as usize
    }

    /// The key written for this field in `dialect`, or `None` where the dialect has none.
    fn written_key(self, dialect: Dialect) -> Option<&'static str> {
        use Field::*;
        let gw6c = dialect == Dialect::Gw6c;
        Some(match self {
            RetryDelayMax | DsliteServer | DsliteClient if gw6c => return None,
            Dir => dialect.dir_key(),
            HaccessProxyEnabled if gw6c => "hap6_proxy_enabled",
            HaccessWebEnabled if gw6c => "hap6_web_enabled",
            HaccessDocumentRoot if gw6c => "hap6_document_root",
            _ => KEYS.iter().find_map(|(k, kind)| match kind {
                KeyKind::Current(f, Mark::Both | Mark::Gogoc) if *f == self => Some(*k),
                _ => None,
            })?,
        })
    }

    /// The key to name in messages (the gogoc name where gw6c has none).
    fn key(self, dialect: Dialect) -> &'static str {
        self.written_key(dialect)
            .or_else(|| self.written_key(Dialect::Gogoc))
            .unwrap_or("?")
    }
}

/// Where each field was set in the file: line and the key as spelled there.
struct Seen([Option<(usize, &'static str)>; N_FIELDS]);

impl Default for Seen {
    fn default() -> Self {
        Self([None; N_FIELDS])
    }
}

impl Seen {
    fn get(&self, f: Field) -> Option<(usize, &'static str)> {
        self.0[f.index()]
    }
}

// ---------------------------------------------------------------------------------------
// Reading

/// Reads a gogoc.conf or gw6c.conf text. `origin` only names the file in error messages
/// (and, when no key reveals the dialect, a file name starting with `gw6c` selects gw6c).
///
/// An empty value means the key's default, except for `if_tunnel_*` where it means "no
/// interface" (gogoc has no default for them either; the defaults apply when the key is
/// absent). `server` may be absent; see [`GogocConfig::validate_for_connect`].
pub fn parse(text: &str, origin: &Path) -> Result<GogocConfig, ConfigError> {
    parse_with(text, origin, true)
}

/// [`parse`], except that an empty `passwd` is accepted whatever `auth_method` says: for
/// importing a file into a NetworkManager profile, which asks for the password when it
/// connects (an exported profile's file has `passwd=` left empty).
pub fn parse_without_password(text: &str, origin: &Path) -> Result<GogocConfig, ConfigError> {
    parse_with(text, origin, false)
}

fn parse_with(text: &str, origin: &Path, require_password: bool) -> Result<GogocConfig, ConfigError> {
    let file = origin.display().to_string();
    if text.len() > MAX_TEXT_LEN {
        return Err(ConfigError::TooLarge {
            file,
            size: text.len() as u64,
            max: MAX_TEXT_LEN as u64,
        });
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut cfg = GogocConfig::default();
    let mut seen = Seen::default();
    let mut gogoc_mark: Option<(usize, &'static str)> = None;
    let mut gw6c_mark: Option<(usize, &'static str)> = None;
    let mut log_filename_given = false;

    for (index, raw) in text.split('\n').enumerate() {
        let lineno = index + 1;
        let at = || Location {
            file: file.clone(),
            line: Some(lineno),
        };
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.len() > MAX_LINE_LEN {
            return Err(ConfigError::LineTooLong {
                at: at(),
                len: line.len(),
                max: MAX_LINE_LEN,
            });
        }
        let content = line.trim_matches(is_blank);
        if let Some(c) = line.chars().find(|c| c.is_control() && *c != '\t') {
            // Name the key only when it is one of ours; never show the line.
            let key = content
                .split_once('=')
                .and_then(|(name, _)| lookup(name.trim_matches(is_blank)))
                .map(|(name, _)| name.to_owned());
            return Err(ConfigError::ControlChar {
                at: at(),
                key,
                code: u32::from(c),
            });
        }
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let Some((name, value)) = content.split_once('=') else {
            return Err(ConfigError::MissingEquals { at: at() });
        };
        let (name, value) = (name.trim_matches(is_blank), value.trim_matches(is_blank));
        if name.is_empty() {
            return Err(ConfigError::EmptyKey { at: at() });
        }
        let Some((name, kind)) = lookup(name) else {
            return Err(ConfigError::UnknownKey {
                at: at(),
                key: shown_name(name),
                hint: suggestion(name),
            });
        };
        let (field, mark) = match kind {
            KeyKind::Current(field, mark) => (field, mark),
            KeyKind::Legacy(field) => (field, Mark::Both),
            KeyKind::Obsolete(advice) => {
                return Err(ConfigError::ObsoleteKey {
                    at: at(),
                    key: name.to_owned(),
                    advice,
                });
            }
        };
        if let Some((first_line, _)) = seen.get(field) {
            return Err(ConfigError::DuplicateKey {
                at: at(),
                key: name.to_owned(),
                first_line,
            });
        }
        seen.0[field.index()] = Some((lineno, name));
        match mark {
            Mark::Gogoc => gogoc_mark = gogoc_mark.or(Some((lineno, name))),
            Mark::Gw6c => gw6c_mark = gw6c_mark.or(Some((lineno, name))),
            Mark::Both => {}
        }
        if let (Some((gl, gk)), Some((wl, wk))) = (gogoc_mark, gw6c_mark) {
            return Err(ConfigError::Conflict {
                at: at(),
                keys: vec![gk.to_owned(), wk.to_owned()],
                message: format!(
                    "gogoc key \"{gk}\" (line {gl}) and gw6c key \"{wk}\" (line {wl}) in one \
                     file; use the keys of one client only"
                ),
            });
        }
        if field == Field::LogFilename && !value.is_empty() {
            log_filename_given = true;
        }
        apply(&mut cfg, field, value).map_err(|p| p.into_error(at(), name))?;
    }

    cfg.dialect = match (gogoc_mark, gw6c_mark) {
        (_, Some(_)) => Dialect::Gw6c,
        (Some(_), None) => Dialect::Gogoc,
        (None, None) => {
            let named_gw6c = origin
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("gw6c"));
            if named_gw6c { Dialect::Gw6c } else { Dialect::Gogoc }
        }
    };
    if cfg.dialect == Dialect::Gw6c {
        if !log_filename_given {
            cfg.log_filename = Dialect::Gw6c.default_log_filename().to_owned();
        }
        // gw6c waits a fixed retry_delay between attempts: no doubling.
        cfg.retry_delay_max = cfg.retry_delay;
    }
    check_cross(&cfg, &seen, &file, require_password)?;
    Ok(cfg)
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// What is wrong with one value; becomes a [`ConfigError`] once file, line and key are known.
/// Never built from a password's text.
#[derive(Debug)]
enum Problem {
    Invalid(String),
    Range { value: String, min: u64, max: u64 },
    TooLong { len: usize, max: usize },
}

impl Problem {
    fn into_error(self, at: Location, key: &str) -> ConfigError {
        let key = key.to_owned();
        match self {
            Self::Invalid(reason) => ConfigError::BadValue { at, key, reason },
            Self::Range { value, min, max } => ConfigError::OutOfRange {
                at,
                key,
                value,
                min,
                max,
            },
            Self::TooLong { len, max } => ConfigError::ValueTooLong { at, key, len, max },
        }
    }
}

/// Sets one field from its text. Empty text = the field's default (see [`parse`]).
fn apply(cfg: &mut GogocConfig, field: Field, v: &str) -> Result<(), Problem> {
    use Field::*;
    let d = GogocConfig::default();
    match field {
        Userid => {
            check_userid(v)?;
            cfg.userid = v.to_owned();
        }
        Passwd => {
            check_passwd(v)?;
            cfg.passwd = Secret::new(v);
        }
        Server => {
            cfg.server = if v.is_empty() {
                None
            } else {
                split_server(v).map_err(|e| Problem::Invalid(e.to_string()))?;
                Some(v.to_owned())
            }
        }
        AuthMethod => cfg.auth_method = or_default(v, d.auth_method, parse_keyword)?,
        AllowPlain => cfg.allow_plain = parse_bool(v, d.allow_plain)?,
        HostType => cfg.host_type = or_default(v, d.host_type, parse_keyword)?,
        Prefixlen => {
            cfg.prefixlen = or_default(v, d.prefixlen, |v| {
                parse_num(v, 1, 128).map(|n| u8::try_from(n).unwrap_or(u8::MAX))
            })?
        }
        IfPrefix => {
            check_lan_ifname(v)?;
            cfg.if_prefix = v.to_owned();
        }
        DnsServer => cfg.dns_server = parse_dns_servers(v)?,
        Dir => {
            check_dir(v)?;
            cfg.gogoc_dir = v.to_owned();
        }
        AutoRetryConnect => cfg.auto_retry_connect = parse_bool(v, d.auto_retry_connect)?,
        RetryDelay => cfg.retry_delay = or_default(v, d.retry_delay, |v| parse_num(v, 0, MAX_RETRY_DELAY))?,
        RetryDelayMax => cfg.retry_delay_max = or_default(v, d.retry_delay_max, |v| parse_num(v, 0, MAX_RETRY_DELAY))?,
        Keepalive => cfg.keepalive = parse_bool(v, d.keepalive)?,
        KeepaliveInterval => {
            cfg.keepalive_interval = or_default(v, d.keepalive_interval, |v| parse_num(v, 0, MAX_KEEPALIVE_INTERVAL))?
        }
        TunnelMode => {
            if v.eq_ignore_ascii_case("dslite") {
                return Err(Problem::Invalid(
                    "DS-Lite (dslite) is not supported by this client; use v6anyv4, v6v4, \
                     v6udpv4 or v4v6"
                        .to_owned(),
                ));
            }
            cfg.tunnel_mode = or_default(v, d.tunnel_mode, parse_keyword)?;
        }
        IfTunnelV6v4 | IfTunnelV6udpv4 | IfTunnelV4v6 => {
            check_tunnel_ifname(v)?;
            let slot = match field {
                IfTunnelV6v4 => &mut cfg.if_tunnel_v6v4,
                IfTunnelV6udpv4 => &mut cfg.if_tunnel_v6udpv4,
                _ => &mut cfg.if_tunnel_v4v6,
            };
            *slot = v.to_owned();
        }
        ClientV4 => cfg.client_v4 = or_default(v, AutoAddr::Auto, parse_client_v4)?,
        ClientV6 => cfg.client_v6 = or_default(v, AutoAddr::Auto, parse_client_v6)?,
        Template => {
            cfg.template = or_default(v, d.template, |v| {
                check_template(v)?;
                Ok(v.to_owned())
            })?
        }
        ProxyClient => cfg.proxy_client = parse_bool(v, d.proxy_client)?,
        BrokerList => cfg.broker_list = or_default(v, d.broker_list, parse_filename)?,
        LastServer => cfg.last_server = or_default(v, d.last_server, parse_filename)?,
        AlwaysUseSameServer => cfg.always_use_same_server = parse_bool(v, d.always_use_same_server)?,
        LogConsole => cfg.log.console = or_default(v, d.log.console, parse_log_level)?,
        LogStderr => cfg.log.stderr = or_default(v, d.log.stderr, parse_log_level)?,
        LogFile => cfg.log.file = or_default(v, d.log.file, parse_log_level)?,
        LogSyslog => cfg.log.syslog = or_default(v, d.log.syslog, parse_log_level)?,
        LogFilename => cfg.log_filename = or_default(v, d.log_filename, parse_filename)?,
        LogRotation => cfg.log_rotation = parse_bool(v, d.log_rotation)?,
        LogRotationSize => cfg.log_rotation_size = or_default(v, d.log_rotation_size, parse_rotation_size)?,
        LogRotationDelete => cfg.log_rotation_delete = parse_bool(v, d.log_rotation_delete)?,
        SyslogFacility => {
            cfg.syslog_facility = or_default(v, d.syslog_facility, parse_facility)?;
        }
        HaccessProxyEnabled => cfg.haccess_proxy_enabled = parse_bool(v, d.haccess_proxy_enabled)?,
        HaccessWebEnabled => cfg.haccess_web_enabled = parse_bool(v, d.haccess_web_enabled)?,
        HaccessDocumentRoot => {
            check_dir(v)?;
            cfg.haccess_document_root = v.to_owned();
        }
        DsliteServer => cfg.dslite_server = or_default(v, d.dslite_server, parse_v4)?,
        DsliteClient => cfg.dslite_client = or_default(v, d.dslite_client, parse_v4)?,
    }
    Ok(())
}

/// Sets the setting named by the gogoc.conf key `gogoc_key` from `value`, with the rules of
/// the file (an empty value means the default); errors name `at` and `shown_key`. Used for
/// NetworkManager's vpn.data, whose keys map onto gogoc.conf's.
pub(crate) fn set_value(
    cfg: &mut GogocConfig,
    gogoc_key: &str,
    value: &str,
    at: Location,
    shown_key: &str,
) -> Result<(), ConfigError> {
    match lookup(gogoc_key) {
        Some((_, KeyKind::Current(field, _) | KeyKind::Legacy(field))) => {
            apply(cfg, field, value).map_err(|p| p.into_error(at, shown_key))
        }
        _ => Err(ConfigError::UnknownKey {
            at,
            key: shown_name(shown_key),
            hint: String::new(),
        }),
    }
}

fn or_default<T>(v: &str, default: T, parse: impl FnOnce(&str) -> Result<T, Problem>) -> Result<T, Problem> {
    if v.is_empty() { Ok(default) } else { parse(v) }
}

/// A value as shown in a message: escaped, and cut short so a hostile file cannot flood the
/// log. Never used for `passwd`.
fn shown(v: &str) -> String {
    const MAX: usize = 64;
    let mut out: String = v.chars().take(MAX).flat_map(char::escape_debug).collect();
    if v.chars().nth(MAX).is_some() {
        out.push('…');
    }
    format!("\"{out}\"")
}

fn shown_name(name: &str) -> String {
    let quoted = shown(name);
    quoted[1..quoted.len() - 1].to_owned()
}

fn parse_bool(v: &str, default: bool) -> Result<bool, Problem> {
    if v.is_empty() {
        Ok(default)
    } else if v.eq_ignore_ascii_case("yes") {
        Ok(true)
    } else if v.eq_ignore_ascii_case("no") {
        Ok(false)
    } else {
        Err(Problem::Invalid(format!("{} is not yes or no", shown(v))))
    }
}

fn parse_keyword<T: std::str::FromStr<Err = UnknownKeyword>>(v: &str) -> Result<T, Problem> {
    v.parse().map_err(|e: UnknownKeyword| {
        Problem::Invalid(format!(
            "{} is not a valid {} (expected one of: {})",
            shown(v),
            e.what,
            e.expected
        ))
    })
}

/// A decimal number in `min..=max` (digits only: no sign, no spaces).
fn parse_num(v: &str, min: u32, max: u32) -> Result<u32, Problem> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Problem::Invalid(format!("{} is not a whole number", shown(v))));
    }
    let range = || Problem::Range {
        value: shown_name(v),
        min: min.into(),
        max: max.into(),
    };
    let n: u64 = v.parse().map_err(|_| range())?;
    match u32::try_from(n) {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(range()),
    }
}

fn parse_log_level(v: &str) -> Result<u8, Problem> {
    parse_num(v, 0, MAX_LOG_LEVEL.into()).map(|n| u8::try_from(n).unwrap_or(MAX_LOG_LEVEL))
}

fn parse_rotation_size(v: &str) -> Result<LogRotationSize, Problem> {
    let bad = || Problem::Invalid(format!("{} is not one of 16, 32, 128, 1024 (KiB)", shown(v)));
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    v.parse::<u64>()
        .ok()
        .and_then(LogRotationSize::from_kib)
        .ok_or_else(bad)
}

fn parse_facility(v: &str) -> Result<SyslogFacility, Problem> {
    SyslogFacility::ALL
        .into_iter()
        .find(|f| f.as_str().eq_ignore_ascii_case(v))
        .ok_or_else(|| Problem::Invalid(format!("{} is not USER or LOCAL0..LOCAL7", shown(v))))
}

fn parse_v4(v: &str) -> Result<Ipv4Addr, Problem> {
    v.parse()
        .map_err(|_| Problem::Invalid(format!("{} is not an IPv4 address", shown(v))))
}

fn parse_client_v4(v: &str) -> Result<AutoAddr<Ipv4Addr>, Problem> {
    if v.eq_ignore_ascii_case("auto") {
        return Ok(AutoAddr::Auto);
    }
    v.parse()
        .map(AutoAddr::Fixed)
        .map_err(|_| Problem::Invalid(format!("{} is neither auto nor an IPv4 address", shown(v))))
}

fn parse_client_v6(v: &str) -> Result<AutoAddr<Ipv6Addr>, Problem> {
    if v.eq_ignore_ascii_case("auto") {
        return Ok(AutoAddr::Auto);
    }
    let bare = v.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(v);
    bare.parse()
        .map(AutoAddr::Fixed)
        .map_err(|_| Problem::Invalid(format!("{} is neither auto nor an IPv6 address", shown(v))))
}

fn parse_filename(v: &str) -> Result<String, Problem> {
    if v.len() > MAX_FILENAME_LEN {
        return Err(Problem::TooLong {
            len: v.len(),
            max: MAX_FILENAME_LEN,
        });
    }
    // gogoc's set for file names; anything else it refuses.
    if !v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./\\".contains(&b)) {
        return Err(Problem::Invalid(format!(
            "{} may only contain letters, digits, '-', '_', '.', '/' and '\\'",
            shown(v)
        )));
    }
    Ok(v.to_owned())
}

fn parse_dns_servers(v: &str) -> Result<Vec<String>, Problem> {
    if v.len() > MAX_DNS_SERVER_LEN {
        return Err(Problem::TooLong {
            len: v.len(),
            max: MAX_DNS_SERVER_LEN,
        });
    }
    // gogoc splits with strtok, so empty entries ("a::b") are skipped, not errors.
    v.split(':')
        .filter(|name| !name.is_empty())
        .map(|name| {
            if is_dns_name(name) {
                Ok(name.to_owned())
            } else {
                Err(Problem::Invalid(format!(
                    "{} is not a DNS name (names are separated by ':')",
                    shown(name)
                )))
            }
        })
        .collect()
}

fn check_userid(v: &str) -> Result<(), Problem> {
    if v.len() > MAX_USERID_LEN {
        return Err(Problem::TooLong {
            len: v.len(),
            max: MAX_USERID_LEN,
        });
    }
    if !v.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Err(Problem::Invalid(
            "may only contain printable ASCII characters".to_owned(),
        ));
    }
    Ok(())
}

/// Like `check_userid`, but the messages never contain (any part of) the value.
fn check_passwd(v: &str) -> Result<(), Problem> {
    if v.len() > MAX_PASSWD_LEN {
        return Err(Problem::TooLong {
            len: v.len(),
            max: MAX_PASSWD_LEN,
        });
    }
    if !v.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Err(Problem::Invalid(
            "the password may only contain printable ASCII characters".to_owned(),
        ));
    }
    Ok(())
}

fn check_dir(v: &str) -> Result<(), Problem> {
    if v.len() > MAX_DIR_LEN {
        return Err(Problem::TooLong {
            len: v.len(),
            max: MAX_DIR_LEN,
        });
    }
    if v.chars().any(char::is_control) {
        return Err(Problem::Invalid("contains a control character".to_owned()));
    }
    Ok(())
}

/// Tunnel interfaces: empty (none), or a Linux interface name made of the characters gogoc
/// allows here (letters, digits, `-`, `.`).
fn check_tunnel_ifname(v: &str) -> Result<(), Problem> {
    check_ifname(v, b"-.", "letters, digits, '-' and '.'")
}

/// The LAN interface: empty (none), or a Linux interface name made of the characters gogoc
/// allows for it (its file-name set minus the path separators).
fn check_lan_ifname(v: &str) -> Result<(), Problem> {
    check_ifname(v, b"-._", "letters, digits, '-', '_' and '.'")
}

fn check_ifname(v: &str, extra: &[u8], allowed: &str) -> Result<(), Problem> {
    if v.is_empty() {
        return Ok(());
    }
    if v.len() > MAX_IFNAME_LEN {
        return Err(Problem::TooLong {
            len: v.len(),
            max: MAX_IFNAME_LEN,
        });
    }
    let chars_ok = v.bytes().all(|b| b.is_ascii_alphanumeric() || extra.contains(&b));
    if !chars_ok || v == "." || v == ".." {
        return Err(Problem::Invalid(format!(
            "{} is not an interface name (1 to {MAX_IFNAME_LEN} {allowed})",
            shown(v)
        )));
    }
    Ok(())
}

fn check_template(v: &str) -> Result<(), Problem> {
    let known = |d: Dialect| d.templates().contains(&v);
    if known(Dialect::Gogoc) || known(Dialect::Gw6c) {
        Ok(())
    } else {
        Err(Problem::Invalid(format!(
            "{} is not a known template (gogoc: {})",
            shown(v),
            Dialect::Gogoc.templates().join(", ")
        )))
    }
}

/// Key-name suggestion for an unknown key: same name in another case, or one close by.
fn suggestion(name: &str) -> String {
    const MAX_EDITS: usize = 2;
    if name.len() > 40 {
        return String::new();
    }
    let lower = name.to_ascii_lowercase();
    KEYS.iter()
        .map(|(k, _)| (edit_distance(&lower, k), *k))
        .filter(|(d, _)| *d <= MAX_EDITS)
        .min()
        .map(|(_, k)| format!(" (did you mean \"{k}\"?)"))
        .unwrap_or_default()
}

/// Levenshtein distance over bytes; the inputs are short (bounded by the caller).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != cb);
            cur.push(subst.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------------------
// Checks on a whole configuration

/// Field-by-field checks of an in-memory configuration: the same rules as reading, plus
/// "can be written": no value may begin or end with a blank, which the reader would drop.
fn check_fields(c: &GogocConfig) -> Result<(), (Field, Problem)> {
    use Field::*;
    let at = |f: Field| move |p: Problem| (f, p);
    let blank_ends = |v: &str| v.starts_with(is_blank) || v.ends_with(is_blank);
    let no_blank_ends = |f: Field, v: &str, what: &str| {
        if blank_ends(v) {
            Err((
                f,
                Problem::Invalid(format!("{what} cannot begin or end with a blank in the file")),
            ))
        } else {
            Ok(())
        }
    };
    check_userid(&c.userid).map_err(at(Userid))?;
    no_blank_ends(Userid, &c.userid, "the user name")?;
    check_passwd(c.passwd.expose()).map_err(at(Passwd))?;
    no_blank_ends(Passwd, c.passwd.expose(), "the password")?;
    if let Some(server) = &c.server {
        split_server(server).map_err(|e| (Server, Problem::Invalid(e.to_string())))?;
    }
    if !(1..=128).contains(&c.prefixlen) {
        let value = c.prefixlen.to_string();
        return Err((
            Prefixlen,
            Problem::Range {
                value,
                min: 1,
                max: 128,
            },
        ));
    }
    check_lan_ifname(&c.if_prefix).map_err(at(IfPrefix))?;
    let dns = c.dns_server.join(":");
    if c.dns_server.iter().any(String::is_empty) || parse_dns_servers(&dns).map_err(at(DnsServer))? != c.dns_server {
        return Err((
            DnsServer,
            Problem::Invalid("contains an empty name or a ':'".to_owned()),
        ));
    }
    check_dir(&c.gogoc_dir).map_err(at(Dir))?;
    no_blank_ends(Dir, &c.gogoc_dir, "the directory")?;
    for (f, n, max) in [
        (RetryDelay, c.retry_delay, MAX_RETRY_DELAY),
        (RetryDelayMax, c.retry_delay_max, MAX_RETRY_DELAY),
        (KeepaliveInterval, c.keepalive_interval, MAX_KEEPALIVE_INTERVAL),
    ] {
        if n > max {
            return Err((
                f,
                Problem::Range {
                    value: n.to_string(),
                    min: 0,
                    max: max.into(),
                },
            ));
        }
    }
    check_tunnel_ifname(&c.if_tunnel_v6v4).map_err(at(IfTunnelV6v4))?;
    check_tunnel_ifname(&c.if_tunnel_v6udpv4).map_err(at(IfTunnelV6udpv4))?;
    check_tunnel_ifname(&c.if_tunnel_v4v6).map_err(at(IfTunnelV4v6))?;
    check_template(&c.template).map_err(at(Template))?;
    for (f, v) in [
        (BrokerList, &c.broker_list),
        (LastServer, &c.last_server),
        (LogFilename, &c.log_filename),
    ] {
        // Empty would be read back as the default.
        if v.is_empty() {
            return Err((f, Problem::Invalid("a file name is required".to_owned())));
        }
        parse_filename(v).map_err(at(f))?;
    }
    for (f, level) in [
        (LogConsole, c.log.console),
        (LogStderr, c.log.stderr),
        (LogFile, c.log.file),
        (LogSyslog, c.log.syslog),
    ] {
        if level > MAX_LOG_LEVEL {
            let value = level.to_string();
            return Err((
                f,
                Problem::Range {
                    value,
                    min: 0,
                    max: MAX_LOG_LEVEL.into(),
                },
            ));
        }
    }
    check_dir(&c.haccess_document_root).map_err(at(HaccessDocumentRoot))?;
    no_blank_ends(HaccessDocumentRoot, &c.haccess_document_root, "the directory")?;
    Ok(())
}

/// Rules that involve several keys (gogoc's configuration validator, in its order). Errors
/// point at the last line that set one of the keys involved.
fn check_cross(c: &GogocConfig, seen: &Seen, file: &str, require_password: bool) -> Result<(), ConfigError> {
    // Keys are named as spelled in the file (e.g. `if_tunnel` of an old tspc.conf).
    let name = |f: Field| seen.get(f).map_or_else(|| f.key(c.dialect), |(_, k)| k);
    let conflict = |fields: &[Field], message: String| ConfigError::Conflict {
        at: Location {
            file: file.to_owned(),
            line: fields.iter().filter_map(|f| seen.get(*f).map(|(line, _)| line)).max(),
        },
        keys: fields.iter().map(|f| name(*f).to_owned()).collect(),
        message,
    };

    if c.dialect == Dialect::Gw6c {
        // Only reachable for configurations built in memory: gw6c.conf cannot say these.
        if c.retry_delay_max != c.retry_delay {
            return Err(conflict(
                &[Field::RetryDelayMax],
                format!(
                    "gw6c.conf has no retry_delay_max (gw6c retries every retry_delay \
                     seconds); it must equal retry_delay ({}) in a gw6c configuration",
                    c.retry_delay
                ),
            ));
        }
        if c.dslite_server != DEFAULT_DSLITE_SERVER || c.dslite_client != DEFAULT_DSLITE_CLIENT {
            return Err(conflict(
                &[Field::DsliteServer, Field::DsliteClient],
                "gw6c.conf has no dslite_server/dslite_client; leave them at their defaults".to_owned(),
            ));
        }
    }
    if !c.dialect.templates().contains(&c.template.as_str()) {
        return Err(conflict(
            &[Field::Template],
            format!(
                "template \"{}\" is not known to {} (this is a {} file; it knows: {})",
                c.template,
                c.dialect,
                c.dialect.file_name(),
                c.dialect.templates().join(", ")
            ),
        ));
    }
    if require_password && c.auth_method.needs_password() && c.passwd.is_empty() {
        let hint = if c.userid == "anonymous" {
            " (old tspc files used userid=anonymous: set auth_method=anonymous instead)"
        } else {
            " (set auth_method=anonymous for anonymous access)"
        };
        return Err(conflict(
            &[Field::Passwd, Field::AuthMethod],
            format!(
                "key \"passwd\" is empty but auth_method={} needs a password{hint}",
                c.auth_method
            ),
        ));
    }
    if c.proxy_client && c.tunnel_mode == TunnelMode::V6UdpV4 {
        return Err(conflict(
            &[Field::ProxyClient, Field::TunnelMode],
            "proxy_client=yes cannot be used with tunnel_mode=v6udpv4".to_owned(),
        ));
    }
    if c.proxy_client && c.keepalive {
        return Err(conflict(
            &[Field::ProxyClient, Field::Keepalive],
            "proxy_client=yes cannot be used with keepalive=yes".to_owned(),
        ));
    }
    if c.keepalive && c.keepalive_interval == 0 {
        return Err(conflict(
            &[Field::KeepaliveInterval, Field::Keepalive],
            "keepalive_interval must be greater than 0 when keepalive=yes".to_owned(),
        ));
    }
    let need: &[Field] = match c.tunnel_mode {
        TunnelMode::V6AnyV4 => &[Field::IfTunnelV6v4, Field::IfTunnelV6udpv4],
        TunnelMode::V6V4 => &[Field::IfTunnelV6v4],
        TunnelMode::V6UdpV4 => &[Field::IfTunnelV6udpv4],
        TunnelMode::V4V6 => &[Field::IfTunnelV4v6],
    };
    let iface = |f: &Field| match f {
        Field::IfTunnelV6v4 => &c.if_tunnel_v6v4,
        Field::IfTunnelV6udpv4 => &c.if_tunnel_v6udpv4,
        _ => &c.if_tunnel_v4v6,
    };
    if need.iter().any(|f| iface(f).is_empty()) {
        let names: Vec<&str> = need.iter().map(|f| name(*f)).collect();
        let mut fields = vec![Field::TunnelMode];
        fields.extend_from_slice(need);
        return Err(conflict(
            &fields,
            format!(
                "tunnel_mode={} needs an interface name in {}",
                c.tunnel_mode,
                names.join(" and ")
            ),
        ));
    }
    if c.host_type == HostType::Router && c.if_prefix.is_empty() {
        return Err(conflict(
            &[Field::IfPrefix, Field::HostType],
            "host_type=router needs if_prefix, the interface to advertise the prefix on".to_owned(),
        ));
    }
    if c.retry_delay > c.retry_delay_max {
        return Err(conflict(
            &[Field::RetryDelay, Field::RetryDelayMax],
            format!(
                "retry_delay ({}) is greater than retry_delay_max ({})",
                c.retry_delay, c.retry_delay_max
            ),
        ));
    }
    if c.haccess_web_enabled && c.haccess_document_root.is_empty() {
        return Err(conflict(
            &[Field::HaccessDocumentRoot, Field::HaccessWebEnabled],
            format!(
                "{}=yes needs {}",
                name(Field::HaccessWebEnabled),
                name(Field::HaccessDocumentRoot)
            ),
        ));
    }
    if (c.haccess_web_enabled || c.haccess_proxy_enabled) && c.tunnel_mode == TunnelMode::V4V6 {
        return Err(conflict(
            &[Field::HaccessProxyEnabled, Field::HaccessWebEnabled, Field::TunnelMode],
            format!(
                "home access ({} / {}) cannot be used with tunnel_mode=v4v6",
                name(Field::HaccessProxyEnabled),
                name(Field::HaccessWebEnabled)
            ),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Writing

/// Writes `cfg` as a complete gogoc.conf (or gw6c.conf, per `cfg.dialect`): every key
/// explicitly, password included. The result reads back equal for every configuration
/// that passes [`GogocConfig::validate`].
pub fn to_text(cfg: &GogocConfig) -> String {
    to_text_with(cfg, true)
}

/// [`to_text`], optionally leaving `passwd` empty (to be filled in by the user or taken
/// from a keyring).
pub fn to_text_with(cfg: &GogocConfig, include_password: bool) -> String {
    let d = cfg.dialect;
    let mut out = String::with_capacity(2048);
    let _ = writeln!(out, "# {} written by NetworkManager-tsp.", d.file_name());
    out.push_str("# One name=value per line; '#' starts a comment line; an empty value means the default.\n\n");
    for field in FIELDS {
        let Some(key) = field.written_key(d) else {
            continue;
        };
        match field {
            Field::Passwd if !include_password => {
                out.push_str("# passwd left out on purpose: fill it in before use.\n");
                let _ = writeln!(out, "{key}=");
            }
            Field::Passwd => {
                let _ = writeln!(out, "{key}={}", cfg.passwd.expose());
            }
            // Written only when set, so a default file stays byte-for-byte gogoc's key set.
            Field::AllowPlain if cfg.allow_plain => {
                out.push_str("# NetworkManager-tsp only (gogoc ignores it): allow PLAIN with auth_method=any.\n");
                let _ = writeln!(out, "{key}={}", value_text(cfg, field));
            }
            Field::AllowPlain => {}
            _ => {
                let _ = writeln!(out, "{key}={}", value_text(cfg, field));
            }
        }
    }
    out
}

/// The keys of `cfg` (spelled as its dialect writes them, in file order) whose values differ
/// from the dialect's defaults; never `passwd`. Import uses it to report what a profile cannot
/// carry.
pub fn non_default_keys(cfg: &GogocConfig) -> Vec<&'static str> {
    let defaults = GogocConfig::default_for(cfg.dialect);
    FIELDS
        .iter()
        .filter(|f| **f != Field::Passwd)
        .filter_map(|f| Some((f.written_key(cfg.dialect)?, *f)))
        .filter(|(_, f)| value_text(cfg, *f) != value_text(&defaults, *f))
        .map(|(key, _)| key)
        .collect()
}

fn yes_no(b: bool) -> String {
    (if b { "yes" } else { "no" }).to_owned()
}

/// The text of one field (never called for `passwd`).
fn value_text(c: &GogocConfig, field: Field) -> String {
    use Field::*;
    match field {
        Userid => c.userid.clone(),
        Passwd => String::new(),
        Server => c.server.clone().unwrap_or_default(),
        AuthMethod => c.auth_method.as_str().to_owned(),
        AllowPlain => yes_no(c.allow_plain),
        HostType => c.host_type.as_str().to_owned(),
        Prefixlen => c.prefixlen.to_string(),
        IfPrefix => c.if_prefix.clone(),
        DnsServer => c.dns_server.join(":"),
        Dir => c.gogoc_dir.clone(),
        AutoRetryConnect => yes_no(c.auto_retry_connect),
        RetryDelay => c.retry_delay.to_string(),
        RetryDelayMax => c.retry_delay_max.to_string(),
        Keepalive => yes_no(c.keepalive),
        KeepaliveInterval => c.keepalive_interval.to_string(),
        TunnelMode => c.tunnel_mode.as_str().to_owned(),
        IfTunnelV6v4 => c.if_tunnel_v6v4.clone(),
        IfTunnelV6udpv4 => c.if_tunnel_v6udpv4.clone(),
        IfTunnelV4v6 => c.if_tunnel_v4v6.clone(),
        ClientV4 => c.client_v4.to_string(),
        ClientV6 => c.client_v6.to_string(),
        Template => c.template.clone(),
        ProxyClient => yes_no(c.proxy_client),
        BrokerList => c.broker_list.clone(),
        LastServer => c.last_server.clone(),
        AlwaysUseSameServer => yes_no(c.always_use_same_server),
        LogConsole => c.log.console.to_string(),
        LogStderr => c.log.stderr.to_string(),
        LogFile => c.log.file.to_string(),
        LogSyslog => c.log.syslog.to_string(),
        LogFilename => c.log_filename.clone(),
        LogRotation => yes_no(c.log_rotation),
        LogRotationSize => c.log_rotation_size.kib().to_string(),
        LogRotationDelete => yes_no(c.log_rotation_delete),
        SyslogFacility => c.syslog_facility.as_str().to_owned(),
        HaccessProxyEnabled => yes_no(c.haccess_proxy_enabled),
        HaccessWebEnabled => yes_no(c.haccess_web_enabled),
        HaccessDocumentRoot => c.haccess_document_root.clone(),
        DsliteServer => c.dslite_server.to_string(),
        DsliteClient => c.dslite_client.to_string(),
    }
}
