//! DKIM key Secrets: reading the key ring back from them and building them (pure).
//!
//! The Secrets are the source of truth for the key ring (status can be lost, Secrets are
//! what smtp-node signs with). Layout, per key (see also [`crate::dkim_keys`]):
//!
//! - name `<maildomain>-dkim-<selector>`, type `Opaque`, owned by the MailDomain;
//! - data `private.key` (PKCS#8 PEM) and `public.key` (SubjectPublicKeyInfo PEM);
//! - labels [`LABEL_MAILDOMAIN`], [`LABEL_COMPONENT`]` = dkim-key`, [`LABEL_RELAY_POOL`],
//!   `app.kubernetes.io/managed-by = smtpfleet-operator`;
//! - annotations [`ANN_SELECTOR`] (the exact selector), [`ANN_ALGORITHM`],
//!   [`ANN_CREATED_AT`] (RFC 3339), [`ANN_STATE`] (`active`: smtp-node signs with it;
//!   `next`: generated, waiting for its DNS record; `retiring`: signing moved on, kept
//!   until [`ANN_RETIRE_AT`]), [`ANN_PUBLISHED_AT`] on a `next` key once DNS shows its
//!   record, and [`ANN_SOURCE`] (`generated` or `user`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::dkim_keys::{DkimKey, KeyAlgorithm, KeyMeta, KeyRing, RetiringKey, secret_name};

pub const LABEL_MAILDOMAIN: &str = "smtpfleet.io/maildomain";
pub const LABEL_COMPONENT: &str = "smtpfleet.io/component";
/// The RelayPool the domain is bound to: its pool reads the keys with one labelled list.
pub const LABEL_RELAY_POOL: &str = "smtpfleet.io/relay-pool";
pub const COMPONENT_DKIM_KEY: &str = "dkim-key";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "smtpfleet-operator";
pub const ANN_SELECTOR: &str = "smtpfleet.io/dkim-selector";
pub const ANN_ALGORITHM: &str = "smtpfleet.io/dkim-algorithm";
pub const ANN_CREATED_AT: &str = "smtpfleet.io/dkim-created-at";
pub const ANN_STATE: &str = "smtpfleet.io/dkim-state";
pub const ANN_RETIRE_AT: &str = "smtpfleet.io/dkim-retire-at";
pub const ANN_PUBLISHED_AT: &str = "smtpfleet.io/dkim-published-at";
pub const ANN_SOURCE: &str = "smtpfleet.io/dkim-source";
/// Data key of the private key (PKCS#8 PEM).
pub const PRIVATE_KEY: &str = "private.key";
/// Data key of the public key (SubjectPublicKeyInfo PEM).
pub const PUBLIC_KEY: &str = "public.key";

/// Label selector for every key Secret of a MailDomain.
pub fn key_secret_selector(maildomain: &str) -> String {
    format!("{LABEL_MAILDOMAIN}={maildomain},{LABEL_COMPONENT}={COMPONENT_DKIM_KEY}")
}

/// Where a key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    Generated,
    /// Copied from `spec.dkim.privateKeySecretRef`.
    User,
}

impl KeySource {
    fn as_str(self) -> &'static str {
        match self {
            Self::Generated => "generated",
            Self::User => "user",
        }
    }
}

/// A key as stored in its Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub key: DkimKey,
    pub secret_name: String,
    pub source: KeySource,
}

/// The key ring and key material recovered from a MailDomain's Secrets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredKeys {
    pub ring: KeyRing,
    /// By selector.
    pub keys: BTreeMap<String, StoredKey>,
    /// Secrets that carry the labels but cannot be used (named, with the reason).
    pub unusable: Vec<(String, String)>,
}

