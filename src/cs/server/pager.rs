//! Pager-mode messages (RFC 3428: a CPM standalone message) through the
//! Participating Functions, and what the invited user's PF does for a user
//! not registered for CPM (seed 5.3.1.1.1).
//!
//! A MESSAGE is a non-INVITE transaction on each side: the inviting user's
//! PF passes it on toward the invited user's PF (through the edge, one
//! leg); the invited user's PF sends one leg to every registered device
//! offering the service (seed 5.2.5). The first `2xx` of a leg answers
//! upstream; when every leg has failed, the best failure does (a `6xx`
//! over the rest, else the lowest code). A MESSAGE cannot be CANCELled:
//! later answers are only counted.
//!
//! With no device, per the user's preference over the provider's
//! ([`WhenUnregistered`]): `reject` answers `480`; `defer` keeps the
//! message (bounded: [`MAX_DEFERRED`] in all, [`MAX_DEFERRED_PER_USER`] per
//! user), answers `202 Accepted`, and sends it at the user's next
//! registration; a delivery no device takes is kept for the next one, at
//! most [`MAX_ATTEMPTS`] times; `sms` sends it through the edge to an
//! Interworking Function for SMS, to the user's MSISDN.
//!
//! The sending user's PF handles a recipient not routable in SIP (seed
//! 5.3.1.2.3): a `tel:` number a user has goes to that user; an unknown
//! number to SMS or a `404` ([`UnmappedNumbers`]); another scheme to the
//! IWF configured for it, else `416` naming the scheme.

use super::{
    asserted_identity, asserted_uri, failure_of, identity_of, party_without_tag, refusal,
    relayed_headers, request_uri, scan, write_request, Invitation, Leg, Message, Refusal, Relay,
    RemoteLacks, Rx, Server, Terminating, TransactionId, UnmappedNumbers,
};
use crate::cs::directory::WhenUnregistered;
use crate::sip::feature_tag::CpmServices;
use crate::sip::number::e164_of;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

/// Most messages deferred, all users together.
pub const MAX_DEFERRED: usize = 10_000;
/// Most messages deferred for one user.
pub const MAX_DEFERRED_PER_USER: usize = 100;
/// Deliveries of one deferred message tried before it is dropped.
pub const MAX_ATTEMPTS: u8 = 3;
/// Most pager-mode messages in flight (legs open) at once.
pub const MAX_PAGERS: usize = 16_384;

/// A message kept for a user not registered: the MESSAGE as the PF
/// received it, and the edge's Route value it came with (the deliveries go
/// back the way it came, with its `term` marker).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deferred {
    /// Unique in this server's store (the key a persistent copy uses).
    pub id: u64,
    pub request: Vec<u8>,
    pub route: Vec<u8>,
    pub next_hop: SocketAddr,
    pub attempts: u8,
}

/// One message on its legs.
pub(super) struct Pager {
    /// Who waits for the answer; `None` for a deferred message's delivery.
    up: Option<Relay>,
    open: usize,
    answered: bool,
    /// The best failure so far: code, reason phrase, Warning lines (what
    /// goes upstream when no leg succeeds).
    best: Option<(u16, String, Vec<Vec<u8>>)>,
    /// A deferred delivery: its user and message, kept again if no device
    /// takes it.
    redeliver: Option<(String, Deferred)>,
    /// The sending PF's edge Route value and hop, for a re-target.
    sending: Option<(Vec<u8>, SocketAddr)>,
}

impl Pager {
    pub(super) fn open_legs(&self) -> usize {
        self.open
    }
}

/// Where the legs of one message go.
struct Targets {
    targets: Vec<String>,
    /// The legs' To when it is not the target (a fork keeps the user's).
    to: Option<Vec<u8>>,
    asserted: Option<String>,
    route: Vec<u8>,
    next_hop: SocketAddr,
    /// The sending user's PF toward a SIP recipient: a failure saying the
    /// remote network lacks CPM or SIP may be re-targeted (5.3.1.2.1/.2).
    sending: bool,
}

