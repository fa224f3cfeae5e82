//! `decide`: one scanned message + the source address + a table snapshot →
//! what to do with it. Pure; the order of the checks is the specification:
//!
//! Requests
//! 1. defects → `400`/`505` with the defect as reason (never for ACK: drop);
//! 2. Request-URI must parse (`400`), scheme sip/sips/tel (`416`);
//! 3. `OPTIONS` addressed to the edge itself → `200` (a keepalive target);
//! 4. Max-Forwards 0 → `483`;
//! 5. leading Route values naming the edge are popped (loose routing); the
//!    `cpm-leg` marker of the popped entry is kept if the source is a CS;
//! 6. our branch with the same loop hash in a Via → `482`;
//! 7. Route values left → forward to the first one;
//! 8. in-dialog (To-tag) request that came via our Record-Route → Request-URI;
//! 9. marker `term` (the invited user's PF has served it) → Request-URI;
//! 10. no CPM enabler usage indication → the non-CPM route or `403`
//!     (CANCEL and ACK carry none; with no non-CPM route they are CPM);
//! 11. CPM, from a CS: group identity → hosting CS (`ctrl`), else the invited
//!     user's PF (`term`); from a client: the inviting user's PF (`orig`),
//!     or with `originating_pf = false` a group goes to its hosting CS.
//!
//! Responses: the top Via must be ours (sent-by and branch prefix), then
//! they go to the next Via's `received`/`rport`/sent-by.

use super::legs::{Leg, LEG_PARAM};
use super::tables::Tables;
use crate::sip::branch::{self, StableHash};
use crate::sip::params::find_param;
use crate::sip::rewrite::MaxForwards;
use crate::sip::scan::{Defect, Message, Method, StartLine, MAX_ROUTES};
use crate::sip::uri::{self, Scheme, Uri};
use crate::sip::Span;
use std::net::SocketAddr;

/// Why a request went where it went (counted per kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardKind {
    /// Client → Participating Function of the inviting user (5.2.3.2.1).
    OriginatingPf,
    /// → the CS hosting the group: Controlling Function (5.2.3.2.2).
    Controlling,
    /// → Participating Function of the invited user (5.2.3.2.3).
    TerminatingPf,
    /// Served by the invited user's PF → toward the invited client.
    ToInvitedClient,
    /// Next Route value (loose routing, RFC 3261 §16.4).
    LooseRoute,
    /// In-dialog request along our Record-Route → Request-URI.
    InDialog,
    /// No CPM indication → the configured non-CPM route.
    NonCpm,
}

impl ForwardKind {
    pub const ALL: [ForwardKind; 7] = [
        ForwardKind::OriginatingPf,
        ForwardKind::Controlling,
        ForwardKind::TerminatingPf,
        ForwardKind::ToInvitedClient,
        ForwardKind::LooseRoute,
        ForwardKind::InDialog,
        ForwardKind::NonCpm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ForwardKind::OriginatingPf => "originating_pf",
            ForwardKind::Controlling => "controlling",
            ForwardKind::TerminatingPf => "terminating_pf",
            ForwardKind::ToInvitedClient => "to_invited_client",
            ForwardKind::LooseRoute => "loose_route",
            ForwardKind::InDialog => "in_dialog",
            ForwardKind::NonCpm => "non_cpm",
        }
    }

    /// Only the first pass of a dialog-creating request through the edge
    /// toward a function is worth a Record-Route entry.
    pub fn record_routes(self) -> bool {
        !matches!(self, ForwardKind::InDialog | ForwardKind::LooseRoute)
    }
}

/// Why a datagram was dropped without an answer (counted per reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// CRLF/whitespace-only datagram.
    Keepalive,
    /// Larger than the receive buffer.
    Oversized,
    /// Not a SIP start line at all.
    Garbage,
    /// A response with a defect (no Via, bad start line, bad Content-Length...).
    MalformedResponse,
    /// A response whose top Via is not ours.
    ResponseNotOurs,
    /// A response with no Via to send it on to, or an unroutable one.
    ResponseNoNextHop,
    /// A request without a usable Via: it cannot be answered.
    RequestUnanswerable,
    /// An ACK the edge would have refused (ACK is never answered).
    AckRefused,
    /// The output would not fit the datagram limit and no answer fits either.
    TooLarge,
    /// Over its source's rate limit, in `drop` mode (or not answerable).
    RateLimited,
    /// A new INVITE shed under overload, unanswered (`shed = "drop"`, or
    /// the worker's answer budget is spent).
    ShedSilent,
}

