//! Tunnels that outlive their bridge, end to end: `bamf-api` on PostgreSQL and Redis, bridges
//! forwarding to each other behind a TCP load balancer, a real agent, the `bamf` CLI and
//! in-process clients. Bridges are killed by pid.
#![allow(clippy::unwrap_used)] // a test binary: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bamf_tests::{Agent, Api, Balancer, Bridge, Carried, PgSchema, TempDir, User};
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BRIDGE_TOKEN: &str = "bamf_bridge-bootstrap-token-for-resume";
const PASSWORD: &str = "admin-password-1";
const DOMAIN: &str = "tunnel.localhost";

/// One fleet at a time: each is an API, up to three bridges and an agent on two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An API, bridges that forward to each other, a load balancer in front of their front
/// doors (as clients and the agent reach them), and one agent serving `resources`.
struct Fleet {
    dir: TempDir,
    _pg: PgSchema,
    api: Api,
    ca_file: PathBuf,
    ca_pem: String,
    peer_port: u16,
    bridges: Vec<Bridge>,
    lb: Balancer,
    admin: User,
    agent: Option<Agent>,
    /// The agent's `resume_timeout`.
    agent_resume_timeout: &'static str,
}

/// A port free on 127.0.0.0, .1 and .2, for the bridges' peer ports (`127.0.0.{n}:port`).
fn peer_port() -> u16 {
    loop {
        let first = std::net::TcpListener::bind("127.0.0.0:0").unwrap();
        let port = first.local_addr().unwrap().port();
        let others: Vec<_> = (1..3)
            .map(|n| std::net::TcpListener::bind(format!("127.0.0.{n}:{port}")))
            .collect();
        if others.iter().all(Result::is_ok) {
            return port;
        }
    }
}

