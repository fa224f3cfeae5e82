//! The zero-copy scan: one pass over a datagram that records, as offsets,
//! everything the routing core reads.
//!
//! Invariants:
//! - no allocation, no copy; every [`Span`] lies inside the scanned buffer;
//! - header names are matched case-insensitively, compact forms included
//!   (`v i m f t l c a`), values may be folded over continuation lines;
//! - a defect never aborts the scan early when more of the message can still
//!   be read: the reply builder needs the Via, From, To, Call-ID and CSeq of a
//!   malformed request to answer it. The first defect found is kept.

use super::feature_tag::{checked_cpm_services, CpmServices};
use super::params::{next_value_start, run, values, WORD};
use super::uri::checked_name_addr;
use super::via::{self, Via};
use super::{find_byte, find_byte2, is_token, le_word, rfind_byte, trim, Span};

/// The SIP methods the edge tells apart; anything else is `Other` and is
/// routed like any request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Message,
    Update,
    Prack,
    Subscribe,
    Notify,
    Refer,
    Info,
    Publish,
    Other,
}

impl Method {
    pub fn from_bytes(m: &[u8]) -> Method {
        match m {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"OPTIONS" => Method::Options,
            b"REGISTER" => Method::Register,
            b"MESSAGE" => Method::Message,
            b"UPDATE" => Method::Update,
            b"PRACK" => Method::Prack,
            b"SUBSCRIBE" => Method::Subscribe,
            b"NOTIFY" => Method::Notify,
            b"REFER" => Method::Refer,
            b"INFO" => Method::Info,
            b"PUBLISH" => Method::Publish,
            _ => Method::Other,
        }
    }

    pub const ALL: [Method; 15] = [
        Method::Invite,
        Method::Ack,
        Method::Bye,
        Method::Cancel,
        Method::Options,
        Method::Register,
        Method::Message,
        Method::Update,
        Method::Prack,
        Method::Subscribe,
        Method::Notify,
        Method::Refer,
        Method::Info,
        Method::Publish,
        Method::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Message => "MESSAGE",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Refer => "REFER",
            Method::Info => "INFO",
            Method::Publish => "PUBLISH",
            Method::Other => "other",
        }
    }
}

/// What is wrong with a message. For a request the reason becomes the
/// reason phrase of the `400` (or `505`); for a response it names the drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Defect {
    /// Only CR/LF/whitespace: a keepalive, never answered.
    Keepalive,
    BadStartLine,
    UnsupportedVersion,
    BadRequestUri,
    MissingBlankLine,
    /// A CR or LF that is not part of a CRLF in the start line or headers.
    BareLineEnd,
    MalformedHeader,
    NulInHeaders,
    MissingVia,
    BadVia,
    MissingFrom,
    BadFrom,
    MissingTo,
    BadTo,
    MissingCallId,
    MissingCSeq,
    BadCSeq,
    CSeqMethodMismatch,
    BadMaxForwards,
    BadContentLength,
    BodyTruncated,
    DuplicateCallId,
    DuplicateCSeq,
    DuplicateFrom,
    DuplicateTo,
    DuplicateMaxForwards,
    DuplicateContentLength,
    /// More P-Asserted-Identity lines than the edge can remove (RFC 3325
    /// allows two identities).
    TooManyAssertedIdentities,
    /// Not `word [ "@" word ]` (RFC 3261 §25.1 `callid`).
    BadCallId,
    /// A Route value the edge reads that is not a name-addr (or addr-spec).
    BadRoute,
    /// The first P-Asserted-Identity value is not a name-addr or addr-spec.
    BadAssertedIdentity,
    /// A `+g.3gpp.icsi-ref` in Contact whose value is not a quoted string.
    BadContact,
    /// The same in Accept-Contact.
    BadAcceptContact,
    /// A P-Preferred-Service value that is not a list of service IDs.
    BadPreferredService,
    /// The same in P-Asserted-Service.
    BadAssertedService,
}

