//! Stateless answers to requests the edge refuses (RFC 3261 §8.2.6, §16.3):
//! the request's Via (top value marked `received`/`rport` when it parsed,
//! else echoed as written), From, To (with a To-tag added: derived from the
//! request, so a retransmission gets the same answer; a To that does not
//! parse is echoed as written), Call-ID and CSeq, then our reason phrase and
//! optional extra lines.

use super::hash::StableHash;
use super::rewrite::{mark_received, Edits, Out};
use super::scan::{header_lines, Header, Message, Scanned};
use super::uri::checked_name_addr;
use super::Span;

/// Write `SIP/2.0 <code> <reason>` answering `m`. `extra` lines must each end
/// with CRLF. `None` when it does not fit `out`.
pub fn build(
    s: Scanned<'_>,
    code: u16,
    reason: &str,
    extra: &[&[u8]],
    out: &mut [u8],
) -> Option<usize> {
    debug_assert!((100..700).contains(&code));
    let (buf, m, src) = (s.buf, s.m, s.src);
    let mut o = Out::new(out);
    o.put(b"SIP/2.0 ");
    o.put_u32(u32::from(code));
    o.put(b" ");
    o.put(reason.as_bytes());
    o.put(b"\r\n");
    let mut first_via = true;
    for h in header_lines(buf, m.headers) {
        match h.kind {
            Header::Via if first_via => {
                first_via = false;
                let mut edits = Edits::default();
                let line = without_eol(buf, h.line);
                // The parsed top Via may come from a later line when this
                // one is defective (a bare LF inside it): its splices
                // belong there, so this line is echoed as written.
                let inside = |v: &Span| v.start >= line.start && v.end <= line.end;
                if let Some(via) = m.top_via.as_ref().filter(|v| inside(&v.value)) {
                    mark_received(via, src, &mut edits);
                }
                edits.apply(buf, line, &mut o);
                o.put(b"\r\n");
            }
            // A tag goes after the To value only where it cannot land
            // inside one the edge could not read (an open quote, `<`).
            Header::To
                if m.to_tag.is_none()
                    && code > 100
                    && (h.value.is_empty() || checked_name_addr(buf, h.value).is_some()) =>
            {
                // An empty value's span sits after the line end.
                let eol = without_eol(buf, h.line).end as usize;
                let v_end = (h.value.end as usize).min(eol);
                o.put(&buf[h.line.start as usize..v_end]);
                o.put(b";tag=");
                let mut tag = [0u8; 16];
                to_tag(buf, m, &mut tag);
                o.put(&tag);
                o.put(&buf[v_end..eol]);
                o.put(b"\r\n");
            }
            Header::Via | Header::From | Header::To | Header::CallId | Header::CSeq => {
                o.put(without_eol(buf, h.line).get(buf));
                o.put(b"\r\n");
            }
            _ => {}
        }
    }
    for e in extra {
        o.put(e);
    }
    o.put(b"Server: cpm-edge\r\nContent-Length: 0\r\n\r\n");
    o.finish()
}

/// A header line without its line end: CRLF, or the bare LF of a request
/// refused for it (the answer always ends its lines with CRLF).
fn without_eol(buf: &[u8], line: Span) -> Span {
    let s = line.get(buf);
    let n = usize::from(s.ends_with(b"\n")) + usize::from(s.ends_with(b"\r\n"));
    line.sub(0, s.len() - n)
}

fn to_tag(buf: &[u8], m: &Message, out: &mut [u8; 16]) {
    let mut h = StableHash::default();
    h.bytes(m.call_id.get(buf));
    h.bytes(m.from_tag.map_or(&[][..], |t| t.get(buf)));
    h.bytes(&m.cseq_num.to_le_bytes());
    super::hash::hex_into(h.finish(), out);
}

/// Reason phrases of the edge's `503` answers: each names why.
pub const UNAVAILABLE_NO_CS: &str = "Service Unavailable - No Conversation Server Available";
pub const UNAVAILABLE_NO_IWF: &str = "Service Unavailable - No Interworking Function";
pub const UNAVAILABLE_POLICY_QUEUE: &str = "Service Unavailable - Policy Queue Full";
pub const UNAVAILABLE_OVERLOAD: &str = "Service Unavailable - Overloaded";
pub const UNAVAILABLE_REGISTRAR: &str = "Service Unavailable - Registrar Busy";
pub const UNAVAILABLE_RATE: &str = "Service Unavailable - Rate Limit Exceeded";
/// RFC 5626 §5.3: a request for a client's flow whose connection is gone
/// (or whose token names no connection of ours).
pub const FLOW_FAILED: &str = "Flow Failed";

/// The RFC 3261 §21 reason phrase of a status code (and of the common ones
/// of later RFCs), for answers that relay a code without its phrase.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        489 => "Bad Event",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        c if c < 200 => "Session Progress",
        c if c < 300 => "OK",
        c if c < 400 => "Redirection",
        c if c < 500 => "Request Failure",
        c if c < 600 => "Server Failure",
        _ => "Global Failure",
    }
}
