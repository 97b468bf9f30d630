//! The RelayPool controller: watches, the reconcile pipeline, the finalizer and the
//! error policy.
//!
//! One reconciliation runs the pipeline
//! dereference → validate → build → apply → status, each stage in its own module:
//! only `apply` writes children and only the final status patch writes the pool.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use thiserror::Error;

use super::apply::{self, FIELD_MANAGER};
use super::autoscale;
use super::build::{self, meta};
use super::changes::{self, Change};
use super::cleanup::{self, Verdict};
use super::context::Context;
use super::dereference;
use super::error::{Error, Result};
use super::model::Pool;
use super::rollout;
use super::scaledown;
use super::status;
use super::validate;
use crate::api::conditions;
use crate::api::relay_pool::{condition_types, reasons};
use crate::api::{MailDomain, RelayPool};
use crate::events::{normal, publish_all, warning};
use crate::runtime::scope::{self, scoped};

/// How often a pool whose deletion waits for its queue is looked at again.
const DELETION_RECHECK: Duration = Duration::from_secs(30);

/// Finalizer that holds a pool's deletion until its clean-up has run.
pub const FINALIZER: &str = "smtpfleet.io/cleanup";

/// Why the controller could not start.
#[derive(Debug, Error)]
pub enum RunError {
    /// Listing RelayPools failed: typically the CRD is not installed or RBAC is missing.
    #[error(
        "cannot list RelayPools{scope} (is the CRD installed and the operator allowed to list them?): {source}"
    )]
    CannotList {
        /// ` in namespace "x"`, or empty for all namespaces.
        scope: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// Runs the controller until `ctx.shutdown` is cancelled: one kube-runtime
/// `Controller` per watched namespace (or one for all namespaces when
/// `ctx.settings.namespaces` is empty), all sharing `ctx`.
pub async fn run(ctx: Arc<Context>) -> Result<(), RunError> {
    let scopes = scope::scopes(&ctx.settings.namespaces);
    for scope in &scopes {
        let api: Api<RelayPool> = scoped(&ctx.client, scope.as_deref());
        api.list(&ListParams::default().limit(1))
            .await
            .map_err(|source| RunError::CannotList {
                scope: scope
                    .as_deref()
                    .map(|ns| format!(" in namespace {ns:?}"))
                    .unwrap_or_default(),
                source,
            })?;
    }
    let mut stores = Vec::new();
    let controllers: Vec<_> = scopes
        .iter()
        .map(|scope| {
            let (controller, store) = controller(&ctx, scope.as_deref());
            stores.push(store);
            controller
        })
        .collect();
    if let Some(on_synced) = ctx.on_synced.clone() {
        let shutdown = ctx.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = all_ready(&stores) => {
                    tracing::info!("RelayPool caches synced");
                    on_synced();
                }
            }
        });
    }
    futures::future::join_all(controllers).await;
    // Stopped (shutdown or leadership lost): the next leader reports the pools.
    ctx.pool_metrics.clear();
    Ok(())
}

type PoolStore = kube::runtime::reflector::Store<RelayPool>;

/// How often readiness of the caches is looked at again.
const READY_POLL: Duration = Duration::from_millis(250);

/// Waits until every store has completed its initial list.
///
/// `Store::wait_until_ready` keeps a single waker: the controller's own applier waits
/// on the same store, and whichever task polled last is the only one woken. Polling
/// again at an interval re-registers this task and sees the state once the applier's
/// wake-up has recorded it.
async fn all_ready(stores: &[PoolStore]) {
    for store in stores {
        while tokio::time::timeout(READY_POLL, store.wait_until_ready())
            .await
            .is_err()
        {}
    }
}

