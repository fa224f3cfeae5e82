//! Slow-path threads: the pipeline's policy gate (SDP offers filtered,
//! answers checked, seed 5.2.3.7) off the io workers, fed by a bounded
//! crossbeam queue from them.
//!
//! Each job is a copy of one message that the fast path decided needs a
//! policy. A thread runs [`PolicyGate::apply_scanned`] on it (with the
//! current table snapshot) and sends the result through a duplicate of the
//! receiving worker's socket: the same kernel socket, so the source address
//! is the edge's, and a dup does not join the SO_REUSEPORT group. A result
//! for a stream client's connection (an answer to what came on it, a
//! response whose Via names its flow, a request for its flow) goes to the
//! connection's owner through the workers' mail instead.
//!
//! Invariants: the queue is bounded (the worker answers `503` when full);
//! every job ends in exactly one send or one counted outcome.

use super::streams::{mail_or_log, relayed_flow, stream_shard_of, via_for_stream_shard, Mailer};
use crate::pipeline::gate::{GateStats, PolicyGate};
use crate::pipeline::Outcome;
use crate::route::Tables;
use crate::sip::flow::TOKEN_LEN;
use crate::sip::scan::{scan, Message, Scanned};
use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
/// `[slow_path]`: the policy-gate threads and their queue.
pub struct SlowPathSettings {
    /// Threads filtering SDP (used only when a policy is configured).
    pub threads: usize,
    /// Bounded queue from the io workers; full = `503` + `Retry-After`.
    pub queue: usize,
}

impl Default for SlowPathSettings {
    fn default() -> Self {
        SlowPathSettings {
            threads: 1,
            queue: 4096,
        }
    }
}

/// One message for the slow path.
pub struct Job {
    pub data: Vec<u8>,
    pub src: SocketAddr,
    /// The flow token of the stream connection it came on (`None`: a
    /// datagram).
    pub flow: Option<[u8; TOKEN_LEN]>,
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
    pub stats: Arc<GateStats>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

struct Ctx {
    progress: Arc<Progress>,
    tables: Arc<ArcSwap<Tables>>,
    sockets: Vec<UdpSocket>,
    /// The way to stream clients' connections (`None`: the edge has none).
    mail: Option<Mailer>,
    gate: PolicyGate,
    max_out: usize,
}

impl SlowPath {
    /// `sockets[i]` is a duplicate of worker i's socket.
    pub fn start(
        (threads, queue): (usize, usize),
        tables: Arc<ArcSwap<Tables>>,
        (sockets, mail): (Vec<UdpSocket>, Option<Mailer>),
        max_out: usize,
        progress: Arc<Progress>,
    ) -> Result<SlowPath, String> {
        assert!(threads >= 1 && queue >= 1, "validated slow path sizes");
        let (tx, rx) = crossbeam_channel::bounded(queue);
        let gate = PolicyGate::default();
        let stats = Arc::clone(&gate.stats);
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = Arc::new(Ctx {
            progress,
            tables,
            sockets,
            mail,
            gate,
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
        ctx.gate.stats.jobs.fetch_add(1, Relaxed);
        let tables = ctx.tables.load();
        let m = scan(&job.data);
        let s = Scanned {
            flow: job.flow.as_ref().map(|t| &t[..]),
            ..Scanned::new(&job.data, &m, job.src)
        };
        let outcome = ctx.gate.apply_scanned(s, &tables, Instant::now(), &mut out);
        let Some((len, to)) = destination(&job, &m, &outcome, &tables) else {
            continue;
        };
        ctx.progress.wait_for(usize::from(job.worker), job.batch);
        send_result(ctx, &job, (&mut out, len), to);
    }
}

/// Where a gate result goes.
enum To {
    Datagram(SocketAddr),
    /// The stream connection this flow token names, through its owner's
    /// mail (`origin`: a request's sender, for the owner's `430`).
    Stream {
        token: [u8; TOKEN_LEN],
        origin: Option<SocketAddr>,
    },
    /// A shard that takes requests on a stream (index, address, TLS):
    /// through the receiving worker's own link to it.
    Shard((usize, SocketAddr, bool)),
}

/// The first `len` bytes of the result and where they go; `None`: nothing
/// to send (a counted drop).
fn destination(job: &Job, m: &Message, o: &Outcome, t: &Tables) -> Option<(usize, To)> {
    let stream = |token: &[u8], origin| {
        let token = token.try_into().ok()?;
        Some(To::Stream { token, origin })
    };
    let (len, to) = match *o {
        Outcome::Replied { len, dst, .. } => match &job.flow {
            Some(token) => (len, stream(token, None)?),
            None => (len, To::Datagram(dst)),
        },
        Outcome::Relayed { len, dst, .. } => match relayed_flow(m, &job.data) {
            Some(token) => (len, stream(token, None)?),
            None => (len, To::Datagram(dst)),
        },
        Outcome::OnFlow { len, token } => {
            let mut text = [0u8; TOKEN_LEN];
            (
                len,
                stream(token.token(&job.data, &mut text), Some(job.src))?,
            )
        }
        Outcome::Forwarded { len, dst, .. } => match stream_shard_of(o, t) {
            Some(shard) => (len, To::Shard(shard)),
            None => (len, To::Datagram(dst)),
        },
        Outcome::Dropped(_) | Outcome::NeedsPolicy(_) | Outcome::ToRegistrar => return None,
    };
    Some((len, to))
}

/// A result out: by datagram from the receiving worker's socket, or by
/// mail to a connection's owner; a failure is counted and logged.
fn send_result(ctx: &Ctx, job: &Job, (out, len): (&mut [u8], usize), to: To) {
    let bytes = &out[..len];
    let sent = match to {
        To::Datagram(dst) => {
            let sock = ctx
                .sockets
                .get(usize::from(job.worker))
                .or(ctx.sockets.first());
            match sock.map(|s| send_patiently(s, bytes, dst)) {
                Some(Ok(_)) => true,
                Some(Err(e)) => {
                    tracing::warn!(%dst, error = %e, "slow path send failed");
                    false
                }
                None => false,
            }
        }
        To::Stream { token, origin } => mail_or_log(
            ctx.mail.as_ref(),
            (&token, origin),
            bytes,
            "slow path result",
        ),
        To::Shard(shard) => {
            let len = via_for_stream_shard(out, len, shard.2);
            ctx.mail
                .as_ref()
                .is_some_and(|m| m.send_to_shard(job.worker, shard, &out[..len]))
        }
    };
    if !sent {
        ctx.gate.stats.send_errors.fetch_add(1, Relaxed);
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
