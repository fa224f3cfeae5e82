//! Any bytes as an SDP offer through parse + media policy + RFC 3264
//! refusal: no panic, and the rewritten body re-parses with the same number
//! of media sections, the refused ones at port 0, and is never longer.
#![no_main]

use cpm_edge::sip::media::{filter_offer, MediaPolicy};
use cpm_edge::sip::sdp::{parse, refuse_streams};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// Restrictive on every axis, so that every refusal path is reachable.
fn policy() -> &'static MediaPolicy {
    static P: OnceLock<MediaPolicy> = OnceLock::new();
    P.get_or_init(|| {
        let v = |s: &[&str]| Some(s.iter().map(|x| x.to_string()).collect());
        MediaPolicy {
            allowed_media: v(&["message", "audio"]),
            allowed_protos: v(&["TCP/MSRP", "TCP/TLS/MSRP", "RTP/AVP"]),
            allowed_accept_types: v(&["message/cpim", "text/*"]),
            max_streams: Some(2),
            max_file_size: Some(1 << 20),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(sdp) = parse(data) else { return };
    let verdict = filter_offer(&sdp, policy());
    assert_eq!(verdict.refuse.len(), sdp.media.len());
    assert_eq!(verdict.reasons.len(), sdp.media.len());
    assert!(verdict.kept() <= 2);
    let mut out = Vec::new();
    refuse_streams(data, &sdp, &verdict.refuse, &mut out);
    assert!(out.len() <= data.len());
    let again = parse(&out).expect("a refused body parses again");
    assert_eq!(again.media.len(), sdp.media.len());
    for (m, &refused) in again.media.iter().zip(&verdict.refuse) {
        assert!(!refused || m.port == 0, "a refused stream has port 0");
    }
});
