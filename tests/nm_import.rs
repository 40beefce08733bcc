//! `nmcli connection import type tsp` / `nmcli connection export` through the built libnm
//! editor plugin (`libnm-vpn-plugin-tsp.so`, nm-plugin/libnm-plugin), against a real
//! NetworkManager (tests/testbed) and the real nmcli, and the imported profile connecting to
//! the bundled broker. Root only; skips otherwise.
//!
//! How nmcli finds the plugin: nmcli runs on the host, outside NetworkManager's mount
//! namespace, and reads `.name` files itself. libnm also reads the directory named by
//! `NM_VPN_PLUGIN_DIR` (first, before /usr/lib/NetworkManager/VPN and /etc/NetworkManager/VPN),
//! so each test writes a `.name` file with `[libnm] plugin=` pointing at a root-owned copy of
//! the built library into a directory of its own and runs nmcli with that variable; nothing is
//! installed on the host.

mod netns;
mod testbed;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use netns::{Lab, Output, bin, require_root};
use testbed::{Nm, require_nm};

const SEC: Duration = Duration::from_secs(1);
const PASSWORD: &str = "s3cret-Pa55";

/// The plugin directory for nmcli: the `.name` file and the library (copied, mode 0644: libnm
/// loads only files owned by root or the caller and not writable by group or others).
fn plugin_dir(lab: &Lab) -> PathBuf {
    let dir = lab.dir().join("vpn-plugins");
    std::fs::create_dir_all(&dir).unwrap();
    let built = bin("libnm_vpn_plugin_tsp.so");
    assert!(
        built.is_file(),
        "{} is not built (cargo build builds the workspace's nm-tsp-editor-plugin)",
        built.display()
    );
    let so = dir.join("libnm-vpn-plugin-tsp.so");
    std::fs::copy(&built, &so).unwrap();
    std::fs::set_permissions(&so, std::fs::Permissions::from_mode(0o644)).unwrap();
    let name = format!(
        "[VPN Connection]\nname=tsp\nservice={}\nprogram={}\n\
         supports-multiple-connections=true\n\n[libnm]\nplugin={}\n\n[GNOME]\nauth-dialog={}\n\
         supports-external-ui-mode=true\nsupports-hints=true\n",
        tsp_config::names::SERVICE,
        bin("nm-tsp-service").display(),
        so.display(),
        bin("nm-tsp-auth-dialog").display()
    );
    testbed::write(&dir.join("nm-tsp-service.name"), &name, 0o644).unwrap();
    dir
}

/// nmcli against `nm`'s bus, with the plugin directory and extra environment.
fn nmcli(nm: &Nm, plugins: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = std::process::Command::new("nmcli");
    c.args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &nm.bus_addr)
        .env("NM_VPN_PLUGIN_DIR", plugins);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run nmcli");
    Output {
        command: format!("nmcli {}", args.join(" ")),
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        timed_out: false,
    }
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success() && !out.stderr.contains("Error:"),
        "`{}` failed ({}): {}{}",
        out.command,
        out.status,
        out.stdout,
        out.stderr
    );
    out
}

