//! SIP, SIPS and tel URIs (RFC 3261 §19.1, RFC 3966) as spans, and the
//! address inside a name-addr (`"Name" <uri>;params`) or addr-spec.
//!
//! Only what routing reads is taken apart: scheme, user, host, port, URI
//! parameters; the rest is checked against its grammar but not kept.
//! Escapes (`%XX`) are kept as written: identities are compared in their
//! on-the-wire form, which is what every hop forwards unchanged.

use super::find_byte2;
use super::hash::StableHash;
use super::params::{
    find_unquoted, generic_params, is_ipv6, quoted_end, run, run_escaped, DIGIT, HNV, HOST,
    PARAMCHAR, PASSWORD, TEL, TOKEN, URIC, USER,
};
use super::{find_byte, is_lws, skip_lws, trim, Span};
use std::net::{IpAddr, SocketAddr};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uri {
    pub scheme: Scheme,
    /// The whole URI text.
    pub whole: Span,
    /// `user` (sip/sips) or the number (tel); empty when absent.
    pub user: Span,
    /// Host without brackets for IPv6 references; empty for tel.
    pub host: Span,
    pub port: Option<u16>,
    /// From the first `;` after hostport up to `?` or the end.
    pub params: Span,
}

/// The URI of a name-addr or addr-spec header value: what is between `<` and
/// `>`, or (no angle brackets) everything up to the first `;`.
pub fn addr_of(buf: &[u8], value: Span) -> Option<Span> {
    let v = value.get(buf);
    if let Some(lt) = find_unquoted(buf, value.start as usize, value.end as usize, b'<') {
        let rel = lt - value.start as usize;
        let gt = find_byte(b'>', &v[rel..])?;
        return Some(trim(buf, value.sub(rel + 1, rel + gt)));
    }
    let end = find_byte(b';', v).unwrap_or(v.len());
    let s = trim(buf, value.sub(0, end));
    (!s.is_empty()).then_some(s)
}

/// The header parameters of a name-addr value (after the `>`), e.g. `;tag=`.
pub fn header_params(buf: &[u8], value: Span) -> Span {
    name_addr(buf, value).1
}

/// [`addr_of`] and [`header_params`] together: a From/To value needs both,
/// and each alone searches for the same `<` and `>` (callgrind: the second
/// search was ~120 instructions of an INVITE).
pub fn name_addr(buf: &[u8], value: Span) -> (Option<Span>, Span) {
    let v = value.get(buf);
    let none = value.sub(v.len(), v.len());
    if let Some(lt) = find_unquoted(buf, value.start as usize, value.end as usize, b'<') {
        let rel = lt - value.start as usize;
        return match find_byte(b'>', &v[rel..]) {
            Some(gt) => (
                Some(trim(buf, value.sub(rel + 1, rel + gt))),
                value.sub(rel + gt + 1, v.len()),
            ),
            None => (None, none),
        };
    }
    let (end, params) = match find_byte(b';', v) {
        Some(sc) => (sc, value.sub(sc, v.len())),
        None => (v.len(), none),
    };
    let s = trim(buf, value.sub(0, end));
    ((!s.is_empty()).then_some(s), params)
}

