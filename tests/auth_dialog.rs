//! `nm-tsp-auth-dialog` against a real, headless gnome-keyring on a private session bus
//! (docs/testbed.md §6), driven the way NetworkManager's agents drive it: nm-applet's and
//! nmcli's stdin, legacy and `--external-ui-mode` answers, checked byte for byte.
//!
//! Needs root (the keyring and its bus run in a private PID namespace, so nothing outlives the
//! test) and gnome-keyring-daemon, dbus-run-session, busctl, secret-tool and unshare; tests/run.sh
//! installs them.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const DIALOG: &str = env!("CARGO_BIN_EXE_nm-tsp-auth-dialog");
const SERVICE: &str = tsp_config::names::SERVICE;
const SCHEMA: &str = "org.freedesktop.NetworkManager.Connection";

const U_KR: &str = "0d3a6c58-7f8a-4c55-9a5e-5e7c1a1b2c01"; // stored with secret-tool
const U_RS: &str = "0d3a6c58-7f8a-4c55-9a5e-5e7c1a1b2c02"; // stored with the secret-service crate
const U_NS: &str = "0d3a6c58-7f8a-4c55-9a5e-5e7c1a1b2c03"; // NOT_SAVED profile, yet an item exists
const U_NONE: &str = "0d3a6c58-7f8a-4c55-9a5e-5e7c1a1b2c04"; // nothing stored
const U_WRONG: &str = "0d3a6c58-7f8a-4c55-9a5e-5e7c1a1b2c0f";

const PW_KR: &str = "kr pass=1 ünï";
const PW_RS: &str = "rs-pass-2";
const PW_NS: &str = "ns-pass-3";
const PW_AGENT: &str = "agent-pw-4";
const ALL_PW: &[&str] = &[PW_KR, PW_RS, PW_NS, PW_AGENT];

