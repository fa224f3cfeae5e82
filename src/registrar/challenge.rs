//! The registrar's stateless front: what any worker can answer without
//! the location service or the nonce counts.
//!
//! Every registration starts with a REGISTER without credentials, answered
//! `401` with fresh challenges (or refused for a defect, an unknown realm
//! or a locked-out source). None of that reads or changes a binding, so
//! the worker that received it answers it in its own send batch instead of
//! handing it to the registrar thread: half of a registration's requests
//! never cross threads. The answers are the registrar thread's own (one
//! code: [`Registrar::handle`](super::Registrar::handle) runs these same
//! phases), and so are the nonces: one key, one sequence.

use super::{bad_request, refused, Handled, Outcome, Rx, Settings, Verdict};
use crate::sip::contact;
use crate::sip::digest::{self, Algorithm, NonceKey};
use crate::sip::reply;
use crate::sip::rewrite::Out;
use crate::sip::scan::{header_lines, Method, Scanned};
use crate::sip::uri::{self, Scheme};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

/// The reason phrase for a source over its failed-attempt limit.
pub(super) const LOCKED_OUT: &str = "Forbidden - Too Many Failed Attempts";

/// Most challenge header lines (one per algorithm).
const MAX_ALGORITHMS: usize = 4;

/// The served domains, the challenge algorithms, the nonce key and
/// sequence, and the sources the registrar thread has locked out.
pub struct Challenger {
    domains: Vec<String>,
    algorithms: Vec<Algorithm>,
    key: NonceKey,
    /// Distinct nonces within a second, from every thread that mints.
    seq: AtomicU32,
    /// Locked-out source → the end of its window (unix s), published by
    /// the registrar thread when a source crosses its limit.
    locked: ArcSwap<HashMap<IpAddr, u64>>,
}

impl Challenger {
    pub fn new(settings: &Settings, key: NonceKey) -> Challenger {
        assert!(!settings.algorithms.is_empty());
        assert!(settings.algorithms.len() <= MAX_ALGORITHMS);
        Challenger {
            domains: settings.domains.clone(),
            algorithms: settings.algorithms.clone(),
            key,
            seq: AtomicU32::new(0),
            locked: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    pub(super) fn key(&self) -> &NonceKey {
        &self.key
    }

    /// Is `host` (any case) a served domain?
    pub fn serves(&self, host: &[u8]) -> bool {
        self.domains
            .iter()
            .any(|d| d.as_bytes().eq_ignore_ascii_case(host))
    }

    pub(super) fn set_locked(&self, locked: HashMap<IpAddr, u64>) {
        self.locked.store(std::sync::Arc::new(locked));
    }

    fn is_locked(&self, ip: IpAddr, now_s: u64) -> bool {
        let locked = self.locked.load();
        !locked.is_empty() && locked.get(&ip).is_some_and(|&until| now_s < until)
    }

    /// A worker's REGISTER without credentials, answered here: `Some` with
    /// the answer in `out` (a `401`, or the refusal the registrar thread
    /// would give); `None`: it carries credentials (or cannot be answered)
    /// and goes to the registrar thread.
    pub fn answer_at_once(&self, s: Scanned<'_>, now_s: u64, out: &mut [u8]) -> Option<Handled> {
        if s.m.top_via.is_none() || has_authorization(s) {
            return None;
        }
        let result = check_request(s)
            .and_then(|()| {
                if self.is_locked(s.src.ip(), now_s) {
                    Err(refused(403, LOCKED_OUT))
                } else {
                    self.served(s, now_s)
                }
            })
            .and_then(|rx| read(&rx))
            .and(Err::<(), _>(Outcome::Challenge { stale: false }));
        match result {
            Err(o) => Some(self.answer(s, now_s, o, out)),
            Ok(()) => None,
        }
    }

    /// Phase 1 after the method and the source: the Request-URI and the
    /// To AoR name a served domain.
    pub(super) fn served<'a>(&self, s: Scanned<'a>, now_s: u64) -> Result<Rx<'a>, Outcome> {
        let (buf, m) = (s.buf, s.m);
        let ruri = match m.start {
            crate::sip::scan::StartLine::Request { uri, .. } => uri::parse(buf, uri),
            _ => None,
        };
        let Some(ruri) = ruri.filter(|u| matches!(u.scheme, Scheme::Sip | Scheme::Sips)) else {
            return Err(refused(400, "Bad Request - Bad Request-URI"));
        };
        if !self.serves(ruri.host.get(buf)) {
            return Err(refused(403, "Forbidden - Unknown Realm"));
        }
        let to = uri::addr_of(buf, m.to).and_then(|a| uri::parse(buf, a));
        let Some(to) = to.filter(|u| matches!(u.scheme, Scheme::Sip | Scheme::Sips)) else {
            return Err(refused(400, "Bad Request - Bad To URI"));
        };
        if !self.serves(to.host.get(buf)) || to.user.is_empty() {
            return Err(refused(403, "Forbidden - Unknown Realm"));
        }
        let mut aor = Vec::with_capacity(to.user.len() + 1 + to.host.len());
        uri::identity_bytes(buf, &to, |b| aor.push(b));
        if aor.len() > crate::route::groups::MAX_IDENTITY {
            return Err(refused(400, "Bad Request - AoR Too Long"));
        }
        Ok(Rx { s, now_s, aor })
    }

