//! A scripted SIP user agent over real UDP sockets, for end-to-end tests of
//! the edge and the Conversation Server: each [`Party`] plays one client (A..E
//! of OMA CPM Appendix C.1), records every datagram it receives and calls or
//! answers per a script set before the call.
//!
//! Deliberately independent of `cpm_edge::sip`: a naive text-level UA
//! (RFC 3261 over UDP, RFC 3581 rport) written from the RFCs, so a bug in
//! the crate's SIP core cannot hide by being on both sides of a test.
//!
//! One thread per party receives (a short read timeout) and runs the
//! retransmission timers on every wake-up; the test thread calls, cancels
//! and hangs up through the same locked state.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// RFC 3261 §17.1.1.1 timer values.
pub const T1: Duration = Duration::from_millis(500);
pub const T2: Duration = Duration::from_secs(4);
/// 64*T1: Timers B, F, H, and the end of 2xx retransmission (§13.3.1.4).
pub const GIVE_UP: Duration = Duration::from_secs(32);
/// How often the receive loop wakes without traffic (timers, shutdown).
const TICK: Duration = Duration::from_millis(5);
/// How often the `wait_*` helpers look again.
const POLL: Duration = Duration::from_millis(5);

pub const CPM_SESSION: &str = "urn:urn-7:3gpp-service.ims.icsi.oma.cpm.session";
const ICSI_TAG: &str = "+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session\"";

// ---------------------------------------------------------------- parsing

/// Compact header forms (RFC 3261 §7.3.3, §20; RFC 3841, 4028, 3515, 3892).
const COMPACT: &[(&str, &str)] = &[
    ("v", "via"),
    ("f", "from"),
    ("t", "to"),
    ("i", "call-id"),
    ("m", "contact"),
    ("l", "content-length"),
    ("c", "content-type"),
    ("e", "content-encoding"),
    ("k", "supported"),
    ("s", "subject"),
    ("a", "accept-contact"),
    ("j", "reject-contact"),
    ("d", "request-disposition"),
    ("o", "event"),
    ("u", "allow-events"),
    ("r", "refer-to"),
    ("b", "referred-by"),
    ("x", "session-expires"),
];

/// The lowercase full name of a header, compact forms expanded.
pub fn canonical(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    COMPACT
        .iter()
        .find(|(c, _)| *c == lower)
        .map_or(lower, |(_, full)| full.to_string())
}

/// What a start line says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    Request { method: String, uri: String },
    Response { code: u16 },
}

/// `METHOD uri SIP/2.0` or `SIP/2.0 code reason`; None for anything else.
pub fn parse_start(line: &str) -> Option<Start> {
    if let Some(rest) = line.strip_prefix("SIP/2.0 ") {
        let code: u16 = rest.get(..3)?.parse().ok()?;
        let ends_right = rest.len() == 3 || rest.as_bytes()[3] == b' ';
        return ((100..700).contains(&code) && ends_right).then_some(Start::Response { code });
    }
    let mut parts = line.split(' ');
    let (method, uri, version) = (parts.next()?, parts.next()?, parts.next()?);
    let token = !method.is_empty() && method.bytes().all(|b| b.is_ascii_alphabetic());
    (token && !uri.is_empty() && version == "SIP/2.0" && parts.next().is_none()).then(|| {
        Start::Request {
            method: method.to_string(),
            uri: uri.to_string(),
        }
    })
}

/// A message split into its start line, unfolded headers and body.
#[derive(Clone, Debug)]
pub struct Msg {
    pub start_line: String,
    pub start: Start,
    /// (lowercase full name, trimmed value), in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Msg {
    /// None when the start line is not SIP; header lines without a colon
    /// are skipped (lenient: this is a test peer, not a validator).
    pub fn parse(raw: &str) -> Option<Msg> {
        let (head, body) = split_head(raw);
        let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        let start_line = lines.next()?.to_string();
        let start = parse_start(&start_line)?;
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with([' ', '\t']) {
                // RFC 3261 §7.3.1 folding: the line continues the last value.
                if let Some(last) = headers.last_mut() {
                    last.1 = format!("{} {}", last.1, line.trim());
                }
            } else if let Some((name, value)) = line.split_once(':') {
                headers.push((canonical(name), value.trim().to_string()));
            }
        }
        let mut msg = Msg {
            start_line,
            start,
            headers,
            body: body.to_string(),
        };
        msg.trim_body();
        Some(msg)
    }

    /// A datagram may carry trailing bytes past Content-Length (§18.3).
    fn trim_body(&mut self) {
        let len = self.header("content-length").and_then(|l| l.parse().ok());
        if let Some(len) = len {
            if len < self.body.len() && self.body.is_char_boundary(len) {
                self.body.truncate(len);
            }
        }
    }

    /// Every line's value of the header `name` (any form), in order.
    pub fn lines(&self, name: &str) -> Vec<&str> {
        let name = canonical(name);
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first line's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.lines(name).into_iter().next()
    }

    /// Every value, comma-separated lists split (Via, Route, Record-Route).
    pub fn values(&self, name: &str) -> Vec<String> {
        self.lines(name)
            .into_iter()
            .flat_map(split_commas)
            .collect()
    }

    pub fn method(&self) -> Option<&str> {
        match &self.start {
            Start::Request { method, .. } => Some(method),
            Start::Response { .. } => None,
        }
    }

    pub fn code(&self) -> Option<u16> {
        match self.start {
            Start::Response { code } => Some(code),
            Start::Request { .. } => None,
        }
    }

    pub fn request_uri(&self) -> Option<&str> {
        match &self.start {
            Start::Request { uri, .. } => Some(uri),
            Start::Response { .. } => None,
        }
    }

    pub fn call_id(&self) -> &str {
        self.header("call-id").unwrap_or("")
    }

    /// The CSeq number and method.
    pub fn cseq(&self) -> Option<(u32, String)> {
        let (num, method) = self.header("cseq")?.split_once(' ')?;
        Some((num.trim().parse().ok()?, method.trim().to_string()))
    }

    pub fn top_via(&self) -> Option<String> {
        self.values("via").into_iter().next()
    }

    /// The top Via's branch, "" if none.
    pub fn branch(&self) -> String {
        self.top_via()
            .and_then(|v| param(&v, "branch"))
            .unwrap_or_default()
    }

    pub fn tag_of_from(&self) -> Option<String> {
        self.header("from").and_then(tag)
    }

    pub fn tag_of_to(&self) -> Option<String> {
        self.header("to").and_then(tag)
    }
}

