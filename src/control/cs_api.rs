//! The Conversation Server's admin API: the users and groups of one
//! `cpm-cs` process, changed while it runs, in the edge's style (JSON in and
//! out, `{"error": ...}` refusals naming what is wrong, `Authorization:
//! Bearer <token>` when a token is configured, bounded bodies and pages), on
//! the edge's HTTP server ([`super::http`]).
//!
//! | method and path | what |
//! |---|---|
//! | `GET /users?offset=&limit=` | list users (identity order) |
//! | `GET /users/{uri}` | one user |
//! | `PUT /users/{uri}` `{"media"?}` | create or replace |
//! | `DELETE /users/{uri}` | remove |
//! | `GET /groups?offset=&limit=` | list groups (identity order) |
//! | `GET /groups/{uri}` | one group |
//! | `PUT /groups/{uri}` `{"host","members",...}` | create or replace ([`GroupSpec`] without `id`) |
//! | `DELETE /groups/{uri}` | remove |
//! | `GET /registrations/{uri}` | the user's registered contacts (the edge's third-party REGISTER), read-only |
//! | `GET /shards` | the shards of this process: sessions, dialogs, transactions, group sync |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /health` | process alive |
//!
//! A process may run several shards, each with its own directory snapshot
//! (`Arc<ArcSwap<Directory>>`): a change is applied to a private copy of
//! every one of them and stored only when all accepted it, so it is applied
//! whole or refused whole; writers are serialised; the SIP loops never wait
//! (they pick the new snapshot up within a tick). The groups a shard hosts
//! reach the edge through its group sync ([`crate::csnode::sync`]), which
//! runs a round on every change. Entries are checked by the directory's own
//! rules ([`Directory::put_user`], [`Directory::put_group`]; their
//! `DirectoryError` is the `400`'s reason), a group's host must be a shard of
//! the configuration. Changes live until the process restarts: the
//! configuration file is not written.

use super::http::{self, Handler, HttpConfig, Request, Response};
use super::metrics::{counter, counters, gauge, gauges};
use super::ApiError;
use crate::cs::directory::{checked_identity, Directory, Group, GroupSpec, User, UserSpec};
use crate::cs::registrations::Contact;
use crate::csnode::config::AdminApi;
use crate::csnode::node::{Snapshot, SnapshotReader};
use crate::csnode::sync::SyncStats;
use crate::csnode::Shard;
use crate::sip::feature_tag::SERVICE_NAMES;
use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder};
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

/// Largest request body: a group is at most 64 member URIs of 256 bytes,
/// with room for its subject and media policy.
pub const MAX_BODY: usize = 256 << 10;
/// Entries of a list page unless `limit=` says otherwise.
pub const DEFAULT_PAGE: usize = 100;
/// Most entries of a list page (`limit=` above is capped).
pub const MAX_PAGE: usize = 1000;

/// One shard of this process, as the API sees it.
struct ShardView {
    name: String,
    addr: SocketAddr,
    directory: Arc<ArcSwap<Directory>>,
    snapshot: SnapshotReader,
    sync: Option<Arc<SyncStats>>,
}

/// The admin API of one cpm-cs process.
pub struct CsApi {
    shards: Vec<ShardView>,
    /// Every shard name of the configuration (a group's `host` is one).
    cluster: Vec<String>,
    writer: Mutex<()>,
    /// Changes applied through the API.
    pub changes: AtomicU64,
}

