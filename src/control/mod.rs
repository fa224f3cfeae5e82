//! The control plane: everything that changes what the workers route on,
//! while they run, and everything that reports on them.
//!
//! - [`ControlPlane`]: the one writer of the published [`Tables`] snapshot
//!   (admin API, health transitions, SIGHUP reload all go through
//!   [`ControlPlane::publish`]);
//! - [`api`]: the admin HTTP API's endpoints; [`http`]: its HTTP/1.1 server;
//! - [`cs_api`]: the Conversation Server's admin API (users, groups, its
//!   shards' counters), on the same HTTP server;
//! - [`health`]: SIP OPTIONS keepalives to every shard;
//! - [`metrics`]: Prometheus text exposition.
//!
//! Invariants: writers are serialised; a change is built on a private copy
//! and published whole, or refused whole (the running table is untouched);
//! readers (io workers) never wait for a writer.

pub mod api;
pub mod cs_api;
pub mod health;
pub mod http;
pub mod metrics;
pub mod registrar_api;

use crate::config::Valid;
use crate::dataplane::slow::SlowQueue;
use crate::dataplane::stats::WorkerStats;
use crate::dataplane::worker::LiveAdmission;
use crate::io::IoBackend;
use crate::pipeline::gate::GateStats;
use crate::route::shards::ShardState;
use crate::route::Tables;
use arc_swap::ArcSwap;
use http::{HttpStats, TokenCell};
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

/// A setting bound at start (a socket, a thread, a buffer) that a reload
/// found changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedChange {
    pub key: &'static str,
    pub from: String,
    pub to: String,
}

/// Why a reload applied nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    /// Settings bound at start changed: restart to apply them.
    #[error("reload refused: {}; restart to apply", changed(.0))]
    NeedsRestart(Vec<FixedChange>),
    /// The new configuration does not validate.
    #[error("reload refused: {0}; running configuration unchanged")]
    Invalid(String),
}

fn changed(changes: &[FixedChange]) -> String {
    let list: Vec<String> = changes
        .iter()
        .map(|c| format!("{} changed {} -> {}", c.key, c.from, c.to))
        .collect();
    list.join(", ")
}

