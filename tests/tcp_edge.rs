//! SIP over TCP through the edge over real loopback sockets: TCP clients,
//! UDP Conversation Server shards (plain sockets here), the edge's real
//! workers (two, so a shard's response often reaches the worker that does
//! not own the client's connection) on both io backends.

mod common;
use common::*;
use cpm_edge::config::Config;
use cpm_edge::dataplane::worker::Server;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

struct Rig {
    server: Server,
    edge: SocketAddr,
    shards: Vec<UdpSocket>,
}

fn rig(io: &str, tcp: &str) -> Rig {
    let shards: Vec<UdpSocket> = (0..2).map(|_| sock()).collect();
    let mut toml = format!(
        "[listen]\naddr = \"127.0.0.1:{}\"\n[workers]\ncount = 2\nio = \"{io}\"\n\
         [health]\nenabled = false\n[tcp]\nenabled = true\n{tcp}\n",
        free_port()
    );
    for (i, s) in shards.iter().enumerate() {
        toml += &format!(
            "[[shard]]\nname = \"cs{}\"\naddr = \"{}\"\n",
            i + 1,
            s.local_addr().unwrap()
        );
    }
    toml += "[[group]]\nid = \"sip:grp3@groups.example.net\"\nshard = \"cs2\"\n";
    let valid = Config::parse(&toml).unwrap().validate().unwrap();
    let server = cpm_edge::app::start_server(&valid).unwrap();
    let edge = server.local_addr;
    Rig {
        server,
        edge,
        shards,
    }
}

