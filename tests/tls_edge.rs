//! SIP over TLS through the edge over real loopback sockets: rustls
//! clients, UDP Conversation Server shards (plain sockets), the edge's real
//! workers (two) on both io backends; certificates from a test CA (rcgen).
//! Faults: bytes that are not TLS, a handshake never begun, a client
//! without the certificate the edge requires; certificates re-read on
//! reload, and on SIGHUP by the real binary.

mod common;
#[path = "common/tls.rs"]
mod tls;
use common::*;
use cpm_edge::config::Config;
use cpm_edge::dataplane::worker::Server;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tls::{Ca, TlsClient};

struct Rig {
    server: Server,
    tls: SocketAddr,
    shard: UdpSocket,
    dir: Scratch,
    ca: Ca,
}

/// A directory of one test's files, removed when the test ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

fn scratch_dir(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("cpm-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// The edge's TOML with TLS on `tls_port` from `dir/edge.{crt,key}`,
/// one shard.
fn edge_toml(
    io: &str,
    tls_port: u16,
    dir: &std::path::Path,
    shard: SocketAddr,
    extra: &str,
) -> String {
    format!(
        "[listen]\naddr = \"127.0.0.1:{}\"\n[workers]\ncount = 2\nio = \"{io}\"\n\
         [health]\nenabled = false\n[admin]\nbind = \"\"\n\
         [tls]\nenabled = true\nport = {tls_port}\ncert = \"{}\"\nkey = \"{}\"\n{extra}\n\
         [[shard]]\nname = \"cs1\"\naddr = \"{shard}\"\n\
         [[group]]\nid = \"sip:grp3@groups.example.net\"\nshard = \"cs1\"\n",
        free_port(),
        dir.join("edge.crt").display(),
        dir.join("edge.key").display(),
    )
}

/// `extra` may name the CA's PEM file (the one every certificate of the
/// rig chains to) as `CA_PEM`.
fn rig(io: &str, name: &str, extra: &str) -> Rig {
    let dir = scratch_dir(name);
    let ca = Ca::new("cpm test CA");
    ca.leaf(&["edge.example.net"]).write(&dir, "edge");
    std::fs::write(dir.join("ca.pem"), &ca.pem).unwrap();
    let extra = extra.replace("CA_PEM", &dir.join("ca.pem").display().to_string());
    let shard = sock();
    let toml = edge_toml(io, 0, &dir, shard.local_addr().unwrap(), &extra);
    let valid = Config::parse(&toml).unwrap().validate().unwrap();
    let server = cpm_edge::app::start_server(&valid).unwrap();
    let tls = server.tls_addr.expect("a TLS listener");
    Rig {
        server,
        tls,
        shard,
        dir,
        ca,
    }
}

fn connect(r: &Rig) -> TlsClient {
    tls::connect(r.tls, "edge.example.net", tls::client_config(&r.ca, None)).unwrap()
}

/// A client's INVITE over TLS (its Via says so).
fn tls_invite(c: &TlsClient, user: &str, n: u32) -> Vec<u8> {
    let a = c.sock.local_addr().unwrap();
    String::from_utf8(invite_to_group("grp3", user, ""))
        .unwrap()
        .replace("SIP/2.0/UDP 192.0.2.10:5062", &format!("SIP/2.0/TLS {a}"))
        .replace(&format!("{user}-call-1@"), &format!("{user}-call-{n}@"))
        .into_bytes()
}

fn stat(
    r: &Rig,
    f: impl Fn(&cpm_edge::dataplane::streams::StreamStats) -> &std::sync::atomic::AtomicU64,
) -> u64 {
    f(r.server.streams.as_ref().unwrap()).load(Ordering::Relaxed)
}

/// Until `cond` holds (5 s), else the test fails with `what`.
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The connection ended: a read returns end of stream or an error.
fn ends(s: &mut impl Read) -> bool {
    let mut b = [0u8; 256];
    loop {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return true,
            Ok(_) => continue,
        }
    }
}

#[test]
fn a_tls_clients_invite_reaches_its_udp_shard_and_the_answers_come_back_over_tls() {
    for io in backends() {
        let r = rig(io, &format!("invite-{io}"), "");
        let mut clients: Vec<TlsClient> = (0..6).map(|_| connect(&r)).collect();
        for (n, c) in clients.iter_mut().enumerate() {
            let inv = tls_invite(c, "alice", n as u32);
            c.write_all(&inv).unwrap();
            c.flush().unwrap();
            let (fwd, _) = recv(&r.shard);
            assert!(
                fwd.starts_with("INVITE sip:grp3@groups.example.net"),
                "{fwd}"
            );
            // The edge's own Via is UDP toward the shard, naming the flow;
            // the client's TLS Via stays below it.
            let vias = header(&fwd, "Via");
            assert!(
                vias[0].contains("SIP/2.0/UDP") && vias[0].contains(";cpm-flow="),
                "{fwd}"
            );
            assert!(vias[1].contains("SIP/2.0/TLS"), "{fwd}");
            cs_answer(&r.shard, &fwd, "180 Ringing", None);
            cs_answer(&r.shard, &fwd, "200 OK", None);
            let ringing = read_sip(c);
            assert!(ringing.starts_with("SIP/2.0 180 Ringing"), "{ringing}");
            let ok = read_sip(c);
            assert!(ok.starts_with("SIP/2.0 200 OK"), "{ok}");
            // The edge's Via is gone; the client's is on top again.
            let v = header(&ok, "Via");
            assert_eq!(v.len(), 1, "{ok}");
            assert!(v[0].contains("SIP/2.0/TLS"), "{ok}");
        }
        assert_eq!(stat(&r, |s| &s.messages), 6);
        assert_eq!(stat(&r, |s| &s.closed_tls), 0);
        // On io_uring the connections receive through the ring.
        let ring = if io == "uring" { 2 } else { 0 };
        assert_eq!(stat(&r, |s| &s.ring_workers), ring);
        // A keep-alive ping over TLS gets its pong over TLS.
        let c = &mut clients[0];
        c.write_all(b"\r\n\r\n").unwrap();
        c.flush().unwrap();
        let mut pong = [0u8; 2];
        c.read_exact(&mut pong).unwrap();
        assert_eq!(&pong, b"\r\n");
        r.server.stop().unwrap();
    }
}

#[test]
fn bytes_that_are_not_tls_and_a_handshake_never_begun_are_closed_and_counted() {
    for io in backends() {
        let r = rig(io, &format!("faults-{io}"), "handshake_ms = 300");
        // Plain SIP at the TLS port: rustls rejects the first record.
        let mut plain = TcpStream::connect(r.tls).unwrap();
        plain
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        plain
            .write_all(&invite_to_group("grp3", "mallory", ""))
            .unwrap();
        assert!(
            ends(&mut plain),
            "the edge must close a connection that speaks no TLS"
        );
        wait_for("closed_tls", || stat(&r, |s| &s.closed_tls) == 1);
        // Random bytes that look like a record header, then garbage.
        let mut junk = TcpStream::connect(r.tls).unwrap();
        junk.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        junk.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
            .unwrap();
        assert!(ends(&mut junk));
        wait_for("closed_tls", || stat(&r, |s| &s.closed_tls) == 2);
        // A connection that never begins its handshake: closed at 300 ms.
        let mut mute = TcpStream::connect(r.tls).unwrap();
        mute.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let t0 = Instant::now();
        assert!(ends(&mut mute));
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "closed by the handshake deadline"
        );
        wait_for("closed_handshake", || {
            stat(&r, |s| &s.closed_handshake) == 1
        });
        // Nothing reached the shard, and TLS still serves the next client.
        r.shard.set_nonblocking(true).unwrap();
        let mut b = [0u8; 100];
        assert!(r.shard.recv_from(&mut b).is_err(), "nothing forwarded");
        r.shard.set_nonblocking(false).unwrap();
        let mut c = connect(&r);
        c.write_all(&tls_invite(&c, "alice", 1)).unwrap();
        c.flush().unwrap();
        let (fwd, _) = recv(&r.shard);
        assert!(fwd.starts_with("INVITE "), "{fwd}");
        // A completed handshake is not closed by its deadline later.
        std::thread::sleep(Duration::from_millis(500));
        cs_answer(&r.shard, &fwd, "200 OK", None);
        assert!(read_sip(&mut c).starts_with("SIP/2.0 200 OK"));
        assert_eq!(stat(&r, |s| &s.closed_handshake), 1);
        r.server.stop().unwrap();
    }
}

