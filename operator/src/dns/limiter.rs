//! How fast and how often DNS is asked.
//!
//! [`QueryLimiter`] is one token bucket shared by every MailDomain check in the process,
//! so a thousand domains rechecking at once queue up behind the configured query rate
//! instead of flooding the resolver. [`next_check_delay`] (pure) decides when a domain is
//! checked again.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// A global DNS query-rate limit (generic cell rate algorithm: a token bucket kept as one
/// "theoretical arrival time").
///
/// Every [`acquire`](Self::acquire) reserves the next free slot before it sleeps, so
/// concurrent callers are served in order without retry loops, and in any window of
/// length `w` at most `burst + w × rate` lookups start. A lookup is one question to the
/// resolver; the resolver's own retries after a timeout (and, with several nameservers,
/// its parallel requests) are not counted separately.
#[derive(Debug)]
pub struct QueryLimiter {
    /// `None`: unlimited.
    interval: Option<Duration>,
    /// How far ahead of the steady rate a caller may run (`(burst - 1) × interval`).
    tolerance: Duration,
    tat: Mutex<Option<Instant>>,
    /// The end of the last [`book`](Self::book)ed turn.
    booked: Mutex<Option<Instant>>,
    acquired: AtomicU64,
}

impl QueryLimiter {
    /// `queries_per_second == 0` means no limit. Bursts of one: queries are spread evenly.
    pub fn new(queries_per_second: u32) -> Self {
        Self::with_burst(queries_per_second, 1)
    }

    /// Allows `burst` queries back to back after an idle period.
    pub fn with_burst(queries_per_second: u32, burst: u32) -> Self {
        let interval =
            (queries_per_second > 0).then(|| Duration::from_secs(1) / queries_per_second);
        let tolerance = interval
            .map(|i| i * burst.saturating_sub(1))
            .unwrap_or_default();
        Self {
            interval,
            tolerance,
            tat: Mutex::new(None),
            booked: Mutex::new(None),
            acquired: AtomicU64::new(0),
        }
    }

    pub fn unlimited() -> Self {
        Self::new(0)
    }

    /// Waits until one more query may be sent.
    pub async fn acquire(&self) {
        self.acquired.fetch_add(1, Ordering::Relaxed);
        let Some(interval) = self.interval else {
            return;
        };
        let now = Instant::now();
        let start_at = {
            // The lock is held only for arithmetic; a poisoned lock still holds a valid
            // instant, so keep using it.
            let mut tat = self.tat.lock().unwrap_or_else(|e| e.into_inner());
            let arrival = tat.map_or(now, |t| t.max(now));
            *tat = Some(arrival + interval);
            arrival
                .checked_sub(self.tolerance)
                .map_or(now, |t| t.max(now))
        };
        if start_at > now {
            tokio::time::sleep_until(start_at).await;
        }
    }

    /// How long a lookup asked for now would wait for its turn, counting the turns
    /// already [`book`](Self::book)ed.
    pub fn backlog(&self) -> Duration {
        let now = Instant::now();
        let tat = *self.tat.lock().unwrap_or_else(|e| e.into_inner());
        let booked = *self.booked.lock().unwrap_or_else(|e| e.into_inner());
        turn_start(now, tat, self.tolerance, booked) - now
    }

    /// Books the turn of a check of `queries` lookups that should not wait for it in
    /// memory: returns when it may start, and moves the next booking past it at the
    /// configured rate. A booking takes no slot: the lookups still
    /// [`acquire`](Self::acquire) theirs, so the rate holds even when a booked check
    /// runs late.
    pub fn book(&self, queries: u32) -> Instant {
        let now = Instant::now();
        let Some(interval) = self.interval else {
            return now;
        };
        let tat = *self.tat.lock().unwrap_or_else(|e| e.into_inner());
        let mut booked = self.booked.lock().unwrap_or_else(|e| e.into_inner());
        let start = turn_start(now, tat, self.tolerance, *booked);
        *booked = Some(start + interval * queries.max(1));
        start
    }

    /// Queries let through so far (for metrics and the benchmark).
    pub fn acquired(&self) -> u64 {
        self.acquired.load(Ordering::Relaxed)
    }
}

