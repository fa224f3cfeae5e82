//! SIP over a byte stream (TCP, TLS), sans-IO: where one message ends in
//! what a connection has received so far (RFC 3261 §18.3), and the CRLF
//! keep-alives of RFC 5626 §4.4.1 between messages.
//!
//! On a stream the only message boundary is `Content-Length`: a message
//! without one, or with one that is not a number, leaves the rest of the
//! stream unreadable, so it is fatal to the connection ([`StreamError`]),
//! as are a header block or a body past their bounds (a peer's memory is
//! not ours to give). A datagram's scanner ([`super::scan`]) then reads
//! each framed message as it reads a datagram.
//!
//! [`frame`] is a pure function of the bytes buffered: the connection
//! keeps its buffer, asks, consumes what the answer covers and asks
//! again. Its cost is one `memchr` pass over the header block per call;
//! a caller that asks after every partial read of a slow header pays that
//! pass again, bounded by `Limits::max_header`.

/// Bounds on one framed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Start line and headers with the blank line that ends them.
    pub max_header: usize,
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_header: 16 * 1024,
            max_body: 64 * 1024,
        }
    }
}

/// What the front of a connection's buffer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Not yet a whole message or keep-alive: read more.
    Incomplete,
    /// A message of `len` bytes (headers, blank line, body) at the front.
    Message { len: usize },
    /// A keep-alive ping (`CRLF CRLF`, RFC 5626 §4.4.1): answer a pong
    /// (`CRLF`) and consume `len`.
    Ping { len: usize },
    /// A lone `CRLF` before a message: a pong, or a client's keep-alive;
    /// consume `len`, answer nothing.
    Pong { len: usize },
}

/// Why the stream cannot go on. Each is fatal: the message's end cannot
/// be known, or the peer sends more than a connection may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("header block beyond {limit} bytes")]
    HeaderTooLarge { limit: usize },
    #[error("no Content-Length on a stream")]
    NoContentLength,
    #[error("Content-Length is not a number, or two disagree")]
    BadContentLength,
    #[error("body of {len} bytes beyond {limit}")]
    BodyTooLarge { len: usize, limit: usize },
}

impl StreamError {
    /// The counter and log name.
    pub fn name(self) -> &'static str {
        match self {
            StreamError::HeaderTooLarge { .. } => "header_too_large",
            StreamError::NoContentLength => "no_content_length",
            StreamError::BadContentLength => "bad_content_length",
            StreamError::BodyTooLarge { .. } => "body_too_large",
        }
    }

    /// The reason phrase of the `400`/`413` a server may send before it
    /// closes (the message's headers were whole; its end was not).
    pub fn reason(self) -> &'static str {
        match self {
            StreamError::HeaderTooLarge { .. } => "Message Too Large - Header Block",
            StreamError::NoContentLength => "Bad Request - No Content-Length On A Stream",
            StreamError::BadContentLength => "Bad Request - Malformed Content-Length",
            StreamError::BodyTooLarge { .. } => "Message Too Large - Body",
        }
    }
}

/// The front of `buf`: a keep-alive, a whole message, more to read, or
/// why the connection must close.
pub fn frame(buf: &[u8], limits: &Limits) -> Result<Frame, StreamError> {
    if let Some(keepalive) = keepalive(buf) {
        return Ok(keepalive);
    }
    let Some(head) = memchr::memmem::find(buf, b"\r\n\r\n").map(|i| i + 4) else {
        if buf.len() >= limits.max_header {
            return Err(StreamError::HeaderTooLarge {
                limit: limits.max_header,
            });
        }
        return Ok(Frame::Incomplete);
    };
    if head > limits.max_header {
        return Err(StreamError::HeaderTooLarge {
            limit: limits.max_header,
        });
    }
    let body = content_length(&buf[..head])?;
    if body > limits.max_body {
        return Err(StreamError::BodyTooLarge {
            len: body,
            limit: limits.max_body,
        });
    }
    let len = head + body;
    Ok(if buf.len() >= len {
        Frame::Message { len }
    } else {
        Frame::Incomplete
    })
}

