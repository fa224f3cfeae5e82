//! RFC 5366 recipient lists: the URIs an ad-hoc group INVITE (`Require:
//! recipient-list-invite`) asks the Conversation Server to invite, read
//! from its `application/resource-lists+xml` body (RFC 4826 §3), each with
//! its RFC 5364 `copyControl` (to, cc, bcc).
//!
//! This module owns [`parse`]: the `uri` of every `<entry>` of the
//! `<list>`s (nested lists included) of a `<resource-lists>` document, in
//! document order, or the reason the body is refused.
//!
//! Hand-written rather than a general XML library: the document has one
//! tiny shape (a root, lists, entries with attributes), and a general
//! parser brings what must be refused here anyway (DTDs, entity
//! declarations and their expansion, external references), more work per
//! byte and more allocation than a scanner that keeps two attribute values
//! per entry. The scanner is bounded and fuzzed
//! (`fuzz/fuzz_targets/resource_lists.rs`).
//!
//! What is checked: well-formedness as far as the shape needs it (tags and
//! attribute values terminated, start and end tags matched, one root, no
//! text outside it, no `<` in an attribute value), the predefined entities
//! and character references in the attribute values read, each entry's
//! URI (a SIP, SIPS or tel URI by [`crate::sip::uri::parse`], printable
//! ASCII), no two entries with the same URI.
//!
//! Leniencies: namespaces are not resolved: elements are matched by local
//! name whatever their prefix (`<rl:entry>` or `<entry>`), as are the
//! `uri` and `copyControl` attributes, and `xmlns` declarations are not
//! checked; the XML declaration and processing instructions are skipped
//! unread; comments, CDATA sections, text and the elements this module
//! does not know (`display-name`, extensions) are skipped with their
//! content; the values of other attributes are not decoded; a UTF-8 byte
//! order mark is skipped.
//!
//! Invariants:
//! - [`parse`] never panics and never indexes without a bound: the body is
//!   whatever a client sent;
//! - the work is bounded: at most [`MAX_BODY`] bytes scanned once, at most
//!   [`MAX_DEPTH`] levels of elements, at most [`MAX_ENTRIES`] entries compared
//!   pairwise for duplicates;
//! - every returned URI is a SIP, SIPS or tel URI of printable ASCII (no
//!   whitespace, no control character, no `<`, `>` or `"`), so it can be
//!   written into a Request-URI or a `To` header as it is;
//! - every [`ListError`] text starts `Resource List: ` and is short
//!   printable ASCII without input bytes: it becomes the reason phrase of
//!   a `400 Bad Request`.

use crate::sip::uri::{self, Scheme};
use crate::sip::Span;

/// Largest body accepted (64 KiB): a hundred entries with display names
/// take a few KiB.
pub const MAX_BODY: usize = 64 * 1024;
/// Most entries accepted: every one becomes an INVITE the Conversation
/// Server sends.
pub const MAX_ENTRIES: usize = 100;
/// Deepest element accepted, in levels from the root: `resource-lists`,
/// `list`, `entry`, `display-name` is four; the rest leaves room for a few
/// nested lists.
pub const MAX_DEPTH: usize = 8;

/// One recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The URI, entities decoded.
    pub uri: String,
    pub copy: CopyControl,
}

/// RFC 5364 `copyControl`: how the recipient is shown to the others.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CopyControl {
    /// Listed as a primary recipient (the default without the attribute).
    #[default]
    To,
    /// Listed as a carbon copy.
    Cc,
    /// Not shown to the other recipients.
    Bcc,
}

/// Why a body is not an acceptable recipient list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error("Resource List: body too large")]
    TooLarge,
    #[error("Resource List: not UTF-8")]
    NotUtf8,
    #[error("Resource List: DTD or entity declaration not allowed")]
    Declaration,
    #[error("Resource List: more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    #[error("Resource List: nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("Resource List: unterminated tag")]
    UnterminatedTag,
    #[error("Resource List: unterminated attribute value")]
    UnterminatedAttribute,
    #[error("Resource List: unterminated comment, CDATA or processing instruction")]
    UnterminatedMarkup,
    #[error("Resource List: element not closed")]
    Unclosed,
    #[error("Resource List: malformed XML")]
    Malformed,
    #[error("Resource List: bad entity or character reference")]
    BadReference,
    #[error("Resource List: root element is not resource-lists")]
    NotResourceLists,
    #[error("Resource List: entry outside a list")]
    Misplaced,
    #[error("Resource List: entry-ref and external not supported")]
    Unsupported,
    #[error("Resource List: entry without uri")]
    MissingUri,
    #[error("Resource List: uri or copyControl given twice in an entry")]
    DuplicateAttribute,
    #[error("Resource List: entry uri not a SIP, SIPS or tel URI")]
    BadUri,
    #[error("Resource List: bad copyControl")]
    BadCopyControl,
    #[error("Resource List: duplicate entry")]
    DuplicateEntry,
    #[error("Resource List: no entries")]
    Empty,
}

