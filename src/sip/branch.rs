//! RFC 3261 §16.11 branch for a stateless proxy, and §16.3 loop detection.
//!
//! Our Via branch is `z9hG4bKcpe` + 16 hex digits of a *transaction hash* +
//! 8 hex digits of a *loop hash*:
//! - the transaction hash covers the incoming top Via (its branch and
//!   sent-by; for RFC 2543 peers without the magic cookie, Call-ID, From tag,
//!   CSeq number, top Via and Request-URI), so a retransmission, the CANCEL
//!   and the ACK of a non-2xx get the same branch on any worker of any edge;
//! - the loop hash covers what a spiral changes (Request-URI, Call-ID, From
//!   tag, CSeq number, the Route values still to visit, the leg we received
//!   the request on). Finding our prefix with the same loop hash in an
//!   incoming request's Via means it came back unchanged: a loop (482). A
//!   legitimate spiral edge → CS → edge arrives on another leg, so it differs.
//!
//! The loop hash is [`StableHash`] (stable across edges, so a loop through
//! several of them is seen); the transaction part is a keyed MAC.

use super::hash::{hex_into, StableHash};
use super::scan::Message;
use super::via::Via;
use super::Span;
use std::net::SocketAddr;

/// Marks a branch as made by a cpm-edge instance.
pub const BRANCH_PREFIX: &[u8] = b"z9hG4bKcpe";
/// Full branch length: prefix + 16 + 8 hex digits.
pub const BRANCH_LEN: usize = BRANCH_PREFIX.len() + 24;

/// The loop hash of a request as received on `leg`, with the first
/// `popped` Route values (ours) already removed.
pub fn loop_hash(buf: &[u8], m: &Message, ruri: Span, leg: u8, popped: usize) -> u32 {
    let mut h = StableHash::default();
    h.bytes(ruri.get(buf));
    h.bytes(m.call_id.get(buf));
    h.bytes(m.from_tag.map_or(&[][..], |t| t.get(buf)));
    h.bytes(&m.cseq_num.to_le_bytes());
    for r in m.route_values().iter().skip(popped) {
        h.bytes(r.value.get(buf));
    }
    h.byte(leg);
    (h.finish() >> 32) as u32
}

/// The secret that makes our branches unforgeable: a 128-bit SipHash key
/// shared by every edge of a deployment (`[trust] secret`), so any edge
/// can verify a response to a request another edge forwarded.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BranchKey {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for BranchKey {
    // A key never appears in logs or `/config`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BranchKey(..)")
    }
}

impl BranchKey {
    /// The key derived from a configured secret (any length; validation
    /// asks for at least 16 bytes): SipHash-1-3-128 of the secret under a
    /// fixed key, a compression, not a password hash (the secret is a
    /// random token, never a human password).
    pub fn from_secret(secret: &[u8]) -> BranchKey {
        use siphasher::sip128::{Hasher128, SipHasher13};
        let mut h = SipHasher13::new_with_keys(0x6370_6d2d_6564_6765, 0x6272_616e_6368_6b31);
        std::hash::Hasher::write(&mut h, secret);
        let v = h.finish128();
        BranchKey { k0: v.h1, k1: v.h2 }
    }

    /// A key of this process alone, from the kernel's random source: what an
    /// edge without `[trust] secret` uses (one edge; a fleet must share one).
    pub fn random() -> BranchKey {
        let mut b = [0u8; 16];
        let mut got = 0;
        while got < b.len() {
            // SAFETY: `b[got..]` is a valid, writable buffer of the length passed.
            let n = unsafe { libc::getrandom(b[got..].as_mut_ptr().cast(), b.len() - got, 0) };
            assert!(
                n > 0,
                "getrandom failed: the kernel's random source is required"
            );
            got += n as usize;
        }
        BranchKey::from_secret(&b)
    }

