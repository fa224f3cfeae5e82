//! What an Interworking Function for SMS (seed 5.3) decides about a CPM
//! pager-mode message before a gateway sees it, sans-IO:
//! - [`text_of`]: the text to send, from a `text/plain` body or a
//!   `message/cpim` one wrapping `text/plain` (RFC 3862, the CPM form),
//!   with the delivery notifications its CPIM headers ask for (RFC 5438);
//! - [`plan`]: the SMS coding (3GPP TS 23.038: the GSM 7-bit default
//!   alphabet with its extension table where every character has a
//!   septet, else UCS-2) and how many concatenated parts it takes (TS
//!   23.040: 160 septets or 70 UCS-2 units in one SMS; 153 or 67 per part
//!   once a 6-byte concatenation header is needed; an escape pair or a
//!   surrogate pair never split between parts);
//! - [`msisdn_of`]: the E.164 number a Request-URI names (`tel:+...`, or
//!   `sip:+...@host;user=phone`), the only address SMS can reach.

use super::imdn::{header, requested, Requested};
use crate::sip::scan::Message;

/// Septets in a single SMS / in each part of a concatenated one.
pub const GSM7_SINGLE: usize = 160;
pub const GSM7_PART: usize = 153;
/// UCS-2 code units in a single SMS / in each part of a concatenated one.
pub const UCS2_SINGLE: usize = 70;
pub const UCS2_PART: usize = 67;

/// The SMS data coding of a text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    /// The GSM 7-bit default alphabet (Kannel `coding=0`).
    Gsm7,
    /// UCS-2 (Kannel `coding=2`).
    Ucs2,
}

/// How a text goes out as SMS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub coding: Coding,
    /// Septets (GSM 7-bit) or UTF-16 code units (UCS-2).
    pub units: usize,
    pub parts: usize,
}

/// Why a message cannot become SMS; each maps to one SIP answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SmsError {
    #[error("Unsupported Media Type - SMS Carries text/plain Only")]
    NotText,
    #[error("Bad Request - Text Is Not UTF-8")]
    NotUtf8,
    #[error("Bad Request - Malformed CPIM")]
    BadCpim,
    #[error("Bad Request - Empty Text")]
    Empty,
    #[error("Request Entity Too Large - Text Needs {parts} SMS Parts (At Most {max})")]
    TooLong { parts: usize, max: usize },
    #[error("Not Found - No Number For SMS In The Request-URI")]
    NoMsisdn,
}

impl SmsError {
    /// The SIP status that says it.
    pub fn status(&self) -> u16 {
        match self {
            SmsError::NotText => 415,
            SmsError::NotUtf8 | SmsError::BadCpim | SmsError::Empty => 400,
            SmsError::TooLong { .. } => 413,
            SmsError::NoMsisdn => 404,
        }
    }
}

/// The message's text, and the delivery notifications its CPIM headers
/// ask for (RFC 5438), if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Text {
    pub text: String,
    pub report: Option<Requested>,
}

/// The text of a MESSAGE's body (`b`, scanned as `m`).
pub fn text_of(b: &[u8], m: &Message) -> Result<Text, SmsError> {
    let ct = m.content_type.map(|c| c.get(b)).unwrap_or(b"text/plain");
    let body = m.body.get(b);
    let (mime, _) = split_params(ct);
    let t = if mime.eq_ignore_ascii_case(b"text/plain") {
        Text {
            text: utf8(body)?,
            report: None,
        }
    } else if mime.eq_ignore_ascii_case(b"message/cpim") {
        cpim_text(body)?
    } else {
        return Err(SmsError::NotText);
    };
    if t.text.is_empty() {
        return Err(SmsError::Empty);
    }
    Ok(t)
}

fn utf8(b: &[u8]) -> Result<String, SmsError> {
    std::str::from_utf8(b)
        .map(str::to_string)
        .map_err(|_| SmsError::NotUtf8)
}

/// A media type and what follows its first `;`.
fn split_params(v: &[u8]) -> (&[u8], &[u8]) {
    let v = v.trim_ascii();
    match v.iter().position(|&c| c == b';') {
        Some(i) => (v[..i].trim_ascii(), &v[i + 1..]),
        None => (v, &[]),
    }
}

/// Header lines up to the blank line, and what follows it.
fn head_and_rest(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = memchr::memmem::find(b, b"\r\n\r\n")?;
    Some((&b[..i], &b[i + 4..]))
}

