//! Arbitrary sequences of REGISTERs through the sans-IO registrar on a
//! simulated clock, its changes applied to an in-memory map as the registrar
//! thread applies them to the location service: never a panic, every
//! answer a well-formed response to its request, every change within the
//! contact bound with expiries in the future, and a challenge answered
//! correctly (by the digest client) registers.
//!
//! Requests come from a vocabulary (users, contacts with expires/q/
//! instance/reg-id, Expires headers, `*`, extra Vias, Authorization from
//! the last challenge or garbage) and from raw input bytes.
#![no_main]

use cpm_edge::registrar::credentials::{Credential, CredentialStore};
use cpm_edge::registrar::{Registrar, Settings, Verdict, MAX_ANSWER};
use cpm_edge::route::location::Binding;
use cpm_edge::sip::digest::{parse_challenge, write_authorization, Algorithm, Ha1};
use cpm_edge::sip::rewrite::Out;
use cpm_edge::sip::scan::{scan, Scanned};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::net::SocketAddr;

#[path = "common/input.rs"]
mod input;
use input::Input;

const MAX_CONTACTS: usize = 3;
const USERS: [&str; 3] = ["alice", "bob", "Alice"];
const CONTACTS: [&str; 7] = [
    "<sip:alice@192.0.2.1>",
    "<sip:alice@192.0.2.1>;expires=0",
    "<sip:alice@192.0.2.2:5070>;expires=30",
    "<sip:alice@192.0.2.3>;q=0.5;expires=900",
    "<sip:alice@192.0.2.4>;+sip.instance=\"<urn:uuid:1>\";reg-id=1",
    "*",
    "<sip:a@192.0.2.5>, <sip:a@192.0.2.6>;expires=99999",
];
const EXPIRES: [&str; 5] = ["", "Expires: 0\r\n", "Expires: 3600\r\n", "Expires: x\r\n", "Expires: 10\r\n"];

fn settings() -> Settings {
    Settings {
        domains: vec!["example.net".into()],
        default_expires: 3600,
        min_expires: 60,
        max_expires: 7200,
        max_contacts: MAX_CONTACTS,
        nonce_lifetime_s: 300,
        max_failures: 5,
        failure_window_s: 60,
        algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
    }
}

fn creds() -> CredentialStore {
    let mut s = CredentialStore::default();
    for u in ["alice", "bob"] {
        let cred = Credential {
            md5: Some(Ha1::compute(Algorithm::Md5, u.as_bytes(), b"example.net", b"pw")),
            sha256: Some(Ha1::compute(Algorithm::Sha256, u.as_bytes(), b"example.net", b"pw")),
        };
        s.insert(&format!("{u}@example.net"), cred).unwrap();
    }
    s
}

/// The Authorization line answering `challenge` for `user`.
fn authorization(challenge: &str, user: &str, nc: u32) -> Option<String> {
    let line = challenge.lines().find(|l| l.starts_with("WWW-Authenticate:"))?;
    let ch = parse_challenge(line["WWW-Authenticate:".len()..].trim().as_bytes()).ok()?;
    let ha1 = Ha1::compute(ch.algorithm, user.as_bytes(), b"example.net", b"pw");
    let mut b = [0u8; 2048];
    let mut o = Out::new(&mut b);
    write_authorization(&mut o, b"Authorization", &ch, user.as_bytes(), &ha1, b"REGISTER", b"sip:example.net", b"cn", nc);
    let n = o.finish()?;
    Some(String::from_utf8_lossy(&b[..n]).into_owned())
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let mut r = Registrar::new(settings(), [3; 32]);
    let creds = creds();
    let mut held: HashMap<Vec<u8>, Vec<Binding>> = HashMap::new();
    let mut now = 1_800_000_000u64;
    let mut last_challenge = String::new();
    let mut nc = 0u32;
    let mut cseq = 0u32;
    let src: SocketAddr = "192.0.2.1:5060".parse().unwrap();
    for _ in 0..24 {
        let Some(op) = inp.byte() else { break };
        now += u64::from(op >> 5) * 50;
        let msg: Vec<u8> = if op & 15 == 15 {
            let n = usize::from(inp.byte().unwrap_or(0)) * 4;
            inp.bytes(n).to_vec()
        } else {
            let user = inp.pick(&USERS).unwrap_or("alice");
            let contact = inp.pick(&CONTACTS).unwrap_or("");
            let expires = inp.pick(&EXPIRES).unwrap_or("");
            cseq = cseq.wrapping_add(u32::from(op & 3));
            let via2 = if op & 16 != 0 { "Via: SIP/2.0/UDP 198.51.100.1;branch=z9hG4bKp\r\n" } else { "" };
            nc = nc.wrapping_add(u32::from(op & 1));
            let auth = match op & 12 {
                0 => String::new(),
                4 => "Authorization: Digest username=\"alice\"\r\n".to_string(),
                _ => authorization(&last_challenge, user, nc).unwrap_or_default(),
            };
            format!(
                "REGISTER sip:example.net SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK{cseq}\r\n{via2}\
                 Max-Forwards: 70\r\nFrom: <sip:{user}@example.net>;tag=1\r\nTo: <sip:{user}@example.net>\r\n\
                 Call-ID: c{}\r\nCSeq: {cseq} REGISTER\r\nContact: {contact}\r\n{expires}{auth}Content-Length: 0\r\n\r\n",
                op & 1
            )
            .into_bytes()
        };
        let m = scan(&msg);
        let mut out = vec![0u8; MAX_ANSWER];
        let snapshot = held.clone();
        let current = move |aor: &[u8]| snapshot.get(aor).cloned().unwrap_or_default();
        let h = r.handle(Scanned::new(&msg, &m, src), now, &creds, &current, &mut out);
        let answer = &out[..h.len];
        if h.verdict == Verdict::Dropped {
            assert_eq!(h.len, 0);
            continue;
        }
        let a = scan(answer);
        assert!(a.defect.is_none() && !a.is_request(), "{}", String::from_utf8_lossy(answer));
        if h.verdict == Verdict::Challenged {
            last_challenge = String::from_utf8_lossy(answer).into_owned();
        }
        if let Some(c) = h.change {
            assert_eq!(h.verdict, Verdict::Registered);
            assert!(c.bindings.len() <= MAX_CONTACTS);
            assert!(c.bindings.iter().all(|b| b.expires_at() > now && b.expires_at() <= now + 7200));
            held.insert(c.aor, c.bindings);
        }
    }
});
