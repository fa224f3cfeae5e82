//! Transaction keys (§17.1.3, §17.2.3) built on the stack, so that looking
//! a datagram up allocates nothing; only a new transaction keeps a copy.
//!
//! A key is a role byte and length-prefixed fields, so that no choice of
//! branch or sent-by text can make two different triples one key:
//! - client: method, branch (the branch is ours, so it alone with the
//!   method identifies the request, §17.1.3);
//! - server: method, branch, sent-by host (ASCII-lowercased) and port
//!   (§17.2.3; the method of an ACK is INVITE, done by the caller).

use super::message::MAGIC_COOKIE;
use super::Error;
use crate::sip::via::Via;

/// Role + three fields of at most 255 bytes + a port.
pub(super) const MAX_KEY: usize = 1 + 3 * 256 + 3;

#[derive(Clone, Copy)]
pub(super) struct Key {
    bytes: [u8; MAX_KEY],
    len: usize,
}

impl Key {
    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn new(role: u8) -> Key {
        let mut k = Key {
            bytes: [0; MAX_KEY],
            len: 1,
        };
        k.bytes[0] = role;
        k
    }

    fn field(&mut self, s: &[u8], lower: bool) -> Result<(), Error> {
        let n = u8::try_from(s.len()).map_err(|_| Error::KeyTooLong)?;
        self.bytes[self.len] = n;
        let dst = &mut self.bytes[self.len + 1..self.len + 1 + s.len()];
        dst.copy_from_slice(s);
        if lower {
            dst.make_ascii_lowercase();
        }
        self.len += 1 + s.len();
        Ok(())
    }
}

/// The RFC 3261 branch of a Via (magic cookie included), or why not.
pub(super) fn branch<'a>(buf: &'a [u8], via: &Via) -> Result<&'a [u8], Error> {
    let b = via.branch.map(|s| s.get(buf)).ok_or(Error::NoBranch)?;
    // RFC 2543 peers (no cookie) would need the §17.2.3 fallback matching on
    // Request-URI, tags, Call-ID and CSeq; CPM clients are RFC 3261 ones.
    if b.len() <= MAGIC_COOKIE.len() || !b.starts_with(MAGIC_COOKIE) {
        return Err(Error::NoBranch);
    }
    Ok(b)
}

/// The key of a client transaction: its method and our branch.
pub(super) fn client(method: &[u8], branch: &[u8]) -> Result<Key, Error> {
    let mut k = Key::new(b'c');
    k.field(method, false)?;
    k.field(branch, false)?;
    Ok(k)
}

/// The key of a server transaction: method, branch and sent-by of the top
/// Via of `buf`.
pub(super) fn server(buf: &[u8], via: &Via, method: &[u8]) -> Result<Key, Error> {
    let mut k = Key::new(b's');
    k.field(method, false)?;
    k.field(branch(buf, via)?, false)?;
    k.field(via.host.get(buf), true)?;
    let port = via.port.map_or([0; 3], |p| {
        let [hi, lo] = p.to_be_bytes();
        [1, hi, lo]
    });
    k.bytes[k.len..k.len + 3].copy_from_slice(&port);
    k.len += 3;
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::scan::scan;

    fn top_via(msg: &[u8]) -> Via {
        scan(msg).top_via.expect("via")
    }

    fn req(via: &str) -> Vec<u8> {
        format!(
            "OPTIONS sip:a@b SIP/2.0\r\nVia: {via}\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\n\
             Call-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn server_key(via: &str, method: &[u8]) -> Result<Vec<u8>, Error> {
        let m = req(via);
        server(&m, &top_via(&m), method).map(|k| k.as_bytes().to_vec())
    }

    /// Same branch, sent-by and method: one key, whatever the case of the
    /// host; any of the three different: another key.
    #[test]
    fn server_keys_compare_branch_sent_by_and_method() {
        let base = server_key("SIP/2.0/UDP Host.Example:5060;branch=z9hG4bK1", b"INVITE");
        assert_eq!(
            base,
            server_key("SIP/2.0/UDP host.example:5060;branch=z9hG4bK1", b"INVITE")
        );
        for other in [
            server_key("SIP/2.0/UDP host.example:5060;branch=z9hG4bK2", b"INVITE"),
            server_key("SIP/2.0/UDP host.example:5061;branch=z9hG4bK1", b"INVITE"),
            server_key("SIP/2.0/UDP host.example;branch=z9hG4bK1", b"INVITE"),
            server_key("SIP/2.0/UDP other.example:5060;branch=z9hG4bK1", b"INVITE"),
            server_key("SIP/2.0/UDP host.example:5060;branch=z9hG4bK1", b"CANCEL"),
        ] {
            assert_ne!(base, other);
        }
        let c = client(b"INVITE", b"z9hG4bK1").unwrap();
        assert_ne!(base.unwrap(), c.as_bytes(), "roles differ");
    }

    /// Length prefixes: moving bytes between fields changes the key.
    #[test]
    fn fields_cannot_be_shifted_into_each_other() {
        let a = client(b"INVITE", b"z9hG4bKab").unwrap();
        let b = client(b"INVITEz", b"9hG4bKab").unwrap();
        assert_ne!(a.as_bytes(), b.as_bytes());
    }

    #[test]
    fn branches_without_the_cookie_or_too_long_are_refused() {
        for via in [
            "SIP/2.0/UDP h;branch=1234",
            "SIP/2.0/UDP h;branch=z9hG4bK",
            "SIP/2.0/UDP h",
        ] {
            assert_eq!(server_key(via, b"INVITE"), Err(Error::NoBranch), "{via}");
        }
        let long = format!("SIP/2.0/UDP h;branch=z9hG4bK{}", "x".repeat(300));
        assert_eq!(server_key(&long, b"INVITE"), Err(Error::KeyTooLong));
    }
}
