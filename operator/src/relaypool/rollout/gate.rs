//! The I/O around [`super::decide`]: what the StatefulSets hold, and (only while a roll is
//! in progress) the pods and a fresh queue report from every node; then the partitions
//! go into the StatefulSets about to be applied, and the phase becomes the
//! `RollingUpdate` condition and Events.
//!
//! The queue is asked here rather than read from `status.queue`: that summary is written
//! at most every 30 seconds, and a node that restarted since would still look healthy in
//! it.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{RollingUpdateStatefulSetStrategy, StatefulSet};
use kube::ResourceExt;
use kube::runtime::events::Event;

use super::{DataCentreNow, Existing, Phase, PodNow, QueueHealth, decide, needs_nodes, ordinal_of};
use crate::api::relay_pool::{condition_types, reasons};
use crate::events::{normal, warning};
use crate::queue;
use crate::relaypool::build::meta::TEMPLATE_HASH_ANNOTATION;
use crate::relaypool::changes::data_centre_of;
use crate::relaypool::error::{Error, Result};
use crate::relaypool::model::Pool;
use crate::relaypool::scaledown::ConditionUpdate;

/// How soon a pool with a roll in progress is looked at again.
const RECHECK: Duration = Duration::from_secs(5);
/// Event action of everything the roll reports.
const ACTION: &str = "RollingUpdate";

/// What a round decided, besides the partitions written into the StatefulSets.
#[derive(Default)]
pub struct Outcome {
    /// The `RollingUpdate` condition, when there is something to say.
    pub conditions: Vec<ConditionUpdate>,
    pub events: Vec<Event>,
    /// Look again this soon.
    pub requeue: Option<Duration>,
}

/// Set (to any value) on a RelayPool to let the StatefulSet controller replace pods on
/// its own, without the gate: for a node that never becomes ready on its old template.
pub const FORCE_ROLLOUT_ANNOTATION: &str = "smtpfleet.io/force-rollout";

/// One round: sets the partition of each of `desired` (about to be applied), given the
/// StatefulSets as they are (`existing`), whether a scale-down drain is in progress,
/// whether [`FORCE_ROLLOUT_ANNOTATION`] is set and whether the pool's `RollingUpdate`
/// condition says a roll is under way (`under_way`: its last node may still be
/// restarting although no partition holds anything any more).
pub async fn round(
    client: &kube::Client,
    model: &Pool,
    desired: &mut [StatefulSet],
    existing: &[StatefulSet],
    scaling_down: bool,
    force: bool,
    under_way: bool,
) -> Result<Outcome> {
    let data_centres: Vec<DataCentreNow> = desired
        .iter()
        .map(|sts| data_centre_now(sts, existing))
        .collect();
    let decision = if force {
        super::forced(&data_centres)
    } else {
        let (pods, queue_health) = if needs_nodes(&data_centres) || under_way {
            observe_nodes(client, model, &data_centres).await?
        } else {
            (Vec::new(), QueueHealth::Standalone)
        };
        decide(&data_centres, &pods, &queue_health, scaling_down)
    };
    for sts in desired.iter_mut() {
        let partition = decision.partitions.get(&sts.name_any()).copied();
        if let Some(strategy) = sts.spec.as_mut().and_then(|s| s.update_strategy.as_mut()) {
            strategy.rolling_update = Some(RollingUpdateStatefulSetStrategy {
                partition: Some(partition.unwrap_or(0)),
                max_unavailable: None,
            });
        }
    }
    let pool = &model.identity.name;
    let mut out = Outcome::default();
    match decision.phase {
        Phase::Idle => {}
        Phase::Held { statefulsets } => {
            let message = format!(
                "The pod template of {} changed: every node keeps its revision until the \
                 operator releases it, one node of the pool at a time.",
                statefulsets.join(", ")
            );
            tracing::info!(%pool, "{message}");
            out.events
                .push(normal("RollingUpdateStarted", ACTION, message.clone()));
            out.conditions = rolling(reasons::TEMPLATE_CHANGED, message);
            out.requeue = Some(RECHECK);
        }
        Phase::Released(release) => {
            let message = format!(
                "Released {} (data centre {:?}) for update to revision {}: every node was \
                 ready and every queued message had its copies.",
                release.pod, release.data_centre, release.revision
            );
            tracing::info!(%pool, pod = %release.pod, revision = %release.revision, "node released for update");
            out.events
                .push(normal("NodeReleased", ACTION, message.clone()));
            out.conditions = rolling(reasons::UPDATING_NODE, message);
            out.requeue = Some(RECHECK);
        }
        Phase::Waiting { reason, message } => {
            // Said every pass while it lasts: the condition carries it for people.
            tracing::debug!(%pool, %reason, "rolling update waits: {message}");
            out.conditions = rolling(reason, message);
            out.requeue = Some(RECHECK);
        }
        Phase::Forced => {
            let message = format!(
                "{FORCE_ROLLOUT_ANNOTATION} is set: no node is held; the StatefulSet \
                 controller replaces pods on its own, gated only by readiness, without waiting \
                 for replication."
            );
            tracing::warn!(%pool, "rolling update forced");
            out.events
                .push(warning("RollingUpdateForced", ACTION, message.clone()));
            out.conditions = vec![(
                condition_types::ROLLING_UPDATE,
                "False",
                reasons::FORCED,
                message,
            )];
        }
        Phase::Complete => {
            let message = "Every node runs the latest pod template.".to_owned();
            tracing::info!(%pool, "rolling update complete");
            out.events
                .push(normal("RolledOut", ACTION, message.clone()));
            out.conditions = vec![(
                condition_types::ROLLING_UPDATE,
                "False",
                reasons::ROLLED_OUT,
                message,
            )];
        }
    }
    Ok(out)
}