impl Defect {
    /// The reason phrase sent in the `400`/`505` answer.
    pub fn reason(self) -> &'static str {
        match self {
            Defect::Keepalive => "Keepalive",
            Defect::BadStartLine => "Bad Request - Malformed Start Line",
            Defect::UnsupportedVersion => "Version Not Supported",
            Defect::BadRequestUri => "Bad Request - Malformed Request-URI",
            Defect::MissingBlankLine => "Bad Request - Missing Blank Line After Headers",
            Defect::BareLineEnd => "Bad Request - Line Not Ended By CRLF",
            Defect::MalformedHeader => "Bad Request - Malformed Header Line",
            Defect::NulInHeaders => "Bad Request - NUL Byte In Headers",
            Defect::MissingVia => "Bad Request - Missing Via",
            Defect::BadVia => "Bad Request - Malformed Via",
            Defect::MissingFrom => "Bad Request - Missing From",
            Defect::BadFrom => "Bad Request - Malformed From",
            Defect::MissingTo => "Bad Request - Missing To",
            Defect::BadTo => "Bad Request - Malformed To",
            Defect::MissingCallId => "Bad Request - Missing Call-ID",
            Defect::MissingCSeq => "Bad Request - Missing CSeq",
            Defect::BadCSeq => "Bad Request - Malformed CSeq",
            Defect::CSeqMethodMismatch => "Bad Request - CSeq Method Does Not Match",
            Defect::BadMaxForwards => "Bad Request - Malformed Max-Forwards",
            Defect::BadContentLength => "Bad Request - Malformed Content-Length",
            Defect::BodyTruncated => "Bad Request - Content-Length Exceeds Body",
            Defect::DuplicateCallId => "Bad Request - Duplicate Call-ID",
            Defect::DuplicateCSeq => "Bad Request - Duplicate CSeq",
            Defect::DuplicateFrom => "Bad Request - Duplicate From",
            Defect::DuplicateTo => "Bad Request - Duplicate To",
            Defect::DuplicateMaxForwards => "Bad Request - Duplicate Max-Forwards",
            Defect::DuplicateContentLength => "Bad Request - Conflicting Content-Length",
            Defect::TooManyAssertedIdentities => {
                "Bad Request - Too Many P-Asserted-Identity Headers"
            }
            Defect::BadCallId => "Bad Request - Malformed Call-ID",
            Defect::BadRoute => "Bad Request - Malformed Route",
            Defect::BadAssertedIdentity => "Bad Request - Malformed P-Asserted-Identity",
            Defect::BadContact => "Bad Request - Malformed Contact Feature Tag",
            Defect::BadAcceptContact => "Bad Request - Malformed Accept-Contact Feature Tag",
            Defect::BadPreferredService => "Bad Request - Malformed P-Preferred-Service",
            Defect::BadAssertedService => "Bad Request - Malformed P-Asserted-Service",
        }
    }

    /// Status code for a request with this defect.
    pub fn status(self) -> u16 {
        match self {
            Defect::UnsupportedVersion => 505,
            _ => 400,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartLine {
    Request {
        method: Method,
        method_span: Span,
        uri: Span,
    },
    Response {
        code: u16,
    },
}

/// P-Asserted-Identity lines remembered: RFC 3325 §9.1 allows at most two
/// identities (a sip/sips URI and a tel URI), one per line or both in one.
pub const MAX_PAI_LINES: usize = 2;

/// One Route value and where it sits, so it can be popped in place.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteValue {
    /// The name-addr text, e.g. `<sip:edge;lr>`.
    pub value: Span,
    /// The whole header line (name to CRLF, continuation lines included).
    pub line: Span,
    /// Start of the next value in the same line, if the line has one.
    pub next_in_line: Option<u32>,
}

/// How many Route values are remembered; more are counted, and routing never
/// needs to look past the first few (ours, possibly twice, then the next hop).
pub const MAX_ROUTES: usize = 4;

/// The scan result: offsets into the datagram, nothing owned.
#[derive(Clone, Copy, Debug)]
pub struct Message {
    pub start: StartLine,
    /// The start line without its CRLF.
    pub start_line: Span,
    /// All header lines, each with its CRLF; ends before the blank line.
    pub headers: Span,
    /// The body as delimited by Content-Length (or the rest of the datagram).
    pub body: Span,
    pub top_via: Option<Via>,
    pub top_via_line: Span,
    /// Start of the value after the top Via in the same line, if any.
    pub top_via_next: Option<u32>,
    /// A response's second Via (a request's is not parsed).
    pub second_via: Option<Via>,
    /// Via values seen (of a line's values, those past the third overall
    /// are not counted).
    pub via_count: u16,
    /// From the first Via line's start to the last one's end (other
    /// headers may sit between them): where a branch of ours can be.
    pub via_lines: Span,
    /// Max-Forwards value span and its number.
    pub max_forwards: Option<(Span, u32)>,
    pub call_id: Span,
    pub cseq_num: u32,
    pub cseq_method: Span,
    pub from: Span,
    pub from_uri: Span,
    pub from_tag: Option<Span>,
    pub to: Span,
    pub to_uri: Span,
    pub to_tag: Option<Span>,
    /// URI of the first P-Asserted-Identity value.
    pub pai_uri: Option<Span>,
    /// The P-Asserted-Identity lines (removed from an untrusted source's
    /// request); empty spans where there are fewer.
    pub pai_lines: [Span; MAX_PAI_LINES],
    pub routes: [RouteValue; MAX_ROUTES],
    /// All Route values seen (saturating).
    pub route_count: u8,
    /// The CPM services named by the first of Accept-Contact, Contact,
    /// P-Preferred-Service and P-Asserted-Service that names a CPM ICSI
    /// (routing asks only whether there is one).
    pub cpm: CpmServices,
    pub content_length: Option<u32>,
    /// Lines of every Content-Length / the Content-Type header (to rewrite a body).
    pub content_length_lines: [Span; 2],
    pub content_type: Option<Span>,
    pub content_type_line: Option<Span>,
    pub defect: Option<Defect>,
}

/// The scan of an empty datagram's fields before any is read: what
/// [`scan_into`] overwrites.
impl Default for Message {
    fn default() -> Message {
        Message::empty()
    }
}

impl Message {
    fn empty() -> Message {
        Message {
            start: StartLine::Response { code: 0 },
            start_line: Span::default(),
            headers: Span::default(),
            body: Span::default(),
            top_via: None,
            top_via_line: Span::default(),
            top_via_next: None,
            second_via: None,
            via_count: 0,
            via_lines: Span::default(),
            max_forwards: None,
            call_id: Span::default(),
            cseq_num: 0,
            cseq_method: Span::default(),
            from: Span::default(),
            from_uri: Span::default(),
            from_tag: None,
            to: Span::default(),
            to_uri: Span::default(),
            to_tag: None,
            pai_uri: None,
            pai_lines: [Span::default(); MAX_PAI_LINES],
            routes: [RouteValue::default(); MAX_ROUTES],
            route_count: 0,
            cpm: CpmServices::default(),
            content_length: None,
            content_length_lines: [Span::default(); 2],
            content_type: None,
            content_type_line: None,
            defect: None,
        }
    }

    #[inline]
    fn flag(&mut self, d: Defect) {
        if self.defect.is_none() {
            self.defect = Some(d);
        }
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn method(&self) -> Option<Method> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The remembered Route values, in order.
    pub fn route_values(&self) -> &[RouteValue] {
        &self.routes[..(self.route_count as usize).min(MAX_ROUTES)]
    }
}

/// The headers the scan reads; everything else is carried through untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    Via,
    MaxForwards,
    CallId,
    CSeq,
    From,
    To,
    Route,
    RecordRoute,
    PAssertedIdentity,
    AcceptContact,
    Contact,
    PPreferredService,
    PAssertedService,
    ContentLength,
    ContentType,
    Other,
}

/// A known header name as 64-bit words, so that the name is compared
/// case-insensitively with a few word operations instead of a byte loop
/// (callgrind: `header_kind` was ~83 instructions per line).
struct NamePat {
    name: &'static [u8],
    kind: Header,
    /// Per 8-byte word: the bytes that belong to the name,
    and: [u64; 3],
    /// 0x20 at the letters (folding case is exact for them: only `X` and
    /// `x` OR to `x`; `-` is compared as is),
    or: [u64; 3],
    /// and the lowercase name.
    want: [u64; 3],
}

const fn name_pat(name: &'static [u8], kind: Header) -> NamePat {
    assert!(name.len() <= 24);
    let (mut and, mut or, mut want) = ([0u64; 3], [0u64; 3], [0u64; 3]);
    let mut i = 0;
    while i < name.len() {
        let (k, sh) = (i / 8, (i % 8) * 8);
        let b = name[i];
        assert!(b.is_ascii_alphabetic() || b == b'-');
        and[k] |= 0xff << sh;
        if b.is_ascii_alphabetic() {
            or[k] |= 0x20 << sh;
        }
        want[k] |= (b.to_ascii_lowercase() as u64) << sh;
        i += 1;
    }
    NamePat {
        name,
        kind,
        and,
        or,
        want,
    }
}

const TO: NamePat = name_pat(b"to", Header::To);
const VIA: NamePat = name_pat(b"via", Header::Via);
const FROM: NamePat = name_pat(b"from", Header::From);
const CSEQ: NamePat = name_pat(b"cseq", Header::CSeq);
const ROUTE: NamePat = name_pat(b"route", Header::Route);
const CALL_ID: NamePat = name_pat(b"call-id", Header::CallId);
const CONTACT: NamePat = name_pat(b"contact", Header::Contact);
const MAX_FORWARDS: NamePat = name_pat(b"max-forwards", Header::MaxForwards);
const RECORD_ROUTE: NamePat = name_pat(b"record-route", Header::RecordRoute);
const CONTENT_TYPE: NamePat = name_pat(b"content-type", Header::ContentType);
const ACCEPT_CONTACT: NamePat = name_pat(b"accept-contact", Header::AcceptContact);
const CONTENT_LENGTH: NamePat = name_pat(b"content-length", Header::ContentLength);
const P_ASSERTED_SERVICE: NamePat = name_pat(b"p-asserted-service", Header::PAssertedService);
const P_PREFERRED_SERVICE: NamePat = name_pat(b"p-preferred-service", Header::PPreferredService);
const P_ASSERTED_IDENTITY: NamePat = name_pat(b"p-asserted-identity", Header::PAssertedIdentity);

/// Is `line` (which starts with the `len`-byte name) this header's name?
#[inline(always)]
fn name_is(line: &[u8], len: usize, p: &NamePat) -> bool {
    debug_assert_eq!(len, p.name.len());
    let words = len.div_ceil(8);
    if line.len() < 8 * words {
        return line[..len].eq_ignore_ascii_case(p.name);
    }
    (0..words).all(|k| (le_word(&line[8 * k..]) & p.and[k]) | p.or[k] == p.want[k])
}

/// Classify a header name (case-insensitive, compact forms included).
pub fn header_kind(name: &[u8]) -> Header {
    header_kind_in(name, name.len())
}

/// Classify the `len`-byte name at the start of `line`. Reading whole words
/// of `line` past the name is what makes this cheap; the words are masked
/// to the name.
#[inline(always)]
fn header_kind_in(line: &[u8], len: usize) -> Header {
    let Some(first) = line.first().filter(|_| len > 0) else {
        return Header::Other;
    };
    let f = first.to_ascii_lowercase();
    let p = match (len, f) {
        (1, b'v') => return Header::Via,
        (1, b'i') => return Header::CallId,
        (1, b'f') => return Header::From,
        (1, b't') => return Header::To,
        (1, b'm') => return Header::Contact,
        (1, b'l') => return Header::ContentLength,
        (1, b'c') => return Header::ContentType,
        (1, b'a') => return Header::AcceptContact,
        (2, b't') => &TO,
        (3, b'v') => &VIA,
        (4, b'f') => &FROM,
        (4, b'c') => &CSEQ,
        (5, b'r') => &ROUTE,
        (7, b'c') if line[3].eq_ignore_ascii_case(&b'l') => &CALL_ID,
        (7, b'c') => &CONTACT,
        (12, b'm') => &MAX_FORWARDS,
        (12, b'r') => &RECORD_ROUTE,
        (12, b'c') => &CONTENT_TYPE,
        (14, b'a') => &ACCEPT_CONTACT,
        (14, b'c') => &CONTENT_LENGTH,
        (18, b'p') => &P_ASSERTED_SERVICE,
        (19, b'p') if line[2].eq_ignore_ascii_case(&b'p') => &P_PREFERRED_SERVICE,
        (19, b'p') => &P_ASSERTED_IDENTITY,
        _ => return Header::Other,
    };
    if name_is(line, len, p) {
        p.kind
    } else {
        Header::Other
    }
}

/// One logical header: continuation lines joined (by span, not by copy).
#[derive(Clone, Copy, Debug)]
pub struct HeaderLine {
    pub kind: Header,
    pub name: Span,
    /// The value, trimmed, possibly containing CRLF+WS of folded lines.
    pub value: Span,
    /// Name through the final CRLF.
    pub line: Span,
}

/// Iterates the logical header lines of a block. A line without a colon is
/// yielded with `kind == Other` and an empty name so the caller can flag it.
///
/// Each physical line is delimited by one search for its CR or LF, which
/// also checks its ending: the walk is the only pass over the header bytes
/// (callgrind: a separate CRLFCRLF search plus CR/LF counts had cost ~2 500
/// instructions of an INVITE). The walk stops at the first empty line of
/// any ending (CRLF or bare LF), so when the block is open-ended (the scan)
/// it also finds where the headers end.
pub struct HeaderLines<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
    /// The scan's walk: `end` is the datagram's end, and a last line that
    /// no LF ends is not a header line (the headers lack their blank line).
    open_ended: bool,
    /// Set when a line end other than CRLF was seen: a bare LF, or a CR
    /// that no LF follows.
    pub bare_line_end: bool,
    /// The empty line that stopped the walk: (its start, the body's start).
    pub blank: Option<(usize, usize)>,
}

