//! `decide`: one scanned message + the source address + a table snapshot →
//! what to do with it. Pure; the order of the checks is the specification:
//!
//! Requests, in phases
//! 1. admission: defects → `400`/`505` with the defect as reason (never
//!    for ACK: drop); the Request-URI must parse (`400`), scheme
//!    sip/sips/tel (`416`);
//! 2. our Route values: the leading values naming the edge are popped
//!    (loose routing); the `cpm-leg` marker of the popped entry is kept if
//!    the source is a shard; `OPTIONS` addressed to the edge itself → `200`;
//! 3. hop limits: Max-Forwards 0 → `483` (a larger value than
//!    `max_forwards_limit` is lowered to it); our own Via (our sent-by,
//!    our branch) with the same loop hash → `482`;
//! 4. the next hop, by who sent the request:
//!    - a shard (trusted by source address): our popped value asks for an
//!      Interworking Function (`cpm-iwf=SERVICE`) → one of that service
//!      (`503` with none); Route values left → the next one; in-dialog (To-tag, arrived on our Record-Route entry, which
//!      carries no marker) → Request-URI; marker `term` (the invited user's
//!      PF has served it) → Request-URI; else the CPM rules: group identity
//!      → hosting CS (`ctrl`), else the invited user's PF (`term`);
//!    - a client (never trusted): a leg marker anywhere → `403`; Route
//!      values left → the next one only inside a dialog and only if it is a
//!      function (shard or non-CPM route), else `403 Not Relaying`; inside a
//!      dialog with no Route left, a Request-URI naming a function → there;
//!      else the CPM rules: the inviting user's PF (`orig`; the user is
//!      From: a client's P-Asserted-Identity is not trusted), or with
//!      `originating_pf = false` a group goes to its hosting CS;
//!    - an Interworking Function (trusted by source address, seed 5.3.2):
//!      as a client, but never asked to register, and the CPM rules send
//!      it to the invited side: a group's hosting CS, or the invited
//!      user's PF (`term`);
//!    - the CPM rules first ask for the CPM enabler usage indication: none
//!      → the non-CPM route or `403` (CANCEL and ACK carry none; with no
//!      non-CPM route they are CPM).
//!
//! Responses: the top Via must be ours (sent-by and branch prefix), its
//! branch's MAC must verify against the response's transaction and its next
//! hop (the second Via's `received`/`rport`, the real source of the
//! request), and that next hop must not be this edge or a peer edge.

use super::legs::{Leg, IWF_PARAM, LEG_PARAM};
use super::tables::Tables;
use crate::sip::branch;
use crate::sip::flow::Flow;
use crate::sip::hash::{self, StableHash};
use crate::sip::params::find_param;
use crate::sip::rewrite::MaxForwards;
use crate::sip::scan::{Defect, Message, Method, Scanned, StartLine};

/// Our Record-Route entry's parameter naming a stream client's flow
/// ([`crate::sip::flow::FLOW_PARAM`] without its `;` and `=`).
const FLOW_NAME: &[u8] = b"cpm-flow";
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
    /// A CS's request for a non-CPM service → its Interworking Function.
    Interworking,
    /// The invited user is in a domain this system does not serve → the
    /// network serving them, at the Request-URI's host (5.2.3.2).
    InvitedNetwork,
}

