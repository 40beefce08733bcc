//! Kernel tier harness: runs a command under a real Linux kernel that has the tunnel links this
//! machine's kernel lacks (sit, ip6tnl, ipip), as an ordinary process, with Debian's
//! `user-mode-linux` package. See docs/testbed.md §8. Include it with `mod uml;`.
//!
//! ```ignore
//! let kernel = match uml::prepare() { Ok(k) => k, Err(uml::Skip(why)) => { println!("skipped: {why}"); return; } };
//! let boot = kernel.run("my_test", &[exe, "--exact", "my_test", "--nocapture"], Duration::from_secs(120))?;
//! assert_eq!(boot.guest_status, Some(0), "{}", boot.console);
//! ```
//!
//! * [`prepare`] fetches `user-mode-linux` and `kmod` with `apt-get download` (the candidate
//!   versions of the host's apt, Debian 12) and unpacks them with `dpkg-deb -x` into
//!   `<target>/uml/<uml version>_<kmod version>/`; a warm run finds that directory and downloads
//!   nothing. It skips (returns [`Skip`]) when apt cannot fetch the packages or `/dev/shm` (where
//!   linux.uml maps its memory) does not allow exec.
//! * [`Kernel::run`] boots `linux.uml` with the host's `/` as a read-only root and
//!   `tests/uml/init.sh` as PID 1, which mounts proc, sys, a tmpfs on /run and /tmp, the run's
//!   results directory (writable, through hostfs), points the kernel's module loader at the
//!   unpacked modules, runs the command and powers off with the command's exit status. The guest
//!   gets `TSP_UML_GUEST=1` in its environment ([`in_guest`]), so a test binary can re-run itself
//!   inside. A guest that does not power off in time is killed (its whole process group).
//! * The guest runs as root with the host's files: a test tool, not a sandbox.
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub mod system;

/// Set (to 1) in the guest's environment.
pub const GUEST_ENV: &str = "TSP_UML_GUEST";
/// The guest's module loader wrapper (written by init.sh).
const MODPROBE: &str = "/run/uml/modprobe-wrap";
/// The PID 1 script.
const INIT: &str = include_str!("init.sh");
/// The Debian packages the tier unpacks.
const PACKAGES: [&str; 2] = ["user-mode-linux", "kmod"];

/// Why the tier cannot run on this machine (the test prints it and passes).
#[derive(Debug, Clone)]
pub struct Skip(pub String);

/// True inside the guest.
pub fn in_guest() -> bool {
    std::env::var_os(GUEST_ENV).is_some()
}

/// The unpacked packages.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `<target>/uml/<versions>`: `root/` holds both packages' files.
    dir: PathBuf,
}

/// What a boot left.
#[derive(Debug)]
pub struct Boot {
    /// linux.uml's own exit code (the guest's status when it powered off cleanly).
    pub exit: Option<i32>,
    /// The exit status init.sh wrote to the results directory (None: the guest command never
    /// finished, e.g. a timeout or a kernel panic).
    pub guest_status: Option<i32>,
    /// Killed at the time limit.
    pub timed_out: bool,
    /// The console: kernel messages and the command's stdout and stderr.
    pub console: String,
    pub elapsed: Duration,
}

impl Boot {
    /// True when the command ran to the end in the guest and succeeded.
    pub fn success(&self) -> bool {
        !self.timed_out && self.guest_status == Some(0) && self.exit == Some(0)
    }
}

/// `<target>` of the running test executable (`<target>/<profile>/deps/<test>-<hash>`).
pub(crate) fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// The kernel, downloaded and unpacked once per machine (per package versions) and once per
/// process; see the module docs.
pub fn prepare() -> Result<Kernel, Skip> {
    static KERNEL: OnceLock<Result<Kernel, Skip>> = OnceLock::new();
    KERNEL.get_or_init(prepare_uncached).clone()
}

