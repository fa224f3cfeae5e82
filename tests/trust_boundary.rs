//! The edge's trust boundary, tried from the outside as an attacker on
//! loopback would (README "Security"). Each test runs in its own network
//! namespace with a capture of every datagram on its `lo`, and asserts that
//! nothing the edge emits reaches an address other than a shard or the
//! requester's real source, and how many bytes an attack class gets out per
//! byte in (the amplification factor).
//!
//! Classes 1-8 and 10 are here; the other three run with the same
//! namespace and capture beside the tests of their subsystem: class 9
//! (reload) in `control_plane.rs` (`reload_rotates_…`, `sighup_refuses_…`),
//! class 11 (shedding and rate-limit reflection) in `limits.rs`, class 12
//! (admin API validation) in `control_plane.rs` (`admin_api_validates_…`).
//!
//! Needs root (network namespaces, AF_PACKET), as CI has.

mod common;
use common::capture::{enter_fresh_netns, Capture, Datagram};
use common::*;
use cpm_edge::app::App;
use cpm_edge::config::Config;
use cpm_edge::dataplane::worker::Server;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECRET: &str = "trust-boundary-test-secret-0123";

struct Rig {
    edge: SocketAddr,
    server: Option<Server>,
    shards: Vec<UdpSocket>,
    attacker: UdpSocket,
    victim: UdpSocket,
    cap: Capture,
}

fn start_edge(shards: &[SocketAddr], extra: &str) -> Server {
    let mut toml = format!(
        "[listen]\naddr = \"127.0.0.1:{}\"\n[workers]\ncount = 1\n[trust]\nsecret = \"{SECRET}\"\n{extra}\n",
        free_port()
    );
    for (i, s) in shards.iter().enumerate() {
        toml += &format!("[[shard]]\nname = \"cs{}\"\naddr = \"{s}\"\n", i + 1);
    }
    let valid = Config::parse(&toml).unwrap().validate().unwrap();
    cpm_edge::app::start_server(&valid).unwrap()
}

impl Rig {
    fn new(extra: &str) -> Rig {
        enter_fresh_netns();
        let cap = Capture::start();
        let shards: Vec<UdpSocket> = (0..2).map(|_| sock()).collect();
        let addrs: Vec<SocketAddr> = shards.iter().map(|s| s.local_addr().unwrap()).collect();
        let server = start_edge(&addrs, extra);
        Rig {
            edge: server.local_addr,
            server: Some(server),
            shards,
            attacker: sock(),
            victim: sock(),
            cap,
        }
    }

    fn shard_addrs(&self) -> Vec<SocketAddr> {
        self.shards
            .iter()
            .map(|s| s.local_addr().unwrap())
            .collect()
    }

    fn attacker_addr(&self) -> SocketAddr {
        self.attacker.local_addr().unwrap()
    }

    /// The attacker sends `msg` to the edge.
    fn attack(&self, msg: &str) {
        self.attacker.send_to(msg.as_bytes(), self.edge).unwrap();
    }

    fn sent_by_edge(&self, seen: &[Datagram]) -> Vec<Datagram> {
        seen.iter()
            .filter(|d| d.src == self.edge)
            .copied()
            .collect()
    }

    /// Everything the edge sent went to one of `allowed`; returns it.
    fn assert_edge_sent_only_to(&self, allowed: &[SocketAddr]) -> Vec<Datagram> {
        let seen = self.cap.snapshot();
        let out = self.sent_by_edge(&seen);
        for d in &out {
            assert!(
                allowed.contains(&d.dst),
                "the edge sent {} bytes to {} (allowed: {allowed:?})",
                d.len,
                d.dst
            );
        }
        assert!(
            !seen
                .iter()
                .any(|d| d.dst == self.victim.local_addr().unwrap()),
            "something reached the victim"
        );
        out
    }

    /// Bytes the edge sent to `to` per byte the attacker sent the edge.
    fn amplification(&self, to: SocketAddr) -> f64 {
        let seen = self.cap.snapshot();
        let a = self.attacker_addr();
        let bytes_in: usize = seen
            .iter()
            .filter(|d| d.src == a && d.dst == self.edge)
            .map(|d| d.len)
            .sum();
        let bytes_out: usize = self
            .sent_by_edge(&seen)
            .iter()
            .filter(|d| d.dst == to)
            .map(|d| d.len)
            .sum();
        assert!(bytes_in > 0, "the attacker sent nothing");
        bytes_out as f64 / bytes_in as f64
    }

