//! The admin server's own rules on top of what hyper parses: request-target
//! decoding, bearer authentication, keep-alive wishes and the checks on a
//! handler's response. Pure functions, so they are tested without sockets.

use super::Response;
use tracing::warn;

/// Decoded query parameters, in order.
pub(super) type Query = Vec<(String, String)>;

/// Decoded path and query of a request target (origin form `/p?q`,
/// absolute form `http://host/p?q`, or `*`).
pub(super) fn split_target(target: &str) -> Result<(String, Query), &'static str> {
    if target == "*" {
        return Ok(("*".to_string(), Vec::new()));
    }
    let (raw_path, raw_query) = target_parts(target)?;
    let path = if raw_path.is_empty() {
        "/".to_string()
    } else {
        percent_decode(raw_path, false).ok_or("malformed percent-encoding in path")?
    };
    let mut query = Vec::new();
    for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k, true).ok_or("malformed percent-encoding in query")?;
        let v = percent_decode(v, true).ok_or("malformed percent-encoding in query")?;
        query.push((k, v));
    }
    Ok((path, query))
}

/// The still-encoded path and query of a request target (origin or
/// absolute form), without any fragment.
pub(super) fn target_parts(target: &str) -> Result<(&str, &str), &'static str> {
    let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
    let rest = if let Some(scheme_len) = ["http://", "https://"]
        .iter()
        .find(|s| lower.starts_with(*s))
        .map(|s| s.len())
    {
        let after = &target[scheme_len..];
        let path_at = after.find(['/', '?']).unwrap_or(after.len());
        &after[path_at..]
    } else if target.starts_with('/') {
        target
    } else {
        return Err("malformed request target");
    };
    let rest = rest.split('#').next().unwrap_or("");
    Ok(rest.split_once('?').unwrap_or((rest, "")))
}