/// The header lines of an already delimited block (`Message::headers`).
pub fn header_lines(buf: &[u8], headers: Span) -> HeaderLines<'_> {
    let end = (headers.end as usize).min(buf.len());
    let pos = (headers.start as usize).min(end);
    HeaderLines {
        buf,
        pos,
        end,
        open_ended: false,
        bare_line_end: false,
        blank: None,
    }
}

impl Iterator for HeaderLines<'_> {
    type Item = HeaderLine;
    #[inline(always)]
    fn next(&mut self) -> Option<HeaderLine> {
        let (buf, end, start) = (self.buf, self.end, self.pos);
        if start >= end {
            return None;
        }
        let empty = match &buf[start..end] {
            [b'\n', ..] => Some(1),
            [b'\r', b'\n', ..] => Some(2),
            _ => None,
        };
        if let Some(len) = empty {
            self.bare_line_end |= len == 1;
            self.blank = Some((start, start + len));
            self.pos = end;
            return None;
        }
        // Extend over continuation lines (next physical line starts with SP/HT).
        let mut from = start;
        let mut complete = start;
        let line_end = loop {
            let Some(i) = find_byte2(b'\r', b'\n', &buf[from..end]) else {
                if !self.open_ended {
                    break end;
                }
                // The datagram ends inside a line: not a header line.
                if complete == start {
                    self.pos = end;
                    return None;
                }
                break complete;
            };
            let at = from + i;
            let e = if buf[at] == b'\n' {
                self.bare_line_end = true;
                at + 1
            } else if buf.get(at + 1) == Some(&b'\n') {
                at + 2
            } else {
                // A CR inside a line is content to whoever reads it with
                // LF as the line end, and a line break to others.
                self.bare_line_end = true;
                from = at + 1;
                continue;
            };
            complete = e;
            if e < end && matches!(buf[e], b' ' | b'\t') {
                from = e;
                continue;
            }
            break e;
        };
        self.pos = line_end;
        let line = Span::new(start, line_end);
        let text = &buf[start..line_end];
        let Some(colon) = find_byte(b':', text) else {
            return Some(HeaderLine {
                kind: Header::Other,
                name: Span::new(start, start),
                value: trim(buf, line),
                line,
            });
        };
        let mut name_end = colon;
        while name_end > 0 && matches!(text[name_end - 1], b' ' | b'\t') {
            name_end -= 1;
        }
        let name_text = &text[..name_end];
        let kind = header_kind_in(text, name_end);
        // A known name is a valid token by construction; others are checked.
        let valid = kind != Header::Other
            || (!name_text.is_empty() && name_text.iter().all(|b| is_token(*b)));
        let value = trim_value(
            buf,
            &text[colon + 1..],
            Span::new(start + colon + 1, line_end),
        );
        Some(HeaderLine {
            kind,
            name: if valid {
                Span::new(start, start + name_end)
            } else {
                Span::new(start, start)
            },
            value,
            line,
        })
    }
}

