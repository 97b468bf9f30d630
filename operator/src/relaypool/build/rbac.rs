//! The pods' permissions: a Role on Leases and on the pool's domain set in the pool's
//! namespace, bound to the pool's ServiceAccount.
//!
//! A node keeps its own Lease (`<pool>-node-<node>`) and changes the pool's view
//! (`<pool>-view`) by compare-and-set; it reads the other nodes' Leases to see them
//! renew. That takes exactly `get`, `list`, `watch`, `create` and `update` on Leases:
//! no `patch` (every write carries the resourceVersion it read), no `delete`, and
//! nothing outside `coordination.k8s.io` or outside the namespace. `create` and `list`
//! cannot be narrowed by name in RBAC, so the Role covers the namespace's Leases; a
//! namespace per pool keeps one pool's nodes away from another's.
//!
//! A node also follows the pool's domain set (see [`super::domains`]): `get`, `list` and
//! `watch` on the one index ConfigMap `<pool>-domains` (a watch selected by
//! `metadata.name`, which RBAC authorizes against the resource name) and `get` on the
//! shard Secrets `<pool>-domains-00` to `-63`. Both rules name their objects, and the
//! names never change with the domains, so the Role has a fixed shape and a node can
//! read no other Secret: not the peer CA key, not another pool's keys.

use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

use smtp_node::domains::shard;

use super::meta;
use crate::relaypool::model::Pool;

/// The verbs the node needs on Leases.
pub const LEASE_VERBS: [&str; 5] = ["get", "list", "watch", "create", "update"];

/// `<pool>-node`: Leases in the pool's namespace.
pub fn role(pool: &Pool) -> Role {
    let name = &pool.identity.name;
    Role {
        metadata: meta::child_meta(
            &pool.identity,
            meta::node_role_name(name),
            meta::pool_labels(name),
        ),
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec!["coordination.k8s.io".into()]),
                resources: Some(vec!["leases".into()]),
                verbs: LEASE_VERBS.iter().map(|v| (*v).to_owned()).collect(),
                ..PolicyRule::default()
            },
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["configmaps".into()]),
                resource_names: Some(vec![shard::index_name(name)]),
                verbs: vec!["get".into(), "list".into(), "watch".into()],
                ..PolicyRule::default()
            },
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["secrets".into()]),
                resource_names: Some(shard::shard_names(name)),
                verbs: vec!["get".into()],
                ..PolicyRule::default()
            },
        ]),
    }
}

/// `<pool>-node`: the Role, for the pool's ServiceAccount.
pub fn role_binding(pool: &Pool) -> RoleBinding {
    let name = &pool.identity.name;
    RoleBinding {
        metadata: meta::child_meta(
            &pool.identity,
            meta::node_role_name(name),
            meta::pool_labels(name),
        ),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: meta::node_role_name(name),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: meta::service_account_name(name),
            namespace: Some(pool.identity.namespace.clone()),
            ..Subject::default()
        }]),
    }
}
