//! The Conversation Server's transaction user: requests from the edge in,
//! the Participating and Controlling Functions' sessions, requests and
//! responses out. Sans-IO over [`TransactionTable`] and [`DialogTable`]:
//! datagrams and timer expiries go in with an injected `now`, datagrams come
//! out of [`Server::poll_transmit`], the next deadline out of
//! [`Server::poll_timeout`], and what happened (for the log, and the C.1
//! trace of the demo) out of [`Server::poll_note`].
//!
//! Both functions are back-to-back user agents (README "The Conversation
//! Server" says why): a session is an upstream UAS dialog and one dialog
//! per downstream leg, the rules between them are [`super::session`]'s.
//!
//! A request's path through the server, as named phases:
//! `handle_datagram` → scan → transaction layer → `on_request` (out of
//! dialog: `on_invite` → which function by the edge's leg marker → authorise
//! → media policy → `start_session`) or `in_dialog` (BYE, ACK, relayed
//! requests) → the session's [`Action`]s → `execute`.
//!
//! A third-party REGISTER from the edge (the users' registrar, 3GPP TS
//! 24.229 §5.4.1.7 style) carries a user's registration state (RFC 3680):
//! `on_register` stores its contacts ([`Registrations`]), and the invited
//! user's Participating Function forks to those that offer the service
//! asked for (seed 5.2.5), or, with none, follows [`Terminating`].

use super::conference::{write_full, Conference, Disconnection, EndpointStatus, Participant};
use super::directory::{identity_of, Directory, Group, InvitePolicy};
use super::registrations::{self, Binding, Contact, Registrations};
use super::request::{contact_params, party_without_tag, put_addr, write_request, Invitation};
use super::session::{Action, LegState, Mode, Session, Upstream};
use super::{multipart, resource_lists};
use crate::route::legs::Leg;
use crate::sip::dialog::{AckWait, AckWaitStep, Dialog, DialogId, DialogTable, InDialog};
use crate::sip::feature_tag::CpmServices;
use crate::sip::media::{check_answer, filter_offer, MediaPolicy};
use crate::sip::params::find_param;
use crate::sip::rewrite::Out;
use crate::sip::scan::{scan, Message, Method, StartLine};
use crate::sip::sdp::{self, MediaType};
use crate::sip::transaction::{
    self, response_destination, write_response, Event, Received, ResponseSpec, TransactionId,
    TransactionTable, Transmit,
};
use crate::sip::uri::{self, addr_of};
use crate::sip::Span;
use siphasher::sip::SipHasher13;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::Hasher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod pager;
pub use super::directory::WhenUnregistered;
pub use pager::{
    decode_deferred, encode_deferred, Deferred, DeferredChange, PagerStats, MAX_DEFERRED,
    MAX_DEFERRED_PER_USER,
};

/// Largest message the server writes.
const MAX_OUT: usize = 16 * 1024;
/// Notes kept for [`Server::poll_note`] before the oldest is dropped.
const MAX_NOTES: usize = 4096;
/// Most conference-state subscriptions in one session (one per dialog).
const MAX_SUBSCRIBERS: usize = super::directory::MAX_MEMBERS + 1;
/// Longest conference subscription granted (and the default).
const MAX_SUBSCRIPTION: Duration = Duration::from_secs(3600);
/// The methods answered outside a dialog (`Allow`).
const ALLOW: &[u8] =
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE, INFO, UPDATE, REGISTER\r\n";
/// The registration state's body type (RFC 3680 §5).
const REGINFO: &str = "application/reginfo+xml";
/// A contact's lifetime when neither its `expires` nor the REGISTER's
/// Expires says one (RFC 3261 §10.2.1.1's suggested default).
const DEFAULT_EXPIRES: u32 = 3600;

/// Where the invited user's Participating Function sends an invitation
/// when the user has no registered contact offering the service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Terminating {
    /// `480 Temporarily Unavailable - Not Registered` (interworking, e.g.
    /// to SMS, comes later).
    Registered,
    /// One leg to the Request-URI's host:port, as before registration
    /// existed (the demo's clients do not register yet).
    #[default]
    RequestUri,
}

/// How the server is set up.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The shard name the edge knows this CS by: the host of its groups.
    pub name: String,
    /// Our address: Via sent-by, Contact, the source the edge trusts.
    pub local: SocketAddr,
    /// The edges: the only sources of requests outside a dialog, and where
    /// a Route naming no IP literal sends ours.
    pub edges: Vec<SocketAddr>,
    pub max_sessions: usize,
    pub max_dialogs: usize,
    /// Controlling Function: how long a member may take to answer.
    pub invite_timeout: Duration,
    /// The provider's media policy under every user's and group's.
    pub provider_media: MediaPolicy,
    /// The canonical identity of the conference factory URI: an INVITE to
    /// it with a recipient list (RFC 5366) makes an ad-hoc group, hosted
    /// by the inviting user's Participating Function.
    pub conference_factory: Option<String>,
    /// The invited user's Participating Function when the user has no
    /// registered contact for the service.
    pub terminating: Terminating,
    /// The provider's choice for a message to a user with no registered
    /// device (seed 5.3.1.1.1), where the user states none.
    pub when_unregistered: WhenUnregistered,
    /// A `tel:` recipient no CPM user has (seed 5.3.1.2.3).
    pub unmapped_numbers: UnmappedNumbers,
    /// Non-SIP recipient schemes (`mailto`, `wv` ...) → the service of the
    /// IWF that reaches them; a scheme not here is refused (`416`).
    pub scheme_iwf: std::collections::HashMap<String, String>,
    /// The sending side (seed 5.3.1.2.1/.2): a failure saying the target
    /// network lacks CPM or SIP is relayed, or re-targeted to SMS.
    pub when_remote_lacks: RemoteLacks,
    pub transaction: transaction::Config,
}

/// What the sending user's PF does when the target network lacks CPM or
/// a SIP/IP Core.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteLacks {
    /// The error goes back to the sending user.
    #[default]
    Relay,
    /// Through the edge to an Interworking Function for SMS, when the
    /// recipient has a number.
    Sms,
}

/// What the sending user's PF does with a `tel:` number no CPM user has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnmappedNumbers {
    /// `404 Not Found - No CPM User Has This Number`.
    #[default]
    Reject,
    /// Through the edge to an Interworking Function for SMS.
    Sms,
}

/// Counters for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub sessions_started: [u64; 3],
    pub sessions_ended: u64,
    pub refused: u64,
    pub not_from_edge: u64,
    /// A `ctrl` INVITE for a group this CS does not host: the edge's group
    /// table and ours disagree.
    pub group_divergence: u64,
    pub answers_refused: u64,
    pub relayed: u64,
    /// Third-party REGISTERs accepted (a registration, refresh or
    /// de-registration stored).
    pub registers: u64,
}

/// Which function a session is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Function {
    Originating { user: String },
    Terminating { user: String },
    Controlling { group: String },
}

