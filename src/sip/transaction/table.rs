//! The transaction table: routes datagrams to the machines by key
//! (§17.1.3, §17.2.3), creates server transactions for new requests,
//! drives the timers, and holds the queues the caller drains.
//!
//! Bounds: at most `Config::max_transactions` live transactions (a new one
//! beyond is `Error::TableFull`); one heap entry and one index entry per
//! live transaction; the output queues hold at most `Config::max_pending`
//! each. A terminated transaction leaves the table in the same call.

use super::key::{self, Key};
use super::machine::{Io, Transaction};
use super::message::{build, response_destination, write_cancel, write_response, BUILD_SLACK};
use super::message::{Branch, ResponseSpec};
use super::outbox::Outbox;
use super::timers::TimerHeap;
use super::{Config, Error, Event, Kind, Received, State, Stats, TransactionId, Transmit};
use crate::sip::hash::KeyedBuild;
use crate::sip::scan::{scan, Message, Method, StartLine};
use crate::sip::via::Via;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

struct Slot {
    generation: u32,
    txn: Option<Transaction>,
}

/// A datagram being routed, with what every step of routing reads.
struct Incoming<'a> {
    now: Instant,
    source: SocketAddr,
    bytes: &'a [u8],
    m: &'a Message,
    via: Via,
}

impl Incoming<'_> {
    fn method_name(&self) -> &[u8] {
        match self.m.start {
            StartLine::Request { method_span, .. } => method_span.get(self.bytes),
            StartLine::Response { .. } => &[],
        }
    }
}

/// Every transaction of one transport user (a UA core, a CS), and the
/// inputs and outputs of all of them. See the module documentation.
pub struct TransactionTable {
    config: Config,
    slots: Vec<Slot>,
    free: Vec<u32>,
    index: HashMap<Box<[u8]>, u32, KeyedBuild>,
    timers: TimerHeap,
    outbox: Outbox,
    stats: Stats,
    live: usize,
    branches: u64,
}

