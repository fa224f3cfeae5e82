//! The group table at 1 000 000 groups over 4 shards: memory per group,
//! reader cost (plain, through the `Uri` path, through an `ArcSwap`
//! snapshot), and the writer cost that justifies the partitioned
//! copy-on-write layout against one map cloned whole per update.
//!
//! Run: `cargo bench --bench groups`. The last line is a one-line summary
//! (`GROUPS n=1000000 bytes_per_group=..`). Under `cargo test --benches`
//! (no `--bench` argument) it runs a quick 20 000-group smoke version.

use arc_swap::ArcSwap;
use cpm_edge::route::groups::{GroupTable, StableBuild};
use cpm_edge::sip::hash::hash_bytes;
use cpm_edge::sip::uri::{self, Uri};
use cpm_edge::sip::Span;
use criterion::{criterion_group, Criterion};
use std::collections::HashMap;
use std::hint::black_box;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

#[global_allocator]
static A: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SHARDS: u16 = 4;
/// Ring of pre-built keys the readers cycle through (a power of two).
const RING: usize = 4096;
/// Groups moved by one batch update.
const BATCH: usize = 1000;
/// The hot Request-URI of the `lookup` path.
const HOT_URI: &[u8] = b"sip:grp123@groups.example.net";

/// The naive alternative: one map, cloned whole for every published update.
type Single = HashMap<Box<[u8]>, u16>;
/// The same single map with the product's hasher (reader-cost comparison
/// without the SipHash-vs-StableHash difference).
type SingleStable = HashMap<Box<[u8]>, u16, StableBuild>;

struct Fixture {
    n: usize,
    quick: bool,
    cow: ArcSwap<GroupTable>,
    single: ArcSwap<Single>,
    single_stable: SingleStable,
    hit: Vec<Box<[u8]>>,
    miss: Vec<Box<[u8]>>,
    uris: Vec<(Vec<u8>, Uri)>,
    hot: (Vec<u8>, Uri),
    /// Existing keys the update measurements move around.
    upd: Vec<Box<[u8]>>,
}