fn controller(
    ctx: &Arc<Context>,
    namespace: Option<&str>,
) -> (impl std::future::Future<Output = ()> + use<>, PoolStore) {
    let client = &ctx.client;
    let children = watcher::Config::default().labels(&format!(
        "app.kubernetes.io/managed-by={}",
        meta::MANAGED_BY
    ));
    // No debounce: MailDomain and key Secret events keep coming while a thousand
    // domains are added, and a debounce would postpone the pool for as long as they do.
    // Triggers that arrive while a pool is being reconciled coalesce into one run.
    let controller = Controller::new(
        scoped::<RelayPool>(client, namespace),
        watcher::Config::default(),
    );
    let relevant = DomainFingerprints::default();
    let store = controller.store();
    let pools = store.clone();
    // Children and Secrets are watched metadata-only (an `Api` of `PartialObjectMeta`
    // asks the API server for metadata alone): the controller needs their owner
    // references, names and labels to know which pool to reconcile, never their content
    // (shards and key Secrets hold every domain's key; watching their data would grow
    // the operator with every domain).
    let future = controller
        .owns(
            scoped::<PartialObjectMeta<StatefulSet>>(client, namespace),
            children.clone(),
        )
        .owns(
            scoped::<PartialObjectMeta<Service>>(client, namespace),
            children.clone(),
        )
        .owns(
            scoped::<PartialObjectMeta<ConfigMap>>(client, namespace),
            children.clone(),
        )
        .owns(
            scoped::<PartialObjectMeta<PodDisruptionBudget>>(client, namespace),
            children.clone(),
        )
        .owns(
            scoped::<PartialObjectMeta<ServiceAccount>>(client, namespace),
            children.clone(),
        )
        .owns(
            scoped::<PartialObjectMeta<Secret>>(client, namespace),
            children,
        )
        .watches(
            scoped::<PartialObjectMeta<Secret>>(client, namespace),
            watcher::Config::default(),
            move |secret| pools_referencing_secret(&pools.state(), &secret),
        )
        .watches(
            scoped::<MailDomain>(client, namespace),
            watcher::Config::default(),
            move |domain| {
                relevant
                    .changed(&domain)
                    .then(|| pool_of_domain(&domain))
                    .flatten()
            },
        )
        .graceful_shutdown_on(ctx.shutdown.clone().cancelled_owned())
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            match result {
                Ok((pool, _)) => tracing::debug!(pool = %pool, "reconciled"),
                Err(err) => tracing::debug!(error = %err, "reconciliation did not complete"),
            }
        });
    (future, store)
}

/// The pools a Secret matters to: those whose spec names it (TLS or auth Secret), so
/// that a Secret created after its pool clears the pool's `Degraded` condition without
/// waiting for a resync; and the pool a DKIM key Secret is labelled with, so that a
/// replaced key reaches the pool's domain set at once.
pub fn pools_referencing_secret<S: Resource>(
    pools: &[Arc<RelayPool>],
    secret: &S,
) -> Vec<ObjectRef<RelayPool>> {
    let name = secret.name_any();
    let namespace = secret.namespace();
    let key_of = secret.labels().get(dereference::RELAY_POOL_LABEL).cloned();
    pools
        .iter()
        .filter(|pool| pool.namespace() == namespace)
        .filter(|pool| {
            key_of.as_deref() == Some(pool.name_any().as_str())
                || dereference::secret_refs(&pool.spec)
                    .iter()
                    .any(|(_, referenced)| *referenced == name)
        })
        .map(|pool| ObjectRef::from_obj(pool.as_ref()))
        .collect()
}

/// What of each MailDomain its pool's domain set depends on, as last seen, so that only
/// a change of it triggers the pool. A MailDomain's status changes with every DNS check
/// (`status.dns.checkedAt`); reconciling the pool for each would keep it busy for
/// nothing while a thousand domains are checked. A deleted domain's key Secrets are
/// deleted with it, and their events (labelled with the pool) trigger the pool.
#[derive(Default)]
pub struct DomainFingerprints(std::sync::Mutex<std::collections::HashMap<String, u64>>);

