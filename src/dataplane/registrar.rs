//! The registrar thread: the one writer of the location service.
//!
//! Workers hand it REGISTERs for served domains and the answers to its own
//! third-party REGISTERs through one bounded queue. It works in batches
//! (group commit: the store does about a thousand durable commits a
//! second, so one commit carries a whole batch):
//! 1. `decide`: each REGISTER through the sans-IO [`Registrar`], reading
//!    the bindings as the batch has left them;
//! 2. `commit`: the batch's changes in one durable redb transaction;
//! 3. `publish`: the changes into the lock-free [`Location`] (workers see
//!    them from here on), then the answers go out (a `200` only once its
//!    binding is durable: on a store failure the batch is answered `500`
//!    and nothing changes);
//! 4. `notify`: a third-party REGISTER to the Participating Function of
//!    each user whose CPM registration changed (client transactions of
//!    the shared SIP core, retransmitted per RFC 3261 §17.1.2);
//! 5. `sweep`, once a second: expired bindings leave (persisted, notified).

use super::location_store::LocationStore;
use super::streams::Mailer;
use crate::pipeline::Handoff;
use crate::registrar::credentials::CredentialStore;
use crate::registrar::third_party::{self, Notice};
use crate::registrar::{Challenger, Change, Registrar, Settings, Verdict, MAX_ANSWER};
use crate::route::decision::identity_key_hash;
use crate::route::location::{Binding, Location, LocationWriter};
use crate::route::Tables;
use crate::sip::flow::{Flow, TOKEN_LEN};
use crate::sip::reply;
use crate::sip::scan::{scan, Message, Scanned};
use crate::sip::transaction::{self, Received, TransactionTable};
use arc_swap::ArcSwap;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Most REGISTERs decided and committed together.
pub const MAX_BATCH: usize = 256;
/// How long a batch waits for more REGISTERs before its durable commit.
pub const COMMIT_WINDOW: Duration = Duration::from_millis(2);
/// Most expired bindings removed per sweep (the rest wait a second).
pub const MAX_SWEEP: usize = 4096;
/// Most AoRs unbound for one ended connection: the lines of one device,
/// or every user behind an SBC on one connection, as many as a sweep
/// takes (beyond, the rest lapse at their expiry).
pub const MAX_AORS_PER_CONN: usize = 4096;

/// What the registrar thread is given.
pub enum RegWork {
    Message(RegJob),
    /// A client's stream connection ended (RFC 5626 flow failure): its
    /// bindings go (`peer`: its address), as Kamailio's registrar does
    /// with `handle_lost_tcp`, so that the user's PF stops forking to a
    /// device that cannot be reached.
    ConnEnded {
        peer: SocketAddr,
        conn: Flow,
    },
}

/// How the registrar runs (config `[registrar]`, bound at start).
#[derive(Clone, Debug)]
pub struct RegistrarConfig {
    pub settings: Settings,
    pub require_registration: bool,
    /// The redb file; `None`: bindings live in memory only.
    pub store: Option<PathBuf>,
    /// Bound of the queue from the workers.
    pub queue: usize,
    /// Most AoRs the location service holds.
    pub max_aors: usize,
    pub nonce_key: [u8; 32],
    /// Shared, never copied: with a million users a copy is about a
    /// second of start-up and its own hundreds of megabytes, and this
    /// configuration is cloned (the control plane keeps one for reloads).
    pub credentials: Arc<CredentialStore>,
    /// The file the credentials came from (the admin API writes it back).
    pub credentials_file: Option<PathBuf>,
}

/// One message for the registrar.
pub struct RegJob {
    pub data: Vec<u8>,
    pub src: SocketAddr,
    /// The flow token of the stream connection it came on (`None`: a
    /// datagram): the answer goes back on that connection, and the binding
    /// names it.
    pub flow: Option<[u8; TOKEN_LEN]>,
}

impl RegJob {
    fn of(s: Scanned<'_>) -> RegJob {
        RegJob {
            data: s.buf.to_vec(),
            src: s.src,
            flow: s.flow.and_then(|t| t.try_into().ok()),
        }
    }

