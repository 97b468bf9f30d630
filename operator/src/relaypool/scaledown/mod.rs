//! Scale-down that drains first: the I/O around [`plan`].
//!
//! Each round reads what runs (the StatefulSets, and the pods only while something is
//! to be removed), lets [`plan::plan`] decide, and carries out the one step it names:
//! ask a node to drain (its admin API, the pool's token), ask how far it is, take a
//! drain back, or delete a removed node's spool claim. The StatefulSets' replicas are
//! then applied by the caller from [`Outcome::replicas`]; the scale-down in progress is
//! kept in `status.scaleDown`, so a restarted operator goes on where it was.
//!
//! While a node drains it answers `/readyz` with 503, which takes it out of the client
//! Service; it also carries the label `smtpfleet.io/leaving`, for people and selectors.

pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::Event;
use kube::{Api, ResourceExt};
use smtp_node::admin::QueueReport;

use super::apply::{FIELD_MANAGER, delete_child, is_controlled_by};
use super::changes::data_centre_of;
use super::error::{Error, Result};
use super::model::Pool;
use crate::api::RelayPool;
use crate::api::relay_pool::{ScaleDownPhase, ScaleDownStatus, condition_types, reasons};
use crate::events::{normal, warning};
use crate::queue::{self, PoolNode};
use plan::{DataCentreNow, DrainAnswer, Guarantee, NodeNow, Progress, Step, Target};

/// Set (to any value) on a RelayPool to let its StatefulSets follow the spec without
/// drains: for nodes that will never answer. Their spool claims are kept.
pub const FORCE_SCALE_DOWN_ANNOTATION: &str = "smtpfleet.io/force-scale-down";
/// Put on the pod of a node being drained.
pub const LEAVING_LABEL: &str = "smtpfleet.io/leaving";
/// How long a drain may take before the scale-down is reported blocked (it goes on
/// waiting: a node is never removed while the pool needs its messages).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(600);
/// How soon a pool with a scale-down in progress is looked at again.
const RECHECK: Duration = Duration::from_secs(5);
/// The spool's claim template name (claims are `spool-<pod>`).
const SPOOL_CLAIM: &str = "spool";