impl ForwardKind {
    pub const ALL: [ForwardKind; 9] = [
        ForwardKind::OriginatingPf,
        ForwardKind::Controlling,
        ForwardKind::TerminatingPf,
        ForwardKind::ToInvitedClient,
        ForwardKind::LooseRoute,
        ForwardKind::InDialog,
        ForwardKind::NonCpm,
        ForwardKind::Interworking,
        ForwardKind::InvitedNetwork,
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
            ForwardKind::Interworking => "interworking",
            ForwardKind::InvitedNetwork => "invited_network",
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
    /// A response whose top Via names us with a branch we did not write
    /// (its MAC does not verify), or whose second Via was rewritten.
    ResponseForged,
    /// A response whose next hop is this edge or a peer edge: relaying it
    /// would loop between edges.
    ResponseToEdge,
    /// A new INVITE shed under overload, unanswered (`shed = "drop"`, or
    /// the worker's answer budget is spent).
    ShedSilent,
    /// A response for the registrar while its queue is full (the
    /// registrar's transaction retransmits its request).
    RegistrarBusy,
}

impl DropReason {
    pub const ALL: [DropReason; 14] = [
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
        DropReason::ResponseForged,
        DropReason::ResponseToEdge,
        DropReason::ShedSilent,
        DropReason::RegistrarBusy,
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
            DropReason::ResponseForged => "response_forged",
            DropReason::ResponseToEdge => "response_to_edge",
            DropReason::ShedSilent => "shed_silent",
            DropReason::RegistrarBusy => "registrar_busy",
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
    },
    /// A request for the invited user's device that registered over a
    /// stream, forwarded as [`Decision::Forward`] toward the invited
    /// client but on that connection (RFC 5626 §5.3: the only way to reach
    /// a client behind NAT), `conn` being the binding's.
    ToConn {
        conn: Flow,
        pop: usize,
        max_forwards: MaxForwards,
        loop_hash: u32,
    },
    /// An in-dialog request toward a stream client, forwarded as
    /// [`Decision::Forward`] but on the connection `token` (the flow token
    /// of our popped Record-Route entry) names. A variant of its own, not
    /// a field of `Forward`: that one stays as small as it was (callgrind:
    /// the field cost ~19 instructions an INVITE in moves).
    OnFlow {
        token: Span,
        pop: usize,
        max_forwards: MaxForwards,
        loop_hash: u32,
    },
    /// Forward a response to `dst` with our Via popped.
    Relay {
        dst: SocketAddr,
    },
    /// A stateless answer. It always goes to the request's real source
    /// (RFC 3581 §4 whether or not the client asked for `rport`, as
    /// Kamailio's `force_rport`): no Via can steer it elsewhere.
    Reply {
        code: u16,
        reason: &'static str,
    },
    /// `503` with `Retry-After`: no Conversation Server can take it now
    /// (or the edge sheds it); `reason` says which.
    Unavailable {
        retry_after: u32,
        reason: &'static str,
    },
    Drop(DropReason),
    /// For the registrar thread: a REGISTER for a served domain, or a
    /// response to a request the edge itself sent (a third-party REGISTER:
    /// our Via alone, no second one).
    ToRegistrar,
}

pub fn decide(buf: &[u8], m: &Message, src: SocketAddr, t: &Tables) -> Decision {
    decide_on(Scanned::new(buf, m, src), t)
}

/// [`decide`] for a message that may have come on a stream (`s.flow`).
pub fn decide_on(s: Scanned<'_>, t: &Tables) -> Decision {
    match s.m.start {
        StartLine::Request { method, uri, .. } => decide_request(s, method, uri, t),
        StartLine::Response { .. } => decide_response(s.buf, s.m, t),
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
    let me = t.edge.is_me(top.host.get(buf), top.port);
    // Only the edge's own requests leave with our Via alone: their answers
    // belong to the registrar's client transactions (whose branches are
    // theirs, not our MAC: the transaction matches the branch exactly, so a
    // forged answer is a stray there).
    if me && m.second_via.is_none() && m.via_count == 1 && t.registrar.is_some() {
        return Decision::ToRegistrar;
    }
    let ours = top
        .branch
        .map(|b| b.get(buf))
        .filter(|b| me && branch::is_ours(b));
    let Some(top_branch) = ours else {
        return Decision::Drop(DropReason::ResponseNotOurs);
    };
    // Every request the edge forwards leaves with `received`/`rport` set to
    // its real source, so this is where the request came from.
    let Some(dst) = m.second_via.and_then(|v| v.response_target(buf)) else {
        return Decision::Drop(DropReason::ResponseNoNextHop);
    };
    if !branch::verify(&t.branch_key, buf, m, top_branch, dst) {
        return Decision::Drop(DropReason::ResponseForged);
    }
    if t.is_edge_addr(dst) {
        return Decision::Drop(DropReason::ResponseToEdge);
    }
    Decision::Relay { dst }
}

/// The Route values a request arrived with that name this edge.
struct OwnRoutes {
    /// Leading values naming us, popped when forwarding (loose routing).
    pop: usize,
    /// The `cpm-leg` marker of the first popped value; kept only when the
    /// source is a shard (a client's would be forged).
    leg: Option<Leg>,
    /// The `cpm-iwf` service of the first popped value (kept only when
    /// the source is a shard).
    iwf: Option<Span>,
    /// A value naming us with a `cpm-leg` or `cpm-iwf` marker, anywhere in
    /// the set.
    any_marker: bool,
    /// Values left after ours.
    remaining: usize,
}

fn own_routes(buf: &[u8], m: &Message, t: &Tables) -> OwnRoutes {
    let mut r = OwnRoutes {
        pop: 0,
        leg: None,
        iwf: None,
        any_marker: false,
        remaining: 0,
    };
    let mut leading = true;
    for v in m.route_values() {
        let me = uri::addr_of(buf, v.value)
            .and_then(|a| uri::parse(buf, a))
            .filter(|u| t.edge.is_me(u.host.get(buf), u.port));
        let Some(u) = me else {
            leading = false;
            continue;
        };
        let leg = find_param(buf, u.params, LEG_PARAM)
            .and_then(|p| p.value)
            .and_then(|v| Leg::from_marker(v.get(buf)));
        let iwf = find_param(buf, u.params, IWF_PARAM).and_then(|p| p.value);
        r.any_marker |= leg.is_some() || iwf.is_some();
        if leading {
            if r.pop == 0 {
                r.iwf = iwf;
            }
            r.pop += 1;
            r.leg = r.leg.or(leg);
        }
    }
    r.remaining = m.route_count as usize - r.pop;
    r
}

/// Seed 5.3.1.2.3: a recipient not routable in SIP (`wv:`, `mailto:`,
/// `im:` ...) is the sending user's Participating Function's to reject or
/// interwork per policy, so such a Request-URI passes where a function
/// decides it: a client's new CPM pager-mode MESSAGE (it goes to the
/// sender's PF by From, whatever the Request-URI; the PFs interwork
/// messages, not sessions) and a shard's request for an Interworking
/// Function. Anywhere else the edge could only resolve it as a host: `416`
/// (RFC 3261 §8.2.2.1).
fn non_sip_decided_by_a_function(m: &Message, t: &Tables, src: SocketAddr, r: &OwnRoutes) -> bool {
    let from_shard = t.shards.by_addr(src).is_some();
    let client_new = !from_shard
        && !t.is_trusted_source(src)
        && m.method() == Some(Method::Message)
        && m.to_tag.is_none()
        && r.remaining == 0
        && !r.any_marker
        && m.cpm.any()
        && t.originating_pf;
    client_new || (from_shard && r.iwf.is_some())
}

/// An answer to the request, or for an ACK (never answered, RFC 3261
/// §17.1.1.3) a counted drop.
fn refusal(method: Method, code: u16, reason: &'static str) -> Decision {
    if method == Method::Ack {
        Decision::Drop(DropReason::AckRefused)
    } else {
        Decision::Reply { code, reason }
    }
}

/// One request being decided: what every routing phase reads.
struct Request<'a> {
    buf: &'a [u8],
    m: &'a Message,
    method: Method,
    ruri: Uri,
    src: SocketAddr,
    /// The flow token of the stream it came on (`None`: a datagram).
    flow: Option<&'a [u8]>,
    t: &'a Tables,
    /// The shard the request came from, if any: trusted (by source address)
    /// to choose the next hop; a client never is.
    from_shard: Option<usize>,
    routes: OwnRoutes,
    max_forwards: MaxForwards,
    loop_hash: u32,
}

impl Request<'_> {
    /// An answer, or for an ACK (never answered, RFC 3261 §17.1.1.3) a drop.
    fn refuse(&self, code: u16, reason: &'static str) -> Decision {
        refusal(self.method, code, reason)
    }

