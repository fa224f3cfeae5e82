//! The registrar's admin endpoints (beside `api`'s):
//!
//! | method and path | what |
//! |---|---|
//! | `GET /registrations/{aor}` | the AoR's bindings: contact, flow, expires, q, CPM services, instance, reg-id |
//! | `GET /credentials` | the AoRs that have credentials (never the hashes) |
//! | `PUT /credentials/{aor}` `{"ha1_md5"?, "ha1_sha256"?}` | set a user's HA1 values (hex); written back to `credentials_file` |
//! | `DELETE /credentials/{aor}` | remove a user |
//! | `GET /registrar` | the registrar's counters |

use super::ApiError;
use crate::dataplane::registrar::{RegistrarStats, RegistrarThread};
use crate::registrar::credentials::{canonical_aor, Credential, CredentialStore};
use crate::route::location::Location;
use crate::sip::digest::{Algorithm, Ha1};
use arc_swap::ArcSwap;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// What the admin API holds of the running registrar.
pub struct RegistrarHandle {
    pub location: Arc<Location>,
    pub credentials: Arc<ArcSwap<CredentialStore>>,
    pub stats: Arc<RegistrarStats>,
    /// Where credential changes are written back (the configured file).
    pub file: Option<PathBuf>,
    /// One credential writer at a time (read, change, publish, write).
    writer: Mutex<()>,
}

impl RegistrarHandle {
    pub fn new(r: &RegistrarThread, file: Option<PathBuf>) -> RegistrarHandle {
        RegistrarHandle {
            location: Arc::clone(&r.location),
            credentials: Arc::clone(&r.credentials),
            stats: Arc::clone(&r.stats),
            file,
            writer: Mutex::new(()),
        }
    }
}

/// The endpoint for `method` `segs`, if it is one of the registrar's.
pub fn handle(
    reg: Option<&RegistrarHandle>,
    method: &str,
    segs: &[&str],
    body: &[u8],
) -> Option<Result<Value, ApiError>> {
    if !matches!(
        segs.first(),
        Some(&("registrations" | "credentials" | "registrar"))
    ) {
        return None;
    }
    let Some(reg) = reg else {
        return Some(Err(ApiError::new(
            404,
            "this edge serves no domain ([registrar])",
        )));
    };
    Some(match (method, segs) {
        ("GET", ["registrations", aor]) => registrations(reg, aor),
        ("GET", ["credentials"]) => Ok(json!({ "aors": reg.credentials.load().aors() })),
        ("PUT", ["credentials", aor]) => put_credential(reg, aor, body),
        ("DELETE", ["credentials", aor]) => delete_credential(reg, aor),
        ("GET", ["registrar"]) => Ok(counters(&reg.stats)),
        _ => Err(ApiError::new(405, format!("{method} is not allowed here"))),
    })
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn registrations(reg: &RegistrarHandle, aor: &str) -> Result<Value, ApiError> {
    let key =
        canonical_aor(aor).ok_or_else(|| ApiError::new(400, "the AoR must be user@domain"))?;
    let now = now_unix();
    let bindings = reg
        .location
        .with_bindings(&key, |bs| {
            bs.iter()
                .map(|b| {
                    json!({
                        "contact": String::from_utf8_lossy(b.contact()),
                        "flow": b.flow().to_string(),
                        "expires": b.expires_at().saturating_sub(now),
                        "q": f64::from(b.q()) / 1000.0,
                        "cpm_services": b.cpm().0,
                        "instance": b.instance().map(|i| String::from_utf8_lossy(i).into_owned()),
                        "reg_id": b.reg_id(),
                    })
                })
                .collect::<Vec<_>>()
        })
        .ok_or_else(|| ApiError::new(404, format!("{aor} has no binding")))?;
    Ok(json!({ "aor": String::from_utf8_lossy(&key), "bindings": bindings }))
}

fn put_credential(reg: &RegistrarHandle, aor: &str, body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, format!("malformed JSON body: {e}")))?;
    let hash = |alg: Algorithm, field: &str| -> Result<Option<Ha1>, ApiError> {
        match v.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(h)) => Ha1::from_hex(alg, h.as_bytes())
                .map(Some)
                .map_err(|e| ApiError::new(400, format!("{field}: {e}"))),
            Some(_) => Err(ApiError::new(400, format!("{field} must be a hex string"))),
        }
    };
    let cred = Credential {
        md5: hash(Algorithm::Md5, "ha1_md5")?,
        sha256: hash(Algorithm::Sha256, "ha1_sha256")?,
    };
    change(reg, |s| {
        s.insert(aor, cred).map_err(|e| ApiError::new(400, e))
    })?;
    Ok(json!({ "aor": aor, "stored": true }))
}

fn delete_credential(reg: &RegistrarHandle, aor: &str) -> Result<Value, ApiError> {
    change(reg, |s| {
        if s.remove(aor) {
            Ok(())
        } else {
            Err(ApiError::new(404, format!("{aor} has no credentials")))
        }
    })?;
    Ok(json!({ "aor": aor, "removed": true }))
}

/// Copy, change, write back to the file (so a restart keeps it), publish.
fn change(
    reg: &RegistrarHandle,
    f: impl FnOnce(&mut CredentialStore) -> Result<(), ApiError>,
) -> Result<(), ApiError> {
    let _one = reg.writer.lock().unwrap_or_else(|p| p.into_inner());
    let mut next = CredentialStore::clone(&reg.credentials.load());
    f(&mut next)?;
    if let Some(path) = &reg.file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, next.to_text())
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| ApiError::new(500, format!("cannot write {}: {e}", path.display())))?;
    }
    reg.credentials.store(Arc::new(next));
    Ok(())
}

fn counters(s: &RegistrarStats) -> Value {
    json!({
        "registered": s.registered.load(Relaxed),
        "challenged": s.challenged.load(Relaxed),
        "refused": s.refused.load(Relaxed),
        "retransmissions": s.retransmissions.load(Relaxed),
        "commits": s.commits.load(Relaxed),
        "commit_errors": s.commit_errors.load(Relaxed),
        "expired": s.expired.load(Relaxed),
        "unbound": s.unbound.load(Relaxed),
        "notices_sent": s.notices_sent.load(Relaxed),
        "notices_answered": s.notices_answered.load(Relaxed),
        "notices_failed": s.notices_failed.load(Relaxed),
        "queue_full": s.queue_full.load(Relaxed),
    })
}
