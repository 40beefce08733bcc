//! The one list of gogoc.conf / gw6c.conf settings: each field's key names, how it is read and
//! how it is written, plus the old tspc keys (docs/tsp-wire.md §9).

use super::model::{
    AutoAddr, Dialect, GogocConfig, MAX_BUSY_POLL, MAX_KEEPALIVE_INTERVAL, MAX_KEEPALIVE_PROBE_AFTER,
    MAX_KEEPALIVE_PROBE_TIMEOUT, MAX_KEEPALIVE_PROBES, MAX_RETRY_DELAY,
};
use super::values::{
    Problem, check_dir, check_lan_ifname, check_passwd, check_template, check_tunnel_ifname, check_userid, or_default,
    parse_bool, parse_client_v4, parse_client_v6, parse_dns_servers, parse_facility, parse_filename, parse_keyword,
    parse_log_level, parse_num, parse_rotation_size, parse_tunnel_mode, parse_v4, yes_no,
};
use crate::server::split_server;
use tsp_proto::secret::Secret;

/// How gw6c.conf spells a field's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gw6cKey {
    /// As gogoc.conf does.
    Same,
    /// Its own name.
    Named(&'static str),
    /// gw6c.conf has no such key.
    Absent,
}

/// One field: its keys, and its value read from and written as text.
struct Spec {
    field: Field,
    /// The gogoc.conf key.
    key: &'static str,
    gw6c: Gw6cKey,
    /// Sets the field from its text; empty text means the default, taken from the second
    /// argument (gogoc's defaults).
    read: fn(&mut GogocConfig, GogocConfig, &str) -> Result<(), Problem>,
    /// The field's text in the file.
    write: fn(&GogocConfig) -> String,
}

/// Writes the field list once and derives from it the `Field` enum and the `FIELDS` table,
/// so that adding a key is one edit. A row: the field, its gogoc.conf key, optionally
/// `gw6c "name"` or `gw6c none`, then how it is read (from `v`, with defaults `d`) and written.
macro_rules! fields {
    (@gw6c) => { Gw6cKey::Same };
    (@gw6c none) => { Gw6cKey::Absent };
    (@gw6c $name:literal) => { Gw6cKey::Named($name) };
    ($(
        $field:ident $key:literal $(gw6c $gw6c:tt)?,
        read |$c:ident, $d:tt, $v:tt| $read:expr,
        write |$w:tt| $write:expr;
    )*) => {
        /// One setting, whatever its spelling in the file. The order is the order of writing.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(super) enum Field {
            $($field,)*
        }

        /// Every field, in `Field`'s order (the order of writing).
        const FIELDS: &[Spec] = &[$(Spec {
            field: Field::$field,
            key: $key,
            gw6c: fields!(@gw6c $($gw6c)?),
            read: |$c, $d, $v| {
                $read;
                Ok(())
            },
            write: |$w| $write,
        },)*];
    };
}

