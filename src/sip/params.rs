//! Parameters (`;name=value`) and comma-separated header values, the two
//! list shapes of RFC 3261 §7.3.1, over spans of the datagram.
//!
//! Quoted strings and `<...>` URIs are opaque: a `;` or `,` inside them does
//! not split. Nothing here allocates.

use super::{find_byte, find_byte2, find_byte3, is_lws, skip_lws, trim, Span};

/// One `name[=value]` parameter; `value` is `None` for a bare flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Param {
    pub name: Span,
    pub value: Option<Span>,
    /// The whole `;name=value` text including the leading `;`.
    pub whole: Span,
}

/// Iterates the parameters of `span`, which starts at or before the first `;`.
pub struct Params<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

/// Parameters in `span`: everything after the first `;` that is not inside
/// quotes or angle brackets.
pub fn params(buf: &[u8], span: Span) -> Params<'_> {
    let end = (span.end as usize).min(buf.len());
    let start = (span.start as usize).min(end);
    let pos = find_unquoted(buf, start, end, b';').unwrap_or(end);
    Params { buf, pos, end }
}

impl Iterator for Params<'_> {
    type Item = Param;
    fn next(&mut self) -> Option<Param> {
        while self.pos < self.end {
            debug_assert_eq!(self.buf[self.pos], b';');
            let start = self.pos;
            let next = find_unquoted(self.buf, start + 1, self.end, b';').unwrap_or(self.end);
            self.pos = next;
            let body = trim(self.buf, Span::new(start + 1, next));
            if body.is_empty() {
                continue;
            }
            let text = body.get(self.buf);
            let param = match find_byte(b'=', text) {
                Some(eq) => Param {
                    name: trim(self.buf, body.sub(0, eq)),
                    value: Some(trim(self.buf, body.sub(eq + 1, body.len()))),
                    whole: Span::new(start, body.end as usize),
                },
                None => Param {
                    name: body,
                    value: None,
                    whole: Span::new(start, body.end as usize),
                },
            };
            return Some(param);
        }
        None
    }
}

/// The parameter named `name` (case-insensitive) in `span`.
pub fn find_param(buf: &[u8], span: Span, name: &[u8]) -> Option<Param> {
    params(buf, span).find(|p| p.name.get(buf).eq_ignore_ascii_case(name))
}

/// Below this many bytes [`find_unquoted`] steps byte by byte.
const SHORT: usize = 32;

/// Index of the first `needle` in `buf[from..end]` outside quotes and `<>`.
///
/// Jumps between the interesting bytes with a vector search instead of
/// stepping over every byte: header values are mostly plain text.
#[inline]
pub fn find_unquoted(buf: &[u8], from: usize, end: usize, needle: u8) -> Option<usize> {
    let end = end.min(buf.len());
    // The usual answers cost no call: a name-addr's `<` (or a list's
    // needle) as the first byte, and no needle anywhere (one Via per line,
    // one PAI value), where quotes cannot matter.
    let rest = buf.get(from..end)?;
    match rest.first() {
        None => None,
        Some(b) if *b == needle => Some(from),
        Some(_) => {
            find_byte(needle, rest)?;
            find_unquoted_walk(buf, from, end, needle)
        }
    }
}

/// [`find_unquoted`] the long way: from quote to quote and `<` to `>`.
fn find_unquoted_walk(buf: &[u8], from: usize, end: usize, needle: u8) -> Option<usize> {
    let mut i = from;
    while i < end {
        let rest = &buf[i..end];
        // Most parameters are a few bytes long: a plain loop beats the
        // set-up of a vector search there (callgrind: ~40 against ~110
        // instructions on a 16-byte `;branch=` value). A name-addr's `<`
        // or a list's `;` is usually the very first byte.
        let rel = if rest.len() <= SHORT || matches!(rest[0], b'"' | b'<') || rest[0] == needle {
            rest.iter()
                .position(|&b| b == needle || b == b'"' || b == b'<')?
        } else {
            find_byte3(needle, b'"', b'<', rest)?
        };
        let at = i + rel;
        let b = buf[at];
        if b == needle {
            return Some(at);
        }
        if b == b'"' {
            // Skip the quoted string, honouring `\"` escapes.
            let mut j = at + 1;
            loop {
                let q = j + find_byte2(b'"', b'\\', &buf[j..end])?;
                if buf[q] == b'\\' {
                    j = q + 2;
                    if j >= end {
                        return None;
                    }
                } else {
                    i = q + 1;
                    break;
                }
            }
        } else {
            // `<`: a URI, opaque up to `>`.
            i = at + 1 + find_byte(b'>', &buf[at + 1..end])? + 1;
        }
    }
    None
}