/// [`trim`] of the text after a header's colon (`after`, at `span`), with
/// the usual shape `SP value CRLF` (value neither starting nor ending with
/// LWS) settled by four byte checks instead of two LWS loops (the trailing
/// one always stepping over the CRLF first). `after` is passed as a slice
/// the walk already holds: `Span::get`'s checked slicing cost as much again.
#[inline(always)]
fn trim_value(buf: &[u8], after: &[u8], span: Span) -> Span {
    debug_assert_eq!(after, span.get(buf));
    if let [b' ', first, .., last, b'\r', b'\n'] = after {
        if !super::is_lws(*first) && !super::is_lws(*last) {
            return Span::new(span.start as usize + 1, span.end as usize - 2);
        }
    }
    trim(buf, span)
}

fn parse_u32(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = s.iter().fold(0u64, |a, d| a * 10 + u64::from(d - b'0'));
    u32::try_from(v).ok()
}

/// Scan one datagram. Never panics; the result's `defect` says what is wrong.
pub fn scan(buf: &[u8]) -> Message {
    let mut m = Message::empty();
    scan_into(buf, &mut m);
    m
}

/// [`scan`] into a caller-owned `Message` (all of it overwritten): the hot
/// path keeps one per worker instead of moving the ~460-byte result out of
/// every call (callgrind: a memcpy of ~76 instructions per move).
pub fn scan_into(buf: &[u8], m: &mut Message) {
    *m = Message::empty();
    // RFC 3261 §7.5: empty lines before the start line are ignored.
    let Some(first) = buf
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n' | b' ' | b'\t' | 0))
    else {
        m.flag(Defect::Keepalive);
        return;
    };
    let Some(sl_len) = find_byte(b'\n', &buf[first..]) else {
        m.flag(Defect::BadStartLine);
        return;
    };
    let sl_nl = first + sl_len;
    let sl_end = if sl_nl > first && buf[sl_nl - 1] == b'\r' {
        sl_nl - 1
    } else {
        sl_nl
    };
    m.start_line = Span::new(first, sl_end);
    scan_start_line(buf, m);

    let hdr_start = sl_nl + 1;
    // RFC 3261 §7: lines end with CRLF. A bare LF or CR would let the next
    // hop split the lines differently from us: refused. The headers then
    // end at the first empty line of any ending, so that the answer never
    // takes body lines for headers. The start line's defect comes first,
    // then the block's (line ends, blank line, NUL), then the headers'.
    let bare_in_start_line = sl_end == sl_nl || find_byte(b'\r', &buf[first..sl_end]).is_some();
    let start_defect = m.defect.take();
    let walk = scan_headers(buf, m, hdr_start);
    let header_defect = std::mem::replace(&mut m.defect, start_defect);
    if bare_in_start_line || walk.bare_line_end {
        m.flag(Defect::BareLineEnd);
    }
    let (headers_end, body_start) = match walk.blank {
        Some(b) => b,
        None => {
            m.flag(Defect::MissingBlankLine);
            (walk.pos, buf.len())
        }
    };
    m.headers = Span::new(hdr_start, headers_end.max(hdr_start));
    if find_byte(0, m.headers.get(buf)).is_some() && !nuls_only_quoted(buf, m.headers) {
        m.flag(Defect::NulInHeaders);
    }
    if let Some(d) = header_defect {
        m.flag(d);
    }

    // Body: Content-Length delimits it on UDP too when present (RFC 3261
    // §18.3: extra octets are discarded; fewer is an error).
    let available = buf.len().saturating_sub(body_start);
    let body_len = match m.content_length {
        Some(cl) if cl as usize > available => {
            m.flag(Defect::BodyTruncated);
            available
        }
        Some(cl) => cl as usize,
        None => available,
    };
    m.body = Span::new(
        body_start.min(buf.len()),
        body_start.min(buf.len()) + body_len,
    );

    if let StartLine::Request { method_span, .. } = m.start {
        if m.via_count == 0 {
            m.flag(Defect::MissingVia);
        }
        if m.from.is_empty() {
            m.flag(Defect::MissingFrom);
        }
        if m.to.is_empty() {
            m.flag(Defect::MissingTo);
        }
        if m.call_id.is_empty() {
            m.flag(Defect::MissingCallId);
        }
        if m.cseq_method.is_empty() {
            m.flag(Defect::MissingCSeq);
        } else if m.cseq_method.get(buf) != method_span.get(buf) {
            m.flag(Defect::CSeqMethodMismatch);
        }
    } else if m.via_count == 0 {
        m.flag(Defect::MissingVia);
    } else if m.call_id.is_empty()
        || m.from.is_empty()
        || m.to.is_empty()
        || m.cseq_method.is_empty()
    {
        // RFC 3261 §8.1.1: a response without them cannot be matched to a
        // transaction by anyone downstream; it is dropped, not relayed.
        m.flag(match () {
            _ if m.call_id.is_empty() => Defect::MissingCallId,
            _ if m.from.is_empty() => Defect::MissingFrom,
            _ if m.to.is_empty() => Defect::MissingTo,
            _ => Defect::MissingCSeq,
        });
    }
}

