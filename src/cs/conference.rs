//! RFC 4575 conference state documents (`application/conference-info+xml`)
//! for the Controlling Function of a CPM group session (OMA CPM, RCS group
//! chat): the body of the NOTIFYs that tell each subscribed participant who
//! is in the group and how each one joined or left.
//!
//! This module owns one thing, [`write_full`]: a `state="full"` document
//! (the whole roster, what a first NOTIFY and a resynchronisation carry)
//! from a borrowed description of the conference. Partial documents
//! (`state="partial"`, RFC 4575 §4.6) are not written: a full one is always
//! correct, and the rosters of a group chat are small.
//!
//! Elements are written in the order of the RFC 4575 §6 schema, whose
//! types are `xs:sequence`s: `conference-description` (`subject`,
//! `maximum-user-count`), `conference-state` (`user-count`, `active`),
//! `users`; in a `user`, `display-text` then `endpoint`; in an `endpoint`,
//! `status`, `joining-method`, `disconnection-method`,
//! `disconnection-info` (§5.7).
//!
//! Invariants:
//! - [`write_full`] never panics, whatever the strings and numbers: it
//!   only appends to a `Vec`, and every caller string goes through one
//!   escaper;
//! - the output is well-formed XML 1.0 in UTF-8, whatever the strings:
//!   `&`, `<`, `>`, `"` and `'` are written as the predefined entities in
//!   text and in attribute values alike; TAB, LF and CR in an attribute
//!   value, and CR in text, are written as character references, so that
//!   a reader's attribute-value normalisation and end-of-line handling
//!   (XML 1.0 §3.3.3, §2.11) give back the caller's string;
//! - characters a document may not hold are replaced, never dropped and
//!   never refused (a roster NOTIFY must still go out if one display name
//!   is odd): the C0 controls other than TAB, LF and CR, and U+FFFE and
//!   U+FFFF (not XML 1.0 `Char`s), and also DEL and the C1 controls (which
//!   XML 1.0 §2.2 discourages and XML 1.1 forbids unescaped) all become
//!   U+FFFD REPLACEMENT CHARACTER;
//! - the work and the output are linear in the input: each input byte
//!   becomes at most six output bytes (`"` → `&quot;`). Bounding the number
//!   of participants and the length of their strings is the caller's job.

use std::io::Write as _;

/// An endpoint's `status` (RFC 4575 §5.7.3), the subset a Controlling
/// Function reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointStatus {
    /// Invited (or expected) but not yet reached.
    Pending,
    /// The focus is sending the INVITE.
    DialingOut,
    /// The invitee answered 180 Ringing.
    Alerting,
    /// In the session: the only status [`Conference`]'s `user-count`
    /// counts.
    Connected,
    /// The focus is ending the endpoint's session.
    Disconnecting,
    /// Not in the session; see [`Participant::disconnection`] for how.
    Disconnected,
}

impl EndpointStatus {
    /// The value as written in `<status>`.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointStatus::Pending => "pending",
            EndpointStatus::DialingOut => "dialing-out",
            EndpointStatus::Alerting => "alerting",
            EndpointStatus::Connected => "connected",
            EndpointStatus::Disconnecting => "disconnecting",
            EndpointStatus::Disconnected => "disconnected",
        }
    }
}

/// How an endpoint left: `disconnection-method` (RFC 4575 §5.7.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disconnection {
    /// It sent BYE (left the group).
    Departed,
    /// The focus removed it.
    Booted,
    /// The focus could not reach it (e.g. the INVITE got a 4xx-6xx).
    Failed,
    /// It answered busy.
    Busy,
}

impl Disconnection {
    /// The value as written in `<disconnection-method>`.
    pub fn as_str(self) -> &'static str {
        match self {
            Disconnection::Departed => "departed",
            Disconnection::Booted => "booted",
            Disconnection::Failed => "failed",
            Disconnection::Busy => "busy",
        }
    }
}

