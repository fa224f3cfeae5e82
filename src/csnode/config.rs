//! The Conversation Server's configuration file: one file for every shard
//! of a cluster (the shard list, the users, the groups and who hosts them),
//! and the name of the shard this process is, from the command line.

use crate::cs::directory::{Directory, GroupSpec, UserSpec};
use crate::cs::server::{RemoteLacks, Settings, Terminating, UnmappedNumbers, WhenUnregistered};
use crate::sip::media::MediaPolicy;
use crate::sip::transaction;
use std::net::SocketAddr;
use std::time::Duration;

/// The embedded default (`cpm-cs --print-default-config`).
pub const DEFAULT_TOML: &str = include_str!("default.toml");

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    server: ServerSection,
    #[serde(default)]
    edge_admin: Option<EdgeAdmin>,
    #[serde(default)]
    admin: Option<AdminSection>,
    #[serde(rename = "shard", default)]
    shards: Vec<ShardEntry>,
    #[serde(default)]
    media: MediaPolicy,
    #[serde(rename = "user", default)]
    users: Vec<UserSpec>,
    #[serde(rename = "group", default)]
    groups: Vec<GroupSpec>,
}

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    edges: Vec<SocketAddr>,
    #[serde(default = "default_invite_timeout")]
    invite_timeout_ms: u64,
    #[serde(default = "default_max_sessions")]
    max_sessions: usize,
    #[serde(default = "default_max_dialogs")]
    max_dialogs: usize,
    #[serde(default = "default_max_transactions")]
    max_transactions: usize,
    /// An INVITE to this URI with a recipient list makes an ad-hoc group.
    #[serde(default)]
    conference_factory: Option<String>,
    /// The invited user's PF when the user has no registered contact:
    /// `"registered"` (480) or `"request_uri"` (one leg to the URI).
    #[serde(default)]
    terminating: Terminating,
    /// A message for a user with no registered device, where the user's
    /// entry says nothing: `"reject"` (480) or `"defer"` (kept, delivered
    /// at the next registration).
    #[serde(default)]
    when_unregistered: WhenUnregistered,
    /// A `tel:` recipient no user has: `"reject"` (404) or `"sms"`.
    #[serde(default)]
    unmapped_numbers: UnmappedNumbers,
    /// Non-SIP recipient schemes → the IWF service reaching them, e.g.
    /// `{ mailto = "email" }`; any other scheme is refused (416).
    #[serde(default)]
    scheme_iwf: std::collections::HashMap<String, String>,
    /// A failure saying the target network lacks CPM or SIP: `"relay"` it
    /// or re-target to `"sms"`.
    #[serde(default)]
    when_remote_lacks: RemoteLacks,
    /// The redb file keeping deferred messages across restarts (`{shard}`
    /// is replaced by the shard's name: one file per shard); empty: in
    /// memory only.
    #[serde(default)]
    deferred_store: String,
}

fn default_invite_timeout() -> u64 {
    30_000
}
fn default_max_sessions() -> usize {
    100_000
}
fn default_max_dialogs() -> usize {
    400_000
}
fn default_max_transactions() -> usize {
    400_000
}

/// Where the groups this CS hosts are registered (the edge's admin API).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeAdmin {
    /// `http://host:port` of the edge's admin API.
    pub url: String,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default = "default_sync")]
    pub sync_interval_ms: u64,
}

fn default_sync() -> u64 {
    5_000
}

/// `[admin]`: this process's own admin API (users, groups, shards,
/// `/metrics`; `crate::control::cs_api`).
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminSection {
    /// `IP:port`; empty: no admin API.
    #[serde(default)]
    bind: String,
    #[serde(default)]
    token: Option<String>,
}

/// Where the CS's admin API listens, and its bearer token (required off
/// loopback, as for the edge's).
#[derive(Clone, PartialEq, Eq)]
pub struct AdminApi {
    pub bind: SocketAddr,
    pub token: Option<String>,
}

/// `Debug` with the token redacted.
impl std::fmt::Debug for AdminApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminApi")
            .field("bind", &self.bind)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ShardEntry {
    name: String,
    addr: SocketAddr,
}

