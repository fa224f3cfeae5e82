//! Configuration: the TOML schema, its validation into typed values with
//! errors that name the key, and the embedded default.
//!
//! Invariant: a [`Config`] that passed [`Config::validate`] builds tables
//! and workers without any further failure mode (start-up `assert!`s guard
//! the few invariants validation establishes).

use crate::dataplane::limits::{LimitSettings, ReplyLimit};
use crate::dataplane::worker::{Admission, ServerSettings};
use crate::io::IoChoice;
use crate::route::groups::GroupTable;
use crate::route::policy::{OnViolation, PolicyTable};
use crate::route::shards::ShardSet;
use crate::route::shards::{ShardSpec, MAX_SHARDS};
use crate::route::tables::{self, EdgeIdentity, Tables};
use crate::sip::branch::BranchKey;
use crate::sip::media::MediaPolicy;
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
    #[serde(default)]
    pub admin: Admin,
    #[serde(default)]
    pub health: HealthConf,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub limits: LimitsConf,
    #[serde(default)]
    pub policy: PolicyConf,
    #[serde(default)]
    pub slow_path: SlowPathConf,
    #[serde(default)]
    pub trust: TrustConf,
    /// Extra groups, one per line: `<group URI> <shard name>` (`#` comments);
    /// re-read on SIGHUP with the config file. Sized for millions of lines.
    pub groups_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Admin HTTP API (groups, shards, config, /metrics, /health, /ready);
    /// empty string = disabled.
    pub bind: String,
    /// Bearer token; required when `bind` is not a loopback address.
    pub token: Option<String>,
    /// Connection threads at once.
    pub max_connections: usize,
    /// Connection threads one source IP may hold.
    pub max_connections_per_peer: usize,
    /// Thread-less slots where connections beyond those limits may still
    /// get `/health` and `/ready` answered.
    pub probe_slots: usize,
    /// A request head must arrive within this (slowloris).
    pub header_timeout_ms: u64,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            bind: "127.0.0.1:8080".into(),
            token: None,
            max_connections: 64,
            max_connections_per_peer: 8,
            probe_slots: 64,
            header_timeout_ms: 2000,
        }
    }
}

/// The admin HTTP server's bounds (see `control::http::HttpConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminLimits {
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    pub probe_slots: usize,
    pub header_timeout: std::time::Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConf {
    /// SIP OPTIONS keepalives to every shard; off = shards are always up.
    pub enabled: bool,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive failed probes before a shard is marked down.
    pub fail_threshold: u32,
    /// Consecutive answered probes before it is marked up again.
    pub ok_threshold: u32,
    /// `Retry-After` seconds in the 503 for a group whose host and backup are down.
    pub retry_after_s: u32,
}

impl Default for HealthConf {
    fn default() -> Self {
        HealthConf {
            enabled: true,
            interval_ms: 1000,
            timeout_ms: 500,
            fail_threshold: 3,
            ok_threshold: 2,
            retry_after_s: 30,
        }
    }
}

/// Flood protection: per-source token buckets and overload shedding.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConf {
    /// Datagrams per second per source IP (IPv6: per /64), per worker; 0 = off.
    pub per_source_rate: u32,
    /// Datagrams a source may send at once.
    pub per_source_burst: u32,
    /// What a source the table does not hold (new, or evicted) starts with,
    /// capped at the burst: rotating addresses buys this much per address.
    pub new_source_burst: u32,
    /// Bucket table entries per worker (power of two): bounded memory.
    pub table_slots: usize,
    /// Over the limit: `reply` (503 + Retry-After to requests, within
    /// `reply_rate`) or `drop`.
    pub over_limit: String,
    /// Refusal answers (rate-limit and shedding 503s) per second per
    /// worker; beyond them a refused request is dropped (counted). Their
    /// sources may be spoofed: this bounds the reflection.
    pub reply_rate: u32,
    /// Refusal answers a worker may send at once.
    pub reply_burst: u32,
    /// Sources never limited (CIDRs); CS shards are always exempt.
    pub allow: Vec<String>,
    /// Shed new INVITEs (503) while a worker's kernel receive queue is
    /// above this percentage of its socket buffer (the kernel is about to
    /// drop at random); 0 = never.
    pub shed_at_queue_pct: u32,
    /// A shed INVITE: `reply` (503 Overloaded, within `reply_rate`) or `drop`.
    pub shed: String,
}

