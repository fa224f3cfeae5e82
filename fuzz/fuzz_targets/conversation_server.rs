//! The Conversation Server's transaction user (`cs::server::Server`, sans
//! IO) under arbitrary sequences: INVITEs from the edge for every leg
//! marker and target (group, user, unknown; good and bad SDP), responses
//! of every class to what the server sent, its own output looped back,
//! CANCEL / BYE / ACK / SUBSCRIBE inside what it set up, raw bytes from the
//! edge and from strangers, third-party REGISTERs (reg-info for one, two or
//! no devices, Expires 0, a wrong type, an unknown user, arbitrary bodies:
//! the invited user's PF then forks to what was registered) and clock
//! jumps. Never a panic; the tables, the registrations and every session's
//! C.1 rules consistent after each step; no deadline left in the past once
//! the timers due have run.
#![no_main]

use cpm_edge::cs::directory::{Directory, GroupSpec, InvitePolicy, UserSpec};
use cpm_edge::cs::server::{Server, Settings, Terminating, WhenUnregistered};
use cpm_edge::sip::media::MediaPolicy;
use cpm_edge::sip::scan::scan;
use cpm_edge::sip::transaction::{self, write_response, ResponseSpec};
use libfuzzer_sys::fuzz_target;

#[path = "common/input.rs"]
mod input;
use input::Input;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const EDGE: &str = "127.0.0.1:5060";
const LOCAL: &str = "127.0.0.1:7001";
const TARGETS: [&str; 4] = [
    "sip:team@groups.example.net",
    "sip:bob@127.0.0.1:5072",
    "sip:nobody@127.0.0.1:5099",
    "sip:alice@127.0.0.1:5071",
];
const LEGS: [&str; 4] = ["orig", "term", "ctrl", "none"];
const CODES: [u16; 9] = [100, 180, 183, 200, 202, 486, 487, 603, 408];
const SDP: &str = "v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
    m=message 7394 TCP/MSRP *\r\na=accept-types:message/cpim\r\nm=audio 4000 RTP/AVP 0\r\n";

/// Registered devices of bob (and one URI that is not routable).
const DEVICES: [&str; 4] = [
    "sip:bob@127.0.0.1:5072",
    "sip:bob@127.0.0.1:5082;transport=udp",
    "sips:bob@[::1]:5061",
    "tel:+15551234",
];
const AORS: [&str; 3] = [
    "sip:bob@127.0.0.1:5072",
    "sip:alice@127.0.0.1",
    "sip:nobody@x",
];

fn server(terminating: Terminating) -> Server {
    let users: Vec<UserSpec> = ["alice", "bob", "carol"]
        .iter()
        .enumerate()
        .map(|(i, n)| UserSpec {
            id: format!("sip:{n}@127.0.0.1:{}", 5071 + i),
            media: MediaPolicy::default(),
            // Each preference for a user with no device: the provider's
            // (defer), SMS with a number, reject.
            when_unregistered: [
                None,
                Some(WhenUnregistered::Sms),
                Some(WhenUnregistered::Reject),
            ][i],
            msisdn: (i == 1).then(|| "+447700900123".to_string()),
        })
        .collect();
    let group = GroupSpec {
        id: TARGETS[0].into(),
        host: "cs1".into(),
        members: users.iter().map(|u| u.id.clone()).collect(),
        max_participants: 3,
        invite: InvitePolicy::Members,
        subject: Some("fuzz".into()),
        media: MediaPolicy::default(),
    };
    let settings = Settings {
        name: "cs1".into(),
        local: LOCAL.parse().unwrap(),
        edges: vec![EDGE.parse().unwrap()],
        max_sessions: 4,
        max_dialogs: 16,
        invite_timeout: Duration::from_secs(2),
        provider_media: MediaPolicy::default(),
        conference_factory: Some("conference-factory@groups.example.net".into()),
        terminating,
        when_unregistered: WhenUnregistered::Defer,
        unmapped_numbers: cpm_edge::cs::server::UnmappedNumbers::Sms,
        when_remote_lacks: cpm_edge::cs::server::RemoteLacks::Sms,
        scheme_iwf: [("mailto".to_string(), "email".to_string())].into(),
        transaction: transaction::Config {
            max_transactions: 32,
            max_pending: 64,
            ..transaction::Config::default()
        },
    };
    Server::new(
        settings,
        Arc::new(Directory::new(&users, &[group]).unwrap()),
    )
}

