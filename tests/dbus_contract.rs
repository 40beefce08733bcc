//! The D-Bus contract of `nm-tsp-service` without NetworkManager (docs/nm-plugin.md §1–3).
//!
//! Each test starts its own private dbus-daemon with a system-bus-like configuration (default
//! deny, plus the project's `dbus/nm-tsp-service.conf` through an includedir), then the built
//! service with `--bus-name org.freedesktop.NetworkManager.tsp.Connection_1`, and plays
//! NetworkManager's part with a zbus client: introspection, `NeedSecrets` with malformed
//! dictionaries and bad vpn.data, the state machine (`Connect*`, `NewSecrets`, `Disconnect`)
//! and the signals it emits. Brokers are on 127.0.0.1: a closed port, or sockets bound by the
//! test that never answer. Every assertion is on a reply, a signal or the process's exit.
//!
//! Needs `dbus-daemon` (package `dbus`, installed by tests/run.sh) and root: the policy lets
//! only root own the service's names. Without either the tests print why and pass.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

#[path = "testbed/service_user.rs"]
mod service_user;

use futures::StreamExt as _;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use zbus::message::Type as MessageType;
use zbus::zvariant::Value;
use zbus::{Connection, MatchRule, Message, MessageStream};

const BUS_NAME: &str = "org.freedesktop.NetworkManager.tsp.Connection_1";
const PATH: &str = "/org/freedesktop/NetworkManager/VPN/Plugin";
const IFACE: &str = "org.freedesktop.NetworkManager.VPN.Plugin";
const SERVICE_TYPE: &str = tsp_config::names::SERVICE;
const ERROR_PREFIX: &str = "org.freedesktop.NetworkManager.VPN.Error.";
/// Bound on every wait for a reply, a signal, a name or an exit.
const WAIT: Duration = Duration::from_secs(5);
/// Passwords the tests hand to the service; none may show up in a reply or in its log.
const PASSWORD: &str = "Contract-pw-7f3a9c";
const BAD_PASSWORD: &str = "Contract-bad\u{7}pw-41d2";

/// `NMVpnServiceState` / `NMVpnPluginFailure` (docs/nm-plugin.md §1.4).
const INIT: u32 = 1;
const STARTING: u32 = 3;
const STOPPING: u32 = 5;
const STOPPED: u32 = 6;
const CONNECT_FAILED: u32 = 1;

// ---------------------------------------------------------------------------------------------
// Processes: a private bus and the service, killed when the test ends (also on panic).

/// dbus-daemon's path, or `None` (then the test is skipped).
fn dbus_daemon() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("dbus-daemon"))
        .find(|p| p.is_file())
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Whether this test can run; prints the reason when it cannot.
fn can_run(test: &str) -> bool {
    if dbus_daemon().is_none() {
        println!("skipped: {test} needs dbus-daemon (package dbus; tests/run.sh installs it)");
        return false;
    }
    if euid() != 0 {
        println!("skipped: {test} needs root (the D-Bus policy lets only root own {BUS_NAME})");
        return false;
    }
    true
}

