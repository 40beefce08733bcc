//! `tspc`: the standalone TSP client, a drop-in for gogoc driven by gogoc.conf / gw6c.conf.
//! See tspc(8).
//!
//! See docs/tsp-wire.md §8–9.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;
use tsp_client::net::hostkeys::{KnownHostsFile, TrustMode};
use tsp_client::net::{NegotiateOptions, NetError, negotiate};
use tsp_client::supervisor::{
    DownReason, Ended, Hooks, InterfaceNames, NoPrefix, Profile, RetryPolicy, SiteFiles, Supervisor, TunnelInfo,
};
use tsp_client::template::{self, Operation, TemplateInputs};
use tsp_config::{AutoAddr, Dialect, GogocConfig};
use tsp_proto::client::{Negotiated, Transport};
use tsp_proto::types::HostType;
use tsp_tunnel::host::{self, HostSettings};
use tsp_tunnel::netlink::{self, Netlink};

#[derive(Parser, Debug)]
#[command(
    name = "tspc",
    version,
    about = "TSP (RFC 5572) tunnel broker client, compatible with gogoCLIENT's gogoc.conf and command line",
    after_help = "tspc brings the tunnel up (TUN device, addresses, routes, keepalive, router advertisements in \
                  router mode), keeps it up and reconnects by itself; SIGHUP, SIGTERM or SIGINT tear it down."
)]
struct Cli {
    /// Configuration file (gogoc.conf or gw6c.conf).
    #[arg(short = 'f', value_name = "FILE", default_value = "gogoc.conf")]
    file: PathBuf,
    /// Accepted for compatibility; gogoc parses it but never applies it.
    #[arg(short = 'r', value_name = "SECONDS")]
    retry: Option<u32>,
    /// Boot mode: try once, do not loop on failure.
    #[arg(short = 'b')]
    boot: bool,
    /// Stay in the foreground (tspc never daemonises; accepted for compatibility).
    #[arg(short = 'n')]
    foreground: bool,
    /// Accept an unknown PASSDSS host key without asking.
    #[arg(short = 'y')]
    yes: bool,
    /// Interface for v6v4 tunnels (overrides if_tunnel_v6v4).
    #[arg(short = 'i', value_name = "IFNAME")]
    if_v6v4: Option<String>,
    /// Interface for v6udpv4 tunnels (overrides if_tunnel_v6udpv4).
    #[arg(short = 'u', value_name = "IFNAME")]
    if_v6udpv4: Option<String>,
    /// Local IPv4 address to announce (overrides client_v4).
    #[arg(short = 's', value_name = "ADDRESS")]
    client_v4: Option<String>,
    /// More output: -v … -vvvv.
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    verbose: u8,
    /// Negotiate with the broker, print the offered tunnel and exit without configuring it.
    #[arg(long = "dry-run", alias = "negotiate-only")]
    dry_run: bool,
    /// gogoc compatibility: configure the host by running <gogoc_dir>/template/<template>.sh
    /// with gogoc's TSP_* environment (and again at teardown) instead of doing it ourselves.
    #[arg(long = "template")]
    template: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tspc: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Applies the command line over the file, with the file's own validation rules.
fn apply_cli(cfg: &mut GogocConfig, cli: &Cli) -> Result<(), String> {
    if let Some(i) = &cli.if_v6v4 {
        cfg.if_tunnel_v6v4 = i.clone();
    }
    if let Some(u) = &cli.if_v6udpv4 {
        cfg.if_tunnel_v6udpv4 = u.clone();
    }
    if let Some(s) = &cli.client_v4 {
        cfg.client_v4 = match s.as_str() {
            "auto" => AutoAddr::Auto,
            a => AutoAddr::Fixed(a.parse().map_err(|_| format!("-s {a}: not an IPv4 address"))?),
        };
    }
    if cli.retry.is_some() {
        tracing::warn!("-r is accepted for compatibility and ignored (as in gogoc); use retry_delay");
    }
    cfg.validate(Path::new("command line")).map_err(|e| e.to_string())
}

fn options(cfg: &GogocConfig, yes: bool) -> NegotiateOptions {
    let key_file = match cfg.dialect {
        Dialect::Gogoc => "gogockeys.pub",
        Dialect::Gw6c => "gw6ckeys.pub",
    };
    // gogoc keeps the key file in its working directory; with a home directory set, there.
    let key_path = if cfg.gogoc_dir.is_empty() {
        PathBuf::from(key_file)
    } else {
        Path::new(&cfg.gogoc_dir).join(key_file)
    };
    let mode = if yes { TrustMode::AutoAccept } else { TrustMode::Ask };
    NegotiateOptions::from_config(cfg, Arc::new(KnownHostsFile::new(key_path, mode)))
}

fn run(cli: &Cli) -> Result<(), String> {
    let mut cfg = tsp_config::load(&cli.file).map_err(|e| e.to_string())?;
    apply_cli(&mut cfg, cli)?;
    cfg.validate_for_connect(&cli.file).map_err(|e| e.to_string())?;
    // Log destinations and levels as gogoc.conf says (stderr, file with rotation, syslog).
    let _log = nm_tsp::logging::init_from_config(&cfg, cli.verbose, "tspc").map_err(|e| e.to_string())?;
    let server = cfg.server.clone().unwrap_or_default();
    let opts = options(&cfg, cli.yes);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    if cli.dry_run {
        let est = rt
            .block_on(negotiate(&server, &opts))
            .map_err(|e| format!("negotiation with {server} failed: {e}"))?;
        print!(
            "{}",
            describe(&est.server, est.peer, est.conn.transport(), &est.negotiated)
        );
        return Ok(());
    }
    rt.block_on(run_tunnel(cfg, server, opts, cli))
}

/// Brings the tunnel up and keeps it up until SIGHUP, SIGTERM or SIGINT.
async fn run_tunnel(cfg: GogocConfig, server: String, opts: NegotiateOptions, cli: &Cli) -> Result<(), String> {
    let nl = Netlink::new().map_err(|e| format!("cannot talk to the kernel (rtnetlink): {e}"))?;
    let interfaces = InterfaceNames {
        v6v4: cfg.if_tunnel_v6v4.clone(),
        v6udpv4: cfg.if_tunnel_v6udpv4.clone(),
        v4v6: cfg.if_tunnel_v4v6.clone(),
    };
    // A TUN device vanishes with its descriptor; only a kernel link of ours can be stale.
    // In proxy mode the interfaces are the router's: nothing local is ours.
    for (name, kind) in [(&interfaces.v6v4, "sit"), (&interfaces.v4v6, "ip6tnl")] {
        if !name.is_empty()
            && !cfg.proxy_client
            && let Err(e) = netlink::remove_stale_link(&nl, name, kind).await
        {
            tracing::debug!(interface = %name, error = %e, "stale link check");
        }
    }
    let retry = RetryPolicy {
        auto_retry: cfg.auto_retry_connect && !cli.boot,
        delay: Duration::from_secs(u64::from(cfg.retry_delay)),
        delay_max: Duration::from_secs(u64::from(cfg.retry_delay_max)),
    };
    // Relative file names are relative to the home directory when set, as gogoc's were to
    // its working directory.
    let home = |name: &str| {
        if cfg.gogoc_dir.is_empty() {
            PathBuf::from(name)
        } else {
            Path::new(&cfg.gogoc_dir).join(name)
        }
    };
    let sites = SiteFiles {
        broker_list: home(&cfg.broker_list),
        last_server: home(&cfg.last_server),
        always_use_same_server: cfg.always_use_same_server,
    };
    let profile = Profile {
        server,
        negotiate: opts,
        retry,
        interfaces,
        sites: Some(sites),
        persist_device: false,
        no_prefix: no_prefix_policy(&cfg),
        proxy: cfg.proxy_client,
        datapath: cfg.datapath_kind,
        busy_poll: Duration::from_micros(cfg.busy_poll.into()),
    };
    let template = cli.template.then(|| cfg.template_script());
    let hooks = TspcHooks {
        nl,
        template,
        cfg: cfg.clone(),
        lan_interface: (cfg.host_type == HostType::Router && !cfg.if_prefix.is_empty()).then(|| cfg.if_prefix.clone()),
        configured: None,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("signal received: tearing the tunnel down");
        let _ = stop_tx.send(true);
    });
    let (ended, _) = Supervisor::new(profile, hooks, stop_rx).run().await;
    match ended {
        Ended::Stopped => Ok(()),
        Ended::GaveUp(e) => Err(e.to_string()),
    }
}