fn prepare_uncached() -> Result<Kernel, Skip> {
    shm_allows_exec()?;
    let base = target_dir().join("uml");
    let versions: Option<Vec<String>> = PACKAGES.iter().map(|p| candidate(p)).collect();
    let key = match &versions {
        Some(v) => v.join("_").replace([':', '/'], "-"),
        // No apt lists: any complete cache will do.
        None => match complete_caches(&base).into_iter().next() {
            Some(dir) => return Ok(Kernel { dir }),
            None => {
                return Err(Skip(
                    "apt knows no user-mode-linux/kmod candidate (run apt-get update)".into(),
                ));
            }
        },
    };
    let dir = base.join(&key);
    if dir.join(".complete").exists() {
        return Ok(Kernel { dir });
    }
    let versions = versions.unwrap_or_default();
    let work = base.join(format!(".unpack-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(work.join("dl")).map_err(|e| Skip(format!("cannot create {}: {e}", work.display())))?;
    let specs: Vec<String> = PACKAGES
        .iter()
        .zip(&versions)
        .map(|(p, v)| format!("{p}={v}"))
        .collect();
    let dl = Command::new("apt-get")
        .arg("download")
        .args(&specs)
        .current_dir(work.join("dl"))
        .stdin(Stdio::null())
        .output();
    match dl {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let _ = fs::remove_dir_all(&work);
            return Err(Skip(format!(
                "apt-get download {} failed (mirror unreachable?): {}",
                specs.join(" "),
                String::from_utf8_lossy(&o.stderr).trim()
            )));
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&work);
            return Err(Skip(format!("cannot run apt-get: {e}")));
        }
    }
    let unpacked = work.join("out");
    fs::create_dir_all(unpacked.join("root")).map_err(|e| Skip(e.to_string()))?;
    let debs: Vec<PathBuf> = fs::read_dir(work.join("dl"))
        .map_err(|e| Skip(e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    assert_eq!(debs.len(), PACKAGES.len(), "apt-get download left {debs:?}");
    for deb in &debs {
        let st = Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb)
            .arg(unpacked.join("root"))
            .status()
            .map_err(|e| Skip(format!("cannot run dpkg-deb: {e}")))?;
        assert!(st.success(), "dpkg-deb -x {} failed: {st}", deb.display());
    }
    assert!(
        unpacked.join("root/usr/bin/linux.uml").is_file() && unpacked.join("root/bin/kmod").is_file(),
        "the packages hold no usr/bin/linux.uml or bin/kmod"
    );
    fs::write(unpacked.join(".complete"), specs.join("\n") + "\n").unwrap();
    // Publish in one step (a concurrent run may have won; its copy is as good).
    if fs::rename(&unpacked, &dir).is_err() && !dir.join(".complete").exists() {
        panic!("cannot move the unpacked kernel to {}", dir.display());
    }
    let _ = fs::remove_dir_all(&work);
    Ok(Kernel { dir })
}

/// The candidate version apt would fetch (from the local lists; no network).
fn candidate(pkg: &str) -> Option<String> {
    let out = Command::new("apt-cache").args(["policy", pkg]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))?
        .trim()
        .to_owned();
    (!v.is_empty() && v != "(none)").then_some(v)
}

fn complete_caches(base: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(base)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(".complete").exists())
        .collect();
    dirs.sort();
    dirs
}

/// linux.uml maps its memory from a file in /dev/shm and executes from it.
fn shm_allows_exec() -> Result<(), Skip> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let shm = mounts
        .lines()
        .rfind(|l| l.split_whitespace().nth(1) == Some("/dev/shm"));
    match shm {
        None if Path::new("/dev/shm").is_dir() => Ok(()),
        None => Err(Skip("there is no /dev/shm".into())),
        Some(l)
            if l.split_whitespace()
                .nth(3)
                .is_some_and(|o| o.split(',').any(|o| o == "noexec")) =>
        {
            Err(Skip("/dev/shm is mounted noexec (linux.uml executes from it)".into()))
        }
        Some(_) => Ok(()),
    }
}

