//! Conversation Server shards and the stable spread of users over them.
//!
//! Users are placed by rendezvous (highest-random-weight) hashing: each
//! (user, shard) pair gets a score and the highest wins. Adding a shard moves
//! only the users it now wins (~1/N), removing one moves only its own users,
//! and every edge computes the same answer with no shared state.
//!
//! Each shard has a state: `Up` (takes users and its groups), `Draining`
//! (takes no new users; keeps its groups until they are moved), `Down`
//! (failed health checks: its users move to their next rendezvous choice, its
//! groups to its backup or get 503). Removed shards keep their slot as a
//! tombstone so indices held by the group table stay valid.
//!
//! Invariants: at most [`MAX_SHARDS`] slots; at least one shard at start.

use super::legs::Leg;
use crate::sip::hash::{fmix64, hash_bytes};
use std::collections::HashMap;
use std::net::SocketAddr;

/// Most shard slots (live + removed) an edge holds.
pub const MAX_SHARDS: usize = 256;

/// The hasher of the shard-address index, looked up for every datagram's
/// source (who may assert an identity, who may choose a next hop): a
/// multiply-rotate fold of the few integers `SocketAddr` hashes into, then
/// murmur3's finaliser for hashbrown's top bits. The index holds only
/// operator-configured addresses, so an attacker's lookups cannot grow a
/// probe chain (no HashDoS, no seed needed).
#[derive(Clone, Copy, Default)]
pub struct AddrBuild;

#[derive(Default)]
pub struct AddrHasher(u64);

impl std::hash::Hasher for AddrHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    #[inline]
    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v));
    }
    #[inline]
    fn write_u16(&mut self, v: u16) {
        self.write_u64(u64::from(v));
    }
    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(23) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    #[inline]
    fn write_u128(&mut self, v: u128) {
        self.write_u64(v as u64);
        self.write_u64((v >> 64) as u64);
    }
    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        fmix64(self.0)
    }
}

impl std::hash::BuildHasher for AddrBuild {
    type Hasher = AddrHasher;
    #[inline]
    fn build_hasher(&self) -> AddrHasher {
        AddrHasher::default()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardState {
    Up,
    Draining,
    Down,
}

impl ShardState {
    pub fn name(self) -> &'static str {
        match self {
            ShardState::Up => "up",
            ShardState::Draining => "draining",
            ShardState::Down => "down",
        }
    }
}

/// What configuration says about one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSpec {
    pub name: String,
    pub addr: SocketAddr,
    pub transport: Transport,
    /// Name of the shard that takes this one's groups while it is down.
    pub backup: Option<String>,
}

/// How the edge sends requests to a shard. Its responses and requests
/// reach the edge however the shard sends them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    #[default]
    Udp,
    /// UDP, and TCP at the same address for a request larger than
    /// [`UDP_MAX_REQUEST`] (RFC 3261 §18.1.1).
    UdpTcp,
    Tcp,
    Tls,
}

/// RFC 3261 §18.1.1: a request larger than this (an unknown path MTU)
/// goes over a congestion-controlled transport where the shard has one.
pub const UDP_MAX_REQUEST: usize = 1300;

