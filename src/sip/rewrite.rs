//! Building forwarded messages: the original bytes copied once into a
//! preallocated output buffer, with a small sorted list of splices applied on
//! the way (RFC 3261 §16.6 request edits, §16.7 response Via pop).
//!
//! Invariants: nothing is allocated; output that would not fit the buffer is
//! refused (`None`) instead of truncated, so the caller can answer 513.

use super::scan::{Message, RouteValue};
use super::via::Via;
use super::Span;
use std::net::{IpAddr, SocketAddr};

/// A bounded output cursor over the caller's buffer.
pub struct Out<'o> {
    buf: &'o mut [u8],
    len: usize,
    overflow: bool,
}

impl<'o> Out<'o> {
    pub fn new(buf: &'o mut [u8]) -> Out<'o> {
        Out {
            buf,
            len: 0,
            overflow: false,
        }
    }
    #[inline]
    pub fn put(&mut self, s: &[u8]) {
        match self.buf.get_mut(self.len..self.len + s.len()) {
            Some(dst) => {
                dst.copy_from_slice(s);
                self.len += s.len();
            }
            None => self.overflow = true,
        }
    }
    pub fn put_u32(&mut self, v: u32) {
        let mut tmp = [0u8; 10];
        let n = fmt_u32(v, &mut tmp);
        self.put(&tmp[10 - n..]);
    }
    /// Bytes written, or `None` when something did not fit.
    pub fn finish(self) -> Option<usize> {
        (!self.overflow).then_some(self.len)
    }
}

/// Inline bytes of one insertion (an IP address, a port, a number).
#[derive(Clone, Copy)]
pub struct Ins {
    bytes: [u8; 64],
    len: u8,
}

impl Ins {
    pub const EMPTY: Ins = Ins {
        bytes: [0; 64],
        len: 0,
    };
    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
    /// Append, truncating at capacity (callers insert short tokens only).
    pub fn put(&mut self, s: &[u8]) -> &mut Ins {
        let start = self.len as usize;
        let n = s.len().min(self.bytes.len() - start);
        self.bytes[start..start + n].copy_from_slice(&s[..n]);
        self.len += n as u8;
        self
    }
    pub fn put_u32(&mut self, v: u32) -> &mut Ins {
        let mut tmp = [0u8; 10];
        let n = fmt_u32(v, &mut tmp);
        self.put(&tmp[10 - n..])
    }
    pub fn put_ip(&mut self, ip: IpAddr) -> &mut Ins {
        let mut tmp = [0u8; 48];
        let n = fmt_ip(ip, &mut tmp);
        self.put(&tmp[..n])
    }
}

/// Decimal digits of `v` right-aligned in `out`; returns how many.
fn fmt_u32(mut v: u32, out: &mut [u8; 10]) -> usize {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return out.len() - i;
        }
    }
}

/// Text of an IP address without `core::fmt` for IPv4 (the common case, and
/// the formatter costs ~1000 instructions per call).
pub fn fmt_ip(ip: IpAddr, out: &mut [u8; 48]) -> usize {
    match ip {
        IpAddr::V4(v4) => {
            let mut n = 0;
            for (k, o) in v4.octets().iter().enumerate() {
                if k > 0 {
                    out[n] = b'.';
                    n += 1;
                }
                let mut tmp = [0u8; 10];
                let d = fmt_u32(u32::from(*o), &mut tmp);
                out[n..n + d].copy_from_slice(&tmp[10 - d..]);
                n += d;
            }
            n
        }
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            let mut cur = std::io::Cursor::new(&mut out[..]);
            let _ = write!(cur, "{v6}");
            cur.position() as usize
        }
    }
}

/// Replace `del` bytes at `at` with `ins`.
#[derive(Clone, Copy)]
pub struct Edit {
    pub at: u32,
    pub del: u32,
    pub ins: Ins,
}

/// The most a forwarded request needs: Max-Forwards (1), `rport`/`received`
/// (2), one per popped Route line (`MAX_ROUTES`), and with a replaced body
/// both Content-Length lines (2).
const MAX_EDITS: usize = 5 + super::scan::MAX_ROUTES;

