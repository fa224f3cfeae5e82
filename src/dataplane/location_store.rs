//! The location service's persistence: one redb table, AoR → its binding
//! list in a compact versioned encoding, so registrations survive a
//! restart. The registrar batches the changes of many REGISTERs into one
//! durable write transaction ([`LocationStore::commit`], group commit: one
//! fsync per batch, not per REGISTER).
//!
//! # Encoding (version 1)
//!
//! `version u8 = 1, count u8`, then per binding, integers little-endian:
//! `flags u8` (1: IPv6, 2: scope id, 4: instance, 8: params, 16: stream
//! connection),
//! `expires_at u64, q u16, cpm u8, reg_id u32, cseq u32`, the address (4 or
//! 16 bytes), `port u16`, the scope id (`u32`, non-zero) when flagged, then
//! `len u16 + bytes` of contact, instance (when flagged), Call-ID and
//! params (when flagged), then the stream connection (`worker u16, slot
//! u32, generation u32`) when flagged. Such a binding is written (the
//! batch's commit is what its `200` waits for) but not recovered: its
//! connection ended with the process that held it. The encoding is canonical: [`decode`] accepts
//! exactly what [`encode`] writes (flagged fields non-empty, no unknown
//! flag, no trailing byte), so decoding then encoding gives the same bytes.

use crate::route::groups::MAX_IDENTITY;
use crate::route::location::{Binding, BindingError, BindingParts, MAX_BINDINGS};
use crate::sip::feature_tag::CpmServices;
use crate::sip::flow::Flow;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::Path;

/// The encoding's version byte.
pub const FORMAT: u8 = 1;

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("location.v1");

const F_V6: u8 = 1;
const F_SCOPE: u8 = 2;
const F_INSTANCE: u8 = 4;
const F_PARAMS: u8 = 8;
const F_CONN: u8 = 16;
const F_KNOWN: u8 = F_V6 | F_SCOPE | F_INSTANCE | F_PARAMS | F_CONN;

/// Why stored bytes are not a binding list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes end inside a field that starts at this offset.
    #[error("location record: truncated at byte {0}")]
    Truncated(usize),
    /// A version this code does not read.
    #[error("location record: version {0} (reads 1)")]
    Version(u8),
    /// More bindings than an AoR holds.
    #[error("location record: {0} bindings (at most 32)")]
    Count(u8),
    /// Flag bits this version does not define, or IPv4 with a scope.
    #[error("location record: flags {0:#04x}")]
    Flags(u8),
    /// A flagged scope id of 0 or a flagged text of 0 bytes (not canonical).
    #[error("location record: empty flagged field at byte {0}")]
    Empty(usize),
    /// Bytes after the last binding.
    #[error("location record: {0} bytes after the last binding")]
    Trailing(usize),
    /// A binding out of the table's bounds.
    #[error("location record: {0}")]
    Binding(#[from] BindingError),
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database (file, transaction, table, commit).
    #[error("location store: {0}")]
    Db(Box<redb::Error>),
    /// A stored record does not decode.
    #[error("location store: record of {aor:?}: {source}")]
    Corrupt {
        /// The AoR, lossily as text.
        aor: String,
        /// What is wrong with its value.
        source: DecodeError,
    },
    /// An AoR key empty or longer than `MAX_IDENTITY` (stored or given).
    #[error("location store: AoR key of {0} bytes (1 to 256)")]
    Key(usize),
    /// A change with more bindings than an AoR holds.
    #[error("location store: {0} bindings for one AoR (at most 32)")]
    TooMany(usize),
}

fn dbe<E: Into<redb::Error>>(e: E) -> StoreError {
    // Boxed: redb's error is 160 bytes, every `Result` here would carry it.
    StoreError::Db(Box::new(e.into()))
}

fn put_text(out: &mut Vec<u8>, v: &[u8]) {
    // Binding bounds keep every text below 64 KiB.
    out.extend_from_slice(&(v.len() as u16).to_le_bytes());
    out.extend_from_slice(v);
}

