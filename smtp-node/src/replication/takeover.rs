//! What a node does with the copies it holds when the view changes: take over the
//! messages of a holder that left (pending copies included: their writer may have
//! answered 250), restore the replication factor, drop stale copies of messages that are done and copies
//! a lost removal left behind, and hand the messages it now owns to the delivery side.
//! Every choice is `View::duty`'s (and `View::witness`'s or `View::owner`'s for whom to
//! ask about a copy); this is the loop that acts on it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::Standing;
use super::placement::{Candidate, choose_more};
use super::store::{ReplicatedSpool, ownership};
use super::view::{Copy, Duty, Holder, View};
use crate::metrics::ReplicationMetrics;
use crate::spool::{MessageId, MessageMeta, NodeId, Spool, SpoolError, now_millis};

/// How often the copies are looked at again without a view change: a restore that
/// failed (a new holder unreachable) is retried at this pace.
const RESCAN: Duration = Duration::from_secs(10);
/// Messages restored (taken over or re-replicated) at the same time.
const RESTORES_AT_ONCE: usize = 32;
/// How often the owners of held copies are asked whether they still have the message.
const ASK_OWNERS_EVERY: Duration = Duration::from_secs(300);
/// The same while this node drains: it is about to be removed, or its pool deleted, and
/// a leftover copy would hold the pool's deletion for minutes.
const ASK_OWNERS_DRAINING: Duration = RESCAN;
/// Held copies younger than this are not asked about: their messages are usually being
/// delivered right now, and the owner's removal is on its way.
const LEFTOVER_AGE: Duration = Duration::from_secs(60);

/// What a pass looks at besides what the view says.
#[derive(Clone, Copy, Debug, Default)]
pub struct Look {
    /// Hand every owned message to delivery, not only those that changed hands: after
    /// start-up or a fence, when delivery has dropped what it could not deliver.
    pub announce_all: bool,
    /// Ask the owner of each copy held for another node (older than [`LEFTOVER_AGE`])
    /// whether it still has the message. An owner's removal that did not reach this
    /// holder (it was restarting, the connection broke) leaves a copy nobody would ever
    /// remove, that would hold a pool's deletion, and that would be delivered again if
    /// the owner left the pool one day.
    pub ask_owners: bool,
}

/// What one look at the copies did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    pub taken_over: usize,
    pub rereplicated: usize,
    pub discarded: usize,
    /// Copies this node may no longer act on (it left the view since they were written),
    /// still kept after the pass.
    pub stale: usize,
    /// Stale copies dropped because a holder that never left no longer has the message.
    pub stale_dropped: usize,
    /// Stale copies no live holder can vouch for: possibly a message's last copy.
    pub orphaned: usize,
    /// Held copies dropped because their owner no longer has the message.
    pub leftovers_dropped: usize,
    /// Copies held (owned or not) with fewer eligible holders than the factor, after the pass.
    pub under_replicated: usize,
    /// Messages handed to delivery.
    pub announced: usize,
}

/// Nodes a restore could not reach during one pass. Later restores of the same pass
/// choose around them, so a member that is cut off but not yet removed from the view
/// costs one acknowledgement timeout per pass, not one per message: a data centre's
/// worth of taken-over mail is not held back behind it.
#[derive(Default)]
struct Unreachable(Mutex<HashSet<NodeId>>);

