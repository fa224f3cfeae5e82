//! Faults around the edge, over real loopback sockets with the whole
//! in-process edge (`App`, health checks off): Conversation Servers that go
//! silent, answer late, or send garbage; responses that are not ours; full
//! socket buffers on either side; ICMP port unreachable on send.
//!
//! Every wait is bounded (`BOUND`, generous); nothing asserts that something
//! happens faster than that. "Nothing arrives" is checked over a short quiet
//! period after everything else was accounted for.

mod common;
use common::*;
use cpm_edge::app::App;
use cpm_edge::config::Config;
use cpm_edge::dataplane::stats::Snapshot;
use cpm_edge::pipeline::{process, Outcome};
use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Upper bound for anything that must happen "soon": only guards against hangs.
const BOUND: Duration = Duration::from_secs(10);
/// How long "nothing more arrives" is watched.
const QUIET: Duration = Duration::from_millis(300);

/// The edge: one worker on `io`, no admin API, no health checks, the given
/// shards (`cs1`, `cs2`, ...), `workers_extra` lines under `[workers]`.
fn edge(io: &str, shards: &[SocketAddr], workers_extra: &str) -> App {
    let mut toml = format!(
        "[listen]\naddr = \"127.0.0.1:{}\"\n[admin]\nbind = \"\"\n[health]\nenabled = false\n\
         [workers]\ncount = 1\nio = \"{io}\"\n{workers_extra}\n",
        free_port()
    );
    for (i, a) in shards.iter().enumerate() {
        toml += &format!("[[shard]]\nname = \"cs{}\"\naddr = \"{a}\"\n", i + 1);
    }
    App::start(&Config::parse(&toml).unwrap().validate().unwrap()).unwrap()
}

/// A CPM INVITE from `user`, sent from `client` (Via, Contact), Call-ID and
/// Via branch made from `call_id`.
fn invite(client: &UdpSocket, user: &str, call_id: &str) -> Vec<u8> {
    String::from_utf8(invite_to_group("grp1", user, ""))
        .unwrap()
        .replace("192.0.2.10:5062", &client.local_addr().unwrap().to_string())
        .replace(&format!("{user}-call-1@192.0.2.10"), call_id)
        .replace(&format!("z9hG4bK-{user}-1"), &format!("z9hG4bK-{call_id}"))
        .into_bytes()
}

/// A user whose Participating Function is the shard at `shard` (asks the
/// running edge's own routing tables).
fn user_on(app: &App, shard: SocketAddr) -> String {
    let t = app.cp.snapshot();
    let client: SocketAddr = "192.0.2.10:5062".parse().unwrap();
    let mut out = vec![0u8; 65536];
    for i in 0..10_000 {
        let u = format!("u{i}");
        let (o, _) = process(
            &invite_to_group("grp1", &u, ""),
            false,
            client,
            &t,
            &mut out,
        );
        if let Outcome::Forwarded { dst, .. } = o {
            if dst == shard {
                return u;
            }
        }
    }
    panic!("no user routed to {shard}");
}

fn call_id(msg: &str) -> String {
    header(msg, "Call-ID")
        .first()
        .map_or(String::new(), |h| h["Call-ID:".len()..].trim().to_string())
}

/// Every datagram `s` receives until `n` arrived or `BOUND` passed.
fn collect(s: &UdpSocket, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let deadline = Instant::now() + BOUND;
    let mut buf = vec![0u8; 65536];
    while got.len() < n && Instant::now() < deadline {
        match s.recv_from(&mut buf) {
            Ok((len, _)) => got.push(String::from_utf8_lossy(&buf[..len]).into_owned()),
            Err(_) => continue,
        }
    }
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    got
}

