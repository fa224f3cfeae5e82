//! The process wiring of the hot path: one pinned thread per worker, each
//! with its own SO_REUSEPORT socket, running the io loop with an
//! [`EdgeHandler`] that runs the pipeline ([`pipeline::run`]) with the
//! worker's admission state and counts every outcome.
//!
//! Tables are read through an `ArcSwap` cache: a worker's read is a pointer
//! load, a writer publishes a whole new snapshot (never a mix).

use super::streams::{relayed_flow, stream_shard_of};
use crate::dataplane::limits::{
    cidr_contains, socket_fill, LimitSettings, Overload, ReplyBudget, ReplyLimit, SourceLimiter,
};
use crate::dataplane::registrar::{self, RegQueue, RegistrarConfig, RegistrarThread};
use crate::dataplane::slow::{Job, Progress, SlowPath, SlowQueue};
use crate::dataplane::stats::{new_histogram, WorkerStats};
use crate::dataplane::streams::{
    StreamSide, StreamSockets, StreamStats, TcpConf, TlsCerts, TlsConf,
};
use crate::io::stream::{CloseReason, ConnId, Refused, StreamHandler, Streams};
use crate::io::{self, DatagramHandler, IoBackend, IoChoice, IoConfig};
use crate::pipeline::{self, Datagram, Outcome, Refusal};
use crate::route::{DropReason, Tables};
use crate::sip::flow::TOKEN_LEN;
use crate::sip::reply;
use crate::sip::scan::{Message, StartLine};
use arc_swap::{ArcSwap, Cache};
use hdrhistogram::Histogram;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a worker needs to admit traffic (limits, allow-list, overload).
#[derive(Clone, Debug, Default)]
pub struct Admission {
    pub limits: Option<LimitSettings>,
    pub allow: Vec<(std::net::IpAddr, u8)>,
    pub shed_at_queue_pct: u32,
    /// The budget of refusal answers (rate-limit and shed 503s).
    pub replies: ReplyLimit,
    /// The worker's socket (for SO_MEMINFO samples).
    pub sock_fd: Option<std::os::fd::RawFd>,
    /// The running settings, swapped whole on reload; a worker looks once
    /// per batch and rebuilds its admission state when they changed.
    pub live: Option<LiveAdmission>,
}

/// Where the control plane publishes new admission settings.
pub type LiveAdmission = Arc<ArcSwap<Admission>>;

/// The data plane's settings bound at start (a reload cannot change them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub workers: Workers,
    pub slow_path: super::slow::SlowPathSettings,
    /// SIP over TCP on `listen` too.
    pub tcp: TcpConf,
    /// SIP over TLS on `listen`'s IP at its own port.
    pub tls: TlsConf,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
/// `[workers]`: the io workers, as configured and as run (validation
/// resolves `count = 0` to the CPUs available).
pub struct Workers {
    /// Number of io workers; 0 = one per available CPU.
    pub count: usize,
    /// CPUs to pin workers to, in order (wrapping); empty = no pinning.
    pub cpus: Vec<usize>,
    pub io: IoChoice,
    /// Datagrams per receive/send batch.
    pub batch: usize,
    /// Receive buffers per worker (io_uring provided-buffer ring entries).
    pub recv_buffers: usize,
    /// Largest datagram accepted; larger ones are dropped and counted.
    pub max_datagram: usize,
    pub socket_rcvbuf: usize,
    pub socket_sndbuf: usize,
}

impl Default for Workers {
    fn default() -> Self {
        Workers {
            count: 0,
            cpus: Vec::new(),
            io: IoChoice::Auto,
            batch: 64,
            recv_buffers: 1024,
            max_datagram: 16384,
            socket_rcvbuf: 8 << 20,
            socket_sndbuf: 8 << 20,
        }
    }
}

/// One worker's admission state, as the pipeline asks it
/// ([`pipeline::Admission`]): per-source limits, the answer budget,
/// overload, and the hand-over to the slow path.
struct WorkerAdmission {
    stats: Arc<WorkerStats>,
    slow: Option<SlowQueue>,
    /// The registrar thread's queue (None: the edge is no registrar).
    registrar: Option<RegQueue>,
    /// Per-source token buckets (None: no limit configured).
    limiter: Option<SourceLimiter>,
    limit_reply: bool,
    /// Refusal answers left (rate-limit and shed 503s), on `now_ms`.
    replies: ReplyBudget,
    shed_reply: bool,
    allow: Vec<(std::net::IpAddr, u8)>,
    overload: Overload,
    now_ms: u64,
    worker: u16,
    /// The batch being handled (a slow-path result waits for its sends).
    batch: u64,
}

impl pipeline::Admission for WorkerAdmission {
    fn over_rate(&mut self, src: SocketAddr, t: &Tables) -> bool {
        let Some(l) = self.limiter.as_mut() else {
            return false;
        };
        let exempt = t.shards.by_addr(src).is_some()
            || self
                .allow
                .iter()
                .any(|(n, len)| cidr_contains(*n, *len, src.ip()));
        let over = !exempt && !l.admit(src.ip(), self.now_ms);
        if over {
            self.stats.rate_limited();
        }
        over
    }

