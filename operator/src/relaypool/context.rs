//! What the RelayPool reconciler needs from the process: a client, an event recorder,
//! a metrics hook and its settings.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::runtime::events::Recorder;

use super::backoff::FailureTracker;

/// Name of this controller in metrics and logs.
pub const CONTROLLER_NAME: &str = "relaypool";

/// How often a healthy pool is reconciled again without any change: catches drift
/// in objects the controller does not watch and refreshes the status.
pub const DEFAULT_REQUEUE: Duration = Duration::from_secs(5 * 60);

/// Receives the outcome of every reconciliation, for metrics.
///
/// A trait rather than a concrete metrics type so that the reconciler does not depend
/// on how the process exports metrics. The process runtime's `ReconcileMetrics`
/// plugs in with a small adapter:
///
/// ```ignore
/// impl ReconcileObserver for ReconcileMetrics {
///     fn start(&self) -> Box<dyn ReconcileSpan> { Box::new(self.start(CONTROLLER_NAME)) }
///     fn error(&self, category: &'static str) { self.error(CONTROLLER_NAME, category) }
/// }
/// impl ReconcileSpan for ReconcileTimer {
///     fn finish(self: Box<Self>, success: bool) {
///         if success { (*self).success() } else { (*self).failure() }
///     }
/// }
/// ```
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

/// The smtp-node image matching this operator's version.
pub fn default_image() -> String {
    format!("ghcr.io/smtpfleet/smtp-node:{}", env!("CARGO_PKG_VERSION"))
}

/// Shared state of all reconciliations. Cheap to share behind an `Arc`.
pub struct Context {
    /// Client for the API server.
    pub client: Client,
    /// Publishes Events on pools.
    pub recorder: Recorder,
    /// Metrics hook.
    pub observer: Arc<dyn ReconcileObserver>,
    /// Controller settings.
    pub settings: Settings,
    /// Consecutive failures per pool, for the error policy's backoff.
    pub failures: FailureTracker,
}

impl Context {
    /// A context with the operator's event reporter and no failures recorded.
    pub fn new(client: Client, observer: Arc<dyn ReconcileObserver>, settings: Settings) -> Self {
        Self {
            recorder: crate::events::recorder(client.clone()),
            client,
            observer,
            settings,
            failures: FailureTracker::default(),
        }
    }
}
