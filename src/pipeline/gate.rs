//! The policy gate (seed 5.2.3.7): an SDP offer filtered by the media
//! policy that applies on its leg, an answer checked against what the edge
//! forwarded. Runs on the slow-path threads over a copy of the datagram:
//! the same scan + decide as the fast path, then the same write.
//!
//! Answer checks need the offer the edge forwarded: it is remembered per
//! forwarded request under our Via branch (which the answer carries back in
//! its top Via) in a bounded store: at most `OFFER_CAP` entries, each for at
//! most `OFFER_TTL` (INVITE transaction lifetime, RFC 3261 Timer B/F: 32 s;
//! doubled for 18x/2xx retransmissions).

use super::{write, Outcome, Scanned};
use crate::route::decision::{decide_on, Decision, ForwardKind};
use crate::route::policy::{self, OnViolation};
use crate::route::Tables;
use crate::sip::branch::{self, BRANCH_LEN};
use crate::sip::media::{self, MediaPolicy};
use crate::sip::rewrite::forward_response_replaced;
use crate::sip::scan::scan;
use crate::sip::sdp::{self, MediaType};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const OFFER_CAP: usize = 200_000;
pub const OFFER_TTL: Duration = Duration::from_secs(64);

/// Policy-gate counters (shared by the slow-path threads; never touched by
/// the workers).
#[derive(Default, Debug)]
pub struct GateStats {
    pub jobs: AtomicU64,
    pub offers_passed: AtomicU64,
    pub offers_filtered: AtomicU64,
    pub offers_rejected_488: AtomicU64,
    pub sdp_malformed_400: AtomicU64,
    pub answers_checked: AtomicU64,
    pub answers_unmatched: AtomicU64,
    pub answer_violations: AtomicU64,
    pub answers_replaced_500: AtomicU64,
    pub send_errors: AtomicU64,
}

