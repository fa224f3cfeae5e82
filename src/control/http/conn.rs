//! One connection: hyper's HTTP/1.1 state machine around the admin
//! service, the timeouts hyper does not have, and a lingering close.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{StatusCode, Version};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_io_timeout::TimeoutStream;
use tracing::{debug, warn};

use super::rules::{self, authorized, is_probe, sanitize, wants_keep_alive};
use super::shared::Shared;
use super::{HttpConfig, Request, Response};

/// hyper's read buffer (it holds a request head, or body bytes on their
/// way to the service): at least this, and at least `max_header_bytes`.
const READ_BUF: usize = 64 << 10;
/// hyper refuses a `max_buf_size` below this.
const HYPER_MIN_BUF: usize = 8192;
/// Longest request head a probe slot reads: health probes are small.
const PROBE_HEAD_MAX: usize = 4 << 10;
/// Most body bytes reserved up front from a `Content-Length`; the rest
/// grows as the bytes arrive.
const BODY_RESERVE: usize = 1 << 20;
/// After the last response of a connection, how long at most (and how many
/// bytes at most) to drain what the client still sends, so that closing
/// does not reset the connection before the client has read the response.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;
/// No deadline is further away than this (keeps `Instant` arithmetic finite).
const FAR: Duration = Duration::from_secs(24 * 3600);
const MIB: f64 = (1u64 << 20) as f64;

/// Whether a connection has the whole API or only a probe slot's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    Pool,
    Probe,
}

type HyperResponse = hyper::Response<Full<Bytes>>;
type Exchange = Pin<Box<dyn Future<Output = Result<HyperResponse, Infallible>> + Send>>;

/// What the service of one connection knows.
struct Ctx {
    shared: Arc<Shared>,
    peer: SocketAddr,
    mode: Mode,
    /// Responses produced so far.
    answered: AtomicU64,
}

/// Serve one connection until it closes (or its task is aborted).
pub(super) async fn serve<I>(shared: Arc<Shared>, io: I, peer: SocketAddr, mode: Mode)
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let cfg = &shared.cfg;
    let mut timed = TimeoutStream::new(io);
    // hyper has no write timeout: a client that does not read its response
    // would hold the connection forever.
    timed.set_write_timeout(Some(cfg.io_timeout));
    let ctx = Arc::new(Ctx {
        shared: Arc::clone(&shared),
        peer,
        mode,
        answered: AtomicU64::new(0),
    });
    let svc_ctx = Arc::clone(&ctx);
    let svc = service_fn(move |req| -> Exchange {
        let ctx = Arc::clone(&svc_ctx);
        Box::pin(async move { Ok(ctx.exchange(req).await) })
    });
    let max_head = match mode {
        Mode::Pool => cfg.max_header_bytes,
        Mode::Probe => cfg.max_header_bytes.min(PROBE_HEAD_MAX),
    };
    let mut conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_timeout.min(cfg.io_timeout))
        .max_header_size(max_head)
        .max_buf_size(max_head.max(READ_BUF).max(HYPER_MIN_BUF))
        // A client may send its request and shut its side: it still gets
        // the answer.
        .half_close(true)
        .keep_alive(mode == Mode::Pool)
        .serve_connection(TokioIo::new(Box::pin(timed)), svc);

    let mut shutdown = shared.shutdown.subscribe();
    let result = {
        let stopped = shutdown.wait_for(|s| *s);
        tokio::pin!(stopped);
        let mut closing = false;
        poll_fn(|cx| {
            if !closing && stopped.as_mut().poll(cx).is_ready() {
                closing = true;
                Pin::new(&mut conn).graceful_shutdown();
            }
            // Without shutdown: the socket comes back for the lingering close.
            conn.poll_without_shutdown(cx)
        })
        .await
    };
    let parts = conn.into_parts();
    let mut io = parts.io.into_inner();
    let answered = ctx.answered.load(Ordering::Relaxed);
    let mut linger = true;
    match result {
        Ok(()) => {}
        // hyper's header timeout; bytes waiting unparsed mean a head had begun.
        Err(e) if e.is_timeout() => {
            if parts.read_buf.is_empty() {
                linger = false; // idle: nothing to answer
            } else if mode == Mode::Pool {
                cfg.stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
                shared.logs.log("header timeout", |n| {
                    warn!(%peer, suppressed = n, "admin http: request head too slow, closing");
                });
                // Only before the first response is hyper's write buffer
                // surely empty; later a 408 could follow a cut response.
                if answered == 0 {
                    let _ = io.write_all(&timeout_response()).await;
                }
            }
        }
        Err(e) if e.is_parse() => {
            // hyper answered it (400, 431) and closes.
            shared.logs.log("bad request", |n| {
                warn!(%peer, error = %e, suppressed = n, "admin http: bad request");
            });
        }
        Err(e) => debug!(%peer, error = %e, "admin http: connection ended"),
    }
    if mode == Mode::Probe && answered == 0 {
        cfg.stats.probes_dropped.fetch_add(1, Ordering::Relaxed);
    }
    // A probe slot closes at once, as the slot it holds may be taken for
    // a newer connection at any moment.
    if linger && mode == Mode::Pool {
        linger_close(&mut io, cfg.io_timeout.min(LINGER_TIME), &mut shutdown).await;
    } else {
        let _ = io.shutdown().await;
    }
}

