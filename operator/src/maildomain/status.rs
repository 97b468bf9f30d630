//! MailDomain conditions and the events their transitions produce (pure).
//!
//! - `PoolBound`: the RelayPool named by `spec.relayPoolRef` exists.
//! - `DKIMKeyReady`: a signing key exists (True also while a rotation waits for DNS:
//!   signing is unaffected; the reason says what is pending).
//! - `DNSVerified`: every required record matches; the message lists what to fix.
//! - `Ready`: all three.
//!
//! Events are emitted only when a condition changes status (and for key lifecycle
//! steps), never on every poll.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::dkim_keys::RotationAction;
use crate::dns::{CheckResult, DomainCheck};

pub const READY: &str = "Ready";
pub const DNS_VERIFIED: &str = "DNSVerified";
pub const DKIM_KEY_READY: &str = "DKIMKeyReady";
pub const POOL_BOUND: &str = "PoolBound";

/// What the pool lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolState {
    Bound { name: String, hostname: String },
    NotFound { name: String, namespace: String },
}

/// What the key step found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// Signing with `selector`; `rotation` is the rotation step decided this time.
    Active {
        selector: String,
        rotation: Option<RotationAction>,
    },
    /// No usable signing key; `reason` is a CamelCase condition reason.
    Failed { reason: String, message: String },
}

/// What the DNS step found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsState {
    Checked(DomainCheck),
    /// Not checked; `reason` is a CamelCase condition reason.
    NotChecked {
        reason: String,
        message: String,
    },
}

/// Everything the conditions depend on.
#[derive(Debug, Clone)]
pub struct StatusInputs {
    pub generation: Option<i64>,
    /// `Some(message)` when the spec is invalid (then nothing else was done).
    pub invalid_spec: Option<String>,
    pub pool: PoolState,
    pub keys: KeyState,
    pub dns: DnsState,
}

/// An event to publish; `warning` selects the event type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSpec {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

fn k8s_time(t: DateTime<Utc>) -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::from_second(t.timestamp())
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// Replaces or adds a condition, keeping `lastTransitionTime` when the status did not
/// change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: DateTime<Utc>,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let last_transition_time = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| k8s_time(now));
    let new = Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => *c = new,
        None => conditions.push(new),
    }
}

/// The four conditions, derived from `inputs`, carrying over transition times from
/// `previous`.
pub fn conditions(
    inputs: &StatusInputs,
    previous: &[Condition],
    now: DateTime<Utc>,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = previous
        .iter()
        .filter(|c| [READY, DNS_VERIFIED, DKIM_KEY_READY, POOL_BOUND].contains(&c.type_.as_str()))
        .cloned()
        .collect();
    let g = inputs.generation;

    if let Some(msg) = &inputs.invalid_spec {
        for t in [POOL_BOUND, DKIM_KEY_READY, DNS_VERIFIED, READY] {
            set_condition(&mut out, t, false, "InvalidSpec", msg.clone(), g, now);
        }
        return out;
    }

    let (pool_ok, pool_reason, pool_msg) = match &inputs.pool {
        PoolState::Bound { name, hostname } => (
            true,
            "RelayPoolFound",
            format!("bound to RelayPool {name} (hostname {hostname})"),
        ),
        PoolState::NotFound { name, namespace } => (
            false,
            "RelayPoolNotFound",
            format!(
                "RelayPool {name} does not exist in namespace {namespace}: create it or fix \
                 spec.relayPoolRef"
            ),
        ),
    };
    set_condition(
        &mut out,
        POOL_BOUND,
        pool_ok,
        pool_reason,
        pool_msg.clone(),
        g,
        now,
    );

    let (key_ok, key_reason, key_msg) = match &inputs.keys {
        KeyState::Active { selector, rotation } => match rotation {
            Some(RotationAction::WaitForDns { selector: next })
            | Some(RotationAction::GenerateNext { selector: next, .. }) => (
                true,
                "RotationPending".to_string(),
                format!(
                    "signing with selector {selector}; the next key {next} waits for its DNS \
                     record: publish it (see status.dns.records) so signing can switch"
                ),
            ),
            Some(RotationAction::Stalled { reason, .. }) => (
                true,
                "RotationStalled".to_string(),
                format!("signing with selector {selector}; {reason}"),
            ),
            _ => (
                true,
                "KeyActive".to_string(),
                format!("signing with selector {selector}"),
            ),
        },
        KeyState::Failed { reason, message } => (false, reason.clone(), message.clone()),
    };
    set_condition(
        &mut out,
        DKIM_KEY_READY,
        key_ok,
        &key_reason,
        key_msg.clone(),
        g,
        now,
    );

    let (dns_ok, dns_reason, dns_msg) = match &inputs.dns {
        DnsState::Checked(check) => dns_condition(check),
        DnsState::NotChecked { reason, message } => (false, reason.clone(), message.clone()),
    };
    set_condition(
        &mut out,
        DNS_VERIFIED,
        dns_ok,
        &dns_reason,
        dns_msg.clone(),
        g,
        now,
    );

    let (ready, ready_reason, ready_msg) = if !pool_ok {
        (false, pool_reason.to_string(), pool_msg)
    } else if !key_ok {
        (false, key_reason, key_msg)
    } else if !dns_ok {
        (false, dns_reason, dns_msg)
    } else {
        (
            true,
            "Ready".to_string(),
            "the domain is bound to its pool, signed, and its DNS records are verified".to_string(),
        )
    };
    set_condition(&mut out, READY, ready, &ready_reason, ready_msg, g, now);
    out
}

