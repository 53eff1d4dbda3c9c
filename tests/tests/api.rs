//! `bamf-api` end to end: a real process, real `curl` and `psql`, real PostgreSQL and Redis.
#![allow(clippy::unwrap_used)] // a test binary: a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bamf_api::ca::Authority;
use bamf_api::store::Store;
use bamf_proto::san::Identity;
use bamf_tests::{Api, PgSchema, TempDir};

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

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", dir.join("bamf.db").display())
}

#[test]
fn curl_verifies_the_api_against_its_own_ca_and_errors_have_stable_codes() {
    let dir = TempDir::new("api");
    let url = sqlite_url(dir.path());
    let api = Api::start(&["--database-url", &url]).unwrap();
    let ca = api.fetch_ca(dir.path());
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
    let ca_pem = api.fetch_ca(dir.path());
    // The API persisted its CA in the store: load it as an operator tool would.
    let ca = bamf_tests::stored_ca(&url).await.unwrap();
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

/// A certificate is checked at every request, not only in the handshake: a connection kept
/// open (as agents, bridges and the CLI keep theirs) is refused once its certificate expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_connection_is_refused_once_its_certificate_expires() {
    let dir = TempDir::new("api-expiry");
    let url = sqlite_url(dir.path());
    let api = Api::start(&["--database-url", &url]).unwrap();
    let ca_pem = std::fs::read_to_string(api.fetch_ca(dir.path())).unwrap();
    let ca = bamf_tests::stored_ca(&url).await.unwrap();
    let bridge = Identity::Bridge { ordinal: 0 };
    // Valid for 4 more seconds.
    let issued_at = time::OffsetDateTime::now_utc() - Duration::from_secs(56);
    let (cert, key) = client_cert(
        &ca,
        &bridge,
        Duration::from_secs(60),
        issued_at,
        dir.path(),
        "b",
    );
    let tls = bamf_client::tls_config(
        &ca_pem,
        Some((
            &std::fs::read_to_string(cert).unwrap(),
            &std::fs::read_to_string(key).unwrap(),
        )),
        &[b"http/1.1"],
    )
    .unwrap();
    let reused = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = reused.clone();
    let client =
        bamf_client::https::Api::new(&format!("https://localhost:{}", api.addr.port()), tls)
            .unwrap()
            .connect_to(Some(api.addr))
            .pooled()
            .observed(Arc::new(move |x| seen.lock().unwrap().push(x.reused)));
    let who: serde_json::Value = client
        .call(http::Method::GET, "/api/v1/whoami", None::<&()>, None)
        .await
        .unwrap();
    assert_eq!(who["kind"], "bridge");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let late = client
        .call::<serde_json::Value>(http::Method::GET, "/api/v1/whoami", None::<&()>, None)
        .await;
    assert_eq!(
        *reused.lock().unwrap(),
        vec![false, true],
        "one connection, kept"
    );
    match late {
        Err(bamf_client::https::HttpsError::Status { status, code, .. }) => {
            assert_eq!((status.as_u16(), code.as_str()), (401, "unauthenticated"));
        }
        other => panic!("an expired certificate was served: {other:?}"),
    }
    let store = Store::connect(&url).await.unwrap();
    let refused = store
        .audit(
            &bamf_api::store::AuditFilter {
                kind: Some("auth.refused".into()),
                ..Default::default()
            },
            None,
            10,
        )
        .await
        .unwrap();
    assert!(
        refused
            .iter()
            .any(|e| e.event.actor == "bridge:0" && e.event.detail.contains("expired certificate")),
        "refusal audited: {refused:?}"
    );
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
        let ca = api.fetch_ca(dir.path());
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
    send(api, ca, "POST", path, body, extra)
}

