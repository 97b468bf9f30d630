//! Leader election through a `coordination.k8s.io/v1` Lease.
//!
//! One replica holds the Lease and runs the controllers; the others poll it and take
//! over once it expires. The rules (what to do given the Lease, the time and my identity)
//! live in pure functions at the top of this file; [`LeaderElector`] only reads and
//! writes the Lease.
//!
//! Safety rests on three timings (checked by [`ElectionTiming`]): a leader that cannot
//! renew for `renew_deadline` steps down, and nobody takes the Lease over before
//! `lease_duration` has passed since its last renewal. The gap between the two absorbs
//! the request latency and clock skew between replicas: expiry compares the `renewTime`
//! written by the holder's clock with the reader's clock, as the Lease API intends, so
//! node clocks must be synchronised to well under `lease_duration - renew_deadline`.
//!
//! Writes use optimistic concurrency: every update carries the `resourceVersion` just
//! read, so two standbys racing for an expired Lease cannot both win; the loser gets a
//! 409, re-reads, and sees the new holder.
//!
//! When leadership is lost the process runtime stops the controllers and exits (see
//! `run`): a restarted process starts clean as a standby, with no half-stopped
//! controller state to reason about.

use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use thiserror::Error;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::cli::ElectionTiming;

/// Who competes for which Lease, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderConfig {
    /// Name of the Lease object.
    pub lease_name: String,
    /// This replica's `holderIdentity`; unique among replicas.
    pub identity: String,
    /// Durations, already validated.
    pub timing: ElectionTiming,
}

/// What to do after reading the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// There is no Lease yet: create it, naming me.
    Create,
    /// The Lease is free (released, or expired under another holder): take it over.
    Acquire,
    /// I hold the Lease: renew it.
    Renew,
    /// Another replica holds a valid Lease: do not touch it.
    Wait {
        /// The current holder.
        holder: String,
        /// When the Lease expires unless renewed.
        expires: Timestamp,
    },
}

/// Decides what to do with the Lease as read at `now`.
///
/// A Lease without `leaseDurationSeconds` is judged with `default_duration`; one with a
/// holder but no `renewTime` (nor `acquireTime`) cannot prove it is alive and counts as
/// expired.
pub fn decide(
    lease: Option<&LeaseSpec>,
    identity: &str,
    now: Timestamp,
    default_duration: Duration,
) -> Decision {
    let Some(spec) = lease else {
        return Decision::Create;
    };
    let holder = spec
        .holder_identity
        .as_deref()
        .map(str::trim)
        .unwrap_or_default();
    if holder.is_empty() {
        return Decision::Acquire;
    }
    if holder == identity {
        return Decision::Renew;
    }
    match expiry(spec, default_duration) {
        Some(expires) if expires >= now => Decision::Wait {
            holder: holder.to_owned(),
            expires,
        },
        _ => Decision::Acquire,
    }
}

/// When the Lease expires: last renewal (or acquisition) plus its duration.
fn expiry(spec: &LeaseSpec, default_duration: Duration) -> Option<Timestamp> {
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    let seconds = match spec.lease_duration_seconds {
        Some(seconds) => i64::from(seconds.max(0)),
        None => i64::try_from(default_duration.as_secs()).unwrap_or(i64::MAX),
    };
    let micros = renewed
        .as_microsecond()
        .saturating_add(seconds.saturating_mul(1_000_000));
    Some(Timestamp::from_microsecond(micros).unwrap_or(Timestamp::MAX))
}

/// The Lease spec to write for `decision`, or `None` when nothing is to be written.
///
/// `leaseTransitions` counts changes of holder: it grows by one when I take over from
/// someone else (or from nobody after a release), and stays when I create or renew.
pub fn desired_spec(
    decision: &Decision,
    current: Option<&LeaseSpec>,
    identity: &str,
    now: Timestamp,
    lease_duration: Duration,
) -> Option<LeaseSpec> {
    let transitions = current.and_then(|s| s.lease_transitions).unwrap_or(0);
    let (acquire_time, transitions) = match decision {
        Decision::Wait { .. } => return None,
        Decision::Create => (now, 0),
        Decision::Acquire => (now, transitions.saturating_add(1)),
        Decision::Renew => (
            current
                .and_then(|s| s.acquire_time.as_ref())
                .map_or(now, |t| t.0),
            transitions,
        ),
    };
    Some(LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(duration_seconds(lease_duration)),
        acquire_time: Some(MicroTime(acquire_time)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    })
}