/// `host_type=router` answered without a prefix: an error unless `router_fallback_host=yes`.
fn no_prefix_policy(cfg: &GogocConfig) -> NoPrefix {
    match (cfg.host_type, cfg.router_fallback_host) {
        (HostType::Router, false) => NoPrefix::Fail,
        (HostType::Router, true) => NoPrefix::RunAsHost,
        _ => NoPrefix::NotRouter,
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut h), Ok(mut t), Ok(mut i)) => {
            tokio::select! { _ = h.recv() => {}, _ = t.recv() => {}, _ = i.recv() => {} }
        }
        _ => std::future::pending().await,
    }
}

/// tspc configures the host itself (gogoc ran its template script for that).
struct TspcHooks {
    nl: Netlink,
    /// gogoc's template script, when the host is configured by it.
    template: Option<PathBuf>,
    cfg: GogocConfig,
    lan_interface: Option<String>,
    configured: Option<host::Configured>,
}

impl TspcHooks {
    async fn run_template(&self, op: Operation, info: &TunnelInfo) -> Result<(), String> {
        let Some(script) = &self.template else { return Ok(()) };
        let inputs = TemplateInputs {
            offer: &info.negotiated.offer,
            cfg: &self.cfg,
            tunnel_interface: &info.ifname,
        };
        let env = template::environment(op, inputs).map_err(|e| e.to_string())?;
        template::run(script, &env, Duration::from_secs(60))
            .await
            .map(|_| ())
            .map_err(|e| format!("template script {}: {e}", script.display()))
    }
}

