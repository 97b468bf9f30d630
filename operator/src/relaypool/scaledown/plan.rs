//! The scale-down decision, pure: which replicas each StatefulSet gets, and what to do
//! about the one node that may be on its way out.
//!
//! A StatefulSet can only lose its highest ordinal, and a node's spool may hold the only
//! copy of a message (or, without replication, the only copy of everything it
//! accepted). So the StatefulSets' replicas follow what has been made safe, not the
//! spec: scale-up is applied at once, scale-down one node at a time over the whole pool,
//! each only after a pre-check (every other node ready, the replication factor and
//! `minDataCentres` still met without it) and a drain the node itself reports done.
//! Raising the replicas again during a drain takes it back.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use smtp_node::admin::QueueReport;

use crate::api::relay_pool::{ScaleDownPhase, ScaleDownStatus, reasons};

/// One data centre as it runs now and as the spec wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataCentreNow {
    pub name: String,
    pub statefulset: String,
    /// Replicas of its StatefulSet now (0 when there is none yet).
    pub current: i32,
    /// Replicas the spec asks for; `None` once the data centre is gone from the spec.
    pub wanted: Option<i32>,
}

/// One of the pool's pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNow {
    pub pod: String,
    pub ready: bool,
}

/// What the pool promises for every acknowledged message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guarantee {
    pub factor: usize,
    pub min_data_centres: usize,
}

/// The node a step is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub pod: String,
    pub data_centre: String,
    pub statefulset: String,
    pub ordinal: i32,
}

impl Target {
    fn of(dc: &DataCentreNow, ordinal: i32) -> Self {
        Self {
            pod: format!("{}-{ordinal}", dc.statefulset),
            data_centre: dc.name.clone(),
            statefulset: dc.statefulset.clone(),
            ordinal,
        }
    }

    fn from_status(status: &ScaleDownStatus) -> Self {
        Self {
            pod: status.pod.clone(),
            data_centre: status.data_centre.clone(),
            statefulset: status.stateful_set.clone(),
            ordinal: status.ordinal,
        }
    }
}

/// What to do this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Every data centre runs at most what it is asked for.
    Idle,
    /// Ask this node to drain (the pre-checks passed).
    Start(Target),
    /// The node is draining: ask it how far it is.
    Continue(Target),
    /// The StatefulSet was lowered past the node: once its pod is gone, delete its claim.
    Remove(Target),
    /// Its data centre got the replicas back: take the drain back, keep the node.
    Cancel(Target),
    /// `smtpfleet.io/force-scale-down` is set: the StatefulSets follow the spec without
    /// drains (claims are kept).
    Forced,
    /// A node should go but may not yet; the condition's reason and message.
    Blocked {
        reason: &'static str,
        message: String,
    },
}

/// The replicas for each StatefulSet (by name) and this round's step. A removed data
/// centre's StatefulSet is listed while it still has nodes: it must not be deleted yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub replicas: BTreeMap<String, i32>,
    pub step: Step,
}

