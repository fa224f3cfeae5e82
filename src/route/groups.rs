//! The pre-defined group table: group identity → the shard hosting the
//! group (its Controlling Function, seed 5.2.3.2.2 and Appendix C).
//!
//! Keys are canonical identities (`user@host`, host lowercased, no scheme,
//! port or parameters), so `sip:Grp1@GROUPS.example.net;transport=udp` and
//! `sip:Grp1@groups.example.net` are the same group. Lookups build the key in
//! a stack buffer: no allocation on the hot path.

use crate::sip::branch::StableHash;
use crate::sip::uri::{identity_bytes, Uri};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

/// Longest identity the table accepts (and looks up).
pub const MAX_IDENTITY: usize = 256;

/// The stable hash as a `HashMap` hasher: fast on short keys, and the table
/// only holds operator-provided keys, so HashDoS needs no random seed.
#[derive(Clone, Copy, Default)]
pub struct StableBuild;

pub struct StableHasher(StableHash);

impl Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0.byte(*b);
        }
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

#[derive(Clone, Default)]
pub struct GroupTable {
    map: HashMap<Box<[u8]>, u16, StableBuild>,
}

/// The canonical identity of `uri` into `key`; `None` if it does not fit.
pub fn identity_key<'k>(
    buf: &[u8],
    uri: &Uri,
    key: &'k mut [u8; MAX_IDENTITY],
) -> Option<&'k [u8]> {
    let mut n = 0usize;
    let mut overflow = false;
    identity_bytes(buf, uri, |b| {
        if n < MAX_IDENTITY {
            key[n] = b;
            n += 1;
        } else {
            overflow = true;
        }
    });
    (!overflow).then_some(&key[..n])
}

impl GroupTable {
    pub fn with_capacity(n: usize) -> GroupTable {
        GroupTable {
            map: HashMap::with_capacity_and_hasher(n, StableBuild),
        }
    }

    /// Insert a canonical identity; returns the previous shard if any.
    pub fn insert(&mut self, identity: &[u8], shard: u16) -> Option<u16> {
        assert!(identity.len() <= MAX_IDENTITY, "group identity too long");
        self.map.insert(identity.into(), shard)
    }

    #[inline]
    pub fn get(&self, identity: &[u8]) -> Option<u16> {
        self.map.get(identity).copied()
    }

    /// The hosting shard of the group named by `uri`, if it is a group.
    #[inline]
    pub fn lookup(&self, buf: &[u8], uri: &Uri) -> Option<usize> {
        if self.map.is_empty() {
            return None;
        }
        let mut key = [0u8; MAX_IDENTITY];
        let k = identity_key(buf, uri, &mut key)?;
        self.get(k).map(usize::from)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], u16)> {
        self.map.iter().map(|(k, v)| (&k[..], *v))
    }
}