impl Fleet {
    async fn start(tag: &str, redis: u8, bridges: u32) -> Self {
        let dir = TempDir::new(tag);
        let pg = PgSchema::new(&tag.replace('-', "_"));
        let redis = bamf_tests::redis_db(redis);
        let api = Api::start_with_env(
            &[
                "--database-url",
                &pg.url,
                "--redis-url",
                &redis,
                "--admin-password",
                PASSWORD,
                "--tunnel-domain",
                DOMAIN,
            ],
            // A front door on another port than 443, as the chart's `gateway.port` sets it.
            &[
                ("BAMF_BRIDGE_JOIN_TOKEN", BRIDGE_TOKEN),
                ("BAMF_TUNNEL_PORT", "8443"),
            ],
        )
        .unwrap();
        let ca_pem = bamf_tests::stored_ca(&pg.url)
            .await
            .unwrap()
            .cert_pem()
            .to_owned();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca_pem).unwrap();
        let admin = User::login(&api, &ca_pem, "admin", PASSWORD).await;
        let mut fleet = Self {
            dir,
            _pg: pg,
            api,
            ca_file,
            ca_pem,
            peer_port: peer_port(),
            bridges: Vec::new(),
            lb: Balancer::start(Vec::new()),
            admin,
            agent: None,
            agent_resume_timeout: "20s",
        };
        for _ in 0..bridges {
            fleet.add_bridge();
        }
        fleet
    }

    /// Starts the next bridge and puts it behind the load balancer.
    fn add_bridge(&mut self) {
        let n = u32::try_from(self.bridges.len()).unwrap();
        let (listen, to) = (
            format!("127.0.0.{n}:{}", self.peer_port),
            format!("127.0.0.{{n}}:{}", self.peer_port),
        );
        let route = format!("localhost={}", self.api.addr);
        let data = self.dir.path().join(format!("bridge-{n}"));
        let bridge = Bridge::start_tunnel(
            n,
            DOMAIN,
            &self.api,
            &self.ca_file,
            &data,
            BRIDGE_TOKEN,
            &[
                "--match-timeout",
                "10s",
                "--peer-listen",
                &listen,
                "--peer-address",
                &to,
                "--route",
                &route,
                "--shutdown-grace",
                "20s",
            ],
        )
        .unwrap();
        self.lb.add(bridge.front);
        self.bridges.push(bridge);
    }

    /// Starts the agent (through the load balancer) serving TCP `resources`; waits until
    /// they are online.
    async fn start_agent(&mut self, resources: &[(&str, SocketAddr)]) {
        let typed: Vec<_> = resources.iter().map(|(n, a)| (*n, "tcp", *a)).collect();
        self.start_agent_with(&typed).await;
    }

    /// Starts the agent serving `resources` (name, kind, address).
    async fn start_agent_with(&mut self, resources: &[(&str, &str, SocketAddr)]) {
        let token = self
            .admin
            .call(
                Method::POST,
                "/api/v1/join-tokens",
                Some(serde_json::json!({"kind": "agent", "ttl_ms": 600_000, "max_uses": 1})),
            )
            .await
            .unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut config = format!(
            "name = \"edge\"\napi_url = \"https://localhost:{port}\"\napi_address = \"{api}\"\n\
             api_ca_file = \"{ca}\"\ndata_dir = \"{data}\"\nbridge_address = \"{lb}\"\n\
             max_tunnels = 200\nresume_timeout = \"{resume}\"\n",
            resume = self.agent_resume_timeout,
            port = self.api.addr.port(),
            api = self.api.addr,
            ca = self.ca_file.display(),
            data = self.dir.path().join("agent").display(),
            lb = self.lb.addr,
        );
        for (name, kind, addr) in resources {
            config.push_str(&format!(
                "[[resources]]\nname = \"{name}\"\nkind = \"{kind}\"\naddress = \"{addr}\"\n"
            ));
        }
        let path = self.dir.path().join("agent.toml");
        std::fs::write(&path, config).unwrap();
        let agent = Agent::spawn(&path, &[("BAMF_JOIN_TOKEN", &token)]).unwrap();
        let started = Instant::now();
        loop {
            let listed = self
                .admin
                .call(Method::GET, "/api/v1/resources", None)
                .await
                .unwrap();
            let items = listed["items"].as_array().unwrap();
            if items.len() == resources.len() && items.iter().all(|r| r["online"] == true) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the agent never came online: {:?}",
                agent.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.agent = Some(agent);
    }

    /// Opens a session to `resource` entering through the load balancer.
    async fn open(&self, resource: &str) -> (String, u32, Carried) {
        let (id, on, cert) = self.admin.connect(resource).await;
        let carried = self
            .admin
            .open(self.lb.addr, DOMAIN, on, &id, &cert, &self.ca_pem)
            .await;
        (id, on, carried)
    }

    /// A session as the API lists it.
    async fn session(&self, id: &str) -> serde_json::Value {
        let listed = self
            .admin
            .call(Method::GET, "/api/v1/sessions?limit=500", None)
            .await
            .unwrap();
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("session {id} not listed"))
            .clone()
    }

    /// Waits until session `id` satisfies `ok`.
    async fn wait_session(&self, id: &str, ok: impl Fn(&serde_json::Value) -> bool) {
        let started = Instant::now();
        loop {
            let row = self.session(id).await;
            if ok(&row) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "session: {row}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A `BAMF_HOME` logged in as the administrator through the load balancer.
    fn cli_home(&self) -> PathBuf {
        let home = self.dir.path().join("home");
        let out = bamf(&home)
            .args([
                "login",
                "--api",
                &format!("https://localhost:{}", self.lb.addr.port()),
                "--via",
                &self.lb.addr.to_string(),
                "--user",
                "admin",
                "--password-stdin",
                "--yes",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(format!("{PASSWORD}\n").as_bytes())?;
                child.wait_with_output()
            })
            .unwrap();
        assert!(out.status.success(), "login: {out:?}");
        home
    }
}

fn bamf(home: &Path) -> Command {
    let mut cmd = Command::new(bamf_tests::binary("bamf"));
    cmd.env("BAMF_HOME", home);
    for name in ["BAMF_API", "BAMF_VIA", "BAMF_USER"] {
        cmd.env_remove(name);
    }
    cmd
}

/// Writes `data` and reads the same number of bytes back.
async fn echo(app: &mut tokio::io::DuplexStream, data: &[u8]) -> Vec<u8> {
    let (mut r, mut w) = tokio::io::split(app);
    let write = async {
        w.write_all(data).await.unwrap();
    };
    let read = async {
        let mut back = vec![0u8; data.len()];
        tokio::time::timeout(Duration::from_secs(30), r.read_exact(&mut back))
            .await
            .expect("echo within 30 s")
            .expect("echo read");
        back
    };
    tokio::join!(write, read).1
}

/// Sends SIZE pseudo-random bytes to the port and reads everything echoed back, at once,
/// writing how much came back to PROGRESS as it goes; prints both SHA-256 digests.
const TRANSFER: &str = r#"
import hashlib, random, socket, sys, threading
port, size, progress = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
s = socket.create_connection(("127.0.0.1", port))
sent = hashlib.sha256()
def send():
    rng = random.Random(7)
    left = size
    while left:
        chunk = rng.randbytes(min(left, 1 << 20))
        sent.update(chunk)
        s.sendall(chunk)
        left -= len(chunk)
    s.shutdown(socket.SHUT_WR)
t = threading.Thread(target=send)
t.start()
got = hashlib.sha256()
n = 0
mark = 0
while True:
    b = s.recv(1 << 20)
    if not b:
        break
    got.update(b)
    n += len(b)
    if n - mark >= 16 << 20:
        mark = n
        with open(progress, "w") as f:
            f.write(str(n))
t.join()
print(f"sent={sent.hexdigest()} received={got.hexdigest()} bytes={n}")
"#;

/// `bamf tcp` carrying 1 GiB each way; the bridge hosting it is killed with SIGKILL a
/// quarter of the way in: the transfer completes, what came back hashes like what was
/// sent, and it is one session that attached again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_survives_kill_9_of_its_bridge_byte_for_byte() {
    let _one = ONE_AT_A_TIME.lock().await;
    let size: u64 = std::env::var("BAMF_RESUME_TEST_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1 << 30);
    let mut fleet = Fleet::start("resume-kill", 10, 3).await;
    fleet
        .start_agent(&[("echo", bamf_tests::echo_server())])
        .await;
    let home = fleet.cli_home();
    let script = fleet.dir.path().join("transfer.py");
    std::fs::write(&script, TRANSFER).unwrap();
    let progress = fleet.dir.path().join("progress");
    let exec = format!(
        "python3 {} {{port}} {size} {}",
        script.display(),
        progress.display()
    );
    let child = bamf(&home)
        .args(["tcp", "echo", "-p", "0", "--exec", &exec])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A quarter of the way: find the session's bridge and kill it.
    let started = Instant::now();
    while std::fs::read_to_string(&progress)
        .ok()
        .and_then(|t| t.parse::<u64>().ok())
        .is_none_or(|n| n < size / 4)
    {
        assert!(started.elapsed() < Duration::from_secs(300), "no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = fleet
        .admin
        .call(Method::GET, "/api/v1/sessions?state=active", None)
        .await
        .unwrap();
    let session = listed["items"][0].clone();
    let id = session["id"].as_str().unwrap().to_owned();
    let host = usize::try_from(session["bridge"].as_u64().unwrap()).unwrap();
    fleet.bridges[host].signal("KILL");
    let killed_at = Instant::now();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{out:?}");
    let fields: std::collections::HashMap<&str, &str> = text
        .split_whitespace()
        .filter_map(|f| f.split_once('='))
        .collect();
    assert_eq!(
        fields.get("bytes"),
        Some(&size.to_string().as_str()),
        "{text}"
    );
    assert_eq!(fields.get("sent"), fields.get("received"), "{text}");
    eprintln!(
        "{size} bytes each way, bridge {host} killed, finished {:?} later",
        killed_at.elapsed()
    );
    // One session throughout: attached again, through the killed bridge and another, and
    // it ended cleanly with the application's bytes counted.
    fleet.wait_session(&id, |s| s["state"] == "ended").await;
    let row = fleet.session(&id).await;
    assert_eq!(row["end_reason"], "closed", "{row}");
    assert!(row["reattaches"].as_i64().unwrap() >= 1, "{row}");
    let bridges = row["bridges"].as_array().unwrap();
    assert_eq!(bridges[0], host as u64, "{row}");
    assert!(bridges.len() >= 2 && bridges[1] != host as u64, "{row}");
    assert_eq!(row["bytes_up"].as_u64(), Some(size), "{row}");
    assert_eq!(row["bytes_down"].as_u64(), Some(size), "{row}");
}

/// SIGTERM on a bridge with 50 live tunnels: it closes them at once to move, every one
/// attaches again through the other bridge and keeps working, none is cut, and the bridge
/// exits well before its grace period (20 s) ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_moves_every_tunnel_and_the_bridge_exits_before_its_grace() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fleet = Fleet::start("resume-drain", 11, 1).await;
    fleet
        .start_agent(&[("echo", bamf_tests::echo_server())])
        .await;
    let mut tunnels = Vec::new();
    for _ in 0..50 {
        let (id, on, mut carried) = fleet.open("echo").await;
        assert_eq!(on, 0);
        assert_eq!(echo(&mut carried.app, b"before").await, b"before");
        tunnels.push((id, carried));
    }
    fleet.add_bridge();
    // Bridge 1 is live before bridge 0 drains.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    fleet.bridges[0].signal("TERM");
    let termed = Instant::now();
    let exited = fleet.bridges[0].wait(Duration::from_secs(20));
    let took = termed.elapsed();
    assert!(exited.is_some_and(|s| s.success()), "bridge 0: {exited:?}");
    assert!(
        took < Duration::from_secs(10),
        "bridge 0 took {took:?} to drain"
    );
    let logs = fleet.bridges[0].logs();
    assert!(
        logs.iter()
            .any(|l| l.contains("live tunnels closed to move elsewhere")
                && l.contains("\"tunnels\":50")),
        "{logs:?}"
    );
    assert!(
        logs.iter()
            .any(|l| l.contains("shutdown complete: every connection finished")),
        "connections were cut: {logs:?}"
    );
    for (id, carried) in &mut tunnels {
        assert_eq!(echo(&mut carried.app, b"after").await, b"after", "{id}");
    }
    for (id, _) in &tunnels {
        let row = fleet.session(id).await;
        assert_eq!(row["state"], "active", "{row}");
        assert_eq!(row["bridges"], serde_json::json!([0, 1]), "{row}");
    }
}

/// A tunnel hosted on bridge 0 whose client entered through bridge 1's front door (spliced
/// onward to bridge 0) survives bridge 1's death: bridge 1 does not even host it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_survives_the_death_of_the_bridge_it_entered_through() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fleet = Fleet::start("resume-entry", 12, 3).await;
    fleet
        .start_agent(&[("echo", bamf_tests::echo_server())])
        .await;
    let (id, on, cert) = fleet.admin.connect("echo").await;
    assert_eq!(on, 0, "least loaded, lowest ordinal");
    let mut carried = fleet
        .admin
        .open_via(
            fleet.bridges[1].front,
            fleet.lb.addr,
            DOMAIN,
            on,
            &id,
            &cert,
            &fleet.ca_pem,
        )
        .await;
    assert_eq!(
        echo(&mut carried.app, b"in through 1").await,
        b"in through 1"
    );
    fleet.bridges[1].signal("KILL");
    assert_eq!(
        echo(&mut carried.app, b"after 1 died").await,
        b"after 1 died"
    );
    fleet
        .wait_session(&id, |s| s["reattaches"].as_i64() >= Some(1))
        .await;
}

/// A resource that sends as fast as it can, forever: what a slow reader is behind.
fn firehose() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                use std::io::Write;
                let chunk = vec![0x5a; 64 * 1024];
                while stream.write_all(&chunk).is_ok() {}
            });
        }
    });
    addr
}