impl DropReason {
    pub const ALL: [DropReason; 11] = [
        DropReason::Keepalive,
        DropReason::Oversized,
        DropReason::Garbage,
        DropReason::MalformedResponse,
        DropReason::ResponseNotOurs,
        DropReason::ResponseNoNextHop,
        DropReason::RequestUnanswerable,
        DropReason::AckRefused,
        DropReason::TooLarge,
        DropReason::RateLimited,
        DropReason::ShedSilent,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::Keepalive => "keepalive",
            DropReason::Oversized => "oversized",
            DropReason::Garbage => "garbage",
            DropReason::MalformedResponse => "malformed_response",
            DropReason::ResponseNotOurs => "response_via_not_ours",
            DropReason::ResponseNoNextHop => "response_no_next_hop",
            DropReason::RequestUnanswerable => "request_unanswerable",
            DropReason::AckRefused => "ack_refused",
            DropReason::TooLarge => "too_large",
            DropReason::RateLimited => "rate_limited",
            DropReason::ShedSilent => "shed_silent",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Forward {
        dst: SocketAddr,
        kind: ForwardKind,
        /// Push `Route: <CS>, <edge;cpm-leg>` for this shard and leg.
        push: Option<(usize, Leg)>,
        /// Route values naming us to pop.
        pop: usize,
        max_forwards: MaxForwards,
        loop_hash: u32,
        ruri: Span,
    },
    /// Forward a response to `dst` with our Via popped.
    Relay {
        dst: SocketAddr,
    },
    Reply {
        code: u16,
        reason: &'static str,
        dst: SocketAddr,
    },
    /// `503` with `Retry-After`: no Conversation Server can take it now
    /// (or the edge sheds it); `reason` says which.
    Unavailable {
        dst: SocketAddr,
        retry_after: u32,
        reason: &'static str,
    },
    Drop(DropReason),
}

pub fn decide(buf: &[u8], m: &Message, src: SocketAddr, t: &Tables) -> Decision {
    match m.start {
        StartLine::Request { method, uri, .. } => decide_request(buf, m, method, uri, src, t),
        StartLine::Response { .. } => decide_response(buf, m, t),
    }
}

fn decide_response(buf: &[u8], m: &Message, t: &Tables) -> Decision {
    match m.defect {
        Some(Defect::Keepalive) => return Decision::Drop(DropReason::Keepalive),
        Some(Defect::BadStartLine)
            if !m
                .start_line
                .get(buf)
                .get(..4)
                .is_some_and(|v| v.eq_ignore_ascii_case(b"SIP/")) =>
        {
            return Decision::Drop(DropReason::Garbage)
        }
        Some(_) => return Decision::Drop(DropReason::MalformedResponse),
        None => {}
    }
    let Some(top) = &m.top_via else {
        return Decision::Drop(DropReason::MalformedResponse);
    };
    let ours = t.edge.is_me(top.host.get(buf), top.port)
        && top.branch.is_some_and(|b| branch::is_ours(b.get(buf)));
    if !ours {
        return Decision::Drop(DropReason::ResponseNotOurs);
    }
    let next = m.second_via.as_ref().and_then(|v| {
        v.response_target(buf).or_else(|| {
            let u = Uri {
                scheme: Scheme::Sip,
                whole: v.host,
                user: Span::default(),
                host: v.host,
                port: v.port,
                params: Span::default(),
            };
            t.resolve(buf, &u).map(|a| match v.rport {
                Some(Some(p)) => {
                    SocketAddr::new(a.ip(), uri::parse_port(p.get(buf)).unwrap_or(a.port()))
                }
                _ => a,
            })
        })
    });
    match next {
        Some(dst) => Decision::Relay { dst },
        None => Decision::Drop(DropReason::ResponseNoNextHop),
    }
}

fn decide_request(
    buf: &[u8],
    m: &Message,
    method: Method,
    ruri_span: Span,
    src: SocketAddr,
    t: &Tables,
) -> Decision {
    let is_ack = method == Method::Ack;
    let reply_dst = super::reply_target(m, src);
    let refuse = |code: u16, reason: &'static str| {
        if is_ack {
            Decision::Drop(DropReason::AckRefused)
        } else {
            Decision::Reply {
                code,
                reason,
                dst: reply_dst,
            }
        }
    };
    if let Some(d) = m.defect {
        // Without a parsed top Via there is nowhere trustworthy to answer.
        if m.top_via.is_none() {
            return Decision::Drop(DropReason::RequestUnanswerable);
        }
        return refuse(d.status(), d.reason());
    }
    let Some(ruri) = uri::parse(buf, ruri_span) else {
        return refuse(400, Defect::BadRequestUri.reason());
    };
    if ruri.scheme == Scheme::Other {
        return refuse(416, "Unsupported URI Scheme");
    }
    let from_shard = t.shards.by_addr(src);

