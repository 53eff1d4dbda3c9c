//! The front door end to end: a real `bamf-bridge` process, real TLS clients and servers.
#![allow(clippy::unwrap_used)] // a test binary: a failed unwrap is a failed test

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bamf_tests::{Bridge, OpensslServer, Recorder, Tap, fixture, http_get, read_until_close};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ALERT_UNRECOGNIZED_NAME: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 112];
const ALERT_DECODE_ERROR: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 50];
const ALERT_INTERNAL_ERROR: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 80];

fn outcome(route: &str, outcome: &str) -> String {
    format!(
        "bamf_frontdoor_connections_total{{listener=\"front\",route=\"{route}\",outcome=\"{outcome}\"}}"
    )
}

/// `openssl s_client` sending an HTTP/1.0 GET to `connect` with SNI `name`; its stdout.
fn s_client_get(connect: std::net::SocketAddr, name: &str) -> String {
    let mut child = Command::new("timeout")
        .args(["20", "openssl", "s_client", "-connect"])
        .arg(connect.to_string())
        .args(["-servername", name, "-ign_eof", "-quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client runs");
    use std::io::Write;
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .expect("write request");
    drop(stdin);
    let out = child.wait_with_output().expect("s_client output");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn openssl_s_client_handshakes_end_to_end_through_the_front_door() {
    let server = OpensslServer::start(&["-www"]).unwrap();
    let route = format!("app.example.test={}", server.addr);
    let bridge = Bridge::start(&["--route", &route]).unwrap();
    let out = s_client_get(bridge.front, "app.example.test");
    assert!(out.contains("HTTP/1.0 200 ok"), "s_client got:\n{out}");
    assert!(out.contains("s_server"), "s_client got:\n{out}");
    let n = bridge.wait_metric(&outcome("static", "closed"), Duration::from_secs(5), |v| {
        v >= 1.0
    });
    assert_eq!(n, 1.0);
    // Which build runs, and the bytes it moved (counted as they flowed).
    let scraped = bridge.scrape();
    let build = format!(
        "bamf_bridge_build_info{{version=\"{}\"",
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        scraped
            .lines()
            .any(|l| l.starts_with(&build) && l.ends_with(" 1")),
        "{scraped}"
    );
    assert!(bridge.metric("bamf_frontdoor_bytes_total{direction=\"up\"}") > 0.0);
    assert!(bridge.metric("bamf_frontdoor_bytes_total{direction=\"down\"}") > 0.0);
}

#[test]
fn curl_resolves_through_the_front_door() {
    let server = OpensslServer::start(&["-www"]).unwrap();
    // A wildcard route, so curl's name exercises suffix matching too.
    let route = format!("*.example.test={}", server.addr);
    let bridge = Bridge::start(&["--route", &route]).unwrap();
    let port = bridge.front.port();
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "20", "--resolve"])
        .arg(format!("web.example.test:{port}:127.0.0.1"))
        .arg(format!("https://web.example.test:{port}/"))
        .output()
        .expect("curl runs");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(body.contains("s_server"), "curl got:\n{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_receives_exactly_the_bytes_the_client_sent_both_ways() {
    // openssl s_client -> client tap -> bridge -> backend tap -> openssl s_server
    let server = OpensslServer::start(&["-www"]).unwrap();
    let backend_tap = Tap::start(server.addr).await.unwrap();
    let route = format!("app.example.test={}", backend_tap.addr);
    let bridge = Bridge::start(&["--route", &route]).unwrap();
    let client_tap = Tap::start(bridge.front).await.unwrap();
    let connect = client_tap.addr;
    let out = tokio::task::spawn_blocking(move || s_client_get(connect, "app.example.test"))
        .await
        .unwrap();
    assert!(out.contains("HTTP/1.0 200 ok"), "s_client got:\n{out}");
    // The taps finish recording when both sides have closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (c, b) = (client_tap.recorded(), backend_tap.recorded());
        if c.len() == 1 && b.len() == 1 && c[0] == b[0] {
            assert!(c[0].up.len() > 300, "the hello and the request went up");
            assert!(c[0].down.len() > 1000, "certificate and page came down");
            break;
        }
        assert!(Instant::now() < deadline, "taps disagree:\n{c:?}\n{b:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v2_tells_the_backend_who_connected_and_what_it_asked_for() {
    let mut backend = Recorder::start(b"").await.unwrap();
    let route = format!("python.example.test={}", backend.addr);
    let bridge = Bridge::start(&["--route", &route, "--proxy-protocol"]).unwrap();
    let hello = fixture("python");
    let mut client = TcpStream::connect(bridge.front).await.unwrap();
    let client_addr = client.local_addr().unwrap();
    client.write_all(&hello).await.unwrap();
    client.write_all(b"after the hello").await.unwrap();
    client.shutdown().await.unwrap();
    let got = backend
        .next(Duration::from_secs(10))
        .await
        .expect("backend saw the connection");
    let Some(bamf_proto::proxy_v2::Decoded::Proxy { header, len }) =
        bamf_proto::proxy_v2::decode(&got).unwrap()
    else {
        panic!("no PROXY header in {got:02x?}");
    };
    assert_eq!(header.source, client_addr);
    assert_eq!(header.destination, bridge.front);
    assert_eq!(header.authority.unwrap().as_str(), "python.example.test");
    assert_eq!(&got[len..len + hello.len()], &hello[..]);
    assert_eq!(&got[len + hello.len()..], b"after the hello");
}

/// A listener whose accept queue is full: connecting to it hangs, like an upstream that
/// never answers.
fn black_hole() -> (
    socket2::Socket,
    Vec<std::net::TcpStream>,
    std::net::SocketAddr,
) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    // Linux queues backlog + 1 connections; fill until a connect stalls.
    while let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
        fillers.push(s);
        assert!(fillers.len() < 64, "accept queue never filled");
    }
    (socket, fillers, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_bounded_counted_logged_outcome_and_never_a_panic() {
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }; // dropped: nothing listens there now
    let (_hole, _fillers, hole) = black_hole();
    let mut good = Recorder::start(b"").await.unwrap();
    let routes = [
        format!("openssl.example.test={}", good.addr),
        format!("python.example.test={refused}"),
        format!("curl.example.test={hole}"),
    ];
    let bridge = Bridge::start(&[
        "--route",
        &routes[0],
        "--route",
        &routes[1],
        "--route",
        &routes[2],
        "--detect-timeout",
        "1s",
        "--connect-timeout",
        "1s",
    ])
    .unwrap();
    let limit = Duration::from_secs(5);

    // Garbage and plain HTTP: closed without a TLS alert (they are not TLS clients).
    for input in [
        &b"\x00\x01\x02garbage\xff"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(bridge.front).await.unwrap();
        s.write_all(input).await.unwrap();
        let (got, closed) = read_until_close(&mut s, limit).await;
        assert!(closed && got.is_empty(), "{input:?} -> {got:?}");
    }
    // A record header announcing more than TLS allows: decode_error alert at once.
    let mut s = TcpStream::connect(bridge.front).await.unwrap();
    s.write_all(b"\x16\x03\x01\x40\x01").await.unwrap();
    assert_eq!(
        read_until_close(&mut s, limit).await,
        (ALERT_DECODE_ERROR.to_vec(), true)
    );

    // A hello that never completes, and a client that never speaks: closed at the deadline.
    for partial in [&fixture("openssl_tls13")[..100], &[][..]] {
        let mut s = TcpStream::connect(bridge.front).await.unwrap();
        s.write_all(partial).await.unwrap();
        let started = Instant::now();
        let (got, closed) = read_until_close(&mut s, limit).await;
        let took = started.elapsed();
        assert!(closed && got.is_empty());
        assert!(
            took >= Duration::from_millis(800) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }

    // No SNI and unknown SNI: unrecognized_name alert.
    for hello in [fixture("openssl_no_sni"), fixture("gnutls")] {
        let mut s = TcpStream::connect(bridge.front).await.unwrap();
        s.write_all(&hello).await.unwrap();
        assert_eq!(
            read_until_close(&mut s, limit).await,
            (ALERT_UNRECOGNIZED_NAME.to_vec(), true)
        );
    }

    // An upstream that refuses, and one that never answers: internal_error alert, the latter
    // after the connect timeout.
    for (hello, min) in [
        ("python", Duration::ZERO),
        ("curl", Duration::from_millis(800)),
    ] {
        let mut s = TcpStream::connect(bridge.front).await.unwrap();
        s.write_all(&fixture(hello)).await.unwrap();
        let started = Instant::now();
        assert_eq!(
            read_until_close(&mut s, limit).await,
            (ALERT_INTERNAL_ERROR.to_vec(), true)
        );
        assert!(started.elapsed() >= min, "{hello}: {:?}", started.elapsed());
    }

    // Every case was counted under its own outcome.
    let expected = [
        (outcome("none", "not_tls"), 2.0),
        (outcome("none", "too_large"), 1.0),
        (outcome("none", "detect_timeout"), 2.0),
        (outcome("reject", "rejected"), 2.0),
        (outcome("static", "upstream_refused"), 1.0),
        (outcome("static", "upstream_timeout"), 1.0),
    ];
    for (sample, want) in &expected {
        let got = bridge.wait_metric(sample, limit, |v| v >= *want);
        assert_eq!(got, *want, "{sample}");
    }
    // ... and logged, once per connection.
    let logs = bridge.logs();
    for word in [
        "not_tls",
        "too_large",
        "detect_timeout",
        "rejected",
        "upstream_refused",
        "upstream_timeout",
    ] {
        assert!(
            logs.iter()
                .any(|l| l.contains(&format!("\"outcome\":\"{word}\""))),
            "no log for {word}"
        );
    }
    assert!(!logs.iter().any(|l| l.contains("panicked")));

    // The bridge is still serving.
    let mut s = TcpStream::connect(bridge.front).await.unwrap();
    s.write_all(&fixture("openssl_tls13")).await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(good.next(limit).await.unwrap(), fixture("openssl_tls13"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_bad_connections_keep_memory_bounded() {
    const N: usize = 10_000;
    // The test holds N sockets itself; raise the soft limit to the hard one.
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap();
    assert!(
        limit > N as u64 + 500,
        "RLIMIT_NOFILE {limit} is too low for {N} connections"
    );
    let mut good = Recorder::start(b"").await.unwrap();
    let route = format!("openssl.example.test={}", good.addr);
    let bridge = Bridge::start(&[
        "--route",
        &route,
        "--detect-timeout",
        "120s",
        "--max-connections",
        "12000",
    ])
    .unwrap();
    let before = bridge.rss_kib();
    let partial = &fixture("chromium_pq")[..1200];
    let mut open = Vec::with_capacity(N);
    for i in 0..N {
        let mut s = TcpStream::connect(bridge.front).await.unwrap();
        // Half send nothing, half a hello that never completes.
        if i % 2 == 1 {
            s.write_all(partial).await.unwrap();
        }
        open.push(s);
    }
    let active = "bamf_frontdoor_active_connections{listener=\"front\"}";
    let seen = bridge.wait_metric(active, Duration::from_secs(30), |v| v >= N as f64);
    assert_eq!(seen, N as f64);
    // Give the partial hellos time to be read into their buffers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = bridge.rss_kib();
    let per_connection = (after.saturating_sub(before)) * 1024 / N as u64;
    println!(
        "bridge RSS: {before} KiB idle, {after} KiB with {N} stalled connections ({per_connection} B each)"
    );
    assert!(
        after < 96 * 1024,
        "RSS {after} KiB with {N} stalled connections"
    );

    // A good client is still served while they hang.
    let mut s = TcpStream::connect(bridge.front).await.unwrap();
    s.write_all(&fixture("openssl_tls13")).await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(
        good.next(Duration::from_secs(10)).await.unwrap(),
        fixture("openssl_tls13")
    );
    drop(open);
    let left = bridge.wait_metric(active, Duration::from_secs(30), |v| v == 0.0);
    assert_eq!(left, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_queues_new_clients_instead_of_dropping_them() {
    let mut good = Recorder::start(b"").await.unwrap();
    let route = format!("openssl.example.test={}", good.addr);
    let bridge = Bridge::start(&[
        "--route",
        &route,
        "--max-connections",
        "2",
        "--detect-timeout",
        "60s",
    ])
    .unwrap();
    let silent_a = TcpStream::connect(bridge.front).await.unwrap();
    let _silent_b = TcpStream::connect(bridge.front).await.unwrap();
    let active = "bamf_frontdoor_active_connections{listener=\"front\"}";
    assert_eq!(
        bridge.wait_metric(active, Duration::from_secs(5), |v| v >= 2.0),
        2.0
    );
    let mut third = TcpStream::connect(bridge.front).await.unwrap(); // queued by the kernel
    third.write_all(&fixture("openssl_tls13")).await.unwrap();
    third.shutdown().await.unwrap();
    assert_eq!(
        good.next(Duration::from_millis(500)).await,
        None,
        "served beyond the limit"
    );
    drop(silent_a);
    assert_eq!(
        good.next(Duration::from_secs(5)).await.unwrap(),
        fixture("openssl_tls13")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readiness_off_stops_accepting_and_drains() {
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let route = format!("openssl.example.test={}", backend.local_addr().unwrap());
    let mut bridge = Bridge::start(&["--route", &route, "--shutdown-grace", "20s"]).unwrap();
    assert_eq!(http_get(bridge.metrics, "/ready").0, 200);
    let mut client = TcpStream::connect(bridge.front).await.unwrap();
    client.write_all(&fixture("openssl_tls13")).await.unwrap();
    let (mut upstream, _) = backend.accept().await.unwrap();
    let mut hello = vec![0; fixture("openssl_tls13").len()];
    upstream.read_exact(&mut hello).await.unwrap();

    bridge.signal("TERM");
    let metrics = bridge.metrics;
    let ready = tokio::task::spawn_blocking(move || http_get(metrics, "/ready").0)
        .await
        .unwrap();
    assert_eq!(ready, 503, "readiness is off while draining");
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(bridge.front).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The open connection still flows both ways during the drain.
    client.write_all(b"ping").await.unwrap();
    let mut four = [0u8; 4];
    upstream.read_exact(&mut four).await.unwrap();
    upstream.write_all(b"pong").await.unwrap();
    client.read_exact(&mut four).await.unwrap();
    assert_eq!(&four, b"pong");
    drop(client);
    drop(upstream);
    let status = bridge
        .wait(Duration::from_secs(10))
        .expect("bridge exits after draining");
    assert!(status.success(), "{status:?}");
    assert!(
        bridge
            .logs()
            .iter()
            .any(|l| l.contains("every connection finished"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_bounds_shutdown_and_the_report_says_so() {
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let route = format!("openssl.example.test={}", backend.local_addr().unwrap());
    let mut bridge = Bridge::start(&["--route", &route, "--shutdown-grace", "1s"]).unwrap();
    let mut client = TcpStream::connect(bridge.front).await.unwrap();
    client.write_all(&fixture("openssl_tls13")).await.unwrap();
    let (_upstream, _) = backend.accept().await.unwrap();
    let started = Instant::now();
    bridge.signal("TERM");
    let status = bridge
        .wait(Duration::from_secs(10))
        .expect("bridge exits after the grace period");
    assert!(status.success());
    assert!(started.elapsed() >= Duration::from_millis(900));
    let (_, closed) = read_until_close(&mut client, Duration::from_secs(2)).await;
    assert!(closed, "the cut connection was closed");
    assert!(
        bridge
            .logs()
            .iter()
            .any(|l| l.contains("grace period ran out") && l.contains("\"cut\":1"))
    );
}

#[test]
fn a_bad_configuration_lists_every_problem_and_binds_nothing() {
    // Hold the port we name: a bridge that tried to bind would report "address in use".
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = held.local_addr().unwrap().to_string();
    let dir = bamf_tests::TempDir::new("badconfig");
    let file = dir.path().join("bridge.toml");
    let run = |toml: &str| {
        std::fs::write(&file, toml).unwrap();
        let out = Command::new(bamf_tests::binary("bamf-bridge"))
            .arg("--config")
            .arg(&file)
            .args([
                "--listen",
                &listen,
                "--route",
                "bad",
                "--detect-timeout",
                "soon",
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(64), "{stderr}");
        assert!(!stderr.to_lowercase().contains("in use"), "{stderr}");
        stderr
    };
    // An unknown key stops TOML parsing first, and is named.
    let file_problems = "default = \"nowhere\"\n[limits]\nidle_timeout = \"forever\"\n";
    let stderr = run(&format!("{file_problems}max_conections = 5\n"));
    assert!(stderr.contains("max_conections"), "{stderr}");
    // With it fixed, every other problem, from the file and the flags, shows at once.
    let stderr = run(file_problems);
    for needle in [
        "--route: 'bad'",
        "default:",
        "idle_timeout",
        "detect_timeout",
    ] {
        assert!(stderr.contains(needle), "missing {needle}:\n{stderr}");
    }
}

#[test]
fn a_connection_for_bridge_1_entering_bridge_0_is_forwarded_to_bridge_1() {
    let server_1 = OpensslServer::start(&["-www"]).unwrap();
    let server_0 = OpensslServer::start(&["-www"]).unwrap();
    let local_1 = server_1.addr.to_string();
    let bridge_1 = Bridge::start(&[
        "--ordinal",
        "1",
        "--tunnel-domain",
        "tunnel.test",
        "--peer-listen",
        "127.0.0.1:0",
        "--local-backend",
        &local_1,
    ])
    .unwrap();
    // Peer n lives at 127.0.0.<n>; only n = 1 is ever dialled here, which is 127.0.0.1.
    let template = format!("127.0.0.{{n}}:{}", bridge_1.peer.unwrap().port());
    let local_0 = server_0.addr.to_string();
    let bridge_0 = Bridge::start(&[
        "--ordinal",
        "0",
        "--tunnel-domain",
        "tunnel.test",
        "--peer-address",
        &template,
        "--local-backend",
        &local_0,
    ])
    .unwrap();
    let out = s_client_get(bridge_0.front, "1.bridge.tunnel.test");
    assert!(out.contains("HTTP/1.0 200 ok"), "{out}");
    let peer_sample = outcome("peer", "closed");
    assert_eq!(
        bridge_0.wait_metric(&peer_sample, Duration::from_secs(5), |v| v >= 1.0),
        1.0
    );
    let local_sample =
        "bamf_frontdoor_connections_total{listener=\"peer\",route=\"local\",outcome=\"closed\"}";
    assert_eq!(
        bridge_1.wait_metric(local_sample, Duration::from_secs(5), |v| v >= 1.0),
        1.0
    );
    // Bridge 0's own name stays on bridge 0.
    let out = s_client_get(bridge_0.front, "0.bridge.tunnel.test");
    assert!(out.contains("HTTP/1.0 200 ok"), "{out}");
    assert_eq!(
        bridge_0.wait_metric(&outcome("local", "closed"), Duration::from_secs(5), |v| v
            >= 1.0),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_port_serves_only_its_own_name_so_forwarding_cannot_loop() {
    let mut local = Recorder::start(b"").await.unwrap();
    let local_addr = local.addr.to_string();
    let bridge = Bridge::start(&[
        "--ordinal",
        "1",
        "--tunnel-domain",
        "openssl.example.test",
        "--peer-listen",
        "127.0.0.1:0",
        "--peer-address",
        "127.0.0.{n}:8443",
        "--local-backend",
        &local_addr,
        "--route",
        "openssl.example.test=127.0.0.1:9",
    ])
    .unwrap();
    let peer = bridge.peer.unwrap();
    // A static route's name is refused on the peer port.
    let mut s = TcpStream::connect(peer).await.unwrap();
    s.write_all(&fixture("openssl_tls13")).await.unwrap();
    assert_eq!(
        read_until_close(&mut s, Duration::from_secs(5)).await,
        (ALERT_UNRECOGNIZED_NAME.to_vec(), true)
    );
    let refused =
        "bamf_frontdoor_connections_total{listener=\"peer\",route=\"reject\",outcome=\"rejected\"}";
    assert_eq!(
        bridge.wait_metric(refused, Duration::from_secs(5), |v| v >= 1.0),
        1.0
    );
    // Its own name is handled locally.
    let own = bamf_proto::sni::build::records(
        &bamf_proto::sni::build::client_hello(Some("1.bridge.openssl.example.test"), &["h2"], 0),
        16384,
    );
    let mut s = TcpStream::connect(peer).await.unwrap();
    s.write_all(&own).await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(local.next(Duration::from_secs(5)).await.unwrap(), own);
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
    });
    ticks / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_backs_off_and_recovers_without_losing_clients() {
    let bridge = Bridge::start(&["--detect-timeout", "1s"]).unwrap();
    // Leave the bridge a handful of descriptors beyond what it already uses.
    let used = std::fs::read_dir(format!("/proc/{}/fd", bridge.pid()))
        .unwrap()
        .count();
    let limit = format!("--nofile={}:{}", used + 8, used + 8);
    let status = Command::new("prlimit")
        .args(["--pid", &bridge.pid().to_string(), &limit])
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success());
    const N: usize = 40;
    let mut clients = Vec::new();
    for _ in 0..N {
        clients.push(TcpStream::connect(bridge.front).await.unwrap()); // queued by the kernel
    }
    // Out of descriptors: the accept loop must back off, not spin.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cpu_seconds(bridge.pid());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spent = cpu_seconds(bridge.pid()) - before;
    assert!(
        spent < 0.3,
        "bridge used {spent} CPU s in 1 s while out of descriptors"
    );
    // Every client is eventually accepted and closed at the detect deadline: none is lost.
    for (i, c) in clients.iter_mut().enumerate() {
        let (_, closed) = read_until_close(c, Duration::from_secs(20)).await;
        assert!(closed, "client {i} was never served");
    }
    drop(clients);
    let timeouts = outcome("none", "detect_timeout");
    assert_eq!(
        bridge.wait_metric(&timeouts, Duration::from_secs(5), |v| v >= N as f64),
        N as f64
    );
    let errors = bridge.metric("bamf_frontdoor_accept_errors_total{listener=\"front\"}");
    assert!(errors >= 1.0, "accept errors were not counted");
}
