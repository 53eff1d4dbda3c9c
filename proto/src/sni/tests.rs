use std::path::PathBuf;

use super::build::{client_hello, records};
use super::*;

/// One captured hello and what the capturing script asked the client to send.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    file: String,
    client: String,
    sni: Option<String>,
    alpn: Vec<String>,
    #[serde(skip)]
    bytes: Vec<u8>,
}

#[derive(serde::Deserialize)]
struct Manifest {
    hello: Vec<Fixture>,
}

fn fixtures() -> Vec<Fixture> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/client_hello");
    let text = std::fs::read_to_string(dir.join("manifest.toml")).expect("fixture manifest");
    let mut manifest: Manifest = toml::from_str(&text).expect("manifest parses");
    assert!(manifest.hello.len() >= 6, "expected the captured fixtures");
    for f in &mut manifest.hello {
        f.bytes = std::fs::read(dir.join(&f.file)).expect("fixture file");
    }
    manifest.hello
}

fn alpn_strings(hello: &ClientHello) -> Vec<String> {
    hello
        .alpn
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

fn check(f: &Fixture, hello: &ClientHello) {
    let sni = hello.server_name.as_ref().map(|h| h.as_str());
    assert_eq!(sni, f.sni.as_deref(), "{} ({})", f.file, f.client);
    assert_eq!(alpn_strings(hello), f.alpn, "{} ({})", f.file, f.client);
}

/// The handshake message (header included) carried by a fixture's records.
fn handshake_of(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = raw;
    while let Some(h) = rest.get(..RECORD_HEADER_LEN) {
        let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
        out.extend_from_slice(&rest[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len]);
        rest = &rest[RECORD_HEADER_LEN + len..];
    }
    out
}

/// What rustls's server-side `Acceptor` makes of the same bytes: (SNI, ALPN), or `None` if
/// it does not produce a hello.
fn rustls_view(raw: &[u8]) -> Option<(Option<String>, Vec<String>)> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut cursor = raw;
    while !cursor.is_empty() {
        match acceptor.read_tls(&mut cursor) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let accepted = acceptor.accept().ok()??;
    let hello = accepted.client_hello();
    let sni = hello.server_name().map(str::to_owned);
    let alpn = hello
        .alpn()
        .map(|a| a.map(|p| String::from_utf8_lossy(p).into_owned()).collect())
        .unwrap_or_default();
    Some((sni, alpn))
}

#[test]
fn captured_hellos_parse_to_what_the_client_was_told_to_send() {
    for f in fixtures() {
        let hello = parse(&f.bytes, DEFAULT_MAX_HELLO_LEN)
            .unwrap_or_else(|e| panic!("{}: {e}", f.file))
            .unwrap_or_else(|| panic!("{}: incomplete", f.file));
        check(&f, &hello);
        assert_eq!(
            hello.len,
            f.bytes.len(),
            "{}: hello ends where the capture ends",
            f.file
        );
    }
}

#[test]
fn a_post_quantum_hello_is_among_the_fixtures() {
    let largest = fixtures().into_iter().map(|f| f.bytes.len()).max().unwrap();
    assert!(
        largest >= 1500,
        "largest captured hello is only {largest} bytes"
    );
}

#[test]
fn every_prefix_of_every_capture_asks_for_more() {
    // A prefix is what a reader has after any sequence of partial TCP reads.
    for f in fixtures() {
        for cut in 0..f.bytes.len() {
            assert_eq!(
                parse(&f.bytes[..cut], DEFAULT_MAX_HELLO_LEN),
                Ok(None),
                "{} cut at {cut}",
                f.file
            );
        }
    }
}

#[test]
fn bytes_after_the_hello_do_not_change_the_answer() {
    for f in fixtures() {
        let mut more = f.bytes.clone();
        more.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x01, 0xff]);
        let hello = parse(&more, DEFAULT_MAX_HELLO_LEN).unwrap().unwrap();
        check(&f, &hello);
        assert_eq!(hello.len, f.bytes.len());
    }
}

#[test]
fn reframing_into_many_records_gives_the_same_answer_and_agrees_with_rustls() {
    for f in fixtures() {
        let handshake = handshake_of(&f.bytes);
        for fragment in [1, 2, 3, 4, 5, 7, 64, 255, 512, 1000, MAX_RECORD_PAYLOAD] {
            let raw = records(&handshake, fragment);
            let hello = parse(&raw, raw.len().max(DEFAULT_MAX_HELLO_LEN))
                .unwrap_or_else(|e| panic!("{} fragment {fragment}: {e}", f.file))
                .unwrap_or_else(|| panic!("{} fragment {fragment}: incomplete", f.file));
            check(&f, &hello);
            assert_eq!(hello.len, raw.len());
            let theirs = rustls_view(&raw).expect("rustls accepts the re-framed hello");
            assert_eq!(
                theirs,
                (f.sni.clone(), f.alpn.clone()),
                "{} fragment {fragment}",
                f.file
            );
        }
    }
}

