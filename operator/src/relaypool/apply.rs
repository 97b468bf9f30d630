//! The only stage that writes children: server-side apply of every desired object
//! under one field manager, then deletion of the children that are no longer desired.
//!
//! Server-side apply with a single field manager (`smtpfleet-operator`, forced) makes
//! each reconciliation declare the full desired content of every child. Fields the
//! operator stops setting are removed by the API server, fields other actors own
//! (the StatefulSet controller's status, a HorizontalPodAutoscaler, `kubectl` edits of
//! fields we do not set) are left alone, and drift in fields we do set is overwritten.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions, PropagationPolicy};
use kube::client::Body;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::build::domains::{self, DIGEST_ANNOTATION, DomainObjects, SHARD_WARN_BYTES};
use super::build::{Children, meta};
use super::changes::{self, Change};
use super::error::{Error, Result};
use super::model::PoolIdentity;

/// The field manager of every write the operator makes to children and status.
pub const FIELD_MANAGER: &str = "smtpfleet-operator";

/// A child after server-side apply.
#[derive(Debug, Clone)]
pub struct Applied<K> {
    /// The object as the API server stored it (including its current status).
    pub object: K,
    /// Whether this apply created it (HTTP 201) rather than updated it (HTTP 200).
    pub created: bool,
}

/// Server-side applies `child` in `namespace`, forcing ownership of the fields it sets.
///
/// This goes through [`Client::send`] rather than [`Api::patch`] only to see the HTTP
/// status: the API server answers 201 when the apply created the object, which is how
/// "created" events are emitted without reading every child first.
pub async fn server_side_apply<K>(
    client: &Client,
    namespace: &str,
    child: &K,
) -> Result<Applied<K>, kube::Error>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Debug,
{
    let name = child.meta().name.as_deref().unwrap_or_default();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut request = kube::core::Request::new(K::url_path(&(), Some(namespace)))
        .patch(name, &params, &Patch::Apply(child))
        .map_err(kube::Error::BuildRequest)?;
    request.extensions_mut().insert("patch");
    let response = client.send(request.map(Body::from)).await?;
    let status = response.status();
    let bytes = response.into_body().collect_bytes().await?;
    if status.is_client_error() || status.is_server_error() {
        return Err(api_error(status.as_u16(), &bytes));
    }
    let object = serde_json::from_slice(&bytes).map_err(kube::Error::SerdeError)?;
    Ok(Applied {
        object,
        created: status.as_u16() == 201,
    })
}

/// Turns an error response into the same error [`Api`] methods return, so that callers
/// can match on `kube::Error::Api` with its code whichever path produced it.
fn api_error(code: u16, body: &[u8]) -> kube::Error {
    let status = serde_json::from_slice::<kube::core::Status>(body).unwrap_or_else(|_| {
        kube::core::Status::failure(
            String::from_utf8_lossy(body).trim(),
            "Failed to parse error data",
        )
        .with_code(code)
    });
    kube::Error::Api(status.boxed())
}

/// Names of observed children that the pool controls (controller owner reference
/// with the pool's uid) and that are not desired any more.
///
/// Only controlled children are candidates: an object that merely carries the pool's
/// labels (copied by hand, or adopted by something else) is never deleted.
pub fn orphans<K: Resource>(
    desired: &BTreeSet<String>,
    observed: &[K],
    owner_uid: &str,
) -> Vec<String> {
    observed
        .iter()
        .filter(|child| is_controlled_by(*child, owner_uid))
        .map(ResourceExt::name_any)
        .filter(|name| !desired.contains(name))
        .collect()
}

/// Whether `child` has a controller owner reference to the object with `owner_uid`.
pub fn is_controlled_by<K: Resource>(child: &K, owner_uid: &str) -> bool {
    child
        .owner_references()
        .iter()
        .any(|r| r.controller == Some(true) && r.uid == owner_uid)
}