impl TransactionTable {
    /// # Panics
    /// When `config` does not pass [`Config::validate`]: a configuration
    /// is the program's, checked before it starts.
    pub fn new(config: Config) -> TransactionTable {
        if let Err(why) = config.validate() {
            panic!("invalid transaction config: {why}");
        }
        TransactionTable {
            config,
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::with_hasher(KeyedBuild(config.key)),
            timers: TimerHeap::default(),
            outbox: Outbox::new(config.max_pending),
            stats: Stats::default(),
            live: 0,
            branches: 0,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Live transactions.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// A fresh branch for a request the TU is about to send (§8.1.1.7).
    pub fn new_branch(&mut self) -> Branch {
        self.branches += 1;
        Branch::new(self.config.key, self.branches)
    }

    pub fn state(&self, id: TransactionId) -> Option<State> {
        self.get(id).map(|t| t.state)
    }

    pub fn kind(&self, id: TransactionId) -> Option<Kind> {
        self.get(id).map(|t| t.kind)
    }

    /// The request of a transaction: the one a server transaction received
    /// (for the TU to build its answer from), or the one a client sends.
    pub fn request(&self, id: TransactionId) -> Option<&[u8]> {
        self.get(id).map(|t| &t.request[..])
    }

    /// The next instant [`TransactionTable::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|(at, _)| at)
    }

    /// The next datagram to send: its bytes replace `buf`'s contents.
    pub fn poll_transmit(&mut self, buf: &mut Vec<u8>) -> Option<Transmit> {
        self.outbox.poll_transmit(buf)
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.outbox.poll_event()
    }

    /// Queue a datagram that belongs to no transaction: the TU's ACK of a
    /// 2xx (§13.2.2.4), or a stateless answer.
    pub fn send_stateless(&mut self, destination: SocketAddr, bytes: &[u8]) {
        self.outbox.send(&mut self.stats, None, destination, bytes);
    }

    // ----- the TU's actions ------------------------------------------

    /// Start a client transaction for the request `bytes` (its top Via
    /// carries a branch, e.g. from [`TransactionTable::new_branch`]) and
    /// send it to `destination`.
    pub fn send_request(
        &mut self,
        now: Instant,
        bytes: &[u8],
        destination: SocketAddr,
    ) -> Result<TransactionId, Error> {
        let m = self.scan_own(bytes)?;
        let StartLine::Request {
            method,
            method_span,
            ..
        } = m.start
        else {
            return Err(Error::NotARequest);
        };
        if method == Method::Ack {
            return Err(Error::AckIsNoTransaction);
        }
        let via = m.top_via.ok_or(Error::NoBranch)?;
        let key = key::client(method_span.get(bytes), key::branch(bytes, &via)?)?;
        if self.lookup(&key).is_some() {
            return Err(Error::DuplicateBranch);
        }
        let kind = if method == Method::Invite {
            Kind::InviteClient
        } else {
            Kind::NonInviteClient
        };
        let txn = Transaction::new(kind, key.as_bytes().into(), destination, bytes.to_vec());
        let id = self.insert(txn)?;
        self.run(id.slot, now, |t, io| t.start_client(io));
        Ok(id)
    }

    /// Send the TU's response `bytes` in server transaction `id`. The
    /// response must carry the request's top Via and CSeq method.
    pub fn send_response(
        &mut self,
        now: Instant,
        id: TransactionId,
        bytes: &[u8],
    ) -> Result<(), Error> {
        let slot = self.slot_of(id)?;
        let m = self.scan_own(bytes)?;
        let StartLine::Response { code } = m.start else {
            return Err(Error::NotAResponse);
        };
        let via = m.top_via.ok_or(Error::NoBranch)?;
        let key = key::server(bytes, &via, m.cseq_method.get(bytes))?;
        let txn = self.get(id).ok_or(Error::UnknownTransaction)?;
        if txn.kind.is_client() {
            return Err(Error::WrongKind(txn.kind));
        }
        if key.as_bytes() != &*txn.key {
            return Err(Error::NotThisTransaction);
        }
        self.run(slot, now, |t, io| t.send_response(io, code, bytes))
            .unwrap_or(Err(Error::UnknownTransaction))
    }

    /// Send the 2xx of INVITE server transaction `id` again (Accepted): the
    /// TU's 2xx retransmission (§13.3.1.4), e.g. on [`crate::sip::dialog::AckWait`].
    pub fn resend_final(&mut self, now: Instant, id: TransactionId) -> Result<(), Error> {
        let slot = self.slot_of(id)?;
        self.run(slot, now, |t, io| t.resend_final(io))
            .unwrap_or(Err(Error::UnknownTransaction))
    }

    /// CANCEL INVITE client transaction `invite` (§9.1): a client
    /// transaction for the CANCEL, sent now if the INVITE had a provisional
    /// response, else held until it has one (and ended unsent if a final
    /// response comes first). Asking twice gives the same CANCEL.
    pub fn cancel(&mut self, now: Instant, invite: TransactionId) -> Result<TransactionId, Error> {
        let slot = self.slot_of(invite)?;
        let txn = self.get(invite).ok_or(Error::UnknownTransaction)?;
        if txn.kind != Kind::InviteClient {
            return Err(Error::WrongKind(txn.kind));
        }
        if !matches!(txn.state, State::Calling | State::Proceeding) {
            return Err(Error::InvalidState(txn.state));
        }
        if let Some(held) = txn.cancel {
            return Ok(held);
        }
        let (key, bytes) = cancel_of(txn)?;
        if let Some(sent) = self.lookup(&key) {
            return Ok(self.id_of(sent));
        }
        let held = txn.state == State::Calling;
        let mut c = Transaction::new(
            Kind::NonInviteClient,
            key.as_bytes().into(),
            txn.peer,
            bytes,
        );
        c.held = held;
        let id = self.insert(c)?;
        if held {
            if let Some(t) = self.slots[slot as usize].txn.as_mut() {
                t.cancel = Some(id);
            }
        }
        self.run(id.slot, now, |t, io| t.start_client(io));
        Ok(id)
    }

    // ----- inputs from the network and the clock ---------------------

    /// A datagram from `source`, scanned as `m`. Refusals are counted.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        bytes: &[u8],
        m: &Message,
    ) -> Result<Received, Error> {
        let r = self.route(now, source, bytes, m);
        if matches!(&r, Err(e) if *e != Error::TableFull) {
            self.stats.refused += 1;
        }
        r
    }

    fn route(
        &mut self,
        now: Instant,
        source: SocketAddr,
        bytes: &[u8],
        m: &Message,
    ) -> Result<Received, Error> {
        if let Some(d) = m.defect {
            return Err(Error::Malformed(d));
        }
        if bytes.len() > self.config.max_message {
            return Err(Error::TooLarge);
        }
        let d = Incoming {
            now,
            source,
            bytes,
            m,
            via: m.top_via.ok_or(Error::NoBranch)?,
        };
        match m.start {
            StartLine::Request { method, .. } => self.on_request(&d, method),
            StartLine::Response { code } => self.on_response(&d, code),
        }
    }