impl Default for LimitsConf {
    fn default() -> Self {
        LimitsConf {
            per_source_rate: 0,
            per_source_burst: 0,
            new_source_burst: 4,
            table_slots: 65536,
            over_limit: "reply".into(),
            reply_rate: 100,
            reply_burst: 10,
            allow: Vec::new(),
            shed_at_queue_pct: 50,
            shed: "reply".into(),
        }
    }
}

/// Media-stream policy (seed 5.2.3.7): the service provider's default and
/// overrides per user (legs to a Participating Function) and per group
/// (leg to the Controlling Function).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConf {
    pub default: Option<MediaPolicy>,
    pub users: BTreeMap<String, MediaPolicy>,
    pub groups: BTreeMap<String, MediaPolicy>,
    /// An answer accepting a stream the edge did not offer: `pass` or `reject` (500).
    pub on_violation: OnViolation,
}

impl Default for PolicyConf {
    fn default() -> Self {
        PolicyConf {
            default: None,
            users: BTreeMap::new(),
            groups: BTreeMap::new(),
            on_violation: OnViolation::Pass,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlowPathConf {
    /// Threads filtering SDP (used only when a policy is configured).
    pub threads: usize,
    /// Bounded queue from the io workers; full = `503` + `Retry-After`.
    pub queue: usize,
}

impl Default for SlowPathConf {
    fn default() -> Self {
        SlowPathConf {
            threads: 1,
            queue: 4096,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// tracing filter (`info`, `cpm_edge=debug`, ...); `RUST_LOG` overrides.
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
        }
    }
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
    /// The highest Max-Forwards the edge passes on (Kamailio's maxfwd
    /// `max_limit`): a larger incoming value is lowered to it first, so a
    /// client cannot buy a request more hops than a normal one has.
    pub max_forwards_limit: u32,
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            originating_pf: true,
            record_route: true,
            non_cpm_route: None,
            max_forwards_limit: 70,
        }
    }
}

/// The edge's trust boundary (README "Security").
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustConf {
    /// The secret every edge of a deployment shares: the key of the MAC in
    /// the Via branches the edges write, verified on every response.
    /// Absent: a random key of this process (fine for one edge; a fleet,
    /// or responses across a restart, need a shared configured one).
    pub secret: Option<String>,
    /// The other edges of the deployment (their listen addresses): a
    /// response whose next hop is one of them, or this edge, is dropped.
    pub peer_edges: Vec<String>,
}

/// [`TrustConf`] checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustSettings {
    /// `None`: a random key per process.
    pub secret: Option<Vec<u8>>,
    pub peer_edges: Vec<SocketAddr>,
}

/// A configured secret shorter than this is refused: the MAC is only as
/// strong as the secret's entropy.
pub const MIN_SECRET_LEN: usize = 16;

