//! The little of libnm (and of the GLib it exposes) that the tsp plugin libraries call,
//! declared by hand from libnm 1.42's headers (`nm-vpn-editor-plugin.h`, `nm-vpn-editor.h`,
//! `nm-connection.h`, `nm-setting-vpn.h`, …): one declaration for both the libnm plugin
//! (`libnm-vpn-plugin-tsp.so`, glib-rs 0.22) and the GTK3/GTK4 editors (glib-rs 0.18 and 0.22).
//!
//! Only plain C types appear here (`GType` is `usize`, `GQuark` `u32`, `gboolean` `c_int`, as
//! in glib-sys), so that the crate depends on no glib-rs version and each user can hand the
//! values to its own. Opaque types are zero-sized `#[repr(C)]` structs used behind pointers
//! only; the interface structs are the headers' vtables, field for field.
//!
//! Depends on `libc` only.

#![allow(non_camel_case_types)]

use libc::{c_char, c_int, c_uint, c_void};

/// `GType` (glib-sys spells it `usize` too).
pub type GType = usize;
/// `GQuark`.
pub type GQuark = u32;
/// `gboolean`.
pub type gboolean = c_int;

/// `GError`: public fields, allocated and freed by GLib.
#[repr(C)]
pub struct GError {
    pub domain: GQuark,
    pub code: c_int,
    pub message: *mut c_char,
}

/// `GTypeInterface`, the head of every interface vtable.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GTypeInterface {
    pub g_type: GType,
    pub g_instance_type: GType,
}

#[repr(C)]
pub struct NMConnection {
    _opaque: [u8; 0],
}
#[repr(C)]
pub struct NMSetting {
    _opaque: [u8; 0],
}
#[repr(C)]
pub struct NMSettingVpn {
    _opaque: [u8; 0],
}
#[repr(C)]
pub struct NMVpnEditor {
    _opaque: [u8; 0],
}
#[repr(C)]
pub struct NMVpnEditorPlugin {
    _opaque: [u8; 0],
}
#[repr(C)]
pub struct NMVpnPluginInfo {
    _opaque: [u8; 0],
}
#[repr(C)]
pub struct NMVpnEditorPluginVT {
    _opaque: [u8; 0],
}

/// `NMVpnEditorPluginCapability` (a C enum, passed as int).
pub type NMVpnEditorPluginCapability = c_uint;
/// `NM_VPN_EDITOR_PLUGIN_CAPABILITY_IMPORT`.
pub const CAPABILITY_IMPORT: NMVpnEditorPluginCapability = 0x01;
/// `NM_VPN_EDITOR_PLUGIN_CAPABILITY_EXPORT`.
pub const CAPABILITY_EXPORT: NMVpnEditorPluginCapability = 0x02;
/// `NM_VPN_EDITOR_PLUGIN_CAPABILITY_IPV6`.
pub const CAPABILITY_IPV6: NMVpnEditorPluginCapability = 0x04;
/// `NM_VPN_EDITOR_PLUGIN_CAPABILITY_NO_EDITOR` (libnm 1.52; older libnm ignores the bit).
pub const CAPABILITY_NO_EDITOR: NMVpnEditorPluginCapability = 0x08;

/// `NM_CONNECTION_ERROR_FAILED` (of `nm_connection_error_quark()`).
pub const NM_CONNECTION_ERROR_FAILED: c_int = 0;
/// `NM_CONNECTION_ERROR_INVALID_PROPERTY`.
pub const NM_CONNECTION_ERROR_INVALID_PROPERTY: c_int = 7;

/// `NMVpnEditorPluginInterface`, in the header's order: the vtable the plugin's interface init
/// fills. `Copy` because glib-rs keeps a copy of the parent interface.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct NMVpnEditorPluginInterface {
    pub g_iface: GTypeInterface,
    pub get_editor:
        Option<unsafe extern "C" fn(*mut NMVpnEditorPlugin, *mut NMConnection, *mut *mut GError) -> *mut NMVpnEditor>,
    pub get_capabilities: Option<unsafe extern "C" fn(*mut NMVpnEditorPlugin) -> NMVpnEditorPluginCapability>,
    pub import_from_file:
        Option<unsafe extern "C" fn(*mut NMVpnEditorPlugin, *const c_char, *mut *mut GError) -> *mut NMConnection>,
    pub export_to_file: Option<
        unsafe extern "C" fn(*mut NMVpnEditorPlugin, *const c_char, *mut NMConnection, *mut *mut GError) -> gboolean,
    >,
    pub get_suggested_filename: Option<unsafe extern "C" fn(*mut NMVpnEditorPlugin, *mut NMConnection) -> *mut c_char>,
    pub notify_plugin_info_set: Option<unsafe extern "C" fn(*mut NMVpnEditorPlugin, *mut NMVpnPluginInfo)>,
    pub get_vt: Option<unsafe extern "C" fn(*mut NMVpnEditorPlugin, *mut usize) -> *const NMVpnEditorPluginVT>,
}

