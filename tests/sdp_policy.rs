//! Seed 5.2.3.7 media policy over real CPM SDP: the parser, the RFC 3264
//! refusal rewrite (byte for byte), the policy verdicts, the answer check,
//! malformed bodies, and a mutation property (never panics, refusal keeps
//! the body parseable with the same number of media sections).

use cpm_edge::sip::media::{
    check_answer, filter_offer, AnswerViolation, MediaPolicy, OfferVerdict,
};
use cpm_edge::sip::sdp::{self, parse, refuse_streams, LineEnding, MediaType, Sdp, SdpError};

/// Join lines with CRLF, each line terminated.
fn crlf(lines: &[&str]) -> Vec<u8> {
    lines
        .iter()
        .flat_map(|l| format!("{l}\r\n").into_bytes())
        .collect()
}

fn lf(lines: &[&str]) -> Vec<u8> {
    lines
        .iter()
        .flat_map(|l| format!("{l}\n").into_bytes())
        .collect()
}

const SESSION: &[&str] = &[
    "v=0",
    "o=bob 2808844564 2808844564 IN IP4 host.biloxi.example.com",
    "s=-",
    "c=IN IP4 host.biloxi.example.com",
    "t=0 0",
];

const AUDIO: &[&str] = &[
    "m=audio 49170 RTP/AVP 0 8 97",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:97 iLBC/8000",
];

const VIDEO: &[&str] = &[
    "m=video 51372 RTP/AVP 31 32",
    "b=AS:512",
    "a=rtpmap:31 H261/90000",
    "a=rtpmap:32 MPV/90000",
];

const MESSAGE: &[&str] = &[
    "m=message 7394 TCP/MSRP *",
    "a=accept-types:message/cpim text/plain",
    "a=accept-wrapped-types:text/plain message/imdn+xml",
    "a=path:msrp://host.biloxi.example.com:7394/9di4eae923;tcp",
];

fn lines<'a>(parts: &[&[&'a str]]) -> Vec<&'a str> {
    parts.iter().flat_map(|p| p.iter().copied()).collect()
}

fn av_msg() -> Vec<u8> {
    crlf(&lines(&[SESSION, AUDIO, VIDEO, MESSAGE]))
}

fn chat() -> Vec<u8> {
    crlf(&[
        "v=0",
        "o=alice 2890844526 2890844527 IN IP4 alicepc.example.com",
        "s=-",
        "c=IN IP4 alicepc.example.com",
        "t=0 0",
        "m=message 7394 TCP/MSRP *",
        "a=accept-types:message/cpim text/plain",
        "a=accept-wrapped-types:*",
        "a=path:msrp://alicepc.example.com:7394/2s93i93idd;tcp",
    ])
}

fn file_transfer() -> Vec<u8> {
    crlf(&[
        "v=0",
        "o=alice 2890844526 2890844526 IN IP4 host.atlanta.example.com",
        "s= ",
        "c=IN IP4 host.atlanta.example.com",
        "t=0 0",
        "m=message 7654 TCP/MSRP *",
        "i=This is my latest picture",
        "a=sendonly",
        "a=accept-types:message/cpim",
        "a=accept-wrapped-types:*",
        "a=path:msrp://atlanta.example.com:7654/jshA7weztas;tcp",
        "a=file-selector:name:\"My size:1 picture.jpg\" type:image/jpeg size:32349 \
         hash:sha-1:72:24:5F:E8:65:3D:DA:F3:71:36:2F:86:D4:71:91:3E:E4:A2:CE:2E",
        "a=file-transfer-id:vBnG916bdberum2fFEABR1FR3ExZMUrd",
        "a=file-date:creation:\"Mon, 15 May 2006 15:01:31 +0300\"",
    ])
}

fn ok(body: &[u8]) -> Sdp {
    match parse(body) {
        Ok(s) => s,
        Err(e) => panic!("{e:?} for {}", String::from_utf8_lossy(body)),
    }
}

fn refused(body: &[u8], mask: &[bool]) -> Vec<u8> {
    let s = ok(body);
    let mut out = Vec::new();
    refuse_streams(body, &s, mask, &mut out);
    out
}

fn strs(v: &[&str]) -> Option<Vec<String>> {
    Some(v.iter().map(|s| s.to_string()).collect())
}

