//! `status.delivery` and the `DeliveryHealthy` condition of one MailDomain (pure).

use chrono::{DateTime, Duration, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::window::{DomainWindow, PoolHistory};
use crate::api::conditions::{self, FALSE, TRUE, UNKNOWN};
use crate::api::mail_domain::{
    DeliveryRefusal, DeliverySpec, DeliveryStatus, DeliveryWindow, condition_types, reasons,
};
use crate::maildomain::status::k8s_time;

/// Refusals listed in `status.delivery.topRefusals`.
pub const TOP_REFUSALS: usize = 5;

/// What the condition says: status, reason, message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

/// `bounced` in percent of `delivered + bounced`, one decimal; `None` when neither
/// happened. Deferrals are left out: a deferred recipient is retried and ends up in one
/// of the two.
pub fn bounce_rate_percent(window: &DeliveryWindow) -> Option<f64> {
    let finished = window.delivered + window.bounced;
    (finished > 0).then(|| (window.bounced as f64 * 1000.0 / finished as f64).round() / 10.0)
}

fn summary(window: &DomainWindow) -> DeliveryWindow {
    let mut out = DeliveryWindow {
        delivered: window.counts.delivered,
        deferred: window.counts.deferred,
        bounced: window.counts.bounced,
        bounce_rate_percent: None,
    };
    out.bounce_rate_percent = bounce_rate_percent(&out);
    out
}

/// The most frequent refusals of `window`, bounces before deferrals at equal counts.
pub fn top_refusals(window: &DomainWindow) -> Vec<DeliveryRefusal> {
    let mut all: Vec<DeliveryRefusal> = window
        .reasons
        .iter()
        .map(|((result, code), (count, destinations))| DeliveryRefusal {
            result: result.clone(),
            code: code.clone(),
            meaning: meaning(code).to_owned(),
            count: *count,
            destinations: destinations.clone(),
        })
        .collect();
    all.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| (a.result != "bounced").cmp(&(b.result != "bounced")))
            .then_with(|| a.code.cmp(&b.code))
    });
    all.truncate(TOP_REFUSALS);
    all
}

/// The delivery status of `domain` from the pool's history.
pub fn delivery_status(
    history: &PoolHistory,
    domain: &str,
    now: DateTime<Utc>,
    reporting: u32,
    missing: u32,
) -> DeliveryStatus {
    let day = history.window(domain, now, Duration::hours(24));
    DeliveryStatus {
        last_hour: summary(&history.window(domain, now, Duration::hours(1))),
        last24_hours: summary(&day),
        top_refusals: top_refusals(&day),
        nodes_reporting: reporting,
        nodes_missing: missing,
        sampling_since: history.first().map(k8s_time),
    }
}

/// The `DeliveryHealthy` verdict: Unknown until increments can be told and the last
/// hour has `minRecipients` delivered or bounced; False over the threshold, naming the
/// most frequent bounce of the hour; True otherwise.
pub fn verdict(
    sampled: bool,
    last_hour: &DeliveryWindow,
    hour_refusals: &[DeliveryRefusal],
    spec: &DeliverySpec,
) -> Verdict {
    if !sampled {
        return Verdict {
            status: UNKNOWN,
            reason: reasons::AWAITING_SAMPLES,
            message: "the pool's nodes have not been sampled twice yet".into(),
        };
    }
    let finished = last_hour.delivered + last_hour.bounced;
    let rate = match bounce_rate_percent(last_hour) {
        Some(rate) if finished >= u64::from(spec.min_recipients) => rate,
        _ => {
            return Verdict {
                status: UNKNOWN,
                reason: reasons::TOO_FEW_RECIPIENTS,
                message: format!(
                    "{finished} recipients delivered or bounced in the last hour; the bounce \
                     rate is judged from {} (spec.delivery.minRecipients)",
                    spec.min_recipients
                ),
            };
        }
    };
    let threshold = spec.bounce_rate_threshold;
    if rate > threshold {
        let worst = hour_refusals
            .iter()
            .find(|r| r.result == "bounced")
            .map(|r| {
                format!(
                    "; most bounces: {} {} ({} recipients{})",
                    r.code,
                    r.meaning,
                    r.count,
                    if r.destinations.is_empty() {
                        String::new()
                    } else {
                        format!(", e.g. to {}", r.destinations.join(", "))
                    }
                )
            })
            .unwrap_or_default();
        return Verdict {
            status: FALSE,
            reason: reasons::BOUNCE_RATE_HIGH,
            message: format!(
                "{rate}% of recipients bounced in the last hour ({} of {finished}), over the \
                 threshold of {threshold}%{worst}",
                last_hour.bounced
            ),
        };
    }
    Verdict {
        status: TRUE,
        reason: reasons::BOUNCE_RATE_NORMAL,
        message: format!(
            "{rate}% of recipients bounced in the last hour ({} of {finished}), threshold \
             {threshold}%",
            last_hour.bounced
        ),
    }
}

