//! The edge's location service (RFC 3261 §10, seed 5.1): address-of-record
//! → the contacts registered for it. Every data-plane worker reads it
//! without locks; one thread, the registrar, writes it through the single
//! [`LocationWriter`].
//!
//! # Layout
//!
//! - AoRs (canonical `user@host` keys, as [`super::groups::identity_key`]
//!   builds them) are spread over [`PARTS`] partitions by the top 16 bits
//!   of their stable hash. Each partition is an [`ArcSwap`] of an immutable
//!   `Part`: a sorted array of 24-byte slots (the next 16 bits of the hash,
//!   the end of the key in the partition's key arena, the `Arc<[Binding]>`)
//!   and the key arena itself. A write builds its partition anew (~15 slots
//!   at 1 000 000 AoRs: pointer copies, the arena shared when no key comes
//!   or goes) and publishes it with one pointer swap: readers see the old
//!   or the new partition, never a mix. Partitions are that small because
//!   copying a slot increments its list's count, a locked instruction on a
//!   cold cache line that cannot overlap its miss with the next one: at
//!   4096 partitions of ~250 slots those increments were nearly all of a
//!   put's ~37 us.
//! - The flow index (source address → AoR, RFC 5626 flows) is
//!   [`FLOW_PARTS`] partitions of sorted `u64`s, `flow hash << 32 | AoR
//!   hash`. It names candidates only: a reader confirms a candidate against
//!   the AoR's bindings (address, port and IPv6 scope), so hash collisions
//!   and the moment between the two swaps of one write cannot give a wrong
//!   answer, only (during that moment) none. It names at most
//!   [`FLOW_NAMED`] AoRs per flow (finding the source's identity needs
//!   one): a flow shared by many AoRs (every user behind one P-CSCF or SBC
//!   registers from its address) would otherwise grow one partition to the
//!   size of the table, and a write copies its partition whole. The rest
//!   wait in the writer's private overflow and are named as named ones
//!   leave.
//! - The expiry index belongs to the writer alone: a `BTreeSet<u64>` of
//!   `earliest expires_at << 32 | AoR hash`, exactly one entry per AoR
//!   (per group of colliding AoRs with the same earliest expiry). A sweep
//!   pops what is due, never scanning the table.
//!
//! # Memory
//!
//! A [`Binding`] is 56 bytes plus one exact-size allocation holding its
//! texts (contact, instance, Call-ID, params) back to back. Per AoR: a
//! 24-byte slot, the key bytes in the partition arena (no per-key
//! allocation), the list's 16-byte `Arc` header; per distinct flow 8 bytes;
//! per AoR ~16 bytes of expiry B-tree; and ~75 bytes of fixed cost per AoR
//! partition, ~40 per flow partition. `benches/location.rs` counts it at
//! 1 000 000 AoRs of one RCS-like binding (49-byte contact, 47-byte
//! instance, 32-byte Call-ID, 28-byte AoR: 156 bytes of text): 283 bytes
//! requested per binding (texts 128, lists 72, slots and keys 57, flow
//! index 11, expiry index 16), 297 as malloc rounds them.
//!
//! AoR hashes are unkeyed ([`StableHash`]): the registrar only writes
//! authenticated AoRs, and colliding hashes cost a scan of the colliding
//! run, not correctness.

use super::groups::MAX_IDENTITY;
use crate::sip::feature_tag::CpmServices;
use crate::sip::flow::Flow;
use crate::sip::hash::StableHash;
use arc_swap::ArcSwap;
use std::cmp::Ordering as Cmp;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Partitions of the AoR table: ~15 AoRs a partition at 1 000 000, the
/// slots one write copies. Small on purpose: copying a slot is an atomic
/// increment of its list's count, on a cache line nobody touched lately,
/// and locked increments do not overlap their misses (4096 partitions of
/// ~250 slots made a put ~37 us, nearly all of it those increments).
pub const PARTS: usize = 1 << PART_BITS;
const PART_BITS: u32 = 16;
/// Partitions of the flow index: ~15 entries each at 1 000 000 flows, so
/// a lookup's binary search stays on two cache lines (at ~250 entries its
/// eight dependent misses were most of `identity_of_flow`).
pub const FLOW_PARTS: usize = 1 << FLOW_BITS;
const FLOW_BITS: u32 = 16;
/// Most AoRs the published flow index names per flow hash.
pub const FLOW_NAMED: usize = 4;
/// Most bindings one AoR holds (the registrar refuses more, RFC 3261 §10.3
/// leaves the limit to it).
pub const MAX_BINDINGS: usize = 32;
/// Longest contact URI kept.
pub const MAX_CONTACT: usize = 1024;
/// Longest `+sip.instance` value kept.
pub const MAX_INSTANCE: usize = 256;
/// Longest Call-ID kept.
pub const MAX_CALL_ID: usize = 256;
/// Longest feature-tag parameter text kept.
pub const MAX_PARAMS: usize = 1024;

/// Why a binding cannot be built from its parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// The contact URI is empty or longer than [`MAX_CONTACT`].
    #[error("Binding: contact of {0} bytes (1 to 1024)")]
    Contact(usize),
    /// The instance is present but empty or longer than [`MAX_INSTANCE`].
    #[error("Binding: +sip.instance of {0} bytes (1 to 256)")]
    Instance(usize),
    /// The Call-ID is empty or longer than [`MAX_CALL_ID`].
    #[error("Binding: Call-ID of {0} bytes (1 to 256)")]
    CallId(usize),
    /// The params are present but empty or longer than [`MAX_PARAMS`].
    #[error("Binding: params of {0} bytes (1 to 1024)")]
    Params(usize),
    /// q above 1000 permille (RFC 3261 §20.10: 0 to 1).
    #[error("Binding: q of {0} permille (at most 1000)")]
    Q(u16),
    /// An expiry past what the table stores (unix seconds in 32 bits).
    #[error("Binding: expires_at {0} past 2106")]
    Expires(u64),
}

/// Why a write was refused; nothing of it was applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PutError {
    /// The table holds its maximum number of AoRs.
    #[error("Location: table full ({0} AoRs)")]
    Full(usize),
    /// More bindings for one AoR than [`MAX_BINDINGS`].
    #[error("Location: {0} bindings for one AoR (at most 32)")]
    TooManyBindings(usize),
}

/// The parts of a [`Binding`], borrowed: what [`Binding::new`] takes and
/// [`Binding::parts`] gives back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindingParts<'a> {
    /// The contact URI as registered (`sip:alice@192.0.2.1:5060;transport=udp`).
    pub contact: &'a [u8],
    /// The source address the REGISTER came from: where requests for this
    /// contact are sent (RFC 5626 flow).
    pub flow: SocketAddr,
    /// Unix seconds at which the binding lapses.
    pub expires_at: u64,
    /// The contact's q in permille (0 to 1000).
    pub q: u16,
    /// The CPM services the contact registered (feature tags).
    pub cpm: CpmServices,
    /// The `+sip.instance` value, if any.
    pub instance: Option<&'a [u8]>,
    /// The RFC 5626 reg-id (0: none).
    pub reg_id: u32,
    /// The REGISTER's Call-ID (RFC 3261 §10.3 step 7).
    pub call_id: &'a [u8],
    /// The REGISTER's CSeq number (RFC 3261 §10.3 step 7).
    pub cseq: u32,
    /// Feature-tag parameters to echo in the 200 OK and reg-info, if any.
    pub params: Option<&'a [u8]>,
    /// The stream connection the REGISTER came on (RFC 5626: requests for
    /// this contact go on it, `flow` being its peer); `None`: a datagram.
    pub conn: Option<Flow>,
}

const FLAG_V6: u8 = 1;
const FLAG_SCOPE: u8 = 2;
const FLAG_CONN: u8 = 4;
/// Bytes of a connection's name at the end of `text`.
const CONN_LEN: usize = 10;

/// One registered contact, in 56 bytes plus one allocation of its texts.
///
/// The texts sit back to back in `text` (contact, instance, Call-ID,
/// params, then the IPv6 scope id and the stream connection when there
/// are), cut by the three
/// `*_end` offsets; the flow is its address bytes and port (the IPv6 flow
/// label is not kept: it does not address anything).
#[derive(Clone, PartialEq, Eq)]
pub struct Binding {
    text: Box<[u8]>,
    ip: [u8; 16],
    expires_at: u32,
    reg_id: u32,
    cseq: u32,
    port: u16,
    q: u16,
    contact_end: u16,
    instance_end: u16,
    call_id_end: u16,
    cpm: u8,
    flags: u8,
}

