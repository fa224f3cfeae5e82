//! Configuration: the TOML schema, its validation into typed values with
//! errors that name the key, and the embedded default.
//!
//! Invariant: a [`Config`] that passed [`Config::validate`] builds tables
//! and workers without any further failure mode (start-up `assert!`s guard
//! the few invariants validation establishes).

use crate::dataplane::limits::{LimitSettings, ReplyLimit};
use crate::dataplane::slow::SlowPathSettings;
pub use crate::dataplane::worker::Workers;
use crate::dataplane::worker::{Admission, ServerSettings};
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

pub mod registrar;
mod validate;

use validate::{addr, bad, check_range, reply_limit, validate_shards, Groups};
pub use validate::{
    check_policy, check_shard_addr, check_shard_name, group_key, parse_cidr, read_regular_file,
    user_key, ConfigError,
};

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
    /// Interworking Functions (seed 5.3): where a CS's request for a
    /// non-CPM service goes (README "Interworking").
    #[serde(default, rename = "iwf")]
    pub iwfs: Vec<IwfConf>,
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
    pub slow_path: SlowPathSettings,
    #[serde(default)]
    pub trust: TrustConf,
    #[serde(default)]
    pub registrar: registrar::RegistrarConf,
    /// SIP over TCP beside UDP (README "Transports").
    #[serde(default)]
    pub tcp: crate::dataplane::streams::TcpConf,
    /// SIP over TLS (README "Transports").
    #[serde(default)]
    pub tls: crate::dataplane::streams::TlsConf,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConf {
    pub name: String,
    pub addr: String,
    /// `udp` (the default), `udp+tcp` (TCP at the same address for a
    /// request over 1300 bytes, RFC 3261 §18.1.1), `tcp` or `tls`.
    #[serde(default = "udp")]
    pub transport: String,
    /// Shard that takes this one's groups while it is down.
    #[serde(default)]
    pub backup: Option<String>,
}

fn udp() -> String {
    "udp".into()
}

/// One Interworking Function: the non-CPM service it reaches and its
/// address.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IwfConf {
    /// The service's token, as a CS names it in `cpm-iwf=SERVICE` (`sms`).
    pub service: String,
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
    /// The data plane's settings bound at start.
    pub server: ServerSettings,
    pub advertise: String,
    pub aliases: Vec<(String, Option<u16>)>,
    pub originating_pf: bool,
    pub record_route: bool,
    pub non_cpm_route: Option<SocketAddr>,
    pub iwfs: Vec<crate::route::tables::Iwf>,
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
    /// The registrar (`[registrar]` with domains), bound at start.
    pub registrar: Option<crate::dataplane::registrar::RegistrarConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSettings {
    pub interval: std::time::Duration,
    pub timeout: std::time::Duration,
    pub fail_threshold: u32,
    pub ok_threshold: u32,
}

