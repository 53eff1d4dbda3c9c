//! `bamf-api`: the control plane server.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bamf_api::context::AppState;
use bamf_api::presence::{MemoryPresence, Presence, RedisPresence};
use bamf_api::server;
use bamf_api::store::{Store, StoreOptions};
use bamf_proto::HostName;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Login attempts per client address, and failures per user before attempts from
/// unfamiliar addresses are slowed, in [`LOGIN_WINDOW`] (see `auth::LoginGuard`).
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
    /// A read replica of the PostgreSQL store for read-heavy listings (audit log, sessions);
    /// default: the primary
    #[arg(long, env = "BAMF_DATABASE_READ_URL", hide_env_values = true)]
    database_read_url: Option<String>,
    /// CA bundle (PEM) verifying PostgreSQL's server certificate, for the primary and the
    /// read replica (added to their URLs as `sslrootcert` unless they name one)
    #[arg(long, env = "BAMF_DATABASE_CA_FILE")]
    database_ca_file: Option<std::path::PathBuf>,
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
    /// More names for the API's TLS certificate, comma-separated (e.g. in-cluster names)
    #[arg(long, env = "BAMF_API_ALT_NAMES", value_delimiter = ',')]
    api_alt_names: Vec<HostName>,
    /// A publicly trusted certificate chain (PEM) for the API host, served instead of the
    /// internal CA's for that name only; reloaded when the file changes. Until it exists,
    /// the internal certificate is served. Client certificates stay the internal CA's.
    #[arg(long, env = "BAMF_API_TLS_CERT_FILE", requires = "api_tls_key_file")]
    api_tls_cert_file: Option<std::path::PathBuf>,
    /// The private key (PEM) of --api-tls-cert-file
    #[arg(long, env = "BAMF_API_TLS_KEY_FILE", requires = "api_tls_cert_file")]
    api_tls_key_file: Option<std::path::PathBuf>,
    /// Bring your own CA: its certificate (PEM), used when the store has no CA yet
    #[arg(long, env = "BAMF_CA_CERT_FILE", requires = "ca_key_file")]
    ca_cert_file: Option<std::path::PathBuf>,
    /// Bring your own CA: its private key (PEM)
    #[arg(long, env = "BAMF_CA_KEY_FILE", requires = "ca_cert_file")]
    ca_key_file: Option<std::path::PathBuf>,
    /// File holding the key that seals the CA key at rest (base64 of 32 bytes), generated
    /// 0600 when missing; with SQLite the default is `ca-sealing.key` beside the database.
    /// BAMF_CA_ENCRYPTION_KEY gives the key itself instead.
    #[arg(long, env = "BAMF_CA_SEALING_KEY_FILE")]
    ca_sealing_key_file: Option<std::path::PathBuf>,
    /// User certificate and API token lifetime
    #[arg(long, default_value = "12h", value_parser = humantime::parse_duration)]
    user_cert_lifetime: Duration,
    /// Agent certificate lifetime (agents renew at half-life)
    #[arg(long, default_value = "365days", value_parser = humantime::parse_duration)]
    agent_cert_lifetime: Duration,
    /// Bridge certificate lifetime (bridges renew at half-life)
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    bridge_cert_lifetime: Duration,
    /// A bot's API token and certificate lifetime (bots renew at half-life)
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    bot_credential_lifetime: Duration,
    /// Session certificate lifetime: the time a tunnel has to be established
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    session_cert_lifetime: Duration,
    /// Audit events and ended sessions older than this many days are purged (hourly, by
    /// one replica at a time, itself audited); 0 keeps them forever
    #[arg(long, env = "BAMF_AUDIT_RETENTION_DAYS", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=36_500))]
    audit_retention_days: u32,
    /// Apply the store's migrations and exit (for a deployment hook)
    #[arg(long)]
    migrate_only: bool,
    /// The bridges' public port (their front door), as clients and agents dial it
    #[arg(long, env = "BAMF_TUNNEL_PORT", default_value_t = 443)]
    tunnel_port: u16,
    /// Domain under which bridges are named (`<n>.bridge.<domain>`)
    #[arg(long, env = "BAMF_TUNNEL_DOMAIN", default_value = "tunnel.localhost")]
    tunnel_domain: HostName,
    /// Password checks at once (each takes about 19 MiB); more wait, within a bound
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    login_concurrency: u16,
    /// Connections held at once; more are accepted and closed at once
    #[arg(long, default_value_t = server::MAX_CONNECTIONS)]
    max_connections: usize,
    /// Connections held at once per client address (IPv6: per /64)
    #[arg(long, default_value_t = server::MAX_PER_ADDRESS)]
    max_connections_per_address: u32,
    /// A connection with no request in flight this long is closed
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// Proxies (addresses or CIDR blocks, comma-separated) whose connections start with a
    /// PROXY v2 header naming the client, e.g. the bridges' front doors
    #[arg(long, env = "BAMF_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxies: Vec<bamf_api::connections::Cidr>,
    /// How long a session whose path broke waits for its sides to attach again (as the
    /// agents' `resume_timeout`); then it ends `resume_timeout`
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    resume_deadline: Duration,
    /// How long shutdown waits for open requests
    #[arg(long, default_value = "25s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// Sign-in configuration (TOML): password login on or off, break-glass users, the
    /// OpenID Connect providers and their claim-to-role rules (docs/sso.md); without it,
    /// password login only
    #[arg(long, env = "BAMF_AUTH_CONFIG")]
    auth_config: Option<std::path::PathBuf>,
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
    // Configuration first: a mistake is reported before anything is touched.
    let setup = ca_setup(&cli)?;
    let lifetimes = bamf_api::ca::Lifetimes {
        user: cli.user_cert_lifetime,
        agent: cli.agent_cert_lifetime,
        bridge: cli.bridge_cert_lifetime,
        session: cli.session_cert_lifetime,
    };
    for (name, lifetime) in [
        ("user", lifetimes.user),
        ("agent", lifetimes.agent),
        ("bridge", lifetimes.bridge),
        ("session", lifetimes.session),
    ] {
        if lifetime < Duration::from_secs(10) || lifetime > Duration::from_secs(5 * 365 * 86400) {
            anyhow::bail!("--{name}-cert-lifetime must be between 10s and 5 years");
        }
    }
    if cli.bot_credential_lifetime < Duration::from_secs(10)
        || cli.bot_credential_lifetime > lifetimes.user
    {
        anyhow::bail!("--bot-credential-lifetime must be between 10s and --user-cert-lifetime");
    }
    if cli.max_connections == 0 || cli.max_connections_per_address == 0 {
        anyhow::bail!("--max-connections and --max-connections-per-address must be at least 1");
    }
    if cli.idle_timeout < Duration::from_secs(1) {
        anyhow::bail!("--idle-timeout must be at least 1s");
    }
    let sso = match &cli.auth_config {
        Some(path) => {
            let settings = bamf_api::sso::AuthSettings::load(path)
                .map_err(|e| anyhow::anyhow!("{}:\n{e}", path.display()))?;
            bamf_api::sso::Sso::new(settings).map_err(|e| anyhow::anyhow!("{e}"))?
        }
        None => bamf_api::sso::Sso::local_only(),
    };
    if !sso.local_enabled {
        tracing::info!(
            break_glass = ?sso.break_glass_users,
            "password login is disabled (auth.local.enabled = false)"
        );
    }
    for name in sso.providers.keys() {
        tracing::info!(provider = %name, "single sign-on provider configured");
    }
    let mut policy = server::ConnectionPolicy {
        idle_timeout: cli.idle_timeout,
        ..Default::default()
    };
    policy.limits.max_connections = cli.max_connections;
    policy.limits.max_per_address = cli.max_connections_per_address;
    policy.limits.trusted_proxies = std::mem::take(&mut cli.trusted_proxies);
    let presence = cli
        .redis_url
        .as_deref()
        .map(RedisPresence::new)
        .transpose()
        .context("REDIS_URL")?;
    if let Some(ca) = &cli.database_ca_file {
        std::fs::File::open(ca)
            .with_context(|| format!("BAMF_DATABASE_CA_FILE: cannot read {}", ca.display()))?;
    }
    let public_files = match (cli.api_tls_cert_file.take(), cli.api_tls_key_file.take()) {
        (Some(cert), Some(key)) => Some(bamf_api::tls::PublicFiles { cert, key }),
        _ => None,
    };
    let options = StoreOptions {
        read_url: cli.database_read_url.take(),
        ca_file: cli.database_ca_file.clone(),
    };
    let has_replica = options.read_url.is_some();
    let store = Store::open(&cli.database_url, &options)
        .await
        .context("connecting to the store")?;
    if has_replica {
        match store.ping_read().await {
            Ok(()) => {
                tracing::info!("read replica connected: audit and session listings read from it")
            }
            Err(e) => {
                tracing::warn!(error = %e, "the read replica does not answer yet: audit and session listings fail until it does")
            }
        }
    }
    if cli.migrate_only {
        tracing::info!("migrations applied");
        return Ok(());
    }
    // From the environment only (a secret): the deployment's standing bridge join token.
    if let Ok(token) = std::env::var("BAMF_BRIDGE_JOIN_TOKEN")
        && !token.is_empty()
    {
        store
            .install_bootstrap_token(
                bamf_api::store::JoinKind::Bridge,
                &bamf_api::auth::token_hash(&token),
                bamf_api::now_ms(),
            )
            .await
            .context("installing BAMF_BRIDGE_JOIN_TOKEN")?;
    }
    let ca = bamf_api::load_or_create_ca(&store, "BAMF internal CA", &setup)
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
    let mut hosts = vec![cli.api_host.clone()];
    hosts.extend(cli.api_alt_names.iter().cloned());
    let (tls, certificates) = server::tls_config(&ca, &hosts).context("setting up TLS")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    if let Some(files) = &public_files {
        bamf_api::tls::initial(&certificates, files, &cli.api_host, &provider)
            .context("BAMF_API_TLS_CERT_FILE / BAMF_API_TLS_KEY_FILE")?;
    }
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("listening on {}", cli.listen))?;
    let metrics = bamf_api::metrics::install().context("installing the metrics recorder")?;
    let shutdown = CancellationToken::new();
    tokio::spawn(bamf_runtime::shutdown_on_signals(shutdown.clone()));
    if let Some(files) = public_files {
        tokio::spawn(bamf_api::tls::watch(
            certificates,
            files,
            cli.api_host.clone(),
            provider,
            shutdown.clone(),
        ));
    }
    let presence = match presence {
        // Connected on first use: while Redis is down, /ready says so.
        Some(redis) => Presence::Redis(redis),
        None => {
            tracing::info!("no REDIS_URL: presence is in process (single node)");
            Presence::Memory(MemoryPresence::default())
        }
    };
    if cli.audit_retention_days > 0 {
        let days = Duration::from_secs(u64::from(cli.audit_retention_days) * 86_400);
        tracing::info!(
            days = cli.audit_retention_days,
            "audit retention: events and ended sessions older than this are purged hourly"
        );
        tokio::spawn(bamf_api::purge::run(store.clone(), days, shutdown.clone()));
    }
    let state = Arc::new(AppState {
        store,
        presence,
        ca: Arc::new(ca),
        metrics: Some(metrics),
        lifetimes,
        login_limits: bamf_api::auth::LoginGuard::new(
            LOGIN_FAILURES,
            LOGIN_WINDOW,
            usize::from(cli.login_concurrency),
        ),
        tunnel_domain: cli.tunnel_domain,
        tunnel_port: cli.tunnel_port,
        shutdown: shutdown.clone(),
        openapi: bamf_api::openapi::document_json(),
        lost_bridges: Arc::default(),
        resume_deadline: cli.resume_deadline,
        sso,
        bot_lifetime: cli.bot_credential_lifetime,
    });
    server::serve(listener, tls, state, policy, shutdown, cli.shutdown_grace).await;
    Ok(())
}

