//! The control plane end to end: the real edge (workers, admin API over
//! TCP, OPTIONS health checks) with Conversation Server shards played by
//! UDP sockets in this process, and the real binary for SIGHUP.

mod common;
use common::capture::{enter_fresh_netns, Capture};
use common::*;
use cpm_edge::app::App;
use cpm_edge::config::Config;
use cpm_edge::route::shards::ShardState;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A CS shard: counts the Call-IDs of requests it receives and answers
/// OPTIONS keepalives while `alive`.
struct Cs {
    addr: SocketAddr,
    alive: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<String>>>,
    /// Responses other than to OPTIONS that reached this CS.
    responses: Arc<Mutex<Vec<String>>>,
    sock: UdpSocket,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Cs {
    fn start() -> Cs {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let alive = Arc::new(AtomicBool::new(true));
        let got = Arc::new(Mutex::new(Vec::new()));
        let responses = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, g, r, st) = (alive.clone(), got.clone(), responses.clone(), stop.clone());
        let send_sock = sock.try_clone().unwrap();
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, _)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.starts_with("OPTIONS ") {
                    if a.load(Ordering::Relaxed) {
                        let vias = header(&msg, "Via").join("\r\n");
                        let keep = ["From", "To", "Call-ID", "CSeq"]
                            .map(|h| header(&msg, h).join("\r\n"))
                            .join("\r\n");
                        let resp = format!(
                            "SIP/2.0 200 OK\r\n{vias}\r\n{keep}\r\nContent-Length: 0\r\n\r\n"
                        );
                        let top = header(&msg, "Via")[0];
                        let hp = top
                            .split_whitespace()
                            .nth(2)
                            .unwrap()
                            .split(';')
                            .next()
                            .unwrap()
                            .to_string();
                        let _ = sock.send_to(resp.as_bytes(), hp);
                    }
                } else if !msg.starts_with("SIP/2.0") {
                    if let Some(c) = header(&msg, "Call-ID").first() {
                        g.lock().unwrap().push(c[9..].trim().to_string());
                    }
                } else {
                    r.lock().unwrap().push(msg);
                }
            }
        });
        Cs {
            addr,
            alive,
            got,
            responses,
            sock: send_sock,
            stop,
            thread: Some(thread),
        }
    }
    fn calls(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for Cs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn app(shards: &[(&str, SocketAddr, Option<&str>)], groups: &[(&str, &str)], extra: &str) -> App {
    let mut toml = format!(
        "[listen]\naddr = \"127.0.0.1:{}\"\n[admin]\nbind = \"127.0.0.1:0\"\n[workers]\ncount = 2\n{extra}\n",
        free_port()
    );
    for (name, addr, backup) in shards {
        toml += &format!("[[shard]]\nname = \"{name}\"\naddr = \"{addr}\"\n");
        if let Some(b) = backup {
            toml += &format!("backup = \"{b}\"\n");
        }
    }
    for (id, shard) in groups {
        toml += &format!("[[group]]\nid = \"{id}\"\nshard = \"{shard}\"\n");
    }
    App::start(&Config::parse(&toml).unwrap().validate().unwrap()).unwrap()
}

fn invite_from(user: &str, to: &str, call_id: &str, via: SocketAddr) -> Vec<u8> {
    let m = String::from_utf8(invite_to_group("grpX", user, "")).unwrap();
    m.replace("sip:grpX@groups.example.net", to)
        .replace(
            &format!("Call-ID: {user}-call-1@192.0.2.10"),
            &format!("Call-ID: {call_id}"),
        )
        .replace("192.0.2.10:5062", &via.to_string())
        .into_bytes()
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
    t0.elapsed()
}

#[test]
fn a_group_moved_under_load_loses_nothing() {
    let (cs1, cs2, cs3) = (Cs::start(), Cs::start(), Cs::start());
    // The sender plays a CS (Controlling Function traffic arrives from shards).
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sa = sender.local_addr().unwrap();
    let a = app(
        &[
            ("cs1", cs1.addr, None),
            ("cs2", cs2.addr, None),
            ("cs3", cs3.addr, None),
            ("sender", sa, None),
        ],
        &[("sip:moving@groups.example.net", "cs1")],
        "[health]\nenabled = false\n",
    );
    let admin = a.admin_addr.unwrap();
    let edge = a.server.local_addr;
    const N: usize = 4000;
    let sent = Arc::new(AtomicUsize::new(0));
    let s2 = sent.clone();
    let load = std::thread::spawn(move || {
        for i in 0..N {
            let m = invite_from(
                "member",
                "sip:moving@groups.example.net",
                &format!("mv-{i}"),
                sa,
            );
            sender.send_to(&m, edge).unwrap();
            s2.store(i + 1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_micros(100));
        }
    });
    wait_until("load to start", Duration::from_secs(20), || {
        sent.load(Ordering::SeqCst) > N / 3
    });
    let (st, body) = http(
        admin,
        "PUT",
        "/groups/sip:moving@groups.example.net",
        r#"{"shard":"cs2"}"#,
        None,
    );
    // Request `sent` may already be on its way (sent, not yet counted):
    // only those from `sent + 1` on surely left after the move.
    let boundary = sent.load(Ordering::SeqCst) + 1;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains(r#""previous":"cs1""#), "{body}");
    load.join().unwrap();
    wait_until("every request to arrive", Duration::from_secs(20), || {
        cs1.calls().len() + cs2.calls().len() >= N
    });
    std::thread::sleep(Duration::from_millis(200));
    let seq = |c: &String| c.trim_start_matches("mv-").parse::<usize>().unwrap();
    let (old, new): (Vec<usize>, Vec<usize>) = (
        cs1.calls().iter().map(seq).collect(),
        cs2.calls().iter().map(seq).collect(),
    );
    let mut all: Vec<usize> = old.iter().chain(&new).copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..N).collect::<Vec<_>>(),
        "every request forwarded exactly once"
    );
    assert!(
        old.iter().all(|s| *s < boundary),
        "nothing sent after the move reached the old shard"
    );
    assert!(
        (boundary..N).all(|s| new.contains(&s)),
        "everything after the move reached the new shard"
    );
    assert!(
        old.len() > N / 4 && new.len() > N / 4,
        "old {} new {}",
        old.len(),
        new.len()
    );
    assert!(cs3.calls().is_empty());
    println!(
        "group move under load: {} to the old shard, {} to the new, boundary {boundary}, 0 lost",
        old.len(),
        new.len()
    );

    // The scrape, parsed by a real Prometheus text parser, agrees.
    let (st, text) = http(admin, "GET", "/metrics", "", None);
    assert_eq!(st, 200);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("valid exposition");
    let value = |name: &str, label: (&str, &str)| -> f64 {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
            .unwrap_or_else(|| panic!("no {name}{{{}={}}}", label.0, label.1));
        match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        value("cpm_edge_requests_forwarded_total", ("kind", "controlling")),
        N as f64
    );
    assert_eq!(
        value("cpm_edge_requests_received_total", ("method", "INVITE")),
        N as f64
    );
    assert_eq!(
        value("cpm_edge_shard_forwards_total", ("shard", "cs1")),
        old.len() as f64
    );
    assert_eq!(
        value("cpm_edge_shard_forwards_total", ("shard", "cs2")),
        new.len() as f64
    );
    assert_eq!(
        value(
            "cpm_edge_io_backend_info",
            ("backend", a.server.backend.name())
        ),
        1.0
    );
    let latency = scrape
        .samples
        .iter()
        .find(|s| s.metric == "cpm_edge_latency_seconds")
        .expect("latency summary");
    let prometheus_parse::Value::Summary(qs) = &latency.value else {
        panic!("{:?}", latency.value)
    };
    assert!(
        qs.iter().any(|q| q.quantile == 0.99 && q.count > 0.0),
        "{qs:?}"
    );
    a.stop().unwrap();
}

