//! The format of a pool's domain shards: what the operator writes and the node reads.
//!
//! A pool's domains are split over at most [`SHARDS`] Secrets `<pool>-domains-<NN>`, a
//! domain always in shard [`shard_of`]`(domain)`. Each shard Secret holds an index,
//! [`INDEX_KEY`] (YAML, [`ShardIndex`]), and one PEM private key per signing domain under
//! [`key_file`]`(domain, selector)`. The ConfigMap `<pool>-domains` maps the name of every
//! shard Secret that exists to the [`digest`] of its data: nodes watch that one small
//! object and fetch only the shards whose digest moved.
//!
//! Why a fixed number of hashed shards: the set of objects (and so the node's RBAC, which
//! names them) never changes shape as domains come and go, one domain change rewrites one
//! shard, and no object grows toward the API server's 1 MiB limit. At 10,000 domains with
//! RSA-2048 keys (about 2.4 KiB of Secret data each) a shard holds about 156 domains,
//! some 380 KiB; the index ConfigMap stays under 8 KiB whatever the count.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::outbound::DkimAlgorithm;

/// Number of shards of a pool's domain set. Part of the format: changing it moves domains
/// between shards, which the operator and every node must agree on.
pub const SHARDS: u32 = 64;

/// Key of the index inside a shard Secret.
pub const INDEX_KEY: &str = "domains.yaml";

/// Name of the ConfigMap listing a pool's shard Secrets and their digests.
pub fn index_name(pool: &str) -> String {
    format!("{pool}-domains")
}

/// Name of shard `shard` of `pool`.
pub fn shard_name(pool: &str, shard: u32) -> String {
    format!("{pool}-domains-{shard:02}")
}

/// Every shard name of `pool`, in order: what the node's Role names.
pub fn shard_names(pool: &str) -> Vec<String> {
    (0..SHARDS).map(|s| shard_name(pool, s)).collect()
}

/// The shard a domain belongs to: FNV-1a (64-bit) of the lower-case name, modulo
/// [`SHARDS`]. Written out rather than taken from the standard library, whose hasher may
/// change between Rust releases while operator and node must agree forever.
pub fn shard_of(domain: &str) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in domain.trim_end_matches('.').bytes() {
        hash ^= u64::from(byte.to_ascii_lowercase());
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(SHARDS)) as u32
}

/// Data key of a domain's private key. Domain names cannot contain `_`, so
/// `<domain>_<selector>.key` is unambiguous, and both are valid Secret key characters.
pub fn key_file(domain: &str, selector: &str) -> String {
    format!("{}_{selector}.key", domain.to_ascii_lowercase())
}

/// The index of one shard.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShardIndex {
    /// Domains of this shard, sorted.
    #[serde(default)]
    pub domains: Vec<ShardDomain>,
}

/// A served sender domain.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShardDomain {
    /// The domain (`example.com`), lower case.
    pub domain: String,
    /// Its signing key; absent while the MailDomain has none yet (mail is relayed
    /// unsigned meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dkim: Option<ShardKey>,
}

/// Where a domain's signing key is in the shard.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShardKey {
    /// Selector (`s=`).
    pub selector: String,
    /// `rsa` or `ed25519`.
    pub algorithm: DkimAlgorithm,
    /// Data key of the PEM private key in the same Secret ([`key_file`]).
    pub key: String,
}

/// One served domain with its key material, as the operator gathers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainEntry {
    /// The domain, any case.
    pub domain: String,
    /// Selector, algorithm and PEM private key, once the domain has a key.
    pub key: Option<(String, DkimAlgorithm, Vec<u8>)>,
}