/// Append the encoding of `bindings` (at most [`MAX_BINDINGS`]) to `out`.
pub fn encode(bindings: &[Binding], out: &mut Vec<u8>) {
    assert!(
        bindings.len() <= MAX_BINDINGS,
        "binding list of {}",
        bindings.len()
    );
    out.extend_from_slice(&[FORMAT, bindings.len() as u8]);
    for b in bindings {
        let p = b.parts();
        let (ip, scope) = match p.flow {
            SocketAddr::V4(a) => (a.ip().to_ipv6_mapped().octets(), 0),
            SocketAddr::V6(a) => (a.ip().octets(), a.scope_id()),
        };
        let ip = if p.flow.is_ipv6() { &ip[..] } else { &ip[12..] };
        let mut flags = 0;
        flags |= if p.flow.is_ipv6() { F_V6 } else { 0 };
        flags |= if scope != 0 { F_SCOPE } else { 0 };
        flags |= if p.instance.is_some() { F_INSTANCE } else { 0 };
        flags |= if p.params.is_some() { F_PARAMS } else { 0 };
        flags |= if p.conn.is_some() { F_CONN } else { 0 };
        out.push(flags);
        out.extend_from_slice(&p.expires_at.to_le_bytes());
        out.extend_from_slice(&p.q.to_le_bytes());
        out.push(p.cpm.0);
        out.extend_from_slice(&p.reg_id.to_le_bytes());
        out.extend_from_slice(&p.cseq.to_le_bytes());
        out.extend_from_slice(ip);
        out.extend_from_slice(&p.flow.port().to_le_bytes());
        if scope != 0 {
            out.extend_from_slice(&scope.to_le_bytes());
        }
        put_text(out, p.contact);
        if let Some(i) = p.instance {
            put_text(out, i);
        }
        put_text(out, p.call_id);
        if let Some(v) = p.params {
            put_text(out, v);
        }
        if let Some(c) = p.conn {
            out.extend_from_slice(&c.worker.to_le_bytes());
            out.extend_from_slice(&c.slot.to_le_bytes());
            out.extend_from_slice(&c.generation.to_le_bytes());
        }
    }
}

/// A cursor over a record: every read checked, an error names the offset.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let v = self
            .buf
            .get(self.at..self.at + n)
            .ok_or(DecodeError::Truncated(self.at))?;
        self.at += n;
        Ok(v)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_le_bytes)
    }

    fn text(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    /// A text that is present only when flagged, and then not empty.
    fn flagged_text(&mut self, on: bool) -> Result<Option<&'a [u8]>, DecodeError> {
        if !on {
            return Ok(None);
        }
        let at = self.at;
        let v = self.text()?;
        if v.is_empty() {
            return Err(DecodeError::Empty(at));
        }
        Ok(Some(v))
    }

    fn flow(&mut self, flags: u8) -> Result<SocketAddr, DecodeError> {
        if flags & F_V6 == 0 {
            if flags & F_SCOPE != 0 {
                return Err(DecodeError::Flags(flags));
            }
            let ip = Ipv4Addr::from(self.array::<4>()?);
            return Ok(SocketAddr::V4(SocketAddrV4::new(ip, self.u16()?)));
        }
        let ip = Ipv6Addr::from(self.array::<16>()?);
        let port = self.u16()?;
        let at = self.at;
        let scope = if flags & F_SCOPE != 0 { self.u32()? } else { 0 };
        if flags & F_SCOPE != 0 && scope == 0 {
            return Err(DecodeError::Empty(at));
        }
        Ok(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope)))
    }

    fn binding(&mut self) -> Result<Binding, DecodeError> {
        let flags = self.u8()?;
        if flags & !F_KNOWN != 0 {
            return Err(DecodeError::Flags(flags));
        }
        let expires_at = self.u64()?;
        let q = self.u16()?;
        let cpm = CpmServices(self.u8()?);
        let reg_id = self.u32()?;
        let cseq = self.u32()?;
        let flow = self.flow(flags)?;
        let contact = self.text()?;
        let instance = self.flagged_text(flags & F_INSTANCE != 0)?;
        let call_id = self.text()?;
        let params = self.flagged_text(flags & F_PARAMS != 0)?;
        let conn = if flags & F_CONN != 0 {
            Some(Flow {
                worker: self.u16()?,
                slot: self.u32()?,
                generation: self.u32()?,
            })
        } else {
            None
        };
        let p = BindingParts {
            contact,
            flow,
            expires_at,
            q,
            cpm,
            instance,
            reg_id,
            call_id,
            cseq,
            params,
            conn,
        };
        Ok(Binding::new(&p)?)
    }
}

