//! The admin HTTP server over real loopback TCP: framing, keep-alive, limits,
//! bearer auth, handler panics, the connection limit, timeouts and stop.
//! The client is a few lines of std: raw bytes out, one response parsed back.

mod common;
use common::connect_from;
use cpm_edge::control::http::{self, Handler, HttpConfig, Request, Response};
use serde_json::{json, Value};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Upper bound for anything that "happens eventually".
const GENEROUS: Duration = Duration::from_secs(10);

struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    /// How many times the handler ran.
    calls: Arc<AtomicUsize>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Echo the request as JSON; `/panic` panics, `/close` asks for a close,
/// `/big` answers 32 MiB.
fn echo(req: &Request) -> Response {
    match req.path.as_str() {
        "/panic" => panic!("handler panic (expected by the test)"),
        "/big" => return Response::text(200, "x".repeat(32 << 20)),
        _ => {}
    }
    let query: Vec<Value> = req.query.iter().map(|(k, v)| json!([k, v])).collect();
    let mut resp = Response::json(
        200,
        &json!({
            "method": req.method,
            "path": req.path,
            "raw_path": req.raw_path,
            "query": query,
            "a": req.query_param("a"),
            "host": req.header("HOST"),
            "body": String::from_utf8_lossy(&req.body),
            "peer_loopback": http::is_loopback(&req.peer),
        }),
    );
    if req.path == "/close" {
        resp.headers.push(("X-Test".into(), "yes".into()));
        resp.headers.push(("Connection".into(), "close".into()));
    }
    resp
}

fn start(cfg: HttpConfig) -> Server {
    start_with(cfg, echo)
}

fn start_with(cfg: HttpConfig, f: impl Fn(&Request) -> Response + Send + Sync + 'static) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let handler: Handler = Arc::new(move |req: &Request| {
        c.fetch_add(1, Ordering::SeqCst);
        f(req)
    });
    let handle = http::serve(listener, cfg, handler, stop.clone()).unwrap();
    Server {
        addr,
        stop,
        handle: Some(handle),
        calls,
    }
}

fn start_default() -> Server {
    start(HttpConfig::default())
}

#[derive(Debug)]
struct Resp {
    /// `HTTP/1.1` or `HTTP/1.0` (hyper answers an HTTP/1.0 request in kind).
    version: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(GENEROUS)).unwrap();
    s
}

/// Read one response; `head_only` for the answer to a HEAD request.
fn read_response_opt(s: &mut TcpStream, head_only: bool) -> io::Result<Resp> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8(head).expect("response head is UTF-8");
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap();
    assert!(
        status_line.starts_with("HTTP/1.1 ") || status_line.starts_with("HTTP/1.0 "),
        "{status_line:?}"
    );
    let status: u16 = status_line[9..12].parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').expect("header has a colon");
            (k.to_string(), v.trim().to_string())
        })
        .collect();
    let mut resp = Resp {
        version: status_line[..8].to_string(),
        status,
        headers,
        body: Vec::new(),
    };
    if !head_only {
        if let Some(len) = resp.header("content-length") {
            let mut body = vec![0u8; len.parse().unwrap()];
            s.read_exact(&mut body)?;
            resp.body = body;
        }
    }
    Ok(resp)
}

fn read_response(s: &mut TcpStream) -> Resp {
    read_response_opt(s, false).expect("a response")
}

/// Open a connection, send `raw`, read one response.
fn roundtrip(addr: SocketAddr, raw: &[u8]) -> Resp {
    let mut s = connect(addr);
    s.write_all(raw).unwrap();
    read_response(&mut s)
}

/// Read until the server closes; a reset after the close counts as closed.
fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("connection not closed: {e}"),
        }
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes()
}

fn assert_json_error(r: &Resp, status: u16) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.json()["error"].is_string(), "{r:?}");
}

/// An error hyper answers itself while parsing a request head: no body,
/// and the connection closes.
fn assert_bare_error(r: &Resp, status: u16) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.header("content-length"), Some("0"), "{r:?}");
    assert!(r.body.is_empty(), "{r:?}");
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
}