/// The recipients of a `application/resource-lists+xml` body, in document
/// order; see the module doc for what is checked and what is tolerated.
pub fn parse(body: &[u8]) -> Result<Vec<Entry>, ListError> {
    if body.len() > MAX_BODY {
        return Err(ListError::TooLarge);
    }
    let text = std::str::from_utf8(body).map_err(|_| ListError::NotUtf8)?;
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    let mut scanner = Scanner {
        b: text.as_bytes(),
        pos: 0,
    };
    let mut doc = Document::default();
    while let Some(token) = scanner.next()? {
        doc.token(token)?;
    }
    doc.finish()
}

/// What the scanner hands on. Comments and processing instructions are
/// skipped inside it.
enum Token<'a> {
    /// Character data, undecoded.
    Text(&'a [u8]),
    /// A CDATA section: character data too, but never whitespace only.
    Cdata,
    Start(Start<'a>),
    End(&'a [u8]),
}

/// A start tag (or an empty-element tag) with the raw values of the two
/// attributes read here.
struct Start<'a> {
    name: &'a [u8],
    empty: bool,
    uri: Option<&'a [u8]>,
    copy: Option<&'a [u8]>,
}

struct Scanner<'a> {
    b: &'a [u8],
    pos: usize,
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Bytes of an XML name, loosely: ASCII letters, digits, `-_.:`, and any
/// non-ASCII byte (names may be any Unicode letters; the input is UTF-8).
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':') || b >= 0x80
}

/// The part of a qualified name after its prefix.
fn local(name: &[u8]) -> &[u8] {
    match memchr::memrchr(b':', name) {
        Some(i) => name.get(i + 1..).unwrap_or(&[]),
        None => name,
    }
}

/// Where `needle` starts in `hay` at or after `from`.
fn find(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay.get(from..)?, needle).map(|i| from + i)
}

