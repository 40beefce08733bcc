//! gogoc's template-script compatibility mode (docs/tsp-wire.md §8): after a successful
//! negotiation gogoc runs `/bin/sh <gogoc_dir>/template/<template>.sh` with the tunnel
//! parameters in `TSP_*` environment variables, and again with
//! `TSP_OPERATION=TSP_TUNNEL_TEARDOWN` when the tunnel goes down.
//!
//! The values come from the broker, so each is re-rendered from its parsed type or checked
//! before it reaches a shell script that expands them unquoted: an invalid value is an
//! error, never passed on. The script runs as an argument vector (no command string), with
//! an environment of `PATH` and the `TSP_*` variables only, no stdin, its output captured
//! (bounded) into the log, and a deadline after which its whole process group is killed.
//!
//! Deviations from gogoc, on purpose: addresses are in their canonical (RFC 5952) form
//! rather than as the broker spelled them (the Linux templates accept both);
//! `TSP_CLIENT_DNS_ADDRESS_IPV6` is empty rather than unset-by-NULL when absent (docs/tsp-wire.md §10.17);
//! stderr is captured too (gogoc only redirected stdout to `/tmp/gogoc-tmp.log`).

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::time::Instant;

use tsp_config::{GogocConfig, MAX_DIR_LEN};
use tsp_proto::types::TunnelMode;
use tsp_proto::xml::{Offer, OfferedPrefix, is_valid_hostname};

/// gogoc ran its `.sh` templates with this interpreter.
pub const SHELL: &str = "/bin/sh";
/// The script's `PATH`: the system directories only (it runs as root).
pub const SCRIPT_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// Output kept per stream (the tail); more is read and dropped so the script never blocks.
pub const MAX_KEPT_OUTPUT: usize = 64 * 1024;
/// Output logged per stream; beyond it one note says the rest was dropped.
const MAX_LOGGED_OUTPUT: usize = 64 * 1024;
/// Longest output line logged as one; longer ones are cut (gogoc read 1 KiB lines).
const MAX_LINE: usize = 4096;
/// Stderr carried in [`TemplateError::Failed`] and [`TemplateError::Timeout`].
const MAX_STDERR_TAIL: usize = 2048;
/// After the script exits, how long a background process it left holding the output pipes
/// may delay us (the rest of its output is not waited for).
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// Longest Linux interface name (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;

/// Why the script runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// The tunnel was negotiated; configure it (`TSP_TUNNEL_CREATION`).
    Creation,
    /// The tunnel is going away; undo the configuration (`TSP_TUNNEL_TEARDOWN`).
    Teardown,
}

impl Operation {
    /// The `TSP_OPERATION` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creation => "TSP_TUNNEL_CREATION",
            Self::Teardown => "TSP_TUNNEL_TEARDOWN",
        }
    }
}

/// What the environment is made of.
#[derive(Debug, Clone, Copy)]
pub struct TemplateInputs<'a> {
    /// The broker's offer.
    pub offer: &'a Offer,
    /// The configuration (home directory, host type, `if_prefix`).
    pub cfg: &'a GogocConfig,
    /// The interface the tunnel uses (`if_tunnel_*` for the offered mode, or the TUN device
    /// actually created).
    pub tunnel_interface: &'a str,
}

/// A successful run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptOutcome {
    /// The tail (at most [`MAX_KEPT_OUTPUT`] bytes, whole lines) of the script's stdout,
    /// control characters escaped.
    pub stdout: String,
    /// The same for stderr.
    pub stderr: String,
    /// Some output was dropped from `stdout` or `stderr`.
    pub truncated: bool,
    /// How long the script ran.
    pub elapsed: Duration,
}

/// Everything that can go wrong with the template script.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A value that cannot safely be given to the script.
    #[error("refusing to pass {name} to the template script: {reason}")]
    InvalidValue { name: String, reason: String },
    /// The script is not one we may run as root.
    #[error("refusing to run the template script {}: {reason}", path.display())]
    UnsafeScript { path: PathBuf, reason: String },
    /// The shell could not be started.
    #[error("cannot run {SHELL} for the template script {}: {source}", path.display())]
    Spawn { path: PathBuf, source: io::Error },
    /// Waiting for the script failed.
    #[error("waiting for the template script failed: {0}")]
    Wait(io::Error),
    /// The script exited with a non-zero code (128 + n when killed by signal n, as the
    /// shell reports it).
    #[error("the template script failed with exit code {code}{}", last_line(stderr_tail))]
    Failed { code: i32, stderr_tail: String },
    /// The script ran past its deadline and was killed with its process group.
    #[error("the template script did not finish within {} s and was killed{}", timeout.as_secs_f32(), last_line(stderr_tail))]
    Timeout { timeout: Duration, stderr_tail: String },
}