#[test]
fn get_with_query_decoding() {
    let srv = start_default();
    let raw = "GET /groups/a%20b%2Fc?a=1%2B1&name=hello+world&x=%E2%9C%93&flag HTTP/1.1\r\n\
               Host: edge\r\n\r\n";
    let r = roundtrip(srv.addr, raw.as_bytes());
    assert_eq!((r.version.as_str(), r.status), ("HTTP/1.1", 200));
    assert_eq!(r.header("content-type"), Some("application/json"));
    // HTTP/1.1 is persistent unless a response says `Connection: close`.
    assert_eq!(r.header("connection"), None);
    let v = r.json();
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/groups/a b/c");
    assert_eq!(
        v["raw_path"],
        "/groups/a%20b%2Fc?a=1%2B1&name=hello+world&x=%E2%9C%93&flag"
    );
    assert_eq!(
        v["query"],
        json!([
            ["a", "1+1"],
            ["name", "hello world"],
            ["x", "✓"],
            ["flag", ""]
        ])
    );
    assert_eq!(v["a"], "1+1");
    assert_eq!(v["host"], "edge");
    assert_eq!(v["peer_loopback"], true);
}

#[test]
fn post_body_content_length_chunked_and_expect() {
    let srv = start_default();
    let body = r#"{"groups":[{"id":"g1","shard":2}]}"#;
    let raw = format!(
        "POST /groups HTTP/1.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = roundtrip(srv.addr, raw.as_bytes());
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(
        (v["method"].as_str(), v["body"].as_str()),
        (Some("POST"), Some(body))
    );

    // Chunked, with an extension and a trailer.
    let raw = "PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
               5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n";
    let r = roundtrip(srv.addr, raw.as_bytes());
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body"], "hello world");

    // Expect: 100-continue: the interim answer comes before the body is sent.
    let mut s = connect(srv.addr);
    s.write_all(b"POST /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s).status, 100);
    s.write_all(b"abc").unwrap();
    let r = read_response(&mut s);
    assert_eq!((r.status, r.json()["body"].as_str()), (200, Some("abc")));
}

#[test]
fn keep_alive_and_pipelining() {
    let srv = start_default();
    let mut s = connect(srv.addr);
    s.write_all(&get("/one")).unwrap();
    let r1 = read_response(&mut s);
    s.write_all(b"POST /two HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi")
        .unwrap();
    let r2 = read_response(&mut s);
    assert_eq!((r1.status, r2.status), (200, 200));
    assert_eq!(
        (r1.header("connection"), r2.header("connection")),
        (None, None)
    );
    assert_eq!(r1.json()["path"], "/one");
    assert_eq!(r2.json()["body"], "hi");

    // Two requests in one write, answered in order.
    let mut both = get("/p1");
    both.extend_from_slice(&get("/p2"));
    s.write_all(&both).unwrap();
    assert_eq!(read_response(&mut s).json()["path"], "/p1");
    assert_eq!(read_response(&mut s).json()["path"], "/p2");

    // HTTP/1.0 keeps the connection only when asked to.
    let mut s = connect(srv.addr);
    s.write_all(b"GET /ten HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s);
    assert_eq!(
        (r.version.as_str(), r.header("connection")),
        ("HTTP/1.0", Some("keep-alive"))
    );
    s.write_all(&get("/again")).unwrap();
    assert_eq!(read_response(&mut s).json()["path"], "/again");
}

#[test]
fn connection_close_is_honoured() {
    let srv = start_default();
    let mut s = connect(srv.addr);
    s.write_all(b"GET /bye HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s);
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert!(read_until_closed(&mut s).is_empty());

    // HTTP/1.0 closes by default.
    let mut s = connect(srv.addr);
    s.write_all(b"GET /old HTTP/1.0\r\n\r\n").unwrap();
    let r = read_response(&mut s);
    assert_eq!(
        (r.version.as_str(), r.header("connection")),
        ("HTTP/1.0", Some("close"))
    );
    assert!(read_until_closed(&mut s).is_empty());

    // The handler may ask for a close; its own extra headers go out.
    let mut s = connect(srv.addr);
    s.write_all(&get("/close")).unwrap();
    let r = read_response(&mut s);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.header("x-test"), Some("yes"));
    assert!(read_until_closed(&mut s).is_empty());
}

#[test]
fn head_and_unknown_methods_reach_the_handler() {
    let srv = start_default();
    let mut s = connect(srv.addr);
    s.write_all(b"BREW /pot HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s).json()["method"], "BREW");
    s.write_all(b"HEAD /h HTTP/1.1\r\n\r\n").unwrap();
    let r = read_response_opt(&mut s, true).unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            > 0
    );
    // No body followed: the next response starts right away.
    s.write_all(&get("/after-head")).unwrap();
    assert_eq!(read_response(&mut s).json()["path"], "/after-head");
}

#[test]
fn oversized_body_is_413() {
    let srv = start(HttpConfig {
        max_body: 1024,
        ..HttpConfig::default()
    });
    let mut s = connect(srv.addr);
    s.write_all(b"POST /big HTTP/1.1\r\nContent-Length: 2048\r\n\r\n")
        .unwrap();
    s.write_all(&[b'x'; 512]).unwrap();
    let r = read_response(&mut s);
    assert_json_error(&r, 413);
    assert_eq!(r.header("connection"), Some("close"));
    read_until_closed(&mut s);

    // Chunked bodies count too.
    let mut raw = b"POST /big HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        raw.extend_from_slice(b"200\r\n");
        raw.extend_from_slice(&[b'y'; 0x200]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    assert_json_error(&roundtrip(srv.addr, &raw), 413);

    // At the limit is fine.
    let mut raw = b"POST /ok HTTP/1.1\r\nContent-Length: 1024\r\n\r\n".to_vec();
    raw.extend_from_slice(&[b'z'; 1024]);
    assert_eq!(roundtrip(srv.addr, &raw).status, 200);
    assert_eq!(srv.calls.load(Ordering::SeqCst), 1);
}

#[test]
fn oversized_headers_are_431() {
    let srv = start(HttpConfig {
        max_header_bytes: 1024,
        ..HttpConfig::default()
    });
    let raw = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(4000));
    let mut s = connect(srv.addr);
    s.write_all(raw.as_bytes()).unwrap();
    let r = read_response(&mut s);
    // hyper's own answer (max_header_size): no JSON body.
    assert_bare_error(&r, 431);
    read_until_closed(&mut s);

    let raw = format!("GET / HTTP/1.1\r\nX-Fits: {}\r\n\r\n", "a".repeat(500));
    assert_eq!(roundtrip(srv.addr, raw.as_bytes()).status, 200);
    assert_eq!(srv.calls.load(Ordering::SeqCst), 1);
}

#[test]
fn malformed_requests_are_400() {
    let srv = start_default();
    // Refused by hyper's parser (request line, header fields, framing): a
    // bare 400. A version other than 1.x and a transfer coding other than
    // chunked are 400 there too (505 and 501 before hyper).
    for raw in [
        &b"THIS IS NOT HTTP\r\n\r\n"[..],
        b"\x00\x01\x02\xff garbage\r\n\r\n",
        b"GET /a b HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nno-colon-here\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: 1\r\n  folded\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"GET / HTTP/2.0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
    ] {
        let mut s = connect(srv.addr);
        s.write_all(raw).unwrap();
        let r = read_response(&mut s);
        assert_bare_error(&r, 400);
        assert!(read_until_closed(&mut s).is_empty(), "{raw:?}");
    }
    // Refused by the server (target, percent-encoding, chunk syntax): JSON.
    for raw in [
        &b"GET noslash HTTP/1.1\r\n\r\n"[..],
        b"GET /%zz HTTP/1.1\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let mut s = connect(srv.addr);
        s.write_all(raw).unwrap();
        let r = read_response(&mut s);
        assert_json_error(&r, 400);
        assert_eq!(r.header("connection"), Some("close"), "{raw:?}");
        assert!(read_until_closed(&mut s).is_empty(), "{raw:?}");
    }
    assert_eq!(srv.calls.load(Ordering::SeqCst), 0);
    // Still serving.
    assert_eq!(roundtrip(srv.addr, &get("/fine")).status, 200);
}

/// `Content-Length` next to `Transfer-Encoding: chunked`: the body is read
/// as chunked (hyper, RFC 9112 section 6.3; the old server refused it with
/// 400) and the connection closes after the answer, so what follows the
/// chunked body is never taken for a request.
#[test]
fn content_length_with_chunked_cannot_smuggle_a_request() {
    let srv = start_default();
    let mut s = connect(srv.addr);
    s.write_all(
        b"POST /outer HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
          0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
    )
    .unwrap();
    let r = read_response(&mut s);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/outer");
    assert_eq!(r.json()["body"], "");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(read_until_closed(&mut s).is_empty());
    assert_eq!(srv.calls.load(Ordering::SeqCst), 1, "/smuggled never ran");
}

#[test]
fn random_garbage_never_breaks_the_server() {
    let srv = start(HttpConfig {
        io_timeout: Duration::from_millis(500),
        ..HttpConfig::default()
    });
    let alphabet =
        b"GET POST / HTTP/1.1 \r\n:%?&=+ chunked Content-Length: 0123456789abcdef;\t\x00\xff";
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for _ in 0..150 {
        let mut raw = Vec::new();
        for _ in 0..(x % 200) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            raw.push(alphabet[(x % alphabet.len() as u64) as usize]);
        }
        raw.extend_from_slice(b"\r\n\r\n");
        let mut s = connect(srv.addr);
        // The server may already have answered and closed: ignore write errors.
        let _ = s.write_all(&raw);
        let _ = s.shutdown(Shutdown::Write);
        let got = read_until_closed(&mut s);
        assert!(got.is_empty() || got.starts_with(b"HTTP/1.1 "), "{got:?}");
    }
    assert_eq!(roundtrip(srv.addr, &get("/alive")).status, 200);
}

#[test]
fn bearer_token_is_required_except_for_health_and_ready() {
    let srv = start(HttpConfig {
        token: Some("s3cret-token".into()),
        ..HttpConfig::default()
    });
    let no_auth = roundtrip(srv.addr, &get("/metrics"));
    assert_json_error(&no_auth, 401);
    assert_eq!(no_auth.header("www-authenticate"), Some("Bearer"));
    for bad in [
        "Bearer wrong",
        "Bearer s3cret-toke",
        "Bearer s3cret-token2",
        "Basic s3cret-token",
    ] {
        let raw = format!("GET /metrics HTTP/1.1\r\nAuthorization: {bad}\r\n\r\n");
        let r = roundtrip(srv.addr, raw.as_bytes());
        assert_json_error(&r, 401);
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    // A POST with a body is refused before its body is read.
    let r = roundtrip(
        srv.addr,
        b"POST /groups HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_json_error(&r, 401);
    assert_eq!(
        srv.calls.load(Ordering::SeqCst),
        0,
        "handler ran without auth"
    );

    let ok = b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer s3cret-token\r\n\r\n";
    assert_eq!(roundtrip(srv.addr, ok).status, 200);
    assert_eq!(roundtrip(srv.addr, &get("/health")).status, 200);
    assert_eq!(roundtrip(srv.addr, &get("/ready")).status, 200);
    assert_eq!(srv.calls.load(Ordering::SeqCst), 3);
    // Only GET is exempt.
    let post_health = b"POST /health HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
    assert_json_error(&roundtrip(srv.addr, post_health), 401);

    // A bodiless 401 keeps the connection usable.
    let mut s = connect(srv.addr);
    s.write_all(&get("/config")).unwrap();
    assert_eq!(read_response(&mut s).status, 401);
    s.write_all(ok).unwrap();
    assert_eq!(read_response(&mut s).status, 200);
}

#[test]
fn handler_panic_is_500_and_the_server_survives() {
    let srv = start_default();
    let mut s = connect(srv.addr);
    s.write_all(&get("/panic")).unwrap();
    assert_json_error(&read_response(&mut s), 500);
    s.write_all(&get("/after")).unwrap();
    assert_eq!(read_response(&mut s).json()["path"], "/after");
    assert_eq!(roundtrip(srv.addr, &get("/fresh")).status, 200);
}

#[test]
fn connections_beyond_the_limit_get_503() {
    let srv = start(HttpConfig {
        max_connections: 2,
        ..HttpConfig::default()
    });
    // Two keep-alive connections, answered, hence counted and still open.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect(srv.addr);
        s.write_all(&get("/hold")).unwrap();
        assert_eq!(read_response(&mut s).status, 200);
        held.push(s);
    }
    let mut s = connect(srv.addr);
    s.write_all(&get("/third")).unwrap();
    let r = read_response(&mut s);
    assert_json_error(&r, 503);
    assert_eq!(r.header("connection"), Some("close"));
    read_until_closed(&mut s);

    // Closing one frees its slot (once its thread has seen the close).
    drop(held.pop());
    let t0 = Instant::now();
    loop {
        let r = roundtrip(srv.addr, &get("/later"));
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503);
        assert!(t0.elapsed() < GENEROUS, "slot never freed");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn slow_and_idle_clients_are_cut_off() {
    let srv = start(HttpConfig {
        io_timeout: Duration::from_millis(300),
        ..HttpConfig::default()
    });
    // Slowloris: a header byte every 50 ms, forever.
    let mut s = connect(srv.addr);
    s.write_all(b"GET / HTTP/1.1\r\nX-Slow: ").unwrap();
    let mut w = s.try_clone().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let trickler = thread::spawn(move || {
        let t0 = Instant::now();
        while !d.load(Ordering::Acquire) && t0.elapsed() < GENEROUS {
            if w.write_all(b"a").is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
    });
    let t0 = Instant::now();
    let got = read_until_closed(&mut s);
    done.store(true, Ordering::Release);
    trickler.join().unwrap();
    assert!(t0.elapsed() < GENEROUS);
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408 "),
        "{:?}",
        String::from_utf8_lossy(&got)
    );

    // A connection that never sends is closed too.
    let mut s = connect(srv.addr);
    assert!(read_until_closed(&mut s).is_empty());

    // So is a keep-alive connection left idle after a request.
    let mut s = connect(srv.addr);
    s.write_all(&get("/once")).unwrap();
    assert_eq!(read_response(&mut s).status, 200);
    assert!(read_until_closed(&mut s).is_empty());

    // A body that stalls half-way is cut off as well.
    let mut s = connect(srv.addr);
    s.write_all(b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\nhalf")
        .unwrap();
    let got = read_until_closed(&mut s);
    assert!(got.is_empty() || got.starts_with(b"HTTP/1.1 408 "));
    assert_eq!(srv.calls.load(Ordering::SeqCst), 1);
}

#[test]
fn stop_ends_the_accept_thread() {
    let mut srv = start_default();
    let mut idle = connect(srv.addr);
    idle.write_all(&get("/before")).unwrap();
    assert_eq!(read_response(&mut idle).status, 200);

    srv.stop.store(true, Ordering::Release);
    let handle = srv.handle.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        handle.join().unwrap();
        let _ = tx.send(());
    });
    rx.recv_timeout(GENEROUS)
        .expect("accept thread did not exit");
    // The idle keep-alive connection is closed as well.
    assert!(read_until_closed(&mut idle).is_empty());
}

#[test]
fn serve_refuses_unsafe_configs() {
    let open = TcpListener::bind("0.0.0.0:0").unwrap();
    let h: Handler = Arc::new(echo);
    let stop = Arc::new(AtomicBool::new(false));
    let err = http::serve(open, HttpConfig::default(), h.clone(), stop.clone()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);

    let lo = TcpListener::bind("127.0.0.1:0").unwrap();
    let empty_token = HttpConfig {
        token: Some(String::new()),
        ..HttpConfig::default()
    };
    assert!(http::serve(lo, empty_token, h, stop).is_err());
}

#[test]
fn loopback_detection() {
    for a in [
        "127.0.0.1:1",
        "127.1.2.3:1",
        "[::1]:1",
        "[::ffff:127.0.0.1]:1",
    ] {
        assert!(http::is_loopback(&a.parse().unwrap()), "{a}");
    }
    for a in [
        "10.0.0.1:1",
        "0.0.0.0:1",
        "[::]:1",
        "[::ffff:10.0.0.1]:1",
        "[fe80::1]:1",
    ] {
        assert!(!http::is_loopback(&a.parse().unwrap()), "{a}");
    }
}

#[test]
fn defaults() {
    let c = HttpConfig::default();
    assert_eq!(c.token, None);
    assert_eq!(c.max_body, 16 << 20);
    assert_eq!(c.max_header_bytes, 16 << 10);
    assert_eq!(c.max_connections, 64);
    assert_eq!(c.io_timeout, Duration::from_secs(5));
    let r = Response::error(404, "no such group");
    assert_eq!(r.status, 404);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v, json!({"error": "no such group"}));
    assert_eq!(
        Response::text(200, "ok").content_type,
        "text/plain; charset=utf-8"
    );
}

#[test]
fn duplicate_authorization_headers_are_400() {
    let srv = start(HttpConfig {
        token: Some("s3cret-token".into()),
        ..HttpConfig::default()
    });
    let good = "Authorization: Bearer s3cret-token\r\n";
    let bad = "Authorization: Bearer wrong\r\n";
    for (first, second) in [(good, bad), (bad, good), (good, good)] {
        for path in ["/metrics", "/health"] {
            let raw = format!("GET {path} HTTP/1.1\r\n{first}X-Between: 1\r\n{second}\r\n");
            let r = roundtrip(srv.addr, raw.as_bytes());
            assert_json_error(&r, 400);
            assert!(
                r.json()["error"]
                    .as_str()
                    .unwrap()
                    .contains("duplicate Authorization"),
                "{:?}",
                r.json()
            );
        }
    }
    assert_eq!(srv.calls.load(Ordering::SeqCst), 0, "handler never ran");
    let one = format!("GET /metrics HTTP/1.1\r\n{good}\r\n");
    assert_eq!(roundtrip(srv.addr, one.as_bytes()).status, 200);
}

#[test]
fn path_segments_are_decoded_one_by_one() {
    let srv = start_default();
    let r = roundtrip(srv.addr, &get("/groups/sip:a%2Fb@x"));
    assert_eq!(r.json()["path"], "/groups/sip:a/b@x");
    let req = Request {
        method: "GET".into(),
        path: "/groups/sip:a/b@x".into(),
        raw_path: "/groups/sip:a%2Fb@x?q=1".into(),
        query: Vec::new(),
        headers: Vec::new(),
        body: Vec::new(),
        peer: "127.0.0.1:1".parse().unwrap(),
    };
    assert_eq!(
        req.path_segments().unwrap(),
        vec!["groups".to_string(), "sip:a/b@x".to_string()]
    );
    let abs = Request {
        raw_path: "http://h:1/a%20b/c/".into(),
        ..req.clone()
    };
    assert_eq!(abs.path_segments().unwrap(), vec!["a b", "c"]);
    let bad = Request {
        raw_path: "/a/%zz".into(),
        ..req
    };
    assert_eq!(bad.path_segments(), None);
}

fn roundtrip_from(from: &str, addr: SocketAddr, raw: &[u8]) -> Resp {
    let mut s = connect_from(from, addr);
    s.write_all(raw).unwrap();
    read_response(&mut s)
}

/// Log lines of every test in this binary (the subscriber is global).
static LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    let _ = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(|| Capture)
        .try_init();
}

fn log_lines(needle: &[&str]) -> Vec<String> {
    let all = String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned();
    all.lines()
        .filter(|l| needle.iter().all(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}

#[test]
fn an_idle_flood_from_one_peer_cannot_fail_health_and_logs_are_throttled() {
    capture_logs();
    let srv = start(HttpConfig {
        token: Some("tok".into()),
        ..HttpConfig::default()
    });
    let flood: Vec<TcpStream> = (0..100)
        .map(|_| connect_from("127.0.0.77", srv.addr))
        .collect();
    thread::sleep(Duration::from_millis(200));
    for path in ["/health", "/ready"] {
        // From another peer, and from the flooding peer itself (probe slots).
        assert_eq!(roundtrip(srv.addr, &get(path)).status, 200, "{path}");
        assert_eq!(
            roundtrip_from("127.0.0.77", srv.addr, &get(path)).status,
            200,
            "{path} from the flooding peer"
        );
    }
    // Other peers still get full service; the flooding one only probes.
    let ok = b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer tok\r\n\r\n";
    assert_eq!(roundtrip(srv.addr, ok).status, 200);
    let r = roundtrip_from("127.0.0.77", srv.addr, ok);
    assert_json_error(&r, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    // 92+ refusals inside a second: one line, then one with the count.
    thread::sleep(Duration::from_millis(1100));
    drop(connect_from("127.0.0.77", srv.addr));
    thread::sleep(Duration::from_millis(100));
    let lines = log_lines(&["too many connections from this peer", "127.0.0.77"]);
    assert!(
        (1..=3).contains(&lines.len()),
        "{} lines: {lines:#?}",
        lines.len()
    );
    assert!(
        lines.iter().any(|l| !l.contains("suppressed=0")),
        "a line counts the suppressed ones: {lines:#?}"
    );
    drop(flood);
}

#[test]
fn an_idle_flood_from_many_peers_cannot_fail_health() {
    let cfg = HttpConfig::default();
    let stats = Arc::clone(&cfg.stats);
    let srv = start(cfg);
    // 30 peers x 8 (the per-peer cap) fill the pool of 64 and spill over.
    let mut flood = Vec::new();
    for p in 0..30 {
        for _ in 0..8 {
            flood.push(connect_from(&format!("127.0.1.{}", p + 1), srv.addr));
        }
    }
    let t0 = Instant::now();
    while stats.active.load(Ordering::SeqCst) < 64 {
        assert!(t0.elapsed() < GENEROUS, "pool never filled");
        thread::sleep(Duration::from_millis(10));
    }
    for path in ["/health", "/ready", "/health", "/ready"] {
        let r = roundtrip(srv.addr, &get(path));
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("connection"), Some("close"));
    }
    assert!(stats.over_pool.load(Ordering::SeqCst) >= 100);
    assert!(stats.probes_answered.load(Ordering::SeqCst) >= 4);
    // A full pool answers anything else 503, never hangs.
    assert_json_error(&roundtrip(srv.addr, &get("/other")), 503);
    drop(flood);
}

#[test]
fn a_slowloris_is_cut_off_by_the_header_timeout_and_health_stays_up() {
    let cfg = HttpConfig {
        header_timeout: Duration::from_millis(500),
        ..HttpConfig::default()
    };
    let stats = Arc::clone(&cfg.stats);
    let srv = start(cfg);
    let stop = Arc::new(AtomicBool::new(false));
    // 70 connections from 10 peers, each trickling a header byte every 100 ms.
    let trick: Vec<JoinHandle<(Duration, Vec<u8>)>> = (0..70)
        .map(|i| {
            let mut s = connect_from(&format!("127.0.2.{}", i % 10 + 1), srv.addr);
            let stop = stop.clone();
            thread::spawn(move || {
                let t0 = Instant::now();
                let _ = s.write_all(b"GET / HTTP/1.1\r\nX-Slow: ");
                let mut w = s.try_clone().unwrap();
                let writer = thread::spawn(move || {
                    while !stop.load(Ordering::Acquire) && w.write_all(b"a").is_ok() {
                        thread::sleep(Duration::from_millis(100));
                    }
                });
                let got = read_until_closed(&mut s);
                let took = t0.elapsed();
                let _ = s.shutdown(Shutdown::Both);
                let _ = writer.join();
                (took, got)
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(200));
    assert_eq!(roundtrip(srv.addr, &get("/health")).status, 200);
    for t in trick {
        let (took, got) = t.join().unwrap();
        // Well before io_timeout (5 s): the header timeout did it.
        assert!(took < Duration::from_millis(2500), "cut after {took:?}");
        assert!(
            got.is_empty()
                || got.starts_with(b"HTTP/1.1 408 ")
                || got.starts_with(b"HTTP/1.1 503 "),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    }
    stop.store(true, Ordering::Release);
    assert!(stats.header_timeouts.load(Ordering::SeqCst) >= 50);
    assert_eq!(roundtrip(srv.addr, &get("/health")).status, 200);
}

#[test]
fn a_slow_first_head_is_408_and_idle_connections_are_not_header_timeouts() {
    let cfg = HttpConfig {
        header_timeout: Duration::from_millis(300),
        ..HttpConfig::default()
    };
    let stats = Arc::clone(&cfg.stats);
    let srv = start(cfg);
    // Never a byte: closed after the header timeout, no answer, not counted.
    let t0 = Instant::now();
    let mut s = connect(srv.addr);
    assert!(read_until_closed(&mut s).is_empty());
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    // Idle after a response: the same (the header clock starts there).
    let mut s = connect(srv.addr);
    s.write_all(&get("/once")).unwrap();
    assert_eq!(read_response(&mut s).status, 200);
    let t0 = Instant::now();
    assert!(read_until_closed(&mut s).is_empty());
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(stats.header_timeouts.load(Ordering::SeqCst), 0);
    // Half a head: 408 with a JSON body, counted.
    let mut s = connect(srv.addr);
    s.write_all(b"GET / HTTP/1.1\r\nX-Half: ").unwrap();
    let r = read_response(&mut s);
    assert_json_error(&r, 408);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(read_until_closed(&mut s).is_empty());
    assert_eq!(stats.header_timeouts.load(Ordering::SeqCst), 1);
    assert_eq!(srv.calls.load(Ordering::SeqCst), 1);
}

#[test]
fn a_client_that_does_not_read_its_response_is_cut_off() {
    let cfg = HttpConfig {
        io_timeout: Duration::from_millis(300),
        ..HttpConfig::default()
    };
    let stats = Arc::clone(&cfg.stats);
    let srv = start(cfg);
    let mut s = connect(srv.addr);
    s.write_all(&get("/big")).unwrap();
    // Socket buffers take a few MiB of the 32; then the writes stall, and
    // after io_timeout (plus the lingering close) the connection is gone.
    let t0 = Instant::now();
    while stats.accepted.load(Ordering::SeqCst) == 0 || stats.active.load(Ordering::SeqCst) > 0 {
        assert!(
            t0.elapsed() < GENEROUS,
            "the stalled connection was never cut"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let got = read_until_closed(&mut s);
    assert!(got.starts_with(b"HTTP/1.1 200 "));
    assert!(
        got.len() < 32 << 20,
        "the whole response went out: {}",
        got.len()
    );
}

/// A handler that waits for `release` (at most 5 s) on `/block`, echoes
/// otherwise.
fn blocking_handler() -> (
    impl Fn(&Request) -> Response + Send + Sync,
    mpsc::Sender<()>,
) {
    let (release, rx) = mpsc::channel::<()>();
    let rx = std::sync::Mutex::new(rx);
    let f = move |req: &Request| {
        if req.path == "/block" {
            let _ = rx.lock().unwrap().recv_timeout(Duration::from_secs(5));
        }
        echo(req)
    };
    (f, release)
}

#[test]
fn a_blocked_handler_does_not_block_other_connections() {
    let (f, release) = blocking_handler();
    let srv = start_with(HttpConfig::default(), f);
    let mut blocked = connect(srv.addr);
    blocked.write_all(&get("/block")).unwrap();
    thread::sleep(Duration::from_millis(100));
    // Answered while /block still waits (an inline handler would stall
    // the whole runtime until the release).
    let mut other = connect(srv.addr);
    other
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    other.write_all(&get("/health")).unwrap();
    assert_eq!(read_response(&mut other).json()["path"], "/health");
    release.send(()).unwrap();
    assert_eq!(read_response(&mut blocked).json()["path"], "/block");
}

#[test]
fn stop_answers_the_request_in_hand_with_close() {
    let (f, release) = blocking_handler();
    let mut srv = start_with(HttpConfig::default(), f);
    let mut s = connect(srv.addr);
    s.write_all(&get("/block")).unwrap();
    thread::sleep(Duration::from_millis(100));
    srv.stop.store(true, Ordering::Release);
    thread::sleep(Duration::from_millis(200));
    release.send(()).unwrap();
    let r = read_response(&mut s);
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert!(read_until_closed(&mut s).is_empty());
    let t0 = Instant::now();
    srv.handle.take().unwrap().join().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // Nothing listens any more.
    assert!(TcpStream::connect(srv.addr).is_err());
}