/// The binding list `bytes` encode; any defect is an error, never a panic.
pub fn decode(bytes: &[u8]) -> Result<Vec<Binding>, DecodeError> {
    let mut r = Reader { buf: bytes, at: 0 };
    let version = r.u8()?;
    if version != FORMAT {
        return Err(DecodeError::Version(version));
    }
    let count = r.u8()?;
    if usize::from(count) > MAX_BINDINGS {
        return Err(DecodeError::Count(count));
    }
    let mut out = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        out.push(r.binding()?);
    }
    match bytes.len() - r.at {
        0 => Ok(out),
        n => Err(DecodeError::Trailing(n)),
    }
}

fn check_key(aor: &[u8]) -> Result<(), StoreError> {
    if aor.is_empty() || aor.len() > MAX_IDENTITY {
        return Err(StoreError::Key(aor.len()));
    }
    Ok(())
}

/// Stored AoRs with their bindings, as [`LocationStore::load`] recovers
/// them (what `LocationWriter::put_many` takes).
pub type Records = Vec<(Vec<u8>, Vec<Binding>)>;

/// The redb file of the location service.
pub struct LocationStore {
    db: Database,
}

/// What recovery does with one stored AoR.
enum Fix {
    Remove(Vec<u8>),
    Rewrite(Vec<u8>, Vec<Binding>),
}

impl LocationStore {
    /// Open (or create) the store at `path`.
    pub fn open(path: &Path) -> Result<LocationStore, StoreError> {
        let db = Database::create(path).map_err(dbe)?;
        // The table exists from the first open on, so reads never miss it.
        let tx = db.begin_write().map_err(dbe)?;
        tx.open_table(TABLE).map_err(dbe)?;
        tx.commit().map_err(dbe)?;
        Ok(LocationStore { db })
    }

    /// Every stored AoR with its bindings still valid at `now_s` (unix
    /// seconds). Lapsed bindings are dropped and deleted from the file in
    /// the same (one) transaction. A corrupt record fails the whole load:
    /// recovery does not guess.
    pub fn load(&self, now_s: u64) -> Result<Records, StoreError> {
        let tx = self.db.begin_write().map_err(dbe)?;
        let mut out = Vec::new();
        {
            let mut table = tx.open_table(TABLE).map_err(dbe)?;
            let mut fixes = Vec::new();
            for entry in table.iter().map_err(dbe)? {
                let (k, v) = entry.map_err(dbe)?;
                let (aor, value) = (k.value(), v.value());
                check_key(aor)?;
                let mut list = decode(value).map_err(|source| StoreError::Corrupt {
                    aor: String::from_utf8_lossy(aor).into_owned(),
                    source,
                })?;
                let n = list.len();
                // A stream binding's connection ended with the process
                // that held it: the client registers again on a new one.
                list.retain(|b| b.expires_at() > now_s && b.conn().is_none());
                match (list.len(), n) {
                    (0, _) => fixes.push(Fix::Remove(aor.to_vec())),
                    (m, n) if m < n => fixes.push(Fix::Rewrite(aor.to_vec(), list.clone())),
                    _ => {}
                }
                if !list.is_empty() {
                    out.push((aor.to_vec(), list));
                }
            }
            let mut buf = Vec::new();
            for fix in fixes {
                match fix {
                    Fix::Remove(aor) => {
                        table.remove(&aor[..]).map_err(dbe)?;
                    }
                    Fix::Rewrite(aor, list) => {
                        buf.clear();
                        encode(&list, &mut buf);
                        table.insert(&aor[..], &buf[..]).map_err(dbe)?;
                    }
                }
            }
        }
        tx.commit().map_err(dbe)?;
        Ok(out)
    }

