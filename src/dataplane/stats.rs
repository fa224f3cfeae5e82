//! Per-worker counters and latency histograms, merged on read.
//!
//! Each worker owns one [`WorkerStats`]; only that worker writes it (plain
//! load+store on relaxed atomics: no locked instruction, no shared cache line
//! written by two cores). Readers (the signal handler's final report, later
//! the metrics endpoint) sum over workers. Latency is recorded into a
//! worker-local hdrhistogram and folded into a shared one about four times a
//! second with `try_lock`, so the hot path never waits for a reader.

use crate::route::{DropReason, ForwardKind};
use crate::sip::scan::Method;
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Status codes the edge itself answers with (anything else is `other`).
pub const REPLY_CODES: [u16; 10] = [200, 400, 403, 404, 416, 482, 483, 505, 513, 503];

const N_METHODS: usize = Method::ALL.len();
const RX_REQ: usize = 0;
const RX_RESP: usize = RX_REQ + N_METHODS;
const FWD: usize = RX_RESP + 6;
const RELAY: usize = FWD + ForwardKind::ALL.len();
const REPLY: usize = RELAY + 6;
const DROP: usize = REPLY + REPLY_CODES.len() + 1;
const SEND_ERR: usize = DROP + DropReason::ALL.len();
const RECV_ERR: usize = SEND_ERR + 1;
const SLOW_QUEUED: usize = RECV_ERR + 1;
const SLOW_FULL: usize = SLOW_QUEUED + 1;
const RATE_LIMITED: usize = SLOW_FULL + 1;
const REGISTRAR_QUEUED: usize = RATE_LIMITED + 1;
const N_COUNTERS: usize = REGISTRAR_QUEUED + 1;

/// Histogram range: 1 ns .. 10 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("static histogram bounds are valid")
}

#[repr(align(128))]
pub struct WorkerStats {
    c: [AtomicU64; N_COUNTERS],
    per_shard: Box<[AtomicU64]>,
    pub latency: Mutex<Histogram<u64>>,
}

#[inline]
fn bump(c: &AtomicU64) {
    // Single writer: a plain read-modify-write is exact and avoids `lock xadd`.
    c.store(c.load(Relaxed).wrapping_add(1), Relaxed);
}

fn class(code: u16) -> usize {
    (usize::from(code / 100)).clamp(1, 6) - 1
}

impl WorkerStats {
    pub fn new(shards: usize) -> WorkerStats {
        WorkerStats {
            c: std::array::from_fn(|_| AtomicU64::new(0)),
            per_shard: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            latency: Mutex::new(new_histogram()),
        }
    }
    pub fn rx_request(&self, m: Method) {
        // By discriminant: `Method::ALL` lists every variant in order
        // (checked by `enum_indexes_are_discriminants`).
        bump(&self.c[RX_REQ + m as usize]);
    }
    pub fn rx_response(&self, code: u16) {
        bump(&self.c[RX_RESP + class(code)]);
    }
    pub fn forwarded(&self, k: ForwardKind, shard: Option<u16>) {
        bump(&self.c[FWD + k as usize]);
        if let Some(s) = shard.and_then(|s| self.per_shard.get(usize::from(s))) {
            bump(s);
        }
    }
    pub fn relayed(&self, code: u16) {
        bump(&self.c[RELAY + class(code)]);
    }
    pub fn replied(&self, code: u16) {
        let i = REPLY_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(REPLY_CODES.len());
        bump(&self.c[REPLY + i]);
    }
    pub fn dropped(&self, r: DropReason) {
        bump(&self.c[DROP + r as usize]);
    }
    pub fn send_error(&self) {
        bump(&self.c[SEND_ERR]);
    }
    pub fn recv_error(&self) {
        bump(&self.c[RECV_ERR]);
    }
    pub fn slow_queued(&self) {
        bump(&self.c[SLOW_QUEUED]);
    }
    pub fn slow_full(&self) {
        bump(&self.c[SLOW_FULL]);
    }
    pub fn registrar_queued(&self) {
        bump(&self.c[REGISTRAR_QUEUED]);
    }
    pub fn rate_limited(&self) {
        bump(&self.c[RATE_LIMITED]);
    }
}

