//! The whole system over real UDP: clients A-E (scripted user agents,
//! `tests/common/party.rs`) → cpm-edge → two cpm-cs shards, OMA CPM
//! Appendix C.1 end to end. A's Participating Function and the group's
//! Controlling Function are on different shards, so the session crosses
//! edge → PF(A) → edge → CF → edge → PF(member) → edge → member.
//!
//! Every party's received messages are checked message by message
//! (retransmissions removed: `summary_dedup`).

mod common;

use common::free_port;
use common::party::{msrp_sdp, Answer, Party};
use cpm_edge::app::App;
use cpm_edge::config::Config;
use cpm_edge::csnode::{self, Shard};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const GROUP: &str = "sip:team@groups.example.net";
const WAIT: Duration = Duration::from_secs(10);

struct System {
    edge: App,
    edge_addr: SocketAddr,
    shards: Vec<Shard>,
    parties: Vec<Party>,
}

impl System {
    fn party(&self, name: &str) -> &Party {
        self.parties
            .iter()
            .find(|p| p.name() == name)
            .expect("party")
    }

    /// Sessions each shard started, per function: [orig, term, ctrl].
    fn started(&self) -> Vec<[u64; 3]> {
        self.shards
            .iter()
            .map(|s| s.node.snapshot().stats.sessions_started)
            .collect()
    }
}

/// The shard the edge picks for A's Participating Function; the group goes
/// on the other one (the test asserts the path crossed both).
fn system(group_extra: &str, more_groups: &str, user_media: &[(&str, &str)]) -> System {
    system_full(group_extra, more_groups, user_media, None, "")
}

/// A system whose shards also accept requests from `edges_extra = "ADDR"`
/// (another edge of the fleet).
fn system_with_edge(extra: &str) -> System {
    let addr = extra
        .trim_start_matches("edges_extra = ")
        .trim_matches('"')
        .to_string();
    system_full("", "", &[], Some(addr), "")
}

/// `server_extra`: more `[server]` keys (e.g. `terminating = "registered"`).
fn system_full(
    group_extra: &str,
    more_groups: &str,
    user_media: &[(&str, &str)],
    peer_edge: Option<String>,
    server_extra: &str,
) -> System {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("cpm_cs=info,warn"))
        .with_test_writer()
        .try_init();
    let parties: Vec<Party> = ["alice", "bob", "carol", "dave", "erin", "mallory"]
        .iter()
        .map(|n| Party::bind(n))
        .collect();
    let edge_port = free_port();
    let edge_addr: SocketAddr = format!("127.0.0.1:{edge_port}").parse().unwrap();
    let cs = [free_port(), free_port()];
    let edge_toml = format!(
        "[listen]\naddr = \"{edge_addr}\"\n[admin]\nbind = \"127.0.0.1:0\"\n[workers]\ncount = 1\n\
         [health]\nenabled = false\n\
         [[shard]]\nname = \"cs1\"\naddr = \"127.0.0.1:{}\"\n[[shard]]\nname = \"cs2\"\naddr = \"127.0.0.1:{}\"\n",
        cs[0], cs[1]
    );
    let edge = App::start(&Config::parse(&edge_toml).unwrap().validate().unwrap()).unwrap();
    let admin = edge.admin_addr.expect("admin API");
    let host = group_host(&parties[0]);
    let more_groups = more_groups
        .replace("{alice}", &parties[0].aor())
        .replace("{bob}", &parties[1].aor());
    let members: Vec<String> = parties[..5]
        .iter()
        .map(|p| format!("\"{}\"", p.aor()))
        .collect();
    let mut cs_toml = format!(
        "[server]\nedges = [\"{edge_addr}\"{}]\ninvite_timeout_ms = 2000\nconference_factory = \"{FACTORY}\"\n{server_extra}\n\
         [edge_admin]\nurl = \"http://{admin}\"\nsync_interval_ms = 200\n\
         [[shard]]\nname = \"cs1\"\naddr = \"127.0.0.1:{}\"\n[[shard]]\nname = \"cs2\"\naddr = \"127.0.0.1:{}\"\n\
         [[group]]\nid = \"{GROUP}\"\nhost = \"{host}\"\nmembers = [{}]\n{group_extra}\n{more_groups}\n",
        peer_edge.map_or(String::new(), |p| format!(", \"{p}\"")),
        cs[0],
        cs[1],
        members.join(", ")
    );
    for p in &parties {
        cs_toml += &format!("[[user]]\nid = \"{}\"\n", p.aor());
        if let Some((_, media)) = user_media.iter().find(|(n, _)| *n == p.name()) {
            cs_toml += &format!("media = {media}\n");
        }
    }
    let shards = ["cs1", "cs2"]
        .iter()
        .map(|n| csnode::start_shard(&cs_toml, n, true).unwrap())
        .collect();
    let s = System {
        edge,
        edge_addr,
        shards,
        parties,
    };
    wait_registered(admin, GROUP, host);
    s
}

