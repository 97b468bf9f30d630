//! mTLS between the nodes of a pool, from the pool's peer CA.
//!
//! The operator mounts one Secret into every pod: `ca.crt` (the CAs to trust, more than
//! one while the CA rotates) and `<node>.crt` / `<node>.key` per node. Both sides verify:
//! a node accepts a peer only with a certificate from a trusted CA, and checks the peer's
//! DNS name when it connects out. The files are re-read when they change, and each new
//! connection takes the configuration current at that moment, so a rotation never needs
//! a restart and never cuts a connection in flight.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::PeerTlsFiles;

#[derive(Debug, thiserror::Error)]
pub enum PeerTlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp(Vec<Option<(SystemTime, u64)>>);

struct Configs {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    stamp: Stamp,
}

pub struct PeerTls {
    paths: [PathBuf; 3],
    current: RwLock<Configs>,
    reloads: AtomicU64,
    failed_reloads: AtomicU64,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("paths", &self.paths)
            .finish()
    }
}

fn stamp(paths: &[PathBuf; 3]) -> Stamp {
    Stamp(
        paths
            .iter()
            .map(|p| {
                fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())))
            })
            .collect(),
    )
}

fn read(path: &Path) -> Result<Vec<u8>, PeerTlsError> {
    fs::read(path).map_err(|source| PeerTlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(path: &Path, detail: impl ToString) -> PeerTlsError {
    PeerTlsError::Invalid {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

fn build(paths: &[PathBuf; 3]) -> Result<Configs, PeerTlsError> {
    let [ca, cert, key] = paths;
    let stamp = stamp(paths);
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(&read(ca)?) {
        roots
            .add(der.map_err(|e| invalid(ca, e))?)
            .map_err(|e| invalid(ca, e))?;
    }
    if roots.is_empty() {
        return Err(invalid(ca, "no CA certificate"));
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(cert, e))?;
    if chain.is_empty() {
        return Err(invalid(cert, "no certificate"));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| invalid(key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // A certificate and key caught mid-replacement must not be served together.
    rustls::sign::CertifiedKey::from_der(chain.clone(), key_der.clone_key(), &provider)
        .map_err(|e| invalid(key, e))?;
    let roots = Arc::new(roots);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| invalid(ca, e))?;
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(cert, e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key_der.clone_key())
        .map_err(|e| invalid(key, e))?;
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(cert, e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key_der)
        .map_err(|e| invalid(key, e))?;
    Ok(Configs {
        server: Arc::new(server),
        client: Arc::new(client),
        stamp,
    })
}

impl PeerTls {
    /// Loads the trust bundle and this node's certificate (`<certDir>/<node>.crt|.key`).
    pub fn load(files: &PeerTlsFiles, node: &str) -> Result<Arc<Self>, PeerTlsError> {
        let paths = [
            files.ca_file.clone(),
            files.cert_dir.join(format!("{node}.crt")),
            files.cert_dir.join(format!("{node}.key")),
        ];
        let current = build(&paths)?;
        Ok(Arc::new(Self {
            paths,
            current: RwLock::new(current),
            reloads: AtomicU64::new(0),
            failed_reloads: AtomicU64::new(0),
        }))
    }

    /// For accepting a peer: requires and verifies its certificate.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(c) => c.server.clone(),
            Err(poisoned) => poisoned.into_inner().server.clone(),
        }
    }

    /// For connecting to a peer: presents this node's certificate.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        match self.current.read() {
            Ok(c) => c.client.clone(),
            Err(poisoned) => poisoned.into_inner().client.clone(),
        }
    }

    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    pub fn failed_reloads(&self) -> u64 {
        self.failed_reloads.load(Ordering::Relaxed)
    }

    /// Re-reads the files if any changed. A set that does not load (a file missing or
    /// half-replaced) keeps the previous configuration and is tried again on the next
    /// change. Returns whether the configuration changed.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.paths);
        let unchanged = match self.current.read() {
            Ok(c) => c.stamp == now,
            Err(poisoned) => poisoned.into_inner().stamp == now,
        };
        if unchanged {
            return false;
        }
        match build(&self.paths) {
            Ok(configs) => {
                if let Ok(mut current) = self.current.write() {
                    *current = configs;
                }
                self.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(cert = %self.paths[1].display(), "peer TLS material reloaded");
                true
            }
            Err(error) => {
                if let Ok(mut current) = self.current.write() {
                    current.stamp = now;
                }
                self.failed_reloads.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "new peer TLS material not loaded; keeping the previous");
                false
            }
        }
    }
}
