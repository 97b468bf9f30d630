//! Rolling a pod-template change through the pool one node at a time: the pure decision.
//!
//! The StatefulSet controller on its own replaces the pods of every data centre at once,
//! gated only by readiness, and a node that restarts takes its copies of queued messages
//! offline with it. So each StatefulSet carries a `rollingUpdate.partition` that this
//! module chooses: pods at or above it are moved to the new revision, pods below it are
//! kept. A template change first goes out with the partition at the StatefulSet's
//! replicas (nothing moves); then, one pass at a time, the partition of one data centre
//! is lowered by one, releasing one node, and only when every node of the pool is ready,
//! the released nodes run the new revision, no scale-down is draining a node, and every
//! node reports that every queued message has all its copies. A node that does not
//! answer is never taken as healthy.
//!
//! The I/O (reading pods, asking nodes for their queue) is in the controller; everything
//! here is a function of what it observed, so every case is a table test.

pub mod gate;

use std::collections::BTreeMap;

use crate::api::relay_pool::reasons;

/// One data centre's StatefulSet, as this pass is about to apply it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataCentreNow {
    /// Data centre name.
    pub data_centre: String,
    /// Its StatefulSet's name.
    pub statefulset: String,
    /// Replicas this pass applies.
    pub replicas: i32,
    /// The pod template this pass applies differs from the one the StatefulSet holds
    /// (or the StatefulSet does not say which it holds).
    pub template_changed: bool,
    /// The StatefulSet as it exists; `None` when this pass creates it.
    pub existing: Option<Existing>,
}

/// What the API server holds of an existing StatefulSet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Existing {
    /// `spec.replicas`.
    pub replicas: i32,
    /// `spec.updateStrategy.rollingUpdate.partition` (0 when unset).
    pub partition: i32,
    /// `status.observedGeneration` has caught up with `metadata.generation`: until then
    /// the revisions below may describe an older template.
    pub observed: bool,
    /// `status.updateRevision`: the revision of the template last applied.
    pub update_revision: Option<String>,
    /// `status.updatedReplicas`.
    pub updated_replicas: i32,
}

/// One pod of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNow {
    /// Pod name.
    pub name: String,
    /// Its StatefulSet.
    pub statefulset: String,
    /// Its ordinal in the StatefulSet.
    pub ordinal: i32,
    /// Its `Ready` condition is `True`.
    pub ready: bool,
    /// Its `controller-revision-hash` label.
    pub revision: Option<String>,
}

/// The pool's queue, as the nodes answered this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueHealth {
    /// `replicationFactor: 1`: a node holds the only copy of its messages whatever
    /// happens, so only readiness gates the roll.
    Standalone,
    /// Every node answered and no message lacks a copy.
    Replicated,
    /// Every node answered; this many held copies lack a copy elsewhere.
    UnderReplicated(i64),
    /// These nodes did not answer (their copies are unknown).
    Unanswered(Vec<String>),
}

/// The node released this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub pod: String,
    pub data_centre: String,
    pub statefulset: String,
    /// The partition its StatefulSet goes down to (the pod's ordinal).
    pub ordinal: i32,
    /// The revision it is moved to.
    pub revision: String,
}

/// Where a roll is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// No roll: every StatefulSet runs with partition 0.
    Idle,
    /// The pod template changed this pass: every existing node is held.
    Held { statefulsets: Vec<String> },
    /// One node was released for update.
    Released(Release),
    /// A roll is in progress but the next node must wait; `reason` is a
    /// `RollingUpdate` condition reason.
    Waiting {
        reason: &'static str,
        message: String,
    },
    /// Every node runs the new revision; the partitions go back to 0.
    Complete,
    /// `smtpfleet.io/force-rollout` let go of the nodes held: the partitions go to 0 and
    /// the StatefulSet controller replaces the pods on its own.
    Forced,
}

/// What a pass decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The partition of each StatefulSet (by name) this pass applies.
    pub partitions: BTreeMap<String, i32>,
    pub phase: Phase,
}

/// Whether a roll may be in progress, so that pods and queue have to be read: a template
/// change is held, or a StatefulSet still has a partition above 0. Without either, the
/// decision needs nothing more than the StatefulSets.
pub fn needs_nodes(data_centres: &[DataCentreNow]) -> bool {
    data_centres.iter().any(|dc| {
        dc.existing
            .as_ref()
            .is_some_and(|e| !dc.template_changed && e.partition > 0)
    })
}