    // Route values naming us, and the leg marker we left in ours.
    let mut pop = 0;
    let mut leg = None;
    for r in m.route_values() {
        let Some(u) = uri::addr_of(buf, r.value).and_then(|a| uri::parse(buf, a)) else {
            break;
        };
        if !t.edge.is_me(u.host.get(buf), u.port) {
            break;
        }
        pop += 1;
        if leg.is_none() {
            leg = find_param(buf, u.params, LEG_PARAM)
                .and_then(|p| p.value)
                .and_then(|v| Leg::from_marker(v.get(buf)));
        }
    }
    let leg = leg.filter(|_| from_shard.is_some());
    let remaining = m.route_count as usize - pop;

    if method == Method::Options
        && remaining == 0
        && ruri.user.is_empty()
        && t.edge.is_me(ruri.host.get(buf), ruri.port)
    {
        return Decision::Reply {
            code: 200,
            reason: "OK",
            dst: reply_dst,
        };
    }
    let Some(max_forwards) = super::next_max_forwards(m) else {
        return refuse(483, "Too Many Hops");
    };
    let loop_hash = branch::loop_hash(buf, m, ruri_span, leg.map_or(0, |l| l as u8), pop);
    if branch::is_loop(buf, m, loop_hash) {
        return refuse(482, "Loop Detected");
    }
    let forward =
        |dst: SocketAddr, kind: ForwardKind, push: Option<(usize, Leg)>| Decision::Forward {
            dst,
            kind,
            push,
            pop,
            max_forwards,
            loop_hash,
            ruri: ruri_span,
        };
    let to_ruri = |kind: ForwardKind| match t.resolve(buf, &ruri) {
        Some(dst) => forward(dst, kind, None),
        None => refuse(404, "Not Found - No Route To Request-URI Host"),
    };

    if remaining > 0 {
        if pop >= MAX_ROUTES {
            return refuse(482, "Loop Detected - Route Names The Edge Repeatedly");
        }
        let next = m.routes[pop];
        let Some(u) = uri::addr_of(buf, next.value).and_then(|a| uri::parse(buf, a)) else {
            return refuse(400, "Bad Request - Malformed Route");
        };
        return match t.resolve(buf, &u) {
            Some(dst) => forward(dst, ForwardKind::LooseRoute, None),
            None => refuse(404, "Not Found - No Route To Route Host"),
        };
    }
    if pop > 0 && m.to_tag.is_some() {
        return to_ruri(ForwardKind::InDialog);
    }
    if leg == Some(Leg::Terminating) {
        return to_ruri(ForwardKind::ToInvitedClient);
    }
    let cpm = m.cpm.any()
        || (matches!(method, Method::Cancel | Method::Ack) && t.non_cpm_route.is_none());
    if !cpm {
        return match t.non_cpm_route {
            Some(dst) => forward(dst, ForwardKind::NonCpm, None),
            None => refuse(403, "Forbidden - No CPM Feature Tag"),
        };
    }
    // Looked up only where it decides: a client's request goes to the
    // inviting user's participating function first when `originating_pf`
    // (callgrind: ~700 instructions of an INVITE saved there).
    let group = || t.groups.lookup(buf, &ruri);
    // A failed shard's users go to their next rendezvous choice (inside
    // `pick`), its groups to its backup; with nobody left: 503.
    let to_shard = |shard: Option<usize>, leg: Leg, kind: ForwardKind| match shard {
        Some(s) => forward(t.shards.get(s).addr, kind, Some((s, leg))),
        None if is_ack => Decision::Drop(DropReason::AckRefused),
        None => Decision::Unavailable {
            dst: reply_dst,
            retry_after: t.retry_after_s,
            reason: super::UNAVAILABLE_NO_CS,
        },
    };
    if from_shard.is_some() {
        return match group() {
            Some(g) => to_shard(
                t.shards.group_target(g),
                Leg::Controlling,
                ForwardKind::Controlling,
            ),
            None => to_shard(
                t.shards.pick(user_hash(buf, &ruri)),
                Leg::Terminating,
                ForwardKind::TerminatingPf,
            ),
        };
    }
    if !t.originating_pf {
        if let Some(g) = group() {
            return to_shard(
                t.shards.group_target(g),
                Leg::Controlling,
                ForwardKind::Controlling,
            );
        }
    }
    // The inviting user: P-Asserted-Identity (asserted by a trusted network),
    // else From.
    let user = m.pai_uri.unwrap_or(m.from_uri);
    let h = match uri::parse(buf, user) {
        Some(u) => user_hash(buf, &u),
        None => branch::hash_bytes(user.get(buf)),
    };
    to_shard(
        t.shards.pick(h),
        Leg::Originating,
        ForwardKind::OriginatingPf,
    )
}

/// Hash of a user's canonical identity (the rendezvous input).
pub fn user_hash(buf: &[u8], u: &Uri) -> u64 {
    let mut h = StableHash::default();
    uri::identity_hash(buf, u, &mut h);
    h.byte(0xff);
    h.finish()
}