/// The spec that hands the Lease back on graceful shutdown: no holder and a one-second
/// duration, so that a standby acquires it on its next poll instead of waiting for the
/// full lease duration.
pub fn released_spec(current: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        acquire_time: current.acquire_time.clone(),
        renew_time: Some(MicroTime(now)),
        lease_transitions: current.lease_transitions,
        ..LeaseSpec::default()
    }
}

fn duration_seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// How one round (read, decide, write) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundOutcome {
    /// I hold the Lease: created, acquired or renewed just now.
    Holding,
    /// Another replica holds a valid Lease.
    Waiting,
    /// Every write lost a race (409) even after re-reading.
    Conflict,
    /// The API server could not be reached or refused the request, or the round timed out.
    Failed,
}

/// Whether I lead after a round. A leader that could not renew keeps leading only until
/// `renew_deadline` has passed since its last successful renewal; seeing another holder
/// ends leadership at once.
pub fn leading_after(
    leading_before: bool,
    outcome: RoundOutcome,
    since_last_renew: Option<Duration>,
    renew_deadline: Duration,
) -> bool {
    match outcome {
        RoundOutcome::Holding => true,
        RoundOutcome::Waiting => false,
        RoundOutcome::Conflict | RoundOutcome::Failed => {
            leading_before && since_last_renew.is_some_and(|since| since < renew_deadline)
        }
    }
}

/// How long a round may take: a leader must finish before its renew deadline, a standby
/// within one renew deadline (so that a hung request cannot freeze the loop).
pub fn round_timeout(
    leading: bool,
    since_last_renew: Option<Duration>,
    renew_deadline: Duration,
) -> Duration {
    match (leading, since_last_renew) {
        (true, Some(since)) => renew_deadline.saturating_sub(since),
        _ => renew_deadline,
    }
}