/// What the PF makes of a MESSAGE.
enum Disposal {
    Send(Targets),
    Defer { user: String, deferred: Deferred },
}

/// Counters of pager-mode messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PagerStats {
    pub relayed: u64,
    pub delivered: u64,
    pub failed: u64,
    pub deferred: u64,
    pub deferred_delivered: u64,
    pub deferred_dropped: u64,
}

/// A change of the deferred messages, for a persistent copy
/// ([`Server::poll_deferred_change`]): a message kept (new, or kept again
/// with its attempts counted), or gone (delivered, dropped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeferredChange {
    Kept(String, Deferred),
    Gone(u64),
}

/// The deferred messages, per user, bounded. A message taken for delivery
/// stays in the persistent copy until its delivery ends (at least once:
/// a restart meanwhile sends it again).
#[derive(Default)]
pub(super) struct DeferredStore {
    by_user: std::collections::HashMap<String, VecDeque<Deferred>>,
    total: usize,
    /// Drained by the io loop after every datagram and tick, so it holds
    /// what one event changed: at most every message once, plus one each.
    changes: VecDeque<DeferredChange>,
}

impl DeferredStore {
    /// Keep `d` for `user`; `false`: a bound is reached.
    fn push(&mut self, user: &str, d: Deferred) -> bool {
        let q = self.by_user.entry(user.to_string()).or_default();
        if self.total >= MAX_DEFERRED || q.len() >= MAX_DEFERRED_PER_USER {
            if q.is_empty() {
                self.by_user.remove(user);
            }
            return false;
        }
        q.push_back(d);
        self.total += 1;
        true
    }

    /// [`Self::push`], and the change recorded for the persistent copy.
    fn keep(&mut self, user: &str, d: Deferred) -> bool {
        let change = DeferredChange::Kept(user.to_string(), d.clone());
        let kept = self.push(user, d);
        if kept {
            self.record(change);
        }
        kept
    }

    fn record(&mut self, c: DeferredChange) {
        // Past the bound the io loop has stopped draining: the oldest
        // change goes (a later one of the same message supersedes it, and
        // a restart reads the copy as it was).
        if self.changes.len() > 2 * MAX_DEFERRED {
            self.changes.pop_front();
        }
        self.changes.push_back(c);
    }

    fn take(&mut self, user: &str) -> Vec<Deferred> {
        let q: Vec<Deferred> = self.by_user.remove(user).into_iter().flatten().collect();
        self.total -= q.len();
        q
    }

    pub(super) fn len(&self) -> usize {
        self.total
    }

    /// Every kept message, by user (what a store persists).
    pub(super) fn snapshot(&self) -> Vec<(String, Deferred)> {
        let mut v: Vec<(String, Deferred)> = self
            .by_user
            .iter()
            .flat_map(|(u, q)| q.iter().map(move |d| (u.clone(), d.clone())))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub(super) fn poll_change(&mut self) -> Option<DeferredChange> {
        self.changes.pop_front()
    }

    pub(super) fn assert_invariants(&self) {
        assert!(self.changes.len() <= 2 * MAX_DEFERRED + 1);
        let n: usize = self.by_user.values().map(VecDeque::len).sum();
        assert_eq!(n, self.total, "deferred count");
        assert!(self.total <= MAX_DEFERRED);
        assert!(self.by_user.values().all(|q| !q.is_empty()));
    }
}

/// The services a MESSAGE asks for: its feature tags, else pager mode.
fn wanted(m: &Message) -> CpmServices {
    if m.cpm.any() {
        m.cpm
    } else {
        CpmServices(CpmServices::MSG)
    }
}

impl Server {
    /// A MESSAGE outside a dialog.
    pub(super) fn on_message(&mut self, now: Instant, rx: Rx<'_>) {
        let Rx { b, m, .. } = rx;
        let result = self.dispose(now, b, m);
        match result {
            Ok(Disposal::Send(t)) => {
                let up = Relay {
                    server: rx.id,
                    request: b.to_vec(),
                    source: rx.src,
                };
                self.start_pager(now, Some(up), b, m, &t, None);
            }
            Ok(Disposal::Defer { user, deferred }) => {
                if self.deferred.keep(&user, deferred) {
                    self.pager_stats.deferred += 1;
                    self.note(format!("[PF {user}] message deferred (not registered)"));
                    self.respond(now, rx, 202, "Accepted - Deferred Until Registered", &[]);
                } else {
                    self.pager_stats.failed += 1;
                    self.respond(
                        now,
                        rx,
                        480,
                        "Temporarily Unavailable - Deferred Messages Full",
                        &[],
                    );
                }
            }
            Err(r) => {
                self.stats.refused += 1;
                self.note(format!(
                    "refused MESSAGE {}: {} {}",
                    request_uri(b, m),
                    r.code,
                    r.reason
                ));
                self.respond(now, rx, r.code, &r.reason, &[]);
            }
        }
    }