/// The settings of `next` that differ from `cur` although they were bound
/// at start: the UDP sockets and workers, the admin listener, the health
/// checker, the slow-path threads and queue, the log filter.
pub fn fixed_changes(cur: &Valid, next: &Valid) -> Vec<FixedChange> {
    fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
        v.as_ref().map_or("off".to_string(), T::to_string)
    }
    fn health(h: &Option<crate::config::HealthSettings>) -> String {
        h.map_or("off".to_string(), |h| {
            format!(
                "interval_ms={} timeout_ms={} fail_threshold={} ok_threshold={}",
                h.interval.as_millis(),
                h.timeout.as_millis(),
                h.fail_threshold,
                h.ok_threshold
            )
        })
    }
    let al = |a: &crate::config::AdminLimits| {
        format!(
            "max_connections={} max_connections_per_peer={} probe_slots={} header_timeout_ms={}",
            a.max_connections,
            a.max_connections_per_peer,
            a.probe_slots,
            a.header_timeout.as_millis()
        )
    };
    let reg = |v: &Valid| {
        v.registrar.as_ref().map_or("off".to_string(), |r| {
            format!(
                "domains={:?} store={:?} require_registration={} max_aors={}",
                r.settings.domains, r.store, r.require_registration, r.max_aors
            )
        })
    };
    let pairs: [(&'static str, String, String); 19] = [
        ("registrar", reg(cur), reg(next)),
        // The files' contents are re-read on reload; where they are is not.
        (
            "tcp",
            format!("{:?}", cur.server.tcp),
            format!("{:?}", next.server.tcp),
        ),
        (
            "tls",
            format!("{:?}", cur.server.tls),
            format!("{:?}", next.server.tls),
        ),
        (
            "listen.addr",
            cur.server.listen.to_string(),
            next.server.listen.to_string(),
        ),
        (
            "listen.advertise",
            cur.advertise.clone(),
            next.advertise.clone(),
        ),
        (
            "workers.count",
            cur.server.workers.count.to_string(),
            next.server.workers.count.to_string(),
        ),
        (
            "workers.cpus",
            format!("{:?}", cur.server.workers.cpus),
            format!("{:?}", next.server.workers.cpus),
        ),
        (
            "workers.io",
            format!("{:?}", cur.server.workers.io),
            format!("{:?}", next.server.workers.io),
        ),
        (
            "workers.batch",
            cur.server.workers.batch.to_string(),
            next.server.workers.batch.to_string(),
        ),
        (
            "workers.recv_buffers",
            cur.server.workers.recv_buffers.to_string(),
            next.server.workers.recv_buffers.to_string(),
        ),
        (
            "workers.max_datagram",
            cur.server.workers.max_datagram.to_string(),
            next.server.workers.max_datagram.to_string(),
        ),
        (
            "workers.socket_rcvbuf",
            cur.server.workers.socket_rcvbuf.to_string(),
            next.server.workers.socket_rcvbuf.to_string(),
        ),
        (
            "workers.socket_sndbuf",
            cur.server.workers.socket_sndbuf.to_string(),
            next.server.workers.socket_sndbuf.to_string(),
        ),
        ("admin.bind", opt(&cur.admin_bind), opt(&next.admin_bind)),
        (
            "admin limits",
            al(&cur.admin_limits),
            al(&next.admin_limits),
        ),
        ("health", health(&cur.health), health(&next.health)),
        (
            "slow_path.threads",
            cur.server.slow_path.threads.to_string(),
            next.server.slow_path.threads.to_string(),
        ),
        (
            "slow_path.queue",
            cur.server.slow_path.queue.to_string(),
            next.server.slow_path.queue.to_string(),
        ),
        ("log.level", cur.log_level.clone(), next.log_level.clone()),
    ];
    pairs
        .into_iter()
        .filter(|(_, a, b)| a != b)
        .map(|(key, from, to)| FixedChange { key, from, to })
        .collect()
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
    pub slow: Option<(SlowQueue, Arc<GateStats>)>,
    /// The workers' admission settings (`[limits]`), swapped on reload.
    pub admission: Option<LiveAdmission>,
    /// The admin API's bearer token, swapped on reload.
    pub admin_token: Option<TokenCell>,
    /// The admin HTTP server's counters (for `/metrics`).
    pub http_stats: Option<Arc<HttpStats>>,
    /// The registrar's location service, credentials and counters.
    pub registrar: Option<registrar_api::RegistrarHandle>,
    /// The TLS listeners' certificates, re-read on reload.
    pub tls: Option<Arc<crate::dataplane::streams::TlsCerts>>,
    /// The stream side's counters (for `/metrics`).
    pub streams: Option<Arc<crate::dataplane::streams::StreamStats>>,
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
            workers: config.server.workers.count,
            config: Mutex::new(config),
            writer: Mutex::new(()),
            transitions: Mutex::new(BTreeMap::new()),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            api_changes: AtomicU64::new(0),
            slow: None,
            admission: None,
            admin_token: None,
            http_stats: None,
            registrar: None,
            tls: None,
            streams: None,
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

    /// A health transition of shard or IWF `name` (from the OPTIONS
    /// checker).
    pub fn set_health(&self, name: &str, up: bool) {
        if name.starts_with("iwf:") {
            return self.set_iwf_health(name, up);
        }
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
            self.count_transition(name, up);
            if up {
                tracing::info!(shard = name, "shard up: its users and groups move back");
            } else {
                tracing::warn!(
                    shard = name,
                    "shard down: users move to their next choice, groups to the backup or 503"
                );
            }
        }
    }

    /// One more up or down of `name` in [`Self::transitions`].
    fn count_transition(&self, name: &str, up: bool) {
        let mut tr = self.transitions.lock().unwrap_or_else(|p| p.into_inner());
        let e = tr.entry(name.to_string()).or_default();
        if up {
            e.up += 1;
        } else {
            e.down += 1;
        }
    }

    /// An Interworking Function's transition: a dead one gets no request
    /// (its service's others take them, or the CS hears `503 No
    /// Interworking Function` at once rather than a timeout).
    fn set_iwf_health(&self, name: &str, up: bool) {
        let r = self.publish(|t| {
            let i = t
                .iwfs
                .iter()
                .position(|i| i.health_name() == name)
                .ok_or_else(|| ApiError::new(404, format!("unknown IWF '{name}'")))?;
            let changed = t.iwfs[i].up != up;
            t.iwfs[i].up = up;
            Ok(changed)
        });
        if let Ok(true) = r {
            self.count_transition(name, up);
            if up {
                tracing::info!(iwf = name, "interworking function up");
            } else {
                tracing::warn!(
                    iwf = name,
                    "interworking function down: its service's others or 503"
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

    /// Apply a re-read configuration whole: shards, groups, hosts, routing
    /// knobs and policies (keeping the health state of shards that stay, by
    /// name), the `[limits]` the workers follow and the admin token. A change
    /// of a setting bound at start ([`fixed_changes`]) refuses everything.
    pub fn reload(&self, v: Valid) -> Result<(), ReloadError> {
        let fixed = {
            let cur = self.config.lock().unwrap_or_else(|p| p.into_inner());
            fixed_changes(&cur, &v)
        };
        if !fixed.is_empty() {
            return Err(ReloadError::NeedsRestart(fixed));
        }
        // First: a certificate that no longer loads refuses the whole
        // reload, as an invalid file does.
        if let Some(t) = &self.tls {
            t.reload().map_err(ReloadError::Invalid)?;
        }
        self.publish(|t| {
            let mut next = v.tables();
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
            // The location service is live state, not configuration.
            next.registrar = t.registrar.clone();
            *t = next;
            Ok(())
        })
        .map_err(|e| ReloadError::Invalid(e.message))?;
        if let Some(a) = &self.admission {
            a.store(Arc::new(v.admission()));
        }
        if let Some(t) = &self.admin_token {
            t.store(v.admin_token.clone().map(Arc::new));
        }
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = v;
        Ok(())
    }
}
