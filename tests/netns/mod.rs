//! Network-namespace test harness: real processes in real network namespaces, for tests that
//! need a broker host, client hosts, NAT routers and so on. Include it with `mod netns;`.
//!
//! ```ignore
//! if !netns::require_root() { return; }
//! let lab = netns::Lab::new("my_test")?;
//! let (c, b) = (lab.host("c")?, lab.host("b")?);
//! lab.link(&c, &["192.0.2.2/24", "2001:db8:1::2/64"], &b, &["192.0.2.1/24", "2001:db8:1::1/64"])?;
//! let broker = b.spawn(&netns::bin("tsp-broker"), &["-c", conf])?;
//! broker.wait_for_output("listening", Duration::from_secs(10))?;
//! assert!(c.ping("192.0.2.1", 1, 1));
//! // dropping `lab` kills its processes, deletes its namespaces and its temp dir, even on panic
//! ```
//!
//! * Everything is synchronous (std only) and shells out to `ip`, `nft`, `ping`, `sysctl` and
//!   procps' `kill` with argument vectors, never with a shell command line built from strings.
//!   (Without procps, signals go through `sh -c 'kill -s "$0" "$@"' SIG PID…`: a constant
//!   script, the signal and pids as arguments.) From async code, call it through
//!   `tokio::task::spawn_blocking`.
//! * Errors are `String`s that name the command line and quote its stderr.
//! * Names. A [`Lab`] has a prefix `t` + 5 base-36 characters (a hash of the test name, the pid
//!   and the pid namespace). Its namespaces are `tsplab-<pidns>-<pid>-<prefix>-<host>` and its temp
//!   dir `$TMPDIR/tsplab-<pidns>-<pid>-<prefix>`, so a later run can tell whose they are. Its
//!   interfaces are `<prefix><n><host>`, cut to 15 characters (`n` counts the lab's interfaces, so
//!   the names stay unique).
//! * Spawned processes run with the lab's temp dir as their working directory; their stdout and
//!   stderr go to one log file there. Set `TSPLAB_KEEP=1` to keep the temp dir after the test.
//!   When a test panics, the lab prints the tail of every process log to stderr as it drops.
//!
//! Traps handled here (Linux 6.x, iproute2 6.1, nftables 1.0.6):
//! * IPv6 addresses are added with `nodad` *after* the link is up. Added before `up`, the first
//!   neighbour solicitation is lost and IPv6 only works about 1 s later.
//! * Deleting an IPv4 address also deletes the routes through it (the default route too), so
//!   [`Host::set_addr`] adds the new address first, with `promote_secondaries`, then deletes the old.
//! * After a hard kill, the namespaces (and the processes in them) outlive the test process, and
//!   entries made in a mount namespace that is gone stay as empty files in /run/netns ("Peer netns
//!   reference is invalid"). [`Lab::new`] removes the namespaces (killing what runs in them) and
//!   temp files of owners that are gone (same pid namespace), and any left under its own prefix.
//! * `nft -f` with a one-line ruleset with nested braces fails on nftables 1.0.6, so NAT is set up
//!   with `nft add table/chain/rule`. Some words are nft keywords and cannot name a chain
//!   (`fwd` gives "syntax error, unexpected fwd").
//! * `setsid -f` (or any daemon) returns before its child has exec'd: poll for the process, and
//!   never give a daemon the test's stdout (an orphan holding the pipe blocks whoever reads it).
//!   Commands run here write to files, not pipes, for that reason.
#![allow(dead_code)]

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

pub mod stream;

/// Where `ip netns` keeps its namespace entries.
pub const NETNS_DIR: &str = "/run/netns";
/// First part of every namespace name this harness creates.
pub const NS_MARK: &str = "tsplab";
/// Time limit of [`Host::run`].
pub const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// Time limit of the harness's own `ip`/`nft`/`sysctl` commands.
const CMD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a process gets between SIGTERM and SIGKILL when the lab drops.
const TERM_GRACE: Duration = Duration::from_millis(1500);
/// Longest interface name Linux accepts (IFNAMSIZ - 1).
const IFNAMSIZ: usize = 15;

/// True when the test can build namespaces: running as root and `ip` is installed. Otherwise
/// prints `skipped: <test> needs root` (the test name is the thread name libtest gives) and
/// returns false, so a test can start with `if !netns::require_root() { return; }`.
/// Client `c` (192.0.2.2, 2001:db8:1::2) and broker `b` (192.0.2.1, 2001:db8:1::1) on one link;
/// the client's interface name last.
pub fn client_broker(test: &str) -> (Lab, Host, Host, String) {
    let lab = Lab::new(test).unwrap();
    let (c, b) = (lab.host("c").unwrap(), lab.host("b").unwrap());
    let (c_if, _) = lab
        .link(
            &c,
            &["192.0.2.2/24", "2001:db8:1::2/64"],
            &b,
            &["192.0.2.1/24", "2001:db8:1::1/64"],
        )
        .unwrap();
    (lab, c, b, c_if)
}