/// The comma-separated values of a header value span, trimmed.
pub struct Values<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

pub fn values(buf: &[u8], span: Span) -> Values<'_> {
    let end = (span.end as usize).min(buf.len());
    Values {
        buf,
        pos: (span.start as usize).min(end),
        end,
    }
}

impl Iterator for Values<'_> {
    type Item = Span;
    fn next(&mut self) -> Option<Span> {
        while self.pos < self.end {
            let start = self.pos;
            let stop = find_unquoted(self.buf, start, self.end, b',').unwrap_or(self.end);
            self.pos = stop + 1;
            let v = trim(self.buf, Span::new(start, stop));
            if !v.is_empty() {
                return Some(v);
            }
        }
        None
    }
}

/// Start of the value following the one ending at `end` in the same header
/// (the byte after the comma and its LWS), if any.
pub fn next_value_start(buf: &[u8], end: usize, limit: usize) -> Option<usize> {
    let mut i = end;
    while i < limit && is_lws(buf[i]) {
        i += 1;
    }
    if i < limit && buf[i] == b',' {
        i += 1;
        while i < limit && is_lws(buf[i]) {
            i += 1;
        }
        return Some(i);
    }
    None
}

// ------------------------------------------------ RFC 3261 §25.1 classes

/// `token` (method, header and parameter names, tags, branches).
pub(crate) const TOKEN: u16 = 1;
/// `word` (Call-ID): token characters and `( ) < > : \ " / [ ] ? { }`.
pub(crate) const WORD: u16 = 1 << 1;
/// `unreserved` / `user-unreserved` (`user` of a SIP URI), `%` aside.
pub(crate) const USER: u16 = 1 << 2;
/// `unreserved` / `& = + $ ,` (`password`), `%` aside.
pub(crate) const PASSWORD: u16 = 1 << 3;
/// `alphanum / "-" / "."`: hostnames and IPv4 literals.
pub(crate) const HOST: u16 = 1 << 4;
/// `paramchar` (URI parameters), `%` aside.
pub(crate) const PARAMCHAR: u16 = 1 << 5;
/// `hnv-unreserved / unreserved` (URI headers), `%` aside.
pub(crate) const HNV: u16 = 1 << 6;
/// `uric` (the rest of an `absoluteURI`), `%` aside.
pub(crate) const URIC: u16 = 1 << 7;
/// `qdtext`: LWS (folding is checked by the header walk), `!`, `#`-`[`,
/// `]`-`~` and every byte from 0x80 (UTF-8 is not decoded).
pub(crate) const QDTEXT: u16 = 1 << 8;
/// The digits of a tel URI's number (RFC 3966 `phonedigit-hex`, `+`).
pub(crate) const TEL: u16 = 1 << 9;
/// `DIGIT`.
pub(crate) const DIGIT: u16 = 1 << 10;
/// `let-dig` and `.`: an RFC 6050 service identifier after `urn:urn-7:`.
pub(crate) const SERVICE: u16 = 1 << 11;
/// A Via parameter value: token characters and `:` (`received` holds an
/// IPv6 address without brackets, RFC 3261 `via-received`).
pub(crate) const VIA_VALUE: u16 = 1 << 12;

const fn in_set(c: u8, set: &[u8]) -> bool {
    let mut i = 0;
    while i < set.len() {
        if set[i] == c {
            return true;
        }
        i += 1;
    }
    false
}

