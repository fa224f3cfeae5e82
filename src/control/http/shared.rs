//! What every connection of the admin server shares: its configuration,
//! the token, the handler, the pool and per-peer counts, the log throttle.
//! (Its own file so that the accept loop and the connections both look
//! down at it rather than at each other.)

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{Handler, HttpConfig, TokenCell};

pub(crate) struct Shared {
    pub(super) cfg: HttpConfig,
    pub(super) token: TokenCell,
    pub(super) handler: Handler,
    pub(super) stop: Arc<AtomicBool>,
    /// Set once `stop` was seen: connections finish the request in hand and
    /// close.
    pub(super) shutdown: watch::Sender<bool>,
    /// Connections in the pool.
    pub(super) active: AtomicUsize,
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

    pub(super) fn peers(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One connection's place in the pool and in its peer's count, released on
/// drop (also when its task is aborted).
pub(super) struct Slot {
    pub(super) shared: Arc<Shared>,
    pub(super) ip: IpAddr,
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