/// When the next turn starts: now, or once the queries already let through and the turns
/// already booked have had their slots, whichever is later. `tat` is the limiter's
/// theoretical arrival time, `tolerance` its burst allowance.
fn turn_start(
    now: Instant,
    tat: Option<Instant>,
    tolerance: Duration,
    booked: Option<Instant>,
) -> Instant {
    let free = tat
        .and_then(|t| t.checked_sub(tolerance))
        .map_or(now, |t| t.max(now));
    booked.map_or(free, |b| b.max(free))
}

/// When to check a domain again.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckSchedule {
    /// Between checks of a domain whose required records all match.
    pub verified_interval: Duration,
    /// Between checks while something is missing or wrong: the user is probably editing
    /// DNS right now and wants to see the result soon.
    pub unverified_interval: Duration,
    /// Spread of the interval (0.1: ±10 %), so domains created together drift apart.
    pub jitter: f64,
    /// While unverified, the longest a TTL may push the next check out: a day-long
    /// negative TTL on a missing record should not hide the fix for a day.
    pub unverified_max_ttl_wait: Duration,
    /// While verified, the longest a TTL may push the next check out: records with
    /// day-long TTLs must not hide a breakage for a day either.
    pub verified_max_ttl_wait: Duration,
    pub min_interval: Duration,
    pub max_interval: Duration,
}

impl Default for CheckSchedule {
    fn default() -> Self {
        Self {
            // A broken record of a verified domain shows within 11 minutes (10 plus the
            // jitter), 15 at most when its TTL is longer.
            verified_interval: Duration::from_secs(600),
            unverified_interval: Duration::from_secs(60),
            jitter: 0.1,
            unverified_max_ttl_wait: Duration::from_secs(900),
            verified_max_ttl_wait: Duration::from_secs(900),
            min_interval: Duration::from_secs(10),
            max_interval: Duration::from_secs(6 * 3600),
        }
    }
}

