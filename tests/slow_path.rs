//! The media policy slow path (seed 5.2.3.7) through real sockets: offers
//! filtered, refused whole (488), malformed (400), answers checked (pass or
//! 500), overrides per user and per group, live policy updates, and a full
//! queue answered 503 without losing anything.

mod common;
use common::*;
use cpm_edge::app::App;
use cpm_edge::config::Config;
use std::net::UdpSocket;
use std::time::Duration;

const AV_SDP: &str = "v=0
o=alice 2890844526 1 IN IP4 192.0.2.10
s=-
c=IN IP4 192.0.2.10
t=0 0
m=audio 49170 RTP/AVP 0 8
a=rtpmap:0 PCMU/8000
m=video 51372 RTP/AVP 31
a=rtpmap:31 H261/90000
a=sendrecv
m=message 7394 TCP/MSRP *
a=accept-types:message/cpim
a=path:msrp://192.0.2.10:7394/s111;tcp
";

struct Rig {
    app: App,
    shards: Vec<UdpSocket>,
    client: UdpSocket,
}

fn rig(policy: &str) -> Rig {
    let shards: Vec<UdpSocket> = (0..2).map(|_| sock()).collect();
    let mut toml = format!(
        "[listen]\naddr = \"127.0.0.1:{}\"\n[admin]\nbind = \"127.0.0.1:0\"\n[health]\nenabled = false\n[workers]\ncount = 2\n",
        free_port()
    );
    for (i, s) in shards.iter().enumerate() {
        toml += &format!(
            "[[shard]]\nname = \"cs{}\"\naddr = \"{}\"\n",
            i + 1,
            s.local_addr().unwrap()
        );
    }
    toml += "[[group]]\nid = \"sip:grp1@groups.example.net\"\nshard = \"cs1\"\n";
    toml += policy;
    let app = App::start(&Config::parse(&toml).unwrap().validate().unwrap()).unwrap();
    Rig {
        app,
        shards,
        client: sock(),
    }
}

/// A client INVITE (user `user`) to `to` with the given SDP body.
fn invite(r: &Rig, user: &str, to: &str, sdp: &str, call: &str) -> Vec<u8> {
    let ca = r.client.local_addr().unwrap().to_string();
    let m = String::from_utf8(invite_to_group("grpX", user, "")).unwrap();
    let head: Vec<&str> = m
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .split("\r\n")
        .filter(|l| !l.starts_with("Content-Length"))
        .collect();
    let text = format!("{}\nContent-Length: {{len}}\n\n{sdp}", head.join("\n"))
        .replace("sip:grpX@groups.example.net", to)
        .replace("192.0.2.10:5062", &ca)
        .replace(&format!("{user}-call-1@192.0.2.10"), call);
    wire(&text)
}

fn body_of(msg: &str) -> &str {
    msg.split_once("\r\n\r\n").unwrap().1
}

const NO_VIDEO: &str = "[policy.default]\nallowed_media = [\"audio\", \"message\"]\n";

