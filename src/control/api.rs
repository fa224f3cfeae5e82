//! The admin API's endpoints: JSON in and out, every change through
//! [`ControlPlane::publish`] so it is applied whole or refused whole.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /groups?offset=&limit=` | list groups (canonical ids) |
//! | `GET /groups/{uri}` | one group and where it goes now |
//! | `POST /groups` `{"id","shard"}` | create (409 if it exists) |
//! | `PUT /groups/{uri}` `{"shard"}` | create or move |
//! | `DELETE /groups/{uri}` | remove |
//! | `POST /groups/batch` `{"upsert":[{"id","shard"}],"remove":[uri]}` | atomic batch |
//! | `GET /shards` | shards with state, backup, group count |
//! | `POST /shards` `{"name","addr","backup"?}` | add a shard |
//! | `POST /shards/{name}/drain`, `/undrain` | stop / resume new users |
//! | `DELETE /shards/{name}` | remove (409 while it hosts groups) |
//! | `GET /policies` | media policies (default, per user, per group) |
//! | `PUT`/`DELETE /policies/default`, `/policies/users/{uri}`, `/policies/groups/{uri}` | set / remove one |
//! | `GET /config` | the running configuration |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /health`, `GET /ready` | liveness; readiness = at least one shard up |
//! | `/registrations`, `/credentials`, `/registrar` | the registrar's (see `registrar_api`) |

use super::http::{Request, Response};
use super::{ApiError, ControlPlane};
use crate::config::group_key;
use crate::route::groups::GroupTable;
use crate::route::shards::{ShardSpec, ShardState};
use crate::route::Tables;
use crate::sip::media::MediaPolicy;
use serde_json::{json, Value};
use std::sync::atomic::Ordering::Relaxed;

/// Route one request to its endpoint.
///
/// Path segments are percent-decoded one by one (see
/// [`Request::path_segments`]): a group id holding `/` is addressed with
/// `%2F`, so every id that can be created can be read and deleted.
pub fn handle(cp: &ControlPlane, req: &Request) -> Response {
    let Some(owned) = req.path_segments() else {
        return Response::error(400, "malformed request target");
    };
    let segs: Vec<&str> = owned.iter().map(String::as_str).collect();
    if let Some(r) =
        super::registrar_api::handle(cp.registrar.as_ref(), &req.method, &segs, &req.body)
    {
        return answer(r, req, "admin request refused");
    }
    let r = match (req.method.as_str(), segs.as_slice()) {
        ("GET", ["health"]) => return Response::text(200, "ok\n"),
        ("GET", ["ready"]) => return ready(cp),
        ("GET", ["metrics"]) => {
            let mut r = Response::text(200, super::metrics::render(cp));
            r.content_type = "text/plain; version=0.0.4";
            return r;
        }
        ("GET", ["config"]) => Ok(config(cp)),
        ("GET", ["groups"]) => Ok(list_groups(cp, req)),
        ("GET", ["groups", id]) => get_group(cp, id),
        ("POST", ["groups"]) => body(req).and_then(|b| create_group(cp, &b)),
        ("POST", ["groups", "batch"]) => body(req).and_then(|b| batch(cp, &b)),
        ("PUT", ["groups", id]) => body(req).and_then(|b| put_group(cp, id, &b)),
        ("DELETE", ["groups", id]) => delete_group(cp, id),
        ("GET", ["shards"]) => Ok(list_shards(&cp.snapshot())),
        ("POST", ["shards"]) => body(req).and_then(|b| add_shard(cp, &b)),
        ("POST", ["shards", name, "drain"]) => drain(cp, name, true),
        ("POST", ["shards", name, "undrain"]) => drain(cp, name, false),
        ("DELETE", ["shards", name]) => remove_shard(cp, name),
        ("GET", ["policies"]) => Ok(list_policies(&cp.snapshot())),
        ("PUT", ["policies", "default"]) => {
            body(req).and_then(|b| set_policy(cp, PolicyScope::Default, &b))
        }
        ("DELETE", ["policies", "default"]) => drop_policy(cp, PolicyScope::Default),
        ("PUT", ["policies", "users", id]) => {
            body(req).and_then(|b| set_policy(cp, PolicyScope::User(id), &b))
        }
        ("DELETE", ["policies", "users", id]) => drop_policy(cp, PolicyScope::User(id)),
        ("PUT", ["policies", "groups", id]) => {
            body(req).and_then(|b| set_policy(cp, PolicyScope::Group(id), &b))
        }
        ("DELETE", ["policies", "groups", id]) => drop_policy(cp, PolicyScope::Group(id)),
        (_, ["health" | "ready" | "metrics" | "config" | "groups" | "shards" | "policies", ..]) => {
            Err(ApiError::new(
                405,
                format!("{} is not allowed on {}", req.method, req.path),
            ))
        }
        _ => Err(ApiError::new(404, format!("no endpoint {}", req.path))),
    };
    answer(r, req, "admin request refused")
}

