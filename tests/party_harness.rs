//! The scripted SIP party of `common::party` against itself, no proxy in
//! between: A's `via_proxy` is B's own address. These pin the harness's
//! behaviour before it judges the edge and the Conversation Server.
//!
//! Every wait is bounded by `WAIT`; nothing asserts how fast something
//! happens, only what arrived and in which order.

mod common;
use common::party::*;
use common::{recv, sock};
use std::net::UdpSocket;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(3);

fn accept(p: &Party, ring: bool) -> Answer {
    Answer::Accept {
        ring,
        delay: Duration::from_millis(20),
        sdp: msrp_sdp(p.name(), p.addr()),
    }
}

/// A calls B directly.
fn call(a: &Party, b: &Party) -> CallHandle {
    a.invite(&b.aor(), b.addr(), &msrp_sdp("alice", a.addr()), "")
}

/// The first received message whose summary is `what`, parsed.
fn first(p: &Party, what: &str) -> Msg {
    let r = p.log().into_iter().find(|r| r.summary() == what);
    Msg::parse(
        &r.unwrap_or_else(|| panic!("{} got no {what}", p.name()))
            .raw,
    )
    .unwrap()
}

#[test]
fn accepted_call_then_bye() {
    let (a, b) = (Party::bind("alice"), Party::bind("bob"));
    b.set_answer(accept(&b, true));
    let c = call(&a, &b);
    assert!(
        c.wait_confirmed(WAIT),
        "A never confirmed: {:?}",
        a.summary()
    );
    assert!(b.wait_got("ACK", WAIT), "B got {:?}", b.summary());
    assert_eq!(a.summary_dedup(), ["180", "200/INVITE"]);
    assert_eq!(c.final_code(), Some(200));

    assert_eq!(c.bye(), Some(200));
    assert_eq!(a.summary_dedup(), ["180", "200/INVITE", "200/BYE"]);
    assert!(b.wait_got("BYE", WAIT));
    assert_eq!(b.summary_dedup(), ["INVITE", "ACK", "BYE"]);
}

/// The messages of an accepted call carry what RFC 3261 and CPM ask.
#[test]
fn accepted_call_messages() {
    let (a, b) = (Party::bind("alice"), Party::bind("bob"));
    b.set_answer(accept(&b, false));
    let c = call(&a, &b);
    assert!(c.wait_confirmed(WAIT) && b.wait_got("ACK", WAIT));
    let invite = first(&b, "INVITE");
    assert_eq!(invite.request_uri(), Some(b.aor().as_str()));
    assert_eq!(invite.header("P-Preferred-Service"), Some(CPM_SESSION));
    assert!(invite.header("Contact").unwrap().contains("cpm.session\""));
    assert!(invite.header("Accept-Contact").unwrap().starts_with("*;"));
    assert!(invite.branch().starts_with("z9hG4bK"));
    assert_eq!(
        param(&invite.top_via().unwrap(), "rport"),
        Some(String::new())
    );
    let len: usize = invite.header("l").unwrap().parse().unwrap();
    assert_eq!(len, invite.body.len());
    assert!(invite.body.starts_with("v=0\r\n"));

    let ok = first(&a, "200/INVITE");
    assert_eq!(ok.header("Contact").map(uri_of), Some(b.aor()));
    assert_eq!(ok.call_id(), invite.call_id());
    assert_eq!(ok.tag_of_from(), invite.tag_of_from());
    assert!(ok.body.contains("m=message"));

    let ack = first(&b, "ACK");
    assert_eq!(
        ack.request_uri(),
        Some(b.aor().as_str()),
        "the 2xx's Contact"
    );
    assert_eq!(ack.tag_of_to(), ok.tag_of_to());
    assert_eq!(ack.cseq(), Some((1, "ACK".into())));
    assert_ne!(
        ack.branch(),
        invite.branch(),
        "a 2xx's ACK is its own transaction"
    );
}

#[test]
fn rejected_call() {
    let (a, b) = (Party::bind("alice"), Party::bind("bob"));
    b.set_answer(Answer::Reject {
        code: 486,
        delay: Duration::ZERO,
    });
    let c = call(&a, &b);
    assert_eq!(c.wait_final(WAIT), Some(486));
    assert!(b.wait_got("ACK", WAIT), "B got {:?}", b.summary());
    assert_eq!(a.summary_dedup(), ["486/INVITE"]);
    assert_eq!(b.summary_dedup(), ["INVITE", "ACK"]);
    assert!(!c.is_confirmed());
    // The non-2xx ACK is in the INVITE's transaction (§17.1.1.3).
    assert_eq!(first(&b, "ACK").branch(), first(&b, "INVITE").branch());
    assert_eq!(
        first(&b, "ACK").tag_of_to(),
        first(&a, "486/INVITE").tag_of_to()
    );
}

