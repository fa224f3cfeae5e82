//! The data plane: pinned worker threads running the io loop and the
//! pipeline, their admission control, counters and the slow-path threads.
//!
//! - [`worker`]: one handler per worker (io loop → pipeline → counting) and
//!   the [`worker::Server`] that starts them;
//! - [`limits`]: per-source rate limits, the answer budget, overload
//!   detection (admission);
//! - [`location_store`]: the location service's redb file (group commit,
//!   recovery);
//! - [`stats`]: per-worker counters and latency histograms, merged on read;
//! - [`slow`]: the bounded queue and threads of the policy gate;
//! - [`registrar`]: the registrar thread, the location service's one
//!   writer (group commits to its redb store).
//!
//! Below the control plane: it takes its settings as values and knows
//! nothing of the configuration file.

pub mod limits;
pub mod location_store;
pub mod registrar;
pub mod slow;
pub mod stats;
pub mod streams;
pub mod worker;
