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
//! The hash ([`StableHash`]: word-wise multiply-rotate with a murmur3
//! finaliser) is stable across processes and machines, which matters
//! because several edges must agree; edges that disagree on it (different
//! hash versions) pick different shards for a user and different branches.

use super::scan::Message;
use super::Span;

/// Marks a branch as made by a cpm-edge instance.
pub const BRANCH_PREFIX: &[u8] = b"z9hG4bKcpe";
/// Full branch length: prefix + 16 + 8 hex digits.
pub const BRANCH_LEN: usize = BRANCH_PREFIX.len() + 24;

/// Streaming stable 64-bit hash, eight bytes at a time.
///
/// A byte-at-a-time hash (FNV-1a, as before) is one multiply per byte in a
/// dependency chain: ~4 cycles a byte, ~200 bytes per INVITE (branch, loop
/// hash, user, group). Here a multiply covers a word; `bytes` hashes a field
/// (words, then the tail with its length, so `("ab","c")` and `("a","bc")`
/// differ) and `byte` streams into a word for callers that produce bytes one
/// by one. The result depends only on the calls made, never on the machine.
#[derive(Clone, Copy)]
pub struct StableHash {
    h: u64,
    word: u64,
    n: u32,
}

const SEED: u64 = 0xcbf2_9ce4_8422_2325;
const K: u64 = 0x9e37_79b9_7f4a_7c15;

#[inline]
fn mix(h: u64, w: u64) -> u64 {
    (h ^ w).wrapping_mul(K).rotate_left(27)
}

impl Default for StableHash {
    fn default() -> Self {
        StableHash {
            h: SEED,
            word: 0,
            n: 0,
        }
    }
}

impl StableHash {
    #[inline]
    pub fn byte(&mut self, b: u8) {
        self.word |= u64::from(b) << (8 * self.n);
        self.n += 1;
        if self.n == 8 {
            self.h = mix(self.h, self.word);
            self.word = 0;
            self.n = 0;
        }
    }

    /// The bytes streamed so far and not yet mixed, marked by their count.
    #[inline]
    fn flush(&mut self) {
        if self.n > 0 {
            self.h = mix(self.h, self.word | (u64::from(self.n) << 56));
            self.word = 0;
            self.n = 0;
        }
    }

    /// One field: its words, then its tail marked with the tail's length
    /// (a field boundary even when the tail is empty).
    #[inline]
    pub fn bytes(&mut self, s: &[u8]) {
        self.flush();
        let mut words = s.chunks_exact(8);
        let mut h = self.h;
        for w in &mut words {
            h = mix(h, super::le_word(w));
        }
        let tail = words.remainder();
        let mut w = u64::from(0x80 | tail.len() as u8) << 56;
        for (i, b) in tail.iter().enumerate() {
            w |= u64::from(*b) << (8 * i);
        }
        self.h = mix(h, w);
    }

    #[inline]
    pub fn finish(mut self) -> u64 {
        self.flush();
        fmix64(self.h)
    }
}

/// murmur3's 64-bit finaliser: full avalanche of FNV's weak high bits.
#[inline]
pub fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

pub fn hash_bytes(s: &[u8]) -> u64 {
    let mut h = StableHash::default();
    h.bytes(s);
    h.finish()
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `out.len()` lowercase hex digits of the low bits of `v`.
pub(crate) fn hex_into(v: u64, out: &mut [u8]) {
    let n = out.len();
    for (i, o) in out.iter_mut().enumerate() {
        *o = HEX[((v >> (4 * (n - 1 - i))) & 0xf) as usize];
    }
}

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

/// The full branch value for the Via we add.
pub fn branch(buf: &[u8], m: &Message, ruri: Span, loop_h: u32) -> [u8; BRANCH_LEN] {
    let mut h = StableHash::default();
    match m.top_via {
        Some(v) if v.branch.is_some_and(|b| b.get(buf).starts_with(b"z9hG4bK")) => {
            h.bytes(v.branch.map_or(&[][..], |b| b.get(buf)));
            h.bytes(v.host.get(buf));
            h.bytes(&v.port.unwrap_or(0).to_le_bytes());
        }
        _ => {
            h.bytes(m.call_id.get(buf));
            h.bytes(m.from_tag.map_or(&[][..], |t| t.get(buf)));
            h.bytes(&m.cseq_num.to_le_bytes());
            h.bytes(m.top_via.map_or(&[][..], |v| v.value.get(buf)));
            h.bytes(ruri.get(buf));
        }
    }
    let mut out = [0u8; BRANCH_LEN];
    out[..BRANCH_PREFIX.len()].copy_from_slice(BRANCH_PREFIX);
    hex_into(
        h.finish(),
        &mut out[BRANCH_PREFIX.len()..BRANCH_PREFIX.len() + 16],
    );
    hex_into(u64::from(loop_h), &mut out[BRANCH_PREFIX.len() + 16..]);
    out
}

fn prefix_finder() -> &'static memchr::memmem::Finder<'static> {
    static F: std::sync::OnceLock<memchr::memmem::Finder<'static>> = std::sync::OnceLock::new();
    F.get_or_init(|| memchr::memmem::Finder::new(BRANCH_PREFIX))
}

/// Does any of our branches in the Vias carry this loop hash? Cheap in
/// the common case: one SIMD search of the Via lines that finds nothing.
pub fn is_loop(buf: &[u8], m: &Message, loop_h: u32) -> bool {
    let hdrs = m.via_lines.get(buf);
    let mut want = [0u8; 8];
    hex_into(u64::from(loop_h), &mut want);
    prefix_finder().find_iter(hdrs).any(|at| {
        let tail = at + BRANCH_PREFIX.len() + 16;
        hdrs.get(tail..tail + 8) == Some(&want[..])
    })
}

/// Is this Via branch one of ours?
pub fn is_ours(branch: &[u8]) -> bool {
    branch.len() == BRANCH_LEN && branch.starts_with(BRANCH_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_and_separated() {
        // Fixed value: a change here moves every user to another shard.
        assert_eq!(
            hash_bytes(b"alice@example.net"),
            hash_bytes(b"alice@example.net")
        );
        assert_ne!(hash_bytes(b"ab"), hash_bytes(b"a"));
        let mut a = StableHash::default();
        a.bytes(b"ab");
        a.bytes(b"c");
        let mut b = StableHash::default();
        b.bytes(b"a");
        b.bytes(b"bc");
        assert_ne!(a.finish(), b.finish());
    }

    #[test]
    fn hex_formatting() {
        let mut o = [0u8; 8];
        hex_into(0xdead_beef, &mut o);
        assert_eq!(&o, b"deadbeef");
    }
}
