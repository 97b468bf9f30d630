//! What the RelayPool reconciler needs from the process: a client, an event publisher,
//! a metrics hook and its settings.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio_util::sync::CancellationToken;

use super::backoff::FailureTracker;
use super::metrics::PoolMetrics;
use crate::runtime::metrics::{ReconcileMetrics, ReconcileTimer};

/// Name of this controller in metrics and logs.
pub const CONTROLLER_NAME: &str = "relaypool";

/// How often a healthy pool is reconciled again without any change: catches drift
/// in objects the controller does not watch and refreshes the status.
pub const DEFAULT_REQUEUE: Duration = Duration::from_secs(5 * 60);

/// Receives the outcome of every reconciliation, for metrics.
///
/// A trait rather than a concrete metrics type so that the reconciler tests need no
/// registry; the process runtime's [`ReconcileMetrics`] implements it below.
pub trait ReconcileObserver: Send + Sync {
    /// A reconciliation starts; the span is finished when it ends (dropping it
    /// unfinished means the reconciliation was cancelled).
    fn start(&self) -> Box<dyn ReconcileSpan>;
    /// A reconciliation failed with an error of `category` (see `Error::category`).
    fn error(&self, category: &'static str);
}

/// One reconciliation in progress, as seen by a [`ReconcileObserver`].
pub trait ReconcileSpan: Send {
    /// Records how the reconciliation ended.
    fn finish(self: Box<Self>, success: bool);
}

/// An observer that records nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoMetrics;

struct NoSpan;

impl ReconcileSpan for NoSpan {
    fn finish(self: Box<Self>, _success: bool) {}
}

impl ReconcileObserver for NoMetrics {
    fn start(&self) -> Box<dyn ReconcileSpan> {
        Box::new(NoSpan)
    }
    fn error(&self, _category: &'static str) {}
}

impl ReconcileObserver for ReconcileMetrics {
    fn start(&self) -> Box<dyn ReconcileSpan> {
        Box::new(ReconcileMetrics::start(self, CONTROLLER_NAME))
    }
    fn error(&self, category: &'static str) {
        ReconcileMetrics::error(self, CONTROLLER_NAME, category);
    }
}

impl ReconcileSpan for ReconcileTimer {
    fn finish(self: Box<Self>, success: bool) {
        if success {
            (*self).success();
        } else {
            (*self).failure();
        }
    }
}

/// Settings of the RelayPool controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Namespaces to watch; empty means all namespaces.
    pub namespaces: Vec<String>,
    /// Requeue interval of a healthy pool.
    pub requeue_after: Duration,
    /// smtp-node image used when a pool does not name one.
    pub default_image: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            requeue_after: DEFAULT_REQUEUE,
            default_image: default_image(),
        }
    }
}

/// The smtp-node image released with this operator.
pub fn default_image() -> String {
    crate::runtime::cli::DEFAULT_NODE_IMAGE.to_owned()
}

/// Shared state of all reconciliations. Cheap to share behind an `Arc`.
pub struct Context {
    /// Client for the API server.
    pub client: Client,
    /// Publishes the Events of all pools (see [`crate::events`]).
    pub events: crate::events::Publisher,
    /// Metrics hook.
    pub observer: Arc<dyn ReconcileObserver>,
    /// Per-pool gauges, recorded from the status the reconciler writes.
    pub pool_metrics: PoolMetrics,
    /// Controller settings.
    pub settings: Settings,
    /// Consecutive failures per pool, for the error policy's backoff.
    pub failures: FailureTracker,
    /// Cancelled when the controller must stop; `run` then returns.
    pub shutdown: CancellationToken,
    /// Called once the RelayPool caches have listed everything (for readiness).
    pub on_synced: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl Context {
    /// A context with the operator's event publisher, no failures recorded, a fresh
    /// shutdown token and no sync hook.
    pub fn new(client: Client, observer: Arc<dyn ReconcileObserver>, settings: Settings) -> Self {
        Self {
            events: crate::events::Publisher::new(client.clone(), crate::events::reporter()),
            client,
            observer,
            pool_metrics: PoolMetrics::default(),
            settings,
            failures: FailureTracker::default(),
            shutdown: CancellationToken::new(),
            on_synced: None,
        }
    }

    /// The context for a controller started by the process runtime: its client,
    /// metrics, watched namespaces, node image and shutdown token. Readiness is reported
    /// through the runtime's health once the caches are synced.
    pub fn from_runtime(runtime: &crate::runtime::Context) -> Self {
        let settings = Settings {
            namespaces: runtime.namespaces.clone(),
            requeue_after: DEFAULT_REQUEUE,
            default_image: runtime.node_image.clone(),
        };
        let health = runtime.health.clone();
        Self {
            shutdown: runtime.shutdown.clone(),
            on_synced: Some(Arc::new(move || health.set_ready(true))),
            pool_metrics: runtime.metrics.register(PoolMetrics::register),
            ..Self::new(
                runtime.client.clone(),
                Arc::new(runtime.metrics.reconcile()),
                settings,
            )
        }
    }
}
