//! The registrar (RFC 3261 §10.3) of the edge's served domains, sans-IO:
//! one REGISTER + the current bindings + the clock → the answer and the
//! change to the location service. Seed 5.1.1 / 5.1.2.1 (registration and
//! authentication through the SIP/IP Core) and 5.2.5 (several devices per
//! user).
//!
//! A REGISTER's path, as named phases ([`Registrar::handle`]):
//! 1. `served`: the Request-URI and the To AoR name a served domain (else
//!    `403 Unknown Realm`); the source is not over its failed-attempt limit;
//! 2. `read` (Contact and Expires, so a defect is named before any
//!    challenge), then `authenticate`: digest (RFC 8760: SHA-256 and MD5 challenges offered
//!    together, `qop=auth`; stateless keyed nonces with a lifetime,
//!    `stale=true` past it; nonce-count replay protection), credentials as
//!    HA1 values; the authenticated identity must be the AoR;
//! 3. the defects found by `read` → `400` naming the defect; `reg-id`
//!    through a hop that cannot do outbound → `439`;
//! 4. `apply`: §10.3 steps 6-8 on the AoR's bindings (`*`, `Expires: 0`,
//!    the interval rules with `423` + Min-Expires, Call-ID/CSeq ordering,
//!    the per-AoR contact bound);
//! 5. `answer`: `200 OK` listing every current binding with its expiry.
//!
//! The caller (the registrar thread) is the location service's one writer:
//! it applies [`Change`], persists it and then sends the answer.

pub mod challenge;
pub mod credentials;
pub mod third_party;

use crate::route::location::{Binding, BindingParts};
use crate::sip::contact::{self, ContactValue, RegisterContacts};
use crate::sip::digest::{self, Algorithm, NcCheck, NonceCheck, NonceCounts, NonceKey};
use crate::sip::flow::Flow;
use crate::sip::reply;
use crate::sip::scan::{header_lines, Scanned};
pub use challenge::Challenger;
use credentials::CredentialStore;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Nonces whose counts are remembered at once (replay protection).
pub const MAX_NONCES: usize = 65_536;
/// Sources whose failed attempts are counted at once.
pub const MAX_FAILING_SOURCES: usize = 65_536;
/// Largest answer written (every binding of an AoR fits).
pub const MAX_ANSWER: usize = 8 * 1024;

/// How the registrar is set up (config `[registrar]`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The served domains (lowercased): the digest realms too.
    pub domains: Vec<String>,
    pub default_expires: u32,
    pub min_expires: u32,
    pub max_expires: u32,
    /// Most bindings one AoR may hold.
    pub max_contacts: usize,
    /// How long a nonce may be used (then `stale=true`).
    pub nonce_lifetime_s: u64,
    /// Failed authentications one source IP may make per window before
    /// every REGISTER from it is refused for the rest of the window.
    pub max_failures: u32,
    pub failure_window_s: u64,
    /// The digest algorithms challenged, most preferred first (RFC 8760
    /// §2.4: clients answer the first they support; SIPp 3.6.1 gives up on
    /// a first challenge it cannot answer, so its runs put MD5 first).
    pub algorithms: Vec<Algorithm>,
}

/// What became of a REGISTER, for counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `401` with challenges (no or stale credentials).
    Challenged,
    /// `200`: the bindings were queried or changed.
    Registered,
    /// A retransmission of an accepted REGISTER: `200` again, no change.
    Retransmission,
    /// Any other final answer.
    Refused(u16),
    /// Could not even be answered (no Via): dropped.
    Dropped,
}

/// The new bindings of one AoR, for the location service's writer.
#[derive(Clone, Debug)]
pub struct Change {
    pub aor: Vec<u8>,
    /// Empty: the AoR has no binding left.
    pub bindings: Vec<Binding>,
}

/// The answer written into the caller's buffer and what it did.
#[derive(Clone, Debug)]
pub struct Handled {
    /// Bytes of the answer in `out` (0: nothing to send).
    pub len: usize,
    pub verdict: Verdict,
    pub change: Option<Change>,
}