fn dns_condition(check: &DomainCheck) -> (bool, String, String) {
    let to_fix: Vec<_> = check.to_fix().collect();
    if to_fix.is_empty() {
        let n = check.records.iter().filter(|r| r.required).count();
        return (
            true,
            "RecordsMatch".to_string(),
            format!("all {n} required DNS records match"),
        );
    }
    let reason = if to_fix.iter().all(|r| r.result == CheckResult::Missing) {
        "RecordsMissing"
    } else if to_fix.iter().all(|r| r.result == CheckResult::Error) {
        "DNSCheckFailed"
    } else {
        "RecordsIncorrect"
    };
    let items: Vec<String> = to_fix
        .iter()
        .map(|r| {
            format!(
                "{} {} {} is {}: {}",
                r.kind.as_str(),
                r.record_type,
                r.name,
                r.result,
                r.message
            )
        })
        .collect();
    (
        false,
        reason.to_string(),
        format!(
            "{} of the required DNS records need attention (status.dns.records has the exact \
             values): {}",
            to_fix.len(),
            items.join("; ")
        ),
    )
}

/// Events for conditions whose status changed (a condition seen for the first time
/// counts as changed).
pub fn transition_events(previous: &[Condition], current: &[Condition]) -> Vec<EventSpec> {
    current
        .iter()
        .filter(|c| {
            previous
                .iter()
                .find(|p| p.type_ == c.type_)
                .is_none_or(|p| p.status != c.status)
        })
        .map(|c| EventSpec {
            warning: c.status != "True",
            reason: if c.status == "True" {
                format!("{}True", c.type_)
            } else {
                c.reason.clone()
            },
            note: format!("{}: {}", c.type_, c.message),
        })
        .collect()
}