    fn on_request(&mut self, d: &Incoming<'_>, method: Method) -> Result<Received, Error> {
        let (now, bytes, via) = (d.now, d.bytes, &d.via);
        // §17.2.3: an ACK matches the INVITE it acknowledges.
        if method == Method::Ack {
            let key = key::server(bytes, via, b"INVITE")?;
            let found = self.lookup(&key);
            let r = found.and_then(|slot| self.run(slot, now, |t, io| t.on_ack(io)));
            return Ok(r.unwrap_or(Received::Ack(None)));
        }
        let key = key::server(bytes, via, d.method_name())?;
        if let Some(slot) = self.lookup(&key) {
            let r = self.run(slot, now, |t, io| t.on_request_again(io));
            return Ok(r.unwrap_or(Received::Absorbed));
        }
        let id = self.new_server(d, method, key)?;
        if method != Method::Cancel {
            return Ok(Received::Request(id));
        }
        // §9.2: the CANCEL names the INVITE with its branch and sent-by.
        let invite = key::server(bytes, via, b"INVITE")
            .ok()
            .and_then(|k| self.lookup(&k))
            .map(|slot| self.id_of(slot));
        Ok(Received::Cancel { cancel: id, invite })
    }

    fn new_server(
        &mut self,
        d: &Incoming<'_>,
        method: Method,
        key: Key,
    ) -> Result<TransactionId, Error> {
        let kind = if method == Method::Invite {
            Kind::InviteServer
        } else {
            Kind::NonInviteServer
        };
        let peer = response_destination(&d.via, d.source);
        let txn = Transaction::new(kind, key.as_bytes().into(), peer, d.bytes.to_vec());
        let id = self.insert(txn)?;
        let trying = (kind == Kind::InviteServer && self.config.send_trying)
            .then(|| self.trying(d))
            .flatten();
        self.run(id.slot, d.now, |t, io| t.start_server(io, trying));
        Ok(id)
    }

    /// The 100 Trying of an INVITE (§17.2.1: no To tag).
    fn trying(&mut self, d: &Incoming<'_>) -> Option<Vec<u8>> {
        let spec = ResponseSpec::new(100, "Trying");
        let t = build(d.bytes.len() + BUILD_SLACK, |out| {
            write_response(d.bytes, d.m, Some(d.source), &spec, out)
        });
        if t.is_none() {
            self.stats.build_failures += 1;
        }
        t
    }

    fn on_response(&mut self, d: &Incoming<'_>, code: u16) -> Result<Received, Error> {
        // §17.1.3: our branch and the CSeq method.
        let method = d.m.cseq_method.get(d.bytes);
        let key = key::client(method, key::branch(d.bytes, &d.via)?)?;
        let found = self.lookup(&key);
        let r = found
            .and_then(|slot| self.run(slot, d.now, |t, io| t.on_response(io, code, d.bytes, d.m)));
        if r.is_none() {
            self.stats.stray_responses += 1;
        }
        Ok(r.unwrap_or(Received::StrayResponse))
    }

