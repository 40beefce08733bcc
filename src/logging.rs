//! Log setup shared by the programs: `tracing` to stderr, `-v` raising the level, `RUST_LOG`
//! overriding both.

use std::io::IsTerminal;

/// Installs the stderr subscriber: 0 = warnings (and our own info lines), 1 = info,
/// 2 = debug, 3 and more = trace.
pub fn init_stderr(verbose: u8) {
    let level = match verbose {
        0 => "warn,nm_tsp=info",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