/// `%XX` decoding (and `+` as space when `plus`); `None` on a bad escape or
/// when the result is not UTF-8.
pub(super) fn percent_decode(s: &str, plus: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hi = hex_val(*b.get(i + 1)?)?;
                let lo = hex_val(*b.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// True when the comma-separated list `v` holds `token` (case-insensitive).
pub(super) fn has_token(v: &str, token: &str) -> bool {
    v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether the client wants the connection kept after this request
/// (HTTP/1.1 unless `close`; HTTP/1.0 only with `keep-alive`).
pub(super) fn wants_keep_alive(http11: bool, headers: &[(String, String)]) -> bool {
    let (mut close, mut keep) = (false, false);
    for (_, v) in headers.iter().filter(|(k, _)| k == "connection") {
        close |= has_token(v, "close");
        keep |= has_token(v, "keep-alive");
    }
    !close && (http11 || keep)
}

/// `GET /health` and `GET /ready` (decoded path): answered without a token
/// and in the probe slots.
pub(super) fn is_probe(method: &str, path: &str) -> bool {
    method == "GET" && (path == "/health" || path == "/ready")
}

/// Whether the request may reach the handler.
pub(super) fn authorized(
    token: Option<&str>,
    method: &str,
    path: &str,
    headers: &[(String, String)],
) -> bool {
    let Some(token) = token else {
        return true;
    };
    if is_probe(method, path) {
        return true;
    }
    let Some((_, value)) = headers.iter().find(|(k, _)| k == "authorization") else {
        return false;
    };
    let Some((scheme, cred)) = value.split_once([' ', '\t']) else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer") && ct_eq(cred.trim().as_bytes(), token.as_bytes())
}

/// Compare `given` with `secret` in time that depends on `secret.len()` only.
fn ct_eq(given: &[u8], secret: &[u8]) -> bool {
    let mut acc = u8::from(given.len() != secret.len());
    for (i, &s) in secret.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(!s);
        acc |= g ^ s;
    }
    std::hint::black_box(acc) == 0
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A byte allowed in a field value: visible, space, tab, or obs-text.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

/// Check and clean a handler's response: a status outside 200..=599 becomes
/// 500, header fields the server owns or that could break the framing are
/// dropped. Also says whether the handler asked for `Connection: close`.
pub(super) fn sanitize(mut resp: Response) -> (Response, bool) {
    if !(200..=599).contains(&resp.status) {
        warn!(
            status = resp.status,
            "admin http: handler returned an invalid status, answering 500"
        );
        return (Response::error(500, "internal error"), false);
    }
    if !resp
        .content_type
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        warn!("admin http: handler returned an invalid content type");
        resp.content_type = "application/octet-stream";
    }
    let mut close = false;
    resp.headers.retain(|(k, v)| {
        if !is_token(k.as_bytes()) || !v.bytes().all(is_field_byte) {
            warn!(name = ?k, "admin http: dropping an invalid response header field");
            return false;
        }
        if k.eq_ignore_ascii_case("connection") {
            close |= has_token(v, "close");
            return false;
        }
        !["content-length", "content-type", "transfer-encoding"]
            .iter()
            .any(|n| k.eq_ignore_ascii_case(n))
    });
    (resp, close)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdrs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn targets() {
        let (p, q) = split_target("/a%20b/%2F?x=1&y=a+b&z=%E2%9C%93&flag&&=v").unwrap();
        assert_eq!(p, "/a b//");
        let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            q,
            [
                ("x", "1"),
                ("y", "a b"),
                ("z", "✓"),
                ("flag", ""),
                ("", "v")
            ]
        );
        assert_eq!(split_target("/a+b").unwrap().0, "/a+b");
        assert_eq!(split_target("http://h:1/x?y=2").unwrap().0, "/x");
        assert_eq!(split_target("HTTPS://h").unwrap().0, "/");
        assert_eq!(split_target("http://h?a=1").unwrap().1.len(), 1);
        assert_eq!(split_target("*").unwrap().0, "*");
        assert_eq!(split_target("/x#frag").unwrap().0, "/x");
        for bad in ["x", "/%", "/%4", "/%zz", "/%FF", "/?a=%G0", "h://x"] {
            assert!(split_target(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn auth_rules() {
        let with = |v: &str| hdrs(&[("authorization", v)]);
        let t = Some("s3cret");
        assert!(authorized(None, "POST", "/x", &[]));
        assert!(authorized(t, "GET", "/health", &[]));
        assert!(authorized(t, "GET", "/ready", &[]));
        assert!(!authorized(t, "POST", "/health", &[]));
        assert!(!authorized(t, "GET", "/health/", &[]));
        assert!(!authorized(t, "GET", "/metrics", &[]));
        assert!(authorized(t, "GET", "/metrics", &with("Bearer s3cret")));
        assert!(authorized(t, "GET", "/metrics", &with("bearer  s3cret ")));
        for bad in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Basic s3cret",
            "Bearer",
            "s3cret",
            "",
        ] {
            assert!(!authorized(t, "GET", "/metrics", &with(bad)), "{bad:?}");
        }
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abd", b"abc"));
        assert!(!ct_eq(b"", b"abc"));
        assert!(!ct_eq(b"abcd", b"abc"));
    }

    #[test]
    fn keep_alive_rules() {
        let conn = |v: &str| hdrs(&[("connection", v)]);
        assert!(wants_keep_alive(true, &[]));
        assert!(!wants_keep_alive(true, &conn("Close")));
        assert!(!wants_keep_alive(true, &conn("te, close")));
        assert!(!wants_keep_alive(false, &[]));
        assert!(wants_keep_alive(false, &conn("keep-alive")));
    }

    #[test]
    fn sanitizing() {
        let mut r = Response::text(200, "x");
        r.headers = hdrs(&[
            ("X-Ok", "1"),
            ("Content-Length", "99"),
            ("X-Bad", "a\r\nInjected: 1"),
            ("Bad Name", "1"),
            ("Connection", "close"),
        ]);
        let (r, close) = sanitize(r);
        assert!(close);
        assert_eq!(r.headers, hdrs(&[("X-Ok", "1")]));
        assert_eq!(sanitize(Response::text(101, "")).0.status, 500);
        assert_eq!(sanitize(Response::text(600, "")).0.status, 500);
    }

    /// Arbitrary text never makes the decoders panic.
    #[test]
    fn decoders_are_total() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let alphabet = b"GET /%?&=+:#\r\n \tHTP1.0chunked;aZ\x00\x7f\xff";
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| alphabet[((x >> (i % 50)) as usize + i * 7) % alphabet.len()])
                .collect();
            let s = String::from_utf8_lossy(&bytes);
            let _ = split_target(&s);
            let _ = percent_decode(&s, true);
        }
    }
}
