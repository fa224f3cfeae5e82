//! The next deadline of every transaction, in an indexed binary min-heap:
//! one entry per slot at most, moved in place when a deadline changes, so
//! the heap never holds more entries than the table has transactions (a
//! heap with lazy deletion would grow with every timer reset).

use std::time::Instant;

const NOT_QUEUED: u32 = u32::MAX;

#[derive(Default)]
pub(super) struct TimerHeap {
    /// Slots, ordered as a binary min-heap on `deadline[slot]`.
    heap: Vec<u32>,
    /// Per slot: where it sits in `heap`, or `NOT_QUEUED`.
    position: Vec<u32>,
    /// Per slot: its deadline (meaningful while queued).
    deadline: Vec<Instant>,
}

impl TimerHeap {
    /// The earliest deadline and its slot.
    pub(super) fn peek(&self) -> Option<(Instant, u32)> {
        let slot = *self.heap.first()?;
        Some((self.at(0), slot))
    }

    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Set (or with `None` clear) the deadline of `slot`.
    pub(super) fn set(&mut self, slot: u32, deadline: Option<Instant>) {
        let s = slot as usize;
        if s >= self.position.len() {
            let Some(at) = deadline else { return };
            self.position.resize(s + 1, NOT_QUEUED);
            self.deadline.resize(s + 1, at);
        }
        match (self.position[s], deadline) {
            (NOT_QUEUED, None) => {}
            (NOT_QUEUED, Some(at)) => {
                self.deadline[s] = at;
                self.position[s] = self.heap.len() as u32;
                self.heap.push(slot);
                self.sift_up(self.heap.len() - 1);
            }
            (i, Some(at)) => {
                self.deadline[s] = at;
                self.sift_up(i as usize);
                self.sift_down(self.position[s] as usize);
            }
            (i, None) => self.remove_at(i as usize),
        }
    }

    fn remove_at(&mut self, i: usize) {
        let last = self.heap.len() - 1;
        self.swap(i, last);
        if let Some(gone) = self.heap.pop() {
            self.position[gone as usize] = NOT_QUEUED;
        }
        if i < self.heap.len() {
            self.sift_up(i);
            self.sift_down(self.position[self.heap[i] as usize] as usize);
        }
    }

    fn at(&self, i: usize) -> Instant {
        self.deadline[self.heap[i] as usize]
    }

    fn swap(&mut self, i: usize, j: usize) {
        self.heap.swap(i, j);
        self.position[self.heap[i] as usize] = i as u32;
        self.position[self.heap[j] as usize] = j as u32;
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.at(parent) <= self.at(i) {
                break;
            }
            self.swap(i, parent);
            i = parent;
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut least = i;
            if l < self.heap.len() && self.at(l) < self.at(least) {
                least = l;
            }
            if r < self.heap.len() && self.at(r) < self.at(least) {
                least = r;
            }
            if least == i {
                return;
            }
            self.swap(i, least);
            i = least;
        }
    }

    /// The heap property and the position index agree (tests).
    #[cfg(test)]
    fn check(&self) {
        for (i, slot) in self.heap.iter().enumerate() {
            assert_eq!(self.position[*slot as usize], i as u32);
            if i > 0 {
                assert!(self.at((i - 1) / 2) <= self.at(i));
            }
        }
        let queued = self.position.iter().filter(|p| **p != NOT_QUEUED).count();
        assert_eq!(queued, self.heap.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    proptest! {
        /// Against a plain map of slot -> deadline: the same minimum after
        /// every set or clear, and never more entries than slots.
        #[test]
        fn heap_agrees_with_a_plain_map(ops in prop::collection::vec((0u32..24, prop::option::of(0u64..50)), 0..300)) {
            let base = Instant::now();
            let mut heap = TimerHeap::default();
            let mut model: std::collections::BTreeMap<u32, Instant> = Default::default();
            for (slot, ms) in ops {
                let at = ms.map(|ms| base + Duration::from_millis(ms));
                heap.set(slot, at);
                match at {
                    Some(at) => { model.insert(slot, at); }
                    None => { model.remove(&slot); }
                }
                heap.check();
                prop_assert_eq!(heap.len(), model.len());
                let want = model.values().min().copied();
                prop_assert_eq!(heap.peek().map(|(at, _)| at), want);
                if let Some((at, slot)) = heap.peek() {
                    prop_assert_eq!(model.get(&slot), Some(&at));
                }
            }
        }
    }
}
