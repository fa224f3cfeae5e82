//! The CPM enabler usage indication: a CPM ICSI
//! (`urn:urn-7:3gpp-service.ims.icsi.oma.cpm.<service>`) in Accept-Contact or
//! Contact (as a `+g.3gpp.icsi-ref` feature-tag value, RFC 3840/3841, where
//! `:` is usually escaped as `%3A`) or as a P-Preferred-Service /
//! P-Asserted-Service value (RFC 6050, plain form).
//!
//! Each of those header values is read structurally: the `+g.3gpp.icsi-ref`
//! parameter by its `;`, then each element of its (quoted, comma-separated)
//! list must start with the ICSI prefix (`urn:urn-7:` plain or `%3A`
//! escaped), the invariant middle and a known service name. Nothing is
//! searched for, so a header costs about what its length costs to skim.

/// One bit per CPM service of the ICSI.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpmServices(pub u8);

impl CpmServices {
    pub const SESSION: u8 = 1;
    pub const MSG: u8 = 2;
    pub const LARGEMSG: u8 = 4;
    pub const DEFERRED: u8 = 8;
    pub const FILETRANSFER: u8 = 16;
    pub const SYSTEMMSG: u8 = 32;

    pub fn any(self) -> bool {
        self.0 != 0
    }
}

/// Each CPM service's bit and name (the ICSI's last label), in bit order:
/// what the admin APIs show and the third-party REGISTER writes.
pub const SERVICE_NAMES: [(u8, &str); 6] = [
    (CpmServices::SESSION, "session"),
    (CpmServices::MSG, "msg"),
    (CpmServices::LARGEMSG, "largemsg"),
    (CpmServices::DEFERRED, "deferred"),
    (CpmServices::FILETRANSFER, "filetransfer"),
    (CpmServices::SYSTEMMSG, "systemmsg"),
];

const MIDDLE: &[u8] = b"3gpp-service.ims.icsi.oma.cpm.";
const SERVICES: [(&[u8], u8); 6] = [
    (b"session", CpmServices::SESSION),
    (b"msg", CpmServices::MSG),
    (b"largemsg", CpmServices::LARGEMSG),
    (b"deferred", CpmServices::DEFERRED),
    (b"filetransfer", CpmServices::FILETRANSFER),
    (b"systemmsg", CpmServices::SYSTEMMSG),
];

use super::find_byte2;
use super::params::{quoted_end, run, SERVICE};
use super::{find_byte, le_word, skip_lws};

/// A fixed text of 8 to 32 bytes (`W` words) compared a word at a time:
/// byte-wise ASCII case folding cost more than the rest of a feature tag's
/// reading. The last word overlaps the one before it when the length is
/// not a multiple of 8.
struct Pat<const W: usize> {
    len: usize,
    /// 0x20 at each letter whose case is ignored (OR 0x20 folds exactly
    /// the case of a letter; any other byte is compared as is),
    fold: [u64; W],
    /// and the text with those letters lowercase.
    want: [u64; W],
}

const fn pat<const W: usize>(text: &[u8], ignore_case: bool) -> Pat<W> {
    assert!(text.len() >= 8 && text.len().div_ceil(8) == W);
    let (mut fold, mut want) = ([0u64; W], [0u64; W]);
    let mut k = 0;
    while k < W {
        let off = word_offset(text.len(), W, k);
        let mut i = 0;
        while i < 8 {
            let b = text[off + i];
            if ignore_case && b.is_ascii_alphabetic() {
                fold[k] |= 0x20 << (8 * i);
            }
            want[k] |= ((if ignore_case {
                b.to_ascii_lowercase()
            } else {
                b
            }) as u64)
                << (8 * i);
            i += 1;
        }
        k += 1;
    }
    Pat {
        len: text.len(),
        fold,
        want,
    }
}

const fn word_offset(len: usize, words: usize, k: usize) -> usize {
    if k + 1 == words {
        len - 8
    } else {
        8 * k
    }
}

impl<const W: usize> Pat<W> {
    /// Does `v` start with this text?
    #[inline(always)]
    fn starts(&self, v: &[u8]) -> bool {
        if v.len() < self.len {
            return false;
        }
        let mut diff = 0;
        for k in 0..W {
            let off = word_offset(self.len, W, k);
            diff |= (le_word(&v[off..]) | self.fold[k]) ^ self.want[k];
        }
        diff == 0
    }
}

