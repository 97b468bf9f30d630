//! Kubernetes-style conditions: computing them is pure, and merging them with the
//! previous ones keeps `lastTransitionTime` stable while the status stays the same.
//!
//! `lastTransitionTime` must only move when a condition's status flips: tools and people
//! read it as "how long has this been true/false". Recomputing conditions from scratch
//! on every reconciliation would reset it each time, so every computed condition goes
//! through [`merge`], which applies the crate's one rule
//! ([`crate::api::conditions::carry_transition`]).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::conditions;

/// The three condition statuses Kubernetes knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Not known yet (for example, nothing observed so far).
    Unknown,
}

impl Status {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }

    /// `True` when `holds`, `False` otherwise.
    pub fn from_bool(holds: bool) -> Self {
        if holds { Self::True } else { Self::False }
    }
}

/// A freshly computed condition, before its transition time is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Computed {
    /// Condition type, CamelCase (`Ready`).
    pub type_: &'static str,
    /// Whether it holds.
    pub status: Status,
    /// CamelCase machine-readable reason.
    pub reason: &'static str,
    /// A sentence a person can act on.
    pub message: String,
}

impl Computed {
    /// Shorthand constructor.
    pub fn new(
        type_: &'static str,
        status: Status,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

/// Merges freshly computed conditions into the previous list.
///
/// - A computed condition whose type existed with the same status keeps the previous
///   `lastTransitionTime`; otherwise it gets `now`.
/// - Reason, message and `observedGeneration` always come from the computed condition.
/// - Previous conditions of types not computed here are kept unchanged after the
///   computed ones: other parts of the operator may own them (for example
///   `CertificateReady`), and a merge patch replaces the whole list.
pub fn merge(
    previous: &[Condition],
    computed: Vec<Computed>,
    observed_generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let mut merged: Vec<Condition> = computed
        .into_iter()
        .map(|c| {
            let fresh = conditions::new(
                c.type_,
                c.status.as_str(),
                c.reason,
                c.message,
                observed_generation,
                now.clone(),
            );
            conditions::carry_transition(conditions::find(previous, c.type_), fresh)
        })
        .collect();
    let others: Vec<Condition> = previous
        .iter()
        .filter(|p| !merged.iter().any(|m| m.type_ == p.type_))
        .cloned()
        .collect();
    merged.extend(others);
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn time(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn ready(status: Status, reason: &'static str) -> Computed {
        Computed::new("Ready", status, reason, format!("ready is {status:?}"))
    }

    #[test]
    fn first_computation_stamps_now_and_generation() {
        let merged = merge(
            &[],
            vec![ready(Status::True, "AllReplicasReady")],
            Some(3),
            &time(100),
        );
        assert_eq!(
            merged,
            vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "AllReplicasReady".into(),
                message: "ready is True".into(),
                observed_generation: Some(3),
                last_transition_time: time(100),
            }]
        );
    }

    #[test]
    fn unchanged_status_keeps_transition_time_but_takes_new_reason_and_generation() {
        let first = merge(
            &[],
            vec![ready(Status::False, "Starting")],
            Some(1),
            &time(100),
        );
        let second = merge(
            &first,
            vec![ready(Status::False, "RollingOut")],
            Some(2),
            &time(200),
        );
        assert_eq!(second[0].last_transition_time, time(100));
        assert_eq!(second[0].reason, "RollingOut");
        assert_eq!(second[0].observed_generation, Some(2));
    }

    #[test]
    fn flipped_status_moves_transition_time() {
        let first = merge(
            &[],
            vec![ready(Status::False, "Starting")],
            Some(1),
            &time(100),
        );
        let second = merge(
            &first,
            vec![ready(Status::True, "AllReplicasReady")],
            Some(1),
            &time(200),
        );
        assert_eq!(second[0].last_transition_time, time(200));
        assert_eq!(second[0].status, "True");
    }

    #[test]
    fn conditions_owned_elsewhere_are_kept_after_computed_ones() {
        let foreign = Condition {
            type_: "CertificateReady".into(),
            status: "True".into(),
            reason: "Issued".into(),
            message: "issued".into(),
            observed_generation: Some(1),
            last_transition_time: time(50),
        };
        let first = merge(
            std::slice::from_ref(&foreign),
            vec![ready(Status::True, "AllReplicasReady")],
            Some(1),
            &time(100),
        );
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].type_, "Ready");
        assert_eq!(first[1], foreign);
    }

    #[test]
    fn merging_the_same_computation_twice_is_stable() {
        let computed = vec![
            ready(Status::True, "AllReplicasReady"),
            Computed::new("Degraded", Status::False, "AsExpected", "fine"),
        ];
        let first = merge(&[], computed.clone(), Some(4), &time(100));
        let second = merge(&first, computed, Some(4), &time(999));
        assert_eq!(first, second);
        assert!(conditions::is_true(&second, "Ready"));
        assert!(!conditions::is_true(&second, "Degraded"));
        assert!(conditions::find(&second, "Available").is_none());
    }
}
