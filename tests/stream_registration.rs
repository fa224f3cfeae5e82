//! Registration over TLS (RFC 3261 §10 over §18, RFC 5626 flows) through
//! the edge's real workers (two) over real loopback sockets: a rustls
//! client registers with digest on its connection, with the bindings in
//! redb (answered by the registrar thread through the owner's mail) and in
//! memory (answered by the worker); its Participating Function (a UDP shard
//! played here) hears of it; a session for the AoR reaches the client on
//! that connection, the dialog's BYE too; only that connection speaks for
//! the user (a datagram from its address does not); a connection that
//! ends takes its bindings with it (the PF told); a restart keeps no
//! stream binding.

mod common;
#[path = "common/tls.rs"]
mod tls;
use common::register::{credentials_file, hex_sha, param, DOMAIN, USERS};
use common::*;
use cpm_edge::app::App;
use cpm_edge::config::Config;
use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;
use tls::{Ca, TlsClient};

const CPM_TAG: &str = "+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session\"";

struct Edge {
    app: Option<App>,
    udp: SocketAddr,
    tls: SocketAddr,
    /// The users' Participating Function.
    pf: UdpSocket,
    dir: PathBuf,
    toml: String,
    ca: Ca,
}

impl Edge {
    /// `store`: the bindings in redb (the registrar thread answers), else
    /// in memory (the worker does).
    fn start(name: &str, store: bool, extra: &str) -> Edge {
        let dir = std::env::temp_dir().join(format!("cpm-streg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Ca::new("cpm test CA");
        ca.leaf(&["edge.example.net"]).write(&dir, "edge");
        let pf = sock();
        let udp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let store = match store {
            true => format!("store = \"{}\"\n", dir.join("location.redb").display()),
            false => "store = \"\"\n".to_string(),
        };
        let toml = format!(
            "[listen]\naddr = \"{udp}\"\n[workers]\ncount = 2\n[health]\nenabled = false\n\
             [admin]\nbind = \"\"\n\
             [tls]\nenabled = true\nport = {}\ncert = \"{}\"\nkey = \"{}\"\n\
             [[shard]]\nname = \"cs1\"\naddr = \"{}\"\n\
             [registrar]\ndomains = [\"{DOMAIN}\"]\ncredentials_file = \"{}\"\n{store}\
             min_expires = 60\n{extra}\n",
            free_port(),
            dir.join("edge.crt").display(),
            dir.join("edge.key").display(),
            pf.local_addr().unwrap(),
            credentials_file(&dir).display(),
        );
        let mut e = Edge {
            app: None,
            udp,
            tls: udp,
            pf,
            dir,
            toml,
            ca,
        };
        e.boot();
        e
    }

    fn boot(&mut self) {
        let v = Config::parse(&self.toml).unwrap().validate().unwrap();
        let app = App::start(&v).unwrap();
        self.tls = app.server.tls_addr.expect("a TLS listener");
        self.app = Some(app);
    }

    fn restart(&mut self) {
        self.app.take().unwrap().stop().unwrap();
        self.boot();
    }

    fn connect(&self) -> TlsClient {
        tls::connect(
            self.tls,
            "edge.example.net",
            tls::client_config(&self.ca, None),
        )
        .unwrap()
    }

    /// The PF's request for `user`'s AoR, as the invited user's PF sends
    /// it on (the `term` leg marker in the edge's Route).
    fn pf_invite(&self, user: &str, call: &str) -> String {
        format!(
            "INVITE sip:{user}@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {s};branch=z9hG4bK-pf-{call}\r\n\
             Route: <sip:{e};lr;cpm-leg=term>\r\nMax-Forwards: 69\r\nFrom: <sip:bob@{DOMAIN}>;tag=b\r\n\
             To: <sip:{user}@{DOMAIN}>\r\nCall-ID: {call}\r\nCSeq: 1 INVITE\r\nContact: <sip:{s}>\r\n\
             Accept-Contact: *;{CPM_TAG}\r\nContent-Length: 0\r\n\r\n",
            s = self.pf.local_addr().unwrap(),
            e = self.udp,
        )
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        if let Some(a) = self.app.take() {
            let _ = a.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A REGISTER of `user` over the client's connection (its Via says TLS).
fn register_request(c: &TlsClient, user: &str, cseq: u32, extra: &str) -> String {
    let l = c.sock.local_addr().unwrap();
    format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS {l};branch=z9hG4bK-reg-{}-{cseq}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag=r{cseq}\r\nTo: <sip:{user}@{DOMAIN}>\r\n\
         Call-ID: treg-{user}-{}\r\nCSeq: {cseq} REGISTER\r\n\
         Contact: <sip:{user}@{l};transport=tls>;{CPM_TAG}\r\n{extra}Content-Length: 0\r\n\r\n",
        l.port(),
        l.port(),
    )
}

/// The SHA-256 answer to the challenge in `challenge_401`.
fn authorization(challenge_401: &str, user: &str) -> String {
    let ch = header(challenge_401, "WWW-Authenticate")
        .into_iter()
        .find(|c| c.contains("algorithm=SHA-256"))
        .unwrap_or_else(|| panic!("no SHA-256 challenge in {challenge_401}"))
        .to_string();
    let (nonce, realm) = (param(&ch, "nonce"), param(&ch, "realm"));
    let password = USERS.iter().find(|(u, _)| *u == user).unwrap().1;
    let uri = format!("sip:{DOMAIN}");
    let ha1 = hex_sha(&format!("{user}:{realm}:{password}"));
    let ha2 = hex_sha(&format!("REGISTER:{uri}"));
    let resp = hex_sha(&format!("{ha1}:{nonce}:00000001:cn1:auth:{ha2}"));
    format!(
        "Authorization: Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", \
         uri=\"{uri}\", response=\"{resp}\", algorithm=SHA-256, qop=auth, nc=00000001, \
         cnonce=\"cn1\"\r\n"
    )
}

/// `user` registered on the client's connection: challenged, answered;
/// the final answer.
fn register(c: &mut TlsClient, user: &str, extra: &str) -> String {
    register_edited(c, user, extra, |r| r)
}

/// [`register`] with each REGISTER passed through `edit` first.
fn register_edited(
    c: &mut TlsClient,
    user: &str,
    extra: &str,
    edit: impl Fn(String) -> String,
) -> String {
    c.write_all(edit(register_request(c, user, 1, extra)).as_bytes())
        .unwrap();
    c.flush().unwrap();
    let challenge = read_sip(c);
    assert!(challenge.starts_with("SIP/2.0 401 "), "{challenge}");
    let auth = authorization(&challenge, user);
    let second = edit(register_request(c, user, 2, &format!("{extra}{auth}")));
    c.write_all(second.as_bytes()).unwrap();
    c.flush().unwrap();
    read_sip(c)
}

/// The PF's third-party REGISTER, answered `200`.
fn third_party(pf: &UdpSocket) -> String {
    let (msg, from) = recv(pf);
    assert!(msg.starts_with("REGISTER sip:"), "{msg}");
    let answer = format!(
        "SIP/2.0 200 OK\r\n{}\r\n{}\r\n{};tag=pf\r\n{}\r\n{}\r\nContent-Length: 0\r\n\r\n",
        header(&msg, "Via").join("\r\n"),
        header(&msg, "From")[0],
        header(&msg, "To")[0],
        header(&msg, "Call-ID")[0],
        header(&msg, "CSeq")[0],
    );
    pf.send_to(answer.as_bytes(), from).unwrap();
    msg
}

/// The client's answer `status` to a request it got (every Via, in order).
fn client_answer(req: &str, status: &str) -> String {
    ua_answer(req, status, Some("cl"))
}

/// The PF's request for `user` is answered `480`: nothing is bound.
fn not_registered(e: &Edge, user: &str, call: &str) {
    e.pf.send_to(e.pf_invite(user, call).as_bytes(), e.udp)
        .unwrap();
    let (r, _) = recv(&e.pf);
    assert!(
        r.starts_with("SIP/2.0 480 Temporarily Unavailable - Not Registered"),
        "{r}"
    );
}

/// A session for the AoR reaches the client on its TLS connection, our
/// Via naming TLS and our Record-Route its flow; the client's 200 reaches
/// the PF; the PF's BYE along the Record-Route reaches the client too.
fn session_on_the_connection(e: &Edge, c: &mut TlsClient, call: &str) {
    e.pf.send_to(e.pf_invite("alice", call).as_bytes(), e.udp)
        .unwrap();
    let inv = read_sip(c);
    assert!(
        inv.starts_with(&format!("INVITE sip:alice@{DOMAIN} ")),
        "{inv}"
    );
    let vias = header(&inv, "Via");
    assert!(vias[0].contains("SIP/2.0/TLS "), "{inv}");
    let rr = header(&inv, "Record-Route");
    assert!(
        rr.len() == 1 && rr[0].contains(";cpm-flow="),
        "the client's flow in our Record-Route: {inv}"
    );
    c.write_all(client_answer(&inv, "200 OK").as_bytes())
        .unwrap();
    c.flush().unwrap();
    let (ok, _) = recv(&e.pf);
    assert!(ok.starts_with("SIP/2.0 200 OK"), "{ok}");
    assert!(ok.contains(&format!("Call-ID: {call}")), "{ok}");
    let route = rr[0].trim_start_matches("Record-Route:").trim();
    let bye = format!(
        "BYE sip:alice@{l};transport=tls SIP/2.0\r\nVia: SIP/2.0/UDP {s};branch=z9hG4bK-bye-{call}\r\n\
         Route: {route}\r\nMax-Forwards: 70\r\nFrom: <sip:bob@{DOMAIN}>;tag=b\r\n\
         To: <sip:alice@{DOMAIN}>;tag=cl\r\nCall-ID: {call}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        l = c.sock.local_addr().unwrap(),
        s = e.pf.local_addr().unwrap(),
    );
    e.pf.send_to(bye.as_bytes(), e.udp).unwrap();
    let got = read_sip(c);
    assert!(got.starts_with("BYE sip:alice@"), "{got}");
    assert!(header(&got, "Via")[0].contains("SIP/2.0/TLS "), "{got}");
    c.write_all(client_answer(&got, "200 OK").as_bytes())
        .unwrap();
    c.flush().unwrap();
    let (ok, _) = recv(&e.pf);
    assert!(
        ok.starts_with("SIP/2.0 200 OK") && ok.contains("CSeq: 2 BYE"),
        "{ok}"
    );
}

fn registered_over_tls(store: bool) {
    let name = if store { "store" } else { "memory" };
    let mut e = Edge::start(name, store, "");
    // Several clients, so that both workers own registered connections
    // and the PF's requests often reach the other one (then they go by
    // the owner's mail).
    let mut clients: Vec<TlsClient> = (0..3).map(|_| e.connect()).collect();
    for c in clients.iter_mut() {
        let ok = register(c, "alice", "");
        assert!(ok.starts_with("SIP/2.0 200 OK"), "{ok}");
        let l = c.sock.local_addr().unwrap();
        assert!(
            ok.contains(&format!("<sip:alice@{l};transport=tls>")),
            "{ok}"
        );
        let tp = third_party(&e.pf);
        assert!(tp.contains(&format!("sip:alice@{l};transport=tls")), "{tp}");
    }
    // The AoR's best binding is the latest: the last client.
    let mut last = clients.pop().unwrap();
    let gone = format!(
        "sip:alice@{};transport=tls",
        last.sock.local_addr().unwrap()
    );
    for n in 0..4 {
        session_on_the_connection(&e, &mut last, &format!("{name}-call-{n}"));
    }
    // Its connection gone (RFC 5626 flow failure), its binding goes and
    // the PF hears so; the next device gets the sessions.
    drop(last);
    let tp = third_party(&e.pf);
    let next = format!(
        "sip:alice@{};transport=tls",
        clients[1].sock.local_addr().unwrap()
    );
    assert!(!tp.contains(&gone) && tp.contains(&next), "{tp}");
    session_on_the_connection(&e, &mut clients[1], &format!("{name}-next"));
    // Every connection gone: not registered.
    clients.clear();
    // One notice per change: each connection's, or both in one batch.
    let mut tp = third_party(&e.pf);
    for _ in 0..2 {
        if tp.contains("terminated") {
            break;
        }
        tp = third_party(&e.pf);
    }
    assert_eq!(header(&tp, "Expires"), vec!["Expires: 0"], "{tp}");
    not_registered(&e, "alice", &format!("{name}-none"));
    let unbound = &e
        .app
        .as_ref()
        .unwrap()
        .server
        .registrar
        .as_ref()
        .unwrap()
        .stats
        .unbound;
    assert_eq!(unbound.load(std::sync::atomic::Ordering::Relaxed), 3);
    let mut c = e.connect();
    assert!(register(&mut c, "alice", "").starts_with("SIP/2.0 200 OK"));
    third_party(&e.pf);
    // Not recovered: a restart ends every connection.
    e.restart();
    not_registered(&e, "alice", &format!("{name}-after"));
}

#[test]
fn a_tls_client_registers_on_its_connection_with_the_bindings_in_redb() {
    registered_over_tls(true);
}

#[test]
fn a_tls_client_registers_on_its_connection_with_the_bindings_in_memory() {
    registered_over_tls(false);
}

/// RFC 3325 at the trust boundary over streams: the connection that
/// registered is asserted as its user; a datagram from the same address
/// and port speaks for nobody (a spoofer needs no more than that).
#[test]
fn only_the_registered_connection_speaks_for_the_user() {
    let e = Edge::start("identity", true, "require_registration = true\n");
    let mut c = e.connect();
    let invite = |via: &str, from: SocketAddr, call: &str| {
        format!(
            "INVITE sip:carol@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/{via} {from};branch=z9hG4bK-{call}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:mallory@{DOMAIN}>;tag=m\r\nTo: <sip:carol@{DOMAIN}>\r\n\
             Call-ID: {call}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{from};transport=tls>\r\n\
             P-Asserted-Identity: <sip:ceo@{DOMAIN}>\r\nAccept-Contact: *;{CPM_TAG}\r\n\
             Content-Length: 0\r\n\r\n"
        )
    };
    let l = c.sock.local_addr().unwrap();
    c.write_all(invite("TLS", l, "before").as_bytes()).unwrap();
    c.flush().unwrap();
    let r = read_sip(&mut c);
    assert!(
        r.starts_with("SIP/2.0 403 Forbidden - Not Registered"),
        "{r}"
    );
    let ok = register(&mut c, "alice", "");
    assert!(ok.starts_with("SIP/2.0 200 OK"), "{ok}");
    third_party(&e.pf);
    c.write_all(invite("TLS", l, "after").as_bytes()).unwrap();
    c.flush().unwrap();
    let (fwd, _) = recv(&e.pf);
    assert!(
        fwd.starts_with(&format!("INVITE sip:carol@{DOMAIN} ")),
        "{fwd}"
    );
    assert_eq!(
        header(&fwd, "P-Asserted-Identity"),
        vec![format!("P-Asserted-Identity: <sip:alice@{DOMAIN}>").as_str()],
        "{fwd}"
    );
    // The same address and port over UDP: not the registered flow.
    let spoof = UdpSocket::bind(l).expect("UDP has its own port space");
    spoof
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    spoof
        .send_to(invite("UDP", l, "spoofed").as_bytes(), e.udp)
        .unwrap();
    let (r, _) = recv(&spoof);
    assert!(
        r.starts_with("SIP/2.0 403 Forbidden - Not Registered"),
        "{r}"
    );
}

/// An outbound registration (RFC 5626 §6, `reg-id` and `+sip.instance`)
/// on the client's own connection: the edge is the first hop, so it is
/// accepted with `Require: outbound`.
#[test]
fn an_outbound_registration_on_the_connection_is_accepted() {
    let e = Edge::start("outbound", false, "");
    let mut c = e.connect();
    let l = c.sock.local_addr().unwrap();
    let extra = "Supported: outbound, path\r\n";
    let ok = register_edited(&mut c, "bob", extra, |r| {
        r.replace(
            ";transport=tls>;",
            ";transport=tls;ob>;reg-id=1;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000a95a0e128>\";",
        )
    });
    assert!(ok.starts_with("SIP/2.0 200 OK"), "{ok}");
    assert_eq!(header(&ok, "Require"), vec!["Require: outbound"], "{ok}");
    assert!(
        ok.contains(&format!("<sip:bob@{l};transport=tls;ob>")),
        "{ok}"
    );
}

/// The media policy inside a dialog with a TLS-registered contact (seed
/// 5.2.3.7; the invited user's own leg is its PF's to police, as for a
/// datagram contact): the PF's re-INVITE along our Record-Route is
/// filtered by the slow path and mailed to the connection's owner, and
/// the client's answer on the connection is checked and relayed to the PF.
#[test]
fn a_re_invite_to_a_tls_contact_is_filtered_and_its_answer_checked() {
    let policy = "[policy]\non_violation = \"reject\"\n\
                  [policy.default]\nallowed_media = [\"message\"]\n";
    let e = Edge::start("policy", false, policy);
    // Two connections, so the PF's requests reach both the owner's worker
    // and the other one.
    let mut clients: Vec<TlsClient> = (0..2).map(|_| e.connect()).collect();
    let users = ["alice", "bob"];
    for (c, user) in clients.iter_mut().zip(users) {
        let ok = register(c, user, "");
        assert!(ok.starts_with("SIP/2.0 200 OK"), "{ok}");
        third_party(&e.pf);
    }
    let sdp = SDP.replace('\n', "\r\n");
    let with_body = |msg: &str, body: &str| {
        msg.replace(
            "Content-Length: 0\r\n\r\n",
            &format!(
                "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    for n in 0..6 {
        let (c, user) = (&mut clients[n % 2], users[n % 2]);
        let call = format!("pol-{n}");
        e.pf.send_to(e.pf_invite(user, &call).as_bytes(), e.udp)
            .unwrap();
        let inv = read_sip(c);
        assert!(inv.starts_with(&format!("INVITE sip:{user}@")), "{inv}");
        c.write_all(client_answer(&inv, "200 OK").as_bytes())
            .unwrap();
        c.flush().unwrap();
        let (ok, _) = recv(&e.pf);
        assert!(ok.starts_with("SIP/2.0 200 OK"), "{ok}");
        let route = header(&inv, "Record-Route")[0]
            .trim_start_matches("Record-Route:")
            .trim()
            .to_string();
        let reinvite = format!(
            "INVITE sip:{user}@{l};transport=tls SIP/2.0\r\n\
             Via: SIP/2.0/UDP {s};branch=z9hG4bK-re-{call}\r\nRoute: {route}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:bob@{DOMAIN}>;tag=b\r\n\
             To: <sip:{user}@{DOMAIN}>;tag=cl\r\nCall-ID: {call}\r\nCSeq: 2 INVITE\r\n\
             Contact: <sip:{s}>\r\nContent-Length: 0\r\n\r\n",
            l = c.sock.local_addr().unwrap(),
            s = e.pf.local_addr().unwrap(),
        );
        e.pf.send_to(with_body(&reinvite, &sdp).as_bytes(), e.udp)
            .unwrap();
        let got = read_sip(c);
        assert!(got.starts_with(&format!("INVITE sip:{user}@")), "{got}");
        assert!(got.contains("CSeq: 2 INVITE"), "{got}");
        assert!(header(&got, "Via")[0].contains("SIP/2.0/TLS "), "{got}");
        assert!(
            got.contains("m=audio 0 RTP/AVP 0\r\n") && got.contains("m=message 7394 "),
            "the audio stream refused, the chat kept: {got}"
        );
        // The client accepts the refused audio stream every other time.
        let audio = if n % 4 < 2 { "0" } else { "4000" };
        let answer_sdp = format!(
            "v=0\r\no=cl 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=message 9000 TCP/MSRP *\r\na=accept-types:message/cpim\r\n\
             a=path:msrp://127.0.0.1:9000/cl;tcp\r\nm=audio {audio} RTP/AVP 0\r\n"
        );
        let answer = with_body(&client_answer(&got, "200 OK"), &answer_sdp);
        c.write_all(answer.as_bytes()).unwrap();
        c.flush().unwrap();
        let (r, _) = recv(&e.pf);
        let want = match audio {
            "0" => "SIP/2.0 200 OK",
            _ => "SIP/2.0 500 Answer Violates Media Policy",
        };
        assert!(r.starts_with(want), "{r}");
        assert!(r.contains(&format!("Call-ID: {call}")), "{r}");
        assert!(r.contains("CSeq: 2 INVITE"), "{r}");
    }
}
