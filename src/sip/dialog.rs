//! RFC 3261 §12 dialogs, UAC and UAS, and the requests written inside
//! them; a bounded table of them.
//!
//! A [`Dialog`] holds what §12.1 says a dialog is: its id (Call-ID, local
//! tag, remote tag), the local and remote sequence numbers, the route set
//! (Record-Route of the request in order for the UAS, of the response
//! reversed for the UAC), the remote target (the peer's Contact URI), and
//! the From/To values its requests carry. It is early after a provisional
//! with a To tag, confirmed by a 2xx, terminated by a BYE.
//!
//! Requests inside a dialog (§12.2.1.1) are written into the caller's
//! buffer with the right Request-URI and Route headers (loose routing, and
//! strict routing for a first route without `lr`); incoming ones are
//! checked against the remote sequence number (§12.2.2: a lower one is
//! answered 500). The ACK of a 2xx and the 2xx retransmissions that wait
//! for it ([`AckWait`], §13.3.1.4) are the dialog user's, not the
//! transaction layer's.
//!
//! Bytes are copied out of the messages once, when a dialog is made or its
//! target refreshed; the table is bounded like the transaction table.

use crate::sip::hash::KeyedBuild;
use crate::sip::params::{find_param, values};
use crate::sip::rewrite::Out;
use crate::sip::scan::{header_lines, Header, Message, Method, StartLine};
use crate::sip::transaction::{write_response, ResponseSpec, MAX_FORWARDS};
use crate::sip::uri::{self, addr_of, name_addr};
use crate::sip::Span;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Most Record-Route values a dialog keeps.
pub const MAX_ROUTE_SET: usize = 16;

/// Most dialogs under one Call-ID: the forks of one INVITE (each answers
/// with its own To tag).
pub const MAX_PER_CALL_ID: usize = 16;

/// Why a dialog could not be made, used or written to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    #[error("no tag where the dialog needs one (From of the request, To of the response)")]
    MissingTag,
    #[error("no Contact URI for the remote target")]
    MissingContact,
    #[error("a Contact or Record-Route URI that is no SIP URI or holds whitespace")]
    BadUri,
    #[error("the request already has a To tag: it is inside a dialog")]
    InDialog,
    #[error("a {0} response creates no dialog")]
    NotDialogCreating(u16),
    #[error("more than {MAX_ROUTE_SET} Record-Route values")]
    TooManyRoutes,
    #[error("CSeq {cseq} not above the remote sequence number {remote}")]
    OutOfOrder { cseq: u32, remote: u32 },
    #[error("local CSeq would reach 2^31")]
    CSeqExhausted,
    #[error("no INVITE to acknowledge")]
    NoInvite,
    #[error("the dialog is terminated")]
    Terminated,
    #[error("the message does not fit the output buffer")]
    TooLarge,
    #[error("dialog table full")]
    TableFull,
    #[error("a dialog with this id exists")]
    Exists,
    #[error("more than {MAX_PER_CALL_ID} dialogs under one Call-ID")]
    TooManyForks,
}

