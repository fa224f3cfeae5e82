//! The accept loop: the pool, the per-peer cap, the probe slots, stop.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinSet};
use tracing::{info, warn};

use super::conn::{self, Mode};
use super::shared::{Shared, Slot};
use super::STOP_GRACE;

/// How often the accept loop looks at `stop`.
const STOP_POLL: Duration = Duration::from_millis(50);

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
