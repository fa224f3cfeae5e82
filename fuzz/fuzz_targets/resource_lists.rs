//! Any bytes as an RFC 5366 recipient list (`application/resource-lists+xml`):
//! no panic; an accepted list has 1 to MAX_ENTRIES entries, each a SIP, SIPS
//! or tel URI of printable ASCII (no whitespace or control character), no
//! two the same; a refusal's text is a short printable reason phrase.
//! The same bytes as a `multipart/mixed` body (the ad-hoc INVITE that
//! carries such a list, `cs::multipart`): no panic, at most MAX_PARTS parts,
//! each inside the body.
#![no_main]

use cpm_edge::cs::multipart::{self, MAX_PARTS};
use cpm_edge::cs::resource_lists::{parse, MAX_ENTRIES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(parts) = multipart::parts(data, "b1") {
        assert!(parts.len() <= MAX_PARTS);
        let range = data.as_ptr_range();
        for p in &parts {
            assert!(p.content.is_empty() || range.contains(&p.content.as_ptr()));
        }
    }
    match parse(data) {
        Ok(entries) => {
            assert!(!entries.is_empty() && entries.len() <= MAX_ENTRIES);
            for (i, e) in entries.iter().enumerate() {
                assert!(e.uri.bytes().all(|b| b.is_ascii_graphic()), "{:?}", e.uri);
                let scheme = e.uri.split(':').next().unwrap_or("").to_ascii_lowercase();
                assert!(
                    matches!(scheme.as_str(), "sip" | "sips" | "tel"),
                    "{:?}",
                    e.uri
                );
                for other in &entries[..i] {
                    assert!(
                        !other.uri.eq_ignore_ascii_case(&e.uri),
                        "duplicate {:?}",
                        e.uri
                    );
                }
            }
        }
        Err(e) => {
            let text = e.to_string();
            assert!(text.starts_with("Resource List: ") && text.len() <= 80);
            assert!(text.bytes().all(|b| b == b' ' || b.is_ascii_graphic()));
        }
    }
});
