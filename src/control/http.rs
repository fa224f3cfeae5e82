//! A small blocking HTTP/1.1 server for the edge's admin API.
//!
//! This module owns the HTTP framing, the limits and the authentication of the
//! admin API (live group/shard updates, config read, `/metrics`, `/health`,
//! `/ready`); what each endpoint does is the [`Handler`] closure's business.
//! It is built on `std::net::TcpListener` with one thread per connection and
//! no async runtime: the admin API sees a handful of requests a second, and a
//! blocking server is easy to bound.
//!
//! Invariants:
//! - bounded: at most [`HttpConfig::max_connections`] connection threads at
//!   once, at most [`HttpConfig::max_connections_per_peer`] per source IP;
//!   a connection beyond either waits, without a thread, in one of
//!   [`HttpConfig::probe_slots`] (oldest closed when full) where only
//!   `GET /health` and `GET /ready` are answered (else 503), so idle or
//!   slow connections cannot make health probes fail; a request's line
//!   and headers are at most `max_header_bytes` (else 431), its body at most
//!   `max_body` (else 413), both checked before the bytes are buffered;
//! - timely: an idle keep-alive connection is closed after `io_timeout`; a
//!   new connection's first request head must arrive within `header_timeout`
//!   of the accept, a later one's within `header_timeout` of its first byte
//!   (a client that trickles bytes is answered 408 and cut off);
//!   a body gets `io_timeout` plus `io_timeout` per MiB received so far, a
//!   response `io_timeout` plus `io_timeout` per MiB, so a big upload on a
//!   healthy link passes and a trickle cannot hold a thread for long;
//! - authenticated: with a token configured, no request except `GET /health`
//!   and `GET /ready` reaches the handler without `Authorization: Bearer
//!   <token>` (compared in constant time; the token may be rotated through
//!   [`HttpConfig::live_token`]); two `Authorization` fields are a 400;
//!   [`serve`] refuses to run without a token on a non-loopback address;
//! - quiet under attack: warnings about refused connections and bad requests
//!   are throttled to one line per reason per second (with a count);
//! - total: no input makes the server panic; a panic inside the handler is
//!   caught and answered 500 (this needs `panic = "unwind"`: under the
//!   release profile's `panic = "abort"` a handler panic aborts the process,
//!   as it would anywhere else);
//! - no request smuggling: `Content-Length` together with
//!   `Transfer-Encoding`, or two different `Content-Length`s, is a 400; a
//!   transfer coding other than `chunked` is a 501; after any framing error
//!   the connection is closed;
//! - [`serve`]'s accept thread returns within ~100 ms of `stop`; connection
//!   threads finish the request in hand, answer it with `Connection: close`
//!   and exit (an idle one notices `stop` within ~100 ms).
//!
//! Request bodies may come with `Content-Length` or `Transfer-Encoding:
//! chunked` (chunk extensions and trailers are read and dropped);
//! `Expect: 100-continue` is answered once the headers passed the checks.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

/// How long the accept thread waits in `poll` before looking at `stop`.
const ACCEPT_POLL_MS: i32 = 50;
/// How often a connection waiting for a request looks at `stop`.
const STOP_CHECK: Duration = Duration::from_millis(100);
/// Read size while collecting a request's line and headers.
const HEAD_CHUNK: usize = 4 * 1024;
/// Read size while collecting a body.
const BODY_CHUNK: usize = 64 * 1024;
/// Longest chunk-size line (size, extensions) of a chunked body.
const MAX_CHUNK_LINE: usize = 1024;
/// After the last response of a connection, how long at most (and how many
/// bytes at most) to drain what the client still sends, so that closing
/// does not reset the connection before the client has read the response.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;
/// Responses with a body up to this size go out in a single write.
const SINGLE_WRITE: usize = 32 * 1024;
/// No deadline is further away than this (keeps `Instant` arithmetic finite).
const FAR: Duration = Duration::from_secs(24 * 3600);
const MIB: f64 = (1u64 << 20) as f64;

/// One request, as the handler sees it.
#[derive(Clone)]
pub struct Request {
    pub method: String,
    /// Percent-decoded path, without the query (`*` for `OPTIONS *`).
    pub path: String,
    /// The request target exactly as received (path and query, not decoded);
    /// use it where an encoded `/` (`%2F`) must not split a segment.
    pub raw_path: String,
    /// Query parameters in order, decoded (`+` is a space); a parameter
    /// without `=` has an empty value.
    pub query: Vec<(String, String)>,
    /// Header fields in order, names lowercased, values trimmed.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: SocketAddr,
}

impl Request {
    /// The first header field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path's segments (leading and trailing `/` ignored), each
    /// percent-decoded on its own: an encoded `/` (`%2F`) stays inside its
    /// segment, so `/groups/sip:a%2Fb@x` is `["groups", "sip:a/b@x"]`.
    /// `None` when the target is malformed.
    pub fn path_segments(&self) -> Option<Vec<String>> {
        if self.raw_path == "*" {
            return Some(vec!["*".to_string()]);
        }
        let (raw, _) = target_parts(&self.raw_path).ok()?;
        raw.trim_matches('/')
            .split('/')
            .map(|seg| percent_decode(seg, false))
            .collect()
    }

    /// The first query parameter named `name` (exact match).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `Debug` without the credentials: the `authorization` value is redacted and
/// the body is shown by its length, so logging a request leaks no token.
impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| {
                let v = if k == "authorization" {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("raw_path", &self.raw_path)
            .field("query", &self.query)
            .field("headers", &headers)
            .field("body_len", &self.body.len())
            .field("peer", &self.peer)
            .finish()
    }
}

/// One response. The server adds `Content-Type`, `Content-Length` and
/// `Connection`; `headers` are extra fields (a `Connection: close` there
/// closes the connection after the response; `Content-Length`,
/// `Content-Type`, `Transfer-Encoding` and `Connection` are otherwise
/// ignored, as is any field with an invalid name or a control character).
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Response {
    /// `v` serialized as `application/json`, with a trailing newline.
    pub fn json(status: u16, v: &serde_json::Value) -> Response {
        let mut body = v.to_string().into_bytes();
        body.push(b'\n');
        Response {
            status,
            content_type: "application/json",
            body,
            headers: Vec::new(),
        }
    }

    /// `s` as `text/plain; charset=utf-8`.
    pub fn text(status: u16, s: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: s.into().into_bytes(),
            headers: Vec::new(),
        }
    }

    /// `{"error": message}` as JSON.
    pub fn error(status: u16, message: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": message }))
    }

    fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// Limits and credentials of the admin HTTP server.
#[derive(Clone)]
pub struct HttpConfig {
    /// Bearer token required on every request but `GET /health` and
    /// `GET /ready`; `None` only on a loopback address.
    pub token: Option<String>,
    /// Largest request body, bytes (413 beyond).
    pub max_body: usize,
    /// Largest request line plus headers, bytes (431 beyond).
    pub max_header_bytes: usize,
    /// Most connections served at once (beyond: the probe slots).
    pub max_connections: usize,
    /// Most connection threads one source IP may hold, so that one peer
    /// cannot take the whole pool (beyond: the probe slots).
    pub max_connections_per_peer: usize,
    /// Connections that find no thread (pool full, or their peer at its
    /// cap) wait here, without a thread, polled by the accept thread, for
    /// one request: `GET /health` and `GET /ready` are answered, anything
    /// else gets 503; when all are taken the longest-waiting one is closed,
    /// so a flood of idle connections cannot keep a health probe out.
    pub probe_slots: usize,
    /// A request's line and headers must arrive within this once its first
    /// byte is in, and a new connection's first request within this of the
    /// accept (slowloris; capped by `io_timeout`).
    pub header_timeout: Duration,
    /// Idle, header and base body/response timeout.
    pub io_timeout: Duration,
    /// When set, the token is read from here at every request (the control
    /// plane rotates it on reload) and `token` is ignored.
    pub live_token: Option<TokenCell>,
    /// Counters for `/metrics`.
    pub stats: Arc<HttpStats>,
}

/// A bearer token that can be replaced while the server runs.
pub type TokenCell = Arc<ArcSwapOption<String>>;

/// The server's counters (all monotonic except `active`).
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Connection threads alive now.
    pub active: AtomicU64,
    /// Connections given a thread.
    pub accepted: AtomicU64,
    /// Connections that found the pool full / their peer at its cap.
    pub over_pool: AtomicU64,
    pub over_peer_cap: AtomicU64,
    /// Probe-slot outcomes: health/ready answered, other requests answered
    /// 503, closed without an answer (no request in time, slots full).
    pub probes_answered: AtomicU64,
    pub probes_refused: AtomicU64,
    pub probes_dropped: AtomicU64,
    /// Connections closed because their request head was too slow (408).
    pub header_timeouts: AtomicU64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            token: None,
            max_body: 16 << 20, // bulk group uploads
            max_header_bytes: 16 << 10,
            max_connections: 64,
            max_connections_per_peer: 8,
            probe_slots: 64,
            header_timeout: Duration::from_secs(2),
            io_timeout: Duration::from_secs(5),
            live_token: None,
            stats: Arc::new(HttpStats::default()),
        }
    }
}

/// `Debug` with the token redacted.
impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConfig")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("max_body", &self.max_body)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_peer", &self.max_connections_per_peer)
            .field("probe_slots", &self.probe_slots)
            .field("header_timeout", &self.header_timeout)
            .field("io_timeout", &self.io_timeout)
            .finish_non_exhaustive()
    }
}

/// The endpoint logic: called once per well-formed, authorized request.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// True when `addr` is loopback (127/8, ::1, and ::ffff:127.0.0.0/104): the
/// admin API may run without a token only there.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    match addr {
        SocketAddr::V4(a) => a.ip().is_loopback(),
        SocketAddr::V6(a) => {
            a.ip().is_loopback() || a.ip().to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Serve `listener` until `stop` is set; returns the accept thread's handle.
///
/// The accept thread waits in `poll` (50 ms at a time) on the non-blocking
/// listener, so it returns within ~100 ms of `stop` and then closes the
/// listener. Each connection gets its own thread, at most `max_connections`
/// at once and `max_connections_per_peer` per source IP; beyond that it
/// goes to the probe slots (the accept thread polls them too): `/health`
/// and `/ready` answered, anything else 503 (`Retry-After: 1`), then closed.
///
/// Fails (`InvalidInput`) without starting when a connection limit, the
/// probe slots, `io_timeout` or `header_timeout` is zero, when the token is
/// empty, or when there is no token and the listener is not on a loopback
/// address.
pub fn serve(
    listener: TcpListener,
    cfg: HttpConfig,
    handler: Handler,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    let invalid = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
    if cfg.max_connections == 0 || cfg.max_connections_per_peer == 0 || cfg.probe_slots == 0 {
        return invalid(
            "admin http: max_connections, max_connections_per_peer and probe_slots must be at least 1"
                .into(),
        );
    }
    if cfg.io_timeout.is_zero() || cfg.header_timeout.is_zero() {
        return invalid("admin http: io_timeout and header_timeout must not be zero".into());
    }
    let local = listener.local_addr()?;
    let token: TokenCell = cfg
        .live_token
        .clone()
        .unwrap_or_else(|| Arc::new(ArcSwapOption::from(cfg.token.clone().map(Arc::new))));
    match token.load().as_deref() {
        Some(t) if t.is_empty() => {
            return invalid("admin http: the token must not be empty".into());
        }
        None if !is_loopback(&local) => {
            return invalid(format!(
                "admin http: refusing to serve on non-loopback {local} without a token"
            ));
        }
        _ => {}
    }
    listener.set_nonblocking(true)?;
    info!(
        addr = %local,
        auth = token.load().is_some(),
        max_connections = cfg.max_connections,
        "admin http listening"
    );
    let shared = Arc::new(Shared {
        cfg,
        token,
        handler,
        stop,
        active: AtomicUsize::new(0),
        peers: Mutex::new(HashMap::new()),
        logs: LogThrottle::default(),
    });
    thread::Builder::new()
        .name("http-accept".into())
        .spawn(move || accept_loop(listener, shared))
}

struct Shared {
    cfg: HttpConfig,
    token: TokenCell,
    handler: Handler,
    stop: Arc<AtomicBool>,
    /// Connection threads alive.
    active: AtomicUsize,
    /// Connection threads alive per source IP (no entry at zero).
    peers: Mutex<HashMap<IpAddr, usize>>,
    logs: LogThrottle,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One connection thread's place in the pool and in its peer's count,
/// released on drop (also when the thread unwinds).
struct Slot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.active.fetch_sub(1, Ordering::AcqRel);
        self.shared.cfg.stats.active.fetch_sub(1, Ordering::Relaxed);
        let mut peers = self.shared.peers();
        if let Some(n) = peers.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                peers.remove(&self.ip);
            }
        }
    }
}

