//! Shard health checker: SIP `OPTIONS` keepalives to every Conversation
//! Server shard, turned into Up/Down transitions for the routing layer.
//!
//! What it owns:
//! - one UDP socket bound to [`HealthConfig::bind`] (plus, lazily, one of the
//!   other address family when a shard needs it), used only for probes and
//!   their answers, never for proxied traffic;
//! - the per-shard [`ShardHealth`] state machine and the one outstanding
//!   probe of each shard;
//! - one thread ([`spawn`]) that ticks, probes, matches and times out.
//!
//! Invariants:
//! - a shard starts [`Health::Up`] (traffic flows from start-up) and only
//!   changes state after `fail_threshold` consecutive failures or
//!   `ok_threshold` consecutive successes; each change is reported exactly
//!   once, in order, through `on_change` on the checker thread;
//! - at most one probe per shard is outstanding: the next one is sent only
//!   once the previous one was answered or timed out, so a dead shard costs
//!   one datagram per interval and memory stays bounded;
//! - an answer counts only if it is a SIP response, its Call-ID is the one
//!   of that shard's outstanding probe, it comes from that shard's address
//!   (IP and port) and it arrives within `timeout`; anything else read from
//!   the socket is dropped without effect;
//! - no input, socket error or ICMP error stops the thread; only `stop` does,
//!   observed within one tick (20 ms) plus the running callback;
//! - shards are keyed by (name, address) as returned by the `targets`
//!   closure on every tick: a new key starts Up, a vanished key is forgotten
//!   without a callback.

pub use crate::config::HealthSettings;
use crate::sip::scan::{scan, StartLine};
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, ErrorKind};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Health-check settings: the probing schedule and thresholds as
/// configured (`[health]`), and where the checker sends from.
#[derive(Clone, Debug)]
pub struct HealthConfig {
    pub probes: HealthSettings,
    /// Local address of the checker's own UDP socket (e.g. `127.0.0.1:0`).
    pub bind: SocketAddr,
    /// Host (optionally `:port`) for From/Contact/Call-ID, e.g. the edge's
    /// advertised address.
    pub from_host: String,
}

/// A shard's health as seen by the checker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Up,
    Down,
}

/// Pure per-shard state machine: starts Up, fed probe results, reports
/// transitions. No clock and no socket, so thresholds are unit-testable.
#[derive(Clone, Debug)]
pub struct ShardHealth {
    state: Health,
    /// Consecutive failures, reset by any success.
    fails: u32,
    /// Consecutive successes, reset by any failure.
    oks: u32,
}

impl Default for ShardHealth {
    fn default() -> Self {
        Self::new()
    }
}

impl ShardHealth {
    pub fn new() -> Self {
        ShardHealth {
            state: Health::Up,
            fails: 0,
            oks: 0,
        }
    }

    pub fn state(&self) -> Health {
        self.state
    }

    /// Feed one probe result; `Some(new_state)` exactly when the state
    /// changes. Further results in the same direction never re-report.
    pub fn on_result(&mut self, ok: bool, cfg: &HealthConfig) -> Option<Health> {
        if ok {
            self.fails = 0;
            self.oks = self.oks.saturating_add(1);
            if self.state == Health::Down && self.oks >= cfg.probes.ok_threshold.max(1) {
                self.state = Health::Up;
                return Some(Health::Up);
            }
        } else {
            self.oks = 0;
            self.fails = self.fails.saturating_add(1);
            if self.state == Health::Up && self.fails >= cfg.probes.fail_threshold.max(1) {
                self.state = Health::Down;
                return Some(Health::Down);
            }
        }
        None
    }
}

/// The shards to probe, re-read on every tick: `(shard name, address)`.
pub type Targets = Arc<dyn Fn() -> Vec<(String, SocketAddr)> + Send + Sync>;
/// Called on the checker thread on every transition; must not block long
/// (probing and timing out wait for it).
pub type OnChange = Arc<dyn Fn(&str, SocketAddr, Health) + Send + Sync>;

