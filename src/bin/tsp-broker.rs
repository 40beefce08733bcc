//! `tsp-broker`: the bundled TSP broker (server side of RFC 5572), for demos, tests and small
//! sites. See tsp-broker(8).
//!
//! See docs/tsp-wire.md §1.7.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use nm_tsp::systemd::{self, Notifier};
use tsp_broker::accounts::Accounts;
use tsp_broker::config::BrokerConfig;
use tsp_broker::control::{self, Reply, Request, SessionView};
use tsp_broker::db::Db;
use tsp_broker::fleet::{self, Fleet};
use tsp_broker::reload::Loaded;
use tsp_broker::{Broker, serve};
use tsp_proto::sasl::passdss::HostKeyPair;
use tsp_proto::secret::Secret;

#[derive(Parser, Debug)]
#[command(
    name = "tsp-broker",
    version,
    about = "TSP (RFC 5572) tunnel broker: negotiates IPv6-in-IPv4, IPv6-in-UDP and IPv4-in-IPv6 tunnels with gogoCLIENT-compatible clients"
)]
struct Cli {
    /// Configuration file (TOML); without it, an anonymous broker on [::]:3653 (dual-stack).
    #[arg(short = 'c', long = "config", global = true)]
    config: Option<PathBuf>,
    /// More log output (-v info, -vv debug, -vvv trace).
    #[arg(short = 'v', action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the broker (the default). SIGHUP reloads the configuration, SIGTERM stops it.
    Run,
    /// Check the configuration, the accounts file and the host key, then exit.
    CheckConfig,
    /// List the running broker's tunnels and pending offers, through its control socket (the
    /// one FILE of -c names, else /run/tsp-broker/control).
    Sessions {
        /// Print the broker's JSON reply instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// End the tunnels of USER (or of an anonymous session, by the key `sessions` shows):
    /// the client may negotiate again; to keep it out, disable its account first.
    Disconnect { user: String },
    /// Add a user to the accounts file; the password is read from standard input.
    AddUser { user: String },
    /// Generate a DSA host key for PASSDSS-3DES-1 into FILE (mode 0600).
    GenHostKey { file: PathBuf },
    /// Manage the fleet's PostgreSQL database (the configuration's `database`).
    #[command(subcommand)]
    Db(DbCommand),
}

#[derive(Subcommand, Debug)]
enum DbCommand {
    /// Create or upgrade the schema (brokers also do it when they start).
    Migrate,
    /// Add a user; the password is read from standard input, only its HA1 is stored.
    AddUser { user: String },
    /// Give a user a new password (read from standard input); its addresses stay.
    SetPassword { user: String },
    /// Refuse a user's logins from now on (its addresses stay assigned).
    DisableUser { user: String },
    /// Let a disabled user log in again.
    EnableUser { user: String },
    /// List the users, their addresses and prefixes, and the broker carrying their tunnel.
    ListUsers,
    /// Copy the accounts (user:realm:HA1 lines) of FILE that belong to the realm.
    ImportAccounts { file: PathBuf },
    /// Print where each carried tunnel's address and prefix must be routed: one line
    /// "BLOCK BROKER-ADDRESS BROKER-ID" per block, live brokers only (for routing glue).
    Routes,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    nm_tsp::logging::init_stderr(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tsp-broker: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<&Path>) -> Result<BrokerConfig, String> {
    match path {
        Some(p) => BrokerConfig::load(p).map_err(|e| e.to_string()),
        None => Ok(BrokerConfig::default()),
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command.unwrap_or(Command::Run) {
        Command::GenHostKey { file } => gen_host_key(&file),
        Command::Db(cmd) => {
            let cfg = load_config(cli.config.as_deref())?;
            run_db(&cfg, cmd)
        }
        Command::AddUser { user } => {
            let cfg = load_config(cli.config.as_deref())?;
            if cfg.fleet.is_some() {
                return Err("the accounts live in the database: use `tsp-broker db add-user`".into());
            }
            let path = cfg
                .accounts_file
                .clone()
                .ok_or("the configuration names no accounts_file")?;
            let password = read_password(&user)?;
            Accounts::append(&path, &user, &cfg.realm, &password).map_err(|e| e.to_string())?;
            println!("added {user} to {} (realm {})", path.display(), cfg.realm);
            Ok(())
        }
        Command::Sessions { json } => sessions(cli.config.as_deref(), json),
        Command::Disconnect { user } => match ask(cli.config.as_deref(), &Request::Disconnect { user })? {
            Reply::Disconnected { user, sessions } => {
                println!("disconnected {user}: {sessions} session(s) ended");
                Ok(())
            }
            other => Err(unexpected(other)),
        },
        Command::CheckConfig => {
            let Loaded {
                cfg,
                accounts,
                host_key: key,
            } = Loaded::read(cli.config.as_deref())?;
            print_summary(&cfg, &accounts, key.is_some(), None);
            if cfg.fleet.is_some() {
                let db = open_db(&cfg)?;
                runtime()?
                    .block_on(db.check_schema())
                    .map_err(|e| format!("database: {e}"))?;
                println!("database reachable, schema up to date");
            }
            println!("configuration OK");
            Ok(())
        }
        Command::Run => run_broker(cli.config.as_deref()),
    }
}

/// Runs the broker until SIGTERM or SIGINT (or a listener fails); SIGHUP reloads the
/// configuration. Under systemd (`Type=notify`) it says when it is ready, reloading and
/// stopping, keeps a STATUS line, and pings the watchdog while it is healthy.
fn run_broker(path: Option<&Path>) -> Result<(), String> {
    let Loaded {
        cfg,
        accounts,
        host_key: key,
    } = Loaded::read(path)?;
    let cfg = Arc::new(cfg);
    let has_key = key.is_some();
    let protocol = Broker::server_config(&cfg, key);
    let fleet = match &cfg.fleet {
        Some(_) => Fleet::new(cfg.clone(), open_db(&cfg)?),
        None => None,
    };
    let notifier = Notifier::from_env();
    let notifier = notifier.as_ref();
    let watchdog = systemd::watchdog_timeout();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let signals = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        );
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = signals else {
            return Err("cannot handle signals".to_owned());
        };
        let mut shared = serve::Shared::new(Broker::new(cfg.clone(), accounts.clone()), protocol);
        if let Some(f) = &fleet {
            shared = shared.with_fleet(f.clone());
        }
        let mut running = serve::start(shared, &cfg)
            .await
            .map_err(|e| format!("cannot start: {e}"))?;
        print_summary(&cfg, &accounts, has_key, Some(&running));
        let shared = running.shared.clone();
        let mut status = status_text(&shared);
        systemd::notify(notifier, &format!("READY=1\nSTATUS={status}"));
        if let Some(w) = watchdog {
            tracing::info!(timeout = ?w, "systemd watchdog: pinging every {:?}", w / 2);
        }
        // The main loop also keeps the STATUS line current and the watchdog fed: at half the
        // watchdog's timeout, and every few seconds anyway.
        let period = watchdog.map_or(STATUS_PERIOD, |w| (w / 2).clamp(Duration::from_millis(10), STATUS_PERIOD));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut datapath_failed = false;
        let result = loop {
            tokio::select! {
                _ = running.wait() => break Err("a listener stopped".to_owned()),
                _ = term.recv() => break Ok(()),
                _ = int.recv() => break Ok(()),
                _ = hup.recv() => {
                    reload(path, &shared, notifier);
                    status = status_text(&shared);
                    systemd::notify(notifier, &format!("READY=1\nSTATUS={status}"));
                }
                _ = tick.tick() => {
                    // Taking the broker's lock for the status is part of the check: a broker
                    // stuck on it pings no more, and systemd restarts it.
                    let now = status_text(&shared);
                    if now != status {
                        status = now;
                        systemd::notify(notifier, &format!("STATUS={status}"));
                    }
                    if shared.datapath.as_ref().is_some_and(|dp| !dp.alive()) {
                        if !datapath_failed {
                            datapath_failed = true;
                            tracing::error!("the datapath stopped: tunnels are no longer carried; the systemd watchdog is no longer fed");
                            systemd::notify(notifier, "STATUS=datapath stopped; tunnels are not carried");
                        }
                    } else if watchdog.is_some() {
                        systemd::notify(notifier, "WATCHDOG=1");
                    }
                }
            }
        };
        tracing::info!("stopping");
        systemd::notify(notifier, "STOPPING=1\nSTATUS=stopping");
        // Out of the fleet at once, so the master sends nobody here any more.
        if let Some(f) = &fleet {
            let _ = tokio::time::timeout(fleet::LEAVE_TIMEOUT, f.leave()).await;
        }
        // Remove the routes and addresses we added; the TUN devices go with us.
        if let Some(dp) = shared.datapath.clone() {
            dp.shutdown().await;
        }
        // The listeners and the control socket go now.
        drop(running);
        result
    })
}

