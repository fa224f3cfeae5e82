//! `cpm-loadgen`: a CPM INVITE load generator for the edge proxy.
//!
//! This file owns: the INVITE template (built once, patched in place per
//! request), the open-loop pacer and the closed-loop window, matching final
//! answers to requests by the sequence number encoded in the Call-ID, loss
//! accounting by timeout, the latency histogram and the result line.
//! Shared plumbing (sockets, mmsg batches, SIP scanning) lives in `common.rs`.
//!
//! Design points, so the generator is not the bottleneck:
//! - the INVITE has fixed-width numeric fields, so its length (and its
//!   Content-Length) never changes and each send slot keeps a copy of the
//!   template: a request costs a few dozen digit stores, no formatting;
//! - sends and receives go through sendmmsg/recvmmsg batches;
//! - in-flight requests live in a power-of-two table indexed by
//!   `seq & mask` (`seq` is encoded in the Call-ID as `<seq>-<run>@loadgen`),
//!   so matching an answer is O(1); sequence numbers are sent in time order,
//!   so timeouts are found by a cursor walking from the oldest request;
//! - when there is nothing to do it sleeps in ppoll (it shares a CPU with the
//!   CS responder in the standard setup).
//!
//! With `--malformed-pct P`, P % of all datagrams sent are malformed (garbage
//! bytes, a truncated INVITE, a bad Content-Length, no Call-ID, an oversized
//! datagram, in turn), deterministically: after every valid request the
//! number of malformed ones sent so far is brought up to
//! `floor(valid * P / (100 - P))`. They carry Call-ID `bad<n>-<run>@loadgen`
//! and Via branch `z9hG4bK-bad<n>`, so the edge's answers to them (400) are
//! recognised and counted apart, never matched to a request; they are not
//! requests for the loss figure.
//!
//! Output: `MARK measure_start` / `MARK measure_end` lines on stdout (with
//! `--marks`) when the measured interval begins and ends, then one line
//! `RESULT sent=.. ok=.. ...` on stdout and a human summary on stderr.

#[path = "common.rs"]
mod common;

use clap::{Parser, ValueEnum};
use common::{MsgBatch, SendOutcome};
use hdrhistogram::Histogram;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Receive slot size: answers are a few hundred bytes; a larger datagram is
/// counted as bad.
const RECV_SLOT: usize = 4096;
/// Digits of the sequence number in Call-ID/branch/tag (10^10 requests per
/// run: hours at a million per second).
const SEQ_WIDTH: usize = 10;
/// Largest in-flight table (entries of 16 bytes: 128 MiB).
const MAX_TABLE: usize = 1 << 23;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Send at --rate requests/s whatever the answers.
    Open,
    /// Keep --window requests outstanding.
    Closed,
}

#[derive(Parser, Debug)]
#[command(
    name = "cpm-loadgen",
    about = "CPM INVITE load generator: open loop (fixed rate) or closed loop (fixed window)"
)]
struct Args {
    /// Where the INVITEs go (the edge).
    #[arg(long, default_value = "127.0.0.1:5060")]
    target: SocketAddr,
    /// Local address to send from (also written in Via/Contact/SDP).
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    #[arg(long, value_enum, default_value_t = Mode::Closed)]
    mode: Mode,
    /// Open loop: requests per second.
    #[arg(long, default_value_t = 50_000)]
    rate: u64,
    /// Closed loop: requests kept outstanding.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// A request unanswered this long counts as lost (and frees its slot).
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Measured seconds (after the warm-up). Default 10 if --count is not given.
    #[arg(long)]
    duration: Option<f64>,
    /// Stop after this many measured requests.
    #[arg(long)]
    count: Option<u64>,
    /// Seconds of load before measuring (excluded from every figure).
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Request-URI/To group `grpG`, G cycling over 0..groups.
    #[arg(long, default_value_t = 1000)]
    groups: u64,
    /// From user `userN`, N cycling over 0..users.
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    /// Max datagrams per sendmmsg/recvmmsg.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Pin the generator thread to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    /// Exit with status 3 if the measured loss exceeds this percentage.
    #[arg(long)]
    max_loss_pct: Option<f64>,
    /// Print `MARK measure_start` / `MARK measure_end` on stdout.
    #[arg(long)]
    marks: bool,
    /// Kernel socket buffer size, bytes.
    #[arg(long, default_value_t = 16 << 20)]
    sock_buf: usize,
    /// connect() the socket to the target: saves the kernel a route lookup
    /// per datagram, but drops answers that come from any other address
    /// than --target (only use it when the edge answers from its listen
    /// address).
    #[arg(long)]
    connect: bool,
    /// Send each batch as one UDP GSO sendmsg (the kernel splits it into
    /// datagrams): cheaper per request than sendmmsg; batch max 64.
    #[arg(long)]
    gso: bool,
    /// Print the first INVITE (with seq 0) to stderr before starting.
    #[arg(long)]
    show_invite: bool,
    /// Percentage of all datagrams sent that are malformed (0..=50; e.g. 1):
    /// not requests, not in the loss figure; answers to them counted apart.
    #[arg(long, default_value_t = 0.0)]
    malformed_pct: f64,
    /// Before the run, send this many oversized (65507-byte) datagrams, 16
    /// per ms: each fills a whole receive buffer of the edge, so afterwards
    /// every buffer page has been touched and the edge's RSS no longer grows
    /// by first touch (perf/soak.sh does this before its first RSS sample).
    #[arg(long, default_value_t = 0)]
    prime_oversized: u64,
}