/// A condition to set: type, status, reason, message.
pub type ConditionUpdate = (&'static str, &'static str, &'static str, String);

/// What a round decided.
#[derive(Default)]
pub struct Outcome {
    /// Replicas per StatefulSet name. Names that are not desired children (a removed
    /// data centre still draining) must be kept and scaled, not deleted.
    pub replicas: BTreeMap<String, i32>,
    /// The scale-down in progress after this round.
    pub status: Option<ScaleDownStatus>,
    /// Conditions to set (none while nothing was ever scaled down).
    pub conditions: Vec<ConditionUpdate>,
    pub events: Vec<Event>,
    /// Look again this soon.
    pub requeue: Option<Duration>,
}

/// One round of scale-down for `pool`, whose desired StatefulSets are `desired` and
/// whose existing ones are `existing`; `rolling`: a rolling update is in progress, so no
/// new drain starts.
pub async fn reconcile(
    client: &kube::Client,
    pool: &RelayPool,
    model: &Pool,
    desired: &[StatefulSet],
    existing: &[StatefulSet],
    rolling: bool,
) -> Result<Outcome> {
    let data_centres = data_centres(model, desired, existing);
    let previous = pool.status.as_ref();
    let in_progress = previous.and_then(|s| s.scale_down.as_ref());
    let force = pool.annotations().contains_key(FORCE_SCALE_DOWN_ANNOTATION);
    let busy = in_progress.is_some()
        || data_centres
            .iter()
            .any(|dc| dc.current > dc.wanted.unwrap_or(0));
    let namespace = &model.identity.namespace;
    let (token, pods) = if busy && !force {
        queue::pool_nodes(client, namespace, &model.identity.name)
            .await
            .map_err(|source| Error::ListChildren {
                kind: "Pod",
                source,
            })?
    } else {
        (None, Vec::new())
    };
    let nodes: Vec<NodeNow> = pods
        .iter()
        .map(|p| NodeNow {
            pod: p.pod.clone(),
            ready: p.ready,
        })
        .collect();
    let guarantee = Guarantee {
        factor: model.queue.replication_factor.max(1) as usize,
        min_data_centres: model.queue.min_data_centres.max(1) as usize,
    };
    let plan = plan::wait_for_roll(
        plan::plan(&data_centres, &nodes, guarantee, in_progress, force),
        rolling,
    );
    let mut out = Outcome {
        replicas: plan.replicas,
        ..Outcome::default()
    };
    let was_blocked = previous
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default()
        .iter()
        .find(|c| c.type_ == condition_types::SCALE_DOWN_BLOCKED && c.status == "True")
        .map(|c| c.reason.clone());
    let had_conditions = previous.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == condition_types::SCALING_DOWN)
    });
    let node = |target: &Target| pods.iter().find(|p| p.pod == target.pod);
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), namespace);

    match plan.step {
        Step::Idle => {
            if had_conditions {
                out.conditions = settled("Every data centre runs the replicas its spec asks for.");
            }
        }
        Step::Forced => {
            out.events.push(warning(
                "ScaleDownForced",
                "ScaleDown",
                format!(
                    "{FORCE_SCALE_DOWN_ANNOTATION} is set: StatefulSets follow the spec without \
                     draining; the removed nodes' spool claims are kept."
                ),
            ));
            out.conditions = settled("Scaled down without drains (forced).");
        }
        Step::Blocked { reason, message } => {
            if was_blocked.as_deref() != Some(reason) {
                out.events
                    .push(warning("ScaleDownBlocked", "ScaleDown", message.clone()));
            }
            out.conditions = vec![
                (
                    condition_types::SCALING_DOWN,
                    "False",
                    reason,
                    message.clone(),
                ),
                (condition_types::SCALE_DOWN_BLOCKED, "True", reason, message),
            ];
            out.requeue = Some(RECHECK * 3);
        }
        Step::Start(target) => {
            let answer = drain(node(&target), token.as_deref(), "POST").await;
            if let DrainAnswer::Unreachable(why) = &answer {
                tracing::info!(pod = %target.pod, %why, "drain not acknowledged yet; asking again");
            }
            label_leaving(&pods_api, &target.pod, true).await;
            let message = format!(
                "Draining {} (data centre {:?}) before removing it: it takes no new mail and \
                 hands its messages to the other nodes.",
                target.pod, target.data_centre
            );
            out.events
                .push(normal("ScalingDown", "ScaleDown", message.clone()));
            out.status = Some(ScaleDownStatus {
                pod: target.pod.clone(),
                data_centre: target.data_centre.clone(),
                stateful_set: target.statefulset.clone(),
                ordinal: target.ordinal,
                phase: ScaleDownPhase::Draining,
                started_at: Time(Timestamp::now()),
            });
            out.conditions = draining(reasons::DRAINING_NODE, message);
            out.requeue = Some(RECHECK);
        }
        Step::Continue(target) => {
            let status = in_progress
                .cloned()
                .ok_or(Error::MissingObjectKey("scaleDown"))?;
            let answer = drain(node(&target), token.as_deref(), "POST").await;
            let verdict = plan::progress(
                &target,
                &answer,
                status.started_at.0,
                Timestamp::now(),
                DRAIN_TIMEOUT,
            );
            out.requeue = Some(RECHECK);
            match verdict {
                Progress::Drained => {
                    // The count is lowered by the next pass, in the `Removing` phase this
                    // one records: were it lowered here and this pass's status refused
                    // (another writer got there first), the next pass would find a
                    // `Draining` node already removed, take it for a change behind the
                    // operator's back and cancel, leaving its claim behind.
                    let message = format!(
                        "{} is drained: nothing on it is needed any more. Removing its pod, \
                         then its spool claim.",
                        target.pod
                    );
                    out.events
                        .push(normal("NodeDrained", "ScaleDown", message.clone()));
                    out.status = Some(ScaleDownStatus {
                        phase: ScaleDownPhase::Removing,
                        ..status
                    });
                    out.conditions = draining(reasons::REMOVING_NODE, message);
                    out.requeue = Some(Duration::from_secs(1));
                }
                Progress::Waiting(message) => {
                    out.status = Some(status);
                    out.conditions = draining(reasons::DRAINING_NODE, message);
                }
                Progress::Stuck { reason, message } => {
                    if was_blocked.as_deref() != Some(reason) {
                        out.events
                            .push(warning("ScaleDownBlocked", "ScaleDown", message.clone()));
                    }
                    out.status = Some(status);
                    out.conditions = vec![
                        (
                            condition_types::SCALING_DOWN,
                            "True",
                            reasons::DRAINING_NODE,
                            format!("Draining {}.", target.pod),
                        ),
                        (condition_types::SCALE_DOWN_BLOCKED, "True", reason, message),
                    ];
                }
            }
        }
        Step::Remove(target) => {
            let status = in_progress
                .cloned()
                .ok_or(Error::MissingObjectKey("scaleDown"))?;
            let still_there = pods_api
                .get_opt(&target.pod)
                .await
                .map_err(|source| Error::ListChildren {
                    kind: "Pod",
                    source,
                })?
                .is_some();
            if still_there {
                out.status = Some(status);
                out.conditions = draining(
                    reasons::REMOVING_NODE,
                    format!("Waiting for {} to stop.", target.pod),
                );
                out.requeue = Some(RECHECK);
            } else {
                let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
                let claim = format!("{SPOOL_CLAIM}-{}", target.pod);
                delete_child(&claims, &claim, None)
                    .await
                    .map_err(|source| Error::DeleteOrphan {
                        kind: "PersistentVolumeClaim",
                        name: claim.clone(),
                        source,
                    })?;
                let message = format!(
                    "Removed {} after its drain, and its spool claim {claim}.",
                    target.pod
                );
                out.events.push(normal("ScaledDown", "ScaleDown", message));
                out.conditions = settled("The last scale-down is complete.");
                // The next node, if any, at once.
                out.requeue = Some(Duration::from_secs(1));
            }
        }
        Step::Cancel(target) => {
            let answer = drain(node(&target), token.as_deref(), "DELETE").await;
            if let DrainAnswer::Unreachable(why) = answer {
                tracing::info!(pod = %target.pod, %why, "could not take a drain back; the node drains until it restarts");
            }
            label_leaving(&pods_api, &target.pod, false).await;
            let message = format!(
                "Kept {}: its data centre asks for it again; the drain is taken back.",
                target.pod
            );
            out.events
                .push(normal("ScaleDownCancelled", "ScaleDown", message.clone()));
            out.conditions = settled(&message);
            out.requeue = Some(Duration::from_secs(1));
        }
    }
    Ok(out)
}

