//! Flood protection over real sockets: per-source rate limits (reply and
//! drop modes, shards and allow-listed sources exempt), the small burst of
//! new sources, the per-worker budget of refusal answers (no reflection per
//! flood packet) and overload shedding of new INVITEs while in-dialog
//! traffic keeps flowing. Each flood test checks that every datagram ends in
//! exactly one counted outcome and prints its amplification (answer bytes
//! out / request bytes in).

mod common;
use common::capture::{enter_fresh_netns, Capture};
use common::*;
use cpm_edge::app::App;
use cpm_edge::config::{Config, Valid};
use cpm_edge::dataplane::stats::Snapshot;
use cpm_edge::pipeline::{process_admitted, Outcome};
use cpm_edge::route::ForwardKind;
use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

fn edge_toml(port: u16, shards: &[UdpSocket], extra: &str) -> String {
    let mut toml = format!("[listen]\naddr = \"127.0.0.1:{port}\"\n[admin]\nbind = \"\"\n[health]\nenabled = false\n[workers]\ncount = 1\n{extra}\n");
    for (i, s) in shards.iter().enumerate() {
        toml += &format!(
            "[[shard]]\nname = \"cs{}\"\naddr = \"{}\"\n",
            i + 1,
            s.local_addr().unwrap()
        );
    }
    toml
}

fn valid(port: u16, shards: &[UdpSocket], extra: &str) -> Valid {
    Config::parse(&edge_toml(port, shards, extra))
        .unwrap()
        .validate()
        .unwrap()
}

fn app(shards: &[UdpSocket], extra: &str) -> App {
    App::start(&valid(free_port(), shards, extra)).unwrap()
}

fn invite(from: &UdpSocket, n: usize) -> Vec<u8> {
    String::from_utf8(invite_to_group("grp1", &format!("u{n}"), ""))
        .unwrap()
        .replace("192.0.2.10:5062", &from.local_addr().unwrap().to_string())
        .replace(&format!("u{n}-call-1@192.0.2.10"), &format!("lim-{n}"))
        .into_bytes()
}

/// Collect Call-IDs arriving at the shards and the client until `n` are accounted for.
fn collect(shards: &[UdpSocket], client: &UdpSocket, n: usize) -> (HashSet<String>, Vec<String>) {
    let mut fwd = HashSet::new();
    let mut answers = Vec::new();
    let mut buf = vec![0u8; 65536];
    for s in shards.iter().chain([client]) {
        s.set_nonblocking(true).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = Instant::now();
    // Stop when all are accounted for, or nothing more came for 500 ms
    // (drop mode: the rest never arrives).
    while fwd.len() + answers.len() < n
        && Instant::now() < deadline
        && last.elapsed() < Duration::from_millis(500)
    {
        let mut idle = true;
        for s in shards {
            while let Ok((len, _)) = s.recv_from(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..len]).into_owned();
                fwd.insert(header(&m, "Call-ID")[0].to_string());
                idle = false;
            }
        }
        while let Ok((len, _)) = client.recv_from(&mut buf) {
            answers.push(String::from_utf8_lossy(&buf[..len]).into_owned());
            idle = false;
        }
        if idle {
            std::thread::sleep(Duration::from_millis(2));
        } else {
            last = Instant::now();
        }
    }
    (fwd, answers)
}

/// (forwarded, answered, dropped) over every counter of the edge.
fn outcomes(s: &Snapshot) -> (u64, u64, u64) {
    let fwd = s.forwarded.iter().map(|(_, v)| v).sum();
    let ans = s.replies.iter().map(|(_, v)| v).sum::<u64>() + s.replies_other;
    let drop = s.drops.iter().map(|(_, v)| v).sum();
    (fwd, ans, drop)
}

/// Wait until the edge has an outcome for `n` datagrams (or 10 s passed).
fn accounted(snap: impl Fn() -> Snapshot, n: usize) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = snap();
        let (f, a, d) = outcomes(&s);
        if (f + a + d) as usize >= n || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Answers the budget allows in `t`: the burst, the rate over `t`, and one
/// for the ms rounding of the worker's clock.
fn budget(burst: usize, rate: usize, t: Duration) -> usize {
    burst + (rate as f64 * t.as_secs_f64()).ceil() as usize + 1
}

