//! `/metrics`: the per-worker counters summed on scrape, shard states, the
//! control plane's and the admin server's counters and the kernel's view of
//! the workers' sockets, through prometheus-client's registry and its
//! Prometheus text encoder (format 0.0.4); then the latency summary, which
//! prometheus-client has no type for, in the same format by hand.
//!
//! Each scrape builds a registry of collectors that read their source as
//! they are encoded: atomics, the published table snapshot, the histogram
//! locks only briefly. The hot path is never touched.

use super::http::HttpStats;
use super::{ControlPlane, Transitions};
use crate::dataplane::slow::SlowQueue;
use crate::dataplane::stats::{merged_latency, Snapshot, WorkerStats};
use crate::pipeline::gate::GateStats;
use crate::route::shards::ShardState;
use crate::route::Tables;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "6xx"];

/// The whole exposition of `cp`.
pub fn render(cp: &ControlPlane) -> String {
    let tables = cp.snapshot();
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Workers {
        stats: cp.stats.clone(),
        tables: Arc::clone(&tables),
        slow: cp.slow.clone(),
    }));
    registry.register_collector(Box::new(Routing {
        tables,
        transitions: cp.transitions(),
    }));
    registry.register_collector(Box::new(Control {
        backend: cp.backend.name(),
        workers: cp.workers as u64,
        reloads_ok: cp.reloads_ok.load(Relaxed),
        reloads_failed: cp.reloads_failed.load(Relaxed),
        api_changes: cp.api_changes.load(Relaxed),
    }));
    if let Some(h) = &cp.http_stats {
        registry.register_collector(Box::new(AdminHttp(Arc::clone(h))));
    }
    if let Some(r) = &cp.registrar {
        registry.register_collector(Box::new(Registrar {
            stats: Arc::clone(&r.stats),
            aors: r.location.len() as u64,
            bindings: r.location.bindings() as u64,
        }));
    }
    if let Some(st) = &cp.streams {
        registry.register_collector(Box::new(Streams(Arc::clone(st))));
    }
    let listen_port = cp
        .config
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .server
        .listen
        .port();
    registry.register_collector(Box::new(KernelUdp { listen_port }));

    let mut out = String::with_capacity(8192);
    // Writing to a String cannot fail, and no collector returns an error.
    let _ = prometheus_text::encode(&mut out, &registry);
    let _ = latency_summary(&mut out, &cp.stats);
    out
}

/// A counter family: `name` without `_total` (the encoder adds it).
pub(super) fn counters<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

pub(super) fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    ConstCounter::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
}

pub(super) fn gauges<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// An unlabelled gauge; with no value, only its description.
pub(super) fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: impl Into<Option<u64>>,
) -> fmt::Result {
    let family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    match v.into() {
        Some(v) => ConstGauge::new(v).encode(family),
        None => Ok(()),
    }
}

/// The per-worker counters, summed when scraped ([`Snapshot::merge`]).
struct Workers {
    stats: Vec<Arc<WorkerStats>>,
    tables: Arc<Tables>,
    slow: Option<(SlowQueue, Arc<GateStats>)>,
}

impl fmt::Debug for Workers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workers")
            .field("workers", &self.stats.len())
            .finish_non_exhaustive()
    }
}

