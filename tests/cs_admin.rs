//! The Conversation Server's admin API over real sockets (README "Admin
//! API of cpm-cs"): a cpm-edge and two cpm-cs shards in one process, the
//! shards' admin API on loopback, clients as scripted UAs over UDP
//! (`tests/common/party.rs`).
//!
//! - a group PUT at the CS reaches the edge's group table (the CS's group
//!   sync), a DELETE removes it, a move moves it;
//! - the two tables cannot silently diverge: a group deleted at the edge by
//!   hand comes back within a sync interval; one moved to the wrong shard
//!   by hand gets `404 Not Found - Group Not Hosted Here` from that shard,
//!   counted in `cpm_cs_group_divergence_total`, and is moved back;
//! - a user PUT at the CS may invite at once, and is refused `403 Forbidden
//!   - User Not Provisioned` once deleted;
//! - bad input gets a specific 4xx with its reason, and changes nothing.

mod common;

use common::party::{msrp_sdp, Answer, Party};
use common::{free_port, http};
use cpm_edge::app::App;
use cpm_edge::config::Config;
use cpm_edge::control::cs_api::{self, AdminServer, CsApi};
use cpm_edge::csnode::{self, Shard};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const GROUP: &str = "sip:team@groups.example.net";
/// Bound of every wait: far above a sync interval, never a fixed sleep.
const WAIT: Duration = Duration::from_secs(10);

struct System {
    edge: App,
    edge_addr: SocketAddr,
    edge_admin: SocketAddr,
    /// The CS admin API (dropped before the shards).
    cs: AdminServer,
    shards: Vec<Shard>,
    parties: Vec<Party>,
    /// The group's host, and the other shard (alice's Participating
    /// Function at the edge).
    host: &'static str,
    other: &'static str,
    token: Option<&'static str>,
}

impl System {
    fn party(&self, name: &str) -> &Party {
        self.parties
            .iter()
            .find(|p| p.name() == name)
            .expect("party")
    }

    /// A request to the CS admin API with the configured token.
    fn cs(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        http(self.cs.addr, method, path, body, self.token)
    }

    fn edge_group(&self, uri: &str) -> (u16, String) {
        http(self.edge_admin, "GET", &format!("/groups/{uri}"), "", None)
    }

