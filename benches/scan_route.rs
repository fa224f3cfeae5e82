//! Scan + route + rewrite per message, the whole pure fast path with no
//! sockets (criterion prints ns per message). Run: `cargo bench --bench scan_route`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use cpm_edge::pipeline::{process, Outcome};
use cpm_edge::sip::scan::scan;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use std::net::SocketAddr;

fn bench(c: &mut Criterion) {
    let t = tables();
    let client: SocketAddr = "192.0.2.10:5062".parse().unwrap();
    let cs: SocketAddr = "127.0.0.1:7001".parse().unwrap();
    let invite = invite_to_group(
        "grp2",
        "alice",
        "P-Asserted-Identity: <sip:alice@example.net>\r\n",
    );
    let message = message_cpim("carol@example.net", "bob");
    let mut out = vec![0u8; 16384];
    let (o, _) = process(&invite, false, client, &t, &mut out);
    let (len, _) = o.send().unwrap();
    let fwd = String::from_utf8_lossy(&out[..len]).into_owned();
    let vias: Vec<&str> = header(&fwd, "Via");
    let ok = format!(
        "SIP/2.0 200 OK\r\n{}\r\n{}\r\nRecord-Route: <sip:127.0.0.1:5060;lr>\r\nFrom: <sip:alice@example.net>;tag=a73kszlfl\r\nTo: <sip:grp2@groups.example.net>;tag=cs\r\nCall-ID: alice-call-1@192.0.2.10\r\nCSeq: 1 INVITE\r\nContact: <sip:cs@127.0.0.1:7001>\r\nContent-Length: 0\r\n\r\n",
        vias[0], vias[1]
    )
    .into_bytes();
    assert!(matches!(
        process(&ok, false, cs, &t, &mut out).0,
        Outcome::Relayed { .. }
    ));
    eprintln!(
        "INVITE {} bytes, MESSAGE {} bytes, 200 OK {} bytes",
        invite.len(),
        message.len(),
        ok.len()
    );

    let mut g = c.benchmark_group("per_message");
    g.throughput(Throughput::Elements(1));
    g.bench_function("scan_invite", |b| {
        b.iter(|| black_box(scan(black_box(&invite))))
    });
    g.bench_function("process_invite_leg1", |b| {
        b.iter(|| black_box(process(black_box(&invite), false, client, &t, &mut out).0))
    });
    g.bench_function("process_message_leg1", |b| {
        b.iter(|| black_box(process(black_box(&message), false, client, &t, &mut out).0))
    });
    g.bench_function("process_200_relay", |b| {
        b.iter(|| black_box(process(black_box(&ok), false, cs, &t, &mut out).0))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
