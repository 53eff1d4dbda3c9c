//! BAMF end-to-end harness: real processes and real clients on loopback.
//!
//! Every process binds `127.0.0.1:0` and reports its port: the bridge in its JSON log
//! (`"message":"listening"`), `openssl s_server` on stdout (`ACCEPT 127.0.0.1:PORT`). Nothing
//! waits on a sleep for readiness, and every wait has a deadline.
//!
//! # Layout
//!
//! - [`Bridge`]: a `bamf-bridge` process; its ports, metrics, RSS, logs and signals.
//! - [`Api`]: a `bamf-api` process on `127.0.0.1:0`.
//! - [`OpensslServer`]: an `openssl s_server` with a throwaway certificate.
//! - [`Tap`]: an in-process TCP forwarder that records both directions byte for byte.
//! - [`Recorder`]: an in-process TCP backend that records what it receives.
//! - [`fixture`]: captured ClientHellos from `proto/testdata`.
//! - [`User`]: a signed-in user calling the API, opening sessions and carrying them over the
//!   resumable stream ([`Carried`]); [`Balancer`]: a TCP load balancer in front of bridges;
//!   [`redis_db`]: a Redis database of one's own; [`ConnectProxy`]: an HTTP proxy that
//!   records the tunnels it is asked for.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long any process gets to come up.
pub const START_DEADLINE: Duration = Duration::from_secs(20);