impl Transport {
    pub fn parse(s: &str) -> Option<Transport> {
        Some(match s {
            "udp" => Transport::Udp,
            "udp+tcp" => Transport::UdpTcp,
            "tcp" => Transport::Tcp,
            "tls" => Transport::Tls,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::UdpTcp => "udp+tcp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    /// The stream a request of `len` bytes goes on (`Some(false)`: TCP,
    /// `Some(true)`: TLS), or `None`: a datagram.
    #[inline]
    pub fn stream_for(self, len: usize) -> Option<bool> {
        match self {
            Transport::Udp => None,
            Transport::UdpTcp => (len > UDP_MAX_REQUEST).then_some(false),
            Transport::Tcp => Some(false),
            Transport::Tls => Some(true),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Shard {
    pub name: String,
    pub addr: SocketAddr,
    /// How requests reach it (README "Transports").
    pub transport: Transport,
    /// Hash of the shard's name: its rendezvous identity (a shard keeps its
    /// users when it moves address, as long as its name stays).
    pub id_hash: u64,
    /// Prebuilt `Route: <sip:CS;lr>,<sip:EDGE;lr;cpm-leg=..>\r\n` per leg.
    route_lines: [Box<[u8]>; 3],
    pub state: ShardState,
    /// Slot of the backup shard for groups.
    pub backup: Option<u16>,
    /// A tombstone: no traffic, kept so indices stay valid.
    pub removed: bool,
}

impl Shard {
    pub fn route_line(&self, leg: Leg) -> &[u8] {
        &self.route_lines[leg.index()]
    }
}

#[derive(Debug, Clone)]
pub struct ShardSet {
    shards: Vec<Shard>,
    /// Looked up for every datagram (is the sender a shard?); the keys are
    /// the operator's shard addresses.
    by_addr: HashMap<SocketAddr, u16, AddrBuild>,
    /// One bit per UDP port some shard uses: most senders are clients on
    /// other ports, refused by one bit test before any hashing.
    ports: Box<[u64; 1024]>,
    /// The shards that take new users (`Up`, not removed) as (id hash,
    /// slot), in slot order: `pick` runs for every new dialog and reads
    /// only these, not the whole ~130-byte `Shard`s with their state.
    /// Rebuilt whenever a state or the slots change.
    up: Vec<(u64, u16)>,
    edge_hostport: String,
}

fn uri_host(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

fn make_shard(spec: &ShardSpec, edge_hostport: &str) -> Shard {
    Shard {
        name: spec.name.clone(),
        addr: spec.addr,
        transport: spec.transport,
        id_hash: hash_bytes(spec.name.as_bytes()),
        route_lines: Leg::ALL.map(|leg| {
            format!(
                "Route: <sip:{};lr>,<sip:{};lr;cpm-leg={}>\r\n",
                uri_host(spec.addr),
                edge_hostport,
                leg.marker()
            )
            .into_bytes()
            .into_boxed_slice()
        }),
        state: ShardState::Up,
        backup: None,
        removed: false,
    }
}

impl ShardSet {
    /// `edge_hostport` is how the edge names itself in Route entries.
    /// Backups must name shards of the list (validated by config).
    pub fn new(list: &[ShardSpec], edge_hostport: &str) -> ShardSet {
        assert!(!list.is_empty(), "at least one CS shard is required");
        assert!(list.len() <= MAX_SHARDS, "too many shards");
        let mut set = ShardSet {
            shards: list.iter().map(|s| make_shard(s, edge_hostport)).collect(),
            by_addr: HashMap::default(),
            ports: Box::new([0; 1024]),
            up: Vec::new(),
            edge_hostport: edge_hostport.to_string(),
        };
        for (i, spec) in list.iter().enumerate() {
            set.shards[i].backup = spec
                .backup
                .as_deref()
                .map(|b| set.by_name(b).expect("validated backup") as u16);
        }
        set.reindex();
        set
    }

    fn reindex(&mut self) {
        self.by_addr = self
            .shards
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.removed)
            .map(|(i, s)| (s.addr, i as u16))
            .collect();
        self.ports.fill(0);
        for a in self.by_addr.keys() {
            let p = usize::from(a.port());
            self.ports[p / 64] |= 1 << (p % 64);
        }
        self.reindex_up();
    }

    fn reindex_up(&mut self) {
        self.up = self
            .shards
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state == ShardState::Up && !s.removed)
            .map(|(i, s)| (s.id_hash, i as u16))
            .collect();
    }

    /// Number of slots (removed ones included): the bound of any index.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    pub fn get(&self, i: usize) -> &Shard {
        &self.shards[i]
    }

    /// Live (not removed) shards with their slot index.
    pub fn live(&self) -> impl Iterator<Item = (usize, &Shard)> {
        self.shards.iter().enumerate().filter(|(_, s)| !s.removed)
    }

    /// The shard whose address sent this datagram, if any.
    #[inline]
    pub fn by_addr(&self, src: SocketAddr) -> Option<usize> {
        let p = usize::from(src.port());
        if self.ports[p / 64] & (1 << (p % 64)) == 0 {
            return None;
        }
        self.by_addr.get(&src).map(|i| *i as usize)
    }

    pub fn by_name(&self, name: &str) -> Option<usize> {
        self.shards
            .iter()
            .position(|s| s.name == name && !s.removed)
    }

    /// Rendezvous choice for a user identity hash among the shards that take
    /// new users (`Up`). A failed or draining shard's users go to their next
    /// choice; `None` when no shard is up.
    #[inline]
    pub fn pick(&self, user_hash: u64) -> Option<usize> {
        let ((first_id, first), rest) = self.up.split_first()?;
        let mut best = *first;
        let mut best_score = fmix64(user_hash ^ first_id);
        // Strictly greater: on a tie the lower slot wins.
        for &(id, i) in rest {
            let score = fmix64(user_hash ^ id);
            if score > best_score {
                best = i;
                best_score = score;
            }
        }
        Some(usize::from(best))
    }

    /// Where a group hosted on slot `g` goes now: its host unless it is down
    /// (draining keeps its groups), else its backup if that one is not down.
    #[inline]
    pub fn group_target(&self, g: usize) -> Option<usize> {
        let s = self.shards.get(g)?;
        if s.state != ShardState::Down && !s.removed {
            return Some(g);
        }
        let b = usize::from(s.backup?);
        let bs = &self.shards[b];
        (bs.state != ShardState::Down && !bs.removed).then_some(b)
    }

    pub fn set_state(&mut self, i: usize, state: ShardState) {
        self.shards[i].state = state;
        self.reindex_up();
    }

    /// Add a shard (or revive a removed slot of the same name). Errors name
    /// the conflict.
    pub fn add(&mut self, spec: &ShardSpec) -> Result<usize, String> {
        if self.by_name(&spec.name).is_some() {
            return Err(format!("shard '{}' already exists", spec.name));
        }
        if self.by_addr.contains_key(&spec.addr) {
            return Err(format!(
                "address {} is already used by another shard",
                spec.addr
            ));
        }
        let backup = match &spec.backup {
            Some(b) => Some(
                self.by_name(b)
                    .ok_or_else(|| format!("backup: unknown shard '{b}'"))? as u16,
            ),
            None => None,
        };
        let mut shard = make_shard(spec, &self.edge_hostport);
        shard.backup = backup;
        let slot = match self
            .shards
            .iter()
            .position(|s| s.removed && s.name == spec.name)
        {
            Some(i) => {
                self.shards[i] = shard;
                i
            }
            None => {
                if self.shards.len() >= MAX_SHARDS {
                    return Err(format!("no free shard slot (at most {MAX_SHARDS})"));
                }
                self.shards.push(shard);
                self.shards.len() - 1
            }
        };
        self.reindex();
        Ok(slot)
    }

    /// Remove a live shard; it must not be another shard's backup (the
    /// caller checks that no group is hosted on it).
    pub fn remove(&mut self, i: usize) -> Result<(), String> {
        if let Some((_, other)) = self
            .live()
            .find(|(j, s)| *j != i && s.backup == Some(i as u16))
        {
            return Err(format!(
                "shard '{}' is the backup of '{}'",
                self.shards[i].name, other.name
            ));
        }
        if self.live().count() <= 1 {
            return Err("the last shard cannot be removed".into());
        }
        self.shards[i].removed = true;
        self.reindex();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transport_of_a_request_follows_the_shard_and_rfc_3261_18_1_1() {
        assert_eq!(Transport::Udp.stream_for(60_000), None);
        assert_eq!(Transport::UdpTcp.stream_for(UDP_MAX_REQUEST), None);
        assert_eq!(
            Transport::UdpTcp.stream_for(UDP_MAX_REQUEST + 1),
            Some(false)
        );
        assert_eq!(Transport::Tcp.stream_for(10), Some(false));
        assert_eq!(Transport::Tls.stream_for(10), Some(true));
        for t in [
            Transport::Udp,
            Transport::UdpTcp,
            Transport::Tcp,
            Transport::Tls,
        ] {
            assert_eq!(Transport::parse(t.name()), Some(t));
        }
        assert_eq!(Transport::parse("sctp"), None);
    }

    fn set(n: usize) -> ShardSet {
        let list: Vec<_> = (0..n)
            .map(|i| ShardSpec {
                name: format!("cs{i}"),
                addr: SocketAddr::from(([127, 0, 0, 1], 7001 + i as u16)),
                transport: Default::default(),
                backup: None,
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
            let a = four.pick(h).unwrap();
            load[a] += 1;
            let b = five.pick(h).unwrap();
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

#[cfg(test)]
mod failover_tests {
    use super::*;

    /// `pick` over its list of `Up` shards against the definition over all
    /// slots, through state changes, removals and additions.
    #[test]
    fn pick_agrees_with_a_scan_of_all_slots() {
        let reference = |s: &ShardSet, h: u64| {
            let mut best = None;
            let mut best_score = 0u64;
            for (i, sh) in s.shards.iter().enumerate() {
                if sh.state != ShardState::Up || sh.removed {
                    continue;
                }
                let score = fmix64(h ^ sh.id_hash);
                if best.is_none() || score > best_score {
                    best = Some(i);
                    best_score = score;
                }
            }
            best
        };
        let spec = |i: usize| ShardSpec {
            name: format!("cs{i}"),
            addr: SocketAddr::from(([127, 0, 0, 1], 7001 + i as u16)),
            transport: Default::default(),
            backup: None,
        };
        let mut s = ShardSet::new(&(0..6).map(spec).collect::<Vec<_>>(), "127.0.0.1:5060");
        let users: Vec<u64> = (0..500)
            .map(|u| hash_bytes(format!("u{u}").as_bytes()))
            .chain([0, u64::MAX])
            .collect();
        let states = [ShardState::Up, ShardState::Draining, ShardState::Down];
        let check = |s: &ShardSet| {
            for h in &users {
                assert_eq!(s.pick(*h), reference(s, *h));
            }
        };
        for step in 0..40usize {
            s.set_state(step % 6, states[(step / 6 + step) % 3]);
            check(&s);
            if step == 10 {
                s.remove(2).unwrap();
                check(&s);
            }
            if step == 20 {
                assert_eq!(s.add(&spec(2)), Ok(2));
                assert_eq!(s.add(&spec(7)), Ok(6));
                check(&s);
            }
        }
        for i in 0..s.len() {
            s.set_state(i, ShardState::Down);
        }
        check(&s);
        assert_eq!(s.pick(1), None);
    }

    #[test]
    fn down_shard_users_move_to_next_choice_and_groups_to_backup() {
        let list: Vec<_> = (0..4)
            .map(|i| ShardSpec {
                name: format!("cs{i}"),
                addr: SocketAddr::from(([127, 0, 0, 1], 7001 + i as u16)),
                transport: Default::default(),
                backup: (i == 0).then(|| "cs1".to_string()),
            })
            .collect();
        let mut s = ShardSet::new(&list, "127.0.0.1:5060");
        let users: Vec<u64> = (0..2000)
            .map(|u| hash_bytes(format!("u{u}").as_bytes()))
            .collect();
        let before: Vec<usize> = users.iter().map(|h| s.pick(*h).unwrap()).collect();
        s.set_state(0, ShardState::Down);
        for (h, b) in users.iter().zip(&before) {
            let now = s.pick(*h).unwrap();
            if *b == 0 {
                assert_ne!(now, 0);
            } else {
                assert_eq!(now, *b, "only the failed shard's users move");
            }
        }
        assert_eq!(s.group_target(0), Some(1), "backup");
        assert_eq!(s.group_target(2), Some(2));
        s.set_state(1, ShardState::Down);
        assert_eq!(s.group_target(0), None, "backup down too: 503");
        s.set_state(2, ShardState::Draining);
        assert_eq!(s.group_target(2), Some(2), "draining keeps its groups");
        assert!(
            users.iter().all(|h| s.pick(*h) == Some(3)),
            "only cs3 takes users"
        );
        s.set_state(3, ShardState::Down);
        assert_eq!(s.pick(users[0]), None);
        for i in 0..4 {
            s.set_state(i, ShardState::Up);
        }
        let after: Vec<usize> = users.iter().map(|h| s.pick(*h).unwrap()).collect();
        assert_eq!(after, before, "recovery moves them back");
    }

    #[test]
    fn add_and_remove_keep_indices_and_refuse_conflicts() {
        let spec = |n: &str, p: u16| ShardSpec {
            name: n.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], p)),
            transport: Default::default(),
            backup: None,
        };
        let mut s = ShardSet::new(&[spec("a", 7001), spec("b", 7002)], "127.0.0.1:5060");
        assert!(s
            .add(&spec("a", 7009))
            .unwrap_err()
            .contains("already exists"));
        assert!(s
            .add(&spec("c", 7001))
            .unwrap_err()
            .contains("already used"));
        assert_eq!(s.add(&spec("c", 7003)), Ok(2));
        s.remove(0).unwrap();
        assert_eq!(s.by_addr("127.0.0.1:7001".parse().unwrap()), None);
        assert_eq!(s.get(2).name, "c", "indices stable");
        assert_eq!(
            s.add(&spec("a", 7001)),
            Ok(0),
            "a removed slot is reused by name"
        );
    }
}