fn last_line(tail: &str) -> String {
    tail.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| format!(": {l}"))
        .unwrap_or_default()
}

fn invalid(name: &str, reason: impl Into<String>) -> TemplateError {
    TemplateError::InvalidValue {
        name: name.to_owned(),
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------------------
// The environment

/// The `TSP_*` variables gogoc sets for `op`, in gogoc's order: `TSP_OPERATION`,
/// `TSP_VERBOSE`, `TSP_HOME_DIR`, `TSP_TUNNEL_MODE`, `TSP_HOST_TYPE`, `TSP_TUNNEL_INTERFACE`,
/// `TSP_HOME_INTERFACE`, `TSP_CLIENT_ADDRESS_IPV4`, `TSP_CLIENT_ADDRESS_IPV6`,
/// `TSP_CLIENT_DNS_ADDRESS_IPV6` (empty when not offered), `TSP_CLIENT_DNS_NAME` (only when
/// offered), `TSP_SERVER_ADDRESS_IPV4`, `TSP_SERVER_ADDRESS_IPV6`, `TSP_TUNNEL_PREFIXLEN`,
/// and with a prefix `TSP_PREFIX` (cut to the significant groups, §4.3) and `TSP_PREFIXLEN`.
pub fn environment(op: Operation, inputs: TemplateInputs<'_>) -> Result<Vec<(String, String)>, TemplateError> {
    let TemplateInputs {
        offer,
        cfg,
        tunnel_interface,
    } = inputs;
    if !offer.mode.is_concrete() {
        return Err(invalid(
            "TSP_TUNNEL_MODE",
            format!("{} is not a tunnel mode a tunnel can run in", offer.mode),
        ));
    }
    let home = cfg.home_dir();
    if home.is_empty() || home.len() > MAX_DIR_LEN {
        return Err(invalid("TSP_HOME_DIR", format!("must be 1 to {MAX_DIR_LEN} bytes")));
    }
    check_ifname("TSP_TUNNEL_INTERFACE", tunnel_interface)?;
    if !cfg.if_prefix.is_empty() {
        check_ifname("TSP_HOME_INTERFACE", &cfg.if_prefix)?;
    }

    let mut env: Vec<(&'static str, String)> = vec![
        ("TSP_OPERATION", op.as_str().to_owned()),
        // gogoc always passes its maximum level (LOG_LEVEL_MAX).
        ("TSP_VERBOSE", "3".to_owned()),
        ("TSP_HOME_DIR", home.to_owned()),
        ("TSP_TUNNEL_MODE", offer.mode.as_str().to_owned()),
        ("TSP_HOST_TYPE", cfg.host_type.as_str().to_owned()),
        ("TSP_TUNNEL_INTERFACE", tunnel_interface.to_owned()),
        ("TSP_HOME_INTERFACE", cfg.if_prefix.clone()),
        ("TSP_CLIENT_ADDRESS_IPV4", offer.client_v4.to_string()),
        ("TSP_CLIENT_ADDRESS_IPV6", offer.client_v6.to_string()),
        (
            "TSP_CLIENT_DNS_ADDRESS_IPV6",
            offer.client_dns_server.map(|a| a.to_string()).unwrap_or_default(),
        ),
    ];
    if let Some(name) = &offer.client_dns_name {
        if !is_valid_hostname(name) {
            return Err(invalid("TSP_CLIENT_DNS_NAME", "not a DNS host name"));
        }
        env.push(("TSP_CLIENT_DNS_NAME", name.to_ascii_lowercase()));
    }
    env.push(("TSP_SERVER_ADDRESS_IPV4", offer.server_v4.to_string()));
    env.push(("TSP_SERVER_ADDRESS_IPV6", offer.server_v6.to_string()));
    let tunnel_prefixlen = if offer.mode == TunnelMode::V4V6 { "32" } else { "128" };
    env.push(("TSP_TUNNEL_PREFIXLEN", tunnel_prefixlen.to_owned()));
    if let Some(prefix) = &offer.prefix {
        env.push(("TSP_PREFIX", prefix_text(offer.mode, prefix)?));
        env.push(("TSP_PREFIXLEN", prefix.len.to_string()));
    }

    // Defence in depth: whatever was built above, nothing unsafe leaves this function.
    env.into_iter()
        .map(|(name, value)| {
            check_entry(name, &value)?;
            Ok((name.to_owned(), value))
        })
        .collect()
}

/// `TSP_PREFIX` as gogoc derives it from the fully expanded prefix (§4.3): an IPv6 prefix
/// cut to its first ceil(len/16) four-digit groups (/56 → `2001:0db8:4000:1200`); an IPv4
/// prefix (v4v6) whole.
fn prefix_text(mode: TunnelMode, prefix: &OfferedPrefix) -> Result<String, TemplateError> {
    match prefix.addr {
        IpAddr::V6(addr) if mode.is_v6_over_v4() => {
            if !(1..=128).contains(&prefix.len) {
                return Err(invalid("TSP_PREFIXLEN", format!("{} is not 1..128", prefix.len)));
            }
            let groups = usize::from(prefix.len).div_ceil(16);
            let mut text = String::with_capacity(groups * 5);
            for (i, g) in addr.segments().iter().take(groups).enumerate() {
                if i > 0 {
                    text.push(':');
                }
                let _ = write!(text, "{g:04x}");
            }
            Ok(text)
        }
        IpAddr::V4(addr) if mode == TunnelMode::V4V6 => {
            if !(1..=32).contains(&prefix.len) {
                return Err(invalid("TSP_PREFIXLEN", format!("{} is not 1..32", prefix.len)));
            }
            Ok(addr.to_string())
        }
        other => Err(invalid(
            "TSP_PREFIX",
            format!("an {} prefix does not fit a {mode} tunnel", family(other)),
        )),
    }
}

fn family(a: IpAddr) -> &'static str {
    match a {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

/// A Linux interface name as gogoc's configuration allows it: 1..=15 letters, digits, `-`,
/// `_`, `.`, not `.` or `..`.
fn check_ifname(name: &'static str, v: &str) -> Result<(), TemplateError> {
    let ok = !v.is_empty()
        && v.len() <= MAX_IFNAME
        && v != "."
        && v != ".."
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            name,
            format!("{v:?} is not an interface name (1 to {MAX_IFNAME} letters, digits, '-', '_', '.')"),
        ))
    }
}