/// Reads 1 KiB a second for SECONDS seconds, then says how much it read.
const SLOW_READER: &str = r#"
import socket, sys, time
port, seconds = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
n = 0
for _ in range(seconds):
    n += len(s.recv(1024))
    time.sleep(1)
print(f"read={n}")
"#;

/// A reader taking 1 KiB a second behind a resource that sends as fast as it can: the
/// session stays up the whole time with no error, and the memory of the client (`bamf`),
/// the bridge and the agent stays under a ceiling (the replay buffer is 4 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_slows_the_sender_and_memory_stays_bounded() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fleet = Fleet::start("resume-slow", 13, 1).await;
    fleet.start_agent(&[("firehose", firehose())]).await;
    let home = fleet.cli_home();
    let script = fleet.dir.path().join("slow.py");
    std::fs::write(&script, SLOW_READER).unwrap();
    let exec = format!("python3 {} {{port}} 12", script.display());
    let agent_pid = fleet.agent.as_ref().unwrap().pid();
    let bridge_pid = fleet.bridges[0].pid();
    let (agent_before, bridge_before) = (
        bamf_tests::rss_kib(agent_pid),
        bamf_tests::rss_kib(bridge_pid),
    );
    let child = bamf(&home)
        .args(["tcp", "firehose", "-p", "0", "--exec", &exec])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let cli_pid = child.id();
    let mut peak = (0, 0, 0);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak.0 = peak.0.max(bamf_tests::rss_kib(cli_pid));
        peak.1 = peak.1.max(bamf_tests::rss_kib(agent_pid));
        peak.2 = peak.2.max(bamf_tests::rss_kib(bridge_pid));
    }
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let read: u64 = text.trim().trim_start_matches("read=").parse().unwrap();
    assert!(read >= 10 * 1024, "{text}");
    // Ceilings: the replay buffer (4 MiB) plus socket buffers and the processes' own.
    let (cli, agent, bridge) = (
        peak.0,
        peak.1.saturating_sub(agent_before),
        peak.2.saturating_sub(bridge_before),
    );
    eprintln!("peak RSS: bamf {cli} KiB; growth: agent {agent} KiB, bridge {bridge} KiB");
    assert!(cli < 48 * 1024, "bamf peaked at {cli} KiB");
    assert!(agent < 16 * 1024, "the agent grew {agent} KiB");
    assert!(bridge < 8 * 1024, "the bridge grew {bridge} KiB");
}