/// Cadence of the checker loop: targets are re-read, timeouts checked and
/// due probes sent this often, and `stop` is seen within this bound.
const TICK: Duration = Duration::from_millis(20);
/// Datagrams read per socket between two tick checks, so a flood of garbage
/// cannot delay timeouts or probes.
const MAX_DRAIN: usize = 64;
/// Largest UDP payload; a longer answer is truncated, which still leaves
/// its start line and Call-ID readable.
const RECV_BUF: usize = 65_535;
/// Stands in for "never" when `now + interval` would overflow `Instant`.
const FAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// Spawn the checker thread (named `cpm-health`). Binding `cfg.bind` fails
/// here, synchronously; nothing fails once the thread runs.
pub fn spawn(
    cfg: HealthConfig,
    targets: Targets,
    on_change: OnChange,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    let primary = UdpSocket::bind(cfg.bind)?;
    // Non-blocking: poll(2) waits on both families at once, reads drain.
    primary.set_nonblocking(true)?;
    let local = primary.local_addr()?;
    info!(local = %local, "shard health checker started");
    let (v4, v6) = if local.is_ipv4() {
        (Some(primary), None)
    } else {
        (None, Some(primary))
    };
    let mut checker = Checker {
        cfg,
        targets,
        on_change,
        v4,
        v6,
        family_failed: [false; 2],
        shards: Vec::new(),
        seq: 0,
        nonce: random_u64(),
        out: Vec::with_capacity(512),
    };
    std::thread::Builder::new()
        .name("cpm-health".into())
        .spawn(move || checker.run(&stop))
}

/// A random value per checker, so Call-IDs, branches and tags of two edges
/// (or two runs of one) never collide. `RandomState` is seeded by the OS.
fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    h.finish()
}

fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}

struct Probe {
    call_id: Vec<u8>,
    sent: Instant,
}

struct Shard {
    name: String,
    addr: SocketAddr,
    health: ShardHealth,
    next_due: Instant,
    outstanding: Option<Probe>,
    /// Source IP the kernel picks towards this shard, for the Via sent-by
    /// when the socket is bound to the unspecified address. Looked up once.
    src_ip: Option<IpAddr>,
}

impl Shard {
    fn new(name: String, addr: SocketAddr, now: Instant) -> Shard {
        Shard {
            name,
            addr,
            health: ShardHealth::new(),
            // Probe a new shard on the first tick it is seen.
            next_due: now,
            outstanding: None,
            src_ip: None,
        }
    }
}

struct Checker {
    cfg: HealthConfig,
    targets: Targets,
    on_change: OnChange,
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
    /// Creating the socket of that family failed (index 0 = v4, 1 = v6):
    /// logged once, not retried on every probe.
    family_failed: [bool; 2],
    shards: Vec<Shard>,
    seq: u64,
    nonce: u64,
    out: Vec<u8>,
}

