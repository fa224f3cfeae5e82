//! Slow-path threads: SDP offers filtered by policy, answers checked
//! against what the edge forwarded (seed 5.2.3.7), fed by a bounded
//! crossbeam queue from the io workers.
//!
//! Each job is a copy of one datagram that the fast path decided needs a
//! policy. A thread re-runs the same pure scan + decide on it (with the
//! current table snapshot), applies the policy, writes the result with the
//! same rewrite as the fast path, and sends it through a duplicate of the
//! receiving worker's socket: the same kernel socket, so the source address
//! is the edge's, and a dup does not join the SO_REUSEPORT group.
//!
//! Answer checks need the offer the edge forwarded: it is remembered per
//! forwarded request under our Via branch (which the answer carries back in
//! its top Via) in a bounded store: at most `OFFER_CAP` entries, each for at
//! most `OFFER_TTL` (INVITE transaction lifetime, RFC 3261 Timer B/F: 32 s;
//! doubled for 18x/2xx retransmissions).
//!
//! Invariants: the queue is bounded (the worker answers `503` when full);
//! every job ends in exactly one send or one counted outcome.

use super::media::{self, MediaPolicy};
use super::sdp::{self, MediaType};
use super::OnViolation;
use crate::route::{self, decide, Decision, Outcome, Tables};
use crate::sip::branch::{self, BRANCH_LEN};
use crate::sip::rewrite::forward_response_replaced;
use crate::sip::scan::{scan, Message};
use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const OFFER_CAP: usize = 200_000;
pub const OFFER_TTL: Duration = Duration::from_secs(64);

/// One datagram for the slow path.
pub struct Job {
    pub data: Vec<u8>,
    pub src: SocketAddr,
    /// Index of the worker (and socket) that received it.
    pub worker: u16,
    /// The worker's batch it arrived in: its result is sent only after the
    /// worker submitted that batch's outputs, so it cannot overtake a message
    /// received before it (a 180 forwarded by the worker, then the 200 with
    /// SDP that went through the slow path).
    pub batch: u64,
}

/// How far each worker has got: batches whose outputs are submitted.
#[derive(Default)]
pub struct Progress(Vec<AtomicU64>);

impl Progress {
    pub fn new(workers: usize) -> Progress {
        Progress((0..workers).map(|_| AtomicU64::new(0)).collect())
    }
    /// Called by worker `w` after it submitted the sends of batch `n`.
    pub fn done(&self, w: usize, n: u64) {
        if let Some(c) = self.0.get(w) {
            c.store(n + 1, std::sync::atomic::Ordering::Release);
        }
    }
    /// Wait (bounded) until worker `w` has submitted batch `n`.
    fn wait_for(&self, w: usize, n: u64) {
        let Some(c) = self.0.get(w) else { return };
        let deadline = Instant::now() + PROGRESS_WAIT;
        while c.load(std::sync::atomic::Ordering::Acquire) <= n && Instant::now() < deadline {
            std::thread::yield_now();
        }
    }
}

/// Longest a result waits for its worker's batch (a worker blocked in a
/// send must not stall the slow path).
const PROGRESS_WAIT: Duration = Duration::from_millis(2);

/// Slow-path counters (shared by its threads; never touched by the workers).
#[derive(Default, Debug)]
pub struct SlowStats {
    pub jobs: AtomicU64,
    pub offers_passed: AtomicU64,
    pub offers_filtered: AtomicU64,
    pub offers_rejected_488: AtomicU64,
    pub sdp_malformed_400: AtomicU64,
    pub answers_checked: AtomicU64,
    pub answers_unmatched: AtomicU64,
    pub answer_violations: AtomicU64,
    pub answers_replaced_500: AtomicU64,
    pub send_errors: AtomicU64,
}

impl SlowStats {
    pub fn rows(&self) -> [(&'static str, u64); 10] {
        [
            ("jobs", self.jobs.load(Relaxed)),
            ("offers_passed", self.offers_passed.load(Relaxed)),
            ("offers_filtered", self.offers_filtered.load(Relaxed)),
            (
                "offers_rejected_488",
                self.offers_rejected_488.load(Relaxed),
            ),
            ("sdp_malformed_400", self.sdp_malformed_400.load(Relaxed)),
            ("answers_checked", self.answers_checked.load(Relaxed)),
            ("answers_unmatched", self.answers_unmatched.load(Relaxed)),
            ("answer_violations", self.answer_violations.load(Relaxed)),
            (
                "answers_replaced_500",
                self.answers_replaced_500.load(Relaxed),
            ),
            ("send_errors", self.send_errors.load(Relaxed)),
        ]
    }
}

/// What the edge offered on one forwarded request.
struct Offered {
    nonzero: Vec<bool>,
    types: Vec<MediaType>,
}

/// Bounded offer memory: FIFO eviction by count and age.
struct Offers {
    map: HashMap<[u8; BRANCH_LEN], Offered>,
    order: VecDeque<([u8; BRANCH_LEN], Instant)>,
}

impl Offers {
    fn insert(&mut self, key: [u8; BRANCH_LEN], o: Offered) {
        let now = Instant::now();
        while let Some((k, at)) = self.order.front() {
            if self.order.len() < OFFER_CAP && now.duration_since(*at) < OFFER_TTL {
                break;
            }
            self.map.remove(k);
            self.order.pop_front();
        }
        if self.map.insert(key, o).is_none() {
            self.order.push_back((key, now));
        }
    }
}

/// The queue handle the io workers hold.
#[derive(Clone)]
pub struct SlowQueue {
    tx: Sender<Job>,
}

impl SlowQueue {
    /// Hand a datagram over; `Err` when the queue is full (the worker answers 503).
    pub fn try_send(&self, job: Job) -> Result<(), Job> {
        self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(j) | TrySendError::Disconnected(j) => j,
        })
    }
    pub fn depth(&self) -> usize {
        self.tx.len()
    }
    pub fn capacity(&self) -> usize {
        self.tx.capacity().unwrap_or(0)
    }
}

