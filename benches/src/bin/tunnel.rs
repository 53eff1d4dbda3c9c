//! Tunnel costs with real processes on loopback: `bamf-api` (SQLite), one `bamf-bridge`
//! with the relay, one `bamf-agent`, and an echo target.
//!
//! - session setup: `POST /api/v1/connect` → dial the bridge with the session certificate →
//!   handover → end-to-end TLS with the agent → first byte echoed back (the agent dials after
//!   the command reaches it), p50/p99;
//! - throughput through a tunnel (end-to-end TLS and the resumable stream between the client
//!   and the agent, spliced by the bridge; agent → target plain TCP) against the front door's
//!   passthrough of one TLS connection to a TLS echo server, same client, and the bridge's
//!   CPU time per GB for each;
//! - memory per established idle tunnel: bridge and agent RSS growth over N open tunnels.
//!
//! Prints a Markdown section; `--record` appends it to benches/RESULTS.md.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bamf_client::https::Api as ApiClient;
use bamf_proto::api as wire;
use bamf_tests::{Api, Bridge, TempDir};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(
    name = "tunnel",
    about = "Session setup, relay throughput and idle memory per tunnel"
)]
struct Cli {
    /// Sessions timed for setup latency.
    #[arg(long, default_value_t = 200)]
    sessions: usize,
    /// MiB sent (and echoed back) per throughput run.
    #[arg(long, default_value_t = 512)]
    mib: usize,
    /// Throughput runs per path; the median is reported (the VM's absolute numbers swing
    /// by a quarter between runs: five pairs of one build gave ratios from 0.79× to 0.92×,
    /// fifteen keep it within a few percent).
    #[arg(long, default_value_t = 15)]
    runs: usize,
    /// Idle tunnels held open for the memory measurement.
    #[arg(long, default_value_t = 500)]
    idle: usize,
    /// Small numbers, to check the harness works (CI).
    #[arg(long)]
    smoke: bool,
    /// Append the report to benches/RESULTS.md.
    #[arg(long)]
    record: bool,
}

