//! The media policy of OMA CPM seed 5.2.3.7: each function forwarding a CPM
//! Session Invitation offers all or a non-empty subset of the Media Streams
//! it received (service-provider policy on the participating side, the
//! hosted group's policy on the controlling side), and the answer accepts
//! all or a non-empty subset of what was offered.
//!
//! This module owns:
//! - [`MediaPolicy`]: what is allowed, as configured (serde, unknown keys
//!   rejected), and how a user's or a group's override refines the
//!   service-provider default ([`MediaPolicy::merged`]);
//! - [`filter_offer`]: which streams of a parsed offer to refuse, and why;
//!   the caller rewrites the body with [`refuse_streams`] and rejects the
//!   invitation when [`OfferVerdict::kept`] is 0;
//! - [`check_answer`]: whether an answer respects the offer we forwarded.
//!
//! Invariants: an [`OfferVerdict`] has one entry per offered stream in both
//! vectors, `reasons[i].is_some() == refuse[i]`; a stream refused in the
//! offer (port 0) is never un-refused. Reasons contain only printable ASCII
//! (input bytes are sanitised) so they can go into a log line or a Warning.
//!
//! [`refuse_streams`]: super::sdp::refuse_streams

use super::sdp::{MediaType, Sdp};

/// A media policy. Every `None` means "no restriction".
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaPolicy {
    /// Media type names allowed ("audio", "video", "message", ...),
    /// case-insensitive.
    pub allowed_media: Option<Vec<String>>,
    /// Transport protocols allowed, e.g. `["TCP/MSRP", "TCP/TLS/MSRP",
    /// "RTP/AVP", "RTP/SAVP"]`, case-insensitive, matched exactly (RTP/SAVP
    /// does not allow RTP/AVP nor UDP/TLS/RTP/SAVPF).
    pub allowed_protos: Option<Vec<String>>,
    /// For message (MSRP) streams: every `a=accept-types` entry must match
    /// one of these. A pattern is `type/subtype`, `type/*` or `*`,
    /// case-insensitive; media type parameters (`;...`) are ignored.
    pub allowed_accept_types: Option<Vec<String>>,
    /// Keep at most this many streams (the first acceptable ones, in offer
    /// order).
    pub max_streams: Option<usize>,
    /// A file-transfer stream (`a=file-selector` with `size:`) larger than
    /// this many bytes is refused.
    pub max_file_size: Option<u64>,
}

impl MediaPolicy {
    /// `over`'s set fields replace `self`'s (service-provider default, then
    /// a user's or a group's override). Replace, not intersect: an override
    /// is how the operator grants a group more than the default, too.
    pub fn merged(&self, over: &MediaPolicy) -> MediaPolicy {
        MediaPolicy {
            allowed_media: over
                .allowed_media
                .clone()
                .or_else(|| self.allowed_media.clone()),
            allowed_protos: over
                .allowed_protos
                .clone()
                .or_else(|| self.allowed_protos.clone()),
            allowed_accept_types: over
                .allowed_accept_types
                .clone()
                .or_else(|| self.allowed_accept_types.clone()),
            max_streams: over.max_streams.or(self.max_streams),
            max_file_size: over.max_file_size.or(self.max_file_size),
        }
    }
}

/// What to do with each stream of an offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferVerdict {
    /// Per stream, in offer order: true = refuse (port 0).
    pub refuse: Vec<bool>,
    /// Per stream: why it is refused (None for a kept stream).
    pub reasons: Vec<Option<String>>,
}

impl OfferVerdict {
    /// Streams kept. 0 means the invitation must be rejected (5.2.3.7: a
    /// non-empty subset is forwarded, or nothing is).
    pub fn kept(&self) -> usize {
        self.refuse.iter().filter(|&&r| !r).count()
    }

    /// True if any stream is refused, including streams the offer itself
    /// already refused (port 0): then the body has to be rewritten.
    pub fn any_refused(&self) -> bool {
        self.refuse.iter().any(|&r| r)
    }
}