fn scan_start_line(buf: &[u8], m: &mut Message) {
    let line = m.start_line.get(buf);
    if line.len() >= 8 && line[..8].eq_ignore_ascii_case(b"SIP/2.0 ") {
        let rest = &line[8..];
        let code_ok = rest.len() >= 3
            && rest[..3].iter().all(u8::is_ascii_digit)
            && rest.get(3).is_none_or(|b| *b == b' ');
        if !code_ok {
            m.flag(Defect::BadStartLine);
            return;
        }
        let code = rest[..3]
            .iter()
            .fold(0u16, |a, d| a * 10 + u16::from(d - b'0'));
        if !(100..=699).contains(&code) {
            m.flag(Defect::BadStartLine);
            return;
        }
        m.start = StartLine::Response { code };
        return;
    }
    if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"SIP/") {
        // A status line of another SIP version: nothing we may answer.
        m.flag(Defect::BadStartLine);
        return;
    }
    // Request-Line = Method SP Request-URI SP SIP-Version
    let base = m.start_line.start as usize;
    let Some(sp1) = find_byte(b' ', line) else {
        m.flag(Defect::BadStartLine);
        return;
    };
    let Some(sp2) = rfind_byte(b' ', line) else {
        m.flag(Defect::BadStartLine);
        return;
    };
    let method = &line[..sp1];
    if method.is_empty() || !method.iter().all(|b| is_token(*b)) {
        m.flag(Defect::BadStartLine);
        return;
    }
    let method_span = Span::new(base, base + sp1);
    let uri = Span::new(base + sp1 + 1, base + sp2.max(sp1 + 1));
    m.start = StartLine::Request {
        method: Method::from_bytes(method),
        method_span,
        uri,
    };
    let version = &line[sp2 + 1..];
    if sp2 <= sp1 + 1 || find_byte(b' ', uri.get(buf)).is_some() {
        m.flag(Defect::BadStartLine);
    } else if !version.eq_ignore_ascii_case(b"SIP/2.0") {
        if version.len() > 4 && version[..4].eq_ignore_ascii_case(b"SIP/") {
            m.flag(Defect::UnsupportedVersion);
        } else {
            m.flag(Defect::BadStartLine);
        }
    }
}

/// Where the header walk ended: the blank line (if any), the end of the
/// last complete header line, and whether a line end was not CRLF.
struct Walk {
    blank: Option<(usize, usize)>,
    pos: usize,
    bare_line_end: bool,
}