/// Whatever `s` receives within `QUIET` (expected: nothing).
fn quiet(s: &UdpSocket) -> Vec<String> {
    let mut got = Vec::new();
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let end = Instant::now() + QUIET;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < end {
        if let Ok((len, _)) = s.recv_from(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
    }
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    got
}

/// Poll the edge's counters until `done` holds (or `BOUND` passed).
fn settle(app: &App, done: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let deadline = Instant::now() + BOUND;
    loop {
        let s = app.server.snapshot();
        if done(&s) || Instant::now() >= deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kernel drop counter of the IPv4 UDP socket bound to `addr` (/proc/net/udp).
fn kernel_drops(addr: SocketAddr) -> u64 {
    let want = format!(":{:04X}", addr.port());
    std::fs::read_to_string("/proc/net/udp")
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|c| c.len() > 12 && c[1].ends_with(&want))
        .map(|c| c[12].parse::<u64>().unwrap_or(0))
        .sum()
}

/// The kernel's count of ICMP destination unreachable messages sent
/// (/proc/net/snmp, `Icmp: ... OutDestUnreachs`), all interfaces.
fn icmp_out_dest_unreachs() -> u64 {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap();
    let mut rows = text.lines().filter(|l| l.starts_with("Icmp: "));
    let (names, values) = (rows.next().unwrap(), rows.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "OutDestUnreachs")
        .map_or(0, |(_, v)| v.parse().unwrap())
}

fn set_rcvbuf(s: &UdpSocket, bytes: libc::c_int) {
    // SAFETY: a valid socket fd and a c_int option value of the right size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "setsockopt SO_RCVBUF");
}

/// A request as a CS received it, answered with `status` but with the edge's
/// Via line replaced by `via` (None: removed).
fn answer_with_top_via(req: &str, status: &str, via: Option<&str>) -> Vec<u8> {
    let vias = header(req, "Via");
    let mut lines: Vec<String> = Vec::new();
    if let Some(v) = via {
        lines.push(v.to_string());
    }
    lines.extend(vias[1..].iter().map(|v| v.to_string()));
    for h in ["From", "To", "Call-ID", "CSeq"] {
        lines.push(header(req, h)[0].to_string());
    }
    format!(
        "SIP/2.0 {status}\r\n{}\r\nContent-Length: 0\r\n\r\n",
        lines.join("\r\n")
    )
    .into_bytes()
}

#[test]
fn a_silent_cs_still_gets_its_requests_and_other_shards_keep_being_served() {
    let (silent, live) = (sock(), sock());
    big_rcvbuf(&silent);
    big_rcvbuf(&live);
    let (sa, la) = (silent.local_addr().unwrap(), live.local_addr().unwrap());
    let app = edge("mmsg", &[sa, la], "");
    let e = app.server.local_addr;
    let (us, ul) = (user_on(&app, sa), user_on(&app, la));
    let client = sock();
    big_rcvbuf(&client);
    const N: usize = 20;
    for i in 0..N {
        client
            .send_to(&invite(&client, &us, &format!("silent-{i}")), e)
            .unwrap();
        client
            .send_to(&invite(&client, &ul, &format!("live-{i}")), e)
            .unwrap();
    }
    // The live CS answers everything it gets; the silent one never answers.
    let to_live = collect(&live, N);
    assert_eq!(to_live.len(), N);
    for req in &to_live {
        assert!(call_id(req).starts_with("live-"), "{req}");
        cs_answer(&live, req, "200 OK", None);
    }
    let answers = collect(&client, N);
    let ids: HashSet<String> = answers.iter().map(|a| call_id(a)).collect();
    assert_eq!(ids, (0..N).map(|i| format!("live-{i}")).collect());
    assert!(answers.iter().all(|a| a.starts_with("SIP/2.0 200 OK\r\n")));
    // Everything for the silent CS was forwarded to it all the same.
    let to_silent = collect(&silent, N);
    let ids: HashSet<String> = to_silent.iter().map(|r| call_id(r)).collect();
    assert_eq!(ids, (0..N).map(|i| format!("silent-{i}")).collect());
    assert!(
        quiet(&client).is_empty(),
        "no answer for the silent CS's calls"
    );

    // Stateless: a retransmission goes to the silent CS again, same branch.
    let first = to_silent.iter().find(|r| call_id(r) == "silent-0").unwrap();
    client
        .send_to(&invite(&client, &us, "silent-0"), e)
        .unwrap();
    let (again, _) = recv(&silent);
    assert_eq!(header(&again, "Via")[0], header(first, "Via")[0]);
    // And the live shard is still served after all that.
    client
        .send_to(&invite(&client, &ul, "live-late"), e)
        .unwrap();
    let (req, _) = recv(&live);
    cs_answer(&live, &req, "200 OK", None);
    let (resp, _) = recv(&client);
    assert_eq!(call_id(&resp), "live-late");

    let snap = app.server.snapshot();
    assert_eq!(snap.forward_count("originating_pf"), 2 * N as u64 + 2);
    assert_eq!(snap.relayed[1], N as u64 + 1, "{snap}");
    assert!(snap.drops.iter().all(|(_, v)| *v == 0), "{snap}");
    app.stop().unwrap();
}

#[test]
fn a_slow_cs_answer_is_relayed_whenever_it_comes() {
    let cs = sock();
    big_rcvbuf(&cs);
    let app = edge("mmsg", &[cs.local_addr().unwrap()], "");
    let e = app.server.local_addr;
    let client = sock();
    client
        .send_to(&invite(&client, "alice", "slow-1"), e)
        .unwrap();
    let (slow_req, _) = recv(&cs);
    assert_eq!(call_id(&slow_req), "slow-1");
    // A provisional answer at once, the final one much later.
    cs_answer(&cs, &slow_req, "180 Ringing", None);
    let (r, _) = recv(&client);
    assert!(r.starts_with("SIP/2.0 180 Ringing\r\n"), "{r}");
    // Meanwhile other calls come and go through the same worker and CS.
    for i in 0..5 {
        let id = format!("fast-{i}");
        client.send_to(&invite(&client, "bob", &id), e).unwrap();
        let (req, _) = recv(&cs);
        assert_eq!(call_id(&req), id);
        cs_answer(&cs, &req, "200 OK", None);
        let (resp, _) = recv(&client);
        assert_eq!(call_id(&resp), id);
    }
    // The edge keeps no transaction and no timer: a final answer 1.5 s
    // after its request is relayed like any other.
    std::thread::sleep(Duration::from_millis(1500));
    cs_answer(&cs, &slow_req, "200 OK", None);
    let (resp, from) = recv(&client);
    assert_eq!(from, e);
    assert!(resp.starts_with("SIP/2.0 200 OK\r\n"), "{resp}");
    assert_eq!(call_id(&resp), "slow-1");
    assert_eq!(header(&resp, "Via").len(), 1, "the edge's Via popped");
    // Even answering twice (a CS retransmitting its 200) is relayed twice.
    cs_answer(&cs, &slow_req, "200 OK", None);
    let (dup, _) = recv(&client);
    assert_eq!(call_id(&dup), "slow-1");
    let snap = app.server.snapshot();
    assert_eq!((snap.relayed[0], snap.relayed[1]), (1, 7), "{snap}");
    app.stop().unwrap();
}

#[test]
fn garbage_and_malformed_responses_from_a_cs_are_counted_drops() {
    for io in backends() {
        let cs = sock();
        big_rcvbuf(&cs);
        let app = edge(io, &[cs.local_addr().unwrap()], "");
        let e = app.server.local_addr;
        let client = sock();
        client.send_to(&invite(&client, "alice", "m-1"), e).unwrap();
        let (req, _) = recv(&cs);
        let good = String::from_utf8(answer_with_top_via(
            &req,
            "200 OK",
            Some(header(&req, "Via")[0]),
        ))
        .unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "garbage",
                b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec(),
            ),
            // Zero padding counts as a keepalive, like CRLF.
            ("keepalive", vec![0u8; 300]),
            ("garbage", b"HTTP/1.1 200 OK\r\n\r\n".to_vec()),
            ("keepalive", b"\r\n\r\n".to_vec()),
            ("oversized", {
                let mut big = good.clone().into_bytes();
                big.resize(30_000, b'x');
                big
            }),
            // A response with a defect: no blank line (truncated).
            (
                "malformed_response",
                good.as_bytes()[..good.len() - 30].to_vec(),
            ),
            // Content-Length beyond the body.
            (
                "malformed_response",
                good.replace("Content-Length: 0", "Content-Length: 500")
                    .into_bytes(),
            ),
            // A bad status code.
            (
                "malformed_response",
                good.replace("SIP/2.0 200 OK", "SIP/2.0 2000 OK")
                    .into_bytes(),
            ),
            // Ours, but nowhere to send it on: no second Via.
            ("response_no_next_hop", without_second_via(&good)),
        ];
        let mut want: Vec<(&str, u64)> = Vec::new();
        for (reason, bytes) in &cases {
            cs.send_to(bytes, e).unwrap();
            match want.iter_mut().find(|(r, _)| r == reason) {
                Some((_, n)) => *n += 1,
                None => want.push((reason, 1)),
            }
        }
        // Then the genuine answer: relayed, so everything before it was handled.
        cs.send_to(good.as_bytes(), e).unwrap();
        let (resp, _) = recv(&client);
        assert_eq!(call_id(&resp), "m-1", "{io}: relayed: {resp:?}");
        let snap = settle(&app, |s| s.relayed[1] == 1);
        for (reason, n) in &want {
            assert_eq!(snap.drop_count(reason), *n, "{io}: {reason}: {snap}");
        }
        let total: u64 = snap.drops.iter().map(|(_, v)| v).sum();
        assert_eq!(total, cases.len() as u64, "{io}: {snap}");
        assert!(
            quiet(&client).is_empty(),
            "{io}: nothing else reached the client"
        );
        assert!(
            quiet(&cs).is_empty(),
            "{io}: nothing was answered to the CS"
        );
        // The worker keeps serving.
        client.send_to(&invite(&client, "alice", "m-2"), e).unwrap();
        let (req2, _) = recv(&cs);
        cs_answer(&cs, &req2, "200 OK", None);
        let (resp2, _) = recv(&client);
        assert_eq!(call_id(&resp2), "m-2", "{io}");
        app.stop().unwrap();
    }
}

