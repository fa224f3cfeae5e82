//! The seed's routing (OMA CPM 5.2.3.2, Appendix C) as pure functions from
//! a scanned message + immutable tables to a decision.
//!
//! - [`legs`]: the three legs of a CPM Session Invitation and their Route
//!   marker (the wire contract with Conversation Servers);
//! - [`shards`]: CS shards, rendezvous hashing of users onto them;
//! - [`groups`]: pre-defined group identity → hosting shard;
//! - [`location`]: the location service (AoR → registered contacts, flow →
//!   AoR), lock-free for readers, one writer (the registrar);
//! - [`tables`]: everything above plus the edge's own identity, one
//!   immutable snapshot;
//! - [`policy`]: which media policy applies to a request on which leg;
//! - [`decision`]: `Forward | Relay | Reply | Drop` for one scanned message.

pub mod decision;
pub mod groups;
pub mod legs;
pub mod location;
pub mod policy;
pub mod shards;
pub mod tables;

pub use decision::{decide, Decision, DropReason, ForwardKind};
pub use tables::Tables;

use crate::sip::rewrite::MaxForwards;
use crate::sip::scan::Message;

/// Max-Forwards handling shared by decision and tests: absent → `limit`
/// inserted; 0 → `None` (`483`); else the value, lowered to `limit` first,
/// minus one.
pub(crate) fn next_max_forwards(m: &Message, limit: u32) -> Option<MaxForwards> {
    match m.max_forwards {
        None => Some(MaxForwards::Insert(limit)),
        Some((_, 0)) => None,
        Some((span, v)) => Some(MaxForwards::Replace(span, v.min(limit) - 1)),
    }
}
