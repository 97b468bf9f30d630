//! Pure status computation: observed StatefulSets, validation problems and the pool's
//! generation in; replica counts and the `Ready`, `Available`, `Progressing` and
//! `Degraded` conditions out. The controller writes the result with one status patch.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::build::node_config;
use super::conditions::{self, Computed, Status};
use super::model::Pool;
use super::validate::Problem;
use crate::api::relay_pool::condition_types::{AVAILABLE, DEGRADED, PROGRESSING, READY};
use crate::api::relay_pool::{DataCentreStatus, RelayPoolStatus, reasons};

/// Progressing reason: rolled out, pods still starting (within [`NOT_READY_GRACE`]).
pub const WAITING_FOR_REPLICAS: &str = "WaitingForReplicas";

/// What was observed of one data centre.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataCentreObservation {
    /// Data centre name.
    pub name: String,
    /// Desired replicas.
    pub replicas: i32,
    /// Ready pods.
    pub ready: i32,
    /// The StatefulSet controller has caught up with the latest spec and every pod runs
    /// the latest template.
    pub rolled_out: bool,
}

/// Observes one data centre from its StatefulSet (`None` when it does not exist yet).
pub fn observe(name: &str, desired: i32, sts: Option<&StatefulSet>) -> DataCentreObservation {
    let status = sts.and_then(|s| s.status.as_ref());
    let ready = status.and_then(|s| s.ready_replicas).unwrap_or(0);
    let rolled_out = match (sts, status) {
        (Some(sts), Some(status)) => {
            let generation_seen = match (status.observed_generation, sts.metadata.generation) {
                (Some(seen), Some(generation)) => seen >= generation,
                (_, None) => true,
                (None, Some(_)) => false,
            };
            let on_latest_revision = match (&status.current_revision, &status.update_revision) {
                (Some(current), Some(update)) => current == update,
                _ => true,
            };
            generation_seen
                && status.replicas == desired
                && status.updated_replicas.unwrap_or(0) == desired
                && on_latest_revision
        }
        _ => desired == 0 && sts.is_some(),
    };
    DataCentreObservation {
        name: name.to_owned(),
        replicas: desired,
        ready,
        rolled_out,
    }
}

/// Observes every data centre of `pool` from the StatefulSets the API server returned.
pub fn observe_all(pool: &Pool, statefulsets: &[StatefulSet]) -> Vec<DataCentreObservation> {
    pool.data_centres
        .iter()
        .map(|dc| {
            let name = super::build::meta::statefulset_name(&pool.identity.name, &dc.name);
            let sts = statefulsets
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(name.as_str()));
            observe(&dc.name, dc.replicas, sts)
        })
        .collect()
}

/// The computed status, before it is merged with the previous conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputedStatus {
    /// Desired replicas over all data centres.
    pub replicas: i32,
    /// Ready replicas over all data centres.
    pub ready_replicas: i32,
    /// Per data centre, in spec order.
    pub data_centres: Vec<DataCentreObservation>,
    /// The four conditions this controller owns.
    pub conditions: Vec<Computed>,
    /// When the status may change without any object changing (the grace for starting
    /// pods runs out): reconcile again by then.
    pub recheck_in: Option<Duration>,
}

/// How long pods may stay not ready after the StatefulSets have rolled out before the
/// pool is reported `Degraded`: starting pods (image pulls, spool recovery) are
/// progress, not a problem. Ten minutes, like a Deployment's default progress deadline.
pub const NOT_READY_GRACE: Duration = Duration::from_secs(10 * 60);

/// How long the pool has not been fully ready, from the previous `Ready` condition:
/// zero when it was ready (or had no status yet), otherwise the time since `Ready`
/// turned false.
pub fn not_ready_for(previous: &[Condition], now: &Time) -> Duration {
    crate::api::conditions::find(previous, READY)
        .filter(|c| c.status != Status::True.as_str())
        .map(|c| {
            let elapsed = now.0.duration_since(c.last_transition_time.0);
            Duration::try_from(elapsed).unwrap_or(Duration::ZERO)
        })
        .unwrap_or(Duration::ZERO)
}