/// The shard that is *not* A's Participating Function at the edge: the
/// rendezvous choice of the two names for A's identity.
fn group_host(alice: &Party) -> &'static str {
    ["cs2", "cs1"][common::pf_shard(&alice.aor())]
}

/// The CS registers the group with the edge's admin API (README: the CS
/// is the source of the group table); wait until the edge routes it.
fn wait_registered(admin: SocketAddr, group: &str, shard: &str) {
    let path = format!("/groups/{group}");
    let t0 = Instant::now();
    loop {
        let (code, body) = common::http(admin, "GET", &path, "", None);
        if code == 200 && body.contains(&format!("\"shard\":\"{shard}\"")) {
            return;
        }
        assert!(t0.elapsed() < WAIT, "group never registered: {code} {body}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn accept(p: &Party, delay_ms: u64) {
    p.set_answer(Answer::Accept {
        ring: true,
        delay: Duration::from_millis(delay_ms),
        sdp: msrp_sdp(p.name(), p.addr()),
    });
}

/// Appendix C.1's cast: B answers at once, C after `carol_ms`, D is busy,
/// E rings until the invite timeout; A is the inviter.
fn c1_cast(s: &System, carol_ms: u64) -> [&Party; 5] {
    let p = ["alice", "bob", "carol", "dave", "erin"].map(|n| s.party(n));
    accept(p[1], 0);
    accept(p[2], carol_ms);
    p[3].set_answer(Answer::Reject {
        code: 486,
        delay: Duration::from_millis(100),
    });
    p[4].set_answer(Answer::RingOnly);
    p
}

/// The first INVITE `p` received.
fn first_invite(p: &Party) -> common::party::Received {
    p.log()
        .into_iter()
        .find(|r| r.start_line.starts_with("INVITE"))
        .expect("an INVITE")
}

fn seq(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Wait until `p`'s deduplicated summary is `want`, then check it stays so
/// a little longer (nothing extra arrives).
fn expect(p: &Party, want: &[&str]) {
    let want = seq(want);
    let t0 = Instant::now();
    while p.summary_dedup() != want {
        assert!(
            t0.elapsed() < WAIT,
            "{}: got {:?}, want {want:?}",
            p.name(),
            p.summary_dedup()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(p.summary_dedup(), want, "{} received more", p.name());
}

#[test]
fn c1_group_session_first_answer_wins_later_joins_busy_leaves_silent_is_cancelled() {
    let s = system("", "", &[]);
    let [a, b, c, d, e] = c1_cast(&s, 600);
    let call = a.invite(GROUP, s.edge_addr, &msrp_sdp("alice", a.addr()), "");
    assert!(
        call.wait_confirmed(WAIT),
        "A's session never confirmed: {:?}",
        a.summary_dedup()
    );
    // C joins after B; D is busy; E rings until the invite timeout (2 s)
    // and is CANCELled.
    expect(b, &["INVITE", "ACK"]);
    expect(c, &["INVITE", "ACK"]);
    expect(d, &["INVITE", "ACK"]);
    expect(e, &["INVITE", "CANCEL", "ACK"]);
    // A saw one 180 and one 200, whatever B, C and E sent.
    expect(a, &["100", "180", "200/INVITE"]);
    let answer = a
        .log()
        .into_iter()
        .find(|r| r.method_or_code == "200")
        .unwrap();
    assert!(
        answer.raw.contains(&format!("a=path:msrp://{}", b.addr())),
        "the 200 carries B's answer:\n{}",
        answer.raw
    );
    assert!(
        answer.raw.contains("isfocus"),
        "a focus Contact:\n{}",
        answer.raw
    );
    // A's BYE ends B's and C's legs.
    assert_eq!(call.bye(), Some(200));
    expect(b, &["INVITE", "ACK", "BYE"]);
    expect(c, &["INVITE", "ACK", "BYE"]);
    expect(a, &["100", "180", "200/INVITE", "200/BYE"]);
    let started = s.started();
    let orig: u64 = started.iter().map(|x| x[0]).sum();
    let ctrl: Vec<u64> = started.iter().map(|x| x[2]).collect();
    assert_eq!(orig, 1, "A's PF served once: {started:?}");
    assert_eq!(ctrl.iter().sum::<u64>(), 1, "{started:?}");
    let pf_shard = started.iter().position(|x| x[0] == 1).unwrap();
    let cf_shard = ctrl.iter().position(|x| *x == 1).unwrap();
    assert_ne!(
        pf_shard, cf_shard,
        "A's PF and the group's CF on different shards"
    );
    // Every member's terminating PF: four sessions over both shards.
    assert_eq!(started.iter().map(|x| x[1]).sum::<u64>(), 4, "{started:?}");
    // The sessions are over everywhere, nothing left in the tables.
    let t0 = Instant::now();
    while s.shards.iter().any(|x| x.node.snapshot().sessions > 0) {
        assert!(
            t0.elapsed() < WAIT,
            "sessions left: {:?}",
            s.shards
                .iter()
                .map(|x| x.node.snapshot().sessions)
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(s.edge);
}

#[test]
fn c1_inviter_cancel_before_any_answer_cancels_every_leg() {
    let s = system("", "", &[]);
    let a = s.party("alice");
    let members = ["bob", "carol", "dave", "erin"].map(|n| s.party(n));
    for m in members {
        m.set_answer(Answer::RingOnly);
    }
    let call = a.invite(GROUP, s.edge_addr, &msrp_sdp("alice", a.addr()), "");
    for m in members {
        assert!(m.wait_got("INVITE", WAIT), "{} not invited", m.name());
    }
    assert!(a.wait_got("180", WAIT));
    assert!(call.cancel());
    assert_eq!(call.wait_final(WAIT), Some(487));
    for m in members {
        expect(m, &["INVITE", "CANCEL", "ACK"]);
    }
    expect(a, &["100", "180", "200/CANCEL", "487/INVITE"]);
}

/// A's final response to an INVITE of `request_uri` with `sdp`, and the
/// response's text.
fn refused(s: &System, request_uri: &str, from: &str, sdp: &str) -> (u16, String) {
    let p = s.party(from);
    let call = p.invite(request_uri, s.edge_addr, sdp, "");
    let code = call.wait_final(WAIT).expect("a final response");
    let raw = p
        .log()
        .into_iter()
        .rev()
        .find(|r| r.start_line.starts_with("SIP/2.0 ") && !r.start_line.starts_with("SIP/2.0 1"))
        .map(|r| r.raw)
        .unwrap_or_default();
    (code, raw)
}

#[test]
fn bad_input_gets_a_specific_answer() {
    let more = "[[group]]\nid = \"sip:audio-only@groups.example.net\"\nhost = \"cs1\"\n\
        members = [\"{alice}\", \"sip:y@127.0.0.1:2\"]\nmedia = { allowed_media = [\"audio\"] }\n";
    let s = system("max_participants = 4", more, &[]);
    let mallory = s.party("mallory");
    let sdp = msrp_sdp("alice", s.party("alice").addr());
    // A group nobody hosts: the edge takes it for a user; the invited
    // side's PF knows no such user or group.
    let (code, raw) = refused(&s, "sip:nosuch@groups.example.net", "alice", &sdp);
    assert_eq!(code, 404, "{raw}");
    assert!(raw.contains("No Such User Or Group"), "{raw}");
    // Not a member (mallory is provisioned, not in the group).
    let (code, raw) = refused(&s, GROUP, mallory.name(), &sdp);
    assert_eq!(code, 403, "{raw}");
    assert!(raw.contains("Not A Member Of The Group"), "{raw}");
    // Over the maximum: five members, at most four participants.
    let (code, raw) = refused(&s, GROUP, "alice", &sdp);
    assert_eq!(code, 403, "{raw}");
    assert!(
        raw.contains("Maximum Participants") && raw.contains("Warning: 399"),
        "{raw}"
    );
    // Malformed SDP.
    let (code, raw) = refused(&s, GROUP, "bob", "v=0\r\nm=message\r\n");
    assert_eq!(code, 400, "{raw}");
    assert!(raw.contains("Malformed SDP"), "{raw}");
    // The group's media policy refuses the only stream: 488 with a Warning,
    // relayed by A's PF.
    let (code, raw) = refused(&s, "sip:audio-only@groups.example.net", "alice", &sdp);
    assert_eq!(code, 488, "{raw}");
    assert!(
        raw.contains("Warning: 399") && raw.contains("group media policy"),
        "{raw}"
    );
    for sh in &s.shards {
        assert!(sh.node.snapshot().sessions == 0 || sh.node.snapshot().stats.refused > 0);
    }
}

#[test]
fn a_user_media_policy_refusing_every_stream_is_488_at_the_originating_pf() {
    let s = system("", "", &[("alice", "{ allowed_media = [\"audio\"] }")]);
    let a = s.party("alice");
    let (code, raw) = refused(&s, GROUP, "alice", &msrp_sdp("alice", a.addr()));
    assert_eq!(code, 488, "{raw}");
    assert!(
        raw.contains("Warning: 399") && raw.contains("user media policy"),
        "{raw}"
    );
    // Nobody was invited.
    for n in ["bob", "carol", "dave", "erin"] {
        assert!(s.party(n).summary_dedup().is_empty(), "{n} was invited");
    }
}

/// The last NOTIFY body A received, once it shows `want` for every entity.
fn conference_state(a: &Party, want: &[(&str, &str)]) -> String {
    let t0 = Instant::now();
    loop {
        let last = a
            .log()
            .into_iter()
            .rev()
            .find(|r| r.start_line.starts_with("NOTIFY "));
        if let Some(n) = &last {
            let ok = want
                .iter()
                .all(|(who, status)| endpoint_status(&n.raw, who).as_deref() == Some(*status));
            if ok {
                return n.raw.clone();
            }
        }
        assert!(
            t0.elapsed() < WAIT,
            "no NOTIFY with {want:?}; last: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `<status>` of the endpoint whose entity contains `who`.
fn endpoint_status(doc: &str, who: &str) -> Option<String> {
    let at = doc.find(&format!("<endpoint entity=\"sip:{who}@"))?;
    let rest = &doc[at..];
    let s = rest.find("<status>")? + "<status>".len();
    let e = rest[s..].find("</status>")?;
    Some(rest[s..s + e].to_string())
}

#[test]
fn conference_state_is_notified_on_every_join_and_leave() {
    let s = system("", "", &[]);
    let [a, b, ..] = c1_cast(&s, 800);
    let call = a.invite(GROUP, s.edge_addr, &msrp_sdp("alice", a.addr()), "");
    assert!(call.wait_confirmed(WAIT));
    // In the INVITE's dialog, through A's PF (it relays the SUBSCRIBE and
    // the NOTIFYs with their event headers).
    let code = call.request(
        "SUBSCRIBE",
        "Event: conference\r\nExpires: 600\r\nAccept: application/conference-info+xml\r\n",
    );
    assert_eq!(code, Some(200));
    let first = conference_state(a, &[("bob", "connected")]);
    assert!(
        first.contains("Content-Type: application/conference-info+xml"),
        "{first}"
    );
    assert!(
        first.contains("Subscription-State: active;expires="),
        "{first}"
    );
    assert!(
        first.contains("entity=\"sip:team@groups.example.net\""),
        "{first}"
    );
    // Later: C joined, D busy, E cancelled at the invite timeout.
    let last = conference_state(
        a,
        &[
            ("bob", "connected"),
            ("carol", "connected"),
            ("dave", "disconnected"),
            ("erin", "disconnected"),
        ],
    );
    assert!(
        last.contains("<disconnection-method>busy</disconnection-method>"),
        "{last}"
    );
    assert!(last.contains("<user-count>"), "{last}");
    let version = |doc: &str| -> u32 {
        let v = doc
            .split("state=\"full\" version=\"")
            .nth(1)
            .and_then(|x| x.split('"').next())
            .unwrap_or("0");
        v.parse().unwrap_or(0)
    };
    assert!(version(&last) > version(&first), "versions grow");
    // B leaves: the next NOTIFY says so.
    assert_eq!(b.bye(&b.incoming_calls()[0]), Some(200));
    let after = conference_state(a, &[("bob", "disconnected"), ("carol", "connected")]);
    assert!(
        after.contains("<disconnection-method>departed</disconnection-method>"),
        "{after}"
    );
    assert_eq!(call.bye(), Some(200));
}

const FACTORY: &str = "sip:conference-factory@groups.example.net";

/// An RFC 5366 body: the offer and a recipient list of `uris`.
fn recipient_list_body(sdp: &str, uris: &[String]) -> String {
    let entries: String = uris
        .iter()
        .map(|u| format!("      <entry uri=\"{u}\"/>\n"))
        .collect();
    format!(
        "--b1\r\nContent-Type: application/sdp\r\n\r\n{sdp}\r\n--b1\r\n\
         Content-Type: application/resource-lists+xml\r\nContent-Disposition: recipient-list\r\n\r\n\
         <?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <resource-lists xmlns=\"urn:ietf:params:xml:ns:resource-lists\">\n  <list>\n{entries}  </list>\n</resource-lists>\r\n--b1--\r\n"
    )
}

#[test]
fn ad_hoc_group_from_a_recipient_list() {
    let s = system("", "", &[]);
    let (a, b, c) = (s.party("alice"), s.party("bob"), s.party("carol"));
    accept(b, 0);
    accept(c, 200);
    let sdp = common::party::crlf(&msrp_sdp("alice", a.addr()));
    // The inviter in the list is skipped.
    let body = recipient_list_body(&sdp, &[b.aor(), c.aor(), a.aor()]);
    let call = a.invite_with(
        FACTORY,
        s.edge_addr,
        "multipart/mixed;boundary=b1",
        &body,
        "Require: recipient-list-invite\r\n",
    );
    assert!(call.wait_confirmed(WAIT), "{:?}", a.summary_dedup());
    expect(b, &["INVITE", "ACK"]);
    expect(c, &["INVITE", "ACK"]);
    let inv = first_invite(b);
    assert!(
        inv.raw.contains("Content-Type: application/sdp"),
        "the legs carry the offer only:\n{}",
        inv.raw
    );
    assert!(!inv.raw.contains("resource-lists"), "{}", inv.raw);
    assert!(
        !inv.raw.contains("Require: recipient-list-invite"),
        "{}",
        inv.raw
    );
    assert!(inv.raw.contains("isfocus"), "{}", inv.raw);
    assert_eq!(call.bye(), Some(200));
    expect(b, &["INVITE", "ACK", "BYE"]);
    expect(c, &["INVITE", "ACK", "BYE"]);
    // The inviter's PF hosted it: no Controlling Function elsewhere.
    let started = s.started();
    assert_eq!(started.iter().map(|x| x[2]).sum::<u64>(), 1, "{started:?}");
    assert_eq!(started.iter().map(|x| x[0]).sum::<u64>(), 0, "{started:?}");
}

#[test]
fn ad_hoc_bad_input() {
    let s = system("", "", &[]);
    let a = s.party("alice");
    let sdp = common::party::crlf(&msrp_sdp("alice", a.addr()));
    let body = recipient_list_body(&sdp, &[s.party("bob").aor()]);
    let refused_with = |ct: &str, body: &str, extra: &str| {
        let call = a.invite_with(FACTORY, s.edge_addr, ct, body, extra);
        let code = call.wait_final(WAIT);
        let raw = a
            .log()
            .into_iter()
            .rev()
            .find(|r| r.start_line.starts_with("SIP/2.0 4") && r.call_id == call.call_id())
            .map(|r| r.raw)
            .unwrap_or_default();
        (code, raw)
    };
    let (code, raw) = refused_with("multipart/mixed;boundary=b1", &body, "");
    assert_eq!(code, Some(421), "{raw}");
    assert!(raw.contains("recipient-list-invite"), "{raw}");
    let require = "Require: recipient-list-invite\r\n";
    let (code, raw) = refused_with(
        "multipart/mixed;boundary=b1",
        &body.replace("<list>", "<!DOCTYPE x><list>"),
        require,
    );
    assert_eq!(code, Some(400), "{raw}");
    assert!(raw.contains("Resource List"), "{raw}");
    let (code, raw) = refused_with("multipart/mixed", &body, require);
    assert_eq!(code, Some(400), "{raw}");
    assert!(raw.contains("Multipart: no boundary"), "{raw}");
    let (code, _) = refused_with("application/sdp", &sdp, require);
    assert_eq!(code, Some(415));
}

/// An offer of an MSRP stream and an audio stream.
fn av_sdp(name: &str, addr: SocketAddr) -> String {
    format!(
        "{}m=audio 49170 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
        common::party::crlf(&msrp_sdp(name, addr))
    )
}

#[test]
fn an_answer_accepting_a_stream_not_offered_is_refused() {
    let more = "[[group]]\nid = \"sip:chat-only@groups.example.net\"\nhost = \"cs1\"\n\
        members = [\"{alice}\", \"{bob}\"]\nmedia = { allowed_media = [\"message\"] }\n";
    let s = system("", more, &[]);
    let (a, b) = (s.party("alice"), s.party("bob"));
    // B accepts the audio stream the group's policy refused in its offer
    // (port 0 there): the CF ACKs and BYEs B and answers A 488.
    b.set_answer(Answer::Accept {
        ring: false,
        delay: Duration::ZERO,
        sdp: av_sdp("bob", b.addr()),
    });
    let call = a.invite(
        "sip:chat-only@groups.example.net",
        s.edge_addr,
        &av_sdp("alice", a.addr()),
        "",
    );
    assert_eq!(call.wait_final(WAIT), Some(488));
    expect(b, &["INVITE", "ACK", "BYE"]);
    let inv = first_invite(b);
    assert!(
        inv.raw.contains("m=audio 0 "),
        "the offer refused audio:\n{}",
        inv.raw
    );
    let refused: u64 = s
        .shards
        .iter()
        .map(|x| x.node.snapshot().stats.answers_refused)
        .sum();
    assert_eq!(refused, 1);
}

#[test]
fn a_shard_serves_whichever_user_the_edge_sends_and_only_from_an_edge() {
    // A second edge of the fleet (a test socket) in the shards' `edges`.
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(WAIT)).unwrap();
    let extra = format!("edges_extra = \"{}\"", peer.local_addr().unwrap());
    let s = system_with_edge(&extra);
    let a = s.party("alice");
    // The shard the edge would NOT pick for alice (the group's host).
    let other = group_host(a);
    let idx = usize::from(other == "cs2");
    let shard_addr = s.shards[idx].node.addr();
    let me = peer.local_addr().unwrap();
    let invite = |route: &str, branch: &str, via: SocketAddr| {
        let sdp = msrp_sdp("alice", a.addr());
        format!(
            "INVITE sip:bob@127.0.0.1:1 SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bK{branch}\r\nMax-Forwards: 70\r\n\
             {route}From: <{}>;tag=x\r\nTo: <sip:bob@127.0.0.1:1>\r\nCall-ID: {branch}\r\nCSeq: 1 INVITE\r\n\
             Contact: <{}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            a.aor(),
            a.aor(),
            sdp.len()
        )
    };
    let marked = format!("Route: <sip:{shard_addr};lr>,<sip:{me};lr;cpm-leg=orig>\r\n");
    peer.send_to(invite(&marked, "m1", me).as_bytes(), shard_addr)
        .unwrap();
    // Served: the CS sends its own INVITE back to the edge named by the
    // marker, the marker kept.
    let mut buf = [0u8; 8192];
    let mut forwarded = String::new();
    while !forwarded.starts_with("INVITE ") {
        let (n, _) = peer.recv_from(&mut buf).expect("the shard forwards");
        forwarded = String::from_utf8_lossy(&buf[..n]).into_owned();
    }
    assert!(
        forwarded.contains(&format!("Route: <sip:{me};lr;cpm-leg=orig>")),
        "{forwarded}"
    );
    // Without a marker: refused.
    peer.send_to(invite("", "m2", me).as_bytes(), shard_addr)
        .unwrap();
    let mut answer = String::new();
    while !answer.contains("m2") || !answer.starts_with("SIP/2.0 403") {
        let (n, _) = peer.recv_from(&mut buf).expect("an answer");
        answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    }
    assert!(answer.contains("No Leg Marker"), "{answer}");
    // From a stranger: refused, whatever it carries.
    let stranger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    stranger.set_read_timeout(Some(WAIT)).unwrap();
    stranger
        .send_to(
            invite(&marked, "m3", stranger.local_addr().unwrap()).as_bytes(),
            shard_addr,
        )
        .unwrap();
    // One stateless answer: no 100 Trying, no transaction for a stranger.
    let (n, _) = stranger.recv_from(&mut buf).expect("an answer");
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        answer.starts_with("SIP/2.0 403") && answer.contains("Not From The SIP/IP Core"),
        "{answer}"
    );
}

// ------------------------------------------------ registration (seed 5.2.5)

const CPM_TAG: &str = "\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session\"";

/// A system whose shards also take requests from a test socket playing the
/// edge's registrar (the real edge does not send third-party REGISTERs
/// yet), with `[server] terminating = TERMINATING`.
fn system_with_registrar(terminating: &str) -> (System, std::net::UdpSocket) {
    let registrar = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    registrar.set_read_timeout(Some(WAIT)).unwrap();
    let me = registrar.local_addr().unwrap().to_string();
    let extra = format!("terminating = \"{terminating}\"");
    (system_full("", "", &[], Some(me), &extra), registrar)
}

/// The shard the edge picks as `aor`'s Participating Function.
fn pf_of(s: &System, aor: &str) -> SocketAddr {
    s.shards[common::pf_shard(aor)].node.addr()
}

/// An RFC 3680 full state: `aor` with one active contact per URI, each
/// with the CPM session feature tag.
fn reginfo(aor: &str, contacts: &[String]) -> String {
    let cs: String = contacts
        .iter()
        .enumerate()
        .map(|(i, uri)| {
            format!(
                "    <contact id=\"c{i}\" state=\"active\" event=\"registered\" expires=\"3600\" q=\"0.5\">\n\
                 \x20     <uri>{uri}</uri>\n\
                 \x20     <unknown-param name=\"+g.3gpp.icsi-ref\">{CPM_TAG}</unknown-param>\n\
                 \x20   </contact>\n"
            )
        })
        .collect();
    let state = if contacts.is_empty() {
        "terminated"
    } else {
        "active"
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <reginfo xmlns=\"urn:ietf:params:xml:ns:reginfo\" version=\"0\" state=\"full\">\n\
         \x20 <registration aor=\"{aor}\" id=\"r1\" state=\"{state}\">\n{cs}  </registration>\n</reginfo>\n"
    )
}

/// Play the registrar: a third-party REGISTER for `aor` to `shard`; the
/// final response's text.
fn third_party_register(
    registrar: &std::net::UdpSocket,
    shard: SocketAddr,
    aor: &str,
    expires: u32,
    content_type: &str,
    body: &str,
) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static CSEQ: AtomicU32 = AtomicU32::new(1);
    let n = CSEQ.fetch_add(1, Ordering::Relaxed);
    let me = registrar.local_addr().unwrap();
    let branch = format!("z9hG4bKreg{n}");
    let req = format!(
        "REGISTER sip:{shard} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:registrar@example.net>;tag=reg{n}\r\nTo: <{aor}>\r\n\
         Call-ID: third-party-{n}@127.0.0.1\r\nCSeq: {n} REGISTER\r\nContact: <sip:{me}>\r\n\
         Expires: {expires}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    registrar.send_to(req.as_bytes(), shard).unwrap();
    let mut buf = [0u8; 8192];
    loop {
        let (len, _) = registrar
            .recv_from(&mut buf)
            .expect("an answer to the REGISTER");
        let text = String::from_utf8_lossy(&buf[..len]).into_owned();
        if text.contains(&branch) && text.starts_with("SIP/2.0 ") && !text.starts_with("SIP/2.0 1")
        {
            return text;
        }
    }
}

/// The admin API over the system's shards (`GET /registrations/...`).
fn cs_admin(s: &System) -> cpm_edge::control::cs_api::AdminServer {
    use cpm_edge::control::cs_api::{serve, CsApi};
    let api = CsApi::new(&s.shards, vec!["cs1".into(), "cs2".into()]).unwrap();
    let cfg = cpm_edge::csnode::config::AdminApi {
        bind: "127.0.0.1:0".parse().unwrap(),
        token: None,
    };
    serve(&cfg, std::sync::Arc::new(api)).unwrap()
}

/// `GET /registrations/{aor}` once the shard has published `want`
/// contacts (it publishes every 100 ms): the status and body.
fn registration(admin: SocketAddr, aor: &str, want: usize) -> (u16, String) {
    let t0 = Instant::now();
    loop {
        let (code, body) = common::http(admin, "GET", &format!("/registrations/{aor}"), "", None);
        let n = body.matches("\"uri\"").count();
        if (want == 0 && code == 404) || (want > 0 && code == 200 && n == want) {
            return (code, body);
        }
        assert!(
            t0.elapsed() < WAIT,
            "registration never showed {want}: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_user_registered_on_two_devices_is_invited_on_both_and_the_first_answer_wins() {
    let (s, registrar) = system_with_registrar("registered");
    let (a, bob) = (s.party("alice"), s.party("bob"));
    // Bob's second device: another socket, the same user.
    let bob2 = Party::bind("bob");
    let shard = pf_of(&s, &bob.aor());
    let ok = third_party_register(
        &registrar,
        shard,
        &bob.aor(),
        3600,
        "application/reginfo+xml",
        &reginfo(&bob.aor(), &[bob.aor(), bob2.aor()]),
    );
    assert!(ok.starts_with("SIP/2.0 200 OK\r\n"), "{ok}");
    assert!(ok.contains("\r\nExpires: 3600\r\n"), "{ok}");
    let admin = cs_admin(&s);
    let (_, body) = registration(admin.addr, &bob.aor(), 2);
    assert!(
        body.contains(&bob2.aor()) && body.contains("\"session\""),
        "{body}"
    );
    assert!(body.contains("\"q\":0.5"), "{body}");
    // The first device rings on; the second answers after 300 ms.
    bob.set_answer(Answer::RingOnly);
    bob2.set_answer(Answer::Accept {
        ring: true,
        delay: Duration::from_millis(300),
        sdp: msrp_sdp("bob2", bob2.addr()),
    });
    let call = a.invite(&bob.aor(), s.edge_addr, &msrp_sdp("alice", a.addr()), "");
    assert!(call.wait_confirmed(WAIT), "{:?}", a.summary_dedup());
    // The loser: INVITE, then the CANCEL (it answered 200, then 487 to
    // the INVITE, which the PF ACKs).
    expect(bob, &["INVITE", "CANCEL", "ACK"]);
    let sent: Vec<String> = bob.sent().into_iter().map(|x| x.start_line).collect();
    assert!(
        sent.iter().any(|l| l.starts_with("SIP/2.0 487")),
        "bob's first device ended the INVITE with 487: {sent:?}"
    );
    expect(&bob2, &["INVITE", "ACK"]);
    // Each device got the INVITE at its own contact, To the user.
    for (p, dev) in [(bob, bob.aor()), (&bob2, bob2.aor())] {
        let inv = first_invite(p);
        assert!(
            inv.start_line.starts_with(&format!("INVITE {dev} SIP/2.0")),
            "{}",
            inv.raw
        );
        assert!(
            inv.raw.contains(&format!("To: <{}>", bob.aor())),
            "{}",
            inv.raw
        );
    }
    // One 180, one 200 upstream: the winner's answer.
    expect(a, &["100", "180", "200/INVITE"]);
    let answer = a
        .log()
        .into_iter()
        .find(|r| r.method_or_code == "200")
        .unwrap();
    assert!(
        answer
            .raw
            .contains(&format!("a=path:msrp://{}", bob2.addr())),
        "{}",
        answer.raw
    );
    // A's BYE reaches the winner only.
    assert_eq!(call.bye(), Some(200));
    expect(&bob2, &["INVITE", "ACK", "BYE"]);
    expect(bob, &["INVITE", "CANCEL", "ACK"]);
    let registers: u64 = s
        .shards
        .iter()
        .map(|x| x.node.snapshot().stats.registers)
        .sum();
    assert_eq!(registers, 1);
}

#[test]
fn an_unregistered_user_is_480_with_terminating_registered() {
    let (s, registrar) = system_with_registrar("registered");
    let bob = s.party("bob");
    let sdp = msrp_sdp("alice", s.party("alice").addr());
    let (code, raw) = refused(&s, &bob.aor(), "alice", &sdp);
    assert_eq!(code, 480, "{raw}");
    assert!(
        raw.contains("480 Temporarily Unavailable - Not Registered"),
        "{raw}"
    );
    assert!(bob.summary_dedup().is_empty(), "bob was invited");
    // Registered, then de-registered (Expires: 0, state terminated): 480
    // again, and the admin API shows no registration.
    let shard = pf_of(&s, &bob.aor());
    let admin = cs_admin(&s);
    let ct = "application/reginfo+xml";
    let on = reginfo(&bob.aor(), &[bob.aor()]);
    let ok = third_party_register(&registrar, shard, &bob.aor(), 3600, ct, &on);
    assert!(ok.starts_with("SIP/2.0 200 "), "{ok}");
    registration(admin.addr, &bob.aor(), 1);
    let off = reginfo(&bob.aor(), &[]);
    let ok = third_party_register(&registrar, shard, &bob.aor(), 0, ct, &off);
    assert!(
        ok.starts_with("SIP/2.0 200 ") && ok.contains("Expires: 0\r\n"),
        "{ok}"
    );
    let (code, body) = registration(admin.addr, &bob.aor(), 0);
    assert!(body.contains("no registration"), "{code} {body}");
    let (code, raw) = refused(&s, &bob.aor(), "alice", &sdp);
    assert_eq!(code, 480, "{raw}");
}

#[test]
fn register_defects_get_a_specific_answer() {
    let (s, registrar) = system_with_registrar("registered");
    let bob = s.party("bob");
    let shard = pf_of(&s, &bob.aor());
    let good = reginfo(&bob.aor(), &[bob.aor()]);
    let ct = "application/reginfo+xml";
    let r = third_party_register(
        &registrar,
        shard,
        &bob.aor(),
        3600,
        "application/xml",
        &good,
    );
    assert!(
        r.starts_with("SIP/2.0 415 Unsupported Media Type - Expected application/reginfo+xml\r\n"),
        "{r}"
    );
    assert!(r.contains("\r\nAccept: application/reginfo+xml\r\n"), "{r}");
    let broken = good.replace("</reginfo>", "");
    let r = third_party_register(&registrar, shard, &bob.aor(), 3600, ct, &broken);
    // The reg-info parser's own reason (sip::reginfo).
    assert!(
        r.starts_with("SIP/2.0 400 Bad Request - Reginfo Element Not Closed\r\n"),
        "{r}"
    );
    let partial = good.replace("state=\"full\"", "state=\"partial\"");
    let r = third_party_register(&registrar, shard, &bob.aor(), 3600, ct, &partial);
    assert!(
        r.starts_with("SIP/2.0 400 Bad Request - Reginfo Not A Full State\r\n"),
        "{r}"
    );
    let stranger = "sip:nobody@127.0.0.1:9";
    let r = third_party_register(
        &registrar,
        shard,
        stranger,
        3600,
        ct,
        &reginfo(stranger, &[]),
    );
    assert!(
        r.starts_with("SIP/2.0 404 Not Found - User Not Provisioned\r\n"),
        "{r}"
    );
    // Nothing was stored.
    let admin = cs_admin(&s);
    let (code, _) = common::http(
        admin.addr,
        "GET",
        &format!("/registrations/{}", bob.aor()),
        "",
        None,
    );
    assert_eq!(code, 404);
    // From a socket that is not an edge: refused before anything else.
    let outsider = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    outsider.set_read_timeout(Some(WAIT)).unwrap();
    let r = third_party_register(&outsider, shard, &bob.aor(), 3600, ct, &good);
    assert!(
        r.starts_with("SIP/2.0 403 Forbidden - Not From The SIP/IP Core"),
        "{r}"
    );
}
