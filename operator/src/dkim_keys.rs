//! DKIM signing keys: generation, import of user-provided keys, and the rotation state
//! machine.
//!
//! Keys are always stored as PKCS#8 PEM, whatever form they arrived in, so that the signer
//! (mail-auth on ring) loads every key the same way: RSA keys go through the `rsa` crate
//! (ring cannot generate RSA keys), Ed25519 keys through ring and are normalised to the
//! PKCS#8 v2 form (with the public key) that ring's strict parser requires.
//!
//! The DNS `p=` value follows what verifiers in the field accept: for RSA the base64 of the
//! DER `SubjectPublicKeyInfo` (what `openssl rsa -pubout` prints, and what RFC 6376's
//! examples use), for Ed25519 the base64 of the raw 32-byte public key (RFC 8463).
//!
//! # Secret layout
//!
//! Every key the operator manages lives in its own `Opaque` Secret named
//! `<maildomain>-dkim-<selector>` (see [`secret_name`]) in the MailDomain's namespace,
//! owned by the MailDomain:
//!
//! | data key | content |
//! | --- | --- |
//! | `private.key` | the private key, PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) |
//! | `public.key` | the public key, SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`) |
//!
//! Labels: `smtpfleet.io/maildomain=<maildomain>`, `smtpfleet.io/dkim-selector=<selector>`,
//! `app.kubernetes.io/managed-by=smtpfleet-operator`. Annotations carry the rotation
//! state (see [`crate::maildomain`]).
//!
//! # Selector naming for rotation
//!
//! The first key uses the selector from the spec as is (that is the record the user
//! expects to publish). Every rotated key gets `<selector>-<yyyymmdd>` (UTC date of
//! generation), and, if that name is already taken by a key still in use (two rotations
//! on one day), `<selector>-<yyyymmdd>-2`, `-3`, … See [`next_selector`].

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Duration, Utc};
use ring::signature::KeyPair as _;
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
use rsa::traits::PublicKeyParts as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{PrivateKeyDer, SubjectPublicKeyInfoDer};

/// Smallest RSA modulus accepted for a user-provided key: RFC 8301 forbids verifiers to
/// accept smaller ones, so signing with them only produces failing signatures.
pub const MIN_RSA_BITS: usize = 1024;

/// Size of the RSA keys the operator generates.
pub const GENERATED_RSA_BITS: usize = 2048;

/// DKIM key algorithms the operator supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// RSA with SHA-256 (`k=rsa`), the one every receiver verifies.
    Rsa,
    /// Ed25519 with SHA-256 (`k=ed25519`, RFC 8463): short keys, fewer verifiers.
    Ed25519,
}

impl KeyAlgorithm {
    /// The `k=` tag value of the DKIM DNS record.
    pub fn dns_tag(self) -> &'static str {
        match self {
            Self::Rsa => "rsa",
            Self::Ed25519 => "ed25519",
        }
    }

    /// The spec spelling (`rsa-2048`, `ed25519`), used in Secret annotations.
    pub fn spec_name(self) -> &'static str {
        match self {
            Self::Rsa => "rsa-2048",
            Self::Ed25519 => "ed25519",
        }
    }

    /// Parses the spec spelling; `rsa` alone is accepted for keys of any RSA size.
    pub fn from_spec_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "rsa-2048" | "rsa" => Some(Self::Rsa),
            "ed25519" => Some(Self::Ed25519),
            _ => None,
        }
    }
}

/// Why a key could not be generated or imported.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("RSA key generation failed: {0}")]
    RsaGenerate(String),
    #[error("Ed25519 key generation failed")]
    Ed25519Generate,
    #[error("encoding the key failed: {0}")]
    Encode(String),
    #[error("the private key is not PEM (PKCS#8 \"PRIVATE KEY\" or PKCS#1 \"RSA PRIVATE KEY\")")]
    NotPem,
    #[error("the private key is neither an RSA nor an Ed25519 PKCS#8 key: {0}")]
    UnsupportedKey(String),
    #[error("the RSA key has {bits} bits; DKIM verifiers reject keys under {MIN_RSA_BITS} bits")]
    RsaTooSmall { bits: usize },
}

