//! Deliverability per MailDomain: `status.delivery` and the `DeliveryHealthy`
//! condition, from the counters the pool's nodes report on `GET /admin/delivery`.
//!
//! The queue controller samples every pool's nodes on its round (every 30 seconds) and
//! hands the answers here: [`window`] turns the nodes' cumulative counters into
//! per-minute increments (surviving node restarts) and rolling windows; [`health`]
//! computes each bound MailDomain's status and condition; this module writes them and
//! publishes a Warning Event when a domain's bounce rate passes its threshold.
//!
//! The history lives in the operator's memory: after an operator restart the windows
//! start again from the next sampling (`status.delivery.samplingSince` says when), which
//! costs an hour of judgement but no API objects to keep counters in.
//!
//! Writes use their own field manager ([`FIELD_MANAGER`]) and name only
//! `status.delivery` and the `DeliveryHealthy` condition, so that they and the domain
//! reconciler's status applies never remove each other's fields.

pub mod health;
pub mod window;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use smtp_node::outbound::DeliveryReport;

use crate::api::conditions::find;
use crate::api::mail_domain::{MailDomain, condition_types};
use crate::queue::{PoolNode, admin_call};
use health::{condition, delivery_status, top_refusals, transition_event, verdict};
use window::PoolHistory;

/// Field manager of `status.delivery` and the `DeliveryHealthy` condition.
pub const FIELD_MANAGER: &str = "smtpfleet-operator-delivery";
/// Nodes asked at the same time, per pool.
const AT_ONCE: usize = 8;

/// The pools' histories, by (namespace, pool).
#[derive(Default)]
pub struct Sampler {
    histories: Mutex<HashMap<(String, String), PoolHistory>>,
}

impl Sampler {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), PoolHistory>> {
        // Only counters: a history left by a panic is still usable.
        self.histories.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Samples `nodes` of `pool` and updates the MailDomains bound to it.
pub async fn observe(
    client: &Client,
    sampler: &Arc<Sampler>,
    namespace: &str,
    pool: &str,
    token: Option<&str>,
    nodes: &[PoolNode],
) -> Result<(), kube::Error> {
    // Owned per call: futures borrowing from the caller make the controller's future
    // not general enough over lifetimes.
    let answers: Vec<(String, Result<DeliveryReport, String>)> =
        futures::stream::iter(nodes.to_vec())
            .map(|node| {
                let token = token.map(str::to_owned);
                async move {
                    let report = admin_call::<DeliveryReport>(
                        &node,
                        token.as_deref(),
                        "GET",
                        "/admin/delivery",
                    )
                    .await;
                    (node.pod, report)
                }
            })
            .buffer_unordered(AT_ONCE)
            .collect()
            .await;
    let mut answered = Vec::new();
    for (pod, report) in answers {
        match report {
            Ok(report) => answered.push((pod, report)),
            Err(reason) => tracing::debug!(%pool, %pod, %reason, "no delivery report"),
        }
    }
    let reporting = u32::try_from(answered.len()).unwrap_or(u32::MAX);
    let missing = u32::try_from(nodes.len() - answered.len()).unwrap_or(u32::MAX);
    let pods: Vec<String> = nodes.iter().map(|n| n.pod.clone()).collect();
    let api: Api<MailDomain> = Api::namespaced(client.clone(), namespace);
    let now = Utc::now();
    let key = (namespace.to_owned(), pool.to_owned());
    {
        let mut histories = sampler.lock();
        // A pool not sampled for a day is gone (or its windows are empty anyway).
        histories.retain(|_, h| h.last_sampled().is_some_and(|at| now - at < window::KEPT));
        histories
            .entry(key.clone())
            .or_default()
            .absorb(now, &answered, &pods);
    }
    // One per round: Events only mark transitions, there are no repeats across rounds
    // to fold, and nothing outlives the round.
    let events = crate::events::Publisher::new(client.clone(), crate::events::reporter());
    // Page by page: each domain is judged on its own, and a pool's whole list held at
    // once was the operator's largest allocation at 1,000 domains (about 20 MiB, with
    // every domain's status and managed fields).
    let mut pages = BoundPages::new(pool);
    while let Some(domains) = pages.next(&api).await? {
        let updates: Vec<(MailDomain, Update)> = {
            let mut histories = sampler.lock();
            let history = histories.entry(key.clone()).or_default();
            domains
                .into_iter()
                .filter_map(|md| {
                    let update = judge(&md, history, now, reporting, missing)?;
                    Some((md, update))
                })
                .collect()
        };
        for (md, update) in updates {
            write(&api, &events, &md, update).await?;
        }
    }
    Ok(())
}

/// What to write for one MailDomain.
struct Update {
    status: crate::api::mail_domain::DeliveryStatus,
    condition: k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition,
    event: Option<(bool, &'static str, String)>,
}

/// The new status and condition of `md`, or `None` when both are as written.
fn judge(
    md: &MailDomain,
    history: &PoolHistory,
    now: DateTime<Utc>,
    reporting: u32,
    missing: u32,
) -> Option<Update> {
    let domain = md.spec.domain.to_lowercase();
    let spec = md.spec.delivery.clone().unwrap_or_default();
    let status = delivery_status(history, &domain, now, reporting, missing);
    let hour_refusals = top_refusals(&history.window(&domain, now, Duration::hours(1)));
    let v = verdict(
        history.has_increments(),
        &status.last_hour,
        &hour_refusals,
        &spec,
    );
    let current = md.status.as_ref();
    let previous = current.and_then(|s| find(&s.conditions, condition_types::DELIVERY_HEALTHY));
    let cond = condition(&v, previous, md.metadata.generation, now);
    let unchanged = current.and_then(|s| s.delivery.as_ref()) == Some(&status)
        && previous.is_some_and(|p| {
            p.status == cond.status
                && p.reason == cond.reason
                && p.message == cond.message
                && p.observed_generation == cond.observed_generation
        });
    if unchanged {
        return None;
    }
    Some(Update {
        event: transition_event(previous, &v),
        status,
        condition: cond,
    })
}

/// The MailDomains whose `spec.relayPoolRef` names `pool`, read
/// [`LIST_PAGE`](crate::relaypool::dereference::LIST_PAGE) at a time.
struct BoundPages {
    pool: String,
    /// Whether the API server filters on the selectable field `spec.relayPoolRef.name`;
    /// without support for those the whole list is filtered here.
    selectable: bool,
    /// The next page to read; `None` once the last was read.
    next: Option<ListParams>,
}

impl BoundPages {
    fn new(pool: &str) -> Self {
        Self {
            pool: pool.to_owned(),
            selectable: true,
            next: Some(Self::first(pool, true)),
        }
    }