#[test]
fn a_required_client_certificate_admits_the_cas_clients_only() {
    let dir = scratch_dir("mutual");
    let ca = Ca::new("cpm test CA");
    ca.leaf(&["edge.example.net"]).write(&dir, "edge");
    let clients_ca = Ca::new("CS link CA");
    std::fs::write(dir.join("clients.pem"), &clients_ca.pem).unwrap();
    let shard = sock();
    let extra = format!(
        "client_ca = \"{}\"\nrequire_client_cert = true",
        dir.join("clients.pem").display()
    );
    let toml = edge_toml("mmsg", 0, &dir, shard.local_addr().unwrap(), &extra);
    let valid = Config::parse(&toml).unwrap().validate().unwrap();
    let server = cpm_edge::app::start_server(&valid).unwrap();
    let at = server.tls_addr.unwrap();
    let stats = server.streams.clone().unwrap();
    // No certificate: the handshake fails (TLS 1.3 reports it at the
    // client's first read), and the edge counts a TLS close.
    let mut anon = tls::connect(at, "edge.example.net", tls::client_config(&ca, None)).unwrap();
    let _ = anon.write_all(b"OPTIONS sip:x SIP/2.0\r\n\r\n");
    assert!(ends(&mut anon));
    // A certificate from another CA: refused too.
    let stranger = ca.leaf(&["stranger.example.net"]);
    let mut s = tls::connect(
        at,
        "edge.example.net",
        tls::client_config(&ca, Some(&stranger)),
    )
    .unwrap();
    let _ = s.write_all(b"OPTIONS sip:x SIP/2.0\r\n\r\n");
    assert!(ends(&mut s));
    wait_for("two refused clients", || {
        stats.closed_tls.load(Ordering::Relaxed) == 2
    });
    // The CS link CA's client: served.
    let cs = clients_ca.leaf(&["cs1.example.net"]);
    let mut c = tls::connect(at, "edge.example.net", tls::client_config(&ca, Some(&cs))).unwrap();
    c.write_all(&tls_invite(&c, "alice", 1)).unwrap();
    c.flush().unwrap();
    let (fwd, _) = recv(&shard);
    assert!(fwd.starts_with("INVITE "), "{fwd}");
    server.stop().unwrap();
}

