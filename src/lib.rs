//! NetworkManager-tsp: a Tunnel Setup Protocol (RFC 5572) client — the protocol of
//! gogoCLIENT — for NetworkManager, a standalone `tspc`, and the bundled `tsp-broker`.
//!
//! Layers, bottom up: [`proto`] (sans-IO protocol, shared by both ends), [`net`] (tokio
//! transports and the negotiation driver), [`broker`] (the bundled server), [`config`]
//! (gogoc.conf). See ARCHITECTURE.md for the whole map.

pub mod broker;
pub mod client;
pub mod config;
pub mod fsutil;
pub mod logging;
pub mod net;
pub mod nm;
pub mod proto;
pub mod secret;
pub mod sites;
pub mod template;
pub mod tunnel;
