//! Exhaustive model check of the replication decision core with stateright.
//!
//! The world: three nodes in two data centres (a1, a2 in `east`, b1 in `west`), two
//! messages accepted by a1 and b1 with `replicationFactor` 2 and `minDataCentres` 2, one
//! recipient each, and the API server's view. Every step a node takes about a message —
//! where its copies go, whether it delivers, takes over, holds or drops its copy, what it
//! writes on takeover and hand-over, whether the view lets it in or out — is decided by
//! the node's own functions in `smtp_node::replication`; the model only chooses the
//! order in which steps and faults happen:
//!
//! - a node crashes (its delivery in flight is lost, its disk stays, less the commits it
//!   wrote without a sync: those copies are pending again), restarts, or comes back with
//!   an empty disk (a new incarnation);
//! - a node loses the API server and fences itself; the arbiter removes a member only
//!   when it is down or fenced (the Lease timing rules of `lease.rs`, unit-tested there,
//!   are what make that true in the real system);
//! - a message is written in one step: the owner's copy committed, a pending copy on each
//!   replica that is up and takes it; the owner answers 250 once every replica has its
//!   copy and every holder is still eligible; the commit reaches the replicas later or
//!   never; a refusal drops every pending copy the owner can reach and is a 451 only when
//!   no copy is left anywhere (else 421);
//! - outcomes and new holder lists are written to every holder in one step only when
//!   every holder is up, as the owner waits for every acknowledgement; a crash between
//!   the remote delivery and the outcome's replication is a delivery in flight;
//! - a removal reaches the other holders or none of them, and any node may ask about a
//!   copy it cannot act on alone whom `takeover.rs` asks (the witness of a stale copy,
//!   the owner of a held one), dropping it when that incarnation no longer has it.
//!
//! Checked in every reachable state: no acknowledged message is lost unless every one of
//! its eligible copies was lost before the owner restored the factor; no delivery starts
//! at an epoch older than one already written; at most one final outcome is committed per
//! recipient; a message answered with 451 is never delivered; at most one node believes it
//! may deliver a message.

// Messages and nodes are named by their index into the model's arrays.
#![allow(clippy::needless_range_loop)]

use std::collections::BTreeMap;

use smtp_node::replication::{Candidate, Copy, Duty, Holder, Incarnation, View, choose_replicas};
use smtp_node::spool::NodeId;
use stateright::{Checker, Model, Property};