/// Header block and body, at the first empty line (CRLF, or bare LF).
fn split_head(raw: &str) -> (&str, &str) {
    if let Some(i) = raw.find("\r\n\r\n") {
        return (&raw[..i], &raw[i + 4..]);
    }
    match raw.find("\n\n") {
        Some(i) => (&raw[..i], &raw[i + 2..]),
        None => (raw, ""),
    }
}

/// The values of `name` in a raw message (convenience for assertions).
pub fn header_values(raw: &str, name: &str) -> Vec<String> {
    Msg::parse(raw).map_or_else(Vec::new, |m| m.values(name))
}

/// Split a header value at commas outside quotes and angle brackets.
pub fn split_commas(value: &str) -> Vec<String> {
    let (mut out, mut cur) = (Vec::new(), String::new());
    let (mut quoted, mut angle) = (false, false);
    for ch in value.chars() {
        match ch {
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// Byte offsets of the `<` and `>` of a name-addr, outside quotes.
fn angle_span(value: &str) -> Option<(usize, usize)> {
    let mut quoted = false;
    for (i, ch) in value.char_indices() {
        match ch {
            '"' => quoted = !quoted,
            '<' if !quoted => return Some((i, i + value[i..].find('>')?)),
            _ => {}
        }
    }
    None
}

/// The URI in a name-addr (`"A" <sip:a@h>;tag=1`) or addr-spec
/// (`sip:a@h;tag=1`, where the params belong to the header, §20).
pub fn uri_of(value: &str) -> String {
    match angle_span(value) {
        Some((lt, gt)) => value[lt + 1..gt].trim().to_string(),
        None => value.split(';').next().unwrap_or("").trim().to_string(),
    }
}

/// A header parameter (after the name-addr, or after a Via's sent-by):
/// Some("") for a flag such as `rport`.
pub fn param(value: &str, name: &str) -> Option<String> {
    let params = match angle_span(value) {
        Some((_, gt)) => &value[gt + 1..],
        None => value.split_once(';').map_or("", |(_, p)| p),
    };
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

pub fn tag(value: &str) -> Option<String> {
    param(value, "tag")
}

/// A URI's host and port (5060, 5061 for sips, when absent).
pub fn host_port(uri: &str) -> Option<(String, u16)> {
    let lower = uri.trim().to_ascii_lowercase();
    let (rest, default) = if lower.starts_with("sips:") {
        (&uri.trim()[5..], 5061)
    } else if lower.starts_with("sip:") {
        (&uri.trim()[4..], 5060)
    } else {
        (uri.trim(), 5060)
    };
    let rest = rest.split(['?', '>']).next()?;
    // The user part may hold ';' (telephone-subscriber): cut it off first.
    let hostpart = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let hostport = hostpart.split(';').next()?.trim();
    split_hostport(hostport, default)
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
fn split_hostport(hp: &str, default: u16) -> Option<(String, u16)> {
    if let Some(v6) = hp.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    let (host, port) = match hp.split_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (hp, default),
    };
    (!host.is_empty()).then(|| (host.to_string(), port))
}

fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    (host, port).to_socket_addrs().ok()?.next()
}

/// Where a URI's host:port points.
pub fn addr_of(uri: &str) -> Option<SocketAddr> {
    let (host, port) = host_port(uri)?;
    resolve(&host, port)
}

/// Where a response to a request goes (RFC 3261 §18.2.2, RFC 3581 §4): the
/// top Via's `received` host else its sent-by host; `rport=N` else, for a
/// bare `rport` (nobody filled it in: we are the first hop), the source
/// address; else the sent-by port.
pub fn reply_dest(top_via: &str, src: SocketAddr) -> Option<SocketAddr> {
    let sent_by = top_via.split(';').next()?.split_whitespace().nth(1)?;
    let (host, port) = split_hostport(sent_by, 5060)?;
    let received = param(top_via, "received").filter(|r| !r.is_empty());
    match param(top_via, "rport").as_deref() {
        Some("") if received.is_none() => Some(src),
        Some("") => resolve(received.as_deref()?, src.port()),
        Some(p) => resolve(received.as_deref().unwrap_or(&host), p.parse().ok()?),
        None => resolve(received.as_deref().unwrap_or(&host), port),
    }
}

/// LF or CRLF line ends in, CRLF out.
pub fn crlf(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\n', "\r\n")
}

/// Extra header lines as given, each ending in CRLF ("" stays "").
fn header_block(extra: &str) -> String {
    crlf(extra)
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| format!("{l}\r\n"))
        .collect()
}

/// Content-Type (if any), Content-Length, the empty line, the body.
fn finish(head: String, ctype: Option<&str>, body: &str) -> String {
    let ct = ctype.map_or(String::new(), |c| format!("Content-Type: {c}\r\n"));
    format!("{head}{ct}Content-Length: {}\r\n\r\n{body}", body.len())
}

pub fn reason(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        404 => "Not Found",
        408 => "Request Timeout",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        501 => "Not Implemented",
        603 => "Decline",
        _ => "Scripted",
    }
}

/// A fresh random token (tags, Call-IDs, branches).
fn token() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{:016x}", RandomState::new().hash_one(n))
}

/// An RFC 3261 branch (§8.1.1.7 magic cookie).
fn new_branch() -> String {
    format!("z9hG4bK{}", token())
}

