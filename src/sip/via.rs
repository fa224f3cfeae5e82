//! One Via value (RFC 3261 §20.42, RFC 3581): `SIP/2.0/UDP host:port;params`.
//!
//! The sent-by, `branch`, `received` and `rport` are what a stateless proxy
//! needs to add its own hop and to send responses back along the path.

use super::find_byte2;
use super::params::params;
use super::uri::parse_port;
use super::{find_byte, skip_lws, trim, Span};
use std::net::SocketAddr;

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
    /// `Some(None)`: bare `rport` (RFC 3581 asks us to fill it in).
    pub rport: Option<Option<Span>>,
    /// Position of the bare `rport` name's end, to insert `=port` after it.
    pub rport_end: u32,
}

/// Parse one Via value. `None` when the protocol or sent-by is malformed.
/// Bytes that end a sent-by host: `:` (port), `;` (params), LWS.
static HOST_END: [bool; 256] = {
    let mut t = [false; 256];
    t[b':' as usize] = true;
    t[b';' as usize] = true;
    t[b' ' as usize] = true;
    t[b'\t' as usize] = true;
    t[b'\r' as usize] = true;
    t[b'\n' as usize] = true;
    t
};

pub fn parse(buf: &[u8], value: Span) -> Option<Via> {
    let s = value.get(buf);
    // sent-protocol: SIP / 2.0 / transport, LWS allowed around the slashes.
    // Nearly every Via spells it `SIP/2.0/<transport>`: checked as bytes,
    // the general loop below takes the rest (same spans either way).
    let mut parts = [Span::default(); 3];
    let mut i = if s.len() > 8 && &s[..8] == b"SIP/2.0/" && super::is_token(s[8]) {
        let mut e = 9;
        while e < s.len() && super::is_token(s[e]) {
            e += 1;
        }
        parts = [value.sub(0, 3), value.sub(4, 7), value.sub(8, e)];
        e
    } else {
        sent_protocol(buf, value, &mut parts)?
    };
    i = skip_lws(s, i);
    let hp_start = i;
    let (host, mut j) = if s.get(i) == Some(&b'[') {
        let close = find_byte(b']', &s[i..])? + i;
        (value.sub(i + 1, close), close + 1)
    } else {
        let st = i;
        while i < s.len() && !HOST_END[usize::from(s[i])] {
            i += 1;
        }
        (value.sub(st, i), i)
    };
    if host.is_empty() || hp_start == j {
        return None;
    }
    j = skip_lws(s, j);
    let mut port = None;
    if s.get(j) == Some(&b':') {
        j = skip_lws(s, j + 1);
        let ps = j;
        while j < s.len() && s[j].is_ascii_digit() {
            j += 1;
        }
        port = Some(parse_port(&s[ps..j])?);
    }
    j = skip_lws(s, j);
    if j < s.len() && s[j] != b';' {
        return None;
    }
    let mut via = Via {
        value,
        transport: parts[2],
        host,
        port,
        ..Via::default()
    };
    let rest = value.sub(j, s.len());
    if find_byte2(b'"', b'<', &s[j..]).is_none() {
        // The usual case: no quoted string or URI among the parameters, so
        // a `;` always splits and one plain pass does (callgrind, with the
        // IPv4 fast path of `ip_of`: the shard's 200 OK 9,813 -> 9,215
        // instructions, the INVITE 17,784 -> 17,419).
        plain_params(buf, rest, |name, value| via.param(buf, name, value));
    } else {
        for p in params(buf, rest) {
            via.param(buf, p.name, p.value);
        }
    }
    Some(via)
}

/// The general sent-protocol grammar (LWS around the slashes, any case of
/// `SIP`): fills `parts`, returns where the sent-by starts.
fn sent_protocol(buf: &[u8], value: Span, parts: &mut [Span; 3]) -> Option<usize> {
    let s = value.get(buf);
    let mut i = 0;
    for (n, part) in parts.iter_mut().enumerate() {
        i = skip_lws(s, i);
        let st = i;
        while i < s.len() && super::is_token(s[i]) {
            i += 1;
        }
        if st == i {
            return None;
        }
        *part = value.sub(st, i);
        i = skip_lws(s, i);
        if n < 2 {
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

/// The parameters of `span` (which starts at a `;` or is empty) when it
/// holds no `"` and no `<`: each `;`-separated piece, trimmed, split at its
/// first `=`, both sides trimmed; empty pieces skipped. The same pieces
/// [`params`] yields for such text.
fn plain_params(buf: &[u8], span: Span, mut each: impl FnMut(Span, Option<Span>)) {
    let end = (span.end as usize).min(buf.len());
    let mut k = (span.start as usize).min(end);
    let s = &buf[..end];
    // Two short vector searches per parameter (its end, its `=`) instead
    // of a byte loop over every byte of the values (a branch is ~30 bytes).
    while k < end {
        debug_assert_eq!(buf[k], b';');
        let st = k + 1;
        let e = find_byte(b';', &s[st..]).map_or(end, |p| st + p);
        match find_byte(b'=', &s[st..e]) {
            Some(q) => each(
                trim(buf, Span::new(st, st + q)),
                Some(trim(buf, Span::new(st + q + 1, e))),
            ),
            None => {
                let name = trim(buf, Span::new(st, e));
                if !name.is_empty() {
                    each(name, None);
                }
            }
        }
        k = e;
    }
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
    /// Note one parameter if it is one a stateless proxy needs.
    #[inline]
    fn param(&mut self, buf: &[u8], name: Span, value: Option<Span>) {
        let n = name.get(buf);
        // One compare per parameter: the length picks the candidate.
        match n.len() {
            6 if letters_eq(n, b"branch") => self.branch = value,
            8 if letters_eq(n, b"received") => self.received = value,
            5 if letters_eq(n, b"rport") => {
                self.rport = Some(value);
                self.rport_end = name.end;
            }
            _ => {}
        }
    }
}

impl Via {
    /// Where a response to this hop goes (RFC 3261 §18.2.2 with RFC 3581):
    /// `received` (else the sent-by host, if an IP literal), port from a
    /// valued `rport`, else the sent-by port, else 5060.
    pub fn response_target(&self, buf: &[u8]) -> Option<SocketAddr> {
        let ip = match self.received {
            // RFC 5118 §4.5: an IPv6 `received` may come as a reference.
            Some(r) => super::uri::ip_of(
                r.get(buf)
                    .strip_prefix(b"[")
                    .and_then(|h| h.strip_suffix(b"]"))
                    .unwrap_or(r.get(buf)),
            )?,
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

    #[test]
    fn plain_parameter_pass_agrees_with_the_general_iterator() {
        for s in [
            &b";branch=z9hG4bK1;rport;received=10.0.0.1"[..],
            b"; branch = z9 ;rport= 5060 ; ;x;=v;rport",
            b";;;",
            b";a=b=c;branch=",
            b";\tbranch\t=\tz\t",
            b"",
        ] {
            let mut plain = Vec::new();
            plain_params(s, Span::new(0, s.len()), |n, v| plain.push((n, v)));
            let general: Vec<_> = params(s, Span::new(0, s.len()))
                .map(|p| (p.name, p.value))
                .collect();
            assert_eq!(plain, general, "{}", String::from_utf8_lossy(s));
        }
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
