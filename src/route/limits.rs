//! Admission control on the hot path: per-source token buckets and the
//! overload detector. Worker-local (no sharing, no locks).
//!
//! - [`SourceLimiter`]: a token bucket per source, in a fixed table of
//!   `slots` entries, 4-way set-associative. A new source takes the least
//!   recently seen slot of its set, so an attacker with many addresses can
//!   only evict other entries, never grow memory. Slots are chosen by a
//!   keyed hash (random key per process) so collisions cannot be aimed.
//!   IPv6 sources are limited per /64: one subscriber owns a /64.
//! - [`Overload`]: the worker is overloaded when its receive batches come
//!   back full several times in a row (the kernel queue is not draining);
//!   then new INVITEs are shed with 503 while in-dialog requests and
//!   responses keep flowing.
//!
//! With SO_REUSEPORT the kernel spreads a source's flows over workers by
//! 4-tuple, so a limit applies per worker: one source port hits one worker.

use crate::sip::branch::fmix64;
use std::net::IpAddr;

#[derive(Clone, Copy, Default)]
struct Slot {
    /// Keyed hash of the source, 0 = empty.
    key: u64,
    /// Tokens in thousandths (integer arithmetic on the hot path).
    milli_tokens: u64,
    /// Last refill, in ms since the limiter started.
    last_ms: u64,
}

pub struct SourceLimiter {
    slots: Box<[Slot]>,
    set_mask: usize,
    seed: u64,
    /// Tokens added per ms, in thousandths: `rate/s * 1000 / 1000`.
    milli_per_ms: u64,
    burst_milli: u64,
}

const WAYS: usize = 4;

impl SourceLimiter {
    /// `rate` datagrams/s sustained, `burst` at once, `slots` entries (a
    /// power of two, at least 4). The hash key comes from the OS.
    pub fn new(rate: u32, burst: u32, slots: usize) -> SourceLimiter {
        assert!(
            slots.is_power_of_two() && slots >= WAYS,
            "validated slot count"
        );
        assert!(rate > 0 && burst > 0, "validated rate");
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
                    .min_by_key(|i| (set[*i].key != 0, set[*i].last_ms))
                    .unwrap_or(0);
                set[victim] = Slot {
                    key,
                    milli_tokens: self.burst_milli,
                    last_ms: now_ms,
                };
                &mut set[victim]
            }
        };
        let elapsed = now_ms.saturating_sub(slot.last_ms);
        slot.milli_tokens =
            (slot.milli_tokens + elapsed.saturating_mul(self.milli_per_ms)).min(self.burst_milli);
        slot.last_ms = now_ms;
        if slot.milli_tokens >= 1000 {
            slot.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }

    /// Bytes the table occupies (fixed at start).
    pub fn footprint(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Slot>()
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
        let mut l = SourceLimiter::new(100, 10, 64);
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
        let mut l = SourceLimiter::new(1, 1, 1024);
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
