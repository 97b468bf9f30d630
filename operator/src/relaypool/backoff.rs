//! Per-object exponential backoff for failed reconciliations.
//!
//! kube-runtime's `error_policy` only sees the error and the object, so the number of
//! consecutive failures per pool is tracked here. One broken pool then backs off on
//! its own schedule without slowing the retries of the others, and a success resets it.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Delay after the first failure.
pub const INITIAL_DELAY: Duration = Duration::from_secs(5);

/// Longest delay between retries: long enough not to hammer a broken API server,
/// short enough that a fixed problem is noticed within minutes.
pub const MAX_DELAY: Duration = Duration::from_secs(5 * 60);

/// The delay before retrying after `failures` consecutive failures (1 for the first):
/// 5 s, 10 s, 20 s, … capped at [`MAX_DELAY`].
pub fn delay_after(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    INITIAL_DELAY
        .saturating_mul(1u32 << exponent)
        .min(MAX_DELAY)
}

/// Consecutive failure counts by object key (`namespace/name`).
#[derive(Debug, Default)]
pub struct FailureTracker {
    failures: Mutex<HashMap<String, u32>>,
}

impl FailureTracker {
    /// Counts one more failure of `key` and returns how long to wait before retrying.
    pub fn failed(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let count = failures.entry(key.to_owned()).or_default();
        *count = count.saturating_add(1);
        delay_after(*count)
    }

    /// Forgets the failures of `key` after a successful reconciliation.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    /// Consecutive failures recorded for `key`.
    pub fn failures(&self, key: &str) -> u32 {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_then_caps() {
        let delays: Vec<u64> = (1..=9).map(|n| delay_after(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(delay_after(u32::MAX), MAX_DELAY);
        assert_eq!(delay_after(0), INITIAL_DELAY);
    }

    #[test]
    fn failures_are_counted_per_object_and_reset_on_success() {
        let tracker = FailureTracker::default();
        assert_eq!(tracker.failed("mail/a"), Duration::from_secs(5));
        assert_eq!(tracker.failed("mail/a"), Duration::from_secs(10));
        assert_eq!(tracker.failed("mail/b"), Duration::from_secs(5));
        assert_eq!(tracker.failed("mail/a"), Duration::from_secs(20));
        assert_eq!(tracker.failures("mail/a"), 3);
        tracker.succeeded("mail/a");
        assert_eq!(tracker.failures("mail/a"), 0);
        assert_eq!(tracker.failed("mail/a"), Duration::from_secs(5));
        assert_eq!(tracker.failures("mail/b"), 1);
    }
}
