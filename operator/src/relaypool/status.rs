//! Pure status computation: observed StatefulSets, validation problems and the pool's
//! generation in; replica counts and the `Ready`, `Available`, `Progressing` and
//! `Degraded` conditions out. The controller writes the result with one status patch.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::conditions::{self, Computed, Status};
use super::model::Pool;
use super::validate::Problem;
use crate::api::relay_pool::condition_types::{AVAILABLE, DEGRADED, PROGRESSING, READY};
use crate::api::relay_pool::{DataCentreStatus, RelayPoolStatus, reasons};

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
}

/// Computes the status of `pool` from the observations and validation problems.
pub fn compute(
    pool: &Pool,
    observed: Vec<DataCentreObservation>,
    problems: &[Problem],
) -> ComputedStatus {
    let replicas: i32 = observed.iter().map(|o| o.replicas).sum();
    let ready: i32 = observed.iter().map(|o| o.ready).sum();
    let rolling: Vec<&DataCentreObservation> = observed.iter().filter(|o| !o.rolled_out).collect();
    let short: Vec<&DataCentreObservation> =
        observed.iter().filter(|o| o.ready < o.replicas).collect();

    let progressing = if rolling.is_empty() {
        Computed::new(
            PROGRESSING,
            Status::False,
            reasons::UP_TO_DATE,
            format!(
                "All {} data centre(s) run the latest pod template with the desired replicas.",
                observed.len()
            ),
        )
    } else {
        Computed::new(
            PROGRESSING,
            Status::True,
            reasons::ROLLING_OUT,
            format!(
                "Rolling out data centre(s) {}; {ready} of {replicas} replicas ready.",
                names(&rolling)
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
    } else if rolling.is_empty() && !short.is_empty() {
        Computed::new(
            DEGRADED,
            Status::True,
            reasons::REPLICAS_NOT_READY,
            format!(
                "Not every replica is ready although no rollout is in progress: {}. \
                 Check the pods with `kubectl describe pod -l smtpfleet.io/pool={}`.",
                short
                    .iter()
                    .map(|o| format!(
                        "data centre {:?} has {} of {} ready",
                        o.name, o.ready, o.replicas
                    ))
                    .collect::<Vec<_>>()
                    .join(", "),
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
        conditions: conditions::merge(&previous.conditions, computed.conditions, generation, now),
    }
}

/// Body of the merge patch on `/status`: only the fields this controller owns, so that
/// a concurrent writer of `queue` or `certificate` is never overwritten.
pub fn patch_body(status: &RelayPoolStatus) -> serde_json::Value {
    serde_json::json!({
        "status": {
            "observedGeneration": status.observed_generation,
            "replicas": status.replicas,
            "readyReplicas": status.ready_replicas,
            "dataCentres": status.data_centres,
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
        let status = compute(&pool, observed, &[]);
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
    fn some_not_ready_without_rollout_is_degraded_and_names_the_data_centre() {
        let pool = pool(&[("a", 2), ("b", 2)]);
        let observed = observe_all(
            &pool,
            &[
                sts("a", StsState::settled(2, 2)),
                sts("b", StsState::settled(2, 1)),
            ],
        );
        let status = compute(&pool, observed, &[]);
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
    fn rollout_in_progress_is_progressing_not_degraded() {
        let pool = pool(&[("a", 3)]);
        let rolling = StsState {
            updated: 1,
            same_revision: false,
            ready: 2,
            ..StsState::settled(3, 3)
        };
        let status = compute(&pool, observe_all(&pool, &[sts("a", rolling)]), &[]);
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
        let status = compute(&pool, observe_all(&pool, &[]), &[]);
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
            compute(&pool, observed(), &[]),
            Some(1),
            &t(100),
        );
        first.queue = Some(QueueStatus {
            depth: 7,
            oldest_seconds: Some(3),
            replication_healthy: true,
        });
        let second = to_status(&first, compute(&pool, observed(), &[]), Some(2), &t(200));
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
        let body = patch_body(&second);
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
        let status = compute(&pool, one_dc, &[]);
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
            condition(&compute(&pool, two_dcs, &[]), AVAILABLE).status,
            Status::True
        );
    }
}
