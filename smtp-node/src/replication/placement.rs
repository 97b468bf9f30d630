//! Where the copies of a new message go.
//!
//! The owner keeps one copy and picks `factor - 1` other members so that the copies span
//! at least `min_data_centres` data centres. Among candidates the choice is rendezvous
//! hashing on the message id: each message spreads its copies over the pool
//! independently of the others, and a membership change moves only the messages whose
//! chosen node left, so no node becomes every message's replica.

use std::collections::BTreeSet;

use super::view::Holder;

/// A member that could hold a copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub holder: Holder,
    pub data_centre: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("{needed} copies are required but only {available} nodes are reachable members")]
    NotEnoughNodes { needed: usize, available: usize },
    #[error(
        "copies must span {needed} data centres but reachable members are in {available} ({names})"
    )]
    NotEnoughDataCentres {
        needed: usize,
        available: usize,
        names: String,
    },
}

/// Picks the replicas for a message owned by a node in `owner_data_centre`: `factor - 1`
/// of `candidates` (the owner excluded by the caller), covering with the owner's data
/// centre at least `min_data_centres` data centres. Deterministic for a given `seed`.
pub fn choose_replicas(
    owner_data_centre: &str,
    candidates: &[Candidate],
    factor: usize,
    min_data_centres: usize,
    seed: u128,
) -> Result<Vec<Holder>, PlacementError> {
    choose(
        &[owner_data_centre],
        candidates,
        factor.saturating_sub(1),
        min_data_centres,
        seed,
    )
}

/// Picks `needed` more holders for a message whose current eligible holders are in
/// `covered` data centres, so that all of them together span `min_data_centres`. What an
/// owner does to restore the factor after a holder left.
pub fn choose_more(
    covered: &[&str],
    candidates: &[Candidate],
    needed: usize,
    min_data_centres: usize,
    seed: u128,
) -> Result<Vec<Holder>, PlacementError> {
    choose(covered, candidates, needed, min_data_centres, seed)
}

fn choose(
    covered: &[&str],
    candidates: &[Candidate],
    needed: usize,
    min_data_centres: usize,
    seed: u128,
) -> Result<Vec<Holder>, PlacementError> {
    if candidates.len() < needed {
        return Err(PlacementError::NotEnoughNodes {
            needed: needed + covered.len().max(1),
            available: candidates.len() + covered.len().max(1),
        });
    }
    let all_dcs: BTreeSet<&str> = candidates
        .iter()
        .map(|c| c.data_centre.as_str())
        .chain(covered.iter().copied())
        .collect();
    if all_dcs.len() < min_data_centres {
        return Err(PlacementError::NotEnoughDataCentres {
            needed: min_data_centres,
            available: all_dcs.len(),
            names: all_dcs.into_iter().collect::<Vec<_>>().join(", "),
        });
    }
    let mut ranked: Vec<&Candidate> = candidates.iter().collect();
    ranked.sort_by_key(|c| std::cmp::Reverse(score(seed, &c.holder)));

    let mut chosen: Vec<&Candidate> = Vec::with_capacity(needed);
    let mut spanned: BTreeSet<&str> = covered.iter().copied().collect();
    // First one copy in each data centre still needed, best-ranked first; then the rest.
    for c in &ranked {
        if spanned.len() >= min_data_centres || chosen.len() == needed {
            break;
        }
        if spanned.insert(c.data_centre.as_str()) {
            chosen.push(c);
        }
    }
    if spanned.len() < min_data_centres {
        // More data centres required than copies: factor < min_data_centres.
        return Err(PlacementError::NotEnoughDataCentres {
            needed: min_data_centres,
            available: spanned.len(),
            names: spanned.into_iter().collect::<Vec<_>>().join(", "),
        });
    }
    for c in &ranked {
        if chosen.len() == needed {
            break;
        }
        if !chosen.iter().any(|x| x.holder == c.holder) {
            chosen.push(c);
        }
    }
    Ok(chosen.into_iter().map(|c| c.holder.clone()).collect())
}

