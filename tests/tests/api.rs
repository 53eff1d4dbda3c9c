//! `bamf-api` end to end: a real process, real `curl` and `psql`, real PostgreSQL and Redis.
#![allow(clippy::unwrap_used)] // a test binary: a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bamf_api::ca::Authority;
use bamf_api::store::Store;
use bamf_proto::san::Identity;
use bamf_tests::{Api, TempDir};

/// `curl` against the API as host `localhost`, verifying its certificate with `ca`, plus
/// `extra` arguments. Returns (exit code, HTTP status, body).
fn curl(api: &Api, ca: &Path, path: &str, extra: &[&str]) -> (i32, u16, String) {
    let port = api.addr.port();
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("localhost:{port}:127.0.0.1"))
        .args(["-w", "\n%{http_code}"])
        .args(extra)
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        out.status.code().unwrap_or(-1),
        code.trim().parse().unwrap_or(0),
        body.to_owned(),
    )
}

/// Fetches the CA certificate the API serves (trust on first use, as `bamf login` will).
fn fetch_ca(api: &Api, dir: &Path) -> std::path::PathBuf {
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "10"])
        .arg(format!("https://127.0.0.1:{}/api/v1/ca", api.addr.port()))
        .output()
        .unwrap();
    let pem = String::from_utf8(out.stdout).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let path = dir.join("ca.pem");
    std::fs::write(&path, pem).unwrap();
    path
}

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", dir.join("bamf.db").display())
}

#[test]
fn curl_verifies_the_api_against_its_own_ca_and_errors_have_stable_codes() {
    let dir = TempDir::new("api");
    let url = sqlite_url(dir.path());
    let api = Api::start(&["--database-url", &url]).unwrap();
    let ca = fetch_ca(&api, dir.path());
    assert_eq!(curl(&api, &ca, "/health", &[]).1, 200);
    let (_, status, body) = curl(&api, &ca, "/ready", &[]);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"store\":\"ok\"") && body.contains("\"presence\":\"ok\""),
        "{body}"
    );
    for (path, method, status, code) in [
        ("/nope", "GET", 404, "not_found"),
        ("/health", "POST", 405, "method_not_allowed"),
        ("/api/v1/whoami", "GET", 401, "unauthenticated"),
    ] {
        let (_, got, body) = curl(&api, &ca, path, &["-X", method]);
        assert_eq!(got, status, "{method} {path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], code);
        assert_eq!(v["error"]["request_id"].as_str().unwrap().len(), 16);
    }
    // HTTP/2 is negotiated with curl (this -w replaces the helper's: the "status" is the version).
    let (_, status, _) = curl(
        &api,
        &ca,
        "/health",
        &["--http2", "-o", "/dev/null", "-w", "\n%{http_version}"],
    );
    assert_eq!(status, 2);
    // The access log names method, path and status, and never a header value.
    assert!(
        api.logs()
            .iter()
            .any(|l| l.contains("\"path\":\"/nope\"") && l.contains("\"status\":404"))
    );
}

