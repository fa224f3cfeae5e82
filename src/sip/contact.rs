//! What a registrar reads from a REGISTER (RFC 3261 §10.3, RFC 5626 §6,
//! RFC 3840): the Contact bindings with their `expires`, `q`,
//! `+sip.instance`, `reg-id` and CPM feature tags, the Expires header, and
//! the outbound indications (`Supported: outbound`, `;ob` in the first Path).
//!
//! Runs on the registrar thread, not the forwarding path: it allocates (one
//! `Vec` of at most [`MAX_REGISTER_CONTACTS`] values) and reads each value
//! twice (grammar, then parameters) for clarity rather than speed.
//!
//! Invariants:
//! - every [`Span`] returned lies inside the scanned buffer, and inside the
//!   value it belongs to;
//! - a [`ContactValue`]'s URI is a SIP or SIPS URI that parses, its `q` is
//!   at most 1000, its `reg_id` is in 1..=2^31-1 and only present with an
//!   instance (RFC 5626 §6: a reg-id without an instance is ignored);
//! - a defect is an error value naming it, never a panic: every
//!   [`ContactError::reason`] is short printable ASCII for a
//!   `400 Bad Request - <reason>`.
//!
//! Strictness: RFC 3261 §10.2.1.1 says malformed `expires` values SHOULD be
//! treated as 3600; this registrar refuses them instead (a client that
//! writes them gets told, rather than a lifetime it did not ask for). Values
//! above 2^32-1 are taken as 2^32-1, which the same section allows.

use super::feature_tag::{checked_cpm_services, CpmServices};
use super::params::{find_unquoted, generic_params, params, run_escaped, URIC};
use super::scan::{header_lines, Header, Message};
use super::uri::{self, checked_name_addr, name_addr, Scheme};
use super::{skip_lws, trim, Span};

/// Most Contact values read from one REGISTER: a UA registers one binding
/// (RFC 5626 allows one per flow), a few in odd cases. More is refused.
pub const MAX_REGISTER_CONTACTS: usize = 16;

/// Largest `reg-id` (RFC 5626 §11: 1 to 2^31-1).
pub const MAX_REG_ID: u32 = (1 << 31) - 1;

/// The Contact header fields of a REGISTER (RFC 3261 §10.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterContacts {
    /// No Contact: a query for the current bindings (§10.2.3).
    None,
    /// `Contact: *` with `Expires: 0`: remove every binding (§10.2.2).
    Star,
    /// The bindings to add, refresh or remove, in order.
    List(Vec<ContactValue>),
}

/// One Contact value of a REGISTER, as spans of the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContactValue {
    /// The whole value (display name, URI, parameters), trimmed.
    pub value: Span,
    /// The URI: inside `<>` for a name-addr, the bare addr-spec otherwise.
    pub uri: Span,
    /// The `expires` parameter in seconds (2^32-1 for anything larger).
    pub expires: Option<u32>,
    /// The `q` parameter in thousandths (0..=1000).
    pub q: Option<u16>,
    /// The `+sip.instance` value without its quotes, e.g.
    /// `<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>`.
    pub instance: Option<Span>,
    /// The `reg-id` (RFC 5626), kept only with an instance.
    pub reg_id: Option<u32>,
    /// The CPM ICSIs named in `+g.3gpp.icsi-ref` parameters.
    pub cpm: CpmServices,
    /// The header parameters after the URI, from the first `;` to the
    /// value's end (empty when there are none): what the 200 echoes.
    pub params: Span,
}

/// What is wrong with the Contact or Expires headers of a REGISTER.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContactError {
    /// A value that is neither a name-addr nor an addr-spec followed by
    /// parameters (unterminated quote or `<`, an empty value, `;;`).
    #[error("a Contact value is not a name-addr or addr-spec with parameters")]
    Malformed,
    /// The URI does not parse.
    #[error("a Contact URI does not parse")]
    BadUri,
    /// The URI parses but is not a SIP or SIPS URI.
    #[error("a Contact URI is not a SIP or SIPS URI")]
    BadScheme,
    /// `q` is not `0`..`1` with at most three decimals.
    #[error("a Contact q is not a qvalue (0 to 1, at most three decimals)")]
    BadQ,
    /// The `expires` parameter is not delta-seconds.
    #[error("a Contact expires parameter is not delta-seconds")]
    BadExpiresParam,
    /// `reg-id` is not a number in 1..=2^31-1.
    #[error("a Contact reg-id is not in 1..=2^31-1")]
    BadRegId,
    /// `+sip.instance` is not a quoted `<...>` of URI characters.
    #[error("a Contact +sip.instance is not a quoted <instance-val>")]
    BadInstance,
    /// `+g.3gpp.icsi-ref` is not one quoted list (RFC 3840 feature-param).
    #[error("a Contact +g.3gpp.icsi-ref is not a quoted string")]
    BadIcsiRef,
    /// `q`, `expires`, `reg-id` or `+sip.instance` given twice in a value.
    #[error("a Contact value repeats q, expires, reg-id or +sip.instance")]
    DuplicateParam,
    /// `*` together with another value, or twice (RFC 3261 §10.3 step 6).
    #[error("Contact * is not alone")]
    StarMixed,
    /// `*` without `Expires: 0` (RFC 3261 §10.3 step 6).
    #[error("Contact * without Expires: 0")]
    StarExpires,
    /// More than [`MAX_REGISTER_CONTACTS`] values.
    #[error("more than {MAX_REGISTER_CONTACTS} Contact values")]
    TooMany,
    /// A `reg-id` in a REGISTER that has more than one value with a
    /// non-zero expiration (RFC 5626 §6).
    #[error("a reg-id with more than one Contact of non-zero expiration")]
    RegIdMultiple,
    /// The Expires header is not delta-seconds.
    #[error("the Expires header is not delta-seconds")]
    BadExpires,
    /// More than one Expires header.
    #[error("more than one Expires header")]
    MultipleExpires,
}

