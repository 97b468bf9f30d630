//! What happens when a RelayPool is deleted, before its finalizer is removed.
//!
//! Children are not deleted here: they carry controller owner references, so the
//! garbage collector removes them once the pool is gone. What the finalizer protects is
//! the mail: while the nodes report queued messages, the pool stays. Its nodes are told
//! to drain first (no new mail, delivery goes on) and their answers, not the polled
//! status, decide; the `DeletionBlocked` condition and a Warning Event say how much is
//! left and since when, and the pool is looked at again every 30 seconds. A node that
//! does not answer while others do holds the pool too: what it has is unknown. The annotation `smtpfleet.io/force-delete` releases it at once. Either way
//! the spool volumes are kept (StatefulSets retain their claims), so mail that is still
//! on them can be recovered by a new pool of the same name.
//!
//! When no node answers at all, the last polled status decides: a pool whose nodes no
//! longer run and whose status said its queue was empty is released with the volumes
//! kept, rather than held forever.

use kube::ResourceExt;
use smtp_node::admin::QueueReport;

use super::context::Context;
use super::error::Result;
use crate::api::RelayPool;
use crate::queue;

/// Set (to any value) on a RelayPool to delete it even with mail queued.
pub const FORCE_DELETE_ANNOTATION: &str = "smtpfleet.io/force-delete";

/// Whether the pool may go now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing holds the deletion: remove the finalizer.
    Release,
    /// Mail is still queued; keep the finalizer, say why, and look again.
    Hold(String),
}

/// What the nodes answered when told to drain for the deletion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answers {
    /// Messages the answering nodes own.
    pub depth: usize,
    /// Message copies on their disks, owned or not.
    pub copies: usize,
    /// The oldest of them (RFC 3339), if any.
    pub oldest: Option<String>,
    /// Nodes that answered.
    pub answered: usize,
    /// Nodes that exist but did not answer.
    pub unanswered: usize,
}

impl Answers {
    fn add(&mut self, report: &QueueReport) {
        self.answered += 1;
        self.depth += report.depth;
        self.copies += report.copies;
        if let Some(at) = &report.oldest_received_at {
            // RFC 3339 in UTC: the text order is the time order.
            if self.oldest.as_ref().is_none_or(|o| at < o) {
                self.oldest = Some(at.clone());
            }
        }
    }
}

/// The decision, from what the nodes answered just now. The status's queue (polled every
/// 30 s) is too old to release a pool on: mail taken since the last poll would be left on
/// the volumes. It decides only when no node answers at all.
pub fn decide(pool: &RelayPool, answers: &Answers) -> Verdict {
    if pool.annotations().contains_key(FORCE_DELETE_ANNOTATION) {
        return Verdict::Release;
    }
    let force = format!(
        "Set the annotation {FORCE_DELETE_ANNOTATION} to delete the pool now (its spool \
         volumes are kept)"
    );
    if answers.answered == 0 {
        let Some(queue) = pool.status.as_ref().and_then(|s| s.queue.as_ref()) else {
            return Verdict::Release;
        };
        if queue.depth <= 0 {
            return Verdict::Release;
        }
        let oldest = queue
            .oldest_received_at
            .as_ref()
            .map(|t| format!(", the oldest received {}", t.0))
            .unwrap_or_default();
        return Verdict::Hold(format!(
            "{} messages were queued when the nodes last answered{oldest}, and none answers \
             now. {force}",
            queue.depth
        ));
    }
    // A drain changes the pool's view; until every node has caught up, a message can be
    // owned by nobody a node knows of. The copies on disk are what counts.
    if answers.depth > 0 || answers.copies > 0 {
        let oldest = answers
            .oldest
            .as_ref()
            .map(|t| format!(", the oldest received {t}"))
            .unwrap_or_default();
        return Verdict::Hold(format!(
            "{} messages are still queued ({} copies on the nodes){oldest}; the nodes take \
             no new mail and keep delivering. {force}",
            answers.depth, answers.copies
        ));
    }
    if answers.unanswered > 0 {
        return Verdict::Hold(format!(
            "{} of {} nodes did not answer: what they hold is unknown. {force}",
            answers.unanswered,
            answers.unanswered + answers.answered
        ));
    }
    Verdict::Release
}

