//! `bamf-agent`: parse the configuration, then join and serve until SIGTERM or SIGINT.
//!
//! Exit status: 0 after a shutdown, 64 for a configuration it refuses (nothing was started),
//! 78 when it has no usable identity and an operator must act (the name is taken, the join
//! token is missing or refused, `data_dir` is incomplete), 1 for anything else.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bamf_agent::config::{self, Config};
use bamf_agent::enroll::JoinToken;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Exit status for a configuration the agent refuses (BSD `EX_USAGE`).
const EXIT_BAD_CONFIG: u8 = 64;
/// Exit status when an operator must fix the agent's identity (BSD `EX_CONFIG`); restarting
/// would not help.
const EXIT_NO_IDENTITY: u8 = 78;

/// BAMF agent: serves local resources through BAMF bridges; dials out only.
#[derive(Debug, Parser)]
#[command(name = "bamf-agent", version, about, long_about = None)]
struct Cli {
    /// TOML configuration file
    #[arg(long, short = 'c', env = "BAMF_AGENT_CONFIG", value_name = "FILE")]
    config: PathBuf,
    /// Check the configuration, log a summary and exit
    #[arg(long)]
    check: bool,
    /// Log format on stderr; the level comes from BAMF_LOG (default: info)
    #[arg(long, value_enum, default_value_t = bamf_runtime::LogFormat::Text)]
    log_format: bamf_runtime::LogFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    bamf_runtime::init_logging(cli.log_format);
    let config = match config::load(&cli.config) {
        Ok(c) => c,
        Err(errors) => {
            for problem in errors.problems() {
                tracing::error!(%problem, "invalid configuration");
            }
            tracing::error!(
                config = %cli.config.display(),
                problems = errors.len(),
                "the configuration is invalid; nothing was started"
            );
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if cli.check {
        summarize(&cli.config, &config);
        return ExitCode::SUCCESS;
    }
    // Read once; never logged.
    let token = std::env::var("BAMF_JOIN_TOKEN")
        .ok()
        .and_then(JoinToken::new);
    match start(config, token) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            tracing::error!("{e}");
            ExitCode::from(EXIT_NO_IDENTITY)
        }
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the agent; the inner error is an identity problem for the operator.
fn start(
    config: Config,
    token: Option<JoinToken>,
) -> anyhow::Result<Result<(), bamf_agent::enroll::EnrollError>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let health = match config.health_listen {
            Some(addr) => Some(
                bamf_agent::bind_health(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (health_listen)"))?,
            ),
            None => None,
        };
        // Metrics are served on the health listener: without one, nobody could read them.
        let metrics = match &health {
            Some(_) => {
                Some(bamf_agent::metrics::install().context("installing the metrics recorder")?)
            }
            None => None,
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(bamf_runtime::shutdown_on_signals(shutdown.clone()));
        Ok(bamf_agent::run(config, health, metrics, token, shutdown)
            .await
            .map(|_| ()))
    })
}

/// Logs what a valid configuration means.
fn summarize(path: &std::path::Path, c: &Config) {
    let opt = |a: Option<std::net::SocketAddr>| a.map_or_else(|| "-".to_owned(), |a| a.to_string());
    tracing::info!(
        config = %path.display(),
        name = %c.name,
        api_url = c.api_url.as_str(),
        api_ca_file = %c.api_ca.path.display(),
        api_address = %opt(c.api_address),
        bridge_address = %opt(c.bridge_address),
        data_dir = %c.data_dir.display(),
        health_listen = %opt(c.health_listen),
        max_tunnels = c.limits.max_tunnels.get(),
        idle_timeout = %humantime::format_duration(c.limits.idle_timeout),
        connect_timeout = %humantime::format_duration(c.limits.connect_timeout),
        shutdown_grace = %humantime::format_duration(c.limits.shutdown_grace),
        resources = c.resources.len(),
        "configuration is valid"
    );
    for r in &c.resources {
        let labels: Vec<String> = r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        tracing::info!(
            name = %r.name,
            kind = r.kind.as_str(),
            address = %r.address,
            labels = %labels.join(","),
            "resource"
        );
    }
}
