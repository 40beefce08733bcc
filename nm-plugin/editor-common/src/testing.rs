//! What the editors' tests share: a private X server and libnm connections.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::io::Read as _;
use std::os::fd::FromRawFd as _;
use std::process::{Child, Command, Stdio};
use std::ptr;

use crate::nm;

/// An Xvfb on a display it picked itself (`-displayfd`), killed on drop.
pub struct Xvfb {
    child: Child,
    /// `:N`, for `DISPLAY`.
    pub display: String,
}

impl Xvfb {
    /// Starts Xvfb (1024x768, 24 bits) and waits until it accepts clients; `None` with the
    /// reason when it cannot run here.
    pub fn start() -> Result<Xvfb, String> {
        let mut fds = [0; 2];
        // SAFETY: plain pipe(2); the write end is inherited by Xvfb (no CLOEXEC).
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return Err(format!("pipe: {}", std::io::Error::last_os_error()));
        }
        let (rd, wr) = (fds[0], fds[1]);
        // SAFETY: both ends are ours alone from here on.
        let mut reader = unsafe { std::fs::File::from_raw_fd(rd) };
        let spawned = Command::new("Xvfb")
            .args([
                "-displayfd",
                &wr.to_string(),
                "-screen",
                "0",
                "1024x768x24",
                "-nolisten",
                "tcp",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        // SAFETY: the parent's copy of the write end, so EOF comes when Xvfb closes it.
        unsafe { libc::close(wr) };
        let child = spawned.map_err(|e| format!("Xvfb cannot be started ({e}); install the xvfb package"))?;
        let mut xvfb = Xvfb {
            child,
            display: String::new(),
        };
        // Xvfb writes the display number once it listens.
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while reader.read(&mut byte).map_err(|e| e.to_string())? == 1 && byte[0] != b'\n' {
            buf.push(byte[0]);
            if buf.len() > 16 {
                break;
            }
        }
        let n = String::from_utf8_lossy(&buf).trim().to_owned();
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("Xvfb gave no display number ({n:?})"));
        }
        xvfb.display = format!(":{n}");
        Ok(xvfb)
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A new `NMConnection` with a tsp vpn setting carrying `data` and `secrets`; the caller
/// releases it with [`free_connection`].
pub fn new_connection(data: &BTreeMap<String, String>, secrets: &BTreeMap<String, String>) -> *mut nm::NMConnection {
    // SAFETY: libnm constructors; write_vpn gets the fresh connection.
    unsafe {
        let c = nm::nm_simple_connection_new();
        assert!(!c.is_null(), "nm_simple_connection_new failed");
        nm::write_vpn(c, data, secrets).expect("test data has no NUL bytes");
        c
    }
}

/// Releases a connection made by [`new_connection`].
///
/// # Safety
/// `c` is a connection the caller holds one reference to, not used afterwards.
pub unsafe fn free_connection(c: *mut nm::NMConnection) {
    // SAFETY: caller's contract.
    unsafe { nm::g_object_unref(c.cast()) };
}

/// The vpn setting's service type.
///
/// # Safety
/// `c` is a valid connection.
pub unsafe fn service_type(c: *mut nm::NMConnection) -> Option<String> {
    // SAFETY: caller's contract; the string is owned by the setting.
    unsafe {
        let s = nm::nm_connection_get_setting_vpn(c);
        if s.is_null() {
            return None;
        }
        let t = nm::nm_setting_vpn_get_service_type(s);
        (!t.is_null()).then(|| CStr::from_ptr(t).to_string_lossy().into_owned())
    }
}

/// Takes the message out of a `GError` (and frees it).
///
/// # Safety
/// `e` is null or a `GError` GLib made, not used afterwards.
pub unsafe fn take_error(e: *mut nm::GError) -> Option<String> {
    if e.is_null() {
        return None;
    }
    // SAFETY: caller's contract; freed once.
    unsafe {
        let m = if (*e).message.is_null() {
            String::new()
        } else {
            CStr::from_ptr((*e).message).to_string_lossy().into_owned()
        };
        nm::g_error_free(e);
        Some(m)
    }
}

/// A map from pairs.
pub fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// A null `GError*` to pass as `&mut`.
pub fn no_error() -> *mut nm::GError {
    ptr::null_mut()
}

/// The factory every editor library exports.
pub type Factory = unsafe extern "C" fn(
    *mut nm::NMVpnEditorPlugin,
    *mut nm::NMConnection,
    *mut *mut nm::GError,
) -> *mut nm::NMVpnEditor;

/// Copies the editor library cargo built (`lib<crate_lib_name>.so`, beside the test's
/// `deps/` directory) under its installed name into a fresh directory, dlopens it the way
/// the base plugin does (RTLD_LAZY | RTLD_LOCAL) and returns `nm_vpn_editor_factory_tsp`.
pub fn load_editor(crate_lib_name: &str, installed_name: &str) -> Result<Factory, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let deps = exe.parent().ok_or("test binary has no directory")?;
    let file = format!("lib{crate_lib_name}.so");
    let built = [deps.join(&file), deps.parent().unwrap_or(deps).join(&file)]
        .into_iter()
        .find(|p| p.exists())
        .ok_or_else(|| format!("{file} was not built next to {}", deps.display()))?;
    let dir = std::env::temp_dir().join(format!("nm-tsp-editor-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let installed = dir.join(installed_name);
    std::fs::copy(&built, &installed).map_err(|e| format!("copy {}: {e}", built.display()))?;
    let path = std::ffi::CString::new(installed.to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: dlopen/dlsym of our own library; the symbol has the Factory signature.
    unsafe {
        let h = libc::dlopen(path.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
        if h.is_null() {
            return Err(format!("dlopen {}: {}", installed.display(), dl_error()));
        }
        let sym = libc::dlsym(h, c"nm_vpn_editor_factory_tsp".as_ptr());
        if sym.is_null() {
            return Err(format!(
                "no nm_vpn_editor_factory_tsp in {installed_name}: {}",
                dl_error()
            ));
        }
        Ok(std::mem::transmute::<*mut libc::c_void, Factory>(sym))
    }
}

fn dl_error() -> String {
    // SAFETY: dlerror returns null or a static string.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown error".to_owned()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

/// Where the editors' screenshots go: `<target>/editor-screenshots/` (created).
pub fn screenshot_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> → target
    let target = exe
        .ancestors()
        .nth(3)
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let dir = target.join("editor-screenshots");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// A tiny pass/fail counter that prints the closing line test runners understand.
#[derive(Default)]
pub struct Checks {
    passed: usize,
}

impl Checks {
    /// Runs one named check (a failed assertion panics and ends the run).
    pub fn run(&mut self, name: &str, f: impl FnOnce()) {
        eprintln!("check {name} ...");
        f();
        eprintln!("check {name} ... ok");
        self.passed += 1;
    }

    /// Prints `<what>: N passed, 0 failed`.
    pub fn finish(self, what: &str) {
        println!("{what}: {} passed, 0 failed", self.passed);
    }
}

/// Whether a shared object whose file name starts with `prefix` (e.g. `libgtk-4.so`) is
/// mapped into this process.
pub fn mapped(prefix: &str) -> bool {
    std::fs::read_to_string("/proc/self/maps").is_ok_and(|maps| {
        maps.lines()
            .filter_map(|l| l.rsplit('/').next())
            .any(|file| file.starts_with(prefix))
    })
}
