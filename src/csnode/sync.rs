//! The edge's group table and the Conversation Servers' must agree on who
//! hosts each group (README "The Conversation Server"). The CS is the
//! source: it registers the groups it hosts with the edge's admin API
//! (`PUT /groups/{uri} {"shard": NAME}`), at start, on every change of its
//! directory (its admin API, `crate::control::cs_api`), and again every
//! `sync_interval_ms`, so an edge that restarted or was changed by hand
//! converges within one interval. Requests are idempotent, so several CSs and
//! several rounds never conflict. A group that left the directory is
//! DELETEd; one that moved to another shard (or changed only how its URI is
//! written) is not: its host's PUT moves it at the edge, and a DELETE could
//! land after that PUT and unroute it. What cannot converge is said, not hidden:
//! every failed round is logged and counted, and a `ctrl` INVITE for a group
//! this CS does not host is answered `404` and counted as divergence.
//!
//! On hyper's HTTP/1 client, on a current-thread tokio runtime of its own
//! thread (the SIP loop never waits for it).

use crate::cs::directory::{identity_of, Directory};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Counters of the registration rounds.
#[derive(Debug, Default)]
pub struct SyncStats {
    pub rounds_ok: AtomicU64,
    pub rounds_failed: AtomicU64,
    pub registered: AtomicU64,
}

/// What to register where.
#[derive(Clone, Debug)]
pub struct SyncSettings {
    /// `host:port` of the edge's admin API.
    pub admin: String,
    pub token: Option<String>,
    pub shard: String,
    pub interval: Duration,
}

/// The registration thread; dropping it stops it.
pub struct GroupSync {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub stats: Arc<SyncStats>,
}

impl GroupSync {
    pub fn start(
        s: SyncSettings,
        directory: Arc<ArcSwap<Directory>>,
    ) -> std::io::Result<GroupSync> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(SyncStats::default());
        let (stop2, stats2) = (Arc::clone(&stop), Arc::clone(&stats));
        let thread = std::thread::Builder::new()
            .name(format!("cs-sync-{}", s.shard))
            .spawn(move || run(s, directory, &stop2, &stats2))?;
        Ok(GroupSync {
            stop,
            thread: Some(thread),
            stats,
        })
    }
}

impl Drop for GroupSync {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The admin API's address from `http://host:port[/]`.
pub fn admin_addr(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let hostport = rest.trim_end_matches('/');
    (!hostport.is_empty() && !hostport.contains('/')).then(|| hostport.to_string())
}

fn run(s: SyncSettings, directory: Arc<ArcSwap<Directory>>, stop: &AtomicBool, stats: &SyncStats) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        tracing::error!("group sync: no runtime");
        return;
    };
    let mut registered: BTreeSet<String> = BTreeSet::new();
    let mut current = directory.load_full();
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let latest = directory.load_full();
        let changed = !Arc::ptr_eq(&latest, &current);
        if changed || Instant::now() >= next {
            current = latest;
            let ok = rt.block_on(round(&s, &current, &mut registered));
            count(stats, ok, registered.len());
            next = Instant::now() + s.interval;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn count(stats: &SyncStats, ok: Result<(), String>, n: usize) {
    match ok {
        Ok(()) => {
            stats.rounds_ok.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            stats.rounds_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("group sync with the edge failed: {e}");
        }
    }
    stats.registered.store(n as u64, Ordering::Relaxed);
}

/// One round: every hosted group PUT, every group gone from the directory
/// DELETEd.
async fn round(
    s: &SyncSettings,
    d: &Directory,
    registered: &mut BTreeSet<String>,
) -> Result<(), String> {
    let hosted: BTreeSet<String> = d.hosted_by(&s.shard).map(|(_, g)| g.uri.clone()).collect();
    let body = serde_json::json!({ "shard": s.shard }).to_string();
    for uri in &hosted {
        request(s, "PUT", uri, Some(body.clone())).await?;
        registered.insert(uri.clone());
    }
    let gone: Vec<String> = registered.difference(&hosted).cloned().collect();
    for uri in gone {
        let still_there = identity_of(&uri).is_some_and(|id| d.group(&id).is_some());
        if !still_there {
            request(s, "DELETE", &uri, None).await?;
        }
        registered.remove(&uri);
    }
    Ok(())
}

async fn request(
    s: &SyncSettings,
    method: &str,
    uri: &str,
    body: Option<String>,
) -> Result<(), String> {
    let path = format!("/groups/{}", encode_segment(uri));
    let stream = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(&s.admin),
    )
    .await
    .map_err(|_| format!("connect {}: timed out", s.admin))?
    .map_err(|e| format!("connect {}: {e}", s.admin))?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut tx, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(&path)
        .header("host", &s.admin)
        .header("content-type", "application/json");
    if let Some(t) = &s.token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(2), tx.send_request(req))
        .await
        .map_err(|_| format!("{method} {path}: timed out"))?
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let status = resp.status().as_u16();
    let text = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    // DELETE of a group the edge no longer has is what we wanted.
    if (200..300).contains(&status) || (method == "DELETE" && status == 404) {
        return Ok(());
    }
    Err(format!(
        "{method} {path}: {status} {}",
        String::from_utf8_lossy(&text)
    ))
}

/// Percent-encode a path segment: the admin API decodes one segment at a
/// time, so `/` (legal in a SIP user part) must travel as `%2F`.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@!$&'()*+,;=".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_and_urls() {
        assert_eq!(
            encode_segment("sip:team/a@g.example"),
            "sip:team%2Fa@g.example"
        );
        assert_eq!(
            admin_addr("http://127.0.0.1:8080/").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(admin_addr("https://x"), None);
    }
}
