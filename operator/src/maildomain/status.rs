//! MailDomain conditions and the events their transitions produce (pure).
//!
//! - `PoolBound`: the RelayPool named by `spec.relayPoolRef` exists, and no older
//!   MailDomain in the namespace claims the same domain.
//! - `DKIMKeyReady`: a signing key exists (True also during a rotation: signing is
//!   unaffected; reason `KeyRotating` and the message say what is pending).
//! - `DNSVerified`: True when every required record matches; False when some are
//!   missing or wrong, Unknown when lookups failed or DNS was not checked yet; the
//!   message lists what to fix.
//! - `Ready`: all three.
//!
//! Types and reasons are the API's ([`crate::api::mail_domain::condition_types`],
//! [`crate::api::mail_domain::reasons`]). Events are emitted only when a condition
//! changes status (and for key lifecycle steps), never on every poll.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::conditions::{FALSE, TRUE, UNKNOWN, upsert};
use crate::api::mail_domain::{MailDomainStatus, condition_types as types, reasons};
use crate::dkim_keys::RotationAction;
use crate::dns::{CheckResult, DomainCheck};

/// What the pool lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolState {
    Bound {
        name: String,
        hostname: String,
    },
    NotFound {
        name: String,
        namespace: String,
    },
    /// An older MailDomain (`other`) claims the same domain.
    Conflict {
        other: String,
        domain: String,
    },
}

/// Where the signing key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    Generated,
    /// From the named Secret.
    Provided {
        secret: String,
    },
}

/// What the key step found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// Signing with `selector`; `rotation` is the rotation step decided this time.
    Active {
        selector: String,
        origin: KeyOrigin,
        rotation: Option<RotationAction>,
    },
    /// No usable signing key; `reason` is one of the API's reasons.
    Failed { reason: String, message: String },
}

/// What the DNS step found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsState {
    Checked(DomainCheck),
    /// Not checked yet; the message says why.
    NotChecked {
        message: String,
    },
}

/// Everything the conditions depend on.
#[derive(Debug, Clone)]
pub struct StatusInputs {
    pub generation: Option<i64>,
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

pub(crate) fn k8s_time(t: DateTime<Utc>) -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::from_second(t.timestamp())
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: k8s_time(now),
    }
}

/// The part of a status this reconciler writes: without `delivery` and the
/// `DeliveryHealthy` condition, which the delivery sampler writes under its own field
/// manager ([`crate::delivery`]). Applying them too would make this reconciler their
/// co-owner and let a stale copy overwrite the sampler's.
pub fn own_part(status: &MailDomainStatus) -> MailDomainStatus {
    let mut out = status.clone();
    out.delivery = None;
    out.conditions
        .retain(|c| c.type_ != types::DELIVERY_HEALTHY);
    out
}

/// The conditions for an invalid spec: only `Ready`, naming the field; the others keep
/// what they said.
pub fn invalid_spec_conditions(
    message: &str,
    generation: Option<i64>,
    previous: &[Condition],
    now: DateTime<Utc>,
) -> Vec<Condition> {
    let mut out = previous.to_vec();
    upsert(
        &mut out,
        condition(
            types::READY,
            FALSE,
            reasons::INVALID_SPEC,
            message.to_string(),
            generation,
            now,
        ),
    );
    out
}