impl fmt::Debug for CsApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.shards.iter().map(|s| s.name.as_str()).collect();
        f.debug_struct("CsApi")
            .field("shards", &names)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl CsApi {
    /// The API over `shards` (the ones running in this process; at least
    /// one); `cluster` names every shard of the configuration.
    pub fn new(shards: &[Shard], cluster: Vec<String>) -> Result<CsApi, String> {
        if shards.is_empty() {
            return Err("the admin API needs at least one shard".into());
        }
        let shards = shards
            .iter()
            .map(|s| ShardView {
                name: s.name.clone(),
                addr: s.node.addr(),
                directory: Arc::clone(&s.directory),
                snapshot: s.node.reader(),
                sync: s.sync.as_ref().map(|g| Arc::clone(&g.stats)),
            })
            .collect();
        Ok(CsApi {
            shards,
            cluster,
            writer: Mutex::new(()),
            changes: AtomicU64::new(0),
        })
    }

    /// The directory as it is now (every shard of the process has the same;
    /// the first one's is read).
    fn directory(&self) -> Arc<Directory> {
        self.shards[0].directory.load_full()
    }

    /// Apply `change` to a private copy of every shard's directory; store
    /// them all when every one accepted it, else none.
    fn change<R>(
        &self,
        change: impl Fn(&mut Directory) -> Result<R, ApiError>,
    ) -> Result<R, ApiError> {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut first = None;
        let mut next = Vec::with_capacity(self.shards.len());
        for s in &self.shards {
            let mut d = Directory::clone(&s.directory.load());
            let r = change(&mut d)?;
            first.get_or_insert(r);
            next.push(d);
        }
        for (s, d) in self.shards.iter().zip(next) {
            s.directory.store(Arc::new(d));
        }
        self.changes.fetch_add(1, Relaxed);
        first.ok_or_else(|| ApiError::new(500, "no shard"))
    }

    /// Route one request to its endpoint. Path segments are percent-decoded
    /// one at a time ([`Request::path_segments`]): a URI holding `/` is
    /// addressed with `%2F`.
    pub fn handle(&self, req: &Request) -> Response {
        let Some(owned) = req.path_segments() else {
            return Response::error(400, "malformed request target");
        };
        let segs: Vec<&str> = owned.iter().map(String::as_str).collect();
        let r = match (req.method.as_str(), segs.as_slice()) {
            ("GET", ["health"]) => return Response::text(200, "ok\n"),
            ("GET", ["metrics"]) => {
                let mut r = Response::text(200, self.metrics());
                r.content_type = "text/plain; version=0.0.4";
                return r;
            }
            ("GET", ["shards"]) => Ok(self.list_shards()),
            ("GET", ["users"]) => self.list_users(req),
            ("GET", ["users", uri]) => self.get_user(uri),
            ("PUT", ["users", uri]) => self.put_user(uri, &req.body),
            ("DELETE", ["users", uri]) => self.delete_user(uri),
            ("GET", ["groups"]) => self.list_groups(req),
            ("GET", ["groups", uri]) => self.get_group(uri),
            ("PUT", ["groups", uri]) => self.put_group(uri, &req.body),
            ("DELETE", ["groups", uri]) => self.delete_group(uri),
            ("GET", ["registrations", uri]) => self.get_registration(uri),
            (_, ["health" | "metrics" | "shards" | "users" | "groups" | "registrations", ..]) => {
                Err(ApiError::new(
                    405,
                    format!("{} is not allowed on {}", req.method, req.path),
                ))
            }
            _ => Err(ApiError::new(404, format!("no endpoint {}", req.path))),
        };
        super::api::answer(r, req, "cs admin request refused")
    }

    fn hosted_here(&self, host: &str) -> bool {
        self.shards.iter().any(|s| s.name == host)
    }

    fn list_users(&self, req: &Request) -> Result<Value, ApiError> {
        let (offset, limit) = page(req)?;
        let d = self.directory();
        let all = d.users();
        let users: Vec<Value> = all
            .iter()
            .skip(offset)
            .take(limit)
            .map(|(k, u)| user_json(k, u))
            .collect();
        Ok(json!({"total": all.len(), "offset": offset, "limit": limit, "users": users}))
    }

    fn get_user(&self, uri: &str) -> Result<Value, ApiError> {
        let k = identity("user", uri)?;
        let d = self.directory();
        let u = d
            .user(&k)
            .ok_or_else(|| ApiError::new(404, format!("no user '{uri}'")))?;
        Ok(user_json(&k, u))
    }

    fn put_user(&self, uri: &str, body: &[u8]) -> Result<Value, ApiError> {
        let spec: UserSpec = spec("user", uri, body)?;
        let k = identity("user", uri)?;
        self.change(|d| {
            let replaced = d.user(&k).is_some();
            d.put_user(&spec)
                .map_err(|e| ApiError::new(400, format!("user: {e}")))?;
            let mut v = d.user(&k).map_or(Value::Null, |u| user_json(&k, u));
            v["replaced"] = json!(replaced);
            Ok(v)
        })
    }

    fn delete_user(&self, uri: &str) -> Result<Value, ApiError> {
        let k = identity("user", uri)?;
        self.change(|d| {
            let u = d
                .user(&k)
                .map(|u| u.uri.clone())
                .ok_or_else(|| ApiError::new(404, format!("no user '{uri}'")))?;
            d.remove_user(&k);
            Ok(json!({"removed": u, "identity": k}))
        })
    }

    fn list_groups(&self, req: &Request) -> Result<Value, ApiError> {
        let (offset, limit) = page(req)?;
        let d = self.directory();
        let all = d.groups();
        let groups: Vec<Value> = all
            .iter()
            .skip(offset)
            .take(limit)
            .map(|(k, g)| self.group_json(k, g))
            .collect();
        Ok(json!({"total": all.len(), "offset": offset, "limit": limit, "groups": groups}))
    }

    fn get_group(&self, uri: &str) -> Result<Value, ApiError> {
        let k = identity("group", uri)?;
        let d = self.directory();
        let g = d
            .group(&k)
            .ok_or_else(|| ApiError::new(404, format!("no group '{uri}'")))?;
        Ok(self.group_json(&k, g))
    }

    fn put_group(&self, uri: &str, body: &[u8]) -> Result<Value, ApiError> {
        let spec: GroupSpec = spec("group", uri, body)?;
        let k = identity("group", uri)?;
        if !self.cluster.contains(&spec.host) {
            return Err(ApiError::new(
                400,
                format!(
                    "host: unknown shard '{}' (the configuration has {})",
                    spec.host,
                    self.cluster.join(", ")
                ),
            ));
        }
        self.change(|d| {
            let previous = d.group(&k).map(|g| g.host.clone());
            d.put_group(&spec)
                .map_err(|e| ApiError::new(400, format!("group: {e}")))?;
            let mut v = d.group(&k).map_or(Value::Null, |g| self.group_json(&k, g));
            v["previous_host"] = json!(previous);
            Ok(v)
        })
    }

    fn delete_group(&self, uri: &str) -> Result<Value, ApiError> {
        let k = identity("group", uri)?;
        self.change(|d| {
            let (u, host) = d
                .group(&k)
                .map(|g| (g.uri.clone(), g.host.clone()))
                .ok_or_else(|| ApiError::new(404, format!("no group '{uri}'")))?;
            d.remove_group(&k);
            Ok(json!({"removed": u, "identity": k, "host": host}))
        })
    }

    /// A user's registered contacts, as the shard serving the user (its
    /// Participating Function, the one the edge's REGISTER reached) last
    /// published them; `404` when no shard of this process has one live.
    fn get_registration(&self, uri: &str) -> Result<Value, ApiError> {
        let k = identity("user", uri)?;
        let now = Instant::now();
        for s in &self.shards {
            let table = s.snapshot.registrations();
            let contacts: Vec<Value> = table
                .contacts(&k, now)
                .map(|c| contact_json(c, now))
                .collect();
            if !contacts.is_empty() {
                return Ok(json!({"identity": k, "shard": s.name, "contacts": contacts}));
            }
        }
        Err(ApiError::new(404, format!("no registration of '{uri}'")))
    }

    fn group_json(&self, k: &str, g: &Group) -> Value {
        let members: Vec<&str> = g.members.iter().map(|m| m.uri.as_str()).collect();
        json!({
            "id": g.uri,
            "identity": k,
            "host": g.host,
            "hosted_here": self.hosted_here(&g.host),
            "members": members,
            "max_participants": g.max_participants,
            "invite": g.invite,
            "subject": g.subject,
            "media": g.media,
        })
    }

    fn list_shards(&self) -> Value {
        let d = self.directory();
        let shards: Vec<Value> = self
            .shards
            .iter()
            .map(|s| {
                let snap = s.snapshot.get();
                let sync = s.sync.as_ref().map(|y| {
                    json!({
                        "rounds_ok": y.rounds_ok.load(Relaxed),
                        "rounds_failed": y.rounds_failed.load(Relaxed),
                        "registered": y.registered.load(Relaxed),
                    })
                });
                json!({
                    "name": s.name,
                    "addr": s.addr.to_string(),
                    "sessions": snap.sessions,
                    "dialogs": snap.dialogs,
                    "transactions": snap.transactions,
                    "groups_hosted": d.hosted_by(&s.name).count(),
                    "sync": sync,
                })
            })
            .collect();
        json!({"shards": shards, "configured": self.cluster, "changes": self.changes.load(Relaxed)})
    }

    /// The whole exposition, through prometheus-client's text encoder.
    pub fn metrics(&self) -> String {
        let d = self.directory();
        let rows = self
            .shards
            .iter()
            .map(|s| Row {
                shard: s.name.clone(),
                snap: s.snapshot.get(),
                sync: s.sync.as_ref().map(|y| {
                    [
                        y.rounds_ok.load(Relaxed),
                        y.rounds_failed.load(Relaxed),
                        y.registered.load(Relaxed),
                    ]
                }),
                hosted: d.hosted_by(&s.name).count() as u64,
            })
            .collect();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Metrics {
            rows,
            users: d.users().len() as u64,
            groups: d.groups().len() as u64,
            changes: self.changes.load(Relaxed),
        }));
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail, and the collector returns no error.
        let _ = prometheus_text::encode(&mut out, &registry);
        out
    }
}