/// How often the STATUS line is refreshed without a watchdog.
const STATUS_PERIOD: Duration = Duration::from_secs(5);

fn status_text(shared: &serve::Shared) -> String {
    let g = shared.gauges();
    let tunnels: u64 = g.sessions.iter().flatten().sum();
    systemd::status_line(&format!(
        "{tunnels} tunnel(s) of at most {}, {} offer(s) pending",
        g.max_tunnels, g.offers_pending
    ))
}

/// SIGHUP: reads the configuration file again and applies it, or keeps the running one and
/// says why. Tunnels and sessions stay either way.
fn reload(path: Option<&Path>, shared: &serve::Shared, notifier: Option<&Notifier>) {
    systemd::notify(
        notifier,
        &format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the configuration",
            systemd::monotonic_usec()
        ),
    );
    let file = path.map_or("(no file: the defaults)".to_owned(), |p| p.display().to_string());
    match Loaded::read(path).and_then(|new| shared.reload(new)) {
        Ok(r) => {
            shared.metrics.reload(true);
            let changed = if r.changed.is_empty() {
                "no key changed".to_owned()
            } else {
                format!("changed {}", r.changed.join(", "))
            };
            let accounts = r.accounts.map_or(String::new(), |n| format!("; {n} account(s)"));
            tracing::info!(file, "configuration reloaded: {changed}{accounts}");
        }
        Err(e) => {
            shared.metrics.reload(false);
            tracing::error!(file, "configuration not reloaded, the running one is kept: {e}");
        }
    }
}