impl Function {
    fn index(&self) -> usize {
        match self {
            Function::Originating { .. } => 0,
            Function::Terminating { .. } => 1,
            Function::Controlling { .. } => 2,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId {
    slot: u32,
    generation: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Up,
    Leg(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    InviteTimeout(usize),
    AckWait,
}

/// The offer as forwarded, for checking answers (5.2.3.7).
#[derive(Clone, Debug, Default)]
struct Forwarded {
    body: Vec<u8>,
    ports: Vec<bool>,
    types: Vec<MediaType>,
}

/// The upstream side: the INVITE received and our UAS dialog.
struct Up {
    txn: Option<TransactionId>,
    request: Vec<u8>,
    source: SocketAddr,
    tag: Vec<u8>,
    /// Made at the first 18x/2xx, with the Contact that reflects the leg's.
    dialog: Option<DialogId>,
    contact: Vec<u8>,
    ack_wait: Option<AckWait>,
}

/// One downstream leg.
struct LegData {
    target: String,
    txn: Option<TransactionId>,
    request: Vec<u8>,
    dialog: Option<DialogId>,
    answer: Vec<u8>,
    /// The leg's Contact header parameters (its `isfocus`, feature tags).
    contact_params: Vec<u8>,
    /// Its final error's reason phrase and Warning lines: what a
    /// Participating Function relays upstream.
    failure: Option<(String, Vec<Vec<u8>>)>,
}

struct SessionData {
    function: Function,
    rules: Session,
    up: Up,
    legs: Vec<LegData>,
    offer: Forwarded,
    /// The inviter's URI (the conference state lists it first).
    inviter: String,
    /// Conference-state subscriptions (Controlling Function, RFC 4575)
    /// inside the session's dialogs, at most [`MAX_SUBSCRIBERS`].
    subscribers: Vec<(Side, Instant)>,
    /// The version of the last conference-info document sent.
    version: u32,
}

struct Slot {
    generation: u32,
    session: Option<SessionData>,
}

/// An in-dialog request passed to the other side (Participating Function):
/// its answer goes back on `server`.
struct Relay {
    server: TransactionId,
    request: Vec<u8>,
    source: SocketAddr,
}

/// A request the transaction layer passed up: its server transaction, its
/// real source, its bytes and their scan. What every answer is built from.
#[derive(Clone, Copy)]
struct Rx<'a> {
    id: TransactionId,
    src: SocketAddr,
    b: &'a [u8],
    m: &'a Message,
}

/// A refusal of an INVITE: status, reason phrase, optional Warning text.
struct Refusal {
    code: u16,
    reason: String,
    warning: Option<String>,
}

fn refusal(code: u16, reason: &str) -> Refusal {
    Refusal {
        code,
        reason: reason.to_string(),
        warning: None,
    }
}

/// What the upstream INVITE asks, once authorised: the function, the
/// downstream legs and the offer to send on them.
struct Plan {
    function: Function,
    mode: Mode,
    targets: Vec<String>,
    max_joined: usize,
    offer: Forwarded,
    route: Vec<u8>,
    next_hop: SocketAddr,
    from: Vec<u8>,
    asserted: Option<String>,
    referred_by: Option<String>,
    up_contact: Vec<u8>,
    leg_contact: Vec<u8>,
    /// The legs' To (`name-addr`) when it is not the target: a fork to the
    /// user's devices keeps the user's address there.
    to: Option<Vec<u8>>,
}

pub struct Server {
    settings: Settings,
    directory: Arc<Directory>,
    txns: TransactionTable,
    dialogs: DialogTable,
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    by_txn: HashMap<TransactionId, (SessionId, Side)>,
    by_dialog: HashMap<DialogId, (SessionId, Side)>,
    relays: HashMap<TransactionId, Relay>,
    /// Pager-mode messages on their legs ([`pager`]), by id; each leg's
    /// client transaction names its message.
    pagers: HashMap<u64, pager::Pager>,
    pager_legs: HashMap<TransactionId, u64>,
    deferred: pager::DeferredStore,
    pager_stats: PagerStats,
    deadlines: BTreeSet<(Instant, u64, SessionId, Due)>,
    notes: VecDeque<String>,
    stats: Stats,
    /// Copy on write: a reader ([`Server::registrations`]) holds a snapshot
    /// while the next REGISTER changes a copy.
    registrations: Arc<Registrations>,
    key: [u64; 2],
    counter: u64,
    out: Vec<u8>,
}

impl Server {
    pub fn new(settings: Settings, directory: Arc<Directory>) -> Server {
        let key = settings.transaction.key;
        Server {
            txns: TransactionTable::new(settings.transaction),
            dialogs: DialogTable::new(settings.max_dialogs, [key[1], key[0]]),
            settings,
            directory,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            by_txn: HashMap::new(),
            by_dialog: HashMap::new(),
            relays: HashMap::new(),
            pagers: HashMap::new(),
            pager_legs: HashMap::new(),
            deferred: pager::DeferredStore::default(),
            pager_stats: PagerStats::default(),
            deadlines: BTreeSet::new(),
            notes: VecDeque::new(),
            stats: Stats::default(),
            registrations: Arc::new(Registrations::default()),
            key,
            counter: 0,
            out: vec![0; MAX_OUT],
        }
    }

    /// Replace the directory (admin API, reload). Sessions in progress
    /// keep what they were set up with.
    pub fn set_directory(&mut self, d: Arc<Directory>) {
        // Registrations are for provisioned users only: a user removed
        // leaves the table (and the table stays bounded by the directory).
        if self.registrations.users().any(|u| d.user(u).is_none()) {
            Arc::make_mut(&mut self.registrations).retain_users(|u| d.user(u).is_some());
        }
        self.directory = d;
    }

    pub fn directory(&self) -> &Arc<Directory> {
        &self.directory
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// `user`'s (canonical identity) registered contacts live at `now`,
    /// best `q` first; empty when the user is not registered.
    pub fn registered(&self, user: &str, now: Instant) -> Vec<Contact> {
        self.registrations.contacts(user, now).cloned().collect()
    }

    /// The registration table as it is now: a snapshot for another thread
    /// (the admin API), cheap to take (the next change copies it).
    /// Pager-mode message counters.
    pub fn pager_stats(&self) -> PagerStats {
        self.pager_stats
    }

    /// Every message kept for a user not registered, by user.
    pub fn deferred_messages(&self) -> Vec<(String, Deferred)> {
        self.deferred.snapshot()
    }

    pub fn registrations(&self) -> Arc<Registrations> {
        Arc::clone(&self.registrations)
    }

    pub fn transaction_stats(&self) -> transaction::Stats {
        self.txns.stats()
    }

    pub fn sessions(&self) -> usize {
        self.live
    }

    pub fn dialogs(&self) -> usize {
        self.dialogs.len()
    }

    pub fn transactions(&self) -> usize {
        self.txns.len()
    }

    pub fn poll_transmit(&mut self, buf: &mut Vec<u8>) -> Option<Transmit> {
        self.txns.poll_transmit(buf)
    }

    /// The next instant [`Server::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mine = self.deadlines.first().map(|d| d.0);
        match (self.txns.poll_timeout(), mine) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// What happened, one line each, oldest first.
    pub fn poll_note(&mut self) -> Option<String> {
        self.notes.pop_front()
    }

    /// A note about session `sid`, prefixed with which function it is.
    fn note_in(&mut self, sid: SessionId, text: String) {
        let label = self
            .session(sid)
            .map_or(String::new(), |s| function_name(&s.function));
        self.note(format!("{label} {text}"));
    }

    fn note(&mut self, text: String) {
        if self.notes.len() >= MAX_NOTES {
            self.notes.pop_front();
        }
        self.notes.push_back(text);
    }

    /// A fresh token for tags and Call-IDs: a keyed hash of a counter, so
    /// that nobody can guess the next one.
    fn token(&mut self) -> Vec<u8> {
        self.counter += 1;
        let mut h = SipHasher13::new_with_keys(self.key[1], self.key[0] ^ 0x5eed);
        h.write_u64(self.counter);
        let mut b = [0u8; 16];
        crate::sip::hash::hex_into(h.finish(), &mut b);
        b.to_vec()
    }

    fn via(&mut self) -> Vec<u8> {
        let branch = self.txns.new_branch();
        let mut v = vec![0u8; 96];
        let mut o = Out::new(&mut v);
        o.put(b"SIP/2.0/UDP ");
        put_addr(&mut o, self.settings.local);
        o.put(b";branch=");
        o.put(branch.as_bytes());
        o.put(b";rport");
        let n = o.finish().unwrap_or(0);
        v.truncate(n);
        v
    }

    // ----- inputs ------------------------------------------------------

    /// A datagram from `source`.
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, bytes: &[u8]) {
        let m = scan(bytes);
        // Everything reaches a CS through an edge (in-dialog requests too:
        // the edge record-routes). From anyone else: a request gets one
        // stateless 403 (no 100 Trying, no transaction), a response is
        // dropped; both counted.
        if !self.settings.edges.contains(&source) {
            self.stats.not_from_edge += 1;
            if m.is_request() && m.method() != Some(Method::Ack) {
                self.answer_stateless(
                    bytes,
                    &m,
                    source,
                    403,
                    "Forbidden - Not From The SIP/IP Core",
                );
            }
            return;
        }
        if let Some(defect) = m.defect {
            if m.is_request() && m.method() != Some(Method::Ack) {
                let reason = format!("Bad Request - {}", defect.reason());
                self.answer_stateless(bytes, &m, source, 400, &reason);
            }
            self.stats.refused += 1;
            return;
        }
        match self.txns.handle_datagram(now, source, bytes, &m) {
            Ok(Received::Request(id)) => self.on_request(
                now,
                Rx {
                    id,
                    src: source,
                    b: bytes,
                    m: &m,
                },
            ),
            Ok(Received::Cancel { cancel, invite }) => self.on_cancel(
                now,
                Rx {
                    id: cancel,
                    src: source,
                    b: bytes,
                    m: &m,
                },
                invite,
            ),
            Ok(Received::Response { id, code }) => self.on_response(now, id, code, bytes, &m),
            Ok(Received::Ack(_)) => self.on_ack(bytes, &m),
            Ok(Received::Absorbed | Received::StrayResponse) => {}
            Err(transaction::Error::TableFull) if m.is_request() => {
                self.answer_stateless(
                    bytes,
                    &m,
                    source,
                    503,
                    "Service Unavailable - Too Many Transactions",
                );
            }
            Err(_) => self.stats.refused += 1,
        }
        self.drain_events(now);
    }

    /// The caller's clock reached [`Server::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        self.txns.handle_timeout(now);
        self.drain_events(now);
        while let Some(first) = self.deadlines.first().copied() {
            if first.0 > now {
                break;
            }
            self.deadlines.remove(&first);
            let (_, _, sid, due) = first;
            self.on_due(now, sid, due);
        }
        self.drain_events(now);
    }

    fn on_due(&mut self, now: Instant, sid: SessionId, due: Due) {
        let actions = match due {
            Due::InviteTimeout(i) => match self.session_mut(sid) {
                Some(s) => s.rules.on_invite_timeout(i),
                None => return,
            },
            Due::AckWait => self.ack_wait_step(now, sid),
        };
        self.execute(now, sid, actions);
    }

    fn ack_wait_step(&mut self, now: Instant, sid: SessionId) -> Vec<Action> {
        let Some(s) = self.session_mut(sid) else {
            return Vec::new();
        };
        let Some(w) = s.up.ack_wait.as_mut() else {
            return Vec::new();
        };
        let step = w.on_timeout(now);
        let at = w.deadline();
        let txn = s.up.txn;
        match step {
            AckWaitStep::GiveUp => {
                s.up.ack_wait = None;
                return s.rules.on_upstream_ack_timeout();
            }
            AckWaitStep::Retransmit => {
                if let Some(t) = txn {
                    let _ = self.txns.resend_final(now, t);
                }
            }
            AckWaitStep::Wait => {}
        }
        self.schedule(at, sid, Due::AckWait);
        Vec::new()
    }

    fn schedule(&mut self, at: Instant, sid: SessionId, due: Due) {
        self.counter += 1;
        self.deadlines.insert((at, self.counter, sid, due));
    }

    fn drain_events(&mut self, now: Instant) {
        while let Some(e) = self.txns.poll_event() {
            match e {
                Event::Timeout { id, .. } | Event::TransportError { id } => {
                    self.on_txn_failed(now, id)
                }
                Event::Terminated { id } => {
                    self.by_txn.remove(&id);
                    self.relays.remove(&id);
                }
            }
        }
    }

    /// A client transaction of ours got no final response: a leg's INVITE
    /// is then a 408 failure; a relayed request is answered 408.
    fn on_txn_failed(&mut self, now: Instant, id: TransactionId) {
        if self.pager_leg_failed(now, id) {
            return;
        }
        if let Some(r) = self.relays.remove(&id) {
            self.answer_relay(now, &r, 408, &[], b"");
            return;
        }
        let Some(&(sid, Side::Leg(i))) = self.by_txn.get(&id) else {
            return;
        };
        let actions = match self.session_mut(sid) {
            Some(s) => s.rules.on_failure(i, 408),
            None => return,
        };
        self.execute(now, sid, actions);
    }

    // ----- requests ------------------------------------------------------

    fn on_request(&mut self, now: Instant, rx: Rx<'_>) {
        let Rx { m, .. } = rx;
        if m.to_tag.is_some() {
            return self.in_dialog(now, rx);
        }
        match m.method() {
            Some(Method::Invite) => self.on_invite(now, rx),
            Some(Method::Register) => self.on_register(now, rx),
            Some(Method::Message) => self.on_message(now, rx),
            Some(Method::Options) => self.respond(now, rx, 200, "OK", &[ALLOW]),
            _ => self.respond(now, rx, 405, "Method Not Allowed", &[ALLOW]),
        }
    }

    fn on_invite(&mut self, now: Instant, rx: Rx<'_>) {
        let Rx { b, m, .. } = rx;
        let plan = self.plan(now, b, m);
        match plan {
            Ok(plan) => self.start_session(now, rx, plan),
            Err(r) => {
                self.stats.refused += 1;
                self.note(format!(
                    "refused INVITE {}: {} {}",
                    request_uri(b, m),
                    r.code,
                    r.reason
                ));
                let warning = r.warning.map(|w| warning_line(&self.settings.local, &w));
                let extra: Vec<&[u8]> = warning.iter().map(|w| &w[..]).collect();
                self.respond(now, rx, r.code, &r.reason, &extra);
            }
        }
    }

    /// A third-party REGISTER from the edge (the users' registrar): the
    /// user's registration state replaces what was stored, `200` with the
    /// Expires echoed; refusals say why (`415`, `400`, `404`).
    fn on_register(&mut self, now: Instant, rx: Rx<'_>) {
        let Rx { b, m, .. } = rx;
        match self.register(now, b, m) {
            Ok((user, stored, expires)) => {
                self.stats.registers += 1;
                let what = match stored.kept {
                    0 => "de-registered".to_string(),
                    1 => "registered 1 contact".to_string(),
                    n => format!("registered {n} contacts"),
                };
                let extra = match stored.dropped {
                    0 => String::new(),
                    n => format!(" ({n} left out: at most {})", registrations::MAX_CONTACTS),
                };
                self.note(format!("[PF {user}] {what}{extra}"));
                let line = expires.map(|e| format!("Expires: {e}\r\n").into_bytes());
                let headers: Vec<&[u8]> = line.iter().map(|l| &l[..]).collect();
                self.respond(now, rx, 200, "OK", &headers);
                if stored.kept > 0 {
                    self.deliver_deferred(now, &user);
                }
            }
            Err(r) => {
                self.stats.refused += 1;
                let to = String::from_utf8_lossy(m.to_uri.get(b)).into_owned();
                self.note(format!(
                    "refused REGISTER for {to}: {} {}",
                    r.code, r.reason
                ));
                let accept: &[&[u8]] = if r.code == 415 {
                    &[b"Accept: application/reginfo+xml\r\n"]
                } else {
                    &[]
                };
                self.respond(now, rx, r.code, &r.reason, accept);
            }
        }
    }

    /// The REGISTER's user (its To: the AoR), what was stored for it, and
    /// the Expires to echo. `Expires: 0` de-registers the user whatever the
    /// body says; so does an empty body with it.
    fn register(
        &mut self,
        now: Instant,
        b: &[u8],
        m: &Message,
    ) -> Result<(String, registrations::Stored, Option<u32>), Refusal> {
        let expires = match header_value(b, m, &[b"Expires"]) {
            None => None,
            Some(v) => Some(
                v.trim()
                    .parse::<u32>()
                    .map_err(|_| refusal(400, "Bad Request - Malformed Expires"))?,
            ),
        };
        let body = m.body.get(b);
        let bodiless_removal = expires == Some(0) && body.is_empty();
        if !bodiless_removal && !is_type(b, m, REGINFO) {
            return Err(refusal(
                415,
                "Unsupported Media Type - Expected application/reginfo+xml",
            ));
        }
        let aor = String::from_utf8_lossy(m.to_uri.get(b)).into_owned();
        let user = identity_of(&aor)
            .filter(|u| self.directory.user(u).is_some())
            .ok_or_else(|| refusal(404, "Not Found - User Not Provisioned"))?;
        let bindings = match expires {
            Some(0) => Vec::new(),
            _ => reginfo_bindings(body, &user, expires.unwrap_or(DEFAULT_EXPIRES))
                .map_err(|why| refusal(400, &format!("Bad Request - {why}")))?,
        };
        let stored = Arc::make_mut(&mut self.registrations)
            .update(&user, &bindings, now)
            .map_err(|e| refusal(503, &format!("Service Unavailable - {e}")))?;
        Ok((user, stored, expires))
    }

    /// Phase 1 of an INVITE: where it came from, which function the edge's
    /// marker names, who is served, and what offer goes on.
    fn plan(&mut self, now: Instant, b: &[u8], m: &Message) -> Result<Plan, Refusal> {
        let (route, marker) = self
            .edge_route(b, m)
            .ok_or_else(|| refusal(403, "Forbidden - No Leg Marker From The Edge"))?;
        let next_hop = self.hop_of(&route);
        let mf = m.max_forwards.map_or(70, |(_, n)| n);
        if mf == 0 {
            return Err(refusal(483, "Too Many Hops"));
        }
        let target = identity_of(request_uri(b, m).as_str())
            .ok_or_else(|| refusal(416, "Unsupported URI Scheme"))?;
        let mut plan = match marker {
            Leg::Originating => self.originating(b, m, &target)?,
            Leg::Terminating => self.terminating(now, b, m, &target)?,
            Leg::Controlling => self.controlling(b, m, &target)?,
        };
        plan.route = route;
        plan.next_hop = next_hop;
        Ok(plan)
    }

    /// 5.2.3.2.1: the inviting user's Participating Function.
    fn originating(&mut self, b: &[u8], m: &Message, target: &str) -> Result<Plan, Refusal> {
        let user = asserted_identity(b, m)
            .ok_or_else(|| refusal(400, "Bad Request - No Inviting Identity"))?;
        let dir = Arc::clone(&self.directory);
        let u = dir
            .user(&user)
            .ok_or_else(|| refusal(403, "Forbidden - User Not Provisioned"))?;
        let policy = self.settings.provider_media.merged(&u.media);
        if self.settings.conference_factory.as_deref() == Some(target) {
            return self.ad_hoc(b, m, &user, &policy);
        }
        let offer = offer_after_policy(b, m, &policy, "user")?;
        // 5.2.3.2.1 b: a group hosted here; this CS is its Controlling
        // Function too (the edge would only send it back to us).
        if dir
            .group(target)
            .is_some_and(|g| g.host == self.settings.name)
        {
            let mut plan = self.controlling_with(b, m, target, Some(&user), offer)?;
            plan.function = Function::Controlling {
                group: target.to_string(),
            };
            return Ok(plan);
        }
        Ok(self.single_leg(
            b,
            m,
            Function::Originating { user: user.clone() },
            offer,
            Some(u.uri.clone()),
        ))
    }

    /// 5.2.3.2.3: the invited user's Participating Function. It delivers
    /// to every registered device offering the service (seed 5.2.5: one
    /// leg each, in parallel, the first answer wins); with none, as
    /// [`Settings::terminating`] says.
    fn terminating(
        &mut self,
        now: Instant,
        b: &[u8],
        m: &Message,
        target: &str,
    ) -> Result<Plan, Refusal> {
        let dir = Arc::clone(&self.directory);
        let u = dir
            .user(target)
            .ok_or_else(|| refusal(404, "Not Found - No Such User Or Group"))?;
        let wanted = wanted_service(m);
        let devices: Vec<String> = self
            .registrations
            .contacts(target, now)
            .filter(|c| c.offers(wanted))
            .map(|c| c.uri.clone())
            .collect();
        if devices.is_empty() && self.settings.terminating == Terminating::Registered {
            return Err(refusal(480, "Temporarily Unavailable - Not Registered"));
        }
        let policy = self.settings.provider_media.merged(&u.media);
        let offer = offer_after_policy(b, m, &policy, "user")?;
        let asserted = asserted_uri(b, m);
        let function = Function::Terminating {
            user: target.to_string(),
        };
        let mut plan = self.single_leg(b, m, function, offer, asserted);
        if !devices.is_empty() {
            // Request-URI: the device; To: still the user (RFC 3261 §16.5).
            plan.to = Some(party_without_tag(b, m.to));
            plan.targets = devices;
        }
        Ok(plan)
    }

    fn single_leg(
        &self,
        b: &[u8],
        m: &Message,
        function: Function,
        offer: Forwarded,
        asserted: Option<String>,
    ) -> Plan {
        let params = contact_params(b, m);
        Plan {
            function,
            mode: Mode::Participating,
            targets: vec![request_uri(b, m)],
            max_joined: 1,
            offer,
            route: Vec::new(),
            next_hop: self.settings.local,
            from: party_without_tag(b, m.from),
            asserted,
            referred_by: referred_by(b, m),
            up_contact: self.contact(None, b""),
            leg_contact: self.contact(None, &params),
            to: None,
        }
    }

    /// 5.2.3.2.2: the Controlling Function of a pre-defined group, reached
    /// through the edge (`ctrl`).
    fn controlling(&mut self, b: &[u8], m: &Message, target: &str) -> Result<Plan, Refusal> {
        let hosted = self
            .directory
            .group(target)
            .is_some_and(|g| g.host == self.settings.name);
        if !hosted {
            self.stats.group_divergence += 1;
            return Err(refusal(404, "Not Found - Group Not Hosted Here"));
        }
        let offer = offer_after_policy(b, m, &MediaPolicy::default(), "provider")?;
        self.controlling_with(b, m, target, None, offer)
    }

    fn controlling_with(
        &mut self,
        b: &[u8],
        m: &Message,
        target: &str,
        inviter: Option<&str>,
        offer: Forwarded,
    ) -> Result<Plan, Refusal> {
        let dir = Arc::clone(&self.directory);
        let Some(g) = dir.group(target) else {
            return Err(refusal(404, "Not Found - Group Not Hosted Here"));
        };
        let inviter = match inviter {
            Some(i) => i.to_string(),
            None => asserted_identity(b, m)
                .ok_or_else(|| refusal(400, "Bad Request - No Inviting Identity"))?,
        };
        authorise_inviter(g, &inviter)?;
        // The group's policy (over the provider's) on what came in: the
        // inviter's PF has applied the user's already.
        let policy = self.settings.provider_media.merged(&g.media);
        let offer = apply_policy(&offer.body, &policy, "group")?;
        let targets: Vec<String> = g
            .members
            .iter()
            .filter(|mb| mb.identity != inviter)
            .map(|mb| mb.uri.clone())
            .collect();
        if targets.is_empty() {
            return Err(refusal(480, "Temporarily Unavailable - No Other Member"));
        }
        let inviter_uri = asserted_uri(b, m).unwrap_or_else(|| format!("sip:{inviter}"));
        let group_user = g
            .uri
            .trim_start_matches("sip:")
            .split('@')
            .next()
            .unwrap_or("")
            .to_string();
        let focus = format!(
            ";isfocus{}",
            String::from_utf8_lossy(&cpm_feature_param(b, m))
        );
        Ok(Plan {
            function: Function::Controlling {
                group: target.to_string(),
            },
            mode: Mode::Controlling,
            targets,
            max_joined: g.max_participants.saturating_sub(1),
            offer,
            route: Vec::new(),
            next_hop: self.settings.local,
            from: format!("<{}>", g.uri).into_bytes(),
            asserted: Some(inviter_uri.clone()),
            referred_by: Some(inviter_uri),
            up_contact: self.contact(Some(&group_user), focus.as_bytes()),
            leg_contact: self.contact(Some(&group_user), focus.as_bytes()),
            to: None,
        })
    }

    /// An ad-hoc group (RFC 5366, OMA CPM ad-hoc group sessions): the
    /// inviting user's Participating Function hosts it as its Controlling
    /// Function and invites every recipient of the list with the offer
    /// part, after the user's media policy.
    fn ad_hoc(
        &mut self,
        b: &[u8],
        m: &Message,
        inviter: &str,
        policy: &MediaPolicy,
    ) -> Result<Plan, Refusal> {
        let require = header_value(b, m, &[b"Require"]).unwrap_or_default();
        if !require
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("recipient-list-invite"))
        {
            return Err(Refusal {
                code: 421,
                reason: "Extension Required - recipient-list-invite".into(),
                warning: None,
            });
        }
        let (sdp, list) = ad_hoc_parts(b, m)?;
        let entries =
            resource_lists::parse(list).map_err(|e| refusal(400, &format!("Bad Request - {e}")))?;
        let targets: Vec<String> = entries
            .into_iter()
            .map(|e| e.uri)
            .filter(|u| identity_of(u).as_deref() != Some(inviter))
            .collect();
        if targets.is_empty() {
            return Err(refusal(480, "Temporarily Unavailable - No Other Recipient"));
        }
        if targets.len() > super::directory::MAX_MEMBERS {
            return Err(refusal(403, "Forbidden - Too Many Recipients"));
        }
        let offer = apply_policy(sdp, policy, "user")?;
        let conference = format!("adhoc-{}", String::from_utf8_lossy(&self.token()));
        let inviter_uri = asserted_uri(b, m).unwrap_or_else(|| format!("sip:{inviter}"));
        let focus = format!(
            ";isfocus{}",
            String::from_utf8_lossy(&cpm_feature_param(b, m))
        );
        let contact = self.contact(Some(&conference), focus.as_bytes());
        Ok(Plan {
            function: Function::Controlling {
                group: format!("sip:{conference}@{}", self.settings.local),
            },
            mode: Mode::Controlling,
            max_joined: targets.len(),
            targets,
            offer,
            route: Vec::new(),
            next_hop: self.settings.local,
            from: format!("<{inviter_uri}>").into_bytes(),
            asserted: Some(inviter_uri.clone()),
            referred_by: Some(inviter_uri),
            up_contact: contact.clone(),
            leg_contact: contact,
            to: None,
        })
    }

    /// Our Contact value: `<sip:[user@]local>` and header parameters.
    fn contact(&self, user: Option<&str>, params: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; 64 + params.len() + user.map_or(0, str::len)];
        let mut o = Out::new(&mut v);
        o.put(b"<sip:");
        if let Some(u) = user.filter(|u| !u.is_empty()) {
            o.put(u.as_bytes());
            o.put(b"@");
        }
        put_addr(&mut o, self.settings.local);
        o.put(b">");
        o.put(params);
        let n = o.finish().unwrap_or(0);
        v.truncate(n);
        v
    }