/// A client `n` (198.51.100.2) behind a masquerading router `r`, and a broker `b` (203.0.113.1)
/// beyond it; the router's outer interface name last.
pub fn behind_nat(test: &str) -> (Lab, Host, Host, Host, String) {
    let lab = Lab::new(test).unwrap();
    let [n, b, r] = ["n", "b", "r"].map(|h| lab.host(h).unwrap());
    lab.link(&n, &["198.51.100.2/24"], &r, &["198.51.100.1/24"]).unwrap();
    let (r_out, _) = lab.link(&r, &["203.0.113.2/24"], &b, &["203.0.113.1/24"]).unwrap();
    n.route_add("default", "198.51.100.1").unwrap();
    r.masquerade(&r_out).unwrap();
    (lab, n, b, r, r_out)
}

pub fn require_root() -> bool {
    let test = std::thread::current().name().unwrap_or("this test").to_string();
    if euid() != Some(0) {
        println!("skipped: {test} needs root");
        return false;
    }
    let ip = Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !ip.is_ok_and(|s| s.success()) {
        println!("skipped: {test} needs root and iproute2 (`ip` is missing)");
        return false;
    }
    true
}

/// The path of one of this package's binaries (`bin("tspc")`, `bin("tsp-broker")`).
///
/// Derived from the running test executable, `<target>/<profile>/deps/<test>-<hash>`: the
/// binary is `<target>/<profile>/<name>`. Cargo builds the package's binaries into that directory
/// before it runs integration tests, so this follows `CARGO_TARGET_DIR`, `--release` and
/// `--target`. The path is not checked here; [`Host::spawn`] and [`Host::run`] report a missing file.
pub fn bin(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(|dir| dir.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Inode number of this process's pid namespace (0 if unknown); part of every namespace name.
pub fn pid_ns() -> u64 {
    static PID_NS: OnceLock<u64> = OnceLock::new();
    *PID_NS.get_or_init(|| {
        fs::read_link("/proc/self/ns/pid")
            .ok()
            .and_then(|l| l.to_str()?.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok())
            .unwrap_or(0)
    })
}

/// Signals [`Proc::signal`] can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Hup,
    Int,
    Term,
    Kill,
    Usr1,
    Usr2,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Hup => "HUP",
            Signal::Int => "INT",
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
            Signal::Usr1 => "USR1",
            Signal::Usr2 => "USR2",
        }
    }
}