impl<'a> Scanner<'a> {
    fn rest(&self) -> &'a [u8] {
        self.b.get(self.pos..).unwrap_or(&[])
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    /// The next token, or None at the end of the body.
    fn next(&mut self) -> Result<Option<Token<'a>>, ListError> {
        loop {
            let rest = self.rest();
            if rest.is_empty() {
                return Ok(None);
            }
            if rest.first() != Some(&b'<') {
                let len = memchr::memchr(b'<', rest).unwrap_or(rest.len());
                self.pos += len;
                return Ok(Some(Token::Text(rest.get(..len).unwrap_or(&[]))));
            }
            if rest.starts_with(b"<!--") {
                self.skip_past(4, b"-->")?;
            } else if rest.starts_with(b"<?") {
                self.skip_past(2, b"?>")?;
            } else if rest.starts_with(b"<![CDATA[") {
                self.skip_past(9, b"]]>")?;
                return Ok(Some(Token::Cdata));
            } else if rest.starts_with(b"<!") {
                // DOCTYPE, ENTITY, ELEMENT, ATTLIST, NOTATION: the ways to
                // define entities and defaults we would then have to apply.
                return Err(ListError::Declaration);
            } else if rest.starts_with(b"</") {
                return self.end_tag().map(Some);
            } else {
                return self.start_tag().map(|s| Some(Token::Start(s)));
            }
        }
    }

    /// Skip `open` bytes, then past the next `close`.
    fn skip_past(&mut self, open: usize, close: &[u8]) -> Result<(), ListError> {
        let at = find(self.b, self.pos + open, close).ok_or(ListError::UnterminatedMarkup)?;
        self.pos = at + close.len();
        Ok(())
    }

    fn name(&mut self) -> &'a [u8] {
        let start = self.pos;
        while self.peek().is_some_and(is_name_byte) {
            self.pos += 1;
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

    /// `</name S? >`.
    fn end_tag(&mut self) -> Result<Token<'a>, ListError> {
        self.pos += 2;
        let name = self.name();
        self.skip_space();
        match self.peek() {
            None => Err(ListError::UnterminatedTag),
            Some(b'>') if !name.is_empty() => {
                self.pos += 1;
                Ok(Token::End(name))
            }
            Some(_) => Err(ListError::Malformed),
        }
    }

    /// `<name (S attr S? = S? value)* S? /? >`, keeping `uri` and
    /// `copyControl`.
    fn start_tag(&mut self) -> Result<Start<'a>, ListError> {
        self.pos += 1;
        let name = self.name();
        if name.is_empty() {
            return Err(ListError::Malformed);
        }
        let mut tag = Start {
            name,
            empty: false,
            uri: None,
            copy: None,
        };
        loop {
            let spaced = self.skip_space();
            match self.peek() {
                None => return Err(ListError::UnterminatedTag),
                Some(b'>') => break,
                Some(b'/') => {
                    self.pos += 1;
                    return match self.peek() {
                        Some(b'>') => {
                            self.pos += 1;
                            tag.empty = true;
                            Ok(tag)
                        }
                        None => Err(ListError::UnterminatedTag),
                        Some(_) => Err(ListError::Malformed),
                    };
                }
                // XML requires the space between attributes.
                Some(_) if !spaced => return Err(ListError::Malformed),
                Some(_) => self.attribute(&mut tag)?,
            }
        }
        self.pos += 1;
        Ok(tag)
    }

    /// One `name = "value"` (or `'value'`) into `tag`.
    fn attribute(&mut self, tag: &mut Start<'a>) -> Result<(), ListError> {
        let name = self.name();
        if name.is_empty() {
            return Err(ListError::Malformed);
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
        let len = memchr::memchr(quote, rest).ok_or(ListError::UnterminatedAttribute)?;
        let value = rest.get(..len).unwrap_or(&[]);
        if value.contains(&b'<') {
            return Err(ListError::Malformed);
        }
        self.pos = start + len + 1;
        let slot = match local(name) {
            b"uri" => &mut tag.uri,
            b"copyControl" => &mut tag.copy,
            _ => return Ok(()),
        };
        if slot.replace(value).is_some() {
            return Err(ListError::DuplicateAttribute);
        }
        Ok(())
    }

    /// A tag cut short by the end of the body is unterminated; anything
    /// else in the wrong place is malformed.
    fn malformed_or_unterminated(&self) -> ListError {
        if self.peek().is_none() {
            ListError::UnterminatedTag
        } else {
            ListError::Malformed
        }
    }
}

/// What the parse has seen so far: the open elements and the entries.
#[derive(Default)]
struct Document<'a> {
    open: Vec<&'a [u8]>,
    seen_root: bool,
    entries: Vec<Entry>,
}

impl<'a> Document<'a> {
    fn token(&mut self, token: Token<'a>) -> Result<(), ListError> {
        match token {
            Token::Text(t) if self.open.is_empty() && !t.iter().all(|&b| is_space(b)) => {
                Err(ListError::Malformed)
            }
            Token::Cdata if self.open.is_empty() => Err(ListError::Malformed),
            Token::Text(_) | Token::Cdata => Ok(()),
            Token::End(name) => match self.open.pop() {
                Some(open) if open == name => Ok(()),
                _ => Err(ListError::Malformed),
            },
            Token::Start(tag) => self.start(tag),
        }
    }

    fn start(&mut self, tag: Start<'a>) -> Result<(), ListError> {
        if self.open.len() >= MAX_DEPTH {
            return Err(ListError::TooDeep);
        }
        let parent = self.open.last().map(|p| local(p));
        match (parent, local(tag.name)) {
            (None, _) if self.seen_root => return Err(ListError::Malformed),
            (None, b"resource-lists") => self.seen_root = true,
            (None, _) => return Err(ListError::NotResourceLists),
            (Some(b"list"), b"entry") => self.entry(&tag)?,
            (Some(b"list"), b"entry-ref" | b"external") => return Err(ListError::Unsupported),
            (Some(b"resource-lists" | b"list"), b"list") => {}
            (_, b"entry" | b"entry-ref" | b"external" | b"list") => {
                return Err(ListError::Misplaced)
            }
            _ => {}
        }
        if !tag.empty {
            self.open.push(tag.name);
        }
        Ok(())
    }

