//! Arbitrary sequences of datagrams, timer expiries and TU actions through
//! one transaction table (and a dialog table fed the same datagrams), on a
//! simulated clock: never a panic, the tables within their bounds and
//! consistent after every step, and no deadline left in the past once the
//! timers due have been handled.
//!
//! Messages come from a small vocabulary (methods, branches, sent-bys,
//! codes, tags) so that they match each other's transactions, from the
//! table's own output looped back (its INVITE becomes a server transaction
//! whose 100 Trying then reaches the client one), and from raw input bytes.
#![no_main]

use cpm_edge::sip::dialog::{Dialog, DialogTable};
use cpm_edge::sip::scan::scan;
use cpm_edge::sip::transaction::{
    write_response, Config, Event, Received, ResponseSpec, TransactionId, TransactionTable,
};
use libfuzzer_sys::fuzz_target;

#[path = "common/input.rs"]
mod input;
use input::Input;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const MAX_TRANSACTIONS: usize = 8;
const MAX_DIALOGS: usize = 4;
const METHODS: [&str; 6] = ["INVITE", "ACK", "CANCEL", "MESSAGE", "BYE", "OPTIONS"];
const CODES: [u16; 8] = [100, 180, 183, 200, 202, 486, 487, 503];
const SENT_BY: [&str; 3] = ["192.0.2.1:5060", "192.0.2.1", "Host.Example:5070;rport"];