/// The CA's source and key sealing, from files and the environment.
fn ca_setup(cli: &Cli) -> anyhow::Result<bamf_api::CaSetup> {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    };
    let provided = match (&cli.ca_cert_file, &cli.ca_key_file) {
        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
        _ => None,
    };
    // From the environment only: a flag would show in `ps`.
    let sealing = match std::env::var("BAMF_CA_ENCRYPTION_KEY") {
        Ok(key) if !key.is_empty() => {
            Some(bamf_api::seal::SealingKey::from_base64(&key).context("BAMF_CA_ENCRYPTION_KEY")?)
        }
        _ => None,
    };
    if sealing.is_some() && cli.ca_sealing_key_file.is_some() {
        anyhow::bail!("set either BAMF_CA_ENCRYPTION_KEY or --ca-sealing-key-file, not both");
    }
    // The CA key is sealed by default: with SQLite the key is kept in a file of its own
    // beside the database (a copy of the database alone does not reveal the CA key).
    let sealing_file = cli
        .ca_sealing_key_file
        .clone()
        .or_else(|| {
            let db = bamf_api::store::sqlite_file(&cli.database_url)?;
            Some(db.with_file_name("ca-sealing.key"))
        })
        .filter(|_| sealing.is_none())
        .map(bamf_api::seal::KeyFile);
    Ok(bamf_api::CaSetup {
        provided,
        sealing,
        sealing_file,
    })
}
