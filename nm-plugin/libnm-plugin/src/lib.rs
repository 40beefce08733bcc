//! `libnm-vpn-plugin-tsp.so`: the libnm VPN editor plugin of tsp, which nmcli loads for
//! `nmcli connection import type tsp file gogoc.conf` and `nmcli connection export`, and
//! nm-connection-editor / GNOME Settings load to find the GUI editor.
//!
//! FFI shape: a GObject subclass made with glib-rs (`TspEditorPlugin`) implements libnm's
//! `NMVpnEditorPlugin` GInterface. The interface is declared to glib-rs as an external
//! interface type (`VpnEditorPlugin`, its GType from `nm_vpn_editor_plugin_get_type()`), and
//! `IsImplementable::interface_init` fills the C vtable ([`ffi::NMVpnEditorPluginInterface`])
//! with the `extern "C"` functions below. The three interface properties are overridden.
//! Every `extern "C"` entry catches panics, so none crosses into C.
//!
//! Depends on `tsp-config` (gogoc.conf and vpn.data), `tsp-proto` (the password type), glib-rs
//! and the libnm declarations; never on GTK (its hosts may run either GTK), nor on the
//! service's stack (tokio, zbus, netlink), which nmcli must not load.

mod editor;
mod mapping;

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, c_char, c_uint};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::OnceLock;

use glib::prelude::*;
use glib::subclass::prelude::*;
use glib::translate::{FromGlibPtrFull as _, IntoGlibPtr as _};
// The libnm declarations shared with the editors; its `GType` is glib-rs's (`usize`).
use nm_tsp_libnm_ffi::{self as ffi, GError, gboolean};

/// `[VPN Connection] service` of the `.name` file; libnm checks the `service` property
/// against it when loading.
pub use tsp_config::names::SERVICE;
const NAME: &str = "TSP tunnel broker (gogoCLIENT)";
const DESCRIPTION: &str = "IPv6 (or IPv4) through a Tunnel Setup Protocol broker (RFC 5572), as gogoCLIENT does.";
/// Set to `1` or `yes` to have `nmcli connection export` write the password (when the
/// profile stores it) into the file, which is then created with mode 0600.
pub const EXPORT_PASSWORD_ENV: &str = "NM_TSP_EXPORT_PASSWORD";

glib::wrapper! {
    /// libnm's `NMVpnEditorPlugin` interface, as glib-rs sees an interface defined in C.
    pub struct VpnEditorPlugin(Interface<ffi::NMVpnEditorPlugin, ffi::NMVpnEditorPluginInterface>);

    match fn {
        type_ => || ffi::nm_vpn_editor_plugin_get_type(),
    }
}

// SAFETY: the vtable type is the C struct of libnm 1.42's header, field for field, and every
// function stored has exactly the C signature of its slot.
unsafe impl IsImplementable<imp::TspEditorPlugin> for VpnEditorPlugin {
    fn interface_init(iface: &mut glib::Interface<Self>) {
        let iface = iface.as_mut();
        iface.get_editor = Some(get_editor);
        iface.get_capabilities = Some(get_capabilities);
        iface.import_from_file = Some(import_from_file);
        iface.export_to_file = Some(export_to_file);
        iface.get_suggested_filename = Some(get_suggested_filename);
    }
}

mod imp {
    use super::*;

    #[derive(Default)]
    pub struct TspEditorPlugin;

    #[glib::object_subclass]
    impl ObjectSubclass for TspEditorPlugin {
        const NAME: &'static str = "NMTspEditorPlugin";
        type Type = super::TspEditorPlugin;
        type ParentType = glib::Object;
        type Interfaces = (super::VpnEditorPlugin,);
    }

    impl ObjectImpl for TspEditorPlugin {
        fn properties() -> &'static [glib::ParamSpec] {
            static PROPS: OnceLock<Vec<glib::ParamSpec>> = OnceLock::new();
            PROPS.get_or_init(|| {
                ["name", "description", "service"]
                    .into_iter()
                    .map(glib::ParamSpecOverride::for_interface::<super::VpnEditorPlugin>)
                    .collect()
            })
        }

        fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
            match pspec.name() {
                "name" => NAME.to_value(),
                "description" => DESCRIPTION.to_value(),
                _ => SERVICE.to_value(),
            }
        }
    }
}

glib::wrapper! {
    /// The plugin object `nm_vpn_editor_plugin_factory` returns.
    pub struct TspEditorPlugin(ObjectSubclass<imp::TspEditorPlugin>) @implements VpnEditorPlugin;
}

/// Sets `*error` (if the caller wants it) to a `NM_CONNECTION_ERROR_FAILED` with `message`.
fn set_error(error: *mut *mut GError, message: &str) {
    if error.is_null() {
        return;
    }
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    // SAFETY: `error` is the caller's GError** (non-NULL checked); the message is copied.
    unsafe {
        if (*error).is_null() {
            ffi::g_set_error_literal(
                error,
                ffi::nm_connection_error_quark(),
                ffi::NM_CONNECTION_ERROR_FAILED,
                text.as_ptr(),
            );
        }
    }
}

