//! The location service at 1 000 000 AoRs of one RCS-like binding each:
//! bytes per binding (counted by a wrapper around the system allocator:
//! what the code requests, what malloc hands out), lookups/s from two
//! reader threads while the writer writes, the sweep, and redb group
//! commits at batch sizes 1, 16 and 128.
//!
//! Run: `cargo bench --bench location`. The last line is a one-line
//! summary (`LOCATION n=1000000 bytes_per_binding=..`). Under
//! `cargo test --benches` (no `--bench` argument) it runs a quick
//! 20 000-AoR version with short timings.

use cpm_edge::dataplane::location_store::LocationStore;
use cpm_edge::route::location::{Binding, BindingParts, Location};
use cpm_edge::sip::feature_tag::CpmServices;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The system allocator, counting live bytes requested and live bytes
/// malloc reserved for them (`malloc_usable_size`).
struct Counting;

static REQUESTED: AtomicUsize = AtomicUsize::new(0);
static USABLE: AtomicUsize = AtomicUsize::new(0);

fn usable(p: *mut u8) -> usize {
    // SAFETY: `p` is a live block of the system allocator (malloc family).
    unsafe { libc::malloc_usable_size(p.cast()) }
}

// SAFETY: every call is forwarded to `System` unchanged; only counts added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            REQUESTED.fetch_add(l.size(), Ordering::Relaxed);
            USABLE.fetch_add(usable(p), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        REQUESTED.fetch_sub(l.size(), Ordering::Relaxed);
        USABLE.fetch_sub(usable(p), Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let before = usable(p);
        // SAFETY: forwarded as is.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            REQUESTED.fetch_add(new, Ordering::Relaxed);
            REQUESTED.fetch_sub(l.size(), Ordering::Relaxed);
            USABLE.fetch_add(usable(q), Ordering::Relaxed);
            USABLE.fetch_sub(before, Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static A: Counting = Counting;

fn live() -> (usize, usize) {
    (
        REQUESTED.load(Ordering::Relaxed),
        USABLE.load(Ordering::Relaxed),
    )
}

/// `key=value` fields of the final summary line, in order.
static SUMMARY: Mutex<Vec<(&'static str, String)>> = Mutex::new(Vec::new());

fn note(k: &'static str, v: String) {
    eprintln!("  {k} = {v}");
    SUMMARY.lock().unwrap().push((k, v));
}

/// splitmix64: a deterministic sampler, no dependency needed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const NOW: u64 = 1_750_000_000;
const EXPIRES: u64 = 3600;

/// User `i`'s AoR: `+1555xxxxxxx@ims.mnc001.mcc001.3gppnetwork.org`-like,
/// 28 bytes.
fn aor(i: usize) -> Vec<u8> {
    format!("+1555{i:07}@ims.example.net").into_bytes()
}

/// User `i`'s source: a public address and port per user.
fn flow(i: usize, gen: u16) -> SocketAddr {
    let ip = [198, 51, (i >> 8) as u8 % 100, i as u8];
    SocketAddr::from((
        ip,
        49152u16.wrapping_add((i >> 16) as u16).wrapping_add(gen),
    ))
}

/// User `i`'s binding: a 49-byte contact, a uuid instance, reg-id 1, the
/// session/msg/file-transfer CPM bits, a 32-byte Call-ID; expiries spread
/// over the hour as steady re-registration spreads them.
fn binding(i: usize, gen: u16) -> Binding {
    let contact = format!("sip:+1555{i:07}@198.51.100.7:49152;transport=udp");
    let instance = format!("<urn:uuid:f81d4fae-7dec-11d0-a765-{i:012x}>");
    let call_id = format!("{:016x}{:016x}", i as u64 * 0x9e37_79b9, u64::from(gen));
    debug_assert_eq!((contact.len(), instance.len(), call_id.len()), (49, 47, 32));
    Binding::new(&BindingParts {
        contact: contact.as_bytes(),
        flow: flow(i, gen),
        expires_at: NOW + EXPIRES + (i as u64 % EXPIRES),
        q: 1000,
        cpm: CpmServices(CpmServices::SESSION | CpmServices::MSG | CpmServices::FILETRANSFER),
        instance: Some(instance.as_bytes()),
        reg_id: 1,
        call_id: call_id.as_bytes(),
        cseq: u32::from(gen) + 1,
        params: None,
        conn: None,
    })
    .expect("bench binding in bounds")
}

/// Wall and this thread's CPU time since `start`: the box is shared, so
/// per-operation costs are given in CPU time (what the thread ran), rates
/// in wall time.
struct Timer {
    wall: Instant,
    cpu: f64,
}

fn thread_cpu() -> f64 {
    // SAFETY: clock_gettime only writes the struct it is given.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the clock id is always valid on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

impl Timer {
    fn start() -> Timer {
        Timer {
            wall: Instant::now(),
            cpu: thread_cpu(),
        }
    }
    fn wall(&self) -> f64 {
        self.wall.elapsed().as_secs_f64()
    }
    fn cpu(&self) -> f64 {
        thread_cpu() - self.cpu
    }
}

fn mib(b: usize) -> f64 {
    b as f64 / 1048576.0
}

/// Build `n` AoRs with `put`, one at a time, and count the bytes.
fn build(n: usize) -> (Arc<Location>, cpm_edge::route::location::LocationWriter) {
    let (r0, u0) = live();
    let loc = Arc::new(Location::new(n + n / 4));
    let mut w = loc.writer().expect("first writer");
    // Built ahead, so the puts are timed alone (their bytes still counted).
    let items: Vec<(Vec<u8>, Binding)> = (0..n).map(|i| (aor(i), binding(i, 0))).collect();
    let t = Timer::start();
    for (k, b) in items {
        w.put(&k, vec![b]).expect("room");
    }
    let (dt, cpu) = (t.wall(), t.cpu());
    let (r1, u1) = live();
    let fp = loc.footprint();
    assert_eq!((loc.len(), loc.bindings(), fp.bindings), (n, n, n));
    let (req, use_) = (r1 - r0, u1 - u0);
    eprintln!("== {n} AoRs x 1 binding, built by put in {dt:.2} s ==");
    eprintln!(
        "allocated: {:.1} MiB requested, {:.1} MiB reserved by malloc",
        mib(req),
        mib(use_)
    );
    note("bytes_per_binding", format!("{:.1}", req as f64 / n as f64));
    note(
        "malloc_bytes_per_binding",
        format!("{:.1}", use_ as f64 / n as f64),
    );
    let per = |b: usize| format!("{:.1}", b as f64 / n as f64);
    note("table_slots_keys", per(fp.table_bytes));
    note("lists", per(fp.list_bytes));
    note("texts", per(fp.text_bytes));
    note("flow_index", per(fp.flow_bytes));
    note("expiry_index", per(req.saturating_sub(fp.total())));
    note("expiry_entries", format!("{}", w.expiry_entries()));
    note("puts_per_s_build", format!("{:.0}", n as f64 / dt));
    note("put_cpu_us_build", format!("{:.2}", cpu * 1e6 / n as f64));
    (loc, w)
}

/// The same table again, by `put_many` in batches of 10 000 (recovery).
fn build_batched(n: usize) {
    let loc = Arc::new(Location::new(n + n / 4));
    let mut w = loc.writer().expect("first writer");
    let mut cpu = 0.0;
    let mut i = 0;
    while i < n {
        let end = (i + 10_000).min(n);
        let mut batch: Vec<(Vec<u8>, Vec<Binding>)> =
            (i..end).map(|j| (aor(j), vec![binding(j, 0)])).collect();
        let t = Timer::start();
        w.put_many(batch.iter_mut().map(|(k, l)| (&k[..], std::mem::take(l))))
            .expect("room");
        cpu += t.cpu();
        i = end;
    }
    note("put_many_cpu_us", format!("{:.2}", cpu * 1e6 / n as f64));
}

/// Every AoR registered from one address (all users behind one P-CSCF or
/// SBC): a put must cost what it costs with a flow per user, not grow with
/// the AoRs sharing the flow.
fn build_behind_one_flow(n: usize) {
    let loc = Arc::new(Location::new(n + n / 4));
    let mut w = loc.writer().expect("first writer");
    let sbc: SocketAddr = SocketAddr::from(([198, 51, 100, 7], 5060));
    let items: Vec<(Vec<u8>, Binding)> = (0..n)
        .map(|i| {
            let own = binding(i, 0);
            let mut p = own.parts();
            p.flow = sbc;
            (aor(i), Binding::new(&p).expect("binding"))
        })
        .collect();
    let t = Timer::start();
    for (k, b) in items {
        w.put(&k, vec![b]).expect("room");
    }
    note(
        "put_cpu_us_one_flow",
        format!("{:.2}", t.cpu() * 1e6 / n as f64),
    );
    assert!(loc.identity_of_flow((sbc, None), |k| k.len()).is_some());
}

/// Two readers (`with_bindings` on random AoRs, 1 in 8 a miss) while the
/// writer re-registers random AoRs from a new port.
fn concurrent(
    loc: &Arc<Location>,
    w: &mut cpm_edge::route::location::LocationWriter,
    n: usize,
    secs: f64,
) {
    const RING: usize = 4096;
    let mut rng = Rng(0x5eed);
    let keys: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..RING)
            .map(|k| {
                if k % 8 == 7 {
                    aor(n + rng.below(n))
                } else {
                    aor(rng.below(n))
                }
            })
            .collect(),
    );
    // One reader, writer idle: the cost of a lookup alone.
    let t = Timer::start();
    let mut hits = 0u64;
    let rounds = if n > 100_000 { 200 } else { 20 };
    for _ in 0..rounds {
        for k in keys.iter() {
            hits += loc.with_bindings(k, |l| l[0].expires_at()).is_some() as u64;
        }
    }
    black_box(hits);
    let ns = t.cpu() * 1e9 / (rounds * RING) as f64;
    note("lookup_cpu_ns_writer_idle", format!("{ns:.0}"));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (loc, stop, keys) = (Arc::clone(loc), Arc::clone(&stop), Arc::clone(&keys));
            std::thread::spawn(move || {
                let t = Timer::start();
                let (mut n, mut hits) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    for k in keys.iter() {
                        hits += loc.with_bindings(k, |l| l[0].expires_at()).is_some() as u64;
                    }
                    n += RING as u64;
                }
                black_box(hits);
                (n, t.cpu())
            })
        })
        .collect();
    let t = Timer::start();
    let mut puts = 0u64;
    let mut gen = 1u16;
    while t.wall() < secs {
        for _ in 0..256 {
            let i = rng.below(n);
            w.put(&aor(i), vec![binding(i, gen)]).expect("room");
            puts += 1;
        }
        gen = gen.wrapping_add(1);
    }
    stop.store(true, Ordering::Relaxed);
    let (dt, wcpu) = (t.wall(), t.cpu());
    let ends: Vec<(u64, f64)> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    let reads: u64 = ends.iter().map(|e| e.0).sum();
    let rcpu: f64 = ends.iter().map(|e| e.1).sum();
    eprintln!("== 2 readers + 1 writer for {dt:.2} s ==");
    note(
        "lookups_per_s_2_readers",
        format!("{:.0}", reads as f64 / dt),
    );
    note(
        "lookup_cpu_ns_meanwhile",
        format!("{:.0}", rcpu * 1e9 / reads as f64),
    );
    note(
        "writer_puts_per_s_meanwhile",
        format!("{:.0}", puts as f64 / dt),
    );
    note(
        "put_cpu_us_meanwhile",
        format!("{:.2}", wcpu * 1e6 / puts as f64),
    );
    // The flow index, one thread, no writer.
    let srcs: Vec<SocketAddr> = (0..RING).map(|_| flow(rng.below(n), 0)).collect();
    let t = Timer::start();
    let mut found = 0u64;
    let rounds = 50;
    for _ in 0..rounds {
        for s in &srcs {
            found += loc.identity_of_flow((*s, None), |k| k.len()).is_some() as u64;
        }
    }
    black_box(found);
    let ns = t.cpu() * 1e9 / (rounds * RING) as f64;
    note("identity_of_flow_cpu_ns", format!("{ns:.0}"));
}