    /// The edge's Route value (the first one not naming us) and its
    /// `cpm-leg` marker.
    fn edge_route(&self, b: &[u8], m: &Message) -> Option<(Vec<u8>, Leg)> {
        for r in m.route_values() {
            let u = addr_of(b, r.value).and_then(|s| uri::parse(b, s))?;
            let me = uri::socket_addr(u.host.get(b), u.port) == Some(self.settings.local);
            if me {
                continue;
            }
            let p = find_param(b, u.params, b"cpm-leg")?;
            let leg = Leg::from_marker(p.value?.get(b))?;
            return Some((r.value.get(b).to_vec(), leg));
        }
        None
    }

    /// Where a request routed by this Route value goes: its IP literal, or
    /// the first edge.
    fn hop_of(&self, route: &[u8]) -> SocketAddr {
        let whole = Span::new(0, route.len());
        addr_of(route, whole)
            .and_then(|s| uri::parse(route, s))
            .and_then(|u| uri::socket_addr(u.host.get(route), u.port))
            .or_else(|| self.settings.edges.first().copied())
            .unwrap_or(self.settings.local)
    }

    /// Phase 2: the session, its upstream side, and the INVITE on each leg.
    fn start_session(&mut self, now: Instant, rx: Rx<'_>, plan: Plan) {
        let Rx { id, src, b, m } = rx;
        if self.live >= self.settings.max_sessions {
            self.stats.refused += 1;
            return self.respond(now, rx, 503, "Service Unavailable - Session Limit", &[]);
        }
        let tag = self.token();
        let sid = self.insert_session(SessionData {
            function: plan.function.clone(),
            rules: Session::new(plan.mode, plan.targets.len(), plan.max_joined),
            up: Up {
                txn: Some(id),
                request: b.to_vec(),
                source: src,
                tag,
                dialog: None,
                contact: plan.up_contact.clone(),
                ack_wait: None,
            },
            legs: Vec::with_capacity(plan.targets.len()),
            offer: plan.offer.clone(),
            inviter: plan
                .asserted
                .clone()
                .unwrap_or_else(|| asserted_uri(b, m).unwrap_or_default()),
            subscribers: Vec::new(),
            version: 0,
        });
        self.by_txn.insert(id, (sid, Side::Up));
        self.stats.sessions_started[plan.function.index()] += 1;
        self.note(format!(
            "{} INVITE {}: inviting {}",
            function_name(&plan.function),
            request_uri(b, m),
            plan.targets.join(", ")
        ));
        let mf = m
            .max_forwards
            .map_or(70, |(_, n)| n)
            .saturating_sub(1)
            .min(70);
        let mut failed = Vec::new();
        for (i, target) in plan.targets.iter().enumerate() {
            if self
                .invite_leg(now, sid, i, target, &plan, b, m, mf)
                .is_none()
            {
                failed.push(i);
            }
        }
        for i in failed {
            let actions = self
                .session_mut(sid)
                .map(|s| s.rules.on_failure(i, 500))
                .unwrap_or_default();
            self.execute(now, sid, actions);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn invite_leg(
        &mut self,
        now: Instant,
        sid: SessionId,
        i: usize,
        target: &str,
        plan: &Plan,
        b: &[u8],
        m: &Message,
        mf: u32,
    ) -> Option<()> {
        let branch = self.txns.new_branch();
        let from_tag = self.token();
        let mut call_id = self.token();
        call_id.push(b'@');
        call_id.extend_from_slice(self.settings.local.ip().to_string().as_bytes());
        let to = plan
            .to
            .clone()
            .unwrap_or_else(|| format!("<{target}>").into_bytes());
        let inv = Invitation {
            method: b"INVITE",
            request_uri: target.as_bytes(),
            local: self.settings.local,
            branch: branch.as_bytes(),
            max_forwards: mf,
            route: &plan.route,
            from: &plan.from,
            from_tag: &from_tag,
            to: &to,
            call_id: &call_id,
            contact: &plan.leg_contact,
            asserted: plan.asserted.as_deref().map(str::as_bytes),
            referred_by: plan.referred_by.as_deref().map(str::as_bytes),
            body: &plan.offer.body,
            content_type: b"application/sdp",
        };
        let Some(n) = write_request(b, m, &inv, &mut self.out) else {
            self.note(format!("INVITE to {target} does not fit {MAX_OUT} bytes"));
            return None;
        };
        let request = self.out[..n].to_vec();
        let txn = match self.txns.send_request(now, &request, plan.next_hop) {
            Ok(t) => Some(t),
            Err(e) => {
                self.note(format!("INVITE to {target} not sent: {e}"));
                None
            }
        };
        if let Some(t) = txn {
            self.by_txn.insert(t, (sid, Side::Leg(i)));
        }
        let s = self.session_mut(sid)?;
        s.legs.push(LegData {
            target: target.to_string(),
            txn,
            request,
            dialog: None,
            answer: Vec::new(),
            contact_params: Vec::new(),
            failure: None,
        });
        if plan.mode == Mode::Controlling {
            self.schedule(
                now + self.settings.invite_timeout,
                sid,
                Due::InviteTimeout(i),
            );
        }
        txn.map(|_| ())
    }

    fn on_cancel(&mut self, now: Instant, rx: Rx<'_>, invite: Option<TransactionId>) {
        let owner = invite.and_then(|t| self.by_txn.get(&t).copied());
        let Some((sid, Side::Up)) = owner else {
            return self.respond(now, rx, 481, "Call/Transaction Does Not Exist", &[]);
        };
        self.respond(now, rx, 200, "OK", &[]);
        let actions = self
            .session_mut(sid)
            .map(|s| s.rules.on_upstream_cancel())
            .unwrap_or_default();
        self.execute(now, sid, actions);
    }

    fn on_ack(&mut self, b: &[u8], m: &Message) {
        let Some(did) = self.dialogs.find_request(b, m) else {
            return;
        };
        if let Some(d) = self.dialogs.get_mut(did) {
            let _ = d.on_request(b, m);
        }
        if let Some(&(sid, Side::Up)) = self.by_dialog.get(&did) {
            if let Some(s) = self.session_mut(sid) {
                s.up.ack_wait = None;
            }
        }
    }

    /// A request inside one of our dialogs.
    fn in_dialog(&mut self, now: Instant, rx: Rx<'_>) {
        let Rx { b, m, .. } = rx;
        let Some(did) = self.dialogs.find_request(b, m) else {
            return self.respond(now, rx, 481, "Call/Transaction Does Not Exist", &[]);
        };
        let Some(&(sid, side)) = self.by_dialog.get(&did) else {
            return self.respond(now, rx, 481, "Call/Transaction Does Not Exist", &[]);
        };
        let step = match self.dialogs.get_mut(did) {
            Some(d) => d.on_request(b, m),
            None => return,
        };
        match step {
            Err(e) => {
                let code = e.status();
                self.respond_in(
                    now,
                    rx,
                    did,
                    code,
                    crate::sip::reply::reason_phrase(code),
                    &[],
                    b"",
                );
            }
            Ok(InDialog::Ack { .. }) => {}
            Ok(InDialog::Bye) => {
                self.respond_in(now, rx, did, 200, "OK", &[], b"");
                self.note_in(
                    sid,
                    format!("BYE from {}", side_name(self.session(sid), side)),
                );
                let actions = match (self.session_mut(sid), side) {
                    (Some(s), Side::Up) => s.rules.on_upstream_bye(),
                    (Some(s), Side::Leg(i)) => s.rules.on_leg_bye(i),
                    (None, _) => Vec::new(),
                };
                self.execute(now, sid, actions);
            }
            Ok(InDialog::Request) => self.in_dialog_request(now, rx, did, sid, side),
        }
    }

    /// A request other than BYE or ACK inside a session's dialog: a
    /// re-INVITE is refused (this CS does not renegotiate media), the rest
    /// is relayed to the other side by a Participating Function and
    /// answered by the Controlling Function (which has no single other
    /// side; the MSRP switch carries the group's messages).
    fn in_dialog_request(
        &mut self,
        now: Instant,
        rx: Rx<'_>,
        did: DialogId,
        sid: SessionId,
        side: Side,
    ) {
        let Rx { m, .. } = rx;
        if m.method() == Some(Method::Invite) {
            let w = warning_line(
                &self.settings.local,
                "re-INVITE not supported by this Conversation Server",
            );
            return self.respond_in(now, rx, did, 488, "Not Acceptable Here", &[&w], b"");
        }
        let mode = self.session(sid).map(|s| s.rules.mode());
        if mode == Some(Mode::Controlling) && m.method() == Some(Method::Subscribe) {
            return self.subscribe(now, rx, did, sid, side);
        }
        let other = match (mode, side) {
            (Some(Mode::Participating), Side::Up) => self
                .session(sid)
                .and_then(|s| s.legs.get(other_leg(&s.rules)?))
                .and_then(|l| l.dialog),
            (Some(Mode::Participating), Side::Leg(i)) => self
                .session(sid)
                .filter(|s| other_leg(&s.rules) == Some(i))
                .and_then(|s| s.up.dialog),
            _ => None,
        };
        match other {
            Some(to) if self.relay(now, rx, to).is_some() => self.stats.relayed += 1,
            _ => self.respond_in(now, rx, did, 200, "OK", &[], b""),
        }
    }

    /// Send `b`'s method and body inside dialog `to`; its answer goes back
    /// on server transaction `server`.
    fn relay(&mut self, now: Instant, rx: Rx<'_>, to: DialogId) -> Option<()> {
        let Rx {
            id: server,
            src,
            b,
            m,
        } = rx;
        let via = self.via();
        let lines = relayed_headers(b, m);
        let headers: Vec<&[u8]> = lines.iter().map(|c| &c[..]).collect();
        let StartLine::Request { method_span, .. } = m.start else {
            return None;
        };
        let method = method_span.get(b);
        let d = self.dialogs.get_mut(to)?;
        let n = d
            .write_request(method, &via, &headers, m.body.get(b), &mut self.out)
            .ok()?;
        let hop = next_hop(self.dialogs.get(to)?, &self.settings);
        let bytes = self.out[..n].to_vec();
        let client = self.txns.send_request(now, &bytes, hop).ok()?;
        self.relays.insert(
            client,
            Relay {
                server,
                request: b.to_vec(),
                source: src,
            },
        );
        Some(())
    }

    fn answer_relay(
        &mut self,
        now: Instant,
        r: &Relay,
        code: u16,
        headers: &[Vec<u8>],
        body: &[u8],
    ) {
        let reason = crate::sip::reply::reason_phrase(code);
        self.answer_relay_as(now, r, (code, reason), headers, body);
    }

    /// [`Self::answer_relay`] with the reason phrase the answer had.
    fn answer_relay_as(
        &mut self,
        now: Instant,
        r: &Relay,
        (code, reason): (u16, &str),
        headers: &[Vec<u8>],
        body: &[u8],
    ) {
        let m = scan(&r.request);
        let did = self.dialogs.find_request(&r.request, &m);
        let rx = Rx {
            id: r.server,
            src: r.source,
            b: &r.request,
            m: &m,
        };
        let extra: Vec<&[u8]> = headers.iter().map(|h| &h[..]).collect();
        match did {
            Some(did) => self.respond_in(now, rx, did, code, reason, &extra, body),
            None => self.respond(now, rx, code, reason, &extra),
        }
    }

    // ----- responses -----------------------------------------------------

    fn on_response(&mut self, now: Instant, id: TransactionId, code: u16, b: &[u8], m: &Message) {
        if self.pager_response(now, id, code, b, m) {
            return;
        }
        if let Some(r) = self.relays.get(&id) {
            if code >= 200 {
                let r = Relay {
                    server: r.server,
                    request: r.request.clone(),
                    source: r.source,
                };
                self.relays.remove(&id);
                let body = m.body.get(b).to_vec();
                let headers = relayed_headers(b, m);
                self.answer_relay(now, &r, code, &headers, &body);
            }
            return;
        }
        let Some(&(sid, Side::Leg(i))) = self.by_txn.get(&id) else {
            return;
        };
        if code == 100 {
            return;
        }
        let dialog = self.leg_dialog(sid, i, b, m);
        let actions = match code {
            101..=199 => self
                .session_mut(sid)
                .map(|s| s.rules.on_ringing(i))
                .unwrap_or_default(),
            200..=299 => self.on_leg_answer(sid, i, dialog, b, m),
            _ => {
                let failure = failure_of(b, m);
                match self.session_mut(sid) {
                    Some(s) => {
                        if let Some(l) = s.legs.get_mut(i) {
                            l.failure = Some(failure);
                        }
                        s.rules.on_failure(i, code)
                    }
                    None => Vec::new(),
                }
            }
        };
        if code >= 180 {
            let who = self
                .session(sid)
                .and_then(|s| s.legs.get(i))
                .map_or(String::new(), |l| l.target.clone());
            self.note_in(sid, format!("{code} from {who}"));
        }
        self.execute(now, sid, actions);
    }

    /// The leg's dialog for this response (made on its first 18x/2xx with a
    /// tag), indexed for the in-dialog requests to come.
    fn leg_dialog(&mut self, sid: SessionId, i: usize, b: &[u8], m: &Message) -> Option<DialogId> {
        let local = self.contact(None, b"");
        let s = self.session(sid)?;
        let req = s.legs.get(i)?.request.clone();
        let rq = scan(&req);
        let did = self
            .dialogs
            .on_uac_response(&req, &rq, b, m, &local)
            .ok()
            .flatten()?;
        self.by_dialog.insert(did, (sid, Side::Leg(i)));
        let params = contact_params(b, m);
        let leg = self.session_mut(sid)?.legs.get_mut(i)?;
        if !params.is_empty() {
            leg.contact_params = params;
        }
        // A 2xx names the dialog that counts (another fork's may differ).
        if (200..300).contains(&status(m)) || leg.dialog.is_none() {
            leg.dialog = Some(did);
        }
        Some(did)
    }

    /// A 2xx on leg `i`: its answer must fit the offer we sent (5.2.3.7);
    /// one that does not is ACKed and BYEd, and counts as a 488 failure of
    /// the leg (README: what goes upstream instead).
    fn on_leg_answer(
        &mut self,
        sid: SessionId,
        i: usize,
        dialog: Option<DialogId>,
        b: &[u8],
        m: &Message,
    ) -> Vec<Action> {
        let body = m.body.get(b);
        let Some(s) = self.session_mut(sid) else {
            return Vec::new();
        };
        if dialog.is_none() {
            // A 2xx without a usable dialog (no tag or Contact): nothing to
            // ACK it in; the leg fails.
            return s.rules.on_failure(i, 502);
        }
        let verdict = sdp::parse(body)
            .map_err(|e| e.0)
            .and_then(|a| check_answer(&s.offer.ports, &s.offer.types, &a).map_err(|v| v.0));
        let first = s.legs.get(i).is_some_and(|l| l.answer.is_empty());
        match verdict {
            Ok(()) => {
                if first {
                    if let Some(l) = s.legs.get_mut(i) {
                        l.answer = body.to_vec();
                    }
                }
                s.rules.on_answer(i)
            }
            Err(why) => {
                let mut out = vec![Action::AckLeg { leg: i }, Action::ByeLeg { leg: i }];
                let pending = s
                    .rules
                    .leg(i)
                    .is_some_and(|l| matches!(l, LegState::Calling | LegState::Ringing));
                if pending {
                    out.extend(s.rules.on_failure(i, 488));
                }
                self.stats.answers_refused += 1;
                self.note_in(sid, format!("answer refused (5.2.3.7): {why}"));
                out
            }
        }
    }

    // ----- actions -------------------------------------------------------

    fn execute(&mut self, now: Instant, sid: SessionId, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::RingUpstream { leg } => {
                    self.answer_upstream(now, sid, 180, "Ringing", Some(leg))
                }
                Action::AnswerUpstream { leg } => {
                    self.answer_upstream(now, sid, 200, "OK", Some(leg))
                }
                Action::FailUpstream { code, reason, leg } => {
                    self.fail_upstream(now, sid, code, reason, leg)
                }
                Action::TerminateUpstream => {
                    self.fail_upstream(now, sid, 487, "Request Terminated", None)
                }
                Action::AckLeg { leg } => self.ack_leg(sid, leg),
                Action::ByeLeg { leg } => self.bye(now, sid, Side::Leg(leg)),
                Action::CancelLeg { leg } => self.cancel_leg(now, sid, leg),
                Action::ByeUpstream => self.bye(now, sid, Side::Up),
                Action::Changed => {
                    self.note_participants(sid);
                    self.notify_all(now, sid);
                }
                Action::End => self.end_session(sid),
            }
        }
    }

