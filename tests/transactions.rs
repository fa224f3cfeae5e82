//! Two user agents, each a transaction table and a dialog table driven by a
//! small transaction user, wired through an in-memory UDP "network" that
//! can drop, duplicate and delay (so reorder) datagrams, on a simulated
//! clock. Each test asserts what each side's TU saw, in order, and that
//! every transaction and dialog is gone once the timers have run out.

use cpm_edge::sip::dialog::{AckWait, AckWaitStep, Dialog, DialogId, DialogTable, InDialog};
use cpm_edge::sip::scan::{scan, Message, Method};
use cpm_edge::sip::transaction::{
    write_response, Config, Event, Received, ResponseSpec, State, TransactionId, TransactionTable,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const CALLER: &str = "192.0.2.1:5060";
const CALLEE: &str = "192.0.2.2:5060";
const LATENCY: Duration = Duration::from_millis(10);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn text(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap_or("<binary>")
}

fn first_line(b: &[u8]) -> &str {
    text(b).lines().next().unwrap_or("")
}

fn cseq_method(b: &[u8]) -> String {
    let m = scan(b);
    String::from_utf8_lossy(m.cseq_method.get(b)).into_owned()
}

fn branch(b: &[u8]) -> Vec<u8> {
    let m = scan(b);
    m.top_via.unwrap().branch.unwrap().get(b).to_vec()
}

// ----- the network ------------------------------------------------------

/// What the network does with the nth datagram sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Deliver,
    Drop,
    Duplicate,
    Delay(Duration),
}

struct Packet {
    at: Instant,
    seq: u64,
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
}

type Fault = Box<dyn FnMut(&[u8]) -> Fate>;

struct Net {
    queue: Vec<Packet>,
    seq: u64,
    fault: Fault,
    /// Every datagram sent: (ms, from, bytes, fate).
    wire: Vec<(u64, SocketAddr, Vec<u8>, Fate)>,
}

impl Net {
    fn send(&mut self, t0: Instant, now: Instant, from: SocketAddr, to: SocketAddr, b: &[u8]) {
        let fate = (self.fault)(b);
        let ms = (now - t0).as_millis() as u64;
        self.wire.push((ms, from, b.to_vec(), fate));
        let copies = match fate {
            Fate::Drop => vec![],
            Fate::Deliver => vec![LATENCY],
            Fate::Duplicate => vec![LATENCY, LATENCY + Duration::from_millis(1)],
            Fate::Delay(d) => vec![LATENCY + d],
        };
        for delay in copies {
            self.seq += 1;
            self.queue.push(Packet {
                at: now + delay,
                seq: self.seq,
                from,
                to,
                bytes: b.to_vec(),
            });
        }
    }

    fn next_at(&self) -> Option<Instant> {
        self.queue.iter().map(|p| p.at).min()
    }

    /// The datagrams due at `now`, in the order they were sent.
    fn take_due(&mut self, now: Instant) -> Vec<Packet> {
        let (mut due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|p| p.at <= now);
        self.queue = rest;
        due.sort_by_key(|p| (p.at, p.seq));
        due
    }

    /// The sent datagrams whose first line starts with `prefix` and whose
    /// CSeq method is `method`.
    fn sent(&self, prefix: &str, method: &str) -> Vec<&(u64, SocketAddr, Vec<u8>, Fate)> {
        self.wire
            .iter()
            .filter(|(_, _, b, _)| first_line(b).starts_with(prefix) && cseq_method(b) == method)
            .collect()
    }
}

/// A fault that applies `fate` to the first `n` datagrams matching `which`.
fn first_n(n: usize, which: impl Fn(&[u8]) -> bool + 'static, fate: Fate) -> Fault {
    let mut left = n;
    Box::new(move |b| {
        if left > 0 && which(b) {
            left -= 1;
            fate
        } else {
            Fate::Deliver
        }
    })
}

fn is(prefix: &'static str, method: &'static str) -> impl Fn(&[u8]) -> bool {
    move |b| first_line(b).starts_with(prefix) && cseq_method(b) == method
}

// ----- the transaction users ---------------------------------------------

/// What a UA's TU does.
#[derive(Clone, Copy, Default)]
struct Plan {
    /// Callee: the final answer to an INVITE (`None`: only a CANCEL ends it).
    answer: Option<u16>,
    /// Caller: CANCEL the INVITE on its 180.
    cancel_on_ringing: bool,
    /// Caller: hang up (BYE) once the call is up.
    bye: bool,
}

