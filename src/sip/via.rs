//! One Via value (RFC 3261 §20.42, RFC 3581): `SIP/2.0/UDP host:port;params`.
//!
//! The sent-by, `branch`, `received` and `rport` are what a stateless proxy
//! needs to add its own hop and to send responses back along the path.

use super::params::params;
use super::uri::parse_port;
use super::{is_lws, Span};
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
pub fn parse(buf: &[u8], value: Span) -> Option<Via> {
    let s = value.get(buf);
    // sent-protocol: SIP / 2.0 / transport, LWS allowed around the slashes.
    let mut i = 0;
    let mut parts = [Span::default(); 3];
    for (n, part) in parts.iter_mut().enumerate() {
        while i < s.len() && is_lws(s[i]) {
            i += 1;
        }
        let st = i;
        while i < s.len() && super::is_token(s[i]) {
            i += 1;
        }
        if st == i {
            return None;
        }
        *part = value.sub(st, i);
        while i < s.len() && is_lws(s[i]) {
            i += 1;
        }
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
    let hp_start = i;
    let (host, mut j) = if s.get(i) == Some(&b'[') {
        let close = memchr::memchr(b']', &s[i..])? + i;
        (value.sub(i + 1, close), close + 1)
    } else {
        let st = i;
        while i < s.len() && !matches!(s[i], b':' | b';') && !is_lws(s[i]) {
            i += 1;
        }
        (value.sub(st, i), i)
    };
    if host.is_empty() || hp_start == j {
        return None;
    }
    while j < s.len() && is_lws(s[j]) {
        j += 1;
    }
    let mut port = None;
    if s.get(j) == Some(&b':') {
        j += 1;
        while j < s.len() && is_lws(s[j]) {
            j += 1;
        }
        let ps = j;
        while j < s.len() && s[j].is_ascii_digit() {
            j += 1;
        }
        port = Some(parse_port(&s[ps..j])?);
    }
    while j < s.len() && is_lws(s[j]) {
        j += 1;
    }
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
    for p in params(buf, value.sub(j, s.len())) {
        let name = p.name.get(buf);
        if name.eq_ignore_ascii_case(b"branch") {
            via.branch = p.value;
        } else if name.eq_ignore_ascii_case(b"received") {
            via.received = p.value;
        } else if name.eq_ignore_ascii_case(b"rport") {
            via.rport = Some(p.value);
            via.rport_end = p.name.end;
        }
    }
    Some(via)
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