impl GateStats {
    pub fn rows(&self) -> [(&'static str, u64); 10] {
        [
            ("jobs", self.jobs.load(Relaxed)),
            ("offers_passed", self.offers_passed.load(Relaxed)),
            ("offers_filtered", self.offers_filtered.load(Relaxed)),
            (
                "offers_rejected_488",
                self.offers_rejected_488.load(Relaxed),
            ),
            ("sdp_malformed_400", self.sdp_malformed_400.load(Relaxed)),
            ("answers_checked", self.answers_checked.load(Relaxed)),
            ("answers_unmatched", self.answers_unmatched.load(Relaxed)),
            ("answer_violations", self.answer_violations.load(Relaxed)),
            (
                "answers_replaced_500",
                self.answers_replaced_500.load(Relaxed),
            ),
            ("send_errors", self.send_errors.load(Relaxed)),
        ]
    }
}

/// What the edge offered on one forwarded request.
struct Offered {
    nonzero: Vec<bool>,
    types: Vec<MediaType>,
}

/// Bounded offer memory: FIFO eviction by count and age.
struct Offers {
    map: HashMap<[u8; BRANCH_LEN], Offered>,
    order: VecDeque<([u8; BRANCH_LEN], Instant)>,
}

impl Offers {
    fn insert(&mut self, key: [u8; BRANCH_LEN], o: Offered, now: Instant) {
        while let Some((k, at)) = self.order.front() {
            if self.order.len() < OFFER_CAP && now.duration_since(*at) < OFFER_TTL {
                break;
            }
            self.map.remove(k);
            self.order.pop_front();
        }
        if self.map.insert(key, o).is_none() {
            self.order.push_back((key, now));
        }
    }
}

/// The policy gate: the offers it forwarded (to check answers against) and
/// its counters. Shared by the slow-path threads.
pub struct PolicyGate {
    pub stats: Arc<GateStats>,
    offers: Mutex<Offers>,
}

impl Default for PolicyGate {
    fn default() -> Self {
        PolicyGate {
            stats: Arc::default(),
            offers: Mutex::new(Offers {
                map: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }
}

impl PolicyGate {
    /// Decide one datagram as the fast path does and apply the media
    /// policy to its SDP offer or answer; `now` ages the offer store.
    pub fn apply(
        &self,
        buf: &[u8],
        src: SocketAddr,
        t: &Tables,
        now: Instant,
        out: &mut [u8],
    ) -> Outcome {
        let m = scan(buf);
        self.apply_scanned(Scanned::new(buf, &m, src), t, now, out)
    }

    /// [`Self::apply`] for a message already scanned (`s.flow`: the
    /// stream connection it came on, if any).
    pub fn apply_scanned(
        &self,
        s: Scanned<'_>,
        t: &Tables,
        now: Instant,
        out: &mut [u8],
    ) -> Outcome {
        let (buf, m, src) = (s.buf, s.m, s.src);
        let d = decide_on(s, t);
        let at = At { t, now };
        let offered = match d {
            Decision::Forward {
                kind, loop_hash, ..
            } => Some((kind, loop_hash)),
            Decision::OnFlow { loop_hash, .. } => Some((ForwardKind::InDialog, loop_hash)),
            Decision::ToConn { loop_hash, .. } => Some((ForwardKind::ToInvitedClient, loop_hash)),
            _ => None,
        };
        match (d, offered) {
            (_, Some((kind, loop_hash))) if policy::has_sdp(buf, m) => {
                match t.policy.effective(kind, buf, m) {
                    Some(p) => {
                        let key = branch::branch(&t.branch_key, buf, m, src, loop_hash);
                        self.offer(s, d, &p, key, at, out)
                    }
                    None => write(s, d, t, None, out),
                }
            }
            (Decision::Relay { .. }, _) if policy::is_answer(buf, m) => self.answer(s, d, t, out),
            _ => write(s, d, t, None, out),
        }
    }

    /// An SDP offer forwarded with the streams the policy refuses set to
    /// port 0 (RFC 3264), or refused whole (`488`) when none is left; what
    /// was offered is remembered under our branch for the answer's check.
    fn offer(
        &self,
        s: Scanned<'_>,
        d: Decision,
        policy: &MediaPolicy,
        key: [u8; BRANCH_LEN],
        at: At<'_>,
        out: &mut [u8],
    ) -> Outcome {
        let body = s.m.body.get(s.buf);
        let parsed = match sdp::parse(body) {
            Ok(p) => p,
            Err(e) => {
                self.stats.sdp_malformed_400.fetch_add(1, Relaxed);
                let reason = format!("Bad Request - {}", e.0);
                return super::answer(s, 400, &reason, &[], out);
            }
        };
        let verdict = media::filter_offer(&parsed, policy);
        if verdict.kept() == 0 {
            self.stats.offers_rejected_488.fetch_add(1, Relaxed);
            let warning = format!(
                "Warning: 304 {} \"Media type not available\"\r\n",
                at.t.edge.hostport()
            );
            tracing::debug!(call_id = %String::from_utf8_lossy(s.m.call_id.get(s.buf)), reasons = ?verdict.reasons, "offer refused whole");
            let extra = [warning.as_bytes()];
            return super::answer(s, 488, "Not Acceptable Here", &extra, out);
        }
        let offered = Offered {
            nonzero: parsed
                .media
                .iter()
                .zip(&verdict.refuse)
                .map(|(m, r)| m.port != 0 && !r)
                .collect(),
            types: parsed.media.iter().map(|m| m.media_type.clone()).collect(),
        };
        let result = if verdict.any_refused() {
            let mut filtered = Vec::with_capacity(body.len());
            sdp::refuse_streams(body, &parsed, &verdict.refuse, &mut filtered);
            self.stats.offers_filtered.fetch_add(1, Relaxed);
            write(s, d, at.t, Some(&filtered), out)
        } else {
            self.stats.offers_passed.fetch_add(1, Relaxed);
            write(s, d, at.t, None, out)
        };
        if matches!(result, Outcome::Forwarded { .. } | Outcome::OnFlow { .. }) {
            self.offers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, offered, at.now);
        }
        result
    }

    /// An SDP answer checked against the offer the edge forwarded: one
    /// accepting a stream that was not offered is counted and logged, and
    /// with `on_violation = "reject"` replaced by `500`.
    fn answer(&self, s: Scanned<'_>, d: Decision, t: &Tables, out: &mut [u8]) -> Outcome {
        let (buf, m) = (s.buf, s.m);
        let key: Option<[u8; BRANCH_LEN]> = m
            .top_via
            .and_then(|v| v.branch)
            .and_then(|b| b.get(buf).try_into().ok());
        let verdict = {
            let offers = self.offers.lock().unwrap_or_else(|p| p.into_inner());
            key.and_then(|k| offers.map.get(&k))
                .map(|o| match sdp::parse(m.body.get(buf)) {
                    Ok(ans) => media::check_answer(&o.nonzero, &o.types, &ans).map_err(|v| v.0),
                    Err(e) => Err(format!("answer SDP unreadable: {}", e.0)),
                })
        };
        let why = match verdict {
            None => {
                self.stats.answers_unmatched.fetch_add(1, Relaxed);
                return write(s, d, t, None, out);
            }
            Some(Ok(())) => {
                self.stats.answers_checked.fetch_add(1, Relaxed);
                return write(s, d, t, None, out);
            }
            Some(Err(why)) => why,
        };
        self.stats.answers_checked.fetch_add(1, Relaxed);
        self.stats.answer_violations.fetch_add(1, Relaxed);
        let call_id = String::from_utf8_lossy(m.call_id.get(buf)).into_owned();
        tracing::warn!(call_id, violation = %why, "answer accepts media the edge did not offer");
        let (OnViolation::Reject, Decision::Relay { dst }) = (t.policy.on_violation, d) else {
            return write(s, d, t, None, out);
        };
        match forward_response_replaced(buf, m, 500, "Answer Violates Media Policy", out) {
            Some(len) => {
                self.stats.answers_replaced_500.fetch_add(1, Relaxed);
                Outcome::Relayed {
                    len,
                    dst,
                    code: 500,
                }
            }
            None => write(s, d, t, None, out),
        }
    }
}

/// The tables and the clock a gate call runs with.
#[derive(Clone, Copy)]
struct At<'a> {
    t: &'a Tables,
    now: Instant,
}