    /// Which function the edge's marker names, and what it does.
    fn dispose(&mut self, now: Instant, b: &[u8], m: &Message) -> Result<Disposal, Refusal> {
        let (route, marker) = self
            .edge_route(b, m)
            .ok_or_else(|| refusal(403, "Forbidden - No Leg Marker From The Edge"))?;
        let next_hop = self.hop_of(&route);
        if m.max_forwards.is_some_and(|(_, n)| n == 0) {
            return Err(refusal(483, "Too Many Hops"));
        }
        let ruri = request_uri(b, m);
        let mut t = Targets {
            targets: vec![ruri.clone()],
            to: None,
            asserted: None,
            route,
            next_hop,
            sending: false,
        };
        if marker == Leg::Originating {
            let user = asserted_identity(b, m)
                .ok_or_else(|| refusal(400, "Bad Request - No Sending Identity"))?;
            if self.directory.user(&user).is_none() {
                return Err(refusal(403, "Forbidden - User Not Provisioned"));
            }
            t.asserted = asserted_uri(b, m);
            return match scheme_of(&ruri).as_str() {
                "sip" | "sips" => {
                    t.sending = true;
                    Ok(Disposal::Send(t))
                }
                _ => self.non_sip_recipient(&ruri, t),
            };
        }
        let target = identity_of(&ruri).ok_or_else(|| refusal(416, "Unsupported URI Scheme"))?;
        match marker {
            Leg::Originating => Ok(Disposal::Send(t)),
            Leg::Terminating => self.terminating_message(now, b, m, &target, t),
            Leg::Controlling => Err(refusal(501, "Not Implemented - Group Pager Mode Messages")),
        }
    }

    /// Seed 5.3.1.2.3, the sending user's PF: a recipient not routable in
    /// SIP. A `tel:` number a CPM user has is that user (the message goes
    /// on to them); an unknown number is interworked to SMS or refused as
    /// the provider says (`unmapped_numbers`); another scheme goes to the
    /// IWF its service names (`scheme_iwf`), else `416` naming it.
    fn non_sip_recipient(&self, ruri: &str, mut t: Targets) -> Result<Disposal, Refusal> {
        let scheme = scheme_of(ruri);
        if scheme == "tel" {
            let Some(n) = e164_of(ruri) else {
                return Err(refusal(404, "Not Found - Number Not In E.164"));
            };
            if let Some(u) = self.directory.user_by_msisdn(&n) {
                t.targets = vec![u.uri.clone()];
                return Ok(Disposal::Send(t));
            }
            return match self.settings.unmapped_numbers {
                UnmappedNumbers::Reject => {
                    Err(refusal(404, "Not Found - No CPM User Has This Number"))
                }
                UnmappedNumbers::Sms => {
                    t.route = iwf_route(&t.route, "sms").ok_or_else(no_edge_route)?;
                    t.targets = vec![format!("tel:{n}")];
                    Ok(Disposal::Send(t))
                }
            };
        }
        match self.settings.scheme_iwf.get(&scheme) {
            Some(service) => {
                t.route = iwf_route(&t.route, service).ok_or_else(no_edge_route)?;
                Ok(Disposal::Send(t))
            }
            None => Err(refusal(
                416,
                &format!("Unsupported URI Scheme - {scheme}: Not Routable In SIP"),
            )),
        }
    }