    /// The answer of a phase that stopped.
    pub(super) fn answer(&self, s: Scanned<'_>, now_s: u64, o: Outcome, out: &mut [u8]) -> Handled {
        match o {
            Outcome::Challenge { stale } => Handled {
                len: self.challenge(s, now_s, stale, out),
                verdict: Verdict::Challenged,
                change: None,
            },
            Outcome::Refused(r) => {
                let extra: Vec<&[u8]> = r.extra.iter().map(|l| &l[..]).collect();
                Handled {
                    len: reply::build(s, r.code, &r.reason, &extra, out).unwrap_or(0),
                    verdict: Verdict::Refused(r.code),
                    change: None,
                }
            }
        }
    }

    /// `401` with one challenge per configured algorithm (by default
    /// SHA-256 then MD5) for the served realm the Request-URI names.
    fn challenge(&self, s: Scanned<'_>, now_s: u64, stale: bool, out: &mut [u8]) -> usize {
        let realm = self.realm_of(s).unwrap_or_default();
        let seq = self.seq.fetch_add(1, Relaxed).wrapping_add(1);
        let nonce = digest::mint_nonce(&self.key, now_s, seq);
        let mut lines = [[0u8; 512]; MAX_ALGORITHMS];
        let mut lens = [0usize; MAX_ALGORITHMS];
        for (i, &alg) in self.algorithms.iter().enumerate() {
            let mut o = Out::new(&mut lines[i]);
            digest::write_challenge(
                &mut o,
                b"WWW-Authenticate",
                realm.as_bytes(),
                nonce.as_bytes(),
                alg,
                stale,
            );
            lens[i] = o.finish().unwrap_or(0);
        }
        let mut extra: [&[u8]; MAX_ALGORITHMS] = [&[]; MAX_ALGORITHMS];
        let mut n = 0;
        for (line, &len) in lines.iter().zip(&lens) {
            if len > 0 {
                extra[n] = &line[..len];
                n += 1;
            }
        }
        reply::build(s, 401, "Unauthorized", &extra[..n], out).unwrap_or(0)
    }

    /// The served domain the Request-URI names, as configured.
    fn realm_of(&self, s: Scanned<'_>) -> Option<&str> {
        let crate::sip::scan::StartLine::Request { uri, .. } = s.m.start else {
            return None;
        };
        let u = uri::parse(s.buf, uri)?;
        let host = u.host.get(s.buf);
        self.domains
            .iter()
            .find(|d| d.as_bytes().eq_ignore_ascii_case(host))
            .map(String::as_str)
    }
}

/// Phase 1's first checks: a REGISTER, scanned without a defect.
pub(super) fn check_request(s: Scanned<'_>) -> Result<(), Outcome> {
    if s.m.method() != Some(Method::Register) {
        return Err(refused(405, "Method Not Allowed"));
    }
    if let Some(d) = s.m.defect {
        return Err(refused(d.status(), d.reason()));
    }
    Ok(())
}

/// Phase 3 ahead of authentication: the Contact and Expires parse.
pub(super) fn read(rx: &Rx<'_>) -> Result<(), Outcome> {
    let (buf, m) = (rx.s.buf, rx.s.m);
    contact::register_contacts(buf, m).map_err(|e| bad_request(e.reason()))?;
    contact::expires_header(buf, m).map_err(|e| bad_request(e.reason()))?;
    Ok(())
}

/// Does the REGISTER carry any Authorization (then only the registrar
/// thread, with the nonce counts, can answer it)?
fn has_authorization(s: Scanned<'_>) -> bool {
    header_lines(s.buf, s.m.headers)
        .any(|h| h.name.get(s.buf).eq_ignore_ascii_case(b"authorization"))
}
