//! The served domains and their signers, built from shard data (pure: no I/O).
//!
//! A [`DomainSet`] is immutable once built; a reload builds a whole new one and swaps
//! it in at once (see [`super::DomainState`]), so a message is signed either with the
//! keys from before a change or with those after it, never with a mix.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::dkim::{DkimSigner, parse_key};
use crate::outbound::DkimConfig;
use crate::outbound::config::default_dkim_headers;

use super::shard::{INDEX_KEY, ShardIndex};

/// The domains a node serves and the keys it signs with, swapped as a whole.
#[derive(Debug, Default)]
pub struct DomainSet {
    /// `false` until the first load: the node then answers 451, not 550, to senders.
    loaded: bool,
    domains: HashSet<String>,
    signers: HashMap<String, Arc<DkimSigner>>,
}

impl DomainSet {
    /// The set before anything was loaded.
    pub fn unloaded() -> Self {
        Self::default()
    }

    /// Whether this set came from a load (as opposed to the placeholder at start).
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// Whether mail from `domain` (lower case) is relayed.
    pub fn serves(&self, domain: &str) -> bool {
        self.domains.contains(domain)
    }

    /// The signer of `domain` (lower case), exact match.
    pub fn signer(&self, domain: &str) -> Option<&Arc<DkimSigner>> {
        self.signers.get(domain)
    }

    /// Served domains.
    pub fn domain_count(&self) -> usize {
        self.domains.len()
    }

    /// Domains with a usable key.
    pub fn key_count(&self) -> usize {
        self.signers.len()
    }
}

/// A key refused while building a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The shard it came from.
    pub shard: String,
    /// Its domain, or empty when the whole shard index was unreadable.
    pub domain: String,
    /// Why.
    pub reason: String,
}

/// One shard, parsed: its domains with the signer each has (if any).
#[derive(Debug, Default, Clone)]
pub struct ParsedShard {
    /// Served domains of the shard, each with its signer when its key is usable.
    pub domains: Vec<(String, Option<Arc<DkimSigner>>)>,
}

/// Parses shard `name` from its data. A key that does not parse is refused (listed in the
/// returned rejections); its domain keeps the signer it had in `previous`, if any, so a
/// broken update never takes a working key away. An index that does not parse fails
/// the whole shard: the caller keeps the previous version of it.
pub fn parse_shard(
    name: &str,
    data: &BTreeMap<String, Vec<u8>>,
    previous: Option<&DomainSet>,
) -> Result<(ParsedShard, Vec<Rejected>), Rejected> {
    let whole = |reason: String| Rejected {
        shard: name.to_owned(),
        domain: String::new(),
        reason,
    };
    let index_bytes = data
        .get(INDEX_KEY)
        .ok_or_else(|| whole(format!("no {INDEX_KEY}")))?;
    let index: ShardIndex = serde_yaml::from_slice(index_bytes)
        .map_err(|e| whole(format!("{INDEX_KEY} does not parse: {e}")))?;
    let mut parsed = ParsedShard::default();
    let mut rejected = Vec::new();
    for entry in index.domains {
        let domain = entry.domain.trim_end_matches('.').to_ascii_lowercase();
        if !crate::config::is_domain(&domain) {
            rejected.push(Rejected {
                shard: name.to_owned(),
                domain: entry.domain.clone(),
                reason: "not a domain name".into(),
            });
            continue;
        }
        let signer = match &entry.dkim {
            None => None,
            Some(key) => {
                let path = format!("{name}/{}", key.key);
                let loaded = data
                    .get(&key.key)
                    .ok_or_else(|| format!("{path} is missing"))
                    .and_then(|pem| parse_key(pem, key.algorithm, &path).map_err(|e| e.to_string()))
                    .map(|k| {
                        let config = DkimConfig {
                            domain: domain.clone(),
                            selector: key.selector.clone(),
                            private_key_file: path.clone().into(),
                            algorithm: key.algorithm,
                            headers: default_dkim_headers(),
                        };
                        Arc::new(DkimSigner::new(&config, k))
                    });
                match loaded {
                    Ok(signer) => Some(signer),
                    Err(reason) => {
                        rejected.push(Rejected {
                            shard: name.to_owned(),
                            domain: domain.clone(),
                            reason,
                        });
                        previous.and_then(|p| p.signer(&domain)).cloned()
                    }
                }
            }
        };
        parsed.domains.push((domain, signer));
    }
    Ok((parsed, rejected))
}

