//! Tunnels end to end: real `bamf-api`, `bamf-bridge` and `bamf-agent` processes, a TCP
//! echo target, and clients holding session certificates.
#![allow(clippy::unwrap_used)] // a test binary: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bamf_api::ca::Authority;
use bamf_client::https::Api as ApiClient;
use bamf_proto::san::{AgentId, Identity, SessionId, Uuid};
use bamf_tests::{Agent, Api, Bridge, PgSchema, TempDir, User};
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BRIDGE_TOKEN: &str = "bamf_bridge-bootstrap-token-for-tests";
const DOMAIN: &str = "tunnel.test";

fn random_uuid() -> Uuid {
    use std::hash::{BuildHasher, Hasher};
    let mut bytes = [0u8; 16];
    for half in bytes.chunks_mut(8) {
        let n = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        half.copy_from_slice(&n.to_le_bytes());
    }
    Uuid::new_v4(bytes)
}

/// A key and a certificate for `identity` from `ca`, issued at `at` for `lifetime`.
fn mint(
    ca: &Authority,
    identity: &Identity,
    at: time::OffsetDateTime,
    lifetime: Duration,
) -> (String, String) {
    let (key, csr) = bamf_client::identity::key_and_csr().unwrap();
    let issued = ca.issue(&csr, identity, None, lifetime, at).unwrap();
    (issued.pem, key)
}

fn client_identity(session: SessionId, agent: AgentId, bridge: u32) -> Identity {
    Identity::Client {
        session,
        user: "alice".parse().unwrap(),
        resource: "echo".parse().unwrap(),
        agent,
        bridge,
    }
}

/// A client's end-to-end session with the agent.
type Tunnel = bamf_client::e2e::Session;

/// Opens a client's tunnel: dials bridge `ordinal`'s name at `front` with a session
/// certificate, is handed over, and completes the end-to-end handshake with the agent. A
/// refusal is an error (the bridge closes an unpaired side).
async fn dial(
    front: SocketAddr,
    ordinal: u32,
    ca_pem: &str,
    cert: &(String, String),
) -> Result<Tunnel, String> {
    let host = format!("{ordinal}.bridge.{DOMAIN}");
    bamf_client::e2e::open(&host, 443, Some(front), ca_pem, &cert.0, &cert.1)
        .await
        .map_err(|e| e.to_string())
}

/// The outer layer alone, to bridge `ordinal` at `front`, with `cert`.
async fn outer(
    front: SocketAddr,
    ordinal: u32,
    ca_pem: &str,
    cert: &(String, String),
) -> std::io::Result<bamf_client::tunnel::Outer> {
    let tls = bamf_client::tls_config(ca_pem, Some((&cert.0, &cert.1)), &[]).unwrap();
    bamf_client::tunnel::dial(&format!("{ordinal}.bridge.{DOMAIN}"), 443, Some(front), tls).await
}

/// How long `work` took, and what it gave.
async fn timed<T>(work: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let out = work.await;
    (out, started.elapsed())
}

/// A certificate's serial (lower-case hex, as the API names it) and SHA-256 fingerprint, as
/// `openssl` reads them.
fn serial_and_fingerprint(pem: &str) -> (String, String) {
    let out = std::process::Command::new("sh")
        .args(["-c", "openssl x509 -noout -serial -fingerprint -sha256"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(pem.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.split_once('=').filter(|(k, _)| k.ends_with(name)))
            .map(|(_, v)| v.replace(':', "").to_lowercase())
            .unwrap()
    };
    (field("serial"), field("Fingerprint"))
}

/// A revocation request naming a certificate by `field` (`serial` or `fingerprint`).
fn revoke(field: &str, value: &str) -> serde_json::Value {
    let mut body = serde_json::json!({"reason": "test"});
    body[field] = value.into();
    body
}

/// Revokes as `body` says and checks that `tunnel` closes within a heartbeat (1 s here) and
/// its session `id` ends `revoked`.
async fn revoke_and_see_it_close(
    admin: &User,
    body: serde_json::Value,
    tunnel: &mut tokio::io::DuplexStream,
    pg: &PgSchema,
    id: &str,
) {
    admin
        .call(Method::POST, "/api/v1/revocations", Some(body))
        .await
        .unwrap();
    let (_, closed) = read_to_end(tunnel, Duration::from_secs(5)).await;
    assert!(closed.expect("closed after the revocation") < Duration::from_secs(3));
    wait_session(pg, id, "ended revoked", 4, Duration::from_secs(10)).await;
}

/// Reads until the peer closes or fails, within `limit`; returns what arrived and when it
/// ended (None: still open at the limit).
async fn read_to_end<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> (Vec<u8>, Option<Duration>) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16384];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return (got, Some(started.elapsed())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, None),
        }
    }
}