/// The data of every non-empty shard of a domain set, by shard number: what the
/// operator writes. Pure, and deterministic in its input order.
pub fn build_shards(entries: &[DomainEntry]) -> BTreeMap<u32, BTreeMap<String, Vec<u8>>> {
    let mut indexes: BTreeMap<u32, (ShardIndex, BTreeMap<String, Vec<u8>>)> = BTreeMap::new();
    let mut sorted: Vec<&DomainEntry> = entries.iter().collect();
    sorted.sort_by_key(|e| e.domain.to_ascii_lowercase());
    sorted.dedup_by_key(|e| e.domain.to_ascii_lowercase());
    for entry in sorted {
        let domain = entry.domain.to_ascii_lowercase();
        let (index, files) = indexes.entry(shard_of(&domain)).or_default();
        let dkim = entry.key.as_ref().map(|(selector, algorithm, pem)| {
            let file = key_file(&domain, selector);
            files.insert(file.clone(), pem.clone());
            ShardKey {
                selector: selector.clone(),
                algorithm: *algorithm,
                key: file,
            }
        });
        index.domains.push(ShardDomain { domain, dkim });
    }
    indexes
        .into_iter()
        .map(|(shard, (index, mut files))| {
            // Serializing plain strings and enums cannot fail; an empty index would only
            // make the node skip this shard's domains, which the digest would still flag.
            let yaml = serde_yaml::to_string(&index).unwrap_or_default();
            files.insert(INDEX_KEY.to_owned(), yaml.into_bytes());
            (shard, files)
        })
        .collect()
}

/// SHA-256 (hex) of a shard's data, key by key in order: the index ConfigMap carries it
/// so that nodes fetch a shard only when it changed.
pub fn digest(data: &BTreeMap<String, Vec<u8>>) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (key, value) in data {
        ctx.update(&(key.len() as u64).to_be_bytes());
        ctx.update(key.as_bytes());
        ctx.update(&(value.len() as u64).to_be_bytes());
        ctx.update(value);
    }
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_numbers_are_stable_and_case_blind() {
        // Fixed values: operator and node of different releases must agree.
        assert_eq!(shard_of("example.com"), shard_of("Example.COM."));
        let spread: std::collections::BTreeSet<u32> = (0..1000)
            .map(|i| shard_of(&format!("d{i}.example.com")))
            .collect();
        assert_eq!(
            spread.len(),
            SHARDS as usize,
            "1,000 domains use every shard"
        );
        assert_eq!(shard_name("outbound", 7), "outbound-domains-07");
        assert_eq!(shard_names("p").len(), 64);
    }

    #[test]
    fn shards_hold_their_domains_and_keys_and_digests_follow_content() {
        let entries = vec![
            DomainEntry {
                domain: "B.example".into(),
                key: Some(("s1".into(), DkimAlgorithm::Ed25519, b"pem-b".to_vec())),
            },
            DomainEntry {
                domain: "a.example".into(),
                key: None,
            },
        ];
        let shards = build_shards(&entries);
        let total: usize = shards
            .values()
            .map(|data| {
                let index: ShardIndex =
                    serde_yaml::from_slice(&data[INDEX_KEY]).expect("index parses");
                index.domains.len()
            })
            .sum();
        assert_eq!(total, 2);
        let b = &shards[&shard_of("b.example")];
        assert_eq!(b["b.example_s1.key"], b"pem-b");
        let mut reversed = entries.clone();
        reversed.reverse();
        assert_eq!(build_shards(&reversed), shards, "order does not matter");
        let before = digest(b);
        let mut changed = b.clone();
        changed.insert("b.example_s1.key".into(), b"pem-b2".to_vec());
        assert_ne!(digest(&changed), before);
    }

    #[test]
    fn ten_thousand_rsa_domains_stay_far_below_the_object_limit() {
        // An RSA-2048 PKCS#8 PEM is about 1,704 bytes.
        let pem = vec![b'x'; 1704];
        let entries: Vec<DomainEntry> = (0..10_000)
            .map(|i| DomainEntry {
                domain: format!("customer-{i}.example.com"),
                key: Some(("mail-20260101".into(), DkimAlgorithm::Rsa, pem.clone())),
            })
            .collect();
        let shards = build_shards(&entries);
        let largest = shards
            .values()
            .map(|data| data.values().map(|v| v.len() * 4 / 3 + 64).sum::<usize>())
            .max()
            .unwrap_or(0);
        assert!(largest < 600 * 1024, "largest shard {largest} bytes");
    }
}