/// The current wall-clock time as the Lease API stores it (microseconds).
pub fn now() -> Timestamp {
    let micros = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    Timestamp::from_microsecond(micros).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// A Lease request failed.
#[derive(Debug, Error)]
pub enum LeaderError {
    /// The API server refused or could not be reached.
    #[error("lease {lease:?}: {source}")]
    Kube {
        /// Lease name.
        lease: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

/// Election status published to the rest of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ElectionStatus {
    /// This replica holds the Lease.
    pub leading: bool,
    /// The last round reached the API server (a standby that can see the Lease is a
    /// healthy standby).
    pub healthy: bool,
}

/// Reads and writes one Lease on behalf of this replica.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaderConfig,
    leading: bool,
    /// Local monotonic time of the start of the last successful write, for the renew
    /// deadline (a wall clock could jump).
    last_renew: Option<Instant>,
    /// The Lease as last read or written, with its resourceVersion.
    lease: Option<Lease>,
}

/// Attempts per round; a 409 is retried at once after re-reading, but a Lease that keeps
/// changing under us should not make the loop spin.
const ATTEMPTS_PER_ROUND: usize = 3;

impl LeaderElector {
    /// An elector that has not run a round yet (not leading).
    pub fn new(api: Api<Lease>, config: LeaderConfig) -> Self {
        Self {
            api,
            config,
            leading: false,
            last_renew: None,
            lease: None,
        }
    }

    /// Whether the last round left this replica leading.
    pub fn is_leading(&self) -> bool {
        self.leading
    }

    /// One round: read the Lease, decide, write if needed; on a write conflict re-read
    /// and decide again. Updates [`Self::is_leading`].
    pub async fn try_acquire_or_renew(&mut self) -> Result<RoundOutcome, LeaderError> {
        let result = self.attempt_round().await;
        let outcome = match &result {
            Ok(outcome) => *outcome,
            Err(_) => RoundOutcome::Failed,
        };
        self.record(outcome);
        result
    }

    fn record(&mut self, outcome: RoundOutcome) {
        let since = self.last_renew.map(|at| at.elapsed());
        self.leading = leading_after(
            self.leading,
            outcome,
            since,
            self.config.timing.renew_deadline,
        );
        if !self.leading {
            self.last_renew = None;
        }
    }

    async fn attempt_round(&mut self) -> Result<RoundOutcome, LeaderError> {
        for _ in 0..ATTEMPTS_PER_ROUND {
            let current = self.api.get_opt(&self.config.lease_name).await;
            let current = current.map_err(|source| self.error(source))?;
            self.lease = current;
            let started = Instant::now();
            let now = now();
            // A Lease object without a spec exists but is free: judge it as an empty spec
            // (so it is taken over with an update, not re-created).
            let empty = LeaseSpec::default();
            let spec = self
                .lease
                .as_ref()
                .map(|l| l.spec.as_ref().unwrap_or(&empty));
            let decision = decide(
                spec,
                &self.config.identity,
                now,
                self.config.timing.lease_duration,
            );
            let Some(desired) = desired_spec(
                &decision,
                spec,
                &self.config.identity,
                now,
                self.config.timing.lease_duration,
            ) else {
                if let Decision::Wait { holder, expires } = &decision {
                    tracing::debug!(%holder, %expires, "lease held by another replica");
                }
                return Ok(RoundOutcome::Waiting);
            };
            match self.write(desired).await {
                Ok(written) => {
                    if !self.leading {
                        tracing::info!(
                            lease = %self.config.lease_name,
                            identity = %self.config.identity,
                            ?decision,
                            "acquired leader lease"
                        );
                    }
                    self.lease = Some(written);
                    self.last_renew = Some(started);
                    return Ok(RoundOutcome::Holding);
                }
                Err(kube::Error::Api(status))
                    if status.is_conflict() || status.is_already_exists() =>
                {
                    tracing::debug!(?decision, "lease changed while writing it; re-reading");
                }
                Err(source) => return Err(self.error(source)),
            }
        }
        Ok(RoundOutcome::Conflict)
    }

    /// Creates the Lease if none was read, else replaces the one read (with its
    /// resourceVersion, so that a concurrent change makes this fail with 409).
    async fn write(&self, spec: LeaseSpec) -> Result<Lease, kube::Error> {
        let pp = PostParams::default();
        match &self.lease {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.lease_name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&pp, &lease).await
            }
            Some(current) => {
                let mut lease = current.clone();
                lease.spec = Some(spec);
                self.api.replace(&self.config.lease_name, &pp, &lease).await
            }
        }
    }

    /// Hands the Lease back if this replica holds it, so that a standby takes over on its
    /// next poll. Re-reads on conflict; gives up quietly if someone else holds it by now.
    pub async fn release(&mut self) -> Result<(), LeaderError> {
        let was_leading = std::mem::replace(&mut self.leading, false);
        self.last_renew = None;
        if !was_leading {
            return Ok(());
        }
        for _ in 0..ATTEMPTS_PER_ROUND {
            let Some(mut lease) = self.lease.take() else {
                return Ok(());
            };
            let Some(spec) = lease.spec.as_ref() else {
                return Ok(());
            };
            if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
                return Ok(());
            }
            lease.spec = Some(released_spec(spec, now()));
            let written = self
                .api
                .replace(&self.config.lease_name, &PostParams::default(), &lease)
                .await;
            match written {
                Ok(released) => {
                    tracing::info!(lease = %self.config.lease_name, "released leader lease");
                    self.lease = Some(released);
                    return Ok(());
                }
                Err(kube::Error::Api(status)) if status.is_conflict() => {
                    let current = self.api.get_opt(&self.config.lease_name).await;
                    self.lease = current.map_err(|source| self.error(source))?;
                }
                Err(source) => return Err(self.error(source)),
            }
        }
        Ok(())
    }

    fn error(&self, source: kube::Error) -> LeaderError {
        LeaderError::Kube {
            lease: self.config.lease_name.clone(),
            source,
        }
    }

    /// Competes for the Lease until `shutdown` is cancelled, publishing every change of
    /// status on `status`; then releases the Lease if held.
    ///
    /// Never returns early on API errors: they are logged, reported as an unhealthy
    /// status, and retried. Losing leadership is only published; acting on it (stopping
    /// the controllers) is the caller's job.
    pub async fn run(mut self, status: watch::Sender<ElectionStatus>, shutdown: CancellationToken) {
        // Whatever ends this loop (a panic, the task being dropped), nobody renews the
        // Lease any more: report leadership as gone so the controllers stop.
        let _step_down = StepDownOnDrop(status.clone());
        let timing = self.config.timing;
        loop {
            let since = self.last_renew.map(|at| at.elapsed());
            let limit = round_timeout(self.leading, since, timing.renew_deadline);
            let round = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                round = tokio::time::timeout(limit, self.try_acquire_or_renew()) => round,
            };
            let healthy = match round {
                Ok(Ok(_)) => true,
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "leader election round failed");
                    false
                }
                Err(_) => {
                    self.record(RoundOutcome::Failed);
                    tracing::warn!(timeout = ?limit, "leader election round timed out");
                    false
                }
            };
            let next = ElectionStatus {
                leading: self.leading,
                healthy,
            };
            status.send_if_modified(|current| {
                if current.leading && !next.leading {
                    tracing::warn!(identity = %self.config.identity, "lost leadership");
                }
                std::mem::replace(current, next) != next
            });
            let pause = if self.leading {
                timing.retry_period
            } else {
                jittered(timing.retry_period)
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        // Bounded: a hung API server must not hold up the process exit; the Lease then
        // simply expires.
        match tokio::time::timeout(timing.renew_deadline, self.release()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(
                error = %err,
                "could not release the leader lease; a standby takes over once it expires"
            ),
            Err(_) => tracing::warn!(
                "releasing the leader lease timed out; a standby takes over once it expires"
            ),
        }
    }
}