#[test]
fn a_reload_serves_the_new_certificate_to_new_handshakes_and_keeps_sessions() {
    let r = rig("mmsg", "reload", "");
    let mut old = connect(&r);
    let first = tls::server_cert(&old);
    // New files in place, then a reload.
    let next = r.ca.leaf(&["edge.example.net"]);
    next.write(&r.dir, "edge");
    r.server.tls.as_ref().unwrap().reload().unwrap();
    let fresh = connect(&r);
    assert_eq!(tls::server_cert(&fresh), next.der, "the new certificate");
    assert_ne!(first, next.der);
    // A broken key: the reload fails and the certificate in use stays.
    std::fs::write(
        r.dir.join("edge.key"),
        "-----BEGIN PRIVATE KEY-----\nnot base64\n",
    )
    .unwrap();
    let err = r.server.tls.as_ref().unwrap().reload().unwrap_err();
    assert!(err.contains("private key"), "{err}");
    assert_eq!(tls::server_cert(&connect(&r)), next.der);
    // The session begun before the reload still carries SIP.
    old.write_all(&tls_invite(&old, "bob", 7)).unwrap();
    old.flush().unwrap();
    let (fwd, _) = recv(&r.shard);
    cs_answer(&r.shard, &fwd, "200 OK", None);
    assert!(read_sip(&mut old).starts_with("SIP/2.0 200 OK"));
}