    fn overloaded(&self) -> bool {
        self.overload.overloaded()
    }

    fn answer_token(&mut self, why: Refusal) -> bool {
        let allowed = match why {
            Refusal::OverRate => self.limit_reply,
            Refusal::Shed => self.shed_reply,
        };
        allowed && self.replies.take(self.now_ms)
    }

    fn refund(&mut self) {
        self.replies.refund();
    }

    fn hand_over(&mut self, d: &Datagram<'_>) -> bool {
        let Some(q) = self.slow.as_ref() else {
            return false;
        };
        let job = Job {
            data: d.buf.to_vec(),
            src: d.src,
            flow: d.flow.and_then(|t| t.try_into().ok()),
            worker: self.worker,
            batch: self.batch,
        };
        let queued = q.try_send(job).is_ok();
        if !queued {
            self.stats.slow_full();
        }
        queued
    }

    fn hand_to_registrar(
        &mut self,
        _d: &Datagram<'_>,
        s: crate::sip::scan::Scanned<'_>,
        out: &mut [u8],
    ) -> pipeline::Handoff {
        match self.registrar.as_ref() {
            Some(q) => q.take(s, out),
            None => pipeline::Handoff::Full,
        }
    }
}

/// The handler one worker runs: the pipeline, then counting.
pub struct EdgeHandler {
    tables: Cache<Arc<ArcSwap<Tables>>, Arc<Tables>>,
    stats: Arc<WorkerStats>,
    adm: WorkerAdmission,
    progress: Arc<Progress>,
    /// The published admission settings and the ones applied now.
    live: Option<Cache<LiveAdmission, Arc<Admission>>>,
    applied: Option<Arc<Admission>>,
    /// The worker's socket, sampled for its receive-queue fill.
    sock_fd: Option<std::os::fd::RawFd>,
    batches: u64,
    started: Instant,
    worker: usize,
    batch_start: Instant,
    batch_n: u64,
    local: Histogram<u64>,
    last_fold: Instant,
    /// Rate limit of drop/error logs: one line per reason per second.
    last_log: [Option<Instant>; DropReason::ALL.len() + 1],
    /// The current datagram's scan, filled in place rather than moved out
    /// of the pipeline per datagram.
    msg: Message,
    /// The worker's TCP side (`[tcp] enabled`), and the output buffer of
    /// what a stream's message becomes.
    streams: Option<StreamSide>,
    stream_out: Vec<u8>,
}

impl EdgeHandler {
    pub fn new(
        tables: Arc<ArcSwap<Tables>>,
        stats: Arc<WorkerStats>,
        worker: usize,
        slow: Option<SlowQueue>,
        progress: Arc<Progress>,
        admission: &Admission,
    ) -> EdgeHandler {
        let now = Instant::now();
        let mut h = EdgeHandler {
            tables: Cache::new(tables),
            adm: WorkerAdmission {
                stats: Arc::clone(&stats),
                slow,
                registrar: None,
                // Placeholders: `apply_admission` below builds them all.
                limiter: None,
                limit_reply: false,
                replies: ReplyBudget::new(admission.replies.rate, admission.replies.burst),
                shed_reply: admission.replies.shed,
                allow: Vec::new(),
                overload: Overload::new(0),
                now_ms: 0,
                worker: worker as u16,
                batch: 0,
            },
            stats,
            progress,
            live: admission.live.clone().map(Cache::new),
            applied: None,
            sock_fd: admission.sock_fd,
            batches: 0,
            started: now,
            worker,
            batch_start: now,
            batch_n: 0,
            local: new_histogram(),
            last_fold: now,
            last_log: [None; DropReason::ALL.len() + 1],
            msg: Message::default(),
            streams: None,
            stream_out: Vec::new(),
        };
        h.apply_admission(Arc::new(admission.clone()));
        h
    }

    /// Serve SIP over TCP too, with `side`; `out_size` bounds what one
    /// message becomes.
    pub fn set_streams(&mut self, side: StreamSide, out_size: usize) {
        self.streams = Some(side);
        self.stream_out = vec![0; out_size];
    }

    /// Hand REGISTERs for served domains (and the answers to the edge's
    /// own requests) to this registrar queue.
    pub fn set_registrar(&mut self, q: Option<RegQueue>) {
        self.adm.registrar = q;
    }

