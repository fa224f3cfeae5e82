//! Scanner and routing core on realistic CPM requests and responses, with no
//! sockets: bytes + tables in, decision and output bytes out.

mod common;
use common::*;
use cpm_edge::pipeline::{process, Outcome};
use cpm_edge::route::{DropReason, ForwardKind, Tables};
use cpm_edge::sip::branch::BRANCH_PREFIX;
use cpm_edge::sip::feature_tag::CpmServices;
use cpm_edge::sip::scan::{scan, Defect, Method, StartLine};
use std::net::SocketAddr;

const CLIENT: &str = "192.0.2.10:5062";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn run(msg: &[u8], src: &str, t: &Tables) -> (Outcome, String) {
    let mut out = vec![0u8; 16384];
    let (o, _) = process(msg, false, sa(src), t, &mut out);
    let len = o.send().map_or(0, |(l, _)| l);
    (o, String::from_utf8_lossy(&out[..len]).into_owned())
}

fn shard_port(o: &Outcome) -> u16 {
    match o {
        Outcome::Forwarded { dst, .. } => dst.port(),
        other => panic!("not forwarded: {other:?}"),
    }
}

fn kind(o: &Outcome) -> ForwardKind {
    match o {
        Outcome::Forwarded { kind, .. } => *kind,
        other => panic!("not forwarded: {other:?}"),
    }
}

fn reply_line(o: &Outcome, out: &str) -> String {
    assert!(matches!(o, Outcome::Replied { .. }), "not a reply: {o:?}");
    out.split("\r\n").next().unwrap().to_string()
}

fn branch_of(out: &str) -> String {
    let via = header(out, "Via")[0];
    via.split("branch=").nth(1).unwrap().to_string()
}

/// A CS acting as a proxy sends the request on: pops its own Route entry,
/// puts its Via on top.
fn cs_sends_on(forwarded: &str, cs: &str) -> Vec<u8> {
    let mut lines: Vec<String> = forwarded.split("\r\n").map(str::to_string).collect();
    let ri = lines
        .iter()
        .position(|l| l.starts_with("Route: "))
        .expect("route pushed");
    let route = lines[ri].clone();
    let rest = route.split_once(">,").expect("two values").1.to_string();
    lines[ri] = format!("Route: {rest}");
    lines.insert(
        1,
        format!("Via: SIP/2.0/UDP {cs};branch=z9hG4bKcs{}", cs.len()),
    );
    lines.join("\r\n").into_bytes()
}

#[test]
fn scanner_reads_a_cpm_invite_with_sdp() {
    let msg = invite_to_group(
        "grp2",
        "alice",
        "P-Asserted-Identity: \"Alice\" <sip:alice@example.net>, <tel:+15551234>\r\n",
    );
    let m = scan(&msg);
    assert_eq!(m.defect, None);
    assert!(matches!(
        m.start,
        StartLine::Request {
            method: Method::Invite,
            ..
        }
    ));
    assert_eq!(m.call_id.get(&msg), b"alice-call-1@192.0.2.10");
    assert_eq!(m.cseq_num, 1);
    assert_eq!(m.from_tag.unwrap().get(&msg), b"a73kszlfl");
    assert!(m.to_tag.is_none());
    assert_eq!(m.pai_uri.unwrap().get(&msg), b"sip:alice@example.net");
    assert_eq!(m.cpm.0, CpmServices::SESSION);
    assert_eq!(m.max_forwards.unwrap().1, 70);
    assert_eq!(m.body.get(&msg), SDP.replace('\n', "\r\n").as_bytes());
    assert_eq!(m.content_length, Some(m.body.len() as u32));
    let via = m.top_via.unwrap();
    assert_eq!(via.host.get(&msg), b"192.0.2.10");
    assert_eq!(via.rport, Some(None));
}

#[test]
fn scanner_compact_forms_and_cpim_message() {
    let msg = message_cpim("carol@example.net", "bob");
    let m = scan(&msg);
    assert_eq!(m.defect, None);
    assert_eq!(m.method(), Some(Method::Message));
    assert_eq!(m.call_id.get(&msg), b"msg-1@192.0.2.20");
    assert_eq!(m.from_uri.get(&msg), b"sip:bob@example.net");
    assert_eq!(m.to_uri.get(&msg), b"sip:carol@example.net");
    assert_eq!(m.cpm.0, CpmServices::MSG);
    assert_eq!(m.content_type.unwrap().get(&msg), b"message/cpim");
    assert!(m.body.get(&msg).ends_with(b"Hello CPM\r\n"));
}

#[test]
fn scanner_folded_headers() {
    let msg = wire(
        "OPTIONS sip:bob@example.net SIP/2.0
Via: SIP/2.0/UDP 192.0.2.10:5062
 ;branch=z9hG4bKfold1;rport
Accept-Contact: *;
\t+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session\"
From: <sip:alice@example.net>;tag=1
To: <sip:bob@example.net>
Call-ID: fold@x
CSeq: 7 OPTIONS
Content-Length: 0

",
    );
    let m = scan(&msg);
    assert_eq!(m.defect, None);
    assert_eq!(
        m.top_via.unwrap().branch.unwrap().get(&msg),
        b"z9hG4bKfold1"
    );
    assert_eq!(m.cpm.0, CpmServices::SESSION);
    let (o, out) = run(&msg, CLIENT, &tables());
    assert_eq!(kind(&o), ForwardKind::OriginatingPf);
    assert!(out.contains("Via: SIP/2.0/UDP 192.0.2.10:5062\r\n ;branch=z9hG4bKfold1;rport=5062;received=192.0.2.10\r\n"), "{out}");
}

