//! data/install.sh into a temporary DESTDIR, with BIN pointing at this build's debug binaries
//! (no release build here): every file in place with its mode, owner and rewritten paths, and
//! `--uninstall` removes all of them.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/install.sh");

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nm-tsp-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A BIN directory: links to the built binaries and libraries (the GTK editors only with
/// `with_editors`: they are optional).
fn bin_dir(dir: &Path, with_editors: bool) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    for (name, built) in [
        ("tspc", env!("CARGO_BIN_EXE_tspc")),
        ("tsp-broker", env!("CARGO_BIN_EXE_tsp-broker")),
        ("nm-tsp-service", env!("CARGO_BIN_EXE_nm-tsp-service")),
        ("nm-tsp-auth-dialog", env!("CARGO_BIN_EXE_nm-tsp-auth-dialog")),
    ] {
        std::os::unix::fs::symlink(built, bin.join(name)).expect("symlink");
    }
    let mut libs = vec![LIB_BASE];
    if with_editors {
        libs.extend(LIB_EDITORS);
    }
    for lib in libs {
        std::os::unix::fs::symlink(built_lib(lib), bin.join(lib)).expect("symlink");
    }
    bin
}

const LIB_BASE: &str = "libnm_vpn_plugin_tsp.so";
const LIB_EDITORS: [&str; 2] = ["libnm_vpn_plugin_tsp_editor.so", "libnm_gtk4_vpn_plugin_tsp_editor.so"];

/// A library built by a workspace member (target/<profile>/, next to deps/).
fn built_lib(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join(name))
        .expect("target dir")
}