/// What a finished command left: its exit status and output (decoded lossily).
#[derive(Debug, Clone)]
pub struct Output {
    pub command: String,
    pub status: ExitStatus,
    /// Killed at the time limit (only [`Host::run_timeout`] turns this into an error).
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.success()
    }

    /// `Ok(self)` when the command succeeded, else an error with its command line, status and stderr.
    pub fn check(self) -> Result<Output, String> {
        match (self.timed_out, self.status.success()) {
            (false, true) => Ok(self),
            (true, _) => Err(format!("`{}` timed out: {}", self.command, tail(&self.stderr, 20))),
            (false, false) => Err(format!(
                "`{}` failed ({}): {}",
                self.command,
                self.status,
                self.stderr.trim()
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Lab

/// A set of namespaces and the processes and files in them. Dropping it (also while unwinding
/// from a panic) kills its processes (SIGTERM, then SIGKILL after 1.5 s, then SIGKILL for
/// anything `ip netns pids` still lists), deletes its namespaces and removes its temp dir.
pub struct Lab {
    shared: Arc<Shared>,
}

struct Shared {
    prefix: String,
    pid_ns: u64,
    dir: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    namespaces: Vec<String>,
    hosts: Vec<String>,
    procs: Vec<Arc<ProcInner>>,
    next_if: usize,
    next_log: usize,
}

/// Prefixes of the labs alive in this process.
static LIVE: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fn live() -> MutexGuard<'static, Option<HashSet<String>>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

impl Lab {
    /// A new lab for the test `test_name`. First removes stale namespaces: those left under this
    /// lab's prefix and those whose owner process is gone (see the module notes).
    pub fn new(test_name: &str) -> Result<Lab, String> {
        let pid = std::process::id();
        let pid_ns = pid_ns();
        let prefix = {
            let mut live = live();
            let set = live.get_or_insert_with(HashSet::new);
            let prefix = (0u32..)
                .map(|salt| lab_prefix(test_name, pid_ns, pid, salt))
                .find(|p| !set.contains(p))
                .expect("a free prefix");
            set.insert(prefix.clone());
            prefix
        };
        let dir = std::env::temp_dir().join(format!("{NS_MARK}-{pid_ns}-{pid}-{prefix}"));
        let lab = Lab {
            shared: Arc::new(Shared {
                prefix,
                pid_ns,
                dir,
                state: Mutex::new(State::default()),
            }),
        };
        sweep_stale(&lab.shared.prefix);
        let dir = &lab.shared.dir;
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(lab)
    }

    /// This lab's name prefix (`t` + 5 characters), also the start of its interface names.
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// This lab's temp dir: process logs, and the working directory of spawned processes.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Writes `contents` to `name` in the lab's temp dir and returns its path.
    pub fn file(&self, name: &str, contents: &str) -> Result<PathBuf, String> {
        let path = self.shared.dir.join(name);
        fs::write(&path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }

    /// The namespaces created so far.
    pub fn namespaces(&self) -> Vec<String> {
        self.shared.lock().namespaces.clone()
    }

    /// A new host: a namespace with `lo` up. `name`: a lowercase letter, then lowercase letters
    /// or digits (at most 16).
    pub fn host(&self, name: &str) -> Result<Host, String> {
        let valid = name.len() <= 16
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !valid {
            return Err(format!(
                "bad host name {name:?}: use a lowercase letter, then letters or digits (≤ 16)"
            ));
        }
        let s = &self.shared;
        let ns = format!("{NS_MARK}-{}-{}-{}-{name}", s.pid_ns, std::process::id(), s.prefix);
        {
            let mut st = s.lock();
            if st.hosts.iter().any(|h| h == name) {
                return Err(format!("host {name:?} already exists in this lab"));
            }
            st.hosts.push(name.to_string());
        }
        cmd_ok("ip", ["netns", "add", &ns])?;
        s.lock().namespaces.push(ns.clone());
        let host = Host {
            name: name.to_string(),
            ns,
            lab: Arc::clone(s),
        };
        host.ip(&["link", "set", "lo", "up"])?;
        Ok(host)
    }

    /// A veth pair between `a` and `b` (or two ends in one host), both ends up, with the given
    /// CIDR addresses (IPv4 and/or IPv6; IPv6 ones with `nodad`, usable at once). Returns the
    /// interface names: (`a`'s end, `b`'s end).
    pub fn link(&self, a: &Host, a_addrs: &[&str], b: &Host, b_addrs: &[&str]) -> Result<(String, String), String> {
        let if_a = self.shared.ifname(&a.name);
        let if_b = self.shared.ifname(&b.name);
        cmd_ok(
            "ip",
            [
                "link", "add", &if_a, "netns", &a.ns, "type", "veth", "peer", "name", &if_b, "netns", &b.ns,
            ],
        )?;
        // Up first, addresses after: IPv6 added before `up` works only about 1 s later.
        a.ip(&["link", "set", &if_a, "up"])?;
        b.ip(&["link", "set", &if_b, "up"])?;
        for addr in a_addrs {
            a.add_addr(&if_a, addr)?;
        }
        for addr in b_addrs {
            b.add_addr(&if_b, addr)?;
        }
        Ok((if_a, if_b))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.shared.cleanup();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ifname(&self, host: &str) -> String {
        let n = {
            let mut st = self.lock();
            st.next_if += 1;
            st.next_if - 1
        };
        let mut name = format!("{}{n}{host}", self.prefix);
        name.truncate(IFNAMSIZ);
        name
    }

    fn cleanup(&self) {
        let (procs, namespaces) = {
            let mut st = self.lock();
            (std::mem::take(&mut st.procs), std::mem::take(&mut st.namespaces))
        };
        // 1. Our own processes: SIGTERM, a grace period, then SIGKILL.
        for p in &procs {
            let _ = p.signal(Signal::Term);
        }
        let deadline = Instant::now() + TERM_GRACE;
        while procs.iter().any(|p| p.status().is_none()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for p in &procs {
            p.kill();
        }
        if std::thread::panicking() {
            for p in &procs {
                eprintln!(
                    "--- netns: `{}` in {} ({}), log tail:\n{}",
                    p.line,
                    p.host,
                    p.status_text(),
                    tail(&p.output(), 40)
                );
            }
        }
        // 2. Anything else still in the namespaces (daemons, orphans), then the namespaces.
        for ns in &namespaces {
            if let Err(e) = remove_netns(ns) {
                eprintln!("netns: {e}");
            }
        }
        // 3. The temp dir.
        if std::env::var_os("TSPLAB_KEEP").is_some() {
            eprintln!("netns: kept {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
        if let Some(set) = live().as_mut() {
            set.remove(&self.prefix);
        }
    }
}

fn lab_prefix(test_name: &str, pid_ns: u64, pid: u32, salt: u32) -> String {
    let mut h = DefaultHasher::new();
    (test_name, pid_ns, pid, salt).hash(&mut h);
    let mut v = h.finish();
    let mut s = String::from("t");
    for _ in 0..5 {
        s.push(char::from_digit((v % 36) as u32, 36).expect("digit"));
        v /= 36;
    }
    s
}

/// (pid namespace, pid, rest) of a name this harness made: namespaces
/// `tsplab-<pidns>-<pid>-<prefix>-<host>`, temp dirs `tsplab-<pidns>-<pid>-<prefix>` and
/// command output files `tsplab-io-<pidns>-<pid>-<n>.out`.
fn parse_owned(name: &str) -> Option<(u64, u32, &str)> {
    let s = name.strip_prefix(NS_MARK)?.strip_prefix('-')?;
    let mut parts = s.strip_prefix("io-").unwrap_or(s).splitn(3, '-');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?))
}

/// Whether `(pid_ns, pid)` names a process of this pid namespace that is gone. Owners in other
/// pid namespaces cannot be checked from here, so they count as alive.
fn owner_gone(pid_ns_: u64, pid: u32) -> bool {
    pid_ns_ == pid_ns() && pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes what earlier labs left: namespaces of this process under `own_prefix` (no live lab
/// has it: the caller holds it), and namespaces (killing the processes in them), temp dirs and
/// output files whose owner process is gone. Returns the namespaces removed.
fn sweep_stale(own_prefix: &str) -> Vec<String> {
    let me = std::process::id();
    let mut removed = Vec::new();
    for name in list_netns() {
        let Some((ns, pid, rest)) = parse_owned(&name) else {
            continue;
        };
        let ours = ns == pid_ns() && pid == me && rest.starts_with(&format!("{own_prefix}-"));
        if ours || owner_gone(ns, pid) {
            match remove_netns(&name) {
                Ok(()) => eprintln!("netns: removed stale namespace {name}"),
                Err(e) => eprintln!("netns: stale namespace: {e}"),
            }
            removed.push(name);
        }
    }
    for entry in fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some((ns, pid, _)) = name.to_str().and_then(parse_owned) else {
            continue;
        };
        if owner_gone(ns, pid) {
            let path = entry.path();
            let _ = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
        }
    }
    removed
}

fn list_netns() -> Vec<String> {
    let Ok(dir) = fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect()
}

/// Process ids inside namespace `ns` (`ip netns pids`; zombies are not listed).
fn netns_pids(ns: &str) -> Vec<u32> {
    match run_cmd(cmd("ip", ["netns", "pids", ns]), CMD_TIMEOUT) {
        Ok(o) => o.stdout.split_whitespace().filter_map(|p| p.parse().ok()).collect(),
        _ => Vec::new(),
    }
}

/// SIGKILLs every process in `ns`, waits (≤ 2 s) until none is left, deletes the namespace.
fn remove_netns(ns: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let pids = netns_pids(ns);
        if pids.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("netns: processes {pids:?} in {ns} survive SIGKILL");
            break;
        }
        let _ = send_signal(Signal::Kill, &pids);
        std::thread::sleep(Duration::from_millis(10));
    }
    match cmd_ok("ip", ["netns", "del", ns]) {
        Err(_) if !Path::new(NETNS_DIR).join(ns).exists() => Ok(()), // someone else removed it
        r => r.map(drop),
    }
}

// ---------------------------------------------------------------------------------------------
// Host

/// One network namespace of a [`Lab`]. Cheap to clone; usable from other threads.
#[derive(Clone)]
pub struct Host {
    name: String,
    ns: String,
    lab: Arc<Shared>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Host({})", self.ns)
    }
}

impl Host {
    /// The short name given to [`Lab::host`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace name (for `ip netns exec` / `ip -n`).
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// `ip -n <ns> <args>`; returns its stdout, or an error with the command line and stderr.
    pub fn ip(&self, args: &[&str]) -> Result<String, String> {
        cmd_ok("ip", ["-n", self.ns.as_str()].iter().chain(args))
    }

    /// Adds a CIDR address (IPv6 with `nodad`).
    pub fn add_addr(&self, ifname: &str, cidr: &str) -> Result<(), String> {
        let mut args = vec!["addr", "add", cidr, "dev", ifname];
        if is_v6(cidr) {
            args.push("nodad");
        }
        self.ip(&args).map(drop)
    }

    /// Deletes a CIDR address.
    pub fn del_addr(&self, ifname: &str, cidr: &str) -> Result<(), String> {
        self.ip(&["addr", "del", cidr, "dev", ifname]).map(drop)
    }

    /// Replaces address `old` by `new` (CIDR) on `ifname`, keeping the routes that stay valid
    /// (e.g. a default route through a gateway in the new subnet): adds `new` first (with IPv4
    /// `promote_secondaries` on the interface), then deletes `old`.
    pub fn set_addr(&self, ifname: &str, old: &str, new: &str) -> Result<(), String> {
        if !is_v6(new) {
            self.sysctl(&format!("net.ipv4.conf.{ifname}.promote_secondaries"), "1")?;
        }
        self.add_addr(ifname, new)?;
        self.del_addr(ifname, old)
    }

    /// `ip route add <dst> via <via>` (`dst` may be `default`; the family follows `via`).
    pub fn route_add(&self, dst: &str, via: &str) -> Result<(), String> {
        self.ip(&[family(via), "route", "add", dst, "via", via]).map(drop)
    }

    /// `ip route del <dst> via <via>` (the family follows `via`).
    pub fn route_del(&self, dst: &str, via: &str) -> Result<(), String> {
        self.ip(&[family(via), "route", "del", dst, "via", via]).map(drop)
    }

    /// `sysctl -w key=value` inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), String> {
        self.run_timeout("sysctl", &["-q", "-w", &format!("{key}={value}")], CMD_TIMEOUT)?
            .check()
            .map(drop)
    }

    /// Turns on IPv4 and IPv6 forwarding.
    pub fn enable_forwarding(&self) -> Result<(), String> {
        self.sysctl("net.ipv4.ip_forward", "1")?;
        self.sysctl("net.ipv6.conf.all.forwarding", "1")
    }

    /// Makes this host a NAT router: IPv4 forwarding on, and an nftables masquerade of
    /// everything leaving through `out_if` (table `ip labnat`). Can be called for several interfaces.
    pub fn masquerade(&self, out_if: &str) -> Result<(), String> {
        self.sysctl("net.ipv4.ip_forward", "1")?;
        let chain = "{ type nat hook postrouting priority srcnat; policy accept; }";
        self.run_timeout("nft", &["add", "table", "ip", "labnat"], CMD_TIMEOUT)?
            .check()?;
        self.run_timeout("nft", &["add", "chain", "ip", "labnat", "post", chain], CMD_TIMEOUT)?
            .check()?;
        let rule = ["add", "rule", "ip", "labnat", "post", "oifname", out_if, "masquerade"];
        self.run_timeout("nft", &rule, CMD_TIMEOUT)?.check().map(drop)
    }

    /// Starts `program args` in the namespace (`ip netns exec`), in the lab's temp dir, with
    /// stdout and stderr going to one log file there; returns once the process is inside the
    /// namespace. The lab owns the process: it runs until [`Proc::kill`], its own exit, or the
    /// lab's drop, whatever happens to the returned handle.
    pub fn spawn(&self, program: impl AsRef<OsStr>, args: &[&str]) -> Result<Proc, String> {
        self.spawn_env(program, args, &[])
    }

    /// [`Host::spawn`] with extra environment variables.
    pub fn spawn_env(&self, program: impl AsRef<OsStr>, args: &[&str], env: &[(&str, &str)]) -> Result<Proc, String> {
        let program = program.as_ref();
        check_program(program)?;
        let base = Path::new(program)
            .file_name()
            .unwrap_or(program)
            .to_string_lossy()
            .into_owned();
        let log = {
            let mut st = self.lab.lock();
            st.next_log += 1;
            self.lab.dir.join(format!("{}-{}-{}.log", self.name, base, st.next_log))
        };
        let open = |p: &Path| OpenOptions::new().create(true).append(true).open(p);
        let out = open(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| format!("cannot dup the log fd: {e}"))?;
        let mut c = self.exec_cmd(program, args);
        c.envs(env.iter().copied()).stdin(Stdio::null()).stdout(out).stderr(err);
        let line = describe(&c);
        let child = c.spawn().map_err(|e| format!("cannot start `{line}`: {e}"))?;
        let inner = Arc::new(ProcInner {
            pid: child.id(),
            child: Mutex::new(child),
            line,
            host: self.name.clone(),
            log,
        });
        self.lab.lock().procs.push(Arc::clone(&inner));
        let proc = Proc { inner };
        proc.wait_entered();
        Ok(proc)
    }

    /// Runs `program args` in the namespace to completion (at most [`RUN_TIMEOUT`]) and returns
    /// its status and output. A non-zero status is not an error here: see [`Output::check`].
    pub fn run(&self, program: impl AsRef<OsStr>, args: &[&str]) -> Result<Output, String> {
        self.run_timeout(program, args, RUN_TIMEOUT)
    }

    /// [`Host::run`] with its own time limit; on timeout the process is killed and the error
    /// holds what it printed.
    pub fn run_timeout(&self, program: impl AsRef<OsStr>, args: &[&str], timeout: Duration) -> Result<Output, String> {
        let program = program.as_ref();
        check_program(program)?;
        let out = run_cmd(self.exec_cmd(program, args), timeout)?;
        if out.timed_out {
            return Err(format!(
                "`{}` did not finish within {timeout:?}; stdout ends with:\n{}\nstderr ends with:\n{}",
                out.command,
                tail(&out.stdout, 20),
                tail(&out.stderr, 20)
            ));
        }
        Ok(out)
    }

    /// `ping [-6] -n -q -c <count> -W <timeout_s> -i 0.2 <dst>`: true if any reply came.
    pub fn ping(&self, dst: &str, count: u32, timeout_s: u32) -> bool {
        let (count_s, w) = (count.to_string(), timeout_s.to_string());
        let mut args = vec!["-n", "-q", "-c", &count_s, "-W", &w, "-i", "0.2", dst];
        if is_v6(dst) {
            args.insert(0, "-6");
        }
        let limit = Duration::from_millis(200 * u64::from(count)) + Duration::from_secs(u64::from(timeout_s) + 2);
        match self.run_timeout("ping", &args, limit) {
            Ok(o) if o.success() => true,
            Ok(o) => {
                eprintln!(
                    "netns: no reply: `{}` ({}): {} {}",
                    o.command,
                    o.status,
                    o.stdout.trim(),
                    o.stderr.trim()
                );
                false
            }
            Err(e) => {
                eprintln!("netns: {e}");
                false
            }
        }
    }

    /// Pings `dst` (every 0.2 s, restarting `ping` every second so a changed source address is
    /// picked up; every 50 ms while there is no route) until a reply comes; returns how long that
    /// took, or `None` if none came within `deadline`. Resolution: 0.2 s at worst.
    pub fn ping_until(&self, dst: &str, deadline: Duration) -> Option<Duration> {
        let start = Instant::now();
        let mut args = vec!["-n", "-q", "-c", "1", "-i", "0.2", "-w", "1", dst];
        if is_v6(dst) {
            args.insert(0, "-6");
        }
        loop {
            let left = deadline.checked_sub(start.elapsed())?;
            let attempt = Instant::now();
            let c = self.exec_cmd(OsStr::new("ping"), &args);
            match run_cmd(c, left.min(Duration::from_millis(1100))) {
                Ok(o) if o.success() => return Some(start.elapsed()),
                Ok(_) => {}
                Err(e) => {
                    eprintln!("netns: {e}");
                    return None;
                }
            }
            // ping gives up at once without a route: do not spin.
            if attempt.elapsed() < Duration::from_millis(100) {
                std::thread::sleep(Duration::from_millis(50).min(deadline.saturating_sub(start.elapsed())));
            }
        }
    }

    /// The addresses on `ifname` in CIDR form (`192.0.2.1/24`, `2001:db8::1/64`, link-local too),
    /// from `ip -o addr show dev <ifname>`.
    pub fn addrs(&self, ifname: &str) -> Result<Vec<String>, String> {
        let out = self.ip(&["-o", "addr", "show", "dev", ifname])?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                words.find(|w| *w == "inet" || *w == "inet6")?;
                words.next().map(str::to_string)
            })
            .collect())
    }

    /// The IPv6 routing table, one route a line (`ip -6 route show`).
    pub fn routes_v6(&self) -> Result<Vec<String>, String> {
        Ok(self
            .ip(&["-6", "route", "show"])?
            .lines()
            .map(|l| l.trim().to_string())
            .collect())
    }

    /// The IPv4 routing table, one route a line (`ip -4 route show`).
    pub fn routes_v4(&self) -> Result<Vec<String>, String> {
        Ok(self
            .ip(&["-4", "route", "show"])?
            .lines()
            .map(|l| l.trim().to_string())
            .collect())
    }

    /// Whether interface `ifname` exists in this namespace.
    /// ICMPv6 echo requests this host received (Icmp6InEchos of its /proc/net/snmp6).
    pub fn icmp6_echo_requests_in(&self) -> u64 {
        self.run("cat", &["/proc/net/snmp6"])
            .unwrap()
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("Icmp6InEchos"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    }

    /// Sends three echo requests from this host's `src` to `dst` on `to` and panics unless
    /// none was answered and none reached `to`'s ICMPv6 (a source check dropped them); then
    /// `to`'s nftables `table` (ip6) must have counted at least three drops.
    pub fn assert_spoofed_echoes_dropped(&self, src: &str, dst: &str, to: &Host, table: &str) {
        let before = to.icmp6_echo_requests_in();
        let args = ["-6", "-n", "-c", "3", "-i", "0.2", "-W", "1", "-I", src, dst];
        let ping = self.run("ping", &args).unwrap();
        let reached = to.icmp6_echo_requests_in() - before;
        let listed = to.run("nft", &["list", "table", "ip6", table]).unwrap().stdout;
        assert!(
            !ping.success(),
            "echo requests from {src} were answered:\n{}",
            ping.stdout
        );
        assert_eq!(reached, 0, "{reached} echo requests from {src} got through:\n{listed}");
        let dropped: u64 = listed
            .split("counter packets ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(dropped >= 3, "{table} counted {dropped} drops:\n{listed}");
    }

    pub fn link_exists(&self, ifname: &str) -> bool {
        self.ip(&["link", "show", "dev", ifname]).is_ok()
    }

    /// Ids of the processes in this namespace (`ip netns pids`).
    pub fn pids(&self) -> Vec<u32> {
        netns_pids(&self.ns)
    }

    fn exec_cmd(&self, program: &OsStr, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns])
            .arg(program)
            .args(args)
            .current_dir(&self.lab.dir);
        c
    }
}

// ---------------------------------------------------------------------------------------------
// Proc

/// A process started by [`Host::spawn`]. Cheap to clone; the [`Lab`] owns the process itself.
#[derive(Clone)]
pub struct Proc {
    inner: Arc<ProcInner>,
}

struct ProcInner {
    pid: u32,
    child: Mutex<Child>,
    line: String,
    host: String,
    log: PathBuf,
}

impl ProcInner {
    fn child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn status(&self) -> Option<ExitStatus> {
        self.child().try_wait().ok().flatten()
    }

    fn status_text(&self) -> String {
        self.status()
            .map_or("still running".to_string(), |s| format!("exited: {s}"))
    }

    fn output_bytes(&self) -> Vec<u8> {
        fs::read(&self.log).unwrap_or_default()
    }

    fn output(&self) -> String {
        String::from_utf8_lossy(&self.output_bytes()).into_owned()
    }

    fn signal(&self, sig: Signal) -> Result<(), String> {
        // Holding the lock: the child cannot be reaped meanwhile, so its pid is still ours.
        let mut child = self.child();
        if let Ok(Some(s)) = child.try_wait() {
            return Err(format!("`{}` already exited ({s})", self.line));
        }
        send_signal(sig, &[self.pid])
    }

    fn kill(&self) {
        let mut child = self.child();
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// The command line (`ip netns exec <ns> <program> <args>`).
    pub fn command(&self) -> &str {
        &self.inner.line
    }

    /// The log file holding the process's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.inner.log
    }

    /// Everything the process printed so far (stdout and stderr, interleaved).
    pub fn output(&self) -> String {
        self.inner.output()
    }

    /// The current length of the output in bytes, for [`Proc::wait_for_output_since`].
    pub fn mark(&self) -> usize {
        self.inner.output_bytes().len()
    }

    /// Waits until the output contains `needle`. On timeout, or if the process exits without
    /// printing it, the error holds the tail of the log.
    pub fn wait_for_output(&self, needle: &str, timeout: Duration) -> Result<(), String> {
        self.wait_for_output_since(0, needle, timeout)
    }

    /// Like [`Proc::wait_for_output`], looking only at the output after byte `mark` (from
    /// [`Proc::mark`]): for lines that also appeared earlier, e.g. after a reconnection.
    pub fn wait_for_output_since(&self, mark: usize, needle: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            // Status first, output second: output printed just before the exit is not missed.
            let status = self.inner.status();
            let out = self.inner.output_bytes();
            if String::from_utf8_lossy(&out[mark.min(out.len())..]).contains(needle) {
                return Ok(());
            }
            let why = match status {
                Some(s) => format!("it exited ({s})"),
                None if Instant::now() >= deadline => format!("{timeout:?}"),
                None => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            };
            return Err(format!(
                "`{}` did not print {needle:?} (waited: {why}); log {} ends with:\n{}",
                self.inner.line,
                self.inner.log.display(),
                tail(&String::from_utf8_lossy(&out), 30)
            ));
        }
    }

    /// Waits (≤ 5 s) until `ip netns exec` has moved the process out of this process's network
    /// namespace (or it has exited), so that it shows in `ip netns pids` once `spawn` returns.
    fn wait_entered(&self) {
        let netns_of = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/net")).ok();
        let Some(ours) = netns_of("self") else { return };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.status().is_none() && Instant::now() < deadline {
            match netns_of(&self.inner.pid.to_string()) {
                Some(n) if n != ours => return,
                _ => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }

    /// The exit status if the process has exited, `None` while it runs.
    pub fn status(&self) -> Option<ExitStatus> {
        self.inner.status()
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.inner.status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `sig` (an error if the process has already exited).
    pub fn signal(&self, sig: Signal) -> Result<(), String> {
        self.inner.signal(sig)
    }

    /// SIGKILLs the process (if still running) and reaps it.
    pub fn kill(&self) {
        self.inner.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// Commands

fn cmd<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// Runs a harness command; its stdout, or an error with the command line and stderr.
fn cmd_ok<I, S>(program: &str, args: I) -> Result<String, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Ok(run_cmd(cmd(program, args), CMD_TIMEOUT)?.check()?.stdout)
}

static CMD_SEQ: AtomicUsize = AtomicUsize::new(0);

/// Runs `c` with stdin closed and stdout/stderr in temp files (not pipes: a daemon started by
/// the command may keep a pipe open forever). After `timeout` the command is killed and the
/// output says `timed_out`.
fn run_cmd(mut c: Command, timeout: Duration) -> Result<Output, String> {
    let command = describe(&c);
    let n = CMD_SEQ.fetch_add(1, Ordering::Relaxed);
    let base = std::env::temp_dir().join(format!("{NS_MARK}-io-{}-{}-{n}", pid_ns(), std::process::id()));
    let (out_p, err_p) = (base.with_extension("out"), base.with_extension("err"));
    let read = |p: &Path| {
        fs::read(p)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let result = match (File::create(&out_p), File::create(&err_p)) {
        (Ok(out), Ok(err)) => match c.stdin(Stdio::null()).stdout(out).stderr(err).spawn() {
            Err(e) => Err(format!("cannot start `{command}`: {e}")),
            Ok(mut child) => {
                let (status, timed_out) = match wait_timeout(&mut child, timeout) {
                    Some(status) => (Ok(status), false),
                    None => {
                        let _ = child.kill();
                        (child.wait(), true)
                    }
                };
                status
                    .map(|status| Output {
                        command,
                        status,
                        timed_out,
                        stdout: read(&out_p),
                        stderr: read(&err_p),
                    })
                    .map_err(|e| format!("cannot wait for a command: {e}"))
            }
        },
        _ => Err(format!("cannot create {}.out/.err", base.display())),
    };
    let _ = fs::remove_file(&out_p);
    let _ = fs::remove_file(&err_p);
    result
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Sends `sig` to `pids` with procps' `kill`. Without procps, the shell's builtin `kill` does it,
/// with the signal and pids as arguments (nothing is interpolated into the script).
fn send_signal(sig: Signal, pids: &[u32]) -> Result<(), String> {
    static HAVE_KILL: OnceLock<bool> = OnceLock::new();
    let have_kill = *HAVE_KILL.get_or_init(|| {
        let probe = Command::new("kill")
            .arg("-l")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        probe.is_ok_and(|s| s.success())
    });
    let mut c = if have_kill {
        cmd("kill", ["-s", sig.name()])
    } else {
        cmd("sh", ["-c", "kill -s \"$0\" \"$@\"", sig.name()])
    };
    c.args(pids.iter().map(u32::to_string));
    run_cmd(c, CMD_TIMEOUT)?.check().map(drop)
}

/// A missing absolute or relative program path is reported here, not as `ip netns exec`'s exit 255.
fn check_program(program: &OsStr) -> Result<(), String> {
    let p = Path::new(program);
    if p.components().count() > 1 && !p.exists() {
        return Err(format!("{} does not exist (not built?)", p.display()));
    }
    Ok(())
}

fn describe(c: &Command) -> String {
    let quote = |s: &OsStr| {
        let s = s.to_string_lossy();
        if s.is_empty() || s.contains(|ch: char| ch.is_whitespace() || "'\"{}$;".contains(ch)) {
            format!("'{s}'")
        } else {
            s.into_owned()
        }
    };
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ")
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn is_v6(addr: &str) -> bool {
    addr.contains(':')
}

fn family(addr: &str) -> &'static str {
    if is_v6(addr) { "-6" } else { "-4" }
}

fn euid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}

#[allow(unused)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Lab>();
    is::<Host>();
    is::<Proc>();
}

/// Drops everything between client `c` (its link `c_if`) and broker `b`, both ways, silently
/// (no ICMP): each end drops what arrives from the other — `c` all input on `c_if`, `b` what
/// comes from `client_addrs` (IPv4 or IPv6) — since a drop in the sender's own output hook
/// would fail its `sendmsg` with EPERM, which no path out there does. [`mend`] undoes it.
pub fn cut_silently(c: &Host, c_if: &str, b: &Host, client_addrs: &[&str]) {
    let nft = |h: &Host, args: &[&str]| {
        h.run("nft", args).and_then(Output::check).unwrap();
    };
    let spec = "{ type filter hook input priority -10; policy accept; }";
    for h in [c, b] {
        nft(h, &["add", "table", "inet", "cut"]);
        nft(h, &["add", "chain", "inet", "cut", "in", spec]);
    }
    nft(c, &["add", "rule", "inet", "cut", "in", "iifname", c_if, "drop"]);
    for addr in client_addrs {
        let family = if addr.contains(':') { "ip6" } else { "ip" };
        nft(b, &["add", "rule", "inet", "cut", "in", family, "saddr", addr, "drop"]);
    }
}

/// Undoes [`cut_silently`].
pub fn mend(c: &Host, b: &Host) {
    for h in [c, b] {
        h.run("nft", &["delete", "table", "inet", "cut"])
            .and_then(Output::check)
            .unwrap();
    }
}