/// Decides the replicas and the step from what runs, what the spec wants and the
/// scale-down in progress (from the pool's status).
pub fn plan(
    data_centres: &[DataCentreNow],
    nodes: &[NodeNow],
    guarantee: Guarantee,
    in_progress: Option<&ScaleDownStatus>,
    force: bool,
) -> Plan {
    let target_of = |dc: &DataCentreNow| dc.wanted.unwrap_or(0);
    let mut replicas: BTreeMap<String, i32> = data_centres
        .iter()
        .filter(|dc| dc.wanted.is_some() || dc.current > 0)
        .map(|dc| (dc.statefulset.clone(), dc.current.max(target_of(dc))))
        .collect();
    if force {
        let shrinking = data_centres.iter().any(|dc| dc.current > target_of(dc));
        for dc in data_centres {
            match dc.wanted {
                Some(wanted) => replicas.insert(dc.statefulset.clone(), wanted),
                None => replicas.remove(&dc.statefulset),
            };
        }
        let step = if shrinking || in_progress.is_some() {
            Step::Forced
        } else {
            Step::Idle
        };
        return Plan { replicas, step };
    }

    if let Some(status) = in_progress {
        let target = Target::from_status(status);
        let dc = data_centres
            .iter()
            .find(|dc| dc.statefulset == status.stateful_set);
        let wanted_back = dc.is_some_and(|dc| target_of(dc) > status.ordinal);
        let step = match (status.phase, dc) {
            // Its data centre wants the node again (or the StatefulSet vanished).
            _ if wanted_back => Step::Cancel(target),
            (_, None) => Step::Cancel(target),
            (ScaleDownPhase::Removing, Some(_)) => {
                replicas.insert(status.stateful_set.clone(), status.ordinal);
                Step::Remove(target)
            }
            // Still the highest ordinal: go on. Otherwise the StatefulSet was changed
            // behind the operator's back; start over from what runs.
            (ScaleDownPhase::Draining, Some(dc)) if dc.current == status.ordinal + 1 => {
                Step::Continue(target)
            }
            (ScaleDownPhase::Draining, Some(_)) => Step::Cancel(target),
        };
        return Plan { replicas, step };
    }

    let Some(dc) = data_centres.iter().find(|dc| dc.current > target_of(dc)) else {
        return Plan {
            replicas,
            step: Step::Idle,
        };
    };
    let target = Target::of(dc, dc.current - 1);
    let step = match pre_check(data_centres, nodes, guarantee, &target) {
        Ok(()) => Step::Start(target),
        Err(message) => Step::Blocked {
            reason: reasons::PRE_CHECK_FAILED,
            message,
        },
    };
    Plan { replicas, step }
}

/// `plan` with a drain that would start held back while a rolling update is in progress
/// (`rolling`): a node released for update may restart at any moment, and draining
/// another meanwhile would take two nodes of the pool away at once. A drain already
/// started goes on (the roll waits for it instead).
pub fn wait_for_roll(plan: Plan, rolling: bool) -> Plan {
    match plan.step {
        Step::Start(target) if rolling => Plan {
            step: Step::Blocked {
                reason: reasons::ROLLING_UPDATE_IN_PROGRESS,
                message: format!(
                    "{} is not drained while a rolling update is in progress: one node of the \
                     pool away at a time.",
                    target.pod
                ),
            },
            ..plan
        },
        step => Plan { step, ..plan },
    }
}

/// Whether `target` may start draining: every other node exists and is ready, and the
/// nodes left still place `factor` copies over `min_data_centres` data centres.
fn pre_check(
    data_centres: &[DataCentreNow],
    nodes: &[NodeNow],
    guarantee: Guarantee,
    target: &Target,
) -> Result<(), String> {
    let mut problems = Vec::new();
    let expected: Vec<String> = data_centres
        .iter()
        .flat_map(|dc| (0..dc.current).map(move |i| format!("{}-{i}", dc.statefulset)))
        .filter(|pod| *pod != target.pod)
        .collect();
    let not_ready: Vec<&str> = expected
        .iter()
        .filter(|pod| !nodes.iter().any(|n| n.pod == **pod && n.ready))
        .map(String::as_str)
        .collect();
    if !not_ready.is_empty() {
        problems.push(format!(
            "{} not ready (every other node must be ready before one is drained)",
            not_ready.join(", ")
        ));
    }
    let left = expected.len();
    if left < guarantee.factor {
        problems.push(format!(
            "{left} node(s) would be left for a replication factor of {}",
            guarantee.factor
        ));
    }
    let data_centres_left = data_centres
        .iter()
        .filter(|dc| dc.current - i32::from(dc.statefulset == target.statefulset) > 0)
        .count();
    if data_centres_left < guarantee.min_data_centres {
        problems.push(format!(
            "{data_centres_left} data centre(s) would be left for minDataCentres {}",
            guarantee.min_data_centres
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "Not removing {} yet: {}.",
            target.pod,
            problems.join("; ")
        ))
    }
}

/// What a draining node said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainAnswer {
    /// Nothing on the node is needed any more.
    Done,
    /// This many messages still need the node.
    Needed(usize),
    /// No answer; why.
    Unreachable(String),
}

impl DrainAnswer {
    /// Reads the node's answer to `/admin/drain`: its whole queue report, whose `drain`
    /// part says where the drain stands.
    pub fn of(report: &QueueReport) -> Self {
        if report.drain.done {
            Self::Done
        } else {
            Self::Needed(report.drain.needed)
        }
    }
}