const FACTOR: usize = 2;
const MIN_DCS: usize = 2;
const NODES: [(&str, &str); 3] = [("a1", "east"), ("a2", "east"), ("b1", "west")];
/// The node each message arrives at.
const ACCEPTED_BY: [usize; 2] = [0, 2];

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Stored {
    copy: Copy,
    /// The recipient's final outcome is known to this copy.
    done: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Node {
    up: bool,
    /// Lost the API server: no deliveries, no new mail, not ready.
    fenced: bool,
    /// Index into the incarnations this node has had (a wiped disk is the next one).
    incarnation: u8,
    /// The view this node last read; meaningful only while it is not fenced.
    view: View,
    disk: BTreeMap<usize, Stored>,
    /// Commits written without a sync (`Spool::commit_copy`), by message: a crash takes
    /// them back. Kept until the crash, although the node's next synced write would make
    /// them durable: the model lets a crash take more than it can, never less.
    unsynced: BTreeMap<usize, Copy>,
    /// A delivery it started and has not recorded.
    busy: Option<usize>,
    draining: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Phase {
    New,
    /// Copies written, no answer yet: the client waits.
    Prepared,
    /// 250 given.
    Acknowledged,
    /// 451 given.
    Refused,
    /// The client got 421, or no answer (the owner crashed): the message may or may
    /// not be delivered.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    view: View,
    nodes: Vec<Node>,
    phase: [Phase; 2],
    /// The highest copy epoch written for each message.
    newest_epoch: [u64; 2],
    /// Deliveries the remote side received, and outcomes committed, per recipient.
    remote_deliveries: [u8; 2],
    committed_outcomes: [u8; 2],
    /// Every eligible copy of the message was lost at once: beyond the guarantee.
    beyond: [bool; 2],
    stale_delivery: bool,
    /// A 250 was given while fewer than `FACTOR` copies were eligible under the arbiter's
    /// view: the owner's view lagged behind a holder's removal.
    thin_ack: bool,
    crashes: u8,
    wipes: u8,
    fences: u8,
    drains: u8,
    /// A held copy was dropped because its owner no longer had the message.
    leftover_dropped: bool,
    /// A node took over a pending copy (its writer gone before its commit arrived).
    pending_taken_over: bool,
    /// A crash took back a commit written without a sync.
    commit_taken_back: bool,
    /// A replica that acknowledged the message's prepare was removed from the view
    /// while the owner had not answered yet: its acknowledgement no longer holds
    /// (`LeaseTiming::acknowledgements_hold_for`), and the owner may only refuse.
    late: [bool; 2],
    /// The epoch of the record the owner wrote for the message (its transaction's).
    written_at: [u64; 2],
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Action {
    /// The owner writes its copy committed and each replica that takes it a pending one.
    Prepare(usize),
    /// Every replica acknowledged and every holder is still eligible: 250.
    Acknowledge(usize),
    /// After the 250, the owner's commit reaches the replicas that are up (or never does).
    CommitReplicas(usize),
    /// The owner refuses the message: 451 when no copy is left anywhere, else 421.
    Abort(usize),
    Crash(usize),
    Restart(usize),
    RestartWiped(usize),
    LoseApiServer(usize),
    Expire(usize),
    Refresh(usize),
    StartDelivery(usize, usize),
    FinishDelivery(usize, usize),
    GiveUpDelivery(usize),
    TakeOver(usize, usize),
    Rereplicate(usize, usize),
    Discard(usize, usize),
    Drain(usize),
    /// The node that delivered removes the message, and the removal reaches the other
    /// holders that are up, or (`false`) none of them: a lost removal.
    Remove(usize, usize, bool),
    /// A node asks whom `takeover.rs` asks about a copy it cannot act on alone (the
    /// witness for a stale copy, the owner for a held one) and drops the copy when that
    /// node, as the incarnation the copy names, no longer has the message.
    Ask(usize, usize),
}

struct World {
    /// How many of the two messages arrive.
    messages: usize,
    max_crashes: u8,
    max_wipes: u8,
    max_fences: u8,
    max_drains: u8,
}

fn incarnation(node: usize, n: u8) -> Incarnation {
    Incarnation(uuid::Uuid::from_u128(
        ((node as u128) << 8) | u128::from(n) | 1 << 64,
    ))
}

fn holder(state: &State, node: usize) -> Holder {
    Holder {
        node: NodeId(NODES[node].0.into()),
        incarnation: incarnation(node, state.nodes[node].incarnation),
    }
}

fn index_of(h: &Holder) -> usize {
    NODES
        .iter()
        .position(|(n, _)| *n == h.node.0)
        .unwrap_or(usize::MAX)
}

impl State {
    /// The holders (as node indexes) that are eligible under the arbiter's view and
    /// still have the copy on disk, committed or pending (after the 250, a pending copy
    /// is one the factor counts).
    fn eligible_copies(&self, m: usize) -> Vec<usize> {
        (0..NODES.len())
            .filter(|&n| {
                self.nodes[n]
                    .disk
                    .get(&m)
                    .is_some_and(|s| self.view.eligible(&holder(self, n), s.copy.epoch))
            })
            .collect()
    }

    fn duty(&self, n: usize, m: usize) -> Option<Duty> {
        let node = &self.nodes[n];
        let stored = node.disk.get(&m)?;
        Some(node.view.duty(&holder(self, n), &stored.copy))
    }

    fn ready(&self, n: usize) -> bool {
        let node = &self.nodes[n];
        node.up && !node.fenced && node.view.is_member(&holder(self, n))
    }

    /// Whether holder `h` takes `copy` when it is written to it: it is up, it is that
    /// incarnation, and its peer listener's check (`View::may_hold` under its own view,
    /// not fenced) lets it.
    fn accepts(&self, h: &Holder, copy: &Copy) -> bool {
        let n = index_of(h);
        n < NODES.len()
            && self.nodes[n].up
            && holder(self, n) == *h
            && !self.nodes[n].fenced
            && self.nodes[n].view.may_hold(h, copy)
    }

    /// Writes `copy` (with `done`) to every holder it names that is up; the owner waits
    /// for every eligible holder, so the caller checks they are up first.
    fn write_everywhere(&mut self, m: usize, copy: &Copy, done: bool) {
        for h in &copy.holders {
            let n = index_of(h);
            if n < NODES.len() && self.nodes[n].up && holder(self, n) == *h {
                self.nodes[n].disk.insert(
                    m,
                    Stored {
                        copy: copy.clone(),
                        done,
                    },
                );
            }
        }
        self.newest_epoch[m] = self.newest_epoch[m].max(copy.epoch);
    }

    /// Eligible holders of a copy (under the writer's view) are all up: the owner can
    /// collect every acknowledgement.
    fn all_eligible_up(&self, view: &View, copy: &Copy) -> bool {
        copy.holders
            .iter()
            .filter(|h| view.eligible(h, copy.epoch))
            .all(|h| {
                let n = index_of(h);
                n < NODES.len() && self.nodes[n].up && holder(self, n) == *h
            })
    }

    /// Node `n` crashes: its delivery in flight is lost, its disk stays. A message still
    /// being written by it is refused or unknown to the client: it never got 250.
    fn crash(&mut self, n: usize) {
        self.crashes += 1;
        let mut taken_back = false;
        let node = &mut self.nodes[n];
        node.up = false;
        node.busy = None;
        node.fenced = true;
        for (m, committed) in std::mem::take(&mut node.unsynced) {
            if let Some(stored) = node.disk.get_mut(&m)
                && stored.copy == committed
            {
                stored.copy.committed = false;
                taken_back = true;
            }
        }
        self.commit_taken_back |= taken_back;
        for (phase, &owner) in self.phase.iter_mut().zip(&ACCEPTED_BY) {
            if owner == n && *phase == Phase::Prepared {
                *phase = Phase::Unknown;
            }
        }
    }

    /// Marks messages whose last eligible copy a fault is about to take away.
    fn note_losses(&mut self, n: usize) {
        for m in 0..2 {
            let copies = self.eligible_copies(m);
            if copies == [n] {
                self.beyond[m] = true;
            }
        }
    }
}

impl Model for World {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let mut view = View::default();
        let mut nodes = Vec::new();
        for (i, (name, dc)) in NODES.iter().enumerate() {
            let h = Holder {
                node: NodeId((*name).into()),
                incarnation: incarnation(i, 0),
            };
            view = view.join(&h, dc, name).unwrap_or(view);
            nodes.push(Node {
                up: true,
                fenced: false,
                incarnation: 0,
                view: View::default(),
                disk: BTreeMap::new(),
                unsynced: BTreeMap::new(),
                busy: None,
                draining: false,
            });
        }
        for node in &mut nodes {
            node.view = view.clone();
        }
        vec![State {
            view,
            nodes,
            phase: [Phase::New; 2],
            newest_epoch: [0; 2],
            remote_deliveries: [0; 2],
            committed_outcomes: [0; 2],
            beyond: [false; 2],
            stale_delivery: false,
            thin_ack: false,
            crashes: 0,
            wipes: 0,
            fences: 0,
            drains: 0,
            leftover_dropped: false,
            pending_taken_over: false,
            commit_taken_back: false,
            late: [false; 2],
            written_at: [0; 2],
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        for (m, &owner) in ACCEPTED_BY.iter().enumerate().take(self.messages) {
            match s.phase[m] {
                Phase::New if s.ready(owner) && !s.nodes[owner].draining => {
                    actions.push(Action::Prepare(m))
                }
                Phase::Prepared if s.ready(owner) => {
                    actions.push(Action::Acknowledge(m));
                    actions.push(Action::Abort(m));
                }
                Phase::Acknowledged if s.nodes[owner].up => {
                    actions.push(Action::CommitReplicas(m));
                }
                _ => {}
            }
        }
        for n in 0..NODES.len() {
            let node = &s.nodes[n];
            if node.up {
                if s.crashes < self.max_crashes {
                    actions.push(Action::Crash(n));
                }
                if !node.fenced && s.fences < self.max_fences {
                    actions.push(Action::LoseApiServer(n));
                }
                if node.fenced || node.view != s.view {
                    actions.push(Action::Refresh(n));
                }
                if node.busy.is_some() && node.fenced {
                    actions.push(Action::GiveUpDelivery(n));
                }
            } else {
                actions.push(Action::Restart(n));
                if s.wipes < self.max_wipes {
                    actions.push(Action::RestartWiped(n));
                }
            }
            if (!node.up || node.fenced) && s.view.members.contains_key(&holder(s, n).node) {
                actions.push(Action::Expire(n));
            }
            if !s.ready(n) {
                continue;
            }
            if !node.draining && s.drains < self.max_drains {
                actions.push(Action::Drain(n));
            }
            for (&m, stored) in &node.disk {
                if ACCEPTED_BY[m] == n && s.phase[m] == Phase::Prepared {
                    // Its transaction is running on this node: the takeover pass leaves
                    // it alone (`ReplicatedSpool::is_being_stored`).
                    continue;
                }
                match node.view.duty(&holder(s, n), &stored.copy) {
                    Duty::Deliver if !stored.done => {
                        if node.busy.is_none() {
                            actions.push(Action::StartDelivery(n, m));
                        }
                        if node.busy == Some(m) {
                            actions.push(Action::FinishDelivery(n, m));
                        }
                        if node.view.copies(&stored.copy) < FACTOR {
                            actions.push(Action::Rereplicate(n, m));
                        }
                    }
                    Duty::Deliver if node.busy.is_none() => {
                        actions.push(Action::Remove(n, m, true));
                        actions.push(Action::Remove(n, m, false));
                    }
                    Duty::TakeOver => actions.push(Action::TakeOver(n, m)),
                    Duty::Discard => actions.push(Action::Discard(n, m)),
                    Duty::Stale => actions.push(Action::Ask(n, m)),
                    Duty::Hold { .. } if stored.copy.committed => actions.push(Action::Ask(n, m)),
                    _ => {}
                }
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Prepare(m) => {
                let owner = ACCEPTED_BY[m];
                let view = s.nodes[owner].view.clone();
                let me = holder(&s, owner);
                let candidates: Vec<Candidate> = (0..NODES.len())
                    .filter(|&n| n != owner && s.nodes[owner].view.is_member(&holder(&s, n)))
                    .map(|n| Candidate {
                        holder: holder(&s, n),
                        data_centre: NODES[n].1.into(),
                    })
                    .collect();
                let Ok(replicas) =
                    choose_replicas(NODES[owner].1, &candidates, FACTOR, MIN_DCS, m as u128)
                else {
                    s.phase[m] = Phase::Refused;
                    return Some(s);
                };
                let mut holders = vec![me];
                holders.extend(replicas);
                let copy = Copy {
                    holders,
                    epoch: view.epoch,
                    committed: false,
                };
                // Replicas that are down or refuse never acknowledge: the owner refuses
                // (Abort); those that accept have written the copy, pending. The owner's
                // own copy is written committed.
                let owner_copy = Stored {
                    copy: Copy {
                        committed: true,
                        ..copy.clone()
                    },
                    done: false,
                };
                s.nodes[owner].disk.insert(m, owner_copy);
                for h in copy.holders.iter().skip(1) {
                    if s.accepts(h, &copy) {
                        let n = index_of(h);
                        s.nodes[n].disk.insert(
                            m,
                            Stored {
                                copy: copy.clone(),
                                done: false,
                            },
                        );
                    }
                }
                s.newest_epoch[m] = s.newest_epoch[m].max(copy.epoch);
                s.written_at[m] = copy.epoch;
                s.phase[m] = Phase::Prepared;
            }
            Action::Acknowledge(m) => {
                let owner = ACCEPTED_BY[m];
                if s.late[m] {
                    return None;
                }
                let stored = s.nodes[owner].disk.get(&m)?.clone();
                if !s.nodes[owner]
                    .view
                    .may_commit(&holder(&s, owner), &stored.copy)
                {
                    return None;
                }
                let pending = Copy {
                    committed: false,
                    ..stored.copy.clone()
                };
                // Every replica acknowledged: it wrote the pending copy (it may have
                // crashed since; its disk keeps it).
                let all_took = stored.copy.holders.iter().skip(1).all(|h| {
                    let n = index_of(h);
                    n < NODES.len()
                        && holder(&s, n) == *h
                        && s.nodes[n].disk.get(&m).is_some_and(|x| x.copy == pending)
                });
                if !all_took {
                    return None;
                }
                // Eligible, not only counting: a copy on a node that started draining
                // while the message was being written is still a copy; the drain is not
                // done until the factor holds without it.
                let eligible = stored
                    .copy
                    .holders
                    .iter()
                    .filter(|h| s.view.eligible(h, stored.copy.epoch))
                    .count();
                if eligible < FACTOR {
                    s.thin_ack = true;
                }
                s.phase[m] = Phase::Acknowledged;
            }
            Action::CommitReplicas(m) => {
                let owner = ACCEPTED_BY[m];
                let copy = s.nodes[owner].disk.get(&m)?.copy.clone();
                let pending = Copy {
                    committed: false,
                    ..copy.clone()
                };
                let mut changed = false;
                for h in copy.holders.iter().skip(1) {
                    let n = index_of(h);
                    if n < NODES.len()
                        && s.accepts(h, &copy)
                        && let node = &mut s.nodes[n]
                        && let Some(x) = node.disk.get_mut(&m)
                        && x.copy == pending
                    {
                        x.copy.committed = true;
                        node.unsynced.insert(m, x.copy.clone());
                        changed = true;
                    }
                }
                if !changed {
                    return None;
                }
            }
            Action::Abort(m) => {
                // The owner drops its copy (if it is still the one it wrote) and tells the
                // replicas it can reach; one it cannot confirm may keep a pending copy,
                // and the client then hears 421.
                let owner = ACCEPTED_BY[m];
                let me = holder(&s, owner);
                let epoch = s.written_at[m];
                let mut holders = vec![me.clone()];
                if let Some(mine) = s.nodes[owner].disk.get(&m)
                    && mine.copy.epoch == epoch
                    && mine.copy.holders.first() == Some(&me)
                {
                    holders = mine.copy.holders.clone();
                    s.nodes[owner].disk.remove(&m);
                }
                for h in holders.iter().skip(1) {
                    let n = index_of(h);
                    // A holder drops only a pending copy: a committed one was taken over.
                    if s.nodes[n].up
                        && holder(&s, n) == *h
                        && s.nodes[n].disk.get(&m).is_some_and(|x| !x.copy.committed)
                    {
                        s.nodes[n].disk.remove(&m);
                    }
                }
                // A 451 also needs the owner never to have left the view since it wrote
                // the copies: only then could no replica have taken the message over.
                let intact = s.nodes[owner].view.eligible(&me, epoch);
                let left = s.nodes.iter().any(|node| node.disk.contains_key(&m));
                s.phase[m] = if left || !intact {
                    Phase::Unknown
                } else {
                    Phase::Refused
                };
            }
            Action::Crash(n) => s.crash(n),
            Action::Restart(n) => {
                s.nodes[n].up = true;
                s.nodes[n].fenced = true;
            }
            Action::RestartWiped(n) => {
                s.note_losses(n);
                s.wipes += 1;
                let node = &mut s.nodes[n];
                node.up = true;
                node.fenced = true;
                node.disk.clear();
                node.unsynced.clear();
                node.incarnation += 1;
            }
            Action::LoseApiServer(n) => {
                s.fences += 1;
                s.nodes[n].fenced = true;
            }
            Action::Expire(n) => {
                let name = holder(&s, n).node;
                s.note_losses(n);
                for m in 0..2 {
                    if s.phase[m] == Phase::Prepared && s.nodes[n].disk.contains_key(&m) {
                        s.late[m] = true;
                    }
                }
                s.view = s.view.remove(&[name])?;
            }
            Action::Refresh(n) => {
                let me = holder(&s, n);
                if let Some(joined) = s.view.join(&me, NODES[n].1, NODES[n].0) {
                    s.view = joined;
                }
                s.nodes[n].view = s.view.clone();
                s.nodes[n].fenced = false;
            }
            Action::StartDelivery(n, m) => {
                let epoch = s.nodes[n].disk.get(&m)?.copy.epoch;
                if epoch < s.newest_epoch[m] {
                    s.stale_delivery = true;
                }
                s.nodes[n].busy = Some(m);
                s.remote_deliveries[m] = s.remote_deliveries[m].saturating_add(1);
            }
            Action::FinishDelivery(n, m) => {
                let view = s.nodes[n].view.clone();
                let copy = s.nodes[n].disk.get(&m)?.copy.clone();
                if !s.all_eligible_up(&view, &copy) {
                    return None;
                }
                s.write_everywhere(m, &copy, true);
                s.nodes[n].busy = None;
                s.committed_outcomes[m] = s.committed_outcomes[m].saturating_add(1);
            }
            Action::GiveUpDelivery(n) => {
                s.nodes[n].busy = None;
            }
            Action::TakeOver(n, m) => {
                let view = s.nodes[n].view.clone();
                let stored = s.nodes[n].disk.get(&m)?.clone();
                if !s.all_eligible_up(&view, &stored.copy) {
                    return None;
                }
                // The outcome known to any eligible holder flows into the new record.
                let done = stored.copy.holders.iter().any(|h| {
                    let i = index_of(h);
                    view.eligible(h, stored.copy.epoch)
                        && s.nodes[i].disk.get(&m).is_some_and(|x| x.done)
                });
                let copy = view.taken_over(&holder(&s, n), &stored.copy, &[]);
                s.pending_taken_over |= !stored.copy.committed;
                s.write_everywhere(m, &copy, done);
            }
            Action::Rereplicate(n, m) => {
                let view = s.nodes[n].view.clone();
                let stored = s.nodes[n].disk.get(&m)?.clone();
                if !s.all_eligible_up(&view, &stored.copy) {
                    return None;
                }
                let candidates: Vec<Candidate> = (0..NODES.len())
                    .filter(|&c| {
                        let h = holder(&s, c);
                        // A new holder takes the copy only if its own check lets it.
                        view.is_member(&h)
                            && !view.is_leaving(&h.node)
                            && !stored.copy.holders.contains(&h)
                            && s.nodes[c].up
                            && !s.nodes[c].fenced
                            && s.nodes[c].view.eligible(&h, view.epoch)
                    })
                    .map(|c| Candidate {
                        holder: holder(&s, c),
                        data_centre: NODES[c].1.into(),
                    })
                    .collect();
                let wanted = FACTOR - view.copies(&stored.copy);
                let added =
                    choose_replicas(NODES[n].1, &candidates, wanted + 1, 1, m as u128).ok()?;
                let copy = view.taken_over(&holder(&s, n), &stored.copy, &added);
                s.write_everywhere(m, &copy, stored.done);
            }
            Action::Discard(n, m) => {
                s.nodes[n].disk.remove(&m);
            }
            Action::Remove(n, m, reaches_others) => {
                let copy = s.nodes[n].disk.remove(&m)?.copy;
                if reaches_others {
                    for h in &copy.holders {
                        let i = index_of(h);
                        if i < NODES.len() && s.nodes[i].up && holder(&s, i) == *h {
                            s.nodes[i].disk.remove(&m);
                        }
                    }
                }
            }
            Action::Ask(n, m) => {
                let me = holder(&s, n);
                let view = &s.nodes[n].view;
                let copy = &s.nodes[n].disk.get(&m)?.copy;
                let duty = view.duty(&me, copy);
                let asked = match duty {
                    Duty::Stale => view.witness(&me, copy),
                    Duty::Hold { .. } => view.owner(copy),
                    _ => None,
                }?;
                let w = index_of(asked);
                // Only that incarnation answers, and only while it is up.
                if w >= NODES.len() || !s.nodes[w].up || holder(&s, w) != *asked {
                    return None;
                }
                if s.nodes[w].disk.contains_key(&m) {
                    return None;
                }
                s.leftover_dropped |= duty != Duty::Stale;
                s.nodes[n].disk.remove(&m);
            }
            Action::Drain(n) => {
                // The node stops starting deliveries, waits for the one in flight, and
                // marks itself leaving in the view (compare-and-set); the others take its
                // messages over and restore the factor without it.
                if s.nodes[n].busy.is_some() {
                    return None;
                }
                s.drains += 1;
                s.view = s.view.mark_leaving(&holder(&s, n), true)?;
                s.nodes[n].view = s.view.clone();
                s.nodes[n].draining = true;
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut properties = vec![
            Property::always("no acknowledged message is lost", |_, s: &State| {
                (0..2).all(|m| {
                    s.phase[m] != Phase::Acknowledged
                        || s.beyond[m]
                        || s.committed_outcomes[m] > 0
                        || !s.eligible_copies(m).is_empty()
                })
            }),
            Property::always(
                "every 250 rests on replicationFactor copies eligible under the arbiter's view",
                |_, s: &State| !s.thin_ack,
            ),
            Property::always(
                "no delivery starts at an epoch older than one written",
                |_, s: &State| !s.stale_delivery,
            ),
            Property::always("at most one final outcome per recipient", |_, s: &State| {
                s.committed_outcomes.iter().all(|&c| c <= 1)
            }),
            Property::always(
                "a message refused with 451 is never delivered",
                |_, s: &State| {
                    (0..2).all(|m| s.phase[m] != Phase::Refused || s.remote_deliveries[m] == 0)
                },
            ),
            Property::always("at most one node may deliver a message", |_, s: &State| {
                (0..2).all(|m| {
                    (0..NODES.len())
                        .filter(|&n| s.ready(n) && s.duty(n, m) == Some(Duty::Deliver))
                        .count()
                        <= 1
                })
            }),
            // The checks above mean something only if the faults really happen: each
            // world must reach these.
            Property::sometimes("an acknowledged message is delivered", |_, s: &State| {
                (0..2).any(|m| s.phase[m] == Phase::Acknowledged && s.committed_outcomes[m] == 1)
            }),
            Property::sometimes(
                "a copy left behind by a lost removal is dropped",
                |_, s: &State| s.leftover_dropped,
            ),
        ];
        if self.max_crashes > 0 {
            properties.push(Property::sometimes(
                "a message is delivered by a node that took it over",
                |_, s: &State| {
                    (0..2).any(|m| {
                        s.committed_outcomes[m] == 1
                            && s.newest_epoch[m] > 3
                            && s.phase[m] == Phase::Acknowledged
                    })
                },
            ));
            properties.push(Property::sometimes(
                "a pending copy is taken over once its writer is gone",
                |_, s: &State| s.pending_taken_over,
            ));
            properties.push(Property::sometimes(
                "a crash takes back a commit written without a sync",
                |_, s: &State| s.commit_taken_back,
            ));
            properties.push(Property::sometimes(
                "a delivery in flight is repeated",
                |_, s: &State| s.remote_deliveries.iter().any(|&d| d > 1),
            ));
        }
        if self.max_wipes > 0 {
            properties.push(Property::sometimes(
                "an acknowledged message outlives a wiped disk",
                |_, s: &State| {
                    s.wipes > 0
                        && (0..2).any(|m| {
                            s.phase[m] == Phase::Acknowledged && s.committed_outcomes[m] == 1
                        })
                },
            ));
        }
        if self.max_drains > 0 {
            properties.push(Property::sometimes(
                "a drain completes: the node holds copies none of which needs it",
                |_, s: &State| {
                    s.nodes.iter().enumerate().any(|(n, node)| {
                        node.draining
                            && node.up
                            && node.disk.values().any(|st| st.copy.committed)
                            && node
                                .disk
                                .values()
                                .all(|st| !s.view.needs(&holder(s, n), &st.copy, FACTOR))
                    })
                },
            ));
            properties.push(Property::sometimes(
                "a drained node's message is delivered by another",
                |_, s: &State| {
                    s.nodes.iter().enumerate().any(|(n, node)| {
                        node.draining
                            && (0..2).any(|m| {
                                ACCEPTED_BY[m] == n
                                    && s.phase[m] == Phase::Acknowledged
                                    && s.committed_outcomes[m] == 1
                            })
                    })
                },
            ));
        }
        properties
    }
}

/// Explores every reachable state depth-first (memory grows with the depth, not the
/// state count) and fails with a counterexample path when a property does not hold.
fn check(world: World) {
    let checker = world.checker().threads(2).spawn_dfs().join();
    eprintln!(
        "model check: {} states, {} unique",
        checker.state_count(),
        checker.unique_state_count()
    );
    checker.assert_properties();
}

#[test]
fn two_crashes_and_a_wiped_disk() {
    check(World {
        messages: 1,
        max_crashes: 2,
        max_wipes: 1,
        max_fences: 0,
        max_drains: 0,
    });
}

#[test]
fn a_crash_a_wiped_disk_and_a_lost_api_server() {
    check(World {
        messages: 1,
        max_crashes: 1,
        max_wipes: 1,
        max_fences: 1,
        max_drains: 0,
    });
}

#[test]
fn a_drain_among_crashes() {
    check(World {
        messages: 1,
        max_crashes: 1,
        max_wipes: 0,
        max_fences: 1,
        max_drains: 1,
    });
}

#[test]
fn two_messages_from_two_data_centres() {
    check(World {
        messages: 2,
        max_crashes: 1,
        max_wipes: 1,
        max_fences: 0,
        max_drains: 0,
    });
}

/// The widest world: both messages, two crashes, a wiped disk and a node cut off from the
/// API server. More than twenty minutes on two cores, so not part of the test command:
/// run it with `--ignored` when the protocol changes.
#[test]
#[ignore]
fn everything_at_once() {
    check(World {
        messages: 2,
        max_crashes: 2,
        max_wipes: 1,
        max_fences: 1,
        max_drains: 1,
    });
}
