//! Sans-IO SIP: everything that reads or writes SIP bytes, nothing that
//! touches a socket, a clock or a thread.
//!
//! - [`scan`]: one pass over a datagram, offsets of what routing needs;
//! - [`uri`], [`via`], [`params`]: small grammar helpers over those offsets;
//! - [`feature_tag`]: the CPM enabler usage indication (CPM ICSI);
//! - [`hash`]: the stable routing hash;
//! - [`branch`]: RFC 3261 §16.11 keyed stateless branch, loop detection;
//! - [`rewrite`]: forwarded requests and responses into an output buffer;
//! - [`reply`]: stateless answers (400, 403, 482, 483, ...);
//! - [`sdp`]: RFC 8866 parser that keeps the original bytes, RFC 3264
//!   stream refusal (port 0);
//! - [`media`]: media-stream policy (seed 5.2.3.7): allowed media types,
//!   protocols, MSRP accept-types, max streams and file size, and the check
//!   of an answer against the offer;
//! - [`transaction`]: RFC 3261 §17 client and server transactions over UDP
//!   (with RFC 6026's Accepted state) as sans-IO state machines in a
//!   bounded table;
//! - [`dialog`]: RFC 3261 §12 dialogs (UAC and UAS) and the in-dialog
//!   requests they write, in a bounded table;
//! - [`contact`]: what a registrar reads from a REGISTER (RFC 3261 §10.3,
//!   RFC 5626): Contact bindings, Expires, outbound indications;
//! - [`reginfo`]: RFC 3680 registration information
//!   (`application/reginfo+xml`), written and read;
//! - [`digest`]: HTTP Digest authentication for SIP (RFC 7616, RFC 8760):
//!   credentials, challenges, keyed nonces, nonce-count replay protection;
//! - [`flow`]: flow tokens naming a client's connection in what the edge
//!   writes (RFC 5626 §5.2), keyed so they cannot be forged;
//! - [`stream`]: SIP over TCP/TLS: message framing by Content-Length and
//!   the CRLF keep-alives (RFC 3261 §18.3, RFC 5626 §4.4.1);
//! - [`xml`]: XML character references for the small XML readers.

pub mod branch;
pub mod contact;
pub mod dialog;
pub mod digest;
pub mod feature_tag;
pub mod flow;
pub mod hash;
pub mod media;
pub mod number;
pub mod params;
pub mod reginfo;
pub mod reply;
pub mod rewrite;
pub mod scan;
pub mod sdp;
pub mod stream;
pub mod transaction;
pub mod uri;
pub mod via;
pub mod xml;

/// A byte range `[start, end)` into the datagram being handled.
///
/// Offsets are `u32` so the scan result stays small; datagrams are bounded
/// far below 4 GiB by the io layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    #[inline]
    pub fn new(start: usize, end: usize) -> Span {
        debug_assert!(start <= end);
        Span {
            start: start as u32,
            end: end as u32,
        }
    }
    #[inline]
    pub fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(self.start as usize..self.end as usize)
            .unwrap_or(&[])
    }
    #[inline]
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
    /// A sub-span given offsets relative to this span's start.
    #[inline]
    pub fn sub(&self, from: usize, to: usize) -> Span {
        debug_assert!(from <= to && to <= self.len());
        Span::new(self.start as usize + from, self.start as usize + to)
    }
}

/// Linear whitespace inside a header value (folding already joined in place:
/// CR and LF count as whitespace so folded values parse like unfolded ones).
#[inline]
pub(crate) fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// The first index at or after `i` in `s` that is not LWS (`s.len()` if none).
#[inline]
pub(crate) fn skip_lws(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && is_lws(s[i]) {
        i += 1;
    }
    i
}

/// The first 8 bytes of `s` as a little-endian word (`s` holds at least 8).
#[inline]
pub(crate) fn le_word(s: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&s[..8]);
    u64::from_le_bytes(w)
}

// Byte searches on the fast path run over short haystacks (a header line,
// a URI, a name: ~10-100 bytes), where memchr's run-time CPU dispatch (an
// indirect call per search) is a good part of the cost. SSE2 is part of the
// x86_64 baseline, so its searchers are called directly there and can be
// inlined (callgrind: the INVITE 13,653 -> 12,660 instructions, the 200 OK
// 8,056 -> 7,425, with the header walk's line ends and colons).

