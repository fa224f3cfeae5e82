//! The seed's routing (OMA CPM 5.2.3.2, Appendix C) as pure functions from
//! bytes + immutable tables to a decision, and the one-call pipeline
//! [`process`]: scan → decide → rewrite into the output buffer.
//!
//! - [`legs`]: the three legs of a CPM Session Invitation and their Route
//!   marker (the wire contract with Conversation Servers);
//! - [`shards`]: CS shards, rendezvous hashing of users onto them;
//! - [`groups`]: pre-defined group identity → hosting shard;
//! - [`tables`]: everything above plus the edge's own identity, one
//!   immutable snapshot;
//! - [`decision`]: `Forward | Reply | Drop` for one scanned message.
//!
//! Invariant: every datagram ends in exactly one [`Outcome`].

pub mod decision;
pub mod groups;
pub mod legs;
pub mod limits;
pub mod shards;
pub mod tables;

pub use decision::{decide, Decision, DropReason, ForwardKind};
pub use tables::Tables;

use crate::policy;
use crate::sip::rewrite::{forward_request, forward_response, MaxForwards, RequestPlan};
use crate::sip::scan::{scan_into, Message, StartLine};
use crate::sip::{branch, reply};
use std::net::SocketAddr;

/// What became of one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A request forwarded: `len` bytes of `out` go to `dst`.
    Forwarded {
        len: usize,
        dst: SocketAddr,
        kind: ForwardKind,
        shard: Option<u16>,
    },
    /// A response forwarded back along the Via path.
    Relayed {
        len: usize,
        dst: SocketAddr,
        code: u16,
    },
    /// A stateless answer to a request.
    Replied {
        len: usize,
        dst: SocketAddr,
        code: u16,
    },
    Dropped(DropReason),
    /// An SDP offer/answer a media policy applies to: for the slow path.
    NeedsPolicy(Decision),
}

impl Outcome {
    /// The datagram to send, if any.
    pub fn send(&self) -> Option<(usize, SocketAddr)> {
        match *self {
            Outcome::Forwarded { len, dst, .. }
            | Outcome::Relayed { len, dst, .. }
            | Outcome::Replied { len, dst, .. } => Some((len, dst)),
            Outcome::Dropped(_) | Outcome::NeedsPolicy(_) => None,
        }
    }
}

/// Scan, decide and write one datagram. Pure: no io, no clock, no allocation.
/// An SDP offer or answer that a media policy applies to is not written but
/// handed back as [`Outcome::NeedsPolicy`] for the slow path.
pub fn process(
    buf: &[u8],
    truncated: bool,
    src: SocketAddr,
    t: &Tables,
    out: &mut [u8],
) -> (Outcome, Message) {
    process_admitted(buf, truncated, src, t, out, false)
}

/// [`process`] on a worker that may be overloaded: with `shed_new_invites`,
/// an out-of-dialog INVITE is answered `503` (Retry-After) before routing,
/// while in-dialog requests, CANCEL/ACK and responses keep flowing. (The
/// worker bounds these answers with its budget; this pure entry point
/// answers every shed INVITE.)
pub fn process_admitted(
    buf: &[u8],
    truncated: bool,
    src: SocketAddr,
    t: &Tables,
    out: &mut [u8],
    shed_new_invites: bool,
) -> (Outcome, Message) {
    let mut m = Message::default();
    let o = process_into(buf, truncated, src, t, out, shed_new_invites, &mut m);
    (o, m)
}

/// [`process_admitted`] with the scan left in a caller-owned `m` (all of it
/// overwritten): keeps one `Message` instead of moving ~460 bytes out per
/// datagram.
pub fn process_into(
    buf: &[u8],
    truncated: bool,
    src: SocketAddr,
    t: &Tables,
    out: &mut [u8],
    shed_new_invites: bool,
    m: &mut Message,
) -> Outcome {
    scan_into(buf, m);
    if shed_new_invites && !truncated && sheddable(m) {
        return shed(buf, m, src, out, true);
    }
    route_scanned(buf, truncated, src, t, out, m)
}

/// May overload shedding refuse this scanned datagram? Only a request that
/// starts a dialog with an INVITE: in-dialog requests (To-tag), CANCEL, ACK
/// and responses finish work already admitted. A defective INVITE is shed
/// too (under overload it would otherwise get a 400 per packet).
#[inline]
pub fn sheddable(m: &Message) -> bool {
    m.method() == Some(crate::sip::scan::Method::Invite) && m.to_tag.is_none()
}

/// Refuse a shed INVITE before any routing work: `503 Overloaded` when
/// `reply` (the caller's answer budget allows one) and it can be answered,
/// else a silent, counted drop.
pub fn shed(buf: &[u8], m: &Message, src: SocketAddr, out: &mut [u8], reply: bool) -> Outcome {
    if !reply || m.top_via.is_none() {
        return Outcome::Dropped(DropReason::ShedSilent);
    }
    unavailable(buf, m, UNAVAILABLE_OVERLOAD, 1, src, src, out)
}

