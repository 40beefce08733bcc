//! System tier harness: a real Debian 12 (systemd, the system bus, NetworkManager as a service)
//! booted under the kernel tier's user-mode Linux (docs/testbed.md §8).
//!
//! * [`prepare`] builds the root once per machine with `debootstrap --variant=minbase` (the
//!   packages of [`ROOT_PACKAGES`], the mirror apt uses here) and `tests/uml/mkroot.sh`, which
//!   also copies the UML kernel's modules into `lib/modules/<version>`; it is cached as the
//!   directory `<target>/uml/debian-bookworm-<hash>/` (hash of the package list, the mirror-free
//!   build script and the kernel version), so a warm run builds nothing. Skips when debootstrap is
//!   missing or the mirror is unreachable.
//! * [`System::run`] boots it read-only (`rootflags=`, the guest keeps it pristine with a tmpfs
//!   overlay, tests/uml/init-system.sh, which the harness keeps at `/sbin/uml-system-init` in the
//!   cached root since `init=` is looked up there) with systemd as PID 1, and a oneshot unit that runs a
//!   scenario script after NetworkManager and powers the guest off with the script's status.
//!   The run directory (`<target>/uml/runs/<name>-<pid>`, mounted at `/uml` in the guest) holds
//!   the script and whatever files the test puts there.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::{Boot, Kernel, Skip, target_dir, write_exec};

/// debootstrap's `--include`: systemd as init, logind's PAM module (without it network-manager
/// stays unconfigured), the bus, NetworkManager, and the tools the scenarios use.
/// libnss-systemd resolves the names of DynamicUser= users.
pub const ROOT_PACKAGES: &str =
    "systemd-sysv,libpam-systemd,libnss-systemd,dbus,network-manager,iproute2,iputils-ping,kmod,procps";
const MKROOT: &str = include_str!("mkroot.sh");
const INIT: &str = include_str!("init-system.sh");

/// The kernel and the cached Debian root.
#[derive(Debug, Clone)]
pub struct System {
    kernel: Kernel,
    root: PathBuf,
}

/// The kernel (see [`super::prepare`]) and the Debian root, built once; see the module docs.
pub fn prepare() -> Result<System, Skip> {
    static SYSTEM: OnceLock<Result<System, Skip>> = OnceLock::new();
    SYSTEM.get_or_init(prepare_uncached).clone()
}