#[test]
fn sighup_rereads_the_certificate_and_metrics_count_tls_closes() {
    let dir = scratch_dir("sighup");
    let ca = Ca::new("cpm test CA");
    ca.leaf(&["edge.example.net"]).write(&dir, "edge");
    let shard = sock();
    let (tls_port, admin_port) = (free_port(), free_port());
    let toml = edge_toml("mmsg", tls_port, &dir, shard.local_addr().unwrap(), "")
        .replace("bind = \"\"", &format!("bind = \"127.0.0.1:{admin_port}\""));
    let cfg = dir.join("edge.toml");
    std::fs::write(&cfg, toml).unwrap();
    let child = spawn_quiet(env!("CARGO_BIN_EXE_cpm-edge"), &cfg);
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let at: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    wait_for("the edge's admin API", || {
        TcpStream::connect(admin).is_ok() && http(admin, "GET", "/health", "", None).0 == 200
    });
    let name = "edge.example.net";
    let before = tls::server_cert(&tls::connect(at, name, tls::client_config(&ca, None)).unwrap());
    let next = ca.leaf(&[name]);
    next.write(&dir, "edge");
    // SAFETY: kill(2) with the PID of the child this test started.
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGHUP) }, 0);
    wait_for("the new certificate", || {
        tls::connect(at, name, tls::client_config(&ca, None))
            .is_ok_and(|c| tls::server_cert(&c) == next.der)
    });
    assert_ne!(before, next.der);
    let mut junk = TcpStream::connect(at).unwrap();
    junk.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    junk.write_all(b"NOT TLS\r\n\r\n").unwrap();
    assert!(ends(&mut junk));
    wait_for("the TLS close in /metrics", || {
        let (_, m) = http(admin, "GET", "/metrics", "", None);
        m.contains("cpm_edge_stream_closed_total{why=\"tls\"} 1")
            && m.contains("cpm_edge_reloads_total{result=\"ok\"} 1")
    });
}

#[test]
fn a_tls_configuration_that_cannot_serve_is_refused_at_validation() {
    let dir = scratch_dir("config");
    let ca = Ca::new("cpm test CA");
    let shard: SocketAddr = "127.0.0.1:5999".parse().unwrap();
    let refuse = |toml: &str, why: &str| {
        let e = Config::parse(toml)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains(why), "{e} (expected {why})");
    };
    // No files named.
    refuse(
        &edge_toml("mmsg", 0, &dir, shard, "").replace("cert = \"", "cert = \"\"\n#"),
        "enabled needs cert and key",
    );
    // Files that do not exist yet.
    refuse(&edge_toml("mmsg", 0, &dir, shard, ""), "edge.crt");
    // A key that is not the certificate's.
    ca.leaf(&["edge.example.net"]).write(&dir, "edge");
    let other = ca.leaf(&["edge.example.net"]);
    std::fs::write(dir.join("edge.key"), &other.key_pem).unwrap();
    refuse(&edge_toml("mmsg", 0, &dir, shard, ""), "KeyMismatch");
    // TLS on the TCP listener's port.
    ca.leaf(&["edge.example.net"]).write(&dir, "edge");
    let t = edge_toml("mmsg", 0, &dir, shard, "");
    let port: u16 = t
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|p| p.split('"').next())
        .unwrap()
        .parse()
        .unwrap();
    let same = t.replace("port = 0", &format!("port = {port}")) + "[tcp]\nenabled = true\n";
    refuse(&same, "the TCP listener has that port");
    // And the good one validates.
    Config::parse(&t).unwrap().validate().unwrap();
}

/// A TLS client's session set up through the edge (its INVITE number `n`
/// to the shard, the shard's 200 back): the client, the INVITE as the
/// shard got it, and the edge's Record-Route in it.
fn tls_dialog(r: &Rig, n: u32) -> (TlsClient, String, String) {
    let mut c = connect(r);
    c.write_all(&tls_invite(&c, "alice", n)).unwrap();
    c.flush().unwrap();
    let (inv, _) = recv(&r.shard);
    let rr = header(&inv, "Record-Route")[0].to_string();
    cs_answer(&r.shard, &inv, "200 OK", None);
    assert!(read_sip(&mut c).starts_with("SIP/2.0 200 OK"));
    (c, inv, rr)
}

/// The client's 200 to a request it got (every Via, in order).
fn client_ok(req: &str) -> String {
    ua_answer(req, "200 OK", None)
}

