//! `org.freedesktop.NetworkManager.VPN.Plugin` for TSP (docs/nm-plugin.md §1–3).
//!
//! One process serves one connection (`supports-multiple-connections=true`). Methods answer at
//! once; the work runs in a session task: ask for a missing password (`SecretsRequired`), then
//! the [`Supervisor`] negotiates, builds the tunnel on a persistent TUN and reports it with
//! `Config` + `Ip6Config`/`Ip4Config` and STARTED. When the tunnel drops (roaming, keepalive
//! loss, broker restart) the supervisor renegotiates with the password it keeps in memory; we
//! go STARTED → STARTING and report again, which brings NetworkManager back to "activated".

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{OwnedValue, Value};
use zbus::{interface, names::InterfaceName};

use super::ipconfig::TunnelReport;
use tsp_client::net::hostkeys::{KnownHostsFile, TrustMode};
use tsp_client::net::{NegotiateOptions, NetError};
use tsp_client::supervisor::{
    DownReason, Ended, Hooks, InterfaceNames, NoPrefix, Profile, RetryPolicy, SiteFiles, Supervisor, TunnelInfo,
};
use tsp_config::vpn_data::{self, VpnSettings};
use tsp_proto::types::{HostType, TunnelMode};
use tsp_tunnel::host::{self, Configured};
use tsp_tunnel::netlink::{self, Netlink};

use tsp_config::names::SERVICE;

pub const PATH: &str = "/org/freedesktop/NetworkManager/VPN/Plugin";
pub const INTERFACE: &str = "org.freedesktop.NetworkManager.VPN.Plugin";

/// `NMVpnServiceState`.
pub mod state {
    pub const UNKNOWN: u32 = 0;
    pub const INIT: u32 = 1;
    pub const STARTING: u32 = 3;
    pub const STARTED: u32 = 4;
    pub const STOPPING: u32 = 5;
    pub const STOPPED: u32 = 6;
}

/// `NMVpnPluginFailure`.
pub mod failure {
    pub const LOGIN_FAILED: u32 = 0;
    pub const CONNECT_FAILED: u32 = 1;
    pub const BAD_IP_CONFIG: u32 = 2;
}

/// A connection as NetworkManager sends it (`a{sa{sv}}`).
pub type ConnectionDict = HashMap<String, HashMap<String, OwnedValue>>;

/// Bounds on what a caller may send: a tsp profile has a few dozen short values.
const MAX_ITEMS: usize = 64;
const MAX_VALUE: usize = 4096;
/// How long to wait for `NewSecrets` after `SecretsRequired` (NetworkManager's own limit for
/// the whole activation is the profile's timeout + 180 s).
const SECRETS_WAIT: Duration = Duration::from_secs(180);
/// Consecutive failed negotiations before a first connection is reported as failed (the
/// second attempt is immediate, so a transient loss does not fail it).
const FIRST_CONNECT_ATTEMPTS: u32 = 2;
/// NetworkManager's VPN timeout when the profile's `vpn.timeout` is 0 or absent.
const NM_VPN_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a first connection keeps trying a broker it cannot reach (probing it every
/// second meanwhile): at boot, a VPN activated with its base connection may come before the
/// network or the broker does. Two thirds of NetworkManager's timeout for the profile (40 s by
/// default), so the failure it reports is ours, with its cause, not NetworkManager's timeout.
fn first_connect_patience(vpn_timeout: Option<Duration>) -> Duration {
    vpn_timeout.unwrap_or(NM_VPN_TIMEOUT) * 2 / 3
}

/// The plugin's D-Bus errors (`org.freedesktop.NetworkManager.VPN.Error.*`, docs/nm-plugin.md §1.5).
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.freedesktop.NetworkManager.VPN.Error")]
pub enum VpnError {
    #[zbus(error)]
    ZBus(zbus::Error),
    Failed(String),
    StartingInProgress(String),
    AlreadyStarted(String),
    StoppingInProgress(String),
    AlreadyStopped(String),
    WrongState(String),
    BadArguments(String),
    LaunchFailed(String),
    InvalidConnection(String),
    InteractiveNotSupported(String),
}

/// What this process serves, from its command line and environment.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// `--persist`: stay for another connection after STOPPED.
    pub persist: bool,
    /// Known host keys (PASSDSS) and gogoc's multi-site files live here (root-owned).
    pub state_dir: PathBuf,
}