/// The JSON answer of an endpoint's result; a refusal is logged with `what`.
/// Shared by the edge's and the Conversation Server's admin APIs.
pub(super) fn answer(r: Result<Value, ApiError>, req: &Request, what: &str) -> Response {
    match r {
        Ok(v) => Response::json(200, &v),
        Err(e) => {
            tracing::info!(status = e.status, error = %e.message, method = %req.method, path = %req.path, "{what}");
            Response::error(e.status, &e.message)
        }
    }
}

fn body(req: &Request) -> Result<Value, ApiError> {
    serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::new(400, format!("malformed JSON body: {e}")))
}

fn str_field<'a>(v: &'a Value, k: &str) -> Result<&'a str, ApiError> {
    v.get(k)
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::new(400, format!("field '{k}' (a string) is required")))
}

fn key(id: &str) -> Result<Vec<u8>, ApiError> {
    group_key(id).map_err(|e| ApiError::new(400, format!("group id: {e}")))
}

fn display_id(k: &[u8]) -> String {
    format!("sip:{}", String::from_utf8_lossy(k))
}

fn shard_index(t: &Tables, name: &str) -> Result<usize, ApiError> {
    t.shards
        .by_name(name)
        .ok_or_else(|| ApiError::new(404, format!("unknown shard '{name}'")))
}

fn ready(cp: &ControlPlane) -> Response {
    let t = cp.snapshot();
    let up = t
        .shards
        .live()
        .filter(|(_, s)| s.state == ShardState::Up)
        .count();
    let v = json!({"ready": up > 0, "shards_up": up});
    Response::json(if up > 0 { 200 } else { 503 }, &v)
}

fn config(cp: &ControlPlane) -> Value {
    let c = cp.config.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let t = cp.snapshot();
    json!({
        "listen": c.server.listen.to_string(),
        "advertise": c.advertise,
        "workers": c.server.workers.count,
        "cpus": c.server.workers.cpus,
        "io_backend": cp.backend.name(),
        "batch": c.server.workers.batch,
        "recv_buffers": c.server.workers.recv_buffers,
        "max_datagram": c.server.workers.max_datagram,
        "routing": {
            "originating_pf": t.originating_pf,
            "record_route": t.record_route,
            "non_cpm_route": t.non_cpm_route.map(|a| a.to_string()),
        },
        "health": c.health.map(|h| json!({
            "interval_ms": h.interval.as_millis() as u64,
            "timeout_ms": h.timeout.as_millis() as u64,
            "fail_threshold": h.fail_threshold,
            "ok_threshold": h.ok_threshold,
        })),
        "retry_after_s": t.retry_after_s,
        "admin_bind": c.admin_bind.map(|a| a.to_string()),
        "shards": list_shards(&t)["shards"].clone(),
        "groups": t.groups.len(),
        "generation": t.generation,
    })
}