impl ContactError {
    /// The reason for `400 Bad Request - <reason>`: Title Case, short.
    pub fn reason(&self) -> &'static str {
        match self {
            ContactError::Malformed => "Bad Contact",
            ContactError::BadUri => "Bad Contact URI",
            ContactError::BadScheme => "Bad Contact URI Scheme",
            ContactError::BadQ => "Bad Contact Q",
            ContactError::BadExpiresParam => "Bad Contact Expires",
            ContactError::BadRegId => "Bad Contact Reg-Id",
            ContactError::BadInstance => "Bad Contact Instance",
            ContactError::BadIcsiRef => "Bad Contact ICSI",
            ContactError::DuplicateParam => "Duplicate Contact Param",
            ContactError::StarMixed => "Star Contact Mixed",
            ContactError::StarExpires => "Star Contact Needs Expires 0",
            ContactError::TooMany => "Too Many Contacts",
            ContactError::RegIdMultiple => "Reg-Id With Several Contacts",
            ContactError::BadExpires => "Bad Expires",
            ContactError::MultipleExpires => "Multiple Expires",
        }
    }
}

/// The Contact values of a REGISTER (every Contact / `m` line, each
/// comma-separated value), checked. The Expires header is read too, and
/// its defect returned, when the answer depends on it: for `*` (which
/// needs `Expires: 0`) and for a `reg-id` (RFC 5626 §6 counts the values
/// of non-zero expiration).
pub fn register_contacts(buf: &[u8], m: &Message) -> Result<RegisterContacts, ContactError> {
    let mut list: Vec<ContactValue> = Vec::new();
    let mut star = false;
    for line in header_lines(buf, m.headers).filter(|h| h.kind == Header::Contact) {
        let mut any = false;
        for v in split_values(buf, line.value) {
            any = true;
            if v.get(buf) == b"*" {
                if star || !list.is_empty() {
                    return Err(ContactError::StarMixed);
                }
                star = true;
                continue;
            }
            if star {
                return Err(ContactError::StarMixed);
            }
            if list.len() == MAX_REGISTER_CONTACTS {
                return Err(ContactError::TooMany);
            }
            list.push(contact_value(buf, v)?);
        }
        if !any {
            return Err(ContactError::Malformed);
        }
    }
    debug_assert!(list.len() <= MAX_REGISTER_CONTACTS);
    if star {
        return match expires_header(buf, m)? {
            Some(0) => Ok(RegisterContacts::Star),
            _ => Err(ContactError::StarExpires),
        };
    }
    if list.is_empty() {
        return Ok(RegisterContacts::None);
    }
    if list.iter().any(|c| c.reg_id.is_some()) {
        reg_id_alone(&list, expires_header(buf, m)?)?;
    }
    Ok(RegisterContacts::List(list))
}

/// RFC 5626 §6: a reg-id registers one flow, so a REGISTER that holds one
/// may add only one binding (it may remove others, with expiration 0).
/// Without an `expires` parameter a value takes the Expires header's, and
/// without either the registrar's default, which is not zero.
fn reg_id_alone(list: &[ContactValue], header: Option<u32>) -> Result<(), ContactError> {
    let nonzero = |c: &&ContactValue| c.expires.or(header) != Some(0);
    let adding = list.iter().filter(nonzero).count();
    if adding > 1 && list.iter().filter(nonzero).any(|c| c.reg_id.is_some()) {
        return Err(ContactError::RegIdMultiple);
    }
    Ok(())
}

/// The comma-separated values of a header value, trimmed, empty ones
/// included (so that `a,,b`, `a,` and an empty header can be refused:
/// RFC 3261 `contact-param *(COMMA contact-param)`). Quotes and `<>` are
/// opaque; a value whose quote or `<` is not closed runs to the end.
fn split_values(buf: &[u8], span: Span) -> impl Iterator<Item = Span> + '_ {
    let end = (span.end as usize).min(buf.len());
    let mut pos = Some((span.start as usize).min(end));
    std::iter::from_fn(move || {
        let start = pos?;
        let stop = find_unquoted(buf, start, end, b',').unwrap_or(end);
        pos = (stop < end).then_some(stop + 1);
        Some(trim(buf, Span::new(start, stop)))
    })
}

