//! Prometheus text exposition (format 0.0.4) of the per-worker counters,
//! merged on scrape, the latency histograms, shard states and the control
//! plane's own counters. Rendering reads atomics and takes the histogram
//! locks only briefly; it never touches the hot path.

use super::ControlPlane;
use crate::dataplane::stats::{merged_latency, Snapshot};
use std::fmt::Write as _;

const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "6xx"];

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Label values are shard names and fixed words; escape anyway.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The admin HTTP server's own counters: connections admitted or sent to
/// the probe slots, what the probe slots did, slow request heads.
fn admin_http(o: &mut String, h: &super::http::HttpStats) {
    let v = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    family(
        o,
        "cpm_edge_admin_http_connections",
        "gauge",
        "Admin API connection threads alive.",
    );
    let _ = writeln!(o, "cpm_edge_admin_http_connections {}", v(&h.active));
    family(
        o,
        "cpm_edge_admin_http_connections_total",
        "counter",
        "Admin API connections: given a thread, or sent to the probe slots (pool full, peer at its cap).",
    );
    for (r, c) in [
        ("accepted", &h.accepted),
        ("pool_full", &h.over_pool),
        ("peer_cap", &h.over_peer_cap),
    ] {
        let _ = writeln!(
            o,
            "cpm_edge_admin_http_connections_total{{result=\"{r}\"}} {}",
            v(c)
        );
    }
    family(
        o,
        "cpm_edge_admin_http_probe_slots_total",
        "counter",
        "Probe-slot connections: /health or /ready answered, other requests refused 503, closed unanswered.",
    );
    for (r, c) in [
        ("answered", &h.probes_answered),
        ("refused", &h.probes_refused),
        ("dropped", &h.probes_dropped),
    ] {
        let _ = writeln!(
            o,
            "cpm_edge_admin_http_probe_slots_total{{result=\"{r}\"}} {}",
            v(c)
        );
    }
    family(
        o,
        "cpm_edge_admin_http_header_timeouts_total",
        "counter",
        "Admin API connections closed for a request head slower than admin.header_timeout_ms.",
    );
    let _ = writeln!(
        o,
        "cpm_edge_admin_http_header_timeouts_total {}",
        v(&h.header_timeouts)
    );
}