    /// The attacker's answer (a status line), within the timeout.
    fn attacker_gets(&self) -> String {
        let (text, from) = recv(&self.attacker);
        assert_eq!(from, self.edge);
        text
    }

    /// Nothing at all reaches `s` for a short while.
    fn silent(s: &UdpSocket) {
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut b = [0u8; 65536];
        let got = s.recv_from(&mut b);
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        assert!(
            got.is_err(),
            "unexpected datagram: {}",
            String::from_utf8_lossy(&b[..got.map_or(0, |(n, _)| n)])
        );
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            let _ = s.stop();
        }
    }
}

/// A CPM INVITE from the attacker's socket, with `extra` header lines.
fn invite(r: &Rig, user: &str, extra: &str) -> String {
    String::from_utf8(invite_to_group("grp1", user, extra))
        .unwrap()
        .replace("192.0.2.10:5062", &r.attacker_addr().to_string())
}

fn status(msg: &str) -> &str {
    msg.split("\r\n").next().unwrap_or("")
}

#[test]
fn class1_open_relay_client_routes_and_request_uris_never_leave_for_elsewhere() {
    let r = Rig::new("");
    let v = r.victim.local_addr().unwrap();
    let e = r.edge;
    for route in [
        format!("Route: <sip:{v};lr>\r\n"),
        format!("Route: <sip:{v}>\r\n"),
        format!("Route: <sip:{e};lr>,<sip:{v};lr>\r\n"),
        format!("Route: <sip:{e};lr>\r\nRoute: <sip:{v};lr>\r\n"),
    ] {
        r.attack(&invite(&r, "mallory", &route));
        assert_eq!(
            status(&r.attacker_gets()),
            "SIP/2.0 403 Forbidden - Not Relaying",
            "{route}"
        );
    }
    // In-dialog shape (To-tag, our Route) with the victim as Request-URI:
    // not relayed to it; a non-CPM BYE is refused.
    let bye = format!(
        "BYE sip:x@{v} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKbye1;rport\r\nRoute: <sip:{e};lr>\r\n\
         From: <sip:mallory@example.net>;tag=1\r\nTo: <sip:x@example.net>;tag=2\r\nCall-ID: relay-1\r\n\
         CSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        a = r.attacker_addr()
    );
    r.attack(&bye);
    assert_eq!(
        status(&r.attacker_gets()),
        "SIP/2.0 403 Forbidden - No CPM Feature Tag"
    );
    Rig::silent(&r.victim);
    let mut allowed = r.shard_addrs();
    allowed.push(r.attacker_addr());
    r.assert_edge_sent_only_to(&allowed);
    let amp = r.amplification(r.attacker_addr());
    println!("class 1 (open relay): {amp:.2} bytes back per byte in");
    assert!(amp < 1.0, "{amp}");
}

#[test]
fn class2_the_participating_function_cannot_be_skipped() {
    let r = Rig::new("");
    let (s, e) = (r.shard_addrs()[1], r.edge);
    r.attack(&invite(
        &r,
        "mallory",
        &format!("Route: <sip:{s};lr>,<sip:{e};lr;cpm-leg=term>\r\n"),
    ));
    assert_eq!(
        status(&r.attacker_gets()),
        "SIP/2.0 403 Forbidden - Leg Marker From A Client"
    );
    r.attack(&invite(&r, "mallory", &format!("Route: <sip:{s};lr>\r\n")));
    assert_eq!(
        status(&r.attacker_gets()),
        "SIP/2.0 403 Forbidden - Not Relaying"
    );
    // With our Route first and a To-tag (a forged dialog), the marker gives it away.
    let forged = invite(
        &r,
        "mallory",
        &format!("Route: <sip:{e};lr>,<sip:{s};lr>,<sip:{e};lr;cpm-leg=term>\r\n"),
    )
    .replace(
        "To: <sip:grp1@groups.example.net>",
        "To: <sip:grp1@groups.example.net>;tag=x",
    );
    r.attack(&forged);
    assert_eq!(
        status(&r.attacker_gets()),
        "SIP/2.0 403 Forbidden - Leg Marker From A Client"
    );
    for sh in &r.shards {
        Rig::silent(sh);
    }
    r.assert_edge_sent_only_to(&[r.attacker_addr()]);
}

