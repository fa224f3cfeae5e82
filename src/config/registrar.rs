//! `[registrar]`: the edge as registrar of its served domains (RFC 3261
//! §10, digest authentication per RFC 8760, the location service's store).

use super::validate::{bad, check_range, read_regular_file};
use super::ConfigError;
use crate::dataplane::registrar::RegistrarConfig;
use crate::registrar::credentials::{Credential, CredentialStore};
use crate::registrar::Settings;
use crate::sip::digest::{Algorithm, Ha1};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrarConf {
    /// Served domains (also the digest realms); empty = no registrar:
    /// REGISTER is routed like any request.
    pub domains: Vec<String>,
    /// Credentials, one user per line: `AOR MD5_HA1 SHA256_HA1`.
    pub credentials_file: Option<String>,
    /// Credentials inline (HA1 values, never passwords).
    #[serde(rename = "user")]
    pub users: Vec<UserConf>,
    /// The location service's redb file; empty = in memory only.
    pub store: String,
    pub default_expires: u32,
    pub min_expires: u32,
    pub max_expires: u32,
    pub max_contacts: usize,
    /// Client requests only from registered, authenticated users (else
    /// `403 Forbidden - Not Registered`).
    pub require_registration: bool,
    pub nonce_lifetime_s: u64,
    /// Failed authentications per source IP per window.
    pub max_failures: u32,
    pub failure_window_s: u64,
    /// Bound of the workers' queue to the registrar thread.
    pub queue: usize,
    /// Most AoRs the location service holds.
    pub max_aors: usize,
    /// Digest algorithms challenged, most preferred first: "SHA-256", "MD5".
    pub algorithms: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConf {
    pub aor: String,
    #[serde(default)]
    pub ha1_md5: Option<String>,
    #[serde(default)]
    pub ha1_sha256: Option<String>,
}

impl Default for RegistrarConf {
    fn default() -> Self {
        RegistrarConf {
            domains: Vec::new(),
            credentials_file: None,
            users: Vec::new(),
            store: String::new(),
            default_expires: 3600,
            min_expires: 60,
            max_expires: 7200,
            max_contacts: 10,
            require_registration: false,
            nonce_lifetime_s: 300,
            max_failures: 10,
            failure_window_s: 60,
            queue: 8192,
            max_aors: 2_000_000,
            algorithms: vec!["SHA-256".into(), "MD5".into()],
        }
    }
}

impl RegistrarConf {
    /// `None` when no domain is served. `secret` (`[trust] secret`) keys
    /// the nonces, so every edge of a deployment accepts the others'.
    pub fn validate(&self, secret: Option<&[u8]>) -> Result<Option<RegistrarConfig>, ConfigError> {
        if self.domains.is_empty() {
            return Ok(None);
        }
        for d in &self.domains {
            let ok = !d.is_empty()
                && d.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b));
            if !ok {
                return Err(bad(
                    "registrar.domains",
                    format!("{d:?} is not a domain name"),
                ));
            }
        }
        check_range("registrar.min_expires", self.min_expires, 1..=86_400)?;
        check_range(
            "registrar.default_expires",
            self.default_expires,
            self.min_expires..=self.max_expires,
        )?;
        check_range(
            "registrar.max_expires",
            self.max_expires,
            self.min_expires..=604_800,
        )?;
        check_range(
            "registrar.max_contacts",
            self.max_contacts,
            1..=crate::sip::contact::MAX_REGISTER_CONTACTS,
        )?;
        check_range(
            "registrar.nonce_lifetime_s",
            self.nonce_lifetime_s,
            10..=86_400,
        )?;
        check_range("registrar.max_failures", self.max_failures, 1..=1_000_000)?;
        check_range(
            "registrar.failure_window_s",
            self.failure_window_s,
            1..=86_400,
        )?;
        check_range("registrar.queue", self.queue, 16..=1_000_000)?;
        check_range("registrar.max_aors", self.max_aors, 1..=50_000_000)?;
        let mut algorithms = Vec::new();
        for a in &self.algorithms {
            let alg = Algorithm::from_token(a.as_bytes()).ok_or_else(|| {
                bad(
                    "registrar.algorithms",
                    format!("{a:?}: want \"SHA-256\" or \"MD5\""),
                )
            })?;
            if algorithms.contains(&alg) {
                return Err(bad("registrar.algorithms", format!("{a} listed twice")));
            }
            algorithms.push(alg);
        }
        if algorithms.is_empty() {
            return Err(bad("registrar.algorithms", "at least one algorithm"));
        }
        Ok(Some(RegistrarConfig {
            settings: Settings {
                domains: self
                    .domains
                    .iter()
                    .map(|d| d.to_ascii_lowercase())
                    .collect(),
                default_expires: self.default_expires,
                min_expires: self.min_expires,
                max_expires: self.max_expires,
                max_contacts: self.max_contacts,
                nonce_lifetime_s: self.nonce_lifetime_s,
                max_failures: self.max_failures,
                failure_window_s: self.failure_window_s,
                algorithms,
            },
            require_registration: self.require_registration,
            store: (!self.store.is_empty()).then(|| PathBuf::from(&self.store)),
            queue: self.queue,
            max_aors: self.max_aors,
            nonce_key: nonce_key(secret),
            credentials: std::sync::Arc::new(self.credentials()?),
            credentials_file: self.credentials_file.as_ref().map(PathBuf::from),
        }))
    }

    fn credentials(&self) -> Result<CredentialStore, ConfigError> {
        let mut store = match &self.credentials_file {
            Some(path) => {
                let text = read_regular_file(path)
                    .map_err(|e| bad("registrar.credentials_file", format!("{path}: {e}")))?;
                CredentialStore::parse(&text)
                    .map_err(|e| bad("registrar.credentials_file", format!("{path}: {e}")))?
            }
            None => CredentialStore::default(),
        };
        for (i, u) in self.users.iter().enumerate() {
            let key = format!("registrar.user[{i}]");
            let hash = |alg, v: &Option<String>| -> Result<Option<Ha1>, ConfigError> {
                v.as_deref()
                    .map(|h| {
                        Ha1::from_hex(alg, h.as_bytes())
                            .map_err(|e| bad(&key, format!("{}: {e}", alg.name())))
                    })
                    .transpose()
            };
            let cred = Credential {
                md5: hash(Algorithm::Md5, &u.ha1_md5)?,
                sha256: hash(Algorithm::Sha256, &u.ha1_sha256)?,
            };
            store.insert(&u.aor, cred).map_err(|e| bad(&key, e))?;
        }
        Ok(store)
    }
}

/// The nonce key: derived from the deployment's secret, else drawn once.
fn nonce_key(secret: Option<&[u8]>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"cpm-edge registrar nonce key\0");
    match secret {
        Some(s) => h.update(s),
        None => {
            for w in crate::sip::hash::random_key()
                .iter()
                .chain(&crate::sip::hash::random_key())
            {
                h.update(w.to_le_bytes());
            }
        }
    }
    h.finalize().into()
}