// ---------------------------------------------------------------- template --

#[derive(Clone, Copy, Debug)]
enum Field {
    Seq,
    User,
    Group,
}

/// The INVITE with fixed-width placeholders and where they are.
struct Template {
    bytes: Vec<u8>,
    fields: Vec<(usize, usize, Field)>,
}

#[derive(Default)]
struct Builder {
    buf: Vec<u8>,
    fields: Vec<(usize, usize, Field)>,
}

impl Builder {
    fn s(&mut self, s: &str) -> &mut Self {
        self.buf.extend_from_slice(s.as_bytes());
        self
    }
    fn f(&mut self, field: Field, width: usize) -> &mut Self {
        self.fields.push((self.buf.len(), width, field));
        self.buf.resize(self.buf.len() + width, b'0');
        self
    }
}

fn digits(max_value: u64) -> usize {
    max_value.max(1).ilog10() as usize + 1
}

impl Template {
    /// Model: /work/shared/sipp/uac-cpm.xml (same headers, same SDP).
    fn build(local: SocketAddrV4, run: u32, users: u64, groups: u64) -> Template {
        let uw = digits(users - 1);
        let gw = digits(groups - 1);
        let ip = local.ip().to_string();
        let port = local.port().to_string();
        let run_hex = format!("{run:08x}");

        let mut b = Builder::default();
        b.s("v=0\r\no=user")
            .f(Field::User, uw)
            .s(" ")
            .f(Field::User, uw)
            .s(" 1 IN IP4 ")
            .s(&ip)
            .s("\r\ns=-\r\nc=IN IP4 ")
            .s(&ip)
            .s("\r\nt=0 0\r\nm=message 7394 TCP/MSRP *\r\na=accept-types:message/cpim\r\n")
            .s("a=path:msrp://")
            .s(&ip)
            .s(":7394/s")
            .f(Field::User, uw)
            .s(";tcp\r\na=setup:active\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n");
        let body = b;

        let icsi = "urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session";
        let mut h = Builder::default();
        h.s("INVITE sip:grp")
            .f(Field::Group, gw)
            .s("@groups.example.net SIP/2.0\r\nVia: SIP/2.0/UDP ")
            .s(&ip)
            .s(":")
            .s(&port)
            .s(";branch=z9hG4bK-")
            .f(Field::Seq, SEQ_WIDTH)
            .s(";rport\r\nMax-Forwards: 70\r\nFrom: <sip:user")
            .f(Field::User, uw)
            .s("@example.net>;tag=LGTag")
            .f(Field::Seq, SEQ_WIDTH)
            .s("\r\nTo: <sip:grp")
            .f(Field::Group, gw)
            .s("@groups.example.net>\r\nCall-ID: ")
            .f(Field::Seq, SEQ_WIDTH)
            .s("-")
            .s(&run_hex)
            .s("@loadgen\r\nCSeq: 1 INVITE\r\nContact: <sip:user")
            .f(Field::User, uw)
            .s("@")
            .s(&ip)
            .s(":")
            .s(&port)
            .s(">;+g.3gpp.icsi-ref=\"")
            .s(icsi)
            .s("\"\r\nAccept-Contact: *;+g.3gpp.icsi-ref=\"")
            .s(icsi)
            .s("\"\r\nP-Preferred-Service: urn:urn-7:3gpp-service.ims.icsi.oma.cpm.session\r\n")
            .s("Content-Type: application/sdp\r\nContent-Length: ")
            .s(&body.buf.len().to_string())
            .s("\r\n\r\n");

        let shift = h.buf.len();
        let mut bytes = h.buf;
        bytes.extend_from_slice(&body.buf);
        let mut fields = h.fields;
        fields.extend(body.fields.iter().map(|&(o, w, f)| (o + shift, w, f)));
        Template { bytes, fields }
    }

    fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Write the per-request fields into `buf`, which holds a template copy.
    fn patch(&self, buf: &mut [u8], seq: u64, user: u64, group: u64) {
        for &(off, width, field) in &self.fields {
            let v = match field {
                Field::Seq => seq,
                Field::User => user,
                Field::Group => group,
            };
            if let Some(dst) = buf.get_mut(off..off + width) {
                write_digits(dst, v);
            }
        }
    }
}