    /// The job's message, scanned as `m`.
    fn scanned<'a>(&'a self, m: &'a Message) -> Scanned<'a> {
        Scanned {
            flow: self.flow.as_ref().map(|t| &t[..]),
            ..Scanned::new(&self.data, m, self.src)
        }
    }
}

/// The workers' end of the queue.
#[derive(Clone)]
pub struct RegQueue {
    tx: Sender<RegWork>,
    stats: Arc<RegistrarStats>,
    /// The registrar's stateless front: what needs no binding is answered
    /// by the worker itself (no hand-over, no thread wake-up).
    front: Arc<Challenger>,
    /// With the bindings in memory only there is no durable commit to
    /// gather REGISTERs for, so the worker runs the registrar itself under
    /// this lock: no hand-over, no thread wake-up, and the answer leaves in
    /// the worker's own send batch. `None`: a store; the thread decides.
    inline: Option<Arc<Mutex<State>>>,
}

impl RegQueue {
    /// A datagram for the registrar, by the cheapest way that serves it:
    /// the stateless front, the registrar run on this worker (no store), or
    /// the registrar thread's queue.
    pub fn take(&self, s: Scanned<'_>, out: &mut [u8]) -> Handoff {
        if let Some((len, code)) = self.answer_at_once(s, out) {
            return Handoff::Answered { len, code };
        }
        if let Some(state) = &self.inline {
            return match lock(state).handle_inline(s, out) {
                Some((len, code)) => Handoff::Answered { len, code },
                None => Handoff::Queued,
            };
        }
        if self.offer(RegJob::of(s)) {
            Handoff::Queued
        } else {
            Handoff::Full
        }
    }

    /// A REGISTER without credentials answered into `out` by the worker
    /// (counted as the registrar thread counts): `(len, status)`; `None`:
    /// it is for the registrar thread.
    pub fn answer_at_once(&self, s: Scanned<'_>, out: &mut [u8]) -> Option<(usize, u16)> {
        if !s.m.is_request() {
            return None;
        }
        let h = self.front.answer_at_once(s, now_unix(), out)?;
        if h.len == 0 {
            return None;
        }
        // The front only challenges or refuses (it never reads a binding).
        let code = match h.verdict {
            Verdict::Refused(code) => code,
            Verdict::Challenged => 401,
            Verdict::Registered | Verdict::Retransmission | Verdict::Dropped => return None,
        };
        count(&self.stats, h.verdict);
        Some((h.len, code))
    }

    /// Queue a message; `false` (counted): the queue is full.
    pub fn offer(&self, job: RegJob) -> bool {
        self.offer_work(RegWork::Message(job))
    }

    /// A client's connection `conn` from `peer` ended: its bindings go,
    /// on this worker when the registrar runs inline, else on the thread.
    /// `false` (counted): the queue is full; they lapse at their expiry.
    pub fn conn_ended(&self, peer: SocketAddr, conn: Flow) -> bool {
        if let Some(state) = &self.inline {
            lock(state).unbind_conns(&[(peer, conn)]);
            return true;
        }
        self.offer_work(RegWork::ConnEnded { peer, conn })
    }

    fn offer_work(&self, work: RegWork) -> bool {
        match self.tx.try_send(work) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.queue_full.fetch_add(1, Relaxed);
                false
            }
        }
    }
}

/// The registrar's counters (metrics and the admin API read them).
#[derive(Debug, Default)]
pub struct RegistrarStats {
    pub registered: AtomicU64,
    pub challenged: AtomicU64,
    pub refused: AtomicU64,
    pub retransmissions: AtomicU64,
    pub commits: AtomicU64,
    pub commit_errors: AtomicU64,
    pub expired: AtomicU64,
    /// Bindings removed because their stream connection ended.
    pub unbound: AtomicU64,
    pub notices_sent: AtomicU64,
    pub notices_answered: AtomicU64,
    pub notices_failed: AtomicU64,
    pub queue_full: AtomicU64,
}

