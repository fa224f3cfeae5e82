//! Instruction-count driver: runs the pure fast path on each benchmark
//! message N times, through the worker's entry point (`pipeline::run`, with no
//! admission control, into one reused `Message`), so `valgrind --tool=callgrind` gives a
//! noise-free instructions-per-message figure (`perf/icount.sh`).

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use cpm_edge::pipeline::{process, run, Datagram, Open};
use cpm_edge::sip::scan::Message;
use std::hint::black_box;
use std::net::SocketAddr;

fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "invite".into());
    let n: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let t = tables();
    let client: SocketAddr = "192.0.2.10:5062".parse().expect("addr");
    let msg = match which.as_str() {
        "invite" => invite_to_group(
            "grp2",
            "alice",
            "P-Asserted-Identity: <sip:alice@example.net>\r\n",
        ),
        "message" => message_cpim("carol@example.net", "bob"),
        "response" => return response(n, &t, client),
        "none" => Vec::new(),
        other => {
            eprintln!("unknown message '{other}' (invite|message|response|none)");
            std::process::exit(2);
        }
    };
    let mut out = vec![0u8; 16384];
    let mut total = 0usize;
    let mut m = Message::default();
    if !msg.is_empty() {
        for _ in 0..n {
            let d = Datagram {
                buf: black_box(&msg),
                truncated: false,
                src: client,
                flow: None,
            };
            let o = run(&d, &t, &mut Open::default(), &mut out, &mut m);
            total += o.send().map_or(0, |(l, _)| l);
        }
    }
    println!("{which}: {n} messages, {total} bytes out");
}

/// The CS shard's `200 OK` to a forwarded INVITE (both Vias, To tag, SDP),
/// relayed N times: the response half of a pair.
fn response(n: usize, t: &cpm_edge::route::Tables, client: SocketAddr) {
    let invite = invite_to_group(
        "grp2",
        "alice",
        "P-Asserted-Identity: <sip:alice@example.net>\r\n",
    );
    let mut out = vec![0u8; 16384];
    let (o, _) = process(&invite, false, client, t, &mut out);
    let Some((len, shard)) = o.send() else {
        eprintln!("the INVITE was not forwarded");
        std::process::exit(1);
    };
    let req = String::from_utf8_lossy(&out[..len]).into_owned();
    let sdp = "v=0\r\no=cs 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=message 9 TCP/MSRP *\r\na=accept-types:message/cpim\r\na=path:msrp://127.0.0.1:9/s;tcp\r\n";
    let resp = format!(
        "SIP/2.0 200 OK\r\n{}\r\n{}\r\n{};tag=cs\r\n{}\r\n{}\r\nContact: <sip:cs@127.0.0.1>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        header(&req, "Via").join("\r\n"),
        header(&req, "From")[0],
        header(&req, "To")[0],
        header(&req, "Call-ID")[0],
        header(&req, "CSeq")[0],
        sdp.len()
    )
    .into_bytes();
    let mut total = 0usize;
    let mut m = Message::default();
    for _ in 0..n {
        let d = Datagram {
            buf: black_box(&resp),
            truncated: false,
            src: shard,
            flow: None,
        };
        let o = run(&d, t, &mut Open::default(), &mut out, &mut m);
        total += o.send().map_or(0, |(l, _)| l);
    }
    if total == 0 {
        eprintln!("the 200 OK was not relayed");
        std::process::exit(1);
    }
    println!("response: {n} messages, {total} bytes out");
}