/// A request inside the dialog of `invite` (as the shard received it),
/// from the shard toward the client: along the edge's Record-Route entry.
fn in_dialog_request(invite: &str, shard: SocketAddr, method: &str, rr: &str) -> String {
    let route = rr.trim_start_matches("Record-Route:").trim();
    let from = header(invite, "From")[0].trim_start_matches("From:").trim();
    let to = header(invite, "To")[0].trim_start_matches("To:").trim();
    format!(
        "{method} sip:alice@192.0.2.10:5062;transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/UDP {shard};branch=z9hG4bK-cs-{method}\r\n\
         Route: {route}\r\nMax-Forwards: 70\r\n\
         From: {to};tag=cs\r\nTo: {from}\r\n{}\r\nCSeq: 2 {method}\r\nContent-Length: 0\r\n\r\n",
        header(invite, "Call-ID")[0]
    )
}

#[test]
fn a_bye_inside_the_dialog_reaches_the_tls_client_on_its_connection() {
    for io in backends() {
        let r = rig(io, &format!("bye-{io}"), "");
        // Several clients so that the BYE often reaches a worker that does
        // not own the connection (then it goes by the owner's mail).
        let mut clients: Vec<TlsClient> = (0..4).map(|_| connect(&r)).collect();
        let edge_udp = r.server.local_addr;
        let shard_at = r.shard.local_addr().unwrap();
        for (n, c) in clients.iter_mut().enumerate() {
            c.write_all(&tls_invite(c, "alice", n as u32)).unwrap();
            c.flush().unwrap();
            let (inv, _) = recv(&r.shard);
            let rr = header(&inv, "Record-Route")[0].to_string();
            assert!(
                rr.contains(";lr;cpm-flow="),
                "the flow in our Record-Route: {rr}"
            );
            cs_answer(&r.shard, &inv, "200 OK", None);
            assert!(read_sip(c).starts_with("SIP/2.0 200 OK"));
            // The Conversation Server ends the session.
            let bye = in_dialog_request(&inv, shard_at, "BYE", &rr);
            r.shard.send_to(bye.as_bytes(), edge_udp).unwrap();
            let got = read_sip(c);
            assert!(got.starts_with("BYE sip:alice@192.0.2.10:5062"), "{got}");
            assert!(header(&got, "Route").is_empty(), "our Route popped: {got}");
            let vias = header(&got, "Via");
            assert_eq!(vias.len(), 2, "{got}");
            assert!(
                vias[0].contains("SIP/2.0/TLS "),
                "our Via names the transport the BYE left on: {got}"
            );
            assert!(vias[1].contains("z9hG4bK-cs-BYE"), "{got}");
            // The client's 200 goes back on its connection and on to the shard.
            c.write_all(client_ok(&got).as_bytes()).unwrap();
            c.flush().unwrap();
            let (resp, _) = recv(&r.shard);
            assert!(resp.starts_with("SIP/2.0 200 OK"), "{resp}");
            assert!(resp.contains("CSeq: 2 BYE"), "{resp}");
            assert_eq!(header(&resp, "Via").len(), 1, "{resp}");
        }
        r.server.stop().unwrap();
    }
}

#[test]
fn only_a_shard_may_send_a_request_to_a_clients_flow_and_a_forged_token_gets_430() {
    let r = rig("mmsg", "flow-trust", "");
    let (mut c, inv, rr) = tls_dialog(&r, 1);
    // A stranger on UDP replays the Route with the real token: the edge
    // never puts a client's request on a connection.
    let stranger = sock();
    let sa = stranger.local_addr().unwrap();
    let bye = in_dialog_request(&inv, sa, "BYE", &rr);
    stranger
        .send_to(bye.as_bytes(), r.server.local_addr)
        .unwrap();
    // (It is judged as any client's request: here refused, no CPM tag.)
    let (refused, _) = recv(&stranger);
    assert!(refused.starts_with("SIP/2.0 403 "), "{refused}");
    // The shard with a token whose MAC does not verify: nowhere.
    let at = rr.find(";cpm-flow=").unwrap() + ";cpm-flow=".len();
    let mut forged = rr.clone();
    let flip = if &rr[at..at + 1] == "0" { "1" } else { "0" };
    forged.replace_range(at..at + 1, flip);
    let bye = in_dialog_request(&inv, r.shard.local_addr().unwrap(), "BYE", &forged);
    r.shard
        .send_to(bye.as_bytes(), r.server.local_addr)
        .unwrap();
    let (failed, _) = recv(&r.shard);
    assert!(failed.starts_with("SIP/2.0 430 Flow Failed"), "{failed}");
    // Then the real one from the shard: the first thing on the connection.
    let bye = in_dialog_request(&inv, r.shard.local_addr().unwrap(), "INFO", &rr);
    r.shard
        .send_to(bye.as_bytes(), r.server.local_addr)
        .unwrap();
    let got = read_sip(&mut c);
    assert!(
        got.starts_with("INFO "),
        "only the shard's real token: {got}"
    );
}

