//! The pool's domain set, as nodes read it at run time: the shard Secrets
//! `<pool>-domains-NN` and the index ConfigMap `<pool>-domains` (format in
//! [`smtp_node::domains::shard`]).
//!
//! This is what keeps domains out of the pod template. Everything that changes as
//! MailDomains come, go or rotate their keys (the served domains, the signing keys and
//! their selectors) lives here and is reloaded by running nodes; the ConfigMap
//! `<pool>-config` and the StatefulSets depend on the RelayPool spec only, so only a
//! change that needs a restart (image, ports, resources, volumes) rolls the pods.
//! [`reloaded_inputs`] and [`restart_inputs`] state that split, and the unit tests hold
//! the builders to it.
//!
//! Size: one domain costs its index line plus its PEM key (about 2.3 KiB of Secret data
//! with RSA-2048, 0.2 KiB with Ed25519), spread over 64 shards by a hash of its name,
//! so 10,000 RSA domains make shards of about 380 KiB; the index holds one digest per
//! shard, under 8 KiB at any count.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use smtp_node::domains::shard::{self, DomainEntry};
use smtp_node::outbound::DkimAlgorithm as NodeAlgorithm;

use super::meta;
use crate::relaypool::model::{DkimAlgorithm, Pool};

/// Label telling a pool's domain shards apart from its other Secrets.
pub const COMPONENT_LABEL: &str = "smtpfleet.io/component";
/// Value of [`COMPONENT_LABEL`] on shards.
pub const COMPONENT_DOMAIN_SHARD: &str = "domain-shard";

/// Annotation on each shard: the digest of its data, so that the operator rewrites only
/// the shards that changed (read back with a metadata-only list).
pub const DIGEST_ANNOTATION: &str = "smtpfleet.io/domains-digest";

/// A shard whose data is larger than this is reported: the API server refuses objects
/// over 1 MiB, and the shard count is fixed.
pub const SHARD_WARN_BYTES: usize = 768 * 1024;

/// The private keys of the pool's signing domains, by the name of the Secret each is in.
/// Kept apart from the [`Pool`] model so that key material never reaches its `Debug`
/// output (and so logs).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KeyMaterial {
    /// PEM private key by Secret name.
    pub pems: BTreeMap<String, Vec<u8>>,
    /// The algorithm the MailDomain controller recorded on the Secret, when it did. It
    /// wins over the MailDomain spec: a key the user brings is whatever it is, whatever
    /// `spec.dkim.algorithm` says.
    pub algorithms: BTreeMap<String, DkimAlgorithm>,
}

impl KeyMaterial {
    /// Adds the key in Secret `secret`.
    pub fn insert(&mut self, secret: String, pem: Vec<u8>, algorithm: Option<DkimAlgorithm>) {
        if let Some(algorithm) = algorithm {
            self.algorithms.insert(secret.clone(), algorithm);
        }
        self.pems.insert(secret, pem);
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.pems.keys()).finish()
    }
}

/// The pool's domain objects, fully specified.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainObjects {
    /// Non-empty shards, by shard number, each with the digest of its data.
    pub shards: Vec<(Secret, String)>,
    /// The index: every shard's name and digest.
    pub index: ConfigMap,
}

impl DomainObjects {
    /// Names of the shards that exist in this set.
    pub fn shard_names(&self) -> Vec<String> {
        self.shards
            .iter()
            .filter_map(|(s, _)| s.metadata.name.clone())
            .collect()
    }
}

/// What a node reloads without a restart: the pool's domains and their keys (domain,
/// selector, algorithm, key Secret). Anything else in the [`Pool`] model reaches the
/// pods through the pod template or the node configuration, and rolls them.
pub fn reloaded_inputs(pool: &Pool) -> Vec<String> {
    pool.domains
        .iter()
        .map(|d| match &d.dkim {
            Some(k) => format!("{} {} {:?} {}", d.domain, k.selector, k.algorithm, k.secret),
            None => d.domain.clone(),
        })
        .collect()
}

/// The part of the pool a restart is needed for: the model without its domains. The
/// pod template and the node configuration are built from this alone.
pub fn restart_inputs(pool: &Pool) -> Pool {
    Pool {
        domains: Vec::new(),
        ..pool.clone()
    }
}

/// The domain shards and index of `pool`. A domain whose key Secret is not in `keys`
/// (not written yet, or deleted) is served unsigned until it is.
pub fn build(pool: &Pool, keys: &KeyMaterial) -> DomainObjects {
    let name = &pool.identity.name;
    let entries: Vec<DomainEntry> = pool
        .domains
        .iter()
        .map(|d| DomainEntry {
            domain: d.domain.clone(),
            key: d.dkim.as_ref().and_then(|k| {
                let pem = keys.pems.get(&k.secret)?;
                let algorithm = keys.algorithms.get(&k.secret).unwrap_or(&k.algorithm);
                Some((
                    k.selector.clone(),
                    match algorithm {
                        DkimAlgorithm::Rsa => NodeAlgorithm::Rsa,
                        DkimAlgorithm::Ed25519 => NodeAlgorithm::Ed25519,
                    },
                    pem.clone(),
                ))
            }),
        })
        .collect();
    let mut labels = meta::pool_labels(name);
    labels.insert(
        COMPONENT_LABEL.to_owned(),
        COMPONENT_DOMAIN_SHARD.to_owned(),
    );
    let mut digests = BTreeMap::new();
    let shards = shard::build_shards(&entries)
        .into_iter()
        .map(|(number, data)| {
            let shard_name = shard::shard_name(name, number);
            let digest = shard::digest(&data);
            digests.insert(shard_name.clone(), digest.clone());
            let mut metadata = meta::child_meta(&pool.identity, shard_name, labels.clone());
            metadata.annotations = Some(BTreeMap::from([(
                DIGEST_ANNOTATION.to_owned(),
                digest.clone(),
            )]));
            let secret = Secret {
                metadata,
                type_: Some("Opaque".to_owned()),
                data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
                ..Secret::default()
            };
            (secret, digest)
        })
        .collect();
    DomainObjects {
        shards,
        index: ConfigMap {
            metadata: meta::child_meta(
                &pool.identity,
                shard::index_name(name),
                meta::pool_labels(name),
            ),
            data: Some(digests),
            ..ConfigMap::default()
        },
    }
}

/// Label selector of the pool's shards.
pub fn shard_selector(pool: &str) -> String {
    format!(
        "{}={pool},{COMPONENT_LABEL}={COMPONENT_DOMAIN_SHARD}",
        meta::POOL_LABEL
    )
}

/// Bytes of data in a shard, as stored (base64 adds a third).
pub fn stored_size(secret: &Secret) -> usize {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| k.len() + v.0.len().div_ceil(3) * 4)
        .sum()
}