#[test]
fn disallowed_stream_is_refused_with_port_zero_and_content_length_rewritten() {
    let r = rig(NO_VIDEO);
    let edge = r.app.server.local_addr;
    r.client
        .send_to(
            &invite(&r, "alice", "sip:grp1@groups.example.net", AV_SDP, "av-1"),
            edge,
        )
        .unwrap();
    let (_, fwd) = recv_any(&r.shards);
    let body = body_of(&fwd);
    assert!(body.contains("m=video 0 RTP/AVP 31\r\n"), "{body}");
    assert!(
        !body.contains("H261"),
        "the refused stream's attributes are trimmed"
    );
    assert!(
        body.contains("m=audio 49170 RTP/AVP 0 8\r\n")
            && body.contains("m=message 7394 TCP/MSRP *\r\n")
    );
    assert_eq!(
        header(&fwd, "Content-Length"),
        vec![format!("Content-Length: {}", body.len()).as_str()]
    );
    // Everything but the video section is byte-identical.
    let expected = AV_SDP.replace('\n', "\r\n").replace(
        "m=video 51372 RTP/AVP 31\r\na=rtpmap:31 H261/90000\r\na=sendrecv\r\n",
        "m=video 0 RTP/AVP 31\r\n",
    );
    assert_eq!(body, expected);
    let st = &r.app.server.slow.as_ref().unwrap().stats;
    assert_eq!(
        st.offers_filtered
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    r.app.stop().unwrap();
}

#[test]
fn nothing_acceptable_gets_488_with_warning_304_and_malformed_sdp_400() {
    let r = rig("[policy.default]\nallowed_media = [\"text\"]\n");
    let edge = r.app.server.local_addr;
    r.client
        .send_to(
            &invite(&r, "alice", "sip:bob@example.net", AV_SDP, "none-1"),
            edge,
        )
        .unwrap();
    let (resp, _) = recv(&r.client);
    assert!(
        resp.starts_with("SIP/2.0 488 Not Acceptable Here\r\n"),
        "{resp}"
    );
    assert_eq!(
        header(&resp, "Warning"),
        vec![format!("Warning: 304 {edge} \"Media type not available\"").as_str()]
    );
    let bad = AV_SDP.replace("v=0\n", "");
    r.client
        .send_to(
            &invite(&r, "alice", "sip:bob@example.net", &bad, "bad-1"),
            edge,
        )
        .unwrap();
    let (resp, _) = recv(&r.client);
    let status = resp.split("\r\n").next().unwrap();
    assert!(
        status.starts_with("SIP/2.0 400 Bad Request - ") && status.contains("SDP"),
        "{status}"
    );
    r.app.stop().unwrap();
}

#[test]
fn answers_are_checked_against_the_forwarded_offer() {
    for (mode, expect) in [
        ("pass", "SIP/2.0 200 OK"),
        ("reject", "SIP/2.0 500 Answer Violates Media Policy"),
    ] {
        let r = rig(&format!("{NO_VIDEO}[policy]\non_violation = \"{mode}\"\n"));
        let edge = r.app.server.local_addr;
        // A good answer: video refused as offered.
        r.client
            .send_to(
                &invite(&r, "alice", "sip:grp1@groups.example.net", AV_SDP, "ans-ok"),
                edge,
            )
            .unwrap();
        let (i, fwd) = recv_any(&r.shards);
        let good = AV_SDP.replace("m=video 51372", "m=video 0");
        cs_answer(&r.shards[i], &fwd, "200 OK", Some(&good));
        let (resp, _) = recv(&r.client);
        assert!(resp.starts_with("SIP/2.0 200 OK"), "{mode}: {resp}");
        // A bad answer: accepts the video the edge refused.
        r.client
            .send_to(
                &invite(
                    &r,
                    "alice",
                    "sip:grp1@groups.example.net",
                    AV_SDP,
                    "ans-bad",
                ),
                edge,
            )
            .unwrap();
        let (i, fwd) = recv_any(&r.shards);
        cs_answer(&r.shards[i], &fwd, "200 OK", Some(AV_SDP));
        let (resp, _) = recv(&r.client);
        assert!(resp.starts_with(expect), "{mode}: {resp}");
        if mode == "reject" {
            assert!(body_of(&resp).is_empty() && header(&resp, "Content-Type").is_empty());
            assert_eq!(header(&resp, "Call-ID"), vec!["Call-ID: ans-bad"]);
        }
        let st = &r.app.server.slow.as_ref().unwrap().stats;
        assert_eq!(
            st.answers_checked
                .load(std::sync::atomic::Ordering::Relaxed),
            2,
            "{mode}"
        );
        assert_eq!(
            st.answer_violations
                .load(std::sync::atomic::Ordering::Relaxed),
            1,
            "{mode}"
        );
        r.app.stop().unwrap();
    }
}

#[test]
fn user_and_group_overrides_and_live_policy_updates() {
    let r = rig(&format!(
        "{NO_VIDEO}[policy.users.\"sip:alice@example.net\"]\nallowed_media = [\"audio\", \"video\", \"message\"]\n[policy.groups.\"sip:grp1@groups.example.net\"]\nallowed_media = [\"message\"]\n"
    ));
    let edge = r.app.server.local_addr;
    // Leg 1 (inviting user's PF): alice's override keeps video, bob's default strips it.
    r.client
        .send_to(
            &invite(&r, "alice", "sip:carol@example.net", AV_SDP, "ov-a"),
            edge,
        )
        .unwrap();
    let (_, fwd) = recv_any(&r.shards);
    assert!(
        body_of(&fwd).contains("m=video 51372"),
        "alice may use video"
    );
    r.client
        .send_to(
            &invite(&r, "bob", "sip:carol@example.net", AV_SDP, "ov-b"),
            edge,
        )
        .unwrap();
    let (_, fwd) = recv_any(&r.shards);
    assert!(body_of(&fwd).contains("m=video 0 "), "bob gets the default");
    // Leg 2 (Controlling Function): the group's policy, from a CS with our orig marker.
    let cs = &r.shards[1];
    let msg = String::from_utf8(invite(
        &r,
        "alice",
        "sip:grp1@groups.example.net",
        AV_SDP,
        "ov-g",
    ))
    .unwrap()
    .replacen(
        "\r\n",
        &format!("\r\nRoute: <sip:{edge};lr;cpm-leg=orig>\r\n"),
        1,
    );
    cs.send_to(msg.as_bytes(), edge).unwrap();
    let (i, fwd) = recv_any(&r.shards);
    assert_eq!(i, 0, "grp1 on cs1");
    let body = body_of(&fwd);
    assert!(
        body.contains("m=audio 0 ")
            && body.contains("m=video 0 ")
            && body.contains("m=message 7394"),
        "{body}"
    );
    // Live update: the default now allows video too.
    let admin = r.app.admin_addr.unwrap();
    let (st, resp) = http(
        admin,
        "PUT",
        "/policies/default",
        r#"{"allowed_media":["audio","video","message"]}"#,
        None,
    );
    assert_eq!(st, 200, "{resp}");
    r.client
        .send_to(
            &invite(&r, "bob", "sip:carol@example.net", AV_SDP, "ov-b2"),
            edge,
        )
        .unwrap();
    let (_, fwd) = recv_any(&r.shards);
    assert!(
        body_of(&fwd).contains("m=video 51372"),
        "live policy update applied"
    );
    let (st, resp) = http(
        admin,
        "PUT",
        "/policies/default",
        r#"{"allowed_media":"audio"}"#,
        None,
    );
    assert_eq!(st, 400, "{resp}");
    let (_, list) = http(admin, "GET", "/policies", "", None);
    assert!(
        list.contains("alice@example.net") && list.contains("grp1@groups.example.net"),
        "{list}"
    );
    r.app.stop().unwrap();
}

#[test]
fn a_full_slow_path_queue_answers_503_and_loses_nothing() {
    let r = rig(&format!("{NO_VIDEO}[slow_path]\nthreads = 1\nqueue = 1\n"));
    let edge = r.app.server.local_addr;
    const N: usize = 300;
    big_rcvbuf(&r.client);
    for s in &r.shards {
        big_rcvbuf(s);
    }
    for i in 0..N {
        r.client
            .send_to(
                &invite(
                    &r,
                    &format!("u{i}"),
                    "sip:carol@example.net",
                    AV_SDP,
                    &format!("q-{i}"),
                ),
                edge,
            )
            .unwrap();
    }
    let mut forwarded = std::collections::HashSet::new();
    let mut refused = std::collections::HashSet::new();
    let mut buf = vec![0u8; 65536];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for s in r.shards.iter().chain([&r.client]) {
        s.set_nonblocking(true).unwrap();
    }
    while forwarded.len() + refused.len() < N && std::time::Instant::now() < deadline {
        let mut got = false;
        for s in &r.shards {
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                forwarded.insert(header(&m, "Call-ID")[0].to_string());
                got = true;
            }
        }
        while let Ok((n, _)) = r.client.recv_from(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert!(m.starts_with("SIP/2.0 503 "), "{m}");
            assert_eq!(header(&m, "Retry-After").len(), 1);
            refused.insert(header(&m, "Call-ID")[0].to_string());
            got = true;
        }
        if !got {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    assert_eq!(
        forwarded.len() + refused.len(),
        N,
        "every INVITE forwarded or answered 503"
    );
    assert!(forwarded.is_disjoint(&refused));
    let snap = r.app.server.snapshot();
    assert_eq!(snap.slow_full as usize, refused.len());
    assert_eq!(snap.slow_queued as usize, forwarded.len());
    println!(
        "queue=1: {} through the slow path, {} answered 503",
        forwarded.len(),
        refused.len()
    );
    r.app.stop().unwrap();
}
