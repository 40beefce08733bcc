//! The built `libnm-vpn-plugin-tsp.so` loaded the way nmcli and the GUIs load it — libnm's
//! `nm_vpn_editor_plugin_load_from_file` — and asked what nmcli asks: the capabilities (with
//! and without the GTK editors beside it) and an import, whose NMConnection must carry the
//! password as an agent-owned secret and never in vpn.data.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::ptr;

#[repr(C)]
struct GError {
    domain: u32,
    code: c_int,
    message: *const c_char,
}

#[link(name = "nm")]
unsafe extern "C" {
    fn nm_vpn_editor_plugin_load_from_file(
        plugin_name: *const c_char,
        check_service: *const c_char,
        check_owner: c_int,
        check_file: *const c_void,
        user_data: *mut c_void,
        error: *mut *mut GError,
    ) -> *mut c_void;
    fn nm_vpn_editor_plugin_get_capabilities(plugin: *mut c_void) -> u32;
    fn nm_vpn_editor_plugin_import(plugin: *mut c_void, path: *const c_char, error: *mut *mut GError) -> *mut c_void;
    fn nm_connection_get_setting_vpn(connection: *mut c_void) -> *mut c_void;
    fn nm_setting_vpn_get_secret(setting: *mut c_void, key: *const c_char) -> *const c_char;
    fn nm_setting_vpn_get_data_item(setting: *mut c_void, key: *const c_char) -> *const c_char;
    fn nm_setting_vpn_get_num_data_items(setting: *mut c_void) -> u32;
}

#[link(name = "gobject-2.0")]
unsafe extern "C" {
    fn g_object_unref(object: *mut c_void);
}

#[link(name = "glib-2.0")]
unsafe extern "C" {
    fn g_error_free(error: *mut GError);
}

const SERVICE: &str = tsp_config::names::SERVICE;
const IMPORT: u32 = 0x1;
const EXPORT: u32 = 0x2;
const IPV6: u32 = 0x4;
const NO_EDITOR: u32 = 0x8;
const PASSWORD: &str = "imp0rted-Secret";

/// A library of this build (`target/<profile>/`, next to `deps/`).
fn built(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    exe.parent().and_then(Path::parent).expect("target dir").join(name)
}

/// A fresh directory holding the plugin under its installed name.
fn plugin_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nm-tsp-load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    copy_lib(&dir, "libnm_vpn_plugin_tsp.so", "libnm-vpn-plugin-tsp.so");
    dir
}

fn copy_lib(dir: &Path, from: &str, to: &str) {
    let src = built(from);
    assert!(src.is_file(), "{} is not built", src.display());
    std::fs::copy(&src, dir.join(to)).expect("copy");
    std::fs::set_permissions(dir.join(to), std::fs::Permissions::from_mode(0o644)).expect("chmod");
}

fn take_error(e: *mut GError) -> String {
    if e.is_null() {
        return String::new();
    }
    // SAFETY: libnm set `e` to a valid GError; we own it and free it once.
    unsafe {
        let msg = CStr::from_ptr((*e).message).to_string_lossy().into_owned();
        g_error_free(e);
        msg
    }
}

fn load(dir: &Path, service: &str) -> Result<*mut c_void, String> {
    let path = CString::new(dir.join("libnm-vpn-plugin-tsp.so").to_str().expect("utf-8")).expect("path");
    let service = CString::new(service).expect("service");
    let mut err = ptr::null_mut();
    // SAFETY: valid C strings; -1 skips the owner check (the copy is ours), no predicate.
    let plugin = unsafe {
        nm_vpn_editor_plugin_load_from_file(
            path.as_ptr(),
            service.as_ptr(),
            -1,
            ptr::null(),
            ptr::null_mut(),
            &mut err,
        )
    };
    if plugin.is_null() {
        Err(take_error(err))
    } else {
        Ok(plugin)
    }
}

