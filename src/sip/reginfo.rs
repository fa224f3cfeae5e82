//! RFC 3680 registration information (`application/reginfo+xml`): the body
//! of the third-party REGISTER an edge sends to a Conversation Server, which
//! tells it which contacts of which address-of-record are registered, with
//! their feature tags (`unknown-param`, §5.1) saying which CPM services
//! each one takes.
//!
//! [`write()`] builds the document into a bounded [`Out`]; [`parse`] reads
//! one back, or names what is wrong with it.
//!
//! Hand-written rather than a general XML library, as `cs::resource_lists`
//! is: one small document shape, and what a general parser brings (DTDs,
//! entity declarations and their expansion) has to be refused anyway.
//!
//! What the reader takes: an optional XML declaration (and processing
//! instructions, comments, a UTF-8 byte order mark); namespaces resolved
//! (default or prefixed; the RFC 3680 elements are those in
//! `urn:ietf:params:xml:ns:reginfo`, any other element is skipped with its
//! content, §5.1 "elements ... from unknown namespaces MUST be ignored", as
//! are unknown attributes and `display-name`); attributes in any order,
//! quoted with `'` or `"`; the five predefined entities and character
//! references in text and attribute values; CDATA sections in text.
//!
//! What it refuses: anything not well-formed as far as this shape needs
//! (tags, quotes, matching end tags, one root, no text outside it, an
//! unbound prefix, a repeated attribute, a control character), DTDs and
//! entity declarations, text or elements where the schema has none, a
//! missing required attribute, an enumerated value outside its list, a
//! number that is none, an AOR or contact URI that is not a SIP, SIPS (or,
//! for an AOR, tel) URI, an `event="shortened"` contact without `expires`
//! (§5.1 MUST), a registration or contact id given twice.
//!
//! Invariants:
//! - [`parse`] never panics and its work is bounded: at most [`MAX_BODY`]
//!   bytes scanned once, [`MAX_DEPTH`] levels, [`MAX_ATTRIBUTES`] per tag,
//!   [`MAX_REGISTRATIONS`] × [`MAX_CONTACTS`] × [`MAX_UNKNOWN_PARAMS`] items;
//! - every value [`parse`] returns is UTF-8 holding only XML characters, and
//!   [`write()`] of it parses back to the same value (fuzzed:
//!   `fuzz/fuzz_targets/reginfo.rs`);
//! - [`write()`] escapes every value so that its text never ends an attribute
//!   or element early; bytes that XML cannot carry (invalid UTF-8, control
//!   characters other than TAB, LF and CR) are written as U+FFFD.

use super::contact::qvalue;
use super::feature_tag::{cpm_services, CpmServices};
use super::rewrite::Out;
use super::uri::{self, Scheme};
use super::Span;

/// The RFC 3680 namespace.
pub const NAMESPACE: &[u8] = b"urn:ietf:params:xml:ns:reginfo";
/// Largest body read (64 KiB): a registration with a few contacts and
/// their feature tags takes one or two KiB.
pub const MAX_BODY: usize = 64 * 1024;
/// Most registrations in one document: an IMS implicit registration set
/// names a handful of public identities.
pub const MAX_REGISTRATIONS: usize = 32;
/// Most contacts in one registration: a user's devices and their flows.
pub const MAX_CONTACTS: usize = 32;
/// Most `unknown-param` elements in one contact: its feature tags.
pub const MAX_UNKNOWN_PARAMS: usize = 32;
/// Deepest element, root included: `reginfo`, `registration`, `contact`,
/// `uri` is four; the rest is room for extension elements.
pub const MAX_DEPTH: usize = 8;
/// Most attributes in one tag.
pub const MAX_ATTRIBUTES: usize = 16;

/// A registration information document (RFC 3680 §5.1 `reginfo`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegInfo {
    /// Orders the documents of one subscription (starts at 0).
    pub version: u32,
    /// Full state, or only what changed.
    pub state: DocState,
    /// One per address-of-record.
    pub registrations: Vec<Registration>,
}

/// `reginfo` `state`: the whole state or a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocState {
    /// `full`: the document replaces all that was known.
    Full,
    /// `partial`: the document updates what was known.
    Partial,
}

/// One address-of-record's registration (`registration`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The address-of-record (`aor`), a SIP, SIPS or tel URI.
    pub aor: Vec<u8>,
    /// Identifies the registration across documents (`id`).
    pub id: Vec<u8>,
    /// `state`.
    pub state: RegState,
    /// Its contacts, in document order.
    pub contacts: Vec<RegContact>,
}

/// `registration` `state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegState {
    /// `init`: no contact has been bound yet.
    Init,
    /// `active`: at least one contact is bound.
    Active,
    /// `terminated`: no contact is bound any more.
    Terminated,
}

/// One contact of a registration (`contact`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegContact {
    /// Identifies the contact across documents (`id`).
    pub id: Vec<u8>,
    /// `state`.
    pub state: ContactState,
    /// What brought the contact into its state (`event`).
    pub event: ContactEvent,
    /// Seconds until the binding expires (`expires`; larger values read as
    /// 2^32-1). Present for `shortened`.
    pub expires: Option<u32>,
    /// `q` in thousandths (0..=1000).
    pub q: Option<u16>,
    /// The contact URI (`uri`), a SIP or SIPS URI.
    pub uri: Vec<u8>,
    /// Contact parameters RFC 3261 does not define (`unknown-param`, RFC
    /// 3680 §5.1): name, and value as written in the Contact (quotes
    /// included), `None` for a parameter without one. An empty value is
    /// written, and read back, as `None`.
    pub unknown_params: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// `contact` `state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContactState {
    /// `active`: bound.
    Active,
    /// `terminated`: no longer bound.
    Terminated,
}

/// `contact` `event` (RFC 3680 §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContactEvent {
    /// `registered`: a REGISTER bound it.
    Registered,
    /// `created`: the registrar bound it by other means.
    Created,
    /// `refreshed`: a REGISTER refreshed it.
    Refreshed,
    /// `shortened`: the registrar shortened its lifetime.
    Shortened,
    /// `expired`: it was not refreshed in time.
    Expired,
    /// `deactivated`: the registrar removed it, the UA may register again.
    Deactivated,
    /// `probation`: removed, the UA should retry later.
    Probation,
    /// `unregistered`: a REGISTER removed it.
    Unregistered,
    /// `rejected`: the registrar refused it.
    Rejected,
}

macro_rules! names {
    ($t:ty { $($v:ident = $s:literal),* $(,)? }) => {
        impl $t {
            /// The attribute value.
            pub fn as_str(self) -> &'static str {
                match self { $(<$t>::$v => $s),* }
            }
            /// The value named by `s` (exactly: XML is case-sensitive).
            pub fn from_bytes(s: &[u8]) -> Option<$t> {
                match s { $(x if x == $s.as_bytes() => Some(<$t>::$v),)* _ => None }
            }
        }
    };
}
names!(DocState { Full = "full", Partial = "partial" });
names!(RegState { Init = "init", Active = "active", Terminated = "terminated" });
names!(ContactState { Active = "active", Terminated = "terminated" });
names!(ContactEvent {
    Registered = "registered",
    Created = "created",
    Refreshed = "refreshed",
    Shortened = "shortened",
    Expired = "expired",
    Deactivated = "deactivated",
    Probation = "probation",
    Unregistered = "unregistered",
    Rejected = "rejected",
});