/// CRLFs before a message: a pair of them is a ping; one alone, followed
/// by a message, is a pong. One alone at the end may be the first half of
/// a ping: wait.
fn keepalive(buf: &[u8]) -> Option<Frame> {
    if buf.starts_with(b"\r\n\r\n") {
        return Some(Frame::Ping { len: 4 });
    }
    if buf == b"\r\n" || buf == b"\r\n\r" || buf == b"\r" {
        return Some(Frame::Incomplete);
    }
    buf.starts_with(b"\r\n").then_some(Frame::Pong { len: 2 })
}

/// The body length the header block `head` states: exactly one value
/// (repeats must agree), digits only, in `Content-Length` or its compact
/// form `l` (RFC 3261 §7.3.3); folded lines belong to the header above.
fn content_length(head: &[u8]) -> Result<usize, StreamError> {
    let mut found: Option<usize> = None;
    // The start line first, then one header per line.
    for line in head.split(|&c| c == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first().is_some_and(|c| *c == b' ' || *c == b'\t') {
            continue;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if !(name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l")) {
            continue;
        }
        let n = number(line[colon + 1..].trim_ascii()).ok_or(StreamError::BadContentLength)?;
        if found.is_some_and(|f| f != n) {
            return Err(StreamError::BadContentLength);
        }
        found = Some(n);
    }
    found.ok_or(StreamError::NoContentLength)
}

/// A decimal of at most 9 digits (a body is bounded far below that).
fn number(v: &[u8]) -> Option<usize> {
    if v.is_empty() || v.len() > 9 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, d| n * 10 + usize::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy as _;

    const INVITE: &[u8] = b"INVITE sip:bob@example.net SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.1:5062;branch=z9hG4bK1\r\n\
        Call-ID: c\r\nl: 5\r\n\r\nhello";

    fn at(buf: &[u8]) -> Result<Frame, StreamError> {
        frame(buf, &Limits::default())
    }

    #[test]
    fn a_message_is_framed_by_its_content_length_and_waits_for_its_body() {
        assert_eq!(at(INVITE), Ok(Frame::Message { len: INVITE.len() }));
        for cut in 0..INVITE.len() {
            assert_eq!(at(&INVITE[..cut]), Ok(Frame::Incomplete), "cut at {cut}");
        }
        let mut two = INVITE.to_vec();
        two.extend_from_slice(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(at(&two), Ok(Frame::Message { len: INVITE.len() }));
        let next = &two[INVITE.len()..];
        assert_eq!(at(next), Ok(Frame::Message { len: next.len() }));
    }

    #[test]
    fn crlf_pairs_are_pings_and_a_lone_crlf_is_a_pong() {
        assert_eq!(at(b"\r\n\r\n"), Ok(Frame::Ping { len: 4 }));
        assert_eq!(at(b"\r\n"), Ok(Frame::Incomplete), "maybe half a ping");
        assert_eq!(at(b"\r\n\r"), Ok(Frame::Incomplete));
        let mut pong_then = b"\r\n".to_vec();
        pong_then.extend_from_slice(INVITE);
        assert_eq!(at(&pong_then), Ok(Frame::Pong { len: 2 }));
        assert_eq!(
            at(&pong_then[2..]),
            Ok(Frame::Message { len: INVITE.len() })
        );
    }

    #[test]
    fn what_leaves_the_end_unknown_or_exceeds_a_bound_closes_the_stream() {
        let without = b"MESSAGE sip:b SIP/2.0\r\nCall-ID: c\r\n\r\nhi";
        assert_eq!(at(without), Err(StreamError::NoContentLength));
        let bad = b"MESSAGE sip:b SIP/2.0\r\nContent-Length: 2x\r\n\r\nhi";
        assert_eq!(at(bad), Err(StreamError::BadContentLength));
        let two = b"MESSAGE sip:b SIP/2.0\r\nContent-Length: 2\r\nl: 3\r\n\r\nhi!";
        assert_eq!(at(two), Err(StreamError::BadContentLength));
        let agree = b"MESSAGE sip:b SIP/2.0\r\nContent-Length: 2\r\nl:2\r\n\r\nhi";
        assert_eq!(at(agree), Ok(Frame::Message { len: agree.len() }));
        let negative = b"MESSAGE sip:b SIP/2.0\r\nContent-Length: -1\r\n\r\n";
        assert_eq!(at(negative), Err(StreamError::BadContentLength));
        let small = Limits {
            max_header: 64,
            max_body: 4,
        };
        let big_body = b"MESSAGE sip:b SIP/2.0\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(
            frame(big_body, &small),
            Err(StreamError::BodyTooLarge { len: 5, limit: 4 })
        );
        // A header block that never ends is refused once it reaches the
        // bound, not buffered for ever.
        let endless = vec![b'a'; 64];
        assert_eq!(frame(&endless[..63], &small), Ok(Frame::Incomplete));
        assert_eq!(
            frame(&endless, &small),
            Err(StreamError::HeaderTooLarge { limit: 64 })
        );
        assert_eq!(
            StreamError::NoContentLength.reason(),
            "Bad Request - No Content-Length On A Stream"
        );
    }

    /// One thing a peer sends: a message with a body of `n` bytes (in
    /// the long or compact header form), a ping, or a pong and a message.
    #[derive(Clone, Debug)]
    enum Item {
        Message(usize, bool),
        Ping,
        PongThenMessage(usize),
    }

    fn message(n: usize, compact: bool) -> Vec<u8> {
        let name = if compact { "l" } else { "Content-Length" };
        let mut m =
            format!("MESSAGE sip:b@x SIP/2.0\r\nCall-ID: c{n}\r\n{name}: {n}\r\n\r\n").into_bytes();
        m.extend(std::iter::repeat_n(b'\n', n));
        m
    }

    proptest::proptest! {
        /// However the bytes arrive, the frames are the items sent, in order.
        #[test]
        fn any_split_of_a_stream_frames_what_was_sent(
            items in proptest::collection::vec(
                proptest::prop_oneof![
                    (0usize..300, proptest::bool::ANY).prop_map(|(n, c)| Item::Message(n, c)),
                    proptest::strategy::Just(Item::Ping),
                    (0usize..300).prop_map(Item::PongThenMessage),
                ],
                1..12,
            ),
            cuts in proptest::collection::vec(1usize..64, 1..40),
        ) {
            let mut wire = Vec::new();
            let mut want = Vec::new();
            for it in items {
                match it {
                    Item::Message(n, c) => {
                        let m = message(n, c);
                        want.push(Frame::Message { len: m.len() });
                        wire.extend(m);
                    }
                    Item::Ping => {
                        want.push(Frame::Ping { len: 4 });
                        wire.extend_from_slice(b"\r\n\r\n");
                    }
                    Item::PongThenMessage(n) => {
                        let m = message(n, false);
                        want.push(Frame::Pong { len: 2 });
                        want.push(Frame::Message { len: m.len() });
                        wire.extend_from_slice(b"\r\n");
                        wire.extend(m);
                    }
                }
            }
            let (mut buf, mut got, mut at, mut cut) = (Vec::new(), Vec::new(), 0, 0);
            while at < wire.len() {
                let n = cuts[cut % cuts.len()].min(wire.len() - at);
                cut += 1;
                buf.extend_from_slice(&wire[at..at + n]);
                at += n;
                loop {
                    match frame(&buf, &Limits::default()) {
                        Ok(Frame::Incomplete) => break,
                        Ok(f @ (Frame::Message { len } | Frame::Ping { len } | Frame::Pong { len })) => {
                            got.push(f);
                            buf.drain(..len);
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            proptest::prop_assert_eq!(got, want);
            proptest::prop_assert!(buf.is_empty());
        }
    }

    #[test]
    fn a_folded_line_or_a_name_that_only_starts_alike_is_not_the_length() {
        let folded = b"MESSAGE sip:b SIP/2.0\r\nSubject: x\r\n l: 9\r\nContent-Length-X: 4\r\nContent-Length : 2\r\n\r\nhi";
        assert_eq!(at(folded), Ok(Frame::Message { len: folded.len() }));
    }
}
