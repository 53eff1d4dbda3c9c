//! Single sign-on end to end: a real OpenID provider (the `oidc-provider` package, started
//! by the test on 127.0.0.1 with a configuration it writes, from `tests/oidc`, installed by
//! `npm ci`), Debian's `chromium` driven headless by `playwright-core` as the CLI's
//! `$BROWSER`, and the real `bamf-api`, `bamf-bridge`, `bamf-agent` and `bamf`.
//!
//! Password login is off (`local.enabled = false`) except for the break-glass
//! administrator. A user signs in with `bamf login --sso`; the provider's `groups` claim
//! maps to a role; `bamf ls` and `bamf tcp` follow it; taking the user out of the group
//! takes the role away at the next sign-in. Replayed states, a wrong client verifier and
//! an unknown provider are refused, and a provider that rotates its signing key is
//! followed. A bot (machine identity) joins with a one-time token, renews its 20 s
//! credentials on its own past their first lifetime, and is refused once deleted.
#![allow(clippy::unwrap_used)] // a test binary: a failed unwrap is a failed test

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bamf_tests::{
    Agent, Api, Bridge, Output, TempDir, bamf_profile_dir, binary, echo_server, workspace,
};

const BRIDGE_TOKEN: &str = "bamf_bridge-bootstrap-token-for-sso-tests";
const ADMIN_PASSWORD: &str = "admin-password-1";
const DOMAIN: &str = "tunnel.localhost";
const CLIENT_ID: &str = "bamf-test";
const CLIENT_SECRET: &str = "client-secret-for-the-sso-test-0123456789";
const COMMAND_DEADLINE: Duration = Duration::from_secs(120);

/// Runs `cmd` with `stdin`, killing it at [`COMMAND_DEADLINE`].
fn run(cmd: &mut Command, stdin: &str) -> Output {
    bamf_tests::run_command(cmd, stdin, COMMAND_DEADLINE)
}

