//! Arbitrary CPIM header blocks through RFC 5438's request parser, and
//! arbitrary sequences of gateway events through the table of reports
//! awaited: never a panic; a request has a Message-ID and a sender URI
//! within bounds; a token notifies at most once, only what was asked, and
//! never while its submission is neither accepted nor refused; the table
//! never holds more than its bound.
#![no_main]

use cpm_edge::iwf::imdn::{self, Heard, Reports};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

const HEAD: &[u8] = b"From: <sip:a@x>\r\nimdn.Message-ID: m\r\n\
                      imdn.Disposition-Notification: positive-delivery, negative-delivery";

fuzz_target!(|data: &[u8]| {
    if let Some(r) = imdn::requested(data) {
        assert!(!r.message_id.is_empty() && r.message_id.len() <= 256);
        assert!(r.sender.contains(':') && (r.positive || r.negative));
        let n = imdn::notification(&r, imdn::Delivery::Delivered, "tel:+1", "n", "t");
        assert!(n.contains("message/imdn+xml"));
    }
    let Some(req) = imdn::requested(HEAD) else {
        panic!("the reference header block is a request");
    };
    let mut t = Reports::new(4, Duration::from_secs(10));
    let t0 = Instant::now();
    let mut notified = [false; 8];
    let mut accepted = [false; 8];
    for (i, op) in data.iter().enumerate() {
        let k = usize::from(op % 8);
        let token = k.to_string();
        let now = t0 + Duration::from_secs(i as u64);
        match op >> 3 {
            0 if !t.contains(&token) => {
                let _ = t.open(now, token, req.clone(), "tel:+1".into());
                accepted[k] = false;
                notified[k] = false;
            }
            0 => {}
            1 => {
                if let Heard::Notify(..) = t.accepted(&token) {
                    assert!(!notified[k], "token {k} notified twice");
                    notified[k] = true;
                }
                accepted[k] = true;
            }
            2 => t.refused(&token),
            3 => {
                let _ = t.expire(now);
            }
            kind => {
                if let Heard::Notify(..) = t.report(&token, u32::from(kind)) {
                    assert!(accepted[k], "token {k} notified before acceptance");
                    assert!(!notified[k], "token {k} notified twice");
                    notified[k] = true;
                }
            }
        }
        assert!(t.len() <= 4);
    }
});