/// The 408 for a request head that did not arrive in time.
fn timeout_response() -> Vec<u8> {
    let body = Response::error(408, "request header timeout").body;
    let mut out = format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Close after the last response: stop sending, then drain what the client
/// still sends for a short while (not once the server stops), so that the
/// close does not turn into a reset that destroys the response in the
/// client's receive queue.
async fn linger_close<S>(io: &mut S, budget: Duration, shutdown: &mut watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if io.shutdown().await.is_err() {
        return;
    }
    let deadline = Instant::now() + budget;
    let mut sink = [0u8; 8192];
    let mut drained = 0;
    while drained < LINGER_BYTES {
        tokio::select! {
            r = tokio::time::timeout_at(deadline, io.read(&mut sink)) => match r {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => return,
            },
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// The request line and header fields as the handler sees them.
struct Head {
    method: String,
    target: String,
    http11: bool,
    headers: Vec<(String, String)>,
}

impl Head {
    fn new(parts: &http::request::Parts) -> Head {
        Head {
            method: parts.method.as_str().to_string(),
            target: parts.uri.to_string(),
            http11: parts.version == Version::HTTP_11,
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| {
                    let v = String::from_utf8_lossy(v.as_bytes());
                    (k.as_str().to_string(), v.trim().to_string())
                })
                .collect(),
        }
    }

    fn authorization_fields(&self) -> usize {
        self.headers
            .iter()
            .filter(|(k, _)| k == "authorization")
            .count()
    }
}

impl Ctx {
    async fn exchange(&self, req: hyper::Request<Incoming>) -> HyperResponse {
        let (resp, close) = match self.mode {
            Mode::Pool => self.full(req).await,
            Mode::Probe => self.probe(req).await,
        };
        self.answered.fetch_add(1, Ordering::Relaxed);
        to_hyper(resp, close)
    }

    /// A connection in the pool: the whole API. Returns the response and
    /// whether it is the connection's last.
    async fn full(&self, req: hyper::Request<Incoming>) -> (Response, bool) {
        let shared = &self.shared;
        let peer = self.peer;
        let (parts, body) = req.into_parts();
        let head = Head::new(&parts);
        let (path, query) = match rules::split_target(&head.target) {
            Ok(pq) => pq,
            Err(msg) => return self.fail(400, msg),
        };
        if body
            .size_hint()
            .exact()
            .is_some_and(|n| n > shared.cfg.max_body as u64)
        {
            return self.fail(413, "request body too large");
        }
        if head.authorization_fields() > 1 {
            // Which one would decide is exactly what a proxy in front and this
            // server could disagree on.
            return self.fail(400, "duplicate Authorization header");
        }
        let keep_alive = wants_keep_alive(head.http11, &head.headers);
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
            // The body is not read: only a bodiless request leaves the
            // connection in a state where the next request can follow.
            let keep = keep_alive && body.is_end_stream() && !shared.stopping();
            let resp = Response::error(401, "missing or invalid bearer token")
                .with_header("WWW-Authenticate", "Bearer");
            return (resp, !keep);
        }
        let body = match read_body(body, &shared.cfg).await {
            Ok(b) => b,
            Err((status, msg)) => return self.fail(status, msg),
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
        let (method, path) = (req.method.clone(), req.path.clone());
        let (resp, close_asked) = sanitize(self.call(req).await);
        debug!(method = ?method, path = ?path, status = resp.status, %peer, "admin http request");
        let keep = keep_alive && !close_asked && !shared.stopping();
        (resp, !keep)
    }

    /// A probe slot: `GET /health` and `GET /ready` without a body reach
    /// the handler, anything else is 503; either way the connection closes.
    async fn probe(&self, req: hyper::Request<Incoming>) -> (Response, bool) {
        let stats = &self.shared.cfg.stats;
        let (parts, body) = req.into_parts();
        let head = Head::new(&parts);
        let path = rules::split_target(&head.target)
            .ok()
            .filter(|(path, _)| is_probe(&head.method, path));
        match path {
            Some((path, query)) if body.is_end_stream() && head.authorization_fields() <= 1 => {
                stats.probes_answered.fetch_add(1, Ordering::Relaxed);
                let req = Request {
                    method: head.method,
                    path,
                    raw_path: head.target,
                    query,
                    headers: head.headers,
                    body: Vec::new(),
                    peer: self.peer,
                };
                (sanitize(self.call(req).await).0, true)
            }
            _ => {
                stats.probes_refused.fetch_add(1, Ordering::Relaxed);
                let resp =
                    Response::error(503, "too many connections").with_header("Retry-After", "1");
                (resp, true)
            }
        }
    }

    /// Run the handler on the blocking pool; a panic is a 500.
    async fn call(&self, req: Request) -> Response {
        let handler = Arc::clone(&self.shared.handler);
        let (method, path, peer) = (req.method.clone(), req.path.clone(), req.peer);
        match tokio::task::spawn_blocking(move || handler(&req)).await {
            Ok(r) => r,
            Err(e) => {
                let what = match e.try_into_panic() {
                    Ok(payload) => payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "non-string panic payload".to_string()),
                    Err(_) => "handler task cancelled".to_string(),
                };
                warn!(method = ?method, path = ?path, %peer, panic = what,
                    "admin http: handler panicked, answering 500");
                Response::error(500, "internal error")
            }
        }
    }

    /// Answer a request the server refuses and close.
    fn fail(&self, status: u16, msg: &'static str) -> (Response, bool) {
        let peer = self.peer;
        self.shared.logs.log("bad request", |n| {
            warn!(%peer, status, error = msg, suppressed = n, "admin http: bad request");
        });
        (Response::error(status, msg), true)
    }
}

/// Collect a body of at most `max_body` bytes, within `io_timeout` plus
/// `io_timeout` per MiB received so far. Errors are (status, message).
async fn read_body(body: Incoming, cfg: &HttpConfig) -> Result<Vec<u8>, (u16, &'static str)> {
    if body.is_end_stream() {
        return Ok(Vec::new());
    }
    let declared = body.size_hint().exact().unwrap_or(0);
    let mut out = Vec::with_capacity(usize::try_from(declared).map_or(0, |n| n.min(BODY_RESERVE)));
    let mut body = Limited::new(body, cfg.max_body);
    let start = Instant::now();
    loop {
        let deadline = body_deadline(start, cfg.io_timeout, out.len());
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err((408, "request body timeout")),
            Ok(None) => return Ok(out),
            Ok(Some(Ok(frame))) => {
                // Trailer fields are dropped.
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                }
            }
            Ok(Some(Err(e))) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err((413, "request body too large"));
            }
            Ok(Some(Err(_))) => return Err((400, "malformed or incomplete request body")),
        }
    }
}