#[test]
fn leg1_client_invite_goes_to_inviting_users_pf_with_exact_edits() {
    let t = tables();
    let msg = invite_to_group("grp2", "alice", "");
    let (o, out) = run(&msg, CLIENT, &t);
    assert_eq!(kind(&o), ForwardKind::OriginatingPf);
    let port = shard_port(&o);
    assert!((7001..=7004).contains(&port));
    let lines: Vec<&str> = out.split("\r\n").collect();
    assert_eq!(lines[0], "INVITE sip:grp2@groups.example.net SIP/2.0");
    assert!(lines[1].starts_with("Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKcpe"));
    assert_eq!(
        lines[1].len(),
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=".len() + BRANCH_PREFIX.len() + 24
    );
    assert_eq!(
        lines[2],
        format!("Route: <sip:127.0.0.1:{port};lr>,<sip:127.0.0.1:5060;lr;cpm-leg=orig>")
    );
    assert_eq!(lines[3], "Record-Route: <sip:127.0.0.1:5060;lr>");
    assert_eq!(
        lines[4],
        "Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-alice-1;rport=5062;received=192.0.2.10"
    );
    assert_eq!(lines[5], "Max-Forwards: 69");
    // Everything else byte-for-byte: undo the edits and compare.
    let undone = out
        .replace(
            &format!("{}\r\n{}\r\n{}\r\n", lines[1], lines[2], lines[3]),
            "",
        )
        .replace(";rport=5062;received=192.0.2.10", ";rport")
        .replace("Max-Forwards: 69", "Max-Forwards: 70");
    assert_eq!(undone.as_bytes(), &msg[..]);
    // Same user, any group → same PF; deterministic output.
    let (o2, out2) = run(&msg, CLIENT, &t);
    assert_eq!(out, out2, "a retransmission is forwarded identically");
    assert_eq!(shard_port(&o2), port);
}

#[test]
fn leg2_from_pf_with_orig_marker_goes_to_hosting_cs_every_time() {
    let t = tables();
    for user in ["alice", "bob", "carol", "dave", "erin"] {
        let msg = invite_to_group("grp3", user, "");
        let (o, out) = run(&msg, CLIENT, &t);
        let pf = shard_port(&o);
        let back = cs_sends_on(&out, &format!("127.0.0.1:{pf}"));
        let (o2, out2) = run(&back, &format!("127.0.0.1:{pf}"), &t);
        assert_eq!(kind(&o2), ForwardKind::Controlling, "{out2}");
        assert_eq!(shard_port(&o2), 7003, "grp3 is hosted on cs3");
        let routes = header(&out2, "Route");
        assert_eq!(
            routes,
            vec!["Route: <sip:127.0.0.1:7003;lr>,<sip:127.0.0.1:5060;lr;cpm-leg=ctrl>"],
            "our orig entry popped"
        );
        assert_eq!(header(&out2, "Max-Forwards"), vec!["Max-Forwards: 68"]);
        assert_eq!(header(&out2, "Via").len(), 4, "ours + CS + ours + client");
    }
}

#[test]
fn leg3_from_hosting_cs_to_member_goes_to_invited_users_pf_then_client() {
    let t = tables();
    // The Controlling Function invites member bob (a new request from the CS).
    let invite = wire(&format!(
        "INVITE sip:bob@192.0.2.30:5080 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:7003;branch=z9hG4bKctrl1
Max-Forwards: 70
From: <sip:grp3@groups.example.net>;tag=g3
To: <sip:bob@192.0.2.30:5080>
Call-ID: ctrl-bob-1
CSeq: 1 INVITE
Contact: <sip:grp3@127.0.0.1:7003>;isfocus;+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session\"
Content-Type: application/sdp
Content-Length: {{len}}

{SDP}"
    ));
    let (o, out) = run(&invite, "127.0.0.1:7003", &t);
    assert_eq!(kind(&o), ForwardKind::TerminatingPf);
    let pf = shard_port(&o);
    assert_eq!(
        header(&out, "Route"),
        vec![format!(
            "Route: <sip:127.0.0.1:{pf};lr>,<sip:127.0.0.1:5060;lr;cpm-leg=term>"
        )]
    );
    // bob's PF served it and sends it on: toward the invited client.
    let back = cs_sends_on(&out, &format!("127.0.0.1:{pf}"));
    let (o2, out2) = run(&back, &format!("127.0.0.1:{pf}"), &t);
    assert_eq!(kind(&o2), ForwardKind::ToInvitedClient);
    assert_eq!(o2.send().unwrap().1, sa("192.0.2.30:5080"));
    assert!(
        header(&out2, "Route").is_empty(),
        "our term entry popped, nothing pushed"
    );
    // A client forging the term marker is refused: no client request ever
    // carries a leg marker (our Record-Route entries have none).
    let forged = invite_to_group(
        "grp1",
        "mallory",
        "Route: <sip:127.0.0.1:5060;lr;cpm-leg=term>\r\n",
    );
    let (o3, out3) = run(&forged, CLIENT, &t);
    assert_eq!(
        reply_line(&o3, &out3),
        "SIP/2.0 403 Forbidden - Leg Marker From A Client"
    );
}