fn invite(n: u8, target: &str, leg: &str, sdp: &str) -> Vec<u8> {
    let route = match leg {
        "none" => String::new(),
        l => format!("Route: <sip:{LOCAL};lr>,<sip:{EDGE};lr;cpm-leg={l}>\r\n"),
    };
    format!(
        "INVITE {target} SIP/2.0\r\nVia: SIP/2.0/UDP {EDGE};branch=z9hG4bKcpe{n}\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKa{n};rport=5071\r\nMax-Forwards: {mf}\r\n\
         {route}Record-Route: <sip:{EDGE};lr>\r\nFrom: <sip:alice@127.0.0.1:5071>;tag=f{n}\r\n\
         To: <{target}>\r\nCall-ID: c{n}\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:alice@127.0.0.1:5071>;+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session\"\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len(),
        mf = 70 - u32::from(n % 3),
    )
    .into_bytes()
}

/// A response to `request` (one the server sent): To tag, Contact,
/// Record-Route, an answer for a 2xx.
fn respond(request: &[u8], code: u16, tag: u8, answer: &str) -> Option<Vec<u8>> {
    let m = scan(request);
    let t = format!("t{tag}");
    let headers: [&[u8]; 2] = [
        b"Record-Route: <sip:127.0.0.1:5060;lr>\r\n",
        b"Content-Type: application/sdp\r\n",
    ];
    let ok = (200..300).contains(&code);
    let spec = ResponseSpec {
        to_tag: (code > 100).then_some(t.as_bytes()),
        contact: Some(b"<sip:x@127.0.0.1:5072>;isfocus"),
        headers: if ok { &headers } else { &headers[..1] },
        body: if ok { answer.as_bytes() } else { b"" },
        ..ResponseSpec::new(code, "R")
    };
    let mut out = vec![0u8; 8192];
    let n = write_response(request, &m, None, &spec, &mut out)?;
    out.truncate(n);
    Some(out)
}

/// A request inside the dialog a 2xx from us made (swap From and To: a
/// crude but matching in-dialog request from the peer).
fn in_dialog(resp: &[u8], method: &str, cseq: u8) -> Vec<u8> {
    let text = String::from_utf8_lossy(resp);
    let get = |name: &str| {
        text.lines()
            .find(|l| l.len() > name.len() && l[..name.len()].eq_ignore_ascii_case(name))
            .map(|l| l[name.len()..].trim().to_string())
            .unwrap_or_default()
    };
    let extra = if method == "SUBSCRIBE" {
        "Event: conference\r\nExpires: 60\r\n"
    } else {
        ""
    };
    format!(
        "{method} sip:{LOCAL} SIP/2.0\r\nVia: SIP/2.0/UDP {EDGE};branch=z9hG4bKd{cseq}{method}\r\n\
         Max-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} {method}\r\n{extra}Content-Length: 0\r\n\r\n",
        get("To:"),
        get("From:"),
        get("Call-ID:"),
        u32::from(cseq) + 10,
    )
    .into_bytes()
}

/// A full reg-info state for `aor` with contacts `devices` (bits of `mask`),
/// CPM-tagged by the bits of `tags`.
fn reginfo(aor: &str, mask: u8, tags: u8, expires: u8) -> String {
    let contacts: String = DEVICES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(i, uri)| {
            let tag = if tags & (1 << i) != 0 {
                "<unknown-param name=\"+g.3gpp.icsi-ref\">\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session\"</unknown-param>"
            } else {
                ""
            };
            let state = if mask & 0x80 != 0 && i == 0 { "terminated" } else { "active" };
            format!(
                "<contact id=\"c{i}\" state=\"{state}\" event=\"registered\" expires=\"{expires}\" q=\"0.{i}\"><uri>{uri}</uri>{tag}</contact>"
            )
        })
        .collect();
    format!(
        "<?xml version=\"1.0\"?><reginfo xmlns=\"urn:ietf:params:xml:ns:reginfo\" version=\"1\" state=\"full\">\
         <registration aor=\"{aor}\" id=\"r\" state=\"active\">{contacts}</registration></reginfo>"
    )
}

fn register(n: u8, aor: &str, expires: u32, ctype: &str, body: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "REGISTER sip:{LOCAL} SIP/2.0\r\nVia: SIP/2.0/UDP {EDGE};branch=z9hG4bKreg{n}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:registrar@example.net>;tag=r{n}\r\nTo: <{aor}>\r\n\
         Call-ID: reg{n}\r\nCSeq: {n} REGISTER\r\nContact: <sip:{EDGE}>\r\nExpires: {expires}\r\n\
         Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    v
}