fn list_groups(cp: &ControlPlane, req: &Request) -> Value {
    let t = cp.snapshot();
    let offset = req
        .query_param("offset")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0usize);
    let limit = req
        .query_param("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000usize)
        .min(100_000);
    let mut all: Vec<(&[u8], u16)> = t.groups.iter().collect();
    all.sort_unstable();
    let page: Vec<Value> = all
        .iter()
        .skip(offset)
        .take(limit)
        .map(|(k, s)| json!({"id": display_id(k), "shard": t.shards.get(usize::from(*s)).name}))
        .collect();
    json!({"total": all.len(), "offset": offset, "groups": page, "generation": t.generation})
}

fn group_json(t: &Tables, k: &[u8], s: u16) -> Value {
    let host = t.shards.get(usize::from(s));
    let now = t
        .shards
        .group_target(usize::from(s))
        .map(|i| t.shards.get(i).name.clone());
    json!({"id": display_id(k), "shard": host.name, "shard_state": host.state.name(), "routed_to": now})
}

fn get_group(cp: &ControlPlane, id: &str) -> Result<Value, ApiError> {
    let k = key(id)?;
    let t = cp.snapshot();
    let s = t
        .groups
        .get(&k)
        .ok_or_else(|| ApiError::new(404, format!("no group '{id}'")))?;
    Ok(group_json(&t, &k, s))
}

fn changed(cp: &ControlPlane, v: Value) -> Value {
    cp.api_changes.fetch_add(1, Relaxed);
    let mut v = v;
    v["generation"] = json!(cp.snapshot().generation);
    v
}

fn create_group(cp: &ControlPlane, b: &Value) -> Result<Value, ApiError> {
    let id = str_field(b, "id")?;
    let shard = str_field(b, "shard")?;
    let k = key(id)?;
    let v = cp.publish(|t| {
        let s = shard_index(t, shard)?;
        if t.groups.get(&k).is_some() {
            return Err(ApiError::new(
                409,
                format!("group '{id}' already exists (PUT /groups/{{id}} moves it)"),
            ));
        }
        t.groups.insert(&k, s as u16);
        Ok(group_json(t, &k, s as u16))
    })?;
    Ok(changed(cp, v))
}

fn put_group(cp: &ControlPlane, id: &str, b: &Value) -> Result<Value, ApiError> {
    let shard = str_field(b, "shard")?;
    let k = key(id)?;
    let v = cp.publish(|t| {
        let s = shard_index(t, shard)?;
        let prev = t.groups.insert(&k, s as u16);
        let mut v = group_json(t, &k, s as u16);
        v["previous"] = json!(prev.map(|p| t.shards.get(usize::from(p)).name.clone()));
        Ok(v)
    })?;
    Ok(changed(cp, v))
}

fn delete_group(cp: &ControlPlane, id: &str) -> Result<Value, ApiError> {
    let k = key(id)?;
    let v = cp.publish(|t| {
        let prev = t
            .groups
            .remove(&k)
            .ok_or_else(|| ApiError::new(404, format!("no group '{id}'")))?;
        Ok(json!({"id": display_id(&k), "removed_from": t.shards.get(usize::from(prev)).name}))
    })?;
    Ok(changed(cp, v))
}