/// Zero-padded decimal into the whole of `dst` (high digits beyond the width
/// are dropped; widths are chosen so that does not happen).
fn write_digits(dst: &mut [u8], mut v: u64) {
    for d in dst.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// `<seq>-<run hex>@loadgen` → (seq, run).
fn parse_call_id(v: &[u8]) -> Option<(u64, u32)> {
    let dash = memchr::memchr(b'-', v)?;
    let at = memchr::memchr(b'@', v)?;
    if at <= dash + 1 || at - dash - 1 > 8 {
        return None;
    }
    let seq = common::parse_u64(&v[..dash])?;
    let mut run: u32 = 0;
    for &c in &v[dash + 1..at] {
        let d = (c as char).to_digit(16)?;
        run = (run << 4) | d;
    }
    Some((seq, run))
}

// ---------------------------------------------------------------- malformed --

/// The malformed datagrams of `--malformed-pct`, sent in this order, in turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BadKind {
    /// Pseudo-random binary bytes: not a SIP start line (edge: dropped, garbage).
    Garbage,
    /// An INVITE cut inside its headers, no blank line (edge: 400).
    Truncated,
    /// Content-Length beyond the body or not a number (edge: 400).
    BadContentLength,
    /// An INVITE without Call-ID (edge: 400).
    NoCallId,
    /// A well-formed INVITE of 65507 bytes, the largest UDP/IPv4 datagram:
    /// beyond the edge's receive buffer (edge: dropped, oversized).
    Oversized,
}

impl BadKind {
    const ALL: [BadKind; 5] = [
        BadKind::Garbage,
        BadKind::Truncated,
        BadKind::BadContentLength,
        BadKind::NoCallId,
        BadKind::Oversized,
    ];

    fn name(self) -> &'static str {
        match self {
            BadKind::Garbage => "garbage",
            BadKind::Truncated => "truncated",
            BadKind::BadContentLength => "bad_content_length",
            BadKind::NoCallId => "no_call_id",
            BadKind::Oversized => "oversized",
        }
    }
}

/// Largest UDP payload over IPv4.
const OVERSIZED_BYTES: usize = 65_507;

/// Builds the malformed datagrams (a few per thousand requests: formatting
/// and allocation are fine here).
struct BadMaker {
    /// Via/Contact host:port of the generator.
    hostport: String,
    run_hex: String,
}

impl BadMaker {
    /// The `n`-th malformed datagram into `out`; its kind.
    fn build(&self, n: u64, out: &mut Vec<u8>) -> BadKind {
        let kind = BadKind::ALL[(n % BadKind::ALL.len() as u64) as usize];
        let variant = n / BadKind::ALL.len() as u64;
        out.clear();
        if kind == BadKind::Garbage {
            // xorshift64*, seeded by n: deterministic noise of 16..=527
            // bytes, first byte >= 0x80 so it is never a keepalive or text.
            let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let len = 16 + (x % 512) as usize;
            for i in 0..len {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                let b = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8;
                out.push(if i == 0 { b | 0x80 } else { b });
            }
            return kind;
        }
        let head = |cl: &str, call_id: bool| {
            let icsi = "urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session";
            let cid = if call_id {
                format!("Call-ID: bad{n}-{}@loadgen\r\n", self.run_hex)
            } else {
                String::new()
            };
            format!(
                "INVITE sip:grp1@groups.example.net SIP/2.0\r\n\
                 Via: SIP/2.0/UDP {hp};branch=z9hG4bK-bad{n};rport\r\n\
                 Max-Forwards: 70\r\n\
                 From: <sip:baduser@example.net>;tag=LGBad{n}\r\n\
                 To: <sip:grp1@groups.example.net>\r\n\
                 {cid}\
                 CSeq: 1 INVITE\r\n\
                 Contact: <sip:baduser@{hp}>;+g.3gpp.icsi-ref=\"{icsi}\"\r\n\
                 Accept-Contact: *;+g.3gpp.icsi-ref=\"{icsi}\"\r\n\
                 P-Preferred-Service: urn:urn-7:3gpp-service.ims.icsi.oma.cpm.session\r\n\
                 Content-Type: text/plain\r\n\
                 Content-Length: {cl}\r\n\r\n",
                hp = self.hostport,
            )
        };
        const BODY: &[u8] = b"malformed-by-cpm-loadgen\r\n";
        match kind {
            BadKind::Garbage => unreachable!("handled above"),
            BadKind::Truncated => {
                let full = head(&BODY.len().to_string(), true);
                // Cut somewhere after the Via line and before the blank line.
                let via_end = full.find("\r\nMax-Forwards").map_or(0, |i| i + 2);
                let span = (full.len() - 4).saturating_sub(via_end).max(1);
                let cut = via_end + (variant as usize * 37) % span;
                out.extend_from_slice(&full.as_bytes()[..cut.max(via_end)]);
            }
            BadKind::BadContentLength => {
                let cl = if variant.is_multiple_of(2) {
                    (BODY.len() + 1000).to_string()
                } else {
                    "1x2".to_string()
                };
                out.extend_from_slice(head(&cl, true).as_bytes());
                out.extend_from_slice(BODY);
            }
            BadKind::NoCallId => {
                out.extend_from_slice(head(&BODY.len().to_string(), false).as_bytes());
                out.extend_from_slice(BODY);
            }
            BadKind::Oversized => {
                // The Content-Length's width is fixed at 5 digits, so the
                // head's length does not depend on the value.
                let probe = head("00000", true).len();
                let body = OVERSIZED_BYTES - probe;
                out.extend_from_slice(head(&format!("{body:05}"), true).as_bytes());
                out.resize(OVERSIZED_BYTES, b'x');
            }
        }
        kind
    }
}

