//! Names, labels and owner references shared by every child of a pool.
//!
//! Names are derived from the pool name only, so a reconciliation can find every child
//! again without storing anything: `<pool>-<dc>` StatefulSets, `<pool>-peers` for the
//! headless Service, `<pool>-config` for the ConfigMap, and `<pool>` for the client
//! Service, the PodDisruptionBudget and the ServiceAccount, `<pool>-node` for the Role
//! and RoleBinding on Leases.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::relaypool::model::PoolIdentity;

/// `app.kubernetes.io/name` of every child.
pub const APP_NAME: &str = "smtp-node";
/// `app.kubernetes.io/managed-by` of every child.
pub const MANAGED_BY: &str = "smtpfleet-operator";
/// Label naming the pool of a child.
pub const POOL_LABEL: &str = "smtpfleet.io/pool";
/// Label naming the data centre of a StatefulSet and its pods.
pub const DATA_CENTRE_LABEL: &str = "smtpfleet.io/data-centre";
/// Pod-template annotation with the hash of the rendered node configuration.
pub const CONFIG_HASH_ANNOTATION: &str = "smtpfleet.io/config-hash";
/// StatefulSet annotation with the hash of the pod template the operator applied. The
/// StatefulSet controller only reports a new revision after the apply, but the partition
/// that holds the nodes must go out in the same apply as the template: comparing this
/// hash with the desired one is how the operator knows beforehand.
pub const TEMPLATE_HASH_ANNOTATION: &str = "smtpfleet.io/template-hash";

/// Name of the StatefulSet of data centre `dc`.
pub fn statefulset_name(pool: &str, dc: &str) -> String {
    format!("{pool}-{dc}")
}

/// Name of the headless Service that gives pods stable DNS names for peer traffic.
pub fn peer_service_name(pool: &str) -> String {
    format!("{pool}-peers")
}

/// Name of the Service SMTP clients connect to.
pub fn client_service_name(pool: &str) -> String {
    pool.to_owned()
}

/// Name of the ConfigMap with the node configuration.
pub fn config_map_name(pool: &str) -> String {
    format!("{pool}-config")
}

/// Name of the PodDisruptionBudget.
pub fn pdb_name(pool: &str) -> String {
    pool.to_owned()
}

/// Name of the ServiceAccount the pods run as.
pub fn service_account_name(pool: &str) -> String {
    pool.to_owned()
}

/// Name of the Role (and its RoleBinding) that lets the pods keep their Leases.
pub fn node_role_name(pool: &str) -> String {
    format!("{pool}-node")
}

/// Name of the listener certificate Secret the operator manages (through cert-manager
/// or its self-signed issuer) when the spec does not name one.
pub fn managed_tls_secret_name(pool: &str) -> String {
    format!("{pool}-tls")
}

/// Secret with the peer trust bundle and every node's peer certificate (mounted).
pub fn peer_tls_secret_name(pool: &str) -> String {
    format!("{pool}-peer-tls")
}

/// Secret with the pool's admin token (see `layout::ADMIN_DIR`).
pub fn admin_secret_name(pool: &str) -> String {
    format!("{pool}-admin")
}

/// Secret with the peer CA keys (never mounted).
pub fn peer_ca_secret_name(pool: &str) -> String {
    format!("{pool}-peer-ca")
}

/// Labels every child and pod of the pool carries. Also the selector of pool-wide
/// objects (Services, PodDisruptionBudget); the StatefulSet selectors add the data
/// centre.
pub fn pool_labels(pool: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), APP_NAME.to_owned()),
        ("app.kubernetes.io/instance".to_owned(), pool.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            MANAGED_BY.to_owned(),
        ),
        (POOL_LABEL.to_owned(), pool.to_owned()),
    ])
}

/// Selector for the pods of the whole pool. Smaller than [`pool_labels`] on purpose:
/// selectors of StatefulSets are immutable, so they hold only labels that never change.
pub fn pool_selector(pool: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), APP_NAME.to_owned()),
        (POOL_LABEL.to_owned(), pool.to_owned()),
    ])
}

/// Selector for the pods of one data centre.
pub fn data_centre_selector(pool: &str, dc: &str) -> BTreeMap<String, String> {
    let mut selector = pool_selector(pool);
    selector.insert(DATA_CENTRE_LABEL.to_owned(), dc.to_owned());
    selector
}

/// Labels of a data centre's StatefulSet and pods.
pub fn data_centre_labels(pool: &str, dc: &str) -> BTreeMap<String, String> {
    let mut labels = pool_labels(pool);
    labels.insert(DATA_CENTRE_LABEL.to_owned(), dc.to_owned());
    labels
}

/// Label selector string matching every child of `pool` the operator manages, for
/// list calls.
pub fn children_selector(pool: &str) -> String {
    format!("{POOL_LABEL}={pool},app.kubernetes.io/managed-by={MANAGED_BY}")
}

/// The controller owner reference to the pool: garbage collection deletes children
/// with the pool, and the controller's `owns` watches map child events back to it.
pub fn owner_reference(pool: &PoolIdentity) -> OwnerReference {
    OwnerReference {
        api_version: pool.api_version.clone(),
        kind: pool.kind.clone(),
        name: pool.name.clone(),
        uid: pool.uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Metadata of a child: name, namespace, labels and the owner reference.
pub fn child_meta(
    pool: &PoolIdentity,
    name: String,
    labels: BTreeMap<String, String>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(pool.namespace.clone()),
        labels: Some(labels),
        owner_references: Some(vec![owner_reference(pool)]),
        ..ObjectMeta::default()
    }
}
