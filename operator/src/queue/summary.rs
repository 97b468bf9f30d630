//! What the nodes' queue reports add up to: `status.queue` and the `QueueReplicated`
//! condition. Pure, so every case is a table test.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use smtp_node::admin::QueueReport;

use crate::api::relay_pool::{DataCentreQueue, QueueStatus, reasons};

/// At most one status write per pool in this time, however often the numbers move.
pub const WRITE_EVERY: Duration = Duration::from_secs(30);

/// One node as the operator found it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeResult {
    pub pod: String,
    pub data_centre: String,
    /// The node's report, or why there is none (not running, no address, no answer).
    pub report: Result<QueueReport, String>,
}

/// The pool's queue: totals and per data centre. Messages are counted by the node that
/// owns them, so each is counted once however many copies exist. A node that did not
/// answer is named in `unreachable`, never guessed.
pub fn summarize(nodes: &[NodeResult]) -> QueueStatus {
    let mut total = QueueStatus::default();
    let mut per_dc: BTreeMap<String, DataCentreQueue> = BTreeMap::new();
    let mut oldest: Option<Timestamp> = None;
    let mut oldest_dc: BTreeMap<String, Timestamp> = BTreeMap::new();
    for node in nodes {
        let dc = per_dc
            .entry(node.data_centre.clone())
            .or_insert_with(|| DataCentreQueue {
                name: node.data_centre.clone(),
                ..DataCentreQueue::default()
            });
        match &node.report {
            Ok(report) => {
                let depth = i64::try_from(report.depth).unwrap_or(i64::MAX);
                let deferred = i64::try_from(report.deferred).unwrap_or(i64::MAX);
                let under = i64::try_from(report.under_replicated).unwrap_or(i64::MAX);
                total.depth += depth;
                total.deferred += deferred;
                total.under_replicated += under;
                dc.depth += depth;
                dc.deferred += deferred;
                dc.under_replicated += under;
                if let Some(at) = report
                    .oldest_received_at
                    .as_deref()
                    .and_then(|t| t.parse::<Timestamp>().ok())
                {
                    oldest = Some(oldest.map_or(at, |o| o.min(at)));
                    let entry = oldest_dc.entry(node.data_centre.clone()).or_insert(at);
                    *entry = (*entry).min(at);
                }
                if report.drain.requested {
                    total.draining.push(node.pod.clone());
                }
            }
            Err(_) => {
                total.unreachable.push(node.pod.clone());
                dc.unreachable += 1;
            }
        }
    }
    for (name, at) in oldest_dc {
        if let Some(dc) = per_dc.get_mut(&name) {
            dc.oldest_received_at = Some(Time(at));
        }
    }
    total.oldest_received_at = oldest.map(Time);
    total.unreachable.sort();
    total.draining.sort();
    total.data_centres = per_dc.into_values().collect();
    total
}

/// The `QueueReplicated` condition: (status, reason, message).
pub fn replicated_condition(status: &QueueStatus) -> (&'static str, &'static str, String) {
    if status.under_replicated > 0 {
        return (
            "False",
            reasons::UNDER_REPLICATED,
            format!(
                "{} held copies lack a copy on another node (the pool restores them; see \
                 smtpnode_replication_under_replicated_messages per node)",
                status.under_replicated
            ),
        );
    }
    if !status.unreachable.is_empty() {
        return (
            "Unknown",
            reasons::QUEUE_STATUS_UNKNOWN,
            format!(
                "no queue report from {}: the node is not running or its admin API does \
                 not answer",
                status.unreachable.join(", ")
            ),
        );
    }
    (
        "True",
        reasons::FULLY_REPLICATED,
        "every queued message has its copies".to_owned(),
    )
}

/// Whether to write `next` over `previous`: only when it changed, and no more often
/// than [`WRITE_EVERY`] unless nothing was written yet.
pub fn should_write(
    previous: Option<&QueueStatus>,
    next: &QueueStatus,
    since_last_write: Option<Duration>,
) -> bool {
    previous != Some(next) && since_last_write.is_none_or(|d| d >= WRITE_EVERY)
}

#[cfg(test)]
mod tests {
    use smtp_node::admin::DrainReport;

    use super::*;

    fn node(pod: &str, dc: &str, depth: usize, oldest: Option<&str>) -> NodeResult {
        NodeResult {
            pod: pod.into(),
            data_centre: dc.into(),
            report: Ok(QueueReport {
                node: pod.into(),
                depth,
                deferred: depth / 2,
                oldest_received_at: oldest.map(str::to_owned),
                ..QueueReport::default()
            }),
        }
    }

    #[test]
    fn totals_and_data_centres_add_up_and_the_oldest_wins() {
        let status = summarize(&[
            node("p-east-0", "east", 4, Some("2026-12-05T10:00:00Z")),
            node("p-east-1", "east", 2, Some("2026-12-05T09:00:00Z")),
            node("p-west-0", "west", 0, None),
        ]);
        assert_eq!((status.depth, status.deferred), (6, 3));
        assert_eq!(
            status.oldest_received_at.as_ref().map(|t| t.0.to_string()),
            Some("2026-12-05T09:00:00Z".to_owned())
        );
        assert_eq!(status.data_centres.len(), 2);
        assert_eq!(status.data_centres[0].name, "east");
        assert_eq!(status.data_centres[0].depth, 6);
        assert_eq!(status.data_centres[1].oldest_received_at, None);
        assert!(status.unreachable.is_empty());
        assert_eq!(replicated_condition(&status).0, "True");
    }

    #[test]
    fn a_node_that_does_not_answer_is_named_not_guessed() {
        let mut silent = node("p-west-0", "west", 0, None);
        silent.report = Err("connection refused".into());
        let status = summarize(&[node("p-east-0", "east", 1, None), silent]);
        assert_eq!(status.depth, 1);
        assert_eq!(status.unreachable, ["p-west-0"]);
        assert_eq!(status.data_centres[1].unreachable, 1);
        let (s, reason, message) = replicated_condition(&status);
        assert_eq!((s, reason), ("Unknown", reasons::QUEUE_STATUS_UNKNOWN));
        assert!(message.contains("p-west-0"), "{message}");
    }

    #[test]
    fn under_replicated_copies_make_the_condition_false_with_the_count() {
        let mut n = node("p-east-0", "east", 3, None);
        if let Ok(r) = &mut n.report {
            r.under_replicated = 2;
            r.drain = DrainReport {
                requested: true,
                ..DrainReport::default()
            };
        }
        let status = summarize(&[n]);
        let (s, reason, message) = replicated_condition(&status);
        assert_eq!((s, reason), ("False", reasons::UNDER_REPLICATED));
        assert!(message.starts_with("2 "), "{message}");
        assert_eq!(status.draining, ["p-east-0"]);
    }

    #[test]
    fn writes_only_changes_and_not_more_often_than_every_30_s() {
        let a = summarize(&[node("p", "dc", 1, None)]);
        let b = summarize(&[node("p", "dc", 2, None)]);
        assert!(should_write(None, &a, None));
        assert!(!should_write(Some(&a), &a, Some(Duration::from_secs(300))));
        assert!(!should_write(Some(&a), &b, Some(Duration::from_secs(5))));
        assert!(should_write(Some(&a), &b, Some(Duration::from_secs(30))));
        assert!(should_write(Some(&a), &b, None), "first write since start");
    }
}