fn have(bin: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nm-tsp-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// The environment every process of a test sees: a private HOME and XDG dirs (set BEFORE
/// dbus-run-session, so activated services use them too) and no display.
fn session_env(cmd: &mut Command, home: &Path) {
    cmd.env("HOME", home)
        .env("XDG_RUNTIME_DIR", home.join("run"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("DBUS_SESSION_BUS_ADDRESS");
}

/// gnome-keyring-daemon, unlocked, on a private session bus, in its own PID namespace.
struct Keyring {
    child: Child,
    home: PathBuf,
    bus: String,
}

const KEYRING_SCRIPT: &str = r#"
printf %s kr-unlock-pass | gnome-keyring-daemon --foreground --unlock --components=secrets >/dev/null 2>&1 &
K=$!
for _ in $(seq 1 400); do
  busctl --user status org.freedesktop.secrets >/dev/null 2>&1 && { echo "READY $DBUS_SESSION_BUS_ADDRESS"; wait $K; exit 0; }
  kill -0 $K 2>/dev/null || { echo "FAILED gnome-keyring-daemon exited"; exit 1; }
  sleep 0.05
done
echo "FAILED org.freedesktop.secrets never appeared"
"#;

impl Keyring {
    fn start(home: &Path) -> Keyring {
        let run = home.join("run");
        std::fs::create_dir_all(&run).expect("runtime dir");
        std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod");
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--pid",
            "--fork",
            "--kill-child",
            "dbus-run-session",
            "--",
            "bash",
            "-c",
            KEYRING_SCRIPT,
        ]);
        session_env(&mut cmd, home);
        let stderr = std::fs::File::create(home.join("keyring.log")).expect("log file");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn unshare dbus-run-session");
        let stdout = child.stdout.take().expect("stdout pipe");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("READY ") || line.starts_with("FAILED ") {
                    let _ = tx.send(line);
                    return;
                }
            }
            let _ = tx.send("FAILED the session ended".to_owned());
        });
        let mut k = Keyring {
            child,
            home: home.to_owned(),
            bus: String::new(),
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.starts_with("READY ") => k.bus = line["READY ".len()..].to_owned(),
            other => panic!(
                "keyring did not come up: {other:?}; log: {}",
                std::fs::read_to_string(home.join("keyring.log")).unwrap_or_default()
            ),
        }
        k
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        session_env(&mut cmd, &self.home);
        cmd.env("DBUS_SESSION_BUS_ADDRESS", &self.bus);
        cmd
    }

    /// The test-only way to look at what is stored: `secret-tool` (libsecret), as a user would.
    fn secret_tool(&self, args: &[&str], stdin: &str) -> (bool, String) {
        let mut child = self
            .command("secret-tool")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn secret-tool");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("secret-tool");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    }

    fn store_with_secret_tool(&self, uuid: &str, password: &str) {
        let label = format!("VPN password secret for tsp test/{SERVICE}/vpn");
        let (ok, out) = self.secret_tool(
            &[
                "store",
                "--label",
                &label,
                "connection-uuid",
                uuid,
                "setting-name",
                "vpn",
                "setting-key",
                "password",
            ],
            password,
        );
        assert!(ok, "secret-tool store: {out}");
    }

    fn lookup(&self, uuid: &str) -> Option<String> {
        let (ok, out) = self.secret_tool(
            &[
                "lookup",
                "connection-uuid",
                uuid,
                "setting-name",
                "vpn",
                "setting-key",
                "password",
            ],
            "",
        );
        ok.then_some(out)
    }

    /// The item nm-applet or GNOME Shell would write: libsecret adds `xdg:schema`.
    fn store_with_crate(&self, uuid: &str, password: &str) {
        use secret_service::{EncryptionType, SecretService};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let conn = zbus::connection::Builder::address(self.bus.as_str())
                .expect("bus address")
                .build()
                .await
                .expect("connect to the private session bus");
            let ss = SecretService::connect_with_existing(EncryptionType::Dh, conn)
                .await
                .expect("secret service");
            let coll = ss.get_default_collection().await.expect("default collection");
            let attrs = HashMap::from([
                ("xdg:schema", SCHEMA),
                ("connection-uuid", uuid),
                ("setting-name", "vpn"),
                ("setting-key", "password"),
            ]);
            coll.create_item(
                "VPN password secret for tsp test",
                attrs,
                password.as_bytes(),
                true,
                "text/plain",
            )
            .await
            .expect("create item");
        });
    }

    fn lock_default_collection(&self) {
        use secret_service::{EncryptionType, SecretService};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let conn = zbus::connection::Builder::address(self.bus.as_str())
                .expect("bus address")
                .build()
                .await
                .expect("connect");
            let ss = SecretService::connect_with_existing(EncryptionType::Plain, conn)
                .await
                .expect("secret service");
            let coll = ss.get_default_collection().await.expect("default collection");
            coll.lock().await.expect("lock");
            assert!(coll.is_locked().await.expect("is_locked"));
        });
    }
}