/// Trust-boundary class 11 seen from outside: every datagram `edge` sent
/// went to a shard or `client`, and the answer bytes the capture saw reach
/// `client` per byte in stay below `bound`.
fn assert_captured(
    cap: &Capture,
    edge: SocketAddr,
    shards: &[UdpSocket],
    client: &UdpSocket,
    bytes_in: usize,
    bound: f64,
) {
    let me = client.local_addr().unwrap();
    let mut allowed: Vec<SocketAddr> = shards.iter().map(|s| s.local_addr().unwrap()).collect();
    allowed.push(me);
    let out = cap.assert_sent_only_to(edge, &allowed);
    let back: usize = out.iter().filter(|d| d.dst == me).map(|d| d.len).sum();
    let amp = back as f64 / bytes_in as f64;
    println!(
        "captured: {} datagrams from the edge, {back} bytes back to the flooder ({amp:.4})",
        out.len()
    );
    assert!(amp < bound, "{amp}");
}

fn amplification(label: &str, answers: &[String], bytes_in: usize) -> f64 {
    let out: usize = answers.iter().map(|a| a.len()).sum();
    let amp = out as f64 / bytes_in as f64;
    println!(
        "amplification [{label}]: {} answers, {out} bytes out / {bytes_in} bytes in = {amp:.4}",
        answers.len()
    );
    amp
}

#[test]
fn a_flood_from_one_source_gets_answers_bounded_by_the_reply_budget() {
    enter_fresh_netns();
    let cap = Capture::start();
    let shards: Vec<UdpSocket> = (0..2).map(|_| sock()).collect();
    let a = app(
        &shards,
        "[limits]\nper_source_rate = 20\nper_source_burst = 10\nover_limit = \"reply\"\nreply_rate = 50\nreply_burst = 5\nshed_at_queue_pct = 0\n",
    );
    let edge = a.server.local_addr;
    let client = sock();
    big_rcvbuf(&client);
    for s in &shards {
        big_rcvbuf(s);
    }
    const N: usize = 1000;
    let start = Instant::now();
    let mut bytes_in = 0;
    for i in 0..N {
        let m = invite(&client, i);
        bytes_in += m.len();
        client.send_to(&m, edge).unwrap();
    }
    accounted(|| a.server.snapshot(), N);
    // Every answer left the edge within `t`.
    let t = start.elapsed();
    let (fwd, answers) = collect(&shards, &client, N);
    let snap = a.server.snapshot();
    let (f, r, d) = outcomes(&snap);
    assert_eq!(f + r + d, N as u64, "one outcome per datagram: {snap:?}");
    assert_eq!((f as usize, r as usize), (fwd.len(), answers.len()));
    assert_eq!(d, snap.drop_count("rate_limited"), "{snap:?}");
    assert_eq!(snap.rate_limited, r + d);
    let bound = budget(5, 50, t);
    assert!(
        (5..=bound).contains(&answers.len()),
        "answers {} not within the burst 5 ..= {bound} ({t:?})",
        answers.len()
    );
    assert!(
        (4..=budget(4, 20, t)).contains(&fwd.len()),
        "a new source: its small burst of 4 (+ refill) passes: {}",
        fwd.len()
    );
    for a in &answers {
        assert!(
            a.starts_with("SIP/2.0 503 Service Unavailable - Rate Limit Exceeded\r\n"),
            "{a}"
        );
        assert_eq!(header(a, "Retry-After"), vec!["Retry-After: 1"]);
    }
    let amp = amplification("rate limit, 1 source, reply_rate 50", &answers, bytes_in);
    assert!(amp < 0.05, "{amp}");
    assert_captured(&cap, edge, &shards, &client, bytes_in, 0.05);
    // A CS shard is never limited: 100 requests from cs2's address all pass.
    let cs2 = &shards[1];
    for i in 0..100 {
        cs2.send_to(&invite(cs2, 1000 + i), edge).unwrap();
    }
    let before = a.server.snapshot().rate_limited;
    let (fwd2, _) = collect(&shards, &client, 100);
    assert_eq!(fwd2.len(), 100);
    assert_eq!(a.server.snapshot().rate_limited, before);
    a.stop().unwrap();
}

