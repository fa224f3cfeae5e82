//! A stable, unkeyed 64-bit hash for routing (rendezvous weights, group
//! slots, loop detection, reply tags) and the byte helpers it needs.
//!
//! Stable across processes and machines, which matters because several
//! edges must agree: edges that disagree on it (different hash versions)
//! pick different shards for a user and see different loop hashes. Not a
//! MAC: what an attacker must not forge is keyed ([`super::branch::BranchKey`]).

/// Streaming stable 64-bit hash, eight bytes at a time.
///
/// A multiply covers a word rather than a byte (a byte-at-a-time hash is a
/// dependency chain of one multiply per byte); `bytes` hashes a field
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

    /// The bytes of `s`, exactly as `byte` would take them one by one, but
    /// a word at a time, shifted into place behind the pending bytes
    /// (`byte` is a dependent shift-or and compare per byte); with `LOWER`,
    /// each byte ASCII-lowercased first.
    #[inline]
    pub fn stream<const LOWER: bool>(&mut self, s: &[u8]) {
        let map = |w: u64| if LOWER { lower_word(w) } else { w };
        let shift = 8 * self.n;
        let mut words = s.chunks_exact(8);
        for c in &mut words {
            let w = map(super::le_word(c));
            if shift == 0 {
                self.h = mix(self.h, w);
            } else {
                self.h = mix(self.h, self.word | w << shift);
                self.word = w >> (64 - shift);
            }
        }
        let tail = words.remainder();
        if tail.is_empty() {
            return;
        }
        let w = map(load_short(tail));
        let n = self.n + tail.len() as u32;
        let joined = self.word | w << shift;
        if n >= 8 {
            // `shift > 0` here: a tail is shorter than a word.
            self.h = mix(self.h, joined);
            self.word = w >> (64 - shift);
            self.n = n - 8;
        } else {
            self.word = joined;
            self.n = n;
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
        if !tail.is_empty() {
            w |= load_short(tail);
        }
        self.h = mix(h, w);
    }

    #[inline]
    pub fn finish(mut self) -> u64 {
        self.flush();
        fmix64(self.h)
    }
}

/// The 1 to 7 bytes of `s` as a little-endian word, zero above them:
/// two overlapping loads instead of a loop (overlapping bytes are equal).
#[inline]
fn load_short(s: &[u8]) -> u64 {
    let n = s.len();
    debug_assert!(n > 0 && n < 8);
    if n >= 4 {
        let lo = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        let hi = u32::from_le_bytes([s[n - 4], s[n - 3], s[n - 2], s[n - 1]]);
        u64::from(lo) | u64::from(hi) << (8 * (n - 4))
    } else {
        u64::from(s[0])
            | u64::from(s[n / 2]) << (8 * (n / 2))
            | u64::from(s[n - 1]) << (8 * (n - 1))
    }
}

/// `u8::to_ascii_lowercase` on each byte of a word: `A..=Z` (and only
/// them) gain 0x20. The additions stay within each byte (at most
/// 0x7f + 0x3f), so no carry crosses into the next one.
#[inline]
pub fn lower_word(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let low7 = w & (0x7f * ONES);
    let above_z = low7 + (0x7f - u64::from(b'Z')) * ONES;
    let from_a = low7 + (0x80 - u64::from(b'A')) * ONES;
    let upper = (from_a ^ above_z) & !w & (0x80 * ONES);
    w | (upper >> 2)
}

/// murmur3's 64-bit finaliser: every input bit reaches every output bit.
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
pub fn hex_into(v: u64, out: &mut [u8]) {
    let n = out.len();
    for (i, o) in out.iter_mut().enumerate() {
        *o = HEX[((v >> (4 * (n - 1 - i))) & 0xf) as usize];
    }
}

/// A `HashMap` hasher keyed by a secret: SipHash-1-3 under `key`, for
/// tables whose keys a peer chooses (transaction branches, Call-IDs), where
/// an unkeyed hash would let it pile entries into one probe chain.
#[derive(Clone)]
pub struct KeyedBuild(pub [u64; 2]);

impl std::hash::BuildHasher for KeyedBuild {
    type Hasher = siphasher::sip::SipHasher13;
    fn build_hasher(&self) -> siphasher::sip::SipHasher13 {
        siphasher::sip::SipHasher13::new_with_keys(self.0[0], self.0[1])
    }
}

/// A key of this process for branches, tags, Call-IDs and nonces, from the
/// OS's random seed (`RandomState`): unguessable, and different per run.
pub fn random_key() -> [u64; 2] {
    use std::hash::{BuildHasher, Hasher};
    let mut k = [0u64; 2];
    for (i, v) in k.iter_mut().enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(u64::from(std::process::id()) ^ i as u64);
        *v = h.finish();
    }
    k
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

    /// `stream` is `byte` per byte, whatever the bytes pending before it,
    /// and its lowercasing is `to_ascii_lowercase`'s.
    #[test]
    fn streaming_words_equals_streaming_bytes() {
        let text: Vec<u8> = (0..=255u8)
            .chain(b"Alice@Example.NET".iter().copied())
            .collect();
        for pending in 0..9 {
            for len in 0..40 {
                for at in [0, 3, 60, 120, 200, 250] {
                    let s = &text[at..(at + len).min(text.len())];
                    let mut a = StableHash::default();
                    let mut b = StableHash::default();
                    let mut c = StableHash::default();
                    let mut d = StableHash::default();
                    for i in 0..pending {
                        for h in [&mut a, &mut b, &mut c, &mut d] {
                            h.byte(i);
                        }
                    }
                    a.stream::<false>(s);
                    s.iter().for_each(|x| b.byte(*x));
                    c.stream::<true>(s);
                    s.iter().for_each(|x| d.byte(x.to_ascii_lowercase()));
                    for h in [&mut a, &mut b, &mut c, &mut d] {
                        h.byte(0xff);
                    }
                    assert_eq!(a.finish(), b.finish(), "{pending} {len} {at}");
                    assert_eq!(c.finish(), d.finish(), "{pending} {len} {at}");
                }
            }
        }
        // `bytes`: its words, then the tail and its length in one word.
        for len in 0..40 {
            let s = &text[200..200 + len];
            let mut h = SEED;
            let mut words = s.chunks_exact(8);
            for w in &mut words {
                h = mix(h, u64::from_le_bytes(w.try_into().unwrap()));
            }
            let mut w = u64::from(0x80 | words.remainder().len() as u8) << 56;
            for (i, b) in words.remainder().iter().enumerate() {
                w |= u64::from(*b) << (8 * i);
            }
            let mut a = StableHash::default();
            a.bytes(s);
            assert_eq!(a.finish(), fmix64(mix(h, w)), "{len}");
        }
        for x in 0..=255u8 {
            for k in 0..8 {
                let w = u64::from(x) << (8 * k) | 0x4142_5a5b_6061_7a7b & !(0xff << (8 * k));
                let want: Vec<u8> = w.to_le_bytes().iter().map(u8::to_ascii_lowercase).collect();
                assert_eq!(lower_word(w).to_le_bytes().to_vec(), want, "{w:x}");
            }
        }
    }

    #[test]
    fn hex_formatting() {
        let mut o = [0u8; 8];
        hex_into(0xdead_beef, &mut o);
        assert_eq!(&o, b"deadbeef");
    }
}
