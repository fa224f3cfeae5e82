//! The admin API's HTTP/1.1 server: hyper on one thread of its own with a
//! current-thread tokio runtime.
//!
//! This module owns the connection limits, the timeouts and the
//! authentication of the admin API (live group/shard updates, config read,
//! `/metrics`, `/health`, `/ready`); what each endpoint does is the
//! [`Handler`] closure's business. hyper does the HTTP/1.1 framing (request
//! line and headers, `Content-Length` and chunked bodies, `Expect:
//! 100-continue`, keep-alive and pipelining, HEAD). tokio lives only inside
//! the admin thread (and its few handler threads): the SIP workers never see
//! it.
//!
//! Invariants:
//! - bounded: at most [`HttpConfig::max_connections`] connections are served
//!   at once, at most [`HttpConfig::max_connections_per_peer`] per source IP;
//!   a connection beyond either is served by one of
//!   [`HttpConfig::probe_slots`] (oldest closed when full), where only
//!   `GET /health` and `GET /ready` are answered (else 503 + `Retry-After`),
//!   so idle or slow connections cannot make health probes fail; a request's
//!   line and headers are at most `max_header_bytes` (hyper answers 431), its
//!   body at most `max_body` (413, checked against `Content-Length` before a
//!   byte of the body is read, and as a chunked body arrives); the handler
//!   runs on a pool of at most [`HANDLER_THREADS`] threads, and its queue
//!   holds at most one request per connection;
//! - timely: a request head must be complete within `header_timeout` (capped
//!   by `io_timeout`) of the moment the server starts waiting for it, the
//!   accept or the end of the previous response, so this is also how long a
//!   keep-alive connection may stay idle; a slow first head is answered 408,
//!   an idle connection just closed; a body gets `io_timeout` plus
//!   `io_timeout` per MiB received so far (then 408); a write that makes no
//!   progress for `io_timeout` ends the connection;
//! - authenticated: with a token configured, no request except `GET /health`
//!   and `GET /ready` reaches the handler without `Authorization: Bearer
//!   <token>` (compared in constant time; the token may be rotated through
//!   [`HttpConfig::live_token`]); two `Authorization` fields are a 400;
//!   [`serve`] refuses to run without a token on a non-loopback address;
//! - quiet under attack: warnings about refused connections and bad requests
//!   are throttled to one line per reason per second (with a count);
//! - total: no input makes the server panic; a panic inside the handler is
//!   answered 500 (this needs `panic = "unwind"`: under the release
//!   profile's `panic = "abort"` a handler panic aborts the process, as it
//!   would anywhere else);
//! - no request smuggling: hyper refuses conflicting `Content-Length`s and
//!   transfer codings other than `chunked` (400); a request with both
//!   `Content-Length` and `Transfer-Encoding: chunked` is read as chunked
//!   and its connection closed after the answer (RFC 9112 section 6.3);
//! - [`serve`]'s thread returns within ~100 ms of `stop` plus the time the
//!   requests in hand take to finish (at most [`STOP_GRACE`]); those are
//!   answered with `Connection: close`, idle connections are closed.
//!
//! Errors the server answers itself carry a JSON body `{"error": ...}`;
//! those hyper answers while parsing a request head (a malformed request
//! line or header field, 400; too large a head, 431) have an empty body.

mod accept;
mod conn;
mod rules;
mod shared;

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::info;

/// Most threads running the handler at once (tokio's blocking pool). The
/// handler is synchronous and may take a while (a bulk group upload); on
/// the runtime thread it would stall every other connection.
pub const HANDLER_THREADS: usize = 8;

/// Longest time [`serve`]'s thread waits after `stop` for the requests in
/// hand to be answered.
pub const STOP_GRACE: Duration = Duration::from_secs(1);