/// The condition for `verdict`, keeping the transition time of `previous` while the
/// status stays.
pub fn condition(
    verdict: &Verdict,
    previous: Option<&Condition>,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Condition {
    conditions::carry_transition(
        previous,
        conditions::new(
            condition_types::DELIVERY_HEALTHY,
            verdict.status,
            verdict.reason,
            verdict.message.chars().take(1024).collect::<String>(),
            generation,
            k8s_time(now),
        ),
    )
}

/// The Event a change of the condition deserves: a Warning when it turns False, a
/// Normal one when it recovers from False. (warning, reason, note)
pub fn transition_event(
    previous: Option<&Condition>,
    verdict: &Verdict,
) -> Option<(bool, &'static str, String)> {
    let was = previous.map(|c| c.status.as_str());
    match (was, verdict.status) {
        (Some(FALSE), FALSE) => None,
        (_, FALSE) => Some((true, "DeliveryUnhealthy", verdict.message.clone())),
        (Some(FALSE), TRUE) => Some((false, "DeliveryRecovered", verdict.message.clone())),
        _ => None,
    }
}

/// What an RFC 3463 enhanced status code means, for people reading the status.
pub fn meaning(code: &str) -> &'static str {
    match code {
        "5.1.1" => "bad destination mailbox address",
        "5.1.2" | "4.1.2" => "bad destination system address",
        "5.1.10" => "recipient address has null MX",
        "4.2.1" | "5.2.1" => "mailbox disabled, not accepting messages",
        "4.2.2" | "5.2.2" => "mailbox full",
        "5.2.3" => "message length exceeds administrative limit",
        "4.3.0" | "5.3.0" => "other or undefined mail system status",
        "4.3.2" => "system not accepting network messages",
        "4.4.1" => "no answer from host",
        "4.4.2" => "bad connection",
        "4.4.3" | "5.4.3" => "directory server failure",
        "5.4.4" => "unable to route",
        "4.4.7" | "5.4.7" => "delivery time expired",
        "5.6.0" => "other or undefined media error",
        "4.7.0" | "5.7.0" => "other or undefined security status",
        "5.7.1" | "4.7.1" => "delivery not authorized, message refused",
        "5.7.23" => "SPF validation failed",
        "5.7.25" => "reverse DNS validation failed",
        "5.7.26" => "multiple authentication checks failed",
        "5.7.27" => "sender address has null MX",
        "none" => "the receivers gave no enhanced status code",
        c if c.starts_with("4.") => "temporary failure",
        c if c.starts_with("5.") => "permanent failure",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(delivered: u64, bounced: u64) -> DeliveryWindow {
        let mut w = DeliveryWindow {
            delivered,
            deferred: 3,
            bounced,
            bounce_rate_percent: None,
        };
        w.bounce_rate_percent = bounce_rate_percent(&w);
        w
    }

    fn refusal(result: &str, code: &str, count: u64) -> DeliveryRefusal {
        DeliveryRefusal {
            result: result.into(),
            code: code.into(),
            meaning: meaning(code).into(),
            count,
            destinations: vec!["example.net".into()],
        }
    }

    #[test]
    fn bounce_rates() {
        for (delivered, bounced, rate) in [
            (0, 0, None),
            (10, 0, Some(0.0)),
            (0, 4, Some(100.0)),
            (2, 1, Some(33.3)),
            (199, 1, Some(0.5)),
        ] {
            assert_eq!(bounce_rate_percent(&window(delivered, bounced)), rate);
        }
    }

    #[test]
    fn verdicts() {
        let spec = DeliverySpec::default(); // 5 %, 20 recipients
        let strict = DeliverySpec {
            bounce_rate_threshold: 1.0,
            min_recipients: 1,
        };
        let refusals = [
            refusal("deferred", "4.2.2", 9),
            refusal("bounced", "5.1.1", 4),
        ];
        let cases = [
            (
                false,
                window(100, 50),
                &spec,
                UNKNOWN,
                reasons::AWAITING_SAMPLES,
            ),
            (
                true,
                window(0, 0),
                &spec,
                UNKNOWN,
                reasons::TOO_FEW_RECIPIENTS,
            ),
            (
                true,
                window(10, 9),
                &spec,
                UNKNOWN,
                reasons::TOO_FEW_RECIPIENTS,
            ),
            (
                true,
                window(95, 5),
                &spec,
                TRUE,
                reasons::BOUNCE_RATE_NORMAL,
            ),
            (true, window(94, 6), &spec, FALSE, reasons::BOUNCE_RATE_HIGH),
            (
                true,
                window(0, 1),
                &strict,
                FALSE,
                reasons::BOUNCE_RATE_HIGH,
            ),
            (
                true,
                window(1, 0),
                &strict,
                TRUE,
                reasons::BOUNCE_RATE_NORMAL,
            ),
        ];
        for (sampled, hour, spec, status, reason) in cases {
            let v = verdict(sampled, &hour, &refusals, spec);
            assert_eq!((v.status, v.reason), (status, reason), "{hour:?} {spec:?}");
        }
        let v = verdict(true, &window(94, 6), &refusals, &spec);
        assert!(
            v.message.contains("6% of recipients bounced")
                && v.message.contains("threshold of 5%")
                && v.message.contains("5.1.1 bad destination mailbox address")
                && v.message.contains("example.net"),
            "{}",
            v.message
        );
    }

    #[test]
    fn refusals_are_ranked_and_cut() {
        let mut w = DomainWindow::default();
        for (result, code, count) in [
            ("deferred", "4.2.2", 5),
            ("bounced", "5.1.1", 5),
            ("bounced", "5.7.1", 9),
            ("bounced", "none", 1),
            ("deferred", "4.4.1", 2),
            ("bounced", "5.2.2", 1),
            ("deferred", "4.7.0", 3),
        ] {
            w.reasons.insert(
                (result.into(), code.into()),
                (count, vec!["d.example".into()]),
            );
        }
        let top = top_refusals(&w);
        let order: Vec<&str> = top.iter().map(|r| r.code.as_str()).collect();
        assert_eq!(order, ["5.7.1", "5.1.1", "4.2.2", "4.7.0", "4.4.1"]);
        assert_eq!(top[0].meaning, "delivery not authorized, message refused");
    }

    #[test]
    fn events_on_falling_and_recovering() {
        let bad = Verdict {
            status: FALSE,
            reason: reasons::BOUNCE_RATE_HIGH,
            message: "m".into(),
        };
        let good = Verdict {
            status: TRUE,
            reason: reasons::BOUNCE_RATE_NORMAL,
            message: "ok".into(),
        };
        let now = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        let was_bad = condition(&bad, None, Some(1), now);
        let was_good = condition(&good, None, Some(1), now);
        assert_eq!(
            transition_event(None, &bad).map(|e| (e.0, e.1)),
            Some((true, "DeliveryUnhealthy"))
        );
        assert_eq!(
            transition_event(Some(&was_good), &bad).map(|e| e.1),
            Some("DeliveryUnhealthy")
        );
        assert_eq!(transition_event(Some(&was_bad), &bad), None);
        assert_eq!(
            transition_event(Some(&was_bad), &good).map(|e| (e.0, e.1)),
            Some((false, "DeliveryRecovered"))
        );
        assert_eq!(transition_event(Some(&was_good), &good), None);
        assert_eq!(transition_event(None, &good), None);
        // The transition time stays while the status does.
        let later = now + Duration::minutes(5);
        assert_eq!(
            condition(&bad, Some(&was_bad), Some(2), later).last_transition_time,
            was_bad.last_transition_time
        );
        assert_ne!(
            condition(&good, Some(&was_bad), Some(2), later).last_transition_time,
            was_bad.last_transition_time
        );
    }
}
