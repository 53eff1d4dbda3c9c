//! `proto::san::Identity::from_uris` on arbitrary URI lists: never panics, and whatever it
//! accepts encodes back to URIs that parse to the same identity.
#![no_main]

use bamf_proto::san::Identity;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(identity) = Identity::from_uris(text.split('\n')) {
        let uris = identity.uris();
        assert_eq!(Identity::from_uris(uris.iter().map(String::as_str)), Ok(identity));
    }
});