fn request(method: &str, branch: u8, sent_by: &str, cseq: u8, to_tag: bool) -> Vec<u8> {
    let tag = if to_tag { ";tag=tb" } else { "" };
    format!(
        "{method} sip:bob@192.0.2.2 SIP/2.0\r\nVia: SIP/2.0/UDP {sent_by};branch=z9hG4bK{branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@a>;tag=fa\r\nTo: <sip:bob@b>{tag}\r\n\
         Call-ID: c1\r\nCSeq: {cseq} {method}\r\nContact: <sip:alice@192.0.2.1>\r\n\
         Record-Route: <sip:p1;lr>\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn response(code: u16, method: &str, branch: u8, cseq: u8) -> Vec<u8> {
    format!(
        "SIP/2.0 {code} R\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK{branch}\r\n\
         From: <sip:alice@a>;tag=fa\r\nTo: <sip:bob@b>;tag=t{}\r\nCall-ID: c1\r\n\
         CSeq: {cseq} {method}\r\nContact: <sip:bob@192.0.2.2>\r\n\
         Record-Route: <sip:p1;lr>, <sip:p2>\r\nContent-Length: 0\r\n\r\n",
        code % 3
    )
    .into_bytes()
}

struct Sim {
    table: TransactionTable,
    dialogs: DialogTable,
    now: Instant,
    ids: Vec<TransactionId>,
    /// The table's recent output, to loop back.
    sent: Vec<Vec<u8>>,
    peer: SocketAddr,
}

impl Sim {
    fn remember(&mut self, id: TransactionId) {
        if self.ids.len() == 16 {
            self.ids.remove(0);
        }
        self.ids.push(id);
    }

    fn id(&self, b: u8) -> Option<TransactionId> {
        (!self.ids.is_empty()).then(|| self.ids[usize::from(b) % self.ids.len()])
    }

    fn deliver(&mut self, bytes: &[u8]) {
        let m = scan(bytes);
        let r = self.table.handle_datagram(self.now, self.peer, bytes, &m);
        match r {
            Ok(Received::Request(id)) | Ok(Received::Cancel { cancel: id, .. }) => {
                self.remember(id)
            }
            Ok(Received::Response { id, .. }) => {
                if let Some(req) = self.table.request(id).map(<[u8]>::to_vec) {
                    let rq = scan(&req);
                    let _ = self
                        .dialogs
                        .on_uac_response(&req, &rq, bytes, &m, b"<sip:a@h>");
                }
            }
            _ => {}
        }
        if m.defect.is_none() && m.is_request() {
            self.dialog_request(bytes, &m);
        }
    }

    /// The dialog side of a request: in-dialog checks, or a new UAS dialog.
    fn dialog_request(&mut self, bytes: &[u8], m: &cpm_edge::sip::scan::Message) {
        match self.dialogs.find_request(bytes, m) {
            Some(d) => {
                if let Some(dialog) = self.dialogs.get_mut(d) {
                    let _ = dialog.on_request(bytes, m);
                }
            }
            None => {
                if let Ok(d) = Dialog::uas(bytes, m, b"tb", b"<sip:bob@h>") {
                    let _ = self.dialogs.insert(d);
                }
            }
        }
    }

    /// A request written by some dialog, sent as a client transaction.
    fn dialog_write(&mut self, which: u8, method: &str, room: usize) {
        let Some(d) = self.dialogs.find(b"c1", b"tb", b"fa").or_else(|| {
            self.dialogs
                .find(b"c1", b"fa", format!("t{}", which % 3).as_bytes())
        }) else {
            return;
        };
        let via = format!("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKd{which}");
        let mut out = vec![0u8; room];
        let Some(dialog) = self.dialogs.get_mut(d) else {
            return;
        };
        let n = if method == "ACK" {
            dialog.write_ack(via.as_bytes(), &[], b"", &mut out)
        } else {
            dialog.write_request(method.as_bytes(), via.as_bytes(), &[], b"x", &mut out)
        };
        if let Ok(n) = n {
            assert!(n <= room);
            let m = scan(&out[..n]);
            assert_eq!(m.defect, None, "{}", String::from_utf8_lossy(&out[..n]));
            if let Ok(id) = self.table.send_request(self.now, &out[..n], self.peer) {
                self.remember(id);
            }
        }
    }

    /// The TU answers transaction `id`: a response built from its request,
    /// or (`matching` false) one of some other branch, which is refused.
    fn respond(&mut self, id: TransactionId, code: u16, matching: bool, branch: u8) {
        let Some(req) = self.table.request(id).map(<[u8]>::to_vec) else {
            return;
        };
        let resp = if matching {
            let m = scan(&req);
            let spec = ResponseSpec {
                to_tag: Some(b"tb"),
                ..ResponseSpec::new(code, "R")
            };
            let mut out = vec![0u8; req.len() + 512];
            let Some(n) = write_response(&req, &m, Some(self.peer), &spec, &mut out) else {
                return;
            };
            out.truncate(n);
            out
        } else {
            response(code, "INVITE", branch, 1)
        };
        let _ = self.table.send_response(self.now, id, &resp);
    }

    fn advance(&mut self, ms: u64) {
        self.now += Duration::from_millis(ms);
        self.table.handle_timeout(self.now);
        if let Some(at) = self.table.poll_timeout() {
            assert!(at > self.now, "a deadline left in the past");
        }
    }

    fn drain(&mut self) {
        let mut buf = Vec::new();
        while self.table.poll_transmit(&mut buf).is_some() {
            // Ours or an ACK/100 built from a message under the bound.
            assert!(buf.len() <= 2 * self.table.config().max_message + 256);
            if self.sent.len() == 32 {
                self.sent.remove(0);
            }
            self.sent.push(buf.clone());
        }
        while let Some(e) = self.table.poll_event() {
            if let Event::Terminated { id } = e {
                assert!(
                    self.table.state(id).is_none(),
                    "a terminated id refers to nothing"
                );
            }
        }
    }

    fn check(&self) {
        assert!(self.table.len() <= MAX_TRANSACTIONS);
        assert!(self.dialogs.len() <= MAX_DIALOGS);
        self.table.assert_invariants();
        self.dialogs.assert_invariants();
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let Some(flags) = input.byte() else { return };
    let config = Config {
        max_transactions: MAX_TRANSACTIONS,
        max_pending: 16,
        send_trying: flags & 1 == 0,
        ..Config::default()
    };
    let mut sim = Sim {
        table: TransactionTable::new(config),
        dialogs: DialogTable::new(MAX_DIALOGS, [1, 2]),
        now: Instant::now(),
        ids: Vec::new(),
        sent: Vec::new(),
        peer: "192.0.2.1:5060".parse().unwrap(),
    };
    // Leave the queues undrained now and then: their bounds are exercised.
    let drain_every = u32::from(flags >> 1);
    let mut step = 0u32;
    while let (Some(op), Some(a), Some(b)) = (input.byte(), input.byte(), input.byte()) {
        step += 1;
        'op: {
            match op % 12 {
                0 => {
                    let (Some(m), Some(s)) = (input.pick(&METHODS), input.pick(&SENT_BY)) else {
                        break 'op;
                    };
                    sim.deliver(&request(m, a % 6, s, b % 4, b & 0x80 != 0));
                }
                1 => {
                    let (Some(c), Some(m)) = (input.pick(&CODES), input.pick(&METHODS)) else {
                        break 'op;
                    };
                    sim.deliver(&response(c, m, a % 6, b % 4));
                }
                2 => {
                    let Some(m) = input.pick(&METHODS) else {
                        break 'op;
                    };
                    let req = request(m, a % 6, SENT_BY[0], b % 4, b & 0x80 != 0);
                    if let Ok(id) = sim.table.send_request(sim.now, &req, sim.peer) {
                        sim.remember(id);
                    }
                }
                3 => {
                    let (Some(id), Some(c)) = (sim.id(a), input.pick(&CODES)) else {
                        break 'op;
                    };
                    sim.respond(id, c, b & 1 == 0, b % 6);
                }
                4 => {
                    let Some(id) = sim.id(a) else { break 'op };
                    if let Ok(c) = sim.table.cancel(sim.now, id) {
                        sim.remember(c);
                    }
                }
                // Small steps, and jumps across whole timer lifetimes.
                5 => sim.advance(u64::from(a) * 10),
                6 => sim.advance(u64::from(a) * 1_000),
                7 => {
                    let Some(id) = sim.id(a) else { break 'op };
                    let _ = sim.table.handle_transport_error(sim.now, id);
                }
                8 => {
                    let raw = input.bytes(usize::from(a) * 4).to_vec();
                    sim.deliver(&raw);
                }
                9 => {
                    if sim.sent.is_empty() {
                        break 'op;
                    }
                    let looped = sim.sent[usize::from(a) % sim.sent.len()].clone();
                    sim.deliver(&looped);
                }
                10 => {
                    let Some(id) = sim.id(a) else { break 'op };
                    let _ = sim.table.resend_final(sim.now, id);
                }
                _ => {
                    let Some(m) = input.pick(&METHODS) else {
                        break 'op;
                    };
                    sim.dialog_write(a, m, 64 + usize::from(b) * 8);
                }
            }
        }
        if drain_every == 0 || step % drain_every != 0 {
            sim.drain();
        }
        sim.check();
    }
    // Every lifetime runs out on its own timers: the longest, Timer C, is
    // 3 min after the last provisional.
    sim.advance(400_000);
    sim.drain();
    sim.check();
    assert!(
        sim.table.is_empty(),
        "every transaction ends on its own timers"
    );
});