/// The profile fields the service uses, read from the connection dictionary.
#[derive(Debug, Clone)]
pub struct Request {
    pub uuid: String,
    pub id: String,
    pub data: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, String>,
    /// `vpn.timeout`: how long NetworkManager waits for the connection (0 or absent: its
    /// default, 60 s).
    pub timeout: Option<Duration>,
}

impl Request {
    /// Reads the `connection` and `vpn` settings; anything of the wrong type or size is
    /// refused with `BadArguments`, a connection that is not a tsp VPN with `InvalidConnection`.
    pub fn from_dbus(c: &ConnectionDict) -> Result<Self, VpnError> {
        if c.len() > MAX_ITEMS || c.values().any(|s| s.len() > MAX_ITEMS) {
            return Err(VpnError::BadArguments("the connection has too many settings".into()));
        }
        let vpn = c
            .get("vpn")
            .ok_or_else(|| VpnError::BadArguments("the connection has no \"vpn\" setting".into()))?;
        let string = |setting: &HashMap<String, OwnedValue>, setting_name: &str, key: &str| match setting
            .get(key)
            .map(|v| <&str>::try_from(&**v))
        {
            None => Ok(None),
            Some(Ok(s)) if s.len() <= MAX_VALUE => Ok(Some(s.to_owned())),
            Some(_) => Err(VpnError::BadArguments(format!(
                "{setting_name}.{key} is not a string of at most {MAX_VALUE} bytes"
            ))),
        };
        match string(vpn, "vpn", "service-type")? {
            Some(s) if s == SERVICE => {}
            Some(s) => {
                return Err(VpnError::InvalidConnection(format!(
                    "vpn.service-type is {:?}, not {SERVICE}",
                    s.chars().take(80).collect::<String>()
                )));
            }
            None => return Err(VpnError::InvalidConnection("vpn.service-type is missing".into())),
        }
        let map = |key: &str| -> Result<BTreeMap<String, String>, VpnError> {
            let Some(v) = vpn.get(key) else {
                return Ok(BTreeMap::new());
            };
            let bad = || VpnError::BadArguments(format!("vpn.{key} is not a dictionary of strings (a{{ss}})"));
            // zvariant would also convert an a{sv} holding strings; NetworkManager sends a{ss}.
            if *v.value_signature() != "a{ss}" {
                return Err(bad());
            }
            let m = HashMap::<String, String>::try_from(v.try_clone().map_err(|_| bad())?).map_err(|_| bad())?;
            if m.len() > MAX_ITEMS || m.iter().any(|(k, v)| k.len() > MAX_VALUE || v.len() > MAX_VALUE) {
                return Err(VpnError::BadArguments(format!(
                    "vpn.{key} is too large (at most {MAX_ITEMS} items of {MAX_VALUE} bytes)"
                )));
            }
            Ok(m.into_iter().collect())
        };
        let data = map("data")?;
        let secrets = map("secrets")?;
        let timeout = match vpn.get("timeout").map(|v| u32::try_from(&**v)) {
            None | Some(Ok(0)) => None,
            Some(Ok(secs)) => Some(Duration::from_secs(secs.into())),
            Some(Err(_)) => return Err(VpnError::BadArguments("vpn.timeout is not a u32".into())),
        };
        let connection = c.get("connection");
        let (uuid, id) = match connection {
            Some(s) => (string(s, "connection", "uuid")?, string(s, "connection", "id")?),
            None => (None, None),
        };
        let uuid = uuid.ok_or_else(|| VpnError::InvalidConnection("connection.uuid is missing".into()))?;
        if uuid.is_empty() || !uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Err(VpnError::InvalidConnection("connection.uuid is not a UUID".into()));
        }
        Ok(Self {
            id: id.unwrap_or_default(),
            uuid,
            data,
            secrets,
            timeout,
        })
    }

    /// The tunnel interface of this connection: the same name on every activation, so a
    /// device left by a killed service is found and removed by the next one.
    pub fn ifname(&self) -> String {
        let hex: String = self.uuid.chars().filter(char::is_ascii_hexdigit).take(8).collect();
        format!("tsp-{}", hex.to_ascii_lowercase())
    }

    fn settings(&self) -> Result<VpnSettings, VpnError> {
        let settings = vpn_data::parse_vpn_data(&self.data).map_err(|e| VpnError::InvalidConnection(e.to_string()))?;
        // Proxy mode asks the broker for a tunnel that ends on another router (gogoCLIENT's
        // cisco template): NetworkManager would configure it on this host, where nothing
        // would answer. The key stays valid in vpn.data (import and export keep it).
        if settings.cfg.proxy_client {
            return Err(VpnError::InvalidConnection(
                "proxy-client=yes negotiates a tunnel for another router, which NetworkManager cannot \
                 configure here; use tspc with proxy_client=yes for that"
                    .into(),
            ));
        }
        Ok(settings)
    }
}