    /// 5.2.5 and 5.3.1.1.1 for a MESSAGE: every device offering the
    /// service, or the user's preference when there is none.
    fn terminating_message(
        &mut self,
        now: Instant,
        b: &[u8],
        m: &Message,
        target: &str,
        mut t: Targets,
    ) -> Result<Disposal, Refusal> {
        let when = self
            .directory
            .user(target)
            .ok_or_else(|| refusal(404, "Not Found - No Such User"))?
            .when_unregistered
            .unwrap_or(self.settings.when_unregistered);
        t.asserted = asserted_uri(b, m);
        let devices = self.devices_of(target, now, wanted(m));
        if !devices.is_empty() {
            t.to = Some(party_without_tag(b, m.to));
            t.targets = devices;
            return Ok(Disposal::Send(t));
        }
        if self.settings.terminating == Terminating::RequestUri {
            return Ok(Disposal::Send(t));
        }
        match when {
            WhenUnregistered::Sms => {
                let msisdn = self.directory.user(target).and_then(|u| u.msisdn.clone());
                self.to_sms(b, m, t, msisdn)
            }
            WhenUnregistered::Reject => {
                Err(refusal(480, "Temporarily Unavailable - Not Registered"))
            }
            WhenUnregistered::Defer => Ok(Disposal::Defer {
                user: target.to_string(),
                deferred: Deferred {
                    id: self.counter_next(),
                    request: b.to_vec(),
                    route: t.route,
                    next_hop: t.next_hop,
                    attempts: 0,
                },
            }),
        }
    }

    /// Seed 5.3.1.1.1, interworking: the MESSAGE to the user's number in
    /// SMS (`tel:` Request-URI, To still the user), through the edge to an
    /// Interworking Function for SMS (`cpm-iwf=sms` on the edge's Route
    /// value instead of the leg marker). No number: no attempt.
    fn to_sms(
        &self,
        b: &[u8],
        m: &Message,
        mut t: Targets,
        msisdn: Option<String>,
    ) -> Result<Disposal, Refusal> {
        let msisdn =
            msisdn.ok_or_else(|| refusal(480, "Temporarily Unavailable - No MSISDN For SMS"))?;
        t.route = iwf_route(&t.route, "sms").ok_or_else(no_edge_route)?;
        t.to = Some(party_without_tag(b, m.to));
        t.targets = vec![format!("tel:{msisdn}")];
        Ok(Disposal::Send(t))
    }

    fn devices_of(&self, user: &str, now: Instant, wanted: CpmServices) -> Vec<String> {
        self.registrations
            .contacts(user, now)
            .filter(|c| c.offers(wanted))
            .map(|c| c.uri.clone())
            .collect()
    }

    /// One MESSAGE per target; with none sent, the answer at once.
    fn start_pager(
        &mut self,
        now: Instant,
        up: Option<Relay>,
        b: &[u8],
        m: &Message,
        t: &Targets,
        redeliver: Option<(String, Deferred)>,
    ) {
        let id = self.counter_next();
        let mut pager = Pager {
            up,
            open: 0,
            answered: false,
            best: None,
            redeliver,
            sending: t.sending.then(|| (t.route.clone(), t.next_hop)),
        };
        if self.pagers.len() < MAX_PAGERS {
            for target in &t.targets {
                if let Some(txn) = self.send_message(now, b, m, t, target) {
                    self.pager_legs.insert(txn, id);
                    pager.open += 1;
                }
            }
        }
        self.pager_stats.relayed += 1;
        if pager.open == 0 {
            pager.best = Some(if self.pagers.len() >= MAX_PAGERS {
                (
                    503,
                    "Service Unavailable - Too Many Messages".into(),
                    Vec::new(),
                )
            } else {
                (
                    500,
                    "Server Internal Error - Message Not Sent".into(),
                    Vec::new(),
                )
            });
            return self.finish_pager(now, pager);
        }
        self.pagers.insert(id, pager);
    }