fn parse(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `tests/oidc`, with its npm packages installed (scripts/test runs `npm ci` there).
fn oidc_dir() -> PathBuf {
    let dir = workspace().join("tests/oidc");
    assert!(
        dir.join("node_modules/oidc-provider").is_dir()
            && dir.join("node_modules/playwright-core").is_dir(),
        "the OpenID provider and playwright-core are not installed: run `npm ci` in {} \
         (scripts/test does)",
        dir.display()
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "no chromium at {chromium}: apt-get install -y chromium (scripts/test does)"
    );
    dir
}

/// The OpenID provider process.
struct Provider {
    child: Child,
    issuer: String,
    lines: std::sync::mpsc::Receiver<String>,
    users_file: PathBuf,
}

impl Provider {
    fn start(dir: &Path, users: &serde_json::Value) -> Self {
        let oidc = oidc_dir();
        let users_file = dir.join("idp-users.json");
        std::fs::write(&users_file, users.to_string()).unwrap();
        let config = dir.join("idp.json");
        std::fs::write(
            &config,
            serde_json::json!({"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                               "users_file": users_file})
            .to_string(),
        )
        .unwrap();
        let mut child = Command::new("node")
            .arg(oidc.join("provider.mjs"))
            .arg(&config)
            .current_dir(&oidc)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the OpenID provider did not start");
        let issuer = first.strip_prefix("ISSUER ").unwrap().to_owned();
        assert!(issuer.starts_with("http://127.0.0.1:"), "{issuer}");
        Self {
            child,
            issuer,
            lines,
            users_file,
        }
    }

    fn set_users(&self, users: &serde_json::Value) {
        std::fs::write(&self.users_file, users.to_string()).unwrap();
    }

    /// A new signing key; returns its id.
    fn rotate(&self) -> String {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-USR2", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .expect("the provider did not rotate its key");
            if let Some(kid) = line.strip_prefix("ROTATED ") {
                return kid.to_owned();
            }
            eprintln!("provider: {line}");
        }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// API (password login off but for the break-glass admin, one provider), one bridge whose
/// front door serves the API and the tunnels, an agent with two echo resources.
struct Stack {
    dir: TempDir,
    idp: Provider,
    api: Api,
    bridge: Bridge,
    _agent: Option<Agent>,
    ca_file: PathBuf,
}

impl Stack {
    fn start(tag: &str, users: &serde_json::Value) -> Self {
        let dir = TempDir::new(tag);
        let idp = Provider::start(dir.path(), users);
        let secret = dir.path().join("client_secret");
        std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).unwrap();
        let auth = dir.path().join("auth.toml");
        std::fs::write(
            &auth,
            format!(
                r#"[local]
enabled = false
break_glass_users = ["admin"]

[sso]
default_provider = "test-idp"

[sso.oidc.test-idp]
issuer_url = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret_file = "{secret}"
scopes = ["openid", "profile", "email", "groups"]

[[sso.oidc.test-idp.role_rules]]
value = "ops"
roles = ["prod-access"]
"#,
                issuer = idp.issuer,
                secret = secret.display(),
            ),
        )
        .unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("bamf.db").display());
        let auth_arg = auth.display().to_string();
        let api = Api::start_with_env(
            &[
                "--database-url",
                &url,
                "--admin-password",
                ADMIN_PASSWORD,
                "--tunnel-domain",
                DOMAIN,
                "--auth-config",
                &auth_arg,
                "--bot-credential-lifetime",
                "20s",
            ],
            &[("BAMF_BRIDGE_JOIN_TOKEN", BRIDGE_TOKEN)],
        )
        .unwrap();
        let ca_file = api.fetch_ca(dir.path());
        let route = format!("localhost={}", api.addr);
        let bridge = Bridge::start_tunnel(
            0,
            DOMAIN,
            &api,
            &ca_file,
            &dir.path().join("bridge"),
            BRIDGE_TOKEN,
            &["--route", &route],
        )
        .unwrap();
        let mut stack = Self {
            dir,
            idp,
            api,
            bridge,
            _agent: None,
            ca_file,
        };
        // Break glass: the bootstrap administrator still signs in with a password.
        let admin = stack.home("admin");
        stack.password_login(&admin, "admin", ADMIN_PASSWORD).ok();
        stack
            .cli(
                &admin,
                &["roles", "add", "prod-access", "--allow-label", "env=prod"],
            )
            .ok();
        stack._agent = Some(stack.start_agent());
        let deadline = Instant::now() + Duration::from_secs(20);
        while stack.listed(&admin) != ["dev-echo", "prod-echo"] {
            assert!(Instant::now() < deadline, "resources not listed");
            std::thread::sleep(Duration::from_millis(200));
        }
        stack
    }

    fn url(&self) -> String {
        format!("https://localhost:{}", self.bridge.front.port())
    }

    /// An API client trusting the stack's CA, and a runtime to drive it from a plain test.
    fn api(&self) -> (bamf_client::https::Api, tokio::runtime::Runtime) {
        let ca = std::fs::read_to_string(&self.ca_file).unwrap();
        let tls = bamf_client::tls_config(&ca, None, &[b"http/1.1"]).unwrap();
        let api = bamf_client::https::Api::new(&self.url(), tls)
            .unwrap()
            .connect_to(Some(self.bridge.front));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        (api, runtime)
    }

    fn home(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("home-{name}"))
    }

    fn bamf(&self, home: &Path) -> Command {
        let mut cmd = Command::new(binary("bamf"));
        cmd.env("BAMF_HOME", home);
        for name in [
            "BAMF_API",
            "BAMF_VIA",
            "BAMF_USER",
            "NO_COLOR",
            "CLICOLOR_FORCE",
            "BROWSER",
        ] {
            cmd.env_remove(name);
        }
        cmd
    }

    fn cli(&self, home: &Path, args: &[&str]) -> Output {
        run(self.bamf(home).args(args), "")
    }

    fn password_login(&self, home: &Path, user: &str, password: &str) -> Output {
        let via = self.bridge.front.to_string();
        run(
            self.bamf(home).args([
                "login",
                "--api",
                &self.url(),
                "--via",
                &via,
                "--ca-file",
                &self.ca_file.display().to_string(),
                "--user",
                user,
                "--password-stdin",
            ]),
            &format!("{password}\n"),
        )
    }

    /// `bamf login --sso [provider]`, the browser signing in as `login`.
    fn sso_login(&self, home: &Path, login: &str, provider: Option<&str>) -> Output {
        let via = self.bridge.front.to_string();
        let browser = format!("node {}", oidc_dir().join("browser.mjs").display());
        let mut cmd = self.bamf(home);
        cmd.args([
            "login",
            "--api",
            &self.url(),
            "--via",
            &via,
            "--ca-file",
            &self.ca_file.display().to_string(),
            "--sso",
        ]);
        if let Some(p) = provider {
            cmd.arg(p);
        }
        cmd.env("BROWSER", browser)
            .env("BAMF_TEST_SSO_LOGIN", login)
            .env("BAMF_TEST_SSO_PASSWORD", "any-password");
        run(&mut cmd, "")
    }

    fn start_agent(&self) -> Agent {
        let admin = self.home("admin");
        let token = self
            .cli(
                &admin,
                &["join-tokens", "create", "--kind", "agent", "--ttl", "10m"],
            )
            .ok()
            .stdout
            .trim()
            .to_owned();
        let echo = echo_server();
        let front = self.bridge.front;
        let config = self.dir.path().join("agent.toml");
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
name = "prod-echo"
kind = "tcp"
address = "{echo}"
labels = {{ env = "prod" }}

[[resources]]
name = "dev-echo"
kind = "tcp"
address = "{echo}"
labels = {{ env = "dev" }}
"#,
                port = front.port(),
                ca = self.ca_file.display(),
                data = self.dir.path().join("agent").display(),
            ),
        )
        .unwrap();
        let mut agent = Agent::start(&config, &[("BAMF_JOIN_TOKEN", &token)]).unwrap();
        agent
            .wait_message("command stream connected", Duration::from_secs(20))
            .unwrap();
        agent
    }

    /// Names of the resources `home`'s user may reach (waits for them to be online).
    fn listed(&self, home: &Path) -> Vec<String> {
        let listed = parse(&self.cli(home, &["ls", "--json"]).ok().stdout);
        let mut names: Vec<String> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    }
}