/// A checked configuration for one shard.
#[derive(Clone, Debug)]
pub struct Valid {
    pub settings: Settings,
    pub directory: Directory,
    pub edge_admin: Option<EdgeAdmin>,
    /// This process's admin API (`[admin]`; `None`: off).
    pub admin: Option<AdminApi>,
    /// Every shard of the cluster (name, address).
    pub shards: Vec<(String, SocketAddr)>,
    /// This shard's deferred-message file (`None`: in memory only).
    pub deferred_store: Option<std::path::PathBuf>,
}

/// Why a configuration was refused: the key and the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

fn err(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Parse and check `text` as shard `shard`'s configuration; `key` keys the
/// transaction branches, tags and Call-IDs (random per process).
pub fn load(text: &str, shard: &str, key: [u64; 2]) -> Result<Valid, ConfigError> {
    let f: File = toml::from_str(text).map_err(|e| err("file", e.message().to_string()))?;
    let shards = check_shards(&f)?;
    let local = shards
        .iter()
        .find(|(n, _)| n == shard)
        .map(|(_, a)| *a)
        .ok_or_else(|| err("--shard", format!("no [[shard]] named '{shard}'")))?;
    check_groups(&f, &shards)?;
    let directory = Directory::new(&f.users, &f.groups).map_err(|e| err(&e.what, e.reason))?;
    let settings = settings(&f, shard, local, key)?;
    let admin = admin(f.admin.as_ref())?;
    let deferred_store = match f.server.deferred_store.trim() {
        "" => None,
        path => Some(std::path::PathBuf::from(path.replace("{shard}", shard))),
    };
    Ok(Valid {
        settings,
        directory,
        edge_admin: f.edge_admin,
        admin,
        shards,
        deferred_store,
    })
}

/// `[admin]`: off when absent or `bind = ""`; off loopback only with a
/// token.
fn admin(a: Option<&AdminSection>) -> Result<Option<AdminApi>, ConfigError> {
    let Some(a) = a else { return Ok(None) };
    let bind = match a.bind.trim() {
        "" => return Ok(None),
        b => b.parse::<SocketAddr>().map_err(|_| {
            err(
                "admin.bind",
                format!("'{b}' is not an IP:port socket address"),
            )
        })?,
    };
    let token = a.token.clone().filter(|t| !t.is_empty());
    if !bind.ip().is_loopback() && token.is_none() {
        return Err(err(
            "admin.token",
            format!("required when admin.bind ({bind}) is not a loopback address"),
        ));
    }
    Ok(Some(AdminApi { bind, token }))
}

/// The shard names of a configuration, in file order.
pub fn shard_list(text: &str) -> Result<Vec<String>, ConfigError> {
    let f: File = toml::from_str(text).map_err(|e| err("file", e.message().to_string()))?;
    Ok(check_shards(&f)?.into_iter().map(|(n, _)| n).collect())
}

fn check_shards(f: &File) -> Result<Vec<(String, SocketAddr)>, ConfigError> {
    let mut out: Vec<(String, SocketAddr)> = Vec::new();
    for (i, s) in f.shards.iter().enumerate() {
        if out.iter().any(|(n, a)| *n == s.name || *a == s.addr) {
            return Err(err(&format!("shard[{i}]"), "name or address used twice"));
        }
        if s.addr.port() == 0 || s.addr.ip().is_unspecified() {
            return Err(err(
                &format!("shard[{i}].addr"),
                "a specified IP and a non-zero port",
            ));
        }
        out.push((s.name.clone(), s.addr));
    }
    Ok(out)
}

fn check_groups(f: &File, shards: &[(String, SocketAddr)]) -> Result<(), ConfigError> {
    for (i, g) in f.groups.iter().enumerate() {
        if !shards.iter().any(|(n, _)| *n == g.host) {
            return Err(err(
                &format!("group[{i}].host"),
                format!("unknown shard '{}'", g.host),
            ));
        }
    }
    Ok(())
}

fn settings(
    f: &File,
    name: &str,
    local: SocketAddr,
    key: [u64; 2],
) -> Result<Settings, ConfigError> {
    let s = &f.server;
    if s.edges.is_empty() {
        return Err(err("server.edges", "at least one edge"));
    }
    if s.max_sessions == 0 || s.max_dialogs == 0 || s.max_transactions == 0 {
        return Err(err(
            "server",
            "max_sessions, max_dialogs and max_transactions above 0",
        ));
    }
    let mut transaction = transaction::Config {
        max_transactions: s.max_transactions,
        key,
        ..transaction::Config::default()
    };
    transaction.send_trying = true;
    transaction.validate().map_err(|r| err("server", r))?;
    Ok(Settings {
        name: name.to_string(),
        local,
        edges: s.edges.clone(),
        max_sessions: s.max_sessions,
        max_dialogs: s.max_dialogs,
        invite_timeout: Duration::from_millis(s.invite_timeout_ms.max(100)),
        provider_media: f.media.clone(),
        conference_factory: factory(s.conference_factory.as_deref())?,
        terminating: s.terminating,
        when_unregistered: s.when_unregistered,
        unmapped_numbers: s.unmapped_numbers,
        when_remote_lacks: s.when_remote_lacks,
        scheme_iwf: s
            .scheme_iwf
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_ascii_lowercase()))
            .collect(),
        transaction,
    })
}