/// The first of two bytes in `s`: the SSE2 searcher called directly, as
/// [`find_byte`] does for one byte (no run-time dispatch on short spans).
#[inline]
pub(crate) fn find_byte2(a: u8, b: u8, s: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if let Some(two) = memchr::arch::x86_64::sse2::memchr::Two::new(a, b) {
        return two.find(s);
    }
    memchr::memchr2(a, b, s)
}

/// The first of three bytes in `s` (see [`find_byte2`]).
#[inline]
pub(crate) fn find_byte3(a: u8, b: u8, c: u8, s: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if let Some(three) = memchr::arch::x86_64::sse2::memchr::Three::new(a, b, c) {
        return three.find(s);
    }
    memchr::memchr3(a, b, c, s)
}

/// The first `b` in `s`.
#[inline]
pub(crate) fn find_byte(b: u8, s: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if let Some(one) = memchr::arch::x86_64::sse2::memchr::One::new(b) {
        return one.find(s);
    }
    memchr::memchr(b, s)
}

/// The last `b` in `s`.
#[inline]
pub(crate) fn rfind_byte(b: u8, s: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if let Some(one) = memchr::arch::x86_64::sse2::memchr::One::new(b) {
        return one.rfind(s);
    }
    memchr::memrchr(b, s)
}

/// Trim LWS from both ends of `span`.
pub(crate) fn trim(buf: &[u8], span: Span) -> Span {
    let s = span.get(buf);
    let a = s.iter().position(|b| !is_lws(*b)).unwrap_or(s.len());
    let b = s.iter().rposition(|b| !is_lws(*b)).map_or(a, |p| p + 1);
    span.sub(a, b.max(a))
}

/// RFC 3261 `token` characters, one table load per byte: header names,
/// methods and Via protocols are checked byte by byte on every message.
static TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        b += 1;
    }
    t
};

/// RFC 3261 `token` characters.
#[inline]
pub(crate) fn is_token(b: u8) -> bool {
    TOKEN[b as usize]
}

/// Every concatenation of 0 to `max_len` of `pieces`: the exhaustive inputs
/// on which the tests hold a fast routine to its plain definition.
#[cfg(test)]
pub(crate) fn concatenations(pieces: &[&[u8]], max_len: usize) -> Vec<Vec<u8>> {
    let mut all = vec![Vec::new()];
    let mut frontier: Vec<Vec<u8>> = vec![Vec::new()];
    for _ in 0..max_len {
        frontier = frontier
            .iter()
            .flat_map(|t| {
                pieces.iter().map(move |p| {
                    let mut n = t.clone();
                    n.extend_from_slice(p);
                    n
                })
            })
            .collect();
        all.extend(frontier.iter().cloned());
    }
    all
}

/// Every string of 0 to `max_len` bytes over `alphabet`.
#[cfg(test)]
pub(crate) fn short_strings(alphabet: &[u8], max_len: usize) -> Vec<Vec<u8>> {
    let pieces: Vec<&[u8]> = alphabet.chunks(1).collect();
    concatenations(&pieces, max_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct searchers agree with a plain scan at every length (both
    /// sides of the 16-byte vector width), every needle position, and with
    /// no needle at all.
    #[test]
    fn byte_searches_match_a_plain_scan() {
        for len in 0..80usize {
            for at in (0..len).chain([usize::MAX]) {
                for (needle, other) in [(b':', b'\n'), (b'\r', b';'), (b'\n', b'\r')] {
                    let mut s: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
                    if at < len {
                        s[at] = needle;
                        // A second hit later and an unrelated byte earlier.
                        if at + 3 < len {
                            s[at + 3] = needle;
                        }
                        if at > 0 {
                            s[at - 1] = other;
                        }
                    }
                    assert_eq!(
                        find_byte(needle, &s),
                        s.iter().position(|b| *b == needle),
                        "{len} {at}"
                    );
                    assert_eq!(
                        rfind_byte(needle, &s),
                        s.iter().rposition(|b| *b == needle),
                        "{len} {at}"
                    );
                    assert_eq!(
                        find_byte2(b'\r', b'\n', &s),
                        s.iter().position(|b| *b == b'\r' || *b == b'\n'),
                        "{len} {at}"
                    );
                    assert_eq!(
                        find_byte3(b'x', needle, other, &s),
                        s.iter().position(|b| [b'x', needle, other].contains(b)),
                        "{len} {at}"
                    );
                }
            }
        }
    }
}
