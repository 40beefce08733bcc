//! The Debian packages `data/debian/build.sh` makes (cargo-deb, into `target/debian/`), read back
//! with dpkg-deb: each holds what it must, where Debian and NetworkManager look for it, with the
//! right modes, dependencies from the real shared-library needs, conffiles and maintainer
//! scripts; the paths the `.name` file and the units name exist in the packages; the packaged
//! configurations parse. lintian runs in build.sh itself.
//!
//! `tests/run.sh` builds the packages before the tests and sets `NM_TSP_REQUIRE_PACKAGES=1`, so
//! in CI a missing package fails; elsewhere the test skips with the reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const VERSION: &str = "0.1.0-1";
const NM_PLUGINDIR: &str = "usr/lib/x86_64-linux-gnu/NetworkManager";

fn deb_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("debian")
}

/// The package file, or `None` (with the reason printed) when it was not built here.
fn deb(name: &str) -> Option<PathBuf> {
    let path = deb_dir().join(format!("{name}_{VERSION}_amd64.deb"));
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("NM_TSP_REQUIRE_PACKAGES").is_none(),
        "{} is missing: data/debian/build.sh did not make it",
        path.display()
    );
    eprintln!("skipped: {} not built (bash data/debian/build.sh)", path.display());
    None
}

fn dpkg_deb(args: &[&str]) -> String {
    let out = Command::new("dpkg-deb").args(args).output().expect("dpkg-deb");
    assert!(
        out.status.success(),
        "dpkg-deb {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Path (without the leading `./`) → mode string (`-rwxr-xr-x`), directories left out.
fn contents(deb: &Path) -> BTreeMap<String, String> {
    dpkg_deb(&["-c", &deb.to_string_lossy()])
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (mode, path) = (f.first()?, f.get(5)?);
            (!mode.starts_with('d')).then(|| (path.trim_start_matches("./").to_owned(), (*mode).to_owned()))
        })
        .collect()
}

fn field(deb: &Path, name: &str) -> String {
    dpkg_deb(&["-f", &deb.to_string_lossy(), name]).trim().to_owned()
}