/// A small, sorted-on-use set of splices over one region.
pub struct Edits {
    list: [Edit; MAX_EDITS],
    n: usize,
}

impl Default for Edits {
    fn default() -> Self {
        Edits {
            list: [Edit {
                at: 0,
                del: 0,
                ins: Ins::EMPTY,
            }; MAX_EDITS],
            n: 0,
        }
    }
}

impl Edits {
    fn push(&mut self, at: usize, del: usize, ins: Ins) {
        assert!(self.n < MAX_EDITS, "more splices than any rewrite needs");
        self.list[self.n] = Edit {
            at: at as u32,
            del: del as u32,
            ins,
        };
        self.n += 1;
    }
    pub fn delete(&mut self, span: Span) {
        self.push(span.start as usize, span.len(), Ins::EMPTY);
    }
    pub fn replace(&mut self, span: Span, ins: Ins) {
        self.push(span.start as usize, span.len(), ins);
    }
    pub fn insert(&mut self, at: usize, ins: Ins) {
        self.push(at, 0, ins);
    }

    /// Copy `region` of `buf` to `out`, applying the edits inside it.
    pub fn apply(&mut self, buf: &[u8], region: Span, out: &mut Out<'_>) {
        let list = &mut self.list[..self.n];
        // Stable: splices at the same offset keep their insertion order
        // (`=port` after a bare rport, then `;received=` at the value end).
        list.sort_by_key(|e| (e.at, e.del));
        let mut pos = region.start as usize;
        for e in list.iter() {
            let at = e.at as usize;
            debug_assert!(
                at >= pos && at + e.del as usize <= region.end as usize,
                "overlapping splices"
            );
            if at < pos {
                continue;
            }
            out.put(&buf[pos..at]);
            out.put(e.ins.as_slice());
            pos = at + e.del as usize;
        }
        out.put(&buf[pos.min(region.end as usize)..region.end as usize]);
    }
}

/// RFC 3261 §18.2.1 + RFC 3581 §4: add `received` when the sent-by host is
/// not the source address (always, when `rport` is present) and fill a bare
/// `rport` with the source port.
pub fn mark_received(buf: &[u8], via: &Via, src: SocketAddr, edits: &mut Edits) {
    let mut ip = [0u8; 48];
    let ip_len = fmt_ip(src.ip(), &mut ip);
    let host = via.host.get(buf);
    // IPv4 text is canonical; IPv6 has several spellings, so parse those.
    let host_is_src =
        host == &ip[..ip_len] || (src.is_ipv6() && super::uri::ip_of(host) == Some(src.ip()));
    if via.rport == Some(None) {
        let mut ins = Ins::EMPTY;
        ins.put(b"=").put_u32(u32::from(src.port()));
        edits.insert(via.rport_end as usize, ins);
    }
    if via.received.is_none() && (!host_is_src || via.rport.is_some()) {
        let mut ins = Ins::EMPTY;
        ins.put(b";received=").put(&ip[..ip_len]);
        edits.insert(via.value.end as usize, ins);
    }
}

/// Remove the first `n` Route values (ours), whole lines where nothing
/// remains in them.
pub fn pop_routes(routes: &[RouteValue], n: usize, edits: &mut Edits) {
    let popped = &routes[..n.min(routes.len())];
    let mut i = 0;
    while i < popped.len() {
        let line = popped[i].line;
        let mut j = i;
        while j + 1 < popped.len() && popped[j + 1].line == line {
            j += 1;
        }
        match popped[j].next_in_line {
            None => edits.delete(line),
            Some(next) => edits.delete(Span::new(popped[i].value.start as usize, next as usize)),
        }
        i = j + 1;
    }
}

/// How the forwarded request's Max-Forwards is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxForwards {
    /// Absent in the request: insert this value.
    Insert(u32),
    /// Replace the value span with this number.
    Replace(Span, u32),
}

