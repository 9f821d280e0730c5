//! The rustls configurations the proxy builds: the client side towards Contentstack (the public
//! web roots plus `upstream.ca_file`), shared by the forwarder and the session client so that both
//! trust exactly the same roots, and the server side of an inbound TLS listener. All on the `ring`
//! provider, with rustls's safe default protocol versions. A leaf: it takes PEM bytes, not
//! configuration, and knows nothing else of the crate.
use std::sync::Arc;

use rustls::pki_types::CertificateDer;

/// Why the client configuration towards Contentstack could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("upstream.ca_file: {0}")]
    Roots(#[source] rustls::Error),
    #[error("upstream.ca_file: cannot parse PEM")]
    Pem(#[source] std::io::Error),
    #[error("TLS setup")]
    Setup(#[source] rustls::Error),
}

/// Why an inbound certificate and key do not make a server configuration.
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    #[error("no certificate in tls_cert_file")]
    NoCertificate,
    #[error("no private key in tls_key_file")]
    NoKey,
    #[error("cannot parse PEM: {0}")]
    Pem(#[source] std::io::Error),
    #[error("certificate and key do not form a usable TLS configuration: {0}")]
    Rustls(#[source] rustls::Error),
}

/// The certificates of a PEM file, in order. The error of a malformed file may quote a line of it,
/// so callers that read a secret file say only that it is unusable.
pub fn certificates(pem: &[u8]) -> std::io::Result<Vec<CertificateDer<'static>>> {
    rustls_pemfile::certs(&mut &*pem).collect()
}

/// Whether `pem` holds a private key (PKCS#8, PKCS#1 or SEC1) that can be read.
pub fn has_private_key(pem: &[u8]) -> bool {
    matches!(rustls_pemfile::private_key(&mut &*pem), Ok(Some(_)))
}

/// The client configuration towards Contentstack: the built-in public roots, plus those of
/// `extra_roots_pem` (`upstream.ca_file`).
pub fn client_config(
    extra_roots_pem: Option<&[u8]>,
) -> Result<rustls::ClientConfig, ClientTlsError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(pem) = extra_roots_pem {
        for cert in certificates(pem).map_err(ClientTlsError::Pem)? {
            roots.add(cert).map_err(ClientTlsError::Roots)?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(ClientTlsError::Setup)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A client configuration that trusts exactly `roots` (the fleet store's: its `ca_file`, or the
/// public roots).
pub fn client_config_trusting(
    roots: rustls::RootCertStore,
) -> Result<rustls::ClientConfig, rustls::Error> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The server configuration of an inbound TLS listener, offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<rustls::ServerConfig, ServerTlsError> {
    let certs = certificates(cert_chain_pem).map_err(ServerTlsError::Pem)?;
    if certs.is_empty() {
        return Err(ServerTlsError::NoCertificate);
    }
    let key = rustls_pemfile::private_key(&mut &*key_pem)
        .map_err(ServerTlsError::Pem)?
        .ok_or(ServerTlsError::NoKey)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(ServerTlsError::Rustls)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(ServerTlsError::Rustls)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