fn factory(uri: Option<&str>) -> Result<Option<String>, ConfigError> {
    uri.map(|u| {
        crate::cs::directory::identity_of(u)
            .ok_or_else(|| err("server.conference_factory", "not a sip: URI"))
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_loads_for_every_shard() {
        for shard in ["cs1", "cs2", "cs3", "cs4"] {
            let v = load(DEFAULT_TOML, shard, [1, 2]).unwrap();
            assert_eq!(v.settings.name, shard);
            assert!(v.directory.hosted_by(shard).count() >= 1, "{shard}");
        }
        let e = load(DEFAULT_TOML, "cs9", [1, 2]).unwrap_err();
        assert_eq!(e.key, "--shard");
    }

    #[test]
    fn the_admin_api_is_off_loopback_only_with_a_token() {
        let v = load(DEFAULT_TOML, "cs1", [1, 2]).unwrap();
        let a = v.admin.expect("the default has an admin API");
        assert_eq!(a.bind.to_string(), "127.0.0.1:8090");
        assert_eq!(a.token, None);
        let open = DEFAULT_TOML.replace("bind = \"127.0.0.1:8090\"", "bind = \"0.0.0.0:8090\"");
        let e = load(&open, "cs1", [1, 2]).unwrap_err();
        assert_eq!(e.key, "admin.token");
        let with_token = open.replace(
            "bind = \"0.0.0.0:8090\"",
            "bind = \"0.0.0.0:8090\"\ntoken = \"s3cret\"",
        );
        let a = load(&with_token, "cs1", [1, 2]).unwrap().admin.unwrap();
        assert_eq!(a.token.as_deref(), Some("s3cret"));
        assert!(
            !format!("{a:?}").contains("s3cret"),
            "the token is redacted"
        );
        let off = DEFAULT_TOML.replace("bind = \"127.0.0.1:8090\"", "bind = \"\"");
        assert!(load(&off, "cs1", [1, 2]).unwrap().admin.is_none());
        let bad = DEFAULT_TOML.replace("bind = \"127.0.0.1:8090\"", "bind = \"localhost\"");
        assert_eq!(load(&bad, "cs1", [1, 2]).unwrap_err().key, "admin.bind");
    }

    #[test]
    fn terminating_is_request_uri_by_default_or_registered() {
        let v = load(DEFAULT_TOML, "cs1", [1, 2]).unwrap();
        assert_eq!(v.settings.terminating, Terminating::RequestUri);
        let registered = DEFAULT_TOML.replace(
            "terminating = \"request_uri\"",
            "terminating = \"registered\"",
        );
        let v = load(&registered, "cs1", [1, 2]).unwrap();
        assert_eq!(v.settings.terminating, Terminating::Registered);
        let absent = DEFAULT_TOML.replace("terminating = \"request_uri\"", "");
        let v = load(&absent, "cs1", [1, 2]).unwrap();
        assert_eq!(v.settings.terminating, Terminating::RequestUri);
        let bad = DEFAULT_TOML.replace("terminating = \"request_uri\"", "terminating = \"sms\"");
        let e = load(&bad, "cs1", [1, 2]).unwrap_err();
        assert!(e.reason.contains("unknown variant `sms`"), "{e}");
    }

    #[test]
    fn a_group_on_an_unknown_shard_is_refused_by_key() {
        let text = DEFAULT_TOML.replace("host = \"cs4\"", "host = \"cs9\"");
        let e = load(&text, "cs1", [1, 2]).unwrap_err();
        assert_eq!(e.key, "group[3].host");
    }
}