impl StoredKeys {
    /// The active key's material.
    pub fn active(&self) -> Option<(&KeyMeta, &StoredKey)> {
        let meta = self.ring.active.as_ref()?;
        Some((meta, self.keys.get(&meta.selector)?))
    }
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn secret_key(secret: &Secret) -> Result<DkimKey, String> {
    let data = secret.data.as_ref().ok_or("no data")?;
    let private = data
        .get(PRIVATE_KEY)
        .ok_or_else(|| format!("no {PRIVATE_KEY}"))?;
    let pem = std::str::from_utf8(&private.0).map_err(|_| format!("{PRIVATE_KEY} is not text"))?;
    DkimKey::from_private_key_pem(pem).map_err(|e| e.to_string())
}

/// Reads the key ring back from the Secrets (already filtered by [`key_secret_selector`]).
///
/// If several Secrets claim to be active (only possible after manual edits), the newest
/// stays active and the others retire at once; likewise for `next`.
pub fn read_key_ring(secrets: &[Secret], now: DateTime<Utc>) -> StoredKeys {
    let mut out = StoredKeys::default();
    let mut actives = Vec::new();
    let mut nexts: Vec<(KeyMeta, Option<DateTime<Utc>>)> = Vec::new();
    for s in secrets {
        let name = s.metadata.name.clone().unwrap_or_default();
        if s.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ann = s.metadata.annotations.clone().unwrap_or_default();
        let Some(selector) = ann.get(ANN_SELECTOR).cloned() else {
            out.unusable
                .push((name, format!("no {ANN_SELECTOR} annotation")));
            continue;
        };
        let key = match secret_key(s) {
            Ok(k) => k,
            Err(e) => {
                out.unusable.push((name, e));
                continue;
            }
        };
        let created_at = ann
            .get(ANN_CREATED_AT)
            .and_then(|t| parse_time(t))
            .or_else(|| {
                s.metadata
                    .creation_timestamp
                    .as_ref()
                    .and_then(|t| chrono_time(&t.0))
            })
            .unwrap_or(now);
        let meta = KeyMeta {
            selector: selector.clone(),
            algorithm: ann
                .get(ANN_ALGORITHM)
                .and_then(|a| KeyAlgorithm::from_spec_name(a))
                .unwrap_or(key.algorithm),
            created_at,
        };
        let source = match ann.get(ANN_SOURCE).map(String::as_str) {
            Some("user") => KeySource::User,
            _ => KeySource::Generated,
        };
        match ann.get(ANN_STATE).map(String::as_str) {
            Some("next") => {
                nexts.push((meta, ann.get(ANN_PUBLISHED_AT).and_then(|t| parse_time(t))))
            }
            Some("retiring") => out.ring.retiring.push(RetiringKey {
                key: meta,
                retire_at: ann
                    .get(ANN_RETIRE_AT)
                    .and_then(|t| parse_time(t))
                    .unwrap_or(now),
            }),
            _ => actives.push(meta),
        }
        out.keys.insert(
            selector,
            StoredKey {
                key,
                secret_name: name,
                source,
            },
        );
    }
    let newest_first = |v: &mut Vec<KeyMeta>| v.sort_by_key(|k| std::cmp::Reverse(k.created_at));
    newest_first(&mut actives);
    nexts.sort_by_key(|(k, _)| std::cmp::Reverse(k.created_at));
    let mut extra = Vec::new();
    let mut actives = actives.into_iter();
    out.ring.active = actives.next();
    extra.extend(actives);
    let mut nexts = nexts.into_iter();
    if let Some((next, published_at)) = nexts.next() {
        out.ring.next = Some(next);
        out.ring.next_published_at = published_at;
    }
    extra.extend(nexts.map(|(k, _)| k));
    out.ring
        .retiring
        .extend(extra.into_iter().map(|key| RetiringKey {
            key,
            retire_at: now,
        }));
    out.ring.retiring.sort_by_key(|r| r.retire_at);
    out
}

fn chrono_time(t: &k8s_openapi::jiff::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().try_into().ok()?)
}

/// The state a key has in `ring`, if it is in it.
fn state_of<'a>(
    ring: &'a KeyRing,
    selector: &str,
) -> Option<(&'a KeyMeta, &'static str, Option<DateTime<Utc>>)> {
    if let Some(a) = ring.active.as_ref().filter(|k| k.selector == selector) {
        return Some((a, "active", None));
    }
    if let Some(n) = ring.next.as_ref().filter(|k| k.selector == selector) {
        return Some((n, "next", None));
    }
    ring.retiring
        .iter()
        .find(|r| r.key.selector == selector)
        .map(|r| (&r.key, "retiring", Some(r.retire_at)))
}

