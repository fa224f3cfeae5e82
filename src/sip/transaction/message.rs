//! The messages the transaction layer writes itself, and the response
//! builder its users share: responses to a request (§8.2.6), the ACK of a
//! non-2xx final (§17.1.1.3), the CANCEL of an INVITE (§9.1), generated
//! branches, and where a response goes (§18.2.2, RFC 3581).
//!
//! Everything writes into a caller's buffer through [`Out`]: output that
//! does not fit is `None`, never truncated.

use crate::sip::rewrite::Out;
use crate::sip::scan::{header_lines, Header, Message, StartLine};
use crate::sip::uri::ip_of;
use crate::sip::via::Via;
use crate::sip::Span;
use siphasher::sip::SipHasher13;
use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};

/// RFC 3261 §8.1.1.7: every branch of an RFC 3261 element starts so.
pub const MAGIC_COOKIE: &[u8] = b"z9hG4bK";

/// Max-Forwards of the requests written here (§8.1.1.6 recommends 70).
pub const MAX_FORWARDS: u32 = 70;

/// A generated branch: the magic cookie and 16 hex digits of a keyed hash of
/// a counter, unique per table and not guessable without the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Branch([u8; 7 + 16]);

impl Branch {
    pub(super) fn new(key: [u64; 2], counter: u64) -> Branch {
        let mut h = SipHasher13::new_with_keys(key[0], key[1]);
        h.write_u64(counter);
        let mut b = [0u8; 23];
        b[..7].copy_from_slice(MAGIC_COOKIE);
        crate::sip::hash::hex_into(h.finish(), &mut b[7..]);
        Branch(b)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Where a response to a request from `source` with top Via `via` goes over
/// UDP: the source address itself when the Via asks for `rport` (RFC 3581),
/// else the source IP (what `received` would say) at the sent-by port
/// (§18.2.2). `maddr` (multicast) is not supported.
pub fn response_destination(via: &Via, source: SocketAddr) -> SocketAddr {
    if via.rport.is_some() {
        return source;
    }
    SocketAddr::new(source.ip(), via.port.unwrap_or(5060))
}

/// What a response says beyond what it copies from its request.
#[derive(Clone, Copy, Debug)]
pub struct ResponseSpec<'a> {
    pub code: u16,
    pub reason: &'a str,
    /// The To tag to add when the request's To has none (§8.2.6.2). A 100
    /// Trying gets none (§17.2.1).
    pub to_tag: Option<&'a [u8]>,
    /// Copy the request's Record-Route: a response that creates a dialog
    /// must (§12.1.1).
    pub record_route: bool,
    /// A Contact value (`<sip:...>`), for dialog-creating responses.
    pub contact: Option<&'a [u8]>,
    /// More header lines, each ending in CRLF.
    pub headers: &'a [&'a [u8]],
    /// The body; its Content-Type belongs in `headers`.
    pub body: &'a [u8],
}