/// Sweep the first ten minutes of expiries, 10 000 bindings a call.
fn sweep(w: &mut cpm_edge::route::location::LocationWriter, n: usize) {
    let t = Timer::start();
    let (mut removed, mut calls) = (0usize, 0);
    loop {
        let xs = w.sweep(NOW + EXPIRES + 600, 10_000);
        let k: usize = xs.iter().map(|x| x.removed.len()).sum();
        calls += 1;
        if k == 0 {
            break;
        }
        removed += k;
    }
    let cpu = t.cpu();
    eprintln!("== sweep: {removed} of {n} bindings lapsed, {calls} calls of at most 10 000 ==");
    note(
        "sweep_cpu_us_per_binding",
        format!("{:.2}", cpu * 1e6 / removed.max(1) as f64),
    );
}

/// Group commits into a fresh file for `secs` at each batch size.
fn commits(secs: f64) {
    let path = std::env::temp_dir().join(format!(
        "cpm-edge-location-bench-{}.redb",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    let mut store = LocationStore::open(&path).expect("store");
    eprintln!("== redb group commits into {} ==", path.display());
    let mut next = 0usize;
    for batch in [1usize, 16, 128] {
        let t0 = Instant::now();
        let (mut commits, mut bindings) = (0u64, 0u64);
        while t0.elapsed().as_secs_f64() < secs {
            let changes: Vec<(Vec<u8>, Vec<Binding>)> = (next..next + batch)
                .map(|i| (aor(i), vec![binding(i, 0)]))
                .collect();
            next += batch;
            store.commit(&changes).expect("commit");
            commits += 1;
            bindings += batch as u64;
        }
        let dt = t0.elapsed().as_secs_f64();
        eprintln!("batch {batch:>3}: {commits} commits in {dt:.2} s");
        let (c, b) = (commits as f64 / dt, bindings as f64 / dt);
        match batch {
            1 => {
                note("commits_per_s_b1", format!("{c:.0}"));
                note("bindings_per_s_b1", format!("{b:.0}"));
            }
            16 => {
                note("commits_per_s_b16", format!("{c:.0}"));
                note("bindings_per_s_b16", format!("{b:.0}"));
            }
            _ => {
                note("commits_per_s_b128", format!("{c:.0}"));
                note("bindings_per_s_b128", format!("{b:.0}"));
            }
        }
    }
    drop(store);
    let store = LocationStore::open(&path).expect("reopen");
    let t0 = Instant::now();
    let got = store.load(NOW).expect("load");
    assert_eq!(got.len(), next);
    note("load_records", format!("{next}"));
    note(
        "load_ms",
        format!("{:.1}", t0.elapsed().as_secs_f64() * 1e3),
    );
    drop(store);
    let _ = std::fs::remove_file(&path);
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = if quick { 20_000 } else { 1_000_000 };
    let secs = if quick { 0.2 } else { 2.0 };
    let (loc, mut w) = build(n);
    concurrent(&loc, &mut w, n, secs);
    sweep(&mut w, n);
    drop(w);
    drop(loc);
    build_batched(n);
    build_behind_one_flow(n);
    commits(secs);
    let fields: Vec<String> = SUMMARY
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("LOCATION n={n} {}", fields.join(" "));
}