/// Issues a certificate for `identity` from `ca` to a fresh key; writes cert and key files.
fn client_cert(
    ca: &Authority,
    identity: &Identity,
    lifetime: Duration,
    at: time::OffsetDateTime,
    dir: &Path,
    tag: &str,
) -> (String, String) {
    let (key, csr) = key_and_csr();
    let issued = ca.issue(&csr, identity, None, lifetime, at).unwrap();
    let cert_path = dir.join(format!("{tag}.crt"));
    let key_path = dir.join(format!("{tag}.key"));
    std::fs::write(&cert_path, issued.pem).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (
        cert_path.display().to_string(),
        key_path.display().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_our_ca_identifies_the_caller_and_others_are_refused() {
    let dir = TempDir::new("api-mtls");
    let url = sqlite_url(dir.path());
    let api = Api::start(&["--database-url", &url]).unwrap();
    let ca_pem = fetch_ca(&api, dir.path());
    // The API persisted its CA in the store: load it as an operator tool would.
    let store = Store::connect(&url).await.unwrap();
    let ca = bamf_api::load_or_create_ca(&store, "unused").await.unwrap();
    assert_eq!(ca.cert_pem(), std::fs::read_to_string(&ca_pem).unwrap());
    let now = time::OffsetDateTime::now_utc();
    let alice = Identity::User {
        user: "alice".parse().unwrap(),
    };
    let (cert, key) = client_cert(
        &ca,
        &alice,
        Duration::from_secs(3600),
        now,
        dir.path(),
        "alice",
    );
    let (_, status, body) = curl(
        &api,
        &ca_pem,
        "/api/v1/whoami",
        &["--cert", &cert, "--key", &key],
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["kind"], "user");
    assert_eq!(v["uris"][1], "bamf://user/alice");
    // A certificate from another CA, and an expired one of ours: refused in the handshake.
    let foreign = Authority::generate("another CA", now).unwrap();
    let past = now - Duration::from_secs(7200);
    for (issuer, issued_at, label) in [(&foreign, now, "foreign"), (&ca, past, "expired")] {
        let (cert, key) = client_cert(
            issuer,
            &alice,
            Duration::from_secs(60),
            issued_at,
            dir.path(),
            label,
        );
        let (exit, status, _) = curl(
            &api,
            &ca_pem,
            "/api/v1/whoami",
            &["--cert", &cert, "--key", &key],
        );
        assert!(
            exit != 0 && status == 0,
            "{label} certificate accepted: exit {exit}, status {status}"
        );
    }
}

#[test]
fn the_api_runs_on_postgresql_and_redis() {
    let pg = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".into());
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let schema = format!("bamf_e2e_{}", std::process::id());
    let psql = |sql: &str| {
        let out = Command::new("psql")
            .arg(&pg)
            .args(["-qAtc", sql])
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    psql(&format!("CREATE SCHEMA {schema}"));
    let sep = if pg.contains('?') { '&' } else { '?' };
    let url = format!("{pg}{sep}options=-c%20search_path%3D{schema}");
    let dir = TempDir::new("api-pg");
    let started = Api::start(&["--database-url", &url, "--redis-url", &redis]);
    let result = std::panic::catch_unwind(|| {
        let api = started.unwrap();
        let ca = fetch_ca(&api, dir.path());
        let (_, status, body) = curl(&api, &ca, "/ready", &[]);
        assert_eq!(status, 200, "{body}");
        // The CA lives in PostgreSQL.
        let stored = psql(&format!(
            "SELECT cert_pem FROM {schema}.certificate_authority"
        ));
        assert_eq!(stored.trim(), std::fs::read_to_string(&ca).unwrap().trim());
    });
    psql(&format!("DROP SCHEMA {schema} CASCADE"));
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// POSTs `body` as JSON to the API with curl; returns (status, body, headers).
fn post(api: &Api, ca: &Path, path: &str, body: &str, extra: &[&str]) -> (u16, String, String) {
    let mut args = vec![
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "--data-binary",
        "@-",
        "-D",
        "/dev/stderr",
    ];
    args.extend_from_slice(extra);
    let port = api.addr.port();
    let mut child = Command::new("curl")
        .args(["-s", "--max-time", "20", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("localhost:{port}:127.0.0.1"))
        .args(["-w", "\n%{http_code}"])
        .args(&args)
        .arg(format!("https://localhost:{port}{path}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        body.to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn error_code(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["error"]["code"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_logout_bad_input_and_rate_limits_are_real_and_audited() {
    let dir = TempDir::new("api-login");
    let url = sqlite_url(dir.path());
    let api = Api::start(&[
        "--database-url",
        &url,
        "--admin-password",
        "correct horse battery",
    ])
    .unwrap();
    let ca = fetch_ca(&api, dir.path());
    let (key, csr) = key_and_csr();
    let login = |user: &str, password: &str| {
        serde_json::json!({"user": user, "password": password, "csr": csr}).to_string()
    };

    // A good login: an opaque token and a user certificate for our key.
    let (status, body, _) = post(
        &api,
        &ca,
        "/api/v1/auth/login",
        &login("admin", "correct horse battery"),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = v["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("bamf_"));
    let cert = dir.path().join("admin.crt");
    let key_file = dir.path().join("admin.key");
    std::fs::write(&cert, v["certificate"].as_str().unwrap()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let auth = format!("authorization: Bearer {token}");
    let (_, status, body) = curl(&api, &ca, "/api/v1/whoami", &["-H", &auth]);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["user"].as_str(), v["via"].as_str()),
        (Some("admin"), Some("token"))
    );
    assert_eq!(v["roles"], serde_json::json!(["admin", "everyone"]));
    let (cert, key_file) = (cert.display().to_string(), key_file.display().to_string());
    let (_, status, body) = curl(
        &api,
        &ca,
        "/api/v1/whoami",
        &["--cert", &cert, "--key", &key_file],
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("bamf://user/admin") && body.contains("\"via\":\"certificate\""),
        "{body}"
    );

    // Logout revokes the token.
    assert_eq!(
        post(&api, &ca, "/api/v1/auth/logout", "", &["-H", &auth]).0,
        204
    );
    assert_eq!(curl(&api, &ca, "/api/v1/whoami", &["-H", &auth]).1, 401);

    // Bad input: a status, a stable code, and never an echoed value.
    let (status, body, _) = post(&api, &ca, "/api/v1/auth/login", "{not json", &[]);
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "bad_request"),
        "{body}"
    );
    let extra = serde_json::json!({"user": "admin", "password": "x", "csr": "x", "admin": true})
        .to_string();
    let (status, body, _) = post(&api, &ca, "/api/v1/auth/login", &extra, &[]);
    assert_eq!(status, 400);
    assert!(body.contains("unknown field `admin`"), "{body}");
    let typed = r#"{"user": "admin", "password": 31337421, "csr": "x"}"#;
    let (status, body, _) = post(&api, &ca, "/api/v1/auth/login", typed, &[]);
    assert_eq!(status, 400);
    assert!(
        !body.contains("31337421"),
        "a submitted value was echoed: {body}"
    );
    let huge = format!("{{\"user\": \"{}\"}}", "a".repeat(70 * 1024));
    assert_eq!(post(&api, &ca, "/api/v1/auth/login", &huge, &[]).0, 413);

    // A wrong password and an unknown user get the same answer.
    let (s1, wrong, _) = post(
        &api,
        &ca,
        "/api/v1/auth/login",
        &login("admin", "wrong"),
        &[],
    );
    let (s2, unknown, _) = post(
        &api,
        &ca,
        "/api/v1/auth/login",
        &login("nobody", "wrong"),
        &[],
    );
    assert_eq!((s1, s2), (401, 401));
    let strip = |b: &str| {
        let mut v: serde_json::Value = serde_json::from_str(b).unwrap();
        v["error"]["request_id"] = serde_json::Value::Null;
        v
    };
    assert_eq!(strip(&wrong), strip(&unknown));

    // Failures are limited per address: the 11th failure in the window is refused with
    // Retry-After, and so is a correct password from the same address.
    let mut failures = 2;
    let (status, headers) = loop {
        let (status, _, headers) = post(
            &api,
            &ca,
            "/api/v1/auth/login",
            &login("mallory", "guess"),
            &[],
        );
        if status != 401 {
            break (status, headers);
        }
        failures += 1;
        assert!(failures <= 10, "no limit after {failures} failures");
    };
    assert_eq!((status, failures), (429, 10));
    assert!(headers.to_lowercase().contains("retry-after:"), "{headers}");
    let (status, _, _) = post(
        &api,
        &ca,
        "/api/v1/auth/login",
        &login("admin", "correct horse battery"),
        &[],
    );
    assert_eq!(status, 429);

    // Every attempt is in the audit log.
    let store = Store::connect(&url).await.unwrap();
    let events = store
        .audit(&bamf_api::store::AuditFilter::default(), None, 100)
        .await
        .unwrap();
    let count = |kind: &str, outcome: &str| {
        events
            .iter()
            .filter(|e| e.event.kind == kind && e.event.outcome == outcome)
            .count()
    };
    assert_eq!(count("auth.login", "allowed"), 1);
    assert_eq!(count("auth.login", "denied"), 10);
    assert_eq!(count("auth.login", "rate_limited"), 2);
    assert_eq!(count("auth.logout", "allowed"), 1);
    assert!(
        events
            .iter()
            .all(|e| !e.event.detail.contains("correct horse")),
        "a password reached the audit log"
    );
    assert!(
        api.logs()
            .iter()
            .all(|l| !l.contains("correct horse") && !l.contains(&token)),
        "a secret reached the logs"
    );
}

/// A fresh P-256 key and a CSR for it.
fn key_and_csr() -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    (key, csr)
}

/// `whoami` over mutual TLS with the certificate in a join answer and its key (written to
/// `dir` for curl); returns (status, body).
fn whoami_with(
    api: &Api,
    ca: &Path,
    dir: &Path,
    tag: &str,
    joined: &serde_json::Value,
    key: &rcgen::KeyPair,
) -> (u16, String) {
    let (cert, key_path) = (
        dir.join(format!("{tag}.crt")),
        dir.join(format!("{tag}.key")),
    );
    std::fs::write(&cert, joined["certificate"].as_str().unwrap()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let (cert, key_path) = (cert.display().to_string(), key_path.display().to_string());
    let (_, status, body) = curl(
        api,
        ca,
        "/api/v1/whoami",
        &["--cert", &cert, "--key", &key_path],
    );
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_and_bridges_join_with_tokens_that_expire_run_out_and_can_be_revoked() {
    let dir = TempDir::new("api-join");
    let url = sqlite_url(dir.path());
    let api = Api::start(&[
        "--database-url",
        &url,
        "--admin-password",
        "pw-admin-1",
        "--tunnel-domain",
        "tunnel.test",
    ])
    .unwrap();
    let ca = fetch_ca(&api, dir.path());
    let (_, csr) = key_and_csr();
    let login =
        serde_json::json!({"user": "admin", "password": "pw-admin-1", "csr": csr}).to_string();
    let (_, body, _) = post(&api, &ca, "/api/v1/auth/login", &login, &[]);
    let token: serde_json::Value = serde_json::from_str(&body).unwrap();
    let auth = format!("authorization: Bearer {}", token["token"].as_str().unwrap());
    let new_token = |kind: &str, ttl: u64, uses: i64| {
        let body =
            serde_json::json!({"kind": kind, "ttl_seconds": ttl, "max_uses": uses}).to_string();
        let (status, body, _) = post(&api, &ca, "/api/v1/join-tokens", &body, &["-H", &auth]);
        assert_eq!(status, 201, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        (
            v["id"].as_str().unwrap().to_owned(),
            v["token"].as_str().unwrap().to_owned(),
        )
    };
    // Only administrators create tokens; bad parameters are refused.
    let body = serde_json::json!({"kind": "agent", "ttl_seconds": 60, "max_uses": 1}).to_string();
    assert_eq!(post(&api, &ca, "/api/v1/join-tokens", &body, &[]).0, 401);
    let bad = serde_json::json!({"kind": "robot", "ttl_seconds": 60, "max_uses": 1}).to_string();
    assert_eq!(
        post(&api, &ca, "/api/v1/join-tokens", &bad, &["-H", &auth]).0,
        400
    );
    let bad = serde_json::json!({"kind": "agent", "ttl_seconds": 60, "max_uses": 0}).to_string();
    assert_eq!(
        post(&api, &ca, "/api/v1/join-tokens", &bad, &["-H", &auth]).0,
        400
    );

    // An agent joins once per use, proves its identity with the certificate it got.
    let (_, agent_token) = new_token("agent", 600, 1);
    let (agent_key, agent_csr) = key_and_csr();
    let join = |token: &str, name: &str, csr: &str| {
        let body = serde_json::json!({"token": token, "name": name, "csr": csr}).to_string();
        post(&api, &ca, "/api/v1/agents/join", &body, &[])
    };
    let (status, body, _) = join(&agent_token, "db-agent", &agent_csr);
    assert_eq!(status, 201, "{body}");
    let joined: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (status, body) = whoami_with(&api, &ca, dir.path(), "agent", &joined, &agent_key);
    assert_eq!(status, 200, "{body}");
    let whoami: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(whoami["kind"], "agent");
    assert_eq!(
        whoami["uris"][1],
        format!("bamf://agent/{}", joined["agent_id"].as_str().unwrap())
    );
    // The token is spent; a fresh one cannot take a name in use.
    assert_eq!(join(&agent_token, "other-agent", &agent_csr).0, 401);
    let (_, second) = new_token("agent", 600, 1);
    let (status, body, _) = join(&second, "db-agent", &agent_csr);
    assert_eq!((status, error_code(&body).as_str()), (409, "conflict"));
    assert_eq!(
        join(&second, "web-agent", &agent_csr).0,
        201,
        "the 409 did not spend the token"
    );
    // Expired and revoked tokens are refused.
    let (_, short) = new_token("agent", 1, 5);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(join(&short, "late-agent", &agent_csr).0, 401);
    let (revoked_id, revoked) = new_token("agent", 600, 5);
    let port = api.addr.port();
    let deleted = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "DELETE",
            "-H",
            &auth,
            "--cacert",
        ])
        .arg(&ca)
        .arg("--resolve")
        .arg(format!("localhost:{port}:127.0.0.1"))
        .arg(format!(
            "https://localhost:{port}/api/v1/join-tokens/{revoked_id}"
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&deleted.stdout), "204");
    assert_eq!(join(&revoked, "revoked-agent", &agent_csr).0, 401);
    // An agent token does not admit a bridge; a bridge token does, with its DNS name.
    let (bridge_key, bridge_csr) = key_and_csr();
    let bridge_join = |token: &str| {
        let body = serde_json::json!({"token": token, "ordinal": 2, "csr": bridge_csr}).to_string();
        post(&api, &ca, "/api/v1/bridges/join", &body, &[])
    };
    let (_, wrong_kind) = new_token("agent", 600, 1);
    assert_eq!(bridge_join(&wrong_kind).0, 401);
    let (_, bridge_token) = new_token("bridge", 600, 1);
    let (status, body, _) = bridge_join(&bridge_token);
    assert_eq!(status, 201, "{body}");
    let joined: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(joined["name"], "2.bridge.tunnel.test");
    let (_, body) = whoami_with(&api, &ca, dir.path(), "bridge", &joined, &bridge_key);
    assert!(body.contains("bamf://bridge/2"), "{body}");
    // The listing shows uses and revocation, never a token secret.
    let (_, status, listing) = curl(&api, &ca, "/api/v1/join-tokens", &["-H", &auth]);
    assert_eq!(status, 200);
    assert!(
        !listing.contains(&agent_token) && !listing.contains("bamf_"),
        "{listing}"
    );
    assert!(listing.contains("\"revoked\":true"), "{listing}");
    // Refused joins are audited.
    let store = Store::connect(&url).await.unwrap();
    let denied = bamf_api::store::AuditFilter {
        kind: Some("join.agent".into()),
        ..Default::default()
    };
    let events = store.audit(&denied, None, 100).await.unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event.outcome == "denied")
            .count(),
        4
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event.outcome == "allowed")
            .count(),
        2
    );
}