impl DialogError {
    /// The status a UAS answers a request with when this is why it cannot
    /// go into (or make) a dialog.
    pub fn status(self) -> u16 {
        match self {
            // §12.2.2: out of order (and a sequence we cannot continue).
            DialogError::OutOfOrder { .. } | DialogError::CSeqExhausted => 500,
            // §12.2.2: no such dialog (any more).
            DialogError::Terminated | DialogError::NoInvite => 481,
            DialogError::TableFull | DialogError::TooManyForks => 503,
            DialogError::TooLarge => 513,
            _ => 400,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Uac,
    Uas,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialogState {
    Early,
    Confirmed,
    Terminated,
}

/// What an in-dialog request is to the dialog (after its CSeq check).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InDialog {
    /// A request to answer; a target refresh has already moved the remote
    /// target.
    Request,
    /// A BYE: the dialog is now terminated (answer it 200, §15.1.2).
    Bye,
    /// The ACK of a 2xx; `current` when it acknowledges the latest INVITE
    /// (stop that 2xx's [`AckWait`]).
    Ack { current: bool },
}

/// One dialog (§12.1). Owned bytes: independent of the messages that made
/// it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dialog {
    role: Role,
    state: DialogState,
    call_id: Vec<u8>,
    local_tag: Vec<u8>,
    remote_tag: Vec<u8>,
    /// The From value of our requests: local URI and our tag.
    local_party: Vec<u8>,
    /// The To value of our requests: remote URI and the remote tag.
    remote_party: Vec<u8>,
    local_seq: Option<u32>,
    remote_seq: Option<u32>,
    /// The CSeq of the latest INVITE (ours as UAC, theirs as UAS): what an
    /// ACK of its 2xx carries.
    invite_seq: Option<u32>,
    remote_target: Vec<u8>,
    /// Route values (name-addr text) in the order our requests list them.
    route_set: Vec<Vec<u8>>,
    /// Our Contact value for target refresh requests and responses.
    local_contact: Vec<u8>,
}

/// The `tag` of a From/To value.
fn tag_of(buf: &[u8], value: Span) -> Option<Span> {
    let (_, params) = name_addr(buf, value);
    find_param(buf, params, b"tag")
        .and_then(|p| p.value)
        .filter(|v| !v.is_empty())
}

/// The From and To tags of `m` (the scan parses them for requests only).
fn tags(buf: &[u8], m: &Message) -> (Option<Span>, Option<Span>) {
    if m.is_request() {
        (m.from_tag, m.to_tag)
    } else {
        (tag_of(buf, m.from), tag_of(buf, m.to))
    }
}

/// Is `uri` one we may put in a Request-URI: a URI the parser accepts,
/// without whitespace or control bytes (a folded or spaced URI from the
/// peer would split our request line).
fn is_clean_uri(buf: &[u8], uri: Span) -> bool {
    let u = uri.get(buf);
    !u.is_empty() && u.iter().all(|b| b.is_ascii_graphic()) && uri::parse(buf, uri).is_some()
}

/// The Record-Route values of `m`, in order; each one's URI clean (a
/// strict route's becomes a Request-URI).
fn record_routes(buf: &[u8], m: &Message) -> Result<Vec<Vec<u8>>, DialogError> {
    let mut routes = Vec::new();
    for h in header_lines(buf, m.headers) {
        if h.kind != Header::RecordRoute {
            continue;
        }
        for v in values(buf, h.value) {
            if routes.len() == MAX_ROUTE_SET {
                return Err(DialogError::TooManyRoutes);
            }
            if !addr_of(buf, v).is_some_and(|u| is_clean_uri(buf, u)) {
                return Err(DialogError::BadUri);
            }
            routes.push(v.get(buf).to_vec());
        }
    }
    Ok(routes)
}

/// The URI of the first Contact of `m`: `Ok(None)` without one.
fn contact_uri(buf: &[u8], m: &Message) -> Result<Option<Span>, DialogError> {
    let Some(h) = header_lines(buf, m.headers).find(|h| h.kind == Header::Contact) else {
        return Ok(None);
    };
    let uri = values(buf, h.value).next().and_then(|v| addr_of(buf, v));
    match uri {
        Some(u) if is_clean_uri(buf, u) => Ok(Some(u)),
        _ => Err(DialogError::BadUri),
    }
}

fn status(m: &Message) -> Option<u16> {
    match m.start {
        StartLine::Response { code } => Some(code),
        StartLine::Request { .. } => None,
    }
}

/// The methods whose Contact refreshes the remote target (§12.2, RFC 6665).
fn is_target_refresh(method: Method) -> bool {
    matches!(
        method,
        Method::Invite | Method::Update | Method::Subscribe | Method::Notify | Method::Refer
    )
}

/// The next CSeq after `seq` (1 for a sequence not begun), below 2^31.
fn next_seq(seq: Option<u32>) -> Result<u32, DialogError> {
    match seq {
        None => Ok(1),
        Some(s) => s
            .checked_add(1)
            .filter(|n| *n < 1 << 31)
            .ok_or(DialogError::CSeqExhausted),
    }
}

impl Dialog {
    /// The UAC's dialog from our `request` and a `response` to it with a
    /// To tag (§12.1.2): early for 101-199, confirmed for 2xx.
    /// `local_contact` is our Contact value (`<sip:...>`).
    pub fn uac(
        request: &[u8],
        rq: &Message,
        response: &[u8],
        rs: &Message,
        local_contact: &[u8],
    ) -> Result<Dialog, DialogError> {
        let code = status(rs).unwrap_or(0);
        if !(101..=299).contains(&code) {
            return Err(DialogError::NotDialogCreating(code));
        }
        let local_tag = rq.from_tag.ok_or(DialogError::MissingTag)?;
        let remote_tag = tags(response, rs).1.ok_or(DialogError::MissingTag)?;
        let mut route_set = record_routes(response, rs)?;
        route_set.reverse();
        let remote_target = match (contact_uri(response, rs)?, rq.start) {
            (Some(c), _) => c.get(response),
            // An early dialog from a provisional without Contact: the
            // Request-URI until the 2xx says better.
            (None, StartLine::Request { uri, .. }) if code < 200 => uri.get(request),
            _ => return Err(DialogError::MissingContact),
        };
        let is_invite = rq.method() == Some(Method::Invite);
        Ok(Dialog {
            role: Role::Uac,
            state: if code < 200 {
                DialogState::Early
            } else {
                DialogState::Confirmed
            },
            call_id: rq.call_id.get(request).to_vec(),
            local_tag: local_tag.get(request).to_vec(),
            remote_tag: remote_tag.get(response).to_vec(),
            local_party: rq.from.get(request).to_vec(),
            remote_party: rs.to.get(response).to_vec(),
            local_seq: Some(rq.cseq_num),
            remote_seq: None,
            invite_seq: is_invite.then_some(rq.cseq_num),
            remote_target: remote_target.to_vec(),
            route_set,
            local_contact: local_contact.to_vec(),
        })
    }

    /// The UAS's dialog from a dialog-creating `request` (no To tag yet),
    /// with our `local_tag` (§12.1.1). Early until [`Dialog::confirm`].
    pub fn uas(
        request: &[u8],
        m: &Message,
        local_tag: &[u8],
        local_contact: &[u8],
    ) -> Result<Dialog, DialogError> {
        if m.to_tag.is_some() {
            return Err(DialogError::InDialog);
        }
        let remote_tag = m.from_tag.ok_or(DialogError::MissingTag)?;
        if local_tag.is_empty() {
            return Err(DialogError::MissingTag);
        }
        let remote_target = contact_uri(request, m)?.ok_or(DialogError::MissingContact)?;
        let mut local_party = m.to.get(request).to_vec();
        local_party.extend_from_slice(b";tag=");
        local_party.extend_from_slice(local_tag);
        let is_invite = m.method() == Some(Method::Invite);
        Ok(Dialog {
            role: Role::Uas,
            state: DialogState::Early,
            call_id: m.call_id.get(request).to_vec(),
            local_tag: local_tag.to_vec(),
            remote_tag: remote_tag.get(request).to_vec(),
            local_party,
            remote_party: m.from.get(request).to_vec(),
            local_seq: None,
            remote_seq: Some(m.cseq_num),
            invite_seq: is_invite.then_some(m.cseq_num),
            remote_target: remote_target.get(request).to_vec(),
            route_set: record_routes(request, m)?,
            local_contact: local_contact.to_vec(),
        })
    }

    pub fn role(&self) -> Role {
        self.role
    }
    pub fn state(&self) -> DialogState {
        self.state
    }
    pub fn call_id(&self) -> &[u8] {
        &self.call_id
    }
    pub fn local_tag(&self) -> &[u8] {
        &self.local_tag
    }
    pub fn remote_tag(&self) -> &[u8] {
        &self.remote_tag
    }
    pub fn local_seq(&self) -> Option<u32> {
        self.local_seq
    }
    pub fn remote_seq(&self) -> Option<u32> {
        self.remote_seq
    }
    pub fn remote_target(&self) -> &[u8] {
        &self.remote_target
    }
    /// The route set in the order our requests carry it.
    pub fn route_set(&self) -> impl Iterator<Item = &[u8]> {
        self.route_set.iter().map(|r| &r[..])
    }