/// Runs `f`; a panic becomes `on_panic` and an error message instead of unwinding into C.
fn guard<R>(error: *mut *mut GError, on_panic: R, f: impl FnOnce() -> Result<R, String>) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(r)) => r,
        Ok(Err(message)) => {
            set_error(error, &message);
            on_panic
        }
        Err(_) => {
            set_error(
                error,
                "internal error in the tsp editor plugin (a bug: please report it)",
            );
            on_panic
        }
    }
}

fn warn(message: &str) {
    glib::g_warning!("nm-tsp", "{}", message);
}

/// A C path argument as a `PathBuf`.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string valid for the call.
unsafe fn path_arg(path: *const c_char) -> Result<PathBuf, String> {
    if path.is_null() {
        return Err("no file name given".to_owned());
    }
    // SAFETY: per the function's contract.
    let bytes = unsafe { CStr::from_ptr(path) }.to_bytes();
    Ok(PathBuf::from(
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(bytes),
    ))
}

/// The libnm entry point named in the `.name` file's `[libnm] plugin=` library.
///
/// # Safety
/// Called by libnm with `error` NULL or a valid `GError **`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nm_vpn_editor_plugin_factory(error: *mut *mut GError) -> *mut ffi::NMVpnEditorPlugin {
    guard(error, std::ptr::null_mut(), || {
        let plugin: TspEditorPlugin = glib::Object::new();
        // Transfer full: the caller owns the reference.
        let raw: *mut <TspEditorPlugin as glib::object::ObjectType>::GlibType = plugin.into_glib_ptr();
        Ok(raw.cast())
    })
}

unsafe extern "C" fn get_capabilities(_plugin: *mut ffi::NMVpnEditorPlugin) -> ffi::NMVpnEditorPluginCapability {
    guard(
        std::ptr::null_mut(),
        ffi::CAPABILITY_IMPORT | ffi::CAPABILITY_EXPORT,
        || {
            let mut caps = ffi::CAPABILITY_IMPORT | ffi::CAPABILITY_EXPORT | ffi::CAPABILITY_IPV6;
            if !editor::editor_available() {
                caps |= ffi::CAPABILITY_NO_EDITOR;
            }
            Ok(caps)
        },
    )
}

unsafe extern "C" fn get_editor(
    plugin: *mut ffi::NMVpnEditorPlugin,
    connection: *mut ffi::NMConnection,
    error: *mut *mut GError,
) -> *mut ffi::NMVpnEditor {
    guard(error, std::ptr::null_mut(), || {
        let factory = editor::load_factory()?;
        // SAFETY: the factory of the contract in `editor`; arguments passed through from libnm.
        let ed = unsafe { factory(plugin, connection, error) };
        if ed.is_null() {
            // The factory set `error` (or should have): keep its message.
            return Ok(std::ptr::null_mut());
        }
        Ok(ed)
    })
}

unsafe extern "C" fn import_from_file(
    _plugin: *mut ffi::NMVpnEditorPlugin,
    path: *const c_char,
    error: *mut *mut GError,
) -> *mut ffi::NMConnection {
    guard(error, std::ptr::null_mut(), || {
        // SAFETY: libnm passes a NUL-terminated path.
        let path = unsafe { path_arg(path) }?;
        let cfg = tsp_config::load_without_password(&path).map_err(|e| e.to_string())?;
        let imported = mapping::import(&cfg, &path).map_err(|e| e.to_string())?;
        if let Some(w) = mapping::unsupported_warning(&path, &imported.unsupported) {
            warn(&w);
        }
        new_connection(&imported)
    })
}

fn cstring(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} has a NUL byte"))
}

/// A new NMSimpleConnection (transfer full) for an imported file.
fn new_connection(imp: &mapping::Imported) -> Result<*mut ffi::NMConnection, String> {
    // SAFETY: each constructor returns a new GObject reference that we own; `from_glib_full`
    // takes it over. `nm_connection_add_setting` takes one reference of the setting.
    unsafe {
        let connection = glib::Object::from_glib_full(ffi::nm_simple_connection_new().cast());
        let s_con = glib::Object::from_glib_full(ffi::nm_setting_connection_new().cast());
        let uuid = glib::GString::from_glib_full(ffi::nm_utils_uuid_generate());
        s_con.set_property("id", imp.id.as_str());
        s_con.set_property("uuid", uuid.as_str());
        s_con.set_property("type", "vpn");

        let s_vpn = glib::Object::from_glib_full(ffi::nm_setting_vpn_new().cast());
        s_vpn.set_property("service-type", SERVICE);
        let vpn_ptr: *mut ffi::NMSettingVpn = s_vpn.as_ptr().cast();
        for (k, v) in &imp.data {
            ffi::nm_setting_vpn_add_data_item(vpn_ptr, cstring(k)?.as_ptr(), cstring(v)?.as_ptr());
        }
        for (k, v) in &imp.secrets {
            let secret = zeroize::Zeroizing::new(cstring(v)?.into_bytes_with_nul());
            ffi::nm_setting_vpn_add_secret(vpn_ptr, cstring(k)?.as_ptr(), secret.as_ptr().cast());
        }

        let s_ip4 = glib::Object::from_glib_full(ffi::nm_setting_ip4_config_new().cast());
        s_ip4.set_property("method", "auto");
        let s_ip6 = glib::Object::from_glib_full(ffi::nm_setting_ip6_config_new().cast());
        s_ip6.set_property("method", "auto");

        let c_ptr: *mut ffi::NMConnection = connection.as_ptr().cast();
        for s in [s_con, s_vpn, s_ip4, s_ip6] {
            let raw: *mut glib::gobject_ffi::GObject = s.into_glib_ptr();
            ffi::nm_connection_add_setting(c_ptr, raw.cast());
        }
        let raw: *mut glib::gobject_ffi::GObject = connection.into_glib_ptr();
        Ok(raw.cast())
    }
}