    /// Write a batch of changes in ONE durable transaction (group commit):
    /// each AoR's stored list becomes the one given, empty deletes it. The
    /// whole batch is refused, and nothing written, if one change is out of
    /// bounds.
    pub fn commit<K: AsRef<[u8]>, B: AsRef<[Binding]>>(
        &mut self,
        changes: &[(K, B)],
    ) -> Result<(), StoreError> {
        for (k, b) in changes {
            check_key(k.as_ref())?;
            if b.as_ref().len() > MAX_BINDINGS {
                return Err(StoreError::TooMany(b.as_ref().len()));
            }
        }
        // Durability::Immediate (redb's default): persisted when this returns.
        let tx = self.db.begin_write().map_err(dbe)?;
        {
            let mut table = tx.open_table(TABLE).map_err(dbe)?;
            let mut buf = Vec::new();
            for (k, b) in changes {
                let (aor, list) = (k.as_ref(), b.as_ref());
                if list.is_empty() {
                    table.remove(aor).map_err(dbe)?;
                } else {
                    buf.clear();
                    encode(list, &mut buf);
                    table.insert(aor, &buf[..]).map_err(dbe)?;
                }
            }
        }
        tx.commit().map_err(dbe)?;
        Ok(())
    }

    /// AoRs stored (expired ones included until the next load).
    pub fn len(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(dbe)?;
        let table = tx.open_table(TABLE).map_err(dbe)?;
        table.len().map_err(dbe)
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }

    /// Store raw bytes as the value of `aor` (tests of corrupt records).
    #[cfg(test)]
    fn put_raw(&mut self, aor: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(dbe)?;
        tx.open_table(TABLE)
            .map_err(dbe)?
            .insert(aor, value)
            .map_err(dbe)?;
        tx.commit().map_err(dbe)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A file path unique to this process and call, removed on drop.
    struct TempPath(PathBuf);

    impl TempPath {
        fn new(tag: &str) -> TempPath {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let name = format!("cpm-edge-location-{tag}-{}-{n}.redb", std::process::id());
            let p = std::env::temp_dir().join(name);
            let _ = std::fs::remove_file(&p);
            TempPath(p)
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn binding(
        contact: &str,
        flow: &str,
        expires_at: u64,
        instance: bool,
        params: bool,
    ) -> Binding {
        Binding::new(&BindingParts {
            contact: contact.as_bytes(),
            flow: flow.parse().unwrap(),
            expires_at,
            q: 500,
            cpm: CpmServices(CpmServices::SESSION | CpmServices::FILETRANSFER),
            instance: instance.then_some(&b"<urn:gsma:imei:35209900-176148-1>"[..]),
            reg_id: 1,
            call_id: b"843817637684230@998sdasdh09",
            cseq: 1826,
            params: params.then_some(
                &b"+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.msg\""[..],
            ),
            conn: None,
        })
        .unwrap()
    }

    fn sample() -> Vec<Binding> {
        vec![
            binding(
                "sip:+15551234567@198.51.100.7:49152;transport=udp",
                "198.51.100.7:49152",
                5000,
                true,
                true,
            ),
            binding(
                "sip:alice@[2001:db8::7]:5060",
                "[2001:db8::7]:5060",
                4000,
                false,
                false,
            ),
            binding("sip:alice@[fe80::7]", "[fe80::7%2]:5070", 4500, true, false),
        ]
    }

    #[test]
    fn encoding_round_trips_and_is_canonical() {
        let list = sample();
        let mut buf = Vec::new();
        encode(&list, &mut buf);
        assert_eq!(buf[..2], [FORMAT, 3]);
        assert_eq!(decode(&buf).unwrap(), list);
        let mut empty = Vec::new();
        encode(&[], &mut empty);
        assert_eq!(decode(&empty).unwrap(), vec![]);
        // The first binding: 1 + 8 + 2 + 1 + 4 + 4 + 4 + 2 header bytes,
        // then four texts with their lengths.
        let one = &list[..1];
        let mut b1 = Vec::new();
        encode(one, &mut b1);
        let texts = 49 + 33 + 27 + 66;
        assert_eq!(b1.len(), 2 + 26 + 4 * 2 + texts);
    }

    #[test]
    fn corrupt_bytes_are_errors_not_panics() {
        let mut good = Vec::new();
        encode(&sample(), &mut good);
        // Every truncation is an error.
        for n in 0..good.len() {
            assert!(decode(&good[..n]).is_err(), "{n}");
        }
        assert_eq!(decode(&[2, 0]), Err(DecodeError::Version(2)));
        assert_eq!(decode(&[1, 33]), Err(DecodeError::Count(33)));
        assert_eq!(decode(&[1, 0, 9]), Err(DecodeError::Trailing(1)));
        assert_eq!(decode(&[]), Err(DecodeError::Truncated(0)));
        let mut bad = good.clone();
        bad[2] |= 0x20;
        assert!(matches!(decode(&bad), Err(DecodeError::Flags(_))));
        // q of 1001 permille (bytes 11-12 of the first binding).
        let mut bad = good.clone();
        bad[11..13].copy_from_slice(&1001u16.to_le_bytes());
        assert_eq!(
            decode(&bad),
            Err(DecodeError::Binding(BindingError::Q(1001)))
        );
        // An expiry past 2106.
        let mut bad = good.clone();
        bad[3..11].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(
            decode(&bad),
            Err(DecodeError::Binding(BindingError::Expires(_)))
        ));
        // A flagged instance of 0 bytes.
        let v4 = binding("sip:a@x", "192.0.2.1:1", 9, true, false);
        let mut b = Vec::new();
        encode(&[v4], &mut b);
        let at = 2 + 26 + 2 + 7;
        b[at..at + 2].copy_from_slice(&[0, 0]);
        b.truncate(at + 2);
        assert_eq!(decode(&b), Err(DecodeError::Empty(at)));
        // Every single-byte change decodes to an error or to a list that
        // encodes back to exactly those bytes.
        for i in 0..good.len() {
            for x in [1u8, 0x80, 0xff] {
                let mut m = good.clone();
                m[i] ^= x;
                if let Ok(l) = decode(&m) {
                    let mut again = Vec::new();
                    encode(&l, &mut again);
                    assert_eq!(again, m, "byte {i} ^ {x:#x}");
                }
            }
        }
    }

    #[test]
    fn a_file_round_trips_and_reopens() {
        let path = TempPath::new("reopen");
        let list = sample();
        {
            let mut s = LocationStore::open(&path.0).unwrap();
            assert!(s.is_empty().unwrap());
            let batch: Vec<(Vec<u8>, Vec<Binding>)> = (0..100)
                .map(|i| (format!("u{i}@example.net").into_bytes(), list.clone()))
                .collect();
            s.commit(&batch).unwrap();
            s.commit(&[(b"u7@example.net".to_vec(), Vec::new())])
                .unwrap();
            s.commit(&[(b"u8@example.net".to_vec(), list[1..2].to_vec())])
                .unwrap();
            assert_eq!(s.len().unwrap(), 99);
            assert!(matches!(
                s.commit(&[(Vec::new(), list.clone())]),
                Err(StoreError::Key(0))
            ));
            let big = vec![list[0].clone(); MAX_BINDINGS + 1];
            assert!(matches!(
                s.commit(&[(b"x@y".to_vec(), big)]),
                Err(StoreError::TooMany(33))
            ));
        }
        let s = LocationStore::open(&path.0).unwrap();
        let got = s.load(0).unwrap();
        assert_eq!(got.len(), 99);
        for (aor, l) in &got {
            match &aor[..] {
                b"u8@example.net" => assert_eq!(l, &list[1..2]),
                _ => assert_eq!(l, &list),
            }
        }
        assert!(!got.iter().any(|(a, _)| a == b"u7@example.net"));
    }

    /// A binding over a stream: its connection is encoded (canonically),
    /// but a load drops it, for the connection ended with the process.
    #[test]
    fn a_stream_binding_is_stored_but_not_recovered() {
        let conn = Flow {
            worker: 3,
            slot: 70_000,
            generation: 9,
        };
        let over_tls = Binding::new(&BindingParts {
            conn: Some(conn),
            ..sample()[1].parts()
        })
        .unwrap();
        assert_eq!(over_tls.conn(), Some(conn));
        let list = vec![sample()[0].clone(), over_tls.clone()];
        let mut buf = Vec::new();
        encode(&list, &mut buf);
        assert_eq!(decode(&buf).unwrap(), list);
        for n in 0..buf.len() {
            assert!(decode(&buf[..n]).is_err(), "{n}");
        }
        let path = TempPath::new("stream");
        let mut s = LocationStore::open(&path.0).unwrap();
        s.commit(&[
            (b"mixed@x".to_vec(), list.clone()),
            (b"tls@x".to_vec(), vec![over_tls]),
        ])
        .unwrap();
        let got = s.load(1000).unwrap();
        assert_eq!(got, vec![(b"mixed@x".to_vec(), vec![list[0].clone()])]);
        assert_eq!(s.len().unwrap(), 1);
    }

    #[test]
    fn load_drops_lapsed_bindings_and_deletes_them_from_the_file() {
        let path = TempPath::new("expiry");
        let mut s = LocationStore::open(&path.0).unwrap();
        let list = sample(); // expiries 5000, 4000, 4500
        s.commit(&[
            (b"keep@x".to_vec(), list.clone()),
            (b"gone@x".to_vec(), list[1..2].to_vec()),
        ])
        .unwrap();
        let got = s.load(4000).unwrap();
        assert_eq!(
            got,
            vec![(b"keep@x".to_vec(), vec![list[0].clone(), list[2].clone()])]
        );
        assert_eq!(s.len().unwrap(), 1);
        drop(s);
        let s = LocationStore::open(&path.0).unwrap();
        // Rewritten in the file: a later load at an earlier clock sees the
        // trimmed list, not the original.
        assert_eq!(s.load(0).unwrap(), got);
        assert_eq!(s.load(5000).unwrap(), vec![]);
        assert!(s.is_empty().unwrap());
    }

    #[test]
    fn a_corrupt_record_fails_the_load() {
        let path = TempPath::new("corrupt");
        let mut s = LocationStore::open(&path.0).unwrap();
        s.commit(&[(b"ok@x".to_vec(), sample())]).unwrap();
        s.put_raw(b"bad@x", &[1, 1, 0, 0]).unwrap();
        match s.load(0) {
            Err(StoreError::Corrupt { aor, source }) => {
                assert_eq!(aor, "bad@x");
                assert_eq!(source, DecodeError::Truncated(3));
            }
            other => panic!("{other:?}"),
        }
        s.put_raw(&[b'k'; 300], &[1, 0]).unwrap();
        s.put_raw(b"bad@x", &[1, 0]).unwrap();
        assert!(matches!(s.load(0), Err(StoreError::Key(300))));
    }
}