/// `nmcli -g vpn.data` (`k = v, k = v`, `:` escaped as `\:`) as a map.
fn vpn_map(text: &str) -> BTreeMap<String, String> {
    text.trim()
        .replace("\\:", ":")
        .split(", ")
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| kv.split_once(" = "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn data_of(nm: &Nm, plugins: &Path, id: &str) -> BTreeMap<String, String> {
    vpn_map(&ok(nmcli(nm, plugins, &[], &["-g", "vpn.data", "connection", "show", id])).stdout)
}

fn import(nm: &Nm, plugins: &Path, file: &Path) -> Output {
    nmcli(
        nm,
        plugins,
        &[],
        &[
            "connection",
            "import",
            "type",
            "tsp",
            "file",
            &file.display().to_string(),
        ],
    )
}

/// Every gogoc key that has a vpn.data key, at non-default values; then export, re-import
/// (lossless), the password only as a secret, and a malformed file.
#[test]
fn import_export_round_trip_through_nmcli() {
    if !require_root() || !require_nm() {
        return;
    }
    let lab = Lab::new("nm_import").unwrap();
    let c = lab.host("c").unwrap();
    let nm = Nm::start(&lab, &c).unwrap();
    let plugins = plugin_dir(&lab);

    let full = lab
        .file(
            "full.conf",
            &format!(
                "# every key that maps to vpn.data\nuserid=alice\npasswd={PASSWORD}\nserver=broker.example:3653\n\
                 auth_method=digest-md5\nallow_plain=yes\nhost_type=router\nprefixlen=56\nif_prefix=eth1\n\
                 dns_server=ns1.example:ns2.example\nkeepalive=no\nkeepalive_interval=10\ntunnel_mode=v6v4\n\
                 client_v4=192.0.2.2\nclient_v6=2001:db8::2\nalways_use_same_server=yes\nproxy_client=yes\n\
                 retry_delay=5\nretry_delay_max=60\n\
                 # and two that have none\ntemplate=openwrt\nlog_file=2\n"
            ),
        )
        .unwrap();
    let out = ok(import(&nm, &plugins, &full));
    assert!(
        out.stdout.contains("'full'") && out.stdout.contains("successfully added"),
        "{}",
        out.stdout
    );
    // The keys a profile cannot carry are named, with the file.
    assert!(
        out.stderr.contains(&full.display().to_string()) && out.stderr.contains("template, log_file"),
        "no warning about the unsupported keys: {}",
        out.stderr
    );
    let want: BTreeMap<String, String> = [
        ("server", "broker.example:3653"),
        ("auth-method", "digest-md5"),
        ("username", "alice"),
        ("allow-plain", "yes"),
        ("host-type", "router"),
        ("prefix-length", "56"),
        ("lan-interface", "eth1"),
        ("dns-server", "ns1.example:ns2.example"),
        ("keepalive", "no"),
        ("keepalive-interval", "10"),
        ("tunnel-mode", "v6v4"),
        ("client-v4", "192.0.2.2"),
        ("client-v6", "2001:db8::2"),
        ("always-use-same-server", "yes"),
        ("proxy-client", "yes"),
        ("retry-delay", "5"),
        ("retry-delay-max", "60"),
        ("password-flags", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let data = data_of(&nm, &plugins, "full");
    assert_eq!(data, want);
    assert_eq!(nm.con_field("full", "vpn.service-type"), tsp_config::names::SERVICE);
    // The password: never in vpn.data, and — agent-owned — never on NetworkManager's disk (the
    // user's agent keeps it; tests/editor_plugin_load.rs checks the plugin hands it over as a
    // secret).
    let raw = ok(nmcli(
        &nm,
        &plugins,
        &[],
        &["-g", "vpn.data", "connection", "show", "full"],
    ))
    .stdout;
    assert!(!raw.contains(PASSWORD), "password in vpn.data: {raw}");
    let stored: Vec<_> = std::fs::read_dir(nm.connections_dir()).unwrap().flatten().collect();
    assert!(!stored.is_empty(), "NetworkManager stored no profile");
    for f in stored {
        let text = std::fs::read_to_string(f.path()).unwrap_or_default();
        assert!(!text.contains(PASSWORD), "{} holds the password", f.path().display());
    }

    // Export: a gogoc.conf without the password (unless asked for), that reads back the same.
    let exported = lab.dir().join("exported.conf");
    ok(nmcli(
        &nm,
        &plugins,
        &[],
        &["connection", "export", "full", &exported.display().to_string()],
    ));
    let text = std::fs::read_to_string(&exported).unwrap();
    assert!(!text.contains(PASSWORD) && text.contains("\npasswd=\n"), "{text}");
    assert!(
        text.contains("\nuserid=alice\n") && text.contains("\ntunnel_mode=v6v4\n"),
        "{text}"
    );
    ok(import(&nm, &plugins, &exported));
    assert_eq!(
        data_of(&nm, &plugins, "exported"),
        want,
        "export + import is not lossless"
    );

    // (NM_TSP_EXPORT_PASSWORD=1 writes the password only when the caller's connection carries
    // it; nmcli 1.42's export hands the plugin none, so that path is covered by unit tests.)

    // A malformed file: an error naming file, line and key; no profile.
    let bad = lab
        .file("bad.conf", "server=192.0.2.1\nauth_method=anonymous\ntunnel_mode=gre\n")
        .unwrap();
    let out = import(&nm, &plugins, &bad);
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains(&format!("{}:3", bad.display())) && said.contains("tunnel_mode"),
        "error does not name file, line and key: {said}"
    );
    let list = ok(nmcli(&nm, &plugins, &[], &["-g", "NAME", "connection", "show"])).stdout;
    assert!(!list.lines().any(|l| l == "bad"), "{list}");
}

fn start_broker(lab: &Lab, b: &netns::Host) -> netns::Proc {
    testbed::start_broker(lab, b, "broker", "\"anonymous\", \"digest-md5\"", "", "alice", PASSWORD)
}

/// A gogoc.conf with an account, imported with nmcli, connects to the bundled broker.
#[test]
fn imported_profile_connects() {
    if !require_root() || !require_nm() {
        return;
    }
    let lab = Lab::new("nm_import_up").unwrap();
    let (c, b) = (lab.host("c").unwrap(), lab.host("b").unwrap());
    let (c_if, _) = lab.link(&c, &[], &b, &["192.0.2.1/24", "2001:db8:1::1/64"]).unwrap();
    let nm = Nm::start(&lab, &c).unwrap();
    nm.base_connection(&c_if, Some("192.0.2.2/24"), None, Some("2001:db8:1::2/64"))
        .unwrap();
    let _broker = start_broker(&lab, &b);
    let plugins = plugin_dir(&lab);
    let file = lab
        .file(
            "home.conf",
            &format!("userid=alice\npasswd={PASSWORD}\nserver=192.0.2.1\nauth_method=digest-md5\n"),
        )
        .unwrap();
    ok(import(&nm, &plugins, &file));
    assert_eq!(
        data_of(&nm, &plugins, "home").get("password-flags").map(String::as_str),
        Some("1")
    );
    // The agent-owned password comes from the activating agent: nmcli's, which runs our auth
    // dialog in external-UI mode (no keyring here, so it asks) and answers from a file.
    let secrets = lab
        .file("home.secrets", &format!("vpn.secrets.password:{PASSWORD}\n"))
        .unwrap();
    let up = [
        "--wait",
        "30",
        "connection",
        "up",
        "home",
        "ifname",
        &c_if,
        "passwd-file",
        secrets.to_str().unwrap(),
    ];
    let out = nmcli(&nm, &plugins, &[], &up);
    nm.wait_vpn_state("home", 5, 20 * SEC)
        .unwrap_or_else(|e| panic!("{e}\nnmcli: {} {}", out.stdout, out.stderr));
    let ip6 = nm.con_field("home", "IP6.ADDRESS");
    assert!(ip6.contains("2001:db8:b::"), "IP6.ADDRESS {ip6:?}");
    ok(nmcli(&nm, &plugins, &[], &["connection", "down", "home"]));
}