    /// The UAS sent its 2xx: the dialog is confirmed.
    pub fn confirm(&mut self) {
        if self.state == DialogState::Early {
            self.state = DialogState::Confirmed;
        }
    }

    /// A response to a request of ours inside this dialog, or the 2xx that
    /// confirms an early one. A 2xx confirms and (early) recomputes the
    /// route set (§13.2.2.4) or (target refresh) moves the remote target;
    /// a 481 or 408 ends the dialog (§12.2.1.2).
    pub fn on_response(
        &mut self,
        method: Method,
        response: &[u8],
        rs: &Message,
    ) -> Result<(), DialogError> {
        let code = status(rs).ok_or(DialogError::NotDialogCreating(0))?;
        if matches!(code, 408 | 481) {
            self.state = DialogState::Terminated;
            return Ok(());
        }
        if !(200..=299).contains(&code) {
            return Ok(());
        }
        if self.state == DialogState::Early && self.role == Role::Uac {
            let mut routes = record_routes(response, rs)?;
            routes.reverse();
            self.route_set = routes;
            self.state = DialogState::Confirmed;
        }
        if is_target_refresh(method) {
            if let Some(c) = contact_uri(response, rs)? {
                self.remote_target = c.get(response).to_vec();
            }
        }
        Ok(())
    }

    /// A request received inside this dialog (§12.2.2): its CSeq must be
    /// above the remote sequence number (else 500, [`DialogError::status`]);
    /// a BYE terminates, a target refresh moves the remote target. ACK and
    /// CANCEL carry their INVITE's CSeq and are not sequenced.
    pub fn on_request(&mut self, buf: &[u8], m: &Message) -> Result<InDialog, DialogError> {
        if self.state == DialogState::Terminated {
            return Err(DialogError::Terminated);
        }
        let method = m.method().unwrap_or(Method::Other);
        match method {
            Method::Ack => {
                let current = self.invite_seq == Some(m.cseq_num);
                return Ok(InDialog::Ack { current });
            }
            Method::Cancel => return Ok(InDialog::Request),
            _ => {}
        }
        if let Some(remote) = self.remote_seq.filter(|r| m.cseq_num <= *r) {
            return Err(DialogError::OutOfOrder {
                cseq: m.cseq_num,
                remote,
            });
        }
        // Checked before anything changes: a refused request leaves the
        // dialog as it was.
        let refresh = if is_target_refresh(method) {
            contact_uri(buf, m)?
        } else {
            None
        };
        self.remote_seq = Some(m.cseq_num);
        if method == Method::Bye {
            self.state = DialogState::Terminated;
            return Ok(InDialog::Bye);
        }
        if method == Method::Invite {
            self.invite_seq = Some(m.cseq_num);
        }
        if let Some(c) = refresh {
            self.remote_target = c.get(buf).to_vec();
        }
        Ok(InDialog::Request)
    }

    /// Write a request of ours inside the dialog (§12.2.1.1): `method`
    /// (e.g. `b"BYE"`, `b"MESSAGE"`, `b"INVITE"`, `b"UPDATE"`), our `via`
    /// value (`SIP/2.0/UDP host:port;branch=...`), more header lines (each
    /// ending CRLF) and a body. The next local CSeq is used (and kept only
    /// if the request fit); a BYE terminates the dialog (§15.1.1).
    pub fn write_request(
        &mut self,
        method: &[u8],
        via: &[u8],
        headers: &[&[u8]],
        body: &[u8],
        out: &mut [u8],
    ) -> Result<usize, DialogError> {
        if self.state == DialogState::Terminated {
            return Err(DialogError::Terminated);
        }
        let seq = next_seq(self.local_seq)?;
        let kind = Method::from_bytes(method);
        let lines = Lines {
            method,
            seq,
            via,
            contact: is_target_refresh(kind),
            headers,
            body,
        };
        let n = self.write(&lines, out).ok_or(DialogError::TooLarge)?;
        self.local_seq = Some(seq);
        match kind {
            Method::Invite => self.invite_seq = Some(seq),
            Method::Bye => self.state = DialogState::Terminated,
            _ => {}
        }
        Ok(n)
    }

    /// Write the ACK of the 2xx to our latest INVITE (§13.2.2.4): that
    /// INVITE's CSeq number, routed like any request of the dialog; `body`
    /// is the answer when the INVITE carried no offer.
    pub fn write_ack(
        &self,
        via: &[u8],
        headers: &[&[u8]],
        body: &[u8],
        out: &mut [u8],
    ) -> Result<usize, DialogError> {
        let seq = self.invite_seq.ok_or(DialogError::NoInvite)?;
        let lines = Lines {
            method: b"ACK",
            seq,
            via,
            contact: false,
            headers,
            body,
        };
        self.write(&lines, out).ok_or(DialogError::TooLarge)
    }

    /// Write our response (UAS) `spec` to `request` (scanned as `m`, from
    /// `source`), with our To tag, and for a 101-299 to a request that makes
    /// or refreshes a dialog the Record-Route copy (§12.1.1) and our
    /// Contact.
    pub fn write_response(
        &self,
        request: &[u8],
        m: &Message,
        source: Option<SocketAddr>,
        spec: ResponseSpec<'_>,
        out: &mut [u8],
    ) -> Result<usize, DialogError> {
        let method = m.method().unwrap_or(Method::Other);
        let establishing = (101..=299).contains(&spec.code) && is_target_refresh(method);
        let spec = ResponseSpec {
            to_tag: Some(&self.local_tag),
            record_route: establishing && m.to_tag.is_none(),
            contact: establishing.then_some(&self.local_contact[..]),
            ..spec
        };
        write_response(request, m, source, &spec, out).ok_or(DialogError::TooLarge)
    }