    /// Take `a`'s limits, allow-list and shedding threshold; the bucket
    /// table is rebuilt only when the limit settings changed.
    fn apply_admission(&mut self, a: Arc<Admission>) {
        let cur = self.applied.as_deref();
        let adm = &mut self.adm;
        if cur.is_none_or(|c| c.limits != a.limits) {
            adm.limiter = a
                .limits
                .as_ref()
                .map(|l| SourceLimiter::new(l.rate, l.burst, l.new_burst, l.slots));
            adm.limit_reply = a.limits.as_ref().is_some_and(|l| l.reply);
        }
        if cur.is_none_or(|c| c.replies != a.replies) {
            adm.replies = ReplyBudget::new(a.replies.rate, a.replies.burst);
            adm.shed_reply = a.replies.shed;
        }
        adm.allow = a.allow.clone();
        if cur.is_none_or(|c| c.shed_at_queue_pct != a.shed_at_queue_pct) {
            adm.overload = Overload::new(a.shed_at_queue_pct);
        }
        self.applied = Some(a);
    }

    /// Once per batch: follow a reload of the admission settings.
    fn follow_admission(&mut self) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let cur = Arc::clone(live.load());
        if self.applied.as_ref().is_some_and(|a| Arc::ptr_eq(a, &cur)) {
            return;
        }
        self.apply_admission(cur);
    }

    fn log_limited(&mut self, slot: usize, msg: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        if self.last_log[slot].is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            self.last_log[slot] = Some(now);
            tracing::warn!(worker = self.worker, "{msg}");
        }
    }

    /// Count what arrived (a truncated datagram as a drop, not as what its
    /// start says) and what became of it: the one place outcomes are
    /// counted.
    fn count(&mut self, d: &Datagram<'_>, outcome: &Outcome) {
        if let Some(r) = count_into(&self.stats, &self.msg, d.truncated, outcome) {
            self.log_limited(
                r as usize,
                format_args!(
                    "dropped datagram from {}: {} ({} bytes)",
                    d.src,
                    r.name(),
                    d.buf.len()
                ),
            );
        }
    }

    /// A whole message from a TCP connection: the pipeline, with the
    /// connection's flow token in the Via it adds; a request to a shard
    /// (or a response toward one) leaves by UDP, an answer on the
    /// connection.
    fn on_stream_message(
        &mut self,
        msg: &[u8],
        peer: SocketAddr,
        token: &[u8; TOKEN_LEN],
        id: ConnId,
        streams: &mut Streams,
    ) {
        let d = Datagram {
            buf: msg,
            truncated: false,
            src: peer,
            flow: Some(token),
        };
        let tables = self.tables.load();
        let o = pipeline::run(
            &d,
            tables,
            &mut self.adm,
            &mut self.stream_out,
            &mut self.msg,
        );
        let _ = count_into(&self.stats, &self.msg, false, &o);
        let on_stream = stream_shard_of(&o, tables);
        match o {
            Outcome::Forwarded { len, .. } if on_stream.is_some() => {
                let mut out = std::mem::take(&mut self.stream_out);
                self.forward_to_stream_shard(on_stream, (&mut out, len), Some(streams));
                self.stream_out = out;
            }
            Outcome::Relayed { len, .. } if self.stream_relay(msg, len, streams) => {}
            Outcome::Forwarded { len, dst, .. } | Outcome::Relayed { len, dst, .. } => {
                let sent = self
                    .streams
                    .as_ref()
                    .is_some_and(|side| side.send_udp(&self.stream_out[..len], dst));
                if !sent {
                    self.stats.send_error();
                }
            }
            Outcome::Replied { len, .. } => {
                streams.send(id, &self.stream_out[..len]);
            }
            // A shard's request on its own connection (RFC 5923 alias; a
            // client's never is: the decision keeps no token from one).
            Outcome::OnFlow { len, token } => {
                let mut text = [0u8; TOKEN_LEN];
                self.stream_on_flow(msg, token.token(msg, &mut text), len, id, streams)
            }
            Outcome::Dropped(_) | Outcome::NeedsPolicy(_) | Outcome::ToRegistrar => {}
        }
    }

    /// A request from a stream (a shard's, in `stream_out[..len]`) for the
    /// flow `token` names; `430 Flow Failed` back on the stream when this
    /// worker's connection is gone. (Mailed to the owner, a closed flow is
    /// counted only: the owner could not reach this connection.)
    fn stream_on_flow(
        &mut self,
        msg: &[u8],
        token: &[u8],
        len: usize,
        id: ConnId,
        streams: &mut Streams,
    ) {
        let delivered = match self.streams.as_mut() {
            Some(side) => side.deliver(token, &mut self.stream_out[..len], None, streams),
            None => false,
        };
        if delivered {
            return;
        }
        let Some(peer) = streams.peer(id) else { return };
        let s = pipeline::Scanned::new(msg, &self.msg, peer);
        if let Outcome::Replied { len, .. } =
            pipeline::answer(s, 430, reply::FLOW_FAILED, &[], &mut self.stream_out)
        {
            streams.send(id, &self.stream_out[..len]);
        }
    }

    /// A request for a stream shard (the first `len` bytes of `out`): our
    /// Via says the stream's transport, and over TLS `;alias`, so that the
    /// shard may send its requests back on the connection (RFC 5923; over
    /// TCP it proves nothing, so none). It goes on this worker's
    /// connection to the shard. `streams`: the worker's connections when
    /// the caller has them (a stream's message), else the reactor's.
    fn forward_to_stream_shard(
        &mut self,
        shard: Option<(usize, SocketAddr, bool)>,
        (out, len): (&mut [u8], usize),
        streams: Option<&mut Streams>,
    ) {
        let Some(shard) = shard else { return };
        let len = super::streams::via_for_stream_shard(out, len, shard.2);
        let out = &out[..len];
        let Some(side) = self.streams.as_mut() else {
            return self.stats.send_error();
        };
        let now = Instant::now();
        let sent = match streams {
            Some(st) => side.send_to_shard(shard, out, now, st),
            None => {
                let mut reactor = side.reactor.take();
                let sent = reactor
                    .as_mut()
                    .is_some_and(|r| side.send_to_shard(shard, out, now, r.streams()));
                side.reactor = reactor;
                sent
            }
        };
        if !sent {
            self.stats.send_error();
        }
    }

    /// A response framed from a stream whose Via (ours, popped) names a
    /// stream client's flow: on that connection. `false`: not a stream
    /// client's (it goes by UDP).
    fn stream_relay(&mut self, msg: &[u8], len: usize, streams: &mut Streams) -> bool {
        let Some(token) = relayed_flow(&self.msg, msg) else {
            return false;
        };
        let Some(side) = self.streams.as_mut() else {
            return false;
        };
        side.deliver(token, &mut self.stream_out[..len], None, streams);
        true
    }

    /// A relayed response whose Via (ours, popped) names a TCP flow: it
    /// goes on that connection, not by UDP. `false`: not a stream's.
    fn relay_to_stream(&mut self, data: &[u8], out: &mut [u8]) -> bool {
        let Some(side) = self.streams.as_mut() else {
            return false;
        };
        let Some(token) = relayed_flow(&self.msg, data) else {
            return false;
        };
        let mut reactor = side.reactor.take();
        if let Some(r) = reactor.as_mut() {
            side.deliver(token, out, None, r.streams());
        }
        side.reactor = reactor;
        true
    }

    /// A request for a stream client's connection (the flow token of our
    /// Record-Route entry), on it or through its owner's mail. `false`: no
    /// such flow here (forged, another edge's, or closed on this worker);
    /// a mailed one's fate is the owner's to count.
    fn send_on_flow(
        &mut self,
        (input, name): (&[u8], pipeline::FlowName),
        out: &mut [u8],
        origin: SocketAddr,
    ) -> bool {
        let mut text = [0u8; TOKEN_LEN];
        let token = name.token(input, &mut text);
        let delivered = match self.streams.as_mut() {
            Some(side) => {
                let mut reactor = side.reactor.take();
                let sent = reactor
                    .as_mut()
                    .is_some_and(|r| side.deliver(token, out, Some(origin), r.streams()));
                side.reactor = reactor;
                sent
            }
            None => false,
        };
        delivered
    }

    /// `430 Flow Failed` (RFC 5626 §5.3) to `origin` for a request another
    /// worker forwarded (`forwarded`: with our Via on top) to a connection
    /// of this worker's that has closed since; the same answer the sender
    /// gives when the connection is its own.
    fn answer_flow_failed(&mut self, forwarded: &[u8], origin: SocketAddr) {
        let Some(req) = crate::sip::rewrite::without_edge_via(forwarded) else {
            return;
        };
        crate::sip::scan::scan_into(&req, &mut self.msg);
        let s = pipeline::Scanned::new(&req, &self.msg, origin);
        let o = pipeline::answer(s, 430, reply::FLOW_FAILED, &[], &mut self.stream_out);
        if let (Outcome::Replied { len, dst, .. }, Some(side)) = (o, self.streams.as_ref()) {
            if !side.send_udp(&self.stream_out[..len], dst) {
                self.stats.send_error();
            }
        }
    }

    /// RFC 5626 flow failure: the registered contacts of each ended client
    /// connection go (looked up first: most connections registered
    /// nothing, and those cost the registrar nothing).
    fn unbind_ended(&mut self, ended: Vec<(SocketAddr, crate::sip::flow::Flow)>) {
        // Most wakes end no connection: no table snapshot for them.
        if ended.is_empty() {
            return;
        }
        let (Some(q), Some(reg)) = (
            self.adm.registrar.as_ref(),
            self.tables.load().registrar.as_ref(),
        ) else {
            return;
        };
        for (peer, conn) in ended {
            let bound = reg
                .location
                .identity_of_flow((peer, Some(conn)), |_| ())
                .is_some();
            if bound && !q.conn_ended(peer, conn) {
                tracing::warn!(%peer, "registrar queue full: an ended connection's bindings wait for their expiry");
            }
        }
    }

    fn fold_latency(&mut self) {
        if let Ok(mut shared) = self.stats.latency.try_lock() {
            let _ = shared.add(&self.local);
            self.local.reset();
            self.last_fold = Instant::now();
        }
    }
}

