//! `proto::sni::parse` on arbitrary bytes: never panics, never claims more bytes than it was
//! given, and agrees with rustls's `Acceptor` on the server name and ALPN whenever both accept.
#![no_main]

use bamf_proto::sni::{DEFAULT_MAX_HELLO_LEN, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(Some(ours)) = parse(data, DEFAULT_MAX_HELLO_LEN) else {
        return;
    };
    assert!(ours.len <= data.len());
    // Every prefix must still be incomplete or the same hello.
    assert!(matches!(parse(&data[..ours.len - 1], DEFAULT_MAX_HELLO_LEN), Ok(None) | Err(_)));

    let mut acceptor = rustls::server::Acceptor::default();
    let mut cursor = &data[..ours.len];
    while !cursor.is_empty() {
        match acceptor.read_tls(&mut cursor) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    let Ok(Some(accepted)) = acceptor.accept() else {
        return;
    };
    let theirs = accepted.client_hello();
    // Known, deliberate differences where rustls reports no name: an IP literal (rustls drops
    // it; we route it like any name) and a host_name after an entry of unknown type (rustls
    // reads the unknown entry to the end of the list). When rustls names a server, we agree.
    if let Some(name) = theirs.server_name() {
        let ours_name = ours.server_name.as_ref().map(|h| h.as_str().to_owned());
        assert_eq!(ours_name, Some(name.to_ascii_lowercase()));
    }
    let their_alpn: Vec<&[u8]> = theirs.alpn().map(|a| a.collect()).unwrap_or_default();
    let our_alpn: Vec<&[u8]> = ours.alpn.iter().collect();
    assert_eq!(our_alpn, their_alpn);
});