/// Keys and values of a `get_*_keys` / `get_*` pair of an NMSettingVpn.
///
/// # Safety
/// `s_vpn` is a live NMSettingVpn.
unsafe fn vpn_map(
    s_vpn: *mut ffi::NMSettingVpn,
    keys: unsafe extern "C" fn(*mut ffi::NMSettingVpn, *mut c_uint) -> *mut *const c_char,
    get: unsafe extern "C" fn(*mut ffi::NMSettingVpn, *const c_char) -> *const c_char,
) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut n: c_uint = 0;
    // SAFETY: `keys` returns NULL or an array of `n` borrowed strings, freed with g_free.
    unsafe {
        let array = keys(s_vpn, &mut n);
        if array.is_null() {
            return map;
        }
        for i in 0..n as usize {
            let k = *array.add(i);
            if k.is_null() {
                continue;
            }
            let v = get(s_vpn, k);
            if v.is_null() {
                continue;
            }
            map.insert(
                CStr::from_ptr(k).to_string_lossy().into_owned(),
                CStr::from_ptr(v).to_string_lossy().into_owned(),
            );
        }
        ffi::g_free(array.cast());
    }
    map
}

unsafe extern "C" fn export_to_file(
    _plugin: *mut ffi::NMVpnEditorPlugin,
    path: *const c_char,
    connection: *mut ffi::NMConnection,
    error: *mut *mut GError,
) -> gboolean {
    guard(error, glib::ffi::GFALSE, || {
        // SAFETY: libnm passes a NUL-terminated path and a live connection.
        let path = unsafe { path_arg(path) }?;
        if connection.is_null() {
            return Err("no connection given".to_owned());
        }
        // SAFETY: `connection` is a live NMConnection; the setting is borrowed from it.
        let s_vpn = unsafe { ffi::nm_connection_get_setting_vpn(connection) };
        if s_vpn.is_null() {
            return Err("the connection has no VPN setting".to_owned());
        }
        // SAFETY: live setting; the string is borrowed from it.
        let service = unsafe {
            let s = ffi::nm_setting_vpn_get_service_type(s_vpn);
            (!s.is_null()).then(|| CStr::from_ptr(s).to_string_lossy().into_owned())
        };
        if service.as_deref() != Some(SERVICE) {
            return Err(format!(
                "not a tsp connection (vpn.service-type is {})",
                service.as_deref().unwrap_or("unset")
            ));
        }
        // SAFETY: live setting.
        let data = unsafe {
            vpn_map(
                s_vpn,
                ffi::nm_setting_vpn_get_data_keys,
                ffi::nm_setting_vpn_get_data_item,
            )
        };
        // SAFETY: live setting.
        let mut secrets = unsafe {
            vpn_map(
                s_vpn,
                ffi::nm_setting_vpn_get_secret_keys,
                ffi::nm_setting_vpn_get_secret,
            )
        };
        let want_password = std::env::var(EXPORT_PASSWORD_ENV).is_ok_and(|v| v == "1" || v == "yes");
        let exported = mapping::export(&data, &secrets, want_password);
        secrets.values_mut().for_each(zeroize::Zeroize::zeroize);
        let exported = exported.map_err(|e| e.to_string())?;
        if !exported.dropped.is_empty() {
            warn(&format!(
                "{}: written without {} (no gogoc.conf key)",
                path.display(),
                exported.dropped.join(", ")
            ));
        }
        mapping::write_file(&path, &exported).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(glib::ffi::GTRUE)
    })
}

unsafe extern "C" fn get_suggested_filename(
    _plugin: *mut ffi::NMVpnEditorPlugin,
    connection: *mut ffi::NMConnection,
) -> *mut c_char {
    guard(std::ptr::null_mut(), std::ptr::null_mut(), || {
        let id = if connection.is_null() {
            String::new()
        } else {
            // SAFETY: live connection; the id is borrowed from it.
            unsafe {
                let id = ffi::nm_connection_get_id(connection);
                if id.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(id).to_string_lossy().into_owned()
                }
            }
        };
        let name = cstring(&mapping::suggested_filename(&id))?;
        // SAFETY: g_strdup copies into memory the caller frees with g_free.
        Ok(unsafe { ffi::g_strdup(name.as_ptr()) })
    })
}