    fn first(pool: &str, selectable: bool) -> ListParams {
        let params = ListParams::default().limit(crate::relaypool::dereference::LIST_PAGE);
        if selectable {
            params.fields(&format!("spec.relayPoolRef.name={pool}"))
        } else {
            params
        }
    }

    /// The next page of bound domains not being deleted, `None` after the last.
    async fn next(
        &mut self,
        api: &Api<MailDomain>,
    ) -> Result<Option<Vec<MailDomain>>, kube::Error> {
        let Some(params) = self.next.take() else {
            return Ok(None);
        };
        let page = match api.list(&params).await {
            Ok(page) => page,
            // Only the first page can meet an unsupported selector.
            Err(kube::Error::Api(e))
                if e.code == 400 && self.selectable && params.continue_token.is_none() =>
            {
                self.selectable = false;
                let params = Self::first(&self.pool, false);
                let page = api.list(&params).await?;
                self.next = Self::continued(params, page.metadata.continue_.clone());
                return Ok(Some(self.bound(page.items)));
            }
            Err(e) => return Err(e),
        };
        self.next = Self::continued(params, page.metadata.continue_.clone());
        Ok(Some(self.bound(page.items)))
    }

    fn continued(params: ListParams, token: Option<String>) -> Option<ListParams> {
        token
            .filter(|t| !t.is_empty())
            .map(|t| params.continue_token(&t))
    }

    fn bound(&self, items: Vec<MailDomain>) -> Vec<MailDomain> {
        items
            .into_iter()
            .filter(|md| {
                md.spec.relay_pool_ref.name == self.pool && md.meta().deletion_timestamp.is_none()
            })
            .collect()
    }
}

/// Writes `update` to `md`'s status and publishes its Event, if any.
async fn write(
    api: &Api<MailDomain>,
    events: &crate::events::Publisher,
    md: &MailDomain,
    update: Update,
) -> Result<(), kube::Error> {
    let patch = serde_json::json!({
        "apiVersion": crate::api::API_VERSION,
        "kind": "MailDomain",
        "status": {
            "delivery": update.status,
            "conditions": [update.condition],
        },
    });
    api.patch_status(
        &md.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    if let Some((warning, reason, note)) = update.event {
        if warning {
            let namespace = md.namespace().unwrap_or_default();
            tracing::warn!(maildomain = %md.name_any(), %namespace, %note, "delivery unhealthy");
        }
        let event = if warning {
            crate::events::warning(reason, "SampleDelivery", note)
        } else {
            crate::events::normal(reason, "SampleDelivery", note)
        };
        crate::events::publish_all(events, &reference(md), &[event]).await;
    }
    Ok(())
}

fn reference(md: &MailDomain) -> ObjectReference {
    md.object_ref(&())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_ask_for_the_pool_and_follow_the_continuation() {
        let first = BoundPages::first("bench", true);
        assert_eq!(
            first.field_selector.as_deref(),
            Some("spec.relayPoolRef.name=bench")
        );
        assert_eq!(first.limit, Some(crate::relaypool::dereference::LIST_PAGE));
        assert_eq!(BoundPages::first("bench", false).field_selector, None);
        let next = BoundPages::continued(first.clone(), Some("page-2".into()));
        assert_eq!(
            next.as_ref().and_then(|p| p.continue_token.as_deref()),
            Some("page-2")
        );
        assert_eq!(
            next.and_then(|p| p.field_selector),
            Some("spec.relayPoolRef.name=bench".into())
        );
        assert!(BoundPages::continued(first.clone(), Some(String::new())).is_none());
        assert!(BoundPages::continued(first, None).is_none());
    }
}
