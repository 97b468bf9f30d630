//! What happens when a RelayPool is deleted, before its finalizer is removed.
//!
//! Children are not deleted here: they carry controller owner references, so the
//! garbage collector removes them once the pool is gone. What the finalizer protects is
//! the mail: while nodes still hold queued messages, deleting their StatefulSets (and,
//! with a storage class that deletes volumes, their spools) would lose accepted mail.

use kube::ResourceExt;

use super::context::Context;
use super::error::Result;
use crate::api::RelayPool;

/// Whether the pool may go now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing holds the deletion: remove the finalizer.
    Release,
    /// Mail is still queued; keep the finalizer and look again after the reason is
    /// reported.
    Hold(String),
}

/// Decides whether `pool` may be deleted now.
///
/// This is where the queue-drain check goes: ask every node (admin API, queue summary)
/// how much mail it holds, ask them to drain to a peer outside the pool or deliver, and
/// return [`Verdict::Hold`] with the queue depth while messages remain. Until the node
/// admin API exists there is nothing to ask, so deletion proceeds: the spool volumes
/// are kept (StatefulSets retain their claims), so queued mail is not destroyed with
/// the pool and can be recovered by a new pool of the same name.
pub async fn verdict(pool: &RelayPool, _ctx: &Context) -> Result<Verdict> {
    tracing::debug!(pool = %pool.name_any(), "no queue-drain check available; releasing");
    Ok(Verdict::Release)
}
