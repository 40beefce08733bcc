//! A real NetworkManager for the end-to-end tests (docs/testbed.md §4–5): a private system bus
//! (dbus-daemon with the stock default-deny policy plus our `dbus/nm-tsp-service.conf`) and
//! NetworkManager in a client namespace of a [`netns::Lab`], with its own mount and UTS
//! namespaces so nothing of the host is touched. The plugin is "installed" by a `.name` file
//! in NetworkManager's private `/etc/NetworkManager/VPN/`, pointing at the built
//! `nm-tsp-service`. Include with `mod netns; mod testbed;`.
//!
//! Traps (docs/testbed.md): NetworkManager needs a read-only /sys (else it waits for udev forever);
//! it spawns plugins with its own environment, so `NM_TSP_STATE_DIR` set here reaches them;
//! nmcli exits 0 on some failures, so tests assert on state, never on nmcli's status alone.
// Each test crate uses a part of the harness.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use super::netns::{Host, Lab, Output, Proc, bin};

pub mod service_user;

/// The broker's address inside the IPv6 tunnels of [`start_broker`].
pub const BROKER_V6: &str = "2001:db8:b::1";

/// Starts the bundled broker in `host`: listening on every address, the given `auth`
/// mechanisms (TOML array items), account `user` with `password`, a state file (stable
/// addresses across restarts under the same `name`), 1 s minimum keepalive, and `extra` TOML.
pub fn start_broker(lab: &Lab, host: &Host, name: &str, auth: &str, extra: &str, user: &str, password: &str) -> Proc {
    let broker = bin("tsp-broker");
    let accounts = lab.file(&format!("{name}.accounts"), "").expect("accounts");
    let toml = format!(
        "listen = [\"[::]:3653\"]\nauth = [{auth}]\nrealm = \"test\"\n\
         accounts_file = \"{}\"\nserver_ipv6 = \"{BROKER_V6}\"\nclient_pool = \"2001:db8:b::/64\"\n\
         keepalive_min = 1\nstate_file = \"{}\"\n{extra}",
        accounts.display(),
        lab.dir().join(format!("{name}.state")).display()
    );
    let conf = lab.file(&format!("{name}.toml"), &toml).expect("broker.toml");
    let conf = conf.to_str().expect("utf-8 path");
    let added = std::process::Command::new(&broker)
        .args(["-c", conf, "add-user", user])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            if let Some(mut stdin) = c.stdin.take() {
                stdin.write_all(format!("{password}\n").as_bytes())?;
            }
            c.wait()
        })
        .expect("tsp-broker add-user");
    assert!(added.success(), "tsp-broker add-user failed");
    let p = host.spawn(&broker, &["-c", conf]).expect("start tsp-broker");
    p.wait_for_output("listening", Duration::from_secs(10))
        .expect("tsp-broker listening");
    p
}

/// NetworkManager's start-up script in its new mount namespace (shared with the demo and the
/// NetworkManager benchmark): private /run, read-only /sys, the bus socket where helpers look
/// for it, private configuration and state.
const NM_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/testbed/nm-in-netns.sh");

const BUS_CONF: &str = include_str!("system-bus.conf.in");

/// True if NetworkManager, nmcli and dbus-daemon are installed; prints a skip line otherwise.
pub fn require_nm() -> bool {
    let missing: Vec<&str> = ["NetworkManager", "nmcli", "dbus-daemon", "unshare"]
        .into_iter()
        .filter(|p| !in_path(p))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let test = std::thread::current().name().unwrap_or("this test").to_string();
    println!(
        "skipped: {test} needs {} (tests/run.sh installs them)",
        missing.join(", ")
    );
    false
}

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// NetworkManager running in `host`, with its own bus.
pub struct Nm {
    pub bus_addr: String,
    /// The plugin's `NM_TSP_STATE_DIR` (known host keys, multi-site files).
    state: std::path::PathBuf,
    /// NetworkManager's /etc/NetworkManager (keyfiles in system-connections/).
    etc: std::path::PathBuf,
    /// The bus lives as long as this (the lab kills it at the end).
    _bus: Proc,
    pub daemon: Proc,
}

impl Nm {
    /// Starts the bus and NetworkManager in `host` and waits until NetworkManager answers.
    pub fn start(lab: &Lab, host: &Host) -> Result<Nm, String> {
        Self::start_with(lab, host, &[])
    }