/// One user of the conference, with the one endpoint a CPM participant
/// has in it (RFC 4575 §5.6, §5.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Participant<'a> {
    /// The user's URI: the `entity` of both `<user>` and `<endpoint>`.
    pub entity: &'a str,
    /// The user's `display-text`, if known.
    pub display: Option<&'a str>,
    pub status: EndpointStatus,
    /// How the endpoint left. Written only when `status` is
    /// [`EndpointStatus::Disconnected`]: a participant who has joined again
    /// must not be reported as departed because the caller kept the old
    /// value.
    pub disconnection: Option<Disconnection>,
    /// Why it left, as the SIP status code and reason phrase of the answer
    /// that ended it (e.g. `(486, "Busy Here")` for a failed invitation).
    /// Written, with `disconnection`, as the `reason` of
    /// `disconnection-info` (free text in the schema): `486 Busy Here`.
    pub reason: Option<(u16, &'a str)>,
    /// `joining-method`: true for `dialed-out` (the focus invited it),
    /// false for `dialed-in` (it sent the INVITE, e.g. the originator).
    pub dialed_out: bool,
}

/// The conference as the Controlling Function sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conference<'a> {
    /// The focus URI (the group's conference URI): the document's `entity`.
    pub entity: &'a str,
    /// The group's subject, if any.
    pub subject: Option<&'a str>,
    /// `maximum-user-count`, if the group has a limit.
    pub max_users: Option<u32>,
    /// The document `version` (RFC 4575 §4.4): the caller increments it
    /// for each document sent in one subscription.
    pub version: u32,
    pub participants: &'a [Participant<'a>],
}

/// The RFC 4575 namespace, the default one of the document.
const NAMESPACE: &str = "urn:ietf:params:xml:ns:conference-info";

/// Append a `state="full"` conference-info document describing `c` to
/// `out` (which is not cleared). See the module doc for what is written
/// and how strings are escaped.
pub fn write_full(c: &Conference, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    out.extend_from_slice(b"<conference-info xmlns=\"");
    out.extend_from_slice(NAMESPACE.as_bytes());
    out.extend_from_slice(b"\" entity=\"");
    push_escaped(out, c.entity, Place::Attribute);
    out.extend_from_slice(b"\" state=\"full\" version=\"");
    push_number(out, c.version);
    out.extend_from_slice(b"\">");
    write_description(c, out);
    write_state(c, out);
    out.extend_from_slice(b"<users>");
    for p in c.participants {
        write_user(p, out);
    }
    out.extend_from_slice(b"</users></conference-info>");
}

/// `conference-description`, left out when there is nothing to describe.
fn write_description(c: &Conference, out: &mut Vec<u8>) {
    if c.subject.is_none() && c.max_users.is_none() {
        return;
    }
    out.extend_from_slice(b"<conference-description>");
    if let Some(subject) = c.subject {
        text_element(out, "subject", subject);
    }
    if let Some(max) = c.max_users {
        out.extend_from_slice(b"<maximum-user-count>");
        push_number(out, max);
        out.extend_from_slice(b"</maximum-user-count>");
    }
    out.extend_from_slice(b"</conference-description>");
}

/// `conference-state`: `user-count` is the number of users in the session
/// now (connected), not of everyone on the roster; a conference that has a
/// document is active.
fn write_state(c: &Conference, out: &mut Vec<u8>) {
    let connected = c
        .participants
        .iter()
        .filter(|p| p.status == EndpointStatus::Connected)
        .count();
    out.extend_from_slice(b"<conference-state><user-count>");
    push_number(out, connected);
    out.extend_from_slice(b"</user-count><active>true</active></conference-state>");
}

fn write_user(p: &Participant, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<user entity=\"");
    push_escaped(out, p.entity, Place::Attribute);
    out.extend_from_slice(b"\" state=\"full\">");
    if let Some(display) = p.display {
        text_element(out, "display-text", display);
    }
    out.extend_from_slice(b"<endpoint entity=\"");
    push_escaped(out, p.entity, Place::Attribute);
    out.extend_from_slice(b"\">");
    text_element(out, "status", p.status.as_str());
    let joining = if p.dialed_out {
        "dialed-out"
    } else {
        "dialed-in"
    };
    text_element(out, "joining-method", joining);
    if p.status == EndpointStatus::Disconnected {
        write_disconnection(p, out);
    }
    out.extend_from_slice(b"</endpoint></user>");
}

/// `disconnection-method` and, with a reason, `disconnection-info`: the
/// schema has no info without a method, so a reason alone is not written.
fn write_disconnection(p: &Participant, out: &mut Vec<u8>) {
    let Some(how) = p.disconnection else { return };
    text_element(out, "disconnection-method", how.as_str());
    if let Some((code, text)) = p.reason {
        out.extend_from_slice(b"<disconnection-info><reason>");
        push_number(out, code);
        if !text.is_empty() {
            out.push(b' ');
            push_escaped(out, text, Place::Text);
        }
        out.extend_from_slice(b"</reason></disconnection-info>");
    }
}

