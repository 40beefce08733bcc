//! Least privilege for the programs that run as root (docs/nm-plugin.md §3; NetworkManager starts
//! `nm-tsp-service` as root): once started they keep only the two capabilities a tunnel needs —
//! CAP_NET_ADMIN (TUN devices, kernel tunnel links, addresses, routes, forwarding sysctls) and
//! CAP_NET_RAW (the raw protocol-41/4 sockets, router advertisements) — and set no_new_privs, so
//! what parses a broker's bytes cannot load modules, read other users' files or gain anything
//! back through exec. `nm-tsp-service` also leaves uid 0 for its own system user, as
//! NetworkManager-openvpn's openvpn does: root's files are then out of reach even through a bug.
//!
//! Capabilities and securebits are per thread: this runs first in `main`, before any thread
//! exists, so every later thread (tokio's, zbus's) inherits the reduced sets and the uid.

use std::path::Path;

use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Gid, Uid, User};

/// The capabilities kept.
pub const KEPT: [Capability; 2] = [Capability::CAP_NET_ADMIN, Capability::CAP_NET_RAW];

/// What [`drop_privileges`] could not do; the program goes on (a user running it without
/// privileges has nothing to drop) and logs it.
#[derive(Debug, thiserror::Error)]
pub enum DropError {
    #[error("cannot change the capability sets: {0}")]
    Caps(#[from] caps::errors::CapsError),
    #[error("cannot set no_new_privs or keep-caps: {0}")]
    Prctl(nix::Error),
    #[error("cannot look up user {user}: {error}")]
    Lookup { user: String, error: nix::Error },
    #[error("cannot hand {path} to user {user}: {error}")]
    Own {
        path: String,
        user: String,
        error: std::io::Error,
    },
    #[error("cannot become user {user}: {error}")]
    Switch { user: String, error: nix::Error },
}

/// Who the process runs as after [`drop_privileges`].
#[derive(Debug, PartialEq, Eq)]
pub enum Identity {
    /// It was not root: nothing to switch (its capabilities, if any, were reduced).
    Unprivileged,
    /// Root, with [`KEPT`] only: no user was asked for.
    Root,
    /// Root, with [`KEPT`] only, because the user could not be had: it does not exist (a
    /// hand-made install without the package's user), or a directory could not be handed to it.
    RootBecause(String),
    /// The asked-for system user, with [`KEPT`].
    User { name: String, uid: u32 },
}
/// Reduces every capability set to [`KEPT`] (or to what of it the process has), sets
/// no_new_privs and, when root and `user` exists, becomes that user and group (no
/// supplementary groups) keeping [`KEPT`]. The directories in `own` are made (mode 0700) and
/// handed to the user first, contents included, since the process cannot reach root's files
/// afterwards.
pub fn drop_privileges(user: Option<&str>, own: &[&Path]) -> Result<Identity, DropError> {
    let account = match user {
        Some(name) if Uid::effective().is_root() => match User::from_name(name) {
            Ok(Some(account)) => Some(account),
            Ok(None) => {
                drop_to_network_admin()?;
                return Ok(Identity::RootBecause(format!("there is no user {name}")));
            }
            Err(error) => {
                return Err(DropError::Lookup {
                    user: name.to_owned(),
                    error,
                });
            }
        },
        _ => None,
    };
    let Some(account) = account else {
        drop_to_network_admin()?;
        return Ok(if Uid::effective().is_root() {
            Identity::Root
        } else {
            Identity::Unprivileged
        });
    };
    // Without its state the service could not pin host keys: rather root than broken.
    for dir in own {
        if let Err(e) = hand_over(dir, account.uid, account.gid) {
            drop_to_network_admin()?;
            return Ok(Identity::RootBecause(format!(
                "cannot give {} to {}: {e}",
                dir.display(),
                account.name
            )));
        }
    }
    // The bounding set while CAP_SETPCAP may still be effective (NetworkManager's unit does not
    // grant it: the set then stays NetworkManager's, harmless under no_new_privs); permitted
    // keeps CAP_SETUID and CAP_SETGID until the switch below.
    drop_bounding_set()?;
    // Keep-caps: the permitted set survives leaving uid 0 (the kernel would clear it).
    nix::sys::prctl::set_keepcaps(true).map_err(DropError::Prctl)?;
    let switch = |error| DropError::Switch {
        user: account.name.clone(),
        error,
    };
    nix::unistd::setgroups(&[]).map_err(switch)?;
    nix::unistd::setresgid(account.gid, account.gid, account.gid).map_err(switch)?;
    nix::unistd::setresuid(account.uid, account.uid, account.uid).map_err(switch)?;
    nix::sys::prctl::set_keepcaps(false).map_err(DropError::Prctl)?;
    // The switch cleared the effective set; permitted still holds root's CAP_SETUID & co.
    drop_to_network_admin()?;
    Ok(Identity::User {
        name: account.name,
        uid: account.uid.as_raw(),
    })
}

/// Reduces the bounding, permitted, effective, inheritable and ambient sets to [`KEPT`] (or to
/// what of it the process has) and sets no_new_privs.
fn drop_to_network_admin() -> Result<(), DropError> {
    let keep: CapsHashSet = KEPT.into_iter().collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes with the rest below.
    drop_bounding_set()?;
    let have = caps::read(None, CapSet::Permitted)?;
    let kept: CapsHashSet = have.intersection(&keep).copied().collect();
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    // Effective must stay within permitted at every step: raise within the old permitted set,
    // then shrink permitted to it.
    caps::set(None, CapSet::Effective, &kept)?;
    caps::set(None, CapSet::Permitted, &kept)?;
    nix::sys::prctl::set_no_new_privs().map_err(DropError::Prctl)?;
    Ok(())
}

/// Reduces the bounding set to [`KEPT`] when the process may (CAP_SETPCAP effective).
fn drop_bounding_set() -> Result<(), DropError> {
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        let keep: CapsHashSet = KEPT.into_iter().collect();
        for cap in caps::all().difference(&keep) {
            caps::drop(None, CapSet::Bounding, *cap)?;
        }
    }
    Ok(())
}

/// Makes `dir` (mode 0700 when new) and gives it and everything under it to `uid`:`gid`,
/// without following symbolic links (a link planted there must not hand over its target).
/// The package makes it the user's already; NetworkManager's unit grants no CAP_CHOWN, so the
/// tree is only walked when the directory is someone else's.
fn hand_over(dir: &Path, uid: Uid, gid: Gid) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    if std::fs::symlink_metadata(dir)?.uid() == uid.as_raw() {
        return Ok(());
    }
    chown_tree(dir, uid, gid)
}

fn chown_tree(path: &Path, uid: Uid, gid: Gid) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid.as_raw()), Some(gid.as_raw()))?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}
