//! Any bytes as a datagram through `sip::scan` and the registrar's readers
//! (`sip::contact`), and the same bytes as the Contact value of a fixed
//! REGISTER: no panic; an accepted list holds 1 to MAX_REGISTER_CONTACTS
//! values whose spans lie inside their value, inside the headers, with a
//! SIP/SIPS URI that parses, q <= 1000, a reg-id in 1..=2^31-1 only with an
//! instance `<...>`; a refusal's reason is a short printable phrase.
#![no_main]

use cpm_edge::sip::contact::{
    expires_header, extension_params, header_values, path_has_outbound, register_contacts,
    supports_outbound, RegisterContacts, MAX_REGISTER_CONTACTS, MAX_REG_ID,
};
use cpm_edge::sip::scan::scan;
use cpm_edge::sip::uri::{self, Scheme};
use cpm_edge::sip::Span;
use libfuzzer_sys::fuzz_target;

const HEAD: &[u8] = b"REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKnashds7\r\n\
Max-Forwards: 70\r\n\
To: <sip:alice@example.com>\r\n\
From: <sip:alice@example.com>;tag=456248\r\n\
Call-ID: 843817637684230@998sdasdh09\r\n\
CSeq: 1826 REGISTER\r\n\
Supported: path, outbound\r\n\
Path: <sip:edge.example.com;lr;ob>\r\n\
Expires: 600\r\n\
Contact: ";
const TAIL: &[u8] = b"\r\nContent-Length: 0\r\n\r\n";

fn reason_ok(r: &str) -> bool {
    !r.is_empty() && r.len() <= 40 && r.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
}

fn check(buf: &[u8]) {
    let m = scan(buf);
    let within = |outer: Span, inner: Span| outer.start <= inner.start && inner.end <= outer.end;
    if let Err(e) = expires_header(buf, &m) {
        assert!(reason_ok(e.reason()));
    }
    let _ = (path_has_outbound(buf, &m), supports_outbound(buf, &m));
    for v in header_values(buf, &m, b"Supported").chain(header_values(buf, &m, b"Path")) {
        assert!(within(m.headers, v));
    }
    match register_contacts(buf, &m) {
        Ok(RegisterContacts::List(l)) => {
            assert!(!l.is_empty() && l.len() <= MAX_REGISTER_CONTACTS);
            for c in &l {
                assert!(within(m.headers, c.value));
                assert!(within(c.value, c.uri) && within(c.value, c.params));
                assert!(c.instance.is_none_or(|i| {
                    let t = i.get(buf);
                    within(c.value, i) && t.first() == Some(&b'<') && t.last() == Some(&b'>')
                }));
                assert!(c.q.is_none_or(|q| q <= 1000));
                assert!(c.reg_id.is_none_or(|r| (1..=MAX_REG_ID).contains(&r)));
                assert!(c.reg_id.is_none() || c.instance.is_some());
                let u = uri::parse(buf, c.uri).expect("an accepted URI parses");
                assert!(matches!(u.scheme, Scheme::Sip | Scheme::Sips));
                for (n, v) in extension_params(buf, c) {
                    assert!(within(c.params, n) && v.is_none_or(|v| within(c.params, v)));
                }
            }
        }
        Ok(RegisterContacts::Star) => assert_eq!(expires_header(buf, &m), Ok(Some(0))),
        Ok(RegisterContacts::None) => {}
        Err(e) => assert!(reason_ok(e.reason())),
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut msg = Vec::with_capacity(HEAD.len() + data.len() + TAIL.len());
    msg.extend_from_slice(HEAD);
    msg.extend_from_slice(data);
    msg.extend_from_slice(TAIL);
    check(&msg);
});
