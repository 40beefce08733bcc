//! The GTK3 editor inside the real nm-connection-editor (network-manager-gnome), on a private
//! X server (Xvfb) and a private NetworkManager (tests/testbed): the `.name` file's
//! `[libnm] plugin=` names the base plugin (`libnm-vpn-plugin-tsp.so`), which dlopens
//! `libnm-vpn-plugin-tsp-editor.so` from its own directory. The editor libraries report what
//! happens through `NM_TSP_EDITOR_TRACE` (key names and results only); a screenshot of the
//! screen goes to `target/editor-screenshots/nm-connection-editor.png`.
//!
//! Needs the base plugin, built by the workspace member that provides it; without it the test
//! says so and does nothing.

mod netns;
mod testbed;

use std::io::Read as _;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use netns::{Lab, bin, require_root};
use testbed::{Nm, require_nm, wait_until};

/// Xvfb on a display it picks itself, killed on drop.
struct Xvfb {
    child: Child,
    display: String,
}

impl Xvfb {
    fn start() -> Xvfb {
        // pipe(2) without O_CLOEXEC: the write end is inherited by Xvfb.
        let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
        let mut reader = std::fs::File::from(read_end);
        let child = Command::new("Xvfb")
            .args([
                "-displayfd",
                &write_end.as_raw_fd().to_string(),
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
        // Our copy of the write end: Xvfb's is the only one left.
        drop(write_end);
        let child = child.expect("Xvfb (tests/run.sh installs xvfb)");
        let mut n = String::new();
        let mut byte = [0u8; 1];
        while reader.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' && n.len() < 16 {
            n.push(char::from(byte[0]));
        }
        assert!(
            !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()),
            "Xvfb display {n:?}"
        );
        Xvfb {
            child,
            display: format!(":{n}"),
        }
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The plugin directory: the `.name` file, the base plugin and both editors under their
/// installed names (mode 0644, root-owned: libnm refuses anything else).
fn plugin_dir(lab: &Lab) -> Option<PathBuf> {
    let base = bin("libnm_vpn_plugin_tsp.so");
    if !base.is_file() {
        println!(
            "skipped: {} is not built (the base plugin, libnm-vpn-plugin-tsp.so, loads the editor)",
            base.display()
        );
        return None;
    }
    let dir = lab.dir().join("vpn-plugins");
    std::fs::create_dir_all(&dir).expect("plugin dir");
    for (built, installed) in [
        ("libnm_vpn_plugin_tsp.so", "libnm-vpn-plugin-tsp.so"),
        ("libnm_vpn_plugin_tsp_editor.so", "libnm-vpn-plugin-tsp-editor.so"),
        (
            "libnm_gtk4_vpn_plugin_tsp_editor.so",
            "libnm-gtk4-vpn-plugin-tsp-editor.so",
        ),
    ] {
        let to = dir.join(installed);
        std::fs::copy(bin(built), &to).unwrap_or_else(|e| panic!("{built}: {e}"));
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let name = format!(
        "[VPN Connection]\nname=tsp\nservice={}\nprogram={}\n\
         supports-multiple-connections=true\n\n[libnm]\nplugin={}\n",
        tsp_config::names::SERVICE,
        bin("nm-tsp-service").display(),
        dir.join("libnm-vpn-plugin-tsp.so").display()
    );
    testbed::write(&dir.join("nm-tsp-service.name"), &name, 0o644).expect(".name file");
    Some(dir)
}

fn screenshot(display: &str, file: &str) -> Option<PathBuf> {
    // target/<profile>/deps/<test> → target/editor-screenshots
    let dir = std::env::current_exe()
        .ok()?
        .ancestors()
        .nth(3)?
        .join("editor-screenshots");
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join(file);
    let ok = Command::new("import")
        .args(["-display", display, "-window", "root"])
        .arg(&path)
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn nm_connection_editor_shows_the_gtk3_editor() {
    if !require_root() || !require_nm() {
        return;
    }
    let lab = Lab::new("nm_connection_editor").expect("lab");
    let Some(plugins) = plugin_dir(&lab) else {
        return;
    };
    let c = lab.host("c").expect("host");
    let nm = Nm::start(&lab, &c).expect("NetworkManager");
    nm.add_vpn(
        "tsp-gui",
        "server=192.0.2.1, auth-method=digest-md5, username=alice, tunnel-mode=v6v4, password-flags=0",
        Some("password=s3cret"),
        &[],
    )
    .expect("profile");
    let uuid = nm.con_field("tsp-gui", "connection.uuid");
    assert!(!uuid.is_empty(), "no uuid");

    let xvfb = Xvfb::start();
    let trace = lab.dir().join("editor-trace");
    let log = lab.dir().join("nm-connection-editor.log");
    let mut editor = Command::new("nm-connection-editor")
        .arg(format!("--edit={uuid}"))
        .env("DISPLAY", &xvfb.display)
        .env("GDK_BACKEND", "x11")
        .env("GTK_THEME", "Adwaita")
        .env("NO_AT_BRIDGE", "1")
        .env_remove("WAYLAND_DISPLAY")
        .env("DBUS_SYSTEM_BUS_ADDRESS", &nm.bus_addr)
        .env("NM_VPN_PLUGIN_DIR", &plugins)
        .env("NM_TSP_EDITOR_TRACE", &trace)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::fs::File::create(lab.dir().join("nm-connection-editor.err")).expect("log"))
        .spawn()
        .expect("nm-connection-editor (tests/run.sh installs network-manager-gnome)");
    let shown = wait_until(Duration::from_secs(30), || read(&trace).contains("gtk3 update"));
    // Drawn by now or never; the picture is for people, the trace for the test.
    std::thread::sleep(Duration::from_secs(2));
    let shot = screenshot(&xvfb.display, "nm-connection-editor.png");
    let _ = editor.kill();
    let _ = editor.wait();
    let stderr = read(&lab.dir().join("nm-connection-editor.err"));
    let t = read(&trace);
    assert!(
        shown.is_ok(),
        "the editor was not made or validated within 30 s; trace: {t:?}\nnm-connection-editor said:\n{}",
        testbed::tail(&stderr, 30)
    );
    eprintln!("trace:\n{t}screenshot: {shot:?}");
    // Made by the GTK3 library, from the profile's vpn.data (and its system-owned secret).
    assert!(
        t.contains("gtk3 editor data: auth-method password-flags server tunnel-mode username;"),
        "{t}"
    );
    assert!(!t.contains("gtk4"), "the GTK4 editor in a GTK3 host: {t}");
    // nm-connection-editor validates the page through update_connection at once.
    assert!(
        t.contains("gtk3 update ok data: auth-method password-flags server tunnel-mode username;"),
        "{t}"
    );
    assert!(
        !t.contains("s3cret") && !t.contains("alice"),
        "values in the trace: {t}"
    );
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("tsp") && ["rror", "ould not", "ailed", "annot"].iter().any(|w| l.contains(w)))
        .collect();
    assert!(complaints.is_empty(), "nm-connection-editor complained:\n{stderr}");
}