/// `msg` without its second Via line (only the top one is left).
fn without_second_via(msg: &str) -> Vec<u8> {
    let second = header(msg, "Via")[1];
    msg.replacen(&format!("{second}\r\n"), "", 1).into_bytes()
}

#[test]
fn a_response_whose_top_via_is_not_ours_is_dropped_and_counted() {
    let cs = sock();
    let app = edge("mmsg", &[cs.local_addr().unwrap()], "");
    let e = app.server.local_addr;
    let client = sock();
    client.send_to(&invite(&client, "alice", "v-1"), e).unwrap();
    let (req, _) = recv(&cs);
    let ours = header(&req, "Via")[0].to_string();
    let branch = ours
        .split("branch=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    assert!(branch.starts_with("z9hG4bKcpe"), "{ours}");
    let not_ours = [
        // Another host, our branch.
        format!("Via: SIP/2.0/UDP 198.51.100.7:5060;branch={branch}"),
        // Our host:port, a branch that is not of our making.
        ours.replace(branch, "z9hG4bKsomeoneelse"),
        // Our host, another port.
        ours.replacen(
            &format!(":{}", e.port()),
            &format!(":{}", e.port().wrapping_add(1).max(1)),
            1,
        ),
    ];
    for v in &not_ours {
        assert_ne!(v, &ours);
        cs.send_to(&answer_with_top_via(&req, "200 OK", Some(v)), e)
            .unwrap();
    }
    // The CS popped our Via itself: the client's Via is on top.
    cs.send_to(&answer_with_top_via(&req, "200 OK", None), e)
        .unwrap();
    let snap = settle(&app, |s| s.drop_count("response_via_not_ours") >= 4);
    assert_eq!(snap.drop_count("response_via_not_ours"), 4, "{snap}");
    assert!(quiet(&client).is_empty(), "none of them relayed");
    assert_eq!(snap.relayed.iter().sum::<u64>(), 0);
    // The right answer still goes through.
    cs_answer(&cs, &req, "200 OK", None);
    let (resp, _) = recv(&client);
    assert_eq!(call_id(&resp), "v-1");
    app.stop().unwrap();
}

#[test]
fn full_socket_buffers_neither_block_nor_stop_the_edge() {
    for io in backends() {
        // cs1's receive buffer holds one or two INVITEs; cs2 is normal.
        let (tiny, live) = (sock(), sock());
        set_rcvbuf(&tiny, 1);
        big_rcvbuf(&live);
        let (ta, la) = (tiny.local_addr().unwrap(), live.local_addr().unwrap());
        // And the edge's own send buffer is the smallest the kernel allows.
        let app = edge(io, &[ta, la], "socket_sndbuf = 1");
        let e = app.server.local_addr;
        let (ut, ul) = (user_on(&app, ta), user_on(&app, la));
        let client = sock();
        big_rcvbuf(&client);
        let drops_before = kernel_drops(ta);
        const FLOOD: usize = 2000;
        const LIVE: usize = 20;
        for i in 0..FLOOD {
            client
                .send_to(&invite(&client, &ut, &format!("flood-{i}")), e)
                .unwrap();
            if i % (FLOOD / LIVE) == 0 {
                let id = format!("live-{}", i / (FLOOD / LIVE));
                client.send_to(&invite(&client, &ul, &id), e).unwrap();
            }
            if i % 500 == 499 {
                // Pace a little so the edge's own receive buffer is not the
                // one that overflows.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        // Other traffic still flows: every live call answered and relayed.
        let to_live = collect(&live, LIVE);
        assert_eq!(to_live.len(), LIVE, "{io}");
        for req in &to_live {
            cs_answer(&live, req, "200 OK", None);
        }
        let answers = collect(&client, LIVE);
        assert_eq!(answers.len(), LIVE, "{io}");
        let snap = settle(&app, |s| {
            s.forward_count("originating_pf") == (FLOOD + LIVE) as u64
                && s.relayed[1] == LIVE as u64
        });
        assert_eq!(
            snap.forward_count("originating_pf"),
            (FLOOD + LIVE) as u64,
            "{io}: every INVITE was handled by the edge: {snap}"
        );
        // Where did the flood go? Read what cs1 got; the kernel dropped the rest.
        let mut got = 0u64;
        tiny.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 65536];
        while tiny.recv_from(&mut buf).is_ok() {
            got += 1;
        }
        let dropped = kernel_drops(ta) - drops_before;
        eprintln!(
            "{io}: flood of {FLOOD} to a {}-byte receive buffer: received {got}, \
             kernel drops {dropped}, edge send errors {}",
            socket2::SockRef::from(&tiny).recv_buffer_size().unwrap(),
            snap.send_errors
        );
        assert!(dropped > 0, "{io}: the peer's buffer did overflow");
        assert_eq!(
            got + dropped + snap.send_errors,
            FLOOD as u64,
            "{io}: every forward either arrived, was dropped by the peer's kernel, or \
             was counted as a send error"
        );
        assert_eq!(snap.recv_errors, 0, "{io}: {snap}");
        assert_eq!(
            kernel_drops(e),
            0,
            "{io}: the edge's own socket never overflowed"
        );
        // Still serving after the flood.
        tiny.set_nonblocking(false).unwrap();
        client
            .send_to(&invite(&client, &ut, "after-flood"), e)
            .unwrap();
        let (req, _) = recv(&tiny);
        assert_eq!(call_id(&req), "after-flood", "{io}");
        app.stop().unwrap();
    }
}

#[test]
fn icmp_port_unreachable_on_send_does_not_stop_the_worker() {
    for io in backends() {
        // cs1's address has nothing listening: every send to it draws an
        // ICMP port unreachable from the kernel.
        let dead = {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let live = sock();
        let la = live.local_addr().unwrap();
        let app = edge(io, &[dead, la], "");
        let e = app.server.local_addr;
        let (ud, ul) = (user_on(&app, dead), user_on(&app, la));
        let client = sock();
        big_rcvbuf(&client);
        let icmp_before = icmp_out_dest_unreachs();
        const N: usize = 50;
        for round in 0..3 {
            for i in 0..N {
                client
                    .send_to(&invite(&client, &ud, &format!("dead-{round}-{i}")), e)
                    .unwrap();
            }
            // Between the rounds of unreachable sends, a live call completes.
            let id = format!("live-{round}");
            client.send_to(&invite(&client, &ul, &id), e).unwrap();
            let (req, _) = recv(&live);
            assert_eq!(call_id(&req), id, "{io}");
            cs_answer(&live, &req, "200 OK", None);
            let (resp, _) = recv(&client);
            assert_eq!(call_id(&resp), id, "{io}");
            assert!(resp.starts_with("SIP/2.0 200 OK\r\n"), "{io}");
        }
        let snap = settle(&app, |s| s.per_shard.first() == Some(&(3 * N as u64)));
        assert_eq!(
            snap.per_shard[..2],
            [3 * N as u64, 3],
            "{io}: all forwarded: {snap}"
        );
        // The kernel did answer with port unreachable (a system-wide count,
        // rate limited: at least one of ours).
        let icmp = icmp_out_dest_unreachs() - icmp_before;
        assert!(icmp >= 1, "{io}: no ICMP destination unreachable was sent");
        // An unconnected socket without IP_RECVERR never sees these errors,
        // so the io error counters may well stay at 0: the point is that
        // the worker went on.
        eprintln!(
            "{io}: {} sends to a closed port, {icmp} ICMP unreachable sent by the kernel: \
             edge send errors {}, recv errors {}",
            3 * N,
            snap.send_errors,
            snap.recv_errors
        );
        assert!(
            quiet(&client).is_empty(),
            "{io}: nothing answered for the dead shard"
        );
        // Stopping returns cleanly: the worker did not end on an io error.
        app.stop().unwrap();
    }
}
