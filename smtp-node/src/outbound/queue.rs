//! Pure queue decisions: where each recipient goes, which recipients are due, and what a
//! delivery outcome does to a recipient's stored state (retry schedule, expiry).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::outcome::{Outcome, local_reply, reply_line};
use crate::spool::{
    Attempt, MessageMeta, Recipient, RecipientState, RecipientUpdate, Reply, UnixMillis,
};

/// A queue of its own with its own connection limit: a recipient domain, or the
/// smarthost that takes everything. Recipients whose address has no usable domain go to
/// `Unroutable`, where they fail without any network activity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    Domain(String),
    Smarthost,
    Unroutable,
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Domain(domain) => f.write_str(domain),
            Destination::Smarthost => f.write_str("[smarthost]"),
            Destination::Unroutable => f.write_str("[unroutable]"),
        }
    }
}

/// The destination of a recipient address. Domains compare case-insensitively, so
/// `User@Example.COM` and `other@example.com` share a queue and a connection.
pub fn destination_for(address: &str, smarthost: bool) -> Destination {
    match address.rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => {
            if smarthost {
                Destination::Smarthost
            } else {
                Destination::Domain(domain.trim_end_matches('.').to_lowercase())
            }
        }
        _ => Destination::Unroutable,
    }
}

/// The reply recorded for recipients sent to [`Destination::Unroutable`].
pub fn unroutable_outcome(address: &str) -> Outcome {
    Outcome::Permanent(local_reply(
        553,
        "5.1.3",
        format!("recipient address {address:?} has no domain"),
    ))
}

/// When the message next needs work: now-or-earlier for pending recipients, the
/// earliest retry time otherwise, `None` when every recipient is done.
pub fn next_due(meta: &MessageMeta) -> Option<UnixMillis> {
    earliest(meta, meta.received_at)
}

/// When to look at a message again after all its dispatched work finished. A recipient
/// still `Pending` at that point was not attempted (spool error, shutdown, lost
/// connection permit) and waits `backoff` so a persistent error cannot spin.
pub fn next_due_after_attempt(
    meta: &MessageMeta,
    now: UnixMillis,
    backoff: Duration,
) -> Option<UnixMillis> {
    earliest(meta, now.saturating_add(backoff.as_millis() as u64))
}

/// The earliest time any recipient needs work, counting pending ones at `pending_at`.
fn earliest(meta: &MessageMeta, pending_at: UnixMillis) -> Option<UnixMillis> {
    meta.envelope
        .recipients
        .iter()
        .filter_map(|r| match r.state {
            RecipientState::Pending => Some(pending_at),
            RecipientState::Deferred { until } => Some(until),
            RecipientState::Delivered { .. } | RecipientState::Failed { .. } => None,
        })
        .min()
}

/// The recipients to attempt now, grouped by destination. Indices are into
/// `Envelope::recipients`.
pub fn due_recipients(
    meta: &MessageMeta,
    now: UnixMillis,
    smarthost: bool,
) -> BTreeMap<Destination, Vec<usize>> {
    let mut due: BTreeMap<Destination, Vec<usize>> = BTreeMap::new();
    for (index, recipient) in meta.envelope.recipients.iter().enumerate() {
        let is_due = match recipient.state {
            RecipientState::Pending => true,
            RecipientState::Deferred { until } => until <= now,
            RecipientState::Delivered { .. } | RecipientState::Failed { .. } => false,
        };
        if is_due {
            due.entry(destination_for(&recipient.address, smarthost))
                .or_default()
                .push(index);
        }
    }
    due
}

/// Retry schedule and maximum queue age.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub schedule: Vec<Duration>,
    pub max_age: Duration,
}

impl RetryPolicy {
    /// The wait after the `failures`-th temporary failure (1-based); the last interval
    /// repeats.
    pub fn delay_after(&self, failures: usize) -> Duration {
        let index = failures.saturating_sub(1);
        self.schedule
            .get(index)
            .or(self.schedule.last())
            .copied()
            .unwrap_or(Duration::from_secs(300))
    }

    pub fn expires_at(&self, received_at: UnixMillis) -> UnixMillis {
        received_at.saturating_add(self.max_age.as_millis() as u64)
    }
}

