//! Requests to Conversation Server shards over TCP and TLS (README
//! "Transports") over real loopback sockets: a UDP client's INVITE to a
//! `tls` shard (the shard verified against `[tls] shard_ca`, the edge's
//! client certificate presented), the answer back to the client over UDP;
//! a `udp+tcp` shard getting a small request over UDP and one over 1300
//! bytes over TCP (RFC 3261 §18.1.1); a TLS client to a TLS shard.

mod common;
#[path = "common/tls.rs"]
mod tls;
use common::*;
use cpm_edge::config::Config;
use cpm_edge::io::tls::ServerPem;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tls::Ca;

/// A shard's stream side: one accepted connection, TLS if `tls` is given.
fn accept_one(l: &TcpListener, tls: Option<Arc<rustls::ServerConfig>>) -> Box<dyn ReadWrite> {
    let (s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    match tls {
        None => Box::new(s),
        Some(cfg) => {
            let c = rustls::ServerConnection::new(cfg).unwrap();
            Box::new(rustls::StreamOwned::new(c, s))
        }
    }
}

trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

/// The shard's 200 to a request it read from its connection, written on it.
fn answer_on(c: &mut dyn ReadWrite, req: &str) {
    let keep = |n: &str| header(req, n).join("\r\n");
    let resp = format!(
        "SIP/2.0 200 OK\r\n{}\r\n{}\r\n{};tag=cs\r\n{}\r\n{}\r\nContent-Length: 0\r\n\r\n",
        keep("Via"),
        keep("From"),
        keep("To"),
        keep("Call-ID"),
        keep("CSeq"),
    );
    c.write_all(resp.as_bytes()).unwrap();
    c.flush().unwrap();
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(name: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("cpm-links-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

/// An edge with one shard at `shard` (`transport`), `[tls]` as given.
fn edge(shard: SocketAddr, transport: &str, tls: &str) -> cpm_edge::dataplane::worker::Server {
    let toml = format!(
        "[listen]\naddr = \"127.0.0.1:{}\"\n[workers]\ncount = 2\nio = \"mmsg\"\n\
         [health]\nenabled = false\n{tls}\n\
         [[shard]]\nname = \"cs1\"\naddr = \"{shard}\"\ntransport = \"{transport}\"\n\
         [[group]]\nid = \"sip:grp3@groups.example.net\"\nshard = \"cs1\"\n",
        free_port()
    );
    let valid = Config::parse(&toml).unwrap().validate().unwrap();
    cpm_edge::app::start_server(&valid).unwrap()
}

#[test]
fn a_udp_clients_invite_reaches_a_tls_shard_which_knows_the_edge_by_its_certificate() {
    let d = dir("tls");
    let ca = Ca::new("cpm test CA");
    let shard_cert = ca.leaf(&["127.0.0.1"]);
    let edge_cert = ca.leaf(&["edge.example.net"]);
    let (ec, ek) = edge_cert.write(&d.0, "edge");
    std::fs::write(d.0.join("ca.pem"), &ca.pem).unwrap();
    // The shard requires a client certificate from the test CA.
    std::fs::write(d.0.join("shard.crt"), &shard_cert.cert_pem).unwrap();
    let shard_cfg = cpm_edge::io::tls::server_config(&ServerPem {
        chain: shard_cert.cert_pem.as_bytes(),
        key: shard_cert.key_pem.as_bytes(),
        client_ca: Some(ca.pem.as_bytes()),
        require_client_cert: true,
    })
    .unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let shard = l.local_addr().unwrap();
    let tls = format!(
        "[tls]\nshard_ca = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
        d.0.join("ca.pem").display(),
        ec.display(),
        ek.display()
    );
    let server = edge(shard, "tls", &tls);
    let client = sock();
    let edge_at = server.local_addr;
    let cfg = Arc::new(shard_cfg);
    let srv = std::thread::spawn(move || {
        let mut c = accept_one(&l, Some(cfg));
        let mut got = Vec::new();
        for _ in 0..2 {
            let req = read_sip(&mut c);
            answer_on(&mut *c, &req);
            got.push(req);
        }
        got
    });
    for n in 1..=2 {
        let inv = String::from_utf8(invite_to_group("grp3", "alice", ""))
            .unwrap()
            .replace("alice-call-1@", &format!("alice-call-{n}@"))
            .replace("192.0.2.10:5062", &client.local_addr().unwrap().to_string());
        client.send_to(inv.as_bytes(), edge_at).unwrap();
        let (ok, _) = recv(&client);
        assert!(ok.starts_with("SIP/2.0 200 OK"), "{ok}");
        assert!(ok.contains(&format!("alice-call-{n}@")), "{ok}");
    }
    let got = srv.join().unwrap();
    // Both on one connection, our Via saying TLS.
    for req in &got {
        assert!(
            req.starts_with("INVITE sip:grp3@groups.example.net"),
            "{req}"
        );
        assert!(header(req, "Via")[0].contains("SIP/2.0/TLS"), "{req}");
        // RFC 5923: over TLS the shard may send its requests back on it.
        assert!(header(req, "Via")[0].ends_with(";alias"), "{req}");
    }
    assert_eq!(
        server
            .streams
            .as_ref()
            .unwrap()
            .link_failed
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    server.stop().unwrap();
}

#[test]
fn a_udp_tcp_shard_gets_a_request_over_1300_bytes_over_tcp_and_smaller_ones_over_udp() {
    // One port, both transports, as a CS listens.
    let port = free_port();
    let shard: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let udp = UdpSocket::bind(shard).unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let l = TcpListener::bind(shard).unwrap();
    let server = edge(shard, "udp+tcp", "");
    let client = sock();
    let me = client.local_addr().unwrap().to_string();
    let small = String::from_utf8(invite_to_group("grp3", "alice", ""))
        .unwrap()
        .replace("192.0.2.10:5062", &me);
    assert!(small.len() < 1000);
    client.send_to(small.as_bytes(), server.local_addr).unwrap();
    let (fwd, _) = recv(&udp);
    assert!(header(&fwd, "Via")[0].contains("SIP/2.0/UDP"), "{fwd}");
    cs_answer(&udp, &fwd, "200 OK", None);
    assert!(recv(&client).0.starts_with("SIP/2.0 200 OK"));
    // The same with a 1 500-byte header: TCP, our Via says so.
    let pad = format!("X-Pad: {}\r\n", "p".repeat(1500));
    let large = String::from_utf8(invite_to_group("grp3", "alice", &pad))
        .unwrap()
        .replace("alice-call-1@", "alice-call-2@")
        .replace("192.0.2.10:5062", &me);
    client.send_to(large.as_bytes(), server.local_addr).unwrap();
    let mut c = accept_one(&l, None);
    let req = read_sip(&mut c);
    assert!(req.contains("alice-call-2@") && req.len() > 1300, "{req}");
    assert!(header(&req, "Via")[0].contains("SIP/2.0/TCP"), "{req}");
    assert!(
        !header(&req, "Via")[0].contains(";alias"),
        "not over TCP: {req}"
    );
    answer_on(&mut *c, &req);
    let (ok, _) = recv(&client);
    assert!(
        ok.starts_with("SIP/2.0 200 OK") && ok.contains("alice-call-2@"),
        "{ok}"
    );
    server.stop().unwrap();
}

#[test]
fn a_tls_shard_whose_certificate_the_edge_cannot_verify_gets_nothing() {
    let d = dir("untrusted");
    let ours = Ca::new("our CA");
    let theirs = Ca::new("another CA");
    std::fs::write(d.0.join("ca.pem"), &ours.pem).unwrap();
    let cert = theirs.leaf(&["127.0.0.1"]);
    let cfg = cpm_edge::io::tls::server_config(&ServerPem {
        chain: cert.cert_pem.as_bytes(),
        key: cert.key_pem.as_bytes(),
        client_ca: None,
        require_client_cert: false,
    })
    .unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let shard = l.local_addr().unwrap();
    let server = edge(
        shard,
        "tls",
        &format!("[tls]\nshard_ca = \"{}\"\n", d.0.join("ca.pem").display()),
    );
    let client = sock();
    let inv = String::from_utf8(invite_to_group("grp3", "alice", ""))
        .unwrap()
        .replace("192.0.2.10:5062", &client.local_addr().unwrap().to_string());
    client.send_to(inv.as_bytes(), server.local_addr).unwrap();
    let mut c = accept_one(&l, Some(Arc::new(cfg)));
    // The edge aborts the handshake: the shard reads no request.
    let mut b = [0u8; 64];
    assert!(matches!(
        std::io::Read::read(&mut c, &mut b),
        Ok(0) | Err(_)
    ));
    let st = server.streams.clone().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while st.closed_tls.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the refused link is counted"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    server.stop().unwrap();
}

#[test]
fn a_tls_shard_that_opened_its_own_connection_gets_the_edges_requests_on_it() {
    let d = dir("reuse");
    let ca = Ca::new("cpm test CA");
    let (ec, ek) = ca.leaf(&["edge.example.net"]).write(&d.0, "edge");
    std::fs::write(d.0.join("ca.pem"), &ca.pem).unwrap();
    // The shard's listener: the edge would open its link here; with reuse
    // it never has to.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let shard = l.local_addr().unwrap();
    let ca_pem = d.0.join("ca.pem");
    let toml = format!(
        "[listen]\naddr = \"127.0.0.1:{}\"\n[workers]\ncount = 1\nio = \"mmsg\"\n\
         [health]\nenabled = false\n\
         [tls]\nenabled = true\nport = 0\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n\
         shard_ca = \"{}\"\n\
         [[shard]]\nname = \"cs1\"\naddr = \"{shard}\"\ntransport = \"tls\"\n\
         [[group]]\nid = \"sip:grp3@groups.example.net\"\nshard = \"cs1\"\n",
        free_port(),
        ec.display(),
        ek.display(),
        ca_pem.display(),
        ca_pem.display(),
    );
    let valid = Config::parse(&toml).unwrap().validate().unwrap();
    let server = cpm_edge::app::start_server(&valid).unwrap();
    let edge_udp = server.local_addr;
    // The shard connects with its certificate and says who it is.
    let cert = ca.leaf(&["127.0.0.1"]);
    let mut s = tls::connect(
        server.tls_addr.unwrap(),
        "edge.example.net",
        tls::client_config(&ca, Some(&cert)),
    )
    .unwrap();
    let options = format!(
        "OPTIONS sip:{edge_udp} SIP/2.0\r\nVia: SIP/2.0/TLS {shard};branch=z9hG4bK-ka;alias\r\n\
         Max-Forwards: 70\r\nFrom: <sip:cs1@{shard}>;tag=k\r\nTo: <sip:{edge_udp}>\r\n\
         Call-ID: ka-1@cs1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(options.as_bytes()).unwrap();
    s.flush().unwrap();
    assert!(read_sip(&mut s).starts_with("SIP/2.0 200 OK"));
    // A client's INVITE for the shard's group: on the shard's connection.
    let client = sock();
    let inv = String::from_utf8(invite_to_group("grp3", "alice", ""))
        .unwrap()
        .replace("192.0.2.10:5062", &client.local_addr().unwrap().to_string());
    client.send_to(inv.as_bytes(), edge_udp).unwrap();
    let req = read_sip(&mut s);
    assert!(req.starts_with("INVITE sip:grp3@"), "{req}");
    assert!(header(&req, "Via")[0].contains("SIP/2.0/TLS"), "{req}");
    answer_on(&mut s, &req);
    let (ok, _) = recv(&client);
    assert!(ok.starts_with("SIP/2.0 200 OK"), "{ok}");
    assert!(
        matches!(l.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the edge opened no link of its own"
    );
    server.stop().unwrap();
}

/// The media policy (seed 5.2.3.7) in front of a `tcp` shard: the slow
/// path's filtered offer reaches the shard over TCP, on the receiving
/// worker's own link to it (through that worker's mail), never over UDP.
#[test]
fn a_filtered_offer_reaches_a_tcp_shard_on_the_workers_link() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let shard = l.local_addr().unwrap();
    // Nothing of the shard's listens on UDP: a datagram would be lost.
    let policy = "[policy.default]\nallowed_media = [\"message\"]\n";
    let server = edge(shard, "tcp", policy);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    // One link per worker at most: each connection read on its own thread.
    std::thread::spawn(move || {
        for s in l.incoming().take(2) {
            let Ok(s) = s else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut c: Box<dyn ReadWrite> = Box::new(s);
                loop {
                    let req = read_sip(&mut c);
                    if req.is_empty() {
                        return;
                    }
                    answer_on(&mut *c, &req);
                    if tx.send(req).is_err() {
                        return;
                    }
                }
            });
        }
    });
    // Several clients: their INVITEs reach both workers.
    let clients: Vec<UdpSocket> = (0..6).map(|_| sock()).collect();
    for (n, client) in clients.iter().enumerate() {
        let inv = String::from_utf8(invite_to_group("grp3", "alice", ""))
            .unwrap()
            .replace("alice-call-1@", &format!("alice-call-{n}@"))
            .replace("192.0.2.10:5062", &client.local_addr().unwrap().to_string());
        client.send_to(inv.as_bytes(), server.local_addr).unwrap();
        let req = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the offer over TCP");
        assert!(req.contains(&format!("alice-call-{n}@")), "{req}");
        assert!(header(&req, "Via")[0].contains("SIP/2.0/TCP"), "{req}");
        assert!(
            req.contains("m=audio 0 RTP/AVP 0\r\n") && req.contains("m=message 7394 "),
            "filtered by the slow path: {req}"
        );
        let (ok, _) = recv(client);
        assert!(ok.starts_with("SIP/2.0 200 OK"), "{ok}");
    }
    let st = &server.slow.as_ref().unwrap().stats;
    assert_eq!(
        (
            st.offers_filtered
                .load(std::sync::atomic::Ordering::Relaxed),
            st.send_errors.load(std::sync::atomic::Ordering::Relaxed)
        ),
        (6, 0)
    );
    server.stop().unwrap();
}