impl DatagramHandler for EdgeHandler {
    fn on_batch_start(&mut self) {
        self.follow_admission();
        self.batch_start = Instant::now();
        self.batch_n = 0;
        self.adm.now_ms = self.batch_start.duration_since(self.started).as_millis() as u64;
        self.adm.batch = self.batches;
    }

    fn on_datagram(
        &mut self,
        data: &[u8],
        truncated: bool,
        src: SocketAddr,
        out: &mut [u8],
    ) -> Option<(usize, SocketAddr)> {
        self.batch_n += 1;
        let d = Datagram {
            buf: data,
            truncated,
            src,
            flow: None,
        };
        // A borrowed snapshot: no refcount traffic on a line shared by workers.
        let tables = self.tables.load();
        let outcome = pipeline::run(&d, tables, &mut self.adm, out, &mut self.msg);
        let on_stream = stream_shard_of(&outcome, tables);
        let outcome = match outcome {
            Outcome::OnFlow { len, token }
                if !self.send_on_flow((data, token), &mut out[..len], src) =>
            {
                // RFC 5626 §5.3: the flow is gone (or never was ours).
                let s = pipeline::Scanned::new(data, &self.msg, src);
                pipeline::answer(s, 430, reply::FLOW_FAILED, &[], out)
            }
            o => o,
        };
        self.count(&d, &outcome);
        match outcome {
            Outcome::Relayed { len, .. }
                if self.streams.is_some() && self.relay_to_stream(data, &mut out[..len]) =>
            {
                return None;
            }
            Outcome::Forwarded { len, .. } if on_stream.is_some() => {
                self.forward_to_stream_shard(on_stream, (out, len), None);
                return None;
            }
            _ => {}
        }
        outcome.send()
    }