impl TrustConf {
    fn validate(&self) -> Result<TrustSettings, String> {
        let secret = match &self.secret {
            Some(s) if s.len() < MIN_SECRET_LEN => {
                return Err(format!(
                    "trust.secret: {} bytes, at least {MIN_SECRET_LEN} (a random token)",
                    s.len()
                ))
            }
            s => s.as_ref().map(|s| s.as_bytes().to_vec()),
        };
        let peer_edges = self
            .peer_edges
            .iter()
            .enumerate()
            .map(|(i, a)| addr(&format!("trust.peer_edges[{i}]"), a))
            .collect::<Result<_, _>>()?;
        Ok(TrustSettings { secret, peer_edges })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConf {
    pub name: String,
    pub addr: String,
    /// Shard that takes this one's groups while it is down.
    #[serde(default)]
    pub backup: Option<String>,
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
    /// The data plane's settings bound at start.
    pub server: ServerSettings,
    pub advertise: String,
    pub aliases: Vec<(String, Option<u16>)>,
    pub originating_pf: bool,
    pub record_route: bool,
    pub non_cpm_route: Option<SocketAddr>,
    pub max_forwards_limit: u32,
    pub trust: TrustSettings,
    pub shards: Vec<ShardSpec>,
    /// (canonical identity `user@host`, shard index)
    pub groups: Vec<(Vec<u8>, usize)>,
    pub hosts: Vec<(String, SocketAddr)>,
    pub admin_bind: Option<SocketAddr>,
    pub admin_token: Option<String>,
    pub admin_limits: AdminLimits,
    pub health: Option<HealthSettings>,
    pub retry_after_s: u32,
    pub log_level: String,
    pub policy: PolicyTable,
    pub limits: Option<LimitSettings>,
    /// (network, prefix length) of sources exempt from the limits.
    pub allow: Vec<(IpAddr, u8)>,
    pub shed_at_queue_pct: u32,
    pub replies: ReplyLimit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSettings {
    pub interval: std::time::Duration,
    pub timeout: std::time::Duration,
    pub fail_threshold: u32,
    pub ok_threshold: u32,
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
        let max_forwards_limit = self.routing.max_forwards_limit;
        if !(1..=255).contains(&max_forwards_limit) {
            return Err(format!(
                "routing.max_forwards_limit: {max_forwards_limit} is outside 1..=255"
            ));
        }
        let trust = self.trust.validate()?;
        if self.shards.is_empty() {
            return Err(
                "shard: at least one [[shard]] (a CPM Conversation Server) is required".into(),
            );
        }
        if self.shards.len() > MAX_SHARDS {
            return Err(format!(
                "shard: {} shards, at most {MAX_SHARDS}",
                self.shards.len()
            ));
        }
        let mut shards: Vec<ShardSpec> = Vec::new();
        for (i, s) in self.shards.iter().enumerate() {
            check_shard_name(&s.name).map_err(|e| format!("shard[{i}].name: {e}"))?;
            let a = addr(&format!("shard[{i}].addr"), &s.addr)?;
            check_shard_addr(a, listen, &advertise).map_err(|e| format!("shard[{i}].addr: {e}"))?;
            if shards.iter().any(|x| x.name == s.name) {
                return Err(format!(
                    "shard[{i}].name: duplicate shard name '{}'",
                    s.name
                ));
            }
            if shards.iter().any(|x| x.addr == a) {
                return Err(format!("shard[{i}].addr: duplicate shard address {a}"));
            }
            shards.push(ShardSpec {
                name: s.name.clone(),
                addr: a,
                backup: s.backup.clone(),
            });
        }
        for (i, s) in self.shards.iter().enumerate() {
            if let Some(b) = &s.backup {
                if *b == s.name {
                    return Err(format!(
                        "shard[{i}].backup: a shard cannot be its own backup"
                    ));
                }
                if !self.shards.iter().any(|x| x.name == *b) {
                    return Err(format!("shard[{i}].backup: unknown shard '{b}'"));
                }
            }
        }
        let mut groups: Vec<(Vec<u8>, usize)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let shard_of = |name: &str| shards.iter().position(|x| x.name == name);
        for (i, g) in self.groups.iter().enumerate() {
            let key = group_key(&g.id).map_err(|e| format!("group[{i}].id: {e}"))?;
            let shard = shard_of(&g.shard)
                .ok_or_else(|| format!("group[{i}].shard: unknown shard '{}'", g.shard))?;
            if !seen.insert(key.clone()) {
                return Err(format!("group[{i}].id: duplicate group '{}'", g.id));
            }
            groups.push((key, shard));
        }
        if let Some(path) = &self.groups_file {
            let text = read_regular_file(path).map_err(|e| format!("groups_file: {path}: {e}"))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                let at = || format!("groups_file: {path}:{}", n + 1);
                let mut it = line.split_whitespace();
                let (Some(id), Some(shard), None) = (it.next(), it.next(), it.next()) else {
                    return Err(format!(
                        "{}: expected '<group URI> <shard name>', got '{line}'",
                        at()
                    ));
                };
                let key = group_key(id).map_err(|e| format!("{}: {e}", at()))?;
                let s =
                    shard_of(shard).ok_or_else(|| format!("{}: unknown shard '{shard}'", at()))?;
                if !seen.insert(key.clone()) {
                    return Err(format!("{}: duplicate group '{id}'", at()));
                }
                groups.push((key, s));
            }
        }
        let mut hosts = Vec::new();
        for (h, v) in &self.hosts {
            hosts.push((h.to_ascii_lowercase(), addr(&format!("hosts.{h}"), v)?));
        }
        let admin_bind = match self.admin.bind.trim() {
            "" => None,
            b => Some(addr("admin.bind", b)?),
        };
        if let Some(a) = admin_bind {
            if !a.ip().is_loopback() && self.admin.token.as_deref().is_none_or(str::is_empty) {
                return Err(format!(
                    "admin.token: required when admin.bind ({a}) is not a loopback address"
                ));
            }
        }
        let admin_limits = self.admin.limits()?;
        let h = &self.health;
        let health = if h.enabled {
            if !(10..=3_600_000).contains(&h.interval_ms) {
                return Err(format!(
                    "health.interval_ms: {} is outside 10..=3600000",
                    h.interval_ms
                ));
            }
            if h.timeout_ms < 1 || h.timeout_ms > h.interval_ms.max(1) * 10 {
                return Err(format!(
                    "health.timeout_ms: {} must be in 1..=10*interval_ms",
                    h.timeout_ms
                ));
            }
            if h.fail_threshold == 0 || h.ok_threshold == 0 {
                return Err("health.fail_threshold/ok_threshold: must be at least 1".into());
            }
            Some(HealthSettings {
                interval: std::time::Duration::from_millis(h.interval_ms),
                timeout: std::time::Duration::from_millis(h.timeout_ms),
                fail_threshold: h.fail_threshold,
                ok_threshold: h.ok_threshold,
            })
        } else {
            None
        };
        let mut policy = PolicyTable {
            default: self.policy.default.clone(),
            on_violation: self.policy.on_violation,
            ..PolicyTable::default()
        };
        if let Some(d) = &policy.default {
            check_policy("policy.default", d)?;
        }
        for (id, p) in &self.policy.users {
            let k = user_key(id).map_err(|e| format!("policy.users.\"{id}\": {e}"))?;
            check_policy(&format!("policy.users.\"{id}\""), p)?;
            policy.users.insert(k, p.clone());
        }
        for (id, p) in &self.policy.groups {
            let k = group_key(id).map_err(|e| format!("policy.groups.\"{id}\": {e}"))?;
            check_policy(&format!("policy.groups.\"{id}\""), p)?;
            policy.groups.insert(k, p.clone());
        }
        if !(1..=64).contains(&self.slow_path.threads) {
            return Err(format!(
                "slow_path.threads: {} is outside 1..=64",
                self.slow_path.threads
            ));
        }
        if !(1..=1_000_000).contains(&self.slow_path.queue) {
            return Err(format!(
                "slow_path.queue: {} is outside 1..=1000000",
                self.slow_path.queue
            ));
        }
        let l = &self.limits;
        let limits = if l.per_source_rate == 0 {
            None
        } else {
            if !l.table_slots.is_power_of_two() || !(64..=1 << 24).contains(&l.table_slots) {
                return Err(format!(
                    "limits.table_slots: {} must be a power of two in 64..=16777216",
                    l.table_slots
                ));
            }
            let reply = reply_or_drop("limits.over_limit", &l.over_limit)?;
            if l.new_source_burst == 0 {
                return Err("limits.new_source_burst: 0 would refuse every new source".into());
            }
            let burst = if l.per_source_burst == 0 {
                l.per_source_rate
            } else {
                l.per_source_burst
            };
            Some(LimitSettings {
                rate: l.per_source_rate,
                burst,
                new_burst: l.new_source_burst.min(burst),
                slots: l.table_slots,
                reply,
            })
        };
        if l.shed_at_queue_pct > 100 {
            return Err(format!(
                "limits.shed_at_queue_pct: {} is above 100",
                l.shed_at_queue_pct
            ));
        }
        let replies = reply_limit(l)?;
        let mut allow = Vec::new();
        for (i, c) in l.allow.iter().enumerate() {
            allow.push(parse_cidr(c).map_err(|e| format!("limits.allow[{i}]: {e}"))?);
        }
        Ok(Valid {
            limits,
            allow,
            shed_at_queue_pct: l.shed_at_queue_pct,
            replies,
            policy,
            admin_bind,
            admin_token: self.admin.token.clone().filter(|t| !t.is_empty()),
            admin_limits,
            health,
            retry_after_s: h.retry_after_s,
            log_level: self.log.level.clone(),
            server: ServerSettings {
                listen,
                workers,
                cpus: w.cpus.clone(),
                io: w.io,
                batch: w.batch,
                recv_buffers: w.recv_buffers,
                max_datagram: w.max_datagram,
                socket_rcvbuf: w.socket_rcvbuf,
                socket_sndbuf: w.socket_sndbuf,
                slow_threads: self.slow_path.threads,
                slow_queue: self.slow_path.queue,
            },
            advertise,
            aliases,
            originating_pf: self.routing.originating_pf,
            record_route: self.routing.record_route,
            non_cpm_route,
            max_forwards_limit,
            trust,
            shards,
            groups,
            hosts,
        })
    }
}

impl Valid {
    /// The routing tables of this configuration (generation 0).
    pub fn tables(&self) -> Tables {
        let v = self;
        let edge = EdgeIdentity::new(&v.advertise, v.server.listen.port(), &v.aliases);
        let shards = ShardSet::new(&v.shards, &edge.hostport());
        let mut groups = GroupTable::with_capacity(v.groups.len());
        for (key, shard) in &v.groups {
            assert!(*shard < shards.len(), "validated group shard index");
            groups.insert(key, *shard as u16);
        }
        Tables {
            edge,
            shards,
            groups,
            hosts: v
                .hosts
                .iter()
                .map(|(h, a)| (h.as_bytes().to_vec(), *a))
                .collect(),
            originating_pf: v.originating_pf,
            record_route: v.record_route,
            non_cpm_route: v.non_cpm_route,
            retry_after_s: v.retry_after_s,
            generation: 0,
            policy: std::sync::Arc::new(v.policy.clone()),
            branch_key: v
                .trust
                .secret
                .as_deref()
                .map_or_else(tables::process_branch_key, BranchKey::from_secret),
            listen: v.server.listen,
            peer_edges: v.trust.peer_edges.clone(),
            max_forwards_limit: v.max_forwards_limit,
        }
    }

