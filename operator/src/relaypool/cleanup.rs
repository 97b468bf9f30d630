//! What happens when a RelayPool is deleted, before its finalizer is removed.
//!
//! Children are not deleted here: they carry controller owner references, so the
//! garbage collector removes them once the pool is gone. What the finalizer protects is
//! the mail: while the nodes report queued messages, the pool stays. Its nodes are told
//! to drain (no new mail, delivery goes on), the `DeletionBlocked` condition and a Warning
//! Event say how much is left and since when, and the pool is looked at again every 30
//! seconds. The annotation `smtpfleet.io/force-delete` releases it at once. Either way
//! the spool volumes are kept (StatefulSets retain their claims), so mail that is still
//! on them can be recovered by a new pool of the same name.
//!
//! A queue nobody could read (no node answered) is not a queue known to hold mail: the
//! pool is released with the volumes kept, rather than held forever by nodes that no
//! longer run.

use kube::ResourceExt;
use smtp_node::admin::DrainReport;

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

/// The decision, from what the pool's status says of its queue.
pub fn decide(pool: &RelayPool) -> Verdict {
    if pool.annotations().contains_key(FORCE_DELETE_ANNOTATION) {
        return Verdict::Release;
    }
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
    Verdict::Hold(format!(
        "{} messages are still queued{oldest}; the nodes take no new mail and keep \
         delivering. Set the annotation {FORCE_DELETE_ANNOTATION} to delete the pool now \
         (its spool volumes are kept)",
        queue.depth
    ))
}

/// Decides whether `pool` may be deleted now; while it may not, tells its nodes to stop
/// taking mail (a drain: repeated calls are harmless).
pub async fn verdict(pool: &RelayPool, ctx: &Context) -> Result<Verdict> {
    let verdict = decide(pool);
    if let Verdict::Hold(_) = &verdict {
        let namespace = pool.namespace().unwrap_or_default();
        let name = pool.name_any();
        match queue::pool_nodes(&ctx.client, &namespace, &name).await {
            Ok((token, nodes)) => {
                for node in &nodes {
                    let drain = queue::admin_call::<DrainReport>(
                        node,
                        token.as_deref(),
                        "POST",
                        "/admin/drain",
                    );
                    if let Err(reason) = drain.await {
                        tracing::info!(pool = %name, pod = %node.pod, %reason,
                            "cannot stop a node's intake before deletion; retrying");
                    }
                }
            }
            Err(error) => tracing::warn!(pool = %name, %error, "cannot list the pool's nodes"),
        }
    }
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

    #[test]
    fn queued_mail_holds_the_pool_unless_forced() {
        match decide(&pool(Some(12), false)) {
            Verdict::Hold(reason) => {
                assert!(reason.starts_with("12 messages"), "{reason}");
                assert!(reason.contains("2027-01-15T08:00:00Z"), "{reason}");
                assert!(reason.contains(FORCE_DELETE_ANNOTATION), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(decide(&pool(Some(12), true)), Verdict::Release);
        assert_eq!(decide(&pool(Some(0), false)), Verdict::Release);
        assert_eq!(decide(&pool(None, false)), Verdict::Release, "never read");
    }
}