    /// The Request-URI and whether the route set is strict (its first
    /// value has no `lr`): then that value is the Request-URI and the
    /// remote target goes last among the Routes (§12.2.1.1).
    fn request_uri(&self) -> (&[u8], bool) {
        match self.route_set.first() {
            Some(first) if !is_loose(first) => (uri_of_route(first), true),
            _ => (&self.remote_target, false),
        }
    }

    fn write(&self, l: &Lines<'_>, out: &mut [u8]) -> Option<usize> {
        let (ruri, strict) = self.request_uri();
        let mut o = Out::new(out);
        o.put(l.method);
        o.put(b" ");
        o.put(ruri);
        o.put(b" SIP/2.0\r\nVia: ");
        o.put(l.via);
        o.put(b"\r\nMax-Forwards: ");
        o.put_u32(MAX_FORWARDS);
        o.put(b"\r\n");
        for r in &self.route_set[usize::from(strict)..] {
            put_header(&mut o, b"Route: ", r);
        }
        if strict {
            o.put(b"Route: <");
            o.put(&self.remote_target);
            o.put(b">\r\n");
        }
        put_header(&mut o, b"From: ", &self.local_party);
        put_header(&mut o, b"To: ", &self.remote_party);
        put_header(&mut o, b"Call-ID: ", &self.call_id);
        o.put(b"CSeq: ");
        o.put_u32(l.seq);
        o.put(b" ");
        o.put(l.method);
        o.put(b"\r\n");
        if l.contact {
            put_header(&mut o, b"Contact: ", &self.local_contact);
        }
        o.finish_with_body(l.headers, l.body)
    }
}

/// What varies between the requests a dialog writes.
struct Lines<'a> {
    method: &'a [u8],
    seq: u32,
    via: &'a [u8],
    contact: bool,
    headers: &'a [&'a [u8]],
    body: &'a [u8],
}

fn put_header(o: &mut Out<'_>, name: &[u8], value: &[u8]) {
    o.put(name);
    o.put(value);
    o.put(b"\r\n");
}

/// Does a Route value's URI carry `lr` (§19.1.1: a loose router)?
fn is_loose(route: &[u8]) -> bool {
    let whole = Span::new(0, route.len());
    addr_of(route, whole)
        .and_then(|u| uri::parse(route, u))
        .is_some_and(|u| find_param(route, u.params, b"lr").is_some())
}

/// The URI of a Route value without a `?headers` part: what a strict
/// router gets as the Request-URI.
fn uri_of_route(route: &[u8]) -> &[u8] {
    let u = addr_of(route, Span::new(0, route.len())).map_or(&route[..0], |s| s.get(route));
    let end = u.iter().position(|b| *b == b'?').unwrap_or(u.len());
    &u[..end]
}

/// A dialog's handle in a [`DialogTable`]: slot and generation, so a
/// handle kept past the dialog's removal refers to nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DialogId {
    slot: u32,
    generation: u32,
}

struct Slot {
    generation: u32,
    dialog: Option<Dialog>,
}

/// The dialogs of one UA core, found by their id. Dialogs are grouped by
/// Call-ID (forks of one INVITE share it, each with its own remote tag), so
/// a lookup hashes the Call-ID alone and compares tags over a few entries.
pub struct DialogTable {
    slots: Vec<Slot>,
    free: Vec<u32>,
    by_call_id: HashMap<Box<[u8]>, Vec<u32>, KeyedBuild>,
    live: usize,
    max: usize,
}