#[test]
fn every_split_into_two_records_and_every_prefix_of_it() {
    for f in fixtures() {
        let handshake = handshake_of(&f.bytes);
        for split in 1..handshake.len() {
            let mut raw = records(&handshake[..split], MAX_RECORD_PAYLOAD);
            raw.extend_from_slice(&records(&handshake[split..], MAX_RECORD_PAYLOAD));
            let hello = parse(&raw, DEFAULT_MAX_HELLO_LEN).unwrap().unwrap();
            check(&f, &hello);
            // Prefixes around the record boundary are where a reassembler goes wrong.
            let boundary = RECORD_HEADER_LEN + split;
            for cut in boundary.saturating_sub(6)..(boundary + 6).min(raw.len()) {
                assert_eq!(parse(&raw[..cut], DEFAULT_MAX_HELLO_LEN), Ok(None));
            }
        }
    }
}

#[test]
fn captures_agree_with_rustls() {
    for f in fixtures() {
        let theirs = rustls_view(&f.bytes).expect("rustls accepts the capture");
        let ours = parse(&f.bytes, DEFAULT_MAX_HELLO_LEN).unwrap().unwrap();
        let ours = (
            ours.server_name.as_ref().map(|h| h.to_string()),
            alpn_strings(&ours),
        );
        assert_eq!(ours, theirs, "{}", f.file);
    }
}

#[test]
fn sixteen_kib_of_handshake_data_fits_the_default_cap() {
    let handshake = client_hello(Some("big.example.test"), &["h2"], 16 * 1024);
    assert!(handshake.len() > 16 * 1024);
    let raw = records(&handshake, MAX_RECORD_PAYLOAD);
    let hello = parse(&raw, DEFAULT_MAX_HELLO_LEN).unwrap().unwrap();
    assert_eq!(hello.server_name.unwrap().as_str(), "big.example.test");
    assert_eq!(
        rustls_view(&raw).unwrap().0.as_deref(),
        Some("big.example.test")
    );
}

#[test]
fn host_names_are_lower_cased_for_routing() {
    let raw = records(&client_hello(Some("API.Example.TEST"), &[], 0), 512);
    let hello = parse(&raw, DEFAULT_MAX_HELLO_LEN).unwrap().unwrap();
    assert_eq!(hello.server_name.unwrap().as_str(), "api.example.test");
}

#[test]
fn what_is_not_tls_is_refused_on_the_first_bytes() {
    for input in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"\x80\x2e\x01\x03\x01",
        b"SSH-2.0-OpenSSH_9.2",
        b"\x00",
    ] {
        assert_eq!(
            parse(input, DEFAULT_MAX_HELLO_LEN),
            Err(HelloError::NotTls),
            "{input:?}"
        );
    }
    // A handshake content type with a non-TLS version byte.
    assert_eq!(
        parse(b"\x16\x02", DEFAULT_MAX_HELLO_LEN),
        Err(HelloError::NotTls)
    );
    assert_eq!(parse(b"\x16", DEFAULT_MAX_HELLO_LEN), Ok(None));
    assert_eq!(parse(b"", DEFAULT_MAX_HELLO_LEN), Ok(None));
}

#[test]
fn oversized_input_is_refused_without_waiting_for_it() {
    // A record longer than TLS allows, announced in its header.
    assert_eq!(
        parse(b"\x16\x03\x01\x40\x01", DEFAULT_MAX_HELLO_LEN),
        Err(HelloError::TooLarge)
    );
    // A record that fits TLS but not the cap.
    assert_eq!(
        parse(b"\x16\x03\x01\x10\x00", 1024),
        Err(HelloError::TooLarge)
    );
    // A handshake message announcing more than the cap, in a small first record.
    assert_eq!(
        parse(b"\x16\x03\x01\x00\x04\x01\x01\x00\x00", 1024),
        Err(HelloError::TooLarge)
    );
    // Tiny records that never finish: refused once the buffer reaches the cap.
    let raw = records(&client_hello(Some("a.test"), &[], 100), 1);
    assert!(raw.len() > 1024);
    assert_eq!(parse(&raw[..1024], 1024), Err(HelloError::TooLarge));
    assert_eq!(parse(&raw[..1023], 1024), Ok(None));
}

/// Appends `extra` (whole extensions) to a synthetic hello's extensions block, re-computing
/// the extensions and handshake lengths, and frames it in one record.
fn with_extensions(mut handshake: Vec<u8>, extra: &[u8]) -> Vec<u8> {
    // The extensions length sits right after the fixed-size prefix of a synthetic hello.
    let at = 4 + 2 + 32 + 1 + 32 + 2 + 6 + 2;
    let old = usize::from(u16::from_be_bytes([handshake[at], handshake[at + 1]]));
    handshake.extend_from_slice(extra);
    let new = u16::try_from(old + extra.len()).unwrap().to_be_bytes();
    handshake[at..at + 2].copy_from_slice(&new);
    let body = u32::try_from(handshake.len() - 4).unwrap().to_be_bytes();
    handshake[1..4].copy_from_slice(&body[1..]);
    records(&handshake, MAX_RECORD_PAYLOAD)
}