    /// The admission settings of this configuration (no socket yet).
    pub fn admission(&self) -> Admission {
        Admission {
            limits: self.limits.clone(),
            allow: self.allow.clone(),
            shed_at_queue_pct: self.shed_at_queue_pct,
            replies: self.replies,
            sock_fd: None,
            live: None,
        }
    }
}

impl Admin {
    fn limits(&self) -> Result<AdminLimits, String> {
        for (key, v, max) in [
            ("admin.max_connections", self.max_connections, 4096),
            (
                "admin.max_connections_per_peer",
                self.max_connections_per_peer,
                4096,
            ),
            ("admin.probe_slots", self.probe_slots, 4096),
        ] {
            if !(1..=max).contains(&v) {
                return Err(format!("{key}: {v} is outside 1..={max}"));
            }
        }
        if !(100..=60_000).contains(&self.header_timeout_ms) {
            return Err(format!(
                "admin.header_timeout_ms: {} is outside 100..=60000",
                self.header_timeout_ms
            ));
        }
        Ok(AdminLimits {
            max_connections: self.max_connections,
            max_connections_per_peer: self.max_connections_per_peer,
            probe_slots: self.probe_slots,
            header_timeout: std::time::Duration::from_millis(self.header_timeout_ms),
        })
    }
}

/// A shard name: non-empty, without whitespace or `/` (it is a path segment
/// of the admin API). Shared by start-up validation and `POST /shards`.
pub fn check_shard_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(format!("'{name}' must be non-empty, without spaces or '/'"));
    }
    Ok(())
}