    /// The 64-bit MAC of a transaction as one hop sees it: the previous
    /// hop's Via (branch and sent-by, what RFC 3261 §17.2.3 matches on),
    /// where answers go back to (the requester's real source, which the
    /// edge writes into that Via as `received`/`rport`), Call-ID, CSeq
    /// number (not its method: a CANCEL and the ACK of a non-2xx share the
    /// INVITE's branch) and the loop hash. A response carries all of it, so
    /// the edge that verifies it needs no state. (Not the From tag: the
    /// scan of a response does not parse From, and the previous hop's
    /// branch already names the transaction.)
    fn mac(
        &self,
        buf: &[u8],
        m: &Message,
        prev: &Via,
        back_to: SocketAddr,
        loop_digits: &[u8],
    ) -> u64 {
        let fields = [
            prev.branch.map_or(&[][..], |b| b.get(buf)),
            prev.host.get(buf),
            m.call_id.get(buf),
        ];
        // The field lengths up front make the encoding unambiguous (a UDP
        // datagram, and so every field, is shorter than 64 KiB).
        let mut lens = [0u8; 6];
        for (l, f) in lens.chunks_exact_mut(2).zip(&fields) {
            let n = u16::try_from(f.len()).unwrap_or(u16::MAX);
            l.copy_from_slice(&n.to_le_bytes());
        }
        // Ports, CSeq, loop digits, then the address (4 or 16 bytes: the
        // length of the whole input tells the family).
        let mut fixed = [0u8; 32];
        fixed[0..2].copy_from_slice(&back_to.port().to_le_bytes());
        fixed[2..4].copy_from_slice(&prev.port.unwrap_or(0).to_le_bytes());
        fixed[4..8].copy_from_slice(&m.cseq_num.to_le_bytes());
        let digits = loop_digits.len().min(8);
        fixed[8..8 + digits].copy_from_slice(&loop_digits[..digits]);
        let end = match back_to.ip() {
            std::net::IpAddr::V4(ip) => {
                fixed[16..20].copy_from_slice(&ip.octets());
                20
            }
            std::net::IpAddr::V6(ip) => {
                fixed[16..32].copy_from_slice(&ip.octets());
                32
            }
        };
        let fixed = &fixed[..end];
        siphash13(self, [&lens, fields[0], fields[1], fields[2], fixed])
    }
}

/// SipHash-1-3 of the concatenation of `parts`. The hasher's per-call tail
/// handling costs more than the hashing for a few short fields, so a usual
/// transaction (fields under 200 bytes) is gathered and hashed in one call;
/// longer ones are streamed, with the same result. (1-3, as Rust's
/// `HashMap` keys it: a keyed PRF whose output an attacker never sees for
/// a key it does not hold; 2-4 doubled the cost of every relayed response
/// for no attack known on 1-3.)
fn siphash13(key: &BranchKey, parts: [&[u8]; 5]) -> u64 {
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher13::new_with_keys(key.k0, key.k1);
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut gathered = [0u8; 256];
    if total <= gathered.len() {
        let mut n = 0;
        for p in parts {
            gathered[n..n + p.len()].copy_from_slice(p);
            n += p.len();
        }
        h.write(&gathered[..n]);
    } else {
        for p in parts {
            h.write(p);
        }
    }
    h.finish()
}

/// The full branch value for the Via we add to a request received from
/// `src`: our prefix, the MAC of its transaction, its loop hash.
pub fn branch(
    key: &BranchKey,
    buf: &[u8],
    m: &Message,
    src: SocketAddr,
    loop_h: u32,
) -> [u8; BRANCH_LEN] {
    let mut out = [0u8; BRANCH_LEN];
    let (prefix, digits) = out.split_at_mut(BRANCH_PREFIX.len());
    prefix.copy_from_slice(BRANCH_PREFIX);
    let (mac_digits, loop_digits) = digits.split_at_mut(16);
    hex_into(u64::from(loop_h), loop_digits);
    let mac = m
        .top_via
        .as_ref()
        .map_or(0, |v| key.mac(buf, m, v, src, loop_digits));
    hex_into(mac, mac_digits);
    out
}