    fn entry(&mut self, tag: &Start) -> Result<(), ListError> {
        if self.entries.len() >= MAX_ENTRIES {
            return Err(ListError::TooManyEntries);
        }
        let raw = tag.uri.ok_or(ListError::MissingUri)?;
        let uri = decode(raw)?;
        if !is_recipient_uri(&uri) {
            return Err(ListError::BadUri);
        }
        let copy = match tag.copy {
            None => CopyControl::To,
            Some(raw) => copy_control(&decode(raw)?)?,
        };
        // Compared without case: `sip:Bob@X` and `sip:bob@x` are most
        // likely one person, and refusing the list is the safe side of
        // inviting someone twice.
        if self
            .entries
            .iter()
            .any(|e| e.uri.eq_ignore_ascii_case(&uri))
        {
            return Err(ListError::DuplicateEntry);
        }
        self.entries.push(Entry { uri, copy });
        Ok(())
    }

    fn finish(self) -> Result<Vec<Entry>, ListError> {
        if !self.open.is_empty() {
            Err(ListError::Unclosed)
        } else if !self.seen_root {
            Err(ListError::NotResourceLists)
        } else if self.entries.is_empty() {
            Err(ListError::Empty)
        } else {
            Ok(self.entries)
        }
    }
}

/// A SIP, SIPS or tel URI, printable ASCII without `<`, `>` or `"`.
fn is_recipient_uri(uri: &str) -> bool {
    let b = uri.as_bytes();
    if !b
        .iter()
        .all(|&c| c.is_ascii_graphic() && !matches!(c, b'<' | b'>' | b'"'))
    {
        return false;
    }
    // The body is at most MAX_BODY bytes, so the length fits a Span.
    let Ok(len) = u32::try_from(b.len()) else {
        return false;
    };
    let span = Span { start: 0, end: len };
    matches!(
        uri::parse(b, span).map(|u| u.scheme),
        Some(Scheme::Sip | Scheme::Sips | Scheme::Tel)
    )
}

/// `to`, `cc` or `bcc`, case aside (the schema's values are lowercase;
/// reading `BCC` as `to` would show a hidden recipient to everyone).
fn copy_control(value: &str) -> Result<CopyControl, ListError> {
    let v = value.trim_matches(|c| c == ' ');
    if v.eq_ignore_ascii_case("to") {
        Ok(CopyControl::To)
    } else if v.eq_ignore_ascii_case("cc") {
        Ok(CopyControl::Cc)
    } else if v.eq_ignore_ascii_case("bcc") {
        Ok(CopyControl::Bcc)
    } else {
        Err(ListError::BadCopyControl)
    }
}

/// An attribute value as a reader sees it (XML 1.0 §3.3.3): references
/// replaced, literal TAB, CR and LF normalised to spaces. Only the five
/// predefined entities are known: with no DTD there are no others.
fn decode(raw: &[u8]) -> Result<String, ListError> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(amp) = memchr::memchr(b'&', rest) {
        push_normalised(&mut out, rest.get(..amp).unwrap_or(&[]));
        let after = rest.get(amp + 1..).unwrap_or(&[]);
        // The longest reference is `&#x10FFFF;` or `&#1114111;`; leading
        // zeros are allowed but bounded here.
        let semi = memchr::memchr(b';', after.get(..16).unwrap_or(after))
            .ok_or(ListError::BadReference)?;
        out.push(reference(after.get(..semi).unwrap_or(&[]))?);
        rest = after.get(semi + 1..).unwrap_or(&[]);
    }
    push_normalised(&mut out, rest);
    Ok(out)
}

/// The character `&name;` stands for (`sip::xml`).
fn reference(name: &[u8]) -> Result<char, ListError> {
    crate::sip::xml::reference(name).ok_or(ListError::BadReference)
}

