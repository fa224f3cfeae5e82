//! The four transaction machines: RFC 3261 figures 5 (INVITE client), 6
//! (non-INVITE client), 7 (INVITE server) and 8 (non-INVITE server), with
//! RFC 6026's Accepted state in 5 and 7. Over UDP, so every retransmission
//! timer runs.
//!
//! A machine sends through [`Io`] and reports to the table by its state:
//! once it is `Terminated` the table removes it. At most two timers run at
//! once: a retransmission timer (A, E, G) and a lifetime timer (B, C, D, F,
//! H, I, J, K, L, M).

use super::message::{build, write_ack, BUILD_SLACK};
use super::outbox::Outbox;
use super::{Config, Error, Event, Kind, Received, State, Stats, Timer, TransactionId};
use crate::sip::scan::{scan, Message};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What a machine may touch while it handles one input.
pub(super) struct Io<'a> {
    pub(super) id: TransactionId,
    pub(super) now: Instant,
    pub(super) config: &'a Config,
    pub(super) outbox: &'a mut Outbox,
    pub(super) stats: &'a mut Stats,
}

impl Io<'_> {
    fn send(&mut self, to: SocketAddr, bytes: &[u8]) {
        self.outbox.send(self.stats, Some(self.id), to, bytes);
    }
    fn event(&mut self, e: Event) {
        self.outbox.event(self.stats, e);
    }
    fn after(&self, d: Duration) -> Instant {
        self.now + d
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Armed {
    timer: Timer,
    at: Instant,
}

/// Response classes as the machines tell them apart.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Provisional,
    Success,
    Failure,
}

fn class(code: u16) -> Class {
    match code {
        100..=199 => Class::Provisional,
        200..=299 => Class::Success,
        _ => Class::Failure,
    }
}

pub(super) struct Transaction {
    pub(super) kind: Kind,
    pub(super) state: State,
    /// Its key in the table's index (to leave it when terminated).
    pub(super) key: Box<[u8]>,
    /// Client: where the request goes. Server: where responses go.
    pub(super) peer: SocketAddr,
    /// Client: the request to (re)transmit. Server: the request received.
    pub(super) request: Vec<u8>,
    /// Server: the last response sent. INVITE client: the ACK of the
    /// non-2xx final, sent again for each retransmission of that final.
    pub(super) reply: Vec<u8>,
    retransmit: Option<Armed>,
    lifetime: Option<Armed>,
    /// The current interval of the retransmission timer.
    interval: Duration,
    /// INVITE client: its CANCEL transaction, held until a provisional
    /// arrives (§9.1 forbids sending it before).
    pub(super) cancel: Option<TransactionId>,
    /// Non-INVITE client: a CANCEL waiting for its INVITE's provisional.
    pub(super) held: bool,
}