/// Deletes a child by name, only if it still has `uid` (so a child recreated under
/// the same name in the meantime is left alone). Returns whether anything was deleted;
/// an already missing child is not an error.
pub async fn delete_child<K>(
    api: &Api<K>,
    name: &str,
    uid: Option<String>,
) -> Result<bool, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        preconditions: uid.map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn sts(name: &str, owner_uid: Option<&str>, controller: bool) -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta {
                name: Some(name.into()),
                owner_references: owner_uid.map(|uid| {
                    vec![OwnerReference {
                        api_version: "smtpfleet.io/v1alpha1".into(),
                        kind: "RelayPool".into(),
                        name: "pool".into(),
                        uid: uid.into(),
                        controller: Some(controller),
                        block_owner_deletion: Some(true),
                    }]
                }),
                ..ObjectMeta::default()
            },
            ..StatefulSet::default()
        }
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn removed_data_centre_statefulset_is_an_orphan() {
        let observed = [
            sts("pool-a", Some("u1"), true),
            sts("pool-b", Some("u1"), true),
        ];
        assert_eq!(orphans(&names(&["pool-a"]), &observed, "u1"), ["pool-b"]);
    }

    #[test]
    fn nothing_to_delete_when_all_observed_are_desired() {
        let observed = [sts("pool-a", Some("u1"), true)];
        assert!(orphans(&names(&["pool-a", "pool-b"]), &observed, "u1").is_empty());
    }

    #[test]
    fn objects_not_controlled_by_this_pool_are_never_orphans() {
        let observed = [
            sts("pool-x", None, true),
            sts("pool-y", Some("other-uid"), true),
            sts("pool-z", Some("u1"), false),
        ];
        assert!(orphans(&names(&[]), &observed, "u1").is_empty());
    }

    #[test]
    fn error_bodies_become_api_errors_with_their_code() {
        let body = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"nope","reason":"Conflict","code":409}"#;
        match api_error(409, body) {
            kube::Error::Api(status) => {
                assert_eq!(status.code, 409);
                assert_eq!(status.message, "nope");
            }
            other => panic!("unexpected {other:?}"),
        }
        match api_error(502, b"bad gateway") {
            kube::Error::Api(status) => {
                assert_eq!(status.code, 502);
                assert_eq!(status.message, "bad gateway");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// What applying a pool's children did.
#[derive(Debug, Clone, Default)]
pub struct ApplyOutcome {
    /// The pool's StatefulSets as the API server returned them after the apply, with
    /// their current status: the status stage reads these, no second read needed.
    pub statefulsets: Vec<StatefulSet>,
    /// Changes worth an Event.
    pub changes: Vec<Change>,
}

/// The pool's StatefulSets as they are now.
pub async fn list_statefulsets(client: &Client, pool: &PoolIdentity) -> Result<Vec<StatefulSet>> {
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &pool.namespace);
    let selector = meta::children_selector(&pool.name);
    Ok(statefulsets
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::ListChildren {
            kind: "StatefulSet",
            source,
        })?
        .items)
}

/// Applies every child of the pool, scales the StatefulSets of removed data centres that
/// are still `draining` (name → replicas), then deletes the StatefulSets of data centres
/// no longer in the spec that have nothing left to drain. `before` is the pool's
/// StatefulSets as they were read before this round.
///
/// Order matters only for the first rollout: the ServiceAccount and the ConfigMap
/// exist before the StatefulSets whose pods use them, so no pod starts and fails on a
/// missing volume. Only StatefulSets can become orphans: every other child has one
/// fixed name per pool and is always desired.
pub async fn apply_children(
    client: &Client,
    pool: &PoolIdentity,
    children: &Children,
    before: &[StatefulSet],
    draining: &BTreeMap<String, i32>,
) -> Result<ApplyOutcome> {
    let namespace = pool.namespace.as_str();
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);

    let mut outcome = ApplyOutcome {
        statefulsets: Vec::with_capacity(children.statefulsets.len()),
        changes: changes::scaled(before, &children.statefulsets),
    };
    apply_reporting(
        client,
        namespace,
        &children.service_account,
        &mut outcome.changes,
    )
    .await?;
    apply_reporting(client, namespace, &children.role, &mut outcome.changes).await?;
    apply_reporting(
        client,
        namespace,
        &children.role_binding,
        &mut outcome.changes,
    )
    .await?;
    apply_reporting(
        client,
        namespace,
        &children.config_map,
        &mut outcome.changes,
    )
    .await?;
    apply_reporting(
        client,
        namespace,
        &children.peer_service,
        &mut outcome.changes,
    )
    .await?;
    apply_reporting(
        client,
        namespace,
        &children.client_service,
        &mut outcome.changes,
    )
    .await?;
    for sts in &children.statefulsets {
        let applied = apply_one(client, namespace, sts).await?;
        if applied.created {
            outcome.changes.push(Change::DataCentreAdded {
                data_centre: changes::data_centre_of(sts),
                statefulset: sts.name_any(),
                replicas: sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            });
        }
        outcome.statefulsets.push(applied.object);
    }
    apply_reporting(
        client,
        namespace,
        &children.pod_disruption_budget,
        &mut outcome.changes,
    )
    .await?;

    let desired: BTreeSet<String> = children
        .statefulsets
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    for (name, replicas) in draining {
        if desired.contains(name) {
            continue;
        }
        let body = serde_json::json!({ "spec": { "replicas": replicas } });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let scaled = statefulsets
            .patch(name, &params, &Patch::Merge(&body))
            .await
            .map_err(|source| Error::Apply {
                kind: "StatefulSet",
                name: name.clone(),
                source,
            })?;
        outcome.statefulsets.push(scaled);
    }
    let keep: BTreeSet<String> = desired.iter().chain(draining.keys()).cloned().collect();
    for name in orphans(&keep, before, &pool.uid) {
        let uid = before
            .iter()
            .find(|s| s.name_any() == name)
            .and_then(|s| s.metadata.uid.clone());
        let deleted = delete_child(&statefulsets, &name, uid)
            .await
            .map_err(|source| Error::DeleteOrphan {
                kind: "StatefulSet",
                name: name.clone(),
                source,
            })?;
        if deleted {
            tracing::info!(statefulset = %name, "deleted the StatefulSet of a removed data centre");
            outcome
                .changes
                .push(Change::DataCentreRemoved { statefulset: name });
        }
    }
    Ok(outcome)
}

