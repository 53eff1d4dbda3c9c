//! The API under floods from one address, with real processes on loopback:
//!
//! - idle connections: N TLS connections from 127.0.0.3 that complete the handshake (or an
//!   HTTP/2 preface) and send nothing, while a second client on 127.0.0.1 makes requests on
//!   fresh connections; its latency p50/p99 and errors, how many flood connections the API
//!   held, and the API's RSS;
//! - logins: N concurrent wrong passwords for the administrator from 127.0.0.3, while the
//!   administrator signs in from 127.0.0.1; the answers, passwords actually checked
//!   (`bamf_api_password_checks_total`), the administrator's sign-in time and the RSS.
//!
//! Prints a Markdown section; `--record` appends it to benches/RESULTS.md.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bamf_client::https::Api as ApiClient;
use bamf_tests::{Api, TempDir};
use clap::Parser;
use tokio::io::AsyncWriteExt;

#[derive(Debug, Parser)]
#[command(
    name = "flood",
    about = "The API under idle-connection and login floods"
)]
struct Cli {
    /// Idle connections opened from one address.
    #[arg(long, default_value_t = 5000)]
    idle: usize,
    /// Concurrent wrong passwords from one address.
    #[arg(long, default_value_t = 200)]
    logins: usize,
    /// Requests the second client makes during the idle flood.
    #[arg(long, default_value_t = 300)]
    requests: usize,
    /// Small numbers, to check the harness works (CI).
    #[arg(long)]
    smoke: bool,
    /// Append the report to benches/RESULTS.md.
    #[arg(long)]
    record: bool,
}

const PASSWORD: &str = "bench-password-1";
/// Where the floods come from; the other client uses 127.0.0.1.
const FLOOD_SOURCE: &str = "127.0.0.3";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mut cli = Cli::parse();
    if cli.smoke {
        (cli.idle, cli.logins, cli.requests) = (200, 30, 20);
    }
    // The flood's sockets live in this process.
    let _ = rlimit::increase_nofile_limit(u64::try_from(cli.idle).unwrap_or(u64::MAX) + 2048);
    let dir = TempDir::new("bench-flood");
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("bamf.db").display());
    // Each flood against a fresh API on the same store: defaults for the idle flood; for
    // the login flood the per-address connection cap is raised so that every guess reaches
    // the login limits (with the default cap most are closed before they are read); and
    // the idle flood again without a per-address cap, to show what the cap prevents.
    let start = |per_address: &str| {
        Api::start(&[
            "--database-url",
            &db,
            "--admin-password",
            PASSWORD,
            "--max-connections-per-address",
            per_address,
        ])
    };
    let api = start("64")?;
    let ca_pem = bamf_tests::stored_ca(&db).await?.cert_pem().to_owned();
    let rss_start = bamf_tests::rss_kib(api.pid());
    let idle = idle_flood(&api, &ca_pem, cli.idle, cli.requests).await?;
    drop(api);
    let logins = login_flood(&start("1000")?, &ca_pem, cli.logins).await?;
    let uncapped = idle_flood(&start("100000")?, &ca_pem, cli.idle, cli.requests).await?;

    let section = format!(
        "\n## API floods, {date}\n\n\
         - commit: {commit}; machine: {machine}; `bamf-api` on SQLite, default limits (64 \
         connections per address, 60 s idle timeout, 10 login attempts per address, 4 \
         hashing threads); flood from 127.0.0.3, the other client on 127.0.0.1\n\
         - idle connections: {opened} TLS connections opened from one address (half HTTP/1.1 \
         that send nothing, half HTTP/2 that send the preface and stop): the API held \
         **{held}**, closed the rest at once; meanwhile {requests} requests from another \
         address on fresh connections (TLS handshake + `GET /health`): **p50 {p50:.1} ms, \
         p99 {p99:.1} ms**, {failed} failed; API RSS {rss_start} KiB at start, **{idle_rss} \
         KiB** with the flood held\n\
         - the same without a per-address cap (`--max-connections-per-address 100000`): the \
         API held {u_held} (the global cap is 4096); the other client: p50 {u_p50:.1} ms, p99 \
         {u_p99:.1} ms, **{u_failed} of {requests} failed**\n\
         - logins (per-address connection cap raised to 1000, so every guess reaches the \
         login limits): {tried} concurrent wrong passwords for `admin` from one address: \
         answers {codes:?}, **{checked} passwords checked** (the administrator's own sign-in \
         included), the administrator signed in from another address meanwhile in \
         **{admin_ms:.0} ms**; API RSS **{login_rss_before} → {login_rss_after} KiB** (4 \
         hashing threads keep one 19 MiB argon2 block each; flat after)\n",
        date = bamf_benches::today(),
        commit = bamf_benches::commit(),
        machine = bamf_benches::machine(),
        opened = idle.opened,
        held = idle.held,
        requests = cli.requests,
        p50 = idle.p50_ms,
        p99 = idle.p99_ms,
        failed = idle.failed,
        idle_rss = idle.rss_kib,
        u_held = uncapped.held,
        u_p50 = uncapped.p50_ms,
        u_p99 = uncapped.p99_ms,
        u_failed = uncapped.failed,
        tried = cli.logins,
        codes = logins.codes,
        checked = logins.checked,
        admin_ms = logins.admin_ms,
        login_rss_before = logins.rss_before,
        login_rss_after = logins.rss_after,
    );
    println!("{section}");
    if cli.record && !cli.smoke {
        bamf_benches::record(&section).context("writing RESULTS.md")?;
    }
    Ok(())
}

struct IdleReport {
    opened: usize,
    held: usize,
    p50_ms: f64,
    p99_ms: f64,
    failed: usize,
    rss_kib: u64,
}

