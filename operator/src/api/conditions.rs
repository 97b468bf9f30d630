//! Reading conditions, and the shape every status condition list shares.
//!
//! Condition types and reasons are per kind (see `relay_pool::condition_types` and
//! `mail_domain::condition_types`); the helpers here are the pure pieces both
//! reconcilers need when they compute a status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
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

/// Replaces or adds `condition`, keeping `lastTransitionTime` of an existing condition of
/// the same type whose status did not change, as Kubernetes conventions ask: the time
/// says when the status flipped, not when the operator last looked.
pub fn upsert(conditions: &mut Vec<Condition>, mut condition: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing) => {
            if existing.status == condition.status {
                condition.last_transition_time = existing.last_transition_time.clone();
            }
            *existing = condition;
        }
        None => conditions.push(condition),
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
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
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
}
