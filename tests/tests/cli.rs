//! The `bamf` CLI end to end: real `bamf-api`, `bamf-bridge` and `bamf-agent` processes, a
//! real OpenSSH `sshd`, the machine's PostgreSQL, and a TCP echo target; the CLI is run as
//! a user would run it, each test with its own `BAMF_HOME`.
//!
//! Single-port layout: the bridge's front door serves the API (SNI `localhost`, a static
//! route) and the tunnels (SNI `0.bridge.tunnel.localhost`), so `bamf login --api
//! https://localhost:<front port>` reaches everything at 127.0.0.1:<front port>.
#![allow(clippy::unwrap_used)] // a test binary: a failed unwrap is a failed test

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bamf_tests::{Agent, Api, Bridge, TempDir, binary, echo_server, workspace};

const BRIDGE_TOKEN: &str = "bamf_bridge-bootstrap-token-for-cli-tests";
const ADMIN_PASSWORD: &str = "admin-password-1";
const DOMAIN: &str = "tunnel.localhost";
/// Any one CLI command.
const COMMAND_DEADLINE: Duration = Duration::from_secs(90);
const NOT_LOGGED_IN: &str = "not logged in (or the login expired): run `bamf login`";

/// What a finished command said.
#[derive(Debug)]
struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Output {
    #[track_caller]
    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "{self:#?}");
        self
    }

    #[track_caller]
    fn fails_with(self, code: i32, message: &str) -> Self {
        assert_eq!(self.code, code, "{self:#?}");
        assert!(
            self.stderr.contains(message),
            "wanted {message:?}: {self:#?}"
        );
        assert!(!self.stderr.contains("panicked"), "{self:#?}");
        self
    }
}