/// Every data centre the spec names or a StatefulSet of the pool still runs.
fn data_centres(
    model: &Pool,
    desired: &[StatefulSet],
    existing: &[StatefulSet],
) -> Vec<DataCentreNow> {
    let current = |name: &str| {
        existing
            .iter()
            .find(|s| s.name_any() == name)
            .and_then(|s| s.spec.as_ref())
            .map_or(0, |s| s.replicas.unwrap_or(1))
    };
    let mut out: Vec<DataCentreNow> = desired
        .iter()
        .map(|sts| DataCentreNow {
            name: data_centre_of(sts),
            statefulset: sts.name_any(),
            current: current(&sts.name_any()),
            wanted: sts.spec.as_ref().and_then(|s| s.replicas),
        })
        .collect();
    let named: BTreeSet<String> = out.iter().map(|dc| dc.statefulset.clone()).collect();
    out.extend(
        existing
            .iter()
            .filter(|sts| is_controlled_by(*sts, &model.identity.uid))
            .filter(|sts| !named.contains(&sts.name_any()))
            .map(|sts| DataCentreNow {
                name: data_centre_of(sts),
                statefulset: sts.name_any(),
                current: current(&sts.name_any()),
                wanted: None,
            }),
    );
    out
}

/// Asks a node to drain (`POST`) or to take its drain back (`DELETE`).
async fn drain(node: Option<&PoolNode>, token: Option<&str>, method: &str) -> DrainAnswer {
    let Some(node) = node else {
        return DrainAnswer::Unreachable("its pod does not exist".to_owned());
    };
    match queue::admin_call::<QueueReport>(node, token, method, "/admin/drain").await {
        Ok(report) => DrainAnswer::of(&report),
        Err(why) => DrainAnswer::Unreachable(why),
    }
}

/// Labels (or unlabels) a pod as leaving. Best effort: the label informs, the drain
/// itself is what protects the mail.
async fn label_leaving(pods: &Api<Pod>, pod: &str, leaving: bool) {
    let value = leaving.then_some("true");
    let body = serde_json::json!({ "metadata": { "labels": { LEAVING_LABEL: value } } });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    if let Err(error) = pods.patch(pod, &params, &Patch::Merge(&body)).await {
        tracing::info!(%pod, %error, "cannot label the pod leaving");
    }
}

/// ScalingDown and ScaleDownBlocked both False.
fn settled(message: &str) -> Vec<ConditionUpdate> {
    vec![
        (
            condition_types::SCALING_DOWN,
            "False",
            reasons::NO_SCALE_DOWN,
            message.to_owned(),
        ),
        (
            condition_types::SCALE_DOWN_BLOCKED,
            "False",
            reasons::NO_SCALE_DOWN,
            message.to_owned(),
        ),
    ]
}

/// ScalingDown True for `reason`, not blocked.
fn draining(reason: &'static str, message: String) -> Vec<ConditionUpdate> {
    vec![
        (
            condition_types::SCALING_DOWN,
            "True",
            reason,
            message.clone(),
        ),
        (
            condition_types::SCALE_DOWN_BLOCKED,
            "False",
            reason,
            message,
        ),
    ]
}