/// An extension of type `kind` whose data is a u16-length-prefixed `list`.
fn list_extension(kind: u16, list: &[u8]) -> Vec<u8> {
    let mut e = kind.to_be_bytes().to_vec();
    e.extend_from_slice(&u16::try_from(list.len() + 2).unwrap().to_be_bytes());
    e.extend_from_slice(&u16::try_from(list.len()).unwrap().to_be_bytes());
    e.extend_from_slice(list);
    e
}

fn malformed(raw: &[u8]) -> Malformed {
    match parse(raw, DEFAULT_MAX_HELLO_LEN) {
        Err(HelloError::Malformed(m)) => m,
        other => panic!("expected malformed, got {other:?}"),
    }
}

#[test]
fn protocol_violations_are_named() {
    assert_eq!(malformed(b"\x16\x03\x01\x00\x00"), Malformed::EmptyRecord);
    let mut interleaved = records(&client_hello(Some("a.test"), &[], 0)[..10], 100);
    interleaved.extend_from_slice(b"\x17\x03\x03\x00\x01\x00");
    assert_eq!(malformed(&interleaved), Malformed::InterleavedRecord);
    let mut server_hello = client_hello(Some("a.test"), &[], 0);
    server_hello[0] = 2;
    assert_eq!(
        malformed(&records(&server_hello, 512)),
        Malformed::NotClientHello
    );
    // A second server_name extension.
    let dup = [
        0x00, 0x00, 0x00, 0x08, 0x00, 0x06, 0x00, 0x00, 0x03, b'y', b'.', b't',
    ];
    assert_eq!(
        malformed(&with_extensions(
            client_hello(Some("x.test"), &["h2"], 0),
            &dup
        )),
        Malformed::DuplicateExtension
    );
    // An extension whose length runs past the block.
    assert_eq!(
        malformed(&with_extensions(
            client_hello(Some("x.test"), &["h2"], 0),
            &[0x00, 0x15, 0x00, 0x09, 0x00]
        )),
        Malformed::Truncated
    );
}

#[test]
fn server_name_rules_from_rfc_6066() {
    let hello_with =
        |list: &[u8]| with_extensions(client_hello(None, &[], 0), &list_extension(0, list));
    let two = [0, 0, 3, b'a', b'.', b'b', 0, 0, 3, b'c', b'.', b'd'];
    assert_eq!(malformed(&hello_with(&two)), Malformed::DuplicateServerName);
    assert_eq!(
        malformed(&hello_with(&[0, 0, 3, b'a', 0, b'b'])),
        Malformed::InvalidServerName(HostNameError::InvalidCharacter)
    );
    assert_eq!(
        malformed(&hello_with(&[0, 0, 0])),
        Malformed::InvalidServerName(HostNameError::Empty)
    );
    let mut long_label = vec![0, 0, 64];
    long_label.extend_from_slice(&[b'a'; 64]);
    assert_eq!(
        malformed(&hello_with(&long_label)),
        Malformed::InvalidServerName(HostNameError::LabelTooLong)
    );
    assert_eq!(malformed(&hello_with(&[])), Malformed::BadVector);
    // An unknown name type is skipped; the host_name next to it is used.
    let mixed = [7, 0, 2, 0xff, 0xff, 0, 0, 3, b'a', b'.', b'b'];
    let hello = parse(&hello_with(&mixed), DEFAULT_MAX_HELLO_LEN)
        .unwrap()
        .unwrap();
    assert_eq!(hello.server_name.unwrap().as_str(), "a.b");
}

#[test]
fn alpn_rules_from_rfc_7301() {
    for (list, want) in [
        (&[][..], Malformed::BadVector),
        (&[2, b'h', b'2', 0][..], Malformed::EmptyAlpnName),
    ] {
        let raw = with_extensions(
            client_hello(Some("a.test"), &[], 0),
            &list_extension(16, list),
        );
        assert_eq!(malformed(&raw), want);
    }
}

/// Deterministic xorshift, so failures reproduce without a crate.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn mutated_captures_never_panic_and_agree_with_rustls_when_both_accept() {
    let mut state = 0x9e37_79b9_7f4a_7c15;
    for f in fixtures() {
        for _ in 0..2_000 {
            let mut raw = f.bytes.clone();
            for _ in 0..=(xorshift(&mut state) % 4) {
                let at = usize::try_from(xorshift(&mut state)).unwrap() % raw.len();
                raw[at] = u8::try_from(xorshift(&mut state) & 0xff).unwrap();
            }
            if xorshift(&mut state).is_multiple_of(4) {
                raw.truncate(usize::try_from(xorshift(&mut state)).unwrap() % raw.len());
            }
            let ours = parse(&raw, DEFAULT_MAX_HELLO_LEN);
            if let Ok(Some(hello)) = &ours {
                assert!(hello.len <= raw.len());
                if let Some((sni, alpn)) = rustls_view(&raw) {
                    // rustls keeps the client's case; we route on lower case.
                    let theirs = (sni.map(|s| s.to_ascii_lowercase()), alpn);
                    let ours = (
                        hello.server_name.as_ref().map(|h| h.to_string()),
                        alpn_strings(hello),
                    );
                    assert_eq!(ours, theirs, "mutation of {}: {raw:02x?}", f.file);
                }
            }
        }
    }
}