pub struct SlowPath {
    pub queue: SlowQueue,
    pub stats: Arc<SlowStats>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

struct Ctx {
    progress: Arc<Progress>,
    tables: Arc<ArcSwap<Tables>>,
    sockets: Vec<UdpSocket>,
    stats: Arc<SlowStats>,
    offers: Mutex<Offers>,
    max_out: usize,
}

impl SlowPath {
    /// `sockets[i]` is a duplicate of worker i's socket.
    pub fn start(
        threads: usize,
        queue: usize,
        tables: Arc<ArcSwap<Tables>>,
        sockets: Vec<UdpSocket>,
        max_out: usize,
        progress: Arc<Progress>,
    ) -> Result<SlowPath, String> {
        assert!(threads >= 1 && queue >= 1, "validated slow path sizes");
        let (tx, rx) = crossbeam_channel::bounded(queue);
        let stats = Arc::new(SlowStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = Arc::new(Ctx {
            progress,
            tables,
            sockets,
            stats: Arc::clone(&stats),
            offers: Mutex::new(Offers {
                map: HashMap::new(),
                order: VecDeque::new(),
            }),
            max_out,
        });
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let (rx, ctx, stop): (Receiver<Job>, _, _) =
                (rx.clone(), Arc::clone(&ctx), Arc::clone(&stop));
            let h = std::thread::Builder::new()
                .name(format!("edge-slow{i}"))
                .spawn(move || run(&rx, &ctx, &stop))
                .map_err(|e| format!("cannot spawn slow path thread: {e}"))?;
            handles.push(h);
        }
        Ok(SlowPath {
            queue: SlowQueue { tx },
            stats,
            stop,
            threads: handles,
        })
    }

    /// Finish the queued jobs, then stop the threads.
    pub fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for SlowPath {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn run(rx: &Receiver<Job>, ctx: &Ctx, stop: &AtomicBool) {
    let mut out = vec![0u8; ctx.max_out];
    loop {
        let job = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(j) => j,
            Err(_) if stop.load(Relaxed) && rx.is_empty() => return,
            Err(_) => continue,
        };
        ctx.stats.jobs.fetch_add(1, Relaxed);
        let tables = ctx.tables.load();
        let outcome = handle(&job.data, job.src, &tables, ctx, &mut out);
        if let Some((len, dst)) = outcome.send() {
            ctx.progress.wait_for(usize::from(job.worker), job.batch);
            let sock = ctx
                .sockets
                .get(usize::from(job.worker))
                .or(ctx.sockets.first());
            if let Some(Err(e)) = sock.map(|s| send_patiently(s, &out[..len], dst)) {
                ctx.stats.send_errors.fetch_add(1, Relaxed);
                tracing::warn!(%dst, error = %e, "slow path send failed");
            }
        }
    }
}

/// The dup shares the worker socket's non-blocking mode: a full send buffer
/// is waited out briefly (bounded: ~20 ms) rather than losing the message.
fn send_patiently(s: &UdpSocket, data: &[u8], dst: SocketAddr) -> std::io::Result<usize> {
    let mut tries = 0;
    loop {
        match s.send_to(data, dst) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && tries < 200 => {
                tries += 1;
                std::thread::sleep(Duration::from_micros(100));
            }
            // Larger than the path MTU: fragmented, as in the workers.
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) && dst.is_ipv4() => {
                return crate::io::socket::send_fragmentable(
                    std::os::fd::AsRawFd::as_raw_fd(s),
                    data,
                    dst,
                );
            }
            r => return r,
        }
    }
}