/// Runs the script with a clean set of its variables plus `vars`.
fn install(vars: &[(&str, &Path)], args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("bash");
    cmd.arg(SCRIPT).args(args);
    for v in [
        "PREFIX",
        "DESTDIR",
        "LIBEXECDIR",
        "SBINDIR",
        "NMVPNDIR",
        "NMPLUGINDIR",
        "DBUSPOLICYDIR",
        "MANDIR",
        "DOCDIR",
    ] {
        cmd.env_remove(v);
    }
    cmd.env_remove("SYSTEMDUNITDIR")
        .env_remove("BIN")
        .env_remove("CARGO_TARGET_DIR");
    // Never a cargo build from here: a BIN is always given, and cargo is out of reach.
    cmd.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run install.sh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Every regular file or link under `root`, as "/path" → (mode, uid, gid).
fn tree(root: &Path) -> BTreeMap<String, (u32, u32, u32)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, u32, u32)>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries {
            let path = e.expect("dir entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            if meta.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = format!("/{}", path.strip_prefix(root).expect("under root").display());
                out.insert(rel, (meta.mode() & 0o7777, meta.uid(), meta.gid()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn key_of(text: &str, group: &str, key: &str) -> Option<String> {
    let mut in_group = false;
    for line in text.lines().map(str::trim) {
        if let Some(g) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_group = g == group;
        } else if in_group && let Some(v) = line.strip_prefix(&format!("{key}=")) {
            return Some(v.to_owned());
        }
    }
    None
}

fn expected(prefix: &str, libexec: &str, plugin_so: &str) -> BTreeMap<String, u32> {
    let mut m = BTreeMap::new();
    m.insert(plugin_so.to_owned(), 0o644);
    let plugin_dir = Path::new(plugin_so).parent().expect("plugin dir");
    for editor in ["libnm-vpn-plugin-tsp-editor.so", "libnm-gtk4-vpn-plugin-tsp-editor.so"] {
        m.insert(plugin_dir.join(editor).display().to_string(), 0o644);
    }
    for f in ["nm-tsp-service", "nm-tsp-auth-dialog"] {
        m.insert(format!("{libexec}/{f}"), 0o755);
    }
    for f in ["tspc", "tsp-broker"] {
        m.insert(format!("{prefix}/sbin/{f}"), 0o755);
    }
    for f in [
        "lib/NetworkManager/VPN/nm-tsp-service.name",
        "share/dbus-1/system.d/nm-tsp-service.conf",
        "share/man/man8/tspc.8",
        "share/man/man8/tsp-broker.8",
        "share/man/man8/nm-tsp-service.8",
        "share/man/man1/nm-tsp-auth-dialog.1",
        "lib/systemd/system/tspc.service",
        "lib/systemd/system/tsp-broker.service",
        "share/doc/nm-tsp/examples/gogoc.conf",
        "share/doc/nm-tsp/examples/tsp-broker.toml",
    ] {
        m.insert(format!("{prefix}/{f}"), 0o644);
    }
    m
}

fn read(root: &Path, path: &str) -> String {
    std::fs::read_to_string(root.join(path.trim_start_matches('/'))).expect(path)
}

/// `plugin_so`: where the editor plugin must be, as the .name file names it.
fn check_tree(root: &Path, prefix: &str, libexec: &str, plugin_so: &str) {
    let got = tree(root);
    let want = expected(prefix, libexec, plugin_so);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "installed files"
    );
    let root_user = nix::unistd::geteuid().is_root();
    for (path, (mode, uid, gid)) in &got {
        assert_eq!(*mode, want[path], "mode of {path}: {mode:o}");
        if root_user {
            assert_eq!((*uid, *gid), (0, 0), "owner of {path}");
        }
        let meta = std::fs::symlink_metadata(root.join(path.trim_start_matches('/'))).expect("meta");
        assert!(
            meta.file_type().is_file(),
            "{path} is a regular file (links are followed)"
        );
    }
    // The binaries are the ones given in BIN.
    let size = |p: &str| std::fs::metadata(p).expect("built binary").len();
    let installed = |p: &str| {
        std::fs::metadata(root.join(p.trim_start_matches('/')))
            .expect("installed")
            .len()
    };
    assert_eq!(
        installed(&format!("{libexec}/nm-tsp-auth-dialog")),
        size(env!("CARGO_BIN_EXE_nm-tsp-auth-dialog"))
    );
    assert_eq!(
        installed(&format!("{prefix}/sbin/tspc")),
        size(env!("CARGO_BIN_EXE_tspc"))
    );
    assert_eq!(
        installed(&format!("{libexec}/nm-tsp-service")),
        size(env!("CARGO_BIN_EXE_nm-tsp-service"))
    );
    assert_eq!(installed(plugin_so), size(&built_lib(LIB_BASE).display().to_string()));

    // The .name file parses and points at LIBEXECDIR; everything else is as in the tree.
    let name = read(root, &format!("{prefix}/lib/NetworkManager/VPN/nm-tsp-service.name"));
    let src = include_str!("../nm-plugin/nm-tsp-service.name");
    assert_eq!(
        key_of(&name, "VPN Connection", "program"),
        Some(format!("{libexec}/nm-tsp-service"))
    );
    assert_eq!(
        key_of(&name, "GNOME", "auth-dialog"),
        Some(format!("{libexec}/nm-tsp-auth-dialog"))
    );
    assert_eq!(key_of(&name, "libnm", "plugin").as_deref(), Some(plugin_so));
    for (g, k) in [
        ("VPN Connection", "name"),
        ("VPN Connection", "service"),
        ("VPN Connection", "supports-multiple-connections"),
        ("VPN Connection", "supports-safe-private-file-access"),
        ("GNOME", "supports-external-ui-mode"),
        ("GNOME", "supports-hints"),
    ] {
        assert_eq!(key_of(&name, g, k), key_of(src, g, k), "[{g}] {k}");
        assert!(key_of(&name, g, k).is_some(), "[{g}] {k}");
    }
    assert_eq!(name.lines().count(), src.lines().count());
    assert_eq!(
        read(root, &format!("{prefix}/share/dbus-1/system.d/nm-tsp-service.conf")),
        include_str!("../dbus/nm-tsp-service.conf")
    );
    assert_eq!(
        read(root, &format!("{prefix}/share/man/man1/nm-tsp-auth-dialog.1")),
        include_str!("../data/man/nm-tsp-auth-dialog.1")
    );
    // The units start the programs from SBINDIR.
    for (unit, prog) in [("tspc", "tspc"), ("tsp-broker", "tsp-broker")] {
        let text = read(root, &format!("{prefix}/lib/systemd/system/{unit}.service"));
        let exec = text.lines().find(|l| l.starts_with("ExecStart=")).expect("ExecStart");
        assert!(exec.starts_with(&format!("ExecStart={prefix}/sbin/{prog} ")), "{exec}");
    }
}

#[test]
fn install_and_uninstall_into_a_destdir() {
    let dir = scratch("install");
    let bin = bin_dir(&dir, true);
    let dest = dir.join("root");

    // Defaults: PREFIX=/usr, LIBEXECDIR=/usr/libexec; the .name file comes out as in the tree.
    let (ok, out) = install(&[("DESTDIR", &dest), ("BIN", &bin)], &[]);
    assert!(ok, "{out}");
    assert!(!out.contains("cargo build"), "{out}");
    // The tree's .name names Debian's libnm plugindir (amd64), which pkg-config reports here.
    let plugin_so = key_of(include_str!("../nm-plugin/nm-tsp-service.name"), "libnm", "plugin").expect("plugin=");
    check_tree(&dest, "/usr", "/usr/libexec", &plugin_so);
    assert_eq!(
        read(&dest, "/usr/lib/NetworkManager/VPN/nm-tsp-service.name"),
        include_str!("../nm-plugin/nm-tsp-service.name")
    );
    assert!(
        !out.contains("ReloadConfig"),
        "no reload hint for a DESTDIR install: {out}"
    );
    // Installing again over it is fine.
    let (ok, out) = install(&[("DESTDIR", &dest), ("BIN", &bin)], &["--install"]);
    assert!(ok, "{out}");
    // A file of someone else's next to ours survives the uninstall.
    let foreign = dest.join("usr/lib/NetworkManager/VPN/nm-openvpn-service.name");
    std::fs::write(&foreign, "[VPN Connection]\n").expect("foreign file");
    let (ok, out) = install(&[("DESTDIR", &dest), ("BIN", &bin)], &["--uninstall"]);
    assert!(ok, "{out}");
    assert_eq!(
        tree(&dest).keys().collect::<Vec<_>>(),
        ["/usr/lib/NetworkManager/VPN/nm-openvpn-service.name"]
    );
    std::fs::remove_file(&foreign).expect("rm");
    assert!(!dest.join("usr/share/doc/nm-tsp").exists(), "our own doc dir is gone");

    // Another PREFIX and LIBEXECDIR: paths rewritten in the .name file and the units.
    let dest2 = dir.join("root2");
    let vars = [
        ("DESTDIR", dest2.as_path()),
        ("BIN", bin.as_path()),
        ("PREFIX", Path::new("/usr/local")),
        ("LIBEXECDIR", Path::new("/usr/local/lib/nm-tsp")),
    ];
    let (ok, out) = install(&vars, &[]);
    assert!(ok, "{out}");
    let plugin_so = plugin_so.replacen("/usr/", "/usr/local/", 1);
    check_tree(&dest2, "/usr/local", "/usr/local/lib/nm-tsp", &plugin_so);
    assert!(out.contains("NetworkManager reads .name files only from"), "{out}");
    let (ok, out) = install(&vars, &["--uninstall"]);
    assert!(ok, "{out}");
    assert!(tree(&dest2).is_empty(), "left behind: {:?}", tree(&dest2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_binaries() {
    let dir = scratch("install-missing");
    let dest = dir.join("root");
    // No GTK editors: everything else goes in, and the script says so.
    let bin = bin_dir(&dir, false);
    let (ok, out) = install(&[("DESTDIR", &dest), ("BIN", &bin)], &[]);
    assert!(ok, "{out}");
    assert!(out.contains("libnm_vpn_plugin_tsp_editor.so is not built"), "{out}");
    assert!(out.contains("cannot edit tsp connections"), "{out}");
    let got = tree(&dest);
    assert!(!got.keys().any(|k| k.contains("tsp-editor")), "{got:?}");
    assert!(got.contains_key("/usr/libexec/nm-tsp-service"));
    assert!(got.contains_key("/usr/libexec/nm-tsp-auth-dialog"));
    assert!(got.contains_key("/usr/lib/NetworkManager/VPN/nm-tsp-service.name"));
    let (ok, out) = install(&[("DESTDIR", &dest)], &["--uninstall"]);
    assert!(ok, "{out}");
    assert!(tree(&dest).is_empty());
    // A required binary missing: refused before anything is installed.
    std::fs::remove_file(bin.join("tsp-broker")).expect("rm");
    let (ok, out) = install(&[("DESTDIR", &dest), ("BIN", &bin)], &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("tsp-broker is missing"), "{out}");
    assert!(tree(&dest).is_empty());
    // Bad settings.
    let (ok, out) = install(&[("DESTDIR", &dest), ("BIN", &bin), ("PREFIX", Path::new("usr"))], &[]);
    assert!(!ok && out.contains("absolute"), "{out}");
    let (ok, out) = install(&[("DESTDIR", &dest)], &["--bogus"]);
    assert!(!ok && out.contains("unknown argument"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
