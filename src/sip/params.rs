//! Parameters (`;name=value`) and comma-separated header values, the two
//! list shapes of RFC 3261 §7.3.1, over spans of the datagram.
//!
//! Quoted strings and `<...>` URIs are opaque: a `;` or `,` inside them does
//! not split. Nothing here allocates.

use super::{find_byte, find_byte2, find_byte3, is_lws, trim, Span};

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
