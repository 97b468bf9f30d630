//! Table tests of the roll decision: each case is a pool as observed, and what the
//! operator must do with its partitions.

use super::*;

/// The revision the pods ran before the change.
const R1: &str = "r1";
const R2: &str = "r2";

/// A data centre mid-roll: `replicas` nodes, partition `partition`, the StatefulSet
/// controller caught up on revision r2, `updated` pods on it.
fn dc(name: &str, replicas: i32, partition: i32, updated: i32) -> DataCentreNow {
    DataCentreNow {
        data_centre: name.to_owned(),
        statefulset: format!("pool-{name}"),
        replicas,
        template_changed: false,
        existing: Some(Existing {
            replicas,
            partition,
            observed: true,
            update_revision: Some(R2.to_owned()),
            updated_replicas: updated,
        }),
    }
}

/// Ready pods of `dc`, ordinals `0..replicas`, those at or above `from` on r2.
fn pods(dc: &str, replicas: i32, from: i32) -> Vec<PodNow> {
    (0..replicas)
        .map(|ordinal| PodNow {
            name: format!("pool-{dc}-{ordinal}"),
            statefulset: format!("pool-{dc}"),
            ordinal,
            ready: true,
            revision: Some(if ordinal >= from { R2 } else { R1 }.to_owned()),
        })
        .collect()
}

fn partitions(list: &[(&str, i32)]) -> BTreeMap<String, i32> {
    list.iter()
        .map(|(name, p)| ((*name).to_owned(), *p))
        .collect()
}

fn reason(decision: &Decision) -> &'static str {
    match &decision.phase {
        Phase::Waiting { reason, .. } => reason,
        other => panic!("not waiting: {other:?}"),
    }
}

#[test]
fn nothing_to_roll_keeps_every_partition_at_zero_without_reading_nodes() {
    let dcs = [dc("a", 2, 0, 2), dc("b", 1, 0, 1)];
    assert!(!needs_nodes(&dcs));
    let decision = decide(&dcs, &[], &QueueHealth::Standalone, false);
    assert_eq!(decision.phase, Phase::Idle);
    assert_eq!(
        decision.partitions,
        partitions(&[("pool-a", 0), ("pool-b", 0)])
    );
}

#[test]
fn a_new_statefulset_starts_with_partition_zero() {
    let new = DataCentreNow {
        existing: None,
        template_changed: true,
        ..dc("a", 3, 0, 0)
    };
    let decision = decide(&[new], &[], &QueueHealth::Standalone, false);
    assert_eq!(decision.phase, Phase::Idle);
    assert_eq!(decision.partitions, partitions(&[("pool-a", 0)]));
}

#[test]
fn a_template_change_holds_every_existing_node() {
    let mut a = dc("a", 2, 0, 2);
    a.template_changed = true;
    let mut b = dc("b", 1, 0, 1);
    b.template_changed = true;
    // Scaled up in the same pass: the new node sits above the partition.
    b.replicas = 2;
    let decision = decide(&[a, b], &[], &QueueHealth::Standalone, false);
    assert_eq!(
        decision.partitions,
        partitions(&[("pool-a", 2), ("pool-b", 1)])
    );
    assert_eq!(
        decision.phase,
        Phase::Held {
            statefulsets: vec!["pool-a".into(), "pool-b".into()]
        }
    );
}

#[test]
fn the_first_node_is_the_highest_ordinal_of_the_first_data_centre() {
    let dcs = [dc("a", 2, 2, 0), dc("b", 1, 1, 0)];
    assert!(needs_nodes(&dcs));
    let all = [pods("a", 2, 2), pods("b", 1, 1)].concat();
    let decision = decide(&dcs, &all, &QueueHealth::Replicated, false);
    assert_eq!(
        decision.partitions,
        partitions(&[("pool-a", 1), ("pool-b", 1)])
    );
    assert_eq!(
        decision.phase,
        Phase::Released(Release {
            pod: "pool-a-1".into(),
            data_centre: "a".into(),
            statefulset: "pool-a".into(),
            ordinal: 1,
            revision: R2.into(),
        })
    );
}

#[test]
fn the_next_data_centre_starts_once_the_first_is_done() {
    let dcs = [dc("a", 2, 0, 2), dc("b", 2, 2, 0)];
    let all = [pods("a", 2, 0), pods("b", 2, 2)].concat();
    let decision = decide(&dcs, &all, &QueueHealth::Replicated, false);
    assert_eq!(
        decision.partitions,
        partitions(&[("pool-a", 0), ("pool-b", 1)])
    );
    assert!(matches!(decision.phase, Phase::Released(ref r) if r.pod == "pool-b-1"));
}

