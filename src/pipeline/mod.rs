//! The pipeline: one entry point per datagram, scan → admit → decide →
//! policy gate → write, every outcome written and counted by the caller in
//! one place. Pure: no io, no clock, no allocation on the fast path.
//!
//! - [`run`]: the fast path of a worker, asking the data plane's
//!   [`Admission`] at each phase; [`process`]: the same without admission;
//! - [`gate`]: the policy gate of the slow path (seed 5.2.3.7), the same
//!   decision with the media policy applied.
//!
//! Invariant: every datagram ends in exactly one [`Outcome`].

pub mod gate;

use crate::route::decision::{decide_on, Decision, DropReason, ForwardKind};
use crate::route::{policy, Tables};
use crate::sip::branch;
use crate::sip::flow::{Flow, TOKEN_LEN};
use crate::sip::reply::{self, UNAVAILABLE_OVERLOAD, UNAVAILABLE_POLICY_QUEUE, UNAVAILABLE_RATE};
use crate::sip::rewrite::{forward_request, forward_response, RequestPlan};
pub use crate::sip::scan::Scanned;
use crate::sip::scan::{scan_into, Message, Method, StartLine};
use crate::sip::Span;
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
    /// Handed to the registrar thread (a REGISTER for a served domain, or
    /// a response to the edge's own third-party REGISTER).
    ToRegistrar,
    /// A request forwarded toward a stream client: `len` bytes of `out`
    /// go on the connection `token` names.
    OnFlow {
        len: usize,
        token: FlowName,
    },
}

/// How an [`Outcome::OnFlow`] names its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowName {
    /// The flow token at this span of the input (our Record-Route entry
    /// of an in-dialog request).
    Token(Span),
    /// A registered contact's connection (a request for the invited user).
    Conn(Flow),
}

impl FlowName {
    /// The token text (`input`: the message the outcome is about).
    pub fn token<'a>(&self, input: &'a [u8], text: &'a mut [u8; TOKEN_LEN]) -> &'a [u8] {
        match *self {
            FlowName::Token(span) => span.get(input),
            FlowName::Conn(flow) => {
                *text = flow.token(&crate::sip::flow::process_key());
                &text[..]
            }
        }
    }

    /// What kind of forwarding it was, for counting.
    pub fn kind(&self) -> ForwardKind {
        match self {
            FlowName::Token(_) => ForwardKind::InDialog,
            FlowName::Conn(_) => ForwardKind::ToInvitedClient,
        }
    }
}

impl Outcome {
    /// The datagram to send, if any.
    pub fn send(&self) -> Option<(usize, SocketAddr)> {
        match *self {
            Outcome::Forwarded { len, dst, .. }
            | Outcome::Relayed { len, dst, .. }
            | Outcome::Replied { len, dst, .. } => Some((len, dst)),
            Outcome::Dropped(_)
            | Outcome::NeedsPolicy(_)
            | Outcome::ToRegistrar
            | Outcome::OnFlow { .. } => None,
        }
    }
}

/// One received datagram: the bytes, whether the io layer cut it short,
/// and its real source. Travel together through every phase.
#[derive(Clone, Copy, Debug)]
pub struct Datagram<'a> {
    pub buf: &'a [u8],
    pub truncated: bool,
    pub src: SocketAddr,
    /// The flow token of the stream connection it came on (a message
    /// framed from TCP); `None` for a datagram.
    pub flow: Option<&'a [u8]>,
}

/// Which refusal wants a token of the answer budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The source is over its rate (`503 Rate Limit Exceeded`).
    OverRate,
    /// The worker is overloaded (`503 Overloaded`).
    Shed,
}