impl Config {
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| bad("config", e))
    }

    pub fn default_embedded() -> Config {
        Config::parse(DEFAULT_TOML).expect("embedded default config parses")
    }

    /// Check every value, section by section; the error names the key
    /// and what is wrong. Reads `groups_file` (a regular file only).
    pub fn validate(&self) -> Result<Valid, ConfigError> {
        let (listen, advertise, aliases) = self.listen.validate()?;
        let server = self.server_settings(listen)?;
        let (non_cpm_route, max_forwards_limit) = self.routing.validate()?;
        let trust = self.trust.validate()?;
        let shards = validate_shards(&self.shards, listen, &advertise)?;
        let tls_shard = shards
            .iter()
            .any(|s| s.transport == crate::route::shards::Transport::Tls);
        if tls_shard && self.tls.shard_ca.is_empty() {
            return Err(bad(
                "tls.shard_ca",
                "a tls shard needs the CAs its certificate chains to",
            ));
        }
        // Unreadable CS-link files fail here, not at start.
        self.tls.load_client().map_err(|e| bad("tls", e))?;
        let groups = self.all_groups(&shards)?;
        let hosts = self
            .hosts
            .iter()
            .map(|(h, v)| Ok((h.to_ascii_lowercase(), addr(&format!("hosts.{h}"), v)?)))
            .collect::<Result<_, ConfigError>>()?;
        let admin_bind = self.admin.bind()?;
        let admin_limits = self.admin.limits()?;
        let health = self.health.validate()?;
        let policy = self.policy.validate()?;
        let l = &self.limits;
        let registrar = self.registrar.validate(trust.secret.as_deref())?;
        Ok(Valid {
            registrar,
            limits: l.per_source()?,
            allow: l.allow_list()?,
            shed_at_queue_pct: l.shed_threshold()?,
            replies: reply_limit(l)?,
            policy,
            admin_bind,
            admin_token: self.admin.token.clone().filter(|t| !t.is_empty()),
            admin_limits,
            health,
            retry_after_s: self.health.retry_after_s,
            log_level: self.log.level.clone(),
            server,
            advertise,
            aliases,
            originating_pf: self.routing.originating_pf,
            record_route: self.routing.record_route,
            non_cpm_route,
            iwfs: validate::iwfs(&self.iwfs, &shards)?,
            max_forwards_limit,
            trust,
            shards,
            groups,
            hosts,
        })
    }

    /// The data plane's settings: `[workers]` (the count resolved) and
    /// `[slow_path]`, as configured.
    fn server_settings(&self, listen: SocketAddr) -> Result<ServerSettings, ConfigError> {
        let count = self.workers.validate()?;
        let sp = &self.slow_path;
        check_range("slow_path.threads", sp.threads, 1..=64)?;
        check_range("slow_path.queue", sp.queue, 1..=1_000_000)?;
        let tcp = &self.tcp;
        check_range("tcp.max_connections", tcp.max_connections, 1..=10_000_000)?;
        check_range("tcp.max_per_ip", tcp.max_per_ip, 1..=10_000_000)?;
        check_range("tcp.max_queued", tcp.max_queued, 4_096..=64 << 20)?;
        check_range("tcp.idle_s", tcp.idle_s as usize, 1..=86_400)?;
        check_range("tcp.min_rate", tcp.min_rate as usize, 1..=1 << 20)?;
        check_range("tcp.max_header", tcp.max_header, 1_024..=256 * 1024)?;
        check_range("tcp.max_body", tcp.max_body, 0..=1 << 20)?;
        let tls = &self.tls;
        if tls.enabled {
            check_range("tls.handshake_ms", tls.handshake_ms as usize, 100..=120_000)?;
            if tls.cert.is_empty() || tls.key.is_empty() {
                return Err(bad("tls", "enabled needs cert and key (PEM files)"));
            }
            if tls.port == listen.port() && tcp.enabled {
                return Err(bad("tls.port", "the TCP listener has that port already"));
            }
            // Unreadable or mismatched files fail here, not at start.
            tls.load().map_err(|e| bad("tls", e))?;
        }
        Ok(ServerSettings {
            tls: tls.clone(),
            tcp: tcp.clone(),
            listen,
            workers: Workers {
                count,
                ..self.workers.clone()
            },
            slow_path: sp.clone(),
        })
    }

    /// `[[group]]` entries, then the lines of `groups_file`: (canonical
    /// identity, shard index), no identity twice.
    fn all_groups(&self, shards: &[ShardSpec]) -> Result<Vec<(Vec<u8>, usize)>, ConfigError> {
        let mut groups = Groups::new(shards);
        for (i, g) in self.groups.iter().enumerate() {
            groups.add(&format!("group[{i}]"), &g.id, &g.shard)?;
        }
        if let Some(path) = &self.groups_file {
            let text =
                read_regular_file(path).map_err(|e| bad("groups_file", format!("{path}: {e}")))?;
            groups.add_file(path, &text)?;
        }
        Ok(groups.list)
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
            iwfs: v.iwfs.clone(),
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
            registrar: None,
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
            .to_string()
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
            .to_string()
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
            let e = Config::parse(&t)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
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
