//! Tunnels that outlive their bridge, measured with real processes on loopback: `bamf-api`
//! (SQLite), two bridges forwarding to each other behind a TCP load balancer, one
//! `bamf-agent`, an echo target; the client in process (the CLI's code: end-to-end session
//! and resumable stream).
//!
//! - pause seen by an application across a `kill -9` of the bridge hosting its tunnel: an
//!   echo every 2 ms, the longest gap between two answered echoes, over N trials (the killed
//!   bridge starts again between trials); p50 and p99;
//! - many established tunnels on one bridge: N tunnels opened (32 at a time) and held, each
//!   echoing once, then the bridge's and the agent's RSS and CPU time, and a round of echoes
//!   through all of them.
//!
//! Prints a Markdown section; `--record` appends it to benches/RESULTS.md.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bamf_client::https::Api as ApiClient;
use bamf_proto::api as wire;
use bamf_tests::{Api, Balancer, Bridge, TempDir};
use clap::Parser;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

#[derive(Debug, Parser)]
#[command(
    name = "resume",
    about = "Pause across a bridge's death, and many tunnels on one bridge"
)]
struct Cli {
    /// Kill trials for the pause.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Tunnels held open on one bridge.
    #[arg(long, default_value_t = 9000)]
    tunnels: usize,
    /// Small numbers, to check the harness works (CI).
    #[arg(long)]
    smoke: bool,
    /// Append the report to benches/RESULTS.md.
    #[arg(long)]
    record: bool,
}

const TOKEN: &str = "bamf_bench-bridge-token";
const DOMAIN: &str = "tunnel.bench";
const PASSWORD: &str = "bench-password-1";

/// The processes, and what it takes to start a bridge again.
struct Fleet {
    dir: TempDir,
    api: Api,
    ca_file: std::path::PathBuf,
    peer_port: u16,
    bridges: Vec<Option<Bridge>>,
    lb: Balancer,
    client: ApiClient,
    token: String,
}

impl Fleet {
    fn start_bridge(&mut self, n: u32) -> Result<()> {
        let (listen, to) = (
            format!("127.0.0.{n}:{}", self.peer_port),
            format!("127.0.0.{{n}}:{}", self.peer_port),
        );
        let bridge = Bridge::start_tunnel(
            n,
            DOMAIN,
            &self.api,
            &self.ca_file,
            &self.dir.path().join(format!("bridge-{n}")),
            TOKEN,
            &[
                "--peer-listen",
                &listen,
                "--peer-address",
                &to,
                "--max-connections",
                "30000",
            ],
        )?;
        self.lb.add(bridge.front);
        let slot = usize::try_from(n)?;
        if self.bridges.len() <= slot {
            self.bridges.resize_with(slot + 1, || None);
        }
        self.bridges[slot] = Some(bridge);
        Ok(())
    }

    /// A session to `resource` entering through `via` (the load balancer or a bridge's front
    /// door), carried for an in-process application: (its bridge, the application's end).
    async fn open(&self, resource: &str, via: SocketAddr) -> Result<(u32, DuplexStream)> {
        let (key, csr) = bamf_client::identity::key_and_csr()?;
        let request = wire::ConnectRequest {
            resource: resource.into(),
            csr,
        };
        let grant = self.client.user(&self.token).connect(&request).await?;
        let ordinal: u32 = grant
            .bridge_host
            .split('.')
            .next()
            .and_then(|n| n.parse().ok())
            .context("bridge name")?;
        let stream = bamf_client::e2e::open(
            &grant.bridge_host,
            443,
            Some(via),
            &grant.certificate.ca,
            &grant.certificate.certificate,
            &key,
        )
        .await?;
        let (app, local) = tokio::io::duplex(16 * 1024);
        let (client, token, session) = (self.client.clone(), self.token.clone(), grant.session_id);
        tokio::spawn(async move {
            let reopen = bamf_client::e2e::Reopen {
                api: client.user(&token),
                session,
                key,
                via: Some(via),
                broken: Some(ordinal),
                on_retry: |_, _| {},
            };
            bamf_client::resume::carry(
                local,
                stream,
                reopen,
                &bamf_client::resume::Settings::default(),
                std::future::pending(),
            )
            .await
        });
        Ok((ordinal, app))
    }
}

/// A port free on 127.0.0.0 and 127.0.0.1, for the bridges' peer ports.
fn peer_port() -> Result<u16> {
    for _ in 0..100 {
        let first = std::net::TcpListener::bind("127.0.0.0:0")?;
        let port = first.local_addr()?.port();
        if std::net::TcpListener::bind(format!("127.0.0.1:{port}")).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free peer port")
}

/// A tokio echo target (thousands of connections).
async fn echo_target() -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Ok(addr)
}