fn check_len(v: &[u8], max: usize, err: fn(usize) -> BindingError) -> Result<(), BindingError> {
    if v.is_empty() || v.len() > max {
        return Err(err(v.len()));
    }
    Ok(())
}

impl Binding {
    /// A binding from its parts, each checked against its bound.
    pub fn new(p: &BindingParts<'_>) -> Result<Binding, BindingError> {
        check_len(p.contact, MAX_CONTACT, BindingError::Contact)?;
        check_len(p.call_id, MAX_CALL_ID, BindingError::CallId)?;
        let instance = p.instance.unwrap_or_default();
        if p.instance.is_some() {
            check_len(instance, MAX_INSTANCE, BindingError::Instance)?;
        }
        let params = p.params.unwrap_or_default();
        if p.params.is_some() {
            check_len(params, MAX_PARAMS, BindingError::Params)?;
        }
        if p.q > 1000 {
            return Err(BindingError::Q(p.q));
        }
        let expires_at =
            u32::try_from(p.expires_at).map_err(|_| BindingError::Expires(p.expires_at))?;
        let (ip, flags, scope) = match p.flow {
            SocketAddr::V4(a) => {
                let mut ip = [0u8; 16];
                ip[..4].copy_from_slice(&a.ip().octets());
                (ip, 0, 0)
            }
            SocketAddr::V6(a) => {
                let scope = a.scope_id();
                let flag = if scope != 0 { FLAG_SCOPE } else { 0 };
                (a.ip().octets(), FLAG_V6 | flag, scope)
            }
        };
        let scope_len = if flags & FLAG_SCOPE != 0 { 4 } else { 0 };
        let flags = flags | if p.conn.is_some() { FLAG_CONN } else { 0 };
        let conn_len = if p.conn.is_some() { CONN_LEN } else { 0 };
        let n = p.contact.len()
            + instance.len()
            + p.call_id.len()
            + params.len()
            + scope_len
            + conn_len;
        // Exact capacity: `into_boxed_slice` keeps the allocation as is.
        let mut text = Vec::with_capacity(n);
        text.extend_from_slice(p.contact);
        let contact_end = text.len() as u16;
        text.extend_from_slice(instance);
        let instance_end = text.len() as u16;
        text.extend_from_slice(p.call_id);
        let call_id_end = text.len() as u16;
        text.extend_from_slice(params);
        if scope_len != 0 {
            text.extend_from_slice(&scope.to_le_bytes());
        }
        if let Some(c) = p.conn {
            text.extend_from_slice(&c.worker.to_le_bytes());
            text.extend_from_slice(&c.slot.to_le_bytes());
            text.extend_from_slice(&c.generation.to_le_bytes());
        }
        debug_assert_eq!(text.len(), n);
        // The bounds above keep every offset below 3 * 1024 + 256.
        Ok(Binding {
            text: text.into_boxed_slice(),
            ip,
            expires_at,
            reg_id: p.reg_id,
            cseq: p.cseq,
            port: p.flow.port(),
            q: p.q,
            contact_end,
            instance_end,
            call_id_end,
            cpm: p.cpm.0,
            flags,
        })
    }

    /// All parts, borrowed (to rebuild a binding with one part changed).
    pub fn parts(&self) -> BindingParts<'_> {
        BindingParts {
            contact: self.contact(),
            flow: self.flow(),
            expires_at: self.expires_at(),
            q: self.q,
            cpm: self.cpm(),
            instance: self.instance(),
            reg_id: self.reg_id,
            call_id: self.call_id(),
            cseq: self.cseq,
            params: self.params(),
            conn: self.conn(),
        }
    }

    /// The contact URI as registered.
    pub fn contact(&self) -> &[u8] {
        &self.text[..usize::from(self.contact_end)]
    }

    /// The `+sip.instance` value, if one was registered.
    pub fn instance(&self) -> Option<&[u8]> {
        let v = &self.text[usize::from(self.contact_end)..usize::from(self.instance_end)];
        (!v.is_empty()).then_some(v)
    }

    /// The REGISTER's Call-ID.
    pub fn call_id(&self) -> &[u8] {
        &self.text[usize::from(self.instance_end)..usize::from(self.call_id_end)]
    }

    /// The feature-tag parameters to echo, if any.
    pub fn params(&self) -> Option<&[u8]> {
        let v = &self.text[usize::from(self.call_id_end)..self.params_end()];
        (!v.is_empty()).then_some(v)
    }

    fn params_end(&self) -> usize {
        self.conn_start() - if self.flags & FLAG_SCOPE != 0 { 4 } else { 0 }
    }

    fn conn_start(&self) -> usize {
        self.text.len()
            - if self.flags & FLAG_CONN != 0 {
                CONN_LEN
            } else {
                0
            }
    }

    fn scope_id(&self) -> u32 {
        match self.text.get(self.params_end()..self.conn_start()) {
            Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]),
            _ => 0,
        }
    }

    /// The stream connection requests for this contact go on, if it
    /// registered over one.
    pub fn conn(&self) -> Option<Flow> {
        if self.flags & FLAG_CONN == 0 {
            return None;
        }
        let c = self.text.get(self.conn_start()..)?;
        let le32 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        Some(Flow {
            worker: u16::from_le_bytes([c[0], c[1]]),
            slot: le32(&c[2..6]),
            generation: le32(&c[6..10]),
        })
    }

    /// Where requests for this contact are sent: the REGISTER's source.
    pub fn flow(&self) -> SocketAddr {
        if self.flags & FLAG_V6 == 0 {
            let [a, b, c, d, ..] = self.ip;
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), self.port))
        } else {
            let ip = Ipv6Addr::from(self.ip);
            SocketAddr::V6(SocketAddrV6::new(ip, self.port, 0, self.scope_id()))
        }
    }

    /// Is a message from `src` on `conn` (`None`: a datagram) on this
    /// binding's flow: address, port and IPv6 scope (the flow label is not
    /// part of an address), and the same stream connection or none. A
    /// datagram never speaks for a stream binding: its source address is
    /// all a spoofer needs.
    pub fn is_flow(&self, src: SocketAddr, conn: Option<Flow>) -> bool {
        if self.conn() != conn {
            return false;
        }
        match src {
            SocketAddr::V4(a) => {
                self.flags & FLAG_V6 == 0
                    && self.ip[..4] == a.ip().octets()
                    && self.port == a.port()
            }
            SocketAddr::V6(a) => {
                self.flags & FLAG_V6 != 0
                    && self.ip == a.ip().octets()
                    && self.port == a.port()
                    && self.scope_id() == a.scope_id()
            }
        }
    }

    /// Unix seconds at which the binding lapses.
    pub fn expires_at(&self) -> u64 {
        u64::from(self.expires_at)
    }

    /// q in permille.
    pub fn q(&self) -> u16 {
        self.q
    }

    /// The CPM services the contact registered.
    pub fn cpm(&self) -> CpmServices {
        CpmServices(self.cpm)
    }

    /// The RFC 5626 reg-id (0: none).
    pub fn reg_id(&self) -> u32 {
        self.reg_id
    }

    /// The REGISTER's CSeq number.
    pub fn cseq(&self) -> u32 {
        self.cseq
    }

    /// Bytes of the texts' allocation (the binding itself is
    /// `size_of::<Binding>()` more).
    pub fn text_bytes(&self) -> usize {
        self.text.len()
    }
}

impl fmt::Debug for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        f.debug_struct("Binding")
            .field("contact", &s(self.contact()))
            .field("flow", &self.flow())
            .field("expires_at", &self.expires_at)
            .field("q", &self.q)
            .field("cpm", &self.cpm)
            .field("instance", &self.instance().map(s))
            .field("reg_id", &self.reg_id)
            .field("call_id", &s(self.call_id()))
            .field("cseq", &self.cseq)
            .field("params", &self.params().map(s))
            .field("conn", &self.conn())
            .finish()
    }
}

/// The top 32 bits of an AoR's stable hash: 16 bits of partition, 16 of
/// order inside it.
fn aor_hash(aor: &[u8]) -> u32 {
    let mut h = StableHash::default();
    h.bytes(aor);
    (h.finish() >> 32) as u32
}

