//! The device's TLS: one rustls configuration for every connection to an
//! `https://` server, the HTTP calls (registration, refresh, spaces, pull)
//! and the sync socket alike, so both trust the same certificates.
//!
//! It is built only for a secure server: a plain `http://` server never
//! needs root certificates, so a device without any (a container without
//! `ca-certificates`, an Android device whose platform verifier was never
//! initialized) still syncs with one.
//!
//! # Which certificates are trusted
//!
//! - **iOS, iPadOS, macOS (and Windows):** the operating system's verifier
//!   (`rustls-platform-verifier` over the Security framework): the
//!   system's and the user's trust settings, revocation, and no code in the
//!   app.
//! - **Android:** the bundled Mozilla root set (`webpki-roots`). Android's
//!   platform verifier is reached through the JVM, and the app would have
//!   to hand it a JNI environment and a context before the first
//!   connection; the bundled set needs nothing.
//! - **Linux and other Unix systems:** the system's CA files (the paths
//!   OpenSSL uses; `SSL_CERT_FILE` and `SSL_CERT_DIR` override them), or
//!   the bundled Mozilla set when the system has none.
//!
//! On every platform [`TlsSettings::trusted_roots_pem`] adds roots (a
//! private CA, a test CA), and [`TlsSettings::pinned_spki_sha256`] narrows
//! trust: once the chain is valid, one of its certificates must carry a
//! pinned public key.
//!
//! A handshake that fails for any of these reasons is a [`TlsFailure`]
//! with a sentence a developer can act on (see [`describe`]).

use std::sync::Arc;

use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::error::Error;

/// What the app adds to the platform's trust ([`crate::SyncConfig::tls`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// Extra root certificates to trust, each a PEM text of one or more
    /// `CERTIFICATE` blocks: a private CA, or a test CA.
    pub trusted_roots_pem: Vec<String>,
    /// Public-key pins: the SHA-256 of a certificate's DER
    /// `SubjectPublicKeyInfo`, in base64 (optionally prefixed `sha256/`,
    /// the form `openssl` pipelines and OkHttp print) or in hex. When any
    /// are given, a server is trusted only if its chain is valid and one of
    /// the certificates it presents has one of these keys. Pin a backup key
    /// too, or a key rotation locks the app out.
    pub pinned_spki_sha256: Vec<String>,
}

/// Settings checked and decoded once, at [`crate::Client::start_sync`].
#[derive(Debug, Clone, Default)]
pub(crate) struct CheckedTls {
    extra_roots: Vec<CertificateDer<'static>>,
    pins: Vec<[u8; 32]>,
}

impl TlsSettings {
    /// Decodes the roots and pins, or says which one is wrong.
    pub(crate) fn check(&self) -> Result<CheckedTls, Error> {
        let mut extra_roots = Vec::new();
        for (i, pem) in self.trusted_roots_pem.iter().enumerate() {
            let before = extra_roots.len();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| {
                    Error::InvalidConfig(format!(
                        "trusted root {}: not a PEM certificate: {e}",
                        i + 1
                    ))
                })?;
                // Parsed now, so a damaged certificate is reported here and
                // not as an unknown issuer at every connection.
                webpki::anchor_from_trusted_cert(&cert)
                    .map_err(|e| Error::InvalidConfig(format!("trusted root {}: {e}", i + 1)))?;
                extra_roots.push(cert);
            }
            if extra_roots.len() == before {
                return Err(Error::InvalidConfig(format!(
                    "trusted root {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                    i + 1
                )));
            }
        }
        let pins = self
            .pinned_spki_sha256
            .iter()
            .map(|pin| parse_pin(pin))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CheckedTls { extra_roots, pins })
    }
}

/// A pin as base64 (`sha256/…` or bare) or hex.
fn parse_pin(pin: &str) -> Result<[u8; 32], Error> {
    let text = pin.trim();
    let text = text.strip_prefix("sha256/").unwrap_or(text);
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text).ok()
    } else {
        base64::engine::general_purpose::STANDARD.decode(text).ok()
    };
    bytes
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            Error::InvalidConfig(format!(
                "pin {pin:?} is not a SHA-256 in base64 (sha256/…) or hex"
            ))
        })
}

/// The SHA-256 of a certificate's `SubjectPublicKeyInfo`: what a pin names.
pub fn spki_sha256(cert_der: &[u8]) -> Option<[u8; 32]> {
    let cert = CertificateDer::from(cert_der);
    let parsed = webpki::EndEntityCert::try_from(&cert).ok()?;
    Some(Sha256::digest(parsed.subject_public_key_info().as_ref()).into())
}

impl CheckedTls {
    /// The client configuration for a secure server: the platform's trust
    /// plus the extra roots, narrowed by the pins.
    pub(crate) fn client_config(&self) -> Result<rustls::ClientConfig, Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = platform_verifier(&provider, &self.extra_roots)?;
        let verifier: Arc<dyn ServerCertVerifier> = if self.pins.is_empty() {
            verifier
        } else {
            Arc::new(PinnedVerifier {
                inner: verifier,
                pins: self.pins.clone(),
            })
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::InvalidConfig(format!("TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(config)
    }
}

/// A configuration that trusts nothing, for a plain `http://` server: the
/// HTTP client wants one, and building it reads no certificate.
pub(crate) fn plain_config() -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidConfig(format!("TLS: {e}")))?
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth())
}