/// A shard address the edge can send to without talking to itself: a
/// specified IP of the listen address's family, a non-zero port, and not
/// the edge's own address (its listen address, the advertised IP with the
/// listen port, or a loopback IP with the listen port when the edge listens
/// on a wildcard). Shared by start-up validation and `POST /shards`.
pub fn check_shard_addr(a: SocketAddr, listen: SocketAddr, advertise: &str) -> Result<(), String> {
    if a.ip().is_unspecified() || a.port() == 0 {
        return Err(format!(
            "{a} is not a usable address (unspecified IP or port 0)"
        ));
    }
    if a.is_ipv4() != listen.is_ipv4() {
        return Err(format!(
            "{a} is not of the listen address's family ({listen}): the edge cannot send to it"
        ));
    }
    let advertised = advertise
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
        .is_ok_and(|ip| ip == a.ip());
    let own = a == listen
        || (a.port() == listen.port()
            && (advertised || (listen.ip().is_unspecified() && a.ip().is_loopback())));
    if own {
        return Err(format!("{a} is the edge's own address (listen {listen})"));
    }
    Ok(())
}

/// The whole content of `path`, which must be a regular file: a FIFO, a
/// device or a directory is refused (a FIFO would block the reader until
/// a writer shows up). Opened non-blocking and checked on the open file, so
/// swapping the path for a FIFO in between cannot block either.
pub fn read_regular_file(path: &str) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = f.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file (FIFOs, devices and directories are refused)".into());
    }
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(|e| e.to_string())?;
    Ok(text)
}