/// One Contact value (not `*`): its grammar, URI and parameters.
fn contact_value(buf: &[u8], value: Span) -> Result<ContactValue, ContactError> {
    if value.is_empty() {
        return Err(ContactError::Malformed);
    }
    let Some((uri, _)) = checked_name_addr(buf, value) else {
        // Tell a URI that does not parse from a value that is no
        // name-addr at all.
        return Err(match name_addr(buf, value).0 {
            Some(u) if looks_like_uri(u.get(buf)) && uri::parse(buf, u).is_none() => {
                ContactError::BadUri
            }
            _ => ContactError::Malformed,
        });
    };
    match uri::parse(buf, uri).map(|u| u.scheme) {
        Some(Scheme::Sip | Scheme::Sips) => {}
        Some(_) => return Err(ContactError::BadScheme),
        None => return Err(ContactError::BadUri),
    }
    debug_assert!(value.start <= uri.start && uri.end <= value.end);
    let v = value.get(buf);
    let rel_uri_end = (uri.end - value.start) as usize;
    // After a name-addr's `>`, or right after a bare addr-spec.
    let after = rel_uri_end + usize::from(v.get(rel_uri_end) == Some(&b'>'));
    let first = skip_lws(v, after);
    let mut c = ContactValue {
        value,
        uri,
        expires: None,
        q: None,
        instance: None,
        reg_id: None,
        cpm: CpmServices::default(),
        params: value.sub(first, v.len()),
    };
    let mut err = None;
    let ok = generic_params(v, first, super::params::TOKEN, |(n0, n1), val| {
        let r = contact_param(v, value, &mut c, (n0, n1), val);
        err = r.err();
        err.is_none()
    });
    if let Some(e) = err {
        return Err(e);
    }
    if !ok {
        // checked_name_addr walked the same parameters and took them.
        debug_assert!(false, "parameters accepted once, refused after");
        return Err(ContactError::Malformed);
    }
    // RFC 5626 §6: a reg-id without an instance-id is ignored.
    if c.instance.is_none() {
        c.reg_id = None;
    }
    Ok(c)
}

/// Does `s` start like a URI (a letter, then a scheme's bytes up to a
/// `:`)? What an unterminated quote leaves behind does not.
fn looks_like_uri(s: &[u8]) -> bool {
    let colon = s.iter().position(|b| *b == b':').unwrap_or(0);
    colon > 0
        && s[0].is_ascii_alphabetic()
        && s[..colon]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b))
}

/// Read one parameter of a Contact value `v` (at `value` in the buffer)
/// into `c`; names and values are offsets into `v`.
fn contact_param(
    v: &[u8],
    value: Span,
    c: &mut ContactValue,
    (n0, n1): (usize, usize),
    val: Option<(usize, usize)>,
) -> Result<(), ContactError> {
    let name = &v[n0..n1];
    let text = val.map(|(a, b)| &v[a..b]);
    let once = |seen: bool| {
        if seen {
            Err(ContactError::DuplicateParam)
        } else {
            Ok(())
        }
    };
    if name.eq_ignore_ascii_case(b"q") {
        once(c.q.is_some())?;
        c.q = Some(text.and_then(qvalue).ok_or(ContactError::BadQ)?);
    } else if name.eq_ignore_ascii_case(b"expires") {
        once(c.expires.is_some())?;
        c.expires = Some(
            text.and_then(delta_seconds)
                .ok_or(ContactError::BadExpiresParam)?,
        );
    } else if name.eq_ignore_ascii_case(b"reg-id") {
        once(c.reg_id.is_some())?;
        c.reg_id = Some(text.and_then(reg_id).ok_or(ContactError::BadRegId)?);
    } else if name.eq_ignore_ascii_case(b"+sip.instance") {
        once(c.instance.is_some())?;
        let (a, b) = val.ok_or(ContactError::BadInstance)?;
        if !is_instance(&v[a..b]) {
            return Err(ContactError::BadInstance);
        }
        c.instance = Some(value.sub(a + 1, b - 1));
    } else if name.eq_ignore_ascii_case(b"+g.3gpp.icsi-ref") {
        // The parameter alone, so that nothing else in the value is read
        // as one (a URI parameter, another parameter's quoted value).
        let end = val.map_or(n1, |(_, b)| b);
        let bits = checked_cpm_services(&v[n0..end], true).ok_or(ContactError::BadIcsiRef)?;
        c.cpm = CpmServices(c.cpm.0 | bits.0);
    }
    Ok(())
}

/// RFC 3261 `qvalue` (`0[.ddd]` or `1[.000]`) in thousandths.
pub(crate) fn qvalue(s: &[u8]) -> Option<u16> {
    let (int, frac) = match s.iter().position(|b| *b == b'.') {
        Some(dot) => (&s[..dot], Some(&s[dot + 1..])),
        None => (s, None),
    };
    let whole = match int {
        b"0" => 0u16,
        b"1" => 1000,
        _ => return None,
    };
    let Some(frac) = frac else {
        return Some(whole);
    };
    if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // `0.5` is 500, `0.05` is 50: the digits padded to three.
    let mut milli = 0u16;
    for k in 0..3 {
        milli = milli * 10 + frac.get(k).map_or(0, |d| u16::from(d - b'0'));
    }
    (whole == 0 || milli == 0).then_some(whole + milli)
}

/// RFC 3261 `delta-seconds` (`1*DIGIT`), 2^32-1 for anything larger
/// (§10.2.1.1 allows that reading).
pub fn delta_seconds(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = s.iter().fold(0u64, |a, d| {
        (a * 10 + u64::from(d - b'0')).min(u64::from(u32::MAX))
    });
    Some(u32::try_from(v).unwrap_or(u32::MAX))
}

/// RFC 5626 `reg-id` value: `1*DIGIT`, 1 to 2^31-1.
fn reg_id(s: &[u8]) -> Option<u32> {
    let v = delta_seconds(s)?;
    (1..=MAX_REG_ID).contains(&v).then_some(v)
}

