//! TLS client configurations for delivery.
//!
//! Two trust policies exist. Opportunistic STARTTLS towards MX hosts accepts any
//! certificate: MX host names are not authenticated by DNS, so a certificate check proves
//! little, and refusing self-signed certificates would push that mail to plaintext, which
//! is strictly worse (RFC 7435). Verified TLS (`requireTls`, smarthost `starttls` /
//! `implicit`) checks the chain against the system roots plus `tlsCaFile` and the name
//! against the host we meant to reach.
//!
//! Both configurations carry the ring provider explicitly, so they never depend on a
//! process-wide default provider.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_rustls::TlsConnector;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read tlsCaFile {path}: {source}")]
    CaFile {
        path: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("tlsCaFile {path} holds no usable certificate")]
    EmptyCaFile { path: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The two connectors, built once and shared by every connection.
#[derive(Clone)]
pub struct TlsConnectors {
    pub opportunistic: TlsConnector,
    pub verified: TlsConnector,
}

impl TlsConnectors {
    pub fn new(extra_ca: Option<&Path>) -> Result<Self, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());

        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for err in &native.errors {
            tracing::warn!(error = %err, "cannot load some system trust anchors");
        }
        let (added, ignored) = roots.add_parsable_certificates(native.certs);
        tracing::debug!(added, ignored, "system trust anchors loaded");
        if let Some(path) = extra_ca {
            let display = path.display().to_string();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|source| TlsSetupError::CaFile {
                    path: display.clone(),
                    source,
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsSetupError::EmptyCaFile { path: display });
            }
        }

        let verified = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let opportunistic = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate {
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth();
        Ok(Self {
            opportunistic: TlsConnector::from(Arc::new(opportunistic)),
            verified: TlsConnector::from(Arc::new(verified)),
        })
    }
}

/// The server name to present (SNI) and, for verified TLS, to check.
pub fn server_name(host: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(host.trim_end_matches('.').to_string()).ok()
}

/// Accepts any certificate but still checks that the server holds the key of the
/// certificate it presented, so the session is encrypted to whoever answered.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_without_a_process_default_provider() {
        TlsConnectors::new(None).unwrap();
    }

    #[test]
    fn rejects_a_ca_file_without_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        assert!(TlsConnectors::new(Some(&path)).is_err());
        assert!(TlsConnectors::new(Some(&dir.path().join("missing.pem"))).is_err());
    }

    #[test]
    fn server_names() {
        assert!(server_name("mx.example.com.").is_some());
        assert!(server_name("192.0.2.1").is_some());
        assert!(server_name("not a name").is_none());
    }
}