/// Policy on one datagram (pure apart from the offer store and counters).
fn handle(buf: &[u8], src: SocketAddr, t: &Tables, ctx: &Ctx, out: &mut [u8]) -> Outcome {
    let m = scan(buf);
    let d = decide(buf, &m, src, t);
    match d {
        Decision::Forward {
            kind, loop_hash, ..
        } if super::has_sdp(buf, &m) => {
            let Some(policy) = t.policy.effective(kind, buf, &m) else {
                return route::write(buf, &m, d, src, t, None, out);
            };
            offer(
                buf,
                &m,
                d,
                src,
                t,
                ctx,
                &policy,
                branch::branch(&t.branch_key, buf, &m, src, loop_hash),
                out,
            )
        }
        Decision::Relay { .. } if super::is_answer(buf, &m) => answer(buf, &m, d, src, t, ctx, out),
        _ => route::write(buf, &m, d, src, t, None, out),
    }
}

#[allow(clippy::too_many_arguments)]
fn offer(
    buf: &[u8],
    m: &Message,
    d: Decision,
    src: SocketAddr,
    t: &Tables,
    ctx: &Ctx,
    policy: &MediaPolicy,
    key: [u8; BRANCH_LEN],
    out: &mut [u8],
) -> Outcome {
    let dst = src;
    let body = m.body.get(buf);
    let parsed = match sdp::parse(body) {
        Ok(s) => s,
        Err(e) => {
            ctx.stats.sdp_malformed_400.fetch_add(1, Relaxed);
            let reason = format!("Bad Request - {}", e.0);
            return route::answer(buf, m, 400, &reason, &[], src, dst, out);
        }
    };
    let verdict = media::filter_offer(&parsed, policy);
    if verdict.kept() == 0 {
        ctx.stats.offers_rejected_488.fetch_add(1, Relaxed);
        let warning = format!(
            "Warning: 304 {} \"Media type not available\"\r\n",
            t.edge.hostport()
        );
        tracing::debug!(call_id = %String::from_utf8_lossy(m.call_id.get(buf)), reasons = ?verdict.reasons, "offer refused whole");
        return route::answer(
            buf,
            m,
            488,
            "Not Acceptable Here",
            &[warning.as_bytes()],
            src,
            dst,
            out,
        );
    }
    let offered = Offered {
        nonzero: parsed
            .media
            .iter()
            .zip(&verdict.refuse)
            .map(|(s, r)| s.port != 0 && !r)
            .collect(),
        types: parsed.media.iter().map(|s| s.media_type.clone()).collect(),
    };
    let result = if verdict.any_refused() {
        let mut filtered = Vec::with_capacity(body.len());
        sdp::refuse_streams(body, &parsed, &verdict.refuse, &mut filtered);
        ctx.stats.offers_filtered.fetch_add(1, Relaxed);
        route::write(buf, m, d, src, t, Some(&filtered), out)
    } else {
        ctx.stats.offers_passed.fetch_add(1, Relaxed);
        route::write(buf, m, d, src, t, None, out)
    };
    if matches!(result, Outcome::Forwarded { .. }) {
        ctx.offers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, offered);
    }
    result
}

fn answer(
    buf: &[u8],
    m: &Message,
    d: Decision,
    src: SocketAddr,
    t: &Tables,
    ctx: &Ctx,
    out: &mut [u8],
) -> Outcome {
    let key: Option<[u8; BRANCH_LEN]> = m
        .top_via
        .and_then(|v| v.branch)
        .and_then(|b| b.get(buf).try_into().ok());
    let verdict = {
        let offers = ctx.offers.lock().unwrap_or_else(|p| p.into_inner());
        key.and_then(|k| offers.map.get(&k))
            .map(|o| match sdp::parse(m.body.get(buf)) {
                Ok(ans) => media::check_answer(&o.nonzero, &o.types, &ans).map_err(|v| v.0),
                Err(e) => Err(format!("answer SDP unreadable: {}", e.0)),
            })
    };
    match verdict {
        None => {
            ctx.stats.answers_unmatched.fetch_add(1, Relaxed);
            route::write(buf, m, d, src, t, None, out)
        }
        Some(Ok(())) => {
            ctx.stats.answers_checked.fetch_add(1, Relaxed);
            route::write(buf, m, d, src, t, None, out)
        }
        Some(Err(why)) => {
            ctx.stats.answers_checked.fetch_add(1, Relaxed);
            ctx.stats.answer_violations.fetch_add(1, Relaxed);
            let call_id = String::from_utf8_lossy(m.call_id.get(buf)).into_owned();
            tracing::warn!(call_id, violation = %why, "answer accepts media the edge did not offer");
            match (t.policy.on_violation, d) {
                (OnViolation::Reject, Decision::Relay { dst }) => match forward_response_replaced(
                    buf,
                    m,
                    500,
                    "Answer Violates Media Policy",
                    out,
                ) {
                    Some(len) => {
                        ctx.stats.answers_replaced_500.fetch_add(1, Relaxed);
                        Outcome::Relayed {
                            len,
                            dst,
                            code: 500,
                        }
                    }
                    None => route::write(buf, m, d, src, t, None, out),
                },
                _ => route::write(buf, m, d, src, t, None, out),
            }
        }
    }
}
