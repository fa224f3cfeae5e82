//! Admission control on the hot path: per-source token buckets, the budget
//! of refusal answers and the overload detector. Worker-local (no sharing,
//! no locks), pure state machines over an injected clock (`now_ms`, the
//! worker's per-batch clock), so they are tested on a simulated one.
//!
//! - [`SourceLimiter`]: a token bucket per source, in a fixed table of
//!   `slots` entries, 4-way set-associative. A new source takes the least
//!   recently seen slot of its set, so an attacker with many addresses can
//!   only evict other entries, never grow memory. Slots are chosen by a
//!   keyed hash (random key per process) so collisions cannot be aimed.
//!   IPv6 sources are limited per /64: one subscriber owns a /64. A new (or
//!   evicted and returning) source starts with a small burst only, so
//!   rotating source addresses does not buy a full burst per address.
//! - [`ReplyBudget`]: one token bucket per worker on the 503s that refuse
//!   over-rate and shed requests. Their sources may be spoofed: beyond the
//!   budget a refusal is dropped silently (and counted), so a flood is never
//!   reflected one answer per packet.
//! - [`Overload`]: the worker is overloaded when its kernel receive queue
//!   passes a threshold; then new INVITEs are shed while in-dialog requests
//!   and responses keep flowing.
//!
//! With SO_REUSEPORT the kernel spreads a source's flows over workers by
//! 4-tuple, so a limit applies per worker: one source port hits one worker.

use crate::sip::hash::fmix64;
use std::net::IpAddr;

/// Per-source token buckets (`[limits]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSettings {
    pub rate: u32,
    pub burst: u32,
    /// A new or evicted source's start (at most `burst`).
    pub new_burst: u32,
    pub slots: usize,
    pub reply: bool,
}

/// The per-worker budget of refusal answers (rate-limit and shed 503s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplyLimit {
    pub rate: u32,
    pub burst: u32,
    /// Shed INVITEs are answered (within the budget); false: dropped.
    pub shed: bool,
}