struct Ua {
    addr: SocketAddr,
    peer: SocketAddr,
    txns: TransactionTable,
    dialogs: DialogTable,
    plan: Plan,
    /// What the TU saw, in order: requests by method, responses as
    /// "code METHOD", timeouts, "ACK".
    seen: Vec<String>,
    terminated: usize,
    invite: Option<TransactionId>,
    dialog: Option<DialogId>,
    /// Callee: the INVITE server transaction and the wait for its ACK.
    ist: Option<TransactionId>,
    ack_wait: Option<AckWait>,
    bye_sent: bool,
}

fn contact(a: SocketAddr) -> Vec<u8> {
    format!("<sip:ua@{a}>").into_bytes()
}

impl Ua {
    fn new(me: &str, peer: &str, plan: Plan) -> Ua {
        Ua {
            addr: addr(me),
            peer: addr(peer),
            txns: TransactionTable::new(Config::default()),
            dialogs: DialogTable::new(16, [3, 4]),
            plan,
            seen: Vec::new(),
            terminated: 0,
            invite: None,
            dialog: None,
            ist: None,
            ack_wait: None,
            bye_sent: false,
        }
    }

    fn via(&mut self) -> Vec<u8> {
        let b = self.txns.new_branch();
        let mut v = format!("SIP/2.0/UDP {};branch=", self.addr).into_bytes();
        v.extend_from_slice(b.as_bytes());
        v
    }

    fn out_of_dialog(&mut self, method: &str, body: &str) -> Vec<u8> {
        let via = String::from_utf8(self.via()).unwrap();
        format!(
            "{method} sip:callee@{peer} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n\
             From: <sip:caller@a.example>;tag=caller\r\nTo: <sip:callee@b.example>\r\n\
             Call-ID: call-1@a.example\r\nCSeq: 1 {method}\r\nContact: <sip:ua@{me}>\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len(),
            peer = self.peer,
            me = self.addr,
        )
        .into_bytes()
    }

    fn call(&mut self, now: Instant) {
        let invite = self.out_of_dialog("INVITE", "");
        self.invite = Some(self.txns.send_request(now, &invite, self.peer).unwrap());
    }

    fn message(&mut self, now: Instant) {
        let msg = self.out_of_dialog("MESSAGE", "hello");
        self.txns.send_request(now, &msg, self.peer).unwrap();
    }

    fn next_deadline(&self) -> Option<Instant> {
        let tu = self.ack_wait.map(|w| w.deadline());
        [self.txns.poll_timeout(), tu].into_iter().flatten().min()
    }

