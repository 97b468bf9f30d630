//! DKIM signing (RFC 6376; ed25519-sha256 per RFC 8463) at delivery time.
//!
//! Messages are signed when they leave, not when they arrive, so a rotated key applies to
//! mail that was already queued, and a signature is never older than the delivery
//! attempt. Signing uses relaxed/relaxed canonicalization, which survives the header
//! rewrapping common on the way.
//!
//! The signing domain is chosen from the `From:` header (the identity DMARC aligns
//! with), falling back to the envelope sender: the most specific configured domain that
//! equals it or is a parent of it. Every key configured for that domain signs, so an RSA
//! and an Ed25519 key give the usual dual signature.
//!
//! Key files are re-read when their modification time changes (a Kubernetes Secret
//! update swaps the file); a replacement that cannot be parsed is ignored with a warning
//! and the previous key keeps signing. In a pool the keys come from the pool's domain
//! set instead ([`crate::domains`]), which is reloaded as a whole; each message is signed
//! from one snapshot of it.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, Done};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::domains::DomainState;
use crate::outbound::config::{DkimAlgorithm, DkimConfig};

#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("cannot read DKIM key {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("DKIM key {path} is not a PEM private key: {detail}")]
    Pem { path: String, detail: String },
    #[error("DKIM key {path} is not a usable {algorithm:?} key: {detail}")]
    Key {
        path: String,
        algorithm: DkimAlgorithm,
        detail: String,
    },
    #[error("signing failed: {0}")]
    Sign(String),
}

/// A key ready to sign for one domain and selector.
pub struct DkimSigner {
    domain: String,
    selector: String,
    inner: mail_auth::dkim::DkimSigner<DkimKey, Done>,
}

impl std::fmt::Debug for DkimSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimSigner")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .finish_non_exhaustive()
    }
}

impl DkimSigner {
    pub fn new(config: &DkimConfig, key: DkimKey) -> Self {
        let inner = mail_auth::dkim::DkimSigner::from_key(key)
            .domain(config.domain.to_ascii_lowercase())
            .selector(config.selector.clone())
            .headers(config.headers.iter().cloned())
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        Self {
            domain: config.domain.to_ascii_lowercase(),
            selector: config.selector.clone(),
            inner,
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn selector(&self) -> &str {
        &self.selector
    }
}

/// Signs a message and returns the complete `DKIM-Signature` header field, CRLF
/// terminated, to be prepended to the message.
pub fn sign(message: &[u8], signer: &DkimSigner) -> Result<String, DkimError> {
    signer
        .inner
        .sign(message)
        .map(|signature| signature.to_header())
        .map_err(|err| DkimError::Sign(err.to_string()))
}

/// Parses a PEM private key: PKCS#8 for either algorithm, PKCS#1 for RSA.
pub fn parse_key(pem: &[u8], algorithm: DkimAlgorithm, path: &str) -> Result<DkimKey, DkimError> {
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(|err| DkimError::Pem {
        path: path.to_string(),
        detail: err.to_string(),
    })?;
    let key_error = |detail: String| DkimError::Key {
        path: path.to_string(),
        algorithm,
        detail,
    };
    match algorithm {
        DkimAlgorithm::Rsa => RsaKey::<Sha256>::from_key_der(der)
            .map(DkimKey::Rsa)
            .map_err(|err| key_error(err.to_string())),
        DkimAlgorithm::Ed25519 => match der {
            // OpenSSL writes PKCS#8 v1 (no public key), which the checked parser refuses.
            PrivateKeyDer::Pkcs8(pkcs8) => {
                Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8.secret_pkcs8_der())
                    .map(DkimKey::Ed25519)
                    .map_err(|err| key_error(err.to_string()))
            }
            _ => Err(key_error("Ed25519 keys must be PKCS#8".to_string())),
        },
    }
}

fn load_signer(config: &DkimConfig) -> Result<(Arc<DkimSigner>, Option<SystemTime>), DkimError> {
    let path = config.private_key_file.display().to_string();
    let read_error = |source| DkimError::Read {
        path: path.clone(),
        source,
    };
    let modified = std::fs::metadata(&config.private_key_file)
        .map_err(read_error)?
        .modified()
        .ok();
    let pem = std::fs::read(&config.private_key_file).map_err(read_error)?;
    let key = parse_key(&pem, config.algorithm, &path)?;
    Ok((Arc::new(DkimSigner::new(config, key)), modified))
}

struct Entry {
    config: DkimConfig,
    loaded: RwLock<(Arc<DkimSigner>, Option<SystemTime>)>,
}

impl Entry {
    /// The current signer, re-read first when the key file changed.
    fn signer(&self) -> Arc<DkimSigner> {
        let current = match self.loaded.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let modified = mtime(&self.config.private_key_file);
        if modified.is_none() || modified == current.1 {
            return current.0;
        }
        match load_signer(&self.config) {
            Ok(fresh) => {
                tracing::info!(domain = %self.config.domain, selector = %self.config.selector,
                    "DKIM key file changed; using the new key");
                let signer = fresh.0.clone();
                if let Ok(mut guard) = self.loaded.write() {
                    *guard = fresh;
                }
                signer
            }
            Err(err) => {
                tracing::warn!(error = %err, "DKIM key file changed but cannot be used; keeping the previous key");
                if let Ok(mut guard) = self.loaded.write() {
                    guard.1 = modified;
                }
                current.0
            }
        }
    }
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The configured signing keys, and the pool's when the node follows a pool's domain set.
#[derive(Default)]
pub struct DkimKeyring {
    entries: Vec<Entry>,
    pool_domains: Option<Arc<DomainState>>,
}

impl std::fmt::Debug for DkimKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.entries
                    .iter()
                    .map(|e| (&e.config.domain, &e.config.selector)),
            )
            .finish()
    }
}