/// Why a body is not acceptable registration information.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegInfoError {
    /// Larger than [`MAX_BODY`].
    #[error("reginfo: body larger than {MAX_BODY} bytes")]
    TooLarge,
    /// Not UTF-8 (RFC 3680 §5.1 MUST).
    #[error("reginfo: not UTF-8")]
    NotUtf8,
    /// A DOCTYPE or other `<!` declaration.
    #[error("reginfo: DTD or declaration not allowed")]
    Declaration,
    /// Not well-formed XML (of the kinds not named by another variant).
    #[error("reginfo: malformed XML")]
    Malformed,
    /// A tag that the body ends inside.
    #[error("reginfo: unterminated tag")]
    UnterminatedTag,
    /// An attribute value without its closing quote.
    #[error("reginfo: unterminated attribute value")]
    UnterminatedAttribute,
    /// A comment, CDATA section or processing instruction not closed.
    #[error("reginfo: unterminated comment, CDATA or processing instruction")]
    UnterminatedMarkup,
    /// The body ends with elements open.
    #[error("reginfo: element not closed")]
    Unclosed,
    /// An `&` that starts no known entity or valid character reference.
    #[error("reginfo: bad entity or character reference")]
    BadReference,
    /// A control character that XML does not allow.
    #[error("reginfo: control character")]
    BadCharacter,
    /// Deeper than [`MAX_DEPTH`].
    #[error("reginfo: nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    /// More than [`MAX_ATTRIBUTES`] in one tag.
    #[error("reginfo: more than {MAX_ATTRIBUTES} attributes in a tag")]
    TooManyAttributes,
    /// The same attribute twice in a tag.
    #[error("reginfo: attribute given twice")]
    DuplicateAttribute,
    /// A namespace prefix that no `xmlns:` declaration binds.
    #[error("reginfo: unbound namespace prefix")]
    UnboundPrefix,
    /// The root is not `reginfo` in the RFC 3680 namespace.
    #[error("reginfo: root element is not reginfo in urn:ietf:params:xml:ns:reginfo")]
    NotRegInfo,
    /// Text where the schema has only elements.
    #[error("reginfo: text where only elements belong")]
    UnexpectedText,
    /// An element inside `uri` or `unknown-param`.
    #[error("reginfo: element inside uri or unknown-param")]
    UnexpectedElement,
    /// A required attribute is missing.
    #[error("reginfo: {element} without {attribute}")]
    MissingAttribute {
        /// The element.
        element: &'static str,
        /// The attribute it lacks.
        attribute: &'static str,
    },
    /// `version` is not a 32-bit unsigned number.
    #[error("reginfo: version is not a 32-bit unsigned number")]
    BadVersion,
    /// `reginfo` `state` is not `full` or `partial`.
    #[error("reginfo: state is not full or partial")]
    BadDocState,
    /// `registration` `state` is not `init`, `active` or `terminated`.
    #[error("reginfo: registration state is not init, active or terminated")]
    BadRegState,
    /// `aor` is not a SIP, SIPS or tel URI.
    #[error("reginfo: aor is not a SIP, SIPS or tel URI")]
    BadAor,
    /// `contact` `state` is not `active` or `terminated`.
    #[error("reginfo: contact state is not active or terminated")]
    BadContactState,
    /// `event` is not one of RFC 3680's.
    #[error("reginfo: contact event is not one of RFC 3680")]
    BadEvent,
    /// `expires` is not an unsigned number.
    #[error("reginfo: contact expires is not an unsigned number")]
    BadExpires,
    /// `q` is not a qvalue.
    #[error("reginfo: contact q is not a qvalue")]
    BadQ,
    /// The contact `uri` is not a SIP or SIPS URI.
    #[error("reginfo: contact uri is not a SIP or SIPS URI")]
    BadContactUri,
    /// A contact without `uri`.
    #[error("reginfo: contact without uri")]
    MissingUri,
    /// A contact with two `uri` elements.
    #[error("reginfo: contact with two uri elements")]
    DuplicateUri,
    /// `event="shortened"` without `expires` (RFC 3680 §5.1 MUST).
    #[error("reginfo: shortened contact without expires")]
    ShortenedWithoutExpires,
    /// An `unknown-param` whose `name` is empty.
    #[error("reginfo: unknown-param with an empty name")]
    BadParamName,
    /// More than [`MAX_REGISTRATIONS`].
    #[error("reginfo: more than {MAX_REGISTRATIONS} registrations")]
    TooManyRegistrations,
    /// More than [`MAX_CONTACTS`] in a registration.
    #[error("reginfo: more than {MAX_CONTACTS} contacts in a registration")]
    TooManyContacts,
    /// More than [`MAX_UNKNOWN_PARAMS`] in a contact.
    #[error("reginfo: more than {MAX_UNKNOWN_PARAMS} unknown-param in a contact")]
    TooManyParams,
    /// Two registrations with the same `id` or `aor` (§5.1: one element
    /// per address-of-record, ids unique).
    #[error("reginfo: two registrations with the same id or aor")]
    DuplicateRegistration,
    /// Two contacts with the same `id` in a registration.
    #[error("reginfo: two contacts with the same id")]
    DuplicateContact,
}

impl RegInfoError {
    /// The reason for `400 Bad Request - <reason>`: Title Case, short.
    pub fn reason(&self) -> &'static str {
        use RegInfoError as E;
        match self {
            E::TooLarge => "Reginfo Too Large",
            E::NotUtf8 => "Reginfo Not UTF-8",
            E::Declaration => "Reginfo Declaration",
            E::Malformed => "Malformed Reginfo",
            E::UnterminatedTag => "Reginfo Unterminated Tag",
            E::UnterminatedAttribute => "Reginfo Unterminated Attribute",
            E::UnterminatedMarkup => "Reginfo Unterminated Markup",
            E::Unclosed => "Reginfo Element Not Closed",
            E::BadReference => "Reginfo Bad Reference",
            E::BadCharacter => "Reginfo Bad Character",
            E::TooDeep => "Reginfo Too Deep",
            E::TooManyAttributes => "Reginfo Too Many Attributes",
            E::DuplicateAttribute => "Reginfo Duplicate Attribute",
            E::UnboundPrefix => "Reginfo Unbound Prefix",
            E::NotRegInfo => "Not Reginfo",
            E::UnexpectedText => "Reginfo Unexpected Text",
            E::UnexpectedElement => "Reginfo Unexpected Element",
            E::MissingAttribute { .. } => "Reginfo Missing Attribute",
            E::BadVersion => "Reginfo Bad Version",
            E::BadDocState => "Reginfo Bad State",
            E::BadRegState => "Reginfo Bad Registration State",
            E::BadAor => "Reginfo Bad AOR",
            E::BadContactState => "Reginfo Bad Contact State",
            E::BadEvent => "Reginfo Bad Contact Event",
            E::BadExpires => "Reginfo Bad Contact Expires",
            E::BadQ => "Reginfo Bad Contact Q",
            E::BadContactUri => "Reginfo Bad Contact URI",
            E::MissingUri => "Reginfo Contact Without URI",
            E::DuplicateUri => "Reginfo Contact With Two URIs",
            E::ShortenedWithoutExpires => "Reginfo Shortened Without Expires",
            E::BadParamName => "Reginfo Bad Param Name",
            E::TooManyRegistrations => "Reginfo Too Many Registrations",
            E::TooManyContacts => "Reginfo Too Many Contacts",
            E::TooManyParams => "Reginfo Too Many Params",
            E::DuplicateRegistration => "Reginfo Duplicate Registration",
            E::DuplicateContact => "Reginfo Duplicate Contact",
        }
    }
}

/// The CPM services a contact's `+g.3gpp.icsi-ref` feature tags name
/// (its value quoted or not, `:` plain or `%3A`-escaped).
pub fn cpm_of(c: &RegContact) -> CpmServices {
    c.unknown_params
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"+g.3gpp.icsi-ref"))
        .filter_map(|(_, v)| v.as_deref())
        .fold(CpmServices::default(), |acc, v| {
            CpmServices(acc.0 | cpm_services(v, false).0)
        })
}

// ------------------------------------------------------------------ writer

/// Write `info` as an `application/reginfo+xml` document into `out` (whose
/// `finish` says whether it fitted). Every value is escaped.
pub fn write(info: &RegInfo, out: &mut Out<'_>) {
    debug_assert!(info.registrations.len() <= MAX_REGISTRATIONS);
    out.put(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<reginfo xmlns=\"");
    out.put(NAMESPACE);
    out.put(b"\" version=\"");
    out.put_u32(info.version);
    out.put(b"\" state=\"");
    out.put(info.state.as_str().as_bytes());
    out.put(b"\">\n");
    for r in &info.registrations {
        write_registration(r, out);
    }
    out.put(b"</reginfo>\n");
}

fn write_registration(r: &Registration, out: &mut Out<'_>) {
    debug_assert!(r.contacts.len() <= MAX_CONTACTS);
    out.put(b" <registration aor=\"");
    put_escaped(out, &r.aor);
    out.put(b"\" id=\"");
    put_escaped(out, &r.id);
    out.put(b"\" state=\"");
    out.put(r.state.as_str().as_bytes());
    if r.contacts.is_empty() {
        out.put(b"\"/>\n");
        return;
    }
    out.put(b"\">\n");
    for c in &r.contacts {
        write_contact(c, out);
    }
    out.put(b" </registration>\n");
}

fn write_contact(c: &RegContact, out: &mut Out<'_>) {
    debug_assert!(c.unknown_params.len() <= MAX_UNKNOWN_PARAMS);
    debug_assert!(c.event != ContactEvent::Shortened || c.expires.is_some());
    out.put(b"  <contact id=\"");
    put_escaped(out, &c.id);
    out.put(b"\" state=\"");
    out.put(c.state.as_str().as_bytes());
    out.put(b"\" event=\"");
    out.put(c.event.as_str().as_bytes());
    if let Some(e) = c.expires {
        out.put(b"\" expires=\"");
        out.put_u32(e);
    }
    if let Some(q) = c.q {
        out.put(b"\" q=\"");
        put_q(out, q);
    }
    out.put(b"\">\n   <uri>");
    put_escaped(out, &c.uri);
    out.put(b"</uri>\n");
    for (name, value) in &c.unknown_params {
        out.put(b"   <unknown-param name=\"");
        put_escaped(out, name);
        match value.as_deref() {
            Some(v) if !v.is_empty() => {
                out.put(b"\">");
                put_escaped(out, v);
                out.put(b"</unknown-param>\n");
            }
            _ => out.put(b"\"/>\n"),
        }
    }
    out.put(b"  </contact>\n");
}

