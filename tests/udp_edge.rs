//! The edge over real loopback UDP sockets: clients and Conversation Server
//! shards are plain sockets in this process, the edge runs its real workers
//! and io backend. Every test runs on both backends (io_uring when usable).

mod common;
use common::*;
use cpm_edge::config::Config;
use cpm_edge::dataplane::worker::Server;
use cpm_edge::io::IoChoice;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

struct Rig {
    server: Server,
    edge: SocketAddr,
    shards: Vec<UdpSocket>,
}

fn rig(io: &str, routing: &str) -> Rig {
    let shards: Vec<UdpSocket> = (0..4).map(|_| sock()).collect();
    let mut toml = format!(
        "[listen]\naddr = \"127.0.0.1:{}\"\n[workers]\ncount = 2\nio = \"{io}\"\n{routing}\n",
        free_port()
    );
    for (i, s) in shards.iter().enumerate() {
        toml += &format!(
            "[[shard]]\nname = \"cs{}\"\naddr = \"{}\"\n",
            i + 1,
            s.local_addr().unwrap()
        );
    }
    toml += "[[group]]\nid = \"sip:grp3@groups.example.net\"\nshard = \"cs3\"\n";
    let valid = Config::parse(&toml).unwrap().validate().unwrap();
    assert_eq!(
        valid.server.workers.io,
        if io == "uring" {
            IoChoice::Uring
        } else {
            IoChoice::Mmsg
        }
    );
    let server = cpm_edge::app::start_server(&valid).unwrap();
    let edge = server.local_addr;
    Rig {
        server,
        edge,
        shards,
    }
}

fn with_client_via(msg: Vec<u8>, client: &UdpSocket) -> Vec<u8> {
    let a = client.local_addr().unwrap();
    String::from_utf8(msg)
        .unwrap()
        .replace("192.0.2.10:5062", &a.to_string())
        .into_bytes()
}

#[test]
fn leg1_client_to_pf_and_response_back() {
    for io in backends() {
        let r = rig(io, "");
        let client = sock();
        let invite = with_client_via(invite_to_group("grp3", "alice", ""), &client);
        client.send_to(&invite, r.edge).unwrap();
        let (i, fwd) = recv_any(&r.shards);
        let pf = r.shards[i].local_addr().unwrap();
        let lines: Vec<&str> = fwd.split("\r\n").collect();
        assert!(
            lines[1].starts_with(&format!("Via: SIP/2.0/UDP {};branch=z9hG4bKcpe", r.edge)),
            "{io}: {fwd}"
        );
        assert_eq!(
            lines[2],
            format!("Route: <sip:{pf};lr>,<sip:{};lr;cpm-leg=orig>", r.edge)
        );
        assert_eq!(lines[3], format!("Record-Route: <sip:{};lr>", r.edge));
        let ca = client.local_addr().unwrap();
        assert_eq!(
            lines[4],
            format!(
                "Via: SIP/2.0/UDP {ca};branch=z9hG4bK-alice-1;rport={};received=127.0.0.1",
                ca.port()
            ),
            "RFC 3581: received always added with rport"
        );
        assert_eq!(header(&fwd, "Max-Forwards"), vec!["Max-Forwards: 69"]);
        assert!(fwd.ends_with(&SDP.replace('\n', "\r\n")), "body intact");
        // The CS answers; the edge pops its Via and sends it to the client.
        cs_answer(&r.shards[i], &fwd, "200 OK", None);
        let (resp, from) = recv(&client);
        assert_eq!(from, r.edge);
        assert!(resp.starts_with("SIP/2.0 200 OK\r\n"));
        assert_eq!(header(&resp, "Via"), vec![lines[4]]);
        let snap = r.server.snapshot();
        assert_eq!(snap.forward_count("originating_pf"), 1, "{io}");
        assert_eq!(snap.relayed[1], 1);
        assert_eq!(snap.per_shard[i], 1);
    }
}

#[test]
fn leg2_group_goes_to_hosting_shard_every_time() {
    for io in backends() {
        let r = rig(io, "");
        let edge = r.edge;
        for n in 0..40 {
            // A PF (any shard) sends the group INVITE back with our orig marker.
            let pf = &r.shards[n % 4];
            let msg = String::from_utf8(invite_to_group(
                "grp3",
                &format!("user{n}"),
                &format!("Route: <sip:{edge};lr;cpm-leg=orig>\r\n"),
            ))
            .unwrap()
            .replace("192.0.2.10:5062", &pf.local_addr().unwrap().to_string());
            pf.send_to(msg.as_bytes(), edge).unwrap();
            let (i, fwd) = recv_any(&r.shards);
            assert_eq!(i, 2, "{io}: grp3 is hosted on cs3, request {n}");
            assert_eq!(
                header(&fwd, "Route"),
                vec![format!(
                    "Route: <sip:{};lr>,<sip:{edge};lr;cpm-leg=ctrl>",
                    r.shards[2].local_addr().unwrap()
                )]
            );
        }
        assert_eq!(r.server.snapshot().forward_count("controlling"), 40);
    }
}

