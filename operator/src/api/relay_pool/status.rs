//! What the operator reports about a RelayPool.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::conditions::conditions_list_schema;
use crate::api::schema;

/// Observed state of a RelayPool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::unwrap_descriptions, transform = schema::strip_defaults)]
pub struct RelayPoolStatus {
    /// The `metadata.generation` this status describes. When it is lower than the
    /// object's generation, the operator has not yet acted on the latest spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Desired nodes over all data centres.
    #[serde(default)]
    pub replicas: i32,

    /// Nodes ready to accept mail.
    #[serde(default)]
    pub ready_replicas: i32,

    /// Nodes per data centre.
    #[serde(default)]
    #[schemars(transform = data_centre_status_list)]
    pub data_centres: Vec<DataCentreStatus>,

    /// Summary of the shared delivery queue, as the nodes report it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueStatus>,

    /// The listener certificate currently served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateStatus>,

    /// The node count queue-depth autoscaling recommends for each data centre (only
    /// with `spec.autoscaling`). The pool runs these instead of the spec's replicas.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = autoscaling_status_list)]
    pub autoscaling: Vec<AutoscalingStatus>,

    /// The node being removed, while a scale-down drains it or waits for it to go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScaleDownStatus>,

    /// Current state of the pool: `Ready`, `Available`, `Progressing`, `Degraded`,
    /// `CertificateReady` and `QueueReplicated`; `ScalingDown`, `ScaleDownBlocked` and
    /// `RollingUpdate` once the pool was scaled down or rolled.
    #[serde(default)]
    #[schemars(transform = conditions_list_schema)]
    pub conditions: Vec<Condition>,
}

/// Nodes of one data centre.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct DataCentreStatus {
    /// Name of the data centre (`default` for a pool without `spec.dataCentres`).
    pub name: String,
    /// Desired nodes.
    #[serde(default)]
    pub replicas: i32,
    /// Nodes ready to accept mail.
    #[serde(default)]
    pub ready: i32,
}

/// Summary of the delivery queue, as the nodes report it on their admin API. Written at
/// most every 30 seconds, and only when it changed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct QueueStatus {
    /// Messages accepted and not yet delivered or bounced, counted once (by the node
    /// that owns each) however many copies exist.
    #[serde(default)]
    pub depth: i64,
    /// Queued messages waiting for a retry.
    #[serde(default)]
    pub deferred: i64,
    /// When the oldest queued message was received; absent when the queue is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_received_at: Option<Time>,
    /// Held copies of messages that lack a copy elsewhere (the pool restores them).
    #[serde(default)]
    pub under_replicated: i64,
    /// Nodes that did not answer: their mail is not counted above.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<String>,
    /// Nodes draining (taking no new mail before they are removed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub draining: Vec<String>,
    /// The same, per data centre.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = data_centre_queue_list)]
    pub data_centres: Vec<DataCentreQueue>,
}

/// The queue of one data centre's nodes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct DataCentreQueue {
    /// Name of the data centre.
    pub name: String,
    #[serde(default)]
    pub depth: i64,
    #[serde(default)]
    pub deferred: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_received_at: Option<Time>,
    #[serde(default)]
    pub under_replicated: i64,
    /// Nodes of this data centre that did not answer.
    #[serde(default)]
    pub unreachable: i32,
}

fn data_centre_queue_list(schema: &mut schemars::Schema) {
    crate::api::schema::list_map(schema, &["name"]);
}

/// The autoscaler's recommendation for one data centre.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct AutoscalingStatus {
    /// Name of the data centre.
    pub data_centre: String,
    /// Nodes it should run.
    pub replicas: i32,
    /// Its queue depth when last fully known (every node answered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<i64>,
    /// Since when the queue has been low enough for fewer nodes (the stabilization
    /// window runs from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_since: Option<Time>,
}

fn autoscaling_status_list(schema: &mut schemars::Schema) {
    crate::api::schema::list_map(schema, &["dataCentre"]);
}