fn scan_headers(buf: &[u8], m: &mut Message, hdr_start: usize) -> Walk {
    // A response is routed on its Vias alone (RFC 3261 §16.7): its From/To
    // URIs and tags, Route values, asserted identity and CPM feature tags
    // are nobody's business here, so they are not parsed (callgrind: -13 %
    // of a 200 OK's instructions). Their presence is still checked.
    let request = m.is_request();
    let mut lines = HeaderLines {
        buf,
        pos: hdr_start.min(buf.len()),
        end: buf.len(),
        open_ended: true,
        bare_line_end: false,
        blank: None,
    };
    let mut last_end = lines.pos;
    for h in lines.by_ref() {
        last_end = h.line.end as usize;
        if h.name.is_empty() {
            m.flag(Defect::MalformedHeader);
            continue;
        }
        match h.kind {
            Header::Via => {
                m.via_lines = if m.via_lines.is_empty() {
                    h.line
                } else {
                    Span::new(m.via_lines.start as usize, h.line.end as usize)
                };
                scan_via(buf, m, &h)
            }
            Header::MaxForwards => {
                if m.max_forwards.is_some() {
                    m.flag(Defect::DuplicateMaxForwards);
                }
                match parse_u32(h.value.get(buf)) {
                    Some(v) => m.max_forwards = Some((h.value, v)),
                    None => m.flag(Defect::BadMaxForwards),
                }
            }
            Header::CallId => {
                if !m.call_id.is_empty() {
                    m.flag(Defect::DuplicateCallId);
                }
                m.call_id = h.value;
                // A response's Call-ID is the request's or its branch MAC
                // fails: it is not read apart from that.
                if request && !is_call_id(h.value.get(buf)) {
                    m.flag(Defect::BadCallId);
                }
            }
            Header::CSeq => {
                if !m.cseq_method.is_empty() {
                    m.flag(Defect::DuplicateCSeq);
                }
                scan_cseq(buf, m, h.value);
            }
            Header::From | Header::To => scan_party(buf, m, &h, request),
            Header::Route if request => {
                let mut vals = values(buf, h.value).peekable();
                // A value is popped up to the next one: an empty element
                // in front of the first would be left alone in the line.
                // A Route with no value at all is malformed too.
                if vals.peek().is_none_or(|v| v.start != h.value.start) {
                    m.flag(Defect::BadRoute);
                }
                while let Some(v) = vals.next() {
                    let idx = m.route_count as usize;
                    if idx < MAX_ROUTES {
                        if checked_name_addr(buf, v).is_none() {
                            m.flag(Defect::BadRoute);
                        }
                        m.routes[idx] = RouteValue {
                            value: v,
                            line: h.line,
                            next_in_line: vals.peek().map(|n| n.start),
                        };
                    }
                    m.route_count = m.route_count.saturating_add(1);
                }
            }
            Header::PAssertedIdentity if request => {
                if m.pai_uri.is_none() {
                    // One identity per line is the usual shape: no list to split.
                    let first = if find_byte(b',', h.value.get(buf)).is_none() {
                        Some(h.value).filter(|v| !v.is_empty())
                    } else {
                        values(buf, h.value).next()
                    };
                    match first.and_then(|v| checked_name_addr(buf, v)) {
                        Some((uri, _)) => m.pai_uri = Some(uri),
                        None => m.flag(Defect::BadAssertedIdentity),
                    }
                }
                match m.pai_lines.iter_mut().find(|l| l.is_empty()) {
                    Some(slot) => *slot = h.line,
                    None => m.flag(Defect::TooManyAssertedIdentities),
                }
            }
            // Routing asks only whether a CPM ICSI is present, so the
            // first header that names one settles it (callgrind: a search
            // of the whole block plus a check of every hit cost ~22 % of an
            // INVITE's instructions).
            Header::AcceptContact | Header::Contact if request && !m.cpm.any() => {
                match checked_cpm_services(h.value.get(buf), true) {
                    Some(c) => m.cpm = c,
                    None if h.kind == Header::Contact => m.flag(Defect::BadContact),
                    None => m.flag(Defect::BadAcceptContact),
                }
            }
            Header::PPreferredService | Header::PAssertedService if request && !m.cpm.any() => {
                match checked_cpm_services(h.value.get(buf), false) {
                    Some(c) => m.cpm = c,
                    None if h.kind == Header::PPreferredService => {
                        m.flag(Defect::BadPreferredService)
                    }
                    None => m.flag(Defect::BadAssertedService),
                }
            }
            Header::ContentLength => {
                // Equal duplicates are tolerated; both lines go when a body is rewritten.
                let slot = usize::from(m.content_length.is_some());
                if !m.content_length_lines[1].is_empty() {
                    // A third line would survive a body rewrite.
                    m.flag(Defect::DuplicateContentLength);
                }
                m.content_length_lines[slot] = h.line;
                match parse_u32(h.value.get(buf)) {
                    Some(v) => {
                        if m.content_length.is_some_and(|old| old != v) {
                            m.flag(Defect::DuplicateContentLength);
                        }
                        m.content_length = Some(v);
                    }
                    None => m.flag(Defect::BadContentLength),
                }
            }
            Header::ContentType => {
                m.content_type = Some(h.value);
                m.content_type_line = Some(h.line);
            }
            Header::Route
            | Header::PAssertedIdentity
            | Header::AcceptContact
            | Header::Contact
            | Header::PPreferredService
            | Header::PAssertedService
            | Header::RecordRoute
            | Header::Other => {}
        }
    }
    Walk {
        blank: lines.blank,
        pos: last_end,
        bare_line_end: lines.bare_line_end,
    }
}