    fn on_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        let m = scan(bytes);
        match self.txns.handle_datagram(now, from, bytes, &m) {
            Ok(Received::Request(id)) => self.on_request(now, id, from, bytes, &m),
            Ok(Received::Cancel { cancel, invite }) => {
                self.on_cancel(now, cancel, invite, from, bytes, &m)
            }
            Ok(Received::Response { id, code }) => self.on_response(now, id, code, bytes, &m),
            Ok(Received::Ack(_)) => self.on_ack(bytes, &m),
            Ok(Received::Absorbed) => {}
            Ok(Received::StrayResponse) => self.seen.push(format!("stray {}", first_line(bytes))),
            Err(e) => panic!("refused {e}: {}", text(bytes)),
        }
    }

    fn tick(&mut self, now: Instant) {
        self.txns.handle_timeout(now);
        if let Some(w) = self.ack_wait.as_mut().filter(|w| w.deadline() <= now) {
            match w.on_timeout(now) {
                AckWaitStep::Retransmit => {
                    let ist = self.ist.unwrap();
                    self.txns.resend_final(now, ist).unwrap();
                }
                AckWaitStep::GiveUp => {
                    self.ack_wait = None;
                    self.seen.push("no ACK".into());
                }
                AckWaitStep::Wait => {}
            }
        }
    }

    fn drain_events(&mut self) {
        while let Some(e) = self.txns.poll_event() {
            match e {
                Event::Terminated { .. } => self.terminated += 1,
                Event::Timeout { timer, .. } => self.seen.push(format!("timeout {timer:?}")),
                Event::TransportError { .. } => self.seen.push("transport error".into()),
            }
        }
        self.txns.assert_invariants();
        self.dialogs.assert_invariants();
    }

    // --- callee ---

    fn respond(&mut self, now: Instant, id: TransactionId, req: &[u8], code: u16) {
        let m = scan(req);
        let mut out = vec![0u8; 4096];
        let n = match self.dialog.and_then(|d| self.dialogs.get(d)) {
            Some(d) => d
                .write_response(
                    req,
                    &m,
                    Some(self.peer),
                    ResponseSpec::new(code, "Reason"),
                    &mut out,
                )
                .unwrap(),
            None => {
                let spec = ResponseSpec {
                    to_tag: Some(b"callee"),
                    ..ResponseSpec::new(code, "Reason")
                };
                write_response(req, &m, Some(self.peer), &spec, &mut out).unwrap()
            }
        };
        self.txns.send_response(now, id, &out[..n]).unwrap();
    }

    fn on_request(
        &mut self,
        now: Instant,
        id: TransactionId,
        _: SocketAddr,
        b: &[u8],
        m: &Message,
    ) {
        let method = m.method().unwrap();
        self.seen.push(cseq_method(b));
        if let Some(d) = self.dialogs.find_request(b, m) {
            let r = self.dialogs.get_mut(d).unwrap().on_request(b, m).unwrap();
            self.respond(now, id, b, 200);
            if r == InDialog::Bye {
                // The caller hung up: its 2xx got through, or no longer matters.
                self.ack_wait = None;
                self.dialogs.remove(d);
                self.dialog = None;
            }
            return;
        }
        if method != Method::Invite {
            self.respond(now, id, b, 200);
            return;
        }
        let dialog = Dialog::uas(b, m, b"callee", &contact(self.addr)).unwrap();
        self.dialog = Some(self.dialogs.insert(dialog).unwrap());
        self.ist = Some(id);
        self.respond(now, id, b, 180);
        match self.plan.answer {
            Some(200) => {
                self.respond(now, id, b, 200);
                self.dialogs
                    .get_mut(self.dialog.unwrap())
                    .unwrap()
                    .confirm();
                let c = *self.txns.config();
                self.ack_wait = Some(AckWait::new(now, c.t1, c.t2));
            }
            Some(code) => {
                self.respond(now, id, b, code);
                self.end_dialog();
            }
            None => {}
        }
    }

    fn end_dialog(&mut self) {
        if let Some(d) = self.dialog.take() {
            self.dialogs.remove(d);
        }
    }

    /// §9.2: 200 to the CANCEL, 487 to the INVITE it cancels if that is
    /// still unanswered.
    fn on_cancel(
        &mut self,
        now: Instant,
        cancel: TransactionId,
        invite: Option<TransactionId>,
        _: SocketAddr,
        b: &[u8],
        m: &Message,
    ) {
        self.seen
            .push(format!("CANCEL matched={}", invite.is_some()));
        let mut out = vec![0u8; 4096];
        let spec = ResponseSpec {
            to_tag: Some(b"callee"),
            ..ResponseSpec::new(if invite.is_some() { 200 } else { 481 }, "Reason")
        };
        let n = write_response(b, m, Some(self.peer), &spec, &mut out).unwrap();
        self.txns.send_response(now, cancel, &out[..n]).unwrap();
        let Some(inv) = invite.filter(|i| self.txns.state(*i) == Some(State::Proceeding)) else {
            return;
        };
        let req = self.txns.request(inv).unwrap().to_vec();
        self.respond(now, inv, &req, 487);
        self.end_dialog();
    }

    fn on_ack(&mut self, b: &[u8], m: &Message) {
        let Some(d) = self.dialogs.find_request(b, m) else {
            // A duplicate or late ACK after the BYE ended the dialog.
            self.seen.push("stray ACK".into());
            return;
        };
        let r = self.dialogs.get_mut(d).unwrap().on_request(b, m).unwrap();
        assert_eq!(r, InDialog::Ack { current: true });
        self.seen.push("ACK".into());
        self.ack_wait = None;
    }

    // --- caller ---

    fn on_response(&mut self, now: Instant, id: TransactionId, code: u16, b: &[u8], m: &Message) {
        let method = cseq_method(b);
        self.seen.push(format!("{code} {method}"));
        if Some(id) != self.invite {
            if method == "BYE" {
                self.end_dialog();
            }
            return;
        }
        let req = self.txns.request(id).unwrap().to_vec();
        let rq = scan(&req);
        if (200..300).contains(&code) && self.dialog.is_none() && self.bye_sent {
            // A 2xx retransmission after the call ended: ACK it all the same.
            let d = Dialog::uac(&req, &rq, b, m, &contact(self.addr)).unwrap();
            self.send_ack(&d);
            return;
        }
        let found = self
            .dialogs
            .on_uac_response(&req, &rq, b, m, &contact(self.addr))
            .unwrap();
        if code == 180 && self.plan.cancel_on_ringing {
            self.txns.cancel(now, id).unwrap();
        }
        if (200..300).contains(&code) {
            self.dialog = found;
            self.ack_and_maybe_hang_up(now);
        }
    }

    /// The TU's ACK for each 2xx (§13.2.2.4), sent outside any transaction,
    /// then the BYE once.
    fn ack_and_maybe_hang_up(&mut self, now: Instant) {
        let d = self.dialogs.get(self.dialog.unwrap()).unwrap().clone();
        self.send_ack(&d);
        if self.plan.bye && !self.bye_sent {
            self.hang_up(now);
        }
    }

    fn send_ack(&mut self, d: &Dialog) {
        let via = self.via();
        let mut out = vec![0u8; 4096];
        let n = d.write_ack(&via, &[], b"", &mut out).unwrap();
        self.txns.send_stateless(self.peer, &out[..n]);
    }

    fn hang_up(&mut self, now: Instant) {
        self.bye_sent = true;
        let via = self.via();
        let mut out = vec![0u8; 4096];
        let dialog = self.dialogs.get_mut(self.dialog.unwrap()).unwrap();
        let n = dialog
            .write_request(b"BYE", &via, &[], b"", &mut out)
            .unwrap();
        self.txns.send_request(now, &out[..n], self.peer).unwrap();
    }
}