/// Same transport address: canonical IP (v4-mapped v6 is v4) and port. The
/// IPv6 flow label and scope id are not compared: the kernel fills them in
/// on receive whatever the configured target says.
fn same_addr(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

/// `host:port` as a SIP URI host part: IPv6 in brackets, scope id dropped
/// (a `%` is not allowed there).
fn hostport(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

impl Checker {
    fn run(&mut self, stop: &AtomicBool) {
        let mut buf = vec![0u8; RECV_BUF];
        let mut next_tick = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next_tick {
                self.tick(now);
                next_tick = later(now, TICK);
            }
            self.wait_readable(next_tick.saturating_duration_since(Instant::now()));
            self.drain(&mut buf);
        }
        info!("shard health checker stopped");
    }

    /// Block until a socket is readable or `max` elapsed (at least 1 ms so a
    /// late tick never turns this into a busy loop).
    fn wait_readable(&self, max: Duration) {
        let mut fds: [libc::pollfd; 2] = [libc::pollfd {
            fd: -1,
            events: libc::POLLIN,
            revents: 0,
        }; 2];
        let mut n = 0;
        for s in [&self.v4, &self.v6].into_iter().flatten() {
            fds[n].fd = s.as_raw_fd();
            n += 1;
        }
        let ms = max.as_millis().clamp(1, TICK.as_millis()) as libc::c_int;
        // SAFETY: `fds` is a valid array of `n` initialised pollfd entries
        // that lives across the call; the fds are owned by `self`.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), n as libc::nfds_t, ms) };
        if rc < 0 {
            // EINTR and friends: the loop just comes round again.
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn drain(&mut self, buf: &mut [u8]) {
        for fam in 0..2 {
            for _ in 0..MAX_DRAIN {
                let sock = if fam == 0 { &self.v4 } else { &self.v6 };
                let Some(sock) = sock else { break };
                match sock.recv_from(buf) {
                    Ok((n, from)) => {
                        let now = Instant::now();
                        self.on_datagram(&buf[..n.min(buf.len())], from, now);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    // An ICMP port unreachable surfaced on the unconnected
                    // socket: it does not say which shard, so the timeout
                    // of that shard's probe counts the failure.
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => continue,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        debug!(error = %e, "health socket receive error");
                        break;
                    }
                }
            }
        }
    }

    /// Match one datagram against the outstanding probes.
    fn on_datagram(&mut self, data: &[u8], from: SocketAddr, now: Instant) {
        let msg = scan(data);
        // Any status code proves the CS alive (a 404/405/503 comes from a
        // running SIP stack); code 0 is the scanner's "no valid start line".
        let StartLine::Response { code } = msg.start else {
            return;
        };
        if code < 100 {
            return;
        }
        let call_id = msg.call_id.get(data);
        if call_id.is_empty() {
            return;
        }
        let timeout = self.cfg.probes.timeout;
        let Some(i) = self.shards.iter().position(|s| {
            same_addr(s.addr, from) && s.outstanding.as_ref().is_some_and(|p| p.call_id == call_id)
        }) else {
            return;
        };
        let shard = &mut self.shards[i];
        let Some(probe) = shard.outstanding.take() else {
            return;
        };
        // Read after its deadline but before the tick noticed: late is late,
        // the failure is counted right here instead of at the next tick.
        let ok = now.saturating_duration_since(probe.sent) <= timeout;
        debug!(shard = %shard.name, code, ok, "health probe answered");
        self.record(i, ok);
    }

    /// Feed a result to shard `i`'s state machine and report a transition.
    fn record(&mut self, i: usize, ok: bool) {
        let shard = &mut self.shards[i];
        let Some(new) = shard.health.on_result(ok, &self.cfg) else {
            return;
        };
        match new {
            Health::Down => warn!(
                shard = %shard.name,
                addr = %shard.addr,
                failures = self.cfg.probes.fail_threshold.max(1),
                "CS shard Down: OPTIONS probes unanswered"
            ),
            Health::Up => info!(
                shard = %shard.name,
                addr = %shard.addr,
                successes = self.cfg.probes.ok_threshold.max(1),
                "CS shard Up: OPTIONS probes answered again"
            ),
        }
        let (name, addr) = (shard.name.clone(), shard.addr);
        (self.on_change)(&name, addr, new);
    }

    fn tick(&mut self, now: Instant) {
        self.refresh_targets(now);
        for i in 0..self.shards.len() {
            let timed_out = self.shards[i]
                .outstanding
                .as_ref()
                .is_some_and(|p| now.saturating_duration_since(p.sent) >= self.cfg.probes.timeout);
            if timed_out {
                self.shards[i].outstanding = None;
                debug!(shard = %self.shards[i].name, "health probe timed out");
                self.record(i, false);
            }
        }
        for i in 0..self.shards.len() {
            let s = &self.shards[i];
            if s.outstanding.is_none() && now >= s.next_due {
                self.probe(i, now);
                let s = &mut self.shards[i];
                // Keep the cadence; after a stall, restart it from now
                // rather than firing a burst of catch-up probes.
                let next = later(s.next_due, self.cfg.probes.interval);
                s.next_due = if next > now {
                    next
                } else {
                    later(now, self.cfg.probes.interval)
                };
            }
        }
    }

    /// Re-read the targets: keep the state of shards still listed, start
    /// new ones Up, forget removed ones.
    fn refresh_targets(&mut self, now: Instant) {
        let list = (self.targets)();
        // Fast path, the usual case: the same list in the same order.
        if list.len() == self.shards.len()
            && list
                .iter()
                .zip(&self.shards)
                .all(|((n, a), s)| *n == s.name && *a == s.addr)
        {
            return;
        }
        let mut old: HashMap<(String, SocketAddr), Shard> = self
            .shards
            .drain(..)
            .map(|s| ((s.name.clone(), s.addr), s))
            .collect();
        let mut seen = std::collections::HashSet::new();
        for (name, addr) in list {
            if !seen.insert((name.clone(), addr)) {
                continue; // listed twice: probed once
            }
            let shard = match old.remove(&(name.clone(), addr)) {
                Some(s) => s,
                None => {
                    info!(shard = %name, addr = %addr, "health checking new CS shard");
                    Shard::new(name, addr, now)
                }
            };
            self.shards.push(shard);
        }
        for ((name, addr), _) in old {
            info!(shard = %name, addr = %addr, "CS shard no longer health checked");
        }
    }

    /// The socket for `addr`'s family, created on first need for the family
    /// `cfg.bind` is not of.
    fn socket_for(&mut self, addr: SocketAddr) -> Option<&UdpSocket> {
        let (slot, fam) = if addr.is_ipv4() {
            (&mut self.v4, 0)
        } else {
            (&mut self.v6, 1)
        };
        if slot.is_none() && !self.family_failed[fam] {
            // Loopback stays loopback; anything else listens on the
            // unspecified address of the other family, port chosen by the OS.
            let loopback = self.cfg.bind.ip().is_loopback();
            let ip: IpAddr = match (fam, loopback) {
                (0, true) => Ipv4Addr::LOCALHOST.into(),
                (0, false) => Ipv4Addr::UNSPECIFIED.into(),
                (_, true) => Ipv6Addr::LOCALHOST.into(),
                (_, false) => Ipv6Addr::UNSPECIFIED.into(),
            };
            match UdpSocket::bind((ip, 0)).and_then(|s| s.set_nonblocking(true).map(|()| s)) {
                Ok(s) => {
                    info!(local = ?s.local_addr().ok(), "health checker socket for second address family");
                    *slot = Some(s);
                }
                Err(e) => {
                    warn!(error = %e, bind = %ip, "cannot open health socket for this address family; its shards will go Down");
                    self.family_failed[fam] = true;
                }
            }
        }
        slot.as_ref()
    }

    /// Send one OPTIONS to shard `i` and make it the outstanding probe.
    /// A probe that could not be sent is still outstanding: its timeout
    /// counts the failure, so every path to a failure is the same.
    fn probe(&mut self, i: usize, now: Instant) {
        self.seq = self.seq.wrapping_add(1);
        // CSeq must stay below 2^31 (RFC 3261 §8.1.1.5); the Call-ID also
        // carries the checker nonce, and a wrapped CSeq recurs only ~2^31
        // probes later, long after the old probe timed out.
        let cseq = (self.seq % 0x7fff_fffe) + 1;
        let addr = self.shards[i].addr;
        let nonce = self.nonce;
        let Some(local) = self.socket_for(addr).and_then(|s| s.local_addr().ok()) else {
            // No socket for this family: an empty Call-ID never matches an
            // answer, so the probe times out and counts as a failure.
            self.shards[i].outstanding = Some(Probe {
                call_id: Vec::new(),
                sent: now,
            });
            return;
        };
        let via_ip = if local.ip().is_unspecified() {
            *self.shards[i]
                .src_ip
                .get_or_insert_with(|| route_source(local.ip(), addr))
        } else {
            local.ip()
        };
        let via = hostport(via_ip, local.port());
        let target = hostport(addr.ip(), addr.port());
        let from_host = if self.cfg.from_host.is_empty() {
            via.clone()
        } else {
            self.cfg.from_host.clone()
        };
        let call_id = format!("hc-{cseq}-{nonce:x}@{from_host}");
        self.shards[i].outstanding = Some(Probe {
            call_id: call_id.clone().into_bytes(),
            sent: now,
        });
        self.out.clear();
        use std::io::Write;
        // Writing into a Vec cannot fail.
        let _ = write!(
            self.out,
            "OPTIONS sip:{target} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {via};branch=z9hG4bKhc{nonce:x}-{cseq};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:cpm-edge@{from_host}>;tag=hc{nonce:x}\r\n\
             To: <sip:{target}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} OPTIONS\r\n\
             Contact: <sip:cpm-edge@{from_host}>\r\n\
             Accept: application/sdp\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let Some(sock) = (if addr.is_ipv4() { &self.v4 } else { &self.v6 }) else {
            return;
        };
        let mut res = sock.send_to(&self.out, addr);
        if matches!(&res, Err(e) if e.kind() == ErrorKind::ConnectionRefused) {
            // A pending ICMP error of some earlier datagram (possibly to
            // another shard) was reported on this send; it is consumed now.
            res = sock.send_to(&self.out, addr);
        }
        if let Err(e) = res {
            debug!(shard = %self.shards[i].name, addr = %addr, error = %e, "health probe send failed");
        }
    }
}

/// The source IP the kernel would use towards `to` (a connected UDP socket
/// sends nothing); the unspecified `fallback` if the lookup fails.
fn route_source(fallback: IpAddr, to: SocketAddr) -> IpAddr {
    let any: IpAddr = if to.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    UdpSocket::bind((any, 0))
        .and_then(|s| {
            s.connect(to)?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(fallback)
}
