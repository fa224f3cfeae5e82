//! Arbitrary bytes arriving on a SIP stream connection in arbitrary
//! pieces: the framer never panics, every frame it reports lies inside
//! what was buffered and moves the connection on, the same bytes framed in
//! one piece or in many give the same frames, and a framed message has
//! exactly the body its Content-Length states; a Connection fed the
//! same pieces on a clock yields the same messages until it closes, and
//! never reads past its buffer.
#![no_main]

use cpm_edge::sip::stream::{frame, Connection, Event, Frame, Limits, Timing};
use std::time::{Duration, Instant};
use libfuzzer_sys::fuzz_target;

/// Frames of `data` fed in pieces of `step` bytes, and how it ended.
fn frames(data: &[u8], step: usize, limits: &Limits) -> (Vec<Frame>, bool) {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for piece in data.chunks(step.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match frame(&buf, limits) {
                Ok(Frame::Incomplete) => break,
                Ok(f) => {
                    let len = match f {
                        Frame::Message { len } | Frame::Ping { len } | Frame::Pong { len } => len,
                        Frame::Incomplete => unreachable!(),
                    };
                    assert!(len > 0 && len <= buf.len(), "{f:?} of {}", buf.len());
                    if let Frame::Message { len } = f {
                        let head = buf[..len]
                            .windows(4)
                            .position(|w| w == b"\r\n\r\n")
                            .expect("a framed message has its blank line")
                            + 4;
                        assert!(head <= limits.max_header && len - head <= limits.max_body);
                    }
                    out.push(f);
                    buf.drain(..len);
                }
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_header: 256,
        max_body: 128,
    };
    let whole = frames(data, data.len(), &limits);
    let pieces = frames(data, usize::from(step % 16) + 1, &limits);
    // Messages are the same however the bytes arrive; a lone CRLF at a
    // piece's end may wait to become half a ping, so keep-alives may pair
    // differently, and a fatal error may come at another point.
    let messages = |f: &[Frame]| -> Vec<Frame> {
        f.iter().copied().filter(|f| matches!(f, Frame::Message { .. })).collect()
    };
    if !whole.1 && !pieces.1 {
        assert_eq!(messages(&whole.0), messages(&pieces.0));
    }
    let t0 = Instant::now();
    let timing = Timing {
        idle: Duration::from_secs(30),
        grace: Duration::from_secs(1),
        min_rate: 64,
    };
    let mut c = Connection::new(t0, limits, timing);
    let mut got = Vec::new();
    for (i, piece) in data.chunks(usize::from(step % 16) + 1).enumerate() {
        let now = t0 + Duration::from_millis(i as u64 * u64::from(step));
        if c.handle_timeout(now).is_some() {
            break;
        }
        let space = c.space();
        let n = piece.len().min(space.len());
        space[..n].copy_from_slice(&piece[..n]);
        c.received(now, n);
        while let Some(e) = c.poll() {
            if let Event::Message { len } = e {
                assert!(c.message(len).len() == len);
                got.push(Frame::Message { len });
                c.consume(len);
            }
        }
        // The buffer given back between pieces (as the timer tick does
        // for an idle connection) must change nothing.
        if step & 0x80 != 0 {
            c.release();
        }
        if c.closed().is_some() || n < piece.len() {
            break;
        }
        assert!(c.deadline() > now);
    }
    let framed = messages(&pieces.0);
    assert!(got.len() <= framed.len() && got[..] == framed[..got.len()]);
});