/// A refusal: status, reason phrase, extra header lines.
struct Refusal {
    code: u16,
    reason: String,
    extra: Vec<Vec<u8>>,
}

fn refuse(code: u16, reason: &str) -> Refusal {
    Refusal {
        code,
        reason: reason.to_string(),
        extra: Vec::new(),
    }
}

/// Failed attempts of one source IP in its current window.
#[derive(Clone, Copy, Debug)]
struct Failures {
    since_s: u64,
    count: u32,
}

/// The registrar's own state: the nonce key and counts, the failure
/// counters. Bounded: [`MAX_NONCES`], [`MAX_FAILING_SOURCES`].
pub struct Registrar {
    settings: Settings,
    /// The stateless part, shared with the workers (they answer a REGISTER
    /// without credentials themselves: half of every registration).
    front: Arc<Challenger>,
    counts: NonceCounts,
    failures: HashMap<IpAddr, Failures>,
}

/// One REGISTER being handled: what every phase reads.
struct Rx<'a> {
    s: Scanned<'a>,
    now_s: u64,
    /// Canonical `user@domain` of the To URI.
    aor: Vec<u8>,
}

impl Registrar {
    pub fn new(settings: Settings, key: [u8; 32]) -> Registrar {
        assert!(settings.min_expires <= settings.default_expires);
        assert!(settings.default_expires <= settings.max_expires);
        assert!(settings.max_contacts >= 1);
        assert!(
            !settings.algorithms.is_empty(),
            "at least one digest algorithm"
        );
        Registrar {
            front: Arc::new(Challenger::new(&settings, NonceKey::new(key))),
            settings,
            counts: NonceCounts::new(MAX_NONCES),
            failures: HashMap::new(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The stateless front, for the workers.
    pub fn front(&self) -> Arc<Challenger> {
        Arc::clone(&self.front)
    }

    /// Is `host` (any case) a served domain?
    pub fn serves(&self, host: &[u8]) -> bool {
        self.front.serves(host)
    }

    /// Handle one REGISTER scanned as `s`; `current` gives an AoR's
    /// bindings as they stand (the location service, or the caller's
    /// batch not yet committed).
    pub fn handle(
        &mut self,
        s: Scanned<'_>,
        now_s: u64,
        creds: &CredentialStore,
        current: &dyn Fn(&[u8]) -> Vec<Binding>,
        out: &mut [u8],
    ) -> Handled {
        if s.m.top_via.is_none() {
            return Handled {
                len: 0,
                verdict: Verdict::Dropped,
                change: None,
            };
        }
        let result = self.served(s, now_s).and_then(|rx| {
            // A defect is named before any challenge: no credentials make
            // a malformed Contact or Expires right.
            challenge::read(&rx)?;
            let replayed = self.authenticate(&rx, creds)?;
            self.register(&rx, replayed, current)
        });
        match result {
            Ok(a) => Handled {
                len: self.answer_ok(s, now_s, &a.bindings, a.outbound, out),
                verdict: a.verdict,
                change: a.change,
            },
            Err(o) => self.front.answer(s, now_s, o, out),
        }
    }

    // ----- phase 1: served -------------------------------------------

    fn served<'a>(&mut self, s: Scanned<'a>, now_s: u64) -> Result<Rx<'a>, Outcome> {
        challenge::check_request(s)?;
        if self.over_failure_limit(s.src.ip(), now_s) {
            return Err(refused(403, challenge::LOCKED_OUT));
        }
        self.front.served(s, now_s)
    }

    fn over_failure_limit(&mut self, ip: IpAddr, now_s: u64) -> bool {
        let window = self.settings.failure_window_s;
        match self.failures.get(&ip) {
            Some(f) if now_s.saturating_sub(f.since_s) >= window => {
                self.failures.remove(&ip);
                false
            }
            Some(f) => f.count >= self.settings.max_failures,
            None => false,
        }
    }

    fn count_failure(&mut self, ip: IpAddr, now_s: u64) {
        if self.failures.len() >= MAX_FAILING_SOURCES && !self.failures.contains_key(&ip) {
            self.evict_failures(now_s);
        }
        let f = self.failures.entry(ip).or_insert(Failures {
            since_s: now_s,
            count: 0,
        });
        f.count = f.count.saturating_add(1);
        let locked_now = f.count == self.settings.max_failures;
        debug_assert!(self.failures.len() <= MAX_FAILING_SOURCES);
        if locked_now {
            self.publish_locked(now_s);
        }
    }

    /// The sources over their limit, for the workers' front (they refuse
    /// such a source's REGISTERs without credentials as this thread does).
    /// Rebuilt when a source crosses the limit: rare, and bounded by
    /// [`MAX_FAILING_SOURCES`].
    fn publish_locked(&self, now_s: u64) {
        let window = self.settings.failure_window_s;
        let locked = self
            .failures
            .iter()
            .filter(|(_, f)| {
                f.count >= self.settings.max_failures && now_s.saturating_sub(f.since_s) < window
            })
            .map(|(ip, f)| (*ip, f.since_s + window))
            .collect();
        self.front.set_locked(locked);
    }

    /// Full: forget finished windows, else the oldest window (bounded
    /// memory beats remembering a source that has stopped failing).
    fn evict_failures(&mut self, now_s: u64) {
        let window = self.settings.failure_window_s;
        self.failures
            .retain(|_, f| now_s.saturating_sub(f.since_s) < window);
        if self.failures.len() >= MAX_FAILING_SOURCES {
            if let Some(oldest) = self
                .failures
                .iter()
                .min_by_key(|(_, f)| f.since_s)
                .map(|(ip, _)| *ip)
            {
                self.failures.remove(&oldest);
            }
        }
    }

    // ----- phase 2: authenticate ---------------------------------------

    /// The credentials verify and name the AoR: `Ok(replayed)`, where
    /// `replayed` says the nonce count was used before (a retransmission,
    /// or a replay: `register` tells them apart).
    fn authenticate(&mut self, rx: &Rx<'_>, creds: &CredentialStore) -> Result<bool, Outcome> {
        let c = match self.authorization(rx) {
            None => return Err(Outcome::Challenge { stale: false }),
            Some(parsed) => parsed.map_err(|e| bad_request(e.reason()))?,
        };
        if !self.serves(c.realm) {
            return Err(refused(403, "Forbidden - Unknown Realm"));
        }
        let (Some(nc), Some(_)) = (c.nc, c.cnonce) else {
            return Err(refused(400, "Bad Request - Digest Without Qop Auth"));
        };
        let lifetime = self.settings.nonce_lifetime_s;
        let issued_s = match digest::check_nonce(self.front.key(), c.nonce, rx.now_s, lifetime) {
            NonceCheck::Fresh { issued_s } => issued_s,
            NonceCheck::Stale => return Err(Outcome::Challenge { stale: true }),
            NonceCheck::Forged => return Err(Outcome::Challenge { stale: false }),
        };
        let identity = identity_of(c.username, c.realm);
        let offered = self.settings.algorithms.contains(&c.algorithm);
        let ha1 = creds
            .get(&identity)
            .and_then(|u| u.ha1(c.algorithm))
            .filter(|_| offered);
        if !ha1.is_some_and(|h| digest::verify(&c, h, b"REGISTER")) {
            self.count_failure(rx.s.src.ip(), rx.now_s);
            return Err(refused(403, "Forbidden - Bad Credentials"));
        }
        if identity != rx.aor {
            return Err(refused(403, "Forbidden - Not Authorised For This AoR"));
        }
        match self.counts.check(c.nonce, issued_s, nc, rx.now_s, lifetime) {
            NcCheck::Accepted => Ok(false),
            NcCheck::Replayed => Ok(true),
            NcCheck::Stale => Err(Outcome::Challenge { stale: true }),
        }
    }

    /// The Authorization value whose realm is ours (a client may carry
    /// credentials for several realms): the first that parses with one of
    /// our realms, else the first Authorization at all (its defect is
    /// then what the answer names).
    /// Each value is parsed once.
    fn authorization<'a>(
        &self,
        rx: &Rx<'a>,
    ) -> Option<Result<digest::Credentials<'a>, digest::DigestError>> {
        let buf = rx.s.buf;
        let mut first = None;
        for h in header_lines(buf, rx.s.m.headers) {
            if !h.name.get(buf).eq_ignore_ascii_case(b"authorization") {
                continue;
            }
            match digest::parse_credentials(h.value.get(buf)) {
                Ok(c) if self.serves(c.realm) => return Some(Ok(c)),
                other => first = first.or(Some(other)),
            }
        }
        first
    }

    // ----- phases 3 and 4: read and apply ------------------------------

    /// The AoR's bindings after this REGISTER (RFC 3261 §10.3 steps 6-8).
    fn register(
        &mut self,
        rx: &Rx<'_>,
        replayed: bool,
        current: &dyn Fn(&[u8]) -> Vec<Binding>,
    ) -> Result<Applied, Outcome> {
        let (buf, m) = (rx.s.buf, rx.s.m);
        let mut current = current(&rx.aor);
        current.retain(|b| b.expires_at() > rx.now_s);
        let call_id = m.call_id.get(buf);
        if replayed {
            // Only a retransmission may reuse a nonce count: the same
            // request (Call-ID, CSeq) as one already applied.
            let seen = current
                .iter()
                .any(|b| b.call_id() == call_id && b.cseq() >= m.cseq_num);
            if !seen {
                return Err(refused(403, "Forbidden - Nonce Count Replayed"));
            }
            return Ok(Applied::unchanged(Verdict::Retransmission, current));
        }
        let contacts = contact::register_contacts(buf, m).map_err(|e| bad_request(e.reason()))?;
        let expires = contact::expires_header(buf, m).map_err(|e| bad_request(e.reason()))?;
        let list = match contacts {
            RegisterContacts::None => return Ok(Applied::unchanged(Verdict::Registered, current)),
            RegisterContacts::Star if expires == Some(0) => {
                self.check_order(&current, call_id, m.cseq_num)?;
                return Ok(Applied::changed(rx, Vec::new()));
            }
            RegisterContacts::Star => {
                return Err(refused(400, "Bad Request - Star Contact Needs Expires 0"));
            }
            RegisterContacts::List(list) => list,
        };
        let outbound = self.check_outbound(rx, &list)?;
        let mut next = current.clone();
        for c in &list {
            let secs = self.interval(c, expires)?;
            let same = |b: &Binding| same_binding(buf, b, c);
            if let Some(old) = next.iter().find(|b| same(b)) {
                self.check_order(std::slice::from_ref(old), call_id, m.cseq_num)?;
            }
            next.retain(|b| !same(b));
            if secs > 0 {
                next.push(binding_of(rx, c, secs)?);
            }
        }
        if next.len() > self.settings.max_contacts {
            return Err(refused(403, "Forbidden - Too Many Contacts For The AoR"));
        }
        let mut a = Applied::changed(rx, next);
        a.outbound = outbound;
        Ok(a)
    }

    /// §10.3 step 7: the same Call-ID with a CSeq not above the binding's
    /// is an old or repeated request: it must not change anything.
    fn check_order(&self, bindings: &[Binding], call_id: &[u8], cseq: u32) -> Result<(), Outcome> {
        if bindings
            .iter()
            .any(|b| b.call_id() == call_id && b.cseq() >= cseq)
        {
            return Err(refused(400, "Bad Request - CSeq Not Above The Binding's"));
        }
        Ok(())
    }

    /// The interval a contact asks for (its `expires`, else the header,
    /// else the default), clamped to the maximum; below the minimum (and
    /// not 0) → `423` with Min-Expires (§10.3 step 7).
    fn interval(&self, c: &ContactValue, header: Option<u32>) -> Result<u32, Outcome> {
        let st = &self.settings;
        let asked = c.expires.or(header).unwrap_or(st.default_expires);
        if asked != 0 && asked < st.min_expires {
            let mut r = refuse(423, "Interval Too Brief");
            r.extra
                .push(format!("Min-Expires: {}\r\n", st.min_expires).into_bytes());
            return Err(Outcome::Refused(r));
        }
        Ok(asked.min(st.max_expires))
    }

    /// RFC 5626 §6: a `reg-id` asks for an outbound flow; the first hop
    /// must have said it can keep one (a Path with `ob`) unless the edge
    /// is that first hop (one Via: the client's). `Ok(true)`: the 200
    /// carries `Require: outbound`.
    fn check_outbound(&self, rx: &Rx<'_>, list: &[ContactValue]) -> Result<bool, Outcome> {
        let (buf, m) = (rx.s.buf, rx.s.m);
        let wants = list
            .iter()
            .any(|c| c.reg_id.is_some() && c.instance.is_some());
        if !wants {
            return Ok(false);
        }
        if m.via_count > 1 && !contact::path_has_outbound(buf, m) {
            return Err(refused(439, "First Hop Lacks Outbound Support"));
        }
        Ok(true)
    }

    // ----- phase 5: answer ---------------------------------------------

    /// `200 OK` with every current binding and its remaining time.
    fn answer_ok(
        &self,
        s: Scanned<'_>,
        now_s: u64,
        bindings: &[Binding],
        outbound: bool,
        out: &mut [u8],
    ) -> usize {
        let mut lines: Vec<Vec<u8>> = bindings.iter().map(|b| contact_line(b, now_s)).collect();
        if outbound {
            lines.push(b"Require: outbound\r\n".to_vec());
        }
        let extra: Vec<&[u8]> = lines.iter().map(|l| &l[..]).collect();
        reply::build(s, 200, "OK", &extra, out).unwrap_or(0)
    }
}

