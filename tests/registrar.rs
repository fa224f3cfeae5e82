//! The edge as registrar (RFC 3261 §10.3, RFC 8760 digest, seed 5.1 and
//! 5.2.5), over real UDP sockets: clients register through digest
//! challenges (the response computed here with the hash crates, not with the
//! edge's digest module), bindings go to the redb-backed location service,
//! the user's Participating Function hears of CPM registrations by a
//! third-party REGISTER, terminating requests reach the registered flow, and
//! bindings survive a restart.

mod common;

use common::register::{credentials_file, hex_md5, hex_sha, param, register_party, DOMAIN, USERS};
use common::{free_port, header, http, recv};
use cpm_edge::app::App;
use cpm_edge::config::Config;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

const CPM_TAG: &str = "+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session\"";

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cpm-registrar-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// An edge with a registrar for example.net, one shard played by `shard`.
struct Edge {
    app: Option<App>,
    addr: SocketAddr,
    shard: UdpSocket,
    dir: PathBuf,
    extra: String,
}

impl Edge {
    fn start(name: &str, extra: &str) -> Edge {
        let dir = temp_dir(name);
        let shard = UdpSocket::bind("127.0.0.1:0").unwrap();
        shard
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut e = Edge {
            app: None,
            addr,
            shard,
            dir,
            extra: extra.to_string(),
        };
        e.boot();
        e
    }

    fn boot(&mut self) {
        let creds = credentials_file(&self.dir);
        let toml = format!(
            "[listen]\naddr = \"{}\"\n[admin]\nbind = \"127.0.0.1:0\"\n[workers]\ncount = 1\n[health]\nenabled = false\n\
             [[shard]]\nname = \"cs1\"\naddr = \"{}\"\n\
             [registrar]\ndomains = [\"{DOMAIN}\"]\ncredentials_file = \"{}\"\n{}\
             {}max_expires = 7200\nmax_contacts = 3\nmax_failures = 3\n{}\n",
            self.addr,
            self.shard.local_addr().unwrap(),
            creds.display(),
            if self.extra.contains("store =") {
                String::new()
            } else {
                format!("store = \"{}\"\n", self.dir.join("location.redb").display())
            },
            if self.extra.contains("min_expires") { "" } else { "min_expires = 60\n" },
            self.extra,
        );
        let v = Config::parse(&toml).unwrap().validate().unwrap();
        self.app = Some(App::start(&v).unwrap());
    }

    fn admin(&self) -> SocketAddr {
        self.app.as_ref().unwrap().admin_addr.unwrap()
    }

