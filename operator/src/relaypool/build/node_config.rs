//! The smtp-node configuration document, as the operator renders it.
//!
//! Field names and value formats follow smtp-node's own configuration: camelCase keys,
//! durations written as `30s`, `5m`, `1h30m`, `5d`, and the `delivery` section shaped
//! like smtp-node's delivery configuration. Everything a pod needs that
//! differs from its siblings comes from the environment (see [`NodeIdentity`]), so one
//! document serves the whole pool.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole document stored under `smtp-node.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeConfig {
    /// Where a node learns who it is.
    pub node: NodeIdentity,
    /// EHLO name and certificate name.
    pub hostname: String,
    /// SMTP listeners.
    pub listeners: Vec<ListenerConfig>,
    /// Listener certificate; absent when the pool has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
    /// Health, readiness, metrics and the admin API.
    pub http: HttpConfig,
    /// Local spool.
    pub spool: SpoolConfig,
    /// Copies of each message before 250, and the peers that hold them.
    pub replication: ReplicationConfig,
    /// Who may relay, and for which sender domains.
    pub relay: RelayConfig,
    /// Limits on clients.
    pub limits: LimitsConfig,
    /// Outbound delivery.
    pub delivery: DeliveryConfig,
    /// Where the node reads the pool's domains and DKIM keys while it runs.
    pub pool_domains: PoolDomainsConfig,
}

/// The pool's domain set in the API server (the index ConfigMap `<pool>-domains` and
/// its shard Secrets), read with the pods' service account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolDomainsConfig {
    /// The pool's namespace.
    pub namespace: String,
    /// The pool's name.
    pub pool: String,
}

/// Names of the environment variables that carry a pod's identity. The node name is the
/// pod name (`POD_NAME`, from the downward API): StatefulSet pods are named
/// `<pool>-<dc>-<ordinal>`, stable across restarts, so a node's Lease and its place in
/// the pool's view survive a rescheduled pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeIdentity {
    /// Variable holding the node name.
    pub name_env: String,
    /// Variable holding the node's data centre.
    pub data_centre_env: String,
}

/// One SMTP listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerConfig {
    /// `relay`, `submission` or `implicitTls`.
    pub name: String,
    /// Address to bind (`0.0.0.0:2525`).
    pub address: String,
    /// `starttls` (offered when a certificate is configured) or `implicit`.
    pub tls: ListenerTls,
    /// Whether clients must authenticate before sending.
    pub require_auth: bool,
}

/// TLS mode of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerTls {
    /// Plain connection upgraded with STARTTLS.
    Starttls,
    /// TLS from the first byte (RFC 8314).
    Implicit,
}

/// Certificate files, reloaded by the node when they change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert_file: String,
    /// PEM private key.
    pub key_file: String,
}

/// The node's HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to bind.
    pub address: String,
    /// The bearer token file the admin API requires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<String>,
}

/// The local spool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory on the pod's PersistentVolume.
    pub dir: String,
}

/// Replication of accepted messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicationConfig {
    /// Nodes that must hold a message durably before 250.
    pub factor: u32,
    /// Distinct data centres among those nodes.
    pub min_data_centres: u32,
    /// Address the peer listener binds.
    pub listen: String,
    /// Variable holding the host other nodes reach this one at (`POD_IP`). Nodes find
    /// each other through the view in the API server, where each writes its own address,
    /// so the document lists no peers and scaling never changes it.
    pub advertise_host_env: String,
    /// Where the pool's Leases and view live.
    pub arbiter: ArbiterConfig,
    /// Peer mTLS material from the pool's peer CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<PeerTlsFiles>,
}

/// The API server as the pool's arbiter: the pods' service account reaches it, with a
/// Role on Leases in the pool's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArbiterConfig {
    /// The pool's namespace.
    pub namespace: String,
    /// The pool's name: Leases are `<pool>-node-<node>`, the view `<pool>-view`.
    pub pool: String,
}

/// The trust bundle, and `<certDir>/<node>.crt|.key` for each node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerTlsFiles {
    pub ca_file: String,
    pub cert_dir: String,
}

/// Relay permissions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RelayConfig {
    /// Client networks that may relay without authenticating.
    #[serde(default)]
    pub allowed_networks: Vec<String>,
    /// File of `user:argon2-hash` lines; absent when no user may authenticate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users_file: Option<String>,
}

/// Limits on clients, per node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest message accepted, bytes (advertised with SIZE).
    pub max_message_size: u64,
    /// Recipients per message.
    pub max_recipients: u32,
    /// Simultaneous client connections.
    pub max_connections: u32,
    /// Simultaneous connections per client address.
    pub max_connections_per_client: u32,
}

/// Outbound delivery: the subset of smtp-node's delivery settings the pool sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Name sent in EHLO.
    pub helo_name: String,
    /// Simultaneous connections to one destination.
    pub concurrency_per_destination: u32,
    /// Messages per minute to one destination; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_minute: Option<u32>,
    /// Waits between attempts (`5m`, `1h`, …); the last one repeats.
    pub retry_schedule: Vec<String>,
    /// Age after which undelivered recipients bounce.
    pub max_age: String,
}

/// Writes a duration the way smtp-node reads it: the largest units first, integral
/// parts only (`90s` → `1m30s`, `84h` → `3d12h`, `1500ms` → `1s500ms`, zero → `0s`).
pub fn format_duration(duration: Duration) -> String {
    const UNITS: [(&str, u128); 5] = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    let mut rest = duration.as_millis();
    if rest == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in UNITS {
        let count = rest / size;
        if count > 0 {
            out.push_str(&format!("{count}{unit}"));
            rest -= count * size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_use_the_largest_units() {
        let cases = [
            (0, "0s"),
            (1_500, "1s500ms"),
            (90_000, "1m30s"),
            (300_000, "5m"),
            (5_400_000, "1h30m"),
            (302_400_000, "3d12h"),
            (432_000_000, "5d"),
        ];
        for (ms, text) in cases {
            assert_eq!(format_duration(Duration::from_millis(ms)), text);
            // And the API's parser reads it back to the same value.
            assert_eq!(
                crate::api::duration::parse(text).unwrap(),
                Duration::from_millis(ms),
                "{text}"
            );
        }
    }
}