/// At most one log line per reason per second; the next line says how many
/// were suppressed in between. A flood of refused connections or bad
/// requests must not turn into a flood of log lines.
#[derive(Default)]
struct LogThrottle {
    last: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl LogThrottle {
    /// Call `emit(suppressed)` unless `reason` was logged less than a second ago.
    fn log(&self, reason: &'static str, emit: impl FnOnce(u64)) {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.get_mut(reason) {
            Some((t, n)) if now.duration_since(*t) < Duration::from_secs(1) => *n += 1,
            Some((t, n)) => {
                let suppressed = std::mem::take(n);
                *t = now;
                drop(last);
                emit(suppressed);
            }
            None => {
                last.insert(reason, (now, 0));
                drop(last);
                emit(0);
            }
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut probes = Probes::default();
    while !shared.stopping() {
        let mut fds = Vec::with_capacity(1 + probes.waiting.len());
        fds.push(libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        fds.extend(probes.waiting.iter().map(|p| libc::pollfd {
            fd: p.stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds borrowed
        // exclusively for the call; every fd stays open as the listener and
        // the waiting streams outlive the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ACCEPT_POLL_MS) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                warn!(error = %e, "admin http: poll failed");
                thread::sleep(Duration::from_millis(ACCEPT_POLL_MS as u64));
            }
            continue;
        }
        let ready: Vec<bool> = fds[1..].iter().map(|p| p.revents != 0).collect();
        probes.serve(&ready, &shared);
        if fds[0].revents != 0 {
            accept_all(&listener, &shared, &mut probes);
        }
    }
    info!("admin http stopped");
}

/// Take the whole backlog.
fn accept_all(listener: &TcpListener, shared: &Arc<Shared>, probes: &mut Probes) {
    while !shared.stopping() {
        match listener.accept() {
            Ok((stream, peer)) => dispatch(stream, peer, shared, probes),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) => {}
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS...: back off instead of spinning.
                shared.logs.log("accept failed", |n| {
                    warn!(error = %e, suppressed = n, "admin http: accept failed");
                });
                thread::sleep(Duration::from_millis(ACCEPT_POLL_MS as u64));
                break;
            }
        }
    }
}

fn dispatch(stream: TcpStream, peer: SocketAddr, shared: &Arc<Shared>, probes: &mut Probes) {
    let ip = peer.ip().to_canonical();
    let stats = &shared.cfg.stats;
    // Only this thread increments, so check-then-act is exact.
    if shared.active.load(Ordering::Acquire) >= shared.cfg.max_connections {
        stats.over_pool.fetch_add(1, Ordering::Relaxed);
        let limit = shared.cfg.max_connections;
        shared.logs.log("pool full", |n| {
            warn!(%peer, limit, suppressed = n, "admin http: too many connections; only /health and /ready are answered");
        });
        probes.push(stream, peer, shared);
        return;
    }
    {
        let mut peers = shared.peers();
        let n = peers.entry(ip).or_insert(0);
        if *n >= shared.cfg.max_connections_per_peer {
            drop(peers);
            stats.over_peer_cap.fetch_add(1, Ordering::Relaxed);
            let limit = shared.cfg.max_connections_per_peer;
            shared.logs.log("peer cap", |n| {
                warn!(%peer, limit, suppressed = n, "admin http: too many connections from this peer; only /health and /ready are answered");
            });
            probes.push(stream, peer, shared);
            return;
        }
        *n += 1;
    }
    shared.active.fetch_add(1, Ordering::AcqRel);
    stats.active.fetch_add(1, Ordering::Relaxed);
    stats.accepted.fetch_add(1, Ordering::Relaxed);
    let slot = Slot {
        shared: Arc::clone(shared),
        ip,
    };
    let spawned = thread::Builder::new()
        .name("http-conn".into())
        .spawn(move || {
            let slot = slot;
            // Linux does not pass O_NONBLOCK on to accepted sockets; be explicit.
            if let Err(e) = stream.set_nonblocking(false) {
                debug!(%peer, error = %e, "admin http: cannot configure connection");
                return;
            }
            handle_connection(stream, peer, &slot.shared);
        });
    if let Err(e) = spawned {
        // The closure, and with it the slot and the stream, are dropped.
        shared.logs.log("spawn failed", |n| {
            warn!(%peer, error = %e, suppressed = n, "admin http: cannot spawn a connection thread");
        });
    }
}

/// Longest request head a probe slot reads: health probes are small.
const PROBE_HEAD_MAX: usize = 4 * 1024;

/// A connection waiting, without a thread, for its one request.
struct Probe {
    stream: TcpStream,
    peer: SocketAddr,
    buf: Vec<u8>,
    deadline: Instant,
}

/// The probe slots (see [`HttpConfig::probe_slots`]), oldest first.
#[derive(Default)]
struct Probes {
    waiting: std::collections::VecDeque<Probe>,
}

impl Probes {
    fn push(&mut self, stream: TcpStream, peer: SocketAddr, shared: &Shared) {
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        if self.waiting.len() >= shared.cfg.probe_slots {
            // The longest-waiting one had the most time to send its request.
            self.waiting.pop_front();
            shared
                .cfg
                .stats
                .probes_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        let timeout = shared.cfg.header_timeout.min(shared.cfg.io_timeout);
        self.waiting.push_back(Probe {
            stream,
            peer,
            buf: Vec::new(),
            deadline: far_add(Instant::now(), timeout),
        });
    }

    /// Read the probes `ready` marks (in `waiting` order), answer those with
    /// a whole request head, close those past their deadline.
    fn serve(&mut self, ready: &[bool], shared: &Shared) {
        let now = Instant::now();
        let mut keep = std::collections::VecDeque::with_capacity(self.waiting.len());
        let mut i = 0;
        while let Some(mut p) = self.waiting.pop_front() {
            let is_ready = ready.get(i).copied().unwrap_or(false);
            i += 1;
            if is_ready && p.read_and_answer(shared) {
                continue;
            }
            if now >= p.deadline {
                shared
                    .cfg
                    .stats
                    .probes_dropped
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            keep.push_back(p);
        }
        self.waiting = keep;
    }
}

impl Probe {
    /// Read what is there; true when the connection is finished with.
    fn read_and_answer(&mut self, shared: &Shared) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    shared
                        .cfg
                        .stats
                        .probes_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return true,
            }
            if self.buf.len() > PROBE_HEAD_MAX {
                break;
            }
        }
        let start = self
            .buf
            .iter()
            .position(|&b| b != b'\r' && b != b'\n')
            .unwrap_or(self.buf.len());
        match find_head_end(&self.buf[start..], 0) {
            Some(end) => {
                let head = parse_head(&self.buf[start..start + end]).ok();
                self.answer(head, shared);
                true
            }
            None if self.buf.len() > PROBE_HEAD_MAX => {
                self.answer(None, shared);
                true
            }
            None => false,
        }
    }

    /// `GET /health` or `GET /ready` without a body reaches the handler;
    /// anything else is 503. One non-blocking write (a fresh socket's send
    /// buffer holds a small answer), then close.
    fn answer(&mut self, head: Option<Head>, shared: &Shared) {
        let stats = &shared.cfg.stats;
        let probe = head.and_then(|h| {
            let (path, query) = split_target(&h.target).ok()?;
            let bodiless = matches!(body_kind(&h.headers, 0), Ok(BodyKind::None));
            let single_auth = h
                .headers
                .iter()
                .filter(|(k, _)| k == "authorization")
                .count()
                <= 1;
            (h.method == "GET"
                && bodiless
                && single_auth
                && (path == "/health" || path == "/ready"))
                .then(|| Request {
                    method: h.method,
                    path,
                    raw_path: h.target,
                    query,
                    headers: h.headers,
                    body: Vec::new(),
                    peer: self.peer,
                })
        });
        let resp = match probe {
            Some(req) => {
                stats.probes_answered.fetch_add(1, Ordering::Relaxed);
                let r = catch_unwind(AssertUnwindSafe(|| (shared.handler)(&req)))
                    .unwrap_or_else(|_| Response::error(500, "internal error"));
                sanitize(r).0
            }
            None => {
                stats.probes_refused.fetch_add(1, Ordering::Relaxed);
                Response::error(503, "too many connections").with_header("Retry-After", "1")
            }
        };
        let _ = self.stream.write(&response_bytes(&resp, false, false));
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

/// What to do with a connection after one exchange.
enum Next {
    /// Read the next request.
    KeepAlive,
    /// The last response is out: drain briefly, then close.
    Close,
    /// Close now (the peer is gone or misbehaved beyond answering).
    Drop,
}

fn handle_connection(stream: TcpStream, peer: SocketAddr, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
        peer,
        accepted: Some(Instant::now()),
    };
    loop {
        if shared.stopping() {
            return;
        }
        match serve_one(&mut conn, shared) {
            Next::KeepAlive => {}
            Next::Close => {
                linger_close(&mut conn.stream, shared.cfg.io_timeout.min(LINGER_TIME));
                return;
            }
            Next::Drop => return,
        }
    }
}

/// Read one request, answer it.
fn serve_one(conn: &mut Conn, shared: &Shared) -> Next {
    let cfg = &shared.cfg;
    let peer = conn.peer;
    let end = match conn.read_head(cfg, &shared.stop) {
        Ok(end) => end,
        Err(HeadErr::Quiet) => return Next::Drop,
        Err(HeadErr::Io(e)) => {
            debug!(%peer, error = %e, "admin http: read failed");
            return Next::Drop;
        }
        Err(HeadErr::Timeout) => {
            cfg.stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
            return conn.fail(shared, 408, "request header timeout");
        }
        Err(HeadErr::Reject(status, msg)) => return conn.fail(shared, status, msg),
    };
    let parsed = parse_head(&conn.buf[..end]);
    conn.buf.drain(..end);
    let head = match parsed {
        Ok(h) => h,
        Err((status, msg)) => return conn.fail(shared, status, msg),
    };
    let (path, query) = match split_target(&head.target) {
        Ok(pq) => pq,
        Err(msg) => return conn.fail(shared, 400, msg),
    };
    let kind = match body_kind(&head.headers, cfg.max_body) {
        Ok(k) => k,
        Err((status, msg)) => return conn.fail(shared, status, msg),
    };
    let keep_alive = wants_keep_alive(&head);
    if head
        .headers
        .iter()
        .filter(|(k, _)| k == "authorization")
        .count()
        > 1
    {
        // Which one would decide is exactly what a proxy in front and this
        // server could disagree on.
        return conn.fail(shared, 400, "duplicate Authorization header");
    }

    let token = shared.token.load();
    if !authorized(
        token.as_deref().map(String::as_str),
        &head.method,
        &path,
        &head.headers,
    ) {
        shared.logs.log("unauthorized", |n| {
            warn!(method = ?head.method, path = ?path, %peer, suppressed = n, "admin http: 401 unauthorized");
        });
        // The body was not read: only a bodiless request leaves the
        // connection in a state where the next request can follow.
        let keep = keep_alive && matches!(kind, BodyKind::None) && !shared.stopping();
        let resp = Response::error(401, "missing or invalid bearer token")
            .with_header("WWW-Authenticate", "Bearer");
        return conn.respond(cfg, &resp, keep, head.method == "HEAD");
    }

    if !matches!(kind, BodyKind::None)
        && head.minor == 1
        && header(&head.headers, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        let deadline = Clock::new(cfg.io_timeout).deadline(0);
        if let Err(e) = write_all(
            &mut conn.stream,
            &[b"HTTP/1.1 100 Continue\r\n\r\n"],
            deadline,
        ) {
            debug!(%peer, error = %e, "admin http: write failed");
            return Next::Drop;
        }
    }

    let body = match conn.read_body(kind, cfg) {
        Ok(b) => b,
        Err(BodyErr::Timeout) => return conn.fail(shared, 408, "request body timeout"),
        Err(BodyErr::Reject(status, msg)) => return conn.fail(shared, status, msg),
        Err(BodyErr::Eof) => {
            debug!(%peer, "admin http: connection closed inside a body");
            return Next::Drop;
        }
        Err(BodyErr::Io(e)) => {
            debug!(%peer, error = %e, "admin http: read failed");
            return Next::Drop;
        }
    };

    let req = Request {
        method: head.method,
        path,
        raw_path: head.target,
        query,
        headers: head.headers,
        body,
        peer,
    };
    let resp = match catch_unwind(AssertUnwindSafe(|| (shared.handler)(&req))) {
        Ok(r) => r,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("non-string panic payload");
            warn!(method = ?req.method, path = ?req.path, %peer, panic = what,
                "admin http: handler panicked, answering 500");
            Response::error(500, "internal error")
        }
    };
    let (resp, close_asked) = sanitize(resp);
    let keep = keep_alive && !close_asked && !shared.stopping();
    debug!(
        method = ?req.method,
        path = ?req.path,
        status = resp.status,
        %peer,
        "admin http request"
    );
    conn.respond(cfg, &resp, keep, req.method == "HEAD")
}

struct Conn {
    stream: TcpStream,
    /// Bytes received and not yet consumed (pipelined requests stay here).
    buf: Vec<u8>,
    peer: SocketAddr,
    /// Set until the first request's head is in: the whole of it, idle wait
    /// included, must arrive within `header_timeout` of the accept.
    accepted: Option<Instant>,
}

enum ReadErr {
    Eof,
    TimedOut,
    Stopped,
    Io(io::Error),
}

enum HeadErr {
    /// Closed, idle timeout or stop before the request's first byte, or
    /// closed in the middle of the headers: close without an answer.
    Quiet,
    /// The headers did not arrive in time: 408.
    Timeout,
    Io(io::Error),
    Reject(u16, &'static str),
}

enum BodyErr {
    Eof,
    Timeout,
    Io(io::Error),
    Reject(u16, &'static str),
}

impl From<ReadErr> for BodyErr {
    fn from(e: ReadErr) -> Self {
        match e {
            ReadErr::Eof | ReadErr::Stopped => BodyErr::Eof,
            ReadErr::TimedOut => BodyErr::Timeout,
            ReadErr::Io(e) => BodyErr::Io(e),
        }
    }
}

impl Conn {
    /// Append at most `max` bytes to `buf`: at least one, or an error. While
    /// `stop` is given, give up (`Stopped`) as soon as it is set.
    fn fill(
        &mut self,
        max: usize,
        deadline: Instant,
        stop: Option<&AtomicBool>,
    ) -> Result<usize, ReadErr> {
        let start = self.buf.len();
        self.buf.resize(start + max.max(1), 0);
        let r = loop {
            let now = Instant::now();
            if now >= deadline {
                break Err(ReadErr::TimedOut);
            }
            let wait = (deadline - now).min(STOP_CHECK);
            if let Err(e) = self.stream.set_read_timeout(Some(wait)) {
                break Err(ReadErr::Io(e));
            }
            match self.stream.read(&mut self.buf[start..]) {
                Ok(0) => break Err(ReadErr::Eof),
                Ok(n) => break Ok(n),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if stop.is_some_and(|s| s.load(Ordering::Acquire)) {
                        break Err(ReadErr::Stopped);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(ReadErr::Io(e)),
            }
        };
        let n = *r.as_ref().unwrap_or(&0);
        self.buf.truncate(start + n);
        r
    }

    /// Wait for a request and read up to the end of its headers; returns the
    /// length of the head (request line, headers, empty line) in `buf`.
    fn read_head(&mut self, cfg: &HttpConfig, stop: &AtomicBool) -> Result<usize, HeadErr> {
        // Idle: wait for the first byte (empty lines before a request line
        // are ignored, RFC 9112 section 2.2).
        let head_timeout = cfg.header_timeout.min(cfg.io_timeout);
        let first = self.accepted.take().map(|t| far_add(t, head_timeout));
        let idle_deadline = first.unwrap_or_else(|| Clock::new(cfg.io_timeout).deadline(0));
        loop {
            let blank = self
                .buf
                .iter()
                .position(|&b| b != b'\r' && b != b'\n')
                .unwrap_or(self.buf.len());
            self.buf.drain(..blank);
            if !self.buf.is_empty() {
                break;
            }
            match self.fill(HEAD_CHUNK, idle_deadline, Some(stop)) {
                Ok(_) => {}
                Err(ReadErr::Io(e)) => return Err(HeadErr::Io(e)),
                Err(_) => return Err(HeadErr::Quiet),
            }
        }
        let deadline = first.unwrap_or_else(|| Clock::new(head_timeout).deadline(0));
        let mut scanned = 0;
        loop {
            if let Some(end) = find_head_end(&self.buf, scanned) {
                if end > cfg.max_header_bytes {
                    return Err(HeadErr::Reject(431, "request header fields too large"));
                }
                return Ok(end);
            }
            if self.buf.len() > cfg.max_header_bytes {
                return Err(HeadErr::Reject(431, "request header fields too large"));
            }
            scanned = self.buf.len().saturating_sub(2);
            let room = (cfg.max_header_bytes + 4).saturating_sub(self.buf.len());
            match self.fill(room.clamp(1, HEAD_CHUNK), deadline, None) {
                Ok(_) => {}
                Err(ReadErr::TimedOut) => return Err(HeadErr::Timeout),
                Err(ReadErr::Io(e)) => return Err(HeadErr::Io(e)),
                Err(ReadErr::Eof | ReadErr::Stopped) => return Err(HeadErr::Quiet),
            }
        }
    }

    fn read_body(&mut self, kind: BodyKind, cfg: &HttpConfig) -> Result<Vec<u8>, BodyErr> {
        let clock = Clock::new(cfg.io_timeout);
        match kind {
            BodyKind::None => Ok(Vec::new()),
            BodyKind::Length(n) => {
                let mut body = Vec::with_capacity(n.min(BODY_CHUNK));
                self.read_exact_into(&mut body, n, &clock)?;
                Ok(body)
            }
            BodyKind::Chunked => self.read_chunked(cfg, &clock),
        }
    }

    /// Move exactly `n` more bytes into `out`.
    fn read_exact_into(
        &mut self,
        out: &mut Vec<u8>,
        n: usize,
        clock: &Clock,
    ) -> Result<(), BodyErr> {
        let target = out.len() + n;
        loop {
            let take = (target - out.len()).min(self.buf.len());
            out.extend(self.buf.drain(..take));
            if out.len() == target {
                return Ok(());
            }
            let want = (target - out.len()).min(BODY_CHUNK);
            self.fill(want, clock.deadline(out.len()), None)?;
        }
    }

    /// One line (without its CRLF or LF) of at most `max` bytes.
    fn read_line(
        &mut self,
        max: usize,
        deadline: Instant,
        too_long: (u16, &'static str),
    ) -> Result<Vec<u8>, BodyErr> {
        let mut scanned = 0;
        loop {
            if let Some(i) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                let i = scanned + i;
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.len() > max {
                    return Err(BodyErr::Reject(too_long.0, too_long.1));
                }
                return Ok(line);
            }
            if self.buf.len() > max + 1 {
                return Err(BodyErr::Reject(too_long.0, too_long.1));
            }
            scanned = self.buf.len();
            self.fill(HEAD_CHUNK, deadline, None)?;
        }
    }

    fn read_chunked(&mut self, cfg: &HttpConfig, clock: &Clock) -> Result<Vec<u8>, BodyErr> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line(
                MAX_CHUNK_LINE,
                clock.deadline(body.len()),
                (400, "chunk size line too long"),
            )?;
            let size = parse_chunk_size(&line).ok_or(BodyErr::Reject(400, "invalid chunk size"))?;
            if size == 0 {
                break;
            }
            if size > (cfg.max_body - body.len()) as u64 {
                return Err(BodyErr::Reject(413, "request body too large"));
            }
            self.read_exact_into(&mut body, size as usize, clock)?;
            // Data must be followed by an empty line (read_line with max 0).
            self.read_line(0, clock.deadline(body.len()), (400, "invalid chunk end"))?;
        }
        // Trailer fields: read and dropped, within the header budget.
        let mut budget = cfg.max_header_bytes;
        loop {
            let line = self.read_line(
                budget,
                clock.deadline(body.len()),
                (431, "request trailer fields too large"),
            )?;
            if line.is_empty() {
                return Ok(body);
            }
            budget = budget.saturating_sub(line.len() + 2);
        }
    }

