//! Defaults of the RelayPool spec.
//!
//! These are the values serde fills in for absent fields; the schema carries the same
//! values as OpenAPI `default`s (derived from these functions), and a test checks that
//! an object defaulted by the API server reads the same as one defaulted by serde.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::{
    ImplicitTlsListener, LimitsSpec, ListenersSpec, PerDestinationLimits, QueueSpec, RelayListener,
    RelaySpec, RetrySpec, StorageSpec, SubmissionListener,
};

pub(super) fn replicas() -> i32 {
    1
}
pub(super) fn relay_port() -> i32 {
    25
}
pub(super) fn submission_port() -> i32 {
    587
}
pub(super) fn implicit_tls_port() -> i32 {
    465
}
pub(super) fn min_data_centres() -> i32 {
    1
}
pub(super) fn scale_down_stabilization() -> String {
    "5m".to_owned()
}
pub(super) fn max_age() -> String {
    "5d".to_owned()
}
pub(super) fn storage_size() -> Quantity {
    Quantity("10Gi".to_owned())
}
pub(super) fn retry_schedule() -> Vec<String> {
    ["5m", "10m", "30m", "1h", "2h", "4h"]
        .map(str::to_owned)
        .to_vec()
}
pub(super) fn issuer_group() -> String {
    "cert-manager.io".to_owned()
}
pub(super) fn max_message_size() -> Quantity {
    Quantity("25Mi".to_owned())
}
pub(super) fn max_recipients() -> i32 {
    100
}
pub(super) fn max_connections() -> i32 {
    1000
}
pub(super) fn max_connections_per_client() -> i32 {
    50
}
pub(super) fn destination_concurrency() -> i32 {
    10
}

impl ListenersSpec {
    /// The listeners of a spec that names none: relay on port 25.
    pub fn relay_only() -> Self {
        Self {
            relay: Some(RelayListener::default()),
            submission: None,
            implicit_tls: None,
        }
    }

    pub(super) fn is_relay_only(&self) -> bool {
        *self == Self::relay_only()
    }
}

impl Default for RelayListener {
    fn default() -> Self {
        Self { port: relay_port() }
    }
}

impl Default for SubmissionListener {
    fn default() -> Self {
        Self {
            port: submission_port(),
        }
    }
}

impl Default for ImplicitTlsListener {
    fn default() -> Self {
        Self {
            port: implicit_tls_port(),
        }
    }
}

impl Default for QueueSpec {
    fn default() -> Self {
        Self {
            replication_factor: None,
            min_data_centres: min_data_centres(),
            storage: StorageSpec::default(),
            retry: RetrySpec::default(),
            max_age: max_age(),
        }
    }
}

impl QueueSpec {
    pub(super) fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: storage_size(),
            storage_class_name: None,
        }
    }
}

impl StorageSpec {
    pub(super) fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            schedule: retry_schedule(),
        }
    }
}

impl RetrySpec {
    pub(super) fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl RelaySpec {
    pub(super) fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Default for LimitsSpec {
    fn default() -> Self {
        Self {
            max_message_size: max_message_size(),
            max_recipients: max_recipients(),
            max_connections: max_connections(),
            max_connections_per_client: max_connections_per_client(),
            per_destination: PerDestinationLimits::default(),
        }
    }
}

impl LimitsSpec {
    pub(super) fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Default for PerDestinationLimits {
    fn default() -> Self {
        Self {
            concurrency: destination_concurrency(),
            rate_per_minute: None,
        }
    }
}

impl PerDestinationLimits {
    pub(super) fn is_default(&self) -> bool {
        *self == Self::default()
    }
}
