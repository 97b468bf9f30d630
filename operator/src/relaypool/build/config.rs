//! The ConfigMap with the rendered smtp-node configuration.
//!
//! One configuration serves every pod of the pool. What differs per pod comes from the
//! environment at run time: the node's name from `POD_NAME` (the StatefulSet pod name,
//! `<pool>-<dc>-<ordinal>`, which is also how it appears in the peer list, so a node
//! finds itself there), its data centre from `SMTP_NODE_DATA_CENTRE`.
//!
//! The pod-template hash (see [`Rendered::hash`]) is computed over the configuration
//! rendered with every data centre at zero replicas, i.e. without the peer list: scaling
//! changes the peer list, which nodes reload from the mounted file, and must not
//! restart every pod of the pool. Any other change rolls the pods.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use serde::Serialize;

use super::BuildError;
use super::layout::CONFIG_KEY;
use super::meta;
use crate::relaypool::model::Pool;

/// The rendered node configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The YAML document stored under [`CONFIG_KEY`].
    pub yaml: String,
    /// SHA-256 (hex) of the configuration without the peer list.
    pub hash: String,
}

/// Renders the node configuration of `pool`.
pub fn render(pool: &Pool) -> Result<Rendered, BuildError> {
    let yaml = serde_yaml::to_string(&node_config(pool))?;
    let mut without_peers = pool.clone();
    for dc in &mut without_peers.data_centres {
        dc.replicas = 0;
    }
    let stable = serde_yaml::to_string(&node_config(&without_peers))?;
    Ok(Rendered {
        yaml,
        hash: sha256_hex(stable.as_bytes()),
    })
}

/// `<pool>-config` with the rendered configuration.
pub fn config_map(pool: &Pool, rendered: &Rendered) -> ConfigMap {
    let name = &pool.identity.name;
    ConfigMap {
        metadata: meta::child_meta(
            &pool.identity,
            meta::config_map_name(name),
            meta::pool_labels(name),
        ),
        data: Some(BTreeMap::from([(
            CONFIG_KEY.to_owned(),
            rendered.yaml.clone(),
        )])),
        ..ConfigMap::default()
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn node_config(pool: &Pool) -> impl Serialize {
    serde_json::json!({
        "hostname": pool.hostname,
        "peers": pool.data_centres.iter().flat_map(|dc| (0..dc.replicas).map(move |i| format!("{}-{}-{i}", pool.identity.name, dc.name))).collect::<Vec<_>>(),
    })
}