/// Is `top_branch` (a response's top Via branch) one an edge holding `key`
/// wrote for the request this response answers, going back to `back_to`
/// (where the response's second Via sends it)? A forged branch, or a real
/// one whose second Via was rewritten to steer the answer elsewhere, fails.
pub fn verify(
    key: &BranchKey,
    buf: &[u8],
    m: &Message,
    top_branch: &[u8],
    back_to: SocketAddr,
) -> bool {
    let (Some(prev), true) = (m.second_via.as_ref(), is_ours(top_branch)) else {
        return false;
    };
    let (mac_digits, loop_digits) = top_branch[BRANCH_PREFIX.len()..].split_at(16);
    // The loop digits go into the MAC as written, so they need no parsing;
    // the MAC is compared in the hex form the branch carries.
    let mut want = [0u8; 16];
    hex_into(key.mac(buf, m, prev, back_to, loop_digits), &mut want);
    // Not secret-dependent timing worth hiding: a forger learns nothing
    // from how fast a wrong MAC is refused, since it never sees the answer.
    want == mac_digits
}

/// Does a Via that this edge wrote (its `sent_by`: `SIP/2.0/UDP host:port;branch=`,
/// as our Via prefix spells it) carry this loop hash? Another edge's Via
/// with our branch prefix and the same loop hash is a legitimate hop of a
/// chain of edges, not a loop (so the sent-by is part of the match).
/// A `z` starts every prefix and is rare elsewhere in Via lines, so a byte
/// search jumps between candidates: cheaper on a ~70-byte Via line than a
/// memmem finder, whose run-time dispatch and searcher copy were ~110
/// instructions of an INVITE. The prefix cannot overlap itself (its only
/// `z` is its first byte), so every occurrence is found as memmem would.
pub fn is_loop(buf: &[u8], m: &Message, sent_by: &[u8], loop_h: u32) -> bool {
    let hdrs = m.via_lines.get(buf);
    let mut want = [0u8; 8];
    hex_into(u64::from(loop_h), &mut want);
    let mut from = 0;
    while let Some(i) = super::find_byte(BRANCH_PREFIX[0], &hdrs[from..]) {
        let at = from + i;
        if hdrs[at..].starts_with(BRANCH_PREFIX) {
            let tail = at + BRANCH_PREFIX.len() + 16;
            if hdrs.get(tail..tail + 8) == Some(&want[..])
                && hdrs[..at].len() >= sent_by.len()
                && hdrs[at - sent_by.len()..at].eq_ignore_ascii_case(sent_by)
            {
                return true;
            }
        }
        from = at + 1;
    }
    false
}