    /// [`Nm::start`], with interfaces NetworkManager must leave alone (a LAN the plugin
    /// configures in router mode).
    pub fn start_with(lab: &Lab, host: &Host, unmanaged: &[&str]) -> Result<Nm, String> {
        service_user::ensure()?;
        let dir = lab.dir().join(format!("nm-{}", host.name()));
        for d in [
            "bus/system.d",
            "bus/services",
            "nm/etc/VPN",
            "nm/etc/system-connections",
            "nm/lib",
            "state",
        ] {
            std::fs::create_dir_all(dir.join(d)).map_err(|e| format!("mkdir {d}: {e}"))?;
        }
        let sock = dir.join("bus/sock");
        let conf = BUS_CONF
            .replace("@SOCK@", &sock.display().to_string())
            .replace("@EXTRA@", &dir.join("bus").display().to_string());
        write(&dir.join("bus/system.conf"), &conf, 0o644)?;
        let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("dbus/nm-tsp-service.conf");
        std::fs::copy(&policy, dir.join("bus/system.d/nm-tsp-service.conf")).map_err(|e| format!("policy: {e}"))?;
        let bus_conf = dir.join("bus/system.conf");
        // Ready when the socket exists (it prints its address too, to the log).
        let bus = host.spawn(
            "dbus-daemon",
            &[
                &format!("--config-file={}", bus_conf.display()),
                "--nofork",
                "--print-address",
            ],
        )?;
        let bus_addr = format!("unix:path={}", sock.display());
        wait_until(Duration::from_secs(10), || sock.exists())
            .map_err(|_| format!("dbus-daemon did not create {}:\n{}", sock.display(), bus.output()))?;

        let unmanaged: Vec<String> = std::iter::once("lo")
            .chain(unmanaged.iter().copied())
            .map(|i| format!("interface-name:{i}"))
            .collect();
        let nm_conf = format!(
            "[main]\nplugins=keyfile\ndns=none\nrc-manager=unmanaged\nhostname-mode=none\n\
             auth-polkit=root-only\nno-auto-default=*\n[keyfile]\nunmanaged-devices={}\n\
             [connectivity]\nenabled=false\n[logging]\nlevel=DEBUG\ndomains=VPN,VPN_PLUGIN,CORE,DEVICE\n",
            unmanaged.join(";")
        );
        write(&dir.join("nm/etc/NetworkManager.conf"), &nm_conf, 0o644)?;
        let name = format!(
            "[VPN Connection]\nname=tsp\nservice={}\nprogram={}\n\
             supports-multiple-connections=true\n",
            tsp_config::names::SERVICE,
            bin("nm-tsp-service").display()
        );
        write(&dir.join("nm/etc/VPN/nm-tsp-service.name"), &name, 0o644)?;
        let state = dir.join("state").display().to_string();
        let daemon = host.spawn_env(
            "unshare",
            &[
                "--mount",
                "--uts",
                "sh",
                NM_SCRIPT,
                &dir.display().to_string(),
                "--debug",
            ],
            &[
                ("DBUS_SYSTEM_BUS_ADDRESS", bus_addr.as_str()),
                ("NM_TSP_STATE_DIR", state.as_str()),
            ],
        )?;
        let nm = Nm {
            state: dir.join("state"),
            etc: dir.join("nm/etc"),
            bus_addr,
            _bus: bus,
            daemon,
        };
        let online = nm.run("nm-online", &["-s", "-q", "-t", "20"])?;
        if !online.success() {
            return Err(format!("NetworkManager did not start:\n{}", nm.daemon.output()));
        }
        Ok(nm)
    }