/// State shared by the D-Bus object, the session task and `main`.
pub struct Shared {
    inner: Mutex<Inner>,
    options: ServiceOptions,
    conn: std::sync::OnceLock<zbus::Connection>,
    quit: watch::Sender<bool>,
    force_quit: AtomicBool,
}

struct Inner {
    state: u32,
    session: Option<Session>,
}

struct Session {
    stop: Arc<watch::Sender<bool>>,
    /// Present while the session waits for `NewSecrets`.
    secrets: Option<oneshot::Sender<BTreeMap<String, String>>>,
}

impl Shared {
    pub fn new(options: ServiceOptions) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                state: state::INIT,
                session: None,
            }),
            options,
            conn: std::sync::OnceLock::new(),
            quit: watch::channel(false).0,
            force_quit: AtomicBool::new(false),
        })
    }

    /// Hands over the bus connection once it is built (signals need it).
    pub fn attach(&self, conn: zbus::Connection) {
        let _ = self.conn.set(conn);
    }

    /// Resolves when the process should exit.
    pub fn quit_requested(&self) -> watch::Receiver<bool> {
        self.quit.subscribe()
    }

    pub fn state(&self) -> u32 {
        self.lock().state
    }

    fn can_connect(inner: &Inner) -> Result<(), VpnError> {
        if !matches!(inner.state, state::INIT | state::STOPPED) || inner.session.is_some() {
            return Err(VpnError::WrongState(format!(
                "cannot connect in state {} (one connection per process)",
                inner.state
            )));
        }
        Ok(())
    }

    fn check_can_connect(&self) -> Result<(), VpnError> {
        Self::can_connect(&self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn emitter(&self) -> Option<SignalEmitter<'static>> {
        SignalEmitter::new(self.conn.get()?, PATH)
            .ok()
            .map(SignalEmitter::into_owned)
    }

    /// Moves to `new` and tells NetworkManager (signal + property change).
    async fn set_state(&self, new: u32) {
        let old = std::mem::replace(&mut self.lock().state, new);
        if old == new {
            return;
        }
        tracing::debug!(old, new, "plugin state");
        let Some(em) = self.emitter() else { return };
        if let Err(e) = Plugin::vpn_state_changed(&em, new).await {
            tracing::warn!(error = %e, "cannot emit StateChanged");
        }
        if let Ok(iface) = InterfaceName::try_from(INTERFACE) {
            let changed = HashMap::from([("State", Value::from(new))]);
            let _ = zbus::fdo::Properties::properties_changed(&em, iface, changed, Cow::Borrowed(&[])).await;
        }
    }

    async fn emit_failure(&self, reason: u32) {
        if let Some(em) = self.emitter()
            && let Err(e) = Plugin::failure(&em, reason).await
        {
            tracing::warn!(error = %e, "cannot emit Failure");
        }
    }

    /// Stops the session (if any) and, once it is down, the process — also with `--persist`.
    /// Used when NetworkManager goes away and on SIGTERM.
    pub async fn shutdown(&self) {
        self.force_quit.store(true, Ordering::SeqCst);
        let stop = self.lock().session.as_ref().map(|s| s.stop.clone());
        match stop {
            Some(stop) => {
                self.set_state(state::STOPPING).await;
                // The session task ends with STOPPED, then `finish` asks to quit.
                let _ = stop.send(true);
            }
            None => {
                let _ = self.quit.send(true);
            }
        }
    }

    /// The session ended: report the failure (if any), STOPPED, and exit unless `--persist`.
    async fn finish(&self, failure: Option<u32>) {
        if let Some(reason) = failure {
            self.emit_failure(reason).await;
        }
        self.lock().session = None;
        self.set_state(state::STOPPED).await;
        if !self.options.persist || self.force_quit.load(Ordering::SeqCst) {
            let _ = self.quit.send(true);
        }
    }
}