/// Whether a roll is in progress: some StatefulSet the pool still wants (`desired`)
/// holds nodes back. A scale-down starts no drain meanwhile. A removed data centre's
/// StatefulSet does not count: the roll no longer looks after it, and only its drains
/// let it go.
pub fn in_progress(existing: &[StatefulSet], desired: &[StatefulSet]) -> bool {
    existing
        .iter()
        .filter(|sts| desired.iter().any(|d| d.name_any() == sts.name_any()))
        .any(|sts| existing_of(sts).partition > 0)
}

fn rolling(reason: &'static str, message: String) -> Vec<ConditionUpdate> {
    vec![(condition_types::ROLLING_UPDATE, "True", reason, message)]
}

/// A desired StatefulSet next to the one that exists under its name.
fn data_centre_now(desired: &StatefulSet, existing: &[StatefulSet]) -> DataCentreNow {
    let name = desired.name_any();
    let found = existing.iter().find(|s| s.name_any() == name);
    let hash = |sts: &StatefulSet| sts.annotations().get(TEMPLATE_HASH_ANNOTATION).cloned();
    DataCentreNow {
        data_centre: data_centre_of(desired),
        replicas: desired.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        template_changed: found.is_none_or(|f| hash(f).is_none() || hash(f) != hash(desired)),
        existing: found.map(existing_of),
        statefulset: name,
    }
}

fn existing_of(sts: &StatefulSet) -> Existing {
    let spec = sts.spec.as_ref();
    let status = sts.status.as_ref();
    let observed = match (
        status.and_then(|s| s.observed_generation),
        sts.metadata.generation,
    ) {
        (Some(seen), Some(generation)) => seen >= generation,
        (_, None) => true,
        (None, Some(_)) => false,
    };
    Existing {
        replicas: spec.and_then(|s| s.replicas).unwrap_or(1),
        partition: spec
            .and_then(|s| s.update_strategy.as_ref())
            .and_then(|u| u.rolling_update.as_ref())
            .and_then(|r| r.partition)
            .unwrap_or(0),
        observed,
        update_revision: status.and_then(|s| s.update_revision.clone()),
        updated_replicas: status.and_then(|s| s.updated_replicas).unwrap_or(0),
    }
}

/// The pool's pods, and its queue as every node reports it now.
async fn observe_nodes(
    client: &kube::Client,
    model: &Pool,
    data_centres: &[DataCentreNow],
) -> Result<(Vec<PodNow>, QueueHealth)> {
    let (token, nodes) = queue::pool_nodes(client, &model.identity.namespace, &model.identity.name)
        .await
        .map_err(|source| Error::ListChildren {
            kind: "Pod",
            source,
        })?;
    let statefulsets: Vec<String> = data_centres
        .iter()
        .map(|dc| dc.statefulset.clone())
        .collect();
    let pods = nodes
        .iter()
        .filter_map(|node| {
            let (statefulset, ordinal) = ordinal_of(&node.pod, &statefulsets)?;
            Some(PodNow {
                name: node.pod.clone(),
                statefulset: statefulset.to_owned(),
                ordinal,
                ready: node.ready,
                revision: node.revision.clone(),
            })
        })
        .collect();
    if model.queue.replication_factor <= 1 {
        return Ok((pods, QueueHealth::Standalone));
    }
    let results = queue::ask_all(nodes, token).await;
    let summary = queue::summary::summarize(&results);
    let health = if !summary.unreachable.is_empty() {
        QueueHealth::Unanswered(summary.unreachable)
    } else if summary.under_replicated > 0 {
        QueueHealth::UnderReplicated(summary.under_replicated)
    } else {
        QueueHealth::Replicated
    };
    Ok((pods, health))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{StatefulSetSpec, StatefulSetUpdateStrategy};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    fn sts(name: &str, partition: i32, hash: Option<&str>) -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: hash
                    .map(|h| BTreeMap::from([(TEMPLATE_HASH_ANNOTATION.to_owned(), h.to_owned())])),
                ..ObjectMeta::default()
            },
            spec: Some(StatefulSetSpec {
                replicas: Some(2),
                update_strategy: Some(StatefulSetUpdateStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateStatefulSetStrategy {
                        partition: Some(partition),
                        max_unavailable: None,
                    }),
                }),
                ..StatefulSetSpec::default()
            }),
            status: None,
        }
    }

    #[test]
    fn a_removed_data_centre_held_mid_roll_does_not_block_its_own_drains() {
        let existing = [sts("p-a", 0, Some("h")), sts("p-gone", 2, Some("h"))];
        assert!(!in_progress(&existing, &[sts("p-a", 0, Some("h"))]));
        let existing = [sts("p-a", 1, Some("h"))];
        assert!(in_progress(&existing, &[sts("p-a", 0, Some("h"))]));
    }

    #[test]
    fn a_missing_or_other_digest_is_a_template_change() {
        let desired = sts("p-a", 0, Some("new"));
        assert!(data_centre_now(&desired, &[sts("p-a", 0, None)]).template_changed);
        assert!(data_centre_now(&desired, &[sts("p-a", 0, Some("old"))]).template_changed);
        let same = data_centre_now(&desired, &[sts("p-a", 2, Some("new"))]);
        assert!(!same.template_changed);
        assert_eq!(same.existing.map(|e| e.partition), Some(2));
        assert!(data_centre_now(&desired, &[]).existing.is_none());
    }
}
