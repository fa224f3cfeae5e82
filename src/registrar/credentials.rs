//! The registrar's credentials: per address-of-record, the digest HA1
//! values (RFC 8760: one per algorithm), never a password.
//!
//! The file format (one user per line, `#` starts a comment):
//!
//! ```text
//! # AOR                MD5 HA1 (32 hex)                  SHA-256 HA1 (64 hex)
//! alice@example.net    0123...                           89ab...
//! ```
//!
//! Either hash may be `-` (that algorithm is not offered to the user's
//! clients). HA1 = H(username ":" realm ":" password), the username being
//! the AoR's user part and the realm its host (the served domain).

use crate::sip::digest::{Algorithm, Ha1};
use std::collections::HashMap;

/// Most users one store holds (a file longer than this is refused).
pub const MAX_USERS: usize = 10_000_000;

/// One user's stored secrets.
#[derive(Clone, Debug)]
pub struct Credential {
    pub md5: Option<Ha1>,
    pub sha256: Option<Ha1>,
}

impl Credential {
    /// The HA1 for `alg`, if the user has one.
    pub fn ha1(&self, alg: Algorithm) -> Option<&Ha1> {
        match alg {
            Algorithm::Md5 => self.md5.as_ref(),
            Algorithm::Sha256 => self.sha256.as_ref(),
        }
    }
}

/// AoR (`user@domain`, domain lowercased) → its credential.
#[derive(Clone, Default)]
pub struct CredentialStore {
    users: HashMap<Vec<u8>, Credential>,
}

/// Never the hashes in logs or `GET /config`: only how many.
impl std::fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CredentialStore({} users)", self.users.len())
    }
}

/// A line of a credentials file that could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("credentials line {line}: {what}")]
pub struct CredentialError {
    pub line: usize,
    pub what: String,
}

impl CredentialStore {
    /// Read a credentials file's text.
    pub fn parse(text: &str) -> Result<CredentialStore, CredentialError> {
        let mut store = CredentialStore::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = |what: &str| CredentialError {
                line: i + 1,
                what: what.to_string(),
            };
            let mut fields = line.split_whitespace();
            let (Some(aor), Some(md5), Some(sha), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(err("want: AOR MD5_HA1 SHA256_HA1"));
            };
            let hash = |alg, text: &str| match text {
                "-" => Ok(None),
                t => Ha1::from_hex(alg, t.as_bytes())
                    .map(Some)
                    .map_err(|e| err(&format!("{} HA1: {e}", alg.name()))),
            };
            let cred = Credential {
                md5: hash(Algorithm::Md5, md5)?,
                sha256: hash(Algorithm::Sha256, sha)?,
            };
            store.insert(aor, cred).map_err(err)?;
            if store.len() > MAX_USERS {
                return Err(err("too many users"));
            }
        }
        Ok(store)
    }

    /// Add or replace a user. The AoR must be `user@domain`.
    pub fn insert(&mut self, aor: &str, cred: Credential) -> Result<(), &'static str> {
        let key = canonical_aor(aor).ok_or("the AoR must be user@domain")?;
        if cred.md5.is_none() && cred.sha256.is_none() {
            return Err("no HA1 given");
        }
        self.users.insert(key, cred);
        Ok(())
    }

    pub fn remove(&mut self, aor: &str) -> bool {
        canonical_aor(aor).is_some_and(|k| self.users.remove(&k).is_some())
    }

    /// The credential of a canonical AoR key.
    pub fn get(&self, aor: &[u8]) -> Option<&Credential> {
        self.users.get(aor)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The file format again (what the admin API writes back), sorted.
    pub fn to_text(&self) -> String {
        let mut keys: Vec<&Vec<u8>> = self.users.keys().collect();
        keys.sort();
        let mut t = String::from("# AOR MD5_HA1 SHA256_HA1 (written by cpm-edge)\n");
        for k in keys {
            let c = &self.users[k];
            let h = |x: &Option<Ha1>| {
                x.as_ref().map_or("-".to_string(), |h| {
                    String::from_utf8_lossy(h.as_hex().as_bytes()).into_owned()
                })
            };
            t += &format!(
                "{} {} {}\n",
                String::from_utf8_lossy(k),
                h(&c.md5),
                h(&c.sha256)
            );
        }
        t
    }

    /// The AoRs, sorted (the admin API lists them; never the hashes).
    pub fn aors(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .users
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        v.sort();
        v
    }
}

/// `user@domain` with the domain lowercased; `None` for anything else.
pub fn canonical_aor(aor: &str) -> Option<Vec<u8>> {
    let aor = aor.strip_prefix("sip:").unwrap_or(aor);
    let (user, host) = aor.split_once('@')?;
    let ok = |s: &str| !s.is_empty() && !s.bytes().any(|b| b <= b' ' || b"<>;\"@".contains(&b));
    if !ok(user) || !ok(host) {
        return None;
    }
    Some(format!("{user}@{}", host.to_ascii_lowercase()).into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_read_and_defects_name_their_line() {
        let md5 = Ha1::compute(Algorithm::Md5, b"alice", b"example.net", b"pw");
        let sha = Ha1::compute(Algorithm::Sha256, b"alice", b"example.net", b"pw");
        let text = format!(
            "# users\nalice@Example.NET {} {}\nbob@example.net - {}\n",
            String::from_utf8_lossy(md5.as_hex().as_bytes()),
            String::from_utf8_lossy(sha.as_hex().as_bytes()),
            String::from_utf8_lossy(sha.as_hex().as_bytes()),
        );
        let s = CredentialStore::parse(&text).unwrap();
        assert_eq!(s.len(), 2);
        let a = s.get(b"alice@example.net").unwrap();
        assert_eq!(
            a.ha1(Algorithm::Md5).unwrap().as_hex().as_bytes(),
            md5.as_hex().as_bytes()
        );
        assert!(s.get(b"bob@example.net").unwrap().md5.is_none());
        assert_eq!(s.aors(), vec!["alice@example.net", "bob@example.net"]);

        let bad = CredentialStore::parse("alice@example.net abc -\n").unwrap_err();
        assert_eq!(bad.line, 1);
        assert!(bad.what.contains("MD5"), "{bad}");
        let e = CredentialStore::parse("\n\nnobody -\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(CredentialStore::parse("x@y - -\n").is_err());
        assert!(CredentialStore::parse("noat - 00\n").is_err());
    }
}
