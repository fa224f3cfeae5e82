//! The accept loop: the pool, the per-peer cap, the probe slots, stop.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};
use tracing::{info, warn};

use super::conn::{self, Mode};
use super::{Handler, HttpConfig, TokenCell, STOP_GRACE};

/// How often the accept loop looks at `stop`.
const STOP_POLL: Duration = Duration::from_millis(50);

pub(crate) struct Shared {
    pub(super) cfg: HttpConfig,
    pub(super) token: TokenCell,
    pub(super) handler: Handler,
    stop: Arc<AtomicBool>,
    /// Set once `stop` was seen: connections finish the request in hand and
    /// close.
    pub(super) shutdown: watch::Sender<bool>,
    /// Connections in the pool.
    active: AtomicUsize,
    /// Connections in the pool per source IP (no entry at zero).
    peers: Mutex<HashMap<IpAddr, usize>>,
    pub(super) logs: LogThrottle,
}

impl Shared {
    pub(super) fn new(
        cfg: HttpConfig,
        token: TokenCell,
        handler: Handler,
        stop: Arc<AtomicBool>,
    ) -> Shared {
        Shared {
            cfg,
            token,
            handler,
            stop,
            shutdown: watch::Sender::new(false),
            active: AtomicUsize::new(0),
            peers: Mutex::new(HashMap::new()),
            logs: LogThrottle::default(),
        }
    }

    pub(super) fn stopping(&self) -> bool {
        *self.shutdown.borrow() || self.stop.load(Ordering::Acquire)
    }

    fn peers(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One connection's place in the pool and in its peer's count, released on
/// drop (also when its task is aborted).
pub(super) struct Slot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.active.fetch_sub(1, Ordering::AcqRel);
        self.shared.cfg.stats.active.fetch_sub(1, Ordering::Relaxed);
        let mut peers = self.shared.peers();
        if let Some(n) = peers.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                peers.remove(&self.ip);
            }
        }
    }
}

/// At most one log line per reason per second; the next line says how many
/// were suppressed in between. A flood of refused connections or bad
/// requests must not turn into a flood of log lines.
#[derive(Default)]
pub(super) struct LogThrottle {
    last: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl LogThrottle {
    /// Call `emit(suppressed)` unless `reason` was logged less than a second ago.
    pub(super) fn log(&self, reason: &'static str, emit: impl FnOnce(u64)) {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.get_mut(reason) {
            Some((t, n)) if now.duration_since(*t) < Duration::from_secs(1) => *n += 1,
            Some((t, n)) => {
                let suppressed = std::mem::take(n);
                *t = now;
                drop(last);
                emit(suppressed);
            }
            None => {
                last.insert(reason, (now, 0));
                drop(last);
                emit(0);
            }
        }
    }
}

/// Accept until `stop`, then give the connections [`STOP_GRACE`] to finish
/// and abort the rest.
pub(super) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Every connection task: at most max_connections in the pool plus
    // probe_slots probes, as finished ones are reaped after every accept.
    let mut tasks = JoinSet::new();
    // The probe tasks, oldest first, to close the oldest when full.
    let mut probes: VecDeque<AbortHandle> = VecDeque::new();
    let mut tick = tokio::time::interval(STOP_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => dispatch(stream, peer, &shared, &mut tasks, &mut probes),
                Err(e) if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) => {}
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS...: back off instead of spinning.
                    shared.logs.log("accept failed", |n| {
                        warn!(error = %e, suppressed = n, "admin http: accept failed");
                    });
                    tokio::time::sleep(STOP_POLL).await;
                }
            },
            _ = tick.tick() => {}
        }
        while tasks.try_join_next().is_some() {}
        if shared.stopping() {
            break;
        }
    }
    drop(listener);
    shared.shutdown.send_replace(true);
    let grace = shared.cfg.io_timeout.min(STOP_GRACE);
    let _ = tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    tasks.shutdown().await;
    info!("admin http stopped");
}

fn dispatch(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    tasks: &mut JoinSet<()>,
    probes: &mut VecDeque<AbortHandle>,
) {
    let _ = stream.set_nodelay(true);
    let ip = peer.ip().to_canonical();
    let stats = &shared.cfg.stats;
    // Only this loop takes places, so check-then-act is exact.
    if shared.active.load(Ordering::Acquire) >= shared.cfg.max_connections {
        stats.over_pool.fetch_add(1, Ordering::Relaxed);
        let limit = shared.cfg.max_connections;
        shared.logs.log("pool full", |n| {
            warn!(%peer, limit, suppressed = n, "admin http: too many connections; only /health and /ready are answered");
        });
        probe(stream, peer, shared, tasks, probes);
        return;
    }
    {
        let mut peers = shared.peers();
        let n = peers.entry(ip).or_insert(0);
        if *n >= shared.cfg.max_connections_per_peer {
            drop(peers);
            stats.over_peer_cap.fetch_add(1, Ordering::Relaxed);
            let limit = shared.cfg.max_connections_per_peer;
            shared.logs.log("peer cap", |n| {
                warn!(%peer, limit, suppressed = n, "admin http: too many connections from this peer; only /health and /ready are answered");
            });
            probe(stream, peer, shared, tasks, probes);
            return;
        }
        *n += 1;
    }
    shared.active.fetch_add(1, Ordering::AcqRel);
    stats.active.fetch_add(1, Ordering::Relaxed);
    stats.accepted.fetch_add(1, Ordering::Relaxed);
    let slot = Slot {
        shared: Arc::clone(shared),
        ip,
    };
    let shared = Arc::clone(shared);
    tasks.spawn(async move {
        let _slot = slot;
        conn::serve(shared, stream, peer, Mode::Pool).await;
    });
}

/// Serve `stream` in a probe slot, closing the longest-waiting probe when
/// all are taken (it had the most time to send its request).
fn probe(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    tasks: &mut JoinSet<()>,
    probes: &mut VecDeque<AbortHandle>,
) {
    probes.retain(|p| !p.is_finished());
    if probes.len() >= shared.cfg.probe_slots {
        if let Some(oldest) = probes.pop_front() {
            oldest.abort();
            shared
                .cfg
                .stats
                .probes_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }
    let shared = Arc::clone(shared);
    probes.push_back(tasks.spawn(conn::serve(shared, stream, peer, Mode::Probe)));
}