/// Attaching again takes the session's key: a resume with a valid session id, a valid
/// token and another key is refused (403) and audited; a killed session never comes back
/// (410), and its client's stream ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_takes_the_session_key_and_a_killed_session_stays_dead() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fleet = Fleet::start("resume-refusals", 14, 1).await;
    // Longer than the test waits: the agent must learn of the kill from the API, not from
    // its own deadline.
    fleet.agent_resume_timeout = "120s";
    let (target, mut target_closed) = watched_echo().await;
    fleet.start_agent(&[("echo", target)]).await;
    let (id, _, mut carried) = fleet.open("echo").await;
    assert_eq!(echo(&mut carried.app, b"mine").await, b"mine");
    // The tunnel port the deployment sets (BAMF_TUNNEL_PORT, the chart's gateway port) is
    // the one `/connect` and resumes tell clients to dial.
    let (_, csr) = bamf_client::identity::key_and_csr().unwrap();
    let grant = fleet
        .admin
        .call(
            Method::POST,
            "/api/v1/connect",
            Some(serde_json::json!({"resource": "echo", "csr": csr})),
        )
        .await
        .unwrap();
    assert_eq!(grant["bridge_port"], 8443, "{grant}");
    let (_, other_csr) = bamf_client::identity::key_and_csr().unwrap();
    let refused = fleet
        .admin
        .call(
            Method::POST,
            &format!("/api/v1/sessions/{id}/resume"),
            Some(serde_json::json!({"csr": other_csr})),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.status().map(|s| s.as_u16()), Some(403), "{refused}");
    let audit = fleet
        .admin
        .call(Method::GET, "/api/v1/audit?limit=50", None)
        .await
        .unwrap();
    assert!(
        audit["items"].as_array().unwrap().iter().any(|e| {
            e["kind"] == "session.resume"
                && e["outcome"] == "refused"
                && e["detail"].to_string().contains("not_the_session_key")
        }),
        "{audit}"
    );
    // Killed: the tunnel closes, its client's attempt to attach again is told 410, and the
    // stream ends.
    fleet
        .admin
        .call(Method::DELETE, &format!("/api/v1/sessions/{id}"), None)
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(15), carried.app.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the killed session's stream stayed open");
    let report = carried.report.await.unwrap();
    assert!(
        matches!(report.end, bamf_client::resume::End::ResumeTimeout),
        "{report:?}"
    );
    // The agent closes the session's connection to the resource (the target's first) within
    // a heartbeat (15 s), not after its 120 s resume deadline.
    let first_closed = async {
        while let Some(n) = target_closed.recv().await {
            if n == 0 {
                return true;
            }
        }
        false
    };
    let closed = tokio::time::timeout(Duration::from_secs(25), first_closed).await;
    assert_eq!(
        closed,
        Ok(true),
        "the killed session's resource connection stayed open"
    );
    let (_, csr) = bamf_client::identity::key_and_csr().unwrap();
    let gone = fleet
        .admin
        .call(
            Method::POST,
            &format!("/api/v1/sessions/{id}/resume"),
            Some(serde_json::json!({"csr": csr})),
        )
        .await
        .unwrap_err();
    assert_eq!(gone.status().map(|s| s.as_u16()), Some(410), "{gone}");
}