impl Collector for Workers {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let snap = Snapshot::merge(&self.stats);
        let e = &mut enc;
        counters(
            e,
            "cpm_edge_requests_received",
            "SIP requests received, per method.",
            snap.rx_requests.iter().map(|(m, v)| ([("method", *m)], *v)),
        )?;
        counters(
            e,
            "cpm_edge_responses_received",
            "SIP responses received, per class.",
            CLASSES
                .iter()
                .zip(snap.rx_responses)
                .map(|(c, v)| ([("class", *c)], v)),
        )?;
        counters(
            e,
            "cpm_edge_requests_forwarded",
            "Requests forwarded, per routing leg (seed 5.2.3.2).",
            snap.forwarded.iter().map(|(k, v)| ([("kind", *k)], *v)),
        )?;
        counters(
            e,
            "cpm_edge_responses_relayed",
            "Responses relayed along the Via path, per class.",
            CLASSES
                .iter()
                .zip(snap.relayed)
                .map(|(c, v)| ([("class", *c)], v)),
        )?;
        counters(
            e,
            "cpm_edge_replies",
            "Stateless answers sent by the edge, per status code.",
            snap.replies
                .iter()
                .map(|(c, v)| ([("code", c.to_string())], *v))
                .chain([([("code", "other".to_string())], snap.replies_other)]),
        )?;
        counter(
            e,
            "cpm_edge_rate_limited",
            "Requests over their source's rate limit (answered 503 within the answer budget, or dropped).",
            snap.rate_limited,
        )?;
        counters(
            e,
            "cpm_edge_drops",
            "Datagrams dropped without an answer, per reason.",
            snap.drops.iter().map(|(r, v)| ([("reason", *r)], *v)),
        )?;
        counters(
            e,
            "cpm_edge_io_errors",
            "Socket errors reported by the io backend.",
            [
                ([("direction", "send")], snap.send_errors),
                ([("direction", "recv")], snap.recv_errors),
            ],
        )?;
        counters(
            e,
            "cpm_edge_shard_forwards",
            "Requests forwarded to each CS shard.",
            self.tables.shards.live().map(|(i, s)| {
                let v = snap.per_shard.get(i).copied().unwrap_or(0);
                ([("shard", s.name.as_str())], v)
            }),
        )?;
        let slow = self.slow.as_ref();
        gauge(
            e,
            "cpm_edge_slow_path_queue_depth",
            "Jobs waiting in the bounded slow-path (SDP policy) queue.",
            slow.map(|(q, _)| q.depth() as u64),
        )?;
        gauge(
            e,
            "cpm_edge_slow_path_queue_capacity",
            "Capacity of the slow-path queue.",
            slow.map(|(q, _)| q.capacity() as u64),
        )?;
        let rows = slow.map(|(_, st)| {
            [("queued", snap.slow_queued), ("queue_full", snap.slow_full)]
                .into_iter()
                .chain(st.rows())
                .map(|(event, v)| ([("event", event)], v))
        });
        counters(
            e,
            "cpm_edge_slow_path",
            "Slow-path outcomes: handed over by the workers, refused (queue full, answered 503), and per result.",
            rows.into_iter().flatten(),
        )
    }
}

/// The published tables: shard states and transitions, groups, generation.
struct Routing {
    tables: Arc<Tables>,
    transitions: BTreeMap<String, Transitions>,
}

impl fmt::Debug for Routing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Routing")
            .field("generation", &self.tables.generation)
            .finish_non_exhaustive()
    }
}

impl Collector for Routing {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let e = &mut enc;
        let t = &self.tables;
        gauges(
            e,
            "cpm_edge_shard_up",
            "1 when the shard takes new users (health up, not draining).",
            t.shards.live().map(|(_, s)| {
                let up = u64::from(s.state == ShardState::Up);
                ([("shard", s.name.as_str()), ("state", s.state.name())], up)
            }),
        )?;
        counters(
            e,
            "cpm_edge_shard_transitions",
            "Health transitions of each shard.",
            self.transitions.iter().flat_map(|(name, tr)| {
                [
                    ([("shard", name.as_str()), ("to", "down")], tr.down),
                    ([("shard", name.as_str()), ("to", "up")], tr.up),
                ]
            }),
        )?;
        gauge(
            e,
            "cpm_edge_groups",
            "Pre-defined groups in the group table.",
            t.groups.len() as u64,
        )?;
        gauge(
            e,
            "cpm_edge_table_generation",
            "Generation of the published routing tables.",
            t.generation,
        )
    }
}

/// The control plane's own figures, read when the registry is built.
#[derive(Debug)]
struct Control {
    backend: &'static str,
    workers: u64,
    reloads_ok: u64,
    reloads_failed: u64,
    api_changes: u64,
}

