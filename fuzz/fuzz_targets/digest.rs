//! Any bytes as Digest credentials and as a Digest challenge, then as a
//! sequence of nonce mints, checks and nonce-count checks on a clock that
//! runs both ways: never a panic; whatever parses is well-formed, verifies
//! exactly when its response is the one computed, and written back parses
//! to the same values and verifies; a nonce changed in any byte is forged;
//! and no nonce count is ever accepted twice, whatever was evicted.
#![no_main]

use cpm_edge::sip::digest::{
    check_nonce, mint_nonce, parse_challenge, parse_credentials, response, verify,
    write_authorization, write_challenge, Algorithm, Challenge, Credentials, Ha1, NcCheck,
    NonceCheck, NonceCounts, NonceKey, Qop, MAX_VALUE_LEN, NONCE_LEN,
};
use cpm_edge::sip::rewrite::Out;
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

#[path = "common/input.rs"]
#[allow(dead_code)]
mod input;
use input::Input;

const LIFETIME_S: u64 = 30;
const CAPACITY: usize = 4;
const MAX_NONCES: usize = 12;

/// The value after `Name: ` of one written header line, without CRLF.
fn value_of<'a>(line: &'a [u8], name: &[u8]) -> &'a [u8] {
    assert!(line.starts_with(name) && line.ends_with(b"\r\n"));
    &line[name.len() + 2..line.len() - 2]
}

fn other(alg: Algorithm) -> Algorithm {
    match alg {
        Algorithm::Md5 => Algorithm::Sha256,
        Algorithm::Sha256 => Algorithm::Md5,
    }
}

/// Write an answer to `ch` and check that the server side reads it back
/// and verifies it.
fn answer_and_verify(ch: &Challenge<'_>, username: &[u8], uri: &[u8], cnonce: &[u8], nc: u32) {
    let ha1 = Ha1::compute(ch.algorithm, username, ch.realm, b"pw");
    let mut buf = vec![0u8; 16 * 1024];
    let mut o = Out::new(&mut buf);
    write_authorization(
        &mut o,
        b"Authorization",
        ch,
        username,
        &ha1,
        b"INVITE",
        uri,
        cnonce,
        nc,
    );
    let n = o.finish().expect("an answer of bounded values fits");
    let c =
        parse_credentials(value_of(&buf[..n], b"Authorization")).expect("a written answer parses");
    assert_eq!(c.username, username);
    assert_eq!((c.realm, c.nonce, c.uri), (ch.realm, ch.nonce, uri));
    assert_eq!((c.algorithm, c.opaque), (ch.algorithm, ch.opaque));
    if ch.qop_auth {
        assert_eq!(
            (c.qop, c.nc, c.cnonce),
            (Some(Qop::Auth), Some(nc), Some(cnonce))
        );
    } else {
        assert_eq!((c.qop, c.nc, c.cnonce), (None, None, None));
    }
    assert!(verify(&c, &ha1, b"INVITE"));
    assert!(!verify(&c, &ha1, b"BYE"));
}

fn credentials(data: &[u8]) {
    let Ok(c) = parse_credentials(data) else {
        return;
    };
    well_formed(&c);
    let ha1 = Ha1::compute(c.algorithm, c.username, c.realm, b"pw");
    let qop = c.qop.map(|_| (c.nc_text.unwrap(), c.cnonce.unwrap()));
    let want = response(
        c.algorithm,
        ha1.as_hex().as_bytes(),
        c.nonce,
        b"INVITE",
        c.uri,
        qop,
    );
    let matches = c.response.to_ascii_lowercase() == want.as_bytes();
    assert_eq!(verify(&c, &ha1, b"INVITE"), matches);
    let right = Credentials {
        response: want.as_bytes(),
        ..c
    };
    assert!(verify(&right, &ha1, b"INVITE"));
    let wrong_alg = Ha1::compute(other(c.algorithm), c.username, c.realm, b"pw");
    assert!(!verify(&right, &wrong_alg, b"INVITE"));
    // Written back as an answer to its own challenge: the same values.
    let ch = Challenge {
        realm: c.realm,
        nonce: c.nonce,
        algorithm: c.algorithm,
        qop_auth: c.qop.is_some(),
        stale: false,
        opaque: c.opaque,
    };
    answer_and_verify(
        &ch,
        c.username,
        c.uri,
        c.cnonce.unwrap_or(b"x"),
        c.nc.unwrap_or(1),
    );
}

fn well_formed(c: &Credentials<'_>) {
    assert_eq!(c.response.len(), c.algorithm.hex_len());
    assert!(c.response.iter().all(u8::is_ascii_hexdigit));
    assert_eq!(c.nc.is_some(), c.nc_text.is_some());
    if let (Some(nc), Some(text)) = (c.nc, c.nc_text) {
        assert_eq!(text.len(), 8);
        assert_eq!(
            u32::from_str_radix(std::str::from_utf8(text).unwrap(), 16).unwrap(),
            nc
        );
    }
    if c.qop.is_some() {
        assert!(c.cnonce.is_some() && c.nc.is_some());
    }
    for v in [c.username, c.realm, c.nonce, c.uri]
        .into_iter()
        .chain(c.cnonce)
        .chain(c.opaque)
    {
        assert!(v.len() <= MAX_VALUE_LEN);
        assert!(cpm_edge::sip::digest::is_quotable(v));
    }
}

