//! NetworkManager integration: the VPN plugin service (`nm-tsp-service`) and its pieces.

pub mod ipconfig;
pub mod plugin;
