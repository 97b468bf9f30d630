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
    current: RwLock<(Arc<CertifiedKey>, Stamp)>,
    reloads: AtomicU64,
    failed_reloads: AtomicU64,
}

impl CertStore {
    /// Loads the certificate; failing here stops the node (nothing to fall back on).
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, CertError> {
        let stamp_now = stamp(&files);
        let key = load_certified_key(&files)?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new((Arc::new(key), stamp_now)),
            reloads: AtomicU64::new(0),
            failed_reloads: AtomicU64::new(0),
        }))
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(guard) => guard.0.clone(),
            Err(poisoned) => poisoned.into_inner().0.clone(),
        }
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
                let changed = key.cert != self.current().cert;
                if let Ok(mut guard) = self.current.write() {
                    *guard = (Arc::new(key), now);
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
        Some(self.0.current())
    }
}
