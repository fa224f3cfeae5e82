//! Instruction-count driver: runs the pure fast path (`route::process`) on
//! each benchmark message N times so `valgrind --tool=callgrind` gives a
//! noise-free instructions-per-message figure (`perf/icount.sh`).

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use cpm_edge::route::process;
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
        "none" => Vec::new(),
        other => {
            eprintln!("unknown message '{other}' (invite|message|none)");
            std::process::exit(2);
        }
    };
    let mut out = vec![0u8; 16384];
    let mut total = 0usize;
    if !msg.is_empty() {
        for _ in 0..n {
            let (o, _) = process(black_box(&msg), false, client, &t, &mut out);
            total += o.send().map_or(0, |(l, _)| l);
        }
    }
    println!("{which}: {n} messages, {total} bytes out");
}
