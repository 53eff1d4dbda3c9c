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

use bamf_tests::{
    Agent, Api, Bridge, Output, TempDir, bamf_profile_dir, binary, echo_server, workspace,
};

const BRIDGE_TOKEN: &str = "bamf_bridge-bootstrap-token-for-cli-tests";
const ADMIN_PASSWORD: &str = "admin-password-1";
const DOMAIN: &str = "tunnel.localhost";
/// Any one CLI command.
const COMMAND_DEADLINE: Duration = Duration::from_secs(90);
const NOT_LOGGED_IN: &str = "not logged in (or the login expired): run `bamf login`";

/// The exit statuses of `bamf` (docs/cli.md, "Exit status").
mod status {
    pub(crate) const FAILURE: i32 = 1;
    pub(crate) const USAGE: i32 = 2;
    pub(crate) const AUTH_NEEDED: i32 = 3;
    pub(crate) const DENIED: i32 = 4;
    pub(crate) const NOT_FOUND: i32 = 5;
    pub(crate) const OFFLINE: i32 = 6;
    pub(crate) const UNTRUSTED: i32 = 7;
}

/// Runs `cmd` with `stdin`, killing it at [`COMMAND_DEADLINE`].
fn run(cmd: &mut Command, stdin: &str) -> Output {
    bamf_tests::run_command(cmd, stdin, COMMAND_DEADLINE)
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
        "BAMF_PROFILE",
        "NO_COLOR",
        "CLICOLOR_FORCE",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
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
    api: Api,
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
            api,
            bridge,
            ca_file,
        }
    }

    /// The SHA-256 fingerprint of the operator's copy of the CA, as openssl prints it.
    fn ca_fingerprint(&self) -> String {
        fingerprint_of(&self.ca_file)
    }

    /// The API's access log lines for `path` so far.
    fn requests_to(&self, path: &str) -> usize {
        requests_to(&self.api, path)
    }

    /// `https://localhost:<front port>`.
    fn url(&self) -> String {
        format!("https://localhost:{}", self.bridge.front.port())
    }

    /// A fresh `BAMF_HOME` (not created: the CLI makes it).
    fn home(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("home-{name}"))
    }

    /// `bamf login` with the password on stdin, an explicit `--via`, and the CA's
    /// fingerprint as the administrator would give it.
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
                "--ca-fingerprint",
                &self.ca_fingerprint(),
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

/// The directory of the current profile in `home`.
fn token_of(home: &Path) -> String {
    let text = std::fs::read_to_string(bamf_profile_dir(home).join("token.json")).unwrap();
    parse(&text)["token"].as_str().unwrap().to_owned()
}

/// A certificate file's SHA-256 fingerprint, as `openssl x509 -fingerprint` prints it.
fn fingerprint_of(pem: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(pem)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .to_owned()
}

