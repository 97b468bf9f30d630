//! `ReplicatedSpool`: the local spool plus the copies on other nodes, behind the same
//! [`Spool`] contract, so the SMTP session's "250 only after `store` returned `Ok`" now
//! means "durable on `replicationFactor` nodes across `minDataCentres` data centres".
//!
//! `store` runs the one-phase commit of `docs/replication.md`: the message goes to this
//! node's spool with a committed record and to each replica with a pending one, all at
//! once, each group-committed; then the client hears 250, and the replicas learn of the
//! commit afterwards. A failed prepare drops the copies and says
//! [`SpoolError::NotReplicated`] (the client hears 451 and nothing is ever delivered)
//! when every copy is known to be gone, and [`SpoolError::OutcomeUnknown`] (421) when
//! one may remain.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use tokio::sync::watch;

use super::Standing;
use super::peer::{PeerError, Peers};
use super::placement::{Candidate, choose_replicas};
use super::protocol::{self, Request};
use super::view::{Copy, Holder, View};
use crate::metrics::{PhaseLabel, ReplicationMetrics};
use crate::spool::{MessageId, MessageMeta, NodeId, Ownership, RecipientUpdate, Spool, SpoolError};

/// What a replicated spool needs to know about its pool.
#[derive(Clone, Debug)]
pub struct Settings {
    pub me: Holder,
    pub data_centre: String,
    pub factor: usize,
    pub min_data_centres: usize,
    /// How long an owner waits for a holder's acknowledgement.
    pub timeout: Duration,
    /// How long after sending its prepares an owner may still answer 250
    /// (`LeaseTiming::acknowledgements_hold_for`); later, it refuses the message.
    pub answer_within: Duration,
}

/// What [`ReplicatedSpool::copy_to`] achieved.
#[derive(Debug, Default)]
pub struct Copied {
    pub added: Vec<Holder>,
    pub unreachable: Vec<Holder>,
}

pub struct ReplicatedSpool<S: Spool> {
    local: Arc<S>,
    settings: Settings,
    standing: watch::Receiver<Standing>,
    peers: Arc<Peers>,
    /// Messages whose `store` is running here: their uncommitted copies belong to a live
    /// transaction, not to one a restart cut off.
    in_flight: Mutex<HashSet<MessageId>>,
    /// Set by a drain: new mail is refused with 451.
    draining: AtomicBool,
    /// Commits and removals not yet sent, per holder.
    outbox: Arc<Mutex<Outbox>>,
    metrics: ReplicationMetrics,
}

/// Marks a message as being stored for as long as it lives.
struct InFlight<'a> {
    set: &'a Mutex<HashSet<MessageId>>,
    id: MessageId,
}

impl<'a> InFlight<'a> {
    fn new(set: &'a Mutex<HashSet<MessageId>>, id: MessageId) -> Self {
        lock(set).insert(id);
        Self { set, id }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        lock(self.set).remove(&self.id);
    }
}

fn lock(set: &Mutex<HashSet<MessageId>>) -> std::sync::MutexGuard<'_, HashSet<MessageId>> {
    set.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What waits to be sent to one holder.
#[derive(Default)]
struct Batch {
    commits: Vec<(MessageId, Copy)>,
    removals: Vec<MessageId>,
    aborts: Vec<MessageId>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.commits.is_empty() && self.removals.is_empty() && self.aborts.is_empty()
    }
}

enum Later {
    Commit(MessageId, Copy),
    Remove(MessageId),
    Abort(MessageId),
}

type Outbox = HashMap<NodeId, Batch>;

fn lock_map(map: &Mutex<Outbox>) -> std::sync::MutexGuard<'_, Outbox> {
    map.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How long commits and removals for a holder wait for company before they are sent.
const BATCH_DELAY: Duration = Duration::from_millis(10);