    fn on_wake(&mut self) {
        let Some(mut reactor) = self.streams.as_mut().and_then(|s| s.reactor.take()) else {
            return;
        };
        // Level-triggered: poll until fewer events than fit came back.
        let cap = reactor.events_per_poll();
        for _ in 0..64 {
            match reactor.poll(0, self) {
                Ok(n) if n == cap => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(worker = self.worker, "tcp poll: {e}");
                    break;
                }
            }
        }
        let ended = match self.streams.as_mut() {
            Some(side) => {
                side.tick(Instant::now(), reactor.streams());
                side.reactor = Some(reactor);
                side.take_ended()
            }
            None => Vec::new(),
        };
        self.unbind_ended(ended);
    }

    fn enable_ring_receives(&mut self) -> bool {
        let Some(side) = self.streams.as_mut() else {
            return false;
        };
        let Some(r) = side.reactor.as_mut() else {
            return false;
        };
        r.set_ring_receives();
        side.stats
            .ring_workers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        true
    }

    fn take_ring_ops(&mut self, ops: &mut Vec<crate::io::stream::RingOp>) {
        if let Some(r) = self.streams.as_mut().and_then(|s| s.reactor.as_mut()) {
            r.take_ring_ops(ops);
        }
    }

    fn on_ring_recv(&mut self, key: u64, res: Result<&[u8], i32>) {
        let Some(mut reactor) = self.streams.as_mut().and_then(|s| s.reactor.take()) else {
            return;
        };
        reactor.ring_received(key, res, self);
        if let Some(side) = self.streams.as_mut() {
            side.reactor = Some(reactor);
        }
    }

    fn on_batch_end(&mut self) {
        // This batch's sends are submitted: slow-path results from it may go.
        self.progress.done(self.worker, self.batches);
        self.batches += 1;
        // Sampling the kernel queue costs a syscall: every 16th batch.
        if self.adm.overload.enabled() && self.batches.is_multiple_of(16) {
            if let Some((queued, buf)) = self.sock_fd.and_then(socket_fill) {
                self.adm.overload.sample(queued, buf);
            }
        }
        if self.batch_n > 0 {
            let ns = self
                .batch_start
                .elapsed()
                .as_nanos()
                .clamp(1, 10_000_000_000) as u64;
            let _ = self.local.record_n(ns, self.batch_n);
        }
        if self.last_fold.elapsed() >= Duration::from_millis(250) {
            self.fold_latency();
        }
    }

    fn on_send_error(&mut self, dst: SocketAddr, err: i32) {
        self.stats.send_error();
        let e = std::io::Error::from_raw_os_error(err);
        self.log_limited(
            DropReason::ALL.len(),
            format_args!("send to {dst} failed: {e}"),
        );
    }

    fn on_recv_error(&mut self, err: i32) {
        self.stats.recv_error();
        let e = std::io::Error::from_raw_os_error(err);
        self.log_limited(DropReason::ALL.len(), format_args!("receive error: {e}"));
    }
}