/// How many requests for `path` the API's access log shows so far.
fn requests_to(api: &Api, path: &str) -> usize {
    api.logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "bamf_api::access" && v["fields"]["path"] == path)
        .count()
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
    cli(&alice, &["users", "ls"])
        .fails_with(status::DENIED, "this needs an administrator (forbidden)");

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

    // `bamf config ssh`: plain OpenSSH and rsync reach `box.<profile>` with no wrapper (and
    // no BAMF variable: the block names the home and the profile); the suffix is stripped
    // before the name reaches the API, which knows only `box`.
    let profile = std::fs::read_to_string(alice.join("current-profile"))
        .unwrap()
        .trim()
        .to_owned();
    let block = cli(&alice, &["config", "ssh"]).ok().stdout;
    for line in [
        format!("Host *.{profile}\n"),
        format!("Host box.{profile}\n    HostKeyAlias box\n"),
        format!("--profile {profile} pipe --strip-suffix .{profile} %h\n"),
    ] {
        assert!(block.contains(&line), "{line:?} in:\n{block}");
    }
    let ssh_config = stack.dir.path().join("ssh_config");
    std::fs::write(&ssh_config, &block).unwrap();
    let config_path = ssh_config.to_str().unwrap();
    let host = format!("{user}@box.{profile}");
    let plain_options = [
        "-F",
        config_path,
        "-i",
        key,
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
    ];
    let plain = run(
        Command::new("ssh")
            .env_remove("BAMF_HOME")
            .args(plain_options)
            .args([host.as_str(), "echo", "plain", "ssh"]),
        "",
    )
    .ok();
    assert_eq!(plain.stdout.trim(), "plain ssh", "{plain:?}");
    // Through the environment's proxy, tunnels too: one CONNECT for the API (one kept
    // connection), one for the bridge.
    let proxy = bamf_tests::ConnectProxy::start();
    let proxied = run(
        bamf(&alice)
            .env("HTTPS_PROXY", format!("http://{}", proxy.addr))
            .args(ssh(&["echo", "proxied"])),
        "",
    )
    .ok();
    assert_eq!(proxied.stdout.trim(), "proxied", "{proxied:?}");
    assert_eq!(
        proxy.targets(),
        [
            stack.bridge.front.to_string(),
            stack.bridge.front.to_string()
        ]
    );
    let rsynced = stack.dir.path().join("rsynced.txt");
    std::fs::write(&upload, "carried by rsync\n").unwrap();
    let remote_shell = format!("ssh {}", plain_options.join(" "));
    run(
        Command::new("rsync").env_remove("BAMF_HOME").args([
            "-e",
            &remote_shell,
            upload.to_str().unwrap(),
            &format!("{host}:{}", rsynced.display()),
        ]),
        "",
    )
    .ok();
    assert_eq!(
        std::fs::read_to_string(&rsynced).unwrap(),
        "carried by rsync\n"
    );
    let theirs = parse(
        &cli(&admin, &["sessions", "ls", "--user", "alice", "--json"])
            .ok()
            .stdout,
    );
    assert!(
        theirs
            .as_array()
            .unwrap()
            .iter()
            .all(|s| ["box", "pg", "echo"].contains(&s["resource"].as_str().unwrap())),
        "the API saw resource names only: {theirs}"
    );

    // Completion lists the resources one may reach, from the API; bash completes them as a
    // user pressing Tab would (a `user@` prefix kept).
    let names = cli(&alice, &["__complete", "resources"]).ok().stdout;
    assert_eq!(names.lines().collect::<Vec<_>>(), ["box", "echo", "pg"]);
    let some = cli(&alice, &["__complete", "resources", "e"]).ok().stdout;
    assert_eq!(some.lines().collect::<Vec<_>>(), ["echo"]);
    let script = stack.dir.path().join("bamf.bash");
    std::fs::write(&script, cli(&alice, &["completions", "bash"]).ok().stdout).unwrap();
    let tab = |words: &str| {
        let line = format!(
            "source {script}; COMP_WORDS=({bamf} {words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             _bamf_dynamic; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script = script.display(),
            bamf = binary("bamf").display(),
        );
        run(
            isolated(Command::new("bash"), &alice).args(["-c", &line]),
            "",
        )
        .ok()
        .stdout
    };
    assert_eq!(tab(&format!("ssh {user}@b")).trim(), format!("{user}@box"));
    assert_eq!(
        tab("tcp ''").lines().collect::<Vec<_>>(),
        ["box", "echo", "pg"]
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
    let echoed = cli(&alice, &["tcp", "echo", "-p", "0", "--exec", &exec]);
    if echoed.code != 0 {
        for l in stack
            .api
            .logs()
            .iter()
            .filter(|l| l.contains("ERROR") || l.contains("\"status\":500"))
        {
            eprintln!("API: {l}");
        }
    }
    let echoed = echoed.ok();
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
    // (Newer than every session so far: earlier ones may still be reported active for a
    // moment, since bridges gather their reports.)
    let newest_before = parse(
        &cli(&admin, &["sessions", "ls", "--user", "alice", "--json"])
            .ok()
            .stdout,
    )[0]["created_at_ms"]
        .as_i64()
        .unwrap_or(0);
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
        let forwarded = active.as_array().and_then(|a| {
            a.iter()
                .find(|s| s["created_at_ms"].as_i64() > Some(newest_before))
        });
        if let Some(id) = forwarded.and_then(|s| s["id"].as_str()) {
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
    cli(&bob, &["pipe", "echo"]).fails_with(status::NOT_FOUND, denied);
    cli(&bob, &["tcp", "echo", "--exec", "true"]).fails_with(status::NOT_FOUND, denied);
    let ssh_denied = run(bamf(&bob).args(ssh(&["echo", "hello"])), "");
    assert_ne!(ssh_denied.code, 0);
    assert!(
        ssh_denied
            .stderr
            .contains("there is no resource 'box' you may reach"),
        "{ssh_denied:?}"
    );
    cli(&alice, &["pipe", "nope"]).fails_with(
        status::NOT_FOUND,
        "there is no resource 'nope' you may reach",
    );

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
        audit["items"]
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
    // Without --via: an API under localhost is dialled at 127.0.0.1. With --yes, a first
    // contact trusts the API's CA without asking, and still shows its fingerprint.
    let first = run(
        bamf(&admin).args([
            "login",
            "--api",
            &stack.url(),
            "--user",
            "admin",
            "--password-stdin",
            "--yes",
        ]),
        ADMIN_PASSWORD,
    )
    .ok();
    let fingerprint = stack.ca_fingerprint();
    assert!(
        first.stderr.contains(&fingerprint),
        "the CA's fingerprint is shown on first use: {first:?} {fingerprint}"
    );
    stack.add_user(&admin, "carol", "carol-password-1", &[]);

    // Wrong password and unknown user: the same words, nothing stored.
    let carol = stack.home("carol");
    let wrong = stack.login(&carol, "carol", "not-her-password").fails_with(
        status::AUTH_NEEDED,
        "login failed: wrong user name or password",
    );
    let unknown = stack
        .login(&carol, "nobody", "not-her-password")
        .fails_with(
            status::AUTH_NEEDED,
            "login failed: wrong user name or password",
        );
    let without_id = |text: &str| text.split(" (request id").next().unwrap().to_owned();
    assert_eq!(without_id(&wrong.stderr), without_id(&unknown.stderr));
    assert!(!carol.join("current-profile").exists() && !carol.join("profiles").exists());

    // A login: private files, a status with expiries.
    stack.login(&carol, "carol", "carol-password-1").ok();
    assert_eq!(mode(&carol), 0o700);
    let profile = bamf_profile_dir(&carol);
    assert_eq!(mode(&profile), 0o700);
    for file in [
        "config.json",
        "token.json",
        "user-key.pem",
        "user-cert.pem",
        "ca.pem",
    ] {
        assert_eq!(mode(&profile.join(file)), 0o600, "{file}");
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
        std::fs::read_to_string(profile.join("user-key.pem")).unwrap(),
    );
    let cert_1 = std::fs::read_to_string(profile.join("user-cert.pem")).unwrap();
    let again = stack.login(&carol, "carol", "carol-password-1").ok();
    assert!(!again.stderr.contains("fingerprint is"), "{again:?}");
    let token_2 = token_of(&carol);
    assert_ne!(token_1, token_2);
    assert_ne!(
        key_1,
        std::fs::read_to_string(profile.join("user-key.pem")).unwrap()
    );
    assert_ne!(
        cert_1,
        std::fs::read_to_string(profile.join("user-cert.pem")).unwrap()
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
        .fails_with(status::AUTH_NEEDED, "wrong user name");
    cli(&carol, &["status"]).ok();

    // Logout: the token is revoked and removed; then every command says so.
    cli(&carol, &["logout"]).ok();
    assert_eq!(stack.token_refused(&token_2), Some(401));
    assert!(!profile.join("token.json").exists() && !profile.join("user-key.pem").exists());
    assert!(profile.join("ca.pem").exists(), "the pin stays");
    cli(&carol, &["status"]).fails_with(status::AUTH_NEEDED, NOT_LOGGED_IN);
    cli(&carol, &["ls"]).fails_with(status::AUTH_NEEDED, NOT_LOGGED_IN);

    // Expired locally, or revoked at the API: the same message, never a panic.
    stack.login(&carol, "carol", "carol-password-1").ok();
    let token_3 = token_of(&carol);
    let mut stored = parse(&std::fs::read_to_string(profile.join("token.json")).unwrap());
    stored["expires_at"] = 1.into();
    std::fs::write(profile.join("token.json"), stored.to_string()).unwrap();
    cli(&carol, &["ls"]).fails_with(status::AUTH_NEEDED, NOT_LOGGED_IN);
    cli(&carol, &["pipe", "anything"]).fails_with(status::AUTH_NEEDED, NOT_LOGGED_IN);
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
    cli(&carol, &["ls"]).fails_with(status::AUTH_NEEDED, NOT_LOGGED_IN);
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

    // Usage errors exit 2; a missing login exits 3 with the message.
    assert_eq!(cli(&home, &["frobnicate"]).code, status::USAGE);
    assert_eq!(cli(&home, &["tcp"]).code, status::USAGE);
    cli(&home, &["--profile", "a/b", "ls"]).fails_with(status::USAGE, "not a profile name");
    cli(&home, &["ls"]).fails_with(status::AUTH_NEEDED, NOT_LOGGED_IN);
    cli(&home, &["ssh", "box", "true"]).fails_with(status::AUTH_NEEDED, NOT_LOGGED_IN);
    cli(&home, &["tcp", "echo", "--exec", "true"]).fails_with(status::AUTH_NEEDED, NOT_LOGGED_IN);
    cli(&home, &["login", "--password-stdin"]).fails_with(status::USAGE, "which API?");
    cli(&home, &["--profile", "nowhere", "ls"])
        .fails_with(status::NOT_FOUND, "there is no profile 'nowhere'");
    let bad_proxy = run(
        bamf(&home)
            .env("HTTPS_PROXY", "socks5://proxy:1080")
            .args(["ls"]),
        "",
    );
    bad_proxy.fails_with(status::USAGE, "HTTPS_PROXY");
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
    unreachable.fails_with(status::OFFLINE, "cannot reach the API");
}

/// Runs the shell line `command` on a terminal (`script(1)` gives it one), `input` typed
/// into it; everything it prints is in `stdout`, and its status is the command's.
fn on_terminal(home: &Path, command: &str, input: &str) -> Output {
    let mut cmd = isolated(Command::new("script"), home);
    cmd.arg("-qec").arg(command).arg("/dev/null");
    run(&mut cmd, input)
}

/// A bare API on SQLite (another deployment, with a CA of its own).
fn other_api(dir: &Path) -> Api {
    let url = format!("sqlite://{}?mode=rwc", dir.join("other.db").display());
    Api::start(&[
        "--database-url",
        &url,
        "--admin-password",
        ADMIN_PASSWORD,
        "--tunnel-domain",
        DOMAIN,
    ])
    .unwrap()
}

/// First contact like ssh: the CA's fingerprint is shown and confirmed before any
/// credential goes out; a replaced CA is refused loudly; a publicly certified API needs no
/// question.
#[test]
fn first_contact_is_confirmed_before_any_credential_is_sent() {
    let stack = Stack::start("cli-trust");
    let fingerprint = stack.ca_fingerprint();
    let (url, via) = (stack.url(), stack.bridge.front.to_string());
    let terminal_login = format!(
        "{} login --api {url} --via {via} --user admin",
        binary("bamf").display()
    );
    let batch_login = |home: &Path, extra: &[&str]| {
        let mut cmd = bamf(home);
        cmd.args([
            "login",
            "--api",
            &url,
            "--via",
            &via,
            "--user",
            "admin",
            "--password-stdin",
        ])
        .args(extra);
        run(&mut cmd, ADMIN_PASSWORD)
    };
    let logins = || stack.requests_to("/api/v1/auth/login");

    // On a terminal, answering "no": the fingerprint was shown, nothing was sent, nothing
    // was kept.
    let home = stack.home("user");
    let no = on_terminal(&home, &terminal_login, "no\n");
    assert_eq!(no.code, status::UNTRUSTED, "{no:?}");
    assert!(
        no.stdout.contains(&fingerprint) && no.stdout.contains("Trust this CA"),
        "{no:?}"
    );
    assert!(no.stdout.contains("nothing was sent"), "{no:?}");
    assert!(
        stack.requests_to("/api/v1/ca") >= 1,
        "the CA was fetched, so the access log shows requests"
    );
    assert_eq!(logins(), 0, "no login request reached the API");
    assert!(!home.join("profiles").exists(), "nothing kept");

    // No terminal and no flag: refused, saying what to do; a wrong fingerprint: refused.
    let batch = batch_login(&home, &[]).fails_with(status::UNTRUSTED, "--ca-fingerprint");
    assert!(batch.stderr.contains(&fingerprint), "{batch:?}");
    let wrong = "AB:".repeat(31) + "CD";
    batch_login(&home, &["--ca-fingerprint", &wrong])
        .fails_with(status::UNTRUSTED, "given with --ca-fingerprint");
    assert_eq!(logins(), 0, "still no login request");

    // Answering "yes": then the password, asked on the terminal; the CA is pinned.
    let yes = on_terminal(&home, &terminal_login, &format!("yes\n{ADMIN_PASSWORD}\n"));
    assert_eq!(yes.code, 0, "{yes:?}");
    assert_eq!(logins(), 1);
    let pin = bamf_profile_dir(&home).join("ca.pem");
    assert_eq!(fingerprint_of(&pin), fingerprint);
    // Later logins verify against the pin: no question, no flag, no terminal.
    run(
        bamf(&home).args(["login", "--user", "admin", "--password-stdin"]),
        ADMIN_PASSWORD,
    )
    .ok();
    assert_eq!(logins(), 2);

    // The same API presenting another CA (another deployment answers at its address):
    // refused loudly with both fingerprints and what to do; --yes does not override it.
    let other = other_api(stack.dir.path());
    let other_dir = stack.dir.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other_fingerprint = fingerprint_of(&other.fetch_ca(&other_dir));
    assert_ne!(other_fingerprint, fingerprint);
    let other_via = other.addr.to_string();
    let relogin = |extra: &[&str]| {
        let mut cmd = bamf(&home);
        cmd.args([
            "login",
            "--via",
            &other_via,
            "--user",
            "admin",
            "--password-stdin",
        ])
        .args(extra);
        run(&mut cmd, ADMIN_PASSWORD)
    };
    let changed = relogin(&[]).fails_with(status::UNTRUSTED, "HAS CHANGED");
    for word in [
        fingerprint.as_str(),
        other_fingerprint.as_str(),
        "nothing was sent",
        "bamf profiles rm",
    ] {
        assert!(changed.stderr.contains(word), "{word}: {changed:?}");
    }
    relogin(&["--yes"]).fails_with(status::UNTRUSTED, "HAS CHANGED");
    let on_tty = on_terminal(
        &home,
        &format!(
            "{} login --via {other_via} --user admin",
            binary("bamf").display()
        ),
        "yes\n",
    );
    assert_eq!(
        on_tty.code,
        status::UNTRUSTED,
        "no question either: {on_tty:?}"
    );
    assert_eq!(requests_to(&other, "/api/v1/auth/login"), 0);
    assert_eq!(fingerprint_of(&pin), fingerprint, "the pin is unchanged");
    // Once the administrator confirms the new CA's fingerprint, it replaces the pin.
    relogin(&["--ca-fingerprint", &other_fingerprint]).ok();
    assert_eq!(requests_to(&other, "/api/v1/auth/login"), 1);
    assert_eq!(fingerprint_of(&pin), other_fingerprint);

    // A publicly certified API (the system's roots verify it; here the BAMF CA stands in
    // for a public root, as SSL_CERT_FILE): no question and no flag.
    let public = stack.home("public");
    let mut cmd = bamf(&public);
    cmd.env("SSL_CERT_FILE", &stack.ca_file).args([
        "--json",
        "login",
        "--api",
        &url,
        "--via",
        &via,
        "--user",
        "admin",
        "--password-stdin",
    ]);
    let answer = parse(&run(&mut cmd, ADMIN_PASSWORD).ok().stdout);
    assert_eq!(answer["trust"], "public", "{answer}");
    assert_eq!(answer["ca_fingerprint"], fingerprint.as_str());
}

/// One profile per API, each with its own pin, key, certificate and token: two APIs used
/// alternately without logging in again; the single-profile layout of earlier versions is
/// moved into a profile.
#[test]
fn two_apis_in_two_profiles_are_used_alternately() {
    let a = Stack::start("cli-profiles");
    let b = other_api(a.dir.path());
    let b_ca_dir = a.dir.path().join("b");
    std::fs::create_dir_all(&b_ca_dir).unwrap();
    let b_ca = b.fetch_ca(&b_ca_dir);
    let home = a.home("user");
    a.login(&home, "admin", ADMIN_PASSWORD).ok();
    let b_url = format!("https://localhost:{}", b.addr.port());
    run(
        bamf(&home).args([
            "login",
            "--api",
            &b_url,
            "--via",
            &b.addr.to_string(),
            "--user",
            "admin",
            "--password-stdin",
            "--ca-file",
            b_ca.to_str().unwrap(),
        ]),
        ADMIN_PASSWORD,
    )
    .ok();
    let (a_name, b_name) = (
        format!("localhost-{}", a.bridge.front.port()),
        format!("localhost-{}", b.addr.port()),
    );
    let listed = parse(&cli(&home, &["profiles", "ls", "--json"]).ok().stdout);
    let names: Vec<_> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_owned(), p["current"] == true))
        .collect();
    let mut expected = vec![(a_name.clone(), false), (b_name.clone(), true)];
    expected.sort();
    assert_eq!(names, expected, "{listed}");
    let table = cli(&home, &["profiles", "ls"]).ok().stdout;
    assert!(table.contains(&a_name) && table.contains(&b_url), "{table}");

    // Each its own files.
    let (a_dir, b_dir) = (
        home.join("profiles").join(&a_name),
        home.join("profiles").join(&b_name),
    );
    for file in ["ca.pem", "user-key.pem", "user-cert.pem", "token.json"] {
        assert_ne!(
            std::fs::read_to_string(a_dir.join(file)).unwrap(),
            std::fs::read_to_string(b_dir.join(file)).unwrap(),
            "{file}"
        );
    }

    // Alternately, by flag, by variable, and by switching: never a new login.
    let logins = (
        a.requests_to("/api/v1/auth/login"),
        requests_to(&b, "/api/v1/auth/login"),
    );
    let status_of = |cmd: &mut Command| {
        let out = run(cmd.args(["status", "--json"]), "").ok();
        let v = parse(&out.stdout);
        assert!(v["api_error"].is_null(), "{v}");
        v["api"].as_str().unwrap().to_owned()
    };
    for _ in 0..2 {
        assert_eq!(status_of(bamf(&home).args(["--profile", &a_name])), a.url());
        assert_eq!(status_of(bamf(&home).env("BAMF_PROFILE", &b_name)), b_url);
        assert_eq!(status_of(&mut bamf(&home)), b_url, "the current one");
    }
    cli(&home, &["profiles", "use", &a_name]).ok();
    assert_eq!(status_of(&mut bamf(&home)), a.url());
    cli(&home, &["ls"]).ok();
    assert_eq!(
        logins,
        (
            a.requests_to("/api/v1/auth/login"),
            requests_to(&b, "/api/v1/auth/login"),
        ),
        "no login again"
    );

    // Removing a profile logs it out at its API and forgets it, pin included.
    let removed = parse(
        &cli(&home, &["--json", "profiles", "rm", &b_name])
            .ok()
            .stdout,
    );
    assert_eq!(removed["removed"], b_name.as_str());
    assert!(!b_dir.exists());
    assert_eq!(requests_to(&b, "/api/v1/auth/logout"), 1);
    cli(&home, &["--profile", &b_name, "status"])
        .fails_with(status::NOT_FOUND, "there is no profile");
    assert_eq!(status_of(&mut bamf(&home)), a.url(), "the other stays");

    // An earlier version's home (one login's files directly in it) moves into a profile.
    let old = a.home("old");
    std::fs::create_dir_all(&old).unwrap();
    for file in [
        "config.json",
        "token.json",
        "user-key.pem",
        "user-cert.pem",
        "ca.pem",
    ] {
        std::fs::copy(a_dir.join(file), old.join(file)).unwrap();
    }
    assert_eq!(status_of(&mut bamf(&old)), a.url());
    assert!(!old.join("token.json").exists() && !old.join("config.json").exists());
    assert!(
        old.join("profiles")
            .join(&a_name)
            .join("token.json")
            .exists()
    );
    assert_eq!(
        std::fs::read_to_string(old.join("current-profile"))
            .unwrap()
            .trim(),
        a_name
    );
}

