//! Per-destination message rate limit: a token bucket.
//!
//! The bucket holds at most a tenth of a minute's allowance (at least one message), so a
//! destination sees short bursts at most and the long-run rate never exceeds the limit.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    pub fn per_minute(limit: u32, now: Instant) -> Self {
        let limit = f64::from(limit.max(1));
        let capacity = (limit / 10.0).max(1.0);
        Self {
            per_second: limit / 60.0,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.last = now;
    }

    /// Takes one message's token, or says how long to wait for it.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.per_second,
            ))
        }
    }

    /// A full bucket carries no history: the limiter can be dropped and recreated.
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_paces() {
        let start = Instant::now();
        let mut limiter = RateLimiter::per_minute(60, start);
        for _ in 0..6 {
            assert_eq!(
                limiter.try_acquire(start),
                Ok(()),
                "a tenth of a minute's allowance"
            );
        }
        let wait = limiter.try_acquire(start).unwrap_err();
        assert!((wait.as_secs_f64() - 1.0).abs() < 0.01, "{wait:?}");
        assert_eq!(limiter.try_acquire(start + Duration::from_secs(1)), Ok(()));
        assert!(limiter.try_acquire(start + Duration::from_secs(1)).is_err());

        let mut slow = RateLimiter::per_minute(1, start);
        assert_eq!(slow.try_acquire(start), Ok(()), "capacity is at least one");
        assert!(slow.try_acquire(start + Duration::from_secs(59)).is_err());
        assert_eq!(slow.try_acquire(start + Duration::from_secs(60)), Ok(()));
    }

    #[test]
    fn long_run_rate_matches_the_limit() {
        let start = Instant::now();
        let mut limiter = RateLimiter::per_minute(600, start);
        let mut sent = 0;
        let mut now = start;
        while now < start + Duration::from_secs(60) {
            match limiter.try_acquire(now) {
                Ok(()) => sent += 1,
                Err(wait) => now += wait,
            }
        }
        // 600 per minute plus the initial burst of 60.
        assert!((600..=661).contains(&sent), "{sent}");
    }

    #[test]
    fn refills_to_full() {
        let start = Instant::now();
        let mut limiter = RateLimiter::per_minute(6, start);
        limiter.try_acquire(start).unwrap();
        assert!(!limiter.is_full(start));
        assert!(limiter.is_full(start + Duration::from_secs(10)));
    }
}