/// FNV-1a, 64 bits: a cache key that stays the same across Rust releases.
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.iter().flat_map(|p| p.bytes().chain([0])) {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The UML kernel's module directory, `usr/lib/uml/modules/<version>`.
fn modules_dir(kernel: &Kernel) -> Result<PathBuf, Skip> {
    let base = kernel.dir().join("root/usr/lib/uml/modules");
    fs::read_dir(&base)
        .ok()
        .and_then(|d| d.filter_map(|e| e.ok().map(|e| e.path())).find(|p| p.is_dir()))
        .ok_or_else(|| Skip(format!("no module directory under {}", base.display())))
}

fn prepare_uncached() -> Result<System, Skip> {
    let kernel = super::prepare()?;
    let modules = modules_dir(&kernel)?;
    let version = modules.file_name().unwrap().to_string_lossy().into_owned();
    let key = fnv(&[ROOT_PACKAGES, MKROOT, &version]);
    let base = target_dir().join("uml");
    let dir = base.join(format!("debian-bookworm-{key:016x}"));
    if dir.join(".complete").exists() {
        return with_init(System {
            kernel,
            root: dir.join("root"),
        });
    }
    if Command::new("debootstrap").arg("--version").output().is_err() {
        return Err(Skip("debootstrap is not installed (tests/run.sh installs it)".into()));
    }
    let mirror = apt_mirror().ok_or_else(|| Skip("no bookworm mirror in /etc/apt/sources.list*".into()))?;
    let work = base.join(format!(".debootstrap-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| Skip(format!("cannot create {}: {e}", work.display())))?;
    let script = work.join("mkroot.sh");
    write_exec(&script, MKROOT).map_err(Skip)?;
    println!("system tier: building the Debian root from {mirror} (about 70 s)");
    let out = Command::new("timeout")
        .arg("900")
        .arg("sh")
        .arg(&script)
        .arg(work.join("root"))
        .arg(&mirror)
        .arg(ROOT_PACKAGES)
        .arg(&modules)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Skip(format!("cannot run mkroot.sh: {e}")))?;
    if !out.status.success() {
        let log = String::from_utf8_lossy(&out.stdout);
        let tail: Vec<&str> = log.lines().rev().take(8).collect();
        let _ = fs::remove_dir_all(&work);
        return Err(Skip(format!(
            "debootstrap from {mirror} failed (mirror unreachable?): {}\n{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )));
    }
    fs::write(work.join(".complete"), format!("{ROOT_PACKAGES}\n{mirror}\n")).unwrap();
    let _ = fs::remove_file(&script);
    // Publish in one step (a concurrent run may have won; its copy is as good).
    if fs::rename(&work, &dir).is_err() {
        assert!(
            dir.join(".complete").exists(),
            "cannot move the root to {}",
            dir.display()
        );
        let _ = fs::remove_dir_all(&work);
    }
    with_init(System {
        kernel,
        root: dir.join("root"),
    })
}

/// Where the first PID 1 lives in the root: the kernel looks `init=` up in the root it mounted,
/// so the script goes into the cached root (replaced in one step when it changed; the only file
/// of the cache the harness writes after debootstrap).
const INIT_PATH: &str = "sbin/uml-system-init";

fn with_init(system: System) -> Result<System, Skip> {
    let path = system.root.join(INIT_PATH);
    if fs::read_to_string(&path).ok().as_deref() != Some(INIT) {
        let tmp = path.with_extension(format!("new-{}", std::process::id()));
        write_exec(&tmp, INIT).map_err(Skip)?;
        fs::rename(&tmp, &path).map_err(|e| Skip(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(system)
}

/// The first bookworm mirror in apt's sources (deb822 `.sources` stanzas or one-line entries).
fn apt_mirror() -> Option<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    let mut more: Vec<PathBuf> = fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    more.sort();
    files.extend(more);
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else { continue };
        if f.extension().is_some_and(|x| x == "sources") {
            for stanza in text.split("\n\n") {
                let field = |name: &str| {
                    stanza
                        .lines()
                        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
                        .unwrap_or_default()
                };
                let uris = field("URIs:");
                if field("Types:").split_whitespace().any(|t| t == "deb")
                    && field("Suites:").split_whitespace().any(|s| s == "bookworm")
                    && let Some(uri) = uris.split_whitespace().next()
                {
                    return Some(uri.to_owned());
                }
            }
        } else {
            for line in text.lines() {
                let mut words = line.split_whitespace().filter(|w| !w.starts_with('['));
                if words.next() != Some("deb") {
                    continue;
                }
                let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
                    continue;
                };
                if suite == "bookworm" {
                    return Some(uri.to_owned());
                }
            }
        }
    }
    None
}

/// A run directory, removed (with its disk image) when dropped.
pub struct RunDir(PathBuf);

impl std::ops::Deref for RunDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

impl System {
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The run directory of `name` (created empty; removed with the returned guard): put the
    /// files the scenario needs there; the guest sees it as `/uml`.
    pub fn run_dir(&self, name: &str) -> RunDir {
        let run = target_dir()
            .join("uml/runs")
            .join(format!("{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&run);
        fs::create_dir_all(&run).unwrap_or_else(|e| panic!("cannot create {}: {e}", run.display()));
        RunDir(run)
    }

    /// Boots the Debian root with systemd and runs `scenario` (a shell script; the guest runs
    /// it as `/bin/sh /uml/scenario.sh` from a oneshot unit after NetworkManager.service) in the
    /// run directory made by [`System::run_dir`]. The script's exit status is the guest's status
    /// (the unit writes it to /uml/status); the guest powers off either way. With `persist`, the
    /// overlay's upper layer is a sparse ext4 image `run/overlay.ext4` (the guest's ubda) instead
    /// of a tmpfs, so the guest's changes persist: a later `run` with the same run directory
    /// boots that disk again (a reboot as the guest sees it) and runs the scenario again. (A
    /// reboot inside the guest, where linux.uml re-executes itself, failed to come back about
    /// once in five boots, its watchdog helper missing.)
    pub fn run(&self, run: &Path, scenario: &str, persist: bool, timeout: Duration) -> Result<Boot, String> {
        write_exec(&run.join("scenario.sh"), scenario)?;
        fs::write(run.join("uml-scenario.service"), UNIT).map_err(|e| e.to_string())?;
        let mut cmdline: Vec<String> = [
            "mem=1024M",
            "root=/dev/root",
            "rootfstype=hostfs",
            "ro",
            "quiet",
            "con=null",
            "con0=null,fd:1",
            "ssl=null",
            "systemd.show_status=error",
        ]
        .map(String::from)
        .into();
        cmdline.push(format!("rootflags={}", self.root.display()));
        cmdline.push(format!("init=/{INIT_PATH}"));
        cmdline.push(format!("UML_RESULTS={}", run.display()));
        if persist {
            // A sparse ext4 image as the block device ubda: the upper layer of the guest's overlay.
            let image = run.join("overlay.ext4");
            if !image.exists() {
                let made = Command::new("truncate")
                    .args(["-s", "2G"])
                    .arg(&image)
                    .status()
                    .and_then(|_| Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image).status());
                match made {
                    Ok(st) if st.success() => {}
                    other => return Err(format!("cannot make the ext4 image {}: {other:?}", image.display())),
                }
            }
            cmdline.push(format!("ubd0={}", image.display()));
            cmdline.push("UML_PERSIST=1".into());
        }
        self.kernel.boot(run, &cmdline, timeout)
    }
}

/// The scenario unit: after NetworkManager, its output on the console, and the guest powered off
/// when it ends (the actions belong in [Unit]; in [Service] they are ignored).
const UNIT: &str = "\
[Unit]
Description=system tier scenario (tests/uml/system.rs)
Wants=NetworkManager.service
After=NetworkManager.service dbus.service
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
ExecStart=/bin/sh -c '/bin/sh /uml/scenario.sh; rc=$?; echo $rc >/uml/status; echo $rc >/proc/exitcode; sync; exit $rc'
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
";