/// An echo target that tells when each of its connections closes (by their order of
/// arrival, from 0).
async fn watched_echo() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<usize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        for n in 0.. {
            let Ok((mut s, _)) = listener.accept().await else {
                break;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = tx.send(n);
            });
        }
    });
    (addr, rx)
}

/// A terminal (tmux on its own socket) running `command`; read by capturing its pane.
struct Terminal {
    socket: PathBuf,
}

impl Terminal {
    fn start(dir: &Path, home: &Path, command: &str) -> Self {
        let socket = dir.join("tmux.sock");
        let status = Command::new("tmux")
            .arg("-S")
            .arg(&socket)
            .args(["new-session", "-d", "-s", "t", "-x", "160", "-y", "50"])
            .arg(format!("env BAMF_HOME={} {command}", home.display()))
            .status()
            .expect("tmux (scripts/test installs it)");
        assert!(status.success());
        Self { socket }
    }

    fn window(&self, name: &str, home: &Path, command: &str) {
        let status = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(["new-window", "-t", "t", "-n", name])
            .arg(format!("env BAMF_HOME={} {command}", home.display()))
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn type_line(&self, target: &str, line: &str) {
        // tmux reads an argument ending in `;` as a command separator unless escaped.
        let line = match line.strip_suffix(';') {
            Some(rest) => format!("{rest}\\;"),
            None => line.to_owned(),
        };
        let status = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(["send-keys", "-t", target, "-l", &line])
            .status()
            .unwrap();
        assert!(status.success());
        let status = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(["send-keys", "-t", target, "Enter"])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn screen(&self, target: &str) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(["capture-pane", "-p", "-t", target])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Waits until `target`'s screen shows `text`.
    async fn wait_for(&self, target: &str, text: &str, limit: Duration) {
        let started = Instant::now();
        while !self.screen(target).contains(text) {
            assert!(
                started.elapsed() < limit,
                "{text:?} never showed:\n{}",
                self.screen(target)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .status();
    }
}

/// The active session to `resource`, as the API lists it: (id, bridge). Polled: the bridge
/// reports a session's start in its next batch (50 ms later), so the application may answer
/// before the API knows.
async fn active_session(fleet: &Fleet, resource: &str) -> (String, usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = fleet
            .admin
            .call(Method::GET, "/api/v1/sessions?state=active", None)
            .await
            .unwrap();
        let found = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["resource"] == resource)
            .cloned();
        if let Some(session) = found {
            return (
                session["id"].as_str().unwrap().to_owned(),
                usize::try_from(session["bridge"].as_u64().unwrap()).unwrap(),
            );
        }
        assert!(
            Instant::now() < deadline,
            "no active {resource} session: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An interactive `bamf ssh` in a terminal, and `bamf psql` inside an open transaction, each
/// survive `kill -9` of the bridge carrying them: the shell answers the next command, and the
/// transaction (a temporary table, so the same server connection) commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_and_psql_sessions_survive_kill_9_of_their_bridge() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fleet = Fleet::start("resume-pty", 15, 3).await;
    let sshd = bamf_tests::Sshd::start(fleet.dir.path());
    fleet
        .start_agent_with(&[
            ("box", "ssh", sshd.addr),
            ("pg", "postgres", "127.0.0.1:5432".parse().unwrap()),
        ])
        .await;
    let home = fleet.cli_home();
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned();
    let bamf = bamf_tests::binary("bamf");
    let ssh = format!(
        "{} ssh {user}@box -F /dev/null -i {} -o StrictHostKeyChecking=no \
         -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
        bamf.display(),
        sshd.user_key.display()
    );
    let term = Terminal::start(fleet.dir.path(), &home, &ssh);
    term.type_line("t:0", "echo before-$((6*7))");
    term.wait_for("t:0", "before-42", Duration::from_secs(30))
        .await;
    let (_, on) = active_session(&fleet, "box").await;
    fleet.bridges[on].signal("KILL");
    term.type_line("t:0", "echo after-$((6*7))");
    term.wait_for("t:0", "after-42", Duration::from_secs(30))
        .await;

    let psql = format!("{} psql pg -- -U postgres -d test", bamf.display());
    term.window("pg", &home, &psql);
    term.type_line("t:pg", "BEGIN;");
    term.type_line("t:pg", "CREATE TEMP TABLE survivor (x int);");
    term.type_line("t:pg", "INSERT INTO survivor VALUES (1000+337);");
    term.wait_for("t:pg", "INSERT 0 1", Duration::from_secs(30))
        .await;
    let (id, on) = active_session(&fleet, "pg").await;
    fleet.bridges[on].signal("KILL");
    term.type_line("t:pg", "SELECT x FROM survivor;");
    term.wait_for("t:pg", "1337", Duration::from_secs(30)).await;
    term.type_line("t:pg", "COMMIT;");
    term.wait_for("t:pg", "COMMIT", Duration::from_secs(30))
        .await;
    fleet
        .wait_session(&id, |s| s["reattaches"].as_i64() >= Some(1))
        .await;
}
