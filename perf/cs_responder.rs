//! `cpm-cs-responder`: a stand-in for the Conversation Server shards behind
//! the edge, cheap enough that the edge, not the responder, is the bottleneck
//! of a load test.
//!
//! This file owns the responder's command line, its single-threaded
//! poll + recvmmsg/sendmmsg loop over one socket per shard address, and the
//! construction of the `200 OK` answer. Shared plumbing lives in `common.rs`.
//!
//! Behaviour per received datagram:
//! - a request other than ACK: answer `200 OK` copying every Via line (in
//!   order), From, To (adding `;tag=cs1` when it has none), Call-ID and CSeq,
//!   with `Content-Length: 0`, sent from the socket it arrived on to the top
//!   Via's destination (`received`/`rport` when present, else sent-by);
//! - ACK: no answer;
//! - a response, or anything unparseable: skipped and counted. Never panics.
//!
//! Counters are printed when SIGINT/SIGTERM stops it.

#[path = "common.rs"]
mod common;

use clap::Parser;
use common::{MsgBatch, SendOutcome, SliceWriter};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Datagrams per recvmmsg/sendmmsg call.
const BATCH: usize = 64;
/// Receive slot size; a longer request is counted as bad (truncated).
const RECV_SLOT: usize = 8192;
/// Answer slot size; an answer that would not fit is dropped and counted.
const SEND_SLOT: usize = 8192;
/// Consecutive batches drained from one socket before moving on, so that one
/// busy shard cannot starve the others.
const MAX_BATCHES_PER_SOCKET: usize = 16;

#[derive(Parser, Debug)]
#[command(
    name = "cpm-cs-responder",
    about = "Answers SIP requests with 200 OK to the top Via (CS shard stand-in)"
)]
struct Args {
    /// Address of one CS shard (repeat for several, e.g. 127.0.0.1:7001..7004).
    #[arg(long, required = true)]
    listen: Vec<SocketAddr>,
    /// Pin the (single) responder thread to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    /// Kernel socket buffer size per socket, bytes.
    #[arg(long, default_value_t = 16 << 20)]
    sock_buf: usize,
    /// Do not print the listening banner.
    #[arg(long)]
    quiet: bool,
    /// Send every answer here instead of to the top Via (for the no-parse
    /// forwarder baseline, which adds no Via of its own).
    #[arg(long)]
    reply_to: Option<std::net::SocketAddrV4>,
}

#[derive(Default, Clone, Copy)]
struct Counters {
    /// Requests received (ACK included).
    requests: u64,
    /// 200 OK handed to the kernel.
    answers: u64,
    /// ACKs (received, deliberately not answered).
    acks: u64,
    /// SIP responses received (a responder has nothing to do with them).
    responses_ignored: u64,
    /// Unparseable, truncated, missing headers or no usable top Via.
    bad: u64,
    /// Answer did not fit in a send slot.
    too_big: u64,
    /// sendmmsg reported an error for an answer.
    send_errors: u64,
    /// recvmmsg reported an error.
    recv_errors: u64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.requests += o.requests;
        self.answers += o.answers;
        self.acks += o.acks;
        self.responses_ignored += o.responses_ignored;
        self.bad += o.bad;
        self.too_big += o.too_big;
        self.send_errors += o.send_errors;
        self.recv_errors += o.recv_errors;
    }
}

/// What to do with one received datagram.
enum Verdict {
    Answer(usize, SocketAddrV4),
    Ack,
    Response,
    Bad,
    TooBig,
}

