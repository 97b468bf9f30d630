//! Wiring of the MailDomain reconciler into kube-runtime: what is watched, how errors
//! are retried, and the entry point `main` calls.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt as _;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt as _, watcher};

use super::keys::{COMPONENT_DKIM_KEY, LABEL_COMPONENT};
use super::reconcile::{MailDomainView, reconcile_view};
use super::{Context, Error};
use crate::api::mail_domain::MailDomain;
use crate::api::relay_pool::RelayPool;
use crate::runtime::scope::{self, scoped};

/// MailDomain reconciliations running at once. Without a bound, a thousand domains
/// applied together start a thousand reconciliations, each holding what it read while it
/// waits for a key generation slot, the API server or DNS; bounded, the others wait as a
/// name in the controller's queue. A reconciliation is short (a few API calls, a key,
/// at most [`super::reconcile::MAX_INLINE_WAIT`] for the query-rate limit), but a DNS
/// check holds its slot for its lookups, up to their timeouts when nameservers are
/// silent: at 20 queries/s that is about 40 slots, and the rest keep keys and status
/// flowing for new domains meanwhile.
pub const CONCURRENCY: u16 = 128;

/// The annotation `kubectl apply` (client-side) keeps a copy of the applied object in.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What the controller's store keeps of a MailDomain: all but the managed fields (the
/// server-side apply bookkeeping: parsed, the larger part of a domain in memory, about
/// 14 KiB of the store's share per domain at 1,000 domains) and kubectl's copy of the
/// last applied object. The reconciler reads neither.
pub fn slim(md: &mut MailDomain) {
    md.metadata.managed_fields = None;
    if let Some(annotations) = md.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// Reconciles one MailDomain (the kube-runtime entry point).
pub async fn reconcile(md: Arc<MailDomain>, ctx: Arc<Context>) -> Result<Action, Error> {
    let view = MailDomainView::from_object(&md)?;
    if md.metadata.deletion_timestamp.is_some() {
        // Owner references delete the key Secrets; only local state needs dropping.
        ctx.forget(&view.object);
        return Ok(Action::await_change());
    }
    reconcile_view(&view, &ctx).await
}

/// Failed reconciliations are retried after a short pause (API server hiccups and
/// conflicts clear quickly; the DNS schedule does not depend on this).
pub fn error_policy(md: Arc<MailDomain>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(
        namespace = md.namespace().unwrap_or_default(),
        maildomain = %md.name_any(),
        category = error.category(),
        %error,
        "MailDomain reconciliation failed"
    );
    Action::requeue(Duration::from_secs(15))
}

/// Runs the MailDomain controller until the process is asked to stop: in every namespace
/// of `ctx.namespaces`, or cluster-wide when that list is empty. Watches MailDomains,
/// their key Secrets (owned) and RelayPools (a pool appearing or changing its hostname
/// re-checks the domains bound to it).
pub async fn run(ctx: Arc<Context>) {
    let scopes = scope::scopes(&ctx.namespaces);
    futures::future::join_all(scopes.into_iter().map(|ns| run_scope(ctx.clone(), ns))).await;
}

async fn run_scope(ctx: Arc<Context>, namespace: Option<String>) {
    let ns = namespace.as_deref();
    let domains: Api<MailDomain> = scoped(&ctx.client, ns);
    // Metadata only: the owner reference is all a key Secret event needs to wake its
    // MailDomain, and the key material is read by the reconciliation itself.
    let secrets: Api<PartialObjectMeta<Secret>> = scoped(&ctx.client, ns);
    let pools: Api<RelayPool> = scoped(&ctx.client, ns);
    let (store, writer) = reflector::store();
    let stream = watcher(domains, watcher::Config::default().any_semantic())
        .modify(slim)
        .reflect(writer)
        .applied_objects();
    let controller = Controller::for_stream(stream, store.clone())
        .with_config(controller::Config::default().concurrency(CONCURRENCY));
    controller
        .owns(
            secrets,
            watcher::Config::default().labels(&format!("{LABEL_COMPONENT}={COMPONENT_DKIM_KEY}")),
        )
        .watches(pools, watcher::Config::default(), move |pool: RelayPool| {
            let pool_ns = pool.namespace();
            let pool_name = pool.name_any();
            store
                .state()
                .into_iter()
                .filter(|md| md.namespace() == pool_ns && md.spec.relay_pool_ref.name == pool_name)
                .map(|md| ObjectRef::from_obj(&*md))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(%object, "reconciled"),
                Err(error) => tracing::debug!(%error, "reconcile loop"),
            }
        })
        .await;
    tracing::info!(
        namespace = ns.unwrap_or("*"),
        "MailDomain controller stopped"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_keeps_all_the_reconciler_reads() {
        let mut md: MailDomain = serde_yaml::from_str(
            "apiVersion: smtpfleet.io/v1alpha1\nkind: MailDomain\n\
             metadata:\n  name: shop\n  namespace: mail\n  annotations:\n    \
             smtpfleet.io/reconcile-requested-at: '1'\n    \
             kubectl.kubernetes.io/last-applied-configuration: '{}'\n  managedFields:\n  \
             - {manager: kubectl, operation: Apply, fieldsType: FieldsV1, fieldsV1: {f:spec: {}}}\n\
             spec: {domain: shop.test, relayPoolRef: {name: outbound}}\n\
             status: {dkim: {selector: mail, publicKey: abc}}\n",
        )
        .unwrap();
        let before = md.clone();
        slim(&mut md);
        assert!(md.metadata.managed_fields.is_none());
        let annotations = md.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations.keys().collect::<Vec<_>>(),
            ["smtpfleet.io/reconcile-requested-at"]
        );
        assert_eq!(md.spec, before.spec);
        assert_eq!(md.status, before.status);
        assert_eq!(md.metadata.name, before.metadata.name);
        // A slimmed object slims to itself.
        let again = md.clone();
        slim(&mut md);
        assert_eq!(md.metadata, again.metadata);
    }
}