// ----- the world ----------------------------------------------------------

struct World {
    t0: Instant,
    now: Instant,
    net: Net,
    caller: Ua,
    callee: Ua,
}

impl World {
    fn new(caller: Plan, callee: Plan, fault: Fault) -> World {
        let t0 = Instant::now();
        World {
            t0,
            now: t0,
            net: Net {
                queue: Vec::new(),
                seq: 0,
                fault,
                wire: Vec::new(),
            },
            caller: Ua::new(CALLER, CALLEE, caller),
            callee: Ua::new(CALLEE, CALLER, callee),
        }
    }

    /// Hand every queued datagram of both UAs to the network.
    fn flush(&mut self) {
        let mut buf = Vec::new();
        for ua in [&mut self.caller, &mut self.callee] {
            ua.drain_events();
            while let Some(t) = ua.txns.poll_transmit(&mut buf) {
                self.net
                    .send(self.t0, self.now, ua.addr, t.destination, &buf);
            }
        }
    }

    /// Run the simulation for `d`, jumping from one deadline or delivery
    /// to the next.
    fn run_for(&mut self, d: Duration) {
        self.flush();
        let end = self.now + d;
        loop {
            let next = [
                self.net.next_at(),
                self.caller.next_deadline(),
                self.callee.next_deadline(),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(at) = next.filter(|at| *at <= end) else {
                break;
            };
            self.now = at.max(self.now);
            for p in self.net.take_due(self.now) {
                let ua = if p.to == self.caller.addr {
                    &mut self.caller
                } else {
                    &mut self.callee
                };
                assert_eq!(p.to, ua.addr);
                ua.on_datagram(self.now, p.from, &p.bytes);
                self.flush();
            }
            self.caller.tick(self.now);
            self.callee.tick(self.now);
            self.flush();
        }
        self.now = end;
    }

    /// Both sides empty: every transaction ended (its Terminated seen) and
    /// every dialog gone.
    fn assert_all_over(&self) {
        for ua in [&self.caller, &self.callee] {
            assert!(ua.txns.is_empty(), "transactions left at {}", ua.addr);
            assert!(ua.dialogs.is_empty(), "dialogs left at {}", ua.addr);
            assert!(ua.ack_wait.is_none());
        }
    }
}

fn call(caller: Plan, callee: Plan, fault: Fault) -> World {
    let mut w = World::new(caller, callee, fault);
    w.caller.call(w.now);
    w.run_for(Duration::from_secs(5));
    w
}

/// After a call, once every timer (64·T1, Timer D) has run out.
fn settle(w: &mut World) {
    w.run_for(Duration::from_secs(40));
    w.assert_all_over();
}

const HANG_UP: Plan = Plan {
    answer: None,
    cancel_on_ringing: false,
    bye: true,
};

const ANSWER: Plan = Plan {
    answer: Some(200),
    cancel_on_ringing: false,
    bye: false,
};

// ----- the calls ---------------------------------------------------------

/// INVITE / 100 / 180 / 200 / ACK / BYE / 200 on a clean network.
#[test]
fn invite_ringing_ok_ack_bye() {
    let mut w = call(HANG_UP, ANSWER, Box::new(|_| Fate::Deliver));
    assert_eq!(
        w.caller.seen,
        ["100 INVITE", "180 INVITE", "200 INVITE", "200 BYE"]
    );
    assert_eq!(w.callee.seen, ["INVITE", "ACK", "BYE"]);
    // The 2xx ACK is the TU's: its own branch, the INVITE's CSeq number.
    let invite = &w.net.sent("INVITE", "INVITE")[0].2;
    let ack = &w.net.sent("ACK", "ACK")[0].2;
    assert_ne!(branch(ack), branch(invite));
    assert_eq!(scan(ack).cseq_num, scan(invite).cseq_num);
    assert_eq!(
        first_line(ack),
        "ACK sip:ua@192.0.2.2:5060 SIP/2.0",
        "the remote target"
    );
    let bye = &w.net.sent("BYE", "BYE")[0].2;
    assert_eq!(scan(bye).cseq_num, 2);
    assert_eq!(w.net.wire.len(), 7, "no retransmission on a clean network");
    settle(&mut w);
    // INVITE and BYE on each side.
    assert_eq!((w.caller.terminated, w.callee.terminated), (2, 2));
}

/// INVITE / 486: the caller's transaction ACKs the 486 itself (same branch)
/// and the callee's transaction absorbs that ACK (its TU never sees it).
#[test]
fn invite_busy_ack() {
    let busy = Plan {
        answer: Some(486),
        ..Plan::default()
    };
    let mut w = call(Plan::default(), busy, Box::new(|_| Fate::Deliver));
    assert_eq!(w.caller.seen, ["100 INVITE", "180 INVITE", "486 INVITE"]);
    assert_eq!(w.callee.seen, ["INVITE"]);
    let invite = &w.net.sent("INVITE", "INVITE")[0].2;
    let acks = w.net.sent("ACK", "ACK");
    assert_eq!(acks.len(), 1);
    assert_eq!(
        branch(&acks[0].2),
        branch(invite),
        "§17.1.1.3: the INVITE's branch"
    );
    assert!(
        w.caller.dialogs.is_empty(),
        "the 486 ended the early dialog"
    );
    let ist = w.callee.ist.unwrap();
    assert_eq!(w.callee.txns.state(ist), Some(State::Confirmed));
    settle(&mut w);
}

/// INVITE / 180 / CANCEL / 200 (CANCEL) / 487 (INVITE) / ACK.
#[test]
fn invite_cancel_request_terminated() {
    let caller = Plan {
        cancel_on_ringing: true,
        ..Plan::default()
    };
    let mut w = call(caller, Plan::default(), Box::new(|_| Fate::Deliver));
    assert_eq!(
        w.caller.seen,
        ["100 INVITE", "180 INVITE", "200 CANCEL", "487 INVITE"]
    );
    assert_eq!(w.callee.seen, ["INVITE", "CANCEL matched=true"]);
    let cancel = &w.net.sent("CANCEL", "CANCEL")[0].2;
    let invite = &w.net.sent("INVITE", "INVITE")[0].2;
    assert_eq!(branch(cancel), branch(invite));
    assert_eq!(w.net.sent("ACK", "ACK").len(), 1, "the 487 is ACKed");
    settle(&mut w);
}

/// MESSAGE / 200 outside any dialog.
#[test]
fn message_ok() {
    let mut w = World::new(
        Plan::default(),
        Plan::default(),
        Box::new(|_| Fate::Deliver),
    );
    w.caller.message(w.now);
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.caller.seen, ["200 MESSAGE"]);
    assert_eq!(w.callee.seen, ["MESSAGE"]);
    assert_eq!(w.net.wire.len(), 2);
    settle(&mut w);
}

