//! One DNS check of one domain: ask for every expected record (each name and type once,
//! concurrently, all through the shared rate limit), follow SPF includes, compare.

use std::collections::{BTreeMap, BTreeSet};

use futures::future::join_all;

use super::compare::{Answer, Outcome, SpfContext, compare, spf_lookup_targets};
use super::expected::{Expectation, ExpectedRecord};
use super::resolver::DnsResolver;
use super::{CheckResult, RecordCheck, RecordType, normalize_name};

/// Names fetched to follow `include:`/`redirect=` chains; more than this many distinct
/// targets already exceed the 10-lookup limit.
const MAX_SPF_TARGETS: usize = super::compare::SPF_MAX_LOOKUPS + 1;

/// The outcome of checking one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainCheck {
    /// One per expected record, in the expected order.
    pub records: Vec<RecordCheck>,
    /// The shortest TTL among the domain's own answers: the next check should not come
    /// sooner.
    pub shortest_ttl: Option<u32>,
}

impl DomainCheck {
    /// True when every required record matches.
    pub fn verified(&self) -> bool {
        self.records
            .iter()
            .filter(|r| r.required)
            .all(|r| r.result == CheckResult::Match)
    }

    /// Whether DNS shows the DKIM record of `selector` with the right key: the condition
    /// for switching signing to a new key.
    pub fn dkim_published(&self, selector: &str) -> bool {
        let prefix = format!("{}._domainkey.", selector.to_ascii_lowercase());
        self.records.iter().any(|r| {
            r.kind == super::RecordKind::Dkim
                && r.name.starts_with(&prefix)
                && r.result == CheckResult::Match
        })
    }

    /// Required records that do not match.
    pub fn to_fix(&self) -> impl Iterator<Item = &RecordCheck> {
        self.records
            .iter()
            .filter(|r| r.required && r.result != CheckResult::Match)
    }
}

/// The questions a check of `expected` asks: each name and type once.
fn questions(expected: &[ExpectedRecord]) -> BTreeSet<(String, RecordType)> {
    expected
        .iter()
        .map(|e| (normalize_name(&e.name), e.record_type()))
        .collect()
}

/// How many lookups a check of `expected` makes, not counting SPF includes: what its
/// turn at the query-rate limit is booked for.
pub fn question_count(expected: &[ExpectedRecord]) -> u32 {
    u32::try_from(questions(expected).len()).unwrap_or(u32::MAX)
}

/// Checks `expected` against DNS.
pub async fn check_domain(resolver: &DnsResolver, expected: &[ExpectedRecord]) -> DomainCheck {
    let questions = questions(expected);
    let answers: BTreeMap<(String, RecordType), Answer> =
        join_all(questions.into_iter().map(|(name, rtype)| async move {
            let answer = match rtype {
                RecordType::Mx => resolver.mx(&name).await,
                RecordType::Txt => resolver.txt(&name).await,
            };
            ((name, rtype), answer)
        }))
        .await
        .into_iter()
        .collect();

    let mut includes = BTreeMap::new();
    for e in expected {
        if let Expectation::Spf { .. } = e.expectation
            && let Some(answer) = answers.get(&(normalize_name(&e.name), RecordType::Txt))
        {
            resolve_spf_targets(resolver, answer, &mut includes).await;
        }
    }

    let mut records = Vec::with_capacity(expected.len());
    for e in expected {
        let name = normalize_name(&e.name);
        let Some(answer) = answers.get(&(name.clone(), e.record_type())) else {
            continue;
        };
        let ctx = SpfContext {
            mx: answers.get(&(name, RecordType::Mx)),
            includes: Some(&includes),
        };
        records.push(compare(e, answer, &ctx));
    }
    let shortest_ttl = answers.values().filter_map(|a| a.ttl).min();
    DomainCheck {
        records,
        shortest_ttl,
    }
}

/// Breadth-first over `include:`/`redirect=` targets with literal names.
async fn resolve_spf_targets(
    resolver: &DnsResolver,
    root: &Answer,
    includes: &mut BTreeMap<String, Answer>,
) {
    let spf_targets = |answer: &Answer| -> Vec<String> {
        match &answer.outcome {
            Outcome::Txt(txt) => txt.iter().flat_map(|t| spf_lookup_targets(t)).collect(),
            _ => vec![],
        }
    };
    let mut frontier = spf_targets(root);
    while !frontier.is_empty() && includes.len() < MAX_SPF_TARGETS {
        let batch: Vec<String> = frontier
            .drain(..)
            .filter(|n| !includes.contains_key(n))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .take(MAX_SPF_TARGETS - includes.len())
            .collect();
        let fetched = join_all(batch.into_iter().map(|name| async move {
            let answer = resolver.txt(&name).await;
            (name, answer)
        }))
        .await;
        for (name, answer) in fetched {
            frontier.extend(spf_targets(&answer));
            includes.insert(name, answer);
        }
    }
}