    /// Write `resp`; what happens to the connection next.
    fn respond(&mut self, cfg: &HttpConfig, resp: &Response, keep: bool, head_only: bool) -> Next {
        let deadline = Clock::new(cfg.io_timeout).deadline(resp.body.len());
        match write_response(&mut self.stream, resp, keep, head_only, deadline) {
            Ok(()) if keep => Next::KeepAlive,
            Ok(()) => Next::Close,
            Err(e) => {
                debug!(peer = %self.peer, error = %e, "admin http: write failed");
                Next::Drop
            }
        }
    }

    /// Answer a framing error and close.
    fn fail(&mut self, shared: &Shared, status: u16, msg: &'static str) -> Next {
        let cfg = &shared.cfg;
        shared.logs.log("bad request", |n| {
            warn!(peer = %self.peer, status, error = msg, suppressed = n, "admin http: bad request");
        });
        let resp = Response::error(status, msg);
        self.respond(cfg, &resp, false, false)
    }
}

/// Deadlines that grow with the data moved: `timeout` plus `timeout` per MiB.
struct Clock {
    start: Instant,
    timeout: Duration,
}

impl Clock {
    fn new(timeout: Duration) -> Clock {
        Clock {
            start: Instant::now(),
            timeout,
        }
    }

    fn deadline(&self, bytes: usize) -> Instant {
        let extra = Duration::try_from_secs_f64(self.timeout.as_secs_f64() * (bytes as f64 / MIB))
            .unwrap_or(FAR);
        far_add(self.start, self.timeout.saturating_add(extra))
    }
}

fn far_add(t: Instant, d: Duration) -> Instant {
    t.checked_add(d.min(FAR)).unwrap_or(t)
}

/// Write all of `parts`, giving up at `deadline`.
fn write_all(stream: &mut TcpStream, parts: &[&[u8]], deadline: Instant) -> io::Result<()> {
    for part in parts {
        let mut off = 0;
        while off < part.len() {
            let now = Instant::now();
            if now >= deadline {
                return Err(io::ErrorKind::TimedOut.into());
            }
            stream.set_write_timeout(Some(deadline - now))?;
            match stream.write(&part[off..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => off += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

fn write_response(
    stream: &mut TcpStream,
    resp: &Response,
    keep: bool,
    head_only: bool,
    deadline: Instant,
) -> io::Result<()> {
    let (head, body) = response_parts(resp, keep, head_only);
    if body.len() <= SINGLE_WRITE {
        let mut all = head.into_bytes();
        all.extend_from_slice(body);
        write_all(stream, &[&all], deadline)
    } else {
        write_all(stream, &[head.as_bytes(), body], deadline)
    }
}

/// The status line and header section of `resp`, and the body to send.
fn response_parts(resp: &Response, keep: bool, head_only: bool) -> (String, &[u8]) {
    use std::fmt::Write as _;
    let status = resp.status;
    let bodiless = status == 204 || status == 304;
    let mut head = String::with_capacity(160);
    let _ = write!(head, "HTTP/1.1 {status} {}\r\n", reason(status));
    if !bodiless {
        let _ = write!(
            head,
            "Content-Type: {}\r\nContent-Length: {}\r\n",
            resp.content_type,
            resp.body.len()
        );
    }
    head.push_str(if keep {
        "Connection: keep-alive\r\n"
    } else {
        "Connection: close\r\n"
    });
    for (k, v) in &resp.headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    head.push_str("\r\n");
    let body: &[u8] = if head_only || bodiless {
        &[]
    } else {
        &resp.body
    };
    (head, body)
}

/// A whole small response as one buffer.
fn response_bytes(resp: &Response, keep: bool, head_only: bool) -> Vec<u8> {
    let (head, body) = response_parts(resp, keep, head_only);
    let mut all = head.into_bytes();
    all.extend_from_slice(body);
    all
}

/// Close after the last response: stop sending, then drain what the client
/// still sends for a short while, so that the close does not turn into a
/// reset that destroys the response in the client's receive queue.
fn linger_close(stream: &mut TcpStream, budget: Duration) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = far_add(Instant::now(), budget);
    let mut sink = [0u8; 8192];
    let mut drained = 0;
    while drained < LINGER_BYTES {
        let now = Instant::now();
        if now >= deadline || stream.set_read_timeout(Some(deadline - now)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(n) => drained += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Check and clean a handler's response: a status outside 200..=599 becomes
/// 500, header fields the server owns or that could break the framing are
/// dropped. Also says whether the handler asked for `Connection: close`.
fn sanitize(mut resp: Response) -> (Response, bool) {
    if !(200..=599).contains(&resp.status) {
        warn!(
            status = resp.status,
            "admin http: handler returned an invalid status, answering 500"
        );
        return (Response::error(500, "internal error"), false);
    }
    if !resp
        .content_type
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        warn!("admin http: handler returned an invalid content type");
        resp.content_type = "application/octet-stream";
    }
    let mut close = false;
    resp.headers.retain(|(k, v)| {
        if !is_token(k.as_bytes()) || !v.bytes().all(is_field_byte) {
            warn!(name = ?k, "admin http: dropping an invalid response header field");
            return false;
        }
        if k.eq_ignore_ascii_case("connection") {
            close |= has_token(v, "close");
            return false;
        }
        !["content-length", "content-type", "transfer-encoding"]
            .iter()
            .any(|n| k.eq_ignore_ascii_case(n))
    });
    (resp, close)
}

/// A parsed request line and header section.
#[derive(Debug)]
struct Head {
    method: String,
    target: String,
    /// HTTP/1.<minor>
    minor: u8,
    headers: Vec<(String, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyKind {
    None,
    Length(usize),
    Chunked,
}

/// End (exclusive) of the first empty line in `buf`, searching from `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            match (buf.get(i + 1), buf.get(i + 2)) {
                (Some(b'\n'), _) => return Some(i + 2),
                (Some(b'\r'), Some(b'\n')) => return Some(i + 3),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// A byte allowed in a field value: visible, space, tab, or obs-text.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    &s[start..end]
}

/// Parse the request line and header fields of `block` (ending with the
/// empty line).
fn parse_head(block: &[u8]) -> Result<Head, (u16, &'static str)> {
    const BAD_LINE: (u16, &str) = (400, "malformed request line");
    let mut lines = block
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().ok_or(BAD_LINE)?;
    let mut parts = request_line.split(|&b| b == b' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) => (m, t, v),
        _ => return Err(BAD_LINE),
    };
    if !is_token(method) || target.is_empty() || !target.iter().all(|&b| (b'!'..=b'~').contains(&b))
    {
        return Err(BAD_LINE);
    }
    let minor = match version {
        b"HTTP/1.1" => 1,
        b"HTTP/1.0" => 0,
        [b'H', b'T', b'T', b'P', b'/', d1, b'.', d2]
            if d1.is_ascii_digit() && d2.is_ascii_digit() =>
        {
            return Err((505, "HTTP version not supported"));
        }
        _ => return Err(BAD_LINE),
    };
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err((400, "obsolete header line folding"));
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or((400, "malformed header field"))?;
        let name = &line[..colon];
        let value = trim_ows(&line[colon + 1..]);
        if !is_token(name) {
            return Err((400, "malformed header field name"));
        }
        if !value.iter().all(|&b| is_field_byte(b)) {
            return Err((400, "invalid character in header field value"));
        }
        headers.push((
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    Ok(Head {
        // Both are ASCII (checked above).
        method: String::from_utf8_lossy(method).into_owned(),
        target: String::from_utf8_lossy(target).into_owned(),
        minor,
        headers,
    })
}

/// Decoded query parameters, in order.
type Query = Vec<(String, String)>;

/// Decoded path and query of a request target (origin form `/p?q`,
/// absolute form `http://host/p?q`, or `*`).
fn split_target(target: &str) -> Result<(String, Query), &'static str> {
    if target == "*" {
        return Ok(("*".to_string(), Vec::new()));
    }
    let (raw_path, raw_query) = target_parts(target)?;
    let path = if raw_path.is_empty() {
        "/".to_string()
    } else {
        percent_decode(raw_path, false).ok_or("malformed percent-encoding in path")?
    };
    let mut query = Vec::new();
    for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k, true).ok_or("malformed percent-encoding in query")?;
        let v = percent_decode(v, true).ok_or("malformed percent-encoding in query")?;
        query.push((k, v));
    }
    Ok((path, query))
}

/// The still-encoded path and query of a request target (origin or
/// absolute form), without any fragment.
fn target_parts(target: &str) -> Result<(&str, &str), &'static str> {
    let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
    let rest = if let Some(scheme_len) = ["http://", "https://"]
        .iter()
        .find(|s| lower.starts_with(*s))
        .map(|s| s.len())
    {
        let after = &target[scheme_len..];
        let path_at = after.find(['/', '?']).unwrap_or(after.len());
        &after[path_at..]
    } else if target.starts_with('/') {
        target
    } else {
        return Err("malformed request target");
    };
    let rest = rest.split('#').next().unwrap_or("");
    Ok(rest.split_once('?').unwrap_or((rest, "")))
}

/// `%XX` decoding (and `+` as space when `plus`); `None` on a bad escape or
/// when the result is not UTF-8.
fn percent_decode(s: &str, plus: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hi = hex_val(*b.get(i + 1)?)?;
                let lo = hex_val(*b.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `1*HEXDIG [ BWS ";" ext ]` of a chunk-size line.
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let end = line.iter().position(|&b| b == b';').unwrap_or(line.len());
    let digits = trim_ows(&line[..end]);
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    digits
        .iter()
        .try_fold(0u64, |acc, &d| Some(acc << 4 | u64::from(hex_val(d)?)))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// True when the comma-separated list `v` holds `token` (case-insensitive).
fn has_token(v: &str, token: &str) -> bool {
    v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn wants_keep_alive(head: &Head) -> bool {
    let conn = head.headers.iter().filter(|(k, _)| k == "connection");
    let (mut close, mut keep) = (false, false);
    for (_, v) in conn {
        close |= has_token(v, "close");
        keep |= has_token(v, "keep-alive");
    }
    !close && (head.minor == 1 || keep)
}

/// How the body is framed; errors are (status, message).
fn body_kind(
    headers: &[(String, String)],
    max_body: usize,
) -> Result<BodyKind, (u16, &'static str)> {
    let te: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k == "transfer-encoding")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    let has_cl = headers.iter().any(|(k, _)| k == "content-length");
    if !te.is_empty() {
        if has_cl {
            return Err((400, "both Content-Length and Transfer-Encoding"));
        }
        return match te.as_slice() {
            [t] if t.eq_ignore_ascii_case("chunked") => Ok(BodyKind::Chunked),
            _ => Err((501, "unsupported transfer coding")),
        };
    }
    let mut len: Option<u64> = None;
    for piece in headers
        .iter()
        .filter(|(k, _)| k == "content-length")
        .flat_map(|(_, v)| v.split(','))
    {
        let piece = piece.trim();
        if piece.is_empty() || !piece.bytes().all(|b| b.is_ascii_digit()) {
            return Err((400, "invalid Content-Length"));
        }
        let n = piece.parse::<u64>().unwrap_or(u64::MAX);
        if len.is_some_and(|l| l != n) {
            return Err((400, "conflicting Content-Length values"));
        }
        len = Some(n);
    }
    match len {
        None | Some(0) => Ok(BodyKind::None),
        Some(n) if n > max_body as u64 => Err((413, "request body too large")),
        Some(n) => Ok(BodyKind::Length(n as usize)),
    }
}

/// Whether the request may reach the handler.
fn authorized(token: Option<&str>, method: &str, path: &str, headers: &[(String, String)]) -> bool {
    let Some(token) = token else {
        return true;
    };
    if method == "GET" && (path == "/health" || path == "/ready") {
        return true;
    }
    let Some(value) = header(headers, "authorization") else {
        return false;
    };
    let Some((scheme, cred)) = value.split_once([' ', '\t']) else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer") && ct_eq(cred.trim().as_bytes(), token.as_bytes())
}

/// Compare `given` with `secret` in time that depends on `secret.len()` only.
fn ct_eq(given: &[u8], secret: &[u8]) -> bool {
    let mut acc = u8::from(given.len() != secret.len());
    for (i, &s) in secret.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(!s);
        acc |= g ^ s;
    }
    std::hint::black_box(acc) == 0
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &str) -> Result<Head, (u16, &'static str)> {
        parse_head(s.as_bytes())
    }

    #[test]
    fn request_line_and_headers() {
        let h = head("GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-Y:  z \t\r\n\r\n").unwrap();
        assert_eq!(
            (h.method.as_str(), h.target.as_str(), h.minor),
            ("GET", "/a?b=c", 1)
        );
        assert_eq!(
            h.headers,
            vec![("host".into(), "x".into()), ("x-y".into(), "z".into())]
        );
        let h = head("BREW / HTTP/1.0\n\n").unwrap();
        assert_eq!((h.method.as_str(), h.minor), ("BREW", 0));
        assert_eq!(head("GET / HTTP/2.0\r\n\r\n").unwrap_err().0, 505);
        for bad in [
            "GET  / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1 x\r\n\r\n",
            "GET / HTTP/1.1x\r\n\r\n",
            "GET /\x7f HTTP/1.1\r\n\r\n",
            "G(T / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nNo colon\r\n\r\n",
            "GET / HTTP/1.1\r\nBad name: v\r\n\r\n",
            "GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nA: b\x01c\r\n\r\n",
            "GET / HTTP/1.1\r\nA: b\rc\r\n\r\n",
            "\r\n\r\n",
        ] {
            assert_eq!(head(bad).unwrap_err().0, 400, "{bad:?}");
        }
    }

    #[test]
    fn head_end() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nrest", 0), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\nrest", 0), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n", 0), None);
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r", 0), None);
    }

    #[test]
    fn targets() {
        let (p, q) = split_target("/a%20b/%2F?x=1&y=a+b&z=%E2%9C%93&flag&&=v").unwrap();
        assert_eq!(p, "/a b//");
        let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            q,
            [
                ("x", "1"),
                ("y", "a b"),
                ("z", "✓"),
                ("flag", ""),
                ("", "v")
            ]
        );
        assert_eq!(split_target("/a+b").unwrap().0, "/a+b");
        assert_eq!(split_target("http://h:1/x?y=2").unwrap().0, "/x");
        assert_eq!(split_target("HTTPS://h").unwrap().0, "/");
        assert_eq!(split_target("http://h?a=1").unwrap().1.len(), 1);
        assert_eq!(split_target("*").unwrap().0, "*");
        assert_eq!(split_target("/x#frag").unwrap().0, "/x");
        for bad in ["x", "/%", "/%4", "/%zz", "/%FF", "/?a=%G0", "h://x"] {
            assert!(split_target(bad).is_err(), "{bad:?}");
        }
    }

    fn hdrs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn body_framing() {
        assert_eq!(body_kind(&hdrs(&[]), 10), Ok(BodyKind::None));
        assert_eq!(
            body_kind(&hdrs(&[("content-length", "0")]), 10),
            Ok(BodyKind::None)
        );
        assert_eq!(
            body_kind(&hdrs(&[("content-length", "10")]), 10),
            Ok(BodyKind::Length(10))
        );
        assert_eq!(
            body_kind(&hdrs(&[("content-length", "5, 5")]), 10),
            Ok(BodyKind::Length(5))
        );
        assert_eq!(
            body_kind(&hdrs(&[("content-length", "11")]), 10)
                .unwrap_err()
                .0,
            413
        );
        let huge = "99999999999999999999999999";
        assert_eq!(
            body_kind(&hdrs(&[("content-length", huge)]), 10)
                .unwrap_err()
                .0,
            413
        );
        for bad in ["-1", "+1", "1 2", "", "0x10", "5, 6"] {
            assert_eq!(
                body_kind(&hdrs(&[("content-length", bad)]), 10)
                    .unwrap_err()
                    .0,
                400
            );
        }
        let two = hdrs(&[("content-length", "1"), ("content-length", "2")]);
        assert_eq!(body_kind(&two, 10).unwrap_err().0, 400);
        let te = hdrs(&[("transfer-encoding", "Chunked")]);
        assert_eq!(body_kind(&te, 10), Ok(BodyKind::Chunked));
        let te_cl = hdrs(&[("transfer-encoding", "chunked"), ("content-length", "1")]);
        assert_eq!(body_kind(&te_cl, 10).unwrap_err().0, 400);
        let gz = hdrs(&[("transfer-encoding", "gzip, chunked")]);
        assert_eq!(body_kind(&gz, 10).unwrap_err().0, 501);
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a"), Some(26));
        assert_eq!(parse_chunk_size(b"0"), Some(0));
        assert_eq!(parse_chunk_size(b"A ; ext=1"), Some(10));
        for bad in [&b""[..], b"g", b";x", b"1 2", b"1234567890abcdef0"] {
            assert_eq!(parse_chunk_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn auth_rules() {
        let with = |v: &str| hdrs(&[("authorization", v)]);
        let t = Some("s3cret");
        assert!(authorized(None, "POST", "/x", &[]));
        assert!(authorized(t, "GET", "/health", &[]));
        assert!(authorized(t, "GET", "/ready", &[]));
        assert!(!authorized(t, "POST", "/health", &[]));
        assert!(!authorized(t, "GET", "/health/", &[]));
        assert!(!authorized(t, "GET", "/metrics", &[]));
        assert!(authorized(t, "GET", "/metrics", &with("Bearer s3cret")));
        assert!(authorized(t, "GET", "/metrics", &with("bearer  s3cret ")));
        for bad in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Basic s3cret",
            "Bearer",
            "s3cret",
            "",
        ] {
            assert!(!authorized(t, "GET", "/metrics", &with(bad)), "{bad:?}");
        }
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abd", b"abc"));
        assert!(!ct_eq(b"", b"abc"));
        assert!(!ct_eq(b"abcd", b"abc"));
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |s: &str| wants_keep_alive(&head(s).unwrap());
        assert!(ka("GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.1\r\nConnection: te, close\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.0\r\n\r\n"));
        assert!(ka("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn sanitizing() {
        let mut r = Response::text(200, "x");
        r.headers = hdrs(&[
            ("X-Ok", "1"),
            ("Content-Length", "99"),
            ("X-Bad", "a\r\nInjected: 1"),
            ("Bad Name", "1"),
            ("Connection", "close"),
        ]);
        let (r, close) = sanitize(r);
        assert!(close);
        assert_eq!(r.headers, hdrs(&[("X-Ok", "1")]));
        assert_eq!(sanitize(Response::text(101, "")).0.status, 500);
        assert_eq!(sanitize(Response::text(600, "")).0.status, 500);
    }

    /// Arbitrary bytes never make the parsers panic.
    #[test]
    fn parsers_are_total() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let alphabet = b"GET /%?&=+:\r\n \tHTP1.0chunked;aZ\x00\x7f\xff";
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| alphabet[((x >> (i % 50)) as usize + i * 7) % alphabet.len()])
                .collect();
            let _ = parse_head(&bytes);
            let _ = find_head_end(&bytes, 0);
            let _ = parse_chunk_size(&bytes);
            let s = String::from_utf8_lossy(&bytes);
            let _ = split_target(&s);
            let _ = percent_decode(&s, true);
        }
    }
}