/// A `name-addr` or `addr-spec` header value (From, To, Route,
/// P-Asserted-Identity), checked to its end: `[ display-name ] LAQUOT
/// addr-spec RAQUOT` or a bare `addr-spec`, then `*( SEMI generic-param )`
/// (RFC 3261 §25.1). The display name is tokens separated by LWS (a token
/// may touch the `<`, RFC 4475 §3.1.1.6) or one quoted string; the URI
/// must parse, touch its brackets and, bare, hold no `,`, `;` or `?`
/// (§20.10). Returns the URI and the value of the first `tag` parameter
/// (a token); `None` when the value is malformed.
pub fn checked_name_addr(buf: &[u8], value: Span) -> Option<(Span, Option<Span>)> {
    let v = value.get(buf);
    let (uri, after) = match *v.first()? {
        b'<' => angle_addr(buf, value, 0)?,
        b'"' => {
            let lt = skip_lws(v, quoted_end(v, 0)?);
            angle_addr(buf, value, lt)?
        }
        _ => {
            let mut e = run(v, 0, TOKEN);
            if v.get(e) == Some(&b':') {
                // addr-spec: the URI ends at the header parameters.
                let end = v[e..]
                    .iter()
                    .position(|b| *b == b';' || is_lws(*b))
                    .map_or(v.len(), |n| e + n);
                let uri = value.sub(0, end);
                if find_byte2(b',', b'?', &v[..end]).is_some() {
                    return None;
                }
                parse(buf, uri)?;
                (uri, end)
            } else {
                // display-name = *(token LWS): more tokens, then the `<`.
                loop {
                    if e == 0 {
                        return None;
                    }
                    let i = skip_lws(v, e);
                    if v.get(i) == Some(&b'<') {
                        break angle_addr(buf, value, i)?;
                    }
                    let next = run(v, i, TOKEN);
                    if i == e || next == i {
                        return None;
                    }
                    e = next;
                }
            }
        }
    };
    // The usual rest, `;tag=<token>` to the end: one word compare (OR
    // 0x20 folds exactly the case of the three letters) and one run.
    if let Some(p) = v.get(after..after + 5) {
        if u32::from_le_bytes([p[1], p[2], p[3], p[4]]) | 0x0020_2020
            == u32::from_le_bytes(*b"tag=")
            && p[0] == b';'
        {
            let e = run(v, after + 5, TOKEN);
            if e == v.len() && e > after + 5 {
                return Some((uri, Some(value.sub(after + 5, e))));
            }
        }
    }
    let mut tag = None;
    let ok = generic_params(v, after, TOKEN, |(n0, n1), val| {
        if n1 - n0 != 3 || !v[n0..n1].eq_ignore_ascii_case(b"tag") {
            return true;
        }
        // tag-param = "tag" EQUAL token
        match val {
            Some((a, b)) if run(v, a, TOKEN) == b => {
                tag = tag.or(Some(value.sub(a, b)));
                true
            }
            _ => false,
        }
    });
    ok.then_some((uri, tag))
}

/// `< addr-spec >` from `v[lt]`: the URI (parsed) and where the text after
/// the `>` starts.
#[inline(always)]
fn angle_addr(buf: &[u8], value: Span, lt: usize) -> Option<(Span, usize)> {
    let v = value.get(buf);
    if v.get(lt) != Some(&b'<') {
        return None;
    }
    // The usual `<sip:user@host>`, read in place.
    let r = lt + 5;
    if v.get(lt + 1..r).is_some_and(|w| {
        u32::from_le_bytes([w[0], w[1], w[2], w[3]]) | 0x0020_2020 == u32::from_le_bytes(*b"sip:")
    }) {
        if let Some((_, _, e)) = plain_user_host(v, r).filter(|p| v.get(p.2) == Some(&b'>')) {
            return Some((value.sub(lt + 1, e), e + 1));
        }
    }
    let (uri, len) = parse_prefix(buf, value.sub(lt + 1, v.len()))?;
    let gt = lt + 1 + len;
    (v.get(gt) == Some(&b'>')).then_some((uri.whole, gt + 1))
}

/// Parse a URI span: a SIP or SIPS URI, a tel URI or another scheme's
/// `absoluteURI` (RFC 3261 §25.1, RFC 3966), each checked to its end.
/// `None` when it is not one: no scheme, a byte its part does not allow,
/// a bad escape or port, an empty host.
pub fn parse(buf: &[u8], span: Span) -> Option<Uri> {
    parse_prefix(buf, span).and_then(|(u, end)| (end == span.len()).then_some(u))
}