#[test]
fn silent_callee_cancelled() {
    let (a, b) = (Party::bind("alice"), Party::bind("bob"));
    b.set_answer(Answer::Silent);
    let c = call(&a, &b);
    assert!(b.wait_got("INVITE", WAIT));
    assert!(c.cancel());
    assert_eq!(c.wait_final(WAIT), Some(487));
    assert!(b.wait_got("ACK", WAIT), "B got {:?}", b.summary());
    assert_eq!(c.cancel_code(), Some(200));
    assert_eq!(a.summary_dedup(), ["200/CANCEL", "487/INVITE"]);
    assert_eq!(b.summary_dedup(), ["INVITE", "CANCEL", "ACK"]);
    let (invite, cancel) = (first(&b, "INVITE"), first(&b, "CANCEL"));
    assert_eq!(cancel.branch(), invite.branch());
    assert_eq!(cancel.request_uri(), invite.request_uri());
    assert_eq!(cancel.cseq(), Some((1, "CANCEL".into())));
    assert!(!c.cancel(), "no CANCEL after the final response");
}

#[test]
fn lost_first_2xx_is_retransmitted() {
    let (a, b) = (Party::bind("alice"), Party::bind("bob"));
    b.set_answer(Answer::Accept {
        ring: false,
        delay: Duration::ZERO,
        sdp: msrp_sdp("bob", b.addr()),
    });
    b.drop_first_n_sends(1);
    let c = call(&a, &b);
    assert!(
        c.wait_confirmed(WAIT),
        "A never confirmed: {:?}",
        a.summary()
    );
    let acked = |log: &[Received]| log.iter().any(|r| r.method_or_code == "ACK");
    assert!(b.wait_for(acked, WAIT), "B got {:?}", b.summary());
    let sent = b.sent();
    assert!(sent[0].dropped && sent[0].start_line == "SIP/2.0 200 OK");
    assert!(sent[1..]
        .iter()
        .any(|s| !s.dropped && s.start_line == "SIP/2.0 200 OK"));
    assert_eq!(a.summary_dedup(), ["200/INVITE"]);
}

#[test]
fn callee_hangs_up() {
    let (a, b) = (Party::bind("alice"), Party::bind("bob"));
    b.set_answer(accept(&b, false));
    let c = call(&a, &b);
    assert!(c.wait_confirmed(WAIT) && b.wait_got("ACK", WAIT));
    assert_eq!(b.incoming_calls(), [c.call_id()]);
    assert_eq!(b.bye(c.call_id()), Some(200));
    assert_eq!(a.summary_dedup(), ["200/INVITE", "BYE"]);
    assert_eq!(b.summary_dedup(), ["INVITE", "ACK", "200/BYE"]);
    let bye = first(&a, "BYE");
    assert_eq!(bye.request_uri(), Some(a.aor().as_str()), "A's Contact");
    assert_eq!(bye.tag_of_from(), first(&a, "200/INVITE").tag_of_to());
    assert_eq!(bye.tag_of_to(), first(&b, "INVITE").tag_of_from());
}

/// A raw request from `s` to `to`, Via pointing back at `s`.
fn raw(s: &UdpSocket, start: &str, branch: &str, headers: &str) -> String {
    let via = s.local_addr().unwrap();
    crlf(&format!(
        "{start} SIP/2.0\nVia: SIP/2.0/UDP {via};branch={branch}\nMax-Forwards: 70\n{headers}Content-Length: 0\n\n"
    ))
}

#[test]
fn unknown_dialog_gets_481_and_options_200() {
    let b = Party::bind("bob");
    let s = sock();
    let bye = raw(
        &s,
        &format!("BYE {}", b.aor()),
        "z9hG4bKx1",
        "f: <sip:x@h>;tag=1\nt: <sip:b@h>;tag=nope\ni: stray@h\nCSeq: 5 BYE\n",
    );
    s.send_to(bye.as_bytes(), b.addr()).unwrap();
    let (resp, _) = recv(&s);
    assert!(resp.starts_with("SIP/2.0 481 "), "{resp}");
    assert_eq!(header_values(&resp, "CSeq"), ["5 BYE"]);
    let options = raw(
        &s,
        &format!("OPTIONS {}", b.aor()),
        "z9hG4bKx2",
        "From: <sip:x@h>;tag=1\nTo: <sip:b@h>\nCall-ID: ka@h\nCSeq: 1 OPTIONS\n",
    );
    s.send_to(options.as_bytes(), b.addr()).unwrap();
    assert!(recv(&s).0.starts_with("SIP/2.0 200 "));
}

