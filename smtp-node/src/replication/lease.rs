//! The timing rules that keep an old owner from delivering beside its successor.
//!
//! Each node renews its own Lease in the API server. Both sides measure time only with
//! their own monotonic clocks, never by comparing wall-clock timestamps across machines:
//!
//! - the node counts from the moment it *sent* its last successful renewal, and fences
//!   itself (no new deliveries, 451 to new mail, not ready) after `fence_after`;
//! - an observer counts from the moment it first *saw* the renewal it last saw (which is
//!   after it was sent), and treats the Lease as expired only after
//!   `duration + takeover_margin`.
//!
//! So the old owner stops at least `duration + takeover_margin - fence_after` of its own
//! time before anyone may take over, which absorbs a difference in clock *rates* of
//! [`LeaseTiming::tolerated_drift`] and the cancellation of deliveries in flight. Like
//! Patroni's `loop_wait + 2 * retry_timeout <= ttl`, a node gets at least two renewal
//! attempts before it fences.

use std::time::Duration;

/// Lease timings of a pool; every node uses the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// `leaseDurationSeconds` written into the Lease.
    pub duration: Duration,
    /// Interval between renewals.
    pub renew_every: Duration,
    /// A node that has not renewed for this long stops delivering and accepting.
    pub fence_after: Duration,
    /// Extra wait past `duration` before an observer may take over.
    pub takeover_margin: Duration,
}

impl Default for LeaseTiming {
    /// Takeover about 13 s after the owner's last renewal (goal: 15 s).
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(10),
            renew_every: Duration::from_secs(2),
            fence_after: Duration::from_secs(7),
            takeover_margin: Duration::from_secs(3),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    #[error(
        "lease renewals every {renew:?} leave fewer than two tries before fencing at {fence:?}"
    )]
    TooFewRenewals { renew: Duration, fence: Duration },
    #[error("a node must fence itself ({fence:?}) before its Lease runs out ({duration:?})")]
    FencesTooLate { fence: Duration, duration: Duration },
}

impl LeaseTiming {
    pub fn validate(&self) -> Result<(), TimingError> {
        if self.renew_every * 2 > self.fence_after {
            return Err(TimingError::TooFewRenewals {
                renew: self.renew_every,
                fence: self.fence_after,
            });
        }
        if self.fence_after >= self.duration {
            return Err(TimingError::FencesTooLate {
                fence: self.fence_after,
                duration: self.duration,
            });
        }
        Ok(())
    }

    /// Whether a node whose last successful renewal was sent `since_sent` ago must fence.
    pub fn must_fence(&self, since_sent: Duration) -> bool {
        since_sent >= self.fence_after
    }

    /// Whether a Lease whose renewal was last seen changing `since_seen` ago has expired
    /// for the purpose of taking its node's messages over.
    pub fn expired(&self, since_seen: Duration) -> bool {
        since_seen >= self.duration + self.takeover_margin
    }

    /// How long after sending its prepares an owner may still answer 250 on the
    /// replicas' acknowledgements. A replica acknowledges only while it is not fenced,
    /// and nobody removes it from the view until `duration + takeover_margin` after the
    /// renewal that kept it unfenced, at least `duration + takeover_margin -
    /// fence_after` after its acknowledgement. Half of that leaves the same room for
    /// clock rates as fencing does: a 250 given within it rests on holders that are all
    /// still in the arbiter's view.
    pub fn acknowledgements_hold_for(&self) -> Duration {
        (self.duration + self.takeover_margin).saturating_sub(self.fence_after) / 2
    }

    /// How much faster the old owner's clock may run than the observer's (as a fraction)
    /// with the old owner still fenced first.
    pub fn tolerated_drift(&self) -> f64 {
        (self.duration + self.takeover_margin).as_secs_f64() / self.fence_after.as_secs_f64() - 1.0
    }
}

/// What an observer remembers of another node's Lease: the last renewal it saw and when,
/// by its own clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed<T> {
    pub renewal: String,
    pub seen_at: T,
}

/// Folds a fresh read of a Lease's renew time into what was observed before: the clock
/// restarts only when the renewal changed.
pub fn observe<T: Copy>(previous: Option<&Observed<T>>, renewal: &str, now: T) -> Observed<T> {
    match previous {
        Some(p) if p.renewal == renewal => p.clone(),
        _ => Observed {
            renewal: renewal.to_owned(),
            seen_at: now,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_fences_before_anyone_may_take_over() {
        let t = LeaseTiming::default();
        t.validate().expect("defaults are valid");
        // The observer sees the renewal no earlier than it was sent.
        for step in 0..200u64 {
            let elapsed = Duration::from_millis(step * 100);
            if t.expired(elapsed) {
                assert!(t.must_fence(elapsed), "at {elapsed:?}");
            }
        }
        assert!(t.tolerated_drift() >= 0.5, "{}", t.tolerated_drift());
        assert_eq!(t.acknowledgements_hold_for(), Duration::from_secs(3));
        assert!(t.duration + t.takeover_margin <= Duration::from_secs(15));
    }

    #[test]
    fn timings_that_cannot_fence_in_time_are_refused() {
        let t = LeaseTiming {
            fence_after: LeaseTiming::default().duration,
            ..LeaseTiming::default()
        };
        assert!(matches!(
            t.validate(),
            Err(TimingError::FencesTooLate { .. })
        ));
        let t = LeaseTiming {
            renew_every: Duration::from_secs(4),
            ..LeaseTiming::default()
        };
        assert!(matches!(
            t.validate(),
            Err(TimingError::TooFewRenewals { .. })
        ));
    }

    #[test]
    fn the_clock_restarts_only_when_the_renewal_changes() {
        let first = observe(None, "t1", 10u64);
        assert_eq!(first.seen_at, 10);
        let same = observe(Some(&first), "t1", 25);
        assert_eq!(same.seen_at, 10, "an unchanged renewal keeps its age");
        let renewed = observe(Some(&same), "t2", 30);
        assert_eq!(renewed.seen_at, 30);
    }
}