/// Every exit status but a child's (asserted with ssh, psql and `tcp --exec` above), errors
/// with the API's request id, `--json` for mutations and errors, and `--debug`.
#[test]
fn exit_statuses_request_ids_json_and_debug() {
    let mut stack = Stack::start("cli-exit");
    let admin = stack.home("admin");
    stack.login(&admin, "admin", ADMIN_PASSWORD).ok();
    stack.add_user(&admin, "dave", "dave-password-1", &[]);

    // 1: a conflict.
    run(
        bamf(&admin).args(["users", "add", "dave", "--password-stdin"]),
        "another-password-1",
    )
    .fails_with(status::FAILURE, "(conflict)");
    // 2: usage.
    cli(&admin, &["pipe", "Not a name!"]).fails_with(status::USAGE, "is not a resource name");
    cli(&admin, &["tcp", "echo", "--port", "x"]).fails_with(status::USAGE, "invalid value");
    // 3: authentication needed.
    let dave = stack.home("dave");
    stack
        .login(&dave, "dave", "not-daves-password")
        .fails_with(status::AUTH_NEEDED, "wrong user name or password");
    stack.login(&dave, "dave", "dave-password-1").ok();
    // 4: denied, with the API's request id, which its log has too.
    let denied = cli(&dave, &["users", "ls"]).fails_with(status::DENIED, "(request id ");
    let id = denied
        .stderr
        .split("(request id ")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        stack.api.logs().iter().any(|l| l.contains(&id)),
        "request id {id} is in the API's log"
    );
    let as_json = cli(&dave, &["--json", "users", "ls"]);
    assert_eq!(as_json.code, status::DENIED);
    assert!(as_json.stdout.is_empty(), "{as_json:?}");
    let error = parse(as_json.stderr.trim());
    assert_eq!(error["error"]["kind"], "denied", "{error}");
    assert_eq!(error["error"]["exit_status"], status::DENIED);
    assert!(
        error["error"]["request_id"]
            .as_str()
            .is_some_and(|r| !r.is_empty() && r != id),
        "{error}"
    );
    // 5: not found.
    cli(&dave, &["pipe", "nothing-here"]).fails_with(status::NOT_FOUND, "no resource");
    cli(&admin, &["agents", "rm", "no-such-agent"]).fails_with(status::NOT_FOUND, "no agent");
    // 7: not trusted.
    let wrong = "AB:".repeat(31) + "CD";
    run(
        bamf(&stack.home("eve")).args([
            "login",
            "--api",
            &stack.url(),
            "--via",
            &stack.bridge.front.to_string(),
            "--user",
            "dave",
            "--password-stdin",
            "--ca-fingerprint",
            &wrong,
        ]),
        "dave-password-1",
    )
    .fails_with(status::UNTRUSTED, "nothing was sent");

    // --json on mutations: what they did.
    let json = |args: &[&str], stdin: &str| {
        let mut cmd = bamf(&admin);
        cmd.arg("--json").args(args);
        parse(&run(&mut cmd, stdin).ok().stdout)
    };
    let created = json(
        &["users", "add", "erin", "--password-stdin"],
        "erin-password-1",
    );
    assert_eq!(created["created"], "user");
    assert_eq!(created["user"]["name"], "erin");
    let role = json(&["roles", "add", "ops", "--allow-names", "ops-*"], "");
    assert_eq!(role["created"], "role");
    assert_eq!(role["role"]["name"], "ops");
    assert_eq!(json(&["bind", "erin", "ops"], "")["bound"]["role"], "ops");
    assert_eq!(
        json(&["unbind", "erin", "ops"], "")["unbound"]["user"],
        "erin"
    );
    assert_eq!(json(&["roles", "rm", "ops"], "")["deleted"], "role");
    assert_eq!(
        json(
            &["users", "passwd", "erin", "--password-stdin"],
            "erin-password-2"
        )["updated"],
        "password"
    );
    assert_eq!(json(&["users", "rm", "erin"], "")["name"], "erin");
    let audit = json(&["audit", "--limit", "1"], "");
    assert_eq!(audit["items"].as_array().unwrap().len(), 1, "{audit}");
    assert!(
        audit["next_cursor"].is_string(),
        "the cursor is in the answer"
    );

    // --debug: each request's method, path, status and request id; never the token.
    let debug = cli(&dave, &["--debug", "status"]).ok();
    assert!(
        debug.stderr.contains("GET /api/v1/whoami -> 200") && debug.stderr.contains("request id"),
        "{debug:?}"
    );
    assert!(!debug.stderr.contains(&token_of(&dave)), "{debug:?}");
    let out = parse(&cli(&dave, &["--json", "logout"]).ok().stdout);
    assert_eq!(out["logged_out"], true);

    // 6: offline: the API cannot be reached.
    stack.bridge.signal("KILL");
    assert!(stack.bridge.wait(Duration::from_secs(10)).is_some());
    cli(&admin, &["ls"]).fails_with(status::OFFLINE, "cannot reach the API");
}