#[test]
fn a_released_node_still_on_the_old_revision_is_waited_for() {
    // Partition lowered to 1 last pass; pod 1 has not been replaced yet.
    let dcs = [dc("a", 2, 1, 0)];
    let decision = decide(&dcs, &pods("a", 2, 2), &QueueHealth::Replicated, false);
    assert_eq!(reason(&decision), reasons::UPDATING_NODE);
    assert_eq!(decision.partitions, partitions(&[("pool-a", 1)]));
}

#[test]
fn no_node_is_released_while_one_is_not_ready() {
    let dcs = [dc("a", 2, 1, 1), dc("b", 1, 1, 0)];
    let mut all = [pods("a", 2, 1), pods("b", 1, 1)].concat();
    all[1].ready = false;
    let decision = decide(&dcs, &all, &QueueHealth::Replicated, false);
    assert_eq!(reason(&decision), reasons::WAITING_FOR_READINESS);
    assert_eq!(
        decision.partitions,
        partitions(&[("pool-a", 1), ("pool-b", 1)])
    );
    // A missing pod is not ready either.
    all.remove(1);
    let decision = decide(&dcs, &all, &QueueHealth::Replicated, false);
    assert_eq!(reason(&decision), reasons::WAITING_FOR_READINESS);
    assert!(
        matches!(&decision.phase, Phase::Waiting { message, .. } if message.contains("pool-a-1"))
    );
}

#[test]
fn no_node_is_released_while_messages_lack_copies() {
    let dcs = [dc("a", 2, 1, 1)];
    let decision = decide(
        &dcs,
        &pods("a", 2, 1),
        &QueueHealth::UnderReplicated(7),
        false,
    );
    assert_eq!(reason(&decision), reasons::WAITING_FOR_REPLICATION);
    assert!(matches!(&decision.phase, Phase::Waiting { message, .. } if message.contains('7')));
    assert_eq!(decision.partitions, partitions(&[("pool-a", 1)]));
}

#[test]
fn a_node_that_does_not_answer_closes_the_gate() {
    let dcs = [dc("a", 2, 1, 1)];
    let decision = decide(
        &dcs,
        &pods("a", 2, 1),
        &QueueHealth::Unanswered(vec!["pool-a-0".into()]),
        false,
    );
    assert_eq!(reason(&decision), reasons::NODE_NOT_ANSWERING);
    assert_eq!(decision.partitions, partitions(&[("pool-a", 1)]));
}

#[test]
fn a_standalone_pool_is_gated_on_readiness_only() {
    let dcs = [dc("a", 2, 1, 1)];
    let decision = decide(&dcs, &pods("a", 2, 1), &QueueHealth::Standalone, false);
    assert!(matches!(decision.phase, Phase::Released(ref r) if r.ordinal == 0));
    assert_eq!(decision.partitions, partitions(&[("pool-a", 0)]));
}

#[test]
fn the_statefulset_status_must_have_caught_up() {
    let mut a = dc("a", 2, 1, 1);
    a.existing.as_mut().unwrap().observed = false;
    let decision = decide(&[a], &pods("a", 2, 1), &QueueHealth::Replicated, false);
    assert_eq!(reason(&decision), reasons::WAITING_FOR_STATEFUL_SET);
    // updatedReplicas lagging behind the pods' labels.
    let decision = decide(
        &[dc("a", 2, 1, 0)],
        &pods("a", 2, 1),
        &QueueHealth::Replicated,
        false,
    );
    assert_eq!(reason(&decision), reasons::WAITING_FOR_STATEFUL_SET);
}

#[test]
fn a_data_centre_added_mid_roll_starts_at_zero_and_is_waited_for() {
    let added = DataCentreNow {
        existing: None,
        template_changed: true,
        ..dc("c", 1, 0, 0)
    };
    let dcs = [dc("a", 2, 1, 1), added];
    let all = pods("a", 2, 1);
    let decision = decide(&dcs, &all, &QueueHealth::Replicated, false);
    assert_eq!(reason(&decision), reasons::WAITING_FOR_READINESS);
    assert_eq!(
        decision.partitions,
        partitions(&[("pool-a", 1), ("pool-c", 0)])
    );
    // Once its node is ready, the roll goes on.
    let mut all = all;
    all.push(PodNow {
        name: "pool-c-0".into(),
        statefulset: "pool-c".into(),
        ordinal: 0,
        ready: true,
        revision: Some(R2.into()),
    });
    let decision = decide(&dcs, &all, &QueueHealth::Replicated, false);
    assert!(matches!(decision.phase, Phase::Released(ref r) if r.pod == "pool-a-0"));
}

#[test]
fn no_node_is_released_while_a_scale_down_drains() {
    let dcs = [dc("a", 2, 1, 1)];
    let decision = decide(&dcs, &pods("a", 2, 1), &QueueHealth::Replicated, true);
    assert_eq!(reason(&decision), reasons::WAITING_FOR_SCALE_DOWN);
    assert_eq!(decision.partitions, partitions(&[("pool-a", 1)]));
}

