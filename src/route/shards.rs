//! Conversation Server shards and the stable spread of users over them.
//!
//! Users are placed by rendezvous (highest-random-weight) hashing: each
//! (user, shard) pair gets a score and the highest wins. Adding a shard moves
//! only the users it now wins (~1/N), removing one moves only its own users,
//! and every edge computes the same answer with no shared state.
//!
//! Invariant: at least one shard (asserted at construction).

use super::legs::Leg;
use crate::sip::branch::{fmix64, hash_bytes};
use std::collections::HashMap;
use std::net::SocketAddr;

#[derive(Debug, Clone)]
pub struct Shard {
    pub name: String,
    pub addr: SocketAddr,
    /// Hash of the shard's name: its rendezvous identity (a shard keeps its
    /// users when it moves address, as long as its name stays).
    pub id_hash: u64,
    /// Prebuilt `Route: <sip:CS;lr>,<sip:EDGE;lr;cpm-leg=..>\r\n` per leg.
    route_lines: [Box<[u8]>; 3],
}

impl Shard {
    pub fn route_line(&self, leg: Leg) -> &[u8] {
        &self.route_lines[leg.index()]
    }
}

#[derive(Debug, Clone)]
pub struct ShardSet {
    shards: Vec<Shard>,
    by_addr: HashMap<SocketAddr, u16>,
}

fn uri_host(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

impl ShardSet {
    /// `edge_hostport` is how the edge names itself in Route entries.
    pub fn new(list: &[(String, SocketAddr)], edge_hostport: &str) -> ShardSet {
        assert!(!list.is_empty(), "at least one CS shard is required");
        assert!(list.len() <= u16::MAX as usize, "too many shards");
        let shards: Vec<Shard> = list
            .iter()
            .map(|(name, addr)| Shard {
                name: name.clone(),
                addr: *addr,
                id_hash: hash_bytes(name.as_bytes()),
                route_lines: Leg::ALL.map(|leg| {
                    format!(
                        "Route: <sip:{};lr>,<sip:{};lr;cpm-leg={}>\r\n",
                        uri_host(*addr),
                        edge_hostport,
                        leg.marker()
                    )
                    .into_bytes()
                    .into_boxed_slice()
                }),
            })
            .collect();
        let by_addr = shards
            .iter()
            .enumerate()
            .map(|(i, s)| (s.addr, i as u16))
            .collect();
        ShardSet { shards, by_addr }
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    pub fn get(&self, i: usize) -> &Shard {
        &self.shards[i]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Shard> {
        self.shards.iter()
    }

    /// The shard whose address sent this datagram, if any.
    #[inline]
    pub fn by_addr(&self, src: SocketAddr) -> Option<usize> {
        self.by_addr.get(&src).map(|i| *i as usize)
    }

    pub fn by_name(&self, name: &str) -> Option<usize> {
        self.shards.iter().position(|s| s.name == name)
    }

    /// Rendezvous choice for a user identity hash.
    #[inline]
    pub fn pick(&self, user_hash: u64) -> usize {
        debug_assert!(!self.shards.is_empty());
        let mut best = 0;
        let mut best_score = 0u64;
        for (i, s) in self.shards.iter().enumerate() {
            let score = fmix64(user_hash ^ s.id_hash);
            if i == 0 || score > best_score {
                best = i;
                best_score = score;
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: usize) -> ShardSet {
        let list: Vec<_> = (0..n)
            .map(|i| {
                (
                    format!("cs{i}"),
                    SocketAddr::from(([127, 0, 0, 1], 7001 + i as u16)),
                )
            })
            .collect();
        ShardSet::new(&list, "127.0.0.1:5060")
    }

    #[test]
    fn adding_a_shard_moves_about_one_nth() {
        let (four, five) = (set(4), set(5));
        let users = 20_000;
        let mut moved = 0;
        let mut load = [0usize; 4];
        for u in 0..users {
            let h = hash_bytes(format!("user{u}@example.net").as_bytes());
            let a = four.pick(h);
            load[a] += 1;
            let b = five.pick(h);
            if a != b {
                moved += 1;
                assert_eq!(b, 4, "a user may only move to the new shard");
            }
        }
        // Expect 1/5 = 4000 moved; allow sampling noise.
        assert!((3400..4600).contains(&moved), "moved {moved}");
        for l in load {
            assert!((4400..5600).contains(&l), "unbalanced: {load:?}");
        }
    }

    #[test]
    fn route_lines_name_shard_then_edge_with_leg() {
        let s = set(1);
        assert_eq!(
            s.get(0).route_line(Leg::Controlling),
            b"Route: <sip:127.0.0.1:7001;lr>,<sip:127.0.0.1:5060;lr;cpm-leg=ctrl>\r\n"
        );
        assert_eq!(s.by_addr("127.0.0.1:7001".parse().unwrap()), Some(0));
        assert_eq!(s.by_addr("127.0.0.1:7002".parse().unwrap()), None);
    }
}