/// The same for a flow: its address bytes (4 or 16, so the families
/// differ) and port. The scope is left to the confirmation.
fn flow_hash(a: SocketAddr) -> u32 {
    let mut h = StableHash::default();
    match a {
        SocketAddr::V4(v) => h.bytes(&v.ip().octets()),
        SocketAddr::V6(v) => h.bytes(&v.ip().octets()),
    }
    h.bytes(&a.port().to_le_bytes());
    (h.finish() >> 32) as u32
}

#[inline]
fn part_of(hash: u32) -> usize {
    (hash >> (32 - PART_BITS)) as usize
}

#[inline]
/// Where the entries of flow hash `fh` lie in a (sorted) flow partition.
fn flow_run(set: &[u64], fh: u32) -> Range<usize> {
    let lo = u64::from(fh) << 32;
    let start = set.partition_point(|&e| e < lo);
    let end = start + set[start..].partition_point(|&e| e >> 32 == u64::from(fh));
    start..end
}

fn flow_part_of(flow_hash: u32) -> usize {
    (flow_hash >> (32 - FLOW_BITS)) as usize
}

fn min_expiry(list: &[Binding]) -> Option<u32> {
    list.iter().map(|b| b.expires_at).min()
}

#[derive(Clone)]
struct Slot {
    list: Arc<[Binding]>,
    hash: u32,
    /// End of this slot's key in the arena; it starts at the previous
    /// slot's end.
    key_end: u32,
}

/// One partition: slots in (hash, key) order and their keys back to back.
struct Part {
    slots: Box<[Slot]>,
    keys: Arc<[u8]>,
}

impl Part {
    fn key(&self, i: usize) -> &[u8] {
        let start = match i.checked_sub(1) {
            Some(p) => self.slots[p].key_end as usize,
            None => 0,
        };
        &self.keys[start..self.slots[i].key_end as usize]
    }

    fn cmp_at(&self, i: usize, hash: u32, key: &[u8]) -> Cmp {
        self.slots[i]
            .hash
            .cmp(&hash)
            .then_with(|| self.key(i).cmp(key))
    }

    /// `Ok(index)` of `key`, or `Err(where it would go)`.
    fn search(&self, hash: u32, key: &[u8]) -> Result<usize, usize> {
        let (mut lo, mut hi) = (0, self.slots.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.cmp_at(mid, hash, key) {
                Cmp::Less => lo = mid + 1,
                Cmp::Greater => hi = mid,
                Cmp::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }

    /// The slots whose hash is `hash` (usually one AoR, more on collision).
    fn run(&self, hash: u32) -> Range<usize> {
        let a = self.slots.partition_point(|s| s.hash < hash);
        let b = a + self.slots[a..].partition_point(|s| s.hash == hash);
        a..b
    }
}

/// The flow index of one partition: sorted `flow hash << 32 | AoR hash`.
struct FlowPart(Box<[u64]>);

/// One change the writer applies: an AoR and its new list (`None`: gone).
struct Change<'k> {
    hash: u32,
    key: &'k [u8],
    list: Option<Arc<[Binding]>>,
}

impl Change<'_> {
    fn order(&self, o: &Self) -> Cmp {
        (part_of(self.hash), self.hash, self.key).cmp(&(part_of(o.hash), o.hash, o.key))
    }
}

/// Bytes the table's allocations request, by kind (what
/// [`Location::footprint`] counts; the writer's expiry index is apart).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// AoRs held.
    pub aors: usize,
    /// Bindings held.
    pub bindings: usize,
    /// Partitions: slots, key arenas, the partition headers.
    pub table_bytes: usize,
    /// Binding lists: `Arc` headers and the 56-byte bindings.
    pub list_bytes: usize,
    /// The bindings' text allocations.
    pub text_bytes: usize,
    /// The flow index.
    pub flow_bytes: usize,
}

impl Footprint {
    /// The sum of the byte counts.
    pub fn total(&self) -> usize {
        self.table_bytes + self.list_bytes + self.text_bytes + self.flow_bytes
    }
}

/// The location table: AoR → bindings, and flow → AoR, read lock-free.
pub struct Location {
    parts: Box<[ArcSwap<Part>]>,
    flows: Box<[ArcSwap<FlowPart>]>,
    aors: AtomicUsize,
    bindings: AtomicUsize,
    max_aors: usize,
    writer: AtomicBool,
}

/// An `Arc` allocation's two counters.
const ARC_HEADER: usize = 2 * std::mem::size_of::<usize>();

impl Location {
    /// An empty table that holds at most `max_aors` AoRs.
    pub fn new(max_aors: usize) -> Location {
        let keys: Arc<[u8]> = Arc::from(&[][..]);
        Location {
            parts: (0..PARTS)
                .map(|_| {
                    ArcSwap::from_pointee(Part {
                        slots: Box::default(),
                        keys: keys.clone(),
                    })
                })
                .collect(),
            flows: (0..FLOW_PARTS)
                .map(|_| ArcSwap::from_pointee(FlowPart(Box::default())))
                .collect(),
            aors: AtomicUsize::new(0),
            bindings: AtomicUsize::new(0),
            max_aors,
            writer: AtomicBool::new(false),
        }
    }

    /// The table's one writer; `None` once it has been handed out.
    pub fn writer(self: &Arc<Self>) -> Option<LocationWriter> {
        if self.writer.swap(true, Ordering::AcqRel) {
            return None;
        }
        // Only a writer writes, so the table is still empty: the writer's
        // expiry index starts complete.
        assert_eq!(self.len(), 0, "location written without its writer");
        Some(LocationWriter {
            loc: Arc::clone(self),
            expiry: BTreeSet::new(),
            crowded: HashMap::new(),
        })
    }

    fn with_slot<R>(&self, aor: &[u8], f: impl FnOnce(&Slot) -> R) -> Option<R> {
        let h = aor_hash(aor);
        let part = self.parts[part_of(h)].load();
        let i = part.search(h, aor).ok()?;
        Some(f(&part.slots[i]))
    }

    /// The bindings of `aor` (canonical `user@host`), shared.
    pub fn lookup(&self, aor: &[u8]) -> Option<Arc<[Binding]>> {
        self.with_slot(aor, |s| Arc::clone(&s.list))
    }

    /// `f` of the bindings of `aor`, without touching the list's reference
    /// count. `f` runs while a partition snapshot is held: keep it short.
    pub fn with_bindings<R>(&self, aor: &[u8], f: impl FnOnce(&[Binding]) -> R) -> Option<R> {
        self.with_slot(aor, |s| f(&s.list))
    }

    /// `f` of the AoR registered from `src` on `conn` (`None`: by
    /// datagram; one of them if several AoRs share the flow, as lines of
    /// one device behind one socket do).
    pub fn identity_of_flow<R>(
        &self,
        (src, conn): (SocketAddr, Option<Flow>),
        f: impl FnOnce(&[u8]) -> R,
    ) -> Option<R> {
        let fh = flow_hash(src);
        let flows = self.flows[flow_part_of(fh)].load();
        for &e in &flows.0[flow_run(&flows.0, fh)] {
            let ah = e as u32;
            let part = self.parts[part_of(ah)].load();
            for i in part.run(ah) {
                if part.slots[i].list.iter().any(|b| b.is_flow(src, conn)) {
                    return Some(f(part.key(i)));
                }
            }
        }
        None
    }

    /// AoRs held.
    pub fn len(&self) -> usize {
        self.aors.load(Ordering::Relaxed)
    }

    /// Whether no AoR is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bindings held, over all AoRs.
    pub fn bindings(&self) -> usize {
        self.bindings.load(Ordering::Relaxed)
    }

    /// The most AoRs the table holds.
    pub fn capacity(&self) -> usize {
        self.max_aors
    }

    /// Bytes requested by the table's allocations, by kind: a walk over
    /// every partition (diagnostics, not the hot path).
    pub fn footprint(&self) -> Footprint {
        let slot = std::mem::size_of::<Slot>();
        let binding = std::mem::size_of::<Binding>();
        let mut fp = Footprint {
            table_bytes: PARTS * std::mem::size_of::<ArcSwap<Part>>(),
            flow_bytes: FLOW_PARTS * std::mem::size_of::<ArcSwap<FlowPart>>(),
            ..Footprint::default()
        };
        for p in self.parts.iter() {
            let p = p.load();
            fp.table_bytes += ARC_HEADER + std::mem::size_of::<Part>() + p.slots.len() * slot;
            // Empty partitions share one empty arena.
            if !p.keys.is_empty() {
                fp.table_bytes += ARC_HEADER + p.keys.len();
            }
            for s in p.slots.iter() {
                fp.aors += 1;
                fp.bindings += s.list.len();
                fp.list_bytes += ARC_HEADER + s.list.len() * binding;
                fp.text_bytes += s.list.iter().map(Binding::text_bytes).sum::<usize>();
            }
        }
        for f in self.flows.iter() {
            let f = f.load();
            fp.flow_bytes += ARC_HEADER + std::mem::size_of::<FlowPart>() + f.0.len() * 8;
        }
        fp
    }
}