    fn counter_next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    fn send_message(
        &mut self,
        now: Instant,
        b: &[u8],
        m: &Message,
        t: &Targets,
        target: &str,
    ) -> Option<TransactionId> {
        let branch = self.txns.new_branch();
        let from_tag = self.token();
        let mut call_id = self.token();
        call_id.push(b'@');
        call_id.extend_from_slice(self.settings.local.ip().to_string().as_bytes());
        let from = party_without_tag(b, m.from);
        let to =
            t.to.clone()
                .unwrap_or_else(|| format!("<{target}>").into_bytes());
        let mf = m
            .max_forwards
            .map_or(70, |(_, n)| n)
            .saturating_sub(1)
            .min(70);
        let content_type = m.content_type.map_or(&b""[..], |s| s.get(b));
        let msg = Invitation {
            method: b"MESSAGE",
            request_uri: target.as_bytes(),
            local: self.settings.local,
            branch: branch.as_bytes(),
            max_forwards: mf,
            route: &t.route,
            from: &from,
            from_tag: &from_tag,
            to: &to,
            call_id: &call_id,
            contact: b"",
            asserted: t.asserted.as_deref().map(str::as_bytes),
            referred_by: None,
            body: m.body.get(b),
            content_type,
        };
        let n = write_request(b, m, &msg, &mut self.out)?;
        let bytes = self.out[..n].to_vec();
        self.txns.send_request(now, &bytes, t.next_hop).ok()
    }

    /// A final answer on a leg of ours (`true`), or not a pager leg.
    pub(super) fn pager_response(
        &mut self,
        now: Instant,
        id: TransactionId,
        code: u16,
        b: &[u8],
        m: &Message,
    ) -> bool {
        if !self.pager_legs.contains_key(&id) {
            return false;
        }
        if code >= 200 {
            let (reason, headers) = if code < 300 {
                (String::new(), relayed_headers(b, m))
            } else {
                failure_of(b, m)
            };
            self.pager_answer(now, id, (code, reason), headers);
        }
        true
    }

    /// A leg that never answered (timeout, transport error): a `408`.
    pub(super) fn pager_leg_failed(&mut self, now: Instant, id: TransactionId) -> bool {
        if !self.pager_legs.contains_key(&id) {
            return false;
        }
        self.pager_answer(now, id, (408, "Request Timeout".into()), Vec::new());
        true
    }

    /// Leg `id`'s final `code`: the first `2xx` goes upstream at once; the
    /// last leg to answer finishes the message.
    fn pager_answer(
        &mut self,
        now: Instant,
        id: TransactionId,
        (code, reason): (u16, String),
        headers: Vec<Vec<u8>>,
    ) {
        let Some(pid) = self.pager_legs.remove(&id) else {
            return;
        };
        let Some(p) = self.pagers.get_mut(&pid) else {
            return;
        };
        p.open -= 1;
        let mut up = None;
        if (200..300).contains(&code) && !p.answered {
            p.answered = true;
            up = p.up.as_ref().map(|r| Relay {
                server: r.server,
                request: r.request.clone(),
                source: r.source,
            });
        } else if code >= 300 && better(p.best.as_ref().map(|b| b.0), code) == code {
            p.best = Some((code, reason, headers.clone()));
        }
        let done = p.open == 0;
        if let Some(up) = up {
            self.answer_relay(now, &up, code, &headers, b"");
        }
        if done {
            if let Some(p) = self.pagers.remove(&pid) {
                self.finish_pager(now, p);
            }
        }
    }