/// Validate the whole batch first, then apply it to the private copy: one
/// bad entry refuses everything.
fn batch(cp: &ControlPlane, b: &Value) -> Result<Value, ApiError> {
    let upsert = b.get("upsert").map_or(Ok(&[][..]), |v| {
        v.as_array()
            .map(Vec::as_slice)
            .ok_or_else(|| ApiError::new(400, "'upsert' must be an array"))
    })?;
    let remove = b.get("remove").map_or(Ok(&[][..]), |v| {
        v.as_array()
            .map(Vec::as_slice)
            .ok_or_else(|| ApiError::new(400, "'remove' must be an array"))
    })?;
    if upsert.is_empty() && remove.is_empty() {
        return Err(ApiError::new(
            400,
            "empty batch: give 'upsert' and/or 'remove'",
        ));
    }
    let v = cp.publish(|t| {
        let mut seen = std::collections::HashSet::new();
        let mut ops: Vec<(Vec<u8>, Option<u16>)> = Vec::with_capacity(upsert.len() + remove.len());
        for (i, u) in upsert.iter().enumerate() {
            let at = |e: ApiError| ApiError::new(e.status, format!("upsert[{i}]: {}", e.message));
            let id = str_field(u, "id").map_err(at)?;
            let k = key(id).map_err(at)?;
            let s = shard_index(t, str_field(u, "shard").map_err(at)?).map_err(at)?;
            if !seen.insert(k.clone()) {
                return Err(ApiError::new(
                    409,
                    format!("upsert[{i}]: duplicate group '{id}' in the batch"),
                ));
            }
            ops.push((k, Some(s as u16)));
        }
        for (i, r) in remove.iter().enumerate() {
            let id = r.as_str().ok_or_else(|| {
                ApiError::new(400, format!("remove[{i}]: a group URI string is required"))
            })?;
            let k = key(id)
                .map_err(|e| ApiError::new(e.status, format!("remove[{i}]: {}", e.message)))?;
            if t.groups.get(&k).is_none() {
                return Err(ApiError::new(404, format!("remove[{i}]: no group '{id}'")));
            }
            if !seen.insert(k.clone()) {
                return Err(ApiError::new(
                    409,
                    format!("remove[{i}]: group '{id}' appears twice in the batch"),
                ));
            }
            ops.push((k, None));
        }
        let (mut added, mut moved, mut removed) = (0, 0, 0);
        let groups: &mut GroupTable = &mut t.groups;
        for (k, op) in &ops {
            match op {
                Some(s) => match groups.insert(k, *s) {
                    None => added += 1,
                    Some(p) if p != *s => moved += 1,
                    Some(_) => {}
                },
                None => {
                    groups.remove(k);
                    removed += 1;
                }
            }
        }
        Ok(json!({"added": added, "moved": moved, "removed": removed, "total": groups.len()}))
    })?;
    Ok(changed(cp, v))
}

fn list_shards(t: &Tables) -> Value {
    let mut counts = vec![0usize; t.shards.len()];
    for (_, s) in t.groups.iter() {
        if let Some(c) = counts.get_mut(usize::from(s)) {
            *c += 1;
        }
    }
    let shards: Vec<Value> = t
        .shards
        .live()
        .map(|(i, s)| {
            json!({
                "name": s.name,
                "addr": s.addr.to_string(),
                "state": s.state.name(),
                "backup": s.backup.map(|b| t.shards.get(usize::from(b)).name.clone()),
                "groups": counts[i],
            })
        })
        .collect();
    json!({"shards": shards, "generation": t.generation})
}

fn add_shard(cp: &ControlPlane, b: &Value) -> Result<Value, ApiError> {
    let name = str_field(b, "name")?;
    crate::config::check_shard_name(name).map_err(|e| ApiError::new(400, format!("name: {e}")))?;
    let addr = str_field(b, "addr")?
        .parse()
        .map_err(|_| ApiError::new(400, "addr: not an IP:port socket address"))?;
    let (listen, advertise) = {
        let c = cp.config.lock().unwrap_or_else(|p| p.into_inner());
        (c.server.listen, c.advertise.clone())
    };
    crate::config::check_shard_addr(addr, listen, &advertise)
        .map_err(|e| ApiError::new(400, format!("addr: {e}")))?;
    let backup = b.get("backup").and_then(Value::as_str).map(str::to_string);
    let spec = ShardSpec {
        name: name.to_string(),
        addr,
        transport: Default::default(),
        backup,
    };
    let v = cp.publish(|t| {
        let i = t.shards.add(&spec).map_err(|e| ApiError::new(409, e))?;
        Ok(json!({"name": name, "addr": addr.to_string(), "slot": i}))
    })?;
    Ok(changed(cp, v))
}