/// `start` + `timeout` + `timeout` per MiB of `bytes`.
fn body_deadline(start: Instant, timeout: Duration, bytes: usize) -> Instant {
    let extra =
        Duration::try_from_secs_f64(timeout.as_secs_f64() * (bytes as f64 / MIB)).unwrap_or(FAR);
    let total = timeout.saturating_add(extra).min(FAR);
    start.checked_add(total).unwrap_or(start)
}

/// `resp` for hyper, with the fields the server owns.
fn to_hyper(resp: Response, close: bool) -> HyperResponse {
    let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let bodiless = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let len = resp.body.len();
    let body = if bodiless {
        Bytes::new()
    } else {
        Bytes::from(resp.body)
    };
    let mut out = hyper::Response::new(Full::new(body));
    *out.status_mut() = status;
    let h = out.headers_mut();
    if !bodiless {
        let ct = HeaderValue::from_str(resp.content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream"));
        h.insert(header::CONTENT_TYPE, ct);
        // Explicit, so that a HEAD answer carries the length too.
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    for (k, v) in &resp.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_bytes(v.as_bytes()),
        ) {
            h.append(k, v);
        }
    }
    if close {
        // hyper closes after a response that says so.
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_deadlines_grow_per_mib_and_stay_finite() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert_eq!(body_deadline(t0, s, 0) - t0, s);
        assert_eq!(body_deadline(t0, s, 1 << 20) - t0, 2 * s);
        assert_eq!(body_deadline(t0, s, usize::MAX) - t0, FAR);
    }

    #[test]
    fn responses_carry_length_type_and_close() {
        let r = to_hyper(Response::text(200, "hi").with_header("X-A", "\u{e9}"), true);
        let h = r.headers();
        assert_eq!(h["content-length"], "2");
        assert_eq!(h["content-type"], "text/plain; charset=utf-8");
        assert_eq!(h["connection"], "close");
        assert_eq!(h["x-a"].as_bytes(), "\u{e9}".as_bytes());
        let r = to_hyper(Response::text(204, "dropped"), false);
        assert!(r.headers().get("content-length").is_none());
        assert!(r.headers().get("connection").is_none());
        assert!(timeout_response().starts_with(b"HTTP/1.1 408 "));
    }
}