/// `HTTPS_PROXY` carries the CLI's API calls (the proxy sees its `CONNECT`), `NO_PROXY`
/// bypasses it, and a command keeps one connection for all its requests.
#[test]
fn api_calls_go_through_the_environments_proxy_on_one_connection() {
    let stack = Stack::start("cli-proxy");
    let proxy = bamf_tests::ConnectProxy::start();
    let proxy_url = format!("http://{}", proxy.addr);
    let home = stack.home("admin");
    let via = stack.bridge.front.to_string();
    let through = |args: &[&str], stdin: &str| {
        let mut cmd = bamf(&home);
        cmd.env("HTTPS_PROXY", &proxy_url).args(args);
        run(&mut cmd, stdin)
    };
    through(
        &[
            "login",
            "--api",
            &stack.url(),
            "--via",
            &via,
            "--user",
            "admin",
            "--password-stdin",
            "--ca-fingerprint",
            &stack.ca_fingerprint(),
        ],
        ADMIN_PASSWORD,
    )
    .ok();
    let tunnels = proxy.targets();
    assert!(!tunnels.is_empty(), "the proxy saw the login");
    assert!(tunnels.iter().all(|t| *t == via), "{tunnels:?}");

    // Several requests, one connection.
    let before = proxy.targets().len();
    let audit = through(&["--debug", "audit", "--all", "--limit", "1", "--json"], "").ok();
    let requests = audit.stderr.matches("GET /api/v1/audit").count();
    assert!(requests >= 2, "{audit:?}");
    assert_eq!(
        proxy.targets().len() - before,
        1,
        "one connection for {requests} requests"
    );
    assert_eq!(
        audit.stderr.matches("kept connection").count(),
        requests - 1,
        "{audit:?}"
    );

    // NO_PROXY: directly.
    let before = proxy.targets().len();
    let mut direct = bamf(&home);
    direct
        .env("HTTPS_PROXY", &proxy_url)
        .env("NO_PROXY", "example.com,localhost")
        .arg("ls");
    run(&mut direct, "").ok();
    assert_eq!(proxy.targets().len(), before, "NO_PROXY bypasses the proxy");
}

