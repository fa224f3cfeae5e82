//! RFC 8866 SDP, as much of it as the seed 5.2.3.7 media policy needs, over
//! the original body bytes.
//!
//! This module owns two things:
//! - [`parse`]: validate a session description and describe each media
//!   section by byte ranges into the body plus the few decoded fields the
//!   policy looks at (media type, port, proto, formats, MSRP accept-types,
//!   RFC 5547 file size, direction);
//! - [`refuse_streams`]: copy the body with some streams refused the
//!   RFC 3264 way (port 0, m= line kept, the rest of the section dropped).
//!
//! Invariants:
//! - the parser never panics and never indexes without a bound: the input
//!   is whatever a peer sent, and this runs on threads that must survive it;
//! - ranges in a [`Sdp`] returned by `parse(body)` are valid for `body`,
//!   ordered and non-overlapping: `range.start == mline.start <
//!   port_span.start < port_span.end <= mline.end <= range.end`, and each
//!   section starts where the previous one ends;
//! - the work is bounded: at most [`MAX_BODY`] bytes and [`MAX_MEDIA`]
//!   media sections, so the slow path cannot be held by one request;
//! - every [`SdpError`] text is short printable ASCII without any input
//!   bytes, because it becomes a SIP reason phrase.
//!
//! Leniencies (real UAs do these and rejecting them would reject real
//! calls): CRLF and LF endings, even mixed (the first line's is recorded);
//! a missing line ending on the last line; trailing empty lines at the end
//! of the body; several spaces between m= line fields; unknown line types.
//! Not checked: `c=` presence (RFC 8866 §5.7) and the order of session
//! lines; the policy does not depend on them.

use std::ops::Range;

/// Largest body accepted (64 KiB): a session description for a CPM session
/// is a few hundred bytes; anything this large is an attack or a mistake.
pub const MAX_BODY: usize = 64 * 1024;
/// Most media sections accepted: bounds per-stream work in the policy.
pub const MAX_MEDIA: usize = 64;

/// The `<media>` field of an m= line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaType {
    Audio,
    Video,
    Message,
    Application,
    Text,
    Image,
    /// Any other media name, lowercased so that comparisons (e.g. the same
    /// media type at a position in offer and answer) are case-insensitive.
    Other(String),
}

impl MediaType {
    /// Case-insensitive: `"Audio"` and `"audio"` are the same media.
    pub fn parse(s: &str) -> MediaType {
        match s.to_ascii_lowercase().as_str() {
            "audio" => MediaType::Audio,
            "video" => MediaType::Video,
            "message" => MediaType::Message,
            "application" => MediaType::Application,
            "text" => MediaType::Text,
            "image" => MediaType::Image,
            _ => MediaType::Other(s.to_ascii_lowercase()),
        }
    }

    /// The lowercase media name as written in an m= line.
    pub fn name(&self) -> &str {
        match self {
            MediaType::Audio => "audio",
            MediaType::Video => "video",
            MediaType::Message => "message",
            MediaType::Application => "application",
            MediaType::Text => "text",
            MediaType::Image => "image",
            MediaType::Other(s) => s,
        }
    }
}

/// One media section (an m= line and the lines up to the next m= line).
#[derive(Clone, Debug)]
pub struct Media {
    /// The whole media section in the body: from "m=" to the end of its last
    /// line, including that line's ending.
    pub range: Range<usize>,
    /// The m= line without its line ending.
    pub mline: Range<usize>,
    pub media_type: MediaType,
    pub port: u16,
    /// The port digits only (not the `/count` suffix).
    pub port_span: Range<usize>,
    /// The `/<count>` suffix of the port, if any (RFC 8866 §5.14).
    pub port_count: Option<u16>,
    /// The transport protocol as written, e.g. `RTP/AVP`, `TCP/MSRP`.
    pub proto: String,
    /// At least one: the parser rejects an m= line without a fmt.
    pub formats: Vec<String>,
    /// `a=accept-types` entries (RFC 4975), lowercased, over all such lines.
    pub accept_types: Vec<String>,
    /// `a=accept-wrapped-types` entries (RFC 4975), lowercased.
    pub accept_wrapped_types: Vec<String>,
    /// `size:` of `a=file-selector` (RFC 5547); the largest if several.
    pub file_size: Option<u64>,
    /// Lowercase `sendrecv`/`sendonly`/`recvonly`/`inactive`: the last one in
    /// the section, else the session-level one (RFC 8866 §6.7), else None
    /// (which means sendrecv).
    pub direction: Option<String>,
}