/// The URI that `span` starts with and where it ends: no URI holds a `>`,
/// an LWS or a control character, so a name-addr's `>` is found by reading
/// the URI, with no search for it first.
#[inline]
fn parse_prefix(buf: &[u8], span: Span) -> Option<(Uri, usize)> {
    let s = span.get(buf);
    // Nearly every URI routed on starts `sip:`: one word compare (OR 0x20
    // folds exactly the case of the three letters, `:` is compared as is).
    let (scheme, colon) = if s.len() >= 4
        && u32::from_le_bytes([s[0], s[1], s[2], s[3]]) | 0x0020_2020
            == u32::from_le_bytes(*b"sip:")
    {
        (Scheme::Sip, 3)
    } else {
        scheme_of(s)?
    };
    match scheme {
        Scheme::Sip | Scheme::Sips => sip_uri(span, s, scheme, colon + 1),
        Scheme::Tel => tel_uri(span, s, colon + 1),
        Scheme::Other => other_uri(span, s, colon + 1),
    }
}

/// `[ userinfo ] hostport uri-parameters [ headers ]` from `s[r]`.
#[inline(always)]
fn sip_uri(span: Span, s: &[u8], scheme: Scheme, r: usize) -> Option<(Uri, usize)> {
    plain_sip_uri(span, s, scheme, r).or_else(|| sip_uri_general(span, s, scheme, r))
}

/// The shape identities nearly always have, `user@host` or `host` of
/// hostname bytes alone up to the end or a `>`: two runs and no check for
/// a password, port, parameter, header or escape (callgrind: ~60 fewer
/// instructions a URI, five URIs an INVITE). `None` for any other shape:
/// the general reading decides, from the start.
#[inline(always)]
fn plain_sip_uri(span: Span, s: &[u8], scheme: Scheme, r: usize) -> Option<(Uri, usize)> {
    let (at, hp, e) = plain_user_host(s, r)?;
    let uri = Uri {
        scheme,
        whole: span.sub(0, e),
        user: span.sub(r, at.unwrap_or(r)),
        host: span.sub(hp, e),
        port: None,
        params: span.sub(e, e),
    };
    Some((uri, e))
}

/// The `@` (if any), the host's start and the end of a plain
/// `[user@]host` from `s[r]` (see [`plain_sip_uri`]).
#[inline(always)]
fn plain_user_host(s: &[u8], r: usize) -> Option<(Option<usize>, usize, usize)> {
    let a = run(s, r, HOST);
    let (at, hp, e) = if a > r && s.get(a) == Some(&b'@') {
        (Some(a), a + 1, run(s, a + 1, HOST))
    } else {
        (None, r, a)
    };
    (e > hp && matches!(s.get(e), None | Some(b'>'))).then_some((at, hp, e))
}

/// [`sip_uri`] for every shape.
#[inline(never)]
fn sip_uri_general(span: Span, s: &[u8], scheme: Scheme, r: usize) -> Option<(Uri, usize)> {
    // No part of a SIP URI but userinfo may hold an `@` (user, password,
    // host, parameters and headers allow none unescaped), and the user
    // part may hold `;` and `?` (RFC 4475 §3.1.1.9): userinfo is what runs
    // of user and password bytes reach an `@` with.
    let u_end = run_escaped(s, r, USER)?;
    let at = match s.get(u_end) {
        Some(b'@') => Some(u_end),
        // user:password — the password is not part of the identity.
        Some(b':') => {
            let p_end = run_escaped(s, u_end + 1, PASSWORD)?;
            (s.get(p_end) == Some(&b'@')).then_some(p_end)
        }
        _ => None,
    };
    let (user, hp) = match at {
        Some(_) if u_end == r => return None,
        Some(at) => (span.sub(r, u_end), at + 1),
        None => (span.sub(r, r), r),
    };
    let (host, mut i) = if s.get(hp) == Some(&b'[') {
        let close = hp + find_byte(b']', &s[hp..])?;
        if !is_ipv6(&s[hp + 1..close]) {
            return None;
        }
        (span.sub(hp + 1, close), close + 1)
    } else {
        let e = run(s, hp, HOST);
        if e == hp {
            return None;
        }
        (span.sub(hp, e), e)
    };
    let mut port = None;
    if s.get(i) == Some(&b':') {
        let e = run(s, i + 1, DIGIT);
        port = Some(parse_port(&s[i + 1..e])?);
        i = e;
    }
    let params_start = i;
    i = uri_params(s, i)?;
    let params = span.sub(params_start, i);
    // headers = "?" header *( "&" header ), header = hname "=" hvalue
    if s.get(i) == Some(&b'?') {
        loop {
            let e = run_escaped(s, i + 1, HNV)?;
            if e == i + 1 || s.get(e) != Some(&b'=') {
                return None;
            }
            i = run_escaped(s, e + 1, HNV)?;
            if s.get(i) != Some(&b'&') {
                break;
            }
        }
    }
    let uri = Uri {
        scheme,
        whole: span.sub(0, i),
        user,
        host,
        port,
        params,
    };
    Some((uri, i))
}

