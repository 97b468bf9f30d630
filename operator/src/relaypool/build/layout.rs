//! Where things are inside an smtp-node pod: ports and mount paths shared by the
//! StatefulSet (which mounts and exposes them) and the rendered node configuration
//! (which points the node at them).

/// The node's HTTP port: `/healthz`, `/readyz`, `/metrics` and the admin API.
pub const HTTP_PORT: u16 = 8080;
/// Port name of [`HTTP_PORT`].
pub const HTTP_PORT_NAME: &str = "http";
/// Port of node-to-node replication traffic (mTLS with the peer CA).
pub const PEER_PORT: u16 = 7443;
/// Port name of [`PEER_PORT`].
pub const PEER_PORT_NAME: &str = "peer";

/// Key of the node configuration inside the ConfigMap.
pub const CONFIG_KEY: &str = "smtp-node.yaml";
/// Directory the ConfigMap is mounted at.
pub const CONFIG_DIR: &str = "/etc/smtp-node/config";
/// Directory of the listener certificate (`tls.crt`, `tls.key`).
pub const TLS_DIR: &str = "/etc/smtp-node/tls";
/// Directory of the peer mTLS material (`ca.crt`, `<node>.crt`, `<node>.key`).
pub const PEER_TLS_DIR: &str = "/etc/smtp-node/peer";
/// Directory of the pool's admin token (`token`): the bearer token the node's admin API
/// (`/admin/queue`, `/admin/drain`) requires, so only the operator may drain a node.
pub const ADMIN_DIR: &str = "/etc/smtp-node/admin";
/// Key of the token in the admin Secret, and its file name in [`ADMIN_DIR`].
pub const ADMIN_TOKEN_KEY: &str = "token";
/// Directory of the submission users Secret.
pub const AUTH_DIR: &str = "/etc/smtp-node/auth";
/// The spool (one PersistentVolumeClaim per pod).
pub const SPOOL_DIR: &str = "/var/spool/smtp-node";
/// Scratch space: the root filesystem is read-only.
pub const TMP_DIR: &str = "/tmp";

/// Path of the node configuration file.
pub fn config_path() -> String {
    format!("{CONFIG_DIR}/{CONFIG_KEY}")
}

/// UID and GID the node runs as (the conventional "nonroot" user of distroless images).
pub const RUN_AS: i64 = 65532;