/// A parsed session description.
#[derive(Clone, Debug)]
pub struct Sdp {
    /// Start of the first m= section, or the body length if there is none:
    /// `body[..session_end]` is the session part.
    pub session_end: usize,
    pub media: Vec<Media>,
    /// The ending of the first line.
    pub line_ending: LineEnding,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineEnding {
    CrLf,
    Lf,
}

/// Why a body is not an acceptable session description. The text is short
/// printable ASCII, usable as a SIP reason phrase (e.g. in a 488).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SdpError(pub String);

impl std::fmt::Display for SdpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SdpError {}

fn err(msg: &str) -> SdpError {
    SdpError(msg.to_string())
}

/// One line of the body: `content` excludes the ending, `next` is where the
/// following line starts.
struct Line {
    start: usize,
    content_end: usize,
    next: usize,
    ending: Option<LineEnding>,
}

fn next_line(body: &[u8], pos: usize) -> Line {
    let rest = body.get(pos..).unwrap_or(&[]);
    match memchr::memchr(b'\n', rest) {
        Some(i) => {
            let lf = pos + i;
            let cr = i > 0 && rest.get(i - 1) == Some(&b'\r');
            Line {
                start: pos,
                content_end: if cr { lf - 1 } else { lf },
                next: lf + 1,
                ending: Some(if cr { LineEnding::CrLf } else { LineEnding::Lf }),
            }
        }
        None => Line {
            start: pos,
            content_end: body.len(),
            next: body.len(),
            ending: None,
        },
    }
}

/// RFC 8866 `token-char` (RFC 8866 §9): media names, protos and fmts are
/// made of these, which also keeps them printable ASCII for log lines and
/// policy reasons.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`{|}~".contains(&b)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_char)
}

/// Words of `s` separated by spaces, with their byte offsets in `s`; runs of
/// spaces count as one separator (lenient: some UAs emit double spaces).
fn words(s: &str) -> impl Iterator<Item = (usize, &str)> {
    let bytes = s.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while bytes.get(i) == Some(&b' ') {
            i += 1;
        }
        if i >= bytes.len() {
            return None;
        }
        let start = i;
        while i < bytes.len() && bytes.get(i) != Some(&b' ') {
            i += 1;
        }
        s.get(start..i).map(|w| (start, w))
    })
}

/// Parse an m= line value (after "m="); `value_at` is its offset in the body.
fn parse_mline(value: &str, value_at: usize) -> Result<Media, SdpError> {
    let mut it = words(value);
    let media = match it.next() {
        Some((_, m)) if is_token(m) => m,
        _ => return Err(err("Malformed SDP: bad m= line")),
    };
    let (port_at, port_field) = it.next().ok_or_else(|| err("Malformed SDP: bad m= line"))?;
    let (port_str, count_str) = match port_field.split_once('/') {
        Some((p, c)) => (p, Some(c)),
        None => (port_field, None),
    };
    let port = parse_u16(port_str).ok_or_else(|| err("Malformed SDP: bad m= port"))?;
    let port_count = match count_str {
        Some(c) => Some(parse_u16(c).ok_or_else(|| err("Malformed SDP: bad m= port"))?),
        None => None,
    };
    let proto = match it.next() {
        Some((_, p)) if p.split('/').all(is_token) => p,
        _ => return Err(err("Malformed SDP: bad m= line")),
    };
    let mut formats = Vec::new();
    for (_, f) in it {
        if !is_token(f) {
            return Err(err("Malformed SDP: bad m= fmt"));
        }
        formats.push(f.to_string());
    }
    if formats.is_empty() {
        return Err(err("Malformed SDP: m= line without fmt"));
    }
    let port_start = value_at + port_at;
    Ok(Media {
        range: 0..0,
        mline: 0..0,
        media_type: MediaType::parse(media),
        port,
        port_span: port_start..port_start + port_str.len(),
        port_count,
        proto: proto.to_string(),
        formats,
        accept_types: Vec::new(),
        accept_wrapped_types: Vec::new(),
        file_size: None,
        direction: None,
    })
}

/// 1 to 5 ASCII digits, at most 65535 (`u16::from_str` would also take a
/// leading `+`, which SDP does not allow).
fn parse_u16(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The `size:` selector of an RFC 5547 `file-selector` value. Selectors are
/// separated by spaces, but `name:"..."` may itself contain spaces (and the
/// text `size:`), so quoted text is skipped. A `size:` that is not a number
/// is an error rather than "unknown", so that a peer cannot dodge
/// `max_file_size` with a value we cannot read.
fn file_selector_size(value: &str) -> Result<Option<u64>, SdpError> {
    let mut size = None;
    let mut in_quotes = false;
    let mut token_start = 0;
    let bytes = value.as_bytes();
    for i in 0..=bytes.len() {
        let b = bytes.get(i).copied().unwrap_or(b' ');
        if b == b'"' {
            in_quotes = !in_quotes;
        } else if b == b' ' && !in_quotes {
            let token = value.get(token_start..i).unwrap_or("");
            if token.len() >= 5
                && token
                    .get(..5)
                    .is_some_and(|p| p.eq_ignore_ascii_case("size:"))
            {
                let digits = token.get(5..).unwrap_or("");
                if digits.is_empty()
                    || digits.len() > 20
                    || !digits.bytes().all(|d| d.is_ascii_digit())
                {
                    return Err(err("Malformed SDP: bad file-selector size"));
                }
                let n: u64 = digits
                    .parse()
                    .map_err(|_| err("Malformed SDP: bad file-selector size"))?;
                size = Some(size.map_or(n, |s: u64| s.max(n)));
            }
            token_start = i + 1;
        }
    }
    Ok(size)
}

fn lowercase_list(value: &str) -> impl Iterator<Item = String> + '_ {
    value.split_ascii_whitespace().map(str::to_ascii_lowercase)
}