/// A TLS connection to `api` from the loopback address `source`, within 5 s.
async fn tls_from(
    api: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    source: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(
        format!("{source}:0")
            .parse()
            .map_err(std::io::Error::other)?,
    )?;
    let connect = async {
        let tcp = socket.connect(api).await?;
        let name =
            rustls_pki_types::ServerName::try_from("localhost").map_err(std::io::Error::other)?;
        tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
    };
    tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(std::io::Error::other)?
}

async fn idle_flood(api: &Api, ca_pem: &str, count: usize, requests: usize) -> Result<IdleReport> {
    let h1 = bamf_client::tls_config(ca_pem, None, &[b"http/1.1"])?;
    let h2 = bamf_client::tls_config(ca_pem, None, &[b"h2"])?;
    let api_addr = api.addr;
    let port = api.addr.port();
    // The other client: a fresh connection per request, so each pays the handshake too.
    let client = tokio::spawn({
        let tls = h1.clone();
        async move {
            let mut times = Vec::with_capacity(requests);
            let mut failed = 0;
            for _ in 0..requests {
                let started = Instant::now();
                let Ok(api) = ApiClient::new(&format!("https://localhost:{port}"), tls.clone())
                else {
                    failed += 1;
                    continue;
                };
                match api.connect_to(Some(api_addr)).health().await {
                    Ok(_) => times.push(started.elapsed()),
                    Err(_) => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (times, failed)
        }
    });
    // The flood, in waves so this process does not itself stall on its backlog.
    let mut held = Vec::new();
    for wave in 0..count.div_ceil(250) {
        let mut opening = Vec::new();
        for n in wave * 250..count.min((wave + 1) * 250) {
            let tls = if n % 2 == 0 { h1.clone() } else { h2.clone() };
            let preface = n % 2 == 1;
            opening.push(tokio::spawn(async move {
                let mut stream = tls_from(api_addr, tls, FLOOD_SOURCE).await.ok()?;
                if preface {
                    stream
                        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                        .await
                        .ok()?;
                }
                Some(stream)
            }));
        }
        for task in opening {
            if let Ok(Some(stream)) = task.await {
                held.push(stream);
            }
        }
    }
    // Which of them the API still holds: a closed one reads end-of-stream at once.
    let mut still_open = 0;
    for stream in &mut held {
        let mut buf = [0u8; 64];
        use tokio::io::AsyncReadExt;
        match tokio::time::timeout(Duration::from_millis(20), stream.read(&mut buf)).await {
            Err(_) => still_open += 1,
            Ok(Ok(n)) if n > 0 => still_open += 1,
            Ok(_) => {}
        }
    }
    let rss_kib = bamf_tests::rss_kib(api.pid());
    let (mut times, failed) = client.await?;
    times.sort();
    let at = |q: f64| {
        times
            .get(((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1)))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    drop(held);
    Ok(IdleReport {
        opened: count,
        held: still_open,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        failed,
        rss_kib,
    })
}

struct LoginReport {
    codes: BTreeMap<u16, usize>,
    checked: f64,
    admin_ms: f64,
    rss_before: u64,
    rss_after: u64,
}

async fn login_flood(api: &Api, ca_pem: &str, count: usize) -> Result<LoginReport> {
    let (_, csr) = bamf_client::identity::key_and_csr()?;
    let guess = serde_json::json!({"user": "admin", "password": "guess", "csr": csr}).to_string();
    let rss_before = bamf_tests::rss_kib(api.pid());
    let tls = bamf_client::tls_config(ca_pem, None, &[b"http/1.1"])?;
    let mut flood = Vec::new();
    for _ in 0..count {
        let tls = tls.clone();
        let guess = guess.clone();
        let addr = api.addr;
        flood.push(tokio::spawn(async move {
            let mut stream = tls_from(addr, tls, FLOOD_SOURCE).await.ok()?;
            let request = format!(
                "POST /api/v1/auth/login HTTP/1.1\r\nhost: localhost\r\ncontent-type: \
                 application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{guess}",
                guess.len()
            );
            stream.write_all(request.as_bytes()).await.ok()?;
            let mut answer = Vec::new();
            use tokio::io::AsyncReadExt;
            tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut answer))
                .await
                .ok()?
                .ok()?;
            let text = String::from_utf8_lossy(&answer);
            text.split(' ').nth(1)?.parse::<u16>().ok()
        }));
    }
    // The administrator, from their own address, while the flood is on.
    let started = Instant::now();
    let admin = ApiClient::new(&format!("https://localhost:{}", api.addr.port()), tls)?
        .connect_to(Some(api.addr));
    let (_, admin_csr) = bamf_client::identity::key_and_csr()?;
    let login = bamf_proto::api::LoginRequest {
        user: "admin".into(),
        password: PASSWORD.into(),
        csr: admin_csr,
    };
    admin
        .login(&login)
        .await
        .context("the administrator could not sign in during the flood")?;
    let admin_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut codes = BTreeMap::new();
    for task in flood {
        let code = task.await?.unwrap_or(0);
        *codes.entry(code).or_default() += 1;
    }
    let rss_after = bamf_tests::rss_kib(api.pid());
    let metrics = admin_metrics(api, ca_pem).await?;
    Ok(LoginReport {
        codes,
        checked: bamf_tests::parse_sample(&metrics, "bamf_api_password_checks_total"),
        admin_ms,
        rss_before,
        rss_after,
    })
}

async fn admin_metrics(api: &Api, ca_pem: &str) -> Result<String> {
    let tls = bamf_client::tls_config(ca_pem, None, &[b"http/1.1"])?;
    let mut stream = tls_from(api.addr, tls, "127.0.0.1").await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    use tokio::io::AsyncReadExt;
    stream.read_to_end(&mut answer).await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}
