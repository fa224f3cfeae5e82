//! RFC 4475 ("SIP Torture Test Messages") through the whole pipeline
//! (`route::process`), each with the outcome the RFC gives as this edge
//! sees it, and the edge's own cases for every component it reads.
//!
//! RFC 3261 §16.3 asks a proxy for "reasonable syntax" of what it uses:
//! - a valid message is forwarded (or routed per the edge's rules) with
//!   every byte the edge does not edit unchanged;
//! - an invalid one is answered `400` (`505`, `416`, `483`) naming the
//!   defect, echoing what it could not read as written (never a `received`
//!   or a tag spliced into it), or, a response, dropped and counted;
//! - a defect in a component the edge does not use (a Date, a Contact
//!   URI, headers in the Request-URI) is forwarded, as the RFC allows.
//!
//! The messages are the RFC's test vectors, transcribed (LF here, CRLF on
//! the wire: the RFC's messages end every line with CRLF).

mod common;
use common::*;
use cpm_edge::pipeline::{process, Outcome};
use cpm_edge::route::{DropReason, ForwardKind, Tables};
use cpm_edge::sip::scan::{header_lines, scan, Defect, Header};
use std::net::SocketAddr;
use std::sync::OnceLock;

const CLIENT: &str = "192.0.2.10:5062";
const SHARD: &str = "127.0.0.1:7001";
const NON_CPM: &str = "127.0.0.1:5080";
const EDGE_VIA: &[u8] = b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKcpe";
/// What the edge writes into the top Via of a request from [`CLIENT`] /
/// [`SHARD`] that has no `rport` (RFC 3581, forced).
const FROM_CLIENT: &str = ";rport=5062;received=192.0.2.10";
const FROM_SHARD: &str = ";rport=7001;received=127.0.0.1";

/// The default tables with a non-CPM route (the torture messages carry no
/// CPM feature tag) and a static host for `wsinv`'s Route.
fn t() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| {
        tables_with(
            "[routing]\nnon_cpm_route = \"127.0.0.1:5080\"\noriginating_pf = true\nrecord_route = true\n\n[hosts]\n\"services.example.com\" = \"127.0.0.1:5090\"\n",
        )
    })
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The message as sent: every LF of the transcription is a CRLF.
fn crlf(text: &str) -> Vec<u8> {
    text.replace('\n', "\r\n").into_bytes()
}

fn run_with(msg: &[u8], src: &str, t: &Tables) -> (Outcome, Vec<u8>) {
    let mut out = vec![0u8; 16384];
    let (o, _) = process(msg, false, sa(src), t, &mut out);
    let len = o.send().map_or(0, |(l, _)| l);
    out.truncate(len);
    (o, out)
}