#[test]
fn leg3_member_invite_to_pf_then_to_the_invited_client() {
    for io in backends() {
        let r = rig(io, "");
        let bob = sock();
        let ctrl = &r.shards[2];
        let invite = wire(&format!(
            "INVITE sip:bob@{} SIP/2.0
Via: SIP/2.0/UDP {};branch=z9hG4bKctrl{io}
Max-Forwards: 70
From: <sip:grp3@groups.example.net>;tag=g3
To: <sip:bob@example.net>
Call-ID: ctrl-bob-{io}
CSeq: 1 INVITE
Accept-Contact: *;+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session\"
Content-Length: 0

",
            bob.local_addr().unwrap(),
            ctrl.local_addr().unwrap()
        ));
        ctrl.send_to(&invite, r.edge).unwrap();
        let (i, fwd) = recv_any(&r.shards);
        assert!(fwd.contains("cpm-leg=term"), "{io}: {fwd}");
        // bob's PF sends it on (pops its own entry, adds its Via).
        let pf = &r.shards[i];
        let route = header(&fwd, "Route")[0];
        let ours = route.split_once(">,").unwrap().1;
        let on = fwd.replacen(route, &format!("Route: {ours}"), 1).replacen(
            "\r\n",
            &format!(
                "\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKpf{io}\r\n",
                pf.local_addr().unwrap()
            ),
            1,
        );
        pf.send_to(on.as_bytes(), r.edge).unwrap();
        let (at_bob, _) = recv(&bob);
        assert!(at_bob.starts_with("INVITE sip:bob@"), "{io}");
        assert!(header(&at_bob, "Route").is_empty());
        assert_eq!(
            header(&at_bob, "Via").len(),
            4,
            "edge, PF, edge, controlling CS"
        );
        assert_eq!(r.server.snapshot().forward_count("to_invited_client"), 1);
    }
}

#[test]
fn rejects_are_answered_over_udp_and_drops_counted() {
    for io in backends() {
        let r = rig(io, "");
        let client = sock();
        let ca = client.local_addr().unwrap().to_string();
        let base = String::from_utf8(invite_to_group("grp3", "alice", ""))
            .unwrap()
            .replace("192.0.2.10:5062", &ca);
        let cases = [
            (
                base.replace("Call-ID: alice-call-1@192.0.2.10\r\n", ""),
                "SIP/2.0 400 Bad Request - Missing Call-ID",
            ),
            (
                base.replace("Max-Forwards: 70", "Max-Forwards: 0"),
                "SIP/2.0 483 Too Many Hops",
            ),
            (
                base.replace("Accept-Contact", "X-A")
                    .replace("P-Preferred-Service", "X-B")
                    .replace("+g.3gpp.icsi-ref", "x"),
                "SIP/2.0 403 Forbidden - No CPM Feature Tag",
            ),
            (
                // Our own branch with this request's loop hash: it came back unchanged.
                {
                    let mut out = vec![0u8; 8192];
                    let tables = r.server.tables.load();
                    let (o, _) = cpm_edge::pipeline::process(
                        base.as_bytes(),
                        false,
                        client.local_addr().unwrap(),
                        &tables,
                        &mut out,
                    );
                    let (len, _) = o.send().unwrap();
                    let fwd = String::from_utf8_lossy(&out[..len]).into_owned();
                    let our_via = header(&fwd, "Via")[0].to_string();
                    base.replacen("\r\n", &format!("\r\n{our_via}\r\n"), 1)
                },
                "SIP/2.0 482 Loop Detected",
            ),
        ];
        for (msg, status) in &cases {
            client.send_to(msg.as_bytes(), r.edge).unwrap();
            let (resp, from) = recv(&client);
            assert_eq!(from, r.edge);
            assert_eq!(resp.split("\r\n").next().unwrap(), *status, "{io}");
        }
        // Unanswerable: garbage, a response not ours, a keepalive, an oversized datagram.
        client.send_to(b"\x16\x03\x01garbage", r.edge).unwrap();
        client.send_to(b"\r\n\r\n", r.edge).unwrap();
        let stray = wire("SIP/2.0 200 OK\nVia: SIP/2.0/UDP 192.0.2.77:5060;branch=z9hG4bKx\nVia: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKy\nFrom: <sip:a@b>;tag=1\nTo: <sip:b@c>;tag=2\nCall-ID: x\nCSeq: 1 INVITE\nContent-Length: 0\n\n");
        client.send_to(&stray, r.edge).unwrap();
        client.send_to(&vec![b'A'; 20000], r.edge).unwrap();
        // Then a valid request still goes through (and proves the drops were handled first).
        client.send_to(base.as_bytes(), r.edge).unwrap();
        let _ = recv_any(&r.shards);
        let snap = r.server.snapshot();
        assert_eq!(snap.drop_count("garbage"), 1, "{io}: {snap}");
        assert_eq!(snap.drop_count("keepalive"), 1);
        assert_eq!(snap.drop_count("response_via_not_ours"), 1);
        assert_eq!(snap.drop_count("oversized"), 1);
        assert_eq!(
            snap.reply_count(400)
                + snap.reply_count(403)
                + snap.reply_count(482)
                + snap.reply_count(483),
            4
        );
        client
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut b = [0u8; 100];
        assert!(
            client.recv_from(&mut b).is_err(),
            "nothing answered to the drops"
        );
    }
}