/// What signing did to a message.
#[derive(Debug)]
pub enum Signing {
    /// Header fields to prepend, one per key.
    Signed(Vec<String>),
    NoKey,
    Failed(DkimError),
}

impl DkimKeyring {
    /// Reads every key now, so a broken key stops the node at start rather than
    /// silently sending unsigned mail.
    pub fn load(configs: &[DkimConfig]) -> Result<Self, DkimError> {
        let entries = configs
            .iter()
            .map(|config| {
                Ok(Entry {
                    config: config.clone(),
                    loaded: RwLock::new(load_signer(config)?),
                })
            })
            .collect::<Result<Vec<_>, DkimError>>()?;
        Ok(Self {
            entries,
            pool_domains: None,
        })
    }

    /// Also signs with the keys of the pool's domain set in force at each message.
    pub fn with_pool_domains(mut self, state: Arc<DomainState>) -> Self {
        self.pool_domains = Some(state);
        self
    }

    /// Whether no key is configured (so unsigned mail is expected, not counted).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self
                .pool_domains
                .as_ref()
                .is_none_or(|state| state.current().key_count() == 0)
    }

    /// Signers for a domain: those of the most specific configured domain that equals it
    /// or is one of its parents (configured keys first, then the pool's).
    pub fn signers_for(&self, domain: &str) -> Vec<Arc<DkimSigner>> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        // One snapshot for the whole lookup: a reload meanwhile cannot mix two sets.
        let pool = self.pool_domains.as_ref().map(|state| state.current());
        let mut candidate = domain.as_str();
        loop {
            let mut matching: Vec<Arc<DkimSigner>> = self
                .entries
                .iter()
                .filter(|e| e.config.domain.eq_ignore_ascii_case(candidate))
                .map(Entry::signer)
                .collect();
            if matching.is_empty()
                && let Some(signer) = pool.as_ref().and_then(|set| set.signer(candidate))
            {
                matching.push(signer.clone());
            }
            if !matching.is_empty() {
                return matching;
            }
            match candidate.split_once('.') {
                Some((_, parent)) if parent.contains('.') => candidate = parent,
                _ => return Vec::new(),
            }
        }
    }

    /// Signs a message for its author domain (`From:`), or the envelope sender's domain
    /// when the message has no usable `From:`.
    pub fn sign_message(&self, message: &[u8], envelope_sender: &str) -> Signing {
        if self.entries.is_empty() && self.pool_domains.is_none() {
            return Signing::NoKey;
        }
        let domain = author_domain(message).or_else(|| {
            envelope_sender
                .rsplit_once('@')
                .map(|(_, domain)| domain.to_string())
        });
        let Some(domain) = domain else {
            return Signing::NoKey;
        };
        let signers = self.signers_for(&domain);
        if signers.is_empty() {
            return Signing::NoKey;
        }
        let mut headers = Vec::with_capacity(signers.len());
        for signer in signers {
            match sign(message, &signer) {
                Ok(header) => headers.push(header),
                Err(err) => return Signing::Failed(err),
            }
        }
        Signing::Signed(headers)
    }
}