/// A DKIM key pair in the forms the operator stores and publishes.
#[derive(Clone, PartialEq, Eq)]
pub struct DkimKey {
    pub algorithm: KeyAlgorithm,
    /// PKCS#8 PEM of the private key.
    pub private_key_pem: String,
    /// SubjectPublicKeyInfo PEM of the public key.
    pub public_key_pem: String,
    /// The base64 value of the DNS record's `p=` tag.
    pub dns_public_key: String,
}

impl std::fmt::Debug for DkimKey {
    // Keeps private keys out of logs and panic messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimKey")
            .field("algorithm", &self.algorithm)
            .field("dns_public_key", &self.dns_public_key)
            .finish_non_exhaustive()
    }
}

impl DkimKey {
    /// Generates a fresh key: RSA keys are [`GENERATED_RSA_BITS`] bits.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self, KeyError> {
        match algorithm {
            KeyAlgorithm::Rsa => {
                let mut rng = rsa::rand_core::OsRng;
                let key = rsa::RsaPrivateKey::new(&mut rng, GENERATED_RSA_BITS)
                    .map_err(|e| KeyError::RsaGenerate(e.to_string()))?;
                Self::from_rsa(&key)
            }
            KeyAlgorithm::Ed25519 => {
                let rng = ring::rand::SystemRandom::new();
                let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(|_| KeyError::Ed25519Generate)?;
                Self::from_ed25519_pkcs8(pkcs8.as_ref())
            }
        }
    }

    /// Imports a user-provided private key (PKCS#8 RSA or Ed25519, or PKCS#1 RSA, in PEM)
    /// and derives its public key.
    pub fn from_private_key_pem(pem: &str) -> Result<Self, KeyError> {
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| KeyError::NotPem)?;
        match der {
            PrivateKeyDer::Pkcs1(der) => {
                let key = rsa::RsaPrivateKey::from_pkcs1_der(der.secret_pkcs1_der())
                    .map_err(|e| KeyError::UnsupportedKey(e.to_string()))?;
                Self::from_rsa(&key)
            }
            PrivateKeyDer::Pkcs8(der) => {
                let bytes = der.secret_pkcs8_der();
                match rsa::RsaPrivateKey::from_pkcs8_der(bytes) {
                    Ok(key) => Self::from_rsa(&key),
                    Err(rsa_err) => Self::from_ed25519_pkcs8(bytes).map_err(|_| {
                        KeyError::UnsupportedKey(format!("not RSA ({rsa_err}), not Ed25519"))
                    }),
                }
            }
            _ => Err(KeyError::UnsupportedKey(
                "SEC1 (EC) keys cannot sign DKIM".to_string(),
            )),
        }
    }

    /// The complete TXT value to publish at `<selector>._domainkey.<domain>`.
    pub fn dns_record_value(&self) -> String {
        dkim_record_value(self.algorithm, &self.dns_public_key)
    }

    fn from_rsa(key: &rsa::RsaPrivateKey) -> Result<Self, KeyError> {
        let bits = key.n().bits();
        if bits < MIN_RSA_BITS {
            return Err(KeyError::RsaTooSmall { bits });
        }
        let private_key_pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::Encode(e.to_string()))?
            .to_string();
        let public = key.to_public_key();
        let spki = public
            .to_public_key_der()
            .map_err(|e| KeyError::Encode(e.to_string()))?;
        let public_key_pem = public
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| KeyError::Encode(e.to_string()))?;
        Ok(Self {
            algorithm: KeyAlgorithm::Rsa,
            private_key_pem,
            public_key_pem,
            dns_public_key: BASE64.encode(spki.as_bytes()),
        })
    }

    /// Accepts PKCS#8 v1 (what `openssl genpkey` writes) and v2, and stores v2.
    fn from_ed25519_pkcs8(der: &[u8]) -> Result<Self, KeyError> {
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| KeyError::UnsupportedKey(e.to_string()))?;
        let public: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| KeyError::UnsupportedKey("Ed25519 public key length".to_string()))?;
        let seed = ed25519_seed(der)
            .ok_or_else(|| KeyError::UnsupportedKey("Ed25519 PKCS#8 layout".to_string()))?;
        let v2 = ed25519_pkcs8_v2(&seed, &public);
        // Round-trip through ring's strict parser: what we store must load in the signer.
        ring::signature::Ed25519KeyPair::from_pkcs8(&v2)
            .map_err(|e| KeyError::Encode(format!("Ed25519 PKCS#8 v2: {e}")))?;
        let spki = ed25519_spki(&public);
        Ok(Self {
            algorithm: KeyAlgorithm::Ed25519,
            private_key_pem: pem_encode("PRIVATE KEY", &v2),
            public_key_pem: pem_encode("PUBLIC KEY", &spki),
            dns_public_key: BASE64.encode(public),
        })
    }
}