/// Computes the status of `pool` from the observations and validation problems.
/// `not_ready_for` (see [`not_ready_for`]) tells pods that are still starting from pods
/// that do not come up.
pub fn compute(
    pool: &Pool,
    observed: Vec<DataCentreObservation>,
    problems: &[Problem],
    not_ready_for: Duration,
) -> ComputedStatus {
    let replicas: i32 = observed.iter().map(|o| o.replicas).sum();
    let ready: i32 = observed.iter().map(|o| o.ready).sum();
    let rolling: Vec<&DataCentreObservation> = observed.iter().filter(|o| !o.rolled_out).collect();
    let short: Vec<&DataCentreObservation> =
        observed.iter().filter(|o| o.ready < o.replicas).collect();
    let waiting = rolling.is_empty() && !short.is_empty() && not_ready_for < NOT_READY_GRACE;
    let shortfall = || {
        short
            .iter()
            .map(|o| {
                format!(
                    "data centre {:?} has {} of {} ready",
                    o.name, o.ready, o.replicas
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };

    let progressing = if !rolling.is_empty() {
        Computed::new(
            PROGRESSING,
            Status::True,
            reasons::ROLLING_OUT,
            format!(
                "Rolling out data centre(s) {}; {ready} of {replicas} replicas ready.",
                names(&rolling)
            ),
        )
    } else if waiting {
        Computed::new(
            PROGRESSING,
            Status::True,
            WAITING_FOR_REPLICAS,
            format!(
                "Waiting for pods to become ready: {}. The pool is reported Degraded if this lasts {}.",
                shortfall(),
                node_config::format_duration(NOT_READY_GRACE)
            ),
        )
    } else {
        Computed::new(
            PROGRESSING,
            Status::False,
            reasons::UP_TO_DATE,
            format!(
                "All {} data centre(s) run the latest pod template with the desired replicas.",
                observed.len()
            ),
        )
    };

    let available = available(pool, &observed, ready);

    let degraded = if !problems.is_empty() {
        Computed::new(
            DEGRADED,
            Status::True,
            problems[0].reason,
            join_messages(problems),
        )
    } else if rolling.is_empty() && !short.is_empty() && !waiting {
        Computed::new(
            DEGRADED,
            Status::True,
            reasons::REPLICAS_NOT_READY,
            format!(
                "Pods have not become ready within {} although no rollout is in progress: {}. \
                 Check them with `kubectl describe pod -l smtpfleet.io/pool={}`.",
                node_config::format_duration(NOT_READY_GRACE),
                shortfall(),
                pool.identity.name
            ),
        )
    } else {
        Computed::new(
            DEGRADED,
            Status::False,
            reasons::AS_EXPECTED,
            "No problem detected.",
        )
    };

    let blocking: Vec<Problem> = problems
        .iter()
        .filter(|p| p.blocks_ready)
        .cloned()
        .collect();
    let ready_condition = if let Some(first) = blocking.first() {
        Computed::new(READY, Status::False, first.reason, join_messages(&blocking))
    } else if !rolling.is_empty() {
        Computed::new(
            READY,
            Status::False,
            reasons::ROLLING_OUT,
            format!(
                "Waiting for the rollout of data centre(s) {}: {ready} of {replicas} replicas ready.",
                names(&rolling)
            ),
        )
    } else if ready < replicas {
        Computed::new(
            READY,
            Status::False,
            reasons::REPLICAS_NOT_READY,
            format!("{ready} of {replicas} replicas ready."),
        )
    } else {
        Computed::new(
            READY,
            Status::True,
            reasons::ALL_REPLICAS_READY,
            format!(
                "All {replicas} replicas ready in {} data centre(s).",
                observed.len()
            ),
        )
    };

    ComputedStatus {
        replicas,
        ready_replicas: ready,
        data_centres: observed,
        conditions: vec![ready_condition, available, progressing, degraded],
        recheck_in: waiting.then(|| NOT_READY_GRACE.saturating_sub(not_ready_for)),
    }
}

/// Available when an accepting node can find `replicationFactor - 1` ready peers
/// spread over `minDataCentres` data centres: below that, nodes answer 451 to every
/// message, so the pool is up but not serving.
fn available(pool: &Pool, observed: &[DataCentreObservation], ready: i32) -> Computed {
    let needed_replicas = i32::try_from(pool.queue.replication_factor.max(1)).unwrap_or(i32::MAX);
    let needed_dcs = usize::try_from(pool.queue.min_data_centres.max(1)).unwrap_or(usize::MAX);
    let ready_dcs = observed.iter().filter(|o| o.ready > 0).count();
    if ready >= needed_replicas && ready_dcs >= needed_dcs {
        Computed::new(
            AVAILABLE,
            Status::True,
            reasons::MINIMUM_REPLICAS_AVAILABLE,
            format!(
                "{ready} replica(s) ready in {ready_dcs} data centre(s); accepting mail needs {needed_replicas} in {needed_dcs}."
            ),
        )
    } else {
        Computed::new(
            AVAILABLE,
            Status::False,
            if ready >= needed_replicas {
                reasons::INSUFFICIENT_DATA_CENTRES
            } else {
                reasons::INSUFFICIENT_REPLICAS
            },
            format!(
                "Only {ready} replica(s) ready in {ready_dcs} data centre(s); accepting mail needs \
                 {needed_replicas} (spec.queue.replicationFactor) in {needed_dcs} \
                 (spec.queue.minDataCentres), so nodes answer 451 until then."
            ),
        )
    }
}

/// The status to write: the computed counts, and the computed conditions merged into
/// the previous ones (transition times kept where the status did not change).
/// `queue` and `certificate` are reported by other parts of the operator and kept.
pub fn to_status(
    previous: &RelayPoolStatus,
    computed: ComputedStatus,
    generation: Option<i64>,
    now: &Time,
) -> RelayPoolStatus {
    RelayPoolStatus {
        observed_generation: generation,
        replicas: computed.replicas,
        ready_replicas: computed.ready_replicas,
        data_centres: computed
            .data_centres
            .iter()
            .map(|o| DataCentreStatus {
                name: o.name.clone(),
                replicas: o.replicas,
                ready: o.ready,
            })
            .collect(),
        queue: previous.queue.clone(),
        certificate: previous.certificate.clone(),
        autoscaling: previous.autoscaling.clone(),
        scale_down: previous.scale_down.clone(),
        conditions: conditions::merge(&previous.conditions, computed.conditions, generation, now),
    }
}

/// Body of the merge patch on `/status`: only the fields this controller owns, so that
/// a concurrent writer of `queue` or `certificate` is never overwritten.
pub fn patch_body(status: &RelayPoolStatus, resource_version: Option<String>) -> serde_json::Value {
    serde_json::json!({
        "metadata": { "resourceVersion": resource_version },
        "status": {
            "observedGeneration": status.observed_generation,
            "replicas": status.replicas,
            "readyReplicas": status.ready_replicas,
            "dataCentres": status.data_centres,
            "autoscaling": status.autoscaling,
            "scaleDown": status.scale_down,
            "conditions": status.conditions,
        }
    })
}

fn names(observations: &[&DataCentreObservation]) -> String {
    observations
        .iter()
        .map(|o| format!("{:?}", o.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn join_messages(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| p.message.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relaypool::testing::{StsState, pool, sts};

    fn condition<'a>(status: &'a ComputedStatus, type_: &str) -> &'a Computed {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition"))
    }

    fn summary(status: &ComputedStatus) -> Vec<(&'static str, Status, &'static str)> {
        status
            .conditions
            .iter()
            .map(|c| (c.type_, c.status, c.reason))
            .collect()
    }

    #[test]
    fn all_ready_pool_is_ready_available_and_settled() {
        let pool = pool(&[("a", 2), ("b", 1)]);
        let observed = observe_all(
            &pool,
            &[
                sts("a", StsState::settled(2, 2)),
                sts("b", StsState::settled(1, 1)),
            ],
        );
        let status = compute(&pool, observed, &[], Duration::ZERO);
        assert_eq!((status.replicas, status.ready_replicas), (3, 3));
        assert_eq!(
            status.data_centres,
            vec![
                DataCentreObservation {
                    name: "a".into(),
                    replicas: 2,
                    ready: 2,
                    rolled_out: true
                },
                DataCentreObservation {
                    name: "b".into(),
                    replicas: 1,
                    ready: 1,
                    rolled_out: true
                },
            ]
        );
        assert_eq!(
            summary(&status),
            vec![
                (READY, Status::True, "AllReplicasReady"),
                (AVAILABLE, Status::True, "MinimumReplicasAvailable"),
                (PROGRESSING, Status::False, "UpToDate"),
                (DEGRADED, Status::False, "AsExpected"),
            ]
        );
    }

    #[test]
    fn pods_not_ready_after_the_grace_are_degraded_naming_the_data_centre() {
        let pool = pool(&[("a", 2), ("b", 2)]);
        let observed = observe_all(
            &pool,
            &[
                sts("a", StsState::settled(2, 2)),
                sts("b", StsState::settled(2, 1)),
            ],
        );
        let status = compute(&pool, observed, &[], NOT_READY_GRACE);
        assert_eq!(status.recheck_in, None);
        assert_eq!((status.replicas, status.ready_replicas), (4, 3));
        assert_eq!(
            summary(&status),
            vec![
                (READY, Status::False, "ReplicasNotReady"),
                (AVAILABLE, Status::True, "MinimumReplicasAvailable"),
                (PROGRESSING, Status::False, "UpToDate"),
                (DEGRADED, Status::True, "ReplicasNotReady"),
            ]
        );
        let message = &condition(&status, DEGRADED).message;
        assert!(
            message.contains("data centre \"b\" has 1 of 2 ready"),
            "{message}"
        );
        assert!(!message.contains("\"a\""), "{message}");
        assert_eq!(condition(&status, READY).message, "3 of 4 replicas ready.");
    }

    #[test]
    fn pods_still_starting_after_a_rollout_are_progress_not_a_problem() {
        let pool = pool(&[("a", 2), ("b", 2)]);
        let observed = || {
            observe_all(
                &pool,
                &[
                    sts("a", StsState::settled(2, 2)),
                    sts("b", StsState::settled(2, 1)),
                ],
            )
        };
        let status = compute(&pool, observed(), &[], Duration::from_secs(60));
        assert_eq!(
            summary(&status),
            vec![
                (READY, Status::False, "ReplicasNotReady"),
                (AVAILABLE, Status::True, "MinimumReplicasAvailable"),
                (PROGRESSING, Status::True, "WaitingForReplicas"),
                (DEGRADED, Status::False, "AsExpected"),
            ]
        );
        assert!(
            condition(&status, PROGRESSING)
                .message
                .contains("\"b\" has 1 of 2 ready")
        );
        // Look again when the grace runs out, even if nothing changes.
        assert_eq!(
            status.recheck_in,
            Some(NOT_READY_GRACE - Duration::from_secs(60))
        );
        // One second short of the grace: still waiting. At the grace: degraded.
        let almost = compute(
            &pool,
            observed(),
            &[],
            NOT_READY_GRACE - Duration::from_secs(1),
        );
        assert_eq!(condition(&almost, DEGRADED).status, Status::False);
        let late = compute(&pool, observed(), &[], NOT_READY_GRACE);
        assert_eq!(condition(&late, DEGRADED).status, Status::True);
    }

    #[test]
    fn time_not_ready_is_measured_from_the_ready_condition() {
        use k8s_openapi::jiff::Timestamp;
        let t = |s| Time(Timestamp::from_second(s).unwrap());
        let ready = |status: &str, at| Condition {
            type_: READY.into(),
            status: status.into(),
            reason: "R".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: t(at),
        };
        assert_eq!(not_ready_for(&[], &t(1000)), Duration::ZERO);
        assert_eq!(
            not_ready_for(&[ready("True", 100)], &t(1000)),
            Duration::ZERO
        );
        assert_eq!(
            not_ready_for(&[ready("False", 100)], &t(1000)),
            Duration::from_secs(900)
        );
        assert_eq!(
            not_ready_for(&[ready("False", 2000)], &t(1000)),
            Duration::ZERO
        );
    }

    #[test]
    fn rollout_in_progress_is_progressing_not_degraded() {
        let pool = pool(&[("a", 3)]);
        let rolling = StsState {
            updated: 1,
            same_revision: false,
            ready: 2,
            ..StsState::settled(3, 3)
        };
        let status = compute(
            &pool,
            observe_all(&pool, &[sts("a", rolling)]),
            &[],
            Duration::ZERO,
        );
        assert_eq!(
            summary(&status),
            vec![
                (READY, Status::False, "RollingOut"),
                (AVAILABLE, Status::True, "MinimumReplicasAvailable"),
                (PROGRESSING, Status::True, "RollingOut"),
                (DEGRADED, Status::False, "AsExpected"),
            ]
        );
        assert!(condition(&status, PROGRESSING).message.contains("\"a\""));
    }

    #[test]
    fn scaling_and_unobserved_generations_count_as_rollouts() {
        let pool = pool(&[("a", 3)]);
        let scaling = StsState::settled(2, 2);
        assert!(!observe("a", 3, Some(&sts("a", scaling))).rolled_out);
        let unobserved = StsState {
            generation: 2,
            ..StsState::settled(3, 3)
        };
        assert!(!observe("a", 3, Some(&sts("a", unobserved))).rolled_out);
        assert!(observe("a", 3, Some(&sts("a", StsState::settled(3, 3)))).rolled_out);
        let status = compute(&pool, observe_all(&pool, &[]), &[], Duration::ZERO);
        assert_eq!(condition(&status, PROGRESSING).status, Status::True);
        assert_eq!(condition(&status, AVAILABLE).status, Status::False);
        assert_eq!(status.ready_replicas, 0);
    }

    #[test]
    fn missing_secret_is_degraded_and_not_ready_with_the_secret_named() {
        let pool = pool(&[("a", 2)]);
        let problem = Problem {
            blocks_ready: true,
            reason: "SecretNotFound",
            message: "Secret \"smtp-tls\" referenced by spec.tls.secretName not found in namespace \"mail\".".into(),
        };
        let status = compute(
            &pool,
            observe_all(&pool, &[sts("a", StsState::settled(2, 0))]),
            std::slice::from_ref(&problem),
            Duration::ZERO,
        );
        let degraded = condition(&status, DEGRADED);
        assert_eq!(
            (degraded.status, degraded.reason),
            (Status::True, "SecretNotFound")
        );
        assert_eq!(degraded.message, problem.message);
        let ready = condition(&status, READY);
        assert_eq!(
            (ready.status, ready.reason),
            (Status::False, "SecretNotFound")
        );
    }

    #[test]
    fn warnings_degrade_without_making_a_serving_pool_unready() {
        let pool = pool(&[("a", 2)]);
        let warning = Problem::warning(
            "InvalidSpec",
            "spec.listeners.submission and spec.listeners.implicitTls need spec.relay.authSecretRef.",
        );
        let status = compute(
            &pool,
            observe_all(&pool, &[sts("a", StsState::settled(2, 2))]),
            std::slice::from_ref(&warning),
            Duration::ZERO,
        );
        let degraded = condition(&status, DEGRADED);
        assert_eq!(
            (degraded.status, degraded.reason),
            (Status::True, "InvalidSpec")
        );
        assert_eq!(condition(&status, READY).status, Status::True);
    }

    #[test]
    fn status_keeps_transition_times_and_foreign_fields() {
        use crate::api::relay_pool::QueueStatus;
        use k8s_openapi::jiff::Timestamp;

        let pool = pool(&[("a", 1)]);
        let t = |s| Time(Timestamp::from_second(s).unwrap());
        let observed = || observe_all(&pool, &[sts("a", StsState::settled(1, 1))]);
        let mut first = to_status(
            &RelayPoolStatus::default(),
            compute(&pool, observed(), &[], Duration::ZERO),
            Some(1),
            &t(100),
        );
        first.queue = Some(QueueStatus {
            depth: 7,
            deferred: 3,
            ..QueueStatus::default()
        });
        let second = to_status(
            &first,
            compute(&pool, observed(), &[], Duration::ZERO),
            Some(2),
            &t(200),
        );
        assert_eq!(second.queue, first.queue);
        assert_eq!(second.observed_generation, Some(2));
        assert!(
            second
                .conditions
                .iter()
                .all(|c| c.last_transition_time == t(100))
        );
        assert!(
            second
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(2))
        );
        assert_eq!(
            second.data_centres,
            vec![DataCentreStatus {
                name: "a".into(),
                replicas: 1,
                ready: 1
            }]
        );
        let body = patch_body(&second, Some("7".into()));
        assert_eq!(body["metadata"]["resourceVersion"], "7");
        assert_eq!(body["status"]["readyReplicas"], 1);
        assert_eq!(body["status"]["observedGeneration"], 2);
        assert!(body["status"].get("queue").is_none(), "{body}");
        assert_eq!(body["status"]["conditions"][0]["type"], "Ready");
        assert_eq!(
            body["status"]["conditions"][0]["lastTransitionTime"],
            "1970-01-01T00:01:40Z"
        );
    }

    #[test]
    fn availability_needs_replication_factor_nodes_over_min_data_centres() {
        let mut pool = pool(&[("a", 2), ("b", 2)]);
        pool.queue.replication_factor = 2;
        pool.queue.min_data_centres = 2;
        let one_dc = observe_all(
            &pool,
            &[
                sts("a", StsState::settled(2, 2)),
                sts("b", StsState::settled(2, 0)),
            ],
        );
        let status = compute(&pool, one_dc, &[], Duration::ZERO);
        let available = condition(&status, AVAILABLE);
        assert_eq!(
            (available.status, available.reason),
            (Status::False, "InsufficientDataCentres")
        );
        assert!(
            available.message.contains("minDataCentres"),
            "{}",
            available.message
        );
        let two_dcs = observe_all(
            &pool,
            &[
                sts("a", StsState::settled(2, 1)),
                sts("b", StsState::settled(2, 1)),
            ],
        );
        assert_eq!(
            condition(&compute(&pool, two_dcs, &[], Duration::ZERO), AVAILABLE).status,
            Status::True
        );
    }
}