/// The D-Bus object at [`PATH`].
pub struct Plugin {
    shared: Arc<Shared>,
}

impl Plugin {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    async fn start(&self, connection: ConnectionDict, interactive: bool) -> Result<(), VpnError> {
        // The state first, as libnm's plugins answer: a busy service says so whatever it got.
        self.shared.check_can_connect()?;
        let req = Request::from_dbus(&connection)?;
        let settings = req.settings()?;
        let need_secrets = settings.missing_password(&req.secrets);
        if need_secrets && !interactive {
            return Err(VpnError::InvalidConnection(format!(
                "auth-method {} needs a password and NetworkManager supplied none",
                settings.cfg.auth_method
            )));
        }
        let settings = if need_secrets {
            settings
        } else {
            settings
                .with_secrets(&req.secrets)
                .map_err(|e| VpnError::InvalidConnection(e.to_string()))?
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop_tx = Arc::new(stop_tx);
        let (secrets_tx, secrets_rx) = oneshot::channel();
        {
            let mut inner = self.shared.lock();
            Shared::can_connect(&inner)?;
            inner.session = Some(Session {
                stop: stop_tx.clone(),
                secrets: need_secrets.then_some(secrets_tx),
            });
        }
        tracing::info!(connection = %req.id, uuid = %req.uuid, server = ?settings.cfg.server, "connect");
        self.shared.set_state(state::STARTING).await;
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let failure = run_session(
                &shared,
                req,
                settings,
                need_secrets.then_some(secrets_rx),
                stop_tx,
                stop_rx,
            )
            .await;
            shared.finish(failure).await;
        });
        Ok(())
    }
}

#[interface(name = "org.freedesktop.NetworkManager.VPN.Plugin")]
impl Plugin {
    async fn connect(&self, connection: ConnectionDict) -> Result<(), VpnError> {
        self.start(connection, false).await
    }

    async fn connect_interactive(
        &self,
        connection: ConnectionDict,
        details: HashMap<String, OwnedValue>,
    ) -> Result<(), VpnError> {
        let _ = details;
        self.start(connection, true).await
    }

    /// `"vpn"` when the password is needed and absent, else `""`.
    async fn need_secrets(&self, settings: ConnectionDict) -> Result<String, VpnError> {
        let req = Request::from_dbus(&settings)?;
        let vpn = req.settings()?;
        Ok(if vpn.missing_password(&req.secrets) {
            "vpn".to_owned()
        } else {
            String::new()
        })
    }

    async fn new_secrets(&self, connection: ConnectionDict) -> Result<(), VpnError> {
        let req = Request::from_dbus(&connection)?;
        let mut inner = self.shared.lock();
        if inner.state != state::STARTING {
            return Err(VpnError::WrongState("no connection is waiting for secrets".into()));
        }
        let waiting = inner.session.as_mut().and_then(|s| s.secrets.take());
        match waiting {
            Some(tx) => {
                let _ = tx.send(req.secrets);
                Ok(())
            }
            None => Err(VpnError::WrongState("no secrets were asked for".into())),
        }
    }

    async fn disconnect(&self) -> Result<(), VpnError> {
        let (st, stop) = {
            let inner = self.shared.lock();
            (inner.state, inner.session.as_ref().map(|s| s.stop.clone()))
        };
        match (st, stop) {
            (state::STOPPING, _) => Err(VpnError::StoppingInProgress("already disconnecting".into())),
            (state::STOPPED, None) => Err(VpnError::AlreadyStopped("not connected".into())),
            (_, Some(stop)) => {
                if st == state::STARTING {
                    // As libnm's plugins do: an interrupted connect is a failed one.
                    self.shared.emit_failure(failure::CONNECT_FAILED).await;
                }
                self.shared.set_state(state::STOPPING).await;
                let _ = stop.send(true);
                Ok(())
            }
            (_, None) => {
                self.shared.finish(None).await;
                Ok(())
            }
        }
    }