/// An MSRP session SDP for a party at `addr` (an offer or an answer).
pub fn msrp_sdp(name: &str, addr: SocketAddr) -> String {
    let (ip, port) = (addr.ip(), addr.port());
    format!(
        "v=0\r\no={name} 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=message {port} TCP/MSRP *\r\na=accept-types:message/cpim\r\n\
         a=path:msrp://{ip}:{port}/{name};tcp\r\na=setup:active\r\n"
    )
}

// ---------------------------------------------------------------- records

/// One datagram as it arrived.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub from: SocketAddr,
    pub start_line: String,
    /// The method, the status code, or "?" for a datagram that is not SIP.
    pub method_or_code: String,
    /// The CSeq value as written ("1 INVITE"), "" if none.
    pub cseq: String,
    pub call_id: String,
    /// The top Via's branch, "" if none.
    pub branch: String,
    pub raw: String,
}

impl Received {
    fn new(raw: String, msg: Option<&Msg>, from: SocketAddr) -> Received {
        let first = raw.lines().next().unwrap_or("").to_string();
        let (method_or_code, cseq, call_id, branch) = match msg {
            Some(m) => (
                m.method()
                    .map_or_else(|| m.code().unwrap_or(0).to_string(), str::to_string),
                m.header("cseq").unwrap_or("").to_string(),
                m.call_id().to_string(),
                m.branch(),
            ),
            None => ("?".into(), String::new(), String::new(), String::new()),
        };
        Received {
            at: Instant::now(),
            from,
            start_line: msg.map_or(first, |m| m.start_line.clone()),
            method_or_code,
            cseq,
            call_id,
            branch,
            raw,
        }
    }

    pub fn is_response(&self) -> bool {
        self.start_line.starts_with("SIP/2.0 ")
    }

    /// `INVITE`, `180`, `200/INVITE`, `487/INVITE`, `?`.
    pub fn summary(&self) -> String {
        let final_response = self.is_response() && !self.method_or_code.starts_with('1');
        match self.cseq.split_whitespace().nth(1) {
            Some(method) if final_response => format!("{}/{method}", self.method_or_code),
            _ => self.method_or_code.clone(),
        }
    }

    /// Equal for a message and its retransmissions: the start line (a
    /// request) or code (a response), the branch and the CSeq.
    fn dedup_key(&self) -> String {
        if self.method_or_code == "?" {
            return self.raw.clone();
        }
        let first = if self.is_response() {
            &self.method_or_code
        } else {
            &self.start_line
        };
        format!("{first}\n{}\n{}", self.branch, self.cseq)
    }
}

/// One datagram this party sent, or would have sent but dropped on purpose.
#[derive(Clone, Debug)]
pub struct Sent {
    pub at: Instant,
    pub to: SocketAddr,
    pub start_line: String,
    pub raw: String,
    /// Dropped by [`Party::drop_first_n_sends`].
    pub dropped: bool,
}

// ---------------------------------------------------------------- script

/// How a party answers an INVITE that starts a dialog with it.
#[derive(Clone, Debug)]
pub enum Answer {
    /// 180 at once if `ring`, then 200 with `sdp` after `delay`.
    Accept {
        ring: bool,
        delay: Duration,
        sdp: String,
    },
    /// `code` after `delay`.
    Reject { code: u16, delay: Duration },
    /// Nothing (CANCEL is still answered: 200, then 487 to the INVITE).
    Silent,
    /// 180, then nothing.
    RingOnly,
}

// ---------------------------------------------------------------- state

/// A message sent again on a timer: T1, doubling (up to `cap`), until
/// stopped or `until`.
struct Retx {
    bytes: Vec<u8>,
    to: SocketAddr,
    due: Instant,
    interval: Duration,
    cap: Option<Duration>,
    until: Instant,
}

enum Fire {
    Wait,
    Resend,
    Expired,
}

impl Retx {
    fn new(bytes: &[u8], to: SocketAddr, cap: Option<Duration>) -> Retx {
        let now = Instant::now();
        Retx {
            bytes: bytes.to_vec(),
            to,
            due: now + T1,
            interval: T1,
            cap,
            until: now + GIVE_UP,
        }
    }

    fn fire(&mut self, now: Instant) -> Fire {
        if now >= self.until {
            return Fire::Expired;
        }
        if now < self.due {
            return Fire::Wait;
        }
        self.interval = self
            .cap
            .map_or(self.interval * 2, |c| (self.interval * 2).min(c));
        self.due = now + self.interval;
        Fire::Resend
    }
}

/// A final response the script has scheduled.
enum Planned {
    Accept(String),
    Reject(u16),
}

/// An INVITE server transaction and the UAS call it started.
struct ServerInvite {
    branch: String,
    call_id: String,
    cseq: u32,
    request: Msg,
    dest: SocketAddr,
    to_tag: String,
    remote_tag: String,
    planned: Option<(Instant, Planned)>,
    /// The last response, for retransmitted INVITEs (§17.2.1).
    last: Option<Vec<u8>>,
    final_code: Option<u16>,
    /// The final response until its ACK (2xx §13.3.1.4, non-2xx Timer G).
    retx: Option<Retx>,
}

/// A UAC INVITE client transaction and what followed it.
struct Call {
    call_id: String,
    branch: String,
    via: String,
    from: String,
    from_tag: String,
    to: String,
    request_uri: String,
    proxy: SocketAddr,
    /// Timer A until a response arrives.
    retx: Option<Retx>,
    provisional: bool,
    final_code: Option<u16>,
    timed_out: bool,
    /// The ACK sent for each 2xx, by the 2xx's To tag, for its retransmissions.
    acks: Vec<(String, Vec<u8>, SocketAddr)>,
    non2xx_ack: Option<Vec<u8>>,
}

/// A dialog (§12), either side.
#[derive(Clone)]
struct Dialog {
    call_id: String,
    local_tag: String,
    remote_tag: String,
    /// Our From in requests we send (with our tag).
    local: String,
    /// Their address in our To (with their tag).
    remote: String,
    target: String,
    route: Vec<String>,
    cseq: u32,
    terminated: bool,
}