/// Sends `body` as JSON with `method`; returns (status, body, headers).
fn send(
    api: &Api,
    ca: &Path,
    method: &str,
    path: &str,
    body: &str,
    extra: &[&str],
) -> (u16, String, String) {
    let mut args = vec![
        "-X",
        method,
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
    let ca = api.fetch_ca(dir.path());
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

    // Attempts are limited per address: the 11th in the window is refused with Retry-After,
    // and so is a correct password from the same address; the administrator, whose name
    // was guessed, still signs in from another address.
    let mut failures = 2;
    let (status, headers) = loop {
        let (status, _, headers) = post(
            &api,
            &ca,
            "/api/v1/auth/login",
            &login("admin", "guess"),
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
    let (status, body, _) = post(
        &api,
        &ca,
        "/api/v1/auth/login",
        &login("admin", "correct horse battery"),
        &["--interface", "127.0.0.2"],
    );
    assert_eq!(status, 200, "locked out from elsewhere: {body}");

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
    assert_eq!(count("auth.login", "allowed"), 2);
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
    let ca = api.fetch_ca(dir.path());
    let (_, csr) = key_and_csr();
    let login =
        serde_json::json!({"user": "admin", "password": "pw-admin-1", "csr": csr}).to_string();
    let (_, body, _) = post(&api, &ca, "/api/v1/auth/login", &login, &[]);
    let token: serde_json::Value = serde_json::from_str(&body).unwrap();
    let auth = format!("authorization: Bearer {}", token["token"].as_str().unwrap());
    let new_token = |kind: &str, ttl: u64, uses: i64| {
        let body =
            serde_json::json!({"kind": kind, "ttl_ms": ttl * 1000, "max_uses": uses}).to_string();
        let (status, body, _) = post(&api, &ca, "/api/v1/join-tokens", &body, &["-H", &auth]);
        assert_eq!(status, 201, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        (
            v["id"].as_str().unwrap().to_owned(),
            v["token"].as_str().unwrap().to_owned(),
        )
    };
    // Only administrators create tokens; bad parameters are refused.
    let body = serde_json::json!({"kind": "agent", "ttl_ms": 60_000, "max_uses": 1}).to_string();
    assert_eq!(post(&api, &ca, "/api/v1/join-tokens", &body, &[]).0, 401);
    let bad = serde_json::json!({"kind": "robot", "ttl_ms": 60_000, "max_uses": 1}).to_string();
    assert_eq!(
        post(&api, &ca, "/api/v1/join-tokens", &bad, &["-H", &auth]).0,
        400
    );
    let bad = serde_json::json!({"kind": "agent", "ttl_ms": 60_000, "max_uses": 0}).to_string();
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
    // A busy bridge's heartbeat lists its 9 000 live sessions (about 350 KB): accepted,
    // although anyone else's body of that size is not.
    let sessions: Vec<String> = (0..9000u32)
        .map(|n| format!("00000000-0000-4000-8000-{n:012}"))
        .collect();
    let beat =
        serde_json::json!({"load": 9000, "draining": false, "sessions": sessions}).to_string();
    let (cert, key) = (dir.path().join("bridge.crt"), dir.path().join("bridge.key"));
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let (status, body, _) = post(
        &api,
        &ca,
        "/api/v1/bridges/heartbeat",
        &beat,
        &["--cert", &cert, "--key", &key],
    );
    assert_eq!(status, 200, "{body}");
    // Refused: 413, or the reset of the connection the API closes with the body unread,
    // whichever curl sees first.
    let (status, body, _) = post(&api, &ca, "/api/v1/auth/login", &beat, &[]);
    assert!(
        status == 0 || (status, error_code(&body).as_str()) == (413, "payload_too_large"),
        "{status} {body}"
    );
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

/// Signs `user` in; returns the `authorization` header line.
fn bearer_for(api: &Api, ca: &Path, user: &str, password: &str) -> String {
    let (_, csr) = key_and_csr();
    let body = serde_json::json!({"user": user, "password": password, "csr": csr}).to_string();
    let (status, body, _) = post(api, ca, "/api/v1/auth/login", &body, &[]);
    assert_eq!(status, 200, "login {user}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    format!("authorization: Bearer {}", v["token"].as_str().unwrap())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Names of the `items` of a listing, by `field`.
fn names(body: &str, field: &str) -> Vec<String> {
    json(body)["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i[field].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// RBAC, administration, certificate kinds per route, revocation and the audit log, on one
/// store and presence.
async fn admin_rbac_and_revocation(dir: &Path, api: &Api, url: &str) {
    let ca = api.fetch_ca(dir);
    let admin = bearer_for(api, &ca, "admin", "admin-password-1");
    let h = |auth: &str| vec!["-H".to_owned(), auth.to_owned()];
    let call = |method: &str, path: &str, body: &str, auth: &str| {
        let extra = h(auth);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let (status, body, _) = send(api, &ca, method, path, body, &extra);
        (status, body)
    };

    // Roles and users.
    let devs = r#"{"name":"devs","allow":[{"labels":{"env":"dev"}},{"kinds":["postgres"]}],
                   "deny":[{"names":["*-secret"]},{"labels":{"env":"prod"}}]}"#;
    assert_eq!(call("POST", "/api/v1/roles", devs, &admin).0, 201);
    assert_eq!(call("POST", "/api/v1/roles", devs, &admin).0, 409);
    let (status, body) = call(
        "POST",
        "/api/v1/roles",
        r#"{"name":"x","allow":[{}]}"#,
        &admin,
    );
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "bad_request"),
        "{body}"
    );
    let (status, body) = call(
        "POST",
        "/api/v1/roles",
        r#"{"name":"x","allow":[{"nmes":["a"]}]}"#,
        &admin,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("unknown field `nmes`"), "{body}");
    for (user, roles) in [("alice", r#"["devs"]"#), ("bob", "[]")] {
        let body = format!(r#"{{"name":"{user}","password":"{user}-password-1","roles":{roles}}}"#);
        assert_eq!(
            call("POST", "/api/v1/users", &body, &admin).0,
            201,
            "{user}"
        );
    }
    let (status, body) = call(
        "POST",
        "/api/v1/users",
        r#"{"name":"carol","password":"short"}"#,
        &admin,
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = call(
        "POST",
        "/api/v1/users",
        r#"{"name":"carol","password":"carol-password-1","roles":["nope"]}"#,
        &admin,
    );
    assert_eq!(status, 400, "{body}");
    let (_, body) = call("GET", "/api/v1/users", "", &admin);
    assert_eq!(names(&body, "name"), ["admin", "alice", "bob"]);
    assert!(
        !body.contains("argon2"),
        "hashes never leave the store: {body}"
    );

    // An agent joins and reports its catalog.
    let (_, body) = call(
        "POST",
        "/api/v1/join-tokens",
        r#"{"kind":"agent","ttl_ms":600000,"max_uses":1}"#,
        &admin,
    );
    let join_token = json(&body)["token"].as_str().unwrap().to_owned();
    let (agent_key, agent_csr) = key_and_csr();
    let body =
        serde_json::json!({"token": join_token, "name": "edge", "csr": agent_csr}).to_string();
    let (status, body, _) = post(api, &ca, "/api/v1/agents/join", &body, &[]);
    assert_eq!(status, 201, "{body}");
    let joined = json(&body);
    let agent_id = joined["agent_id"].as_str().unwrap().to_owned();
    let write = |tag: &str, pem: &str, key: &rcgen::KeyPair| {
        let (c, k) = (
            dir.join(format!("{tag}.crt")),
            dir.join(format!("{tag}.key")),
        );
        std::fs::write(&c, pem).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        vec![
            "--cert".to_owned(),
            c.display().to_string(),
            "--key".to_owned(),
            k.display().to_string(),
        ]
    };
    let agent = write("edge", joined["certificate"].as_str().unwrap(), &agent_key);
    let as_cert = |method: &str, path: &str, body: &str, cert: &[String]| {
        let extra: Vec<&str> = cert.iter().map(String::as_str).collect();
        let (status, body, _) = send(api, &ca, method, path, body, &extra);
        (status, body)
    };
    let catalog = r#"{"resources":[
        {"name":"web-1","kind":"ssh","labels":{"env":"dev"}},
        {"name":"db-1","kind":"postgres","labels":{"env":"prod"}},
        {"name":"pg-dev","kind":"postgres","labels":{"env":"staging"}},
        {"name":"app-secret","kind":"tcp","labels":{"env":"dev"}}]}"#;
    let (status, body) = as_cert("POST", "/api/v1/agents/heartbeat", catalog, &agent);
    assert_eq!(status, 200, "{body}");
    let (status, body) = as_cert(
        "POST",
        "/api/v1/agents/heartbeat",
        r#"{"resources":[{"name":"x","kind":"http"}]}"#,
        &agent,
    );
    assert_eq!(status, 400, "{body}");

    // What each user may reach: deny wins, default deny, admin reaches everything.
    let alice = bearer_for(api, &ca, "alice", "alice-password-1");
    let bob = bearer_for(api, &ca, "bob", "bob-password-1");
    let (_, body) = call("GET", "/api/v1/resources", "", &alice);
    assert_eq!(names(&body, "name"), ["pg-dev", "web-1"], "{body}");
    assert_eq!(json(&body)["items"][1]["online"], true);
    let (_, body) = call("GET", "/api/v1/resources", "", &bob);
    assert!(names(&body, "name").is_empty(), "{body}");
    let (_, body) = call("GET", "/api/v1/resources", "", &admin);
    assert_eq!(names(&body, "name").len(), 4, "{body}");
    // `everyone` grants to all users; a bound role's deny still wins for alice.
    let everyone = r#"{"allow":[{"names":["app-*"]}]}"#;
    assert_eq!(
        call("PUT", "/api/v1/roles/everyone", everyone, &admin).0,
        200
    );
    let (_, body) = call("GET", "/api/v1/resources", "", &bob);
    assert_eq!(names(&body, "name"), ["app-secret"]);
    let (_, body) = call("GET", "/api/v1/resources", "", &alice);
    assert_eq!(names(&body, "name"), ["pg-dev", "web-1"]);
    // Bindings change access at once.
    assert_eq!(
        call("PUT", "/api/v1/users/bob/roles/devs", "", &admin).0,
        204
    );
    let (_, body) = call("GET", "/api/v1/resources", "", &bob);
    assert_eq!(names(&body, "name"), ["pg-dev", "web-1"]);
    assert_eq!(
        call("DELETE", "/api/v1/users/bob/roles/devs", "", &admin).0,
        204
    );
    assert_eq!(
        call("DELETE", "/api/v1/users/bob/roles/devs", "", &admin).0,
        404
    );

    // Administration is for administrators; built-ins and self-lockout are refused.
    let (status, body) = call("GET", "/api/v1/users", "", &alice);
    assert_eq!((status, error_code(&body).as_str()), (403, "forbidden"));
    assert_eq!(call("PUT", "/api/v1/roles/admin", everyone, &admin).0, 409);
    assert_eq!(call("DELETE", "/api/v1/roles/everyone", "", &admin).0, 409);
    assert_eq!(call("DELETE", "/api/v1/users/admin", "", &admin).0, 409);
    assert_eq!(
        call("DELETE", "/api/v1/users/admin/roles/admin", "", &admin).0,
        409
    );
    assert_eq!(call("DELETE", "/api/v1/users/nobody", "", &admin).0, 404);
    let (status, _) = call(
        "POST",
        "/api/v1/users",
        &format!(r#"{{"name":"big","password":"{}"}}"#, "x".repeat(70_000)),
        &admin,
    );
    assert_eq!(status, 413);

    // Certificate kinds per route.
    let (bridge_key, bridge_csr) = key_and_csr();
    let (_, body) = call(
        "POST",
        "/api/v1/join-tokens",
        r#"{"kind":"bridge","ttl_ms":600000,"max_uses":1}"#,
        &admin,
    );
    let bridge_token = json(&body)["token"].as_str().unwrap().to_owned();
    let body =
        serde_json::json!({"token": bridge_token, "ordinal": 0, "csr": bridge_csr}).to_string();
    let (status, body, _) = post(api, &ca, "/api/v1/bridges/join", &body, &[]);
    assert_eq!(status, 201, "{body}");
    let bridge_joined = json(&body);
    let bridge = write(
        "bridge0",
        bridge_joined["certificate"].as_str().unwrap(),
        &bridge_key,
    );
    let (_, renew_csr) = key_and_csr();
    let renew = serde_json::json!({"csr": renew_csr}).to_string();
    for (path, cert, want) in [
        ("/api/v1/bridges/renew", &agent, 403),
        ("/api/v1/agents/heartbeat", &bridge, 403),
        ("/api/v1/agents/renew", &bridge, 403),
    ] {
        assert_eq!(as_cert("POST", path, &renew, cert).0, want, "{path}");
    }
    // A user token is no certificate; no credentials at all is 401.
    assert_eq!(
        call("POST", "/api/v1/agents/heartbeat", catalog, &alice).0,
        401
    );
    assert_eq!(call("POST", "/api/v1/bridges/renew", &renew, &admin).0, 401);
    assert_eq!(as_cert("POST", "/api/v1/bridges/renew", &renew, &[]).0, 401);
    // An agent cert is not a user: user and admin routes refuse it.
    assert_eq!(as_cert("GET", "/api/v1/resources", "", &agent).0, 401);
    assert_eq!(as_cert("GET", "/api/v1/users", "", &agent).0, 401);
    // The bridge renews its own certificate: same name, new serial.
    let (status, body) = as_cert("POST", "/api/v1/bridges/renew", &renew, &bridge);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["name"], "0.bridge.tunnel.localhost");
    assert_ne!(json(&body)["serial"], bridge_joined["serial"]);
    let (_, body) = call("GET", "/api/v1/bridges", "", &admin);
    assert_eq!(json(&body)["items"][0]["host"], "0.bridge.tunnel.localhost");

    // Revocation: by serial (the bridge) and by fingerprint (the agent).
    let revoke =
        serde_json::json!({"serial": bridge_joined["serial"], "reason": "test"}).to_string();
    assert_eq!(call("POST", "/api/v1/revocations", &revoke, &admin).0, 201);
    assert_eq!(call("POST", "/api/v1/revocations", &revoke, &admin).0, 200);
    let (status, body) = as_cert("POST", "/api/v1/bridges/renew", &renew, &bridge);
    assert_eq!(
        (status, error_code(&body).as_str()),
        (401, "unauthenticated")
    );
    let (_, body) = as_cert("GET", "/api/v1/whoami", "", &agent);
    let fingerprint = json(&body)["fingerprint"].as_str().unwrap().to_owned();
    let (new_agent_key, new_agent_csr) = key_and_csr();
    let (status, body) = as_cert(
        "POST",
        "/api/v1/agents/renew",
        &serde_json::json!({"csr": new_agent_csr}).to_string(),
        &agent,
    );
    assert_eq!(status, 200, "{body}");
    let renewed = write(
        "edge2",
        json(&body)["certificate"].as_str().unwrap(),
        &new_agent_key,
    );
    let revoke = serde_json::json!({"fingerprint": fingerprint, "reason": "key lost"}).to_string();
    assert_eq!(call("POST", "/api/v1/revocations", &revoke, &admin).0, 201);
    assert_eq!(
        as_cert("POST", "/api/v1/agents/heartbeat", catalog, &agent).0,
        401
    );
    assert_eq!(
        as_cert("POST", "/api/v1/agents/heartbeat", catalog, &renewed).0,
        200
    );
    let bad = r#"{"serial":"XYZ","reason":"x"}"#;
    assert_eq!(call("POST", "/api/v1/revocations", bad, &admin).0, 400);
    // Deleting the agent frees its name, drops its resources and refuses its certificates:
    // the last one issued is revoked, and any earlier one names an unknown agent.
    let (latest_key, latest_csr) = key_and_csr();
    let (status, body) = as_cert(
        "POST",
        "/api/v1/agents/renew",
        &serde_json::json!({"csr": latest_csr}).to_string(),
        &renewed,
    );
    assert_eq!(status, 200, "{body}");
    let latest = write(
        "edge3",
        json(&body)["certificate"].as_str().unwrap(),
        &latest_key,
    );
    assert_eq!(
        call("DELETE", &format!("/api/v1/agents/{agent_id}"), "", &admin).0,
        204
    );
    assert_eq!(
        as_cert("POST", "/api/v1/agents/heartbeat", catalog, &latest).0,
        401
    );
    assert_eq!(
        as_cert("POST", "/api/v1/agents/heartbeat", catalog, &renewed).0,
        401
    );
    let (_, body) = call("GET", "/api/v1/resources", "", &admin);
    assert!(names(&body, "name").is_empty(), "{body}");
    let (_, body) = call("GET", "/api/v1/agents", "", &admin);
    assert!(names(&body, "name").is_empty(), "{body}");

    // A deleted user's token stops working at once, and does not come back when a user of
    // the same name is created again.
    assert_eq!(call("DELETE", "/api/v1/users/alice", "", &admin).0, 204);
    assert_eq!(call("GET", "/api/v1/resources", "", &alice).0, 401);
    let again = r#"{"name":"alice","password":"alice-password-2"}"#;
    assert_eq!(call("POST", "/api/v1/users", again, &admin).0, 201);
    assert_eq!(
        call("GET", "/api/v1/resources", "", &alice).0,
        401,
        "resurrected"
    );
    // A password reset ends the user's tokens.
    let alice = bearer_for(api, &ca, "alice", "alice-password-2");
    assert_eq!(call("GET", "/api/v1/resources", "", &alice).0, 200);
    let reset = r#"{"password":"alice-password-3"}"#;
    assert_eq!(
        call("PUT", "/api/v1/users/alice/password", reset, &admin).0,
        204
    );
    assert_eq!(call("GET", "/api/v1/resources", "", &alice).0, 401, "reset");

    // The audit log: every refusal above, filtered and paged.
    let (status, body) = call("GET", "/api/v1/audit?kind=auth.refused&limit=2", "", &admin);
    assert_eq!(status, 200, "{body}");
    let page = json(&body);
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, body) = call(
        "GET",
        &format!("/api/v1/audit?kind=auth.refused&limit=500&cursor={cursor}"),
        "",
        &admin,
    );
    let rest = json(&body);
    assert!(rest["next_cursor"].is_null());
    let mut refusals: Vec<serde_json::Value> = page["items"].as_array().unwrap().clone();
    refusals.extend(rest["items"].as_array().unwrap().iter().cloned());
    let reasons: std::collections::BTreeSet<&str> = refusals
        .iter()
        .map(|e| e["detail"]["reason"].as_str().unwrap())
        .collect();
    for want in [
        "not an administrator",
        "wrong certificate kind",
        "token on a certificate route",
        "no client certificate",
        // A deleted agent's certificates are all revoked (recorded at issue), so they are
        // refused as revoked before they could count as an unknown agent.
        "revoked certificate",
        "invalid token",
    ] {
        assert!(reasons.contains(want), "{want} not audited: {reasons:?}");
    }
    let ids: Vec<i64> = refusals.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "newest first, no repeats: {ids:?}"
    );
    let (_, body) = call(
        "GET",
        "/api/v1/audit?actor=user:admin&kind=role.create",
        "",
        &admin,
    );
    assert_eq!(json(&body)["items"][0]["detail"]["role"], "devs");
    let (_, body) = call("GET", "/api/v1/audit?since_ms=4102444800000", "", &admin);
    assert!(
        json(&body)["items"].as_array().unwrap().is_empty(),
        "2100 is in the future"
    );
    assert_eq!(call("GET", "/api/v1/audit?bogus=1", "", &admin).0, 400);
    assert_eq!(call("GET", "/api/v1/audit?limit=0", "", &admin).0, 400);
    // Admin changes are audited with their actor.
    let store = Store::connect(url).await.unwrap();
    for kind in [
        "user.create",
        "user.delete",
        "role.bind",
        "role.unbind",
        "role.update",
        "certificate.revoke",
        "agent.delete",
    ] {
        let filter = bamf_api::store::AuditFilter {
            kind: Some(kind.into()),
            actor: Some("user:admin".into()),
            ..Default::default()
        };
        assert!(
            !store.audit(&filter, None, 10).await.unwrap().is_empty(),
            "{kind} not audited"
        );
    }
    let leaks: Vec<String> = api
        .logs()
        .into_iter()
        .filter(|l| {
            l.contains("alice-password-1")
                || [&admin, &alice, &bob, &join_token, &bridge_token]
                    .iter()
                    .any(|secret| l.contains(secret.rsplit(' ').next().unwrap_or(secret)))
        })
        .collect();
    assert!(leaks.is_empty(), "a secret reached the logs: {leaks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_administration_and_revocation_on_sqlite_and_in_process_presence() {
    let dir = TempDir::new("api-admin-sqlite");
    let url = sqlite_url(dir.path());
    let api = Api::start(&[
        "--database-url",
        &url,
        "--admin-password",
        "admin-password-1",
    ])
    .unwrap();
    admin_rbac_and_revocation(dir.path(), &api, &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_administration_and_revocation_on_postgresql_and_redis() {
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let pg = PgSchema::new("admin");
    let dir = TempDir::new("api-admin-pg");
    let api = Api::start(&[
        "--database-url",
        &pg.url,
        "--redis-url",
        &redis,
        "--admin-password",
        "admin-password-1",
    ])
    .unwrap();
    admin_rbac_and_revocation(dir.path(), &api, &pg.url).await;
    // The rows are in PostgreSQL.
    assert_eq!(
        pg.psql(&format!(
            "SELECT count(*) FROM {}.roles WHERE name = 'devs'",
            pg.schema
        ))
        .trim(),
        "1"
    );
}

/// The CA key is sealed at rest with BAMF_CA_ENCRYPTION_KEY; without the key (or with
/// another) the API refuses to start with a clear message; a provided CA is used as is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_key_is_encrypted_at_rest_and_a_provided_ca_is_used() {
    let dir = TempDir::new("api-ca");
    let url = sqlite_url(dir.path());
    let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let first_ca = {
        let api = Api::start_with_env(
            &["--database-url", &url],
            &[("BAMF_CA_ENCRYPTION_KEY", key)],
        )
        .unwrap();
        std::fs::read_to_string(api.fetch_ca(dir.path())).unwrap()
    };
    let store = Store::connect(&url).await.unwrap();
    let stored = store.ca().await.unwrap().unwrap();
    assert!(stored.key_encrypted);
    assert!(
        stored.key_pem.starts_with("bamf-sealed-v1:") && !stored.key_pem.contains("PRIVATE KEY")
    );
    drop(store);
    for (env, want) in [
        (vec![], "BAMF_CA_ENCRYPTION_KEY"),
        (
            vec![(
                "BAMF_CA_ENCRYPTION_KEY",
                "MTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTE=",
            )],
            "cannot be opened",
        ),
        (
            vec![("BAMF_CA_ENCRYPTION_KEY", "c2hvcnQ=")],
            "32 random bytes",
        ),
    ] {
        let err = Api::start_with_env(&["--database-url", &url], &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "expected {want:?} in: {err}");
    }
    let api = Api::start_with_env(
        &["--database-url", &url],
        &[("BAMF_CA_ENCRYPTION_KEY", key)],
    )
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(api.fetch_ca(dir.path())).unwrap(),
        first_ca,
        "same CA after restart"
    );
    drop(api);

    // Bring your own CA: a new store takes it; a store with another CA refuses it.
    let own = Authority::generate("Operator CA", time::OffsetDateTime::now_utc()).unwrap();
    let (cert, key_file) = (dir.path().join("own.crt"), dir.path().join("own.key"));
    std::fs::write(&cert, own.cert_pem()).unwrap();
    std::fs::write(&key_file, own.key_pem()).unwrap();
    let (cert, key_file) = (cert.display().to_string(), key_file.display().to_string());
    let fresh = sqlite_url(&dir.path().join("fresh"));
    std::fs::create_dir_all(dir.path().join("fresh")).unwrap();
    let api = Api::start(&[
        "--database-url",
        &fresh,
        "--ca-cert-file",
        &cert,
        "--ca-key-file",
        &key_file,
    ])
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(api.fetch_ca(dir.path())).unwrap(),
        own.cert_pem()
    );
    drop(api);
    let err = Api::start(&[
        "--database-url",
        &url,
        "--ca-cert-file",
        &cert,
        "--ca-key-file",
        &key_file,
    ])
    .unwrap_err()
    .to_string();
    assert!(err.contains("different CA"), "{err}");
}

/// Started with a permissive umask, the API still keeps its state to itself: a new state
/// directory 0700, the SQLite file 0600 (and an existing 0644 one tightened), and the CA key
/// sealed by default under a key generated 0600 beside the database; the key is required
/// afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_private_and_the_ca_key_sealed_by_default_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = TempDir::new("api-private");
    let state = dir.path().join("state");
    let url = sqlite_url(&state);
    let api = Api::start_with_umask("022", &["--database-url", &url], &[]).unwrap();
    drop(api);
    assert_eq!(mode(&state), 0o700, "state directory");
    assert_eq!(mode(&state.join("bamf.db")), 0o600, "database");
    let key_file = state.join("ca-sealing.key");
    assert_eq!(mode(&key_file), 0o600, "sealing key");
    let store = Store::connect(&url).await.unwrap();
    let stored = store.ca().await.unwrap().unwrap();
    assert!(stored.key_encrypted && !stored.key_pem.contains("PRIVATE KEY"));
    drop(store);

    // An existing database left readable is tightened; without its sealing key the API
    // refuses to start rather than generating another.
    std::fs::set_permissions(
        state.join("bamf.db"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let moved = dir.path().join("elsewhere.key");
    std::fs::rename(&key_file, &moved).unwrap();
    let err = Api::start_with_umask("022", &["--database-url", &url], &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("encrypted"), "{err}");
    assert!(!key_file.exists(), "no new key generated for a sealed CA");
    assert_eq!(mode(&state.join("bamf.db")), 0o600, "tightened");
    let moved = moved.display().to_string();
    let api = Api::start_with_umask(
        "022",
        &["--database-url", &url, "--ca-sealing-key-file", &moved],
        &[],
    )
    .unwrap();
    assert!(api.fetch_ca(dir.path()).exists());
}

/// Without Redis the API still starts, `/health` answers, and `/ready` says which dependency
/// is missing.
#[test]
fn ready_names_the_unavailable_dependency() {
    let dir = TempDir::new("api-ready");
    let url = sqlite_url(dir.path());
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redis = format!("redis://127.0.0.1:{port}/");
    let api = Api::start(&["--database-url", &url, "--redis-url", &redis]).unwrap();
    let ca = api.fetch_ca(dir.path());
    assert_eq!(curl(&api, &ca, "/health", &[]).1, 200);
    let (_, status, body) = curl(&api, &ca, "/ready", &[]);
    assert_eq!(status, 503, "{body}");
    assert_eq!(error_code(&body), "not_ready");
    assert!(body.contains("presence unavailable"), "{body}");
    assert!(
        !body.contains(&port.to_string()),
        "no internal detail: {body}"
    );
}

/// A TCP relay to PostgreSQL that can be made to swallow connections (accept, then send
/// and answer nothing), as a database host that stopped answering would.
struct Blackhole {
    addr: std::net::SocketAddr,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Blackhole {
    async fn start(target: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let target = target.to_owned();
        let flag = down.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let flag = flag.clone();
                let target = target.clone();
                held.push(tokio::spawn(async move {
                    if flag.load(std::sync::atomic::Ordering::Relaxed) {
                        let _client = client;
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let relay = tokio::io::copy_bidirectional(&mut client, &mut server);
                    let mut relay = std::pin::pin!(relay);
                    loop {
                        tokio::select! {
                            _ = &mut relay => return,
                            () = tokio::time::sleep(Duration::from_millis(20)) => {
                                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                                    // Swallow: stop relaying, answer nothing.
                                    tokio::time::sleep(Duration::from_secs(3600)).await;
                                    return;
                                }
                            }
                        }
                    }
                }));
            }
        });
        Self { addr, down }
    }
}

/// With PostgreSQL gone silent, `/ready` still answers 503 `store` inside a 1 s probe
/// (it waited for the pool's 5 s before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_answers_in_time_when_the_store_hangs() {
    let pg = PgSchema::new("ready_hang");
    let hole = Blackhole::start("127.0.0.1:5432").await;
    let url = pg.url.replace("127.0.0.1:5432", &hole.addr.to_string());
    let dir = TempDir::new("api-ready-hang");
    let api = Api::start(&["--database-url", &url]).unwrap();
    let ca = api.fetch_ca(dir.path());
    assert_eq!(curl(&api, &ca, "/ready", &[]).1, 200);
    hole.down.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ca2 = ca.clone();
    let (code, status, body) =
        tokio::task::spawn_blocking(move || curl(&api, &ca2, "/ready", &["--max-time", "1"]))
            .await
            .unwrap();
    assert_eq!((code, status), (0, 503), "{body}");
    assert!(body.contains("store unavailable"), "{body}");
}

/// A Redis server of this test's own, on a fixed port so it can come back on it.
struct OwnRedis(std::process::Child);

impl OwnRedis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test installs it)");
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self(child)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Tokens are credentials kept in the store: a Redis restart (which loses all presence)
/// signs nobody out.
#[test]
fn logins_survive_a_redis_restart() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redis_url = format!("redis://127.0.0.1:{port}/");
    let pg = PgSchema::new("redis_restart");
    let dir = TempDir::new("api-redis-restart");
    let redis = OwnRedis::start(port);
    let api = Api::start(&[
        "--database-url",
        &pg.url,
        "--redis-url",
        &redis_url,
        "--admin-password",
        "admin-password-1",
    ])
    .unwrap();
    let ca = api.fetch_ca(dir.path());
    let admin = bearer_for(&api, &ca, "admin", "admin-password-1");
    assert_eq!(curl(&api, &ca, "/api/v1/whoami", &["-H", &admin]).1, 200);
    drop(redis);
    let _redis = OwnRedis::start(port);
    let started = std::time::Instant::now();
    while curl(&api, &ca, "/ready", &[]).1 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not ready again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, status, body) = curl(&api, &ca, "/api/v1/whoami", &["-H", &admin]);
    assert_eq!(status, 200, "signed out by a Redis restart: {body}");
}

