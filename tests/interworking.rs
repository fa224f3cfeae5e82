//! Seed 5.3.1.1.1 end to end through a real SMS gateway: a CPM pager-mode
//! MESSAGE for a user who is not registered and prefers SMS goes client →
//! cpm-edge → her Participating Function (cpm-cs) → cpm-edge → cpm-iwf →
//! Kannel (bearerbox + smsbox) → fakesmsc playing the SMSC, and lands with
//! her MSISDN and the text. Kannel is Debian's `kannel` + `kannel-extras`
//! (tests/run.sh installs them); every process is started here on loopback
//! and stopped by PID.

mod common;
use common::free_port;
use common::kannel::{await_smsc, smsc_got, start_kannel};
use common::party::{Party, Received};
use cpm_edge::app::App;
use cpm_edge::config::Config;
use cpm_edge::iwfnode::{self, Iwf};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::register::{credentials_file, register_party, DOMAIN};
const MSG_TAG: &str = "+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.msg\"";

fn send_message(p: &Party, edge: SocketAddr, to: &str, n: u32, text: &str) -> String {
    send_body(p, edge, to, n, "text/plain;charset=UTF-8", text.as_bytes())
}

/// A MESSAGE from alice (on `p`) to `to`; its final answer's start line.
fn send_body(p: &Party, edge: SocketAddr, to: &str, n: u32, ctype: &str, body: &[u8]) -> String {
    let call_id = format!("iw-{n}-{}", p.addr().port());
    let req = format!(
        "MESSAGE {to} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK-iw{n}-{call_id}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=m{n}\r\nTo: <{to}>\r\nCall-ID: {call_id}\r\n\
         CSeq: 1 MESSAGE\r\nAccept-Contact: *;{MSG_TAG}\r\nContent-Type: {ctype}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len(),
        a = p.addr(),
    );
    let mut req = req.into_bytes();
    req.extend_from_slice(body);
    p.send_raw(&req, edge);
    let fin = |r: &Received| {
        r.call_id == call_id && r.method_or_code.parse::<u16>().is_ok_and(|c| c >= 200)
    };
    assert!(
        p.wait_for(|l| l.iter().any(fin), Duration::from_secs(8)),
        "no answer to MESSAGE {n}: {:?}",
        p.summary()
    );
    p.log().into_iter().find(fin).map(|r| r.start_line).unwrap()
}