/// What one attempt's outcome does to one recipient.
///
/// A temporary failure defers the recipient by the retry schedule, but never past the
/// message's expiry, so that the last attempt happens at `maxAge` and the bounce is not
/// late by a whole retry interval. A temporary failure at or after expiry fails the
/// recipient with 4.4.7, keeping the last error in the text (the attempt list keeps the
/// remote reply itself for the DSN's Diagnostic-Code).
pub fn recipient_update(
    index: usize,
    recipient: &Recipient,
    outcome: &Outcome,
    host: Option<String>,
    now: UnixMillis,
    received_at: UnixMillis,
    policy: &RetryPolicy,
) -> RecipientUpdate {
    let attempt = Some(Attempt {
        at: now,
        host,
        reply: outcome.reply().clone(),
    });
    let state = match outcome {
        Outcome::Delivered(reply) => RecipientState::Delivered {
            at: now,
            reply: reply.clone(),
        },
        Outcome::Permanent(reply) => RecipientState::Failed {
            at: now,
            reply: reply.clone(),
        },
        Outcome::Temporary(reply) => {
            let expires = policy.expires_at(received_at);
            if now >= expires {
                RecipientState::Failed {
                    at: now,
                    reply: expired_reply(reply, recipient.attempts.len() + 1, now - received_at),
                }
            } else {
                let failures = recipient.attempts.len() + 1;
                let wait = policy.delay_after(failures).as_millis() as u64;
                RecipientState::Deferred {
                    until: now.saturating_add(wait).min(expires),
                }
            }
        }
    };
    RecipientUpdate {
        index,
        state,
        attempt,
    }
}

fn expired_reply(last: &Reply, attempts: usize, age: UnixMillis) -> Reply {
    let hours = age / 3_600_000;
    let minutes = (age % 3_600_000) / 60_000;
    local_reply(
        451,
        "4.4.7",
        format!(
            "delivery time expired after {attempts} attempts over {hours}h{minutes:02}m; last error: {}",
            reply_line(last)
        ),
    )
}