fn parse_err(body: &[u8]) -> String {
    match parse(body) {
        Ok(s) => panic!("parsed: {s:?}"),
        Err(SdpError(e)) => e,
    }
}

// ---------------------------------------------------------------- parser

#[test]
fn parses_msrp_chat() {
    let body = chat();
    let s = ok(&body);
    assert_eq!(s.line_ending, LineEnding::CrLf);
    assert_eq!(s.media.len(), 1);
    let m = &s.media[0];
    assert_eq!(m.media_type, MediaType::Message);
    assert_eq!(m.port, 7394);
    assert_eq!(&body[m.port_span.clone()], b"7394");
    assert_eq!(m.port_count, None);
    assert_eq!(m.proto, "TCP/MSRP");
    assert_eq!(m.formats, vec!["*"]);
    assert_eq!(m.accept_types, vec!["message/cpim", "text/plain"]);
    assert_eq!(m.accept_wrapped_types, vec!["*"]);
    assert_eq!(m.file_size, None);
    assert_eq!(m.direction, None);
    assert_eq!(&body[m.mline.clone()], b"m=message 7394 TCP/MSRP *");
    assert_eq!(m.range.start, s.session_end);
    assert_eq!(m.range.end, body.len());
    assert!(body[..s.session_end].ends_with(b"t=0 0\r\n"));
}

#[test]
fn parses_file_transfer() {
    let body = file_transfer();
    let s = ok(&body);
    let m = &s.media[0];
    // The quoted name contains "size:1": only the real selector counts.
    assert_eq!(m.file_size, Some(32349));
    assert_eq!(m.direction.as_deref(), Some("sendonly"));
    assert_eq!(m.accept_types, vec!["message/cpim"]);
}

#[test]
fn parses_audio_video_message() {
    let body = av_msg();
    let s = ok(&body);
    let types: Vec<_> = s.media.iter().map(|m| m.media_type.clone()).collect();
    assert_eq!(
        types,
        vec![MediaType::Audio, MediaType::Video, MediaType::Message]
    );
    assert_eq!(s.media[0].formats, vec!["0", "8", "97"]);
    assert_eq!(s.media[1].formats, vec!["31", "32"]);
    assert_eq!(s.media[1].port, 51372);
    // Sections tile the body after the session part.
    assert_eq!(s.media[0].range.start, s.session_end);
    assert_eq!(s.media[0].range.end, s.media[1].range.start);
    assert_eq!(s.media[1].range.end, s.media[2].range.start);
    assert_eq!(s.media[2].range.end, body.len());
    assert!(body[s.media[1].range.clone()].starts_with(b"m=video 51372"));
    assert!(body[s.media[1].range.clone()].ends_with(b"MPV/90000\r\n"));
}

#[test]
fn media_type_names() {
    assert_eq!(MediaType::parse("AUDIO"), MediaType::Audio);
    assert_eq!(MediaType::parse("Message"), MediaType::Message);
    assert_eq!(MediaType::parse("application").name(), "application");
    assert_eq!(MediaType::parse("Text"), MediaType::Text);
    assert_eq!(MediaType::parse("image"), MediaType::Image);
    assert_eq!(
        MediaType::parse("Control"),
        MediaType::Other("control".into())
    );
    assert_eq!(MediaType::parse("Control").name(), "control");
}

#[test]
fn lf_only_endings() {
    let body = lf(&lines(&[SESSION, AUDIO, VIDEO, MESSAGE]));
    let s = ok(&body);
    assert_eq!(s.line_ending, LineEnding::Lf);
    assert_eq!(s.media.len(), 3);
    assert!(body[s.media[0].range.clone()].ends_with(b"iLBC/8000\n"));
    let out = refused(&body, &[false, true, false]);
    let expected = lf(&lines(&[
        SESSION,
        AUDIO,
        &["m=video 0 RTP/AVP 31 32"],
        MESSAGE,
    ]));
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&expected)
    );
}

