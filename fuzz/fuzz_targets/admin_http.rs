//! Any bytes as one to four client connections into the admin HTTP server:
//! the same hyper connection handling `serve` runs (`Connections::serve`,
//! over in-memory pipes instead of sockets), the real API handler over one
//! control plane. Never a panic, never a hang, never a 500; the output of
//! every connection is a sequence of well-formed HTTP/1.x responses: a
//! status line and fields that parse, a `Content-Length` that frames the
//! body, nothing after a `Connection: close`, JSON bodies that are JSON and
//! `/metrics` that is Prometheus text.
//!
//! The runtime's clock is paused, so the server's timeouts (header, body,
//! lingering close) pass at once when nothing else can run.
#![no_main]

mod common;

use common::{cp, json, prometheus_text};
use cpm_edge::control::api;
use cpm_edge::control::http::{Connections, Handler, HttpConfig, Request};
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "fuzz-token";
/// Between two connections' bytes in the input.
const SPLIT: &[u8] = b"\n--\n";
const MAX_CONNS: usize = 4;
/// Virtual time for one input; far beyond every server timeout.
const LIMIT: Duration = Duration::from_secs(3600);

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime")
    })
}

/// The server without a token, and one with [`TOKEN`].
fn servers() -> &'static [Connections; 2] {
    static S: OnceLock<[Connections; 2]> = OnceLock::new();
    S.get_or_init(|| {
        let handler: Handler = Arc::new(|req: &Request| api::handle(cp(), req));
        let open = Connections::new(HttpConfig::default(), Arc::clone(&handler)).expect("config");
        let with_token = HttpConfig {
            token: Some(TOKEN.into()),
            ..HttpConfig::default()
        };
        [open, Connections::new(with_token, handler).expect("config")]
    })
}

// Input: a flags byte (bit 0: token configured; bit 1: the client keeps its
// side open instead of shutting it after writing; bits 2-5: connection i is
// a probe slot), then the connections' bytes separated by SPLIT.
fuzz_target!(|data: &[u8]| {
    let [flags, rest @ ..] = data else { return };
    let conns = servers()[usize::from(flags & 1)].clone();
    let keep_open = flags & 2 != 0;
    let inputs: Vec<Vec<u8>> = split(rest).take(MAX_CONNS).map(<[u8]>::to_vec).collect();
    let outputs = runtime().block_on(async {
        let mut clients = tokio::task::JoinSet::new();
        for (i, bytes) in inputs.into_iter().enumerate() {
            let probe = flags & (4 << i) != 0;
            let conns = conns.clone();
            clients.spawn(async move {
                let peer: SocketAddr = ([127, 0, 0, 1], 40000 + i as u16).into();
                let (client, server) = tokio::io::duplex(16 << 10);
                let srv = tokio::spawn(async move { conns.serve(server, peer, probe).await });
                let (mut rd, mut wr) = tokio::io::split(client);
                let write = async move {
                    // The server may close first: what it did not read is lost.
                    let _ = wr.write_all(&bytes).await;
                    if !keep_open {
                        let _ = wr.shutdown().await;
                    }
                    wr
                };
                let read = async move {
                    let mut out = Vec::new();
                    rd.read_to_end(&mut out).await.map(|_| out)
                };
                let (_wr, out) = tokio::join!(write, read);
                if let Err(e) = srv.await {
                    panic!("connection task failed: {e}");
                }
                (i, out.expect("duplex read"))
            });
        }
        let mut outputs = Vec::new();
        let all = async {
            while let Some(r) = clients.join_next().await {
                outputs.push(r.expect("client task"));
            }
        };
        tokio::time::timeout(LIMIT, all)
            .await
            .expect("a connection never ended");
        outputs
    });
    for (i, out) in outputs {
        check_stream(&out).unwrap_or_else(|e| {
            panic!(
                "connection {i}: {e}\n--- output ---\n{}",
                String::from_utf8_lossy(&out)
            )
        });
    }
});

fn split(mut rest: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest
            .windows(SPLIT.len())
            .position(|w| w == SPLIT)
            .unwrap_or(rest.len());
        let (one, tail) = rest.split_at(end);
        rest = tail.get(SPLIT.len()..).unwrap_or(&[]);
        Some(one)
    })
}

/// The whole output of one connection: responses back to back.
fn check_stream(mut out: &[u8]) -> Result<(), String> {
    while !out.is_empty() {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut fields);
        let head_len = match resp.parse(out) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Err("a response head is cut".into()),
            Err(e) => return Err(format!("a response head does not parse: {e}")),
        };
        let status = resp.code.ok_or("no status")?;
        if status == 100 {
            out = &out[head_len..];
            continue;
        }
        if !(200..=599).contains(&status) || (status >= 500 && status != 503) {
            return Err(format!("status {status}"));
        }
        let field = |name: &str| -> Result<Option<&str>, String> {
            let mut it = resp
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name));
            let first = it.next();
            if it.next().is_some() {
                return Err(format!("two {name} fields"));
            }
            first
                .map(|h| std::str::from_utf8(h.value).map_err(|_| format!("{name} is not text")))
                .transpose()
        };
        let len: usize = field("content-length")?
            .ok_or("no Content-Length")?
            .parse()
            .map_err(|_| "Content-Length is not a number".to_string())?;
        let close = field("connection")?.is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let content_type = field("content-type")?.unwrap_or("").to_string();
        let rest = &out[head_len..];
        // A HEAD answer has no body; no API body starts like a status line.
        let head_answer = len > 0 && (rest.is_empty() || rest.starts_with(b"HTTP/1."));
        let body = if head_answer {
            &[][..]
        } else {
            rest.get(..len).ok_or("the body is cut")?
        };
        if !head_answer && content_type.starts_with("application/json") && !json::valid(body) {
            return Err("a JSON body that is not JSON".into());
        }
        if !head_answer && content_type.starts_with("text/plain; version=0.0.4") {
            let text = std::str::from_utf8(body).map_err(|_| "metrics not UTF-8")?;
            if !prometheus_text(text) {
                return Err("metrics are not Prometheus text".into());
            }
        }
        out = &rest[body.len()..];
        if close && !out.is_empty() {
            return Err("bytes after Connection: close".into());
        }
    }
    Ok(())
}