/// Whether a failed recipient asked for (or by default gets) a failure DSN (RFC 3461
/// section 4.1: without NOTIFY, failures are reported).
pub fn wants_failure_report(recipient: &Recipient) -> bool {
    let n = recipient.notify;
    if n.never {
        return false;
    }
    let explicit = n.success || n.failure || n.delay;
    !explicit || n.failure
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::test_support::test_meta;
    use crate::spool::Notify;

    fn meta(recipients: Vec<Recipient>) -> MessageMeta {
        let mut meta = test_meta("a@example.com", recipients);
        meta.received_at = 1_000;
        meta
    }

    fn with_state(address: &str, state: RecipientState) -> Recipient {
        Recipient {
            state,
            ..Recipient::new(address)
        }
    }

    fn reply(code: u16) -> Reply {
        Reply {
            code,
            enhanced: None,
            text: "text".into(),
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            schedule: vec![Duration::from_secs(60), Duration::from_secs(600)],
            max_age: Duration::from_secs(3600),
        }
    }

    #[test]
    fn destinations() {
        assert_eq!(
            destination_for("U@Example.COM", false),
            Destination::Domain("example.com".into())
        );
        assert_eq!(
            destination_for("u@example.com", true),
            Destination::Smarthost
        );
        assert_eq!(
            destination_for("postmaster", false),
            Destination::Unroutable
        );
        assert_eq!(
            destination_for("@example.com", false),
            Destination::Unroutable
        );
        assert_eq!(
            destination_for("a@b@[192.0.2.1]", false),
            Destination::Domain("[192.0.2.1]".into())
        );
    }

    #[test]
    fn groups_due_recipients_by_destination() {
        let m = meta(vec![
            Recipient::new("a@x.example"),
            with_state("b@y.example", RecipientState::Deferred { until: 5_000 }),
            Recipient::new("c@X.example"),
            with_state(
                "d@x.example",
                RecipientState::Delivered {
                    at: 1,
                    reply: reply(250),
                },
            ),
            with_state("e@y.example", RecipientState::Deferred { until: 2_000 }),
        ]);
        let due = due_recipients(&m, 3_000, false);
        assert_eq!(due.len(), 2);
        assert_eq!(due[&Destination::Domain("x.example".into())], [0, 2]);
        assert_eq!(due[&Destination::Domain("y.example".into())], [4]);
        let all = due_recipients(&m, 3_000, true);
        assert_eq!(all[&Destination::Smarthost], [0, 2, 4]);
        assert_eq!(next_due(&m), Some(1_000));
    }

    #[test]
    fn next_due_is_the_earliest_retry_or_none() {
        let m = meta(vec![
            with_state("a@x", RecipientState::Deferred { until: 9_000 }),
            with_state("b@x", RecipientState::Deferred { until: 7_000 }),
            with_state(
                "c@x",
                RecipientState::Failed {
                    at: 1,
                    reply: reply(550),
                },
            ),
        ]);
        assert_eq!(next_due(&m), Some(7_000));
        let done = meta(vec![with_state(
            "c@x",
            RecipientState::Failed {
                at: 1,
                reply: reply(550),
            },
        )]);
        assert_eq!(next_due(&done), None);
    }

    #[test]
    fn unattempted_recipients_back_off_but_retries_keep_their_time() {
        let m = meta(vec![
            Recipient::new("a@x"),
            with_state("b@x", RecipientState::Deferred { until: 2_000 }),
        ]);
        assert_eq!(
            next_due_after_attempt(&m, 1_500, Duration::from_secs(30)),
            Some(2_000)
        );
        assert_eq!(
            next_due_after_attempt(&m, 5_000, Duration::from_secs(30)),
            Some(2_000)
        );
        let m = meta(vec![Recipient::new("a@x")]);
        assert_eq!(
            next_due_after_attempt(&m, 5_000, Duration::from_secs(30)),
            Some(35_000)
        );
    }

    #[test]
    fn retry_schedule_last_interval_repeats() {
        let p = policy();
        assert_eq!(p.delay_after(1), Duration::from_secs(60));
        assert_eq!(p.delay_after(2), Duration::from_secs(600));
        assert_eq!(p.delay_after(7), Duration::from_secs(600));
        assert_eq!(p.delay_after(0), Duration::from_secs(60));
    }

    #[test]
    fn outcomes_become_states_with_an_attempt() {
        let r = Recipient::new("a@x");
        let u = recipient_update(
            3,
            &r,
            &Outcome::Delivered(reply(250)),
            Some("mx[1]".into()),
            5_000,
            1_000,
            &policy(),
        );
        assert_eq!(u.index, 3);
        assert!(matches!(
            u.state,
            RecipientState::Delivered { at: 5_000, .. }
        ));
        let attempt = u.attempt.unwrap();
        assert_eq!(
            (attempt.at, attempt.host.as_deref(), attempt.reply.code),
            (5_000, Some("mx[1]"), 250)
        );

        let u = recipient_update(
            0,
            &r,
            &Outcome::Permanent(reply(550)),
            None,
            5_000,
            1_000,
            &policy(),
        );
        assert!(matches!(u.state, RecipientState::Failed { ref reply, .. } if reply.code == 550));
    }

    #[test]
    fn temporary_failures_follow_the_schedule() {
        let mut r = Recipient::new("a@x");
        let u = recipient_update(
            0,
            &r,
            &Outcome::Temporary(reply(451)),
            None,
            10_000,
            1_000,
            &policy(),
        );
        assert_eq!(u.state, RecipientState::Deferred { until: 70_000 });
        r.attempts.push(u.attempt.unwrap());
        let u = recipient_update(
            0,
            &r,
            &Outcome::Temporary(reply(451)),
            None,
            70_000,
            1_000,
            &policy(),
        );
        assert_eq!(u.state, RecipientState::Deferred { until: 670_000 });
    }

    #[test]
    fn deferral_never_passes_expiry_and_expiry_fails_with_4_4_7() {
        let r = Recipient {
            attempts: vec![
                Attempt {
                    at: 0,
                    host: None,
                    reply: reply(451)
                };
                5
            ],
            ..Recipient::new("a@x")
        };
        let expires = 1_000 + 3_600_000;
        let u = recipient_update(
            0,
            &r,
            &Outcome::Temporary(reply(451)),
            None,
            expires - 1_000,
            1_000,
            &policy(),
        );
        assert_eq!(u.state, RecipientState::Deferred { until: expires });

        let u = recipient_update(
            0,
            &r,
            &Outcome::Temporary(reply(451)),
            None,
            expires,
            1_000,
            &policy(),
        );
        let RecipientState::Failed { reply: failed, .. } = u.state else {
            panic!("expected failure, got {:?}", u.state);
        };
        assert_eq!(failed.enhanced.as_deref(), Some("4.4.7"));
        assert!(failed.text.contains("6 attempts"), "{}", failed.text);
        assert!(failed.text.contains("451 text"), "{}", failed.text);
        assert_eq!(
            u.attempt.unwrap().reply.code,
            451,
            "the attempt keeps the remote reply"
        );
    }

    #[test]
    fn failure_reports_follow_notify() {
        let mut r = Recipient::new("a@x");
        assert!(wants_failure_report(&r));
        r.notify = Notify {
            success: true,
            ..Notify::default()
        };
        assert!(!wants_failure_report(&r));
        r.notify.failure = true;
        assert!(wants_failure_report(&r));
        r.notify = Notify {
            never: true,
            ..Notify::default()
        };
        assert!(!wants_failure_report(&r));
    }
}
