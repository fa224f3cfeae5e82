//! Validation of each configuration section into typed settings, as named
//! steps [`Config::validate`](super::Config::validate) calls in order. Each
//! error names the key and what is wrong with its value.

use super::*;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;

/// A configuration value that cannot be used: the key (`shard[2].addr`)
/// and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

pub(super) fn bad(key: impl Into<String>, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError {
        key: key.into(),
        reason: reason.to_string(),
    }
}

pub(super) fn check_range<T>(key: &str, v: T, range: RangeInclusive<T>) -> Result<(), ConfigError>
where
    T: PartialOrd + std::fmt::Display,
{
    if range.contains(&v) {
        return Ok(());
    }
    Err(bad(
        key,
        format!("{v} is outside {}..={}", range.start(), range.end()),
    ))
}

pub(super) fn addr(key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse::<SocketAddr>().map_err(|_| {
        bad(
            key,
            format!("'{v}' is not an IP:port socket address (e.g. 127.0.0.1:7001)"),
        )
    })
}

impl Listen {
    /// The listen address, the host the edge advertises in Via and
    /// Record-Route, and its aliases (host, optional port; lowercased).
    #[allow(clippy::type_complexity)]
    pub(super) fn validate(
        &self,
    ) -> Result<(SocketAddr, String, Vec<(String, Option<u16>)>), ConfigError> {
        let listen = addr("listen.addr", &self.addr)?;
        if listen.port() == 0 {
            return Err(bad(
                "listen.addr",
                "port 0 is not allowed (the edge names its port in Via and Route)",
            ));
        }
        let advertise = self.advertised_host(listen)?;
        let aliases = self
            .aliases
            .iter()
            .enumerate()
            .map(|(i, a)| alias(&format!("listen.aliases[{i}]"), a))
            .collect::<Result<_, _>>()?;
        Ok((listen, advertise, aliases))
    }

    fn advertised_host(&self, listen: SocketAddr) -> Result<String, ConfigError> {
        match &self.advertise {
            Some(a) if a.is_empty() || a.contains([' ', ';', ',', '<', '>', '"']) => Err(bad(
                "listen.advertise",
                format!("'{a}' is not a valid host"),
            )),
            Some(a) => Ok(a.clone()),
            None if listen.ip().is_unspecified() => Err(bad(
                "listen.advertise",
                "required when listen.addr is a wildcard address",
            )),
            None => Ok(match listen.ip() {
                IpAddr::V4(ip) => ip.to_string(),
                IpAddr::V6(ip) => format!("[{ip}]"),
            }),
        }
    }
}

/// `host[:port]` (an IPv6 reference in brackets) → (lowercase host, port).
fn alias(key: &str, a: &str) -> Result<(String, Option<u16>), ConfigError> {
    let (h, p) = match a.rsplit_once(':') {
        Some((h, p))
            if !h.ends_with(':') && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) =>
        {
            let port = p
                .parse::<u16>()
                .map_err(|_| bad(key, format!("bad port in '{a}'")))?;
            (h.to_string(), Some(port))
        }
        _ => (a.to_string(), None),
    };
    if h.is_empty() {
        return Err(bad(key, "empty host"));
    }
    let host = h
        .trim_matches(|c| c == '[' || c == ']')
        .to_ascii_lowercase();
    Ok((host, p))
}

impl Workers {
    /// The worker count (0: one per available CPU), after checking the
    /// CPUs to pin to and the io sizes.
    pub(super) fn validate(&self) -> Result<usize, ConfigError> {
        let workers = if self.count == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.count
        };
        if workers > 256 {
            return Err(bad("workers.count", format!("{workers} is more than 256")));
        }
        self.check_cpus()?;
        check_range("workers.batch", self.batch, 1..=1024)?;
        if !self.recv_buffers.is_power_of_two() || !(16..=32768).contains(&self.recv_buffers) {
            return Err(bad(
                "workers.recv_buffers",
                format!("{} must be a power of two in 16..=32768", self.recv_buffers),
            ));
        }
        if self.recv_buffers < self.batch {
            return Err(bad(
                "workers.recv_buffers",
                format!(
                    "{} is smaller than workers.batch {}",
                    self.recv_buffers, self.batch
                ),
            ));
        }
        check_range("workers.max_datagram", self.max_datagram, 1500..=65507)?;
        Ok(workers)
    }

    fn check_cpus(&self) -> Result<(), ConfigError> {
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        if cores.is_empty() {
            return Ok(()); // affinity unknown here: pinning is best effort
        }
        match self
            .cpus
            .iter()
            .enumerate()
            .find(|(_, c)| !cores.iter().any(|id| id.id == **c))
        {
            Some((i, c)) => Err(bad(
                format!("workers.cpus[{i}]"),
                format!(
                    "CPU {c} is not available (this machine has {})",
                    cores.len()
                ),
            )),
            None => Ok(()),
        }
    }
}