/// A single node keeps its logins in its database: restarted, it still accepts them.
#[test]
fn a_single_node_restarted_keeps_users_logged_in() {
    let dir = TempDir::new("cli-restart");
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("bamf.db").display());
    let args = |listen: &str| {
        vec![
            "--listen".to_owned(),
            listen.to_owned(),
            "--database-url".to_owned(),
            db.clone(),
            "--admin-password".to_owned(),
            ADMIN_PASSWORD.to_owned(),
        ]
    };
    let start = |listen: &str| {
        let owned = args(listen);
        let borrowed: Vec<&str> = owned.iter().map(String::as_str).collect();
        Api::start(&borrowed).unwrap()
    };
    let api = start("127.0.0.1:0");
    let addr = api.addr;
    let ca = api.fetch_ca(dir.path());
    let home = dir.path().join("home");
    run(
        bamf(&home).args([
            "login",
            "--api",
            &format!("https://localhost:{}", addr.port()),
            "--via",
            &addr.to_string(),
            "--user",
            "admin",
            "--password-stdin",
            "--ca-file",
            ca.to_str().unwrap(),
        ]),
        ADMIN_PASSWORD,
    )
    .ok();
    let roles = |home: &Path| {
        let v = parse(&cli(home, &["status", "--json"]).ok().stdout);
        assert!(v["api_error"].is_null(), "{v}");
        v["roles"].clone()
    };
    assert!(roles(&home).as_array().unwrap().contains(&"admin".into()));
    drop(api);
    cli(&home, &["ls"]).fails_with(status::OFFLINE, "cannot reach the API");

    let api = start(&addr.to_string());
    assert_eq!(api.addr, addr);
    assert!(
        roles(&home).as_array().unwrap().contains(&"admin".into()),
        "still logged in after the restart"
    );
    cli(&home, &["users", "ls"]).ok();
    assert_eq!(requests_to(&api, "/api/v1/auth/login"), 0, "no new login");
}