/// Is this response an answer to one of our malformed datagrams (Call-ID
/// `bad...` or, when the Call-ID was missing, our `-bad` Via branch)?
fn answers_malformed(call_id: Option<&[u8]>, top_via: Option<&[u8]>) -> bool {
    call_id.is_some_and(|c| c.starts_with(b"bad"))
        || top_via.is_some_and(|v| memchr::memmem::find(v, b"branch=z9hG4bK-bad").is_some())
}

// ---------------------------------------------------------------- state --

#[derive(Clone, Copy, Default)]
struct Slot {
    /// Send time in ns since start (+1 so that 0 means "free").
    sent_ns: u64,
    seq: u64,
}

struct Gen {
    table: Vec<Slot>,
    mask: u64,
    run: u32,
    timeout_ns: u64,
    /// Next sequence number to send.
    next_seq: u64,
    /// Lowest sequence number that may still be outstanding.
    oldest: u64,
    outstanding: usize,
    /// First sequence number of the measured interval (u64::MAX before it).
    first_measured: u64,
    hist: Histogram<u64>,
    // Measured-interval figures.
    sent: u64,
    ok: u64,
    non2xx: u64,
    lost: u64,
    // Whole-run diagnostics.
    total_sent: u64,
    total_final: u64,
    warmup_lost: u64,
    provisional: u64,
    late_or_dup: u64,
    unmatched: u64,
    foreign: u64,
    bad: u64,
    send_errors: u64,
    evicted: u64,
    // Malformed datagrams (whole run).
    /// Malformed datagrams consumed so far (sent or failed).
    bad_next: u64,
    bad_sent: [u64; BadKind::ALL.len()],
    bad_send_errors: u64,
    /// Answers to malformed datagrams, per status code.
    bad_answers: Vec<(u16, u64)>,
}

impl Gen {
    fn measured(&self, seq: u64) -> bool {
        seq >= self.first_measured
    }

    fn count_lost(&mut self, seq: u64) {
        self.outstanding -= 1;
        if self.measured(seq) {
            self.lost += 1;
        } else {
            self.warmup_lost += 1;
        }
    }

    fn record_sent(&mut self, seq: u64, t: u64) {
        let i = (seq & self.mask) as usize;
        let prev = self.table[i];
        if prev.sent_ns != 0 {
            // The table wrapped onto a still-outstanding request: it is older
            // than the table span, so give it up now.
            self.evicted += 1;
            self.count_lost(prev.seq);
        }
        self.table[i] = Slot { sent_ns: t, seq };
        self.outstanding += 1;
        self.total_sent += 1;
        if self.measured(seq) {
            self.sent += 1;
        }
    }

    fn on_datagram(&mut self, data: &[u8], truncated: bool, now: u64) {
        if truncated {
            self.bad += 1;
            return;
        }
        let (start, headers) = common::split_message(data);
        let Some(code) = common::status_code(start) else {
            self.bad += 1;
            return;
        };
        // The top Via comes first in practice, so this stops at Call-ID.
        let (mut call_id, mut top_via) = (None, None);
        for h in headers {
            if call_id.is_none() && common::is_header(h.name, b"Call-ID", b"i") {
                call_id = Some(h.value);
            } else if top_via.is_none() && common::is_header(h.name, b"Via", b"v") {
                top_via = Some(h.value);
            }
            if call_id.is_some() && top_via.is_some() {
                break;
            }
        }
        if answers_malformed(call_id, top_via) {
            match self.bad_answers.iter_mut().find(|(c, _)| *c == code) {
                Some((_, n)) => *n += 1,
                None => self.bad_answers.push((code, 1)),
            }
            return;
        }
        if code < 200 {
            self.provisional += 1;
            return;
        }
        let Some((seq, run)) = call_id.and_then(parse_call_id) else {
            self.bad += 1;
            return;
        };
        if run != self.run {
            self.foreign += 1;
            return;
        }
        let i = (seq & self.mask) as usize;
        let slot = self.table[i];
        if slot.sent_ns == 0 || slot.seq != seq {
            if seq < self.next_seq {
                self.late_or_dup += 1;
            } else {
                self.unmatched += 1;
            }
            return;
        }
        self.table[i].sent_ns = 0;
        self.outstanding -= 1;
        self.total_final += 1;
        if self.measured(seq) {
            if (200..300).contains(&code) {
                self.ok += 1;
            } else {
                self.non2xx += 1;
            }
            let us = now.saturating_sub(slot.sent_ns).div_ceil(1000).max(1);
            self.hist.saturating_record(us);
        }
    }

    /// Count as lost every request older than the timeout (all of them with
    /// `force`). Returns when the next one would expire (ns), if any.
    fn expire(&mut self, now: u64, force: bool) -> Option<u64> {
        while self.oldest < self.next_seq {
            let i = (self.oldest & self.mask) as usize;
            let s = self.table[i];
            if s.sent_ns != 0 && s.seq == self.oldest {
                if !force && now.saturating_sub(s.sent_ns) < self.timeout_ns {
                    return Some(s.sent_ns + self.timeout_ns);
                }
                self.table[i].sent_ns = 0;
                self.count_lost(s.seq);
            }
            self.oldest += 1;
        }
        None
    }
}

