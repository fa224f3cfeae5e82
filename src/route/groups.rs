//! The pre-defined group table: group identity → the shard hosting the
//! group (its Controlling Function, seed 5.2.3.2.2 and Appendix C).
//!
//! Keys are canonical identities (`user@host`, host lowercased, no scheme,
//! port or parameters), so `sip:Grp1@GROUPS.example.net;transport=udp` and
//! `sip:Grp1@groups.example.net` are the same group. Lookups build the key in
//! a stack buffer: no allocation on the hot path.

use crate::sip::hash::StableHash;
use crate::sip::uri::{Scheme, Uri};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

/// Longest identity the table accepts (and looks up).
pub const MAX_IDENTITY: usize = 256;

/// The stable hash as a `HashMap` hasher: fast on short keys, and the table
/// only holds operator-provided keys, so HashDoS needs no random seed.
#[derive(Clone, Copy, Default)]
pub struct StableBuild;

pub struct StableHasher(StableHash);

impl Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.bytes(bytes);
    }
    fn finish(&self) -> u64 {
        self.0.finish()
    }
}

impl BuildHasher for StableBuild {
    type Hasher = StableHasher;
    fn build_hasher(&self) -> StableHasher {
        StableHasher(StableHash::default())
    }
}

/// Number of partitions; an update copies only the partitions it touches.
pub const PARTS: usize = 256;

type Part = HashMap<Box<[u8]>, u16, StableBuild>;

/// Group identity → shard index, as 256 independently shared partitions.
///
/// Readers see an immutable value (it lives inside a published `Tables`
/// snapshot). A writer clones the table (256 `Arc` clones), changes it with
/// [`GroupTable::insert`]/[`GroupTable::remove`] — which copy a partition the
/// first time it is touched (`Arc::make_mut`) — and publishes the result
/// whole. A single-group move on a 1 000 000-group table copies ~4 000
/// entries instead of 1 000 000 (benches/groups.rs has the figures).
#[derive(Clone)]
pub struct GroupTable {
    parts: Vec<Arc<Part>>,
    len: usize,
}

impl Default for GroupTable {
    fn default() -> Self {
        GroupTable::with_capacity(0)
    }
}

#[inline]
fn part_of(identity: &[u8]) -> usize {
    let mut h = StableHash::default();
    h.bytes(identity);
    (h.finish() >> 56) as usize
}

/// The canonical identity of `uri` into `key`; `None` if it does not fit.
/// The bytes of [`identity_bytes`](crate::sip::uri::identity_bytes), copied as slices: the byte-at-a-time
/// closure cost a store and a bound check per byte of every identity
/// looked up (requests from the CS shards).
pub fn identity_key<'k>(
    buf: &[u8],
    uri: &Uri,
    key: &'k mut [u8; MAX_IDENTITY],
) -> Option<&'k [u8]> {
    let user = uri.user.get(buf);
    let n = match uri.scheme {
        Scheme::Sip | Scheme::Sips => {
            let host = uri.host.get(buf);
            let n = user.len() + 1 + host.len();
            let dst = key.get_mut(..n)?;
            dst[..user.len()].copy_from_slice(user);
            dst[user.len()] = b'@';
            let h = &mut dst[user.len() + 1..];
            h.copy_from_slice(host);
            h.make_ascii_lowercase();
            n
        }
        _ => {
            key.get_mut(..user.len())?.copy_from_slice(user);
            user.len()
        }
    };
    Some(&key[..n])
}

impl GroupTable {
    pub fn with_capacity(n: usize) -> GroupTable {
        GroupTable {
            parts: (0..PARTS)
                .map(|_| {
                    Arc::new(HashMap::with_capacity_and_hasher(
                        n / PARTS + 1,
                        StableBuild,
                    ))
                })
                .collect(),
            len: 0,
        }
    }