    /// The upstream UAS dialog, made at the first 18x/2xx with a Contact
    /// that repeats the leg's parameters (a Participating Function shows the
    /// focus's `isfocus`).
    fn up_dialog(&mut self, sid: SessionId, leg: Option<usize>) -> Option<DialogId> {
        let s = self.session(sid)?;
        if let Some(d) = s.up.dialog {
            return Some(d);
        }
        let params = match (s.rules.mode(), leg.or(Some(0))) {
            (Mode::Participating, Some(i)) => s
                .legs
                .get(i)
                .map(|l| l.contact_params.clone())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let contact = if s.rules.mode() == Mode::Participating {
            self.contact(None, &params)
        } else {
            s.up.contact.clone()
        };
        let s = self.session(sid)?;
        let rq = scan(&s.up.request);
        let d = Dialog::uas(&s.up.request, &rq, &s.up.tag, &contact).ok()?;
        let did = self.dialogs.insert(d).ok()?;
        self.by_dialog.insert(did, (sid, Side::Up));
        self.session_mut(sid)?.up.dialog = Some(did);
        Some(did)
    }

    fn answer_upstream(
        &mut self,
        now: Instant,
        sid: SessionId,
        code: u16,
        reason: &str,
        leg: Option<usize>,
    ) {
        let Some(did) = self.up_dialog(sid, leg) else {
            return self.fail_upstream(now, sid, 500, "Server Internal Error - No Dialog", None);
        };
        let Some(s) = self.session(sid) else { return };
        // A 2xx carries the answering leg's answer; a 180 nothing.
        let body = leg
            .filter(|_| code >= 200)
            .and_then(|i| s.legs.get(i))
            .map(|l| l.answer.clone())
            .unwrap_or_default();
        let (request, source, txn) = (s.up.request.clone(), s.up.source, s.up.txn);
        let rq = scan(&request);
        let ct: &[&[u8]] = if body.is_empty() {
            &[]
        } else {
            &[b"Content-Type: application/sdp\r\n"]
        };
        let spec = ResponseSpec {
            headers: ct,
            body: &body,
            ..ResponseSpec::new(code, reason)
        };
        let Some(d) = self.dialogs.get_mut(did) else {
            return;
        };
        if code >= 200 {
            d.confirm();
        }
        let Ok(n) = d.write_response(&request, &rq, Some(source), spec, &mut self.out) else {
            return;
        };
        let bytes = self.out[..n].to_vec();
        if let Some(t) = txn {
            let _ = self.txns.send_response(now, t, &bytes);
        }
        self.note_in(sid, format!("{code} {reason} to the inviter"));
        if code >= 200 {
            let c = self.settings.transaction;
            let w = AckWait::new(now, c.t1, c.t2);
            let at = w.deadline();
            if let Some(s) = self.session_mut(sid) {
                s.up.ack_wait = Some(w);
            }
            self.schedule(at, sid, Due::AckWait);
        }
    }

    /// A final error upstream. A Participating Function relays the reason
    /// phrase and Warning lines of leg `leg`'s final response (a 488's
    /// Warning says which policy refused what, 5.2.3.7); a Controlling
    /// Function (and a fork whose devices disagree) says its own.
    fn fail_upstream(
        &mut self,
        now: Instant,
        sid: SessionId,
        code: u16,
        reason: &str,
        leg: Option<usize>,
    ) {
        let Some(s) = self.session(sid) else { return };
        let failure = leg
            .and_then(|i| s.legs.get(i))
            .and_then(|l| l.failure.clone());
        let relayed = match (s.rules.mode(), failure) {
            (Mode::Participating, Some(f)) if code != 487 => Some(f),
            _ => None,
        };
        let (request, source, txn, tag) = (
            s.up.request.clone(),
            s.up.source,
            s.up.txn,
            s.up.tag.clone(),
        );
        let reason = relayed
            .as_ref()
            .map_or(reason.to_string(), |(r, _)| r.clone());
        let warnings: Vec<&[u8]> = relayed
            .iter()
            .flat_map(|(_, w)| w.iter().map(|l| &l[..]))
            .collect();
        let rq = scan(&request);
        let spec = ResponseSpec {
            to_tag: Some(&tag),
            headers: &warnings,
            ..ResponseSpec::new(code, &reason)
        };
        if let (Some(n), Some(t)) = (
            write_response(&request, &rq, Some(source), &spec, &mut self.out),
            txn,
        ) {
            let bytes = self.out[..n].to_vec();
            let _ = self.txns.send_response(now, t, &bytes);
        }
        self.note_in(sid, format!("{code} {reason} to the inviter"));
    }

    fn ack_leg(&mut self, sid: SessionId, i: usize) {
        let Some(did) = self
            .session(sid)
            .and_then(|s| s.legs.get(i))
            .and_then(|l| l.dialog)
        else {
            return;
        };
        let via = self.via();
        let Some(d) = self.dialogs.get(did) else {
            return;
        };
        let hop = next_hop(d, &self.settings);
        if let Ok(n) = d.write_ack(&via, &[], b"", &mut self.out) {
            let bytes = self.out[..n].to_vec();
            self.txns.send_stateless(hop, &bytes);
        }
    }

    fn bye(&mut self, now: Instant, sid: SessionId, side: Side) {
        let did = match (self.session(sid), side) {
            (Some(s), Side::Up) => s.up.dialog,
            (Some(s), Side::Leg(i)) => s.legs.get(i).and_then(|l| l.dialog),
            (None, _) => None,
        };
        let Some(did) = did else { return };
        let via = self.via();
        let Some(d) = self.dialogs.get_mut(did) else {
            return;
        };
        let Ok(n) = d.write_request(b"BYE", &via, &[], b"", &mut self.out) else {
            return;
        };
        let hop = self.dialogs.get(did).map(|d| next_hop(d, &self.settings));
        let bytes = self.out[..n].to_vec();
        if let Some(h) = hop {
            let _ = self.txns.send_request(now, &bytes, h);
        }
        let who = side_name(self.session(sid), side);
        self.note_in(sid, format!("BYE to {who}"));
    }

    fn cancel_leg(&mut self, now: Instant, sid: SessionId, i: usize) {
        let Some(l) = self.session(sid).and_then(|s| s.legs.get(i)) else {
            return;
        };
        let target = l.target.clone();
        if let Some(t) = l.txn {
            let _ = self.txns.cancel(now, t);
        }
        self.note_in(sid, format!("CANCEL to {target}"));
    }

    fn note_participants(&mut self, sid: SessionId) {
        let Some(s) = self.session(sid) else { return };
        let joined: Vec<&str> = s
            .legs
            .iter()
            .zip(s.rules.legs())
            .filter(|(_, st)| **st == LegState::Joined)
            .map(|(l, _)| l.target.as_str())
            .collect();
        if s.rules.mode() == Mode::Controlling {
            let line = format!("participants: [{}]", joined.join(", "));
            self.note_in(sid, line);
        }
    }

    // ----- conference state (RFC 4575) --------------------------------

    /// A SUBSCRIBE inside one of the Controlling Function's dialogs: for
    /// `Event: conference`, 200 and a full-state NOTIFY now and on every
    /// change (the subscription shares the INVITE's dialog, which ends it);
    /// `Expires: 0` unsubscribes; other packages are `489 Bad Event`.
    fn subscribe(&mut self, now: Instant, rx: Rx<'_>, did: DialogId, sid: SessionId, side: Side) {
        let Rx { b, m, .. } = rx;
        let event = header_value(b, m, &[b"Event", b"o"]).unwrap_or_default();
        let package = event.split(';').next().unwrap_or("").trim();
        if !package.eq_ignore_ascii_case("conference") {
            let allow: &[u8] = b"Allow-Events: conference\r\n";
            return self.respond_in(now, rx, did, 489, "Bad Event", &[allow], b"");
        }
        let asked = header_value(b, m, &[b"Expires"]).and_then(|v| v.trim().parse::<u64>().ok());
        let secs = asked.map_or(MAX_SUBSCRIPTION.as_secs(), |e| {
            e.min(MAX_SUBSCRIPTION.as_secs())
        });
        let full = self.session(sid).is_some_and(|s| {
            s.subscribers.len() >= MAX_SUBSCRIBERS && !s.subscribers.iter().any(|(x, _)| *x == side)
        });
        if full {
            return self.respond_in(
                now,
                rx,
                did,
                503,
                "Service Unavailable - Too Many Subscriptions",
                &[],
                b"",
            );
        }
        let expires = format!("Expires: {secs}\r\n").into_bytes();
        self.respond_in(now, rx, did, 200, "OK", &[&expires], b"");
        let Some(s) = self.session_mut(sid) else {
            return;
        };
        s.subscribers.retain(|(x, _)| *x != side);
        if secs > 0 {
            s.subscribers.push((side, now + Duration::from_secs(secs)));
        }
        self.notify(now, sid, side, secs);
    }

    /// NOTIFY every live subscriber of the session's new state.
    fn notify_all(&mut self, now: Instant, sid: SessionId) {
        let Some(s) = self.session_mut(sid) else {
            return;
        };
        s.subscribers.retain(|(_, until)| *until > now);
        let subs = s.subscribers.clone();
        for (side, until) in subs {
            let left = until.saturating_duration_since(now).as_secs().max(1);
            self.notify(now, sid, side, left);
        }
    }

    fn notify(&mut self, now: Instant, sid: SessionId, side: Side, expires: u64) {
        let Some(doc) = self.conference_document(sid) else {
            return;
        };
        let did = match (self.session(sid), side) {
            (Some(s), Side::Up) => s.up.dialog,
            (Some(s), Side::Leg(i)) => s.legs.get(i).and_then(|l| l.dialog),
            (None, _) => None,
        };
        let Some(did) = did else { return };
        let state = if expires == 0 {
            "Subscription-State: terminated;reason=timeout\r\n".to_string()
        } else {
            format!("Subscription-State: active;expires={expires}\r\n")
        };
        let headers: [&[u8]; 3] = [
            b"Event: conference\r\n",
            state.as_bytes(),
            b"Content-Type: application/conference-info+xml\r\n",
        ];
        let via = self.via();
        let Some(d) = self.dialogs.get_mut(did) else {
            return;
        };
        let Ok(n) = d.write_request(b"NOTIFY", &via, &headers, &doc, &mut self.out) else {
            return;
        };
        let hop = self.dialogs.get(did).map(|d| next_hop(d, &self.settings));
        let bytes = self.out[..n].to_vec();
        if let Some(h) = hop {
            let _ = self.txns.send_request(now, &bytes, h);
        }
    }

    /// The session's conference-info document (full state), version bumped.
    fn conference_document(&mut self, sid: SessionId) -> Option<Vec<u8>> {
        let dir = Arc::clone(&self.directory);
        let s = self.session_mut(sid)?;
        let Function::Controlling { group } = &s.function else {
            return None;
        };
        let g = dir.group(group);
        s.version += 1;
        let inviter = Participant {
            entity: &s.inviter,
            display: None,
            status: match s.rules.upstream() {
                Upstream::Answered => EndpointStatus::Connected,
                Upstream::Inviting { .. } => EndpointStatus::Pending,
                Upstream::Over => EndpointStatus::Disconnected,
            },
            disconnection: (s.rules.upstream() == Upstream::Over)
                .then_some(Disconnection::Departed),
            reason: None,
            dialed_out: false,
        };
        let mut people = vec![inviter];
        for (l, st) in s.legs.iter().zip(s.rules.legs()) {
            people.push(participant(&l.target, *st));
        }
        let conf = Conference {
            entity: g.map_or(group.as_str(), |g| g.uri.as_str()),
            subject: g.and_then(|g| g.subject.as_deref()),
            max_users: g.and_then(|g| u32::try_from(g.max_participants).ok()),
            version: s.version,
            participants: &people,
        };
        let mut out = Vec::with_capacity(1024);
        write_full(&conf, &mut out);
        Some(out)
    }

    // ----- sessions ------------------------------------------------------

    fn insert_session(&mut self, data: SessionData) -> SessionId {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    session: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[slot as usize];
        s.session = Some(data);
        self.live += 1;
        SessionId {
            slot,
            generation: s.generation,
        }
    }

    fn session(&self, id: SessionId) -> Option<&SessionData> {
        let s = self.slots.get(id.slot as usize)?;
        s.session.as_ref().filter(|_| s.generation == id.generation)
    }

    fn session_mut(&mut self, id: SessionId) -> Option<&mut SessionData> {
        let s = self.slots.get_mut(id.slot as usize)?;
        s.session.as_mut().filter(|_| s.generation == id.generation)
    }

    /// Forget a session: its dialogs leave the table; transactions still
    /// running (a BYE, the 2xx's Accepted state) finish on their own.
    fn end_session(&mut self, id: SessionId) {
        if self.session(id).is_none() {
            return;
        }
        let s = &mut self.slots[id.slot as usize];
        let Some(data) = s.session.take() else { return };
        s.generation = s.generation.wrapping_add(1);
        self.free.push(id.slot);
        self.live -= 1;
        self.stats.sessions_ended += 1;
        let dialogs = data
            .up
            .dialog
            .into_iter()
            .chain(data.legs.iter().filter_map(|l| l.dialog));
        for d in dialogs {
            self.by_dialog.remove(&d);
            self.dialogs.remove(d);
        }
        let txns = data
            .up
            .txn
            .into_iter()
            .chain(data.legs.iter().filter_map(|l| l.txn));
        for t in txns {
            self.by_txn.remove(&t);
        }
        self.note(format!("{} session over", function_name(&data.function)));
    }

    // ----- answers -------------------------------------------------------

    /// Answer server transaction `id` outside a dialog (a fresh To tag).
    fn respond(&mut self, now: Instant, rx: Rx<'_>, code: u16, reason: &str, extra: &[&[u8]]) {
        let Rx { id, src, b, m } = rx;
        let tag = self.token();
        let spec = ResponseSpec {
            to_tag: (m.to_tag.is_none()).then_some(&tag[..]),
            headers: extra,
            ..ResponseSpec::new(code, reason)
        };
        if let Some(n) = write_response(b, m, Some(src), &spec, &mut self.out) {
            let bytes = self.out[..n].to_vec();
            let _ = self.txns.send_response(now, id, &bytes);
        }
    }

    /// Answer server transaction `id` inside dialog `did`.
    #[allow(clippy::too_many_arguments)]
    fn respond_in(
        &mut self,
        now: Instant,
        rx: Rx<'_>,
        did: DialogId,
        code: u16,
        reason: &str,
        extra: &[&[u8]],
        body: &[u8],
    ) {
        let Rx { id, src, b, m } = rx;
        let Some(d) = self.dialogs.get(did) else {
            return self.respond(now, rx, code, reason, extra);
        };
        let spec = ResponseSpec {
            headers: extra,
            body,
            ..ResponseSpec::new(code, reason)
        };
        if let Ok(n) = d.write_response(b, m, Some(src), spec, &mut self.out) {
            let bytes = self.out[..n].to_vec();
            let _ = self.txns.send_response(now, id, &bytes);
        }
    }

    /// An answer outside any transaction (a malformed request, a full
    /// table): to the request's source, §18.2.2 and RFC 3581.
    fn answer_stateless(
        &mut self,
        b: &[u8],
        m: &Message,
        src: SocketAddr,
        code: u16,
        reason: &str,
    ) {
        let Some(via) = m.top_via else { return };
        let tag = self.token();
        let spec = ResponseSpec {
            to_tag: Some(&tag),
            ..ResponseSpec::new(code, reason)
        };
        if let Some(n) = write_response(b, m, Some(src), &spec, &mut self.out) {
            let bytes = self.out[..n].to_vec();
            self.txns
                .send_stateless(response_destination(&via, src), &bytes);
        }
    }

    /// Check the tables' invariants (tests, fuzz target).
    pub fn assert_invariants(&self) {
        self.deferred.assert_invariants();
        assert!(
            self.pager_legs
                .values()
                .all(|p| self.pagers.contains_key(p)),
            "a pager leg without its message"
        );
        assert_eq!(
            self.pagers.values().map(|p| p.open_legs()).sum::<usize>(),
            self.pager_legs.len(),
            "open pager legs"
        );
        self.txns.assert_invariants();
        self.dialogs.assert_invariants();
        self.registrations.assert_invariants();
        assert!(
            self.registrations
                .users()
                .all(|u| self.directory.user(u).is_some()),
            "a registration of a user not provisioned"
        );
        let live = self.slots.iter().filter(|s| s.session.is_some()).count();
        assert_eq!(live, self.live);
        assert!(self.live <= self.settings.max_sessions);
        for s in self.slots.iter().filter_map(|s| s.session.as_ref()) {
            s.rules.assert_invariants();
            assert!(s.legs.len() <= s.rules.legs().len());
        }
    }
}

// ----- helpers over one message ----------------------------------------

/// A final error's reason phrase (printable ASCII, bounded) and its Warning
/// lines (at most four).
fn failure_of(b: &[u8], m: &Message) -> (String, Vec<Vec<u8>>) {
    let line = m.start_line.get(b);
    let reason: String = line
        .get(12..)
        .unwrap_or(b"")
        .iter()
        .take(120)
        .map(|c| {
            if c.is_ascii_graphic() || *c == b' ' {
                *c as char
            } else {
                '?'
            }
        })
        .collect();
    let warnings = crate::sip::scan::header_lines(b, m.headers)
        .filter(|h| h.name.get(b).eq_ignore_ascii_case(b"Warning"))
        .take(4)
        .map(|h| h.line.get(b).to_vec())
        .collect();
    (reason, warnings)
}

/// A leg as a conference participant (RFC 4575 §5.7.3: the endpoint's
/// status and, once out, how it left).
fn participant(target: &str, st: LegState) -> Participant<'_> {
    let (status, disconnection, reason) = match st {
        LegState::Calling => (EndpointStatus::DialingOut, None, None),
        LegState::Ringing => (EndpointStatus::Alerting, None, None),
        LegState::Joined => (EndpointStatus::Connected, None, None),
        LegState::Cancelled => (EndpointStatus::Disconnecting, None, None),
        LegState::Failed(c) => {
            let how = if matches!(c, 486 | 600) {
                Disconnection::Busy
            } else {
                Disconnection::Failed
            };
            (
                EndpointStatus::Disconnected,
                Some(how),
                Some((c, crate::sip::reply::reason_phrase(c))),
            )
        }
        LegState::Left => (
            EndpointStatus::Disconnected,
            Some(Disconnection::Departed),
            None,
        ),
    };
    Participant {
        entity: target,
        display: None,
        status,
        disconnection,
        reason,
        dialed_out: true,
    }
}

