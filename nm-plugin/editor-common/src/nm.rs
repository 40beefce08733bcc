//! The little of libnm (and GLib) the editors call, declared by hand: reading and writing the
//! vpn setting of an `NMConnection`, `GError`s, and the `NMVpnEditor` interface vtable
//! (`nm-vpn-editor.h`). Pointers are opaque here; the GTK crates give them their own
//! glib-rs types.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::ptr;

/// The D-Bus service of tsp connections (`vpn.service-type`).
pub const SERVICE: &str = "org.freedesktop.NetworkManager.tsp";

#[repr(C)]
pub struct NMConnection {
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
pub struct GError {
    pub domain: u32,
    pub code: c_int,
    pub message: *mut c_char,
}

/// `GTypeInterface`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GTypeInterface {
    pub g_type: usize,
    pub g_instance_type: usize,
}

/// `NMVpnEditorInterface`, in the header's order: get_widget, placeholder,
/// update_connection, changed (the class closure of the "changed" signal).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct NMVpnEditorInterface {
    pub g_iface: GTypeInterface,
    pub get_widget: Option<unsafe extern "C" fn(editor: *mut NMVpnEditor) -> *mut c_void>,
    pub placeholder: Option<unsafe extern "C" fn()>,
    pub update_connection: Option<
        unsafe extern "C" fn(editor: *mut NMVpnEditor, connection: *mut NMConnection, error: *mut *mut GError) -> c_int,
    >,
    pub changed: Option<unsafe extern "C" fn(editor: *mut NMVpnEditor)>,
}

/// `NM_CONNECTION_ERROR_INVALID_PROPERTY`.
pub const NM_CONNECTION_ERROR_INVALID_PROPERTY: c_int = 7;

#[link(name = "nm")]
unsafe extern "C" {
    pub fn nm_vpn_editor_get_type() -> usize;
    pub fn nm_connection_error_quark() -> u32;
    pub fn nm_connection_get_setting_vpn(connection: *mut NMConnection) -> *mut NMSettingVpn;
    pub fn nm_connection_add_setting(connection: *mut NMConnection, setting: *mut c_void);
    pub fn nm_simple_connection_new() -> *mut NMConnection;
    pub fn nm_setting_vpn_new() -> *mut c_void;
    pub fn nm_setting_vpn_get_service_type(setting: *mut NMSettingVpn) -> *const c_char;
    pub fn nm_setting_vpn_get_data_keys(setting: *mut NMSettingVpn, out_length: *mut c_uint) -> *mut *const c_char;
    pub fn nm_setting_vpn_get_data_item(setting: *mut NMSettingVpn, key: *const c_char) -> *const c_char;
    pub fn nm_setting_vpn_add_data_item(setting: *mut NMSettingVpn, key: *const c_char, item: *const c_char);
    pub fn nm_setting_vpn_remove_data_item(setting: *mut NMSettingVpn, key: *const c_char) -> c_int;
    pub fn nm_setting_vpn_get_secret_keys(setting: *mut NMSettingVpn, out_length: *mut c_uint) -> *mut *const c_char;
    pub fn nm_setting_vpn_get_secret(setting: *mut NMSettingVpn, key: *const c_char) -> *const c_char;
    pub fn nm_setting_vpn_add_secret(setting: *mut NMSettingVpn, key: *const c_char, secret: *const c_char);
    pub fn nm_setting_vpn_remove_secret(setting: *mut NMSettingVpn, key: *const c_char) -> c_int;
}

#[link(name = "glib-2.0")]
unsafe extern "C" {
    pub fn g_free(mem: *mut c_void);
    pub fn g_set_error_literal(err: *mut *mut GError, domain: u32, code: c_int, message: *const c_char);
    pub fn g_error_free(err: *mut GError);
}

#[link(name = "gobject-2.0")]
unsafe extern "C" {
    pub fn g_object_set(object: *mut c_void, first_property_name: *const c_char, ...);
    pub fn g_object_unref(object: *mut c_void);
}

/// Copies a C string (lossily: vpn.data is UTF-8 by contract).
///
/// # Safety
/// `s` is null or a NUL-terminated string.
unsafe fn text(s: *const c_char) -> Option<String> {
    (!s.is_null()).then(|| unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned())
}