/// `<name>text</name>`, the text escaped; `name` is one of ours.
fn text_element(out: &mut Vec<u8>, name: &str, text: &str) {
    out.push(b'<');
    out.extend_from_slice(name.as_bytes());
    out.push(b'>');
    push_escaped(out, text, Place::Text);
    out.extend_from_slice(b"</");
    out.extend_from_slice(name.as_bytes());
    out.push(b'>');
}

fn push_number(out: &mut Vec<u8>, n: impl std::fmt::Display) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{n}");
}

/// Where an escaped string goes: a reader normalises TAB, LF and CR in an
/// attribute value to spaces, but keeps TAB and LF in text.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Text,
    Attribute,
}

/// What `c` is written as, if not as itself.
fn replacement(c: char, place: Place) -> Option<&'static str> {
    Some(match c {
        '&' => "&amp;",
        '<' => "&lt;",
        '>' => "&gt;",
        '"' => "&quot;",
        '\'' => "&apos;",
        '\r' => "&#13;",
        '\t' | '\n' if place == Place::Text => return None,
        '\t' => "&#9;",
        '\n' => "&#10;",
        // C0 (bar the three above), DEL and C1, and the two BMP
        // non-characters that are not XML `Char`s.
        c if c.is_control() || c == '\u{FFFE}' || c == '\u{FFFF}' => "\u{FFFD}",
        _ => return None,
    })
}