/// Is `ip` inside `net/len`?
pub fn cidr_contains(net: IpAddr, len: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// A token bucket in thousandths of a token (integer arithmetic on the hot
/// path), refilled from the caller's clock.
#[derive(Clone, Copy, Default)]
struct Bucket {
    milli_tokens: u64,
    /// Last refill, in ms of the caller's clock.
    last_ms: u64,
}

impl Bucket {
    /// Refill for the time since the last call (`milli_per_ms` = tokens/s),
    /// capped at `cap_milli`, then take one token if there is one.
    #[inline]
    fn take(&mut self, now_ms: u64, milli_per_ms: u64, cap_milli: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.milli_tokens = self
            .milli_tokens
            .saturating_add(elapsed.saturating_mul(milli_per_ms))
            .min(cap_milli);
        // A clock that steps back must not refill twice.
        self.last_ms = self.last_ms.max(now_ms);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Slot {
    /// Keyed hash of the source, 0 = empty.
    key: u64,
    bucket: Bucket,
}

pub struct SourceLimiter {
    slots: Box<[Slot]>,
    set_mask: usize,
    seed: u64,
    /// Tokens added per ms, in thousandths: `rate/s * 1000 / 1000`.
    milli_per_ms: u64,
    burst_milli: u64,
    /// What a slot taken by a new source starts with (at most the burst).
    new_burst_milli: u64,
}

const WAYS: usize = 4;

impl SourceLimiter {
    /// `rate` datagrams/s sustained, `burst` at once once a source has
    /// accrued it, `new_burst` for a source the table does not hold (capped
    /// at `burst`), `slots` entries (a power of two, at least 4). The hash
    /// key comes from the OS.
    pub fn new(rate: u32, burst: u32, new_burst: u32, slots: usize) -> SourceLimiter {
        assert!(
            slots.is_power_of_two() && slots >= WAYS,
            "validated slot count"
        );
        assert!(rate > 0 && burst > 0 && new_burst > 0, "validated rate");
        let seed = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x5eed);
            h.finish()
        };
        SourceLimiter {
            slots: vec![Slot::default(); slots].into_boxed_slice(),
            set_mask: slots / WAYS - 1,
            seed,
            milli_per_ms: u64::from(rate),
            burst_milli: u64::from(burst) * 1000,
            new_burst_milli: u64::from(new_burst.min(burst)) * 1000,
        }
    }

    fn key(&self, ip: IpAddr) -> u64 {
        let bits = match ip {
            IpAddr::V4(v4) => u64::from(u32::from(v4)),
            // Per /64: the upper half of the address.
            IpAddr::V6(v6) => (u128::from(v6) >> 64) as u64 ^ 0x6666_0000_0000_0000,
        };
        fmix64(bits ^ self.seed) | 1
    }

    /// May one more datagram from `ip` pass at time `now_ms`?
    #[inline]
    pub fn admit(&mut self, ip: IpAddr, now_ms: u64) -> bool {
        let key = self.key(ip);
        let base = ((key >> 8) as usize & self.set_mask) * WAYS;
        let set = &mut self.slots[base..base + WAYS];
        let slot = match set.iter().position(|s| s.key == key) {
            Some(i) => &mut set[i],
            None => {
                // Replace the least recently seen (empty slots have last_ms 0).
                let victim = (0..WAYS)
                    .min_by_key(|i| (set[*i].key != 0, set[*i].bucket.last_ms))
                    .unwrap_or(0);
                // The small start is what a fresh (maybe spoofed) address
                // gets; it grows to the full burst at the rate.
                set[victim] = Slot {
                    key,
                    bucket: Bucket {
                        milli_tokens: self.new_burst_milli,
                        last_ms: now_ms,
                    },
                };
                &mut set[victim]
            }
        };
        slot.bucket
            .take(now_ms, self.milli_per_ms, self.burst_milli)
    }

    /// Bytes the table occupies (fixed at start).
    pub fn footprint(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Slot>()
    }
}

/// The worker's budget of refusal answers: `rate` per second, `burst` at
/// once, starting full at time 0 of the worker's clock.
pub struct ReplyBudget {
    bucket: Bucket,
    milli_per_ms: u64,
    cap_milli: u64,
}

impl ReplyBudget {
    pub fn new(rate: u32, burst: u32) -> ReplyBudget {
        let cap_milli = u64::from(burst) * 1000;
        ReplyBudget {
            bucket: Bucket {
                milli_tokens: cap_milli,
                last_ms: 0,
            },
            milli_per_ms: u64::from(rate),
            cap_milli,
        }
    }

    /// May one more refusal be answered at `now_ms`? (Spends the token.)
    #[inline]
    pub fn take(&mut self, now_ms: u64) -> bool {
        self.bucket.take(now_ms, self.milli_per_ms, self.cap_milli)
    }

    /// Give back a token taken for a refusal that turned out unanswerable
    /// (no Via, an ACK, no room): the budget counts answers actually sent.
    pub fn refund(&mut self) {
        self.bucket.milli_tokens = (self.bucket.milli_tokens + 1000).min(self.cap_milli);
    }
}

/// The worker is overloaded when its socket's receive queue holds more than
/// `threshold_pct` of the socket buffer: the kernel is about to drop
/// datagrams at random, so new INVITEs are refused first. A closed-loop
/// peer that merely keeps the queue non-empty is not overload.
#[derive(Default)]
pub struct Overload {
    threshold_pct: u32,
    overloaded: bool,
}

impl Overload {
    /// `threshold_pct` 0 disables shedding.
    pub fn new(threshold_pct: u32) -> Overload {
        Overload {
            threshold_pct,
            overloaded: false,
        }
    }
    pub fn enabled(&self) -> bool {
        self.threshold_pct > 0
    }
    /// A sample of the socket: bytes queued and the buffer size (both as the
    /// kernel accounts them, SO_MEMINFO).
    pub fn sample(&mut self, queued: u64, rcvbuf: u64) {
        self.overloaded = self.threshold_pct > 0
            && rcvbuf > 0
            && queued * 100 >= rcvbuf * u64::from(self.threshold_pct);
    }
    pub fn overloaded(&self) -> bool {
        self.overloaded
    }
}

/// (bytes queued for reading, receive buffer size) of a socket, from
/// SO_MEMINFO; `None` where the kernel does not offer it.
pub fn socket_fill(fd: std::os::fd::RawFd) -> Option<(u64, u64)> {
    let mut info = [0u32; 9];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `info` is a writable buffer of `len` bytes; the kernel writes at
    // most `len` bytes and updates `len`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (r == 0 && len as usize >= 2 * std::mem::size_of::<u32>())
        .then(|| (u64::from(info[0]), u64::from(info[1])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_the_rate_and_caps_at_the_burst() {
        let mut l = SourceLimiter::new(100, 10, 10, 64);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!((0..20).filter(|_| l.admit(ip, 1000)).count(), 10, "burst");
        assert!(!l.admit(ip, 1000));
        assert_eq!(
            (0..20).filter(|_| l.admit(ip, 1050)).count(),
            5,
            "100/s for 50 ms"
        );
        assert_eq!(
            (0..50).filter(|_| l.admit(ip, 60_000)).count(),
            10,
            "capped at the burst"
        );
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(l.admit(other, 60_000), "another source has its own bucket");
    }

    #[test]
    fn many_sources_cannot_grow_the_table_and_v6_is_per_slash_64() {
        let mut l = SourceLimiter::new(1, 1, 1, 1024);
        let before = l.footprint();
        for i in 0..100_000u32 {
            l.admit(IpAddr::from(i.to_be_bytes()), 1);
        }
        assert_eq!(l.footprint(), before);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(l.admit(a, 5));
        assert!(!l.admit(b, 5), "same /64 shares the bucket");
        assert!(l.admit(c, 5));
    }

    #[test]
    fn a_new_source_starts_with_the_small_burst_and_grows_to_the_full_one() {
        let mut l = SourceLimiter::new(100, 50, 4, 64);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!((0..20).filter(|_| l.admit(ip, 1000)).count(), 4, "new");
        assert_eq!(
            (0..100).filter(|_| l.admit(ip, 3000)).count(),
            50,
            "a known source accrues the configured burst"
        );
        let capped = SourceLimiter::new(100, 2, 4, 64).new_burst_milli;
        assert_eq!(capped, 2000, "the new burst never exceeds the burst");
    }

    #[test]
    fn an_evicted_source_comes_back_with_the_small_burst() {
        // One set of 4 ways: the fifth source evicts the least recently seen.
        let mut l = SourceLimiter::new(100, 10, 2, 4);
        let ip = |i: u8| IpAddr::from([192, 0, 2, i]);
        assert!(l.admit(ip(1), 0));
        assert!(l.admit(ip(1), 10_000), "refilled to the full burst");
        for i in 2..=5 {
            assert!(l.admit(ip(i), 10_001));
        }
        let back = (0..20).filter(|_| l.admit(ip(1), 10_002)).count();
        assert_eq!(back, 2, "evicted: its accrued burst is gone");
    }

    #[test]
    fn rotating_sources_get_only_the_small_burst_each() {
        let mut l = SourceLimiter::new(10, 100, 3, 1024);
        let mut passed = 0;
        for i in 0..10_000u32 {
            let ip = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            passed += (0..20).filter(|_| l.admit(ip, 5_000)).count();
        }
        assert_eq!(passed, 10_000 * 3);
    }

    #[test]
    fn reply_budget_bounds_answers_to_burst_plus_rate_times_time() {
        let mut b = ReplyBudget::new(100, 5);
        assert_eq!((0..100).filter(|_| b.take(0)).count(), 5, "the burst");
        // A flood of 10 refusals per ms for one second.
        let later: usize = (1..=1000u64)
            .map(|t| (0..10).filter(|_| b.take(t)).count())
            .sum();
        assert_eq!(later, 100, "100/s for 1 s");
        // An hour of silence refills only up to the burst.
        assert_eq!((0..100).filter(|_| b.take(3_601_000)).count(), 5);
    }

    #[test]
    fn reply_budget_refund_and_a_clock_stepping_back() {
        let mut b = ReplyBudget::new(1000, 2);
        assert!(b.take(10) && b.take(10) && !b.take(10));
        b.refund();
        assert!(b.take(10), "a refunded token is spent again");
        b.refund();
        b.refund();
        b.refund();
        assert_eq!((0..9).filter(|_| b.take(10)).count(), 2, "capped");
        assert!(!b.take(5), "stepping back refills nothing");
        assert_eq!((0..9).filter(|_| b.take(10)).count(), 0, "nor twice");
        assert!(b.take(11), "1000/s: one per ms");
    }

    #[test]
    fn overload_when_the_receive_queue_passes_the_threshold() {
        let mut o = Overload::new(50);
        o.sample(100_000, 1_000_000);
        assert!(!o.overloaded());
        o.sample(500_000, 1_000_000);
        assert!(o.overloaded());
        o.sample(10, 1_000_000);
        assert!(!o.overloaded());
        let mut off = Overload::new(0);
        off.sample(1_000_000, 1_000_000);
        assert!(!off.overloaded());
    }

    #[test]
    fn socket_fill_reads_the_kernel_queue() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        use std::os::fd::AsRawFd;
        let (q0, buf) = socket_fill(rx.as_raw_fd()).expect("SO_MEMINFO");
        assert_eq!(q0, 0);
        assert!(buf > 0);
        for _ in 0..10 {
            tx.send_to(&[0u8; 1000], rx.local_addr().unwrap()).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (q1, _) = socket_fill(rx.as_raw_fd()).unwrap();
        assert!(q1 >= 10_000, "queued {q1}");
    }
}