/// What `register` decided.
struct Applied {
    verdict: Verdict,
    change: Option<Change>,
    bindings: Vec<Binding>,
    outbound: bool,
}

impl Applied {
    fn unchanged(verdict: Verdict, bindings: Vec<Binding>) -> Applied {
        Applied {
            verdict,
            change: None,
            bindings,
            outbound: false,
        }
    }

    fn changed(rx: &Rx<'_>, bindings: Vec<Binding>) -> Applied {
        Applied {
            verdict: Verdict::Registered,
            change: Some(Change {
                aor: rx.aor.clone(),
                bindings: bindings.clone(),
            }),
            bindings,
            outbound: false,
        }
    }
}

/// Why a phase stopped.
enum Outcome {
    /// `401`: fresh challenges (`stale`: the client's nonce had expired).
    Challenge {
        stale: bool,
    },
    Refused(Refusal),
}

fn refused(code: u16, reason: &str) -> Outcome {
    Outcome::Refused(refuse(code, reason))
}

/// `400 Bad Request - <defect>`: the answer names what was wrong.
fn bad_request(defect: &str) -> Outcome {
    Outcome::Refused(refuse(400, &format!("Bad Request - {defect}")))
}

/// `user@realm`, the realm lowercased: the authenticated identity.
fn identity_of(user: &[u8], realm: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(user.len() + 1 + realm.len());
    v.extend_from_slice(user);
    v.push(b'@');
    v.extend(realm.iter().map(u8::to_ascii_lowercase));
    v
}