/// `v=DKIM1; k=<alg>; p=<key>`: the record value for a public key.
pub fn dkim_record_value(algorithm: KeyAlgorithm, dns_public_key: &str) -> String {
    format!("v=DKIM1; k={}; p={}", algorithm.dns_tag(), dns_public_key)
}

/// Derives the DNS `p=` value from a stored SubjectPublicKeyInfo PEM (the `public.key` of a
/// key Secret).
pub fn dns_public_key_from_spki_pem(pem: &str) -> Result<(KeyAlgorithm, String), KeyError> {
    let spki =
        SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes()).map_err(|_| KeyError::NotPem)?;
    let bytes = spki.as_ref();
    if let Some(raw) = bytes.strip_prefix(ED25519_SPKI_PREFIX.as_slice())
        && raw.len() == 32
    {
        return Ok((KeyAlgorithm::Ed25519, BASE64.encode(raw)));
    }
    use rsa::pkcs8::DecodePublicKey as _;
    rsa::RsaPublicKey::from_public_key_der(bytes)
        .map_err(|e| KeyError::UnsupportedKey(e.to_string()))?;
    Ok((KeyAlgorithm::Rsa, BASE64.encode(bytes)))
}

const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// `PrivateKeyInfo` up to the 32-byte seed, shared by v1 and v2 apart from the version
/// and outer length bytes.
const ED25519_PKCS8_ALG_AND_SEED_HEADER: [u8; 11] = [
    0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

fn ed25519_spki(public: &[u8; 32]) -> Vec<u8> {
    let mut out = ED25519_SPKI_PREFIX.to_vec();
    out.extend_from_slice(public);
    out
}

/// Finds the 32-byte seed in a PKCS#8 Ed25519 key (v1 or v2; both put it right after the
/// algorithm identifier).
fn ed25519_seed(der: &[u8]) -> Option<[u8; 32]> {
    let start = der
        .windows(ED25519_PKCS8_ALG_AND_SEED_HEADER.len())
        .position(|w| w == ED25519_PKCS8_ALG_AND_SEED_HEADER)?
        + ED25519_PKCS8_ALG_AND_SEED_HEADER.len();
    der.get(start..start + 32)?.try_into().ok()
}

/// RFC 8410 / RFC 5958 OneAsymmetricKey v2 with the public key, the form ring emits.
fn ed25519_pkcs8_v2(seed: &[u8; 32], public: &[u8; 32]) -> Vec<u8> {
    let mut out = vec![0x30, 0x53, 0x02, 0x01, 0x01];
    out.extend_from_slice(&ED25519_PKCS8_ALG_AND_SEED_HEADER);
    out.extend_from_slice(seed);
    out.extend_from_slice(&[0xa1, 0x23, 0x03, 0x21, 0x00]);
    out.extend_from_slice(public);
    out
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = BASE64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The Secret holding the key for `selector` of MailDomain `maildomain`.
///
/// Selectors are DNS labels and so mostly valid in object names already; anything a
/// Secret name cannot hold is replaced by `-`, and the result is lowercased.
pub fn secret_name(maildomain: &str, selector: &str) -> String {
    let sel: String = selector
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("{maildomain}-dkim-{}", sel.trim_matches('-'))
}

/// The selector for a rotated key generated at `now`; see the module docs.
pub fn next_selector(base: &str, now: DateTime<Utc>, taken: &[&str]) -> String {
    let dated = format!("{base}-{}", now.format("%Y%m%d"));
    if !taken.iter().any(|t| t.eq_ignore_ascii_case(&dated)) {
        return dated;
    }
    (2u32..)
        .map(|n| format!("{dated}-{n}"))
        .find(|candidate| !taken.iter().any(|t| t.eq_ignore_ascii_case(candidate)))
        .unwrap_or(dated)
}

/// Whether `selector` was derived from `base` by this module (the base itself or a
/// rotated `<base>-<yyyymmdd>[-n]`). A key whose selector does not belong to the spec's
/// selector any more is replaced.
pub fn selector_belongs_to(selector: &str, base: &str) -> bool {
    if selector.eq_ignore_ascii_case(base) {
        return true;
    }
    let Some(rest) = selector
        .get(..base.len())
        .filter(|prefix| prefix.eq_ignore_ascii_case(base))
        .and_then(|_| selector.get(base.len()..))
        .and_then(|rest| rest.strip_prefix('-'))
    else {
        return false;
    };
    let mut parts = rest.splitn(2, '-');
    let date_ok = parts
        .next()
        .is_some_and(|d| d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit()));
    let suffix_ok = parts
        .next()
        .is_none_or(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    date_ok && suffix_ok
}

/// What the rotation policy of a MailDomain asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationPolicy {
    /// `spec.dkim.selector`.
    pub base_selector: String,
    pub algorithm: KeyAlgorithm,
    /// `spec.dkim.rotateAfter`; `None` never rotates on age.
    pub rotate_after: Option<Duration>,
    /// `spec.dkim.rotationOverlap`, applied on both sides of the switch: the next key's
    /// record must have been visible this long before signing switches (so resolvers
    /// that cached its absence have forgotten it), and the previous key stays (its
    /// record still expected) this long after, so mail signed just before the switch
    /// still verifies.
    pub overlap: Duration,
    /// How long the next key may wait for its DNS record before the rotation is reported
    /// as stalled (it keeps waiting; this only changes what status says).
    pub max_dns_wait: Duration,
}

/// A key the operator manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMeta {
    pub selector: String,
    pub algorithm: KeyAlgorithm,
    pub created_at: DateTime<Utc>,
}