/// The data plane's admission state as the pipeline asks it, phase by
/// phase. Each answer is the data plane's own fact (it counts its own
/// rate-limit and queue events); the pipeline decides what becomes of the
/// datagram and its caller counts the [`Outcome`].
pub trait Admission {
    /// Is this source over its rate? (Shards and allow-listed sources never are.)
    fn over_rate(&mut self, src: SocketAddr, t: &Tables) -> bool;
    /// Is the worker overloaded, so new INVITEs are shed?
    fn overloaded(&self) -> bool;
    /// Take a token of the answer budget for `why`; `false`: drop silently.
    fn answer_token(&mut self, why: Refusal) -> bool;
    /// The token taken was not used (the request could not be answered).
    fn refund(&mut self);
    /// Hand a datagram that needs the policy gate to the slow path;
    /// `false`: it cannot take it now.
    fn hand_over(&mut self, d: &Datagram<'_>) -> bool;
    /// Offer a datagram for the registrar: answered at once into `out`
    /// (what needs no binding), or queued for the registrar thread.
    fn hand_to_registrar(&mut self, d: &Datagram<'_>, s: Scanned<'_>, out: &mut [u8]) -> Handoff;
}

/// What became of a datagram offered to the registrar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handoff {
    /// The registrar thread has it.
    Queued,
    /// Answered by the registrar's stateless front: `len` bytes in `out`.
    Answered { len: usize, code: u16 },
    /// The registrar thread's queue is full.
    Full,
}

/// No admission control: nothing is limited or shed, and a datagram that
/// needs the policy gate is handed back as [`Outcome::NeedsPolicy`]. The
/// pure entry point of tests, benches and fuzzing; with `overloaded`, new
/// INVITEs are shed and every one answered.
#[derive(Clone, Copy, Debug, Default)]
pub struct Open {
    pub overloaded: bool,
}

impl Admission for Open {
    fn over_rate(&mut self, _src: SocketAddr, _t: &Tables) -> bool {
        false
    }
    fn overloaded(&self) -> bool {
        self.overloaded
    }
    fn answer_token(&mut self, _why: Refusal) -> bool {
        true
    }
    fn refund(&mut self) {}
    fn hand_over(&mut self, _d: &Datagram<'_>) -> bool {
        true
    }
    fn hand_to_registrar(
        &mut self,
        _d: &Datagram<'_>,
        _s: Scanned<'_>,
        _out: &mut [u8],
    ) -> Handoff {
        Handoff::Queued
    }
}

/// The pipeline for one datagram, as named phases: admit the source (rate),
/// scan, admit the request (shedding), decide and write, the policy gate
/// hand-over. The scan is left in the caller-owned `m` (all of it
/// overwritten; one `Message` kept instead of ~460 bytes moved out per
/// datagram), so the caller can count what it was.
pub fn run(
    d: &Datagram<'_>,
    t: &Tables,
    adm: &mut impl Admission,
    out: &mut [u8],
    m: &mut Message,
) -> Outcome {
    if adm.over_rate(d.src, t) {
        return refuse_over_rate(d, adm, out, m);
    }
    scan_into(d.buf, m);
    if adm.overloaded() && !d.truncated && sheddable(m) {
        // Before any routing work: shedding must cost less than forwarding.
        return shed_within(d, adm, out, m);
    }
    if d.truncated {
        return Outcome::Dropped(DropReason::Oversized);
    }
    let s = Scanned {
        flow: d.flow,
        ..Scanned::new(d.buf, m, d.src)
    };
    match route_scanned(s, t, out) {
        Outcome::NeedsPolicy(dec) => hand_over(d, s, dec, t, adm, out),
        Outcome::ToRegistrar => to_registrar(d, s, t, adm, out),
        o => o,
    }
}

/// Scan, decide and write one datagram with no admission control
/// ([`Open`]). An SDP offer or answer that a media policy applies to is not
/// written but handed back as [`Outcome::NeedsPolicy`] for the slow path.
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
/// while in-dialog requests, CANCEL/ACK and responses keep flowing. (A
/// worker bounds these answers with its budget; here every one is
/// answered.)
pub fn process_admitted(
    buf: &[u8],
    truncated: bool,
    src: SocketAddr,
    t: &Tables,
    out: &mut [u8],
    shed_new_invites: bool,
) -> (Outcome, Message) {
    let mut m = Message::default();
    let d = Datagram {
        buf,
        truncated,
        src,
        flow: None,
    };
    let mut adm = Open {
        overloaded: shed_new_invites,
    };
    let o = run(&d, t, &mut adm, out, &mut m);
    (o, m)
}