/// `offset=` and `limit=` (both optional; `limit` capped at [`MAX_PAGE`]).
fn page(req: &Request) -> Result<(usize, usize), ApiError> {
    let num = |k: &str, default: usize| -> Result<usize, ApiError> {
        req.query_param(k).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| ApiError::new(400, format!("{k}: '{v}' is not a whole number")))
        })
    };
    Ok((num("offset", 0)?, num("limit", DEFAULT_PAGE)?.min(MAX_PAGE)))
}

/// The canonical identity of a URI in the path, or the directory's reason.
fn identity(what: &str, uri: &str) -> Result<String, ApiError> {
    checked_identity(uri).map_err(|e| ApiError::new(400, format!("{what}: {e}")))
}

/// A [`UserSpec`] or [`GroupSpec`] from a body without `id` (the path is
/// the id; an `id` in the body must say the same). An empty body is `{}`.
fn spec<T: serde::de::DeserializeOwned>(what: &str, uri: &str, body: &[u8]) -> Result<T, ApiError> {
    let mut v: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::new(400, format!("malformed JSON body: {e}")))?
    };
    let Some(obj) = v.as_object_mut() else {
        return Err(ApiError::new(
            400,
            format!("{what}: the body must be a JSON object"),
        ));
    };
    match obj.get("id") {
        None => {}
        Some(Value::String(id)) if id == uri => {}
        Some(_) => {
            return Err(ApiError::new(
                400,
                format!("{what}: 'id' in the body differs from the path '{uri}' (leave it out)"),
            ))
        }
    }
    obj.insert("id".into(), json!(uri));
    serde_json::from_value(v).map_err(|e| ApiError::new(400, format!("{what}: {e}")))
}