    /// For helpers pushing configuration (libnm parity); this service needs none.
    async fn set_config(&self, config: HashMap<String, OwnedValue>) {
        tracing::debug!(keys = config.len(), "SetConfig ignored");
    }

    async fn set_ip4_config(&self, config: HashMap<String, OwnedValue>) {
        tracing::debug!(keys = config.len(), "SetIp4Config ignored");
    }

    async fn set_ip6_config(&self, config: HashMap<String, OwnedValue>) {
        tracing::debug!(keys = config.len(), "SetIp6Config ignored");
    }

    /// As libnm: a helper's failure ends the connection with BAD_IP_CONFIG.
    async fn set_failure(&self, reason: String) -> Result<(), VpnError> {
        tracing::warn!(reason = %reason.chars().take(200).collect::<String>(), "SetFailure");
        self.shared.emit_failure(failure::BAD_IP_CONFIG).await;
        self.disconnect().await
    }

    #[zbus(property)]
    async fn state(&self) -> u32 {
        self.shared.state()
    }

    #[zbus(signal, name = "StateChanged")]
    pub async fn vpn_state_changed(emitter: &SignalEmitter<'_>, state: u32) -> zbus::Result<()>;

    #[zbus(signal)]
    pub async fn secrets_required(emitter: &SignalEmitter<'_>, message: &str, secrets: &[&str]) -> zbus::Result<()>;

    #[zbus(signal)]
    pub async fn config(emitter: &SignalEmitter<'_>, config: HashMap<&str, Value<'_>>) -> zbus::Result<()>;

    #[zbus(signal)]
    pub async fn ip4_config(emitter: &SignalEmitter<'_>, ip4config: HashMap<&str, Value<'_>>) -> zbus::Result<()>;

    #[zbus(signal)]
    pub async fn ip6_config(emitter: &SignalEmitter<'_>, ip6config: HashMap<&str, Value<'_>>) -> zbus::Result<()>;

    #[zbus(signal)]
    pub async fn login_banner(emitter: &SignalEmitter<'_>, banner: &str) -> zbus::Result<()>;

    #[zbus(signal)]
    pub async fn failure(emitter: &SignalEmitter<'_>, reason: u32) -> zbus::Result<()>;
}

/// One connection, from the password to the end; returns the failure to report, if any.
async fn run_session(
    shared: &Arc<Shared>,
    req: Request,
    settings: VpnSettings,
    secrets: Option<oneshot::Receiver<BTreeMap<String, String>>>,
    stop_tx: Arc<watch::Sender<bool>>,
    mut stop: watch::Receiver<bool>,
) -> Option<u32> {
    let settings = match secrets {
        None => settings,
        Some(rx) => {
            let server = settings.cfg.server.clone().unwrap_or_default();
            let message = format!("A password is needed for the TSP broker {server}.");
            if let Some(em) = shared.emitter() {
                let _ = Plugin::secrets_required(&em, &message, &[tsp_config::names::SECRET_PASSWORD]).await;
            }
            let got = tokio::select! {
                r = rx => r.ok(),
                _ = stop.changed() => return None,
                _ = tokio::time::sleep(SECRETS_WAIT) => None,
            };
            let Some(secrets) = got else {
                tracing::error!("no password was supplied");
                return Some(failure::CONNECT_FAILED);
            };
            match settings.with_secrets(&secrets) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "the supplied secrets are not usable");
                    return Some(failure::LOGIN_FAILED);
                }
            }
        }
    };
    let ifname = req.ifname();
    let nl = match Netlink::new() {
        Ok(nl) => nl,
        Err(e) => {
            tracing::error!(error = %e, "cannot talk to the kernel (rtnetlink)");
            return Some(failure::CONNECT_FAILED);
        }
    };
    // A device of a killed predecessor, still holding NetworkManager's old addresses.
    remove_device(&nl, &ifname).await;
    let cfg = &settings.cfg;
    let state_dir = &shared.options.state_dir;
    let negotiate = NegotiateOptions::from_config(
        cfg,
        // Trust on first use, pinned afterwards; a changed key fails the connection.
        Arc::new(KnownHostsFile::new(
            state_dir.join("known_hosts"),
            TrustMode::AutoAccept,
        )),
    );
    let site_dir = state_dir.join(&req.uuid);
    let sites = match std::fs::create_dir_all(&site_dir) {
        Ok(()) => Some(SiteFiles {
            broker_list: site_dir.join("broker_list"),
            last_server: site_dir.join("last_server"),
            always_use_same_server: cfg.always_use_same_server,
        }),
        Err(e) => {
            tracing::warn!(dir = %site_dir.display(), error = %e, "no multi-site files");
            None
        }
    };
    let profile = Profile {
        server: cfg.server.clone().unwrap_or_default(),
        negotiate,
        retry: RetryPolicy {
            auto_retry: true,
            delay: Duration::from_secs(u64::from(cfg.retry_delay)),
            delay_max: Duration::from_secs(u64::from(cfg.retry_delay_max)),
        },
        interfaces: InterfaceNames {
            v6v4: ifname.clone(),
            v6udpv4: ifname.clone(),
            v4v6: ifname.clone(),
        },
        sites,
        persist_device: true,
        // As tspc: a router request answered without a prefix fails the connection (see
        // `NmHooks::failed`) unless router-fallback-host=yes.
        no_prefix: match (cfg.host_type, cfg.router_fallback_host) {
            (HostType::Router, false) => NoPrefix::Fail,
            (HostType::Router, true) => NoPrefix::RunAsHost,
            _ => NoPrefix::NotRouter,
        },
        // NetworkManager configures a local device; proxy mode (a tunnel for an external
        // router) is tspc's.
        proxy: false,
        datapath: cfg.datapath_kind,
        busy_poll: Duration::from_micros(cfg.busy_poll.into()),
    };
    let hooks = NmHooks {
        shared: shared.clone(),
        nl,
        mtu: settings.mtu,
        lan_interface: (!cfg.if_prefix.is_empty()).then(|| cfg.if_prefix.clone()),
        router: None,
        ever_up: false,
        failures: 0,
        started: std::time::Instant::now(),
        patience: first_connect_patience(req.timeout),
        stop: stop_tx,
        failure: None,
    };
    let (ended, hooks) = Supervisor::new(profile, hooks, stop).run().await;
    remove_device(&hooks.nl, &ifname).await;
    match ended {
        Ended::Stopped => hooks.failure,
        Ended::GaveUp(e) => {
            let reason = if e.is_auth_failure() {
                failure::LOGIN_FAILED
            } else {
                failure::CONNECT_FAILED
            };
            Some(hooks.failure.unwrap_or(reason))
        }
    }
}

async fn remove_device(nl: &Netlink, ifname: &str) {
    match netlink::remove_stale_link(nl, ifname, "tun").await {
        Ok(true) => tracing::debug!(ifname, "tunnel device removed"),
        Ok(false) => {}
        Err(e) => tracing::warn!(ifname, error = %e, "cannot remove the tunnel device"),
    }
}

/// Reports tunnels to NetworkManager instead of configuring the host; router mode's LAN side
/// is the only host configuration we do (NetworkManager has no prefix delegation for VPNs).
struct NmHooks {
    shared: Arc<Shared>,
    nl: Netlink,
    mtu: u16,
    lan_interface: Option<String>,
    router: Option<Configured>,
    ever_up: bool,
    failures: u32,
    /// When the connection was asked for, and how long a first connection may wait for an
    /// unreachable broker.
    started: std::time::Instant,
    patience: Duration,
    stop: Arc<watch::Sender<bool>>,
    failure: Option<u32>,
}

impl NmHooks {
    async fn report(&self, info: &TunnelInfo) -> Result<(), String> {
        let em = self.shared.emitter().ok_or("not on the bus")?;
        let offer = &info.negotiated.offer;
        let report = TunnelReport {
            ifname: &info.ifname,
            offer,
            broker: info.peer.ip(),
            server: &info.server,
            mtu: self.mtu,
            mechanism: info.negotiated.mechanism.wire_name(),
            lan_interface: self.router.as_ref().and(self.lan_interface.as_deref()),
        };
        let e = |what: &str| {
            let what = what.to_owned();
            move |err: zbus::Error| format!("cannot emit {what}: {err}")
        };
        Plugin::config(&em, report.config()).await.map_err(e("Config"))?;
        if offer.mode == TunnelMode::V4V6 {
            Plugin::ip4_config(&em, report.ip4_config())
                .await
                .map_err(e("Ip4Config"))?;
        } else {
            Plugin::ip6_config(&em, report.ip6_config())
                .await
                .map_err(e("Ip6Config"))?;
        }
        tracing::info!(banner = %report.banner(), "tunnel reported to NetworkManager");
        Ok(())
    }
}

impl Hooks for NmHooks {
    fn connecting(&mut self, attempt: u32, server: &str) {
        tracing::info!(attempt, %server, "connecting");
    }

