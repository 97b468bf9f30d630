//! Queue-depth autoscaling, per data centre, pure.
//!
//! The recommendation lives in the pool's status, never in its spec: a GitOps tool that
//! owns the spec never fights it. It rises at once when the backlog needs more nodes,
//! and falls only after the backlog has stayed low for the stabilization window; the
//! fall then goes through the scale-down planner, which drains node by node. A data
//! centre whose queue is not fully known (no report yet, or a node that does not answer)
//! keeps its recommendation: a missing count is not a small one.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::api::relay_pool::{AutoscalingSpec, AutoscalingStatus, QueueStatus};

/// The bounds and target of [`AutoscalingSpec`], resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub min: i32,
    pub max: i32,
    pub target_per_replica: i64,
    pub stabilization: Duration,
}

impl Bounds {
    /// From the spec; an unparsable window (the schema admits only durations) falls back
    /// to five minutes.
    pub fn of(spec: &AutoscalingSpec) -> Self {
        Self {
            min: spec.min_replicas.max(1),
            max: spec.max_replicas.max(spec.min_replicas.max(1)),
            target_per_replica: spec.target_queue_per_replica.max(1),
            stabilization: spec
                .scale_down_stabilization()
                .unwrap_or(Duration::from_secs(300)),
        }
    }

    fn clamp(&self, replicas: i32) -> i32 {
        replicas.clamp(self.min, self.max)
    }
}

/// One data centre's recommendation and why it changed, if it did.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    pub status: AutoscalingStatus,
    /// Set when the recommended count changed: the Event's message.
    pub changed: Option<String>,
}

/// The next recommendation for data centre `name` from its previous one (or, for a new
/// data centre, its spec `replicas`), its queue depth when fully known, and the time.
pub fn recommend(
    name: &str,
    bounds: Bounds,
    spec_replicas: i32,
    previous: Option<&AutoscalingStatus>,
    depth: Option<i64>,
    now: Timestamp,
) -> Recommendation {
    let current = bounds.clamp(previous.map_or(spec_replicas, |p| p.replicas));
    let status = |replicas: i32, low_since: Option<Time>| AutoscalingStatus {
        data_centre: name.to_owned(),
        replicas,
        queue_depth: depth,
        low_since,
    };
    let Some(depth) = depth else {
        return Recommendation {
            status: status(current, previous.and_then(|p| p.low_since.clone())),
            changed: None,
        };
    };
    let needed = bounds.clamp(
        i32::try_from(
            depth
                .max(0)
                .unsigned_abs()
                .div_ceil(bounds.target_per_replica.unsigned_abs()),
        )
        .unwrap_or(i32::MAX),
    );
    if needed > current {
        return Recommendation {
            status: status(needed, None),
            changed: Some(format!(
                "Data centre {name:?}: {depth} queued messages need {needed} node(s) at {} per \
                 node; scaling up from {current}.",
                bounds.target_per_replica
            )),
        };
    }
    if needed == current {
        return Recommendation {
            status: status(current, None),
            changed: None,
        };
    }
    let low_since = previous
        .and_then(|p| p.low_since.as_ref())
        .map_or(now, |t| t.0);
    let low_for = Duration::try_from(now.duration_since(low_since)).unwrap_or_default();
    if low_for >= bounds.stabilization {
        Recommendation {
            status: status(needed, None),
            changed: Some(format!(
                "Data centre {name:?}: {depth} queued messages for {} s need only {needed} \
                 node(s); scaling down from {current} through drains.",
                low_for.as_secs()
            )),
        }
    } else {
        Recommendation {
            status: status(current, Some(Time(low_since))),
            changed: None,
        }
    }
}

/// When to look again for a recommendation waiting out its stabilization window: the
/// queue poll writes the status only when the depth changes, so a backlog that stays
/// at zero would otherwise wait for the periodic resync before the nodes go.
pub fn recheck_in(status: &AutoscalingStatus, bounds: Bounds, now: Timestamp) -> Option<Duration> {
    let low_since = status.low_since.as_ref()?;
    let low_for = Duration::try_from(now.duration_since(low_since.0)).unwrap_or_default();
    Some(
        bounds
            .stabilization
            .saturating_sub(low_for)
            .max(Duration::from_secs(1)),
    )
}