    /// Every leg has answered: the failure upstream, or a deferred message
    /// kept again.
    fn finish_pager(&mut self, now: Instant, p: Pager) {
        if p.answered {
            self.pager_stats.delivered += 1;
            if let Some((_, d)) = &p.redeliver {
                self.pager_stats.deferred_delivered += 1;
                self.deferred.record(DeferredChange::Gone(d.id));
            }
            return;
        }
        self.pager_stats.failed += 1;
        let (code, reason, warnings) = p
            .best
            .clone()
            .unwrap_or_else(|| (480, "Temporarily Unavailable".into(), Vec::new()));
        if self.retarget(now, &p, (code, &reason), &warnings) {
            return;
        }
        if let Some(up) = &p.up {
            self.answer_relay_as(now, up, (code, &reason), &warnings, b"");
        }
        if let Some((user, mut d)) = p.redeliver {
            d.attempts += 1;
            let id = d.id;
            if d.attempts >= MAX_ATTEMPTS || !self.deferred.keep(&user, d) {
                self.deferred.record(DeferredChange::Gone(id));
                self.pager_stats.deferred_dropped += 1;
                self.note(format!("[PF {user}] deferred message dropped ({code})"));
            }
        }
    }

    /// Seed 5.3.1.2.1/.2, the sending user's PF: a failure that says the
    /// target network lacks CPM or SIP, with `when_remote_lacks = "sms"`
    /// and a recipient that has a number, goes again to an Interworking
    /// Function for SMS (`true`); anything else is relayed as it is.
    fn retarget(
        &mut self,
        now: Instant,
        p: &Pager,
        failure: (u16, &str),
        warnings: &[Vec<u8>],
    ) -> bool {
        let (Some(up), Some((route, hop))) = (&p.up, &p.sending) else {
            return false;
        };
        if self.settings.when_remote_lacks != RemoteLacks::Sms || !remote_lacks(failure, warnings) {
            return false;
        }
        let req = up.request.clone();
        let m = scan(&req);
        let Some(n) = e164_of(&request_uri(&req, &m)) else {
            // No address valid for SMS: no attempt (the NOTE of 5.3.1.2.1).
            return false;
        };
        let Some(route) = iwf_route(route, "sms") else {
            return false;
        };
        let t = Targets {
            targets: vec![format!("tel:{n}")],
            to: None,
            asserted: asserted_uri(&req, &m),
            route,
            next_hop: *hop,
            sending: false,
        };
        self.note(format!(
            "re-targeting MESSAGE to SMS {n} after {}",
            failure.0
        ));
        let up = Relay {
            server: up.server,
            request: req.clone(),
            source: up.source,
        };
        self.start_pager(now, Some(up), &req, &m, &t, None);
        true
    }

    /// The user registered: what was deferred for it goes to its devices.
    pub(super) fn deliver_deferred(&mut self, now: Instant, user: &str) {
        if self.deferred.len() == 0 {
            return;
        }
        let devices = self.devices_of(user, now, CpmServices(CpmServices::MSG));
        if devices.is_empty() {
            return;
        }
        let kept = self.deferred.take(user);
        if !kept.is_empty() {
            self.note(format!("[PF {user}] delivering {} deferred", kept.len()));
        }
        for d in kept {
            let m = scan(&d.request);
            let t = Targets {
                targets: devices.clone(),
                to: Some(party_without_tag(&d.request, m.to)),
                asserted: asserted_uri(&d.request, &m),
                route: d.route.clone(),
                next_hop: d.next_hop,
                sending: false,
            };
            let request = d.request.clone();
            self.start_pager(now, None, &request, &m, &t, Some((user.to_string(), d)));
        }
    }
}

impl Server {
    /// The next change of the deferred messages, for a persistent copy.
    pub fn poll_deferred_change(&mut self) -> Option<DeferredChange> {
        self.deferred.poll_change()
    }