/// §10.3 step 7 / RFC 5626 §6: the binding a Contact updates: the same
/// instance and reg-id (an outbound flow), else the same instance, else the
/// same URI.
fn same_binding(buf: &[u8], b: &Binding, c: &ContactValue) -> bool {
    match (c.instance.map(|i| i.get(buf)), b.instance()) {
        (Some(ci), Some(bi)) => ci == bi && c.reg_id.unwrap_or(0) == b.reg_id(),
        _ => uri_equal(c.uri.get(buf), b.contact()),
    }
}

/// Contact URIs compared as RFC 3261 §19.1.4 says for what matters here:
/// scheme and host case-insensitively, the rest as written.
fn uri_equal(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn binding_of(rx: &Rx<'_>, c: &ContactValue, secs: u32) -> Result<Binding, Outcome> {
    let buf = rx.s.buf;
    let params = c.params.get(buf);
    Binding::new(&BindingParts {
        contact: c.uri.get(buf),
        flow: rx.s.src,
        expires_at: rx.now_s + u64::from(secs),
        q: c.q.unwrap_or(1000),
        cpm: c.cpm,
        instance: c.instance.map(|i| i.get(buf)),
        reg_id: c.reg_id.unwrap_or(0),
        call_id: rx.s.m.call_id.get(buf),
        cseq: rx.s.m.cseq_num,
        params: (!params.is_empty()).then_some(params),
        conn: conn_of(rx.s),
    })
    .map_err(|e| bad_request(&e.to_string()))
}

/// The stream connection a REGISTER came on, named by the token its
/// worker gave it (always one of this process's: the worker wrote it).
fn conn_of(s: Scanned<'_>) -> Option<Flow> {
    let conn = s
        .flow
        .and_then(|t| Flow::from_token(t, &crate::sip::flow::process_key()));
    debug_assert_eq!(conn.is_some(), s.flow.is_some(), "a worker's own token");
    conn
}

/// `Contact: <uri>;expires=N` plus what the client registered (its feature
/// tags, instance, reg-id: the params it sent, minus its own `expires`).
fn contact_line(b: &Binding, now_s: u64) -> Vec<u8> {
    let params = b.params().unwrap_or_default();
    let mut l = Vec::with_capacity(64 + b.contact().len() + params.len());
    l.extend_from_slice(b"Contact: <");
    l.extend_from_slice(b.contact());
    l.extend_from_slice(b">");
    for p in crate::sip::params::params(params, crate::sip::Span::new(0, params.len())) {
        let name = p.name.get(params);
        if !name.eq_ignore_ascii_case(b"expires") {
            l.extend_from_slice(p.whole.get(params));
        }
    }
    l.extend_from_slice(
        format!(";expires={}\r\n", b.expires_at().saturating_sub(now_s)).as_bytes(),
    );
    l
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::digest::{parse_challenge, write_authorization, Ha1};
    use crate::sip::rewrite::Out;
    use crate::sip::scan::scan;
    use credentials::Credential;
    use std::net::SocketAddr;

    const NOW: u64 = 1_800_000_000;

    fn registrar() -> Registrar {
        Registrar::new(
            Settings {
                domains: vec!["example.net".into()],
                default_expires: 3600,
                min_expires: 60,
                max_expires: 7200,
                max_contacts: 4,
                nonce_lifetime_s: 300,
                max_failures: 3,
                failure_window_s: 60,
                algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
            },
            [7; 32],
        )
    }

    fn creds() -> CredentialStore {
        let mut s = CredentialStore::default();
        let md5 = Ha1::compute(Algorithm::Md5, b"alice", b"example.net", b"pw");
        let sha256 = Ha1::compute(Algorithm::Sha256, b"alice", b"example.net", b"pw");
        s.insert(
            "alice@example.net",
            Credential {
                md5: Some(md5),
                sha256: Some(sha256),
            },
        )
        .unwrap();
        s
    }

    const SRC: &str = "192.0.2.1:5060";

    fn register(cseq: u32, contact: &str, extra: &str) -> String {
        format!(
            "REGISTER sip:example.net SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK{cseq}\r\n\
             {extra}Max-Forwards: 70\r\nFrom: <sip:alice@example.net>;tag=1\r\nTo: <sip:alice@example.net>\r\n\
             Call-ID: c1\r\nCSeq: {cseq} REGISTER\r\nContact: {contact}\r\nContent-Length: 0\r\n\r\n"
        )
    }

    /// Handle `msg` at `now` against `held` bindings.
    fn run(r: &mut Registrar, msg: &str, now: u64, held: &[Binding]) -> (String, Handled) {
        let src: SocketAddr = SRC.parse().unwrap();
        let m = scan(msg.as_bytes());
        let mut out = vec![0u8; MAX_ANSWER];
        let held = held.to_vec();
        let current = move |_: &[u8]| held.clone();
        let h = r.handle(
            Scanned::new(msg.as_bytes(), &m, src),
            now,
            &creds(),
            &current,
            &mut out,
        );
        (String::from_utf8_lossy(&out[..h.len]).into_owned(), h)
    }

    /// `msg` with an Authorization answering the `alg` challenge in `c`.
    fn answered(msg: &str, c: &str, alg: &str, nc: u32) -> String {
        let line = c
            .lines()
            .find(|l| l.starts_with("WWW-Authenticate:") && l.contains(alg))
            .unwrap();
        let ch = parse_challenge(line["WWW-Authenticate:".len()..].trim().as_bytes()).unwrap();
        let ha1 = Ha1::compute(ch.algorithm, b"alice", b"example.net", b"pw");
        let mut b = [0u8; 1024];
        let mut o = Out::new(&mut b);
        write_authorization(
            &mut o,
            b"Authorization",
            &ch,
            b"alice",
            &ha1,
            b"REGISTER",
            b"sip:example.net",
            b"cn",
            nc,
        );
        let n = o.finish().unwrap();
        let auth = String::from_utf8_lossy(&b[..n]).into_owned();
        msg.replacen(
            "Max-Forwards",
            &format!("{}\r\nMax-Forwards", auth.trim_end()),
            1,
        )
    }

    #[test]
    fn an_expired_nonce_is_challenged_again_with_stale() {
        let mut r = registrar();
        let msg = register(1, "<sip:alice@192.0.2.1>", "");
        let (c, h) = run(&mut r, &msg, NOW, &[]);
        assert_eq!(h.verdict, Verdict::Challenged);
        assert!(!c.contains("stale"), "{c}");
        let auth = answered(&register(2, "<sip:alice@192.0.2.1>", ""), &c, "SHA-256", 1);
        let (again, h) = run(&mut r, &auth, NOW + 301, &[]);
        assert_eq!(h.verdict, Verdict::Challenged, "{again}");
        assert_eq!(again.matches("stale=true").count(), 2, "{again}");
        let (ok, h) = run(&mut r, &auth, NOW + 299, &[]);
        assert_eq!(h.verdict, Verdict::Registered, "{ok}");
        let change = h.change.unwrap();
        assert_eq!(change.aor, b"alice@example.net");
        assert_eq!(change.bindings[0].expires_at(), NOW + 299 + 3600);
    }

    #[test]
    fn reg_id_through_a_hop_without_outbound_is_439() {
        let mut r = registrar();
        let contact = "<sip:alice@192.0.2.1>;+sip.instance=\"<urn:uuid:1>\";reg-id=1";
        let proxy = "Via: SIP/2.0/UDP 198.51.100.1;branch=z9hG4bKp\r\n";
        let (c, _) = run(&mut r, &register(1, contact, ""), NOW, &[]);
        let via_proxy = answered(&register(2, contact, ""), &c, "MD5", 1).replacen(
            "Max-Forwards",
            &format!("{proxy}Max-Forwards"),
            1,
        );
        // The extra Via goes after the client's: a hop between us.
        let (r439, _) = run(&mut r, &via_proxy, NOW, &[]);
        assert!(
            r439.starts_with("SIP/2.0 439 First Hop Lacks Outbound Support"),
            "{r439}"
        );
        let direct = answered(&register(3, contact, ""), &c, "MD5", 2);
        let (ok, h) = run(&mut r, &direct, NOW, &[]);
        assert!(ok.starts_with("SIP/2.0 200 OK"), "{ok}");
        assert!(ok.contains("Require: outbound"), "{ok}");
        assert_eq!(h.change.unwrap().bindings[0].reg_id(), 1);
    }

    #[test]
    fn an_old_cseq_of_the_same_call_id_changes_nothing() {
        let mut r = registrar();
        let (c, _) = run(&mut r, &register(1, "<sip:alice@192.0.2.1>", ""), NOW, &[]);
        let first = answered(&register(5, "<sip:alice@192.0.2.1>", ""), &c, "MD5", 1);
        let (_, h) = run(&mut r, &first, NOW, &[]);
        let held = h.change.unwrap().bindings;
        let old = answered(
            &register(4, "<sip:alice@192.0.2.1>;expires=0", ""),
            &c,
            "MD5",
            2,
        );
        let (r400, h) = run(&mut r, &old, NOW, &held);
        assert!(
            r400.starts_with("SIP/2.0 400 Bad Request - CSeq Not Above"),
            "{r400}"
        );
        assert!(h.change.is_none());
    }

    /// What the front answers for a worker (`None`: for the thread).
    fn front_answer(r: &Registrar, msg: &str, src: &str, now: u64) -> Option<(String, Handled)> {
        let m = scan(msg.as_bytes());
        let mut out = vec![0u8; MAX_ANSWER];
        let s = Scanned::new(msg.as_bytes(), &m, src.parse().unwrap());
        let h = r.front().answer_at_once(s, now, &mut out)?;
        Some((String::from_utf8_lossy(&out[..h.len]).into_owned(), h))
    }

    #[test]
    fn the_front_challenges_as_the_thread_does_and_its_nonce_registers() {
        let mut r = registrar();
        let msg = register(1, "<sip:alice@192.0.2.1>", "");
        let (front, h) = front_answer(&r, &msg, SRC, NOW).expect("answered at once");
        assert_eq!(h.verdict, Verdict::Challenged);
        let (thread, _) = run(&mut r, &msg, NOW, &[]);
        let challenges = |a: &str| {
            a.lines()
                .filter(|l| l.starts_with("WWW-Authenticate:"))
                .map(|l| l.split("nonce=").next().unwrap_or("").to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(challenges(&front), challenges(&thread));
        assert_ne!(front, thread, "one nonce sequence: distinct nonces");
        let auth = answered(
            &register(2, "<sip:alice@192.0.2.1>", ""),
            &front,
            "SHA-256",
            1,
        );
        assert!(
            front_answer(&r, &auth, SRC, NOW).is_none(),
            "credentials: for the thread"
        );
        let (ok, h) = run(&mut r, &auth, NOW, &[]);
        assert_eq!(h.verdict, Verdict::Registered, "{ok}");
    }

    #[test]
    fn the_front_names_defects_and_refuses_a_locked_out_source() {
        let mut r = registrar();
        let bad = register(1, "<sip:alice@192.0.2.1>;expires=x", "");
        let (a, _) = front_answer(&r, &bad, SRC, NOW).unwrap();
        let (t, _) = run(&mut r, &bad, NOW, &[]);
        assert!(a.starts_with("SIP/2.0 400 Bad Request - "), "{a}");
        assert_eq!(a.lines().next(), t.lines().next());
        let alien = register(1, "<sip:alice@192.0.2.1>", "")
            .replace("REGISTER sip:example.net", "REGISTER sip:example.org");
        let (a, _) = front_answer(&r, &alien, SRC, NOW).unwrap();
        assert!(
            a.starts_with("SIP/2.0 403 Forbidden - Unknown Realm"),
            "{a}"
        );
        // Three wrong passwords lock the source out, at the front too.
        let (c, _) = run(&mut r, &register(1, "<sip:alice@192.0.2.1>", ""), NOW, &[]);
        for nc in 1..=3 {
            let mut wrong = answered(
                &register(1 + nc, "<sip:alice@192.0.2.1>", ""),
                &c,
                "MD5",
                nc,
            );
            let at = wrong.find("response=\"").unwrap() + "response=\"".len();
            let flipped = if &wrong[at..=at] == "0" { "1" } else { "0" };
            wrong.replace_range(at..=at, flipped);
            let (w, _) = run(&mut r, &wrong, NOW, &[]);
            assert!(
                w.starts_with("SIP/2.0 403 Forbidden - Bad Credentials"),
                "{w}"
            );
        }
        let fresh = register(9, "<sip:alice@192.0.2.1>", "");
        let (a, h) = front_answer(&r, &fresh, SRC, NOW + 1).unwrap();
        assert!(
            a.starts_with("SIP/2.0 403 Forbidden - Too Many Failed Attempts"),
            "{a}"
        );
        assert_eq!(h.verdict, Verdict::Refused(403));
        let (other, _) = front_answer(&r, &fresh, "192.0.2.2:5060", NOW + 1).unwrap();
        assert!(other.starts_with("SIP/2.0 401 Unauthorized"), "{other}");
        // The window over: challenged again.
        let (later, _) = front_answer(&r, &fresh, SRC, NOW + 61).unwrap();
        assert!(later.starts_with("SIP/2.0 401 Unauthorized"), "{later}");
    }
}