// ----- losses recovered by retransmission --------------------------------

/// The first INVITE is lost: Timer A sends it again at 500 ms.
#[test]
fn a_lost_invite_is_retransmitted_by_timer_a() {
    let fault = first_n(1, is("INVITE", "INVITE"), Fate::Drop);
    let mut w = call(HANG_UP, ANSWER, fault);
    assert_eq!(
        w.caller.seen,
        ["100 INVITE", "180 INVITE", "200 INVITE", "200 BYE"]
    );
    assert_eq!(w.callee.seen, ["INVITE", "ACK", "BYE"]);
    let times: Vec<u64> = w.net.sent("INVITE", "INVITE").iter().map(|s| s.0).collect();
    assert_eq!(times, [0, 500]);
    settle(&mut w);
}

/// The 200 to the INVITE is lost twice: the callee's TU retransmits it
/// (§13.3.1.4, through the Accepted server transaction) at 500 ms and
/// 1.5 s; the caller ACKs the one that arrives.
#[test]
fn a_lost_2xx_is_retransmitted_by_the_callee_tu() {
    let fault = first_n(2, is("SIP/2.0 200", "INVITE"), Fate::Drop);
    let mut w = call(HANG_UP, ANSWER, fault);
    assert_eq!(
        w.caller.seen,
        ["100 INVITE", "180 INVITE", "200 INVITE", "200 BYE"]
    );
    assert_eq!(w.callee.seen, ["INVITE", "ACK", "BYE"]);
    let oks: Vec<u64> = w
        .net
        .sent("SIP/2.0 200", "INVITE")
        .iter()
        .map(|s| s.0)
        .collect();
    assert_eq!(oks, [10, 510, 1_510]);
    settle(&mut w);
}