/// The four conditions, derived from `inputs`, carrying over transition times from
/// `previous`; listed in the API's order.
pub fn conditions(
    inputs: &StatusInputs,
    previous: &[Condition],
    now: DateTime<Utc>,
) -> Vec<Condition> {
    let g = inputs.generation;

    let (pool_status, pool_reason, pool_msg) = match &inputs.pool {
        PoolState::Bound { name, hostname } => (
            TRUE,
            reasons::POOL_FOUND,
            format!("bound to RelayPool {name} (hostname {hostname})"),
        ),
        PoolState::NotFound { name, namespace } => (
            FALSE,
            reasons::POOL_NOT_FOUND,
            format!(
                "RelayPool {name} does not exist in namespace {namespace}: create it or fix \
                 spec.relayPoolRef"
            ),
        ),
        PoolState::Conflict { other, domain } => (
            FALSE,
            reasons::DOMAIN_CONFLICT,
            format!(
                "MailDomain {other} in this namespace already claims {domain}; only the \
                 oldest claim is served: delete one of them"
            ),
        ),
    };

    let (key_status, key_reason, key_msg) = match &inputs.keys {
        KeyState::Active {
            selector,
            origin,
            rotation,
        } => key_condition(selector, origin, rotation.as_ref()),
        KeyState::Failed { reason, message } => (FALSE, reason.clone(), message.clone()),
    };

    let (dns_status, dns_reason, dns_msg) = match &inputs.dns {
        DnsState::Checked(check) => dns_condition(check),
        DnsState::NotChecked { message } => {
            (UNKNOWN, reasons::CHECK_PENDING.to_string(), message.clone())
        }
    };

    let failing: Vec<String> = [
        (types::POOL_BOUND, pool_status, &pool_msg),
        (types::DKIM_KEY_READY, key_status, &key_msg),
        (types::DNS_VERIFIED, dns_status, &dns_msg),
    ]
    .iter()
    .filter(|(_, status, _)| *status != TRUE)
    .map(|(t, _, m)| format!("{t}: {m}"))
    .collect();
    let (ready_status, ready_reason, ready_msg) = if failing.is_empty() {
        (
            TRUE,
            reasons::DOMAIN_READY,
            "the domain is bound to its pool, signed, and its DNS records are verified".to_string(),
        )
    } else if matches!(inputs.pool, PoolState::Conflict { .. }) {
        (FALSE, reasons::DOMAIN_CONFLICT, failing.join("; "))
    } else {
        (FALSE, reasons::NOT_READY, failing.join("; "))
    };

    let mut out = previous.to_vec();
    for c in [
        condition(types::READY, ready_status, ready_reason, ready_msg, g, now),
        condition(
            types::DNS_VERIFIED,
            dns_status,
            &dns_reason,
            dns_msg,
            g,
            now,
        ),
        condition(
            types::DKIM_KEY_READY,
            key_status,
            &key_reason,
            key_msg,
            g,
            now,
        ),
        condition(
            types::POOL_BOUND,
            pool_status,
            pool_reason,
            pool_msg,
            g,
            now,
        ),
    ] {
        upsert(&mut out, c);
    }
    out.sort_by_key(|c| {
        types::ALL
            .iter()
            .position(|t| *t == c.type_)
            .unwrap_or(types::ALL.len())
    });
    out
}

fn key_condition(
    selector: &str,
    origin: &KeyOrigin,
    rotation: Option<&RotationAction>,
) -> (&'static str, String, String) {
    let signing = format!("signing with selector {selector}");
    let rotating = |what: String| {
        (
            TRUE,
            reasons::KEY_ROTATING.to_string(),
            format!("{signing}; {what}"),
        )
    };
    match rotation {
        Some(RotationAction::GenerateNext { selector: next, .. })
        | Some(RotationAction::WaitForDns { selector: next }) => rotating(format!(
            "the next key {next} waits for its DNS record: publish it (see status.dns.records) \
             so signing can switch"
        )),
        Some(RotationAction::MarkPublished { selector: next }) => rotating(format!(
            "DNS shows the next key {next}; signing switches to it after spec.dkim.rotationOverlap"
        )),
        Some(RotationAction::WaitForOverlap {
            selector: next,
            until,
        }) => rotating(format!(
            "DNS shows the next key {next}; signing switches to it at {}",
            until.to_rfc3339()
        )),
        Some(RotationAction::Stalled { reason, .. }) => rotating(reason.clone()),
        _ => match origin {
            KeyOrigin::Generated => (TRUE, reasons::KEY_GENERATED.to_string(), signing),
            KeyOrigin::Provided { secret } => (
                TRUE,
                reasons::KEY_PROVIDED.to_string(),
                format!("{signing}, the key from Secret {secret}"),
            ),
        },
    }
}