async fn apply_one<K>(client: &Client, namespace: &str, child: &K) -> Result<Applied<K>>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Debug,
{
    server_side_apply(client, namespace, child)
        .await
        .map_err(|source| Error::Apply {
            kind: kind_of::<K>(),
            name: child.meta().name.clone().unwrap_or_default(),
            source,
        })
}

async fn apply_reporting<K>(
    client: &Client,
    namespace: &str,
    child: &K,
    changes: &mut Vec<Change>,
) -> Result<()>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Debug,
{
    let applied = apply_one(client, namespace, child).await?;
    if applied.created {
        changes.push(Change::Created {
            kind: kind_of::<K>(),
            api_version: api_version_of::<K>(),
            name: applied.object.name_any(),
        });
    }
    Ok(())
}

/// The `apiVersion` of `K`, as a `'static` string for event references.
fn api_version_of<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::api_version(&()).as_ref() {
        "apps/v1" => "apps/v1",
        "policy/v1" => "policy/v1",
        "rbac.authorization.k8s.io/v1" => "rbac.authorization.k8s.io/v1",
        _ => "v1",
    }
}

/// The kind name of `K`, as a `'static` string for errors and events.
fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "StatefulSet" => "StatefulSet",
        "Service" => "Service",
        "ConfigMap" => "ConfigMap",
        "ServiceAccount" => "ServiceAccount",
        "PodDisruptionBudget" => "PodDisruptionBudget",
        "Role" => "Role",
        "RoleBinding" => "RoleBinding",
        "Secret" => "Secret",
        _ => "object",
    }
}

/// Writes the pool's domain set: the shards whose digest changed, then the index (the
/// point at which nodes fetch them), then deletes shards that no longer hold a domain.
///
/// Which shards exist and what they hold is read with a metadata-only list (their digest
/// is an annotation), so an unchanged domain set costs one small request and no shard
/// data moves; a change to one domain rewrites one shard.
pub async fn apply_domains(
    client: &Client,
    pool: &PoolIdentity,
    objects: &DomainObjects,
) -> Result<usize> {
    let namespace = pool.namespace.as_str();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let existing = secrets
        .list_metadata(&ListParams::default().labels(&domains::shard_selector(&pool.name)))
        .await
        .map_err(|source| Error::ListChildren {
            kind: "Secret",
            source,
        })?
        .items;
    let digest_of = |name: &str| {
        existing
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .and_then(|s| s.metadata.annotations.as_ref())
            .and_then(|a| a.get(DIGEST_ANNOTATION))
            .cloned()
    };
    let mut written = 0;
    for (shard, digest) in &objects.shards {
        let name = shard.metadata.name.as_deref().unwrap_or_default();
        if digest_of(name).as_deref() == Some(digest.as_str()) {
            continue;
        }
        let size = domains::stored_size(shard);
        if size > SHARD_WARN_BYTES {
            tracing::warn!(secret = %name, bytes = size, "a domain shard is close to the API server's 1 MiB object limit");
        }
        apply_one(client, namespace, shard).await?;
        written += 1;
    }
    apply_one(client, namespace, &objects.index).await?;
    let desired: BTreeSet<String> = objects.shard_names().into_iter().collect();
    for name in orphans(&desired, &existing, &pool.uid) {
        delete_child(&secrets, &name, None)
            .await
            .map_err(|source| Error::DeleteOrphan {
                kind: "Secret",
                name: name.clone(),
                source,
            })?;
    }
    Ok(written)
}