/// Decide and write an already scanned datagram (the rest of the pipeline
/// once admission control has let it through).
pub fn route_scanned(
    buf: &[u8],
    truncated: bool,
    src: SocketAddr,
    t: &Tables,
    out: &mut [u8],
    m: &Message,
) -> Outcome {
    if truncated {
        return Outcome::Dropped(DropReason::Oversized);
    }
    let d = decide(buf, m, src, t);
    if !t.policy.is_empty() && needs_policy(buf, m, &d, t) {
        return Outcome::NeedsPolicy(d);
    }
    write(buf, m, d, src, t, None, out)
}

/// Is this decision about an SDP offer or answer a policy applies to?
fn needs_policy(buf: &[u8], m: &Message, d: &Decision, t: &Tables) -> bool {
    match d {
        Decision::Forward { kind, .. } => {
            m.method().is_some_and(policy::offer_method)
                && policy::has_sdp(buf, m)
                && t.policy.applies(*kind, buf, m)
        }
        Decision::Relay { .. } => policy::is_answer(buf, m),
        _ => false,
    }
}

/// Carry out a decision into `out`: the forwarded request (with `body`
/// replacing the original one when given), the relayed response or the
/// stateless answer.
pub fn write(
    buf: &[u8],
    m: &Message,
    d: Decision,
    src: SocketAddr,
    t: &Tables,
    body: Option<&[u8]>,
    out: &mut [u8],
) -> Outcome {
    let m = *m;
    match d {
        Decision::Drop(r) => Outcome::Dropped(r),
        Decision::Reply { code, reason, dst } => answer(buf, &m, code, reason, &[], src, dst, out),
        Decision::Unavailable {
            dst,
            retry_after,
            reason,
        } => unavailable(buf, &m, reason, retry_after, src, dst, out),
        Decision::Relay { dst } => match forward_response(buf, &m, out) {
            Some(len) => Outcome::Relayed {
                len,
                dst,
                code: match m.start {
                    StartLine::Response { code } => code,
                    StartLine::Request { .. } => 0,
                },
            },
            None => Outcome::Dropped(DropReason::TooLarge),
        },
        Decision::Forward {
            dst,
            kind,
            push,
            pop,
            max_forwards,
            loop_hash,
        } => {
            let br = branch::branch(&t.branch_key, buf, &m, src, loop_hash);
            let plan = RequestPlan {
                via_prefix: &t.edge.via_prefix,
                branch: &br,
                route_push: push.map(|(shard, leg)| t.shards.get(shard).route_line(leg)),
                record_route: (t.record_route
                    && kind.record_routes()
                    && m.to_tag.is_none()
                    && m.method().is_some_and(dialog_creating))
                .then_some(&t.edge.record_route_line[..]),
                max_forwards,
                pop_routes: pop,
                src,
                keep_asserted_identity: t.is_trusted_source(src),
                body,
            };
            match forward_request(buf, &m, &plan, out) {
                Some(len) => Outcome::Forwarded {
                    len,
                    dst,
                    kind,
                    shard: push.map(|(s, _)| s as u16),
                },
                // An ACK is never answered (RFC 3261 §17.1.1.3).
                None if m.method() == Some(crate::sip::scan::Method::Ack) => {
                    Outcome::Dropped(DropReason::TooLarge)
                }
                None => answer(buf, &m, 513, "Message Too Large", &[], src, src, out),
            }
        }
    }
}

pub const UNAVAILABLE_NO_CS: &str = "Service Unavailable - No Conversation Server Available";
pub const UNAVAILABLE_POLICY_QUEUE: &str = "Service Unavailable - Policy Queue Full";
pub const UNAVAILABLE_OVERLOAD: &str = "Service Unavailable - Overloaded";
pub const UNAVAILABLE_RATE: &str = "Service Unavailable - Rate Limit Exceeded";

/// `503` with `Retry-After` (no shard can take it, the slow path is full,
/// the worker is overloaded, the source is over its rate).
pub fn unavailable(
    buf: &[u8],
    m: &Message,
    reason: &str,
    retry_after: u32,
    src: SocketAddr,
    dst: SocketAddr,
    out: &mut [u8],
) -> Outcome {
    let mut line = [0u8; 32];
    let n = retry_after_line(retry_after, &mut line);
    answer(buf, m, 503, reason, &[&line[..n]], src, dst, out)
}

fn dialog_creating(m: crate::sip::scan::Method) -> bool {
    use crate::sip::scan::Method::*;
    matches!(m, Invite | Subscribe | Refer)
}

#[allow(clippy::too_many_arguments)]
pub fn answer(
    buf: &[u8],
    m: &Message,
    code: u16,
    reason: &str,
    extra: &[&[u8]],
    src: SocketAddr,
    dst: SocketAddr,
    out: &mut [u8],
) -> Outcome {
    match reply::build(buf, m, code, reason, extra, src, out) {
        Some(len) => Outcome::Replied { len, dst, code },
        None => Outcome::Dropped(DropReason::TooLarge),
    }
}

fn retry_after_line(secs: u32, out: &mut [u8; 32]) -> usize {
    let mut o = crate::sip::rewrite::Out::new(out);
    o.put(b"Retry-After: ");
    o.put_u32(secs);
    o.put(b"\r\n");
    o.finish().unwrap_or(0)
}

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