pub fn render(cp: &ControlPlane) -> String {
    let snap = Snapshot::merge(&cp.stats);
    let t = cp.snapshot();
    let mut o = String::with_capacity(8192);

    family(
        &mut o,
        "cpm_edge_requests_received_total",
        "counter",
        "SIP requests received, per method.",
    );
    for (m, v) in &snap.rx_requests {
        let _ = writeln!(o, "cpm_edge_requests_received_total{{method=\"{m}\"}} {v}");
    }
    family(
        &mut o,
        "cpm_edge_responses_received_total",
        "counter",
        "SIP responses received, per class.",
    );
    for (c, v) in CLASSES.iter().zip(snap.rx_responses) {
        let _ = writeln!(o, "cpm_edge_responses_received_total{{class=\"{c}\"}} {v}");
    }
    family(
        &mut o,
        "cpm_edge_requests_forwarded_total",
        "counter",
        "Requests forwarded, per routing leg (seed 5.2.3.2).",
    );
    for (k, v) in &snap.forwarded {
        let _ = writeln!(o, "cpm_edge_requests_forwarded_total{{kind=\"{k}\"}} {v}");
    }
    family(
        &mut o,
        "cpm_edge_responses_relayed_total",
        "counter",
        "Responses relayed along the Via path, per class.",
    );
    for (c, v) in CLASSES.iter().zip(snap.relayed) {
        let _ = writeln!(o, "cpm_edge_responses_relayed_total{{class=\"{c}\"}} {v}");
    }
    family(
        &mut o,
        "cpm_edge_replies_total",
        "counter",
        "Stateless answers sent by the edge, per status code.",
    );
    for (c, v) in &snap.replies {
        let _ = writeln!(o, "cpm_edge_replies_total{{code=\"{c}\"}} {v}");
    }
    let _ = writeln!(
        o,
        "cpm_edge_replies_total{{code=\"other\"}} {}",
        snap.replies_other
    );
    family(
        &mut o,
        "cpm_edge_rate_limited_total",
        "counter",
        "Requests over their source's rate limit (answered 503 within the answer budget, or dropped).",
    );
    let _ = writeln!(o, "cpm_edge_rate_limited_total {}", snap.rate_limited);
    family(
        &mut o,
        "cpm_edge_drops_total",
        "counter",
        "Datagrams dropped without an answer, per reason.",
    );
    for (r, v) in &snap.drops {
        let _ = writeln!(o, "cpm_edge_drops_total{{reason=\"{r}\"}} {v}");
    }
    family(
        &mut o,
        "cpm_edge_io_errors_total",
        "counter",
        "Socket errors reported by the io backend.",
    );
    let _ = writeln!(
        o,
        "cpm_edge_io_errors_total{{direction=\"send\"}} {}",
        snap.send_errors
    );
    let _ = writeln!(
        o,
        "cpm_edge_io_errors_total{{direction=\"recv\"}} {}",
        snap.recv_errors
    );

    family(
        &mut o,
        "cpm_edge_shard_forwards_total",
        "counter",
        "Requests forwarded to each CS shard.",
    );
    for (i, s) in t.shards.live() {
        let v = snap.per_shard.get(i).copied().unwrap_or(0);
        let _ = writeln!(
            o,
            "cpm_edge_shard_forwards_total{{shard=\"{}\"}} {v}",
            esc(&s.name)
        );
    }
    family(
        &mut o,
        "cpm_edge_shard_up",
        "gauge",
        "1 when the shard takes new users (health up, not draining).",
    );
    for (_, s) in t.shards.live() {
        let up = u8::from(s.state == crate::route::shards::ShardState::Up);
        let _ = writeln!(
            o,
            "cpm_edge_shard_up{{shard=\"{}\",state=\"{}\"}} {up}",
            esc(&s.name),
            s.state.name()
        );
    }
    family(
        &mut o,
        "cpm_edge_shard_transitions_total",
        "counter",
        "Health transitions of each shard.",
    );
    for (name, tr) in cp.transitions() {
        let _ = writeln!(
            o,
            "cpm_edge_shard_transitions_total{{shard=\"{}\",to=\"down\"}} {}",
            esc(&name),
            tr.down
        );
        let _ = writeln!(
            o,
            "cpm_edge_shard_transitions_total{{shard=\"{}\",to=\"up\"}} {}",
            esc(&name),
            tr.up
        );
    }
    family(
        &mut o,
        "cpm_edge_groups",
        "gauge",
        "Pre-defined groups in the group table.",
    );
    let _ = writeln!(o, "cpm_edge_groups {}", t.groups.len());
    family(
        &mut o,
        "cpm_edge_table_generation",
        "gauge",
        "Generation of the published routing tables.",
    );
    let _ = writeln!(o, "cpm_edge_table_generation {}", t.generation);
    family(
        &mut o,
        "cpm_edge_io_backend_info",
        "gauge",
        "The io backend chosen at start.",
    );
    let _ = writeln!(
        o,
        "cpm_edge_io_backend_info{{backend=\"{}\"}} 1",
        cp.backend.name()
    );
    family(&mut o, "cpm_edge_workers", "gauge", "io worker threads.");
    let _ = writeln!(o, "cpm_edge_workers {}", cp.workers);
    family(
        &mut o,
        "cpm_edge_reloads_total",
        "counter",
        "Configuration reloads (SIGHUP).",
    );
    let _ = writeln!(
        o,
        "cpm_edge_reloads_total{{result=\"ok\"}} {}",
        cp.reloads_ok.load(std::sync::atomic::Ordering::Relaxed)
    );
    let _ = writeln!(
        o,
        "cpm_edge_reloads_total{{result=\"failed\"}} {}",
        cp.reloads_failed.load(std::sync::atomic::Ordering::Relaxed)
    );
    family(
        &mut o,
        "cpm_edge_admin_changes_total",
        "counter",
        "Changes applied through the admin API.",
    );
    let _ = writeln!(
        o,
        "cpm_edge_admin_changes_total {}",
        cp.api_changes.load(std::sync::atomic::Ordering::Relaxed)
    );
    if let Some(h) = &cp.http_stats {
        admin_http(&mut o, h);
    }

    let listen_port = cp
        .config
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .server
        .listen
        .port();
    let (queued, drops, sockets) = kernel_udp(listen_port);
    family(
        &mut o,
        "cpm_edge_socket_rx_queue_bytes",
        "gauge",
        "Bytes waiting in the kernel receive queues of the workers' sockets (/proc/net/udp).",
    );
    let _ = writeln!(o, "cpm_edge_socket_rx_queue_bytes {queued}");
    family(
        &mut o,
        "cpm_edge_socket_drops_total",
        "counter",
        "Datagrams the kernel dropped on the workers' sockets (receive buffer full).",
    );
    let _ = writeln!(o, "cpm_edge_socket_drops_total {drops}");
    family(
        &mut o,
        "cpm_edge_sockets",
        "gauge",
        "Worker sockets bound to the listen port.",
    );
    let _ = writeln!(o, "cpm_edge_sockets {sockets}");

    family(
        &mut o,
        "cpm_edge_slow_path_queue_depth",
        "gauge",
        "Jobs waiting in the bounded slow-path (SDP policy) queue.",
    );
    family(
        &mut o,
        "cpm_edge_slow_path_queue_capacity",
        "gauge",
        "Capacity of the slow-path queue.",
    );
    family(&mut o, "cpm_edge_slow_path_total", "counter", "Slow-path outcomes: handed over by the workers, refused (queue full, answered 503), and per result.");
    if let Some((q, st)) = &cp.slow {
        let _ = writeln!(o, "cpm_edge_slow_path_queue_depth {}", q.depth());
        let _ = writeln!(o, "cpm_edge_slow_path_queue_capacity {}", q.capacity());
        let _ = writeln!(
            o,
            "cpm_edge_slow_path_total{{event=\"queued\"}} {}",
            snap.slow_queued
        );
        let _ = writeln!(
            o,
            "cpm_edge_slow_path_total{{event=\"queue_full\"}} {}",
            snap.slow_full
        );
        for (name, v) in st.rows() {
            let _ = writeln!(o, "cpm_edge_slow_path_total{{event=\"{name}\"}} {v}");
        }
    }

    let lat = merged_latency(&cp.stats);
    family(
        &mut o,
        "cpm_edge_latency_seconds",
        "summary",
        "In-proxy latency from receive to send submission, merged over workers.",
    );
    for q in [0.5, 0.9, 0.99, 0.999] {
        let v = if lat.is_empty() {
            0.0
        } else {
            lat.value_at_quantile(q) as f64 / 1e9
        };
        let _ = writeln!(o, "cpm_edge_latency_seconds{{quantile=\"{q}\"}} {v:.9}");
    }
    let sum: f64 = if lat.is_empty() {
        0.0
    } else {
        lat.mean() * lat.len() as f64 / 1e9
    };
    let _ = writeln!(o, "cpm_edge_latency_seconds_sum {sum:.9}");
    let _ = writeln!(o, "cpm_edge_latency_seconds_count {}", lat.len());
    o
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