#[test]
fn port_count_and_refusal_drops_it() {
    let body = crlf(&[
        "v=0",
        "o=- 1 1 IN IP4 192.0.2.1",
        "s=-",
        "t=0 0",
        "m=audio 49170/2 RTP/AVP 31",
        "c=IN IP4 224.2.1.1/127/2",
        "a=rtpmap:31 H261/90000",
    ]);
    let s = ok(&body);
    assert_eq!(s.media[0].port, 49170);
    assert_eq!(s.media[0].port_count, Some(2));
    assert_eq!(&body[s.media[0].port_span.clone()], b"49170");
    let out = refused(&body, &[true]);
    let expected = crlf(&[
        "v=0",
        "o=- 1 1 IN IP4 192.0.2.1",
        "s=-",
        "t=0 0",
        "m=audio 0 RTP/AVP 31",
    ]);
    assert_eq!(out, expected);
    let again = ok(&out);
    assert_eq!((again.media[0].port, again.media[0].port_count), (0, None));
}

#[test]
fn no_media_is_valid() {
    let body = crlf(SESSION);
    let s = ok(&body);
    assert!(s.media.is_empty());
    assert_eq!(s.session_end, body.len());
    assert_eq!(filter_offer(&s, &MediaPolicy::default()).kept(), 0);
}

#[test]
fn leniencies() {
    // Last line without its ending, trailing empty lines, session-level
    // direction inherited, double spaces in the m= line.
    let mut body = crlf(&["v=0", "o=- 1 1 IN IP4 h", "s=-", "t=0 0", "a=recvonly"]);
    body.extend_from_slice(b"m=audio  5004 RTP/AVP  0\r\n\r\n");
    let s = ok(&body);
    assert_eq!(s.media[0].port, 5004);
    assert_eq!(s.media[0].formats, vec!["0"]);
    assert_eq!(s.media[0].direction.as_deref(), Some("recvonly"));
    assert_eq!(
        s.media[0].range.end,
        body.len() - 2,
        "trailing empty line outside the section"
    );
    let out = refused(&body, &[true]);
    assert!(out.ends_with(b"m=audio  0 RTP/AVP  0\r\n\r\n"));

    let body = b"v=0\no=- 1 1 IN IP4 h\ns=-\nt=0 0\nm=audio 5004 RTP/AVP 0";
    let s = ok(body);
    assert_eq!(s.media[0].range.end, body.len());
    assert_eq!(
        refused(body, &[true]),
        b"v=0\no=- 1 1 IN IP4 h\ns=-\nt=0 0\nm=audio 0 RTP/AVP 0"
    );
}

// ---------------------------------------------------------------- malformed