    fn forward(&self, dst: SocketAddr, kind: ForwardKind, push: Option<(usize, Leg)>) -> Decision {
        Decision::Forward {
            dst,
            kind,
            push,
            pop: self.routes.pop,
            max_forwards: self.max_forwards,
            loop_hash: self.loop_hash,
        }
    }

    /// The `cpm-flow` token of the Route value we popped first: our
    /// Record-Route entry for a stream client. Looked up only for a
    /// shard's in-dialog request (a client's own requests in the dialog
    /// come on the flow itself, or forge one: they go on by the route
    /// set), not kept in [`OwnRoutes`] for every request (callgrind: ~20
    /// instructions an INVITE).
    fn flow_of_our_entry(&self) -> Option<Span> {
        let ours = self.m.route_values().first()?;
        let u = uri::addr_of(self.buf, ours.value).and_then(|a| uri::parse(self.buf, a))?;
        find_param(self.buf, u.params, FLOW_NAME).and_then(|p| p.value)
    }

    /// An in-dialog request toward a stream client, on the connection its
    /// Record-Route entry names (RFC 5626 §5.3: behind a NAT, that is the
    /// only way to reach it).
    fn to_flow(&self, token: Span) -> Decision {
        Decision::OnFlow {
            token,
            pop: self.routes.pop,
            max_forwards: self.max_forwards,
            loop_hash: self.loop_hash,
        }
    }