/// Every character of a configured URI must be legal in a SIP URI (RFC 3261
/// section 25.1: unreserved, reserved, `%HH` escapes, `[` `]` of an IPv6
/// reference): no CR, LF, space, `<`, `>`, `"`, non-ASCII... The hot-path
/// parser is lenient by design; identities the edge is told about are not.
fn check_uri_chars(id: &str) -> Result<(), String> {
    let b = id.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let hex = |j: usize| b.get(j).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                return Err(format!("{id:?}: malformed %-escape at byte {i}"));
            }
            i += 3;
            continue;
        }
        if !(c.is_ascii_alphanumeric() || b"-_.!~*'();/?:@&=+$,[]".contains(&c)) {
            return Err(format!(
                "{id:?}: character {:?} at byte {i} is not allowed in a SIP URI",
                char::from(c)
            ));
        }
        i += 1;
    }
    Ok(())
}

/// `reply` (true) or `drop` (false), for the key `key`.
fn reply_or_drop(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "reply" => Ok(true),
        "drop" => Ok(false),
        other => Err(format!("{key}: '{other}' is not 'reply' or 'drop'")),
    }
}

/// The refusal-answer budget; 0 for a rate or burst would be `drop` in
/// disguise, so it is refused (say `drop`).
fn reply_limit(l: &LimitsConf) -> Result<ReplyLimit, String> {
    for (key, v) in [
        ("limits.reply_rate", l.reply_rate),
        ("limits.reply_burst", l.reply_burst),
    ] {
        if !(1..=1_000_000).contains(&v) {
            return Err(format!("{key}: {v} is outside 1..=1000000"));
        }
    }
    Ok(ReplyLimit {
        rate: l.reply_rate,
        burst: l.reply_burst,
        shed: reply_or_drop("limits.shed", &l.shed)?,
    })
}

