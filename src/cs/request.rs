//! The INVITE (or pager-mode MESSAGE) a Conversation Server sends on a
//! downstream leg, written from the one it received: a back-to-back user agent's new request that keeps
//! what the seed asks to keep (the CPM feature tag in Accept-Contact and
//! P-Preferred-Service, the RCS Contribution-ID / Conversation-ID, Subject)
//! and replaces what belongs to each dialog (Via, Route, From tag, To,
//! Call-ID, CSeq, Contact, Max-Forwards, Content-Length) or to the trust
//! boundary (P-Asserted-Identity, Referred-By, credentials).

use crate::sip::rewrite::Out;
use crate::sip::scan::{header_lines, Header, Message};
use crate::sip::uri::addr_of;
use crate::sip::Span;
use std::net::SocketAddr;

/// What the new request says beyond what it copies.
#[derive(Clone, Copy, Debug)]
pub struct Invitation<'a> {
    /// `INVITE` or `MESSAGE`.
    pub method: &'a [u8],
    pub request_uri: &'a [u8],
    /// Our address: the Via sent-by.
    pub local: SocketAddr,
    pub branch: &'a [u8],
    pub max_forwards: u32,
    /// The edge's Route value, its `cpm-leg` marker included (README, wire
    /// contract): where the request goes next.
    pub route: &'a [u8],
    /// From as `name-addr` without a tag, and our tag.
    pub from: &'a [u8],
    pub from_tag: &'a [u8],
    /// To as `name-addr`.
    pub to: &'a [u8],
    pub call_id: &'a [u8],
    /// The whole Contact value (empty: none, as a MESSAGE has).
    pub contact: &'a [u8],
    /// The identity the CS asserts (it has authorised it): P-Asserted-Identity.
    pub asserted: Option<&'a [u8]>,
    /// Who caused the invitation (the group's inviter): Referred-By.
    pub referred_by: Option<&'a [u8]>,
    /// The body (an INVITE's offer already filtered by media policy, a
    /// MESSAGE's content as received) and its Content-Type value.
    pub body: &'a [u8],
    pub content_type: &'a [u8],
}

/// Header names a B2BUA must not copy from the upstream INVITE besides the
/// ones it writes itself: hop and credential headers of the other dialog.
///
/// Require and Supported go too: a B2BUA's legs support what it supports
/// (no reliable provisionals, no session timers), not what the client
/// does; and the body of a leg is always the SDP offer (an ad-hoc group's
/// INVITE carries its recipient list beside it).
const NOT_COPIED: &[&[u8]] = &[
    b"Require",
    b"Supported",
    b"k",
    b"Content-Disposition",
    b"Referred-By",
    b"b",
    b"Authorization",
    b"Proxy-Authorization",
    b"Proxy-Require",
    b"Record-Route",
    b"Privacy",
];

fn copied(kind: Header, name: &[u8]) -> bool {
    match kind {
        Header::Other => !NOT_COPIED.iter().any(|n| n.eq_ignore_ascii_case(name)),
        Header::AcceptContact | Header::PPreferredService | Header::PAssertedService => true,
        _ => false,
    }
}

/// Write the downstream request into `out`; its length, or `None` if it
/// does not fit.
pub fn write_request(
    upstream: &[u8],
    m: &Message,
    inv: &Invitation<'_>,
    out: &mut [u8],
) -> Option<usize> {
    let mut o = Out::new(out);
    o.put(inv.method);
    o.put(b" ");
    o.put(inv.request_uri);
    o.put(b" SIP/2.0\r\nVia: SIP/2.0/UDP ");
    put_addr(&mut o, inv.local);
    o.put(b";branch=");
    o.put(inv.branch);
    o.put(b";rport\r\nMax-Forwards: ");
    o.put_u32(inv.max_forwards);
    o.put(b"\r\nRoute: ");
    o.put(inv.route);
    o.put(b"\r\nFrom: ");
    o.put(inv.from);
    o.put(b";tag=");
    o.put(inv.from_tag);
    o.put(b"\r\nTo: ");
    o.put(inv.to);
    o.put(b"\r\nCall-ID: ");
    o.put(inv.call_id);
    o.put(b"\r\nCSeq: 1 ");
    o.put(inv.method);
    o.put(b"\r\n");
    if !inv.contact.is_empty() {
        o.put(b"Contact: ");
        o.put(inv.contact);
        o.put(b"\r\n");
    }
    for (name, value) in [
        (&b"P-Asserted-Identity: "[..], inv.asserted),
        (b"Referred-By: ", inv.referred_by),
    ] {
        if let Some(v) = value {
            o.put(name);
            o.put(b"<");
            o.put(v);
            o.put(b">\r\n");
        }
    }
    for h in header_lines(upstream, m.headers) {
        if copied(h.kind, h.name.get(upstream)) {
            o.put(h.line.get(upstream));
        }
    }
    if !inv.body.is_empty() && !inv.content_type.is_empty() {
        o.put(b"Content-Type: ");
        o.put(inv.content_type);
        o.put(b"\r\n");
    }
    o.finish_with_body(&[], inv.body)
}

/// `host:port` of a socket address (IPv6 in brackets).
pub fn put_addr(o: &mut Out<'_>, a: SocketAddr) {
    let mut ip = [0u8; 48];
    let n = crate::sip::rewrite::fmt_ip(a.ip(), &mut ip);
    if a.is_ipv6() {
        o.put(b"[");
        o.put(&ip[..n]);
        o.put(b"]");
    } else {
        o.put(&ip[..n]);
    }
    o.put(b":");
    o.put_u32(u32::from(a.port()));
}

