//! The undo journal: what this process changed in the kernel, so that teardown removes exactly
//! that (docs/tsp-wire.md §8).

use std::net::IpAddr;

use super::ops::write_forwarding_v6;
use super::{Netlink, NetlinkError, masked};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    Address {
        idx: u32,
        addr: IpAddr,
        plen: u8,
    },
    Route {
        dst: IpAddr,
        plen: u8,
        idx: u32,
        metric: Option<u32>,
    },
    Blackhole {
        dst: IpAddr,
        plen: u8,
    },
    Forwarding {
        previous: bool,
    },
    Link {
        idx: u32,
    },
}

/// What this process changed in the kernel, in order, so that [`Applied::undo`] removes exactly
/// that, in reverse order, and nothing that was there before. Dropping it without `undo` leaves
/// the changes in place (and logs a warning).
#[derive(Debug, Default)]
#[must_use = "call undo() at teardown, or the configuration stays in place"]
pub struct Applied {
    changes: Vec<Change>,
}

impl Applied {
    pub fn new() -> Self {
        Self::default()
    }

    /// Nothing recorded.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Number of recorded changes.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Add an address and record it. If the link already has it, nothing is recorded: it is
    /// not ours to remove at teardown.
    pub async fn apply_address(&mut self, nl: &Netlink, idx: u32, addr: IpAddr, plen: u8) -> Result<(), NetlinkError> {
        match nl.add_address(idx, addr, plen).await {
            Ok(()) => {
                self.changes.push(Change::Address { idx, addr, plen });
                Ok(())
            }
            Err(e) if e.errno() == Some(libc::EEXIST) => {
                tracing::debug!(%addr, plen, idx, "address already present; leaving it to its owner");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Add a route with the default metric and record it. An existing identical route is an
    /// error (`EEXIST`): it may belong to someone else and must not be removed at teardown.
    pub async fn apply_route(&mut self, nl: &Netlink, dst: IpAddr, plen: u8, idx: u32) -> Result<(), NetlinkError> {
        self.apply_route_with_metric(nl, dst, plen, idx, None).await
    }

    /// [`Applied::apply_route`] with an explicit metric.
    pub async fn apply_route_with_metric(
        &mut self,
        nl: &Netlink,
        dst: IpAddr,
        plen: u8,
        idx: u32,
        metric: Option<u32>,
    ) -> Result<(), NetlinkError> {
        nl.add_route_with_metric(dst, plen, idx, metric).await?;
        let dst = masked(dst, plen)?;
        self.changes.push(Change::Route { dst, plen, idx, metric });
        Ok(())
    }

    /// Add a blackhole route and record it.
    pub async fn apply_blackhole(&mut self, nl: &Netlink, dst: IpAddr, plen: u8) -> Result<(), NetlinkError> {
        nl.add_blackhole_route(dst, plen).await?;
        let dst = masked(dst, plen)?;
        self.changes.push(Change::Blackhole { dst, plen });
        Ok(())
    }

    /// Set IPv6 forwarding and record the previous value, if it changed.
    pub fn apply_forwarding(&mut self, enabled: bool) -> Result<(), NetlinkError> {
        let previous = write_forwarding_v6(enabled)?;
        if previous != enabled {
            self.changes.push(Change::Forwarding { previous });
        }
        Ok(())
    }

    /// Record a link this process created (e.g. a sit) so that teardown deletes it. Do not adopt
    /// a TUN: it vanishes when its file descriptor closes.
    pub fn adopt_link(&mut self, idx: u32) {
        self.changes.push(Change::Link { idx });
    }

    /// Undo every recorded change in reverse order. Best effort: keeps going after a failure and
    /// returns the failures. Something already gone (e.g. routes removed with their link) counts
    /// as undone.
    pub async fn undo(mut self, nl: &Netlink) -> Vec<NetlinkError> {
        let mut failures = Vec::new();
        for change in std::mem::take(&mut self.changes).into_iter().rev() {
            let result = match change {
                Change::Address { idx, addr, plen } => nl.del_address(idx, addr, plen).await,
                Change::Route { dst, plen, idx, metric } => nl.del_route_with_metric(dst, plen, idx, metric).await,
                Change::Blackhole { dst, plen } => nl.del_blackhole_route(dst, plen).await,
                Change::Forwarding { previous } => write_forwarding_v6(previous).map(|_| ()),
                Change::Link { idx } => nl.delete_link(idx).await,
            };
            match result {
                Ok(()) => {}
                Err(e) if e.is_already_gone() => tracing::debug!("teardown: already gone: {e}"),
                Err(e) => {
                    tracing::warn!("teardown: {e}");
                    failures.push(e);
                }
            }
        }
        failures
    }
}

impl Drop for Applied {
    fn drop(&mut self) {
        if !self.changes.is_empty() {
            tracing::warn!(
                changes = self.changes.len(),
                "tunnel configuration dropped without undo; it stays in the kernel"
            );
        }
    }
}
