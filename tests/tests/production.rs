//! `bamf-api` with the inputs a production deployment (the Helm chart) gives it: a publicly
//! trusted certificate for its host, a read replica, PostgreSQL over TLS, Redis with a
//! password and over TLS, trusted proxies. Real processes, `curl`, `openssl`, `psql`,
//! throwaway PostgreSQL and Redis servers on loopback.
#![allow(clippy::unwrap_used)] // a test binary: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bamf_tests::{Api, Bridge, PgSchema, TempDir};

const HOST: &str = "bamf.example.test";
const DOMAIN: &str = "tunnel.example.test";
const BRIDGE_TOKEN: &str = "bamf_production-test-bridge-token";

/// A throwaway CA (the "public" one, or the one that signs a store's server certificate).
struct Pki {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` with `serial`: (certificate PEM, key PEM).
    fn server(&self, names: &[&str], serial: u64) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write_ca(&self, path: &Path) -> String {
        std::fs::write(path, &self.pem).unwrap();
        path.display().to_string()
    }
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `curl https://<name>:<port><path>` resolved to the API, trusting only `ca`; returns
/// (exit code, HTTP status, body).
fn curl_as(api: &Api, name: &str, ca: &Path, path: &str, extra: &[&str]) -> (i32, u16, String) {
    let port = api.addr.port();
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{name}:{port}:127.0.0.1"))
        .args(["-w", "\n%{http_code}"])
        .args(extra)
        .arg(format!("https://{name}:{port}{path}"))
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

/// The serial (hex, as openssl prints it) of the certificate the API presents to `name`.
fn served_serial(api: &Api, name: &str) -> String {
    let script = format!(
        "openssl s_client -connect 127.0.0.1:{} -servername {name} </dev/null 2>/dev/null \
         | openssl x509 -noout -serial",
        api.addr.port()
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_owned()
}

fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Puts a certificate pair in `dir` the way a Kubernetes Secret volume does: files in a new
/// version directory, `..data` swapped to it atomically, `tls.crt`/`tls.key` links into it.
fn install_secret(dir: &Path, version: u32, (cert, key): &(String, String)) {
    let versioned = dir.join(format!("..v{version}"));
    std::fs::create_dir_all(&versioned).unwrap();
    std::fs::write(versioned.join("tls.crt"), cert).unwrap();
    std::fs::write(versioned.join("tls.key"), key).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..v{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

fn count_logs(api: &Api, text: &str) -> usize {
    api.logs().iter().filter(|l| l.contains(text)).count()
}

#[test]
fn the_api_host_gets_the_public_certificate_reloaded_from_disk_and_mtls_stays_internal() {
    let dir = TempDir::new("prod-tls");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("bamf.db").display());
    let public = Pki::new("Test Public Root");
    let public_ca = PathBuf::from(public.write_ca(&dir.path().join("public-ca.pem")));
    // A Secret mount whose files do not exist yet (cert-manager has not issued).
    let secret = dir.path().join("tls");
    std::fs::create_dir_all(&secret).unwrap();
    std::os::unix::fs::symlink("..data/tls.crt", secret.join("tls.crt")).unwrap();
    std::os::unix::fs::symlink("..data/tls.key", secret.join("tls.key")).unwrap();
    let (cert_file, key_file) = (
        secret.join("tls.crt").display().to_string(),
        secret.join("tls.key").display().to_string(),
    );
    let api = Api::start_with_env(
        &[
            "--database-url",
            &url,
            "--api-host",
            HOST,
            "--api-alt-names",
            "localhost",
            "--tunnel-domain",
            DOMAIN,
            "--admin-password",
            "pw-admin-1",
        ],
        &[
            ("BAMF_API_TLS_CERT_FILE", &cert_file),
            ("BAMF_API_TLS_KEY_FILE", &key_file),
            ("BAMF_BRIDGE_JOIN_TOKEN", BRIDGE_TOKEN),
        ],
    )
    .unwrap();
    let internal_ca = api.fetch_ca(dir.path());
    // Until the files appear: the internal certificate, and a log line saying so.
    assert_eq!(curl_as(&api, HOST, &internal_ca, "/health", &[]).1, 200);
    assert_eq!(count_logs(&api, "not there yet"), 1);
    assert_ne!(curl_as(&api, HOST, &public_ca, "/health", &[]).0, 0);

    // The Secret is filled: picked up without a restart.
    install_secret(&secret, 1, &public.server(&[HOST], 0x1001));
    wait_for(
        "the first public certificate",
        Duration::from_secs(15),
        || served_serial(&api, HOST) == "1001",
    );
    let (code, status, body) = curl_as(&api, HOST, &public_ca, "/health", &[]);
    assert_eq!((code, status), (0, 200), "{body}");
    // Only the public host: curl trusting the internal CA now fails there (60: peer
    // certificate cannot be authenticated), and the other names keep the internal one.
    assert_eq!(curl_as(&api, HOST, &internal_ca, "/health", &[]).0, 60);
    assert_eq!(
        curl_as(&api, "localhost", &internal_ca, "/health", &[]).1,
        200
    );

    // A bridge joins over the internal CA (it dials `localhost`), and its certificate from
    // the internal CA still authenticates it on the publicly certified host.
    let data = dir.path().join("bridge-0");
    let _bridge =
        Bridge::start_tunnel(0, DOMAIN, &api, &internal_ca, &data, BRIDGE_TOKEN, &[]).unwrap();
    wait_for("the bridge's certificate", Duration::from_secs(15), || {
        data.join("bridge.crt").exists()
    });
    let (bridge_cert, bridge_key) = (
        data.join("bridge.crt").display().to_string(),
        data.join("bridge.key").display().to_string(),
    );
    let (_, status, body) = curl_as(
        &api,
        HOST,
        &public_ca,
        "/api/v1/whoami",
        &["--cert", &bridge_cert, "--key", &bridge_key],
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("bamf://bridge/0"), "{body}");

    // Renewed on disk: the new serial is served by the same process.
    let pid = api.pid();
    install_secret(&secret, 2, &public.server(&[HOST], 0x1002));
    wait_for("the renewed certificate", Duration::from_secs(15), || {
        served_serial(&api, HOST) == "1002"
    });
    assert_eq!(api.pid(), pid);
    assert_eq!(curl_as(&api, HOST, &public_ca, "/health", &[]).1, 200);

    // The CLI on the public host: it verifies the API through the system roots (here the
    // public CA, as SSL_CERT_FILE), with the BAMF CA for everything else, as before.
    let home = dir.path().join("cli-home");
    let bamf = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = Command::new(bamf_tests::binary("bamf"))
            .env("BAMF_HOME", &home)
            .env("SSL_CERT_FILE", &public_ca)
            .env_remove("BAMF_API")
            .env_remove("BAMF_VIA")
            .env_remove("BAMF_USER")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let public_url = format!("https://{HOST}:{}", api.addr.port());
    let via = api.addr.to_string();
    let internal = internal_ca.display().to_string();
    let login = bamf(
        &[
            "login",
            "--api",
            &public_url,
            "--via",
            &via,
            "--ca-file",
            &internal,
            "--user",
            "admin",
            "--password-stdin",
        ],
        "pw-admin-1\n",
    );
    assert!(login.status.success(), "{login:?}");
    let listed = bamf(&["ls"], "");
    assert!(listed.status.success(), "{listed:?}");

    // A bad pair (the key of another certificate) is logged and the previous one kept.
    let (cert, _) = public.server(&[HOST], 0x1003);
    let (_, other_key) = public.server(&[HOST], 0x1004);
    install_secret(&secret, 3, &(cert, other_key));
    wait_for("the refusal of a bad pair", Duration::from_secs(15), || {
        count_logs(&api, "do not load") == 1
    });
    assert_eq!(served_serial(&api, HOST), "1002");
    assert_eq!(curl_as(&api, HOST, &public_ca, "/health", &[]).1, 200);
}

#[test]
fn present_but_unusable_public_certificate_files_stop_the_start() {
    let dir = TempDir::new("prod-tls-bad");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("bamf.db").display());
    let public = Pki::new("Test Public Root");
    let (cert, key) = public.server(&["other.example.test"], 7);
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let (cert_file, key_file) = (
        cert_file.display().to_string(),
        key_file.display().to_string(),
    );
    let err = Api::start(&[
        "--database-url",
        &url,
        "--api-host",
        HOST,
        "--api-tls-cert-file",
        &cert_file,
        "--api-tls-key-file",
        &key_file,
    ])
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("does not name bamf.example.test"),
        "{err:#}"
    );
}

/// Signs in `admin` with `password`; returns the bearer header line.
fn admin_bearer(api: &Api, ca: &Path, password: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let body = serde_json::json!({"user": "admin", "password": password, "csr": csr}).to_string();
    let (_, status, answer) = curl_as(
        api,
        "localhost",
        ca,
        "/api/v1/auth/login",
        &[
            "-H",
            "content-type: application/json",
            "--data-binary",
            &body,
        ],
    );
    assert_eq!(status, 200, "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    format!("authorization: Bearer {}", v["token"].as_str().unwrap())
}

#[test]
fn audit_and_session_listings_read_from_the_read_replica() {
    let pg = PgSchema::new("readrep");
    let app = format!("bamf_read_{}", std::process::id());
    let read_url = format!("{}&application_name={app}", pg.url);
    let dir = TempDir::new("prod-read");
    let api = Api::start_with_env(
        &["--database-url", &pg.url, "--admin-password", "pw-admin-1"],
        &[
            ("BAMF_DATABASE_READ_URL", &read_url),
            ("BAMF_AUDIT_RETENTION_DAYS", "30"),
        ],
    )
    .unwrap();
    let ca = api.fetch_ca(dir.path());
    let auth = admin_bearer(&api, &ca, "pw-admin-1");
    let last_queries = || {
        pg.psql(&format!(
            "SELECT query FROM pg_stat_activity WHERE application_name = '{app}'"
        ))
    };
    let (_, status, body) = curl_as(&api, "localhost", &ca, "/api/v1/audit", &["-H", &auth]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("auth.login"), "{body}");
    // The connection named by the read URL ran the listing.
    assert!(
        last_queries().contains("FROM audit_events"),
        "{}",
        last_queries()
    );
    let (_, status, body) = curl_as(&api, "localhost", &ca, "/api/v1/sessions", &["-H", &auth]);
    assert_eq!(status, 200, "{body}");
    assert!(
        last_queries().contains("FROM sessions"),
        "{}",
        last_queries()
    );
    // Writes never go there.
    assert!(!last_queries().contains("INSERT"), "{}", last_queries());
    // The retention schedule started, and its first run (at start) found nothing to purge.
    assert_eq!(count_logs(&api, "purged hourly"), 1);
    assert_eq!(count_logs(&api, "purge failed"), 0, "{:?}", api.logs());
    // A read URL for a SQLite store is a configuration error, reported before starting.
    let sqlite = format!("sqlite://{}?mode=rwc", dir.path().join("b.db").display());
    let err = Api::start_with_env(
        &["--database-url", &sqlite],
        &[("BAMF_DATABASE_READ_URL", &read_url)],
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("PostgreSQL only"), "{err:#}");
}

/// Path of a PostgreSQL server program (the newest installed major version).
fn pg_program(name: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server programs under /usr/lib/postgresql")
        .filter_map(|e| Some(e.ok()?.path().join("bin").join(name)))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| panic!("{name} not found"))
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// A command run as the owner of the throwaway cluster: `postgres` when we are root
/// (PostgreSQL refuses to run as root), else ourselves.
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// A throwaway PostgreSQL that accepts only TLS connections (`hostssl`, no `host` line),
/// with a server certificate for `localhost` and 127.0.0.1 from its own CA.
struct TlsPostgres {
    data: PathBuf,
    port: u16,
    ca_file: String,
    _dir: TempDir,
}

impl TlsPostgres {
    fn start() -> Self {
        let dir = TempDir::new("prod-pgtls");
        let root = dir.path();
        let ca = Pki::new("Test Database CA");
        let ca_file = ca.write_ca(&root.join("db-ca.pem"));
        let server = root.join("server");
        std::fs::create_dir_all(&server).unwrap();
        let (cert, key) = ca.server(&["localhost", "127.0.0.1"], 42);
        std::fs::write(server.join("server.crt"), cert).unwrap();
        std::fs::write(server.join("server.key"), key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(
            server.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&server)
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let data = server.join("data");
        let out = as_owner(&pg_program("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {out:?}");
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
        )
        .unwrap();
        let port = free_port();
        let options = format!(
            "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={s} \
             -c ssl=on -c ssl_cert_file={s}/server.crt -c ssl_key_file={s}/server.key -c fsync=off",
            s = server.display()
        );
        let out = as_owner(&pg_program("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(server.join("log"))
            .args(["-o", &options, "-w", "-t", "30", "start"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {out:?}\n{}",
            std::fs::read_to_string(server.join("log")).unwrap_or_default()
        );
        Self {
            data,
            port,
            ca_file,
            _dir: dir,
        }
    }

    fn url(&self, query: &str) -> String {
        format!(
            "postgres://postgres@localhost:{}/postgres?{query}",
            self.port
        )
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = as_owner(&pg_program("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

#[test]
fn the_api_uses_a_postgresql_that_requires_tls() {
    let pg = TlsPostgres::start();
    let dir = TempDir::new("prod-pgtls-api");
    let ready = |api: &Api| {
        let ca = api.fetch_ca(dir.path());
        curl_as(api, "localhost", &ca, "/ready", &[])
    };
    // sslmode=require: encrypted, the server's certificate not checked.
    let api = Api::start(&["--database-url", &pg.url("sslmode=require")]).unwrap();
    let (_, status, body) = ready(&api);
    assert_eq!(status, 200, "{body}");
    drop(api);
    // verify-full with the CA from BAMF_DATABASE_CA_FILE (the URL names none).
    let api = Api::start_with_env(
        &["--database-url", &pg.url("sslmode=verify-full")],
        &[("BAMF_DATABASE_CA_FILE", &pg.ca_file)],
    )
    .unwrap();
    assert_eq!(ready(&api).1, 200);
    drop(api);
    // ... or named in the URL, as the chart also does.
    let url = pg.url(&format!("sslmode=verify-full&sslrootcert={}", pg.ca_file));
    let api = Api::start(&["--database-url", &url]).unwrap();
    assert_eq!(ready(&api).1, 200);
    drop(api);
    // verify-full without that CA: the server's certificate is refused.
    let err = Api::start(&["--database-url", &pg.url("sslmode=verify-full")]).unwrap_err();
    assert!(
        format!("{err:#}").contains("connecting to the store"),
        "{err:#}"
    );
    // A CA file that does not exist: a clear message before anything is touched.
    let err = Api::start_with_env(
        &["--database-url", &pg.url("sslmode=verify-full")],
        &[("BAMF_DATABASE_CA_FILE", "/nonexistent/ca.pem")],
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("BAMF_DATABASE_CA_FILE: cannot read /nonexistent/ca.pem"),
        "{err:#}"
    );
    // Without TLS the server refuses, and the API says why.
    let err = Api::start(&["--database-url", &pg.url("sslmode=disable")]).unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("connecting to the store") && text.contains("no encryption"),
        "{text}"
    );
}

/// A throwaway `redis-server` on loopback, killed (by its pid) when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(args: &[&str]) -> Self {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(args.iter().map(|a| a.replace("{port}", &port.to_string())))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        wait_for("redis-server listening", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Self { child, port }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/ready` until its status is `want` (presence connects lazily); returns the last body.
fn ready_becomes(api: &Api, ca: &Path, want: u16) -> String {
    let mut last = String::new();
    wait_for("/ready", Duration::from_secs(15), || {
        let (_, status, body) = curl_as(api, "localhost", ca, "/ready", &[]);
        last = body;
        status == want
    });
    last
}

#[test]
fn the_api_uses_a_redis_that_requires_a_password() {
    let redis = Redis::start(&["--port", "{port}", "--requirepass", "pw-redis-secret"]);
    let dir = TempDir::new("prod-redis-pw");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("bamf.db").display());
    let redis_url = format!("redis://:pw-redis-secret@127.0.0.1:{}/0", redis.port);
    let api = Api::start(&["--database-url", &url, "--redis-url", &redis_url]).unwrap();
    let ca = api.fetch_ca(dir.path());
    let body = ready_becomes(&api, &ca, 200);
    assert!(body.contains("\"presence\":\"ok\""), "{body}");
    drop(api);
    // A wrong password: presence is unavailable, and the password is in no log line.
    let wrong = format!("redis://:pw-wrong-secret@127.0.0.1:{}/0", redis.port);
    let api = Api::start(&["--database-url", &url, "--redis-url", &wrong]).unwrap();
    let body = ready_becomes(&api, &ca, 503);
    assert!(body.contains("presence"), "{body}");
    assert!(
        !api.logs().iter().any(|l| l.contains("pw-wrong-secret")),
        "{:?}",
        api.logs()
    );
}

#[test]
fn the_api_uses_redis_over_tls() {
    let dir = TempDir::new("prod-redis-tls");
    let ca = Pki::new("Test Redis CA");
    let ca_file = ca.write_ca(&dir.path().join("redis-ca.pem"));
    let (cert, key) = ca.server(&["localhost", "127.0.0.1"], 9);
    let (cert_file, key_file) = (dir.path().join("redis.crt"), dir.path().join("redis.key"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let (cert_file, key_file) = (
        cert_file.display().to_string(),
        key_file.display().to_string(),
    );
    let redis = Redis::start(&[
        "--port",
        "0",
        "--tls-port",
        "{port}",
        "--tls-cert-file",
        &cert_file,
        "--tls-key-file",
        &key_file,
        "--tls-ca-cert-file",
        &ca_file,
        "--tls-auth-clients",
        "no",
        "--requirepass",
        "pw-redis-tls",
    ]);
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("bamf.db").display());
    let redis_url = format!("rediss://:pw-redis-tls@localhost:{}/0", redis.port);
    // The server's CA reaches the API as the system trust store would (SSL_CERT_FILE).
    let api = Api::start_with_env(
        &["--database-url", &url, "--redis-url", &redis_url],
        &[("SSL_CERT_FILE", &ca_file)],
    )
    .unwrap();
    let api_ca = api.fetch_ca(dir.path());
    let body = ready_becomes(&api, &api_ca, 200);
    assert!(body.contains("\"presence\":\"ok\""), "{body}");
    drop(api);
    // Without trusting that CA, the server's certificate is refused.
    let api = Api::start_with_env(
        &["--database-url", &url, "--redis-url", &redis_url],
        &[
            ("SSL_CERT_FILE", "/dev/null"),
            ("SSL_CERT_DIR", "/nonexistent"),
        ],
    )
    .unwrap();
    ready_becomes(&api, &api_ca, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_may_send_a_proxy_header_or_call_on_its_own_behalf() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = TempDir::new("prod-proxy");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("bamf.db").display());
    let api = Api::start(&["--database-url", &url, "--trusted-proxies", "127.0.0.1"]).unwrap();
    // curl, from the proxy's own address and without a header (a bridge's own call).
    let ca = api.fetch_ca(dir.path());
    assert_eq!(curl_as(&api, "localhost", &ca, "/health", &[]).1, 200);
    // A forwarded client: the header names it, and the API logs and counts it as that client.
    let ca_pem = std::fs::read_to_string(&ca).unwrap();
    let tls = bamf_client::tls_config(&ca_pem, None, &[b"http/1.1"]).unwrap();
    let mut tcp = tokio::net::TcpStream::connect(api.addr).await.unwrap();
    let header = bamf_proto::proxy_v2::Header {
        source: "192.0.2.7:4242".parse().unwrap(),
        destination: api.addr,
        authority: Some("localhost".parse().unwrap()),
    }
    .to_bytes();
    tcp.write_all(&header).await.unwrap();
    let name = rustls_name("localhost");
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The access line is written once the answer is sent: allow it a moment on a busy machine.
    let logged = || {
        api.logs()
            .iter()
            .any(|l| l.contains("\"path\":\"/health\"") && l.contains("192.0.2.7:4242"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !logged() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(logged(), "{:?}", api.logs());
}

fn rustls_name(name: &str) -> tokio_rustls::rustls::pki_types::ServerName<'static> {
    tokio_rustls::rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap()
}