/// The running registrar.
pub struct RegistrarThread {
    pub queue: RegQueue,
    pub location: Arc<Location>,
    pub credentials: Arc<ArcSwap<CredentialStore>>,
    pub stats: Arc<RegistrarStats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Open the store and recover the bindings it holds (expired ones
/// dropped) into a new location service.
pub fn recover(
    store: Option<&PathBuf>,
    max_aors: usize,
) -> Result<(Arc<Location>, LocationWriter, Option<LocationStore>), String> {
    let location = Arc::new(Location::new(max_aors));
    let mut writer = location
        .writer()
        .ok_or("the location service already has a writer")?;
    let Some(path) = store else {
        return Ok((location, writer, None));
    };
    let s =
        LocationStore::open(path).map_err(|e| format!("location store {}: {e}", path.display()))?;
    let recovered = s
        .load(now_unix())
        .map_err(|e| format!("location store {}: {e}", path.display()))?;
    let n = recovered.len();
    writer
        .put_many(recovered.iter().map(|(a, b)| (&a[..], b.clone())))
        .map_err(|e| format!("location store {}: {e}", path.display()))?;
    tracing::info!(aors = n, path = %path.display(), "location service recovered");
    Ok((location, writer, Some(s)))
}

impl RegistrarThread {
    /// Start the thread with the recovered location service; `socket` is a
    /// duplicate of a worker's (answers and notices leave from the edge's
    /// own address, the one the CS shards trust); `mail` reaches the
    /// workers' stream connections (`None`: the edge has none).
    pub fn start(
        cfg: RegistrarConfig,
        recovered: (Arc<Location>, LocationWriter, Option<LocationStore>),
        tables: Arc<ArcSwap<Tables>>,
        (socket, mail): (UdpSocket, Option<Mailer>),
    ) -> Result<RegistrarThread, String> {
        let (location, writer, store) = recovered;
        let (tx, rx) = bounded(cfg.queue.max(1));
        let stats = Arc::new(RegistrarStats::default());
        let credentials = Arc::new(ArcSwap::new(Arc::clone(&cfg.credentials)));
        let stop = Arc::new(AtomicBool::new(false));
        let txn_cfg = transaction::Config {
            max_transactions: 65_536,
            key: crate::sip::hash::random_key(),
            ..transaction::Config::default()
        };
        let registrar = Registrar::new(cfg.settings.clone(), cfg.nonce_key);
        let front = registrar.front();
        let state = State {
            registrar,
            writer,
            store,
            tables,
            credentials: Arc::clone(&credentials),
            stats: Arc::clone(&stats),
            socket,
            mail,
            txns: TransactionTable::new(txn_cfg),
            cseq: 0,
            next_sweep: Instant::now(),
            scratch: vec![0u8; MAX_ANSWER].into_boxed_slice(),
        };
        let durable = state.store.is_some();
        let state = Arc::new(Mutex::new(state));
        let inline = (!durable).then(|| Arc::clone(&state));
        let stop_t = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("edge-registrar".into())
            .spawn(move || run(&state, &rx, &stop_t, durable))
            .map_err(|e| format!("cannot start the registrar thread: {e}"))?;
        Ok(RegistrarThread {
            queue: RegQueue {
                tx,
                stats: Arc::clone(&stats),
                front,
                inline,
            },
            location,
            credentials,
            stats,
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RegistrarThread {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread's own state.
struct State {
    registrar: Registrar,
    writer: LocationWriter,
    store: Option<LocationStore>,
    tables: Arc<ArcSwap<Tables>>,
    credentials: Arc<ArcSwap<CredentialStore>>,
    stats: Arc<RegistrarStats>,
    socket: UdpSocket,
    /// Where answers to REGISTERs that came on a stream go.
    mail: Option<Mailer>,
    txns: TransactionTable,
    /// CSeq of the notices (one Call-ID per AoR, so one rising counter
    /// orders them all).
    cseq: u32,
    next_sweep: Instant,
    /// Where answers are written ([`MAX_ANSWER`], allocated once: a fresh
    /// zeroed one per REGISTER cost more than the copy out of it).
    scratch: Box<[u8]>,
}

/// One decided REGISTER waiting for its batch's commit.
struct Pending {
    job: RegJob,
    answer: Vec<u8>,
    change: Option<Change>,
}

/// The thread's loop: timers, and with a store the queued batches. The
/// state is locked only while it works (never while it waits), so workers
/// running the registrar inline wait at most one batch or sweep.
fn run(state: &Mutex<State>, rx: &Receiver<RegWork>, stop: &AtomicBool, durable: bool) {
    while !stop.load(Relaxed) {
        let wait = lock(state)
            .next_deadline()
            .saturating_duration_since(Instant::now());
        let first = match rx.recv_timeout(wait.min(Duration::from_millis(100))) {
            Ok(j) => Some(j),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut batch: Vec<RegWork> = first.into_iter().collect();
        gather(rx, &mut batch, durable);
        let mut st = lock(state);
        // The batch's REGISTERs first, then its ended connections in one
        // commit (a connection that ended sends no REGISTER after).
        let (mut jobs, mut ended) = (Vec::new(), Vec::new());
        for w in batch {
            match w {
                RegWork::Message(j) => jobs.push(j),
                RegWork::ConnEnded { peer, conn } => ended.push((peer, conn)),
            }
        }
        if !jobs.is_empty() {
            st.handle_batch(jobs);
        }
        if !ended.is_empty() {
            st.unbind_conns(&ended);
        }
        st.on_time();
    }
}

/// The state, also after a panic elsewhere (its tables stay consistent:
/// every change is published whole by the location writer).
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// More of the queue into `batch`: what is there now, and with a store
/// whatever arrives within [`COMMIT_WINDOW`] of the first job. A durable
/// commit costs about as much as a hundred REGISTERs' work, so a short
/// wait that puts several in one commit is the cheaper way at every
/// load (a REGISTER's answer waits at most the window longer).
fn gather(rx: &Receiver<RegWork>, batch: &mut Vec<RegWork>, durable: bool) {
    if batch.is_empty() {
        return;
    }
    let until = Instant::now() + COMMIT_WINDOW;
    while batch.len() < MAX_BATCH {
        let next = match rx.try_recv() {
            Ok(j) => Some(j),
            Err(_) if durable => {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    None
                } else {
                    rx.recv_timeout(left).ok()
                }
            }
            Err(_) => None,
        };
        match next {
            Some(j) => batch.push(j),
            None => break,
        }
    }
}

impl State {
    fn next_deadline(&self) -> Instant {
        match self.txns.poll_timeout() {
            Some(t) => t.min(self.next_sweep),
            None => self.next_sweep,
        }
    }

    /// Phases 1-4 for one batch.
    fn handle_batch(&mut self, batch: Vec<RegJob>) {
        let now = Instant::now();
        let now_s = now_unix();
        let mut pending = Vec::with_capacity(batch.len());
        let mut overlay: HashMap<Vec<u8>, Vec<Binding>> = HashMap::new();
        for job in batch {
            let m = scan(&job.data);
            if !m.is_request() {
                self.on_response(now, &job, &m);
                continue;
            }
            pending.push(self.decide(job, &m, now_s, &mut overlay));
        }
        // What changes nothing (challenges, refusals, queries) is answered
        // now: only a 200 that changed bindings waits for the commit.
        pending.retain(|p| {
            let waits = p.change.is_some();
            if !waits {
                self.answer(&p.job, &p.answer);
            }
            waits
        });
        let changes: Vec<(Vec<u8>, Vec<Binding>)> = overlay.into_iter().collect();
        if !changes.is_empty() && !self.commit(&changes) {
            self.answer_failed(&pending);
            return;
        }
        let befores = self.publish(&changes);
        for p in &pending {
            self.answer(&p.job, &p.answer);
        }
        self.notify_changes(now, now_s, &changes, befores);
        self.flush();
    }

    /// Phases 1, 3 and 4 for one datagram on a worker (no store, so no
    /// commit): the answer into `out` as `(len, status)`; `None`: nothing
    /// for the worker to send (a response to a notice, a dropped request,
    /// or an answer too long for `out`, sent here instead).
    fn handle_inline(&mut self, s: Scanned<'_>, out: &mut [u8]) -> Option<(usize, u16)> {
        debug_assert!(
            self.store.is_none(),
            "a durable registrar runs on its thread"
        );
        let now = Instant::now();
        let now_s = now_unix();
        let job = RegJob::of(s);
        if !s.m.is_request() {
            self.on_response(now, &job, s.m);
            return None;
        }
        let mut overlay = HashMap::new();
        let p = self.decide(job, s.m, now_s, &mut overlay);
        let changes: Vec<(Vec<u8>, Vec<Binding>)> = overlay.into_iter().collect();
        let befores = self.publish(&changes);
        self.notify_changes(now, now_s, &changes, befores);
        self.flush();
        let n = p.answer.len();
        match out.get_mut(..n) {
            Some(o) if n > 0 => {
                o.copy_from_slice(&p.answer);
                Some((n, status_of(&p.answer)))
            }
            _ => {
                self.answer(&p.job, &p.answer);
                None
            }
        }
    }

    /// Phase 1: a REGISTER through the registrar.
    fn decide(
        &mut self,
        job: RegJob,
        m: &Message,
        now_s: u64,
        overlay: &mut HashMap<Vec<u8>, Vec<Binding>>,
    ) -> Pending {
        let creds = self.credentials.load();
        let loc = self.writer.location();
        let current = |aor: &[u8]| -> Vec<Binding> {
            match overlay.get(aor) {
                Some(b) => b.clone(),
                None => loc.lookup(aor).map(|b| b.to_vec()).unwrap_or_default(),
            }
        };
        let s = job.scanned(m);
        let mut h = self
            .registrar
            .handle(s, now_s, &creds, &current, &mut self.scratch);
        count(&self.stats, h.verdict);
        let mut out = self.scratch[..h.len].to_vec();
        if let Some(c) = &h.change {
            let new_aor = !c.bindings.is_empty()
                && !overlay.contains_key(&c.aor)
                && loc.lookup(&c.aor).is_none();
            let room = loc.len() + overlay.len() < loc.capacity();
            if new_aor && !room {
                // The table's bound: refused before anything is committed.
                out = answer_full(s);
                h.change = None;
            }
        }
        if let Some(c) = &h.change {
            overlay.insert(c.aor.clone(), c.bindings.clone());
        }
        Pending {
            job,
            answer: out,
            change: h.change,
        }
    }

    /// Phase 2: one durable transaction for the batch. `false`: it failed.
    fn commit(&mut self, changes: &[(Vec<u8>, Vec<Binding>)]) -> bool {
        let Some(store) = self.store.as_mut() else {
            return true;
        };
        match store.commit(changes) {
            Ok(()) => {
                self.stats.commits.fetch_add(1, Relaxed);
                true
            }
            Err(e) => {
                self.stats.commit_errors.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "location store commit failed: the batch is refused");
                false
            }
        }
    }

    /// The batch could not be made durable: every REGISTER that changed
    /// something (all that is still pending) is answered `500` (the client
    /// retries).
    fn answer_failed(&mut self, pending: &[Pending]) {
        for p in pending {
            let m = scan(&p.job.data);
            let mut out = vec![0u8; MAX_ANSWER];
            let s = p.job.scanned(&m);
            let extra: [&[u8]; 1] = [b"Retry-After: 5\r\n"];
            if let Some(n) = reply::build(
                s,
                500,
                "Server Internal Error - Location Store Failed",
                &extra,
                &mut out,
            ) {
                self.answer(&p.job, &out[..n]);
            }
        }
    }

    /// Phase 3: the changes into the location service; returns each AoR's
    /// bindings before.
    fn publish(&mut self, changes: &[(Vec<u8>, Vec<Binding>)]) -> Vec<Vec<Binding>> {
        changes
            .iter()
            .map(|(aor, bindings)| {
                let before = self
                    .writer
                    .location()
                    .lookup(aor)
                    .map(|b| b.to_vec())
                    .unwrap_or_default();
                if let Err(e) = self.writer.put(aor, bindings.clone()) {
                    // Checked before the batch was decided (`decide`):
                    // only a full table gets here, and that AoR is new.
                    tracing::error!(error = %e, "location service full: binding not kept");
                }
                before
            })
            .collect()
    }

    /// Phase 4 for each change whose user's CPM registration it changed
    /// (`befores`: each AoR's bindings before, from [`Self::publish`]).
    fn notify_changes(
        &mut self,
        now: Instant,
        now_s: u64,
        changes: &[(Vec<u8>, Vec<Binding>)],
        befores: Vec<Vec<Binding>>,
    ) {
        for ((aor, after), before) in changes.iter().zip(befores) {
            if third_party::wanted(&before, after) {
                self.notify(now, now_s, aor, after);
            }
        }
    }

    /// Phase 4: the third-party REGISTER of `aor` to its user's PF.
    fn notify(&mut self, now: Instant, now_s: u64, aor: &[u8], bindings: &[Binding]) {
        let t = self.tables.load();
        let Some(shard) = t.shards.pick(identity_key_hash(aor)) else {
            self.stats.notices_failed.fetch_add(1, Relaxed);
            return;
        };
        let shard_addr = t.shards.get(shard).addr;
        let domain = aor
            .iter()
            .rposition(|&b| b == b'@')
            .and_then(|i| std::str::from_utf8(&aor[i + 1..]).ok())
            .unwrap_or("invalid");
        let call_id = format!("{:016x}-3pr@{}", identity_key_hash(aor), t.edge.hostport());
        self.cseq = self
            .cseq
            .max((now_s.saturating_sub(1_700_000_000)) as u32)
            .wrapping_add(1);
        let branch = self.txns.new_branch();
        let hostport = t.edge.hostport();
        let n = Notice {
            edge: &hostport,
            domain,
            shard: shard_addr,
            branch: branch.as_bytes(),
            call_id: call_id.as_bytes(),
            version: self.cseq,
        };
        let Some(bytes) = third_party::write(&n, aor, bindings, now_s) else {
            self.stats.notices_failed.fetch_add(1, Relaxed);
            return;
        };
        match self.txns.send_request(now, &bytes, shard_addr) {
            Ok(_) => {
                self.stats.notices_sent.fetch_add(1, Relaxed);
            }
            Err(e) => {
                self.stats.notices_failed.fetch_add(1, Relaxed);
                tracing::warn!(error = ?e, "third-party REGISTER not sent");
            }
        }
    }

    fn on_response(&mut self, now: Instant, job: &RegJob, m: &Message) {
        if let Ok(Received::Response { code, .. }) =
            self.txns.handle_datagram(now, job.src, &job.data, m)
        {
            if (200..300).contains(&code) {
                self.stats.notices_answered.fetch_add(1, Relaxed);
            } else if code >= 300 {
                self.stats.notices_failed.fetch_add(1, Relaxed);
                tracing::warn!(code, from = %job.src, "third-party REGISTER refused");
            }
        }
        self.drain_events();
        self.flush();
    }

    /// Phase 5 and the transactions' timers.
    fn on_time(&mut self) {
        let now = Instant::now();
        self.txns.handle_timeout(now);
        self.drain_events();
        if now >= self.next_sweep {
            self.next_sweep = now + Duration::from_secs(1);
            self.sweep(now);
        }
        self.flush();
    }

    fn drain_events(&mut self) {
        while let Some(e) = self.txns.poll_event() {
            if let transaction::Event::Timeout { .. } | transaction::Event::TransportError { .. } =
                e
            {
                self.stats.notices_failed.fetch_add(1, Relaxed);
            }
        }
    }

    /// The bindings on each ended connection out (of every AoR on it):
    /// persisted in one commit, published, then notified.
    fn unbind_conns(&mut self, ended: &[(SocketAddr, Flow)]) {
        // Several connections of one AoR may end in one batch: each
        // change starts from the previous one's result.
        let mut overlay: HashMap<Vec<u8>, Vec<Binding>> = HashMap::new();
        let mut removed = 0;
        for &(peer, conn) in ended {
            for aor in self.writer.aors_on_conn(peer, conn, MAX_AORS_PER_CONN) {
                let now = match overlay.remove(&aor) {
                    Some(list) => list,
                    None => match self.writer.location().lookup(&aor) {
                        Some(list) => list.to_vec(),
                        None => continue,
                    },
                };
                let before = now.len();
                let left: Vec<Binding> =
                    now.into_iter().filter(|b| b.conn() != Some(conn)).collect();
                removed += before - left.len();
                overlay.insert(aor, left);
            }
        }
        if overlay.is_empty() {
            return;
        }
        let changes: Vec<(Vec<u8>, Vec<Binding>)> = overlay.into_iter().collect();
        self.stats.unbound.fetch_add(removed as u64, Relaxed);
        // As for the sweep: a failed commit leaves them in the file, and
        // the next start drops stream bindings anyway.
        self.commit(&changes);
        let befores = self.publish(&changes);
        self.notify_changes(Instant::now(), now_unix(), &changes, befores);
        self.flush();
    }

    /// Expired bindings out: persisted, then notified.
    fn sweep(&mut self, now: Instant) {
        let now_s = now_unix();
        let expired = self.writer.sweep(now_s, MAX_SWEEP);
        if expired.is_empty() {
            return;
        }
        let changes: Vec<(Vec<u8>, Vec<Binding>)> = expired
            .iter()
            .map(|e| (e.aor.clone(), e.remaining.to_vec()))
            .collect();
        self.stats.expired.fetch_add(
            expired.iter().map(|e| e.removed.len() as u64).sum(),
            Relaxed,
        );
        // Already out of memory: a failed commit leaves them in the file,
        // and the next start drops them by their expiry anyway.
        self.commit(&changes);
        for e in &expired {
            if third_party::wanted(&e.removed, &e.remaining) {
                self.notify(now, now_s, &e.aor, &e.remaining);
            }
        }
    }

    fn flush(&mut self) {
        let mut buf = Vec::new();
        while let Some(t) = self.txns.poll_transmit(&mut buf) {
            self.send(&buf, t.destination);
            buf.clear();
        }
    }

    /// A job's answer: on the stream it came on (through its worker's
    /// mail), else to its real source (as every stateless answer of the
    /// edge, RFC 3581 §4).
    fn answer(&self, job: &RegJob, data: &[u8]) {
        let (Some(token), false) = (job.flow, data.is_empty()) else {
            return self.send(data, job.src);
        };
        // Lost, the answer is not retransmitted over a stream: the
        // client's transaction times out (RFC 3261 §17.1.2.2) and it
        // registers again.
        super::streams::mail_or_log(self.mail.as_ref(), (&token, None), data, "registrar answer");
    }

    fn send(&self, data: &[u8], dst: SocketAddr) {
        if data.is_empty() {
            return;
        }
        // The socket is a worker's dup (non-blocking): a full send buffer
        // loses this datagram; the client's or our own retransmission
        // recovers it.
        if let Err(e) = self.socket.send_to(data, dst) {
            tracing::warn!(%dst, error = %e, "registrar send failed");
        }
    }
}

fn count(stats: &RegistrarStats, v: Verdict) {
    let c = match v {
        Verdict::Registered => &stats.registered,
        Verdict::Challenged => &stats.challenged,
        Verdict::Retransmission => &stats.retransmissions,
        Verdict::Refused(_) | Verdict::Dropped => &stats.refused,
    };
    c.fetch_add(1, Relaxed);
}

/// `503` for a new AoR while the location service holds its maximum.
fn answer_full(s: Scanned<'_>) -> Vec<u8> {
    let mut out = vec![0u8; MAX_ANSWER];
    let extra: [&[u8]; 1] = [b"Retry-After: 60\r\n"];
    let n = reply::build(
        s,
        503,
        "Service Unavailable - Location Service Full",
        &extra,
        &mut out,
    )
    .unwrap_or(0);
    out.truncate(n);
    out
}

/// The status code of an answer this registrar wrote (`SIP/2.0 NNN ...`).
fn status_of(answer: &[u8]) -> u16 {
    answer
        .get(8..11)
        .and_then(|d| std::str::from_utf8(d).ok())
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}