#[test]
fn a_killed_shard_fails_over_and_comes_back() {
    let (cs1, cs2, cs3) = (Cs::start(), Cs::start(), Cs::start());
    let a = app(
        &[("cs1", cs1.addr, Some("cs2")), ("cs2", cs2.addr, None), ("cs3", cs3.addr, None)],
        &[("sip:backed@groups.example.net", "cs1"), ("sip:lonely@groups.example.net", "cs3")],
        "[health]\ninterval_ms = 50\ntimeout_ms = 60\nfail_threshold = 2\nok_threshold = 2\nretry_after_s = 17\n",
    );
    let edge = a.server.local_addr;
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let ca = client.local_addr().unwrap();
    let by_addr: HashMap<SocketAddr, &str> =
        [(cs1.addr, "cs1"), (cs2.addr, "cs2"), (cs3.addr, "cs3")].into();
    let cs = |name: &str| match name {
        "cs1" => &cs1,
        "cs2" => &cs2,
        _ => &cs3,
    };
    // Which PF each user has while all are up (leg 1 of seed 5.2.3.2.1).
    let users: Vec<String> = (0..60).map(|i| format!("user{i}")).collect();
    let home = |u: &str| {
        let t = a.cp.snapshot();
        let m = invite_from(u, "sip:bob@example.net", "probe", ca);
        let mut out = vec![0u8; 8192];
        let (o, _) = cpm_edge::pipeline::process(&m, false, ca, &t, &mut out);
        by_addr[&o.send().unwrap().1].to_string()
    };
    let before: HashMap<String, String> = users.iter().map(|u| (u.clone(), home(u))).collect();
    assert!(before.values().any(|h| h == "cs1"));
    let mut seq = 0;
    let mut send_round = |tag: &str| -> Vec<String> {
        let mut ids = Vec::new();
        for u in &users {
            seq += 1;
            let id = format!("{tag}-{u}-{seq}");
            client
                .send_to(&invite_from(u, "sip:bob@example.net", &id, ca), edge)
                .unwrap();
            ids.push(id);
        }
        ids
    };
    let round = send_round("up");
    wait_until("first round", Duration::from_secs(5), || {
        cs1.calls().len() + cs2.calls().len() + cs3.calls().len() >= round.len()
    });

    // cs1 hangs: it still receives but answers nothing, not even OPTIONS.
    cs1.alive.store(false, Ordering::SeqCst);
    let detected = wait_until("cs1 marked down", Duration::from_secs(5), || {
        let t = a.cp.snapshot();
        t.shards.get(t.shards.by_name("cs1").unwrap()).state == ShardState::Down
    });
    println!("cs1 failure detected after {detected:?} (interval 50 ms, timeout 60 ms, 2 failures)");
    let at_cs1 = cs1.calls().len();
    let ids = send_round("down");
    wait_until("failover round", Duration::from_secs(5), || {
        ids.iter()
            .all(|id| ["cs2", "cs3"].iter().any(|n| cs(n).calls().contains(id)))
    });
    assert_eq!(cs1.calls().len(), at_cs1, "nothing reaches a failed shard");
    for (u, id) in users.iter().zip(&ids) {
        if before[u] != "cs1" {
            assert!(
                cs(&before[u]).calls().contains(id),
                "{u}: only the failed shard's users move"
            );
        }
    }
    // Its groups go to the backup (a CS sends to the group: → hosting CS).
    cs3.sock
        .send_to(
            &invite_from("x", "sip:backed@groups.example.net", "grp-backed", cs3.addr),
            edge,
        )
        .unwrap();
    wait_until("backed group at the backup", Duration::from_secs(5), || {
        cs2.calls().contains(&"grp-backed".to_string())
    });

    // A group whose host is down and has no backup gets 503 + Retry-After.
    cs3.alive.store(false, Ordering::SeqCst);
    wait_until("cs3 marked down", Duration::from_secs(5), || {
        let t = a.cp.snapshot();
        t.shards.get(t.shards.by_name("cs3").unwrap()).state == ShardState::Down
    });
    cs2.sock
        .send_to(
            &invite_from("y", "sip:lonely@groups.example.net", "grp-lonely", cs2.addr),
            edge,
        )
        .unwrap();
    wait_until("the 503", Duration::from_secs(5), || {
        !cs2.responses.lock().unwrap().is_empty()
    });
    let resp = cs2.responses.lock().unwrap()[0].clone();
    assert!(
        resp.starts_with("SIP/2.0 503 Service Unavailable"),
        "{resp}"
    );
    assert_eq!(header(&resp, "Retry-After"), vec!["Retry-After: 17"]);
    assert!(!cs3.calls().contains(&"grp-lonely".to_string()));

    // Both come back: users return to their first choice.
    cs1.alive.store(true, Ordering::SeqCst);
    cs3.alive.store(true, Ordering::SeqCst);
    wait_until("cs1 and cs3 up", Duration::from_secs(5), || {
        let t = a.cp.snapshot();
        let all_up = t.shards.live().all(|(_, s)| s.state == ShardState::Up);
        all_up
    });
    let ids = send_round("back");
    wait_until("recovery round", Duration::from_secs(5), || {
        users
            .iter()
            .zip(&ids)
            .all(|(u, id)| cs(&before[u]).calls().contains(id))
    });
    let tr = a.cp.transitions();
    assert_eq!((tr["cs1"].down, tr["cs1"].up), (1, 1));
    assert_eq!((tr["cs3"].down, tr["cs3"].up), (1, 1));
    assert!(!tr.contains_key("cs2"));
    a.stop().unwrap();
}

