//! `bamf-bridge`: parse configuration, then run the front door until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bamf_bridge::route::Router;
use bamf_bridge::{Listeners, config, metrics, run};
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Exit status for a configuration the bridge refuses (BSD `EX_USAGE`).
const EXIT_BAD_CONFIG: u8 = 64;

/// How long a starting bridge waits for an unreachable API before giving up (the API may be
/// starting beside it).
const ENROLL_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// BAMF bridge: routes TLS connections by SNI without terminating them.
#[derive(Debug, Parser)]
#[command(name = "bamf-bridge", version, about, long_about = None)]
struct Cli {
    /// TOML configuration file; flags override its values
    #[arg(long, short = 'c', env = "BAMF_BRIDGE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    flags: config::Flags,
    /// Log format on stderr; the level comes from BAMF_LOG (default: info)
    #[arg(long, value_enum, default_value_t = bamf_runtime::LogFormat::Text)]
    log_format: bamf_runtime::LogFormat,
    /// Check the configuration, print the routes and exit
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match config::load(cli.config.as_deref(), cli.flags) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("bamf-bridge: invalid configuration:\n{errors}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if cli.check {
        eprintln!("bamf-bridge: configuration is valid; routes:");
        for (host, backend) in Router::new(config.routes).describe() {
            eprintln!("  {host} -> {backend}");
        }
        return ExitCode::SUCCESS;
    }
    bamf_runtime::init_logging(cli.log_format);
    match start(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(config: config::Config) -> anyhow::Result<()> {
    // Each connection needs two descriptors; the soft limit is often 1024.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the file descriptor limit"),
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(n) = config.threads {
        runtime.worker_threads(n.get());
    }
    let runtime = runtime.build().context("starting the runtime")?;
    runtime.block_on(async {
        let listeners = Listeners::bind(&config)?;
        let handle = match config.metrics {
            Some(_) => Some(metrics::install().context("installing the metrics recorder")?),
            None => None,
        };
        // The join token is a secret: from the environment only, never a flag or the file.
        let token = std::env::var("BAMF_JOIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        let credentials = bamf_bridge::enroll(&config, token.as_deref(), ENROLL_PATIENCE)
            .await
            .context("getting the bridge certificate for the tunnel relay")?;
        let shutdown = CancellationToken::new();
        tokio::spawn(bamf_runtime::shutdown_on_signals(shutdown.clone()));
        run(config, listeners, handle, credentials, shutdown)
            .await
            .map_err(|e| anyhow::anyhow!("starting the tunnel relay: {e}"))?;
        Ok(())
    })
}