/// RFC 5626 `+sip.instance` value: `DQUOTE "<" instance-val ">" DQUOTE`,
/// `instance-val = 1*uric`.
fn is_instance(q: &[u8]) -> bool {
    let Some(inner) = q.strip_prefix(b"\"<").and_then(|r| r.strip_suffix(b">\"")) else {
        return false;
    };
    !inner.is_empty() && run_escaped(inner, 0, URIC) == Some(inner.len())
}

/// The Expires header of a REGISTER: `None` without one, its
/// delta-seconds (2^32-1 for anything larger) with one.
pub fn expires_header(buf: &[u8], m: &Message) -> Result<Option<u32>, ContactError> {
    let mut found = None;
    for line in header_lines(buf, m.headers) {
        if !line.name.get(buf).eq_ignore_ascii_case(b"expires") {
            continue;
        }
        if found.is_some() {
            return Err(ContactError::MultipleExpires);
        }
        found = Some(delta_seconds(line.value.get(buf)).ok_or(ContactError::BadExpires)?);
    }
    Ok(found)
}

/// RFC 5626 §6: does the first Path value's URI carry the `ob` parameter
/// (the first edge proxy supports outbound)? False without a Path or when
/// the first value does not parse.
pub fn path_has_outbound(buf: &[u8], m: &Message) -> bool {
    let Some(first) = header_values(buf, m, b"Path").next() else {
        return false;
    };
    let Some(u) = checked_name_addr(buf, first).and_then(|(u, _)| uri::parse(buf, u)) else {
        return false;
    };
    params(buf, u.params).any(|p| p.name.get(buf).eq_ignore_ascii_case(b"ob"))
}

/// Does a `Supported` (or `k`) header list the `outbound` option tag?
pub fn supports_outbound(buf: &[u8], m: &Message) -> bool {
    header_values(buf, m, b"Supported").any(|v| v.get(buf).eq_ignore_ascii_case(b"outbound"))
}

/// The comma-separated values (trimmed, empty ones skipped) of every
/// header line named `name` (case-insensitive; the compact form of a name
/// that has one matches too, e.g. `k` for `Supported`).
pub fn header_values<'a>(
    buf: &'a [u8],
    m: &Message,
    name: &'a [u8],
) -> impl Iterator<Item = Span> + 'a {
    let compact = compact_form(name);
    header_lines(buf, m.headers)
        .filter(move |h| {
            let n = h.name.get(buf);
            n.eq_ignore_ascii_case(name)
                || (n.len() == 1 && compact.is_some_and(|c| n[0].eq_ignore_ascii_case(&c)))
        })
        .flat_map(move |h| super::params::values(buf, h.value))
}

/// The compact form of a header name (RFC 3261 §7.3.3 and the IANA SIP
/// header registry), if it has one.
fn compact_form(name: &[u8]) -> Option<u8> {
    const FORMS: [(&[u8], u8); 20] = [
        (b"accept-contact", b'a'),
        (b"referred-by", b'b'),
        (b"content-type", b'c'),
        (b"request-disposition", b'd'),
        (b"content-encoding", b'e'),
        (b"from", b'f'),
        (b"call-id", b'i'),
        (b"reject-contact", b'j'),
        (b"supported", b'k'),
        (b"content-length", b'l'),
        (b"contact", b'm'),
        (b"identity-info", b'n'),
        (b"event", b'o'),
        (b"refer-to", b'r'),
        (b"subject", b's'),
        (b"to", b't'),
        (b"allow-events", b'u'),
        (b"via", b'v'),
        (b"session-expires", b'x'),
        (b"identity", b'y'),
    ];
    FORMS
        .iter()
        .find(|(long, _)| long.eq_ignore_ascii_case(name))
        .map(|(_, c)| *c)
}