static FIX: OnceLock<Fixture> = OnceLock::new();
/// `key=value` fields of the final summary line, in order.
static SUMMARY: Mutex<Vec<(&'static str, String)>> = Mutex::new(Vec::new());

fn note(k: &'static str, v: String) {
    eprintln!("  {k} = {v}");
    SUMMARY.lock().unwrap().push((k, v));
}

/// splitmix64: a deterministic key sampler, no dependency needed.
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

/// Group `i`'s canonical identity, written into a reused buffer.
fn key(buf: &mut Vec<u8>, i: usize) -> &[u8] {
    buf.clear();
    write!(buf, "grp{i}@groups.example.net").unwrap();
    buf
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

/// Minor page faults so far (fresh pages the allocator had to touch).
fn minflt() -> i64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_minflt
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Build a 0..n table with `insert`, reporting RSS growth and build time.
fn build<T>(
    n: usize,
    what: &str,
    make: impl FnOnce() -> T,
    mut insert: impl FnMut(&mut T, &[u8], u16),
) -> T {
    let mut kb = Vec::with_capacity(64);
    // Before the (pre-sized) allocation: it counts towards the table.
    let r0 = rss_bytes();
    let t0 = Instant::now();
    let mut t = make();
    for i in 0..n {
        insert(&mut t, key(&mut kb, i), (i % SHARDS as usize) as u16);
    }
    let dt = t0.elapsed();
    let r1 = rss_bytes();
    let per = (r1.saturating_sub(r0)) as f64 / n as f64;
    eprintln!(
        "{what}: {n} groups built in {:.3} s, RSS {:.1} MiB -> {:.1} MiB, {per:.1} bytes/group",
        dt.as_secs_f64(),
        r0 as f64 / 1048576.0,
        r1 as f64 / 1048576.0
    );
    SUMMARY.lock().unwrap().push(match what {
        "cow" => ("bytes_per_group", format!("{per:.1}")),
        "single_sip" => ("single_bytes_per_group", format!("{per:.1}")),
        _ => ("single_stable_bytes_per_group", format!("{per:.1}")),
    });
    if what == "cow" {
        SUMMARY
            .lock()
            .unwrap()
            .push(("build_s", format!("{:.3}", dt.as_secs_f64())));
    }
    t
}

fn fixture() -> &'static Fixture {
    FIX.get_or_init(|| {
        let quick = !std::env::args().any(|a| a == "--bench");
        let n = if quick { 20_000 } else { 1_000_000 };
        eprintln!("== group table: {n} groups over {SHARDS} shards ==");
        let cow = build(
            n,
            "cow",
            || GroupTable::with_capacity(n),
            |t, k, s| {
                t.insert(k, s);
            },
        );
        let single = build(
            n,
            "single_sip",
            || Single::with_capacity(n),
            |t, k, s| {
                t.insert(k.into(), s);
            },
        );
        let single_stable = build(
            n,
            "single_stable",
            || SingleStable::with_capacity_and_hasher(n, StableBuild),
            |t, k, s| {
                t.insert(k.into(), s);
            },
        );
        let mut rng = Rng(0x5eed);
        let mut kb = Vec::new();
        let hit: Vec<Box<[u8]>> = (0..RING)
            .map(|_| key(&mut kb, rng.below(n)).into())
            .collect();
        let miss: Vec<Box<[u8]>> = (0..RING)
            .map(|_| key(&mut kb, n + rng.below(n)).into())
            .collect();
        let parse = |buf: Vec<u8>| {
            let u = uri::parse(&buf, Span::new(0, buf.len())).expect("Request-URI");
            (buf, u)
        };
        let uris: Vec<(Vec<u8>, Uri)> = (0..RING)
            .map(|_| parse(format!("sip:grp{}@groups.example.net", rng.below(n)).into_bytes()))
            .collect();
        let hot = parse(HOT_URI.to_vec());
        let upd: Vec<Box<[u8]>> = (0..16 * BATCH)
            .map(|_| key(&mut kb, rng.below(n)).into())
            .collect();
        for k in hit.iter().chain(&upd) {
            assert!(cow.get(k).is_some() && single.contains_key(k));
        }
        for k in &miss {
            assert!(cow.get(k).is_none() && !single.contains_key(k));
        }
        assert_eq!(cow.lookup(&hot.0, &hot.1), Some(123 % SHARDS as usize));
        assert_eq!(cow.len(), n);
        Fixture {
            n,
            quick,
            cow: ArcSwap::from_pointee(cow),
            single: ArcSwap::from_pointee(single),
            single_stable,
            hit,
            miss,
            uris,
            hot,
            upd,
        }
    })
}

/// Median ns per call of `f(i)` over `reps` runs of `iters` calls.
fn ns_per_op(reps: usize, iters: usize, mut f: impl FnMut(usize) -> usize) -> f64 {
    let runs = (0..reps)
        .map(|_| {
            let t = Instant::now();
            let mut acc = 0usize;
            for i in 0..iters {
                acc = acc.wrapping_add(f(black_box(i)));
            }
            black_box(acc);
            t.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    median(runs)
}

fn shard(s: Option<u16>) -> usize {
    s.map_or(usize::MAX, usize::from)
}

/// Instant-timed lookups for the summary (criterion prints its own below).
fn manual_lookups(f: &Fixture) {
    let (reps, it) = (5, if f.quick { 20_000 } else { 2_000_000 });
    eprintln!("== lookups (median of {reps} x {it} calls) ==");
    let m = RING - 1;
    let t = f.cow.load_full();
    let single = f.single.load_full();
    let r = ns_per_op(reps, it, |i| shard(t.get(&f.hit[i & m])));
    note("get_hit_ns", format!("{r:.1}"));
    let r = ns_per_op(reps, it, |i| shard(t.get(&f.miss[i & m])));
    note("get_miss_ns", format!("{r:.1}"));
    let (hb, hu) = (&f.hot.0, &f.hot.1);
    let r = ns_per_op(reps, it, |_| {
        t.lookup(black_box(hb), black_box(hu)).unwrap_or(9)
    });
    note("lookup_uri_hot_ns", format!("{r:.1}"));
    let r = ns_per_op(reps, it, |i| {
        let (b, u) = &f.uris[i & m];
        t.lookup(b, u).unwrap_or(9)
    });
    note("lookup_uri_random_ns", format!("{r:.1}"));
    let r = ns_per_op(reps, it, |i| shard(f.cow.load().get(&f.hit[i & m])));
    note("arcswap_load_get_hit_ns", format!("{r:.1}"));
    let r = ns_per_op(reps, it, |_| f.cow.load().len());
    note("arcswap_load_only_ns", format!("{r:.1}"));
    // The key hash alone (a `get` computes it twice: partition, then map).
    let r = ns_per_op(reps, it, |i| hash_bytes(&f.hit[i & m]) as usize);
    note("stable_hash_key_ns", format!("{r:.1}"));
    let r = ns_per_op(reps, it, |i| shard(single.get(&f.hit[i & m]).copied()));
    note("single_sip_get_hit_ns", format!("{r:.1}"));
    let r = ns_per_op(reps, it, |i| {
        shard(f.single_stable.get(&f.hit[i & m]).copied())
    });
    note("single_stable_get_hit_ns", format!("{r:.1}"));
}

/// One published update: load the current snapshot, clone it, change it,
/// publish it. Returns (clone + change, store + reclaim of the old one).
fn publish<T: Clone>(swap: &ArcSwap<T>, change: impl FnOnce(&mut T)) -> (Duration, Duration) {
    let t0 = Instant::now();
    let cur = swap.load_full();
    let mut next = T::clone(&cur);
    change(&mut next);
    let next = Arc::new(next);
    drop(cur);
    let t1 = Instant::now();
    // No reader holds the old snapshot here, so it is freed inside `store`.
    swap.store(next);
    (t1 - t0, t1.elapsed())
}

fn move_cow(t: &mut GroupTable, keys: &[Box<[u8]>]) {
    for k in keys {
        let s = t.get(k).expect("existing group");
        t.insert(k, (s + 1) % SHARDS);
    }
}

fn move_single(t: &mut Single, keys: &[Box<[u8]>]) {
    for k in keys {
        let s = t.get_mut(k).expect("existing group");
        *s = (*s + 1) % SHARDS;
    }
}

/// Median (build, publish, total) over `reps` updates of `size` groups,
/// and the mean minor page faults per update.
fn updates<T: Clone>(
    reps: usize,
    size: usize,
    f: &Fixture,
    swap: &ArcSwap<T>,
    mv: fn(&mut T, &[Box<[u8]>]),
) -> (f64, f64, f64, f64) {
    let (mut b, mut p, mut t) = (Vec::new(), Vec::new(), Vec::new());
    let faults = minflt();
    for r in 0..reps {
        let from = (r * size) % (f.upd.len() - size);
        let keys = &f.upd[from..from + size];
        let (db, dp) = publish(swap, |x| mv(x, keys));
        b.push(db.as_secs_f64());
        p.push(dp.as_secs_f64());
        t.push((db + dp).as_secs_f64());
    }
    let faults = (minflt() - faults) as f64 / reps as f64;
    (median(b), median(p), median(t), faults)
}

fn manual_updates(f: &Fixture) {
    let q = f.quick;
    eprintln!("== published updates (medians; clone+change / store+reclaim old) ==");
    let (b, p, t, pf) = updates(if q { 11 } else { 201 }, 1, f, &f.cow, move_cow);
    eprintln!(
        "cow one move: {:.1} + {:.1} = {:.1} us, {pf:.0} page faults",
        b * 1e6,
        p * 1e6,
        t * 1e6
    );
    note("update_one_cow_us", format!("{:.1}", t * 1e6));
    let (b, p, t, pf) = updates(if q { 3 } else { 9 }, BATCH, f, &f.cow, move_cow);
    eprintln!(
        "cow batch {BATCH}: {:.2} + {:.2} = {:.2} ms, {pf:.0} page faults",
        b * 1e3,
        p * 1e3,
        t * 1e3
    );
    note("batch1000_cow_ms", format!("{:.2}", t * 1e3));
    let (b, p, t, pf) = updates(if q { 3 } else { 7 }, 1, f, &f.single, move_single);
    eprintln!(
        "full clone one move: {:.1} + {:.1} = {:.1} ms, {pf:.0} page faults",
        b * 1e3,
        p * 1e3,
        t * 1e3
    );
    note("update_one_fullclone_ms", format!("{:.1}", t * 1e3));
    note("update_one_fullclone_publish_ms", format!("{:.1}", p * 1e3));
    let (b, p, t, pf) = updates(if q { 3 } else { 7 }, BATCH, f, &f.single, move_single);
    eprintln!(
        "full clone batch {BATCH}: {:.1} + {:.1} = {:.1} ms, {pf:.0} page faults",
        b * 1e3,
        p * 1e3,
        t * 1e3
    );
    note("batch1000_fullclone_ms", format!("{:.1}", t * 1e3));
    // Entries a move copies: its partition; a batch touches ~all partitions.
    let parts = cpm_edge::route::groups::PARTS as f64;
    note(
        "entries_copied_per_move",
        format!("{:.0}", f.n as f64 / parts),
    );
    let touched = parts * (1.0 - (1.0 - 1.0 / parts).powi(BATCH as i32));
    note("batch1000_parts_touched_expected", format!("{touched:.0}"));
}

fn lookups(c: &mut Criterion) {
    let f = fixture();
    let m = RING - 1;
    let t = f.cow.load_full();
    let single = f.single.load_full();
    let mut g = c.benchmark_group("groups_lookup");
    g.bench_function("get_hit", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & m;
            black_box(t.get(black_box(&f.hit[i])))
        })
    });
    g.bench_function("get_miss", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & m;
            black_box(t.get(black_box(&f.miss[i])))
        })
    });
    g.bench_function("lookup_uri_hot", |b| {
        b.iter(|| black_box(t.lookup(black_box(&f.hot.0), black_box(&f.hot.1))))
    });
    g.bench_function("lookup_uri_random", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & m;
            let (buf, u) = &f.uris[i];
            black_box(t.lookup(black_box(buf), black_box(u)))
        })
    });
    g.bench_function("arcswap_load_get_hit", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & m;
            black_box(f.cow.load().get(black_box(&f.hit[i])))
        })
    });
    g.bench_function("arcswap_load_only", |b| {
        b.iter(|| black_box(f.cow.load().len()))
    });
    g.bench_function("single_sip_get_hit", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & m;
            black_box(single.get(black_box(&f.hit[i])).copied())
        })
    });
    g.bench_function("single_stable_get_hit", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & m;
            black_box(f.single_stable.get(black_box(&f.hit[i])).copied())
        })
    });
    g.finish();
}

fn update(c: &mut Criterion) {
    let f = fixture();
    let mut g = c.benchmark_group("groups_update");
    g.bench_function("cow_move_one_publish", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) % f.upd.len();
            publish(&f.cow, |t| move_cow(t, &f.upd[i..i + 1]))
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = lookups, update
}

fn main() {
    let f = fixture();
    manual_lookups(f);
    manual_updates(f);
    benches();
    Criterion::default().configure_from_args().final_summary();
    let fields: Vec<String> = SUMMARY
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("GROUPS n={} shards={SHARDS} {}", f.n, fields.join(" "));
}