fields! {
    Userid "userid",
        read |c, _, v| { check_userid(v)?; c.userid = v.to_owned() },
        write |c| c.userid.clone();
    Passwd "passwd",
        read |c, _, v| { check_passwd(v)?; c.passwd = Secret::new(v) },
        // Never the password: `to_text_with` writes it itself.
        write |_| String::new();
    Server "server",
        read |c, _, v| c.server = if v.is_empty() {
            None
        } else {
            split_server(v).map_err(|e| Problem::Invalid(e.to_string()))?;
            Some(v.to_owned())
        },
        write |c| c.server.clone().unwrap_or_default();
    AuthMethod "auth_method",
        read |c, d, v| c.auth_method = or_default(v, d.auth_method, parse_keyword)?,
        write |c| c.auth_method.as_str().to_owned();
    AllowPlain "allow_plain",
        read |c, d, v| c.allow_plain = parse_bool(v, d.allow_plain)?,
        write |c| yes_no(c.allow_plain);
    HostType "host_type",
        read |c, d, v| c.host_type = or_default(v, d.host_type, parse_keyword)?,
        write |c| c.host_type.as_str().to_owned();
    Prefixlen "prefixlen",
        read |c, d, v| c.prefixlen = or_default(v, d.prefixlen, |v| {
            parse_num(v, 1, 128).map(|n| u8::try_from(n).unwrap_or(u8::MAX))
        })?,
        write |c| c.prefixlen.to_string();
    IfPrefix "if_prefix",
        read |c, _, v| { check_lan_ifname(v)?; c.if_prefix = v.to_owned() },
        write |c| c.if_prefix.clone();
    RouterFallbackHost "router_fallback_host",
        read |c, d, v| c.router_fallback_host = parse_bool(v, d.router_fallback_host)?,
        write |c| yes_no(c.router_fallback_host);
    DnsServer "dns_server",
        read |c, _, v| c.dns_server = parse_dns_servers(v)?,
        write |c| c.dns_server.join(":");
    Dir "gogoc_dir" gw6c "gw6_dir",
        read |c, _, v| { check_dir(v)?; c.gogoc_dir = v.to_owned() },
        write |c| c.gogoc_dir.clone();
    AutoRetryConnect "auto_retry_connect",
        read |c, d, v| c.auto_retry_connect = parse_bool(v, d.auto_retry_connect)?,
        write |c| yes_no(c.auto_retry_connect);
    RetryDelay "retry_delay",
        read |c, d, v| c.retry_delay = or_default(v, d.retry_delay, |v| parse_num(v, 0, MAX_RETRY_DELAY))?,
        write |c| c.retry_delay.to_string();
    RetryDelayMax "retry_delay_max" gw6c none,
        read |c, d, v| c.retry_delay_max = or_default(v, d.retry_delay_max, |v| parse_num(v, 0, MAX_RETRY_DELAY))?,
        write |c| c.retry_delay_max.to_string();
    Keepalive "keepalive",
        read |c, d, v| c.keepalive = parse_bool(v, d.keepalive)?,
        write |c| yes_no(c.keepalive);
    KeepaliveInterval "keepalive_interval",
        read |c, d, v| c.keepalive_interval = or_default(v, d.keepalive_interval, |v| {
            parse_num(v, 0, MAX_KEEPALIVE_INTERVAL)
        })?,
        write |c| c.keepalive_interval.to_string();
    KeepaliveProbeAfter "keepalive_probe_after" gw6c none,
        read |c, d, v| c.keepalive_probe_after = or_default(v, d.keepalive_probe_after, |v| {
            parse_num(v, 0, MAX_KEEPALIVE_PROBE_AFTER)
        })?,
        write |c| c.keepalive_probe_after.to_string();
    KeepaliveProbeTimeout "keepalive_probe_timeout" gw6c none,
        read |c, d, v| c.keepalive_probe_timeout = or_default(v, d.keepalive_probe_timeout, |v| {
            parse_num(v, 1, MAX_KEEPALIVE_PROBE_TIMEOUT)
        })?,
        write |c| c.keepalive_probe_timeout.to_string();
    KeepaliveProbes "keepalive_probes" gw6c none,
        read |c, d, v| c.keepalive_probes = or_default(v, d.keepalive_probes, |v| {
            parse_num(v, 1, MAX_KEEPALIVE_PROBES)
        })?,
        write |c| c.keepalive_probes.to_string();
    TunnelMode "tunnel_mode",
        read |c, d, v| c.tunnel_mode = or_default(v, d.tunnel_mode, parse_tunnel_mode)?,
        write |c| c.tunnel_mode.as_str().to_owned();
    IfTunnelV6v4 "if_tunnel_v6v4",
        read |c, _, v| { check_tunnel_ifname(v)?; c.if_tunnel_v6v4 = v.to_owned() },
        write |c| c.if_tunnel_v6v4.clone();
    IfTunnelV6udpv4 "if_tunnel_v6udpv4",
        read |c, _, v| { check_tunnel_ifname(v)?; c.if_tunnel_v6udpv4 = v.to_owned() },
        write |c| c.if_tunnel_v6udpv4.clone();
    IfTunnelV4v6 "if_tunnel_v4v6",
        read |c, _, v| { check_tunnel_ifname(v)?; c.if_tunnel_v4v6 = v.to_owned() },
        write |c| c.if_tunnel_v4v6.clone();
    DatapathKind "datapath_kind" gw6c none,
        read |c, d, v| c.datapath_kind = or_default(v, d.datapath_kind, parse_keyword)?,
        write |c| c.datapath_kind.as_str().to_owned();
    BusyPoll "busy_poll" gw6c none,
        read |c, d, v| c.busy_poll = or_default(v, d.busy_poll, |v| parse_num(v, 0, MAX_BUSY_POLL))?,
        write |c| c.busy_poll.to_string();
    ClientV4 "client_v4",
        read |c, _, v| c.client_v4 = or_default(v, AutoAddr::Auto, parse_client_v4)?,
        write |c| c.client_v4.to_string();
    ClientV6 "client_v6",
        read |c, _, v| c.client_v6 = or_default(v, AutoAddr::Auto, parse_client_v6)?,
        write |c| c.client_v6.to_string();
    Template "template",
        read |c, d, v| c.template = or_default(v, d.template, |v| {
            check_template(v)?;
            Ok(v.to_owned())
        })?,
        write |c| c.template.clone();
    ProxyClient "proxy_client",
        read |c, d, v| c.proxy_client = parse_bool(v, d.proxy_client)?,
        write |c| yes_no(c.proxy_client);
    BrokerList "broker_list",
        read |c, d, v| c.broker_list = or_default(v, d.broker_list, parse_filename)?,
        write |c| c.broker_list.clone();
    LastServer "last_server",
        read |c, d, v| c.last_server = or_default(v, d.last_server, parse_filename)?,
        write |c| c.last_server.clone();
    AlwaysUseSameServer "always_use_same_server",
        read |c, d, v| c.always_use_same_server = parse_bool(v, d.always_use_same_server)?,
        write |c| yes_no(c.always_use_same_server);
    LogConsole "log_console",
        read |c, d, v| c.log.console = or_default(v, d.log.console, parse_log_level)?,
        write |c| c.log.console.to_string();
    LogStderr "log_stderr",
        read |c, d, v| c.log.stderr = or_default(v, d.log.stderr, parse_log_level)?,
        write |c| c.log.stderr.to_string();
    LogFile "log_file",
        read |c, d, v| c.log.file = or_default(v, d.log.file, parse_log_level)?,
        write |c| c.log.file.to_string();
    LogSyslog "log_syslog",
        read |c, d, v| c.log.syslog = or_default(v, d.log.syslog, parse_log_level)?,
        write |c| c.log.syslog.to_string();
    LogFilename "log_filename",
        read |c, d, v| c.log_filename = or_default(v, d.log_filename, parse_filename)?,
        write |c| c.log_filename.clone();
    LogRotation "log_rotation",
        read |c, d, v| c.log_rotation = parse_bool(v, d.log_rotation)?,
        write |c| yes_no(c.log_rotation);
    LogRotationSize "log_rotation_size",
        read |c, d, v| c.log_rotation_size = or_default(v, d.log_rotation_size, parse_rotation_size)?,
        write |c| c.log_rotation_size.kib().to_string();
    LogRotationDelete "log_rotation_delete",
        read |c, d, v| c.log_rotation_delete = parse_bool(v, d.log_rotation_delete)?,
        write |c| yes_no(c.log_rotation_delete);
    SyslogFacility "syslog_facility",
        read |c, d, v| c.syslog_facility = or_default(v, d.syslog_facility, parse_facility)?,
        write |c| c.syslog_facility.as_str().to_owned();
    HaccessProxyEnabled "haccess_proxy_enabled" gw6c "hap6_proxy_enabled",
        read |c, d, v| c.haccess_proxy_enabled = parse_bool(v, d.haccess_proxy_enabled)?,
        write |c| yes_no(c.haccess_proxy_enabled);
    HaccessWebEnabled "haccess_web_enabled" gw6c "hap6_web_enabled",
        read |c, d, v| c.haccess_web_enabled = parse_bool(v, d.haccess_web_enabled)?,
        write |c| yes_no(c.haccess_web_enabled);
    HaccessDocumentRoot "haccess_document_root" gw6c "hap6_document_root",
        read |c, _, v| { check_dir(v)?; c.haccess_document_root = v.to_owned() },
        write |c| c.haccess_document_root.clone();
    DsliteServer "dslite_server" gw6c none,
        read |c, d, v| c.dslite_server = or_default(v, d.dslite_server, parse_v4)?,
        write |c| c.dslite_server.to_string();
    DsliteClient "dslite_client" gw6c none,
        read |c, d, v| c.dslite_client = or_default(v, d.dslite_client, parse_v4)?,
        write |c| c.dslite_client.to_string();
}