#[test]
fn rotating_source_addresses_get_only_the_small_new_source_burst() {
    enter_fresh_netns();
    let cap = Capture::start();
    let shards: Vec<UdpSocket> = (0..1).map(|_| sock()).collect();
    big_rcvbuf(&shards[0]);
    let a = app(
        &shards,
        "[limits]\nper_source_rate = 1\nper_source_burst = 10\nnew_source_burst = 3\nover_limit = \"drop\"\nshed_at_queue_pct = 0\n",
    );
    let edge = a.server.local_addr;
    // 199 source addresses on lo, each with a full burst's worth.
    let sources: Vec<UdpSocket> = (2..=200u8)
        .map(|i| UdpSocket::bind((Ipv4Addr::new(127, 0, 0, i), 0)).unwrap())
        .collect();
    const BURST: usize = 10;
    for (i, s) in sources.iter().enumerate() {
        for k in 0..BURST {
            s.send_to(&invite(s, i * 100 + k), edge).unwrap();
        }
    }
    let total = sources.len() * BURST;
    accounted(|| a.server.snapshot(), total);
    let idle = sock();
    let (fwd, _) = collect(&shards, &idle, total);
    let mut per_source: HashMap<usize, usize> = HashMap::new();
    for id in &fwd {
        let n: usize = id.trim_start_matches("Call-ID: lim-").parse().unwrap();
        *per_source.entry(n / 100).or_default() += 1;
    }
    let snap = a.server.snapshot();
    assert_eq!(
        fwd.len() as u64 + snap.drop_count("rate_limited"),
        total as u64,
        "{snap:?}"
    );
    assert_eq!(
        outcomes(&snap),
        (fwd.len() as u64, 0, total as u64 - fwd.len() as u64)
    );
    // 1/s refills nothing within a source's back-to-back burst.
    for i in 0..sources.len() {
        let got = per_source.get(&i).copied().unwrap_or(0);
        assert!(
            (3..=4).contains(&got),
            "source {i} got {got} through, not 3"
        );
    }
    println!(
        "rotating sources: {} sources x {BURST} sent, {} forwarded ({:.2} per source)",
        sources.len(),
        fwd.len(),
        fwd.len() as f64 / sources.len() as f64
    );
    // Drop mode: not one datagram back to any of the (spoofable) sources.
    let out = cap.assert_sent_only_to(edge, &[shards[0].local_addr().unwrap()]);
    assert_eq!(
        out.len(),
        fwd.len(),
        "only the forwarded INVITEs left the edge"
    );
    a.stop().unwrap();
}

#[test]
fn drop_mode_counts_silently_and_the_allow_list_exempts() {
    let shards: Vec<UdpSocket> = (0..1).map(|_| sock()).collect();
    let a = app(
        &shards,
        "[limits]\nper_source_rate = 20\nper_source_burst = 5\nover_limit = \"drop\"\n",
    );
    let edge = a.server.local_addr;
    let client = sock();
    for i in 0..50 {
        client.send_to(&invite(&client, i), edge).unwrap();
    }
    let (fwd, answers) = collect(&shards, &client, 50);
    assert!(answers.is_empty(), "drop mode answers nothing");
    let snap = a.server.snapshot();
    assert_eq!(fwd.len() as u64 + snap.drop_count("rate_limited"), 50);
    assert!(snap.drop_count("rate_limited") >= 40);
    a.stop().unwrap();

    let a = app(
        &shards,
        "[limits]\nper_source_rate = 20\nper_source_burst = 5\nallow = [\"127.0.0.0/8\"]\n",
    );
    let edge = a.server.local_addr;
    for i in 0..50 {
        client.send_to(&invite(&client, 100 + i), edge).unwrap();
    }
    let (fwd, answers) = collect(&shards, &client, 50);
    assert_eq!(
        (fwd.len(), answers.len()),
        (50, 0),
        "allow-listed source is not limited"
    );
    a.stop().unwrap();
}

