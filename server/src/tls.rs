//! Terminating TLS in the server itself (`tandem serve --tls-cert FILE
//! --tls-key FILE`): rustls with aws-lc-rs, TLS 1.2 and 1.3, HTTP/1.1 by
//! ALPN. The HTTP endpoints and the WebSocket share the port, as without
//! TLS. Behind a load balancer that terminates TLS, leave it off.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The server's certificate chain and private key, as PEM.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The certificate chain, leaf first, as PEM `CERTIFICATE` blocks.
    pub cert_chain_pem: Vec<u8>,
    /// The private key (PKCS#8, PKCS#1 or SEC1), as PEM.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("TlsIdentity")
            .field("cert_chain_pem_bytes", &self.cert_chain_pem.len())
            .finish_non_exhaustive()
    }
}

/// Why the certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The certificate file holds no PEM certificate, or a damaged one.
    #[error("the TLS certificate: {0}")]
    Certificate(String),
    /// The key file holds no PEM private key, or a damaged one.
    #[error("the TLS key: {0}")]
    Key(String),
    /// rustls refused the pair (the key does not match the certificate, an
    /// unsupported key type).
    #[error("the TLS certificate and key: {0}")]
    Pair(String),
}

impl TlsIdentity {
    /// The acceptor that terminates TLS with this identity.
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsSetupError> {
        let chain = CertificateDer::pem_slice_iter(&self.cert_chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsSetupError::Certificate(e.to_string()))?;
        if chain.is_empty() {
            return Err(TlsSetupError::Certificate(
                "no PEM certificate (-----BEGIN CERTIFICATE-----) found".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| TlsSetupError::Key(e.to_string()))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::Pair(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| TlsSetupError::Pair(e.to_string()))?;
        // Only HTTP/1.1 is served (the WebSocket upgrade is an HTTP/1.1
        // request); saying so lets clients that offer h2 settle at once.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}
