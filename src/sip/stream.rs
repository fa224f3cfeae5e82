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

/// A connection's timing rules, all bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Closed after this long with nothing received (keep-alives count:
    /// RFC 5626 clients ping to keep their flow).
    pub idle: std::time::Duration,
    /// The slow-loris defence: a message begun must bring at least
    /// `min_rate` bytes a second after a `grace`; a peer trickling its
    /// header to hold a connection open is closed.
    pub grace: std::time::Duration,
    pub min_rate: u32,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            idle: std::time::Duration::from_secs(300),
            grace: std::time::Duration::from_secs(2),
            min_rate: 512,
        }
    }
}

/// Why a connection was closed, each counted under [`Closed::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Closed {
    #[error("{0}")]
    Framing(StreamError),
    #[error("nothing received for the idle timeout")]
    Idle,
    #[error("a message arriving below the minimum rate")]
    TooSlow,
}

impl Closed {
    pub fn name(self) -> &'static str {
        match self {
            Closed::Framing(e) => e.name(),
            Closed::Idle => "idle",
            Closed::TooSlow => "too_slow",
        }
    }
}

/// What the io does next for a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A whole message: [`Connection::message`] until [`Connection::consume`].
    Message { len: usize },
    /// Write a pong (`CRLF`).
    Pong,
}

/// The buffer a connection's first read gets: most SIP messages fit.
const FIRST_BUFFER: usize = 4096;

/// One stream connection's receive side, sans-IO: a buffer bounded by
/// the largest message, the framing, and the idle and slow-loris rules on
/// an injected clock. The io reads into [`Connection::space`], reports
/// [`Connection::received`], takes [`Connection::poll`] events until
/// none, and wakes at [`Connection::deadline`].
#[derive(Debug)]
pub struct Connection {
    /// Grown on demand up to one whole message (`max_header + max_body`)
    /// and given back when empty ([`Connection::release`]): an idle
    /// connection holds no buffer (at 200 000 connections, 80 KiB each
    /// would be 16 GB).
    buf: Vec<u8>,
    /// Bytes of `buf` holding data.
    filled: usize,
    limits: Limits,
    timing: Timing,
    last_rx: std::time::Instant,
    /// When the first byte of the message now incomplete came.
    begun: Option<std::time::Instant>,
    closed: Option<Closed>,
}

impl Connection {
    pub fn new(now: std::time::Instant, limits: Limits, timing: Timing) -> Connection {
        assert!(limits.max_header >= 64 && timing.min_rate > 0);
        Connection {
            buf: Vec::new(),
            filled: 0,
            limits,
            timing,
            last_rx: now,
            begun: None,
            closed: None,
        }
    }

    /// Where the next read goes; empty when the buffer is full (a whole
    /// message waits to be consumed: read no more, the kernel's window
    /// pushes back) or the connection is closed.
    pub fn space(&mut self) -> &mut [u8] {
        if self.closed.is_some() {
            return &mut [];
        }
        let whole = self.limits.max_header + self.limits.max_body;
        if self.filled == self.buf.len() && self.buf.len() < whole {
            // Not clamp(): `whole` may be below FIRST_BUFFER.
            let grown = (self.buf.len() * 2).max(FIRST_BUFFER).min(whole);
            self.buf.resize(grown, 0);
        }
        &mut self.buf[self.filled..]
    }

    /// Give the buffer back if nothing waits in it (an idle connection;
    /// the next [`Connection::space`] takes a small one again).
    pub fn release(&mut self) {
        if self.filled == 0 {
            self.buf = Vec::new();
        }
    }

    /// `n` bytes were read into [`Connection::space`] at `now`.
    pub fn received(&mut self, now: std::time::Instant, n: usize) {
        assert!(
            self.filled + n <= self.buf.len(),
            "read past the space given"
        );
        if n > 0 {
            self.filled += n;
            self.last_rx = now;
            self.begun.get_or_insert(now);
        }
    }

    /// The next thing to do with what was received, or `None` (read more,
    /// or closed: see [`Connection::closed`]).
    pub fn poll(&mut self) -> Option<Event> {
        if self.closed.is_some() {
            return None;
        }
        match frame(&self.buf[..self.filled], &self.limits) {
            Ok(Frame::Incomplete) => {
                if self.filled == 0 {
                    self.begun = None;
                }
                None
            }
            Ok(Frame::Message { len }) => Some(Event::Message { len }),
            Ok(Frame::Ping { len }) => {
                self.consume(len);
                Some(Event::Pong)
            }
            Ok(Frame::Pong { len }) => {
                self.consume(len);
                self.poll()
            }
            Err(e) => {
                self.closed = Some(Closed::Framing(e));
                None
            }
        }
    }

