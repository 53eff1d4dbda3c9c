//! The command stream and the dial path against an in-process API and bridge: real TLS with
//! certificates from a throwaway CA, real sockets on loopback.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bamf_proto::san::{AgentId, SessionId};
use bamf_proto::tunnel::{AGENT_PREAMBLE_LEN, DialCommand, parse_agent_preamble};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, RawConfig, RawResource};
use crate::enroll::{Credentials, Tls};
use crate::{commands, tunnel};

const AGENT: &str = "1b6f1a52-3c0e-4d7e-9a41-5a4f6c3b2d10";
const OTHER_AGENT: &str = "2b6f1a52-3c0e-4d7e-9a41-5a4f6c3b2d10";
const SESSION: &str = "0b6f1a52-3c0e-4d7e-9a41-5a4f6c3b2d10";
const BRIDGE: &str = "0.bridge.tunnel.test";

/// A throwaway CA.
struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = params.self_signed(&key).unwrap().pem();
        Self {
            ca_pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate, key) for a server `name`, or a client when `name` is `None`.
    fn issue(&self, name: Option<&str>) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(name.map(str::to_owned).into_iter().collect::<Vec<_>>())
                .unwrap();
        params.extended_key_usages = vec![match name {
            Some(_) => ExtendedKeyUsagePurpose::ServerAuth,
            None => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// (certificate, key) carrying `identity`, for TLS clients and servers.
    fn issue_identity(&self, identity: &bamf_proto::san::Identity) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        for uri in identity.uris() {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(uri.try_into().unwrap()));
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A TLS server for `name` that requires a client certificate from this CA.
    fn acceptor(&self, name: &str) -> TlsAcceptor {
        let (cert, key) = self.issue(Some(name));
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }
}

/// A dial command for `SESSION` through `BRIDGE`.
fn dial_command(agent: &str, resource: &str, reattach: bool) -> DialCommand {
    DialCommand {
        session: SESSION.parse().unwrap(),
        agent: agent.parse().unwrap(),
        resource: resource.into(),
        bridge_host: BRIDGE.into(),
        bridge_port: 443,
        reattach,
    }
}

fn dial_event(agent: &str, resource: &str) -> String {
    let cmd = dial_command(agent, resource, false);
    format!(
        "event: dial\ndata: {}\n\n",
        serde_json::to_string(&cmd).unwrap()
    )
}

/// A fake command stream. The first connection gets a keep-alive, a command for another
/// agent, one for an unknown resource, one for `echo` (cut in the middle), then the stream
/// ends; later connections are held open. Returns its address and the connection count.
async fn fake_api(acceptor: TlsAcceptor) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let mut tls = acceptor.accept(tcp).await.unwrap();
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut byte = [0u8; 1];
                    if tls.read(&mut byte).await.unwrap() == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8(head).unwrap();
                if !head.starts_with("GET /api/v1/agent/commands HTTP/1.1\r\n") {
                    // E.g. the agent's account of a session's end.
                    let _ = tls.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
                    return;
                }
                tls.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n: connected\n\n",
                )
                .await
                .unwrap();
                if n > 0 {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    return;
                }
                let script = format!(
                    ": keep-alive\n\n{}{}{}event: other\ndata: x\n\n",
                    dial_event(OTHER_AGENT, "echo"),
                    dial_event(AGENT, "unknown"),
                    dial_event(AGENT, "echo"),
                );
                let (a, b) = script.split_at(script.len() - 40);
                for part in [a, b] {
                    tls.write_all(part.as_bytes()).await.unwrap();
                    tls.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, count)
}

/// What the fake bridge saw of its first tunnel.
#[derive(Debug)]
struct Seen {
    sni: Option<String>,
    client_cert: bool,
    session: SessionId,
    echoed: Vec<u8>,
}