/// A variable we may pass: a `TSP_` name of upper-case letters, digits and `_`, and a value
/// without control characters (no NUL, no newline: the scripts expand values unquoted and
/// some write them into files).
fn check_entry(name: &str, value: &str) -> Result<(), TemplateError> {
    let name_ok = name.len() > 4
        && name.starts_with("TSP_")
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !name_ok {
        return Err(invalid(
            &name.escape_debug().to_string(),
            "only TSP_ variables are passed to the template script",
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(name, "the value contains a control character"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Running the script

/// Runs `/bin/sh <script>` with `PATH` and `env` (which must hold only `TSP_*` variables) as
/// its whole environment, stdin from /dev/null, stdout and stderr captured and logged line
/// by line. Past `timeout` the script and everything in its process group is killed. A
/// script that is not a regular file, is writable by group or others, is not owned by root
/// or by us, or sits in a directory that is, is refused: it would run as root.
pub async fn run(script: &Path, env: &[(String, String)], timeout: Duration) -> Result<ScriptOutcome, TemplateError> {
    for (name, value) in env {
        check_entry(name, value)?;
    }
    let script = check_script(script)?;

    let mut cmd = tokio::process::Command::new(SHELL);
    cmd.arg(&script)
        .env_clear()
        .env("PATH", SCRIPT_PATH)
        .envs(env.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a timeout kills what it started too.
        .process_group(0)
        .kill_on_drop(true);
    tracing::debug!("running {SHELL} {}", script.display());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|source| TemplateError::Spawn {
        path: script.clone(),
        source,
    })?;
    let mut group = GroupKiller(child.id().and_then(|id| i32::try_from(id).ok()));
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let mut out = Capture::new("stdout");
    let mut err = Capture::new("stderr");
    let mut out_buf = [0u8; 4096];
    let mut err_buf = [0u8; 4096];
    let deadline = start + timeout;
    let mut status: Option<ExitStatus> = None;
    let mut drain_until: Option<Instant> = None;

    while status.is_none() || stdout.is_some() || stderr.is_some() {
        let until = drain_until.unwrap_or(deadline);
        tokio::select! {
            r = read_some(&mut stdout, &mut out_buf), if stdout.is_some() => match r {
                Ok(n) if n > 0 => out.push(&out_buf[..n]),
                _ => stdout = None,
            },
            r = read_some(&mut stderr, &mut err_buf), if stderr.is_some() => match r {
                Ok(n) if n > 0 => err.push(&err_buf[..n]),
                _ => stderr = None,
            },
            s = child.wait(), if status.is_none() => {
                let s = s.map_err(TemplateError::Wait)?;
                // Reaped: the id may be reused from now on, never signal it again. What the
                // script left running in the background (radvd…) is meant to stay.
                group.0 = None;
                status = Some(s);
                drain_until = Some(Instant::now() + DRAIN_GRACE);
            },
            () = tokio::time::sleep_until(until) => {
                if status.is_none() {
                    group.kill();
                    group.0 = None;
                    let _ = child.wait().await;
                    out.finish();
                    err.finish();
                    tracing::warn!("template script killed after {} s", timeout.as_secs_f32());
                    return Err(TemplateError::Timeout { timeout, stderr_tail: err.tail(MAX_STDERR_TAIL) });
                }
                tracing::debug!("template script exited but something it started still holds its output open");
                break;
            },
        }
    }
    out.finish();
    err.finish();
    let elapsed = start.elapsed();
    let Some(status) = status else {
        return Err(TemplateError::Wait(io::Error::other("no exit status")));
    };
    let code = status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(-1);
    if code != 0 {
        return Err(TemplateError::Failed {
            code,
            stderr_tail: err.tail(MAX_STDERR_TAIL),
        });
    }
    tracing::debug!("template script succeeded in {:.1} s", elapsed.as_secs_f32());
    Ok(ScriptOutcome {
        truncated: out.truncated || err.truncated,
        stdout: out.kept,
        stderr: err.kept,
        elapsed,
    })
}

async fn read_some<R: tokio::io::AsyncRead + Unpin>(r: &mut Option<R>, buf: &mut [u8]) -> io::Result<usize> {
    match r {
        Some(r) => r.read(buf).await,
        None => Ok(0),
    }
}

/// Kills the script's process group when dropped armed (the future was cancelled) or asked to.
struct GroupKiller(Option<i32>);

impl GroupKiller {
    fn kill(&self) {
        // > 1: kill(-1) would signal every process we may signal; 0 is our own group.
        if let Some(pgid) = self.0.filter(|p| *p > 1) {
            // The group is the unreaped child's own.
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One output stream: split into lines, each logged (up to [`MAX_LOGGED_OUTPUT`]) and kept
/// (the last [`MAX_KEPT_OUTPUT`] bytes).
struct Capture {
    stream: &'static str,
    partial: Vec<u8>,
    kept: String,
    logged: usize,
    truncated: bool,
}

impl Capture {
    fn new(stream: &'static str) -> Self {
        Self {
            stream,
            partial: Vec::new(),
            kept: String::new(),
            logged: 0,
            truncated: false,
        }
    }

    fn push(&mut self, mut data: &[u8]) {
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&data[..nl]);
            self.line();
            data = &data[nl + 1..];
        }
        self.partial.extend_from_slice(data);
        while self.partial.len() > MAX_LINE {
            // An endless line: log it in pieces rather than grow without bound.
            let rest = self.partial.split_off(MAX_LINE);
            self.line();
            self.partial = rest;
        }
    }

    fn finish(&mut self) {
        if !self.partial.is_empty() {
            self.line();
        }
    }

    fn line(&mut self) {
        let raw = std::mem::take(&mut self.partial);
        let raw = raw.strip_suffix(b"\r").unwrap_or(&raw);
        let line = sanitize(raw);
        if self.logged < MAX_LOGGED_OUTPUT {
            self.logged += line.len() + 1;
            if self.stream == "stderr" {
                tracing::info!("template script (stderr): {line}");
            } else {
                tracing::debug!("template script: {line}");
            }
            if self.logged >= MAX_LOGGED_OUTPUT {
                tracing::info!("template script {}: further output not logged", self.stream);
            }
        }
        self.kept.push_str(&line);
        self.kept.push('\n');
        if self.kept.len() > MAX_KEPT_OUTPUT {
            self.truncated = true;
            let excess = self.kept.len() - MAX_KEPT_OUTPUT;
            // Drop whole lines from the front.
            let cut = self.kept[excess..]
                .find('\n')
                .map_or(self.kept.len(), |i| excess + i + 1);
            self.kept.drain(..cut);
        }
    }

    /// The last whole lines within `max` bytes.
    fn tail(&self, max: usize) -> String {
        if self.kept.len() <= max {
            return self.kept.clone();
        }
        let from = self.kept.len() - max;
        let start = self.kept[from..].find('\n').map_or(self.kept.len(), |i| from + i + 1);
        self.kept[start..].to_owned()
    }
}

/// Script output as log text: lossy UTF-8, control characters (but tab) escaped.
fn sanitize(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// The checks of [`run`] on the script; returns the absolute path to run (so that a relative
/// path can never be taken for an option of the shell).
fn check_script(path: &Path) -> Result<PathBuf, TemplateError> {
    let refuse = |reason: String| TemplateError::UnsafeScript {
        path: path.to_owned(),
        reason,
    };
    let abs = std::path::absolute(path).map_err(|e| refuse(format!("cannot resolve the path: {e}")))?;
    let meta = fs::metadata(&abs).map_err(|e| refuse(format!("cannot be read: {e}")))?;
    if !meta.is_file() {
        return Err(refuse("it is not a regular file".to_owned()));
    }
    let euid = nix::unistd::geteuid().as_raw();
    check_owner_mode(&meta, euid, "it").map_err(&refuse)?;
    // Whoever may replace the file may choose what runs as root: check its directory too.
    let real = fs::canonicalize(&abs).map_err(|e| refuse(format!("cannot resolve the path: {e}")))?;
    if let Some(dir) = real.parent() {
        let dmeta = fs::metadata(dir).map_err(|e| refuse(format!("cannot read its directory: {e}")))?;
        check_owner_mode(&dmeta, euid, &format!("its directory {}", dir.display())).map_err(&refuse)?;
    }
    Ok(abs)
}

fn check_owner_mode(meta: &fs::Metadata, euid: u32, what: &str) -> Result<(), String> {
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{what} is writable by group or others (mode {:04o}); chmod go-w",
            meta.mode() & 0o7777
        ));
    }
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(format!(
            "{what} is owned by uid {}, neither root nor the user running tspc (uid {euid})",
            meta.uid()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    use std::sync::atomic::{AtomicU32, Ordering};
    use tsp_config::Dialect;
    use tsp_proto::types::HostType;
    use tsp_proto::xml::Keepalive;

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().expect("v4")
    }

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().expect("v6")
    }

    /// The §4.3 host offer.
    fn offer_host() -> Offer {
        Offer {
            mode: TunnelMode::V6UdpV4,
            lifetime: Some(604800),
            server_v4: v4("192.0.2.6"),
            server_v6: v6("2001:0db8:4000:0000:0000:0000:0000:0004"),
            client_v4: v4("198.51.100.20"),
            client_v6: v6("2001:0db8:4000:0000:0000:0000:0000:0005"),
            client_dns_name: None,
            client_dns_server: None,
            prefix: None,
            keepalive: Some(Keepalive {
                interval: 30,
                address: IpAddr::V6(v6("2001:db8:4000::4")),
            }),
        }
    }

    /// The §4.3 router offer.
    fn offer_router() -> Offer {
        Offer {
            mode: TunnelMode::V6V4,
            client_v4: v4("192.0.2.1"),
            client_dns_name: Some("johnsmith.broker.example.net".into()),
            client_dns_server: Some(v6("2001:0db8:4000:0000:0000:0000:0000:0053")),
            prefix: Some(OfferedPrefix {
                addr: IpAddr::V6(v6("2001:0db8:4000:1200:0000:0000:0000:0000")),
                len: 56,
            }),
            ..offer_host()
        }
    }

    fn router_cfg() -> GogocConfig {
        GogocConfig {
            host_type: HostType::Router,
            if_prefix: "eth1".into(),
            gogoc_dir: "/etc/gogoc".into(),
            ..GogocConfig::default()
        }
    }

    fn env_of(op: Operation, offer: &Offer, cfg: &GogocConfig, ifname: &str) -> Vec<(String, String)> {
        environment(
            op,
            TemplateInputs {
                offer,
                cfg,
                tunnel_interface: ifname,
            },
        )
        .expect("environment")
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
    }

    #[test]
    fn host_offer_environment() {
        let cfg = GogocConfig::default();
        let env = env_of(Operation::Creation, &offer_host(), &cfg, "tun");
        assert_eq!(
            env,
            pairs(&[
                ("TSP_OPERATION", "TSP_TUNNEL_CREATION"),
                ("TSP_VERBOSE", "3"),
                ("TSP_HOME_DIR", "/usr/local/etc/gogoc"),
                ("TSP_TUNNEL_MODE", "v6udpv4"),
                ("TSP_HOST_TYPE", "host"),
                ("TSP_TUNNEL_INTERFACE", "tun"),
                ("TSP_HOME_INTERFACE", ""),
                ("TSP_CLIENT_ADDRESS_IPV4", "198.51.100.20"),
                ("TSP_CLIENT_ADDRESS_IPV6", "2001:db8:4000::5"),
                ("TSP_CLIENT_DNS_ADDRESS_IPV6", ""),
                ("TSP_SERVER_ADDRESS_IPV4", "192.0.2.6"),
                ("TSP_SERVER_ADDRESS_IPV6", "2001:db8:4000::4"),
                ("TSP_TUNNEL_PREFIXLEN", "128"),
            ])
        );
        let gw6c = GogocConfig::default_for(Dialect::Gw6c);
        let env = env_of(Operation::Creation, &offer_host(), &gw6c, "tun");
        assert_eq!(env[2], pairs(&[("TSP_HOME_DIR", "/usr/local/etc/gw6c")])[0]);
    }

    #[test]
    fn router_offer_environment() {
        let env = env_of(Operation::Creation, &offer_router(), &router_cfg(), "sit1");
        assert_eq!(
            env,
            pairs(&[
                ("TSP_OPERATION", "TSP_TUNNEL_CREATION"),
                ("TSP_VERBOSE", "3"),
                ("TSP_HOME_DIR", "/etc/gogoc"),
                ("TSP_TUNNEL_MODE", "v6v4"),
                ("TSP_HOST_TYPE", "router"),
                ("TSP_TUNNEL_INTERFACE", "sit1"),
                ("TSP_HOME_INTERFACE", "eth1"),
                ("TSP_CLIENT_ADDRESS_IPV4", "192.0.2.1"),
                ("TSP_CLIENT_ADDRESS_IPV6", "2001:db8:4000::5"),
                ("TSP_CLIENT_DNS_ADDRESS_IPV6", "2001:db8:4000::53"),
                ("TSP_CLIENT_DNS_NAME", "johnsmith.broker.example.net"),
                ("TSP_SERVER_ADDRESS_IPV4", "192.0.2.6"),
                ("TSP_SERVER_ADDRESS_IPV6", "2001:db8:4000::4"),
                ("TSP_TUNNEL_PREFIXLEN", "128"),
                ("TSP_PREFIX", "2001:0db8:4000:1200"),
                ("TSP_PREFIXLEN", "56"),
            ])
        );
    }

    #[test]
    fn teardown_differs_only_in_operation() {
        let cfg = router_cfg();
        let up = env_of(Operation::Creation, &offer_router(), &cfg, "sit1");
        let down = env_of(Operation::Teardown, &offer_router(), &cfg, "sit1");
        assert_eq!(down[0], pairs(&[("TSP_OPERATION", "TSP_TUNNEL_TEARDOWN")])[0]);
        assert_eq!(up[1..], down[1..]);
    }

    #[test]
    fn prefix_truncation() {
        let prefix = |addr: &str, len: u8| {
            let offer = Offer {
                prefix: Some(OfferedPrefix {
                    addr: IpAddr::V6(v6(addr)),
                    len,
                }),
                ..offer_router()
            };
            let env = env_of(Operation::Creation, &offer, &router_cfg(), "sit1");
            let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            (get("TSP_PREFIX").expect("prefix"), get("TSP_PREFIXLEN").expect("len"))
        };
        assert_eq!(prefix("2001:db8:4000::", 48), ("2001:0db8:4000".into(), "48".into()));
        assert_eq!(
            prefix("2001:db8:4000:1200::", 56),
            ("2001:0db8:4000:1200".into(), "56".into())
        );
        assert_eq!(
            prefix("2001:db8:4000:20::", 60),
            ("2001:0db8:4000:0020".into(), "60".into())
        );
        assert_eq!(
            prefix("2001:db8:4000:1200::", 64),
            ("2001:0db8:4000:1200".into(), "64".into())
        );
        assert_eq!(prefix("2001:db8::", 32), ("2001:0db8".into(), "32".into()));
        assert_eq!(prefix("2001:db8::", 1), ("2001".into(), "1".into()));
        assert_eq!(
            prefix("2001:db8:0:0:0:0:0:1", 128),
            ("2001:0db8:0000:0000:0000:0000:0000:0001".into(), "128".into())
        );
    }

    #[test]
    fn v4v6_environment() {
        let offer = Offer {
            mode: TunnelMode::V4V6,
            prefix: Some(OfferedPrefix {
                addr: IpAddr::V4(v4("10.1.2.0")),
                len: 24,
            }),
            ..offer_host()
        };
        let env = env_of(Operation::Creation, &offer, &router_cfg(), "sit0");
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("TSP_TUNNEL_PREFIXLEN"), Some("32"));
        assert_eq!(get("TSP_PREFIX"), Some("10.1.2.0"));
        assert_eq!(get("TSP_PREFIXLEN"), Some("24"));
    }

    #[test]
    fn invalid_values_are_refused() {
        let cfg = router_cfg();
        let try_env = |offer: &Offer, cfg: &GogocConfig, ifname: &str| {
            environment(
                Operation::Creation,
                TemplateInputs {
                    offer,
                    cfg,
                    tunnel_interface: ifname,
                },
            )
        };
        let name_of = |r: Result<Vec<(String, String)>, TemplateError>| match r {
            Err(TemplateError::InvalidValue { name, .. }) => name,
            other => panic!("expected InvalidValue, got {other:?}"),
        };
        let host = offer_host();
        for bad in [
            "",
            "sit1; rm -rf /",
            "a b",
            "sit1\n",
            "averyveryverylongname",
            "..",
            "a/b",
            "é",
        ] {
            assert_eq!(name_of(try_env(&host, &cfg, bad)), "TSP_TUNNEL_INTERFACE", "{bad:?}");
        }
        let mut c = cfg.clone();
        c.if_prefix = "eth1 eth2".into();
        assert_eq!(name_of(try_env(&host, &c, "sit1")), "TSP_HOME_INTERFACE");
        let mut c = cfg.clone();
        c.gogoc_dir = "/etc/gogoc\n/evil".into();
        assert_eq!(name_of(try_env(&host, &c, "sit1")), "TSP_HOME_DIR");
        let mut c = cfg.clone();
        c.gogoc_dir = "/etc/go\0goc".into();
        assert_eq!(name_of(try_env(&host, &c, "sit1")), "TSP_HOME_DIR");

        let dn = Offer {
            client_dns_name: Some("x.example.net\nTSP_X=1".into()),
            ..offer_router()
        };
        assert_eq!(name_of(try_env(&dn, &cfg, "sit1")), "TSP_CLIENT_DNS_NAME");
        let dn = Offer {
            client_dns_name: Some("$(reboot).example.net".into()),
            ..offer_router()
        };
        assert_eq!(name_of(try_env(&dn, &cfg, "sit1")), "TSP_CLIENT_DNS_NAME");

        let any = Offer {
            mode: TunnelMode::V6AnyV4,
            ..offer_host()
        };
        assert_eq!(name_of(try_env(&any, &cfg, "sit1")), "TSP_TUNNEL_MODE");
        let wrong_family = Offer {
            prefix: Some(OfferedPrefix {
                addr: IpAddr::V4(v4("10.0.0.0")),
                len: 8,
            }),
            ..offer_router()
        };
        assert_eq!(name_of(try_env(&wrong_family, &cfg, "sit1")), "TSP_PREFIX");
        for len in [0, 129] {
            let bad_len = Offer {
                prefix: Some(OfferedPrefix {
                    addr: IpAddr::V6(v6("2001:db8::")),
                    len,
                }),
                ..offer_router()
            };
            assert_eq!(name_of(try_env(&bad_len, &cfg, "sit1")), "TSP_PREFIXLEN");
        }
    }

    // --- run --------------------------------------------------------------------------

    fn temp_dir(tag: &str) -> PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "nm-tsp-tmpl-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::DirBuilder::new().mode(0o700).create(&dir).expect("temp dir");
        dir
    }

    fn script(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("linux.sh");
        fs::write(&path, body).expect("write script");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        path
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn script_sees_exactly_its_environment() {
        let dir = temp_dir("env");
        let out = dir.join("env.txt");
        let path = script(
            &dir,
            &format!(
                "env > '{}'\necho \"configured $TSP_TUNNEL_INTERFACE\"\necho warn >&2\nexit 0\n",
                out.display()
            ),
        );
        let mut cfg = router_cfg();
        cfg.gogoc_dir = "/etc/go goc".into();
        let env = env_of(Operation::Creation, &offer_router(), &cfg, "sit1");
        let outcome = rt().block_on(run(&path, &env, Duration::from_secs(20))).expect("run");
        assert_eq!(outcome.stdout, "configured sit1\n");
        assert_eq!(outcome.stderr, "warn\n");
        assert!(!outcome.truncated);

        let text = fs::read_to_string(&out).expect("env output");
        let got: BTreeMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once('=').map(|(a, b)| (a.to_owned(), b.to_owned())))
            .collect();
        let mut want: BTreeMap<String, String> = env.iter().cloned().collect();
        want.insert("PATH".into(), SCRIPT_PATH.into());
        let mut got_trimmed = got.clone();
        // dash exports PWD itself.
        got_trimmed.remove("PWD");
        assert_eq!(got_trimmed, want);
        assert_eq!(got.get("TSP_HOME_DIR").map(String::as_str), Some("/etc/go goc"));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn nonzero_exit_is_failure_with_stderr_tail() {
        let dir = temp_dir("fail");
        let path = script(&dir, "echo progress\necho 'ip: no such device' >&2\nexit 3\n");
        let env = env_of(Operation::Teardown, &offer_host(), &GogocConfig::default(), "tun");
        match rt().block_on(run(&path, &env, Duration::from_secs(20))) {
            Err(TemplateError::Failed { code, stderr_tail }) => {
                assert_eq!(code, 3);
                assert_eq!(stderr_tail, "ip: no such device\n");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        let e = rt()
            .block_on(run(&path, &env, Duration::from_secs(20)))
            .expect_err("fails");
        assert_eq!(
            e.to_string(),
            "the template script failed with exit code 3: ip: no such device"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn timeout_kills_the_process_group() {
        let dir = temp_dir("timeout");
        let marker = dir.join("survived");
        // The background sleeper must die with the script.
        let path = script(
            &dir,
            &format!(
                "(sleep 3; touch '{}') &\necho started >&2\nsleep 30\n",
                marker.display()
            ),
        );
        let started = std::time::Instant::now();
        let r = rt().block_on(run(&path, &[], Duration::from_millis(500)));
        match r {
            Err(TemplateError::Timeout { timeout, stderr_tail }) => {
                assert_eq!(timeout, Duration::from_millis(500));
                assert_eq!(stderr_tail, "started\n");
            }
            other => panic!("expected Timeout, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_secs(4));
        assert!(!marker.exists(), "a process of the script survived the kill");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn background_child_holding_output_does_not_block() {
        let dir = temp_dir("bg");
        let path = script(&dir, "sleep 6 &\necho done\nexit 0\n");
        let started = std::time::Instant::now();
        let outcome = rt().block_on(run(&path, &[], Duration::from_secs(20))).expect("run");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(outcome.stdout, "done\n");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn output_is_bounded() {
        let dir = temp_dir("big");
        // ~200 KiB of output in 100-byte lines, and one endless line.
        let path = script(
            &dir,
            "i=0\nwhile [ $i -lt 2000 ]; do printf '%099d\\n' $i; i=$((i+1)); done\n\
             head -c 20000 /dev/zero | tr '\\0' x\n",
        );
        let outcome = rt().block_on(run(&path, &[], Duration::from_secs(60))).expect("run");
        assert!(outcome.truncated);
        assert!(outcome.stdout.len() <= MAX_KEPT_OUTPUT);
        assert!(
            outcome
                .stdout
                .ends_with(&format!("{}\n", "x".repeat(20000 - 4 * MAX_LINE)))
        );
        assert!(outcome.stdout.lines().all(|l| l.len() <= MAX_LINE));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn unsafe_scripts_are_refused() {
        let dir = temp_dir("unsafe");
        let path = script(&dir, "exit 0\n");
        let refused = |p: &Path| match rt().block_on(run(p, &[], Duration::from_secs(5))) {
            Err(TemplateError::UnsafeScript { reason, .. }) => reason,
            other => panic!("expected UnsafeScript, got {other:?}"),
        };
        fs::set_permissions(&path, fs::Permissions::from_mode(0o646)).expect("chmod");
        assert!(refused(&path).contains("writable by group or others"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o664)).expect("chmod");
        assert!(refused(&path).contains("writable by group or others"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        rt().block_on(run(&path, &[], Duration::from_secs(5)))
            .expect("a safe script runs");

        assert!(refused(&dir).contains("not a regular file"));
        assert!(refused(&dir.join("missing.sh")).contains("cannot be read"));

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).expect("chmod dir");
        assert!(refused(&path).contains("its directory"));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod dir");

        // Owner check (only observable as root: chown to another user).
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&path, Some(65534), None).expect("chown");
            assert!(refused(&path).contains("owned by uid 65534"));
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn run_refuses_foreign_variables() {
        let dir = temp_dir("vars");
        let path = script(&dir, "exit 0\n");
        for (name, value) in [
            ("PATH", "/tmp"),
            ("LD_PRELOAD", "/tmp/x.so"),
            ("TSP_X", "a\nb"),
            ("TSP_X", "a\0b"),
            ("TSP_x", "a"),
            ("TSP_", "a"),
            ("TSP_X=Y", "a"),
        ] {
            let env = vec![(name.to_owned(), value.to_owned())];
            match rt().block_on(run(&path, &env, Duration::from_secs(5))) {
                Err(TemplateError::InvalidValue { .. }) => {}
                other => panic!("{name}={value:?}: expected InvalidValue, got {other:?}"),
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