/// Asks the running broker through the control socket the configuration names (or the
/// default one without `-c`).
fn ask(config: Option<&Path>, req: &Request) -> Result<Reply, String> {
    let path = match config {
        Some(_) => load_config(config)?
            .control_socket
            .ok_or("the configuration turns the control socket off (control_socket = \"\")")?,
        None => PathBuf::from(control::DEFAULT_CONTROL_SOCKET),
    };
    match control::ask(&path, req).map_err(|e| e.to_string())? {
        Reply::Error(e) => Err(e),
        reply => Ok(reply),
    }
}

fn unexpected(reply: Reply) -> String {
    format!("unexpected reply from the broker: {reply:?}")
}

fn sessions(config: Option<&Path>, json: bool) -> Result<(), String> {
    let Reply::Sessions(list) = ask(config, &Request::Sessions)? else {
        return Err("unexpected reply from the broker".into());
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&list).map_err(|e| e.to_string())?);
        return Ok(());
    }
    print!("{}", session_table(&list));
    Ok(())
}

/// The sessions as aligned columns, a header first. BYTES-IN is what the client sent.
fn session_table(list: &[SessionView]) -> String {
    let mut rows = vec![
        [
            "USER",
            "STATE",
            "MODE",
            "PEER",
            "ADDRESS",
            "PREFIX",
            "SINCE",
            "BYTES-IN",
            "BYTES-OUT",
        ]
        .map(str::to_owned),
    ];
    for s in list {
        rows.push([
            s.user.clone().unwrap_or_else(|| s.key.clone()),
            if s.established { "up" } else { "offered" }.to_owned(),
            format!("{}/{}", s.mode, s.transport),
            s.peer.to_string(),
            s.address.to_string(),
            s.prefix.clone().unwrap_or_else(|| "-".into()),
            i64::try_from(s.since)
                .ok()
                .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
                .map_or_else(|| "-".into(), |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
            s.bytes_from_client.to_string(),
            s.bytes_to_client.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..9)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out += line.join("  ").trim_end();
        out.push('\n');
    }
    out
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

fn open_db(cfg: &BrokerConfig) -> Result<Db, String> {
    let fleet = cfg.fleet.as_ref().ok_or("the configuration names no database")?;
    Db::new(fleet).map_err(|e| e.to_string())
}

fn run_db(cfg: &BrokerConfig, cmd: DbCommand) -> Result<(), String> {
    let db = open_db(cfg)?;
    let rt = runtime()?;
    let realm = cfg.realm.as_str();
    let ha1_of = |user: &str| -> Result<[u8; 16], String> {
        if !Accounts::valid_user(user) {
            return Err(format!(
                "invalid user name {user:?}: 1 to 253 printable characters, no `:`"
            ));
        }
        let password = read_password(user)?;
        Ok(tsp_proto::sasl::digest_md5::ha1(user, realm, &password))
    };
    let db_err = |e: tsp_broker::db::DbError| format!("database: {e}");
    match cmd {
        DbCommand::Migrate => {
            let version = rt.block_on(db.migrate()).map_err(db_err)?;
            println!("database schema at version {version}");
        }
        DbCommand::AddUser { user } => {
            let ha1 = ha1_of(&user)?;
            rt.block_on(async {
                db.migrate().await?;
                db.add_user(&user, realm, &ha1).await
            })
            .map_err(db_err)?;
            println!("added {user} (realm {realm})");
        }
        DbCommand::SetPassword { user } => {
            let ha1 = ha1_of(&user)?;
            rt.block_on(db.set_password(&user, realm, &ha1)).map_err(db_err)?;
            println!("new password for {user} (realm {realm})");
        }
        DbCommand::DisableUser { user } => {
            rt.block_on(db.set_enabled(&user, false)).map_err(db_err)?;
            println!("disabled {user}");
        }
        DbCommand::EnableUser { user } => {
            rt.block_on(db.set_enabled(&user, true)).map_err(db_err)?;
            println!("enabled {user}");
        }
        DbCommand::ListUsers => {
            let users = rt.block_on(db.users()).map_err(db_err)?;
            for u in users {
                let blocks: Vec<String> = u.blocks.iter().map(|(pool, b)| format!("{pool} {b}")).collect();
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    u.name,
                    u.realm,
                    if u.enabled { "enabled" } else { "disabled" },
                    if blocks.is_empty() {
                        "-".to_owned()
                    } else {
                        blocks.join(", ")
                    },
                    u.broker.as_deref().unwrap_or("-")
                );
            }
        }
        DbCommand::Routes => {
            let dead_after = cfg.fleet.as_ref().map_or(Duration::from_secs(5), |f| f.dead_after);
            for (block, id, address) in rt.block_on(db.routes(dead_after)).map_err(db_err)? {
                println!("{block} {address} {id}");
            }
        }
        DbCommand::ImportAccounts { file } => {
            let accounts = Accounts::load(&file, realm).map_err(|e| e.to_string())?;
            let (mut added, mut present) = (0, 0);
            rt.block_on(async {
                db.migrate().await?;
                for (user, ha1) in accounts.iter() {
                    match db.add_user(user, realm, &ha1).await {
                        Ok(()) => added += 1,
                        Err(tsp_broker::db::DbError::UserExists(_)) => present += 1,
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            })
            .map_err(db_err)?;
            println!(
                "imported {added} account(s) of realm {realm} from {}; {present} already there",
                file.display()
            );
        }
    }
    Ok(())
}

fn print_summary(cfg: &BrokerConfig, accounts: &Accounts, has_key: bool, running: Option<&serve::Running>) {
    let caps = Broker::capabilities(cfg, has_key);
    let mut out = String::new();
    match running {
        Some(r) => {
            out += &format!("tsp-broker listening: tcp {:?} udp {:?}\n", r.tcp, r.udp);
        }
        None => {
            out += &format!(
                "tsp-broker would listen on {:?} (tcp {}, udp {})\n",
                cfg.listen, cfg.tcp, cfg.udp
            )
        }
    }
    if !cfg.redirect.is_empty() {
        out += &format!(
            "  redirector mode: every client is sent to {} broker(s)\n",
            cfg.redirect.len()
        );
    }
    if let Some(f) = &cfg.fleet {
        if f.master {
            out += &format!(
                "  fleet master {:?}: every client is sent to the live brokers of the database (no tunnels here)\n",
                f.id
            );
        } else {
            out += &format!(
                "  fleet broker {:?} at {}: accounts and assignments in the database; heartbeat every {:?}, dead after {:?}\n",
                f.id,
                tsp_broker::config::broker_addr_text(&f.address),
                f.heartbeat,
                f.dead_after
            );
        }
    }
    let versions: Vec<_> = cfg.versions.iter().map(|v| v.to_string()).collect();
    out += &format!("  offers {} ; TSP versions {}\n", caps.describe(), versions.join(", "));
    let accounts = match &cfg.fleet {
        Some(_) => "accounts in the database".to_owned(),
        None => format!("{} account(s)", accounts.len()),
    };
    out += &format!(
        "  realm {:?}, {accounts}, PASSDSS host key: {}\n",
        cfg.realm,
        if has_key { "loaded" } else { "none" }
    );
    out += &format!(
        "  server {} / {} ; clients from {}/{} ; prefixes /{}../{} from {}/{} ; v4v6 clients from {}/{}\n",
        cfg.server_ipv4
            .map_or("(address the client reached)".to_owned(), |a| a.to_string()),
        cfg.server_ipv6,
        cfg.client_pool.addr,
        cfg.client_pool.len,
        cfg.prefix_length_min,
        cfg.prefix_length_max,
        cfg.prefix_pool.addr,
        cfg.prefix_pool.len,
        cfg.ipv4_pool.addr,
        cfg.ipv4_pool.len
    );
    out += &format!(
        "  datapath: {}\n",
        if cfg.datapath {
            format!(
                "TUN {} (server {}), forwarding {}",
                cfg.tun_name,
                cfg.server_ipv6,
                if cfg.forwarding { "on" } else { "off" }
            )
        } else {
            "off (negotiation only)".to_owned()
        }
    );
    out += &format!(
        "  at most {} tunnels ; keepalive {}..{} s ; state file {}\n",
        cfg.max_tunnels,
        cfg.keepalive_min,
        cfg.keepalive_max,
        match (&cfg.fleet, &cfg.state_file) {
            (Some(_), _) => "(none: assignments live in the database)".to_owned(),
            (None, None) => "(none: assignments last while the broker runs)".to_owned(),
            (None, Some(p)) => p.display().to_string(),
        }
    );
    out += &match running {
        Some(r) => format!(
            "  metrics: {} ; control socket: {}\n",
            r.metrics.map_or("off".to_owned(), |a| format!("http://{a}/metrics")),
            r.control_path().map_or("off".to_owned(), |p| p.display().to_string())
        ),
        None => format!(
            "  metrics: {} ; control socket: {}\n",
            cfg.metrics_listen
                .map_or("off".to_owned(), |a| format!("http://{a}/metrics")),
            cfg.control_socket
                .as_ref()
                .map_or("off".to_owned(), |p| p.display().to_string())
        ),
    };
    print!("{out}");
    let _ = std::io::stdout().flush();
}

fn read_password(user: &str) -> Result<Secret, String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password for {user}: ");
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password: {e}"))?;
    let password = Secret::new(line.trim_end_matches(['\r', '\n']));
    if password.is_empty() {
        return Err("empty password".into());
    }
    if password.expose().len() > 128 {
        return Err("password longer than 128 bytes".into());
    }
    Ok(password)
}

fn gen_host_key(file: &Path) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let key = HostKeyPair::generate(&mut rand::rngs::OsRng).map_err(|e| format!("cannot generate a host key: {e}"))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| format!("cannot create {}: {e}", file.display()))?;
    f.write_all(key.to_text().as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    println!("wrote a DSA host key to {}", file.display());
    Ok(())
}