fn is_direction(name: &str) -> bool {
    ["sendrecv", "sendonly", "recvonly", "inactive"]
        .iter()
        .any(|d| d.eq_ignore_ascii_case(name))
}

/// Parse and validate a session description; see the module doc for what is
/// checked and what is tolerated.
pub fn parse(body: &[u8]) -> Result<Sdp, SdpError> {
    if body.len() > MAX_BODY {
        return Err(err("SDP too large"));
    }
    let text = std::str::from_utf8(body).map_err(|_| err("Malformed SDP: not UTF-8"))?;
    let mut p = Parser::default();
    let mut pos = 0;
    loop {
        // End of body, or only empty lines left: those trailing line endings
        // are tolerated and stay outside every section.
        let rest = body.get(pos..).unwrap_or(&[]);
        if rest.iter().all(|&b| b == b'\r' || b == b'\n') {
            if pos == 0 {
                return Err(err("Malformed SDP: first line not v=0"));
            }
            break;
        }
        let line = next_line(body, pos);
        let content = text.get(line.start..line.content_end).unwrap_or("");
        if p.line_ending.is_none() {
            p.line_ending = Some(line.ending.unwrap_or(LineEnding::CrLf));
        }
        if pos == 0 {
            // Checked before the line syntax: whatever else is wrong with a
            // body that does not start with v=0, this is the useful answer.
            if content != "v=0" {
                return Err(err("Malformed SDP: first line not v=0"));
            }
        } else {
            let (kind, value) = type_and_value(content)?;
            p.line(kind, value, &line)?;
        }
        if let Some(m) = p.media.last_mut() {
            m.range.end = line.next;
        }
        pos = line.next;
    }
    p.finish(body.len())
}

/// The `<type>=<value>` of one line, after the checks every line gets.
fn type_and_value(content: &str) -> Result<(u8, &str), SdpError> {
    if content.is_empty() {
        return Err(err("Malformed SDP: empty line"));
    }
    // RFC 8866 text excludes NUL, CR and LF; a lone CR would otherwise be
    // read as a line break by some peers and not by others.
    if content.bytes().any(|b| b == b'\r' || b == 0) {
        return Err(err("Malformed SDP: control character"));
    }
    let cb = content.as_bytes();
    match (cb.first(), cb.get(1)) {
        (Some(&k), Some(&b'=')) if k.is_ascii_alphabetic() => {
            Ok((k, content.get(2..).unwrap_or("")))
        }
        _ => Err(err("Malformed SDP: bad line")),
    }
}

/// What the parse has seen so far.
#[derive(Default)]
struct Parser {
    line_ending: Option<LineEnding>,
    seen_o: bool,
    seen_s: bool,
    seen_t: bool,
    session_direction: Option<String>,
    /// Where the first media section starts (the session part ends).
    session_end: Option<usize>,
    media: Vec<Media>,
}

impl Parser {
    /// One line after `v=0`.
    fn line(&mut self, kind: u8, value: &str, line: &Line) -> Result<(), SdpError> {
        let in_media = self.session_end.is_some();
        match kind {
            b'v' => return Err(err("Malformed SDP: misplaced v= line")),
            b'm' => self.media_line(value, line)?,
            // Session-only lines inside a media section: the section would
            // be cut by refuse_streams, so a misplaced one is an error, not
            // something to carry along.
            b'o' | b's' | b't' | b'r' | b'z' | b'u' | b'e' | b'p' if in_media => {
                return Err(err("Malformed SDP: session line in media section"));
            }
            b'o' => self.seen_o = true,
            b's' => self.seen_s = true,
            b't' => self.seen_t = true,
            b'a' => self.attribute(value)?,
            _ => {}
        }
        Ok(())
    }

    fn media_line(&mut self, value: &str, line: &Line) -> Result<(), SdpError> {
        if self.session_end.is_none() {
            check_session(self.seen_o, self.seen_s, self.seen_t)?;
            self.session_end = Some(line.start);
        }
        if self.media.len() >= MAX_MEDIA {
            return Err(err("SDP too large: too many m= lines"));
        }
        let mut m = parse_mline(value, line.start + 2)?;
        m.range = line.start..line.next;
        m.mline = line.start..line.content_end;
        self.media.push(m);
        Ok(())
    }