/// Append `s` escaped for `place` (see the module doc).
fn push_escaped(out: &mut Vec<u8>, s: &str, place: Place) {
    let bytes = s.as_bytes();
    let mut plain_from = 0;
    for (i, c) in s.char_indices() {
        if let Some(r) = replacement(c, place) {
            out.extend_from_slice(bytes.get(plain_from..i).unwrap_or(&[]));
            out.extend_from_slice(r.as_bytes());
            plain_from = i + c.len_utf8();
        }
    }
    out.extend_from_slice(bytes.get(plain_from..).unwrap_or(&[]));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn doc(c: &Conference) -> String {
        let mut out = Vec::new();
        write_full(c, &mut out);
        String::from_utf8(out).expect("UTF-8")
    }

    fn participant(entity: &str, status: EndpointStatus) -> Participant<'_> {
        Participant {
            entity,
            display: None,
            status,
            disconnection: None,
            reason: None,
            dialed_out: true,
        }
    }

    fn conference<'a>(participants: &'a [Participant<'a>]) -> Conference<'a> {
        Conference {
            entity: "sip:group-1@cs.example.com",
            subject: None,
            max_users: None,
            version: 1,
            participants,
        }
    }

    #[test]
    fn a_full_document_in_schema_order() {
        let users = [
            Participant {
                display: Some("Alice"),
                dialed_out: false,
                ..participant("sip:alice@example.com", EndpointStatus::Connected)
            },
            Participant {
                disconnection: Some(Disconnection::Failed),
                reason: Some((486, "Busy Here")),
                ..participant("tel:+15551234", EndpointStatus::Disconnected)
            },
        ];
        let c = Conference {
            subject: Some("Lunch"),
            max_users: Some(100),
            version: 7,
            ..conference(&users)
        };
        let want = concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            r#"<conference-info xmlns="urn:ietf:params:xml:ns:conference-info" "#,
            r#"entity="sip:group-1@cs.example.com" state="full" version="7">"#,
            "<conference-description><subject>Lunch</subject>",
            "<maximum-user-count>100</maximum-user-count></conference-description>",
            "<conference-state><user-count>1</user-count><active>true</active></conference-state>",
            r#"<users><user entity="sip:alice@example.com" state="full">"#,
            "<display-text>Alice</display-text>",
            r#"<endpoint entity="sip:alice@example.com"><status>connected</status>"#,
            "<joining-method>dialed-in</joining-method></endpoint></user>",
            r#"<user entity="tel:+15551234" state="full">"#,
            r#"<endpoint entity="tel:+15551234"><status>disconnected</status>"#,
            "<joining-method>dialed-out</joining-method>",
            "<disconnection-method>failed</disconnection-method>",
            "<disconnection-info><reason>486 Busy Here</reason></disconnection-info>",
            "</endpoint></user></users></conference-info>",
        );
        assert_eq!(doc(&c), want);
        check_well_formed(&doc(&c)).expect("well-formed");
    }

    #[test]
    fn no_description_without_subject_or_limit_and_an_empty_roster() {
        let d = doc(&conference(&[]));
        assert!(!d.contains("conference-description"), "{d}");
        assert!(d.contains("<user-count>0</user-count>"), "{d}");
        assert!(d.ends_with("<users></users></conference-info>"), "{d}");
    }

    #[test]
    fn user_count_counts_only_connected_endpoints() {
        use EndpointStatus::*;
        let all = [
            Pending,
            DialingOut,
            Alerting,
            Connected,
            Disconnecting,
            Disconnected,
            Connected,
        ];
        let entities: Vec<String> = (0..all.len())
            .map(|i| format!("sip:u{i}@example.com"))
            .collect();
        let users: Vec<Participant> = all
            .iter()
            .zip(&entities)
            .map(|(&s, e)| participant(e, s))
            .collect();
        let d = doc(&conference(&users));
        assert!(d.contains("<user-count>2</user-count>"), "{d}");
        for s in all {
            let status = format!("<status>{}</status>", s.as_str());
            assert!(d.contains(&status), "{status} in {d}");
        }
    }

    #[test]
    fn the_version_attribute_is_the_callers() {
        for v in [0, 1, 42, u32::MAX] {
            let c = Conference {
                version: v,
                ..conference(&[])
            };
            assert!(doc(&c).contains(&format!(r#" state="full" version="{v}">"#)));
        }
    }

    #[test]
    fn disconnected_users_carry_how_they_left_others_do_not() {
        let gone = |how| Participant {
            disconnection: Some(how),
            ..participant("sip:bob@example.com", EndpointStatus::Disconnected)
        };
        for how in [
            Disconnection::Departed,
            Disconnection::Booted,
            Disconnection::Failed,
            Disconnection::Busy,
        ] {
            let d = doc(&conference(&[gone(how)]));
            let method = format!(
                "<disconnection-method>{}</disconnection-method>",
                how.as_str()
            );
            assert!(d.contains(&method), "{d}");
            assert!(!d.contains("disconnection-info"), "no reason given: {d}");
        }
        // Rejoined with a stale disconnection: nothing about leaving.
        let back = Participant {
            status: EndpointStatus::Connected,
            reason: Some((603, "Decline")),
            ..gone(Disconnection::Departed)
        };
        let d = doc(&conference(&[back]));
        assert!(!d.contains("disconnection"), "{d}");
        // A reason without a method is not written either.
        let odd = Participant {
            reason: Some((480, "Temporarily Unavailable")),
            ..participant("sip:carol@example.com", EndpointStatus::Disconnected)
        };
        assert!(!doc(&conference(&[odd])).contains("disconnection"));
        // A code without a phrase.
        let bare = Participant {
            reason: Some((408, "")),
            ..gone(Disconnection::Failed)
        };
        assert!(doc(&conference(&[bare])).contains("<reason>408</reason>"));
    }

    #[test]
    fn markup_characters_are_escaped_in_attributes_and_text() {
        let users = [Participant {
            display: Some(r#"Tom & "Jerry" <'cat'>"#),
            reason: Some((500, "a<b&c")),
            disconnection: Some(Disconnection::Failed),
            ..participant(r#"sip:a&b@x"<y>'z"#, EndpointStatus::Disconnected)
        }];
        let c = Conference {
            entity: "sip:g@x;a=\"<&>\"",
            subject: Some("</subject><evil/>"),
            ..conference(&users)
        };
        let d = doc(&c);
        assert!(
            d.contains(r#"entity="sip:g@x;a=&quot;&lt;&amp;&gt;&quot;""#),
            "{d}"
        );
        assert!(
            d.contains(r#"<user entity="sip:a&amp;b@x&quot;&lt;y&gt;&apos;z" state="full">"#),
            "{d}"
        );
        assert!(
            d.contains(
                "<display-text>Tom &amp; &quot;Jerry&quot; &lt;&apos;cat&apos;&gt;</display-text>"
            ),
            "{d}"
        );
        assert!(
            d.contains("<subject>&lt;/subject&gt;&lt;evil/&gt;</subject>"),
            "{d}"
        );
        assert!(d.contains("<reason>500 a&lt;b&amp;c</reason>"), "{d}");
        check_well_formed(&d).expect("well-formed");
    }

    #[test]
    fn control_characters_are_replaced_and_whitespace_survives_normalisation() {
        let users = [Participant {
            display: Some("a\u{0}b\u{1b}c\u{7f}d\u{85}e\u{fffe}f\tg\nh\ri"),
            ..participant("sip:x\ty\nz\r@example.com", EndpointStatus::Connected)
        }];
        let d = doc(&conference(&users));
        assert!(
            d.contains("<display-text>a\u{fffd}b\u{fffd}c\u{fffd}d\u{fffd}e\u{fffd}f\tg\nh&#13;i</display-text>"),
            "{d:?}"
        );
        assert!(
            d.contains(r#"entity="sip:x&#9;y&#10;z&#13;@example.com""#),
            "{d:?}"
        );
        check_well_formed(&d).expect("well-formed");
    }

    /// Every element of the documents above is in the schema's order:
    /// each one's position among its siblings follows the sequence.
    #[test]
    fn endpoint_children_follow_the_schema_sequence() {
        let users = [Participant {
            display: Some("Bob"),
            disconnection: Some(Disconnection::Booted),
            reason: Some((200, "OK")),
            ..participant("sip:bob@example.com", EndpointStatus::Disconnected)
        }];
        let c = Conference {
            subject: Some("s"),
            max_users: Some(3),
            ..conference(&users)
        };
        let d = doc(&c);
        let order = [
            "<conference-description>",
            "<subject>",
            "<maximum-user-count>",
            "<conference-state>",
            "<user-count>",
            "<active>",
            "<users>",
            "<user ",
            "<display-text>",
            "<endpoint ",
            "<status>",
            "<joining-method>",
            "<disconnection-method>",
            "<disconnection-info>",
            "<reason>",
        ];
        let at: Vec<usize> = order
            .iter()
            .map(|t| d.find(t).unwrap_or_else(|| panic!("{t} in {d}")))
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{d}");
    }

    // --- a tiny checker of what a reader would see -------------------------

    /// XML 1.0 `Char`.
    fn is_xml_char(c: char) -> bool {
        matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}')
            || c >= '\u{10000}'
    }

    /// The character data of `s` (text or an attribute value between
    /// quotes): no raw `<` or `>` (we escape it everywhere), no `"`, and
    /// every `&` starts a predefined entity or a character reference.
    fn decode(s: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find(['&', '<', '>', '"']) {
            out.push_str(&rest[..i]);
            if !rest[i..].starts_with('&') {
                return Err(format!("raw markup character in {s:?}"));
            }
            let end = rest[i..]
                .find(';')
                .ok_or_else(|| format!("& without ; in {s:?}"))?;
            let name = &rest[i + 1..i + end];
            let c = match name {
                "amp" => '&',
                "lt" => '<',
                "gt" => '>',
                "quot" => '"',
                "apos" => '\'',
                _ => name
                    .strip_prefix('#')
                    .and_then(|n| n.parse().ok())
                    .and_then(char::from_u32)
                    .ok_or_else(|| format!("bad reference &{name}; in {s:?}"))?,
            };
            out.push(c);
            rest = &rest[i + end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// What a reader finds: (element, attribute or "", decoded value) for
    /// each attribute and each text run, after checking that the document
    /// is well-formed: the XML declaration, one root, balanced tags, only
    /// XML characters, clean character data.
    fn check_well_formed(d: &str) -> Result<Vec<(String, String, String)>, String> {
        if let Some(c) = d.chars().find(|&c| !is_xml_char(c)) {
            return Err(format!("not an XML Char: {c:?}"));
        }
        let mut rest = d
            .strip_prefix(r#"<?xml version="1.0" encoding="UTF-8"?>"#)
            .ok_or("no XML declaration")?;
        let mut stack: Vec<&str> = Vec::new();
        let mut found = Vec::new();
        let mut roots = 0;
        while !rest.is_empty() {
            let Some(tag) = rest.strip_prefix('<') else {
                let end = rest.find('<').unwrap_or(rest.len());
                let top = stack.last().ok_or("text outside the root")?;
                found.push((top.to_string(), String::new(), decode(&rest[..end])?));
                rest = &rest[end..];
                continue;
            };
            let end = tag.find('>').ok_or("unterminated tag")?;
            let (inner, after) = (&tag[..end], &tag[end + 1..]);
            rest = after;
            if let Some(name) = inner.strip_prefix('/') {
                if stack.pop() != Some(name) {
                    return Err(format!("mismatched </{name}>"));
                }
                continue;
            }
            let (inner, empty) = match inner.strip_suffix('/') {
                Some(i) => (i, true),
                None => (inner, false),
            };
            let mut parts = inner.splitn(2, ' ');
            let name = parts.next().unwrap_or("");
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphabetic() || c == '-') {
                return Err(format!("bad element name {name:?}"));
            }
            let mut attrs = parts.next().unwrap_or("");
            while !attrs.is_empty() {
                let eq = attrs.find("=\"").ok_or("attribute without =\"")?;
                let close = attrs[eq + 2..].find('"').ok_or("unterminated attribute")?;
                let value = &attrs[eq + 2..eq + 2 + close];
                found.push((name.to_string(), attrs[..eq].to_string(), decode(value)?));
                attrs = attrs[eq + 2 + close + 1..].trim_start_matches(' ');
            }
            if stack.is_empty() {
                roots += 1;
            }
            if !empty {
                stack.push(name);
            }
        }
        if !stack.is_empty() || roots != 1 {
            return Err(format!("unclosed {stack:?} or {roots} roots"));
        }
        Ok(found)
    }

    /// What a reader should get back for a caller string.
    fn sanitised(s: &str) -> String {
        s.chars()
            .map(|c| match replacement(c, Place::Attribute) {
                Some("\u{FFFD}") => '\u{FFFD}',
                _ => c,
            })
            .collect()
    }

    /// Strings with a high share of the characters that matter here.
    fn tricky() -> impl Strategy<Value = String> {
        let special = prop::sample::select(vec![
            '&',
            '<',
            '>',
            '"',
            '\'',
            ';',
            '#',
            '\t',
            '\n',
            '\r',
            '\0',
            '\u{1}',
            '\u{7f}',
            '\u{85}',
            '\u{fffe}',
            '\u{ffff}',
            '\u{fffd}',
            'é',
            '\u{1f600}',
        ]);
        prop::collection::vec(prop_oneof![any::<char>(), special], 0..24)
            .prop_map(|v| v.into_iter().collect())
    }

    fn status_of(i: u8) -> EndpointStatus {
        use EndpointStatus::*;
        [
            Pending,
            DialingOut,
            Alerting,
            Connected,
            Disconnecting,
            Disconnected,
        ][i as usize % 6]
    }

    proptest! {
        /// Any strings and numbers: a well-formed document in which a
        /// reader finds the caller's strings back (sanitised) where they
        /// were put.
        #[test]
        fn any_strings_make_a_well_formed_document(
            entity in tricky(),
            subject in prop::option::of(tricky()),
            max_users in prop::option::of(any::<u32>()),
            version in any::<u32>(),
            users in prop::collection::vec(
                (tricky(), prop::option::of(tricky()), any::<u8>(), any::<u16>(), tricky(), any::<bool>()),
                0..5,
            ),
        ) {
            let participants: Vec<Participant> = users
                .iter()
                .map(|(e, d, s, code, text, out)| Participant {
                    entity: e,
                    display: d.as_deref(),
                    status: status_of(*s),
                    disconnection: Some(Disconnection::Failed),
                    reason: Some((*code, text.as_str())),
                    dialed_out: *out,
                })
                .collect();
            let c = Conference {
                entity: &entity,
                subject: subject.as_deref(),
                max_users,
                version,
                participants: &participants,
            };
            let d = doc(&c);
            let found = check_well_formed(&d).map_err(|e| TestCaseError::fail(format!("{e}: {d:?}")))?;
            let has = |el: &str, attr: &str, v: &str| {
                found.iter().any(|(e, a, x)| e == el && a == attr && x == v)
            };
            prop_assert!(has("conference-info", "entity", &sanitised(&entity)));
            prop_assert!(has("conference-info", "version", &version.to_string()));
            if let Some(s) = &subject {
                // Text runs are not split: the whole subject is one run
                // (an empty one has no run at all).
                prop_assert!(s.is_empty() || has("subject", "", &sanitised(s)));
            }
            let users_found = found.iter().filter(|(e, a, _)| e == "user" && a == "entity").count();
            prop_assert_eq!(users_found, participants.len());
            for p in &participants {
                prop_assert!(has("user", "entity", &sanitised(p.entity)));
                prop_assert!(has("endpoint", "entity", &sanitised(p.entity)));
                if let Some(d) = p.display.filter(|d| !d.is_empty()) {
                    prop_assert!(has("display-text", "", &sanitised(d)));
                }
            }
        }
    }
}