/// Header lines a Participating Function passes on with an in-dialog
/// request it relays: the body's type and the event package's headers
/// (RFC 6665), so that a conference SUBSCRIBE and its NOTIFYs cross it.
const RELAYED: &[&[u8]] = &[
    b"Content-Type",
    b"c",
    b"Event",
    b"o",
    b"Expires",
    b"Subscription-State",
    b"Accept",
    b"Allow-Events",
    b"u",
];

fn relayed_headers(b: &[u8], m: &Message) -> Vec<Vec<u8>> {
    crate::sip::scan::header_lines(b, m.headers)
        .filter(|h| {
            RELAYED
                .iter()
                .any(|n| h.name.get(b).eq_ignore_ascii_case(n))
        })
        .take(16)
        .map(|h| h.line.get(b).to_vec())
        .collect()
}

/// The value of the first header named one of `names` (long and compact
/// forms), printable ASCII only.
fn header_value(b: &[u8], m: &Message, names: &[&[u8]]) -> Option<String> {
    let h = crate::sip::scan::header_lines(b, m.headers)
        .find(|h| names.iter().any(|n| h.name.get(b).eq_ignore_ascii_case(n)))?;
    let v = h.value.get(b);
    v.iter()
        .all(|c| c.is_ascii_graphic() || *c == b' ' || *c == b'\t')
        .then(|| String::from_utf8_lossy(v).into_owned())
}