impl StreamHandler for EdgeHandler {
    fn on_open(&mut self, id: ConnId, peer: SocketAddr) {
        if let Some(side) = self.streams.as_mut() {
            side.opened(id, Some(peer), Instant::now());
        }
    }

    fn on_data(&mut self, id: ConnId, data: &[u8], streams: &mut Streams) {
        let Some(mut side) = self.streams.take() else {
            return;
        };
        let mut framed = Vec::new();
        let tables = self.tables.load();
        let at = (Instant::now(), &tables.shards);
        side.received(id, data, at, streams, |m, peer, token, _| {
            framed.push((m.to_vec(), peer, *token));
        });
        self.streams = Some(side);
        for (m, peer, token) in framed {
            self.on_stream_message(&m, peer, &token, id, streams);
        }
    }

    fn on_closed(&mut self, id: ConnId, why: CloseReason) {
        if let Some(side) = self.streams.as_mut() {
            side.closed(id, why);
        }
    }

    fn on_refused(&mut self, peer: SocketAddr, why: Refused) {
        if let Some(side) = self.streams.as_ref() {
            side.refused(peer, why);
        }
    }

    fn on_watched(&mut self, streams: &mut Streams) {
        let Some(side) = self.streams.as_mut() else {
            return;
        };
        let mut failed = Vec::new();
        side.read_mail(streams, |req, origin| failed.push((req.to_vec(), origin)));
        for (req, origin) in failed {
            self.answer_flow_failed(&req, origin);
        }
    }
}

/// Count what arrived (a truncated datagram as a drop, not as what its
/// start says) and what became of it; a drop worth a log line is returned.
fn count_into(
    stats: &WorkerStats,
    m: &Message,
    truncated: bool,
    outcome: &Outcome,
) -> Option<DropReason> {
    match m.method().filter(|_| !truncated) {
        Some(method) => stats.rx_request(method),
        None => {
            if let StartLine::Response { code } = m.start {
                if code >= 100 && !truncated {
                    stats.rx_response(code);
                }
            }
        }
    }
    match *outcome {
        Outcome::Forwarded { kind, shard, .. } => stats.forwarded(kind, shard),
        Outcome::OnFlow { token, .. } => stats.forwarded(token.kind(), None),
        Outcome::Relayed { code, .. } => stats.relayed(code),
        Outcome::Replied { code, .. } => stats.replied(code),
        Outcome::NeedsPolicy(_) => stats.slow_queued(),
        Outcome::ToRegistrar => stats.registrar_queued(),
        Outcome::Dropped(r) => {
            stats.dropped(r);
            return (r != DropReason::Keepalive).then_some(r);
        }
    }
    None
}

impl Drop for EdgeHandler {
    fn drop(&mut self) {
        if let Ok(mut shared) = self.stats.latency.lock() {
            let _ = shared.add(&self.local);
        }
    }
}

