//! Which changes are worth an Event, decided purely from what existed before a
//! reconciliation and what it did.
//!
//! Events are for people: a reconciliation that changes nothing emits nothing, so
//! `kubectl describe relaypool` shows the history of the pool (created, data centre
//! added, scaled from 3 to 5, Secret missing) rather than one line per resync.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::runtime::events::Event;

use super::build::meta::DATA_CENTRE_LABEL;
use crate::api::relay_pool::condition_types::{DEGRADED, READY};
use crate::events::{normal, warning};

/// A meaningful change made (or seen) by one reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A child other than a StatefulSet was created (or recreated after deletion).
    Created {
        /// Kind of the child.
        kind: &'static str,
        /// `apiVersion` of the child.
        api_version: &'static str,
        /// Its name.
        name: String,
    },
    /// A data centre's StatefulSet was created.
    DataCentreAdded {
        /// Data centre name.
        data_centre: String,
        /// Its StatefulSet.
        statefulset: String,
        /// Its replicas.
        replicas: i32,
    },
    /// The StatefulSet of a data centre no longer in the spec was deleted.
    DataCentreRemoved {
        /// The StatefulSet's name.
        statefulset: String,
    },
    /// A data centre's replica count changed.
    Scaled {
        /// Data centre name.
        data_centre: String,
        /// Its StatefulSet.
        statefulset: String,
        /// Replicas before.
        from: i32,
        /// Replicas now.
        to: i32,
    },
    /// A condition became `True` (`Ready`) or a problem appeared (`Degraded`).
    Condition {
        /// Condition type.
        type_: String,
        /// New status.
        status: String,
        /// New reason.
        reason: String,
        /// New message.
        message: String,
    },
}

impl Change {
    /// The Event describing this change, with the child concerned (in `namespace`) as
    /// its related object.
    pub fn event(&self, namespace: &str) -> Event {
        let mut event = self.event_without_reference();
        event.secondary = self.child(namespace);
        event
    }

    fn child(&self, namespace: &str) -> Option<ObjectReference> {
        let (api_version, kind, name) = match self {
            Self::Created {
                kind,
                api_version,
                name,
            } => (*api_version, *kind, name),
            Self::DataCentreAdded { statefulset, .. }
            | Self::DataCentreRemoved { statefulset }
            | Self::Scaled { statefulset, .. } => ("apps/v1", "StatefulSet", statefulset),
            Self::Condition { .. } => return None,
        };
        Some(ObjectReference {
            api_version: Some(api_version.to_owned()),
            kind: Some(kind.to_owned()),
            name: Some(name.clone()),
            namespace: Some(namespace.to_owned()),
            ..ObjectReference::default()
        })
    }

    fn event_without_reference(&self) -> Event {
        match self {
            Self::Created { kind, name, .. } => {
                normal("Created", "Create", format!("Created {kind} {name}."))
            }
            Self::DataCentreAdded {
                data_centre,
                replicas,
                ..
            } => normal(
                "DataCentreAdded",
                "Create",
                format!("Added data centre {data_centre:?} with {replicas} replica(s)."),
            ),
            Self::DataCentreRemoved { statefulset } => normal(
                "DataCentreRemoved",
                "Delete",
                format!(
                    "Deleted StatefulSet {statefulset} of a data centre no longer in the spec; its spool PersistentVolumeClaims are kept."
                ),
            ),
            Self::Scaled {
                data_centre,
                from,
                to,
                ..
            } => normal(
                "Scaled",
                "Scale",
                format!("Scaled data centre {data_centre:?} from {from} to {to} replica(s)."),
            ),
            Self::Condition {
                type_,
                status,
                reason,
                message,
            } => {
                if type_ == DEGRADED && status == "True" {
                    warning(reason, "Reconcile", message.clone())
                } else {
                    normal(reason, "Reconcile", message.clone())
                }
            }
        }
    }
}

/// Scale changes: desired StatefulSets whose replicas differ from the same
/// StatefulSet observed before the apply. New StatefulSets are not scale changes
/// (they are reported as [`Change::DataCentreAdded`] once created).
pub fn scaled(before: &[StatefulSet], desired: &[StatefulSet]) -> Vec<Change> {
    desired
        .iter()
        .filter_map(|want| {
            let name = want.name_any();
            let had = before.iter().find(|s| s.name_any() == name)?;
            let from = had.spec.as_ref()?.replicas.unwrap_or(1);
            let to = want.spec.as_ref()?.replicas.unwrap_or(1);
            (from != to).then(|| Change::Scaled {
                data_centre: data_centre_of(want),
                statefulset: name.clone(),
                from,
                to,
            })
        })
        .collect()
}

/// The data centre label of a StatefulSet, or its name when unlabelled.
pub fn data_centre_of(sts: &StatefulSet) -> String {
    sts.labels()
        .get(DATA_CENTRE_LABEL)
        .cloned()
        .unwrap_or_else(|| sts.name_any())
}