/// A qvalue from thousandths: `1`, `0`, `0.5`, `0.05`, `0.125`.
fn put_q(out: &mut Out<'_>, q: u16) {
    debug_assert!(q <= 1000);
    if q >= 1000 {
        out.put(b"1");
        return;
    }
    out.put(b"0");
    if q == 0 {
        return;
    }
    let digits = [
        b'.',
        b'0' + (q / 100) as u8,
        b'0' + (q / 10 % 10) as u8,
        b'0' + (q % 10) as u8,
    ];
    let len = 4 - usize::from(q.is_multiple_of(10)) - usize::from(q.is_multiple_of(100));
    out.put(&digits[..len]);
}

/// `s` as XML text or attribute value: the markup characters, quotes and
/// TAB/LF/CR (which a reader would normalise) as references; what XML
/// cannot carry as U+FFFD.
fn put_escaped(out: &mut Out<'_>, s: &[u8]) {
    let text = String::from_utf8_lossy(s);
    let bytes = text.as_bytes();
    let mut plain = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'"' => b"&quot;",
            b'\'' => b"&apos;",
            b'\t' => b"&#9;",
            b'\n' => b"&#10;",
            b'\r' => b"&#13;",
            0..=0x1f => "\u{FFFD}".as_bytes(),
            _ => continue,
        };
        out.put(&bytes[plain..i]);
        out.put(escape);
        plain = i + 1;
    }
    out.put(&bytes[plain..]);
}

// ------------------------------------------------------------------ reader

/// Read a registration information document; see the module doc for what
/// is taken and what is refused.
pub fn parse(body: &[u8]) -> Result<RegInfo, RegInfoError> {
    if body.len() > MAX_BODY {
        return Err(RegInfoError::TooLarge);
    }
    let text = std::str::from_utf8(body).map_err(|_| RegInfoError::NotUtf8)?;
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    let mut reader = Reader {
        b: text.as_bytes(),
        pos: 0,
        attrs: Vec::with_capacity(MAX_ATTRIBUTES),
    };
    let mut doc = Builder::default();
    while let Some(token) = reader.next()? {
        match token {
            Token::Text(t) => doc.text(t, false)?,
            Token::Cdata(t) => doc.text(t, true)?,
            Token::Start { name, empty } => doc.start(name, empty, &reader.attrs)?,
            Token::End(name) => doc.end(name)?,
        }
    }
    doc.finish()
}

/// What the reader hands on; comments and processing instructions are
/// skipped inside it.
enum Token<'a> {
    /// Character data, undecoded.
    Text(&'a [u8]),
    /// A CDATA section's content.
    Cdata(&'a [u8]),
    /// A start tag (its attributes in `Reader::attrs`), or an empty-element
    /// tag.
    Start { name: &'a [u8], empty: bool },
    /// An end tag.
    End(&'a [u8]),
}

/// One attribute of the last start tag: qualified name, raw value.
#[derive(Clone, Copy)]
struct Attr<'a> {
    name: &'a [u8],
    raw: &'a [u8],
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    /// The attributes of the last start tag (at most MAX_ATTRIBUTES).
    attrs: Vec<Attr<'a>>,
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn all_space(s: &[u8]) -> bool {
    s.iter().all(|b| is_space(*b))
}

/// XML `NameStartChar`, loosely: ASCII letters, `_`, `:` and any non-ASCII
/// byte (the input is UTF-8).
fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b':' || b >= 0x80
}

/// XML `NameChar`, as loosely.
fn is_name_byte(b: u8) -> bool {
    is_name_start(b) || b.is_ascii_digit() || b == b'-' || b == b'.'
}

/// Where `needle` starts in `hay` at or after `from`.
fn find(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay.get(from..)?, needle).map(|i| from + i)
}

impl<'a> Reader<'a> {
    fn rest(&self) -> &'a [u8] {
        self.b.get(self.pos..).unwrap_or(&[])
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    /// The next token, or `None` at the end of the body.
    fn next(&mut self) -> Result<Option<Token<'a>>, RegInfoError> {
        loop {
            let rest = self.rest();
            let Some(&first) = rest.first() else {
                return Ok(None);
            };
            if first != b'<' {
                let len = memchr::memchr(b'<', rest).unwrap_or(rest.len());
                self.pos += len;
                return Ok(Some(Token::Text(rest.get(..len).unwrap_or(&[]))));
            }
            if rest.starts_with(b"<!--") {
                self.pos =
                    find(self.b, self.pos + 4, b"-->").ok_or(RegInfoError::UnterminatedMarkup)? + 3;
            } else if rest.starts_with(b"<![CDATA[") {
                let start = self.pos + 9;
                let end = find(self.b, start, b"]]>").ok_or(RegInfoError::UnterminatedMarkup)?;
                self.pos = end + 3;
                return Ok(Some(Token::Cdata(self.b.get(start..end).unwrap_or(&[]))));
            } else if rest.starts_with(b"<!") {
                // DOCTYPE, ENTITY, ATTLIST: definitions we would then apply.
                return Err(RegInfoError::Declaration);
            } else if rest.starts_with(b"<?") {
                self.processing_instruction()?;
            } else if rest.starts_with(b"</") {
                return self.end_tag().map(Some);
            } else {
                return self.start_tag().map(Some);
            }
        }
    }

    /// `<?target ...?>`, skipped; the XML declaration only at the start.
    fn processing_instruction(&mut self) -> Result<(), RegInfoError> {
        let at_start = self.pos == 0;
        self.pos += 2;
        let target = self.name();
        if target.is_empty() || (target.eq_ignore_ascii_case(b"xml") && !at_start) {
            return Err(RegInfoError::Malformed);
        }
        self.pos = find(self.b, self.pos, b"?>").ok_or(RegInfoError::UnterminatedMarkup)? + 2;
        Ok(())
    }

    fn name(&mut self) -> &'a [u8] {
        let start = self.pos;
        if self.peek().is_some_and(is_name_start) {
            while self.peek().is_some_and(is_name_byte) {
                self.pos += 1;
            }
        }
        self.b.get(start..self.pos).unwrap_or(&[])
    }

    fn skip_space(&mut self) -> bool {
        let start = self.pos;
        while self.peek().is_some_and(is_space) {
            self.pos += 1;
        }
        self.pos > start
    }

    /// A tag cut short by the end of the body is unterminated; anything
    /// else in the wrong place is malformed.
    fn malformed_or_unterminated(&self) -> RegInfoError {
        if self.peek().is_none() {
            RegInfoError::UnterminatedTag
        } else {
            RegInfoError::Malformed
        }
    }

    /// `</name S? >`.
    fn end_tag(&mut self) -> Result<Token<'a>, RegInfoError> {
        self.pos += 2;
        let name = self.name();
        self.skip_space();
        match self.peek() {
            Some(b'>') if !name.is_empty() => {
                self.pos += 1;
                Ok(Token::End(name))
            }
            _ => Err(self.malformed_or_unterminated()),
        }
    }

    /// `<name (S attr S? = S? value)* S? /? >`, the attributes into
    /// `self.attrs`.
    fn start_tag(&mut self) -> Result<Token<'a>, RegInfoError> {
        self.pos += 1;
        let name = self.name();
        if name.is_empty() {
            return Err(self.malformed_or_unterminated());
        }
        self.attrs.clear();
        loop {
            let spaced = self.skip_space();
            match self.peek() {
                None => return Err(RegInfoError::UnterminatedTag),
                Some(b'>') => {
                    self.pos += 1;
                    return Ok(Token::Start { name, empty: false });
                }
                Some(b'/') => {
                    self.pos += 1;
                    return match self.peek() {
                        Some(b'>') => {
                            self.pos += 1;
                            Ok(Token::Start { name, empty: true })
                        }
                        _ => Err(self.malformed_or_unterminated()),
                    };
                }
                // XML requires the space between attributes.
                Some(_) if !spaced => return Err(RegInfoError::Malformed),
                Some(_) => self.attribute()?,
            }
        }
    }

    /// One `name = "value"` (or `'value'`) into `self.attrs`.
    fn attribute(&mut self) -> Result<(), RegInfoError> {
        let name = self.name();
        if name.is_empty() {
            return Err(self.malformed_or_unterminated());
        }
        self.skip_space();
        if self.peek() != Some(b'=') {
            return Err(self.malformed_or_unterminated());
        }
        self.pos += 1;
        self.skip_space();
        let quote = match self.peek() {
            Some(q @ (b'"' | b'\'')) => q,
            _ => return Err(self.malformed_or_unterminated()),
        };
        let start = self.pos + 1;
        let rest = self.b.get(start..).unwrap_or(&[]);
        let len = memchr::memchr(quote, rest).ok_or(RegInfoError::UnterminatedAttribute)?;
        let raw = rest.get(..len).unwrap_or(&[]);
        if raw.contains(&b'<') {
            return Err(RegInfoError::Malformed);
        }
        self.pos = start + len + 1;
        if self.attrs.iter().any(|a| a.name == name) {
            return Err(RegInfoError::DuplicateAttribute);
        }
        if self.attrs.len() == MAX_ATTRIBUTES {
            return Err(RegInfoError::TooManyAttributes);
        }
        self.attrs.push(Attr { name, raw });
        Ok(())
    }
}