/// One request, as the handler sees it.
#[derive(Clone)]
pub struct Request {
    pub method: String,
    /// Percent-decoded path, without the query (`*` for `OPTIONS *`).
    pub path: String,
    /// The request target as received (path and query, not decoded);
    /// use it where an encoded `/` (`%2F`) must not split a segment.
    pub raw_path: String,
    /// Query parameters in order, decoded (`+` is a space); a parameter
    /// without `=` has an empty value.
    pub query: Vec<(String, String)>,
    /// Header fields, names lowercased, values trimmed; fields of one name
    /// are together, in the order received.
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
        let (raw, _) = rules::target_parts(&self.raw_path).ok()?;
        raw.trim_matches('/')
            .split('/')
            .map(|seg| rules::percent_decode(seg, false))
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

/// One response. The server adds `Content-Type`, `Content-Length` and, on
/// the last response of a connection, `Connection: close`; `headers` are
/// extra fields (a `Connection: close` there closes the connection after
/// the response; `Content-Length`, `Content-Type`, `Transfer-Encoding` and
/// `Connection` are otherwise ignored, as is any field with an invalid name
/// or a control character).
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
    /// Most connections one source IP may have served at once, so that one
    /// peer cannot take the whole pool (beyond: the probe slots).
    pub max_connections_per_peer: usize,
    /// Connections that find no place (pool full, or their peer at its cap)
    /// get one request in one of these: `GET /health` and `GET /ready` are
    /// answered, anything else gets 503; when all are taken the
    /// longest-waiting one is closed, so a flood of idle connections cannot
    /// keep a health probe out.
    pub probe_slots: usize,
    /// A request head must be complete within this once the server waits
    /// for it (the accept, or the end of the previous response); so it is
    /// also the idle limit of a keep-alive connection (slowloris; capped by
    /// `io_timeout`).
    pub header_timeout: Duration,
    /// Base body timeout (plus as much per MiB), write stall timeout.
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
    /// Connections holding a place in the pool now.
    pub active: AtomicU64,
    /// Connections given a place in the pool.
    pub accepted: AtomicU64,
    /// Connections that found the pool full / their peer at its cap.
    pub over_pool: AtomicU64,
    pub over_peer_cap: AtomicU64,
    /// Probe-slot outcomes: health/ready answered, other requests answered
    /// 503, closed without an answer (no request in time, slots full).
    pub probes_answered: AtomicU64,
    pub probes_refused: AtomicU64,
    pub probes_dropped: AtomicU64,
    /// Connections closed because a request head was too slow.
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

fn invalid<T>(msg: String) -> io::Result<T> {
    Err(io::Error::new(io::ErrorKind::InvalidInput, msg))
}

/// Serve `listener` until `stop` is set; returns the server thread's handle.
///
/// The thread runs a current-thread tokio runtime: it accepts, checks
/// `stop` every 50 ms, and serves every connection as a task. Each
/// connection gets a place in the pool, at most `max_connections` at once
/// and `max_connections_per_peer` per source IP; beyond that it goes to the
/// probe slots: `/health` and `/ready` answered, anything else 503
/// (`Retry-After: 1`), then closed.
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
    let local = listener.local_addr()?;
    let conns = Connections::with_stop(cfg, handler, stop)?;
    if conns.0.token.load().is_none() && !is_loopback(&local) {
        return invalid(format!(
            "admin http: refusing to serve on non-loopback {local} without a token"
        ));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(HANDLER_THREADS)
        .thread_name("http-handler")
        .build()?;
    listener.set_nonblocking(true)?;
    let listener = {
        let _in_rt = rt.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    info!(
        addr = %local,
        auth = conns.0.token.load().is_some(),
        max_connections = conns.0.cfg.max_connections,
        "admin http listening"
    );
    thread::Builder::new()
        .name("http-admin".into())
        .spawn(move || {
            rt.block_on(accept::accept_loop(listener, conns.0));
            // A handler still running after the grace keeps its thread;
            // the server does not wait for it.
            rt.shutdown_timeout(Duration::from_millis(100));
        })
}

/// The per-connection half of the server, without a listener: what [`serve`]
/// runs on every accepted connection, over any byte stream (the fuzz target
/// drives it through in-memory pipes). Must be used inside a tokio runtime
/// with io and time enabled.
#[derive(Clone)]
pub struct Connections(Arc<shared::Shared>);

impl Connections {
    /// Check `cfg` (as [`serve`] does, but for the loopback rule) and build.
    pub fn new(cfg: HttpConfig, handler: Handler) -> io::Result<Connections> {
        Connections::with_stop(cfg, handler, Arc::new(AtomicBool::new(false)))
    }

    fn with_stop(
        cfg: HttpConfig,
        handler: Handler,
        stop: Arc<AtomicBool>,
    ) -> io::Result<Connections> {
        if cfg.max_connections == 0 || cfg.max_connections_per_peer == 0 || cfg.probe_slots == 0 {
            return invalid(
                "admin http: max_connections, max_connections_per_peer and probe_slots must be at least 1"
                    .into(),
            );
        }
        if cfg.io_timeout.is_zero() || cfg.header_timeout.is_zero() {
            return invalid("admin http: io_timeout and header_timeout must not be zero".into());
        }
        let token: TokenCell = cfg
            .live_token
            .clone()
            .unwrap_or_else(|| Arc::new(ArcSwapOption::from(cfg.token.clone().map(Arc::new))));
        if token.load().as_deref().is_some_and(|t| t.is_empty()) {
            return invalid("admin http: the token must not be empty".into());
        }
        Ok(Connections(Arc::new(shared::Shared::new(
            cfg, token, handler, stop,
        ))))
    }

    /// Serve one connection from `peer` until it closes: with the whole API
    /// (`probe_only` false, as a connection in the pool; no pool accounting
    /// here) or as a probe slot.
    pub async fn serve<I>(&self, io: I, peer: SocketAddr, probe_only: bool)
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let mode = if probe_only {
            conn::Mode::Probe
        } else {
            conn::Mode::Pool
        };
        conn::serve(Arc::clone(&self.0), io, peer, mode).await;
    }
}
