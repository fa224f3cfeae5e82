//! Arbitrary bytes as flow tokens: never a panic; whatever decodes
//! encodes back to the same bytes (one token per flow), and a flow's own
//! token always decodes to it. The same bytes as a request forwarded onto
//! a flow: taking the edge's Via off (for the `430` of a flow that is
//! gone) never panics and only ever removes one whole line.
#![no_main]

use cpm_edge::sip::flow::{Flow, TOKEN_LEN};
use cpm_edge::sip::rewrite::without_edge_via;
use libfuzzer_sys::fuzz_target;

const KEY: [u64; 2] = [0x6b65_7930, 0x6b65_7931];

fuzz_target!(|data: &[u8]| {
    if let Some(req) = without_edge_via(data) {
        assert!(req.len() < data.len());
        let eol = data.windows(2).position(|w| w == b"\r\n").unwrap();
        assert_eq!(&req[..eol], &data[..eol]);
        assert!(data.ends_with(&req[eol..]));
    }
    if let Some(f) = Flow::from_token(data, &KEY) {
        assert_eq!(&f.token(&KEY)[..], data);
    }
    if data.len() >= 10 {
        let f = Flow {
            worker: u16::from_be_bytes([data[0], data[1]]),
            slot: u32::from_be_bytes([data[2], data[3], data[4], data[5]]),
            generation: u32::from_be_bytes([data[6], data[7], data[8], data[9]]),
        };
        let t = f.token(&KEY);
        assert_eq!(t.len(), TOKEN_LEN);
        assert_eq!(Flow::from_token(&t, &KEY), Some(f));
    }
});