impl DialogTable {
    /// A table of at most `max` dialogs; `key` keys the Call-ID hash.
    pub fn new(max: usize, key: [u64; 2]) -> DialogTable {
        DialogTable {
            slots: Vec::new(),
            free: Vec::new(),
            by_call_id: HashMap::with_hasher(KeyedBuild(key)),
            live: 0,
            max,
        }
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn get(&self, id: DialogId) -> Option<&Dialog> {
        let s = self.slots.get(id.slot as usize)?;
        s.dialog.as_ref().filter(|_| s.generation == id.generation)
    }

    pub fn get_mut(&mut self, id: DialogId) -> Option<&mut Dialog> {
        let s = self.slots.get_mut(id.slot as usize)?;
        s.dialog.as_mut().filter(|_| s.generation == id.generation)
    }

    fn id_of(&self, slot: u32) -> DialogId {
        DialogId {
            slot,
            generation: self.slots[slot as usize].generation,
        }
    }

    /// The dialog with this id (§12: Call-ID, local tag, remote tag).
    pub fn find(&self, call_id: &[u8], local_tag: &[u8], remote_tag: &[u8]) -> Option<DialogId> {
        let slots = self.by_call_id.get(call_id)?;
        slots
            .iter()
            .copied()
            .find(|s| {
                self.slots[*s as usize]
                    .dialog
                    .as_ref()
                    .is_some_and(|d| d.local_tag == local_tag && d.remote_tag == remote_tag)
            })
            .map(|s| self.id_of(s))
    }

    /// The dialog of a request received: our tag is its To tag, the peer's
    /// its From tag (§12.2.2). `None` for a request outside any dialog
    /// (no To tag) and for one whose dialog is unknown (answer 481).
    pub fn find_request(&self, buf: &[u8], m: &Message) -> Option<DialogId> {
        let (from, to) = (m.from_tag?, m.to_tag?);
        self.find(m.call_id.get(buf), to.get(buf), from.get(buf))
    }

    /// The dialog of a response to our request: our tag is its From tag.
    pub fn find_response(&self, buf: &[u8], m: &Message) -> Option<DialogId> {
        let (from, to) = tags(buf, m);
        self.find(m.call_id.get(buf), from?.get(buf), to?.get(buf))
    }

    pub fn insert(&mut self, dialog: Dialog) -> Result<DialogId, DialogError> {
        if self
            .find(&dialog.call_id, &dialog.local_tag, &dialog.remote_tag)
            .is_some()
        {
            return Err(DialogError::Exists);
        }
        if self.live >= self.max {
            return Err(DialogError::TableFull);
        }
        let same_call = self.by_call_id.get(&dialog.call_id[..]).map_or(0, Vec::len);
        if same_call >= MAX_PER_CALL_ID {
            return Err(DialogError::TooManyForks);
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    dialog: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        self.by_call_id
            .entry(dialog.call_id.clone().into_boxed_slice())
            .or_default()
            .push(slot);
        self.slots[slot as usize].dialog = Some(dialog);
        self.live += 1;
        Ok(self.id_of(slot))
    }

    pub fn remove(&mut self, id: DialogId) -> Option<Dialog> {
        self.get(id)?;
        let s = &mut self.slots[id.slot as usize];
        let d = s.dialog.take()?;
        s.generation = s.generation.wrapping_add(1);
        self.free.push(id.slot);
        self.live -= 1;
        if let Some(list) = self.by_call_id.get_mut(&d.call_id[..]) {
            list.retain(|x| *x != id.slot);
            if list.is_empty() {
                self.by_call_id.remove(&d.call_id[..]);
            }
        }
        Some(d)
    }

    /// The UAC's response to its dialog-creating `request` (§12.1.2,
    /// §13.2.2.4): a provisional with a To tag makes (or finds) the early
    /// dialog of that tag; a 2xx confirms it or makes a confirmed one
    /// (another fork); a non-2xx final ends the request's early dialogs.
    /// The dialog the response belongs to, if any.
    pub fn on_uac_response(
        &mut self,
        request: &[u8],
        rq: &Message,
        response: &[u8],
        rs: &Message,
        local_contact: &[u8],
    ) -> Result<Option<DialogId>, DialogError> {
        let code = status(rs).unwrap_or(0);
        if code >= 300 {
            if let Some(tag) = rq.from_tag {
                self.remove_early(rq.call_id.get(request), tag.get(request));
            }
            return Ok(None);
        }
        if code == 100 || tags(response, rs).1.is_none() {
            return Ok(None);
        }
        let method = rq.method().unwrap_or(Method::Other);
        match self.find_response(response, rs) {
            Some(id) => {
                if let Some(d) = self.get_mut(id) {
                    d.on_response(method, response, rs)?;
                }
                Ok(Some(id))
            }
            None => {
                let d = Dialog::uac(request, rq, response, rs, local_contact)?;
                self.insert(d).map(Some)
            }
        }
    }

    /// End the early dialogs under `call_id` with our `local_tag` (a
    /// non-2xx final response to their INVITE, §12.3); how many.
    pub fn remove_early(&mut self, call_id: &[u8], local_tag: &[u8]) -> usize {
        let mut removed = 0;
        // One at a time: `remove` edits the Call-ID's list (of at most
        // MAX_PER_CALL_ID dialogs).
        while let Some(id) = self.early_of(call_id, local_tag) {
            self.remove(id);
            removed += 1;
        }
        removed
    }

    fn early_of(&self, call_id: &[u8], local_tag: &[u8]) -> Option<DialogId> {
        let list = self.by_call_id.get(call_id)?;
        let slot = list.iter().copied().find(|s| {
            self.slots[*s as usize]
                .dialog
                .as_ref()
                .is_some_and(|d| d.state == DialogState::Early && d.local_tag == local_tag)
        })?;
        Some(self.id_of(slot))
    }

    /// Check the table's invariants (O(n); for tests and the fuzz target).
    pub fn assert_invariants(&self) {
        assert!(self.live <= self.max);
        let indexed: usize = self.by_call_id.values().map(Vec::len).sum();
        assert_eq!(indexed, self.live);
        for (call_id, list) in &self.by_call_id {
            assert!(!list.is_empty() && list.len() <= MAX_PER_CALL_ID);
            for s in list {
                let d = self.slots[*s as usize].dialog.as_ref();
                assert_eq!(d.map(|d| &d.call_id[..]), Some(&call_id[..]));
            }
        }
    }
}

/// The UAS core's 2xx retransmission while it waits for the ACK
/// (§13.3.1.4): at T1, then doubling up to T2, giving up at 64·T1 (then
/// the UAS should end the session with a BYE). The 2xx itself is sent
/// again through the INVITE server transaction, in its Accepted state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckWait {
    next: Instant,
    interval: Duration,
    t2: Duration,
    give_up: Instant,
}

/// What to do when an [`AckWait`]'s deadline has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckWaitStep {
    /// Not yet: nothing is due.
    Wait,
    /// Send the 2xx again.
    Retransmit,
    /// No ACK within 64·T1.
    GiveUp,
}

impl AckWait {
    /// Waiting from `now` (the 2xx just sent).
    pub fn new(now: Instant, t1: Duration, t2: Duration) -> AckWait {
        AckWait {
            next: now + t1,
            interval: t1,
            t2,
            give_up: now + t1 * 64,
        }
    }

    /// When [`AckWait::on_timeout`] next has something to do.
    pub fn deadline(&self) -> Instant {
        self.next.min(self.give_up)
    }