/// The workspace's target directory for the profile these tests were built with.
fn profile_dir() -> PathBuf {
    // Test binaries live in target/<profile>/deps/, benchmark binaries in target/<profile>/.
    let exe = std::env::current_exe().expect("current executable");
    let dir = exe.parent().expect("the executable has a directory");
    if dir.ends_with("deps") {
        dir.parent()
            .expect("deps sits in target/<profile>")
            .to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of a workspace binary, built by `cargo build --workspace --bins` first.
///
/// # Panics
///
/// When the binary is missing: the message says how to build it.
pub fn binary(name: &str) -> PathBuf {
    let path = profile_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` before these tests \
         (scripts/test does)",
        path.display()
    );
    path
}

/// Workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// A captured ClientHello from `proto/testdata/client_hello/NAME.bin`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = workspace()
        .join("proto/testdata/client_hello")
        .join(format!("{name}.bin"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A scratch directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a fresh directory under the system temp dir.
    pub fn new(tag: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("bamf-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `bamf-bridge`.
#[derive(Debug)]
pub struct Bridge {
    child: Child,
    /// Public front door.
    pub front: SocketAddr,
    /// Peer port, when configured.
    pub peer: Option<SocketAddr>,
    /// Admin port (metrics, health, ready); always enabled by the harness.
    pub metrics: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

/// A child process that logs JSON lines on stderr: its logs are collected continuously (a
/// full pipe would block it), and the addresses of its `"listening"` lines are reported.
struct Logged {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    listening: HashMap<String, SocketAddr>,
}

impl Logged {
    /// Spawns `cmd` and waits until it has reported every listener in `wanted`.
    fn spawn(mut cmd: Command, wanted: &[&str]) -> anyhow::Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        let stderr = child.stderr.take().context("child stderr")?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["fields"]["message"] == "listening"
                {
                    let which = v["fields"]["listener"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    let addr = v["fields"]["addr"].as_str().and_then(|a| a.parse().ok());
                    let _ = tx.send((which, addr));
                }
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
        let mut listening = HashMap::new();
        let deadline = Instant::now() + START_DEADLINE;
        while !wanted.iter().all(|w| listening.contains_key(*w)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((which, Some(addr))) => {
                    listening.insert(which, addr);
                }
                Ok((_, None)) => {}
                Err(_) => {
                    let _ = child.kill();
                    let log = logs.lock().map(|l| l.join("\n")).unwrap_or_default();
                    bail!("process did not report its listeners {wanted:?}:\n{log}");
                }
            }
        }
        Ok(Self {
            child,
            logs,
            listening,
        })
    }
}

impl Bridge {
    /// Starts a bridge with `args` (plus `--listen 127.0.0.1:0 --metrics 127.0.0.1:0` unless
    /// given) and waits until it reports its listeners.
    ///
    /// # Errors
    ///
    /// The process exits or does not report its ports within [`START_DEADLINE`]; the error
    /// carries its log.
    pub fn start(args: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_env(args, &[])
    }

    /// [`Bridge::start`] with extra environment variables (e.g. `BAMF_JOIN_TOKEN`).
    ///
    /// # Errors
    ///
    /// As [`Bridge::start`].
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut cmd = Command::new(binary("bamf-bridge"));
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(["--metrics", "127.0.0.1:0", "--log-format", "json"])
            .args(args)
            .env("BAMF_LOG", "info")
            .env_remove("BAMF_JOIN_TOKEN")
            .envs(env.iter().copied());
        let mut wanted = vec!["front", "metrics"];
        if args.contains(&"--peer-listen") {
            wanted.push("peer");
        }
        let Logged {
            child,
            logs,
            listening,
        } = Logged::spawn(cmd, &wanted)?;
        Ok(Self {
            child,
            front: listening["front"],
            peer: listening.get("peer").copied(),
            metrics: listening["metrics"],
            logs,
        })
    }

    /// Starts bridge `ordinal` with the tunnel relay: it joins `api` (through its own address,
    /// as `localhost`) with the bridge join token `token`, trusts `ca_file`, keeps its key in
    /// `data_dir`, heartbeats every second; `extra` adds flags.
    ///
    /// # Errors
    ///
    /// As [`Bridge::start`].
    pub fn start_tunnel(
        ordinal: u32,
        tunnel_domain: &str,
        api: &Api,
        ca_file: &Path,
        data_dir: &Path,
        token: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let ordinal = ordinal.to_string();
        let url = format!("https://localhost:{}", api.addr.port());
        let api_addr = api.addr.to_string();
        let (ca_file, data_dir) = (
            ca_file.display().to_string(),
            data_dir.display().to_string(),
        );
        let mut args = vec![
            "--ordinal",
            &ordinal,
            "--tunnel-domain",
            tunnel_domain,
            "--api-url",
            &url,
            "--api-address",
            &api_addr,
            "--api-ca-file",
            &ca_file,
            "--data-dir",
            &data_dir,
            "--heartbeat-interval",
            "1s",
        ];
        args.extend_from_slice(extra);
        Self::start_with_env(&args, &[("BAMF_JOIN_TOKEN", token)])
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Log lines so far (JSON).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Resident set size in KiB, from `/proc`.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// Scrapes `/metrics` with `curl` and returns the sample lines.
    pub fn scrape(&self) -> String {
        http_get(self.metrics, "/metrics").1
    }

    /// The value of one sample: `name{labels}` exactly as Prometheus prints it, e.g.
    /// `bamf_frontdoor_connections_total{listener="front",route="none",outcome="not_tls"}`.
    /// Absent samples are 0.
    pub fn metric(&self, sample: &str) -> f64 {
        parse_sample(&self.scrape(), sample)
    }

    /// Sends a signal (`TERM`, `INT`, `KILL`) with the system `kill`.
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls the metric until `pred` holds, up to `limit`; returns the last value.
    pub fn wait_metric(&self, sample: &str, limit: Duration, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.metric(sample);
            if pred(v) || Instant::now() >= deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Value of `sample` in a Prometheus text exposition; absent is 0.
pub fn parse_sample(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// `curl -s -w '%{http_code}' http://ADDR/PATH` → (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", "-w", "\n%{http_code}"])
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// A running `bamf-api`.
#[derive(Debug)]
pub struct Api {
    child: Child,
    /// Its HTTPS address.
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Api {
    /// Starts `bamf-api --listen 127.0.0.1:0 <args…>` and waits until it listens.
    ///
    /// # Errors
    ///
    /// The process exits or does not report its address in time; the error carries its log.
    pub fn start(args: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_env(args, &[])
    }

    /// [`Api::start`] with extra environment variables.
    ///
    /// # Errors
    ///
    /// As [`Api::start`].
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::spawn(Command::new(binary("bamf-api")), args, env)
    }

    /// [`Api::start_with_env`] under a process umask (octal, e.g. `"022"`), as a service
    /// started directly or in a container would run.
    ///
    /// # Errors
    ///
    /// As [`Api::start`].
    pub fn start_with_umask(
        umask: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &format!("umask {umask} && exec \"$0\" \"$@\"")])
            .arg(binary("bamf-api"));
        Self::spawn(cmd, args, env)
    }

    fn spawn(mut cmd: Command, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(["--log-format", "json"])
            .args(args)
            .env("BAMF_LOG", "info")
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env_remove("BAMF_CA_ENCRYPTION_KEY")
            .env_remove("BAMF_CA_SEALING_KEY_FILE")
            .envs(env.iter().copied());
        let Logged {
            child,
            logs,
            listening,
        } = Logged::spawn(cmd, &["api"])?;
        Ok(Self {
            child,
            addr: listening["api"],
            logs,
        })
    }

    /// Log lines so far (JSON).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fetches the CA certificate the API serves (trust on first use, as an operator or
    /// `bamf login` would) into `dir/ca.pem` and returns that path.
    ///
    /// # Panics
    ///
    /// When `curl` fails or the answer is not a PEM certificate.
    pub fn fetch_ca(&self, dir: &Path) -> PathBuf {
        let out = Command::new("curl")
            .args(["-sk", "--max-time", "10"])
            .arg(format!("https://127.0.0.1:{}/api/v1/ca", self.addr.port()))
            .output()
            .expect("curl runs");
        let pem = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        let path = dir.join("ca.pem");
        std::fs::write(&path, pem).expect("writing ca.pem");
        path
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The CA a test API keeps in its store at `url`, opened as an operator tool would: with
/// the sealing key file the API generated beside a SQLite database.
///
/// # Errors
///
/// The store cannot be reached or the CA not opened.
pub async fn stored_ca(url: &str) -> anyhow::Result<bamf_api::ca::Authority> {
    let store = bamf_api::store::Store::connect(url).await?;
    let setup = bamf_api::CaSetup {
        sealing_file: bamf_api::store::sqlite_file(url)
            .map(|db| bamf_api::seal::KeyFile(db.with_file_name("ca-sealing.key"))),
        ..Default::default()
    };
    Ok(bamf_api::load_or_create_ca(&store, "unused", &setup).await?)
}

/// A running `openssl s_server` with a throwaway self-signed certificate.
#[derive(Debug)]
pub struct OpensslServer {
    child: Child,
    /// Where it accepts.
    pub addr: SocketAddr,
    _dir: TempDir,
}

impl OpensslServer {
    /// Starts `openssl s_server -accept 127.0.0.1:0 <mode…>`, e.g. `&["-www"]`.
    ///
    /// # Errors
    ///
    /// openssl is missing, fails, or does not report its port in time.
    pub fn start(mode: &[&str]) -> anyhow::Result<Self> {
        let dir = TempDir::new("s_server");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let status = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .args(["-days", "1", "-subj", "/CN=app.example.test"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running openssl req")?;
        anyhow::ensure!(status.success(), "openssl req failed");
        let mut child = Command::new("openssl")
            .args(["s_server", "-accept", "127.0.0.1:0", "-cert"])
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .args(mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning openssl s_server")?;
        let stdout = child.stdout.take().context("s_server stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("ACCEPT ") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(START_DEADLINE)
            .context("s_server did not report ACCEPT")?
            .parse()
            .context("s_server ACCEPT address")?;
        Ok(Self {
            child,
            addr,
            _dir: dir,
        })
    }
}

impl Drop for OpensslServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes seen by a [`Tap`] on one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// From the connecting side to the target.
    pub up: Vec<u8>,
    /// From the target back.
    pub down: Vec<u8>,
}

/// An in-process TCP forwarder on `127.0.0.1:0` that records every byte of every connection.
#[derive(Debug)]
pub struct Tap {
    /// Where it listens.
    pub addr: SocketAddr,
    recorded: Arc<Mutex<Vec<Arc<Mutex<Recorded>>>>>,
}

impl Tap {
    /// Starts a tap forwarding to `target`.
    ///
    /// # Errors
    ///
    /// Binding fails.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let recorded: Arc<Mutex<Vec<Arc<Mutex<Recorded>>>>> = Arc::default();
        let all = recorded.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                let rec = Arc::new(Mutex::new(Recorded::default()));
                if let Ok(mut a) = all.lock() {
                    a.push(rec.clone());
                }
                let (ir, iw) = inbound.into_split();
                let (or, ow) = outbound.into_split();
                let r1 = rec.clone();
                tokio::spawn(copy_recording(ir, ow, move |b| {
                    if let Ok(mut r) = r1.lock() {
                        r.up.extend_from_slice(b);
                    }
                }));
                tokio::spawn(copy_recording(or, iw, move |b| {
                    if let Ok(mut r) = rec.lock() {
                        r.down.extend_from_slice(b);
                    }
                }));
            }
        });
        Ok(Self { addr, recorded })
    }

    /// What each connection carried so far, in accept order.
    pub fn recorded(&self) -> Vec<Recorded> {
        let all = self.recorded.lock().map(|a| a.clone()).unwrap_or_default();
        all.iter()
            .map(|r| r.lock().map(|r| r.clone()).unwrap_or_default())
            .collect()
    }
}

async fn copy_recording(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut record: impl FnMut(&[u8]),
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                record(&buf[..n]);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

/// An in-process TCP backend that records each connection's bytes until the peer closes,
/// then closes too. Optionally answers with a fixed reply right after accepting.
#[derive(Debug)]
pub struct Recorder {
    /// Where it listens.
    pub addr: SocketAddr,
    rx: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
}

impl Recorder {
    /// Starts a recorder that sends `greeting` to every new connection.
    ///
    /// # Errors
    ///
    /// Binding fails.
    pub async fn start(greeting: &'static [u8]) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = s.write_all(greeting).await;
                    let mut all = Vec::new();
                    let _ = s.read_to_end(&mut all).await;
                    let _ = tx.send(all);
                });
            }
        });
        Ok(Self { addr, rx })
    }

    /// The bytes of the next connection to close, waiting up to `limit`.
    pub async fn next(&mut self, limit: Duration) -> Option<Vec<u8>> {
        tokio::time::timeout(limit, self.rx.recv())
            .await
            .ok()
            .flatten()
    }
}

