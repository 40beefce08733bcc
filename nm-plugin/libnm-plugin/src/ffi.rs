//! The few libnm C declarations this plugin needs, written from libnm 1.42's headers
//! (`nm-vpn-editor-plugin.h`, `nm-connection.h`, `nm-setting-vpn.h`, …). Opaque types are
//! zero-sized `#[repr(C)]` structs used behind pointers only.

#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_int, c_uint};

use glib::ffi::{GError, GQuark, gboolean};
use glib::gobject_ffi::GTypeInterface;

#[repr(C)]
pub struct NMVpnEditorPlugin {
    _private: [u8; 0],
}
#[repr(C)]
pub struct NMVpnEditor {
    _private: [u8; 0],
}
#[repr(C)]
pub struct NMConnection {
    _private: [u8; 0],
}
#[repr(C)]
pub struct NMSetting {
    _private: [u8; 0],
}
#[repr(C)]
pub struct NMSettingVpn {
    _private: [u8; 0],
}
#[repr(C)]
pub struct NMVpnPluginInfo {
    _private: [u8; 0],
}
#[repr(C)]
pub struct NMVpnEditorPluginVT {
    _private: [u8; 0],
}

/// `NMVpnEditorPluginCapability` (a C enum, passed as int).
pub type NMVpnEditorPluginCapability = c_uint;
pub const CAPABILITY_IMPORT: NMVpnEditorPluginCapability = 0x01;
pub const CAPABILITY_EXPORT: NMVpnEditorPluginCapability = 0x02;
pub const CAPABILITY_IPV6: NMVpnEditorPluginCapability = 0x04;
/// `NM_VPN_EDITOR_PLUGIN_CAPABILITY_NO_EDITOR` (libnm 1.52; older libnm ignores the bit).
pub const CAPABILITY_NO_EDITOR: NMVpnEditorPluginCapability = 0x08;

/// `NMVpnEditorPluginInterface`, field for field in the header's order: the vtable the
/// interface init fills. `Copy` because glib-rs keeps a copy of the parent interface.
#[repr(C)]
#[derive(Clone, Copy)]
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

/// `NM_CONNECTION_ERROR_FAILED`.
pub const NM_CONNECTION_ERROR_FAILED: c_int = 0;

#[link(name = "nm")]
unsafe extern "C" {
    pub fn nm_vpn_editor_plugin_get_type() -> glib::ffi::GType;
    pub fn nm_connection_error_quark() -> GQuark;

    pub fn nm_simple_connection_new() -> *mut NMConnection;
    pub fn nm_connection_add_setting(connection: *mut NMConnection, setting: *mut NMSetting);
    pub fn nm_connection_get_id(connection: *mut NMConnection) -> *const c_char;
    pub fn nm_connection_get_setting_vpn(connection: *mut NMConnection) -> *mut NMSettingVpn;

    pub fn nm_setting_connection_new() -> *mut NMSetting;
    pub fn nm_setting_vpn_new() -> *mut NMSetting;
    pub fn nm_setting_ip4_config_new() -> *mut NMSetting;
    pub fn nm_setting_ip6_config_new() -> *mut NMSetting;

    pub fn nm_setting_vpn_get_service_type(setting: *mut NMSettingVpn) -> *const c_char;
    pub fn nm_setting_vpn_add_data_item(setting: *mut NMSettingVpn, key: *const c_char, item: *const c_char);
    pub fn nm_setting_vpn_add_secret(setting: *mut NMSettingVpn, key: *const c_char, secret: *const c_char);
    /// Returns a g_free-able array of borrowed keys (libnm ≥ 1.12).
    pub fn nm_setting_vpn_get_data_keys(setting: *mut NMSettingVpn, out_length: *mut c_uint) -> *mut *const c_char;
    pub fn nm_setting_vpn_get_data_item(setting: *mut NMSettingVpn, key: *const c_char) -> *const c_char;
    pub fn nm_setting_vpn_get_secret_keys(setting: *mut NMSettingVpn, out_length: *mut c_uint) -> *mut *const c_char;
    pub fn nm_setting_vpn_get_secret(setting: *mut NMSettingVpn, key: *const c_char) -> *const c_char;

    pub fn nm_utils_uuid_generate() -> *mut c_char;
}