fn run(msg: &[u8], src: &str) -> (Outcome, Vec<u8>) {
    run_with(msg, src, t())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `hay` with the one occurrence of `from` replaced by `to`.
fn replaced_once(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = find(hay, from).unwrap_or_else(|| panic!("{:?} not in {}", text(from), text(hay)));
    assert!(
        find(&hay[at + 1..], from).is_none(),
        "{:?} twice in {}",
        text(from),
        text(hay)
    );
    [&hay[..at], to, &hay[at + from.len()..]].concat()
}

/// A forward to `dst` as `kind` that is exactly the original start line,
/// our Via, the lines the edge puts in front (Route / Record-Route /
/// Max-Forwards only), the original header block with exactly `edits`
/// applied (each once), the blank line and the body as Content-Length
/// delimits it: every other byte as it came.
fn assert_forwarded(
    msg: &[u8],
    src: &str,
    dst: &str,
    kind: ForwardKind,
    edits: &[(&str, &str)],
) -> Vec<u8> {
    let (o, out) = run(msg, src);
    match o {
        Outcome::Forwarded {
            dst: d, kind: k, ..
        } => {
            assert_eq!((d, k), (sa(dst), kind), "{}", text(&out));
        }
        other => panic!("not forwarded: {other:?}\n{}", text(&out)),
    }
    let m = scan(msg);
    assert_eq!(m.defect, None);
    let start = m.start_line.get(msg);
    let mut block = msg[m.headers.start as usize..m.headers.end as usize].to_vec();
    for (from, to) in edits {
        block = replaced_once(&block, from.as_bytes(), to.as_bytes());
    }
    assert!(
        out.starts_with(&[start, b"\r\n"].concat()),
        "{}",
        text(&out)
    );
    let rest = &out[start.len() + 2..];
    let via_end = find(rest, b"\r\n").unwrap();
    assert!(rest.starts_with(EDGE_VIA), "{}", text(&out));
    assert_eq!(via_end, EDGE_VIA.len() + 24, "{}", text(&out));
    let tail = [&block[..], b"\r\n", m.body.get(msg)].concat();
    assert!(
        rest.ends_with(&tail),
        "want the original headers + body:\n{}\ngot:\n{}",
        text(&tail),
        text(&out)
    );
    let pushed = &rest[via_end + 2..rest.len() - tail.len()];
    for line in text(pushed).split_terminator("\r\n") {
        assert!(
            ["Route: ", "Record-Route: ", "Max-Forwards: "]
                .iter()
                .any(|p| line.starts_with(p)),
            "{line}"
        );
    }
    assert_eq!(scan(&out).defect, None, "{}", text(&out));
    out
}

/// A stateless answer `line` sent back to `src`, every line ended by CRLF,
/// echoing the request's Via, From, To, Call-ID and CSeq lines: the top
/// Via marked if it parsed and as written if not, a To-tag added only to a
/// To that parsed, the rest byte for byte.
fn assert_answered(msg: &[u8], src: &str, line: &str) -> Vec<u8> {
    let (o, out) = run(msg, src);
    match o {
        Outcome::Replied { dst, code, .. } => {
            assert_eq!(dst, sa(src));
            assert_eq!(code.to_string(), line[8..11]);
        }
        other => panic!("not answered: {other:?}"),
    }
    assert!(
        out.starts_with(format!("{line}\r\n").as_bytes()),
        "{}",
        text(&out)
    );
    assert!(out.ends_with(b"\r\n\r\n"));
    for (i, b) in out.iter().enumerate() {
        match b {
            b'\n' => assert!(i > 0 && out[i - 1] == b'\r', "bare LF: {}", text(&out)),
            b'\r' => assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR: {}", text(&out)),
            _ => {}
        }
    }
    let m = scan(msg);
    let mut first_via = true;
    for h in header_lines(msg, m.headers) {
        let l = h.line.get(msg);
        let l = l.strip_suffix(b"\r\n").unwrap_or(l);
        match h.kind {
            Header::Via if first_via => {
                first_via = false;
                if m.top_via.is_none() {
                    assert!(
                        find(&out, l).is_some(),
                        "Via not as written: {}",
                        text(&out)
                    );
                }
            }
            Header::To if m.to_tag.is_none() => {
                let echoed = find(&out, l).is_some();
                if m.to_uri.is_empty() && !h.value.is_empty() {
                    let alone = find(&out, &[l, b"\r\n"].concat()).is_some();
                    assert!(alone, "a tag spliced into {}: {}", text(l), text(&out));
                } else {
                    assert!(echoed, "{}", text(&out));
                }
            }
            Header::Via | Header::From | Header::To | Header::CallId | Header::CSeq => {
                assert!(
                    find(&out, l).is_some(),
                    "{} not echoed: {}",
                    text(l),
                    text(&out)
                );
            }
            _ => {}
        }
    }
    out
}

fn assert_400(msg: &[u8], src: &str, reason: &str) -> Vec<u8> {
    assert_answered(msg, src, &format!("SIP/2.0 400 Bad Request - {reason}"))
}

fn assert_dropped(msg: &[u8], src: &str, reason: DropReason) {
    let (o, out) = run(msg, src);
    assert_eq!(o, Outcome::Dropped(reason), "{}", text(&out));
}

/// The forwarded request's Via lines, ours first.
fn vias(fwd: &[u8]) -> Vec<String> {
    header(&text(fwd), "Via")
        .into_iter()
        .map(str::to_string)
        .collect()
}

/// A response to the forwarded request `fwd` (from the non-CPM route) with
/// status line `status`, the Via lines written by `via_lines(vias)`, and
/// the dialog headers of the RFC's response messages.
fn response_to(fwd: &[u8], status: &[u8], via_lines: impl Fn(&[String]) -> String) -> Vec<u8> {
    let f = text(fwd);
    let keep = [
        header(&f, "From")[0].to_string(),
        format!("{};tag=2229", header(&f, "To")[0]),
        header(&f, "Call-ID")[0].to_string(),
        header(&f, "CSeq")[0].to_string(),
    ]
    .join("\r\n");
    [
        status,
        b"\r\n",
        via_lines(&vias(fwd)).as_bytes(),
        b"\r\n",
        keep.as_bytes(),
        b"\r\nContent-Length: 0\r\n\r\n",
    ]
    .concat()
}

// ----------------------------------------------- §3.1.1 valid messages

/// Folding everywhere, LWS around every separator, a mix of compact and
/// long names in odd case, leading zeros, an unknown header with a value
/// that would be invalid as generic-param: all forwarded as written. Its
/// Route (not the edge) is the next hop, which a shard may choose.
#[test]
fn wsinv_short_tortuous_invite() {
    let msg = crlf(WSINV);
    let m = scan(&msg);
    assert_eq!(m.defect, None);
    assert_eq!(m.from_tag.unwrap().get(&msg), b"98asjd8");
    assert_eq!(m.to_tag.unwrap().get(&msg), b"1918181833n");
    assert_eq!(m.cseq_num, 9);
    assert_eq!(m.via_count, 3);
    assert_eq!(m.top_via.unwrap().host.get(&msg), b"192.0.2.2");
    assert_forwarded(
        &msg,
        SHARD,
        "127.0.0.1:5090",
        ForwardKind::LooseRoute,
        &[
            ("MaX-fOrWaRdS: 0068", "MaX-fOrWaRdS: 67"),
            (
                "branch=390skdjuw\r\n",
                &format!("branch=390skdjuw{FROM_SHARD}\r\n"),
            ),
        ],
    );
    // From a client the same Route is a next hop it may not choose.
    assert_answered(&msg, CLIENT, "SIP/2.0 403 Forbidden - Not Relaying");
}

/// Token characters in the method, branch and tags, a user part holding
/// `;`, `?` and `,`, quoted-pairs escaping BEL, NUL and DEL (a NUL the
/// edge must not take for a truncation), UTF-8 in a parameter and in an
/// extension header: forwarded (an unknown method is routed like any).
#[test]
fn intmeth_wide_range_of_valid_characters() {
    let msg = INTMETH.replace('\n', "\r\n").into_bytes();
    let m = scan(&msg);
    assert_eq!(m.defect, None);
    assert_eq!(m.from_tag.unwrap().get(&msg), b"_token~1'+`*%!-.");
    assert_eq!(
        m.call_id.get(&msg),
        br#"intmeth.word%ZK-!.*_+'@word`~)(><:\/"][?}{"#
    );
    assert_forwarded(
        &msg,
        CLIENT,
        NON_CPM,
        ForwardKind::NonCpm,
        &[
            ("Max-Forwards: 255", "Max-Forwards: 69"),
            ("`'~\r\nTo:", &format!("`'~{FROM_CLIENT}\r\nTo:")),
        ],
    );
}

/// `%HH` escapes in the Request-URI, To, From and Contact: forwarded as
/// written (identities are compared in their wire form).
#[test]
fn esc01_valid_use_of_the_percent_escaping_mechanism() {
    let msg = crlf(ESC01);
    assert_forwarded(
        &msg,
        CLIENT,
        NON_CPM,
        ForwardKind::NonCpm,
        &[
            ("Max-Forwards: 87", "Max-Forwards: 69"),
            (
                "z9hG4bKkdjuw\r\n",
                &format!("z9hG4bKkdjuw{FROM_CLIENT}\r\n"),
            ),
        ],
    );
}

#[test]
fn escnull_escaped_nulls_in_uris() {
    let msg = crlf(ESCNULL);
    assert_forwarded(
        &msg,
        CLIENT,
        NON_CPM,
        ForwardKind::NonCpm,
        &[
            ("Max-Forwards: 70", "Max-Forwards: 69"),
            (
                "z9hG4bKkdjuw\r\n",
                &format!("z9hG4bKkdjuw{FROM_CLIENT}\r\n"),
            ),
        ],
    );
}

/// `RE%47IST%45R` is an unknown method, not REGISTER; `%` in a branch and
/// in a quoted display name is no escape.
#[test]
fn esc02_percent_when_it_is_not_an_escape() {
    let msg = crlf(ESC02);
    let m = scan(&msg);
    assert_eq!(m.method(), Some(cpm_edge::sip::scan::Method::Other));
    assert_forwarded(
        &msg,
        CLIENT,
        NON_CPM,
        ForwardKind::NonCpm,
        &[
            ("Max-Forwards: 70", "Max-Forwards: 69"),
            (
                "branch=z9hG4bK209%fzsnel234\r\n",
                &format!("branch=z9hG4bK209%fzsnel234{FROM_CLIENT}\r\n"),
            ),
        ],
    );
}

/// `From: caller<sip:...>`: no LWS between the display name and `<`
/// (an RFC 3261 grammar bug; "elements should accept this").
#[test]
fn lwsdisp_no_lws_between_display_name_and_angle() {
    let msg = crlf(LWSDISP);
    assert_eq!(scan(&msg).from_uri.get(&msg), b"sip:caller@example.com");
    assert_forwarded(
        &msg,
        CLIENT,
        NON_CPM,
        ForwardKind::NonCpm,
        &[
            ("Max-Forwards: 70", "Max-Forwards: 69"),
            (
                "z9hG4bKkdjuw\r\n",
                &format!("z9hG4bKkdjuw{FROM_CLIENT}\r\n"),
            ),
        ],
    );
}

/// Long display names, parameters, tags, Call-ID, branch and header
/// names, and 34 Via lines in every spelling of the name.
#[test]
fn longreq_long_values_in_header_fields() {
    let msg = crlf(LONGREQ);
    let m = scan(&msg);
    assert_eq!(m.defect, None);
    assert_eq!(m.top_via.unwrap().host.get(&msg), b"sip33.example.com");
    assert_forwarded(
        &msg,
        CLIENT,
        NON_CPM,
        ForwardKind::NonCpm,
        &[
            ("Max-Forwards: 70", "Max-Forwards: 69"),
            (
                "Via: SIP/2.0/TCP sip33.example.com\r\n",
                &format!("Via: SIP/2.0/TCP sip33.example.com{FROM_CLIENT}\r\n"),
            ),
        ],
    );
}

/// A REGISTER with Content-Length 0 and an INVITE after it in the same
/// datagram: the INVITE is noise (RFC 3261 §18.3) and is not forwarded.
#[test]
fn dblreq_extra_trailing_octets_in_a_udp_datagram() {
    let msg = crlf(DBLREQ);
    let out = assert_forwarded(
        &msg,
        CLIENT,
        NON_CPM,
        ForwardKind::NonCpm,
        &[
            ("Max-Forwards: 8", "Max-Forwards: 7"),
            (
                "z9hG4bKkdjuw23492\r\n",
                &format!("z9hG4bKkdjuw23492{FROM_CLIENT}\r\n"),
            ),
        ],
    );
    assert!(out.ends_with(b"Content-Length: 0\r\n\r\n"));
    assert!(find(&out, b"INVITE").is_none());
}

/// `sip:user;par=u%40example.net@example.com`: the user part is
/// `user;par=u%40example.net`, the host `example.com`.
#[test]
fn semiuri_semicolon_separated_parameters_in_the_user_part() {
    let msg = crlf(SEMIURI);
    let m = scan(&msg);
    let uri = cpm_edge::sip::uri::parse(&msg, m.start_line.sub(8, 48)).unwrap();
    assert_eq!(uri.user.get(&msg), b"user;par=u%40example.net");
    assert_eq!(uri.host.get(&msg), b"example.com");
    assert_forwarded(
        &msg,
        CLIENT,
        NON_CPM,
        ForwardKind::NonCpm,
        &[
            ("Max-Forwards: 3", "Max-Forwards: 2"),
            (
                "z9hG4bKkdjuw\r\n",
                &format!("z9hG4bKkdjuw{FROM_CLIENT}\r\n"),
            ),
        ],
    );
}

/// Via values with SCTP, TLS and an unknown transport below the top one.
#[test]
fn transports_varied_and_unknown_transport_types() {
    let msg = crlf(TRANSPORTS);
    assert_forwarded(
        &msg,
        CLIENT,
        NON_CPM,
        ForwardKind::NonCpm,
        &[
            ("Max-Forwards: 70", "Max-Forwards: 69"),
            (
                "t1.example.com;branch=z9hG4bKkdjuw\r\n",
                &format!("t1.example.com;branch=z9hG4bKkdjuw{FROM_CLIENT}\r\n"),
            ),
        ],
    );
}

/// A multipart body with a binary part, byte for byte; its Route (the
/// non-CPM route's address) is a next hop a shard may choose.
#[test]
fn mpart01_multipart_mime_message() {
    let msg = [
        crlf(MPART01_TEXT),
        MPART01_BINARY.to_vec(),
        crlf(MPART01_TAIL),
    ]
    .concat();
    assert_eq!(msg.len(), 1290);
    assert_eq!(scan(&msg).body.len(), 553);
    assert_forwarded(
        &msg,
        SHARD,
        NON_CPM,
        ForwardKind::LooseRoute,
        &[
            ("Max-Forwards: 70", "Max-Forwards: 69"),
            (
                "-d87543-;rport\r\n",
                "-d87543-;rport=7001;received=127.0.0.1\r\n",
            ),
        ],
    );
}

/// The RFC's response with a UTF-8 reason phrase parses (its Vias are not
/// ours: dropped as not ours, not as malformed); the same status line on
/// a response to a request the edge forwarded is relayed byte for byte.
#[test]
fn unreason_unusual_reason_phrase() {
    let msg = crlf(UNREASON);
    assert_eq!(scan(&msg).defect, None);
    assert_dropped(&msg, NON_CPM, DropReason::ResponseNotOurs);
    let status = &msg[..find(&msg, b"\r\n").unwrap()];
    relayed_as_is(status);
}

#[test]
fn noreason_empty_reason_phrase() {
    let msg = NOREASON.replace('\n', "\r\n").into_bytes();
    assert_eq!(scan(&msg).defect, None);
    assert_dropped(&msg, NON_CPM, DropReason::ResponseNotOurs);
    relayed_as_is(b"SIP/2.0 100 ");
}

/// A response with status line `status` to a request the edge forwarded
/// goes back to the client with our Via removed and nothing else changed.
fn relayed_as_is(status: &[u8]) {
    let fwd = assert_forwarded(
        &crlf(LWSDISP),
        CLIENT,
        NON_CPM,
        ForwardKind::NonCpm,
        &[
            ("Max-Forwards: 70", "Max-Forwards: 69"),
            (
                "z9hG4bKkdjuw\r\n",
                &format!("z9hG4bKkdjuw{FROM_CLIENT}\r\n"),
            ),
        ],
    );
    let resp = response_to(&fwd, status, |v| v.join("\r\n"));
    let (o, out) = run(&resp, NON_CPM);
    assert!(
        matches!(o, Outcome::Relayed { dst, .. } if dst == sa(CLIENT)),
        "{o:?}"
    );
    let ours = format!("{}\r\n", vias(&fwd)[0]);
    assert_eq!(out, replaced_once(&resp, ours.as_bytes(), b""));
}

// --------------------------------------------- §3.1.2 invalid messages

/// `Via: SIP/2.0/UDP 192.0.2.15;;,;,,`: empty parameters and values. The
/// edge answers 400 and echoes the Via as written: no `received` or
/// `rport` spliced into a value it could not read (it did so before).
/// The Contact's `;;;;` is not the edge's business.
#[test]
fn badinv01_extraneous_header_field_separators() {
    let msg = crlf(BADINV01);
    assert_eq!(scan(&msg).defect, Some(Defect::BadVia));
    let out = assert_400(&msg, CLIENT, "Malformed Via");
    assert_eq!(
        header(&text(&out), "Via"),
        ["Via: SIP/2.0/UDP 192.0.2.15;;,;,,"]
    );
}

#[test]
fn clerr_content_length_larger_than_message() {
    assert_400(&crlf(CLERR), CLIENT, "Content-Length Exceeds Body");
}

#[test]
fn ncl_negative_content_length() {
    assert_400(&crlf(NCL), CLIENT, "Malformed Content-Length");
}

/// A CSeq of 2^65 is answered 400 (a Max-Forwards of 300 alone would
/// only be lowered; the Expires values are not the edge's).
#[test]
fn scalar02_request_scalar_fields_with_overlarge_values() {
    assert_400(&crlf(SCALAR02), CLIENT, "Malformed CSeq");
}

#[test]
fn scalarlg_response_scalar_fields_with_overlarge_values() {
    assert_dropped(&crlf(SCALARLG), SHARD, DropReason::MalformedResponse);
}

/// `To: "Mr. J. User <sip:j.user@example.com>`: 400, and the answer's To
/// is the request's as written (a tag after it would land inside the
/// open quote).
#[test]
fn quotbal_unterminated_quoted_string_in_display_name() {
    let out = assert_400(&crlf(QUOTBAL), CLIENT, "Malformed To");
    assert_eq!(
        header(&text(&out), "To"),
        ["To: \"Mr. J. User <sip:j.user@example.com>"]
    );
}

#[test]
fn ltgtruri_angle_brackets_enclosing_the_request_uri() {
    assert_400(&crlf(LTGTRURI), CLIENT, "Malformed Request-URI");
}

#[test]
fn lwsruri_embedded_lws_in_the_request_uri() {
    assert_400(&crlf(LWSRURI), CLIENT, "Malformed Start Line");
}

#[test]
fn lwsstart_multiple_sp_separating_request_line_elements() {
    assert_400(&crlf(LWSSTART), CLIENT, "Malformed Start Line");
}

#[test]
fn trws_sp_at_the_end_of_the_request_line() {
    let msg = TRWS.replace('\n', "\r\n").into_bytes();
    assert_400(&msg, CLIENT, "Malformed Start Line");
}

/// Headers in a Request-URI are not allowed there (RFC 3261 Table 1),
/// but the edge routes on the host and never acts on them: forwarded as
/// written, as the RFC lets a liberal element do.
#[test]
fn escruri_escaped_headers_in_the_request_uri() {
    let msg = crlf(ESCRURI);
    let out = assert_forwarded(
        &msg,
        CLIENT,
        NON_CPM,
        ForwardKind::NonCpm,
        &[
            ("Max-Forwards: 7", "Max-Forwards: 6"),
            (
                "z9hG4bKkdjuw\r\n",
                &format!("z9hG4bKkdjuw{FROM_CLIENT}\r\n"),
            ),
        ],
    );
    assert!(out.starts_with(b"INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0\r\n"));
}

/// The Date is not the edge's business: forwarded unchanged.
#[test]
fn baddate_invalid_time_zone_in_date() {
    let out = assert_forwarded(
        &crlf(BADDATE),
        CLIENT,
        NON_CPM,
        ForwardKind::NonCpm,
        &[
            ("Max-Forwards: 70", "Max-Forwards: 69"),
            (
                "z9hG4bKkdjuw\r\n",
                &format!("z9hG4bKkdjuw{FROM_CLIENT}\r\n"),
            ),
        ],
    );
    assert!(find(&out, b"Date: Fri, 01 Jan 2010 16:00:00 EST\r\n").is_some());
}

/// A Contact URI with headers outside `<>`: the edge reads a Contact only
/// for its feature tags, so the rest is forwarded as written.
#[test]
fn regbadct_name_addr_uri_not_enclosed_in_angles() {
    assert_forwarded(
        &crlf(REGBADCT),
        CLIENT,
        NON_CPM,
        ForwardKind::NonCpm,
        &[
            ("Max-Forwards: 70", "Max-Forwards: 69"),
            (
                "z9hG4bKkdjuw\r\n",
                &format!("z9hG4bKkdjuw{FROM_CLIENT}\r\n"),
            ),
        ],
    );
}

/// `To: "Watson, Thomas" < sip:t.watson@example.org >`.
#[test]
fn badaspec_spaces_within_addr_spec() {
    let out = assert_400(&crlf(BADASPEC), CLIENT, "Malformed To");
    assert_eq!(
        header(&text(&out), "To"),
        ["To: \"Watson, Thomas\" < sip:t.watson@example.org >"]
    );
}

/// `From: Bell, Alexander <...>`: a comma is no token character, and the
/// edge never forwards a guess at the missing quotes.
#[test]
fn baddn_non_token_characters_in_display_name() {
    assert_400(&crlf(BADDN), CLIENT, "Malformed From");
}

/// `SIP/7.0`: 505, its `SIP/7.0/UDP` Via echoed as written.
#[test]
fn badvers_unknown_protocol_version() {
    let out = assert_answered(&crlf(BADVERS), CLIENT, "SIP/2.0 505 Version Not Supported");
    assert_eq!(
        header(&text(&out), "Via"),
        ["Via:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw"]
    );
}

#[test]
fn mismatch01_start_line_and_cseq_method_mismatch() {
    assert_400(&crlf(MISMATCH01), CLIENT, "CSeq Method Does Not Match");
}

/// An unknown method whose CSeq names another: 400 (the RFC prefers 501
/// at a proxy but allows 400; this edge answers the mismatch it sees).
#[test]
fn mismatch02_unknown_method_with_cseq_method_mismatch() {
    assert_400(&crlf(MISMATCH02), CLIENT, "CSeq Method Does Not Match");
}

#[test]
fn bigcode_overlarge_response_code() {
    assert_dropped(&crlf(BIGCODE), SHARD, DropReason::MalformedResponse);
}

// ------------------------------------------ §3.2 transaction layer

/// `branch=z9hG4bK` with nothing after the cookie: a token, so the edge
/// forwards it (the RFC allows falling back to RFC 2543 matching; the
/// edge's own branch covers Call-ID, CSeq and sent-by as well).
#[test]
fn badbranch_missing_transaction_identifier() {
    assert_forwarded(
        &crlf(BADBRANCH),
        CLIENT,
        NON_CPM,
        ForwardKind::NonCpm,
        &[
            ("Max-Forwards: 3", "Max-Forwards: 2"),
            ("z9hG4bK\r\n", &format!("z9hG4bK{FROM_CLIENT}\r\n")),
        ],
    );
}

// ----------------------------------------- §3.3 application layer

/// No Call-ID, From, To or Max-Forwards: 400 naming the first missing.
#[test]
fn insuf_missing_required_header_fields() {
    assert_400(&crlf(INSUF), CLIENT, "Missing From");
}

#[test]
fn unkscm_request_uri_with_unknown_scheme() {
    assert_answered(&crlf(UNKSCM), CLIENT, "SIP/2.0 416 Unsupported URI Scheme");
}

#[test]
fn novelsc_request_uri_with_known_but_atypical_scheme() {
    assert_answered(&crlf(NOVELSC), CLIENT, "SIP/2.0 416 Unsupported URI Scheme");
}

/// `isbn:`, `http:` and `name:` URIs in To, From and Contact are well
/// formed: a proxy forwards the REGISTER.
#[test]
fn unksm2_unknown_uri_schemes_in_header_fields() {
    let msg = crlf(UNKSM2);
    assert_eq!(scan(&msg).from_uri.get(&msg), b"http://www.example.com");
    assert_forwarded(
        &msg,
        CLIENT,
        NON_CPM,
        ForwardKind::NonCpm,
        &[
            ("Max-Forwards: 70", "Max-Forwards: 69"),
            (
                "z9hG4bKkdjuw\r\n",
                &format!("z9hG4bKkdjuw{FROM_CLIENT}\r\n"),
            ),
        ],
    );
}

/// Require and Proxy-Require with option tags nobody supports. RFC 3261
/// §16.3 step 4 has a proxy answer an unknown Proxy-Require with 420; this
/// edge does not read Proxy-Require (yet) and forwards both unchanged.
#[test]
fn bext01_proxy_require_and_require_are_forwarded_unread() {
    let out = assert_forwarded(
        &crlf(BEXT01),
        CLIENT,
        NON_CPM,
        ForwardKind::NonCpm,
        &[
            ("Max-Forwards: 6", "Max-Forwards: 5"),
            (
                "z9hG4bKkdjuw\r\n",
                &format!("z9hG4bKkdjuw{FROM_CLIENT}\r\n"),
            ),
        ],
    );
    assert!(find(
        &out,
        b"Proxy-Require: noProxiesSupportThis, norDoAnyProxiesSupportThis\r\n"
    )
    .is_some());
}

#[test]
fn invut_unknown_content_type() {
    assert_forwarded(
        &crlf(INVUT),
        CLIENT,
        NON_CPM,
        ForwardKind::NonCpm,
        &[
            ("Max-Forwards: 70", "Max-Forwards: 69"),
            (
                "z9hG4bKkdjuw\r\n",
                &format!("z9hG4bKkdjuw{FROM_CLIENT}\r\n"),
            ),
        ],
    );
}

/// An unknown Authorization scheme is forwarded unmodified.
#[test]
fn regaut01_unknown_authorization_scheme() {
    let out = assert_forwarded(
        &crlf(REGAUT01),
        CLIENT,
        NON_CPM,
        ForwardKind::NonCpm,
        &[
            ("Max-Forwards: 8", "Max-Forwards: 7"),
            (
                "z9hG4bKkdjuw\r\n",
                &format!("z9hG4bKkdjuw{FROM_CLIENT}\r\n"),
            ),
        ],
    );
    assert!(find(
        &out,
        b"Authorization: NoOneKnowsThisScheme opaque-data=here\r\n"
    )
    .is_some());
}

/// Two each of CSeq, Call-ID, To, From and Max-Forwards: 400 naming the
/// first duplicate in header order.
#[test]
fn multi01_multiple_values_in_single_value_fields() {
    assert_400(&crlf(MULTI01), CLIENT, "Duplicate CSeq");
}

#[test]
fn mcl01_multiple_content_length_values() {
    assert_400(&crlf(MCL01), CLIENT, "Conflicting Content-Length");
}

/// The RFC's response parses (its top Via is not ours); a response whose
/// second Via was turned into a broadcast sent-by, after ours, is never
/// relayed there: the next hop is part of our branch's MAC.
#[test]
fn bcast_response_with_broadcast_via() {
    let msg = crlf(BCAST);
    assert_eq!(scan(&msg).defect, None);
    assert_dropped(&msg, NON_CPM, DropReason::ResponseNotOurs);
    let fwd = assert_forwarded(
        &crlf(LWSDISP),
        CLIENT,
        NON_CPM,
        ForwardKind::NonCpm,
        &[
            ("Max-Forwards: 70", "Max-Forwards: 69"),
            (
                "z9hG4bKkdjuw\r\n",
                &format!("z9hG4bKkdjuw{FROM_CLIENT}\r\n"),
            ),
        ],
    );
    let resp = response_to(&fwd, b"SIP/2.0 200 OK", |v| {
        format!(
            "{}\r\nVia: SIP/2.0/UDP 255.255.255.255;branch=z9hG4bK1saber23",
            v[0]
        )
    });
    assert_dropped(&resp, NON_CPM, DropReason::ResponseForged);
}

#[test]
fn zeromf_max_forwards_of_zero() {
    assert_answered(&crlf(ZEROMF), CLIENT, "SIP/2.0 483 Too Many Hops");
}

#[test]
fn cparam01_register_with_a_contact_header_parameter() {
    assert_forwarded(
        &crlf(CPARAM01),
        CLIENT,
        NON_CPM,
        ForwardKind::NonCpm,
        &[
            ("Max-Forwards: 70", "Max-Forwards: 69"),
            (
                "z9hG4bKkdjuw\r\n",
                &format!("z9hG4bKkdjuw{FROM_CLIENT}\r\n"),
            ),
        ],
    );
}

#[test]
fn cparam02_register_with_a_url_parameter() {
    assert_forwarded(
        &crlf(CPARAM02),
        CLIENT,
        NON_CPM,
        ForwardKind::NonCpm,
        &[
            ("Max-Forwards: 70", "Max-Forwards: 69"),
            (
                "z9hG4bKkdjuw\r\n",
                &format!("z9hG4bKkdjuw{FROM_CLIENT}\r\n"),
            ),
        ],
    );
}

#[test]
fn regescrt_register_with_a_url_escaped_header() {
    assert_forwarded(
        &crlf(REGESCRT),
        CLIENT,
        NON_CPM,
        ForwardKind::NonCpm,
        &[
            ("Max-Forwards: 70", "Max-Forwards: 69"),
            (
                "z9hG4bKkdjuw\r\n",
                &format!("z9hG4bKkdjuw{FROM_CLIENT}\r\n"),
            ),
        ],
    );
}

/// An Accept nobody can meet is the UA's business: forwarded.
#[test]
fn sdp01_unacceptable_accept_offering() {
    assert_forwarded(
        &crlf(SDP01),
        CLIENT,
        NON_CPM,
        ForwardKind::NonCpm,
        &[
            ("Max-Forwards: 5", "Max-Forwards: 4"),
            (
                "z9hG4bKkdjuw\r\n",
                &format!("z9hG4bKkdjuw{FROM_CLIENT}\r\n"),
            ),
        ],
    );
}

// ---------------------------------------- §3.4 backward compatibility

/// No branch, no From tag, no Content-Length (the body is the rest of the
/// datagram), no Max-Forwards (inserted).
#[test]
fn inv2543_invite_with_rfc_2543_syntax() {
    let msg = crlf(INV2543);
    let out = assert_forwarded(
        &msg,
        CLIENT,
        NON_CPM,
        ForwardKind::NonCpm,
        &[(
            "Via: SIP/2.0/UDP iftgw.example.com\r\n",
            &format!("Via: SIP/2.0/UDP iftgw.example.com{FROM_CLIENT}\r\n"),
        )],
    );
    assert_eq!(header(&text(&out), "Max-Forwards"), ["Max-Forwards: 70"]);
    assert!(out.ends_with(b"m=audio 49217 RTP/AVP 0\r\n"));
}

// ------------------------------------------- the edge's own cases

fn invite(extra: &str) -> Vec<u8> {
    invite_to_group("grp2", "alice", extra)
}

/// `invite("")` with `from` (which must occur once) replaced by `to`.
fn invite_with(from: &str, to: &str) -> Vec<u8> {
    replaced_once(&invite(""), from.as_bytes(), to.as_bytes())
}

/// Forwarded to the inviting user's participating function.
fn assert_cpm_forwarded(msg: &[u8]) -> Vec<u8> {
    let (o, out) = run(msg, CLIENT);
    assert!(
        matches!(
            o,
            Outcome::Forwarded {
                kind: ForwardKind::OriginatingPf,
                ..
            }
        ),
        "{o:?}\n{}",
        text(msg)
    );
    assert_eq!(scan(&out).defect, None, "{}", text(&out));
    out
}

#[test]
fn request_uri() {
    for ruri in [
        "sip:grp2@groups.example.net;transport=udp;lr",
        "sips:grp2@groups.example.net:5061",
        "sip:grp2@[2001:db8::1]",
        "sip:grp%32@groups.example.net",
        "sip:g;r=p?,/@groups.example.net",
        "tel:+1-555-0100;phone-context=example.net",
        "sip:grp2@groups.example.net?Subject=hi&Priority=urgent",
    ] {
        let msg = invite_with("sip:grp2@groups.example.net SIP", &format!("{ruri} SIP"));
        let out = assert_cpm_forwarded(&msg);
        assert!(out.starts_with(format!("INVITE {ruri} SIP/2.0\r\n").as_bytes()));
    }
    for ruri in [
        "sip:grp2@groups_example.net",
        "sip:grp2@groups.example.net;",
        "sip:grp2@groups.example.net;=x",
        "sip:grp2@groups.example.net;lr=",
        "sip:gr%2@groups.example.net",
        "sip:grp2@groups.example.net?Subject",
        "sip:grp2@groups.example.net>",
        "sip:@groups.example.net",
        "sip:a@b@groups.example.net",
        "sip:grp2@[2001:db8::zz]",
        "sip:grp2@groups.example.net:0",
        "1sip:grp2@groups.example.net",
    ] {
        let msg = invite_with("sip:grp2@groups.example.net SIP", &format!("{ruri} SIP"));
        assert_400(&msg, CLIENT, "Malformed Request-URI");
    }
}

/// The known bug: a top Via with an empty parameter got `received`
/// spliced into it. Each malformed top Via is answered 400 with the line
/// echoed as written.
#[test]
fn via() {
    let good = "Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-alice-1;rport";
    for bad in [
        "Via: SIP/2.0/UDP 192.0.2.1;;branch=z9hG4bK1",
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1;",
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1 ;",
        "Via: SIP/2.0/UDP 192.0.2.1;branch",
        "Via: SIP/2.0/UDP 192.0.2.1;branch=",
        "Via: SIP/2.0/UDP 192.0.2.1;branch=\"z9hG4bK1\"",
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1;received=client.example.net",
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1;rport=x",
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1;x=a=b",
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1;x=\"open",
        "Via: SIP/2.0/UDP ho$t;branch=z9hG4bK1",
        "Via: SIP/2.0/UDP 192.0.2.1:99999;branch=z9hG4bK1",
        "Via: SIP/2.0/UDP [2001:db8::zz];branch=z9hG4bK1",
        "Via: SIP/2.0/UDP192.0.2.1;branch=z9hG4bK1",
        "Via: SIP/2.0/UDP 192.0.2.1 x;branch=z9hG4bK1",
        "Via: , SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1",
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1,",
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1,, SIP/2.0/UDP 10.0.0.1",
        "Via: SIP/2.0 UDP 192.0.2.1;branch=z9hG4bK1",
    ] {
        let msg = invite_with(good, bad);
        let out = assert_400(&msg, CLIENT, "Malformed Via");
        assert_eq!(header(&text(&out), "Via"), [bad], "{bad}");
    }
    for (ok, edited) in [
        (
            "Via: SIP/2.0/UDP 192.0.2.10:5062 ; branch = z9hG4bK1 ; rport",
            "Via: SIP/2.0/UDP 192.0.2.10:5062 ; branch = z9hG4bK1 ; rport=5062;received=192.0.2.10",
        ),
        (
            "Via: sip / 2.0 / udp [2001:db8::1]:5062;branch=z9hG4bK1;x=\"a;b\\\"c\"",
            "Via: sip / 2.0 / udp [2001:db8::1]:5062;branch=z9hG4bK1;x=\"a;b\\\"c\";rport=5062;received=192.0.2.10",
        ),
        (
            "Via: SIP/2.0/UDP 192.0.2.10;received=2001:db8::9;rport=1;maddr=[2001:db8::2];ttl=1",
            "Via: SIP/2.0/UDP 192.0.2.10;received=192.0.2.10;rport=5062;maddr=[2001:db8::2];ttl=1",
        ),
    ] {
        let msg = invite_with(good, ok);
        let out = assert_cpm_forwarded(&msg);
        assert_eq!(header(&text(&out), "Via")[1], edited);
    }
}

#[test]
fn from_and_to() {
    let from = "From: <sip:alice@example.net>;tag=a73kszlfl";
    for ok in [
        "From: \"Alice \\\"A\\\" \\\\ Smith\" <sip:alice@example.net>;tag=a73kszlfl",
        "From: \"Zo\u{eb} \u{65e5}\u{672c}\" <sip:alice@example.net>;tag=a73kszlfl",
        "From: \"ctl \\\x01 \\\x7f\" <sip:alice@example.net>;tag=a73kszlfl",
        "From: Alice A. Smith <sip:alice@example.net>;tag=a73kszlfl",
        "From: Alice<sip:alice@example.net>;tag=a73kszlfl",
        "From: sip:alice@example.net;tag=a73kszlfl",
        "From: <sip:alice@example.net> ; TAG = a73kszlfl ; x ; y=\"z;w\"",
        "From: <sip:alice@example.net>;x=[2001:db8::1];tag=a73kszlfl",
    ] {
        let msg = invite_with(from, ok);
        let m = scan(&msg);
        assert_eq!(m.from_uri.get(&msg), b"sip:alice@example.net", "{ok}");
        assert_eq!(m.from_tag.unwrap().get(&msg), b"a73kszlfl", "{ok}");
        let out = assert_cpm_forwarded(&msg);
        assert!(find(&out, format!("{ok}\r\n").as_bytes()).is_some());
    }
    for bad in [
        "From: \"Alice <sip:alice@example.net>;tag=a73kszlfl",
        "From: \"Alice\\\u{e9}\" <sip:alice@example.net>;tag=a73kszlfl",
        "From: Smith, Alice <sip:alice@example.net>;tag=a73kszlfl",
        "From: < sip:alice@example.net>;tag=a73kszlfl",
        "From: <sip:alice@example.net >;tag=a73kszlfl",
        "From: <sip:alice@example.net>x;tag=a73kszlfl",
        "From: <sip:alice@example.net>;tag=",
        "From: <sip:alice@example.net>;tag=\"a73kszlfl\"",
        "From: <sip:alice@example.net>;;tag=a73kszlfl",
        "From: <sip:alice@example.net>;tag=a73kszlfl;",
        "From: <sip:alice@example.net;tag=a73kszlfl",
        "From: sip:alice@example.net?x=y;tag=a73kszlfl",
        "From: <sip:alice@exa mple.net>;tag=a73kszlfl",
        "From: <>;tag=a73kszlfl",
        "From: \"Alice\"",
    ] {
        let msg = invite_with(from, bad);
        assert_400(&msg, CLIENT, "Malformed From");
    }
    let to = "To: <sip:grp2@groups.example.net>";
    for bad in [
        "To: \"Group <sip:grp2@groups.example.net>",
        "To: Group, 2 <sip:grp2@groups.example.net>",
        "To: <sip:grp2@groups.example.net>;tag=x;tag",
    ] {
        let msg = invite_with(to, bad);
        let out = assert_400(&msg, CLIENT, "Malformed To");
        // Echoed as written: no tag spliced into what did not parse.
        assert_eq!(header(&text(&out), "To"), [bad], "{bad}");
    }
    // A To that parses gets its tag in the answer.
    let msg = invite_with("CSeq: 1 INVITE", "CSeq: x INVITE");
    let out = assert_400(&msg, CLIENT, "Malformed CSeq");
    assert!(header(&text(&out), "To")[0].starts_with("To: <sip:grp2@groups.example.net>;tag="));
}

#[test]
fn call_id() {
    let call_id = "Call-ID: alice-call-1@192.0.2.10";
    for ok in [
        "Call-ID: a",
        "Call-ID: a.b-c!%*_+`'~()<>:\\\"/[]?{}@host.example.net",
        "i: 3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA..",
    ] {
        let msg = invite_with(call_id, ok);
        assert_cpm_forwarded(&msg);
    }
    for bad in [
        "Call-ID: a@b@c",
        "Call-ID: a b",
        "Call-ID: a;b",
        "Call-ID: @host",
        "Call-ID: id@",
        "Call-ID: a,b",
        "Call-ID: \u{e9}t\u{e9}",
    ] {
        let msg = invite_with(call_id, bad);
        assert_400(&msg, CLIENT, "Malformed Call-ID");
    }
    // A response's Call-ID is its request's or the branch MAC refuses it.
    let (_, fwd) = run(&invite(""), CLIENT);
    let f = text(&fwd);
    let resp = format!(
        "SIP/2.0 200 OK\r\n{}\r\n{}\r\n{};tag=cs\r\nCall-ID: other@x\r\n{}\r\nContent-Length: 0\r\n\r\n",
        header(&f, "Via").join("\r\n"),
        header(&f, "From")[0],
        header(&f, "To")[0],
        header(&f, "CSeq")[0]
    );
    assert_dropped(
        resp.as_bytes(),
        "127.0.0.1:7002",
        DropReason::ResponseForged,
    );
}

#[test]
fn cseq_max_forwards_and_content_length() {
    // An unknown method is a token: legal, routed like any request.
    let msg = invite("");
    let foo = replaced_once(
        &replaced_once(&msg, b"INVITE sip:", b"X-FOO.bar!%*_+`'~ sip:"),
        b"CSeq: 1 INVITE",
        b"CSeq: 1 X-FOO.bar!%*_+`'~",
    );
    assert_cpm_forwarded(&foo);
    let bad_method = replaced_once(
        &replaced_once(&msg, b"INVITE sip:", b"IN(V)ITE sip:"),
        b"CSeq: 1 INVITE",
        b"CSeq: 1 IN(V)ITE",
    );
    // A method that is not a token is no request line at all.
    assert_dropped(&bad_method, CLIENT, DropReason::Garbage);
    for (from, to, reason) in [
        ("CSeq: 1 INVITE", "CSeq: 1 IN(V)ITE", "Malformed CSeq"),
        (
            "Max-Forwards: 70",
            "Max-Forwards: 0x46",
            "Malformed Max-Forwards",
        ),
        (
            "Max-Forwards: 70",
            "Max-Forwards: +70",
            "Malformed Max-Forwards",
        ),
        (
            "Content-Length: 237",
            "Content-Length: 0xed",
            "Malformed Content-Length",
        ),
        (
            "Content-Length: 237",
            "Content-Length: 237, 237",
            "Malformed Content-Length",
        ),
    ] {
        assert_400(&invite_with(from, to), CLIENT, reason);
    }
}

/// Route values from a shard: each value the edge reads must be a
/// name-addr (an addr-spec is tolerated), else 400.
#[test]
fn route() {
    let route = |r: &str| invite(&format!("Route: {r}\r\n"));
    for ok in [
        "<sip:127.0.0.1:5060;lr>",
        "\"Edge\" <sip:127.0.0.1:5060;lr>;x=y",
        "sip:127.0.0.1:5060;lr",
    ] {
        let msg = route(ok);
        let (o, _) = run(&msg, SHARD);
        assert!(matches!(o, Outcome::Forwarded { .. }), "{ok}: {o:?}");
    }
    for bad in [
        "<sip:127.0.0.1:5060;lr;>",
        "<sip:127.0.0.1:5060;lr",
        ", <sip:127.0.0.1:5060;lr>",
        "<sip:127.0.0.1:5060;lr>;;x",
        "\"Edge <sip:127.0.0.1:5060;lr>",
        "garbage",
        "",
    ] {
        assert_400(&route(bad), SHARD, "Malformed Route");
    }
}

#[test]
fn p_asserted_identity() {
    let pai = |v: &str| invite(&format!("P-Asserted-Identity: {v}\r\n"));
    for ok in [
        "\"Alice\" <sip:alice@example.net>, <tel:+15551234>",
        "sip:alice@example.net",
        "<tel:+15551234;phone-context=example.net>",
    ] {
        let out = assert_cpm_forwarded(&pai(ok));
        // From a client it is removed whole (RFC 3325).
        assert!(header(&text(&out), "P-Asserted-Identity").is_empty());
    }
    for bad in [
        "<sip:alice@example.net",
        "\"Alice <sip:alice@example.net>",
        "<sip:alice@example.net>;;x",
        "Alice, A <sip:alice@example.net>",
        "",
    ] {
        assert_400(&pai(bad), CLIENT, "Malformed P-Asserted-Identity");
    }
}

/// The feature tags the edge reads: the `+g.3gpp.icsi-ref` value of the
/// first Contact / Accept-Contact it reads, or a P-Preferred-Service list.
/// What else a Contact holds is not the edge's business.
#[test]
fn feature_tags() {
    let contact = "Contact: <sip:alice@192.0.2.10:5062>;+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session\"";
    let icsi = "urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session";
    for bad in [
        format!("Contact: <sip:alice@192.0.2.10:5062>;+g.3gpp.icsi-ref=\"{icsi}"),
        format!("Contact: <sip:alice@192.0.2.10:5062>;+g.3gpp.icsi-ref={icsi}"),
        "Contact: <sip:alice@192.0.2.10:5062>;+g.3gpp.icsi-ref=".to_string(),
        format!("Contact: <sip:alice@192.0.2.10:5062>;+g.3gpp.icsi-ref=\"{icsi}\"x"),
    ] {
        assert_400(
            &invite_with(contact, &bad),
            CLIENT,
            "Malformed Contact Feature Tag",
        );
    }
    // Junk in a Contact the edge reads for its (absent) tag alone, and an
    // escaped quote inside the tag's value: the Accept-Contact decides.
    for ok in [
        "Contact: \"Joe\" <sip:joe@example.org>;;;;",
        "Contact: <sip:alice@192.0.2.10:5062>;+g.3gpp.icsi-ref=\"x\\\"y\";+g.other",
        "Contact: <sip:alice@192.0.2.10:5062>;+g.3gpp.icsi-ref",
    ] {
        assert_cpm_forwarded(&invite_with(contact, ok));
    }
    let no_contact = invite_with(&format!("{contact}\r\n"), "");
    let ac = format!("Accept-Contact: *;+g.3gpp.icsi-ref=\"{icsi}\"");
    for bad in [
        "Accept-Contact: *;+g.3gpp.icsi-ref=".to_string(),
        format!("Accept-Contact: *;+g.3gpp.icsi-ref=\"{icsi},"),
    ] {
        let msg = replaced_once(&no_contact, ac.as_bytes(), bad.as_bytes());
        assert_400(&msg, CLIENT, "Malformed Accept-Contact Feature Tag");
    }
    // P-Preferred-Service, read when neither names an ICSI.
    let only_pps = replaced_once(&no_contact, format!("{ac}\r\n").as_bytes(), b"");
    let pps = "P-Preferred-Service: urn:urn-7:3gpp-service.ims.icsi.oma.cpm.session";
    assert_cpm_forwarded(&only_pps);
    assert_cpm_forwarded(&replaced_once(
        &only_pps,
        pps.as_bytes(),
        b"P-Preferred-Service: urn:urn-7:3gpp-service.ims.icsi.mmtel , URN:URN-7:3gpp-service.ims.icsi.oma.cpm.session",
    ));
    for bad in [
        "P-Preferred-Service: urn:urn-7:",
        "P-Preferred-Service: urn:urn-7:3gpp-service.ims.icsi.oma.cpm.session;x",
        "P-Preferred-Service: urn:urn-7:3gpp service",
        "P-Preferred-Service: urn:urn-7:3gpp-service.ims.icsi.oma.cpm.session,",
        "P-Preferred-Service: urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session",
    ] {
        let msg = replaced_once(&only_pps, pps.as_bytes(), bad.as_bytes());
        assert_400(&msg, CLIENT, "Malformed P-Preferred-Service");
    }
}

/// A NUL is allowed only as the octet a quoted-pair escapes.
#[test]
fn nul_only_escaped_in_a_quoted_string() {
    let from = "From: <sip:alice@example.net>;tag=a73kszlfl";
    let ok = invite_with(
        from,
        "From: \"a\\\0b\" <sip:alice@example.net>;tag=a73kszlfl",
    );
    assert_cpm_forwarded(&ok);
    for bad in [
        "From: \"a\0b\" <sip:alice@example.net>;tag=a73kszlfl",
        "From: <sip:alice@example.net>;tag=a73kszlfl\0",
    ] {
        assert_400(&invite_with(from, bad), CLIENT, "NUL Byte In Headers");
    }
    assert_400(
        &invite("X-Note: \"\\\0\" \0\r\n"),
        CLIENT,
        "NUL Byte In Headers",
    );
}

/// What the edge does not use is forwarded whatever it holds.
#[test]
fn components_the_edge_does_not_use_are_forwarded_as_they_came() {
    for extra in [
        "UnknownHeaderWithUnusualValue: ;;,,;;,;\r\n",
        "Date: Fri, 01 Jan 2010 16:00:00 EST\r\n",
        "Expires: 10000000000000000000000000000000000000000\r\n",
        "Record-Route: <sip:a;;;>, ,\r\n",
        "Subject: \"unterminated\r\n",
        "Via: SIP/2.0/UDP 10.0.0.1;;branch=z9hG4bKsecond;,\r\n",
        "Proxy-Authorization: NoOneKnowsThisScheme opaque-data=here\r\n",
    ] {
        let msg = invite(extra);
        let out = assert_cpm_forwarded(&msg);
        assert!(find(&out, extra.as_bytes()).is_some(), "{extra}");
    }
}

// ------------------------------------------------ the RFC 4475 vectors

/// RFC 4475 §3.1.1.1 `wsinv`: A Short Tortuous INVITE.
const WSINV: &str = r#"INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0
TO :
 sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n
from   : "J Rosenberg \\\""       <sip:jdrosen@example.com>
  ;
  tag = 98asjd8
MaX-fOrWaRdS: 0068
Call-ID: wsinv.ndaksdj@192.0.2.1
Content-Length   : 150
cseq: 0009
  INVITE
Via  : SIP  /   2.0
 /UDP
    192.0.2.2;branch=390skdjuw
s :
NewFangledHeader:   newfangled value
 continued newfangled value
UnknownHeaderWithUnusualValue: ;;,,;;,;
Content-Type: application/sdp
Route:
 <sip:services.example.com;lr;unknownwith=value;unknown-no-value>
v:  SIP  / 2.0  / TCP     spindle.example.com   ;
  branch  =   z9hG4bK9ikj8  ,
 SIP  /    2.0   / UDP  192.168.255.111   ; branch=
 z9hG4bK30239
m:"Quoted string \"\"" <sip:jdrosen@example.com> ; newparam =
      newvalue ;
  secondparam ; q = 0.33

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.3
s=-
c=IN IP4 192.0.2.4
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
"#;

/// RFC 4475 §3.1.1.2 `intmeth`: Wide Range of Valid Characters.
const INTMETH: &str = concat!(
    r#"!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0
Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~
"#,
    "To: \"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f\" <sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com>\n",
    r#"From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%="работающий";tag=_token~1'+`*%!-.
Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\/"][?}{
CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~
Max-Forwards: 255
"#,
    "extensionHeader-!.%*+_`'~:\u{feff}\u{5927}\u{505c}\u{96fb}\n",
    r#"Content-Length: 0

"#
);

/// RFC 4475 §3.1.1.3 `esc01`: Valid Use of the % Escaping Mechanism.
const ESC01: &str = r#"INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0
To: sip:%75se%72@example.com
From: <sip:I%20have%20spaces@example.net>;tag=938
Max-Forwards: 87
i: esc01.239409asdfakjkn23onasd0-3234
CSeq: 234234 INVITE
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw
C: application/sdp
Contact:
  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>
Content-Length: 150

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
"#;

/// RFC 4475 §3.1.1.4 `escnull`: Escaped Nulls in URIs.
const ESCNULL: &str = r#"REGISTER sip:example.com SIP/2.0
To: sip:null-%00-null@example.com
From: sip:null-%00-null@example.com;tag=839923423
Max-Forwards: 70
Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd
CSeq: 14398234 REGISTER
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw
Contact: <sip:%00@host5.example.com>
Contact: <sip:%00%00@host5.example.com>
L:0

"#;

/// RFC 4475 §3.1.1.5 `esc02`: Use of % When It Is Not an Escape.
const ESC02: &str = r#"RE%47IST%45R sip:registrar.example.com SIP/2.0
To: "%Z%45" <sip:resource@example.com>
From: "%Z%45" <sip:resource@example.com>;tag=f232jadfj23
Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf
Via: SIP/2.0/TCP host.example.com;branch=z9hG4bK209%fzsnel234
CSeq: 29344 RE%47IST%45R
Max-Forwards: 70
Contact: <sip:alias1@host1.example.com>
C%6Fntact: <sip:alias2@host2.example.com>
Contact: <sip:alias3@host3.example.com>
l: 0

"#;

/// RFC 4475 §3.1.1.6 `lwsdisp`: Message with No LWS between Display Name and <.
const LWSDISP: &str = r#"OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: caller<sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID: lwsdisp.1234abcd@funky.example.com
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw
l: 0

"#;

/// RFC 4475 §3.1.1.7 `longreq`: Long Values in Header Fields.
const LONGREQ: &str = r#"INVITE sip:user@example.com SIP/2.0
To: "I have a user name of extremeextremeextremeextremeextremeextremeextremeextremeextremeextreme proportion"<sip:user@example.com:6000;unknownparam1=verylonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglongvalue;longparamnamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamename=shortvalue;verylonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglongParameterNameWithNoValue>
F: sip:amazinglylongcallernameamazinglylongcallernameamazinglylongcallernameamazinglylongcallernameamazinglylongcallername@example.net;tag=12982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982424;unknownheaderparamnamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamename=unknowheaderparamvaluevaluevaluevaluevaluevaluevaluevaluevaluevaluevaluevaluevaluevaluevalue;unknownValuelessparamnameparamnameparamnameparamnameparamnameparamnameparamnameparamnameparamnameparamname
Call-ID: longreq.onereallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallylongcallid
CSeq: 3882340 INVITE
Unknown-LongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLong-Name: unknown-longlonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglong-value; unknown-longlonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglong-parameter-name = unknown-longlonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglong-parameter-value
Via: SIP/2.0/TCP sip33.example.com
v: SIP/2.0/TCP sip32.example.com
V: SIP/2.0/TCP sip31.example.com
Via: SIP/2.0/TCP sip30.example.com
ViA: SIP/2.0/TCP sip29.example.com
VIa: SIP/2.0/TCP sip28.example.com
VIA: SIP/2.0/TCP sip27.example.com
via: SIP/2.0/TCP sip26.example.com
viA: SIP/2.0/TCP sip25.example.com
vIa: SIP/2.0/TCP sip24.example.com
vIA: SIP/2.0/TCP sip23.example.com
V :  SIP/2.0/TCP sip22.example.com
v :  SIP/2.0/TCP sip21.example.com
V  : SIP/2.0/TCP sip20.example.com
v  : SIP/2.0/TCP sip19.example.com
Via : SIP/2.0/TCP sip18.example.com
Via  : SIP/2.0/TCP sip17.example.com
Via: SIP/2.0/TCP sip16.example.com
Via: SIP/2.0/TCP sip15.example.com
Via: SIP/2.0/TCP sip14.example.com
Via: SIP/2.0/TCP sip13.example.com
Via: SIP/2.0/TCP sip12.example.com
Via: SIP/2.0/TCP sip11.example.com
Via: SIP/2.0/TCP sip10.example.com
Via: SIP/2.0/TCP sip9.example.com
Via: SIP/2.0/TCP sip8.example.com
Via: SIP/2.0/TCP sip7.example.com
Via: SIP/2.0/TCP sip6.example.com
Via: SIP/2.0/TCP sip5.example.com
Via: SIP/2.0/TCP sip4.example.com
Via: SIP/2.0/TCP sip3.example.com
Via: SIP/2.0/TCP sip2.example.com
Via: SIP/2.0/TCP sip1.example.com
Via: SIP/2.0/TCP host.example.com;received=192.0.2.5;branch=verylonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglongbranchvalue
Max-Forwards: 70
Contact: <sip:amazinglylongcallernameamazinglylongcallernameamazinglylongcallernameamazinglylongcallernameamazinglylongcallername@host5.example.net>
Content-Type: application/sdp
l: 150

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
"#;

/// RFC 4475 §3.1.1.8 `dblreq`: Extra Trailing Octets in a UDP Datagram.
const DBLREQ: &str = r#"REGISTER sip:example.com SIP/2.0
To: sip:j.user@example.com
From: sip:j.user@example.com;tag=43251j3j324
Max-Forwards: 8
I: dblreq.0ha0isndaksdj99sdfafnl3lk233412
Contact: sip:j.user@host.example.com
CSeq: 8 REGISTER
Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492
Content-Length: 0


INVITE sip:joe@example.com SIP/2.0
t: sip:joe@example.com
From: sip:caller@example.net;tag=141334
Max-Forwards: 8
Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234
Content-Type: application/sdp
Content-Length: 150

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.15
s=-
c=IN IP4 192.0.2.15
t=0 0
m=audio 49217 RTP/AVP 0 12
m =video 3227 RTP/AVP 31
a=rtpmap:31 LPC

"#;

/// RFC 4475 §3.1.1.9 `semiuri`: Semicolon-Separated Parameters in URI User Part.
const SEMIURI: &str = r#"OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0
To: sip:j_user@example.com
From: sip:caller@example.org;tag=33242
Max-Forwards: 3
Call-ID: semiuri.0ha0isndaksdj
CSeq: 8 OPTIONS
Accept: application/sdp, application/pkcs7-mime,
        multipart/mixed, multipart/signed,
        message/sip, message/sipfrag
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw
l: 0

"#;

/// RFC 4475 §3.1.1.10 `transports`: Varied and Unknown Transport Types.
const TRANSPORTS: &str = r#"OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: <sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID:  transports.kijh4akdnaqjkwendsasfdj
Accept: application/sdp
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw
Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf
Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj
Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en
Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee
l: 0

"#;

/// RFC 4475 §3.1.1.11 `mpart01`: Multipart MIME Message (headers and the text part).
const MPART01_TEXT: &str = r#"MESSAGE sip:kumiko@example.org SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-;rport
Max-Forwards: 70
Route: <sip:127.0.0.1:5080>
Identity: r5mwreLuyDRYBi/0TiPwEsY3rEVsk/G2WxhgTV1PF7hHuLIK0YWVKZhKv9Mj8UeXqkMVbnVq37CD+813gvYjcBUaZngQmXc9WNZSDNGCzA+fWl9MEUHWIZo1CeJebdY/XlgKeTa0Olvq0rt70Q5jiSfbqMJmQFteeivUhkMWYUA=
Contact: <sip:fluffy@127.0.0.1:5070>
To: <sip:kumiko@example.org>
From: <sip:fluffy@example.com>;tag=2fb0dcc9
Call-ID: 3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA..
CSeq: 1 MESSAGE
Content-Transfer-Encoding: binary
Content-Type: multipart/mixed;boundary=7a9cbec02ceef655
Date: Sat, 15 Oct 2005 04:44:56 GMT
User-Agent: SIPimp.org/0.2.5 (curses)
Content-Length: 553

--7a9cbec02ceef655
Content-Type: text/plain
Content-Transfer-Encoding: binary

Hello
--7a9cbec02ceef655
Content-Type: application/octet-stream
Content-Transfer-Encoding: binary

"#;

/// `mpart01`: the binary (S/MIME) part.
const MPART01_BINARY: &[u8] = b"\
0\x82\x01R\x06\x09*\x86H\x86\xf7\x0d\x01\x07\x02\xa0\x82\x01C0\x82\x01?\x02\
\x01\x011\x090\x07\x06\x05+\x0e\x03\x02\x1a0\x0b\x06\x09*\x86H\x86\xf7\x0d\
\x01\x07\x011\x82\x01 0\x82\x01\x1c\x02\x01\x010|0p1\x0b0\x09\x06\x03U\x04\
\x06\x13\x02US1\x130\x11\x06\x03U\x04\x08\x13\x0aCalifornia1\x110\x0f\x06\
\x03U\x04\x07\x13\x08San Jose1\x0e0\x0c\x06\x03U\x04\x0a\x13\x05sipit1)0'\
\x06\x03U\x04\x0b\x13 Sipit Test Certificate Authority\x02\x08\x01\x95\x00q\
\x023\x01\x130\x07\x06\x05+\x0e\x03\x02\x1a0\x0d\x06\x09*\x86H\x86\xf7\x0d\
\x01\x01\x01\x05\x00\x04\x81\x80\x8e\xf4f\xf9H\xf0R-\xd2\xe5\x97\x8e\x9d\x95\
\xaa\xe9\xf2\xfe\x15\xa0fYqb\x92\xe8\xda*\xa8\xd85\x0ah\xce\xff\xae<\xbd+\
\xff\x16u\xdd\xd5d\x8eY=\xd6G(\xf2b \xf7\xe9At\x9e3\x0d\x9a\x15\xed\xab\xdb\
\x93\xd1\x0cB\x10.{r\x89\xd2\x9c\xc0\xc9\xae.\xfb\xc7\xc0\xcf\xf9\x17/;\x02~\
O\xc0'\xe1Tm\xe4\xb6\xaa:\xbb>f\xcc\xcb]\xd6\xc6K\x83\x83\x14\x9c\xb8\xe6\
\xff\x18-\x94O\xe5{e\xbc\x99\xd0\x05";

/// `mpart01`: the closing boundary.
const MPART01_TAIL: &str = r#"
--7a9cbec02ceef655--
"#;

/// RFC 4475 §3.1.1.12 `unreason`: Unusual Reason Phrase.
const UNREASON: &str = r#"SIP/2.0 200 = 2**3 * 5**2 но сто девяносто девять - простое
Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923
Call-ID: unreason.1234ksdfak3j2erwedfsASdf
CSeq: 35 INVITE
From: sip:user@example.com;tag=11141343
To: sip:user@example.edu;tag=2229
Content-Length: 154
Content-Type: application/sdp
Contact: <sip:user@host198.example.com>

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.198
s=-
c=IN IP4 192.0.2.198
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
"#;

/// RFC 4475 §3.1.1.13 `noreason`: Empty Reason Phrase.
const NOREASON: &str = concat!(
    "SIP/2.0 100 \n",
    r#"Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe
Call-ID: noreason.asndj203insdf99223ndf
CSeq: 35 INVITE
From: <sip:user@example.com>;tag=39ansfi3
To: <sip:user@example.edu>;tag=902jndnke3
Content-Length: 0
Contact: <sip:user@host105.example.com>

"#
);

/// RFC 4475 §3.1.2.1 `badinv01`: Extraneous Header Field Separators.
const BADINV01: &str = r#"INVITE sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=134161461246
Max-Forwards: 7
Call-ID: badinv01.0ha0isndaksdjasdf3234nas
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;;,;,,
Contact: "Joe" <sip:joe@example.org>;;;;
Content-Length: 152
Content-Type: application/sdp

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.15
s=-
c=IN IP4 192.0.2.15
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
"#;

/// RFC 4475 §3.1.2.2 `clerr`: Content Length Larger Than Message.
const CLERR: &str = r#"INVITE sip:user@example.com SIP/2.0
Max-Forwards: 80
To: sip:j.user@example.com
From: sip:caller@example.net;tag=93942939o2
Contact: <sip:caller@hungry.example.net>
Call-ID: clerr.0ha0isndaksdjweiafasdk3
CSeq: 8 INVITE
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523
Content-Type: application/sdp
Content-Length: 9999

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.155
s=-
c=IN IP4 192.0.2.155
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
"#;

/// RFC 4475 §3.1.2.3 `ncl`: Negative Content-Length.
const NCL: &str = r#"INVITE sip:user@example.com SIP/2.0
Max-Forwards: 254
To: sip:j.user@example.com
From: sip:caller@example.net;tag=32394234
Call-ID: ncl.0ha0isndaksdj2193423r542w35
CSeq: 0 INVITE
Via: SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKkdjuw
Contact: <sip:caller@example53.example.net>
Content-Type: application/sdp
Content-Length: -999

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.53
s=-
c=IN IP4 192.0.2.53
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
"#;

/// RFC 4475 §3.1.2.4 `scalar02`: Request Scalar Fields with Overlarge Values.
const SCALAR02: &str = r#"REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3
To: <sip:user@example.com>
From: <sip:user@example.com>;tag=239232jh3
CSeq: 36893488147419103232 REGISTER
Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32
Max-Forwards: 300
Expires: 10000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000
Contact: <sip:user@host129.example.com>
  ;expires=280297596632815
Content-Length: 0

"#;

/// RFC 4475 §3.1.2.5 `scalarlg`: Response Scalar Fields with Overlarge Values.
const SCALARLG: &str = r#"SIP/2.0 503 Service Unavailable
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bKzzxdiwo34sw;received=192.0.2.129
To: <sip:user@example.com>
From: <sip:other@example.net>;tag=2easdjfejw
CSeq: 9292394834772304023312 OPTIONS
Call-ID: scalarlg.noase0of0234hn2qofoaf0232aewf2394r
Retry-After: 949302838503028349304023988
Warning: 1812 overture "In Progress"
Content-Length: 0

"#;

/// RFC 4475 §3.1.2.6 `quotbal`: Unterminated Quoted String in Display Name.
const QUOTBAL: &str = r#"INVITE sip:user@example.com SIP/2.0
To: "Mr. J. User <sip:j.user@example.com>
From: sip:caller@example.net;tag=93334
Max-Forwards: 10
Call-ID: quotbal.aksdj
Contact: <sip:caller@host59.example.net>
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234
Content-Type: application/sdp
Content-Length: 152

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.15
s=-
c=IN IP4 192.0.2.15
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
"#;

/// RFC 4475 §3.1.2.7 `ltgtruri`: <> Enclosing Request-URI.
const LTGTRURI: &str = r#"INVITE <sip:user@example.com> SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=39291
Max-Forwards: 23
Call-ID: ltgtruri.1@192.0.2.5
CSeq: 1 INVITE
Via: SIP/2.0/UDP 192.0.2.5
Contact: <sip:caller@host5.example.net>
Content-Type: application/sdp
Content-Length: 159

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.5
s=-
c=IN IP4 192.0.2.5
t=3149328700 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
"#;

/// RFC 4475 §3.1.2.8 `lwsruri`: Malformed SIP Request-URI (embedded LWS).
const LWSRURI: &str = r#"INVITE sip:user@example.com; lr SIP/2.0
To: sip:user@example.com;tag=3xfe-9921883-z9f
From: sip:caller@example.net;tag=231413434
Max-Forwards: 5
Call-ID: lwsruri.asdfasdoeoi2323-asdfwrn23-asd834rk423
CSeq: 2130706432 INVITE
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKkdjuw2395
Contact: <sip:caller@host1.example.net>
Content-Type: application/sdp
Content-Length: 159

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=3149328700 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
"#;

/// RFC 4475 §3.1.2.9 `lwsstart`: Multiple SP Separating Request-Line Elements.
const LWSSTART: &str = r#"INVITE  sip:user@example.com  SIP/2.0
Max-Forwards: 8
To: sip:user@example.com
From: sip:caller@example.net;tag=8814
Call-ID: lwsstart.dfknq234oi243099adsdfnawe3@example.com
CSeq: 1893884 INVITE
Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw3923
Contact: <sip:caller@host1.example.net>
Content-Type: application/sdp
Content-Length: 150

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
"#;

/// RFC 4475 §3.1.2.10 `trws`: SP Characters at End of Request-Line.
const TRWS: &str = concat!(
    "OPTIONS sip:remote-target@example.com SIP/2.0  \n",
    r#"Via: SIP/2.0/TCP host1.examle.com;branch=z9hG4bK299342093
To: <sip:remote-target@example.com>
From: <sip:local-resource@example.com>;tag=329429089
Call-ID: trws.oicu34958239neffasdhr2345r
Accept: application/sdp
CSeq: 238923 OPTIONS
Max-Forwards: 70
Content-Length: 0

"#
);

/// RFC 4475 §3.1.2.11 `escruri`: Escaped Headers in SIP Request-URI.
const ESCRURI: &str = r#"INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=341518
Max-Forwards: 7
Contact: <sip:caller@host39923.example.net>
Call-ID: escruri.23940-asdfhj-aje3br-234q098w-fawerh2q-h4n5
CSeq: 149209342 INVITE
Via: SIP/2.0/UDP host-of-the-hour.example.com;branch=z9hG4bKkdjuw
Content-Type: application/sdp
Content-Length: 150

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
"#;

/// RFC 4475 §3.1.2.12 `baddate`: Invalid Time Zone in Date Header Field.
const BADDATE: &str = r#"INVITE sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=2234923
Max-Forwards: 70
Call-ID: baddate.239423mnsadf3j23lj42--sedfnm234
CSeq: 1392934 INVITE
Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw
Date: Fri, 01 Jan 2010 16:00:00 EST
Contact: <sip:caller@host5.example.net>
Content-Type: application/sdp
Content-Length: 150

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.5
s=-
c=IN IP4 192.0.2.5
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
"#;

/// RFC 4475 §3.1.2.13 `regbadct`: Failure to Enclose name-addr URI in <>.
const REGBADCT: &str = r#"REGISTER sip:example.com SIP/2.0
To: sip:user@example.com
From: sip:user@example.com;tag=998332
Max-Forwards: 70
Call-ID: regbadct.k345asrl3fdbv@10.0.0.1
CSeq: 1 REGISTER
Via: SIP/2.0/UDP 135.180.130.133:5060;branch=z9hG4bKkdjuw
Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E
l: 0

"#;

/// RFC 4475 §3.1.2.14 `badaspec`: Spaces within addr-spec.
const BADASPEC: &str = r#"OPTIONS sip:user@example.org SIP/2.0
Via: SIP/2.0/UDP host4.example.com:5060;branch=z9hG4bKkdju43234
Max-Forwards: 70
From: "Bell, Alexander" <sip:a.g.bell@example.com>;tag=433423
To: "Watson, Thomas" < sip:t.watson@example.org >
Call-ID: badaspec.sdf0234n2nds0a099u23h3hnnw009cdkne3
Accept: application/sdp
CSeq: 3923239 OPTIONS
l: 0

"#;

/// RFC 4475 §3.1.2.15 `baddn`: Non-token Characters in Display Name.
const BADDN: &str = r#"OPTIONS sip:t.watson@example.org SIP/2.0
Via:     SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards:      70
From:    Bell, Alexander <sip:a.g.bell@example.com>;tag=43
To:      Watson, Thomas <sip:t.watson@example.org>
Call-ID: baddn.31415@c.example.com
Accept: application/sdp
CSeq:    3923239 OPTIONS
l: 0

"#;

/// RFC 4475 §3.1.2.16 `badvers`: Unknown Protocol Version.
const BADVERS: &str = r#"OPTIONS sip:t.watson@example.org SIP/7.0
Via:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw
Max-Forwards:     70
From:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe
To:      T. Watson <sip:t.watson@example.org>
Call-ID: badvers.31417@c.example.com
CSeq:    1 OPTIONS
l: 0

"#;

/// RFC 4475 §3.1.2.17 `mismatch01`: Start Line and CSeq Method Mismatch.
const MISMATCH01: &str = r#"OPTIONS sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=34525
Max-Forwards: 6
Call-ID: mismatch01.dj0234sxdfl3
CSeq: 8 INVITE
Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw
l: 0

"#;

/// RFC 4475 §3.1.2.18 `mismatch02`: Unknown Method with CSeq Method Mismatch.
const MISMATCH02: &str = r#"NEWMETHOD sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=34525
Max-Forwards: 6
Call-ID: mismatch02.dj0234sxdfl3
CSeq: 8 INVITE
Contact: <sip:caller@host.example.net>
Via: SIP/2.0/UDP host.example.net;branch=z9hG4bKkdjuw
Content-Type: application/sdp
l: 138

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.1
c=IN IP4 192.0.2.1
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
"#;

/// RFC 4475 §3.1.2.19 `bigcode`: Overlarge Response Code.
const BIGCODE: &str = r#"SIP/2.0 4294967301 better not break the receiver
Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe
Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i
CSeq: 353494 INVITE
From: <sip:user@example.com>;tag=39ansfi3
To: <sip:user@example.edu>;tag=902jndnke3
Content-Length: 0
Contact: <sip:user@host105.example.com>

"#;

/// RFC 4475 §3.2.1 `badbranch`: Missing Transaction Identifier.
const BADBRANCH: &str = r#"OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.org;tag=33242
Max-Forwards: 3
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK
Accept: application/sdp
Call-ID: badbranch.sadonfo23i420jv0as0derf3j3n
CSeq: 8 OPTIONS
l: 0

"#;

/// RFC 4475 §3.3.1 `insuf`: Missing Required Header Fields.
const INSUF: &str = r#"INVITE sip:user@example.com SIP/2.0
CSeq: 193942 INVITE
Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf
Content-Type: application/sdp
l: 152

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.95
s=-
c=IN IP4 192.0.2.95
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
"#;

/// RFC 4475 §3.3.2 `unkscm`: Request-URI with Unknown Scheme.
const UNKSCM: &str = r#"OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=384
Max-Forwards: 3
Call-ID: unkscm.nasdfasser0q239nwsdfasdkl34
CSeq: 3923423 OPTIONS
Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234
Content-Length: 0

"#;

/// RFC 4475 §3.3.3 `novelsc`: Request-URI with Known but Atypical Scheme.
const NOVELSC: &str = r#"OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=384
Max-Forwards: 3
Call-ID: novelsc.asdfasser0q239nwsdfasdkl34
CSeq: 3923423 OPTIONS
Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234
Content-Length: 0

"#;

/// RFC 4475 §3.3.4 `unksm2`: Unknown URI Schemes in Header Fields.
const UNKSM2: &str = r#"REGISTER sip:example.com SIP/2.0
To: isbn:2983792873
From: <http://www.example.com>;tag=3234233
Call-ID: unksm2.daksdj@hyphenated-host.example.com
CSeq: 234902 REGISTER
Max-Forwards: 70
Via: SIP/2.0/UDP 192.0.2.21:5060;branch=z9hG4bKkdjuw
Contact: <name:John_Smith>
l: 0

"#;

/// RFC 4475 §3.3.5 `bext01`: Proxy-Require and Require.
const BEXT01: &str = r#"OPTIONS sip:user@example.com SIP/2.0
To: sip:j_user@example.com
From: sip:caller@example.net;tag=242etr
Max-Forwards: 6
Call-ID: bext01.0ha0isndaksdj
Require: nothingSupportsThis, nothingSupportsThisEither
Proxy-Require: noProxiesSupportThis, norDoAnyProxiesSupportThis
CSeq: 8 OPTIONS
Via: SIP/2.0/TLS fold-and-staple.example.com;branch=z9hG4bKkdjuw
Content-Length: 0

"#;

/// RFC 4475 §3.3.6 `invut`: Unknown Content-Type.
const INVUT: &str = r#"INVITE sip:user@example.com SIP/2.0
Contact: <sip:caller@host5.example.net>
To: sip:j.user@example.com
From: sip:caller@example.net;tag=8392034
Max-Forwards: 70
Call-ID: invut.0ha0isndaksdjadsfij34n23d
CSeq: 235448 INVITE
Via: SIP/2.0/UDP somehost.example.com;branch=z9hG4bKkdjuw
Content-Type: application/unknownformat
Content-Length: 40

<audio>
 <pcmu port="443"/>
</audio>
"#;

/// RFC 4475 §3.3.7 `regaut01`: Unknown Authorization Scheme.
const REGAUT01: &str = r#"REGISTER sip:example.com SIP/2.0
To: sip:j.user@example.com
From: sip:j.user@example.com;tag=87321hj23128
Max-Forwards: 8
Call-ID: regaut01.0ha0isndaksdj
CSeq: 9338 REGISTER
Via: SIP/2.0/TCP 192.0.2.253;branch=z9hG4bKkdjuw
Authorization: NoOneKnowsThisScheme opaque-data=here
Content-Length:0

"#;

/// RFC 4475 §3.3.8 `multi01`: Multiple Values in Single Value Required Fields.
const MULTI01: &str = r#"INVITE sip:user@company.com SIP/2.0
Contact: <sip:caller@host25.example.net>
Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw
Max-Forwards: 70
CSeq: 5 INVITE
Call-ID: multi01.98asdh@192.0.2.1
CSeq: 59 INVITE
Call-ID: multi01.98asdh@192.0.2.2
From: sip:caller@example.com;tag=3413415
To: sip:user@example.com
To: sip:other@example.net
From: sip:caller@example.net;tag=2923420123
Content-Type: application/sdp
l: 154
Contact: <sip:caller@host36.example.net>
Max-Forwards: 5

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.25
s=-
c=IN IP4 192.0.2.25
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC

"#;

/// RFC 4475 §3.3.9 `mcl01`: Multiple Content-Length Values.
const MCL01: &str = r#"OPTIONS sip:user@example.com SIP/2.0
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK293423
To: sip:user@example.com
From: sip:other@example.net;tag=3923942
Call-ID: mcl01.fhn2323orihawfdoa3o4r52o3irsdf
CSeq: 15932 OPTIONS
Content-Length: 13
Max-Forwards: 60
Content-Length: 5
Content-Type: text/plain

There's no way to know how many octets are supposed to be here.

"#;

/// RFC 4475 §3.3.10 `bcast`: 200 OK Response with Broadcast Via Header Field Value.
const BCAST: &str = r#"SIP/2.0 200 OK
Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923
Via: SIP/2.0/UDP 255.255.255.255;branch=z9hG4bK1saber23
Call-ID: bcast.0384840201234ksdfak3j2erwedfsASdf
CSeq: 35 INVITE
From: sip:user@example.com;tag=11141343
To: sip:user@example.edu;tag=2229
Content-Length: 154
Content-Type: application/sdp
Contact: <sip:user@host28.example.com>

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.198
s=-
c=IN IP4 192.0.2.198
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
"#;

/// RFC 4475 §3.3.11 `zeromf`: Max-Forwards of Zero.
const ZEROMF: &str = r#"OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=3ghsd41
Call-ID: zeromf.jfasdlfnm2o2l43r5u0asdfas
CSeq: 39234321 OPTIONS
Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw2349i
Max-Forwards: 0
Content-Length: 0

"#;

/// RFC 4475 §3.3.12 `cparam01`: REGISTER with a Contact Header Parameter.
const CPARAM01: &str = r#"REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards: 70
From: sip:watson@example.com;tag=DkfVgjkrtMwaerKKpe
To: sip:watson@example.com
Call-ID: cparam01.70710@saturn.example.com
CSeq: 2 REGISTER
Contact: sip:+19725552222@gw1.example.net;unknownparam
l: 0

"#;

/// RFC 4475 §3.3.13 `cparam02`: REGISTER with a url-parameter.
const CPARAM02: &str = r#"REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards: 70
From: sip:watson@example.com;tag=838293
To: sip:watson@example.com
Call-ID: cparam02.70710@saturn.example.com
CSeq: 3 REGISTER
Contact: <sip:+19725552222@gw1.example.net;unknownparam>
l: 0

"#;

/// RFC 4475 §3.3.14 `regescrt`: REGISTER with a URL Escaped Header.
const REGESCRT: &str = r#"REGISTER sip:example.com SIP/2.0
To: sip:user@example.com
From: sip:user@example.com;tag=8
Max-Forwards: 70
Call-ID: regescrt.k345asrl3fdbv@192.0.2.1
CSeq: 14398234 REGISTER
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw
M: <sip:user@example.com?Route=%3Csip:sip.example.com%3E>
L:0

"#;

/// RFC 4475 §3.3.15 `sdp01`: Unacceptable Accept Offering.
const SDP01: &str = r#"INVITE sip:user@example.com SIP/2.0
To: sip:j_user@example.com
Contact: <sip:caller@host15.example.net>
From: sip:caller@example.net;tag=234
Max-Forwards: 5
Call-ID: sdp01.ndaksdj9342dasdd
Accept: text/nobodyKnowsThis
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw
Content-Length: 150
Content-Type: application/sdp

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.5
s=-
c=IN IP4 192.0.2.5
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
"#;

/// RFC 4475 §3.4.1 `inv2543`: INVITE with RFC 2543 Syntax.
const INV2543: &str = r#"INVITE sip:UserB@example.com SIP/2.0
Via: SIP/2.0/UDP iftgw.example.com
From: <sip:+13035551111@ift.client.example.net;user=phone>
Record-Route: <sip:UserB@example.com;maddr=ss1.example.com>
To: sip:+16505552222@ss1.example.net;user=phone
Call-ID: inv2543.1717@ift.client.example.com
CSeq: 56 INVITE
Content-Type: application/sdp

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.5
s=-
c=IN IP4 192.0.2.5
t=0 0
m=audio 49217 RTP/AVP 0
"#;