/// A fake bridge that is also the client: takes tunnels, reads the preamble and the outer
/// layer's end, hands the agent over, runs the end-to-end session as the client with
/// `session_cert`, sends `ping`, reads the echo and keeps the tunnel open.
async fn fake_bridge(
    acceptor: TlsAcceptor,
    ca_pem: String,
    session_cert: (String, String),
) -> (
    std::net::SocketAddr,
    Arc<AtomicUsize>,
    tokio::sync::mpsc::UnboundedReceiver<Seen>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            let mut tls = acceptor
                .accept(bamf_client::tunnel::Records::new(tcp))
                .await
                .unwrap();
            let (_, conn) = tls.get_ref();
            let sni = conn.server_name().map(str::to_owned);
            let client_cert = conn.peer_certificates().is_some_and(|c| !c.is_empty());
            let mut preamble = [0u8; AGENT_PREAMBLE_LEN];
            tls.read_exact(&mut preamble).await.unwrap();
            let mut rest = Vec::new();
            tls.read_to_end(&mut rest).await.unwrap();
            assert!(
                rest.is_empty(),
                "bytes after the preamble on the outer layer"
            );
            tls.write_all(&[bamf_proto::tunnel::Handover::Paired.byte()])
                .await
                .unwrap();
            tls.get_mut().1.send_close_notify();
            tls.flush().await.unwrap();
            let raw = tls.into_inner().0.into_inner().unwrap();
            let inner =
                bamf_client::e2e::client_config(&ca_pem, &session_cert.0, &session_cert.1).unwrap();
            let session = bamf_client::e2e::connect(raw, inner).await.unwrap();
            // The client's side of the resumable stream, for an in-process application.
            let (mut tls, local) = tokio::io::duplex(1024);
            tokio::spawn(async move {
                bamf_client::resume::carry(
                    local,
                    session,
                    Never,
                    &bamf_client::resume::Settings::default(),
                    std::future::pending(),
                )
                .await
            });
            tls.write_all(b"ping").await.unwrap();
            tls.flush().await.unwrap();
            let mut echoed = vec![0u8; 4];
            tls.read_exact(&mut echoed).await.unwrap();
            tx.send(Seen {
                sni,
                client_cert,
                session: parse_agent_preamble(&preamble).unwrap().0,
                echoed,
            })
            .unwrap();
            // The tunnel stays open: a drain has to cut it.
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                drop(tls);
            });
        }
    });
    (addr, count, rx)
}

/// A client that never attaches again.
struct Never;

impl bamf_client::resume::Reattach<bamf_client::e2e::Session> for Never {
    async fn reattach(&mut self) -> Option<bamf_client::e2e::Session> {
        None
    }
}