/// The delay before the next check: the state's interval with jitter, but never earlier
/// than the shortest TTL seen (an earlier check would only see cached answers), within
/// the bounds. `jitter_sample` is uniform in `[0, 1)` (the caller's randomness, so this
/// stays pure).
pub fn next_check_delay(
    schedule: &CheckSchedule,
    verified: bool,
    shortest_ttl: Option<u32>,
    jitter_sample: f64,
) -> Duration {
    let base = if verified {
        schedule.verified_interval
    } else {
        schedule.unverified_interval
    };
    let factor =
        1.0 + schedule.jitter.clamp(0.0, 1.0) * (2.0 * jitter_sample.clamp(0.0, 1.0) - 1.0);
    let jittered = base.mul_f64(factor.max(0.0));
    let ttl_cap = if verified {
        schedule.verified_max_ttl_wait
    } else {
        schedule.unverified_max_ttl_wait
    };
    let ttl_floor = shortest_ttl
        .map(|t| Duration::from_secs(u64::from(t)).min(ttl_cap))
        .unwrap_or_default();
    jittered.max(ttl_floor).clamp(
        schedule.min_interval,
        schedule.max_interval.max(schedule.min_interval),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_intervals_jitter_and_ttl() {
        let s = CheckSchedule::default();
        assert_eq!(
            next_check_delay(&s, true, None, 0.5),
            Duration::from_secs(600)
        );
        assert_eq!(
            next_check_delay(&s, true, None, 0.0),
            Duration::from_secs(540)
        );
        assert_eq!(
            next_check_delay(&s, false, None, 0.5),
            Duration::from_secs(60)
        );
        let high = next_check_delay(&s, false, None, 0.999_999);
        assert!(high > Duration::from_secs(65) && high <= Duration::from_secs(66));
        // Unverified is faster, but never earlier than the TTL...
        assert_eq!(
            next_check_delay(&s, false, Some(300), 0.5),
            Duration::from_secs(300)
        );
        // ...up to the cap.
        assert_eq!(
            next_check_delay(&s, false, Some(86_400), 0.5),
            Duration::from_secs(900)
        );
        // Verified: long TTLs push out, but a breakage still shows within 15 minutes.
        assert_eq!(
            next_check_delay(&s, true, Some(86_400), 0.5),
            Duration::from_secs(900)
        );
        assert_eq!(
            next_check_delay(&s, true, Some(720), 0.5),
            Duration::from_secs(720)
        );
        // A user-set pace is followed.
        let hourly = CheckSchedule {
            verified_interval: Duration::from_secs(3600),
            ..CheckSchedule::default()
        };
        assert_eq!(
            next_check_delay(&hourly, true, Some(60), 0.5),
            Duration::from_secs(3600)
        );
        // Lower bound.
        let fast = CheckSchedule {
            unverified_interval: Duration::from_secs(1),
            ..CheckSchedule::default()
        };
        assert_eq!(
            next_check_delay(&fast, false, Some(0), 0.5),
            Duration::from_secs(10)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_spreads_queries_at_the_rate() {
        let limiter = std::sync::Arc::new(QueryLimiter::new(50));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let l = limiter.clone();
            tasks.push(tokio::spawn(async move {
                l.acquire().await;
                Instant::now()
            }));
        }
        let mut times = Vec::new();
        for t in tasks {
            times.push(t.await.unwrap() - start);
        }
        times.sort();
        // 100 queries at 50 qps, burst 1: the last starts 99 intervals (1.98 s) in.
        assert_eq!(times[0], Duration::ZERO);
        assert_eq!(times[99], Duration::from_millis(1980));
        // No 1-second window holds more than 50 starts.
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..]
                .iter()
                .take_while(|u| **u < *t + Duration::from_secs(1))
                .count();
            assert!(in_window <= 50, "{in_window} queries within 1 s of {t:?}");
        }
        assert_eq!(limiter.acquired(), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_burst_and_idle_refill() {
        let limiter = QueryLimiter::with_burst(10, 5);
        let start = Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        assert_eq!(
            Instant::now() - start,
            Duration::ZERO,
            "burst of 5 is immediate"
        );
        limiter.acquire().await;
        assert_eq!(Instant::now() - start, Duration::from_millis(100));
        tokio::time::sleep(Duration::from_secs(10)).await;
        let idle = Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        assert_eq!(
            Instant::now() - idle,
            Duration::ZERO,
            "bucket refilled while idle"
        );
    }

    #[test]
    fn turn_start_table() {
        let now = Instant::now();
        let s = Duration::from_secs;
        // (tat, tolerance, booked) -> start
        let cases = [
            (None, s(0), None, now),
            (Some(now - s(5)), s(0), None, now),
            (Some(now + s(3)), s(0), None, now + s(3)),
            (Some(now + s(3)), s(1), None, now + s(2)),
            (Some(now + s(3)), s(5), None, now),
            (Some(now + s(3)), s(0), Some(now + s(10)), now + s(10)),
            (Some(now + s(10)), s(0), Some(now + s(3)), now + s(10)),
            (None, s(0), Some(now - s(1)), now),
        ];
        for (tat, tolerance, booked, want) in cases {
            assert_eq!(
                turn_start(now, tat, tolerance, booked),
                want,
                "{tat:?} {tolerance:?} {booked:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn bookings_are_spaced_at_the_rate_and_count_as_backlog() {
        let limiter = QueryLimiter::new(20);
        let start = Instant::now();
        assert_eq!(limiter.backlog(), Duration::ZERO);
        // Three checks of 5 lookups: 250 ms apart at 20 queries/s.
        assert_eq!(limiter.book(5), start);
        assert_eq!(limiter.book(5), start + Duration::from_millis(250));
        assert_eq!(limiter.book(5), start + Duration::from_millis(500));
        assert_eq!(limiter.backlog(), Duration::from_millis(750));
        // Lookups let through push bookings out too.
        for _ in 0..40 {
            limiter.acquire().await;
        }
        assert_eq!(Instant::now() - start, Duration::from_millis(1950));
        assert_eq!(limiter.book(1), start + Duration::from_secs(2));
        // Bookings take no slot: a lookup asked now is not held by them.
        let before = Instant::now();
        limiter.acquire().await;
        assert_eq!(Instant::now() - before, Duration::from_millis(50));
        // Unlimited: every turn is now.
        let free = QueryLimiter::unlimited();
        assert_eq!(free.book(100), Instant::now());
        assert_eq!(free.backlog(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_never_waits() {
        let limiter = QueryLimiter::unlimited();
        let start = Instant::now();
        for _ in 0..1000 {
            limiter.acquire().await;
        }
        assert_eq!(Instant::now() - start, Duration::ZERO);
    }
}