/// Rendezvous weight of a holder for a message: a 64-bit mix of both (FNV-1a then a
/// finaliser), stable across processes and versions, unlike std's hasher.
fn score(seed: u128, holder: &Holder) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in seed
        .to_le_bytes()
        .iter()
        .chain(holder.node.0.as_bytes())
        .chain(holder.incarnation.0.as_bytes())
    {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::view::Incarnation;
    use crate::spool::NodeId;

    fn cand(name: &str, dc: &str) -> Candidate {
        Candidate {
            holder: Holder {
                node: NodeId(name.into()),
                incarnation: Incarnation(uuid::Uuid::from_u128(name.len() as u128)),
            },
            data_centre: dc.into(),
        }
    }

    fn dcs(chosen: &[Holder], cands: &[Candidate]) -> BTreeSet<String> {
        chosen
            .iter()
            .map(|h| {
                cands
                    .iter()
                    .find(|c| &c.holder == h)
                    .map(|c| c.data_centre.clone())
                    .unwrap_or_default()
            })
            .collect()
    }

    #[test]
    fn copies_span_the_required_data_centres_for_every_message() {
        let cands = [cand("a2", "east"), cand("b1", "west"), cand("b2", "west")];
        for seed in 0..500u128 {
            let chosen = choose_replicas("east", &cands, 2, 2, seed).expect("placeable");
            assert_eq!(chosen.len(), 1);
            assert_eq!(dcs(&chosen, &cands), BTreeSet::from(["west".to_owned()]));
        }
    }

    #[test]
    fn copies_spread_over_the_candidates() {
        let cands = [cand("a2", "east"), cand("b1", "west"), cand("b2", "west")];
        let mut counts = std::collections::BTreeMap::new();
        for seed in 0..3000u128 {
            let chosen = choose_replicas("east", &cands, 2, 1, seed).expect("placeable");
            *counts.entry(chosen[0].node.0.clone()).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3, "{counts:?}");
        assert!(counts.values().all(|&n| n > 700), "{counts:?}");
    }

    #[test]
    fn the_same_message_gets_the_same_replicas() {
        let cands = [cand("a2", "east"), cand("b1", "west"), cand("b2", "west")];
        let one = choose_replicas("east", &cands, 3, 2, 42).expect("placeable");
        let two = choose_replicas("east", &cands, 3, 2, 42).expect("placeable");
        assert_eq!(one, two);
        assert_eq!(one.len(), 2);
        assert!(dcs(&one, &cands).contains("west"));
    }

    #[test]
    fn too_few_nodes_or_data_centres_are_refused_with_a_reason() {
        let cands = [cand("a2", "east")];
        assert_eq!(
            choose_replicas("east", &cands, 3, 1, 1),
            Err(PlacementError::NotEnoughNodes {
                needed: 3,
                available: 2
            })
        );
        let err = choose_replicas("east", &cands, 2, 2, 1).expect_err("one data centre");
        assert!(err.to_string().contains("span 2 data centres"), "{err}");
        assert!(err.to_string().contains("east"), "{err}");
    }

    #[test]
    fn restoring_the_factor_adds_the_missing_data_centre_first() {
        let cands = [cand("a2", "east"), cand("a3", "east"), cand("b2", "west")];
        for seed in 0..200u128 {
            let more = choose_more(&["east"], &cands, 1, 2, seed).expect("placeable");
            assert_eq!(more.len(), 1);
            assert_eq!(more[0].node.0, "b2", "seed {seed}");
        }
        let more = choose_more(&["east", "west"], &cands, 2, 2, 3).expect("placeable");
        assert_eq!(more.len(), 2);
    }

    #[test]
    fn a_single_copy_needs_nobody() {
        assert_eq!(choose_replicas("east", &[], 1, 1, 7), Ok(vec![]));
    }

    #[test]
    fn a_candidate_leaving_moves_only_its_own_messages() {
        let cands = [
            cand("a2", "east"),
            cand("b1", "west"),
            cand("b2", "west"),
            cand("b3", "west"),
        ];
        let without: Vec<Candidate> = cands
            .iter()
            .filter(|c| c.holder.node.0 != "b3")
            .cloned()
            .collect();
        for seed in 0..500u128 {
            let before = choose_replicas("east", &cands, 2, 1, seed).expect("placeable");
            let after = choose_replicas("east", &without, 2, 1, seed).expect("placeable");
            if before[0].node.0 != "b3" {
                assert_eq!(before, after, "seed {seed}");
            }
        }
    }
}
