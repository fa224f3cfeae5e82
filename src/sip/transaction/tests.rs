//! Every timer on a simulated clock: the instants at which each machine
//! sends, gives up and ends, with T1 500 ms, T2 4 s, T4 5 s, Timer D 32 s.

use super::*;
use crate::sip::scan::{scan, Method};
use std::time::Instant;

const UAC: &str = "192.0.2.1:5060";
const UAS: &str = "192.0.2.2:5060";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn request(method: &str, branch: &str, sent_by: &str) -> Vec<u8> {
    format!(
        "{method} sip:bob@192.0.2.2 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {sent_by};branch={branch}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@a.example>;tag=fa\r\n\
         To: <sip:bob@b.example>\r\n\
         Call-ID: call-1\r\n\
         CSeq: 1 {method}\r\n\
         Contact: <sip:alice@192.0.2.1>\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn invite(branch: &str) -> Vec<u8> {
    request("INVITE", branch, UAC)
}

/// The response `code` to `req`, To-tagged unless a 100.
fn response(req: &[u8], code: u16) -> Vec<u8> {
    let m = scan(req);
    let spec = ResponseSpec {
        to_tag: (code > 100).then_some(&b"tb"[..]),
        ..ResponseSpec::new(code, "Reason")
    };
    let mut out = vec![0u8; 2048];
    let n = write_response(req, &m, None, &spec, &mut out).unwrap();
    out.truncate(n);
    out
}

/// A table, a simulated clock, and everything the table sent and said,
/// stamped with the clock in ms.
struct Sim {
    table: TransactionTable,
    t0: Instant,
    now: Instant,
    sent: Vec<(u64, Vec<u8>, SocketAddr)>,
    events: Vec<(u64, Event)>,
}

impl Sim {
    fn new() -> Sim {
        Sim::with(Config::default())
    }

    fn with(config: Config) -> Sim {
        let t0 = Instant::now();
        Sim {
            table: TransactionTable::new(config),
            t0,
            now: t0,
            sent: Vec::new(),
            events: Vec::new(),
        }
    }

    fn ms(&self) -> u64 {
        (self.now - self.t0).as_millis() as u64
    }

    fn drain(&mut self) {
        let mut buf = Vec::new();
        while let Some(t) = self.table.poll_transmit(&mut buf) {
            self.sent.push((self.ms(), buf.clone(), t.destination));
        }
        while let Some(e) = self.table.poll_event() {
            self.events.push((self.ms(), e));
        }
        self.table.assert_invariants();
    }

    /// Advance to `ms`, firing every deadline on the way at its instant.
    fn run_to(&mut self, ms: u64) {
        let end = self.t0 + Duration::from_millis(ms);
        while let Some(at) = self.table.poll_timeout().filter(|at| *at <= end) {
            assert!(at >= self.now, "deadlines never lie in the past");
            self.now = at;
            self.table.handle_timeout(at);
            self.drain();
        }
        self.now = end;
    }

    fn send(&mut self, req: &[u8]) -> TransactionId {
        let id = self.table.send_request(self.now, req, addr(UAS)).unwrap();
        self.drain();
        id
    }

    fn receive(&mut self, bytes: &[u8], from: &str) -> Received {
        let m = scan(bytes);
        let r = self.table.handle_datagram(self.now, addr(from), bytes, &m);
        self.drain();
        r.unwrap()
    }

    fn respond(&mut self, id: TransactionId, bytes: &[u8]) -> Result<(), Error> {
        let r = self.table.send_response(self.now, id, bytes);
        self.drain();
        r
    }

    /// When each sent datagram whose start line begins `prefix` went out.
    fn times(&self, prefix: &str) -> Vec<u64> {
        self.sent
            .iter()
            .filter(|(_, b, _)| b.starts_with(prefix.as_bytes()))
            .map(|(t, _, _)| *t)
            .collect()
    }

    fn take_events(&mut self) -> Vec<(u64, Event)> {
        std::mem::take(&mut self.events)
    }
}

fn timeout(id: TransactionId, timer: Timer) -> Event {
    Event::Timeout { id, timer }
}

fn terminated(id: TransactionId) -> Event {
    Event::Terminated { id }
}

// ----- INVITE client (figure 5) -----------------------------------------

/// Timer A: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s (doubling, no T2 cap), then
/// Timer B at 64·T1 = 32 s: timeout, terminated, out of the table.
#[test]
fn timer_a_doubles_and_timer_b_times_the_invite_out() {
    let mut s = Sim::new();
    let id = s.send(&invite("z9hG4bK1"));
    assert_eq!(s.table.state(id), Some(State::Calling));
    s.run_to(40_000);
    assert_eq!(
        s.times("INVITE"),
        [0, 500, 1_500, 3_500, 7_500, 15_500, 31_500]
    );
    assert_eq!(
        s.take_events(),
        [(32_000, timeout(id, Timer::B)), (32_000, terminated(id))]
    );
    assert!(s.table.is_empty() && s.table.state(id).is_none());
    assert_eq!(s.table.stats().retransmitted, 6);
}

/// A provisional stops Timers A and B; only Timer C (reset by each
/// provisional above 100) bounds the wait for a final response.
#[test]
fn a_provisional_stops_retransmission_and_timer_c_bounds_proceeding() {
    let mut s = Sim::new();
    let req = invite("z9hG4bK1");
    let id = s.send(&req);
    s.run_to(600);
    let r = s.receive(&response(&req, 100), UAS);
    assert_eq!(r, Received::Response { id, code: 100 });
    assert_eq!(s.table.state(id), Some(State::Proceeding));
    s.run_to(60_000);
    assert_eq!(
        s.receive(&response(&req, 180), UAS),
        Received::Response { id, code: 180 }
    );
    s.run_to(60_000 + 179_999);
    assert_eq!(
        s.times("INVITE"),
        [0, 500],
        "no retransmission once provisional"
    );
    assert!(s.events.is_empty(), "no Timer B in Proceeding");
    s.run_to(60_000 + 180_000);
    assert_eq!(
        s.take_events(),
        [(240_000, timeout(id, Timer::C)), (240_000, terminated(id))]
    );
}

/// §17.1.1.3: a non-2xx final is ACKed by the transaction with the same
/// branch; each retransmission of it gets the ACK again and is absorbed;
/// Timer D (32 s) ends the transaction.
#[test]
fn a_non_2xx_final_is_acked_again_for_each_retransmission_until_timer_d() {
    let mut s = Sim::new();
    let req = invite("z9hG4bK1");
    let id = s.send(&req);
    s.run_to(100);
    let busy = response(&req, 486);
    assert_eq!(s.receive(&busy, UAS), Received::Response { id, code: 486 });
    assert_eq!(s.table.state(id), Some(State::Completed));
    let (_, ack, to) = s.sent.last().unwrap().clone();
    assert_eq!(to, addr(UAS));
    let am = scan(&ack);
    assert_eq!(am.method(), Some(Method::Ack));
    assert_eq!(am.defect, None);
    let via = am.top_via.unwrap();
    assert_eq!(
        via.branch.unwrap().get(&ack),
        b"z9hG4bK1",
        "the INVITE's branch"
    );
    assert_eq!(am.cseq_num, 1);
    assert_eq!(am.cseq_method.get(&ack), b"ACK");
    assert_eq!(am.to_tag.unwrap().get(&ack), b"tb", "the response's To");
    s.run_to(5_000);
    assert_eq!(s.receive(&busy, UAS), Received::Absorbed);
    assert_eq!(s.times("ACK"), [100, 5_000]);
    assert_eq!(s.times("INVITE"), [0], "no retransmission after the final");
    s.run_to(100 + 31_999);
    assert!(s.events.is_empty());
    s.run_to(100 + 32_000);
    assert_eq!(s.take_events(), [(32_100, terminated(id))]);
}

/// RFC 6026: a 2xx moves to Accepted (no ACK from the transaction: the TU
/// sends it), every 2xx retransmission goes up to the TU, Timer M (64·T1)
/// ends it.
#[test]
fn a_2xx_enters_accepted_passes_retransmissions_up_and_timer_m_ends_it() {
    let mut s = Sim::new();
    let req = invite("z9hG4bK1");
    let id = s.send(&req);
    s.run_to(200);
    let ok = response(&req, 200);
    assert_eq!(s.receive(&ok, UAS), Received::Response { id, code: 200 });
    assert_eq!(s.table.state(id), Some(State::Accepted));
    s.run_to(1_000);
    assert_eq!(s.receive(&ok, UAS), Received::Response { id, code: 200 });
    assert_eq!(s.receive(&response(&req, 486), UAS), Received::Absorbed);
    assert!(s.times("ACK").is_empty(), "the 2xx ACK is the TU's");
    assert_eq!(s.times("INVITE"), [0], "Timer A stopped by the 2xx");
    s.run_to(200 + 32_000);
    assert_eq!(s.take_events(), [(32_200, terminated(id))]);
    assert_eq!(s.receive(&ok, UAS), Received::StrayResponse);
}

// ----- non-INVITE client (figure 6) -------------------------------------

/// Timer E: 0.5, 1.5, 3.5, 7.5 s, then every T2 (4 s) up to Timer F at 32 s.
#[test]
fn timer_e_doubles_to_t2_and_timer_f_times_out() {
    let mut s = Sim::new();
    let id = s.send(&request("MESSAGE", "z9hG4bK2", UAC));
    assert_eq!(s.table.state(id), Some(State::Trying));
    s.run_to(40_000);
    assert_eq!(
        s.times("MESSAGE"),
        [0, 500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500]
    );
    assert_eq!(
        s.take_events(),
        [(32_000, timeout(id, Timer::F)), (32_000, terminated(id))]
    );
}

/// §17.1.2.2: in Proceeding, Timer E fires every T2; a final response stops
/// it, goes up once, and its retransmissions are absorbed until Timer K
/// (T4) ends the transaction.
#[test]
fn proceeding_retransmits_every_t2_and_timer_k_absorbs_final_retransmissions() {
    let mut s = Sim::new();
    let req = request("MESSAGE", "z9hG4bK2", UAC);
    let id = s.send(&req);
    s.run_to(600);
    assert_eq!(
        s.receive(&response(&req, 100), UAS),
        Received::Response { id, code: 100 }
    );
    assert_eq!(s.table.state(id), Some(State::Proceeding));
    s.run_to(10_000);
    // E was due at 1.5 s (armed in Trying); from then on every T2.
    assert_eq!(s.times("MESSAGE"), [0, 500, 1_500, 5_500, 9_500]);
    let ok = response(&req, 200);
    assert_eq!(s.receive(&ok, UAS), Received::Response { id, code: 200 });
    assert_eq!(s.table.state(id), Some(State::Completed));
    s.run_to(12_000);
    assert_eq!(s.receive(&ok, UAS), Received::Absorbed);
    assert_eq!(
        s.times("MESSAGE").len(),
        5,
        "no retransmission after the final"
    );
    s.run_to(10_000 + 4_999);
    assert!(s.events.is_empty());
    s.run_to(10_000 + 5_000);
    assert_eq!(s.take_events(), [(15_000, terminated(id))]);
}

// ----- INVITE server (figure 7) -----------------------------------------

fn new_server(s: &mut Sim, req: &[u8]) -> TransactionId {
    match s.receive(req, UAC) {
        Received::Request(id) => id,
        other => panic!("not a new request: {other:?}"),
    }
}

/// A new INVITE is answered 100 Trying at once; a retransmission gets the
/// latest provisional again and is not passed up.
#[test]
fn an_invite_server_sends_trying_and_answers_retransmissions_with_the_last_provisional() {
    let mut s = Sim::new();
    let req = invite("z9hG4bK3");
    let id = new_server(&mut s, &req);
    assert_eq!(s.table.state(id), Some(State::Proceeding));
    assert_eq!(s.table.request(id), Some(&req[..]));
    let (_, trying, to) = s.sent[0].clone();
    assert!(trying.starts_with(b"SIP/2.0 100 Trying\r\n"));
    assert_eq!(scan(&trying).to_tag, None, "a 100 has no To tag");
    assert_eq!(to, addr(UAC));
    s.run_to(500);
    assert_eq!(s.receive(&req, UAC), Received::Absorbed);
    s.respond(id, &response(&req, 180)).unwrap();
    s.run_to(1_500);
    assert_eq!(s.receive(&req, UAC), Received::Absorbed);
    assert_eq!(s.times("SIP/2.0 100"), [0, 500]);
    assert_eq!(s.times("SIP/2.0 180"), [500, 1_500]);
}

/// Timer G: the non-2xx final at 0.5, 1.5, 3.5, 7.5 s then every T2, until
/// Timer H (64·T1) gives up on the ACK.
#[test]
fn timer_g_retransmits_the_final_until_timer_h() {
    let mut s = Sim::new();
    let req = invite("z9hG4bK3");
    let id = new_server(&mut s, &req);
    s.respond(id, &response(&req, 486)).unwrap();
    assert_eq!(s.table.state(id), Some(State::Completed));
    s.run_to(40_000);
    assert_eq!(
        s.times("SIP/2.0 486"),
        [0, 500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500]
    );
    assert_eq!(
        s.take_events(),
        [(32_000, timeout(id, Timer::H)), (32_000, terminated(id))]
    );
}

/// The ACK (same branch) confirms: Timer G stops, ACK and INVITE
/// retransmissions are absorbed silently, Timer I (T4) ends it.
#[test]
fn the_ack_confirms_and_timer_i_absorbs_its_retransmissions() {
    let mut s = Sim::new();
    let req = invite("z9hG4bK3");
    let id = new_server(&mut s, &req);
    s.respond(id, &response(&req, 486)).unwrap();
    s.run_to(700);
    let ack = request("ACK", "z9hG4bK3", UAC);
    assert_eq!(s.receive(&ack, UAC), Received::Absorbed);
    assert_eq!(s.table.state(id), Some(State::Confirmed));
    s.run_to(2_000);
    assert_eq!(s.receive(&ack, UAC), Received::Absorbed);
    assert_eq!(s.receive(&req, UAC), Received::Absorbed);
    assert_eq!(s.times("SIP/2.0 486"), [0, 500], "G stopped by the ACK");
    s.run_to(700 + 4_999);
    assert!(s.events.is_empty());
    s.run_to(700 + 5_000);
    assert_eq!(s.take_events(), [(5_700, terminated(id))]);
}

/// RFC 6026: after a 2xx the server transaction is Accepted: it does not
/// retransmit the 2xx itself, absorbs INVITE retransmissions without
/// answering, sends the TU's 2xx retransmissions, passes a matching ACK up,
/// refuses any other final, and Timer L (64·T1) ends it.
#[test]
fn a_2xx_enters_accepted_where_the_tu_retransmits_and_timer_l_ends_it() {
    let mut s = Sim::new();
    let req = invite("z9hG4bK3");
    let id = new_server(&mut s, &req);
    let ok = response(&req, 200);
    s.respond(id, &ok).unwrap();
    assert_eq!(s.table.state(id), Some(State::Accepted));
    s.run_to(500);
    assert_eq!(s.receive(&req, UAC), Received::Absorbed);
    s.table.resend_final(s.now, id).unwrap();
    s.drain();
    s.run_to(1_000);
    s.respond(id, &ok).unwrap();
    assert_eq!(
        s.respond(id, &response(&req, 486)),
        Err(Error::InvalidState(State::Accepted))
    );
    assert_eq!(
        s.times("SIP/2.0 200"),
        [0, 500, 1_000],
        "only the TU's sends"
    );
    let same_branch_ack = request("ACK", "z9hG4bK3", UAC);
    assert_eq!(s.receive(&same_branch_ack, UAC), Received::Ack(Some(id)));
    let own_branch_ack = request("ACK", "z9hG4bKack", UAC);
    assert_eq!(s.receive(&own_branch_ack, UAC), Received::Ack(None));
    s.run_to(31_999);
    assert!(s.events.is_empty());
    s.run_to(32_000);
    assert_eq!(s.take_events(), [(32_000, terminated(id))]);
}

/// An INVITE the TU never answers finally ends on Timer C.
#[test]
fn an_unanswered_invite_server_ends_on_timer_c() {
    let mut s = Sim::new();
    let id = new_server(&mut s, &invite("z9hG4bK3"));
    s.run_to(180_000);
    assert_eq!(
        s.take_events(),
        [(180_000, timeout(id, Timer::C)), (180_000, terminated(id))]
    );
}

// ----- non-INVITE server (figure 8) -------------------------------------

/// Trying absorbs retransmissions silently; the final goes out once per
/// retransmission of the request; Timer J (64·T1) ends it; a second final
/// is refused.
#[test]
fn a_non_invite_server_answers_retransmissions_until_timer_j() {
    let mut s = Sim::new();
    let req = request("MESSAGE", "z9hG4bK4", UAC);
    let id = new_server(&mut s, &req);
    assert_eq!(s.table.state(id), Some(State::Trying));
    assert!(s.sent.is_empty(), "no 100 Trying for non-INVITE");
    s.run_to(500);
    assert_eq!(s.receive(&req, UAC), Received::Absorbed);
    assert!(s.sent.is_empty());
    s.respond(id, &response(&req, 200)).unwrap();
    assert_eq!(s.table.state(id), Some(State::Completed));
    s.run_to(1_500);
    assert_eq!(s.receive(&req, UAC), Received::Absorbed);
    assert_eq!(s.times("SIP/2.0 200"), [500, 1_500]);
    assert_eq!(
        s.respond(id, &response(&req, 500)),
        Err(Error::InvalidState(State::Completed))
    );
    s.run_to(500 + 31_999);
    assert!(s.events.is_empty());
    s.run_to(500 + 32_000);
    assert_eq!(s.take_events(), [(32_500, terminated(id))]);
}

/// A request the TU never answers ends when the client's Timer F would.
#[test]
fn an_unanswered_non_invite_server_ends_after_64_t1() {
    let mut s = Sim::new();
    let req = request("MESSAGE", "z9hG4bK4", UAC);
    let id = new_server(&mut s, &req);
    s.run_to(1_000);
    s.respond(id, &response(&req, 100)).unwrap();
    s.run_to(32_000);
    assert_eq!(
        s.take_events(),
        [(32_000, timeout(id, Timer::F)), (32_000, terminated(id))]
    );
}

// ----- matching (§17.1.3, §17.2.3) --------------------------------------

/// A CANCEL is a transaction of its own that names the INVITE of the same
/// branch and sent-by; its retransmission is absorbed; a CANCEL of an
/// unknown branch names nothing.
#[test]
fn a_cancel_matches_its_invite_server_transaction() {
    let mut s = Sim::new();
    let inv = new_server(&mut s, &invite("z9hG4bK5"));
    let cancel = request("CANCEL", "z9hG4bK5", UAC);
    let Received::Cancel {
        cancel: c,
        invite: Some(i),
    } = s.receive(&cancel, UAC)
    else {
        panic!("CANCEL not matched");
    };
    assert_eq!(i, inv);
    assert_ne!(c, inv);
    assert_eq!(s.table.kind(c), Some(Kind::NonInviteServer));
    assert_eq!(s.receive(&cancel, UAC), Received::Absorbed);
    let stray = request("CANCEL", "z9hG4bK6", UAC);
    assert!(matches!(
        s.receive(&stray, UAC),
        Received::Cancel { invite: None, .. }
    ));
    // Another sent-by with the same branch is another client's request.
    let other = request("CANCEL", "z9hG4bK5", "192.0.2.9:5060");
    assert!(matches!(
        s.receive(&other, "192.0.2.9:5060"),
        Received::Cancel { invite: None, .. }
    ));
}

/// Responses match on branch and CSeq method: the CANCEL's 200 and the
/// INVITE's 487 reach their own transactions; an unknown branch is stray.
#[test]
fn responses_match_branch_and_cseq_method() {
    let mut s = Sim::new();
    let req = invite("z9hG4bK7");
    let inv = s.send(&req);
    s.receive(&response(&req, 180), UAS);
    let c = s.table.cancel(s.now, inv).unwrap();
    s.drain();
    let cancel = s.sent.last().unwrap().1.clone();
    let cm = scan(&cancel);
    assert_eq!(cm.method(), Some(Method::Cancel));
    assert_eq!(
        cm.top_via.unwrap().branch.unwrap().get(&cancel),
        b"z9hG4bK7"
    );
    assert_eq!(cm.to_tag, None, "the INVITE's To");
    assert_eq!(
        s.receive(&response(&cancel, 200), UAS),
        Received::Response { id: c, code: 200 }
    );
    assert_eq!(
        s.receive(&response(&req, 487), UAS),
        Received::Response { id: inv, code: 487 }
    );
    assert_eq!(
        s.receive(&response(&invite("z9hG4bKx"), 200), UAS),
        Received::StrayResponse
    );
    assert_eq!(s.table.stats().stray_responses, 1);
}

/// §9.1: a CANCEL asked for before any provisional waits for one; asked
/// twice it is the same CANCEL.
#[test]
fn a_cancel_is_held_until_the_first_provisional() {
    let mut s = Sim::new();
    let req = invite("z9hG4bK8");
    let inv = s.send(&req);
    let c = s.table.cancel(s.now, inv).unwrap();
    assert_eq!(s.table.cancel(s.now, inv), Ok(c));
    s.run_to(1_000);
    assert!(s.times("CANCEL").is_empty());
    s.receive(&response(&req, 100), UAS);
    assert_eq!(s.times("CANCEL"), [1_000]);
    assert_eq!(s.table.cancel(s.now, inv), Ok(c), "still the same CANCEL");
    s.run_to(1_500);
    assert_eq!(s.times("CANCEL"), [1_000, 1_500], "Timer E runs once sent");
}

/// A final response before any provisional: the held CANCEL ends unsent;
/// a final response makes CANCEL impossible.
#[test]
fn a_held_cancel_ends_unsent_when_the_final_comes_first() {
    let mut s = Sim::new();
    let req = invite("z9hG4bK8");
    let inv = s.send(&req);
    let first = inv;
    let c = s.table.cancel(s.now, inv).unwrap();
    s.receive(&response(&req, 486), UAS);
    assert_eq!(s.take_events(), [(0, terminated(c))]);
    assert!(s.times("CANCEL").is_empty());
    assert_eq!(
        s.table.cancel(s.now, inv),
        Err(Error::InvalidState(State::Completed))
    );
    // And one whose INVITE times out ends with it.
    let req = invite("z9hG4bK9");
    let inv = s.send(&req);
    let c = s.table.cancel(s.now, inv).unwrap();
    s.run_to(40_000);
    let ends: Vec<_> = s
        .take_events()
        .into_iter()
        .map(|(_, e)| e)
        .filter(|e| *e != terminated(first))
        .collect();
    assert_eq!(
        ends,
        [timeout(inv, Timer::B), terminated(inv), terminated(c)]
    );
    assert!(s.table.is_empty());
}

// ----- the TU's errors, bounds, malformed input -------------------------

#[test]
fn the_tu_cannot_misuse_transactions() {
    let mut s = Sim::new();
    let req = invite("z9hG4bKa");
    let cli = s.send(&req);
    assert_eq!(
        s.table.send_request(s.now, &req, addr(UAS)),
        Err(Error::DuplicateBranch)
    );
    let ack = request("ACK", "z9hG4bKb", UAC);
    assert_eq!(
        s.table.send_request(s.now, &ack, addr(UAS)),
        Err(Error::AckIsNoTransaction)
    );
    let no_cookie = request("OPTIONS", "1234", UAC);
    assert_eq!(
        s.table.send_request(s.now, &no_cookie, addr(UAS)),
        Err(Error::NoBranch)
    );
    assert_eq!(
        s.respond(cli, &response(&req, 200)),
        Err(Error::WrongKind(Kind::InviteClient))
    );
    let other = invite("z9hG4bKc");
    let srv = new_server(&mut s, &other);
    assert_eq!(
        s.respond(srv, &response(&req, 200)),
        Err(Error::NotThisTransaction)
    );
    assert_eq!(s.respond(srv, &other), Err(Error::NotAResponse));
    assert_eq!(
        s.table.cancel(s.now, srv),
        Err(Error::WrongKind(Kind::InviteServer))
    );
}

/// The table refuses a transaction beyond its maximum (the caller answers
/// 503), reuses a slot once a transaction ended, and an old id then refers
/// to nothing.
#[test]
fn the_table_is_bounded_and_slots_are_reused() {
    let mut s = Sim::with(Config {
        max_transactions: 2,
        ..Config::default()
    });
    let req_a = request("MESSAGE", "z9hG4bK1", UAC);
    let a = new_server(&mut s, &req_a);
    s.respond(a, &response(&req_a, 200)).unwrap();
    s.run_to(1_000);
    let req_b = request("MESSAGE", "z9hG4bK2", UAC);
    let b = new_server(&mut s, &req_b);
    let third = request("MESSAGE", "z9hG4bK3", UAC);
    let m = scan(&third);
    let r = s.table.handle_datagram(s.now, addr(UAC), &third, &m);
    assert_eq!(r, Err(Error::TableFull));
    assert_eq!(
        s.table
            .send_request(s.now, &request("OPTIONS", "z9hG4bK4", UAC), addr(UAS)),
        Err(Error::TableFull)
    );
    assert_eq!(s.table.stats().table_full, 2);
    assert_eq!(s.table.len(), 2);
    // A retransmission of a live one still gets through.
    assert_eq!(s.receive(&req_b, UAC), Received::Absorbed);
    s.run_to(32_000);
    assert!(s.events.contains(&(32_000, terminated(a))));
    let c = new_server(&mut s, &third);
    assert_eq!(s.table.len(), 2);
    assert_eq!(s.table.state(a), None, "the old id refers to nothing");
    assert_eq!(
        s.respond(a, &response(&req_a, 200)),
        Err(Error::UnknownTransaction)
    );
    assert_ne!(a, c);
    assert_eq!(s.table.state(b), Some(State::Trying));
}

/// Malformed datagrams are refused and counted, never a panic.
#[test]
fn malformed_datagrams_are_counted_refusals() {
    let mut s = Sim::new();
    for bad in [
        &b""[..],
        b"\r\n\r\n",
        b"INVITE sip:x SIP/2.0\r\n\r\n",
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n",
        b"garbage",
    ] {
        let m = scan(bad);
        let r = s.table.handle_datagram(s.now, addr(UAC), bad, &m);
        assert!(matches!(r, Err(Error::Malformed(_))), "{r:?}");
    }
    let no_branch = request("MESSAGE", "nocookie", UAC);
    let m = scan(&no_branch);
    let r = s.table.handle_datagram(s.now, addr(UAC), &no_branch, &m);
    assert_eq!(r, Err(Error::NoBranch));
    assert_eq!(s.table.stats().refused, 6);
    assert!(s.table.is_empty());
}

#[test]
fn a_transport_error_informs_the_tu_and_ends_the_transaction() {
    let mut s = Sim::new();
    let id = s.send(&invite("z9hG4bKd"));
    s.table.handle_transport_error(s.now, id).unwrap();
    s.drain();
    assert_eq!(
        s.take_events(),
        [(0, Event::TransportError { id }), (0, terminated(id))]
    );
    assert_eq!(
        s.table.handle_transport_error(s.now, id),
        Err(Error::UnknownTransaction)
    );
}

/// A caller that never drains: transmits and events beyond the bound are
/// dropped and counted.
#[test]
fn undrained_queues_stay_bounded() {
    let mut table = TransactionTable::new(Config {
        max_pending: 3,
        ..Config::default()
    });
    let now = Instant::now();
    for i in 0..5 {
        let req = request("OPTIONS", &format!("z9hG4bKq{i}"), UAC);
        table.send_request(now, &req, addr(UAS)).unwrap();
    }
    table.assert_invariants();
    assert_eq!(table.stats().dropped_transmits, 2);
    let mut buf = Vec::new();
    let mut n = 0;
    while table.poll_transmit(&mut buf).is_some() {
        n += 1;
    }
    assert_eq!(n, 3);
}

#[test]
fn invalid_configurations_are_named() {
    let bad = [
        Config {
            t1: Duration::ZERO,
            ..Config::default()
        },
        Config {
            t2: Duration::from_millis(100),
            ..Config::default()
        },
        Config {
            t1: Duration::from_secs(60),
            ..Config::default()
        },
        Config {
            max_transactions: 0,
            ..Config::default()
        },
    ];
    for c in bad {
        assert!(c.validate().is_err(), "{c:?}");
    }
    assert_eq!(Config::default().validate(), Ok(()));
}