#[test]
fn overload_sheds_new_invites_only() {
    let t = tables();
    let client: std::net::SocketAddr = "192.0.2.10:5062".parse().unwrap();
    let mut out = vec![0u8; 16384];
    let (o, _) = process_admitted(
        &invite_to_group("grp1", "alice", ""),
        false,
        client,
        &t,
        &mut out,
        true,
    );
    let Outcome::Replied { len, code: 503, .. } = o else {
        panic!("{o:?}")
    };
    let resp = String::from_utf8_lossy(&out[..len]).into_owned();
    assert!(resp.starts_with("SIP/2.0 503 Service Unavailable - Overloaded\r\n"));
    assert_eq!(header(&resp, "Retry-After"), vec!["Retry-After: 1"]);
    // In-dialog BYE, CANCEL and a response keep flowing.
    let bye = wire("BYE sip:cs@127.0.0.1:7002 SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKb\nRoute: <sip:127.0.0.1:5060;lr>\nMax-Forwards: 70\nFrom: <sip:alice@example.net>;tag=a\nTo: <sip:grp1@groups.example.net>;tag=b\nCall-ID: c1\nCSeq: 2 BYE\nContent-Length: 0\n\n");
    let (o, _) = process_admitted(&bye, false, client, &t, &mut out, true);
    assert!(
        matches!(
            o,
            Outcome::Forwarded {
                kind: ForwardKind::InDialog,
                ..
            }
        ),
        "{o:?}"
    );
    let reinvite = String::from_utf8(invite_to_group("grp1", "alice", ""))
        .unwrap()
        .replace(
            "To: <sip:grp1@groups.example.net>",
            "To: <sip:grp1@groups.example.net>;tag=b",
        );
    let (o, _) = process_admitted(reinvite.as_bytes(), false, client, &t, &mut out, true);
    assert!(
        matches!(o, Outcome::Forwarded { .. }),
        "a re-INVITE is in-dialog: {o:?}"
    );
    let (o, _) = process_admitted(
        &invite_to_group("grp1", "alice", ""),
        false,
        client,
        &t,
        &mut out,
        false,
    );
    assert!(
        matches!(o, Outcome::Forwarded { .. }),
        "not overloaded: forwarded"
    );
    // Only a dialog-creating INVITE is ever shed.
    let inv = String::from_utf8(invite_to_group("grp1", "alice", "")).unwrap();
    let sheddable =
        |text: &str| cpm_edge::pipeline::sheddable(&cpm_edge::sip::scan::scan(text.as_bytes()));
    assert!(sheddable(&inv));
    for method in ["CANCEL", "ACK"] {
        let m = inv
            .replace("INVITE sip:", &format!("{method} sip:"))
            .replace("1 INVITE", &format!("1 {method}"));
        assert!(!sheddable(&m), "{method}");
    }
    assert!(!sheddable(&reinvite), "re-INVITE");
    let resp = inv.replacen(
        "INVITE sip:grp1@groups.example.net SIP/2.0",
        "SIP/2.0 180 Ringing",
        1,
    );
    assert!(!sheddable(&resp), "response");
}

/// One edge worker (the real handler and io loop on a real socket) whose
/// overload detector samples `full`, a socket the test filled and never
/// reads: the worker is overloaded from its 16th batch on, deterministically.
struct OverloadedWorker {
    edge: std::net::SocketAddr,
    stats: std::sync::Arc<cpm_edge::dataplane::stats::WorkerStats>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    _full: UdpSocket,
}

impl OverloadedWorker {
    fn start(shards: &[UdpSocket], extra: &str) -> OverloadedWorker {
        use cpm_edge::io::socket::bind_udp;
        use std::os::fd::AsRawFd;
        use std::sync::{atomic::AtomicBool, Arc};
        let v = valid(free_port(), shards, extra);
        let full = bind_udp("127.0.0.1:0".parse().unwrap(), false, 64 << 10, 64 << 10).unwrap();
        let filler = sock();
        for _ in 0..400 {
            let _ = filler.send_to(&[0u8; 1000], full.local_addr().unwrap());
        }
        let (queued, buf) = cpm_edge::dataplane::limits::socket_fill(full.as_raw_fd()).unwrap();
        assert!(queued * 100 >= buf * 90, "filled: {queued} of {buf}");
        let admission = cpm_edge::dataplane::worker::Admission {
            shed_at_queue_pct: 50,
            sock_fd: Some(full.as_raw_fd()),
            ..v.admission()
        };
        let sock = bind_udp(
            v.server.listen,
            false,
            v.server.workers.socket_rcvbuf,
            v.server.workers.socket_sndbuf,
        )
        .unwrap();
        let edge = sock.local_addr().unwrap();
        let (backend, _) = cpm_edge::io::select_backend(v.server.workers.io).unwrap();
        let cfg = cpm_edge::io::IoConfig {
            batch: v.server.workers.batch,
            buf_size: v.server.workers.max_datagram,
            buf_count: v.server.workers.recv_buffers,
            out_size: v.server.workers.max_datagram,
            wake: None,
        };
        let tables = Arc::new(arc_swap::ArcSwap::from_pointee(v.tables()));
        let stats = Arc::new(cpm_edge::dataplane::stats::WorkerStats::new(8));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (Arc::clone(&stats), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let progress = Arc::new(cpm_edge::dataplane::slow::Progress::new(1));
            let mut h = cpm_edge::dataplane::worker::EdgeHandler::new(
                tables, st, 0, None, progress, &admission,
            );
            cpm_edge::io::run(backend, &sock, cfg, &mut h, &sp)
        });
        OverloadedWorker {
            edge,
            stats,
            stop,
            thread: Some(thread),
            _full: full,
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot::merge(std::slice::from_ref(&self.stats))
    }

