//! `nm-tsp-service`: NetworkManager's VPN plugin for TSP tunnel brokers. NetworkManager starts
//! it (one process per connection, `--bus-name <service>.Connection_N`) and drives it over the
//! system bus. See nm-tsp-service(8).
//!
//! See docs/nm-plugin.md §3.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use futures::StreamExt as _;
use tsp_config::names::{SERVICE, SERVICE_USER};
use tsp_config::{LogLevels, SyslogFacility};
use tsp_nm::plugin::{PATH, Plugin, ServiceOptions, Shared, state};

/// NetworkManager's bus name; the service ends its connection when it goes away.
const NM_BUS_NAME: &str = "org.freedesktop.NetworkManager";
/// Without a connection request for this long, exit (as libnm's plugins do).
const IDLE_QUIT: Duration = Duration::from_secs(180);
/// How long teardown may take once asked to quit.
const TEARDOWN_LIMIT: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(
    name = "nm-tsp-service",
    version,
    about = "NetworkManager VPN plugin for TSP (RFC 5572) tunnel brokers",
    after_help = "Started by NetworkManager, not by hand: it is named by /usr/lib/NetworkManager/VPN/nm-tsp-service.name. \
                  Logging follows NM_VPN_LOG_LEVEL (syslog level 0-7) and NM_VPN_LOG_SYSLOG (1: to syslog, else stderr)."
)]
struct Cli {
    /// D-Bus name to own (NetworkManager passes one per connection).
    #[arg(long = "bus-name", value_name = "NAME", default_value = SERVICE)]
    bus_name: String,
    /// Do not exit when the connection ends; wait for the next one.
    #[arg(long)]
    persist: bool,
    /// Log everything to stderr (and never to syslog).
    #[arg(long)]
    debug: bool,
    /// Where PASSDSS host keys and the multi-site files are kept [default: $NM_TSP_STATE_DIR, else
    /// /var/lib/NetworkManager-tsp].
    #[arg(long = "state-dir", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The system user to run as, keeping CAP_NET_ADMIN and CAP_NET_RAW only; "root" stays
    /// root (with those two capabilities). A user that does not exist is warned about, and the
    /// service stays root.
    #[arg(long, value_name = "NAME", default_value = SERVICE_USER)]
    user: String,
}

const DEFAULT_STATE_DIR: &str = "/var/lib/NetworkManager-tsp";

/// gogoc-style levels from NetworkManager's environment (`NM_VPN_LOG_LEVEL` is a syslog
/// severity: 7 debug, 6 info, 5 notice, 4 warning and below).
fn log_levels(cli: &Cli) -> LogLevels {
    if cli.debug {
        return LogLevels {
            console: 0,
            stderr: 3,
            file: 0,
            syslog: 0,
        };
    }
    let level: u8 = std::env::var("NM_VPN_LOG_LEVEL")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(5);
    let rank = match level {
        7.. => 2,
        _ => 1,
    };
    // Without a syslog daemon the messages would be lost; stderr reaches NetworkManager's log.
    let syslog = std::env::var("NM_VPN_LOG_SYSLOG").is_ok_and(|v| v.trim() == "1")
        && std::path::Path::new(nm_tsp::logging::SYSLOG_SOCKET).exists();
    LogLevels {
        console: 0,
        stderr: if syslog { 0 } else { rank },
        file: 0,
        syslog: if syslog { rank } else { 0 },
    }
}

impl Cli {
    fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .or_else(|| std::env::var_os("NM_TSP_STATE_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any thread exists (capabilities and uids are per thread); logged once logging is
    // up. The state dir goes to the user with the rest.
    let state_dir = cli.state_dir();
    let user = (cli.user != "root").then_some(cli.user.as_str());
    let privileges = nm_tsp::privileges::drop_privileges(user, &[&state_dir]);
    let _log = match nm_tsp::logging::init_gogoc(&log_levels(&cli), 0, None, SyslogFacility::User, "nm-tsp-service") {
        Ok(g) => g,
        Err(e) => {
            eprintln!("nm-tsp-service: {e}");
            return ExitCode::FAILURE;
        }
    };
    use nm_tsp::privileges::Identity;
    match privileges {
        Ok(Identity::User { name, uid }) => {
            tracing::debug!("running as {name} (uid {uid}) with CAP_NET_ADMIN and CAP_NET_RAW only, no_new_privs set")
        }
        Ok(Identity::Root | Identity::Unprivileged) => {
            tracing::debug!("running with CAP_NET_ADMIN and CAP_NET_RAW at most, no_new_privs set")
        }
        Ok(Identity::RootBecause(why)) => {
            tracing::warn!("{why} (the package makes both); running as root with CAP_NET_ADMIN and CAP_NET_RAW only")
        }
        // Half-dropped privileges are a state nobody tested: refuse to run in it.
        Err(e) => {
            tracing::error!("cannot drop privileges: {e}");
            return ExitCode::FAILURE;
        }
    }
    if cli.bus_name != SERVICE && !cli.bus_name.starts_with(&format!("{SERVICE}.")) {
        tracing::error!(bus_name = %cli.bus_name, "the bus name must be {SERVICE} or below it");
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "nm-tsp-service failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> zbus::Result<()> {
    let shared = Shared::new(ServiceOptions {
        persist: cli.persist,
        state_dir: cli.state_dir(),
    });
    // The object is exported, and the connection handed to it for signals, before the name
    // is requested: NetworkManager calls NeedSecrets as soon as the name appears, and a
    // Connect that came before `attach` would change the state without a StateChanged.
    let conn = zbus::connection::Builder::system()?
        .serve_at(PATH, Plugin::new(shared.clone()))?
        .build()
        .await?;
    shared.attach(conn.clone());
    conn.request_name(cli.bus_name.as_str()).await?;
    tracing::info!(bus_name = %cli.bus_name, "nm-tsp-service ready");

    let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
    let mut nm_changes = dbus.receive_name_owner_changed_with_args(&[(0, NM_BUS_NAME)]).await?;
    let mut quit = shared.quit_requested();
    let idle = tokio::time::sleep(IDLE_QUIT);
    tokio::pin!(idle);
    let signals = shutdown_signal();
    tokio::pin!(signals);
    enum Why {
        Done,
        NmGone,
        Signal,
        Idle,
    }
    let why = loop {
        let why = tokio::select! {
            _ = quit.wait_for(|q| *q) => Why::Done,
            Some(change) = nm_changes.next() => {
                if change.args().is_ok_and(|a| a.new_owner().is_none()) { Why::NmGone } else { continue }
            }
            _ = &mut signals => Why::Signal,
            _ = &mut idle, if shared.state() == state::INIT && !cli.persist => Why::Idle,
        };
        break why;
    };
    match why {
        Why::Done => {}
        Why::Idle => tracing::info!("no connection request; exiting"),
        Why::NmGone | Why::Signal => {
            if matches!(why, Why::NmGone) {
                tracing::warn!("NetworkManager left the bus; disconnecting");
            } else {
                tracing::info!("signal received; disconnecting");
            }
            shared.shutdown().await;
            if tokio::time::timeout(TEARDOWN_LIMIT, quit.wait_for(|q| *q))
                .await
                .is_err()
            {
                tracing::warn!("teardown did not finish in time");
            }
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! { _ = t.recv() => {}, _ = i.recv() => {} }
        }
        _ => std::future::pending().await,
    }
}