/// `NMVpnEditorInterface`, in the header's order: get_widget, placeholder,
/// update_connection, changed (the class closure of the "changed" signal).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct NMVpnEditorInterface {
    pub g_iface: GTypeInterface,
    /// Returns the editor's `GtkWidget` (transfer none).
    pub get_widget: Option<unsafe extern "C" fn(editor: *mut NMVpnEditor) -> *mut c_void>,
    pub placeholder: Option<unsafe extern "C" fn()>,
    pub update_connection: Option<
        unsafe extern "C" fn(
            editor: *mut NMVpnEditor,
            connection: *mut NMConnection,
            error: *mut *mut GError,
        ) -> gboolean,
    >,
    pub changed: Option<unsafe extern "C" fn(editor: *mut NMVpnEditor)>,
}

#[link(name = "nm")]
unsafe extern "C" {
    pub fn nm_vpn_editor_plugin_get_type() -> GType;
    pub fn nm_vpn_editor_get_type() -> GType;
    /// libnm's dispatch through the `NMVpnEditor` vtable (what the hosts call).
    pub fn nm_vpn_editor_get_widget(editor: *mut NMVpnEditor) -> *mut c_void;
    pub fn nm_vpn_editor_update_connection(
        editor: *mut NMVpnEditor,
        connection: *mut NMConnection,
        error: *mut *mut GError,
    ) -> gboolean;

    pub fn nm_connection_error_quark() -> GQuark;

    pub fn nm_simple_connection_new() -> *mut NMConnection;
    /// Takes over one reference of `setting`.
    pub fn nm_connection_add_setting(connection: *mut NMConnection, setting: *mut NMSetting);
    pub fn nm_connection_get_id(connection: *mut NMConnection) -> *const c_char;
    pub fn nm_connection_get_setting_vpn(connection: *mut NMConnection) -> *mut NMSettingVpn;

    pub fn nm_setting_connection_new() -> *mut NMSetting;
    pub fn nm_setting_vpn_new() -> *mut NMSetting;
    pub fn nm_setting_ip4_config_new() -> *mut NMSetting;
    pub fn nm_setting_ip6_config_new() -> *mut NMSetting;

    pub fn nm_setting_vpn_get_service_type(setting: *mut NMSettingVpn) -> *const c_char;
    /// Returns a g_free-able array of borrowed keys (libnm ≥ 1.12).
    pub fn nm_setting_vpn_get_data_keys(setting: *mut NMSettingVpn, out_length: *mut c_uint) -> *mut *const c_char;
    pub fn nm_setting_vpn_get_data_item(setting: *mut NMSettingVpn, key: *const c_char) -> *const c_char;
    pub fn nm_setting_vpn_add_data_item(setting: *mut NMSettingVpn, key: *const c_char, item: *const c_char);
    pub fn nm_setting_vpn_remove_data_item(setting: *mut NMSettingVpn, key: *const c_char) -> gboolean;
    /// Returns a g_free-able array of borrowed keys (libnm ≥ 1.12).
    pub fn nm_setting_vpn_get_secret_keys(setting: *mut NMSettingVpn, out_length: *mut c_uint) -> *mut *const c_char;
    pub fn nm_setting_vpn_get_secret(setting: *mut NMSettingVpn, key: *const c_char) -> *const c_char;
    pub fn nm_setting_vpn_add_secret(setting: *mut NMSettingVpn, key: *const c_char, secret: *const c_char);
    pub fn nm_setting_vpn_remove_secret(setting: *mut NMSettingVpn, key: *const c_char) -> gboolean;

    pub fn nm_utils_uuid_generate() -> *mut c_char;
}

// The GLib calls that go with the libnm API above (its strings, arrays and GErrors).
#[link(name = "glib-2.0")]
unsafe extern "C" {
    pub fn g_free(mem: *mut c_void);
    pub fn g_strdup(s: *const c_char) -> *mut c_char;
    pub fn g_set_error_literal(err: *mut *mut GError, domain: GQuark, code: c_int, message: *const c_char);
    pub fn g_error_free(err: *mut GError);
}

#[link(name = "gobject-2.0")]
unsafe extern "C" {
    pub fn g_object_set(object: *mut c_void, first_property_name: *const c_char, ...);
    pub fn g_object_unref(object: *mut c_void);
}
