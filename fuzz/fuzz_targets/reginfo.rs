//! Any bytes as RFC 3680 registration information (`sip::reginfo`): no
//! panic; an accepted document is within the limits, and writing it then
//! reading that back gives the same value; a refusal's reason is a short
//! printable phrase.
#![no_main]

use cpm_edge::sip::reginfo::{
    parse, write, MAX_CONTACTS, MAX_REGISTRATIONS, MAX_UNKNOWN_PARAMS,
};
use cpm_edge::sip::rewrite::Out;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(info) => {
            assert!(info.registrations.len() <= MAX_REGISTRATIONS);
            for r in &info.registrations {
                assert!(r.contacts.len() <= MAX_CONTACTS);
                for c in &r.contacts {
                    assert!(c.unknown_params.len() <= MAX_UNKNOWN_PARAMS);
                    assert!(c.q.is_none_or(|q| q <= 1000) && !c.uri.is_empty());
                    assert!(c.unknown_params.iter().all(|(n, v)| !n.is_empty()
                        && v.as_ref().is_none_or(|v| !v.is_empty())));
                }
            }
            // Escaping grows a byte to at most 6 (`&quot;`).
            let mut buf = vec![0u8; 8 * data.len() + 4096];
            let mut out = Out::new(&mut buf);
            write(&info, &mut out);
            let n = out.finish().expect("the written document fits");
            assert_eq!(parse(&buf[..n]), Ok(info));
        }
        Err(e) => {
            let r = e.reason();
            assert!(r.len() <= 40 && r.bytes().all(|b| b == b' ' || b.is_ascii_graphic()));
            assert!(e.to_string().starts_with("reginfo: "));
        }
    }
});
