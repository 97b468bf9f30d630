//! Rolling windows from cumulative counters (pure).
//!
//! Each node reports counts since its process started. Every sampling turns those into
//! increments: the difference with the node's previous reading, or the whole reading
//! when the node restarted since (its `since` changed, or a count went down) or appeared
//! after sampling began. Increments land in one bucket per minute, kept for 24 hours;
//! a window is the sum of its buckets. A node's first reading while the operator itself
//! is starting is only a baseline: its counts are of unknown age and would make the
//! last hour look busier than it was.

use std::collections::{BTreeMap, HashMap, VecDeque};

use chrono::{DateTime, Duration, Utc};
use smtp_node::outbound::deliverability::{DeliveryReport, DomainCounts, EXAMPLES_PER_REASON};

/// How far back buckets are kept: the longest window.
pub const KEPT: Duration = Duration::hours(24);

/// A refusal reason of one domain: result and code.
pub type ReasonKey = (String, String);

/// Counts of one domain over some span.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DomainWindow {
    pub counts: DomainCounts,
    /// (result, code) → (count, example destinations).
    pub reasons: BTreeMap<ReasonKey, (u64, Vec<String>)>,
}

impl DomainWindow {
    fn add(&mut self, other: &DomainWindow) {
        self.counts.delivered += other.counts.delivered;
        self.counts.deferred += other.counts.deferred;
        self.counts.bounced += other.counts.bounced;
        for (key, (count, examples)) in &other.reasons {
            let (total, kept) = self.reasons.entry(key.clone()).or_default();
            *total += count;
            merge_examples(kept, examples);
        }
    }

    fn is_empty(&self) -> bool {
        self.counts == DomainCounts::default() && self.reasons.is_empty()
    }
}

fn merge_examples(kept: &mut Vec<String>, more: &[String]) {
    for d in more {
        if kept.len() >= EXAMPLES_PER_REASON {
            return;
        }
        if !kept.contains(d) {
            kept.push(d.clone());
        }
    }
}

/// One minute of increments, by domain.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Bucket {
    minute: i64,
    domains: BTreeMap<String, DomainWindow>,
}

/// What the operator remembers of one pool's counters.
#[derive(Clone, Debug, Default)]
pub struct PoolHistory {
    /// The last reading of each node, by pod.
    last: HashMap<String, DeliveryReport>,
    /// When the first sampling was absorbed.
    first: Option<DateTime<Utc>>,
    /// When the last sampling was absorbed.
    previous: Option<DateTime<Utc>>,
    /// Samplings absorbed.
    rounds: u64,
    buckets: VecDeque<Bucket>,
}

/// A node's report as one domain → window map (a reading or a difference of two).
fn by_domain(report: &DeliveryReport) -> BTreeMap<String, DomainWindow> {
    let mut out: BTreeMap<String, DomainWindow> = BTreeMap::new();
    for (domain, counts) in &report.domains {
        out.entry(domain.clone()).or_default().counts = *counts;
    }
    for r in &report.refusals {
        out.entry(r.domain.clone()).or_default().reasons.insert(
            (r.result.clone(), r.code.clone()),
            (r.count, r.destinations.clone()),
        );
    }
    out
}

/// What happened between two readings of one node, or `None` when the node restarted
/// in between (`since` changed or a count went down): then all of `now` is new.
pub fn difference(
    before: &DeliveryReport,
    now: &DeliveryReport,
) -> Option<BTreeMap<String, DomainWindow>> {
    if before.since != now.since {
        return None;
    }
    let old = by_domain(before);
    let mut out = BTreeMap::new();
    for (domain, current) in by_domain(now) {
        let previous = old.get(&domain).cloned().unwrap_or_default();
        let c = &current.counts;
        let p = &previous.counts;
        let counts = DomainCounts {
            delivered: c.delivered.checked_sub(p.delivered)?,
            deferred: c.deferred.checked_sub(p.deferred)?,
            bounced: c.bounced.checked_sub(p.bounced)?,
        };
        let mut reasons = BTreeMap::new();
        for (key, (count, examples)) in &current.reasons {
            let was = previous.reasons.get(key).map_or(0, |(n, _)| *n);
            let grew = count.checked_sub(was)?;
            if grew > 0 {
                reasons.insert(key.clone(), (grew, examples.clone()));
            }
        }
        let window = DomainWindow { counts, reasons };
        if !window.is_empty() {
            out.insert(domain, window);
        }
    }
    // A domain or reason that vanished from a counter that never resets is a reset.
    if old
        .keys()
        .any(|d| !now.domains.contains_key(d) && !old[d].is_empty())
    {
        return None;
    }
    Some(out)
}