/// What one sweep removed from one AoR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expired {
    /// The AoR.
    pub aor: Vec<u8>,
    /// The bindings that lapsed (earliest first).
    pub removed: Vec<Binding>,
    /// What the AoR still holds (empty: the AoR is gone).
    pub remaining: Arc<[Binding]>,
}

/// The single writer of a [`Location`] (the registrar's thread).
pub struct LocationWriter {
    loc: Arc<Location>,
    /// `earliest expires_at << 32 | AoR hash` for every AoR (one entry
    /// for colliding AoRs that share both): exactly the set of those pairs.
    expiry: BTreeSet<u64>,
    /// Flow-index entries beyond [`FLOW_NAMED`] for their flow hash: flow
    /// hash → AoR hashes. A flow hash is here only while its published run
    /// is full, and no entry is in both.
    crowded: HashMap<u32, BTreeSet<u32>>,
}

fn expiry_entry(t: u32, hash: u32) -> u64 {
    u64::from(t) << 32 | u64::from(hash)
}

impl LocationWriter {
    /// The table written.
    pub fn location(&self) -> &Arc<Location> {
        &self.loc
    }

    /// Entries of the expiry index (one per AoR but for collisions).
    pub fn expiry_entries(&self) -> usize {
        self.expiry.len()
    }

    /// Every AoR with a binding on the stream connection `conn` from
    /// `src` (the lines of one device on one connection), at most
    /// `max`: what goes when that connection ends. The flow index names
    /// the candidates (its published run and the writer's overflow), each
    /// confirmed against the AoR's bindings.
    pub fn aors_on_conn(&self, src: SocketAddr, conn: Flow, max: usize) -> Vec<Vec<u8>> {
        let fh = flow_hash(src);
        let flows = self.loc.flows[flow_part_of(fh)].load();
        let named = flows.0[flow_run(&flows.0, fh)].iter().map(|&e| e as u32);
        let waiting = self.crowded.get(&fh).into_iter().flatten().copied();
        let mut out: Vec<Vec<u8>> = Vec::new();
        for ah in named.chain(waiting) {
            let part = self.loc.parts[part_of(ah)].load();
            for i in part.run(ah) {
                let on_it = part.slots[i]
                    .list
                    .iter()
                    .any(|b| b.is_flow(src, Some(conn)));
                let key = part.key(i);
                if on_it && out.len() < max && !out.iter().any(|k| k == key) {
                    out.push(key.to_vec());
                }
            }
        }
        out
    }

    /// Replace the bindings of `aor` (empty: remove the AoR). The key is
    /// canonical `user@host`, at most [`MAX_IDENTITY`] bytes (asserted).
    pub fn put(&mut self, aor: &[u8], bindings: Vec<Binding>) -> Result<(), PutError> {
        self.put_many([(aor, bindings)])
    }

    /// [`put`](Self::put) of several AoRs, each partition built and
    /// published once (recovery, a registrar's batch); the last change of
    /// a key wins. All or nothing: an error applies none of them.
    pub fn put_many<'k>(
        &mut self,
        changes: impl IntoIterator<Item = (&'k [u8], Vec<Binding>)>,
    ) -> Result<(), PutError> {
        let mut cs = Vec::new();
        for (key, list) in changes {
            assert!(
                !key.is_empty() && key.len() <= MAX_IDENTITY,
                "AoR key of {} bytes",
                key.len()
            );
            if list.len() > MAX_BINDINGS {
                return Err(PutError::TooManyBindings(list.len()));
            }
            let list = (!list.is_empty()).then(|| Arc::from(list));
            cs.push(Change {
                hash: aor_hash(key),
                key,
                list,
            });
        }
        let cs = last_wins(cs);
        let olds = self.current(&cs);
        let grow = cs
            .iter()
            .zip(&olds)
            .map(|(c, o)| c.list.is_some() as isize - o.is_some() as isize)
            .sum::<isize>();
        let len = self.loc.len();
        if grow > 0 && len + grow as usize > self.loc.max_aors {
            return Err(PutError::Full(self.loc.max_aors));
        }
        self.apply(&cs, &olds);
        Ok(())
    }