#[test]
fn class3_answers_go_to_the_real_source_whatever_the_via_says() {
    let r = Rig::new("");
    let v = r.victim.local_addr().unwrap();
    let steer = format!(";received={};rport={}", v.ip(), v.port());
    let msg = invite(&r, "mallory", "").replacen(";rport", &steer, 1);
    r.attack(&msg);
    let (i, fwd) = recv_any(&r.shards);
    let client_via = header(&fwd, "Via")[1];
    let a = r.attacker_addr();
    assert!(
        client_via.contains(&format!("received={}", a.ip()))
            && client_via.contains(&format!("rport={}", a.port())),
        "{client_via}"
    );
    cs_answer(&r.shards[i], &fwd, "200 OK", Some(SDP));
    assert!(r.attacker_gets().starts_with("SIP/2.0 200 OK\r\n"));
    // A refused request with the same Via: answered to the source too.
    r.attack(&msg.replace("CSeq: 1 INVITE", "CSeq: x INVITE"));
    assert!(r.attacker_gets().starts_with("SIP/2.0 400 "));
    Rig::silent(&r.victim);
    let mut allowed = r.shard_addrs();
    allowed.push(a);
    r.assert_edge_sent_only_to(&allowed);
    assert_eq!(r.amplification(v), 0.0);
}