/// `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128).
pub fn parse_cidr(c: &str) -> Result<(IpAddr, u8), String> {
    let (a, p) = c.split_once('/').map_or((c, None), |(a, p)| (a, Some(p)));
    let ip: IpAddr = a
        .parse()
        .map_err(|_| format!("'{c}' is not an address or CIDR"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match p {
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("'{c}': bad prefix length"))?,
        None => max,
    };
    Ok((ip, len))
}

/// A policy's values must make sense: named media types, a positive stream cap.
pub fn check_policy(key: &str, p: &MediaPolicy) -> Result<(), String> {
    if p.max_streams == Some(0) {
        return Err(format!(
            "{key}.max_streams: 0 would refuse every invitation; use at least 1"
        ));
    }
    for (field, list) in [
        ("allowed_media", &p.allowed_media),
        ("allowed_protos", &p.allowed_protos),
        ("allowed_accept_types", &p.allowed_accept_types),
    ] {
        if let Some(l) = list {
            if let Some(bad) = l
                .iter()
                .find(|v| v.is_empty() || v.contains(char::is_whitespace))
            {
                return Err(format!("{key}.{field}: '{bad}' is not a valid value"));
            }
        }
    }
    Ok(())
}

/// A configured URI parsed and reduced to its canonical identity
/// (`user@host`, host lowercased; the number for tel).
fn uri_identity(id: &str) -> Result<(crate::sip::uri::Scheme, bool, Vec<u8>), String> {
    use crate::sip::uri;
    use crate::sip::Span;
    check_uri_chars(id)?;
    let b = id.as_bytes();
    let u = uri::parse(b, Span::new(0, b.len())).ok_or_else(|| format!("'{id}' is not a URI"))?;
    let mut key = Vec::new();
    uri::identity_bytes(b, &u, |c| key.push(c));
    Ok((u.scheme, !u.user.is_empty(), key))
}

/// Canonical identity of a configured user URI (sip, sips or tel).
pub fn user_key(id: &str) -> Result<Vec<u8>, String> {
    match uri_identity(id)? {
        (crate::sip::uri::Scheme::Other, _, _) | (_, false, _) => {
            Err(format!("'{id}' is not a sip:, sips: or tel: URI of a user"))
        }
        (_, true, key) => Ok(key),
    }
}

/// Canonical identity of a configured group URI.
pub fn group_key(id: &str) -> Result<Vec<u8>, String> {
    use crate::sip::uri::Scheme;
    let (scheme, has_user, key) = uri_identity(id)?;
    if !matches!(scheme, Scheme::Sip | Scheme::Sips) || !has_user {
        return Err(format!(
            "'{id}' is not a SIP URI with a user part (sip:group@domain)"
        ));
    }
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
        assert_eq!(v.server.listen, "127.0.0.1:5060".parse().unwrap());
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

    fn shard_err(listen: &str, shard: &str) -> String {
        let t = format!(
            "[listen]\naddr = \"{listen}\"\nadvertise = \"198.51.100.7\"\n[[shard]]\nname = \"a\"\naddr = \"{shard}\"\n"
        );
        Config::parse(&t)
            .and_then(|c| c.validate().map(|_| ()))
            .unwrap_err()
    }

    #[test]
    fn shards_at_the_edge_itself_or_unusable_addresses_are_refused() {
        let own = shard_err("127.0.0.1:5060", "127.0.0.1:5060");
        assert!(
            own.starts_with("shard[0].addr: 127.0.0.1:5060 is the edge's own"),
            "{own}"
        );
        let wild = shard_err("0.0.0.0:5060", "127.0.0.1:5060");
        assert!(wild.contains("edge's own address"), "{wild}");
        let adv = shard_err("0.0.0.0:5060", "198.51.100.7:5060");
        assert!(adv.contains("edge's own address"), "{adv}");
        for bad in ["0.0.0.0:7001", "127.0.0.1:0", "0.0.0.0:0"] {
            let e = shard_err("127.0.0.1:5060", bad);
            assert!(e.contains("unspecified IP or port 0"), "{bad}: {e}");
        }
        let v6 = shard_err("127.0.0.1:5060", "[::1]:7001");
        assert!(v6.contains("family"), "{v6}");
        let v4 = shard_err("[::1]:5060", "127.0.0.1:7001");
        assert!(v4.contains("family"), "{v4}");
        // Same IP, other port: a shard on the edge's host is fine.
        let t = "[listen]\naddr = \"127.0.0.1:5060\"\n[[shard]]\nname = \"a\"\naddr = \"127.0.0.1:5061\"\n";
        assert!(Config::parse(t).unwrap().validate().is_ok());
    }

    #[test]
    fn group_ids_with_characters_illegal_in_a_sip_uri_are_refused() {
        for bad in [
            "sip:g\r\nVia: x@h",
            "sip:g h@x",
            "sip:g<@x",
            "sip:g\"@x",
            "sip:gr\u{e9}@x",
            "sip:g%zz@x",
            "sip:g%4@x",
            "sip:g#@x",
        ] {
            assert!(group_key(bad).is_err(), "{bad:?}");
            let toml = format!("[[group]]\nid = {bad:?}\nshard = \"a\"\n");
            assert!(err(&toml).starts_with("group[0].id"), "{bad:?}");
        }
        for good in [
            "sip:a/b@x",
            "sip:a%2Fb@x",
            "sip:g@[::1]",
            "sip:g-_.!~*'()&=+$,@x",
        ] {
            assert!(group_key(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn groups_file_must_be_a_regular_file() {
        let dir = std::env::temp_dir().join(format!("cpm-edge-gf-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("groups.fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for p in [fifo.to_str().unwrap(), dir.to_str().unwrap()] {
            let t = format!(
                "groups_file = {p:?}\n[[shard]]\nname = \"a\"\naddr = \"127.0.0.1:7001\"\n"
            );
            let e = Config::parse(&t).unwrap().validate().unwrap_err();
            assert!(
                e.starts_with("groups_file: ") && e.contains("not a regular file"),
                "{e}"
            );
        }
        let file = dir.join("groups.txt");
        std::fs::write(&file, "sip:f1@x a\n").unwrap();
        let t = format!(
            "groups_file = {:?}\n[[shard]]\nname = \"a\"\naddr = \"127.0.0.1:7001\"\n",
            file.to_str().unwrap()
        );
        assert_eq!(
            Config::parse(&t).unwrap().validate().unwrap().groups.len(),
            1
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn limits_reply_budget_and_new_source_burst() {
        let base = "[[shard]]\nname = \"a\"\naddr = \"127.0.0.1:7001\"\n";
        let v = |extra: &str| {
            Config::parse(&format!("{base}{extra}"))
                .unwrap()
                .validate()
                .unwrap()
        };
        let d = v("");
        assert_eq!(
            d.replies,
            ReplyLimit {
                rate: 100,
                burst: 10,
                shed: true
            }
        );
        let l = v("[limits]\nper_source_rate = 20\nper_source_burst = 2\n");
        assert_eq!(
            l.limits.map(|l| l.new_burst),
            Some(2),
            "capped at the burst"
        );
        let l = v(
            "[limits]\nper_source_rate = 20\nreply_rate = 5\nreply_burst = 1\nshed = \"drop\"\n",
        );
        assert_eq!(l.limits.map(|l| (l.burst, l.new_burst)), Some((20, 4)));
        assert!(!l.replies.shed && l.replies.rate == 5 && l.replies.burst == 1);
        assert!(err("[limits]\nreply_rate = 0\n").starts_with("limits.reply_rate"));
        assert!(err("[limits]\nreply_burst = 0\n").starts_with("limits.reply_burst"));
        assert!(err("[limits]\nshed = \"bounded\"\n").starts_with("limits.shed: 'bounded'"));
        assert!(err("[limits]\nper_source_rate = 5\nnew_source_burst = 0\n")
            .starts_with("limits.new_source_burst"));
    }
}
