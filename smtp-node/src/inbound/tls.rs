//! The listener certificate, reloaded when its files change.
//!
//! In a pool the certificate is a mounted Secret: the kubelet swaps the files when the
//! Secret changes (renewal, rotation). Sessions pick the certificate at handshake time
//! through [`CertStore`], so a reload affects new sessions only and never cuts one in
//! flight. A file that fails to load keeps the previous certificate: a half-written or
//! wrong Secret must not take TLS down.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no usable PEM private key: {detail}")]
    BadKey { path: PathBuf, detail: String },
    #[error("the private key in {key} does not match the certificate in {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("cannot read the certificate's validity: {detail}")]
    Validity { detail: String },
}

/// The certificate's notAfter, in Unix seconds: what the expiry alert compares with
/// the time. Read from the certificate served rather than the file, so that a file
/// that failed to load does not hide the expiry of the one still in use.
pub fn not_after(cert: &CertificateDer<'_>) -> Result<i64, CertError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| CertError::Validity {
            detail: e.to_string(),
        })?;
    Ok(parsed.validity().not_after.timestamp())
}

/// Loads a certificate chain and its key, and checks that they belong together.
pub fn load_certified_key(files: &TlsFiles) -> Result<CertifiedKey, CertError> {
    let cert_pem = read(&files.cert_file)?;
    let key_pem = read(&files.key_file)?;
    certified_key_from_pem(&cert_pem, &key_pem, &files.cert_file, &files.key_file)
}

fn certified_key_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(CertError::NoCertificate {
            path: cert_path.to_path_buf(),
        });
    }
    let bad_key = |detail: String| CertError::BadKey {
        path: key_path.to_path_buf(),
        detail,
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| bad_key(e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => CertError::KeyMismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
        },
        other => bad_key(other.to_string()),
    })?;
    Ok(certified)
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    fs::read(path).map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// What the files looked like when last loaded, to notice changes cheaply.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    cert: Option<(SystemTime, u64)>,
    key: Option<(SystemTime, u64)>,
}

fn stamp(files: &TlsFiles) -> Stamp {
    let of = |p: &Path| {
        fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    Stamp {
        cert: of(&files.cert_file),
        key: of(&files.key_file),
    }
}

/// The current certificate, swapped atomically on reload.
#[derive(Debug)]
pub struct CertStore {
    files: TlsFiles,
    /// `None` until the files first load (a pod may start before its Secret exists).
    current: RwLock<(Option<Arc<CertifiedKey>>, Stamp)>,
    reloads: AtomicU64,
    failed_reloads: AtomicU64,
}

impl CertStore {
    /// Loads the certificate. Files that do not exist yet are not an error: in a pool
    /// the Secret may appear after the pod starts (a certificate being issued), and until
    /// then the node offers no TLS. Files that exist but do not load are an error.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, CertError> {
        let stamp_now = stamp(&files);
        let key = if stamp_now.cert.is_none() && stamp_now.key.is_none() {
            tracing::warn!(
                cert = %files.cert_file.display(),
                "no listener certificate yet; STARTTLS and AUTH are offered once it appears"
            );
            None
        } else {
            Some(Arc::new(load_certified_key(&files)?))
        };
        Ok(Arc::new(Self {
            files,
            current: RwLock::new((key, stamp_now)),
            reloads: AtomicU64::new(0),
            failed_reloads: AtomicU64::new(0),
        }))
    }

    /// The certificate served now, if there is one.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        match self.current.read() {
            Ok(guard) => guard.0.clone(),
            Err(poisoned) => poisoned.into_inner().0.clone(),
        }
    }

    pub fn has_certificate(&self) -> bool {
        self.current().is_some()
    }

    /// Successful reloads since start.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Reloads that failed and kept the previous certificate.
    pub fn failed_reloads(&self) -> u64 {
        self.failed_reloads.load(Ordering::Relaxed)
    }

    /// Reloads when the files changed since the last load. Returns whether the served
    /// certificate changed.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.files);
        let last = match self.current.read() {
            Ok(guard) => guard.1.clone(),
            Err(poisoned) => poisoned.into_inner().1.clone(),
        };
        if now == last {
            return false;
        }
        match load_certified_key(&self.files) {
            Ok(key) => {
                let changed = self.current().is_none_or(|old| old.cert != key.cert);
                if let Ok(mut guard) = self.current.write() {
                    *guard = (Some(Arc::new(key)), now);
                }
                if changed {
                    self.reloads.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(cert = %self.files.cert_file.display(), "listener certificate reloaded");
                }
                changed
            }
            Err(error) => {
                // Remember the stamp so a broken file is reported once, not every poll;
                // a later fix changes the stamp again.
                if let Ok(mut guard) = self.current.write() {
                    guard.1 = now;
                }
                self.failed_reloads.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "new listener certificate not loaded; still serving the previous one");
                false
            }
        }
    }

    /// A TLS acceptor that serves whatever certificate is current at each handshake.
    pub fn acceptor(self: &Arc<Self>) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|_| ServerConfig::builder());
        let mut config = builder
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols.clear();
        TlsAcceptor::from(Arc::new(config))
    }
}

#[derive(Debug)]
struct Resolver(Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_expiry_of_a_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["relay.test".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2030, 1, 2);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(not_after(cert.der()).unwrap(), 1_893_542_400);
    }

    #[test]
    fn garbage_is_an_error() {
        let der = CertificateDer::from(vec![0x30, 0x03, 0x01, 0x01, 0xff]);
        assert!(matches!(not_after(&der), Err(CertError::Validity { .. })));
    }
}