/// RFC 3862: CPIM headers, a blank line, the MIME headers of the content,
/// a blank line, the content.
fn cpim_text(body: &[u8]) -> Result<Text, SmsError> {
    let (cpim, rest) = head_and_rest(body).ok_or(SmsError::BadCpim)?;
    let (mime, content) = head_and_rest(rest).ok_or(SmsError::BadCpim)?;
    let inner = header(mime, b"Content-Type").ok_or(SmsError::BadCpim)?;
    if !split_params(inner).0.eq_ignore_ascii_case(b"text/plain") {
        return Err(SmsError::NotText);
    }
    // RFC 5438 §4: the `imdn` namespace's headers, under the prefix
    // `imdn` (the custom every CPM client follows).
    Ok(Text {
        text: utf8(content)?,
        report: requested(cpim),
    })
}

/// The GSM 7-bit default alphabet (TS 23.038 §6.2.1), by septet value.
const GSM7_BASIC: [char; 128] = [
    '@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å', //
    'Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', '\u{1b}', 'Æ', 'æ', 'ß', 'É', //
    ' ', '!', '"', '#', '¤', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/', //
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?', //
    '¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', //
    'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§', //
    '¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', //
    'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à', //
];

/// The extension table (TS 23.038 §6.2.1.1): an escape septet and one more.
const GSM7_EXTENSION: [char; 10] = ['\u{c}', '^', '{', '}', '\\', '[', '~', ']', '|', '€'];

/// Septets `c` takes in the GSM 7-bit alphabet; `None`: it has none. The
/// escape character itself is no text.
pub fn gsm7_septets(c: char) -> Option<usize> {
    if c == '\u{1b}' {
        return None;
    }
    if GSM7_BASIC.contains(&c) {
        Some(1)
    } else if GSM7_EXTENSION.contains(&c) {
        Some(2)
    } else {
        None
    }
}

/// Coding, size and parts of `text` (at most `max_parts`).
pub fn plan(text: &str, max_parts: usize) -> Result<Plan, SmsError> {
    assert!(max_parts >= 1);
    let septets: Option<Vec<usize>> = text.chars().map(gsm7_septets).collect();
    let p = match septets {
        Some(units) => Plan {
            coding: Coding::Gsm7,
            units: units.iter().sum(),
            parts: parts(&units, GSM7_SINGLE, GSM7_PART),
        },
        None => {
            let units: Vec<usize> = text.chars().map(char::len_utf16).collect();
            Plan {
                coding: Coding::Ucs2,
                units: units.iter().sum(),
                parts: parts(&units, UCS2_SINGLE, UCS2_PART),
            }
        }
    };
    if p.parts > max_parts {
        return Err(SmsError::TooLong {
            parts: p.parts,
            max: max_parts,
        });
    }
    Ok(p)
}

/// Parts for characters of `sizes` units: one if all fit `single`, else
/// filled greedily to `part` units without splitting a character.
fn parts(sizes: &[usize], single: usize, part: usize) -> usize {
    let total: usize = sizes.iter().sum();
    if total <= single {
        return 1;
    }
    let (mut n, mut fill) = (1, 0);
    for &s in sizes {
        if fill + s > part {
            n += 1;
            fill = 0;
        }
        fill += s;
    }
    n
}

