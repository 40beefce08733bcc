//! Checks on a whole gogoc.conf / gw6c.conf configuration: each field as the reader checks it,
//! and gogoc's rules that involve several keys (docs/tsp-wire.md §9).

use std::path::Path;

use super::keys::{Field, Seen};
use super::model::{
    DEFAULT_DSLITE_CLIENT, DEFAULT_DSLITE_SERVER, Dialect, GogocConfig, MAX_BUSY_POLL, MAX_KEEPALIVE_INTERVAL,
    MAX_KEEPALIVE_PROBE_AFTER, MAX_KEEPALIVE_PROBE_TIMEOUT, MAX_KEEPALIVE_PROBES, MAX_LOG_LEVEL, MAX_RETRY_DELAY,
};
use super::values::{
    Problem, check_dir, check_lan_ifname, check_passwd, check_template, check_tunnel_ifname, check_userid, is_blank,
    parse_dns_servers, parse_filename,
};
use crate::error::{ConfigError, Location};
use crate::server::split_server;
use tsp_proto::types::{HostType, TunnelMode};

impl GogocConfig {
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
}

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
    for (f, n, min, max) in [
        (RetryDelay, c.retry_delay, 0, MAX_RETRY_DELAY),
        (RetryDelayMax, c.retry_delay_max, 0, MAX_RETRY_DELAY),
        (KeepaliveInterval, c.keepalive_interval, 0, MAX_KEEPALIVE_INTERVAL),
        (
            KeepaliveProbeAfter,
            c.keepalive_probe_after,
            0,
            MAX_KEEPALIVE_PROBE_AFTER,
        ),
        (
            KeepaliveProbeTimeout,
            c.keepalive_probe_timeout,
            1,
            MAX_KEEPALIVE_PROBE_TIMEOUT,
        ),
        (KeepaliveProbes, c.keepalive_probes, 1, MAX_KEEPALIVE_PROBES),
        (BusyPoll, c.busy_poll, 0, MAX_BUSY_POLL),
    ] {
        if n < min || n > max {
            return Err((
                f,
                Problem::Range {
                    value: n.to_string(),
                    min: min.into(),
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
pub(super) fn check_cross(c: &GogocConfig, seen: &Seen, file: &str, require_password: bool) -> Result<(), ConfigError> {
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
    // The kernel's fallback devices (`sit0` once the sit module is loaded, …) exist in every
    // namespace and cannot be ours: a tunnel by that name never comes up. Only the interfaces
    // this tunnel_mode uses are checked, so that gogoc's stock file (`if_tunnel_v4v6=sit0`,
    // tunnel_mode=v6anyv4) still loads.
    for f in need {
        if let Some(module) = kernel_owned_ifname(iface(f)) {
            return Err(conflict(
                &[*f],
                format!(
                    "{}={} is the kernel's own fallback device of the {module} module (it exists in every \
                     network namespace once the module is loaded), so tspc cannot create its tunnel under \
                     that name; choose another, e.g. the default {}",
                    name(*f),
                    iface(f),
                    GogocConfig::default().tunnel_interface(match f {
                        Field::IfTunnelV6v4 => TunnelMode::V6V4,
                        Field::IfTunnelV6udpv4 => TunnelMode::V6UdpV4,
                        _ => TunnelMode::V4V6,
                    })
                ),
            ));
        }
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

/// The fallback devices the kernel creates itself in every namespace when a tunnel module is
/// loaded, by name, with the module: none of them can be a tunnel of ours.
const KERNEL_IFNAMES: &[(&str, &str)] = &[
    ("sit0", "sit"),
    ("tunl0", "ipip"),
    ("ip6tnl0", "ip6_tunnel"),
    ("gre0", "ip_gre"),
    ("gretap0", "ip_gre"),
    ("erspan0", "ip_gre"),
    ("ip6gre0", "ip6_gre"),
    ("ip_vti0", "ip_vti"),
    ("ip6_vti0", "ip6_vti"),
];

/// The kernel module whose fallback device is called `name`, if any.
pub fn kernel_owned_ifname(name: &str) -> Option<&'static str> {
    KERNEL_IFNAMES.iter().find(|(n, _)| *n == name).map(|(_, m)| *m)
}