#[test]
fn malformed_bodies() {
    let s = |extra: &[&str]| {
        crlf(&lines(&[
            &["v=0", "o=- 1 1 IN IP4 h", "s=-", "t=0 0"],
            extra,
        ]))
    };
    assert_eq!(parse_err(b""), "Malformed SDP: first line not v=0");
    assert_eq!(
        parse_err(&crlf(&["o=- 1 1 IN IP4 h", "s=-", "t=0 0"])),
        "Malformed SDP: first line not v=0"
    );
    assert_eq!(
        parse_err(&crlf(&["v=1", "o=- 1 1 IN IP4 h", "s=-", "t=0 0"])),
        "Malformed SDP: first line not v=0"
    );
    assert_eq!(
        parse_err(&crlf(&["v=0", "s=-", "t=0 0"])),
        "Malformed SDP: missing o= line"
    );
    assert_eq!(
        parse_err(&crlf(&["v=0", "o=- 1 1 IN IP4 h", "t=0 0"])),
        "Malformed SDP: missing s= line"
    );
    assert_eq!(
        parse_err(&crlf(&["v=0", "o=- 1 1 IN IP4 h", "s=-"])),
        "Malformed SDP: missing t= line"
    );
    // t= only after the first m= line: not in the session part.
    assert_eq!(
        parse_err(&crlf(&[
            "v=0",
            "o=- 1 1 IN IP4 h",
            "s=-",
            "m=audio 1 RTP/AVP 0",
            "t=0 0"
        ])),
        "Malformed SDP: missing t= line"
    );
    assert_eq!(
        parse_err(&s(&["m=audio 70000 RTP/AVP 0"])),
        "Malformed SDP: bad m= port"
    );
    assert_eq!(
        parse_err(&s(&["m=audio abc RTP/AVP 0"])),
        "Malformed SDP: bad m= port"
    );
    assert_eq!(
        parse_err(&s(&["m=audio +5 RTP/AVP 0"])),
        "Malformed SDP: bad m= port"
    );
    assert_eq!(
        parse_err(&s(&["m=audio 5/x RTP/AVP 0"])),
        "Malformed SDP: bad m= port"
    );
    assert_eq!(
        parse_err(&s(&["m=audio 49170 RTP/AVP"])),
        "Malformed SDP: m= line without fmt"
    );
    assert_eq!(
        parse_err(&s(&["m=audio 49170 RTP/AVP "])),
        "Malformed SDP: m= line without fmt"
    );
    assert_eq!(
        parse_err(&s(&["m=audio 49170"])),
        "Malformed SDP: bad m= line"
    );
    assert_eq!(parse_err(&s(&["m="])), "Malformed SDP: bad m= line");
    assert_eq!(
        parse_err(&s(&["m=audio 1 RTP/AVP 0", "s=again"])),
        "Malformed SDP: session line in media section"
    );
    assert_eq!(parse_err(&s(&["v=0"])), "Malformed SDP: misplaced v= line");
    assert_eq!(parse_err(&s(&["", "a=x"])), "Malformed SDP: empty line");
    assert_eq!(parse_err(&s(&["no equals"])), "Malformed SDP: bad line");
    assert_eq!(parse_err(&s(&["ab=c"])), "Malformed SDP: bad line");
    assert_eq!(parse_err(&s(&["1=c"])), "Malformed SDP: bad line");
    assert_eq!(
        parse_err(&s(&["m=message 1 TCP/MSRP *", "a=file-selector:size:12x"])),
        "Malformed SDP: bad file-selector size"
    );
    assert_eq!(
        parse_err(&s(&[
            "m=message 1 TCP/MSRP *",
            "a=file-selector:size:99999999999999999999"
        ])),
        "Malformed SDP: bad file-selector size"
    );
    // Binary garbage.
    assert_eq!(
        parse_err(&[0xff, 0xfe, 0x00, 0x80, 0x13]),
        "Malformed SDP: not UTF-8"
    );
    assert_eq!(
        parse_err(b"v=0\r\no=\x00\r\ns=-\r\nt=0 0\r\n"),
        "Malformed SDP: control character"
    );
    assert_eq!(
        parse_err(b"v=0\r\no=- 1\r1 IN\r\ns=-\r\nt=0 0\r\n"),
        "Malformed SDP: control character"
    );
    assert_eq!(
        parse_err(b"\x01\x02\x03garbage"),
        "Malformed SDP: first line not v=0"
    );
}

#[test]
fn bounds() {
    let mline = ["m=audio 1 RTP/AVP 0"; 65];
    assert_eq!(ok(&crlf(&lines(&[SESSION, &mline[..64]]))).media.len(), 64);
    assert_eq!(
        parse_err(&crlf(&lines(&[SESSION, &mline]))),
        "SDP too large: too many m= lines"
    );

    let mut body = crlf(SESSION);
    let filler = "a=x:".to_string() + &"y".repeat(1000);
    while body.len() <= sdp::MAX_BODY {
        body.extend_from_slice(filler.as_bytes());
        body.extend_from_slice(b"\r\n");
    }
    assert_eq!(parse_err(&body), "SDP too large");
}

#[test]
fn error_texts_are_reason_phrases() {
    for body in [&b""[..], b"v=0\r\nm=", b"\xff", b"v=0\r\n\r\nx"] {
        let SdpError(e) = parse(body).unwrap_err();
        assert!(
            e.len() < 64 && e.bytes().all(|b| (0x20..0x7f).contains(&b)),
            "{e}"
        );
    }
}

// ---------------------------------------------------------------- refusal