fn contact_json(c: &Contact, now: Instant) -> Value {
    let services: Vec<&str> = SERVICE_NAMES
        .iter()
        .filter(|(bit, _)| c.services.0 & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    json!({
        "uri": c.uri,
        "services": services,
        "q": c.q.map(|q| f64::from(q) / 1000.0),
        "expires": c.expires_in(now).as_secs(),
    })
}

fn user_json(k: &str, u: &User) -> Value {
    json!({"id": u.uri, "identity": k, "media": u.media})
}

/// One shard's figures, read when scraped.
#[derive(Debug)]
struct Row {
    shard: String,
    snap: Snapshot,
    /// Sync rounds ok, failed, groups registered (when it syncs).
    sync: Option<[u64; 3]>,
    hosted: u64,
}

#[derive(Debug)]
struct Metrics {
    rows: Vec<Row>,
    users: u64,
    groups: u64,
    changes: u64,
}

const FUNCTIONS: [&str; 3] = ["orig", "term", "ctrl"];

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let e = &mut enc;
        let per = |f: fn(&Row) -> u64| -> Vec<([(&str, &str); 1], u64)> {
            self.rows
                .iter()
                .map(|r| ([("shard", r.shard.as_str())], f(r)))
                .collect()
        };
        gauges(
            e,
            "cpm_cs_sessions",
            "Sessions in progress, per shard.",
            per(|r| r.snap.sessions as u64),
        )?;
        gauges(
            e,
            "cpm_cs_dialogs",
            "Dialogs held, per shard.",
            per(|r| r.snap.dialogs as u64),
        )?;
        gauges(
            e,
            "cpm_cs_transactions",
            "SIP transactions held, per shard.",
            per(|r| r.snap.transactions as u64),
        )?;
        counters(
            e,
            "cpm_cs_sessions_started",
            "Sessions started, per shard and function (orig/term: Participating, ctrl: Controlling).",
            self.rows.iter().flat_map(|r| {
                FUNCTIONS
                    .iter()
                    .zip(r.snap.stats.sessions_started)
                    .map(|(f, v)| ([("shard", r.shard.as_str()), ("function", *f)], v))
            }),
        )?;
        counters(
            e,
            "cpm_cs_sessions_ended",
            "Sessions ended, per shard.",
            per(|r| r.snap.stats.sessions_ended),
        )?;
        counters(
            e,
            "cpm_cs_refused",
            "Requests refused (INVITEs, REGISTERs), per shard.",
            per(|r| r.snap.stats.refused),
        )?;
        counters(
            e,
            "cpm_cs_not_from_edge",
            "INVITEs from an address that is not a configured edge, per shard.",
            per(|r| r.snap.stats.not_from_edge),
        )?;
        counters(
            e,
            "cpm_cs_group_divergence",
            "ctrl INVITEs for a group this shard does not host (the edge's group table disagrees), per shard.",
            per(|r| r.snap.stats.group_divergence),
        )?;
        counters(
            e,
            "cpm_cs_answers_refused",
            "Answers refused by the media policy (5.2.3.7), per shard.",
            per(|r| r.snap.stats.answers_refused),
        )?;
        counters(
            e,
            "cpm_cs_in_dialog_relayed",
            "In-dialog requests relayed by a Participating Function, per shard.",
            per(|r| r.snap.stats.relayed),
        )?;
        counters(
            e,
            "cpm_cs_registers",
            "Third-party REGISTERs from the edge stored (registrations, refreshes, de-registrations), per shard.",
            per(|r| r.snap.stats.registers),
        )?;
        counters(
            e,
            "cpm_cs_datagrams_in",
            "Datagrams received, per shard.",
            per(|r| r.snap.datagrams_in),
        )?;
        counters(
            e,
            "cpm_cs_datagrams_out",
            "Datagrams sent, per shard.",
            per(|r| r.snap.datagrams_out),
        )?;
        counters(
            e,
            "cpm_cs_send_errors",
            "Datagrams the socket refused to send, per shard.",
            per(|r| r.snap.send_errors),
        )?;
        counters(
            e,
            "cpm_cs_group_sync_rounds",
            "Rounds registering the hosted groups with the edge's admin API, per shard and result.",
            self.rows.iter().flat_map(|r| {
                r.sync.into_iter().flat_map(|[ok, failed, _]| {
                    [
                        ([("shard", r.shard.as_str()), ("result", "ok")], ok),
                        ([("shard", r.shard.as_str()), ("result", "failed")], failed),
                    ]
                })
            }),
        )?;
        gauges(
            e,
            "cpm_cs_groups_registered",
            "Groups registered with the edge by the last sync round, per shard.",
            self.rows
                .iter()
                .filter_map(|r| r.sync.map(|[_, _, n]| ([("shard", r.shard.as_str())], n))),
        )?;
        gauges(
            e,
            "cpm_cs_groups_hosted",
            "Groups of the directory this shard hosts (Controlling Function).",
            per(|r| r.hosted),
        )?;
        gauge(e, "cpm_cs_users", "Users in the directory.", self.users)?;
        gauge(e, "cpm_cs_groups", "Groups in the directory.", self.groups)?;
        counter(
            e,
            "cpm_cs_admin_changes",
            "Directory changes applied through the admin API.",
            self.changes,
        )
    }
}

