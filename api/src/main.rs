//! `bamf-api`: the control plane server.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bamf_api::presence::{MemoryPresence, Presence, RedisPresence};
use bamf_api::server::{self, AppState};
use bamf_api::store::Store;
use bamf_proto::HostName;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Failed logins allowed per client address and per user name in [`LOGIN_WINDOW`].
const LOGIN_FAILURES: u32 = 10;
/// The login rate-limit window.
const LOGIN_WINDOW: Duration = Duration::from_secs(300);

/// BAMF control plane: internal CA, identities, sessions.
#[derive(Debug, Parser)]
#[command(name = "bamf-api", version, about, long_about = None)]
struct Cli {
    /// HTTPS address
    #[arg(long, env = "BAMF_API_LISTEN", default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// postgres://… or sqlite:… (SQLite is the single-node default)
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "sqlite://bamf.db?mode=rwc"
    )]
    database_url: String,
    /// redis://…; without it, presence lives in this process (single node only)
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// Password for the first administrator, used only when the store has no users
    /// (otherwise one is generated and printed once)
    #[arg(long, env = "BAMF_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
    /// Host name clients use for the API (its TLS certificate names it)
    #[arg(long, env = "BAMF_API_HOST", default_value = "localhost")]
    api_host: HostName,
    /// Domain under which bridges are named (`<n>.bridge.<domain>`)
    #[arg(long, env = "BAMF_TUNNEL_DOMAIN", default_value = "tunnel.localhost")]
    tunnel_domain: HostName,
    /// How long shutdown waits for open requests
    #[arg(long, default_value = "25s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// Log format on stderr; level from BAMF_LOG (default: info)
    #[arg(long, value_enum, default_value_t = bamf_runtime::LogFormat::Text)]
    log_format: bamf_runtime::LogFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    bamf_runtime::init_logging(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(start(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn start(mut cli: Cli) -> anyhow::Result<()> {
    let store = Store::connect(&cli.database_url)
        .await
        .context("connecting to the store")?;
    let ca = bamf_api::load_or_create_ca(&store, "BAMF internal CA")
        .await
        .context("loading the CA")?;
    if let Some(password) = bamf_api::bootstrap_admin(&store, cli.admin_password.take())
        .await
        .context("creating the first administrator")?
    {
        // On stdout, once, for the operator: never in the logs.
        #[allow(clippy::print_stdout)]
        {
            println!(
                "bamf-api: created user '{}' with password: {password}",
                bamf_api::BOOTSTRAP_ADMIN
            );
            println!("bamf-api: this password is shown only now; keep it safe.");
        }
    }
    let tls = server::tls_config(&ca, &cli.api_host).context("setting up TLS")?;
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("listening on {}", cli.listen))?;
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let shutdown = CancellationToken::new();
    tokio::spawn(bamf_runtime::shutdown_on_signals(shutdown.clone()));
    let wiring = Wiring {
        listener,
        tls,
        store,
        ca: Arc::new(ca),
        metrics,
        shutdown,
        grace: cli.shutdown_grace,
        tunnel_domain: cli.tunnel_domain,
    };
    match cli.redis_url {
        Some(url) => {
            let presence = RedisPresence::connect(&url)
                .await
                .context("connecting to Redis")?;
            wiring.run(presence).await;
        }
        None => {
            tracing::info!("no REDIS_URL: presence is in process (single node)");
            wiring.run(MemoryPresence::default()).await;
        }
    }
    Ok(())
}

/// Everything the server needs except presence, whose type depends on the configuration.
struct Wiring {
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    store: Store,
    ca: Arc<bamf_api::ca::Authority>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    shutdown: CancellationToken,
    grace: Duration,
    tunnel_domain: HostName,
}

impl Wiring {
    async fn run<P: Presence + 'static>(self, presence: P) {
        let state = Arc::new(AppState {
            store: self.store,
            presence,
            ca: self.ca,
            metrics: Some(self.metrics),
            lifetimes: bamf_api::ca::Lifetimes::default(),
            login_limits: bamf_api::auth::RateLimiter::new(LOGIN_FAILURES, LOGIN_WINDOW),
            tunnel_domain: self.tunnel_domain,
        });
        server::serve(self.listener, self.tls, state, self.shutdown, self.grace).await;
    }
}