fn drain(cp: &ControlPlane, name: &str, on: bool) -> Result<Value, ApiError> {
    let v = cp.publish(|t| {
        let i = shard_index(t, name)?;
        let state = t.shards.get(i).state;
        let next = match (state, on) {
            (ShardState::Down, _) => {
                return Err(ApiError::new(
                    409,
                    format!("shard '{name}' is down; its state follows health checks"),
                ))
            }
            (_, true) => ShardState::Draining,
            (_, false) => ShardState::Up,
        };
        t.shards.set_state(i, next);
        Ok(json!({"name": name, "state": next.name()}))
    })?;
    Ok(changed(cp, v))
}

fn remove_shard(cp: &ControlPlane, name: &str) -> Result<Value, ApiError> {
    let v = cp.publish(|t| {
        let i = shard_index(t, name)?;
        let hosted = t.groups.count_on(i as u16);
        if hosted > 0 {
            return Err(ApiError::new(
                409,
                format!("shard '{name}' still hosts {hosted} group(s): move them first"),
            ));
        }
        t.shards.remove(i).map_err(|e| ApiError::new(409, e))?;
        Ok(json!({"removed": name}))
    })?;
    Ok(changed(cp, v))
}

enum PolicyScope<'a> {
    Default,
    User(&'a str),
    Group(&'a str),
}

/// The table key of a policy scope: `None` for the default, else the
/// canonical identity and whether it is a group.
fn policy_key(scope: &PolicyScope<'_>) -> Result<Option<(Vec<u8>, bool)>, ApiError> {
    Ok(match scope {
        PolicyScope::Default => None,
        PolicyScope::User(id) => Some((
            crate::config::user_key(id).map_err(|e| ApiError::new(400, format!("user: {e}")))?,
            false,
        )),
        PolicyScope::Group(id) => Some((key(id)?, true)),
    })
}

fn list_policies(t: &Tables) -> Value {
    let p = &t.policy;
    let map = |m: &std::collections::HashMap<Vec<u8>, MediaPolicy>| -> Value {
        let mut v: Vec<(&Vec<u8>, &MediaPolicy)> = m.iter().collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        Value::Object(
            v.into_iter()
                .map(|(k, p)| (String::from_utf8_lossy(k).into_owned(), json!(p)))
                .collect(),
        )
    };
    json!({"default": p.default, "users": map(&p.users), "groups": map(&p.groups), "on_violation": p.on_violation, "generation": t.generation})
}

fn set_policy(cp: &ControlPlane, scope: PolicyScope<'_>, b: &Value) -> Result<Value, ApiError> {
    let p: MediaPolicy = serde_json::from_value(b.clone())
        .map_err(|e| ApiError::new(400, format!("policy: {e}")))?;
    crate::config::check_policy("policy", &p).map_err(|e| ApiError::new(400, e.to_string()))?;
    let key = policy_key(&scope)?;
    let v = cp.publish(|t| {
        let table = std::sync::Arc::make_mut(&mut t.policy);
        match key {
            None => table.default = Some(p.clone()),
            Some((k, false)) => drop(table.users.insert(k, p.clone())),
            Some((k, true)) => drop(table.groups.insert(k, p.clone())),
        }
        Ok(json!({"policy": p}))
    })?;
    Ok(changed(cp, v))
}

fn drop_policy(cp: &ControlPlane, scope: PolicyScope<'_>) -> Result<Value, ApiError> {
    let key = policy_key(&scope)?;
    let v = cp.publish(|t| {
        let table = std::sync::Arc::make_mut(&mut t.policy);
        let had = match &key {
            None => table.default.take().is_some(),
            Some((k, false)) => table.users.remove(k).is_some(),
            Some((k, true)) => table.groups.remove(k).is_some(),
        };
        if !had {
            return Err(ApiError::new(404, "no such policy"));
        }
        Ok(json!({"removed": true}))
    })?;
    Ok(changed(cp, v))
}