    async fn up(&mut self, info: &TunnelInfo) -> Result<(), String> {
        if let (Some(lan), true) = (&self.lan_interface, info.negotiated.offer.prefix.is_some()) {
            match host::configure_lan(&self.nl, &info.negotiated.offer, lan).await {
                Ok(c) => self.router = Some(c),
                Err(e) => return Err(format!("router mode on {lan}: {e}")),
            }
        }
        if let Err(e) = self.report(info).await {
            if let Some(c) = self.router.take() {
                c.remove(&self.nl).await;
            }
            return Err(e);
        }
        self.ever_up = true;
        self.failures = 0;
        self.shared.set_state(state::STARTED).await;
        Ok(())
    }

    async fn down(&mut self, info: &TunnelInfo, reason: &DownReason) {
        if let Some(c) = self.router.take() {
            c.remove(&self.nl).await;
        }
        if *reason != DownReason::Stopped {
            tracing::warn!(ifname = %info.ifname, %reason, "tunnel lost; renegotiating");
            if self.shared.state() == state::STARTED {
                // NetworkManager shows "connecting" and waits for the next Config.
                self.shared.set_state(state::STARTING).await;
            }
            // The next tunnel gets a fresh device (same name, new index). NetworkManager
            // (1.42 at least) only leaves "connecting" after it committed a configuration
            // that differs from the one applied; the same address on the same device would
            // leave it waiting forever.
            remove_device(&self.nl, &info.ifname).await;
        }
    }

