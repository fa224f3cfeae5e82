//! SIP, SIPS and tel URIs (RFC 3261 §19.1, RFC 3966) as spans, and the
//! address inside a name-addr (`"Name" <uri>;params`) or addr-spec.
//!
//! Only what routing reads is parsed: scheme, user, host, port, URI
//! parameters. Escapes (`%XX`) are kept as written: identities are compared
//! in their on-the-wire form, which is what every hop forwards unchanged.

use super::find_byte2;
use super::hash::StableHash;
use super::params::find_unquoted;
use super::{find_byte, rfind_byte, trim, Span};
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

/// Parse a URI span. `None` when it is not a URI at all (no scheme, bad port,
/// empty host).
pub fn parse(buf: &[u8], span: Span) -> Option<Uri> {
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
    let rest_start = colon + 1;
    // The headers part (`?h=v`) is never routed on. One search finds the
    // first `;` or `?`: the `?` is looked for past a `;` only.
    let rest = &s[rest_start..];
    let (first_semi, end) = match find_byte2(b';', b'?', rest) {
        None => (s.len(), s.len()),
        Some(p) if rest[p] == b'?' => (rest_start + p, rest_start + p),
        Some(p) => {
            let semi = rest_start + p;
            let end = find_byte(b'?', &s[semi..]).map_or(s.len(), |q| semi + q);
            (semi, end)
        }
    };
    if scheme != Scheme::Sip && scheme != Scheme::Sips {
        if first_semi == rest_start {
            return None;
        }
        return Some(Uri {
            scheme,
            whole: span,
            user: span.sub(rest_start, first_semi),
            host: span.sub(first_semi, first_semi),
            port: None,
            params: span.sub(first_semi, end),
        });
    }
    // userinfo ends at the last '@' before any ';' of the uri-parameters.
    let (user, hp_start) = match rfind_byte(b'@', &s[rest_start..first_semi]) {
        Some(at) => {
            let at = rest_start + at;
            // user:password — the password is not part of the identity.
            let ucolon = find_byte(b':', &s[rest_start..at]).map_or(at, |c| rest_start + c);
            (span.sub(rest_start, ucolon), at + 1)
        }
        None => (span.sub(rest_start, rest_start), rest_start),
    };
    let (host, after_host) = if s.get(hp_start) == Some(&b'[') {
        let close = find_byte(b']', &s[hp_start..end])? + hp_start;
        (span.sub(hp_start + 1, close), close + 1)
    } else {
        // No `;` lies before `first_semi`: the host ends at a `:` or there.
        let stop = find_byte(b':', &s[hp_start..first_semi]).map_or(first_semi, |p| hp_start + p);
        (span.sub(hp_start, stop), stop)
    };
    if host.is_empty() {
        return None;
    }
    let mut port = None;
    let mut params_start = after_host;
    if s.get(after_host) == Some(&b':') {
        let pstart = after_host + 1;
        // Past a bracketed host the first `;` may lie before the port.
        let pend = if pstart <= first_semi {
            first_semi
        } else {
            find_byte(b';', &s[pstart..end]).map_or(end, |p| pstart + p)
        };
        port = Some(parse_port(&s[pstart..pend])?);
        params_start = pend;
    }
    if params_start < end && s[params_start] != b';' {
        return None;
    }
    Some(Uri {
        scheme,
        whole: span,
        user,
        host,
        port,
        params: span.sub(params_start, end),
    })
}