const TAG: Pat<2> = pat(b"+g.3gpp.icsi-ref", true);
const PLAIN: Pat<2> = pat(b"urn:urn-7:", true);
const ESCAPED: Pat<2> = pat(b"urn%3Aurn-7%3A", true);
const MIDDLE_PAT: Pat<4> = pat(MIDDLE, false);

/// A byte that may continue a service name.
#[inline]
fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

/// The service bit of one list element that starts at `v[0]`: a CPM ICSI
/// (`urn:urn-7:` or `urn%3Aurn-7%3A`, any case, then the invariant middle
/// and a known service name), else 0; and the length of the ICSI (0 when
/// there is none).
fn service_of(v: &[u8]) -> (u8, usize) {
    let prefix = if PLAIN.starts(v) {
        PLAIN.len
    } else if ESCAPED.starts(v) {
        ESCAPED.len
    } else {
        return (0, 0);
    };
    let rest = &v[prefix..];
    if !MIDDLE_PAT.starts(rest) {
        return (0, 0);
    }
    let rest = &rest[MIDDLE.len()..];
    // The name is the longest run of name bytes: a known name that the
    // text starts with and that no name byte follows. No two known names
    // share a first letter but `session`/`systemmsg`.
    let Some(first) = rest.first() else {
        return (0, 0);
    };
    SERVICES
        .iter()
        .filter(|(s, _)| s[0] == first.to_ascii_lowercase())
        .find(|(s, _)| letters_start(rest, s) && !rest.get(s.len()).is_some_and(|b| name_byte(*b)))
        .map_or((0, 0), |(s, bit)| (*bit, prefix + MIDDLE.len() + s.len()))
}

/// Does `v` start with `lower` (lowercase letters only) in any case? OR
/// 0x20 folds exactly the case of a letter, and words replace the byte
/// loop of `eq_ignore_ascii_case` (callgrind: ~130 instructions for
/// `session`). Longer than a word: two words, the second overlapping.
#[inline]
fn letters_start(v: &[u8], lower: &[u8]) -> bool {
    let n = lower.len();
    if v.len() < n {
        return false;
    }
    const FOLD: u64 = 0x2020_2020_2020_2020;
    let word4 = |s: &[u8], at: usize| u32::from_le_bytes([s[at], s[at + 1], s[at + 2], s[at + 3]]);
    match n {
        8.. => {
            le_word(v) | FOLD == le_word(lower)
                && le_word(&v[n - 8..]) | FOLD == le_word(&lower[n - 8..])
        }
        4..=7 => {
            word4(v, 0) | FOLD as u32 == word4(lower, 0)
                && word4(v, n - 4) | FOLD as u32 == word4(lower, n - 4)
        }
        _ => v.iter().zip(lower).all(|(a, b)| a | 0x20 == *b),
    }
}

/// Service bits of a comma-separated list of service identifiers starting
/// at `v[0]`: a quoted feature-tag value (`"a,b"`, ends at the closing
/// quote) or a bare list (ends at `;` for a parameter, else at the end).
///
/// The list's end is not searched for first: an element's comma and the
/// end are looked for together, past the ICSI just read (an ICSI holds no
/// `,`, `"` or `;`), so a one-element list costs no search over its text
/// (callgrind: two searches over a ~50-byte ICSI were ~150 instructions of
/// an INVITE). An ICSI that a `"` or `;` would have cut short cannot
/// match either way, as none of those bytes continues a service name.
///
/// Also returns how much of `v` is known to hold no `;` (0 when that is
/// not known), so that a parameter's caller need not search it again, and
/// for a quoted list where its closing quote (the first `"` past the
/// opening one) ends, if it has one.
fn service_list(v: &[u8], in_param: bool) -> (u8, usize, Option<usize>) {
    let quoted = v.first() == Some(&b'"');
    let body = &v[usize::from(quoted)..];
    // With nothing to end the list but the text, `,` stands in for the end.
    let end = if quoted {
        b'"'
    } else if in_param {
        b';'
    } else {
        b','
    };
    let mut bits = 0;
    let mut at = 0;
    // Searched for `;` or made of bytes that are not `;` (LWS, ICSIs,
    // commas): all of `body` up to the current element.
    let mut semi_free = in_param;
    loop {
        at = skip_lws(body, at);
        let (bit, len) = service_of(&body[at..]);
        bits |= bit;
        let from = at + len;
        let hit = find_byte2(b',', end, &body[from..]);
        // A quoted list's search skips bytes that may be `;`.
        semi_free &= !quoted || hit == Some(0);
        let close = quoted.then(|| hit.map(|c| from + c + 2)).flatten();
        match hit {
            Some(c) if body[from + c] == b',' => at = from + c + 1,
            // The closing quote that ends the list is not a `;`, the `;`
            // that ends a bare one is.
            Some(c) if semi_free => return (bits, from + c + 2 * usize::from(quoted), close),
            None if semi_free => return (bits, v.len(), None),
            _ => return (bits, 0, close),
        }
    }
}

