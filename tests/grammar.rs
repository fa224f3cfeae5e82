//! RFC 3261 grammar edge cases and what real SIP stacks send, through the
//! whole pipeline (`route::process`), each with its exact outcome: forwarded
//! intact apart from the intended edits, a stateless answer with a precise
//! reason phrase, or a counted drop.
//!
//! Cases marked "regression" exposed a bug that was fixed in `src/`.

mod common;
use common::*;
use cpm_edge::pipeline::{process, write, Outcome, Scanned};
use cpm_edge::route::{decide, DropReason, ForwardKind, Tables};
use cpm_edge::sip::scan::{scan, Defect, Method};
use std::net::SocketAddr;

const CLIENT: &str = "192.0.2.10:5062";
const EDGE_VIA: &str = "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKcpe";
/// The edits every forwarded `invite_to_group` gets from [`CLIENT`].
const CLIENT_EDITS: [(&str, &str); 2] = [
    ("Max-Forwards: 70\r\n", "Max-Forwards: 69\r\n"),
    (";rport\r\n", ";rport=5062;received=192.0.2.10\r\n"),
];

/// A CS shard of the default tables, and the Via edit a request from it gets.
const SHARD1: &str = "127.0.0.1:7001";
const SHARD1_VIA_EDIT: (&str, &str) = (";rport\r\n", ";rport=7001;received=127.0.0.1\r\n");

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn run_with(msg: &[u8], src: &str, t: &Tables, out_len: usize) -> (Outcome, String) {
    let mut out = vec![0u8; out_len];
    let (o, _) = process(msg, false, sa(src), t, &mut out);
    let len = o.send().map_or(0, |(l, _)| l);
    assert!(len <= out_len);
    (o, String::from_utf8_lossy(&out[..len]).into_owned())
}

fn run_from(msg: &[u8], src: &str) -> (Outcome, String) {
    run_with(msg, src, &tables(), 16384)
}

fn run(msg: &[u8]) -> (Outcome, String) {
    run_from(msg, CLIENT)
}

fn invite(extra: &str) -> String {
    String::from_utf8(invite_to_group("grp2", "alice", extra)).unwrap()
}

/// `invite("")` with `from` replaced by `to` (which must occur).
fn invite_with(from: &str, to: &str) -> String {
    let m = invite("");
    assert!(m.contains(from), "{from:?} not in the template");
    m.replacen(from, to, 1)
}

fn status_line(out: &str) -> &str {
    out.split("\r\n").next().unwrap()
}

/// A stateless answer with exactly this status line, sent to `dst`, whose
/// every line ends with CRLF and which re-scans without a defect.
fn assert_answer(o: &Outcome, out: &str, line: &str, dst: &str) {
    match o {
        Outcome::Replied { dst: d, code, .. } => {
            assert_eq!(*d, sa(dst), "{out}");
            assert_eq!(line[8..11].parse::<u16>().unwrap(), *code);
        }
        other => panic!("not answered: {other:?}"),
    }
    assert_eq!(status_line(out), line, "{out}");
    assert!(out.ends_with("\r\n\r\n"));
    assert_no_bare_line_ends(out);
    // It re-scans as a response: what it echoes of a defective request
    // (a duplicate or malformed header) may still be defective.
    let again = scan(out.as_bytes());
    assert!(!again.is_request() && again.top_via.is_some(), "{out}");
    assert!(
        !matches!(
            again.defect,
            Some(
                Defect::BadStartLine
                    | Defect::MissingBlankLine
                    | Defect::BareLineEnd
                    | Defect::MalformedHeader
                    | Defect::BodyTruncated
            )
        ),
        "{:?}: {out}",
        again.defect
    );
}

fn assert_no_bare_line_ends(out: &str) {
    let b = out.as_bytes();
    for (i, c) in b.iter().enumerate() {
        match c {
            b'\n' => assert!(i > 0 && b[i - 1] == b'\r', "bare LF at {i}: {out:?}"),
            b'\r' => assert_eq!(b.get(i + 1), Some(&b'\n'), "bare CR at {i}: {out:?}"),
            _ => {}
        }
    }
}

fn assert_400(msg: &[u8], reason: &str) {
    let (o, out) = run(msg);
    assert_answer(&o, &out, &format!("SIP/2.0 400 {reason}"), CLIENT);
}

/// The forwarded request is exactly: the original start line, our Via, the
/// Route pushed for a shard (with the leg of `kind`), Record-Route for a
/// dialog-creating request, Max-Forwards when it was absent, then the
/// original header block with exactly `edits` applied (each must apply
/// once), the blank line and the original body.
fn assert_forwarded(o: &Outcome, out: &str, orig: &[u8], edits: &[(&str, &str)]) {
    let Outcome::Forwarded { kind, shard, .. } = *o else {
        panic!("not forwarded: {o:?}")
    };
    let m = scan(orig);
    assert_eq!(m.defect, None);
    let text = String::from_utf8_lossy(orig);
    let text = &text[m.start_line.start as usize..];
    let (start, mut rest) = text
        .split_once("\r\n")
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .unwrap();
    for (from, to) in edits {
        assert!(rest.contains(from), "edit {from:?} does not apply");
        rest = rest.replacen(from, to, 1);
    }
    let mut want = format!("{start}\r\n");
    let (line, tail) = out[want.len()..].split_once("\r\n").unwrap();
    assert!(out.starts_with(&want), "{out}");
    assert!(line.starts_with(EDGE_VIA), "{out}");
    assert_eq!(line.len(), EDGE_VIA.len() + 24, "{line}");
    want.clear();
    if let Some(s) = shard {
        let leg = match kind {
            ForwardKind::OriginatingPf => "orig",
            ForwardKind::Controlling => "ctrl",
            ForwardKind::TerminatingPf => "term",
            k => panic!("a shard with {k:?}"),
        };
        want += &format!(
            "Route: <sip:127.0.0.1:{};lr>,<sip:127.0.0.1:5060;lr;cpm-leg={leg}>\r\n",
            7001 + s
        );
    }
    let dialog = matches!(
        m.method(),
        Some(Method::Invite | Method::Subscribe | Method::Refer)
    );
    if kind.record_routes() && dialog && m.to_tag.is_none() {
        want += "Record-Route: <sip:127.0.0.1:5060;lr>\r\n";
    }
    if m.max_forwards.is_none() {
        want += "Max-Forwards: 70\r\n";
    }
    want += &rest;
    assert_eq!(tail, want);
    assert_eq!(scan(out.as_bytes()).defect, None);
}

