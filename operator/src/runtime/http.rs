//! The operator's HTTP endpoint: `/metrics`, `/healthz`, `/readyz`.
//!
//! Probe semantics, chosen for a Deployment with several replicas of which one leads:
//!
//! - `/healthz` (liveness) answers 200 as long as the process serves HTTP and no main
//!   loop has reported a fatal failure. The main loops (leader election, controllers)
//!   end the process when they stop, so a dead loop never lingers behind a green probe;
//!   [`Health::set_failed`] covers the shutdown window in between.
//! - `/readyz` (readiness) answers 200 on the leader once the controllers have reported
//!   their caches synced, and on a standby while its leader election is healthy (it can
//!   read the Lease). Standbys are Ready on purpose: a rolling update waits for new pods
//!   to become Ready before it removes old ones, and the new pods cannot lead while an
//!   old one holds the Lease, so an unready standby would stall every rollout. Without
//!   leader election, ready means caches synced.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::leader::ElectionStatus;
use super::metrics::{self, Metrics};

/// The HTTP server could not start or stopped with an I/O error.
#[derive(Debug, Error)]
pub enum HttpError {
    /// Binding `--http-addr` failed (port in use, permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address given.
        addr: SocketAddr,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// Accepting or serving connections failed.
    #[error("HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Shared process health, written by the runtime and the controllers, read by the
/// probes. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<HealthState>,
}

#[derive(Debug)]
struct HealthState {
    leader_election: bool,
    synced: AtomicBool,
    /// The single source of truth for leadership: the elector publishes here and the
    /// runtime waits on it, so the probes never lag behind what the runtime acts on.
    election: watch::Sender<ElectionStatus>,
    failure: Mutex<Option<String>>,
}

/// A copy of the health flags at one instant; input of the probe decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSnapshot {
    /// Whether leader election is on.
    pub leader_election: bool,
    /// Controllers reported their caches synced.
    pub synced: bool,
    /// This replica holds the Lease.
    pub leading: bool,
    /// The last leader election round reached the API server.
    pub election_healthy: bool,
    /// A main loop failed fatally.
    pub failure: Option<String>,
}

impl Health {
    /// Fresh state: not synced, no failure; with leader election not leading and not
    /// yet healthy, without it leading from the start.
    pub fn new(leader_election: bool) -> Self {
        let without_election = !leader_election;
        Self {
            inner: Arc::new(HealthState {
                leader_election,
                synced: AtomicBool::new(false),
                election: watch::Sender::new(ElectionStatus {
                    leading: without_election,
                    healthy: without_election,
                }),
                failure: Mutex::new(None),
            }),
        }
    }

    /// Controllers call this with `true` once their watches have listed everything
    /// (kube-runtime `Store::wait_until_ready`).
    pub fn set_ready(&self, synced: bool) {
        self.inner.synced.store(synced, Ordering::SeqCst);
    }

    /// Leader election reports whether this replica holds the Lease.
    pub fn set_leading(&self, leading: bool) {
        self.inner
            .election
            .send_if_modified(|s| std::mem::replace(&mut s.leading, leading) != leading);
    }

    /// Leader election reports whether its last round reached the API server.
    pub fn set_election_healthy(&self, healthy: bool) {
        self.inner
            .election
            .send_if_modified(|s| std::mem::replace(&mut s.healthy, healthy) != healthy);
    }

    /// Where [`LeaderElector::run`](super::leader::LeaderElector::run) publishes.
    pub fn election_publisher(&self) -> watch::Sender<ElectionStatus> {
        self.inner.election.clone()
    }

    /// Follows the election status (the runtime starts and stops controllers on it).
    pub fn watch_election(&self) -> watch::Receiver<ElectionStatus> {
        self.inner.election.subscribe()
    }

    /// Marks the process as failed: liveness fails from now on. The first reason wins.
    pub fn set_failed(&self, reason: impl Into<String>) {
        let mut failure = self
            .inner
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        failure.get_or_insert_with(|| reason.into());
    }