impl Collector for Control {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let e = &mut enc;
        // An info metric: the encoder adds `_info` and the value 1.
        Info::new([("backend", self.backend)]).encode(e.encode_descriptor(
            "cpm_edge_io_backend",
            "The io backend chosen at start.",
            None,
            MetricType::Info,
        )?)?;
        gauge(e, "cpm_edge_workers", "io worker threads.", self.workers)?;
        counters(
            e,
            "cpm_edge_reloads",
            "Configuration reloads (SIGHUP).",
            [
                ([("result", "ok")], self.reloads_ok),
                ([("result", "failed")], self.reloads_failed),
            ],
        )?;
        counter(
            e,
            "cpm_edge_admin_changes",
            "Changes applied through the admin API.",
            self.api_changes,
        )
    }
}

/// The admin HTTP server's own counters: connections admitted or sent to
/// the probe slots, what the probe slots did, slow request heads.
/// The registrar thread's counters and the location service's size.
struct Registrar {
    stats: Arc<crate::dataplane::registrar::RegistrarStats>,
    aors: u64,
    bindings: u64,
}

impl fmt::Debug for Registrar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Registrar")
    }
}

impl Collector for Registrar {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let e = &mut enc;
        let s = &self.stats;
        let v = |c: &AtomicU64| c.load(Relaxed);
        gauge(
            e,
            "cpm_edge_location_aors",
            "Addresses-of-record with a binding.",
            self.aors,
        )?;
        gauge(
            e,
            "cpm_edge_location_bindings",
            "Registered contacts.",
            self.bindings,
        )?;
        counters(
            e,
            "cpm_edge_registrar_requests",
            "REGISTERs by result: 200 (bindings changed or listed), 401 challenge, refused (4xx/5xx), retransmission answered again, refused at the queue (503).",
            [
                ([("result", "registered")], v(&s.registered)),
                ([("result", "challenged")], v(&s.challenged)),
                ([("result", "refused")], v(&s.refused)),
                ([("result", "retransmission")], v(&s.retransmissions)),
                ([("result", "queue_full")], v(&s.queue_full)),
            ],
        )?;
        counters(
            e,
            "cpm_edge_registrar_store",
            "Location store group commits and their failures; bindings expired by the sweep, and unbound when their stream connection ended.",
            [
                ([("event", "commit")], v(&s.commits)),
                ([("event", "commit_error")], v(&s.commit_errors)),
                ([("event", "expired")], v(&s.expired)),
                ([("event", "connection_ended")], v(&s.unbound)),
            ],
        )?;
        counters(
            e,
            "cpm_edge_registrar_third_party",
            "Third-party REGISTERs to Participating Functions: sent, answered 2xx, failed (error, timeout, no shard).",
            [
                ([("result", "sent")], v(&s.notices_sent)),
                ([("result", "answered")], v(&s.notices_answered)),
                ([("result", "failed")], v(&s.notices_failed)),
            ],
        )
    }
}

#[derive(Debug)]
struct AdminHttp(Arc<HttpStats>);

impl Collector for AdminHttp {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let e = &mut enc;
        let h = &self.0;
        let v = |c: &AtomicU64| c.load(Relaxed);
        gauge(
            e,
            "cpm_edge_admin_http_connections",
            "Admin API connections in the pool now.",
            v(&h.active),
        )?;
        counters(
            e,
            "cpm_edge_admin_http_connections",
            "Admin API connections: given a place in the pool, or sent to the probe slots (pool full, peer at its cap).",
            [
                ([("result", "accepted")], v(&h.accepted)),
                ([("result", "pool_full")], v(&h.over_pool)),
                ([("result", "peer_cap")], v(&h.over_peer_cap)),
            ],
        )?;
        counters(
            e,
            "cpm_edge_admin_http_probe_slots",
            "Probe-slot connections: /health or /ready answered, other requests refused 503, closed unanswered.",
            [
                ([("result", "answered")], v(&h.probes_answered)),
                ([("result", "refused")], v(&h.probes_refused)),
                ([("result", "dropped")], v(&h.probes_dropped)),
            ],
        )?;
        counter(
            e,
            "cpm_edge_admin_http_header_timeouts",
            "Admin API connections closed for a request head slower than admin.header_timeout_ms.",
            v(&h.header_timeouts),
        )
    }
}

