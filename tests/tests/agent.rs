//! `bamf-agent` end to end: a real API process (SQLite, in-process presence), real agent
//! processes, administration with `curl`.
#![allow(clippy::unwrap_used)] // a test binary: a failed unwrap is a failed test

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bamf_tests::{Agent, Api, TempDir, http_get, workspace};

/// How long an agent gets to join, connect or stop.
const DEADLINE: Duration = Duration::from_secs(20);
/// SIGTERM with no open tunnels must end the process about this fast.
const PROMPT_EXIT: Duration = Duration::from_secs(5);

/// The agent's exit status for an identity problem an operator must fix (EX_CONFIG).
const EXIT_NO_IDENTITY: i32 = 78;

/// An administrator's session: the API, its CA file and a bearer token.
struct Admin<'a> {
    api: &'a Api,
    ca: PathBuf,
    token: String,
}

impl<'a> Admin<'a> {
    fn login(api: &'a Api, dir: &Path, password: &str) -> Self {
        let ca = api.fetch_ca(dir);
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let mut admin = Self {
            api,
            ca,
            token: String::new(),
        };
        let body = serde_json::json!({"user": "admin", "password": password, "csr": csr});
        let (status, v) = admin.call("POST", "/api/v1/auth/login", Some(&body));
        assert_eq!(status, 200, "{v}");
        admin.token = v["token"].as_str().unwrap().to_owned();
        admin
    }

    /// `curl` with the admin token; returns (status, JSON body or null).
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let port = self.api.addr.port();
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "--max-time", "10", "--cacert"])
            .arg(&self.ca)
            .arg("--resolve")
            .arg(format!("localhost:{port}:127.0.0.1"))
            .args(["-w", "\n%{http_code}", "-X", method]);
        if !self.token.is_empty() {
            cmd.args(["-H", &format!("authorization: Bearer {}", self.token)]);
        }
        if let Some(body) = body {
            cmd.args(["-H", "content-type: application/json", "--data-binary"])
                .arg(body.to_string());
        }
        let out = cmd
            .arg(format!("https://localhost:{port}{path}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (
            code.trim().parse().unwrap_or(0),
            serde_json::from_str(body).unwrap_or_default(),
        )
    }

    /// A new agent join token with `uses` uses.
    fn join_token(&self, uses: u32) -> String {
        let body = serde_json::json!({"kind": "agent", "ttl_ms": 600_000, "max_uses": uses});
        let (status, v) = self.call("POST", "/api/v1/join-tokens", Some(&body));
        assert_eq!(status, 201, "{v}");
        v["token"].as_str().unwrap().to_owned()
    }

    /// `GET /api/v1/resources` items by name.
    fn resources(&self) -> Vec<serde_json::Value> {
        let (status, v) = self.call("GET", "/api/v1/resources", None);
        assert_eq!(status, 200, "{v}");
        v["items"].as_array().cloned().unwrap_or_default()
    }
}