/// CPM services named in one header value. With `feature_tag` (Contact,
/// Accept-Contact, RFC 3840/3841) only ICSIs in the value of a
/// `+g.3gpp.icsi-ref` parameter count, so a URN in a display name or in
/// another parameter is not a feature tag; without it (P-Preferred-Service,
/// P-Asserted-Service, RFC 6050) the value is itself a list of services.
/// Structural, with no search for the URN: the parameter is found by its
/// `;`, the ICSI must start each list element.
pub fn cpm_services(v: &[u8], feature_tag: bool) -> CpmServices {
    read(v, feature_tag).0
}

/// [`cpm_services`], `None` when what it reads is malformed: a
/// `+g.3gpp.icsi-ref` whose value is not one whole quoted string (RFC 3840
/// `feature-param`: `LDQUOT tag-value-list RDQUOT`), or a P-Preferred- /
/// P-Asserted-Service value that is not a list of RFC 6050 `Service-ID`s.
/// The rest of a Contact or Accept-Contact is not the edge's business
/// (RFC 3261 §16.3) and is not judged.
pub fn checked_cpm_services(v: &[u8], feature_tag: bool) -> Option<CpmServices> {
    let (bits, ok) = read(v, feature_tag);
    ok.then_some(bits)
}

fn read(v: &[u8], feature_tag: bool) -> (CpmServices, bool) {
    if !feature_tag {
        return (CpmServices(service_list(v, false).0), service_ids_ok(v));
    }
    let mut bits = 0;
    let mut ok = true;
    // A value that is only parameters (an Accept-Contact written without
    // its `*`) has the tag at its start.
    let mut start = 0;
    loop {
        // Where the next `;` may be: the tag, its `=` and the list read
        // hold none, so they are not searched again.
        let mut from = start;
        let p = skip_lws(v, start);
        if TAG.starts(&v[p..]) {
            let eq = skip_lws(v, p + TAG.len);
            if v.get(eq) == Some(&b'=') {
                let list = skip_lws(v, eq + 1);
                let (b, semi_free, close) = service_list(&v[list..], true);
                bits |= b;
                from = list + semi_free;
                ok &= v.get(list) == Some(&b'"') && quoted_value_ends(v, list, close);
            }
        }
        match find_byte(b';', &v[from..]) {
            Some(s) => start = from + s + 1,
            None => return (CpmServices(bits), ok),
        }
    }
}

/// Does the quoted value at `v[list]` end its parameter: its closing quote
/// (at `close` past the list's start, as the list reader found it, or
/// where a quoted-pair moves it) followed by nothing but LWS before the
/// next parameter, the next value or the end?
fn quoted_value_ends(v: &[u8], list: usize, close: Option<usize>) -> bool {
    let ends_there = |e: usize| {
        let a = skip_lws(v, e);
        a == v.len() || matches!(v[a], b';' | b',')
    };
    // A quoted-pair (`\"`) moves the closing quote past the one found.
    close.is_some_and(|c| ends_there(list + c)) || quoted_end(v, list).is_some_and(ends_there)
}

