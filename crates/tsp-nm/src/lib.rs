//! `tsp-nm`: NetworkManager integration (docs/nm-plugin.md) — the VPN plugin D-Bus service
//! behind `nm-tsp-service` ([`plugin`]), the Config/Ip4Config/Ip6Config dictionaries it reports
//! ([`ipconfig`]), and the auth dialog's agent protocol and keyring access behind
//! `nm-tsp-auth-dialog` ([`auth_dialog`]).
//!
//! The top of the stack: it drives `tsp-client`'s Supervisor with a profile from `tsp-config`.
//! Nothing below may depend on it, and it must not depend on the broker.

pub mod auth_dialog;
pub mod ipconfig;
pub mod plugin;