impl<'a> ResponseSpec<'a> {
    /// A bodiless response with nothing added: no tag, no Contact.
    pub fn new(code: u16, reason: &'a str) -> ResponseSpec<'a> {
        ResponseSpec {
            code,
            reason,
            to_tag: None,
            record_route: false,
            contact: None,
            headers: &[],
            body: &[],
        }
    }
}

/// Write the response `spec` to the request `buf` (scanned as `m`) into
/// `out` (§8.2.6.2): every Via (the top one marked with `received` and the
/// `rport` value when `source` is given, §18.2.1, RFC 3581), From, To (with
/// the tag), Call-ID, CSeq, Timestamp for a 100 (§8.2.6.1), Record-Route
/// when asked, then what `spec` adds. `None` when `m` is no request or the
/// response does not fit.
pub fn write_response(
    buf: &[u8],
    m: &Message,
    source: Option<SocketAddr>,
    spec: &ResponseSpec<'_>,
    out: &mut [u8],
) -> Option<usize> {
    if !m.is_request() || !(100..=699).contains(&spec.code) {
        return None;
    }
    let mut o = Out::new(out);
    o.put(b"SIP/2.0 ");
    o.put_u32(u32::from(spec.code));
    o.put(b" ");
    o.put(spec.reason.as_bytes());
    o.put(b"\r\n");
    copy_response_headers(buf, m, source, spec, &mut o);
    if let Some(c) = spec.contact {
        o.put(b"Contact: ");
        o.put(c);
        o.put(b"\r\n");
    }
    o.finish_with_body(spec.headers, spec.body)
}

/// The headers a response copies from its request, in the request's order.
fn copy_response_headers(
    buf: &[u8],
    m: &Message,
    source: Option<SocketAddr>,
    spec: &ResponseSpec<'_>,
    o: &mut Out<'_>,
) {
    for h in header_lines(buf, m.headers) {
        let line = without_eol(buf, h.line);
        match h.kind {
            Header::Via if h.line == m.top_via_line => match (source, m.top_via.as_ref()) {
                (Some(src), Some(via)) => put_marked_via(buf, line, via, src, o),
                _ => o.put(line.get(buf)),
            },
            Header::To => match spec.to_tag.filter(|_| m.to_tag.is_none()) {
                Some(tag) => put_tagged(buf, line, h.value, tag, o),
                None => o.put(line.get(buf)),
            },
            Header::Via | Header::From | Header::CallId | Header::CSeq => o.put(line.get(buf)),
            Header::RecordRoute if spec.record_route => o.put(line.get(buf)),
            Header::Other if spec.code == 100 && is_timestamp(buf, h.name) => o.put(line.get(buf)),
            _ => continue,
        }
        o.put(b"\r\n");
    }
}

fn is_timestamp(buf: &[u8], name: Span) -> bool {
    name.get(buf).eq_ignore_ascii_case(b"Timestamp")
}

/// The To line with `;tag=` added after its value.
fn put_tagged(buf: &[u8], line: Span, value: Span, tag: &[u8], o: &mut Out<'_>) {
    // An empty value's span can sit past the line's end.
    let v_end = (value.end as usize).clamp(line.start as usize, line.end as usize);
    o.put(&buf[line.start as usize..v_end]);
    o.put(b";tag=");
    o.put(tag);
    o.put(&buf[v_end..line.end as usize]);
}

/// The top Via line with the bare `rport` given the source port and
/// `received` added when the sent-by is not the source IP or `rport` asked
/// for it (RFC 3581 §4). A `received` already there is left alone.
fn put_marked_via(buf: &[u8], line: Span, via: &Via, source: SocketAddr, o: &mut Out<'_>) {
    let (start, end) = (line.start as usize, line.end as usize);
    let value_end = (via.value.end as usize).clamp(start, end);
    let mut at = start;
    if via.rport == Some(None) {
        let p = (via.rport_end as usize).clamp(start, value_end);
        o.put(&buf[at..p]);
        o.put(b"=");
        o.put_u32(u32::from(source.port()));
        at = p;
    }
    o.put(&buf[at..value_end]);
    let same_host = ip_of(via.host.get(buf)) == Some(source.ip());
    if via.received.is_none() && (via.rport.is_some() || !same_host) {
        o.put(b";received=");
        put_ip(source.ip(), o);
    }
    o.put(&buf[value_end..end]);
}

fn put_ip(ip: IpAddr, o: &mut Out<'_>) {
    use std::io::Write as _;
    let mut text = [0u8; 48];
    let mut cur = std::io::Cursor::new(&mut text[..]);
    // 48 bytes hold any IPv6 text (at most 45): the write cannot fail.
    let _ = write!(cur, "{ip}");
    let n = cur.position() as usize;
    o.put(&text[..n]);
}

/// A header line without its CRLF (or the bare LF of a tolerated line).
pub(super) fn without_eol(buf: &[u8], line: Span) -> Span {
    let s = line.get(buf);
    let n = usize::from(s.ends_with(b"\n")) + usize::from(s.ends_with(b"\r\n"));
    line.sub(0, s.len() - n)
}

/// The ACK of a non-2xx final response `resp` to our INVITE (§17.1.1.3):
/// the INVITE's Request-URI, top Via (so its branch), Route, From, Call-ID
/// and CSeq number, the response's To (with its tag).
pub(super) fn write_ack(
    invite: &[u8],
    im: &Message,
    resp: &[u8],
    rm: &Message,
    out: &mut [u8],
) -> Option<usize> {
    write_echo(invite, im, b"ACK", rm.to.get(resp), out)
}

/// The CANCEL of our INVITE (§9.1): as the ACK, with the INVITE's To.
pub(super) fn write_cancel(invite: &[u8], im: &Message, out: &mut [u8]) -> Option<usize> {
    write_echo(invite, im, b"CANCEL", im.to.get(invite), out)
}

/// A request that repeats an INVITE's identity under another method.
fn write_echo(
    invite: &[u8],
    im: &Message,
    method: &[u8],
    to: &[u8],
    out: &mut [u8],
) -> Option<usize> {
    let StartLine::Request { uri, .. } = im.start else {
        return None;
    };
    let via = im.top_via.as_ref()?;
    let mut o = Out::new(out);
    o.put(method);
    o.put(b" ");
    o.put(uri.get(invite));
    o.put(b" SIP/2.0\r\nVia: ");
    o.put(via.value.get(invite));
    o.put(b"\r\n");
    for h in header_lines(invite, im.headers) {
        if matches!(h.kind, Header::Route | Header::From | Header::CallId) {
            o.put(without_eol(invite, h.line).get(invite));
            o.put(b"\r\n");
        }
    }
    o.put(b"To: ");
    o.put(to);
    o.put(b"\r\nCSeq: ");
    o.put_u32(im.cseq_num);
    o.put(b" ");
    o.put(method);
    o.put(b"\r\nMax-Forwards: ");
    o.put_u32(MAX_FORWARDS);
    o.put(b"\r\nContent-Length: 0\r\n\r\n");
    o.finish()
}

/// Room for what the writers above add to the bytes they copy: start line,
/// Via marks, the fixed headers (well under this).
pub(super) const BUILD_SLACK: usize = 256;

/// Run a writer on a fresh buffer of `cap` bytes; the bytes it wrote.
pub(super) fn build(cap: usize, write: impl FnOnce(&mut [u8]) -> Option<usize>) -> Option<Vec<u8>> {
    let mut v = vec![0u8; cap];
    let n = write(&mut v)?;
    v.truncate(n);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::scan::scan;

    const INVITE: &[u8] = b"INVITE sip:bob@b.example SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bKaaa;rport\r\n\
        Via: SIP/2.0/UDP proxy.example;branch=z9hG4bKbbb\r\n\
        Max-Forwards: 69\r\n\
        Route: <sip:p1.example;lr>\r\n\
        Record-Route: <sip:rr.example;lr>\r\n\
        From: Alice <sip:alice@a.example>;tag=fa\r\n\
        To: Bob <sip:bob@b.example>\r\n\
        Call-ID: call-1\r\n\
        CSeq: 7 INVITE\r\n\
        Timestamp: 54\r\n\
        Contact: <sip:alice@192.0.2.1:5070>\r\n\
        Content-Length: 0\r\n\r\n";

    fn text(v: &[u8]) -> String {
        String::from_utf8_lossy(v).into_owned()
    }

    fn respond(spec: &ResponseSpec<'_>, src: Option<SocketAddr>) -> String {
        let m = scan(INVITE);
        let mut out = [0u8; 2048];
        let n = write_response(INVITE, &m, src, spec, &mut out).expect("fits");
        let r = scan(&out[..n]);
        assert_eq!(r.defect, None, "{}", text(&out[..n]));
        text(&out[..n])
    }

    /// A 100 Trying copies the Vias (the top one marked), From, To without a
    /// tag, Call-ID, CSeq and Timestamp, and nothing else.
    #[test]
    fn trying_copies_the_identity_and_marks_the_top_via() {
        let src: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let r = respond(&ResponseSpec::new(100, "Trying"), Some(src));
        assert_eq!(
            r,
            "SIP/2.0 100 Trying\r\n\
             Via: SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bKaaa;rport=40000;received=198.51.100.7\r\n\
             Via: SIP/2.0/UDP proxy.example;branch=z9hG4bKbbb\r\n\
             From: Alice <sip:alice@a.example>;tag=fa\r\n\
             To: Bob <sip:bob@b.example>\r\n\
             Call-ID: call-1\r\n\
             CSeq: 7 INVITE\r\n\
             Timestamp: 54\r\n\
             Content-Length: 0\r\n\r\n"
        );
    }

    /// A dialog-creating 200 adds the To tag, keeps Record-Route, adds
    /// Contact, extra headers and a body with its length; no Timestamp.
    #[test]
    fn a_dialog_creating_response_has_tag_record_route_contact_and_body() {
        let spec = ResponseSpec {
            to_tag: Some(b"tb"),
            record_route: true,
            contact: Some(b"<sip:bob@192.0.2.2>"),
            headers: &[b"Content-Type: text/plain\r\n"],
            body: b"hello",
            ..ResponseSpec::new(200, "OK")
        };
        let r = respond(&spec, None);
        assert!(
            r.contains("\r\nTo: Bob <sip:bob@b.example>;tag=tb\r\n"),
            "{r}"
        );
        assert!(
            r.contains("\r\nRecord-Route: <sip:rr.example;lr>\r\n"),
            "{r}"
        );
        assert!(r.contains("\r\nContact: <sip:bob@192.0.2.2>\r\n"), "{r}");
        assert!(r.contains("\r\nVia: SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bKaaa;rport\r\n"));
        assert!(r.ends_with("Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"));
        assert!(
            !r.contains("Timestamp") && !r.contains("Route: <sip:p1"),
            "{r}"
        );
    }

    /// A sent-by that is the source IP gets no `received`; one that is not
    /// does, even without `rport`.
    #[test]
    fn received_is_added_only_when_the_sent_by_differs() {
        let m_same =
            b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bKq\r\n\
            From: <sip:a@a>;tag=1\r\nTo: <sip:b@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n";
        let m = scan(m_same);
        let mut out = [0u8; 1024];
        for (src, want) in [
            ("192.0.2.1:5070", "branch=z9hG4bKq\r\n"),
            ("192.0.2.9:5070", "branch=z9hG4bKq;received=192.0.2.9\r\n"),
            (
                "[2001:db8::1]:5070",
                "branch=z9hG4bKq;received=2001:db8::1\r\n",
            ),
        ] {
            let src: SocketAddr = src.parse().unwrap();
            let spec = ResponseSpec::new(200, "OK");
            let n = write_response(m_same, &m, Some(src), &spec, &mut out).unwrap();
            assert!(text(&out[..n]).contains(want), "{}", text(&out[..n]));
        }
    }

    /// With two values on the top Via line, `received` goes after the
    /// first value, inside the line, and the second value is copied as is.
    #[test]
    fn only_the_top_via_value_is_marked() {
        let req = b"OPTIONS sip:x SIP/2.0\r\n\
            Via: SIP/2.0/UDP a.example;branch=z9hG4bK1, SIP/2.0/UDP b.example;branch=z9hG4bK2\r\n\
            From: <sip:a@a>;tag=1\r\nTo: <sip:b@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n";
        let m = scan(req);
        let mut out = [0u8; 1024];
        let src: SocketAddr = "192.0.2.9:5060".parse().unwrap();
        let spec = ResponseSpec::new(200, "OK");
        let n = write_response(req, &m, Some(src), &spec, &mut out).unwrap();
        assert!(
            text(&out[..n]).contains(
                "\r\nVia: SIP/2.0/UDP a.example;branch=z9hG4bK1;received=192.0.2.9, \
                 SIP/2.0/UDP b.example;branch=z9hG4bK2\r\n"
            ),
            "{}",
            text(&out[..n])
        );
    }

    /// §17.1.1.3: the ACK keeps the INVITE's Request-URI, top Via alone,
    /// Route, From, Call-ID and CSeq number; its To is the response's.
    #[test]
    fn the_ack_of_a_non_2xx_echoes_the_invite_and_the_response_to() {
        let resp =
            b"SIP/2.0 486 Busy Here\r\nVia: SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bKaaa\r\n\
            From: Alice <sip:alice@a.example>;tag=fa\r\nTo: Bob <sip:bob@b.example>;tag=tb\r\n\
            Call-ID: call-1\r\nCSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n";
        let mut out = [0u8; 1024];
        let n = write_ack(INVITE, &scan(INVITE), resp, &scan(resp), &mut out).unwrap();
        assert_eq!(
            text(&out[..n]),
            "ACK sip:bob@b.example SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bKaaa;rport\r\n\
             Route: <sip:p1.example;lr>\r\n\
             From: Alice <sip:alice@a.example>;tag=fa\r\n\
             Call-ID: call-1\r\n\
             To: Bob <sip:bob@b.example>;tag=tb\r\n\
             CSeq: 7 ACK\r\n\
             Max-Forwards: 70\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let n = write_cancel(INVITE, &scan(INVITE), &mut out).unwrap();
        let c = text(&out[..n]);
        assert!(c.starts_with("CANCEL sip:bob@b.example SIP/2.0\r\n"), "{c}");
        assert!(
            c.contains("\r\nTo: Bob <sip:bob@b.example>\r\nCSeq: 7 CANCEL\r\n"),
            "{c}"
        );
        assert_eq!(scan(&out[..n]).defect, None);
    }

    #[test]
    fn output_that_does_not_fit_is_refused() {
        let m = scan(INVITE);
        let mut small = [0u8; 40];
        let spec = ResponseSpec::new(100, "Trying");
        assert_eq!(write_response(INVITE, &m, None, &spec, &mut small), None);
        assert_eq!(write_cancel(INVITE, &m, &mut small), None);
    }

    #[test]
    fn branches_are_distinct_and_carry_the_cookie() {
        let a = Branch::new([1, 2], 1);
        let b = Branch::new([1, 2], 2);
        assert_ne!(a, b);
        assert!(a.as_bytes().starts_with(MAGIC_COOKIE));
        assert_ne!(Branch::new([3, 4], 1), a, "the key changes the branch");
    }

    #[test]
    fn responses_go_to_the_source_with_rport_else_to_the_sent_by_port() {
        let src: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let via = |v: &str| {
            let msg = format!("OPTIONS sip:x SIP/2.0\r\nVia: {v}\r\n\r\n");
            scan(msg.as_bytes()).top_via.unwrap()
        };
        let d = |v: &str| response_destination(&via(v), src).to_string();
        assert_eq!(
            d("SIP/2.0/UDP h:5070;rport;branch=z9hG4bK1"),
            "198.51.100.7:40000"
        );
        assert_eq!(d("SIP/2.0/UDP h:5070;branch=z9hG4bK1"), "198.51.100.7:5070");
        assert_eq!(d("SIP/2.0/UDP h;branch=z9hG4bK1"), "198.51.100.7:5060");
    }
}