/// The set made of `shards`, loaded.
pub fn assemble<'a>(shards: impl IntoIterator<Item = &'a ParsedShard>) -> DomainSet {
    let mut set = DomainSet {
        loaded: true,
        ..DomainSet::default()
    };
    for shard in shards {
        for (domain, signer) in &shard.domains {
            set.domains.insert(domain.clone());
            if let Some(signer) = signer {
                set.signers.insert(domain.clone(), signer.clone());
            }
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use mail_auth::dkim::generate::DkimKeyPair;

    use super::*;
    use crate::domains::shard::{DomainEntry, build_shards, shard_name};
    use crate::outbound::DkimAlgorithm;

    fn pem() -> Vec<u8> {
        let pair = DkimKeyPair::generate_ed25519().expect("key");
        let b64 = base64::engine::general_purpose::STANDARD.encode(pair.private_key());
        format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n").into_bytes()
    }

    fn entry(domain: &str, key: Option<Vec<u8>>) -> DomainEntry {
        DomainEntry {
            domain: domain.into(),
            key: key.map(|pem| ("s1".to_owned(), DkimAlgorithm::Ed25519, pem)),
        }
    }

    fn build(entries: &[DomainEntry], previous: Option<&DomainSet>) -> (DomainSet, Vec<Rejected>) {
        let mut parsed = Vec::new();
        let mut rejected = Vec::new();
        for (shard, data) in build_shards(entries) {
            let (p, r) = parse_shard(&shard_name("pool", shard), &data, previous).expect("index");
            parsed.push(p);
            rejected.extend(r);
        }
        (assemble(&parsed), rejected)
    }

    #[test]
    fn domains_with_and_without_keys_are_served() {
        let (set, rejected) = build(
            &[entry("a.example", Some(pem())), entry("B.example", None)],
            None,
        );
        assert!(rejected.is_empty());
        assert!(set.is_loaded());
        assert!(set.serves("a.example") && set.serves("b.example"));
        assert!(!set.serves("c.example"));
        assert_eq!(set.signer("a.example").map(|s| s.selector()), Some("s1"));
        assert!(set.signer("b.example").is_none());
        assert_eq!((set.domain_count(), set.key_count()), (2, 1));
        assert!(!DomainSet::unloaded().is_loaded());
    }

    #[test]
    fn a_bad_key_is_refused_and_the_previous_one_kept_while_others_load() {
        let (old, _) = build(&[entry("a.example", Some(pem()))], None);
        let (set, rejected) = build(
            &[
                entry("a.example", Some(b"garbage".to_vec())),
                entry("b.example", Some(pem())),
            ],
            Some(&old),
        );
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].domain, "a.example");
        assert!(rejected[0].reason.contains("PEM"), "{:?}", rejected[0]);
        assert!(
            Arc::ptr_eq(
                set.signer("a.example").expect("kept"),
                old.signer("a.example").expect("old")
            ),
            "the domain keeps its previous key"
        );
        assert!(set.signer("b.example").is_some());
        // Without a previous key the domain is served unsigned.
        let (fresh, rejected) = build(&[entry("a.example", Some(b"garbage".to_vec()))], None);
        assert_eq!(rejected.len(), 1);
        assert!(fresh.serves("a.example") && fresh.signer("a.example").is_none());
    }

    #[test]
    fn an_unreadable_index_fails_the_shard() {
        let data = BTreeMap::from([(INDEX_KEY.to_owned(), b"domains: 7".to_vec())]);
        let err = parse_shard("pool-domains-00", &data, None).unwrap_err();
        assert_eq!(err.shard, "pool-domains-00");
        assert!(parse_shard("pool-domains-00", &BTreeMap::new(), None).is_err());
    }
}