/// Reads one of the key lists (`get_data_keys` / `get_secret_keys`) and the values.
///
/// # Safety
/// `setting` is a valid `NMSettingVpn`.
unsafe fn read_map(
    setting: *mut NMSettingVpn,
    keys: unsafe extern "C" fn(*mut NMSettingVpn, *mut c_uint) -> *mut *const c_char,
    item: unsafe extern "C" fn(*mut NMSettingVpn, *const c_char) -> *const c_char,
) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut n: c_uint = 0;
    // SAFETY: the array (freed below) points at strings the setting owns.
    unsafe {
        let list = keys(setting, &mut n);
        if list.is_null() {
            return m;
        }
        for i in 0..n as usize {
            let k = *list.add(i);
            if let (Some(key), Some(value)) = (text(k), text(item(setting, k))) {
                m.insert(key, value);
            }
        }
        g_free(list.cast());
    }
    m
}

/// The vpn.data and vpn.secrets of `connection` (empty maps when it has no vpn setting).
///
/// # Safety
/// `connection` is null or a valid `NMConnection`.
pub unsafe fn read_vpn(connection: *mut NMConnection) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    if connection.is_null() {
        return Default::default();
    }
    // SAFETY: caller's contract; the setting is borrowed from the connection.
    unsafe {
        let s = nm_connection_get_setting_vpn(connection);
        if s.is_null() {
            return Default::default();
        }
        (
            read_map(s, nm_setting_vpn_get_data_keys, nm_setting_vpn_get_data_item),
            read_map(s, nm_setting_vpn_get_secret_keys, nm_setting_vpn_get_secret),
        )
    }
}

fn cstring(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

/// Replaces the vpn.data and vpn.secrets of `connection` (adding a tsp vpn setting when it
/// has none; the setting's other properties are kept).
///
/// # Safety
/// `connection` is a valid `NMConnection`.
pub unsafe fn write_vpn(
    connection: *mut NMConnection,
    data: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, String>,
) -> Result<(), String> {
    if connection.is_null() {
        return Err("no connection to write to".to_owned());
    }
    // Converted first, so that a bad string leaves the connection as it was.
    let conv = |m: &BTreeMap<String, String>| -> Result<Vec<(CString, CString)>, String> {
        m.iter().map(|(k, v)| Ok((cstring(k)?, cstring(v)?))).collect()
    };
    let (data, secrets) = (conv(data)?, conv(secrets)?);
    // SAFETY: caller's contract; strings outlive the calls, the setting is the connection's.
    unsafe {
        let mut s = nm_connection_get_setting_vpn(connection);
        if s.is_null() {
            let new = nm_setting_vpn_new();
            let service = cstring(SERVICE)?;
            g_object_set(new, c"service-type".as_ptr(), service.as_ptr(), ptr::null::<c_char>());
            nm_connection_add_setting(connection, new);
            s = nm_connection_get_setting_vpn(connection);
            if s.is_null() {
                return Err("libnm did not add the vpn setting".to_owned());
            }
        }
        let (old_data, old_secrets) = (
            read_map(s, nm_setting_vpn_get_data_keys, nm_setting_vpn_get_data_item),
            read_map(s, nm_setting_vpn_get_secret_keys, nm_setting_vpn_get_secret),
        );
        for k in old_data.keys() {
            let k = cstring(k)?;
            nm_setting_vpn_remove_data_item(s, k.as_ptr());
        }
        for k in old_secrets.keys() {
            let k = cstring(k)?;
            nm_setting_vpn_remove_secret(s, k.as_ptr());
        }
        for (k, v) in &data {
            nm_setting_vpn_add_data_item(s, k.as_ptr(), v.as_ptr());
        }
        for (k, v) in &secrets {
            nm_setting_vpn_add_secret(s, k.as_ptr(), v.as_ptr());
        }
    }
    Ok(())
}

/// Sets `*error` (if the caller wants it) to an `NM_CONNECTION_ERROR_INVALID_PROPERTY` with
/// `message`.
///
/// # Safety
/// `error` is null or points at a null `GError*`.
pub unsafe fn set_error(error: *mut *mut GError, message: &str) {
    let msg = CString::new(message.replace('\0', " ")).unwrap_or_default();
    // SAFETY: caller's contract; GLib copies the message.
    unsafe {
        g_set_error_literal(
            error,
            nm_connection_error_quark(),
            NM_CONNECTION_ERROR_INVALID_PROPERTY,
            msg.as_ptr(),
        )
    };
}

#[link(name = "nm")]
unsafe extern "C" {
    /// libnm's dispatch through the interface vtable (what the hosts call).
    pub fn nm_vpn_editor_get_widget(editor: *mut NMVpnEditor) -> *mut c_void;
    pub fn nm_vpn_editor_update_connection(
        editor: *mut NMVpnEditor,
        connection: *mut NMConnection,
        error: *mut *mut GError,
    ) -> c_int;
}