struct Sim {
    s: Server,
    now: Instant,
    sent: Vec<Vec<u8>>,
    edge: SocketAddr,
}

impl Sim {
    fn feed(&mut self, from: SocketAddr, b: &[u8]) {
        self.s.handle_datagram(self.now, from, b);
        self.drain();
    }
    fn drain(&mut self) {
        let mut buf = Vec::new();
        while self.s.poll_transmit(&mut buf).is_some() {
            if self.sent.len() >= 16 {
                self.sent.remove(0);
            }
            self.sent.push(buf.clone());
        }
        while self.s.poll_note().is_some() {}
    }
    fn pick_sent(&self, i: u8) -> Option<Vec<u8>> {
        (!self.sent.is_empty()).then(|| self.sent[usize::from(i) % self.sent.len()].clone())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let terminating = match input.byte().unwrap_or(0) % 2 {
        0 => Terminating::RequestUri,
        _ => Terminating::Registered,
    };
    let mut sim = Sim {
        s: server(terminating),
        now: Instant::now(),
        sent: Vec::new(),
        edge: EDGE.parse().unwrap(),
    };
    let stranger: SocketAddr = "192.0.2.9:5060".parse().unwrap();
    let mut steps = 0;
    while let Some(op) = input.byte() {
        steps += 1;
        if steps > 64 {
            break;
        }
        let arg = input.byte().unwrap_or(0);
        match op % 9 {
            0 => {
                let target = input.pick(&TARGETS).unwrap_or(TARGETS[0]);
                let leg = input.pick(&LEGS).unwrap_or("orig");
                let sdp = if arg % 5 == 0 {
                    "v=0\r\nm=bogus\r\n"
                } else {
                    SDP
                };
                sim.feed(sim.edge, &invite(arg % 8, target, leg, sdp));
            }
            1 => {
                let code = input.pick(&CODES).unwrap_or(200);
                let Some(req) = sim.pick_sent(arg) else {
                    continue;
                };
                if scan(&req).is_request() {
                    let answer = if arg % 7 == 0 { "v=0\r\n" } else { SDP };
                    if let Some(r) = respond(&req, code, arg % 3, answer) {
                        sim.feed(sim.edge, &r);
                    }
                }
            }
            2 => {
                if let Some(b) = sim.pick_sent(arg) {
                    sim.feed(sim.edge, &b);
                }
            }
            3 | 4 => {
                let method = ["BYE", "ACK", "SUBSCRIBE", "MESSAGE", "CANCEL", "INVITE"]
                    [usize::from(arg) % 6];
                let Some(b) = sim.pick_sent(input.byte().unwrap_or(0)) else {
                    continue;
                };
                if !scan(&b).is_request() {
                    sim.feed(sim.edge, &in_dialog(&b, method, arg));
                }
            }
            5 => {
                let n = usize::from(input.byte().unwrap_or(0));
                let raw = input.bytes(n).to_vec();
                let from = if arg % 2 == 0 { sim.edge } else { stranger };
                sim.feed(from, &raw);
            }
            6 => {
                let aor = input.pick(&AORS).unwrap_or(AORS[0]);
                let (mask, tags) = (input.byte().unwrap_or(3), input.byte().unwrap_or(3));
                let expires = u32::from(input.byte().unwrap_or(60));
                let ctype = if arg % 7 == 0 {
                    "text/plain"
                } else {
                    "application/reginfo+xml"
                };
                let body = match arg % 5 {
                    0 => {
                        let n = usize::from(input.byte().unwrap_or(0));
                        input.bytes(n).to_vec()
                    }
                    _ => reginfo(aor, mask, tags, expires as u8).into_bytes(),
                };
                let header_expires = if arg % 3 == 0 { 0 } else { expires };
                sim.feed(sim.edge, &register(arg, aor, header_expires, ctype, &body));
            }
            _ => {
                sim.now += Duration::from_millis(u64::from(arg) * 137);
                sim.s.handle_timeout(sim.now);
                sim.drain();
                if let Some(next) = sim.s.poll_timeout() {
                    assert!(next > sim.now, "a deadline left in the past");
                }
            }
        }
        sim.s.assert_invariants();
    }
});