/// One From or To line: the same `name-addr` grammar (RFC 3261 §20.20,
/// §20.39), the same checks, into its own fields; a second one of a kind is
/// flagged. A request's value is checked to its end and its URI and tag
/// kept; a response's is only noted (it is routed on its Vias).
#[inline(always)]
fn scan_party(buf: &[u8], m: &mut Message, h: &HeaderLine, request: bool) {
    let from = h.kind == Header::From;
    let (seen, duplicate, bad) = if from {
        (m.from, Defect::DuplicateFrom, Defect::BadFrom)
    } else {
        (m.to, Defect::DuplicateTo, Defect::BadTo)
    };
    if !seen.is_empty() {
        m.flag(duplicate);
    }
    let (uri, tag) = match request.then(|| checked_name_addr(buf, h.value)) {
        Some(Some(parts)) => parts,
        Some(None) => {
            m.flag(bad);
            (Span::default(), None)
        }
        None => (Span::default(), None),
    };
    if from {
        (m.from, m.from_uri, m.from_tag) = (h.value, uri, tag);
    } else {
        (m.to, m.to_uri, m.to_tag) = (h.value, uri, tag);
    }
}

/// `callid = word [ "@" word ]`.
fn is_call_id(v: &[u8]) -> bool {
    let e = run(v, 0, WORD);
    if e == v.len() {
        return e > 0;
    }
    let e2 = run(v, e + 1, WORD);
    e > 0 && v[e] == b'@' && e2 > e + 1 && e2 == v.len()
}

/// Is every NUL in the header block the escaped octet of a quoted-pair
/// (RFC 3261 §25.1 allows `\` + 0x00 inside a quoted string, RFC 4475
/// §3.1.1.2)? Any other NUL would cut the message short for a next hop
/// that reads C strings. Walked only when the block holds a NUL.
#[cold]
fn nuls_only_quoted(buf: &[u8], headers: Span) -> bool {
    header_lines(buf, headers).all(|h| {
        let line = h.line.get(buf);
        if find_byte(0, line).is_none() {
            return true;
        }
        if h.name.is_empty() {
            return false;
        }
        // From the colon on (a name holds no NUL, nor the LWS after it).
        let colon = h.name.len() + find_byte(b':', &line[h.name.len()..]).unwrap_or(0);
        let mut quoted = false;
        let mut i = colon;
        while i < line.len() {
            match line[i] {
                b'"' => quoted = !quoted,
                b'\\' if quoted => i += 1,
                0 => return false,
                _ => {}
            }
            i += 1;
        }
        true
    })
}

fn scan_via(buf: &[u8], m: &mut Message, h: &HeaderLine) {
    // One value per Via line is the usual shape. Without a comma anywhere
    // the (already trimmed) value is that one value, and the list iterator's
    // quote-aware search, trim and second call are not needed (callgrind:
    // the 200 OK with its two Via lines 5,595 -> 5,286 instructions, the
    // INVITE 8,847 -> 8,670, with the second Via of requests left alone).
    if find_byte(b',', h.value.get(buf)).is_none() {
        if !h.value.is_empty() {
            scan_via_value(buf, m, h, h.value);
        }
        return;
    }
    for v in values(buf, h.value) {
        if !scan_via_value(buf, m, h, v) {
            return;
        }
    }
}

/// Note one Via value `v` of line `h`; false from the third value on, after
/// which the rest of the line is not looked at.
#[inline(always)]
fn scan_via_value(buf: &[u8], m: &mut Message, h: &HeaderLine, v: Span) -> bool {
    m.via_count = m.via_count.saturating_add(1);
    match m.via_count {
        1 => {
            m.top_via_line = h.line;
            let next = next_value_start(buf, v.end as usize, h.value.end as usize);
            m.top_via_next = next.map(|p| p as u32);
            // An empty element before or after it (`Via: , v`, `v,`,
            // `v,,w`) would be left alone in the line when it is popped.
            let lone = v.start != h.value.start
                || next.is_some_and(|p| p == h.value.end as usize || buf[p] == b',');
            match via::parse(buf, v).filter(|_| !lone) {
                Some(parsed) => m.top_via = Some(parsed),
                None => m.flag(Defect::BadVia),
            }
        }
        // Only a response is routed on the second Via (one that does not
        // parse leaves it without a next hop, a counted drop); in a request
        // it is the next hops' business, not ours, so it is not parsed.
        2 => {
            if !m.is_request() {
                m.second_via = via::parse(buf, v);
            }
        }
        _ => return false,
    }
    true
}

fn scan_cseq(buf: &[u8], m: &mut Message, value: Span) {
    let v = value.get(buf);
    let Some(sp) = v.iter().position(|b| super::is_lws(*b)) else {
        m.flag(Defect::BadCSeq);
        return;
    };
    let Some(num) = parse_u32(&v[..sp]).filter(|n| *n < 1 << 31) else {
        m.flag(Defect::BadCSeq);
        return;
    };
    let method = trim(buf, value.sub(sp, v.len()));
    if method.is_empty() || !method.get(buf).iter().all(|b| is_token(*b)) {
        m.flag(Defect::BadCSeq);
        return;
    }
    m.cseq_num = num;
    m.cseq_method = method;
}

/// A datagram with its scan: the bytes, what the scanner found in them
/// and the real source. Every phase after the scan takes these together.
#[derive(Clone, Copy)]
pub struct Scanned<'a> {
    pub buf: &'a [u8],
    pub m: &'a Message,
    pub src: std::net::SocketAddr,
    /// The flow token of the stream connection it arrived on (`None`: a
    /// datagram): written into the Via the edge adds, so the response
    /// finds the connection ([`super::flow`]).
    pub flow: Option<&'a [u8]>,
}