/// The admin API of a process, serving; dropping it stops it.
pub struct AdminServer {
    /// Where it listens (resolved when bound to port 0).
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// Stop serving; returns once the server thread has (the requests in
    /// hand answered, at most [`http::STOP_GRACE`]).
    pub fn stop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Bind `cfg.bind` and serve `api` there, on the edge's HTTP server with
/// its connection limits and timeouts, bodies up to [`MAX_BODY`] and
/// `cfg.token` as the bearer token (refused off loopback without one).
pub fn serve(cfg: &AdminApi, api: Arc<CsApi>) -> Result<AdminServer, String> {
    let listener = TcpListener::bind(cfg.bind)
        .map_err(|e| format!("cannot bind the admin API on {}: {e}", cfg.bind))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("admin API: {e}"))?;
    let http_cfg = HttpConfig {
        token: cfg.token.clone(),
        max_body: MAX_BODY,
        ..HttpConfig::default()
    };
    let handler: Handler = Arc::new(move |req| api.handle(req));
    let stop = Arc::new(AtomicBool::new(false));
    let thread = http::serve(listener, http_cfg, handler, Arc::clone(&stop))
        .map_err(|e| format!("cannot start the admin API on {addr}: {e}"))?;
    Ok(AdminServer {
        addr,
        stop,
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cs::directory::InvitePolicy;

    /// An API over directories without running shards (counters read zeros).
    fn api(shards: &[&str]) -> CsApi {
        let d = Directory::new(
            &[UserSpec {
                id: "sip:alice@127.0.0.1:5071".into(),
                media: Default::default(),
                when_unregistered: None,
                msisdn: None,
            }],
            &[GroupSpec {
                id: "sip:team@groups.example.net".into(),
                host: "cs1".into(),
                members: vec!["sip:alice@127.0.0.1:5071".into()],
                max_participants: 8,
                invite: InvitePolicy::Members,
                subject: Some("t".into()),
                media: Default::default(),
            }],
        )
        .unwrap();
        CsApi {
            shards: shards
                .iter()
                .enumerate()
                .map(|(i, n)| ShardView {
                    name: n.to_string(),
                    addr: format!("127.0.0.1:{}", 7001 + i).parse().unwrap(),
                    directory: Arc::new(ArcSwap::from_pointee(d.clone())),
                    snapshot: SnapshotReader::default(),
                    sync: None,
                })
                .collect(),
            cluster: vec!["cs1".into(), "cs2".into()],
            writer: Mutex::new(()),
            changes: AtomicU64::new(0),
        }
    }

    fn req(method: &str, target: &str, body: &str) -> Request {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Request {
            method: method.into(),
            path: path.into(),
            raw_path: target.into(),
            query: query
                .split('&')
                .filter(|q| !q.is_empty())
                .map(|q| {
                    let (k, v) = q.split_once('=').unwrap_or((q, ""));
                    (k.to_string(), v.to_string())
                })
                .collect(),
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
            peer: "127.0.0.1:1".parse().unwrap(),
        }
    }

    fn call(a: &CsApi, method: &str, target: &str, body: &str) -> (u16, Value) {
        let r = a.handle(&req(method, target, body));
        let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        (r.status, v)
    }

    fn error(v: &Value) -> &str {
        v["error"].as_str().unwrap_or("")
    }

    #[test]
    fn users_are_put_read_and_removed_on_every_shard() {
        let a = api(&["cs1", "cs2"]);
        let (code, v) = call(&a, "PUT", "/users/sip:bob@127.0.0.1:5072", "");
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["identity"], "bob@127.0.0.1");
        assert_eq!(v["replaced"], false);
        for s in &a.shards {
            assert!(s.directory.load().user("bob@127.0.0.1").is_some());
        }
        let body = r#"{"media": {"allowed_media": ["message"]}}"#;
        let (code, v) = call(&a, "PUT", "/users/sip:bob@127.0.0.1:5072", body);
        assert_eq!((code, &v["replaced"]), (200, &json!(true)), "{v}");
        assert_eq!(v["media"]["allowed_media"], json!(["message"]));
        // Looked up by identity: port and parameters do not matter.
        let (code, v) = call(&a, "GET", "/users/sip:bob@127.0.0.1;transport=udp", "");
        assert_eq!(
            (code, v["id"].as_str()),
            (200, Some("sip:bob@127.0.0.1:5072"))
        );
        let (code, v) = call(&a, "GET", "/users?limit=1&offset=1", "");
        assert_eq!(code, 200);
        assert_eq!(v["total"], 2);
        assert_eq!(v["users"][0]["identity"], "bob@127.0.0.1");
        let (code, _) = call(&a, "DELETE", "/users/sip:bob@127.0.0.1:5072", "");
        assert_eq!(code, 200);
        for s in &a.shards {
            assert!(s.directory.load().user("bob@127.0.0.1").is_none());
        }
        let (code, v) = call(&a, "DELETE", "/users/sip:bob@127.0.0.1:5072", "");
        assert_eq!(code, 404);
        assert!(error(&v).contains("no user"), "{v}");
        assert_eq!(a.changes.load(Relaxed), 3);
    }

    #[test]
    fn groups_are_specs_without_id_and_their_host_is_a_configured_shard() {
        let a = api(&["cs1", "cs2"]);
        let body = r#"{"host": "cs2", "members": ["sip:alice@127.0.0.1:5071"], "subject": "s"}"#;
        let (code, v) = call(&a, "PUT", "/groups/sip:new@groups.example.net", body);
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["host"], "cs2");
        assert_eq!(v["hosted_here"], true);
        assert_eq!(v["previous_host"], Value::Null);
        assert_eq!(v["max_participants"], 64);
        assert_eq!(v["invite"], "members");
        let (code, v) = call(
            &a,
            "PUT",
            "/groups/sip:new@groups.example.net",
            &body.replace("cs2", "cs1"),
        );
        assert_eq!((code, &v["previous_host"]), (200, &json!("cs2")), "{v}");
        let (code, v) = call(&a, "GET", "/groups", "");
        assert_eq!((code, &v["total"]), (200, &json!(2)));
        // An encoded '/' stays inside its segment.
        let (code, v) = call(&a, "PUT", "/groups/sip:a%2Fb@groups.example.net", body);
        assert_eq!(
            (code, v["id"].as_str()),
            (200, Some("sip:a/b@groups.example.net")),
            "{v}"
        );
        let (code, _) = call(&a, "DELETE", "/groups/sip:a%2Fb@groups.example.net", "");
        assert_eq!(code, 200);
        let (code, v) = call(&a, "GET", "/groups/sip:a%2Fb@groups.example.net", "");
        assert_eq!(code, 404, "{v}");
    }