#[test]
fn in_dialog_ack_and_bye_via_record_route() {
    for io in backends() {
        let r = rig(io, "");
        let client = sock();
        let cs = &r.shards[0];
        let ca = client.local_addr().unwrap().to_string();
        for (method, cseq) in [("ACK", "1 ACK"), ("BYE", "2 BYE")] {
            let msg = wire(&format!(
                "{method} sip:cs@{} SIP/2.0
Via: SIP/2.0/UDP {ca};branch=z9hG4bKdlg{method};rport
Route: <sip:{};lr>
Max-Forwards: 70
From: <sip:alice@example.net>;tag=a
To: <sip:grp3@groups.example.net>;tag=cs
Call-ID: dlg-{io}
CSeq: {cseq}
Content-Length: 0

",
                cs.local_addr().unwrap(),
                r.edge
            ));
            client.send_to(&msg, r.edge).unwrap();
            let (got, _) = recv(cs);
            assert!(got.starts_with(&format!("{method} sip:cs@")), "{io}");
            assert!(
                header(&got, "Route").is_empty(),
                "our Record-Route entry popped"
            );
        }
        assert_eq!(r.server.snapshot().forward_count("in_dialog"), 2);
    }
}

#[test]
fn a_closed_shard_port_does_not_stop_the_worker() {
    for io in backends() {
        let r = rig(io, "");
        let client = sock();
        let ca = client.local_addr().unwrap().to_string();
        // Find a user whose PF is cs1, then close cs1's socket: sends get ICMP
        // port unreachable (ECONNREFUSED on the edge's socket).
        let Rig {
            server,
            edge,
            mut shards,
        } = r;
        let target = shards.remove(0);
        let closed = target.local_addr().unwrap();
        drop(target);
        let mut sent = 0;
        for n in 0..200 {
            let msg = String::from_utf8(invite_to_group("grp3", &format!("u{n}"), ""))
                .unwrap()
                .replace("192.0.2.10:5062", &ca);
            let mut out = vec![0u8; 8192];
            let (o, _) = cpm_edge::pipeline::process(
                msg.as_bytes(),
                false,
                client.local_addr().unwrap(),
                &server.tables.load(),
                &mut out,
            );
            if o.send().map(|(_, d)| d) == Some(closed) {
                client.send_to(msg.as_bytes(), edge).unwrap();
                sent += 1;
            }
        }
        assert!(sent > 10);
        std::thread::sleep(Duration::from_millis(200));
        // The worker still serves: a request for a live shard gets through.
        let live = String::from_utf8(invite_to_group(
            "grp3",
            "alive",
            "Route: <sip:127.0.0.1:1;lr>\r\n",
        ))
        .unwrap();
        let _ = live;
        let opts = wire(&format!(
            "OPTIONS sip:{edge} SIP/2.0\nVia: SIP/2.0/UDP {ca};branch=z9hG4bKopt\nMax-Forwards: 70\nFrom: <sip:a@b>;tag=1\nTo: <sip:{edge}>\nCall-ID: o1\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n"
        ));
        for _ in 0..3 {
            client.send_to(&opts, edge).unwrap();
            let (resp, _) = recv(&client);
            assert!(resp.starts_with("SIP/2.0 200 OK"), "{io}");
        }
        let snap = server.snapshot();
        assert_eq!(
            snap.forward_count("originating_pf"),
            sent,
            "{io}: every request was forwarded (and its send failed or not)"
        );
        drop(shards);
    }
}