/// A non-INVITE client transaction (CANCEL, BYE) on Timer E / F.
struct NonInvite {
    branch: String,
    method: String,
    retx: Option<Retx>,
    final_code: Option<u16>,
    timed_out: bool,
}

#[derive(Default)]
struct State {
    answer: Option<Answer>,
    uas: Vec<ServerInvite>,
    calls: Vec<Call>,
    dialogs: Vec<Dialog>,
    nict: Vec<NonInvite>,
    /// Responses to non-INVITE requests, by branch + method + Call-ID, for
    /// their retransmissions (§17.2.2).
    nist: Vec<(String, Vec<u8>, SocketAddr)>,
}

#[derive(Default)]
struct Net {
    drop_next: usize,
    sent: Vec<Sent>,
}

struct Inner {
    name: String,
    addr: SocketAddr,
    sock: UdpSocket,
    log: Mutex<Vec<Received>>,
    st: Mutex<State>,
    net: Mutex<Net>,
    stop: AtomicBool,
}

/// A lock that survives a panicked holder: the receive thread must go on.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------- party

/// One scripted user agent on its own UDP socket.
pub struct Party {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

impl Party {
    /// A party on 127.0.0.1, a free port.
    pub fn bind(name: &str) -> Party {
        Party::bind_at(name, "127.0.0.1:0".parse().unwrap())
    }