/// The E.164 number a Request-URI names (`tel:`, or `user=phone`):
/// `None` is an address SMS cannot reach.
pub fn msisdn_of(uri: &str) -> Option<String> {
    crate::sip::number::e164_of(uri)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::scan::scan;

    fn message(ctype: &str, body: &str) -> Vec<u8> {
        format!(
            "MESSAGE tel:+447700900123 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\n\
             From: <sip:alice@example.net>;tag=1\r\nTo: <sip:erin@example.net>\r\nCall-ID: c\r\n\
             CSeq: 1 MESSAGE\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn text(ctype: &str, body: &str) -> Result<Text, SmsError> {
        let b = message(ctype, body);
        let m = scan(&b);
        text_of(&b, &m)
    }

    #[test]
    fn the_text_comes_from_plain_or_cpim_and_anything_else_is_named() {
        assert_eq!(
            text("text/plain; charset=UTF-8", "hello").unwrap().text,
            "hello"
        );
        let cpim = "From: <sip:alice@example.net>\r\nTo: <sip:erin@example.net>\r\n\
                    NS: imdn <urn:ietf:params:imdn>\r\nimdn.Message-ID: 34jk324j\r\n\
                    DateTime: 2026-12-02T15:00:00Z\r\n\
                    imdn.Disposition-Notification: positive-delivery\r\n\r\n\
                    Content-Type: text/plain; charset=utf-8\r\n\r\nhi via cpim";
        let t = text("message/cpim", cpim).unwrap();
        assert_eq!(t.text, "hi via cpim");
        let r = t.report.unwrap();
        assert_eq!((r.message_id.as_str(), r.positive), ("34jk324j", true));
        assert_eq!(text("image/png", "x"), Err(SmsError::NotText));
        let html = cpim.replace("text/plain; charset=utf-8", "text/html");
        assert_eq!(text("message/cpim", &html), Err(SmsError::NotText));
        assert_eq!(text("message/cpim", "From: x\r\n"), Err(SmsError::BadCpim));
        assert_eq!(text("text/plain", ""), Err(SmsError::Empty));
        let mut bad = message("text/plain", "ab");
        let n = bad.len();
        bad[n - 1] = 0xff;
        assert_eq!(text_of(&bad, &scan(&bad)), Err(SmsError::NotUtf8));
    }

    #[test]
    fn gsm_7bit_where_every_character_has_a_septet_else_ucs2() {
        let p = plan("Hello @ £5 {ok}", 10).unwrap();
        // The braces are extension characters: two septets each.
        assert_eq!((p.coding, p.units, p.parts), (Coding::Gsm7, 17, 1));
        let p = plan("Grüße, Ελλάδα? 日本", 10).unwrap();
        assert_eq!(p.coding, Coding::Ucs2);
        assert_eq!(plan("€", 1).unwrap().units, 2);
        // An emoji is a surrogate pair: two UCS-2 units.
        assert_eq!(
            plan("😀", 1).unwrap(),
            Plan {
                coding: Coding::Ucs2,
                units: 2,
                parts: 1
            }
        );
    }

    #[test]
    fn parts_follow_ts_23040_and_never_split_a_character() {
        let a = |n: usize| "a".repeat(n);
        assert_eq!(plan(&a(160), 10).unwrap().parts, 1);
        assert_eq!(plan(&a(161), 10).unwrap().parts, 2);
        assert_eq!(plan(&a(306), 10).unwrap().parts, 2);
        assert_eq!(plan(&a(307), 10).unwrap().parts, 3);
        // 152 septets, then an escape pair: it goes whole to part 2.
        let edge = format!("{}€{}", a(152), a(10));
        assert_eq!(plan(&edge, 10).unwrap().parts, 2);
        assert_eq!(plan(&format!("{}€", a(152)), 10).unwrap().units, 154);
        let u = |n: usize| "ж".repeat(n);
        assert_eq!(plan(&u(70), 10).unwrap().parts, 1);
        assert_eq!(plan(&u(71), 10).unwrap().parts, 2);
        assert_eq!(plan(&u(134), 10).unwrap().parts, 2);
        assert_eq!(plan(&u(135), 10).unwrap().parts, 3);
        assert_eq!(
            plan(&a(1531), 10),
            Err(SmsError::TooLong { parts: 11, max: 10 })
        );
        assert_eq!(SmsError::TooLong { parts: 11, max: 10 }.status(), 413);
    }

    #[test]
    fn only_an_e164_number_is_an_address_for_sms() {
        assert_eq!(
            msisdn_of("tel:+44-7700-900123").as_deref(),
            Some("+447700900123")
        );
        assert_eq!(
            msisdn_of("tel:+447700900123;phone-context=x").as_deref(),
            Some("+447700900123")
        );
        assert_eq!(
            msisdn_of("sip:+447700900123@ims.example.net;user=phone").as_deref(),
            Some("+447700900123")
        );
        assert_eq!(msisdn_of("sip:+447700900123@ims.example.net"), None);
        assert_eq!(msisdn_of("tel:7700900123"), None, "a local number");
        assert_eq!(msisdn_of("tel:+12345"), None, "too short");
        assert_eq!(msisdn_of("tel:+1234567890123456"), None, "too long");
        assert_eq!(msisdn_of("mailto:erin@example.net"), None);
        assert_eq!(msisdn_of("wv:erin@example.net"), None);
    }
}