/// Runs `cmd` with `stdin`, killing it at [`COMMAND_DEADLINE`].
fn run(cmd: &mut Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let mut input = child.stdin.take().unwrap();
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
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + COMMAND_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish in {COMMAND_DEADLINE:?}; stderr:\n{}",
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = writer.join();
    Output {
        code: status.code().unwrap_or(-1),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// `bamf` with its own home and none of the caller's BAMF or colour settings.
fn bamf(home: &Path) -> Command {
    isolated(Command::new(binary("bamf")), home)
}

/// `cmd` with `BAMF_HOME` = `home` and none of the caller's BAMF or colour settings.
fn isolated(mut cmd: Command, home: &Path) -> Command {
    cmd.env("BAMF_HOME", home);
    for name in [
        "BAMF_API",
        "BAMF_VIA",
        "BAMF_USER",
        "NO_COLOR",
        "CLICOLOR_FORCE",
    ] {
        cmd.env_remove(name);
    }
    cmd
}

/// `bamf ARGS…` with an empty stdin.
fn cli(home: &Path, args: &[&str]) -> Output {
    run(bamf(home).args(args), "")
}

fn parse(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// An API with SQLite, and one bridge whose front door serves the API and the tunnels.
struct Stack {
    dir: TempDir,
    _api: Api,
    bridge: Bridge,
    ca_file: PathBuf,
}

impl Stack {
    fn start(tag: &str) -> Self {
        let dir = TempDir::new(tag);
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("bamf.db").display());
        let api = Api::start_with_env(
            &[
                "--database-url",
                &url,
                "--admin-password",
                ADMIN_PASSWORD,
                "--tunnel-domain",
                DOMAIN,
            ],
            &[("BAMF_BRIDGE_JOIN_TOKEN", BRIDGE_TOKEN)],
        )
        .unwrap();
        // The operator's copy of the CA, for the bridge and to compare fingerprints with.
        let ca_file = api.fetch_ca(dir.path());
        let route = format!("localhost={}", api.addr);
        let data = dir.path().join("bridge");
        let bridge = Bridge::start_tunnel(
            0,
            DOMAIN,
            &api,
            &ca_file,
            &data,
            BRIDGE_TOKEN,
            &["--route", &route],
        )
        .unwrap();
        Self {
            dir,
            _api: api,
            bridge,
            ca_file,
        }
    }

    /// `https://localhost:<front port>`.
    fn url(&self) -> String {
        format!("https://localhost:{}", self.bridge.front.port())
    }

    /// A fresh `BAMF_HOME` (not created: the CLI makes it).
    fn home(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("home-{name}"))
    }

    /// `bamf login` with the password on stdin and an explicit `--via`.
    fn login(&self, home: &Path, user: &str, password: &str) -> Output {
        let via = self.bridge.front.to_string();
        run(
            bamf(home).args([
                "login",
                "--api",
                &self.url(),
                "--via",
                &via,
                "--user",
                user,
                "--password-stdin",
            ]),
            &format!("{password}\n"),
        )
    }

    /// A user created by the administrator, bound to `roles`.
    fn add_user(&self, admin: &Path, name: &str, password: &str, roles: &[&str]) {
        let mut cmd = bamf(admin);
        cmd.args(["users", "add", name, "--password-stdin"]);
        for role in roles {
            cmd.args(["--role", role]);
        }
        run(&mut cmd, password).ok();
    }

    /// A direct API client (not the CLI) for checks the CLI cannot make.
    fn client(&self) -> bamf_client::https::Api {
        let ca = std::fs::read_to_string(&self.ca_file).unwrap();
        let tls = bamf_client::tls_config(&ca, None, &[b"http/1.1"]).unwrap();
        bamf_client::https::Api::new(&self.url(), tls)
            .unwrap()
            .connect_to(Some(self.bridge.front))
    }

    /// Whether the API accepts `token` (`GET /api/v1/whoami`): Some(status) on refusal.
    fn token_refused(&self, token: &str) -> Option<u16> {
        let client = self.client();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(client.user(token).whoami())
            .err()
            .map(|e| e.status().map_or(0, |s| s.as_u16()))
    }
}

fn token_of(home: &Path) -> String {
    let text = std::fs::read_to_string(home.join("token.json")).unwrap();
    parse(&text)["token"].as_str().unwrap().to_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// 20 concurrent connections, each sending its own random bytes and a half-close, each
/// expecting exactly those bytes back; exit 3 with the failures otherwise.
const ECHO_CLIENT: &str = r#"
import os, socket, sys, threading
port, n, size = int(sys.argv[1]), 20, 200_000
errors = []
def one(i):
    try:
        data = os.urandom(size)
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        def send():
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        t = threading.Thread(target=send)
        t.start()
        got = bytearray()
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
        t.join()
        if bytes(got) != data:
            errors.append(f"connection {i}: {len(got)} bytes back of {size}, or different")
    except Exception as e:
        errors.append(f"connection {i}: {e!r}")
threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(3)
print(f"{n} connections echoed byte for byte")
"#;

/// The issue's scenario: an administrator sets up users and roles with the CLI, a user
/// reaches a real sshd, PostgreSQL and an echo service through one bridge port, a user
/// without a role is refused clearly, and the administrator sees and ends sessions.
#[test]
fn users_reach_ssh_postgres_and_tcp_through_the_cli() {
    let stack = Stack::start("cli-access");
    let sshd = bamf_tests::Sshd::start(stack.dir.path());
    let echo = echo_server();
    let admin = stack.home("admin");
    stack.login(&admin, "admin", ADMIN_PASSWORD).ok();

    // An agent joins with a token made by the CLI; it reaches the API and the bridge
    // through the same front door.
    let token = cli(
        &admin,
        &["join-tokens", "create", "--kind", "agent", "--ttl", "10m"],
    )
    .ok();
    let token = token.stdout.trim().to_owned();
    assert!(
        token.starts_with("bamf_"),
        "only the token on stdout: {token}"
    );
    let front = stack.bridge.front;
    let config = stack.dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"name = "edge"
api_url = "https://localhost:{port}"
api_address = "{front}"
api_ca_file = "{ca}"
data_dir = "{data}"
bridge_address = "{front}"
health_listen = "127.0.0.1:0"

[[resources]]
name = "box"
kind = "ssh"
address = "{ssh}"
labels = {{ env = "test" }}

[[resources]]
name = "pg"
kind = "postgres"
address = "127.0.0.1:5432"
labels = {{ env = "test" }}

[[resources]]
name = "echo"
kind = "tcp"
address = "{echo}"
labels = {{ env = "test", team = "blue" }}
"#,
            port = front.port(),
            ca = stack.ca_file.display(),
            data = stack.dir.path().join("agent").display(),
            ssh = sshd.addr,
        ),
    )
    .unwrap();
    let mut agent = Agent::start(&config, &[("BAMF_JOIN_TOKEN", &token)]).unwrap();
    agent
        .wait_message("command stream connected", Duration::from_secs(20))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = parse(&cli(&admin, &["ls", "--json"]).ok().stdout);
        let online = listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["online"] == true)
            .count();
        if online == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "resources not online: {listed}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Administration with the CLI: a role, users, bindings.
    cli(
        &admin,
        &["roles", "add", "dev", "--allow-label", "env=test"],
    )
    .ok();
    stack.add_user(&admin, "alice", "alice-password-1", &["dev"]);
    stack.add_user(&admin, "bob", "bob-password-12", &[]);
    cli(&admin, &["unbind", "alice", "dev"]).ok();
    cli(&admin, &["bind", "alice", "dev"]).ok();
    let users = parse(&cli(&admin, &["users", "ls", "--json"]).ok().stdout);
    let alice_roles = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "alice")
        .map(|u| u["roles"].clone())
        .unwrap();
    assert!(
        alice_roles.as_array().unwrap().contains(&"dev".into()),
        "{users}"
    );
    let roles = cli(&admin, &["roles", "ls"]).ok();
    assert!(roles.stdout.contains("labels=env=test"), "{roles:?}");

    let alice = stack.home("alice");
    stack.login(&alice, "alice", "alice-password-1").ok();
    // Non-admins are refused admin commands with a clear message.
    cli(&alice, &["users", "ls"]).fails_with(1, "this needs an administrator (forbidden)");

    // ls --json parses and carries kind, labels and online state.
    let listed = parse(&cli(&alice, &["ls", "--json"]).ok().stdout);
    let echo_item = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "echo")
        .cloned()
        .unwrap();
    assert_eq!(echo_item["kind"], "tcp");
    assert_eq!(echo_item["labels"]["team"], "blue");
    assert_eq!(echo_item["online"], true);
    let filtered = parse(&cli(&alice, &["ls", "--json", "--kind", "ssh"]).ok().stdout);
    assert_eq!(filtered.as_array().unwrap().len(), 1, "{filtered}");

    // Colours: never when piped, forced with CLICOLOR_FORCE, and NO_COLOR wins over that.
    let table = cli(&alice, &["ls"]).ok();
    assert!(table.stdout.contains("NAME") && table.stdout.contains("online"));
    assert!(!table.stdout.contains('\x1b'), "{table:?}");
    let forced = run(bamf(&alice).env("CLICOLOR_FORCE", "1").arg("ls"), "").ok();
    assert!(
        forced.stdout.contains("\x1b[32monline\x1b[0m"),
        "{forced:?}"
    );
    let no_colour = run(
        bamf(&alice)
            .env("CLICOLOR_FORCE", "1")
            .env("NO_COLOR", "1")
            .arg("ls"),
        "",
    )
    .ok();
    assert!(!no_colour.stdout.contains('\x1b'), "{no_colour:?}");
    // On a terminal (script(1) gives it one): coloured, unless NO_COLOR.
    let on_tty = |no_colour: bool| {
        let mut cmd = isolated(Command::new("script"), &alice);
        cmd.arg("-qec")
            .arg(format!("{} ls", binary("bamf").display()))
            .arg("/dev/null");
        if no_colour {
            cmd.env("NO_COLOR", "1");
        }
        run(&mut cmd, "").ok().stdout
    };
    assert!(
        on_tty(false).contains("\x1b[32monline"),
        "colours on a terminal"
    );
    assert!(!on_tty(true).contains('\x1b'), "NO_COLOR on a terminal");

    // ssh: the native client, through `bamf pipe` as its ProxyCommand, to the real sshd.
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned();
    let key = sshd.user_key.to_str().unwrap();
    let destination = format!("{user}@box");
    let ssh = |command: &[&str]| -> Vec<String> {
        let mut args = vec![
            "ssh",
            &destination,
            "-F",
            "/dev/null",
            "-i",
            key,
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
        ];
        args.extend_from_slice(command);
        args.into_iter().map(str::to_owned).collect()
    };
    let hello = run(bamf(&alice).args(ssh(&["echo", "hello"])), "").ok();
    assert_eq!(hello.stdout, "hello\n", "{hello:?}");
    let status = run(bamf(&alice).args(ssh(&["exit", "3"])), "");
    assert_eq!(status.code, 3, "ssh's exit status is ours: {status:?}");
    // scp the same way, with the resource as the host of the remote operand.
    let upload = stack.dir.path().join("upload.txt");
    std::fs::write(&upload, "carried by scp\n").unwrap();
    let copied = stack.dir.path().join("copied.txt");
    let remote = format!("{user}@box:{}", copied.display());
    let mut scp_args = ssh(&[upload.to_str().unwrap(), &remote]);
    scp_args[0] = "scp".into();
    scp_args.remove(1); // no ssh destination: the operands name the host
    run(bamf(&alice).args(&scp_args), "").ok();
    assert_eq!(
        std::fs::read_to_string(&copied).unwrap(),
        "carried by scp\n"
    );

    // psql through a local listener; psql's status is ours.
    let psql = cli(
        &alice,
        &[
            "psql", "pg", "--", "-U", "postgres", "-d", "test", "-c", "select 1",
        ],
    )
    .ok();
    assert!(psql.stdout.lines().any(|l| l.trim() == "1"), "{psql:?}");
    let failed = cli(
        &alice,
        &[
            "psql",
            "pg",
            "--",
            "-U",
            "postgres",
            "-d",
            "test",
            "-c",
            "select nonsense",
        ],
    );
    assert_eq!(failed.code, 1, "{failed:?}");

    // tcp --exec: 20 concurrent connections, each its own session, byte for byte.
    let script = stack.dir.path().join("echo_client.py");
    std::fs::write(&script, ECHO_CLIENT).unwrap();
    let exec = format!("python3 {} {{port}}", script.display());
    let echoed = cli(&alice, &["tcp", "echo", "-p", "0", "--exec", &exec]).ok();
    assert!(
        echoed.stdout.contains("20 connections echoed"),
        "{echoed:?}"
    );
    // Each was a session of its own that ended cleanly: half-closes passed on both ways.
    // (The bridge counts the end-to-end session's ciphertext: the bytes plus TLS's own.)
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let listed = parse(
            &cli(
                &admin,
                &[
                    "sessions", "ls", "--user", "alice", "--limit", "500", "--json",
                ],
            )
            .ok()
            .stdout,
        );
        let clean = listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| {
                s["resource"] == "echo"
                    && s["end_reason"] == "closed"
                    && s["bytes_up"].as_u64().is_some_and(|n| n >= 200_000)
                    && s["bytes_down"].as_u64().is_some_and(|n| n >= 200_000)
            })
            .count();
        if clean == 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{clean} clean echo sessions: {listed}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let code = cli(&alice, &["tcp", "echo", "--exec", "exit 7"]);
    assert_eq!(code.code, 7, "the command's status is ours: {code:?}");

    // tcp without --exec prints the address; a live session is ended by the administrator.
    let mut forward = bamf(&alice)
        .args(["tcp", "echo", "-p", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(forward.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr: SocketAddr = first.trim().parse().unwrap_or_else(|_| panic!("{first:?}"));
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    conn.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    conn.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");
    let deadline = Instant::now() + Duration::from_secs(15);
    let session = loop {
        let active = parse(
            &cli(
                &admin,
                &[
                    "sessions", "ls", "--state", "active", "--user", "alice", "--json",
                ],
            )
            .ok()
            .stdout,
        );
        if let Some(id) = active[0]["id"].as_str() {
            break id.to_owned();
        }
        assert!(Instant::now() < deadline, "no active session: {active}");
        std::thread::sleep(Duration::from_millis(200));
    };
    cli(&admin, &["sessions", "kill", &session]).ok();
    let killed_at = Instant::now();
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    assert!(
        killed_at.elapsed() < Duration::from_secs(10),
        "the killed session's connection closes"
    );
    let _ = Command::new("kill")
        .args(["-INT", &forward.id().to_string()])
        .status();
    let stopped = forward.wait().unwrap();
    assert!(
        stopped.success(),
        "Ctrl-C ends `bamf tcp` cleanly: {stopped:?}"
    );

    // A user without a role: a clear refusal, and a non-zero status, whichever command.
    let bob = stack.home("bob");
    stack.login(&bob, "bob", "bob-password-12").ok();
    let denied = "there is no resource 'echo' you may reach: `bamf ls` lists yours; \
                  ask an administrator for a role that allows it";
    cli(&bob, &["pipe", "echo"]).fails_with(1, denied);
    cli(&bob, &["tcp", "echo", "--exec", "true"]).fails_with(1, denied);
    let ssh_denied = run(bamf(&bob).args(ssh(&["echo", "hello"])), "");
    assert_ne!(ssh_denied.code, 0);
    assert!(
        ssh_denied
            .stderr
            .contains("there is no resource 'box' you may reach"),
        "{ssh_denied:?}"
    );
    cli(&alice, &["pipe", "nope"]).fails_with(1, "there is no resource 'nope' you may reach");

    // The administrator's view: sessions with bytes, the audit log, agents and bridges.
    let sessions = parse(
        &cli(&admin, &["sessions", "ls", "--user", "alice", "--json"])
            .ok()
            .stdout,
    );
    assert!(sessions.as_array().unwrap().len() >= 20, "{sessions}");
    let audit = parse(
        &cli(
            &admin,
            &["audit", "--kind", "connect", "--limit", "500", "--json"],
        )
        .ok()
        .stdout,
    );
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"] == "user:bob" && e["outcome"] == "denied"),
        "{audit}"
    );
    let agents = parse(&cli(&admin, &["agents", "ls", "--json"]).ok().stdout);
    assert_eq!(agents[0]["name"], "edge");
    let bridges = parse(&cli(&admin, &["bridges", "ls", "--json"]).ok().stdout);
    assert_eq!(bridges[0]["online"], true, "{bridges}");
    let tokens = cli(&admin, &["join-tokens", "ls"]).ok();
    assert!(tokens.stdout.contains("used up"), "{tokens:?}");

    agent.signal("TERM");
    let _ = agent.wait(Duration::from_secs(10));
}

/// Logging in: one message for a wrong password and an unknown user, the CA's fingerprint
/// on first use, private files, a second login that replaces the first, logout, and an
/// expired or revoked login reported as such.
#[test]
fn logins_replace_each_other_cleanly_and_failures_say_little() {
    let stack = Stack::start("cli-login");
    let admin = stack.home("admin");
    // Without --via: an API under localhost is dialled at 127.0.0.1.
    let first = run(
        bamf(&admin).args([
            "login",
            "--api",
            &stack.url(),
            "--user",
            "admin",
            "--password-stdin",
        ]),
        ADMIN_PASSWORD,
    )
    .ok();
    let fingerprint = String::from_utf8(
        Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(&stack.ca_file)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let fingerprint = fingerprint.trim().rsplit('=').next().unwrap().to_owned();
    assert!(
        first.stderr.contains(&fingerprint),
        "the CA's fingerprint is shown on first use: {first:?} {fingerprint}"
    );
    stack.add_user(&admin, "carol", "carol-password-1", &[]);

    // Wrong password and unknown user: the same words, nothing stored.
    let carol = stack.home("carol");
    let wrong = stack
        .login(&carol, "carol", "not-her-password")
        .fails_with(1, "login failed: wrong user name or password");
    let unknown = stack
        .login(&carol, "nobody", "not-her-password")
        .fails_with(1, "login failed: wrong user name or password");
    assert_eq!(wrong.stderr, unknown.stderr);
    assert!(!carol.join("token.json").exists());

    // A login: private files, a status with expiries.
    stack.login(&carol, "carol", "carol-password-1").ok();
    assert_eq!(mode(&carol), 0o700);
    for file in [
        "config.json",
        "token.json",
        "user-key.pem",
        "user-cert.pem",
        "ca.pem",
    ] {
        assert_eq!(mode(&carol.join(file)), 0o600, "{file}");
    }
    let status = cli(&carol, &["status"]).ok();
    for word in ["carol", "everyone", "token:", "certificate:", "valid until"] {
        assert!(status.stdout.contains(word), "{word}: {status:?}");
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let status = parse(&cli(&carol, &["status", "--json"]).ok().stdout);
    assert_eq!(status["user"], "carol");
    assert!(
        status["token_expires_at"].as_i64().unwrap() > now + 11 * 3600,
        "{status}"
    );
    assert!(status["certificate_expires_at"].as_i64().unwrap() > now + 11 * 3600);

    // A second login replaces the first: new token, key and certificate; the old token is
    // revoked; the CA stays pinned (no first-use notice).
    let (token_1, key_1) = (
        token_of(&carol),
        std::fs::read_to_string(carol.join("user-key.pem")).unwrap(),
    );
    let cert_1 = std::fs::read_to_string(carol.join("user-cert.pem")).unwrap();
    let again = stack.login(&carol, "carol", "carol-password-1").ok();
    assert!(!again.stderr.contains("first use"), "{again:?}");
    let token_2 = token_of(&carol);
    assert_ne!(token_1, token_2);
    assert_ne!(
        key_1,
        std::fs::read_to_string(carol.join("user-key.pem")).unwrap()
    );
    assert_ne!(
        cert_1,
        std::fs::read_to_string(carol.join("user-cert.pem")).unwrap()
    );
    assert_eq!(
        stack.token_refused(&token_1),
        Some(401),
        "the old token is revoked"
    );
    assert_eq!(stack.token_refused(&token_2), None);
    cli(&carol, &["ls"]).ok();

    // A failed login leaves the current one alone.
    stack
        .login(&carol, "carol", "wrong-password-x")
        .fails_with(1, "wrong user name");
    cli(&carol, &["status"]).ok();

    // Logout: the token is revoked and removed; then every command says so.
    cli(&carol, &["logout"]).ok();
    assert_eq!(stack.token_refused(&token_2), Some(401));
    assert!(!carol.join("token.json").exists() && !carol.join("user-key.pem").exists());
    cli(&carol, &["status"]).fails_with(1, NOT_LOGGED_IN);
    cli(&carol, &["ls"]).fails_with(1, NOT_LOGGED_IN);

    // Expired locally, or revoked at the API: the same message, never a panic.
    stack.login(&carol, "carol", "carol-password-1").ok();
    let token_3 = token_of(&carol);
    let mut stored = parse(&std::fs::read_to_string(carol.join("token.json")).unwrap());
    stored["expires_at"] = 1.into();
    std::fs::write(carol.join("token.json"), stored.to_string()).unwrap();
    cli(&carol, &["ls"]).fails_with(1, NOT_LOGGED_IN);
    cli(&carol, &["pipe", "anything"]).fails_with(1, NOT_LOGGED_IN);
    stack.login(&carol, "carol", "carol-password-1").ok();
    assert_eq!(
        stack.token_refused(&token_3),
        Some(401),
        "replaced even if expired locally"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(stack.client().user(&token_of(&carol)).logout())
        .unwrap();
    cli(&carol, &["ls"]).fails_with(1, NOT_LOGGED_IN);
}

/// What needs no server: completions, the reference, usage errors, no login.
#[test]
fn completions_reference_and_usage_errors() {
    let dir = TempDir::new("cli-offline");
    let home = dir.path().join("home");
    let bash = cli(&home, &["completions", "bash"]).ok();
    assert!(bash.stdout.contains("_bamf()") && bash.stdout.contains("complete -F"));
    let zsh = cli(&home, &["completions", "zsh"]).ok();
    assert!(zsh.stdout.starts_with("#compdef bamf"));
    let fish = cli(&home, &["completions", "fish"]).ok();
    assert!(fish.stdout.contains("complete -c bamf"));

    // docs/cli.md is generated from the command definitions and must not drift.
    let generated = cli(&home, &["docs-markdown"]).ok().stdout;
    let path = workspace().join("docs/cli.md");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/cli.md is out of date: regenerate it with \
         `cargo build -p bamf-cli && target/debug/bamf docs-markdown > docs/cli.md`"
    );
    for sub in [
        "login", "ls", "ssh", "tcp", "psql", "users", "roles", "bind", "audit", "sessions",
    ] {
        let help = cli(&home, &[sub, "--help"]).ok().stdout;
        let help: Vec<&str> = help.lines().map(str::trim_end).collect();
        assert!(
            generated.contains(help.join("\n").trim_end()),
            "`bamf {sub} --help` is in docs/cli.md"
        );
    }

    // Usage errors exit 2; a missing login exits 1 with the message.
    assert_eq!(cli(&home, &["frobnicate"]).code, 2);
    assert_eq!(cli(&home, &["tcp"]).code, 2);
    cli(&home, &["ls"]).fails_with(1, NOT_LOGGED_IN);
    cli(&home, &["ssh", "box", "true"]).fails_with(1, NOT_LOGGED_IN);
    cli(&home, &["tcp", "echo", "--exec", "true"]).fails_with(1, NOT_LOGGED_IN);
    cli(&home, &["login", "--password-stdin"]).fails_with(1, "which API?");
    let unreachable = run(
        bamf(&home).args([
            "login",
            "--api",
            "https://localhost:1",
            "--user",
            "x",
            "--password-stdin",
        ]),
        "password",
    );
    assert_eq!(unreachable.code, 1, "{unreachable:?}");
    assert!(
        unreachable.stderr.contains("cannot fetch the CA"),
        "{unreachable:?}"
    );
}