fn challenge(data: &[u8]) {
    let Ok(ch) = parse_challenge(data) else {
        return;
    };
    let mut buf = vec![0u8; 8 * 1024];
    let mut o = Out::new(&mut buf);
    write_challenge(
        &mut o,
        b"Proxy-Authenticate",
        ch.realm,
        ch.nonce,
        ch.algorithm,
        ch.stale,
    );
    let n = o.finish().expect("a challenge of bounded values fits");
    let again = parse_challenge(value_of(&buf[..n], b"Proxy-Authenticate"))
        .expect("a written challenge parses");
    assert_eq!((again.realm, again.nonce), (ch.realm, ch.nonce));
    assert_eq!((again.algorithm, again.stale), (ch.algorithm, ch.stale));
    assert!(again.qop_auth && again.opaque.is_none());
    answer_and_verify(&ch, b"alice", b"sip:example.com", b"c0", 7);
}

/// What `check_nonce` must say of a genuine nonce issued at `issued`.
fn judged(issued: u64, now: u64) -> NonceCheck {
    if issued > now.saturating_add(2) {
        NonceCheck::Forged
    } else if now.saturating_sub(issued) > LIFETIME_S {
        NonceCheck::Stale
    } else {
        NonceCheck::Fresh { issued_s: issued }
    }
}

/// The issued time and sequence a nonce's first 16 characters (12 bytes
/// of base64url) spell, decoded independently of the module.
fn data_of(nonce: &[u8]) -> Option<(u64, u32)> {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits: u128 = 0;
    for c in nonce.get(..16)? {
        bits = bits << 6 | B64.iter().position(|b| b == c)? as u128;
    }
    Some(((bits >> 32) as u64, bits as u32))
}

/// Nonces minted, checked (as minted, with one byte changed, or as raw
/// input) and counted on a clock that may step back.
fn nonces(mut input: Input<'_>) {
    let key = NonceKey::new([0x5a; 32]);
    let mut now: u64 = 1_000;
    let mut minted: Vec<(Vec<u8>, u64)> = Vec::new();
    let mut counts = NonceCounts::new(CAPACITY);
    let mut best: HashMap<Vec<u8>, u32> = HashMap::new();
    let mut seq = 0u32;
    while let Some(op) = input.byte() {
        match op % 6 {
            0 if minted.len() < MAX_NONCES => {
                seq = seq.wrapping_add(1);
                let n = mint_nonce(&key, now, seq);
                minted.push((n.as_bytes().to_vec(), now));
            }
            1 => now = now.saturating_add(u64::from(input.byte().unwrap_or(1))),
            2 => now = now.saturating_sub(u64::from(input.byte().unwrap_or(1) % 8)),
            3 => {
                let (Some(k), Some(at), Some(to)) = (input.byte(), input.byte(), input.byte())
                else {
                    return;
                };
                let Some((n, issued)) = minted.get(usize::from(k) % minted.len().max(1)) else {
                    continue;
                };
                assert_eq!(check_nonce(&key, n, now, LIFETIME_S), judged(*issued, now));
                let mut t = n.clone();
                let i = usize::from(at) % NONCE_LEN;
                if t[i] != to {
                    t[i] = to;
                    assert_eq!(check_nonce(&key, &t, now, LIFETIME_S), NonceCheck::Forged);
                }
            }
            4 => {
                // Raw bytes may spell a nonce of an earlier run (the key is
                // fixed and the fuzzer learns compared bytes): whatever is
                // not Forged must be exactly what mint_nonce writes for the
                // time and sequence it carries, and judged by that time.
                let raw = input.bytes(NONCE_LEN);
                let got = check_nonce(&key, raw, now, LIFETIME_S);
                if got != NonceCheck::Forged {
                    let (issued, seq) = data_of(raw).expect("an accepted nonce decodes");
                    assert_eq!(mint_nonce(&key, issued, seq).as_bytes(), raw);
                    assert_eq!(got, judged(issued, now));
                }
            }
            _ => {
                let (Some(k), Some(nc)) = (input.byte(), input.byte()) else {
                    return;
                };
                let Some((n, issued)) = minted.get(usize::from(k) % minted.len().max(1)) else {
                    continue;
                };
                let nc = u32::from(nc % 16);
                let got = counts.check(n, *issued, nc, now, LIFETIME_S);
                assert!(counts.len() <= CAPACITY);
                let prev = best.get(n).copied().unwrap_or(0);
                if got == NcCheck::Accepted {
                    assert!(nc > prev, "a replayed nc was accepted");
                    assert!(now.saturating_sub(*issued) <= LIFETIME_S);
                    best.insert(n.clone(), nc);
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    credentials(data);
    challenge(data);
    nonces(Input(data));
});