fn status(m: &Message) -> u16 {
    match m.start {
        StartLine::Response { code } => code,
        _ => 0,
    }
}

/// A Participating Function's other side for the upstream's in-dialog
/// requests: the leg that answered; before an answer, the one leg of a
/// session that did not fork (its early dialog).
fn other_leg(rules: &Session) -> Option<usize> {
    rules
        .answered()
        .or_else(|| (rules.legs().len() == 1).then_some(0))
}

/// The CPM service an INVITE asks for (its feature tag, else a CPM
/// session): the devices invited are the ones registered with it.
fn wanted_service(m: &Message) -> CpmServices {
    if m.cpm.any() {
        m.cpm
    } else {
        CpmServices(CpmServices::SESSION)
    }
}

/// Is the body's Content-Type `mime` (parameters and case aside)?
fn is_type(b: &[u8], m: &Message, mime: &str) -> bool {
    m.content_type.is_some_and(|c| {
        let v = c.get(b);
        let end = v.iter().position(|x| *x == b';').unwrap_or(v.len());
        v[..end].trim_ascii().eq_ignore_ascii_case(mime.as_bytes())
    })
}

/// The bindings of `user`'s registration in a full reg-info document
/// (RFC 3680): its active contacts (the URIs a request can carry), their
/// CPM services, `q` and lifetimes (`default_expires` when a contact names
/// none). A document for another AoR, or a partial one, is refused.
fn reginfo_bindings(
    body: &[u8],
    user: &str,
    default_expires: u32,
) -> Result<Vec<Binding>, &'static str> {
    use crate::sip::reginfo::{self, ContactState, DocState, RegState};
    let doc = reginfo::parse(body).map_err(|e| e.reason())?;
    if doc.state != DocState::Full {
        return Err("Reginfo Not A Full State");
    }
    let mut mine = doc
        .registrations
        .iter()
        .filter(|r| identity_of(&String::from_utf8_lossy(&r.aor)).as_deref() == Some(user));
    let Some(reg) = mine.next() else {
        if doc.registrations.is_empty() {
            return Ok(Vec::new());
        }
        return Err("Reginfo Names Another AOR");
    };
    if reg.state == RegState::Terminated {
        return Ok(Vec::new());
    }
    let bindings = reg
        .contacts
        .iter()
        .filter(|c| c.state == ContactState::Active)
        .filter_map(|c| {
            let uri = String::from_utf8_lossy(&c.uri).into_owned();
            routable_contact(&uri).then(|| Binding {
                uri,
                services: reginfo::cpm_of(c),
                q: c.q,
                expires: Duration::from_secs(u64::from(c.expires.unwrap_or(default_expires))),
            })
        })
        .collect();
    Ok(bindings)
}

/// A contact URI fit for a Request-URI: a sip: or sips: URI of the
/// characters a header may carry, at most 256 bytes.
fn routable_contact(uri: &str) -> bool {
    let lower = uri.get(..5).unwrap_or("").to_ascii_lowercase();
    let sip = lower.starts_with("sip:") || lower.starts_with("sips:");
    sip && uri.len() <= 256 && super::directory::checked_identity(uri).is_ok()
}

/// The Request-URI as text (empty for a response).
fn request_uri(b: &[u8], m: &Message) -> String {
    match m.start {
        StartLine::Request { uri, .. } => String::from_utf8_lossy(uri.get(b)).into_owned(),
        _ => String::new(),
    }
}

/// The inviting identity: P-Asserted-Identity (set by a trusted hop: the
/// edge removes a client's, README "Security"), else From.
fn asserted_identity(b: &[u8], m: &Message) -> Option<String> {
    identity_of(&asserted_uri(b, m)?)
}

fn asserted_uri(b: &[u8], m: &Message) -> Option<String> {
    let span = m.pai_uri.unwrap_or(m.from_uri);
    let text = String::from_utf8_lossy(span.get(b)).into_owned();
    (!text.is_empty()).then_some(text)
}

fn referred_by(b: &[u8], m: &Message) -> Option<String> {
    let h = crate::sip::scan::header_lines(b, m.headers).find(|h| {
        h.name.get(b).eq_ignore_ascii_case(b"Referred-By")
            || h.name.get(b).eq_ignore_ascii_case(b"b")
    })?;
    let u = addr_of(b, h.value)?;
    Some(String::from_utf8_lossy(u.get(b)).into_owned())
}

/// `;+g.3gpp.icsi-ref="..."` of the request's Contact (the CPM feature tag
/// the focus Contact repeats), else nothing.
fn cpm_feature_param(b: &[u8], m: &Message) -> Vec<u8> {
    let params = contact_params(b, m);
    let text = String::from_utf8_lossy(&params).into_owned();
    text.split(';')
        .find(|p| p.trim_start().starts_with("+g.3gpp.icsi-ref"))
        .map(|p| format!(";{}", p.trim()).into_bytes())
        .unwrap_or_default()
}

/// The offer and the recipient list of an ad-hoc group INVITE: the two
/// parts of its `multipart/mixed` body (RFC 5366 §4).
fn ad_hoc_parts<'a>(b: &'a [u8], m: &Message) -> Result<(&'a [u8], &'a [u8]), Refusal> {
    let ct = m
        .content_type
        .map(|c| String::from_utf8_lossy(c.get(b)).into_owned())
        .unwrap_or_default();
    if !ct.to_ascii_lowercase().starts_with("multipart/mixed") {
        return Err(refusal(
            415,
            "Unsupported Media Type - Expected multipart/mixed With A Recipient List",
        ));
    }
    let bad = |e: multipart::MultipartError| refusal(400, &format!("Bad Request - {e}"));
    let boundary = multipart::boundary(&ct).map_err(bad)?;
    let parts = multipart::parts(m.body.get(b), boundary).map_err(bad)?;
    let find = |t: &str| {
        parts
            .iter()
            .find(|p| p.content_type == t)
            .map(|p| p.content)
    };
    let sdp = find("application/sdp")
        .ok_or_else(|| refusal(400, "Bad Request - No application/sdp Part"))?;
    let list = find("application/resource-lists+xml")
        .ok_or_else(|| refusal(400, "Bad Request - No application/resource-lists+xml Part"))?;
    Ok((sdp, list))
}

fn authorise_inviter(g: &Group, inviter: &str) -> Result<(), Refusal> {
    if g.invite == InvitePolicy::Members && !g.is_member(inviter) {
        return Err(refusal(403, "Forbidden - Not A Member Of The Group"));
    }
    let size = g.members.len() + usize::from(!g.is_member(inviter));
    if size > g.max_participants {
        return Err(Refusal {
            code: 403,
            reason: "Forbidden - Group Exceeds Its Maximum Participants".into(),
            warning: Some(format!(
                "{size} participants, at most {}",
                g.max_participants
            )),
        });
    }
    Ok(())
}

/// 5.2.3.7 on an offer: parse, drop what `policy` refuses (port 0), `488`
/// with the reasons when nothing is left, `400` for a body that is no SDP.
fn offer_after_policy(
    b: &[u8],
    m: &Message,
    policy: &MediaPolicy,
    whose: &str,
) -> Result<Forwarded, Refusal> {
    let body = m.body.get(b);
    if body.is_empty() {
        return Err(refusal(488, "Not Acceptable Here - No Offer"));
    }
    let is_sdp = m.content_type.is_some_and(|c| {
        c.get(b).len() >= 15 && c.get(b)[..15].eq_ignore_ascii_case(b"application/sdp")
    });
    if !is_sdp {
        return Err(refusal(
            415,
            "Unsupported Media Type - Offer Is Not application/sdp",
        ));
    }
    apply_policy(body, policy, whose)
}

fn apply_policy(body: &[u8], policy: &MediaPolicy, whose: &str) -> Result<Forwarded, Refusal> {
    let parsed = sdp::parse(body)
        .map_err(|e| refusal(400, &format!("Bad Request - Malformed SDP: {}", e.0)))?;
    let verdict = filter_offer(&parsed, policy);
    if verdict.kept() == 0 {
        let why: Vec<String> = verdict.reasons.iter().flatten().cloned().collect();
        return Err(Refusal {
            code: 488,
            reason: "Not Acceptable Here".into(),
            warning: Some(format!(
                "{whose} media policy refuses every stream: {}",
                why.join("; ")
            )),
        });
    }
    let mut out = Vec::with_capacity(body.len());
    if verdict.any_refused() {
        sdp::refuse_streams(body, &parsed, &verdict.refuse, &mut out);
    } else {
        out.extend_from_slice(body);
    }
    Ok(Forwarded {
        body: out,
        ports: verdict.refuse.iter().map(|r| !r).collect(),
        types: parsed.media.iter().map(|m| m.media_type.clone()).collect(),
    })
}

fn warning_line(local: &SocketAddr, text: &str) -> Vec<u8> {
    let clean: String = text
        .chars()
        .take(200)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                if c == '"' {
                    '\''
                } else {
                    c
                }
            } else {
                '?'
            }
        })
        .collect();
    format!("Warning: 399 {local} \"{clean}\"\r\n").into_bytes()
}

/// Where a request inside dialog `d` goes: the first route's IP literal,
/// else the remote target's, else the first edge.
fn next_hop(d: &Dialog, settings: &Settings) -> SocketAddr {
    let first = d.route_set().next().map(<[u8]>::to_vec);
    let target = first.unwrap_or_else(|| d.remote_target().to_vec());
    let whole = Span::new(0, target.len());
    let uri_span = addr_of(&target, whole).unwrap_or(whole);
    uri::parse(&target, uri_span)
        .and_then(|u| uri::socket_addr(u.host.get(&target), u.port))
        .or_else(|| settings.edges.first().copied())
        .unwrap_or(settings.local)
}

fn function_name(f: &Function) -> String {
    match f {
        Function::Originating { user } => format!("[PF {user}, inviting]"),
        Function::Terminating { user } => format!("[PF {user}, invited]"),
        Function::Controlling { group } => format!("[CF {group}]"),
    }
}

