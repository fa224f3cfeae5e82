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
    /// Put `src[from..from + len]`, a short text (a splice's inserted
    /// bytes): when both sides have room, a fixed 32-byte block is copied
    /// (a few vector moves; a variable-length copy is a `memcpy` call,
    /// ~21 instructions) and the length advanced by `len` only. The bytes
    /// past the length are scratch that later output overwrites or that
    /// `finish` leaves outside the result.
    #[inline]
    fn put_short(&mut self, src: &[u8], from: usize, len: usize) {
        const BLOCK: usize = 32;
        if len <= BLOCK {
            if let (Some(s), Some(d)) = (
                src.get(from..from + BLOCK),
                self.buf.get_mut(self.len..self.len + BLOCK),
            ) {
                d.copy_from_slice(s);
                self.len += len;
                return;
            }
        }
        self.put(&src[from..from + len]);
    }
    pub fn put_u32(&mut self, v: u32) {
        let n = decimal_len(v);
        match self.buf.get_mut(self.len..self.len + n) {
            Some(dst) => {
                write_decimal(v, dst);
                self.len += n;
            }
            None => self.overflow = true,
        }
    }
    /// Bytes written, or `None` when something did not fit.
    pub fn finish(self) -> Option<usize> {
        (!self.overflow).then_some(self.len)
    }

    /// End a message the caller built: its `extra` header lines (each with
    /// its CRLF), `Content-Length`, the blank line and `body`.
    pub fn finish_with_body(mut self, extra: &[&[u8]], body: &[u8]) -> Option<usize> {
        for h in extra {
            self.put(h);
        }
        self.put(b"Content-Length: ");
        self.put_u32(u32::try_from(body.len()).ok()?);
        self.put(b"\r\n\r\n");
        self.put(body);
        self.finish()
    }
}

/// How many decimal digits `v` has.
#[inline]
fn decimal_len(v: u32) -> usize {
    let mut n = 1;
    let mut p = 10u32;
    while n < 10 && v >= p {
        n += 1;
        p = p.wrapping_mul(10);
    }
    n
}