/// A node on its way out: the operator removes one node at a time, the highest ordinal
/// of a data centre, and only once it holds nothing the pool still needs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct ScaleDownStatus {
    /// The pod being removed.
    pub pod: String,
    /// Its data centre.
    pub data_centre: String,
    /// Its StatefulSet.
    pub stateful_set: String,
    /// Its ordinal: the StatefulSet goes down to this many replicas.
    pub ordinal: i32,
    /// `Draining` (no new mail, its messages handed to the others) or `Removing` (the
    /// StatefulSet lowered; its spool claim is deleted once the pod is gone).
    pub phase: ScaleDownPhase,
    /// When the drain was asked for.
    pub started_at: Time,
}

/// Where a scale-down is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ScaleDownPhase {
    #[default]
    Draining,
    Removing,
}

/// The certificate the listeners serve.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct CertificateStatus {
    /// End of the certificate's validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
    /// The Secret the nodes serve it from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Serial number, hexadecimal, as `openssl x509 -serial` prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// DNS names the certificate is valid for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
}

fn data_centre_status_list(schema: &mut schemars::Schema) {
    crate::api::schema::list_map(schema, &["name"]);
}

/// Condition types of a RelayPool.
pub mod condition_types {
    /// The pool accepts mail on every listener with its full set of nodes, and the
    /// queue is replicated as asked. The summary a person looks at first.
    pub const READY: &str = "Ready";
    /// Enough nodes are ready to accept mail with the configured replication factor.
    pub const AVAILABLE: &str = "Available";
    /// A change is being rolled out: pods replaced, scaled or drained.
    pub const PROGRESSING: &str = "Progressing";
    /// Something needs a person: a missing Secret, too few nodes, an invalid spec.
    pub const DEGRADED: &str = "Degraded";
    /// The listener certificate is present, valid and not about to expire.
    pub const CERTIFICATE_READY: &str = "CertificateReady";
    /// Every queued message has its required copies.
    pub const QUEUE_REPLICATED: &str = "QueueReplicated";
    /// The pool is being deleted but its nodes still hold queued mail: the finalizer
    /// keeps it until they have delivered it (or `smtpfleet.io/force-delete` is set).
    pub const DELETION_BLOCKED: &str = "DeletionBlocked";
    /// A node is being drained and removed because a data centre has fewer replicas
    /// than it runs (or was removed).
    pub const SCALING_DOWN: &str = "ScalingDown";
    /// A scale-down cannot go on without risking mail: a pre-check failed, the node
    /// does not answer, or its drain is taking longer than the timeout.
    pub const SCALE_DOWN_BLOCKED: &str = "ScaleDownBlocked";
    /// A pod-template change (image, configuration, placement) is being rolled through
    /// the pool one node at a time; the reason says what the next node waits for.
    pub const ROLLING_UPDATE: &str = "RollingUpdate";

    /// All types, in the order they are listed in a status.
    pub const ALL: [&str; 6] = [
        READY,
        AVAILABLE,
        PROGRESSING,
        DEGRADED,
        CERTIFICATE_READY,
        QUEUE_REPLICATED,
    ];
}

