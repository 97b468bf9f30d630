//! The pool's PodDisruptionBudget.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::meta;
use crate::relaypool::model::Pool;

/// `<pool>`: at most one pod of the whole pool voluntarily disrupted at a time.
///
/// Why `maxUnavailable: 1` over the whole pool, not per data centre and not a
/// `minAvailable`:
/// - every accepted message has `replicationFactor` copies on different nodes; a node
///   drain or cluster upgrade that evicts two pods at once could take every live copy of
///   some messages away at the same time (and, with `replicationFactor: 2`, leave the
///   remaining nodes unable to find a live peer to replicate new mail to, so they would
///   answer 451). One at a time keeps `replicationFactor - 1` live copies of everything;
/// - it holds for any pool size, so scaling never leaves a budget that blocks every
///   eviction (a `minAvailable` equal to the replica count would) or allows too many;
/// - a pool of one replica can still be evicted: its spool is on a PersistentVolume and
///   survives, whereas a budget that never allows eviction would block node drains.
///
/// Pods that are not ready may always be evicted (`AlwaysAllow`): a crash-looping pod
/// serves no mail and must not block a node drain.
pub fn pod_disruption_budget(pool: &Pool) -> PodDisruptionBudget {
    let name = &pool.identity.name;
    PodDisruptionBudget {
        metadata: meta::child_meta(
            &pool.identity,
            meta::pdb_name(name),
            meta::pool_labels(name),
        ),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            min_available: None,
            selector: Some(LabelSelector {
                match_labels: Some(meta::pool_selector(name)),
                match_expressions: None,
            }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
        }),
        status: None,
    }
}