#[test]
fn originating_pf_off_sends_groups_straight_to_hosting_cs() {
    let t = tables_with("[routing]\noriginating_pf = false\n");
    let (o, out) = run(&invite_to_group("grp4", "alice", ""), CLIENT, &t);
    assert_eq!(kind(&o), ForwardKind::Controlling);
    assert_eq!(shard_port(&o), 7004);
    assert!(out.contains("cpm-leg=ctrl"));
    // A user-addressed request still goes to the inviting user's PF.
    let (o, _) = run(
        &message_cpim("carol@example.net", "bob"),
        "192.0.2.20:5070",
        &t,
    );
    assert_eq!(kind(&o), ForwardKind::OriginatingPf);
}

#[test]
fn non_cpm_requests_get_403_or_the_non_cpm_route() {
    let plain = wire(
        "INVITE sip:bob@example.net SIP/2.0
Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKplain
Max-Forwards: 70
From: <sip:alice@example.net>;tag=1
To: <sip:bob@example.net>
Call-ID: plain-1
CSeq: 1 INVITE
Contact: <sip:alice@192.0.2.10:5062>
Content-Length: 0

",
    );
    let (o, out) = run(&plain, CLIENT, &tables());
    assert_eq!(
        reply_line(&o, &out),
        "SIP/2.0 403 Forbidden - No CPM Feature Tag"
    );
    assert_eq!(o.send().unwrap().1, sa("192.0.2.10:5062"));
    assert!(
        header(&out, "To")[0].contains(";tag="),
        "final answer carries a To-tag"
    );
    assert_eq!(
        header(&out, "Via"),
        vec!["Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKplain;rport=5062;received=192.0.2.10"],
        "rport and received are forced to the real source"
    );
    assert_eq!(header(&out, "Call-ID"), vec!["Call-ID: plain-1"]);
    assert_eq!(header(&out, "CSeq"), vec!["CSeq: 1 INVITE"]);

    let t = tables_with("[routing]\nnon_cpm_route = \"127.0.0.1:5080\"\n");
    let (o, out) = run(&plain, CLIENT, &t);
    assert_eq!(kind(&o), ForwardKind::NonCpm);
    assert_eq!(o.send().unwrap().1, sa("127.0.0.1:5080"));
    // The non-CPM peer sends it straight back unchanged: a loop.
    let (o2, out2) = run(out.as_bytes(), "127.0.0.1:5080", &t);
    assert_eq!(reply_line(&o2, &out2), "SIP/2.0 482 Loop Detected");
}

#[test]
fn cpm_message_with_compact_forms_routes_on_from_user() {
    let t = tables();
    let a = run(
        &message_cpim("carol@example.net", "bob"),
        "192.0.2.20:5070",
        &t,
    )
    .0;
    let b = run(
        &message_cpim("dave@example.net", "bob"),
        "192.0.2.20:5070",
        &t,
    )
    .0;
    assert_eq!(kind(&a), ForwardKind::OriginatingPf);
    assert_eq!(shard_port(&a), shard_port(&b), "one user, one PF");
}

#[test]
fn in_dialog_bye_follows_record_route_to_request_uri() {
    let bye = wire(
        "BYE sip:grp2@127.0.0.1:7002 SIP/2.0
Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKbye1;rport
Route: <sip:127.0.0.1:5060;lr>
Max-Forwards: 70
From: <sip:alice@example.net>;tag=a73kszlfl
To: <sip:grp2@groups.example.net>;tag=cs2tag
Call-ID: alice-call-1@192.0.2.10
CSeq: 2 BYE
Content-Length: 0

",
    );
    let (o, out) = run(&bye, CLIENT, &tables());
    assert_eq!(kind(&o), ForwardKind::InDialog);
    assert_eq!(o.send().unwrap().1, sa("127.0.0.1:7002"));
    assert!(header(&out, "Route").is_empty());
    assert!(header(&out, "Record-Route").is_empty());
}

#[test]
fn loose_route_to_next_route_value_in_the_same_line() {
    let msg = wire(
        "SUBSCRIBE sip:bob@example.net SIP/2.0
Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKsub
Route: <sip:127.0.0.1:5060;lr>, <sip:192.0.2.99:5070;lr>
Max-Forwards: 70
From: <sip:alice@example.net>;tag=1
To: <sip:bob@example.net>
Call-ID: sub-1
CSeq: 1 SUBSCRIBE
Content-Length: 0

",
    );
    // From a client: refused, a client never chooses the next hop.
    let (o, out) = run(&msg, CLIENT, &tables());
    assert_eq!(reply_line(&o, &out), "SIP/2.0 403 Forbidden - Not Relaying");
    // From a shard: loose routing to the next value.
    let (o, out) = run(&msg, "127.0.0.1:7001", &tables());
    assert_eq!(kind(&o), ForwardKind::LooseRoute);
    assert_eq!(o.send().unwrap().1, sa("192.0.2.99:5070"));
    assert_eq!(
        header(&out, "Route"),
        vec!["Route: <sip:192.0.2.99:5070;lr>"]
    );
}