const TOKEN: &str = "bamf_bench-bridge-token";
/// Untimed sessions before the timed ones (see the setup phase).
const WARM_UP: usize = 20;
const DOMAIN: &str = "tunnel.bench";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mut cli = Cli::parse();
    if cli.smoke {
        (cli.sessions, cli.mib, cli.runs, cli.idle) = (10, 8, 1, 20);
    }
    let dir = TempDir::new("bench-tunnel");
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("bamf.db").display());
    let api = Api::start_with_env(
        &[
            "--database-url",
            &db,
            "--admin-password",
            "bench-password-1",
            "--tunnel-domain",
            DOMAIN,
        ],
        &[("BAMF_BRIDGE_JOIN_TOKEN", TOKEN)],
    )?;
    let ca_pem = bamf_tests::stored_ca(&db).await?.cert_pem().to_owned();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem)?;
    let url = format!("https://localhost:{}", api.addr.port());
    let api_addr = api.addr.to_string();

    // The passthrough baseline's TLS echo server sits behind a static route of the same bridge.
    let (tls_echo, tls_echo_ca) = tls_echo_server().await?;
    let route = format!("echo.bench={tls_echo}");
    let bridge = Bridge::start_tunnel(
        0,
        DOMAIN,
        &api,
        &ca_file,
        &dir.path().join("bridge"),
        TOKEN,
        &["--route", &route],
    )?;

    let echo = bamf_tests::echo_server();
    let tls = bamf_client::tls_config(&ca_pem, None, &[b"http/1.1"])?;
    // Pooled, as the CLI's is: a command keeps its API connection for its next request (a
    // `bamf tcp` listener opens a session per local connection over it).
    let client = ApiClient::new(&url, tls)?
        .connect_to(Some(api.addr))
        .pooled();
    let (_, csr) = bamf_client::identity::key_and_csr()?;
    let login = wire::LoginRequest {
        user: "admin".into(),
        password: "bench-password-1".into(),
        csr,
    };
    let token = client.login(&login).await?.token;
    let join = client
        .user(&token)
        .create_join_token(&wire::JoinTokenRequest {
            kind: wire::JoinKind::Agent,
            ttl_ms: 600_000,
            max_uses: 1,
        })
        .await?
        .token;
    let agent_config = dir.path().join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            "name = \"bench\"\napi_url = \"{url}\"\napi_address = \"{api_addr}\"\napi_ca_file = \"{}\"\n\
             data_dir = \"{}\"\nbridge_address = \"{}\"\nmax_tunnels = 4096\n\
             [[resources]]\nname = \"echo\"\nkind = \"tcp\"\naddress = \"{echo}\"\n",
            ca_file.display(),
            dir.path().join("agent").display(),
            bridge.front
        ),
    )?;
    // Killed when dropped.
    let agent = bamf_tests::Agent::spawn(&agent_config, &[("BAMF_JOIN_TOKEN", &join)])?;
    let agent_pid = agent.pid();
    let connect = |client: ApiClient, token: String| async move {
        let (key, csr) = bamf_client::identity::key_and_csr()?;
        let request = wire::ConnectRequest {
            resource: "echo".into(),
            csr,
        };
        let grant = client.user(&token).connect(&request).await?;
        anyhow::Ok((
            grant.certificate.certificate,
            key,
            grant.bridge_host,
            grant.session_id,
        ))
    };
    // Wait for the agent's command stream: connect answers 503 until then.
    let started = Instant::now();
    while connect(client.clone(), token.clone()).await.is_err() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the agent never came online"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // the warm-up session's pending side expires

    // As the CLI does: the end-to-end session, carried over the resumable stream for a local
    // connection (here an in-process pipe).
    // Also returns how long the API's `POST /connect` took, to tell the phases apart.
    let open = |client: ApiClient, token: String, ca: String, front: SocketAddr| async move {
        let asked = Instant::now();
        let (cert, key, host, session) = connect(client.clone(), token.clone()).await?;
        let api_time = asked.elapsed();
        let stream = bamf_client::e2e::open(&host, 443, Some(front), &ca, &cert, &key).await?;
        let (mut s, local) = tokio::io::duplex(256 * 1024);
        tokio::spawn(async move {
            let reopen = bamf_client::e2e::Reopen {
                api: client.user(&token),
                session,
                key,
                via: Some(front),
                broken: None,
                on_retry: |_, _| {},
            };
            let settings = bamf_client::resume::Settings::default();
            bamf_client::resume::carry(local, stream, reopen, &settings, std::future::pending())
                .await
        });
        s.write_all(b"x").await?;
        s.flush().await?;
        let mut one = [0u8; 1];
        s.read_exact(&mut one).await?;
        anyhow::Ok((s, api_time))
    };

    // CPU seconds of each process: this one (the client, and the echo servers of both
    // paths), the bridge, the agent, the API; what each spent since `before`, divided by
    // `per`.
    let pids = [std::process::id(), bridge.pid(), agent_pid, api.pid()];
    let cpus = || pids.map(bamf_benches::cpu_seconds);
    let spent = |before: [f64; 4], per: f64| {
        let after = cpus();
        [0, 1, 2, 3].map(|i| (after[i] - before[i]) / per)
    };

    // 1. Session setup latency. This VM pays for waking from idle: the first sessions after a
    // pause take several times longer (a setup 1 s after the last took 35 ms here, against
    // 5 ms back to back; a 100-hash loop 3.5 ms against 45 µs), so the first session after
    // the pause above is timed and reported apart, and WARM_UP more go untimed.
    let cold = {
        let t = Instant::now();
        let (s, _) = open(client.clone(), token.clone(), ca_pem.clone(), bridge.front).await?;
        drop(s);
        t.elapsed()
    };
    for _ in 0..WARM_UP {
        let (s, _) = open(client.clone(), token.clone(), ca_pem.clone(), bridge.front).await?;
        drop(s);
    }
    let cpu_before = cpus();
    let mut setup = Vec::with_capacity(cli.sessions);
    let mut api_part = Vec::with_capacity(cli.sessions);
    for _ in 0..cli.sessions {
        let t = Instant::now();
        let (s, api_time) =
            open(client.clone(), token.clone(), ca_pem.clone(), bridge.front).await?;
        setup.push(t.elapsed());
        api_part.push(api_time);
        drop(s);
    }
    // Milliseconds per session.
    let setup_cpu = spent(cpu_before, cli.sessions as f64 / 1000.0);
    setup.sort();
    api_part.sort();
    let pct = bamf_benches::percentile;
    let (p50, p99) = (pct(&setup, 0.50), pct(&setup, 0.99));
    let (api_p50, api_p99) = (pct(&api_part, 0.50), pct(&api_part, 0.99));
    // The API's own time for those calls (its access log), the rest being the connection.
    let mut served: Vec<Duration> = api
        .logs()
        .iter()
        .filter(|l| l.contains("\"path\":\"/api/v1/connect\""))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["fields"]["duration_ms"].as_u64())
        .map(Duration::from_millis)
        .collect();
    served.sort();
    let served_p50 = served.get(served.len() / 2).copied().unwrap_or_default();

    // What one commit's sync costs on this disk (the API commits once per session).
    let (sync_p50, sync_p99) = bamf_benches::sync_latency(dir.path(), 200)?;

    // 2. Memory per established idle tunnel, before bulk transfers leave freed memory in the
    // processes for new tunnels to reuse.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (bridge_before, agent_before) = (bridge.rss_kib(), bamf_tests::rss_kib(agent_pid));
    let mut held = Vec::with_capacity(cli.idle);
    for _ in 0..cli.idle {
        held.push(
            open(client.clone(), token.clone(), ca_pem.clone(), bridge.front)
                .await?
                .0,
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (bridge_after, agent_after) = (bridge.rss_kib(), bamf_tests::rss_kib(agent_pid));
    let per =
        |before: u64, after: u64| after.saturating_sub(before) as f64 * 1024.0 / cli.idle as f64;
    let (bridge_per, agent_per) = (
        per(bridge_before, bridge_after),
        per(agent_before, agent_after),
    );
    drop(held);

    // 3. Throughput and the bridge's CPU time: tunnel vs passthrough, interleaved.
    let bytes = cli.mib * 1024 * 1024;
    let mut relay_rates = Vec::new();
    let mut pass_rates = Vec::new();
    // CPU seconds per GB carried (both directions counted) of each process.
    let (mut relay_cpu, mut pass_cpu) = (Vec::new(), Vec::new());
    let gb = 2.0 * bytes as f64 / 1e9;
    for _ in 0..cli.runs.max(1) {
        let (mut s, _) = open(client.clone(), token.clone(), ca_pem.clone(), bridge.front).await?;
        let cpu = cpus();
        relay_rates.push(pump(&mut s, bytes).await?);
        relay_cpu.push(spent(cpu, gb));
        let tls = bamf_client::tls_config(&tls_echo_ca, None, &[])?;
        let tcp = tokio::net::TcpStream::connect(bridge.front).await?;
        tcp.set_nodelay(true)?;
        let name = rustls_pki_types::ServerName::try_from("echo.bench")?;
        let mut p = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await?;
        let cpu = cpus();
        pass_rates.push(pump(&mut p, bytes).await?);
        pass_cpu.push(spent(cpu, gb));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // Each run's tunnel rate over the passthrough rate just after it: the VM's speed drifts
    // between runs, and a pair run back to back shares its phase.
    let paired = median(
        relay_rates
            .iter()
            .zip(&pass_rates)
            .map(|(relay, pass)| relay / pass)
            .collect(),
    );
    let runs = relay_rates.len();
    let (relay, pass) = (median(relay_rates), median(pass_rates));
    let process = |runs: &[[f64; 4]], i: usize| median(runs.iter().map(|r| r[i]).collect());
    // Client, bridge and agent: the API takes no part in carrying bytes.
    let total = |runs: &[[f64; 4]]| median(runs.iter().map(|r| r[..3].iter().sum()).collect());
    let (relay_all, pass_all) = (total(&relay_cpu), total(&pass_cpu));
    let (relay_client, pass_client) = (process(&relay_cpu, 0), process(&pass_cpu, 0));
    let relay_agent = process(&relay_cpu, 2);
    let (relay_cpu, pass_cpu) = (process(&relay_cpu, 1), process(&pass_cpu, 1));

    drop(agent);

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let report = format!(
        "\n## Tunnels, {date}{smoke}\n\n- commit: {commit}; machine: {machine}; everything on loopback, debug logging off\n\
         - processes: `bamf-api` (SQLite, in-process presence), one `bamf-bridge` (pairing and splice), one `bamf-agent`, an echo target; client in process (the CLI's code: end-to-end TLS and the resumable stream, rustls, ECDSA P-256)\n\
         - session setup, `POST /connect` (over the kept API connection, as the CLI keeps it) → dial with the session certificate → first byte echoed, {n} sessions one after another after {warm} untimed: **p50 {p50:.1} ms, p99 {p99:.1} ms** (the first session after a 3 s pause, not counted: {cold:.1} ms; of which the API's `POST /connect`: p50 {api_p50:.1} ms, p99 {api_p99:.1} ms, the API's own handling p50 {served_p50:.0} ms); CPU per session: API {cpu_api:.1} ms, bridge {cpu_bridge:.1} ms, agent {cpu_agent:.1} ms, client {cpu_client:.1} ms; this disk's sync (4 KiB write + fdatasync, as a commit) p50 {sync_p50:.2} ms, p99 {sync_p99:.2} ms\n\
         - throughput, {mib} MiB each way on one connection, median of {runs}: tunnel (TLS end to end client→agent, spliced by the bridge; TCP agent→target) **{relay:.2} Gbit/s**; front-door passthrough of one TLS connection to a TLS echo server **{pass:.2} Gbit/s**; ratio tunnel ÷ passthrough **{ratio:.2}×** (median of the {runs} back-to-back pairs' ratios: **{paired:.2}×**)\n\
         - bridge CPU per GB carried (both directions counted), median: tunnel **{relay_cpu:.3} s**, passthrough **{pass_cpu:.3} s**, ratio **{cpu_ratio:.2}×**\n\
         - all processes' CPU per GB carried: tunnel {relay_all:.2} s (client and echo target {relay_client:.2}, bridge {relay_cpu:.2}, agent {relay_agent:.2}); passthrough {pass_all:.2} s (client and TLS echo server {pass_client:.2}, bridge {pass_cpu:.2})\n\
         - memory per established idle tunnel ({idle} tunnels): bridge **{bridge_per:.0} B**, agent **{agent_per:.0} B** (RSS growth ÷ tunnels)\n",
        date = bamf_benches::today(),
        smoke = if cli.smoke {
            " (smoke: too small to quote)"
        } else {
            ""
        },
        commit = bamf_benches::commit(),
        machine = bamf_benches::machine(),
        n = setup.len(),
        warm = WARM_UP,
        cold = ms(cold),
        p50 = ms(p50),
        p99 = ms(p99),
        api_p50 = ms(api_p50),
        api_p99 = ms(api_p99),
        served_p50 = ms(served_p50),
        cpu_client = setup_cpu[0],
        cpu_bridge = setup_cpu[1],
        cpu_agent = setup_cpu[2],
        cpu_api = setup_cpu[3],
        sync_p50 = ms(sync_p50),
        sync_p99 = ms(sync_p99),
        mib = cli.mib,
        ratio = relay / pass,
        cpu_ratio = relay_cpu / pass_cpu,
        idle = cli.idle,
    );
    println!("{report}");
    if cli.record {
        bamf_benches::record(&report).context("writing RESULTS.md")?;
    }
    Ok(())
}

/// Sends `bytes` and reads them back concurrently, with at most [`IN_FLIGHT`] bytes sent and
/// not yet echoed (as a real protocol would; unbounded, two full-duplex bulk streams through
/// loopback can stall the kernel's flow control); Gbit/s of one direction.
async fn pump<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    bytes: usize,
) -> Result<f64> {
    const IN_FLIGHT: usize = 4 * 1024 * 1024;
    let (mut r, mut w) = tokio::io::split(s);
    let received = std::sync::atomic::AtomicUsize::new(0);
    let progress = tokio::sync::Notify::new();
    let chunk = vec![0x5au8; 64 * 1024];
    let started = Instant::now();
    let send = async {
        let mut sent = 0;
        while sent < bytes {
            while sent - received.load(std::sync::atomic::Ordering::Acquire) > IN_FLIGHT {
                progress.notified().await;
            }
            let n = (bytes - sent).min(chunk.len());
            w.write_all(&chunk[..n]).await?;
            sent += n;
        }
        w.flush().await?;
        anyhow::Ok(())
    };
    let receive = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < bytes {
            let n = r.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "closed early");
            got += n;
            received.store(got, std::sync::atomic::Ordering::Release);
            progress.notify_one();
        }
        anyhow::Ok(())
    };
    tokio::try_join!(send, receive)?;
    Ok(bytes as f64 * 8.0 / started.elapsed().as_secs_f64() / 1e9)
}

/// A TLS echo server with a throwaway certificate for `echo.bench`; returns its address
/// and the certificate (to trust).
async fn tls_echo_server() -> Result<(SocketAddr, String)> {
    use rustls_pki_types::pem::PemObject;
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["echo.bench".to_owned()])?.self_signed(&key)?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())?,
    )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(s).await {
                    let (mut r, mut w) = tokio::io::split(tls);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
        }
    });
    Ok((addr, cert.pem()))
}