/// A running edge: its workers, their stats and the published tables.
pub struct Server {
    pub backend: IoBackend,
    pub backend_reason: String,
    pub local_addr: SocketAddr,
    pub tables: Arc<ArcSwap<Tables>>,
    /// The admission settings every worker follows (swapped on reload).
    pub admission: LiveAdmission,
    pub stats: Vec<Arc<WorkerStats>>,
    /// The SDP policy threads (idle while no policy is configured).
    pub slow: Option<SlowPath>,
    /// The registrar thread (when the edge serves domains).
    pub registrar: Option<RegistrarThread>,
    /// Every worker's TCP and TLS counters (`[tcp]` or `[tls] enabled`).
    pub streams: Option<Arc<StreamStats>>,
    /// The TLS listeners' certificates, re-read on reload (`[tls]`).
    pub tls: Option<Arc<TlsCerts>>,
    /// Where TLS is accepted (`[tls] port` 0 resolved).
    pub tls_addr: Option<SocketAddr>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    /// Bind every worker's socket, then start the workers. Errors (bind,
    /// forced io backend unavailable) are returned before any thread runs.
    pub fn start(
        v: &ServerSettings,
        mut tables: Tables,
        admission: Admission,
        reg: Option<RegistrarConfig>,
    ) -> Result<Server, String> {
        assert!(v.workers.count >= 1, "validated worker count");
        let (backend, backend_reason) = io::select_backend(v.workers.io)?;
        let recovered = match &reg {
            Some(r) => Some(registrar::recover(r.store.as_ref(), r.max_aors)?),
            None => None,
        };
        if let (Some(r), Some((loc, _, _))) = (&reg, &recovered) {
            tables.registrar = Some(crate::route::tables::RegistrarRoute {
                domains: r
                    .settings
                    .domains
                    .iter()
                    .map(|d| d.to_ascii_lowercase().into_bytes())
                    .collect(),
                require_registration: r.require_registration,
                location: Arc::clone(loc),
            });
        }
        let tables = Arc::new(ArcSwap::from_pointee(tables));
        let shared = admission.clone();
        let admission: LiveAdmission = Arc::new(ArcSwap::from_pointee(admission));
        let mut sockets = Vec::with_capacity(v.workers.count);
        for i in 0..v.workers.count {
            let s = io::socket::bind_udp(
                v.listen,
                true,
                v.workers.socket_rcvbuf,
                v.workers.socket_sndbuf,
            )
            .map_err(|e| format!("worker {i}: cannot bind udp {}: {e}", v.listen))?;
            sockets.push(s);
        }
        let local_addr = sockets[0].local_addr().map_err(|e| e.to_string())?;
        let dups = sockets
            .iter()
            .map(|s| s.try_clone())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot duplicate worker sockets for the slow path: {e}"))?;
        // The dups share the workers' non-blocking file status: a full send
        // buffer fails a slow-path send (counted) instead of blocking it.
        let stream_shards = tables
            .load()
            .shards
            .live()
            .any(|(_, s)| s.transport != crate::route::shards::Transport::Udp);
        let mut tcp = bind_streams(v, &sockets, stream_shards)?;
        let mailer = |t: &Option<BoundStreams>| t.as_ref().map(BoundStreams::mailer).transpose();
        let progress = Arc::new(Progress::new(v.workers.count));
        let slow = SlowPath::start(
            (v.slow_path.threads, v.slow_path.queue),
            Arc::clone(&tables),
            (dups, mailer(&tcp)?),
            v.workers.max_datagram,
            Arc::clone(&progress),
        )?;
        let registrar = match (reg, recovered) {
            (Some(cfg), Some(rec)) => {
                let dup = sockets[0].try_clone().map_err(|e| {
                    format!("cannot duplicate a worker socket for the registrar: {e}")
                })?;
                let mail = mailer(&tcp)?;
                Some(RegistrarThread::start(
                    cfg,
                    rec,
                    Arc::clone(&tables),
                    (dup, mail),
                )?)
            }
            _ => None,
        };
        let stream_stats = tcp.as_ref().map(|t| Arc::clone(&t.stats));
        let tls_certs = tcp.as_ref().and_then(|t| t.tls.clone());
        let tls_addr = tcp.as_ref().and_then(|t| t.tls_addr);
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let stop = Arc::new(AtomicBool::new(false));
        let cfg = IoConfig {
            batch: v.workers.batch,
            buf_size: v.workers.max_datagram,
            buf_count: v.workers.recv_buffers,
            out_size: v.workers.max_datagram,
            wake: None,
        };
        let mut stats = Vec::new();
        let mut threads = Vec::new();
        for (i, sock) in sockets.into_iter().enumerate() {
            // Sized for every slot a live shard add may use.
            let st = Arc::new(WorkerStats::new(crate::route::shards::MAX_SHARDS));
            stats.push(Arc::clone(&st));
            let core = (!v.workers.cpus.is_empty())
                .then(|| v.workers.cpus[i % v.workers.cpus.len()])
                .and_then(|c| cores.iter().find(|id| id.id == c).copied());
            let tables = Arc::clone(&tables);
            let stop = Arc::clone(&stop);
            let slow_q = Some(slow.queue.clone());
            let reg_q = registrar.as_ref().map(|r| r.queue.clone());
            let progress = Arc::clone(&progress);
            let admission = Admission {
                sock_fd: Some(std::os::fd::AsRawFd::as_raw_fd(&sock)),
                live: Some(Arc::clone(&admission)),
                ..shared.clone()
            };
            let side = match tcp.as_mut() {
                Some(t) => Some(t.side(i, v)?),
                None => None,
            };
            let cfg = IoConfig {
                wake: side.as_ref().and_then(StreamSide::wake_fd),
                ..cfg
            };
            let out_size = v.tcp.out_size();
            let t = std::thread::Builder::new()
                .name(format!("edge-w{i}"))
                .spawn(move || {
                    if let Some(core) = core {
                        if !core_affinity::set_for_current(core) {
                            tracing::warn!(worker = i, cpu = core.id, "could not pin worker");
                        }
                    }
                    let mut h = EdgeHandler::new(tables, st, i, slow_q, progress, &admission);
                    h.set_registrar(reg_q);
                    if let Some(side) = side {
                        h.set_streams(side, out_size);
                    }
                    io::run(backend, &sock, cfg, &mut h, &stop)
                })
                .map_err(|e| format!("cannot spawn worker {i}: {e}"))?;
            threads.push(t);
        }
        Ok(Server {
            backend,
            backend_reason,
            local_addr,
            tables,
            admission,
            stats,
            slow: Some(slow),
            registrar,
            streams: stream_stats,
            tls: tls_certs,
            tls_addr,
            stop,
            threads,
        })
    }