#[test]
fn a_scale_down_below_the_partition_leaves_the_remaining_nodes_to_roll() {
    // Partition 3 held three nodes; the data centre went down to two (the third was
    // drained): the two left are outdated and roll from the top.
    let mut a = dc("a", 2, 3, 0);
    a.existing.as_mut().unwrap().replicas = 2;
    let decision = decide(&[a], &pods("a", 2, 2), &QueueHealth::Replicated, false);
    assert!(matches!(decision.phase, Phase::Released(ref r) if r.pod == "pool-a-1"));
    assert_eq!(decision.partitions, partitions(&[("pool-a", 1)]));
}

#[test]
fn a_scale_up_mid_roll_waits_for_the_new_node_then_goes_on() {
    // The autoscaler asks for 3 while 2 run with partition 2: the new node starts above
    // the partition, on the new revision.
    let mut a = dc("a", 3, 2, 0);
    a.existing.as_mut().unwrap().replicas = 2;
    let decision = decide(
        std::slice::from_ref(&a),
        &pods("a", 2, 2),
        &QueueHealth::Replicated,
        false,
    );
    assert_eq!(reason(&decision), reasons::WAITING_FOR_READINESS);
    assert_eq!(decision.partitions, partitions(&[("pool-a", 2)]));
    a.existing.as_mut().unwrap().updated_replicas = 1;
    let decision = decide(&[a], &pods("a", 3, 2), &QueueHealth::Replicated, false);
    assert!(matches!(decision.phase, Phase::Released(ref r) if r.pod == "pool-a-1"));
}

#[test]
fn the_roll_completes_when_every_node_runs_the_new_revision() {
    let dcs = [dc("a", 2, 0, 2), dc("b", 1, 1, 1)];
    let all = [pods("a", 2, 0), pods("b", 1, 0)].concat();
    let decision = decide(&dcs, &all, &QueueHealth::UnderReplicated(3), false);
    assert_eq!(decision.phase, Phase::Complete);
    assert_eq!(
        decision.partitions,
        partitions(&[("pool-a", 0), ("pool-b", 0)])
    );
}

/// Releasing the last node lowers the last partition to 0: nothing is held any more, but
/// the roll completes only once that node runs the new revision (the caller, seeing the
/// pool still rolling, passes the pods).
#[test]
fn the_roll_completes_after_the_last_release_brings_every_partition_to_zero() {
    let dcs = [dc("a", 2, 0, 2), dc("b", 1, 0, 0)];
    let restarting = [pods("a", 2, 0), pods("b", 1, 1)].concat();
    let decision = decide(&dcs, &restarting, &QueueHealth::Replicated, false);
    assert_ne!(decision.phase, Phase::Complete);
    assert_ne!(decision.phase, Phase::Idle);
    let b = dc("b", 1, 0, 1);
    let all = [pods("a", 2, 0), pods("b", 1, 0)].concat();
    let decision = decide(&[dcs[0].clone(), b], &all, &QueueHealth::Replicated, false);
    assert_eq!(decision.phase, Phase::Complete);
    // Not rolling (no pods passed): idle.
    let decision = decide(&dcs, &[], &QueueHealth::Standalone, false);
    assert_eq!(decision.phase, Phase::Idle);
}

#[test]
fn pods_map_to_their_statefulset_and_ordinal() {
    let sts = vec!["pool-eu".to_owned(), "pool-eu-west".to_owned()];
    assert_eq!(
        ordinal_of("pool-eu-west-3", &sts),
        Some(("pool-eu-west", 3))
    );
    assert_eq!(ordinal_of("pool-eu-0", &sts), Some(("pool-eu", 0)));
    assert_eq!(ordinal_of("pool-us-0", &sts), None);
}

#[test]
fn forcing_lets_go_of_every_held_node() {
    let dcs = [dc("a", 2, 2, 0), dc("b", 1, 0, 1)];
    let decision = forced(&dcs);
    assert_eq!(decision.phase, Phase::Forced);
    assert_eq!(
        decision.partitions,
        partitions(&[("pool-a", 0), ("pool-b", 0)])
    );
    let mut changed = dc("a", 2, 0, 2);
    changed.template_changed = true;
    assert_eq!(forced(&[changed]).phase, Phase::Forced);
    assert_eq!(forced(&[dc("a", 2, 0, 2)]).phase, Phase::Idle);
}

#[test]
fn a_partition_above_the_replicas_comes_down_to_them_while_waiting() {
    // Partition 3 held three nodes; a drain took the third away and is still removing it.
    let mut a = dc("a", 2, 3, 0);
    a.existing.as_mut().unwrap().replicas = 2;
    let decision = decide(&[a], &pods("a", 2, 2), &QueueHealth::Replicated, true);
    assert_eq!(reason(&decision), reasons::WAITING_FOR_SCALE_DOWN);
    assert_eq!(decision.partitions, partitions(&[("pool-a", 2)]));
}
