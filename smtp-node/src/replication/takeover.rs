//! What a node does with the copies it holds when the view changes: take over the
//! messages of a holder that left, restore the replication factor, drop uncommitted
//! copies whose writer is gone, and hand the messages it now owns to the delivery side.
//! Every choice is `View::duty`'s; this is the loop that acts on it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::Standing;
use super::placement::{Candidate, choose_more};
use super::store::{ReplicatedSpool, ownership};
use super::view::{Copy, Duty, Holder, View};
use crate::spool::{MessageId, MessageMeta, Spool, SpoolError};

/// How often the copies are looked at again without a view change: a restore that
/// failed (a new holder unreachable) is retried at this pace.
const RESCAN: Duration = Duration::from_secs(10);

/// What one look at the copies did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    pub taken_over: usize,
    pub rereplicated: usize,
    pub discarded: usize,
    pub orphaned: usize,
    /// Messages handed to delivery.
    pub announced: usize,
}

/// Acts on every copy held here under `view`. `announce_all` hands every owned message
/// to delivery (after start-up or a fence, when delivery has dropped what it could not
/// deliver); otherwise only messages that changed hands are.
pub async fn pass<S: Spool>(
    spool: &ReplicatedSpool<S>,
    view: &View,
    announce_all: bool,
    queue: &mpsc::UnboundedSender<MessageId>,
) -> Result<Pass, SpoolError> {
    let me = spool.settings().me.clone();
    let factor = spool.settings().factor;
    let mut done = Pass::default();
    for meta in spool.local().list().await? {
        let Some(copy) = meta.ownership.copy.clone() else {
            if announce_all && meta.ownership.owner == me.node {
                let _ = queue.send(meta.id);
                done.announced += 1;
            }
            continue;
        };
        match view.duty(&me, &copy) {
            Duty::TakeOver => {
                let new = restore(spool, view, &me, &meta, &copy).await?;
                tracing::info!(id = %meta.id, from = %copy.holders.first().map(|h| h.node.0.as_str()).unwrap_or(""),
                    epoch = new.epoch, copies = view.copies(&new), "took a message over");
                done.taken_over += 1;
                let _ = queue.send(meta.id);
                done.announced += 1;
            }
            Duty::Deliver if view.copies(&copy) < factor => {
                let new = restore(spool, view, &me, &meta, &copy).await?;
                if view.copies(&new) > view.copies(&copy) {
                    done.rereplicated += 1;
                }
                let _ = queue.send(meta.id);
                done.announced += 1;
            }
            Duty::Deliver => {
                if announce_all {
                    let _ = queue.send(meta.id);
                    done.announced += 1;
                }
            }
            Duty::Discard => {
                tracing::info!(id = %meta.id, "dropping a copy that was never committed: no 250 was given for it");
                spool.local().remove(meta.id).await?;
                done.discarded += 1;
            }
            Duty::Orphaned => done.orphaned += 1,
            Duty::Hold { .. } | Duty::Stale | Duty::ReadView => {}
        }
    }
    Ok(done)
}

/// Writes a new record with this node first and, where holders are missing, new
/// holders that got a committed copy; returns the record.
async fn restore<S: Spool>(
    spool: &ReplicatedSpool<S>,
    view: &View,
    me: &Holder,
    meta: &MessageMeta,
    copy: &Copy,
) -> Result<Copy, SpoolError> {
    let settings = spool.settings();
    let eligible: Vec<&Holder> = copy
        .holders
        .iter()
        .filter(|h| view.eligible(h, copy.epoch))
        .collect();
    let needed = settings.factor.saturating_sub(eligible.len().max(1));
    let mut added = Vec::new();
    if needed > 0 {
        let covered: Vec<&str> = eligible
            .iter()
            .filter_map(|h| view.data_centre(&h.node))
            .collect();
        let candidates: Vec<Candidate> = view
            .members
            .iter()
            .filter(|(node, _)| !copy.holders.iter().any(|h| &h.node == *node))
            .map(|(node, m)| Candidate {
                holder: Holder {
                    node: node.clone(),
                    incarnation: m.incarnation,
                },
                data_centre: m.data_centre.clone(),
            })
            .collect();
        match choose_more(
            &covered,
            &candidates,
            needed,
            settings.min_data_centres,
            meta.id.0.as_u128(),
        ) {
            Ok(targets) => {
                let planned = view.taken_over(me, copy, &targets);
                let mut with_plan = meta.clone();
                with_plan.ownership = ownership(planned);
                let body = spool.local().load_body(meta.id).await?;
                added = spool.copy_to(view, &targets, &with_plan, body).await;
            }
            Err(error) => {
                tracing::warn!(id = %meta.id, %error, "cannot restore the replication factor yet");
            }
        }
    }
    let new = view.taken_over(me, copy, &added);
    spool.set_ownership(meta.id, ownership(new.clone())).await?;
    Ok(new)
}

/// Runs a pass on every view change and every [`RESCAN`], until `shutdown` or until the
/// arbiter stops publishing.
pub async fn run<S: Spool>(
    spool: Arc<ReplicatedSpool<S>>,
    mut standing: watch::Receiver<Standing>,
    queue: mpsc::UnboundedSender<MessageId>,
    shutdown: CancellationToken,
) -> Result<(), SpoolError> {
    let mut acted_on: Option<u64> = None;
    let mut tick = tokio::time::interval(RESCAN);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            changed = standing.changed() => if changed.is_err() { return Ok(()) },
            _ = tick.tick() => {}
        }
        let view = standing.borrow_and_update().usable_view().cloned();
        let Some(view) = view else {
            acted_on = None;
            continue;
        };
        let announce_all = acted_on != Some(view.epoch);
        let done = pass(&spool, &view, announce_all, &queue).await?;
        if done != Pass::default() {
            tracing::info!(
                epoch = view.epoch,
                taken_over = done.taken_over,
                rereplicated = done.rereplicated,
                discarded = done.discarded,
                orphaned = done.orphaned,
                announced = done.announced,
                "acted on the view"
            );
        }
        acted_on = Some(view.epoch);
    }
}
