//! Per-pool gauges from the status the reconciler writes: replicas, conditions and the
//! scale-down in progress, so that alerts can see a scale-down that is blocked or a
//! drain that does not end, and the dashboard desired against ready nodes.
//!
//! Unlike the reconcile metrics these carry the pool's namespace and name: they
//! describe pools, so there is a fixed number of series per pool (one per data centre,
//! one per condition type, at most one scale-down), the kube-state-metrics way. The
//! series of a pool are removed when it is released, a data centre's when it leaves the
//! status, and all of them when this replica stops running the controller (it lost the
//! leader Lease), so that only the leader reports pools. The `namespace` and `pod`
//! labels describe the pool and its node: the ServiceMonitor keeps them (honorLabels).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::api::conditions::is_true;
use crate::api::relay_pool::{RelayPoolStatus, ScaleDownPhase, condition_types};

/// Every condition type a pool's status may carry, each exported for every pool.
pub const CONDITIONS: [&str; 9] = [
    condition_types::READY,
    condition_types::AVAILABLE,
    condition_types::PROGRESSING,
    condition_types::DEGRADED,
    condition_types::CERTIFICATE_READY,
    condition_types::QUEUE_REPLICATED,
    condition_types::DELETION_BLOCKED,
    condition_types::SCALING_DOWN,
    condition_types::SCALE_DOWN_BLOCKED,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DataCentreLabels {
    namespace: String,
    pool: String,
    data_centre: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabels {
    namespace: String,
    pool: String,
    condition: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScaleDownLabels {
    namespace: String,
    pool: String,
    data_centre: String,
    /// The node being removed.
    pod: String,
    phase: &'static str,
}

/// What one pool's status says, as numbers: the pure half of [`PoolMetrics::record`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PoolSamples {
    /// Desired and ready nodes per data centre.
    pub data_centres: Vec<(String, i64, i64)>,
    /// 1 for each condition type that is True, 0 for the others (False, Unknown, unset).
    pub conditions: Vec<(&'static str, i64)>,
    /// The scale-down in progress: data centre, pod, phase, start (Unix seconds).
    pub scale_down: Option<(String, String, &'static str, i64)>,
}

/// Reads the samples out of a status.
pub fn samples(status: &RelayPoolStatus) -> PoolSamples {
    PoolSamples {
        data_centres: status
            .data_centres
            .iter()
            .map(|dc| (dc.name.clone(), i64::from(dc.replicas), i64::from(dc.ready)))
            .collect(),
        conditions: CONDITIONS
            .iter()
            .map(|&c| (c, i64::from(is_true(&status.conditions, c))))
            .collect(),
        scale_down: status.scale_down.as_ref().map(|s| {
            let phase = match s.phase {
                ScaleDownPhase::Draining => "draining",
                ScaleDownPhase::Removing => "removing",
            };
            (
                s.data_centre.clone(),
                s.pod.clone(),
                phase,
                s.started_at.0.as_second(),
            )
        }),
    }
}

/// The label sets one pool has now, to remove those it no longer has.
#[derive(Debug, Default)]
struct Written {
    data_centres: Vec<DataCentreLabels>,
    conditions: Vec<ConditionLabels>,
    scale_down: Option<ScaleDownLabels>,
}

/// The per-pool gauges. Cheap to clone; clones share state. Unregistered (the default)
/// it records into families nobody serves, which is what tests want.
#[derive(Clone, Debug, Default)]
pub struct PoolMetrics {
    replicas: Family<DataCentreLabels, Gauge>,
    ready_replicas: Family<DataCentreLabels, Gauge>,
    condition: Family<ConditionLabels, Gauge>,
    scale_down_started: Family<ScaleDownLabels, Gauge>,
    written: Arc<Mutex<HashMap<(String, String), Written>>>,
}

impl PoolMetrics {
    /// Registers the gauges (names under the operator's prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "pool_replicas",
            "Nodes a RelayPool's data centre should run (status.dataCentres[].replicas)",
            metrics.replicas.clone(),
        );
        registry.register(
            "pool_ready_replicas",
            "Nodes of a RelayPool's data centre ready to accept mail",
            metrics.ready_replicas.clone(),
        );
        registry.register(
            "pool_condition",
            "1 while the RelayPool condition is True, 0 otherwise (False, Unknown or not set)",
            metrics.condition.clone(),
        );
        registry.register(
            "scale_down_started_timestamp_seconds",
            "When the scale-down in progress asked its node to drain (status.scaleDown.startedAt), by phase",
            metrics.scale_down_started.clone(),
        );
        metrics
    }

    /// Records a pool's status as written (or found unchanged) by the reconciler.
    pub fn record(&self, namespace: &str, pool: &str, status: &RelayPoolStatus) {
        let now = samples(status);
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (namespace.to_owned(), pool.to_owned());
        let before = written.remove(&key).unwrap_or_default();
        let mut after = Written::default();
        for (data_centre, desired, ready) in now.data_centres {
            let labels = DataCentreLabels {
                namespace: namespace.to_owned(),
                pool: pool.to_owned(),
                data_centre,
            };
            self.replicas.get_or_create(&labels).set(desired);
            self.ready_replicas.get_or_create(&labels).set(ready);
            after.data_centres.push(labels);
        }
        for (condition, value) in now.conditions {
            let labels = ConditionLabels {
                namespace: namespace.to_owned(),
                pool: pool.to_owned(),
                condition,
            };
            self.condition.get_or_create(&labels).set(value);
            after.conditions.push(labels);
        }
        if let Some((data_centre, pod, phase, started)) = now.scale_down {
            let labels = ScaleDownLabels {
                namespace: namespace.to_owned(),
                pool: pool.to_owned(),
                data_centre,
                pod,
                phase,
            };
            self.scale_down_started.get_or_create(&labels).set(started);
            after.scale_down = Some(labels);
        }
        self.remove_gone(&before, &after);
        written.insert(key, after);
    }

    /// Removes every series of a pool: it is released (deleted).
    pub fn forget(&self, namespace: &str, pool: &str) {
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(before) = written.remove(&(namespace.to_owned(), pool.to_owned())) {
            self.remove_gone(&before, &Written::default());
        }
    }

    /// Removes every series: this replica no longer runs the controller, and another
    /// (the new leader) reports the pools.
    pub fn clear(&self) {
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        written.clear();
        self.replicas.clear();
        self.ready_replicas.clear();
        self.condition.clear();
        self.scale_down_started.clear();
    }

    fn remove_gone(&self, before: &Written, after: &Written) {
        for labels in &before.data_centres {
            if !after.data_centres.contains(labels) {
                self.replicas.remove(labels);
                self.ready_replicas.remove(labels);
            }
        }
        for labels in &before.conditions {
            if !after.conditions.contains(labels) {
                self.condition.remove(labels);
            }
        }
        if let Some(labels) = &before.scale_down
            && after.scale_down.as_ref() != Some(labels)
        {
            self.scale_down_started.remove(labels);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(yaml: &str) -> RelayPoolStatus {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn registered() -> (Registry, PoolMetrics) {
        let mut registry = Registry::with_prefix("smtpfleet_operator");
        let metrics = PoolMetrics::register(&mut registry);
        (registry, metrics)
    }

    fn text(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    const DRAINING: &str = "
replicas: 3
readyReplicas: 2
dataCentres:
  - {name: east, replicas: 2, ready: 2}
  - {name: west, replicas: 1, ready: 0}
scaleDown:
  pod: relay-east-2
  dataCentre: east
  statefulSet: relay-east
  ordinal: 2
  phase: Draining
  startedAt: '2026-01-01T00:00:00Z'
conditions:
  - {type: ScalingDown, status: 'True', reason: Draining, message: m, lastTransitionTime: '2026-01-01T00:00:00Z'}
  - {type: Ready, status: 'False', reason: ReplicasNotReady, message: m, lastTransitionTime: '2026-01-01T00:00:00Z'}
";

    #[test]
    fn samples_of_a_status() {
        let samples = samples(&status(DRAINING));
        assert_eq!(
            samples.data_centres,
            [("east".to_owned(), 2, 2), ("west".to_owned(), 1, 0)]
        );
        assert_eq!(samples.conditions.len(), CONDITIONS.len());
        assert!(samples.conditions.contains(&("ScalingDown", 1)));
        assert!(samples.conditions.contains(&("Ready", 0)));
        assert!(
            samples.conditions.contains(&("ScaleDownBlocked", 0)),
            "unset is 0"
        );
        assert_eq!(
            samples.scale_down,
            Some((
                "east".to_owned(),
                "relay-east-2".to_owned(),
                "draining",
                1_767_225_600
            ))
        );
    }

    #[test]
    fn records_a_pool_and_drops_what_it_no_longer_has() {
        let (registry, metrics) = registered();
        metrics.record("mail", "relay", &status(DRAINING));
        let page = text(&registry);
        for line in [
            r#"smtpfleet_operator_pool_replicas{namespace="mail",pool="relay",data_centre="west"} 1"#,
            r#"smtpfleet_operator_pool_ready_replicas{namespace="mail",pool="relay",data_centre="east"} 2"#,
            r#"smtpfleet_operator_pool_condition{namespace="mail",pool="relay",condition="ScalingDown"} 1"#,
            r#"smtpfleet_operator_pool_condition{namespace="mail",pool="relay",condition="ScaleDownBlocked"} 0"#,
            r#"smtpfleet_operator_scale_down_started_timestamp_seconds{namespace="mail",pool="relay",data_centre="east",pod="relay-east-2",phase="draining"} 1767225600"#,
        ] {
            assert!(page.contains(&format!("{line}\n")), "{line}\n{page}");
        }

        // The drain ended and west was removed from the spec.
        metrics.record(
            "mail",
            "relay",
            &status("dataCentres: [{name: east, replicas: 2, ready: 2}]\nconditions: []\n"),
        );
        let page = text(&registry);
        assert!(!page.contains("west"), "{page}");
        assert!(!page.contains("relay-east-2"), "{page}");
        assert!(page.contains(
            "smtpfleet_operator_pool_condition{namespace=\"mail\",pool=\"relay\",condition=\"ScalingDown\"} 0\n"
        ));

        metrics.record("mail", "other", &status(DRAINING));
        metrics.forget("mail", "relay");
        let page = text(&registry);
        assert!(!page.contains("pool=\"relay\""), "{page}");
        assert!(page.contains("pool=\"other\""), "{page}");

        metrics.clear();
        assert!(!text(&registry).contains("pool=\""));
    }

    #[test]
    fn a_phase_change_replaces_the_series() {
        let (registry, metrics) = registered();
        metrics.record("mail", "relay", &status(DRAINING));
        metrics.record(
            "mail",
            "relay",
            &status(&DRAINING.replace("phase: Draining", "phase: Removing")),
        );
        let page = text(&registry);
        assert!(page.contains("phase=\"removing\""), "{page}");
        assert!(!page.contains("phase=\"draining\""), "{page}");
    }

    #[test]
    fn unregistered_metrics_record_into_nothing() {
        let metrics = PoolMetrics::default();
        metrics.record("mail", "relay", &status(DRAINING));
        metrics.forget("mail", "relay");
        metrics.clear();
    }
}