fn dropped(o: &Outcome) -> DropReason {
    match o {
        Outcome::Dropped(r) => *r,
        other => panic!("not dropped: {other:?}"),
    }
}

// ------------------------------------------------------------------ URIs

#[test]
fn escaped_user_parts_are_forwarded_verbatim() {
    let msg = invite_with(
        "INVITE sip:grp2@groups.example.net",
        "INVITE sip:user%40x@example.net",
    )
    .replace(
        "From: <sip:alice@example.net>",
        "From: \"A %22 B\" <sip:alice%20smith@example.net>",
    );
    let m = scan(msg.as_bytes());
    assert_eq!(
        m.from_uri.get(msg.as_bytes()),
        b"sip:alice%20smith@example.net"
    );
    let (o, out) = run(msg.as_bytes());
    assert_forwarded(&o, &out, msg.as_bytes(), &CLIENT_EDITS);
    assert!(out.starts_with("INVITE sip:user%40x@example.net SIP/2.0\r\n"));
}

#[test]
fn uri_parameters_and_headers_are_kept() {
    let msg = invite_with(
        "INVITE sip:grp2@groups.example.net",
        "INVITE sip:bob@example.net;transport=udp;user=phone?Subject=hi&Priority=urgent",
    )
    .replace(
        "To: <sip:grp2@groups.example.net>",
        "To: <sip:bob@example.net;user=phone?Subject=hi>;x-p=\"a;b,c\"",
    );
    let (o, out) = run(msg.as_bytes());
    assert_forwarded(&o, &out, msg.as_bytes(), &CLIENT_EDITS);
}

#[test]
fn sips_request_uri_and_tel_identities() {
    let sips = invite_with("INVITE sip:grp2", "INVITE sips:grp2");
    let (o, out) = run(sips.as_bytes());
    assert_forwarded(&o, &out, sips.as_bytes(), &CLIENT_EDITS);

    // tel: in From and P-Asserted-Identity. From a client the asserted
    // identity is not trusted (RFC 3325): it is removed and From decides.
    let pai = "P-Asserted-Identity: <tel:+15551234;phone-context=example.net>, <sip:x@y>\r\n";
    let a = invite(pai).replace("From: <sip:alice@example.net>", "From: <tel:+1999>");
    let a_bare = invite("").replace("From: <sip:alice@example.net>", "From: <tel:+1999>");
    let b = invite(pai);
    let (oa, out_a) = run(a.as_bytes());
    let (oa_bare, _) = run(a_bare.as_bytes());
    let mut edits = CLIENT_EDITS.to_vec();
    edits.push((pai, ""));
    assert_forwarded(&oa, &out_a, a.as_bytes(), &edits);
    let shard = |o: &Outcome| match o {
        Outcome::Forwarded { shard, .. } => *shard,
        _ => None,
    };
    assert_eq!(shard(&oa), shard(&oa_bare));
    // From a trusted source (the non-CPM route, e.g. an IMS core) the
    // identity is the asserted number, whatever From says, and it is kept.
    let t = tables_with("[routing]\nnon_cpm_route = \"127.0.0.1:5080\"\n");
    let (ta, out_ta) = run_with(a.as_bytes(), "127.0.0.1:5080", &t, 16384);
    let (tb, _) = run_with(b.as_bytes(), "127.0.0.1:5080", &t, 16384);
    assert_eq!(header(&out_ta, "P-Asserted-Identity"), [pai.trim_end()]);
    assert!(shard(&ta).is_some());
    assert_eq!(shard(&ta), shard(&tb));
    // tel Request-URI from a CS: the invited user's PF.
    let tel = invite_with(
        "INVITE sip:grp2@groups.example.net",
        "INVITE tel:+15551234;phone-context=example.net",
    );
    let (o, out) = run_from(tel.as_bytes(), "127.0.0.1:7001");
    assert!(
        matches!(
            o,
            Outcome::Forwarded {
                kind: ForwardKind::TerminatingPf,
                ..
            }
        ),
        "{o:?}"
    );
    assert_forwarded(
        &o,
        &out,
        tel.as_bytes(),
        &[
            CLIENT_EDITS[0],
            (";rport\r\n", ";rport=7001;received=127.0.0.1\r\n"),
        ],
    );
}

#[test]
fn unknown_uri_schemes_are_416_and_non_uris_400() {
    for ruri in [
        "im:bob@example.net",
        "http://example.net/x",
        "urn:service:sos",
        "mailto:bob@example.net",
    ] {
        let msg = invite_with("sip:grp2@groups.example.net SIP", &format!("{ruri} SIP"));
        let (o, out) = run(msg.as_bytes());
        assert_answer(&o, &out, "SIP/2.0 416 Unsupported URI Scheme", CLIENT);
        // The answer carries the request's Via (marked), From, Call-ID, CSeq
        // and its To with a tag.
        assert_eq!(
            header(&out, "Via"),
            ["Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-alice-1;rport=5062;received=192.0.2.10"]
        );
        assert!(header(&out, "To")[0].starts_with("To: <sip:grp2@groups.example.net>;tag="));
        // An ACK is never answered.
        let ack = msg.replace("INVITE", "ACK");
        assert_eq!(dropped(&run(ack.as_bytes()).0), DropReason::AckRefused);
    }
    for ruri in ["sip:", "sip:bob@example.net:99999", "nocolon", "sip:[::1"] {
        let msg = invite_with("sip:grp2@groups.example.net SIP", &format!("{ruri} SIP"));
        assert_400(msg.as_bytes(), "Bad Request - Malformed Request-URI");
    }
}

// ------------------------------------------------------------------ IPv6