/// A file of the package's data, as text.
fn file(deb: &Path, path: &str) -> String {
    let tar = Command::new("sh")
        .arg("-c")
        .arg(r#"dpkg-deb --fsys-tarfile "$1" | tar -xOf - "./$2""#)
        .args(["sh", &deb.to_string_lossy(), path])
        .output()
        .expect("tar");
    assert!(tar.status.success(), "{path} not in {}", deb.display());
    String::from_utf8(tar.stdout).expect("utf-8")
}

/// A control file (postinst, conffiles …), empty when absent.
fn control(deb: &Path, name: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"dpkg-deb --ctrl-tarfile "$1" | tar -xOf - "./$2" 2>/dev/null"#)
        .args(["sh", &deb.to_string_lossy(), name])
        .output()
        .expect("tar");
    String::from_utf8(out.stdout).expect("utf-8")
}

fn assert_files(deb: &Path, files: &[(&str, &str)]) {
    let have = contents(deb);
    for (path, mode) in files {
        assert_eq!(
            have.get(*path).map(String::as_str),
            Some(*mode),
            "{path} in {}: {have:?}",
            deb.display()
        );
    }
}

/// `key=value` of an ini-style file (first match).
fn ini(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {text}"))
        .trim()
        .to_owned()
}

#[test]
fn network_manager_tsp() {
    let Some(deb) = deb("network-manager-tsp") else { return };
    assert_files(
        &deb,
        &[
            ("usr/libexec/nm-tsp-service", "-rwxr-xr-x"),
            ("usr/libexec/nm-tsp-auth-dialog", "-rwxr-xr-x"),
            (&format!("{NM_PLUGINDIR}/libnm-vpn-plugin-tsp.so"), "-rw-r--r--"),
            ("usr/lib/NetworkManager/VPN/nm-tsp-service.name", "-rw-r--r--"),
            ("usr/share/dbus-1/system.d/nm-tsp-service.conf", "-rw-r--r--"),
            ("usr/share/man/man8/nm-tsp-service.8.gz", "-rw-r--r--"),
            ("usr/share/man/man1/nm-tsp-auth-dialog.1.gz", "-rw-r--r--"),
            ("usr/share/doc/network-manager-tsp/copyright", "-rw-r--r--"),
        ],
    );
    // Every program and library the .name file names is in the package, at that path.
    let name = file(&deb, "usr/lib/NetworkManager/VPN/nm-tsp-service.name");
    let have = contents(&deb);
    for key in ["program", "plugin", "auth-dialog"] {
        let path = ini(&name, key);
        assert!(
            have.contains_key(path.trim_start_matches('/')),
            "{key}={path} is not in the package"
        );
    }
    assert_eq!(ini(&name, "service"), tsp_config::names::SERVICE);
    let depends = field(&deb, "Depends");
    for dep in ["libnm0", "libglib2.0-0", "libc6", "network-manager", "dbus", "adduser"] {
        assert!(depends.contains(dep), "Depends: {depends}");
    }
    // The system bus reads the policy at install and forgets it at removal.
    let postinst = control(&deb, "postinst");
    assert!(postinst.contains("ReloadConfig"));
    assert!(control(&deb, "postrm").contains("ReloadConfig"));
    // The service's user is made by the package, and the policy lets that user own the name
    // (the system tier checks the running service's uid).
    let user = tsp_config::names::SERVICE_USER;
    assert!(postinst.contains("adduser --system") && postinst.contains(&format!(" {user}\n")));
    let policy = file(&deb, "usr/share/dbus-1/system.d/nm-tsp-service.conf");
    assert!(
        policy.contains(&format!(
            "<policy user=\"{user}\">\n    <allow own_prefix=\"{}\"/>",
            tsp_config::names::SERVICE
        )),
        "the D-Bus policy lets {user} own the service's names: {policy}"
    );
}

#[test]
fn network_manager_tsp_gnome() {
    let Some(gnome) = deb("network-manager-tsp-gnome") else {
        return;
    };
    assert_files(
        &gnome,
        &[
            (&format!("{NM_PLUGINDIR}/libnm-vpn-plugin-tsp-editor.so"), "-rw-r--r--"),
            (
                &format!("{NM_PLUGINDIR}/libnm-gtk4-vpn-plugin-tsp-editor.so"),
                "-rw-r--r--",
            ),
        ],
    );
    let depends = field(&gnome, "Depends");
    for dep in ["libgtk-3-0", "libgtk-4-1", "libnm0"] {
        assert!(depends.contains(dep), "Depends: {depends}");
    }
    // Exactly this build's base plugin, which loads the editors from its own directory.
    let base = deb("network-manager-tsp").map_or_else(|| VERSION.to_owned(), |d| field(&d, "Version"));
    assert!(
        depends.contains(&format!("network-manager-tsp (= {base})")),
        "Depends: {depends}"
    );
}

#[test]
fn tspc() {
    let Some(deb) = deb("tspc") else { return };
    assert_files(
        &deb,
        &[
            ("usr/sbin/tspc", "-rwxr-xr-x"),
            ("usr/lib/systemd/system/tspc.service", "-rw-r--r--"),
            ("etc/gogoc/gogoc.conf", "-rw-------"),
            ("usr/share/man/man8/tspc.8.gz", "-rw-r--r--"),
        ],
    );
    assert_eq!(control(&deb, "conffiles").trim(), "/etc/gogoc/gogoc.conf");
    let unit = file(&deb, "usr/lib/systemd/system/tspc.service");
    assert!(ini(&unit, "ExecStart").starts_with("/usr/sbin/tspc "), "{unit}");
    assert_eq!(ini(&unit, "CapabilityBoundingSet"), "CAP_NET_ADMIN CAP_NET_RAW");
    // The configuration the package installs is one tspc accepts as it is.
    let conf = file(&deb, "etc/gogoc/gogoc.conf");
    tsp_config::parse_without_password(&conf, Path::new("/etc/gogoc/gogoc.conf"))
        .expect("the packaged gogoc.conf parses");
}

#[test]
fn tsp_broker() {
    let Some(deb) = deb("tsp-broker") else { return };
    assert_files(
        &deb,
        &[
            ("usr/sbin/tsp-broker", "-rwxr-xr-x"),
            ("usr/lib/systemd/system/tsp-broker.service", "-rw-r--r--"),
            ("etc/tsp-broker/broker.toml", "-rw-r--r--"),
            ("usr/share/man/man8/tsp-broker.8.gz", "-rw-r--r--"),
        ],
    );
    assert_eq!(control(&deb, "conffiles").trim(), "/etc/tsp-broker/broker.toml");
    // Its own system user, the two capabilities tunnels need, hardening, state in /var/lib.
    let unit = file(&deb, "usr/lib/systemd/system/tsp-broker.service");
    assert_eq!(
        ini(&unit, "ExecStart"),
        "/usr/sbin/tsp-broker -c /etc/tsp-broker/broker.toml"
    );
    assert_eq!(ini(&unit, "User"), "tsp-broker");
    assert_eq!(ini(&unit, "DynamicUser"), "yes");
    assert_eq!(ini(&unit, "CapabilityBoundingSet"), "CAP_NET_ADMIN CAP_NET_RAW");
    assert_eq!(ini(&unit, "AmbientCapabilities"), "CAP_NET_ADMIN CAP_NET_RAW");
    assert_eq!(ini(&unit, "StateDirectory"), "tsp-broker");
    // systemd's readiness, reload and watchdog protocol; the control socket's directory.
    assert_eq!(ini(&unit, "Type"), "notify");
    assert_eq!(ini(&unit, "ExecReload"), "kill -HUP $MAINPID");
    assert!(!ini(&unit, "WatchdogSec").is_empty(), "{unit}");
    assert_eq!(ini(&unit, "RuntimeDirectory"), "tsp-broker");
    for hardening in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "ProtectHome=yes",
    ] {
        assert!(unit.lines().any(|l| l == hardening), "{hardening} missing: {unit}");
    }
    let conf = file(&deb, "etc/tsp-broker/broker.toml");
    tsp_broker::config::BrokerConfig::parse(&conf, Path::new("/etc/tsp-broker/broker.toml"))
        .expect("the packaged broker.toml parses");
    // Purge takes the state with it.
    assert!(control(&deb, "postrm").contains("rm -rf /var/lib/private/tsp-broker"));
}