/// `*( ";" pname [ "=" pvalue ] )` from `s[i]`, names and values
/// `1*paramchar`: where the parameters end.
#[inline]
fn uri_params(s: &[u8], mut i: usize) -> Option<usize> {
    while s.get(i) == Some(&b';') {
        let e = run_escaped(s, i + 1, PARAMCHAR)?;
        if e == i + 1 {
            return None;
        }
        i = e;
        if s.get(i) == Some(&b'=') {
            let e = run_escaped(s, i + 1, PARAMCHAR)?;
            if e == i + 1 {
                return None;
            }
            i = e;
        }
    }
    Some(i)
}

/// A tel URI from `s[r]`: the number (RFC 3966 digits, hex digits,
/// `* # + - . ( )`), then parameters; `user` is the number.
fn tel_uri(span: Span, s: &[u8], r: usize) -> Option<(Uri, usize)> {
    let e = run(s, r, TEL);
    if e == r {
        return None;
    }
    let end = uri_params(s, e)?;
    let uri = Uri {
        scheme: Scheme::Tel,
        whole: span.sub(0, end),
        user: span.sub(r, e),
        host: span.sub(e, e),
        port: None,
        params: span.sub(e, end),
    };
    Some((uri, end))
}

/// Another scheme's `absoluteURI` from `s[r]` (a run of `uric`): split
/// as a tel URI is, at the first `;` or `?`.
fn other_uri(span: Span, s: &[u8], r: usize) -> Option<(Uri, usize)> {
    let len = run_escaped(s, r, URIC)?;
    let rest = &s[r..len];
    let (first, end) = match find_byte2(b';', b'?', rest) {
        None => (len, len),
        Some(p) if rest[p] == b'?' => (r + p, r + p),
        Some(p) => {
            let semi = r + p;
            (
                semi,
                find_byte(b'?', &s[semi..len]).map_or(len, |q| semi + q),
            )
        }
    };
    let uri = Uri {
        scheme: Scheme::Other,
        whole: span.sub(0, len),
        user: span.sub(r, first),
        host: span.sub(first, first),
        port: None,
        params: span.sub(first, end),
    };
    (first > r).then_some((uri, len))
}

/// The scheme of `s` and the index of the colon that ends it:
/// `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
fn scheme_of(s: &[u8]) -> Option<(Scheme, usize)> {
    let colon = find_byte(b':', s)?;
    let scheme_text = &s[..colon];
    let scheme = if scheme_text.eq_ignore_ascii_case(b"sip") {
        Scheme::Sip
    } else if scheme_text.eq_ignore_ascii_case(b"sips") {
        Scheme::Sips
    } else if scheme_text.eq_ignore_ascii_case(b"tel") {
        Scheme::Tel
    } else if scheme_text.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme_text
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b))
    {
        Scheme::Other
    } else {
        return None;
    };
    Some((scheme, colon))
}

/// A decimal port 1..=65535.
pub fn parse_port(s: &[u8]) -> Option<u16> {
    if s.is_empty() || s.len() > 5 {
        return None;
    }
    // One pass: each byte checked and accumulated together.
    let mut v = 0u32;
    for b in s {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v * 10 + u32::from(d);
    }
    (1..=65535).contains(&v).then_some(v as u16)
}