impl Routing {
    /// The non-CPM route and the Max-Forwards cap.
    pub(super) fn validate(&self) -> Result<(Option<SocketAddr>, u32), ConfigError> {
        let non_cpm_route = self
            .non_cpm_route
            .as_deref()
            .map(|v| addr("routing.non_cpm_route", v))
            .transpose()?;
        check_range(
            "routing.max_forwards_limit",
            self.max_forwards_limit,
            1..=255,
        )?;
        Ok((non_cpm_route, self.max_forwards_limit))
    }
}

impl TrustConf {
    pub(super) fn validate(&self) -> Result<TrustSettings, ConfigError> {
        let secret = match &self.secret {
            Some(s) if s.len() < MIN_SECRET_LEN => {
                return Err(bad(
                    "trust.secret",
                    format!(
                        "{} bytes, at least {MIN_SECRET_LEN} (a random token)",
                        s.len()
                    ),
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

/// The `[[shard]]` list: at least one, at most [`MAX_SHARDS`], unique names
/// and addresses none of which is the edge itself, backups that exist.
pub(super) fn validate_shards(
    confs: &[ShardConf],
    listen: SocketAddr,
    advertise: &str,
) -> Result<Vec<ShardSpec>, ConfigError> {
    if confs.is_empty() {
        return Err(bad(
            "shard",
            "at least one [[shard]] (a CPM Conversation Server) is required",
        ));
    }
    if confs.len() > MAX_SHARDS {
        return Err(bad(
            "shard",
            format!("{} shards, at most {MAX_SHARDS}", confs.len()),
        ));
    }
    let mut shards: Vec<ShardSpec> = Vec::with_capacity(confs.len());
    for (i, s) in confs.iter().enumerate() {
        let key = |field: &str| format!("shard[{i}].{field}");
        check_shard_name(&s.name).map_err(|e| bad(key("name"), e))?;
        let a = addr(&key("addr"), &s.addr)?;
        check_shard_addr(a, listen, advertise).map_err(|e| bad(key("addr"), e))?;
        if shards.iter().any(|x| x.name == s.name) {
            return Err(bad(
                key("name"),
                format!("duplicate shard name '{}'", s.name),
            ));
        }
        if shards.iter().any(|x| x.addr == a) {
            return Err(bad(key("addr"), format!("duplicate shard address {a}")));
        }
        let transport = crate::route::shards::Transport::parse(&s.transport).ok_or_else(|| {
            bad(
                key("transport"),
                format!("'{}': one of udp, udp+tcp, tcp, tls", s.transport),
            )
        })?;
        shards.push(ShardSpec {
            name: s.name.clone(),
            addr: a,
            transport,
            backup: s.backup.clone(),
        });
    }
    for (i, s) in confs.iter().enumerate() {
        let key = format!("shard[{i}].backup");
        match &s.backup {
            Some(b) if *b == s.name => return Err(bad(key, "a shard cannot be its own backup")),
            Some(b) if !confs.iter().any(|x| x.name == *b) => {
                return Err(bad(key, format!("unknown shard '{b}'")))
            }
            _ => {}
        }
    }
    Ok(shards)
}

/// Group identities collected from `[[group]]` and `groups_file`.
pub(super) struct Groups<'a> {
    shards: &'a [ShardSpec],
    seen: std::collections::HashSet<Vec<u8>>,
    pub(super) list: Vec<(Vec<u8>, usize)>,
}

impl<'a> Groups<'a> {
    pub(super) fn new(shards: &'a [ShardSpec]) -> Groups<'a> {
        Groups {
            shards,
            seen: std::collections::HashSet::new(),
            list: Vec::new(),
        }
    }

    /// One group (`at` names where it was configured).
    pub(super) fn add(&mut self, at: &str, id: &str, shard: &str) -> Result<(), ConfigError> {
        let key = group_key(id).map_err(|e| bad(format!("{at}.id"), e))?;
        let s = self
            .shards
            .iter()
            .position(|x| x.name == shard)
            .ok_or_else(|| bad(format!("{at}.shard"), format!("unknown shard '{shard}'")))?;
        if !self.seen.insert(key.clone()) {
            return Err(bad(format!("{at}.id"), format!("duplicate group '{id}'")));
        }
        self.list.push((key, s));
        Ok(())
    }

    /// The lines of a groups file: `<group URI> <shard name>`, `#` comments.
    pub(super) fn add_file(&mut self, path: &str, text: &str) -> Result<(), ConfigError> {
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let at = format!("groups_file: {path}:{}", n + 1);
            let mut it = line.split_whitespace();
            let (Some(id), Some(shard), None) = (it.next(), it.next(), it.next()) else {
                return Err(bad(
                    at,
                    format!("expected '<group URI> <shard name>', got '{line}'"),
                ));
            };
            // The file's errors name the line, not a sub-key.
            self.add(&at, id, shard)
                .map_err(|e| bad(at.clone(), e.reason))?;
        }
        Ok(())
    }
}

impl Admin {
    /// Where the admin API listens (empty: off); off loopback, a token is
    /// required.
    pub(super) fn bind(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let bind = match self.bind.trim() {
            "" => return Ok(None),
            b => addr("admin.bind", b)?,
        };
        if !bind.ip().is_loopback() && self.token.as_deref().is_none_or(str::is_empty) {
            return Err(bad(
                "admin.token",
                format!("required when admin.bind ({bind}) is not a loopback address"),
            ));
        }
        Ok(Some(bind))
    }

    pub(super) fn limits(&self) -> Result<AdminLimits, ConfigError> {
        check_range("admin.max_connections", self.max_connections, 1..=4096)?;
        check_range(
            "admin.max_connections_per_peer",
            self.max_connections_per_peer,
            1..=4096,
        )?;
        check_range("admin.probe_slots", self.probe_slots, 1..=4096)?;
        check_range(
            "admin.header_timeout_ms",
            self.header_timeout_ms,
            100..=60_000,
        )?;
        Ok(AdminLimits {
            max_connections: self.max_connections,
            max_connections_per_peer: self.max_connections_per_peer,
            probe_slots: self.probe_slots,
            header_timeout: std::time::Duration::from_millis(self.header_timeout_ms),
        })
    }
}

impl HealthConf {
    /// The OPTIONS keepalive settings, `None` when health checks are off.
    pub(super) fn validate(&self) -> Result<Option<HealthSettings>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        check_range("health.interval_ms", self.interval_ms, 10..=3_600_000)?;
        if self.timeout_ms < 1 || self.timeout_ms > self.interval_ms.max(1) * 10 {
            return Err(bad(
                "health.timeout_ms",
                format!("{} must be in 1..=10*interval_ms", self.timeout_ms),
            ));
        }
        if self.fail_threshold == 0 || self.ok_threshold == 0 {
            return Err(bad(
                "health.fail_threshold/ok_threshold",
                "must be at least 1",
            ));
        }
        Ok(Some(HealthSettings {
            interval: std::time::Duration::from_millis(self.interval_ms),
            timeout: std::time::Duration::from_millis(self.timeout_ms),
            fail_threshold: self.fail_threshold,
            ok_threshold: self.ok_threshold,
        }))
    }
}

impl PolicyConf {
    /// The media policies by canonical identity.
    pub(super) fn validate(&self) -> Result<PolicyTable, ConfigError> {
        let mut policy = PolicyTable {
            default: self.default.clone(),
            on_violation: self.on_violation,
            ..PolicyTable::default()
        };
        if let Some(d) = &policy.default {
            check_policy("policy.default", d)?;
        }
        for (id, p) in &self.users {
            let key = format!("policy.users.\"{id}\"");
            let k = user_key(id).map_err(|e| bad(&key, e))?;
            check_policy(&key, p)?;
            policy.users.insert(k, p.clone());
        }
        for (id, p) in &self.groups {
            let key = format!("policy.groups.\"{id}\"");
            let k = group_key(id).map_err(|e| bad(&key, e))?;
            check_policy(&key, p)?;
            policy.groups.insert(k, p.clone());
        }
        Ok(policy)
    }
}

impl LimitsConf {
    /// The per-source token buckets, `None` without a rate.
    pub(super) fn per_source(&self) -> Result<Option<LimitSettings>, ConfigError> {
        if self.per_source_rate == 0 {
            return Ok(None);
        }
        if !self.table_slots.is_power_of_two() || !(64..=1 << 24).contains(&self.table_slots) {
            return Err(bad(
                "limits.table_slots",
                format!(
                    "{} must be a power of two in 64..=16777216",
                    self.table_slots
                ),
            ));
        }
        let reply = reply_or_drop("limits.over_limit", &self.over_limit)?;
        if self.new_source_burst == 0 {
            return Err(bad(
                "limits.new_source_burst",
                "0 would refuse every new source",
            ));
        }
        let burst = match self.per_source_burst {
            0 => self.per_source_rate,
            b => b,
        };
        Ok(Some(LimitSettings {
            rate: self.per_source_rate,
            burst,
            new_burst: self.new_source_burst.min(burst),
            slots: self.table_slots,
            reply,
        }))
    }

    pub(super) fn shed_threshold(&self) -> Result<u32, ConfigError> {
        if self.shed_at_queue_pct > 100 {
            return Err(bad(
                "limits.shed_at_queue_pct",
                format!("{} is above 100", self.shed_at_queue_pct),
            ));
        }
        Ok(self.shed_at_queue_pct)
    }

    pub(super) fn allow_list(&self) -> Result<Vec<(IpAddr, u8)>, ConfigError> {
        self.allow
            .iter()
            .enumerate()
            .map(|(i, c)| parse_cidr(c).map_err(|e| bad(format!("limits.allow[{i}]"), e)))
            .collect()
    }
}

/// `reply` (true) or `drop` (false), for the key `key`.
fn reply_or_drop(key: &str, v: &str) -> Result<bool, ConfigError> {
    match v {
        "reply" => Ok(true),
        "drop" => Ok(false),
        other => Err(bad(key, format!("'{other}' is not 'reply' or 'drop'"))),
    }
}

/// The refusal-answer budget; 0 for a rate or burst would be `drop` in
/// disguise, so it is refused (say `drop`).
pub(super) fn reply_limit(l: &LimitsConf) -> Result<ReplyLimit, ConfigError> {
    check_range("limits.reply_rate", l.reply_rate, 1..=1_000_000)?;
    check_range("limits.reply_burst", l.reply_burst, 1..=1_000_000)?;
    Ok(ReplyLimit {
        rate: l.reply_rate,
        burst: l.reply_burst,
        shed: reply_or_drop("limits.shed", &l.shed)?,
    })
}

/// A policy's values must make sense: named media types, a positive stream
/// cap. `key` names the policy (`policy.default`; the admin API's `policy`).
pub fn check_policy(key: &str, p: &MediaPolicy) -> Result<(), ConfigError> {
    if p.max_streams == Some(0) {
        return Err(bad(
            format!("{key}.max_streams"),
            "0 would refuse every invitation; use at least 1",
        ));
    }
    for (field, list) in [
        ("allowed_media", &p.allowed_media),
        ("allowed_protos", &p.allowed_protos),
        ("allowed_accept_types", &p.allowed_accept_types),
    ] {
        let Some(l) = list else { continue };
        if let Some(v) = l
            .iter()
            .find(|v| v.is_empty() || v.contains(char::is_whitespace))
        {
            return Err(bad(
                format!("{key}.{field}"),
                format!("'{v}' is not a valid value"),
            ));
        }
    }
    Ok(())
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

/// `[[iwf]]` checked: a service token (letters, digits, `-`; stored
/// lowercased), a specific address that is no shard's.
pub(super) fn iwfs(
    list: &[super::IwfConf],
    shards: &[crate::route::shards::ShardSpec],
) -> Result<Vec<crate::route::tables::Iwf>, ConfigError> {
    let mut out: Vec<crate::route::tables::Iwf> = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let key = format!("iwf[{i}]");
        let token = !c.service.is_empty()
            && c.service.len() <= 32
            && c.service
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !token {
            return Err(bad(
                format!("{key}.service"),
                format!("'{}': 1-32 letters, digits or '-'", c.service),
            ));
        }
        let a = addr(&format!("{key}.addr"), &c.addr)?;
        if a.port() == 0 || a.ip().is_unspecified() {
            return Err(bad(
                format!("{key}.addr"),
                "a specified IP and a non-zero port",
            ));
        }
        if shards.iter().any(|s| s.addr == a) || out.iter().any(|x| x.addr == a) {
            return Err(bad(
                format!("{key}.addr"),
                format!("{a} is already a shard or an IWF"),
            ));
        }
        out.push(crate::route::tables::Iwf {
            service: c.service.to_ascii_lowercase().into_bytes(),
            addr: a,
            up: true,
        });
    }
    Ok(out)
}