/// A merged, plain-number view over all workers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub rx_requests: Vec<(&'static str, u64)>,
    pub rx_responses: [u64; 6],
    pub forwarded: Vec<(&'static str, u64)>,
    pub relayed: [u64; 6],
    pub replies: Vec<(u16, u64)>,
    pub replies_other: u64,
    pub drops: Vec<(&'static str, u64)>,
    pub send_errors: u64,
    pub recv_errors: u64,
    /// Handed to the slow path / refused because its queue was full.
    pub slow_queued: u64,
    pub slow_full: u64,
    /// Datagrams over their source's rate (answered 503 or dropped).
    pub rate_limited: u64,
    /// Handed to the registrar thread.
    pub registrar_queued: u64,
    pub per_shard: Vec<u64>,
}

impl Snapshot {
    pub fn merge(workers: &[std::sync::Arc<WorkerStats>]) -> Snapshot {
        let sum = |i: usize| workers.iter().map(|w| w.c[i].load(Relaxed)).sum::<u64>();
        let shards = workers.first().map_or(0, |w| w.per_shard.len());
        Snapshot {
            rx_requests: Method::ALL
                .iter()
                .enumerate()
                .map(|(i, m)| (m.name(), sum(RX_REQ + i)))
                .collect(),
            rx_responses: std::array::from_fn(|i| sum(RX_RESP + i)),
            forwarded: ForwardKind::ALL
                .iter()
                .enumerate()
                .map(|(i, k)| (k.name(), sum(FWD + i)))
                .collect(),
            relayed: std::array::from_fn(|i| sum(RELAY + i)),
            replies: REPLY_CODES
                .iter()
                .enumerate()
                .map(|(i, c)| (*c, sum(REPLY + i)))
                .collect(),
            replies_other: sum(REPLY + REPLY_CODES.len()),
            drops: DropReason::ALL
                .iter()
                .enumerate()
                .map(|(i, r)| (r.name(), sum(DROP + i)))
                .collect(),
            send_errors: sum(SEND_ERR),
            recv_errors: sum(RECV_ERR),
            slow_queued: sum(SLOW_QUEUED),
            slow_full: sum(SLOW_FULL),
            rate_limited: sum(RATE_LIMITED),
            registrar_queued: sum(REGISTRAR_QUEUED),
            per_shard: (0..shards)
                .map(|s| workers.iter().map(|w| w.per_shard[s].load(Relaxed)).sum())
                .collect(),
        }
    }

    pub fn drop_count(&self, name: &str) -> u64 {
        self.drops
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| *v)
    }
    pub fn reply_count(&self, code: u16) -> u64 {
        self.replies
            .iter()
            .find(|(c, _)| *c == code)
            .map_or(0, |(_, v)| *v)
    }
    pub fn forward_count(&self, kind: &str) -> u64 {
        self.forwarded
            .iter()
            .find(|(n, _)| *n == kind)
            .map_or(0, |(_, v)| *v)
    }
}

/// Merged latency of all workers.
pub fn merged_latency(workers: &[std::sync::Arc<WorkerStats>]) -> Histogram<u64> {
    let mut h = new_histogram();
    for w in workers {
        if let Ok(l) = w.latency.lock() {
            let _ = h.add(&*l);
        }
    }
    h
}

impl std::fmt::Display for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nz = |v: &[(&'static str, u64)]| {
            v.iter()
                .filter(|(_, c)| *c > 0)
                .map(|(n, c)| format!("{n}={c}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let classes = |v: &[u64; 6]| {
            v.iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| format!("{}xx={c}", i + 1))
                .collect::<Vec<_>>()
                .join(" ")
        };
        writeln!(f, "requests received:   {}", nz(&self.rx_requests))?;
        writeln!(f, "responses received:  {}", classes(&self.rx_responses))?;
        writeln!(f, "requests forwarded:  {}", nz(&self.forwarded))?;
        writeln!(f, "responses relayed:   {}", classes(&self.relayed))?;
        let replies: Vec<String> = self
            .replies
            .iter()
            .filter(|(_, c)| *c > 0)
            .map(|(code, c)| format!("{code}={c}"))
            .collect();
        writeln!(
            f,
            "answered by edge:    {} other={}",
            replies.join(" "),
            self.replies_other
        )?;
        writeln!(f, "dropped:             {}", nz(&self.drops))?;
        let shards: Vec<String> = self
            .per_shard
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| format!("#{i}={c}"))
            .collect();
        writeln!(f, "forwards per shard:  {}", shards.join(" "))?;
        writeln!(
            f,
            "slow path:           queued={} full={}",
            self.slow_queued, self.slow_full
        )?;
        write!(
            f,
            "io errors:           send={} recv={}",
            self.send_errors, self.recv_errors
        )
    }
}

#[cfg(test)]
mod enum_index_tests {
    use super::*;

    /// Counters are indexed by discriminant: each `ALL` must list its
    /// enum's variants in declaration order, every one of them.
    #[test]
    fn enum_indexes_are_discriminants() {
        for (i, m) in Method::ALL.iter().enumerate() {
            assert_eq!(*m as usize, i, "{m:?}");
        }
        assert_eq!(Method::ALL.len(), Method::Other as usize + 1);
        for (i, k) in ForwardKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i, "{k:?}");
        }
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
        assert_eq!(
            DropReason::ALL.len(),
            DropReason::RegistrarBusy as usize + 1
        );
    }
}