    fn restart(&mut self) {
        self.app.take().unwrap().stop().unwrap();
        self.boot();
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

/// A client device: its socket, its user, its REGISTER dialog.
struct Device {
    sock: UdpSocket,
    user: &'static str,
    password: &'static str,
    call_id: String,
    cseq: u32,
    nc: u32,
    edge: SocketAddr,
}

impl Device {
    fn new(edge: &Edge, user: &'static str, ip: &str) -> Device {
        let sock = UdpSocket::bind(format!("{ip}:0")).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let password = USERS.iter().find(|(u, _)| *u == user).unwrap().1;
        let port = sock.local_addr().unwrap().port();
        Device {
            sock,
            user,
            password,
            call_id: format!("reg-{user}-{port}"),
            cseq: 0,
            nc: 0,
            edge: edge.addr,
        }
    }

    fn local(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    /// A REGISTER with `contact` (a whole value, or empty for none),
    /// extra header lines and an optional Authorization value.
    fn request(&mut self, contact: &str, extra: &str, auth: Option<&str>) -> String {
        self.cseq += 1;
        let l = self.local();
        let contact = if contact.is_empty() {
            String::new()
        } else {
            format!("Contact: {contact}\r\n")
        };
        let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
        format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bK-{}-{}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{u}@{DOMAIN}>;tag=t{}\r\nTo: <sip:{u}@{DOMAIN}>\r\n\
             Call-ID: {}\r\nCSeq: {} REGISTER\r\n{contact}{extra}{auth}Content-Length: 0\r\n\r\n",
            self.call_id,
            self.cseq,
            self.cseq,
            self.call_id,
            self.cseq,
            u = self.user,
        )
    }

    /// [`Device::request`] sent; the answer.
    fn ask(&mut self, contact: &str, extra: &str, auth: Option<&str>) -> String {
        let r = self.request(contact, extra, auth);
        self.send(&r)
    }

    fn send(&self, msg: &str) -> String {
        self.sock.send_to(msg.as_bytes(), self.edge).unwrap();
        recv(&self.sock).0
    }

    /// The Authorization for the challenge of `alg` in a 401.
    fn answer(&mut self, challenge_401: &str, alg: &str, password: &str) -> String {
        let ch = header(challenge_401, "WWW-Authenticate")
            .into_iter()
            .find(|c| c.contains(&format!("algorithm={alg}")))
            .unwrap_or_else(|| panic!("no {alg} challenge in {challenge_401}"))
            .to_string();
        let nonce = param(&ch, "nonce");
        let realm = param(&ch, "realm");
        self.nc += 1;
        let nc = format!("{:08x}", self.nc);
        let cnonce = format!("cn{}", self.nc);
        let uri = format!("sip:{DOMAIN}");
        let h = |s: &str| if alg == "MD5" { hex_md5(s) } else { hex_sha(s) };
        let ha1 = h(&format!("{}:{realm}:{password}", self.user));
        let ha2 = h(&format!("REGISTER:{uri}"));
        let resp = h(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
        format!(
            "Digest username=\"{}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
             response=\"{resp}\", algorithm={alg}, qop=auth, nc={nc}, cnonce=\"{cnonce}\"",
            self.user
        )
    }

    /// REGISTER `contact`: challenged, then answered with `alg`.
    fn register(&mut self, contact: &str, extra: &str, alg: &str) -> String {
        let first = self.request(contact, extra, None);
        let c = self.send(&first);
        assert!(c.starts_with("SIP/2.0 401 "), "{c}");
        let auth = self.answer(&c, alg, self.password);
        let second = self.request(contact, extra, Some(&auth));
        self.send(&second)
    }
}

fn status(msg: &str) -> &str {
    msg.lines().next().unwrap_or("")
}

#[test]
fn a_challenge_offers_sha256_then_md5_with_qop_auth() {
    let edge = Edge::start("challenge", "");
    let mut d = Device::new(&edge, "alice", "127.0.0.1");
    let req = d.request(&format!("<sip:alice@{}>", d.local()), "", None);
    let c = d.send(&req);
    assert_eq!(status(&c), "SIP/2.0 401 Unauthorized");
    let ch = header(&c, "WWW-Authenticate");
    assert_eq!(ch.len(), 2, "{c}");
    assert!(ch[0].contains("algorithm=SHA-256"), "{}", ch[0]);
    assert!(ch[1].contains("algorithm=MD5"), "{}", ch[1]);
    for x in &ch {
        assert!(
            x.contains(&format!("realm=\"{DOMAIN}\"")) && x.contains("qop=\"auth\""),
            "{x}"
        );
    }
}

#[test]
fn sha256_and_md5_registrations_list_every_binding_and_deregister() {
    let edge = Edge::start("bindings", "");
    let mut d = Device::new(&edge, "alice", "127.0.0.1");
    let me = d.local();
    let ok = d.register(&format!("<sip:alice@{me}>;expires=600"), "", "SHA-256");
    assert_eq!(status(&ok), "SIP/2.0 200 OK", "{ok}");
    let contacts = header(&ok, "Contact");
    assert_eq!(contacts.len(), 1, "{ok}");
    assert!(
        contacts[0].contains(&format!("<sip:alice@{me}>")) && contacts[0].contains("expires=600")
    );
    // A second device of the same user, MD5: the 200 lists both.
    let mut d2 = Device::new(&edge, "alice", "127.0.0.1");
    let me2 = d2.local();
    let ok2 = d2.register(&format!("<sip:alice@{me2}>"), "Expires: 900\r\n", "MD5");
    assert_eq!(status(&ok2), "SIP/2.0 200 OK", "{ok2}");
    let both = header(&ok2, "Contact").join("\n");
    assert!(
        both.contains(&format!("{me}>")) && both.contains(&format!("{me2}>;expires=900")),
        "{both}"
    );
    // Above the maximum: clamped to max_expires.
    let long = d2.register(&format!("<sip:alice@{me2}>;expires=99999"), "", "MD5");
    assert!(
        header(&long, "Contact")
            .join("\n")
            .contains(&format!("{me2}>;expires=7200")),
        "{long}"
    );
    // Below the minimum: 423 with Min-Expires.
    let brief = d.register(&format!("<sip:alice@{me}>;expires=5"), "", "SHA-256");
    assert!(status(&brief).starts_with("SIP/2.0 423 "), "{brief}");
    assert_eq!(header(&brief, "Min-Expires"), vec!["Min-Expires: 60"]);
    // Expires 0 removes one binding; `*` removes the rest.
    let gone = d.register(&format!("<sip:alice@{me}>;expires=0"), "", "SHA-256");
    let left = header(&gone, "Contact");
    assert_eq!(left.len(), 1, "{gone}");
    assert!(left[0].contains(&me2.to_string()));
    let star_bad = d.ask("*", "", None);
    assert!(status(&star_bad).starts_with("SIP/2.0 400 "), "{star_bad}");
    let all = d.register("*", "Expires: 0\r\n", "SHA-256");
    assert_eq!(status(&all), "SIP/2.0 200 OK");
    assert!(header(&all, "Contact").is_empty(), "{all}");
}

#[test]
fn contacts_per_aor_are_bounded() {
    let edge = Edge::start("bounded", "");
    let mut d = Device::new(&edge, "bob", "127.0.0.1");
    let me = d.local();
    for i in 0..3 {
        let ok = d.register(&format!("<sip:bob@{me};d={i}>"), "", "MD5");
        assert_eq!(status(&ok), "SIP/2.0 200 OK", "{ok}");
    }
    let over = d.register(&format!("<sip:bob@{me};d=9>"), "", "MD5");
    assert!(
        status(&over).starts_with("SIP/2.0 403 Forbidden - Too Many Contacts"),
        "{over}"
    );
}

#[test]
fn wrong_credentials_replays_and_unknown_realms_are_refused() {
    let edge = Edge::start("refusals", "");
    let mut d = Device::new(&edge, "carol", "127.0.0.1");
    let contact = format!("<sip:carol@{}>", d.local());
    // Wrong password: 403.
    let c = d.ask(&contact, "", None);
    let bad = d.answer(&c, "SHA-256", "not-it");
    let r = d.ask(&contact, "", Some(&bad));
    assert_eq!(status(&r), "SIP/2.0 403 Forbidden - Bad Credentials");
    // A good one, then the same nonce count again in a new request: replay.
    let c = d.ask(&contact, "", None);
    let good = d.answer(&c, "SHA-256", "c4r0l");
    let req = d.request(&contact, "", Some(&good));
    assert_eq!(status(&d.send(&req)), "SIP/2.0 200 OK");
    // Its retransmission (same bytes) is answered again.
    assert_eq!(status(&d.send(&req)), "SIP/2.0 200 OK");
    let replay = d.request(&contact, "", Some(&good));
    assert_eq!(
        status(&d.send(&replay)),
        "SIP/2.0 403 Forbidden - Nonce Count Replayed"
    );
    // A realm the edge does not serve.
    let other = good.replace(&format!("realm=\"{DOMAIN}\""), "realm=\"other.org\"");
    let r = d.ask(&contact, "", Some(&other));
    assert_eq!(status(&r), "SIP/2.0 403 Forbidden - Unknown Realm");
    // A REGISTER for a user of another domain.
    let foreign = d.request(&contact, "", None).replace(
        &format!("To: <sip:carol@{DOMAIN}>"),
        "To: <sip:carol@other.org>",
    );
    assert_eq!(
        status(&d.send(&foreign)),
        "SIP/2.0 403 Forbidden - Unknown Realm"
    );
}

#[test]
fn malformed_authorization_contact_and_expires_get_400_naming_the_defect() {
    let edge = Edge::start("defects", "");
    let mut d = Device::new(&edge, "alice", "127.0.0.1");
    let contact = format!("<sip:alice@{}>", d.local());
    let cases = [
        (
            d.request(
                &contact,
                "",
                Some("Digest username=\"alice\", realm=\"example.net\""),
            ),
            "Digest",
        ),
        (d.request(&contact, "", Some("Basic YWxpY2U6d29uZGVy")), ""),
        (d.request("<sip:alice@>;q=7", "", None), "Contact"),
        (d.request(&contact, "Expires: soon\r\n", None), "Expires"),
    ];
    for (req, word) in cases {
        let r = d.send(&req);
        assert!(
            status(&r).starts_with("SIP/2.0 400 Bad Request - "),
            "{req}\n=> {r}"
        );
        assert!(status(&r).contains(word), "{r}");
    }
}

#[test]
fn failed_attempts_lock_out_one_source_only() {
    let edge = Edge::start("lockout", "");
    let mut attacker = Device::new(&edge, "bob", "127.0.0.2");
    let contact = format!("<sip:bob@{}>", attacker.local());
    for _ in 0..3 {
        let c = attacker.ask(&contact, "", None);
        let bad = attacker.answer(&c, "MD5", "guess");
        let r = attacker.ask(&contact, "", Some(&bad));
        assert_eq!(status(&r), "SIP/2.0 403 Forbidden - Bad Credentials");
    }
    // Now even the right password from that source is refused...
    let r = attacker.ask(&contact, "", None);
    assert_eq!(
        status(&r),
        "SIP/2.0 403 Forbidden - Too Many Failed Attempts"
    );
    // ...while another source registers the same user.
    let mut d = Device::new(&edge, "bob", "127.0.0.1");
    let ok = d.register(&format!("<sip:bob@{}>", d.local()), "", "MD5");
    assert_eq!(status(&ok), "SIP/2.0 200 OK", "{ok}");
}

#[test]
fn a_register_storm_from_one_source_leaves_others_served() {
    let edge = Edge::start(
        "storm",
        "[limits]\nper_source_rate = 20\nper_source_burst = 20\nnew_source_burst = 20\nover_limit = \"reply\"\n",
    );
    let storm = UdpSocket::bind("127.0.0.3:0").unwrap();
    storm
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut stormer = Device::new(&edge, "carol", "127.0.0.3");
    let msg = stormer.request(
        &format!("<sip:carol@{}>", storm.local_addr().unwrap()),
        "",
        None,
    );
    let msg = msg.replace(
        &stormer.local().to_string(),
        &storm.local_addr().unwrap().to_string(),
    );
    for _ in 0..400 {
        storm.send_to(msg.as_bytes(), edge.addr).unwrap();
    }
    let mut buf = [0u8; 4096];
    let (mut challenged, mut limited) = (0, 0);
    while let Ok((n, _)) = storm.recv_from(&mut buf) {
        let s = String::from_utf8_lossy(&buf[..n]).to_string();
        if s.starts_with("SIP/2.0 401") {
            challenged += 1;
        } else if s.starts_with("SIP/2.0 503") {
            limited += 1;
        }
    }
    assert!(
        challenged <= 60,
        "the storm was not limited: {challenged} challenges"
    );
    assert!(
        challenged >= 1 && limited + challenged < 400 + 1,
        "{challenged} {limited}"
    );
    let mut d = Device::new(&edge, "alice", "127.0.0.1");
    let ok = d.register(&format!("<sip:alice@{}>", d.local()), "", "SHA-256");
    assert_eq!(status(&ok), "SIP/2.0 200 OK", "{ok}");
}

/// The shard's side: the next datagram is a third-party REGISTER; answer it.
fn third_party(shard: &UdpSocket) -> String {
    let (msg, from) = recv(shard);
    assert!(msg.starts_with("REGISTER sip:"), "{msg}");
    let vias = header(&msg, "Via").join("\r\n");
    let answer = format!(
        "SIP/2.0 200 OK\r\n{vias}\r\n{}\r\n{};tag=pf\r\n{}\r\n{}\r\nContent-Length: 0\r\n\r\n",
        header(&msg, "From")[0],
        header(&msg, "To")[0],
        header(&msg, "Call-ID")[0],
        header(&msg, "CSeq")[0],
    );
    shard.send_to(answer.as_bytes(), from).unwrap();
    msg
}

#[test]
fn a_cpm_registration_reaches_the_pf_and_terminating_requests_the_flow() {
    let mut edge = Edge::start("third-party", "");
    let mut d = Device::new(&edge, "alice", "127.0.0.1");
    let me = d.local();
    let ok = d.register(&format!("<sip:alice@{me}>;{CPM_TAG}"), "", "SHA-256");
    assert_eq!(status(&ok), "SIP/2.0 200 OK", "{ok}");
    let tp = third_party(&edge.shard);
    assert!(tp.contains(&format!("To: <sip:alice@{DOMAIN}>")), "{tp}");
    assert!(header(&tp, "Content-Type")[0].contains("application/reginfo+xml"));
    assert!(
        tp.contains(&format!("sip:alice@{me}")) && tp.contains("oma.cpm.session"),
        "{tp}"
    );
    let exp: u32 = header(&tp, "Expires")[0][9..].trim().parse().unwrap();
    assert!(exp > 3000, "{tp}");
    // The invited user's PF (the shard) sends the session on: the edge
    // resolves the AoR to the registered flow.
    let (pf, edge_addr) = (edge.shard.local_addr().unwrap(), edge.addr);
    let invite = |user: &str| {
        format!(
            "INVITE sip:{user}@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {s};branch=z9hG4bK-pf-{user}\r\n\
             Route: <sip:{e};lr;cpm-leg=term>\r\nMax-Forwards: 69\r\nFrom: <sip:bob@{DOMAIN}>;tag=b\r\n\
             To: <sip:{user}@{DOMAIN}>\r\nCall-ID: t-{user}\r\nCSeq: 1 INVITE\r\nContact: <sip:{s}>\r\n\
             Accept-Contact: *;{CPM_TAG}\r\nContent-Length: 0\r\n\r\n",
            s = pf,
            e = edge_addr,
        )
    };
    edge.shard
        .send_to(invite("alice").as_bytes(), edge.addr)
        .unwrap();
    let (got, _) = recv(&d.sock);
    assert!(
        got.starts_with(&format!("INVITE sip:alice@{DOMAIN} ")),
        "{got}"
    );
    // Not registered: 480 back to the PF.
    edge.shard
        .send_to(invite("bob").as_bytes(), edge.addr)
        .unwrap();
    let (r, _) = recv(&edge.shard);
    assert!(
        r.starts_with("SIP/2.0 480 Temporarily Unavailable - Not Registered"),
        "{r}"
    );
    // The bindings survive a restart of the edge.
    edge.restart();
    edge.shard
        .send_to(invite("alice").as_bytes(), edge.addr)
        .unwrap();
    let (again, _) = recv(&d.sock);
    assert!(again.starts_with("INVITE sip:alice@"), "{again}");
    // De-registration: the PF hears Expires 0 and an empty registration.
    let off = d.register(
        &format!("<sip:alice@{me}>;{CPM_TAG}"),
        "Expires: 0\r\n",
        "SHA-256",
    );
    assert_eq!(status(&off), "SIP/2.0 200 OK");
    let tp = third_party(&edge.shard);
    assert_eq!(header(&tp, "Expires"), vec!["Expires: 0"], "{tp}");
    assert!(tp.contains("terminated"), "{tp}");
}

/// With no store the worker runs the registrar itself (no thread between):
/// the same answers, the PF told and answered, and nothing kept across a
/// restart.
#[test]
fn in_memory_the_worker_registers_tells_the_pf_and_keeps_nothing_across_a_restart() {
    let mut edge = Edge::start("in-memory", "store = \"\"\n");
    let mut d = Device::new(&edge, "alice", "127.0.0.1");
    let me = d.local();
    let ok = d.register(&format!("<sip:alice@{me}>;{CPM_TAG}"), "", "MD5");
    assert_eq!(status(&ok), "SIP/2.0 200 OK", "{ok}");
    assert!(ok.contains(&format!("<sip:alice@{me}>")), "{ok}");
    let tp = third_party(&edge.shard);
    assert!(tp.contains(&format!("To: <sip:alice@{DOMAIN}>")), "{tp}");
    let answered = "cpm_edge_registrar_third_party_total{result=\"answered\"} 1";
    let t0 = std::time::Instant::now();
    while !http(edge.admin(), "GET", "/metrics", "", None)
        .1
        .contains(answered)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "the PF's 200 never reached the registrar"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let invite = format!(
        "INVITE sip:alice@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {s};branch=z9hG4bK-pf-mem\r\n\
         Route: <sip:{e};lr;cpm-leg=term>\r\nMax-Forwards: 69\r\nFrom: <sip:bob@{DOMAIN}>;tag=b\r\n\
         To: <sip:alice@{DOMAIN}>\r\nCall-ID: t-mem\r\nCSeq: 1 INVITE\r\nContact: <sip:{s}>\r\n\
         Accept-Contact: *;{CPM_TAG}\r\nContent-Length: 0\r\n\r\n",
        s = edge.shard.local_addr().unwrap(),
        e = edge.addr,
    );
    edge.shard.send_to(invite.as_bytes(), edge.addr).unwrap();
    let (got, _) = recv(&d.sock);
    assert!(
        got.starts_with(&format!("INVITE sip:alice@{DOMAIN} ")),
        "{got}"
    );
    // A wrong password is still refused on this path.
    let mut eve = Device::new(&edge, "alice", "127.0.0.1");
    eve.password = "not-hers";
    let bad = eve.register(&format!("<sip:alice@{}>", eve.local()), "", "MD5");
    assert!(status(&bad).starts_with("SIP/2.0 403"), "{bad}");
    edge.restart();
    edge.shard.send_to(invite.as_bytes(), edge.addr).unwrap();
    let (r, _) = recv(&edge.shard);
    assert!(
        r.starts_with("SIP/2.0 480 Temporarily Unavailable - Not Registered"),
        "{r}"
    );
}

#[test]
fn with_require_registration_only_registered_users_send_and_are_asserted() {
    // An Interworking Function (seed 5.3.2) registers with nobody.
    let iwf = UdpSocket::bind("127.0.0.1:0").unwrap();
    let extra = format!(
        "require_registration = true\n[[iwf]]\nservice = \"sms\"\naddr = \"{}\"\n",
        iwf.local_addr().unwrap()
    );
    let edge = Edge::start("require", &extra);
    let mut d = Device::new(&edge, "bob", "127.0.0.1");
    let invite = |d: &Device| {
        format!(
            "INVITE sip:carol@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bK-inv\r\n\
             Max-Forwards: 70\r\nFrom: <sip:mallory@{DOMAIN}>;tag=m\r\nTo: <sip:carol@{DOMAIN}>\r\n\
             Call-ID: inv-1\r\nCSeq: 1 INVITE\r\nContact: <sip:bob@{l}>\r\n\
             P-Asserted-Identity: <sip:ceo@{DOMAIN}>\r\nAccept-Contact: *;{CPM_TAG}\r\nContent-Length: 0\r\n\r\n",
            l = d.local()
        )
    };
    let r = d.send(&invite(&d));
    assert_eq!(status(&r), "SIP/2.0 403 Forbidden - Not Registered");
    let ok = d.register(&format!("<sip:bob@{}>", d.local()), "", "MD5");
    assert_eq!(status(&ok), "SIP/2.0 200 OK", "{ok}");
    d.sock.send_to(invite(&d).as_bytes(), edge.addr).unwrap();
    let (fwd, _) = recv(&edge.shard);
    assert!(
        fwd.starts_with(&format!("INVITE sip:carol@{DOMAIN} ")),
        "{fwd}"
    );
    assert_eq!(
        header(&fwd, "P-Asserted-Identity"),
        vec![format!("P-Asserted-Identity: <sip:bob@{DOMAIN}>").as_str()],
        "{fwd}"
    );
    // A converted SMS from the IWF: routed, its assertion kept.
    let mo = format!(
        "MESSAGE sip:carol@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bK-mo\r\n\
         Max-Forwards: 70\r\nFrom: <tel:+447700900999>;tag=mo\r\nTo: <sip:carol@{DOMAIN}>\r\n\
         Call-ID: mo-1\r\nCSeq: 1 MESSAGE\r\nP-Asserted-Identity: <tel:+447700900999>\r\n\
         Accept-Contact: *;+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.msg\"\r\n\
         Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi",
        l = iwf.local_addr().unwrap()
    );
    iwf.send_to(mo.as_bytes(), edge.addr).unwrap();
    let (fwd, _) = recv(&edge.shard);
    assert!(
        fwd.starts_with(&format!("MESSAGE sip:carol@{DOMAIN} ")),
        "{fwd}"
    );
    assert!(
        fwd.contains("cpm-leg=term"),
        "to the invited user's PF: {fwd}"
    );
    assert_eq!(
        header(&fwd, "P-Asserted-Identity"),
        vec!["P-Asserted-Identity: <tel:+447700900999>"],
        "{fwd}"
    );
}

#[test]
fn credentials_and_bindings_through_the_admin_api() {
    let mut edge = Edge::start("admin", "");
    // A user the file does not have: refused, then provisioned by HA1.
    let a1 = format!("dave:{DOMAIN}:s3cret");
    let body = format!(
        "{{\"ha1_md5\":\"{}\",\"ha1_sha256\":\"{}\"}}",
        hex_md5(&a1),
        hex_sha(&a1)
    );
    let (code, _) = http(
        edge.admin(),
        "PUT",
        "/credentials/dave@example.net",
        &body,
        None,
    );
    assert_eq!(code, 200);
    let (code, list) = http(edge.admin(), "GET", "/credentials", "", None);
    assert_eq!(code, 200);
    assert!(
        list.contains("dave@example.net") && !list.contains(&hex_md5(&a1)),
        "{list}"
    );
    let (code, _) = http(
        edge.admin(),
        "PUT",
        "/credentials/dave@example.net",
        "{\"ha1_md5\":\"xyz\"}",
        None,
    );
    assert_eq!(code, 400);
    let mut d = Device::new(&edge, "alice", "127.0.0.1");
    d.user = "dave";
    d.password = "s3cret";
    let ok = d.register(
        &format!("<sip:dave@{}>;{CPM_TAG}", d.local()),
        "",
        "SHA-256",
    );
    assert_eq!(status(&ok), "SIP/2.0 200 OK", "{ok}");
    third_party(&edge.shard);
    let (code, b) = http(
        edge.admin(),
        "GET",
        "/registrations/dave@example.net",
        "",
        None,
    );
    assert_eq!(code, 200, "{b}");
    assert!(
        b.contains(&d.local().to_string()) && b.contains("\"cpm_services\":1"),
        "{b}"
    );
    let (code, _) = http(
        edge.admin(),
        "GET",
        "/registrations/nobody@example.net",
        "",
        None,
    );
    assert_eq!(code, 404);
    let (code, m) = http(edge.admin(), "GET", "/metrics", "", None);
    assert_eq!(code, 200);
    assert!(m.contains("cpm_edge_location_bindings 1"), "{m}");
    assert!(
        m.contains("cpm_edge_registrar_requests_total{result=\"registered\"} 1"),
        "{m}"
    );
    // The PF's 200 reached the registrar's transaction (no retransmission).
    let answered = "cpm_edge_registrar_third_party_total{result=\"answered\"} 1";
    let t0 = std::time::Instant::now();
    while !http(edge.admin(), "GET", "/metrics", "", None)
        .1
        .contains(answered)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "the PF's 200 never reached the registrar"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Written back to the file: a restart keeps the user.
    edge.restart();
    let (_, list) = http(edge.admin(), "GET", "/credentials", "", None);
    assert!(list.contains("dave@example.net"), "{list}");
    let (code, _) = http(
        edge.admin(),
        "DELETE",
        "/credentials/dave@example.net",
        "",
        None,
    );
    assert_eq!(code, 200);
    let c = d.ask("", "", None);
    let auth = d.answer(&c, "MD5", "s3cret");
    let r = d.ask("", "", Some(&auth));
    assert_eq!(status(&r), "SIP/2.0 403 Forbidden - Bad Credentials");
}

/// The requests (not responses) a party received, in order.
fn requests(p: &common::party::Party) -> Vec<String> {
    p.log()
        .into_iter()
        .filter(|r| !r.method_or_code.chars().all(|c| c.is_ascii_digit()))
        .map(|r| r.method_or_code)
        .collect()
}

#[test]
fn a_user_registered_on_two_devices_gets_the_invitation_on_both_through_edge_and_pf() {
    use common::party::{msrp_sdp, Answer, Party};
    let dir = temp_dir("fork");
    let creds = credentials_file(&dir);
    let edge_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cs = [free_port(), free_port()];
    let shards = format!(
        "[[shard]]\nname = \"cs1\"\naddr = \"127.0.0.1:{}\"\n[[shard]]\nname = \"cs2\"\naddr = \"127.0.0.1:{}\"\n",
        cs[0], cs[1]
    );
    let edge_toml = format!(
        "[listen]\naddr = \"{edge_addr}\"\n[admin]\nbind = \"127.0.0.1:0\"\n[workers]\ncount = 1\n\
         [health]\nenabled = false\n{shards}\
         [registrar]\ndomains = [\"{DOMAIN}\"]\ncredentials_file = \"{}\"\nstore = \"{}\"\n",
        creds.display(),
        dir.join("location.redb").display()
    );
    let edge = App::start(&Config::parse(&edge_toml).unwrap().validate().unwrap()).unwrap();
    let cs_toml = format!(
        "[server]\nedges = [\"{edge_addr}\"]\nterminating = \"registered\"\n{shards}\
         [[user]]\nid = \"sip:alice@{DOMAIN}\"\n[[user]]\nid = \"sip:bob@{DOMAIN}\"\n"
    );
    let nodes: Vec<_> = ["cs1", "cs2"]
        .iter()
        .map(|n| cpm_edge::csnode::start_shard(&cs_toml, n, false).unwrap())
        .collect();
    let (alice, bob1, bob2) = (Party::bind("alice"), Party::bind("bob"), Party::bind("bob"));
    register_party(&alice, edge_addr, "alice", "wonder", CPM_TAG);
    register_party(&bob1, edge_addr, "bob", "builder", CPM_TAG);
    register_party(&bob2, edge_addr, "bob", "builder", CPM_TAG);
    // Bob's PF has learned both devices from the edge's third-party REGISTERs.
    let bob_pf = &nodes[common::pf_shard(&format!("sip:bob@{DOMAIN}"))];
    let t0 = std::time::Instant::now();
    while bob_pf
        .node
        .reader()
        .registrations()
        .contacts(&format!("bob@{DOMAIN}"), std::time::Instant::now())
        .count()
        < 2
    {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "bob's PF never learned both devices"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    bob1.set_answer(Answer::RingOnly);
    bob2.set_answer(Answer::Accept {
        ring: true,
        delay: Duration::from_millis(300),
        sdp: msrp_sdp("bob2", bob2.addr()),
    });
    let call = alice.invite(
        &format!("sip:bob@{DOMAIN}"),
        edge_addr,
        &msrp_sdp("alice", alice.addr()),
        "",
    );
    assert!(
        call.wait_confirmed(Duration::from_secs(5)),
        "{:?}",
        alice.summary_dedup()
    );
    // Both devices were invited at their own contacts; the first answer won
    // and the other device's INVITE was CANCELled.
    assert!(bob1.wait_for(
        |l| l.iter().any(|r| r.method_or_code == "CANCEL"),
        Duration::from_secs(3)
    ));
    assert_eq!(
        requests(&bob1)[..2],
        ["INVITE", "CANCEL"],
        "{:?}",
        bob1.summary()
    );
    // The device answers the CANCEL, then its INVITE's 487: a moment later.
    let t0 = std::time::Instant::now();
    while !bob1
        .sent()
        .iter()
        .any(|s| s.start_line.starts_with("SIP/2.0 487"))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "the CANCELled device never ended its INVITE with 487: {:?}",
            bob1.summary()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(bob2.wait_for(
        |l| l.iter().any(|r| r.method_or_code == "ACK"),
        Duration::from_secs(3)
    ));
    assert_eq!(
        requests(&bob2)[..2],
        ["INVITE", "ACK"],
        "{:?}",
        bob2.summary()
    );
    for p in [&bob1, &bob2] {
        let inv = p
            .log()
            .into_iter()
            .find(|r| r.method_or_code == "INVITE")
            .unwrap();
        assert!(
            inv.start_line
                .starts_with(&format!("INVITE {} SIP/2.0", p.aor())),
            "{}",
            inv.raw
        );
        // The invited user as the edge asserted the inviter.
        assert!(
            inv.raw
                .contains(&format!("P-Asserted-Identity: <sip:alice@{DOMAIN}>")),
            "{}",
            inv.raw
        );
    }
    assert_eq!(call.bye(), Some(200));
    assert!(bob2.wait_for(
        |l| l.iter().any(|r| r.method_or_code == "BYE"),
        Duration::from_secs(3)
    ));
    assert!(!requests(&bob1).contains(&"BYE".to_string()));
    drop(nodes);
    edge.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_expired_binding_leaves_and_its_pf_hears_of_it() {
    let edge = Edge::start("expiry", "min_expires = 1\n");
    let mut d = Device::new(&edge, "bob", "127.0.0.1");
    let me = d.local();
    let ok = d.register(&format!("<sip:bob@{me}>;expires=1;{CPM_TAG}"), "", "MD5");
    assert_eq!(status(&ok), "SIP/2.0 200 OK", "{ok}");
    let on = third_party(&edge.shard);
    assert!(on.contains(&format!("sip:bob@{me}")), "{on}");
    // Answered: no retransmission of it comes; the next notice is the
    // sweep's (once a second) removing the binding.
    // The sweep (once a second) removes it and tells the PF.
    let off = third_party(&edge.shard);
    assert_eq!(header(&off, "Expires"), vec!["Expires: 0"], "{off}");
    assert!(off.contains("state=\"terminated\""), "{off}");
    let (code, _) = http(
        edge.admin(),
        "GET",
        "/registrations/bob@example.net",
        "",
        None,
    );
    assert_eq!(code, 404);
}

const MSG_TAG: &str = "+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.msg\"";

/// A pager-mode MESSAGE from `p` to `to` through `edge`, with the CPM
/// message feature tag; the final answer's start line.
fn send_message(
    p: &common::party::Party,
    edge: SocketAddr,
    to: &str,
    n: u32,
    text: &str,
) -> String {
    let call_id = format!("msg-{n}-{}", p.addr().port());
    let req = format!(
        "MESSAGE {to} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK-m{n}-{call_id}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{u}@{DOMAIN}>;tag=m{n}\r\nTo: <{to}>\r\nCall-ID: {call_id}\r\n\
         CSeq: 1 MESSAGE\r\nAccept-Contact: *;{MSG_TAG}\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\n\r\n{text}",
        text.len(),
        a = p.addr(),
        u = p.name(),
    );
    p.send_raw(req.as_bytes(), edge);
    let done = |l: &[common::party::Received]| {
        l.iter().any(|r| {
            r.call_id == call_id && r.method_or_code.parse::<u16>().is_ok_and(|c| c >= 200)
        })
    };
    assert!(
        p.wait_for(done, Duration::from_secs(5)),
        "no answer to MESSAGE {n}"
    );
    p.log()
        .into_iter()
        .find(|r| r.call_id == call_id && r.method_or_code.parse::<u16>().is_ok_and(|c| c >= 200))
        .map(|r| r.start_line)
        .unwrap()
}

/// The MESSAGE bodies a party received.
fn messages_at(p: &common::party::Party) -> Vec<String> {
    p.log()
        .into_iter()
        .filter(|r| r.method_or_code == "MESSAGE")
        .map(|r| r.raw)
        .collect()
}

/// Seed 5.2.5 and 5.3.1.1.1 for pager-mode messages, through a real edge
/// (registrar) and two real cpm-cs shards: both of bob's devices get
/// alice's message; bob's unregistered friend dave states nothing, so the
/// provider's `reject` answers; carol wants hers kept, and gets it when she
/// registers, after a restart of the CS shards in between.
#[test]
fn a_message_reaches_every_registered_device_or_waits_for_registration_as_preferred() {
    use common::party::Party;
    let dir = temp_dir("pager");
    let creds = credentials_file(&dir);
    let edge_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cs = [free_port(), free_port()];
    let shards = format!(
        "[[shard]]\nname = \"cs1\"\naddr = \"127.0.0.1:{}\"\n[[shard]]\nname = \"cs2\"\naddr = \"127.0.0.1:{}\"\n",
        cs[0], cs[1]
    );
    // The SMS Interworking Function's SIP side, played by a socket here
    // (cpm-iwf comes with the gateway).
    let iwf = UdpSocket::bind("127.0.0.1:0").unwrap();
    iwf.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let edge_toml = format!(
        "[listen]\naddr = \"{edge_addr}\"\n[admin]\nbind = \"127.0.0.1:0\"\n[workers]\ncount = 1\n\
         [health]\nenabled = false\n{shards}\
         [[iwf]]\nservice = \"sms\"\naddr = \"{}\"\n\
         [registrar]\ndomains = [\"{DOMAIN}\"]\ncredentials_file = \"{}\"\nstore = \"\"\n",
        iwf.local_addr().unwrap(),
        creds.display(),
    );
    let edge = App::start(&Config::parse(&edge_toml).unwrap().validate().unwrap()).unwrap();
    let cs_toml = format!(
        "[server]\nedges = [\"{edge_addr}\"]\nterminating = \"registered\"\n\
         deferred_store = \"{}/{{shard}}-deferred.redb\"\n{shards}\
         [[user]]\nid = \"sip:alice@{DOMAIN}\"\n[[user]]\nid = \"sip:bob@{DOMAIN}\"\n\
         [[user]]\nid = \"sip:dave@{DOMAIN}\"\n\
         [[user]]\nid = \"sip:carol@{DOMAIN}\"\nwhen_unregistered = \"defer\"\n\
         [[user]]\nid = \"sip:erin@{DOMAIN}\"\nwhen_unregistered = \"sms\"\nmsisdn = \"+447700900123\"\n",
        dir.display()
    );
    let start = || -> Vec<_> {
        ["cs1", "cs2"]
            .iter()
            .map(|n| cpm_edge::csnode::start_shard(&cs_toml, n, false).unwrap())
            .collect()
    };
    let mut nodes = start();
    let (alice, bob1, bob2) = (Party::bind("alice"), Party::bind("bob"), Party::bind("bob"));
    register_party(&alice, edge_addr, "alice", "wonder", MSG_TAG);
    register_party(&bob1, edge_addr, "bob", "builder", MSG_TAG);
    register_party(&bob2, edge_addr, "bob", "builder", MSG_TAG);
    let bob_pf = &nodes[common::pf_shard(&format!("sip:bob@{DOMAIN}"))];
    let t0 = std::time::Instant::now();
    while bob_pf
        .node
        .reader()
        .registrations()
        .contacts(&format!("bob@{DOMAIN}"), std::time::Instant::now())
        .count()
        < 2
    {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "bob's PF never learned both devices"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ok = send_message(
        &alice,
        edge_addr,
        &format!("sip:bob@{DOMAIN}"),
        1,
        "hello bob",
    );
    assert!(
        ok.starts_with("SIP/2.0 200 "),
        "{ok} {:?} {:?}",
        bob1.summary(),
        alice.summary()
    );
    for p in [&bob1, &bob2] {
        assert!(p.wait_for(
            |l| l.iter().any(|r| r.method_or_code == "MESSAGE"),
            Duration::from_secs(3)
        ));
        let m = &messages_at(p)[0];
        assert!(
            m.starts_with(&format!("MESSAGE {} SIP/2.0", p.aor())),
            "{m}"
        );
        assert!(
            m.contains(&format!("P-Asserted-Identity: <sip:alice@{DOMAIN}>")),
            "{m}"
        );
        assert!(m.ends_with("\r\n\r\nhello bob"), "{m}");
    }
    // dave never registered and states no preference: the provider's.
    let no = send_message(
        &alice,
        edge_addr,
        &format!("sip:dave@{DOMAIN}"),
        2,
        "hi dave",
    );
    assert!(
        no.starts_with("SIP/2.0 480 Temporarily Unavailable - Not Registered"),
        "{no}"
    );
    // erin prefers SMS: her PF sends it through the edge to the IWF, to
    // her number; the IWF's answer comes back to alice.
    let sender = std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            send_message(
                &alice,
                edge_addr,
                &format!("sip:erin@{DOMAIN}"),
                4,
                "via sms",
            )
        });
        let (got, from) = recv(&iwf);
        assert!(
            got.starts_with("MESSAGE tel:+447700900123 SIP/2.0\r\n"),
            "{got}"
        );
        assert!(got.contains(&format!("To: <sip:erin@{DOMAIN}>")), "{got}");
        assert!(
            got.contains(&format!("P-Asserted-Identity: <sip:alice@{DOMAIN}>")),
            "{got}"
        );
        assert!(got.ends_with("\r\n\r\nvia sms"), "{got}");
        assert!(
            !got.contains("cpm-iwf"),
            "the edge popped its Route value: {got}"
        );
        let vias = header(&got, "Via").join("\r\n");
        let answer = format!(
            "SIP/2.0 202 Accepted\r\n{vias}\r\n{}\r\n{};tag=iwf\r\n{}\r\n{}\r\nContent-Length: 0\r\n\r\n",
            header(&got, "From")[0],
            header(&got, "To")[0],
            header(&got, "Call-ID")[0],
            header(&got, "CSeq")[0],
        );
        iwf.send_to(answer.as_bytes(), from).unwrap();
        h.join().unwrap()
    });
    assert!(sender.starts_with("SIP/2.0 202 "), "{sender}");
    // carol's is kept (202) until she registers.
    let kept = send_message(
        &alice,
        edge_addr,
        &format!("sip:carol@{DOMAIN}"),
        3,
        "for later",
    );
    assert!(kept.starts_with("SIP/2.0 202 "), "{kept}");
    // Kept across a restart of the Conversation Servers.
    drop(nodes);
    nodes = start();
    let carol = Party::bind("carol");
    register_party(&carol, edge_addr, "carol", "c4r0l", MSG_TAG);
    assert!(
        carol.wait_for(
            |l| l.iter().any(|r| r.method_or_code == "MESSAGE"),
            Duration::from_secs(3)
        ),
        "{:?}",
        carol.summary()
    );
    let m = &messages_at(&carol)[0];
    assert!(
        m.starts_with(&format!("MESSAGE {} SIP/2.0", carol.aor())),
        "{m}"
    );
    assert!(m.ends_with("\r\n\r\nfor later"), "{m}");
    drop(nodes);
    edge.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