/// 200 concurrent wrong passwords from one address: at most the configured 10 are checked
/// (attempts count when they start), memory stays flat, and the real user signs in from
/// their own address meanwhile.
#[test]
fn a_login_flood_checks_few_passwords_and_locks_nobody_out() {
    let dir = TempDir::new("api-login-flood");
    let url = sqlite_url(dir.path());
    // Connection caps out of the way: this is about the login limits.
    let api = Api::start(&[
        "--database-url",
        &url,
        "--admin-password",
        "admin-password-1",
        "--max-connections-per-address",
        "1000",
    ])
    .unwrap();
    let ca = api.fetch_ca(dir.path());
    // The administrator signs in from 127.0.0.1; the flood comes from 127.0.0.3.
    bearer_for(&api, &ca, "admin", "admin-password-1");
    let rss_before = bamf_tests::rss_kib(api.pid());
    let (_, csr) = key_and_csr();
    let guess = serde_json::json!({"user": "admin", "password": "guess", "csr": csr}).to_string();
    let body_file = dir.path().join("guess.json");
    std::fs::write(&body_file, guess).unwrap();
    let port = api.addr.port();
    let flood: Vec<std::process::Child> = (0..200)
        .map(|_| {
            Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "60",
                ])
                .arg("--cacert")
                .arg(&ca)
                .args(["--interface", "127.0.0.3", "--resolve"])
                .arg(format!("localhost:{port}:127.0.0.1"))
                .args(["-H", "content-type: application/json", "--data-binary"])
                .arg(format!("@{}", body_file.display()))
                .arg(format!("https://localhost:{port}/api/v1/auth/login"))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("curl runs")
        })
        .collect();
    // Meanwhile, from the address the administrator uses.
    let admin = bearer_for(&api, &ca, "admin", "admin-password-1");
    assert_eq!(curl(&api, &ca, "/api/v1/whoami", &["-H", &admin]).1, 200);
    let mut codes = std::collections::BTreeMap::<String, u32>::new();
    for child in flood {
        let out = child.wait_with_output().unwrap();
        *codes
            .entry(String::from_utf8_lossy(&out.stdout).into_owned())
            .or_default() += 1;
    }
    let rss_after = bamf_tests::rss_kib(api.pid());
    let (_, _, metrics) = curl(&api, &ca, "/metrics", &[]);
    let checked = bamf_tests::parse_sample(&metrics, "bamf_api_password_checks_total");
    println!(
        "login flood: answers {codes:?}, passwords checked {checked}, API RSS {rss_before} KiB \
         before, {rss_after} KiB after"
    );
    // Requests are timed by route template and status (never a filled-in path), and the
    // build is named.
    let logins = bamf_tests::parse_sample(
        &metrics,
        "bamf_api_request_duration_seconds_count{route=\"/api/v1/auth/login\",method=\"POST\",status=\"429\"}",
    );
    assert!(logins >= 190.0, "{logins} timed 429 logins:\n{metrics}");
    assert!(
        metrics.contains("bamf_api_build_info{version=\""),
        "no build info:\n{metrics}"
    );
    // Two sign-ins by the administrator, and at most 10 guesses.
    assert!(checked <= 12.0, "{checked} passwords checked: {codes:?}");
    assert_eq!(codes.get("401").copied().unwrap_or(0), 10, "{codes:?}");
    assert_eq!(codes.get("429").copied().unwrap_or(0), 190, "{codes:?}");
    // Four hashing threads (the default) keep one 19 MiB argon2 block each.
    assert!(
        rss_after < rss_before + 120 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
}

