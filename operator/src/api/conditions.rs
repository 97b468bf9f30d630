//! Reading conditions, and the shape every status condition list shares.
//!
//! Condition types and reasons are per kind (see `relay_pool::condition_types` and
//! `mail_domain::condition_types`); the helpers here are the pure pieces both
//! reconcilers need when they compute a status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::Schema;

use super::schema;

/// `status` value of a condition that holds.
pub const TRUE: &str = "True";
/// `status` value of a condition that does not hold.
pub const FALSE: &str = "False";
/// `status` value of a condition that cannot be determined yet.
pub const UNKNOWN: &str = "Unknown";

/// The condition of the given type, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of the given type is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == TRUE)
}

/// `condition` with the `lastTransitionTime` of `previous` when that is the same type
/// with the same status, as Kubernetes conventions ask: the time says when the status
/// flipped, not when the operator last looked. Every place that sets a condition goes
/// through here (directly, or via [`upsert`]), so the rule lives once.
pub fn carry_transition(previous: Option<&Condition>, mut condition: Condition) -> Condition {
    if let Some(previous) = previous
        && previous.type_ == condition.type_
        && previous.status == condition.status
    {
        condition
            .last_transition_time
            .clone_from(&previous.last_transition_time);
    }
    condition
}

/// Replaces or adds `condition` in place (the order of the others is kept, so two
/// controllers writing the same list never reorder it back and forth), keeping the
/// transition time of an existing condition of the same type whose status did not change.
pub fn upsert(conditions: &mut Vec<Condition>, condition: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing) => *existing = carry_transition(Some(existing), condition),
        None => conditions.push(condition),
    }
}

/// A condition stamped `now`; pass it through [`upsert`] or [`carry_transition`] so the
/// stamp only sticks when the status flipped.
pub fn new(
    type_: &str,
    status: &str,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation,
        last_transition_time: now,
    }
}

/// Schema transform for `conditions` lists: a list-map keyed by `type`, so that
/// server-side apply merges conditions one by one and a type appears at most once.
pub(crate) fn conditions_list_schema(schema: &mut Schema) {
    schema::list_map(schema, &["type"]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn condition(type_: &str, status: &str, reason: &str, at: i64) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: format!("{type_} is {status}"),
            last_transition_time: Time(Timestamp::from_second(at).unwrap()),
            observed_generation: Some(1),
        }
    }

    #[test]
    fn find_and_is_true() {
        let list = vec![
            condition("Ready", TRUE, "AllGood", 10),
            condition("Degraded", FALSE, "AllGood", 10),
        ];
        assert_eq!(
            find(&list, "Degraded").map(|c| c.status.as_str()),
            Some(FALSE)
        );
        assert!(find(&list, "Available").is_none());
        assert!(is_true(&list, "Ready"));
        assert!(!is_true(&list, "Degraded"));
        assert!(!is_true(&list, "Available"));
    }

    #[test]
    fn upsert_keeps_transition_time_while_status_holds() {
        let mut list = vec![condition("Ready", TRUE, "AllGood", 10)];
        upsert(&mut list, condition("Ready", TRUE, "StillGood", 20));
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].reason, "StillGood");
        assert_eq!(list[0].last_transition_time.0.as_second(), 10);
    }

    #[test]
    fn upsert_moves_transition_time_when_status_flips() {
        let mut list = vec![condition("Ready", TRUE, "AllGood", 10)];
        upsert(&mut list, condition("Ready", FALSE, "Broken", 20));
        assert_eq!(list[0].status, FALSE);
        assert_eq!(list[0].last_transition_time.0.as_second(), 20);
    }

    #[test]
    fn upsert_appends_new_types() {
        let mut list = vec![condition("Ready", TRUE, "AllGood", 10)];
        upsert(&mut list, condition("Degraded", FALSE, "AllGood", 20));
        assert_eq!(
            list.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(),
            ["Ready", "Degraded"]
        );
    }

    #[test]
    fn carry_transition_only_from_the_same_type_and_status() {
        let was = condition("Ready", TRUE, "AllGood", 10);
        let same = carry_transition(Some(&was), condition("Ready", TRUE, "Still", 20));
        assert_eq!(same.last_transition_time.0.as_second(), 10);
        let other_type = carry_transition(Some(&was), condition("Degraded", TRUE, "X", 20));
        assert_eq!(other_type.last_transition_time.0.as_second(), 20);
        let none = carry_transition(None, condition("Ready", TRUE, "Still", 20));
        assert_eq!(none.last_transition_time.0.as_second(), 20);
    }
}
