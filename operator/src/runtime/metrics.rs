//! The operator's Prometheus metrics.
//!
//! Label values are `&'static str` on purpose: controller names and error categories
//! come from code, never from user objects, so the number of time series stays bounded
//! however many RelayPools or MailDomains exist.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Prefix of every metric name the operator exports.
pub const METRIC_PREFIX: &str = "smtpfleet_operator";

/// Content type of [`Metrics::encode`]'s output (OpenMetrics text, which Prometheus
/// negotiates and parses).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How one reconciliation ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum ReconcileResult {
    /// The reconciler returned `Ok`.
    Success,
    /// The reconciler returned an error.
    Error,
    /// The reconcile future was dropped before it finished (shutdown, leadership lost,
    /// or a panic).
    Cancelled,
}

impl ReconcileResult {
    /// The label value, lower case as Prometheus conventions expect.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Error => "error",
            Self::Cancelled => "cancelled",
        }
    }
}

impl EncodeLabelValue for ReconcileResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        self.as_str().encode(encoder)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    controller: &'static str,
    result: ReconcileResult,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    controller: &'static str,
    category: &'static str,
}

/// Buckets from 5 ms to about 80 s: a reconcile that only reads caches takes
/// milliseconds, one that waits for DNS or the API server takes seconds.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// The registry and the operator's own metrics. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<RwLock<Registry>>,
    reconcile: ReconcileMetrics,
    leader: Gauge,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry holding the reconcile and leader metrics.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(METRIC_PREFIX);
        let reconcile = ReconcileMetrics::default();
        registry.register(
            "reconcile",
            "Reconciliations by controller and result",
            reconcile.total.clone(),
        );
        registry.register_with_unit(
            "reconcile_duration",
            "Time spent in one reconciliation",
            Unit::Seconds,
            reconcile.duration.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciliation errors by controller and error category",
            reconcile.errors.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and runs the controllers",
            leader.clone(),
        );
        Self {
            registry: Arc::new(RwLock::new(registry)),
            reconcile,
            leader,
        }
    }

    /// The handle reconcilers use.
    pub fn reconcile(&self) -> ReconcileMetrics {
        self.reconcile.clone()
    }

    /// Records whether this replica is the leader (the HTTP endpoint does this on every
    /// scrape).
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Lets another component (for example the DNS checker) register its own metrics
    /// so that they are served on the same /metrics endpoint.
    pub fn register<R>(&self, register: impl FnOnce(&mut Registry) -> R) -> R {
        let mut registry = self
            .registry
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        register(&mut registry)
    }

    /// The OpenMetrics text exposition of every registered metric.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let registry = self.registry.read().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)?;
        Ok(out)
    }
}

/// What a reconciler records. Cheap to clone; clones share the same counters.
///
/// Typical use:
/// ```
/// # use smtpfleet_operator::runtime::metrics::Metrics;
/// # fn reconcile_inner() -> Result<(), std::io::Error> { Ok(()) }
/// let metrics = Metrics::new().reconcile();
/// let timer = metrics.start("relaypool");
/// let result = reconcile_inner();
/// timer.finish(&result);
/// // and in the error policy, with the error's category:
/// metrics.error("relaypool", "kube_api");
/// ```
#[derive(Clone)]
pub struct ReconcileMetrics {
    total: Family<ResultLabels, Counter>,
    duration: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    errors: Family<ErrorLabels, Counter>,
}

impl Default for ReconcileMetrics {
    fn default() -> Self {
        Self {
            total: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            errors: Family::default(),
        }
    }
}

impl fmt::Debug for ReconcileMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReconcileMetrics").finish_non_exhaustive()
    }
}

impl ReconcileMetrics {
    /// Starts timing one reconciliation. The duration and the result are recorded when
    /// the returned timer is finished or dropped.
    pub fn start(&self, controller: &'static str) -> ReconcileTimer {
        ReconcileTimer {
            metrics: self.clone(),
            controller,
            started: Instant::now(),
            result: ReconcileResult::Cancelled,
        }
    }