/// Over its source's rate: a `503` within the answer budget to a request
/// that can be answered, else a counted drop. The budget is asked first,
/// so a flood is dropped without a scan.
fn refuse_over_rate(
    d: &Datagram<'_>,
    adm: &mut impl Admission,
    out: &mut [u8],
    m: &mut Message,
) -> Outcome {
    if d.truncated || !adm.answer_token(Refusal::OverRate) {
        // Not scanned: `m` must not describe the previous datagram.
        m.start = StartLine::Response { code: 0 };
        return Outcome::Dropped(DropReason::RateLimited);
    }
    scan_into(d.buf, m);
    let o = match m.method() {
        Some(method) if method != Method::Ack && m.top_via.is_some() => {
            unavailable(Scanned::new(d.buf, m, d.src), UNAVAILABLE_RATE, 1, out)
        }
        _ => Outcome::Dropped(DropReason::RateLimited),
    };
    if !matches!(o, Outcome::Replied { .. }) {
        adm.refund();
    }
    o
}

/// Shed a new INVITE: `503 Overloaded` while the answer budget has a
/// token, else dropped and counted as `shed_silent`.
fn shed_within(d: &Datagram<'_>, adm: &mut impl Admission, out: &mut [u8], m: &Message) -> Outcome {
    let s = Scanned::new(d.buf, m, d.src);
    if !adm.answer_token(Refusal::Shed) {
        return shed(s, out, false);
    }
    let o = shed(s, out, true);
    if !matches!(o, Outcome::Replied { .. }) {
        adm.refund();
    }
    o
}

/// The slow path owns it now, or (it cannot take it) a request is answered
/// `503` and a response relayed unchecked: never silently dropped.
fn hand_over(
    d: &Datagram<'_>,
    s: Scanned<'_>,
    dec: Decision,
    t: &Tables,
    adm: &mut impl Admission,
    out: &mut [u8],
) -> Outcome {
    if adm.hand_over(d) {
        return Outcome::NeedsPolicy(dec);
    }
    if s.m.is_request() {
        unavailable(s, UNAVAILABLE_POLICY_QUEUE, t.retry_after_s, out)
    } else {
        write(s, dec, t, None, out)
    }
}

/// The registrar answers it at once or its thread owns it now; its queue
/// full: a REGISTER is
/// answered `503` (the client retries), a response dropped and counted
/// (the registrar's transaction retransmits its request).
fn to_registrar(
    d: &Datagram<'_>,
    s: Scanned<'_>,
    t: &Tables,
    adm: &mut impl Admission,
    out: &mut [u8],
) -> Outcome {
    match adm.hand_to_registrar(d, s, out) {
        Handoff::Queued => return Outcome::ToRegistrar,
        Handoff::Answered { len, code } => {
            return Outcome::Replied {
                len,
                dst: d.src,
                code,
            }
        }
        Handoff::Full => {}
    }
    if s.m.is_request() {
        unavailable(s, reply::UNAVAILABLE_REGISTRAR, t.retry_after_s, out)
    } else {
        Outcome::Dropped(DropReason::RegistrarBusy)
    }
}

/// May overload shedding refuse this scanned datagram? Only a request that
/// starts a dialog with an INVITE: in-dialog requests (To-tag), CANCEL, ACK
/// and responses finish work already admitted. A defective INVITE is shed
/// too (under overload it would otherwise get a 400 per packet).
#[inline]
pub fn sheddable(m: &Message) -> bool {
    m.method() == Some(Method::Invite) && m.to_tag.is_none()
}