#[test]
fn ipv6_via_sent_by_gets_received_and_rport() {
    let msg = invite_with("192.0.2.10:5062;branch", "[2001:db8::1]:5070;branch");
    // Same source: rport filled, received added (RFC 3581: always with rport).
    let (o, out) = run_from(msg.as_bytes(), "[2001:db8::1]:5070");
    assert_forwarded(
        &o,
        &out,
        msg.as_bytes(),
        &[
            CLIENT_EDITS[0],
            (";rport\r\n", ";rport=5070;received=2001:db8::1\r\n"),
        ],
    );
    // Behind a NAT.
    let (o, out) = run_from(msg.as_bytes(), "[2001:db8::2]:5071");
    assert_forwarded(
        &o,
        &out,
        msg.as_bytes(),
        &[
            CLIENT_EDITS[0],
            (";rport\r\n", ";rport=5071;received=2001:db8::2\r\n"),
        ],
    );
    // Without rport, a Via naming the source (in another spelling) still
    // gets both: rport is forced, so answers go to the real source only.
    let plain = msg.replace(";rport", "");
    let (o, out) = run_from(plain.as_bytes(), "[2001:db8:0::1]:5070");
    assert_forwarded(
        &o,
        &out,
        plain.as_bytes(),
        &[
            CLIENT_EDITS[0],
            (
                "branch=z9hG4bK-alice-1\r\n",
                "branch=z9hG4bK-alice-1;rport=5070;received=2001:db8::1\r\n",
            ),
        ],
    );
    // Answers go to the source.
    let bad = msg.replace("CSeq: 1 INVITE", "CSeq: x INVITE");
    let (o, out) = run_from(bad.as_bytes(), "[2001:db8::2]:5071");
    assert_answer(
        &o,
        &out,
        "SIP/2.0 400 Bad Request - Malformed CSeq",
        "[2001:db8::2]:5071",
    );
    // An IPv6 sent-by without brackets is not a Via: answered (at the
    // source) with the Via echoed as written, never edited. (It was dropped
    // as unanswerable while answers could follow a Via; they go to the
    // source now.)
    let unbracketed = invite_with("192.0.2.10:5062;branch", "2001:db8::1;branch");
    let (o, out) = run(unbracketed.as_bytes());
    assert!(
        matches!(o, Outcome::Replied { code: 400, dst, .. } if dst == sa(CLIENT)),
        "{o:?}"
    );
    assert_eq!(status_line(&out), "SIP/2.0 400 Bad Request - Malformed Via");
    assert_eq!(
        header(&out, "Via"),
        ["Via: SIP/2.0/UDP 2001:db8::1;branch=z9hG4bK-alice-1;rport"]
    );
    assert_no_bare_line_ends(&out);
}

#[test]
fn ipv6_request_uri() {
    let msg = invite_with(
        "INVITE sip:grp2@groups.example.net",
        "INVITE sip:bob@[2001:db8::1]:5070;transport=udp",
    );
    let (o, out) = run(msg.as_bytes());
    assert_forwarded(&o, &out, msg.as_bytes(), &CLIENT_EDITS);
    // Back from the invited user's PF with our `term` marker: to the client.
    let from_cs = msg
        .replacen(
            "Via: ",
            "Via: SIP/2.0/UDP 127.0.0.1:7002;branch=z9hG4bKcs2\r\nVia: ",
            1,
        )
        .replacen(
            "Max-Forwards",
            "Route: <sip:127.0.0.1:5060;lr;cpm-leg=term>\r\nMax-Forwards",
            1,
        );
    let (o, out) = run_from(from_cs.as_bytes(), "127.0.0.1:7002");
    match o {
        Outcome::Forwarded { dst, kind, .. } => {
            assert_eq!(dst, sa("[2001:db8::1]:5070"));
            assert_eq!(kind, ForwardKind::ToInvitedClient);
        }
        other => panic!("{other:?}"),
    }
    assert_forwarded(
        &o,
        &out,
        from_cs.as_bytes(),
        &[
            ("Route: <sip:127.0.0.1:5060;lr;cpm-leg=term>\r\n", ""),
            CLIENT_EDITS[0],
            (
                "branch=z9hG4bKcs2\r\n",
                "branch=z9hG4bKcs2;rport=7002;received=127.0.0.1\r\n",
            ),
        ],
    );
}

// --------------------------------------------------- methods and headers

#[test]
fn unknown_methods_and_extension_headers_are_forwarded() {
    let msg =
        invite("X-Foo: bar;baz=\"q,u;o\"\r\nP-Unknown-Thing:\r\nZ:z\r\n").replace("INVITE", "FOO");
    let (o, out) = run(msg.as_bytes());
    assert_forwarded(&o, &out, msg.as_bytes(), &CLIENT_EDITS);
    assert!(out.starts_with("FOO sip:grp2@groups.example.net SIP/2.0\r\n"));
    // Method names are case-sensitive: CSeq must match exactly.
    let mismatch = invite("").replacen("CSeq: 1 INVITE", "CSeq: 1 invite", 1);
    assert_400(
        mismatch.as_bytes(),
        "Bad Request - CSeq Method Does Not Match",
    );
}

#[test]
fn start_line_variants() {
    for (from, to, line) in [
        (
            "INVITE sip:grp2",
            "INVITE  sip:grp2",
            "SIP/2.0 400 Bad Request - Malformed Start Line",
        ),
        (
            "groups.example.net SIP/2.0",
            "groups.example.net SIP/3.0",
            "SIP/2.0 505 Version Not Supported",
        ),
        (
            "groups.example.net SIP/2.0",
            "groups.example.net SIP/2.0 ",
            "SIP/2.0 400 Bad Request - Malformed Start Line",
        ),
        (
            "groups.example.net SIP/2.0",
            "groups.example.net HTTP/1.1",
            "SIP/2.0 400 Bad Request - Malformed Start Line",
        ),
    ] {
        let msg = invite_with(from, to);
        let (o, out) = run(msg.as_bytes());
        assert_answer(&o, &out, line, CLIENT);
    }
    // The version is case-insensitive.
    let lower = invite_with("groups.example.net SIP/2.0", "groups.example.net sip/2.0");
    let (o, out) = run(lower.as_bytes());
    assert_forwarded(&o, &out, lower.as_bytes(), &CLIENT_EDITS);
}

#[test]
fn whitespace_around_header_colons_and_odd_case_names() {
    let msg = invite("")
        .replace("Call-ID: ", "Call-ID \t :   ")
        .replace("Via: ", "vIA\t: ")
        .replace("CSeq: ", "cseq:")
        .replace("Max-Forwards: ", "MAX-forwards :  ")
        .replace("From: ", "FROM:\t");
    let m = scan(msg.as_bytes());
    let b = msg.as_bytes();
    assert_eq!(m.defect, None);
    assert_eq!(m.call_id.get(b), b"alice-call-1@192.0.2.10");
    assert_eq!(m.cseq_num, 1);
    assert_eq!(m.from_tag.unwrap().get(b), b"a73kszlfl");
    let (o, out) = run(b);
    assert_forwarded(
        &o,
        &out,
        b,
        &[
            ("MAX-forwards :  70\r\n", "MAX-forwards :  69\r\n"),
            CLIENT_EDITS[1],
        ],
    );
}