#[test]
fn video_disallowed_refuses_video_byte_for_byte() {
    let body = av_msg();
    let s = ok(&body);
    let policy = MediaPolicy {
        allowed_media: strs(&["audio", "message"]),
        ..MediaPolicy::default()
    };
    let v = filter_offer(&s, &policy);
    assert_eq!(v.refuse, vec![false, true, false]);
    assert_eq!(
        v.reasons,
        vec![None, Some("media video not allowed".into()), None]
    );
    assert_eq!(v.kept(), 2);
    assert!(v.any_refused());

    let mut out = b"prefix:".to_vec(); // appends, never clears
    refuse_streams(&body, &s, &v.refuse, &mut out);
    let expected = crlf(&lines(&[
        SESSION,
        AUDIO,
        &["m=video 0 RTP/AVP 31 32"],
        MESSAGE,
    ]));
    assert_eq!(&out[..7], b"prefix:");
    assert_eq!(
        String::from_utf8_lossy(&out[7..]),
        String::from_utf8_lossy(&expected)
    );

    let again = ok(&out[7..]);
    assert_eq!(again.media.len(), 3);
    assert_eq!(again.media[1].port, 0);
    assert_eq!(again.media[1].formats, vec!["31", "32"]);
    assert_eq!(
        again.media[2].accept_types,
        vec!["message/cpim", "text/plain"]
    );
}

#[test]
fn refuse_none_is_identity_and_refuse_all() {
    let body = av_msg();
    assert_eq!(refused(&body, &[false, false, false]), body);
    assert_eq!(refused(&body, &[]), body);
    let out = refused(&body, &[true, true, true]);
    let expected = crlf(&lines(&[
        SESSION,
        &[
            "m=audio 0 RTP/AVP 0 8 97",
            "m=video 0 RTP/AVP 31 32",
            "m=message 0 TCP/MSRP *",
        ],
    ]));
    assert_eq!(out, expected);
}

#[test]
fn refuse_streams_with_foreign_sdp_copies_unchanged() {
    let body = av_msg();
    let s = ok(&body);
    let short = crlf(SESSION);
    let mut out = Vec::new();
    refuse_streams(&short, &s, &[true, true, true], &mut out);
    assert_eq!(out, short);
}

// ---------------------------------------------------------------- policy

#[test]
fn everything_disallowed_keeps_nothing() {
    let s = ok(&av_msg());
    let v = filter_offer(
        &s,
        &MediaPolicy {
            allowed_media: strs(&["image"]),
            ..MediaPolicy::default()
        },
    );
    assert_eq!(v.kept(), 0);
    assert_eq!(v.refuse, vec![true; 3]);
    assert!(v.reasons.iter().all(Option::is_some));
    let v = filter_offer(
        &s,
        &MediaPolicy {
            max_streams: Some(0),
            ..MediaPolicy::default()
        },
    );
    assert_eq!(v.kept(), 0);
}

#[test]
fn no_policy_keeps_everything() {
    let s = ok(&av_msg());
    let v = filter_offer(&s, &MediaPolicy::default());
    assert_eq!(
        v,
        OfferVerdict {
            refuse: vec![false; 3],
            reasons: vec![None; 3]
        }
    );
    assert!(!v.any_refused());
}

#[test]
fn accept_types_not_allowed_refuses_message() {
    let body = chat();
    let s = ok(&body);
    let with = |allowed: &[&str]| {
        filter_offer(
            &s,
            &MediaPolicy {
                allowed_accept_types: strs(allowed),
                ..MediaPolicy::default()
            },
        )
    };
    let v = with(&["message/cpim"]);
    assert_eq!(v.refuse, vec![true]);
    assert_eq!(
        v.reasons[0].as_deref(),
        Some("accept-type text/plain not allowed")
    );
    assert_eq!(v.kept(), 0);
    assert_eq!(with(&["Message/CPIM", "text/*"]).kept(), 1);
    assert_eq!(with(&["*"]).kept(), 1);
    assert_eq!(with(&["message/*", "text/plain"]).kept(), 1);
    // Only message streams are subject to accept-types.
    let s2 = ok(&av_msg());
    let v = filter_offer(
        &s2,
        &MediaPolicy {
            allowed_accept_types: strs(&["text/plain"]),
            ..MediaPolicy::default()
        },
    );
    assert_eq!(v.refuse, vec![false, false, true]);

    // An offered wildcard needs a policy at least as wide.
    let wild = crlf(&lines(&[
        SESSION,
        &["m=message 1 TCP/MSRP *", "a=accept-types:*"],
    ]));
    let sw = ok(&wild);
    let p = |a: &[&str]| MediaPolicy {
        allowed_accept_types: strs(a),
        ..MediaPolicy::default()
    };
    assert_eq!(filter_offer(&sw, &p(&["text/*"])).kept(), 0);
    assert_eq!(filter_offer(&sw, &p(&["*"])).kept(), 1);
    // Missing accept-types on an MSRP stream under a restricted policy.
    let none = crlf(&lines(&[SESSION, &["m=message 1 TCP/MSRP *"]]));
    let v = filter_offer(&ok(&none), &p(&["*"]));
    assert_eq!(v.reasons[0].as_deref(), Some("no accept-types"));
}