impl DomainFingerprints {
    /// Records `domain`'s fingerprint; whether it differs from the last one seen.
    pub fn changed(&self, domain: &MailDomain) -> bool {
        use std::hash::{Hash, Hasher};
        let bound = domain.status.as_ref().map(|s| {
            (
                crate::api::conditions::is_true(
                    &s.conditions,
                    crate::api::mail_domain::condition_types::POOL_BOUND,
                ),
                s.dkim.as_ref().map(|d| (&d.selector, &d.public_key)),
            )
        });
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (
            &domain.spec.domain,
            &domain.spec.relay_pool_ref.name,
            domain.metadata.deletion_timestamp.is_some(),
            bound,
        )
            .hash(&mut hasher);
        let fingerprint = hasher.finish();
        let key = format!(
            "{}/{}",
            domain.namespace().unwrap_or_default(),
            domain.name_any()
        );
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        seen.insert(key, fingerprint) != Some(fingerprint)
    }
}

/// The pool a MailDomain binds to. A domain moved to another pool triggers the new
/// one at once; the old one drops it at its next periodic reconciliation.
pub fn pool_of_domain(domain: &MailDomain) -> Option<ObjectRef<RelayPool>> {
    let namespace = domain.namespace()?;
    Some(ObjectRef::new(&domain.spec.relay_pool_ref.name).within(&namespace))
}

fn key(pool: &RelayPool) -> String {
    format!(
        "{}/{}",
        pool.namespace().unwrap_or_default(),
        pool.name_any()
    )
}

/// Reconciles one pool: the finalizer first, then the pipeline (or the clean-up when
/// the pool is being deleted).
pub async fn reconcile(pool: Arc<RelayPool>, ctx: Arc<Context>) -> Result<Action> {
    let span = ctx.observer.start();
    let key = key(&pool);
    let result = reconcile_inner(pool, &ctx).await;
    span.finish(result.is_ok());
    if result.is_ok() {
        ctx.failures.succeeded(&key);
    }
    result
}

async fn reconcile_inner(pool: Arc<RelayPool>, ctx: &Context) -> Result<Action> {
    let namespace = pool
        .namespace()
        .ok_or(Error::MissingObjectKey("namespace"))?;
    let api: Api<RelayPool> = Api::namespaced(ctx.client.clone(), &namespace);
    // kube-runtime's finalizer helper removes the finalizer whenever the clean-up
    // succeeds, whatever it asks for next: a pool that must wait is held here, before it.
    let deleting = pool.meta().deletion_timestamp.is_some()
        && pool.finalizers().iter().any(|f| f == FINALIZER);
    if deleting && let Verdict::Hold(reason) = cleanup::verdict(&pool, ctx).await? {
        return hold_deletion(&pool, ctx, reason).await;
    }
    finalizer(&api, FINALIZER, pool, |event| async {
        match event {
            FinalizerEvent::Apply(pool) => apply_pool(&pool, ctx).await,
            FinalizerEvent::Cleanup(pool) => release_pool(&pool, ctx).await,
        }
    })
    .await
    .map_err(Error::from_finalizer)
}

/// Delay before retrying after the cache was found stale.
const STALE_RETRY: Duration = Duration::from_secs(1);

/// Retries a failed reconciliation with per-pool exponential backoff, and counts the
/// error by category. A finalizer patch refused because the cached pool was stale is
/// retried at once and not counted: it says nothing about the pool's health.
pub fn error_policy(pool: Arc<RelayPool>, error: &Error, ctx: Arc<Context>) -> Action {
    if error.is_stale_write() {
        tracing::debug!(pool = %key(&pool), error = %error, "write based on a stale object; retrying");
        return Action::requeue(STALE_RETRY);
    }
    ctx.observer.error(error.category());
    let delay = ctx.failures.failed(&key(&pool));
    tracing::warn!(
        pool = %key(&pool),
        category = error.category(),
        retry_in_seconds = delay.as_secs(),
        error = %error,
        "reconciliation failed"
    );
    Action::requeue(delay)
}

/// The pipeline for a live pool.
async fn apply_pool(pool: &RelayPool, ctx: &Context) -> Result<Action> {
    match pipeline(pool, ctx).await {
        Err(err) if err.is_namespace_terminating() => {
            tracing::debug!(pool = %key(pool), "namespace is being deleted; nothing to do");
            Ok(Action::await_change())
        }
        result => result,
    }
}