/// Text as a reader sees it (XML 1.0 §2.11, §3.3.3, §4.6): references
/// replaced, CRLF and lone CR as LF; in an attribute value (`attr`) TAB,
/// LF and CR as spaces. Appended to `out`.
fn decode(raw: &[u8], attr: bool, out: &mut Vec<u8>) -> Result<(), RegInfoError> {
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        i += 1;
        match b {
            b'&' => {
                let after = raw.get(i..).unwrap_or(&[]);
                // The longest reference is `&#x10FFFF;` or `&#1114111;`.
                let semi = after
                    .iter()
                    .take(10)
                    .position(|c| *c == b';')
                    .ok_or(RegInfoError::BadReference)?;
                let c = reference(after.get(..semi).unwrap_or(&[]))?;
                let mut utf8 = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                i += semi + 1;
            }
            b'\r' => {
                if raw.get(i) == Some(&b'\n') {
                    i += 1;
                }
                out.push(if attr { b' ' } else { b'\n' });
            }
            b'\n' | b'\t' if attr => out.push(b' '),
            b'\n' | b'\t' => out.push(b),
            0..=0x1f => return Err(RegInfoError::BadCharacter),
            _ => out.push(b),
        }
    }
    Ok(())
}

/// The character `&name;` stands for (`sip::xml`).
fn reference(name: &[u8]) -> Result<char, RegInfoError> {
    crate::sip::xml::reference(name).ok_or(RegInfoError::BadReference)
}

/// `prefix:local` (empty prefix without a colon); `None` when a part is
/// empty or there is a second colon (not namespace-well-formed).
fn split_name(name: &[u8]) -> Option<(&[u8], &[u8])> {
    match memchr::memchr(b':', name) {
        None => Some((&[], name)),
        Some(c) => {
            let (p, l) = (name.get(..c)?, name.get(c + 1..)?);
            (!p.is_empty() && !l.is_empty() && !l.contains(&b':')).then_some((p, l))
        }
    }
}

/// What an open element is to the document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Root,
    Registration,
    Contact,
    Uri,
    Param,
    /// Unknown, `display-name`, or inside one: read for well-formedness,
    /// its content dropped.
    Skip,
}

struct Frame<'a> {
    name: &'a [u8],
    kind: Kind,
}

/// One namespace declaration in scope: its prefix (empty for the
/// default), whether it names RFC 3680's namespace, the depth it was made at.
struct NsDecl<'a> {
    prefix: &'a [u8],
    reginfo: bool,
    depth: usize,
}

/// What the parse has built so far.
#[derive(Default)]
struct Builder<'a> {
    open: Vec<Frame<'a>>,
    ns: Vec<NsDecl<'a>>,
    info: Option<RegInfo>,
    /// The root element has been closed: nothing but space may follow.
    done: bool,
    /// The text of the open `uri` or `unknown-param`.
    text: Vec<u8>,
    /// The name of the open `unknown-param`.
    param_name: Vec<u8>,
    /// Decoded text that is only checked.
    scratch: Vec<u8>,
}

/// The raw value of the unprefixed attribute `name`.
fn attr<'a>(attrs: &[Attr<'a>], name: &[u8]) -> Option<&'a [u8]> {
    attrs.iter().find(|a| a.name == name).map(|a| a.raw)
}

