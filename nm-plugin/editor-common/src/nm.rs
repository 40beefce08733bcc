//! libnm as the editors use it: reading and writing the vpn setting of an `NMConnection` and
//! setting `GError`s, over the C declarations of [`nm_tsp_libnm_ffi`] (re-exported here, so
//! that `nm::` names the opaque types, the `NMVpnEditor` vtable and the C functions too).
//! Pointers are opaque here; the GTK crates give them their own glib-rs types.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, c_char, c_uint};
use std::ptr;

// One libnm declaration for the plugin and both editors.
pub use nm_tsp_libnm_ffi::*;

/// The D-Bus service of tsp connections (`vpn.service-type`).
pub use tsp_config::names::SERVICE;

/// Copies a C string (lossily: vpn.data is UTF-8 by contract).
///
/// # Safety
/// `s` is null or a NUL-terminated string.
unsafe fn text(s: *const c_char) -> Option<String> {
    if s.is_null() {
        return None;
    }
    // SAFETY: not null, and NUL-terminated by the caller's contract.
    Some(unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned())
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
            g_object_set(
                new.cast(),
                c"service-type".as_ptr(),
                service.as_ptr(),
                ptr::null::<c_char>(),
            );
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