/// Append literal attribute text, TAB, CR and LF as spaces. `raw` is a
/// slice of valid UTF-8 cut at ASCII delimiters, so it is UTF-8 itself.
fn push_normalised(out: &mut String, raw: &[u8]) {
    let s = std::str::from_utf8(raw).unwrap_or("");
    out.extend(s.chars().map(|c| match c {
        '\t' | '\r' | '\n' => ' ',
        c => c,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn uris(body: &str) -> Vec<(String, CopyControl)> {
        parse(body.as_bytes())
            .unwrap_or_else(|e| panic!("{e}: {body}"))
            .into_iter()
            .map(|e| (e.uri, e.copy))
            .collect()
    }

    fn refused(body: &str) -> ListError {
        match parse(body.as_bytes()) {
            Ok(entries) => panic!("accepted {entries:?}: {body}"),
            Err(e) => e,
        }
    }

    /// A one-list document around `entries`.
    fn list(entries: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<resource-lists xmlns="urn:ietf:params:xml:ns:resource-lists"><list>{entries}</list></resource-lists>"#
        )
    }

    fn s(v: &str) -> String {
        v.to_string()
    }

    /// A list in the style of the RFC 5366 and RFC 5364 examples: a
    /// default namespace, copyControl and anonymize in their own.
    #[test]
    fn an_rfc5366_recipient_list() {
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<resource-lists xmlns="urn:ietf:params:xml:ns:resource-lists"
        xmlns:cp="urn:ietf:params:xml:ns:copycontrol">
  <list>
    <entry uri="sip:bill@example.com" cp:copyControl="to" />
    <entry uri="sip:randy@example.net" cp:copyControl="to" cp:anonymize="true"/>
    <entry uri="sip:joe@example.org" cp:copyControl="cc" />
    <entry uri="sip:ted@example.net" cp:copyControl="bcc" />
    <entry uri="tel:+1-555-0100"/>
  </list>
</resource-lists>
"#;
        assert_eq!(
            uris(body),
            vec![
                (s("sip:bill@example.com"), CopyControl::To),
                (s("sip:randy@example.net"), CopyControl::To),
                (s("sip:joe@example.org"), CopyControl::Cc),
                (s("sip:ted@example.net"), CopyControl::Bcc),
                (s("tel:+1-555-0100"), CopyControl::To),
            ]
        );
    }

    #[test]
    fn prefixed_names_display_names_comments_and_nested_lists() {
        let body = "\u{FEFF}<?xml version='1.0'?>\r\n<!-- an ad-hoc group -->\r\n\
<rl:resource-lists xmlns:rl='urn:ietf:params:xml:ns:resource-lists' xmlns:cp='urn:ietf:params:xml:ns:copycontrol'>\r\n\
 <rl:list name='friends'>\r\n\
  <rl:display-name>Friends &amp; <b>family</b></rl:display-name>\r\n\
  <rl:entry uri='sips:alice@example.com' cp:copyControl = 'CC'>\r\n\
   <rl:display-name xml:lang='en'>Alice <![CDATA[<the first>]]></rl:display-name>\r\n\
   <!-- <rl:entry uri='sip:ignored@example.com'/> -->\r\n\
  </rl:entry>\r\n\
  <?app ignore me?>\r\n\
  <rl:list><rl:entry\turi=\"sip:bob@example.com\"\n/></rl:list >\r\n\
 </rl:list>\r\n\
</rl:resource-lists>\r\n";
        assert_eq!(
            uris(body),
            vec![
                (s("sips:alice@example.com"), CopyControl::Cc),
                (s("sip:bob@example.com"), CopyControl::To),
            ]
        );
    }

    #[test]
    fn references_in_attribute_values_are_decoded() {
        let body = list(concat!(
            r#"<entry uri="sip:&#97;l&#x69;ce@example.com"/>"#,
            r#"<entry uri="sip:bob@example.com;transport=tcp?Subject=a&amp;Priority=urgent"/>"#,
            r#"<entry uri="sip:carol@example.com" copyControl="&#98;cc"/>"#,
            r#"<entry uri='sip:dave@example.com' other="&undefined; <"/>"#,
        ));
        let got = uris(&body.replace(r#" other="&undefined; <""#, r#" other="&undefined;""#));
        assert_eq!(
            got,
            vec![
                (s("sip:alice@example.com"), CopyControl::To),
                (
                    s("sip:bob@example.com;transport=tcp?Subject=a&Priority=urgent"),
                    CopyControl::To
                ),
                (s("sip:carol@example.com"), CopyControl::Bcc),
                (s("sip:dave@example.com"), CopyControl::To),
            ]
        );
        // A raw `<` in any attribute value is not XML.
        assert_eq!(refused(&body), ListError::Malformed);
    }

    #[test]
    fn size_count_and_depth_bounds() {
        let mut big = list(r#"<entry uri="sip:a@example.com"/>"#);
        big.push_str(&" ".repeat(MAX_BODY));
        assert_eq!(refused(&big), ListError::TooLarge);

        let entries = |n: usize| -> String {
            (0..n)
                .map(|i| format!(r#"<entry uri="sip:u{i}@example.com"/>"#))
                .collect()
        };
        assert_eq!(uris(&list(&entries(MAX_ENTRIES))).len(), MAX_ENTRIES);
        assert_eq!(
            refused(&list(&entries(MAX_ENTRIES + 1))),
            ListError::TooManyEntries
        );

        let nested = |n: usize| {
            format!(
                "<resource-lists>{}<entry uri='sip:a@b'/>{}</resource-lists>",
                "<list>".repeat(n),
                "</list>".repeat(n)
            )
        };
        // The entry counts as a level: root, six lists and it fit.
        assert_eq!(uris(&nested(MAX_DEPTH - 2)).len(), 1);
        assert_eq!(refused(&nested(MAX_DEPTH - 1)), ListError::TooDeep);
        let deep_display = list(&format!(
            "<entry uri='sip:a@b'>{}</entry>",
            "<x>".repeat(MAX_DEPTH)
        ));
        assert_eq!(refused(&deep_display), ListError::TooDeep);
    }

    #[test]
    fn declarations_are_refused() {
        for decl in [
            r#"<!DOCTYPE resource-lists [<!ENTITY a "sip:x@y">]>"#,
            "<!DOCTYPE resource-lists SYSTEM 'http://example.com/x.dtd'>",
            r#"<!ENTITY a "b">"#,
        ] {
            let body = format!(
                "<?xml version='1.0'?>{decl}{}",
                list("<entry uri='sip:a@b'/>")
            );
            assert_eq!(refused(&body), ListError::Declaration, "{decl}");
        }
        assert_eq!(
            refused(&list(
                "<entry uri='sip:a@b'/><!ATTLIST entry uri CDATA 'sip:x@y'>"
            )),
            ListError::Declaration
        );
    }

    #[test]
    fn unterminated_markup_is_refused() {
        let cut = |body: &str| refused(body);
        assert_eq!(
            cut("<resource-lists><list><entry uri='sip:a@b'"),
            ListError::UnterminatedTag
        );
        assert_eq!(
            cut("<resource-lists><list><entry uri='sip:a@b'/"),
            ListError::UnterminatedTag
        );
        assert_eq!(
            cut("<resource-lists><list><entry uri"),
            ListError::UnterminatedTag
        );
        assert_eq!(
            cut("<resource-lists><list></list"),
            ListError::UnterminatedTag
        );
        assert_eq!(
            cut("<resource-lists><list><entry uri='sip:a@b/>"),
            ListError::UnterminatedAttribute
        );
        assert_eq!(
            cut(r#"<resource-lists><list><entry uri="sip:a@b'/>"#),
            ListError::UnterminatedAttribute
        );
        assert_eq!(
            cut("<resource-lists><!-- </resource-lists>"),
            ListError::UnterminatedMarkup
        );
        assert_eq!(cut("<?xml version='1.0'"), ListError::UnterminatedMarkup);
        assert_eq!(
            cut("<resource-lists><![CDATA[x</resource-lists>"),
            ListError::UnterminatedMarkup
        );
        assert_eq!(
            cut("<resource-lists><list><entry uri='sip:a@b'/></list>"),
            ListError::Unclosed
        );
    }

    #[test]
    fn malformed_xml_is_refused() {
        for body in [
            "<resource-lists><list><entry uri='sip:a@b'/></resource-lists></list>",
            "<resource-lists><list><entry uri='sip:a@b'/></list></resource-lists><resource-lists/>",
            "<resource-lists><list><entry uri='sip:a@b'/></list></resource-lists>junk",
            "junk<resource-lists><list><entry uri='sip:a@b'/></list></resource-lists>",
            "<![CDATA[ ]]><resource-lists><list><entry uri='sip:a@b'/></list></resource-lists>",
            "<resource-lists><list><entry uri='sip:a@b'/></list></resource-lists></x>",
            "<resource-lists><list><entry uri='sip:a@b'copyControl='to'/></list></resource-lists>",
            "<resource-lists><list><entry uri 'sip:a@b'/></list></resource-lists>",
            "<resource-lists><list><entry uri=sip:a@b/></list></resource-lists>",
            "<resource-lists><list><entry =''/></list></resource-lists>",
            "<resource-lists><list>< entry uri='sip:a@b'/></list></resource-lists>",
            "<resource-lists><list><entry uri='sip:a@b' / ></list></resource-lists>",
            "<resource-lists><list><entry uri='sip:a@b'/></ list></resource-lists>",
            "<resource-lists><list><entry uri='sip:a@b'/></list x></resource-lists>",
        ] {
            assert_eq!(refused(body), ListError::Malformed, "{body}");
        }
    }

    #[test]
    fn the_document_shape_is_checked() {
        assert_eq!(
            refused("<lists><list><entry uri='sip:a@b'/></list></lists>"),
            ListError::NotResourceLists
        );
        assert_eq!(refused(""), ListError::NotResourceLists);
        assert_eq!(
            refused("<?xml version='1.0'?> <!-- -->"),
            ListError::NotResourceLists
        );
        assert_eq!(
            refused("<resource-lists><entry uri='sip:a@b'/></resource-lists>"),
            ListError::Misplaced
        );
        assert_eq!(
            refused(&list("<entry uri='sip:a@b'><entry uri='sip:c@d'/></entry>")),
            ListError::Misplaced
        );
        assert_eq!(
            refused(&list("<entry-ref ref='users/alice/list'/>")),
            ListError::Unsupported
        );
        assert_eq!(
            refused(&list("<external anchor='http://example.com/list'/>")),
            ListError::Unsupported
        );
        assert_eq!(refused(&list("")), ListError::Empty);
        assert_eq!(refused("<resource-lists/>"), ListError::Empty);
        assert_eq!(parse(&[b'<', 0xff, b'>']), Err(ListError::NotUtf8));
    }

    #[test]
    fn entries_need_one_good_distinct_uri() {
        assert_eq!(refused(&list("<entry/>")), ListError::MissingUri);
        assert_eq!(
            refused(&list("<entry name='x'></entry>")),
            ListError::MissingUri
        );
        assert_eq!(
            refused(&list("<entry uri='sip:a@b' uri='sip:c@d'/>")),
            ListError::DuplicateAttribute
        );
        assert_eq!(
            refused(&list(
                "<entry uri='sip:a@b' cp:copyControl='to' copyControl='cc'/>"
            )),
            ListError::DuplicateAttribute
        );
        for bad in [
            "",
            "sip:",
            "mailto:a@b",
            "http://example.com/",
            "alice@example.com",
            "sip:a b@example.com",
            "sip:a@example.com&#9;",
            "sip:a@example.com&#10;",
            "sip:a@exa\tmple.com",
            "sip:a@example.com&#x7f;",
            "sip:a@example.com&#133;",
            "sip:&lt;a@example.com",
            "sip:a@example.com&gt;",
            "sip:a@example.com&quot;",
            "sip:ä@example.com",
            "im:alice@example.com",
        ] {
            let body = list(&format!("<entry uri=\"{bad}\"/>"));
            assert_eq!(refused(&body), ListError::BadUri, "{bad:?}");
        }
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
            "&#+9;",
            "&#0000000000000097;",
        ] {
            let body = list(&format!("<entry uri=\"sip:a{bad}@example.com\"/>"));
            assert_eq!(refused(&body), ListError::BadReference, "{bad:?}");
        }
        for bad in ["", "bc", "to cc", "from"] {
            let body = list(&format!("<entry uri='sip:a@b' copyControl='{bad}'/>"));
            assert_eq!(refused(&body), ListError::BadCopyControl, "{bad:?}");
        }
        assert_eq!(
            refused(&list("<entry uri='sip:a@b.com'/><entry uri='tel:+1'/><entry uri='SIP:A@B.COM' cp:copyControl='bcc'/>")),
            ListError::DuplicateEntry
        );
        assert_eq!(
            refused(&list(
                "<entry uri='sip:a@b.com'/><list><entry uri='sip:&#97;@b.com'/></list>"
            )),
            ListError::DuplicateEntry
        );
    }

    #[test]
    fn error_texts_are_reason_phrases() {
        let all = [
            ListError::TooLarge,
            ListError::NotUtf8,
            ListError::Declaration,
            ListError::TooManyEntries,
            ListError::TooDeep,
            ListError::UnterminatedTag,
            ListError::UnterminatedAttribute,
            ListError::UnterminatedMarkup,
            ListError::Unclosed,
            ListError::Malformed,
            ListError::BadReference,
            ListError::NotResourceLists,
            ListError::Misplaced,
            ListError::Unsupported,
            ListError::MissingUri,
            ListError::DuplicateAttribute,
            ListError::BadUri,
            ListError::BadCopyControl,
            ListError::DuplicateEntry,
            ListError::Empty,
        ];
        for e in all {
            let t = e.to_string();
            assert!(t.starts_with("Resource List: ") && t.len() <= 80, "{t}");
            assert!(t.bytes().all(|b| b == b' ' || b.is_ascii_graphic()), "{t}");
        }
    }

    /// Every construct the scanner knows, for the mutation test.
    const SEED: &str = r#"<?xml version="1.0"?><!-- c --><rl:resource-lists xmlns:rl="urn:ietf:params:xml:ns:resource-lists" xmlns:cp="urn:ietf:params:xml:ns:copycontrol"><rl:list><rl:entry uri="sip:&#97;@example.com" cp:copyControl='bcc'><rl:display-name>A &amp; <![CDATA[<B>]]></rl:display-name></rl:entry><?pi x?><list><entry uri='tel:+1-555-0100'/></list><entry uri="sips:b@example.com;transport=tls?x=1&amp;y=2" copyControl=" cc "/></rl:list></rl:resource-lists>"#;

    #[test]
    fn the_mutation_seed_is_accepted() {
        assert_eq!(
            uris(SEED),
            vec![
                (s("sip:a@example.com"), CopyControl::Bcc),
                (s("tel:+1-555-0100"), CopyControl::To),
                (
                    s("sips:b@example.com;transport=tls?x=1&y=2"),
                    CopyControl::Cc
                ),
            ]
        );
    }

    proptest! {
        /// A list written from any distinct URIs of a simple shape, with
        /// any copyControl, in either quoting and with or without
        /// prefixes, reads back as written.
        #[test]
        fn written_lists_read_back(
            users in prop::collection::btree_set("[a-z0-9]{1,8}", 1..20),
            copies in prop::collection::vec(0u8..4, 20),
            prefixed in any::<bool>(),
            single in any::<bool>(),
        ) {
            let (p, q) = (if prefixed { "rl:" } else { "" }, if single { '\'' } else { '"' });
            let ns = if prefixed { "xmlns:rl" } else { "xmlns" };
            let mut body = format!("<{p}resource-lists {ns}='urn:ietf:params:xml:ns:resource-lists'><{p}list>");
            let mut want = Vec::new();
            for (user, &c) in users.iter().zip(&copies) {
                let uri = format!("sip:{user}@example.com");
                let (attr, copy) = match c {
                    0 => (String::new(), CopyControl::To),
                    1 => (format!(" cp:copyControl={q}to{q}"), CopyControl::To),
                    2 => (format!(" cp:copyControl={q}cc{q}"), CopyControl::Cc),
                    _ => (format!(" cp:copyControl={q}bcc{q}"), CopyControl::Bcc),
                };
                body.push_str(&format!("<{p}entry uri={q}{uri}{q}{attr}><{p}display-name>{user} &amp; co</{p}display-name></{p}entry>"));
                want.push(Entry { uri, copy });
            }
            body.push_str(&format!("</{p}list></{p}resource-lists>"));
            prop_assert_eq!(parse(body.as_bytes()), Ok(want));
        }

        /// A realistic list with a few bytes replaced, inserted or removed
        /// (where random bytes seldom reach): no panic, and an accepted
        /// result keeps the invariants of the module doc.
        #[test]
        fn mutated_lists_are_refused_or_sound(
            edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..6),
        ) {
            let mut body = SEED.as_bytes().to_vec();
            for (at, op, byte) in edits {
                let i = at.index(body.len() + 1);
                match op {
                    0 if i < body.len() => body[i] = byte,
                    1 => body.insert(i, byte),
                    _ if i < body.len() => { body.remove(i); }
                    _ => {}
                }
            }
            if let Ok(entries) = parse(&body) {
                prop_assert!(!entries.is_empty() && entries.len() <= MAX_ENTRIES);
                for (i, e) in entries.iter().enumerate() {
                    prop_assert!(is_recipient_uri(&e.uri), "{:?}", e.uri);
                    prop_assert!(entries[..i].iter().all(|o| !o.uri.eq_ignore_ascii_case(&e.uri)));
                }
            }
        }

        /// Any bytes: no panic, and what is accepted is within bounds.
        #[test]
        fn any_bytes_are_refused_or_bounded(body in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(entries) = parse(&body) {
                prop_assert!(!entries.is_empty() && entries.len() <= MAX_ENTRIES);
            }
        }
    }
}