/// A key signing has moved away from, kept until `retire_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiringKey {
    pub key: KeyMeta,
    pub retire_at: DateTime<Utc>,
}

/// The keys of one MailDomain, as recorded on their Secrets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyRing {
    /// The key smtp-node signs with.
    pub active: Option<KeyMeta>,
    /// A generated key waiting for its DNS record before signing switches to it.
    pub next: Option<KeyMeta>,
    /// When DNS was first seen publishing the next key's record (cleared if it vanishes).
    pub next_published_at: Option<DateTime<Utc>>,
    pub retiring: Vec<RetiringKey>,
}

impl KeyRing {
    /// Selectors in use, which a new key must not reuse.
    pub fn selectors(&self) -> Vec<&str> {
        self.active
            .iter()
            .chain(self.next.iter())
            .map(|k| k.selector.as_str())
            .chain(self.retiring.iter().map(|r| r.key.selector.as_str()))
            .collect()
    }
}

/// Why a new key is generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationReason {
    /// The active key is older than `rotateAfter`.
    Age,
    /// The spec's selector or algorithm no longer matches the active key.
    SpecChanged,
}

/// The one next step towards the desired key state. The controller applies it and asks
/// again, so every step is recorded (on the Secrets) before the next one is decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationAction {
    /// No key yet: generate the first one under this selector and sign with it.
    GenerateInitial { selector: String },
    /// Generate the next key under this selector; signing stays on the active key.
    GenerateNext {
        selector: String,
        reason: RotationReason,
    },
    /// The next key's DNS record is not visible (or no longer); signing must not switch.
    WaitForDns { selector: String },
    /// DNS shows the next key's record for the first time: note when.
    MarkPublished { selector: String },
    /// DNS shows the next key; signing switches at `until`, one overlap after it first
    /// appeared.
    WaitForOverlap {
        selector: String,
        until: DateTime<Utc>,
    },
    /// The next key has been visible for the overlap: sign with it, keep the old one
    /// until `retire_at`.
    SwitchSigning {
        selector: String,
        retire_at: DateTime<Utc>,
    },
    /// The overlap after a switch is over: delete the old key.
    Retire { selector: String },
    /// Waiting longer than expected; `reason` says what the user must do. Signing is
    /// unaffected.
    Stalled { selector: String, reason: String },
    /// Nothing to do until `until` (if any).
    Idle { until: Option<DateTime<Utc>> },
}

impl RotationAction {
    /// Whether carrying the action out changes the key ring (and so the Secrets).
    pub fn changes_keys(&self) -> bool {
        matches!(
            self,
            Self::GenerateInitial { .. }
                | Self::GenerateNext { .. }
                | Self::MarkPublished { .. }
                | Self::SwitchSigning { .. }
                | Self::Retire { .. }
        )
    }