/// A From or To value as `name-addr` without its parameters (the tag
/// goes, the display name stays): what a B2BUA's own request carries.
pub fn party_without_tag(buf: &[u8], value: Span) -> Vec<u8> {
    let v = value.get(buf);
    let uri = addr_of(buf, value).map_or(&b""[..], |u| u.get(buf));
    // The display name: what precedes `<`, when there is one.
    let display = v
        .iter()
        .position(|c| *c == b'<')
        .map(|lt| v[..lt].trim_ascii())
        .filter(|d| !d.is_empty());
    let mut out = Vec::with_capacity(uri.len() + 32);
    if let Some(d) = display {
        out.extend_from_slice(d);
        out.push(b' ');
    }
    out.push(b'<');
    out.extend_from_slice(uri);
    out.push(b'>');
    out
}

/// The header parameters of a Contact value (the text after `>`: feature
/// tags, `isfocus`): what a B2BUA repeats in its own Contact so that the
/// capabilities it relays stay visible (RFC 3840).
pub fn contact_params(buf: &[u8], m: &Message) -> Vec<u8> {
    let Some(h) = header_lines(buf, m.headers).find(|h| h.kind == Header::Contact) else {
        return Vec::new();
    };
    let v = h.value.get(buf);
    match v.iter().rposition(|c| *c == b'>') {
        Some(gt) => {
            let rest = &v[gt + 1..];
            // One Contact value only: stop at a comma outside quotes.
            let end = first_unquoted_comma(rest).unwrap_or(rest.len());
            rest[..end].to_vec()
        }
        None => Vec::new(),
    }
}

fn first_unquoted_comma(s: &[u8]) -> Option<usize> {
    let mut quoted = false;
    for (i, c) in s.iter().enumerate() {
        match c {
            b'"' => quoted = !quoted,
            b',' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::scan::scan;

    const UP: &[u8] = b"INVITE sip:grp1@groups.example.net SIP/2.0\r\n\
        Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKcpe1\r\n\
        Via: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKa;rport=5071;received=127.0.0.1\r\n\
        Max-Forwards: 69\r\n\
        Route: <sip:127.0.0.1:7001;lr>,<sip:127.0.0.1:5060;lr;cpm-leg=orig>\r\n\
        Record-Route: <sip:127.0.0.1:5060;lr>\r\n\
        From: \"Alice\" <sip:alice@127.0.0.1:5071>;tag=fa\r\n\
        To: <sip:grp1@groups.example.net>\r\n\
        Call-ID: c1\r\n\
        CSeq: 1 INVITE\r\n\
        Contact: <sip:alice@127.0.0.1:5071>;+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session\"\r\n\
        Accept-Contact: *;+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session\"\r\n\
        P-Preferred-Service: urn:urn-7:3gpp-service.ims.icsi.oma.cpm.session\r\n\
        Contribution-ID: abc\r\n\
        Authorization: Digest x\r\n\
        Content-Type: application/sdp\r\n\
        Content-Length: 3\r\n\r\nv=0";

    #[test]
    fn keeps_the_cpm_indication_and_replaces_the_dialog_headers() {
        let m = scan(UP);
        let from = party_without_tag(UP, m.from);
        assert_eq!(from, b"\"Alice\" <sip:alice@127.0.0.1:5071>");
        let params = contact_params(UP, &m);
        let contact = [&b"<sip:127.0.0.1:7001>"[..], &params].concat();
        let inv = Invitation {
            method: b"INVITE",
            request_uri: b"sip:grp1@groups.example.net",
            local: "127.0.0.1:7001".parse().unwrap(),
            branch: b"z9hG4bKxyz",
            max_forwards: 68,
            route: b"<sip:127.0.0.1:5060;lr;cpm-leg=orig>",
            from: &from,
            from_tag: b"t1",
            to: b"<sip:grp1@groups.example.net>",
            call_id: b"new@127.0.0.1",
            contact: &contact,
            asserted: Some(b"sip:alice@127.0.0.1:5071"),
            referred_by: None,
            body: b"v=0\r\n",
            content_type: b"application/sdp",
        };
        let mut out = [0u8; 2048];
        let n = write_request(UP, &m, &inv, &mut out).unwrap();
        let text = String::from_utf8_lossy(&out[..n]).into_owned();
        let o = scan(&out[..n]);
        assert!(o.defect.is_none(), "{text}");
        assert!(o.cpm.any(), "the CPM indication is kept: {text}");
        assert!(text.contains("Contribution-ID: abc\r\n"));
        assert!(!text.contains("Authorization"));
        assert!(!text.contains("Record-Route"));
        assert!(!text.contains("Call-ID: c1"));
        assert!(text.contains("Route: <sip:127.0.0.1:5060;lr;cpm-leg=orig>\r\n"));
        assert!(text.contains("P-Asserted-Identity: <sip:alice@127.0.0.1:5071>\r\n"));
        assert!(text.contains("Contact: <sip:127.0.0.1:7001>;+g.3gpp.icsi-ref="));
        assert_eq!(o.body.get(&out[..n]), b"v=0\r\n");
        assert_eq!(text.matches("Via:").count(), 1);
    }
}