/// Is this Via branch one of ours?
pub fn is_ours(branch: &[u8]) -> bool {
    branch.len() == BRANCH_LEN && branch.starts_with(BRANCH_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-search loop against the memmem definition, with our
    /// prefixes (matching and not) at every offset of a Via block, cut at
    /// every length.
    #[test]
    fn is_loop_agrees_with_memmem() {
        use super::super::scan::scan;
        let sent_by = b"SIP/2.0/UDP h;branch=";
        let reference = |hdrs: &[u8], loop_h: u32| {
            let mut want = [0u8; 8];
            hex_into(u64::from(loop_h), &mut want);
            memchr::memmem::find_iter(hdrs, BRANCH_PREFIX).any(|at| {
                let tail = at + BRANCH_PREFIX.len() + 16;
                hdrs.get(tail..tail + 8) == Some(&want[..]) && hdrs[..at].ends_with(sent_by)
            })
        };
        let ours = |l: &str| format!("z9hG4bKcpe0123456789abcdef{l}");
        let mut m = scan(b"");
        for pre in [
            "",
            "zz",
            "z9hG4bKcp",
            "Via: SIP/2.0/UDP h;branch=",
            "Via: SIP/2.0/UDP other:5060;branch=",
        ] {
            for branch in [ours("deadbeef"), ours("deadbeee"), ours("dead")] {
                for post in ["", ";rport", "z9hG4bKcpez"] {
                    let text = format!("{pre}{branch}{post},SIP/2.0/UDP h;branch={branch}");
                    for end in 0..=text.len() {
                        let buf = &text.as_bytes()[..end];
                        m.via_lines = Span::new(0, end);
                        assert_eq!(
                            is_loop(buf, &m, sent_by, 0xdead_beef),
                            reference(buf, 0xdead_beef),
                            "{text} {end}"
                        );
                    }
                }
            }
        }
    }

    /// A branch verifies on the response to its request, going back to the
    /// request's source, under the key that wrote it; nothing else does.
    /// Gathered in one call or streamed part by part (fields too long to
    /// gather), the MAC is SipHash-1-3 of the same concatenation.
    #[test]
    fn gathered_and_streamed_macs_agree() {
        use std::hash::Hasher;
        let key = BranchKey::from_secret(b"a secret of sixteen bytes");
        for len in [0usize, 7, 60, 199, 200, 201, 255, 256, 257, 600] {
            let long = vec![b'x'; len];
            let parts: [&[u8]; 5] = [b"lens", &long, b"host", b"call", b"fixed"];
            let mut h = siphasher::sip::SipHasher13::new_with_keys(key.k0, key.k1);
            h.write(&parts.concat());
            assert_eq!(siphash13(&key, parts), h.finish(), "{len}");
        }
    }

    #[test]
    fn branch_mac_binds_key_transaction_and_return_address() {
        use super::super::scan::scan;
        let req = b"INVITE sip:g@x SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bKc1\r\n\
            From: <sip:a@x>;tag=1\r\nTo: <sip:g@x>\r\nCall-ID: c1\r\nCSeq: 7 INVITE\r\n\
            Content-Length: 0\r\n\r\n";
        let src: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        let key = BranchKey::from_secret(b"0123456789abcdef-deployment");
        let m = scan(req);
        assert_eq!(m.defect, None);
        let br = branch(&key, req, &m, src, 0xdead_beef);
        let b = std::str::from_utf8(&br).unwrap();
        assert!(is_ours(&br) && b.ends_with("deadbeef"), "{b}");
        let resp = |br: &str, client_via: &str, call_id: &str| {
            format!(
                "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP e:5060;branch={br}\r\nVia: {client_via}\r\n\
                 From: <sip:a@x>;tag=1\r\nTo: <sip:g@x>;tag=2\r\nCall-ID: {call_id}\r\n\
                 CSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n"
            )
        };
        let via = "SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bKc1;rport=4000;received=198.51.100.7";
        let ok = |text: &str, key: &BranchKey, back_to: SocketAddr| {
            let r = scan(text.as_bytes());
            assert_eq!(r.defect, None, "{text}");
            let top = r.top_via.unwrap().branch.unwrap().get(text.as_bytes());
            verify(key, text.as_bytes(), &r, top, back_to)
        };
        assert!(ok(&resp(b, via, "c1"), &key, src));
        // Another deployment's key, another return address, another
        // transaction, another previous hop, a forged or cut branch: refused.
        let other = BranchKey::from_secret(b"0123456789abcdef-elsewhere!");
        assert!(!ok(&resp(b, via, "c1"), &other, src));
        assert!(!ok(
            &resp(b, via, "c1"),
            &key,
            "198.51.100.8:4000".parse().unwrap()
        ));
        assert!(!ok(&resp(b, via, "c2"), &key, src));
        assert!(!ok(
            &resp(b, &via.replace("z9hG4bKc1", "z9hG4bKc9"), "c1"),
            &key,
            src
        ));
        let flipped =
            format!("{}{}", &b[..12], if &b[12..13] == "0" { "1" } else { "0" }) + &b[13..];
        assert!(!ok(&resp(&flipped, via, "c1"), &key, src));
        assert!(!ok(&resp(&b[..b.len() - 1], via, "c1"), &key, src));
        // The same request from the same source gets the same branch on any
        // edge sharing the key (retransmissions, CANCEL, non-2xx ACK).
        assert_eq!(branch(&key, req, &m, src, 0xdead_beef), br);
        assert_ne!(branch(&other, req, &m, src, 0xdead_beef), br);
    }
}