    /// The address of the Route value after ours.
    fn next_route(&self) -> Result<SocketAddr, Decision> {
        // Only the first MAX_ROUTES values are scanned: that many naming us
        // with more after them is a loop, not a route set.
        let Some(next) = self.m.routes.get(self.routes.pop) else {
            return Err(self.refuse(482, "Loop Detected - Route Names The Edge Repeatedly"));
        };
        let u = uri::addr_of(self.buf, next.value).and_then(|a| uri::parse(self.buf, a));
        let Some(u) = u else {
            return Err(self.refuse(400, "Bad Request - Malformed Route"));
        };
        self.t
            .resolve(self.buf, &u)
            .ok_or_else(|| self.refuse(404, "Not Found - No Route To Route Host"))
    }

    fn to_ruri(&self, kind: ForwardKind) -> Decision {
        match self.t.resolve(self.buf, &self.ruri) {
            Some(dst) => self.forward(dst, kind, None),
            None => self.refuse(404, "Not Found - No Route To Request-URI Host"),
        }
    }

    /// Served by the invited user's PF: a Request-URI in a served domain is
    /// an AoR, resolved to its best registered contact whose feature tags
    /// match the request (RFC 3841, simplified: one shared CPM service,
    /// then the highest q, then the latest registration); not registered →
    /// `480`. Any other Request-URI (a contact the PF chose, forking to
    /// every device) goes to its host.
    fn to_invited_client(&self) -> Decision {
        let Some(reg) = self
            .t
            .registrar
            .as_ref()
            .filter(|r| r.serves(self.ruri.host.get(self.buf)))
        else {
            return self.to_ruri(ForwardKind::ToInvitedClient);
        };
        let ruri = match self.m.start {
            StartLine::Request { uri, .. } => uri.get(self.buf),
            StartLine::Response { .. } => &[],
        };
        let mut key = [0u8; super::groups::MAX_IDENTITY];
        let flow = super::groups::identity_key(self.buf, &self.ruri, &mut key)
            .and_then(|aor| reg.best_flow(aor, ruri, self.m.cpm.0));
        match flow {
            Some((_, Some(conn))) => Decision::ToConn {
                conn,
                pop: self.routes.pop,
                max_forwards: self.max_forwards,
                loop_hash: self.loop_hash,
            },
            Some((dst, None)) => self.forward(dst, ForwardKind::ToInvitedClient, None),
            None => self.refuse(480, "Temporarily Unavailable - Not Registered"),
        }
    }