impl Drop for Keyring {
    fn drop(&mut self) {
        // SIGKILL to unshare; --kill-child takes the namespace's init, and with it every
        // process of the session (dbus-daemon, gnome-keyring-daemon), down too.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

struct Out {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

/// Runs the dialog in a new session (no controlling terminal, so it can never prompt on the
/// developer's tty) with `stdin` written at once, then closed. Killed after 30 s.
fn run_dialog(mut cmd: Command, args: &[&str], stdin: &str) -> Out {
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nm-tsp-auth-dialog");
    let pid = child.id();
    let mut input = child.stdin.take().expect("stdin");
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            // pid is our child, not yet reaped (the waiting thread still waits for it).
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            panic!("nm-tsp-auth-dialog {args:?} hung");
        }
    };
    let o = Out {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    for pw in ALL_PW {
        assert!(!o.stderr.contains(pw), "a password on stderr of {args:?}: {}", o.stderr);
    }
    o
}

/// nm-applet: a blank line after each pair, `DONE\n\nQUIT\n\n` at once.
fn applet_input(data: &[(&str, &str)], secrets: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (k, v) in data {
        s += &format!("DATA_KEY={k}\nDATA_VAL={v}\n\n");
    }
    for (k, v) in secrets {
        s += &format!("SECRET_KEY={k}\nSECRET_VAL={v}\n\n");
    }
    s + "DONE\n\nQUIT\n\n"
}

/// nmcli (nm-secret-agent-simple): no blank lines, `DONE\nQUIT\n`.
fn nmcli_input(data: &[(&str, &str)], secrets: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (k, v) in data {
        s += &format!("DATA_KEY={k}\nDATA_VAL={v}\n");
    }
    for (k, v) in secrets {
        s += &format!("SECRET_KEY={k}\nSECRET_VAL={v}\n");
    }
    s + "DONE\nQUIT\n"
}

fn args<'a>(uuid: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["-u", uuid, "-n", "Home broker", "-s", SERVICE];
    a.extend_from_slice(extra);
    a
}

fn legacy(pw: &str) -> Vec<u8> {
    format!("password\n{pw}\n\n\n").into_bytes()
}

fn keyfile(value: &str, should_ask: bool) -> Vec<u8> {
    format!(
        "[VPN Plugin UI]\nVersion=2\nTitle=Authenticate VPN Home broker\nDescription=A password is needed to reach \
         the tunnel broker of the VPN connection “Home broker”.\n\n[password]\nValue={value}\nLabel=Password:\n\
         IsSecret=true\nShouldAsk={should_ask}\nForceEcho=false\n"
    )
    .into_bytes()
}

const KEYFILE_NO_SECRET: &[u8] =
    b"[VPN Plugin UI]\nVersion=2\n\n[no-secret]\nValue=true\nLabel=\nIsSecret=true\nShouldAsk=false\nForceEcho=false\n";

fn show(o: &Out) -> String {
    format!(
        "rc {} stdout {:?} stderr {:?}",
        o.code,
        String::from_utf8_lossy(&o.stdout),
        o.stderr
    )
}

#[track_caller]
fn expect_ok(o: &Out, stdout: &[u8]) {
    assert_eq!(o.code, 0, "{}", show(o));
    assert_eq!(o.stdout, stdout, "{}", show(o));
}

#[track_caller]
fn expect_cancel(o: &Out, stderr_has: &str) {
    assert_ne!(o.code, 0, "{}", show(o));
    assert!(o.stdout.is_empty(), "{}", show(o));
    assert!(o.stderr.contains(stderr_has), "{}", show(o));
}

#[test]
fn against_a_real_gnome_keyring() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP against_a_real_gnome_keyring: needs root (private PID namespace for the keyring)");
        return;
    }
    for bin in [
        "gnome-keyring-daemon",
        "dbus-run-session",
        "busctl",
        "secret-tool",
        "unshare",
    ] {
        if !have(bin) {
            eprintln!("SKIP against_a_real_gnome_keyring: {bin} not installed (tests/run.sh installs it)");
            return;
        }
    }
    let kr = Keyring::start(&scratch("auth-dialog-keyring"));
    kr.store_with_secret_tool(U_KR, PW_KR);
    kr.store_with_secret_tool(U_NS, PW_NS);
    kr.store_with_crate(U_RS, PW_RS);
    // Both writers' items are readable by libsecret under NM's attributes.
    assert_eq!(kr.lookup(U_KR).as_deref(), Some(PW_KR));
    assert_eq!(kr.lookup(U_RS).as_deref(), Some(PW_RS));
    assert_eq!(kr.lookup(U_NONE), None);

    let dialog = || kr.command(DIALOG);
    let digest = [("auth-method", "digest-md5"), ("password-flags", "1")];

    // Found in the keyring: nm-applet's stdin, then nmcli's; an item written via libsecret
    // (with xdg:schema) and one written by secret-tool (without) are both found.
    expect_ok(
        &run_dialog(dialog(), &args(U_KR, &["-i"]), &applet_input(&digest, &[])),
        &legacy(PW_KR),
    );
    expect_ok(
        &run_dialog(dialog(), &args(U_RS, &[]), &nmcli_input(&digest, &[])),
        &legacy(PW_RS),
    );
    // No flags at all (system-owned) still looks in the keyring, as NM-openvpn's dialog does.
    expect_ok(
        &run_dialog(
            dialog(),
            &args(U_KR, &[]),
            &nmcli_input(&[("server", "b.example")], &[]),
        ),
        &legacy(PW_KR),
    );

    // Given on stdin: the agent's password wins over the keyring's.
    expect_ok(
        &run_dialog(
            dialog(),
            &args(U_KR, &[]),
            &applet_input(&digest, &[("password", PW_AGENT)]),
        ),
        &legacy(PW_AGENT),
    );

    // NOT_SAVED: the keyring's item for this uuid is ignored, and nothing is written.
    let not_saved = [("auth-method", "digest-md5"), ("password-flags", "2")];
    expect_cancel(
        &run_dialog(dialog(), &args(U_NS, &[]), &applet_input(&not_saved, &[])),
        "no password",
    );
    expect_ok(
        &run_dialog(
            dialog(),
            &args(U_NS, &["--external-ui-mode", "-i"]),
            &nmcli_input(&not_saved, &[]),
        ),
        &keyfile("", true),
    );
    expect_ok(
        &run_dialog(
            dialog(),
            &args(U_NS, &[]),
            &applet_input(&not_saved, &[("password", PW_AGENT)]),
        ),
        &legacy(PW_AGENT),
    );
    expect_ok(
        &run_dialog(
            dialog(),
            &args(U_NONE, &["--external-ui-mode", "-i"]),
            &nmcli_input(&not_saved, &[]),
        ),
        &keyfile("", true),
    );
    assert_eq!(kr.lookup(U_NONE), None, "the dialog never writes to the keyring");
    assert_eq!(kr.lookup(U_NS).as_deref(), Some(PW_NS));

    // NOT_REQUIRED, or anonymous authentication: nothing to ask, whatever is stored.
    for data in [
        &[("auth-method", "digest-md5"), ("password-flags", "4")][..],
        &[("auth-method", "anonymous")][..],
        &[("auth-method", "anonymous"), ("password-flags", "2")][..],
    ] {
        expect_ok(
            &run_dialog(dialog(), &args(U_KR, &["-i"]), &applet_input(data, &[])),
            b"no-secret\ntrue\n\n\n",
        );
        expect_ok(
            &run_dialog(
                dialog(),
                &args(U_KR, &["-i", "--external-ui-mode"]),
                &nmcli_input(data, &[]),
            ),
            KEYFILE_NO_SECRET,
        );
    }

    // External UI: the stored value is handed over without asking; -r asks (prefilled);
    // nothing stored asks with an empty value.
    expect_ok(
        &run_dialog(
            dialog(),
            &args(U_KR, &["--external-ui-mode", "-i"]),
            &nmcli_input(&digest, &[]),
        ),
        &keyfile(PW_KR, false),
    );
    expect_ok(
        &run_dialog(
            dialog(),
            &args(U_KR, &["--external-ui-mode", "-i", "-r"]),
            &nmcli_input(&digest, &[]),
        ),
        &keyfile(PW_KR, true),
    );
    expect_ok(
        &run_dialog(
            dialog(),
            &args(U_NONE, &["--external-ui-mode", "-i"]),
            &nmcli_input(&digest, &[]),
        ),
        &keyfile("", true),
    );

    // Missing and no -i: cancelled, nothing printed. With -i in legacy mode there is no GUI
    // and (setsid) no terminal: cancelled with a clear message.
    expect_cancel(
        &run_dialog(dialog(), &args(U_NONE, &[]), &applet_input(&digest, &[])),
        "no password",
    );
    expect_cancel(
        &run_dialog(
            dialog(),
            &args(U_NONE, &["--external-ui-mode"]),
            &nmcli_input(&digest, &[]),
        ),
        "no password",
    );
    expect_cancel(
        &run_dialog(dialog(), &args(U_NONE, &["-i"]), &applet_input(&digest, &[])),
        "no terminal",
    );

    // -r in legacy mode: the stored password is not returned again.
    expect_cancel(
        &run_dialog(dialog(), &args(U_KR, &["-r"]), &applet_input(&digest, &[])),
        "-r",
    );
    expect_cancel(
        &run_dialog(dialog(), &args(U_KR, &["-r", "-i"]), &applet_input(&digest, &[])),
        "no terminal",
    );
    expect_cancel(
        &run_dialog(
            dialog(),
            &args(U_KR, &["-r"]),
            &applet_input(&digest, &[("password", PW_AGENT)]),
        ),
        "-r",
    );

    // A wrong uuid finds nothing.
    expect_cancel(
        &run_dialog(dialog(), &args(U_WRONG, &[]), &applet_input(&digest, &[])),
        "no password",
    );
    expect_ok(
        &run_dialog(
            dialog(),
            &args(U_WRONG, &["--external-ui-mode", "-i"]),
            &nmcli_input(&digest, &[]),
        ),
        &keyfile("", true),
    );

    // Not our service, or the agent's input cut before DONE: refused.
    expect_cancel(
        &run_dialog(
            dialog(),
            &["-u", U_KR, "-n", "x", "-s", "org.freedesktop.NetworkManager.openvpn"],
            "DONE\n",
        ),
        "only serves",
    );
    expect_cancel(
        &run_dialog(dialog(), &args(U_KR, &[]), "DATA_KEY=auth-method\nDATA_VAL=plain\n"),
        "before DONE",
    );

    // A password with a line break cannot go through the legacy protocol; the keyfile escapes it.
    expect_cancel(
        &run_dialog(
            dialog(),
            &args(U_NONE, &[]),
            &nmcli_input(&digest, &[("password", "line1\n=line2")]),
        ),
        "line break",
    );
    expect_ok(
        &run_dialog(
            dialog(),
            &args(U_NONE, &["--external-ui-mode"]),
            &nmcli_input(&digest, &[("password", "line1\n=line2")]),
        ),
        &keyfile("line1\\nline2", false),
    );

    // A locked keyring is no error: the dialog does not unlock it (that would prompt), it
    // treats the password as not found, and says so.
    kr.lock_default_collection();
    expect_cancel(
        &run_dialog(dialog(), &args(U_KR, &[]), &applet_input(&digest, &[])),
        "locked",
    );
    expect_ok(
        &run_dialog(
            dialog(),
            &args(U_KR, &["--external-ui-mode", "-i"]),
            &nmcli_input(&digest, &[]),
        ),
        &keyfile("", true),
    );
}

