//! Front-door benchmark: BAMF's SNI passthrough against HAProxy, nginx and a direct
//! connection. See benches/README.md.
#![allow(clippy::print_stdout)]

mod backend;
mod hello;
mod procs;
mod report;
mod targets;
mod workloads;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

use crate::procs::{Guard, Measure, TempDir};
use crate::report::Results;
use crate::targets::{Env, Target};

#[derive(Debug, Parser)]
#[command(
    name = "frontdoor",
    about = "Front-door benchmark: bamf vs HAProxy vs nginx vs direct"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,

    /// CI mode: 1 run, 0.3 s durations, 200 idle connections, 500 echoes.
    #[arg(long)]
    smoke: bool,
    /// Append the report to the results file.
    #[arg(long)]
    record: bool,
    /// Results file for --record.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/RESULTS.md"))]
    results: PathBuf,
    /// The bamf-bridge binary.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/bamf-bridge"))]
    bridge: PathBuf,
    /// Targets, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,bamf,haproxy,haproxy-splice,nginx"
    )]
    targets: Vec<Target>,
    /// Workloads, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "idle,throughput,connrate,echo"
    )]
    workloads: Vec<Workload>,
    /// Runs; each run visits every target in turn.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Seconds per throughput and connection-rate measurement.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Parallel streams for the throughput workload.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    streams: Vec<usize>,
    /// Concurrent connectors for the connection-rate workload.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Echo round trips.
    #[arg(long, default_value_t = 20_000)]
    echo_count: usize,
    /// Idle connections (lowered if the open-file limit cannot carry them).
    #[arg(long, default_value_t = 10_000)]
    idle_conns: usize,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The benchmark backend (started by the harness itself).
    #[command(hide = true)]
    Backend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    Idle,
    Throughput,
    Connrate,
    Echo,
}

const WANT_NOFILE: u64 = 100_000;

/// Open-file limits after trying to raise them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Nofile {
    soft: u64,
    hard: u64,
    raised: bool,
}

