//! The pool's view and what a node may do with one copy of a message.
//!
//! The view lives in the API server and changes only by compare-and-set, so every node
//! that reads epoch `e` reads the same members. A member is a spool *incarnation* (a disk),
//! not a process: a node restarted on the same disk is the same member, a node that comes
//! back with an empty disk is a new one. `since` is the epoch at which the incarnation
//! (re)joined; an incarnation removed from the view and let in again gets a new `since`.
//!
//! Each copy of a message carries its ownership record: the holders in rank order and the
//! epoch at which that list was written. A holder is *eligible* for a copy when it is a
//! member of the view with the same incarnation and has been one without a break since
//! the copy's epoch (`since <= epoch`). Whoever is eligible has received every change of
//! the message since then (the owner waits for every eligible holder's acknowledgement
//! before a change counts), and whoever left the view in between may have missed some, so
//! never owns the message again. The owner is the first eligible holder in rank order.
//! Holder lists only ever keep the rank of the holders they keep and append new ones, so
//! two copies of different age name the same owner whenever an older copy's holder is
//! still eligible (see `docs/replication.md`, "Why two copies agree").

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::spool::NodeId;

/// A spool's identity: made when the spool directory is first created, kept for its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Incarnation(pub uuid::Uuid);

impl Incarnation {
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4())
    }
}

/// The file in a spool directory that names its incarnation.
pub const INCARNATION_FILE: &str = "INCARNATION";

impl Incarnation {
    /// The incarnation of the spool in `dir`, made (and synced, with the directory) when
    /// the spool has none: an empty disk is a new incarnation by construction.
    pub fn load_or_create(dir: &std::path::Path) -> std::io::Result<Self> {
        let path = dir.join(INCARNATION_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => uuid::Uuid::parse_str(text.trim()).map(Self).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)?;
                let new = Self::new();
                let tmp = dir.join(format!("{INCARNATION_FILE}.tmp"));
                {
                    use std::io::Write;
                    let mut file = std::fs::File::create(&tmp)?;
                    writeln!(file, "{}", new.0)?;
                    file.sync_all()?;
                }
                std::fs::rename(&tmp, &path)?;
                std::fs::File::open(dir)?.sync_all()?;
                Ok(new)
            }
            Err(e) => Err(e),
        }
    }
}

impl Default for Incarnation {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.simple())
    }
}

/// One node's spool holding a copy.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Holder {
    pub node: NodeId,
    pub incarnation: Incarnation,
}

/// A member of the view.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub incarnation: Incarnation,
    /// The epoch at which this incarnation joined without a break since.
    pub since: u64,
    pub data_centre: String,
    /// Where its peer listener is reached (`host:port`).
    pub address: String,
    /// Draining: it stays a member and keeps its copies up to date, but no longer counts
    /// towards the replication factor and owns a message only when no other holder can.
    /// So every other node, reading the view, takes its messages over and restores the
    /// factor without it, and the node can go once it holds nothing that needs it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
}

/// The pool's membership at one epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct View {
    pub epoch: u64,
    pub members: BTreeMap<NodeId, Member>,
}

/// One holder's record of a message's replication.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Copy {
    /// Holders in rank order; the first is the owner that wrote this list.
    pub holders: Vec<Holder>,
    /// The view epoch at which this list was written.
    pub epoch: u64,
    /// The owner writes its own copy committed; a replica's copy arrives uncommitted
    /// (pending) and is marked committed when the owner's commit reaches it, after the
    /// 250. A pending copy therefore proves nothing about the 250: while its writer is
    /// eligible the writer knows, and once the writer is gone the copy is treated as
    /// committed (the writer answers 451 only after every replica confirmed dropping it).
    pub committed: bool,
}

/// What a node is to do with its copy of a message, given the view it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Duty {
    /// This node owns the message and its copy names it first: deliver it.
    Deliver,
    /// This node owns the message under the view, but the copy still names a holder that
    /// left: write a new holder list at the view's epoch to every eligible holder, then
    /// deliver.
    TakeOver,
    /// Another holder owns the message: keep the copy, deliver nothing.
    Hold { owner: NodeId },
    /// This copy's incarnation left the view after the copy's epoch, so it may have missed
    /// changes (a newer record elsewhere may not even name it): never deliver from it. It
    /// is kept on disk: when every eligible holder is gone too, it is the last copy.
    Stale,
    /// The copy was written under a newer view than this node's: read the view again
    /// before deciding anything about it.
    ReadView,
    /// This node wrote the copy and it is still uncommitted: a record of the two-phase
    /// protocol, written by an earlier version that restarted before committing, for
    /// which no 250 was given. Drop it. (An owner now writes its own copy committed.)
    Discard,
}