#[test]
fn class4_forged_and_steered_responses_are_dropped() {
    let r = Rig::new("");
    let v = r.victim.local_addr().unwrap();
    let e = r.edge;
    let forged_branch = format!("z9hG4bKcpe{}", "0".repeat(24));
    let resp = |vias: &str| {
        format!(
            "SIP/2.0 200 OK\r\n{vias}From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: forged-1\r\n\
             CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        )
    };
    // A branch of the right shape, next hop the victim.
    r.attack(&resp(&format!(
        "Via: SIP/2.0/UDP {e};branch={forged_branch}\r\nVia: SIP/2.0/UDP {v};branch=z9hG4bKv;rport={};received={}\r\n",
        v.port(),
        v.ip()
    )));
    // A chain of our own Vias: once amplified 50 times.
    let chain: String = (0..50)
        .map(|_| format!("Via: SIP/2.0/UDP {e};branch={forged_branch}\r\n"))
        .collect();
    r.attack(&resp(&chain));
    // A real answer whose client Via a shard-side attacker rewrote toward
    // the victim: the MAC binds the return address.
    r.attack(&invite(&r, "alice", ""));
    let (i, fwd) = recv_any(&r.shards);
    let a = r.attacker_addr();
    let steered = fwd
        .replace(
            &format!("received={}", a.ip()),
            &format!("received={}", v.ip()),
        )
        .replace(
            &format!("rport={}", a.port()),
            &format!("rport={}", v.port()),
        );
    cs_answer(&r.shards[i], &steered, "200 OK", None);
    Rig::silent(&r.victim);
    Rig::silent(&r.attacker);
    let mut allowed = r.shard_addrs();
    allowed.push(a);
    let out = r.assert_edge_sent_only_to(&allowed);
    assert!(
        out.iter().all(|d| d.dst != a),
        "a forged response was relayed"
    );
    assert_eq!(r.amplification(v), 0.0);
    assert_eq!(r.amplification(e), 0.0);
}

#[test]
fn class5_no_ping_pong_between_edges_and_max_forwards_capped() {
    let r = Rig::new("");
    // A second edge of the same deployment in the namespace.
    let peer = start_edge(&r.shard_addrs(), "");
    let (e, p) = (r.edge, peer.local_addr);
    let routes: String = (0..70)
        .map(|i| format!("Route: <sip:{};lr>\r\n", if i % 2 == 0 { e } else { p }))
        .collect();
    r.attack(&invite(&r, "mallory", &routes));
    assert_eq!(
        status(&r.attacker_gets()),
        "SIP/2.0 403 Forbidden - Not Relaying"
    );
    Rig::silent(&r.attacker);
    let seen = r.cap.snapshot();
    assert!(
        !seen.iter().any(|d| d.src == p),
        "the peer edge got involved: {seen:?}"
    );
    let amp = r.amplification(r.attacker_addr());
    println!("class 5 (Route ping-pong): {amp:.3} bytes back per byte in");
    assert!(amp < 0.2, "{amp}");
    // Max-Forwards far above the limit leaves at the limit minus one.
    r.attack(&invite(&r, "alice", "").replace("Max-Forwards: 70", "Max-Forwards: 4294967295"));
    let (_, fwd) = recv_any(&r.shards);
    assert_eq!(header(&fwd, "Max-Forwards"), ["Max-Forwards: 69"]);
    peer.stop().unwrap();
}

#[test]
fn class6_a_client_cannot_assert_an_identity() {
    let r = Rig::new("");
    let plain = invite(&r, "mallory", "");
    r.attack(&plain);
    let (own_pf, fwd) = recv_any(&r.shards);
    assert!(header(&fwd, "P-Asserted-Identity").is_empty());
    // Whoever mallory claims to be, mallory's PF serves it, without the claim.
    for victim_user in ["alice", "bob", "carol", "dave", "erin", "frank"] {
        let claim = format!("P-Asserted-Identity: <sip:{victim_user}@example.net>\r\n");
        r.attack(&invite(&r, "mallory", &claim));
        let (pf, fwd) = recv_any(&r.shards);
        assert_eq!(pf, own_pf, "{victim_user}");
        assert!(header(&fwd, "P-Asserted-Identity").is_empty(), "{fwd}");
    }
    let mut allowed = r.shard_addrs();
    allowed.push(r.attacker_addr());
    r.assert_edge_sent_only_to(&allowed);
}

#[test]
fn class8_a_chain_of_edges_is_not_a_loop() {
    // Client → edge B → B's shard, a proxy that sends it on to edge A
    // unchanged but for its own Route: A sees B's Via with our prefix and
    // the same loop hash. Only a Via with A's own sent-by is a loop.
    let r = Rig::new("");
    let b_shard = sock();
    let b = start_edge(&[b_shard.local_addr().unwrap()], "");
    let msg = invite(&r, "alice", "");
    r.attacker.send_to(msg.as_bytes(), b.local_addr).unwrap();
    let (via_b, _) = recv(&b_shard);
    let on: String = via_b
        .split_inclusive("\r\n")
        .filter(|l| !l.starts_with("Route:"))
        .collect();
    b_shard.send_to(on.as_bytes(), r.edge).unwrap();
    let (_, fwd) = recv_any(&r.shards);
    assert!(fwd.starts_with("INVITE "), "{fwd}");
    assert_eq!(header(&fwd, "Via").len(), 3);
    b.stop().unwrap();
}

/// Class 10: 100 idle connections from one peer and a 70-connection
/// slowloris from ten others leave `/health` and `/ready` answering; the
/// admin port answers only the peers that connected to it and the edge's
/// SIP side emits nothing meanwhile.
#[test]
fn class10_admin_floods_cannot_fail_health() {
    use std::io::{Read, Write};
    enter_fresh_netns();
    let cap = Capture::start();
    let shard = sock();
    let toml = format!(
        "[listen]\naddr = \"127.0.0.1:{}\"\n[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"tok\"\nheader_timeout_ms = 500\n\
         [health]\nenabled = false\n[workers]\ncount = 1\n[trust]\nsecret = \"{SECRET}\"\n\
         [[shard]]\nname = \"cs1\"\naddr = \"{}\"\n",
        free_port(),
        shard.local_addr().unwrap()
    );
    let a = App::start(&Config::parse(&toml).unwrap().validate().unwrap()).unwrap();
    let admin = a.admin_addr.unwrap();
    let idle: Vec<std::net::TcpStream> = (0..100)
        .map(|_| connect_from("127.0.0.77", admin))
        .collect();
    let mut slow: Vec<std::net::TcpStream> = (0..70)
        .map(|i| connect_from(&format!("127.0.2.{}", i % 10 + 1), admin))
        .collect();
    for s in &mut slow {
        let _ = s.write_all(b"GET /groups HTTP/1.1\r\nX-Slow: ");
    }
    for _ in 0..3 {
        for s in &mut slow {
            let _ = s.write_all(b"a");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for path in ["/health", "/ready"] {
        assert_eq!(http(admin, "GET", path, "", None).0, 200, "{path}");
    }
    // The header timeout (500 ms) cuts every slowloris connection.
    for s in &mut slow {
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert!(
            got.is_empty()
                || got.starts_with(b"HTTP/1.1 408 ")
                || got.starts_with(b"HTTP/1.1 503 "),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }
    assert_eq!(http(admin, "GET", "/groups", "", Some("tok")).0, 200);
    let peers = |d: &Datagram| {
        d.dst.ip() == std::net::Ipv4Addr::new(127, 0, 0, 77)
            || d.dst.ip() == std::net::Ipv4Addr::LOCALHOST
            || matches!(d.dst.ip(), std::net::IpAddr::V4(v) if v.octets()[..3] == [127, 0, 2])
    };
    let answers: Vec<Datagram> = cap
        .tcp_snapshot()
        .into_iter()
        .filter(|d| d.src == admin)
        .collect();
    assert!(!answers.is_empty(), "the capture saw the admin answers");
    for d in &answers {
        assert!(peers(d), "the admin port sent {} bytes to {}", d.len, d.dst);
    }
    assert!(
        cap.assert_sent_only_to(a.server.local_addr, &[]).is_empty(),
        "the SIP side emitted nothing"
    );
    drop(idle);
    a.stop().unwrap();
}

/// A stateless stand-in Conversation Server: serves whatever leg the edge
/// marks, pops its own Route value, adds its Via (a branch derived from the
/// incoming one, so the ACK of a non-2xx gets the INVITE's), sends the
/// request back to the edge; pops its Via off responses. Logs
/// (method, leg) of every request it serves.
struct StandIn {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<(String, String)>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl StandIn {
    fn start(shards: Vec<UdpSocket>) -> StandIn {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let threads = shards
            .into_iter()
            .map(|s| {
                let (stop, log) = (Arc::clone(&stop), Arc::clone(&log));
                std::thread::spawn(move || {
                    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                    let mut buf = vec![0u8; 65536];
                    while !stop.load(Ordering::SeqCst) {
                        if let Ok((n, _)) = s.recv_from(&mut buf) {
                            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                            stand_in_serve(&s, &text, &log);
                        }
                    }
                })
            })
            .collect();
        StandIn { stop, log, threads }
    }

    fn stop(self) -> Vec<(String, String)> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.log).unwrap().into_inner().unwrap()
    }
}

fn stand_in_serve(s: &UdpSocket, text: &str, log: &Mutex<Vec<(String, String)>>) {
    let me = s.local_addr().unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let lines: Vec<&str> = head.split("\r\n").collect();
    if lines[0].starts_with("SIP/2.0") {
        // Pop our Via, send to the next one's received/rport.
        let mut out: Vec<&str> = Vec::new();
        let mut popped = false;
        let mut next = None;
        for l in &lines {
            if l.starts_with("Via:") && !popped {
                popped = true;
                continue;
            }
            if l.starts_with("Via:") && next.is_none() {
                // The next hop is the edge: its Via's sent-by.
                next = l
                    .split_whitespace()
                    .nth(2)
                    .and_then(|hp| hp.split(';').next())
                    .map(str::to_string);
            }
            out.push(l);
        }
        let msg = format!("{}\r\n\r\n{body}", out.join("\r\n"));
        s.send_to(msg.as_bytes(), next.unwrap().as_str()).unwrap();
        return;
    }
    let route = lines.iter().find(|l| l.starts_with("Route:")).unwrap();
    let values: Vec<&str> = route["Route:".len()..].split(',').map(str::trim).collect();
    assert!(
        values[0].contains(&me.to_string()),
        "not our Route: {route}"
    );
    let leg = values[1]
        .split("cpm-leg=")
        .nth(1)
        .unwrap()
        .trim_end_matches('>')
        .to_string();
    let method = lines[0].split(' ').next().unwrap().to_string();
    log.lock().unwrap().push((method, leg));
    let top_branch = lines
        .iter()
        .find(|l| l.starts_with("Via:"))
        .and_then(|l| l.split("branch=").nth(1))
        .map(|b| b.split(';').next().unwrap().to_string())
        .unwrap();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&(top_branch, me.port()), &mut h);
    let via = format!(
        "Via: SIP/2.0/UDP {me};branch=z9hG4bKsa{:x}",
        std::hash::Hasher::finish(&h)
    );
    let mut out = vec![lines[0].to_string(), via];
    for l in &lines[1..] {
        if l.starts_with("Route:") {
            out.push(format!("Route: {}", values[1..].join(",")));
        } else {
            out.push(l.to_string());
        }
    }
    let edge = values[1]
        .trim_start_matches("<sip:")
        .split(';')
        .next()
        .unwrap();
    let msg = format!("{}\r\n\r\n{body}", out.join("\r\n"));
    s.send_to(msg.as_bytes(), edge).unwrap();
}

/// The callee: answers the INVITE, checks the ACK against it.
fn session_to_a_busy_or_cancelled_callee(cancel: bool) {
    let mut r = Rig::new("");
    let callee = sock();
    let c = callee.local_addr().unwrap();
    let shards = std::mem::take(&mut r.shards);
    let cs = StandIn::start(shards);
    let caller = &r.attacker;
    let inv = invite(&r, "alice", "").replacen(
        "INVITE sip:grp1@groups.example.net",
        &format!("INVITE sip:bob@{c}"),
        1,
    );
    caller.send_to(inv.as_bytes(), r.edge).unwrap();
    let (got, from) = recv(&callee);
    assert_eq!(from, r.edge);
    let branch_of = |m: &str| {
        header(m, "Via")[0]
            .split("branch=")
            .nth(1)
            .unwrap()
            .to_string()
    };
    let invite_branch = branch_of(&got);
    let final_status = if cancel {
        let cancel_msg = inv
            .replacen("INVITE sip:", "CANCEL sip:", 1)
            .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
        let cancel_msg = format!("{}\r\n\r\n", cancel_msg.split("\r\n\r\n").next().unwrap())
            .replace("Content-Type: application/sdp\r\n", "")
            .replace(
                &format!("Content-Length: {}", SDP.replace('\n', "\r\n").len()),
                "Content-Length: 0",
            );
        caller.send_to(cancel_msg.as_bytes(), r.edge).unwrap();
        let (got_cancel, _) = recv(&callee);
        assert!(got_cancel.starts_with("CANCEL "), "{got_cancel}");
        assert_eq!(
            branch_of(&got_cancel),
            invite_branch,
            "CANCEL on the INVITE's branch"
        );
        cs_answer(&callee, &got_cancel, "200 OK", None);
        assert!(recv(caller).0.starts_with("SIP/2.0 200 OK"));
        "487 Request Terminated"
    } else {
        "486 Busy Here"
    };
    cs_answer(&callee, &got, final_status, None);
    let (answer, _) = recv(caller);
    assert!(
        answer.starts_with(&format!("SIP/2.0 {final_status}")),
        "{answer}"
    );
    let to = header(&answer, "To")[0].to_string();
    let ack = format!(
        "ACK sip:bob@{c} SIP/2.0\r\n{}\r\nMax-Forwards: 70\r\n{}\r\n{to}\r\n{}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        header(&inv, "Via")[0],
        header(&inv, "From")[0],
        header(&inv, "Call-ID")[0],
    );
    caller.send_to(ack.as_bytes(), r.edge).unwrap();
    let (got_ack, _) = recv(&callee);
    assert!(got_ack.starts_with("ACK "), "{got_ack}");
    assert_eq!(
        branch_of(&got_ack),
        invite_branch,
        "the ACK matches the callee's INVITE transaction"
    );
    assert_eq!(header(&got_ack, "Via").len(), header(&got, "Via").len());
    Rig::silent(&callee);
    let log = cs.stop();
    let legs = |m: &str| -> Vec<String> {
        log.iter()
            .filter(|(x, _)| x == m)
            .map(|(_, l)| l.clone())
            .collect()
    };
    assert_eq!(legs("INVITE"), ["orig", "term"]);
    assert_eq!(
        legs("ACK"),
        legs("INVITE"),
        "the ACK passes every function the INVITE did"
    );
    let counts: HashMap<&str, usize> = log.iter().fold(HashMap::new(), |mut m, (x, _)| {
        *m.entry(x.as_str()).or_default() += 1;
        m
    });
    assert_eq!(counts.get("ACK"), Some(&2));
}

#[test]
fn class7_the_ack_of_a_486_follows_the_invites_legs() {
    session_to_a_busy_or_cancelled_callee(false);
}

#[test]
fn class7_the_ack_of_a_487_after_cancel_follows_the_invites_legs() {
    session_to_a_busy_or_cancelled_callee(true);
}