/// The ACK of the 2xx is lost: the callee retransmits the 2xx at 500 ms,
/// the caller's Accepted transaction passes it up again (RFC 6026) and its
/// TU ACKs it again; then the caller hangs up.
#[test]
fn a_lost_2xx_ack_is_recovered_by_the_next_2xx() {
    let fault = first_n(1, is("ACK", "ACK"), Fate::Drop);
    let mut w = call(Plan::default(), ANSWER, fault);
    assert_eq!(
        w.caller.seen,
        ["100 INVITE", "180 INVITE", "200 INVITE", "200 INVITE"]
    );
    assert_eq!(w.callee.seen, ["INVITE", "ACK"]);
    let acks: Vec<u64> = w.net.sent("ACK", "ACK").iter().map(|s| s.0).collect();
    assert_eq!(acks, [20, 520]);
    w.caller.hang_up(w.now);
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.callee.seen, ["INVITE", "ACK", "BYE"]);
    settle(&mut w);
}

/// The 200 to a MESSAGE is lost: Timer E sends the MESSAGE again, the
/// callee's transaction answers with the stored 200 and its TU sees the
/// MESSAGE once.
#[test]
fn a_lost_non_invite_response_is_recovered_by_timer_e() {
    let fault = first_n(1, is("SIP/2.0 200", "MESSAGE"), Fate::Drop);
    let mut w = World::new(Plan::default(), Plan::default(), fault);
    w.caller.message(w.now);
    w.run_for(Duration::from_secs(2));
    assert_eq!(w.caller.seen, ["200 MESSAGE"]);
    assert_eq!(w.callee.seen, ["MESSAGE"]);
    let sent: Vec<u64> = w
        .net
        .sent("MESSAGE", "MESSAGE")
        .iter()
        .map(|s| s.0)
        .collect();
    assert_eq!(sent, [0, 500]);
    settle(&mut w);
}

/// The CANCEL's 200 is lost: Timer E resends the CANCEL; the callee's
/// CANCEL transaction answers it again; the INVITE still ends in 487.
#[test]
fn a_lost_cancel_response_is_recovered() {
    let caller = Plan {
        cancel_on_ringing: true,
        ..Plan::default()
    };
    let fault = first_n(1, is("SIP/2.0 200", "CANCEL"), Fate::Drop);
    let mut w = call(caller, Plan::default(), fault);
    assert_eq!(
        w.caller.seen,
        ["100 INVITE", "180 INVITE", "487 INVITE", "200 CANCEL"]
    );
    assert_eq!(w.callee.seen, ["INVITE", "CANCEL matched=true"]);
    assert_eq!(w.net.sent("CANCEL", "CANCEL").len(), 2);
    settle(&mut w);
}