impl View {
    /// Whether `holder` may act on a copy written at `copy_epoch`.
    pub fn eligible(&self, holder: &Holder, copy_epoch: u64) -> bool {
        self.members
            .get(&holder.node)
            .is_some_and(|m| m.incarnation == holder.incarnation && m.since <= copy_epoch)
    }

    /// Whether `holder` is eligible for a copy written at `copy_epoch` and not leaving:
    /// one of the copies the replication factor counts.
    pub fn counts(&self, holder: &Holder, copy_epoch: u64) -> bool {
        self.eligible(holder, copy_epoch)
            && self.members.get(&holder.node).is_some_and(|m| !m.leaving)
    }

    /// The member that owns a copy: the first eligible holder in rank order that is not
    /// leaving, or, when every eligible holder is leaving, the first eligible one (a
    /// draining node still delivers what nobody else can).
    pub fn owner<'a>(&self, copy: &'a Copy) -> Option<&'a Holder> {
        copy.holders
            .iter()
            .find(|h| self.counts(h, copy.epoch))
            .or_else(|| copy.holders.iter().find(|h| self.eligible(h, copy.epoch)))
    }

    /// Holders of a copy that count towards the replication factor.
    pub fn copies(&self, copy: &Copy) -> usize {
        copy.holders
            .iter()
            .filter(|h| self.counts(h, copy.epoch))
            .count()
    }

    /// Whether a draining `me` is still needed for its copy: it owns the message, or the
    /// message has fewer than `factor` copies without it. A drain is done when no copy
    /// on the node needs it. An uncommitted copy is needed while its writer is eligible:
    /// the writer may still commit it and answer 250, and then the copy may be one the
    /// factor needs. (One whose writer is gone is discarded by the takeover pass; one
    /// whose commit never arrived waits for its writer to finish the message.)
    pub fn needs(&self, me: &Holder, copy: &Copy, factor: usize) -> bool {
        if self.writer_decides(me, copy) {
            return true;
        }
        self.owner(copy) == Some(me) || self.copies(copy) < factor
    }

    /// Whether an uncommitted copy's writer (another node, still eligible) alone knows
    /// whether it answered 250: the copy is held for it. Otherwise the copy is as good as
    /// committed (its writer is gone and may have answered 250) or committed.
    pub fn writer_decides(&self, me: &Holder, copy: &Copy) -> bool {
        !copy.committed
            && copy
                .holders
                .first()
                .is_some_and(|w| w != me && self.eligible(w, copy.epoch))
    }

    /// Whether a copy stands for a message that may have been answered with 250: it is
    /// committed, or its writer is gone (the copy is taken over like a committed one).
    pub fn may_be_acknowledged(&self, me: &Holder, copy: &Copy) -> bool {
        copy.committed || (!self.writer_decides(me, copy) && copy.holders.first() != Some(me))
    }

    /// Whether `node` is a member marked leaving.
    pub fn is_leaving(&self, node: &NodeId) -> bool {
        self.members.get(node).is_some_and(|m| m.leaving)
    }

    /// The view with `me` marked leaving (or no longer leaving), or `None` when it
    /// already is so or is not a member.
    pub fn mark_leaving(&self, me: &Holder, leaving: bool) -> Option<View> {
        if !self.is_member(me) || self.is_leaving(&me.node) == leaving {
            return None;
        }
        let mut next = self.clone();
        next.epoch += 1;
        if let Some(m) = next.members.get_mut(&me.node) {
            m.leaving = leaving;
        }
        Some(next)
    }

    pub fn is_member(&self, holder: &Holder) -> bool {
        self.members
            .get(&holder.node)
            .is_some_and(|m| m.incarnation == holder.incarnation)
    }

    /// The view with `holder` a member, or `None` when it already is one. A node that
    /// comes back after removal, or with another disk, joins at the next epoch.
    pub fn join(&self, holder: &Holder, data_centre: &str, address: &str) -> Option<View> {
        if self.is_member(holder) {
            return None;
        }
        let mut next = self.clone();
        next.epoch += 1;
        next.members.insert(
            holder.node.clone(),
            Member {
                incarnation: holder.incarnation,
                since: next.epoch,
                data_centre: data_centre.to_owned(),
                address: address.to_owned(),
                leaving: false,
            },
        );
        Some(next)
    }

    /// The view without `nodes`, or `None` when none of them is a member. Only for nodes
    /// whose Lease has expired by the takeover margin: a removed node must have fenced
    /// itself already (`lease.rs`).
    pub fn remove(&self, nodes: &[NodeId]) -> Option<View> {
        if !nodes.iter().any(|n| self.members.contains_key(n)) {
            return None;
        }
        let mut next = self.clone();
        next.epoch += 1;
        for node in nodes {
            next.members.remove(node);
        }
        Some(next)
    }

    /// What `me` is to do with its `copy`. Only for copies at rest: a transaction still
    /// running on this node is its own business until it commits.
    pub fn duty(&self, me: &Holder, copy: &Copy) -> Duty {
        if copy.epoch > self.epoch {
            return Duty::ReadView;
        }
        if !self.eligible(me, copy.epoch) {
            return Duty::Stale;
        }
        if !copy.committed {
            match copy.holders.first() {
                Some(w) if w == me => return Duty::Discard,
                Some(w) if self.eligible(w, copy.epoch) => {
                    return Duty::Hold {
                        owner: w.node.clone(),
                    };
                }
                // The writer is gone: it may have answered 250 (one-phase commit,
                // `docs/replication.md`), so the copy is taken over like a committed one.
                _ => {}
            }
        }
        let Some(owner) = self.owner(copy) else {
            // Unreachable: this node is eligible, so some holder is.
            return Duty::Stale;
        };
        if owner != me {
            return Duty::Hold {
                owner: owner.node.clone(),
            };
        }
        if copy.holders.first() == Some(me) {
            Duty::Deliver
        } else {
            Duty::TakeOver
        }
    }

    /// Whether `me`, holding this view and not fenced, may take a copy or a new record
    /// written at `copy.epoch`: only while it would count as one of the copy's eligible
    /// holders. The writer's view may lag behind the arbiter's; this node's may not lag
    /// behind its own removal, as it is fenced until it has read the view that let it in
    /// again, with a `since` newer than any copy written before. So a holder that left
    /// the view (or left and came back) never acknowledges a copy that would not count,
    /// and no 250 rests on it.
    pub fn may_hold(&self, me: &Holder, copy: &Copy) -> bool {
        copy.holders.contains(me) && self.eligible(me, copy.epoch)
    }

    /// Whom a node with a stale copy asks whether the message still exists: a holder
    /// that has been a member without a break since the copy was written. Every later
    /// change of the message reached it (owners wait for every eligible holder, and a
    /// holder that never left stays in every later record), so if it no longer holds
    /// the message, the message is done and the stale copy is garbage. With no such
    /// holder, nobody alive can vouch either way: the copy may be the last one.
    pub fn witness<'a>(&self, me: &Holder, copy: &'a Copy) -> Option<&'a Holder> {
        copy.holders
            .iter()
            .find(|h| *h != me && self.eligible(h, copy.epoch))
    }

    /// Whether the writer of a prepared copy may commit it and answer 250: every holder,
    /// itself included, is still eligible under its current view. A holder that left the
    /// view while the copies were being written does not count, nor does the writer if it
    /// was itself removed and let in again meanwhile.
    pub fn may_commit(&self, me: &Holder, copy: &Copy) -> bool {
        copy.holders.first() == Some(me)
            && copy.epoch <= self.epoch
            && copy.holders.iter().all(|h| self.eligible(h, copy.epoch))
    }

    /// The ownership record a new owner writes when it takes a copy over: itself first,
    /// then the other eligible holders in their rank, then `added` (new holders that
    /// restore the replication factor), at this view's epoch.
    pub fn taken_over(&self, me: &Holder, copy: &Copy, added: &[Holder]) -> Copy {
        let mut holders = vec![me.clone()];
        holders.extend(
            copy.holders
                .iter()
                .filter(|h| *h != me && self.eligible(h, copy.epoch))
                .cloned(),
        );
        for h in added {
            if !holders.contains(h) {
                holders.push(h.clone());
            }
        }
        Copy {
            holders,
            epoch: self.epoch,
            committed: true,
        }
    }

    /// Data centre of a member.
    pub fn data_centre(&self, node: &NodeId) -> Option<&str> {
        self.members.get(node).map(|m| m.data_centre.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(name: &str, inc: u128) -> Holder {
        Holder {
            node: NodeId(name.into()),
            incarnation: Incarnation(uuid::Uuid::from_u128(inc)),
        }
    }

    fn view(epoch: u64, members: &[(&str, u128, u64)]) -> View {
        View {
            epoch,
            members: members
                .iter()
                .map(|(n, inc, since)| {
                    (
                        NodeId((*n).into()),
                        Member {
                            incarnation: Incarnation(uuid::Uuid::from_u128(*inc)),
                            since: *since,
                            data_centre: "dc".into(),
                            address: format!("{n}:7946"),
                            leaving: false,
                        },
                    )
                })
                .collect(),
        }
    }

    fn copy(holders: &[Holder], epoch: u64) -> Copy {
        Copy {
            holders: holders.to_vec(),
            epoch,
            committed: true,
        }
    }

    #[test]
    fn the_first_holder_delivers_while_it_is_a_member() {
        let (a, b) = (holder("a", 1), holder("b", 2));
        let v = view(3, &[("a", 1, 1), ("b", 2, 2)]);
        let c = copy(&[a.clone(), b.clone()], 3);
        assert_eq!(v.duty(&a, &c), Duty::Deliver);
        assert_eq!(
            v.duty(&b, &c),
            Duty::Hold {
                owner: NodeId("a".into())
            }
        );
    }

    #[test]
    fn the_next_holder_takes_over_once_the_owner_left() {
        let (a, b, c) = (holder("a", 1), holder("b", 2), holder("c", 3));
        let v = view(4, &[("b", 2, 1), ("c", 3, 1)]);
        let cp = copy(&[a.clone(), b.clone(), c.clone()], 2);
        assert_eq!(v.duty(&b, &cp), Duty::TakeOver);
        assert_eq!(
            v.duty(&c, &cp),
            Duty::Hold {
                owner: NodeId("b".into())
            }
        );
        let next = v.taken_over(&b, &cp, &[]);
        assert_eq!(next.holders, vec![b.clone(), c.clone()]);
        assert_eq!(next.epoch, 4);
        assert_eq!(v.duty(&b, &next), Duty::Deliver);
    }

    #[test]
    fn a_holder_that_left_and_came_back_is_stale_for_older_copies() {
        let (a, b) = (holder("a", 1), holder("b", 2));
        // a left at some epoch and joined again at 5; b stayed throughout.
        let v = view(5, &[("a", 1, 5), ("b", 2, 1)]);
        let c = copy(&[a.clone(), b.clone()], 3);
        assert_eq!(v.duty(&a, &c), Duty::Stale);
        assert_eq!(v.duty(&b, &c), Duty::TakeOver);
        // A copy written after a joined again counts it.
        let newer = copy(&[b.clone(), a.clone()], 5);
        assert!(v.eligible(&a, newer.epoch));
        assert_eq!(v.copies(&newer), 2);
    }

    #[test]
    fn a_new_disk_is_a_new_member_and_holds_nothing() {
        let (a_old, a_new, b) = (holder("a", 1), holder("a", 9), holder("b", 2));
        let v = view(6, &[("a", 9, 6), ("b", 2, 1)]);
        let c = copy(&[a_old.clone(), b.clone()], 2);
        assert!(!v.eligible(&a_old, 2));
        assert_eq!(v.copies(&c), 1);
        assert_eq!(v.owner(&c), Some(&b));
        assert_eq!(v.join(&a_new, "dc", "a:7946"), None, "already a member");
        let rejoined = v
            .join(&a_old, "dc", "a:7946")
            .expect("another incarnation joins");
        assert_eq!(rejoined.epoch, 7);
        assert_eq!(rejoined.members[&NodeId("a".into())].since, 7);
    }

    #[test]
    fn nobody_owns_a_copy_whose_holders_all_left() {
        let (a, b) = (holder("a", 1), holder("b", 2));
        let v = view(5, &[("c", 3, 1)]);
        let c = copy(&[a.clone(), b.clone()], 2);
        assert_eq!(v.duty(&a, &c), Duty::Stale);
        assert_eq!(v.owner(&c), None);
    }

    #[test]
    fn a_pending_copy_is_held_for_its_writer_and_taken_over_once_the_writer_is_gone() {
        let (a, b, c) = (holder("a", 1), holder("b", 2), holder("c", 3));
        let mut pending = copy(&[a.clone(), b.clone(), c.clone()], 1);
        pending.committed = false;
        let all = view(1, &[("a", 1, 1), ("b", 2, 1), ("c", 3, 1)]);
        assert_eq!(
            all.duty(&b, &pending),
            Duty::Hold {
                owner: NodeId("a".into())
            }
        );
        assert!(all.writer_decides(&b, &pending));
        assert!(!all.may_be_acknowledged(&b, &pending));
        // A pending copy the writer wrote itself: only an earlier two-phase version left
        // such a record, and it never answered 250 for it.
        assert_eq!(all.duty(&a, &pending), Duty::Discard);
        assert!(!all.may_be_acknowledged(&a, &pending));
        // The writer is gone and may have answered 250: the next holder in rank takes
        // the message over, the one after it holds its copy for the new owner.
        let without_a = all.remove(&[NodeId("a".into())]).expect("a is a member");
        assert_eq!(without_a.duty(&b, &pending), Duty::TakeOver);
        assert_eq!(
            without_a.duty(&c, &pending),
            Duty::Hold {
                owner: NodeId("b".into())
            }
        );
        assert!(without_a.may_be_acknowledged(&b, &pending));
        // A draining b waits for a live writer's word; without the writer, for the factor.
        assert!(all.needs(&b, &pending, 2));
        assert!(without_a.needs(&b, &pending, 2), "b owns it now");
        assert!(
            !without_a.needs(&c, &pending, 2),
            "b and c hold it: two copies without a"
        );
    }

    #[test]
    fn a_leaving_member_gives_its_messages_to_the_next_holder() {
        let (a, b, c) = (holder("a", 1), holder("b", 2), holder("c", 3));
        let v = view(2, &[("a", 1, 1), ("b", 2, 1), ("c", 3, 1)]);
        let cp = copy(&[a.clone(), b.clone()], 2);
        assert_eq!(v.duty(&a, &cp), Duty::Deliver);
        let leaving = v.mark_leaving(&a, true).expect("a is a member");
        assert_eq!(leaving.epoch, 3);
        assert_eq!(leaving.mark_leaving(&a, true), None, "already leaving");
        assert_eq!(
            leaving.duty(&a, &cp),
            Duty::Hold {
                owner: NodeId("b".into())
            }
        );
        assert_eq!(leaving.duty(&b, &cp), Duty::TakeOver);
        assert_eq!(leaving.copies(&cp), 1, "a no longer counts");
        // b takes over and adds c: a stays a holder (it is still a member and gets every
        // change) behind b, and the factor holds without it.
        let taken = leaving.taken_over(&b, &cp, std::slice::from_ref(&c));
        assert_eq!(taken.holders, vec![b.clone(), a.clone(), c.clone()]);
        assert_eq!(leaving.copies(&taken), 2);
        assert_eq!(leaving.duty(&b, &taken), Duty::Deliver);
        // Both copies name the same owner, and once a is gone too.
        assert_eq!(leaving.owner(&cp), leaving.owner(&taken));
        let after = leaving.remove(&[NodeId("a".into())]).expect("member");
        assert_eq!(after.owner(&cp), after.owner(&taken));
        // When nobody else can own it, the leaving node still does.
        let alone = copy(std::slice::from_ref(&a), 2);
        assert_eq!(leaving.duty(&a, &alone), Duty::Deliver);
        assert!(leaving.needs(&a, &cp, 2), "b has not taken over yet");
        assert!(
            !leaving.needs(&a, &taken, 2),
            "two copies without a, b owns it"
        );
        assert!(leaving.needs(&a, &alone, 2));
        // A cancelled drain puts it back.
        let back = leaving.mark_leaving(&a, false).expect("leaving");
        assert_eq!(back.duty(&a, &cp), Duty::Deliver);
    }

    #[test]
    fn taking_over_keeps_rank_and_appends_new_holders_once() {
        let (a, b, c, d) = (
            holder("a", 1),
            holder("b", 2),
            holder("c", 3),
            holder("d", 4),
        );
        let v = view(3, &[("b", 2, 1), ("c", 3, 1), ("d", 4, 1)]);
        let cp = copy(&[a, c.clone(), b.clone()], 1);
        let next = v.taken_over(&c, &cp, &[d.clone(), b.clone()]);
        assert_eq!(next.holders, vec![c, b, d]);
    }

    #[test]
    fn a_copy_newer_than_the_view_waits_for_a_newer_view() {
        let (a, b) = (holder("a", 1), holder("b", 2));
        let v = view(3, &[("b", 2, 1)]);
        let c = copy(&[a.clone(), b.clone()], 4);
        assert_eq!(v.duty(&b, &c), Duty::ReadView);
    }

    #[test]
    fn a_writer_commits_only_while_every_holder_is_eligible() {
        let (a, b) = (holder("a", 1), holder("b", 2));
        let mut c = copy(&[a.clone(), b.clone()], 3);
        c.committed = false;
        let both = view(3, &[("a", 1, 1), ("b", 2, 1)]);
        assert!(both.may_commit(&a, &c));
        assert!(!both.may_commit(&b, &c), "only the writer commits");
        let b_left = both.remove(&[NodeId("b".into())]).expect("member");
        assert!(!b_left.may_commit(&a, &c));
        // a was removed and let in again while the copies were written.
        let a_back = view(5, &[("a", 1, 5), ("b", 2, 1)]);
        assert!(!a_back.may_commit(&a, &c));
    }

    #[test]
    fn a_holder_takes_only_copies_it_would_count_for() {
        let (a, b, c) = (holder("a", 1), holder("b", 2), holder("c", 3));
        let at3 = copy(&[a.clone(), b.clone()], 3);
        let now = view(3, &[("a", 1, 1), ("b", 2, 1)]);
        assert!(now.may_hold(&b, &at3));
        assert!(!now.may_hold(&c, &at3), "not named");
        // b left and came back at 5: a copy written at 3 by an owner that had not seen
        // it would not count.
        let b_back = view(5, &[("a", 1, 1), ("b", 2, 5)]);
        assert!(!b_back.may_hold(&b, &at3));
        assert!(b_back.may_hold(&b, &copy(&[a.clone(), b.clone()], 5)));
        // A copy from a view newer than this holder's: it is a member, so it counts.
        assert!(now.may_hold(&b, &copy(&[a.clone(), b.clone()], 7)));
        // Another disk under the same name is another holder.
        let wiped = view(6, &[("a", 1, 1), ("b", 9, 6)]);
        assert!(!wiped.may_hold(&b, &copy(&[a, b.clone()], 7)));
    }

    #[test]
    fn a_stale_copy_asks_a_holder_that_never_left() {
        let (a, b, c) = (holder("a", 1), holder("b", 2), holder("c", 3));
        let c_at_3 = copy(&[a.clone(), b.clone(), c.clone()], 3);
        // c left and came back: its copy is stale; a left too; b never did.
        let v = view(6, &[("b", 2, 1), ("c", 3, 6)]);
        assert_eq!(v.duty(&c, &c_at_3), Duty::Stale);
        assert_eq!(v.witness(&c, &c_at_3), Some(&b));
        // b joined after the copy was written: it may have missed nothing, but it may
        // also have been let in after a removal, so it cannot vouch.
        let b_back = view(7, &[("b", 2, 7), ("c", 3, 6)]);
        assert_eq!(b_back.witness(&c, &c_at_3), None);
        let nobody = view(6, &[("c", 3, 6)]);
        assert_eq!(nobody.witness(&c, &c_at_3), None);
    }

    #[test]
    fn a_spool_keeps_its_incarnation_and_an_empty_one_gets_a_new_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Incarnation::load_or_create(dir.path()).expect("made");
        assert_eq!(
            Incarnation::load_or_create(dir.path()).expect("read"),
            first
        );
        std::fs::remove_file(dir.path().join(INCARNATION_FILE)).expect("wiped");
        assert_ne!(
            Incarnation::load_or_create(dir.path()).expect("made"),
            first
        );
    }

    #[test]
    fn removing_or_joining_nothing_changes_nothing() {
        let v = view(2, &[("a", 1, 1)]);
        assert_eq!(v.remove(&[NodeId("z".into())]), None);
        assert_eq!(v.join(&holder("a", 1), "dc", "a:7946"), None);
    }
}
