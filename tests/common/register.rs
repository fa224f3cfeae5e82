//! Registration as a client does it against the edge's registrar: the
//! users' credentials file and a digest-authenticated REGISTER over a
//! party's own socket (tests/registrar.rs, tests/interworking.rs).

use super::header;
use md5::Md5;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const DOMAIN: &str = "example.net";

pub fn hex_md5(s: &str) -> String {
    Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
pub fn hex_sha(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `user password` pairs provisioned (as HA1 lines) for every test.
pub const USERS: &[(&str, &str)] = &[("alice", "wonder"), ("bob", "builder"), ("carol", "c4r0l")];

pub fn credentials_file(dir: &std::path::Path) -> PathBuf {
    let mut text = String::from("# AOR MD5 SHA-256\n");
    for (u, p) in USERS {
        let a1 = format!("{u}:{DOMAIN}:{p}");
        text += &format!("{u}@{DOMAIN} {} {}\n", hex_md5(&a1), hex_sha(&a1));
    }
    let path = dir.join("credentials.txt");
    // Written once per test: a restart reads what the admin API wrote.
    if !path.exists() {
        std::fs::write(&path, text).unwrap();
    }
    path
}

pub fn param(h: &str, name: &str) -> String {
    let i = h
        .find(&format!("{name}="))
        .unwrap_or_else(|| panic!("{name} in {h}"))
        + name.len()
        + 1;
    let rest = &h[i..];
    match rest.strip_prefix('"') {
        Some(q) => q[..q.find('"').unwrap()].to_string(),
        None => rest.split([',', ' ']).next().unwrap().to_string(),
    }
}

/// A party's REGISTER through the edge, answered with `alg` credentials
/// for `user`/`password`: the whole exchange over the party's own socket
/// (so its flow is the address the session comes back to).
pub fn register_party(
    p: &super::party::Party,
    edge: SocketAddr,
    user: &str,
    password: &str,
    tag: &str,
) {
    let contact = format!("<{}>;{tag}", p.aor());
    let call_id = format!("reg-{}", p.addr().port());
    let req = |cseq: u32, auth: &str| {
        format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK-r{cseq}-{call_id}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag=r\r\nTo: <sip:{user}@{DOMAIN}>\r\n\
             Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nContact: {contact}\r\n{auth}Content-Length: 0\r\n\r\n",
            a = p.addr()
        )
    };
    let answer_to = |cseq: u32| {
        let want = format!("{cseq} REGISTER");
        assert!(
            p.wait_for(
                |l| l.iter().any(|r| r.call_id == call_id && r.cseq == want),
                Duration::from_secs(3)
            ),
            "no answer to REGISTER {cseq}"
        );
        p.log()
            .into_iter()
            .find(|r| r.call_id == call_id && r.cseq == want)
            .unwrap()
            .raw
    };
    p.send_raw(req(1, "").as_bytes(), edge);
    let c = answer_to(1);
    assert!(c.starts_with("SIP/2.0 401 "), "{c}");
    let ch = header(&c, "WWW-Authenticate")[0].to_string();
    let (nonce, realm) = (param(&ch, "nonce"), param(&ch, "realm"));
    let uri = format!("sip:{DOMAIN}");
    let ha1 = hex_sha(&format!("{user}:{realm}:{password}"));
    let ha2 = hex_sha(&format!("REGISTER:{uri}"));
    let resp = hex_sha(&format!("{ha1}:{nonce}:00000001:c1:auth:{ha2}"));
    let auth = format!(
        "Authorization: Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{resp}\", algorithm=SHA-256, qop=auth, nc=00000001, cnonce=\"c1\"\r\n"
    );
    p.send_raw(req(2, &auth).as_bytes(), edge);
    let ok = answer_to(2);
    assert!(ok.starts_with("SIP/2.0 200 OK"), "{ok}");
}
