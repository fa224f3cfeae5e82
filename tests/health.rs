//! The shard health checker: the pure state machine, then the real checker
//! thread over loopback UDP against responder threads that play CS shards.
//!
//! Timing: interval 50 ms, timeout 100 ms, thresholds 2/2. Only upper bounds
//! are asserted (generous, 3 s); absence of a transition is asserted after
//! counting answered probes, never after a bare sleep.

use cpm_edge::control::health::{
    spawn, Health, HealthConfig, HealthSettings, OnChange, ShardHealth, Targets,
};
use cpm_edge::sip::scan::{scan, Method, StartLine};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_secs(3);

fn cfg() -> HealthConfig {
    HealthConfig {
        probes: HealthSettings {
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(100),
            fail_threshold: 2,
            ok_threshold: 2,
        },
        bind: "127.0.0.1:0".parse().unwrap(),
        from_host: "edge.test:5060".into(),
    }
}

// ---------------------------------------------------------------- state machine

fn thresholds(fail: u32, ok: u32) -> HealthConfig {
    let mut c = cfg();
    c.probes.fail_threshold = fail;
    c.probes.ok_threshold = ok;
    c
}

#[test]
fn starts_up() {
    let h = ShardHealth::new();
    assert_eq!(h.state(), Health::Up);
}

#[test]
fn down_after_exactly_fail_threshold_failures() {
    let c = thresholds(3, 2);
    let mut h = ShardHealth::new();
    assert_eq!(h.on_result(false, &c), None);
    assert_eq!(h.on_result(false, &c), None);
    assert_eq!(h.state(), Health::Up);
    assert_eq!(h.on_result(false, &c), Some(Health::Down));
    assert_eq!(h.state(), Health::Down);
}

#[test]
fn success_in_between_resets_failures() {
    let c = thresholds(3, 2);
    let mut h = ShardHealth::new();
    for _ in 0..5 {
        assert_eq!(h.on_result(false, &c), None);
        assert_eq!(h.on_result(false, &c), None);
        assert_eq!(h.on_result(true, &c), None);
    }
    assert_eq!(h.state(), Health::Up);
}

#[test]
fn up_after_ok_threshold_successes_and_failure_resets_them() {
    let c = thresholds(1, 3);
    let mut h = ShardHealth::new();
    assert_eq!(h.on_result(false, &c), Some(Health::Down));
    assert_eq!(h.on_result(true, &c), None);
    assert_eq!(h.on_result(true, &c), None);
    // A failure in between: counting starts over.
    assert_eq!(h.on_result(false, &c), None);
    assert_eq!(h.on_result(true, &c), None);
    assert_eq!(h.on_result(true, &c), None);
    assert_eq!(h.state(), Health::Down);
    assert_eq!(h.on_result(true, &c), Some(Health::Up));
    assert_eq!(h.state(), Health::Up);
}

#[test]
fn no_repeated_transitions() {
    let c = thresholds(2, 2);
    let mut h = ShardHealth::new();
    let mut seen = Vec::new();
    for ok in [
        true, true, true, false, false, false, false, false, true, true, true, true,
    ] {
        if let Some(t) = h.on_result(ok, &c) {
            seen.push(t);
        }
    }
    assert_eq!(seen, vec![Health::Down, Health::Up]);
}

#[test]
fn zero_thresholds_act_as_one() {
    let c = thresholds(0, 0);
    let mut h = ShardHealth::new();
    assert_eq!(h.on_result(false, &c), Some(Health::Down));
    assert_eq!(h.on_result(false, &c), None);
    assert_eq!(h.on_result(true, &c), Some(Health::Up));
    assert_eq!(h.on_result(true, &c), None);
}

// ---------------------------------------------------------------- responders

const OK200: u8 = 0;
const SILENT: u8 = 1;
const CODE503: u8 = 2;
const WRONG_CALL_ID: u8 = 3;
const OTHER_ADDR: u8 = 4;
/// Answers 200, but only after 150 ms (the checker's timeout is 100 ms).
const LATE: u8 = 5;