/// A data centre's queue depth when every one of its nodes answered.
pub fn depth_of(queue: Option<&QueueStatus>, data_centre: &str) -> Option<i64> {
    let dc = queue?.data_centres.iter().find(|d| d.name == data_centre);
    match dc {
        Some(dc) if dc.unreachable == 0 => Some(dc.depth),
        Some(_) => None,
        // Every node answered and none of this data centre queues anything.
        None if queue?.unreachable.is_empty() => Some(0),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::relay_pool::DataCentreQueue;

    const BOUNDS: Bounds = Bounds {
        min: 1,
        max: 5,
        target_per_replica: 100,
        stabilization: Duration::from_secs(300),
    };

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_000_000 + seconds).expect("t")
    }

    fn was(replicas: i32, low_since: Option<i64>) -> AutoscalingStatus {
        AutoscalingStatus {
            data_centre: "east".into(),
            replicas,
            queue_depth: None,
            low_since: low_since.map(|s| Time(at(s))),
        }
    }

    #[test]
    fn a_backlog_scales_up_at_once_within_bounds() {
        let r = recommend("east", BOUNDS, 1, Some(&was(1, None)), Some(250), at(0));
        assert_eq!(r.status.replicas, 3);
        assert!(r.changed.is_some_and(|m| m.contains("250 queued")));
        let capped = recommend("east", BOUNDS, 1, Some(&was(1, None)), Some(10_000), at(0));
        assert_eq!(capped.status.replicas, 5, "maxReplicas");
    }

    #[test]
    fn a_new_data_centre_starts_from_its_spec_replicas_within_bounds() {
        let r = recommend("east", BOUNDS, 2, None, Some(150), at(0));
        assert_eq!((r.status.replicas, r.changed), (2, None));
        let r = recommend("east", BOUNDS, 9, None, None, at(0));
        assert_eq!(r.status.replicas, 5);
    }

    #[test]
    fn scale_down_waits_for_the_window_and_a_rise_resets_it() {
        let first = recommend("east", BOUNDS, 1, Some(&was(4, None)), Some(50), at(0));
        assert_eq!(first.status.replicas, 4);
        assert_eq!(first.status.low_since, Some(Time(at(0))));
        let still = recommend("east", BOUNDS, 1, Some(&first.status), Some(50), at(299));
        assert_eq!((still.status.replicas, still.changed.is_none()), (4, true));
        let down = recommend("east", BOUNDS, 1, Some(&still.status), Some(50), at(300));
        assert_eq!(down.status.replicas, 1);
        assert!(down.changed.is_some_and(|m| m.contains("through drains")));
        assert_eq!(down.status.low_since, None);

        let busy_again = recommend("east", BOUNDS, 1, Some(&still.status), Some(400), at(200));
        assert_eq!(busy_again.status.replicas, 4);
        assert_eq!(busy_again.status.low_since, None, "the window starts over");
    }

    #[test]
    fn an_unknown_queue_keeps_the_recommendation() {
        let r = recommend("east", BOUNDS, 1, Some(&was(4, Some(0))), None, at(900));
        assert_eq!((r.status.replicas, r.changed), (4, None));
    }

    #[test]
    fn depth_is_known_only_when_every_node_answered() {
        let queue = QueueStatus {
            data_centres: vec![
                DataCentreQueue {
                    name: "east".into(),
                    depth: 40,
                    ..DataCentreQueue::default()
                },
                DataCentreQueue {
                    name: "west".into(),
                    depth: 7,
                    unreachable: 1,
                    ..DataCentreQueue::default()
                },
            ],
            unreachable: vec!["p-west-1".into()],
            ..QueueStatus::default()
        };
        assert_eq!(depth_of(Some(&queue), "east"), Some(40));
        assert_eq!(depth_of(Some(&queue), "west"), None);
        assert_eq!(depth_of(Some(&queue), "north"), None);
        assert_eq!(depth_of(Some(&QueueStatus::default()), "north"), Some(0));
        assert_eq!(depth_of(None, "east"), None);
    }

    #[test]
    fn a_pending_scale_down_is_looked_at_when_its_window_ends() {
        let at = |secs: i64| Timestamp::from_second(1_800_000_000 + secs).expect("t");
        let waiting = AutoscalingStatus {
            data_centre: "a".into(),
            replicas: 2,
            queue_depth: Some(0),
            low_since: Some(Time(at(0))),
        };
        let window = BOUNDS.stabilization;
        assert_eq!(
            recheck_in(&waiting, BOUNDS, at(10)),
            Some(window - Duration::from_secs(10))
        );
        assert_eq!(
            recheck_in(&waiting, BOUNDS, at(100_000)),
            Some(Duration::from_secs(1))
        );
        let steady = AutoscalingStatus {
            low_since: None,
            ..waiting
        };
        assert_eq!(recheck_in(&steady, BOUNDS, at(10)), None);
    }
}