/// Decides each StatefulSet's partition.
///
/// `pods` and `queue` are only read when [`needs_nodes`] says so (pass empty and
/// [`QueueHealth::Standalone`] otherwise). `scaling_down`: a scale-down drain is in
/// progress (`status.scaleDown`); no node is released meanwhile, so that at most one node
/// of the pool is ever away.
pub fn decide(
    data_centres: &[DataCentreNow],
    pods: &[PodNow],
    queue: &QueueHealth,
    scaling_down: bool,
) -> Decision {
    let changed: Vec<String> = data_centres
        .iter()
        .filter(|dc| dc.existing.is_some() && dc.template_changed)
        .map(|dc| dc.statefulset.clone())
        .collect();
    if !changed.is_empty() {
        return Decision {
            partitions: data_centres
                .iter()
                .map(|dc| (dc.statefulset.clone(), held_partition(dc)))
                .collect(),
            phase: Phase::Held {
                statefulsets: changed,
            },
        };
    }
    // With every partition at 0 nothing is held; but right after the last node was
    // released the roll is not over until that node runs the new revision: the caller
    // then passes the pods (it knows the pool is still rolling) and the roll completes
    // below.
    if !needs_nodes(data_centres) && pods.is_empty() {
        return Decision {
            partitions: zero(data_centres),
            phase: Phase::Idle,
        };
    }
    // A partition above the replicas (the StatefulSet shrank mid-roll) holds no pod;
    // lowered to the replicas, it lets nodes a later scale-up adds start on the new
    // revision instead of being made on the old one and rolled again.
    let keep: BTreeMap<String, i32> = data_centres
        .iter()
        .map(|dc| {
            let partition = dc
                .existing
                .as_ref()
                .map_or(0, |e| e.partition.min(e.replicas.max(0)));
            (dc.statefulset.clone(), partition)
        })
        .collect();
    let waiting = |reason: &'static str, message: String| Decision {
        partitions: keep.clone(),
        phase: Phase::Waiting { reason, message },
    };

    // The StatefulSet controller must have seen the latest template, or its revisions
    // say nothing about it.
    let mut rolling = Vec::new();
    for dc in data_centres {
        let Some(existing) = &dc.existing else {
            continue;
        };
        let Some(update) = existing
            .update_revision
            .as_deref()
            .filter(|_| existing.observed)
        else {
            return waiting(
                reasons::WAITING_FOR_STATEFUL_SET,
                format!(
                    "Waiting for the StatefulSet controller to take in the new template of {}.",
                    dc.statefulset
                ),
            );
        };
        let of_dc = |pod: &&PodNow| pod.statefulset == dc.statefulset && pod.ordinal < dc.replicas;
        let outdated: Vec<&PodNow> = pods
            .iter()
            .filter(of_dc)
            .filter(|p| p.revision.as_deref() != Some(update))
            .collect();
        let updated = pods
            .iter()
            .filter(|p| p.statefulset == dc.statefulset)
            .filter(|p| p.revision.as_deref() == Some(update))
            .count();
        rolling.push(Rolling {
            dc,
            existing,
            update,
            outdated,
            updated,
        });
    }

    if rolling.iter().all(|r| r.outdated.is_empty()) {
        // Pods missing from the list are not outdated: readiness is not asked here, the
        // StatefulSet controller creates missing pods at the update revision.
        return Decision {
            partitions: zero(data_centres),
            phase: Phase::Complete,
        };
    }
    let partitions: BTreeMap<String, i32> = keep
        .iter()
        .map(|(name, partition)| {
            let done = rolling
                .iter()
                .any(|r| r.dc.statefulset == *name && r.outdated.is_empty());
            (name.clone(), if done { 0 } else { *partition })
        })
        .collect();
    let waiting = |reason: &'static str, message: String| Decision {
        partitions: partitions.clone(),
        phase: Phase::Waiting { reason, message },
    };

    // A released node still on its old revision is being replaced right now.
    for r in &rolling {
        if let Some(pod) = r
            .outdated
            .iter()
            .find(|p| p.ordinal >= r.existing.partition)
        {
            return waiting(
                reasons::UPDATING_NODE,
                format!(
                    "Waiting for {} to restart on revision {}.",
                    pod.name, r.update
                ),
            );
        }
    }
    if scaling_down {
        return waiting(
            reasons::WAITING_FOR_SCALE_DOWN,
            "A scale-down is draining a node; the next node is released once it is done."
                .to_owned(),
        );
    }
    let not_ready: Vec<String> = data_centres
        .iter()
        .flat_map(|dc| {
            (0..dc.replicas).filter_map(move |ordinal| {
                let ready = pods
                    .iter()
                    .any(|p| p.statefulset == dc.statefulset && p.ordinal == ordinal && p.ready);
                (!ready).then(|| format!("{}-{ordinal}", dc.statefulset))
            })
        })
        .collect();
    if !not_ready.is_empty() {
        return waiting(
            reasons::WAITING_FOR_READINESS,
            format!(
                "Waiting for every node to be ready; not ready: {}.",
                not_ready.join(", ")
            ),
        );
    }
    for r in &rolling {
        if usize::try_from(r.existing.updated_replicas).ok() != Some(r.updated) {
            return waiting(
                reasons::WAITING_FOR_STATEFUL_SET,
                format!(
                    "{} reports {} pods on revision {} but {} carry it; waiting for its \
                     status to catch up.",
                    r.dc.statefulset, r.existing.updated_replicas, r.update, r.updated
                ),
            );
        }
    }
    match queue {
        QueueHealth::Standalone | QueueHealth::Replicated => {}
        QueueHealth::UnderReplicated(count) => {
            return waiting(
                reasons::WAITING_FOR_REPLICATION,
                format!(
                    "Waiting for replication: {count} held copies lack a copy on another node; \
                     the next node restarts once every message has its copies."
                ),
            );
        }
        QueueHealth::Unanswered(nodes) => {
            return waiting(
                reasons::NODE_NOT_ANSWERING,
                format!(
                    "No queue report from {}: its copies cannot be counted, so no node is \
                     released.",
                    nodes.join(", ")
                ),
            );
        }
    }

    // The gate is open: the highest outdated ordinal of the first data centre (spec
    // order) that still has one. Every ordinal above it already runs the new revision.
    let next = rolling.iter().find_map(|r| {
        let pod = r.outdated.iter().max_by_key(|p| p.ordinal)?;
        Some((r.dc, r.update, pod))
    });
    let Some((dc, update, pod)) = next else {
        return Decision {
            partitions: zero(data_centres),
            phase: Phase::Complete,
        };
    };
    let mut partitions = partitions;
    partitions.insert(dc.statefulset.clone(), pod.ordinal);
    Decision {
        partitions,
        phase: Phase::Released(Release {
            pod: pod.name.clone(),
            data_centre: dc.data_centre.clone(),
            statefulset: dc.statefulset.clone(),
            ordinal: pod.ordinal,
            revision: update.to_owned(),
        }),
    }
}

