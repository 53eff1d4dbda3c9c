//! The README's quick start, as written: `scripts/single-node` starts API, bridge and agent,
//! and `bamf login` / `bamf ls` / `bamf tcp demo-web --exec …` reach the demo resource.
//! (The script builds release binaries when run by hand; here it runs the test profile's.)
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bamf_tests::{TempDir, binary, workspace};

#[test]
fn the_quick_start_reaches_the_demo_resource() {
    let dir = TempDir::new("single-node");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bin_dir = binary("bamf").parent().unwrap().to_path_buf();
    let state = dir.path().join("state");
    let mut node = Command::new(workspace().join("scripts/single-node"))
        .env("BAMF_NO_BUILD", "1")
        .env("BAMF_BIN_DIR", &bin_dir)
        .env("BAMF_PORT", port.to_string())
        .env("BAMF_LOCAL_DIR", &state)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the banner; collect the password it prints.
    let stdout = node.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let started = Instant::now();
    let mut banner = Vec::new();
    let password = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120).saturating_sub(started.elapsed()))
            .unwrap_or_else(|_| {
                let _ = node.kill();
                let mut err = String::new();
                let _ = std::io::Read::read_to_string(&mut node.stderr.take().unwrap(), &mut err);
                panic!("no banner: {banner:?}\n{err}")
            });
        banner.push(line.clone());
        if let Some(rest) = line.trim().strip_prefix("password:") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    assert_eq!(
        std::fs::read_to_string(state.join("admin-password"))
            .unwrap()
            .trim(),
        password
    );

    let bamf = |args: &[&str], stdin: Option<&str>| {
        let mut child = Command::new(bin_dir.join("bamf"))
            .args(args)
            .env("BAMF_HOME", dir.path().join("home"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let api = format!("https://localhost:{port}");
    let (code, _, err) = bamf(
        &[
            "login",
            "--api",
            &api,
            "--user",
            "admin",
            "--password-stdin",
            "--yes",
        ],
        Some(&format!("{password}\n")),
    );
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = bamf(&["ls"], None);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("demo-web"), "{out}");
    let (code, out, err) = bamf(
        &[
            "tcp",
            "demo-web",
            "-p",
            "0",
            "--exec",
            "curl -s http://127.0.0.1:{port}/",
        ],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("Hello through BAMF"), "{out}\n{err}");

    // Ctrl-C stops everything.
    let _ = Command::new("kill")
        .args(["-INT", &node.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = node.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "single-node did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
}