    /// The registered user this client's source is a flow of, as the hash
    /// routing keys users on; `None`: not registered (or no registrar).
    fn registered_user_hash(&self) -> Option<u64> {
        let reg = self.t.registrar.as_ref()?;
        reg.location
            .identity_of_flow(arrival(self.src, self.flow), identity_key_hash)
    }

    /// Arrived on our Record-Route entry (which carries no leg marker):
    /// a request inside a dialog the functions recorded.
    fn in_dialog(&self) -> bool {
        self.routes.pop > 0 && self.routes.leg.is_none() && self.m.to_tag.is_some()
    }

    /// A shard's request: the shard chooses the next hop.
    fn next_hop_of_shard_request(&self) -> Decision {
        if let Some(service) = self.routes.iwf {
            return self.to_iwf(service.get(self.buf));
        }
        if self.routes.remaining > 0 {
            return match self.next_route() {
                Ok(dst) => self.forward(dst, ForwardKind::LooseRoute, None),
                Err(d) => d,
            };
        }
        if self.in_dialog() {
            return match self.flow_of_our_entry() {
                Some(token) => self.to_flow(token),
                None => self.to_ruri(ForwardKind::InDialog),
            };
        }
        if self.routes.leg == Some(Leg::Terminating) {
            return self.to_invited_client();
        }
        self.by_cpm_rules(Self::to_invited_side)
    }

    /// The invited side's function: a group's hosting CS (`ctrl`), the
    /// network serving a user of another domain, else the invited user's
    /// PF (`term`).
    fn to_invited_side(&self) -> Decision {
        match self.group() {
            Some(g) => self.to_shard(
                self.t.shards.group_target(g),
                Leg::Controlling,
                ForwardKind::Controlling,
            ),
            None if self.in_another_network() => self.to_ruri(ForwardKind::InvitedNetwork),
            None => self.to_shard(
                self.t.shards.pick(user_hash(self.buf, &self.ruri)),
                Leg::Terminating,
                ForwardKind::TerminatingPf,
            ),
        }
    }

    /// Seed 5.2.3.2: the invited user is served by another network when
    /// this system knows its own domains (the registrar's) and the
    /// Request-URI's host is none of them. Without a registrar every user
    /// is this system's.
    fn in_another_network(&self) -> bool {
        let host = self.ruri.host.get(self.buf);
        matches!(self.ruri.scheme, Scheme::Sip | Scheme::Sips)
            && !host.is_empty()
            && self.t.registrar.as_ref().is_some_and(|r| !r.serves(host))
    }