    /// Runs a command against this NetworkManager's bus (on the host: nmcli needs no netns).
    pub fn run(&self, program: &str, args: &[&str]) -> Result<Output, String> {
        let mut c = std::process::Command::new(program);
        c.args(args).env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus_addr);
        let out = c.output().map_err(|e| format!("cannot run {program}: {e}"))?;
        Ok(Output {
            command: format!("{program} {}", args.join(" ")),
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            timed_out: false,
        })
    }

    /// `nmcli args…`, which must succeed (exit status and no "Error:" in its output).
    pub fn nmcli(&self, args: &[&str]) -> Result<String, String> {
        let out = self.run("nmcli", args)?;
        if !out.success() || out.stderr.contains("Error:") {
            return Err(format!(
                "`{}` failed ({}): {}{}",
                out.command, out.status, out.stdout, out.stderr
            ));
        }
        Ok(out.stdout)
    }

    /// One field of `nmcli -t connection show <id>` (values of multi-valued fields joined by
    /// ", "); empty if absent. Read from the whole listing: `-g VPN.VPN-STATE` is taken for
    /// the `vpn` setting's fields and refused.
    pub fn con_field(&self, id: &str, field: &str) -> String {
        let Ok(out) = self.run("nmcli", &["-t", "connection", "show", id]) else {
            return String::new();
        };
        let values: Vec<String> = out
            .stdout
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                let k = k.split('[').next().unwrap_or(k);
                (k == field).then(|| v.replace("\\:", ":"))
            })
            .collect();
        values.join(", ")
    }

    /// The VPN state number of an active connection (`VPN.VPN-STATE`: 5 = connected), or 0.
    pub fn vpn_state(&self, id: &str) -> u32 {
        let s = self.con_field(id, "VPN.VPN-STATE");
        s.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0)
    }

    /// Waits until `VPN.VPN-STATE` of `id` is `want`; returns the time it took.
    pub fn wait_vpn_state(&self, id: &str, want: u32, timeout: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        wait_until(timeout, || self.vpn_state(id) == want).map_err(|_| {
            format!(
                "VPN {id} did not reach state {want} within {timeout:?} (now {:?}); NetworkManager log tail:\n{}",
                self.con_field(id, "VPN.VPN-STATE"),
                tail(&self.daemon.output(), 40)
            )
        })?;
        Ok(start.elapsed())
    }

    /// Adds an Ethernet profile for `ifname` with these addresses and brings it up (a VPN
    /// needs a base connection).
    pub fn base_connection(
        &self,
        ifname: &str,
        v4: Option<&str>,
        v4_gw: Option<&str>,
        v6: Option<&str>,
    ) -> Result<(), String> {
        let mut args = vec![
            "connection",
            "add",
            "type",
            "ethernet",
            "ifname",
            ifname,
            "con-name",
            ifname,
        ];
        match v4 {
            Some(a) => args.extend(["ipv4.method", "manual", "ipv4.addresses", a]),
            None => args.extend(["ipv4.method", "disabled"]),
        }
        if let Some(gw) = v4_gw {
            args.extend(["ipv4.gateway", gw]);
        }
        match v6 {
            Some(a) => args.extend(["ipv6.method", "manual", "ipv6.addresses", a]),
            None => args.extend(["ipv6.method", "disabled"]),
        }
        self.nmcli(&args)?;
        self.nmcli(&["--wait", "20", "connection", "up", ifname])?;
        Ok(())
    }

    /// Adds a tsp VPN profile; `data` and `secrets` are nmcli's `k=v, k=v` lists.
    pub fn add_vpn(&self, id: &str, data: &str, secrets: Option<&str>, extra: &[&str]) -> Result<(), String> {
        let mut args = vec![
            "connection",
            "add",
            "type",
            "vpn",
            "vpn-type",
            // The full service name: nmcli runs outside NetworkManager's mount namespace and
            // cannot see the `.name` file that maps `tsp` to it.
            tsp_config::names::SERVICE,
            "con-name",
            id,
            "ifname",
            "*",
            "vpn.data",
            data,
        ];
        if let Some(s) = secrets {
            args.extend(["vpn.secrets", s]);
        }
        args.extend_from_slice(extra);
        self.nmcli(&args).map(drop)
    }

    /// `nmcli connection up <id> ifname <base>`: the raw output (nmcli's status lies sometimes).
    pub fn up(&self, id: &str, base: &str) -> Output {
        self.run("nmcli", &["--wait", "30", "connection", "up", id, "ifname", base])
            .unwrap_or_else(|e| Output {
                command: "nmcli".into(),
                status: std::process::ExitStatus::default(),
                stdout: String::new(),
                stderr: e,
                timed_out: false,
            })
    }

    /// The pids of running `nm-tsp-service` processes (they run in NetworkManager's netns).
    pub fn plugin_pids(&self) -> Vec<u32> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "nm-tsp-service")
                    && std::fs::read_to_string(format!("/proc/{pid}/environ"))
                        .is_ok_and(|env| env.contains(&self.bus_addr))
            })
            .collect()
    }

    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// Where NetworkManager stores its profiles (keyfiles).
    pub fn connections_dir(&self) -> std::path::PathBuf {
        self.etc.join("system-connections")
    }

    /// NetworkManager's log so far (the plugin's stderr is part of it).
    pub fn log(&self) -> String {
        self.daemon.output()
    }
}

pub fn write(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| format!("chmod: {e}"))
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<(), ()> {
    let start = Instant::now();
    loop {
        if cond() {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}