/// A TCP echo server: the resource.
async fn echo() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// The agent's configuration and TLS set-ups, in `dir`: API and bridge at the given
/// addresses, one `echo` resource at `resource`, and an agent certificate from `pki`.
fn agent(
    pki: &Pki,
    dir: &std::path::Path,
    api_addr: std::net::SocketAddr,
    bridge_addr: std::net::SocketAddr,
    resource: std::net::SocketAddr,
) -> (
    Arc<Config>,
    watch::Sender<Arc<Tls>>,
    watch::Receiver<Arc<Tls>>,
) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ca.crt"), &pki.ca_pem).unwrap();
    let raw = RawConfig {
        name: Some("edge-1".into()),
        api_url: Some(format!("https://localhost:{}", api_addr.port())),
        api_ca_file: Some("ca.crt".into()),
        data_dir: Some("data".into()),
        api_address: Some(api_addr.to_string()),
        bridge_address: Some(bridge_addr.to_string()),
        resources: vec![RawResource {
            name: Some("echo".into()),
            kind: Some("tcp".into()),
            address: Some(resource.to_string()),
            ..RawResource::default()
        }],
        ..RawConfig::default()
    };
    let config = Arc::new(Config::build(raw, dir).unwrap());
    let (cert_pem, key_pem) = pki.issue_identity(&bamf_proto::san::Identity::Agent {
        agent: AGENT.parse().unwrap(),
    });
    let creds = Credentials {
        agent_id: AGENT.parse::<AgentId>().unwrap(),
        name: "edge-1".parse().unwrap(),
        pair: bamf_client::enroll::KeyPair { key_pem, cert_pem },
        ca_pem: pki.ca_pem.clone(),
    };
    let (tls_tx, tls_rx) = watch::channel(Arc::new(Tls::new(&config, &creds).unwrap()));
    (config, tls_tx, tls_rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_commands_from_the_stream_open_tunnels_through_the_bridge() {
    let pki = Pki::new();
    let (api_addr, api_connections) = fake_api(pki.acceptor("localhost")).await;
    let session_cert = pki.issue_identity(&bamf_proto::san::Identity::Client {
        session: SESSION.parse().unwrap(),
        user: "alice".parse().unwrap(),
        resource: "echo".parse().unwrap(),
        agent: AGENT.parse().unwrap(),
        bridge: 0,
    });
    let (bridge_addr, bridge_connections, mut tunnels_seen) =
        fake_bridge(pki.acceptor(BRIDGE), pki.ca_pem.clone(), session_cert).await;
    let resource = echo().await;

    let dir = std::env::temp_dir().join(format!("bamf-agent-stream-{}", std::process::id()));
    let (config, _tls_tx, tls_rx) = agent(&pki, &dir, api_addr, bridge_addr, resource);
    let (ends, _ends) = tokio::sync::mpsc::channel(1);
    let tunnels = tunnel::Tunnels::new(config.clone(), tls_rx.clone(), ends);
    let connected = Arc::new(AtomicBool::new(false));
    let stop = CancellationToken::new();
    let follow = tokio::spawn(commands::follow(
        tls_rx,
        tunnels.clone(),
        connected.clone(),
        stop.clone(),
    ));

    // The one command for this agent and a resource it serves became a tunnel: the bridge
    // saw the agent certificate, its own name, the session, and bytes from the resource.
    let seen = tokio::time::timeout(Duration::from_secs(10), tunnels_seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.sni.as_deref(), Some(BRIDGE));
    assert!(seen.client_cert);
    assert_eq!(seen.session.to_string(), SESSION);
    assert_eq!(seen.echoed, b"ping");
    // The stream ended after the script: the agent reconnects (after about a second).
    let reconnected = async {
        while api_connections.load(Ordering::SeqCst) < 2 || !connected.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), reconnected)
        .await
        .unwrap();
    assert_eq!(bridge_connections.load(Ordering::SeqCst), 1);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), follow)
        .await
        .unwrap()
        .unwrap();
    assert!(!connected.load(Ordering::SeqCst));
    // The tunnel outlives the grace period and is cut.
    assert_eq!(tunnels.open(), 1);
    let started = std::time::Instant::now();
    let report = tunnels.drain(Duration::from_millis(300)).await;
    assert_eq!(
        report,
        tunnel::DrainReport {
            open_at_start: 1,
            cut: 1
        }
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(tunnels.open(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client attaching again to a session this agent does not serve (it ended here, its end
/// still on the way to the API) is refused at the bridge: no new stream from offset 0, no
/// connection to the resource, no second account of the session. A first dial for the same
/// session is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_attaching_again_to_a_session_not_served_here_is_refused() {
    let pki = Pki::new();
    // A bridge that reports each tunnel's preamble.
    let bridge = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bridge_addr = bridge.local_addr().unwrap();
    let acceptor = pki.acceptor(BRIDGE);
    let (preambles, mut seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = bridge.accept().await {
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut preamble = [0u8; AGENT_PREAMBLE_LEN];
            tls.read_exact(&mut preamble).await.unwrap();
            preambles
                .send(parse_agent_preamble(&preamble).unwrap())
                .unwrap();
        }
    });
    // A resource that counts its connections.
    let resource = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let resource_addr = resource.local_addr().unwrap();
    let reached = Arc::new(AtomicUsize::new(0));
    let counted = reached.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = resource.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            std::mem::forget(tcp);
        }
    });
    let dir = std::env::temp_dir().join(format!("bamf-agent-reattach-{}", std::process::id()));
    // No API is needed: commands are dispatched directly.
    let unused: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let (config, _tls_tx, tls_rx) = agent(&pki, &dir, unused, bridge_addr, resource_addr);
    let (ends, _ends) = tokio::sync::mpsc::channel(1);
    let tunnels = tunnel::Tunnels::new(config, tls_rx, ends);
    let command = |reattach: bool| dial_command(AGENT, "echo", reattach);

    tunnels.dispatch(command(true));
    let (session, target) = tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(session.to_string(), SESSION);
    assert_eq!(target, bamf_proto::tunnel::Target::Unreachable, "refused");
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "the resource was not dialled"
    );
    assert!(tunnels.sessions().is_empty(), "nothing is served");

    // The first dial of a session is served as ever.
    tunnels.dispatch(command(false));
    let (_, target) = tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(target, bamf_proto::tunnel::Target::Reached);
    assert_eq!(reached.load(Ordering::SeqCst), 1);
    tunnels.drain(Duration::from_millis(100)).await;
    let _ = std::fs::remove_dir_all(&dir);
}