/// A retransmitted INVITE gets the last response again, and an unACKed
/// non-2xx final is retransmitted (Timer G).
#[test]
fn retransmitted_invite_and_timer_g() {
    let b = Party::bind("bob");
    b.set_answer(Answer::Reject {
        code: 603,
        delay: Duration::ZERO,
    });
    let s = sock();
    let invite = raw(
        &s,
        &format!("INVITE {}", b.aor()),
        "z9hG4bKr1",
        "From: <sip:x@h>;tag=1\nTo: <sip:b@h>\nCall-ID: re@h\nCSeq: 1 INVITE\n",
    );
    s.send_to(invite.as_bytes(), b.addr()).unwrap();
    let (first, _) = recv(&s);
    assert!(first.starts_with("SIP/2.0 603 "), "{first}");
    s.send_to(invite.as_bytes(), b.addr()).unwrap();
    assert_eq!(recv(&s).0, first);
    assert_eq!(recv(&s).0, first, "Timer G");
    assert_eq!(b.summary(), ["INVITE", "INVITE"]);
    assert_eq!(b.summary_dedup(), ["INVITE"]);
}

#[test]
fn malformed_input_is_recorded_and_ignored() {
    let b = Party::bind("bob");
    b.set_answer(Answer::Reject {
        code: 486,
        delay: Duration::ZERO,
    });
    let s = sock();
    let junk: [&[u8]; 4] = [
        b"hello\r\n\r\n",
        b"\xff\xfe\x00",
        b"SIP/2.0 abc\r\n\r\n",
        b"INVITE sip:x SIP/2.0\r\n\r\n",
    ];
    for j in junk {
        s.send_to(j, b.addr()).unwrap();
    }
    assert!(b.wait_for(|log| log.len() == 4, WAIT));
    assert_eq!(b.summary(), ["?", "?", "?", "INVITE"]);
    // Still alive and answering.
    let a = Party::bind("alice");
    assert_eq!(call(&a, &b).wait_final(WAIT), Some(486));
}

#[test]
fn parsing_helpers() {
    let m = Msg::parse(&crlf(
        "SIP/2.0 200 OK\nv: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKa;rport=6000;received=10.0.0.9,\n SIP/2.0/UDP 10.0.0.2\n\
         f: \"A, x\" <sip:a@h;lr>;tag=fa\nt: sip:b@h;tag=tb\ni: id1\nCSeq: 7 INVITE\n\
         Record-Route: <sip:p1;lr>, <sip:p2:5070;lr>\nl: 2\n\nxyz",
    ))
    .unwrap();
    assert_eq!(m.code(), Some(200));
    assert_eq!(m.values("via").len(), 2, "folded and comma-separated");
    assert_eq!(m.branch(), "z9hG4bKa");
    assert_eq!(m.tag_of_from().as_deref(), Some("fa"));
    assert_eq!(m.tag_of_to().as_deref(), Some("tb"));
    assert_eq!(m.call_id(), "id1");
    assert_eq!(m.cseq(), Some((7, "INVITE".into())));
    assert_eq!(
        m.values("record-route"),
        ["<sip:p1;lr>", "<sip:p2:5070;lr>"]
    );
    assert_eq!(m.body, "xy", "Content-Length bounds the body");
    assert_eq!(uri_of(m.header("from").unwrap()), "sip:a@h;lr");
    let src = "10.0.0.5:7000".parse().unwrap();
    let via = m.top_via().unwrap();
    assert_eq!(
        reply_dest(&via, src),
        Some("10.0.0.9:6000".parse().unwrap())
    );
    let bare = "SIP/2.0/UDP 10.0.0.1:5070;rport;branch=z9hG4bKb";
    assert_eq!(reply_dest(bare, src), Some(src));
    let plain = "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKb";
    assert_eq!(
        reply_dest(plain, src),
        Some("10.0.0.1:5060".parse().unwrap())
    );
    assert_eq!(
        host_port("sip:+1;phone-context=x@[::1]:7;lr"),
        Some(("::1".into(), 7))
    );
    assert_eq!(host_port("sips:h"), Some(("h".into(), 5061)));
    assert!(Msg::parse("GARBAGE").is_none());
}