    /// When the ring next needs attention by time alone.
    pub fn deadline(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::Idle { until } => *until,
            Self::WaitForOverlap { until, .. } => Some(*until),
            _ => None,
        }
    }

    /// Whether a rotation is under way (a next key exists or is being made).
    pub fn rotating(&self) -> bool {
        matches!(
            self,
            Self::GenerateNext { .. }
                | Self::WaitForDns { .. }
                | Self::MarkPublished { .. }
                | Self::WaitForOverlap { .. }
                | Self::Stalled { .. }
        )
    }
}

/// Decides the next rotation step for operator-generated keys (user-provided keys are not
/// rotated by the operator). `next_published` says whether DNS shows the next key's record
/// with the right public key.
pub fn decide_rotation(
    policy: &RotationPolicy,
    ring: &KeyRing,
    next_published: bool,
    now: DateTime<Utc>,
) -> RotationAction {
    let Some(active) = &ring.active else {
        let taken = ring.selectors();
        let selector = if taken
            .iter()
            .any(|t| t.eq_ignore_ascii_case(&policy.base_selector))
        {
            next_selector(&policy.base_selector, now, &taken)
        } else {
            policy.base_selector.clone()
        };
        return RotationAction::GenerateInitial { selector };
    };

    if let Some(old) = ring.retiring.iter().find(|r| r.retire_at <= now) {
        return RotationAction::Retire {
            selector: old.key.selector.clone(),
        };
    }

    if let Some(next) = &ring.next {
        let selector = next.selector.clone();
        if next_published {
            return match ring.next_published_at {
                None => RotationAction::MarkPublished { selector },
                Some(at) if at + policy.overlap <= now => RotationAction::SwitchSigning {
                    selector,
                    retire_at: now + policy.overlap,
                },
                Some(at) => RotationAction::WaitForOverlap {
                    selector,
                    until: at + policy.overlap,
                },
            };
        }
        let waited = now - next.created_at;
        if waited > policy.max_dns_wait {
            return RotationAction::Stalled {
                selector: next.selector.clone(),
                reason: format!(
                    "the DKIM record for selector {} has not appeared in DNS for {} hours; \
                     publish it so signing can switch to the new key",
                    next.selector,
                    waited.num_hours()
                ),
            };
        }
        return RotationAction::WaitForDns {
            selector: next.selector.clone(),
        };
    }

    let spec_changed = active.algorithm != policy.algorithm
        || !selector_belongs_to(&active.selector, &policy.base_selector);
    let due_at = policy.rotate_after.map(|after| active.created_at + after);
    let reason = if spec_changed {
        Some(RotationReason::SpecChanged)
    } else if due_at.is_some_and(|due| due <= now) {
        Some(RotationReason::Age)
    } else {
        None
    };
    // One rotation at a time: a new key waits until the previous old key is gone, so at
    // most two selectors need to be published at once.
    if let Some(reason) = reason
        && ring.retiring.is_empty()
    {
        let taken = ring.selectors();
        let selector = if reason == RotationReason::SpecChanged
            && !taken
                .iter()
                .any(|t| t.eq_ignore_ascii_case(&policy.base_selector))
        {
            policy.base_selector.clone()
        } else {
            next_selector(&policy.base_selector, now, &taken)
        };
        return RotationAction::GenerateNext { selector, reason };
    }

    let until = ring
        .retiring
        .iter()
        .map(|r| r.retire_at)
        .chain(due_at.filter(|d| *d > now))
        .min();
    RotationAction::Idle { until }
}

