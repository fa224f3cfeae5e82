//! The bounded queues between the machines and the caller: datagrams to
//! send and events for the TU.
//!
//! A queued datagram owns a buffer taken from a pool, and `poll_transmit`
//! swaps it with the caller's, so after warm-up sending copies each
//! datagram once (into the pool buffer) and allocates nothing.

use super::{Event, Stats, TransactionId, Transmit};
use std::collections::VecDeque;
use std::net::SocketAddr;

struct Queued {
    transmit: Transmit,
    bytes: Vec<u8>,
}

pub(super) struct Outbox {
    queue: VecDeque<Queued>,
    spare: Vec<Vec<u8>>,
    events: VecDeque<Event>,
    max: usize,
}

impl Outbox {
    pub(super) fn new(max: usize) -> Outbox {
        Outbox {
            queue: VecDeque::new(),
            spare: Vec::new(),
            events: VecDeque::new(),
            max,
        }
    }

    /// Queue `bytes` for `destination`; dropped and counted when the caller
    /// has let `max` pile up (UDP may lose it anyway: the timers recover).
    pub(super) fn send(
        &mut self,
        stats: &mut Stats,
        transaction: Option<TransactionId>,
        destination: SocketAddr,
        bytes: &[u8],
    ) {
        if self.queue.len() >= self.max {
            stats.dropped_transmits += 1;
            return;
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(bytes);
        self.queue.push_back(Queued {
            transmit: Transmit {
                destination,
                transaction,
            },
            bytes: buf,
        });
    }

    pub(super) fn event(&mut self, stats: &mut Stats, e: Event) {
        if self.events.len() >= self.max {
            stats.dropped_events += 1;
            return;
        }
        self.events.push_back(e);
    }

    /// The next datagram, its bytes swapped into `buf`.
    pub(super) fn poll_transmit(&mut self, buf: &mut Vec<u8>) -> Option<Transmit> {
        let mut q = self.queue.pop_front()?;
        std::mem::swap(buf, &mut q.bytes);
        if self.spare.len() < self.max {
            self.spare.push(q.bytes);
        }
        Some(q.transmit)
    }

    pub(super) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub(super) fn pending(&self) -> (usize, usize) {
        (self.queue.len(), self.events.len())
    }
}