/// A private system bus, one service process and a client connection to that bus.
struct Fixture {
    dir: PathBuf,
    bus: Option<Child>,
    service: Option<Child>,
    address: String,
    conn: Option<Connection>,
    /// Unique name of the service on the bus (the sender of its signals).
    owner: String,
    uuids: AtomicU32,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for child in [self.service.as_mut(), self.bus.as_mut()].into_iter().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() || std::env::var_os("NM_TSP_KEEP_TEST_DIR").is_some() {
            eprintln!("kept {} (bus.log, service.log) for inspection", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

const BUS_CONFIG: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=@DIR@/bus.sock</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <!-- Stands in for NetworkManager's own policy: the test plays NetworkManager. -->
  <policy user="root">
    <allow own="org.freedesktop.NetworkManager"/>
  </policy>
  <includedir>@DIR@/system.d</includedir>
</busconfig>
"#;

impl Fixture {
    /// Starts the bus and the service; waits until the service owns [`BUS_NAME`].
    async fn start(tag: &str) -> Fixture {
        Self::start_with(tag, &[]).await
    }

    /// [`start`](Self::start) with more options for the service.
    async fn start_with(tag: &str, extra_args: &[&str]) -> Fixture {
        let dir = std::env::temp_dir().join(format!("nm-tsp-contract-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("system.d")).expect("temp dir");
        let mut fx = Fixture {
            dir: dir.clone(),
            bus: None,
            service: None,
            address: String::new(),
            conn: None,
            owner: String::new(),
            uuids: AtomicU32::new(0),
        };
        let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("dbus/nm-tsp-service.conf");
        std::fs::copy(&policy, dir.join("system.d/nm-tsp-service.conf")).expect("copy the D-Bus policy");
        service_user::ensure().expect("the service's system user");
        let config = dir.join("bus.conf");
        std::fs::write(&config, BUS_CONFIG.replace("@DIR@", &dir.to_string_lossy())).expect("bus config");

        // Ready when it prints its address (docs/testbed.md §4).
        let bus_log = std::fs::File::create(dir.join("bus.log")).expect("bus log");
        let mut bus = Command::new(dbus_daemon().expect("dbus-daemon"))
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--print-address"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(bus_log)
            .spawn()
            .expect("start dbus-daemon");
        let stdout = bus.stdout.take().expect("dbus-daemon stdout");
        fx.bus = Some(bus);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let address = rx.recv_timeout(WAIT).unwrap_or_default().trim().to_owned();
        assert!(
            address.starts_with("unix:"),
            "dbus-daemon printed no address within {WAIT:?}: {:?}; log: {}",
            address,
            fx.bus_log()
        );
        fx.address = address;

        let service_log = std::fs::File::create(dir.join("service.log")).expect("service log");
        let service = Command::new(env!("CARGO_BIN_EXE_nm-tsp-service"))
            .args(["--bus-name", BUS_NAME, "--debug", "--state-dir"])
            .arg(dir.join("state"))
            .args(extra_args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &fx.address)
            .env_remove("NM_VPN_LOG_SYSLOG")
            .env_remove("NM_VPN_LOG_LEVEL")
            .env_remove("NM_TSP_STATE_DIR")
            .stdin(Stdio::null())
            .stdout(service_log.try_clone().expect("log fd"))
            .stderr(service_log)
            .spawn()
            .expect("start nm-tsp-service");
        fx.service = Some(service);

        let conn = zbus::connection::Builder::address(fx.address.as_str())
            .expect("bus address")
            .build()
            .await
            .expect("connect to the private bus");
        let dbus = zbus::fdo::DBusProxy::new(&conn).await.expect("DBus proxy");
        let name = zbus::names::BusName::try_from(BUS_NAME).expect("bus name");
        let deadline = Instant::now() + WAIT;
        loop {
            if dbus.name_has_owner(name.clone()).await.expect("NameHasOwner") {
                break;
            }
            if let Some(status) = fx.exit_status() {
                panic!(
                    "nm-tsp-service exited ({status}) before owning {BUS_NAME}; log: {}",
                    fx.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{BUS_NAME} has no owner after {WAIT:?}; service log: {}\nbus log: {}",
                fx.log(),
                fx.bus_log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        fx.owner = dbus.get_name_owner(name).await.expect("GetNameOwner").to_string();
        fx.conn = Some(conn);
        fx
    }

    fn conn(&self) -> &Connection {
        self.conn.as_ref().expect("connected")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("service.log")).unwrap_or_default()
    }

    fn bus_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bus.log")).unwrap_or_default()
    }

    fn signal(&self, sig: Signal) {
        let pid = self.service.as_ref().expect("service").id();
        // Our own child, which has not been reaped yet.
        let rc = nix::sys::signal::kill(Pid::from_raw(pid as i32), sig);
        assert_eq!(rc, Ok(()), "kill({pid}, {sig}) failed");
    }

    fn exit_status(&mut self) -> Option<ExitStatus> {
        self.service.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits (bounded) for the service to exit and checks that it exited cleanly.
    async fn expect_exit(&mut self) {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(s) = self.exit_status() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "nm-tsp-service still runs {WAIT:?} after STOPPED (no --persist); log: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            status.success(),
            "nm-tsp-service exited with {status}; log: {}",
            self.log()
        );
    }

    /// Calls a method of the plugin.
    async fn call<B>(&self, method: &str, body: &B) -> zbus::Result<Message>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        let call = self.conn().call_method(Some(BUS_NAME), PATH, Some(IFACE), method, body);
        tokio::time::timeout(WAIT, call)
            .await
            .unwrap_or_else(|_| panic!("{method} got no reply within {WAIT:?}; log: {}", self.log()))
    }

    /// `NeedSecrets`; the setting name on success, the error otherwise.
    async fn need_secrets(&self, c: &Conn) -> Result<String, VpnErr> {
        match self.call("NeedSecrets", &(&c.0,)).await {
            Ok(m) => Ok(m.body().deserialize::<String>().expect("NeedSecrets returns s")),
            Err(e) => Err(VpnErr::from(e)),
        }
    }

    async fn unit_call<B>(&self, method: &str, body: &B) -> Result<(), VpnErr>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        self.call(method, body).await.map(drop).map_err(VpnErr::from)
    }

    async fn connect(&self, c: &Conn) -> Result<(), VpnErr> {
        self.unit_call("Connect", &(&c.0,)).await
    }

    async fn connect_interactive(&self, c: &Conn) -> Result<(), VpnErr> {
        let details: HashMap<String, Value<'static>> = HashMap::new();
        self.unit_call("ConnectInteractive", &(&c.0, details)).await
    }

    async fn new_secrets(&self, c: &Conn) -> Result<(), VpnErr> {
        self.unit_call("NewSecrets", &(&c.0,)).await
    }

    async fn disconnect(&self) -> Result<(), VpnErr> {
        self.unit_call("Disconnect", &()).await
    }

    /// The `State` property.
    async fn state(&self) -> u32 {
        let reply = self
            .conn()
            .call_method(
                Some(BUS_NAME),
                PATH,
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &(IFACE, "State"),
            )
            .await
            .expect("Properties.Get State");
        let body = reply.body();
        let state: Value<'_> = body.deserialize().expect("Get returns v");
        u32::try_from(&state).expect("State is u")
    }

    /// The plugin's signals from now on (subscribe before the call that causes them).
    async fn signals(&self) -> Signals {
        let rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender(self.owner.as_str())
            .and_then(|b| b.path(PATH))
            .and_then(|b| b.interface(IFACE))
            .expect("match rule")
            .build();
        Signals(
            MessageStream::for_match_rule(rule, self.conn(), Some(256))
                .await
                .expect("AddMatch"),
        )
    }

    /// A valid tsp profile with a UUID of its own.
    fn profile(&self, data: &[(&str, &str)], secrets: &[(&str, &str)]) -> Conn {
        let n = self.uuids.fetch_add(1, Ordering::Relaxed);
        Conn::new(&format!("c0a7c7a1-0000-4000-8000-{n:012x}"), data, secrets)
    }

    /// No password given to the service in this test shows in its log.
    fn assert_log_has_no_password(&self) {
        let log = self.log();
        for pw in [PASSWORD, BAD_PASSWORD, "Contract-bad"] {
            assert!(!log.contains(pw), "the service logged a password ({pw:?}):\n{log}");
        }
    }
}

/// An `org.freedesktop.NetworkManager.VPN.Error.*` reply: the name after the prefix, the message.
#[derive(Debug)]
struct VpnErr {
    name: String,
    message: String,
}

impl From<zbus::Error> for VpnErr {
    fn from(e: zbus::Error) -> Self {
        match e {
            zbus::Error::MethodError(name, message, _) => {
                let name = name.as_str();
                let short = name
                    .strip_prefix(ERROR_PREFIX)
                    .unwrap_or_else(|| panic!("error {name} is not an {ERROR_PREFIX}* name ({message:?})"));
                VpnErr {
                    name: short.to_owned(),
                    message: message.unwrap_or_default(),
                }
            }
            other => panic!("not a D-Bus error reply: {other}"),
        }
    }
}

/// Asserts a `NeedSecrets`/`Connect*` reply is error `name` whose message contains every `words`.
fn expect_err<T: std::fmt::Debug>(what: &str, r: Result<T, VpnErr>, name: &str, words: &[&str]) -> VpnErr {
    let e = match r {
        Ok(v) => panic!("{what}: expected {ERROR_PREFIX}{name}, got a reply {v:?}"),
        Err(e) => e,
    };
    assert_eq!(e.name, name, "{what}: wrong error ({})", e.message);
    for w in words {
        assert!(e.message.contains(w), "{what}: message {:?} lacks {w:?}", e.message);
    }
    for pw in [PASSWORD, BAD_PASSWORD, "Contract-bad"] {
        assert!(
            !e.message.contains(pw),
            "{what}: the error message shows a password: {:?}",
            e.message
        );
    }
    e
}

// ---------------------------------------------------------------------------------------------
// Connection dictionaries (a{sa{sv}}).

type Setting = HashMap<String, Value<'static>>;

#[derive(Debug, Clone)]
struct Conn(HashMap<String, Setting>);

fn strings(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

impl Conn {
    fn new(uuid: &str, data: &[(&str, &str)], secrets: &[(&str, &str)]) -> Conn {
        let connection = Setting::from([
            ("id".to_owned(), Value::from("broker")),
            ("uuid".to_owned(), Value::from(uuid.to_owned())),
            ("type".to_owned(), Value::from("vpn")),
        ]);
        let mut vpn = Setting::from([
            ("service-type".to_owned(), Value::from(SERVICE_TYPE)),
            ("data".to_owned(), Value::from(strings(data))),
        ]);
        if !secrets.is_empty() {
            vpn.insert("secrets".to_owned(), Value::from(strings(secrets)));
        }
        Conn(HashMap::from([
            ("connection".to_owned(), connection),
            ("vpn".to_owned(), vpn),
            (
                "ipv6".to_owned(),
                Setting::from([("method".to_owned(), Value::from("auto"))]),
            ),
        ]))
    }

    fn set(mut self, setting: &str, key: &str, value: Value<'static>) -> Conn {
        self.0
            .entry(setting.to_owned())
            .or_default()
            .insert(key.to_owned(), value);
        self
    }

    fn without(mut self, setting: &str, key: Option<&str>) -> Conn {
        match key {
            None => {
                self.0.remove(setting);
            }
            Some(k) => {
                self.0.get_mut(setting).map(|s| s.remove(k));
            }
        }
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Signals.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Sig {
    State(u32),
    Failure(u32),
    SecretsRequired(String, Vec<String>),
    Other(String),
}

struct Signals(MessageStream);

impl Signals {
    /// The next signal of the plugin, or `None` after [`WAIT`].
    async fn next(&mut self) -> Option<Sig> {
        let msg = match tokio::time::timeout(WAIT, self.0.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => panic!("signal stream: {e}"),
            Ok(None) | Err(_) => return None,
        };
        let header = msg.header();
        let member = header.member().map(|m| m.to_string()).unwrap_or_default();
        let body = msg.body();
        Some(match member.as_str() {
            "StateChanged" => Sig::State(body.deserialize::<u32>().expect("StateChanged(u)")),
            "Failure" => Sig::Failure(body.deserialize::<u32>().expect("Failure(u)")),
            "SecretsRequired" => {
                let (m, s) = body
                    .deserialize::<(String, Vec<String>)>()
                    .expect("SecretsRequired(sas)");
                Sig::SecretsRequired(m, s)
            }
            _ => Sig::Other(member),
        })
    }

    /// Collects signals until `last` (inclusive); fails with what came when it does not.
    async fn until(&mut self, last: &Sig, fx: &Fixture) -> Vec<Sig> {
        let mut seen = Vec::new();
        loop {
            match self.next().await {
                Some(s) => {
                    let done = &s == last;
                    seen.push(s);
                    if done {
                        return seen;
                    }
                }
                None => panic!(
                    "no {last:?} within {WAIT:?}; signals so far: {seen:?}; service log:\n{}",
                    fx.log()
                ),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Brokers on loopback.

/// A broker address where nothing listens (UDP or TCP): connection refused at once.
const CLOSED_BROKER: &str = "127.0.0.1:1";

/// A broker that never answers: a UDP socket and a TCP listener on one loopback port, neither
/// ever read. The kernel completes TCP handshakes, so both transports wait for a reply.
struct SilentBroker {
    _udp: UdpSocket,
    _tcp: TcpListener,
    addr: String,
}

impl SilentBroker {
    fn new() -> SilentBroker {
        for _ in 0..20 {
            let udp = UdpSocket::bind("127.0.0.1:0").expect("bind UDP on loopback");
            let port = udp.local_addr().expect("UDP address").port();
            if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)) {
                return SilentBroker {
                    _udp: udp,
                    _tcp: tcp,
                    addr: format!("127.0.0.1:{port}"),
                };
            }
        }
        panic!("no loopback port free for both UDP and TCP");
    }
}

// ---------------------------------------------------------------------------------------------
// Introspection.

/// Methods, signals and properties (with type and access) of one interface in introspection XML.
#[derive(Debug, Default)]
struct Iface {
    methods: Vec<String>,
    signals: Vec<String>,
    properties: Vec<(String, String, String)>,
}

fn parse_introspection(xml: &str, wanted: &str) -> Option<Iface> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut found: Option<Iface> = None;
    let mut inside = false;
    loop {
        let (e, empty) = match reader.read_event().expect("introspection is well-formed XML") {
            Event::Eof => return found,
            Event::End(e) if e.name().as_ref() == "interface" => {
                inside = false;
                continue;
            }
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            _ => continue,
        };
        let attr = |name: &str| {
            e.attributes()
                .flatten()
                .find(|a| a.key.as_ref() == name)
                .map(|a| a.value.to_string())
                .unwrap_or_default()
        };
        match e.name().as_ref() {
            "interface" => {
                inside = !empty && attr("name") == wanted;
                if inside {
                    found = Some(Iface::default());
                }
            }
            "method" if inside => found.as_mut()?.methods.push(attr("name")),
            "signal" if inside => found.as_mut()?.signals.push(attr("name")),
            "property" if inside => found
                .as_mut()?
                .properties
                .push((attr("name"), attr("type"), attr("access"))),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test]
async fn introspection_names_the_whole_interface() {
    if !can_run("introspection_names_the_whole_interface") {
        return;
    }
    let fx = Fixture::start("intro").await;
    let reply = fx
        .conn()
        .call_method(
            Some(BUS_NAME),
            PATH,
            Some("org.freedesktop.DBus.Introspectable"),
            "Introspect",
            &(),
        )
        .await
        .expect("Introspect");
    let xml: String = reply.body().deserialize().expect("Introspect returns s");
    let iface = parse_introspection(&xml, IFACE).unwrap_or_else(|| panic!("{IFACE} is not introspected:\n{xml}"));
    for m in [
        "Connect",
        "ConnectInteractive",
        "NeedSecrets",
        "NewSecrets",
        "Disconnect",
        "SetConfig",
        "SetIp4Config",
        "SetIp6Config",
        "SetFailure",
    ] {
        assert!(iface.methods.iter().any(|x| x == m), "method {m} missing: {iface:?}");
    }
    for s in [
        "StateChanged",
        "SecretsRequired",
        "Config",
        "Ip4Config",
        "Ip6Config",
        "LoginBanner",
        "Failure",
    ] {
        assert!(iface.signals.iter().any(|x| x == s), "signal {s} missing: {iface:?}");
    }
    assert!(
        iface.properties.contains(&("State".into(), "u".into(), "read".into())),
        "no read-only State (u): {iface:?}"
    );

    assert_eq!(fx.state().await, INIT);
}

/// Started as root, the service runs as its system user, which the shipped policy lets own
/// the name; the state dir it was given is that user's.
#[tokio::test]
async fn service_runs_as_its_system_user() {
    if !can_run("service_runs_as_its_system_user") {
        return;
    }
    let fx = Fixture::start("user").await;
    let uid = service_user::ensure().unwrap();
    let pid = fx.service.as_ref().expect("service").id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let ids = |field: &str| -> Vec<u32> {
        let line = status.lines().find_map(|l| l.strip_prefix(field)).expect(field);
        line.split_whitespace().map(|v| v.parse().unwrap()).collect()
    };
    assert_eq!(ids("Uid:"), [uid; 4], "real, effective, saved and fs uid of {pid}");
    assert_eq!(ids("Groups:"), Vec::<u32>::new(), "supplementary groups of {pid}");
    let state = std::fs::metadata(fx.dir.join("state")).expect("state dir");
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!((state.uid(), state.mode() & 0o777), (uid, 0o700), "the state dir");
}

/// Only root may talk to the service: a call from another user is refused by the bus.
#[tokio::test]
async fn policy_refuses_other_users() {
    if !can_run("policy_refuses_other_users") {
        return;
    }
    let fx = Fixture::start("policy").await;
    // dbus-send (package dbus-bin, a dependency of dbus) as nobody, via util-linux's setpriv.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "dbus-send"])
        .arg(format!("--bus={}", fx.address))
        .args(["--print-reply", "--reply-timeout=3000"])
        .arg(format!("--dest={BUS_NAME}"))
        .args([PATH, "org.freedesktop.DBus.Properties.Get"])
        .arg(format!("string:{IFACE}"))
        .arg("string:State")
        .output()
        .expect("run setpriv dbus-send (util-linux, dbus-bin)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "nobody could call the service: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("AccessDenied"),
        "refused, but not by the policy: {stderr}"
    );
    // While root (this test) can.
    fx.need_secrets(&fx.profile(&[("server", CLOSED_BROKER)], &[]))
        .await
        .expect("root may call NeedSecrets");
}

#[tokio::test]
async fn need_secrets_checks_dictionaries_and_vpn_data() {
    if !can_run("need_secrets_checks_dictionaries_and_vpn_data") {
        return;
    }
    let fx = Fixture::start("needsec").await;
    let ok = fx.profile(&[("server", "broker.example")], &[]);

    // Malformed dictionaries: BadArguments.
    let r = fx.need_secrets(&ok.clone().without("vpn", None)).await;
    expect_err("no vpn setting", r, "BadArguments", &["vpn"]);
    let r = fx.need_secrets(&ok.clone().set("vpn", "data", Value::U32(7))).await;
    expect_err("vpn.data is a u32", r, "BadArguments", &["vpn.data"]);
    let asv = HashMap::from([("server".to_owned(), Value::from("broker.example"))]);
    let r = fx.need_secrets(&ok.clone().set("vpn", "data", Value::from(asv))).await;
    expect_err("vpn.data is a{sv}", r, "BadArguments", &["vpn.data"]);
    let r = fx
        .need_secrets(&ok.clone().set("vpn", "service-type", Value::U32(1)))
        .await;
    expect_err("service-type is a u32", r, "BadArguments", &["service-type"]);

    // Not a tsp connection, or not a complete one: InvalidConnection.
    let other = ok.clone().set(
        "vpn",
        "service-type",
        Value::from("org.freedesktop.NetworkManager.openvpn"),
    );
    let r = fx.need_secrets(&other).await;
    expect_err("openvpn service-type", r, "InvalidConnection", &["service-type"]);
    let r = fx.need_secrets(&ok.clone().without("connection", Some("uuid"))).await;
    expect_err("no connection.uuid", r, "InvalidConnection", &["connection.uuid"]);

    // Bad vpn.data: InvalidConnection naming the key.
    let e = expect_err(
        "typo tunel-mode",
        fx.need_secrets(&fx.profile(&[("server", "broker.example"), ("tunel-mode", "v6v4")], &[]))
            .await,
        "InvalidConnection",
        &["tunel-mode", "tunnel-mode"],
    );
    assert!(e.message.contains("did you mean \"tunnel-mode\""), "{}", e.message);
    for (key, value) in [
        ("prefix-length", "200"),
        ("tunnel-mode", "gre"),
        ("mtu", "9000"),
        ("keepalive", "maybe"),
    ] {
        let r = fx
            .need_secrets(&fx.profile(&[("server", "broker.example"), (key, value)], &[]))
            .await;
        expect_err(&format!("{key}={value}"), r, "InvalidConnection", &[key]);
    }
    let r = fx.need_secrets(&fx.profile(&[("tunnel-mode", "v6v4")], &[])).await;
    expect_err("no server", r, "InvalidConnection", &["server"]);

    // Hostile sizes: refused as BadArguments, and the service still answers afterwards.
    let many: Vec<(String, String)> = (0..100).map(|i| (format!("key-{i}"), "v".to_owned())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = fx.need_secrets(&fx.profile(&many, &[])).await;
    expect_err("100 vpn.data keys", r, "BadArguments", &["vpn.data"]);
    let huge = "x".repeat(1 << 20);
    let r = fx
        .need_secrets(&fx.profile(&[("server", "broker.example"), ("username", &huge)], &[]))
        .await;
    expect_err("a 1 MB value", r, "BadArguments", &["vpn.data"]);
    let huge_key = fx.profile(&[("server", "broker.example"), (&huge, "x")], &[]);
    expect_err(
        "a 1 MB key",
        fx.need_secrets(&huge_key).await,
        "BadArguments",
        &["vpn.data"],
    );
    let many_settings = (0..100).fold(ok.clone(), |c, i| c.set(&format!("setting-{i}"), "k", Value::U32(i)));
    expect_err(
        "100 settings",
        fx.need_secrets(&many_settings).await,
        "BadArguments",
        &[],
    );

    // What needs a password, and what does not.
    assert_eq!(fx.need_secrets(&ok).await.expect("valid anonymous profile"), "");
    let digest = [
        ("server", "broker.example"),
        ("auth-method", "digest-md5"),
        ("username", "alice"),
    ];
    assert_eq!(
        fx.need_secrets(&fx.profile(&digest, &[])).await.expect("digest-md5"),
        "vpn"
    );
    let r = fx.need_secrets(&fx.profile(&digest, &[("password", "")])).await;
    assert_eq!(r.expect("digest-md5, empty password"), "vpn");
    let r = fx.need_secrets(&fx.profile(&digest, &[("password", PASSWORD)])).await;
    assert_eq!(r.expect("digest-md5 with password"), "");
    let not_required = [
        ("server", "broker.example"),
        ("auth-method", "digest-md5"),
        ("username", "alice"),
        ("password-flags", "4"),
    ];
    let r = fx.need_secrets(&fx.profile(&not_required, &[])).await;
    assert_eq!(r.expect("password-flags=4"), "");
    // A user name without a method means "any", which needs a password.
    let r = fx
        .need_secrets(&fx.profile(&[("server", "broker.example"), ("username", "alice")], &[]))
        .await;
    assert_eq!(r.expect("username only"), "vpn");

    assert_eq!(fx.need_secrets(&ok).await.expect("still answering"), "");
    fx.assert_log_has_no_password();
}

#[tokio::test]
async fn state_machine_in_init_and_disconnect_stops() {
    if !can_run("state_machine_in_init_and_disconnect_stops") {
        return;
    }
    let mut fx = Fixture::start("init").await;
    let digest = [
        ("server", CLOSED_BROKER),
        ("auth-method", "digest-md5"),
        ("username", "alice"),
    ];

    // Non-interactive Connect cannot ask for the missing password.
    let r = fx.connect(&fx.profile(&digest, &[])).await;
    expect_err("Connect without password", r, "InvalidConnection", &["password"]);
    // A password that is not acceptable is refused without being shown.
    let r = fx.connect(&fx.profile(&digest, &[("password", BAD_PASSWORD)])).await;
    expect_err("Connect with a bad password", r, "InvalidConnection", &["vpn.secrets"]);
    // Bad dictionaries are refused by Connect as by NeedSecrets.
    let r = fx.connect(&fx.profile(&digest, &[]).without("vpn", None)).await;
    expect_err("Connect without vpn", r, "BadArguments", &[]);
    let r = fx
        .connect_interactive(&fx.profile(&[("server", CLOSED_BROKER), ("mtu", "9000")], &[]))
        .await;
    expect_err("ConnectInteractive mtu=9000", r, "InvalidConnection", &["mtu"]);
    // No connection waits for secrets.
    let r = fx.new_secrets(&fx.profile(&digest, &[("password", PASSWORD)])).await;
    expect_err("NewSecrets in INIT", r, "WrongState", &[]);

    assert_eq!(fx.state().await, INIT, "refused calls changed the state");

    // Disconnect in INIT: STOPPED, and the process ends (no --persist).
    let mut signals = fx.signals().await;
    fx.disconnect().await.expect("Disconnect in INIT");
    let seen = signals.until(&Sig::State(STOPPED), &fx).await;
    assert_eq!(seen, [Sig::State(STOPPED)]);
    fx.expect_exit().await;
    fx.assert_log_has_no_password();
}

#[tokio::test]
async fn connect_to_a_closed_port_fails_and_exits() {
    if !can_run("connect_to_a_closed_port_fails_and_exits") {
        return;
    }
    let mut fx = Fixture::start("closed").await;
    let mut signals = fx.signals().await;
    // Returns at once: the negotiation runs after the reply. vpn.timeout 1 s: a first
    // connection waits for an unreachable broker two thirds of it, not the default 40 s.
    let closed = fx
        .profile(&[("server", CLOSED_BROKER)], &[])
        .set("vpn", "timeout", Value::from(1u32));
    fx.connect(&closed).await.expect("Connect with an anonymous profile");
    let seen = signals.until(&Sig::State(STOPPED), &fx).await;
    let relevant: Vec<Sig> = seen.into_iter().filter(|s| !matches!(s, Sig::Other(_))).collect();
    assert_eq!(
        relevant,
        [Sig::State(STARTING), Sig::Failure(CONNECT_FAILED), Sig::State(STOPPED)],
        "log:\n{}",
        fx.log()
    );
    fx.expect_exit().await;
}

#[tokio::test]
async fn connect_while_starting_is_refused_and_disconnect_fails_the_attempt() {
    if !can_run("connect_while_starting_is_refused_and_disconnect_fails_the_attempt") {
        return;
    }
    let broker = SilentBroker::new();
    let mut fx = Fixture::start("starting").await;
    let profile = fx.profile(&[("server", &broker.addr)], &[]);
    let mut signals = fx.signals().await;
    fx.connect(&profile).await.expect("Connect");
    assert_eq!(signals.next().await, Some(Sig::State(STARTING)));

    let r = fx.connect(&profile).await;
    expect_err("Connect while STARTING", r, "WrongState", &[]);
    let r = fx.connect_interactive(&profile).await;
    expect_err("ConnectInteractive while STARTING", r, "WrongState", &[]);
    let r = fx.new_secrets(&profile).await;
    expect_err("NewSecrets without SecretsRequired", r, "WrongState", &[]);

    fx.disconnect().await.expect("Disconnect while STARTING");
    let seen = signals.until(&Sig::State(STOPPED), &fx).await;
    assert_eq!(
        seen,
        [Sig::Failure(CONNECT_FAILED), Sig::State(STOPPING), Sig::State(STOPPED)],
        "log:\n{}",
        fx.log()
    );
    fx.expect_exit().await;
}

#[tokio::test]
async fn connect_interactive_asks_for_the_password() {
    if !can_run("connect_interactive_asks_for_the_password") {
        return;
    }
    let broker = SilentBroker::new();
    let mut fx = Fixture::start("interactive").await;
    let data = [
        ("server", broker.addr.as_str()),
        ("auth-method", "digest-md5"),
        ("username", "alice"),
        ("password-flags", "2"),
    ];
    let mut signals = fx.signals().await;
    fx.connect_interactive(&fx.profile(&data, &[]))
        .await
        .expect("ConnectInteractive without the password");
    assert_eq!(signals.next().await, Some(Sig::State(STARTING)));
    match signals.next().await {
        Some(Sig::SecretsRequired(message, secrets)) => {
            assert_eq!(secrets, ["password"]);
            assert!(!message.is_empty(), "SecretsRequired without a message");
        }
        other => panic!("expected SecretsRequired, got {other:?}; log:\n{}", fx.log()),
    }

    fx.new_secrets(&fx.profile(&data, &[("password", PASSWORD)]))
        .await
        .expect("NewSecrets with the password");
    // Asked once, answered once.
    let r = fx.new_secrets(&fx.profile(&data, &[("password", PASSWORD)])).await;
    expect_err("second NewSecrets", r, "WrongState", &[]);

    fx.disconnect().await.expect("Disconnect");
    let seen = signals.until(&Sig::State(STOPPED), &fx).await;
    assert_eq!(
        seen,
        [Sig::Failure(CONNECT_FAILED), Sig::State(STOPPING), Sig::State(STOPPED)],
        "log:\n{}",
        fx.log()
    );
    fx.expect_exit().await;
    // The log is there (so the next check means something) and holds no password.
    assert!(fx.log().contains("connect"), "no log with --debug:\n{}", fx.log());
    fx.assert_log_has_no_password();
}

/// With --persist the process stays after STOPPED and takes the next connection; SIGTERM
/// still ends it, after tearing down the running attempt.
#[tokio::test]
async fn persist_keeps_the_service_and_sigterm_stops_it() {
    if !can_run("persist_keeps_the_service_and_sigterm_stops_it") {
        return;
    }
    let broker = SilentBroker::new();
    let mut fx = Fixture::start_with("persist", &["--persist"]).await;
    let mut signals = fx.signals().await;
    let closed = fx
        .profile(&[("server", CLOSED_BROKER)], &[])
        .set("vpn", "timeout", Value::from(1u32));
    fx.connect(&closed).await.expect("Connect");
    let seen = signals.until(&Sig::State(STOPPED), &fx).await;
    assert_eq!(
        seen,
        [Sig::State(STARTING), Sig::Failure(CONNECT_FAILED), Sig::State(STOPPED)],
        "log:\n{}",
        fx.log()
    );
    // Still there, and says so.
    assert_eq!(fx.state().await, STOPPED);
    assert!(fx.exit_status().is_none(), "exited despite --persist");
    expect_err("Disconnect when STOPPED", fx.disconnect().await, "AlreadyStopped", &[]);

    // The next connection is accepted from STOPPED.
    fx.connect(&fx.profile(&[("server", &broker.addr)], &[]))
        .await
        .expect("Connect from STOPPED");
    assert_eq!(signals.next().await, Some(Sig::State(STARTING)));
    fx.signal(Signal::SIGTERM);
    let seen = signals.until(&Sig::State(STOPPED), &fx).await;
    assert_eq!(seen, [Sig::State(STOPPING), Sig::State(STOPPED)], "log:\n{}", fx.log());
    fx.expect_exit().await;
}

/// NetworkManager leaving the bus ends the connection and the process (docs/nm-plugin.md §3.5).
#[tokio::test]
async fn networkmanager_leaving_the_bus_stops_the_service() {
    if !can_run("networkmanager_leaving_the_bus_stops_the_service") {
        return;
    }
    let broker = SilentBroker::new();
    let mut fx = Fixture::start("nmgone").await;
    let nm = zbus::connection::Builder::address(fx.address.as_str())
        .expect("bus address")
        .name("org.freedesktop.NetworkManager")
        .expect("name")
        .build()
        .await
        .expect("own org.freedesktop.NetworkManager on the private bus");
    let mut signals = fx.signals().await;
    fx.connect(&fx.profile(&[("server", &broker.addr)], &[]))
        .await
        .expect("Connect");
    assert_eq!(signals.next().await, Some(Sig::State(STARTING)));
    nm.release_name("org.freedesktop.NetworkManager")
        .await
        .expect("release the name");
    let seen = signals.until(&Sig::State(STOPPED), &fx).await;
    assert_eq!(seen, [Sig::State(STOPPING), Sig::State(STOPPED)], "log:\n{}", fx.log());
    fx.expect_exit().await;
}