#[cfg(any(target_vendor = "apple", windows))]
fn platform_verifier(
    provider: &Arc<CryptoProvider>,
    extra_roots: &[CertificateDer<'static>],
) -> Result<Arc<dyn ServerCertVerifier>, Error> {
    let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(
        extra_roots.iter().cloned(),
        Arc::clone(provider),
    )
    .map_err(|e| Error::Tls(format!("the platform's certificate verifier: {e}")))?;
    Ok(Arc::new(verifier))
}

#[cfg(not(any(target_vendor = "apple", windows)))]
fn platform_verifier(
    provider: &Arc<CryptoProvider>,
    extra_roots: &[CertificateDer<'static>],
) -> Result<Arc<dyn ServerCertVerifier>, Error> {
    let mut roots = platform_roots();
    for cert in extra_roots {
        roots
            .add(cert.clone())
            .map_err(|e| Error::InvalidConfig(format!("trusted root: {e}")))?;
    }
    rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::clone(provider),
    )
    .build()
    .map(|v| v as Arc<dyn ServerCertVerifier>)
    .map_err(|e| Error::Tls(format!("no certificate can be verified: {e}")))
}

/// Android: the bundled set (see the module doc).
#[cfg(target_os = "android")]
fn platform_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

/// Linux and other Unix systems: the system's CA files, or the bundled set
/// when there are none.
#[cfg(all(unix, not(target_os = "android"), not(target_vendor = "apple")))]
fn platform_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::info!(
            target: "tandem_core",
            "no CA certificates on this system: trusting the bundled Mozilla set"
        );
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    roots
}

/// Any other target (none ships today): only the extra roots.
#[cfg(not(any(unix, windows)))]
fn platform_roots() -> RootCertStore {
    RootCertStore::empty()
}

/// Checks the chain with `inner`, then the pins.
#[derive(Debug)]
struct PinnedVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    pins: Vec<[u8; 32]>,
}

/// The presented chain holds no pinned key.
#[derive(Debug)]
struct PinMismatch;

impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no certificate of the chain has a pinned public key")
    }
}

impl std::error::Error for PinMismatch {}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let pinned = std::iter::once(end_entity)
            .chain(intermediates)
            .filter_map(|cert| spki_sha256(cert))
            .any(|hash| self.pins.contains(&hash));
        if pinned {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(PinMismatch)),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// If `error` (or anything in its chain of sources) is a TLS failure, a
/// sentence that says what is wrong and what to do.
pub(crate) fn describe(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(sentence(tls));
        }
        // An io::Error's `source()` skips the error it wraps, which is
        // where tokio-rustls puts the handshake's failure (sometimes in an
        // io::Error inside another): step into it instead.
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

fn sentence(error: &rustls::Error) -> String {
    use rustls::Error as E;
    match error {
        E::InvalidCertificate(cert) => certificate_sentence(cert),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
            format!("the server did not answer with TLS (is it a plain http:// server?): {error}")
        }
        E::AlertReceived(alert) => format!("the server refused the TLS handshake ({alert:?})"),
        other => format!("the TLS handshake failed: {other}"),
    }
}

fn certificate_sentence(error: &CertificateError) -> String {
    use CertificateError as C;
    match error {
        C::UnknownIssuer => "the server's certificate is not signed by a trusted authority \
            (for a private or test CA, add its certificate to the trusted roots)"
            .to_owned(),
        C::NotValidForName => "the server's certificate is not valid for this host name".to_owned(),
        C::NotValidForNameContext {
            expected,
            presented,
        } => format!(
            "the server's certificate is not valid for {expected:?} (it names {})",
            presented.join(", ")
        ),
        C::Expired | C::ExpiredContext { .. } => {
            "the server's certificate has expired: the server must renew it".to_owned()
        }
        C::NotValidYet | C::NotValidYetContext { .. } => {
            "the server's certificate is not valid yet: check the device's clock".to_owned()
        }
        C::Revoked => "the server's certificate was revoked".to_owned(),
        C::Other(other) if other.0.downcast_ref::<PinMismatch>().is_some() => {
            "the server's certificate matches none of the pinned public keys \
             (a rotated key that is not pinned, or an interception)"
                .to_owned()
        }
        other => format!("the server's certificate was refused: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_base64_or_hex() {
        let hash = [7u8; 32];
        let b64 = base64::engine::general_purpose::STANDARD.encode(hash);
        assert_eq!(parse_pin(&b64).unwrap(), hash);
        assert_eq!(parse_pin(&format!("sha256/{b64}")).unwrap(), hash);
        assert_eq!(parse_pin(&hex::encode(hash)).unwrap(), hash);
        for bad in ["", "sha256/", "abc", &hex::encode([1u8; 20])] {
            assert!(
                matches!(parse_pin(bad), Err(Error::InvalidConfig(_))),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn roots_must_be_pem_certificates() {
        let bad = TlsSettings {
            trusted_roots_pem: vec!["not a certificate".into()],
            ..TlsSettings::default()
        };
        assert!(
            matches!(bad.check(), Err(Error::InvalidConfig(m)) if m.contains("trusted root 1"))
        );
        let garbled = TlsSettings {
            trusted_roots_pem: vec![
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
            ],
            ..TlsSettings::default()
        };
        assert!(matches!(garbled.check(), Err(Error::InvalidConfig(_))));
    }

    #[test]
    fn an_io_error_wrapping_a_certificate_error_is_described() {
        let tls = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let message = describe(&io).unwrap();
        assert!(
            message.contains("not signed by a trusted authority"),
            "{message}"
        );
        // As hyper's connector hands it on: one io::Error inside another.
        let outer = std::io::Error::other(io);
        assert!(describe(&outer).is_some());
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(describe(&plain), None);
    }
}