/// The decimal digits of `v` filling `out` exactly (`out.len()` is
/// [`decimal_len`]): written in place, where a right-aligned scratch
/// buffer would cost a copy (a `memcpy` call for a length not known at
/// compile time).
#[inline]
fn write_decimal(mut v: u32, out: &mut [u8]) {
    for o in out.iter_mut().rev() {
        *o = b'0' + (v % 10) as u8;
        v /= 10;
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
                let d = decimal_len(u32::from(*o));
                write_decimal(u32::from(*o), &mut out[n..n + d]);
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

/// The decimal digits of each octet value, left-aligned, and their count.
static OCTETS: [([u8; 3], u8); 256] = {
    let mut t = [([0u8; 3], 0u8); 256];
    let mut v = 0;
    while v < 256 {
        let (h, d, u) = ((v / 100) as u8, (v / 10 % 10) as u8, (v % 10) as u8);
        t[v] = if v >= 100 {
            ([b'0' + h, b'0' + d, b'0' + u], 3)
        } else if v >= 10 {
            ([b'0' + d, b'0' + u, 0], 2)
        } else {
            ([b'0' + u, 0, 0], 1)
        };
        v += 1;
    }
    t
};

/// Replace `del` bytes at `at` with `len` bytes of the edit list's text
/// from `from`.
#[derive(Clone, Copy, Default)]
struct Splice {
    at: u32,
    del: u32,
    from: u16,
    len: u16,
}

/// The most a forwarded request needs: Max-Forwards (1), `rport`/`received`
/// (2), the P-Asserted-Identity lines (`MAX_PAI_LINES`), one per popped
/// Route line (`MAX_ROUTES`), and with a replaced body both Content-Length
/// lines (2).
const MAX_EDITS: usize = 5 + super::scan::MAX_PAI_LINES + super::scan::MAX_ROUTES;

/// Room for the inserted bytes. A rewrite inserts three texts at most: a
/// Max-Forwards value (10 digits), `;rport=port` (12) and `;received=<ip>`
/// (10 + at most the 48 of `fmt_ip`'s buffer): 80 bytes.
/// Not more: an `Edits` this size is zeroed with inline stores, a larger
/// one by a memset call per forwarded request (callgrind: ~20 instructions).
const TEXT: usize = 2 * 64;

/// A small, sorted-on-use set of splices over one region. The inserted
/// bytes live in one shared buffer, so a splice is 12 bytes to store and
/// to sort instead of a 64-byte insertion each.
pub struct Edits {
    list: [Splice; MAX_EDITS],
    n: usize,
    text: [u8; TEXT],
    used: usize,
}

impl Default for Edits {
    fn default() -> Self {
        Edits {
            list: [Splice::default(); MAX_EDITS],
            n: 0,
            text: [0; TEXT],
            used: 0,
        }
    }
}

impl Edits {
    /// Open a splice whose text the caller then appends with `text_*`.
    fn open(&mut self, at: usize, del: usize) {
        assert!(self.n < MAX_EDITS, "more splices than any rewrite needs");
        self.list[self.n] = Splice {
            at: at as u32,
            del: del as u32,
            from: self.used as u16,
            len: 0,
        };
        self.n += 1;
    }
    /// Append to the text of the splice opened last.
    fn text(&mut self, s: &[u8]) {
        let dst = self
            .text
            .get_mut(self.used..self.used + s.len())
            .expect("more inserted text than any rewrite needs");
        dst.copy_from_slice(s);
        self.used += s.len();
        self.list[self.n - 1].len += s.len() as u16;
    }
    fn text_u32(&mut self, v: u32) {
        let n = decimal_len(v);
        let dst = self
            .text
            .get_mut(self.used..self.used + n)
            .expect("more inserted text than any rewrite needs");
        write_decimal(v, dst);
        self.used += n;
        self.list[self.n - 1].len += n as u16;
    }
    /// A dotted quad, each octet's digits from a table: three bytes are
    /// always copied (a fixed-length copy is a store, a variable one a
    /// `memcpy` call) and the length advanced by the digits only.
    fn text_ipv4(&mut self, octets: [u8; 4]) {
        let dst = self
            .text
            .get_mut(self.used..self.used + 16)
            .expect("more inserted text than any rewrite needs");
        let mut n = 0;
        for (k, o) in octets.iter().enumerate() {
            if k > 0 {
                dst[n] = b'.';
                n += 1;
            }
            let (digits, len) = OCTETS[usize::from(*o)];
            dst[n..n + 3].copy_from_slice(&digits);
            n += usize::from(len);
        }
        self.used += n;
        self.list[self.n - 1].len += n as u16;
    }
    /// The text of the splice opened last.
    #[cfg(test)]
    fn last_text(&self) -> &[u8] {
        let e = &self.list[self.n - 1];
        &self.text[e.from as usize..e.from as usize + e.len as usize]
    }
    pub fn delete(&mut self, span: Span) {
        self.open(span.start as usize, span.len());
    }

    /// Copy `region` of `buf` to `out`, applying the edits inside it.
    pub fn apply(&mut self, buf: &[u8], region: Span, out: &mut Out<'_>) {
        let list = &mut self.list[..self.n];
        // Stable: splices at the same offset keep their insertion order
        // (`=port` after a bare rport, then `;received=` at the value end).
        // A few 12-byte entries, mostly in order: an insertion sort.
        for i in 1..list.len() {
            let e = list[i];
            let mut j = i;
            while j > 0 && (list[j - 1].at, list[j - 1].del) > (e.at, e.del) {
                list[j] = list[j - 1];
                j -= 1;
            }
            list[j] = e;
        }
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
            if e.len > 0 {
                out.put_short(&self.text, e.from as usize, e.len as usize);
            }
            pos = at + e.del as usize;
        }
        out.put(&buf[pos.min(region.end as usize)..region.end as usize]);
    }
}

/// RFC 3261 §18.2.1 + RFC 3581 §4, forced (Kamailio's `force_rport`): the
/// top Via leaves with `received` and `rport` naming the real source,
/// whatever the sender wrote there, so answers (ours and the functions')
/// go back to where the request came from and nowhere a Via chooses.
pub fn mark_received(via: &Via, src: SocketAddr, edits: &mut Edits) {
    match via.rport {
        Some(Some(v)) => edits.open(v.start as usize, v.len()),
        Some(None) => {
            edits.open(via.rport_end as usize, 0);
            edits.text(b"=");
        }
        None => {
            edits.open(via.value.end as usize, 0);
            edits.text(b";rport=");
        }
    }
    edits.text_u32(u32::from(src.port()));
    match via.received {
        Some(v) => edits.open(v.start as usize, v.len()),
        None => {
            edits.open(via.value.end as usize, 0);
            edits.text(b";received=");
        }
    }
    match src.ip() {
        IpAddr::V4(v4) => edits.text_ipv4(v4.octets()),
        ip @ IpAddr::V6(_) => {
            let mut tmp = [0u8; 48];
            let n = fmt_ip(ip, &mut tmp);
            edits.text(&tmp[..n]);
        }
    }
}

/// Remove the P-Asserted-Identity lines of a request from an untrusted
/// source (RFC 3325 §5: the trust domain's edge removes them).
pub fn drop_asserted_identity(m: &Message, edits: &mut Edits) {
    for l in m.pai_lines.iter().filter(|l| !l.is_empty()) {
        edits.delete(*l);
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
    /// The flow token of the client's stream connection, written as our
    /// Via's `cpm-flow` parameter.
    pub flow: Option<&'a [u8]>,
    /// A complete `Route: ...\r\n` line pushed on top, if any.
    pub route_push: Option<&'a [u8]>,
    /// A complete `Record-Route: <...>\r\n` line, if any; with `flow`, the
    /// token goes into its URI (`;cpm-flow=TOKEN`) so that requests inside
    /// the dialog find the client's connection.
    pub record_route: Option<&'a [u8]>,
    /// The flow token of the stream client the request goes to (its
    /// binding's connection), for the Record-Route when `flow` is `None`:
    /// the dialog's later requests from the functions find it the same way.
    pub record_route_flow: Option<&'a [u8]>,
    pub max_forwards: MaxForwards,
    pub pop_routes: usize,
    pub src: SocketAddr,
    /// The source is trusted to assert identities (a function): its
    /// P-Asserted-Identity is passed on; anyone else's is removed.
    pub keep_asserted_identity: bool,
    /// A complete `P-Asserted-Identity: ...\r\n` line the edge asserts
    /// (the registered user a client's source is a flow of), if any.
    pub assert_identity: Option<&'a [u8]>,
    /// A replacement body (the slow path's filtered SDP): Content-Length is
    /// rewritten to its length.
    pub body: Option<&'a [u8]>,
}

/// The transport of the Via the edge wrote on top of a forwarded request
/// (`Via: SIP/2.0/UDP` right after the start line) set to `transport`
/// (`TCP` or `TLS`: the same length, nothing moves) for a request that
/// goes on a stream: its response then comes back on the connection (RFC
/// 3261 §18.2.2). `false`: no such Via (left as is).
pub fn set_edge_via_transport(out: &mut [u8], transport: &[u8; 3]) -> bool {
    let Some((eol, _)) = edge_via_line(out) else {
        return false;
    };
    let at = eol + EDGE_VIA.len();
    if out.get(at..at + 3) != Some(b"UDP") {
        return false;
    }
    out[at..at + 3].copy_from_slice(transport);
    true
}

/// The start and end line breaks around the edge's Via on a request it
/// forwards: the line right after the start line, `Via: SIP/2.0/...`
/// (`None`: no such line).
fn edge_via_line(msg: &[u8]) -> Option<(usize, usize)> {
    let eol = memchr::memmem::find(msg, b"\r\n")?;
    if !msg[eol..].starts_with(EDGE_VIA) {
        return None;
    }
    let next = eol + 2 + memchr::memmem::find(&msg[eol + 2..], b"\r\n")?;
    Some((eol, next))
}

/// How the edge's Via begins, after the start line's line break.
const EDGE_VIA: &[u8] = b"\r\nVia: SIP/2.0/";

/// `;alias` (RFC 5923 §5) at the end of the edge's Via (the line right
/// after the start line) of the request in `out[..len]`, for a request
/// that goes on a TLS connection the edge opened: the peer may send its
/// requests back on it. The new length; `None` (nothing changed): no such
/// Via, or no room in `out`.
pub fn add_alias_to_edge_via(out: &mut [u8], len: usize) -> Option<usize> {
    const ALIAS: &[u8] = b";alias";
    let (_, at) = edge_via_line(out.get(..len)?)?;
    if out.len() < len + ALIAS.len() {
        return None;
    }
    out.copy_within(at..len, at + ALIAS.len());
    out[at..at + ALIAS.len()].copy_from_slice(ALIAS);
    Some(len + ALIAS.len())
}

/// A request the edge forwarded, as it was before the edge's Via went on
/// top (the line right after the start line; its transport whatever it
/// became): for answering it as its sender would have been answered.
/// `None`: no Via line there.
pub fn without_edge_via(forwarded: &[u8]) -> Option<Vec<u8>> {
    let (eol, next) = edge_via_line(forwarded)?;
    let mut req = Vec::with_capacity(forwarded.len());
    req.extend_from_slice(&forwarded[..eol]);
    req.extend_from_slice(&forwarded[next..]);
    Some(req)
}

/// Our Record-Route line, the flow token of a stream client's connection
/// in its URI (before the closing `>`).
fn put_record_route(o: &mut Out<'_>, rr: &[u8], flow: Option<&[u8]>) {
    let Some(token) = flow else {
        return o.put(rr);
    };
    debug_assert!(
        rr.ends_with(b">\r\n"),
        "a Record-Route line with a name-addr"
    );
    let uri_end = rr.len().saturating_sub(3);
    o.put(&rr[..uri_end]);
    o.put(super::flow::FLOW_PARAM);
    o.put(token);
    o.put(&rr[uri_end..]);
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
    if let Some(token) = plan.flow {
        o.put(super::flow::FLOW_PARAM);
        o.put(token);
    }
    o.put(b"\r\n");
    if let Some(r) = plan.route_push {
        o.put(r);
    }
    if let Some(rr) = plan.record_route {
        put_record_route(&mut o, rr, plan.flow.or(plan.record_route_flow));
    }
    if let Some(pai) = plan.assert_identity {
        o.put(pai);
    }
    let mut edits = Edits::default();
    match plan.max_forwards {
        MaxForwards::Insert(v) => {
            o.put(b"Max-Forwards: ");
            o.put_u32(v);
            o.put(b"\r\n");
        }
        MaxForwards::Replace(span, v) => {
            edits.open(span.start as usize, span.len());
            edits.text_u32(v);
        }
    }
    if let Some(via) = &m.top_via {
        mark_received(via, plan.src, &mut edits);
    }
    if !plan.keep_asserted_identity {
        drop_asserted_identity(m, &mut edits);
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
    if let Some(cut) = top_via_cut(m) {
        edits.delete(cut);
    }
}

/// What popping the top Via deletes: its value up to the next one in the
/// same line, or its whole line.
fn top_via_cut(m: &Message) -> Option<Span> {
    let via = m.top_via.as_ref()?;
    Some(match m.top_via_next {
        Some(next) => Span::new(via.value.start as usize, next as usize),
        None => m.top_via_line,
    })
}

/// Write the forwarded response: the top Via (ours) removed, nothing else
/// touched (RFC 3261 §16.7 step 3).
pub fn forward_response(buf: &[u8], m: &Message, out: &mut [u8]) -> Option<usize> {
    let mut o = Out::new(out);
    o.put(m.start_line.get(buf));
    o.put(b"\r\n");
    // A single deletion: the headers are copied around it directly, what
    // `Edits::apply` does with a one-splice list, without building the
    // list (callgrind: its ~300-byte zeroing is a memset call per response).
    let (start, end) = (m.headers.start as usize, m.headers.end as usize);
    let mut pos = start;
    if let Some(cut) = top_via_cut(m).filter(|c| c.start as usize >= start) {
        debug_assert!(cut.end as usize <= end, "the top Via outside the headers");
        o.put(&buf[start..cut.start as usize]);
        pos = cut.end as usize;
    }
    o.put(&buf[pos.min(end)..end]);
    o.put(b"\r\n");
    o.put(m.body.get(buf));
    o.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_goes_at_the_end_of_the_edges_via_only() {
        let req = b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bKx\r\n\
            Via: SIP/2.0/UDP 192.0.2.1\r\nContent-Length: 0\r\n\r\n";
        let mut out = req.to_vec();
        out.resize(req.len() + 6, 0);
        let len = add_alias_to_edge_via(&mut out, req.len()).unwrap();
        let want = String::from_utf8_lossy(req).replacen("z9hG4bKx", "z9hG4bKx;alias", 1);
        assert_eq!(String::from_utf8_lossy(&out[..len]), want);
        // No room: nothing moves.
        let mut tight = req.to_vec();
        assert_eq!(add_alias_to_edge_via(&mut tight, req.len()), None);
        assert_eq!(tight, req);
        // No Via right after the start line: nothing.
        let mut other = b"INVITE sip:a@b SIP/2.0\r\nTo: x\r\n\r\n______".to_vec();
        assert_eq!(add_alias_to_edge_via(&mut other, 30), None);
    }

    #[test]
    fn without_the_edges_via_a_forwarded_request_is_as_its_sender_sent_it() {
        let sent = "BYE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKcs\r\n\
            CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n";
        let forwarded = sent.replacen(
            "\r\n",
            "\r\nVia: SIP/2.0/TLS 10.0.0.1:5060;branch=z9hG4bKe\r\n",
            1,
        );
        let back = without_edge_via(forwarded.as_bytes()).unwrap();
        assert_eq!(String::from_utf8_lossy(&back), sent);
        // No Via right after the start line, or no line end: nothing.
        assert!(without_edge_via(b"BYE sip:a@b SIP/2.0\r\nTo: x\r\n\r\n").is_none());
        assert!(without_edge_via(b"BYE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h").is_none());
        assert!(without_edge_via(b"no line end").is_none());
    }

    #[test]
    fn the_edges_via_says_the_stream_it_goes_on_and_nothing_else_changes() {
        let req = b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx\r\n\
            Via: SIP/2.0/UDP 192.0.2.1\r\n\r\n";
        let mut out = req.to_vec();
        assert!(set_edge_via_transport(&mut out, b"TLS"));
        let want = String::from_utf8_lossy(req).replacen(
            "SIP/2.0/UDP 10.0.0.1",
            "SIP/2.0/TLS 10.0.0.1",
            1,
        );
        assert_eq!(String::from_utf8_lossy(&out), want);
        // Not our Via right after the start line: left alone.
        let mut other = b"INVITE sip:a@b SIP/2.0\r\nTo: x\r\nVia: SIP/2.0/UDP h\r\n\r\n".to_vec();
        let before = other.clone();
        assert!(!set_edge_via_transport(&mut other, b"TCP"));
        assert_eq!(other, before);
        assert!(!set_edge_via_transport(
            &mut b"no line end".to_vec(),
            b"TCP"
        ));
    }

    /// The longest texts a rewrite inserts fit the edit list's text room.
    #[test]
    fn longest_inserted_texts_fit() {
        let mut e = Edits::default();
        e.open(0, 0);
        e.text_u32(u32::MAX);
        e.open(1, 0);
        e.text(b";rport=");
        e.text_u32(65535);
        e.open(2, 0);
        e.text(b";received=");
        let mut tmp = [0u8; 48];
        let v6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
        let n = fmt_ip(IpAddr::V6(v6), &mut tmp);
        e.text(&tmp[..n]);
        assert_eq!(e.last_text().len(), b";received=".len() + n);
        e.open(3, 0);
        e.text(b";received=");
        e.text_ipv4([255; 4]);
        assert_eq!(e.last_text(), b";received=255.255.255.255");
    }

    /// The in-place decimal writers and the octet table give what
    /// `Display` gives.
    #[test]
    fn number_and_address_text() {
        for v in [
            0u32,
            1,
            9,
            10,
            99,
            100,
            5062,
            65535,
            999_999_999,
            1_000_000_000,
            u32::MAX,
        ] {
            let mut buf = [0u8; 16];
            let mut o = Out::new(&mut buf);
            o.put_u32(v);
            let n = o.finish().unwrap();
            assert_eq!(&buf[..n], v.to_string().as_bytes());
        }
        for a in 0..=255u8 {
            let ip = std::net::Ipv4Addr::new(a, 255 - a, a / 7, 10);
            let mut e = Edits::default();
            e.open(0, 0);
            e.text_ipv4(ip.octets());
            assert_eq!(e.last_text(), ip.to_string().as_bytes());
            let mut t = [0u8; 48];
            let n = fmt_ip(IpAddr::V4(ip), &mut t);
            assert_eq!(&t[..n], ip.to_string().as_bytes());
        }
    }
}