    /// Paced keepalives, one per batch, until the detector has sampled.
    fn warm_up(&self) {
        let s = sock();
        for _ in 0..40 {
            s.send_to(b"\r\n\r\n", self.edge).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        accounted(|| self.snapshot(), 40);
        assert_eq!(self.snapshot().drop_count("keepalive"), 40);
    }
}

impl Drop for OverloadedWorker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An in-dialog BYE through the edge's Record-Route to `target`.
fn bye(from: &UdpSocket, edge: std::net::SocketAddr, target: &UdpSocket, n: usize) -> Vec<u8> {
    wire(&format!(
        "BYE sip:cs@{} SIP/2.0\nVia: SIP/2.0/UDP {};branch=z9hG4bKbye{n};rport\nRoute: <sip:{edge};lr>\nMax-Forwards: 70\nFrom: <sip:alice@example.net>;tag=a\nTo: <sip:grp1@groups.example.net>;tag=b\nCall-ID: bye-{n}\nCSeq: 2 BYE\nContent-Length: 0\n\n",
        target.local_addr().unwrap(),
        from.local_addr().unwrap(),
    ))
}

#[test]
fn shedding_answers_within_the_reply_budget_while_in_dialog_byes_pass() {
    enter_fresh_netns();
    let cap = Capture::start();
    let shards: Vec<UdpSocket> = (0..2).map(|_| sock()).collect();
    for s in &shards {
        big_rcvbuf(s);
    }
    let w = OverloadedWorker::start(
        &shards,
        "[limits]\nreply_rate = 50\nreply_burst = 5\nshed = \"reply\"\n",
    );
    w.warm_up();
    let client = sock();
    big_rcvbuf(&client);
    const N: usize = 1000;
    const BYES: usize = 10;
    let start = Instant::now();
    let mut bytes_in = 0;
    for i in 0..N {
        let m = invite(&client, i);
        bytes_in += m.len();
        client.send_to(&m, w.edge).unwrap();
        if i % (N / BYES) == 0 {
            client
                .send_to(&bye(&client, w.edge, &shards[1], i), w.edge)
                .unwrap();
        }
    }
    accounted(|| w.snapshot(), 40 + N + BYES);
    let t = start.elapsed();
    let (fwd, answers) = collect(&shards, &client, N + BYES);
    let snap = w.snapshot();
    let byes = (0..N)
        .step_by(N / BYES)
        .filter(|i| fwd.contains(&format!("Call-ID: bye-{i}")))
        .count();
    assert_eq!(byes, BYES, "every in-dialog BYE forwarded: {fwd:?}");
    assert_eq!(snap.forward_count("in_dialog"), BYES as u64);
    assert_eq!(fwd.len(), BYES, "no new INVITE forwarded while overloaded");
    let bound = budget(5, 50, t);
    assert!(
        (5..=bound).contains(&answers.len()),
        "shed answers {} not within the burst 5 ..= {bound} ({t:?})",
        answers.len()
    );
    for a in &answers {
        assert!(
            a.starts_with("SIP/2.0 503 Service Unavailable - Overloaded\r\n"),
            "{a}"
        );
    }
    assert_eq!(snap.reply_count(503), answers.len() as u64);
    assert_eq!(
        snap.reply_count(503) + snap.drop_count("shed_silent"),
        N as u64,
        "every shed INVITE answered or dropped: {snap:?}"
    );
    assert_eq!(
        outcomes(&snap),
        (
            BYES as u64,
            answers.len() as u64,
            (40 + N - answers.len()) as u64
        )
    );
    let amp = amplification("shedding, reply_rate 50", &answers, bytes_in);
    assert!(amp < 0.05, "{amp}");
    assert_captured(&cap, w.edge, &shards, &client, bytes_in, 0.05);
}

#[test]
fn shedding_in_drop_mode_answers_nothing() {
    let shards: Vec<UdpSocket> = (0..1).map(|_| sock()).collect();
    let w = OverloadedWorker::start(&shards, "[limits]\nshed = \"drop\"\n");
    w.warm_up();
    let client = sock();
    for i in 0..100 {
        client.send_to(&invite(&client, i), w.edge).unwrap();
    }
    let snap = accounted(|| w.snapshot(), 140);
    assert_eq!(snap.drop_count("shed_silent"), 100, "{snap:?}");
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        client.recv_from(&mut [0u8; 2048]).is_err(),
        "nothing answered"
    );
}
