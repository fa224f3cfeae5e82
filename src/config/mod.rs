//! Configuration: the TOML schema, its validation into typed values with
//! errors that name the key, and the embedded default.
//!
//! Invariant: a [`Config`] that passed [`Config::validate`] builds tables
//! and workers without any further failure mode (start-up `assert!`s guard
//! the few invariants validation establishes).

use crate::io::IoChoice;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

pub const DEFAULT_TOML: &str = include_str!("default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listen: Listen,
    #[serde(default)]
    pub workers: Workers,
    #[serde(default)]
    pub routing: Routing,
    #[serde(default, rename = "shard")]
    pub shards: Vec<ShardConf>,
    #[serde(default, rename = "group")]
    pub groups: Vec<GroupConf>,
    /// Static host → address map for Request-URI / Route hosts that are not
    /// IP literals (the edge does no DNS on the hot path).
    #[serde(default)]
    pub hosts: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// UDP address every worker binds (SO_REUSEPORT).
    pub addr: String,
    /// Host written in our Via, Route and Record-Route; default: the listen IP.
    pub advertise: Option<String>,
    /// Other names (host or host:port) that Route entries may use for us.
    pub aliases: Vec<String>,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            addr: "127.0.0.1:5060".into(),
            advertise: None,
            aliases: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workers {
    /// Number of io workers; 0 = one per available CPU.
    pub count: usize,
    /// CPUs to pin workers to, in order (wrapping); empty = no pinning.
    pub cpus: Vec<usize>,
    pub io: IoChoice,
    /// Datagrams per receive/send batch.
    pub batch: usize,
    /// Receive buffers per worker (io_uring provided-buffer ring entries).
    pub recv_buffers: usize,
    /// Largest datagram accepted; larger ones are dropped and counted.
    pub max_datagram: usize,
    pub socket_rcvbuf: usize,
    pub socket_sndbuf: usize,
}

impl Default for Workers {
    fn default() -> Self {
        Workers {
            count: 0,
            cpus: Vec::new(),
            io: IoChoice::Auto,
            batch: 64,
            recv_buffers: 1024,
            max_datagram: 16384,
            socket_rcvbuf: 8 << 20,
            socket_sndbuf: 8 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Routing {
    /// Route client requests to the inviting user's Participating Function
    /// first (5.2.3.2.1). `false`: group-addressed client requests go straight
    /// to the hosting CS (one CS plays both functions, 5.2.3.2.1 b).
    pub originating_pf: bool,
    /// Add `Record-Route` to dialog-creating requests so in-dialog requests
    /// (ACK, BYE, re-INVITE, in-session MESSAGE) traverse the edge.
    pub record_route: bool,
    /// Where requests without the CPM enabler usage indication go; absent =
    /// answer `403`.
    pub non_cpm_route: Option<String>,
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            originating_pf: true,
            record_route: true,
            non_cpm_route: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConf {
    pub name: String,
    pub addr: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConf {
    /// A SIP URI: `sip:grp1@groups.example.net`.
    pub id: String,
    /// Name of the hosting shard.
    pub shard: String,
}

/// The typed, checked configuration.
#[derive(Debug, Clone)]
pub struct Valid {
    pub listen: SocketAddr,
    pub advertise: String,
    pub aliases: Vec<(String, Option<u16>)>,
    pub workers: usize,
    pub cpus: Vec<usize>,
    pub io: IoChoice,
    pub batch: usize,
    pub recv_buffers: usize,
    pub max_datagram: usize,
    pub socket_rcvbuf: usize,
    pub socket_sndbuf: usize,
    pub originating_pf: bool,
    pub record_route: bool,
    pub non_cpm_route: Option<SocketAddr>,
    pub shards: Vec<(String, SocketAddr)>,
    /// (canonical identity `user@host`, shard index)
    pub groups: Vec<(Vec<u8>, usize)>,
    pub hosts: Vec<(String, SocketAddr)>,
}

fn addr(key: &str, v: &str) -> Result<SocketAddr, String> {
    v.parse::<SocketAddr>()
        .map_err(|_| format!("{key}: '{v}' is not an IP:port socket address (e.g. 127.0.0.1:7001)"))
}

impl Config {
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| format!("config: {e}"))
    }

    pub fn default_embedded() -> Config {
        Config::parse(DEFAULT_TOML).expect("embedded default config parses")
    }

    /// Check every value; the error names the key and what is wrong.
    pub fn validate(&self) -> Result<Valid, String> {
        let listen = addr("listen.addr", &self.listen.addr)?;
        if listen.port() == 0 {
            return Err(
                "listen.addr: port 0 is not allowed (the edge names its port in Via and Route)"
                    .into(),
            );
        }
        let advertise = match &self.listen.advertise {
            Some(a) if a.is_empty() || a.contains([' ', ';', ',', '<', '>', '"']) => {
                return Err(format!("listen.advertise: '{a}' is not a valid host"));
            }
            Some(a) => a.clone(),
            None if listen.ip().is_unspecified() => {
                return Err(
                    "listen.advertise: required when listen.addr is a wildcard address".into(),
                );
            }
            None => match listen.ip() {
                IpAddr::V4(ip) => ip.to_string(),
                IpAddr::V6(ip) => format!("[{ip}]"),
            },
        };
        let mut aliases = Vec::new();
        for (i, a) in self.listen.aliases.iter().enumerate() {
            let (h, p) = match a.rsplit_once(':') {
                Some((h, p))
                    if !h.ends_with(':')
                        && !p.is_empty()
                        && p.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    let port = p
                        .parse::<u16>()
                        .map_err(|_| format!("listen.aliases[{i}]: bad port in '{a}'"))?;
                    (h.to_string(), Some(port))
                }
                _ => (a.clone(), None),
            };
            if h.is_empty() {
                return Err(format!("listen.aliases[{i}]: empty host"));
            }
            aliases.push((
                h.trim_matches(|c| c == '[' || c == ']')
                    .to_ascii_lowercase(),
                p,
            ));
        }
        let w = &self.workers;
        let workers = if w.count == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            w.count
        };
        if workers > 256 {
            return Err(format!("workers.count: {workers} is more than 256"));
        }
        let ncpu = core_affinity::get_core_ids().map_or(0, |c| c.len());
        for (i, c) in w.cpus.iter().enumerate() {
            if ncpu > 0
                && !core_affinity::get_core_ids()
                    .unwrap_or_default()
                    .iter()
                    .any(|id| id.id == *c)
            {
                return Err(format!(
                    "workers.cpus[{i}]: CPU {c} is not available (this machine has {ncpu})"
                ));
            }
        }
        if !(1..=1024).contains(&w.batch) {
            return Err(format!("workers.batch: {} is outside 1..=1024", w.batch));
        }
        if !w.recv_buffers.is_power_of_two() || !(16..=32768).contains(&w.recv_buffers) {
            return Err(format!(
                "workers.recv_buffers: {} must be a power of two in 16..=32768",
                w.recv_buffers
            ));
        }
        if w.recv_buffers < w.batch {
            return Err(format!(
                "workers.recv_buffers: {} is smaller than workers.batch {}",
                w.recv_buffers, w.batch
            ));
        }
        if !(1500..=65507).contains(&w.max_datagram) {
            return Err(format!(
                "workers.max_datagram: {} is outside 1500..=65507",
                w.max_datagram
            ));
        }
        let non_cpm_route = self
            .routing
            .non_cpm_route
            .as_deref()
            .map(|v| addr("routing.non_cpm_route", v))
            .transpose()?;
        if self.shards.is_empty() {
            return Err(
                "shard: at least one [[shard]] (a CPM Conversation Server) is required".into(),
            );
        }
        let mut shards: Vec<(String, SocketAddr)> = Vec::new();
        for (i, s) in self.shards.iter().enumerate() {
            if s.name.is_empty() {
                return Err(format!("shard[{i}].name: empty"));
            }
            let a = addr(&format!("shard[{i}].addr"), &s.addr)?;
            if shards.iter().any(|(n, _)| *n == s.name) {
                return Err(format!(
                    "shard[{i}].name: duplicate shard name '{}'",
                    s.name
                ));
            }
            if shards.iter().any(|(_, x)| *x == a) {
                return Err(format!("shard[{i}].addr: duplicate shard address {a}"));
            }
            if a == listen {
                return Err(format!(
                    "shard[{i}].addr: {a} is the edge's own listen address"
                ));
            }
            shards.push((s.name.clone(), a));
        }
        let mut groups: Vec<(Vec<u8>, usize)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, g) in self.groups.iter().enumerate() {
            let key = group_key(&g.id).map_err(|e| format!("group[{i}].id: {e}"))?;
            let shard = shards
                .iter()
                .position(|(n, _)| *n == g.shard)
                .ok_or_else(|| format!("group[{i}].shard: unknown shard '{}'", g.shard))?;
            if !seen.insert(key.clone()) {
                return Err(format!("group[{i}].id: duplicate group '{}'", g.id));
            }
            groups.push((key, shard));
        }
        let mut hosts = Vec::new();
        for (h, v) in &self.hosts {
            hosts.push((h.to_ascii_lowercase(), addr(&format!("hosts.{h}"), v)?));
        }
        Ok(Valid {
            listen,
            advertise,
            aliases,
            workers,
            cpus: w.cpus.clone(),
            io: w.io,
            batch: w.batch,
            recv_buffers: w.recv_buffers,
            max_datagram: w.max_datagram,
            socket_rcvbuf: w.socket_rcvbuf,
            socket_sndbuf: w.socket_sndbuf,
            originating_pf: self.routing.originating_pf,
            record_route: self.routing.record_route,
            non_cpm_route,
            shards,
            groups,
            hosts,
        })
    }
}

/// Canonical identity of a configured group URI.
pub fn group_key(id: &str) -> Result<Vec<u8>, String> {
    use crate::sip::uri::{self, Scheme};
    use crate::sip::Span;
    let b = id.as_bytes();
    let u = uri::parse(b, Span::new(0, b.len())).ok_or_else(|| format!("'{id}' is not a URI"))?;
    if !matches!(u.scheme, Scheme::Sip | Scheme::Sips) || u.user.is_empty() {
        return Err(format!(
            "'{id}' is not a SIP URI with a user part (sip:group@domain)"
        ));
    }
    let mut key = Vec::new();
    uri::identity_bytes(b, &u, |c| key.push(c));
    if key.len() > crate::route::groups::MAX_IDENTITY {
        return Err(format!(
            "'{id}' is longer than {} bytes",
            crate::route::groups::MAX_IDENTITY
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let v = Config::default_embedded().validate().unwrap();
        assert_eq!(v.shards.len(), 4);
        assert_eq!(v.listen, "127.0.0.1:5060".parse().unwrap());
        assert_eq!(v.advertise, "127.0.0.1");
        assert_eq!(v.groups[0].0, b"grp1@groups.example.net");
    }

    fn err(extra: &str) -> String {
        let base = "[[shard]]\nname = \"a\"\naddr = \"127.0.0.1:7001\"\n";
        Config::parse(&format!("{base}{extra}"))
            .and_then(|c| c.validate().map(|_| ()))
            .unwrap_err()
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err("[[group]]\nid = \"sip:g@x\"\nshard = \"zz\"\n")
            .starts_with("group[0].shard: unknown shard 'zz'"));
        assert!(err("[[shard]]\nname = \"a\"\naddr = \"127.0.0.1:7002\"\n")
            .contains("shard[1].name: duplicate"));
        assert!(
            err("[[shard]]\nname = \"b\"\naddr = \"nope\"\n").starts_with("shard[1].addr: 'nope'")
        );
        assert!(err("[workers]\nbatch = 0\n").starts_with("workers.batch"));
        assert!(err("[workers]\nrecv_buffers = 100\n").starts_with("workers.recv_buffers"));
        assert!(err("[listen]\naddr = \"0.0.0.0:5060\"\n").starts_with("listen.advertise"));
        assert!(err("[[group]]\nid = \"tel:+1\"\nshard = \"a\"\n").starts_with("group[0].id"));
        assert!(err("[routing]\nbogus = 1\n").contains("unknown field `bogus`"));
        let dup = "[[group]]\nid = \"sip:g@X\"\nshard = \"a\"\n[[group]]\nid = \"sip:g@x;lr\"\nshard = \"a\"\n";
        assert!(err(dup).starts_with("group[1].id: duplicate"));
    }
}