#[test]
fn a_bye_for_a_tls_client_whose_connection_closed_gets_430_from_either_worker() {
    for io in backends() {
        flow_gone_gets_430(io);
    }
}

fn flow_gone_gets_430(io: &str) {
    let r = rig(io, &format!("flow-gone-{io}"), "");
    // Eight clients over the two workers: some connections belong to the
    // worker the shard's datagrams reach, some to the other (the BYE then
    // goes by mail, and the owner answers).
    let mut dialogs = Vec::new();
    for n in 0..8 {
        dialogs.push(tls_dialog(&r, n));
    }
    let shard_at = r.shard.local_addr().unwrap();
    let mut buf = vec![0u8; 65536];
    for (c, inv, rr) in dialogs {
        drop(c);
        // Until the edge has seen the close, the BYE goes onto the dying
        // connection and nothing answers: ask again.
        let t0 = Instant::now();
        let answer = loop {
            assert!(t0.elapsed() < Duration::from_secs(5), "no 430 for {rr}");
            let bye = in_dialog_request(&inv, shard_at, "BYE", &rr);
            r.shard
                .send_to(bye.as_bytes(), r.server.local_addr)
                .unwrap();
            r.shard
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            if let Ok((n, _)) = r.shard.recv_from(&mut buf) {
                break String::from_utf8_lossy(&buf[..n]).into_owned();
            }
        };
        assert!(answer.starts_with("SIP/2.0 430 Flow Failed"), "{answer}");
        assert!(answer.contains("CSeq: 2 BYE"), "{answer}");
        let vias = header(&answer, "Via");
        assert_eq!(vias.len(), 1, "the shard's Via alone: {answer}");
        assert!(vias[0].contains("z9hG4bK-cs-BYE"), "{answer}");
    }
    r.shard
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    r.server.stop().unwrap();
}

#[test]
fn a_shard_on_its_own_tls_connection_is_known_by_its_alias_and_certificate() {
    let r = rig("mmsg", "alias", "client_ca = \"CA_PEM\"");
    let (mut alice, inv, rr) = tls_dialog(&r, 1);
    // The Controlling Function ends the session on a TLS connection of its
    // own, its Via naming its shard address (RFC 5923).
    let shard_at = r.shard.local_addr().unwrap();
    let bye = |params: &str| {
        in_dialog_request(&inv, shard_at, "BYE", &rr).replace(
            &format!("Via: SIP/2.0/UDP {shard_at};branch=z9hG4bK-cs-BYE"),
            &format!("Via: SIP/2.0/TLS {shard_at};branch=z9hG4bK-cs-BYE{params}"),
        )
    };
    let from_shard = |names: &[&str]| {
        let cert = r.ca.leaf(names);
        tls::connect(
            r.tls,
            "edge.example.net",
            tls::client_config(&r.ca, Some(&cert)),
        )
        .unwrap()
    };
    // A certificate for another address, or no alias: a client like any
    // other, which may not use a client's flow.
    for (names, params) in [(["127.0.0.9"], ";alias"), (["127.0.0.1"], "")] {
        let mut s = from_shard(&names);
        s.write_all(bye(params).as_bytes()).unwrap();
        s.flush().unwrap();
        let refused = read_sip(&mut s);
        assert!(
            refused.starts_with("SIP/2.0 4"),
            "{names:?} {params}: {refused}"
        );
    }
    // The shard's certificate and alias: its BYE is the first thing on
    // alice's connection, and her 200 comes back on the shard's.
    let mut s = from_shard(&["127.0.0.1"]);
    s.write_all(bye(";alias").as_bytes()).unwrap();
    s.flush().unwrap();
    let got = read_sip(&mut alice);
    assert!(got.starts_with("BYE sip:alice@"), "{got}");
    let vias = header(&got, "Via");
    assert_eq!(vias.len(), 2, "{got}");
    alice.write_all(client_ok(&got).as_bytes()).unwrap();
    alice.flush().unwrap();
    let resp = read_sip(&mut s);
    assert!(resp.starts_with("SIP/2.0 200 OK"), "{resp}");
    assert!(resp.contains("CSeq: 2 BYE"), "{resp}");
    assert_eq!(header(&resp, "Via").len(), 1, "{resp}");
    r.server.stop().unwrap();
}

