//! The CPM enabler usage indication: a CPM ICSI
//! (`urn:urn-7:3gpp-service.ims.icsi.oma.cpm.<service>`) in Accept-Contact or
//! Contact (as a `+g.3gpp.icsi-ref` feature-tag value, RFC 3840/3841, where
//! `:` is usually escaped as `%3A`) or as a P-Preferred-Service /
//! P-Asserted-Service value (RFC 6050, plain form).
//!
//! Each of those header values is read structurally: the `+g.3gpp.icsi-ref`
//! parameter by its `;`, then each element of its (quoted, comma-separated)
//! list must start with the ICSI prefix (`urn:urn-7:` plain or `%3A`
//! escaped), the invariant middle and a known service name. Nothing is
//! searched for, so a header costs about what its length costs to skim.

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

use super::{find_byte, skip_lws};

const TAG: &[u8] = b"+g.3gpp.icsi-ref";

fn starts_with_ci(v: &[u8], prefix: &[u8]) -> bool {
    v.len() >= prefix.len() && v[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// The service bit of one list element that starts at `v[0]`: a CPM ICSI
/// (`urn:urn-7:` or `urn%3Aurn-7%3A`, any case, then the invariant middle
/// and a known service name), else 0.
fn service_of(v: &[u8]) -> u8 {
    let rest = if starts_with_ci(v, b"urn:urn-7:") {
        &v[10..]
    } else if starts_with_ci(v, b"urn%3Aurn-7%3A") {
        &v[14..]
    } else {
        return 0;
    };
    let Some(rest) = rest.strip_prefix(MIDDLE) else {
        return 0;
    };
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

/// Service bits of a comma-separated list of service identifiers starting
/// at `v[0]`: a quoted feature-tag value (`"a,b"`, ends at the closing
/// quote) or a bare list (ends at `;` for a parameter, else at the end).
fn service_list(v: &[u8], in_param: bool) -> u8 {
    let quoted = v.first() == Some(&b'"');
    let body = &v[usize::from(quoted)..];
    let stop = if quoted {
        find_byte(b'"', body)
    } else if in_param {
        find_byte(b';', body)
    } else {
        None
    };
    let body = &body[..stop.unwrap_or(body.len())];
    let mut bits = 0;
    let mut at = 0;
    loop {
        at = skip_lws(body, at);
        bits |= service_of(&body[at..]);
        match find_byte(b',', &body[at..]) {
            Some(c) => at += c + 1,
            None => return bits,
        }
    }
}

/// CPM services named in one header value. With `feature_tag` (Contact,
/// Accept-Contact, RFC 3840/3841) only ICSIs in the value of a
/// `+g.3gpp.icsi-ref` parameter count, so a URN in a display name or in
/// another parameter is not a feature tag; without it (P-Preferred-Service,
/// P-Asserted-Service, RFC 6050) the value is itself a list of services.
/// Structural, with no search for the URN: the parameter is found by its
/// `;`, the ICSI must start each list element.
pub fn cpm_services(v: &[u8], feature_tag: bool) -> CpmServices {
    if !feature_tag {
        return CpmServices(service_list(v, false));
    }
    let mut bits = 0;
    // A value that is only parameters (an Accept-Contact written without
    // its `*`) has the tag at its start.
    let mut start = 0;
    loop {
        let p = skip_lws(v, start);
        if starts_with_ci(&v[p..], TAG) {
            let eq = skip_lws(v, p + TAG.len());
            if v.get(eq) == Some(&b'=') {
                bits |= service_list(&v[skip_lws(v, eq + 1)..], true);
            }
        }
        match find_byte(b';', &v[start..]) {
            Some(s) => start += s + 1,
            None => return CpmServices(bits),
        }
    }
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