/// Every byte's classes: one table load answers any of them.
static CLASS: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let alnum = c.is_ascii_alphanumeric();
        let unreserved = alnum || in_set(c, b"-_.!~*'()");
        let mut k = 0;
        if alnum || in_set(c, b"-.!%*_+`'~") {
            k |= TOKEN;
        }
        if alnum || in_set(c, b"-.!%*_+`'~()<>:\\\"/[]?{}") {
            k |= WORD;
        }
        if unreserved || in_set(c, b"&=+$,;?/") {
            k |= USER;
        }
        if unreserved || in_set(c, b"&=+$,") {
            k |= PASSWORD;
        }
        if alnum || c == b'-' || c == b'.' {
            k |= HOST;
        }
        if unreserved || in_set(c, b"[]/:&+$") {
            k |= PARAMCHAR;
        }
        if unreserved || in_set(c, b"[]/?:+$") {
            k |= HNV;
        }
        if unreserved || in_set(c, b";/?:@&=+$,") {
            k |= URIC;
        }
        if matches!(c, b' ' | b'\t' | b'\r' | b'\n' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..) {
            k |= QDTEXT;
        }
        if c.is_ascii_hexdigit() || in_set(c, b"*#+-.()") {
            k |= TEL;
        }
        if c.is_ascii_digit() {
            k |= DIGIT;
        }
        if alnum || c == b'-' || c == b'.' {
            k |= SERVICE;
        }
        if k & TOKEN != 0 || c == b':' {
            k |= VIA_VALUE;
        }
        t[b] = k;
        b += 1;
    }
    t
};

/// Is `b` of class `class` (one of the constants above)?
#[inline(always)]
pub(crate) fn is(b: u8, class: u16) -> bool {
    CLASS[usize::from(b)] & class != 0
}

/// The end of the run of `class` bytes in `s` from `i`.
///
/// Four bytes a step, each one table load and test, with no bounds check
/// inside the step: an 8-byte AND of table loads cost more, as most runs
/// (names, ports, users, hosts) end inside their first eight bytes.
#[inline(always)]
pub(crate) fn run(s: &[u8], i: usize, class: u16) -> usize {
    let t = s.get(i..).unwrap_or(&[]);
    let mut k = 0;
    while let Some(w) = t.get(k..k + 4) {
        if !is(w[0], class) {
            return i + k;
        }
        if !is(w[1], class) {
            return i + k + 1;
        }
        if !is(w[2], class) {
            return i + k + 2;
        }
        if !is(w[3], class) {
            return i + k + 3;
        }
        k += 4;
    }
    while k < t.len() && is(t[k], class) {
        k += 1;
    }
    i + k
}

/// [`run`] where `%` HEX HEX (`escaped`) also continues the run; `None`
/// at a `%` that no two hex digits follow.
#[inline(always)]
pub(crate) fn run_escaped(s: &[u8], i: usize, class: u16) -> Option<usize> {
    let i = run(s, i, class);
    if s.get(i) == Some(&b'%') {
        escaped_run(s, i, class)
    } else {
        Some(i)
    }
}

/// [`run_escaped`] from an escape on: escapes are rare in what is routed.
#[cold]
#[inline(never)]
fn escaped_run(s: &[u8], mut i: usize, class: u16) -> Option<usize> {
    while s.get(i) == Some(&b'%') {
        let hex = |k: usize| s.get(k).is_some_and(u8::is_ascii_hexdigit);
        if !(hex(i + 1) && hex(i + 2)) {
            return None;
        }
        i = run(s, i + 3, class);
    }
    Some(i)
}

/// The end (past the closing quote) of the `quoted-string` whose opening
/// quote is `s[i]`: `qdtext` and `quoted-pair`, where the escaped octet is
/// any of 0x00-0x7F but CR and LF. `None` when it is unterminated or holds
/// a byte neither allows (a bare control character, an escaped CR).
pub(crate) fn quoted_end(s: &[u8], i: usize) -> Option<usize> {
    debug_assert_eq!(s.get(i), Some(&b'"'));
    let mut j = i + 1;
    loop {
        j = run(s, j, QDTEXT);
        match *s.get(j)? {
            b'"' => return Some(j + 1),
            b'\\' => {
                let e = *s.get(j + 1)?;
                if e > 0x7f || e == b'\r' || e == b'\n' {
                    return None;
                }
                j += 2;
            }
            _ => return None,
        }
    }
}