/// Writes an agent configuration for `api` into `dir/<tag>.toml` with its data under
/// `dir/<tag>-data`; returns (config path, data dir).
fn agent_config(api: &Api, ca: &Path, dir: &Path, tag: &str, name: &str) -> (PathBuf, PathBuf) {
    let data = dir.join(format!("{tag}-data"));
    let text = format!(
        r#"name = "{name}"
api_url = "https://localhost:{port}"
api_ca_file = "{ca}"
data_dir = "{data}"
health_listen = "127.0.0.1:0"
shutdown_grace = "3s"

[[resources]]
name = "{name}-db"
kind = "postgres"
address = "127.0.0.1:5432"
labels = {{ env = "dev", team = "orders" }}

[[resources]]
name = "{name}-ssh"
kind = "ssh"
address = "localhost:22"
"#,
        port = api.addr.port(),
        ca = ca.display(),
        data = data.display(),
    );
    let path = dir.join(format!("{tag}.toml"));
    std::fs::write(&path, text).unwrap();
    (path, data)
}

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", dir.join("bamf.db").display())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Polls `pred` every 100 ms up to `limit`.
fn eventually(limit: Duration, mut pred: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if pred() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM, then a prompt exit 0 after a drain report.
fn stop(agent: &mut Agent) {
    let asked = Instant::now();
    agent.signal("TERM");
    let status = agent
        .wait(PROMPT_EXIT)
        .expect("the agent exits after SIGTERM");
    assert!(status.success(), "{status:?}:\n{}", agent.logs().join("\n"));
    assert!(asked.elapsed() < PROMPT_EXIT);
    let report = agent.messages("shutdown complete: every tunnel finished");
    assert_eq!(report.len(), 1, "{}", agent.logs().join("\n"));
    assert_eq!(report[0]["fields"]["cut"], 0);
}

#[test]
fn an_agent_joins_reports_restarts_on_its_identity_and_names_are_unique() {
    let dir = TempDir::new("agent");
    let api = Api::start(&[
        "--database-url",
        &sqlite_url(dir.path()),
        "--admin-password",
        "pw-admin-1",
    ])
    .unwrap();
    let admin = Admin::login(&api, dir.path(), "pw-admin-1");
    let token = admin.join_token(2);
    let (config, data) = agent_config(&api, &admin.ca, dir.path(), "one", "edge-1");

    // First start: joins with the token.
    let mut agent = Agent::start(&config, &[("BAMF_JOIN_TOKEN", &token)]).unwrap();
    let joined = agent.wait_message("joined", DEADLINE).unwrap();
    assert_eq!(joined["fields"]["fresh"], true);
    assert_eq!(joined["fields"]["name"], "edge-1");
    let agent_id = joined["fields"]["agent_id"].as_str().unwrap().to_owned();
    agent
        .wait_message("command stream connected", DEADLINE)
        .unwrap();
    agent.wait_message("resources reported", DEADLINE).unwrap();
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("agent.key")), 0o600);
    let cert = std::fs::read_to_string(data.join("agent.crt")).unwrap();
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(data.join("ca.crt").exists());
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("agent.json")).unwrap()).unwrap();
    assert_eq!(stored["agent_id"], agent_id.as_str());

    // Its resources are online for the administrator, with their kinds and labels.
    let items = admin.resources();
    let db = items.iter().find(|r| r["name"] == "edge-1-db").unwrap();
    assert_eq!(
        (
            &db["kind"],
            &db["agent"],
            &db["online"],
            &db["labels"]["team"]
        ),
        (
            &"postgres".into(),
            &"edge-1".into(),
            &true.into(),
            &"orders".into()
        )
    );
    assert!(
        items
            .iter()
            .any(|r| r["name"] == "edge-1-ssh" && r["kind"] == "ssh")
    );

    // Health and readiness.
    let health = agent.health.unwrap();
    assert_eq!(http_get(health, "/health").0, 200);
    assert_eq!(http_get(health, "/ready"), (200, "ready\n".into()));
    let (status, metrics) = http_get(health, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("bamf_agent_build_info{version=\"")),
        "{metrics}"
    );
    // Neither the token nor key material is ever logged.
    let log = agent.logs().join("\n");
    assert!(!log.contains(&token), "the join token was logged");
    assert!(!log.contains("PRIVATE KEY") && !log.contains("BEGIN CERTIFICATE"));
    stop(&mut agent);

    // A restart without the token reuses the identity.
    let mut again = Agent::start(&config, &[]).unwrap();
    let joined = again.wait_message("joined", DEADLINE).unwrap();
    assert_eq!(joined["fields"]["fresh"], false);
    assert_eq!(joined["fields"]["agent_id"], agent_id.as_str());
    again
        .wait_message("command stream connected", DEADLINE)
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(data.join("agent.crt")).unwrap(),
        cert
    );

    // A second agent with the same name (its own, empty data_dir) is refused and says why.
    let (twin_config, twin_data) = agent_config(&api, &admin.ca, dir.path(), "twin", "edge-1");
    let mut twin = Agent::spawn(&twin_config, &[("BAMF_JOIN_TOKEN", &token)]).unwrap();
    let status = twin.wait(DEADLINE).expect("the twin exits");
    assert_eq!(status.code(), Some(EXIT_NO_IDENTITY), "{status:?}");
    let log = twin.logs().join("\n");
    assert!(
        log.contains("the name 'edge-1' is already taken by another agent")
            && log.contains("DELETE /api/v1/agents/"),
        "{log}"
    );
    assert!(!twin_data.join("agent.json").exists());

    // An administrator deletes the first agent: its next heartbeat is refused, and the name
    // is free for a new agent with a new token.
    let (status, _) = agent_delete(&admin, &agent_id);
    assert_eq!(status, 204);
    again
        .wait_message(
            "heartbeat refused: this agent was revoked or deleted",
            DEADLINE,
        )
        .unwrap();
    let mut twin =
        Agent::start(&twin_config, &[("BAMF_JOIN_TOKEN", &admin.join_token(1))]).unwrap();
    let joined = twin.wait_message("joined", DEADLINE).unwrap();
    assert_eq!(joined["fields"]["fresh"], true);
    assert_ne!(joined["fields"]["agent_id"], agent_id.as_str());
    twin.wait_message("resources reported", DEADLINE).unwrap();
    assert!(eventually(DEADLINE, || {
        admin
            .resources()
            .iter()
            .any(|r| r["name"] == "edge-1-db" && r["online"] == true)
    }));
    stop(&mut twin);
    stop(&mut again);
}

fn agent_delete(admin: &Admin<'_>, id: &str) -> (u16, serde_json::Value) {
    admin.call("DELETE", &format!("/api/v1/agents/{id}"), None)
}