/// Condition changes worth telling a person about: `Degraded` turning `True` (or
/// changing its reason while `True`), `Degraded` clearing, and `Ready` turning `True`.
/// Flapping readiness during a rollout is visible in the status and not repeated here.
pub fn condition_changes(previous: &[Condition], current: &[Condition]) -> Vec<Change> {
    current
        .iter()
        .filter(|c| c.type_ == DEGRADED || c.type_ == READY)
        .filter(|c| {
            let before = previous.iter().find(|p| p.type_ == c.type_);
            let flipped = before.is_none_or(|p| p.status != c.status);
            match (c.type_.as_str(), c.status.as_str()) {
                (DEGRADED, "True") => flipped || before.is_some_and(|p| p.reason != c.reason),
                (DEGRADED, _) => flipped && before.is_some(),
                (_, "True") => flipped,
                _ => false,
            }
        })
        .map(|c| Change::Condition {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::StatefulSetSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::jiff::Timestamp;
    use kube::runtime::events::EventType;

    fn sts(dc: &str, replicas: i32) -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta {
                name: Some(format!("relay-{dc}")),
                labels: Some([(DATA_CENTRE_LABEL.to_owned(), dc.to_owned())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(StatefulSetSpec {
                replicas: Some(replicas),
                ..StatefulSetSpec::default()
            }),
            status: None,
        }
    }

    fn cond(type_: &str, status: &str, reason: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: format!("{type_} {status} {reason}"),
            observed_generation: Some(1),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        }
    }

    #[test]
    fn replica_changes_are_scale_events_and_new_statefulsets_are_not() {
        let before = [sts("a", 3), sts("b", 2)];
        let desired = [sts("a", 5), sts("b", 2), sts("c", 1)];
        assert_eq!(
            scaled(&before, &desired),
            vec![Change::Scaled {
                data_centre: "a".into(),
                statefulset: "relay-a".into(),
                from: 3,
                to: 5
            }]
        );
        assert!(scaled(&desired, &desired).is_empty());
    }

    #[test]
    fn degraded_events_fire_on_transitions_only() {
        let healthy = [
            cond(DEGRADED, "False", "AsExpected"),
            cond(READY, "True", "AllReplicasReady"),
        ];
        let broken = [
            cond(DEGRADED, "True", "SecretNotFound"),
            cond(READY, "False", "SecretNotFound"),
        ];
        let changes = condition_changes(&healthy, &broken);
        assert_eq!(changes.len(), 1);
        let event = changes[0].event("mail");
        assert_eq!(event.type_, EventType::Warning);
        assert_eq!(event.reason, "SecretNotFound");
        // Same problem on the next reconciliation: nothing new to say.
        assert!(condition_changes(&broken, &broken).is_empty());
        // Another problem while still degraded: say so.
        let other = [
            cond(DEGRADED, "True", "InsufficientReplicas"),
            cond(READY, "False", "InsufficientReplicas"),
        ];
        assert_eq!(condition_changes(&broken, &other).len(), 1);
        // Recovery: Degraded clears and Ready turns True.
        let recovered = condition_changes(&broken, &healthy);
        let reasons: Vec<&str> = recovered
            .iter()
            .map(|c| match c {
                Change::Condition { reason, .. } => reason.as_str(),
                _ => "",
            })
            .collect();
        assert_eq!(reasons, ["AsExpected", "AllReplicasReady"]);
        assert!(
            recovered
                .iter()
                .all(|c| c.event("mail").type_ == EventType::Normal)
        );
    }

    #[test]
    fn a_new_pool_that_is_not_degraded_emits_nothing_for_degraded() {
        let first = [
            cond(DEGRADED, "False", "AsExpected"),
            cond(READY, "False", "RollingOut"),
        ];
        assert!(condition_changes(&[], &first).is_empty());
    }

    #[test]
    fn events_name_what_changed() {
        let event = Change::Scaled {
            data_centre: "a".into(),
            statefulset: "relay-a".into(),
            from: 3,
            to: 5,
        }
        .event("mail");
        let related = event
            .secondary
            .clone()
            .expect("the StatefulSet is the related object");
        assert_eq!(
            (
                related.kind.as_deref(),
                related.name.as_deref(),
                related.namespace.as_deref()
            ),
            (Some("StatefulSet"), Some("relay-a"), Some("mail"))
        );
        assert_eq!(event.reason, "Scaled");
        assert_eq!(
            event.note.as_deref(),
            Some("Scaled data centre \"a\" from 3 to 5 replica(s).")
        );
        let event = Change::DataCentreRemoved {
            statefulset: "relay-b".into(),
        }
        .event("mail");
        assert_eq!(event.reason, "DataCentreRemoved");
        assert!(event.note.unwrap_or_default().contains("relay-b"));
    }
}