    #[test]
    fn bad_input_is_refused_with_its_reason_and_changes_nothing() {
        let a = api(&["cs1", "cs2"]);
        let g = "/groups/sip:bad@groups.example.net";
        let cases: [(&str, &str, &str, u16, &str); 11] = [
            ("PUT", g, "{", 400, "malformed JSON body"),
            ("PUT", g, "[1]", 400, "must be a JSON object"),
            ("PUT", g, r#"{"members": []}"#, 400, "missing field `host`"),
            (
                "PUT",
                g,
                r#"{"host": "cs9", "members": []}"#,
                400,
                "unknown shard 'cs9'",
            ),
            (
                "PUT",
                g,
                r#"{"host": "cs1", "members": ["sip:a b@x"]}"#,
                400,
                "not a SIP URI",
            ),
            (
                "PUT",
                g,
                r#"{"host": "cs1", "members": [], "max_participants": 1}"#,
                400,
                "max_participants below 2",
            ),
            (
                "PUT",
                g,
                r#"{"host": "cs1", "members": [], "colour": 1}"#,
                400,
                "unknown field `colour`",
            ),
            (
                "PUT",
                g,
                r#"{"id": "sip:other@x", "host": "cs1", "members": []}"#,
                400,
                "differs from the path",
            ),
            (
                "PUT",
                "/groups/mailto:g@x",
                r#"{"host": "cs1", "members": []}"#,
                400,
                "not a sip:, sips: or tel: URI",
            ),
            (
                "PUT",
                "/users/sip:u@x",
                r#"{"media": {"allowed_media": 3}}"#,
                400,
                "user: ",
            ),
            (
                "GET",
                "/users?limit=many",
                "",
                400,
                "limit: 'many' is not a whole number",
            ),
        ];
        for (method, target, body, status, reason) in cases {
            let (code, v) = call(&a, method, target, body);
            assert_eq!(code, status, "{method} {target} {body}: {v}");
            assert!(error(&v).contains(reason), "{method} {target} {body}: {v}");
        }
        assert_eq!(a.changes.load(Relaxed), 0);
        let (code, _) = call(&a, "POST", "/groups", "");
        assert_eq!(code, 405);
        let (code, _) = call(&a, "GET", "/nothing", "");
        assert_eq!(code, 404);
    }

    #[test]
    fn a_change_one_shard_refuses_is_stored_on_none() {
        let a = api(&["cs1", "cs2"]);
        // cs2's directory lost alice (by hand): her DELETE fails there, so
        // cs1 keeps her too.
        let mut d = Directory::clone(&a.shards[1].directory.load());
        d.remove_user("alice@127.0.0.1");
        a.shards[1].directory.store(Arc::new(d));
        let before = a.shards[0].directory.load_full();
        let (code, _) = call(&a, "DELETE", "/users/sip:alice@127.0.0.1", "");
        assert_eq!(code, 404);
        assert!(Arc::ptr_eq(&before, &a.shards[0].directory.load_full()));
    }

    #[test]
    fn registrations_are_read_only_and_404_without_one() {
        let a = api(&["cs1", "cs2"]);
        let (code, v) = call(&a, "GET", "/registrations/sip:alice@127.0.0.1:5071", "");
        assert_eq!(code, 404, "{v}");
        assert!(error(&v).contains("no registration"), "{v}");
        let (code, v) = call(&a, "GET", "/registrations/mailto:a@x", "");
        assert_eq!(code, 400, "{v}");
        let (code, _) = call(&a, "PUT", "/registrations/sip:alice@127.0.0.1", "{}");
        assert_eq!(code, 405);
        let services = SERVICE_NAMES.iter().fold(0, |acc, (b, _)| acc | b);
        assert_eq!(services, 63, "every CPM service has its name");
    }

    #[test]
    fn metrics_and_shards_name_every_shard() {
        let a = api(&["cs1", "cs2"]);
        let text = a.metrics();
        assert!(text.ends_with('\n'), "{text:?}");
        for line in [
            "cpm_cs_sessions{shard=\"cs1\"} 0",
            "cpm_cs_sessions_started_total{shard=\"cs2\",function=\"ctrl\"} 0",
            "cpm_cs_group_divergence_total{shard=\"cs1\"} 0",
            "cpm_cs_groups_hosted{shard=\"cs1\"} 1",
            "cpm_cs_users 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        let (code, v) = call(&a, "GET", "/shards", "");
        assert_eq!(code, 200);
        assert_eq!(v["shards"][1]["name"], "cs2");
        assert_eq!(v["shards"][0]["groups_hosted"], 1);
        assert_eq!(v["configured"], json!(["cs1", "cs2"]));
    }
}