/// The decoded value of a required attribute.
fn required(
    attrs: &[Attr<'_>],
    element: &'static str,
    attribute: &'static str,
) -> Result<Vec<u8>, RegInfoError> {
    let raw = attr(attrs, attribute.as_bytes())
        .ok_or(RegInfoError::MissingAttribute { element, attribute })?;
    let mut v = Vec::new();
    decode(raw, true, &mut v)?;
    Ok(v)
}

/// The decoded value of an optional attribute.
fn optional(attrs: &[Attr<'_>], name: &[u8]) -> Result<Option<Vec<u8>>, RegInfoError> {
    let Some(raw) = attr(attrs, name) else {
        return Ok(None);
    };
    let mut v = Vec::new();
    decode(raw, true, &mut v)?;
    Ok(Some(v))
}

/// `s` without XML whitespace at either end (the `collapse` of numbers
/// and URIs in XML Schema).
fn trim_space(s: &[u8]) -> &[u8] {
    let a = s.iter().position(|b| !is_space(*b)).unwrap_or(s.len());
    let b = s.iter().rposition(|b| !is_space(*b)).map_or(a, |p| p + 1);
    s.get(a..b).unwrap_or(&[])
}

/// An unsigned decimal (XML Schema `nonNegativeInteger` / `unsignedLong`
/// without a sign), saturated at `u64::MAX`.
fn unsigned(s: &[u8]) -> Option<u64> {
    let s = trim_space(s);
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |a, d| {
        a.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// Is `s` a URI of one of `schemes`?
fn uri_of(s: &[u8], schemes: &[Scheme]) -> bool {
    // The body is at most MAX_BODY bytes, so the length fits a Span.
    let Ok(len) = u32::try_from(s.len()) else {
        return false;
    };
    uri::parse(s, Span { start: 0, end: len }).is_some_and(|u| schemes.contains(&u.scheme))
}

impl<'a> Builder<'a> {
    /// Whether `prefix` (empty: the default namespace) is bound to RFC
    /// 3680's namespace; an unbound prefix is an error, an undeclared
    /// default namespace is none.
    fn resolve(&self, prefix: &[u8]) -> Result<bool, RegInfoError> {
        if let Some(d) = self.ns.iter().rev().find(|d| d.prefix == prefix) {
            return Ok(d.reginfo);
        }
        match prefix {
            b"" | b"xml" => Ok(false),
            _ => Err(RegInfoError::UnboundPrefix),
        }
    }

    /// The `xmlns` and `xmlns:p` attributes of a tag at `depth` into scope.
    fn declare(&mut self, attrs: &[Attr<'a>], depth: usize) -> Result<(), RegInfoError> {
        for a in attrs {
            let prefix: &'a [u8] = if a.name == b"xmlns" {
                b""
            } else if let Some(p) = a.name.strip_prefix(b"xmlns:") {
                p
            } else {
                continue;
            };
            self.scratch.clear();
            decode(a.raw, true, &mut self.scratch)?;
            // Namespaces 1.0: a prefix cannot be undeclared, nor
            // `xmlns` bound; `xml` is predefined.
            if prefix.contains(&b':')
                || prefix == b"xmlns"
                || (!prefix.is_empty() && self.scratch.is_empty())
            {
                return Err(RegInfoError::Malformed);
            }
            let reginfo = self.scratch == NAMESPACE;
            self.ns.push(NsDecl {
                prefix,
                reginfo,
                depth,
            });
        }
        debug_assert!(self.ns.len() <= MAX_DEPTH * MAX_ATTRIBUTES);
        Ok(())
    }

    fn start(
        &mut self,
        name: &'a [u8],
        empty: bool,
        attrs: &[Attr<'a>],
    ) -> Result<(), RegInfoError> {
        if self.done {
            return Err(RegInfoError::Malformed);
        }
        let depth = self.open.len();
        if depth >= MAX_DEPTH {
            return Err(RegInfoError::TooDeep);
        }
        self.declare(attrs, depth)?;
        let (prefix, local) = split_name(name).ok_or(RegInfoError::Malformed)?;
        let ours = self.resolve(prefix)?;
        // Every attribute is well-formed, read or not: its prefix bound,
        // its references valid.
        for a in attrs {
            let (p, _) = split_name(a.name).ok_or(RegInfoError::Malformed)?;
            if !p.is_empty() && p != b"xmlns" {
                self.resolve(p)?;
            }
            self.scratch.clear();
            decode(a.raw, true, &mut self.scratch)?;
        }
        let parent = self.open.last().map(|f| f.kind);
        let kind = match (parent, ours, local) {
            (None, true, b"reginfo") => {
                self.root(attrs)?;
                Kind::Root
            }
            (None, _, _) => return Err(RegInfoError::NotRegInfo),
            (Some(Kind::Uri | Kind::Param), _, _) => return Err(RegInfoError::UnexpectedElement),
            (Some(Kind::Root), true, b"registration") => {
                self.registration(attrs)?;
                Kind::Registration
            }
            (Some(Kind::Registration), true, b"contact") => {
                self.contact(attrs)?;
                Kind::Contact
            }
            (Some(Kind::Contact), true, b"uri") => {
                if !self.contact_mut()?.uri.is_empty() {
                    return Err(RegInfoError::DuplicateUri);
                }
                self.text.clear();
                Kind::Uri
            }
            (Some(Kind::Contact), true, b"unknown-param") => {
                self.param(attrs)?;
                Kind::Param
            }
            _ => Kind::Skip,
        };
        self.open.push(Frame { name, kind });
        if empty {
            self.end(name)?;
        }
        Ok(())
    }

    fn root(&mut self, attrs: &[Attr<'_>]) -> Result<(), RegInfoError> {
        debug_assert!(self.info.is_none());
        let version = required(attrs, "reginfo", "version")?;
        let version = unsigned(&version)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or(RegInfoError::BadVersion)?;
        let state = required(attrs, "reginfo", "state")?;
        let state = DocState::from_bytes(&state).ok_or(RegInfoError::BadDocState)?;
        self.info = Some(RegInfo {
            version,
            state,
            registrations: Vec::new(),
        });
        Ok(())
    }

    fn info_mut(&mut self) -> Result<&mut RegInfo, RegInfoError> {
        // Only a `reginfo` root opens the document.
        self.info.as_mut().ok_or(RegInfoError::Malformed)
    }

    fn registration(&mut self, attrs: &[Attr<'_>]) -> Result<(), RegInfoError> {
        let aor = required(attrs, "registration", "aor")?;
        let aor = trim_space(&aor).to_vec();
        if !uri_of(&aor, &[Scheme::Sip, Scheme::Sips, Scheme::Tel]) {
            return Err(RegInfoError::BadAor);
        }
        let id = required(attrs, "registration", "id")?;
        let state = required(attrs, "registration", "state")?;
        let state = RegState::from_bytes(&state).ok_or(RegInfoError::BadRegState)?;
        let regs = &mut self.info_mut()?.registrations;
        if regs.len() == MAX_REGISTRATIONS {
            return Err(RegInfoError::TooManyRegistrations);
        }
        if regs.iter().any(|r| r.id == id || r.aor == aor) {
            return Err(RegInfoError::DuplicateRegistration);
        }
        regs.push(Registration {
            aor,
            id,
            state,
            contacts: Vec::new(),
        });
        Ok(())
    }

    fn registration_mut(&mut self) -> Result<&mut Registration, RegInfoError> {
        self.info_mut()?
            .registrations
            .last_mut()
            .ok_or(RegInfoError::Malformed)
    }

    fn contact(&mut self, attrs: &[Attr<'_>]) -> Result<(), RegInfoError> {
        let id = required(attrs, "contact", "id")?;
        let state = required(attrs, "contact", "state")?;
        let state = ContactState::from_bytes(&state).ok_or(RegInfoError::BadContactState)?;
        let event = required(attrs, "contact", "event")?;
        let event = ContactEvent::from_bytes(&event).ok_or(RegInfoError::BadEvent)?;
        let expires = match optional(attrs, b"expires")? {
            None => None,
            Some(e) => Some(unsigned(&e).ok_or(RegInfoError::BadExpires)?),
        };
        let expires = expires.map(|e| u32::try_from(e).unwrap_or(u32::MAX));
        if event == ContactEvent::Shortened && expires.is_none() {
            return Err(RegInfoError::ShortenedWithoutExpires);
        }
        let q = match optional(attrs, b"q")? {
            None => None,
            Some(q) => Some(qvalue(&q).ok_or(RegInfoError::BadQ)?),
        };
        let contacts = &mut self.registration_mut()?.contacts;
        if contacts.len() == MAX_CONTACTS {
            return Err(RegInfoError::TooManyContacts);
        }
        if contacts.iter().any(|c| c.id == id) {
            return Err(RegInfoError::DuplicateContact);
        }
        contacts.push(RegContact {
            id,
            state,
            event,
            expires,
            q,
            uri: Vec::new(),
            unknown_params: Vec::new(),
        });
        Ok(())
    }

    fn contact_mut(&mut self) -> Result<&mut RegContact, RegInfoError> {
        self.registration_mut()?
            .contacts
            .last_mut()
            .ok_or(RegInfoError::Malformed)
    }

    fn param(&mut self, attrs: &[Attr<'_>]) -> Result<(), RegInfoError> {
        let name = required(attrs, "unknown-param", "name")?;
        if name.is_empty() {
            return Err(RegInfoError::BadParamName);
        }
        if self.contact_mut()?.unknown_params.len() == MAX_UNKNOWN_PARAMS {
            return Err(RegInfoError::TooManyParams);
        }
        self.param_name = name;
        self.text.clear();
        Ok(())
    }

    fn text(&mut self, raw: &[u8], cdata: bool) -> Result<(), RegInfoError> {
        let kind = self.open.last().map(|f| f.kind);
        match kind {
            None if cdata || !all_space(raw) => Err(RegInfoError::Malformed),
            Some(Kind::Root | Kind::Registration | Kind::Contact) if !all_space(raw) => {
                Err(RegInfoError::UnexpectedText)
            }
            Some(Kind::Uri | Kind::Param) => cdata_or_text(raw, cdata, &mut self.text),
            _ => {
                self.scratch.clear();
                cdata_or_text(raw, cdata, &mut self.scratch)
            }
        }
    }

    fn end(&mut self, name: &[u8]) -> Result<(), RegInfoError> {
        let frame = self.open.pop().ok_or(RegInfoError::Malformed)?;
        if frame.name != name {
            return Err(RegInfoError::Malformed);
        }
        let depth = self.open.len();
        while self.ns.last().is_some_and(|d| d.depth >= depth) {
            self.ns.pop();
        }
        match frame.kind {
            Kind::Root => self.done = true,
            Kind::Contact if self.contact_mut()?.uri.is_empty() => {
                return Err(RegInfoError::MissingUri)
            }
            Kind::Uri => {
                let uri = trim_space(&self.text).to_vec();
                if !uri_of(&uri, &[Scheme::Sip, Scheme::Sips]) {
                    return Err(RegInfoError::BadContactUri);
                }
                self.contact_mut()?.uri = uri;
            }
            Kind::Param => {
                let name = std::mem::take(&mut self.param_name);
                let value = (!self.text.is_empty()).then(|| self.text.clone());
                self.contact_mut()?.unknown_params.push((name, value));
            }
            Kind::Registration | Kind::Contact | Kind::Skip => {}
        }
        Ok(())
    }

    fn finish(self) -> Result<RegInfo, RegInfoError> {
        if !self.open.is_empty() {
            return Err(RegInfoError::Unclosed);
        }
        self.info.ok_or(RegInfoError::NotRegInfo)
    }
}

/// Text or a CDATA section's content into `out`: a CDATA section holds no
/// references but its line ends are normalised all the same.
fn cdata_or_text(raw: &[u8], cdata: bool, out: &mut Vec<u8>) -> Result<(), RegInfoError> {
    if !cdata {
        return decode(raw, false, out);
    }
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        i += 1;
        match b {
            b'\r' => {
                if raw.get(i) == Some(&b'\n') {
                    i += 1;
                }
                out.push(b'\n');
            }
            b'\n' | b'\t' => out.push(b),
            0..=0x1f => return Err(RegInfoError::BadCharacter),
            _ => out.push(b),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read(body: &str) -> RegInfo {
        parse(body.as_bytes()).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    fn refused(body: &str) -> RegInfoError {
        match parse(body.as_bytes()) {
            Ok(i) => panic!("accepted {i:?}: {body}"),
            Err(e) => e,
        }
    }

    fn written(info: &RegInfo) -> Vec<u8> {
        let mut buf = vec![0u8; 1 << 20];
        let mut out = Out::new(&mut buf);
        write(info, &mut out);
        let n = out.finish().expect("fits");
        buf.truncate(n);
        buf
    }

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn contact(id: &str, uri: &str) -> RegContact {
        RegContact {
            id: b(id),
            state: ContactState::Active,
            event: ContactEvent::Registered,
            expires: None,
            q: None,
            uri: b(uri),
            unknown_params: Vec::new(),
        }
    }

    /// RFC 3680 §5.3.
    #[test]
    fn rfc3680_section_5_3_example() {
        let body = r#"<?xml version="1.0"?>
       <reginfo xmlns="urn:ietf:params:xml:ns:reginfo"
           xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
                    version="0" state="full">
         <registration aor="sip:user@example.com" id="as9"
                       state="active">
           <contact id="76" state="active" event="registered"
                    duration-registered="7322"
                    q="0.8">
                    <uri>sip:user@pc887.example.com</uri>
           </contact>
           <contact id="77" state="terminated" event="expired"
                    duration-registered="3600"
                    q="0.5">
                    <uri>sip:user@university.edu</uri>
           </contact>
         </registration>
       </reginfo>
"#;
        let want = RegInfo {
            version: 0,
            state: DocState::Full,
            registrations: vec![Registration {
                aor: b("sip:user@example.com"),
                id: b("as9"),
                state: RegState::Active,
                contacts: vec![
                    RegContact {
                        q: Some(800),
                        ..contact("76", "sip:user@pc887.example.com")
                    },
                    RegContact {
                        state: ContactState::Terminated,
                        event: ContactEvent::Expired,
                        q: Some(500),
                        ..contact("77", "sip:user@university.edu")
                    },
                ],
            }],
        };
        assert_eq!(read(body), want);
        assert_eq!(parse(&written(&want)), Ok(want));
    }

    /// RFC 3680 §6, NOTIFY (3) and (7).
    #[test]
    fn rfc3680_section_6_examples() {
        let init = r#"<?xml version="1.0"?>
   <reginfo xmlns="urn:ietf:params:xml:ns:reginfo"
                version="0" state="full">
     <registration aor="sip:joe@example.com" id="a7" state="init" />
   </reginfo>
"#;
        let joe = |state, contacts| Registration {
            aor: b("sip:joe@example.com"),
            id: b("a7"),
            state,
            contacts,
        };
        assert_eq!(
            read(init),
            RegInfo {
                version: 0,
                state: DocState::Full,
                registrations: vec![joe(RegState::Init, vec![])],
            }
        );
        let active = r#"<?xml version="1.0"?>
   <reginfo xmlns="urn:ietf:params:xml:ns:reginfo"
             version="1" state="partial">
     <registration aor="sip:joe@example.com" id="a7" state="active">
       <contact id="76" state="active" event="registered"
             duration-registered="0">
          <uri>sip:joe@pc34.example.com</uri>
       </contact>
     </registration>
   </reginfo>
"#;
        assert_eq!(
            read(active),
            RegInfo {
                version: 1,
                state: DocState::Partial,
                registrations: vec![joe(
                    RegState::Active,
                    vec![contact("76", "sip:joe@pc34.example.com")]
                )],
            }
        );
    }

    /// What an edge sends a Conversation Server for an RCS client: the
    /// feature tags as unknown-param (the 3GPP TS 24.229 shape), a GRUU
    /// extension in its own namespace, a display name.
    #[test]
    fn an_rcs_third_party_register_body() {
        let body = "\u{FEFF}<?xml version='1.0' encoding='UTF-8'?>\r\n\
<!-- from the edge -->\r\n\
<r:reginfo xmlns:r='urn:ietf:params:xml:ns:reginfo' xmlns:gr=\"urn:ietf:params:xml:ns:gruuinfo\" state='full' version='4294967295'>\r\n\
 <r:registration state='active' id='reg1' aor=' sip:+15551234@ims.example.com '>\r\n\
  <r:contact q='1' event='shortened' expires='99999999999' state='active' id='c1' callid='x@y' cseq='7'>\r\n\
   <r:uri>sip:alice@192.0.2.1:5060;transport=udp</r:uri>\r\n\
   <r:display-name xml:lang='en'>Alice &amp; <![CDATA[<co>]]></r:display-name>\r\n\
   <r:unknown-param name='+sip.instance'>&quot;&lt;urn:gsma:imei:35-209900-176148-1&gt;&quot;</r:unknown-param>\r\n\
   <r:unknown-param name=\"+g.3gpp.icsi-ref\">\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session,urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.filetransfer\"</r:unknown-param>\r\n\
   <r:unknown-param name='+g.oma.sip-im'/>\r\n\
   <r:unknown-param name='reg-id'></r:unknown-param>\r\n\
   <gr:pub-gruu uri='sip:alice@example.com;gr=urn:uuid:1'><gr:x>ignored <r:contact/></gr:x></gr:pub-gruu>\r\n\
   <r:unknown-ext>skipped</r:unknown-ext>\r\n\
  </r:contact>\r\n\
 </r:registration>\r\n\
 <registration aor='tel:+15551234' id='reg2' state='terminated'/>\r\n\
</r:reginfo>\r\n";
        let info = read(body);
        assert_eq!((info.version, info.state), (u32::MAX, DocState::Full));
        // The unprefixed `registration` is in no namespace: skipped.
        assert_eq!(info.registrations.len(), 1);
        let r = &info.registrations[0];
        assert_eq!(
            (&r.aor[..], &r.id[..]),
            (&b"sip:+15551234@ims.example.com"[..], &b"reg1"[..])
        );
        let c = &r.contacts[0];
        assert_eq!(
            (c.event, c.expires, c.q),
            (ContactEvent::Shortened, Some(u32::MAX), Some(1000))
        );
        assert_eq!(c.uri, b("sip:alice@192.0.2.1:5060;transport=udp"));
        assert_eq!(
            c.unknown_params,
            vec![
                (b("+sip.instance"), Some(b("\"<urn:gsma:imei:35-209900-176148-1>\""))),
                (b("+g.3gpp.icsi-ref"), Some(b("\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session,urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.filetransfer\""))),
                (b("+g.oma.sip-im"), None),
                (b("reg-id"), None),
            ]
        );
        assert_eq!(
            cpm_of(c),
            CpmServices(CpmServices::SESSION | CpmServices::FILETRANSFER)
        );
        assert_eq!(parse(&written(&info)), Ok(info));
    }

    #[test]
    fn cpm_of_reads_every_form() {
        let with = |v: &str| RegContact {
            unknown_params: vec![(b("+G.3GPP.ICSI-REF"), Some(b(v)))],
            ..contact("1", "sip:a@b")
        };
        for (v, want) in [
            (
                "\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.msg\"",
                CpmServices::MSG,
            ),
            (
                "urn:urn-7:3gpp-service.ims.icsi.oma.cpm.largemsg",
                CpmServices::LARGEMSG,
            ),
            ("\"urn:urn-7:3gpp-service.ims.icsi.mmtel\"", 0),
        ] {
            assert_eq!(cpm_of(&with(v)), CpmServices(want), "{v}");
        }
        assert_eq!(cpm_of(&contact("1", "sip:a@b")), CpmServices(0));
    }

    #[test]
    fn the_writer_escapes() {
        let info = RegInfo {
            version: 7,
            state: DocState::Partial,
            registrations: vec![Registration {
                aor: b("sip:a@example.com"),
                id: b("<\"&'>\t\r\n"),
                state: RegState::Active,
                contacts: vec![RegContact {
                    q: Some(50),
                    expires: Some(0),
                    unknown_params: vec![
                        (b("+x"), Some(b("\"a<b>&c'\r\nd\""))),
                        (b("+y"), Some(Vec::new())),
                        (b("+z"), Some(vec![b'a', 0x01, 0xff, b'b'])),
                    ],
                    ..contact("]]>", "sip:a@192.0.2.1;x=%41")
                }],
            }],
        };
        let text = String::from_utf8(written(&info)).unwrap();
        let want = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
<reginfo xmlns=\"urn:ietf:params:xml:ns:reginfo\" version=\"7\" state=\"partial\">\n \
<registration aor=\"sip:a@example.com\" id=\"&lt;&quot;&amp;&apos;&gt;&#9;&#13;&#10;\" state=\"active\">\n  \
<contact id=\"]]&gt;\" state=\"active\" event=\"registered\" expires=\"0\" q=\"0.05\">\n   \
<uri>sip:a@192.0.2.1;x=%41</uri>\n   \
<unknown-param name=\"+x\">&quot;a&lt;b&gt;&amp;c&apos;&#13;&#10;d&quot;</unknown-param>\n   \
<unknown-param name=\"+y\"/>\n   \
<unknown-param name=\"+z\">a\u{FFFD}\u{FFFD}b</unknown-param>\n  \
</contact>\n \
</registration>\n\
</reginfo>\n";
        assert_eq!(text, want);
        let back = parse(text.as_bytes()).unwrap();
        let c = &back.registrations[0].contacts[0];
        assert_eq!(back.registrations[0].id, b("<\"&'>\t\r\n"));
        assert_eq!(c.unknown_params[0].1, Some(b("\"a<b>&c'\r\nd\"")));
        assert_eq!(c.unknown_params[1].1, None);
        assert_eq!(c.unknown_params[2].1, Some(b("a\u{FFFD}\u{FFFD}b")));
        for (q, s) in [
            (0, "0"),
            (1, "0.001"),
            (10, "0.01"),
            (100, "0.1"),
            (120, "0.12"),
            (999, "0.999"),
            (1000, "1"),
        ] {
            let mut buf = [0u8; 8];
            let mut o = Out::new(&mut buf);
            put_q(&mut o, q);
            let n = o.finish().unwrap();
            assert_eq!(&buf[..n], s.as_bytes());
            assert_eq!(qvalue(s.as_bytes()), Some(q));
        }
        // Too small a buffer is reported, not overrun.
        let mut small = [0u8; 64];
        let mut o = Out::new(&mut small);
        write(&info, &mut o);
        assert_eq!(o.finish(), None);
    }

    #[test]
    fn references_and_line_ends_are_decoded() {
        let body = "<reginfo xmlns='urn:ietf:params:xml:ns:reginfo' version='&#48;' state='full'>\
<registration aor='sip:&#x61;@b.example' id='a&#9;b&#10;c\td\r\ne' state='active'>\
<contact id='1' state='active' event='registered'>\
<uri>sip:x@<![CDATA[b.example]]></uri>\
<unknown-param name='+t'>l1\r\nl2\rl3\n&#13;&#x1F600;&lt;</unknown-param>\
</contact></registration></reginfo>";
        let info = read(body);
        let r = &info.registrations[0];
        assert_eq!(r.aor, b("sip:a@b.example"));
        // Literal TAB, LF and CRLF in an attribute read as spaces; the
        // references stay.
        assert_eq!(r.id, b("a\tb\nc d e"));
        assert_eq!(r.contacts[0].uri, b("sip:x@b.example"));
        assert_eq!(
            r.contacts[0].unknown_params[0].1,
            Some(b("l1\nl2\nl3\n\r\u{1F600}<"))
        );
        for bad in [
            "&#0;",
            "&#x1;",
            "&#xD800;",
            "&#x110000;",
            "&#xFFFE;",
            "&nbsp;",
            "&",
            "&amp",
            "&#;",
            "&#x;",
            "&#-1;",
            "&#00000000097;",
        ] {
            let body = format!("<reginfo xmlns='urn:ietf:params:xml:ns:reginfo' version='0' state='full'><!-- -->{bad}</reginfo>");
            let e = refused(&body);
            assert!(
                e == RegInfoError::BadReference || e == RegInfoError::UnexpectedText,
                "{bad}: {e:?}"
            );
            let body = format!("<reginfo xmlns='urn:ietf:params:xml:ns:reginfo' version='0' state='full' x='{bad}'/>");
            assert_eq!(refused(&body), RegInfoError::BadReference, "{bad}");
        }
        let ctl =
            "<reginfo xmlns='urn:ietf:params:xml:ns:reginfo' version='0' state='full' x='\u{1}'/>";
        assert_eq!(refused(ctl), RegInfoError::BadCharacter);
    }

    const NS: &str = "xmlns='urn:ietf:params:xml:ns:reginfo'";

    /// A document around one registration's `contacts`.
    fn doc(contacts: &str) -> String {
        format!("<reginfo {NS} version='1' state='full'><registration aor='sip:a@example.com' id='r' state='active'>{contacts}</registration></reginfo>")
    }

    #[test]
    fn each_defect_is_named() {
        use RegInfoError as E;
        let ok_contact = "<contact id='1' state='active' event='registered'><uri>sip:a@192.0.2.1</uri></contact>";
        assert_eq!(read(&doc(ok_contact)).registrations[0].contacts.len(), 1);
        let cases: Vec<(String, RegInfoError)> = vec![
            (" ".repeat(MAX_BODY + 1), E::TooLarge),
            (doc("<contact id='1' state='active' event='registered'><uri>sip:a@b\u{1}</uri></contact>"), E::BadCharacter),
            ("<reginfo \u{0}".into(), E::Malformed),
            (format!("<!DOCTYPE reginfo><reginfo {NS} version='1' state='full'/>"), E::Declaration),
            (format!("<reginfo {NS} version='1' state='full'"), E::UnterminatedTag),
            (format!("<reginfo {NS} version='1 state='full'/>"), E::Malformed),
            (format!("<reginfo {NS} version='1' state=\"full'/>"), E::UnterminatedAttribute),
            (format!("<reginfo {NS} version='1' state='full'><!-- x"), E::UnterminatedMarkup),
            (format!("<reginfo {NS} version='1' state='full'>"), E::Unclosed),
            (format!("<reginfo {NS} version='1' state='full'></registration>"), E::Malformed),
            (format!("<reginfo {NS} version='1' state='full'/><reginfo {NS} version='1' state='full'/>"), E::Malformed),
            (format!("<reginfo {NS} version='1' state='full'/>x"), E::Malformed),
            (format!("x<reginfo {NS} version='1' state='full'/>"), E::Malformed),
            (format!(" <?xml version='1.0'?><reginfo {NS} version='1' state='full'/>"), E::Malformed),
            (format!("<reginfo {NS} version='1'state='full'/>"), E::Malformed),
            (format!("<reginfo {NS} version='1' state='full' state='full'/>"), E::DuplicateAttribute),
            (format!("<reginfo {NS} version='1' state='full'{}/>", (0..MAX_ATTRIBUTES).map(|i| format!(" a{i}=''")).collect::<String>()), E::TooManyAttributes),
            (format!("<reginfo {NS} version='1' state='full'>{}</reginfo>", "<x>".repeat(MAX_DEPTH)), E::TooDeep),
            (format!("<r:reginfo {NS} version='1' state='full'/>"), E::UnboundPrefix),
            (format!("<reginfo {NS} version='1' state='full' p:x=''/>"), E::UnboundPrefix),
            (format!("<reginfo xmlns:p='' {NS} version='1' state='full'/>"), E::Malformed),
            ("<reginfo version='1' state='full'/>".into(), E::NotRegInfo),
            ("<reginfo xmlns='urn:ietf:params:xml:ns:reginfo2' version='1' state='full'/>".into(), E::NotRegInfo),
            (format!("<resource-lists {NS}/>"), E::NotRegInfo),
            ("".into(), E::NotRegInfo),
            (format!("<reginfo {NS} version='1' state='full'>text</reginfo>"), E::UnexpectedText),
            (doc("<contact id='1' state='active' event='registered'><uri>sip:a@b<b/></uri></contact>"), E::UnexpectedElement),
            (format!("<reginfo {NS} state='full'/>"), E::MissingAttribute { element: "reginfo", attribute: "version" }),
            (format!("<reginfo {NS} version='1'/>"), E::MissingAttribute { element: "reginfo", attribute: "state" }),
            (format!("<reginfo {NS} version='4294967296' state='full'/>"), E::BadVersion),
            (format!("<reginfo {NS} version='-1' state='full'/>"), E::BadVersion),
            (format!("<reginfo {NS} version='1' state='Full'/>"), E::BadDocState),
            (format!("<reginfo {NS} version='1' state='full'><registration id='r' state='active'/></reginfo>"), E::MissingAttribute { element: "registration", attribute: "aor" }),
            (format!("<reginfo {NS} version='1' state='full'><registration aor='sip:a@b' id='r' state='gone'/></reginfo>"), E::BadRegState),
            (format!("<reginfo {NS} version='1' state='full'><registration aor='mailto:a@b' id='r' state='active'/></reginfo>"), E::BadAor),
            (format!("<reginfo {NS} version='1' state='full'><registration aor='a@b' id='r' state='active'/></reginfo>"), E::BadAor),
            (doc("<contact state='active' event='registered'><uri>sip:a@b</uri></contact>"), E::MissingAttribute { element: "contact", attribute: "id" }),
            (doc("<contact id='1' state='expired' event='registered'><uri>sip:a@b</uri></contact>"), E::BadContactState),
            (doc("<contact id='1' state='active' event='Registered'><uri>sip:a@b</uri></contact>"), E::BadEvent),
            (doc("<contact id='1' state='active' event='registered' expires='1h'><uri>sip:a@b</uri></contact>"), E::BadExpires),
            (doc("<contact id='1' state='active' event='registered' q='1.5'><uri>sip:a@b</uri></contact>"), E::BadQ),
            (doc("<contact id='1' state='active' event='registered'><uri>tel:+1555</uri></contact>"), E::BadContactUri),
            (doc("<contact id='1' state='active' event='registered'><uri></uri></contact>"), E::BadContactUri),
            (doc("<contact id='1' state='active' event='registered'><uri>sip:a b@c</uri></contact>"), E::BadContactUri),
            (doc("<contact id='1' state='active' event='registered'/>"), E::MissingUri),
            (doc("<contact id='1' state='active' event='registered'><uri>sip:a@b</uri><uri>sip:c@d</uri></contact>"), E::DuplicateUri),
            (doc("<contact id='1' state='active' event='shortened'><uri>sip:a@b</uri></contact>"), E::ShortenedWithoutExpires),
            (doc("<contact id='1' state='active' event='registered'><uri>sip:a@b</uri><unknown-param name=''/></contact>"), E::BadParamName),
            (doc("<contact id='1' state='active' event='registered'><uri>sip:a@b</uri><unknown-param/></contact>"), E::MissingAttribute { element: "unknown-param", attribute: "name" }),
            (format!("<reginfo {NS} version='1' state='full'>{}</reginfo>", (0..=MAX_REGISTRATIONS).map(|i| format!("<registration aor='sip:u{i}@b' id='{i}' state='init'/>")).collect::<String>()), E::TooManyRegistrations),
            (doc(&(0..=MAX_CONTACTS).map(|i| format!("<contact id='{i}' state='active' event='registered'><uri>sip:a@b</uri></contact>")).collect::<String>()), E::TooManyContacts),
            (doc(&format!("<contact id='1' state='active' event='registered'><uri>sip:a@b</uri>{}</contact>", "<unknown-param name='x'/>".repeat(MAX_UNKNOWN_PARAMS + 1))), E::TooManyParams),
            (format!("<reginfo {NS} version='1' state='full'><registration aor='sip:a@b' id='r' state='init'/><registration aor='sip:c@d' id='r' state='init'/></reginfo>"), E::DuplicateRegistration),
            (format!("<reginfo {NS} version='1' state='full'><registration aor='sip:a@b' id='r' state='init'/><registration aor='sip:a@b' id='s' state='init'/></reginfo>"), E::DuplicateRegistration),
            (doc("<contact id='1' state='active' event='registered'><uri>sip:a@b</uri></contact><contact id='1' state='active' event='registered'><uri>sip:c@d</uri></contact>"), E::DuplicateContact),
        ];
        for (body, want) in &cases {
            assert_eq!(refused(body), *want, "{}", &body[..body.len().min(200)]);
        }
        assert_eq!(parse(&[b'<', 0xff, b'>']), Err(E::NotUtf8));
        // The limits themselves are accepted.
        let at_limit = doc(&(0..MAX_CONTACTS).map(|i| format!("<contact id='{i}' state='active' event='registered'><uri>sip:a@b</uri>{}</contact>", "<unknown-param name='x'/>".repeat(MAX_UNKNOWN_PARAMS))).collect::<String>());
        assert_eq!(
            read(&at_limit).registrations[0].contacts.len(),
            MAX_CONTACTS
        );
        let deep = format!(
            "<reginfo {NS} version='1' state='full'>{}{}</reginfo>",
            "<x>".repeat(MAX_DEPTH - 1),
            "</x>".repeat(MAX_DEPTH - 1)
        );
        assert!(read(&deep).registrations.is_empty());
        // Every variant's reason is distinct, short, Title Case.
        let mut reasons: Vec<&str> = cases.iter().map(|(_, e)| e.reason()).collect();
        reasons.push(E::NotUtf8.reason());
        for r in &reasons {
            assert!(
                r.len() <= 40 && r.split(' ').all(|w| w.as_bytes()[0].is_ascii_uppercase()),
                "{r}"
            );
        }
    }

    #[test]
    fn namespaces_are_resolved() {
        // The default namespace undeclared inside: `contact` there is not ours.
        let body = format!("<reginfo {NS} version='1' state='full'><registration aor='sip:a@b' id='r' state='active'>\
<contact xmlns='' id='1' state='active' event='registered'><uri>sip:a@b</uri></contact>\
<p:contact xmlns:p='urn:ietf:params:xml:ns:reginfo' id='2' state='active' event='registered'><p:uri>sip:c@d</p:uri></p:contact>\
<x:contact xmlns:x='urn:example' id='3'/>\
</registration></reginfo>");
        let info = read(&body);
        let ids: Vec<&[u8]> = info.registrations[0]
            .contacts
            .iter()
            .map(|c| &c.id[..])
            .collect();
        assert_eq!(ids, vec![&b"2"[..]]);
        // A prefix is in scope only inside the element that declares it.
        let body = format!(
            "<reginfo {NS} version='1' state='full'><x xmlns:p='urn:example'/><p:y/></reginfo>"
        );
        assert_eq!(refused(&body), RegInfoError::UnboundPrefix);
    }

    /// Any contact of a simple shape (ids and parameter values of any
    /// characters, every state and event), written then read: the same.
    fn arb_text() -> impl Strategy<Value = Vec<u8>> {
        "[ -~\t\r\né€\u{1F600}]{0,12}".prop_map(String::into_bytes)
    }

    fn arb_contact() -> impl Strategy<Value = RegContact> {
        (
            arb_text(),
            any::<bool>(),
            0usize..9,
            any::<Option<u32>>(),
            prop::option::of(0u16..=1000),
            (
                "sips?",
                "[a-z0-9]{1,8}",
                "[a-z]{1,8}",
                prop::option::of(1u16..=u16::MAX),
            ),
            prop::collection::vec(
                ("[+a-z.-]{1,12}", prop::option::of("[ -~\t\r\né]{1,12}")),
                0..4,
            ),
        )
            .prop_map(
                |(id, active, ev, expires, q, (scheme, user, host, port), params)| {
                    let event = [
                        ContactEvent::Registered,
                        ContactEvent::Created,
                        ContactEvent::Refreshed,
                        ContactEvent::Shortened,
                        ContactEvent::Expired,
                        ContactEvent::Deactivated,
                        ContactEvent::Probation,
                        ContactEvent::Unregistered,
                        ContactEvent::Rejected,
                    ][ev];
                    let port = port.map_or(String::new(), |p| format!(":{p}"));
                    RegContact {
                        id,
                        state: if active {
                            ContactState::Active
                        } else {
                            ContactState::Terminated
                        },
                        event,
                        expires: if event == ContactEvent::Shortened {
                            Some(expires.unwrap_or(0))
                        } else {
                            expires
                        },
                        q,
                        uri: format!("{scheme}:{user}@{host}.example{port};transport=tcp")
                            .into_bytes(),
                        unknown_params: params
                            .into_iter()
                            .map(|(n, v)| (n.into_bytes(), v.map(String::into_bytes)))
                            .collect(),
                    }
                },
            )
    }

    fn arb_info() -> impl Strategy<Value = RegInfo> {
        (
            any::<u32>(),
            any::<bool>(),
            prop::collection::vec(
                (
                    arb_text(),
                    0usize..3,
                    prop::collection::vec((arb_text(), arb_contact()), 0..4),
                ),
                0..4,
            ),
        )
            .prop_map(|(version, full, regs)| RegInfo {
                version,
                state: if full {
                    DocState::Full
                } else {
                    DocState::Partial
                },
                registrations: regs
                    .into_iter()
                    .enumerate()
                    .map(|(i, (id, st, contacts))| Registration {
                        // Distinct by their prefix.
                        aor: format!("sip:u{i}x@example.com").into_bytes(),
                        id: [format!("{i}:").into_bytes(), id].concat(),
                        state: [RegState::Init, RegState::Active, RegState::Terminated][st],
                        contacts: contacts
                            .into_iter()
                            .enumerate()
                            .map(|(k, (cid, c))| RegContact {
                                id: [format!("{k}:").into_bytes(), cid].concat(),
                                ..c
                            })
                            .collect(),
                    })
                    .collect(),
            })
    }

    /// A document with every construct the reader knows, for mutation.
    fn seed() -> Vec<u8> {
        b"<?xml version='1.0'?><!-- c --><r:reginfo xmlns:r='urn:ietf:params:xml:ns:reginfo' xmlns='urn:x' version='3' state='partial'>\
<r:registration aor='sip:a@example.com' id='r&amp;1' state='active'><x a='1'>t<![CDATA[c]]></x>\
<r:contact id='c1' state='active' event='shortened' expires='60' q='0.5'><r:uri> sip:a@192.0.2.1 </r:uri>\
<r:unknown-param name='+g.3gpp.icsi-ref'>&quot;urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.msg&quot;</r:unknown-param>\
<r:unknown-param name='+f'/><?pi x?></r:contact></r:registration></r:reginfo>"
            .to_vec()
    }

    #[test]
    fn the_seed_is_accepted() {
        let info = parse(&seed()).unwrap();
        let c = &info.registrations[0].contacts[0];
        assert_eq!(info.registrations[0].id, b("r&1"));
        assert_eq!(c.uri, b("sip:a@192.0.2.1"));
        assert_eq!(cpm_of(c), CpmServices(CpmServices::MSG));
    }

    proptest! {
        #[test]
        fn written_documents_read_back(info in arb_info()) {
            let text = written(&info);
            prop_assert_eq!(parse(&text), Ok(info));
        }

        /// The seed with a few bytes changed: no panic, and whatever is
        /// accepted writes and reads back the same.
        #[test]
        fn mutated_documents_are_refused_or_round_trip(
            edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..6),
        ) {
            let mut body = seed();
            for (at, op, byte) in edits {
                let i = at.index(body.len() + 1);
                match op {
                    0 if i < body.len() => body[i] = byte,
                    1 => body.insert(i, byte),
                    _ if i < body.len() => { body.remove(i); }
                    _ => {}
                }
            }
            if let Ok(info) = parse(&body) {
                prop_assert_eq!(parse(&written(&info)), Ok(info));
            }
        }

        #[test]
        fn any_bytes_are_refused_or_round_trip(body in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(info) = parse(&body) {
                prop_assert_eq!(parse(&written(&info)), Ok(info));
            }
        }
    }
}