#[test]
fn compact_forms_mixed_with_long_forms() {
    let msg = invite("")
        .replace("Call-ID:", "i:")
        .replace("From:", "f:")
        .replace("To:", "t:")
        .replace("Content-Length:", "l:")
        .replace("Content-Type:", "c:")
        .replace("Accept-Contact:", "a:")
        .replacen(
            "Max-Forwards",
            "v: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKsecond\r\nMax-Forwards",
            1,
        );
    let m = scan(msg.as_bytes());
    assert_eq!(m.via_count, 2);
    let (o, out) = run(msg.as_bytes());
    assert_forwarded(&o, &out, msg.as_bytes(), &CLIENT_EDITS);
    // A compact and a long form of a single-value header are duplicates.
    let dup = invite("i: other@x\r\n");
    assert_400(dup.as_bytes(), "Bad Request - Duplicate Call-ID");
}

#[test]
fn duplicate_single_value_headers() {
    for (extra, reason) in [
        ("Call-ID: x@y\r\n", "Bad Request - Duplicate Call-ID"),
        ("CSeq: 1 INVITE\r\n", "Bad Request - Duplicate CSeq"),
        ("f: <sip:m@x>;tag=2\r\n", "Bad Request - Duplicate From"),
        ("To: <sip:m@x>\r\n", "Bad Request - Duplicate To"),
        (
            "Max-Forwards: 70\r\n",
            "Bad Request - Duplicate Max-Forwards",
        ),
        ("l: 5\r\n", "Bad Request - Conflicting Content-Length"),
    ] {
        assert_400(invite(extra).as_bytes(), reason);
    }
    // The same Content-Length twice is tolerated...
    let twice = invite("l: 237\r\n");
    let (o, out) = run(twice.as_bytes());
    assert_forwarded(&o, &out, twice.as_bytes(), &CLIENT_EDITS);
    // ... a third time it is not: a body rewrite removes two lines only
    // (regression: the slow path forwarded a stale Content-Length line).
    assert_400(
        invite("l: 237\r\nContent-Length: 237\r\n").as_bytes(),
        "Bad Request - Conflicting Content-Length",
    );
}

#[test]
fn header_line_defects() {
    assert_400(
        invite("This is not a header\r\n").as_bytes(),
        "Bad Request - Malformed Header Line",
    );
    assert_400(
        invite("Bad Name: x\r\n").as_bytes(),
        "Bad Request - Malformed Header Line",
    );
    assert_400(
        invite(": no name\r\n").as_bytes(),
        "Bad Request - Malformed Header Line",
    );
    // An empty value is a header.
    let empty = invite("Subject:\r\n");
    let (o, out) = run(empty.as_bytes());
    assert_forwarded(&o, &out, empty.as_bytes(), &CLIENT_EDITS);
}

#[test]
fn multiple_via_values_in_one_request_line() {
    let msg = invite_with(
        ";branch=z9hG4bK-alice-1;rport\r\n",
        ";branch=z9hG4bK-alice-1;rport , SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKb\r\n",
    );
    let (o, out) = run(msg.as_bytes());
    assert_forwarded(
        &o,
        &out,
        msg.as_bytes(),
        &[
            CLIENT_EDITS[0],
            (";rport , ", ";rport=5062;received=192.0.2.10 , "),
        ],
    );
}

/// A response to `forwarded` as the shard would send it, with the Via lines
/// written by `vias(ours, client)`.
fn response(forwarded: &str, vias: impl Fn(&str, &str) -> String) -> String {
    let v = header(forwarded, "Via");
    let ours = v[0].trim_start_matches("Via: ");
    let client = v[1].trim_start_matches("Via: ");
    format!(
        "SIP/2.0 200 OK\r\n{}\r\nFrom: <sip:alice@example.net>;tag=a73kszlfl\r\nTo: <sip:grp2@groups.example.net>;tag=cs\r\nCall-ID: alice-call-1@192.0.2.10\r\nCSeq: 1 INVITE\r\nContent-Length: 4\r\n\r\nbody",
        vias(ours, client)
    )
}

/// Writes the Via lines of a response from (our value, the client's).
type ViaShape = fn(&str, &str) -> String;

#[test]
fn responses_pop_only_our_via_value() {
    let (_, fwd) = run(invite("").as_bytes());
    let client = header(&fwd, "Via")[1]
        .trim_start_matches("Via: ")
        .to_string();
    let shapes: [(ViaShape, &str); 6] = [
        (|o, c| format!("Via: {o}\r\nVia: {c}"), "Via: {c}"),
        (|o, c| format!("Via: {o}, {c}"), "Via: {c}"),
        (|o, c| format!("Via: {o},{c}"), "Via: {c}"),
        (|o, c| format!("v: {o} ,\r\n  {c}"), "v: {c}"),
        (
            |o, c| format!("Via: {o}, {c}, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx"),
            "Via: {c}, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx",
        ),
        (
            |o, c| format!("Via: {o},\r\n\t{c}\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx"),
            "Via: {c}\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx",
        ),
    ];
    for (vias, left) in shapes {
        let resp = response(&fwd, vias);
        let (o, out) = run_from(resp.as_bytes(), "127.0.0.1:7004");
        assert_eq!(
            o,
            Outcome::Relayed {
                len: out.len(),
                dst: sa(CLIENT),
                code: 200
            }
        );
        let want = response(&fwd, |_, _| left.replace("{c}", &client));
        assert_eq!(out, want);
    }
    // Not ours on top: dropped, wherever ours is.
    let resp = response(&fwd, |o, c| format!("Via: {c}, {o}"));
    assert_eq!(
        dropped(&run_from(resp.as_bytes(), "127.0.0.1:7004").0),
        DropReason::ResponseNotOurs
    );
    // Ours alone: no next hop.
    let resp = response(&fwd, |o, _| format!("Via: {o}"));
    assert_eq!(
        dropped(&run_from(resp.as_bytes(), "127.0.0.1:7004").0),
        DropReason::ResponseNoNextHop
    );
}

