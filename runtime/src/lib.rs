//! Process plumbing every BAMF binary shares, so that each behaves the same way:
//! configuration problems, listeners, probes and metrics, logs and shutdown.
//!
//! # Layout
//!
//! - [`config`]: the configuration kit: TOML loading with positions, the problem list, and
//!   the parsers for durations, `ip:port` and [`config::HostPort`].
//! - [`accept`]: the accept loop: connection slots, back-off on accept errors, a task per
//!   connection.
//! - [`admin`]: the admin listener: `/health`, `/ready`, `/metrics`.
//! - [`recorder`]: the Prometheus recorder and the `*_build_info` gauge.
//! - [`LogFormat`] and [`init_logging`]: text or JSON on stderr, level from `BAMF_LOG`.
//! - [`shutdown_on_signals`]: the first SIGTERM or SIGINT cancels a token (graceful drain);
//!   a second exits at once.

use tokio_util::sync::CancellationToken;

pub mod accept;
pub mod admin;
pub mod config;
pub mod recorder;

/// Log format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (what the tests and log shippers read).
    Json,
}

/// Installs the global subscriber: `format` on stderr, level from `BAMF_LOG` (default
/// `info`, same syntax as `RUST_LOG`).
pub fn init_logging(format: LogFormat) {
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

/// Cancels `shutdown` on the first SIGTERM or SIGINT; exits the process (status 130) on a
/// second one, for an operator who does not want to wait for the drain. Spawn it once.
pub async fn shutdown_on_signals(shutdown: CancellationToken) {
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
