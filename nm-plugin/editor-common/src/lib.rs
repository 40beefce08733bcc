//! The GTK-free half of the tsp connection editors (`libnm-vpn-plugin-tsp-editor.so` for GTK3,
//! `libnm-gtk4-vpn-plugin-tsp-editor.so` for GTK4).
//!
//! [`form`] is what both editors show, as plain strings and flags, and how it becomes
//! `vpn.data` / `vpn.secrets`: every value goes through nm-tsp's own
//! [`parse_vpn_data`](tsp_config::vpn_data::parse_vpn_data), so the editor refuses exactly
//! what the service would refuse, with the same message. [`nm`] is the little of libnm the
//! editors need (reading and writing the vpn setting, `GError`s), over the hand-written
//! declarations of `nm-tsp-libnm-ffi` that it re-exports (the `NMVpnEditor` interface vtable
//! among them). [`testing`] holds what the editors' tests share: an X server
//! (Xvfb) and connections made through libnm.
//!
//! Depends on `tsp-config` (the vpn.data rules and names) and the libnm declarations only: no
//! GTK (both editors share it), and nothing of the service's stack (tokio, zbus, netlink).

pub mod form;
pub mod nm;
pub mod testing;

use std::io::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Environment variable naming a file the editors append one line per event to (editor made,
/// update accepted or refused), for tests that drive a real host such as nm-connection-editor
/// and cannot read its widgets. Lines carry vpn.data key names and parse_vpn_data's messages
/// (which quote no secret), never the values written.
pub const TRACE_ENV: &str = "NM_TSP_EDITOR_TRACE";

/// Appends `line` to the [`TRACE_ENV`] file, if one is set (errors are ignored: tracing never
/// changes what the editor does).
pub fn trace(line: &str) {
    let Some(path) = std::env::var_os(TRACE_ENV) else {
        return;
    };
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{}", line.replace('\n', " "));
    }
}

/// The key names of a map, space-separated, for [`trace`].
pub fn key_names<V>(m: &std::collections::BTreeMap<String, V>) -> String {
    m.keys().map(String::as_str).collect::<Vec<_>>().join(" ")
}

/// Runs `f`, turning a panic into what `fallback` gives (called only then): no unwinding may
/// cross an `extern "C"` entry point. The panic message goes to stderr (the host's log),
/// prefixed by `what`.
pub fn guard<R>(what: &str, fallback: impl FnOnce() -> R, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            eprintln!("nm-tsp editor: {what}: internal error: {msg}");
            fallback()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::guard;

    #[test]
    fn guard_catches_panics_and_calls_the_fallback_only_then() {
        let mut fallbacks = 0;
        assert_eq!(guard("t", || 0, || 1), 1);
        assert_eq!(
            guard(
                "t",
                || {
                    fallbacks += 1;
                    -1
                },
                || panic!("boom")
            ),
            -1
        );
        assert_eq!(fallbacks, 1);
    }
}