/// Builds the Secret for one key of `ring` (for server-side apply: the full object every
/// time, since fields this manager stops sending are removed).
pub fn build_key_secret(
    maildomain: &str,
    relay_pool: &str,
    namespace: &str,
    owner: &OwnerReference,
    ring: &KeyRing,
    selector: &str,
    stored: &StoredKey,
) -> Option<Secret> {
    let (meta, state, retire_at) = state_of(ring, selector)?;
    let label_selector: String = selector
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(63)
        .collect();
    let labels = BTreeMap::from([
        (LABEL_MAILDOMAIN.to_string(), maildomain.to_string()),
        (LABEL_COMPONENT.to_string(), COMPONENT_DKIM_KEY.to_string()),
        (LABEL_RELAY_POOL.to_string(), relay_pool.to_string()),
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (
            "smtpfleet.io/dkim-selector".to_string(),
            label_selector
                .trim_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_string(),
        ),
    ]);
    let mut annotations = BTreeMap::from([
        (ANN_SELECTOR.to_string(), selector.to_string()),
        (
            ANN_ALGORITHM.to_string(),
            meta.algorithm.spec_name().to_string(),
        ),
        (ANN_CREATED_AT.to_string(), meta.created_at.to_rfc3339()),
        (ANN_STATE.to_string(), state.to_string()),
        (ANN_SOURCE.to_string(), stored.source.as_str().to_string()),
    ]);
    if let Some(at) = retire_at {
        annotations.insert(ANN_RETIRE_AT.to_string(), at.to_rfc3339());
    }
    if let (Some(at), "next") = (ring.next_published_at, state) {
        annotations.insert(ANN_PUBLISHED_AT.to_string(), at.to_rfc3339());
    }
    Some(Secret {
        metadata: ObjectMeta {
            name: Some(stored.secret_name.clone()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        },
        type_: Some("Opaque".to_string()),
        data: Some(BTreeMap::from([
            (
                PRIVATE_KEY.to_string(),
                ByteString(stored.key.private_key_pem.clone().into_bytes()),
            ),
            (
                PUBLIC_KEY.to_string(),
                ByteString(stored.key.public_key_pem.clone().into_bytes()),
            ),
        ])),
        ..Default::default()
    })
}

/// A new stored key for `selector`, named by the Secret naming rule.
pub fn new_stored_key(
    maildomain: &str,
    selector: &str,
    key: DkimKey,
    source: KeySource,
) -> StoredKey {
    StoredKey {
        key,
        secret_name: secret_name(maildomain, selector),
        source,
    }
}

/// Whether an existing Secret already holds what `desired` says (so no write is needed).
pub fn secret_up_to_date(existing: &Secret, desired: &Secret) -> bool {
    let sub = |a: &Option<BTreeMap<String, String>>, b: &Option<BTreeMap<String, String>>| {
        let (a, b) = (a.clone().unwrap_or_default(), b.clone().unwrap_or_default());
        b.iter().all(|(k, v)| a.get(k) == Some(v))
    };
    sub(&existing.metadata.labels, &desired.metadata.labels)
        && sub(
            &existing.metadata.annotations,
            &desired.metadata.annotations,
        )
        && existing.data == desired.data
        && existing.metadata.owner_references == desired.metadata.owner_references
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "smtpfleet.io/v1alpha1".into(),
            kind: "MailDomain".into(),
            name: "shop".into(),
            uid: "uid-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    #[test]
    fn secrets_round_trip_the_key_ring() {
        let t = |d| Utc.with_ymd_and_hms(2026, 1, d, 0, 0, 0).unwrap();
        let ring = KeyRing {
            active: Some(KeyMeta {
                selector: "mail-20260110".into(),
                algorithm: KeyAlgorithm::Ed25519,
                created_at: t(10),
            }),
            next: Some(KeyMeta {
                selector: "mail-20260120".into(),
                algorithm: KeyAlgorithm::Ed25519,
                created_at: t(20),
            }),
            next_published_at: Some(t(21)),
            retiring: vec![RetiringKey {
                key: KeyMeta {
                    selector: "mail".into(),
                    algorithm: KeyAlgorithm::Ed25519,
                    created_at: t(1),
                },
                retire_at: t(12),
            }],
        };
        let mut secrets = Vec::new();
        for sel in ring.selectors() {
            let stored = new_stored_key(
                "shop",
                sel,
                DkimKey::generate(KeyAlgorithm::Ed25519).unwrap(),
                KeySource::Generated,
            );
            let s = build_key_secret("shop", "outbound", "mail", &owner(), &ring, sel, &stored)
                .unwrap();
            assert_eq!(
                s.metadata.name.as_deref(),
                Some(format!("shop-dkim-{sel}").as_str())
            );
            secrets.push(s);
        }
        let back = read_key_ring(&secrets, t(15));
        assert_eq!(back.ring, ring);
        assert!(back.unusable.is_empty());
        assert_eq!(back.keys.len(), 3);
        let (meta, active) = back.active().unwrap();
        assert_eq!(meta.selector, "mail-20260110");
        assert_eq!(active.secret_name, "shop-dkim-mail-20260110");
        // A key not in the ring has no Secret.
        assert!(
            build_key_secret(
                "shop",
                "outbound",
                "mail",
                &owner(),
                &KeyRing::default(),
                "mail",
                active
            )
            .is_none()
        );
        assert!(secret_up_to_date(&secrets[0], &secrets[0]));
        assert!(!secret_up_to_date(&secrets[0], &secrets[1]));
    }

    #[test]
    fn broken_and_duplicate_secrets() {
        let now = Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0).unwrap();
        let mk = |sel: &str, created: u32| {
            let ring = KeyRing {
                active: Some(KeyMeta {
                    selector: sel.into(),
                    algorithm: KeyAlgorithm::Ed25519,
                    created_at: Utc.with_ymd_and_hms(2026, 1, created, 0, 0, 0).unwrap(),
                }),
                ..Default::default()
            };
            let stored = new_stored_key(
                "shop",
                sel,
                DkimKey::generate(KeyAlgorithm::Ed25519).unwrap(),
                KeySource::Generated,
            );
            build_key_secret("shop", "outbound", "mail", &owner(), &ring, sel, &stored).unwrap()
        };
        let older = mk("a", 1);
        let newer = mk("b", 2);
        let mut broken = mk("c", 3);
        broken
            .data
            .as_mut()
            .unwrap()
            .insert(PRIVATE_KEY.into(), ByteString(b"garbage".to_vec()));
        let back = read_key_ring(&[older, newer, broken], now);
        assert_eq!(back.ring.active.as_ref().unwrap().selector, "b");
        assert_eq!(back.ring.retiring.len(), 1);
        assert_eq!(back.ring.retiring[0].key.selector, "a");
        assert_eq!(back.ring.retiring[0].retire_at, now);
        assert_eq!(back.unusable.len(), 1);
        assert_eq!(back.unusable[0].0, "shop-dkim-c");
    }
}