    /// A client's request: it goes to a Conversation Server function (or
    /// the non-CPM route), never to an address the client chose.
    fn next_hop_of_client_request(&self) -> Decision {
        if self.routes.any_marker {
            return self.refuse(403, "Forbidden - Leg Marker From A Client");
        }
        // Seed 5.3.2: an Interworking Function sends what it converted from
        // its non-CPM service; it plays the sending side (there is no CPM
        // originating user), so its requests go to the invited side's
        // functions, and it registers with nobody.
        let from_iwf = self.t.is_iwf(self.src);
        if let Some(reg) = &self.t.registrar {
            if self.method == Method::Register && reg.serves(self.ruri.host.get(self.buf)) {
                return Decision::ToRegistrar;
            }
            if reg.require_registration && !from_iwf && self.registered_user_hash().is_none() {
                return self.refuse(403, "Forbidden - Not Registered");
            }
        }
        // Inside a dialog the next hop is what the functions recorded: the
        // next Route value, or with none left the Request-URI. Either must
        // be a function; a Route elsewhere is refused (no relaying), a
        // Request-URI elsewhere (a non-2xx ACK, which carries the INVITE's
        // Route set and Request-URI) follows the INVITE's legs.
        if self.routes.remaining > 0 {
            return match self.next_route() {
                Ok(dst) if self.in_dialog() && self.t.is_function_addr(dst) => {
                    self.forward(dst, ForwardKind::LooseRoute, None)
                }
                Ok(_) => self.refuse(403, "Forbidden - Not Relaying"),
                Err(d) => d,
            };
        }
        if self.in_dialog() {
            if let Some(dst) = self.t.resolve(self.buf, &self.ruri) {
                if self.t.is_function_addr(dst) {
                    return self.forward(dst, ForwardKind::InDialog, None);
                }
            }
        }
        self.by_cpm_rules(|r| {
            if from_iwf {
                return r.to_invited_side();
            }
            if !r.t.originating_pf {
                if let Some(g) = r.group() {
                    return r.to_shard(
                        r.t.shards.group_target(g),
                        Leg::Controlling,
                        ForwardKind::Controlling,
                    );
                }
            }
            r.to_shard(
                r.t.shards.pick(r.inviting_user_hash()),
                Leg::Originating,
                ForwardKind::OriginatingPf,
            )
        })
    }

    /// No CPM enabler usage indication → the non-CPM route or `403`
    /// (CANCEL and ACK carry none; with no non-CPM route they are CPM);
    /// a CPM request → `cpm`.
    fn by_cpm_rules(&self, cpm: impl Fn(&Self) -> Decision) -> Decision {
        let is_cpm = self.m.cpm.any()
            || (matches!(self.method, Method::Cancel | Method::Ack)
                && self.t.non_cpm_route.is_none());
        if is_cpm {
            return cpm(self);
        }
        match self.t.non_cpm_route {
            Some(dst) => self.forward(dst, ForwardKind::NonCpm, None),
            None => self.refuse(403, "Forbidden - No CPM Feature Tag"),
        }
    }

    /// Looked up only where it decides: a client's request goes to the
    /// inviting user's participating function first when `originating_pf`
    /// (callgrind: ~700 instructions of an INVITE saved there).
    fn group(&self) -> Option<usize> {
        self.t.groups.lookup(self.buf, &self.ruri)
    }

    /// Seed 5.3.1: the CS asked for an Interworking Function of `service`
    /// (the user keys which of several); none configured → `503`.
    fn to_iwf(&self, service: &[u8]) -> Decision {
        match self.t.iwf_for(service, user_hash(self.buf, &self.ruri)) {
            Some(dst) => self.forward(dst, ForwardKind::Interworking, None),
            None if self.method == Method::Ack => Decision::Drop(DropReason::AckRefused),
            None => Decision::Unavailable {
                retry_after: self.t.retry_after_s,
                reason: crate::sip::reply::UNAVAILABLE_NO_IWF,
            },
        }
    }

    /// A failed shard's users go to their next rendezvous choice (inside
    /// `pick`), its groups to its backup; with nobody left: 503.
    fn to_shard(&self, shard: Option<usize>, leg: Leg, kind: ForwardKind) -> Decision {
        match shard {
            Some(s) => self.forward(self.t.shards.get(s).addr, kind, Some((s, leg))),
            None if self.method == Method::Ack => Decision::Drop(DropReason::AckRefused),
            None => Decision::Unavailable {
                retry_after: self.t.retry_after_s,
                reason: crate::sip::reply::UNAVAILABLE_NO_CS,
            },
        }
    }