    /// Fire every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Each round ends a transaction or moves its deadline past `now`
        // (and a CANCEL it releases starts at `now + T1`), so the rounds
        // are bounded by the live transactions; the bound is the proof.
        let mut rounds = 2 * self.timers.len() + 2;
        while let Some((at, slot)) = self.timers.peek() {
            if at > now || rounds == 0 {
                break;
            }
            rounds -= 1;
            self.run(slot, now, |t, io| t.on_timer(io));
        }
    }

    /// The caller could not send a datagram of transaction `id` (ICMP
    /// unreachable, no route): §17's "transport error" input.
    pub fn handle_transport_error(&mut self, now: Instant, id: TransactionId) -> Result<(), Error> {
        let slot = self.slot_of(id)?;
        self.run(slot, now, |t, io| t.on_transport_error(io))
            .ok_or(Error::UnknownTransaction)
    }

    // ----- the table itself ------------------------------------------

    /// The scan of a message the TU hands in, or why it is refused.
    fn scan_own(&self, bytes: &[u8]) -> Result<Message, Error> {
        if bytes.len() > self.config.max_message {
            return Err(Error::TooLarge);
        }
        let m = scan(bytes);
        match m.defect {
            Some(d) => Err(Error::Malformed(d)),
            None => Ok(m),
        }
    }

    fn get(&self, id: TransactionId) -> Option<&Transaction> {
        let s = self.slots.get(id.slot as usize)?;
        s.txn.as_ref().filter(|_| s.generation == id.generation)
    }

    fn slot_of(&self, id: TransactionId) -> Result<u32, Error> {
        self.get(id)
            .map(|_| id.slot)
            .ok_or(Error::UnknownTransaction)
    }

    fn id_of(&self, slot: u32) -> TransactionId {
        TransactionId {
            slot,
            generation: self.slots[slot as usize].generation,
        }
    }

    fn lookup(&self, key: &Key) -> Option<u32> {
        self.index.get(key.as_bytes()).copied()
    }

    fn insert(&mut self, txn: Transaction) -> Result<TransactionId, Error> {
        if self.live >= self.config.max_transactions {
            self.stats.table_full += 1;
            return Err(Error::TableFull);
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    txn: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        debug_assert!(self.slots[slot as usize].txn.is_none());
        self.index.insert(txn.key.clone(), slot);
        self.slots[slot as usize].txn = Some(txn);
        self.live += 1;
        Ok(self.id_of(slot))
    }

    /// Apply `f` to the transaction in `slot`, then settle what it did.
    fn run<R>(
        &mut self,
        slot: u32,
        now: Instant,
        f: impl FnOnce(&mut Transaction, &mut Io<'_>) -> R,
    ) -> Option<R> {
        let id = self.id_of(slot);
        let TransactionTable {
            slots,
            config,
            outbox,
            stats,
            ..
        } = self;
        let txn = slots.get_mut(slot as usize)?.txn.as_mut()?;
        let mut io = Io {
            id,
            now,
            config,
            outbox,
            stats,
        };
        let r = f(txn, &mut io);
        self.settle(slot, now);
        Some(r)
    }

    /// After a machine ran: remove it if it ended, else re-queue its next
    /// deadline and let its held CANCEL go (or end it) once the INVITE has
    /// left Calling.
    fn settle(&mut self, slot: u32, now: Instant) {
        let Some(txn) = self.slots[slot as usize].txn.as_mut() else {
            return;
        };
        if txn.state == State::Terminated {
            self.remove(slot, now);
            return;
        }
        let (deadline, state) = (txn.next_deadline(), txn.state);
        let cancel = if state == State::Calling {
            None
        } else {
            txn.cancel.take()
        };
        self.timers.set(slot, deadline);
        if let Some(c) = cancel.and_then(|c| self.slot_of(c).ok()) {
            if state == State::Proceeding {
                self.run(c, now, |t, io| t.release(io));
            } else {
                self.abandon(c, now);
            }
        }
    }

    fn abandon(&mut self, cancel_slot: u32, now: Instant) {
        self.run(cancel_slot, now, |t, _| {
            if t.held {
                t.abandon();
            }
        });
    }

    fn remove(&mut self, slot: u32, now: Instant) {
        let id = self.id_of(slot);
        let Some(txn) = self.slots[slot as usize].txn.take() else {
            return;
        };
        self.index.remove(&txn.key);
        self.timers.set(slot, None);
        let s = &mut self.slots[slot as usize];
        s.generation = s.generation.wrapping_add(1);
        self.free.push(slot);
        self.live -= 1;
        self.outbox.event(&mut self.stats, Event::Terminated { id });
        if let Some(c) = txn.cancel.and_then(|c| self.slot_of(c).ok()) {
            self.abandon(c, now);
        }
    }

    /// Check the table's invariants (O(n); for tests and the fuzz target):
    /// the bound, one index entry per live transaction under its own key,
    /// a deadline for each but a held CANCEL, the queues within bounds.
    pub fn assert_invariants(&self) {
        assert!(self.live <= self.config.max_transactions);
        assert!(self.slots.len() <= self.config.max_transactions);
        assert_eq!(self.index.len(), self.live);
        let mut live = 0;
        let mut held = 0;
        for (i, s) in self.slots.iter().enumerate() {
            let Some(t) = &s.txn else { continue };
            live += 1;
            held += usize::from(t.held);
            assert_eq!(self.index.get(&t.key), Some(&(i as u32)));
            assert_ne!(t.state, State::Terminated);
        }
        assert_eq!(live, self.live);
        assert_eq!(self.timers.len(), self.live - held);
        let (transmits, events) = self.outbox.pending();
        assert!(transmits <= self.config.max_pending && events <= self.config.max_pending);
    }
}

/// The key and bytes of the CANCEL of INVITE client transaction `invite`.
fn cancel_of(invite: &Transaction) -> Result<(Key, Vec<u8>), Error> {
    let im = scan(&invite.request);
    let via = im.top_via.ok_or(Error::NoBranch)?;
    let key = key::client(b"CANCEL", key::branch(&invite.request, &via)?)?;
    let cap = invite.request.len() + BUILD_SLACK;
    let bytes = build(cap, |out| write_cancel(&invite.request, &im, out)).ok_or(Error::TooLarge)?;
    Ok((key, bytes))
}