/// Is `v` a list of RFC 6050 service identifiers: `"urn:urn-7:"` and
/// dot-separated `let-dig` labels, separated by commas?
fn service_ids_ok(v: &[u8]) -> bool {
    let mut i = 0;
    loop {
        if !PLAIN.starts(&v[i..]) {
            return false;
        }
        let e = run(v, i + PLAIN.len, SERVICE);
        if e == i + PLAIN.len {
            return false;
        }
        i = skip_lws(v, e);
        match v.get(i) {
            None => return true,
            Some(b',') => i = skip_lws(v, i + 1),
            Some(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_and_plain_forms() {
        let ac =
            br#"*;+g.3gpp.icsi-ref="urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session";explicit"#;
        assert_eq!(cpm_services(ac, true).0, CpmServices::SESSION);
        let pps = b"urn:urn-7:3gpp-service.ims.icsi.oma.cpm.msg";
        assert_eq!(cpm_services(pps, false).0, CpmServices::MSG);
        assert!(
            !cpm_services(pps, true).any(),
            "a bare URN is not a feature tag"
        );
        let other_param = br#"<sip:a@b>;x="urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session""#;
        assert!(!cpm_services(other_param, true).any());
        let spaced = br#"<sip:a@b>; +G.3GPP.ICSI-REF = "urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session""#;
        assert!(cpm_services(spaced, true).any());
        let lower = br#"+g.3gpp.icsi-ref="urn%3aurn-7%3a3gpp-service.ims.icsi.oma.cpm.largemsg,urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.filetransfer""#;
        assert_eq!(
            cpm_services(lower, true).0,
            CpmServices::LARGEMSG | CpmServices::FILETRANSFER
        );
    }

    #[test]
    fn near_misses_are_not_cpm() {
        // MMTel ICSI, unknown CPM service, missing urn-7 prefix, truncated.
        for v in [
            &b"urn:urn-7:3gpp-service.ims.icsi.mmtel"[..],
            b"urn:urn-7:3gpp-service.ims.icsi.oma.cpm.sessionx",
            b"urn:urn-9:3gpp-service.ims.icsi.oma.cpm.session",
            b"3gpp-service.ims.icsi.oma.cpm.session",
            b"urn:urn-7:3gpp-service.ims.icsi.oma.cpm.",
        ] {
            assert!(
                !cpm_services(v, false).any(),
                "{}",
                String::from_utf8_lossy(v)
            );
        }
    }

    /// The list reader as it was: the list's end found first, then each
    /// element's comma searched from the element's start.
    fn reference_service_list(v: &[u8], in_param: bool) -> u8 {
        let quoted = v.first() == Some(&b'"');
        let body = &v[usize::from(quoted)..];
        let stop = if quoted {
            find_byte(b'"', body)
        } else if in_param {
            find_byte(b';', body)
        } else {
            None
        };
        let body = &body[..stop.unwrap_or(body.len())];
        let mut bits = 0;
        let mut at = 0;
        loop {
            at = skip_lws(body, at);
            bits |= service_of(&body[at..]).0;
            match find_byte(b',', &body[at..]) {
                Some(c) => at += c + 1,
                None => return bits,
            }
        }
    }

    /// `cpm_services` as it was: each parameter's `;` searched from the
    /// parameter's start, over the list just read.
    fn reference_cpm_services(v: &[u8]) -> u8 {
        let mut bits = 0;
        let mut start = 0;
        loop {
            let p = skip_lws(v, start);
            if TAG.starts(&v[p..]) {
                let eq = skip_lws(v, p + TAG.len);
                if v.get(eq) == Some(&b'=') {
                    bits |= reference_service_list(&v[skip_lws(v, eq + 1)..], true);
                }
            }
            match find_byte(b';', &v[start..]) {
                Some(s) => start += s + 1,
                None => return bits,
            }
        }
    }

    /// [`crate::sip::concatenations`] of text pieces, as text.
    fn concatenated(pieces: &[String], max_len: usize) -> Vec<String> {
        let pieces: Vec<&[u8]> = pieces.iter().map(|p| p.as_bytes()).collect();
        crate::sip::concatenations(&pieces, max_len)
            .into_iter()
            .map(|v| String::from_utf8(v).expect("ASCII pieces"))
            .collect()
    }

    /// Feature-tag values of up to six pieces (tags, `=`, quotes, ICSIs,
    /// separators): the same bits as the reference.
    #[test]
    fn cpm_services_agrees_with_the_reference() {
        let icsi = |p: &str, n: &str| format!("{p}3gpp-service.ims.icsi.oma.cpm.{n}");
        let pieces: Vec<String> = vec![
            "+g.3gpp.icsi-ref".into(),
            "=".into(),
            "\"".into(),
            icsi("urn:urn-7:", "session"),
            icsi("urn%3Aurn-7%3A", "msg") + "x",
            ",".into(),
            ";".into(),
            " ".into(),
        ];
        let all = concatenated(&pieces, 6);
        for v in &all {
            for v in [v.clone(), format!("*;{v}")] {
                assert_eq!(
                    cpm_services(v.as_bytes(), true).0,
                    reference_cpm_services(v.as_bytes()),
                    "{v}"
                );
            }
        }
    }

    /// Lists of up to four pieces (ICSIs in both forms, cut short, with
    /// a name run on, and the separators and ends), quoted or not: the same
    /// bits as the reference reader.
    #[test]
    fn service_list_agrees_with_the_reference() {
        let icsi = |p: &str, n: &str| format!("{p}3gpp-service.ims.icsi.oma.cpm.{n}");
        let pieces: Vec<String> = vec![
            icsi("urn:urn-7:", "session"),
            icsi("urn%3Aurn-7%3A", "msg"),
            icsi("URN:URN-7:", "SystemMsg"),
            icsi("urn:urn-7:", "largemsg") + "x",
            icsi("urn:urn-7:", "defer"),
            icsi("urn:urn-7:", "filetransfer")[..30].to_string(),
            ",".into(),
            " , ".into(),
            "\"".into(),
            ";".into(),
            " ".into(),
            "x".into(),
        ];
        let lists = concatenated(&pieces, 4);
        for l in &lists {
            for v in [l.clone(), format!("\"{l}")] {
                for in_param in [false, true] {
                    let (_, semi_free, _) = service_list(v.as_bytes(), in_param);
                    assert!(!v.as_bytes()[..semi_free].contains(&b';'), "{v}");
                    assert_eq!(
                        service_list(v.as_bytes(), in_param).0,
                        reference_service_list(v.as_bytes(), in_param),
                        "{v} {in_param}"
                    );
                }
            }
        }
    }

    fn check_pat<const W: usize>(text: &[u8], pat: &Pat<W>, ignore_case: bool) {
        for i in 0..text.len() {
            for b in 0..=255u8 {
                let mut v = text.to_vec();
                v[i] = b;
                let expect = if ignore_case {
                    v.eq_ignore_ascii_case(text)
                } else {
                    v == text
                };
                assert_eq!(pat.starts(&v), expect, "{v:?}");
                v.extend_from_slice(b"tail");
                assert_eq!(pat.starts(&v), expect, "{v:?}");
                assert!(!pat.starts(&v[..text.len() - 1]));
            }
        }
    }

    /// The word compares against the plain definition: each byte of each
    /// pattern replaced by every value, alone and at the start of a longer
    /// text.
    #[test]
    fn word_patterns_fold_exactly_the_case_of_letters() {
        check_pat(b"+g.3gpp.icsi-ref", &TAG, true);
        check_pat(b"urn:urn-7:", &PLAIN, true);
        check_pat(b"urn%3Aurn-7%3A", &ESCAPED, true);
        check_pat(MIDDLE, &MIDDLE_PAT, false);
    }

    /// The word compare against `eq_ignore_ascii_case`: each byte of each
    /// service name replaced by every value, at every text length.
    #[test]
    fn letters_start_is_exact_ascii_case_folding() {
        for (name, _) in SERVICES {
            assert!(name.iter().all(u8::is_ascii_lowercase));
            for i in 0..name.len() {
                for b in 0..=255u8 {
                    let mut v = name.to_vec();
                    v[i] = b;
                    v.extend_from_slice(b"Xy");
                    for len in 0..=v.len() {
                        let t = &v[..len];
                        let expect =
                            t.len() >= name.len() && t[..name.len()].eq_ignore_ascii_case(name);
                        assert_eq!(letters_start(t, name), expect, "{t:?} {name:?}");
                    }
                }
            }
        }
    }

    /// Service names as the longest run of name bytes, matched in any case.
    #[test]
    fn service_names_end_at_a_non_name_byte() {
        for (name, bit) in [
            (&b"session"[..], CpmServices::SESSION),
            (b"SeSsIoN\"", CpmServices::SESSION),
            (b"systemmsg,x", CpmServices::SYSTEMMSG),
            (b"msg;a", CpmServices::MSG),
            (b"largemsg", CpmServices::LARGEMSG),
            (b"DEFERRED ", CpmServices::DEFERRED),
            (b"filetransfer.", CpmServices::FILETRANSFER),
            (b"msg-", 0),
            (b"session9", 0),
            (b"sessio", 0),
            (b"system", 0),
            (b"", 0),
            (b"x", 0),
        ] {
            let mut v = b"urn:urn-7:".to_vec();
            v.extend_from_slice(MIDDLE);
            v.extend_from_slice(name);
            let len = if bit == 0 { 0 } else { v.len() - name.len() };
            let len = len
                + SERVICES
                    .iter()
                    .find(|s| s.1 == bit)
                    .map_or(0, |s| s.0.len());
            assert_eq!(
                service_of(&v),
                (bit, len),
                "{}",
                String::from_utf8_lossy(&v)
            );
        }
    }
}
