//! One immutable snapshot of everything routing reads: the edge's own
//! identity, the shards, the group table, static hosts and routing knobs.
//!
//! Workers hold an `Arc<Tables>` and never see it change; a new snapshot is
//! published whole (see `worker`), so a worker sees the old or the new, never
//! a mix.

use super::groups::GroupTable;
use super::location::Binding;
use super::shards::ShardSet;
use crate::sip::branch::BranchKey;
use crate::sip::hash::lower_word;
use crate::sip::{le_word, uri};
use std::collections::HashMap;
use std::net::SocketAddr;

/// How the edge names itself on the wire.
#[derive(Debug, Clone)]
pub struct EdgeIdentity {
    /// Lowercased host as written in Via/Route (IPv6 without brackets).
    pub host: Vec<u8>,
    pub port: u16,
    /// `Via: SIP/2.0/UDP host:port;branch=`
    pub via_prefix: Vec<u8>,
    /// `Record-Route: <sip:host:port;lr>\r\n`
    pub record_route_line: Vec<u8>,
    /// Other (host, port) pairs that name us; `None` port = our port.
    pub aliases: Vec<(Vec<u8>, Option<u16>)>,
}

impl EdgeIdentity {
    pub fn new(advertise: &str, port: u16, aliases: &[(String, Option<u16>)]) -> EdgeIdentity {
        let hostport = format!("{advertise}:{port}");
        EdgeIdentity {
            host: advertise
                .trim_matches(|c| c == '[' || c == ']')
                .to_ascii_lowercase()
                .into_bytes(),
            port,
            via_prefix: format!("Via: SIP/2.0/UDP {hostport};branch=").into_bytes(),
            record_route_line: format!("Record-Route: <sip:{hostport};lr>\r\n").into_bytes(),
            aliases: aliases
                .iter()
                .map(|(h, p)| (h.as_bytes().to_vec(), *p))
                .collect(),
        }
    }

    /// Our Via up to the branch value as it appears inside a Via header
    /// (`SIP/2.0/UDP host:port;branch=`): how our own hop is recognised.
    pub fn via_sent_by(&self) -> &[u8] {
        &self.via_prefix[b"Via: ".len()..]
    }

    pub fn hostport(&self) -> String {
        let h = String::from_utf8_lossy(&self.host);
        if h.contains(':') {
            format!("[{h}]:{}", self.port)
        } else {
            format!("{h}:{}", self.port)
        }
    }

    /// Do `host` and `port` (absent = 5060) name this edge?
    pub fn is_me(&self, host: &[u8], port: Option<u16>) -> bool {
        let port = port.unwrap_or(5060);
        (port == self.port && eq_ignore_case(host, &self.host))
            || self
                .aliases
                .iter()
                .any(|(h, p)| eq_ignore_case(host, h) && p.unwrap_or(self.port) == port)
    }
}

