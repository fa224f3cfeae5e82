//! Any method, path, query and body through the admin API's endpoints on one
//! control plane (the embedded default configuration): never a panic, never
//! a 5xx (but `503` from `/ready` when no shard is up), and every body is
//! valid JSON or, for the text endpoints, the Prometheus text format.
#![no_main]

mod common;

use common::{cp, json, prometheus_text};
use cpm_edge::control::api;
use cpm_edge::control::http::Request;
use libfuzzer_sys::fuzz_target;

const METHODS: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];
const PREFIXES: [&str; 16] = [
    "/groups",
    "/groups/",
    "/groups/sip:grp1@groups.example.net",
    "/groups/batch",
    "/shards",
    "/shards/",
    "/shards/cs1/",
    "/policies",
    "/policies/default",
    "/policies/users/",
    "/policies/groups/",
    "/config",
    "/metrics",
    "/health",
    "/ready",
    "",
];

// Input: method byte, path-prefix byte, then the path suffix (and query
// after `?`) up to the first LF, then the body.
fuzz_target!(|data: &[u8]| {
    let [m, p, rest @ ..] = data else { return };
    let method = METHODS.get(*m as usize).copied().map_or_else(
        || String::from_utf8_lossy(&[*m]).into_owned(),
        str::to_string,
    );
    let (target, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let target = format!(
        "{}{}",
        PREFIXES[*p as usize % PREFIXES.len()],
        String::from_utf8_lossy(target)
    );
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q),
        None => (target.clone(), ""),
    };
    let query = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect();
    let req = Request {
        method,
        path,
        raw_path: target,
        query,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_vec(),
        peer: "127.0.0.1:40000".parse().unwrap(),
    };
    let resp = api::handle(cp(), &req);
    let ready = req.method == "GET" && req.path.trim_matches('/') == "ready";
    assert!(
        (200..500).contains(&resp.status) || (ready && resp.status == 503),
        "{} {:?} -> {}: {}",
        req.method,
        req.path,
        resp.status,
        String::from_utf8_lossy(&resp.body)
    );
    if resp.content_type.starts_with("application/json") {
        assert!(
            json::valid(&resp.body),
            "not JSON: {}",
            String::from_utf8_lossy(&resp.body)
        );
    } else {
        let text = std::str::from_utf8(&resp.body).expect("UTF-8 text");
        assert!(text == "ok\n" || prometheus_text(text), "{text}");
    }
});
