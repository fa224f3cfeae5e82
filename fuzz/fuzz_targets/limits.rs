//! Arbitrary operation sequences through the admission state machines on a
//! simulated clock: never a panic, and what they let through never exceeds
//! the start plus the rate times the elapsed time (per source for the
//! limiter, per worker for the answer budget).
#![no_main]

use cpm_edge::dataplane::limits::{ReplyBudget, SourceLimiter};
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;

fuzz_target!(|data: &[u8]| {
    let Some((&[r, b, nb, rr, rb], ops)) = data.split_first_chunk::<5>() else {
        return;
    };
    let (rate, burst, new_burst) = (u64::from(r) + 1, u64::from(b) + 1, u64::from(nb) + 1);
    let (reply_rate, reply_burst) = (u64::from(rr) + 1, u64::from(rb) + 1);
    // Four sources never leave a 4-way table (no eviction): exact bounds.
    let mut kept = SourceLimiter::new(rate as u32, burst as u32, new_burst as u32, 64);
    // Many sources in one set: eviction on nearly every call (no panic).
    let mut churn = SourceLimiter::new(rate as u32, burst as u32, new_burst as u32, 4);
    let mut budget = ReplyBudget::new(reply_rate as u32, reply_burst as u32);
    let mut first_ms = [None::<u64>; 4];
    let mut admitted = [0u64; 4];
    let mut answers = 0u64;
    let mut now = 0u64;
    for op in ops.chunks_exact(3) {
        let (dt, src, kind) = (u64::from(op[0]), op[1], op[2]);
        now += if kind & 0x80 != 0 { dt * 97 } else { dt };
        match kind & 3 {
            0 => {
                let i = usize::from(src & 3);
                let t0 = *first_ms[i].get_or_insert(now);
                admitted[i] += u64::from(kept.admit(IpAddr::from([10, 0, 0, src & 3]), now));
                let bound = new_burst.min(burst) * 1000 + rate * (now - t0);
                assert!(admitted[i] * 1000 <= bound, "source {i}: {admitted:?}");
            }
            1 => {
                answers += u64::from(budget.take(now));
                assert!(answers * 1000 <= reply_burst * 1000 + reply_rate * now);
            }
            2 => {
                let ip = if kind & 4 != 0 {
                    IpAddr::from([src; 16])
                } else {
                    IpAddr::from([192, 0, 2, src])
                };
                churn.admit(ip, now);
            }
            _ => {
                // A refund gives back only what `take` spent: still bounded.
                if budget.take(now) {
                    budget.refund();
                }
            }
        }
    }
});