    pub fn on_timeout(&mut self, now: Instant) -> AckWaitStep {
        if now >= self.give_up {
            return AckWaitStep::GiveUp;
        }
        if now < self.next {
            return AckWaitStep::Wait;
        }
        self.interval = (self.interval * 2).min(self.t2);
        self.next = now + self.interval;
        AckWaitStep::Retransmit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::scan::scan;

    const INVITE: &[u8] = b"INVITE sip:bob@b.example SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa\r\n\
        Max-Forwards: 70\r\n\
        From: \"Alice\" <sip:alice@a.example>;tag=fa\r\n\
        To: <sip:bob@b.example>\r\n\
        Call-ID: call-1@a\r\n\
        CSeq: 10 INVITE\r\n\
        Contact: <sip:alice@192.0.2.1>\r\n\
        Record-Route: <sip:p1.example;lr>, <sip:p2.example;lr>\r\n\
        Record-Route: <sip:p3.example;lr>\r\n\
        Content-Length: 0\r\n\r\n";

    /// The response of the UAS at the end of the route p1, p2, p3.
    fn response(code: u16, tag: &str, contact: Option<&str>) -> Vec<u8> {
        let mut r = format!(
            "SIP/2.0 {code} Reason\r\n\
             Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa\r\n\
             Record-Route: <sip:p1.example;lr>, <sip:p2.example;lr>\r\n\
             Record-Route: <sip:p3.example;lr>\r\n\
             From: \"Alice\" <sip:alice@a.example>;tag=fa\r\n\
             To: <sip:bob@b.example>;tag={tag}\r\n\
             Call-ID: call-1@a\r\n\
             CSeq: 10 INVITE\r\n"
        );
        if let Some(c) = contact {
            r.push_str(&format!("Contact: {c}\r\n"));
        }
        r.push_str("Content-Length: 0\r\n\r\n");
        r.into_bytes()
    }

    fn uac(code: u16, tag: &str) -> Dialog {
        let resp = response(code, tag, Some("<sip:bob@192.0.2.2:5080>"));
        Dialog::uac(
            INVITE,
            &scan(INVITE),
            &resp,
            &scan(&resp),
            b"<sip:alice@192.0.2.1>",
        )
        .unwrap()
    }

    fn uas() -> Dialog {
        Dialog::uas(INVITE, &scan(INVITE), b"tb", b"<sip:bob@192.0.2.2:5080>").unwrap()
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    fn routes(d: &Dialog) -> Vec<String> {
        d.route_set().map(text).collect()
    }

    /// §12.1.2: the UAC's id is (Call-ID, From tag, To tag of the
    /// response), its route set the Record-Route reversed, its target the
    /// response's Contact; early on a 180, confirmed on a 200.
    #[test]
    fn the_uac_dialog_follows_section_12_1_2() {
        let d = uac(180, "tb");
        assert_eq!(d.state(), DialogState::Early);
        assert_eq!(d.role(), Role::Uac);
        assert_eq!(
            (d.call_id(), d.local_tag(), d.remote_tag()),
            (&b"call-1@a"[..], &b"fa"[..], &b"tb"[..])
        );
        assert_eq!(
            routes(&d),
            [
                "<sip:p3.example;lr>",
                "<sip:p2.example;lr>",
                "<sip:p1.example;lr>"
            ]
        );
        assert_eq!(d.remote_target(), b"sip:bob@192.0.2.2:5080");
        assert_eq!((d.local_seq(), d.remote_seq()), (Some(10), None));
        assert_eq!(uac(200, "tb").state(), DialogState::Confirmed);
        let no_tag = b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKa\r\n\
            From: <sip:a@a>;tag=fa\r\nTo: <sip:b@b>\r\nCall-ID: c\r\nCSeq: 10 INVITE\r\n\r\n";
        let e = Dialog::uac(INVITE, &scan(INVITE), no_tag, &scan(no_tag), b"<sip:a@h>");
        assert_eq!(e, Err(DialogError::MissingTag));
        let ok_without_contact = response(200, "tb", None);
        let e = Dialog::uac(
            INVITE,
            &scan(INVITE),
            &ok_without_contact,
            &scan(&ok_without_contact),
            b"<sip:a@h>",
        );
        assert_eq!(e, Err(DialogError::MissingContact));
    }

    /// §12.1.1: the UAS's route set is the Record-Route in order, its
    /// target the request's Contact, its remote sequence the request's.
    #[test]
    fn the_uas_dialog_follows_section_12_1_1() {
        let d = uas();
        assert_eq!(d.state(), DialogState::Early);
        assert_eq!((d.local_tag(), d.remote_tag()), (&b"tb"[..], &b"fa"[..]));
        assert_eq!(
            routes(&d),
            [
                "<sip:p1.example;lr>",
                "<sip:p2.example;lr>",
                "<sip:p3.example;lr>"
            ]
        );
        assert_eq!(d.remote_target(), b"sip:alice@192.0.2.1");
        assert_eq!((d.local_seq(), d.remote_seq()), (None, Some(10)));
    }

    /// Loose routing: the Request-URI is the remote target, the route set
    /// goes out as Route headers in order; From/To/Call-ID are the
    /// dialog's; the CSeq counts up from the INVITE's.
    #[test]
    fn in_dialog_requests_are_loose_routed_and_sequenced() {
        let mut d = uac(200, "tb");
        let mut out = [0u8; 2048];
        let n = d
            .write_request(
                b"MESSAGE",
                b"SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKm",
                &[b"Content-Type: text/plain\r\n"],
                b"hi",
                &mut out,
            )
            .unwrap();
        assert_eq!(
            text(&out[..n]),
            "MESSAGE sip:bob@192.0.2.2:5080 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKm\r\n\
             Max-Forwards: 70\r\n\
             Route: <sip:p3.example;lr>\r\n\
             Route: <sip:p2.example;lr>\r\n\
             Route: <sip:p1.example;lr>\r\n\
             From: \"Alice\" <sip:alice@a.example>;tag=fa\r\n\
             To: <sip:bob@b.example>;tag=tb\r\n\
             Call-ID: call-1@a\r\n\
             CSeq: 11 MESSAGE\r\n\
             Content-Type: text/plain\r\n\
             Content-Length: 2\r\n\r\nhi"
        );
        assert_eq!(scan(&out[..n]).defect, None);
        // A re-INVITE carries our Contact and is what the ACK then names.
        let n = d.write_request(
            b"INVITE",
            b"SIP/2.0/UDP h;branch=z9hG4bKr",
            &[],
            b"",
            &mut out,
        );
        let reinvite = text(&out[..n.unwrap()]);
        assert!(reinvite.contains("\r\nCSeq: 12 INVITE\r\nContact: <sip:alice@192.0.2.1>\r\n"));
        let n = d
            .write_ack(b"SIP/2.0/UDP h;branch=z9hG4bKk", &[], b"", &mut out)
            .unwrap();
        let ack = text(&out[..n]);
        assert!(
            ack.starts_with("ACK sip:bob@192.0.2.2:5080 SIP/2.0\r\n"),
            "{ack}"
        );
        assert!(
            ack.contains("\r\nCSeq: 12 ACK\r\n") && !ack.contains("Contact"),
            "{ack}"
        );
        // Too small a buffer: refused, and the CSeq is not consumed.
        let mut small = [0u8; 64];
        let r = d.write_request(
            b"BYE",
            b"SIP/2.0/UDP h;branch=z9hG4bKb",
            &[],
            b"",
            &mut small,
        );
        assert_eq!(r, Err(DialogError::TooLarge));
        assert_eq!(d.local_seq(), Some(12));
        assert_eq!(d.state(), DialogState::Confirmed);
        d.write_request(b"BYE", b"SIP/2.0/UDP h;branch=z9hG4bKb", &[], b"", &mut out)
            .unwrap();
        assert_eq!(d.state(), DialogState::Terminated);
    }

    /// Strict routing (§12.2.1.1): a first route without `lr` becomes the
    /// Request-URI (headers stripped), the remote target the last Route.
    #[test]
    fn a_strict_first_route_is_the_request_uri() {
        let req = b"INVITE sip:bob@b.example SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKs\r\n\
            From: <sip:alice@a.example>;tag=fa\r\nTo: <sip:bob@b.example>\r\nCall-ID: c2\r\n\
            CSeq: 1 INVITE\r\nContact: <sip:alice@192.0.2.1>\r\n\
            Record-Route: <sip:strict.example?X-H=1>, <sip:loose.example;lr>\r\n\r\n";
        let d = Dialog::uas(req, &scan(req), b"tb", b"<sip:bob@h>").unwrap();
        let mut d = d;
        let mut out = [0u8; 1024];
        let n = d
            .write_request(b"BYE", b"SIP/2.0/UDP h;branch=z9hG4bKy", &[], b"", &mut out)
            .unwrap();
        let bye = text(&out[..n]);
        assert!(
            bye.starts_with("BYE sip:strict.example SIP/2.0\r\n"),
            "{bye}"
        );
        assert!(
            bye.contains("Route: <sip:loose.example;lr>\r\nRoute: <sip:alice@192.0.2.1>\r\n"),
            "{bye}"
        );
        assert!(
            bye.contains("\r\nCSeq: 1 BYE\r\n"),
            "the UAS's sequence starts at 1"
        );
        assert!(
            bye.contains("\r\nFrom: <sip:bob@b.example>;tag=tb\r\n"),
            "{bye}"
        );
    }

    fn in_dialog(method: &str, cseq: u32, contact: &str) -> Vec<u8> {
        format!(
            "{method} sip:bob@192.0.2.2 SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK{cseq}\r\n\
             From: <sip:alice@a.example>;tag=fa\r\nTo: <sip:bob@b.example>;tag=tb\r\n\
             Call-ID: call-1@a\r\nCSeq: {cseq} {method}\r\n{contact}Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    /// §12.2.2: a CSeq at or below the remote sequence is out of order
    /// (500); above it is in order and becomes the remote sequence; the ACK
    /// is not sequenced; a target refresh moves the remote target; a BYE
    /// terminates, after which requests get 481.
    #[test]
    fn incoming_requests_are_checked_against_the_remote_sequence() {
        let mut d = uas();
        d.confirm();
        assert_eq!(d.state(), DialogState::Confirmed);
        let ack = in_dialog("ACK", 10, "");
        assert_eq!(
            d.on_request(&ack, &scan(&ack)),
            Ok(InDialog::Ack { current: true })
        );
        for (cseq, want) in [(9, 10), (10, 10)] {
            let m = in_dialog("MESSAGE", cseq, "");
            let e = d.on_request(&m, &scan(&m)).unwrap_err();
            assert_eq!(e, DialogError::OutOfOrder { cseq, remote: want });
            assert_eq!(e.status(), 500);
        }
        let msg = in_dialog("MESSAGE", 11, "");
        assert_eq!(d.on_request(&msg, &scan(&msg)), Ok(InDialog::Request));
        assert_eq!(d.remote_seq(), Some(11));
        let refresh = in_dialog("UPDATE", 12, "Contact: <sip:alice@198.51.100.1>\r\n");
        assert_eq!(
            d.on_request(&refresh, &scan(&refresh)),
            Ok(InDialog::Request)
        );
        assert_eq!(d.remote_target(), b"sip:alice@198.51.100.1");
        let stale_ack = in_dialog("ACK", 10, "");
        let reinvite = in_dialog("INVITE", 13, "");
        d.on_request(&reinvite, &scan(&reinvite)).unwrap();
        assert_eq!(
            d.on_request(&stale_ack, &scan(&stale_ack)),
            Ok(InDialog::Ack { current: false })
        );
        let bye = in_dialog("BYE", 14, "");
        assert_eq!(d.on_request(&bye, &scan(&bye)), Ok(InDialog::Bye));
        assert_eq!(d.state(), DialogState::Terminated);
        let late = in_dialog("MESSAGE", 15, "");
        let e = d.on_request(&late, &scan(&late)).unwrap_err();
        assert_eq!((e, e.status()), (DialogError::Terminated, 481));
    }

    /// A Contact or Record-Route URI that would split our request line
    /// (whitespace, folding) or is no URI refuses the dialog; in a target
    /// refresh it refuses the request and leaves the dialog as it was.
    #[test]
    fn uris_that_would_corrupt_our_requests_are_refused() {
        for bad in [
            "Contact: <sip:alice@192.0.2.1 x>\r\n",
            "Contact: <sip:alice@192.0.2.1;\r\n lr>\r\n",
            "Contact: <nonsense>\r\n",
            "Contact: <sip:a@h>\r\nRecord-Route: <sip:p 1>\r\n",
        ] {
            let req = format!(
                "INVITE sip:bob@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKu\r\n\
                 From: <sip:a@a>;tag=fa\r\nTo: <sip:b@b>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n{bad}\r\n"
            );
            let m = scan(req.as_bytes());
            assert_eq!(m.defect, None, "{bad}");
            let e = Dialog::uas(req.as_bytes(), &m, b"tb", b"<sip:b@h>");
            assert_eq!(e, Err(DialogError::BadUri), "{bad}");
        }
        let mut d = uas();
        let refresh = in_dialog("UPDATE", 11, "Contact: <sip:x y@h>\r\n");
        let e = d.on_request(&refresh, &scan(&refresh));
        assert_eq!(e, Err(DialogError::BadUri));
        assert_eq!(
            (d.remote_seq(), d.remote_target()),
            (Some(10), &b"sip:alice@192.0.2.1"[..])
        );
    }

    /// The UAS's dialog-creating 200 carries its tag, the Record-Route and
    /// its Contact; a 200 to an in-dialog MESSAGE carries neither.
    #[test]
    fn uas_responses_carry_tag_record_route_and_contact_when_they_should() {
        let d = uas();
        let mut out = [0u8; 2048];
        let m = scan(INVITE);
        let spec = ResponseSpec::new(200, "OK");
        let n = d.write_response(INVITE, &m, None, spec, &mut out).unwrap();
        let ok = text(&out[..n]);
        assert!(
            ok.contains("\r\nTo: <sip:bob@b.example>;tag=tb\r\n"),
            "{ok}"
        );
        assert!(ok.contains("Record-Route: <sip:p1.example;lr>, <sip:p2.example;lr>\r\n"));
        assert!(
            ok.contains("\r\nContact: <sip:bob@192.0.2.2:5080>\r\n"),
            "{ok}"
        );
        let msg = in_dialog("MESSAGE", 11, "");
        let mm = scan(&msg);
        let spec = ResponseSpec::new(200, "OK");
        let n = d.write_response(&msg, &mm, None, spec, &mut out).unwrap();
        let ok = text(&out[..n]);
        assert!(
            !ok.contains("Record-Route") && !ok.contains("Contact"),
            "{ok}"
        );
        assert_eq!(
            ok.matches(";tag=tb").count(),
            1,
            "the tag is not added twice"
        );
    }

    /// The table finds a dialog from either side's messages, keeps forks
    /// apart, ends early dialogs on a failure, refuses duplicates and
    /// growth past its bound, and a removed id refers to nothing.
    #[test]
    fn the_table_finds_forks_and_stays_bounded() {
        let mut t = DialogTable::new(3, [1, 2]);
        let rq = scan(INVITE);
        let r1 = response(180, "t1", Some("<sip:b1@h>"));
        let r2 = response(180, "t2", Some("<sip:b2@h>"));
        let a = t
            .on_uac_response(INVITE, &rq, &r1, &scan(&r1), b"<sip:a@h>")
            .unwrap();
        let b = t
            .on_uac_response(INVITE, &rq, &r2, &scan(&r2), b"<sip:a@h>")
            .unwrap();
        assert!(a.is_some() && b.is_some() && a != b);
        assert_eq!(t.len(), 2);
        t.assert_invariants();
        let ok1 = response(200, "t1", Some("<sip:b1@new>"));
        let c = t
            .on_uac_response(INVITE, &rq, &ok1, &scan(&ok1), b"<sip:a@h>")
            .unwrap();
        assert_eq!(c, a, "the 2xx confirms the fork's early dialog");
        let d = t.get(a.unwrap()).unwrap();
        assert_eq!(d.state(), DialogState::Confirmed);
        assert_eq!(d.remote_target(), b"sip:b1@new");
        assert_eq!(t.find_response(&ok1, &scan(&ok1)), a);
        // The peer's request in that dialog: our tag is its To tag.
        let bye = b"BYE sip:a@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKz\r\n\
            From: <sip:bob@b.example>;tag=t1\r\nTo: \"Alice\" <sip:alice@a.example>;tag=fa\r\n\
            Call-ID: call-1@a\r\nCSeq: 1 BYE\r\n\r\n";
        assert_eq!(t.find_request(bye, &scan(bye)), a);
        let busy = response(486, "t2", None);
        t.on_uac_response(INVITE, &rq, &busy, &scan(&busy), b"<sip:a@h>")
            .unwrap();
        assert_eq!(t.len(), 1, "the other fork's early dialog ended");
        assert!(t.get(b.unwrap()).is_none());
        assert_eq!(t.insert(uac(200, "t1")), Err(DialogError::Exists));
        t.insert(uac(200, "x1")).unwrap();
        t.insert(uac(200, "x2")).unwrap();
        assert_eq!(t.insert(uac(200, "x3")), Err(DialogError::TableFull));
        let gone = t.remove(a.unwrap()).unwrap();
        assert_eq!(gone.remote_tag(), b"t1");
        assert!(t.remove(a.unwrap()).is_none());
        t.assert_invariants();
    }

    #[test]
    fn one_call_id_holds_a_bounded_number_of_forks() {
        let mut t = DialogTable::new(100, [1, 2]);
        for i in 0..MAX_PER_CALL_ID {
            t.insert(uac(200, &format!("f{i}"))).unwrap();
        }
        assert_eq!(
            t.insert(uac(200, "one-more")),
            Err(DialogError::TooManyForks)
        );
        t.assert_invariants();
    }

    /// §13.3.1.4: 2xx again at 0.5, 1.5, 3.5, 7.5 s, then every T2, giving
    /// up at 64·T1.
    #[test]
    fn ack_wait_retransmits_doubling_to_t2_and_gives_up_at_64_t1() {
        let t0 = Instant::now();
        let mut w = AckWait::new(t0, Duration::from_millis(500), Duration::from_secs(4));
        let mut sent = Vec::new();
        loop {
            let at = w.deadline();
            assert_eq!(
                w.on_timeout(at - Duration::from_millis(1)),
                AckWaitStep::Wait
            );
            match w.on_timeout(at) {
                AckWaitStep::Retransmit => sent.push((at - t0).as_millis()),
                AckWaitStep::GiveUp => {
                    assert_eq!((at - t0).as_millis(), 32_000);
                    break;
                }
                AckWaitStep::Wait => panic!("nothing due at the deadline"),
            }
        }
        assert_eq!(
            sent,
            [500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500]
        );
    }
}