/// CamelCase reasons of RelayPool conditions.
pub mod reasons {
    /// Every desired node is ready (Ready, Available).
    pub const ALL_REPLICAS_READY: &str = "AllReplicasReady";
    /// Some nodes are not ready yet (Ready).
    pub const REPLICAS_NOT_READY: &str = "ReplicasNotReady";
    /// Enough nodes are ready to place every copy of a message (Available).
    pub const MINIMUM_REPLICAS_AVAILABLE: &str = "MinimumReplicasAvailable";
    /// Too few ready nodes to place `replicationFactor` copies; nodes answer 451 (Available).
    pub const INSUFFICIENT_REPLICAS: &str = "InsufficientReplicas";
    /// Too few data centres with ready nodes for `minDataCentres` (Available, Degraded).
    pub const INSUFFICIENT_DATA_CENTRES: &str = "InsufficientDataCentres";
    /// Pods are being created or replaced (Progressing).
    pub const ROLLING_OUT: &str = "RollingOut";
    /// Nodes are draining their queues before scale-down (Progressing).
    pub const DRAINING: &str = "Draining";
    /// The running pods match the spec (Progressing = False).
    pub const UP_TO_DATE: &str = "UpToDate";
    /// Nothing needs attention (Degraded = False).
    pub const AS_EXPECTED: &str = "AsExpected";
    /// A referenced Secret does not exist (Degraded, CertificateReady).
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// A referenced Secret lacks keys or holds unusable data (Degraded, CertificateReady).
    pub const SECRET_INVALID: &str = "SecretInvalid";
    /// The spec cannot be acted on (Degraded).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Applying child objects failed; the operator retries (Degraded).
    pub const RECONCILE_FAILED: &str = "ReconcileFailed";
    /// The certificate is valid (CertificateReady).
    pub const CERTIFICATE_ISSUED: &str = "CertificateIssued";
    /// The certificate has been requested and not issued yet (CertificateReady).
    pub const CERTIFICATE_PENDING: &str = "CertificatePending";
    /// The certificate expires soon and has not been renewed (CertificateReady).
    pub const CERTIFICATE_EXPIRING: &str = "CertificateExpiring";
    /// `spec.tls.certManager` is set but cert-manager's CRDs are not installed
    /// (CertificateReady, Degraded).
    pub const CERT_MANAGER_MISSING: &str = "CertManagerMissing";
    /// The listener certificate is unusable; `CertificateReady` says why (Degraded,
    /// Ready).
    pub const CERTIFICATE_NOT_READY: &str = "CertificateNotReady";
    /// Every queued message has its copies (QueueReplicated).
    pub const FULLY_REPLICATED: &str = "FullyReplicated";
    /// Some queued messages lack copies, for example after a node lost its disk
    /// (QueueReplicated).
    pub const UNDER_REPLICATED: &str = "UnderReplicated";
    /// The nodes' queue summary could not be read (QueueReplicated = Unknown).
    pub const QUEUE_STATUS_UNKNOWN: &str = "QueueStatusUnknown";
    /// Mail is still queued on a pool being deleted (DeletionBlocked).
    pub const MAIL_QUEUED: &str = "MailQueued";
    /// The node being removed is handing its messages over (ScalingDown).
    pub const DRAINING_NODE: &str = "DrainingNode";
    /// The drained node's pod and claim are being removed (ScalingDown).
    pub const REMOVING_NODE: &str = "RemovingNode";
    /// Every data centre runs what its spec asks for (ScalingDown, ScaleDownBlocked).
    pub const NO_SCALE_DOWN: &str = "NoScaleDown";
    /// Removing the node would leave too few ready nodes or data centres
    /// (ScaleDownBlocked).
    pub const PRE_CHECK_FAILED: &str = "PreCheckFailed";
    /// The node being drained does not answer on its admin API (ScaleDownBlocked).
    pub const NODE_UNREACHABLE: &str = "NodeUnreachable";
    /// The drain passed its timeout with messages still needing the node
    /// (ScaleDownBlocked).
    pub const DRAIN_TIMEOUT: &str = "DrainTimeout";
    /// A rolling update is in progress; no node is drained meanwhile (ScaleDownBlocked).
    pub const ROLLING_UPDATE_IN_PROGRESS: &str = "RollingUpdateInProgress";
    /// The pod template changed; every node keeps its revision until it is released
    /// (RollingUpdate).
    pub const TEMPLATE_CHANGED: &str = "TemplateChanged";
    /// A node was released and is restarting on the new revision (RollingUpdate).
    pub const UPDATING_NODE: &str = "UpdatingNode";
    /// The StatefulSet controller has not reported the new revision yet (RollingUpdate).
    pub const WAITING_FOR_STATEFUL_SET: &str = "WaitingForStatefulSet";
    /// Some node of the pool is not ready (RollingUpdate).
    pub const WAITING_FOR_READINESS: &str = "WaitingForReadiness";
    /// Some queued messages lack copies (RollingUpdate).
    pub const WAITING_FOR_REPLICATION: &str = "WaitingForReplication";
    /// A node did not report its queue, so its copies are unknown (RollingUpdate).
    pub const NODE_NOT_ANSWERING: &str = "NodeNotAnswering";
    /// A scale-down drain is in progress (RollingUpdate).
    pub const WAITING_FOR_SCALE_DOWN: &str = "WaitingForScaleDown";
    /// Every node runs the latest template (RollingUpdate = False).
    pub const ROLLED_OUT: &str = "RolledOut";
    /// `smtpfleet.io/force-rollout` is set: the StatefulSet controller replaces pods
    /// without the gate (RollingUpdate = False).
    pub const FORCED: &str = "Forced";
}