impl Transaction {
    pub(super) fn new(kind: Kind, key: Box<[u8]>, peer: SocketAddr, request: Vec<u8>) -> Self {
        let state = match kind {
            Kind::InviteClient => State::Calling,
            Kind::NonInviteClient | Kind::NonInviteServer => State::Trying,
            Kind::InviteServer => State::Proceeding,
        };
        Transaction {
            kind,
            state,
            key,
            peer,
            request,
            reply: Vec::new(),
            retransmit: None,
            lifetime: None,
            interval: Duration::ZERO,
            cancel: None,
            held: false,
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        match (self.retransmit, self.lifetime) {
            (Some(a), Some(b)) => Some(a.at.min(b.at)),
            (a, b) => a.or(b).map(|t| t.at),
        }
    }

    fn arm_retransmit(&mut self, io: &Io<'_>, timer: Timer, interval: Duration) {
        self.interval = interval;
        self.retransmit = Some(Armed {
            timer,
            at: io.after(interval),
        });
    }

    fn arm_lifetime(&mut self, io: &Io<'_>, timer: Timer, d: Duration) {
        self.lifetime = Some(Armed {
            timer,
            at: io.after(d),
        });
    }

    /// Enter `state` with no timer running (the caller arms the new ones).
    fn enter(&mut self, state: State) {
        self.state = state;
        self.retransmit = None;
        self.lifetime = None;
    }

    fn terminate(&mut self) {
        self.enter(State::Terminated);
    }

    fn give_up(&mut self, io: &mut Io<'_>, timer: Timer) {
        io.event(Event::Timeout { id: io.id, timer });
        self.terminate();
    }

    // ----- client side -----------------------------------------------

    /// Send the request and start Timers A and B (INVITE, §17.1.1.2) or E
    /// and F (non-INVITE, §17.1.2.2). A held CANCEL waits for `release`.
    pub(super) fn start_client(&mut self, io: &mut Io<'_>) {
        debug_assert!(self.kind.is_client());
        if self.held {
            return;
        }
        io.send(self.peer, &self.request);
        let (retransmit, timeout) = match self.kind {
            Kind::InviteClient => (Timer::A, Timer::B),
            _ => (Timer::E, Timer::F),
        };
        self.arm_retransmit(io, retransmit, io.config.t1);
        self.arm_lifetime(io, timeout, io.config.t1x64());
    }

    /// The held CANCEL may go: its INVITE got a provisional.
    pub(super) fn release(&mut self, io: &mut Io<'_>) {
        if self.held && self.state == State::Trying {
            self.held = false;
            self.start_client(io);
        }
    }

    pub(super) fn on_response(
        &mut self,
        io: &mut Io<'_>,
        code: u16,
        resp: &[u8],
        rm: &Message,
    ) -> Received {
        let passed = Received::Response { id: io.id, code };
        let pass = match self.kind {
            Kind::InviteClient => self.invite_client_response(io, code, resp, rm),
            Kind::NonInviteClient => self.non_invite_client_response(io, code),
            Kind::InviteServer | Kind::NonInviteServer => false,
        };
        if pass {
            passed
        } else {
            io.stats.absorbed += 1;
            Received::Absorbed
        }
    }

    /// Figure 5 with RFC 6026; true when the response goes to the TU.
    fn invite_client_response(
        &mut self,
        io: &mut Io<'_>,
        code: u16,
        resp: &[u8],
        rm: &Message,
    ) -> bool {
        match (self.state, class(code)) {
            (State::Calling, Class::Provisional) => {
                // No more retransmissions, and no Timer B: only Timer C
                // bounds how long the far end may stay provisional.
                self.enter(State::Proceeding);
                self.arm_lifetime(io, Timer::C, io.config.timer_c);
                true
            }
            (State::Proceeding, Class::Provisional) => {
                if code > 100 {
                    self.arm_lifetime(io, Timer::C, io.config.timer_c);
                }
                true
            }
            (State::Calling | State::Proceeding, Class::Success) => {
                self.enter(State::Accepted);
                self.arm_lifetime(io, Timer::M, io.config.t1x64());
                true
            }
            (State::Calling | State::Proceeding, Class::Failure) => {
                self.reply = self.ack_for(io, resp, rm);
                self.send_reply(io);
                self.enter(State::Completed);
                self.arm_lifetime(io, Timer::D, io.config.timer_d);
                true
            }
            (State::Completed, Class::Failure) => {
                self.send_reply(io);
                false
            }
            // RFC 6026 §8.4: every 2xx in Accepted goes up (a retransmission
            // the TU ACKs again, or another fork's).
            (State::Accepted, Class::Success) => true,
            _ => false,
        }
    }

    /// The stored response (server) or ACK (INVITE client), if there is one.
    fn send_reply(&self, io: &mut Io<'_>) {
        if !self.reply.is_empty() {
            io.send(self.peer, &self.reply);
        }
    }

    fn ack_for(&self, io: &mut Io<'_>, resp: &[u8], rm: &Message) -> Vec<u8> {
        let im = scan(&self.request);
        let cap = self.request.len() + resp.len() + BUILD_SLACK;
        build(cap, |out| write_ack(&self.request, &im, resp, rm, out)).unwrap_or_else(|| {
            io.stats.build_failures += 1;
            Vec::new()
        })
    }

    /// Figure 6; true when the response goes to the TU.
    fn non_invite_client_response(&mut self, io: &mut Io<'_>, code: u16) -> bool {
        if self.held || !matches!(self.state, State::Trying | State::Proceeding) {
            return false;
        }
        if class(code) == Class::Provisional {
            // Timers E and F keep running: E now fires every T2.
            self.state = State::Proceeding;
        } else {
            self.enter(State::Completed);
            self.arm_lifetime(io, Timer::K, io.config.t4);
        }
        true
    }

    // ----- server side -----------------------------------------------

    /// A new server transaction: the INVITE one sends its 100 Trying
    /// (`trying`) and starts Timer C, the non-INVITE one its lifetime
    /// (Timer F's length: after it the client has given up).
    pub(super) fn start_server(&mut self, io: &mut Io<'_>, trying: Option<Vec<u8>>) {
        debug_assert!(!self.kind.is_client());
        if self.kind == Kind::InviteServer {
            if let Some(t) = trying {
                io.send(self.peer, &t);
                self.reply = t;
            }
            self.arm_lifetime(io, Timer::C, io.config.timer_c);
        } else {
            self.arm_lifetime(io, Timer::F, io.config.t1x64());
        }
    }

    /// A retransmission of the request (§17.2.1, §17.2.2): the last
    /// response again, if one was sent and the state still answers.
    pub(super) fn on_request_again(&mut self, io: &mut Io<'_>) -> Received {
        // Confirmed and Accepted absorb silently; Trying has nothing to say.
        if !self.kind.is_client() && matches!(self.state, State::Proceeding | State::Completed) {
            self.send_reply(io);
        }
        io.stats.absorbed += 1;
        Received::Absorbed
    }

    /// An ACK with the INVITE's branch: confirms a non-2xx (Completed ->
    /// Confirmed, Timer I), goes to the TU in Accepted (RFC 6026), else is
    /// absorbed.
    pub(super) fn on_ack(&mut self, io: &mut Io<'_>) -> Received {
        match (self.kind, self.state) {
            (Kind::InviteServer, State::Completed) => {
                self.enter(State::Confirmed);
                self.arm_lifetime(io, Timer::I, io.config.t4);
            }
            (Kind::InviteServer, State::Accepted) => return Received::Ack(Some(io.id)),
            _ => {}
        }
        io.stats.absorbed += 1;
        Received::Absorbed
    }

    /// The TU's response `bytes` (status `code`), already checked to belong
    /// to this transaction.
    pub(super) fn send_response(
        &mut self,
        io: &mut Io<'_>,
        code: u16,
        bytes: &[u8],
    ) -> Result<(), Error> {
        match self.kind {
            Kind::InviteServer => self.invite_server_send(io, code)?,
            Kind::NonInviteServer => self.non_invite_server_send(io, code)?,
            k @ (Kind::InviteClient | Kind::NonInviteClient) => return Err(Error::WrongKind(k)),
        }
        self.reply.clear();
        self.reply.extend_from_slice(bytes);
        io.send(self.peer, bytes);
        Ok(())
    }

    /// Figure 7 with RFC 6026: the state change a response of `code` makes.
    fn invite_server_send(&mut self, io: &mut Io<'_>, code: u16) -> Result<(), Error> {
        match (self.state, class(code)) {
            (State::Proceeding, Class::Provisional) => {
                if code > 100 {
                    self.arm_lifetime(io, Timer::C, io.config.timer_c);
                }
            }
            (State::Proceeding, Class::Success) => {
                // The TU retransmits the 2xx (§13.3.1.4) through this
                // transaction until Timer L; the transaction does not.
                self.enter(State::Accepted);
                self.arm_lifetime(io, Timer::L, io.config.t1x64());
            }
            (State::Proceeding, Class::Failure) => {
                self.enter(State::Completed);
                self.arm_retransmit(io, Timer::G, io.config.t1);
                self.arm_lifetime(io, Timer::H, io.config.t1x64());
            }
            (State::Accepted, Class::Success) => {}
            (s, _) => return Err(Error::InvalidState(s)),
        }
        Ok(())
    }

    /// Figure 8.
    fn non_invite_server_send(&mut self, io: &mut Io<'_>, code: u16) -> Result<(), Error> {
        match (self.state, class(code)) {
            (State::Trying | State::Proceeding, Class::Provisional) => {
                self.state = State::Proceeding;
            }
            (State::Trying | State::Proceeding, _) => {
                self.enter(State::Completed);
                self.arm_lifetime(io, Timer::J, io.config.t1x64());
            }
            (s, _) => return Err(Error::InvalidState(s)),
        }
        Ok(())
    }

    /// The stored final 2xx again (INVITE server, Accepted): what the TU
    /// calls on its own 2xx retransmission timer (§13.3.1.4).
    pub(super) fn resend_final(&mut self, io: &mut Io<'_>) -> Result<(), Error> {
        if self.kind != Kind::InviteServer {
            return Err(Error::WrongKind(self.kind));
        }
        if self.state != State::Accepted {
            return Err(Error::InvalidState(self.state));
        }
        self.send_reply(io);
        Ok(())
    }

    // ----- timers and transport --------------------------------------

    /// Fire every timer due at `io.now`. Afterwards none is due: each one
    /// fired either terminates, changes state or moves past `now`.
    pub(super) fn on_timer(&mut self, io: &mut Io<'_>) {
        while self.state != State::Terminated {
            if let Some(t) = self.lifetime.filter(|t| t.at <= io.now) {
                self.lifetime = None;
                self.fire_lifetime(io, t.timer);
            } else if let Some(t) = self.retransmit.filter(|t| t.at <= io.now) {
                self.fire_retransmit(io, t.timer);
            } else {
                break;
            }
        }
        debug_assert!(self.next_deadline().is_none_or(|at| at > io.now));
    }

    fn fire_lifetime(&mut self, io: &mut Io<'_>, timer: Timer) {
        match timer {
            Timer::B | Timer::C | Timer::F | Timer::H => self.give_up(io, timer),
            _ => self.terminate(),
        }
    }

    fn fire_retransmit(&mut self, io: &mut Io<'_>, timer: Timer) {
        let t2 = io.config.t2;
        let next = match (timer, self.state) {
            // §17.1.1.2: A doubles without bound; Timer B ends it.
            (Timer::A, _) => self.interval * 2,
            // §17.1.2.2: once a provisional came, every T2.
            (Timer::E, State::Proceeding) => t2,
            (Timer::E, _) | (Timer::G, _) => (self.interval * 2).min(t2),
            _ => {
                self.retransmit = None;
                return;
            }
        };
        if timer == Timer::G {
            self.send_reply(io);
        } else {
            io.send(self.peer, &self.request);
        }
        io.stats.retransmitted += 1;
        self.arm_retransmit(io, timer, next);
    }

    /// The caller could not send for this transaction: the states that
    /// still send anything inform the TU and end (figures 5 to 8).
    pub(super) fn on_transport_error(&mut self, io: &mut Io<'_>) {
        let sends = match self.kind {
            Kind::InviteClient => {
                matches!(
                    self.state,
                    State::Calling | State::Proceeding | State::Completed
                )
            }
            Kind::NonInviteClient => matches!(self.state, State::Trying | State::Proceeding),
            Kind::InviteServer => {
                matches!(
                    self.state,
                    State::Proceeding | State::Completed | State::Accepted
                )
            }
            Kind::NonInviteServer => matches!(self.state, State::Proceeding | State::Completed),
        };
        if sends {
            io.event(Event::TransportError { id: io.id });
            self.terminate();
        }
    }

    /// End a held CANCEL whose INVITE got a final response or ended first.
    pub(super) fn abandon(&mut self) {
        debug_assert!(self.held);
        self.terminate();
    }
}