/// The key ring after `action` was carried out at `now` (a generated key gets
/// `algorithm`). The controller persists the result on the key Secrets.
pub fn apply_rotation(
    ring: &KeyRing,
    action: &RotationAction,
    algorithm: KeyAlgorithm,
    now: DateTime<Utc>,
) -> KeyRing {
    let mut out = ring.clone();
    let fresh = |selector: &str| KeyMeta {
        selector: selector.to_string(),
        algorithm,
        created_at: now,
    };
    match action {
        RotationAction::GenerateInitial { selector } => out.active = Some(fresh(selector)),
        RotationAction::GenerateNext { selector, .. } => {
            out.next = Some(fresh(selector));
            out.next_published_at = None;
        }
        RotationAction::MarkPublished { .. } => out.next_published_at = Some(now),
        RotationAction::WaitForDns { .. } => out.next_published_at = None,
        RotationAction::SwitchSigning {
            selector,
            retire_at,
        } => {
            if let Some(next) = out.next.take_if(|n| &n.selector == selector)
                && let Some(old) = out.active.replace(next)
            {
                out.retiring.push(RetiringKey {
                    key: old,
                    retire_at: *retire_at,
                });
            }
            out.next_published_at = None;
        }
        RotationAction::Retire { selector } => out.retiring.retain(|r| &r.key.selector != selector),
        RotationAction::WaitForOverlap { .. }
        | RotationAction::Stalled { .. }
        | RotationAction::Idle { .. } => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    #[test]
    fn applying_actions_moves_keys_through_the_ring() {
        let p = policy();
        let mut ring = KeyRing::default();
        let mut now = t(1, 0);
        let a = decide_rotation(&p, &ring, false, now);
        ring = apply_rotation(&ring, &a, p.algorithm, now);
        assert_eq!(ring.active.as_ref().unwrap().selector, "mail");
        now = t(12, 0);
        let a = decide_rotation(&p, &ring, false, now);
        ring = apply_rotation(&ring, &a, p.algorithm, now);
        assert_eq!(ring.next.as_ref().unwrap().selector, "mail-20260312");
        assert_eq!(ring.next.as_ref().unwrap().created_at, now);
        let wait = decide_rotation(&p, &ring, false, now);
        assert_eq!(apply_rotation(&ring, &wait, p.algorithm, now), ring);
        // Seen in DNS: noted, then signing switches one overlap (2 days) later.
        let a = decide_rotation(&p, &ring, true, now);
        assert!(a.changes_keys());
        ring = apply_rotation(&ring, &a, p.algorithm, now);
        assert_eq!(ring.next_published_at, Some(now));
        let a = decide_rotation(&p, &ring, true, t(13, 0));
        assert_eq!(a.deadline(), Some(t(14, 0)));
        assert!(!a.changes_keys());
        // The record vanished meanwhile: the clock starts again.
        let gone = decide_rotation(&p, &ring, false, t(13, 0));
        assert_eq!(
            apply_rotation(&ring, &gone, p.algorithm, t(13, 0)).next_published_at,
            None
        );
        let a = decide_rotation(&p, &ring, true, t(14, 0));
        ring = apply_rotation(&ring, &a, p.algorithm, t(14, 0));
        assert_eq!(ring.active.as_ref().unwrap().selector, "mail-20260312");
        assert!(ring.next.is_none());
        assert_eq!(ring.next_published_at, None);
        assert_eq!(ring.retiring[0].key.selector, "mail");
        assert_eq!(ring.retiring[0].retire_at, t(16, 0));
        let a = decide_rotation(&p, &ring, false, t(16, 0));
        ring = apply_rotation(&ring, &a, p.algorithm, t(16, 0));
        assert!(ring.retiring.is_empty());
        assert_eq!(ring.selectors(), vec!["mail-20260312"]);
    }

    fn t(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, day, hour, 0, 0).unwrap()
    }

    fn policy() -> RotationPolicy {
        RotationPolicy {
            base_selector: "mail".into(),
            algorithm: KeyAlgorithm::Rsa,
            rotate_after: Some(Duration::days(10)),
            overlap: Duration::days(2),
            max_dns_wait: Duration::days(3),
        }
    }

    fn key(selector: &str, created: DateTime<Utc>) -> KeyMeta {
        KeyMeta {
            selector: selector.into(),
            algorithm: KeyAlgorithm::Rsa,
            created_at: created,
        }
    }

    #[test]
    fn rsa_generation_gives_pkcs8_and_spki_that_agree() {
        let k = DkimKey::generate(KeyAlgorithm::Rsa).unwrap();
        assert!(k.private_key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let (alg, p) = dns_public_key_from_spki_pem(&k.public_key_pem).unwrap();
        assert_eq!(alg, KeyAlgorithm::Rsa);
        assert_eq!(p, k.dns_public_key);
        // Re-importing the private key derives the same public key.
        let again = DkimKey::from_private_key_pem(&k.private_key_pem).unwrap();
        assert_eq!(again, k);
        // mail-auth (the signer) loads it and parses the DNS record it yields.
        let der = PrivateKeyDer::from_pem_slice(k.private_key_pem.as_bytes()).unwrap();
        mail_auth::common::crypto::RsaKey::<mail_auth::common::crypto::Sha256>::from_key_der(der)
            .unwrap();
        use mail_auth::common::parse::TxtRecordParser as _;
        mail_auth::common::verify::DomainKey::parse(k.dns_record_value().as_bytes()).unwrap();
        assert!(
            k.dns_record_value()
                .starts_with("v=DKIM1; k=rsa; p=MIIBIjAN")
        );
    }

    #[test]
    fn ed25519_generation_and_openssl_v1_import() {
        let k = DkimKey::generate(KeyAlgorithm::Ed25519).unwrap();
        assert_eq!(BASE64.decode(&k.dns_public_key).unwrap().len(), 32);
        let der = PrivateKeyDer::from_pem_slice(k.private_key_pem.as_bytes()).unwrap();
        let PrivateKeyDer::Pkcs8(der) = der else {
            panic!("not pkcs8")
        };
        mail_auth::common::crypto::Ed25519Key::from_pkcs8_der(der.secret_pkcs8_der()).unwrap();

        // The same seed in PKCS#8 v1 (as `openssl genpkey -algorithm ed25519` writes it).
        let seed = ed25519_seed(der.secret_pkcs8_der()).unwrap();
        let mut v1 = vec![0x30, 0x2e, 0x02, 0x01, 0x00];
        v1.extend_from_slice(&ED25519_PKCS8_ALG_AND_SEED_HEADER);
        v1.extend_from_slice(&seed);
        let imported = DkimKey::from_private_key_pem(&pem_encode("PRIVATE KEY", &v1)).unwrap();
        assert_eq!(imported, k);
        let (alg, p) = dns_public_key_from_spki_pem(&k.public_key_pem).unwrap();
        assert_eq!((alg, p), (KeyAlgorithm::Ed25519, k.dns_public_key.clone()));
    }

    #[test]
    fn import_rejects_garbage_and_small_rsa() {
        assert!(matches!(
            DkimKey::from_private_key_pem("hello"),
            Err(KeyError::NotPem)
        ));
        let mut rng = rsa::rand_core::OsRng;
        let small = rsa::RsaPrivateKey::new(&mut rng, 768).unwrap();
        let pem = small.to_pkcs8_pem(LineEnding::LF).unwrap();
        assert!(matches!(
            DkimKey::from_private_key_pem(&pem),
            Err(KeyError::RsaTooSmall { bits: 768 })
        ));
    }

    #[test]
    fn import_pkcs1_rsa_is_stored_as_pkcs8() {
        use rsa::pkcs1::EncodeRsaPrivateKey as _;
        let mut rng = rsa::rand_core::OsRng;
        let key = rsa::RsaPrivateKey::new(&mut rng, 1024).unwrap();
        let pkcs1 = key.to_pkcs1_pem(LineEnding::LF).unwrap();
        assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let k = DkimKey::from_private_key_pem(&pkcs1).unwrap();
        assert!(k.private_key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(k.algorithm, KeyAlgorithm::Rsa);
    }

    #[test]
    fn selector_names() {
        let now = t(5, 12);
        assert_eq!(next_selector("mail", now, &["mail"]), "mail-20260305");
        assert_eq!(
            next_selector("mail", now, &["mail", "mail-20260305"]),
            "mail-20260305-2"
        );
        assert_eq!(
            next_selector("mail", now, &["mail-20260305", "mail-20260305-2"]),
            "mail-20260305-3"
        );
        assert!(selector_belongs_to("mail", "mail"));
        assert!(selector_belongs_to("mail-20260305", "mail"));
        assert!(selector_belongs_to("mail-20260305-12", "mail"));
        assert!(!selector_belongs_to("mailer", "mail"));
        assert!(!selector_belongs_to("mail-2026", "mail"));
        assert!(!selector_belongs_to("mail-20260305-", "mail"));
        assert!(!selector_belongs_to("s1", "mail"));
        assert_eq!(secret_name("shop", "Mail_2026"), "shop-dkim-mail-2026");
    }

    #[test]
    fn first_key_uses_the_spec_selector() {
        let a = decide_rotation(&policy(), &KeyRing::default(), false, t(1, 0));
        assert_eq!(
            a,
            RotationAction::GenerateInitial {
                selector: "mail".into()
            }
        );
    }

    #[test]
    fn idle_until_rotation_is_due_then_generate_next() {
        let ring = KeyRing {
            active: Some(key("mail", t(1, 0))),
            ..Default::default()
        };
        assert_eq!(
            decide_rotation(&policy(), &ring, false, t(5, 0)),
            RotationAction::Idle {
                until: Some(t(11, 0))
            }
        );
        assert_eq!(
            decide_rotation(&policy(), &ring, false, t(11, 0)),
            RotationAction::GenerateNext {
                selector: "mail-20260311".into(),
                reason: RotationReason::Age
            }
        );
        let never = RotationPolicy {
            rotate_after: None,
            ..policy()
        };
        assert_eq!(
            decide_rotation(&never, &ring, false, t(30, 0)),
            RotationAction::Idle { until: None }
        );
    }

    #[test]
    fn no_switch_before_dns_then_switch_then_retire() {
        let mut ring = KeyRing {
            active: Some(key("mail", t(1, 0))),
            next: Some(key("mail-20260311", t(11, 0))),
            ..Default::default()
        };
        assert_eq!(
            decide_rotation(&policy(), &ring, false, t(12, 0)),
            RotationAction::WaitForDns {
                selector: "mail-20260311".into()
            }
        );
        match decide_rotation(&policy(), &ring, false, t(15, 0)) {
            RotationAction::Stalled { selector, reason } => {
                assert_eq!(selector, "mail-20260311");
                assert!(reason.contains("96 hours"), "{reason}");
            }
            other => panic!("expected Stalled, got {other:?}"),
        }
        assert_eq!(
            decide_rotation(&policy(), &ring, true, t(15, 0)),
            RotationAction::MarkPublished {
                selector: "mail-20260311".into()
            }
        );
        ring.next_published_at = Some(t(15, 0));
        assert_eq!(
            decide_rotation(&policy(), &ring, true, t(16, 0)),
            RotationAction::WaitForOverlap {
                selector: "mail-20260311".into(),
                until: t(17, 0)
            }
        );
        assert_eq!(
            decide_rotation(&policy(), &ring, true, t(17, 0)),
            RotationAction::SwitchSigning {
                selector: "mail-20260311".into(),
                retire_at: t(19, 0)
            }
        );
        // After the switch: the old key waits for the overlap, no new rotation starts.
        ring = KeyRing {
            active: ring.next.clone(),
            next: None,
            next_published_at: None,
            retiring: vec![RetiringKey {
                key: key("mail", t(1, 0)),
                retire_at: t(17, 0),
            }],
        };
        assert_eq!(
            decide_rotation(&policy(), &ring, false, t(16, 0)),
            RotationAction::Idle {
                until: Some(t(17, 0))
            }
        );
        assert_eq!(
            decide_rotation(&policy(), &ring, false, t(17, 0)),
            RotationAction::Retire {
                selector: "mail".into()
            }
        );
    }

    #[test]
    fn spec_change_rotates_to_the_new_selector_or_algorithm() {
        let ring = KeyRing {
            active: Some(key("s1", t(1, 0))),
            ..Default::default()
        };
        assert_eq!(
            decide_rotation(&policy(), &ring, false, t(2, 0)),
            RotationAction::GenerateNext {
                selector: "mail".into(),
                reason: RotationReason::SpecChanged
            }
        );
        let ring = KeyRing {
            active: Some(key("mail", t(1, 0))),
            ..Default::default()
        };
        let ed = RotationPolicy {
            algorithm: KeyAlgorithm::Ed25519,
            ..policy()
        };
        assert_eq!(
            decide_rotation(&ed, &ring, false, t(2, 0)),
            RotationAction::GenerateNext {
                selector: "mail-20260302".into(),
                reason: RotationReason::SpecChanged
            }
        );
    }

    #[test]
    fn lost_active_key_with_retiring_base_gets_a_fresh_selector() {
        let ring = KeyRing {
            active: None,
            next: None,
            next_published_at: None,
            retiring: vec![RetiringKey {
                key: key("mail", t(1, 0)),
                retire_at: t(9, 0),
            }],
        };
        assert_eq!(
            decide_rotation(&policy(), &ring, false, t(3, 0)),
            RotationAction::GenerateInitial {
                selector: "mail-20260303".into()
            }
        );
    }
}
