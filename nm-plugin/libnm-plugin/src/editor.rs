//! `get_editor`: the GUI lives in separate libraries, one per GTK major version, next to this
//! one; this library links no GTK (nmcli loads it too).
//!
//! # The contract with the editor libraries
//!
//! `libnm-vpn-plugin-tsp-editor.so` (GTK 3) and `libnm-gtk4-vpn-plugin-tsp-editor.so` (GTK 4),
//! installed in the same directory as `libnm-vpn-plugin-tsp.so`, each export
//!
//! ```c
//! NMVpnEditor *nm_vpn_editor_factory_tsp (NMVpnEditorPlugin *plugin,
//!                                         NMConnection      *connection,
//!                                         GError           **error);
//! ```
//!
//! It returns a new reference (transfer full) to an object implementing `NMVpnEditor`, filled
//! from `connection` (borrowed; it may be kept with a new reference), or NULL with `error` set.
//! `plugin` is this library's plugin object (borrowed). The library is opened once with
//! `RTLD_LAZY | RTLD_LOCAL` and never closed (it registers GTypes).

use std::ffi::{CStr, CString, OsStr};
use std::os::raw::c_void;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nm_tsp_libnm_ffi::{GError, NMConnection, NMVpnEditor, NMVpnEditorPlugin};

/// The GTK 3 editor library.
pub const GTK3_LIBRARY: &str = "libnm-vpn-plugin-tsp-editor.so";
/// The GTK 4 editor library.
pub const GTK4_LIBRARY: &str = "libnm-gtk4-vpn-plugin-tsp-editor.so";
/// The factory symbol both export.
pub const FACTORY_SYMBOL: &CStr = c"nm_vpn_editor_factory_tsp";

/// The factory's C type (see the module documentation).
pub type EditorFactory =
    unsafe extern "C" fn(*mut NMVpnEditorPlugin, *mut NMConnection, *mut *mut GError) -> *mut NMVpnEditor;

/// Which GTK the host process runs, told by symbols already loaded into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gtk {
    Gtk3,
    Gtk4,
    /// No GTK at all (nmcli).
    None,
}

impl Gtk {
    pub fn major(self) -> u32 {
        match self {
            Self::Gtk3 => 3,
            Self::Gtk4 | Self::None => 4,
        }
    }
}

fn loaded(symbol: &CStr) -> bool {
    // SAFETY: dlsym on the global scope with a NUL-terminated name only reads.
    !unsafe { libc::dlsym(libc::RTLD_DEFAULT, symbol.as_ptr()) }.is_null()
}

/// GTK 3 has `gtk_container_add`, GTK 4 does not; both have `gtk_widget_show`.
pub fn host_gtk() -> Gtk {
    if loaded(c"gtk_container_add") {
        Gtk::Gtk3
    } else if loaded(c"gtk_widget_show") {
        Gtk::Gtk4
    } else {
        Gtk::None
    }
}

/// The directory this library was loaded from (dladdr on one of its functions).
pub fn own_dir() -> Option<PathBuf> {
    let mut info = libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    // SAFETY: dladdr fills `info` for an address inside a loaded object; `host_gtk` is ours.
    let found = unsafe { libc::dladdr(host_gtk as *const c_void, &mut info) };
    if found == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dli_fname is a NUL-terminated path owned by the loader, valid while loaded.
    let file = unsafe { CStr::from_ptr(info.dli_fname) };
    Path::new(OsStr::from_bytes(file.to_bytes()))
        .parent()
        .map(Path::to_path_buf)
}

/// The editor library for `gtk` in `dir`.
pub fn library_path(dir: &Path, gtk: Gtk) -> PathBuf {
    dir.join(if gtk == Gtk::Gtk3 { GTK3_LIBRARY } else { GTK4_LIBRARY })
}

/// Whether an editor library usable in this process is installed (without GTK: either).
pub fn editor_available() -> bool {
    let Some(dir) = own_dir() else {
        return false;
    };
    match host_gtk() {
        Gtk::None => library_path(&dir, Gtk::Gtk3).is_file() || library_path(&dir, Gtk::Gtk4).is_file(),
        gtk => library_path(&dir, gtk).is_file(),
    }
}

/// Handles already opened, by path (never closed; see the module documentation).
static OPENED: Mutex<Vec<(PathBuf, usize)>> = Mutex::new(Vec::new());

/// Opens the editor library for the host's GTK and returns its factory.
pub fn load_factory() -> Result<EditorFactory, String> {
    let gtk = host_gtk();
    let dir = own_dir().ok_or("cannot tell where libnm-vpn-plugin-tsp.so was loaded from")?;
    let path = library_path(&dir, gtk);
    if !path.is_file() {
        return Err(format!(
            "the tsp editor for GTK {} is not installed ({} is missing)",
            gtk.major(),
            path.display()
        ));
    }
    let mut opened = OPENED.lock().unwrap_or_else(|e| e.into_inner());
    let handle = match opened.iter().find(|(p, _)| *p == path) {
        Some((_, h)) => *h as *mut c_void,
        None => {
            let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| "library path has a NUL byte")?;
            // SAFETY: dlopen of a NUL-terminated path; the library's initialisers run here.
            let h = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL) };
            if h.is_null() {
                return Err(format!("cannot load {}: {}", path.display(), dl_error()));
            }
            opened.push((path.clone(), h as usize));
            h
        }
    };
    // SAFETY: dlsym on a live handle with a NUL-terminated name.
    let sym = unsafe { libc::dlsym(handle, FACTORY_SYMBOL.as_ptr()) };
    if sym.is_null() {
        return Err(format!(
            "{} has no {}: {}",
            path.display(),
            FACTORY_SYMBOL.to_string_lossy(),
            dl_error()
        ));
    }
    // SAFETY: the symbol is the factory with the C signature of the contract above.
    Ok(unsafe { std::mem::transmute::<*mut c_void, EditorFactory>(sym) })
}

fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated message valid until the next dl call.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".to_owned()
    } else {
        // SAFETY: non-NULL, NUL-terminated (see above).
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}
