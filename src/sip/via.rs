//! One Via value (RFC 3261 §20.42, RFC 3581): `SIP/2.0/UDP host:port;params`.
//!
//! The sent-by, `branch`, `received` and `rport` are what a stateless proxy
//! needs to add its own hop and to send responses back along the path.

use super::params::{generic_params, is_ipv6, run, DIGIT, HOST, TOKEN, VIA_VALUE};
use super::uri::parse_port;
use super::{find_byte, skip_lws, Span};
use std::net::{IpAddr, SocketAddr};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Via {
    /// The whole value (from `SIP/2.0/` to the end of its parameters).
    pub value: Span,
    pub transport: Span,
    /// Host without brackets for IPv6.
    pub host: Span,
    pub port: Option<u16>,
    pub branch: Option<Span>,
    pub received: Option<Span>,
    /// The address `received` names (read once, where it is checked).
    pub received_addr: Option<IpAddr>,
    /// `Some(None)`: bare `rport` (RFC 3581 asks us to fill it in).
    pub rport: Option<Option<Span>>,
    /// Position of the bare `rport` name's end, to insert `=port` after it.
    pub rport_end: u32,
}

/// Parse one Via value: `sent-protocol LWS sent-by *( SEMI via-params )`
/// (RFC 3261 §25.1, `rport` of RFC 3581). `None` unless the whole value is
/// well formed: the edge splices `received`/`rport` into the value it
/// returns, so a value it cannot read to its end (an empty parameter, a
/// trailing `;`, a host that is not a host) is refused, never edited.
/// Each run of bytes is checked by its class as it is stepped over.
pub fn parse(buf: &[u8], value: Span) -> Option<Via> {
    parse_plain(buf, value).or_else(|| parse_general(buf, value))
}

/// The shape nearly every Via has, `SIP/2.0/<transport> <host>[:<port>]`
/// and parameters with no LWS, quote, bracket or IPv6 address in them,
/// read in one loop with no LWS skipping and no general value grammar
/// (callgrind: the general parser alone cost ~1,100 instructions a Via,
/// this ~300). `None` for any other shape, well formed or not: the
/// general parser then judges the value from its start.
#[inline(always)]
fn parse_plain(buf: &[u8], value: Span) -> Option<Via> {
    let s = value.get(buf);
    if s.len() <= 8 || &s[..8] != b"SIP/2.0/" {
        return None;
    }
    let t = run(s, 8, TOKEN);
    if t == 8 || s.get(t) != Some(&b' ') {
        return None;
    }
    let h = run(s, t + 1, HOST);
    if h == t + 1 {
        return None;
    }
    let mut i = h;
    let mut port = None;
    if s.get(i) == Some(&b':') {
        i = run(s, h + 1, DIGIT);
        port = Some(parse_port(&s[h + 1..i])?);
    }
    let mut via = Via {
        value,
        transport: value.sub(8, t),
        host: value.sub(t + 1, h),
        port,
        ..Via::default()
    };
    while i < s.len() {
        if s[i] != b';' {
            return None;
        }
        let n0 = i + 1;
        let n1 = run(s, n0, TOKEN);
        let v = if s.get(n1) == Some(&b'=') {
            i = run(s, n1 + 1, TOKEN);
            (i > n1 + 1).then_some((n1 + 1, i))
        } else {
            i = n1;
            None
        };
        if n1 == n0 || (v.is_none() && i > n1) || !via.param(s, value, (n0, n1), v, true) {
            return None;
        }
    }
    Some(via)
}

/// [`parse`] for any shape: LWS around every separator, quoted and IPv6
/// values, the sent-protocol in any case.
#[cold]
fn parse_general(buf: &[u8], value: Span) -> Option<Via> {
    let s = value.get(buf);
    // sent-protocol: SIP / 2.0 / transport, LWS allowed around the slashes.
    // Nearly every Via spells it `SIP/2.0/<transport>`: checked as bytes,
    // the general loop below takes the rest (same spans either way).
    let mut parts = [Span::default(); 3];
    let i = if s.len() > 8 && &s[..8] == b"SIP/2.0/" && super::is_token(s[8]) {
        let e = run(s, 9, TOKEN);
        parts = [value.sub(0, 3), value.sub(4, 7), value.sub(8, e)];
        e
    } else {
        sent_protocol(buf, value, &mut parts)?
    };
    let mut j = skip_lws(s, i);
    if j == i {
        return None;
    }
    let host = if s.get(j) == Some(&b'[') {
        let close = j + find_byte(b']', &s[j..])?;
        if !is_ipv6(&s[j + 1..close]) {
            return None;
        }
        let h = value.sub(j + 1, close);
        j = close + 1;
        h
    } else {
        let e = run(s, j, HOST);
        if e == j {
            return None;
        }
        let h = value.sub(j, e);
        j = e;
        h
    };
    // sent-by = host [ COLON port ], COLON = SWS ":" SWS.
    let c = skip_lws(s, j);
    let mut port = None;
    if s.get(c) == Some(&b':') {
        let p0 = skip_lws(s, c + 1);
        j = run(s, p0, DIGIT);
        port = Some(parse_port(&s[p0..j])?);
    }
    let mut via = Via {
        value,
        transport: parts[2],
        host,
        port,
        ..Via::default()
    };
    generic_params(s, j, VIA_VALUE, |name, v| {
        via.param(s, value, name, v, false)
    })
    .then_some(via)
}

