//! The ClientHello every benchmark connection sends: the one synthetic hello defined in
//! `bamf_proto::sni::build`, with the benchmark's server name. Proxies only read its SNI, so
//! one fixed hello serves every connection.

use bamf_proto::sni::{MAX_RECORD_PAYLOAD, build};

/// The server name every target routes to the backend.
pub(crate) const SNI: &str = "bench.example.test";

/// The hello as sent on the wire (one record).
pub(crate) fn client_hello() -> Vec<u8> {
    build::records(
        &build::client_hello(Some(SNI), &["h2"], 0),
        MAX_RECORD_PAYLOAD,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hello_carries_the_benchmark_name() {
        let hello = client_hello();
        let parsed = bamf_proto::sni::parse(&hello, 32 * 1024).unwrap().unwrap();
        assert_eq!(parsed.server_name.unwrap().as_str(), SNI);
        assert_eq!(parsed.len, hello.len());
    }
}