/// `a.eq_ignore_ascii_case(b)` eight bytes at a time: every response's top
/// Via host is compared with ours, and the byte loop was ~150 instructions
/// of a 200 OK.
fn eq_ignore_case(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n < 8 {
        return a.eq_ignore_ascii_case(b);
    }
    let same = |i: usize| lower_word(le_word(&a[i..])) == lower_word(le_word(&b[i..]));
    let mut i = 0;
    while i + 8 <= n {
        if !same(i) {
            return false;
        }
        i += 8;
    }
    // The last word overlaps the one before: its bytes already matched.
    i == n || same(n - 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word compare against the byte loop: at every length up to three
    /// words, every byte of one side replaced by each of the 256 values,
    /// against the other side in lower, upper and mixed case.
    #[test]
    fn eq_ignore_case_is_exact_ascii_case_folding() {
        let base: Vec<u8> = b"Edge-1.Example.NET:[2001:db8::1]".to_vec();
        for n in 0..=base.len().min(24) {
            let a = &base[..n];
            let others = [a.to_ascii_lowercase(), a.to_ascii_uppercase(), a.to_vec()];
            for b in &others {
                for i in 0..n {
                    for v in 0..=255u8 {
                        let mut x = a.to_vec();
                        x[i] = v;
                        assert_eq!(
                            eq_ignore_case(&x, b),
                            x.eq_ignore_ascii_case(b),
                            "{x:?} {b:?}"
                        );
                        assert_eq!(eq_ignore_case(b, &x), b.eq_ignore_ascii_case(&x));
                    }
                }
            }
            assert!(!eq_ignore_case(a, &base[..n.saturating_sub(1)]) || n == 0);
        }
        for x in 0..=255u8 {
            for y in 0..=255u8 {
                let (a, b) = ([x; 8], [y; 8]);
                assert_eq!(eq_ignore_case(&a, &b), a.eq_ignore_ascii_case(&b));
            }
        }
    }
}

#[derive(Clone)]
pub struct Tables {
    pub edge: EdgeIdentity,
    pub shards: ShardSet,
    pub groups: GroupTable,
    pub hosts: HashMap<Vec<u8>, SocketAddr>,
    pub originating_pf: bool,
    pub record_route: bool,
    pub non_cpm_route: Option<SocketAddr>,
    /// The Interworking Functions (`[[iwf]]`), in configuration order.
    pub iwfs: Vec<Iwf>,
    /// `Retry-After` of a 503 when no shard can take a request.
    pub retry_after_s: u32,
    /// Incremented by every published change (admin API, health, reload).
    pub generation: u64,
    /// Media policies (slow path); empty = the slow path is never used.
    pub policy: std::sync::Arc<super::policy::PolicyTable>,
    /// The key of the MAC in our branches (`[trust] secret`).
    pub branch_key: BranchKey,
    /// The address the workers are bound to.
    pub listen: SocketAddr,
    /// The other edges of the deployment (`[trust] peer_edges`).
    pub peer_edges: Vec<SocketAddr>,
    /// The highest Max-Forwards passed on (`routing.max_forwards_limit`).
    pub max_forwards_limit: u32,
    /// The edge as registrar of its served domains (`[registrar]`).
    pub registrar: Option<RegistrarRoute>,
}

/// An Interworking Function (seed 5.3): a trusted function like a shard,
/// reached for its non-CPM service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iwf {
    /// Lowercased service token (`sms`).
    pub service: Vec<u8>,
    pub addr: SocketAddr,
    /// As the health checks last saw it (starts up, as a shard does).
    pub up: bool,
}

impl Iwf {
    /// The name the health checker knows it by.
    pub fn health_name(&self) -> String {
        format!(
            "iwf:{}@{}",
            String::from_utf8_lossy(&self.service),
            self.addr
        )
    }
}

/// What routing reads of the registrar: the served domains, whether
/// clients must be registered, and the live location service (read
/// without locks; the registrar thread is its one writer).
#[derive(Clone)]
pub struct RegistrarRoute {
    /// Lowercased.
    pub domains: Vec<Vec<u8>>,
    pub require_registration: bool,
    pub location: std::sync::Arc<super::location::Location>,
}

impl RegistrarRoute {
    /// Is `host` (any case) a served domain?
    pub fn serves(&self, host: &[u8]) -> bool {
        self.domains.iter().any(|d| d.eq_ignore_ascii_case(host))
    }

    /// Where a request for `aor` asking for the CPM services `cpm` goes:
    /// the flow of the best matching binding (RFC 3841 simplified: a
    /// contact sharing a requested service, or any contact when none is
    /// asked; then the highest q; then the latest expiry). Expired
    /// bindings leave at the registrar's next sweep (once a second).
    ///
    /// A Request-URI that is one of the AoR's registered contacts (a PF
    /// forking to every device) goes to that contact's own flow.
    /// The flow is the binding's address and, when it registered over a
    /// stream, its connection.
    pub fn best_flow(
        &self,
        aor: &[u8],
        ruri: &[u8],
        cpm: u8,
    ) -> Option<(SocketAddr, Option<crate::sip::flow::Flow>)> {
        let flow = |b: &Binding| (b.flow(), b.conn());
        self.location
            .with_bindings(aor, |bs| {
                if let Some(b) = bs.iter().find(|b| b.contact().eq_ignore_ascii_case(ruri)) {
                    return Some(flow(b));
                }
                bs.iter()
                    .filter(|b| cpm == 0 || b.cpm().0 & cpm != 0)
                    .max_by_key(|b| (b.q(), b.expires_at()))
                    .map(flow)
            })
            .flatten()
    }
}

