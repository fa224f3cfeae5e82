//! The control plane: everything that changes what the workers route on,
//! while they run, and everything that reports on them.
//!
//! - [`ControlPlane`]: the one writer of the published [`Tables`] snapshot
//!   (admin API, health transitions, SIGHUP reload all go through
//!   [`ControlPlane::publish`]);
//! - [`api`]: the admin HTTP API's endpoints; [`http`]: its HTTP/1.1 server;
//! - [`health`]: SIP OPTIONS keepalives to every shard;
//! - [`metrics`]: Prometheus text exposition.
//!
//! Invariants: writers are serialised; a change is built on a private copy
//! and published whole, or refused whole (the running table is untouched);
//! readers (io workers) never wait for a writer.

pub mod api;
pub mod health;
pub mod http;
pub mod metrics;

use crate::config::Valid;
use crate::io::IoBackend;
use crate::policy::slow::{SlowQueue, SlowStats};
use crate::route::shards::ShardState;
use crate::route::Tables;
use crate::stats::WorkerStats;
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

/// A refused change: HTTP status and a message naming what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

/// Health transition counts of one shard.
#[derive(Debug, Clone, Copy, Default)]
pub struct Transitions {
    pub down: u64,
    pub up: u64,
}

pub struct ControlPlane {
    pub tables: Arc<ArcSwap<Tables>>,
    pub stats: Vec<Arc<WorkerStats>>,
    pub backend: IoBackend,
    pub workers: usize,
    /// The configuration the edge runs (for `GET /config`), replaced on reload.
    pub config: Mutex<Valid>,
    writer: Mutex<()>,
    transitions: Mutex<BTreeMap<String, Transitions>>,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub api_changes: AtomicU64,
    /// The slow path's queue (for its depth) and counters.
    pub slow: Option<(SlowQueue, Arc<SlowStats>)>,
}

impl ControlPlane {
    pub fn new(
        tables: Arc<ArcSwap<Tables>>,
        stats: Vec<Arc<WorkerStats>>,
        backend: IoBackend,
        config: Valid,
    ) -> ControlPlane {
        ControlPlane {
            tables,
            stats,
            backend,
            workers: config.workers,
            config: Mutex::new(config),
            writer: Mutex::new(()),
            transitions: Mutex::new(BTreeMap::new()),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            api_changes: AtomicU64::new(0),
            slow: None,
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Tables> {
        self.tables.load_full()
    }

    /// Apply `change` to a private copy of the tables and publish it whole,
    /// or publish nothing when it fails.
    pub fn publish<R>(
        &self,
        change: impl FnOnce(&mut Tables) -> Result<R, ApiError>,
    ) -> Result<R, ApiError> {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = Tables::clone(&self.tables.load());
        let r = change(&mut next)?;
        next.generation += 1;
        self.tables.store(Arc::new(next));
        Ok(r)
    }

    /// A health transition of shard `name` (from the OPTIONS checker).
    pub fn set_health(&self, name: &str, up: bool) {
        let r = self.publish(|t| {
            let i = t
                .shards
                .by_name(name)
                .ok_or_else(|| ApiError::new(404, format!("unknown shard '{name}'")))?;
            let cur = t.shards.get(i).state;
            let next = match (cur, up) {
                (ShardState::Down, true) => ShardState::Up,
                (ShardState::Up | ShardState::Draining, false) => ShardState::Down,
                _ => return Ok(false),
            };
            t.shards.set_state(i, next);
            Ok(true)
        });
        if let Ok(true) = r {
            let mut tr = self.transitions.lock().unwrap_or_else(|p| p.into_inner());
            let e = tr.entry(name.to_string()).or_default();
            if up {
                e.up += 1;
                tracing::info!(shard = name, "shard up: its users and groups move back");
            } else {
                e.down += 1;
                tracing::warn!(
                    shard = name,
                    "shard down: users move to their next choice, groups to the backup or 503"
                );
            }
        }
    }

    pub fn transitions(&self) -> BTreeMap<String, Transitions> {
        self.transitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replace shards, groups and routing knobs by a re-read configuration,
    /// keeping the health state of shards that stay (by name). The listen
    /// address and workers need a restart; a change there is reported.
    pub fn reload(&self, v: Valid) -> Result<Vec<String>, ApiError> {
        let mut notes = Vec::new();
        {
            let cur = self.config.lock().unwrap_or_else(|p| p.into_inner());
            if cur.listen != v.listen || cur.workers != v.workers || cur.advertise != v.advertise {
                notes.push(
                    "listen/advertise/workers changed: takes effect at the next restart"
                        .to_string(),
                );
            }
        }
        self.publish(|t| {
            let mut next = Tables::from_config(&v);
            for (i, s) in next
                .shards
                .live()
                .map(|(i, s)| (i, s.name.clone()))
                .collect::<Vec<_>>()
            {
                if let Some(old) = t.shards.by_name(&s) {
                    next.shards.set_state(i, t.shards.get(old).state);
                }
            }
            next.generation = t.generation;
            *t = next;
            Ok(())
        })?;
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = v;
        Ok(notes)
    }
}