/// Raises RLIMIT_NOFILE to 100 000 (needs CAP_SYS_RESOURCE), else soft up to hard.
pub(crate) fn raise_nofile() -> Nofile {
    use rlimit::Resource;
    if Resource::NOFILE.set(WANT_NOFILE, WANT_NOFILE).is_ok() {
        return Nofile {
            soft: WANT_NOFILE,
            hard: WANT_NOFILE,
            raised: true,
        };
    }
    let (soft, hard) = Resource::NOFILE.get().unwrap_or((1024, 1024));
    let soft = if soft < hard && Resource::NOFILE.set(hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    Nofile {
        soft,
        hard,
        raised: soft >= WANT_NOFILE,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Some(Cmd::Backend) => backend::run(),
        None => bench(cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("frontdoor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Effective parameters after --smoke and the fd limit.
#[derive(Debug, Clone)]
struct Params {
    runs: usize,
    duration: Duration,
    streams: Vec<usize>,
    concurrency: usize,
    echo_count: usize,
    idle_conns: usize,
    idle_note: Option<String>,
    settle: Duration,
}

fn bench(cli: Cli) -> Result<()> {
    let nofile = raise_nofile();
    let mut p = Params {
        runs: cli.runs.max(1),
        duration: Duration::from_secs_f64(cli.duration.max(0.05)),
        streams: cli.streams.clone(),
        concurrency: cli.concurrency.max(1),
        echo_count: cli.echo_count.max(1),
        idle_conns: cli.idle_conns,
        idle_note: None,
        settle: Duration::from_millis(500),
    };
    if cli.smoke {
        p.runs = 1;
        p.duration = Duration::from_millis(300);
        p.echo_count = 500;
        p.idle_conns = 200;
        p.settle = Duration::from_millis(100);
    }
    if !nofile.raised {
        let cap = usize::try_from(nofile.soft.saturating_sub(1000) / 2).unwrap_or(usize::MAX);
        if p.idle_conns > cap {
            p.idle_note = Some(format!(
                "RLIMIT_NOFILE could not be raised to {WANT_NOFILE} (limit {}/{} soft/hard, not permitted), \
                 so N = (limit − 1000) / 2 = {cap} instead of {}",
                nofile.soft, nofile.hard, p.idle_conns
            ));
            p.idle_conns = cap;
        }
    }
    let mut targets = Vec::new();
    for t in &cli.targets {
        if !targets.contains(t) {
            targets.push(*t);
        }
    }
    if targets.is_empty() {
        bail!("no targets");
    }
    if cli.smoke && cli.record {
        bail!("--record is for full runs, not --smoke");
    }
    check_tools(&targets, &cli.bridge)?;

    let dir = TempDir::new("bamf-frontdoor")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    let (backend, backend_addr) = spawn_backend()?;
    let env = Env {
        bridge: cli.bridge.clone(),
        backend: backend_addr,
        dir: dir.0.clone(),
        nofile: nofile.soft,
    };
    let header = header(&cli, &p, &env, &targets);
    eprintln!(
        "frontdoor: {} run(s) over {}; backend on {backend_addr}; progress on stderr, report on stdout",
        p.runs,
        targets
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let mut results = Results::default();
    let mut failures: Vec<String> = Vec::new();
    let mut failed: Vec<Target> = Vec::new();
    let outcome: Result<()> = rt.block_on(async {
        let work = async {
            for run in 1..=p.runs {
                for &t in &targets {
                    if failed.contains(&t) {
                        continue;
                    }
                    eprintln!("run {run}/{}: {t}", p.runs);
                    if let Err(e) = run_target(t, &env, &p, &cli.workloads, &mut results).await {
                        eprintln!("  FAILED: {e:#}");
                        failures.push(format!("run {run}, {t}: {e:#}"));
                        failed.push(t);
                    }
                }
            }
        };
        tokio::select! {
            () = work => Ok(()),
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        }
    });
    drop(backend);
    outcome?;

    let mut section = header;
    section.push_str(&report::tables(&results, &targets));
    if !failures.is_empty() {
        section.push_str("### Failures\n\n");
        for f in &failures {
            section.push_str(&format!("- {}\n", f.replace('\n', " ")));
        }
        section.push('\n');
    }
    println!("{section}");
    if !failures.is_empty() {
        bail!(
            "{} target(s) failed: {}",
            failed.len(),
            failed
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if cli.record {
        record(&cli.results, &section)?;
        eprintln!("appended to {}", cli.results.display());
    }
    Ok(())
}

fn check_tools(targets: &[Target], bridge: &Path) -> Result<()> {
    for t in targets {
        match t {
            Target::Bamf if !bridge.is_file() => bail!(
                "bamf target: {} not found (build it with `cargo build --release -p bamf-bridge`, \
                 pass --bridge PATH, or leave bamf out with --targets)",
                bridge.display()
            ),
            Target::Haproxy | Target::HaproxySplice => {
                procs::command_line("haproxy", &["-v"]).context("haproxy not installed")?;
            }
            Target::Nginx => {
                procs::command_line("nginx", &["-v"]).context("nginx not installed")?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Re-executes this binary as the backend, in its own process, and reads its port.
fn spawn_backend() -> Result<(BackendProc, SocketAddr)> {
    let exe = std::env::current_exe().context("own executable")?;
    let mut child = Command::new(exe)
        .arg("backend")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawn backend")?;
    let stdin = child.stdin.take().context("backend stdin")?;
    let stdout = child.stdout.take().context("backend stdout")?;
    let guard = Guard::from_child("backend", child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("read backend port")?;
    let port: u16 = line
        .trim()
        .parse()
        .with_context(|| format!("backend printed {line:?}, not a port"))?;
    Ok((
        BackendProc {
            _stdin: stdin,
            _guard: guard,
        },
        ([127, 0, 0, 1], port).into(),
    ))
}

#[derive(Debug)]
struct BackendProc {
    _stdin: std::process::ChildStdin,
    _guard: Guard,
}

async fn run_target(
    t: Target,
    env: &Env,
    p: &Params,
    workloads: &[Workload],
    results: &mut Results,
) -> Result<()> {
    let mut running = targets::start(t, env).await?;
    let addr = running.addr;
    let measure = running.measure;
    let tck = procs::clk_tck();
    let sample = || -> Result<Option<procs::Sample>> { measure.map(Measure::sample).transpose() };

    // Warm-up: a few connections so one-time initialisation is not counted.
    let warm = workloads::open_idle(addr, 32).await.context("warm-up")?;
    workloads::close_idle(warm).await.context("warm-up")?;
    tokio::time::sleep(p.settle / 5).await;

    if workloads.contains(&Workload::Idle) && measure.is_some() {
        let before = sample()?;
        let conns = workloads::open_idle(addr, p.idle_conns)
            .await
            .context("idle connections")?;
        tokio::time::sleep(p.settle).await;
        let loaded = sample()?;
        running.check_alive()?;
        workloads::close_idle(conns)
            .await
            .context("closing idle connections")?;
        if let (Some(b), Some(l)) = (before, loaded) {
            let delta = l.rss_kib.saturating_sub(b.rss_kib) as f64 * 1024.0;
            let per = delta / p.idle_conns.max(1) as f64;
            results.add(t, "idle_per_conn", per);
            results.add(t, "idle_base", b.rss_kib as f64 / 1024.0);
            results.add(t, "idle_loaded", l.rss_kib as f64 / 1024.0);
            eprintln!(
                "  idle {}: {:.0} B/conn (RSS {:.1} → {:.1} MiB)",
                p.idle_conns,
                per,
                b.rss_kib as f64 / 1024.0,
                l.rss_kib as f64 / 1024.0
            );
        }
        // Let the proxy tear the connections down before the next workload.
        tokio::time::sleep(p.settle).await;
    }

    if workloads.contains(&Workload::Throughput) {
        for &streams in &p.streams {
            let before = sample()?;
            let r = workloads::throughput(addr, streams, p.duration)
                .await
                .with_context(|| format!("throughput, {streams} streams"))?;
            let after = sample()?;
            let key = match streams {
                1 => "tput1",
                8 => "tput8",
                _ => {
                    eprintln!(
                        "  {streams} streams: {:.2} Gbit/s (not tabulated)",
                        r.gbit_per_s()
                    );
                    continue;
                }
            };
            results.add(t, key, r.gbit_per_s());
            let mut line = format!("  throughput {streams}: {:.2} Gbit/s", r.gbit_per_s());
            if let (Some(b), Some(a)) = (before, after) {
                let cpu = a.cpu_ticks.saturating_sub(b.cpu_ticks) as f64 / tck;
                let per_gb = cpu / (r.bytes as f64 / 1e9);
                results.add(t, if streams == 1 { "cpu_gb1" } else { "cpu_gb8" }, per_gb);
                line.push_str(&format!(", proxy {per_gb:.3} CPU s/GB"));
            }
            eprintln!("{line}");
        }
        running.check_alive()?;
    }

    if workloads.contains(&Workload::Connrate) {
        let before = sample()?;
        let r = workloads::conn_rate(addr, p.concurrency, p.duration)
            .await
            .context("connection rate")?;
        let after = sample()?;
        results.add(t, "rate", r.per_sec);
        results.add(t, "rate_p50", r.p50_us);
        results.add(t, "rate_p99", r.p99_us);
        let mut line = format!(
            "  conn rate: {:.0}/s ({} conns), p50 {:.0} µs, p99 {:.0} µs",
            r.per_sec, r.conns, r.p50_us, r.p99_us
        );
        if let (Some(b), Some(a)) = (before, after) {
            let cpu = a.cpu_ticks.saturating_sub(b.cpu_ticks) as f64 / tck;
            let per_k = cpu / (r.conns as f64 / 1000.0);
            results.add(t, "cpu_kconn", per_k);
            line.push_str(&format!(", proxy {per_k:.3} CPU s/1000 conns"));
        }
        eprintln!("{line}");
        running.check_alive()?;
    }

    if workloads.contains(&Workload::Echo) {
        let r = workloads::echo(addr, p.echo_count).await.context("echo")?;
        results.add(t, "echo_p50", r.p50_us);
        results.add(t, "echo_p99", r.p99_us);
        eprintln!("  echo: p50 {:.1} µs, p99 {:.1} µs", r.p50_us, r.p99_us);
        running.check_alive()?;
    }

    if let Some(s) = sample()? {
        results.add(t, "rss_end", s.rss_kib as f64 / 1024.0);
        results.add(t, "hwm_end", s.hwm_kib as f64 / 1024.0);
    }
    running.check_alive()?;
    Ok(())
}

fn git_commit() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let head = procs::command_line("git", &["-C", dir, "rev-parse", "--short", "HEAD"])
        .filter(|s| s.chars().all(|c| c.is_ascii_hexdigit()));
    match head {
        Some(h) => {
            let dirty = Command::new("git")
                .args(["-C", dir, "status", "--porcelain", "--untracked-files=no"])
                .output()
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(false);
            if dirty {
                format!("{h} (with uncommitted changes)")
            } else {
                h
            }
        }
        None => "uncommitted".to_owned(),
    }
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    format!(
        "{model}, {cpus} CPUs, Linux {kernel}, {:.1} GiB RAM",
        mem_kib as f64 / 1024.0 / 1024.0
    )
}

fn header(cli: &Cli, p: &Params, env: &Env, targets: &[Target]) -> String {
    let mut tools = Vec::new();
    if targets.contains(&Target::Bamf) {
        tools.push(format!("bamf-bridge `{}`", env.bridge.display()));
    }
    if targets
        .iter()
        .any(|t| matches!(t, Target::Haproxy | Target::HaproxySplice))
    {
        tools.push(procs::command_line("haproxy", &["-v"]).unwrap_or_default());
    }
    if targets.contains(&Target::Nginx) {
        tools.push(procs::command_line("nginx", &["-v"]).unwrap_or_default());
    }
    let streams: Vec<String> = p.streams.iter().map(usize::to_string).collect();
    let mode = if cli.smoke { " (smoke)" } else { "" };
    let mut h = format!(
        "## Front door{mode}, {} UTC\n\n\
         - commit: {}\n\
         - machine: {}\n\
         - tools: {}\n\
         - targets: {}\n\
         - parameters: {} run(s), interleaved (each run visits every target); \
         {:.1} s per throughput and connection-rate measurement; streams {} with 64 KiB writes; \
         connection-rate concurrency {}; echo {} × 64 B; idle connections N = {}; \
         HAProxy maxconn {}, nginx worker_rlimit_nofile {}\n",
        report::utc_now(),
        git_commit(),
        machine(),
        tools.join("; "),
        targets
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", "),
        p.runs,
        p.duration.as_secs_f64(),
        streams.join(" and "),
        p.concurrency,
        p.echo_count,
        p.idle_conns,
        targets::haproxy_maxconn(env.nofile),
        env.nofile.min(100_000),
    );
    if let Some(note) = &p.idle_note {
        h.push_str(&format!("- note: {note}\n"));
    }
    h.push_str(
        "- client, backend (a separate process) and proxy share this machine, all on 127.0.0.1; \
         the backend is plain TCP, so no TLS crypto is measured.\n\
         - each table: median over runs and range (min–max); the last column is bamf's median ÷ \
         the target's median. Throughput and connection rate: higher is better, so a ratio above \
         1 favours bamf. Latency, CPU and memory: lower is better, so a ratio below 1 favours bamf.\n\
         - proxy CPU and memory are read from /proc: the proxy process (bamf, HAProxy) or the sum \
         of nginx's worker processes.\n\n",
    );
    h
}

fn record(path: &Path, section: &str) -> Result<()> {
    let exists = path.exists();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    if !exists {
        f.write_all(
            b"# Front-door benchmark results\n\n\
              Appended by `benches/frontdoor.sh --record` (see benches/README.md): BAMF's SNI \
              passthrough against HAProxy, HAProxy with splicing, nginx `ssl_preread` and a \
              direct connection, on one machine over loopback. Newest runs at the bottom.\n\n",
        )?;
    }
    f.write_all(section.as_bytes())?;
    f.write_all(b"\n")?;
    Ok(())
}
