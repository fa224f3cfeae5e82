//! Arbitrary bodies, texts and Request-URIs through the SMS Interworking
//! Function's decisions: never a panic; a plan's parts hold its units
//! (at most 160/153 septets or 70/67 UCS-2 units each); GSM 7-bit only
//! when every character has a septet; a number is `+` and 6-15 digits.
#![no_main]

use cpm_edge::iwf::sms::{self, Coding};
use cpm_edge::sip::scan::scan;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (ctype, body) = match data.split_first() {
        Some((k, rest)) if k % 2 == 0 => ("message/cpim", rest),
        Some((_, rest)) => ("text/plain; charset=utf-8", rest),
        None => return,
    };
    let mut msg = format!(
        "MESSAGE tel:+447700900123 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\n\
         From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: c\r\nCSeq: 1 MESSAGE\r\n\
         Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    msg.extend_from_slice(body);
    let m = scan(&msg);
    if let Ok(t) = sms::text_of(&msg, &m) {
        assert!(!t.text.is_empty());
        if let Ok(p) = sms::plan(&t.text, 255) {
            let (single, part) = match p.coding {
                Coding::Gsm7 => (sms::GSM7_SINGLE, sms::GSM7_PART),
                Coding::Ucs2 => (sms::UCS2_SINGLE, sms::UCS2_PART),
            };
            assert!(p.parts >= 1 && p.units <= if p.parts == 1 { single } else { p.parts * part });
            if p.coding == Coding::Gsm7 {
                assert!(t.text.chars().all(|c| sms::gsm7_septets(c).is_some()));
            }
        }
    }
    if let Ok(uri) = std::str::from_utf8(data) {
        if let Some(n) = sms::msisdn_of(uri) {
            let d = n.strip_prefix('+').expect("+");
            assert!((6..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()));
        }
    }
});