async fn pipeline(pool: &RelayPool, ctx: &Context) -> Result<Action> {
    let refs = dereference::dereference(&ctx.client, pool).await?;
    let validated = validate::validate(pool, &refs, &ctx.settings.default_image)?;
    for problem in &validated.problems {
        tracing::info!(pool = %key(pool), reason = problem.reason, "{}", problem.message);
    }
    let mut autoscaled = validated.pool.clone();
    let recommendations = autoscale_pool(pool, &mut autoscaled);
    let model = &autoscaled;
    let children = build::build(model)?;
    let keys = dereference::domain_keys(
        &ctx.client,
        &model.identity.namespace,
        &model.identity.name,
        &model.domains,
    )
    .await?;
    let domain_objects = build::domains::build(model, &keys);
    // Before the StatefulSets: a new pool's nodes find their domains at start.
    let shards_written =
        apply::apply_domains(&ctx.client, &model.identity, &domain_objects).await?;
    if shards_written > 0 {
        tracing::info!(pool = %key(pool), shards = shards_written, domains = model.domains.len(), "domain set updated");
    }
    let before = apply::list_statefulsets(&ctx.client, &model.identity).await?;
    let mut children = children;
    let scale = scaledown::reconcile(
        &ctx.client,
        pool,
        model,
        &children.statefulsets,
        &before,
        rollout::gate::in_progress(&before, &children.statefulsets),
    )
    .await?;
    for sts in &mut children.statefulsets {
        let replicas = scale.replicas.get(&sts.name_any()).copied();
        if let (Some(spec), Some(replicas)) = (sts.spec.as_mut(), replicas) {
            spec.replicas = Some(replicas);
        }
    }
    // After the replicas are final: the partitions follow from what this pass applies.
    let roll = rollout::gate::round(
        &ctx.client,
        model,
        &mut children.statefulsets,
        &before,
        scale.status.is_some(),
        pool.annotations()
            .contains_key(rollout::gate::FORCE_ROLLOUT_ANNOTATION),
        pool.status.as_ref().is_some_and(|s| {
            crate::api::conditions::is_true(&s.conditions, condition_types::ROLLING_UPDATE)
        }),
    )
    .await?;
    let outcome = apply::apply_children(
        &ctx.client,
        &model.identity,
        &children,
        &before,
        &scale.replicas,
    )
    .await?;

    let observed = status::observe_all(model, &outcome.statefulsets);
    let previous = pool.status.clone().unwrap_or_default();
    let now = Time(Timestamp::now());
    let not_ready_for = status::not_ready_for(&previous.conditions, &now);
    let computed = status::compute(model, observed, &validated.problems, not_ready_for);
    let autoscale_recheck = pool.spec.autoscaling.as_ref().and_then(|spec| {
        let bounds = autoscale::Bounds::of(spec);
        let now = Timestamp::now();
        recommendations
            .iter()
            .filter_map(|r| autoscale::recheck_in(&r.status, bounds, now))
            .min()
    });
    let requeue = computed
        .recheck_in
        .into_iter()
        .chain(scale.requeue)
        .chain(autoscale_recheck)
        .chain(roll.requeue)
        .fold(ctx.settings.requeue_after, Duration::min);
    let mut next = status::to_status(&previous, computed, model.identity.generation, &now);
    next.scale_down = scale.status;
    next.autoscaling = recommendations.iter().map(|r| r.status.clone()).collect();
    for (type_, status, reason, message) in scale.conditions.iter().chain(&roll.conditions) {
        conditions::upsert(
            &mut next.conditions,
            conditions::new(
                type_,
                status,
                reason,
                message.as_str(),
                model.identity.generation,
                now.clone(),
            ),
        );
    }
    let mut events: Vec<_> = recommendations
        .iter()
        .filter_map(|r| r.changed.clone())
        .map(|message| normal("Autoscaled", "Scale", message))
        .collect();
    events.extend(scale.events);
    events.extend(roll.events);
    if next != previous {
        let api: Api<RelayPool> = Api::namespaced(ctx.client.clone(), &model.identity.namespace);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let written = api
            .patch_status(
                &model.identity.name,
                &params,
                &Patch::Merge(status::patch_body(&next, pool.resource_version())),
            )
            .await;
        if let Err(error) = written {
            // The children are changed already: what this pass did is told even when
            // its status is refused (a stale resourceVersion). The next pass writes the
            // status and the condition changes it derives.
            publish(ctx, pool, &outcome.changes).await;
            publish_all(&ctx.events, &pool.object_ref(&()), &events).await;
            return Err(Error::Status(error));
        }
    }
    ctx.pool_metrics
        .record(&model.identity.namespace, &model.identity.name, &next);

    let mut all_changes = outcome.changes;
    all_changes.extend(changes::condition_changes(
        &previous.conditions,
        &next.conditions,
    ));
    publish(ctx, pool, &all_changes).await;
    publish_all(&ctx.events, &pool.object_ref(&()), &events).await;
    Ok(Action::requeue(requeue))
}

