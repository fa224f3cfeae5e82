//! Which media-stream policy (seed 5.2.3.7) applies to a request: the
//! service provider's default, overridden per user on the legs to a
//! Participating Function, per group on the leg to the Controlling
//! Function. The policy itself and the SDP it reads are in
//! [`crate::sip::media`] and [`crate::sip::sdp`]; applying it is the
//! pipeline's policy gate.

use super::groups::{identity_key, MAX_IDENTITY};
use super::ForwardKind;
use crate::sip::media::MediaPolicy;
use crate::sip::scan::{Message, Method, StartLine};
use crate::sip::uri;
use std::collections::HashMap;

/// What to do with an answer that accepts a stream the edge did not offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnViolation {
    /// Count and log it, forward the answer unchanged.
    Pass,
    /// Count and log it, replace the answer by `500`.
    Reject,
}

/// The policies in force; part of the published `Tables` snapshot.
#[derive(Clone, Debug)]
pub struct PolicyTable {
    pub default: Option<MediaPolicy>,
    /// Canonical user identity (`user@host`) → override.
    pub users: HashMap<Vec<u8>, MediaPolicy>,
    /// Canonical group identity → override.
    pub groups: HashMap<Vec<u8>, MediaPolicy>,
    pub on_violation: OnViolation,
}

impl Default for PolicyTable {
    fn default() -> Self {
        PolicyTable {
            default: None,
            users: HashMap::new(),
            groups: HashMap::new(),
            on_violation: OnViolation::Pass,
        }
    }
}

impl PolicyTable {
    /// No policy at all: nothing ever goes to the slow path.
    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.users.is_empty() && self.groups.is_empty()
    }

    /// The identity whose override applies on this leg, and whether it is a
    /// group: the inviting user (P-Asserted-Identity, else From) toward its
    /// Participating Function, the Request-URI toward the invited user's PF
    /// or the Controlling Function.
    fn subject<'k>(
        kind: ForwardKind,
        buf: &[u8],
        m: &Message,
        key: &'k mut [u8; MAX_IDENTITY],
    ) -> Option<(&'k [u8], bool)> {
        let (span, group) = match (kind, m.start) {
            (ForwardKind::OriginatingPf, _) => (m.pai_uri.unwrap_or(m.from_uri), false),
            (ForwardKind::TerminatingPf, StartLine::Request { uri, .. }) => (uri, false),
            (ForwardKind::Controlling, StartLine::Request { uri, .. }) => (uri, true),
            _ => return None,
        };
        let u = uri::parse(buf, span)?;
        identity_key(buf, &u, key).map(|k| (k, group))
    }

    fn overriding(&self, kind: ForwardKind, buf: &[u8], m: &Message) -> Option<&MediaPolicy> {
        let mut key = [0u8; MAX_IDENTITY];
        let (k, group) = PolicyTable::subject(kind, buf, m, &mut key)?;
        if group {
            self.groups.get(k)
        } else {
            self.users.get(k)
        }
    }

    /// Does a policy apply to this forwarded request? Cheap: the fast path
    /// asks it only for INVITE/UPDATE with an SDP body.
    pub fn applies(&self, kind: ForwardKind, buf: &[u8], m: &Message) -> bool {
        let leg = matches!(
            kind,
            ForwardKind::OriginatingPf
                | ForwardKind::Controlling
                | ForwardKind::TerminatingPf
                | ForwardKind::InDialog
        );
        leg && (self.default.is_some()
            || (!self.is_empty() && self.overriding(kind, buf, m).is_some()))
    }

    /// The effective policy: the default with the leg's override on top.
    pub fn effective(&self, kind: ForwardKind, buf: &[u8], m: &Message) -> Option<MediaPolicy> {
        let base = self.default.clone().unwrap_or_default();
        match self.overriding(kind, buf, m) {
            Some(o) => Some(base.merged(o)),
            None => self.default.clone(),
        }
    }
}

/// Is the body SDP (`application/sdp`, parameters allowed)?
pub fn has_sdp(buf: &[u8], m: &Message) -> bool {
    if m.body.is_empty() {
        return false;
    }
    let Some(ct) = m.content_type else {
        return false;
    };
    let v = ct.get(buf);
    let end = v.iter().position(|b| *b == b';').unwrap_or(v.len());
    v[..end]
        .trim_ascii()
        .eq_ignore_ascii_case(b"application/sdp")
}

/// Methods whose SDP is an offer the policy filters (and whose answers it checks).
pub fn offer_method(m: Method) -> bool {
    matches!(m, Method::Invite | Method::Update)
}

/// A response whose SDP is an answer to check: 18x or 2xx to INVITE/UPDATE.
pub fn is_answer(buf: &[u8], m: &Message) -> bool {
    let StartLine::Response { code } = m.start else {
        return false;
    };
    (180..300).contains(&code)
        && offer_method(Method::from_bytes(m.cseq_method.get(buf)))
        && has_sdp(buf, m)
}