/// The general sent-protocol grammar (LWS around the slashes, any case of
/// `SIP`): fills `parts`, returns where the sent-by starts.
fn sent_protocol(buf: &[u8], value: Span, parts: &mut [Span; 3]) -> Option<usize> {
    let s = value.get(buf);
    let mut i = 0;
    for (n, part) in parts.iter_mut().enumerate() {
        i = skip_lws(s, i);
        let st = i;
        i = run(s, i, TOKEN);
        if st == i {
            return None;
        }
        *part = value.sub(st, i);
        if n < 2 {
            i = skip_lws(s, i);
            if s.get(i) != Some(&b'/') {
                return None;
            }
            i += 1;
        }
    }
    if !parts[0].get(buf).eq_ignore_ascii_case(b"SIP") || parts[1].get(buf) != b"2.0" {
        return None;
    }
    Some(i)
}

/// `n` equals `lower` (4 to 8 lowercase letters, the same length as `n`)
/// in any case: two overlapping 4-byte words, OR 0x20 folding exactly the
/// case of a letter.
#[inline(always)]
fn letters_eq(n: &[u8], lower: &[u8]) -> bool {
    debug_assert!(n.len() == lower.len() && (4..=8).contains(&n.len()));
    let word = |s: &[u8]| {
        let k = s.len();
        u64::from(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
            | u64::from(u32::from_le_bytes([s[k - 4], s[k - 3], s[k - 2], s[k - 1]])) << 32
    };
    word(n) | 0x2020_2020_2020_2020 == word(lower)
}

impl Via {
    /// Note one parameter (`name`, `v`: offsets into `s`, the text of
    /// `value`; `token`: `v` is known to be a token) if it is one a
    /// stateless proxy reads, and check its value against its own grammar:
    /// false refuses the Via.
    #[inline(always)]
    fn param(
        &mut self,
        s: &[u8],
        value: Span,
        (n0, n1): (usize, usize),
        v: Option<(usize, usize)>,
        token: bool,
    ) -> bool {
        let n = &s[n0..n1];
        // One compare per parameter: the length picks the candidate.
        match n.len() {
            // via-branch = "branch" EQUAL token
            6 if letters_eq(n, b"branch") => match v {
                Some((a, b)) if token || run(s, a, TOKEN) == b => {
                    self.branch = Some(value.sub(a, b))
                }
                _ => return false,
            },
            // via-received = "received" EQUAL (IPv4address / IPv6address),
            // the IPv6 form also as a reference (RFC 5118 §4.5).
            8 if letters_eq(n, b"received") => {
                match v.and_then(|(a, b)| Some((a, b, received_ip(&s[a..b])?))) {
                    Some((a, b, ip)) => {
                        self.received = Some(value.sub(a, b));
                        self.received_addr = Some(ip);
                    }
                    None => return false,
                }
            }
            // response-port = "rport" [EQUAL 1*DIGIT]
            5 if letters_eq(n, b"rport") => {
                match v {
                    None => self.rport = Some(None),
                    Some((a, b)) if run(s, a, DIGIT) == b => {
                        self.rport = Some(Some(value.sub(a, b)))
                    }
                    Some(_) => return false,
                }
                self.rport_end = value.start + n1 as u32;
            }
            _ => {}
        }
        true
    }
}

/// The address of a `received` value: an IP address, IPv6 bracketed
/// (RFC 5118 §4.5) or not.
#[inline]
fn received_ip(v: &[u8]) -> Option<IpAddr> {
    match v.strip_prefix(b"[").and_then(|h| h.strip_suffix(b"]")) {
        Some(inner) => super::uri::ip_of(inner).filter(IpAddr::is_ipv6),
        None => super::uri::ip_of(v),
    }
}

impl Via {
    /// The sent-by as an address, when its host is an IP literal (its
    /// port, else `default_port`).
    pub fn sent_by(&self, buf: &[u8], default_port: u16) -> Option<SocketAddr> {
        let ip = super::uri::ip_of(self.host.get(buf))?;
        Some(SocketAddr::new(ip, self.port.unwrap_or(default_port)))
    }

    /// Where a response to this hop goes (RFC 3261 §18.2.2 with RFC 3581):
    /// `received` (else the sent-by host, if an IP literal), port from a
    /// valued `rport`, else the sent-by port, else 5060.
    pub fn response_target(&self, buf: &[u8]) -> Option<SocketAddr> {
        let ip = match self.received_addr {
            Some(ip) => ip,
            None => super::uri::ip_of(self.host.get(buf))?,
        };
        let port = match self.rport {
            Some(Some(p)) => parse_port(p.get(buf))?,
            _ => self.port.unwrap_or(5060),
        };
        Some(SocketAddr::new(ip, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::params::params;

    #[test]
    fn parses_sent_by_and_params() {
        let s = b"SIP/2.0/UDP 192.0.2.4:5062;branch=z9hG4bK77;rport;received=10.0.0.1";
        let v = parse(s, Span::new(0, s.len())).unwrap();
        assert_eq!(v.transport.get(s), b"UDP");
        assert_eq!(v.host.get(s), b"192.0.2.4");
        assert_eq!(v.port, Some(5062));
        assert_eq!(v.branch.unwrap().get(s), b"z9hG4bK77");
        assert_eq!(v.rport, Some(None));
        assert_eq!(
            &s[..v.rport_end as usize],
            b"SIP/2.0/UDP 192.0.2.4:5062;branch=z9hG4bK77;rport"
        );
        assert_eq!(v.response_target(s), Some("10.0.0.1:5062".parse().unwrap()));
        assert_eq!(v.sent_by(s, 5061), Some("192.0.2.4:5062".parse().unwrap()));
    }

    #[test]
    fn lws_ipv6_and_rport_value() {
        let s = b"SIP / 2.0 / UDP [2001:db8::9] : 5070 ;rport=4000";
        let v = parse(s, Span::new(0, s.len())).unwrap();
        assert_eq!(v.host.get(s), b"2001:db8::9");
        assert_eq!(
            v.response_target(s),
            Some("[2001:db8::9]:4000".parse().unwrap())
        );
    }

    /// The plain definition of a well-formed parameter list after the
    /// sent-by (no `\\` in the alphabet): every `;`-separated piece
    /// outside quotes non-empty, a token name, an optional `=` and a value
    /// that is a quoted string or a run of token characters and `:`; a
    /// `branch` with a token, an `rport` bare or with digits.
    fn reference_params_ok(p: &[u8]) -> bool {
        let mut pieces = Vec::new();
        let (mut start, mut quoted) = (0, false);
        for (i, b) in p.iter().enumerate() {
            match b {
                b'"' => quoted = !quoted,
                b';' if !quoted => {
                    pieces.push(&p[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        if quoted {
            return false;
        }
        pieces.push(&p[start..]);
        let trim = |s: &[u8]| {
            let t = String::from_utf8_lossy(s);
            t.trim_matches(|c| " \t".contains(c)).as_bytes().to_vec()
        };
        let token = |s: &[u8]| !s.is_empty() && s.iter().all(|b| super::super::is_token(*b));
        if !trim(pieces[0]).is_empty() {
            return false;
        }
        pieces[1..].iter().all(|piece| {
            let (name, value) = match piece.iter().position(|b| *b == b'=') {
                Some(e) => (trim(&piece[..e]), Some(trim(&piece[e + 1..]))),
                None => (trim(piece), None),
            };
            // The parameters the edge reads have their own grammar.
            let known = match name.to_ascii_lowercase().as_slice() {
                b"branch" => value.as_ref().is_some_and(|v| token(v)),
                b"rport" => value
                    .as_ref()
                    .is_none_or(|v| !v.is_empty() && v.iter().all(u8::is_ascii_digit)),
                _ => true,
            };
            token(&name)
                && known
                && value.is_none_or(|v| {
                    let q = v.len() >= 2 && v[0] == b'"' && v[v.len() - 1] == b'"';
                    let inner_ok = q && !v[1..v.len() - 1].contains(&b'"');
                    inner_ok
                        || (!v.is_empty()
                            && v.iter().all(|b| super::super::is_token(*b) || *b == b':'))
                })
        })
    }

    /// Every short parameter text over the bytes the parameter grammar
    /// reacts to: the Via parses exactly when the plain definition says the
    /// list is well formed (an empty parameter, `;;` or a trailing `;`, is
    /// not: the edge would splice `received` into it), and then reads the
    /// `branch` and `rport` the general iterator finds.
    #[test]
    fn parameters_are_read_only_from_a_well_formed_list() {
        let tails = crate::sip::short_strings(b";= \"b:", 6);
        let names = [&b"branch"[..], b"rport", b"x"];
        for t in &tails {
            for name in names {
                // The tail around a known name, so values land on it.
                let mut list = b";".to_vec();
                list.extend_from_slice(name);
                list.extend_from_slice(t);
                let mut s = b"SIP/2.0/UDP h".to_vec();
                s.extend_from_slice(&list);
                let shown = String::from_utf8_lossy(&s).into_owned();
                let v = parse(&s, Span::new(0, s.len()));
                assert_eq!(v.is_some(), reference_params_ok(&list), "{shown}");
                let Some(v) = v else { continue };
                let span = Span::new(13, s.len());
                let last = |n: &[u8]| {
                    params(&s, span)
                        .filter(|p| p.name.get(&s).eq_ignore_ascii_case(n))
                        .last()
                };
                assert_eq!(v.branch, last(b"branch").and_then(|p| p.value), "{shown}");
                assert_eq!(v.rport, last(b"rport").map(|p| p.value), "{shown}");
            }
        }
        for s in [
            &b"SIP/2.0/UDP 192.0.2.1;;branch=z9hG4bK1"[..],
            b"SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1;",
            b"SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1; ",
            b"SIP/2.0/UDP 192.0.2.15;;",
            b"SIP/2.0/UDP 192.0.2.1;branch",
            b"SIP/2.0/UDP 192.0.2.1;branch=\"q\"",
            b"SIP/2.0/UDP 192.0.2.1;received=host.example.com",
            b"SIP/2.0/UDP 192.0.2.1;received",
            b"SIP/2.0/UDP 192.0.2.1;rport=x1",
            b"SIP/2.0/UDP 192.0.2.1;a=b=c",
        ] {
            assert!(
                parse(s, Span::new(0, s.len())).is_none(),
                "{}",
                String::from_utf8_lossy(s)
            );
        }
        for s in [
            &b"SIP/2.0/UDP 192.0.2.1 ; branch = z9hG4bK1 ; rport ; received = 10.0.0.1"[..],
            b"SIP/2.0/UDP 192.0.2.1;received=2001:db8::2;rport=5060",
            b"SIP/2.0/UDP 192.0.2.1;received=[2001:db8::2]",
            b"SIP/2.0/UDP 192.0.2.1;maddr=[2001:db8::2];x=\"a;b\\\"c\";ttl=1",
        ] {
            assert!(
                parse(s, Span::new(0, s.len())).is_some(),
                "{}",
                String::from_utf8_lossy(s)
            );
        }
    }

    #[test]
    fn a_flag_parameter_is_found_in_any_case_and_only_as_a_name() {
        use crate::sip::params::find_param;
        let has = |b: &[u8], name: &[u8]| find_param(b, Span::new(0, b.len()), name).is_some();
        let b = b"SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bKa;ALIAS;x=alias";
        assert!(has(b, b"alias"));
        assert!(has(b, b"branch"));
        assert!(!has(b, b"rport"));
        let b = b"SIP/2.0/TLS 10.0.0.1:5061;branch=alias";
        assert!(!has(b, b"alias"));
    }

    #[test]
    fn parameter_names_match_in_any_case_only() {
        for name in [&b"branch"[..], b"received", b"rport"] {
            for i in 0..name.len() {
                for b in 0..=255u8 {
                    let mut n = name.to_vec();
                    n[i] = b;
                    assert_eq!(letters_eq(&n, name), n.eq_ignore_ascii_case(name), "{n:?}");
                }
            }
        }
    }

    #[test]
    fn rejects_bad_vias() {
        for s in [
            &b"SIP/2.0 host"[..],
            b"SIP/3.0/UDP h",
            b"SIP/2.0/UDP",
            b"SIP/2.0/UDP h:0",
            b"SIP/2.0/UDP h x",
        ] {
            assert!(
                parse(s, Span::new(0, s.len())).is_none(),
                "{}",
                String::from_utf8_lossy(s)
            );
        }
    }
}
