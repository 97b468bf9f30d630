//! Publishing Kubernetes Events without letting them fail a reconciliation.
//!
//! Events are for people running `kubectl describe`; losing one (RBAC missing for
//! `events.k8s.io`, a busy API server) must not stop the operator from converging, so
//! publishing failures are logged and swallowed here, in one place.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// The `reportingController` of every Event the operator publishes.
pub const REPORTING_CONTROLLER: &str = "smtpfleet-operator";

/// The reporter of every Event: [`REPORTING_CONTROLLER`], with the pod name (from
/// `POD_NAME`, set through the downward API in the chart) as the instance so that
/// events from different operator replicas can be told apart.
pub fn reporter() -> Reporter {
    Reporter {
        controller: REPORTING_CONTROLLER.into(),
        instance: std::env::var("POD_NAME").ok(),
    }
}

/// A recorder for one reconciliation.
///
/// kube-runtime's `Recorder` folds events with the same type, reason, action and
/// objects into a series and keeps the *first* note. Reused across reconciliations, it
/// would report "scaled from 3 to 5" again when the pool is later scaled from 5 to 7.
/// A fresh recorder per reconciliation keeps every note true; the operator only
/// publishes on changes, so there is no flood to fold.
pub fn recorder(client: kube::Client) -> Recorder {
    Recorder::new(client, reporter())
}

/// Builds a Normal event.
pub fn normal(reason: &str, action: &str, note: impl Into<String>) -> Event {
    Event {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some(note.into()),
        action: action.into(),
        secondary: None,
    }
}

/// Builds a Warning event.
pub fn warning(reason: &str, action: &str, note: impl Into<String>) -> Event {
    Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(note.into()),
        action: action.into(),
        secondary: None,
    }
}

/// Publishes `events` about `regarding`, logging (not returning) failures.
pub async fn publish_all(recorder: &Recorder, regarding: &ObjectReference, events: &[Event]) {
    for event in events {
        if let Err(err) = recorder.publish(event, regarding).await {
            tracing::warn!(
                reason = %event.reason,
                object = regarding.name.as_deref().unwrap_or_default(),
                error = %err,
                "could not publish event"
            );
        }
    }
}