fn side_name(s: Option<&SessionData>, side: Side) -> String {
    match (s, side) {
        (_, Side::Up) => "the inviter".to_string(),
        (Some(s), Side::Leg(i)) => s.legs.get(i).map_or("a leg".into(), |l| l.target.clone()),
        (None, Side::Leg(_)) => "a leg".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cs::directory::UserSpec;

    const EDGE: &str = "127.0.0.1:5060";
    const LOCAL: &str = "127.0.0.1:7001";
    const CPM: &str = "\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session\"";
    const SDP: &str = "v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
        m=message 7394 TCP/MSRP *\r\na=accept-types:message/cpim\r\n";

    fn server(terminating: Terminating) -> Server {
        let users: Vec<UserSpec> = [
            "alice@example.net",
            "bob@example.net",
            "carol@example.net",
            "dave@example.net",
            "erin@example.net",
        ]
        .iter()
        .map(|u| UserSpec {
            id: format!("sip:{u}"),
            media: MediaPolicy::default(),
            // carol wants her messages kept while she is away; dave and
            // erin want them as SMS, and erin has no number.
            when_unregistered: match &u[..2] {
                "ca" => Some(WhenUnregistered::Defer),
                "da" | "er" => Some(WhenUnregistered::Sms),
                _ => None,
            },
            msisdn: u.starts_with("dave").then(|| "+447700900123".to_string()),
        })
        .collect();
        let settings = Settings {
            name: "cs1".into(),
            local: LOCAL.parse().unwrap(),
            edges: vec![EDGE.parse().unwrap()],
            max_sessions: 8,
            max_dialogs: 32,
            invite_timeout: Duration::from_secs(2),
            provider_media: MediaPolicy::default(),
            conference_factory: None,
            terminating,
            when_unregistered: WhenUnregistered::Reject,
            unmapped_numbers: UnmappedNumbers::Sms,
            scheme_iwf: [("mailto".to_string(), "email".to_string())].into(),
            when_remote_lacks: RemoteLacks::Sms,
            transaction: transaction::Config::default(),
        };
        Server::new(settings, Arc::new(Directory::new(&users, &[]).unwrap()))
    }

    /// An RFC 3680 full state for `aor` with one active contact per URI
    /// (`services`: the icsi-ref value, or none).
    fn reginfo(aor: &str, contacts: &[(&str, Option<&str>)]) -> String {
        let cs: String = contacts
            .iter()
            .enumerate()
            .map(|(i, (uri, icsi))| {
                let p = icsi.map_or(String::new(), |v| {
                    format!("<unknown-param name=\"+g.3gpp.icsi-ref\">{v}</unknown-param>")
                });
                format!(
                    "<contact id=\"c{i}\" state=\"active\" event=\"registered\" expires=\"600\">\
                     <uri>{uri}</uri>{p}</contact>"
                )
            })
            .collect();
        format!(
            "<?xml version=\"1.0\"?>\n<reginfo xmlns=\"urn:ietf:params:xml:ns:reginfo\" \
             version=\"0\" state=\"full\"><registration aor=\"{aor}\" id=\"r1\" \
             state=\"active\">{cs}</registration></reginfo>"
        )
    }

    fn register(aor: &str, expires: u32, ctype: &str, body: &str) -> Vec<u8> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        format!(
            "REGISTER sip:{LOCAL} SIP/2.0\r\nVia: SIP/2.0/UDP {EDGE};branch=z9hG4bKr{}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:registrar@example.net>;tag=r1\r\nTo: <{aor}>\r\n\
             Call-ID: reg-{aor}\r\nCSeq: {} REGISTER\r\nContact: <sip:{EDGE}>\r\n\
             Expires: {expires}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
            n,
            n + 1,
            body.len()
        )
        .into_bytes()
    }

    fn invite_term(target: &str) -> Vec<u8> {
        format!(
            "INVITE {target} SIP/2.0\r\nVia: SIP/2.0/UDP {EDGE};branch=z9hG4bKi1\r\n\
             Via: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bKa1;rport=5062\r\nMax-Forwards: 69\r\n\
             Route: <sip:{LOCAL};lr>,<sip:{EDGE};lr;cpm-leg=term>\r\nRecord-Route: <sip:{EDGE};lr>\r\n\
             From: <sip:alice@example.net>;tag=f1\r\nTo: <{target}>\r\nCall-ID: inv1\r\n\
             CSeq: 1 INVITE\r\nContact: <sip:alice@192.0.2.7:5062>;+g.3gpp.icsi-ref={CPM}\r\n\
             Accept-Contact: *;+g.3gpp.icsi-ref={CPM}\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
            SDP.len()
        )
        .into_bytes()
    }

    fn feed(s: &mut Server, now: Instant, b: &[u8]) -> Vec<String> {
        s.handle_datagram(now, EDGE.parse().unwrap(), b);
        s.assert_invariants();
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while s.poll_transmit(&mut buf).is_some() {
            out.push(String::from_utf8_lossy(&buf).into_owned());
        }
        out
    }

    fn final_of(out: &[String]) -> String {
        out.iter()
            .find(|m| m.starts_with("SIP/2.0 ") && !m.starts_with("SIP/2.0 1"))
            .cloned()
            .unwrap_or_default()
    }

    /// A response to one of the server's INVITEs, from the device.
    fn answer(invite: &str, code: u16, tag: &str) -> Vec<u8> {
        let b = invite.as_bytes();
        let m = scan(b);
        let ct: [&[u8]; 1] = [b"Content-Type: application/sdp\r\n"];
        let ok = (200..300).contains(&code);
        let spec = ResponseSpec {
            to_tag: Some(tag.as_bytes()),
            contact: Some(b"<sip:bob@192.0.2.20:5062>"),
            headers: if ok { &ct } else { &[] },
            body: if ok { SDP.as_bytes() } else { b"" },
            ..ResponseSpec::new(code, "R")
        };
        let mut out = vec![0u8; 8192];
        let n = write_response(b, &m, None, &spec, &mut out).unwrap();
        out.truncate(n);
        out
    }

    #[test]
    fn a_register_stores_the_contacts_and_expires_0_de_registers() {
        let mut s = server(Terminating::Registered);
        let t0 = Instant::now();
        let body = reginfo(
            "sip:bob@example.net",
            &[
                ("sip:bob@192.0.2.20:5062", Some(CPM)),
                ("sip:bob@192.0.2.21:5062", Some(CPM)),
            ],
        );
        let out = feed(
            &mut s,
            t0,
            &register("sip:bob@example.net", 3600, REGINFO, &body),
        );
        let ok = final_of(&out);
        assert!(ok.starts_with("SIP/2.0 200 OK\r\n"), "{ok}");
        assert!(ok.contains("\r\nExpires: 3600\r\n"), "{ok}");
        let got: Vec<String> = s
            .registered("bob@example.net", t0)
            .into_iter()
            .map(|c| c.uri)
            .collect();
        assert_eq!(got, ["sip:bob@192.0.2.20:5062", "sip:bob@192.0.2.21:5062"]);
        let c = &s.registered("bob@example.net", t0)[0];
        assert_eq!(c.services, CpmServices(CpmServices::SESSION));
        assert_eq!(c.expires_in(t0), Duration::from_secs(600));
        assert_eq!(s.stats().registers, 1);
        let notes: Vec<String> = std::iter::from_fn(|| s.poll_note()).collect();
        assert!(
            notes.contains(&"[PF bob@example.net] registered 2 contacts".to_string()),
            "{notes:?}"
        );
        // Expires: 0: de-registered, whatever the body still lists.
        let out = feed(
            &mut s,
            t0,
            &register("sip:bob@example.net", 0, REGINFO, &body),
        );
        assert!(final_of(&out).contains("\r\nExpires: 0\r\n"));
        assert!(s.registered("bob@example.net", t0).is_empty());
        assert_eq!(
            s.poll_note().as_deref(),
            Some("[PF bob@example.net] de-registered")
        );
    }

    #[test]
    fn register_defects_are_refused_with_their_reason() {
        let mut s = server(Terminating::Registered);
        let t0 = Instant::now();
        let body = reginfo("sip:bob@example.net", &[("sip:bob@192.0.2.20", None)]);
        let cases = [
            (
                register("sip:bob@example.net", 3600, "text/plain", &body),
                "SIP/2.0 415 Unsupported Media Type - Expected application/reginfo+xml\r\n",
            ),
            (
                register("sip:bob@example.net", 3600, REGINFO, "<reginfo"),
                "SIP/2.0 400 Bad Request - Reginfo Unterminated Tag\r\n",
            ),
            (
                register("sip:mallory@example.net", 3600, REGINFO, &body),
                "SIP/2.0 404 Not Found - User Not Provisioned\r\n",
            ),
        ];
        for (req, want) in cases {
            let out = feed(&mut s, t0, &req);
            let got = final_of(&out);
            assert!(got.starts_with(want), "want {want:?}, got:\n{got}");
        }
        let out = feed(
            &mut s,
            t0,
            &register("sip:bob@example.net", 3600, "text/plain", &body),
        );
        assert!(final_of(&out).contains("\r\nAccept: application/reginfo+xml\r\n"));
        assert!(s.registered("bob@example.net", t0).is_empty());
        assert_eq!(s.stats().registers, 0);
    }

    #[test]
    fn the_invited_users_pf_forks_to_its_cpm_devices_and_the_first_answer_wins() {
        let mut s = server(Terminating::Registered);
        let t0 = Instant::now();
        let body = reginfo(
            "sip:bob@example.net",
            &[
                ("sip:bob@192.0.2.20:5062", Some(CPM)),
                ("sip:bob@192.0.2.21:5062", Some(CPM)),
                // A device without the CPM session service is not invited.
                ("sip:bob@192.0.2.22:5062", None),
            ],
        );
        feed(
            &mut s,
            t0,
            &register("sip:bob@example.net", 3600, REGINFO, &body),
        );
        let out = feed(&mut s, t0, &invite_term("sip:bob@example.net"));
        let invites: Vec<&String> = out.iter().filter(|m| m.starts_with("INVITE ")).collect();
        assert_eq!(invites.len(), 2, "{out:?}");
        for (inv, dev) in invites.iter().zip(["192.0.2.20", "192.0.2.21"]) {
            assert!(
                inv.starts_with(&format!("INVITE sip:bob@{dev}:5062 SIP/2.0\r\n")),
                "{inv}"
            );
            assert!(inv.contains("\r\nTo: <sip:bob@example.net>\r\n"), "{inv}");
            assert!(
                inv.contains(&format!("\r\nRoute: <sip:{EDGE};lr;cpm-leg=term>\r\n")),
                "{inv}"
            );
        }
        let (first, second) = (invites[0].clone(), invites[1].clone());
        let out = feed(&mut s, t0, &answer(&second, 180, "d2"));
        assert!(out.iter().any(|m| m.starts_with("SIP/2.0 180 ")), "{out:?}");
        // Device 1 rings too: nothing more upstream (one 180). Its CANCEL
        // can go now (RFC 3261 §9.1: not before a provisional).
        let out = feed(&mut s, t0, &answer(&first, 180, "d1"));
        assert!(out.is_empty(), "{out:?}");
        // Device 2 answers: 200 upstream, device 1 is CANCELled.
        let out = feed(&mut s, t0, &answer(&second, 200, "d2"));
        assert!(
            out.iter().any(|m| m.starts_with("SIP/2.0 200 OK")),
            "{out:?}"
        );
        assert!(
            out.iter()
                .any(|m| m.starts_with("ACK sip:bob@192.0.2.20:5062")),
            "{out:?}"
        );
        let cancel = out
            .iter()
            .find(|m| m.starts_with("CANCEL "))
            .expect("a CANCEL");
        assert!(
            cancel.starts_with("CANCEL sip:bob@192.0.2.20:5062 SIP/2.0"),
            "{cancel}"
        );
        // Device 1 answered anyway: ACK, then BYE.
        let out = feed(&mut s, t0, &answer(&first, 200, "d1"));
        assert!(out.iter().any(|m| m.starts_with("ACK ")), "{out:?}");
        assert!(out.iter().any(|m| m.starts_with("BYE ")), "{out:?}");
        assert!(
            !out.iter().any(|m| m.starts_with("SIP/2.0 200")),
            "one answer upstream"
        );
    }

    /// A pager-mode MESSAGE from the edge with leg marker `leg`.
    fn message(target: &str, leg: &str, branch: &str) -> Vec<u8> {
        let text = "CPIM-ish hello";
        format!(
            "MESSAGE {target} SIP/2.0\r\nVia: SIP/2.0/UDP {EDGE};branch=z9hG4bK{branch}\r\n\
             Via: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bKa{branch};rport=5062\r\nMax-Forwards: 69\r\n\
             Route: <sip:{LOCAL};lr>,<sip:{EDGE};lr;cpm-leg={leg}>\r\n\
             From: <sip:alice@example.net>;tag=f1\r\nTo: <{target}>\r\nCall-ID: msg-{branch}\r\n\
             CSeq: 1 MESSAGE\r\nP-Asserted-Identity: <sip:alice@example.net>\r\n\
             Accept-Contact: *;+g.3gpp.icsi-ref={MSG}\r\n\
             Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        )
        .into_bytes()
    }

    const MSG: &str = "\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.msg\"";

    fn messages(out: &[String]) -> Vec<String> {
        out.iter()
            .filter(|m| m.starts_with("MESSAGE "))
            .cloned()
            .collect()
    }

    #[test]
    fn a_message_goes_to_every_device_offering_it_and_the_first_200_answers() {
        let mut s = server(Terminating::Registered);
        let t0 = Instant::now();
        let body = reginfo(
            "sip:bob@example.net",
            &[
                ("sip:bob@192.0.2.20:5062", Some(MSG)),
                ("sip:bob@192.0.2.21:5062", Some(MSG)),
                // Session only: no message for it.
                ("sip:bob@192.0.2.22:5062", Some(CPM)),
            ],
        );
        feed(
            &mut s,
            t0,
            &register("sip:bob@example.net", 3600, REGINFO, &body),
        );
        let out = feed(&mut s, t0, &message("sip:bob@example.net", "term", "m1"));
        let legs = messages(&out);
        assert_eq!(legs.len(), 2, "{out:?}");
        for (leg, dev) in legs.iter().zip(["192.0.2.20", "192.0.2.21"]) {
            assert!(
                leg.starts_with(&format!("MESSAGE sip:bob@{dev}:5062 SIP/2.0\r\n")),
                "{leg}"
            );
            assert!(leg.contains("\r\nTo: <sip:bob@example.net>\r\n"), "{leg}");
            assert!(leg.contains(&format!("\r\nRoute: <sip:{EDGE};lr;cpm-leg=term>\r\n")));
            assert!(leg.contains("\r\nContent-Type: text/plain\r\n"), "{leg}");
            assert!(leg.ends_with("\r\n\r\nCPIM-ish hello"), "{leg}");
            assert!(
                leg.contains("CSeq: 1 MESSAGE\r\n") && !leg.contains("\r\nContact:"),
                "{leg}"
            );
        }
        let out = feed(&mut s, t0, &answer(&legs[1], 404, "d2"));
        assert!(final_of(&out).is_empty(), "one leg still open: {out:?}");
        let out = feed(&mut s, t0, &answer(&legs[0], 200, "d1"));
        assert!(final_of(&out).starts_with("SIP/2.0 200 "), "{out:?}");
        assert_eq!(s.pager_stats().delivered, 1);
    }

    #[test]
    fn when_every_device_fails_the_best_failure_goes_back() {
        let mut s = server(Terminating::Registered);
        let t0 = Instant::now();
        let body = reginfo(
            "sip:bob@example.net",
            &[
                ("sip:bob@192.0.2.20:5062", Some(MSG)),
                ("sip:bob@192.0.2.21:5062", Some(MSG)),
            ],
        );
        feed(
            &mut s,
            t0,
            &register("sip:bob@example.net", 3600, REGINFO, &body),
        );
        let legs = messages(&feed(
            &mut s,
            t0,
            &message("sip:bob@example.net", "term", "m2"),
        ));
        feed(&mut s, t0, &answer(&legs[0], 486, "d1"));
        let out = feed(&mut s, t0, &answer(&legs[1], 415, "d2"));
        assert!(final_of(&out).starts_with("SIP/2.0 415 "), "{out:?}");
        assert_eq!(s.pager_stats().failed, 1);
    }

    #[test]
    fn the_sending_users_pf_passes_a_message_on_toward_the_invited_user() {
        let mut s = server(Terminating::Registered);
        let t0 = Instant::now();
        let out = feed(&mut s, t0, &message("sip:bob@example.net", "orig", "m3"));
        let legs = messages(&out);
        assert_eq!(legs.len(), 1, "{out:?}");
        assert!(
            legs[0].starts_with("MESSAGE sip:bob@example.net SIP/2.0\r\n"),
            "{}",
            legs[0]
        );
        assert!(legs[0].contains(&format!("Route: <sip:{EDGE};lr;cpm-leg=orig>\r\n")));
        assert!(legs[0].contains("P-Asserted-Identity: <sip:alice@example.net>\r\n"));
        let out = feed(&mut s, t0, &answer(&legs[0], 202, "b"));
        assert!(final_of(&out).starts_with("SIP/2.0 202 "), "{out:?}");
        // From someone not provisioned here: refused.
        let stranger = String::from_utf8(message("sip:bob@example.net", "orig", "m4"))
            .unwrap()
            .replace(
                "P-Asserted-Identity: <sip:alice@",
                "P-Asserted-Identity: <sip:zed@",
            );
        let out = feed(&mut s, t0, stranger.as_bytes());
        assert!(final_of(&out).starts_with("SIP/2.0 403 Forbidden - User Not Provisioned"));
    }

    #[test]
    fn a_user_preferring_sms_gets_the_message_through_an_iwf_or_an_error_without_a_number() {
        let mut s = server(Terminating::Registered);
        let t0 = Instant::now();
        let out = feed(&mut s, t0, &message("sip:dave@example.net", "term", "s1"));
        let legs = messages(&out);
        assert_eq!(legs.len(), 1, "{out:?}");
        let leg = &legs[0];
        assert!(
            leg.starts_with("MESSAGE tel:+447700900123 SIP/2.0\r\n"),
            "{leg}"
        );
        assert!(
            leg.contains(&format!("\r\nRoute: <sip:{EDGE};lr;cpm-iwf=sms>\r\n")),
            "{leg}"
        );
        assert!(leg.contains("\r\nTo: <sip:dave@example.net>\r\n"), "{leg}");
        assert!(
            leg.contains("P-Asserted-Identity: <sip:alice@example.net>\r\n"),
            "{leg}"
        );
        let out = feed(&mut s, t0, &answer(leg, 202, "iwf"));
        assert!(final_of(&out).starts_with("SIP/2.0 202 "), "{out:?}");
        // erin has no number: no interworking attempt, the error back.
        let out = feed(&mut s, t0, &message("sip:erin@example.net", "term", "s2"));
        assert!(messages(&out).is_empty(), "{out:?}");
        assert!(
            final_of(&out).starts_with("SIP/2.0 480 Temporarily Unavailable - No MSISDN For SMS"),
            "{out:?}"
        );
    }

    /// A failure of one of the server's MESSAGEs with extra header lines.
    fn failure_with(request: &str, code: u16, reason: &str, extra: &[&[u8]]) -> Vec<u8> {
        let b = request.as_bytes();
        let m = scan(b);
        let spec = ResponseSpec {
            to_tag: Some(b"far"),
            headers: extra,
            ..ResponseSpec::new(code, reason)
        };
        let mut out = vec![0u8; 8192];
        let n = write_response(b, &m, None, &spec, &mut out).unwrap();
        out.truncate(n);
        out
    }

    #[test]
    fn a_remote_network_without_cpm_or_sip_gets_the_message_as_sms_when_it_has_a_number() {
        let mut s = server(Terminating::Registered);
        let t0 = Instant::now();
        let to = "sip:+447700900777@other.example;user=phone";
        let legs = messages(&feed(&mut s, t0, &message(to, "orig", "r1")));
        assert_eq!(legs.len(), 1);
        // 5.3.1.2.1: the target network says it has no CPM enabler.
        let warning: &[u8] = b"Warning: 399 ims.other.example \"no CPM enabler support\"\r\n";
        let out = feed(
            &mut s,
            t0,
            &failure_with(&legs[0], 488, "Not Acceptable Here", &[warning]),
        );
        assert!(final_of(&out).is_empty(), "not relayed yet: {out:?}");
        let sms = messages(&out);
        assert_eq!(sms.len(), 1, "{out:?}");
        assert!(
            sms[0].starts_with("MESSAGE tel:+447700900777 SIP/2.0\r\n"),
            "{}",
            sms[0]
        );
        assert!(
            sms[0].contains(&format!("Route: <sip:{EDGE};lr;cpm-iwf=sms>")),
            "{}",
            sms[0]
        );
        let out = feed(&mut s, t0, &answer(&sms[0], 202, "iwf"));
        assert!(final_of(&out).starts_with("SIP/2.0 202 "), "{out:?}");
        // 5.3.1.2.2 for a recipient without a number: no attempt, the
        // error goes back.
        let legs = messages(&feed(
            &mut s,
            t0,
            &message("sip:zoe@other.example", "orig", "r2"),
        ));
        let out = feed(&mut s, t0, &failure_with(&legs[0], 502, "Bad Gateway", &[]));
        assert!(messages(&out).is_empty(), "{out:?}");
        assert!(
            final_of(&out).starts_with("SIP/2.0 502 Bad Gateway"),
            "{out:?}"
        );
        // Any other failure is the recipient's own answer: relayed.
        let legs = messages(&feed(&mut s, t0, &message(to, "orig", "r3")));
        let out = feed(&mut s, t0, &failure_with(&legs[0], 486, "Busy Here", &[]));
        assert!(messages(&out).is_empty());
        assert!(
            final_of(&out).starts_with("SIP/2.0 486 Busy Here"),
            "{out:?}"
        );
    }

    #[test]
    fn recipients_not_routable_in_sip_follow_the_providers_policy() {
        let mut s = server(Terminating::Registered);
        let t0 = Instant::now();
        let orig = |to: &str, br: &str| message(to, "orig", br);
        // dave's number: the message goes on to dave.
        let legs = messages(&feed(&mut s, t0, &orig("tel:+44-7700-900123", "n1")));
        assert_eq!(legs.len(), 1);
        assert!(
            legs[0].starts_with("MESSAGE sip:dave@example.net SIP/2.0\r\n"),
            "{}",
            legs[0]
        );
        assert!(legs[0].contains(&format!("Route: <sip:{EDGE};lr;cpm-leg=orig>")));
        // A number nobody has: to SMS, as the provider says here.
        let legs = messages(&feed(&mut s, t0, &orig("tel:+447700900555", "n2")));
        assert!(
            legs[0].starts_with("MESSAGE tel:+447700900555 SIP/2.0\r\n"),
            "{}",
            legs[0]
        );
        assert!(
            legs[0].contains(&format!("Route: <sip:{EDGE};lr;cpm-iwf=sms>")),
            "{}",
            legs[0]
        );
        // mailto has an IWF (email); wv has none: refused, named.
        let legs = messages(&feed(&mut s, t0, &orig("mailto:bob@mail.example", "n3")));
        assert!(legs[0].starts_with("MESSAGE mailto:bob@mail.example SIP/2.0\r\n"));
        assert!(
            legs[0].contains(&format!("Route: <sip:{EDGE};lr;cpm-iwf=email>")),
            "{}",
            legs[0]
        );
        let out = feed(&mut s, t0, &orig("wv:bob@wv.example", "n4"));
        assert!(messages(&out).is_empty());
        assert!(
            final_of(&out)
                .starts_with("SIP/2.0 416 Unsupported URI Scheme - wv: Not Routable In SIP"),
            "{out:?}"
        );
        let out = feed(&mut s, t0, &orig("tel:7700900123", "n5"));
        assert!(
            final_of(&out).starts_with("SIP/2.0 404 Not Found - Number Not In E.164"),
            "{out:?}"
        );
    }

    #[test]
    fn a_user_not_registered_has_messages_rejected_or_kept_as_preferred() {
        let mut s = server(Terminating::Registered);
        let t0 = Instant::now();
        // bob states nothing: the provider's choice, reject.
        let out = feed(&mut s, t0, &message("sip:bob@example.net", "term", "m5"));
        assert!(
            final_of(&out).starts_with("SIP/2.0 480 Temporarily Unavailable - Not Registered"),
            "{out:?}"
        );
        // carol wants them kept: 202, and nothing sent yet.
        let out = feed(&mut s, t0, &message("sip:carol@example.net", "term", "m6"));
        assert!(
            final_of(&out).starts_with("SIP/2.0 202 Accepted"),
            "{out:?}"
        );
        assert!(messages(&out).is_empty());
        assert_eq!(s.deferred_messages().len(), 1);
        // carol registers: the kept message goes to her device.
        let body = reginfo(
            "sip:carol@example.net",
            &[("sip:carol@192.0.2.30:5062", Some(MSG))],
        );
        let out = feed(
            &mut s,
            t0,
            &register("sip:carol@example.net", 3600, REGINFO, &body),
        );
        let legs = messages(&out);
        assert_eq!(legs.len(), 1, "{out:?}");
        assert!(
            legs[0].starts_with("MESSAGE sip:carol@192.0.2.30:5062 "),
            "{}",
            legs[0]
        );
        assert!(legs[0].ends_with("CPIM-ish hello"));
        assert!(s.deferred_messages().is_empty());
        // Her device refuses it: kept again for the next registration.
        feed(&mut s, t0, &answer(&legs[0], 500, "c"));
        assert_eq!(s.deferred_messages().len(), 1);
        let out = feed(
            &mut s,
            t0,
            &register("sip:carol@example.net", 3600, REGINFO, &body),
        );
        let legs = messages(&out);
        let out = feed(&mut s, t0, &answer(&legs[0], 200, "c"));
        assert!(out.is_empty(), "no one waits upstream: {out:?}");
        assert!(s.deferred_messages().is_empty());
        assert_eq!(s.pager_stats().deferred_delivered, 1);
    }

    #[test]
    fn with_no_registered_device_registered_says_480_and_request_uri_sends_one_leg() {
        let t0 = Instant::now();
        let mut s = server(Terminating::Registered);
        let out = feed(&mut s, t0, &invite_term("sip:bob@example.net"));
        assert!(
            final_of(&out).starts_with("SIP/2.0 480 Temporarily Unavailable - Not Registered\r\n"),
            "{out:?}"
        );
        let mut s = server(Terminating::RequestUri);
        let out = feed(&mut s, t0, &invite_term("sip:bob@example.net"));
        let invites: Vec<&String> = out.iter().filter(|m| m.starts_with("INVITE ")).collect();
        assert_eq!(invites.len(), 1, "{out:?}");
        assert!(invites[0].starts_with("INVITE sip:bob@example.net SIP/2.0"));
        // A registration that expired counts as none.
        let mut s = server(Terminating::Registered);
        let body = reginfo(
            "sip:bob@example.net",
            &[("sip:bob@192.0.2.20:5062", Some(CPM))],
        );
        feed(
            &mut s,
            t0,
            &register("sip:bob@example.net", 3600, REGINFO, &body),
        );
        let later = t0 + Duration::from_secs(601);
        let out = feed(&mut s, later, &invite_term("sip:bob@example.net"));
        assert!(final_of(&out).starts_with("SIP/2.0 480 "), "{out:?}");
    }

    #[test]
    fn a_user_leaving_the_directory_leaves_the_registrations() {
        let mut s = server(Terminating::Registered);
        let t0 = Instant::now();
        let body = reginfo(
            "sip:bob@example.net",
            &[("sip:bob@192.0.2.20:5062", Some(CPM))],
        );
        feed(
            &mut s,
            t0,
            &register("sip:bob@example.net", 3600, REGINFO, &body),
        );
        let mut d = Directory::clone(s.directory());
        d.remove_user("bob@example.net");
        s.set_directory(Arc::new(d));
        assert!(s.registered("bob@example.net", t0).is_empty());
        assert!(s.registrations().is_empty());
    }
}