    /// The message a [`Event::Message`] names.
    pub fn message(&self, len: usize) -> &[u8] {
        &self.buf[..len.min(self.filled)]
    }

    /// Drop the first `len` bytes (a message handled, a keep-alive); what
    /// follows starts the next message's clock if anything is left.
    pub fn consume(&mut self, len: usize) {
        let len = len.min(self.filled);
        self.buf.copy_within(len..self.filled, 0);
        self.filled -= len;
        // A large message's buffer is not kept for the small ones after.
        if self.filled == 0 && self.buf.len() > FIRST_BUFFER {
            self.buf = Vec::new();
        }
        self.begun = (self.filled > 0).then_some(self.last_rx);
    }

    pub fn closed(&self) -> Option<Closed> {
        self.closed
    }

    /// When [`Connection::handle_timeout`] must run next.
    pub fn deadline(&self) -> std::time::Instant {
        let idle = self.last_rx + self.timing.idle;
        match self.begun {
            Some(b) => idle.min(b + self.timing.grace + self.allowance()),
            None => idle,
        }
    }

    /// The time the bytes of the incomplete message buy at the minimum
    /// rate.
    fn allowance(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.filled as u64 * 1000 / u64::from(self.timing.min_rate),
        )
    }

    /// Apply the idle and slow-loris rules at `now`.
    pub fn handle_timeout(&mut self, now: std::time::Instant) -> Option<Closed> {
        if self.closed.is_none() {
            if now >= self.last_rx + self.timing.idle {
                self.closed = Some(Closed::Idle);
            } else if self
                .begun
                .is_some_and(|b| now >= b + self.timing.grace + self.allowance())
            {
                self.closed = Some(Closed::TooSlow);
            }
        }
        self.closed
    }
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

    fn feed(c: &mut Connection, now: std::time::Instant, bytes: &[u8]) {
        let space = c.space();
        assert!(space.len() >= bytes.len());
        space[..bytes.len()].copy_from_slice(bytes);
        c.received(now, bytes.len());
    }

    #[test]
    fn limits_below_the_first_buffer_bound_it() {
        let t0 = std::time::Instant::now();
        let limits = Limits {
            max_header: 1024,
            max_body: 0,
        };
        let mut c = Connection::new(t0, limits, Timing::default());
        assert_eq!(c.space().len(), 1024, "one whole message, not FIRST_BUFFER");
    }

    #[test]
    fn the_buffer_grows_for_a_large_message_and_an_idle_connection_holds_none() {
        let t0 = std::time::Instant::now();
        let mut c = Connection::new(t0, Limits::default(), Timing::default());
        assert_eq!(c.buf.len(), 0, "no buffer before the first read");
        assert_eq!(c.space().len(), FIRST_BUFFER);
        // A 20 000-byte body: read by reads of whatever space there is.
        let body = vec![b'x'; 20_000];
        let mut wire = format!(
            "MESSAGE sip:b@example.net SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.1;branch=z9hG4bK1\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        wire.extend_from_slice(&body);
        let mut rest = &wire[..];
        while !rest.is_empty() {
            let space = c.space();
            assert!(!space.is_empty(), "room up to one whole message");
            let n = space.len().min(rest.len());
            space[..n].copy_from_slice(&rest[..n]);
            c.received(t0, n);
            rest = &rest[n..];
        }
        assert!(c.buf.len() >= wire.len() && c.buf.len() <= 16 * 1024 + 64 * 1024);
        assert_eq!(c.poll(), Some(Event::Message { len: wire.len() }));
        c.consume(wire.len());
        assert_eq!(c.buf.len(), 0, "a large buffer is given back");
        feed(&mut c, t0, &INVITE[..10]);
        c.release();
        assert_eq!(c.buf.len(), FIRST_BUFFER, "not while a message is begun");
        feed(&mut c, t0, &INVITE[10..]);
        assert_eq!(c.poll(), Some(Event::Message { len: INVITE.len() }));
        c.consume(INVITE.len());
        c.release();
        assert_eq!(c.buf.len(), 0, "idle: no buffer");
    }

    #[test]
    fn a_connection_yields_pipelined_messages_and_answers_pings() {
        let t0 = std::time::Instant::now();
        let mut c = Connection::new(t0, Limits::default(), Timing::default());
        let mut wire = INVITE.to_vec();
        wire.extend_from_slice(b"\r\n\r\n");
        wire.extend_from_slice(INVITE);
        wire.extend_from_slice(&INVITE[..10]);
        feed(&mut c, t0, &wire);
        assert_eq!(c.poll(), Some(Event::Message { len: INVITE.len() }));
        assert_eq!(c.message(INVITE.len()), INVITE);
        c.consume(INVITE.len());
        assert_eq!(c.poll(), Some(Event::Pong));
        assert_eq!(c.poll(), Some(Event::Message { len: INVITE.len() }));
        c.consume(INVITE.len());
        assert_eq!(c.poll(), None, "the third is not whole yet");
        feed(&mut c, t0, &INVITE[10..]);
        assert_eq!(c.poll(), Some(Event::Message { len: INVITE.len() }));
        c.consume(INVITE.len());
        assert_eq!(c.poll(), None);
        assert_eq!(c.closed(), None);
    }

    #[test]
    fn a_silent_connection_closes_at_the_idle_timeout_and_traffic_defers_it() {
        let t0 = std::time::Instant::now();
        let s = std::time::Duration::from_secs;
        let timing = Timing {
            idle: s(30),
            ..Timing::default()
        };
        let mut c = Connection::new(t0, Limits::default(), timing);
        assert_eq!(c.deadline(), t0 + s(30));
        feed(&mut c, t0 + s(20), b"\r\n\r\n");
        assert_eq!(c.poll(), Some(Event::Pong));
        assert_eq!(c.handle_timeout(t0 + s(49)), None, "the ping kept it");
        assert_eq!(c.deadline(), t0 + s(50));
        assert_eq!(c.handle_timeout(t0 + s(50)), Some(Closed::Idle));
        assert!(c.space().is_empty());
    }

    #[test]
    fn a_message_trickled_below_the_minimum_rate_closes_the_connection() {
        let t0 = std::time::Instant::now();
        let ms = std::time::Duration::from_millis;
        let timing = Timing {
            idle: std::time::Duration::from_secs(300),
            grace: ms(2000),
            min_rate: 100,
        };
        let mut c = Connection::new(t0, Limits::default(), timing);
        // 10 bytes buy 100 ms past the grace.
        feed(&mut c, t0, &INVITE[..10]);
        assert_eq!(c.poll(), None);
        assert_eq!(c.deadline(), t0 + ms(2100));
        assert_eq!(c.handle_timeout(t0 + ms(2099)), None);
        // 200 more bytes buy two seconds more.
        feed(&mut c, t0 + ms(2050), &INVITE[10..INVITE.len() - 1]);
        assert_eq!(c.handle_timeout(t0 + ms(2100)), None);
        assert_eq!(
            c.handle_timeout(t0 + ms(2000 + (INVITE.len() as u64 - 1) * 10)),
            Some(Closed::TooSlow)
        );
        assert_eq!(Closed::TooSlow.name(), "too_slow");
        // Finished in time, the message would have reset the clock.
        let mut fast = Connection::new(t0, Limits::default(), timing);
        feed(&mut fast, t0, &INVITE[..10]);
        feed(&mut fast, t0 + ms(2050), &INVITE[10..]);
        assert_eq!(fast.poll(), Some(Event::Message { len: INVITE.len() }));
        fast.consume(INVITE.len());
        assert_eq!(fast.deadline(), t0 + ms(2050) + timing.idle);
    }

    #[test]
    fn a_framing_error_closes_and_nothing_more_is_read() {
        let t0 = std::time::Instant::now();
        let mut c = Connection::new(t0, Limits::default(), Timing::default());
        feed(&mut c, t0, b"MESSAGE sip:b SIP/2.0\r\nCall-ID: c\r\n\r\nhi");
        assert_eq!(c.poll(), None);
        assert_eq!(
            c.closed(),
            Some(Closed::Framing(StreamError::NoContentLength))
        );
        assert_eq!(c.closed().map(Closed::name), Some("no_content_length"));
        assert!(c.space().is_empty());
        assert_eq!(c.poll(), None);
    }

    #[test]
    fn a_folded_line_or_a_name_that_only_starts_alike_is_not_the_length() {
        let folded = b"MESSAGE sip:b SIP/2.0\r\nSubject: x\r\n l: 9\r\nContent-Length-X: 4\r\nContent-Length : 2\r\n\r\nhi";
        assert_eq!(at(folded), Ok(Frame::Message { len: folded.len() }));
    }
}
