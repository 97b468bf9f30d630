//! Deliverability per sender domain: how many recipients of each served domain's mail
//! were delivered, deferred or bounced, and why the refusals happened.
//!
//! Two views of the same counts, both cumulative since the process started:
//! - the metric `outbound_domain_recipients_total{domain,result,code}`, for dashboards
//!   and alerts;
//! - a [`DeliveryLedger`] that `GET /admin/delivery` reports, with example destination
//!   domains per refusal, for the operator to sum across a pool into
//!   `MailDomain.status.delivery`.
//!
//! Labels stay bounded whatever the traffic: `domain` is a domain this node serves or
//! [`OTHER_DOMAIN`] (bounces from the null sender, domains removed since the mail was
//! accepted), and `code` is an RFC 3463 enhanced status code with a known subject and a
//! small detail, or [`NO_CODE`]. Nothing here keeps recipient addresses or reply texts:
//! a remote reply often quotes the recipient, and these counts are read by people who
//! must not see who was written to.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use super::metrics::RecipientResult;
use crate::policy::{RelayPolicy, address_domain};
use crate::spool::Reply;

/// `domain` label of mail whose sender domain this node does not serve.
pub const OTHER_DOMAIN: &str = "other";
/// `code` label when the reply carried no usable enhanced status code (and of deliveries).
pub const NO_CODE: &str = "none";
/// Destination domains kept per refusal reason: enough to tell one broken receiver from
/// a general problem.
pub const EXAMPLES_PER_REASON: usize = 3;
/// Largest detail number accepted in a `code` label (RFC 3463 and its registry stay
/// well below it); larger ones become [`NO_CODE`] so that a server cannot grow the
/// label set.
const MAX_DETAIL: u16 = 99;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DomainLabels {
    pub domain: String,
    pub result: RecipientResult,
    pub code: String,
}

/// Counts of one sender domain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(default)]
pub struct DomainCounts {
    pub delivered: u64,
    /// Attempts that ended in a temporary failure (a recipient retried three times
    /// counts three times).
    pub deferred: u64,
    pub bounced: u64,
}

/// One refusal reason: a sender domain, a result and an enhanced status code.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(default)]
pub struct RefusalCount {
    pub domain: String,
    /// `deferred` or `bounced`.
    pub result: String,
    /// Enhanced status code (`5.1.1`) or `none`.
    pub code: String,
    pub count: u64,
    /// Up to [`EXAMPLES_PER_REASON`] destination domains that answered so, first seen first.
    pub destinations: Vec<String>,
}

/// What `GET /admin/delivery` answers (the operator reads it with this same type).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(default)]
pub struct DeliveryReport {
    pub node: String,
    /// When these counters started from zero (RFC 3339): a different value than at the
    /// last reading means the process restarted in between.
    pub since: String,
    /// By sender domain (served domains and `other`).
    pub domains: BTreeMap<String, DomainCounts>,
    /// Every refusal reason seen, most frequent first.
    pub refusals: Vec<RefusalCount>,
}

/// The `domain` label of a message from `mail_from`: its domain when `serves` says the
/// node serves it, [`OTHER_DOMAIN`] otherwise.
pub fn sender_label(mail_from: &str, serves: impl Fn(&str) -> bool) -> String {
    match address_domain(mail_from) {
        Some(domain) => {
            let domain = domain.strip_suffix('.').unwrap_or(domain).to_lowercase();
            if serves(&domain) {
                domain
            } else {
                OTHER_DOMAIN.to_owned()
            }
        }
        None => OTHER_DOMAIN.to_owned(),
    }
}

/// The `code` label of a recipient's result: the enhanced code of the reply that
/// decided it for a refusal, [`NO_CODE`] for a delivery.
pub fn result_code(result: &RecipientResult, reply: Option<&Reply>) -> String {
    match result {
        RecipientResult::Delivered => NO_CODE.to_owned(),
        _ => code_label(reply.and_then(|r| r.enhanced.as_deref())),
    }
}

/// An enhanced status code as a bounded label: class 2, 4 or 5, subject 0 to 7 (the
/// subjects RFC 3463 defines), detail 0 to 99, without leading zeros; [`NO_CODE`]
/// otherwise.
pub fn code_label(enhanced: Option<&str>) -> String {
    let Some(text) = enhanced else {
        return NO_CODE.to_owned();
    };
    let parts: Vec<&str> = text.split('.').collect();
    let number = |s: &str| -> Option<u16> {
        (!s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match parts.as_slice() {
        [class, subject, detail] => match (number(class), number(subject), number(detail)) {
            (Some(c @ (2 | 4 | 5)), Some(s @ 0..=7), Some(d)) if d <= MAX_DETAIL => {
                format!("{c}.{s}.{d}")
            }
            _ => NO_CODE.to_owned(),
        },
        _ => NO_CODE.to_owned(),
    }
}

/// The destination domain of a recipient, lower case; `invalid` when it is not a
/// plausible domain (it is shown to people, so it must not carry arbitrary text).
pub fn destination_label(recipient: &str) -> String {
    let domain = address_domain(recipient).unwrap_or("");
    let domain = domain.strip_suffix('.').unwrap_or(domain).to_lowercase();
    let plausible = !domain.is_empty()
        && domain.len() <= 253
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'[' | b']' | b':'));
    if plausible {
        domain
    } else {
        "invalid".to_owned()
    }
}