/// With `spec.autoscaling`, each data centre's recommendation from its queue depth,
/// written into `model` as the data centre's replicas; none otherwise.
fn autoscale_pool(pool: &RelayPool, model: &mut Pool) -> Vec<autoscale::Recommendation> {
    let Some(spec) = pool.spec.autoscaling.as_ref() else {
        return Vec::new();
    };
    let bounds = autoscale::Bounds::of(spec);
    let status = pool.status.as_ref();
    let queue = status.and_then(|s| s.queue.as_ref());
    let now = Timestamp::now();
    model
        .data_centres
        .iter_mut()
        .map(|dc| {
            let previous =
                status.and_then(|s| s.autoscaling.iter().find(|a| a.data_centre == dc.name));
            let depth = autoscale::depth_of(queue, &dc.name);
            let recommendation =
                autoscale::recommend(&dc.name, bounds, dc.replicas, previous, depth, now);
            dc.replicas = recommendation.status.replicas;
            recommendation
        })
        .collect()
}

/// Keeps a deleted pool while its nodes hold mail: says why (a Warning Event and the
/// `DeletionBlocked` condition) and looks again.
async fn hold_deletion(pool: &RelayPool, ctx: &Context, reason: String) -> Result<Action> {
    let event = warning("DeletionBlocked", "Delete", reason.clone());
    publish_all(&ctx.events, &pool.object_ref(&()), &[event]).await;
    let mut conditions = pool
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    conditions::upsert(
        &mut conditions,
        conditions::new(
            condition_types::DELETION_BLOCKED,
            conditions::TRUE,
            reasons::MAIL_QUEUED,
            reason.as_str(),
            pool.meta().generation,
            Time(Timestamp::now()),
        ),
    );
    let api: Api<RelayPool> =
        Api::namespaced(ctx.client.clone(), &pool.namespace().unwrap_or_default());
    // Guarded by the resourceVersion: the queue controller writes the same
    // conditions list, and a merge patch replaces it whole.
    let body = serde_json::json!({
        "metadata": { "resourceVersion": pool.resource_version() },
        "status": { "conditions": conditions },
    });
    match api
        .patch_status(
            &pool.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&body),
        )
        .await
    {
        Ok(_) => {
            let status = crate::api::relay_pool::RelayPoolStatus {
                conditions,
                ..pool.status.clone().unwrap_or_default()
            };
            ctx.pool_metrics.record(
                &pool.namespace().unwrap_or_default(),
                &pool.name_any(),
                &status,
            );
            Ok(Action::requeue(DELETION_RECHECK))
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Action::requeue(Duration::from_secs(1))),
        Err(e) => Err(Error::Status(e)),
    }
}