    /// Insert or move a canonical identity; returns the previous shard if any.
    pub fn insert(&mut self, identity: &[u8], shard: u16) -> Option<u16> {
        assert!(identity.len() <= MAX_IDENTITY, "group identity too long");
        let part = Arc::make_mut(&mut self.parts[part_of(identity)]);
        let prev = part.insert(identity.into(), shard);
        if prev.is_none() {
            self.len += 1;
        }
        prev
    }

    pub fn remove(&mut self, identity: &[u8]) -> Option<u16> {
        let i = part_of(identity);
        if !self.parts[i].contains_key(identity) {
            return None;
        }
        let prev = Arc::make_mut(&mut self.parts[i]).remove(identity);
        if prev.is_some() {
            self.len -= 1;
        }
        prev
    }

    #[inline]
    pub fn get(&self, identity: &[u8]) -> Option<u16> {
        self.parts[part_of(identity)].get(identity).copied()
    }

    /// The hosting shard of the group named by `uri`, if it is a group.
    #[inline]
    pub fn lookup(&self, buf: &[u8], uri: &Uri) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let mut key = [0u8; MAX_IDENTITY];
        let k = identity_key(buf, uri, &mut key)?;
        self.get(k).map(usize::from)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// All groups, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], u16)> {
        self.parts
            .iter()
            .flat_map(|p| p.iter().map(|(k, v)| (&k[..], *v)))
    }

    /// Groups hosted on `shard`.
    pub fn count_on(&self, shard: u16) -> usize {
        self.iter().filter(|(_, s)| *s == shard).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slice copies against the byte stream, up to and past the size
    /// limit, for each scheme.
    #[test]
    fn identity_key_is_the_identity_bytes() {
        use crate::sip::uri::{identity_bytes, parse};
        use crate::sip::Span;
        for scheme in ["sip:", "SIPS:", "tel:", "x-y:"] {
            for user in [0usize, 1, 7, 120, 254, 255, 256, 300] {
                for host in [1usize, 9, 134, 135, 136, 255, 256] {
                    let u: String = "aZ9.-".chars().cycle().take(user).collect();
                    let h: String = "Ex.NET-1".chars().cycle().take(host).collect();
                    let text = if user == 0 {
                        format!("{scheme}{h};p=1")
                    } else {
                        format!("{scheme}{u}@{h};p=1")
                    };
                    let buf = text.as_bytes();
                    let Some(uri) = parse(buf, Span::new(0, buf.len())) else {
                        continue;
                    };
                    let mut want = Vec::new();
                    identity_bytes(buf, &uri, |b| want.push(b));
                    let want = (want.len() <= MAX_IDENTITY).then_some(want);
                    let mut key = [0u8; MAX_IDENTITY];
                    let got = identity_key(buf, &uri, &mut key).map(<[u8]>::to_vec);
                    assert_eq!(got, want, "{text}");
                }
            }
        }
    }

    #[test]
    fn copy_on_write_leaves_the_published_table_untouched() {
        let mut a = GroupTable::with_capacity(1000);
        for i in 0..1000 {
            a.insert(format!("grp{i}@g").as_bytes(), (i % 4) as u16);
        }
        let published = a.clone();
        let mut b = published.clone();
        assert_eq!(b.insert(b"grp7@g", 3), Some(3));
        assert_eq!(b.insert(b"grp8@g", 1), Some(0));
        assert_eq!(b.remove(b"grp9@g"), Some(1));
        assert_eq!(b.remove(b"nope@g"), None);
        assert_eq!(
            (published.get(b"grp8@g"), b.get(b"grp8@g")),
            (Some(0), Some(1))
        );
        assert_eq!(
            (published.get(b"grp9@g"), b.get(b"grp9@g")),
            (Some(1), None)
        );
        assert_eq!((published.len(), b.len()), (1000, 999));
        // Only the touched partitions were copied.
        let shared = published
            .parts
            .iter()
            .zip(&b.parts)
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert!(shared >= PARTS - 3, "{shared}");
    }
}
