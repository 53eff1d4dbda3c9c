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
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
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