/// The clean-up once nothing holds the pool: the finalizer goes after it.
async fn release_pool(pool: &RelayPool, ctx: &Context) -> Result<Action> {
    ctx.pool_metrics
        .forget(&pool.namespace().unwrap_or_default(), &pool.name_any());
    let event = normal(
        "Deleting",
        "Delete",
        "Releasing the RelayPool; its StatefulSets, Services, ConfigMap, PodDisruptionBudget and \
         ServiceAccount are garbage-collected, spool volumes are kept.",
    );
    publish_all(&ctx.events, &pool.object_ref(&()), &[event]).await;
    Ok(Action::await_change())
}

async fn publish(ctx: &Context, pool: &RelayPool, changes: &[Change]) {
    if changes.is_empty() {
        return;
    }
    let namespace = pool.namespace().unwrap_or_default();
    let events: Vec<_> = changes.iter().map(|c| c.event(&namespace)).collect();
    publish_all(&ctx.events, &pool.object_ref(&()), &events).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RelayPoolSpec;

    fn pool(name: &str, namespace: &str, spec: &str) -> Arc<RelayPool> {
        let spec: RelayPoolSpec = serde_yaml::from_str(spec).unwrap();
        let mut pool = RelayPool::new(name, spec);
        pool.metadata.namespace = Some(namespace.into());
        Arc::new(pool)
    }

    fn secret(name: &str, namespace: &str) -> Secret {
        let mut secret = Secret::default();
        secret.metadata.name = Some(name.into());
        secret.metadata.namespace = Some(namespace.into());
        secret
    }

    #[test]
    fn secrets_map_to_the_pools_that_name_them_in_their_namespace() {
        let pools = [
            pool(
                "tls",
                "mail",
                "hostname: a.example.com\ntls: {secretName: smtp-tls}\n",
            ),
            pool(
                "auth",
                "mail",
                "hostname: b.example.com\nrelay: {authSecretRef: {name: users}}\n",
            ),
            pool(
                "elsewhere",
                "other",
                "hostname: c.example.com\ntls: {secretName: smtp-tls}\n",
            ),
            pool("managed", "mail", "hostname: d.example.com\n"),
        ];
        let names = |secret: &Secret| -> Vec<String> {
            pools_referencing_secret(&pools, secret)
                .into_iter()
                .map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
                .collect()
        };
        assert_eq!(names(&secret("smtp-tls", "mail")), ["mail/tls"]);
        assert_eq!(names(&secret("users", "mail")), ["mail/auth"]);
        assert_eq!(names(&secret("smtp-tls", "other")), ["other/elsewhere"]);
        assert!(names(&secret("unrelated", "mail")).is_empty());
    }

    #[test]
    fn only_changes_the_domain_set_depends_on_trigger_the_pool() {
        let domain = |selector: &str, checked_at: &str| -> MailDomain {
            serde_yaml::from_str(&format!(
                "apiVersion: smtpfleet.io/v1alpha1\nkind: MailDomain\n\
                 metadata: {{name: example, namespace: mail}}\n\
                 spec: {{domain: example.com, relayPoolRef: {{name: outbound}}}}\n\
                 status: {{dkim: {{selector: {selector}, publicKey: abc}}, \
                 dns: {{checkedAt: '{checked_at}'}}}}\n"
            ))
            .unwrap()
        };
        let seen = DomainFingerprints::default();
        assert!(
            seen.changed(&domain("s1", "2026-01-01T00:00:00Z")),
            "first sight"
        );
        assert!(
            !seen.changed(&domain("s1", "2026-01-01T00:10:00Z")),
            "a DNS check alone"
        );
        assert!(
            seen.changed(&domain("s2", "2026-01-01T00:10:00Z")),
            "a rotation"
        );
    }

    #[test]
    fn mail_domains_map_to_their_pool() {
        let domain: MailDomain = serde_yaml::from_str(
            "apiVersion: smtpfleet.io/v1alpha1\nkind: MailDomain\n\
             metadata: {name: example, namespace: mail}\n\
             spec: {domain: example.com, relayPoolRef: {name: outbound}}\n",
        )
        .unwrap();
        let target = pool_of_domain(&domain).unwrap();
        assert_eq!(
            (target.name.as_str(), target.namespace.as_deref()),
            ("outbound", Some("mail"))
        );
    }
}