/// Whether `report`'s counters started after `at` (RFC 3339 `since`).
fn started_after(report: &DeliveryReport, at: DateTime<Utc>) -> bool {
    DateTime::parse_from_rfc3339(&report.since).is_ok_and(|since| since > at)
}

impl PoolHistory {
    /// Absorbs one sampling: the reports of the nodes that answered, by pod. Nodes that
    /// did not answer keep their last reading (their increments arrive with their next
    /// answer); pods that are gone are forgotten.
    pub fn absorb(
        &mut self,
        now: DateTime<Utc>,
        answered: &[(String, DeliveryReport)],
        pods: &[String],
    ) {
        let previous_round = self.last_sampled();
        let mut increments: BTreeMap<String, DomainWindow> = BTreeMap::new();
        for (pod, report) in answered {
            let fresh = match self.last.get(pod) {
                Some(before) => difference(before, report).unwrap_or_else(|| by_domain(report)),
                // A node first seen after sampling began, that started since: all new.
                None if previous_round.is_some_and(|at| started_after(report, at)) => {
                    by_domain(report)
                }
                // Counts of unknown age: a baseline only.
                None => BTreeMap::new(),
            };
            for (domain, window) in fresh {
                increments.entry(domain).or_default().add(&window);
            }
            self.last.insert(pod.clone(), report.clone());
        }
        self.last.retain(|pod, _| pods.contains(pod));
        self.first.get_or_insert(now);
        self.rounds += 1;
        self.previous = Some(now);
        if !increments.is_empty() {
            let minute = now.timestamp().div_euclid(60);
            match self.buckets.back_mut() {
                Some(b) if b.minute == minute => {
                    for (domain, window) in increments {
                        b.domains.entry(domain).or_default().add(&window);
                    }
                }
                _ => self.buckets.push_back(Bucket {
                    minute,
                    domains: increments,
                }),
            }
        }
        let oldest = (now - KEPT).timestamp().div_euclid(60);
        while self.buckets.front().is_some_and(|b| b.minute <= oldest) {
            self.buckets.pop_front();
        }
    }

    /// `domain` over the `span` before `now`.
    pub fn window(&self, domain: &str, now: DateTime<Utc>, span: Duration) -> DomainWindow {
        let from = (now - span).timestamp().div_euclid(60);
        let mut out = DomainWindow::default();
        for bucket in self.buckets.iter().filter(|b| b.minute > from) {
            if let Some(w) = bucket.domains.get(domain) {
                out.add(w);
            }
        }
        out
    }

    /// Whether increments can be told yet (a baseline and one more sampling).
    pub fn has_increments(&self) -> bool {
        self.rounds >= 2
    }

    /// When sampling began.
    pub fn first(&self) -> Option<DateTime<Utc>> {
        self.first
    }

    /// When the last sampling was absorbed.
    pub fn last_sampled(&self) -> Option<DateTime<Utc>> {
        self.previous
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtp_node::outbound::deliverability::RefusalCount;

    const SINCE: &str = "2026-01-01T00:00:00.000Z";

    fn at(minute: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + minute * 60, 0).expect("time")
    }

    fn reading(since: &str, delivered: u64, bounced: u64) -> DeliveryReport {
        let mut domains = BTreeMap::new();
        domains.insert(
            "example.com".to_owned(),
            DomainCounts {
                delivered,
                deferred: 0,
                bounced,
            },
        );
        DeliveryReport {
            node: "n".into(),
            since: since.into(),
            domains,
            refusals: if bounced > 0 {
                vec![RefusalCount {
                    domain: "example.com".into(),
                    result: "bounced".into(),
                    code: "5.1.1".into(),
                    count: bounced,
                    destinations: vec!["example.net".into()],
                }]
            } else {
                vec![]
            },
        }
    }