/// The key of an edge without `[trust] secret`: drawn once per process, so
/// a reload (which builds new tables) keeps verifying the branches written
/// before it.
pub fn process_branch_key() -> BranchKey {
    static KEY: std::sync::OnceLock<BranchKey> = std::sync::OnceLock::new();
    *KEY.get_or_init(BranchKey::random)
}

impl Tables {
    /// Sources trusted to assert an identity (RFC 3325's trust domain):
    /// the Conversation Servers, the Interworking Functions and the
    /// configured non-CPM route, each by its source address. Clients never
    /// are.
    pub fn is_trusted_source(&self, src: SocketAddr) -> bool {
        self.shards.by_addr(src).is_some() || self.non_cpm_route == Some(src) || self.is_iwf(src)
    }

    /// Is `src` an Interworking Function?
    pub fn is_iwf(&self, src: SocketAddr) -> bool {
        self.iwfs.iter().any(|i| i.addr == src)
    }

    /// A live IWF of `service` (any case) for the user `hash` keys: the
    /// same user always reaches the same one of several while they live
    /// (its messages stay in order through one gateway).
    pub fn iwf_for(&self, service: &[u8], hash: u64) -> Option<SocketAddr> {
        let live = || {
            self.iwfs
                .iter()
                .filter(|i| i.up && i.service.eq_ignore_ascii_case(service))
        };
        let n = live().count();
        if n == 0 {
            return None;
        }
        live().nth((hash % n as u64) as usize).map(|i| i.addr)
    }

    /// Where a client's request may be sent: a shard or the non-CPM route,
    /// never anywhere else (no open relay).
    pub fn is_function_addr(&self, a: SocketAddr) -> bool {
        // The same set as the trusted sources: the functions are who may
        // assert an identity and where a client's request may go.
        self.is_trusted_source(a)
    }

    /// Is `a` this edge or a peer edge? A response relayed there would come
    /// straight back (or ping-pong between edges): never a next hop.
    pub fn is_edge_addr(&self, a: SocketAddr) -> bool {
        let me = a == self.listen
            || (self.listen.ip().is_unspecified()
                && a.port() == self.listen.port()
                && (a.ip().is_loopback()
                    || a.ip().is_unspecified()
                    || uri::ip_of(&self.edge.host) == Some(a.ip())));
        me || self.peer_edges.contains(&a)
    }

    /// The address of a URI's host: an IP literal, or a static `[hosts]`
    /// entry (the URI's port, when given, overrides the entry's).
    pub fn resolve(&self, buf: &[u8], u: &uri::Uri) -> Option<SocketAddr> {
        let host = u.host.get(buf);
        if let Some(a) = uri::socket_addr(host, u.port) {
            // An IPv4-mapped IPv6 literal names an IPv4 host: sent as is from
            // an IPv4 socket it would be lost as a send error.
            return Some(match a.ip() {
                std::net::IpAddr::V6(v6) => v6
                    .to_ipv4_mapped()
                    .map_or(a, |v4| SocketAddr::new(v4.into(), a.port())),
                _ => a,
            });
        }
        if host.len() > 253 {
            return None;
        }
        let mut lower = [0u8; 253];
        for (d, s) in lower.iter_mut().zip(host) {
            *d = s.to_ascii_lowercase();
        }
        let a = *self.hosts.get(&lower[..host.len()])?;
        Some(SocketAddr::new(a.ip(), u.port.unwrap_or(a.port())))
    }
}