impl<S: Spool> ReplicatedSpool<S> {
    pub fn new(
        local: Arc<S>,
        settings: Settings,
        standing: watch::Receiver<Standing>,
        peers: Arc<Peers>,
    ) -> Self {
        Self {
            local,
            settings,
            standing,
            peers,
            in_flight: Mutex::new(HashSet::new()),
            draining: AtomicBool::new(false),
            outbox: Arc::default(),
            metrics: ReplicationMetrics::default(),
        }
    }

    /// Where acknowledgement times and copies per message are counted.
    pub fn with_metrics(mut self, metrics: ReplicationMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Sends `request` to every holder but this node, and counts how long the last
    /// acknowledgement took as `phase`.
    async fn acknowledged(
        &self,
        phase: &'static str,
        view: &View,
        holders: &[Holder],
        request: impl Fn() -> Request,
    ) -> Vec<(Holder, Result<(), PeerError>)> {
        let started = std::time::Instant::now();
        let answers = self.broadcast(view, holders, request).await;
        self.metrics
            .ack_seconds
            .get_or_create(&PhaseLabel { phase })
            .observe(started.elapsed().as_secs_f64());
        answers
    }

    /// Refuses new mail (`true`) while the node drains, or takes it again.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Whether a `store` of this message is running on this node right now.
    pub fn is_being_stored(&self, id: MessageId) -> bool {
        lock(&self.in_flight).contains(&id)
    }

    pub fn local(&self) -> &Arc<S> {
        &self.local
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Puts committed copies of a message on new holders (restoring the factor). Returns
    /// those that confirmed, and those that could not be reached at all (no connection,
    /// no answer in time): a refusal says something about this message, an unreachable
    /// node about every message.
    pub async fn copy_to(
        &self,
        view: &View,
        holders: &[Holder],
        meta: &MessageMeta,
        body: Bytes,
    ) -> Copied {
        let id = meta.id;
        let mut copied = Copied::default();
        for (holder, result) in self
            .broadcast(view, holders, || Request::Prepare {
                meta: Box::new(meta.clone()),
                body: body.clone(),
            })
            .await
        {
            match result {
                Ok(()) => copied.added.push(holder),
                Err(error) => {
                    tracing::warn!(%id, holder = %holder.node, %error, "could not add a copy");
                    if !matches!(error, PeerError::Refused { .. }) {
                        copied.unreachable.push(holder);
                    }
                }
            }
        }
        copied
    }

    /// Whether `holder` still holds message `id`, asked at the address the view gives.
    pub async fn still_held(
        &self,
        view: &View,
        holder: &Holder,
        id: MessageId,
    ) -> Result<bool, PeerError> {
        let address = view
            .members
            .get(&holder.node)
            .map(|m| m.address.as_str())
            .unwrap_or_default();
        self.peers
            .holds(holder, address, id, self.settings.timeout)
            .await
    }

    /// The view to act on, or why there is none.
    fn view(&self) -> Result<View, SpoolError> {
        let standing = self.standing.borrow();
        match standing.usable_view() {
            Some(view) if view.is_member(&self.settings.me) => Ok(view.clone()),
            Some(_) => Err(SpoolError::NotReplicated(
                "this node is not a member of the pool's view yet".into(),
            )),
            None => Err(SpoolError::NotReplicated(
                "this node is fenced: it cannot renew its Lease with the API server".into(),
            )),
        }
    }

    fn place(&self, view: &View, id: MessageId) -> Result<Vec<Holder>, SpoolError> {
        let candidates: Vec<Candidate> = view
            .members
            .iter()
            .filter(|(node, m)| **node != self.settings.me.node && !m.leaving)
            .map(|(node, m)| Candidate {
                holder: Holder {
                    node: node.clone(),
                    incarnation: m.incarnation,
                },
                data_centre: m.data_centre.clone(),
            })
            .collect();
        choose_replicas(
            &self.settings.data_centre,
            &candidates,
            self.settings.factor,
            self.settings.min_data_centres,
            id.0.as_u128(),
        )
        .map_err(|e| SpoolError::NotReplicated(e.to_string()))
    }

    /// Sends one request to each holder (this node excluded) at the address the view
    /// gives, all at once, and returns each one's result.
    async fn broadcast(
        &self,
        view: &View,
        holders: &[Holder],
        request: impl Fn() -> Request,
    ) -> Vec<(Holder, Result<(), PeerError>)> {
        let calls = holders.iter().filter(|h| **h != self.settings.me).map(|h| {
            let address = view
                .members
                .get(&h.node)
                .map(|m| m.address.clone())
                .unwrap_or_default();
            let request = request();
            async move {
                let result = if address.is_empty() {
                    Err(PeerError::Unreachable {
                        node: h.node.0.clone(),
                        address,
                        reason: "not a member of the view".into(),
                    })
                } else {
                    self.peers
                        .call(&h.node, &address, request, self.settings.timeout)
                        .await
                };
                (h.clone(), result)
            }
        });
        join_all(calls).await
    }

    /// Drops a message that will not get its 250, here and on every replica that took
    /// it, and says what the client is to hear: `error` (451) when no copy is left
    /// anywhere, [`SpoolError::OutcomeUnknown`] (421) when one may be. A replica's
    /// pending copy is delivered if this node leaves the pool, so a 451 needs every
    /// replica to have refused the prepare, never received it, or confirmed the abort.
    /// A prepare whose answer did not come (a timeout, a broken connection) may still
    /// land after the abort: that message is never answered 451.
    async fn refuse(
        &self,
        view: &View,
        id: MessageId,
        prepared: &[(Holder, Result<(), PeerError>)],
        error: SpoolError,
    ) -> SpoolError {
        let mut doubts = Vec::new();
        // Only the copy this transaction wrote: a node that lost its place in the view
        // meanwhile may have been given a new owner's copy of the message since.
        let ours = match self.local.load_meta(id).await {
            Ok(Some(meta)) => meta.ownership.copy.is_some_and(|c| {
                c.epoch == view.epoch && c.holders.first() == Some(&self.settings.me)
            }),
            Ok(None) => false,
            Err(error) => {
                doubts.push(format!("the local copy: {error}"));
                false
            }
        };
        if ours && let Err(error) = self.local.remove(id).await {
            tracing::warn!(%id, %error, "cannot drop a refused message's local copy");
            doubts.push(format!("the local copy: {error}"));
        }
        // Every replica that took the copy is told to drop it, and the answer waited
        // for. One whose prepare got no clear answer may get it after the drop, so it is
        // a doubt whatever it answers: it is told in the background, without making the
        // client wait for a second timeout.
        let mut told = Vec::new();
        for (holder, result) in prepared {
            match result {
                Ok(()) => told.push(holder.clone()),
                // Refused by a check, or never sent: nothing was written there.
                Err(PeerError::Refused { reason, .. })
                    if !reason.starts_with(protocol::WRITE_FAILED) => {}
                Err(PeerError::Unreachable { .. }) => {}
                Err(error) => {
                    doubts.push(format!("{}: {error}", holder.node));
                    self.send_later(&holder.node, Later::Abort(id));
                }
            }
        }
        if !told.is_empty() {
            for (holder, result) in self.broadcast(view, &told, || Request::Abort { id }).await {
                if let Err(error) = result {
                    doubts.push(format!("{}: {error}", holder.node));
                }
            }
        }
        // A replica takes a pending copy over only once its writer has left the view;
        // still a member since the copy's epoch now (and not fenced), this node was in
        // the view all along, so every pending copy its aborts reached was still pending.
        let intact = self
            .view()
            .is_ok_and(|now| now.eligible(&self.settings.me, view.epoch));
        if !intact {
            doubts.push(
                "this node lost its place in the pool's view meanwhile: a replica may have \
                 taken the message over"
                    .into(),
            );
        }
        if doubts.is_empty() {
            return error;
        }
        tracing::warn!(%id, doubts = %doubts.join("; "),
            "a refused message may still have a copy: the client hears 421, and the copy is \
             delivered if this node leaves the pool");
        SpoolError::OutcomeUnknown(format!(
            "{error}; and a copy may remain ({})",
            doubts.join("; ")
        ))
    }

    /// Tells the replicas the message got its 250, after the fact, with the next batch
    /// for each: their copies then count for drains and under-replication, and are
    /// asked about as leftovers. A replica the commit does not reach holds a pending
    /// copy for this node, and takes it over if this node leaves: nothing is lost
    /// without it. A message finished before its batch leaves needs no commit.
    fn commit_later(&self, id: MessageId, copy: Copy) {
        for holder in copy.holders.iter().filter(|h| **h != self.settings.me) {
            self.send_later(&holder.node, Later::Commit(id, copy.clone()));
        }
    }

    fn holders_of(meta: &MessageMeta) -> Vec<Holder> {
        meta.ownership
            .copy
            .as_ref()
            .map(|c| c.holders.clone())
            .unwrap_or_default()
    }

    /// Tells every other holder of a message about a change; a holder that does not
    /// confirm is logged: it counts as lagging until the owner's next write reaches it.
    async fn propagate(&self, id: MessageId, holders: &[Holder], request: impl Fn() -> Request) {
        let Ok(view) = self.view() else {
            tracing::warn!(%id, "fenced: a change to the message stays local for now");
            return;
        };
        for (holder, result) in self.broadcast(&view, holders, request).await {
            if let Err(error) = result {
                tracing::warn!(%id, holder = %holder.node, %error, "a holder did not confirm a change");
            }
        }
    }
}

impl<S: Spool> ReplicatedSpool<S> {
    /// Runs `local` (the removal here, synced) and then has every other holder drop the
    /// message with the next batch of removals for it.
    async fn remove_everywhere(
        &self,
        id: MessageId,
        local: impl Future<Output = Result<(), SpoolError>>,
    ) -> Result<(), SpoolError> {
        let holders = match self.local.load_meta(id).await? {
            Some(meta) => Self::holders_of(&meta),
            None => Vec::new(),
        };
        local.await?;
        for holder in holders.iter().filter(|h| **h != self.settings.me) {
            self.remove_later(&holder.node, id);
        }
        Ok(())
    }

    /// Queues the removal of `id` on `node`. A holder that a batch does not reach keeps
    /// its copies until it asks their owner (`takeover::Look::ask_owners`), and one whose
    /// owner fails before the batch is sent delivers those messages again, as for a
    /// delivery in flight at a failure.
    fn remove_later(&self, node: &NodeId, id: MessageId) {
        self.send_later(node, Later::Remove(id));
    }

    /// Queues a commit or a removal for `node`. The first one queued for a node starts a
    /// batch that is sent [`BATCH_DELAY`] later with everything queued meanwhile: one
    /// request per kind and one synced write on the holder for many messages. A removal
    /// takes the place of the same message's commit still waiting.
    fn send_later(&self, node: &NodeId, item: Later) {
        let first = {
            let mut outbox = lock_map(&self.outbox);
            let queued = outbox.entry(node.clone()).or_default();
            let first = queued.is_empty();
            if let Later::Remove(id) = &item {
                queued.commits.retain(|(c, _)| c != id);
            }
            match item {
                Later::Commit(id, copy) => queued.commits.push((id, copy)),
                Later::Remove(id) => queued.removals.push(id),
                Later::Abort(id) => queued.aborts.push(id),
            }
            first
        };
        if !first {
            return;
        }
        let (node, outbox, peers) = (node.clone(), self.outbox.clone(), self.peers.clone());
        let (standing, timeout) = (self.standing.clone(), self.settings.timeout);
        let ack_seconds = self.metrics.ack_seconds.clone();
        tokio::spawn(async move {
            tokio::time::sleep(BATCH_DELAY).await;
            let batch = lock_map(&outbox).remove(&node).unwrap_or_default();
            let address = standing
                .borrow()
                .usable_view()
                .and_then(|view| view.members.get(&node).map(|m| m.address.clone()));
            let Some(address) = address else {
                tracing::warn!(holder = %node, commits = batch.commits.len(), removals = batch.removals.len(),
                    aborts = batch.aborts.len(),
                    "not sending to a holder outside the view (or this node is fenced): it keeps \
                     those copies pending or until it asks their owner");
                return;
            };
            // Side by side: the holder writes them in one batch with one sync. They never
            // conflict, since a removal took the place of its message's queued commit and
            // an abort follows a refusal, which has no commit.
            let commits = async {
                if batch.commits.is_empty() {
                    return;
                }
                let count = batch.commits.len();
                let started = std::time::Instant::now();
                let request = Request::Commit {
                    copies: batch.commits,
                };
                let sent = peers.call(&node, &address, request, timeout).await;
                ack_seconds
                    .get_or_create(&PhaseLabel { phase: "commit" })
                    .observe(started.elapsed().as_secs_f64());
                if let Err(error) = sent {
                    tracing::debug!(holder = %node, messages = count, %error,
                        "a holder did not take every commit; those copies stay pending for their owner");
                }
            };
            let aborts = async {
                let sent = batch
                    .aborts
                    .iter()
                    .map(|&id| peers.call(&node, &address, Request::Abort { id }, timeout));
                for (id, result) in batch.aborts.iter().zip(join_all(sent).await) {
                    if let Err(error) = result {
                        tracing::info!(%id, holder = %node, %error,
                            "a holder did not drop the pending copy of a message answered 421; \
                             it keeps it for this node");
                    }
                }
            };
            let removals = async {
                if batch.removals.is_empty() {
                    return;
                }
                let count = batch.removals.len();
                let request = Request::Remove {
                    ids: batch.removals,
                };
                if let Err(error) = peers.call(&node, &address, request, timeout).await {
                    tracing::warn!(holder = %node, messages = count, %error,
                        "a holder did not take removals; it drops those copies once it asks their owner");
                }
            };
            tokio::join!(commits, aborts, removals);
        });
    }
}

/// The ownership fields of a message as its replication record names them.
pub fn ownership(copy: Copy) -> Ownership {
    Ownership {
        owner: copy
            .holders
            .first()
            .map(|h| h.node.clone())
            .unwrap_or_else(|| crate::spool::NodeId(String::new())),
        replicas: copy
            .holders
            .iter()
            .skip(1)
            .map(|h| h.node.clone())
            .collect(),
        epoch: copy.epoch,
        copy: Some(copy),
    }
}

impl<S: Spool> Spool for ReplicatedSpool<S> {
    async fn store(&self, mut meta: MessageMeta, body: Bytes) -> Result<(), SpoolError> {
        if self.is_draining() {
            return Err(SpoolError::NotReplicated(
                "this node is draining: it takes no new mail".into(),
            ));
        }
        if self.settings.factor <= 1 {
            return self.local.store(meta, body).await;
        }
        let id = meta.id;
        let _in_flight = InFlight::new(&self.in_flight, id);
        let view = self.view()?;
        if view.is_leaving(&self.settings.me.node) {
            return Err(SpoolError::NotReplicated(
                "this node is draining: it takes no new mail".into(),
            ));
        }
        let mut holders = vec![self.settings.me.clone()];
        holders.extend(self.place(&view, id)?);
        let committed = Copy {
            holders: holders.clone(),
            epoch: view.epoch,
            committed: true,
        };
        let pending = Copy {
            committed: false,
            ..committed.clone()
        };
        // One synced round before 250: this node's copy committed, each replica's pending
        // at the same time. The replicas learn of the commit after the 250.
        let mut mine = meta.clone();
        mine.ownership = ownership(committed.clone());
        meta.ownership = ownership(pending);
        let prepare = {
            let meta = meta.clone();
            let body = body.clone();
            move || Request::Prepare {
                meta: Box::new(meta.clone()),
                body: body.clone(),
            }
        };
        let started = std::time::Instant::now();
        let (local, remote) = tokio::join!(
            self.local.store(mine, body),
            self.acknowledged("prepare", &view, &holders, prepare)
        );
        if let Err(error) = local {
            return Err(self.refuse(&view, id, &remote, error).await);
        }
        if let Some((holder, Err(error))) = remote.iter().find(|(_, r)| r.is_err()) {
            tracing::warn!(%id, holder = %holder.node, %error, "a replica did not take the message");
            let error = SpoolError::NotReplicated(error.to_string());
            return Err(self.refuse(&view, id, &remote, error).await);
        }

        // The acknowledgements vouch for the replicas only for a while: one that
        // acknowledged may be removed from the view (and replaced) after that.
        if started.elapsed() > self.settings.answer_within {
            let error = SpoolError::NotReplicated(format!(
                "the copies took {:?}, longer than the {:?} their acknowledgements hold",
                started.elapsed(),
                self.settings.answer_within
            ));
            return Err(self.refuse(&view, id, &remote, error).await);
        }
        // Every holder must still be eligible now: one that left the view meanwhile may
        // already be replaced, and its copy would not count.
        let current = match self.view() {
            Ok(current) if current.may_commit(&self.settings.me, &committed) => current,
            Ok(_) => {
                let error = SpoolError::NotReplicated(
                    "a holder left the pool while the copies were written".into(),
                );
                return Err(self.refuse(&view, id, &remote, error).await);
            }
            Err(error) => return Err(self.refuse(&view, id, &remote, error).await),
        };
        // Eligible, not only counting: a copy on a holder that began draining while the
        // message was written still holds it until the factor is restored.
        let copies = committed
            .holders
            .iter()
            .filter(|h| current.eligible(h, committed.epoch))
            .count();
        self.metrics.copies_per_message.observe(copies as f64);
        self.commit_later(id, committed);
        Ok(())
    }

    async fn update(
        &self,
        id: MessageId,
        updates: Vec<RecipientUpdate>,
    ) -> Result<MessageMeta, SpoolError> {
        let meta = self.local.update(id, updates.clone()).await?;
        let holders = Self::holders_of(&meta);
        if !holders.is_empty() {
            self.propagate(id, &holders, || Request::Update {
                id,
                updates: updates.clone(),
                copy: None,
            })
            .await;
        }
        Ok(meta)
    }

    async fn set_ownership(&self, id: MessageId, ownership: Ownership) -> Result<(), SpoolError> {
        let copy = ownership.copy.clone();
        self.local.set_ownership(id, ownership).await?;
        if let Some(copy) = copy {
            let holders = copy.holders.clone();
            self.propagate(id, &holders, || Request::Update {
                id,
                updates: Vec::new(),
                copy: Some(copy.clone()),
            })
            .await;
        }
        Ok(())
    }

    async fn remove(&self, id: MessageId) -> Result<(), SpoolError> {
        self.remove_everywhere(id, self.local.remove(id)).await
    }

    async fn finish(&self, id: MessageId, updates: Vec<RecipientUpdate>) -> Result<(), SpoolError> {
        self.remove_everywhere(id, self.local.finish(id, updates))
            .await
    }

    async fn load_meta(&self, id: MessageId) -> Result<Option<MessageMeta>, SpoolError> {
        self.local.load_meta(id).await
    }

    async fn load_body(&self, id: MessageId) -> Result<Bytes, SpoolError> {
        self.local.load_body(id).await
    }

    async fn list(&self) -> Result<Vec<MessageMeta>, SpoolError> {
        self.local.list().await
    }
}