async fn echo_once(app: &mut DuplexStream, within: Duration) -> Result<()> {
    app.write_all(b"ping-pong").await?;
    let mut back = [0u8; 9];
    tokio::time::timeout(within, app.read_exact(&mut back))
        .await
        .context("no echo in time")??;
    anyhow::ensure!(&back == b"ping-pong", "echo differs");
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mut cli = Cli::parse();
    if cli.smoke {
        (cli.trials, cli.tunnels) = (2, 50);
    }
    // The client holds a socket per tunnel; the bridges and the agent inherit the limit.
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
    let dir = TempDir::new("bench-resume");
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("bamf.db").display());
    let api = Api::start_with_env(
        &[
            "--database-url",
            &db,
            "--admin-password",
            PASSWORD,
            "--tunnel-domain",
            DOMAIN,
            "--max-connections-per-address",
            "100000",
        ],
        &[("BAMF_BRIDGE_JOIN_TOKEN", TOKEN)],
    )?;
    let ca_pem = bamf_tests::stored_ca(&db).await?.cert_pem().to_owned();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem)?;
    let tls = bamf_client::tls_config(&ca_pem, None, &[b"http/1.1"])?;
    let client = ApiClient::new(&format!("https://localhost:{}", api.addr.port()), tls)?
        .connect_to(Some(api.addr));
    let (_, csr) = bamf_client::identity::key_and_csr()?;
    let token = client
        .login(&wire::LoginRequest {
            user: "admin".into(),
            password: PASSWORD.into(),
            csr,
        })
        .await?
        .token;
    let mut fleet = Fleet {
        dir,
        api,
        ca_file,
        peer_port: peer_port()?,
        bridges: Vec::new(),
        lb: Balancer::start(Vec::new()),
        client,
        token,
    };
    fleet.start_bridge(0)?;
    fleet.start_bridge(1)?;
    let echo = echo_target().await?;
    let agent = start_agent(&fleet, "bench", "echo", echo, fleet.lb.addr, 100).await?;

    // 1. Pause across kill -9 of the hosting bridge.
    let mut pauses = Vec::with_capacity(cli.trials);
    for trial in 0..cli.trials {
        let (on, mut app) = fleet.open("echo", fleet.lb.addr).await?;
        let mut last = Instant::now();
        for _ in 0..50 {
            echo_once(&mut app, Duration::from_secs(5)).await?;
            last = Instant::now();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let slot = usize::try_from(on)?;
        let victim = fleet.bridges[slot].take().context("the hosting bridge")?;
        victim.signal("KILL");
        let killed = Instant::now();
        let mut longest = Duration::ZERO;
        while killed.elapsed() < Duration::from_millis(1500) || longest.is_zero() {
            echo_once(&mut app, Duration::from_secs(60))
                .await
                .with_context(|| format!("trial {trial}: the tunnel did not come back"))?;
            longest = longest.max(last.elapsed());
            last = Instant::now();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        pauses.push(longest);
        drop(app);
        drop(victim);
        fleet.start_bridge(on)?;
        // Live (heartbeating) before the next trial places a session.
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    pauses.sort();
    let pct = bamf_benches::percentile;
    let (pause_p50, pause_p99) = (pct(&pauses, 0.5), pct(&pauses, 0.99));

    // 2. Many tunnels on one bridge: bridge 1 drains away, so every session lands on 0;
    // client and a second agent dial bridge 0 directly, as the balancer (in this process)
    // would need four descriptors per tunnel on top of the client's and the echo's.
    if let Some(mut one) = fleet.bridges[1].take() {
        one.signal("TERM");
        let _ = one.wait(Duration::from_secs(30));
    }
    drop(agent);
    let front = fleet.bridges[0].as_ref().context("bridge 0")?.front;
    let agent = start_agent(&fleet, "many", "echo-many", echo, front, cli.tunnels + 100).await?;
    let agent_pid = agent.pid();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let bridge = fleet.bridges[0].as_ref().context("bridge 0")?;
    let bridge_pid = bridge.pid();
    let (bridge_rss0, agent_rss0) = (bridge.rss_kib(), bamf_tests::rss_kib(agent_pid));
    let (bridge_cpu0, agent_cpu0) = (
        bamf_benches::cpu_seconds(bridge_pid),
        bamf_benches::cpu_seconds(agent_pid),
    );
    let opening = Instant::now();
    let fleet_ref = &fleet;
    let mut held: Vec<DuplexStream> = Vec::with_capacity(cli.tunnels);
    let mut pending = futures_util::stream::iter(0..cli.tunnels)
        .map(|_| async move {
            let (on, mut app) = fleet_ref.open("echo-many", front).await?;
            anyhow::ensure!(on == 0, "a session landed on bridge {on}");
            echo_once(&mut app, Duration::from_secs(30)).await?;
            anyhow::Ok(app)
        })
        .buffer_unordered(32);
    while let Some(app) = pending.next().await {
        match app {
            Ok(app) => held.push(app),
            Err(e) => {
                // What the processes said last, to tell which side gave up.
                for line in bridge.logs().iter().rev().take(15).rev() {
                    eprintln!("bridge 0: {line}");
                }
                for line in agent.logs().iter().rev().take(15).rev() {
                    eprintln!("agent: {line}");
                }
                return Err(e.context(format!("after {} tunnels", held.len())));
            }
        }
    }
    drop(pending);
    let opened_in = opening.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (bridge_rss1, agent_rss1) = (bridge.rss_kib(), bamf_tests::rss_kib(agent_pid));
    let (bridge_cpu1, agent_cpu1) = (
        bamf_benches::cpu_seconds(bridge_pid),
        bamf_benches::cpu_seconds(agent_pid),
    );
    let round = Instant::now();
    for app in &mut held {
        echo_once(app, Duration::from_secs(30)).await?;
    }
    let round_in = round.elapsed();
    let n = held.len();
    let per = |before: u64, after: u64| after.saturating_sub(before) as f64 * 1024.0 / n as f64;
    drop(held);
    drop(agent);

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let report = format!(
        "\n## Resumable tunnels, {date}{smoke}\n\n- commit: {commit}; machine: {machine}; everything on loopback\n\
         - processes: `bamf-api` (SQLite, in-process presence), two `bamf-bridge` forwarding to each other behind a TCP load balancer, one `bamf-agent`, an echo target; client in process (end-to-end TLS, resumable stream)\n\
         - pause seen by the application across `kill -9` of the bridge hosting its tunnel (an echo every 2 ms; the longest gap between answers), {trials} trials: **p50 {p50:.0} ms, p99 {p99:.0} ms** (max {max:.0} ms)\n\
         - {n} established tunnels on one bridge (opened 32 at a time in {open:.1} s, each echoing once): bridge RSS {b0} → {b1} KiB (**{bper:.0} B per tunnel**), {bcpu:.2} s CPU to set them up; agent RSS {a0} → {a1} KiB (**{aper:.0} B per tunnel**), {acpu:.2} s CPU; one echo through each of them, one after another: {round:.1} s\n",
        date = bamf_benches::today(),
        smoke = if cli.smoke {
            " (smoke: too small to quote)"
        } else {
            ""
        },
        commit = bamf_benches::commit(),
        machine = bamf_benches::machine(),
        trials = pauses.len(),
        p50 = ms(pause_p50),
        p99 = ms(pause_p99),
        max = ms(*pauses.last().unwrap()),
        open = opened_in.as_secs_f64(),
        b0 = bridge_rss0,
        b1 = bridge_rss1,
        bper = per(bridge_rss0, bridge_rss1),
        bcpu = bridge_cpu1 - bridge_cpu0,
        a0 = agent_rss0,
        a1 = agent_rss1,
        aper = per(agent_rss0, agent_rss1),
        acpu = agent_cpu1 - agent_cpu0,
        round = round_in.as_secs_f64(),
    );
    println!("{report}");
    if cli.record {
        bamf_benches::record(&report).context("writing RESULTS.md")?;
    }
    Ok(())
}

/// An agent named `name` offering `resource` (the echo target), dialing bridges at `bridge`.
async fn start_agent(
    fleet: &Fleet,
    name: &str,
    resource: &str,
    echo: SocketAddr,
    bridge: SocketAddr,
    max: usize,
) -> Result<bamf_tests::Agent> {
    let join = fleet
        .client
        .user(&fleet.token)
        .create_join_token(&wire::JoinTokenRequest {
            kind: wire::JoinKind::Agent,
            ttl_ms: 600_000,
            max_uses: 1,
        })
        .await?
        .token;
    let config = fleet.dir.path().join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "name = \"{name}\"\napi_url = \"https://localhost:{port}\"\napi_address = \"{api}\"\n\
             api_ca_file = \"{ca}\"\ndata_dir = \"{data}\"\nbridge_address = \"{bridge}\"\n\
             max_tunnels = {max}\n\
             [[resources]]\nname = \"{resource}\"\nkind = \"tcp\"\naddress = \"{echo}\"\n",
            port = fleet.api.addr.port(),
            api = fleet.api.addr,
            ca = fleet.ca_file.display(),
            data = fleet.dir.path().join(name).display(),
        ),
    )?;
    let agent = bamf_tests::Agent::spawn(&config, &[("BAMF_JOIN_TOKEN", &join)])?;
    let started = Instant::now();
    loop {
        let listed = fleet.client.user(&fleet.token).resources().await?;
        if listed.items.iter().any(|r| r.name == resource && r.online) {
            return Ok(agent);
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the agent never came online"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