#[test]
fn max_streams_keeps_the_first() {
    let s = ok(&av_msg());
    let v = filter_offer(
        &s,
        &MediaPolicy {
            max_streams: Some(1),
            ..MediaPolicy::default()
        },
    );
    assert_eq!(v.refuse, vec![false, true, true]);
    assert_eq!(v.reasons[1].as_deref(), Some("stream limit 1 reached"));
    assert_eq!(v.kept(), 1);
}

#[test]
fn refused_in_offer_stays_refused_and_uses_no_quota() {
    let audio0: Vec<&str> = ["m=audio 0 RTP/AVP 0 8 97"]
        .into_iter()
        .chain(AUDIO[1..].iter().copied())
        .collect();
    let body = crlf(&lines(&[SESSION, &audio0, VIDEO, MESSAGE]));
    let s = ok(&body);
    let v = filter_offer(
        &s,
        &MediaPolicy {
            max_streams: Some(1),
            ..MediaPolicy::default()
        },
    );
    assert_eq!(v.refuse, vec![true, false, true]);
    assert_eq!(v.reasons[0].as_deref(), Some("refused in the offer"));
    // Streams refused for another rule do not use the quota either.
    let v = filter_offer(
        &s,
        &MediaPolicy {
            max_streams: Some(1),
            allowed_media: strs(&["audio", "message"]),
            ..MediaPolicy::default()
        },
    );
    assert_eq!(v.refuse, vec![true, true, false]);
}

#[test]
fn file_too_big_is_refused() {
    let s = ok(&file_transfer());
    let p = |max| MediaPolicy {
        max_file_size: Some(max),
        ..MediaPolicy::default()
    };
    let v = filter_offer(&s, &p(32348));
    assert_eq!(v.refuse, vec![true]);
    assert_eq!(
        v.reasons[0].as_deref(),
        Some("file size 32349 exceeds 32348")
    );
    assert_eq!(filter_offer(&s, &p(32349)).kept(), 1);
    // A chat stream has no file size: not subject to the limit.
    assert_eq!(filter_offer(&ok(&chat()), &p(0)).kept(), 1);

    // The refused file transfer keeps only its m= line.
    let body = file_transfer();
    let out = refused(&body, &[true]);
    assert!(out.ends_with(b"t=0 0\r\nm=message 0 TCP/MSRP *\r\n"));
}

#[test]
fn protocol_not_allowed() {
    let s = ok(&av_msg());
    let v = filter_offer(
        &s,
        &MediaPolicy {
            allowed_protos: strs(&["RTP/SAVP", "TCP/MSRP", "TCP/TLS/MSRP"]),
            ..MediaPolicy::default()
        },
    );
    assert_eq!(v.refuse, vec![true, true, false]);
    assert_eq!(
        v.reasons[0].as_deref(),
        Some("protocol RTP/AVP not allowed")
    );
    let v = filter_offer(
        &s,
        &MediaPolicy {
            allowed_protos: strs(&["rtp/avp", "tcp/msrp"]),
            ..MediaPolicy::default()
        },
    );
    assert_eq!(v.kept(), 3);
}

#[test]
fn merged_policies() {
    let provider = MediaPolicy {
        allowed_media: strs(&["audio", "message"]),
        allowed_protos: strs(&["RTP/AVP", "TCP/MSRP"]),
        max_streams: Some(2),
        ..MediaPolicy::default()
    };
    let group = MediaPolicy {
        allowed_media: strs(&["audio", "video", "message"]),
        max_file_size: Some(1000),
        ..MediaPolicy::default()
    };
    let m = provider.merged(&group);
    assert_eq!(
        m,
        MediaPolicy {
            allowed_media: strs(&["audio", "video", "message"]),
            allowed_protos: strs(&["RTP/AVP", "TCP/MSRP"]),
            allowed_accept_types: None,
            max_streams: Some(2),
            max_file_size: Some(1000),
        }
    );
    assert_eq!(provider.merged(&MediaPolicy::default()), provider);
    assert_eq!(MediaPolicy::default().merged(&group), group);

    let v = filter_offer(&ok(&av_msg()), &m);
    assert_eq!(v.refuse, vec![false, false, true]);
    let v = filter_offer(&ok(&av_msg()), &provider);
    assert_eq!(v.refuse, vec![false, true, false]);
}