    /// Messages a persistent copy kept (at start): as many as the bounds
    /// allow, the count of those left out returned. Ids stay unique: later
    /// ones are drawn above every restored one.
    pub fn restore_deferred(&mut self, kept: Vec<(String, Deferred)>) -> usize {
        let mut left_out = 0;
        for (user, d) in kept {
            self.counter = self.counter.max(d.id);
            if !self.deferred.push(&user, d) {
                left_out += 1;
            }
        }
        left_out
    }
}

/// Record format of a deferred message (the persistent copy's value):
/// version, attempts, then length-prefixed (u32 LE) user, route, next hop
/// (`IP:port` text) and the MESSAGE's bytes.
const RECORD_V1: u8 = 1;

/// `user` and `d` as one record (its key is `d.id`).
pub fn encode_deferred(user: &str, d: &Deferred) -> Vec<u8> {
    let hop = d.next_hop.to_string();
    let mut out = Vec::with_capacity(16 + user.len() + d.route.len() + hop.len() + d.request.len());
    out.extend_from_slice(&[RECORD_V1, d.attempts]);
    for part in [user.as_bytes(), &d.route, hop.as_bytes(), &d.request] {
        out.extend_from_slice(&(part.len() as u32).to_le_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// A record back (`id`: its key); the error names what is wrong with it.
pub fn decode_deferred(id: u64, rec: &[u8]) -> Result<(String, Deferred), &'static str> {
    let (&version, rest) = rec.split_first().ok_or("empty record")?;
    if version != RECORD_V1 {
        return Err("unknown record version");
    }
    let (&attempts, mut rest) = rest.split_first().ok_or("no attempts")?;
    let mut part = || -> Result<&[u8], &'static str> {
        let (len, tail) = rest.split_first_chunk::<4>().ok_or("truncated length")?;
        let len = u32::from_le_bytes(*len) as usize;
        if len > tail.len() {
            return Err("truncated part");
        }
        let (p, tail) = tail.split_at(len);
        rest = tail;
        Ok(p)
    };
    let user = std::str::from_utf8(part()?)
        .map_err(|_| "user not UTF-8")?
        .to_string();
    let route = part()?.to_vec();
    let next_hop = std::str::from_utf8(part()?)
        .ok()
        .and_then(|h| h.parse().ok())
        .ok_or("next hop not IP:port")?;
    let request = part()?.to_vec();
    if !rest.is_empty() {
        return Err("trailing bytes");
    }
    if user.is_empty() || scan(&request).method() != Some(crate::sip::scan::Method::Message) {
        return Err("no user or no MESSAGE");
    }
    Ok((
        user,
        Deferred {
            id,
            request,
            route,
            next_hop,
            attempts,
        },
    ))
}

/// The answers that say the target network cannot take CPM (README
/// "Interworking", the sending side): 5.3.1.2.1, any failure with a
/// `Warning: 399` whose text says "no CPM" (as a network without the CPM
/// enabler states it); 5.3.1.2.2, `502 Bad Gateway` or `504 Server
/// Time-out` (no SIP/IP Core path to it), and the edge's `404 Not Found -
/// No Route To Request-URI Host`.
fn remote_lacks((code, reason): (u16, &str), warnings: &[Vec<u8>]) -> bool {
    let no_cpm = warnings.iter().any(|w| {
        let w = String::from_utf8_lossy(w).to_ascii_lowercase();
        w.trim_start_matches("warning:")
            .trim_start()
            .starts_with("399 ")
            && w.contains("no cpm")
    });
    let no_sip = matches!(code, 502 | 504)
        || (code == 404 && reason.contains("No Route To Request-URI Host"));
    no_cpm || no_sip
}

fn no_edge_route() -> Refusal {
    refusal(
        500,
        "Server Internal Error - No Edge Route For Interworking",
    )
}

/// A URI's scheme, lowercased (`""` without one).
fn scheme_of(uri: &str) -> String {
    uri.split_once(':')
        .map_or(String::new(), |(s, _)| s.trim().to_ascii_lowercase())
}

/// The edge's Route value with its `cpm-leg=...` marker replaced by
/// `cpm-iwf=SERVICE` (README wire contract: the CS → IWF leg).
fn iwf_route(route: &[u8], service: &str) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(route).ok()?;
    let at = text.to_ascii_lowercase().find(";cpm-leg=")?;
    let end = text[at + 1..]
        .find([';', '>'])
        .map_or(text.len(), |e| at + 1 + e);
    Some(format!("{};cpm-iwf={service}{}", &text[..at], &text[end..]).into_bytes())
}

/// RFC 3261 §16.7's choice among failures: a `6xx` over the rest, else
/// the lowest code.
fn better(best: Option<u16>, code: u16) -> u16 {
    match best {
        None => code,
        Some(b) if b >= 600 => b,
        Some(_) if code >= 600 => code,
        Some(b) => b.min(code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_iwf_route_replaces_the_leg_marker() {
        assert_eq!(
            iwf_route(b"<sip:127.0.0.1:5060;lr;cpm-leg=term>", "sms").as_deref(),
            Some(&b"<sip:127.0.0.1:5060;lr;cpm-iwf=sms>"[..])
        );
        assert_eq!(
            iwf_route(b"<sip:edge.example.net;cpm-leg=term;lr>", "sms").as_deref(),
            Some(&b"<sip:edge.example.net;cpm-iwf=sms;lr>"[..])
        );
        assert_eq!(iwf_route(b"<sip:127.0.0.1:5060;lr>", "sms"), None);
    }

    #[test]
    fn a_global_failure_wins_else_the_lowest() {
        assert_eq!(better(None, 486), 486);
        assert_eq!(better(Some(486), 404), 404);
        assert_eq!(better(Some(404), 603), 603);
        assert_eq!(better(Some(603), 404), 603);
    }

    #[test]
    fn the_deferred_store_is_bounded_per_user_and_in_all() {
        let mut s = DeferredStore::default();
        let d = Deferred {
            id: 1,
            request: b"MESSAGE sip:a@x SIP/2.0\r\n\r\n".to_vec(),
            route: b"<sip:127.0.0.1:5060;lr;cpm-leg=term>".to_vec(),
            next_hop: "127.0.0.1:5060".parse().unwrap(),
            attempts: 0,
        };
        for _ in 0..MAX_DEFERRED_PER_USER {
            assert!(s.push("a@x", d.clone()));
        }
        assert!(!s.push("a@x", d.clone()), "past the per-user bound");
        assert!(s.push("b@x", d.clone()));
        s.assert_invariants();
        assert_eq!(s.take("a@x").len(), MAX_DEFERRED_PER_USER);
        assert_eq!(s.len(), 1);
        assert!(s.take("a@x").is_empty());
        s.assert_invariants();
    }

    #[test]
    fn a_deferred_record_round_trips_and_a_bad_one_is_named() {
        let d = Deferred {
            id: 42,
            request: b"MESSAGE sip:carol@x SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\n\
                From: <sip:a@x>;tag=1\r\nTo: <sip:carol@x>\r\nCall-ID: c\r\nCSeq: 1 MESSAGE\r\n\
                Content-Length: 2\r\n\r\nhi"
                .to_vec(),
            route: b"<sip:127.0.0.1:5060;lr;cpm-leg=term>".to_vec(),
            next_hop: "127.0.0.1:5060".parse().unwrap(),
            attempts: 2,
        };
        let rec = encode_deferred("carol@x", &d);
        assert_eq!(decode_deferred(42, &rec), Ok(("carol@x".to_string(), d)));
        assert_eq!(
            decode_deferred(1, &rec[..rec.len() - 1]),
            Err("truncated part")
        );
        assert_eq!(decode_deferred(1, &[]), Err("empty record"));
        assert_eq!(decode_deferred(1, &[9, 0]), Err("unknown record version"));
        let mut long = rec.clone();
        long.push(0);
        assert_eq!(decode_deferred(1, &long), Err("trailing bytes"));
    }
}