    pub fn snapshot(&self) -> super::stats::Snapshot {
        super::stats::Snapshot::merge(&self.stats)
    }

    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// Stop the workers and wait for them, then the slow path; returns the
    /// first io error.
    pub fn stop(mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::SeqCst);
        let mut first = Ok(());
        for (i, t) in self.threads.drain(..).enumerate() {
            let r = match t.join() {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("worker {i}: {e}")),
                Err(_) => Err(format!("worker {i} panicked")),
            };
            if first.is_ok() {
                first = r;
            }
        }
        if let Some(s) = self.slow.take() {
            s.stop();
        }
        if let Some(r) = self.registrar.take() {
            r.stop();
        }
        first
    }
}

/// The stream side's sockets, bound before any worker runs: listeners and
/// a mail socket per worker, and the key every worker's flow tokens share.
struct BoundStreams {
    listeners: Vec<Option<std::net::TcpListener>>,
    tls_listeners: Vec<Option<std::net::TcpListener>>,
    tls: Option<Arc<TlsCerts>>,
    tls_addr: Option<SocketAddr>,
    mails: Vec<Option<std::net::UdpSocket>>,
    peers: Arc<Vec<SocketAddr>>,
    udp: Vec<Option<std::net::UdpSocket>>,
    key: [u64; 2],
    stats: Arc<StreamStats>,
}

fn bind_streams(
    v: &ServerSettings,
    sockets: &[std::net::UdpSocket],
    stream_shards: bool,
) -> Result<Option<BoundStreams>, String> {
    if !v.tcp.enabled && !v.tls.enabled && !stream_shards {
        return Ok(None);
    }
    let tls = TlsCerts::load(&v.tls)?.map(Arc::new);
    let mut b = BoundStreams {
        listeners: Vec::new(),
        tls_listeners: Vec::new(),
        tls,
        tls_addr: None,
        mails: Vec::new(),
        peers: Arc::new(Vec::new()),
        udp: Vec::new(),
        key: crate::sip::flow::process_key(),
        stats: Arc::new(StreamStats::default()),
    };
    let mut peers = Vec::new();
    let mut tls_at = SocketAddr::new(v.listen.ip(), v.tls.port);
    for (i, s) in sockets.iter().enumerate() {
        let tcp = match v.tcp.enabled {
            true => Some(bind_listener(i, "tcp", v.listen)?),
            false => None,
        };
        let tls = match v.tls.enabled {
            true => Some(bind_listener(i, "tls", tls_at)?),
            false => None,
        };
        // Port 0: the first worker's port for every worker (SO_REUSEPORT).
        if let Some(l) = &tls {
            tls_at = l.local_addr().map_err(|e| e.to_string())?;
            b.tls_addr = Some(tls_at);
        }
        // Loopback: the mail never leaves the host.
        let mail = std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| format!("worker {i}: cannot bind its mail socket: {e}"))?;
        peers.push(mail.local_addr().map_err(|e| e.to_string())?);
        b.listeners.push(tcp);
        b.tls_listeners.push(tls);
        b.mails.push(Some(mail));
        b.udp.push(Some(s.try_clone().map_err(|e| {
            format!("worker {i}: cannot duplicate its socket: {e}")
        })?));
    }
    b.peers = Arc::new(peers);
    Ok(Some(b))
}

fn bind_listener(
    worker: usize,
    what: &str,
    at: SocketAddr,
) -> Result<std::net::TcpListener, String> {
    io::socket::bind_tcp(at, 1024)
        .map_err(|e| format!("worker {worker}: cannot listen on {what} {at}: {e}"))
}

impl BoundStreams {
    /// A way into the workers' mail for the registrar thread: a duplicate
    /// of worker 0's mail socket (before any worker takes it).
    fn mailer(&self) -> Result<super::streams::Mailer, String> {
        let sock = self
            .mails
            .first()
            .and_then(Option::as_ref)
            .ok_or("no mail socket for the registrar")?
            .try_clone()
            .map_err(|e| format!("cannot duplicate a mail socket for the registrar: {e}"))?;
        Ok(super::streams::Mailer::new(
            sock,
            Arc::clone(&self.peers),
            self.key,
        ))
    }

    /// Worker `i`'s stream side (each part taken once).
    fn side(&mut self, i: usize, v: &ServerSettings) -> Result<StreamSide, String> {
        let (Some(mail), Some(udp)) = (self.mails[i].take(), self.udp[i].take()) else {
            return Err(format!("worker {i}: stream side taken twice"));
        };
        let acceptor = self.tls.as_ref().and_then(|c| c.acceptor.clone());
        let tls = self.tls_listeners[i].take().zip(acceptor);
        let shard_tls = self.tls.as_ref().and_then(|c| c.client.clone());
        let sockets = StreamSockets {
            listener: self.listeners[i].take(),
            tls,
            shard_tls,
            mail,
            mail_peers: Arc::clone(&self.peers),
            udp,
        };
        let handshake = std::time::Duration::from_millis(v.tls.handshake_ms);
        StreamSide::new(
            sockets,
            i as u16,
            self.key,
            (v.tcp.clone(), handshake),
            Arc::clone(&self.stats),
        )
        .map_err(|e| format!("worker {i}: streams: {e}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