/// Login failure limits hold across API replicas when Redis is configured: 10 wrong
/// passwords spread over two replicas, and the next attempt is refused on either, even with
/// the right password (each replica alone saw only 5).
#[test]
fn wrong_passwords_spread_over_two_replicas_trigger_the_limit() {
    let dir = TempDir::new("cli-limits");
    let pg = bamf_tests::PgSchema::new("cli_limits");
    let redis = bamf_tests::redis_db(7);
    let start = || {
        Api::start(&[
            "--database-url",
            &pg.url,
            "--redis-url",
            &redis,
            "--admin-password",
            ADMIN_PASSWORD,
        ])
        .unwrap()
    };
    let first = start();
    let second = start();
    let ca = first.fetch_ca(dir.path());
    let home = dir.path().join("home");
    let login = |api: &Api, password: &str| {
        run(
            bamf(&home).args([
                "login",
                "--api",
                &format!("https://localhost:{}", api.addr.port()),
                "--via",
                &api.addr.to_string(),
                "--user",
                "admin",
                "--password-stdin",
                "--ca-file",
                ca.to_str().unwrap(),
            ]),
            password,
        )
    };
    for attempt in 0..10 {
        let api = if attempt % 2 == 0 { &first } else { &second };
        login(api, "not-the-password").fails_with(status::AUTH_NEEDED, "wrong user name");
    }
    for api in [&first, &second] {
        login(api, ADMIN_PASSWORD).fails_with(status::DENIED, "too many failed attempts");
    }
    assert_eq!(requests_to(&first, "/api/v1/auth/login"), 6);
    assert_eq!(requests_to(&second, "/api/v1/auth/login"), 6);
}