/// No Secret Service at all (no session bus): not an error either. Runs without root.
#[test]
fn without_any_session_bus() {
    let home = scratch("auth-dialog-nobus");
    let dialog = || {
        let mut cmd = Command::new(DIALOG);
        session_env(&mut cmd, &home);
        cmd.env(
            "DBUS_SESSION_BUS_ADDRESS",
            format!("unix:path={}", home.join("no-bus").display()),
        );
        cmd
    };
    let digest = [("auth-method", "digest-md5"), ("password-flags", "1")];
    expect_cancel(
        &run_dialog(dialog(), &args(U_KR, &[]), &nmcli_input(&digest, &[])),
        "no keyring",
    );
    expect_ok(
        &run_dialog(
            dialog(),
            &args(U_KR, &[]),
            &nmcli_input(&digest, &[("password", PW_AGENT)]),
        ),
        &legacy(PW_AGENT),
    );
    expect_ok(
        &run_dialog(
            dialog(),
            &args(U_KR, &["-i", "--external-ui-mode"]),
            &applet_input(&digest, &[]),
        ),
        &keyfile("", true),
    );
    let _ = std::fs::remove_dir_all(&home);
}

/// Runs the dialog with a pseudo-terminal as its controlling terminal (stdin/stdout stay the
/// agent's pipes); `typed` is written to the terminal once the prompt is there. Returns the
/// result and everything the terminal showed.
fn run_on_pty(args: &[&str], stdin: &str, typed: &str) -> (Out, String) {
    use std::io::Read;
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let (mut master, slave) = (std::fs::File::from(pty.master), pty.slave);
    let slave_fd = std::os::fd::AsRawFd::as_raw_fd(&slave);
    let home = scratch("auth-dialog-pty");
    let mut cmd = Command::new(DIALOG);
    session_env(&mut cmd, &home);
    cmd.env(
        "DBUS_SESSION_BUS_ADDRESS",
        format!("unix:path={}", home.join("no-bus").display()),
    );
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 || libc::ioctl(slave_fd, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(slave_fd);
            Ok(())
        });
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nm-tsp-auth-dialog");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let mut reader = master.try_clone().expect("dup master");
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        // Ends with EIO once the slave side is closed everywhere.
        while let Ok(n @ 1..) = reader.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut shown = Vec::new();
    while !String::from_utf8_lossy(&shown).contains("Password: ") {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(chunk) => shown.extend(chunk),
            Err(_) => {
                let _ = child.kill();
                panic!("no prompt on the terminal: {:?}", String::from_utf8_lossy(&shown));
            }
        }
    }
    master.write_all(format!("{typed}\n").as_bytes()).expect("type");
    let pid = child.id();
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    let out = match done_rx.recv_timeout(Duration::from_secs(30)) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            // pid is our child, not yet reaped (the waiting thread still waits for it).
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            panic!(
                "nm-tsp-auth-dialog {args:?} hung; terminal: {:?}",
                String::from_utf8_lossy(&shown)
            );
        }
    };
    // Held until now: with no slave fd open, reading the master fails at once (EIO).
    drop(slave);
    while let Ok(chunk) = rx.recv_timeout(Duration::from_secs(5)) {
        shown.extend(chunk);
    }
    let _ = std::fs::remove_dir_all(&home);
    let o = Out {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !o.stderr.contains(typed) || typed.is_empty(),
        "typed password on stderr: {}",
        o.stderr
    );
    (o, String::from_utf8_lossy(&shown).into_owned())
}

/// Legacy protocol with -i and nothing stored: the dialog asks on its terminal, echo off.
#[test]
fn asks_on_the_terminal() {
    let digest = [("auth-method", "digest-md5"), ("password-flags", "1")];
    let typed = "typed pw 5";
    let (o, tty) = run_on_pty(&args(U_NONE, &["-i"]), &applet_input(&digest, &[]), typed);
    expect_ok(&o, &legacy(typed));
    assert!(tty.contains("“Home broker”") && tty.contains("Password: "), "{tty:?}");
    assert!(!tty.contains(typed), "the password was echoed: {tty:?}");
    // -r: the agent's password is not returned again; the new one is asked for.
    let (o, _) = run_on_pty(
        &args(U_NONE, &["-i", "-r"]),
        &applet_input(&digest, &[("password", PW_AGENT)]),
        typed,
    );
    expect_ok(&o, &legacy(typed));
    // An empty answer cancels.
    let (o, _) = run_on_pty(&args(U_NONE, &["-i"]), &applet_input(&digest, &[]), "");
    expect_cancel(&o, "input was empty");
}