#[test]
fn cancel_and_non2xx_ack_follow_the_invite_with_the_same_branch() {
    let t = tables();
    let invite = invite_to_group("grp1", "alice", "");
    let (oi, outi) = run(&invite, CLIENT, &t);
    let text = String::from_utf8(invite.clone()).unwrap();
    let head: Vec<&str> = text.split("\r\n").take_while(|l| !l.is_empty()).collect();
    let keep = |l: &&&str| {
        ["Via", "Max-Forwards", "From", "To", "Call-ID"]
            .iter()
            .any(|h| l.starts_with(&format!("{h}:")))
    };
    let cancel = format!(
        "CANCEL sip:grp1@groups.example.net SIP/2.0\r\n{}\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n",
        head.iter().filter(keep).cloned().collect::<Vec<_>>().join("\r\n")
    );
    let (oc, outc) = run(cancel.as_bytes(), CLIENT, &t);
    assert_eq!(shard_port(&oc), shard_port(&oi));
    assert_eq!(
        branch_of(&outc),
        branch_of(&outi),
        "CANCEL must match the INVITE's branch"
    );
    let ack = cancel
        .replace("CANCEL sip", "ACK sip")
        .replace("CSeq: 1 CANCEL", "CSeq: 1 ACK")
        .replace(
            "To: <sip:grp1@groups.example.net>",
            "To: <sip:grp1@groups.example.net>;tag=486tag",
        );
    let (oa, outa) = run(ack.as_bytes(), CLIENT, &t);
    assert_eq!(shard_port(&oa), shard_port(&oi));
    assert_eq!(
        branch_of(&outa),
        branch_of(&outi),
        "ACK of a non-2xx must match the INVITE's branch"
    );
}

#[test]
fn max_forwards_edits_and_483() {
    let t = tables();
    let zero = String::from_utf8(invite_to_group("grp1", "alice", ""))
        .unwrap()
        .replace("Max-Forwards: 70", "Max-Forwards: 0");
    let (o, out) = run(zero.as_bytes(), CLIENT, &t);
    assert_eq!(reply_line(&o, &out), "SIP/2.0 483 Too Many Hops");
    let none = String::from_utf8(invite_to_group("grp1", "alice", ""))
        .unwrap()
        .replace("Max-Forwards: 70\r\n", "");
    let (o, out) = run(none.as_bytes(), CLIENT, &t);
    assert!(matches!(o, Outcome::Forwarded { .. }));
    assert_eq!(header(&out, "Max-Forwards"), vec!["Max-Forwards: 70"]);
    let ack0 = zero
        .replace("INVITE sip", "ACK sip")
        .replace("1 INVITE", "1 ACK");
    assert_eq!(
        run(ack0.as_bytes(), CLIENT, &t).0,
        Outcome::Dropped(DropReason::AckRefused),
        "ACK is never answered"
    );
}

#[test]
fn options_to_the_edge_is_answered_200() {
    let msg = wire(
        "OPTIONS sip:127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:7001;branch=z9hG4bKping
Max-Forwards: 0
From: <sip:cs1@127.0.0.1:7001>;tag=p
To: <sip:127.0.0.1:5060>
Call-ID: ping-1
CSeq: 1 OPTIONS
Content-Length: 0

",
    );
    let (o, out) = run(&msg, "127.0.0.1:7001", &tables());
    assert_eq!(reply_line(&o, &out), "SIP/2.0 200 OK");
    assert_eq!(o.send().unwrap().1, sa("127.0.0.1:7001"));
}

fn bad(msg: &str) -> (Outcome, String) {
    run(&wire(msg), CLIENT, &tables())
}

const GOOD_HEAD: &str = "Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKbad;rport
From: <sip:alice@example.net>;tag=1
To: <sip:bob@example.net>
Call-ID: bad-1
";

