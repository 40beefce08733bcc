//! Helpers for the root-only tests of the tunnel modules: a throwaway network namespace per
//! test, shell commands inside it, and polling with a bound.
//!
//! See docs/testbed.md §1–2.

use std::future::Future;
use std::process::{Command, Output};
use std::time::Duration;

/// The test's assertion that a call succeeded, failing with the error's message.
#[track_caller]
pub fn must<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// Runs `f` on a fresh thread inside a new network namespace (with `lo` up) on a
/// current-thread runtime; with `private_mounts`, also in a private mount namespace. Returns
/// `false` (skipped) when not root. The namespaces die with the thread and its sockets, so
/// nothing is left behind.
pub fn in_new_netns<F, Fut>(private_mounts: bool, f: F) -> bool
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: not root");
        return false;
    }
    let t = std::thread::spawn(move || {
        use nix::sched::CloneFlags;
        let mut flags = CloneFlags::CLONE_NEWNET;
        if private_mounts {
            flags |= CloneFlags::CLONE_NEWNS;
        }
        if let Err(e) = nix::sched::unshare(flags) {
            panic!("unshare({flags:?}): {e}");
        }
        if private_mounts {
            // Nothing mounted here may propagate back to the host.
            sh("mount --make-rprivate /");
        }
        sh("ip link set lo up");
        let rt = must(tokio::runtime::Builder::new_current_thread().enable_all().build());
        rt.block_on(f());
    });
    if let Err(p) = t.join() {
        std::panic::resume_unwind(p);
    }
    true
}

/// Runs a shell command in the calling thread's namespace.
pub fn run(cmd: &str) -> Output {
    must(Command::new("sh").arg("-c").arg(cmd).output())
}

/// Runs a shell command; panics with its stderr on failure, returns its stdout.
#[track_caller]
pub fn sh(cmd: &str) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `cond` every 10 ms for up to 5 s.
pub async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}