/// cpm-edge (with an `[[iwf]]` for SMS at `iwf`, and `edge_extra`) and
/// two cpm-cs shards serving `users` (`[[user]]` entries), their
/// `[server]` with `server_extra`; stopped when dropped.
struct Cluster {
    edge: Option<App>,
    nodes: Vec<cpm_edge::csnode::Shard>,
    edge_addr: SocketAddr,
    iwf_addr: SocketAddr,
    /// The registrar's credentials live here (`registrar_cluster`).
    dir: Option<std::path::PathBuf>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.nodes.clear();
        if let Some(edge) = self.edge.take() {
            let _ = edge.stop();
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A [`cluster`] whose edge is the registrar of example.net (the test
/// users' credentials, bindings in memory).
fn registrar_cluster(name: &str, server_extra: &str, users: &str) -> Cluster {
    let dir = std::env::temp_dir().join(format!("cpm-iw-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let creds = credentials_file(&dir);
    let registrar = format!(
        "[registrar]\ndomains = [\"{DOMAIN}\"]\ncredentials_file = \"{}\"\nstore = \"\"\n",
        creds.display()
    );
    let mut c = cluster(&registrar, server_extra, users);
    c.dir = Some(dir);
    c
}

/// cpm-iwf's configuration for cluster `c`, Kannel at `sendsms`; `sip`
/// adds to `[sip]`, `rest` follows `[kannel]`.
fn iwf_toml(c: &Cluster, sendsms: SocketAddr, sip: &str, rest: &str) -> String {
    format!(
        "[sip]\nlisten = \"{}\"\nedges = [\"{}\"]\nsender = \"+447700900000\"\n{sip}\
         [kannel]\nsendsms = \"{sendsms}\"\nusername = \"iwf\"\npassword = \"iwf-secret\"\n{rest}",
        c.iwf_addr, c.edge_addr
    )
}

fn cluster(edge_extra: &str, server_extra: &str, users: &str) -> Cluster {
    let edge_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let iwf_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cs = [free_port(), free_port()];
    let shards = format!(
        "[[shard]]\nname = \"cs1\"\naddr = \"127.0.0.1:{}\"\n[[shard]]\nname = \"cs2\"\naddr = \"127.0.0.1:{}\"\n",
        cs[0], cs[1]
    );
    let edge_toml = format!(
        "[listen]\naddr = \"{edge_addr}\"\n[admin]\nbind = \"127.0.0.1:0\"\n[workers]\ncount = 1\n\
         [health]\nenabled = false\n{shards}[[iwf]]\nservice = \"sms\"\naddr = \"{iwf_addr}\"\n{edge_extra}"
    );
    let edge = App::start(&Config::parse(&edge_toml).unwrap().validate().unwrap()).unwrap();
    let cs_toml = format!(
        "[server]\nedges = [\"{edge_addr}\"]\nterminating = \"registered\"\n{server_extra}{shards}{users}"
    );
    let nodes = ["cs1", "cs2"]
        .iter()
        .map(|n| cpm_edge::csnode::start_shard(&cs_toml, n, false).unwrap())
        .collect();
    Cluster {
        edge: Some(edge),
        nodes,
        edge_addr,
        iwf_addr,
        dir: None,
    }
}

/// fakesmsc's URL-encoded binary data as bytes.
fn percent_decoded(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() {
            let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(h, 16).unwrap());
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    out
}

/// Wait until `user`'s PF has learned a registered device of hers.
fn await_pf_learned(nodes: &[cpm_edge::csnode::Shard], user: &str) {
    let pf = &nodes[common::pf_shard(&format!("sip:{user}@{DOMAIN}"))];
    let t0 = Instant::now();
    while pf
        .node
        .reader()
        .registrations()
        .contacts(&format!("{user}@{DOMAIN}"), Instant::now())
        .count()
        == 0
    {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "{user}'s PF never learned her device"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// cpm-iwf on its own thread, stopped and joined when dropped.
struct IwfThread(Arc<AtomicBool>, Option<std::thread::JoinHandle<()>>);

impl Drop for IwfThread {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        if let Some(t) = self.1.take() {
            let _ = t.join();
        }
    }
}

fn run_iwf(toml: &str) -> IwfThread {
    let mut iwf = Iwf::start(iwfnode::load(toml).unwrap()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = Arc::clone(&stop);
    IwfThread(stop, Some(std::thread::spawn(move || iwf.run(&s2))))
}

#[test]
fn a_message_for_an_unregistered_user_preferring_sms_lands_at_the_smsc() {
    let kannel = start_kannel(None, None);
    let c = cluster(
        "",
        "",
        &format!(
            "[[user]]\nid = \"sip:alice@{DOMAIN}\"\n\
             [[user]]\nid = \"sip:erin@{DOMAIN}\"\nwhen_unregistered = \"sms\"\nmsisdn = \"+447700900123\"\n\
             [[user]]\nid = \"sip:frank@{DOMAIN}\"\nwhen_unregistered = \"sms\"\nmsisdn = \"+447700900124\"\n"
        ),
    );
    let edge_addr = c.edge_addr;
    let _iwf = run_iwf(&iwf_toml(
        &c,
        kannel.sendsms,
        "max_parts = 3\n",
        "timeout_ms = 3000\n",
    ));

    let alice = Party::bind("alice");
    let ok = send_message(
        &alice,
        edge_addr,
        &format!("sip:erin@{DOMAIN}"),
        1,
        "hello erin, by SMS",
    );
    assert!(ok.starts_with("SIP/2.0 202 "), "{ok}");
    await_smsc(&kannel, 1);
    let got = smsc_got(&kannel);
    assert!(
        got[0].ends_with("<+447700900000 +447700900123 text hello erin, by SMS>"),
        "{got:?}"
    );
    // A text beyond the IWF's 3 parts: a clear error back to alice, and
    // nothing sent.
    let long = "x".repeat(3 * 153 + 1);
    let no = send_message(&alice, edge_addr, &format!("sip:frank@{DOMAIN}"), 2, &long);
    assert!(
        no.starts_with("SIP/2.0 413 Request Entity Too Large - Text Needs 4 SMS Parts (At Most 3)"),
        "{no}"
    );
    // Text that is not UTF-8 cannot be coded for SMS: the IWF says so.
    let broken = send_body(
        &alice,
        edge_addr,
        &format!("sip:frank@{DOMAIN}"),
        4,
        "text/plain",
        b"caf\xe9",
    );
    assert!(
        broken.starts_with("SIP/2.0 400 Bad Request - Text Is Not UTF-8"),
        "{broken}"
    );
    // Seed 5.3.1.2.3: a recipient not routable in SIP, with no IWF for its
    // scheme: refused by alice's PF, the scheme named.
    let wv = send_message(&alice, edge_addr, "wv:bob@wv.example.net", 5, "hello?");
    assert!(
        wv.starts_with("SIP/2.0 416 Unsupported URI Scheme - wv: Not Routable In SIP"),
        "{wv}"
    );
    // A text of two parts (200 septets > 160): Kannel concatenates, the
    // SMSC gets each part with its concatenation header.
    let two = format!("{}{}", "a".repeat(150), "b".repeat(50));
    let ok = send_message(&alice, edge_addr, &format!("sip:frank@{DOMAIN}"), 6, &two);
    assert!(ok.starts_with("SIP/2.0 202 "), "{ok}");
    await_smsc(&kannel, 3);
    // TS 23.040 concatenation header: IEI 0, 3 bytes, reference, 2 parts,
    // part number; 153 septets in the first.
    let mut joined = String::new();
    for (i, p) in smsc_got(&kannel)[1..].iter().enumerate() {
        let (head, data) = p.split_once(" data ").unwrap();
        // The reference byte is Kannel's to choose.
        let udh = head
            .split_once("<+447700900000 +447700900124 udh %05%00%03%")
            .map(|(_, rest)| rest);
        assert!(
            udh.is_some_and(|u| u.len() == 2 + 6 && u.ends_with(&format!("%02%0{}", i + 1))),
            "{p}"
        );
        let data = data.trim_end_matches('>');
        assert_eq!(data.len(), if i == 0 { 153 } else { 47 }, "{p}");
        joined += data;
    }
    assert_eq!(joined, two);
    // A text outside the GSM alphabet goes as UCS-2 (Kannel coding 2):
    // the SMSC gets the UTF-16 units.
    let ok = send_message(
        &alice,
        edge_addr,
        &format!("sip:frank@{DOMAIN}"),
        7,
        "Привет, Ελλάδα",
    );
    assert!(ok.starts_with("SIP/2.0 202 "), "{ok}");
    await_smsc(&kannel, 4);
    let ucs2 = smsc_got(&kannel)[3].clone();
    let (_, data) = ucs2
        .split_once("<+447700900000 +447700900124 ucs-2 ")
        .unwrap_or_else(|| panic!("not UCS-2: {ucs2}"));
    let bytes = percent_decoded(data.trim_end_matches('>'));
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|p| u16::from_be_bytes([p[0], p[1]]))
        .collect();
    assert_eq!(String::from_utf16(&units).unwrap(), "Привет, Ελλάδα");
    // Kannel gone: the IWF says so (503) rather than losing the message.
    drop(kannel);
    let dead = send_message(
        &alice,
        edge_addr,
        &format!("sip:frank@{DOMAIN}"),
        3,
        "anyone?",
    );
    assert!(
        dead.starts_with("SIP/2.0 503 Service Unavailable - SMS Gateway Unreachable"),
        "{dead}"
    );
}

/// Seed 5.3.2 end to end: an SMS injected at fakesmsc (the SMSC) reaches
/// carol, a registered CPM client, as a MESSAGE through Kannel → cpm-iwf
/// → cpm-edge → her PF → cpm-edge → her device, from her friend's number.
#[test]
fn an_sms_from_the_smsc_reaches_a_registered_cpm_client_as_a_message() {
    let mo_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let c = registrar_cluster(
        "mo",
        "",
        &format!("[[user]]\nid = \"sip:carol@{DOMAIN}\"\nmsisdn = \"+447700900123\"\n"),
    );
    let carol = Party::bind("carol");
    register_party(&carol, c.edge_addr, "carol", "c4r0l", MSG_TAG);
    await_pf_learned(&c.nodes, "carol");
    let _iwf = run_iwf(&iwf_toml(
        &c,
        "127.0.0.1:1".parse().unwrap(),
        "",
        &format!(
            "[mo]\nlisten = \"{mo_addr}\"\nwait_ms = 5000\n\
             [[subscriber]]\nmsisdn = \"+447700900123\"\nuser = \"sip:carol@{DOMAIN}\"\n"
        ),
    ));
    // The SMSC sends one SMS once Kannel is up.
    let url = format!("http://{mo_addr}/mo?from=%p&to=%P&text=%a");
    let kannel = start_kannel(
        Some(&url),
        Some("+447700900999 +447700900123 text hello from a phone"),
    );
    assert!(
        carol.wait_for(
            |l| l.iter().any(|r| r.method_or_code == "MESSAGE"),
            Duration::from_secs(10)
        ),
        "no MESSAGE reached carol: {:?}; kannel in {}",
        carol.summary(),
        kannel.dir.display()
    );
    let m = carol
        .log()
        .into_iter()
        .find(|r| r.method_or_code == "MESSAGE")
        .unwrap()
        .raw;
    assert!(
        m.starts_with(&format!("MESSAGE {} SIP/2.0", carol.aor())),
        "{m}"
    );
    assert!(
        m.contains("P-Asserted-Identity: <tel:+447700900999>"),
        "{m}"
    );
    assert!(m.ends_with("\r\n\r\nhello from a phone"), "{m}");
    drop(kannel);
}

/// RFC 5438 through Kannel: alice's CPIM MESSAGE to erin (unregistered,
/// SMS preferred) asks for delivery notifications; the IWF asks Kannel for
/// reports (`dlr-mask`, `dlr-url`), fakesmsc's SMSC reports the SMS
/// delivered, and alice's device gets the IMDN through cpm-edge and her
/// PF, naming her message. A report for a token the IWF never issued is
/// refused and changes nothing.
#[test]
fn a_delivery_report_from_the_smsc_reaches_the_sender_as_an_imdn() {
    let mo_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let c = registrar_cluster(
        "dlr",
        "",
        &format!(
            "[[user]]\nid = \"sip:alice@{DOMAIN}\"\n\
             [[user]]\nid = \"sip:erin@{DOMAIN}\"\nwhen_unregistered = \"sms\"\nmsisdn = \"+447700900123\"\n"
        ),
    );
    let alice = Party::bind("alice");
    register_party(&alice, c.edge_addr, "alice", "wonder", MSG_TAG);
    await_pf_learned(&c.nodes, "alice");
    let kannel = start_kannel(None, None);
    let _iwf = run_iwf(&iwf_toml(
        &c,
        kannel.sendsms,
        "",
        &format!("[mo]\nlisten = \"{mo_addr}\"\nreports = 8\n"),
    ));
    let cpim = format!(
        "From: <sip:alice@{DOMAIN}>\r\nTo: <sip:erin@{DOMAIN}>\r\nNS: imdn <urn:ietf:params:imdn>\r\n\
         imdn.Message-ID: im-42\r\nDateTime: 2026-12-02T18:00:00Z\r\n\
         imdn.Disposition-Notification: positive-delivery, negative-delivery\r\n\r\n\
         Content-Type: text/plain;charset=UTF-8\r\n\r\nare you there, erin?"
    );
    let ok = send_body(
        &alice,
        c.edge_addr,
        &format!("sip:erin@{DOMAIN}"),
        1,
        "message/cpim",
        cpim.as_bytes(),
    );
    assert!(ok.starts_with("SIP/2.0 202 "), "{ok}");
    let is_imdn = |r: &Received| r.method_or_code == "MESSAGE" && r.raw.contains("imdn+xml");
    assert!(
        alice.wait_for(|l| l.iter().any(is_imdn), Duration::from_secs(10)),
        "no IMDN reached alice: {:?}; fakesmsc got {:?}; kannel in {}",
        alice.summary(),
        smsc_got(&kannel),
        kannel.dir.display()
    );
    assert!(smsc_got(&kannel)[0].ends_with("text are you there, erin?>"));
    let n = alice.log().into_iter().find(is_imdn).unwrap().raw;
    assert!(
        n.starts_with(&format!("MESSAGE {} SIP/2.0", alice.aor())),
        "{n}"
    );
    assert!(
        n.contains("P-Asserted-Identity: <tel:+447700900123>"),
        "{n}"
    );
    assert!(n.contains("Content-Type: message/cpim"), "{n}");
    assert!(n.contains("Content-Disposition: notification"), "{n}");
    for part in [
        "<message-id>im-42</message-id>",
        "<datetime>2026-12-02T18:00:00Z</datetime>",
        "<recipient-uri>tel:+447700900123</recipient-uri>",
        "<status><delivered/></status>",
    ] {
        assert!(n.contains(part), "{part} missing: {n}");
    }
    // A forged or unknown report: refused, and alice hears nothing more.
    let (code, _) = common::http(mo_addr, "GET", "/dlr?k=0123456789abcdef&type=2", "", None);
    assert_eq!(code, 404);
    let (code, _) = common::http(mo_addr, "GET", "/dlr?k=x&type=failed", "", None);
    assert_eq!(code, 400);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(alice.log().into_iter().filter(is_imdn).count(), 1);
    drop(kannel);
}

/// Seed 5.3.1.2 through real sockets and a real gateway, the sending
/// user's PF deciding: a recipient in a network the edge has no route to
/// (the edge's `404 No Route To Request-URI Host`, one of the answers that
/// mean "no CPM / no SIP there") is re-targeted to SMS when the address
/// has a number (`when_remote_lacks = "sms"`), and the error goes back to
/// the sender when it has none; a `tel:` number no user has goes to SMS
/// too (`unmapped_numbers = "sms"`, 5.3.1.2.3).
#[test]
fn a_recipient_without_cpm_gets_sms_when_it_has_a_number_and_the_error_otherwise() {
    let kannel = start_kannel(None, None);
    // The edge serves example.net only: other.example is another network.
    let c = registrar_cluster(
        "far",
        "when_remote_lacks = \"sms\"\nunmapped_numbers = \"sms\"\n",
        &format!("[[user]]\nid = \"sip:alice@{DOMAIN}\"\n"),
    );
    let _iwf = run_iwf(&iwf_toml(&c, kannel.sendsms, "", ""));
    let alice = Party::bind("alice");
    let far = "sip:+447700900777@other.example;user=phone";
    let ok = send_message(&alice, c.edge_addr, far, 1, "to a phone abroad");
    assert!(ok.starts_with("SIP/2.0 202 "), "{ok}");
    let ok = send_message(&alice, c.edge_addr, "tel:+447700900555", 2, "to a number");
    assert!(ok.starts_with("SIP/2.0 202 "), "{ok}");
    let no = send_message(&alice, c.edge_addr, "sip:zoe@other.example", 3, "to zoe");
    assert!(
        no.starts_with("SIP/2.0 404 Not Found - No Route To Request-URI Host"),
        "{no}"
    );
    // A number that is no MSISDN: no attempt, the reason back.
    let bad = send_message(&alice, c.edge_addr, "tel:+12345", 4, "to nobody");
    assert!(
        bad.starts_with("SIP/2.0 404 Not Found - Number Not In E.164"),
        "{bad}"
    );
    await_smsc(&kannel, 2);
    // From the provider's sender: alice's PF asserts her SIP identity only.
    let got = smsc_got(&kannel);
    for sms in [
        "<+447700900000 +447700900777 text to a phone abroad>",
        "<+447700900000 +447700900555 text to a number>",
    ] {
        assert!(got.iter().any(|g| g.ends_with(sms)), "{sms}: {got:?}");
    }
    drop(kannel);
}
