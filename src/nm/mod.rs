//! NetworkManager integration: the VPN plugin service (`nm-tsp-service`), its dictionaries, and
//! the auth dialog's agent protocol (`nm-tsp-auth-dialog`).

pub mod auth_dialog;
pub mod ipconfig;
pub mod plugin;