/// Sends `hello` through `bamf tcp RESOURCE` and expects it back from the echo service.
const ECHO_ONCE: &str = r#"
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
s.sendall(b"hello through sso")
s.shutdown(socket.SHUT_WR)
got = b""
while True:
    b = s.recv(4096)
    if not b:
        break
    got += b
print(got.decode())
"#;

fn alice(groups: &[&str]) -> serde_json::Value {
    serde_json::json!({"alice": {"email": "alice@example.com", "groups": groups}})
}

#[test]
fn sso_login_maps_groups_to_roles_and_password_login_is_refused() {
    let stack = Stack::start("sso-e2e", &alice(&["ops", "staff"]));
    let admin = stack.home("admin");

    // Password login is off: a clear refusal naming single sign-on, and audited.
    let bob = stack.home("bob");
    stack
        .password_login(&bob, "bob", "some-password-1")
        .fails("password login is disabled on this server: sign in with single sign-on");

    // bamf login --sso: the browser signs in at the provider's page; groups -> roles.
    let home = stack.home("alice");
    let out = stack.sso_login(&home, "alice", None).ok();
    assert!(out.stderr.contains("logged in to"), "{out:#?}");
    assert!(
        out.stderr.contains("http://127.0.0.1:"),
        "the URL is always printed: {out:#?}"
    );
    let whoami =
        parse(&std::fs::read_to_string(bamf_profile_dir(&home).join("token.json")).unwrap());
    assert_eq!(whoami["user"], "alice");
    assert_eq!(stack.listed(&home), ["prod-echo"]);
    let script = stack.dir.path().join("echo_once.py");
    std::fs::write(&script, ECHO_ONCE).unwrap();
    let exec = format!("python3 {} {{port}}", script.display());
    let echoed = stack
        .cli(&home, &["tcp", "prod-echo", "-p", "0", "--exec", &exec])
        .ok();
    assert!(echoed.stdout.contains("hello through sso"), "{echoed:#?}");
    stack
        .cli(&home, &["tcp", "dev-echo", "-p", "0", "--exec", &exec])
        .fails("there is no resource 'dev-echo' you may reach");
    // The SSO user has no password.
    stack
        .password_login(&stack.home("alice-pw"), "alice", "any-password")
        .fails("password login is disabled");

    // The provider rotates its signing key: the API fetches the new keys (after its
    // minimum interval between fetches).
    let kid = stack.idp.rotate();
    std::thread::sleep(Duration::from_secs(11));
    // Out of the ops group: the next sign-in takes the role away.
    stack.idp.set_users(&alice(&["staff"]));
    stack.sso_login(&home, "alice", Some("test-idp")).ok();
    assert!(
        stack.listed(&home).is_empty(),
        "role kept after leaving the group"
    );
    stack
        .cli(&home, &["tcp", "prod-echo", "-p", "0", "--exec", &exec])
        .fails("there is no resource 'prod-echo' you may reach");
    // Fetched at the first sign-in, and again for the new key id.
    let fetches = stack
        .api
        .logs()
        .iter()
        .filter(|l| l.contains("fetched the provider's signing keys"))
        .count();
    assert_eq!(
        fetches, 2,
        "the rotated key ({kid}) was not fetched once more"
    );

    // An unknown provider is refused before any browser opens.
    stack
        .sso_login(&stack.home("nobody"), "alice", Some("nope"))
        .fails("unknown_provider");

    // Every attempt is audited with the provider and the outcome; no code, state or token
    // appears in the audit log or the API's log.
    let audit = stack
        .cli(
            &admin,
            &["audit", "--kind", "auth.sso", "--json", "--limit", "50"],
        )
        .ok();
    let events = parse(&audit.stdout);
    let outcomes: Vec<String> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["outcome"].as_str().unwrap(),
                e["detail"]["provider"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert!(
        outcomes.contains(&"allowed:test-idp".to_owned()),
        "{outcomes:?}"
    );
    assert!(
        outcomes.iter().any(|o| o.starts_with("denied:nope")),
        "{outcomes:?}"
    );
    let login = stack
        .cli(&admin, &["audit", "--kind", "auth.login", "--json"])
        .ok();
    assert!(login.stdout.contains("local_login_disabled"), "{login:#?}");
    let token = parse(
        &std::fs::read_to_string(bamf_profile_dir(&home).join("token.json")).unwrap(),
    )["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let logs = stack.api.logs().join("\n");
    assert!(!logs.contains(&token) && !audit.stdout.contains(&token));
    assert!(!logs.contains(CLIENT_SECRET) && !audit.stdout.contains(CLIENT_SECRET));
}

/// The flow driven directly against the API, with the browser and a loopback listener of
/// the test's own: a state is used once, and the client's PKCE verifier is required.
#[test]
fn sso_states_are_used_once_and_need_the_clients_verifier() {
    let stack = Stack::start("sso-replay", &alice(&["ops"]));
    let (api, runtime) = stack.api();

    // The browser comes back to our own listener; we read code and state from it.
    let sign_in = |verifier: &str| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let redirect_uri = format!(
            "http://127.0.0.1:{}/callback",
            listener.local_addr().unwrap().port()
        );
        let challenge = bamf_api::sso::challenge(verifier);
        let begin = runtime
            .block_on(api.sso_begin(&bamf_proto::api::SsoBeginRequest {
                provider: None,
                redirect_uri,
                code_challenge: challenge,
            }))
            .unwrap();
        let url = begin.authorization_url.clone();
        let oidc = oidc_dir();
        let browser = std::thread::spawn(move || {
            Command::new("node")
                .arg(oidc.join("browser.mjs"))
                .arg(url)
                .env("BAMF_TEST_SSO_LOGIN", "alice")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
        });
        listener.set_nonblocking(false).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).unwrap();
            assert!(n > 0);
            head.extend_from_slice(&buf[..n]);
        }
        let _ = conn.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Length: 18\r\nConnection: close\r\n\r\nSigned in to BAMF.",
        );
        drop(conn);
        let _ = browser.join();
        let head = String::from_utf8(head).unwrap();
        let target = head.split(' ').nth(1).unwrap().to_owned();
        let query = target.split_once('?').unwrap().1.to_owned();
        let mut code = String::new();
        let mut state = String::new();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap();
            let v = v
                .replace("%2F", "/")
                .replace("%2B", "+")
                .replace("%3D", "=");
            match k {
                "code" => code = v,
                "state" => state = v,
                _ => {}
            }
        }
        assert_eq!(state, begin.state);
        (code, state)
    };
    let finish = |code: &str, state: &str, verifier: &str| {
        let (_, csr) = bamf_client::identity::key_and_csr().unwrap();
        runtime.block_on(api.sso_finish(&bamf_proto::api::SsoFinishRequest {
            state: state.into(),
            code: code.into(),
            code_verifier: verifier.into(),
            csr,
        }))
    };
    let code_of = |r: Result<bamf_proto::api::Login, bamf_client::https::HttpsError>| match r {
        Err(bamf_client::https::HttpsError::Status { code, message, .. }) => {
            format!("{code}: {message}")
        }
        other => panic!("not refused: {other:?}"),
    };

    let verifier = bamf_api::sso::random(32).unwrap();
    let (code, state) = sign_in(&verifier);
    // A wrong client verifier: refused, and the flow is spent.
    let wrong = bamf_api::sso::random(32).unwrap();
    assert!(code_of(finish(&code, &state, &wrong)).contains("client_verifier"));
    assert!(code_of(finish(&code, &state, &verifier)).contains("unknown_flow"));

    // A good sign-in; replaying its state (and code) is refused.
    let verifier = bamf_api::sso::random(32).unwrap();
    let (code, state) = sign_in(&verifier);
    let login = finish(&code, &state, &verifier).unwrap();
    assert_eq!(login.user, "alice");
    assert!(code_of(finish(&code, &state, &verifier)).contains("unknown_flow"));
    // A made-up state.
    assert!(code_of(finish(&code, "made-up-state", &verifier)).contains("unknown_flow"));

    // A redirect that is not loopback is refused at the start.
    let refused = runtime.block_on(api.sso_begin(&bamf_proto::api::SsoBeginRequest {
        provider: None,
        redirect_uri: "http://evil.example:80/callback".into(),
        code_challenge: bamf_api::sso::challenge(&verifier),
    }));
    assert!(
        matches!(refused, Err(bamf_client::https::HttpsError::Status { code, .. }) if code == "bad_request")
    );
    let methods = runtime.block_on(api.auth_methods()).unwrap();
    assert!(!methods.local_enabled);
    assert_eq!(methods.default_provider.as_deref(), Some("test-idp"));
}