    /// Counts an error of the given category (a fixed, low-cardinality name such as
    /// `kube_api`, `invalid_spec`, `dns`).
    pub fn error(&self, controller: &'static str, category: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels {
                controller,
                category,
            })
            .inc();
    }
}

/// Measures one reconciliation; records on drop so that early returns and cancellation
/// are measured too. Unfinished timers count as [`ReconcileResult::Cancelled`].
#[must_use = "dropping the timer immediately records a cancelled reconciliation"]
pub struct ReconcileTimer {
    metrics: ReconcileMetrics,
    controller: &'static str,
    started: Instant,
    result: ReconcileResult,
}

impl ReconcileTimer {
    /// Records the reconciliation as succeeded or failed according to `result`.
    pub fn finish<T, E>(self, result: &Result<T, E>) {
        if result.is_ok() {
            self.success();
        } else {
            self.failure();
        }
    }

    /// Records a successful reconciliation.
    pub fn success(mut self) {
        self.result = ReconcileResult::Success;
    }

    /// Records a failed reconciliation (the category goes through
    /// [`ReconcileMetrics::error`]).
    pub fn failure(mut self) {
        self.result = ReconcileResult::Error;
    }
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        let labels = ControllerLabels {
            controller: self.controller,
        };
        self.metrics
            .duration
            .get_or_create(&labels)
            .observe(self.started.elapsed().as_secs_f64());
        self.metrics
            .total
            .get_or_create(&ResultLabels {
                controller: self.controller,
                result: self.result,
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn reconcile_results_are_counted_per_controller() {
        let metrics = Metrics::new();
        let handle = metrics.reconcile();
        handle.start("relaypool").success();
        handle
            .clone()
            .start("relaypool")
            .finish(&Err::<(), _>("boom"));
        handle.start("maildomain").finish(&Ok::<_, ()>(()));
        drop(handle.start("maildomain"));
        handle.error("relaypool", "kube_api");
        handle.error("relaypool", "kube_api");

        let text = metrics.encode().unwrap();
        let value = |prefix: &str| {
            line(&text, prefix)
                .unwrap_or_else(|| panic!("no line {prefix} in\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            value(r#"smtpfleet_operator_reconcile_total{controller="relaypool",result="success"}"#),
            "1"
        );
        assert_eq!(
            value(r#"smtpfleet_operator_reconcile_total{controller="relaypool",result="error"}"#),
            "1"
        );
        assert_eq!(
            value(
                r#"smtpfleet_operator_reconcile_total{controller="maildomain",result="cancelled"}"#
            ),
            "1"
        );
        assert_eq!(
            value(
                r#"smtpfleet_operator_reconcile_errors_total{controller="relaypool",category="kube_api"}"#
            ),
            "2"
        );
        assert_eq!(
            value(r#"smtpfleet_operator_reconcile_duration_seconds_count{controller="relaypool"}"#),
            "2"
        );
        assert_eq!(
            value(
                r#"smtpfleet_operator_reconcile_duration_seconds_count{controller="maildomain"}"#
            ),
            "2"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn leader_gauge_follows_leadership() {
        let metrics = Metrics::new();
        assert!(
            metrics
                .encode()
                .unwrap()
                .contains("smtpfleet_operator_leader 0\n")
        );
        metrics.set_leader(true);
        assert!(
            metrics
                .encode()
                .unwrap()
                .contains("smtpfleet_operator_leader 1\n")
        );
        metrics.set_leader(false);
        assert!(
            metrics
                .encode()
                .unwrap()
                .contains("smtpfleet_operator_leader 0\n")
        );
    }

    #[test]
    fn other_components_register_on_the_same_endpoint() {
        let metrics = Metrics::new();
        let checks: Counter = Counter::default();
        metrics.register(|registry| {
            registry.register("dns_checks", "DNS checks run", checks.clone());
        });
        checks.inc();
        assert!(
            metrics
                .encode()
                .unwrap()
                .contains("smtpfleet_operator_dns_checks_total 1\n")
        );
    }
}