/// Decides whether `pool` may be deleted now. Its nodes are first told to drain (no new
/// mail, delivery goes on; repeated calls are harmless), so that nothing arrives after
/// their answer says the queue is empty.
pub async fn verdict(pool: &RelayPool, ctx: &Context) -> Result<Verdict> {
    let mut answers = Answers::default();
    if pool.annotations().contains_key(FORCE_DELETE_ANNOTATION) {
        return Ok(decide(pool, &answers));
    }
    let namespace = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    match queue::pool_nodes(&ctx.client, &namespace, &name).await {
        Ok((token, nodes)) => {
            for node in &nodes {
                let drain = queue::admin_call::<QueueReport>(
                    node,
                    token.as_deref(),
                    "POST",
                    "/admin/drain",
                );
                match drain.await {
                    Ok(report) => answers.add(&report),
                    Err(reason) => {
                        answers.unanswered += 1;
                        tracing::info!(pool = %name, pod = %node.pod, %reason,
                            "cannot stop a node's intake before deletion; retrying");
                    }
                }
            }
        }
        Err(error) => tracing::warn!(pool = %name, %error, "cannot list the pool's nodes"),
    }
    let verdict = decide(pool, &answers);
    tracing::info!(pool = %name, answered = answers.answered, unanswered = answers.unanswered,
        queued = answers.depth, copies = answers.copies, ?verdict, "deletion: the nodes' queues");
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::api::relay_pool::{QueueStatus, RelayPoolStatus};

    fn pool(depth: Option<i64>, force: bool) -> RelayPool {
        let mut pool: RelayPool =
            serde_yaml::from_str("apiVersion: smtpfleet.io/v1alpha1\nkind: RelayPool\nmetadata: {name: p}\nspec: {hostname: smtp.example.com}\n")
                .expect("pool");
        if force {
            pool.annotations_mut()
                .insert(FORCE_DELETE_ANNOTATION.into(), "true".into());
        }
        pool.status = Some(RelayPoolStatus {
            queue: depth.map(|depth| QueueStatus {
                depth,
                oldest_received_at: Some(Time(Timestamp::from_second(1_800_000_000).expect("t"))),
                ..QueueStatus::default()
            }),
            ..RelayPoolStatus::default()
        });
        pool
    }

    fn answers(depth: usize, answered: usize, unanswered: usize) -> Answers {
        Answers {
            depth,
            copies: depth * 2,
            oldest: (depth > 0).then(|| "2027-01-15T08:00:00Z".to_owned()),
            answered,
            unanswered,
        }
    }

    fn held(verdict: Verdict) -> String {
        match verdict {
            Verdict::Hold(reason) => {
                assert!(reason.contains(FORCE_DELETE_ANNOTATION), "{reason}");
                reason
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn queued_mail_holds_the_pool_unless_forced() {
        let reason = held(decide(&pool(Some(0), false), &answers(12, 3, 0)));
        assert!(
            reason.starts_with("12 messages are still queued"),
            "{reason}"
        );
        assert!(reason.contains("2027-01-15T08:00:00Z"), "{reason}");
        assert_eq!(
            decide(&pool(Some(12), true), &answers(12, 3, 0)),
            Verdict::Release
        );
        assert_eq!(
            decide(&pool(Some(12), false), &answers(0, 3, 0)),
            Verdict::Release,
            "the nodes are newer than the status"
        );
    }

    #[test]
    fn a_stale_status_never_releases_a_pool_whose_nodes_hold_mail() {
        // The status was polled before the last messages came in.
        let reason = held(decide(&pool(Some(0), false), &answers(30, 2, 0)));
        assert!(reason.starts_with("30 messages"), "{reason}");
        // Mid-drain nobody owns them yet, but their copies are on disk.
        let between = Answers {
            copies: 4,
            ..answers(0, 3, 0)
        };
        let reason = held(decide(&pool(Some(0), false), &between));
        assert!(
            reason.starts_with("0 messages are still queued (4 copies"),
            "{reason}"
        );
    }

    #[test]
    fn nodes_that_do_not_answer_hold_the_pool_while_others_do() {
        let reason = held(decide(&pool(Some(0), false), &answers(0, 2, 1)));
        assert!(
            reason.starts_with("1 of 3 nodes did not answer"),
            "{reason}"
        );
    }

    #[test]
    fn with_no_node_answering_the_last_status_decides() {
        let reason = held(decide(&pool(Some(12), false), &answers(0, 0, 3)));
        assert!(reason.starts_with("12 messages were queued"), "{reason}");
        assert!(reason.contains("2027-01-15T08:00:00Z"), "{reason}");
        assert_eq!(
            decide(&pool(Some(0), false), &answers(0, 0, 3)),
            Verdict::Release
        );
        assert_eq!(
            decide(&pool(None, false), &answers(0, 0, 0)),
            Verdict::Release,
            "never read"
        );
    }
}