    /// The current flags.
    pub fn snapshot(&self) -> HealthSnapshot {
        let election = *self.inner.election.borrow();
        HealthSnapshot {
            leader_election: self.inner.leader_election,
            synced: self.inner.synced.load(Ordering::SeqCst),
            leading: election.leading,
            election_healthy: election.healthy,
            failure: self
                .inner
                .failure
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
}

/// Liveness decision: `Err` carries the reason shown in the probe's body.
pub fn liveness(health: &HealthSnapshot) -> Result<(), String> {
    match &health.failure {
        Some(reason) => Err(reason.clone()),
        None => Ok(()),
    }
}

/// Readiness decision (see the module docs for why standbys are Ready).
///
/// Controllers run only while this replica leads (or without election), so synced
/// caches are enough on their own: readiness does not wait for the leadership flag,
/// which reaches [`Health`] a moment after the controllers may already have started.
pub fn readiness(health: &HealthSnapshot) -> Result<(), String> {
    liveness(health)?;
    let standing_by = health.leader_election && !health.leading;
    match (health.synced, standing_by, health.election_healthy) {
        (true, _, _) | (false, true, true) => Ok(()),
        (false, false, _) => Err("controllers have not synced their caches yet".to_owned()),
        (false, true, false) => {
            Err("standing by, but the leader Lease could not be read".to_owned())
        }
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Health,
}

/// The routes, without a listener (useful to embed or to test in process).
pub fn router(metrics: Metrics, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(serve_healthz))
        .route("/readyz", get(serve_readyz))
        .with_state(AppState { metrics, health })
}

/// Binds the listener early, so that a bad `--http-addr` fails the start-up rather than
/// a background task.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })
}

/// Serves until `shutdown` is cancelled, then finishes in-flight requests and returns.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(), HttpError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    }
    axum::serve(listener, router(metrics, health))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(HttpError::Serve)
}

async fn serve_metrics(State(state): State<AppState>) -> Response {
    // Set at scrape time from the one source of truth rather than copied on every change.
    state.metrics.set_leader(state.health.snapshot().leading);
    match state.metrics.encode() {
        Ok(body) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "cannot encode metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response()
        }
    }
}

async fn serve_healthz(State(state): State<AppState>) -> Response {
    probe(liveness(&state.health.snapshot()))
}

async fn serve_readyz(State(state): State<AppState>) -> Response {
    probe(readiness(&state.health.snapshot()))
}

fn probe(decision: Result<(), String>) -> Response {
    match decision {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(
        leader_election: bool,
        synced: bool,
        leading: bool,
        healthy: bool,
    ) -> HealthSnapshot {
        HealthSnapshot {
            leader_election,
            synced,
            leading,
            election_healthy: healthy,
            failure: None,
        }
    }

    #[test]
    fn without_election_ready_means_synced() {
        assert!(readiness(&snapshot(false, false, false, false)).is_err());
        assert!(readiness(&snapshot(false, true, false, false)).is_ok());
    }

    #[test]
    fn leader_is_ready_once_synced() {
        assert!(readiness(&snapshot(true, false, true, true)).is_err());
        assert!(readiness(&snapshot(true, true, true, true)).is_ok());
        // Controllers synced before the leadership flag was published.
        assert!(readiness(&snapshot(true, true, false, false)).is_ok());
    }

    #[test]
    fn standby_is_ready_while_its_election_is_healthy() {
        assert!(readiness(&snapshot(true, false, false, true)).is_ok());
        assert!(readiness(&snapshot(true, false, false, false)).is_err());
    }

    #[test]
    fn failure_fails_both_probes() {
        let health = Health::new(false);
        health.set_ready(true);
        assert!(liveness(&health.snapshot()).is_ok());
        health.set_failed("controllers stopped");
        health.set_failed("second reason is ignored");
        let snap = health.snapshot();
        assert_eq!(liveness(&snap), Err("controllers stopped".to_owned()));
        assert!(readiness(&snap).is_err());
    }
}