/// Input text in a reason: printable ASCII only, bounded length.
fn sanitize(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// Does the offered accept-types entry `entry` fall within `pattern`?
/// The pattern must be at least as wide as the entry: `text/*` in an offer
/// is matched by `text/*` or `*`, not by `text/plain`.
fn accept_type_matches(pattern: &str, entry: &str) -> bool {
    let strip = |s: &str| -> String {
        s.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    };
    let (pattern, entry) = (strip(pattern), strip(entry));
    if pattern == "*" {
        return true;
    }
    match (pattern.split_once('/'), entry.split_once('/')) {
        (Some((pt, "*")), Some((et, _))) => pt == et,
        (Some(_), Some(_)) => pattern == entry,
        _ => false,
    }
}

fn contains_ignore_case(list: &[String], s: &str) -> bool {
    list.iter().any(|x| x.trim().eq_ignore_ascii_case(s))
}

/// Decide which streams of `sdp` (an offer) to forward under `policy`.
///
/// Streams already refused in the offer (port 0) stay refused and do not
/// count toward `max_streams`. The other rules are checked in order (media
/// type, proto, accept-types, file size) and the first one violated is the
/// reason; `max_streams` is applied last, to the streams that passed, so a
/// stream refused for another reason does not use up the quota.
pub fn filter_offer(sdp: &Sdp, policy: &MediaPolicy) -> OfferVerdict {
    let mut refuse = Vec::with_capacity(sdp.media.len());
    let mut reasons = Vec::with_capacity(sdp.media.len());
    let mut kept = 0usize;
    for m in &sdp.media {
        let reason = stream_reason(m, policy).or_else(|| match policy.max_streams {
            Some(max) if kept >= max => Some(format!("stream limit {max} reached")),
            _ => None,
        });
        if reason.is_none() {
            kept += 1;
        }
        refuse.push(reason.is_some());
        reasons.push(reason);
    }
    OfferVerdict { refuse, reasons }
}

/// The first per-stream rule `m` violates, if any (not `max_streams`).
fn stream_reason(m: &super::sdp::Media, policy: &MediaPolicy) -> Option<String> {
    if m.port == 0 {
        return Some("refused in the offer".to_string());
    }
    let name = m.media_type.name();
    if let Some(allowed) = &policy.allowed_media {
        if !contains_ignore_case(allowed, name) {
            return Some(format!("media {} not allowed", sanitize(name)));
        }
    }
    if let Some(allowed) = &policy.allowed_protos {
        if !contains_ignore_case(allowed, &m.proto) {
            return Some(format!("protocol {} not allowed", sanitize(&m.proto)));
        }
    }
    if let (Some(allowed), MediaType::Message) = (&policy.allowed_accept_types, &m.media_type) {
        // RFC 4975 makes a=accept-types mandatory on an MSRP stream; without
        // it we cannot tell what would be carried, so a restricted policy
        // refuses rather than assumes.
        if m.accept_types.is_empty() {
            return Some("no accept-types".to_string());
        }
        if let Some(bad) = m
            .accept_types
            .iter()
            .find(|e| !allowed.iter().any(|p| accept_type_matches(p, e)))
        {
            return Some(format!("accept-type {} not allowed", sanitize(bad)));
        }
    }
    if let (Some(max), Some(size)) = (policy.max_file_size, m.file_size) {
        if size > max {
            return Some(format!("file size {size} exceeds {max}"));
        }
    }
    None
}

/// Why an answer does not fit the offer we forwarded. The text is short
/// ASCII (no input bytes beyond media names, which the parser limits to
/// token characters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnswerViolation(pub String);

impl std::fmt::Display for AnswerViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AnswerViolation {}

/// RFC 3264 + 5.2.3.7: the answer has exactly as many m= lines as the
/// offer, and a stream may be accepted (port != 0) only where the forwarded
/// offer had port != 0; the same media type per position. The answer must
/// also accept at least one stream when the offer had any: 5.2.3.7 answers
/// with a non-empty subset, and "nothing acceptable" is a rejection, not an
/// answer.
///
/// `offered_ports_nonzero` and `offered_types` describe the offer as
/// forwarded (after [`filter_offer`] and refusal), one entry per stream.
pub fn check_answer(
    offered_ports_nonzero: &[bool],
    offered_types: &[MediaType],
    answer: &Sdp,
) -> Result<(), AnswerViolation> {
    if offered_ports_nonzero.len() != offered_types.len() {
        return Err(AnswerViolation("offer description inconsistent".into()));
    }
    if answer.media.len() != offered_types.len() {
        return Err(AnswerViolation(format!(
            "answer has {} m= lines, offer had {}",
            answer.media.len(),
            offered_types.len()
        )));
    }
    let rows = answer
        .media
        .iter()
        .zip(offered_types)
        .zip(offered_ports_nonzero);
    for (i, ((m, offered_type), &offered)) in rows.enumerate() {
        if m.media_type != *offered_type {
            return Err(AnswerViolation(format!(
                "m= line {}: answer {} for offered {}",
                i + 1,
                sanitize(m.media_type.name()),
                sanitize(offered_type.name())
            )));
        }
        if m.port != 0 && !offered {
            return Err(AnswerViolation(format!(
                "m= line {}: accepts a stream refused in the offer",
                i + 1
            )));
        }
    }
    if !answer.media.is_empty() && answer.media.iter().all(|m| m.port == 0) {
        return Err(AnswerViolation("answer accepts no stream".into()));
    }
    Ok(())
}