#[test]
fn a_bot_joins_renews_past_its_first_lifetime_and_is_refused_after_revocation() {
    let stack = Stack::start("sso-bot", &alice(&[]));
    let admin = stack.home("admin");
    let token = stack
        .cli(
            &admin,
            &[
                "bots",
                "add",
                "ci-bot",
                "--role",
                "prod-access",
                "--token-ttl",
                "10m",
            ],
        )
        .ok()
        .stdout
        .trim()
        .to_owned();
    assert!(
        token.starts_with("bamf_"),
        "only the token on stdout: {token}"
    );
    let file = stack.dir.path().join("bot-token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let bot_login = |home: &Path| {
        let via = stack.bridge.front.to_string();
        run(
            stack.bamf(home).args([
                "login",
                "--api",
                &stack.url(),
                "--via",
                &via,
                "--ca-file",
                &stack.ca_file.display().to_string(),
                "--bot-token-file",
                &file.display().to_string(),
            ]),
            "",
        )
    };
    let home = stack.home("bot");
    bot_login(&home).ok();
    // The join token is one-time.
    bot_login(&stack.home("bot-again")).fails("the bot token is unknown, used or expired");
    let expiry = |home: &Path| {
        parse(&std::fs::read_to_string(bamf_profile_dir(home).join("token.json")).unwrap())["expires_at"]
            .as_i64()
            .unwrap()
    };
    let token_of = |home: &Path| {
        parse(&std::fs::read_to_string(bamf_profile_dir(home).join("token.json")).unwrap())["token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let first_expiry = expiry(&home);
    let first_token = token_of(&home);
    assert_eq!(stack.listed(&home), ["prod-echo"]);
    let script = stack.dir.path().join("echo_once.py");
    std::fs::write(&script, ECHO_ONCE).unwrap();
    let exec = format!("python3 {} {{port}}", script.display());
    let echoed = stack
        .cli(&home, &["tcp", "prod-echo", "-p", "0", "--exec", &exec])
        .ok();
    assert!(echoed.stdout.contains("hello through sso"), "{echoed:#?}");

    // Past half its 20 s lifetime, the next command renews on its own.
    std::thread::sleep(Duration::from_secs(11));
    let renewed = stack.cli(&home, &["ls"]).ok();
    assert!(
        renewed.stderr.contains("renewed the bot's credentials"),
        "{renewed:#?}"
    );
    assert!(expiry(&home) > first_expiry);
    // Past the first credentials' lifetime, the bot still reaches its resource.
    std::thread::sleep(Duration::from_secs(11));
    assert!(
        bamf_tests_now() > first_expiry,
        "the first credentials have expired"
    );
    let echoed = stack
        .cli(&home, &["tcp", "prod-echo", "-p", "0", "--exec", &exec])
        .ok();
    assert!(echoed.stdout.contains("hello through sso"), "{echoed:#?}");
    // The renewed-away token stopped working at the renewal.
    let (api, runtime) = stack.api();
    let old = runtime.block_on(api.user(&first_token).whoami());
    assert_eq!(
        old.err().and_then(|e| e.status()).map(|s| s.as_u16()),
        Some(401)
    );

    // Revoked: deleting the bot ends its credentials at once.
    stack.cli(&admin, &["users", "rm", "ci-bot"]).ok();
    stack
        .cli(&home, &["tcp", "prod-echo", "-p", "0", "--exec", &exec])
        .fails("not logged in");
    // A bot cannot sign in with a password, and people cannot renew as bots.
    stack
        .password_login(&stack.home("bot-pw"), "ci-bot", "x")
        .fails("password login is disabled");
    let admin_token = token_of(&admin);
    let (_, csr) = bamf_client::identity::key_and_csr().unwrap();
    let refused = runtime.block_on(
        api.user(&admin_token)
            .bot_renew(&bamf_proto::api::BotRenewRequest { csr }),
    );
    assert_eq!(
        refused.err().and_then(|e| e.status()).map(|s| s.as_u16()),
        Some(403)
    );
}

fn bamf_tests_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .try_into()
        .unwrap()
}

/// `bamf login --sso --device` for a machine without a browser: the CLI prints a page and a
/// code; "another device" (the headless browser) signs in there; the CLI's polls end in a
/// login whose roles follow the groups claim.
#[test]
fn sso_device_login_on_another_device() {
    let stack = Stack::start("sso-device", &alice(&["ops"]));
    let home = stack.home("alice-device");
    let via = stack.bridge.front.to_string();
    let mut child = stack
        .bamf(&home)
        .args([
            "login",
            "--api",
            &stack.url(),
            "--via",
            &via,
            "--ca-file",
            &stack.ca_file.display().to_string(),
            "--sso",
            "--device",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut said = Vec::new();
    let url = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no device page printed: {said:?}"));
        said.push(line.clone());
        if let Some(url) = line
            .split_whitespace()
            .find(|w| w.starts_with("http://127.0.0.1:"))
        {
            break url.to_owned();
        }
    };
    let browser = Command::new("node")
        .arg(oidc_dir().join("browser.mjs"))
        .arg(&url)
        .env("BAMF_TEST_SSO_LOGIN", "alice")
        .status()
        .unwrap();
    assert!(browser.success(), "the browser did not sign in at {url}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "bamf login --device did not finish"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    while let Ok(line) = lines.recv_timeout(Duration::from_millis(500)) {
        said.push(line);
    }
    assert!(status.success(), "{said:#?}");
    assert!(said.iter().any(|l| l.contains("logged in to")), "{said:#?}");
    assert_eq!(stack.listed(&home), ["prod-echo"]);
}