/// The counts behind the admin report; pure, so the report is tested without a node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    domains: BTreeMap<String, DomainCounts>,
    /// (domain, result, code) → (count, example destinations).
    refusals: BTreeMap<(String, &'static str, String), (u64, Vec<String>)>,
}

impl Ledger {
    /// Counts one recipient's attempt.
    pub fn record(
        &mut self,
        domain: &str,
        result: &RecipientResult,
        code: &str,
        destination: &str,
    ) {
        let counts = self.domains.entry(domain.to_owned()).or_default();
        let name = match result {
            RecipientResult::Delivered => {
                counts.delivered += 1;
                return;
            }
            RecipientResult::Deferred => {
                counts.deferred += 1;
                "deferred"
            }
            RecipientResult::Bounced => {
                counts.bounced += 1;
                "bounced"
            }
        };
        let (count, examples) = self
            .refusals
            .entry((domain.to_owned(), name, code.to_owned()))
            .or_default();
        *count += 1;
        if examples.len() < EXAMPLES_PER_REASON && !examples.iter().any(|d| d == destination) {
            examples.push(destination.to_owned());
        }
    }

    /// The report, refusals most frequent first (ties in key order).
    pub fn report(&self, node: &str, since: &str) -> DeliveryReport {
        let mut refusals: Vec<RefusalCount> = self
            .refusals
            .iter()
            .map(|((domain, result, code), (count, examples))| RefusalCount {
                domain: domain.clone(),
                result: (*result).to_owned(),
                code: code.clone(),
                count: *count,
                destinations: examples.clone(),
            })
            .collect();
        refusals.sort_by_key(|r| std::cmp::Reverse(r.count));
        DeliveryReport {
            node: node.to_owned(),
            since: since.to_owned(),
            domains: self.domains.clone(),
            refusals,
        }
    }
}

/// The node's deliverability counts: the metric family and the ledger, updated together.
/// Cheap to clone: every field is a shared handle.
#[derive(Clone, Debug)]
pub struct DeliveryLedger {
    family: Family<DomainLabels, Counter>,
    ledger: Arc<Mutex<Ledger>>,
    /// Decides which sender domains get their own label; none without a policy.
    served: Option<RelayPolicy>,
    since: String,
}

impl Default for DeliveryLedger {
    fn default() -> Self {
        Self {
            family: Family::default(),
            ledger: Arc::default(),
            served: None,
            since: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }
}

impl DeliveryLedger {
    pub fn register(registry: &mut Registry) -> Self {
        let ledger = Self::default();
        registry.register(
            "outbound_domain_recipients",
            "Recipient delivery attempts by served sender domain (or other), result and enhanced status code",
            ledger.family.clone(),
        );
        ledger
    }

    /// Labels the domains `policy` serves by name (the others are `other`).
    pub fn serving(mut self, policy: RelayPolicy) -> Self {
        self.served = Some(policy);
        self
    }

    /// Counts one attempt for the recipient `to` of a message from `mail_from`, with
    /// the result it was recorded with and the reply that decided it.
    pub fn record(
        &self,
        mail_from: &str,
        to: &str,
        result: RecipientResult,
        reply: Option<&Reply>,
    ) {
        let domain = sender_label(mail_from, |d| {
            self.served.as_ref().is_some_and(|p| p.serves(d))
        });
        let code = result_code(&result, reply);
        let destination = destination_label(to);
        self.lock().record(&domain, &result, &code, &destination);
        self.family
            .get_or_create(&DomainLabels {
                domain,
                result,
                code,
            })
            .inc();
    }

    pub fn report(&self, node: &str) -> DeliveryReport {
        self.lock().report(node, &self.since)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // The ledger is only counters: one left half-updated by a panic is still usable.
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, enhanced: Option<&str>) -> Reply {
        Reply {
            code,
            enhanced: enhanced.map(str::to_owned),
            text: "<bob@example.net> no such user".into(),
        }
    }

