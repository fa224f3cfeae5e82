//! cpm-edge: a CPM-aware stateless SIP edge proxy (OMA CPM, seed 5.2.3.2).
//!
//! Module map (hot path: `sip`, `route`, `io`; control plane: `config`,
//! `stats`; the process wiring lives in `worker` and `main.rs`):
pub mod app;
pub mod config; // TOML schema, validation with precise errors, embedded default
pub mod control;
pub mod io; // datagram io: io_uring, recvmmsg/sendmmsg fallback, sockets
pub mod policy;
pub mod route; // seed 5.2.3.2 routing: legs, shards, groups, tables, decision
pub mod sip; // sans-IO SIP: scan, grammar helpers, rewrite, stateless replies
pub mod stats; // per-worker counters and latency histograms, merged on read
pub mod worker; // pinned worker threads: io loop + pipeline + counting // admin API, health checks, metrics, live table updates // the running edge: workers + control plane + admin API + health // slow path: SDP parser, media policy (seed 5.2.3.7), policy threads