    fn failed(&mut self, error: &NetError, retry_in: Option<Duration>) {
        self.failures += 1;
        if error.is_auth_failure() {
            tracing::error!(error = %error, "login failed");
            self.failure = Some(failure::LOGIN_FAILED);
            return;
        }
        // Not worth the slow retries: NetworkManager shows the cause now and its own
        // autoconnect policy decides about trying again.
        if error.is_no_prefix() {
            tracing::error!(error = %error, "router request answered without a prefix");
            self.failure = Some(failure::CONNECT_FAILED);
            let _ = self.stop.send(true);
            return;
        }
        match retry_in {
            Some(d)
                if self.ever_up
                    || self.failures < FIRST_CONNECT_ATTEMPTS
                    || (error.is_unreachable() && self.started.elapsed() < self.patience) =>
            {
                tracing::warn!(error = %error, "negotiation failed; retrying in {} s", d.as_secs());
            }
            _ => {
                tracing::error!(error = %error, "cannot connect to the broker");
                self.failure = Some(failure::CONNECT_FAILED);
                let _ = self.stop.send(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dict(pairs: &[(&str, Value<'_>)]) -> HashMap<String, OwnedValue> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OwnedValue::try_from(v.try_clone().unwrap()).unwrap()))
            .collect()
    }

    #[test]
    fn vpn_timeout_sets_how_long_a_first_connection_waits() {
        let mut c = connection(&[("server", "192.0.2.1")], &[]);
        assert_eq!(Request::from_dbus(&c).unwrap().timeout, None);
        assert_eq!(first_connect_patience(None), Duration::from_secs(40));
        let vpn = c.get_mut("vpn").unwrap();
        vpn.insert("timeout".into(), OwnedValue::from(9u32));
        let t = Request::from_dbus(&c).unwrap().timeout;
        assert_eq!(t, Some(Duration::from_secs(9)));
        assert_eq!(first_connect_patience(t), Duration::from_secs(6));
        let vpn = c.get_mut("vpn").unwrap();
        vpn.insert("timeout".into(), OwnedValue::from(0u32));
        assert_eq!(
            Request::from_dbus(&c).unwrap().timeout,
            None,
            "0 is NetworkManager's default"
        );
        let vpn = c.get_mut("vpn").unwrap();
        vpn.insert("timeout".into(), OwnedValue::try_from(Value::from("9")).unwrap());
        assert!(matches!(Request::from_dbus(&c), Err(VpnError::BadArguments(_))));
    }

    fn connection(data: &[(&str, &str)], secrets: &[(&str, &str)]) -> ConnectionDict {
        let m = |p: &[(&str, &str)]| -> HashMap<String, String> {
            p.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        HashMap::from([
            (
                "connection".to_owned(),
                dict(&[
                    ("uuid", Value::from("5a2f9c1e-0000-4000-8000-000000000001")),
                    ("id", Value::from("broker")),
                ]),
            ),
            (
                "vpn".to_owned(),
                dict(&[
                    ("service-type", Value::from(SERVICE)),
                    ("data", Value::from(m(data))),
                    ("secrets", Value::from(m(secrets))),
                ]),
            ),
        ])
    }

    #[test]
    fn reads_a_connection() {
        let c = connection(&[("server", "192.0.2.1"), ("username", "bob")], &[("password", "pw")]);
        let r = Request::from_dbus(&c).unwrap();
        assert_eq!(r.ifname(), "tsp-5a2f9c1e");
        assert_eq!(r.data["server"], "192.0.2.1");
        assert_eq!(r.secrets["password"], "pw");
        assert!(!r.settings().unwrap().missing_password(&r.secrets));
    }

    /// A tunnel for another router (proxy mode) is refused with a clear error rather than
    /// configured on this host.
    #[test]
    fn refuses_proxy_mode() {
        let c = connection(
            &[("server", "192.0.2.1"), ("proxy-client", "yes"), ("keepalive", "no")],
            &[],
        );
        let r = Request::from_dbus(&c).unwrap();
        match r.settings() {
            Err(VpnError::InvalidConnection(m)) => assert!(m.contains("proxy-client=yes"), "{m}"),
            other => panic!("proxy mode accepted: {other:?}"),
        }
    }

    #[test]
    fn refuses_what_is_not_a_tsp_connection() {
        let mut c = connection(&[("server", "192.0.2.1")], &[]);
        c.get_mut("vpn").unwrap().insert("data".into(), OwnedValue::from(7u32));
        assert!(matches!(Request::from_dbus(&c), Err(VpnError::BadArguments(_))));
        let mut c = connection(&[("server", "192.0.2.1")], &[]);
        let asv = HashMap::from([("server".to_owned(), Value::from("192.0.2.1"))]);
        c.get_mut("vpn")
            .unwrap()
            .insert("data".into(), OwnedValue::try_from(Value::from(asv)).unwrap());
        assert!(matches!(Request::from_dbus(&c), Err(VpnError::BadArguments(_))));
        let mut c = connection(&[("server", "192.0.2.1")], &[]);
        c.get_mut("vpn").unwrap().insert(
            "service-type".into(),
            OwnedValue::try_from(Value::from("org.example.other")).unwrap(),
        );
        assert!(matches!(Request::from_dbus(&c), Err(VpnError::InvalidConnection(_))));
        let mut c = connection(&[], &[]);
        c.remove("vpn");
        assert!(matches!(Request::from_dbus(&c), Err(VpnError::BadArguments(_))));
        let big: Vec<(String, String)> = (0..100).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        let big: Vec<(&str, &str)> = big.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert!(matches!(
            Request::from_dbus(&connection(&big, &[])),
            Err(VpnError::BadArguments(_))
        ));
    }
}
