//! Replication of the queue across the nodes of a pool: the decisions, kept pure.
//!
//! The protocol is written down in `docs/replication.md`. In short: the API server is
//! the arbiter. It holds one Lease per node (liveness) and the pool's [`View`] (which
//! spool incarnations are members, and since which epoch), changed only by
//! compare-and-set. Every decision a node takes about a message — may I deliver it, must
//! I take it over, is my copy stale — is a function of the view and the copy's own
//! ownership record, and lives here, so that the node and the model check
//! (`tests/replication_model.rs`) run the same code.

pub mod arbiter;
pub mod lease;
pub mod peer;
pub mod placement;
pub mod protocol;
pub mod server;
pub mod store;
pub mod takeover;
pub mod view;
pub mod wiring;

use std::time::Instant;

use crate::spool::{MessageMeta, NodeId};

pub use arbiter::{Arbiter, ArbiterError, ArbiterSettings};
pub use lease::LeaseTiming;
pub use peer::{PeerError, Peers};
pub use placement::{Candidate, PlacementError, choose_more, choose_replicas};
pub use store::{ReplicatedSpool, Settings};
pub use view::{Copy, Duty, Holder, Incarnation, Member, View};

/// What a node knows of its standing in the pool, published by the arbiter task to
/// everything that acts on messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Standing {
    /// The view last read from the API server; `None` before the first read.
    pub view: Option<View>,
    /// True while the node cannot vouch for its Lease (see `lease.rs`): no deliveries,
    /// no new mail, not ready.
    pub fenced: bool,
    /// The moment the node must be fenced unless the arbiter renews and reads again.
    /// Checked where the standing is used, not only when the arbiter task runs: a node
    /// that was paused (SIGSTOP, a stalled VM) must not act on its first instant back,
    /// before its arbiter task has had a chance to notice that time ran out.
    pub until: Option<Instant>,
}

impl Standing {
    /// The view, only while it may be acted on.
    pub fn usable_view(&self) -> Option<&View> {
        self.usable_view_at(Instant::now())
    }

    pub fn usable_view_at(&self, now: Instant) -> Option<&View> {
        let in_time = self.until.is_some_and(|until| now < until);
        if self.fenced || !in_time {
            None
        } else {
            self.view.as_ref()
        }
    }

    /// Whether the two standings differ in what subscribers act on; a deadline moved by
    /// a routine renewal is not worth waking every subscriber for.
    pub fn differs_from(&self, other: &Standing) -> bool {
        self.view != other.view || self.fenced != other.fenced
    }
}

/// Who may deliver what on this node: the one question the delivery side asks.
#[derive(Clone, Debug)]
pub enum Authority {
    /// A node on its own delivers what it owns.
    Standalone(NodeId),
    /// A pool member delivers a message while its view, unfenced, makes it the owner
    /// named first (`View::duty` is `Deliver`).
    Replicated {
        me: Holder,
        standing: tokio::sync::watch::Receiver<Standing>,
        /// Set while a drain waits for deliveries in flight: none start.
        quiet: std::sync::Arc<std::sync::atomic::AtomicBool>,
    },
}

impl Authority {
    pub fn node(&self) -> &NodeId {
        match self {
            Self::Standalone(node) => node,
            Self::Replicated { me, .. } => &me.node,
        }
    }

    /// Whether this node may start delivering `meta` now.
    pub fn may_deliver(&self, meta: &MessageMeta) -> bool {
        match self {
            Self::Standalone(node) => meta.ownership.owner == *node,
            Self::Replicated {
                me,
                standing,
                quiet,
            } => {
                if quiet.load(std::sync::atomic::Ordering::SeqCst) {
                    return false;
                }
                let standing = standing.borrow();
                let Some(view) = standing.usable_view() else {
                    return false;
                };
                match &meta.ownership.copy {
                    Some(copy) => view.duty(me, copy) == Duty::Deliver,
                    // Accepted while the pool ran with a single copy.
                    None => meta.ownership.owner == me.node,
                }
            }
        }
    }
}