/// Refuse a shed INVITE before any routing work: `503 Overloaded` when
/// `reply` (the answer budget allows one) and it can be answered, else a
/// silent, counted drop.
fn shed(s: Scanned<'_>, out: &mut [u8], reply: bool) -> Outcome {
    if !reply || s.m.top_via.is_none() {
        return Outcome::Dropped(DropReason::ShedSilent);
    }
    unavailable(s, UNAVAILABLE_OVERLOAD, 1, out)
}

/// Decide and write a whole scanned datagram (the rest of the pipeline
/// once admission control has let it through).
pub fn route_scanned(s: Scanned<'_>, t: &Tables, out: &mut [u8]) -> Outcome {
    let d = decide_on(s, t);
    if !t.policy.is_empty() && needs_policy(s.buf, s.m, &d, t) {
        return Outcome::NeedsPolicy(d);
    }
    write(s, d, t, None, out)
}

/// Is this decision about an SDP offer or answer a policy applies to?
fn needs_policy(buf: &[u8], m: &Message, d: &Decision, t: &Tables) -> bool {
    match d {
        Decision::Forward { kind, .. } => {
            m.method().is_some_and(policy::offer_method)
                && policy::has_sdp(buf, m)
                && t.policy.applies(*kind, buf, m)
        }
        Decision::OnFlow { .. } => {
            m.method().is_some_and(policy::offer_method)
                && policy::has_sdp(buf, m)
                && t.policy.applies(ForwardKind::InDialog, buf, m)
        }
        Decision::ToConn { .. } => {
            m.method().is_some_and(policy::offer_method)
                && policy::has_sdp(buf, m)
                && t.policy.applies(ForwardKind::ToInvitedClient, buf, m)
        }
        Decision::Relay { .. } => policy::is_answer(buf, m),
        _ => false,
    }
}

/// Carry out a decision into `out`: the forwarded request (with `body`
/// replacing the original one when given), the relayed response or the
/// stateless answer.
pub fn write(
    s: Scanned<'_>,
    d: Decision,
    t: &Tables,
    body: Option<&[u8]>,
    out: &mut [u8],
) -> Outcome {
    match d {
        Decision::Drop(r) => Outcome::Dropped(r),
        Decision::Reply { code, reason } => answer(s, code, reason, &[], out),
        Decision::Unavailable {
            retry_after,
            reason,
        } => unavailable(s, reason, retry_after, out),
        Decision::Relay { dst } => relay(s, dst, out),
        Decision::Forward { .. } | Decision::OnFlow { .. } | Decision::ToConn { .. } => {
            forward(s, d, t, body, out)
        }
        Decision::ToRegistrar => Outcome::ToRegistrar,
    }
}

/// A response back along the Via path, our Via popped.
fn relay(s: Scanned<'_>, dst: SocketAddr, out: &mut [u8]) -> Outcome {
    match forward_response(s.buf, s.m, out) {
        Some(len) => Outcome::Relayed {
            len,
            dst,
            code: match s.m.start {
                StartLine::Response { code } => code,
                StartLine::Request { .. } => 0,
            },
        },
        None => Outcome::Dropped(DropReason::TooLarge),
    }
}