/// Reads until EOF or `limit`; returns what arrived and whether EOF was seen.
pub async fn read_until_close(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (got, closed)
}

/// A running `bamf-agent`, started with a configuration file and extra environment (for
/// example `BAMF_JOIN_TOKEN`). Its JSON log is collected continuously; killed on drop.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    /// Its health listener, when it was started with [`Agent::start`].
    pub health: Option<SocketAddr>,
    logs: Arc<Mutex<Vec<String>>>,
    /// Set when stderr reached end of file: the log is complete.
    eof: Arc<std::sync::atomic::AtomicBool>,
}

impl Agent {
    /// Starts `bamf-agent --config <config>` with `env` and waits until it reports its
    /// health listener (the configuration must set `health_listen`, e.g. `127.0.0.1:0`).
    ///
    /// # Errors
    ///
    /// The process exits or does not report the listener in time; the error carries its log.
    pub fn start(config: &Path, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut agent = Self::spawn(config, env)?;
        let line = agent.wait_message("listening", START_DEADLINE)?;
        agent.health = line["fields"]["addr"].as_str().and_then(|a| a.parse().ok());
        anyhow::ensure!(agent.health.is_some(), "no health address in {line}");
        Ok(agent)
    }

    /// Starts `bamf-agent --config <config>` with `env` without waiting for anything.
    ///
    /// # Errors
    ///
    /// The process cannot be spawned.
    pub fn spawn(config: &Path, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut cmd = Command::new(binary("bamf-agent"));
        cmd.arg("--config")
            .arg(config)
            .args(["--log-format", "json"])
            .env("BAMF_LOG", "info")
            .env_remove("BAMF_JOIN_TOKEN")
            .env_remove("BAMF_AGENT_CONFIG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        let stderr = child.stderr.take().context("child stderr")?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let eof = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sink, done) = (logs.clone(), eof.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
            done.store(true, std::sync::atomic::Ordering::Release);
        });
        Ok(Self {
            child,
            health: None,
            logs,
            eof,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Log lines so far (JSON).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Log lines so far whose `fields.message` is `message`, parsed.
    pub fn messages(&self, message: &str) -> Vec<serde_json::Value> {
        self.logs()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["fields"]["message"] == message)
            .collect()
    }

    /// Waits up to `limit` for a log line whose `fields.message` is `message`; returns the
    /// first such line, parsed.
    ///
    /// # Errors
    ///
    /// No such line in time, or the process ended its log first; the error carries the log.
    pub fn wait_message(
        &mut self,
        message: &str,
        limit: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        let deadline = Instant::now() + limit;
        loop {
            // Read the end-of-log flag first: a line logged before it is then seen below.
            let ended = self.eof.load(std::sync::atomic::Ordering::Acquire);
            if let Some(v) = self.messages(message).into_iter().next() {
                return Ok(v);
            }
            if ended || Instant::now() >= deadline {
                let exited = self.child.try_wait().ok().flatten();
                bail!(
                    "no log line {message:?} (exit: {exited:?}):\n{}",
                    self.logs().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (`TERM`, `INT`, `KILL`) with the system `kill`.
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits up to `limit` for the process to exit and its log to end.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait()
                && self.eof.load(std::sync::atomic::Ordering::Acquire)
            {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh schema in the machine's PostgreSQL, dropped again when this goes out of scope.
#[derive(Debug)]
pub struct PgSchema {
    admin_url: String,
    /// The schema's name.
    pub schema: String,
    /// URL whose connections use the schema.
    pub url: String,
}

impl PgSchema {
    /// Creates `bamf_<tag>_<pid>` in the PostgreSQL at `DATABASE_URL` (default: the
    /// machine's, `postgresql://postgres@127.0.0.1:5432/test`).
    ///
    /// # Panics
    ///
    /// PostgreSQL is unreachable: never a silent skip.
    pub fn new(tag: &str) -> Self {
        let admin_url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".into());
        let schema = format!("bamf_{tag}_{}", std::process::id());
        let this = Self {
            url: format!(
                "{admin_url}{}options=-c%20search_path%3D{schema}",
                if admin_url.contains('?') { '&' } else { '?' }
            ),
            admin_url,
            schema,
        };
        this.psql(&format!("CREATE SCHEMA {}", this.schema));
        this
    }

    /// Runs `sql` with `psql` as the administrator; returns its unaligned output.
    ///
    /// # Panics
    ///
    /// `psql` fails.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .arg(&self.admin_url)
            .args(["-qAtc", sql])
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .arg(&self.admin_url)
            .args(["-qAtc", &format!("DROP SCHEMA {} CASCADE", self.schema)])
            .output();
    }
}

/// Resident set size of process `pid` in KiB, from `/proc` (0 when it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A TCP echo server on loopback (threads, so any test can use it): every byte back, and a
/// close for a close.
///
/// # Panics
///
/// No loopback port can be bound.
pub fn echo_server() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    let addr = listener.local_addr().expect("its address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || {
                let Ok(mut reader) = stream.try_clone() else {
                    return;
                };
                let mut writer = stream;
                let _ = std::io::copy(&mut reader, &mut writer);
                let _ = writer.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

/// A TCP load balancer on loopback, like the L4 load balancer in front of a bridge fleet:
/// each connection goes to the first of its backends that accepts, starting from the next
/// one in turn, so that a dead bridge is skipped. Backends can be added while it runs. It
/// runs on the caller's tokio runtime.
#[derive(Debug, Clone)]
pub struct Balancer {
    /// Where it listens.
    pub addr: SocketAddr,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Balancer {
    /// A balancer over `backends`.
    ///
    /// # Panics
    ///
    /// No loopback port can be bound, or there is no tokio runtime.
    pub fn start(backends: Vec<SocketAddr>) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        let addr = listener.local_addr().expect("its address");
        listener.set_nonblocking(true).expect("non-blocking");
        let listener = TcpListener::from_std(listener).expect("a tokio runtime");
        let backends = Arc::new(Mutex::new(backends));
        let all = backends.clone();
        tokio::spawn(async move {
            let mut turn = 0usize;
            while let Ok((inbound, _)) = listener.accept().await {
                turn = turn.wrapping_add(1);
                let backends = all.lock().map(|b| b.clone()).unwrap_or_default();
                tokio::spawn(forward(inbound, backends, turn));
            }
        });
        Self { addr, backends }
    }

    /// One more backend.
    pub fn add(&self, backend: SocketAddr) {
        if let Ok(mut b) = self.backends.lock() {
            b.push(backend);
        }
    }
}

async fn forward(mut inbound: TcpStream, backends: Vec<SocketAddr>, start: usize) {
    for i in 0..backends.len() {
        let to = backends[(start + i) % backends.len()];
        let connect = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(to));
        if let Ok(Ok(mut outbound)) = connect.await {
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            return;
        }
    }
}

/// A Redis database of its own, emptied (presence keys of other tests' bridges must not mix
/// in): its URL.
///
/// # Panics
///
/// Redis does not answer at 127.0.0.1:6379.
pub fn redis_db(db: u8) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect("127.0.0.1:6379").expect("Redis at 127.0.0.1:6379");
    s.write_all(format!("SELECT {db}\r\nFLUSHDB\r\n").as_bytes())
        .expect("writing to Redis");
    let mut answer = [0u8; 10];
    s.read_exact(&mut answer).expect("reading from Redis");
    assert_eq!(&answer, b"+OK\r\n+OK\r\n");
    format!("redis://127.0.0.1:6379/{db}")
}

/// A session as an application sees it: one end of an in-memory pipe whose other end a
/// task carries over the resumable stream, attaching again through the API (as the `bamf`
/// CLI does) when the path breaks.
#[derive(Debug)]
pub struct Carried {
    /// The application's end.
    pub app: tokio::io::DuplexStream,
    /// How the stream ended, once it did.
    pub report: tokio::task::JoinHandle<bamf_client::resume::Report>,
}

/// Minimal JSON client for the API as a user.
pub struct User {
    /// The API client.
    pub api: bamf_client::https::Api,
    /// The API token.
    pub token: String,
    /// The user certificate from the login (PEM).
    pub certificate: String,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User").finish_non_exhaustive()
    }
}

#[allow(clippy::unwrap_used, clippy::missing_panics_doc)] // a test helper: a failure is a failed test
impl User {
    /// Signs in as `user` directly at the API.
    pub async fn login(api: &Api, ca_pem: &str, user: &str, password: &str) -> Self {
        let tls = bamf_client::tls_config(ca_pem, None, &[b"http/1.1"]).unwrap();
        let client =
            bamf_client::https::Api::new(&format!("https://localhost:{}", api.addr.port()), tls)
                .unwrap()
                .connect_to(Some(api.addr));
        let (_, csr) = bamf_client::identity::key_and_csr().unwrap();
        let body = serde_json::json!({"user": user, "password": password, "csr": csr});
        let answer: serde_json::Value = client
            .call(http::Method::POST, "/api/v1/auth/login", Some(&body), None)
            .await
            .unwrap();
        Self {
            api: client,
            token: answer["token"].as_str().unwrap().to_owned(),
            certificate: answer["certificate"].as_str().unwrap().to_owned(),
        }
    }

    /// Calls the API with the token.
    ///
    /// # Errors
    ///
    /// What the API answered.
    pub async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, bamf_client::https::HttpsError> {
        self.api
            .call(method, path, body.as_ref(), Some(&self.token))
            .await
    }

    /// Opens session `id` (from [`User::connect`]) through bridge `ordinal` (named under
    /// the tunnel domain `domain`) entering at `via`, and carries it for an
    /// application over the resumable stream.
    pub async fn open(
        &self,
        via: SocketAddr,
        domain: &str,
        ordinal: u32,
        id: &str,
        cert: &(String, String),
        ca_pem: &str,
    ) -> Carried {
        self.open_via(via, via, domain, ordinal, id, cert, ca_pem)
            .await
    }

    /// As [`User::open`], entering at `first` and, when attaching again, at `then`.
    #[allow(clippy::too_many_arguments)]
    pub async fn open_via(
        &self,
        first: SocketAddr,
        then: SocketAddr,
        domain: &str,
        ordinal: u32,
        id: &str,
        cert: &(String, String),
        ca_pem: &str,
    ) -> Carried {
        let via = first;
        let host = format!("{ordinal}.bridge.{domain}");
        let session = bamf_client::e2e::open(&host, 443, Some(via), ca_pem, &cert.0, &cert.1)
            .await
            .unwrap_or_else(|e| panic!("opening session {id}: {e}"));
        let (app, local) = tokio::io::duplex(64 * 1024);
        let (api, token, id, key) = (
            self.api.clone(),
            self.token.clone(),
            id.to_owned(),
            cert.1.clone(),
        );
        let report = tokio::spawn(async move {
            let reopen = bamf_client::e2e::Reopen {
                api: api.user(&token),
                session: id,
                key,
                via: Some(then),
                broken: Some(ordinal),
                on_retry: |_, _| {},
            };
            let settings = bamf_client::resume::Settings {
                resume_deadline: Duration::from_secs(20),
                ..bamf_client::resume::Settings::default()
            };
            bamf_client::resume::carry(local, session, reopen, &settings, std::future::pending())
                .await
        });
        Carried { app, report }
    }

    /// `/connect` for `resource`, expected to be refused: the refusal.
    pub async fn connect_refused(&self, resource: &str) -> bamf_client::https::HttpsError {
        let (_, csr) = bamf_client::identity::key_and_csr().unwrap();
        self.call(
            http::Method::POST,
            "/api/v1/connect",
            Some(serde_json::json!({"resource": resource, "csr": csr})),
        )
        .await
        .expect_err("connect was not refused")
    }

    /// `/connect` for `resource`: (session id, bridge ordinal, session certificate and key).
    /// While the agent is reconnecting its command stream (503), it tries again for 30 s.
    pub async fn connect(&self, resource: &str) -> (String, u32, (String, String)) {
        let (key, csr) = bamf_client::identity::key_and_csr().unwrap();
        let started = Instant::now();
        let answer = loop {
            match self
                .call(
                    http::Method::POST,
                    "/api/v1/connect",
                    Some(serde_json::json!({"resource": resource, "csr": csr})),
                )
                .await
            {
                Ok(answer) => break answer,
                Err(e)
                    if e.status().is_some_and(|s| s.as_u16() == 503)
                        && started.elapsed() < Duration::from_secs(30) =>
                {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => panic!("connect: {e}"),
            }
        };
        let host = answer["bridge_host"].as_str().unwrap();
        let ordinal = host.split('.').next().unwrap().parse().unwrap();
        (
            answer["session_id"].as_str().unwrap().to_owned(),
            ordinal,
            (answer["certificate"].as_str().unwrap().to_owned(), key),
        )
    }
}

/// A real OpenSSH server on loopback with a throwaway host key, accepting one user key.
#[derive(Debug)]
pub struct Sshd {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The private key the server accepts.
    pub user_key: PathBuf,
}

#[allow(clippy::unwrap_used)] // a test helper: a failure is a failed test
impl Sshd {
    /// Starts `sshd` with its files in `dir`.
    ///
    /// # Panics
    ///
    /// `sshd` or `ssh` is missing, or it does not start.
    pub fn start(dir: &Path) -> Self {
        let sshd = Path::new("/usr/sbin/sshd");
        let has_ssh = Command::new("ssh").arg("-V").output().is_ok();
        assert!(
            sshd.exists() && has_ssh,
            "these tests need /usr/sbin/sshd and ssh: scripts/test installs openssh-server \
             and openssh-client (apt-get install openssh-server openssh-client)"
        );
        let keygen = |path: &Path| {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(path)
                .status()
                .unwrap();
            assert!(status.success(), "ssh-keygen");
        };
        let (host_key, user_key) = (dir.join("ssh_host_key"), dir.join("user_key"));
        keygen(&host_key);
        keygen(&user_key);
        let authorized = dir.join("authorized_keys");
        std::fs::copy(dir.join("user_key.pub"), &authorized).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1:{port}\nHostKey {host}\nPidFile none\n\
                 AuthorizedKeysFile {auth}\nStrictModes no\nUsePAM no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\nPermitRootLogin prohibit-password\n\
                 Subsystem sftp internal-sftp\n",
                host = host_key.display(),
                auth = authorized.display(),
            ),
        )
        .unwrap();
        // Run as root, sshd wants its privilege-separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let log = std::fs::File::create(dir.join("sshd.log")).unwrap();
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(addr) {
                let mut banner = [0u8; 7];
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                if std::io::Read::read_exact(&mut s, &mut banner).is_ok() && &banner == b"SSH-2.0" {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not start:\n{}",
                std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            addr,
            user_key,
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP proxy on loopback that only tunnels (`CONNECT host:port`), like a corporate
/// egress proxy: it records each tunnel's target, answers 200 and relays bytes both ways
/// (threads, so any test can use it).
#[derive(Debug, Clone)]
pub struct ConnectProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    targets: Arc<Mutex<Vec<String>>>,
}

impl ConnectProxy {
    /// Starts the proxy.
    ///
    /// # Panics
    ///
    /// No loopback port can be bound.
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        let addr = listener.local_addr().expect("its address");
        let targets = Arc::new(Mutex::new(Vec::new()));
        let seen = targets.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let seen = seen.clone();
                std::thread::spawn(move || proxy_one(client, &seen));
            }
        });
        Self { addr, targets }
    }

    /// The `host:port` of every `CONNECT` so far, in order.
    pub fn targets(&self) -> Vec<String> {
        self.targets.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

/// One proxied connection: the `CONNECT` head (read byte by byte, at most 8 KiB, within
/// 10 s), the upstream connection, then bytes both ways until each side closes.
fn proxy_one(mut client: std::net::TcpStream, seen: &Mutex<Vec<String>>) {
    use std::io::{Read, Write};
    let _ = client.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 || client.read_exact(&mut byte).is_err() {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut words = head.split_whitespace();
    let (Some("CONNECT"), Some(target)) = (words.next(), words.next()) else {
        let _ = client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n");
        return;
    };
    if let Ok(mut t) = seen.lock() {
        t.push(target.to_owned());
    }
    let upstream = target
        .parse::<SocketAddr>()
        .ok()
        .and_then(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(5)).ok())
        .or_else(|| std::net::TcpStream::connect(target).ok());
    let Some(upstream) = upstream else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .is_err()
    {
        return;
    }
    let _ = client.set_read_timeout(None);
    let (Ok(mut client_in), Ok(mut upstream_out)) = (client.try_clone(), upstream.try_clone())
    else {
        return;
    };
    let (mut upstream_in, mut client_out) = (upstream, client);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_in, &mut upstream_out);
        let _ = upstream_out.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut upstream_in, &mut client_out);
    let _ = client_out.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

/// What a finished command said: its exit status and what it printed.
#[derive(Debug)]
pub struct Output {
    /// Exit status (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// Asserts the command succeeded.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "{self:#?}");
        self
    }

    /// Asserts the command failed with status `code`, saying `message`, without a panic.
    #[track_caller]
    pub fn fails_with(self, code: i32, message: &str) -> Self {
        assert_eq!(self.code, code, "{self:#?}");
        self.fails(message)
    }

    /// Asserts the command failed (any status), saying `message`, without a panic.
    #[track_caller]
    pub fn fails(self, message: &str) -> Self {
        assert_ne!(self.code, 0, "{self:#?}");
        assert!(
            self.stderr.contains(message),
            "wanted {message:?}: {self:#?}"
        );
        assert!(!self.stderr.contains("panicked"), "{self:#?}");
        self
    }
}

/// Runs `cmd` with `stdin` as its input, killing it (and failing the test) after `deadline`.
///
/// # Panics
///
/// When it cannot be spawned or does not finish in time.
pub fn run_command(cmd: &mut Command, stdin: &str, deadline: Duration) -> Output {
    use std::io::{Read, Write};
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let mut input = child.stdin.take().expect("stdin is piped");
    let stdin = stdin.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = r.read_to_string(&mut text);
            text
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("stdout is piped")));
    let err = reader(Box::new(child.stderr.take().expect("stderr is piped")));
    let until = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the command") {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish in {deadline:?}; stderr:\n{}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = writer.join();
    Output {
        code: status.code().unwrap_or(-1),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// The directory of the current `bamf` profile in `home` (`BAMF_HOME`).
///
/// # Panics
///
/// When no profile is current.
pub fn bamf_profile_dir(home: &Path) -> PathBuf {
    let name = std::fs::read_to_string(home.join("current-profile")).expect("a current profile");
    home.join("profiles").join(name.trim())
}