/// The domain of the first `From:` address.
pub fn author_domain(message: &[u8]) -> Option<String> {
    let parsed = mail_parser::MessageParser::new().parse_headers(message)?;
    let address = parsed.from()?.first()?.address()?;
    let (_, domain) = address.rsplit_once('@')?;
    (!domain.is_empty()).then(|| domain.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use mail_auth::dkim::generate::DkimKeyPair;

    use super::*;

    const MESSAGE: &[u8] = b"From: Alice <alice@mail.example.com>\r\nTo: bob@example.net\r\n\
Subject: test\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n\r\nHello\r\n";

    fn pem(label: &str, der: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let mut out = format!("-----BEGIN {label}-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(chunk).unwrap());
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }

    fn ed25519_config(dir: &Path, domain: &str, selector: &str) -> DkimConfig {
        let pair = DkimKeyPair::generate_ed25519().unwrap();
        let path = dir.join(format!("{selector}.pem"));
        std::fs::write(&path, pem("PRIVATE KEY", pair.private_key())).unwrap();
        DkimConfig {
            domain: domain.into(),
            selector: selector.into(),
            private_key_file: path,
            algorithm: DkimAlgorithm::Ed25519,
            headers: vec!["From".into(), "To".into(), "Subject".into(), "Date".into()],
        }
    }

    fn tags(header: &str) -> std::collections::HashMap<String, String> {
        let value = header.split_once(':').unwrap().1;
        value
            .split(';')
            .filter_map(|tag| {
                let (k, v) = tag.split_once('=')?;
                let clean = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
                Some((clean(k), clean(v)))
            })
            .collect()
    }

    #[test]
    fn signs_with_relaxed_canonicalization_and_configured_headers() {
        let dir = tempfile::tempdir().unwrap();
        let config = ed25519_config(dir.path(), "example.com", "s1");
        let keyring = DkimKeyring::load(std::slice::from_ref(&config)).unwrap();
        let Signing::Signed(headers) = keyring.sign_message(MESSAGE, "bounce@other.example") else {
            panic!("expected a signature");
        };
        assert_eq!(headers.len(), 1);
        let header = &headers[0];
        assert!(header.starts_with("DKIM-Signature:"), "{header}");
        assert!(header.ends_with("\r\n"));
        let tags = tags(header);
        assert_eq!(tags["a"], "ed25519-sha256");
        assert_eq!(tags["c"], "relaxed/relaxed");
        assert_eq!(tags["d"], "example.com");
        assert_eq!(tags["s"], "s1");
        let mut signed: Vec<String> = tags["h"]
            .to_ascii_lowercase()
            .split(':')
            .map(str::to_string)
            .collect();
        signed.sort();
        assert_eq!(signed, ["date", "from", "subject", "to"]);
        let signature = base64::engine::general_purpose::STANDARD
            .decode(&tags["b"])
            .unwrap();
        assert_eq!(signature.len(), 64);
    }

    #[test]
    fn picks_the_most_specific_domain_and_falls_back_to_the_envelope() {
        let dir = tempfile::tempdir().unwrap();
        let parent = ed25519_config(dir.path(), "example.com", "parent");
        let child = ed25519_config(dir.path(), "mail.example.com", "child");
        let other = ed25519_config(dir.path(), "other.example", "other");
        let keyring = DkimKeyring::load(&[parent, child, other]).unwrap();
        assert_eq!(
            keyring.signers_for("mail.example.com")[0].selector(),
            "child"
        );
        assert_eq!(
            keyring.signers_for("x.y.Example.COM.")[0].selector(),
            "parent"
        );
        assert!(keyring.signers_for("example.net").is_empty());
        assert!(keyring.signers_for("com").is_empty());

        let no_from = b"Subject: x\r\n\r\nbody\r\n";
        let Signing::Signed(headers) = keyring.sign_message(no_from, "a@other.example") else {
            panic!("expected the envelope domain's key");
        };
        assert_eq!(tags(&headers[0])["s"], "other");
        assert!(matches!(keyring.sign_message(no_from, ""), Signing::NoKey));
        assert!(matches!(
            keyring.sign_message(no_from, "a@unknown.example"),
            Signing::NoKey
        ));
    }

    #[test]
    fn rereads_a_changed_key_file_and_keeps_the_old_key_on_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let config = ed25519_config(dir.path(), "example.com", "s1");
        let keyring = DkimKeyring::load(std::slice::from_ref(&config)).unwrap();
        let sign_b = |keyring: &DkimKeyring| {
            let Signing::Signed(h) = keyring.sign_message(MESSAGE, "") else {
                panic!("no signature")
            };
            tags(&h[0])["b"].clone()
        };
        let before = sign_b(&keyring);
        // Ed25519 signatures are deterministic: same key and timestamp, same signature.
        // A different key gives a different one even within the same second.
        let fresh = DkimKeyPair::generate_ed25519().unwrap();
        std::fs::write(
            &config.private_key_file,
            pem("PRIVATE KEY", fresh.private_key()),
        )
        .unwrap();
        bump_mtime(&config.private_key_file);
        let after = sign_b(&keyring);
        assert_ne!(before, after);

        std::fs::write(&config.private_key_file, "garbage").unwrap();
        bump_mtime(&config.private_key_file);
        assert!(matches!(
            keyring.sign_message(MESSAGE, ""),
            Signing::Signed(_)
        ));
    }

    fn bump_mtime(path: &Path) {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        file.set_modified(later).unwrap();
    }

    #[test]
    fn key_parsing_errors_name_the_file() {
        let pair = DkimKeyPair::generate_ed25519().unwrap();
        let ed = pem("PRIVATE KEY", pair.private_key());
        assert!(parse_key(ed.as_bytes(), DkimAlgorithm::Ed25519, "k").is_ok());
        let Err(err) = parse_key(ed.as_bytes(), DkimAlgorithm::Rsa, "/keys/k.pem") else {
            panic!("an Ed25519 key is not an RSA key");
        };
        assert!(err.to_string().contains("/keys/k.pem"), "{err}");
        let Err(err) = parse_key(b"nope", DkimAlgorithm::Rsa, "/keys/k.pem") else {
            panic!("garbage is not a key");
        };
        assert!(matches!(err, DkimError::Pem { .. }), "{err}");
        let missing = DkimConfig {
            private_key_file: "/nonexistent/key.pem".into(),
            ..ed25519_config(tempfile::tempdir().unwrap().path(), "example.com", "s")
        };
        let err = DkimKeyring::load(&[missing]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/key.pem"), "{err}");
    }

    #[test]
    fn author_domain_reads_from() {
        assert_eq!(author_domain(MESSAGE).as_deref(), Some("mail.example.com"));
        assert_eq!(
            author_domain(b"From: a@EXAMPLE.org\r\n\r\n").as_deref(),
            Some("example.org")
        );
        assert_eq!(author_domain(b"To: a@example.org\r\n\r\n"), None);
    }
}
