//! `bamf-bridge`: parse configuration, then run the front door until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bamf_bridge::{Listeners, config, metrics, run};
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Exit status for a configuration the bridge refuses (BSD `EX_USAGE`).
const EXIT_BAD_CONFIG: u8 = 64;

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
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Check the configuration, print the routes and exit
    #[arg(long)]
    check: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
        for (host, backend) in config.router.describe() {
            eprintln!("  {host} -> {backend}");
        }
        return ExitCode::SUCCESS;
    }
    init_tracing(cli.log_format);
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
        for (host, backend) in config.router.describe() {
            tracing::info!(%host, %backend, "route");
        }
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        run(config, listeners, handle, shutdown).await;
        Ok(())
    })
}

/// First SIGTERM or SIGINT starts a graceful shutdown; a second one exits at once.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
    }
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("second signal: exiting without draining");
    std::process::exit(130);
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("BAMF_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