/// The decision when `smtpfleet.io/force-rollout` is set: no node is held. For a node
/// that never becomes ready on its old template (the gate would wait for it forever,
/// and a pod below the partition is recreated on the old revision even when deleted).
pub fn forced(data_centres: &[DataCentreNow]) -> Decision {
    let held = data_centres.iter().any(|dc| {
        dc.existing
            .as_ref()
            .is_some_and(|e| dc.template_changed || e.partition > 0)
    });
    Decision {
        partitions: zero(data_centres),
        phase: if held { Phase::Forced } else { Phase::Idle },
    }
}

/// An existing StatefulSet during a roll, with its pods sorted out.
struct Rolling<'a> {
    dc: &'a DataCentreNow,
    existing: &'a Existing,
    /// Its update revision.
    update: &'a str,
    /// Its pods below its replicas not on the update revision.
    outdated: Vec<&'a PodNow>,
    /// Its pods on the update revision.
    updated: usize,
}

/// The partition that holds every existing pod of a StatefulSet whose template changes:
/// its current replicas. Pods a scale-up adds in the same pass sit above it and start on
/// the new template (nothing of theirs to protect); a new StatefulSet gets 0.
fn held_partition(dc: &DataCentreNow) -> i32 {
    match &dc.existing {
        None => 0,
        Some(existing) if dc.template_changed => existing.replicas.max(0),
        Some(existing) => existing.partition,
    }
}

fn zero(data_centres: &[DataCentreNow]) -> BTreeMap<String, i32> {
    data_centres
        .iter()
        .map(|dc| (dc.statefulset.clone(), 0))
        .collect()
}

/// The StatefulSet and ordinal of a pod named `<statefulset>-<ordinal>`, among
/// `statefulsets`.
pub fn ordinal_of<'a>(pod: &str, statefulsets: &'a [String]) -> Option<(&'a str, i32)> {
    statefulsets.iter().find_map(|sts| {
        let rest = pod.strip_prefix(sts.as_str())?.strip_prefix('-')?;
        rest.parse::<i32>()
            .ok()
            .map(|ordinal| (sts.as_str(), ordinal))
    })
}

#[cfg(test)]
mod tests;