    pub fn bind_at(name: &str, addr: SocketAddr) -> Party {
        let sock = UdpSocket::bind(addr).expect("bind a party's socket");
        sock.set_read_timeout(Some(TICK)).unwrap();
        let inner = Arc::new(Inner {
            name: name.to_string(),
            addr: sock.local_addr().unwrap(),
            sock,
            log: Mutex::default(),
            st: Mutex::default(),
            net: Mutex::default(),
            stop: AtomicBool::new(false),
        });
        let run = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name(format!("party-{name}"))
            .spawn(move || run.run())
            .unwrap();
        Party {
            inner,
            thread: Some(thread),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `sip:{name}@127.0.0.1:{port}`: the edge reaches a client by the
    /// Request-URI's host:port.
    pub fn aor(&self) -> String {
        self.inner.aor()
    }

    /// How to answer INVITEs from now on (the default is [`Answer::Silent`]).
    pub fn set_answer(&self, answer: Answer) {
        lock(&self.inner.st).answer = Some(answer);
    }

    /// Test knob: the next `n` datagrams this party sends are dropped (and
    /// recorded as such in [`Party::sent`]), to play a lossy network.
    pub fn drop_first_n_sends(&self, n: usize) {
        lock(&self.inner.net).drop_next = n;
    }

    /// Everything received, in arrival order, retransmissions included.
    pub fn log(&self) -> Vec<Received> {
        lock(&self.inner.log).clone()
    }

    /// Everything sent (and dropped on purpose), in order.
    pub fn sent(&self) -> Vec<Sent> {
        lock(&self.inner.net).sent.clone()
    }

    pub fn summary(&self) -> Vec<String> {
        self.log().iter().map(Received::summary).collect()
    }

    /// The summary of distinct messages: retransmissions dropped.
    pub fn summary_dedup(&self) -> Vec<String> {
        dedup(&self.log())
    }

    /// Until `pred` holds over the log, or `timeout`: whether it held.
    pub fn wait_for(&self, pred: impl Fn(&[Received]) -> bool, timeout: Duration) -> bool {
        poll(timeout, || pred(&lock(&self.inner.log)))
    }

    /// Until the deduplicated summary contains `item` (e.g. "200/INVITE").
    pub fn wait_got(&self, item: &str, timeout: Duration) -> bool {
        self.wait_for(|log| dedup(log).iter().any(|s| s == item), timeout)
    }

    /// The Call-IDs of the dialog-creating INVITEs received, in order (to
    /// hang up as the callee with [`Party::bye`]).
    pub fn incoming_calls(&self) -> Vec<String> {
        lock(&self.inner.st)
            .uas
            .iter()
            .map(|t| t.call_id.clone())
            .collect()
    }

    /// Send a CPM session INVITE to `request_uri` through `via_proxy`.
    /// `extra_headers`: whole lines, LF or CRLF, added before Content-Type.
    pub fn invite(
        &self,
        request_uri: &str,
        via_proxy: SocketAddr,
        sdp: &str,
        extra_headers: &str,
    ) -> CallHandle {
        self.invite_with(
            request_uri,
            via_proxy,
            "application/sdp",
            sdp,
            extra_headers,
        )
    }

    /// An INVITE whose body is of type `content_type` (e.g. the
    /// `multipart/mixed` offer and recipient list of an ad-hoc group).
    pub fn invite_with(
        &self,
        request_uri: &str,
        via_proxy: SocketAddr,
        content_type: &str,
        body: &str,
        extra_headers: &str,
    ) -> CallHandle {
        let call_id = self
            .inner
            .invite(request_uri, via_proxy, content_type, body, extra_headers);
        CallHandle {
            inner: Arc::clone(&self.inner),
            call_id,
        }
    }

    /// Send `bytes` from this party's socket as they are (a REGISTER the
    /// test writes); what comes back is in [`Party::log`].
    pub fn send_raw(&self, bytes: &[u8], to: SocketAddr) {
        self.inner.send(bytes, to);
    }

    /// BYE in the confirmed dialog of `call_id` (either side), Timer E
    /// retransmissions; waits for the final response (at most Timer F):
    /// its code, None if there was no such dialog or no answer.
    pub fn bye(&self, call_id: &str) -> Option<u16> {
        let branch = self.inner.send_bye(call_id)?;
        self.inner.wait_nict(&branch, GIVE_UP + T1)
    }
}

impl Drop for Party {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn dedup(log: &[Received]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    log.iter()
        .filter(|r| seen.insert(r.dedup_key()))
        .map(Received::summary)
        .collect()
}

/// Poll `cond` every few ms until true or `timeout`.
fn poll(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// The caller's handle on one INVITE it sent.
pub struct CallHandle {
    inner: Arc<Inner>,
    call_id: String,
}

impl CallHandle {
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    fn with<R>(&self, f: impl FnOnce(&Call) -> R) -> R {
        let st = lock(&self.inner.st);
        f(st.calls.iter().find(|c| c.call_id == self.call_id).unwrap())
    }

    /// The INVITE's final status (the first one), if any yet.
    pub fn final_code(&self) -> Option<u16> {
        self.with(|c| c.final_code)
    }

    /// A 2xx arrived and was ACKed.
    pub fn is_confirmed(&self) -> bool {
        self.with(|c| !c.acks.is_empty())
    }

    pub fn got_provisional(&self) -> bool {
        self.with(|c| c.provisional)
    }

    /// Timer B fired: no response to the INVITE at all.
    pub fn timed_out(&self) -> bool {
        self.with(|c| c.timed_out)
    }

    pub fn wait_final(&self, timeout: Duration) -> Option<u16> {
        poll(timeout, || self.final_code().is_some());
        self.final_code()
    }

    pub fn wait_confirmed(&self, timeout: Duration) -> bool {
        poll(timeout, || self.is_confirmed())
    }

    /// CANCEL the INVITE (§9.1), to the proxy, Timer E until answered.
    /// False (nothing sent) once a final response arrived. Unlike §9.1 it
    /// does not wait for a provisional: a test may want exactly that race.
    pub fn cancel(&self) -> bool {
        self.inner.send_cancel(&self.call_id)
    }

    /// The final status of the CANCEL, if any yet.
    pub fn cancel_code(&self) -> Option<u16> {
        let branch = self.with(|c| c.branch.clone());
        let st = lock(&self.inner.st);
        st.nict
            .iter()
            .find(|t| t.branch == branch && t.method == "CANCEL")
            .and_then(|t| t.final_code)
    }

    /// BYE in the confirmed dialog (CSeq 2), waits for its final status.
    pub fn bye(&self) -> Option<u16> {
        let branch = self.inner.send_bye(&self.call_id)?;
        self.inner.wait_nict(&branch, GIVE_UP + T1)
    }

    /// Send `method` inside the confirmed dialog with `extra` header lines;
    /// its final code.
    pub fn request(&self, method: &str, extra: &str) -> Option<u16> {
        let branch = self.inner.send_in_dialog(&self.call_id, method, extra)?;
        self.inner.wait_nict(&branch, GIVE_UP + T1)
    }
}

// ---------------------------------------------------------------- engine

impl Inner {
    fn aor(&self) -> String {
        format!("sip:{}@{}", self.name, self.addr)
    }

    fn contact(&self) -> String {
        format!("<{}>", self.aor())
    }

    fn run(&self) {
        let mut buf = vec![0u8; 65535];
        while !self.stop.load(Ordering::Relaxed) {
            // Errors are timeouts, EINTR or ICMP reports: only the timers
            // have something to do then.
            if let Ok((n, from)) = self.sock.recv_from(&mut buf) {
                self.on_datagram(&buf[..n], from);
            }
            self.guarded(|| self.tick(Instant::now()));
        }
    }

    /// A bug in this harness must not end the loop: the test then sees the
    /// missing answer and the panic on stderr.
    fn guarded(&self, f: impl FnOnce()) {
        let _ = std::panic::catch_unwind(AssertUnwindSafe(f));
    }

    fn on_datagram(&self, bytes: &[u8], from: SocketAddr) {
        let raw = String::from_utf8_lossy(bytes).into_owned();
        let msg = Msg::parse(&raw);
        lock(&self.log).push(Received::new(raw, msg.as_ref(), from));
        if let Some(msg) = msg {
            self.guarded(|| self.handle(&msg, from));
        }
    }

    fn handle(&self, msg: &Msg, from: SocketAddr) {
        let mut st = lock(&self.st);
        match msg.method() {
            Some(_) => self.on_request(&mut st, msg, from),
            None => self.on_response(&mut st, msg),
        }
    }

    fn send(&self, bytes: &[u8], to: SocketAddr) {
        let mut net = lock(&self.net);
        let dropped = net.drop_next > 0;
        if dropped {
            net.drop_next -= 1;
        } else {
            let _ = self.sock.send_to(bytes, to);
        }
        let raw = String::from_utf8_lossy(bytes).into_owned();
        net.sent.push(Sent {
            at: Instant::now(),
            to,
            start_line: raw.lines().next().unwrap_or("").to_string(),
            raw,
            dropped,
        });
    }

    // ------------------------------------------------------------ UAS

    fn on_request(&self, st: &mut State, req: &Msg, from: SocketAddr) {
        let method = req.method().unwrap_or("");
        if method == "ACK" {
            return on_ack(st, req);
        }
        let Some(dest) = req.top_via().and_then(|v| reply_dest(&v, from)) else {
            return; // nowhere to answer
        };
        if self.resend_nist(st, req) {
            return;
        }
        if method == "INVITE" {
            let (branch, call_id) = (req.branch(), req.call_id());
            let tx = st
                .uas
                .iter()
                .find(|t| t.branch == branch && t.call_id == call_id);
            if let Some(tx) = tx {
                // A retransmission: the last response again, if any (§17.2.1).
                if let Some(last) = &tx.last {
                    self.send(last, tx.dest);
                }
                return;
            }
        }
        match (method, req.tag_of_to()) {
            ("CANCEL", _) => self.on_cancel(st, req, dest),
            (_, Some(to_tag)) => self.in_dialog(st, req, &to_tag, dest),
            ("INVITE", None) => self.new_invite(st, req, dest),
            ("OPTIONS" | "MESSAGE", None) => self.answer_nist(st, req, 200, &token(), dest),
            (_, None) => self.answer_nist(st, req, 501, &token(), dest),
        }
    }

    fn nist_key(req: &Msg) -> String {
        let method = req.method().unwrap_or("");
        format!("{}\n{method}\n{}", req.branch(), req.call_id())
    }

    fn resend_nist(&self, st: &State, req: &Msg) -> bool {
        let key = Inner::nist_key(req);
        match st.nist.iter().find(|(k, _, _)| *k == key) {
            Some((_, bytes, to)) => {
                self.send(bytes, *to);
                true
            }
            None => false,
        }
    }

    /// Answer a non-INVITE request and keep the answer for retransmissions.
    fn answer_nist(&self, st: &mut State, req: &Msg, code: u16, to_tag: &str, dest: SocketAddr) {
        let resp = self.response(req, code, to_tag, false, None);
        self.send(resp.as_bytes(), dest);
        st.nist
            .push((Inner::nist_key(req), resp.into_bytes(), dest));
    }

    /// A response to `req`: every Via, From, To (with `to_tag` added if it
    /// has none), Call-ID, CSeq; for 18x/2xx to INVITE (`dialog`) the
    /// Record-Route and our Contact too (§12.1.1).
    fn response(
        &self,
        req: &Msg,
        code: u16,
        to_tag: &str,
        dialog: bool,
        sdp: Option<&str>,
    ) -> String {
        let mut head = format!("SIP/2.0 {code} {}\r\n", reason(code));
        for via in req.lines("via") {
            head += &format!("Via: {via}\r\n");
        }
        let to = req.header("to").unwrap_or("");
        let to = match tag(to) {
            None if code > 100 => format!("{to};tag={to_tag}"),
            _ => to.to_string(),
        };
        head += &format!("From: {}\r\nTo: {to}\r\n", req.header("from").unwrap_or(""));
        head += &format!(
            "Call-ID: {}\r\nCSeq: {}\r\n",
            req.call_id(),
            req.header("cseq").unwrap_or("")
        );
        if dialog {
            for rr in req.lines("record-route") {
                head += &format!("Record-Route: {rr}\r\n");
            }
            head += &format!("Contact: {}\r\n", self.contact());
        }
        match sdp {
            Some(sdp) => finish(head, Some("application/sdp"), &crlf(sdp)),
            None => finish(head, None, ""),
        }
    }

    fn new_invite(&self, st: &mut State, req: &Msg, dest: SocketAddr) {
        let mut tx = ServerInvite {
            branch: req.branch(),
            call_id: req.call_id().to_string(),
            cseq: req.cseq().map_or(0, |c| c.0),
            request: req.clone(),
            dest,
            to_tag: token(),
            remote_tag: req.tag_of_from().unwrap_or_default(),
            planned: None,
            last: None,
            final_code: None,
            retx: None,
        };
        let now = Instant::now();
        match st.answer.clone().unwrap_or(Answer::Silent) {
            Answer::Accept { ring, delay, sdp } => {
                if ring {
                    self.ring(&mut tx);
                }
                tx.planned = Some((now + delay, Planned::Accept(sdp)));
            }
            Answer::Reject { code, delay } => {
                tx.planned = Some((now + delay, Planned::Reject(code)))
            }
            Answer::Silent => {}
            Answer::RingOnly => self.ring(&mut tx),
        }
        st.uas.push(tx);
        // A zero delay answers now, not on the next wake-up.
        self.tick_uas(st, now);
    }

    fn ring(&self, tx: &mut ServerInvite) {
        let resp = self.response(&tx.request, 180, &tx.to_tag, true, None);
        self.send(resp.as_bytes(), tx.dest);
        tx.last = Some(resp.into_bytes());
    }

    /// Send a final response to the INVITE, retransmitted until its ACK;
    /// a 2xx makes the dialog.
    fn send_final(&self, tx: &mut ServerInvite, code: u16, sdp: Option<&str>) -> Option<Dialog> {
        let ok = (200..300).contains(&code);
        let resp = self.response(&tx.request, code, &tx.to_tag, ok, sdp);
        self.send(resp.as_bytes(), tx.dest);
        tx.retx = Some(Retx::new(resp.as_bytes(), tx.dest, Some(T2)));
        tx.last = Some(resp.into_bytes());
        tx.final_code = Some(code);
        tx.planned = None;
        ok.then(|| uas_dialog(tx))
    }

    fn on_cancel(&self, st: &mut State, req: &Msg, dest: SocketAddr) {
        let branch = req.branch();
        let Some(i) = st.uas.iter().position(|t| t.branch == branch) else {
            return self.answer_nist(st, req, 481, &token(), dest);
        };
        let to_tag = st.uas[i].to_tag.clone();
        self.answer_nist(st, req, 200, &to_tag, dest);
        // §9.2: a pending INVITE ends with 487; an answered one is unchanged.
        if st.uas[i].final_code.is_none() {
            self.send_final(&mut st.uas[i], 487, None);
        }
    }

    fn in_dialog(&self, st: &mut State, req: &Msg, to_tag: &str, dest: SocketAddr) {
        let from_tag = req.tag_of_from().unwrap_or_default();
        let call_id = req.call_id().to_string();
        let method = req.method().unwrap_or("").to_string();
        let live = st.dialogs.iter().position(|d| {
            d.call_id == call_id
                && d.local_tag == to_tag
                && d.remote_tag == from_tag
                && !d.terminated
        });
        let code = match (live, method.as_str()) {
            (Some(i), "BYE") => {
                st.dialogs[i].terminated = true;
                // BYE implies the ACK we may still wait for.
                for tx in st.uas.iter_mut().filter(|t| t.call_id == call_id) {
                    tx.retx = None;
                }
                200
            }
            // A re-INVITE is not scripted.
            (Some(_), "INVITE") => 501,
            (Some(_), _) => 200,
            (None, "BYE") if self.early_bye(st, &call_id, to_tag, &from_tag) => 200,
            (None, _) => 481,
        };
        self.answer_nist(st, req, code, to_tag, dest);
    }

    /// A caller's BYE in an early dialog ends the INVITE with 487 (§15.1.2).
    fn early_bye(&self, st: &mut State, call_id: &str, to_tag: &str, from_tag: &str) -> bool {
        let tx = st.uas.iter_mut().find(|t| {
            t.call_id == call_id
                && t.to_tag == to_tag
                && t.remote_tag == from_tag
                && t.final_code.is_none()
        });
        match tx {
            Some(tx) => {
                self.send_final(tx, 487, None);
                true
            }
            None => false,
        }
    }

    // ------------------------------------------------------------ timers

    fn tick(&self, now: Instant) {
        let mut st = lock(&self.st);
        self.tick_uas(&mut st, now);
        for call in &mut st.calls {
            if let Some(retx) = &mut call.retx {
                match retx.fire(now) {
                    Fire::Wait => {}
                    Fire::Resend => self.send(&retx.bytes, retx.to),
                    Fire::Expired => {
                        call.retx = None;
                        call.timed_out = true;
                    }
                }
            }
        }
        for t in &mut st.nict {
            if let Some(retx) = &mut t.retx {
                match retx.fire(now) {
                    Fire::Wait => {}
                    Fire::Resend => self.send(&retx.bytes, retx.to),
                    Fire::Expired => {
                        t.retx = None;
                        t.timed_out = true;
                    }
                }
            }
        }
    }

    /// Scheduled finals due, and retransmissions of unacknowledged ones.
    fn tick_uas(&self, st: &mut State, now: Instant) {
        let State { uas, dialogs, .. } = st;
        for tx in uas.iter_mut() {
            let due = matches!(&tx.planned, Some((at, _)) if *at <= now);
            if due {
                let dialog = match tx.planned.take() {
                    Some((_, Planned::Accept(sdp))) => self.send_final(tx, 200, Some(&sdp)),
                    Some((_, Planned::Reject(code))) => self.send_final(tx, code, None),
                    None => None,
                };
                dialogs.extend(dialog);
            }
            if let Some(retx) = &mut tx.retx {
                match retx.fire(now) {
                    Fire::Wait => {}
                    Fire::Resend => self.send(&retx.bytes, retx.to),
                    // §13.3.1.4 would BYE here; the test sees the missing ACK.
                    Fire::Expired => tx.retx = None,
                }
            }
        }
    }

    // ------------------------------------------------------------ UAC

    fn invite(
        &self,
        request_uri: &str,
        proxy: SocketAddr,
        ctype: &str,
        sdp: &str,
        extra: &str,
    ) -> String {
        let call_id = format!("{}-{}@{}", self.name, token(), self.addr.ip());
        let (from_tag, branch) = (token(), new_branch());
        let via = format!("SIP/2.0/UDP {};rport;branch={branch}", self.addr);
        let from = format!("{};tag={from_tag}", self.contact());
        let to = format!("<{request_uri}>");
        let head = format!(
            "INVITE {request_uri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n\
             From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n\
             Contact: {};{ICSI_TAG}\r\nAccept-Contact: *;{ICSI_TAG}\r\n\
             P-Preferred-Service: {CPM_SESSION}\r\n{}",
            self.contact(),
            header_block(extra)
        );
        let raw = finish(head, Some(ctype), &crlf(sdp));
        let mut st = lock(&self.st);
        st.calls.push(Call {
            call_id: call_id.clone(),
            branch,
            via,
            from,
            from_tag,
            to,
            request_uri: request_uri.to_string(),
            proxy,
            // Timer A doubles without the T2 cap (§17.1.1.2).
            retx: Some(Retx::new(raw.as_bytes(), proxy, None)),
            provisional: false,
            final_code: None,
            timed_out: false,
            acks: Vec::new(),
            non2xx_ack: None,
        });
        self.send(raw.as_bytes(), proxy);
        call_id
    }

    fn on_response(&self, st: &mut State, resp: &Msg) {
        let (Some(code), Some((_, method))) = (resp.code(), resp.cseq()) else {
            return;
        };
        let branch = resp.branch();
        if method == "INVITE" {
            let State { calls, dialogs, .. } = st;
            if let Some(call) = calls.iter_mut().find(|c| c.branch == branch) {
                dialogs.extend(self.on_invite_response(call, resp, code));
            }
            return;
        }
        let t = st
            .nict
            .iter_mut()
            .find(|t| t.branch == branch && t.method == method);
        if let Some(t) = t.filter(|_| code >= 200) {
            t.final_code.get_or_insert(code);
            t.retx = None;
        }
    }

    fn on_invite_response(&self, call: &mut Call, resp: &Msg, code: u16) -> Option<Dialog> {
        call.retx = None;
        if code < 200 {
            call.provisional = true;
            return None;
        }
        if code < 300 {
            return self.ack_2xx(call, resp);
        }
        match &call.non2xx_ack {
            Some(ack) => self.send(ack, call.proxy),
            None => {
                call.final_code.get_or_insert(code);
                let ack = non2xx_ack(call, resp.header("to").unwrap_or(""));
                self.send(ack.as_bytes(), call.proxy);
                call.non2xx_ack = Some(ack.into_bytes());
            }
        }
        None
    }

    /// ACK a 2xx (§13.2.2.4), again for each retransmission of it; the
    /// first 2xx's dialog is returned.
    fn ack_2xx(&self, call: &mut Call, resp: &Msg) -> Option<Dialog> {
        let to = resp.header("to").unwrap_or("").to_string();
        let remote_tag = tag(&to).unwrap_or_default();
        if let Some((_, ack, dest)) = call.acks.iter().find(|a| a.0 == remote_tag) {
            self.send(ack, *dest);
            return None;
        }
        let first = call.acks.is_empty();
        call.final_code.get_or_insert(resp.code().unwrap_or(200));
        let dialog = Dialog {
            call_id: call.call_id.clone(),
            local_tag: call.from_tag.clone(),
            remote_tag: remote_tag.clone(),
            local: call.from.clone(),
            remote: to,
            target: resp
                .header("contact")
                .map_or_else(|| call.request_uri.clone(), uri_of),
            route: resp.values("record-route").into_iter().rev().collect(),
            cseq: 1,
            terminated: false,
        };
        let (ack, dest, _) = self.in_dialog_request(&dialog, "ACK", 1)?;
        self.send(ack.as_bytes(), dest);
        call.acks.push((remote_tag, ack.into_bytes(), dest));
        first.then_some(dialog)
    }

    /// A request inside `d`: Request-URI the remote target, the route set,
    /// a new branch; sent to the first Route (loose routing) or the target.
    fn in_dialog_request(
        &self,
        d: &Dialog,
        method: &str,
        cseq: u32,
    ) -> Option<(String, SocketAddr, String)> {
        let dest = match d.route.first() {
            Some(r) => addr_of(&uri_of(r))?,
            None => addr_of(&d.target)?,
        };
        let branch = new_branch();
        let mut head = format!(
            "{method} {} SIP/2.0\r\nVia: SIP/2.0/UDP {};rport;branch={branch}\r\nMax-Forwards: 70\r\n",
            d.target, self.addr
        );
        for r in &d.route {
            head += &format!("Route: {r}\r\n");
        }
        head += &format!(
            "From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\n",
            d.local, d.remote, d.call_id
        );
        Some((finish(head, None, ""), dest, branch))
    }

    fn send_cancel(&self, call_id: &str) -> bool {
        let mut st = lock(&self.st);
        let Some(call) = st.calls.iter().find(|c| c.call_id == call_id) else {
            return false;
        };
        if call.final_code.is_some() {
            return false;
        }
        let head = format!(
            "CANCEL {} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\n\
             Call-ID: {}\r\nCSeq: 1 CANCEL\r\n",
            call.request_uri, call.via, call.from, call.to, call.call_id
        );
        let raw = finish(head, None, "");
        let (branch, proxy) = (call.branch.clone(), call.proxy);
        st.nict.push(NonInvite {
            branch,
            method: "CANCEL".into(),
            retx: Some(Retx::new(raw.as_bytes(), proxy, Some(T2))),
            final_code: None,
            timed_out: false,
        });
        self.send(raw.as_bytes(), proxy);
        true
    }

    /// Send a BYE in the live dialog of `call_id`: its branch.
    fn send_bye(&self, call_id: &str) -> Option<String> {
        let mut st = lock(&self.st);
        let d = st
            .dialogs
            .iter_mut()
            .find(|d| d.call_id == call_id && !d.terminated)?;
        let (raw, dest, branch) = self.in_dialog_request(d, "BYE", d.cseq + 1)?;
        d.cseq += 1;
        d.terminated = true;
        st.nict.push(NonInvite {
            branch: branch.clone(),
            method: "BYE".into(),
            retx: Some(Retx::new(raw.as_bytes(), dest, Some(T2))),
            final_code: None,
            timed_out: false,
        });
        self.send(raw.as_bytes(), dest);
        Some(branch)
    }

    /// A non-BYE request inside the call's dialog with `extra` header lines
    /// (each ending CRLF), e.g. a SUBSCRIBE to the conference state.
    fn send_in_dialog(&self, call_id: &str, method: &str, extra: &str) -> Option<String> {
        let mut st = lock(&self.st);
        let d = st
            .dialogs
            .iter_mut()
            .find(|d| d.call_id == call_id && !d.terminated)?;
        let (raw, dest, branch) = self.in_dialog_request(d, method, d.cseq + 1)?;
        d.cseq += 1;
        let raw = raw.replacen("Content-Length:", &format!("{extra}Content-Length:"), 1);
        st.nict.push(NonInvite {
            branch: branch.clone(),
            method: method.into(),
            retx: Some(Retx::new(raw.as_bytes(), dest, Some(T2))),
            final_code: None,
            timed_out: false,
        });
        self.send(raw.as_bytes(), dest);
        Some(branch)
    }

    /// The final code of a non-INVITE client transaction, waiting for it.
    fn wait_nict(&self, branch: &str, timeout: Duration) -> Option<u16> {
        let code = || {
            let st = lock(&self.st);
            let t = st.nict.iter().find(|t| t.branch == branch)?;
            t.final_code.or(t.timed_out.then_some(0))
        };
        poll(timeout, || code().is_some());
        code().filter(|c| *c != 0)
    }
}

/// An ACK, 2xx or non-2xx, ends the INVITE server transaction's
/// retransmissions: matched by Call-ID and CSeq number (a 2xx's ACK has a
/// branch of its own).
fn on_ack(st: &mut State, ack: &Msg) {
    let cseq = ack.cseq().map_or(0, |c| c.0);
    for tx in st
        .uas
        .iter_mut()
        .filter(|t| t.call_id == ack.call_id() && t.cseq == cseq && t.final_code.is_some())
    {
        tx.retx = None;
    }
}

/// The callee's side of a dialog its 2xx made (§12.1.1).
fn uas_dialog(tx: &ServerInvite) -> Dialog {
    let req = &tx.request;
    let to = req.header("to").unwrap_or("");
    Dialog {
        call_id: tx.call_id.clone(),
        local_tag: tx.to_tag.clone(),
        remote_tag: tx.remote_tag.clone(),
        local: format!("{to};tag={}", tx.to_tag),
        remote: req.header("from").unwrap_or("").to_string(),
        target: req.header("contact").map_or_else(String::new, uri_of),
        route: req.values("record-route"),
        cseq: 0,
        terminated: false,
    }
}

/// The ACK of a non-2xx final, in the INVITE's transaction (§17.1.1.3):
/// its Request-URI, top Via (same branch), From, Call-ID, CSeq number; the
/// response's To.
fn non2xx_ack(call: &Call, to: &str) -> String {
    let head = format!(
        "ACK {} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {to}\r\n\
         Call-ID: {}\r\nCSeq: 1 ACK\r\n",
        call.request_uri, call.via, call.from, call.call_id
    );
    finish(head, None, "")
}
