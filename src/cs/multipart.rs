//! A bounded reader of `multipart/mixed` bodies (RFC 2046 §5.1): what an
//! ad-hoc group INVITE carries (RFC 5366 §4: the offer and the recipient
//! list as two parts). Only the shape a SIP body has is accepted: a
//! `boundary` parameter, at most [`MAX_PARTS`] parts, each with its own
//! headers (of which Content-Type is read) and content; no nesting.
//! Written by hand: a multipart library would bring a streaming HTTP
//! stack for a job of two `memchr` searches per part.

use memchr::memmem;

/// Most parts read; more is refused.
pub const MAX_PARTS: usize = 8;
/// Longest boundary (RFC 2046: 70 characters).
const MAX_BOUNDARY: usize = 70;

/// One part: its Content-Type (lowercased, parameters dropped) and content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part<'a> {
    pub content_type: String,
    pub content: &'a [u8],
}

/// Why a body is refused: short text for a `400` reason phrase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    #[error("Multipart: no boundary parameter")]
    NoBoundary,
    #[error("Multipart: boundary longer than 70 characters or empty")]
    BadBoundary,
    #[error("Multipart: no opening delimiter")]
    NoDelimiter,
    #[error("Multipart: no closing delimiter")]
    Unterminated,
    #[error("Multipart: a part without its blank line")]
    PartHeaders,
    #[error("Multipart: more than 8 parts")]
    TooManyParts,
}

/// The `boundary` parameter of a Content-Type value, unquoted.
pub fn boundary(content_type: &str) -> Result<&str, MultipartError> {
    let b = content_type
        .split(';')
        .skip(1)
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"'))
        .ok_or(MultipartError::NoBoundary)?;
    if b.is_empty() || b.len() > MAX_BOUNDARY {
        return Err(MultipartError::BadBoundary);
    }
    Ok(b)
}

/// The parts of `body` delimited by `boundary`.
pub fn parts<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, MultipartError> {
    let delim = [b"--", boundary.as_bytes()].concat();
    let finder = memmem::Finder::new(&delim);
    let first = finder.find(body).ok_or(MultipartError::NoDelimiter)?;
    let mut rest = &body[first + delim.len()..];
    let mut out = Vec::new();
    loop {
        if rest.starts_with(b"--") {
            return Ok(out);
        }
        // The delimiter line ends (transport padding allowed) at CRLF.
        let eol = memchr::memchr(b'\n', rest).ok_or(MultipartError::Unterminated)?;
        let after = &rest[eol + 1..];
        let next = finder.find(after).ok_or(MultipartError::Unterminated)?;
        // The CRLF before the next delimiter belongs to it.
        let mut content = &after[..next];
        content = content.strip_suffix(b"\n").unwrap_or(content);
        content = content.strip_suffix(b"\r").unwrap_or(content);
        if out.len() == MAX_PARTS {
            return Err(MultipartError::TooManyParts);
        }
        out.push(part(content)?);
        rest = &after[next + delim.len()..];
    }
}

fn part(raw: &[u8]) -> Result<Part<'_>, MultipartError> {
    let (head, content) = match memmem::find(raw, b"\r\n\r\n") {
        Some(i) => (&raw[..i], &raw[i + 4..]),
        // A part with no headers starts with its blank line.
        None if raw.starts_with(b"\r\n") => (&raw[..0], &raw[2..]),
        None => return Err(MultipartError::PartHeaders),
    };
    let text = String::from_utf8_lossy(head);
    let content_type = text
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| {
            k.trim().eq_ignore_ascii_case("content-type") || k.trim().eq_ignore_ascii_case("c")
        })
        .map(|(_, v)| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        // RFC 2046 §5.1: a part without Content-Type is text/plain.
        .unwrap_or_else(|| "text/plain".to_string());
    Ok(Part {
        content_type,
        content,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = b"--boundary1\r\nContent-Type: application/sdp\r\n\r\nv=0\r\ns=-\r\n\r\n\
        --boundary1\r\nContent-Type: application/resource-lists+xml\r\nContent-Disposition: recipient-list\r\n\r\n\
        <resource-lists/>\r\n--boundary1--\r\n";

    #[test]
    fn an_rfc5366_body_splits_into_its_two_parts() {
        let b = boundary("multipart/mixed;boundary=\"boundary1\"").unwrap();
        let p = parts(BODY, b).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].content_type, "application/sdp");
        assert_eq!(p[0].content, b"v=0\r\ns=-\r\n");
        assert_eq!(p[1].content_type, "application/resource-lists+xml");
        assert_eq!(p[1].content, b"<resource-lists/>");
    }

    #[test]
    fn refusals() {
        assert_eq!(boundary("multipart/mixed"), Err(MultipartError::NoBoundary));
        assert_eq!(
            boundary("multipart/mixed; boundary=\"\""),
            Err(MultipartError::BadBoundary)
        );
        assert_eq!(
            parts(b"no delimiter", "b"),
            Err(MultipartError::NoDelimiter)
        );
        assert_eq!(
            parts(b"--b\r\nContent-Type: a/b\r\n\r\nx", "b"),
            Err(MultipartError::Unterminated)
        );
        assert_eq!(
            parts(b"--b\r\nContent-Type: a/b\r\n--b--", "b"),
            Err(MultipartError::PartHeaders)
        );
        let many: Vec<u8> = (0..9)
            .flat_map(|_| b"--b\r\n\r\nx\r\n".to_vec())
            .chain(b"--b--".to_vec())
            .collect();
        assert_eq!(parts(&many, "b"), Err(MultipartError::TooManyParts));
    }

    #[test]
    fn any_bytes_never_panic() {
        use proptest::prelude::*;
        proptest!(|(body in proptest::collection::vec(any::<u8>(), 0..300), b in "[a-z]{1,5}")| {
            if let Ok(p) = parts(&body, &b) {
                prop_assert!(p.len() <= MAX_PARTS);
            }
        });
    }
}