/// A TLS connection to the API from `source`, handshake done, with `alpn`.
async fn tls_from(
    api: &Api,
    ca_pem: &str,
    source: &str,
    alpn: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse().unwrap())?;
    let tcp = socket.connect(api.addr).await?;
    let tls = bamf_client::tls_config(ca_pem, None, &[alpn]).unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
}

/// Whether the server closes `stream` within `limit`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// One client's held connections cannot take the API: beyond its share they are closed at
/// once (accepting goes on), idle ones (HTTP/1 after the handshake, an HTTP/2 preface and
/// nothing) are closed after the idle timeout, and another client is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_excess_connections_are_closed_and_others_are_served() {
    use tokio::io::AsyncWriteExt;
    let dir = TempDir::new("api-idle");
    let url = sqlite_url(dir.path());
    let api = Api::start(&[
        "--database-url",
        &url,
        "--idle-timeout",
        "2s",
        "--max-connections-per-address",
        "8",
    ])
    .unwrap();
    let ca = api.fetch_ca(dir.path());
    let ca_pem = std::fs::read_to_string(&ca).unwrap();
    // Eight held: four silent HTTP/1.1, four HTTP/2 that send the preface and stop.
    let mut held = Vec::new();
    for n in 0..8 {
        let alpn: &[u8] = if n % 2 == 0 { b"http/1.1" } else { b"h2" };
        let mut tls = tls_from(&api, &ca_pem, "127.0.0.3", alpn).await.unwrap();
        if alpn == b"h2" {
            tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .await
                .unwrap();
        }
        held.push(tls);
    }
    // The ninth from that address is closed at once, before any handshake.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.3:0".parse().unwrap()).unwrap();
    let mut ninth = socket.connect(api.addr).await.unwrap();
    assert!(
        closed_within(&mut ninth, Duration::from_secs(2)).await,
        "a ninth connection from one address was held"
    );
    // Another client is served meanwhile.
    let (_, status, _) = curl(&api, &ca, "/health", &[]);
    assert_eq!(status, 200);
    // The idle ones are closed after the idle timeout (2 s, plus the close grace).
    for (n, tls) in held.iter_mut().enumerate() {
        assert!(
            closed_within(tls, Duration::from_secs(9)).await,
            "idle connection {n} is still open"
        );
    }
    // And their places are back.
    assert!(
        tls_from(&api, &ca_pem, "127.0.0.3", b"http/1.1")
            .await
            .is_ok()
    );
}