fn str_of(p: *const c_char) -> Option<String> {
    // SAFETY: libnm returns NULL or a NUL-terminated string it owns.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// One test, one library path: a process can hold one copy of the plugin (its GObject type is
/// registered once; a second copy from another path is refused with an error, not a crash).
#[test]
fn loaded_by_libnm() {
    let dir = plugin_dir();
    capabilities_with_and_without_the_editors(&dir);
    import_hands_the_password_over_as_an_agent_owned_secret(&dir);
    let _ = std::fs::remove_dir_all(dir);
}

fn capabilities_with_and_without_the_editors(dir: &Path) {
    let plugin = load(dir, SERVICE).expect("load");
    // SAFETY: a live plugin object from libnm.
    let caps = unsafe { nm_vpn_editor_plugin_get_capabilities(plugin) };
    assert_eq!(caps, IMPORT | EXPORT | IPV6 | NO_EDITOR, "{caps:#x}");
    // SAFETY: `load` gave us this reference; nothing uses the plugin after it is dropped.
    unsafe { g_object_unref(plugin) };

    copy_lib(dir, "libnm_vpn_plugin_tsp_editor.so", "libnm-vpn-plugin-tsp-editor.so");
    copy_lib(
        dir,
        "libnm_gtk4_vpn_plugin_tsp_editor.so",
        "libnm-gtk4-vpn-plugin-tsp-editor.so",
    );
    let plugin = load(dir, SERVICE).expect("load");
    // SAFETY: a live plugin object from libnm.
    let caps = unsafe { nm_vpn_editor_plugin_get_capabilities(plugin) };
    assert_eq!(caps, IMPORT | EXPORT | IPV6, "{caps:#x}");
    // SAFETY: `load` gave us this reference; nothing uses the plugin after it is dropped.
    unsafe { g_object_unref(plugin) };

    // libnm refuses a plugin whose service is not the one the .name file names.
    let e = load(dir, "org.freedesktop.NetworkManager.openvpn").expect_err("wrong service accepted");
    assert!(!e.is_empty());
}

fn import_hands_the_password_over_as_an_agent_owned_secret(dir: &Path) {
    let plugin = load(dir, SERVICE).expect("load");
    let conf = dir.join("home.conf");
    std::fs::write(
        &conf,
        format!("userid=alice\npasswd={PASSWORD}\nserver=192.0.2.1\nauth_method=digest-md5\ntunnel_mode=v6udpv4\n"),
    )
    .expect("write");
    let path = CString::new(conf.to_str().expect("utf-8")).expect("path");
    let mut err = ptr::null_mut();
    // SAFETY: live plugin, valid path; the result is a new NMConnection or NULL with `err`.
    let conn = unsafe { nm_vpn_editor_plugin_import(plugin, path.as_ptr(), &mut err) };
    assert!(!conn.is_null(), "import failed: {}", take_error(err));
    let key = |k: &str| CString::new(k).expect("key");
    // SAFETY: `conn` is a live NMConnection; the setting and strings belong to it.
    unsafe {
        let vpn = nm_connection_get_setting_vpn(conn);
        assert!(!vpn.is_null(), "no vpn setting");
        assert_eq!(
            str_of(nm_setting_vpn_get_secret(vpn, key("password").as_ptr())).as_deref(),
            Some(PASSWORD)
        );
        let item = |k: &str| str_of(nm_setting_vpn_get_data_item(vpn, key(k).as_ptr()));
        assert_eq!(item("password-flags").as_deref(), Some("1"), "agent-owned");
        assert_eq!(item("username").as_deref(), Some("alice"));
        assert_eq!(item("tunnel-mode").as_deref(), Some("v6udpv4"));
        assert_eq!(item("password"), None);
        assert_eq!(
            nm_setting_vpn_get_num_data_items(vpn),
            5,
            "server, auth-method, username, tunnel-mode, flags"
        );
        g_object_unref(conn);
    }

    // A malformed file: no connection, an error naming file, line and key.
    std::fs::write(&conf, "server=192.0.2.1\nauth_method=anonymous\nprefixlen=300\n").expect("write");
    let mut err = ptr::null_mut();
    // SAFETY: as for the first import.
    let conn = unsafe { nm_vpn_editor_plugin_import(plugin, path.as_ptr(), &mut err) };
    assert!(conn.is_null());
    let e = take_error(err);
    assert!(
        e.contains(&format!("{}:3", conf.display())) && e.contains("prefixlen"),
        "{e}"
    );
    // SAFETY: `load` gave us this reference; nothing uses the plugin after it is dropped.
    unsafe { g_object_unref(plugin) };
}