fn dns_condition(check: &DomainCheck) -> (&'static str, String, String) {
    let to_fix: Vec<_> = check.to_fix().collect();
    if to_fix.is_empty() {
        let n = check.records.iter().filter(|r| r.required).count();
        return (
            TRUE,
            reasons::RECORDS_MATCH.to_string(),
            format!("all {n} required DNS records match"),
        );
    }
    let (status, reason) = if to_fix.iter().any(|r| r.result == CheckResult::Mismatch) {
        (FALSE, reasons::RECORDS_MISMATCH)
    } else if to_fix.iter().any(|r| r.result == CheckResult::Missing) {
        (FALSE, reasons::RECORDS_MISSING)
    } else {
        (UNKNOWN, reasons::LOOKUP_FAILED)
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
        status,
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
/// counts as changed): Normal when it became True, Warning otherwise.
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
            warning: c.status != TRUE,
            reason: c.reason.clone(),
            note: format!("{} is {}: {}", c.type_, c.status, c.message),
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
        RotationAction::MarkPublished { selector } => (
            "DKIMNextKeyPublished",
            format!(
                "DNS shows the record of the next key {selector}; signing switches after \
                 spec.dkim.rotationOverlap"
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
        | RotationAction::WaitForOverlap { .. }
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
            pool: PoolState::Bound {
                name: "pool".into(),
                hostname: "relay.example.net".into(),
            },
            keys: KeyState::Active {
                selector: "mail".into(),
                origin: KeyOrigin::Generated,
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

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
    }

    #[test]
    fn all_good_is_ready_and_optional_records_do_not_count() {
        let c = conditions(
            &inputs(vec![
                rc(RecordKind::Mx, CheckResult::Match, true),
                rc(RecordKind::Dkim, CheckResult::Missing, false),
            ]),
            &[],
            now(),
        );
        let order: Vec<&str> = c.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(order, types::ALL);
        for t in types::ALL {
            assert_eq!(get(&c, t).status, TRUE, "{t}");
            assert_eq!(get(&c, t).observed_generation, Some(3));
        }
        assert_eq!(get(&c, types::READY).reason, reasons::DOMAIN_READY);
        assert_eq!(
            get(&c, types::DKIM_KEY_READY).reason,
            reasons::KEY_GENERATED
        );
        assert_eq!(
            get(&c, types::DNS_VERIFIED).message,
            "all 1 required DNS records match"
        );
    }

    #[test]
    fn dns_message_lists_what_to_fix_and_reasons_by_kind() {
        let c = conditions(
            &inputs(vec![
                rc(RecordKind::Mx, CheckResult::Missing, true),
                rc(RecordKind::Spf, CheckResult::Mismatch, true),
                rc(RecordKind::Dkim, CheckResult::Match, true),
            ]),
            &[],
            now(),
        );
        let dns = get(&c, types::DNS_VERIFIED);
        assert_eq!(dns.status, FALSE);
        assert_eq!(dns.reason, reasons::RECORDS_MISMATCH);
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
        let ready = get(&c, types::READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            (FALSE, reasons::NOT_READY)
        );
        assert!(
            ready.message.starts_with("DNSVerified: 2 of the required"),
            "{}",
            ready.message
        );

        let missing = conditions(
            &inputs(vec![
                rc(RecordKind::Mx, CheckResult::Missing, true),
                rc(RecordKind::Spf, CheckResult::Error, true),
            ]),
            &[],
            now(),
        );
        assert_eq!(
            get(&missing, types::DNS_VERIFIED).reason,
            reasons::RECORDS_MISSING
        );
        let errors = conditions(
            &inputs(vec![rc(RecordKind::Mx, CheckResult::Error, true)]),
            &[],
            now(),
        );
        let dns = get(&errors, types::DNS_VERIFIED);
        assert_eq!(
            (dns.status.as_str(), dns.reason.as_str()),
            (UNKNOWN, reasons::LOOKUP_FAILED)
        );
        assert_eq!(get(&errors, types::READY).status, FALSE);
    }

    #[test]
    fn missing_pool_names_it_and_blocks_ready() {
        let mut i = inputs(vec![]);
        i.pool = PoolState::NotFound {
            name: "blue".into(),
            namespace: "mail".into(),
        };
        i.dns = DnsState::NotChecked {
            message: "the records depend on the pool".into(),
        };
        let c = conditions(&i, &[], now());
        let pb = get(&c, types::POOL_BOUND);
        assert_eq!(
            (pb.status.as_str(), pb.reason.as_str()),
            (FALSE, reasons::POOL_NOT_FOUND)
        );
        assert!(
            pb.message
                .contains("RelayPool blue does not exist in namespace mail")
        );
        let dns = get(&c, types::DNS_VERIFIED);
        assert_eq!(
            (dns.status.as_str(), dns.reason.as_str()),
            (UNKNOWN, reasons::CHECK_PENDING)
        );
        let ready = get(&c, types::READY);
        assert_eq!(ready.reason, reasons::NOT_READY);
        assert!(
            ready.message.contains("PoolBound: RelayPool blue"),
            "{}",
            ready.message
        );
        assert!(ready.message.contains("DNSVerified: "), "{}", ready.message);
        assert_eq!(get(&c, types::DKIM_KEY_READY).status, TRUE);

        i.pool = PoolState::Conflict {
            other: "older".into(),
            domain: "example.com".into(),
        };
        let c = conditions(&i, &[], now());
        assert_eq!(get(&c, types::POOL_BOUND).reason, reasons::DOMAIN_CONFLICT);
        assert_eq!(get(&c, types::READY).reason, reasons::DOMAIN_CONFLICT);
    }

    #[test]
    fn transition_times_and_events_only_on_change() {
        let t0 = now();
        let t1 = Utc.with_ymd_and_hms(2026, 1, 1, 1, 0, 0).unwrap();
        let bad = inputs(vec![rc(RecordKind::Mx, CheckResult::Missing, true)]);
        let c0 = conditions(&bad, &[], t0);
        let first = transition_events(&[], &c0);
        assert_eq!(first.len(), 4, "first sighting of every condition");
        assert!(
            first
                .iter()
                .any(|e| e.warning && e.reason == reasons::RECORDS_MISSING)
        );

        // Same state an hour later: no events, transition times kept.
        let c1 = conditions(&bad, &c0, t1);
        assert!(transition_events(&c0, &c1).is_empty());
        assert_eq!(
            get(&c1, types::READY).last_transition_time,
            get(&c0, types::READY).last_transition_time
        );

        // Fixed: DNSVerified and Ready flip, with new transition times.
        let good = inputs(vec![rc(RecordKind::Mx, CheckResult::Match, true)]);
        let c2 = conditions(&good, &c1, t1);
        let ev = transition_events(&c1, &c2);
        let reasons_seen: Vec<&str> = ev.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(
            reasons_seen,
            vec![reasons::DOMAIN_READY, reasons::RECORDS_MATCH]
        );
        assert!(ev.iter().all(|e| !e.warning));
        assert_ne!(
            get(&c2, types::READY).last_transition_time,
            get(&c1, types::READY).last_transition_time
        );
    }

    #[test]
    fn rotation_and_origin_show_in_the_key_condition() {
        let mut i = inputs(vec![rc(RecordKind::Mx, CheckResult::Match, true)]);
        i.keys = KeyState::Active {
            selector: "mail".into(),
            origin: KeyOrigin::Generated,
            rotation: Some(RotationAction::WaitForDns {
                selector: "mail-20260101".into(),
            }),
        };
        let c = conditions(&i, &[], now());
        let k = get(&c, types::DKIM_KEY_READY);
        assert_eq!(
            (k.status.as_str(), k.reason.as_str()),
            (TRUE, reasons::KEY_ROTATING)
        );
        assert!(k.message.contains("mail-20260101"));
        assert_eq!(get(&c, types::READY).status, TRUE);

        i.keys = KeyState::Active {
            selector: "byo".into(),
            origin: KeyOrigin::Provided {
                secret: "my-dkim".into(),
            },
            rotation: None,
        };
        let c = conditions(&i, &[], now());
        let k = get(&c, types::DKIM_KEY_READY);
        assert_eq!(k.reason, reasons::KEY_PROVIDED);
        assert!(k.message.contains("my-dkim"));

        i.keys = KeyState::Failed {
            reason: reasons::KEY_SECRET_NOT_FOUND.into(),
            message: "Secret my-dkim does not exist".into(),
        };
        let c = conditions(&i, &[], now());
        assert_eq!(get(&c, types::DKIM_KEY_READY).status, FALSE);
        assert_eq!(get(&c, types::READY).status, FALSE);

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
    fn the_reconciler_leaves_the_delivery_part_alone() {
        let mut status = MailDomainStatus {
            conditions: conditions(&inputs(vec![]), &[], now()),
            delivery: Some(crate::api::mail_domain::DeliveryStatus::default()),
            ..MailDomainStatus::default()
        };
        let own = status.clone();
        status.conditions.push(condition(
            types::DELIVERY_HEALTHY,
            FALSE,
            reasons::BOUNCE_RATE_HIGH,
            "x".into(),
            Some(1),
            now(),
        ));
        let part = own_part(&status);
        assert_eq!(part.delivery, None);
        assert_eq!(part.conditions, own.conditions);
    }

    #[test]
    fn invalid_spec_sets_ready_only() {
        let previous = conditions(&inputs(vec![]), &[], now());
        let c = invalid_spec_conditions(
            "spec.dkim.rotateAfter: invalid duration",
            Some(4),
            &previous,
            now(),
        );
        let ready = get(&c, types::READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            (FALSE, reasons::INVALID_SPEC)
        );
        assert_eq!(ready.observed_generation, Some(4));
        assert_eq!(
            get(&c, types::POOL_BOUND),
            get(&previous, types::POOL_BOUND)
        );
    }
}
