//! The ConfigMap with the rendered smtp-node configuration ([`NodeConfig`], YAML under
//! `smtp-node.yaml`, mounted at `/etc/smtp-node/config` and passed to the node with
//! `--config`).
//!
//! One configuration serves every pod of the pool. What differs per pod comes from the
//! environment at run time: the node's name from `POD_NAME` (the StatefulSet pod name,
//! `<pool>-<dc>-<ordinal>`), its data centre from `SMTP_NODE_DATA_CENTRE`, the address
//! peers reach it at from `POD_IP`. The document names these variables
//! (`node.nameEnv`, `node.dataCentreEnv`, `replication.advertiseHostEnv`). Nodes find
//! each other through the pool's view in the API server (`replication.arbiter`), so the
//! document lists no peers: scaling does not change it, and so restarts no pod. Nor
//! does it list domains or DKIM keys: nodes follow the pool's domain set in the API server
//! (`poolDomains`, see [`super::domains`]), so adding a domain restarts no pod either.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::BuildError;
use super::layout::{
    ADMIN_DIR, ADMIN_TOKEN_KEY, AUTH_DIR, CONFIG_KEY, HTTP_PORT, PEER_PORT, PEER_TLS_DIR,
    SPOOL_DIR, TLS_DIR,
};
use super::meta;
use super::node_config::{
    ArbiterConfig, DeliveryConfig, HttpConfig, LimitsConfig, ListenerConfig, ListenerTls,
    NodeConfig, NodeIdentity, PeerTlsFiles, PoolDomainsConfig, RelayConfig, ReplicationConfig,
    SpoolConfig, TlsFiles, format_duration,
};
use super::statefulset::{DATA_CENTRE_ENV, POD_IP_ENV};
use crate::relaypool::model::{ListenerKind, Pool};
use crate::relaypool::validate::AUTH_USERS_KEY;

/// The rendered node configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The YAML document stored under [`CONFIG_KEY`].
    pub yaml: String,
    /// SHA-256 (hex) of the configuration: a change rolls the pods.
    pub hash: String,
}

/// Renders the node configuration of `pool`.
pub fn render(pool: &Pool) -> Result<Rendered, BuildError> {
    let yaml = serde_yaml::to_string(&node_config(pool))?;
    Ok(Rendered {
        hash: sha256_hex(yaml.as_bytes()),
        yaml,
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

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The node configuration of `pool`.
pub fn node_config(pool: &Pool) -> NodeConfig {
    let name = &pool.identity.name;
    let namespace = &pool.identity.namespace;
    NodeConfig {
        node: NodeIdentity {
            name_env: "POD_NAME".to_owned(),
            data_centre_env: DATA_CENTRE_ENV.to_owned(),
        },
        hostname: pool.hostname.clone(),
        listeners: pool
            .listeners
            .iter()
            .map(|l| ListenerConfig {
                name: listener_name(l.kind).to_owned(),
                address: bind(l.kind.container_port()),
                tls: match l.kind {
                    ListenerKind::ImplicitTls => ListenerTls::Implicit,
                    ListenerKind::Relay | ListenerKind::Submission => ListenerTls::Starttls,
                },
                require_auth: l.kind != ListenerKind::Relay,
            })
            .collect(),
        tls: pool.tls.as_ref().map(|_| TlsFiles {
            cert_file: format!("{TLS_DIR}/tls.crt"),
            key_file: format!("{TLS_DIR}/tls.key"),
        }),
        http: HttpConfig {
            address: bind(HTTP_PORT),
            admin_token_file: Some(format!("{ADMIN_DIR}/{ADMIN_TOKEN_KEY}")),
        },
        spool: SpoolConfig {
            dir: SPOOL_DIR.to_owned(),
        },
        replication: ReplicationConfig {
            factor: pool.queue.replication_factor,
            min_data_centres: pool.queue.min_data_centres,
            listen: bind(PEER_PORT),
            advertise_host_env: POD_IP_ENV.to_owned(),
            arbiter: ArbiterConfig {
                namespace: namespace.clone(),
                pool: name.clone(),
            },
            tls: Some(PeerTlsFiles {
                ca_file: format!("{PEER_TLS_DIR}/ca.crt"),
                cert_dir: PEER_TLS_DIR.to_owned(),
            }),
        },
        relay: RelayConfig {
            allowed_networks: pool.relay.allowed_networks.clone(),
            users_file: pool
                .relay
                .auth_secret
                .as_ref()
                .map(|_| format!("{AUTH_DIR}/{AUTH_USERS_KEY}")),
        },
        limits: LimitsConfig {
            max_message_size: pool.limits.max_message_size,
            max_recipients: pool.limits.max_recipients,
            max_connections: pool.limits.max_connections,
            max_connections_per_client: pool.limits.max_connections_per_client,
        },
        delivery: DeliveryConfig {
            helo_name: pool.hostname.clone(),
            concurrency_per_destination: pool.limits.per_destination_concurrency,
            rate_per_minute: pool.limits.per_destination_rate_per_minute,
            retry_schedule: pool
                .queue
                .retry_schedule
                .iter()
                .copied()
                .map(format_duration)
                .collect(),
            max_age: format_duration(pool.queue.max_age),
        },
        pool_domains: PoolDomainsConfig {
            namespace: namespace.clone(),
            pool: name.clone(),
        },
    }
}

fn listener_name(kind: ListenerKind) -> &'static str {
    match kind {
        ListenerKind::Relay => "relay",
        ListenerKind::Submission => "submission",
        ListenerKind::ImplicitTls => "implicitTls",
    }
}

/// Listeners bind every IPv4 address of the pod. (Binding `[::]` would fail in pods
/// without IPv6, which are the common case.)
fn bind(port: u16) -> String {
    format!("0.0.0.0:{port}")
}