    /// Wait until the edge routes `uri` to `shard` (`None`: has no such
    /// group).
    fn wait_edge(&self, uri: &str, shard: Option<&str>) {
        let t0 = Instant::now();
        loop {
            let (code, body) = self.edge_group(uri);
            let done = match shard {
                Some(s) => code == 200 && body.contains(&format!("\"shard\":\"{s}\"")),
                None => code == 404,
            };
            if done {
                return;
            }
            assert!(
                t0.elapsed() < WAIT,
                "edge never had {uri} at {shard:?}: {code} {body}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The final response `from` gets to an INVITE of `uri`: code and text.
    fn invite(&self, from: &str, uri: &str) -> (u16, String) {
        let p = self.party(from);
        let call = p.invite(uri, self.edge_addr, &msrp_sdp(from, p.addr()), "");
        let code = call.wait_final(WAIT).expect("a final response");
        let raw = p
            .log()
            .into_iter()
            .rev()
            .find(|r| {
                r.call_id == call.call_id()
                    && r.start_line.starts_with("SIP/2.0 ")
                    && !r.start_line.starts_with("SIP/2.0 1")
            })
            .map(|r| r.raw)
            .unwrap_or_default();
        (code, raw)
    }

    /// The value of one sample of the CS's `/metrics`.
    fn metric(&self, sample: &str) -> Option<u64> {
        let (code, text) = self.cs("GET", "/metrics", "");
        assert_eq!(code, 200, "{text}");
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
    }
}

/// Edge with shards cs1 and cs2; both shards in one process with the admin
/// API on; alice, bob and carol provisioned, frank a client the CS does not
/// know; GROUP (alice, bob, carol) hosted by the shard that is not alice's
/// Participating Function.
fn system(sync_interval_ms: u64, token: Option<&'static str>) -> System {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("cpm_cs=info,warn"))
        .with_test_writer()
        .try_init();
    let parties: Vec<Party> = ["alice", "bob", "carol", "frank"]
        .iter()
        .map(|n| Party::bind(n))
        .collect();
    let edge_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cs = [free_port(), free_port()];
    let edge_toml = format!(
        "[listen]\naddr = \"{edge_addr}\"\n[admin]\nbind = \"127.0.0.1:0\"\n[workers]\ncount = 1\n\
         [health]\nenabled = false\n\
         [[shard]]\nname = \"cs1\"\naddr = \"127.0.0.1:{}\"\n[[shard]]\nname = \"cs2\"\naddr = \"127.0.0.1:{}\"\n",
        cs[0], cs[1]
    );
    let edge = App::start(&Config::parse(&edge_toml).unwrap().validate().unwrap()).unwrap();
    let edge_admin = edge.admin_addr.expect("edge admin API");
    let (host, other) = group_host(&parties[0]);
    let members: Vec<String> = parties[..3]
        .iter()
        .map(|p| format!("\"{}\"", p.aor()))
        .collect();
    let token_line = token.map_or(String::new(), |t| format!("token = \"{t}\"\n"));
    let mut cs_toml = format!(
        "[server]\nedges = [\"{edge_addr}\"]\ninvite_timeout_ms = 2000\n\
         [edge_admin]\nurl = \"http://{edge_admin}\"\nsync_interval_ms = {sync_interval_ms}\n\
         [admin]\nbind = \"127.0.0.1:0\"\n{token_line}\
         [[shard]]\nname = \"cs1\"\naddr = \"127.0.0.1:{}\"\n[[shard]]\nname = \"cs2\"\naddr = \"127.0.0.1:{}\"\n\
         [[group]]\nid = \"{GROUP}\"\nhost = \"{host}\"\nmembers = [{}]\n",
        cs[0],
        cs[1],
        members.join(", ")
    );
    for p in &parties[..3] {
        cs_toml += &format!("[[user]]\nid = \"{}\"\n", p.aor());
    }
    // What cpm-cs --all does: every shard of the file, one admin API.
    let names = csnode::config::shard_list(&cs_toml).unwrap();
    let admin = csnode::config::load(&cs_toml, "cs1", csnode::random_key())
        .unwrap()
        .admin
        .expect("[admin]");
    let shards: Vec<Shard> = names
        .iter()
        .map(|n| csnode::start_shard(&cs_toml, n, true).unwrap())
        .collect();
    let api = CsApi::new(&shards, names).unwrap();
    let cs = cs_api::serve(&admin, Arc::new(api)).unwrap();
    let s = System {
        edge,
        edge_addr,
        edge_admin,
        cs,
        shards,
        parties,
        host,
        other,
        token,
    };
    s.wait_edge(GROUP, Some(host));
    s
}

/// (the group's host, alice's PF): the shard that is not alice's
/// rendezvous choice at the edge hosts the group, so her INVITE crosses the
/// edge's group table (PF → edge → CF).
fn group_host(alice: &Party) -> (&'static str, &'static str) {
    match common::pf_shard(&alice.aor()) {
        0 => ("cs2", "cs1"),
        _ => ("cs1", "cs2"),
    }
}

fn stop(s: System) {
    let System {
        edge, cs, shards, ..
    } = s;
    drop(cs);
    drop(shards);
    edge.stop().unwrap();
}

#[test]
fn a_group_put_at_the_cs_reaches_the_edge_moves_with_it_and_leaves_with_its_delete() {
    let s = system(300, None);
    let uri = "sip:new@groups.example.net";
    let members = format!(
        "[\"{}\", \"{}\"]",
        s.party("alice").aor(),
        s.party("bob").aor()
    );
    let body = format!(
        r#"{{"host": "{}", "members": {members}, "subject": "new"}}"#,
        s.host
    );
    let (code, v) = s.cs("PUT", &format!("/groups/{uri}"), &body);
    assert_eq!(code, 200, "{v}");
    assert!(v.contains("\"previous_host\":null"), "{v}");
    s.wait_edge(uri, Some(s.host));
    let (code, v) = s.cs("GET", &format!("/groups/{uri}"), "");
    assert_eq!(code, 200, "{v}");
    assert!(v.contains("\"subject\":\"new\""), "{v}");
    // Moved at the CS: the new host's PUT moves it at the edge, and the old
    // host does not DELETE it after that.
    let moved = body.replace(s.host, s.other);
    let (code, v) = s.cs("PUT", &format!("/groups/{uri}"), &moved);
    assert_eq!(code, 200, "{v}");
    assert!(
        v.contains(&format!("\"previous_host\":\"{}\"", s.host)),
        "{v}"
    );
    s.wait_edge(uri, Some(s.other));
    // Deleted at the CS: gone at the edge.
    let (code, v) = s.cs("DELETE", &format!("/groups/{uri}"), "");
    assert_eq!(code, 200, "{v}");
    s.wait_edge(uri, None);
    let (code, v) = s.cs("GET", &format!("/groups/{uri}"), "");
    assert_eq!(code, 404, "{v}");
    // The sync rounds are counted, none failed.
    let (code, v) = s.cs("GET", "/shards", "");
    assert_eq!(code, 200, "{v}");
    assert!(v.contains("\"rounds_failed\":0"), "{v}");
    assert!(s
        .metric(&format!(
            "cpm_cs_group_sync_rounds_total{{shard=\"{}\",result=\"ok\"}}",
            s.other
        ))
        .is_some_and(|n| n >= 2));
    // The edge still has the configured group where it belongs.
    s.wait_edge(GROUP, Some(s.host));
    stop(s);
}

#[test]
fn the_edge_and_the_cs_cannot_silently_diverge() {
    // Long enough that a hand-made move is seen by an INVITE before the
    // next round undoes it (retried if a round came in between).
    let s = system(1500, None);
    for n in ["bob", "carol"] {
        s.party(n).set_answer(Answer::Reject {
            code: 486,
            delay: Duration::ZERO,
        });
    }
    // Deleted at the edge by hand: registered again within an interval.
    let (code, v) = http(
        s.edge_admin,
        "DELETE",
        &format!("/groups/{GROUP}"),
        "",
        None,
    );
    assert_eq!(code, 200, "{v}");
    s.wait_edge(GROUP, Some(s.host));
    // Moved at the edge by hand to alice's PF shard, which does not host
    // it: her INVITE goes PF → edge → that shard as Controlling Function,
    // which says so and counts it.
    let divergence = format!("cpm_cs_group_divergence_total{{shard=\"{}\"}}", s.other);
    assert_eq!(s.metric(&divergence), Some(0));
    let mut seen = None;
    for _ in 0..5 {
        let body = format!(r#"{{"shard": "{}"}}"#, s.other);
        let (code, v) = http(
            s.edge_admin,
            "PUT",
            &format!("/groups/{GROUP}"),
            &body,
            None,
        );
        assert_eq!(code, 200, "{v}");
        let (code, raw) = s.invite("alice", GROUP);
        if code == 404 {
            seen = Some(raw);
            break;
        }
        // A sync round moved it back between the PUT and the INVITE: the
        // real host answered (its members are busy).
        s.wait_edge(GROUP, Some(s.host));
    }
    let raw = seen.expect("an INVITE reached the shard the edge wrongly named");
    assert!(raw.contains("Group Not Hosted Here"), "{raw}");
    let t0 = Instant::now();
    while s.metric(&divergence).unwrap_or(0) == 0 {
        assert!(t0.elapsed() < WAIT, "divergence never counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The next round moves it back, and the session goes to its host.
    s.wait_edge(GROUP, Some(s.host));
    let (code, raw) = s.invite("alice", GROUP);
    assert_ne!(code, 404, "{raw}");
    assert!(s.party("bob").wait_got("INVITE", WAIT), "bob never invited");
    stop(s);
}

#[test]
fn a_user_put_at_the_cs_may_invite_at_once_and_is_refused_once_deleted() {
    let s = system(300, None);
    let frank = s.party("frank").aor();
    s.party("bob").set_answer(Answer::Reject {
        code: 486,
        delay: Duration::ZERO,
    });
    let bob = s.party("bob").aor();
    let (code, raw) = s.invite("frank", &bob);
    assert_eq!(code, 403, "{raw}");
    assert!(raw.contains("User Not Provisioned"), "{raw}");
    let (code, v) = s.cs("PUT", &format!("/users/{frank}"), "");
    assert_eq!(code, 200, "{v}");
    assert!(v.contains("\"replaced\":false"), "{v}");
    // In force for the next datagram: frank's PF lets him through, bob's
    // busy answer comes back.
    let (code, raw) = s.invite("frank", &bob);
    assert_eq!(code, 486, "{raw}");
    let (code, v) = s.cs("GET", "/users", "");
    assert_eq!(code, 200, "{v}");
    assert!(v.contains("\"total\":4") && v.contains(&frank), "{v}");
    let (code, v) = s.cs("DELETE", &format!("/users/{frank}"), "");
    assert_eq!(code, 200, "{v}");
    let (code, raw) = s.invite("frank", &bob);
    assert_eq!(code, 403, "{raw}");
    assert!(raw.contains("User Not Provisioned"), "{raw}");
    stop(s);
}

#[test]
fn bad_input_gets_a_specific_4xx_and_changes_nothing() {
    let s = system(300, Some("cs-admin-token-0123456789"));
    let path = "/groups/sip:bad@groups.example.net";
    let alice = s.party("alice").aor();
    let good = format!(r#"{{"host": "{}", "members": ["{alice}"]}}"#, s.host);
    // The token: missing or wrong is 401 (health needs none).
    for token in [None, Some("wrong")] {
        let (code, v) = http(s.cs.addr, "PUT", path, &good, token);
        assert_eq!(code, 401, "{token:?}: {v}");
        assert!(v.contains("bearer token"), "{v}");
    }
    assert_eq!(http(s.cs.addr, "GET", "/health", "", None).0, 200);
    let cases = [
        (
            "PUT",
            path.to_string(),
            "{\"host\": ".to_string(),
            400,
            "malformed JSON body",
        ),
        (
            "PUT",
            path.to_string(),
            good.replace(s.host, "cs9"),
            400,
            "host: unknown shard 'cs9' (the configuration has cs1, cs2)",
        ),
        (
            "PUT",
            path.to_string(),
            good.replace(&alice, "sip:a b@127.0.0.1"),
            400,
            "sip:a b@127.0.0.1: not a SIP URI",
        ),
        (
            "PUT",
            "/users/sip:a%20b@127.0.0.1".to_string(),
            String::new(),
            400,
            "user: sip:a b@127.0.0.1: not a SIP URI",
        ),
        (
            "PUT",
            path.to_string(),
            good.replace("\"members\"", "\"member\""),
            400,
            "unknown field `member`",
        ),
        (
            "PUT",
            path.to_string(),
            format!(
                r#"{{"host": "{}", "members": ["{}"]}}"#,
                s.host,
                "x".repeat(300 << 10)
            ),
            413,
            "",
        ),
        (
            "DELETE",
            path.to_string(),
            String::new(),
            404,
            "no group 'sip:bad@groups.example.net'",
        ),
        ("PATCH", path.to_string(), String::new(), 405, "not allowed"),
    ];
    for (method, target, body, status, reason) in cases {
        let (code, v) = s.cs(method, &target, &body);
        assert_eq!(code, status, "{method} {target}: {v}");
        assert!(v.contains(reason), "{method} {target}: {v}");
        assert!(v.contains("\"error\""), "{method} {target}: {v}");
    }
    // Nothing changed: the CS does not have it, nor the edge.
    let (code, v) = s.cs("GET", path, "");
    assert_eq!(code, 404, "{v}");
    let (code, v) = s.cs("GET", "/shards", "");
    assert_eq!(code, 200, "{v}");
    assert!(v.contains("\"changes\":0"), "{v}");
    assert_eq!(s.edge_group("sip:bad@groups.example.net").0, 404);
    // And the good one passes with the token.
    let (code, v) = s.cs("PUT", path, &good);
    assert_eq!(code, 200, "{v}");
    s.wait_edge("sip:bad@groups.example.net", Some(s.host));
    stop(s);
}
