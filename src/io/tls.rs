//! TLS for stream connections, on rustls (TLS 1.2 and 1.3, the ring
//! provider): the server configuration a listener's connections start
//! from, built from PEM bytes, and swapped whole when the files are
//! re-read (SIGHUP) so that a new certificate serves the next handshake
//! while established sessions keep theirs.
//!
//! Why rustls and not a hand-written TLS: TLS is neither the hot path nor
//! something to get right twice; rustls is sans-IO (records in, records
//! out), which fits [`crate::io::stream`]'s readiness loop without a
//! thread or a runtime per connection.

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::sync::Arc;

/// The configuration new connections of a TLS listener take (swapped on
/// reload).
pub type Acceptor = ArcSwap<ServerConfig>;

/// What a TLS server presents and asks for, as PEM bytes.
pub struct ServerPem<'a> {
    /// The certificate chain, leaf first.
    pub chain: &'a [u8],
    pub key: &'a [u8],
    /// Certificate authorities a client certificate must chain to; `None`:
    /// clients are not asked for one.
    pub client_ca: Option<&'a [u8]>,
    /// With `client_ca`: a client without a certificate is refused (else
    /// it may go on, unauthenticated).
    pub require_client_cert: bool,
}

/// Why a configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate chain: {0}")]
    Chain(String),
    #[error("private key: {0}")]
    Key(String),
    #[error("CA: {0}")]
    ClientCa(String),
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

/// A server configuration from PEM: TLS 1.2 and 1.3 with rustls' safe
/// defaults; the key must match the leaf certificate.
pub fn server_config(pem: &ServerPem<'_>) -> Result<ServerConfig, TlsError> {
    let chain = certificates(pem.chain).map_err(TlsError::Chain)?;
    let key = PrivateKeyDer::from_pem_slice(pem.key).map_err(|e| TlsError::Key(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match pem.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certificates(ca).map_err(TlsError::ClientCa)? {
                roots
                    .add(c)
                    .map_err(|e| TlsError::ClientCa(e.to_string()))?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = if pem.require_client_cert {
                v
            } else {
                v.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                v.build().map_err(|e| TlsError::ClientCa(e.to_string()))?,
            )
        }
    };
    // with_single_cert checks that the key matches the leaf.
    Ok(builder.with_single_cert(chain, key)?)
}

/// Every certificate in `pem`, at least one.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if chain.is_empty() {
        return Err("no CERTIFICATE in the PEM".into());
    }
    Ok(chain)
}

/// A fresh server session for one accepted connection, its buffered
/// bytes bounded by `max_buffered` (rustls' own buffers, beside the
/// connection's write queue).
pub fn accept(
    acceptor: &Acceptor,
    max_buffered: usize,
) -> Result<rustls::ServerConnection, rustls::Error> {
    let mut s = rustls::ServerConnection::new(acceptor.load_full())?;
    s.set_buffer_limit(Some(max_buffered));
    Ok(s)
}

/// A client configuration for the edge's own connections to TLS peers
/// (CS links): servers verified against `ca` (PEM), and the edge's
/// certificate presented when `identity` (chain, key PEM) is given.
pub fn client_config(
    ca: &[u8],
    identity: Option<(&[u8], &[u8])>,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certificates(ca).map_err(TlsError::ClientCa)? {
        roots
            .add(c)
            .map_err(|e| TlsError::ClientCa(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots);
    Ok(match identity {
        None => b.with_no_client_auth(),
        Some((chain, key)) => b.with_client_auth_cert(
            certificates(chain).map_err(TlsError::Chain)?,
            PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::Key(e.to_string()))?,
        )?,
    })
}

/// Whether a peer's certificate (DER; its chain verified by the handshake
/// against the configured CAs) names the IP address `ip` among its
/// subject alternative names: how a peer that opened a connection proves
/// it is the host its Via says (RFC 5923 §5.2), e.g. a shard on its link.
pub fn certificate_names_ip(der: &[u8], ip: std::net::IpAddr) -> bool {
    let der = CertificateDer::from(der);
    let Ok(cert) = rustls::server::ParsedCertificate::try_from(&der) else {
        return false;
    };
    rustls::client::verify_server_name(&cert, &ServerName::IpAddress(ip.into())).is_ok()
}