/// Is `s` an IPv6 address (the inside of an `IPv6reference`)?
pub(crate) fn is_ipv6(s: &[u8]) -> bool {
    std::str::from_utf8(s).is_ok_and(|t| t.parse::<std::net::Ipv6Addr>().is_ok())
}

/// The end of a `gen-value` (a run of `class`: token, or host; an IPv6
/// reference or a quoted string) starting at `s[i]`; `None` when there
/// is none.
#[inline]
fn gen_value_end(s: &[u8], i: usize, class: u16) -> Option<usize> {
    match *s.get(i)? {
        b'"' => quoted_end(s, i),
        b'[' => {
            let close = i + find_byte(b']', &s[i..])?;
            is_ipv6(&s[i + 1..close]).then_some(close + 1)
        }
        _ => {
            let e = run(s, i, class);
            (e > i).then_some(e)
        }
    }
}

/// Walks `*( SEMI generic-param )` over `s[i..]`, which it must cover
/// exactly (SWS around `;` and `=` allowed): `each(name, value)` for each
/// parameter, as offsets into `s`, false to refuse it. False when the
/// text is not such a list: an empty parameter (`;;`, a trailing `;`), a
/// name that is not a token, an `=` without a value. Unquoted values are
/// runs of `value_class` (TOKEN, or VIA_VALUE in a Via).
#[inline]
pub(crate) fn generic_params(
    s: &[u8],
    mut i: usize,
    value_class: u16,
    mut each: impl FnMut((usize, usize), Option<(usize, usize)>) -> bool,
) -> bool {
    loop {
        i = skip_lws(s, i);
        let Some(&b) = s.get(i) else {
            return true;
        };
        if b != b';' {
            return false;
        }
        let n0 = skip_lws(s, i + 1);
        let n1 = run(s, n0, TOKEN);
        if n1 == n0 {
            return false;
        }
        i = skip_lws(s, n1);
        let value = if s.get(i) == Some(&b'=') {
            let v0 = skip_lws(s, i + 1);
            let Some(v1) = gen_value_end(s, v0, value_class) else {
                return false;
            };
            i = v1;
            Some((v0, v1))
        } else {
            i = n1;
            None
        };
        if !each((n0, n1), value) {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(s: &[u8]) -> Span {
        Span::new(0, s.len())
    }

    #[test]
    fn params_respect_quotes_and_flags() {
        let s = b"<sip:a@b;lr>;x=\"a;b\";lr ; rport;branch=z9hG4bK1";
        let ps: Vec<_> = params(s, all(s)).collect();
        let names: Vec<&[u8]> = ps.iter().map(|p| p.name.get(s)).collect();
        assert_eq!(names, vec![&b"x"[..], b"lr", b"rport", b"branch"]);
        assert_eq!(ps[0].value.unwrap().get(s), b"\"a;b\"");
        assert!(ps[2].value.is_none());
        assert_eq!(
            find_param(s, all(s), b"BRANCH")
                .unwrap()
                .value
                .unwrap()
                .get(s),
            b"z9hG4bK1"
        );
    }

    /// The shortcuts (first byte, no needle at all) answer as the walk.
    #[test]
    fn find_unquoted_shortcuts_agree_with_the_walk() {
        let all = crate::sip::short_strings(b"a,\"<>\\", 5);
        for s in &all {
            for from in 0..=s.len() + 1 {
                for end in [s.len(), s.len().saturating_sub(1), s.len() + 2] {
                    for needle in [b',', b'<', b'"'] {
                        assert_eq!(
                            find_unquoted(s, from, end, needle),
                            find_unquoted_walk(s, from, end.min(s.len()), needle),
                            "{s:?} {from} {end} {needle}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn values_split_outside_angles() {
        let s = b"<sip:a,b@x;lr>, \"q,uote\" <sip:c>,\r\n <sip:d>";
        let vs: Vec<&[u8]> = values(s, all(s)).map(|v| v.get(s)).collect();
        assert_eq!(
            vs,
            vec![&b"<sip:a,b@x;lr>"[..], b"\"q,uote\" <sip:c>", b"<sip:d>"]
        );
    }
}