/// Monotonic ns since start, never 0.
struct Clock(Instant);

impl Clock {
    fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64 + 1
    }
}

fn mark(enabled: bool, what: &str) {
    if enabled {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "MARK {what}");
        let _ = out.flush();
    }
}

/// The source address the kernel would use towards `target` (for Via when
/// bound to 0.0.0.0).
fn source_ip_towards(target: SocketAddrV4) -> Option<Ipv4Addr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect(target).ok()?;
    match s.local_addr().ok()?.ip() {
        IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}

fn validate(a: &Args) -> Result<(), String> {
    let finite_pos = |v: f64| v.is_finite() && v > 0.0;
    if a.mode == Mode::Open && a.rate == 0 {
        return Err("--rate must be > 0".into());
    }
    if a.window == 0 || a.window > (1 << 20) {
        return Err("--window must be in 1..=1048576".into());
    }
    if a.timeout_ms == 0 || a.timeout_ms > 60_000 {
        return Err("--timeout-ms must be in 1..=60000".into());
    }
    if a.duration.is_some_and(|d| !finite_pos(d)) {
        return Err("--duration must be > 0".into());
    }
    if !(a.warmup.is_finite() && a.warmup >= 0.0) {
        return Err("--warmup must be >= 0".into());
    }
    if a.count == Some(0) {
        return Err("--count must be > 0".into());
    }
    if a.groups == 0 || a.users == 0 {
        return Err("--groups and --users must be > 0".into());
    }
    if a.batch == 0 || a.batch > 1024 {
        return Err("--batch must be in 1..=1024".into());
    }
    if a.gso && a.batch > 64 {
        return Err("--gso allows at most --batch 64 (kernel segment limit)".into());
    }
    if a.max_loss_pct.is_some_and(|p| !(p.is_finite() && p >= 0.0)) {
        return Err("--max-loss-pct must be >= 0".into());
    }
    if !(a.malformed_pct.is_finite() && (0.0..=50.0).contains(&a.malformed_pct)) {
        return Err("--malformed-pct must be in 0..=50".into());
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = validate(&args) {
        eprintln!("cpm-loadgen: {e}");
        return ExitCode::from(2);
    }
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cpm-loadgen: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &Args) -> Result<ExitCode, String> {
    let SocketAddr::V4(target) = args.target else {
        return Err("--target must be an IPv4 address".into());
    };
    common::install_stop_handlers().map_err(|e| format!("signal handlers: {e}"))?;
    if let Some(cpu) = args.cpu {
        common::pin_to_cpu(cpu)?;
    }
    let (sock, rcvbuf, sndbuf) = common::bind_udp(args.bind, args.sock_buf)
        .map_err(|e| format!("cannot bind {}: {e}", args.bind))?;
    let local = match sock.local_addr() {
        Ok(SocketAddr::V4(a)) => a,
        _ => return Err("bound socket has no IPv4 local address".into()),
    };
    let via_ip = if local.ip().is_unspecified() {
        source_ip_towards(target).unwrap_or(Ipv4Addr::LOCALHOST)
    } else {
        *local.ip()
    };
    if args.connect {
        sock.connect(target)
            .map_err(|e| format!("cannot connect to {target}: {e}"))?;
    }
    let fd = sock.as_raw_fd();

    // Run id: tells this run's answers from a previous run's stragglers.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let run_id = (std::process::id() << 12) ^ nanos;

    let tmpl = Template::build(
        SocketAddrV4::new(via_ip, local.port()),
        run_id,
        args.users,
        args.groups,
    );
    let tlen = tmpl.len();
    eprintln!(
        "cpm-loadgen: INVITE template is {tlen} bytes; {} -> {target}, mode {:?}, {}, timeout {} ms, \
         rcvbuf {rcvbuf} B, sndbuf {sndbuf} B",
        local,
        args.mode,
        match args.mode {
            Mode::Open => format!("rate {}/s", args.rate),
            Mode::Closed => format!("window {}", args.window),
        },
        args.timeout_ms
    );
    if args.gso {
        common::enable_udp_gso(&sock, tlen).map_err(|e| format!("UDP_SEGMENT (--gso): {e}"))?;
    }
    if args.show_invite {
        let mut first = tmpl.bytes.clone();
        tmpl.patch(&mut first, 0, 0, 0);
        eprintln!("{}", String::from_utf8_lossy(&first));
    }

    // Send slots keep a template copy; only the fields change per request.
    let slot_size = tlen.next_multiple_of(64).max(1024);
    let mut tx = MsgBatch::new(args.batch, slot_size);
    for i in 0..tx.slots() {
        tx.slot_mut(i)[..tlen].copy_from_slice(&tmpl.bytes);
        if args.connect {
            tx.set_outgoing_connected(i, tlen);
        } else {
            tx.set_outgoing(i, tlen, target);
        }
    }
    let mut rx = MsgBatch::new(args.batch.max(32), RECV_SLOT);

    // The table must span every request that can be outstanding before its
    // timeout: rate x timeout (open), throughput x timeout (closed; unknown,
    // so generous).
    let timeout_s = args.timeout_ms as f64 / 1000.0;
    let want = match args.mode {
        Mode::Open => (args.rate as f64 * (timeout_s + 0.5) * 2.0) as usize,
        Mode::Closed => (args.window * 4).max(1 << 21),
    };
    let size = want.clamp(4096, MAX_TABLE).next_power_of_two();
    let hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| format!("histogram: {e}"))?;
    let mut g = Gen {
        table: vec![Slot::default(); size],
        mask: (size - 1) as u64,
        run: run_id,
        timeout_ns: args.timeout_ms * 1_000_000,
        next_seq: 0,
        oldest: 0,
        outstanding: 0,
        first_measured: u64::MAX,
        hist,
        sent: 0,
        ok: 0,
        non2xx: 0,
        lost: 0,
        total_sent: 0,
        total_final: 0,
        warmup_lost: 0,
        provisional: 0,
        late_or_dup: 0,
        unmatched: 0,
        foreign: 0,
        bad: 0,
        send_errors: 0,
        evicted: 0,
        bad_next: 0,
        bad_sent: [0; BadKind::ALL.len()],
        bad_send_errors: 0,
        bad_answers: Vec::new(),
    };
    // Malformed datagrams per valid request attempted.
    let bad_ratio = args.malformed_pct / (100.0 - args.malformed_pct);
    let bad_maker = BadMaker {
        hostport: format!("{via_ip}:{}", local.port()),
        run_hex: format!("{run_id:08x}"),
    };
    let mut bad_buf: Vec<u8> = Vec::with_capacity(OVERSIZED_BYTES);
    let bad_dst = (!args.connect).then_some(target);
    if args.prime_oversized > 0 {
        let n = BadKind::ALL
            .iter()
            .position(|k| *k == BadKind::Oversized)
            .unwrap_or(0) as u64;
        let kind = bad_maker.build(n, &mut bad_buf);
        debug_assert_eq!(kind, BadKind::Oversized);
        let (mut sent, mut errors) = (0u64, 0u64);
        while sent + errors < args.prime_oversized && !common::stop_requested() {
            match common::send_one(fd, &bad_buf, bad_dst, 0) {
                SendOutcome::Sent(_) => sent += 1,
                SendOutcome::WouldBlock => {}
                SendOutcome::Failed(_) => errors += 1,
            }
            if (sent + errors).is_multiple_of(16) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // Let the edge read them before the run starts.
        std::thread::sleep(Duration::from_millis(200));
        eprintln!(
            "cpm-loadgen: primed the edge with {sent} oversized datagrams ({errors} send errors)"
        );
    }

    let duration_ns = match (args.duration, args.count) {
        (Some(d), _) => Some((d * 1e9) as u64),
        (None, Some(_)) => None,
        (None, None) => Some(10_000_000_000),
    };
    let clock = Clock(Instant::now());
    let start = clock.now();
    let warmup_end = start + (args.warmup * 1e9) as u64;
    let mut measure_start: Option<u64> = None;
    let mut measure_end: Option<u64> = None;
    let mut sending = true;
    let mut drain_deadline = u64::MAX;
    // Open loop: sequence numbers consumed (sent or failed) for pacing.
    let mut attempted: u64 = 0;
    let mut wait_floor_ns: u64;

    loop {
        let now = clock.now();
        if sending && measure_start.is_none() && now >= warmup_end {
            measure_start = Some(now);
            g.first_measured = g.next_seq;
            mark(args.marks, "measure_start");
        }
        if sending {
            let done = common::stop_requested()
                || measure_start.is_some_and(|ms| {
                    duration_ns.is_some_and(|d| now - ms >= d)
                        || args.count.is_some_and(|c| g.sent >= c)
                });
            if done {
                sending = false;
                measure_start.get_or_insert(now);
                measure_end = Some(now);
                mark(args.marks, "measure_end");
                drain_deadline = now + g.timeout_ns + 200_000_000;
            }
        }

        // Whether more work is ready right now (then loop again without
        // sleeping). Merely having received something is not enough: that
        // would busy-poll and steal the CPU the responder shares with us.
        let mut more = false;
        wait_floor_ns = 0;
        // Receive what is queued (bounded, so sending is not starved).
        for _ in 0..8 {
            let n = match rx.recv(fd, rx.slots()) {
                Ok(n) => n,
                Err(e) => return Err(format!("recvmmsg: {e}")),
            };
            if n == 0 {
                break;
            }
            more = n == rx.slots();
            let t = clock.now();
            for i in 0..n {
                let (data, trunc, _src) = rx.received(i);
                g.on_datagram(data, trunc, t);
            }
            if n < rx.slots() {
                break;
            }
        }
        let now = clock.now();
        let next_expiry = g.expire(now, false);

        if sending {
            let mut quota = match args.mode {
                Mode::Open => {
                    let due = ((now - start) as u128 * args.rate as u128 / 1_000_000_000) as u64;
                    due.saturating_sub(attempted)
                }
                Mode::Closed => args.window.saturating_sub(g.outstanding) as u64,
            };
            if let (Some(c), Some(_)) = (args.count, measure_start) {
                quota = quota.min(c.saturating_sub(g.sent));
            }
            let k = quota.min(tx.slots() as u64) as usize;
            if k > 0 {
                for i in 0..k {
                    let seq = g.next_seq + i as u64;
                    tmpl.patch(tx.slot_mut(i), seq, seq % args.users, seq % args.groups);
                }
                let t = clock.now();
                let mut off = 0usize;
                while off < k {
                    let outcome = if args.gso {
                        tx.send_gso(fd, off, k, libc::MSG_DONTWAIT)
                    } else {
                        tx.send(fd, off, k, libc::MSG_DONTWAIT)
                    };
                    match outcome {
                        SendOutcome::Sent(n) => {
                            for j in off..off + n {
                                g.record_sent(g.next_seq + j as u64, t);
                            }
                            off += n;
                        }
                        SendOutcome::WouldBlock => {
                            // Kernel buffer full: retry these seqs shortly.
                            wait_floor_ns = 50_000;
                            break;
                        }
                        SendOutcome::Failed(_) => {
                            // The seq is consumed but never recorded: it is
                            // neither sent nor lost. Back off a little so a
                            // persistent error does not spin.
                            g.send_errors += 1;
                            wait_floor_ns = 1_000_000;
                            off += 1;
                        }
                    }
                }
                g.next_seq += off as u64;
                attempted += off as u64;
                more |= off == k && quota > k as u64;
            }
            // Bring the malformed count up to its share of what was attempted.
            if bad_ratio > 0.0 {
                let due = (attempted as f64 * bad_ratio) as u64;
                while g.bad_next < due {
                    let kind = bad_maker.build(g.bad_next, &mut bad_buf);
                    match common::send_one(fd, &bad_buf, bad_dst, libc::MSG_DONTWAIT) {
                        SendOutcome::Sent(_) => {
                            g.bad_sent[kind as usize] += 1;
                            g.bad_next += 1;
                        }
                        SendOutcome::WouldBlock => {
                            wait_floor_ns = 50_000;
                            break;
                        }
                        SendOutcome::Failed(_) => {
                            g.bad_send_errors += 1;
                            g.bad_next += 1;
                        }
                    }
                }
            }
        } else if g.outstanding == 0 || now >= drain_deadline {
            break;
        }

        if !more || wait_floor_ns > 0 {
            // Sleep until an answer arrives, the next paced send, the next
            // expiry, or 10 ms (ppoll returns at once if answers are queued).
            let mut until = now + 10_000_000;
            if sending && args.mode == Mode::Open {
                let next_due =
                    start + ((attempted as u128 + 1) * 1_000_000_000 / args.rate as u128) as u64;
                until = until.min(next_due);
            }
            if let Some(e) = next_expiry {
                until = until.min(e);
            }
            if !sending {
                until = until.min(drain_deadline);
            }
            let wait = until.saturating_sub(now).max(wait_floor_ns);
            if wait > 0 {
                let mut ready = [false];
                common::wait_readable(&[fd], Duration::from_nanos(wait), &mut ready);
            }
        }
    }
    g.expire(u64::MAX, true);

    let ms = measure_start.unwrap_or(start);
    let me = measure_end.unwrap_or_else(|| clock.now());
    let dur_s = me.saturating_sub(ms) as f64 / 1e9;
    let loss_pct = if g.sent > 0 {
        g.lost as f64 * 100.0 / g.sent as f64
    } else {
        0.0
    };
    let per_s = |n: u64| if dur_s > 0.0 { n as f64 / dur_s } else { 0.0 };
    let q = |p: f64| {
        if g.hist.is_empty() {
            0
        } else {
            g.hist.value_at_quantile(p)
        }
    };
    let bad_total: u64 = g.bad_sent.iter().sum();
    let bad_answered: u64 = g.bad_answers.iter().map(|(_, n)| n).sum();
    println!(
        "RESULT sent={} ok={} non2xx={} lost={} loss_pct={:.4} ok_per_s={:.0} p50_us={} p90_us={} \
         p99_us={} p999_us={} dur_s={:.3} malformed_sent={bad_total} malformed_answered={bad_answered}",
        g.sent,
        g.ok,
        g.non2xx,
        g.lost,
        loss_pct,
        per_s(g.ok),
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        dur_s
    );
    let _ = std::io::stdout().flush();
    eprintln!(
        "cpm-loadgen summary ({:?} loop, {} B INVITE, measured {:.3} s after {:.1} s warm-up):\n\
         \x20 sent        {:>12}  ({:.0}/s)\n\
         \x20 200-299     {:>12}  ({:.0}/s)\n\
         \x20 non-2xx     {:>12}\n\
         \x20 lost        {:>12}  ({:.4} %, unanswered after {} ms)\n\
         \x20 latency us  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (send -> final answer)\n\
         \x20 whole run   sent {}  final answers {}  warm-up lost {}  1xx ignored {}\n\
         \x20 anomalies   late/dup {}  unmatched {}  other-run {}  unparseable {}  \
         send errors {}  evicted {}",
        args.mode,
        tlen,
        dur_s,
        args.warmup,
        g.sent,
        per_s(g.sent),
        g.ok,
        per_s(g.ok),
        g.non2xx,
        g.lost,
        loss_pct,
        args.timeout_ms,
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        if g.hist.is_empty() { 0 } else { g.hist.max() },
        g.total_sent,
        g.total_final,
        g.warmup_lost,
        g.provisional,
        g.late_or_dup,
        g.unmatched,
        g.foreign,
        g.bad,
        g.send_errors,
        g.evicted
    );
    if args.malformed_pct > 0.0 {
        let kinds: Vec<String> = BadKind::ALL
            .iter()
            .map(|k| format!("{} {}", k.name(), g.bad_sent[*k as usize]))
            .collect();
        g.bad_answers.sort_unstable();
        let codes: Vec<String> = g
            .bad_answers
            .iter()
            .map(|(c, n)| format!("{c}: {n}"))
            .collect();
        eprintln!(
            "  malformed   sent {bad_total} ({:.3} % of all sends: {}), send errors {}\n\
             \x20             answered {bad_answered} ({}) (not requests: outside every figure above)",
            if bad_total + g.total_sent > 0 {
                bad_total as f64 * 100.0 / (bad_total + g.total_sent) as f64
            } else {
                0.0
            },
            kinds.join(", "),
            g.bad_send_errors,
            if codes.is_empty() {
                "none".to_string()
            } else {
                codes.join(", ")
            }
        );
    }
    if let Some(max) = args.max_loss_pct {
        if g.sent == 0 || loss_pct > max {
            eprintln!(
                "cpm-loadgen: FAIL: loss {loss_pct:.4} % exceeds --max-loss-pct {max} (sent {})",
                g.sent
            );
            return Ok(ExitCode::from(3));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts the message's Content-Length equals its body's length; its
    /// header block.
    fn content_length_fits(text: &str) -> &str {
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let cl: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(cl, body.len());
        head
    }

    #[test]
    fn template_is_consistent() {
        let t = Template::build(
            "127.0.0.1:40000".parse().unwrap(),
            0xabcdef01,
            100_000,
            1000,
        );
        let mut m = t.bytes.clone();
        t.patch(&mut m, 123, 45, 6);
        let s = String::from_utf8(m).unwrap();
        let head = content_length_fits(&s);
        assert!(head.starts_with("INVITE sip:grp006@groups.example.net SIP/2.0\r\n"));
        assert!(head.contains("From: <sip:user00045@example.net>;tag="));
        assert!(head.contains("\r\nCall-ID: 0000000123-abcdef01@loadgen\r\n"));
        assert_eq!(
            parse_call_id(b"000000000123-abcdef01@loadgen"),
            Some((123, 0xabcdef01))
        );
        assert_eq!(parse_call_id(b"garbage"), None);
        assert_eq!(parse_call_id(b"1-@x"), None);
    }

    #[test]
    fn malformed_datagrams_are_what_they_claim() {
        let m = BadMaker {
            hostport: "127.0.0.1:40000".into(),
            run_hex: "abcdef01".into(),
        };
        let mut buf = Vec::new();
        for n in 0..40u64 {
            let kind = m.build(n, &mut buf);
            assert_eq!(kind, BadKind::ALL[(n % 5) as usize]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            match kind {
                BadKind::Garbage => {
                    assert!(buf[0] >= 0x80 && (16..=527).contains(&buf.len()));
                    assert!(common::request_method(common::split_message(&buf).0).is_none());
                }
                BadKind::Truncated => {
                    assert!(text.starts_with("INVITE "), "{text}");
                    assert!(text.contains(";branch=z9hG4bK-bad"), "{text}");
                    assert!(!text.contains("\r\n\r\n"), "{text}");
                }
                BadKind::BadContentLength => {
                    let (head, body) = text.split_once("\r\n\r\n").unwrap();
                    let cl = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .unwrap();
                    assert_ne!(cl.parse::<usize>().ok(), Some(body.len()));
                }
                BadKind::NoCallId => {
                    assert!(!text.contains("Call-ID"));
                    assert!(text.contains("\r\n\r\n"));
                }
                BadKind::Oversized => {
                    assert_eq!(buf.len(), OVERSIZED_BYTES);
                    content_length_fits(&text);
                }
            }
            // Whatever the edge answers echoes Call-ID or the Via branch.
            let (_, hs) = common::split_message(&buf);
            let (mut cid, mut via) = (None, None);
            for h in hs {
                if common::is_header(h.name, b"Call-ID", b"i") {
                    cid = Some(h.value);
                } else if common::is_header(h.name, b"Via", b"v") && via.is_none() {
                    via = Some(h.value);
                }
            }
            if kind != BadKind::Garbage {
                assert!(answers_malformed(cid, via), "{kind:?}");
                assert!(cid.and_then(parse_call_id).is_none(), "never a valid seq");
            }
        }
        let valid = b"SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bK-0000000001;rport";
        assert!(!answers_malformed(
            Some(b"0000000001-abcdef01@loadgen"),
            Some(valid)
        ));
    }
}