const N_FIELDS: usize = FIELDS.len();

/// Which dialect a key name belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mark {
    Both,
    Gogoc,
    Gw6c,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum KeyKind {
    /// A key of gogoc.conf or gw6c.conf.
    Current(Field, Mark),
    /// An old tspc 1.x/2.x key with a direct modern equivalent.
    Legacy(Field),
    /// An old tspc key without one; the text says what to do instead.
    Obsolete(&'static str),
}

/// The keys of tspc 1.x/2.x (tspc.conf) that are no field's own.
const OLD_KEYS: [(&str, KeyKind); 4] = {
    use KeyKind::{Legacy, Obsolete};
    [
        ("tsp_dir", Legacy(Field::Dir)),
        // tspc 1.x only knew v6v4, so its one tunnel interface is the v6v4 one.
        ("if_tunnel", Legacy(Field::IfTunnelV6v4)),
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

/// Every key name we understand, with what it sets.
pub(super) fn keys() -> impl Iterator<Item = (&'static str, KeyKind)> {
    let current = FIELDS.iter().flat_map(|s| {
        let (gogoc, gw6c) = match s.gw6c {
            Gw6cKey::Same => (Mark::Both, None),
            Gw6cKey::Named(k) => (Mark::Gogoc, Some((k, KeyKind::Current(s.field, Mark::Gw6c)))),
            Gw6cKey::Absent => (Mark::Gogoc, None),
        };
        [Some((s.key, KeyKind::Current(s.field, gogoc))), gw6c]
    });
    current.flatten().chain(OLD_KEYS)
}

pub(super) fn lookup(name: &str) -> Option<(&'static str, KeyKind)> {
    keys().find(|(k, _)| *k == name)
}

impl Field {
    /// Every field, in the order of writing.
    pub(super) fn all() -> impl Iterator<Item = Self> {
        FIELDS.iter().map(|s| s.field)
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }

    fn spec(self) -> &'static Spec {
        &FIELDS[self.index()]
    }

    /// Sets this field of `cfg` from its text. Empty text = the field's default.
    pub(super) fn read(self, cfg: &mut GogocConfig, v: &str) -> Result<(), Problem> {
        (self.spec().read)(cfg, GogocConfig::default(), v)
    }

    /// The text of this field (never the password).
    pub(super) fn text(self, cfg: &GogocConfig) -> String {
        (self.spec().write)(cfg)
    }

    /// The key written for this field in `dialect`, or `None` where the dialect has none.
    pub(super) fn written_key(self, dialect: Dialect) -> Option<&'static str> {
        let spec = self.spec();
        match (dialect, spec.gw6c) {
            (Dialect::Gogoc, _) | (Dialect::Gw6c, Gw6cKey::Same) => Some(spec.key),
            (Dialect::Gw6c, Gw6cKey::Named(k)) => Some(k),
            (Dialect::Gw6c, Gw6cKey::Absent) => None,
        }
    }

    /// The key to name in messages (the gogoc name where gw6c has none).
    pub(super) fn key(self, dialect: Dialect) -> &'static str {
        self.written_key(dialect).unwrap_or(self.spec().key)
    }
}

/// Where each field was set in the file: line and the key as spelled there.
pub(super) struct Seen(pub(super) [Option<(usize, &'static str)>; N_FIELDS]);

impl Default for Seen {
    fn default() -> Self {
        Self([None; N_FIELDS])
    }
}

impl Seen {
    pub(super) fn get(&self, f: Field) -> Option<(usize, &'static str)> {
        self.0[f.index()]
    }
}