    #[test]
    fn sender_domains_are_named_only_when_served() {
        let serves = |d: &str| d == "example.com";
        for (from, label) in [
            ("a@example.com", "example.com"),
            ("a@EXAMPLE.com.", "example.com"),
            ("\"x@y\"@example.com", "example.com"),
            ("a@spammer.example", OTHER_DOMAIN),
            ("", OTHER_DOMAIN),
            ("no-at-sign", OTHER_DOMAIN),
        ] {
            assert_eq!(sender_label(from, serves), label, "{from}");
        }
    }

    #[test]
    fn status_codes_are_bounded_labels() {
        for (enhanced, label) in [
            (Some("5.1.1"), "5.1.1"),
            (Some("4.2.2"), "4.2.2"),
            (Some("5.7.26"), "5.7.26"),
            (Some("5.01.001"), "5.1.1"),
            (Some("2.0.0"), "2.0.0"),
            (None, NO_CODE),
            (Some("3.1.1"), NO_CODE),
            (Some("5.8.1"), NO_CODE),
            (Some("5.1.100"), NO_CODE),
            (Some("5.1"), NO_CODE),
            (Some("5.1.1.1"), NO_CODE),
            (Some("5.a.1"), NO_CODE),
            (Some("5.1.0001"), NO_CODE),
            (Some(""), NO_CODE),
        ] {
            assert_eq!(code_label(enhanced), label, "{enhanced:?}");
        }
    }

    #[test]
    fn refusals_carry_the_code_of_their_reply() {
        let refused = reply(550, Some("5.1.1"));
        assert_eq!(
            result_code(
                &RecipientResult::Delivered,
                Some(&reply(250, Some("2.0.0")))
            ),
            NO_CODE
        );
        assert_eq!(
            result_code(&RecipientResult::Deferred, Some(&reply(451, Some("4.7.1")))),
            "4.7.1"
        );
        assert_eq!(
            result_code(&RecipientResult::Bounced, Some(&refused)),
            "5.1.1"
        );
        assert_eq!(
            result_code(&RecipientResult::Bounced, Some(&reply(550, None))),
            NO_CODE
        );
        assert_eq!(result_code(&RecipientResult::Deferred, None), NO_CODE);
    }

    #[test]
    fn destinations_are_domains_only() {
        assert_eq!(destination_label("bob@Example.NET"), "example.net");
        assert_eq!(destination_label("bob@[192.0.2.1]"), "[192.0.2.1]");
        assert_eq!(destination_label("bob@exa mple.net"), "invalid");
        assert_eq!(destination_label("bob"), "invalid");
    }

    #[test]
    fn the_ledger_counts_per_domain_and_keeps_a_few_examples() {
        let mut l = Ledger::default();
        l.record(
            "example.com",
            &RecipientResult::Delivered,
            NO_CODE,
            "a.example",
        );
        for d in [
            "a.example",
            "b.example",
            "a.example",
            "c.example",
            "d.example",
        ] {
            l.record("example.com", &RecipientResult::Bounced, "5.1.1", d);
        }
        l.record(
            "example.com",
            &RecipientResult::Deferred,
            "4.2.2",
            "b.example",
        );
        l.record(
            OTHER_DOMAIN,
            &RecipientResult::Bounced,
            "5.1.1",
            "a.example",
        );
        let r = l.report("node-0", "2026-01-01T00:00:00.000Z");
        assert_eq!(
            r.domains["example.com"],
            DomainCounts {
                delivered: 1,
                deferred: 1,
                bounced: 5
            }
        );
        assert_eq!(r.domains[OTHER_DOMAIN].bounced, 1);
        let top = &r.refusals[0];
        assert_eq!(
            (
                top.domain.as_str(),
                top.result.as_str(),
                top.code.as_str(),
                top.count
            ),
            ("example.com", "bounced", "5.1.1", 5)
        );
        assert_eq!(top.destinations, ["a.example", "b.example", "c.example"]);
        assert_eq!(r.refusals.len(), 3);
        assert!(r.refusals.iter().all(|x| x.count <= top.count));
    }

    #[test]
    fn the_handle_updates_metric_and_ledger_together() {
        let mut registry = Registry::default();
        let ledger = DeliveryLedger::register(&mut registry);
        ledger.record(
            "s@example.com",
            "bob@example.net",
            RecipientResult::Bounced,
            Some(&reply(550, Some("5.1.1"))),
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        // No policy: nothing is served, so the sender domain is not named.
        assert!(
            text.contains(
                "outbound_domain_recipients_total{domain=\"other\",result=\"bounced\",code=\"5.1.1\"} 1"
            ),
            "{text}"
        );
        let report = ledger.report("n");
        assert_eq!(report.domains[OTHER_DOMAIN].bounced, 1);
        assert_eq!(report.refusals[0].destinations, ["example.net"]);
        assert!(
            !serde_json::to_string(&report)
                .expect("json")
                .contains("bob")
        );
    }
}