/// Build the 200 OK for `req` into `out`.
fn build_answer(req: &[u8], out: &mut [u8]) -> Verdict {
    let (start, headers) = common::split_message(req);
    let method = match common::request_method(start) {
        Some(m) => m,
        None if common::status_code(start).is_some() => return Verdict::Response,
        None => return Verdict::Bad,
    };
    if method == b"ACK" {
        return Verdict::Ack;
    }
    let mut w = SliceWriter::new(out);
    w.put(b"SIP/2.0 200 OK\r\n");
    let mut dest: Option<SocketAddrV4> = None;
    let mut saw_via = false;
    let (mut from, mut to, mut call_id, mut cseq) = (None, None, None, None);
    for h in headers {
        if common::is_header(h.name, b"Via", b"v") {
            if !saw_via {
                saw_via = true;
                dest = common::via_destination(h.value);
            }
            // Vias are copied as they come, so their order is preserved.
            w.put(h.raw);
            w.put(b"\r\n");
        } else if from.is_none() && common::is_header(h.name, b"From", b"f") {
            from = Some(h);
        } else if to.is_none() && common::is_header(h.name, b"To", b"t") {
            to = Some(h);
        } else if call_id.is_none() && common::is_header(h.name, b"Call-ID", b"i") {
            call_id = Some(h);
        } else if cseq.is_none() && common::is_header(h.name, b"CSeq", b"") {
            cseq = Some(h);
        }
    }
    let (Some(dest), Some(from), Some(to), Some(call_id), Some(cseq)) =
        (dest, from, to, call_id, cseq)
    else {
        return Verdict::Bad;
    };
    w.put(from.raw);
    w.put(b"\r\n");
    w.put(to.raw);
    if !common::has_tag(to.value) {
        w.put(b";tag=cs1");
    }
    w.put(b"\r\n");
    w.put(call_id.raw);
    w.put(b"\r\n");
    w.put(cseq.raw);
    w.put(b"\r\nContent-Length: 0\r\n\r\n");
    match w.finish() {
        Some(len) => Verdict::Answer(len, dest),
        None => Verdict::TooBig,
    }
}