impl Kernel {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Boots the kernel and runs `argv` as root in the guest (see the module docs), with `env`
    /// added to its environment. `name` names the run directory `<target>/uml/runs/<name>-<pid>`
    /// (removed afterwards). Arguments and values cannot contain spaces (kernel command line).
    pub fn run(&self, name: &str, argv: &[&str], env: &[(&str, &str)], timeout: Duration) -> Result<Boot, String> {
        let run = target_dir()
            .join("uml/runs")
            .join(format!("{name}-{}", std::process::id()));
        let init = run.join("init.sh");
        let mut cmdline: Vec<String> = [
            "mem=384M",
            "root=/dev/root",
            "rootfstype=hostfs",
            "hostfs=/",
            "ro",
            "quiet",
            "con=null",
            "con0=null,fd:1",
            "ssl=null",
        ]
        .map(String::from)
        .into();
        cmdline.push(format!("init={}", init.display()));
        cmdline.push(format!("UML_RESULTS={}", run.display()));
        cmdline.push(format!("UML_KMOD={}", self.dir.display()));
        cmdline.push(format!("{GUEST_ENV}=1"));
        cmdline.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        cmdline.push("--".into());
        cmdline.extend(argv.iter().map(|a| a.to_string()));
        cmdline.push("--uml-end".into());
        let _ = fs::remove_dir_all(&run);
        fs::create_dir_all(&run).map_err(|e| format!("cannot create {}: {e}", run.display()))?;
        write_exec(&init, INIT)?;
        let boot = self.boot(&run, &cmdline, timeout);
        let _ = fs::remove_dir_all(&run);
        boot
    }

    /// Boots linux.uml with this command line in the run directory `run` (which the guest may
    /// mount) and waits for it to power off, at most `timeout`; reads the guest's status from
    /// `run/status` and removes `run`.
    pub(crate) fn boot(&self, run: &Path, cmdline: &[String], timeout: Duration) -> Result<Boot, String> {
        if let Some(bad) = cmdline.iter().find(|w| w.contains(char::is_whitespace) || w.is_empty()) {
            return Err(format!("kernel command line word {bad:?} is empty or has white space"));
        }
        // A status left by an earlier boot of the same run directory is not this boot's.
        let _ = fs::remove_file(run.join("status"));
        let t0 = Instant::now();
        // stdout must be a pipe (a regular file fails linux.uml's epoll), stdin /dev/null.
        // Its own process group: UML runs its guest processes as host processes, killed as one.
        let mut child = Command::new(self.dir.join("root/usr/bin/linux.uml"))
            .args(cmdline)
            .env_remove("TMPDIR")
            .current_dir(run)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start linux.uml: {e}"))?;
        let console = Arc::new(Mutex::new(Vec::new()));
        let readers: Vec<_> = [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|mut pipe| {
            let console = Arc::clone(&console);
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    console
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&buf[..n]);
                }
            })
        })
        .collect();
        let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
        let mut timed_out = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) if t0.elapsed() >= timeout => {
                    timed_out = true;
                    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                    break child.wait().ok();
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => return Err(format!("waiting for linux.uml: {e}")),
            }
        };
        // Whatever UML left in its process group goes too (nothing, after a clean power-off).
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let grace = Instant::now() + Duration::from_secs(5);
        for r in readers {
            while !r.is_finished() && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(20));
            }
            if r.is_finished() {
                let _ = r.join();
            }
        }
        let console = String::from_utf8_lossy(&console.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
        let guest_status = fs::read_to_string(run.join("status"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        Ok(Boot {
            exit: status.and_then(|s| s.code().or(s.signal().map(|sig| 128 + sig))),
            guest_status,
            timed_out,
            console,
            elapsed: t0.elapsed(),
        })
    }
}

/// Writes an executable file.
pub(crate) fn write_exec(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// In the guest

/// Switches the kernel's module autoloading on (the wrapper init.sh wrote) or off (a path that
/// does not exist: the kernel then answers a new link kind with EOPNOTSUPP, like this host's).
pub fn autoload(on: bool) {
    let path = if on { MODPROBE } else { "/run/uml/no-modprobe-here" };
    fs::write("/proc/sys/kernel/modprobe", format!("{path}\n")).expect("cannot write /proc/sys/kernel/modprobe");
}

/// Loads these modules now (through the wrapper, whatever [`autoload`] says).
pub fn modprobe(modules: &[&str]) {
    for m in modules {
        let st = Command::new(MODPROBE)
            .arg(m)
            .status()
            .expect("cannot run the modprobe wrapper");
        assert!(st.success(), "modprobe {m}: {st}");
    }
}

/// True when a module of this name is loaded.
pub fn module_loaded(name: &str) -> bool {
    Path::new("/sys/module").join(name).exists()
}