/// Writes `data` and reads the same number of bytes back.
async fn echo_through<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    data: &[u8],
) -> Vec<u8> {
    let (mut r, mut w) = tokio::io::split(stream);
    let write = async {
        w.write_all(data).await.unwrap();
        w.flush().await.unwrap();
    };
    let read = async {
        let mut back = vec![0u8; data.len()];
        tokio::time::timeout(Duration::from_secs(20), r.read_exact(&mut back))
            .await
            .expect("echo within 20 s")
            .expect("echo read");
        back
    };
    let ((), back) = tokio::join!(write, read);
    back
}

fn tunnel_bridge(dir: &Path, ordinal: u32, api: &Api, ca_file: &Path, extra: &[&str]) -> Bridge {
    let data = dir.join(format!("bridge-{ordinal}"));
    let mut args = vec!["--match-timeout", "2s"];
    args.extend_from_slice(extra);
    Bridge::start_tunnel(ordinal, DOMAIN, api, ca_file, &data, BRIDGE_TOKEN, &args).unwrap()
}

/// The certificates alone decide: pinning, matching session and agent, expiry, our CA, one
/// use per session, and the match timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_pairs_only_matching_certificates() {
    let dir = TempDir::new("tunnel-refusals");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("bamf.db").display());
    let api = Api::start_with_env(
        &["--database-url", &url, "--tunnel-domain", DOMAIN],
        &[("BAMF_BRIDGE_JOIN_TOKEN", BRIDGE_TOKEN)],
    )
    .unwrap();
    let ca = bamf_tests::stored_ca(&url).await.unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let bridge = tunnel_bridge(dir.path(), 0, &api, &ca_file, &[]);
    // The bridge joined with the bootstrap token and keeps its key 0600.
    use std::os::unix::fs::PermissionsExt;
    let key_mode = std::fs::metadata(dir.path().join("bridge-0/bridge.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);

    let now = time::OffsetDateTime::now_utc();
    let minute = Duration::from_secs(60);
    let (agent_a, agent_b) = (AgentId(random_uuid()), AgentId(random_uuid()));
    let cert_a = mint(&ca, &Identity::Agent { agent: agent_a }, now, minute);
    let cert_b = mint(&ca, &Identity::Agent { agent: agent_b }, now, minute);
    let pem = ca.cert_pem();
    let front = bridge.front;
    // Every byte into and out of the bridge goes through this tap.
    let tap = bamf_tests::Tap::start(front).await.unwrap();
    let wire = tap.addr;
    let agent_side = |cert: (String, String), session: SessionId| async move {
        let mut s = outer(wire, 0, pem, &cert)
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(&bamf_proto::tunnel::agent_preamble(session))
            .await
            .unwrap();
        s.flush().await.unwrap();
        let raw = bamf_client::e2e::hand_over(s, Duration::from_secs(15))
            .await
            .map_err(|e| e.to_string())?;
        let inner = bamf_client::e2e::server_config(pem, &cert.0, &cert.1).unwrap();
        bamf_client::e2e::accept(raw, inner)
            .await
            .map_err(|e| e.to_string())
    };

    // A matching pair: bytes flow both ways, end to end: the bridge moves only ciphertext.
    const MARKER: &[u8] = b"plaintext-marker-the-bridge-must-not-see";
    let s1 = SessionId(random_uuid());
    let client_cert = mint(&ca, &client_identity(s1, agent_a, 0), now, minute);
    let client = tokio::spawn({
        let cert = client_cert.clone();
        let pem = pem.to_owned();
        async move {
            let mut c = dial(wire, 0, &pem, &cert).await.unwrap();
            let back = echo_through(&mut c, MARKER).await;
            c.shutdown().await.unwrap();
            back
        }
    });
    let mut agent = agent_side(cert_a.clone(), s1).await.unwrap();
    let mut buf = vec![0u8; MARKER.len()];
    agent.read_exact(&mut buf).await.unwrap();
    agent.write_all(&buf).await.unwrap();
    agent.flush().await.unwrap();
    assert_eq!(client.await.unwrap(), MARKER);
    // Counted while the tunnel is still open (the agent's side has not closed yet).
    for direction in ["up", "down"] {
        let sample = format!("bamf_tunnel_bytes_total{{direction=\"{direction}\"}}");
        let v = bridge.wait_metric(&sample, Duration::from_secs(5), |v| v >= 40.0);
        assert!(v >= 40.0, "{sample} = {v}");
    }
    drop(agent);
    let recorded: Vec<u8> = tap
        .recorded()
        .into_iter()
        .flat_map(|r| [r.up, r.down])
        .flatten()
        .collect();
    assert!(
        recorded.len() > 1000,
        "the tap saw {} bytes",
        recorded.len()
    );
    assert!(
        !recorded.windows(MARKER.len()).any(|w| w == MARKER),
        "the marker crossed the bridge in plaintext"
    );

    // The same session certificate cannot open a second tunnel: refused at once, not at the
    // match timeout.
    let (again, took) = timed(dial(front, 0, pem, &client_cert)).await;
    assert!(again.is_err());
    assert!(took < Duration::from_secs(1), "{took:?}");

    // Pinned to bridge 1, presented to bridge 0.
    let pinned = mint(
        &ca,
        &client_identity(SessionId(random_uuid()), agent_a, 1),
        now,
        minute,
    );
    let (refused, took) = timed(dial(front, 0, pem, &pinned)).await;
    assert!(refused.is_err());
    assert!(took < Duration::from_secs(1), "pinning refused at once");

    // Bytes on the outer layer after the handshake: refused (they would otherwise reach the
    // agent as if they were the end-to-end session's).
    let chatty = mint(
        &ca,
        &client_identity(SessionId(random_uuid()), agent_a, 0),
        now,
        minute,
    );
    let mut s = outer(front, 0, pem, &chatty).await.unwrap();
    s.write_all(b"not a close_notify").await.unwrap();
    s.flush().await.unwrap();
    let (refused, took) = timed(bamf_client::e2e::hand_over(s, Duration::from_secs(5))).await;
    assert!(refused.is_err());
    assert!(took < Duration::from_secs(1), "{took:?}");

    // Agent mismatch: the wrong agent is refused at once; the client waits out the match
    // timeout (2 s here) and is closed.
    let s2 = SessionId(random_uuid());
    let waiting = mint(&ca, &client_identity(s2, agent_a, 0), now, minute);
    let client = tokio::spawn({
        let pem = pem.to_owned();
        async move { timed(dial(front, 0, &pem, &waiting)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (wrong, took) = timed(agent_side(cert_b.clone(), s2)).await;
    assert!(wrong.is_err(), "the wrong agent was paired");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let (paired, took) = client.await.unwrap();
    assert!(paired.is_err());
    assert!(
        (Duration::from_millis(1500)..Duration::from_secs(5)).contains(&took),
        "{took:?}"
    );

    // Session mismatch: client for s3, agent for s4; neither pairs, both closed at the timeout.
    let (s3, s4) = (SessionId(random_uuid()), SessionId(random_uuid()));
    let c3 = mint(&ca, &client_identity(s3, agent_a, 0), now, minute);
    let ((c, end_c), (a, end_a)) = tokio::join!(
        timed(dial(front, 0, pem, &c3)),
        timed(agent_side(cert_a.clone(), s4))
    );
    assert!(c.is_err() && a.is_err());
    assert!(
        end_c > Duration::from_millis(1500) && end_a > Duration::from_millis(1500),
        "both closed at the match timeout: {end_c:?} {end_a:?}"
    );

    // The agent could not reach the target: the waiting client is told so at once, not at
    // the match timeout.
    let s5 = SessionId(random_uuid());
    let c5 = mint(&ca, &client_identity(s5, agent_a, 0), now, minute);
    let client = tokio::spawn({
        let pem = pem.to_owned();
        async move {
            let s = outer(front, 0, &pem, &c5).await.unwrap();
            timed(bamf_client::e2e::hand_over(s, Duration::from_secs(5))).await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut failed = outer(front, 0, pem, &cert_a).await.unwrap();
    failed
        .write_all(&bamf_proto::tunnel::agent_failure_preamble(s5))
        .await
        .unwrap();
    failed.shutdown().await.unwrap();
    let (told, took) = client.await.unwrap();
    assert!(
        matches!(
            told,
            Err(bamf_client::e2e::HandoverError::TargetUnreachable)
        ),
        "{told:?}"
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
    drop(failed);

    // Expired session certificate, and one from another CA: the handshake fails.
    let expired = mint(
        &ca,
        &client_identity(SessionId(random_uuid()), agent_a, 0),
        now - Duration::from_secs(7200),
        minute,
    );
    let foreign_ca = Authority::generate("another CA", now).unwrap();
    let foreign = mint(
        &foreign_ca,
        &client_identity(SessionId(random_uuid()), agent_a, 0),
        now,
        minute,
    );
    for (label, cert) in [("expired", expired), ("foreign", foreign)] {
        let refused = dial(front, 0, pem, &cert).await;
        assert!(refused.is_err(), "{label} certificate accepted");
    }

    // Each refusal is counted by reason.
    for (reason, at_least) in [
        ("session_already_used", 1.0),
        ("pinned_to_other_bridge", 1.0),
        ("agent_mismatch", 1.0),
        ("match_timeout", 3.0),
        ("target_unreachable", 1.0),
        ("data_on_outer_layer", 1.0),
        ("handshake_failed", 2.0),
    ] {
        let sample = format!("bamf_tunnel_refusals_total{{reason=\"{reason}\"}}");
        let v = bridge.wait_metric(&sample, Duration::from_secs(5), |v| v >= at_least);
        assert!(v >= at_least, "{sample} = {v}");
    }
}

/// (state, bytes_up, bytes_down, end_reason) of a session.
fn session_row(pg: &PgSchema, id: &str) -> String {
    pg.psql(&format!(
        "SELECT state || ' ' || bytes_up || ' ' || bytes_down || ' ' || coalesce(end_reason, '-') \
         FROM {}.sessions WHERE id = '{id}'",
        pg.schema
    ))
    .trim()
    .to_owned()
}

/// Waits until the session row reads `want` ("state reason") with at least `bytes` counted
/// each way: the bridge counts the end-to-end session's ciphertext, so TLS adds its overhead
/// to the application's bytes.
async fn wait_session(pg: &PgSchema, id: &str, want: &str, bytes: u64, limit: Duration) {
    let started = Instant::now();
    loop {
        let got = session_row(pg, id);
        let fields: Vec<&str> = got.split(' ').collect();
        if let [state, up, down, reason] = fields[..]
            && format!("{state} {reason}") == want
            && up.parse::<u64>().is_ok_and(|n| n >= bytes)
            && down.parse::<u64>().is_ok_and(|n| n >= bytes)
        {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "session {id}: {got:?}, wanted {want:?} with at least {bytes} bytes each way"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The issue's scenario: API on PostgreSQL and Redis, bridges 0 and 1 forwarding to each
/// other, one agent, an echo target; sessions placed on either bridge work through the
/// other's front door; byte counts land in PostgreSQL; kills and revocations close live
/// tunnels within a heartbeat; tunnels outlive the API and their reports arrive later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_cross_bridges_are_counted_killed_and_survive_the_api() {
    let dir = TempDir::new("tunnel-e2e");
    let pg = PgSchema::new("tunnel");
    let redis = bamf_tests::redis_db(9);
    let api_args = |listen: &str| {
        vec![
            "--listen".to_owned(),
            listen.to_owned(),
            "--database-url".to_owned(),
            pg.url.clone(),
            "--redis-url".to_owned(),
            redis.clone(),
            "--admin-password".to_owned(),
            "admin-password-1".to_owned(),
            "--tunnel-domain".to_owned(),
            DOMAIN.to_owned(),
        ]
    };
    let start_api = |listen: &str| {
        let args = api_args(listen);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Api::start_with_env(&args, &[("BAMF_BRIDGE_JOIN_TOKEN", BRIDGE_TOKEN)]).unwrap()
    };
    let mut api = start_api("127.0.0.1:0");
    let ca = bamf_tests::stored_ca(&pg.url).await.unwrap();
    let ca_pem = ca.cert_pem().to_owned();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();

    // Bridge 1's peer port is reserved first so bridge 0 can name it; bridge 0's peer port
    // is on 127.0.0.0 so that the template 127.0.0.{n} reaches both.
    let peer_1 = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let to_1 = format!("127.0.0.{{n}}:{peer_1}");
    let bridge_0 = tunnel_bridge(
        dir.path(),
        0,
        &api,
        &ca_file,
        &["--peer-listen", "127.0.0.0:0", "--peer-address", &to_1],
    );
    let to_0 = format!("127.0.0.{{n}}:{}", bridge_0.peer.unwrap().port());
    let peer_1_listen = format!("127.0.0.1:{peer_1}");
    let bridge_1 = tunnel_bridge(
        dir.path(),
        1,
        &api,
        &ca_file,
        &["--peer-listen", &peer_1_listen, "--peer-address", &to_0],
    );
    let fronts = [bridge_0.front, bridge_1.front];

    // One agent beside an echo target; it dials every bridge through bridge 0's front door.
    let echo = bamf_tests::echo_server();
    let admin = User::login(&api, &ca_pem, "admin", "admin-password-1").await;
    // Killed when dropped, also when an assertion fails.
    let agent = start_agent(dir.path(), &api, &ca_file, &admin, bridge_0.front, echo).await;

    // RBAC: a user without a role is refused, audited.
    admin
        .call(
            Method::POST,
            "/api/v1/users",
            Some(serde_json::json!({"name": "bob", "password": "bob-password-12"})),
        )
        .await
        .unwrap();
    let bob = User::login(&api, &ca_pem, "bob", "bob-password-12").await;
    let denied = bob.connect_refused("echo").await;
    // A resource bob may not reach reads exactly like one that does not exist.
    let unknown = bob.connect_refused("nope").await;
    assert_eq!(unknown.status().map(|s| s.as_u16()), Some(404));
    assert_eq!(denied.to_string(), unknown.to_string());

    // Session A lands on the idle bridge 0; its client enters through bridge 1.
    let (id_a, on_a, cert_a) = admin.connect("echo").await;
    assert_eq!(on_a, 0);
    let mut tunnel_a = admin
        .open(fronts[1], DOMAIN, on_a, &id_a, &cert_a, &ca_pem)
        .await
        .app;
    assert_eq!(
        echo_through(&mut tunnel_a, b"hello via bridge 1").await,
        b"hello via bridge 1"
    );
    // With bridge 0 busy (after its heartbeat), session B lands on bridge 1, and its client
    // enters through bridge 0.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (id_b, on_b, cert_b) = admin.connect("echo").await;
    assert_eq!(on_b, 1, "least loaded");
    let mut tunnel_b = admin
        .open(fronts[0], DOMAIN, on_b, &id_b, &cert_b, &ca_pem)
        .await
        .app;
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    assert!(
        echo_through(&mut tunnel_b, &data).await == data,
        "byte-exact"
    );
    tunnel_b.shutdown().await.unwrap();
    let (rest, _) = read_to_end(&mut tunnel_b, Duration::from_secs(10)).await;
    assert!(rest.is_empty());
    wait_session(&pg, &id_b, "ended closed", 200_000, Duration::from_secs(10)).await;

    // A second API replica on the same store and Redis: the admin's token works there, and a
    // session opened through it reaches the agent whose command stream is on the first.
    let replica = start_api("127.0.0.1:0");
    let via_replica = User {
        api: ApiClient::new(
            &format!("https://localhost:{}", replica.addr.port()),
            bamf_client::tls_config(&ca_pem, None, &[b"http/1.1"]).unwrap(),
        )
        .unwrap()
        .connect_to(Some(replica.addr)),
        token: admin.token.clone(),
        certificate: admin.certificate.clone(),
    };
    let (id_r, on_r, cert_r) = via_replica.connect("echo").await;
    let mut tunnel_r = via_replica
        .open(fronts[on_r as usize], DOMAIN, on_r, &id_r, &cert_r, &ca_pem)
        .await
        .app;
    assert_eq!(
        echo_through(&mut tunnel_r, b"via the replica").await,
        b"via the replica"
    );
    tunnel_r.shutdown().await.unwrap();
    let _ = read_to_end(&mut tunnel_r, Duration::from_secs(5)).await;
    wait_session(&pg, &id_r, "ended closed", 15, Duration::from_secs(10)).await;
    drop(replica);

    // Deleting a live session closes its tunnel within one heartbeat (1 s here).
    admin
        .call(Method::DELETE, &format!("/api/v1/sessions/{id_a}"), None)
        .await
        .unwrap();
    let (_, closed) = read_to_end(&mut tunnel_a, Duration::from_secs(5)).await;
    let closed = closed.expect("killed within a heartbeat");
    assert!(closed < Duration::from_secs(3), "{closed:?}");
    wait_session(&pg, &id_a, "ended killed", 18, Duration::from_secs(10)).await;

    // The API goes away while a tunnel runs: bytes keep flowing, the report arrives when it
    // is back (on the same address, store and presence).
    let (id_c, on_c, cert_c) = admin.connect("echo").await;
    let mut tunnel_c = admin
        .open(
            fronts[1 - on_c as usize],
            DOMAIN,
            on_c,
            &id_c,
            &cert_c,
            &ca_pem,
        )
        .await
        .app;
    let api_addr = api.addr.to_string();
    drop(api);
    assert_eq!(
        echo_through(&mut tunnel_c, b"still here").await,
        b"still here"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(echo_through(&mut tunnel_c, b"and here").await, b"and here");
    tunnel_c.shutdown().await.unwrap();
    let _ = read_to_end(&mut tunnel_c, Duration::from_secs(5)).await;
    // Its start may have been reported before the API went (the handover waits for the
    // pairing), its end cannot have been.
    let row = session_row(&pg, &id_c);
    assert!(
        row == "pending 0 0 -" || row == "active 0 0 -",
        "no end report while the API is down: {row}"
    );
    api = start_api(&api_addr);
    wait_session(&pg, &id_c, "ended closed", 18, Duration::from_secs(45)).await;

    // Revocation ends what derives from the certificate, within a heartbeat (1 s here).
    let admin = User::login(&api, &ca_pem, "admin", "admin-password-1").await;
    // A session certificate revoked (by fingerprint) while its tunnel runs.
    let (id_e, on_e, cert_e) = admin.connect("echo").await;
    let mut tunnel_e = admin
        .open(fronts[on_e as usize], DOMAIN, on_e, &id_e, &cert_e, &ca_pem)
        .await
        .app;
    assert_eq!(echo_through(&mut tunnel_e, b"live").await, b"live");
    let (_, fingerprint_e) = serial_and_fingerprint(&cert_e.0);
    revoke_and_see_it_close(
        &admin,
        revoke("fingerprint", &fingerprint_e),
        &mut tunnel_e,
        &pg,
        &id_e,
    )
    .await;
    // A session certificate revoked (by serial) before it is used never pairs.
    let (id_f, on_f, cert_f) = admin.connect("echo").await;
    let (serial_f, _) = serial_and_fingerprint(&cert_f.0);
    admin
        .call(
            Method::POST,
            "/api/v1/revocations",
            Some(revoke("serial", &serial_f)),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let refused = dial(fronts[on_f as usize], on_f, &ca_pem, &cert_f).await;
    assert!(refused.is_err(), "a revoked session paired");
    wait_session(&pg, &id_f, "ended revoked", 0, Duration::from_secs(10)).await;
    // A user's certificate revoked: their live tunnel closes and their tokens stop working
    // (all of them: the administrator signs in again below).
    let signed_in = User::login(&api, &ca_pem, "admin", "admin-password-1").await;
    let (id_g, on_g, cert_g) = signed_in.connect("echo").await;
    let mut tunnel_g = signed_in
        .open(fronts[on_g as usize], DOMAIN, on_g, &id_g, &cert_g, &ca_pem)
        .await
        .app;
    assert_eq!(echo_through(&mut tunnel_g, b"mine").await, b"mine");
    let (serial_g, _) = serial_and_fingerprint(&signed_in.certificate);
    revoke_and_see_it_close(
        &admin,
        revoke("serial", &serial_g),
        &mut tunnel_g,
        &pg,
        &id_g,
    )
    .await;
    let refused = signed_in
        .call(Method::GET, "/api/v1/whoami", None)
        .await
        .unwrap_err();
    assert_eq!(refused.status().map(|s| s.as_u16()), Some(401));

    // Revoking the agent's certificate by fingerprint closes its live tunnels, and deleting
    // the agent ends any that remain.
    let admin = User::login(&api, &ca_pem, "admin", "admin-password-1").await;
    let (id_d, on_d, cert_d) = admin.connect("echo").await;
    let mut tunnel_d = admin
        .open(fronts[on_d as usize], DOMAIN, on_d, &id_d, &cert_d, &ca_pem)
        .await
        .app;
    assert_eq!(echo_through(&mut tunnel_d, b"last").await, b"last");
    let agents = admin
        .call(Method::GET, "/api/v1/agents", None)
        .await
        .unwrap();
    let agent_id = agents["items"][0]["id"].as_str().unwrap().to_owned();
    let agent_cert = std::fs::read_to_string(dir.path().join("agent").join("agent.crt")).unwrap();
    let (_, agent_fingerprint) = serial_and_fingerprint(&agent_cert);
    revoke_and_see_it_close(
        &admin,
        revoke("fingerprint", &agent_fingerprint),
        &mut tunnel_d,
        &pg,
        &id_d,
    )
    .await;
    // And no new session goes to it, although its last heartbeat is recent.
    let offline = admin.connect_refused("echo").await;
    assert_eq!(offline.status().map(|s| s.as_u16()), Some(503), "{offline}");
    admin
        .call(Method::DELETE, &format!("/api/v1/agents/{agent_id}"), None)
        .await
        .unwrap();

    drop((agent, bridge_0, bridge_1, api));
}

/// Starts an agent (joined with a fresh token from `admin`) serving the `echo` resource at
/// `echo` (label `env=test`), entering bridges through `front`; waits until it is online.
async fn start_agent(
    dir: &Path,
    api: &Api,
    ca_file: &Path,
    admin: &User,
    front: SocketAddr,
    echo: SocketAddr,
) -> Agent {
    let token = admin
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
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"edge\"\napi_url = \"https://localhost:{port}\"\napi_address = \"{api}\"\n\
             api_ca_file = \"{ca}\"\ndata_dir = \"{data}\"\nbridge_address = \"{front}\"\n\
             [[resources]]\nname = \"echo\"\nkind = \"tcp\"\naddress = \"{echo}\"\n\
             labels = {{ env = \"test\" }}\n",
            port = api.addr.port(),
            api = api.addr,
            ca = ca_file.display(),
            data = dir.join("agent").display(),
        ),
    )
    .unwrap();
    let agent = Agent::spawn(&config, &[("BAMF_JOIN_TOKEN", &token)]).unwrap();
    let started = Instant::now();
    while admin
        .call(Method::GET, "/api/v1/resources", None)
        .await
        .unwrap()["items"][0]["online"]
        != true
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the agent never came online: {:?}",
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    agent
}

/// A session as the API lists it.
async fn session_record(admin: &User, id: &str) -> serde_json::Value {
    let listed = admin
        .call(Method::GET, "/api/v1/sessions?limit=500", None)
        .await
        .unwrap();
    listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("session {id} not listed: {listed}"))
        .clone()
}

/// A bridge killed with SIGKILL gets no new session after its control stream breaks (well
/// within 2 s) although its last heartbeat made it the best choice, and the tunnel it
/// carried attaches again through the other bridge, one session row throughout; a bridge
/// that gets SIGTERM announces draining before it stops accepting, so none is placed on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_draining_bridge_gets_no_new_sessions() {
    let dir = TempDir::new("tunnel-chaos");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("bamf.db").display());
    let api = Api::start_with_env(
        &[
            "--database-url",
            &url,
            "--admin-password",
            "admin-password-1",
            "--tunnel-domain",
            DOMAIN,
        ],
        &[("BAMF_BRIDGE_JOIN_TOKEN", BRIDGE_TOKEN)],
    )
    .unwrap();
    let ca_pem = bamf_tests::stored_ca(&url)
        .await
        .unwrap()
        .cert_pem()
        .to_owned();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    // Bridge 1 is the way in (clients and the agent); it forwards bridge 0's name to
    // bridge 0's peer port, reserved first.
    let peer_0 = std::net::TcpListener::bind("127.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let to_0 = format!("127.0.0.{{n}}:{peer_0}");
    let mut bridge_1 = tunnel_bridge(
        dir.path(),
        1,
        &api,
        &ca_file,
        &["--peer-address", &to_0, "--shutdown-grace", "20s"],
    );
    let front = bridge_1.front;
    let admin = User::login(&api, &ca_pem, "admin", "admin-password-1").await;
    let echo = bamf_tests::echo_server();
    let agent = start_agent(dir.path(), &api, &ca_file, &admin, front, echo).await;

    // One live tunnel on bridge 1 (the only bridge yet).
    let (id_b, on_b, cert_b) = admin.connect("echo").await;
    assert_eq!(on_b, 1);
    let (id_b, on_b, cert_b) = (id_b, on_b, cert_b);
    let mut tunnel_b = admin
        .open(front, DOMAIN, on_b, &id_b, &cert_b, &ca_pem)
        .await
        .app;
    assert_eq!(echo_through(&mut tunnel_b, b"on one").await, b"on one");
    // Bridge 0 joins, gets one live tunnel too: equal load, and the lower ordinal wins ties.
    let peer_0_listen = format!("127.0.0.0:{peer_0}");
    let bridge_0 = tunnel_bridge(
        dir.path(),
        0,
        &api,
        &ca_file,
        &["--peer-listen", &peer_0_listen],
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (id_a, on_a, cert_a) = admin.connect("echo").await;
    assert_eq!(on_a, 0);
    let mut tunnel_a = admin
        .open(front, DOMAIN, on_a, &id_a, &cert_a, &ca_pem)
        .await
        .app;
    assert_eq!(echo_through(&mut tunnel_a, b"on zero").await, b"on zero");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // SIGKILL bridge 0: the tunnel it carried attaches again through bridge 1 (the client
    // asks the API, the agent is told) and goes on where it stopped. Its last heartbeat
    // still says load 1 and it wins the tie, but after 2 s every session goes to bridge 1.
    bridge_0.signal("KILL");
    let killed = Instant::now();
    assert_eq!(
        echo_through(&mut tunnel_a, b"after the kill").await,
        b"after the kill",
        "the tunnel did not survive its bridge"
    );
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(killed.elapsed())).await;
    for _ in 0..5 {
        let (_, on, _) = admin.connect("echo").await;
        assert_eq!(on, 1, "a session was placed on the dead bridge");
    }
    // One session row: attached again once, through bridges 0 then 1, not detached.
    let row = session_record(&admin, &id_a).await;
    assert_eq!(row["state"], "active", "{row}");
    assert_eq!(row["reattaches"], 1, "{row}");
    assert_eq!(row["bridges"], serde_json::json!([0, 1]), "{row}");
    assert!(row["detached_at_ms"].is_null(), "{row}");

    // SIGTERM bridge 1 (it drains: a tunnel is open): once it stops accepting, and in
    // fact from its announcement on, no session is placed anywhere (bridge 0 is dead).
    bridge_1.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bridge_1
        .logs()
        .iter()
        .any(|l| l.contains("shutdown: stopped accepting"))
    {
        assert!(
            Instant::now() < deadline,
            "bridge 1 never stopped accepting"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let logs = bridge_1.logs();
    let announced = logs
        .iter()
        .position(|l| l.contains("the API knows this bridge is draining"));
    let stopped = logs
        .iter()
        .position(|l| l.contains("shutdown: stopped accepting"));
    assert!(
        announced.is_some() && announced < stopped,
        "draining was not announced before accepting stopped: {logs:?}"
    );
    let refused = admin.connect_refused("echo").await;
    assert_eq!(refused.status().map(|s| s.as_u16()), Some(503), "{refused}");
    assert!(refused.to_string().contains("no bridge"), "{refused}");
    drop(tunnel_b);
    assert!(bridge_1.wait(Duration::from_secs(25)).is_some());
    drop(agent);
}