/// A CS shard stand-in on its own thread: checks each probe's shape, then
/// answers according to `mode`.
struct Responder {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    /// Probes received (whatever the mode).
    received: Arc<AtomicUsize>,
    /// Probes answered (in a mode that answers).
    answered: Arc<AtomicUsize>,
    /// Where the probes come from: the checker's socket.
    checker: Arc<Mutex<Option<SocketAddr>>>,
    /// Probe shape violations.
    bad: Arc<Mutex<Vec<String>>>,
    /// The last probe received, as text.
    last: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Responder {
    fn new(mode: u8) -> Responder {
        Self::on("127.0.0.1:0", mode)
    }

    fn on(bind: &str, mode: u8) -> Responder {
        let sock = UdpSocket::bind(bind).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let other = UdpSocket::bind(bind).unwrap();
        let addr = sock.local_addr().unwrap();
        let mut r = Responder {
            addr,
            mode: Arc::new(AtomicU8::new(mode)),
            received: Arc::default(),
            answered: Arc::default(),
            checker: Arc::default(),
            bad: Arc::default(),
            last: Arc::default(),
            stop: Arc::default(),
            handle: None,
        };
        let last = r.last.clone();
        let (mode, received, answered, checker, bad, stop) = (
            r.mode.clone(),
            r.received.clone(),
            r.answered.clone(),
            r.checker.clone(),
            r.bad.clone(),
            r.stop.clone(),
        );
        let handle = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_535];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let req = &buf[..n];
                if let Err(e) = check_probe(req, addr) {
                    bad.lock().unwrap().push(e);
                }
                *checker.lock().unwrap() = Some(from);
                *last.lock().unwrap() = String::from_utf8_lossy(req).into_owned();
                received.fetch_add(1, Ordering::SeqCst);
                let text = String::from_utf8_lossy(req);
                let m = mode.load(Ordering::SeqCst);
                let reply = match m {
                    SILENT => continue,
                    CODE503 => answer(&text, "503 Service Unavailable", None),
                    WRONG_CALL_ID => answer(&text, "200 OK", Some("not-a-probe@elsewhere")),
                    _ => answer(&text, "200 OK", None),
                };
                if m == LATE {
                    let s = sock.try_clone().unwrap();
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(150));
                        let _ = s.send_to(reply.as_bytes(), from);
                    });
                } else {
                    let via = if m == OTHER_ADDR { &other } else { &sock };
                    let _ = via.send_to(reply.as_bytes(), from);
                }
                answered.fetch_add(1, Ordering::SeqCst);
            }
        });
        r.handle = Some(handle);
        r
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }

    fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    /// Wait until `n` more probes were answered than now.
    fn wait_answered(&self, more: usize) {
        let target = self.answered() + more;
        assert!(
            wait_until(|| self.answered() >= target),
            "responder {} did not answer {more} more probes within {BOUND:?}",
            self.addr
        );
    }

    fn assert_probes_well_formed(&self) {
        let bad = self.bad.lock().unwrap();
        assert!(bad.is_empty(), "malformed probes: {bad:?}");
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn wait_until(mut pred: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + BOUND;
    while Instant::now() < end {
        if pred() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    pred()
}

fn host(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

/// The probe is a well-formed SIP OPTIONS addressed to this shard.
fn check_probe(req: &[u8], me: SocketAddr) -> Result<(), String> {
    let text = String::from_utf8_lossy(req).into_owned();
    let m = scan(req);
    if let Some(d) = m.defect {
        return Err(format!("defect {d:?} in {text}"));
    }
    let StartLine::Request { method, uri, .. } = m.start else {
        return Err(format!("not a request: {text}"));
    };
    if method != Method::Options {
        return Err(format!("not OPTIONS: {text}"));
    }
    let want_uri = format!("sip:{}", host(me));
    if uri.get(req) != want_uri.as_bytes() {
        return Err(format!("Request-URI is not {want_uri}: {text}"));
    }
    let via = m.top_via.ok_or("no Via")?;
    let _ = via;
    let has = |h: &str| text.lines().any(|l| l.trim_end() == h);
    let starts = |p: &str| text.lines().any(|l| l.starts_with(p));
    for (ok, what) in [
        (starts("Via: SIP/2.0/UDP "), "Via transport"),
        (text.contains(";branch=z9hG4bKhc"), "branch prefix"),
        (text.contains(";rport"), "rport"),
        (has("Max-Forwards: 70"), "Max-Forwards"),
        (
            starts("From: <sip:cpm-edge@edge.test:5060>;tag="),
            "From with tag",
        ),
        (has(&format!("To: <{want_uri}>")), "To"),
        (starts("Call-ID: hc-"), "Call-ID prefix"),
        (text.contains("@edge.test:5060\r\n"), "Call-ID host"),
        (has("Accept: application/sdp"), "Accept"),
        (has("Content-Length: 0"), "Content-Length"),
        (text.ends_with("\r\n\r\n"), "blank line at end"),
    ] {
        if !ok {
            return Err(format!("{what} missing or wrong in {text}"));
        }
    }
    let cseq = text
        .lines()
        .find_map(|l| l.strip_prefix("CSeq: "))
        .ok_or("no CSeq")?;
    if !cseq.ends_with(" OPTIONS") || cseq.split(' ').next() != Some(&m.cseq_num.to_string()) {
        return Err(format!("CSeq {cseq}"));
    }
    let call_id = String::from_utf8_lossy(m.call_id.get(req)).into_owned();
    if !call_id.starts_with(&format!("hc-{}-", m.cseq_num)) {
        return Err(format!("Call-ID {call_id} does not carry CSeq {cseq}"));
    }
    Ok(())
}

/// A response copying Via/From/To/Call-ID/CSeq (the Call-ID replaced when
/// `call_id` is given).
fn answer(req: &str, status: &str, call_id: Option<&str>) -> String {
    let mut out = format!("SIP/2.0 {status}\r\n");
    for line in req.split("\r\n") {
        let copy = ["Via:", "From:", "To:", "Call-ID:", "CSeq:"]
            .iter()
            .any(|p| line.starts_with(p));
        if !copy {
            continue;
        }
        match (line.starts_with("Call-ID:"), call_id) {
            (true, Some(c)) => out += &format!("Call-ID: {c}\r\n"),
            _ if line.starts_with("To:") => out += &format!("{line};tag=cs1\r\n"),
            _ => out += &format!("{line}\r\n"),
        }
    }
    out += "Content-Length: 0\r\n\r\n";
    out
}

// ---------------------------------------------------------------- checker rig

type Event = (String, SocketAddr, Health);

#[derive(Default)]
struct Events {
    list: Mutex<Vec<Event>>,
    cv: Condvar,
}

impl Events {
    fn snapshot(&self) -> Vec<Event> {
        self.list.lock().unwrap().clone()
    }

    fn of(&self, name: &str) -> Vec<Health> {
        self.snapshot()
            .into_iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, _, h)| h)
            .collect()
    }

    /// Wait until `name`'s transitions are `want` (bounded).
    fn wait_for(&self, name: &str, want: &[Health]) {
        let end = Instant::now() + BOUND;
        let mut list = self.list.lock().unwrap();
        loop {
            let got: Vec<Health> = list
                .iter()
                .filter(|(n, _, _)| n == name)
                .map(|(_, _, h)| *h)
                .collect();
            if got == want {
                return;
            }
            let now = Instant::now();
            assert!(
                now < end,
                "{name}: wanted transitions {want:?} within {BOUND:?}, got {got:?} (all: {:?})",
                *list
            );
            list = self.cv.wait_timeout(list, end - now).unwrap().0;
        }
    }
}

struct Rig {
    events: Arc<Events>,
    targets: Arc<Mutex<Vec<(String, SocketAddr)>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Rig {
    fn start(cfg: HealthConfig, shards: &[(&str, SocketAddr)]) -> Rig {
        let events = Arc::new(Events::default());
        let list: Vec<(String, SocketAddr)> =
            shards.iter().map(|(n, a)| (n.to_string(), *a)).collect();
        let targets_list = Arc::new(Mutex::new(list));
        let t = targets_list.clone();
        let targets: Targets = Arc::new(move || t.lock().unwrap().clone());
        let ev = events.clone();
        let on_change: OnChange = Arc::new(move |name, addr, h| {
            ev.list.lock().unwrap().push((name.to_string(), addr, h));
            ev.cv.notify_all();
        });
        let stop = Arc::new(AtomicBool::new(false));
        let handle = spawn(cfg, targets, on_change, stop.clone()).expect("spawn checker");
        Rig {
            events,
            targets: targets_list,
            stop,
            handle: Some(handle),
        }
    }

    fn set_targets(&self, shards: &[(&str, SocketAddr)]) {
        *self.targets.lock().unwrap() = shards.iter().map(|(n, a)| (n.to_string(), *a)).collect();
    }

    /// Set `stop` and join the thread, failing (not hanging) after BOUND.
    fn stop_and_join(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let h = self.handle.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(h.join().is_ok());
        });
        match rx.recv_timeout(BOUND) {
            Ok(ok) => assert!(ok, "checker thread panicked"),
            Err(_) => panic!("checker thread did not stop within {BOUND:?}"),
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn dead_addr() -> SocketAddr {
    // Bound then dropped: nothing listens there any more.
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

// ---------------------------------------------------------------- integration

#[test]
fn healthy_shards_stay_up_then_one_goes_down_and_comes_back() {
    let a = Responder::new(OK200);
    let b = Responder::new(OK200);
    let rig = Rig::start(cfg(), &[("cs-a", a.addr), ("cs-b", b.addr)]);
    a.wait_answered(6);
    b.wait_answered(6);
    assert!(
        rig.events.snapshot().is_empty(),
        "{:?}",
        rig.events.snapshot()
    );

    a.set(SILENT);
    rig.events.wait_for("cs-a", &[Health::Down]);
    let ev = rig.events.snapshot();
    assert_eq!(ev[0].1, a.addr, "on_change carries the shard address");

    a.set(OK200);
    rig.events.wait_for("cs-a", &[Health::Down, Health::Up]);
    b.wait_answered(4);
    assert!(rig.events.of("cs-b").is_empty());
    assert_eq!(rig.events.of("cs-a"), vec![Health::Down, Health::Up]);

    a.assert_probes_well_formed();
    b.assert_probes_well_formed();
    rig.stop_and_join();
}

#[test]
fn nothing_listening_goes_down() {
    let dead = dead_addr();
    let live = Responder::new(OK200);
    let rig = Rig::start(cfg(), &[("cs-dead", dead), ("cs-live", live.addr)]);
    rig.events.wait_for("cs-dead", &[Health::Down]);
    assert_eq!(rig.events.snapshot()[0].1, dead);
    live.wait_answered(4);
    assert!(rig.events.of("cs-live").is_empty());
    rig.stop_and_join();
}

#[test]
fn error_status_counts_as_alive() {
    let r = Responder::new(SILENT);
    let rig = Rig::start(cfg(), &[("cs", r.addr)]);
    rig.events.wait_for("cs", &[Health::Down]);
    // A CS that answers 503 is a running SIP stack.
    r.set(CODE503);
    rig.events.wait_for("cs", &[Health::Down, Health::Up]);
    r.wait_answered(6);
    assert_eq!(rig.events.of("cs"), vec![Health::Down, Health::Up]);
    r.assert_probes_well_formed();
    rig.stop_and_join();
}

#[test]
fn wrong_call_id_does_not_count() {
    let r = Responder::new(WRONG_CALL_ID);
    let rig = Rig::start(cfg(), &[("cs", r.addr)]);
    rig.events.wait_for("cs", &[Health::Down]);
    assert!(r.answered() >= 2, "the responder did answer");
    r.set(OK200);
    rig.events.wait_for("cs", &[Health::Down, Health::Up]);
    rig.stop_and_join();
}

#[test]
fn answer_from_another_address_does_not_count() {
    let r = Responder::new(OTHER_ADDR);
    let rig = Rig::start(cfg(), &[("cs", r.addr)]);
    rig.events.wait_for("cs", &[Health::Down]);
    assert!(r.answered() >= 2, "the responder did answer");
    r.set(OK200);
    rig.events.wait_for("cs", &[Health::Down, Health::Up]);
    rig.stop_and_join();
}

#[test]
fn late_answers_are_ignored() {
    let r = Responder::new(LATE);
    let rig = Rig::start(cfg(), &[("cs", r.addr)]);
    rig.events.wait_for("cs", &[Health::Down]);
    // Late answers keep arriving; none of them brings the shard back.
    r.wait_answered(6);
    assert_eq!(rig.events.of("cs"), vec![Health::Down]);
    r.set(OK200);
    rig.events.wait_for("cs", &[Health::Down, Health::Up]);
    rig.stop_and_join();
}

/// A tiny deterministic generator for garbage bytes.
fn lcg(seed: &mut u64) -> u8 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (*seed >> 56) as u8
}

#[test]
fn garbage_on_the_socket_is_ignored() {
    let r = Responder::new(OK200);
    let rig = Rig::start(cfg(), &[("cs", r.addr)]);
    r.wait_answered(2);
    let checker = r.checker.lock().unwrap().expect("probe source");
    let g = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seed = 7u64;
    let mut junk: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"\r\n\r\n".to_vec(),
        b"SIP/2.0 200 OK\r\n\r\n".to_vec(),
        b"SIP/2.0 200 OK\r\nCall-ID: hc-1-0@edge.test:5060\r\n\r\n".to_vec(),
        b"SIP/2.0 999 Nope\r\nCall-ID: x\r\n\r\n".to_vec(),
        b"SIP/2.0 20".to_vec(),
        b"OPTIONS sip:x SIP/2.0\r\nCall-ID: a\r\n\r\n".to_vec(),
        b"SIP/2.0 200 OK\r\nCall-ID: \r\nContent-Length: 99999999999\r\n\r\n".to_vec(),
        vec![0u8; 1000],
        vec![0xffu8; 60_000],
    ];
    for len in [1usize, 7, 64, 512, 1400, 9000] {
        junk.push((0..len).map(|_| lcg(&mut seed)).collect());
    }
    for _ in 0..20 {
        for j in &junk {
            let _ = g.send_to(j, checker);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Still matching answers, still timing out probes.
    r.wait_answered(6);
    assert!(
        rig.events.snapshot().is_empty(),
        "{:?}",
        rig.events.snapshot()
    );
    r.set(SILENT);
    rig.events.wait_for("cs", &[Health::Down]);
    r.set(OK200);
    rig.events.wait_for("cs", &[Health::Down, Health::Up]);
    rig.stop_and_join();
}

#[test]
fn target_changes_are_picked_up() {
    let a = Responder::new(OK200);
    let c = Responder::new(OK200);
    let dead = dead_addr();
    let rig = Rig::start(cfg(), &[("cs-a", a.addr)]);
    a.wait_answered(2);
    assert_eq!(c.received(), 0);

    // Added live: probed, and a dead one goes Down.
    rig.set_targets(&[("cs-a", a.addr), ("cs-c", c.addr), ("cs-dead", dead)]);
    c.wait_answered(3);
    rig.events.wait_for("cs-dead", &[Health::Down]);

    // Removed: no longer probed, and forgotten (no transition when it dies).
    rig.set_targets(&[("cs-c", c.addr), ("cs-dead", dead)]);
    c.wait_answered(3);
    let a_seen = a.received();
    a.set(SILENT);
    c.wait_answered(8);
    assert_eq!(a.received(), a_seen, "a removed shard is not probed");
    assert!(rig.events.of("cs-a").is_empty());
    assert!(rig.events.of("cs-c").is_empty());

    // Re-added: starts Up again (new shards start Up), then goes Down.
    rig.set_targets(&[("cs-a", a.addr), ("cs-c", c.addr)]);
    rig.events.wait_for("cs-a", &[Health::Down]);
    rig.stop_and_join();
}

#[test]
fn unspecified_bind_advertises_the_routed_source_in_via() {
    let r = Responder::new(OK200);
    let c = HealthConfig {
        bind: "0.0.0.0:0".parse().unwrap(),
        ..cfg()
    };
    let rig = Rig::start(c, &[("cs", r.addr)]);
    r.wait_answered(3);
    let port = r.checker.lock().unwrap().expect("probe source").port();
    let last = r.last.lock().unwrap().clone();
    assert!(
        last.contains(&format!("Via: SIP/2.0/UDP 127.0.0.1:{port};branch=")),
        "{last}"
    );
    assert!(rig.events.snapshot().is_empty());
    r.assert_probes_well_formed();
    rig.stop_and_join();
}

#[test]
fn stop_ends_the_thread() {
    let r = Responder::new(OK200);
    let rig = Rig::start(cfg(), &[("cs", r.addr)]);
    r.wait_answered(1);
    let t = Instant::now();
    rig.stop_and_join();
    assert!(t.elapsed() < BOUND);
}

#[test]
fn stop_ends_an_idle_thread() {
    let rig = Rig::start(cfg(), &[]);
    std::thread::sleep(Duration::from_millis(30));
    rig.stop_and_join();
}

#[test]
fn bind_failure_is_reported_by_spawn() {
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let c = HealthConfig {
        bind: taken.local_addr().unwrap(),
        ..cfg()
    };
    let targets: Targets = Arc::new(Vec::new);
    let on_change: OnChange = Arc::new(|_, _, _| {});
    assert!(spawn(c, targets, on_change, Arc::default()).is_err());
}

#[test]
fn ipv6_shard_from_an_ipv4_bound_checker() {
    let Ok(probe) = UdpSocket::bind("[::1]:0") else {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    };
    drop(probe);
    let r = Responder::on("[::1]:0", OK200);
    let v4 = Responder::new(OK200);
    let rig = Rig::start(cfg(), &[("cs-v6", r.addr), ("cs-v4", v4.addr)]);
    r.wait_answered(4);
    v4.wait_answered(4);
    assert!(
        rig.events.snapshot().is_empty(),
        "{:?}",
        rig.events.snapshot()
    );
    r.assert_probes_well_formed();
    r.set(SILENT);
    rig.events.wait_for("cs-v6", &[Health::Down]);
    r.set(OK200);
    rig.events.wait_for("cs-v6", &[Health::Down, Health::Up]);
    assert!(rig.events.of("cs-v4").is_empty());
    rig.stop_and_join();
}

#[test]
fn ipv6_bound_checker() {
    let Ok(probe) = UdpSocket::bind("[::1]:0") else {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    };
    drop(probe);
    let r = Responder::on("[::1]:0", OK200);
    let c = HealthConfig {
        bind: "[::1]:0".parse().unwrap(),
        ..cfg()
    };
    let rig = Rig::start(c, &[("cs-v6", r.addr)]);
    r.wait_answered(4);
    assert!(rig.events.snapshot().is_empty());
    r.assert_probes_well_formed();
    r.set(SILENT);
    rig.events.wait_for("cs-v6", &[Health::Down]);
    rig.stop_and_join();
}