#[test]
fn response_to_an_ipv6_client_goes_to_received_even_bracketed() {
    // Regression: `received=[2001:db8::2]` (RFC 5118 §4.5) was not read and
    // the response went to the sent-by host instead of the NAT address.
    // The client sits behind a NAT: its Via names [2001:db8::1]:5070, its
    // datagrams come from [2001:db8::2]:5071.
    let msg = invite_with(
        "Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-alice-1;rport",
        "Via: SIP/2.0/UDP [2001:db8::1]:5070;branch=z9hG4bKa;rport",
    );
    let (_, fwd) = run_from(msg.as_bytes(), "[2001:db8::2]:5071");
    for recv in ["2001:db8::2", "[2001:db8::2]"] {
        let resp = response(&fwd, |o, c| {
            let c = c.replace("received=2001:db8::2", &format!("received={recv}"));
            assert!(c.contains(&format!("rport=5071;received={recv}")), "{c}");
            format!("Via: {o}\r\nVia: {c}")
        });
        let (o, _) = run_from(resp.as_bytes(), "127.0.0.1:7004");
        match o {
            Outcome::Relayed { dst, .. } => assert_eq!(dst, sa("[2001:db8::2]:5071"), "{recv}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn response_start_line_defects_are_counted_as_malformed() {
    let (_, fwd) = run(invite("").as_bytes());
    let ok = response(&fwd, |o, c| format!("Via: {o}\r\nVia: {c}"));
    // Leading CRLFs are ignored on responses too.
    let (o, out) = run_from(format!("\r\n\r\n{ok}").as_bytes(), "127.0.0.1:7004");
    assert!(matches!(o, Outcome::Relayed { .. }), "{o:?}");
    assert!(out.starts_with("SIP/2.0 200 OK\r\n"));
    // Regression: a bad status line after leading CRLFs, or in lower case,
    // was counted as garbage, not as a malformed response.
    for bad in [
        ok.replace("SIP/2.0 200", "SIP/2.0 700"),
        ok.replace("SIP/2.0 200", "SIP/3.0 200"),
        format!("\r\n{}", ok.replace("SIP/2.0 200", "SIP/2.0 20")),
        ok.replace("SIP/2.0 200", "sip/2.0 2000"),
        ok.replace("Content-Length: 4", "Content-Length: 40"),
    ] {
        assert_eq!(
            dropped(&run_from(bad.as_bytes(), "127.0.0.1:7004").0),
            DropReason::MalformedResponse,
            "{bad}"
        );
    }
    assert_eq!(dropped(&run(b"HELLO\r\n\r\n").0), DropReason::Garbage);
    // Shaped like a request line: a request without a Via.
    assert_eq!(
        dropped(&run(b"HELLO WORLD\r\n\r\n").0),
        DropReason::RequestUnanswerable
    );
    assert_eq!(dropped(&run(b"\r\n\r\n").0), DropReason::Keepalive);
}

// -------------------------------------------------------- Content-Length

#[test]
fn content_length_values() {
    for cl in [
        "99999999999999999999",
        "4294967296",
        "-1",
        "abc",
        "",
        "1e3",
        "+5",
        "12 34",
    ] {
        let msg = invite_with("Content-Length: 237", &format!("Content-Length: {cl}"));
        assert_400(msg.as_bytes(), "Bad Request - Malformed Content-Length");
    }
    for cl in ["4294967295", "100000", "238"] {
        let msg = invite_with("Content-Length: 237", &format!("Content-Length: {cl}"));
        assert_400(msg.as_bytes(), "Bad Request - Content-Length Exceeds Body");
    }
    // Fewer octets than the body: the rest is discarded (RFC 3261 §18.3).
    let short = invite_with("Content-Length: 237", "Content-Length:  0010 ");
    let (o, out) = run(short.as_bytes());
    assert!(matches!(o, Outcome::Forwarded { .. }), "{o:?}");
    assert!(
        out.ends_with("Content-Length:  0010 \r\n\r\nv=0\r\no=ali"),
        "{out}"
    );
    let zero = invite_with("Content-Length: 237", "Content-Length: 0");
    let (_, out) = run(zero.as_bytes());
    assert!(out.ends_with("Content-Length: 0\r\n\r\n"));
    // No Content-Length on UDP: the body is the rest of the datagram.
    let none = invite_with("Content-Length: 237\r\n", "");
    let (o, out) = run(none.as_bytes());
    assert_forwarded(&o, &out, none.as_bytes(), &CLIENT_EDITS);
}

#[test]
fn truncated_bodies() {
    let msg = invite("");
    for cut in [1, 10, 236] {
        let b = &msg.as_bytes()[..msg.len() - cut];
        assert_400(b, "Bad Request - Content-Length Exceeds Body");
        let ack = msg.replace("INVITE", "ACK");
        let (o, _) = run(&ack.as_bytes()[..ack.len() - cut]);
        assert_eq!(dropped(&o), DropReason::AckRefused);
    }
}

// ------------------------------------------------------------ NUL bytes

#[test]
fn nul_bytes() {
    assert_400(
        invite_with("Call-ID: alice", "Call-ID: al\0ice").as_bytes(),
        "Bad Request - NUL Byte In Headers",
    );
    assert_400(
        invite("X-N\0: v\r\n").as_bytes(),
        "Bad Request - NUL Byte In Headers",
    );
    // In the body it is data.
    let body = invite_with("s=-", "s=\0");
    let (o, out) = run(body.as_bytes());
    assert_forwarded(&o, &out, body.as_bytes(), &CLIENT_EDITS);
    // Before the start line it is skipped like the CRLFs a keepalive leaves.
    let lead = format!("\0\r\n{}", invite(""));
    let (o, out) = run(lead.as_bytes());
    assert_forwarded(&o, &out, lead.as_bytes(), &CLIENT_EDITS);
    assert_eq!(dropped(&run(b"\0\0\0\0").0), DropReason::Keepalive);
}

// ------------------------------------------------------------- big input

#[test]
fn long_header_values_and_513() {
    let big = format!("X-Big: {}\r\n", "x".repeat(8192));
    let msg = invite(&big);
    let (o, out) = run(msg.as_bytes());
    assert_forwarded(&o, &out, msg.as_bytes(), &CLIENT_EDITS);
    // A datagram that fits the receive buffer but whose forwarded form does
    // not fit the output buffer: 513, never a truncated forward.
    let t = tables();
    let base = invite("X-Big: \r\n").len();
    let fill = 16384 - base;
    let msg = invite(&format!("X-Big: {}\r\n", "y".repeat(fill)));
    assert_eq!(msg.len(), 16384);
    let (o, out) = run_with(msg.as_bytes(), CLIENT, &t, 16384);
    assert_answer(&o, &out, "SIP/2.0 513 Message Too Large", CLIENT);
    // ... and one that just fits.
    let fits = invite(&format!("X-Big: {}\r\n", "y".repeat(fill - 400)));
    let (o, out) = run_with(fits.as_bytes(), CLIENT, &t, 16384);
    assert_forwarded(&o, &out, fits.as_bytes(), &CLIENT_EDITS);
    // Larger than the receive buffer: dropped before anything else.
    let mut buf = vec![0u8; 16384];
    let (o, _) = process(msg.as_bytes(), true, sa(CLIENT), &t, &mut buf);
    assert_eq!(dropped(&o), DropReason::Oversized);
    // An output buffer too small even for the answer: a counted drop.
    let (o, _) = run_with(invite("").as_bytes(), CLIENT, &t, 200);
    assert_eq!(dropped(&o), DropReason::TooLarge);
}

// ------------------------------------------------------- line structure

#[test]
fn missing_blank_line() {
    let msg = invite("");
    let head = msg.split("\r\n\r\n").next().unwrap();
    for m in [head.to_string(), format!("{head}\r\n")] {
        let (o, out) = run(m.as_bytes());
        assert_answer(
            &o,
            &out,
            "SIP/2.0 400 Bad Request - Missing Blank Line After Headers",
            CLIENT,
        );
    }
}

#[test]
fn lf_only_line_ends_are_refused_cleanly() {
    // Regression: an LF-only request was answered 400 "Missing Blank Line"
    // with LF-only lines copied into the answer, and with the body's lines
    // taken for headers (a CPIM body's From/To appeared in the answer).
    let lf = String::from_utf8(message_cpim("carol@example.net", "bob"))
        .unwrap()
        .replace("\r\n", "\n");
    let (o, out) = run(lf.as_bytes());
    assert_answer(
        &o,
        &out,
        "SIP/2.0 400 Bad Request - Line Not Ended By CRLF",
        CLIENT,
    );
    assert_eq!(
        out,
        "SIP/2.0 400 Bad Request - Line Not Ended By CRLF\r\n\
         v: SIP/2.0/UDP 192.0.2.20:5070;branch=z9hG4bKmsg77;rport=5062;received=192.0.2.10\r\n\
         f: \"Bob\" <sip:bob@example.net>;tag=bb1\r\n\
         t: <sip:carol@example.net>;tag=b5de427f799f345e\r\n\
         i: msg-1@192.0.2.20\r\n\
         CSeq: 10 MESSAGE\r\n\
         Server: cpm-edge\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let m = scan(lf.as_bytes());
    assert_eq!(m.defect, Some(Defect::BareLineEnd));
    assert!(m.body.get(lf.as_bytes()).starts_with(b"From: <sip:bob"));

    let inv = invite("").replace("\r\n", "\n");
    let (o, out) = run(inv.as_bytes());
    assert_answer(
        &o,
        &out,
        "SIP/2.0 400 Bad Request - Line Not Ended By CRLF",
        CLIENT,
    );
    // Never a forward with lines a next hop could split otherwise: one bare
    // LF, a bare LF start line, a bare CR, or an LF-only blank line.
    for bad in [
        invite("").replacen(
            "Call-ID: alice-call-1@192.0.2.10\r\n",
            "Call-ID: alice-call-1@192.0.2.10\n",
            1,
        ),
        invite("").replacen(" SIP/2.0\r\n", " SIP/2.0\n", 1),
        invite("").replacen("\r\n\r\n", "\r\n\n", 1),
        invite("").replacen("\r\n\r\n", "\n\r\n", 1),
        invite("X-Fold: a\r\n b\r\n").replacen("a\r\n b", "a\n b", 1),
    ] {
        let (o, out) = run(bad.as_bytes());
        assert_answer(
            &o,
            &out,
            "SIP/2.0 400 Bad Request - Line Not Ended By CRLF",
            CLIENT,
        );
    }
    // A bare CR inside a value: refused too (its answer echoes the value).
    let cr = invite("").replacen("CSeq: 1 INVITE\r\n", "CSeq: 1 INVITE\rX-Evil: 1\r\n", 1);
    let (o, out) = run(cr.as_bytes());
    assert!(matches!(o, Outcome::Replied { code: 400, .. }), "{o:?}");
    assert!(out.starts_with("SIP/2.0 400 Bad Request - Line Not Ended By CRLF\r\n"));
    // LF-only ACKs and responses are dropped and counted.
    let ack = invite("").replace("INVITE", "ACK").replace("\r\n", "\n");
    assert_eq!(dropped(&run(ack.as_bytes()).0), DropReason::AckRefused);
    let (_, fwd) = run(invite("").as_bytes());
    let resp = response(&fwd, |o, c| format!("Via: {o}\r\nVia: {c}")).replace("\r\n", "\n");
    assert_eq!(
        dropped(&run_from(resp.as_bytes(), "127.0.0.1:7004").0),
        DropReason::MalformedResponse
    );
    // The body may use any line end.
    let body = invite("").replace("\r\na=", "\na=");
    let cl = body.split_once("\r\n\r\n").unwrap().1.len();
    let body = body.replace("Content-Length: 237", &format!("Content-Length: {cl}"));
    let (o, out) = run(body.as_bytes());
    assert_forwarded(&o, &out, body.as_bytes(), &CLIENT_EDITS);
}

#[test]
fn leading_crlfs_before_the_start_line_are_ignored() {
    for lead in ["\r\n", "\r\n\r\n\r\n", "\n"] {
        let msg = format!("{lead}{}", invite(""));
        let (o, out) = run(msg.as_bytes());
        assert_forwarded(&o, &out, msg.as_bytes(), &CLIENT_EDITS);
        assert!(out.starts_with("INVITE "));
    }
}

#[test]
fn folded_via_and_route() {
    let msg = invite_with(
        "Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-alice-1;rport\r\n",
        "Via: SIP/2.0/UDP 192.0.2.10:5062\r\n ;branch=z9hG4bK-alice-1\r\n\t;rport\r\n",
    );
    let (o, out) = run(msg.as_bytes());
    assert_forwarded(&o, &out, msg.as_bytes(), &CLIENT_EDITS);

    // A folded Route from a shard: our value popped with its comma and
    // folding, the next value kept as written. (From a client the same
    // Route is refused: a client never chooses the next hop.)
    let msg = invite(
        "Route: <sip:127.0.0.1:5060;lr>,\r\n <sip:127.0.0.1:5090;lr>,\r\n\t<sip:10.1.1.1;lr>\r\n",
    );
    let (o, out) = run(msg.as_bytes());
    assert_answer(&o, &out, "SIP/2.0 403 Forbidden - Not Relaying", CLIENT);
    let (o, out) = run_from(msg.as_bytes(), SHARD1);
    assert!(
        matches!(o, Outcome::Forwarded { dst, kind: ForwardKind::LooseRoute, .. } if dst == sa("127.0.0.1:5090")),
        "{o:?}"
    );
    assert_forwarded(
        &o,
        &out,
        msg.as_bytes(),
        &[
            CLIENT_EDITS[0],
            SHARD1_VIA_EDIT,
            ("<sip:127.0.0.1:5060;lr>,\r\n ", ""),
        ],
    );
}

#[test]
fn routes_naming_the_edge() {
    // `lr=on` (RFC 2543 era), no port, upper case, addr-spec without <>.
    for r in [
        "Route: <sip:127.0.0.1:5060;lr=on>\r\n",
        "Route: <sip:127.0.0.1;lr>\r\n",
        "Route: <SIP:127.0.0.1:5060;LR>\r\n",
        "Route: sip:127.0.0.1:5060;lr\r\n",
        "Route: <sip:127.0.0.1:5060;lr>\r\nRoute: <sip:127.0.0.1:5060;lr>\r\n",
    ] {
        let msg = invite(r);
        let (o, out) = run(msg.as_bytes());
        let mut edits = CLIENT_EDITS.to_vec();
        for line in r.split_inclusive("\r\n") {
            edits.push((line, ""));
        }
        assert!(
            matches!(
                o,
                Outcome::Forwarded {
                    kind: ForwardKind::OriginatingPf,
                    ..
                }
            ),
            "{r}: {o:?}"
        );
        assert_forwarded(&o, &out, msg.as_bytes(), &edits);
    }
    // A next hop with lr=on after ours, from a shard (a client's: 403).
    let msg = invite("Route: <sip:127.0.0.1:5060;lr>, <sip:127.0.0.1:5090;lr=on>\r\n");
    let (o, out) = run(msg.as_bytes());
    assert_answer(&o, &out, "SIP/2.0 403 Forbidden - Not Relaying", CLIENT);
    let (o, out) = run_from(msg.as_bytes(), SHARD1);
    assert_forwarded(
        &o,
        &out,
        msg.as_bytes(),
        &[
            CLIENT_EDITS[0],
            SHARD1_VIA_EDIT,
            ("<sip:127.0.0.1:5060;lr>, ", ""),
        ],
    );
    // Five times ours: a loop.
    let msg = invite(&"Route: <sip:127.0.0.1:5060;lr>\r\n".repeat(5));
    let (o, out) = run(msg.as_bytes());
    assert_answer(
        &o,
        &out,
        "SIP/2.0 482 Loop Detected - Route Names The Edge Repeatedly",
        CLIENT,
    );
    assert_400(
        invite("Route: garbage\r\n").as_bytes(),
        "Bad Request - Malformed Route",
    );
}

#[test]
fn max_forwards_values() {
    let (o, out) = run(invite_with("Max-Forwards: 70", "Max-Forwards: 0").as_bytes());
    assert_answer(&o, &out, "SIP/2.0 483 Too Many Hops", CLIENT);
    // Above `routing.max_forwards_limit` (70) a value is lowered to it
    // first: a client cannot buy more hops than a normal request has.
    for (v, next) in [
        ("1", "0"),
        ("69", "68"),
        ("70", "69"),
        ("71", "69"),
        ("255", "69"),
        ("070", "69"),
        ("4294967295", "69"),
    ] {
        let msg = invite_with("Max-Forwards: 70", &format!("Max-Forwards: {v}"));
        let (o, out) = run(msg.as_bytes());
        assert_forwarded(
            &o,
            &out,
            msg.as_bytes(),
            &[
                (
                    &format!("Max-Forwards: {v}\r\n"),
                    &format!("Max-Forwards: {next}\r\n"),
                ),
                CLIENT_EDITS[1],
            ],
        );
    }
    for v in ["4294967296", "99999999999999999999", "-1", "", "7 0", "x"] {
        let msg = invite_with("Max-Forwards: 70", &format!("Max-Forwards: {v}"));
        assert_400(msg.as_bytes(), "Bad Request - Malformed Max-Forwards");
    }
    // Absent: inserted as 70.
    let none = invite_with("Max-Forwards: 70\r\n", "");
    let (o, out) = run(none.as_bytes());
    assert_forwarded(&o, &out, none.as_bytes(), &CLIENT_EDITS[1..]);
    // OPTIONS to the edge itself with Max-Forwards 0 is still answered 200.
    let opt = wire(
        "OPTIONS sip:127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKka
Max-Forwards: 0
From: <sip:probe@example.net>;tag=1
To: <sip:127.0.0.1:5060>
Call-ID: ka@x
CSeq: 1 OPTIONS
Content-Length: 0

",
    );
    let (o, out) = run(&opt);
    assert_answer(&o, &out, "SIP/2.0 200 OK", CLIENT);
}

#[test]
fn cseq_numbers() {
    for n in ["0", "2147483647", "01"] {
        let msg = invite_with("CSeq: 1 INVITE", &format!("CSeq: {n} INVITE"));
        let (o, out) = run(msg.as_bytes());
        assert_forwarded(&o, &out, msg.as_bytes(), &CLIENT_EDITS);
    }
    let tabbed = invite_with("CSeq: 1 INVITE", "CSeq: 7\t INVITE");
    assert_eq!(scan(tabbed.as_bytes()).cseq_num, 7);
    let (o, out) = run(tabbed.as_bytes());
    assert_forwarded(&o, &out, tabbed.as_bytes(), &CLIENT_EDITS);
    for bad in [
        "2147483648 INVITE",
        "4294967296 INVITE",
        "99999999999999999999 INVITE",
        "-1 INVITE",
        "1",
        "INVITE",
        "1 INVITE x",
        "1 INV@TE",
    ] {
        let msg = invite_with("CSeq: 1 INVITE", &format!("CSeq: {bad}"));
        assert_400(msg.as_bytes(), "Bad Request - Malformed CSeq");
    }
}

#[test]
fn missing_mandatory_headers() {
    for (line, reason) in [
        (
            "From: <sip:alice@example.net>;tag=a73kszlfl\r\n",
            "Bad Request - Missing From",
        ),
        (
            "To: <sip:grp2@groups.example.net>\r\n",
            "Bad Request - Missing To",
        ),
        (
            "Call-ID: alice-call-1@192.0.2.10\r\n",
            "Bad Request - Missing Call-ID",
        ),
        ("CSeq: 1 INVITE\r\n", "Bad Request - Missing CSeq"),
    ] {
        assert_400(invite_with(line, "").as_bytes(), reason);
    }
    let novia = invite_with(
        "Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-alice-1;rport\r\n",
        "",
    );
    assert_eq!(
        dropped(&run(novia.as_bytes()).0),
        DropReason::RequestUnanswerable
    );
    assert_400(
        invite_with("From: <sip:alice@example.net>", "From: <>").as_bytes(),
        "Bad Request - Malformed From",
    );
}

// --------------------------------------------------------- slow-path write

#[test]
fn body_rewrite_with_every_edit_at_once() {
    // Regression: Max-Forwards + rport + received + four popped Route lines
    // + two Content-Length lines is nine splices; the splice list held
    // eight and asserted (a panic, an abort in release) when the slow path
    // wrote a filtered SDP body for such a request.
    let t = tables();
    let msg = invite(&format!(
        "{}Content-Length: 237\r\n",
        "Route: <sip:127.0.0.1:5060;lr>\r\n".repeat(4)
    ));
    let b = msg.as_bytes();
    let src = sa("198.51.100.7:5062");
    let m = scan(b);
    assert_eq!(m.defect, None);
    let d = decide(b, &m, src, &t);
    let mut out = vec![0u8; 16384];
    let new_body = b"v=0\r\n";
    let o = write(Scanned::new(b, &m, src), d, &t, Some(new_body), &mut out);
    let Outcome::Forwarded { len, .. } = o else {
        panic!("{o:?}")
    };
    let text = String::from_utf8_lossy(&out[..len]);
    assert!(header(&text, "Route")[0].contains("cpm-leg=orig"));
    assert_eq!(header(&text, "Route").len(), 1);
    assert_eq!(header(&text, "Content-Length"), ["Content-Length: 5"]);
    assert!(text.contains(";rport=5062;received=198.51.100.7\r\n"));
    assert!(text.ends_with("\r\n\r\nv=0\r\n"));
    let again = scan(&out[..len]);
    assert_eq!(again.defect, None);
    assert_eq!(again.body.get(&out[..len]), new_body);
}

#[test]
fn empty_to_value_gets_a_well_formed_tagged_to_in_the_answer() {
    // Regression: the tag was written after the empty value's CRLF, gluing
    // `;tag=...` onto the next header line of the answer.
    for to in ["To:", "To:   ", "t:\t"] {
        let msg = invite_with("To: <sip:grp2@groups.example.net>", to);
        let (o, out) = run(msg.as_bytes());
        assert_answer(&o, &out, "SIP/2.0 400 Bad Request - Malformed To", CLIENT);
        let lines: Vec<&str> = out.split("\r\n").collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with(to.trim_end()))
            .unwrap();
        assert!(lines[at].starts_with(&format!("{to};tag=")), "{out}");
        assert_eq!(lines[at + 1], "Call-ID: alice-call-1@192.0.2.10");
    }
}

#[test]
fn an_ack_too_large_to_forward_is_dropped_not_answered() {
    // Regression: the 513 answer was sent to an ACK (never answered).
    let ack = invite("").replace("INVITE", "ACK");
    let (o, _) = run_with(ack.as_bytes(), CLIENT, &tables(), 700);
    assert_eq!(dropped(&o), DropReason::TooLarge);
    let (o, out) = run_with(invite("").as_bytes(), CLIENT, &tables(), 700);
    assert_answer(&o, &out, "SIP/2.0 513 Message Too Large", CLIENT);
}

/// A bare CR in one header and a bare LF in another balance the CR/LF counts;
/// the per-line check still refuses the request.
#[test]
fn balanced_bare_cr_and_bare_lf_are_still_refused() {
    let msg = wire(
        "INVITE sip:bob@example.net SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKbal\nFrom: <sip:alice@example.net>;tag=1\nTo: <sip:bob@example.net>\nCall-ID: bal-1\nCSeq: 1 INVITE\nSubject: a\rb\nContent-Length: 0\n\n",
    );
    // Turn one CRLF (after Subject) into a bare LF: CRs and LFs still balance.
    let text = String::from_utf8(msg)
        .unwrap()
        .replace("a\rb\r\nContent-Length", "a\rb\nContent-Length");
    let bytes = text.as_bytes();
    assert_eq!(
        bytes.iter().filter(|b| **b == b'\r').count(),
        bytes.iter().filter(|b| **b == b'\n').count()
    );
    let m = cpm_edge::sip::scan::scan(bytes);
    assert_eq!(m.defect, Some(cpm_edge::sip::scan::Defect::BareLineEnd));
}

#[test]
fn responses_are_relayed_on_their_vias_whatever_their_from_and_to_say() {
    // RFC 3261 §16.7: a proxy routes a response on its Via; From/To contents
    // are the endpoints' business, so an odd From/To URI still goes through
    // unchanged, while a missing From/To is still dropped as malformed.
    let (_, fwd) = run(invite("").as_bytes());
    let ok = response(&fwd, |o, c| format!("Via: {o}\r\nVia: {c}"));
    for odd in [
        ok.replace(
            "From: <sip:alice@example.net>",
            "From: \"unterminated <sip:a@b",
        ),
        ok.replace("To: <sip:grp2@groups.example.net>", "To: ;tag=only"),
    ] {
        let (o, out) = run_from(odd.as_bytes(), "127.0.0.1:7004");
        assert_eq!(
            o,
            Outcome::Relayed {
                len: out.len(),
                dst: sa(CLIENT),
                code: 200
            },
            "{odd}"
        );
        assert!(out.contains(header(&odd, "From")[0]) && out.contains(header(&odd, "To")[0]));
    }
    for missing in [
        ok.replace("From: <sip:alice@example.net>;tag=a73kszlfl\r\n", ""),
        ok.replace("To: <sip:grp2@groups.example.net>;tag=cs\r\n", ""),
    ] {
        assert_eq!(
            dropped(&run_from(missing.as_bytes(), "127.0.0.1:7004").0),
            DropReason::MalformedResponse,
            "{missing}"
        );
    }
    // A client Via whose parameters hold a quoted string takes the general
    // parameter path: `received` and `rport` are still read.
    let msg = invite_with(
        "Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-alice-1;rport",
        "Via: SIP/2.0/UDP 192.0.2.77:5099;x=\"a;b\";rport;branch=z9hG4bKq",
    );
    let (_, fwd) = run_from(msg.as_bytes(), "198.51.100.9:6000");
    let quoted = response(&fwd, |o, c| {
        assert!(
            c.contains("rport=6000;") && c.contains(";received=198.51.100.9"),
            "{c}"
        );
        format!("Via: {o}\r\nVia: {c}")
    });
    match run_from(quoted.as_bytes(), "127.0.0.1:7004").0 {
        Outcome::Relayed { dst, .. } => assert_eq!(dst, sa("198.51.100.9:6000")),
        other => panic!("{other:?}"),
    }
}