/// The body of `msg` replaced by `sdp` (Content-Length with it).
fn with_sdp(msg: &[u8], sdp: &str) -> Vec<u8> {
    let text = String::from_utf8(msg.to_vec()).unwrap();
    let (head, _) = text.split_once("\r\n\r\n").unwrap();
    let head: Vec<&str> = head
        .split("\r\n")
        .filter(|l| !l.starts_with("Content-Length"))
        .collect();
    let body = sdp.replace('\n', "\r\n");
    format!(
        "{}\r\nContent-Length: {}\r\n\r\n{body}",
        head.join("\r\n"),
        body.len()
    )
    .into_bytes()
}

const ANSWER_CHAT: &str = "v=0
o=cs 1 1 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=message 9000 TCP/MSRP *
a=accept-types:message/cpim
a=path:msrp://127.0.0.1:9000/cs1;tcp
m=audio 0 RTP/AVP 0
";

/// The media policy (seed 5.2.3.7) over TLS: the slow path filters a TLS
/// client's offer on its way to the shard, checks the shard's answer and
/// writes it on the client's connection (through the owner's mail), and
/// refuses an offer with nothing acceptable with `488` on the connection.
#[test]
fn a_tls_clients_offer_and_answer_pass_the_media_policy_on_its_connection() {
    for io in backends() {
        let policy = "[policy]\non_violation = \"reject\"\n\
                      [policy.default]\nallowed_media = [\"message\"]\n";
        let r = rig(io, &format!("policy-{io}"), policy);
        let mut clients: Vec<TlsClient> = (0..4).map(|_| connect(&r)).collect();
        for (n, c) in clients.iter_mut().enumerate() {
            c.write_all(&tls_invite(c, "alice", n as u32)).unwrap();
            c.flush().unwrap();
            let (fwd, _) = recv(&r.shard);
            assert!(fwd.starts_with("INVITE sip:grp3@"), "{fwd}");
            assert!(
                fwd.contains("m=audio 0 RTP/AVP 0\r\n") && fwd.contains("m=message 7394 "),
                "the audio stream refused, the chat kept: {fwd}"
            );
            assert!(header(&fwd, "Via")[0].contains(";cpm-flow="), "{fwd}");
            // Every other answer accepts the refused audio stream.
            let answer = match n % 2 {
                0 => ANSWER_CHAT.to_string(),
                _ => ANSWER_CHAT.replace("m=audio 0 ", "m=audio 4000 "),
            };
            cs_answer(&r.shard, &fwd, "200 OK", Some(&answer));
            let got = read_sip(c);
            let want = match n % 2 {
                0 => "SIP/2.0 200 OK",
                _ => "SIP/2.0 500 Answer Violates Media Policy",
            };
            assert!(got.starts_with(want), "{got}");
            assert_eq!(header(&got, "Via").len(), 1, "{got}");
        }
        // Nothing the policy allows: 488 on the connection.
        let c = &mut clients[0];
        let audio_only = SDP
            .split("m=audio")
            .next()
            .unwrap()
            .split("m=message")
            .next()
            .unwrap()
            .to_string()
            + "m=audio 49170 RTP/AVP 0\na=rtpmap:0 PCMU/8000\n";
        c.write_all(&with_sdp(&tls_invite(c, "alice", 9), &audio_only))
            .unwrap();
        c.flush().unwrap();
        let refused = read_sip(c);
        assert!(
            refused.starts_with("SIP/2.0 488 Not Acceptable Here"),
            "{refused}"
        );
        let st = &r.server.slow.as_ref().unwrap().stats;
        let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        assert_eq!(
            (
                n(&st.offers_filtered),
                n(&st.offers_rejected_488),
                n(&st.answers_replaced_500)
            ),
            (4, 1, 2)
        );
        r.server.stop().unwrap();
    }
}