impl Unreachable {
    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<NodeId>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Acts on every copy held here under `view`, as `look` says.
///
/// `metrics` follow the pass as it goes, not only at its end: the view epoch and the
/// under-replicated count are published together once the copies are counted under
/// the new view, and each restore is counted when it lands. Whoever waits for "every
/// node on the same epoch with nothing under-replicated" (an operator rolling the pool,
/// an SRE about to take the next node down) then never reads the count of an older view
/// next to the epoch of a newer one.
pub async fn pass<S: Spool>(
    spool: &ReplicatedSpool<S>,
    view: &View,
    look: Look,
    queue: &mpsc::UnboundedSender<MessageId>,
    metrics: &ReplicationMetrics,
) -> Result<Pass, SpoolError> {
    let me = spool.settings().me.clone();
    let factor = spool.settings().factor;
    let announce_all = look.announce_all;
    let leftover_before = now_millis().saturating_sub(LEFTOVER_AGE.as_millis() as u64);
    let mut done = Pass::default();
    let mut to_restore: Vec<(MessageMeta, Copy, bool)> = Vec::new();
    let mut doubts: Vec<Doubt> = Vec::new();
    for meta in spool.local().list().await? {
        let Some(copy) = meta.ownership.copy.clone() else {
            if announce_all && meta.ownership.owner == me.node {
                let _ = queue.send(meta.id);
                done.announced += 1;
            }
            continue;
        };
        if spool.is_being_stored(meta.id) {
            // Its transaction is still running here; it decides for itself. Asked after
            // the listing: a transaction that ended before this answer and refused its
            // message had removed it first, so everything read from the spool from now
            // on (the body to copy, the record to rewrite) finds it gone.
            continue;
        }
        let duty = view.duty(&me, &copy);
        match duty {
            Duty::TakeOver => to_restore.push((meta, copy, true)),
            Duty::Deliver if view.copies(&copy) < factor => to_restore.push((meta, copy, false)),
            Duty::Deliver => {
                if announce_all {
                    let _ = queue.send(meta.id);
                    done.announced += 1;
                }
            }
            Duty::Discard => {
                if discard(spool, view, &me, meta.id).await? {
                    done.discarded += 1;
                }
            }
            Duty::Stale => doubts.push(Doubt {
                id: meta.id,
                witness: view.witness(&me, &copy).cloned(),
                duty,
            }),
            Duty::Hold { .. } | Duty::ReadView => {
                if view.may_be_acknowledged(&me, &copy) && view.copies(&copy) < factor {
                    done.under_replicated += 1;
                }
                if look.ask_owners
                    && copy.committed
                    && matches!(duty, Duty::Hold { .. })
                    && meta.received_at < leftover_before
                {
                    doubts.push(Doubt {
                        id: meta.id,
                        witness: view.owner(&copy).cloned(),
                        duty,
                    });
                }
            }
        }
    }
    let waiting = to_restore
        .iter()
        .filter(|(_, copy, _)| view.may_be_acknowledged(&me, copy) && view.copies(copy) < factor)
        .count();
    let mut under_replicated = done.under_replicated + waiting;
    metrics
        .under_replicated
        .set(i64::try_from(under_replicated).unwrap_or(i64::MAX));
    metrics
        .view_epoch
        .set(i64::try_from(view.epoch).unwrap_or(i64::MAX));
    // Restores run side by side: each waits on peers, and a dead node's mail should be
    // back to full strength in the time of a few round trips, not one per message.
    let unreachable = Unreachable::default();
    let mut results = futures::stream::iter(to_restore)
        .map(|(meta, copy, takeover)| {
            let me = me.clone();
            let unreachable = &unreachable;
            async move {
                let result = restore(spool, view, &me, &meta, &copy, unreachable).await;
                (meta, copy, takeover, result)
            }
        })
        .buffer_unordered(RESTORES_AT_ONCE);
    while let Some((meta, copy, takeover, result)) = results.next().await {
        let new = match result {
            Ok(new) => new,
            // Delivered and removed, or dropped by its owner, meanwhile.
            Err(SpoolError::NotFound(_)) => continue,
            Err(error) => return Err(error),
        };
        if takeover {
            tracing::info!(id = %meta.id, from = %copy.holders.first().map(|h| h.node.0.as_str()).unwrap_or(""),
                epoch = new.epoch, copies = view.copies(&new), "took a message over");
            done.taken_over += 1;
            metrics.takeovers.inc();
        } else if view.copies(&new) > view.copies(&copy) {
            done.rereplicated += 1;
            metrics.rereplicated.inc();
        }
        if view.copies(&new) < factor {
            done.under_replicated += 1;
        } else if view.may_be_acknowledged(&me, &copy) && view.copies(&copy) < factor {
            under_replicated = under_replicated.saturating_sub(1);
            metrics
                .under_replicated
                .set(i64::try_from(under_replicated).unwrap_or(i64::MAX));
        }
        let _ = queue.send(meta.id);
        done.announced += 1;
    }
    drop(results);
    settle_doubts(spool, view, &me, doubts, &mut done).await?;
    Ok(done)
}

/// A copy this node cannot decide about alone, and whom to ask.
struct Doubt {
    id: MessageId,
    /// A holder every later change of the message reached: for a stale copy one that
    /// never left the view since the copy was written, for a held copy its owner.
    witness: Option<Holder>,
    /// The duty the copy had when listed; it is dropped only if it still has it.
    duty: Duty,
}

/// What a witness said about a message.
enum Witnessed {
    Done,
    Alive,
    Unknown,
    NoWitness,
}

/// Asks, for each doubtful copy, its witness whether the message still exists, and drops
/// the copies of messages that are done. A stale copy nobody can vouch for is kept and
/// counted: it may be the last copy of a message (see "The guarantee" in
/// `docs/replication.md`).
async fn settle_doubts<S: Spool>(
    spool: &ReplicatedSpool<S>,
    view: &View,
    me: &Holder,
    doubts: Vec<Doubt>,
    done: &mut Pass,
) -> Result<(), SpoolError> {
    let verdicts = futures::stream::iter(doubts)
        .map(|doubt| async move {
            let verdict = match &doubt.witness {
                None => Witnessed::NoWitness,
                Some(witness) => match spool.still_held(view, witness, doubt.id).await {
                    Ok(false) => Witnessed::Done,
                    Ok(true) => Witnessed::Alive,
                    Err(error) => {
                        tracing::debug!(id = %doubt.id, witness = %witness.node, %error,
                            "cannot ask about a copy yet");
                        Witnessed::Unknown
                    }
                },
            };
            (doubt, verdict)
        })
        .buffer_unordered(RESTORES_AT_ONCE)
        .collect::<Vec<_>>()
        .await;
    for (doubt, verdict) in verdicts {
        let stale = doubt.duty == Duty::Stale;
        match verdict {
            Witnessed::Done if drop_if_still(spool, view, me, &doubt).await? => {
                if stale {
                    done.stale_dropped += 1;
                } else {
                    done.leftovers_dropped += 1;
                }
            }
            Witnessed::NoWitness if stale => {
                done.orphaned += 1;
                done.stale += 1;
            }
            _ if stale => done.stale += 1,
            _ => {}
        }
    }
    if done.orphaned > 0 {
        tracing::warn!(
            copies = done.orphaned,
            "stale copies that no live holder can vouch for: each may be the last copy of \
             a message whose other holders all left the pool; list them with \
             `smtp-node spool list` on this node's spool and resend or deliver them by hand"
        );
    }
    Ok(())
}

/// Drops a doubtful copy, deciding again on its current record: a re-replication or a
/// takeover may have given this node a fresh record since the listing.
async fn drop_if_still<S: Spool>(
    spool: &ReplicatedSpool<S>,
    view: &View,
    me: &Holder,
    doubt: &Doubt,
) -> Result<bool, SpoolError> {
    let id = doubt.id;
    if spool.is_being_stored(id) {
        return Ok(false);
    }
    let Some(current) = spool.local().load_meta(id).await? else {
        return Ok(false);
    };
    let still = current
        .ownership
        .copy
        .as_ref()
        .is_some_and(|copy| view.duty(me, copy) == doubt.duty);
    if !still {
        return Ok(false);
    }
    if doubt.duty == Duty::Stale {
        tracing::debug!(%id, "dropping a stale copy: the message is done");
    } else {
        tracing::info!(%id, "dropping a leftover copy: its owner no longer has the message \
            (its removal did not reach this node)");
    }
    match spool.local().remove(id).await {
        Ok(()) | Err(SpoolError::NotFound(_)) => Ok(true),
        Err(error) => Err(error),
    }
}

/// Drops an uncommitted copy, deciding again on its current record: the listing the
/// pass works from may predate a commit (a transaction that was running then and has
/// answered 250 since must keep its message).
async fn discard<S: Spool>(
    spool: &ReplicatedSpool<S>,
    view: &View,
    me: &Holder,
    id: MessageId,
) -> Result<bool, SpoolError> {
    if spool.is_being_stored(id) {
        return Ok(false);
    }
    let Some(current) = spool.local().load_meta(id).await? else {
        return Ok(false);
    };
    let still = current
        .ownership
        .copy
        .as_ref()
        .is_some_and(|copy| view.duty(me, copy) == Duty::Discard);
    if !still || spool.is_being_stored(id) {
        return Ok(false);
    }
    tracing::info!(%id, "dropping a pending copy this node wrote before a restart: no 250 was given for it");
    match spool.local().remove(id).await {
        Ok(()) | Err(SpoolError::NotFound(_)) => Ok(true),
        Err(error) => Err(error),
    }
}

/// Writes a new record with this node first and, where holders are missing, new
/// holders that got a committed copy; returns the record.
async fn restore<S: Spool>(
    spool: &ReplicatedSpool<S>,
    view: &View,
    me: &Holder,
    meta: &MessageMeta,
    copy: &Copy,
    unreachable: &Unreachable,
) -> Result<Copy, SpoolError> {
    let settings = spool.settings();
    // Holders that count: a leaving one keeps its copy but the factor is made without it.
    let counting: Vec<&Holder> = copy
        .holders
        .iter()
        .filter(|h| view.counts(h, copy.epoch))
        .collect();
    let needed = settings.factor.saturating_sub(counting.len());
    let mut added = Vec::new();
    if needed > 0 {
        let covered: Vec<&str> = counting
            .iter()
            .filter_map(|h| view.data_centre(&h.node))
            .collect();
        let skip = unreachable.set().clone();
        let candidates: Vec<Candidate> = view
            .members
            .iter()
            .filter(|(node, m)| {
                !m.leaving
                    && !skip.contains(*node)
                    && !copy.holders.iter().any(|h| &h.node == *node)
            })
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
                let copied = spool.copy_to(view, &targets, &with_plan, body).await;
                unreachable
                    .set()
                    .extend(copied.unreachable.into_iter().map(|h| h.node));
                added = copied.added;
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
    metrics: ReplicationMetrics,
    shutdown: CancellationToken,
) -> Result<(), SpoolError> {
    let mut acted_on: Option<u64> = None;
    let mut asked_owners = tokio::time::Instant::now();
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
        let look = Look {
            announce_all: acted_on != Some(view.epoch),
            ask_owners: asked_owners.elapsed()
                >= if spool.is_draining() {
                    ASK_OWNERS_DRAINING
                } else {
                    ASK_OWNERS_EVERY
                },
        };
        if look.ask_owners {
            asked_owners = tokio::time::Instant::now();
        }
        let done = pass(&spool, &view, look, &queue, &metrics).await?;
        metrics.discarded.inc_by(done.discarded as u64);
        metrics.stale.set(done.stale as i64);
        metrics.stale_dropped.inc_by(done.stale_dropped as u64);
        metrics
            .leftovers_dropped
            .inc_by(done.leftovers_dropped as u64);
        metrics.orphaned.set(done.orphaned as i64);
        metrics.under_replicated.set(done.under_replicated as i64);
        if done.taken_over
            + done.rereplicated
            + done.discarded
            + done.stale_dropped
            + done.leftovers_dropped
            > 0
        {
            tracing::info!(
                epoch = view.epoch,
                taken_over = done.taken_over,
                rereplicated = done.rereplicated,
                discarded = done.discarded,
                stale = done.stale,
                stale_dropped = done.stale_dropped,
                leftovers_dropped = done.leftovers_dropped,
                announced = done.announced,
                "acted on the view"
            );
        }
        acted_on = Some(view.epoch);
    }
}