    /// The current list of each change's AoR.
    fn current(&self, cs: &[Change<'_>]) -> Vec<Option<Arc<[Binding]>>> {
        cs.iter().map(|c| self.loc.lookup(c.key)).collect()
    }

    /// Publish `cs` (sorted, one per key; `olds` their current lists),
    /// then bring the counters and both indexes in step.
    fn apply(&mut self, cs: &[Change<'_>], olds: &[Option<Arc<[Binding]>>]) {
        let mut at = 0;
        for group in cs.chunk_by(|a, b| part_of(a.hash) == part_of(b.hash)) {
            let p = part_of(group[0].hash);
            let cur = self.loc.parts[p].load_full();
            let next = Arc::new(merge(&cur, group, &olds[at..at + group.len()]));
            let prev = self.loc.parts[p].swap(next);
            assert!(Arc::ptr_eq(&prev, &cur), "a second location writer");
            at += group.len();
        }
        let (mut aors, mut bindings) = (self.loc.len() as isize, self.loc.bindings() as isize);
        let mut flow_ops = Vec::new();
        for (c, old) in cs.iter().zip(olds) {
            let (old, new) = (
                old.as_deref().unwrap_or(&[]),
                c.list.as_deref().unwrap_or(&[]),
            );
            aors += !new.is_empty() as isize - !old.is_empty() as isize;
            bindings += new.len() as isize - old.len() as isize;
            self.flow_changes(c.hash, old, new, &mut flow_ops);
            self.expiry_change(c.hash, min_expiry(old), min_expiry(new));
        }
        assert!(aors >= 0 && bindings >= aors, "location counters");
        self.loc.aors.store(aors as usize, Ordering::Relaxed);
        self.loc
            .bindings
            .store(bindings as usize, Ordering::Relaxed);
        self.publish_flows(flow_ops);
    }

    /// Does any AoR with hash `hash` satisfy `pred` (in the published
    /// state)? The membership test of both indexes under collisions.
    fn run_has(&self, hash: u32, pred: impl Fn(&[Binding]) -> bool) -> bool {
        let part = self.loc.parts[part_of(hash)].load();
        part.run(hash).any(|i| pred(&part.slots[i].list))
    }

    /// Flow-index entries to add (`true`) and drop for one AoR's change.
    fn flow_changes(
        &self,
        hash: u32,
        old: &[Binding],
        new: &[Binding],
        ops: &mut Vec<(u64, bool)>,
    ) {
        let flows = |l: &[Binding]| {
            let mut v: Vec<u32> = l.iter().map(|b| flow_hash(b.flow())).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let (old, new) = (flows(old), flows(new));
        for &f in &new {
            if old.binary_search(&f).is_err() {
                ops.push((u64::from(f) << 32 | u64::from(hash), true));
            }
        }
        for &f in &old {
            let shared = || self.run_has(hash, |l| l.iter().any(|b| flow_hash(b.flow()) == f));
            if new.binary_search(&f).is_err() && !shared() {
                ops.push((u64::from(f) << 32 | u64::from(hash), false));
            }
        }
    }

    /// Copy-on-write of each flow partition `ops` touch.
    fn publish_flows(&mut self, mut ops: Vec<(u64, bool)>) {
        let part = |e: u64| flow_part_of((e >> 32) as u32);
        ops.sort_unstable_by_key(|&(e, _)| (part(e), e));
        for group in ops.chunk_by(|a, b| part(a.0) == part(b.0)) {
            let p = part(group[0].0);
            let cur = self.loc.flows[p].load_full();
            let mut set = cur.0.to_vec();
            for &(e, add) in group {
                if add {
                    self.name_flow(&mut set, e);
                } else {
                    self.unname_flow(&mut set, e);
                }
            }
            let prev = self.loc.flows[p].swap(Arc::new(FlowPart(set.into_boxed_slice())));
            assert!(Arc::ptr_eq(&prev, &cur), "a second location writer");
        }
    }

    /// Entry `e` into the partition `set`, or into the overflow when its
    /// flow's run already names [`FLOW_NAMED`].
    fn name_flow(&mut self, set: &mut Vec<u64>, e: u64) {
        let (fh, ah) = ((e >> 32) as u32, e as u32);
        let run = flow_run(set, fh);
        match set[run.clone()].binary_search(&e) {
            Ok(_) => {}
            Err(i) if run.len() < FLOW_NAMED => set.insert(run.start + i, e),
            Err(_) => {
                self.crowded.entry(fh).or_default().insert(ah);
            }
        }
    }

    /// Entry `e` out of `set` (an overflowed one named in its place) or out
    /// of the overflow.
    fn unname_flow(&mut self, set: &mut Vec<u64>, e: u64) {
        let fh = (e >> 32) as u32;
        let Some(waiting) = self.crowded.get_mut(&fh) else {
            if let Ok(i) = set.binary_search(&e) {
                set.remove(i);
            }
            return;
        };
        match set.binary_search(&e) {
            Ok(i) => {
                set.remove(i);
                if let Some(ah) = waiting.pop_first() {
                    let promoted = u64::from(fh) << 32 | u64::from(ah);
                    if let Err(j) = set.binary_search(&promoted) {
                        set.insert(j, promoted);
                    }
                }
            }
            Err(_) => {
                waiting.remove(&(e as u32));
            }
        }
        if waiting.is_empty() {
            self.crowded.remove(&fh);
        }
    }

    /// Keep the expiry set exactly `{(earliest expiry, hash)}` over AoRs.
    fn expiry_change(&mut self, hash: u32, old: Option<u32>, new: Option<u32>) {
        if let Some(t) = new {
            self.expiry.insert(expiry_entry(t, hash));
        }
        if let Some(t) = old.filter(|&t| Some(t) != new) {
            if self.run_has(hash, |l| min_expiry(l) == Some(t)) {
                self.expiry.insert(expiry_entry(t, hash));
            } else {
                self.expiry.remove(&expiry_entry(t, hash));
            }
        }
    }

    /// Remove bindings whose `expires_at <= now_s`, at most `max` of them
    /// (earliest first), and say per AoR what went and what stays. Pops the
    /// expiry index: the cost is that of what is due, not of the table.
    pub fn sweep(&mut self, now_s: u64, max: usize) -> Vec<Expired> {
        let now = u32::try_from(now_s).unwrap_or(u32::MAX);
        let mut out = Vec::new();
        let mut budget = max;
        while budget > 0 {
            let Some(&e) = self.expiry.first() else { break };
            let (t, hash) = ((e >> 32) as u32, e as u32);
            if t > now {
                break;
            }
            self.expiry.remove(&e);
            let part = self.loc.parts[part_of(hash)].load_full();
            let from = out.len();
            for i in part.run(hash) {
                let list = &part.slots[i].list;
                if budget == 0 || min_expiry(list) != Some(t) {
                    continue;
                }
                let x = split_expired(part.key(i), list, now, budget);
                budget -= x.removed.len();
                out.push(x);
            }
            // Invariant: (t, hash) named at least one AoR of the run.
            assert!(out.len() > from, "stale expiry entry");
            self.apply_expired(&out[from..], &part);
        }
        out
    }

    fn apply_expired(&mut self, xs: &[Expired], part: &Part) {
        let mut cs = Vec::with_capacity(xs.len());
        let mut olds = Vec::with_capacity(xs.len());
        for x in xs {
            let hash = aor_hash(&x.aor);
            let i = part.search(hash, &x.aor);
            olds.push(i.ok().map(|i| Arc::clone(&part.slots[i].list)));
            let list = (!x.remaining.is_empty()).then(|| Arc::clone(&x.remaining));
            cs.push(Change {
                hash,
                key: &x.aor,
                list,
            });
        }
        // One run of one partition: already in (hash, key) order.
        self.apply(&cs, &olds);
    }
}

/// Sort `cs` by partition, hash and key, keeping the last change of a key.
fn last_wins(cs: Vec<Change<'_>>) -> Vec<Change<'_>> {
    let mut cs: Vec<(usize, Change<'_>)> = cs.into_iter().enumerate().collect();
    cs.sort_by(|(i, a), (j, b)| a.order(b).then(j.cmp(i)));
    cs.dedup_by(|later, first| later.1.key == first.1.key);
    cs.into_iter().map(|(_, c)| c).collect()
}

/// What lapses of `list` by `now` (at most `budget`, earliest first).
fn split_expired(aor: &[u8], list: &[Binding], now: u32, budget: usize) -> Expired {
    let mut due: Vec<usize> = (0..list.len())
        .filter(|&i| list[i].expires_at <= now)
        .collect();
    due.sort_by_key(|&i| list[i].expires_at);
    due.truncate(budget);
    let removed = due.iter().map(|&i| list[i].clone()).collect();
    let remaining: Vec<Binding> = (0..list.len())
        .filter(|i| !due.contains(i))
        .map(|i| list[i].clone())
        .collect();
    Expired {
        aor: aor.to_vec(),
        removed,
        remaining: Arc::from(remaining),
    }
}

/// Read every list's count before the clones increment them: plain loads
/// overlap their cache misses, locked increments wait for each in turn.
fn warm(slots: &[Slot]) {
    let sum = slots
        .iter()
        .fold(0usize, |a, s| a.wrapping_add(Arc::strong_count(&s.list)));
    std::hint::black_box(sum);
}

/// `cur` with `group` (one partition's changes, in order) applied;
/// `olds[i]` says whether `group[i]`'s key is present.
fn merge(cur: &Part, group: &[Change<'_>], olds: &[Option<Arc<[Binding]>>]) -> Part {
    warm(&cur.slots);
    let reshape = group
        .iter()
        .zip(olds)
        .any(|(c, o)| c.list.is_some() != o.is_some());
    if !reshape {
        // Same keys: new lists in the same slots, the arena shared.
        let mut slots = cur.slots.to_vec();
        for c in group {
            if let (Ok(i), Some(l)) = (cur.search(c.hash, c.key), &c.list) {
                slots[i].list = Arc::clone(l);
            }
        }
        return Part {
            slots: slots.into_boxed_slice(),
            keys: Arc::clone(&cur.keys),
        };
    }
    let grow = group.iter().filter(|c| c.list.is_some()).count();
    let mut slots = Vec::with_capacity(cur.slots.len() + grow);
    let mut keys =
        Vec::with_capacity(cur.keys.len() + group.iter().map(|c| c.key.len()).sum::<usize>());
    let mut push = |slots: &mut Vec<Slot>, hash: u32, key: &[u8], list: &Arc<[Binding]>| {
        keys.extend_from_slice(key);
        // At most MAX_IDENTITY bytes a key and `max_aors` keys in all.
        assert!(
            keys.len() <= u32::MAX as usize,
            "partition key arena over 4 GiB"
        );
        let key_end = keys.len() as u32;
        slots.push(Slot {
            list: Arc::clone(list),
            hash,
            key_end,
        });
    };
    let (mut i, mut j) = (0, 0);
    while i < cur.slots.len() || j < group.len() {
        let ord = match (i < cur.slots.len(), group.get(j)) {
            (true, Some(c)) => cur.cmp_at(i, c.hash, c.key),
            (true, None) => Cmp::Less,
            (false, _) => Cmp::Greater,
        };
        if ord == Cmp::Less {
            push(
                &mut slots,
                cur.slots[i].hash,
                cur.key(i),
                &cur.slots[i].list,
            );
            i += 1;
            continue;
        }
        let c = &group[j];
        if let Some(l) = &c.list {
            push(&mut slots, c.hash, c.key, l);
        }
        i += (ord == Cmp::Equal) as usize;
        j += 1;
    }
    // `Arc::from` copies the arena into one exact allocation.
    Part {
        slots: slots.into_boxed_slice(),
        keys: Arc::from(keys),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn parts<'a>(contact: &'a str, flow: &str, expires_at: u64, cseq: u32) -> BindingParts<'a> {
        BindingParts {
            contact: contact.as_bytes(),
            flow: addr(flow),
            expires_at,
            q: 1000,
            cpm: CpmServices(CpmServices::SESSION | CpmServices::MSG),
            instance: Some(b"<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>"),
            reg_id: 1,
            call_id: b"a84b4c76e66710@pc33.atlanta.example.com",
            cseq,
            params: None,
            conn: None,
        }
    }

    fn b(contact: &str, flow: &str, expires_at: u64) -> Binding {
        Binding::new(&parts(contact, flow, expires_at, 1)).unwrap()
    }

    fn table() -> (Arc<Location>, LocationWriter) {
        let loc = Arc::new(Location::new(1 << 20));
        let w = loc.writer().unwrap();
        (loc, w)
    }

    /// The writer's indexes, recomputed from the published table.
    fn check_indexes(loc: &Location, w: &LocationWriter) {
        let mut expiry = BTreeSet::new();
        let mut flows = BTreeSet::new();
        for p in loc.parts.iter() {
            let p = p.load();
            for (i, s) in p.slots.iter().enumerate() {
                assert_eq!(s.hash, aor_hash(p.key(i)));
                assert!(i == 0 || p.cmp_at(i - 1, s.hash, p.key(i)) == Cmp::Less);
                expiry.insert(expiry_entry(min_expiry(&s.list).unwrap(), s.hash));
                for b in s.list.iter() {
                    flows.insert(u64::from(flow_hash(b.flow())) << 32 | u64::from(s.hash));
                }
            }
        }
        assert_eq!(w.expiry, expiry);
        let named: Vec<u64> = loc.flows.iter().flat_map(|f| f.load().0.to_vec()).collect();
        let mut got: BTreeSet<u64> = named.iter().copied().collect();
        assert_eq!(got.len(), named.len(), "an entry named twice");
        for (&fh, waiting) in &w.crowded {
            let run = named.iter().filter(|&&e| e >> 32 == u64::from(fh)).count();
            assert_eq!(run, FLOW_NAMED, "an overflow beside a run with room");
            assert!(!waiting.is_empty());
            for &ah in waiting {
                assert!(
                    got.insert(u64::from(fh) << 32 | u64::from(ah)),
                    "named and waiting"
                );
            }
        }
        assert_eq!(got, flows);
        let fp = loc.footprint();
        assert_eq!((fp.aors, fp.bindings), (loc.len(), loc.bindings()));
    }

    #[test]
    fn a_binding_is_56_bytes_and_gives_back_its_parts() {
        assert_eq!(std::mem::size_of::<Binding>(), 56);
        assert_eq!(std::mem::size_of::<Slot>(), 24);
        for flow in ["192.0.2.1:5060", "[2001:db8::1]:5061", "[fe80::1%7]:5062"] {
            let mut p = parts(
                "sip:alice@192.0.2.1:5060;transport=udp",
                flow,
                1_700_000_000,
                7,
            );
            p.params =
                Some(b";+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session\"");
            let b = Binding::new(&p).unwrap();
            assert_eq!(b.parts(), p);
            assert!(b.is_flow(addr(flow), None));
            p.instance = None;
            p.params = None;
            let b = Binding::new(&p).unwrap();
            assert_eq!(b.parts(), p);
            assert_eq!((b.instance(), b.params()), (None, None));
        }
        let v6 = b("sip:a@x", "[fe80::1%7]:5062", 1);
        assert!(!v6.is_flow(addr("[fe80::1%8]:5062"), None));
        assert!(!v6.is_flow(addr("[fe80::1]:5062"), None));
        assert!(!b("sip:a@x", "192.0.2.1:5060", 1).is_flow(addr("[::ffff:192.0.2.1]:5060"), None));
    }

    #[test]
    fn a_binding_refuses_parts_out_of_bounds() {
        let long = vec![b'a'; 1025];
        let base = parts("sip:a@x", "192.0.2.1:5060", 10, 1);
        let cases: [(BindingParts<'_>, BindingError); 8] = [
            (
                BindingParts {
                    contact: b"",
                    ..base
                },
                BindingError::Contact(0),
            ),
            (
                BindingParts {
                    contact: &long,
                    ..base
                },
                BindingError::Contact(1025),
            ),
            (
                BindingParts {
                    instance: Some(b""),
                    ..base
                },
                BindingError::Instance(0),
            ),
            (
                BindingParts {
                    instance: Some(&long[..257]),
                    ..base
                },
                BindingError::Instance(257),
            ),
            (
                BindingParts {
                    call_id: &long[..257],
                    ..base
                },
                BindingError::CallId(257),
            ),
            (
                BindingParts {
                    params: Some(&long),
                    ..base
                },
                BindingError::Params(1025),
            ),
            (BindingParts { q: 1001, ..base }, BindingError::Q(1001)),
            (
                BindingParts {
                    expires_at: 1 << 32,
                    ..base
                },
                BindingError::Expires(1 << 32),
            ),
        ];
        for (p, e) in cases {
            assert_eq!(Binding::new(&p), Err(e));
        }
        let at_bounds = BindingParts {
            contact: &long[..1024],
            instance: Some(&long[..256]),
            call_id: &long[..256],
            params: Some(&long[..1024]),
            expires_at: u64::from(u32::MAX),
            ..base
        };
        assert_eq!(Binding::new(&at_bounds).unwrap().parts(), at_bounds);
    }

    #[test]
    fn put_lookup_replace_remove() {
        let (loc, mut w) = table();
        assert!(loc.writer().is_none(), "one writer only");
        let alice = b"alice@atlanta.example.com";
        assert_eq!(loc.lookup(alice), None);
        let one = vec![b("sip:alice@192.0.2.1:5060", "192.0.2.1:5060", 100)];
        w.put(alice, one.clone()).unwrap();
        assert_eq!(loc.lookup(alice).as_deref(), Some(&one[..]));
        assert_eq!(loc.with_bindings(alice, |l| l.len()), Some(1));
        assert_eq!(loc.lookup(b"alice@atlanta.example.co"), None);
        assert_eq!((loc.len(), loc.bindings()), (1, 1));
        let two = vec![
            b("sip:alice@192.0.2.1:5060", "192.0.2.1:5060", 200),
            b("sip:alice@198.51.100.9:5070", "198.51.100.9:5070", 150),
        ];
        w.put(alice, two.clone()).unwrap();
        w.put(b"bob@biloxi.example.com", one.clone()).unwrap();
        assert_eq!(loc.lookup(alice).as_deref(), Some(&two[..]));
        assert_eq!((loc.len(), loc.bindings()), (2, 3));
        check_indexes(&loc, &w);
        w.put(alice, Vec::new()).unwrap();
        assert_eq!(loc.lookup(alice), None);
        assert_eq!((loc.len(), loc.bindings()), (1, 1));
        w.put(b"nobody@x", Vec::new()).unwrap();
        assert_eq!(loc.len(), 1);
        check_indexes(&loc, &w);
        assert_eq!(
            w.put(b"c@x", vec![one[0].clone(); MAX_BINDINGS + 1]),
            Err(PutError::TooManyBindings(MAX_BINDINGS + 1))
        );
    }

    #[test]
    fn a_full_table_refuses_new_aors_but_not_updates() {
        let loc = Arc::new(Location::new(2));
        let mut w = loc.writer().unwrap();
        let l = vec![b("sip:a@x", "192.0.2.1:1", 10)];
        w.put(b"a@x", l.clone()).unwrap();
        w.put(b"b@x", l.clone()).unwrap();
        assert_eq!(w.put(b"c@x", l.clone()), Err(PutError::Full(2)));
        let batch = [(&b"c@x"[..], l.clone()), (&b"a@x"[..], Vec::new())];
        w.put_many(batch).unwrap();
        assert_eq!(
            w.put_many([(&b"d@x"[..], l.clone())]),
            Err(PutError::Full(2))
        );
        w.put(b"b@x", l.clone()).unwrap();
        assert_eq!((loc.lookup(b"a@x"), loc.len()), (None, 2));
    }

    #[test]
    fn put_many_keeps_the_last_change_of_a_key() {
        let (loc, mut w) = table();
        let l1 = vec![b("sip:1@x", "192.0.2.1:1", 10)];
        let l2 = vec![b("sip:2@x", "192.0.2.2:2", 20)];
        let keys: Vec<Vec<u8>> = (0..5000).map(|i| format!("u{i}@x").into_bytes()).collect();
        w.put_many(keys.iter().map(|k| (&k[..], l1.clone())))
            .unwrap();
        let mut batch: Vec<(&[u8], Vec<Binding>)> = Vec::new();
        for k in &keys[..100] {
            batch.push((k, l2.clone()));
            batch.push((k, Vec::new()));
        }
        for k in &keys[100..200] {
            batch.push((k, Vec::new()));
            batch.push((k, l2.clone()));
        }
        w.put_many(batch).unwrap();
        assert_eq!(loc.len(), 4900);
        assert_eq!(loc.lookup(&keys[50]), None);
        assert_eq!(loc.lookup(&keys[150]).as_deref(), Some(&l2[..]));
        assert_eq!(loc.lookup(&keys[250]).as_deref(), Some(&l1[..]));
        check_indexes(&loc, &w);
    }

    /// A contact registered over a stream is that connection's: only a
    /// message on the same connection (slot and generation) speaks for
    /// it, never a datagram from the same address, and the scope id and
    /// connection share the text's tail without disturbing each other.
    #[test]
    fn a_stream_binding_is_its_connection_only() {
        let conn = Flow {
            worker: 1,
            slot: 42,
            generation: 7,
        };
        let (loc, mut w) = table();
        for flow in ["192.0.2.1:40000", "[fe80::1%7]:40000"] {
            let mut p = parts("sip:alice@10.0.0.1:5061;transport=tls", flow, 10, 1);
            p.conn = Some(conn);
            let b = Binding::new(&p).unwrap();
            assert_eq!(b.parts(), p);
            assert_eq!(b.flow(), addr(flow));
            assert!(b.is_flow(addr(flow), Some(conn)));
            assert!(!b.is_flow(addr(flow), None), "a datagram from its address");
            let again = Flow {
                generation: 8,
                ..conn
            };
            assert!(
                !b.is_flow(addr(flow), Some(again)),
                "the slot's next connection"
            );
            w.put(b"alice@x", vec![b]).unwrap();
            let who = |c| loc.identity_of_flow((addr(flow), c), |k| k.to_vec());
            assert_eq!(who(Some(conn)), Some(b"alice@x".to_vec()));
            assert_eq!((who(None), who(Some(again))), (None, None));
        }
    }

    /// Every AoR on a connection is found, also past the flow index's
    /// named run (the writer's overflow), and nothing of another one.
    #[test]
    fn the_aors_on_a_connection_are_all_found() {
        let (loc, mut w) = table();
        let conn = Flow {
            worker: 0,
            slot: 3,
            generation: 1,
        };
        let other = Flow {
            generation: 2,
            ..conn
        };
        let src = "192.0.2.1:40000";
        let on = |c| {
            let mut p = parts("sip:line@192.0.2.1:40000;transport=tls", src, 10, 1);
            p.conn = Some(c);
            Binding::new(&p).unwrap()
        };
        let n = FLOW_NAMED + 5;
        let keys: Vec<Vec<u8>> = (0..n).map(|i| format!("line{i}@x").into_bytes()).collect();
        for k in &keys {
            w.put(k, vec![on(conn)]).unwrap();
        }
        w.put(b"next@x", vec![on(other)]).unwrap();
        w.put(b"udp@x", vec![b("sip:u@192.0.2.1:40000", src, 10)])
            .unwrap();
        let mut got = w.aors_on_conn(addr(src), conn, 1000);
        got.sort();
        let mut want = keys.clone();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(
            w.aors_on_conn(addr(src), other, 1000),
            vec![b"next@x".to_vec()]
        );
        assert_eq!(w.aors_on_conn(addr(src), conn, 3).len(), 3, "bounded");
        drop(loc);
    }

    #[test]
    fn the_flow_index_follows_registrations() {
        let (loc, mut w) = table();
        let who = |src: &str| loc.identity_of_flow((addr(src), None), |k| k.to_vec());
        let (a, b_) = (&b"alice@x"[..], &b"bob@x"[..]);
        w.put(a, vec![b("sip:alice@192.0.2.1:5060", "192.0.2.1:5060", 10)])
            .unwrap();
        assert_eq!(who("192.0.2.1:5060").as_deref(), Some(a));
        assert_eq!(who("192.0.2.1:5061"), None);
        assert_eq!(who("[::ffff:192.0.2.1]:5060"), None);
        // Re-registration from a new source (NAT rebinding): the old flow
        // no longer names alice.
        w.put(
            a,
            vec![b("sip:alice@192.0.2.1:5060", "203.0.113.4:40000", 20)],
        )
        .unwrap();
        assert_eq!(who("192.0.2.1:5060"), None);
        assert_eq!(who("203.0.113.4:40000").as_deref(), Some(a));
        // A flow shared by two AoRs names one of them while either holds it.
        w.put(
            b_,
            vec![b("sip:bob@203.0.113.4:40000", "203.0.113.4:40000", 20)],
        )
        .unwrap();
        assert!(matches!(who("203.0.113.4:40000").as_deref(), Some(k) if k == a || k == b_));
        w.put(a, Vec::new()).unwrap();
        assert_eq!(who("203.0.113.4:40000").as_deref(), Some(b_));
        // IPv6 with a scope: the scope is part of the address.
        w.put(b_, vec![b("sip:bob@[fe80::1]", "[fe80::1%3]:5060", 20)])
            .unwrap();
        assert_eq!(who("203.0.113.4:40000"), None);
        assert_eq!(who("[fe80::1%3]:5060").as_deref(), Some(b_));
        assert_eq!(who("[fe80::1%4]:5060"), None);
        check_indexes(&loc, &w);
        w.put(b_, Vec::new()).unwrap();
        assert_eq!(who("[fe80::1%3]:5060"), None);
        check_indexes(&loc, &w);
        assert!(loc.flows.iter().all(|f| f.load().0.is_empty()));
    }

    #[test]
    fn a_flow_shared_by_many_aors_names_a_few_and_always_one_registered() {
        // Every user behind one P-CSCF registers from its address.
        let (loc, mut w) = table();
        let sbc = "198.51.100.7:5060";
        let keys: Vec<Vec<u8>> = (0..50).map(|i| format!("u{i}@x").into_bytes()).collect();
        for k in &keys {
            w.put(k, vec![b("sip:u@198.51.100.7:5060", sbc, 30)])
                .unwrap();
        }
        check_indexes(&loc, &w);
        let part = loc.flows[flow_part_of(flow_hash(addr(sbc)))].load();
        assert_eq!(part.0.len(), FLOW_NAMED, "the partition stays small");
        // Named ones leave first, then the rest: whoever is left is named.
        let mut left: BTreeSet<Vec<u8>> = keys.iter().cloned().collect();
        let order: Vec<usize> = (0..50).map(|i| (i * 7) % 50).collect();
        for i in order {
            w.put(&keys[i], Vec::new()).unwrap();
            left.remove(&keys[i]);
            let who = loc.identity_of_flow((addr(sbc), None), |k| k.to_vec());
            match &who {
                Some(k) => assert!(left.contains(k), "named {k:?}, not registered"),
                None => assert!(left.is_empty(), "{} left, none named", left.len()),
            }
            check_indexes(&loc, &w);
        }
        assert!(w.crowded.is_empty());
    }

    #[test]
    fn sweep_is_bounded_and_exact() {
        let (loc, mut w) = table();
        // 300 AoRs, AoR i with bindings expiring at 100 + i % 50 and, for
        // odd i, a second one at 1000 + i.
        let mut want_removed = 0;
        for i in 0..300u64 {
            let mut l = vec![b(
                "sip:u@192.0.2.1",
                &format!("192.0.2.{}:{}", i % 250, 1000 + i),
                100 + i % 50,
            )];
            if i % 2 == 1 {
                l.push(b(
                    "sip:u@198.51.100.1",
                    &format!("198.51.100.1:{}", 1000 + i),
                    1000 + i,
                ));
            }
            want_removed += l.iter().filter(|b| b.expires_at() <= 130).count();
            w.put(format!("u{i}@x").as_bytes(), l).unwrap();
        }
        assert_eq!(w.sweep(99, 1000), vec![], "nothing due yet");
        assert_eq!(w.sweep(130, 0), vec![], "max 0");
        let mut removed = 0;
        let mut last_due = 0;
        loop {
            let xs = w.sweep(130, 7);
            let n: usize = xs.iter().map(|x| x.removed.len()).sum();
            assert!(n <= 7);
            for x in &xs {
                for b in &x.removed {
                    assert!(
                        b.expires_at() <= 130 && b.expires_at() >= last_due,
                        "earliest first"
                    );
                    last_due = b.expires_at();
                }
                // What remains is what the table holds now.
                let now = loc.lookup(&x.aor);
                assert_eq!(now.as_deref().unwrap_or(&[]), &x.remaining[..]);
            }
            removed += n;
            check_indexes(&loc, &w);
            if n == 0 {
                break;
            }
            assert!(n == 7 || w.sweep(130, 7).is_empty());
        }
        assert_eq!(removed, want_removed);
        for i in 0..300u64 {
            let l = loc.lookup(format!("u{i}@x").as_bytes());
            let due = 100 + i % 50 <= 130;
            match (due, i % 2) {
                (true, 0) => assert_eq!(l, None),
                (true, _) => assert_eq!(l.unwrap().len(), 1),
                (false, n) => assert_eq!(l.unwrap().len(), 1 + n as usize),
            }
        }
        assert_eq!(loc.bindings(), 300 + 150 - want_removed);
    }

    /// Two AoRs whose 32-bit hashes collide: found by the birthday bound.
    fn colliding_keys() -> (Vec<u8>, Vec<u8>) {
        let mut seen: HashMap<u32, u64> = HashMap::new();
        for i in 0u64.. {
            let k = format!("c{i}@collide.example");
            if let Some(j) = seen.insert(aor_hash(k.as_bytes()), i) {
                return (format!("c{j}@collide.example").into_bytes(), k.into_bytes());
            }
        }
        unreachable!()
    }

    #[test]
    fn colliding_aors_stay_apart_in_the_table_and_both_indexes() {
        let (k1, k2) = colliding_keys();
        assert_eq!(aor_hash(&k1), aor_hash(&k2));
        let (loc, mut w) = table();
        let who = |src: &str| loc.identity_of_flow((addr(src), None), |k| k.to_vec());
        // Same flow, same expiry: one entry in each index for both.
        let l = vec![b("sip:c@192.0.2.1", "192.0.2.1:5060", 50)];
        w.put(&k1, l.clone()).unwrap();
        w.put(&k2, l.clone()).unwrap();
        assert_eq!(w.expiry_entries(), 1);
        check_indexes(&loc, &w);
        w.put(&k1, vec![b("sip:c@192.0.2.9", "192.0.2.9:5060", 60)])
            .unwrap();
        assert_eq!(who("192.0.2.1:5060"), Some(k2.clone()));
        assert_eq!(who("192.0.2.9:5060"), Some(k1.clone()));
        check_indexes(&loc, &w);
        w.put(&k1, l.clone()).unwrap();
        // A sweep budget of one: one AoR at a time, the entry kept for
        // the other.
        let x = w.sweep(50, 1);
        assert_eq!(x.len(), 1);
        check_indexes(&loc, &w);
        let y = w.sweep(50, 1);
        assert_eq!(y.len(), 1);
        assert_ne!(x[0].aor, y[0].aor);
        assert_eq!((loc.len(), w.expiry_entries()), (0, 0));
        check_indexes(&loc, &w);
    }

    /// splitmix64.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Random puts, removals, batches and sweeps against a `BTreeMap`
    /// model: same contents, same flow answers, exact indexes throughout.
    #[test]
    fn random_operations_match_a_model() {
        let (loc, mut w) = table();
        let mut model: BTreeMap<Vec<u8>, Vec<Binding>> = BTreeMap::new();
        let mut rng = Rng(7);
        let mut now = 1000u64;
        let random_list = |rng: &mut Rng, now: u64| -> Vec<Binding> {
            (0..rng.below(4))
                .map(|_| {
                    let flow = format!(
                        "10.0.{}.{}:{}",
                        rng.below(3),
                        rng.below(4),
                        5060 + rng.below(3)
                    );
                    b("sip:x@10.0.0.1", &flow, now + rng.below(40))
                })
                .collect()
        };
        for step in 0..3000 {
            match rng.below(10) {
                0..=5 => {
                    let k = format!("u{}@x", rng.below(200)).into_bytes();
                    let l = random_list(&mut rng, now);
                    w.put(&k, l.clone()).unwrap();
                    if l.is_empty() {
                        model.remove(&k);
                    } else {
                        model.insert(k, l);
                    }
                }
                6 => {
                    let batch: Vec<(Vec<u8>, Vec<Binding>)> = (0..rng.below(20))
                        .map(|_| {
                            (
                                format!("u{}@x", rng.below(200)).into_bytes(),
                                random_list(&mut rng, now),
                            )
                        })
                        .collect();
                    w.put_many(batch.iter().map(|(k, l)| (&k[..], l.clone())))
                        .unwrap();
                    for (k, l) in batch {
                        if l.is_empty() {
                            model.remove(&k);
                        } else {
                            model.insert(k, l);
                        }
                    }
                }
                _ => {
                    now += rng.below(5);
                    let max = rng.below(6) as usize;
                    let n: usize = w.sweep(now, max).iter().map(|x| x.removed.len()).sum();
                    assert!(n <= max);
                    // Apply the same to the model: earliest first, `n` of them.
                    let mut due: Vec<(u64, Vec<u8>, usize)> = Vec::new();
                    for (k, l) in &model {
                        for (i, b) in l.iter().enumerate() {
                            if b.expires_at() <= now {
                                due.push((b.expires_at(), k.clone(), i));
                            }
                        }
                    }
                    assert!(
                        n == due.len().min(max),
                        "step {step}: {n} of {} due, max {max}",
                        due.len()
                    );
                    if n == due.len() {
                        model.retain(|_, l| {
                            l.retain(|b| b.expires_at() > now);
                            !l.is_empty()
                        });
                    } else {
                        // Which of equal expiries went is the table's choice:
                        // take the model from the table for the AoRs due.
                        for (_, k, _) in due {
                            match loc.lookup(&k) {
                                Some(l) => model.insert(k, l.to_vec()),
                                None => model.remove(&k),
                            };
                        }
                    }
                }
            }
            if step % 300 == 0 {
                check_indexes(&loc, &w);
            }
            assert_eq!(loc.len(), model.len());
        }
        check_indexes(&loc, &w);
        for (k, l) in &model {
            assert_eq!(loc.lookup(k).as_deref(), Some(&l[..]));
            for b in l {
                let who = loc
                    .identity_of_flow((b.flow(), b.conn()), |k| k.to_vec())
                    .unwrap();
                assert!(model[&who].iter().any(|x| x.flow() == b.flow()));
            }
        }
        for i in 0..200 {
            let k = format!("u{i}@x").into_bytes();
            assert_eq!(loc.lookup(&k).is_some(), model.contains_key(&k));
        }
    }

    /// Readers on other threads while the writer rewrites the same AoRs:
    /// every list read is one the writer wrote whole (all its bindings
    /// carry the generation in both CSeq and contact), never a mix.
    #[test]
    fn readers_see_the_old_or_the_new_list_never_a_torn_one() {
        let (loc, mut w) = table();
        const AORS: u32 = 64;
        let list = |g: u32, n: u32| -> Vec<Binding> {
            (0..n)
                .map(|i| {
                    let contact = format!("sip:gen{g}@192.0.2.{i}");
                    let flow = format!("192.0.2.{i}:{}", 1000 + g % 50_000);
                    Binding::new(&parts(&contact, &flow, 1000 + u64::from(g), g)).unwrap()
                })
                .collect()
        };
        for a in 0..AORS {
            w.put(format!("a{a}@x").as_bytes(), list(0, 1)).unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|r| {
                let (loc, stop) = (Arc::clone(&loc), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let (mut reads, mut last) = (0u64, [0u32; AORS as usize]);
                    while !stop.load(Ordering::Relaxed) {
                        for a in 0..AORS {
                            let k = format!("a{a}@x");
                            let g = loc
                                .with_bindings(k.as_bytes(), |l| {
                                    let g = l[0].cseq();
                                    let want = format!("sip:gen{g}@");
                                    for b in l {
                                        assert_eq!(b.cseq(), g);
                                        assert!(b.contact().starts_with(want.as_bytes()));
                                        assert_eq!(b.expires_at(), 1000 + u64::from(g));
                                    }
                                    assert_eq!(l.len() as u32, 1 + g % 5);
                                    g
                                })
                                .expect("never removed");
                            // Generations only move forward for one reader.
                            assert!(g >= last[a as usize], "reader {r}");
                            last[a as usize] = g;
                            reads += 1;
                        }
                    }
                    reads
                })
            })
            .collect();
        for g in 1..2000u32 {
            let a = g % AORS;
            w.put(format!("a{a}@x").as_bytes(), list(g, 1 + g % 5))
                .unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
        assert!(reads > 0);
        check_indexes(&loc, &w);
    }
}