#[test]
fn policy_serde() {
    let p: MediaPolicy =
        serde_json::from_str(r#"{"allowed_media":["audio"],"max_streams":3}"#).unwrap();
    assert_eq!(p.allowed_media, strs(&["audio"]));
    assert_eq!(p.max_streams, Some(3));
    assert_eq!(p.allowed_protos, None);
    assert_eq!(
        serde_json::from_str::<MediaPolicy>("{}").unwrap(),
        MediaPolicy::default()
    );
    assert!(serde_json::from_str::<MediaPolicy>(r#"{"allowed_medias":["audio"]}"#).is_err());
    let back: MediaPolicy = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(back, p);
}

// ---------------------------------------------------------------- answers

fn offered() -> (Vec<bool>, Vec<MediaType>) {
    (
        vec![true, false, true],
        vec![MediaType::Audio, MediaType::Video, MediaType::Message],
    )
}

fn answer(audio: u16, video: u16, msg: u16) -> Vec<u8> {
    let a = format!("m=audio {audio} RTP/AVP 0");
    let v = format!("m=video {video} RTP/AVP 31");
    let m = format!("m=message {msg} TCP/MSRP *");
    crlf(&lines(&[
        SESSION,
        &[&a, &v, &m, "a=accept-types:message/cpim"],
    ]))
}

#[test]
fn answer_valid_subset_ok() {
    let (ports, types) = offered();
    assert_eq!(
        check_answer(&ports, &types, &ok(&answer(49170, 0, 7394))),
        Ok(())
    );
    assert_eq!(
        check_answer(&ports, &types, &ok(&answer(0, 0, 7394))),
        Ok(())
    );
    assert_eq!(
        check_answer(&ports, &types, &ok(&answer(49170, 0, 0))),
        Ok(())
    );
}

#[test]
fn answer_accepting_refused_stream() {
    let (ports, types) = offered();
    let r = check_answer(&ports, &types, &ok(&answer(49170, 51372, 7394)));
    assert_eq!(
        r,
        Err(AnswerViolation(
            "m= line 2: accepts a stream refused in the offer".into()
        ))
    );
}

#[test]
fn answer_wrong_number_of_mlines() {
    let (ports, types) = offered();
    let two = crlf(&lines(&[
        SESSION,
        &["m=audio 1 RTP/AVP 0", "m=video 0 RTP/AVP 31"],
    ]));
    let r = check_answer(&ports, &types, &ok(&two));
    assert_eq!(
        r,
        Err(AnswerViolation("answer has 2 m= lines, offer had 3".into()))
    );
    let none = crlf(SESSION);
    assert!(check_answer(&ports, &types, &ok(&none)).is_err());
}

#[test]
fn answer_different_media_type() {
    let (ports, types) = offered();
    let body = crlf(&lines(&[
        SESSION,
        &[
            "m=audio 1 RTP/AVP 0",
            "m=video 0 RTP/AVP 31",
            "m=text 5 RTP/AVP 98",
        ],
    ]));
    let r = check_answer(&ports, &types, &ok(&body));
    assert_eq!(
        r,
        Err(AnswerViolation(
            "m= line 3: answer text for offered message".into()
        ))
    );
}

#[test]
fn answer_accepting_nothing() {
    let (ports, types) = offered();
    let r = check_answer(&ports, &types, &ok(&answer(0, 0, 0)));
    assert_eq!(r, Err(AnswerViolation("answer accepts no stream".into())));
    // No streams offered, none answered: nothing to violate.
    assert_eq!(check_answer(&[], &[], &ok(&crlf(SESSION))), Ok(()));
    // Inconsistent description of the offer.
    assert!(check_answer(&[true], &[], &ok(&crlf(SESSION))).is_err());
}

#[test]
fn offer_then_answer_round_trip() {
    // What the slow path does: filter, rewrite, remember, check the answer.
    let body = av_msg();
    let s = ok(&body);
    let policy = MediaPolicy {
        allowed_media: strs(&["audio", "message"]),
        ..MediaPolicy::default()
    };
    let v = filter_offer(&s, &policy);
    let mut fwd = Vec::new();
    refuse_streams(&body, &s, &v.refuse, &mut fwd);
    let f = ok(&fwd);
    let ports: Vec<bool> = f.media.iter().map(|m| m.port != 0).collect();
    let types: Vec<MediaType> = f.media.iter().map(|m| m.media_type.clone()).collect();
    assert_eq!(ports, vec![true, false, true]);
    assert_eq!(
        check_answer(&ports, &types, &ok(&answer(49170, 0, 7394))),
        Ok(())
    );
    assert!(check_answer(&ports, &types, &ok(&answer(49170, 9, 7394))).is_err());
}

// ---------------------------------------------------------------- property

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[u8] = b" \r\n=/0123456789maovst:*\"\x00\xff";
const SNIPPETS: &[&[u8]] = &[
    b"m=audio 0 RTP/AVP 0\r\n",
    b"m=video 65535/3 RTP/SAVP 96\n",
    b"a=accept-types:text/plain\r\n",
    b"a=file-selector:size:123 name:\"x y\"\r\n",
    b"a=sendonly\r\n",
    b"\r\n",
    b"/",
    b"m=",
    b"65536",
];

fn mutate(rng: &mut XorShift, mut b: Vec<u8>) -> Vec<u8> {
    for _ in 0..=rng.below(3) {
        let len = b.len();
        match rng.below(6) {
            0 if len > 0 => {
                let i = rng.below(len);
                b[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                b[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 if len > 0 => {
                let i = rng.below(len);
                let j = (i + 1 + rng.below(16)).min(len);
                b.drain(i..j);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let j = (i + 1 + rng.below(64)).min(len);
                let chunk = b[i..j].to_vec();
                let at = rng.below(len + 1);
                b.splice(at..at, chunk);
            }
            4 => {
                let at = rng.below(len + 1);
                let snip = SNIPPETS[rng.below(SNIPPETS.len())];
                b.splice(at..at, snip.iter().copied());
            }
            _ => {
                let at = rng.below(len + 1);
                b.truncate(at);
            }
        }
    }
    b
}

#[test]
fn mutations_never_panic_and_refusal_reparses() {
    let seeds = [
        av_msg(),
        chat(),
        file_transfer(),
        lf(&lines(&[SESSION, AUDIO, MESSAGE])),
    ];
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let restrictive = MediaPolicy {
        allowed_media: strs(&["message", "audio"]),
        allowed_protos: strs(&["TCP/MSRP", "RTP/AVP"]),
        allowed_accept_types: strs(&["message/cpim", "text/*"]),
        max_streams: Some(2),
        max_file_size: Some(1000),
    };
    let mut parsed = 0;
    for round in 0..2000 {
        let seed = &seeds[round % seeds.len()];
        let body = mutate(&mut rng, seed.clone());
        let Ok(s) = parse(&body) else { continue };
        parsed += 1;
        let n = s.media.len();
        let random: Vec<bool> = (0..n).map(|_| rng.next() & 1 == 1).collect();
        let verdict = filter_offer(&s, &restrictive);
        assert_eq!(verdict.refuse.len(), n);
        assert_eq!(verdict.reasons.len(), n);
        for mask in [vec![false; n], vec![true; n], random, verdict.refuse] {
            let mut out = Vec::new();
            refuse_streams(&body, &s, &mask, &mut out);
            assert!(out.len() <= body.len());
            let again = parse(&out).unwrap_or_else(|e| {
                panic!(
                    "{e:?} after refusing {mask:?} in {:?}",
                    String::from_utf8_lossy(&body)
                )
            });
            assert_eq!(again.media.len(), n);
            for (m, &r) in again.media.iter().zip(&mask) {
                if r {
                    assert_eq!(m.port, 0);
                    // Only the m= line and its ending are left.
                    assert!(m.range.end - m.mline.end <= 2);
                }
            }
            if mask.iter().all(|r| !r) {
                assert_eq!(out, body);
            }
        }
    }
    // The property must not hold vacuously.
    eprintln!("{parsed} of 2000 mutants parsed");
    assert!(parsed > 200, "only {parsed} mutants parsed");
}