/// Drain up to MAX_BATCHES_PER_SOCKET batches from `sock`, answering each.
fn serve_socket(
    sock: &UdpSocket,
    rx: &mut MsgBatch,
    tx: &mut MsgBatch,
    c: &mut Counters,
    reply_to: Option<std::net::SocketAddrV4>,
) {
    let fd = sock.as_raw_fd();
    for _ in 0..MAX_BATCHES_PER_SOCKET {
        let n = match rx.recv(fd, BATCH) {
            Ok(0) => return,
            Ok(n) => n,
            Err(_) => {
                c.recv_errors += 1;
                return;
            }
        };
        let mut out = 0usize;
        for i in 0..n {
            let (data, trunc, _src) = rx.received(i);
            if trunc {
                c.bad += 1;
                continue;
            }
            match build_answer(data, tx.slot_mut(out)) {
                Verdict::Answer(len, dst) => {
                    c.requests += 1;
                    tx.set_outgoing(out, len, reply_to.unwrap_or(dst));
                    out += 1;
                }
                Verdict::Ack => {
                    c.requests += 1;
                    c.acks += 1;
                }
                Verdict::Response => c.responses_ignored += 1,
                Verdict::Bad => c.bad += 1,
                Verdict::TooBig => {
                    c.requests += 1;
                    c.too_big += 1;
                }
            }
        }
        // Blocking send (flags 0): a full socket buffer is back-pressure on
        // this responder, not a reason to drop answers and fake edge loss.
        let mut sent = 0usize;
        while sent < out {
            match tx.send(fd, sent, out, 0) {
                SendOutcome::Sent(k) => {
                    c.answers += k as u64;
                    sent += k;
                }
                SendOutcome::WouldBlock | SendOutcome::Failed(_) => {
                    // Skip the failing datagram, keep the rest of the batch.
                    c.send_errors += 1;
                    sent += 1;
                }
            }
        }
        if n < BATCH {
            return;
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = common::install_stop_handlers() {
        eprintln!("cpm-cs-responder: cannot install signal handlers: {e}");
        return ExitCode::from(1);
    }
    if let Some(cpu) = args.cpu {
        if let Err(e) = common::pin_to_cpu(cpu) {
            eprintln!("cpm-cs-responder: {e}");
            return ExitCode::from(1);
        }
    }
    if args.listen.len() > 64 {
        eprintln!("cpm-cs-responder: at most 64 --listen addresses");
        return ExitCode::from(2);
    }
    let mut socks = Vec::with_capacity(args.listen.len());
    for addr in &args.listen {
        match common::bind_udp(*addr, args.sock_buf) {
            Ok((s, rcv, snd)) => {
                if !args.quiet {
                    eprintln!(
                        "cpm-cs-responder: listening on {addr} (rcvbuf {rcv} B, sndbuf {snd} B)"
                    );
                }
                socks.push(s);
            }
            Err(e) => {
                eprintln!("cpm-cs-responder: cannot bind {addr}: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let fds: Vec<libc::c_int> = socks.iter().map(|s| s.as_raw_fd()).collect();
    let mut ready = vec![false; fds.len()];
    let mut rx = MsgBatch::new(BATCH, RECV_SLOT);
    let mut tx = MsgBatch::new(BATCH, SEND_SLOT);
    let mut per_sock = vec![Counters::default(); socks.len()];
    let started = Instant::now();

    while !common::stop_requested() {
        // Sleep in the kernel while idle (the responder shares a CPU with
        // the generator); 100 ms cap so a stop signal is seen promptly.
        common::wait_readable(&fds, Duration::from_millis(100), &mut ready);
        for (i, sock) in socks.iter().enumerate() {
            if ready[i] {
                serve_socket(sock, &mut rx, &mut tx, &mut per_sock[i], args.reply_to);
            }
        }
    }

    let mut total = Counters::default();
    for (addr, c) in args.listen.iter().zip(&per_sock) {
        eprintln!(
            "cpm-cs-responder: {addr}: requests={} answers={} acks={}",
            c.requests, c.answers, c.acks
        );
        total.add(c);
    }
    println!(
        "RESPONDER requests={} answers={} acks={} responses_ignored={} bad={} too_big={} \
         send_errors={} recv_errors={} uptime_s={:.3}",
        total.requests,
        total.answers,
        total.acks,
        total.responses_ignored,
        total.bad,
        total.too_big,
        total.send_errors,
        total.recv_errors,
        started.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_invite_copying_vias() {
        let req = b"INVITE sip:g@h SIP/2.0\r\n\
            Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKedge;received=127.0.0.9;rport=6000\r\n\
            Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK1;rport=40000;received=127.0.0.1\r\n\
            From: <sip:u@e>;tag=a\r\nTo: <sip:g@h>\r\nCall-ID: 1-x@lg\r\nCSeq: 1 INVITE\r\n\
            Content-Length: 0\r\n\r\n";
        let mut out = [0u8; 2048];
        match build_answer(req, &mut out) {
            Verdict::Answer(len, dst) => {
                assert_eq!(dst, "127.0.0.9:6000".parse().unwrap());
                let s = std::str::from_utf8(&out[..len]).unwrap();
                assert!(s.starts_with("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;"));
                assert!(s.contains("\r\nVia: SIP/2.0/UDP 127.0.0.1:40000;"));
                assert!(s.contains("\r\nTo: <sip:g@h>;tag=cs1\r\n"));
                assert!(s.ends_with("CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"));
            }
            _ => panic!("expected an answer"),
        }
        let ack = b"ACK sip:g@h SIP/2.0\r\nVia: SIP/2.0/UDP 1.1.1.1\r\n\r\n";
        assert!(matches!(build_answer(ack, &mut out), Verdict::Ack));
        assert!(matches!(build_answer(b"\x00\xff", &mut out), Verdict::Bad));
        assert!(matches!(
            build_answer(b"SIP/2.0 200 OK\r\n\r\n", &mut out),
            Verdict::Response
        ));
        let mut small = [0u8; 20];
        assert!(matches!(build_answer(req, &mut small), Verdict::TooBig));
    }
}