/// No ACK ever arrives: the callee gives up at 64·T1 (its TU would BYE).
#[test]
fn a_callee_that_never_gets_the_ack_gives_up() {
    let fault: Fault = Box::new(|b| {
        if first_line(b).starts_with("ACK") {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    let caller = Plan::default();
    let mut w = call(caller, ANSWER, fault);
    w.run_for(Duration::from_secs(40));
    assert_eq!(w.callee.seen, ["INVITE", "no ACK"]);
    // Every 2xx retransmission reached the caller, which ACKed each.
    let oks = w.net.sent("SIP/2.0 200", "INVITE").len();
    assert_eq!(oks, 11);
    let acks = w.net.sent("ACK", "ACK").len();
    assert_eq!(acks, 11);
    assert!(w.caller.txns.is_empty() && w.callee.txns.is_empty());
}

// ----- duplication and reordering -----------------------------------------

/// Every datagram arrives twice, the copy 1 ms after the original. The
/// transactions absorb the duplicate requests (INVITE, BYE) and the copies
/// of the 1xx, which arrive once the 200 has moved the INVITE to Accepted;
/// the copy of the 200 goes up (RFC 6026) and is ACKed again. ACKs of a 2xx
/// are no transaction's, so the callee's TU sees all four copies: the first
/// in the dialog, the others after the BYE ended it.
#[test]
fn duplicated_datagrams_are_absorbed() {
    let mut w = call(HANG_UP, ANSWER, Box::new(|_| Fate::Duplicate));
    assert_eq!(
        w.caller.seen,
        [
            "100 INVITE",
            "180 INVITE",
            "200 INVITE",
            "200 INVITE",
            "200 BYE"
        ]
    );
    assert_eq!(
        w.callee.seen,
        [
            "INVITE",
            "ACK",
            "BYE",
            "stray ACK",
            "stray ACK",
            "stray ACK"
        ]
    );
    assert_eq!(
        w.net.sent("SIP/2.0 100", "INVITE").len(),
        1,
        "the copy of the INVITE is absorbed"
    );
    assert_eq!(
        w.net.sent("SIP/2.0 200", "BYE").len(),
        2,
        "the copy of the BYE gets the 200 again"
    );
    settle(&mut w);
}

/// The 180 arrives after the 200 (delayed 100 ms): the Accepted INVITE
/// transaction absorbs it; the call completes.
#[test]
fn a_provisional_overtaken_by_the_2xx_is_absorbed() {
    let fault = first_n(
        1,
        is("SIP/2.0 180", "INVITE"),
        Fate::Delay(Duration::from_millis(100)),
    );
    let mut w = call(HANG_UP, ANSWER, fault);
    assert_eq!(w.caller.seen, ["100 INVITE", "200 INVITE", "200 BYE"]);
    assert_eq!(w.callee.seen, ["INVITE", "ACK", "BYE"]);
    settle(&mut w);
}

/// A seeded mix of loss, duplication and delay over many calls: every
/// call either completes (the callee saw INVITE and BYE once each) or the
/// caller's INVITE timed out, and every table empties.
#[test]
fn calls_survive_a_lossy_reordering_network() {
    let mut completed = 0;
    for seed in 1..=40u64 {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let fault: Fault = Box::new(move |_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 10 {
                0 | 1 => Fate::Drop,
                2 => Fate::Duplicate,
                3 => Fate::Delay(Duration::from_millis(x % 700)),
                _ => Fate::Deliver,
            }
        });
        let mut w = call(HANG_UP, ANSWER, fault);
        // Timer A may take up to 31.5 s to get an INVITE through, and the
        // transactions of that call then need 64·T1 to end.
        w.run_for(Duration::from_secs(70));
        let invites = w.callee.seen.iter().filter(|s| *s == "INVITE").count();
        let byes = w.callee.seen.iter().filter(|s| *s == "BYE").count();
        assert!(
            invites <= 1 && byes <= 1,
            "seed {seed}: {:?}",
            w.callee.seen
        );
        if w.caller.seen.iter().any(|s| s == "200 BYE") {
            completed += 1;
            assert_eq!((invites, byes), (1, 1), "seed {seed}");
        }
        for ua in [&w.caller, &w.callee] {
            assert!(ua.txns.is_empty(), "seed {seed}: {:?}", ua.seen);
        }
    }
    assert!(completed >= 30, "only {completed} of 40 calls completed");
}