#[test]
fn each_defect_gets_400_naming_it() {
    let cases: &[(&str, &str)] = &[
        (&format!("INVITE sip:bob@example.net SIP/2.0\n{GOOD_HEAD}Content-Length: 0\n\n").replace("Call-ID: bad-1\n", ""), "Missing Call-ID"),
        (&format!("INVITE sip:bob@example.net SIP/2.0\n{GOOD_HEAD}CSeq: one INVITE\nContent-Length: 0\n\n"), "Malformed CSeq"),
        (&format!("INVITE sip:bob@example.net SIP/2.0\n{GOOD_HEAD}CSeq: 1 BYE\nContent-Length: 0\n\n"), "CSeq Method Does Not Match"),
        (&format!("INVITE sip:bob@example.net SIP/2.0\n{GOOD_HEAD}CSeq: 1 INVITE\nContent-Length: abc\n\n"), "Malformed Content-Length"),
        (&format!("INVITE sip:bob@example.net SIP/2.0\n{GOOD_HEAD}CSeq: 1 INVITE\nContent-Length: -5\n\n"), "Malformed Content-Length"),
        (&format!("INVITE sip:bob@example.net SIP/2.0\n{GOOD_HEAD}CSeq: 1 INVITE\nContent-Length: 500\n\nshort"), "Content-Length Exceeds Body"),
        (&format!("INVITE sip:bob@example.net SIP/2.0\n{GOOD_HEAD}CSeq: 1 INVITE\nTo: <sip:x@y>\nContent-Length: 0\n\n"), "Duplicate To"),
        (&format!("INVITE sip:bob@example.net SIP/2.0\n{GOOD_HEAD}CSeq: 1 INVITE\nthis line has no colon\nContent-Length: 0\n\n"), "Malformed Header Line"),
        (&format!("INVITE sip:bob@example.net\n{GOOD_HEAD}CSeq: 1 INVITE\nContent-Length: 0\n\n"), "Malformed Start Line"),
        (&format!("INVITE sip:bob@example.net SIP/2.0\n{GOOD_HEAD}CSeq: 1 INVITE\nMax-Forwards: many\nContent-Length: 0\n\n"), "Malformed Max-Forwards"),
        (&format!("INVITE sip:bob@example.net SIP/2.0\n{GOOD_HEAD}CSeq: 1 INVITE\nSubject: a\0b\nContent-Length: 0\n\n"), "NUL Byte In Headers"),
        (&format!("INVITE sip:bob@example.net SIP/2.0\n{GOOD_HEAD}Content-Length: 0\n\n"), "Missing CSeq"),
        (&format!("INVITE bob-at-example SIP/2.0\n{GOOD_HEAD}CSeq: 1 INVITE\nContent-Length: 0\n\n"), "Malformed Request-URI"),
    ];
    for (msg, reason) in cases {
        let (o, out) = bad(msg);
        assert_eq!(
            reply_line(&o, &out),
            format!("SIP/2.0 400 Bad Request - {reason}"),
            "for:\n{msg}"
        );
        assert_eq!(
            header(&out, "Via")[0],
            "Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKbad;rport=5062;received=192.0.2.10"
        );
    }
    let (o, out) = bad(&format!(
        "INVITE sip:bob@example.net SIP/3.0\n{GOOD_HEAD}CSeq: 1 INVITE\nContent-Length: 0\n\n"
    ));
    assert_eq!(reply_line(&o, &out), "SIP/2.0 505 Version Not Supported");
    let (o, out) = bad(&format!(
        "INVITE im:bob@example.net SIP/2.0\n{GOOD_HEAD}CSeq: 1 INVITE\nContent-Length: 0\n\n"
    ));
    assert_eq!(reply_line(&o, &out), "SIP/2.0 416 Unsupported URI Scheme");
    // No blank line after the headers.
    let raw = format!(
        "INVITE sip:bob@example.net SIP/2.0\r\n{}CSeq: 1 INVITE\r\n",
        GOOD_HEAD.replace('\n', "\r\n")
    );
    let (o, out) = run(raw.as_bytes(), CLIENT, &tables());
    assert_eq!(
        reply_line(&o, &out),
        "SIP/2.0 400 Bad Request - Missing Blank Line After Headers"
    );
    assert_eq!(scan(raw.as_bytes()).defect, Some(Defect::MissingBlankLine));
}

#[test]
fn what_must_not_be_answered_is_dropped_with_a_reason() {
    let t = tables();
    let drop = |msg: &[u8], src: &str| run(msg, src, &t).0;
    assert_eq!(
        drop(b"\r\n\r\n", CLIENT),
        Outcome::Dropped(DropReason::Keepalive)
    );
    assert_eq!(
        drop(&[0x16, 0x03, 0x01, 0xff, 0x00], CLIENT),
        Outcome::Dropped(DropReason::Garbage)
    );
    assert_eq!(
        drop(b"\x80\x81garbage\r\nmore\r\n\r\n", CLIENT),
        Outcome::Dropped(DropReason::Garbage)
    );
    let no_via = wire("INVITE sip:bob@example.net SIP/2.0\nFrom: <sip:a@b>;tag=1\nTo: <sip:b@c>\nCall-ID: x\nCSeq: 1 INVITE\nContent-Length: 0\n\n");
    assert_eq!(
        drop(&no_via, CLIENT),
        Outcome::Dropped(DropReason::RequestUnanswerable)
    );
    let not_ours = wire("SIP/2.0 200 OK\nVia: SIP/2.0/UDP 192.0.2.77:5060;branch=z9hG4bKcpe0000000000000000deadbeef\nVia: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKx\nFrom: <sip:a@b>;tag=1\nTo: <sip:b@c>;tag=2\nCall-ID: x\nCSeq: 1 INVITE\nContent-Length: 0\n\n");
    assert_eq!(
        drop(&not_ours, "127.0.0.1:7001"),
        Outcome::Dropped(DropReason::ResponseNotOurs)
    );
    let no_via_resp = wire("SIP/2.0 200 OK\nFrom: <sip:a@b>;tag=1\nTo: <sip:b@c>;tag=2\nCall-ID: x\nCSeq: 1 INVITE\nContent-Length: 0\n\n");
    assert_eq!(
        drop(&no_via_resp, "127.0.0.1:7001"),
        Outcome::Dropped(DropReason::MalformedResponse)
    );
    // Our Via on top, but no Call-ID: nobody downstream could match it.
    let (_, fwd) = run(&invite_to_group("grp1", "alice", ""), CLIENT, &t);
    let no_callid = format!(
        "SIP/2.0 200 OK\r\n{}\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>;tag=2\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        header(&fwd, "Via").join("\r\n")
    );
    assert_eq!(
        drop(no_callid.as_bytes(), "127.0.0.1:7001"),
        Outcome::Dropped(DropReason::MalformedResponse)
    );
    let bad_status = wire(
        "SIP/2.0 2x0 OK\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\nContent-Length: 0\n\n",
    );
    assert_eq!(
        drop(&bad_status, "127.0.0.1:7001"),
        Outcome::Dropped(DropReason::MalformedResponse)
    );
    let mut out = vec![0u8; 4096];
    let (o, _) = process(
        &invite_to_group("grp1", "alice", ""),
        true,
        sa(CLIENT),
        &t,
        &mut out,
    );
    assert_eq!(o, Outcome::Dropped(DropReason::Oversized));
}

