//! `tsp-client`: the client side of TSP on sockets — tokio transports (TCP, UDP with RUDP, the
//! UDP→TCP race), the negotiation driver with version fallback and redirection, broker ranking by
//! ECHO and PASSDSS host keys ([`net`]); the [`supervisor::Supervisor`] that keeps one tunnel up
//! (retries, roaming, suspend, lease, broker list); gogoc's template-script mode ([`template`]).
//! The protocol's decisions are `tsp-proto`'s; the tunnel is `tsp-tunnel`'s; what is done with a
//! tunnel once up (configure the host for `tspc`, report it to NetworkManager) is the
//! Supervisor's hooks'.
//!
//! Must not depend on the broker or on NetworkManager/D-Bus (`tsp-nm` depends on it).
//!
//! See docs/tsp-wire.md §1; docs/ARCHITECTURE.md.

pub mod net;
pub mod supervisor;
pub mod template;