fn connect(edge: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(edge).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// A client's INVITE over TCP (its Via says so), from `c`.
fn tcp_invite(c: &TcpStream, user: &str, n: u32) -> Vec<u8> {
    let a = c.local_addr().unwrap();
    String::from_utf8(invite_to_group("grp3", user, ""))
        .unwrap()
        .replace("SIP/2.0/UDP 192.0.2.10:5062", &format!("SIP/2.0/TCP {a}"))
        .replace(&format!("{user}-call-1@"), &format!("{user}-call-{n}@"))
        .into_bytes()
}

#[test]
fn a_tcp_clients_invite_reaches_its_shard_and_the_answers_come_back_on_its_connection() {
    for io in backends() {
        let r = rig(io, "");
        // Several connections: the kernel spreads them over both workers'
        // listeners, and the shard's answers over both workers' sockets.
        let mut clients: Vec<TcpStream> = (0..16).map(|_| connect(r.edge)).collect();
        for (n, c) in clients.iter_mut().enumerate() {
            let inv = tcp_invite(c, "alice", n as u32);
            c.write_all(&inv).unwrap();
            let (i, fwd) = recv_any(&r.shards);
            let lines: Vec<&str> = fwd.split("\r\n").collect();
            assert!(
                lines[1].starts_with(&format!("Via: SIP/2.0/UDP {};branch=z9hG4bKcpe", r.edge))
                    && lines[1].contains(";cpm-flow="),
                "{io}: {fwd}"
            );
            let client_via = header(&fwd, "Via")[1].to_string();
            assert!(
                client_via.starts_with(&format!("Via: SIP/2.0/TCP {}", c.local_addr().unwrap())),
                "{client_via}"
            );
            cs_answer(&r.shards[i], &fwd, "180 Ringing", None);
            cs_answer(&r.shards[i], &fwd, "200 OK", None);
            let ringing = read_sip(c);
            assert!(
                ringing.starts_with("SIP/2.0 180 Ringing\r\n"),
                "{io}: {ringing}"
            );
            assert!(!ringing.contains("cpm-flow"), "our Via popped: {ringing}");
            let ok = read_sip(c);
            assert!(ok.starts_with("SIP/2.0 200 OK\r\n"), "{io}: {ok}");
            assert_eq!(header(&ok, "Call-ID"), header(&fwd, "Call-ID"));
        }
        let s = r.server.streams.as_ref().unwrap();
        assert_eq!(s.opened.load(Ordering::Relaxed), 16, "{io}");
        assert_eq!(s.messages.load(Ordering::Relaxed), 16, "{io}");
        // One shard's answers reach one worker; sixteen connections are
        // on both (all on one: 2^-15), so some answers went through the
        // owner's mail socket.
        assert!(s.mailed.load(Ordering::Relaxed) >= 1, "{io}");
        assert_eq!(s.undeliverable.load(Ordering::Relaxed), 0, "{io}");
    }
}

#[test]
fn the_edges_own_answers_pongs_and_a_broken_stream_stay_on_the_connection() {
    for io in backends() {
        let r = rig(io, "");
        let mut c = connect(r.edge);
        // A ping (RFC 5626 §4.4.1): a pong back.
        c.write_all(b"\r\n\r\n").unwrap();
        let mut pong = [0u8; 2];
        c.read_exact(&mut pong).unwrap();
        assert_eq!(&pong, b"\r\n");
        // A request without the CPM feature tag: the edge's 403, on the
        // connection.
        let plain = String::from_utf8(tcp_invite(&c, "bob", 1))
            .unwrap()
            .replace("Accept-Contact: *;+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session\"\r\n", "")
            .replace("P-Preferred-Service: urn:urn-7:3gpp-service.ims.icsi.oma.cpm.session\r\n", "")
            .replace(";+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session\"", "");
        c.write_all(plain.as_bytes()).unwrap();
        let no = read_sip(&mut c);
        assert!(
            no.starts_with("SIP/2.0 403 Forbidden - No CPM Feature Tag"),
            "{io}: {no}"
        );
        // A message without Content-Length cannot be framed: the edge
        // closes the connection.
        c.write_all(
            b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bK1\r\n\r\n",
        )
        .unwrap();
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        let s = r.server.streams.as_ref().unwrap();
        let t0 = Instant::now();
        while s.closed_framing.load(Ordering::Relaxed) == 0 {
            assert!(t0.elapsed() < Duration::from_secs(3), "{io}: not counted");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(s.pongs.load(Ordering::Relaxed), 1);
    }
}

#[test]
fn idle_and_trickling_connections_are_closed() {
    for io in backends() {
        let r = rig(io, "idle_s = 1\ngrace_ms = 300\nmin_rate = 1000\n");
        let s = r.server.streams.as_ref().unwrap();
        // Silent: closed at the idle timeout.
        let mut idle = connect(r.edge);
        // Trickling a header: closed by the minimum rate, well before.
        let mut slow = connect(r.edge);
        slow.write_all(b"INVITE sip:x SIP/2.0\r\n").unwrap();
        let mut buf = [0u8; 16];
        let t0 = Instant::now();
        assert_eq!(
            slow.read(&mut buf).unwrap_or(0),
            0,
            "{io}: the trickler is closed"
        );
        assert!(
            t0.elapsed() < Duration::from_millis(900),
            "{io}: by the rate, not idleness"
        );
        assert_eq!(
            idle.read(&mut buf).unwrap_or(0),
            0,
            "{io}: the idle one is closed"
        );
        while s.closed_idle.load(Ordering::Relaxed) < 1 {
            assert!(t0.elapsed() < Duration::from_secs(3), "{io}: not counted");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(s.closed_too_slow.load(Ordering::Relaxed), 1, "{io}");
    }
}

#[test]
fn connections_from_one_address_are_bounded_per_worker() {
    for io in backends() {
        // Two workers, two each: of five connections at least one worker
        // gets a third, which is refused at once.
        let r = rig(io, "max_per_ip = 2\n");
        let s = r.server.streams.as_ref().unwrap();
        let mut conns: Vec<TcpStream> = (0..5).map(|_| connect(r.edge)).collect();
        let t0 = Instant::now();
        while s.opened.load(Ordering::Relaxed) + s.refused_per_ip.load(Ordering::Relaxed) < 5 {
            assert!(t0.elapsed() < Duration::from_secs(3), "{io}: not all seen");
            std::thread::sleep(Duration::from_millis(10));
        }
        let refused = s.refused_per_ip.load(Ordering::Relaxed);
        assert!((1..=3).contains(&refused), "{io}: {refused} refused");
        assert!(s.opened.load(Ordering::Relaxed) <= 4);
        // The refused ones see their connection closed; the kept ones are
        // served (a ping answered).
        let mut closed = 0;
        for c in conns.iter_mut() {
            c.write_all(b"\r\n\r\n").unwrap();
            let mut pong = [0u8; 2];
            match c.read_exact(&mut pong) {
                Ok(()) => assert_eq!(&pong, b"\r\n"),
                Err(_) => closed += 1,
            }
        }
        assert_eq!(closed, refused, "{io}");
    }
}
