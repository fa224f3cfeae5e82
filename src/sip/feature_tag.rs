//! The CPM enabler usage indication: a CPM ICSI
//! (`urn:urn-7:3gpp-service.ims.icsi.oma.cpm.<service>`) in Accept-Contact or
//! Contact (as a `+g.3gpp.icsi-ref` feature-tag value, RFC 3840/3841, where
//! `:` is usually escaped as `%3A`) or as a P-Preferred-Service /
//! P-Asserted-Service value (RFC 6050, plain form).
//!
//! The scan searches each of those header values once with a precompiled
//! `memmem` finder for the invariant middle of the URN, then checks the
//! prefix (`urn:urn-7:` in plain or escaped form) and the service name.

use memchr::memmem::Finder;
use std::sync::OnceLock;

/// One bit per CPM service of the ICSI.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpmServices(pub u8);

impl CpmServices {
    pub const SESSION: u8 = 1;
    pub const MSG: u8 = 2;
    pub const LARGEMSG: u8 = 4;
    pub const DEFERRED: u8 = 8;
    pub const FILETRANSFER: u8 = 16;
    pub const SYSTEMMSG: u8 = 32;

    pub fn any(self) -> bool {
        self.0 != 0
    }
}

const MIDDLE: &[u8] = b"3gpp-service.ims.icsi.oma.cpm.";
const SERVICES: [(&[u8], u8); 6] = [
    (b"session", CpmServices::SESSION),
    (b"msg", CpmServices::MSG),
    (b"largemsg", CpmServices::LARGEMSG),
    (b"deferred", CpmServices::DEFERRED),
    (b"filetransfer", CpmServices::FILETRANSFER),
    (b"systemmsg", CpmServices::SYSTEMMSG),
];

fn finder() -> &'static Finder<'static> {
    static F: OnceLock<Finder<'static>> = OnceLock::new();
    F.get_or_init(|| Finder::new(MIDDLE))
}

/// Does `prefix_end` follow a `urn:urn-7:` (any case, `:` plain or `%3A`)?
fn has_urn_prefix(v: &[u8], at: usize) -> bool {
    let before = &v[..at];
    let ends_ci = |suffix: &[u8]| {
        before.len() >= suffix.len()
            && before[before.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    };
    ends_ci(b"urn:urn-7:") || ends_ci(b"urn%3Aurn-7%3A")
}

/// Is the URN at `at` inside a `+g.3gpp.icsi-ref` parameter value? (A URN
/// elsewhere in a Contact, e.g. in a display name or another parameter, is
/// not a feature tag.) URNs hold no `;`, so the parameter starts after the
/// last `;` before the match.
fn in_icsi_ref(v: &[u8], at: usize) -> bool {
    let start = memchr::memrchr(b';', &v[..at]).map_or(0, |p| p + 1);
    let seg = &v[start..at];
    let seg = &seg[seg
        .iter()
        .position(|b| !crate::sip::is_lws(*b))
        .unwrap_or(seg.len())..];
    const TAG: &[u8] = b"+g.3gpp.icsi-ref";
    seg.len() > TAG.len() && seg[..TAG.len()].eq_ignore_ascii_case(TAG) && {
        let rest = &seg[TAG.len()..];
        let rest = &rest[rest
            .iter()
            .position(|b| !crate::sip::is_lws(*b))
            .unwrap_or(rest.len())..];
        rest.first() == Some(&b'=')
    }
}

/// Candidate positions of a CPM ICSI in a whole header block: one SIMD
/// search per message; [`service_at`] then checks each hit in its header.
pub fn candidates(block: &[u8]) -> memchr::memmem::FindIter<'_, 'static> {
    finder().find_iter(block)
}

/// The service bit of the ICSI whose invariant middle starts at `at` in the
/// header value `v`, or 0 when it is not a CPM ICSI in this position. With
/// `feature_tag`, only ICSIs inside a `+g.3gpp.icsi-ref` parameter count
/// (Contact, Accept-Contact); without, the value itself is the service
/// (P-Preferred-Service, P-Asserted-Service).
pub fn service_at(v: &[u8], at: usize, feature_tag: bool) -> u8 {
    if at + MIDDLE.len() > v.len() || !has_urn_prefix(v, at) || (feature_tag && !in_icsi_ref(v, at))
    {
        return 0;
    }
    let rest = &v[at + MIDDLE.len()..];
    let name_len = rest
        .iter()
        .position(|b| !(b.is_ascii_alphanumeric() || *b == b'-'))
        .unwrap_or(rest.len());
    let name = &rest[..name_len];
    SERVICES
        .iter()
        .find(|(s, _)| s.eq_ignore_ascii_case(name))
        .map_or(0, |(_, bit)| *bit)
}

/// CPM services named in one header value (any number of ICSIs, e.g. a
/// comma-separated `+g.3gpp.icsi-ref` list); see [`service_at`].
pub fn cpm_services(v: &[u8], feature_tag: bool) -> CpmServices {
    CpmServices(
        finder()
            .find_iter(v)
            .fold(0, |acc, at| acc | service_at(v, at, feature_tag)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_and_plain_forms() {
        let ac =
            br#"*;+g.3gpp.icsi-ref="urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session";explicit"#;
        assert_eq!(cpm_services(ac, true).0, CpmServices::SESSION);
        let pps = b"urn:urn-7:3gpp-service.ims.icsi.oma.cpm.msg";
        assert_eq!(cpm_services(pps, false).0, CpmServices::MSG);
        assert!(
            !cpm_services(pps, true).any(),
            "a bare URN is not a feature tag"
        );
        let other_param = br#"<sip:a@b>;x="urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session""#;
        assert!(!cpm_services(other_param, true).any());
        let spaced = br#"<sip:a@b>; +G.3GPP.ICSI-REF = "urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session""#;
        assert!(cpm_services(spaced, true).any());
        let lower = br#"+g.3gpp.icsi-ref="urn%3aurn-7%3a3gpp-service.ims.icsi.oma.cpm.largemsg,urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.filetransfer""#;
        assert_eq!(
            cpm_services(lower, true).0,
            CpmServices::LARGEMSG | CpmServices::FILETRANSFER
        );
    }

    #[test]
    fn near_misses_are_not_cpm() {
        // MMTel ICSI, unknown CPM service, missing urn-7 prefix, truncated.
        for v in [
            &b"urn:urn-7:3gpp-service.ims.icsi.mmtel"[..],
            b"urn:urn-7:3gpp-service.ims.icsi.oma.cpm.sessionx",
            b"urn:urn-9:3gpp-service.ims.icsi.oma.cpm.session",
            b"3gpp-service.ims.icsi.oma.cpm.session",
            b"urn:urn-7:3gpp-service.ims.icsi.oma.cpm.",
        ] {
            assert!(
                !cpm_services(v, false).any(),
                "{}",
                String::from_utf8_lossy(v)
            );
        }
    }
}