/// The TCP and TLS connections of every worker (README "Transports").
#[derive(Debug)]
struct Streams(Arc<crate::dataplane::streams::StreamStats>);

impl Collector for Streams {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let (e, s) = (&mut enc, &*self.0);
        let closed = [
            ("peer", s.closed_peer.load(Relaxed)),
            ("error", s.closed_error.load(Relaxed)),
            ("slow_reader", s.closed_slow_reader.load(Relaxed)),
            ("idle", s.closed_idle.load(Relaxed)),
            ("too_slow", s.closed_too_slow.load(Relaxed)),
            ("framing", s.closed_framing.load(Relaxed)),
            ("tls", s.closed_tls.load(Relaxed)),
            ("handshake_timeout", s.closed_handshake.load(Relaxed)),
        ];
        let opened = s.opened.load(Relaxed);
        // Every close is counted once, under one reason.
        let gone: u64 = closed.iter().map(|(_, n)| n).sum();
        gauge(
            e,
            "cpm_edge_stream_connections",
            "TCP and TLS connections open.",
            opened.saturating_sub(gone),
        )?;
        gauge(
            e,
            "cpm_edge_stream_ring_workers",
            "Workers whose connections receive through their io_uring (multishot receives on a provided-buffer group) rather than epoll readiness.",
            s.ring_workers.load(Relaxed),
        )?;
        counter(e, "cpm_edge_stream_opened", "Connections accepted.", opened)?;
        counters(
            e,
            "cpm_edge_stream_refused",
            "Connections closed at accept, by bound.",
            [
                ([("why", "total")], s.refused_total.load(Relaxed)),
                ([("why", "per_ip")], s.refused_per_ip.load(Relaxed)),
                ([("why", "tls")], s.refused_tls.load(Relaxed)),
            ],
        )?;
        counters(
            e,
            "cpm_edge_stream_closed",
            "Connections ended, by why.",
            closed.map(|(why, n)| ([("why", why)], n)),
        )?;
        let plain = [
            (
                "cpm_edge_stream_messages",
                "SIP messages framed from connections.",
                &s.messages,
            ),
            (
                "cpm_edge_stream_pongs",
                "CRLF keep-alive pongs written (RFC 5626 §4.4.1).",
                &s.pongs,
            ),
            (
                "cpm_edge_stream_mailed",
                "Responses passed to the worker that owns their connection.",
                &s.mailed,
            ),
            (
                "cpm_edge_stream_undeliverable",
                "Responses whose connection was gone.",
                &s.undeliverable,
            ),
            (
                "cpm_edge_stream_link_failed",
                "Connections to tcp/tls shards that could not be opened.",
                &s.link_failed,
            ),
        ];
        for (name, help, v) in plain {
            counter(e, name, help, v.load(Relaxed))?;
        }
        Ok(())
    }
}

/// The kernel's counters of the workers' sockets, read from /proc when
/// scraped.
#[derive(Debug)]
struct KernelUdp {
    listen_port: u16,
}

impl Collector for KernelUdp {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let e = &mut enc;
        let (queued, drops, sockets) = kernel_udp(self.listen_port);
        gauge(
            e,
            "cpm_edge_socket_rx_queue_bytes",
            "Bytes waiting in the kernel receive queues of the workers' sockets (/proc/net/udp).",
            queued,
        )?;
        counter(
            e,
            "cpm_edge_socket_drops",
            "Datagrams the kernel dropped on the workers' sockets (receive buffer full).",
            drops,
        )?;
        gauge(
            e,
            "cpm_edge_sockets",
            "Worker sockets bound to the listen port.",
            sockets,
        )
    }
}

