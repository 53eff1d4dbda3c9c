//! `proto::resume`: arbitrary bytes read as a sequence of frame headers never panic, and
//! every header that parses writes back to the same bytes; offsets driven by arbitrary
//! acknowledgements never go backwards or past what was sent.
#![no_main]

use bamf_proto::resume::{Header, MAX_HEADER_LEN, Outgoing};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut out = Outgoing::default();
    while let Some(&kind) = rest.first() {
        let Ok(len) = Header::len_for(kind) else {
            return;
        };
        let Some(bytes) = rest.get(..len) else {
            return;
        };
        rest = &rest[len..];
        let Ok(header) = Header::parse(bytes) else {
            continue;
        };
        let mut again = [0u8; MAX_HEADER_LEN];
        let n = header.write(&mut again);
        assert_eq!(&again[..n], bytes);
        match header {
            Header::Data { len } => {
                let _ = out.took(usize::from(len));
                out.sent(u64::from(len));
            }
            Header::Ack { received } | Header::Resume { received, .. } => {
                let before = out.acked;
                if out.on_ack(received).is_ok() {
                    assert!(out.acked >= before && out.acked <= out.sent);
                }
            }
            _ => {}
        }
    }
});