/// An IP literal host (IPv6 without brackets, as [`Uri::host`] holds it).
pub fn ip_of(host: &[u8]) -> Option<IpAddr> {
    // Every response's next hop is an IPv4 literal here: the general
    // parser's UTF-8 check and grammar cost ~4x the digit loop.
    if let Some(v4) = canonical_ipv4(host) {
        return Some(IpAddr::V4(v4));
    }
    std::str::from_utf8(host).ok()?.parse().ok()
}

/// A dotted quad in canonical form (1-3 digits per part, no leading zero,
/// each <= 255); `None` for anything else, which the general parser then
/// judges, so the answer never differs from `str::parse`.
pub(crate) fn canonical_ipv4(h: &[u8]) -> Option<std::net::Ipv4Addr> {
    let digit = |k: usize| h.get(k).map(|b| b.wrapping_sub(b'0')).filter(|d| *d <= 9);
    let mut parts = [0u8; 4];
    let mut i = 0;
    for (n, part) in parts.iter_mut().enumerate() {
        if n > 0 {
            if h.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
        // One to three digits, the first not a zero unless alone.
        let d0 = digit(i)?;
        let mut v = u32::from(d0);
        i += 1;
        if let Some(d) = digit(i) {
            if d0 == 0 {
                return None;
            }
            v = v * 10 + u32::from(d);
            i += 1;
            if let Some(d) = digit(i) {
                v = v * 10 + u32::from(d);
                i += 1;
            }
        }
        *part = u8::try_from(v).ok()?;
    }
    (i == h.len()).then(|| parts.into())
}

/// `host:port` as a socket address when the host is an IP literal.
pub fn socket_addr(host: &[u8], port: Option<u16>) -> Option<SocketAddr> {
    Some(SocketAddr::new(ip_of(host)?, port.unwrap_or(5060)))
}

/// Stream the canonical identity of a URI (what users and groups are keyed
/// on) into `f`: `user@host` with the host lowercased for sip/sips, the
/// number for tel. Parameters, port and password are not part of it.
pub fn identity_bytes(buf: &[u8], uri: &Uri, mut f: impl FnMut(u8)) {
    match uri.scheme {
        Scheme::Sip | Scheme::Sips => {
            uri.user.get(buf).iter().for_each(|b| f(*b));
            f(b'@');
            uri.host
                .get(buf)
                .iter()
                .for_each(|b| f(b.to_ascii_lowercase()));
        }
        _ => uri.user.get(buf).iter().for_each(|b| f(*b)),
    }
}

/// [`identity_bytes`] into a hash, whole words at a time.
pub fn identity_hash(buf: &[u8], uri: &Uri, h: &mut StableHash) {
    match uri.scheme {
        Scheme::Sip | Scheme::Sips => {
            h.stream::<false>(uri.user.get(buf));
            h.byte(b'@');
            h.stream::<true>(uri.host.get(buf));
        }
        _ => h.stream::<false>(uri.user.get(buf)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &[u8]) -> Uri {
        parse(s, Span::new(0, s.len())).expect("uri")
    }

    #[test]
    fn sip_uri_parts() {
        let s = b"sip:grp1@Groups.Example.NET:5070;transport=udp;lr?subject=x";
        let u = p(s);
        assert_eq!(u.scheme, Scheme::Sip);
        assert_eq!(u.user.get(s), b"grp1");
        assert_eq!(u.host.get(s), b"Groups.Example.NET");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.params.get(s), b";transport=udp;lr");
        let mut id = Vec::new();
        identity_bytes(s, &u, |b| id.push(b));
        assert_eq!(id, b"grp1@groups.example.net");
        for s in [&s[..], b"sips:Al.Ice:pw@EXAMPLE.net:5061", b"tel:+1555;x=y"] {
            let u = p(s);
            let (mut words, mut bytes) = (StableHash::default(), StableHash::default());
            identity_hash(s, &u, &mut words);
            identity_bytes(s, &u, |b| bytes.byte(b));
            assert_eq!(words.finish(), bytes.finish());
        }
    }

    #[test]
    fn ipv6_password_and_tel() {
        let s = b"sips:alice:secret@[2001:db8::1]:5061;lr";
        let u = p(s);
        assert_eq!(u.user.get(s), b"alice");
        assert_eq!(u.host.get(s), b"2001:db8::1");
        assert_eq!(
            socket_addr(u.host.get(s), u.port),
            Some("[2001:db8::1]:5061".parse().unwrap())
        );
        let t = b"tel:+15551234;phone-context=example.net";
        let u = p(t);
        assert_eq!(u.scheme, Scheme::Tel);
        assert_eq!(u.user.get(t), b"+15551234");
    }

    #[test]
    fn rejects_non_uris() {
        for s in [
            &b"nocolon"[..],
            b"sip:",
            b"sip:u@",
            b"sip:h:99999",
            b"sip:h:5x",
            b"sip:[::1",
            b"<>:x",
        ] {
            assert!(
                parse(s, Span::new(0, s.len())).is_none(),
                "{:?}",
                String::from_utf8_lossy(s)
            );
        }
    }

    /// RFC 4475 §3.1.1.2, §3.1.1.3, §3.1.1.9: `;`, `?` and `,` belong to
    /// the user part before the `@`; escapes anywhere; escaped headers.
    #[test]
    fn user_parts_with_separators_escapes_and_headers() {
        let s: &[u8] = b"sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com";
        let u = p(s);
        assert_eq!(
            u.user.get(s),
            b"1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
        );
        assert_eq!(u.host.get(s), b"example.com");
        assert!(u.params.is_empty());
        let s: &[u8] = b"sip:user;par=u%40example.net@example.com";
        let u = p(s);
        assert_eq!(u.user.get(s), b"user;par=u%40example.net");
        assert_eq!(u.host.get(s), b"example.com");
        let s: &[u8] = b"sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31";
        assert_eq!(p(s).params.get(s), b";%6C%72;n%61me=v%61lue%25%34%31");
        let s: &[u8] = b"sip:user@example.com?Route=%3Csip:example.com%3E";
        assert_eq!(p(s).host.get(s), b"example.com");
        for s in [
            &b"sip:null-%00-null@example.com"[..],
            b"isbn:2983792873",
            b"http://www.example.com",
            b"name:John_Smith",
            b"soap.beep://192.0.2.103:3002",
        ] {
            p(s);
        }
        for s in [
            &b"sip:user@exa mple.com"[..],
            b"sip:us%4@example.com",
            b"sip:user@example.com;",
            b"sip:user@example.com;=x",
            b"sip:user@example.com;a=",
            b"sip:user@example.com?x",
            b"sip:a@b@c",
            b"sip:user@host_name",
            b"sip:@example.com",
            b"sip:user@example.com>",
            b"<sip:user@example.com>",
            b"tel:",
            b"tel:+1 555",
            b"http://a b",
        ] {
            assert!(
                parse(s, Span::new(0, s.len())).is_none(),
                "{}",
                String::from_utf8_lossy(s)
            );
        }
    }

    #[test]
    fn name_addr_and_addr_spec() {
        let s = b"\"Bob <b>\" <sip:bob@example.net;transport=udp>;tag=9fx";
        let a = addr_of(s, Span::new(0, s.len())).unwrap();
        assert_eq!(a.get(s), b"sip:bob@example.net;transport=udp");
        assert_eq!(header_params(s, Span::new(0, s.len())).get(s), b";tag=9fx");
        let s = b"sip:bob@example.net;tag=1";
        assert_eq!(
            addr_of(s, Span::new(0, s.len())).unwrap().get(s),
            b"sip:bob@example.net"
        );
        assert_eq!(header_params(s, Span::new(0, s.len())).get(s), b";tag=1");
        for s in [
            &b"<sip:a>;x"[..],
            b"<sip:a",
            b"sip:a",
            b" ;t",
            b"\"<\" <u> ;p",
            b"",
        ] {
            let v = Span::new(0, s.len());
            assert_eq!(name_addr(s, v), (addr_of(s, v), header_params(s, v)));
        }
    }

    #[test]
    fn ports_are_one_to_five_digits_up_to_65535() {
        let plain = |s: &[u8]| {
            if s.is_empty() || s.len() > 5 || !s.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let v = s.iter().fold(0u32, |a, d| a * 10 + u32::from(d - b'0'));
            (1..=65535).contains(&v).then_some(v as u16)
        };
        for v in (0..100_000u32)
            .step_by(7)
            .chain([0, 1, 65535, 65536, 99999])
        {
            for s in [
                format!("{v}"),
                format!("0{v}"),
                format!("{v}/"),
                format!(":{v}"),
            ] {
                assert_eq!(parse_port(s.as_bytes()), plain(s.as_bytes()), "{s}");
            }
        }
        for s in [&b""[..], b"123456", b"1 2", b"\xff", b"9:", b"/"] {
            assert_eq!(parse_port(s), plain(s));
        }
    }

    #[test]
    fn ipv4_fast_path_agrees_with_the_standard_parser() {
        for h in [
            "127.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "256.1.1.1",
            "01.2.3.4",
            "1.2.3",
            "1.2.3.4.5",
            "1.2.3.",
            ".1.2.3",
            "1..2.3",
            "1.2.3.4 ",
            "1234.1.1.1",
            "::1",
            "2001:db8::9",
            "1.2.3.04",
            "a.b.c.d",
            "",
            "9.9.9.999",
        ] {
            let std: Option<std::net::IpAddr> = h.parse().ok();
            assert_eq!(ip_of(h.as_bytes()), std, "{h}");
        }
    }

    /// The grammar written out plainly, one byte at a time with the
    /// character sets spelled as text: the definition the table-driven
    /// parser must agree with.
    fn reference_parse(buf: &[u8], span: Span) -> Option<Uri> {
        let s = span.get(buf);
        let colon = s.iter().position(|b| *b == b':')?;
        let name = &s[..colon];
        let scheme = if name.eq_ignore_ascii_case(b"sip") {
            Scheme::Sip
        } else if name.eq_ignore_ascii_case(b"sips") {
            Scheme::Sips
        } else if name.eq_ignore_ascii_case(b"tel") {
            Scheme::Tel
        } else if !name.is_empty()
            && name[0].is_ascii_alphabetic()
            && name
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b))
        {
            Scheme::Other
        } else {
            return None;
        };
        let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b);
        let user_c = |b: u8| unreserved(b) || b"&=+$,;?/".contains(&b);
        let password_c = |b: u8| unreserved(b) || b"&=+$,".contains(&b);
        let param_c = |b: u8| unreserved(b) || b"[]/:&+$".contains(&b);
        let hnv_c = |b: u8| unreserved(b) || b"[]/?:+$".contains(&b);
        let uric_c = |b: u8| unreserved(b) || b";/?:@&=+$,".contains(&b);
        // Bytes of `ok` and `%XX` escapes from `i`; None at a bad escape.
        let take = |mut i: usize, ok: &dyn Fn(u8) -> bool| -> Option<usize> {
            while i < s.len() {
                if s[i] == b'%' {
                    let hex = |k: usize| s.get(k).is_some_and(|b| b.is_ascii_hexdigit());
                    if !(hex(i + 1) && hex(i + 2)) {
                        return None;
                    }
                    i += 3;
                } else if ok(s[i]) {
                    i += 1;
                } else {
                    break;
                }
            }
            Some(i)
        };
        let params = |mut i: usize| -> Option<usize> {
            while s.get(i) == Some(&b';') {
                let e = take(i + 1, &param_c)?;
                if e == i + 1 {
                    return None;
                }
                i = e;
                if s.get(i) == Some(&b'=') {
                    let e = take(i + 1, &param_c)?;
                    if e == i + 1 {
                        return None;
                    }
                    i = e;
                }
            }
            Some(i)
        };
        let r = colon + 1;
        match scheme {
            Scheme::Tel => {
                let mut e = r;
                while e < s.len() && (s[e].is_ascii_hexdigit() || b"*#+-.()".contains(&s[e])) {
                    e += 1;
                }
                if e == r || params(e)? != s.len() {
                    return None;
                }
                Some(Uri {
                    scheme,
                    whole: span,
                    user: span.sub(r, e),
                    host: span.sub(e, e),
                    port: None,
                    params: span.sub(e, s.len()),
                })
            }
            Scheme::Other => {
                if take(r, &uric_c)? != s.len() {
                    return None;
                }
                let first = (r..s.len())
                    .find(|k| s[*k] == b';' || s[*k] == b'?')
                    .unwrap_or(s.len());
                let end = (first..s.len()).find(|k| s[*k] == b'?').unwrap_or(s.len());
                (first > r).then(|| Uri {
                    scheme,
                    whole: span,
                    user: span.sub(r, first),
                    host: span.sub(first, first),
                    port: None,
                    params: span.sub(first, end),
                })
            }
            Scheme::Sip | Scheme::Sips => {
                let at = (r..s.len()).find(|k| s[*k] == b'@');
                let (user, hp) = match at {
                    Some(at) => {
                        let ue = take(r, &user_c)?;
                        if ue == r {
                            return None;
                        }
                        if ue != at && (s[ue] != b':' || take(ue + 1, &password_c)? != at) {
                            return None;
                        }
                        (span.sub(r, ue), at + 1)
                    }
                    None => (span.sub(r, r), r),
                };
                let (host, mut i) = if s.get(hp) == Some(&b'[') {
                    let close = (hp..s.len()).find(|k| s[*k] == b']')?;
                    let inner = std::str::from_utf8(&s[hp + 1..close]).ok()?;
                    inner.parse::<std::net::Ipv6Addr>().ok()?;
                    (span.sub(hp + 1, close), close + 1)
                } else {
                    let mut e = hp;
                    while e < s.len() && (s[e].is_ascii_alphanumeric() || b"-.".contains(&s[e])) {
                        e += 1;
                    }
                    if e == hp {
                        return None;
                    }
                    (span.sub(hp, e), e)
                };
                let mut port = None;
                if s.get(i) == Some(&b':') {
                    let mut e = i + 1;
                    while e < s.len() && s[e].is_ascii_digit() {
                        e += 1;
                    }
                    port = Some(parse_port(&s[i + 1..e])?);
                    i = e;
                }
                let ps = i;
                i = params(i)?;
                let pe = i;
                if s.get(i) == Some(&b'?') {
                    loop {
                        let e = take(i + 1, &hnv_c)?;
                        if e == i + 1 || s.get(e) != Some(&b'=') {
                            return None;
                        }
                        i = take(e + 1, &hnv_c)?;
                        if s.get(i) != Some(&b'&') {
                            break;
                        }
                    }
                }
                (i == s.len()).then(|| Uri {
                    scheme,
                    whole: span,
                    user,
                    host,
                    port,
                    params: span.sub(ps, pe),
                })
            }
        }
    }

    /// Every string of up to 5 bytes over the bytes the grammar reacts to
    /// (and of up to 4 over the escape and parameter bytes), behind each
    /// scheme spelling: the fast path returns the same parts.
    #[test]
    fn parse_agrees_with_the_plain_definition() {
        let mut tails = crate::sip::short_strings(b"a:;?@[]15", 5);
        tails.extend(crate::sip::short_strings(b"%=&Fa:;@ ", 4));
        for scheme in [
            &b"sip:"[..],
            b"SiP:",
            b"sips:",
            b"tel:",
            b"x-y:",
            b"",
            b"si:",
            b"sip",
            b"1x:",
        ] {
            for t in &tails {
                let mut s = scheme.to_vec();
                s.extend_from_slice(t);
                let span = Span::new(0, s.len());
                assert_eq!(
                    parse(&s, span),
                    reference_parse(&s, span),
                    "{}",
                    String::from_utf8_lossy(&s)
                );
            }
        }
    }
}