    fn counts(w: &DomainWindow) -> (u64, u64) {
        (w.counts.delivered, w.counts.bounced)
    }

    #[test]
    fn differences_and_resets() {
        let cases = [
            // (before, now, expected (delivered, bounced) or None for a reset)
            (reading(SINCE, 10, 2), reading(SINCE, 15, 3), Some((5, 1))),
            (reading(SINCE, 10, 2), reading(SINCE, 10, 2), Some((0, 0))),
            (
                reading(SINCE, 10, 2),
                reading("2026-01-02T00:00:00.000Z", 50, 9),
                None,
            ),
            (reading(SINCE, 10, 2), reading(SINCE, 4, 2), None),
        ];
        for (before, now, expected) in cases {
            let got = difference(&before, &now)
                .map(|d| d.get("example.com").map(counts).unwrap_or_default());
            assert_eq!(got, expected, "{before:?} → {now:?}");
        }
    }

    #[test]
    fn windows_sum_increments_and_survive_restarts() {
        let pods = vec!["a".to_owned(), "b".to_owned()];
        let mut h = PoolHistory::default();
        // Operator starts: what the nodes counted before is a baseline only.
        h.absorb(
            at(0),
            &[
                ("a".into(), reading(SINCE, 100, 50)),
                ("b".into(), reading(SINCE, 7, 0)),
            ],
            &pods,
        );
        assert!(!h.has_increments());
        assert_eq!(
            counts(&h.window("example.com", at(0), Duration::hours(1))),
            (0, 0)
        );
        h.absorb(
            at(10),
            &[
                ("a".into(), reading(SINCE, 110, 52)),
                ("b".into(), reading(SINCE, 9, 1)),
            ],
            &pods,
        );
        assert!(h.has_increments());
        assert_eq!(
            counts(&h.window("example.com", at(10), Duration::hours(1))),
            (12, 3)
        );
        // b restarted: everything it reports now happened since.
        let restarted = "2026-06-01T00:00:00.000Z";
        h.absorb(
            at(70),
            &[
                ("a".into(), reading(SINCE, 120, 52)),
                ("b".into(), reading(restarted, 4, 4)),
            ],
            &pods,
        );
        let hour = h.window("example.com", at(70), Duration::hours(1));
        assert_eq!(counts(&hour), (14, 4), "the minute-10 bucket left the hour");
        assert_eq!(
            counts(&h.window("example.com", at(70), Duration::hours(24))),
            (26, 7)
        );
        assert_eq!(hour.reasons[&("bounced".into(), "5.1.1".into())].0, 4);
        assert_eq!(
            hour.reasons[&("bounced".into(), "5.1.1".into())].1,
            ["example.net"]
        );
        // A day later everything has left.
        h.absorb(at(70 + 24 * 60), &[], &pods);
        assert_eq!(
            counts(&h.window("example.com", at(70 + 24 * 60), Duration::hours(24))),
            (0, 0)
        );
    }

    #[test]
    fn a_node_started_after_sampling_began_counts_from_zero() {
        let mut h = PoolHistory::default();
        h.absorb(at(0), &[("a".into(), reading(SINCE, 5, 0))], &["a".into()]);
        let late = at(1).to_rfc3339();
        let pods = vec!["a".to_owned(), "c".to_owned()];
        h.absorb(
            at(2),
            &[
                ("a".into(), reading(SINCE, 5, 0)),
                ("c".into(), reading(&late, 3, 1)),
            ],
            &pods,
        );
        assert_eq!(
            counts(&h.window("example.com", at(2), Duration::hours(1))),
            (3, 1)
        );
        // A pod that left is forgotten: coming back under the same name is a new node.
        h.absorb(
            at(3),
            &[("a".into(), reading(SINCE, 5, 0))],
            &["a".to_owned()],
        );
        assert!(!h.last.contains_key("c"));
    }
}