#[test]
fn admin_api_refuses_bad_input_and_leaves_the_table_untouched() {
    let (cs1, cs2) = (Cs::start(), Cs::start());
    let a = app(
        &[("cs1", cs1.addr, None), ("cs2", cs2.addr, None)],
        &[
            ("sip:g1@groups.example.net", "cs1"),
            ("sip:g2@groups.example.net", "cs2"),
        ],
        "[health]\nenabled = false\n",
    );
    let admin = a.admin_addr.unwrap();
    let gen0 = a.cp.snapshot().generation;
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        (
            "PUT",
            "/groups/sip:g1@groups.example.net",
            r#"{"shard":"cs9"}"#,
            404,
            "unknown shard 'cs9'",
        ),
        (
            "POST",
            "/groups",
            r#"{"id":"sip:g3@groups.example.net","shard":"nope"}"#,
            404,
            "unknown shard 'nope'",
        ),
        (
            "POST",
            "/groups",
            r#"{"id": "sip:g3@groups"#,
            400,
            "malformed JSON",
        ),
        (
            "POST",
            "/groups",
            r#"{"id":"sip:g1@groups.example.net","shard":"cs2"}"#,
            409,
            "already exists",
        ),
        (
            "POST",
            "/groups",
            r#"{"id":"tel:+1555","shard":"cs2"}"#,
            400,
            "not a SIP URI",
        ),
        ("POST", "/groups", r#"{"shard":"cs2"}"#, 400, "field 'id'"),
        (
            "POST",
            "/groups/batch",
            r#"{"upsert":[{"id":"sip:n1@g","shard":"cs1"},{"id":"sip:n1@g","shard":"cs2"}]}"#,
            409,
            "duplicate group",
        ),
        (
            "POST",
            "/groups/batch",
            r#"{"upsert":[{"id":"sip:n1@g","shard":"cs1"}],"remove":["sip:ghost@g"]}"#,
            404,
            "no group",
        ),
        ("POST", "/groups/batch", r#"{}"#, 400, "empty batch"),
        (
            "DELETE",
            "/groups/sip:ghost@groups.example.net",
            "",
            404,
            "no group",
        ),
        ("DELETE", "/shards/cs1", "", 409, "still hosts 1 group"),
        (
            "POST",
            "/shards",
            &format!(r#"{{"name":"cs3","addr":"{}"}}"#, cs1.addr),
            409,
            "already used",
        ),
        (
            "POST",
            "/shards",
            r#"{"name":"cs3","addr":"not-an-address"}"#,
            400,
            "addr",
        ),
        ("POST", "/shards/cs9/drain", "", 404, "unknown shard"),
        ("GET", "/nothing", "", 404, "no endpoint"),
        ("PATCH", "/groups", "", 405, "not allowed"),
    ];
    for (method, path, body, status, msg) in cases {
        let (st, resp) = http(admin, method, path, body, None);
        assert_eq!(st, *status, "{method} {path}: {resp}");
        assert!(
            resp.contains(msg),
            "{method} {path}: {resp} should mention {msg}"
        );
        let err: serde_json::Value = serde_json::from_str(&resp).unwrap();
        assert!(err["error"].is_string());
    }
    let t = a.cp.snapshot();
    assert_eq!(t.generation, gen0, "no refused request published anything");
    assert_eq!(t.groups.len(), 2);
    // And the good ones work.
    let (st, body) = http(
        admin,
        "POST",
        "/groups/batch",
        r#"{"upsert":[{"id":"sip:n1@g","shard":"cs1"},{"id":"sip:g1@groups.example.net","shard":"cs2"}],"remove":["sip:g2@groups.example.net"]}"#,
        None,
    );
    assert_eq!(st, 200, "{body}");
    assert!(
        body.contains(r#""added":1"#)
            && body.contains(r#""moved":1"#)
            && body.contains(r#""removed":1"#),
        "{body}"
    );
    let (st, body) = http(admin, "GET", "/groups/sip:g1@groups.example.net", "", None);
    assert_eq!(st, 200);
    assert!(body.contains(r#""shard":"cs2""#));
    let (st, _) = http(admin, "POST", "/shards/cs1/drain", "", None);
    assert_eq!(st, 200);
    let (_, body) = http(admin, "GET", "/shards", "", None);
    assert!(body.contains(r#""state":"draining""#), "{body}");
    let (st, body) = http(admin, "GET", "/ready", "", None);
    assert_eq!(st, 200, "{body}");
    a.stop().unwrap();
}

#[test]
fn the_admin_api_needs_the_token_when_one_is_set() {
    let cs1 = Cs::start();
    let a = app(
        &[("cs1", cs1.addr, None)],
        &[],
        "[health]\nenabled = false\n",
    );
    drop(a);
    let toml = format!(
        "[listen]\naddr = \"127.0.0.1:{}\"\n[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"s3cret\"\n[health]\nenabled = false\n[[shard]]\nname = \"cs1\"\naddr = \"{}\"\n",
        free_port(),
        cs1.addr
    );
    let a = App::start(&Config::parse(&toml).unwrap().validate().unwrap()).unwrap();
    let admin = a.admin_addr.unwrap();
    assert_eq!(http(admin, "GET", "/groups", "", None).0, 401);
    assert_eq!(http(admin, "GET", "/groups", "", Some("wrong")).0, 401);
    assert_eq!(http(admin, "GET", "/groups", "", Some("s3cret")).0, 200);
    assert_eq!(http(admin, "GET", "/health", "", None).0, 200);
    // Off loopback without a token is refused at configuration time.
    let open = toml.replace(
        "bind = \"127.0.0.1:0\"\ntoken = \"s3cret\"",
        "bind = \"0.0.0.0:0\"",
    );
    let err = Config::parse(&open)
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("admin.token: required"), "{err}");
    a.stop().unwrap();
}

#[test]
fn sighup_reloads_the_config_and_refuses_a_bad_one() {
    let dir = std::env::temp_dir().join(format!("cpm-edge-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("edge.toml");
    let groups = dir.join("groups.txt");
    let admin_port = free_port();
    // A port free now, kept for every rewrite of the file (the reload keeps
    // the running listen address anyway).
    let listen_port = free_port();
    let write = |n_groups: usize, extra: &str| {
        let mut g = String::from("# group file\n");
        for i in 0..n_groups {
            g += &format!("sip:file{i}@groups.example.net cs{}\n", 1 + i % 2);
        }
        std::fs::write(&groups, g).unwrap();
        std::fs::write(
            &cfg,
            format!(
                "groups_file = \"{}\"\n[listen]\naddr = \"127.0.0.1:{}\"\n[admin]\nbind = \"127.0.0.1:{admin_port}\"\n[health]\nenabled = false\n[[shard]]\nname = \"cs1\"\naddr = \"127.0.0.1:7101\"\n[[shard]]\nname = \"cs2\"\naddr = \"127.0.0.1:7102\"\n{extra}",
                groups.display(),
                listen_port
            ),
        )
        .unwrap();
    };
    write(10, "");
    let mut edge = spawn_quiet(env!("CARGO_BIN_EXE_cpm-edge"), &cfg);
    let child = &mut edge.0;
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let total = || -> Option<u64> {
        let mut s = TcpStream::connect(admin).ok()?;
        s.write_all(b"GET /groups?limit=1 HTTP/1.1\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut r = String::new();
        s.read_to_string(&mut r).ok()?;
        let body = r.split_once("\r\n\r\n")?.1;
        serde_json::from_str::<serde_json::Value>(body).ok()?["total"].as_u64()
    };
    wait_until("edge up", Duration::from_secs(20), || total() == Some(10));
    write(25, "");
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    wait_until("reload", Duration::from_secs(10), || total() == Some(25));
    // An invalid file is refused whole; the running table is untouched.
    write(40, "[[group]]\nid = \"sip:bad@g\"\nshard = \"cs9\"\n");
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    wait_until("failed reload counted", Duration::from_secs(10), || {
        let (_, m) = http(admin, "GET", "/metrics", "", None);
        m.contains("cpm_edge_reloads_total{result=\"failed\"} 1")
    });
    assert_eq!(total(), Some(25));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "clean stop: {status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The admin API runs start-up's validation: shards at the edge itself or at
/// unusable addresses, ids illegal in a SIP URI; an id with `/` round-trips
/// when its `/` is sent as `%2F`.
#[test]
fn admin_api_validates_like_start_up() {
    // Trust-boundary class 12, in a namespace capturing what the edge emits.
    enter_fresh_netns();
    let cap = Capture::start();
    let cs1 = Cs::start();
    let a = app(
        &[("cs1", cs1.addr, None)],
        &[],
        "[health]\nenabled = false\n",
    );
    let admin = a.admin_addr.unwrap();
    let edge = a.server.local_addr;
    let gen0 = a.cp.snapshot().generation;
    let shard = |addr: &str| format!(r#"{{"name":"cs2","addr":"{addr}"}}"#);
    let bad_shards = [
        (shard(&edge.to_string()), "edge's own address"),
        (shard("0.0.0.0:7001"), "unspecified IP or port 0"),
        (shard("127.0.0.1:0"), "unspecified IP or port 0"),
        (shard("0.0.0.0:0"), "unspecified IP or port 0"),
        (shard("[::1]:7001"), "family"),
        (
            r#"{"name":"a b","addr":"127.0.0.1:7001"}"#.to_string(),
            "name",
        ),
    ];
    for (body, msg) in &bad_shards {
        let (st, resp) = http(admin, "POST", "/shards", body, None);
        assert_eq!(st, 400, "{body}: {resp}");
        assert!(resp.contains(msg), "{body}: {resp} should mention {msg}");
        let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
        assert!(v["error"].is_string());
    }
    // The same addresses are refused by start-up validation.
    for addr in [edge.to_string(), "0.0.0.0:7001".into(), "[::1]:7001".into()] {
        let toml =
            format!("[listen]\naddr = \"{edge}\"\n[[shard]]\nname = \"x\"\naddr = \"{addr}\"\n");
        let e = Config::parse(&toml)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("shard[0].addr: "), "{addr}: {e}");
    }
    for id in [
        r"sip:g\r\nVia: SIP/2.0/UDP evil@x",
        "sip:g h@x",
        "sip:g<x>@x",
        r"sip:g\u0000@x",
    ] {
        let body = format!(r#"{{"id":"{id}","shard":"cs1"}}"#);
        let (st, resp) = http(admin, "POST", "/groups", &body, None);
        assert_eq!(st, 400, "{id}: {resp}");
        assert!(resp.contains("not allowed in a SIP URI"), "{id}: {resp}");
        let batch = format!(r#"{{"upsert":[{{"id":"{id}","shard":"cs1"}}]}}"#);
        assert_eq!(http(admin, "POST", "/groups/batch", &batch, None).0, 400);
    }
    assert_eq!(
        a.cp.snapshot().generation,
        gen0,
        "nothing refused was published"
    );

    // An id holding '/': created from JSON, read and deleted with %2F.
    let body = r#"{"id":"sip:team/a@groups.example.net","shard":"cs1"}"#;
    let (st, resp) = http(admin, "POST", "/groups", body, None);
    assert_eq!(st, 200, "{resp}");
    let path = "/groups/sip:team%2Fa@groups.example.net";
    let (st, resp) = http(admin, "GET", path, "", None);
    assert_eq!(st, 200, "{resp}");
    assert!(
        resp.contains(r#""id":"sip:team/a@groups.example.net""#),
        "{resp}"
    );
    // Unencoded, the '/' splits the path: no such endpoint, nothing touched.
    let (st, _) = http(
        admin,
        "DELETE",
        "/groups/sip:team/a@groups.example.net",
        "",
        None,
    );
    assert_eq!(st, 405);
    let (st, resp) = http(admin, "DELETE", path, "", None);
    assert_eq!(st, 200, "{resp}");
    assert_eq!(http(admin, "GET", path, "", None).0, 404);
    assert_eq!(a.cp.snapshot().groups.len(), 0);
    // Traffic afterwards reaches the one real shard; nothing the API
    // refused (the edge itself, 0.0.0.0, port 0) ever receives a datagram.
    let client = sock();
    let me = client.local_addr().unwrap();
    client
        .send_to(
            &invite_from("u", "sip:g@example.net", "after-refusals", me),
            edge,
        )
        .unwrap();
    wait_until("the INVITE at cs1", Duration::from_secs(5), || {
        cs1.calls().contains(&"after-refusals".to_string())
    });
    let out = cap.assert_sent_only_to(edge, &[cs1.addr, me]);
    assert!(!out.is_empty(), "the capture saw the forwarded INVITE");
    a.stop().unwrap();
}

/// The edge's configuration text for the reload tests: one shard (a test
/// socket), one group, the admin API on an ephemeral loopback port.
fn reload_toml(listen: u16, shard: SocketAddr, extra: &str) -> String {
    format!(
        "[listen]\naddr = \"127.0.0.1:{listen}\"\n[admin]\nbind = \"127.0.0.1:0\"\n{extra}\n[health]\nenabled = false\n[workers]\ncount = 1\n[[shard]]\nname = \"cs1\"\naddr = \"{shard}\"\n[[group]]\nid = \"sip:g1@groups.example.net\"\nshard = \"cs1\"\n"
    )
}

fn valid(toml: &str) -> cpm_edge::config::Valid {
    Config::parse(toml).unwrap().validate().unwrap()
}

/// Send `n` INVITEs from `client` at once; how many reach `shard` and how
/// many 503s come back, and the top Via of the first forwarded one.
fn burst(
    client: &UdpSocket,
    edge: SocketAddr,
    shard: &UdpSocket,
    n: usize,
    tag: &str,
) -> (usize, usize, String) {
    let me = client.local_addr().unwrap();
    for i in 0..n {
        let m = invite_from("u", "sip:g1@groups.example.net", &format!("{tag}-{i}"), me);
        client.send_to(&m, edge).unwrap();
    }
    let (mut fwd, mut busy, mut via) = (0, 0, String::new());
    let mut buf = vec![0u8; 65536];
    for s in [shard, client] {
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        while let Ok((len, _)) = s.recv_from(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..len]).into_owned();
            if m.starts_with("INVITE ") {
                fwd += 1;
                if via.is_empty() {
                    via = header(&m, "Via")[0].to_string();
                }
            } else if m.starts_with("SIP/2.0 503") {
                busy += 1;
            }
        }
    }
    (fwd, busy, via)
}

#[test]
fn reload_rotates_the_token_applies_limits_and_refuses_fixed_keys_whole() {
    // Trust-boundary class 9, in a namespace capturing what the edge emits.
    enter_fresh_netns();
    let cap = Capture::start();
    let shard = sock();
    let sa = shard.local_addr().unwrap();
    let port = free_port();
    let base = |extra: &str| reload_toml(port, sa, extra);
    let a = App::start(&valid(&base("token = \"old-token\"\n"))).unwrap();
    let (admin, edge) = (a.admin_addr.unwrap(), a.server.local_addr);
    let client = sock();
    big_rcvbuf(&client);
    big_rcvbuf(&shard);
    assert_eq!(http(admin, "GET", "/groups", "", Some("old-token")).0, 200);
    let (fwd, busy, via) = burst(&client, edge, &shard, 30, "before");
    assert_eq!((fwd, busy), (30, 0), "no limit yet");
    assert!(via.contains(&format!("127.0.0.1:{port}")), "{via}");

    // Token rotation and limits, in one reload.
    let limited = "token = \"new-token\"\n[limits]\nper_source_rate = 5\nper_source_burst = 5\n";
    a.cp.reload(valid(&base(limited))).unwrap();
    assert_eq!(http(admin, "GET", "/groups", "", Some("old-token")).0, 401);
    assert_eq!(http(admin, "GET", "/groups", "", Some("new-token")).0, 200);
    let (fwd, busy, _) = burst(&client, edge, &shard, 30, "limited");
    assert!(fwd <= 7, "the new rate applies: {fwd} forwarded");
    // Over the rate: 503s up to the answer budget (limits.reply_burst,
    // default 10), the rest dropped silently, never one answer per packet.
    assert!((10..=23).contains(&busy), "over the rate: 503 ({busy})");
    let (_, m) = http(admin, "GET", "/metrics", "", Some("new-token"));
    let limited = format!("cpm_edge_rate_limited_total {}\n", 30 - fwd);
    assert!(m.contains(&limited), "{limited} in {m}");

    // A listen change refuses everything else in the same file too.
    let other = free_port();
    let moved = reload_toml(other, sa, "token = \"third\"\n")
        + "[[group]]\nid = \"sip:g2@groups.example.net\"\nshard = \"cs1\"\n";
    let err = a.cp.reload(valid(&moved)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("reload refused: listen.addr changed 127.0.0.1:{port} -> 127.0.0.1:{other}; restart to apply")
    );
    assert_eq!(http(admin, "GET", "/groups", "", Some("third")).0, 401);
    assert_eq!(http(admin, "GET", "/groups", "", Some("new-token")).0, 200);
    assert_eq!(a.cp.snapshot().groups.len(), 1, "no group added");
    let several =
        reload_toml(other, sa, "[workers]\nbatch = 32\n").replace("[workers]\ncount = 1\n", "");
    let e = a.cp.reload(valid(&several)).unwrap_err().to_string();
    assert!(
        e.contains("listen.addr changed") && e.contains("workers.batch changed 64 -> 32"),
        "{e}"
    );

    // Limits off again and the token removed (allowed on loopback only).
    a.cp.reload(valid(&base(""))).unwrap();
    assert_eq!(http(admin, "GET", "/groups", "", None).0, 200);
    std::thread::sleep(Duration::from_millis(1200));
    let (fwd, busy, via) = burst(&client, edge, &shard, 30, "after");
    assert_eq!((fwd, busy), (30, 0), "limits off again");
    assert!(
        via.contains(&format!("127.0.0.1:{port}")),
        "still the old Via: {via}"
    );
    let out = cap.assert_sent_only_to(edge, &[sa, client.local_addr().unwrap()]);
    assert!(out.len() >= 70, "the capture saw the bursts: {}", out.len());
    assert!(
        cap.snapshot()
            .iter()
            .all(|d| d.src.port() != other && d.dst.port() != other),
        "nothing from or to the refused listen address"
    );
    a.stop().unwrap();
}

use common::Child as Edge;

fn spawn_edge(cfg: &std::path::Path, stderr: &std::path::Path) -> Edge {
    let err = std::fs::File::create(stderr).unwrap();
    Edge(
        std::process::Command::new(env!("CARGO_BIN_EXE_cpm-edge"))
            .arg("--config")
            .arg(cfg)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap(),
    )
}

fn mkfifo(p: &std::path::Path) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

fn admin_up(admin: SocketAddr) -> bool {
    TcpStream::connect(admin).is_ok() && http(admin, "GET", "/health", "", None).0 == 200
}

#[test]
fn sighup_refuses_a_listen_change_and_a_fifo_groups_file_with_one_log_line() {
    // Trust-boundary class 9 on the real binary, which inherits this
    // thread's network namespace; the capture sees what it emits.
    enter_fresh_netns();
    let cap = Capture::start();
    let dir = std::env::temp_dir().join(format!("cpm-edge-fixed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (cfg, log, fifo) = (
        dir.join("edge.toml"),
        dir.join("stderr.log"),
        dir.join("groups.fifo"),
    );
    mkfifo(&fifo);
    let shard = sock();
    let sa = shard.local_addr().unwrap();
    let admin_port = free_port();
    let write = |listen: u16, extra: &str| {
        let t = reload_toml(listen, sa, extra)
            .replace("127.0.0.1:0", &format!("127.0.0.1:{admin_port}"));
        std::fs::write(&cfg, t).unwrap();
    };
    let (port, other) = (free_port(), free_port());
    write(port, "");
    let mut edge = spawn_edge(&cfg, &log);
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    wait_until("edge up", Duration::from_secs(20), || admin_up(admin));
    let logged = |needle: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(needle)
    };

    write(other, "");
    unsafe { libc::kill(edge.0.id() as i32, libc::SIGHUP) };
    let line = format!("reload refused: listen.addr changed 127.0.0.1:{port} -> 127.0.0.1:{other}; restart to apply");
    wait_until("the refusal logged", Duration::from_secs(10), || {
        logged(&line)
    });
    let client = sock();
    let old: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (fwd, _, via) = burst(&client, old, &shard, 3, "old");
    assert_eq!(fwd, 3, "still answering on the old address");
    assert!(via.contains(&format!("127.0.0.1:{port}")), "old Via: {via}");
    let out = cap.assert_sent_only_to(old, &[sa, client.local_addr().unwrap()]);
    assert_eq!(out.len(), 3, "the three INVITEs, to the shard");
    assert!(
        cap.snapshot()
            .iter()
            .all(|d| d.src.port() != other && d.dst.port() != other),
        "nothing from or to the refused listen address"
    );

    // groups_file a FIFO: refused at once (no blocking read), logged.
    std::fs::write(
        &cfg,
        format!("groups_file = {:?}\n", fifo.to_str().unwrap())
            + &reload_toml(port, sa, "").replace("127.0.0.1:0", &format!("127.0.0.1:{admin_port}")),
    )
    .unwrap();
    unsafe { libc::kill(edge.0.id() as i32, libc::SIGHUP) };
    wait_until("the FIFO refused", Duration::from_secs(10), || {
        logged("not a regular file")
    });
    let (_, m) = http(admin, "GET", "/metrics", "", None);
    assert!(
        m.contains("cpm_edge_reloads_total{result=\"failed\"} 2"),
        "{m}"
    );
    let t0 = Instant::now();
    unsafe { libc::kill(edge.0.id() as i32, libc::SIGTERM) };
    let status = edge.0.wait().unwrap();
    assert!(
        status.success() && t0.elapsed() < Duration::from_secs(5),
        "{status:?}"
    );
    // The same groups_file is refused at start.
    let e = Config::parse(&std::fs::read_to_string(&cfg).unwrap())
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a regular file"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A reload stuck reading its file (here: `--config` is a FIFO nobody
/// writes to any more) does not keep SIGTERM from stopping the edge.
#[test]
fn sigterm_stops_the_edge_while_a_reload_is_stuck() {
    let dir = std::env::temp_dir().join(format!("cpm-edge-stuck-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (cfg, log) = (dir.join("edge.fifo"), dir.join("stderr.log"));
    mkfifo(&cfg);
    let admin_port = free_port();
    let text = reload_toml(free_port(), "127.0.0.1:7101".parse().unwrap(), "")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{admin_port}"));
    let mut edge = spawn_edge(&cfg, &log);
    // Opening for writing waits for the edge to open it for reading.
    std::fs::write(&cfg, text).unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    wait_until("edge up", Duration::from_secs(20), || admin_up(admin));
    unsafe { libc::kill(edge.0.id() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    unsafe { libc::kill(edge.0.id() as i32, libc::SIGTERM) };
    let r = wait_until("exit after SIGTERM", Duration::from_secs(5), || {
        edge.0.try_wait().ok().flatten().is_some()
    });
    assert!(r < Duration::from_secs(5));
    let status = edge.0.wait().unwrap();
    assert!(status.success(), "{status:?} after {:?}", t0.elapsed());
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(err.contains("reload still running"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A shard's request for an Interworking Function, as the PF sends it.
fn iwf_request(cs: SocketAddr, edge: SocketAddr, n: u32) -> Vec<u8> {
    format!(
        "MESSAGE tel:+447700900123 SIP/2.0\r\nVia: SIP/2.0/UDP {cs};branch=z9hG4bKiwf{n}\r\n\
         Max-Forwards: 69\r\nRoute: <sip:{edge};lr;cpm-iwf=sms>\r\nFrom: <sip:alice@example.net>;tag=a\r\n\
         To: <sip:erin@example.net>\r\nCall-ID: iwf-{n}\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\n\
         Content-Length: 2\r\n\r\nhi"
    )
    .into_bytes()
}

#[test]
fn a_dead_interworking_function_gets_no_request_and_none_left_is_503() {
    let cs1 = Cs::start();
    let (iwf1, iwf2) = (Cs::start(), Cs::start());
    let a = app(
        &[("cs1", cs1.addr, None)],
        &[],
        &format!(
            "[health]\ninterval_ms = 50\ntimeout_ms = 60\nfail_threshold = 2\nok_threshold = 2\n\
             [[iwf]]\nservice = \"sms\"\naddr = \"{}\"\n[[iwf]]\nservice = \"sms\"\naddr = \"{}\"\n",
            iwf1.addr, iwf2.addr
        ),
    );
    let edge = a.server.local_addr;
    let dst = |n: u32| {
        let t = a.cp.snapshot();
        let mut out = vec![0u8; 8192];
        let (o, _) = cpm_edge::pipeline::process(
            &iwf_request(cs1.addr, edge, n),
            false,
            cs1.addr,
            &t,
            &mut out,
        );
        let line = String::from_utf8_lossy(&out[..o.send().map_or(0, |(l, _)| l)])
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        (o.send().map(|(_, d)| d), line)
    };
    let live = |up: [bool; 2]| {
        let t = a.cp.snapshot();
        t.iwfs.iter().map(|i| i.up).collect::<Vec<_>>() == up
    };
    assert_eq!(
        dst(1).0.map(|d| d == iwf1.addr || d == iwf2.addr),
        Some(true)
    );
    iwf1.alive.store(false, Ordering::Relaxed);
    wait_until("iwf1 seen down", Duration::from_secs(3), || {
        live([false, true])
    });
    for n in 0..20 {
        assert_eq!(dst(n).0, Some(iwf2.addr), "only the live one");
    }
    iwf2.alive.store(false, Ordering::Relaxed);
    wait_until("both down", Duration::from_secs(3), || live([false, false]));
    let (_, line) = dst(99);
    assert_eq!(
        line,
        "SIP/2.0 503 Service Unavailable - No Interworking Function"
    );
    iwf1.alive.store(true, Ordering::Relaxed);
    wait_until("iwf1 back", Duration::from_secs(3), || live([true, false]));
    assert_eq!(dst(100).0, Some(iwf1.addr));
    assert!(a.cp.transitions().keys().any(|k| k.starts_with("iwf:sms@")));
    a.stop().unwrap();
}