/// The scheme of `s` and the index of the colon that ends it.
fn scheme_of(s: &[u8]) -> Option<(Scheme, usize)> {
    let colon = find_byte(b':', s)?;
    let scheme_text = &s[..colon];
    let scheme = if scheme_text.eq_ignore_ascii_case(b"sip") {
        Scheme::Sip
    } else if scheme_text.eq_ignore_ascii_case(b"sips") {
        Scheme::Sips
    } else if scheme_text.eq_ignore_ascii_case(b"tel") {
        Scheme::Tel
    } else if !scheme_text.is_empty()
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
fn canonical_ipv4(h: &[u8]) -> Option<std::net::Ipv4Addr> {
    let mut parts = [0u8; 4];
    let mut n = 0;
    let mut i = 0;
    while i < h.len() {
        if n == 4 {
            return None;
        }
        let st = i;
        let mut v = 0u32;
        while i < h.len() && h[i].is_ascii_digit() && i - st < 3 {
            v = v * 10 + u32::from(h[i] - b'0');
            i += 1;
        }
        let len = i - st;
        if len == 0 || (len > 1 && h[st] == b'0') || v > 255 {
            return None;
        }
        parts[n] = v as u8;
        n += 1;
        if i < h.len() {
            if h[i] != b'.' || n == 4 {
                return None;
            }
            i += 1;
            if i == h.len() {
                return None;
            }
        }
    }
    (n == 4).then(|| std::net::Ipv4Addr::from(parts))
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

    /// The straightforward parser this one replaced (one search per part),
    /// kept as the definition the fast path must agree with.
    fn reference_parse(buf: &[u8], span: Span) -> Option<Uri> {
        let s = span.get(buf);
        let colon = memchr::memchr(b':', s)?;
        let scheme_text = &s[..colon];
        let scheme = if scheme_text.eq_ignore_ascii_case(b"sip") {
            Scheme::Sip
        } else if scheme_text.eq_ignore_ascii_case(b"sips") {
            Scheme::Sips
        } else if scheme_text.eq_ignore_ascii_case(b"tel") {
            Scheme::Tel
        } else if !scheme_text.is_empty()
            && scheme_text
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b))
        {
            Scheme::Other
        } else {
            return None;
        };
        let rest_start = colon + 1;
        // The headers part (`?h=v`) is never routed on.
        let end = memchr::memchr(b'?', &s[rest_start..]).map_or(s.len(), |q| rest_start + q);
        if scheme != Scheme::Sip && scheme != Scheme::Sips {
            let semi = memchr::memchr(b';', &s[rest_start..end]).map_or(end, |p| rest_start + p);
            if semi == rest_start {
                return None;
            }
            return Some(Uri {
                scheme,
                whole: span,
                user: span.sub(rest_start, semi),
                host: span.sub(semi, semi),
                port: None,
                params: span.sub(semi, end),
            });
        }
        // userinfo ends at the last '@' before any ';' of the uri-parameters.
        let first_semi = memchr::memchr(b';', &s[rest_start..end]).map_or(end, |p| rest_start + p);
        let (user, hp_start) = match memchr::memrchr(b'@', &s[rest_start..first_semi]) {
            Some(at) => {
                let at = rest_start + at;
                // user:password — the password is not part of the identity.
                let ucolon =
                    memchr::memchr(b':', &s[rest_start..at]).map_or(at, |c| rest_start + c);
                (span.sub(rest_start, ucolon), at + 1)
            }
            None => (span.sub(rest_start, rest_start), rest_start),
        };
        let (host, after_host) = if s.get(hp_start) == Some(&b'[') {
            let close = memchr::memchr(b']', &s[hp_start..end])? + hp_start;
            (span.sub(hp_start + 1, close), close + 1)
        } else {
            let stop = s[hp_start..end]
                .iter()
                .position(|b| matches!(b, b':' | b';'))
                .map_or(end, |p| hp_start + p);
            (span.sub(hp_start, stop), stop)
        };
        if host.is_empty() {
            return None;
        }
        let mut port = None;
        let mut params_start = after_host;
        if s.get(after_host) == Some(&b':') {
            let pstart = after_host + 1;
            let pend = s[pstart..end]
                .iter()
                .position(|b| *b == b';')
                .map_or(end, |p| pstart + p);
            port = Some(parse_port(&s[pstart..pend])?);
            params_start = pend;
        }
        if params_start < end && s[params_start] != b';' {
            return None;
        }
        Some(Uri {
            scheme,
            whole: span,
            user,
            host,
            port,
            params: span.sub(params_start, end),
        })
    }

    /// Every string of up to 5 bytes over the bytes the grammar reacts to,
    /// behind each scheme spelling: the fast path returns the same parts.
    #[test]
    fn parse_agrees_with_the_plain_definition() {
        let tails = crate::sip::short_strings(b"a:;?@[]15", 5);
        for scheme in [
            &b"sip:"[..],
            b"SiP:",
            b"sips:",
            b"tel:",
            b"x-y:",
            b"",
            b"si:",
            b"sip",
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