/// `cpm_edge_latency_seconds`, a summary of the merged hdrhistograms.
fn latency_summary(o: &mut String, workers: &[Arc<WorkerStats>]) -> fmt::Result {
    let lat = merged_latency(workers);
    o.push_str(
        "# HELP cpm_edge_latency_seconds In-proxy latency from receive to send submission, merged over workers.\n\
         # TYPE cpm_edge_latency_seconds summary\n",
    );
    for q in [0.5, 0.9, 0.99, 0.999] {
        let v = if lat.is_empty() {
            0.0
        } else {
            lat.value_at_quantile(q) as f64 / 1e9
        };
        writeln!(o, "cpm_edge_latency_seconds{{quantile=\"{q}\"}} {v:.9}")?;
    }
    let sum = if lat.is_empty() {
        0.0
    } else {
        lat.mean() * lat.len() as f64 / 1e9
    };
    writeln!(o, "cpm_edge_latency_seconds_sum {sum:.9}")?;
    writeln!(o, "cpm_edge_latency_seconds_count {}", lat.len())
}

/// Sum of rx_queue and drops over the UDP sockets bound to `port`, from
/// /proc/net/udp and udp6 (the kernel's own counters; zero where absent).
fn kernel_udp(port: u16) -> (u64, u64, u64) {
    let want = format!(":{port:04X}");
    let (mut q, mut d, mut n) = (0, 0, 0);
    for f in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 13 || !cols[1].ends_with(&want) {
                continue;
            }
            let rx = cols[4]
                .split(':')
                .nth(1)
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .unwrap_or(0);
            q += rx;
            d += cols[12].parse::<u64>().unwrap_or(0);
            n += 1;
        }
    }
    (q, d, n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::io::IoBackend;
    use crate::route::shards::MAX_SHARDS;
    use std::collections::HashMap;

    /// Two workers' counters summed, every family described once, names and
    /// labels as the dashboards know them.
    #[test]
    fn exposition_sums_workers_and_keeps_names() {
        let v = Config::default_embedded()
            .validate()
            .expect("default config");
        let tables = Arc::new(v.tables());
        let (w1, w2) = (
            Arc::new(WorkerStats::new(MAX_SHARDS)),
            Arc::new(WorkerStats::new(MAX_SHARDS)),
        );
        w1.rate_limited();
        w2.rate_limited();
        w2.replied(999);
        w1.send_error();
        let mut cp = ControlPlane::new(Arc::new(tables.into()), vec![w1, w2], IoBackend::Mmsg, v);
        cp.http_stats = Some(Arc::new(HttpStats::default()));
        cp.reloads_failed.store(2, Relaxed);
        let text = render(&cp);
        for line in [
            "cpm_edge_rate_limited_total 2",
            "cpm_edge_replies_total{code=\"other\"} 1",
            "cpm_edge_io_errors_total{direction=\"send\"} 1",
            "cpm_edge_reloads_total{result=\"failed\"} 2",
            "cpm_edge_io_backend_info{backend=\"recvmmsg/sendmmsg\"} 1",
            "cpm_edge_admin_http_connections 0",
            "cpm_edge_admin_http_connections_total{result=\"accepted\"} 0",
            "# TYPE cpm_edge_requests_received_total counter",
            "# TYPE cpm_edge_latency_seconds summary",
            "cpm_edge_latency_seconds{quantile=\"0.99\"} 0.000000000",
            "cpm_edge_latency_seconds_count 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        let mut types: HashMap<&str, usize> = HashMap::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap_or("");
                *types.entry(name).or_default() += 1;
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap_or("");
                let family = ["_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(f)))
                    .unwrap_or(name);
                assert!(types.contains_key(family), "{l:?} has no TYPE before it");
            }
        }
        assert!(types.values().all(|&n| n == 1), "{types:?}");
        assert!(!text.contains("# EOF"));
    }
}