/// Everything a forwarded request gains or loses (RFC 3261 §16.6).
pub struct RequestPlan<'a> {
    /// Our complete Via line up to the branch value: `Via: SIP/2.0/UDP h:p;branch=`.
    pub via_prefix: &'a [u8],
    pub branch: &'a [u8],
    /// A complete `Route: ...\r\n` line pushed on top, if any.
    pub route_push: Option<&'a [u8]>,
    /// A complete `Record-Route: ...\r\n` line, if any.
    pub record_route: Option<&'a [u8]>,
    pub max_forwards: MaxForwards,
    pub pop_routes: usize,
    pub src: SocketAddr,
    /// A replacement body (the slow path's filtered SDP): Content-Length is
    /// rewritten to its length.
    pub body: Option<&'a [u8]>,
}

/// Drop every Content-Length line; the caller writes the new one.
fn drop_content_length(m: &Message, edits: &mut Edits) {
    for l in m.content_length_lines.iter().filter(|l| !l.is_empty()) {
        edits.delete(*l);
    }
}

/// Write the forwarded request. `None`: it would not fit `out` (answer 513).
pub fn forward_request(
    buf: &[u8],
    m: &Message,
    plan: &RequestPlan<'_>,
    out: &mut [u8],
) -> Option<usize> {
    let mut o = Out::new(out);
    o.put(m.start_line.get(buf));
    o.put(b"\r\n");
    o.put(plan.via_prefix);
    o.put(plan.branch);
    o.put(b"\r\n");
    if let Some(r) = plan.route_push {
        o.put(r);
    }
    if let Some(rr) = plan.record_route {
        o.put(rr);
    }
    let mut edits = Edits::default();
    match plan.max_forwards {
        MaxForwards::Insert(v) => {
            o.put(b"Max-Forwards: ");
            o.put_u32(v);
            o.put(b"\r\n");
        }
        MaxForwards::Replace(span, v) => {
            let mut ins = Ins::EMPTY;
            ins.put_u32(v);
            edits.replace(span, ins);
        }
    }
    if let Some(via) = &m.top_via {
        mark_received(buf, via, plan.src, &mut edits);
    }
    pop_routes(m.route_values(), plan.pop_routes, &mut edits);
    if let Some(body) = plan.body {
        drop_content_length(m, &mut edits);
        edits.apply(buf, m.headers, &mut o);
        o.put(b"Content-Length: ");
        o.put_u32(body.len() as u32);
        o.put(b"\r\n\r\n");
        o.put(body);
        return o.finish();
    }
    edits.apply(buf, m.headers, &mut o);
    o.put(b"\r\n");
    o.put(m.body.get(buf));
    o.finish()
}

/// Write the forwarded response with its status line replaced and its body
/// removed (the slow path turns an answer that violates the media policy
/// into `code reason`); our Via is popped as in [`forward_response`].
pub fn forward_response_replaced(
    buf: &[u8],
    m: &Message,
    code: u16,
    reason: &str,
    out: &mut [u8],
) -> Option<usize> {
    let mut o = Out::new(out);
    o.put(b"SIP/2.0 ");
    o.put_u32(u32::from(code));
    o.put(b" ");
    o.put(reason.as_bytes());
    o.put(b"\r\n");
    let mut edits = Edits::default();
    pop_top_via(m, &mut edits);
    drop_content_length(m, &mut edits);
    if let Some(ct) = m.content_type_line {
        edits.delete(ct);
    }
    edits.apply(buf, m.headers, &mut o);
    o.put(b"Content-Length: 0\r\n\r\n");
    o.finish()
}

fn pop_top_via(m: &Message, edits: &mut Edits) {
    if let Some(via) = &m.top_via {
        match m.top_via_next {
            Some(next) => edits.delete(Span::new(via.value.start as usize, next as usize)),
            None => edits.delete(m.top_via_line),
        }
    }
}

/// Write the forwarded response: the top Via (ours) removed, nothing else
/// touched (RFC 3261 §16.7 step 3).
pub fn forward_response(buf: &[u8], m: &Message, out: &mut [u8]) -> Option<usize> {
    let mut o = Out::new(out);
    o.put(m.start_line.get(buf));
    o.put(b"\r\n");
    let mut edits = Edits::default();
    pop_top_via(m, &mut edits);
    edits.apply(buf, m.headers, &mut o);
    o.put(b"\r\n");
    o.put(m.body.get(buf));
    o.finish()
}