/// The event for a key lifecycle step, if the step changed anything.
pub fn rotation_event(action: &RotationAction) -> Option<EventSpec> {
    let (reason, note) = match action {
        RotationAction::GenerateInitial { selector } => (
            "DKIMKeyGenerated",
            format!("generated the signing key for selector {selector}; publish its DNS record"),
        ),
        RotationAction::GenerateNext { selector, .. } => (
            "DKIMRotationStarted",
            format!(
                "generated the next key for selector {selector}; signing switches once its DNS \
                 record is published"
            ),
        ),
        RotationAction::SwitchSigning {
            selector,
            retire_at,
        } => (
            "DKIMSigningSwitched",
            format!(
                "signing now uses selector {selector}; the previous key is kept until {}",
                retire_at.to_rfc3339()
            ),
        ),
        RotationAction::Retire { selector } => (
            "DKIMKeyRetired",
            format!("retired the key for selector {selector}; its DNS record may be removed"),
        ),
        RotationAction::WaitForDns { .. }
        | RotationAction::Stalled { .. }
        | RotationAction::Idle { .. } => return None,
    };
    Some(EventSpec {
        warning: false,
        reason: reason.to_string(),
        note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::{RecordCheck, RecordKind, RecordType};
    use chrono::TimeZone as _;

    fn rc(kind: RecordKind, result: CheckResult, required: bool) -> RecordCheck {
        RecordCheck {
            kind,
            record_type: if kind == RecordKind::Mx {
                RecordType::Mx
            } else {
                RecordType::Txt
            },
            name: "example.com.".into(),
            expected: "x".into(),
            observed: None,
            result,
            message: format!("{kind:?} says {result}"),
            required,
            ttl: None,
        }
    }

    fn inputs(dns: Vec<RecordCheck>) -> StatusInputs {
        StatusInputs {
            generation: Some(3),
            invalid_spec: None,
            pool: PoolState::Bound {
                name: "pool".into(),
                hostname: "relay.example.net".into(),
            },
            keys: KeyState::Active {
                selector: "mail".into(),
                rotation: None,
            },
            dns: DnsState::Checked(DomainCheck {
                records: dns,
                shortest_ttl: None,
            }),
        }
    }

    fn get<'a>(c: &'a [Condition], t: &str) -> &'a Condition {
        c.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn all_good_is_ready_and_optional_records_do_not_count() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let c = conditions(
            &inputs(vec![
                rc(RecordKind::Mx, CheckResult::Match, true),
                rc(RecordKind::Dmarc, CheckResult::Missing, false),
            ]),
            &[],
            now,
        );
        assert_eq!(c.len(), 4);
        for t in [READY, DNS_VERIFIED, DKIM_KEY_READY, POOL_BOUND] {
            assert_eq!(get(&c, t).status, "True", "{t}");
            assert_eq!(get(&c, t).observed_generation, Some(3));
        }
        assert_eq!(
            get(&c, DNS_VERIFIED).message,
            "all 1 required DNS records match"
        );
    }

    #[test]
    fn dns_message_lists_what_to_fix_and_reasons_by_kind() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let c = conditions(
            &inputs(vec![
                rc(RecordKind::Mx, CheckResult::Missing, true),
                rc(RecordKind::Spf, CheckResult::Mismatch, true),
                rc(RecordKind::Dkim, CheckResult::Match, true),
            ]),
            &[],
            now,
        );
        let dns = get(&c, DNS_VERIFIED);
        assert_eq!(dns.status, "False");
        assert_eq!(dns.reason, "RecordsIncorrect");
        assert!(
            dns.message.starts_with("2 of the required"),
            "{}",
            dns.message
        );
        assert!(
            dns.message
                .contains("MX MX example.com. is Missing: Mx says Missing")
        );
        assert!(dns.message.contains("SPF TXT example.com. is Mismatch"));
        assert!(!dns.message.contains("DKIM"));
        let ready = get(&c, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "RecordsIncorrect")
        );

        let only_missing = conditions(
            &inputs(vec![rc(RecordKind::Mx, CheckResult::Missing, true)]),
            &[],
            now,
        );
        assert_eq!(get(&only_missing, DNS_VERIFIED).reason, "RecordsMissing");
        let only_errors = conditions(
            &inputs(vec![rc(RecordKind::Mx, CheckResult::Error, true)]),
            &[],
            now,
        );
        assert_eq!(get(&only_errors, DNS_VERIFIED).reason, "DNSCheckFailed");
    }

    #[test]
    fn missing_pool_names_it_and_blocks_ready() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let mut i = inputs(vec![]);
        i.pool = PoolState::NotFound {
            name: "blue".into(),
            namespace: "mail".into(),
        };
        i.dns = DnsState::NotChecked {
            reason: "RelayPoolNotFound".into(),
            message: "the records depend on the pool".into(),
        };
        let c = conditions(&i, &[], now);
        let pb = get(&c, POOL_BOUND);
        assert_eq!(
            (pb.status.as_str(), pb.reason.as_str()),
            ("False", "RelayPoolNotFound")
        );
        assert!(
            pb.message
                .contains("RelayPool blue does not exist in namespace mail")
        );
        assert_eq!(get(&c, READY).reason, "RelayPoolNotFound");
        assert_eq!(get(&c, DKIM_KEY_READY).status, "True");
    }

    #[test]
    fn transition_times_and_events_only_on_change() {
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let t1 = Utc.with_ymd_and_hms(2026, 1, 1, 1, 0, 0).unwrap();
        let bad = inputs(vec![rc(RecordKind::Mx, CheckResult::Missing, true)]);
        let c0 = conditions(&bad, &[], t0);
        let first = transition_events(&[], &c0);
        assert_eq!(first.len(), 4, "first sighting of every condition");
        assert!(
            first
                .iter()
                .any(|e| e.warning && e.reason == "RecordsMissing")
        );

        // Same state an hour later: no events, transition times kept.
        let c1 = conditions(&bad, &c0, t1);
        assert!(transition_events(&c0, &c1).is_empty());
        assert_eq!(
            get(&c1, READY).last_transition_time,
            get(&c0, READY).last_transition_time
        );

        // Fixed: DNSVerified and Ready flip, with new transition times.
        let good = inputs(vec![rc(RecordKind::Mx, CheckResult::Match, true)]);
        let c2 = conditions(&good, &c1, t1);
        let ev = transition_events(&c1, &c2);
        let reasons: Vec<&str> = ev.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons, vec!["DNSVerifiedTrue", "ReadyTrue"]);
        assert!(ev.iter().all(|e| !e.warning));
        assert_ne!(
            get(&c2, READY).last_transition_time,
            get(&c1, READY).last_transition_time
        );
    }

    #[test]
    fn rotation_shows_in_key_condition_and_events() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let mut i = inputs(vec![rc(RecordKind::Mx, CheckResult::Match, true)]);
        i.keys = KeyState::Active {
            selector: "mail".into(),
            rotation: Some(RotationAction::WaitForDns {
                selector: "mail-20260101".into(),
            }),
        };
        let c = conditions(&i, &[], now);
        let k = get(&c, DKIM_KEY_READY);
        assert_eq!(
            (k.status.as_str(), k.reason.as_str()),
            ("True", "RotationPending")
        );
        assert!(k.message.contains("mail-20260101"));
        assert_eq!(get(&c, READY).status, "True");
        assert!(
            rotation_event(&RotationAction::WaitForDns {
                selector: "x".into()
            })
            .is_none()
        );
        let e = rotation_event(&RotationAction::Retire {
            selector: "mail".into(),
        })
        .unwrap();
        assert_eq!(e.reason, "DKIMKeyRetired");
    }

    #[test]
    fn invalid_spec_fails_everything() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let mut i = inputs(vec![]);
        i.invalid_spec = Some("spec.dkim.rotateAfter: \"x\" is not a duration".into());
        let c = conditions(&i, &[], now);
        assert!(
            c.iter()
                .all(|c| c.status == "False" && c.reason == "InvalidSpec")
        );
    }
}