impl TspcHooks {
    /// proxy_client=yes: the tunnel's endpoint is an external router, so nothing is configured
    /// here. With --template its script gets the tunnel (gogoc's proxy templates, e.g. cisco,
    /// configure the router); otherwise gogoc's TSP_* variables are printed on stdout, one
    /// `NAME=value` line each, for whatever configures the router.
    async fn hand_over(&self, info: &TunnelInfo) -> Result<(), String> {
        print!(
            "{}",
            describe(&info.server, info.peer, info.transport, &info.negotiated)
        );
        if self.template.is_some() {
            self.run_template(Operation::Creation, info).await?;
            println!("  proxy:       tunnel handed to the template script; nothing configured here");
        } else {
            let inputs = TemplateInputs {
                offer: &info.negotiated.offer,
                cfg: &self.cfg,
                tunnel_interface: &info.ifname,
            };
            let env = template::environment(Operation::Creation, inputs).map_err(|e| e.to_string())?;
            println!("  proxy:       nothing configured here; the tunnel for the router follows");
            for (k, v) in env.iter().filter(|(k, _)| k.starts_with("TSP_")) {
                println!("{k}={v}");
            }
        }
        let _ = std::io::stdout().flush();
        Ok(())
    }
}

impl Hooks for TspcHooks {
    fn connecting(&mut self, attempt: u32, server: &str) {
        tracing::info!(attempt, %server, "connecting");
    }

    async fn up(&mut self, info: &TunnelInfo) -> Result<(), String> {
        if self.cfg.proxy_client {
            return self.hand_over(info).await;
        }
        if self.template.is_some() {
            self.run_template(Operation::Creation, info).await?;
            print!(
                "{}",
                describe(&info.server, info.peer, info.transport, &info.negotiated)
            );
            println!("  interface:   {} (up, configured by the template script)", info.ifname);
            let _ = std::io::stdout().flush();
            return Ok(());
        }
        let settings = HostSettings {
            routes: HostSettings::default_routes(info.negotiated.offer.mode),
            lan_interface: self.lan_interface.clone(),
        };
        let configured = host::configure(&self.nl, info.ifindex, &info.negotiated.offer, &settings)
            .await
            .map_err(|e| format!("cannot configure {}: {e}", info.ifname))?;
        self.configured = Some(configured);
        print!(
            "{}",
            describe(&info.server, info.peer, info.transport, &info.negotiated)
        );
        println!("  interface:   {} (up)", info.ifname);
        let _ = std::io::stdout().flush();
        Ok(())
    }

    async fn down(&mut self, info: &TunnelInfo, reason: &DownReason) {
        if let Some(c) = self.configured.take() {
            c.remove(&self.nl).await;
        }
        if self.template.is_some()
            && let Err(e) = self.run_template(Operation::Teardown, info).await
        {
            tracing::warn!(error = %e, "template teardown failed");
        }
        println!("tunnel {} down: {reason}", info.ifname);
        let _ = std::io::stdout().flush();
    }

    fn failed(&mut self, error: &NetError, retry_in: Option<Duration>) {
        match retry_in {
            Some(d) => tracing::warn!(error = %error, "negotiation failed; retrying in {} s", d.as_secs()),
            None => tracing::error!(error = %error, "negotiation failed"),
        }
    }
}

fn describe(server: &str, peer: SocketAddr, transport: Transport, n: &Negotiated) -> String {
    let o = &n.offer;
    let mut s = format!(
        "tunnel negotiated with {server} ({peer}) over {transport:?}, TSP {}, {}\n",
        n.version,
        n.mechanism.wire_name()
    );
    s += &format!("  mode:        {}\n", o.mode);
    s += &format!("  client:      {} (IPv4 {})\n", o.client_v6, o.client_v4);
    s += &format!("  server:      {} (IPv4 {})\n", o.server_v6, o.server_v4);
    if let Some(p) = &o.prefix {
        s += &format!("  prefix:      {}/{}\n", p.addr, p.len);
    }
    match &o.keepalive {
        Some(k) => s += &format!("  keepalive:   every {} s to {}\n", k.interval, k.address),
        None => s += "  keepalive:   none\n",
    }
    if let Some(d) = &o.client_dns_name {
        s += &format!("  dns name:    {d}\n");
    }
    if let Some(d) = &o.client_dns_server {
        s += &format!("  dns server:  {d}\n");
    }
    if let Some(l) = o.lifetime {
        s += &format!("  lifetime:    {l}\n");
    }
    s
}