struct StepDownOnDrop(watch::Sender<ElectionStatus>);

impl Drop for StepDownOnDrop {
    fn drop(&mut self) {
        self.0
            .send_if_modified(|s| std::mem::replace(&mut s.leading, false));
    }
}

/// Standbys spread their polls a little so that they do not all hit the API server (and
/// race for the Lease) at the same instant.
fn jittered(period: Duration) -> Duration {
    period.mul_f64(1.0 + rand::random_range(0.0..0.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DURATION: Duration = Duration::from_secs(15);

    fn ts(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    fn held(holder: &str, renewed: i64, duration: i32, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            lease_duration_seconds: Some(duration),
            acquire_time: Some(MicroTime(ts(renewed - 100))),
            renew_time: Some(MicroTime(ts(renewed))),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn absent_lease_is_created() {
        assert_eq!(decide(None, "me", ts(1000), DURATION), Decision::Create);
        let spec = desired_spec(&Decision::Create, None, "me", ts(1000), DURATION).unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.acquire_time, Some(MicroTime(ts(1000))));
        assert_eq!(spec.renew_time, Some(MicroTime(ts(1000))));
        assert_eq!(spec.lease_transitions, Some(0));
    }

    #[test]
    fn valid_lease_of_another_is_never_touched() {
        let lease = held("other", 1000, 15, 3);
        for now in [1000, 1010, 1015] {
            assert_eq!(
                decide(Some(&lease), "me", ts(now), DURATION),
                Decision::Wait {
                    holder: "other".into(),
                    expires: ts(1015)
                },
                "at {now}"
            );
        }
        let wait = decide(Some(&lease), "me", ts(1001), DURATION);
        assert_eq!(
            desired_spec(&wait, Some(&lease), "me", ts(1001), DURATION),
            None
        );
    }

    #[test]
    fn expired_lease_of_another_is_taken_over() {
        let lease = held("other", 1000, 15, 3);
        let now = Timestamp::from_microsecond(1_015_000_001).unwrap();
        let decision = decide(Some(&lease), "me", now, DURATION);
        assert_eq!(decision, Decision::Acquire);
        let spec = desired_spec(&decision, Some(&lease), "me", now, DURATION).unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.acquire_time, Some(MicroTime(now)));
        assert_eq!(spec.renew_time, Some(MicroTime(now)));
    }

    #[test]
    fn lease_duration_of_the_lease_wins_over_mine() {
        // The holder promised 60 s; my shorter default must not shorten its tenure.
        let lease = held("other", 1000, 60, 0);
        assert!(matches!(
            decide(Some(&lease), "me", ts(1030), DURATION),
            Decision::Wait { .. }
        ));
        let mut no_duration = lease.clone();
        no_duration.lease_duration_seconds = None;
        assert_eq!(
            decide(Some(&no_duration), "me", ts(1030), DURATION),
            Decision::Acquire
        );
    }

    #[test]
    fn released_or_unrenewed_lease_is_free() {
        let released = released_spec(&held("other", 1000, 15, 2), ts(1001));
        assert_eq!(released.holder_identity, None);
        assert_eq!(released.lease_duration_seconds, Some(1));
        assert_eq!(released.lease_transitions, Some(2));
        assert_eq!(
            decide(Some(&released), "me", ts(1001), DURATION),
            Decision::Acquire
        );
        let spec = desired_spec(
            &Decision::Acquire,
            Some(&released),
            "me",
            ts(1001),
            DURATION,
        )
        .unwrap();
        assert_eq!(spec.lease_transitions, Some(3));

        let empty_holder = LeaseSpec {
            holder_identity: Some(String::new()),
            ..held("x", 1000, 15, 0)
        };
        assert_eq!(
            decide(Some(&empty_holder), "me", ts(1001), DURATION),
            Decision::Acquire
        );
        let never_renewed = LeaseSpec {
            holder_identity: Some("other".into()),
            ..LeaseSpec::default()
        };
        assert_eq!(
            decide(Some(&never_renewed), "me", ts(1001), DURATION),
            Decision::Acquire
        );
    }

    #[test]
    fn my_lease_is_renewed_keeping_acquire_time_and_transitions() {
        let lease = held("me", 1000, 15, 7);
        for now in [1005, 1100] {
            let decision = decide(Some(&lease), "me", ts(now), DURATION);
            assert_eq!(decision, Decision::Renew);
            let spec = desired_spec(&decision, Some(&lease), "me", ts(now), DURATION).unwrap();
            assert_eq!(spec.renew_time, Some(MicroTime(ts(now))));
            assert_eq!(spec.acquire_time, Some(MicroTime(ts(900))));
            assert_eq!(spec.lease_transitions, Some(7));
        }
    }

    #[test]
    fn conflict_keeps_a_leader_only_until_its_renew_deadline() {
        let deadline = Duration::from_secs(10);
        let within = Some(Duration::from_secs(3));
        let past = Some(Duration::from_secs(10));
        assert!(leading_after(
            true,
            RoundOutcome::Conflict,
            within,
            deadline
        ));
        assert!(!leading_after(true, RoundOutcome::Conflict, past, deadline));
        assert!(!leading_after(
            false,
            RoundOutcome::Conflict,
            within,
            deadline
        ));
        assert!(leading_after(true, RoundOutcome::Failed, within, deadline));
        assert!(!leading_after(true, RoundOutcome::Failed, past, deadline));
        assert!(!leading_after(true, RoundOutcome::Failed, None, deadline));
        // The re-read after a conflict shows the new holder: leadership ends at once.
        assert!(!leading_after(
            true,
            RoundOutcome::Waiting,
            within,
            deadline
        ));
        assert!(leading_after(false, RoundOutcome::Holding, None, deadline));
    }

    #[test]
    fn conflict_reread_showing_a_new_holder_means_wait() {
        // I read the Lease expired and tried to take it over; the 409 told me someone
        // was faster. The re-read shows their fresh renewal: I must wait.
        let before = held("old", 1000, 15, 1);
        assert_eq!(
            decide(Some(&before), "me", ts(1020), DURATION),
            Decision::Acquire
        );
        let after = held("faster", 1020, 15, 2);
        assert!(matches!(
            decide(Some(&after), "me", ts(1020), DURATION),
            Decision::Wait { ref holder, .. } if holder == "faster"
        ));
    }

    #[test]
    fn round_timeout_ends_at_the_renew_deadline() {
        let deadline = Duration::from_secs(10);
        assert_eq!(
            round_timeout(true, Some(Duration::from_secs(4)), deadline),
            Duration::from_secs(6)
        );
        assert_eq!(
            round_timeout(true, Some(Duration::from_secs(12)), deadline),
            Duration::ZERO
        );
        assert_eq!(round_timeout(false, None, deadline), deadline);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let period = Duration::from_secs(2);
        for _ in 0..100 {
            let pause = jittered(period);
            assert!(pause >= period && pause < period.mul_f64(1.2), "{pause:?}");
        }
    }
}
