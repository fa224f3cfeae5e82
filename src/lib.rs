//! cpm-edge: a CPM-aware stateless SIP edge proxy (OMA CPM, seed 5.2.3.2).
//!
//! Layers, each importing only the layers below it (checked by
//! `tests/layers.rs`):
//!
//! | layer | modules | what |
//! |---|---|---|
//! | 0 | `sip`, `io` | sans-IO SIP over bytes; datagram io that knows no SIP |
//! | 1 | `route` | seed 5.2.3.2 routing: legs, shards, groups, policy table, decision |
//! | 2 | `pipeline` | scan → admit → decide → policy gate → write |
//! | 2 | `cs` | the Conversation Server's functions, sans-IO |
//! | 2 | `registrar` | the edge's registrar (RFC 3261 §10.3, digest), sans-IO |
//! | 2 | `iwf` | the Interworking Function's conversions (seed 5.3: SMS), sans-IO |
//! | 3 | `dataplane` | workers, admission, counters, slow-path threads |
//! | 3 | `csnode` | a Conversation Server shard running: io thread, group sync |
//! | 3 | `iwfnode` | the SMS Interworking Function running: SIP thread, Kannel client |
//! | 4 | `config`, `control` | configuration, admin API, health checks, metrics |
//! | 5 | `app` | the running edge: data plane + control plane wired |
pub mod app;
pub mod config;
pub mod control;
pub mod cs;
pub mod csnode;
pub mod dataplane;
pub mod io;
pub mod iwf;
pub mod iwfnode;
pub mod pipeline;
pub mod registrar;
pub mod route;
pub mod sip;