#[test]
fn responses_pop_our_via_and_go_to_the_next_hop() {
    let t = tables();
    let (_, fwd) = run(&invite_to_group("grp1", "alice", ""), CLIENT, &t);
    let vias: Vec<&str> = header(&fwd, "Via");
    for (shape, expect_via) in [
        (format!("{}\r\n{}", vias[0], vias[1]), vias[1].to_string()),
        (
            format!("{}, {}", vias[0], &vias[1][5..]),
            vias[1].to_string(),
        ),
    ] {
        let resp = format!(
            "SIP/2.0 180 Ringing\r\n{shape}\r\nFrom: <sip:alice@example.net>;tag=a73kszlfl\r\nTo: <sip:grp1@groups.example.net>;tag=cs\r\nCall-ID: alice-call-1@192.0.2.10\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        );
        let (o, out) = run(resp.as_bytes(), "127.0.0.1:7001", &t);
        assert_eq!(
            o.send().unwrap().1,
            sa(CLIENT),
            "rport + received of the client's Via"
        );
        assert!(matches!(o, Outcome::Relayed { code: 180, .. }));
        assert_eq!(header(&out, "Via"), vec![expect_via.as_str()]);
        let expected = resp
            .replace(&format!("{}\r\n", vias[0]), "")
            .replace(&format!("{}, ", vias[0]), "Via: ");
        assert_eq!(out, expected, "nothing else changes");
    }
}

#[test]
fn output_that_would_exceed_the_datagram_limit_is_answered_513() {
    let t = tables();
    let big = invite_to_group("grp1", "alice", &format!("X-Pad: {}\r\n", "p".repeat(1400)));
    let mut out = vec![0u8; big.len() + 40];
    let (o, _) = process(&big, false, sa(CLIENT), &t, &mut out);
    let Outcome::Replied { len, code: 513, .. } = o else {
        panic!("{o:?}")
    };
    assert!(String::from_utf8_lossy(&out[..len]).starts_with("SIP/2.0 513 Message Too Large\r\n"));
}

/// A MESSAGE as the invited user's PF sends it for interworking (seed
/// 5.3.1.1.1), from shard cs1 (127.0.0.1:7001), with the edge's Route
/// value `route`.
fn iwf_request(route: &str) -> Vec<u8> {
    wire(&format!(
        "MESSAGE sip:+447700900123@example.net;user=phone SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:7001;branch=z9hG4bKiwf1
Max-Forwards: 68
Route: {route}
From: <sip:alice@example.net>;tag=1
To: <sip:bob@example.net>
Call-ID: iwf-1
CSeq: 1 MESSAGE
P-Asserted-Identity: <sip:alice@example.net>
Content-Type: text/plain
Content-Length: 2

hi"
    ))
}

#[test]
fn a_cs_asking_for_an_iwf_reaches_one_of_its_service_and_a_client_cannot() {
    let t = tables_with(
        "[[iwf]]\nservice = \"sms\"\naddr = \"127.0.0.1:9501\"\n\
         [[iwf]]\nservice = \"SMS\"\naddr = \"127.0.0.1:9502\"\n\
         [[iwf]]\nservice = \"mms\"\naddr = \"127.0.0.1:9601\"\n",
    );
    let sms = iwf_request("<sip:127.0.0.1:5060;lr;cpm-iwf=sms>");
    let (o, out) = run(&sms, "127.0.0.1:7001", &t);
    assert_eq!(kind(&o), ForwardKind::Interworking);
    let dst = o.send().unwrap().1;
    // The embedded default's own `sms` IWF (127.0.0.1:5090) is one more.
    assert!(
        [
            sa("127.0.0.1:9501"),
            sa("127.0.0.1:9502"),
            sa("127.0.0.1:5090")
        ]
        .contains(&dst),
        "{dst}"
    );
    // The edge's own Route value is popped; the CS's assertion is kept.
    assert!(header(&out, "Route").is_empty(), "{out}");
    assert_eq!(
        header(&out, "P-Asserted-Identity"),
        vec!["P-Asserted-Identity: <sip:alice@example.net>"]
    );
    // The same user always reaches the same gateway.
    for _ in 0..3 {
        assert_eq!(run(&sms, "127.0.0.1:7001", &t).0.send().unwrap().1, dst);
    }
    let mms = iwf_request("<sip:127.0.0.1:5060;lr;cpm-iwf=mms>");
    assert_eq!(
        run(&mms, "127.0.0.1:7001", &t).0.send().unwrap().1,
        sa("127.0.0.1:9601")
    );
    // A service nobody offers: 503 with the reason.
    let fax = iwf_request("<sip:127.0.0.1:5060;lr;cpm-iwf=fax>");
    let (o, out) = run(&fax, "127.0.0.1:7001", &t);
    assert_eq!(
        reply_line(&o, &out),
        "SIP/2.0 503 Service Unavailable - No Interworking Function"
    );
    // A client cannot ask for one: the marker is the CS's to set.
    let forged = String::from_utf8(sms.clone())
        .unwrap()
        .replace("127.0.0.1:7001;branch", "192.0.2.10:5062;branch");
    let (o, out) = run(forged.as_bytes(), CLIENT, &t);
    assert_eq!(
        reply_line(&o, &out),
        "SIP/2.0 403 Forbidden - Leg Marker From A Client"
    );
    // An IWF is a trusted source: its assertion passes, as a shard's does.
    assert!(t.is_trusted_source(sa("127.0.0.1:9601")));
    assert!(!t.is_trusted_source(sa(CLIENT)));
}

#[test]
fn iwf_entries_are_checked() {
    let bad = |extra: &str| {
        let text = format!("{}\n{extra}", cpm_edge::config::DEFAULT_TOML);
        cpm_edge::config::Config::parse(&text)
            .expect("toml")
            .validate()
            .unwrap_err()
            .to_string()
    };
    // The embedded default has one `[[iwf]]`: the added one is iwf[1].
    assert!(
        bad("[[iwf]]\nservice = \"s m s\"\naddr = \"127.0.0.1:9501\"\n").contains("iwf[1].service")
    );
    assert!(bad("[[iwf]]\nservice = \"sms\"\naddr = \"0.0.0.0:9501\"\n").contains("iwf[1].addr"));
    // cs1's address.
    assert!(
        bad("[[iwf]]\nservice = \"sms\"\naddr = \"127.0.0.1:7001\"\n").contains("already a shard")
    );
}

#[test]
fn an_iwfs_request_goes_to_the_invited_users_pf_with_its_assertion() {
    let t = tables_with("[[iwf]]\nservice = \"sms\"\naddr = \"127.0.0.1:9501\"\n");
    let mo = wire(
        "MESSAGE sip:bob@example.net SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:9501;branch=z9hG4bKmo1
Max-Forwards: 70
From: <tel:+447700900999>;tag=mo
To: <sip:bob@example.net>
Call-ID: mo-1
CSeq: 1 MESSAGE
P-Asserted-Identity: <tel:+447700900999>
Accept-Contact: *;+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.msg\"
Content-Type: text/plain
Content-Length: 2

hi",
    );
    let (o, out) = run(&mo, "127.0.0.1:9501", &t);
    assert_eq!(kind(&o), ForwardKind::TerminatingPf, "{out}");
    assert!(header(&out, "Route")[0].contains("cpm-leg=term"), "{out}");
    assert_eq!(
        header(&out, "P-Asserted-Identity"),
        vec!["P-Asserted-Identity: <tel:+447700900999>"]
    );
    // The same from a client: to the sender's own PF, its assertion gone.
    let (o, out) = run(&mo, CLIENT, &t);
    assert_eq!(kind(&o), ForwardKind::OriginatingPf, "{out}");
    assert!(header(&out, "P-Asserted-Identity").is_empty(), "{out}");
}

#[test]
fn a_recipient_not_routable_in_sip_goes_to_the_senders_pf_or_is_416() {
    let t = tables();
    let wv = |tag: bool| {
        wire(&format!(
            "MESSAGE wv:bob@wv.example.net SIP/2.0
Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKwv{tag}
Max-Forwards: 70
From: <sip:alice@example.net>;tag=1
To: <wv:bob@wv.example.net>
Call-ID: wv-{tag}
CSeq: 1 MESSAGE
{}Content-Type: text/plain
Content-Length: 2

hi",
            if tag {
                "Accept-Contact: *;+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.msg\"\n"
            } else {
                ""
            }
        ))
    };
    // A CPM message: the sender's PF decides (seed 5.3.1.2.3).
    let (o, out) = run(&wv(true), CLIENT, &t);
    assert_eq!(kind(&o), ForwardKind::OriginatingPf, "{out}");
    assert!(out.starts_with("MESSAGE wv:bob@wv.example.net SIP/2.0\r\n"));
    // Not CPM, or from a shard asking for no IWF: the edge cannot route it.
    let (o, out) = run(&wv(false), CLIENT, &t);
    assert_eq!(reply_line(&o, &out), "SIP/2.0 416 Unsupported URI Scheme");
    let back = String::from_utf8(wv(true))
        .unwrap()
        .replace("192.0.2.10:5062;branch", "127.0.0.1:7001;branch")
        .replace(
            "Max-Forwards: 70\r\n",
            "Max-Forwards: 69\r\nRoute: <sip:127.0.0.1:5060;lr;cpm-leg=orig>\r\n",
        );
    let (o, out) = run(back.as_bytes(), "127.0.0.1:7001", &t);
    assert_eq!(reply_line(&o, &out), "SIP/2.0 416 Unsupported URI Scheme");
}

/// The default tables with the edge as registrar of example.net (an
/// empty location service).
fn tables_serving_example_net() -> Tables {
    let mut t = tables();
    t.registrar = Some(cpm_edge::route::tables::RegistrarRoute {
        domains: vec![b"example.net".to_vec()],
        require_registration: false,
        location: std::sync::Arc::new(cpm_edge::route::location::Location::new(16)),
    });
    t
}

/// Seed 5.2.3.2 across networks: with the edge knowing its own domains
/// (the registrar's), the inviting user's PF's request for a user of
/// another domain goes to the network serving that user, at the
/// Request-URI's host, rather than to a PF here; a host that is no
/// address is `404`, which the PF reads as "no SIP there" (5.3.1.2.2).
#[test]
fn a_pf_request_for_a_user_of_another_domain_goes_to_that_network() {
    let t = tables_serving_example_net();
    let pf_request = |ruri: &str| {
        wire(&format!(
            "INVITE {ruri} SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:7001;branch=z9hG4bKpf1
Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-alice-1;rport=5062;received=192.0.2.10
Route: <sip:127.0.0.1:5060;lr;cpm-leg=orig>
Max-Forwards: 69
From: <sip:alice@example.net>;tag=1
To: <{ruri}>
Call-ID: far-1
CSeq: 1 INVITE
Contact: <sip:alice@192.0.2.10:5062>
Accept-Contact: *;+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session\"
Content-Length: 0

"
        ))
    };
    let (o, out) = run(
        &pf_request("sip:bob@198.51.100.7:5070"),
        "127.0.0.1:7001",
        &t,
    );
    assert_eq!(kind(&o), ForwardKind::InvitedNetwork, "{out}");
    assert_eq!(o.send().unwrap().1, sa("198.51.100.7:5070"));
    assert!(
        header(&out, "Route").is_empty(),
        "our orig entry popped: {out}"
    );
    let (o, out) = run(&pf_request("sip:zoe@other.example"), "127.0.0.1:7001", &t);
    assert_eq!(
        reply_line(&o, &out),
        "SIP/2.0 404 Not Found - No Route To Request-URI Host"
    );
    // A user of a served domain still goes to their PF.
    let (o, _) = run(&pf_request("sip:bob@example.net"), "127.0.0.1:7001", &t);
    assert_eq!(kind(&o), ForwardKind::TerminatingPf);
    // Without a registrar every user is this system's.
    let (o, _) = run(
        &pf_request("sip:bob@198.51.100.7:5070"),
        "127.0.0.1:7001",
        &tables(),
    );
    assert_eq!(kind(&o), ForwardKind::TerminatingPf);
}

/// A REGISTER over a stream goes to the registrar as the same REGISTER
/// as a datagram does (it answers on the connection and binds the contact
/// to it: tests/stream_registration.rs).
#[test]
fn a_register_over_a_stream_goes_to_the_registrar_as_a_datagram_does() {
    let t = tables_serving_example_net();
    let register = wire(
        "REGISTER sip:example.net SIP/2.0
Via: SIP/2.0/TCP 192.0.2.10:5062;branch=z9hG4bK-reg-1;rport
Max-Forwards: 70
From: <sip:alice@example.net>;tag=r1
To: <sip:alice@example.net>
Call-ID: reg-1
CSeq: 1 REGISTER
Contact: <sip:alice@192.0.2.10:5062;transport=tcp>
Content-Length: 0

",
    );
    let (o, _) = process(&register, false, sa(CLIENT), &t, &mut vec![0u8; 4096]);
    assert_eq!(o, Outcome::ToRegistrar);
    let token = [b'0'; cpm_edge::sip::flow::TOKEN_LEN];
    let d = cpm_edge::pipeline::Datagram {
        buf: &register,
        truncated: false,
        src: sa(CLIENT),
        flow: Some(&token),
    };
    let mut out = vec![0u8; 4096];
    let mut m = cpm_edge::sip::scan::Message::default();
    let o = cpm_edge::pipeline::run(
        &d,
        &t,
        &mut cpm_edge::pipeline::Open::default(),
        &mut out,
        &mut m,
    );
    assert_eq!(o, Outcome::ToRegistrar);
}
