//! `tspc`: the standalone TSP client, a drop-in for gogoc driven by gogoc.conf / gw6c.conf.
//! See tspc(8).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use nm_tsp::config::{self, AutoAddr, Dialect, GogocConfig};
use nm_tsp::net::hostkeys::{KnownHostsFile, TrustMode};
use nm_tsp::net::{Established, NegotiateOptions, negotiate};
use nm_tsp::proto::types::{HostType, TunnelMode};
use nm_tsp::proto::xml::RouterRequest;

#[derive(Parser, Debug)]
#[command(
    name = "tspc",
    version,
    about = "TSP (RFC 5572) tunnel broker client, compatible with gogoCLIENT's gogoc.conf and command line",
    after_help = "The tunnel itself (TUN device, addresses, routes, keepalive) is configured by the next release; \
                  today tspc negotiates with the broker and prints the offered tunnel (--dry-run)."
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    nm_tsp::logging::init_stderr(cli.verbose);
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
    let key_path = if cfg.gogoc_dir.is_empty() { PathBuf::from(key_file) } else { Path::new(&cfg.gogoc_dir).join(key_file) };
    let mode = if yes { TrustMode::AutoAccept } else { TrustMode::Ask };
    let mut o = NegotiateOptions::new(cfg.tunnel_mode, Arc::new(KnownHostsFile::new(key_path, mode)));
    o.auth_method = cfg.auth_method;
    o.allow_plain = cfg.plain_allowed();
    o.username = cfg.userid.clone();
    o.password = cfg.passwd.clone();
    o.proxy = cfg.proxy_client;
    o.keepalive = cfg.keepalive.then_some(cfg.keepalive_interval);
    o.router = (cfg.host_type == HostType::Router)
        .then(|| RouterRequest { prefix_len: cfg.prefixlen, dns_names: cfg.dns_server.clone() });
    o.client_addr = match cfg.tunnel_mode {
        TunnelMode::V4V6 => match cfg.client_v6 {
            AutoAddr::Fixed(a) => Some(a.into()),
            AutoAddr::Auto => None,
        },
        _ => match cfg.client_v4 {
            AutoAddr::Fixed(a) => Some(a.into()),
            AutoAddr::Auto => None,
        },
    };
    o
}

fn run(cli: &Cli) -> Result<(), String> {
    let mut cfg = config::load(&cli.file).map_err(|e| e.to_string())?;
    apply_cli(&mut cfg, cli)?;
    cfg.validate_for_connect(&cli.file).map_err(|e| e.to_string())?;
    let server = cfg.server.clone().unwrap_or_default();
    let opts = options(&cfg, cli.yes);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let est = rt.block_on(negotiate(&server, &opts)).map_err(|e| format!("negotiation with {server} failed: {e}"))?;
    print!("{}", describe(&est));
    if cli.dry_run {
        return Ok(());
    }
    Err("configuring the tunnel is not available in this release; use --dry-run to negotiate only".into())
}

fn describe(est: &Established) -> String {
    let n = &est.negotiated;
    let o = &n.offer;
    let mut s = format!(
        "tunnel negotiated with {} ({}) over {:?}, TSP {}, {}\n",
        est.server,
        est.peer,
        est.conn.transport(),
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