#[test]
fn the_agent_renews_its_certificate_at_half_life_and_keeps_working() {
    let dir = TempDir::new("agent-renew");
    let api = Api::start(&[
        "--database-url",
        &sqlite_url(dir.path()),
        "--admin-password",
        "pw-admin-2",
        "--agent-cert-lifetime",
        "20s",
    ])
    .unwrap();
    let admin = Admin::login(&api, dir.path(), "pw-admin-2");
    let (config, data) = agent_config(&api, &admin.ca, dir.path(), "renew", "edge-renew");
    let mut agent = Agent::start(&config, &[("BAMF_JOIN_TOKEN", &admin.join_token(1))]).unwrap();
    agent.wait_message("joined", DEADLINE).unwrap();
    let (key, cert) = (
        std::fs::read_to_string(data.join("agent.key")).unwrap(),
        std::fs::read_to_string(data.join("agent.crt")).unwrap(),
    );
    // Half of 20 s.
    agent
        .wait_message("certificate renewed", Duration::from_secs(25))
        .unwrap();
    assert_ne!(
        std::fs::read_to_string(data.join("agent.key")).unwrap(),
        key
    );
    assert_ne!(
        std::fs::read_to_string(data.join("agent.crt")).unwrap(),
        cert
    );
    assert_eq!(mode(&data.join("agent.key")), 0o600);
    assert!(!data.join("agent.key.next").exists() && !data.join("agent.crt.next").exists());
    stop(&mut agent);
    // The renewed pair is what a restart uses: it reconnects with it.
    let mut again = Agent::start(&config, &[]).unwrap();
    again
        .wait_message("command stream connected", DEADLINE)
        .unwrap();
    again.wait_message("resources reported", DEADLINE).unwrap();
    stop(&mut again);
}

#[test]
fn a_bad_configuration_exits_64_listing_every_problem() {
    let dir = TempDir::new("agent-config");
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        r#"name = "Not A Name"
api_url = "http://bamf.example.com"
api_ca_file = "/nonexistent/ca.crt"
health_listen = "somewhere"
idle_timeout = "forever"

[[resources]]
name = "db"
kind = "mysql"
address = "10.0.0.5:5432"

[[resources]]
name = "db"
kind = "tcp"
address = "10.0.0.6:5432"
"#,
    )
    .unwrap();
    let mut agent = Agent::spawn(&config, &[]).unwrap();
    let status = agent.wait(DEADLINE).unwrap();
    assert_eq!(status.code(), Some(64));
    let problems: Vec<String> = agent
        .messages("invalid configuration")
        .iter()
        .map(|v| v["fields"]["problem"].as_str().unwrap().to_owned())
        .collect();
    let all = problems.join("\n");
    for expected in [
        "name: 'Not A Name'",
        "api_url: 'http://bamf.example.com'",
        "api_ca_file: /nonexistent/ca.crt",
        "data_dir: required",
        "health_listen: 'somewhere'",
        "idle_timeout: 'forever'",
        "kind 'mysql'",
        "resources[1] 'db': the name is listed twice",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
    assert_eq!(problems.len(), 8, "{all}");
    // Unknown keys are refused too.
    std::fs::write(&config, "name = \"a\"\nlisten = \"0.0.0.0:1\"\n").unwrap();
    let mut agent = Agent::spawn(&config, &[]).unwrap();
    assert_eq!(agent.wait(DEADLINE).unwrap().code(), Some(64));
    assert!(agent.logs().join("\n").contains("unknown field `listen`"));
}

#[test]
fn check_validates_without_starting_and_a_missing_token_is_explained() {
    let dir = TempDir::new("agent-check");
    let ca = workspace().join("agent/testdata/ca.crt");
    let data = dir.path().join("data");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"edge-9\"\napi_url = \"https://127.0.0.1:9\"\napi_ca_file = \"{}\"\n\
             data_dir = \"{}\"\n[[resources]]\nname = \"db\"\nkind = \"tcp\"\naddress = \"db:5432\"\n",
            ca.display(),
            data.display()
        ),
    )
    .unwrap();
    let out = Command::new(bamf_tests::binary("bamf-agent"))
        .args(["--check", "--log-format", "json", "--config"])
        .arg(&config)
        .env_remove("BAMF_JOIN_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("configuration is valid") && log.contains("\"address\":\"db:5432\""),
        "{log}"
    );
    assert!(!data.exists(), "--check created data_dir");
    // Not joined and no token: a clear error before the API is contacted.
    let mut agent = Agent::spawn(&config, &[]).unwrap();
    assert_eq!(agent.wait(DEADLINE).unwrap().code(), Some(EXIT_NO_IDENTITY));
    let log = agent.logs().join("\n");
    assert!(
        log.contains("BAMF_JOIN_TOKEN is not set") && log.contains("POST /api/v1/join-tokens"),
        "{log}"
    );
}