/// How a drain stands, for the conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Lower the StatefulSet past the node.
    Drained,
    /// Wait; the ScalingDown message.
    Waiting(String),
    /// Wait, and say so loudly: ScaleDownBlocked with this reason and message.
    Stuck {
        reason: &'static str,
        message: String,
    },
}

/// Judges a drain's answer. An unreachable node or a drain past `timeout` blocks the
/// scale-down (the node is never removed with mail the pool needs); it goes on once the
/// node answers and is done.
pub fn progress(
    target: &Target,
    answer: &DrainAnswer,
    started_at: Timestamp,
    now: Timestamp,
    timeout: Duration,
) -> Progress {
    let elapsed = Duration::try_from(now.duration_since(started_at)).unwrap_or_default();
    let waited = format!("{} s", elapsed.as_secs());
    match answer {
        DrainAnswer::Done => Progress::Drained,
        DrainAnswer::Unreachable(why) => Progress::Stuck {
            reason: reasons::NODE_UNREACHABLE,
            message: format!(
                "{} does not answer its drain ({why}); it is kept until it does. Set the \
                 annotation smtpfleet.io/force-scale-down to remove it without a drain \
                 (its spool claim is kept).",
                target.pod
            ),
        },
        DrainAnswer::Needed(n) if elapsed > timeout => Progress::Stuck {
            reason: reasons::DRAIN_TIMEOUT,
            message: format!(
                "{} still holds {n} message(s) the pool needs after {waited} (timeout {} s); \
                 look at the node's deliveries and the other nodes' readiness.",
                target.pod,
                timeout.as_secs()
            ),
        },
        DrainAnswer::Needed(n) => Progress::Waiting(format!(
            "Draining {} before removing it: {n} message(s) still need it ({waited}).",
            target.pod
        )),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    /// The body a draining node answers, as `smtp-node` sends it: the drain's standing is
    /// inside its queue report, not at the top.
    #[test]
    fn a_drain_answer_is_read_from_the_nodes_queue_report() {
        let body = |done: bool, needed: usize| {
            format!(
                r#"{{"node":"rp-a-1","depth":0,"deferred":0,"oldestReceivedAt":null,"heldAsReplica":41,
                "underReplicated":0,"stale":0,"drain":{{"requested":true,"leaving":{done},"needed":{needed},"done":{done}}}}}"#
            )
        };
        let parse = |text: String| {
            let report: QueueReport =
                serde_json::from_str(&text).expect("the node's report parses");
            DrainAnswer::of(&report)
        };
        assert_eq!(parse(body(true, 0)), DrainAnswer::Done);
        assert_eq!(parse(body(false, 3)), DrainAnswer::Needed(3));
    }

    fn dc(name: &str, current: i32, wanted: Option<i32>) -> DataCentreNow {
        DataCentreNow {
            name: name.into(),
            statefulset: format!("p-{name}"),
            current,
            wanted,
        }
    }

    /// Every pod of `dcs`, ready unless named in `down`.
    fn nodes(dcs: &[DataCentreNow], down: &[&str]) -> Vec<NodeNow> {
        dcs.iter()
            .flat_map(|dc| (0..dc.current).map(move |i| format!("{}-{i}", dc.statefulset)))
            .map(|pod| NodeNow {
                ready: !down.contains(&pod.as_str()),
                pod,
            })
            .collect()
    }

    const TWO_IN_TWO: Guarantee = Guarantee {
        factor: 2,
        min_data_centres: 2,
    };

    fn status(pod: &str, dc: &str, ordinal: i32, phase: ScaleDownPhase) -> ScaleDownStatus {
        ScaleDownStatus {
            pod: pod.into(),
            data_centre: dc.into(),
            stateful_set: format!("p-{dc}"),
            ordinal,
            phase,
            started_at: Time(Timestamp::UNIX_EPOCH),
        }
    }

    fn target(dc: &str, ordinal: i32) -> Target {
        Target {
            pod: format!("p-{dc}-{ordinal}"),
            data_centre: dc.into(),
            statefulset: format!("p-{dc}"),
            ordinal,
        }
    }

    fn replicas(list: &[(&str, i32)]) -> BTreeMap<String, i32> {
        list.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn scale_up_is_at_once_and_scale_down_starts_with_the_highest_ordinal() {
        let dcs = [dc("east", 1, Some(3)), dc("west", 3, Some(2))];
        let plan = plan(&dcs, &nodes(&dcs, &[]), TWO_IN_TWO, None, false);
        assert_eq!(plan.replicas, replicas(&[("p-east", 3), ("p-west", 3)]));
        assert_eq!(plan.step, Step::Start(target("west", 2)));
    }

    #[test]
    fn nothing_to_remove_is_idle() {
        let dcs = [dc("east", 2, Some(2)), dc("new", 0, Some(1))];
        let plan = plan(&dcs, &nodes(&dcs, &[]), TWO_IN_TWO, None, false);
        assert_eq!(plan.replicas, replicas(&[("p-east", 2), ("p-new", 1)]));
        assert_eq!(plan.step, Step::Idle);
    }

    #[test]
    fn pre_checks_block_a_drain_and_say_why() {
        /// Name, data centres, pods not ready, guarantee, what the message says.
        type Case<'a> = (
            &'a str,
            Vec<DataCentreNow>,
            &'a [&'a str],
            Guarantee,
            &'a str,
        );
        let cases: [Case; 4] = [
            (
                "another node not ready",
                vec![dc("east", 2, Some(2)), dc("west", 3, Some(2))],
                &["p-east-1"],
                TWO_IN_TWO,
                "p-east-1 not ready",
            ),
            (
                "a node of another data centre not ready",
                vec![dc("east", 2, Some(2)), dc("west", 2, Some(1))],
                &["p-east-0"],
                TWO_IN_TWO,
                "p-east-0 not ready",
            ),
            (
                "too few nodes for the factor",
                vec![dc("east", 2, Some(1)), dc("west", 1, Some(1))],
                &[],
                Guarantee {
                    factor: 3,
                    min_data_centres: 1,
                },
                "2 node(s) would be left for a replication factor of 3",
            ),
            (
                "the last node of a needed data centre",
                vec![dc("east", 2, Some(2)), dc("west", 1, None)],
                &[],
                TWO_IN_TWO,
                "1 data centre(s) would be left for minDataCentres 2",
            ),
        ];
        for (name, dcs, down, guarantee, says) in cases {
            let plan = plan(&dcs, &nodes(&dcs, down), guarantee, None, false);
            match &plan.step {
                Step::Blocked { reason, message } => {
                    assert_eq!(*reason, reasons::PRE_CHECK_FAILED, "{name}");
                    assert!(message.contains(says), "{name}: {message}");
                }
                other => panic!("{name}: {other:?}"),
            }
            for dc in &dcs {
                assert_eq!(
                    plan.replicas.get(&dc.statefulset).copied(),
                    Some(dc.current.max(dc.wanted.unwrap_or(0))),
                    "{name}: nothing lowered while blocked"
                );
            }
        }
    }

    #[test]
    fn the_draining_node_itself_may_be_not_ready() {
        // A draining node answers /readyz with 503 to leave the client Service.
        let dcs = [dc("east", 2, Some(2)), dc("west", 3, Some(2))];
        let plan = plan(&dcs, &nodes(&dcs, &["p-west-2"]), TWO_IN_TWO, None, false);
        assert_eq!(plan.step, Step::Start(target("west", 2)));
    }

    #[test]
    fn a_removed_data_centre_is_drained_node_by_node_and_kept_until_empty() {
        let dcs = [
            dc("east", 1, Some(1)),
            dc("west", 1, Some(1)),
            dc("north", 2, None),
        ];
        let plan = plan(&dcs, &nodes(&dcs, &[]), TWO_IN_TWO, None, false);
        assert_eq!(
            plan.replicas,
            replicas(&[("p-east", 1), ("p-west", 1), ("p-north", 2)])
        );
        assert_eq!(plan.step, Step::Start(target("north", 1)));
        let gone = [dc("east", 1, Some(1)), dc("north", 0, None)];
        let plan = super::plan(&gone, &nodes(&gone, &[]), TWO_IN_TWO, None, false);
        assert_eq!(
            plan.replicas,
            replicas(&[("p-east", 1)]),
            "an empty removed data centre may be deleted"
        );
    }

    #[test]
    fn a_drain_in_progress_goes_on_is_cancelled_or_removes() {
        let dcs = [dc("east", 2, Some(2)), dc("west", 3, Some(2))];
        let all = nodes(&dcs, &[]);
        let draining = status("p-west-2", "west", 2, ScaleDownPhase::Draining);
        let plan1 = plan(&dcs, &all, TWO_IN_TWO, Some(&draining), false);
        assert_eq!(plan1.step, Step::Continue(target("west", 2)));
        assert_eq!(plan1.replicas["p-west"], 3, "not lowered while draining");

        let raised = [dc("east", 2, Some(2)), dc("west", 3, Some(3))];
        let plan2 = plan(&raised, &all, TWO_IN_TWO, Some(&draining), false);
        assert_eq!(plan2.step, Step::Cancel(target("west", 2)));
        assert_eq!(plan2.replicas["p-west"], 3);

        let removing = status("p-west-2", "west", 2, ScaleDownPhase::Removing);
        let plan3 = plan(&dcs, &all, TWO_IN_TWO, Some(&removing), false);
        assert_eq!(plan3.step, Step::Remove(target("west", 2)));
        assert_eq!(plan3.replicas["p-west"], 2, "stays lowered");
        let plan4 = plan(&raised, &all, TWO_IN_TWO, Some(&removing), false);
        assert_eq!(plan4.step, Step::Cancel(target("west", 2)), "wanted back");
        assert_eq!(plan4.replicas["p-west"], 3);

        let changed = [dc("east", 2, Some(2)), dc("west", 4, Some(2))];
        let plan5 = plan(
            &changed,
            &nodes(&changed, &[]),
            TWO_IN_TWO,
            Some(&draining),
            false,
        );
        assert_eq!(
            plan5.step,
            Step::Cancel(target("west", 2)),
            "no longer the highest ordinal"
        );
    }

    #[test]
    fn forcing_follows_the_spec_without_drains() {
        let dcs = [dc("east", 2, Some(1)), dc("north", 1, None)];
        let draining = status("p-east-1", "east", 1, ScaleDownPhase::Draining);
        let plan = plan(&dcs, &nodes(&dcs, &[]), TWO_IN_TWO, Some(&draining), true);
        assert_eq!(plan.replicas, replicas(&[("p-east", 1)]));
        assert_eq!(plan.step, Step::Forced);
        let steady = [dc("east", 1, Some(1))];
        let plan = super::plan(&steady, &nodes(&steady, &[]), TWO_IN_TWO, None, true);
        assert_eq!(plan.step, Step::Idle);
    }

    #[test]
    fn a_drain_is_judged_by_the_nodes_answer_and_its_age() {
        let t = target("west", 2);
        let start = Timestamp::from_second(1_000).expect("t");
        let at = |s: i64| Timestamp::from_second(1_000 + s).expect("t");
        let limit = Duration::from_secs(600);
        assert_eq!(
            progress(&t, &DrainAnswer::Done, start, at(5), limit),
            Progress::Drained
        );
        match progress(&t, &DrainAnswer::Needed(4), start, at(30), limit) {
            Progress::Waiting(m) => assert!(m.contains("4 message(s)"), "{m}"),
            other => panic!("{other:?}"),
        }
        match progress(&t, &DrainAnswer::Needed(4), start, at(601), limit) {
            Progress::Stuck { reason, message } => {
                assert_eq!(reason, reasons::DRAIN_TIMEOUT);
                assert!(message.contains("p-west-2"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        match progress(
            &t,
            &DrainAnswer::Unreachable("connection refused".into()),
            start,
            at(1),
            limit,
        ) {
            Progress::Stuck { reason, message } => {
                assert_eq!(reason, reasons::NODE_UNREACHABLE);
                assert!(message.contains("force-scale-down"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_drain_starts_while_a_roll_is_in_progress() {
        let dcs = [dc("west", 3, Some(2)), dc("east", 2, Some(2))];
        let planned = plan(&dcs, &nodes(&dcs, &[]), TWO_IN_TWO, None, false);
        assert!(matches!(planned.step, Step::Start(_)));
        let held = wait_for_roll(planned.clone(), true);
        assert_eq!(held.replicas, planned.replicas);
        assert!(matches!(
            held.step,
            Step::Blocked { reason, .. } if reason == reasons::ROLLING_UPDATE_IN_PROGRESS
        ));
        assert_eq!(wait_for_roll(planned.clone(), false), planned);
    }
}