impl<'a> Scanned<'a> {
    pub fn new(buf: &'a [u8], m: &'a Message, src: std::net::SocketAddr) -> Scanned<'a> {
        Scanned {
            buf,
            m,
            src,
            flow: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::{is_lws, skip_lws};

    /// The definition the tag search must agree with: the loop over the
    /// parameters that `header_params` returns, from their first byte.
    fn reference_tag_of(buf: &[u8], value: Span) -> Option<Span> {
        let params = crate::sip::uri::header_params(buf, value);
        let p = params.get(buf);
        let mut in_quote = false;
        for i in 0..p.len() {
            match p[i] {
                b'"' => in_quote = !in_quote,
                b';' if !in_quote => {
                    let j = skip_lws(p, i + 1);
                    if p.len() >= j + 3 && p[j..j + 3].eq_ignore_ascii_case(b"tag") {
                        let k = skip_lws(p, j + 3);
                        if p.get(k) == Some(&b'=') {
                            let k = skip_lws(p, k + 1);
                            let v_end = p[k..]
                                .iter()
                                .position(|b| *b == b';' || is_lws(*b))
                                .map_or(p.len(), |n| k + n);
                            return (v_end > k).then(|| params.sub(k, v_end));
                        }
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// Every short value over the bytes the tag reading reacts to, behind
    /// name-addr and addr-spec prefixes: where the checked reading accepts
    /// the value, the same URI as `addr_of` and the same tag as the plain
    /// loop; and it refuses what no grammar allows.
    #[test]
    fn checked_name_addr_agrees_with_the_plain_definition() {
        let tails = crate::sip::short_strings(b";tAG= \"x<>", 5);
        let mut accepted = 0;
        for head in [
            &b"<sip:a@b>"[..],
            b"\"A;tag=q\" <sip:a@b>",
            b"sip:a@b",
            b"<sip:a@b>;tag=",
            b"<sip:a@b>;Tag= ",
            b"",
        ] {
            for t in &tails {
                let mut s = head.to_vec();
                s.extend_from_slice(t);
                let value = trim(&s, Span::new(0, s.len()));
                let shown = String::from_utf8_lossy(&s);
                let Some((uri, tag)) = checked_name_addr(&s, value) else {
                    continue;
                };
                accepted += 1;
                assert_eq!(Some(uri), crate::sip::uri::addr_of(&s, value), "{shown}");
                assert_eq!(tag, reference_tag_of(&s, value), "{shown}");
            }
        }
        assert!(accepted > 1000, "{accepted}");
        for bad in [
            &b"<sip:a@b>;;tag=1"[..],
            b"<sip:a@b>;tag=",
            b"<sip:a@b>;tag=\"1\"",
            b"<sip:a@b> x",
            b"< sip:a@b>",
            b"<sip:a@b >",
            b"\"A <sip:a@b>",
            b"A, B <sip:a@b>",
            b"sip:a@b?x=y",
            b"sip:a,b@c",
            b"<sip:a@b",
            b"<>",
        ] {
            assert_eq!(
                checked_name_addr(bad, Span::new(0, bad.len())),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// The shape check agrees with the plain trim on every short text over
    /// the bytes it looks at.
    #[test]
    fn trim_value_is_trim() {
        let texts = crate::sip::short_strings(b" \t\r\nx", 7);
        for t in &texts {
            let mut buf = b"Name:".to_vec();
            buf.extend_from_slice(t);
            let span = Span::new(5, buf.len());
            let v = trim_value(&buf, &buf[5..], span);
            assert_eq!(v, trim(&buf, span), "{t:?}");
        }
    }

    const KNOWN: [(&[u8], Header); 15] = [
        (b"To", Header::To),
        (b"Via", Header::Via),
        (b"From", Header::From),
        (b"CSeq", Header::CSeq),
        (b"Route", Header::Route),
        (b"Call-ID", Header::CallId),
        (b"Contact", Header::Contact),
        (b"Max-Forwards", Header::MaxForwards),
        (b"Record-Route", Header::RecordRoute),
        (b"Content-Type", Header::ContentType),
        (b"Accept-Contact", Header::AcceptContact),
        (b"Content-Length", Header::ContentLength),
        (b"P-Asserted-Service", Header::PAssertedService),
        (b"P-Preferred-Service", Header::PPreferredService),
        (b"P-Asserted-Identity", Header::PAssertedIdentity),
    ];

    /// The word compare against the plain definition: every byte of every
    /// name replaced by each of the 256 values, in a line long enough for
    /// the word path and in the bare name (the byte-loop fallback).
    #[test]
    fn header_kind_is_exact_ascii_case_folding() {
        for (name, kind) in KNOWN {
            for i in 0..name.len() {
                for b in 0..=255u8 {
                    let mut n = name.to_vec();
                    n[i] = b;
                    let expect = if n.eq_ignore_ascii_case(name) {
                        kind
                    } else {
                        Header::Other
                    };
                    let mut line = n.clone();
                    line.extend_from_slice(b": value that is long enough\r\n");
                    assert_eq!(header_kind_in(&line, n.len()), expect, "{line:?}");
                    assert_eq!(header_kind(&n), expect, "{n:?}");
                }
            }
            let upper = name.to_ascii_uppercase();
            assert_eq!(header_kind(&upper), kind);
            let lower = name.to_ascii_lowercase();
            assert_eq!(header_kind(&lower), kind);
        }
        for (c, kind) in [
            (b'v', Header::Via),
            (b'I', Header::CallId),
            (b'f', Header::From),
            (b'T', Header::To),
            (b'm', Header::Contact),
            (b'l', Header::ContentLength),
            (b'C', Header::ContentType),
            (b'a', Header::AcceptContact),
            (b'x', Header::Other),
        ] {
            assert_eq!(header_kind(&[c]), kind);
        }
        assert_eq!(header_kind(b""), Header::Other);
        assert_eq!(header_kind(b"Subject"), Header::Other);
    }
}
