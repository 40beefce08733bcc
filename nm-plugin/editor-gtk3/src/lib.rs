//! `libnm-vpn-plugin-tsp-editor.so`: the GTK3 editor of tsp connections, for
//! nm-connection-editor.
//!
//! The base plugin (`libnm-vpn-plugin-tsp.so`) dlopens this library when its host runs GTK3 and
//! calls [`nm_vpn_editor_factory_tsp`]. The editor is a GObject subclass made with glib-rs
//! that implements libnm's `NMVpnEditor` GInterface (see `editor`).
//!
//! The source is the GTK4 editor's too, as NetworkManager-openvpn builds both editors from one
//! source: `nm-plugin/editor-ui/` is compiled here against gtk-rs 0.18, and `toolkit` holds
//! what GTK3 spells differently.
//!
//! Must depend on GTK3 (gtk-rs 0.18) and `nm-tsp-editor-common` only: a second GTK or the
//! service's stack loaded into nm-connection-editor would clash with its own.

mod toolkit;

#[path = "../../editor-ui/editor.rs"]
mod editor;
#[path = "../../editor-ui/ui.rs"]
mod ui;

pub use editor::{TspEditor, VpnEditor, nm_vpn_editor_factory_tsp};
