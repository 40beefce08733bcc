//! Least privilege for the programs that run as root (docs/nm-plugin.md §3; NetworkManager starts
//! `nm-tsp-service` as root): once started they keep only the two capabilities a tunnel needs —
//! CAP_NET_ADMIN (TUN devices, kernel tunnel links, addresses, routes, forwarding) and CAP_NET_RAW
//! (the raw protocol-41/4 sockets, router advertisements) — and set no_new_privs, so what parses a
//! broker's bytes cannot load modules, read other users' files or gain anything back through
//! exec.
//!
//! Capabilities are per thread: this runs first in `main`, before any thread exists, so every
//! later thread (tokio's, zbus's) inherits the reduced sets.

use caps::{CapSet, Capability, CapsHashSet};

/// The capabilities kept.
pub const KEPT: [Capability; 2] = [Capability::CAP_NET_ADMIN, Capability::CAP_NET_RAW];

/// What [`drop_to_network_admin`] could not do; the program goes on (a user running it without
/// privileges has nothing to drop) and logs it.
#[derive(Debug, thiserror::Error)]
pub enum DropError {
    #[error("cannot change the capability sets: {0}")]
    Caps(#[from] caps::errors::CapsError),
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(#[from] nix::Error),
}

/// Reduces the bounding, permitted, effective, inheritable and ambient sets to [`KEPT`] (or to
/// what of it the process has) and sets no_new_privs.
pub fn drop_to_network_admin() -> Result<(), DropError> {
    let keep: CapsHashSet = KEPT.into_iter().collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes with the rest below.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        for cap in caps::all().difference(&keep) {
            caps::drop(None, CapSet::Bounding, *cap)?;
        }
    }
    let have = caps::read(None, CapSet::Permitted)?;
    let kept: CapsHashSet = have.intersection(&keep).copied().collect();
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    // Effective must stay within permitted at every step.
    caps::set(None, CapSet::Effective, &kept)?;
    caps::set(None, CapSet::Permitted, &kept)?;
    nix::sys::prctl::set_no_new_privs()?;
    Ok(())
}