    /// `a=` lines: direction (session or media level) and, in a media
    /// section, what the policy reads (accepted types, file size).
    fn attribute(&mut self, value: &str) -> Result<(), SdpError> {
        let (name, attr_value) = match value.split_once(':') {
            Some((n, v)) => (n, Some(v)),
            None => (value, None),
        };
        let current = if self.session_end.is_some() {
            self.media.last_mut()
        } else {
            None
        };
        if attr_value.is_none() && is_direction(name) {
            let d = Some(name.to_ascii_lowercase());
            match current {
                Some(m) => m.direction = d,
                None => self.session_direction = d,
            }
            return Ok(());
        }
        let (Some(m), Some(v)) = (current, attr_value) else {
            return Ok(());
        };
        // Attribute names matched case-insensitively: a peer writing
        // `Accept-Types` must not slip past the policy.
        if name.eq_ignore_ascii_case("accept-types") {
            m.accept_types.extend(lowercase_list(v));
        } else if name.eq_ignore_ascii_case("accept-wrapped-types") {
            m.accept_wrapped_types.extend(lowercase_list(v));
        } else if name.eq_ignore_ascii_case("file-selector") {
            if let Some(n) = file_selector_size(v)? {
                m.file_size = Some(m.file_size.map_or(n, |s| s.max(n)));
            }
        }
        Ok(())
    }

    fn finish(mut self, body_len: usize) -> Result<Sdp, SdpError> {
        if self.session_end.is_none() {
            check_session(self.seen_o, self.seen_s, self.seen_t)?;
        }
        // RFC 8866 §6.7: a session-level direction applies to every section
        // without its own.
        for m in self.media.iter_mut().filter(|m| m.direction.is_none()) {
            m.direction.clone_from(&self.session_direction);
        }
        Ok(Sdp {
            session_end: self.session_end.unwrap_or(body_len),
            media: self.media,
            line_ending: self.line_ending.unwrap_or(LineEnding::CrLf),
        })
    }
}

fn check_session(o: bool, s: bool, t: bool) -> Result<(), SdpError> {
    if !o {
        Err(err("Malformed SDP: missing o= line"))
    } else if !s {
        Err(err("Malformed SDP: missing s= line"))
    } else if !t {
        Err(err("Malformed SDP: missing t= line"))
    } else {
        Ok(())
    }
}

/// Copy `body` into `out` with the streams where `refuse[i]` is true refused
/// the RFC 3264 way: port set to 0 (port_count dropped), the m= line kept
/// (same proto and formats), every other line of that section (i=, c=, b=,
/// k=, a=) removed; all other bytes identical. A `refuse` shorter than the
/// media list leaves the remaining streams as they are.
///
/// Appends to `out` (does not clear it). `sdp` must come from `parse(body)`;
/// if its ranges do not fit `body`, `body` is copied unchanged (never a
/// panic, never a half-rewritten body).
pub fn refuse_streams(body: &[u8], sdp: &Sdp, refuse: &[bool], out: &mut Vec<u8>) {
    let start_len = out.len();
    if rewrite(body, sdp, refuse, out).is_none() {
        out.truncate(start_len);
        out.extend_from_slice(body);
    }
}

fn rewrite(body: &[u8], sdp: &Sdp, refuse: &[bool], out: &mut Vec<u8>) -> Option<()> {
    let mut pos = 0;
    for (m, _) in sdp.media.iter().zip(refuse).filter(|(_, &r)| r) {
        let ok = pos <= m.range.start
            && m.range.start <= m.mline.start
            && m.mline.start < m.port_span.start
            && m.port_span.start <= m.port_span.end
            && m.port_span.end <= m.mline.end
            && m.mline.end <= m.range.end
            && m.range.end <= body.len();
        if !ok {
            return None;
        }
        out.extend_from_slice(body.get(pos..m.port_span.start)?);
        out.push(b'0');
        // Skip the port digits and any "/count": up to the space before proto.
        let tail = body.get(m.port_span.end..m.mline.end)?;
        let after_port = m.port_span.end + memchr::memchr(b' ', tail).unwrap_or(tail.len());
        out.extend_from_slice(body.get(after_port..m.mline.end)?);
        // Keep the m= line's own ending (CRLF or LF, or none at end of body).
        let rest = body.get(m.mline.end..m.range.end)?;
        let ending = match rest {
            [b'\r', b'\n', ..] => 2,
            [b'\n', ..] => 1,
            _ => 0,
        };
        out.extend_from_slice(rest.get(..ending)?);
        pos = m.range.end;
    }
    out.extend_from_slice(body.get(pos..)?);
    Some(())
}
