//! `proto::proxy_v2::decode` on arbitrary bytes: never panics; what it decodes re-encodes to
//! the same header.
#![no_main]

use bamf_proto::proxy_v2::{Decoded, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(Decoded::Proxy { header, len })) = decode(data) {
        assert!(len <= data.len());
        let again = header.to_bytes();
        assert_eq!(decode(&again), Ok(Some(Decoded::Proxy { header, len: again.len() })));
    }
});