    /// The inviting user: P-Asserted-Identity where a trusted source
    /// asserted it (a client's is removed when forwarded, RFC 3325), else
    /// From.
    fn inviting_user_hash(&self) -> u64 {
        if let Some(h) = self.registered_user_hash() {
            return h;
        }
        let asserted = self
            .m
            .pai_uri
            .filter(|_| self.t.is_trusted_source(self.src));
        let user = asserted.unwrap_or(self.m.from_uri);
        match uri::parse(self.buf, user) {
            Some(u) => user_hash(self.buf, &u),
            None => hash::hash_bytes(user.get(self.buf)),
        }
    }
}

fn decide_request(s: Scanned<'_>, method: Method, ruri_span: Span, t: &Tables) -> Decision {
    let (buf, m, src) = (s.buf, s.m, s.src);
    let refuse = |code: u16, reason: &'static str| refusal(method, code, reason);
    // Phase 1, admission: the message and its Request-URI are well formed.
    if let Some(d) = m.defect {
        // An answer needs a Via to echo; one that did not parse is echoed
        // as written, never edited (and the answer goes to `src` anyway).
        if m.via_count == 0 {
            return Decision::Drop(DropReason::RequestUnanswerable);
        }
        return refuse(d.status(), d.reason());
    }
    let Some(ruri) = uri::parse(buf, ruri_span) else {
        return refuse(400, Defect::BadRequestUri.reason());
    };
    // Phase 2, the Route values naming us and the leg marker in ours.
    let from_shard = t.shards.by_addr(src);
    let mut routes = own_routes(buf, m, t);
    if from_shard.is_none() {
        routes.leg = None;
        routes.iwf = None;
    }
    if ruri.scheme == Scheme::Other && !non_sip_decided_by_a_function(m, t, src, &routes) {
        return refuse(416, "Unsupported URI Scheme");
    }
    if method == Method::Options
        && routes.remaining == 0
        && ruri.user.is_empty()
        && t.edge.is_me(ruri.host.get(buf), ruri.port)
    {
        return Decision::Reply {
            code: 200,
            reason: "OK",
        };
    }
    // Phase 3, hop limits: Max-Forwards and loops.
    let Some(max_forwards) = super::next_max_forwards(m, t.max_forwards_limit) else {
        return refuse(483, "Too Many Hops");
    };
    let leg_byte = routes.leg.map_or(0, |l| l as u8);
    let loop_hash = branch::loop_hash(buf, m, ruri_span, leg_byte, routes.pop);
    if branch::is_loop(buf, m, t.edge.via_sent_by(), loop_hash) {
        return refuse(482, "Loop Detected");
    }
    // Phase 4, the next hop: by who sent it.
    let r = Request {
        buf,
        m,
        method,
        ruri,
        src,
        flow: s.flow,
        t,
        from_shard,
        routes,
        max_forwards,
        loop_hash,
    };
    match r.from_shard {
        Some(_) => r.next_hop_of_shard_request(),
        None => r.next_hop_of_client_request(),
    }
}

/// Where a message came from as bindings are matched against it: its
/// source and, from a stream, the connection its token names.
pub fn arrival(src: SocketAddr, flow: Option<&[u8]>) -> (SocketAddr, Option<Flow>) {
    let key = crate::sip::flow::process_key();
    (src, flow.and_then(|t| Flow::from_token(t, &key)))
}

/// [`user_hash`] of a canonical identity key (`user@host`, host
/// lowercased): the same value as of any URI naming that user.
pub fn identity_key_hash(key: &[u8]) -> u64 {
    let mut h = StableHash::default();
    match key.iter().rposition(|&b| b == b'@') {
        Some(at) => {
            h.stream::<false>(&key[..at]);
            h.byte(b'@');
            h.stream::<true>(&key[at + 1..]);
        }
        None => h.stream::<false>(key),
    }
    h.byte(0xff);
    h.finish()
}

/// Hash of a user's canonical identity (the rendezvous input).
pub fn user_hash(buf: &[u8], u: &Uri) -> u64 {
    let mut h = StableHash::default();
    uri::identity_hash(buf, u, &mut h);
    h.byte(0xff);
    h.finish()
}