/// A request forwarded with our Via (the keyed branch), the Route set the
/// leg needs, our Record-Route where a dialog starts, and only a trusted
/// source's P-Asserted-Identity.
fn forward(
    s: Scanned<'_>,
    d: Decision,
    t: &Tables,
    body: Option<&[u8]>,
    out: &mut [u8],
) -> Outcome {
    let (dst, kind, push, pop, max_forwards, loop_hash, flow) = match d {
        Decision::Forward {
            dst,
            kind,
            push,
            pop,
            max_forwards,
            loop_hash,
        } => (dst, kind, push, pop, max_forwards, loop_hash, None),
        Decision::OnFlow {
            token,
            pop,
            max_forwards,
            loop_hash,
        } => (
            s.src,
            ForwardKind::InDialog,
            None,
            pop,
            max_forwards,
            loop_hash,
            Some(FlowName::Token(token)),
        ),
        Decision::ToConn {
            conn,
            pop,
            max_forwards,
            loop_hash,
        } => (
            s.src,
            ForwardKind::ToInvitedClient,
            None,
            pop,
            max_forwards,
            loop_hash,
            Some(FlowName::Conn(conn)),
        ),
        _ => unreachable!("forward() is called with a Forward, OnFlow or ToConn decision"),
    };
    let conn_token: [u8; TOKEN_LEN];
    let record_route_flow = match flow {
        Some(FlowName::Conn(c)) => {
            conn_token = c.token(&crate::sip::flow::process_key());
            Some(&conn_token[..])
        }
        _ => None,
    };
    let (buf, m, src) = (s.buf, s.m, s.src);
    let br = branch::branch(&t.branch_key, buf, m, src, loop_hash);
    let mut pai = [0u8; PAI_LINE_MAX];
    let asserted = asserted_identity_line(t, (src, s.flow), &mut pai);
    let plan = RequestPlan {
        via_prefix: &t.edge.via_prefix,
        branch: &br,
        flow: s.flow,
        route_push: push.map(|(shard, leg)| t.shards.get(shard).route_line(leg)),
        record_route: (t.record_route
            && kind.record_routes()
            && m.to_tag.is_none()
            && m.method().is_some_and(dialog_creating))
        .then_some(&t.edge.record_route_line[..]),
        record_route_flow,
        max_forwards,
        pop_routes: pop,
        src,
        keep_asserted_identity: t.is_trusted_source(src),
        assert_identity: asserted.map(|n| &pai[..n]),
        body,
    };
    match (forward_request(buf, m, &plan, out), flow) {
        (Some(len), Some(token)) => Outcome::OnFlow { len, token },
        (Some(len), None) => Outcome::Forwarded {
            len,
            dst,
            kind,
            shard: push.map(|(s, _)| s as u16),
        },
        // An ACK is never answered (RFC 3261 §17.1.1.3).
        (None, _) if m.method() == Some(Method::Ack) => Outcome::Dropped(DropReason::TooLarge),
        (None, _) => answer(s, 513, "Message Too Large", &[], out),
    }
}

/// Longest `P-Asserted-Identity` line the edge writes.
const PAI_LINE_MAX: usize = crate::route::groups::MAX_IDENTITY + 40;

/// RFC 3325 at the trust boundary: a client registered with the edge's
/// registrar is asserted as the AoR it authenticated for (its own
/// P-Asserted-Identity is removed in any case). Bytes written to `line`.
fn asserted_identity_line(
    t: &Tables,
    (src, flow): (SocketAddr, Option<&[u8]>),
    line: &mut [u8; PAI_LINE_MAX],
) -> Option<usize> {
    let reg = t.registrar.as_ref()?;
    if t.is_trusted_source(src) {
        return None;
    }
    reg.location
        .identity_of_flow(crate::route::decision::arrival(src, flow), |aor| {
            let mut o = crate::sip::rewrite::Out::new(line);
            o.put(b"P-Asserted-Identity: <sip:");
            o.put(aor);
            o.put(b">\r\n");
            o.finish()
        })
        .flatten()
}

/// `503` with `Retry-After` (no shard can take it, the slow path is full,
/// the worker is overloaded, the source is over its rate).
pub fn unavailable(s: Scanned<'_>, reason: &str, retry_after: u32, out: &mut [u8]) -> Outcome {
    let mut line = [0u8; 32];
    let n = retry_after_line(retry_after, &mut line);
    answer(s, 503, reason, &[&line[..n]], out)
}

fn dialog_creating(m: Method) -> bool {
    matches!(m, Method::Invite | Method::Subscribe | Method::Refer)
}

/// A stateless answer, to the request's real source.
pub fn answer(s: Scanned<'_>, code: u16, reason: &str, extra: &[&[u8]], out: &mut [u8]) -> Outcome {
    match reply::build(s, code, reason, extra, out) {
        Some(len) => Outcome::Replied {
            len,
            dst: s.src,
            code,
        },
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