/// The contact-extension parameters of `c` (everything but `q` and
/// `expires`, which RFC 3261 defines) as (name, value) spans: what RFC
/// 3680 §5.1 carries as `unknown-param` (feature tags, `+sip.instance`,
/// `reg-id`). Values are as written, quotes included.
pub fn extension_params<'a>(
    buf: &'a [u8],
    c: &ContactValue,
) -> impl Iterator<Item = (Span, Option<Span>)> + 'a {
    params(buf, c.params)
        .filter(move |p| {
            let n = p.name.get(buf);
            !n.eq_ignore_ascii_case(b"q") && !n.eq_ignore_ascii_case(b"expires")
        })
        .map(|p| (p.name, p.value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::scan::scan;

    /// A REGISTER from alice's UA with `headers` (each ending CRLF).
    fn register(headers: &str) -> Vec<u8> {
        format!(
            "REGISTER sip:example.com SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKnashds7\r\n\
             Max-Forwards: 70\r\n\
             To: <sip:alice@example.com>\r\n\
             From: <sip:alice@example.com>;tag=456248\r\n\
             Call-ID: 843817637684230@998sdasdh09\r\n\
             CSeq: 1826 REGISTER\r\n\
             {headers}\
             Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn contacts(headers: &str) -> (Vec<u8>, Result<RegisterContacts, ContactError>) {
        let buf = register(headers);
        let m = scan(&buf);
        let r = register_contacts(&buf, &m);
        (buf, r)
    }

    fn list(headers: &str) -> (Vec<u8>, Vec<ContactValue>) {
        match contacts(headers) {
            (buf, Ok(RegisterContacts::List(l))) => (buf, l),
            (_, other) => panic!("{other:?} for {headers}"),
        }
    }

    fn refused(headers: &str) -> ContactError {
        match contacts(headers).1 {
            Err(e) => e,
            Ok(r) => panic!("accepted {r:?}: {headers}"),
        }
    }

    fn s(buf: &[u8], span: Span) -> &str {
        std::str::from_utf8(span.get(buf)).unwrap()
    }

    const RCS: &str = "Contact: <sip:alice@192.0.2.1:5060;transport=udp>;+sip.instance=\"<urn:gsma:imei:35-209900-176148-1>\";reg-id=1;+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session\";expires=600;q=0.5\r\n";

    #[test]
    fn an_rcs_register() {
        let (buf, l) = list(&format!("Supported: path, outbound\r\n{RCS}"));
        assert_eq!(scan(&buf).defect, None);
        assert_eq!(l.len(), 1);
        let c = l[0];
        assert_eq!(s(&buf, c.uri), "sip:alice@192.0.2.1:5060;transport=udp");
        assert_eq!(s(&buf, c.value), &RCS[9..RCS.len() - 2]);
        assert_eq!(c.expires, Some(600));
        assert_eq!(c.q, Some(500));
        assert_eq!(
            s(&buf, c.instance.unwrap()),
            "<urn:gsma:imei:35-209900-176148-1>"
        );
        assert_eq!(c.reg_id, Some(1));
        assert_eq!(c.cpm, CpmServices(CpmServices::SESSION));
        assert!(s(&buf, c.params).starts_with(";+sip.instance=\"<urn:gsma"));
        assert!(s(&buf, c.params).ends_with(";expires=600;q=0.5"));
        let m = scan(&buf);
        assert!(supports_outbound(&buf, &m));
        assert!(!path_has_outbound(&buf, &m));
        assert_eq!(expires_header(&buf, &m), Ok(None));
        let ext: Vec<(&str, Option<&str>)> = extension_params(&buf, &c)
            .map(|(n, v)| (s(&buf, n), v.map(|v| s(&buf, v))))
            .collect();
        assert_eq!(
            ext,
            vec![
                (
                    "+sip.instance",
                    Some("\"<urn:gsma:imei:35-209900-176148-1>\"")
                ),
                ("reg-id", Some("1")),
                (
                    "+g.3gpp.icsi-ref",
                    Some("\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session\"")
                ),
            ]
        );
    }

    /// RFC 5626 §9.2 message #9, as sent through EP1 (which added the Path).
    #[test]
    fn rfc5626_outbound_register() {
        let (buf, l) = list(
            "Supported: path, outbound\r\n\
             Path: <sip:VskztcQ/S8p4WPbOnHbuyh5iJvJIW3ib@ep1.example.com;lr;ob>\r\n\
             Contact: <sip:bob@192.0.2.2;transport=tcp>;reg-id=1\r\n \
             ;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>\"\r\n",
        );
        let m = scan(&buf);
        assert_eq!(m.defect, None);
        assert!(path_has_outbound(&buf, &m) && supports_outbound(&buf, &m));
        assert_eq!(l[0].reg_id, Some(1));
        assert_eq!(
            s(&buf, l[0].instance.unwrap()),
            "<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"
        );
        assert_eq!(l[0].expires, None);
        // A Path without `ob` first, `ob` only in a later one.
        let buf = register(
            "k: outbound\r\nPath: <sip:p1.example.com;lr>, <sip:p2.example.com;lr;ob>\r\n",
        );
        let m = scan(&buf);
        assert!(supports_outbound(&buf, &m) && !path_has_outbound(&buf, &m));
        let buf = register("Supported: path\r\nPath: <sip:p1.example.com;lr;OB>\r\n");
        let m = scan(&buf);
        assert!(!supports_outbound(&buf, &m) && path_has_outbound(&buf, &m));
    }

    /// RFC 3261 §10.2.1: several bindings, compact form, bare addr-spec
    /// (whose parameters are header parameters, §20.10), display names.
    #[test]
    fn several_lines_and_values() {
        let (buf, l) = list(
            "Contact: \"Mr. Watson\" <sip:watson@worcester.example.com>;q=0.7;expires=3600,\r\n \
             \"Mr. Watson\" <sips:watson@bell.example.com> ;q=0.1\r\n\
             m: sip:carol@cube2214a.chicago.com;transport=udp;expires=0\r\n\
             m: Carol <sip:carol@192.0.2.4>;q=1.000;+sip.instance=\"<urn:uuid:1>\"\r\n\
             Expires: 7200\r\n",
        );
        let m = scan(&buf);
        assert_eq!(m.defect, None);
        let uris: Vec<&str> = l.iter().map(|c| s(&buf, c.uri)).collect();
        assert_eq!(
            uris,
            vec![
                "sip:watson@worcester.example.com",
                "sips:watson@bell.example.com",
                "sip:carol@cube2214a.chicago.com",
                "sip:carol@192.0.2.4",
            ]
        );
        assert_eq!(
            l.iter().map(|c| (c.q, c.expires)).collect::<Vec<_>>(),
            vec![
                (Some(700), Some(3600)),
                (Some(100), None),
                (None, Some(0)),
                (Some(1000), None)
            ]
        );
        assert_eq!(s(&buf, l[1].params), ";q=0.1");
        assert_eq!(s(&buf, l[2].params), ";transport=udp;expires=0");
        // Three bindings of non-zero expiration, one with a reg-id.
        assert_eq!(
            refused(
                "Contact: <sip:a@192.0.2.1>;expires=60, <sip:b@192.0.2.1>;reg-id=1;+sip.instance=\"<urn:uuid:1>\"\r\n"
            ),
            ContactError::RegIdMultiple
        );
        assert_eq!(expires_header(&buf, &m), Ok(Some(7200)));
    }

    #[test]
    fn reg_id_rules_of_rfc5626() {
        // Without an instance the reg-id is ignored, whatever else is there.
        let (_, l) = list("Contact: <sip:a@192.0.2.1>;reg-id=1, <sip:b@192.0.2.1>\r\n");
        assert_eq!(l[0].reg_id, None);
        // Other values may remove bindings (expiration 0, by parameter or
        // by the Expires header).
        let inst = ";+sip.instance=\"<urn:uuid:1>\"";
        let (_, l) = list(&format!(
            "Contact: <sip:a@192.0.2.1>;reg-id=1{inst}, <sip:old@192.0.2.9>;expires=0\r\n"
        ));
        assert_eq!((l[0].reg_id, l.len()), (Some(1), 2));
        let (_, l) = list(&format!(
            "Expires: 0\r\nContact: <sip:a@192.0.2.1>;reg-id=1{inst}, <sip:old@192.0.2.9>\r\n"
        ));
        assert_eq!(l.len(), 2);
        assert_eq!(
            refused(&format!(
                "Contact: <sip:a@192.0.2.1>;reg-id=1{inst}, <sip:old@192.0.2.9>\r\n"
            )),
            ContactError::RegIdMultiple
        );
        assert_eq!(
            refused(&format!(
                "Expires: 60\r\nContact: <sip:a@192.0.2.1>;reg-id=1{inst}, <sip:old@192.0.2.9>;expires=5\r\n"
            )),
            ContactError::RegIdMultiple
        );
        // The Expires header's defect is the answer when it matters.
        assert_eq!(
            refused(&format!(
                "Expires: soon\r\nContact: <sip:a@192.0.2.1>;reg-id=1{inst}\r\n"
            )),
            ContactError::BadExpires
        );
        for (v, want) in [
            ("1", Some(1)),
            ("2147483647", Some(MAX_REG_ID)),
            ("007", Some(7)),
        ] {
            let (_, l) = list(&format!("Contact: <sip:a@192.0.2.1>;reg-id={v}{inst}\r\n"));
            assert_eq!(l[0].reg_id, want, "{v}");
        }
        for v in ["0", "2147483648", "99999999999", "-1", "1a", "\"1\""] {
            assert_eq!(
                refused(&format!("Contact: <sip:a@192.0.2.1>;reg-id={v}{inst}\r\n")),
                ContactError::BadRegId,
                "{v}"
            );
        }
        assert_eq!(
            refused(&format!("Contact: <sip:a@192.0.2.1>;reg-id{inst}\r\n")),
            ContactError::BadRegId
        );
    }

    #[test]
    fn star_and_none() {
        assert_eq!(contacts("Expires: 0\r\n").1, Ok(RegisterContacts::None));
        assert_eq!(
            contacts("Contact: *\r\nExpires: 0\r\n").1,
            Ok(RegisterContacts::Star)
        );
        assert_eq!(
            contacts("m:  * \r\nExpires: 0\r\n").1,
            Ok(RegisterContacts::Star)
        );
        assert_eq!(refused("Contact: *\r\n"), ContactError::StarExpires);
        assert_eq!(
            refused("Contact: *\r\nExpires: 60\r\n"),
            ContactError::StarExpires
        );
        assert_eq!(
            refused("Contact: *\r\nExpires: x\r\n"),
            ContactError::BadExpires
        );
        for h in [
            "Contact: *, <sip:a@192.0.2.1>\r\nExpires: 0\r\n",
            "Contact: <sip:a@192.0.2.1>, *\r\nExpires: 0\r\n",
            "Contact: *\r\nContact: *\r\nExpires: 0\r\n",
            "Contact: <sip:a@192.0.2.1>\r\nm: *\r\nExpires: 0\r\n",
        ] {
            assert_eq!(refused(h), ContactError::StarMixed, "{h}");
        }
        // `*` takes no parameters.
        assert_eq!(
            refused("Contact: *;expires=0\r\nExpires: 0\r\n"),
            ContactError::Malformed
        );
    }

    #[test]
    fn too_many_contacts() {
        let values = |n: usize| {
            (0..n)
                .map(|i| format!("<sip:u{i}@192.0.2.1>"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (_, l) = list(&format!("Contact: {}\r\n", values(MAX_REGISTER_CONTACTS)));
        assert_eq!(l.len(), MAX_REGISTER_CONTACTS);
        assert_eq!(
            refused(&format!(
                "Contact: {}\r\n",
                values(MAX_REGISTER_CONTACTS + 1)
            )),
            ContactError::TooMany
        );
        // Spread over lines.
        let lines: String = (0..=MAX_REGISTER_CONTACTS)
            .map(|i| format!("m: <sip:u{i}@192.0.2.1>\r\n"))
            .collect();
        assert_eq!(refused(&lines), ContactError::TooMany);
    }

    #[test]
    fn q_values() {
        for (q, want) in [
            ("0", 0),
            ("0.", 0),
            ("0.0", 0),
            ("0.001", 1),
            ("0.05", 50),
            ("0.5", 500),
            ("0.999", 999),
            ("1", 1000),
            ("1.", 1000),
            ("1.0", 1000),
            ("1.000", 1000),
        ] {
            let (_, l) = list(&format!("Contact: <sip:a@192.0.2.1>;q={q}\r\n"));
            assert_eq!(l[0].q, Some(want), "{q}");
        }
        for q in [
            "", "1.001", "1.5", "2", "0.1234", ".5", "00.5", "-0", "0,5", "\"0.5\"", "0.5x", "01",
        ] {
            let h = if q.is_empty() {
                "Contact: <sip:a@192.0.2.1>;q\r\n".to_string()
            } else {
                format!("Contact: <sip:a@192.0.2.1>;q={q}\r\n")
            };
            let e = refused(&h);
            // `0,5` splits into `<..>;q=0` and a value `5` that is no URI.
            assert!(
                e == ContactError::BadQ || (q == "0,5" && e == ContactError::Malformed),
                "{q}: {e:?}"
            );
        }
    }

    #[test]
    fn expires_values() {
        for (e, want) in [
            ("0", 0),
            ("600", 600),
            ("0000600", 600),
            ("4294967295", u32::MAX),
            ("4294967296", u32::MAX),
            ("99999999999999999999999999", u32::MAX),
        ] {
            let (buf, l) = list(&format!(
                "Contact: <sip:a@192.0.2.1>;expires={e}\r\nExpires: {e}\r\n"
            ));
            assert_eq!(l[0].expires, Some(want), "{e}");
            assert_eq!(expires_header(&buf, &scan(&buf)), Ok(Some(want)), "{e}");
        }
        for e in [
            "",
            "-1",
            "1.5",
            "60s",
            "\"Thu, 01 Dec 2094 16:00:00 GMT\"",
            "0x10",
        ] {
            let h = if e.is_empty() {
                "Contact: <sip:a@192.0.2.1>;expires\r\n".to_string()
            } else {
                format!("Contact: <sip:a@192.0.2.1>;expires={e}\r\n")
            };
            assert_eq!(refused(&h), ContactError::BadExpiresParam, "{e}");
        }
        for e in [
            "",
            "-1",
            "1.5",
            "60 s",
            "Thu, 01 Dec 2094 16:00:00 GMT",
            "60, 70",
        ] {
            let buf = register(&format!("Expires: {e}\r\n"));
            assert_eq!(
                expires_header(&buf, &scan(&buf)),
                Err(ContactError::BadExpires),
                "{e}"
            );
        }
        let buf = register("Expires: 60\r\nexpires: 60\r\n");
        assert_eq!(
            expires_header(&buf, &scan(&buf)),
            Err(ContactError::MultipleExpires)
        );
    }

    #[test]
    fn uris_and_grammar() {
        for (h, want) in [
            ("Contact: <tel:+15551234>\r\n", ContactError::BadScheme),
            (
                "Contact: <mailto:a@example.com>\r\n",
                ContactError::BadScheme,
            ),
            ("Contact: <sip:a@>\r\n", ContactError::BadUri),
            (
                "Contact: <sip:a@example.com:99999>\r\n",
                ContactError::BadUri,
            ),
            ("Contact: sip:a@exa mple.com\r\n", ContactError::BadUri),
            ("Contact: <sip:a@192.0.2.1\r\n", ContactError::Malformed),
            (
                "Contact: \"Alice <sip:a@192.0.2.1>\r\n",
                ContactError::Malformed,
            ),
            (
                "Contact: <sip:a@192.0.2.1>;;q=1\r\n",
                ContactError::Malformed,
            ),
            ("Contact: <sip:a@192.0.2.1>;\r\n", ContactError::Malformed),
            (
                "Contact: <sip:a@192.0.2.1>, , <sip:b@192.0.2.1>\r\n",
                ContactError::Malformed,
            ),
            (
                "Contact: <sip:a@192.0.2.1>junk\r\n",
                ContactError::Malformed,
            ),
            ("Contact:\r\n", ContactError::Malformed),
            ("Contact: alice\r\n", ContactError::Malformed),
            ("Contact: <sip:a@192.0.2.1>,\r\n", ContactError::Malformed),
            ("Contact: ,<sip:a@192.0.2.1>\r\n", ContactError::Malformed),
        ] {
            assert_eq!(refused(h), want, "{h}");
        }
        // Parameters inside <> are URI parameters, not header parameters.
        let (buf, l) = list("Contact: <sip:a@192.0.2.1;expires=5;q=0.1>\r\n");
        assert_eq!((l[0].expires, l[0].q), (None, None));
        assert!(l[0].params.is_empty());
        assert_eq!(s(&buf, l[0].uri), "sip:a@192.0.2.1;expires=5;q=0.1");
    }

    #[test]
    fn instance_and_feature_tags() {
        let base = "Contact: <sip:a@192.0.2.1>";
        for bad in [
            ";+sip.instance",
            ";+sip.instance=\"urn:uuid:1\"",
            ";+sip.instance=\"<>\"",
            ";+sip.instance=\"<urn:uuid 1>\"",
            ";+sip.instance=\"<urn:uuid:%zz>\"",
            ";+sip.instance=\"<urn:\\\"x>\"",
        ] {
            assert_eq!(
                refused(&format!("{base}{bad}\r\n")),
                ContactError::BadInstance,
                "{bad}"
            );
        }
        for dup in [
            ";q=0.1;q=0.2",
            ";expires=1;EXPIRES=1",
            ";reg-id=1;reg-id=2",
            ";+sip.instance=\"<urn:uuid:1>\";+SIP.INSTANCE=\"<urn:uuid:1>\"",
        ] {
            assert_eq!(
                refused(&format!("{base}{dup}\r\n")),
                ContactError::DuplicateParam,
                "{dup}"
            );
        }
        // Not a generic-param at all: `<` starts no token.
        assert_eq!(
            refused(&format!("{base};+sip.instance=<urn:uuid:1>\r\n")),
            ContactError::Malformed
        );
        assert_eq!(
            refused(&format!(
                "{base};+g.3gpp.icsi-ref=urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.msg\r\n"
            )),
            ContactError::BadIcsiRef
        );
        // Two services in one list, one more in a second parameter; an
        // ICSI in a URI parameter is not a feature tag.
        let (_, l) = list(
            "Contact: <sip:a@192.0.2.1;+g.3gpp.icsi-ref=urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.systemmsg>\
             ;+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.msg,urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.largemsg\"\
             ;+G.3GPP.ICSI-REF=\"urn:urn-7:3gpp-service.ims.icsi.oma.cpm.filetransfer\";+g.oma.sip-im\r\n"
        );
        assert_eq!(
            l[0].cpm,
            CpmServices(CpmServices::MSG | CpmServices::LARGEMSG | CpmServices::FILETRANSFER)
        );
    }

    #[test]
    fn header_values_and_compact_forms() {
        let buf = register("Supported: path\r\nk: gruu , outbound\r\nX-Other: a, b\r\n");
        let m = scan(&buf);
        let got: Vec<&str> = header_values(&buf, &m, b"supported")
            .map(|v| s(&buf, v))
            .collect();
        assert_eq!(got, vec!["path", "gruu", "outbound"]);
        let got: Vec<&str> = header_values(&buf, &m, b"X-OTHER")
            .map(|v| s(&buf, v))
            .collect();
        assert_eq!(got, vec!["a", "b"]);
        assert_eq!(header_values(&buf, &m, b"Path").count(), 0);
        assert_eq!(compact_form(b"Contact"), Some(b'm'));
        assert_eq!(compact_form(b"Path"), None);
    }

    #[test]
    fn reasons_are_short_title_case() {
        let all = [
            ContactError::Malformed,
            ContactError::BadUri,
            ContactError::BadScheme,
            ContactError::BadQ,
            ContactError::BadExpiresParam,
            ContactError::BadRegId,
            ContactError::BadInstance,
            ContactError::BadIcsiRef,
            ContactError::DuplicateParam,
            ContactError::StarMixed,
            ContactError::StarExpires,
            ContactError::TooMany,
            ContactError::RegIdMultiple,
            ContactError::BadExpires,
            ContactError::MultipleExpires,
        ];
        for (i, e) in all.iter().enumerate() {
            let r = e.reason();
            assert!(r.len() <= 40 && r.bytes().all(|b| b == b' ' || b.is_ascii_graphic()));
            assert!(
                r.split(' ')
                    .all(|w| w.as_bytes()[0].is_ascii_uppercase()
                        || w.as_bytes()[0].is_ascii_digit()),
                "{r}"
            );
            assert!(all[..i].iter().all(|o| o.reason() != r), "{r}");
        }
    }

    /// Every span of an accepted list lies in its value, inside the
    /// headers, for any mutation of a realistic REGISTER.
    #[test]
    fn mutated_registers_are_refused_or_sound() {
        let seed = register(&format!(
            "Supported: path, outbound\r\nExpires: 600\r\n{RCS}m: Bob <sip:bob@192.0.2.3>;q=0.1;expires=0\r\n"
        ));
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let m = scan(&seed);
        assert!(
            matches!(register_contacts(&seed, &m), Ok(RegisterContacts::List(l)) if l.len() == 2)
        );
        let mut accepted = 0;
        for _ in 0..10_000 {
            let mut buf = seed.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() as usize) % buf.len();
                let alphabet = b"<>\";,=*: \r\n0.1a%";
                let b = alphabet[(next() as usize) % alphabet.len()];
                match next() % 3 {
                    0 => buf[i] = b,
                    1 => buf.insert(i, b),
                    _ => {
                        buf.remove(i);
                    }
                }
            }
            let m = scan(&buf);
            let _ = expires_header(&buf, &m);
            let _ = (path_has_outbound(&buf, &m), supports_outbound(&buf, &m));
            if let Ok(RegisterContacts::List(l)) = register_contacts(&buf, &m) {
                accepted += 1;
                assert!(!l.is_empty() && l.len() <= MAX_REGISTER_CONTACTS);
                for c in &l {
                    let inside = |x: Span| c.value.start <= x.start && x.end <= c.value.end;
                    assert!(m.headers.start <= c.value.start && c.value.end <= m.headers.end);
                    assert!(inside(c.uri) && inside(c.params));
                    assert!(c.instance.is_none_or(inside));
                    assert!(c.q.is_none_or(|q| q <= 1000));
                    assert!(c.reg_id.is_none_or(|r| (1..=MAX_REG_ID).contains(&r)));
                    assert!(c.reg_id.is_none() || c.instance.is_some());
                    let u = uri::parse(&buf, c.uri).unwrap();
                    assert!(matches!(u.scheme, Scheme::Sip | Scheme::Sips));
                }
            }
        }
        // Mutations that miss the Contact values leave them readable.
        assert!(accepted > 1_000, "{accepted}");
    }
}
