//! The GTK-free half of the tsp connection editors (`libnm-vpn-plugin-tsp-editor.so` for GTK3,
//! `libnm-gtk4-vpn-plugin-tsp-editor.so` for GTK4).
//!
//! [`form`] is what both editors show, as plain strings and flags, and how it becomes
//! `vpn.data` / `vpn.secrets`: every value goes through nm-tsp's own
//! [`parse_vpn_data`](nm_tsp::config::vpn_data::parse_vpn_data), so the editor refuses exactly
//! what the service would refuse, with the same message. [`nm`] is the little of libnm the
//! editors need (reading and writing the vpn setting, `GError`s, the `NMVpnEditor` interface
//! vtable), declared by hand. [`testing`] holds what the editors' tests share: an X server
//! (Xvfb) and connections made through libnm.

pub mod form;
pub mod nm;
pub mod testing;

use std::panic::{AssertUnwindSafe, catch_unwind};

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
