//! Wiring of the MailDomain reconciler into kube-runtime: what is watched, how errors
//! are retried, and the entry point `main` calls.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt as _;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use super::keys::{COMPONENT_DKIM_KEY, LABEL_COMPONENT};
use super::reconcile::{MailDomainView, reconcile_view};
use super::{Context, Error};
use crate::api::mail_domain::MailDomain;
use crate::api::relay_pool::RelayPool;
use crate::runtime::scope::{self, scoped};

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
    let controller = Controller::new(domains, watcher::Config::default().any_semantic());
    let store = controller.store();
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
