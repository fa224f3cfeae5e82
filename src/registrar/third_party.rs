//! The third-party REGISTER the edge sends to a user's Participating
//! Function when the user's CPM registration changes (the way 3GPP TS
//! 24.229 §5.4.1.7 has the S-CSCF inform application servers): on
//! registration, refresh, de-registration and expiry. Its body is the
//! AoR's full registration state (RFC 3680 reg-info), so the CS learns
//! every registered device and its feature tags (seed 5.2.5, 5.3.1.1.1).

use crate::route::location::Binding;
use crate::sip::feature_tag::SERVICE_NAMES;
use crate::sip::reginfo::{
    self, ContactEvent, ContactState, DocState, RegContact, RegInfo, RegState, Registration,
};
use crate::sip::rewrite::Out;
use std::net::SocketAddr;

/// Largest third-party REGISTER written.
pub const MAX_NOTICE: usize = 16 * 1024;

/// Who sends the notice and how it is numbered.
#[derive(Clone, Copy, Debug)]
pub struct Notice<'a> {
    /// The edge's `host:port` (Via sent-by, Contact).
    pub edge: &'a str,
    /// The served domain (the registrar's From).
    pub domain: &'a str,
    /// The Participating Function's shard.
    pub shard: SocketAddr,
    /// Our Via branch (a client transaction's).
    pub branch: &'a [u8],
    /// One Call-ID per AoR, CSeq rising with `version`.
    pub call_id: &'a [u8],
    pub version: u32,
}

/// Does the PF need to hear of this change? When a CPM contact was or is
/// registered (a user with no CPM device is none of the CS's business).
pub fn wanted(before: &[Binding], after: &[Binding]) -> bool {
    before.iter().chain(after).any(|b| b.cpm().any())
}

/// The `+g.3gpp.icsi-ref` value of a contact's CPM bits, quoted.
fn icsi_value(bits: u8) -> Option<Vec<u8>> {
    let names: Vec<String> = SERVICE_NAMES
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| format!("urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.{n}"))
        .collect();
    (!names.is_empty()).then(|| format!("\"{}\"", names.join(",")).into_bytes())
}

/// The reg-info document of `aor` with `bindings` (full state).
pub fn document(aor: &[u8], bindings: &[Binding], now_s: u64, version: u32) -> RegInfo {
    let contacts = bindings
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut unknown = Vec::new();
            if let Some(v) = icsi_value(b.cpm().0) {
                unknown.push((b"+g.3gpp.icsi-ref".to_vec(), Some(v)));
            }
            if let Some(inst) = b.instance() {
                let mut v = b"\"".to_vec();
                v.extend_from_slice(inst);
                v.push(b'"');
                unknown.push((b"+sip.instance".to_vec(), Some(v)));
            }
            RegContact {
                id: format!("c{i}").into_bytes(),
                state: ContactState::Active,
                event: ContactEvent::Registered,
                expires: Some(
                    b.expires_at()
                        .saturating_sub(now_s)
                        .min(u64::from(u32::MAX)) as u32,
                ),
                q: Some(b.q()),
                uri: b.contact().to_vec(),
                unknown_params: unknown,
            }
        })
        .collect::<Vec<_>>();
    let mut sip_aor = b"sip:".to_vec();
    sip_aor.extend_from_slice(aor);
    RegInfo {
        version,
        state: DocState::Full,
        registrations: vec![Registration {
            aor: sip_aor,
            id: b"r0".to_vec(),
            state: if contacts.is_empty() {
                RegState::Terminated
            } else {
                RegState::Active
            },
            contacts,
        }],
    }
}

/// Write the third-party REGISTER for `aor` into `out`; `None` if it does
/// not fit [`MAX_NOTICE`].
pub fn write(n: &Notice<'_>, aor: &[u8], bindings: &[Binding], now_s: u64) -> Option<Vec<u8>> {
    let mut body = vec![0u8; MAX_NOTICE];
    let mut bo = Out::new(&mut body);
    reginfo::write(&document(aor, bindings, now_s, n.version), &mut bo);
    let blen = bo.finish()?;
    body.truncate(blen);
    let expires = bindings
        .iter()
        .map(|b| b.expires_at().saturating_sub(now_s))
        .max()
        .unwrap_or(0);
    let mut v = vec![0u8; MAX_NOTICE];
    let mut o = Out::new(&mut v);
    let shard = n.shard.to_string();
    o.put(b"REGISTER sip:");
    o.put(shard.as_bytes());
    o.put(b" SIP/2.0\r\nVia: SIP/2.0/UDP ");
    o.put(n.edge.as_bytes());
    o.put(b";branch=");
    o.put(n.branch);
    o.put(b";rport\r\nMax-Forwards: 70\r\nFrom: <sip:registrar@");
    o.put(n.domain.as_bytes());
    o.put(b">;tag=");
    o.put(n.call_id.get(..8).unwrap_or(n.call_id));
    o.put(b"\r\nTo: <sip:");
    o.put(aor);
    o.put(b">\r\nCall-ID: ");
    o.put(n.call_id);
    o.put(b"\r\nCSeq: ");
    o.put_u32(n.version);
    o.put(b" REGISTER\r\nContact: <sip:");
    o.put(n.edge.as_bytes());
    o.put(b">\r\nExpires: ");
    o.put_u32(expires.min(u64::from(u32::MAX)) as u32);
    o.put(b"\r\nContent-Type: application/reginfo+xml\r\n");
    let len = o.finish_with_body(&[], &body)?;
    v.truncate(len);
    Some(v)
}
