//! `RelayPool`: a set of smtp-node pods that share one replicated delivery queue.
//!
//! The spec is what a platform team writes; every field carries the documentation that
//! `kubectl explain relaypool.spec` shows. Invalid specs are rejected by the API server
//! itself: OpenAPI constraints for single fields, CEL rules (attached below with
//! `transform`s) for relations between fields. Helpers that resolve defaults and
//! shorthands for the reconciler are methods on the spec types (see `resolve.rs`).

mod defaults;
mod resolve;
mod rules;
mod status;

pub use resolve::{DEFAULT_REPLICATION_FACTOR, EnabledListener, ListenerKind, TlsSource};
pub use status::{
    AutoscalingStatus, CertificateStatus, DataCentreQueue, DataCentreStatus, QueueStatus,
    RelayPoolStatus, ScaleDownPhase, ScaleDownStatus, condition_types, reasons,
};

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::patterns;
use super::refs::SecretReference;
use super::schema;

/// Most data centres a pool may list. Bounds the cost of the CEL rules that walk the list.
pub const MAX_DATA_CENTRES: usize = 8;
/// Highest accepted `spec.queue.replicationFactor`.
pub const MAX_REPLICATION_FACTOR: i32 = 5;
/// Name of the implicit data centre of a pool without `spec.dataCentres`.
pub const DEFAULT_DATA_CENTRE: &str = "default";
/// Node label that the `zone` shorthand of a data centre selects on.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Longest StatefulSet name the pool may need. Pods of a StatefulSet carry a
/// `controller-revision-hash` label made of the StatefulSet's name and a hash, and label
/// values stop at 63 characters, so names longer than 52 make pod creation fail. A root
/// CEL rule checks `<pool>-<dataCentre>` against it for the longest data-centre name
/// (7 characters for the implicit `default`).
pub const MAX_STATEFULSET_NAME: usize = 52;

/// A pool of SMTP relay nodes that share one replicated queue.
///
/// The operator runs one StatefulSet per data centre, Services for clients and for peer
/// traffic, the node configuration, TLS material and a PodDisruptionBudget. A message is
/// answered 250 only once `spec.queue.replicationFactor` nodes hold it on disk.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "smtpfleet.io",
    version = "v1alpha1",
    kind = "RelayPool",
    plural = "relaypools",
    singular = "relaypool",
    shortname = "rp",
    category = "smtpfleet",
    namespaced,
    status = "RelayPoolStatus",
    doc = "RelayPool runs a horizontally scaled SMTP relay whose accepted mail is replicated across pods and data centres before it is acknowledged.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Status of the Ready condition"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".status.replicas",
        description = "Desired replicas over all data centres"
    ),
    printcolumn(
        name = "Ready Replicas",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Replicas ready to accept mail"
    ),
    printcolumn(
        name = "Queued",
        type_ = "integer",
        json_path = ".status.queue.depth",
        description = "Messages waiting for delivery"
    ),
    printcolumn(
        name = "Oldest",
        type_ = "date",
        json_path = ".status.queue.oldestReceivedAt",
        description = "When the oldest queued message was received"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    validation = Rule::new(
        "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
    )
    .message(Message::Message(
        "metadata.name must start with a letter and contain only lower-case letters, digits and '-': the pool's Service takes this name".into()
    ))
    .reason(Reason::FieldValueInvalid),
    validation = Rule::new(
        "size(self.metadata.name) + 1 + (has(self.spec.dataCentres) && size(self.spec.dataCentres) > 0 ? self.spec.dataCentres.map(dc, size(dc.name)).max() : 7) <= 52"
    )
    .message(Message::Expression(
        "'metadata.name (%d characters) is too long: each data centre runs a StatefulSet named <pool>-<dataCentre>, which must not exceed 52 characters'.format([size(self.metadata.name)])".into()
    ))
    .reason(Reason::FieldValueInvalid),
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::spec, transform = schema::unwrap_descriptions)]
pub struct RelayPoolSpec {
    /// Fully qualified host name of the pool (for example `smtp.example.com`). Nodes
    /// announce it in EHLO and the listener certificate is issued for it. Point its DNS
    /// records at the pool's Service.
    #[schemars(length(min = 1, max = 253), regex(pattern = patterns::FQDN))]
    pub hostname: String,

    /// Container image of smtp-node. Defaults to the image released with this operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Pull policy of the smtp-node image. Defaults to Kubernetes' rule: Always for
    /// `:latest`, IfNotPresent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,

    /// CPU and memory requests and limits of each smtp-node container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// SMTP listeners the pool's Service exposes. At least one must be enabled. When
    /// omitted, only the relay listener on port 25 is enabled.
    #[serde(
        default = "ListenersSpec::relay_only",
        skip_serializing_if = "ListenersSpec::is_relay_only"
    )]
    #[schemars(extend("default" = {"relay": {}}))]
    pub listeners: ListenersSpec,

    /// Number of nodes of a pool without `dataCentres`, which then runs as one data
    /// centre named `default`. Must stay 1 (the default) when `dataCentres` is set:
    /// replicas are then given per data centre.
    #[serde(default = "defaults::replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: i32,

    /// Failure domains the pool spans, each with its own nodes and placement. Copies of
    /// a message can be spread over them (see `queue.minDataCentres`) so that losing one
    /// loses no acknowledged mail. When empty, the pool is a single data centre named
    /// `default` with `replicas` nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_DATA_CENTRES), transform = rules::data_centres)]
    pub data_centres: Vec<DataCentre>,

    /// The replicated delivery queue: how many durable copies a message needs before it
    /// is acknowledged, the spool volume, and retry and expiry of deliveries.
    #[serde(default, skip_serializing_if = "QueueSpec::is_default")]
    #[schemars(extend("default" = {}))]
    pub queue: QueueSpec,

    /// Certificate of the SMTP listeners (STARTTLS and implicit TLS). Set exactly one of
    /// `certManager`, `secretName` or `selfSigned`. When omitted, the operator issues a
    /// self-signed certificate for `hostname`: STARTTLS is always offered, and clients
    /// that verify certificates need one of the other two sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,

    /// Who may relay through the pool. Mail is accepted for relay only from
    /// `allowedNetworks` or from users authenticated on the submission listeners, and
    /// only from sender domains of MailDomains bound to this pool.
    #[serde(default, skip_serializing_if = "RelaySpec::is_default")]
    #[schemars(extend("default" = {}))]
    pub relay: RelaySpec,

    /// Limits each node enforces on clients and on deliveries.
    #[serde(default, skip_serializing_if = "LimitsSpec::is_default")]
    #[schemars(extend("default" = {}))]
    pub limits: LimitsSpec,

    /// Scale each data centre on its queue depth. The operator recommends a node count
    /// per data centre from the queue the nodes report (status.autoscaling) and runs that
    /// many instead of the data centre's `replicas`, which stays as written (so GitOps
    /// tools do not fight it) and is where a new data centre starts. More nodes are added
    /// at once; fewer only after the backlog stayed low for `scaleDownStabilization`,
    /// and then through the drain of a normal scale-down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
}

/// Queue-depth autoscaling, applied to each data centre on its own.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::autoscaling, transform = schema::unwrap_descriptions)]
pub struct AutoscalingSpec {
    /// Fewest nodes a data centre runs.
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Most nodes a data centre runs.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Queued messages one node should carry: a data centre runs
    /// ceil(its queue depth / this) nodes, within the bounds.
    #[schemars(range(min = 1))]
    pub target_queue_per_replica: i64,
    /// How long the queue must stay low enough for fewer nodes before any is removed,
    /// as a duration such as `5m`.
    #[serde(default = "defaults::scale_down_stabilization")]
    #[schemars(length(min = 2, max = 32), regex(pattern = patterns::DURATION))]
    pub scale_down_stabilization: String,
}

/// Image pull policy of the smtp-node container.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ImagePullPolicy {
    /// Pull the image every time a pod starts.
    Always,
    /// Pull the image only when the node does not have it.
    IfNotPresent,
    /// Never pull; the image must already be on the node.
    Never,
}

/// The SMTP listeners of a pool. Each one is enabled by being present (`relay: {}` uses
/// the standard port).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::listeners, transform = schema::unwrap_descriptions)]
pub struct ListenersSpec {
    /// Relay listener: plain SMTP with STARTTLS, port 25 unless set. Relaying is allowed
    /// from `relay.allowedNetworks` and for authenticated users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayListener>,

    /// Submission listener (RFC 6409): port 587 unless set. Clients must authenticate
    /// after STARTTLS; needs `relay.authSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submission: Option<SubmissionListener>,

    /// Submission over implicit TLS (RFC 8314): port 465 unless set. Clients must
    /// authenticate; needs `relay.authSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implicit_tls: Option<ImplicitTlsListener>,
}

/// The relay listener.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct RelayListener {
    /// Port of the pool's Service for this listener.
    #[serde(default = "defaults::relay_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// The submission listener.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct SubmissionListener {
    /// Port of the pool's Service for this listener.
    #[serde(default = "defaults::submission_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// The implicit-TLS submission listener.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct ImplicitTlsListener {
    /// Port of the pool's Service for this listener.
    #[serde(default = "defaults::implicit_tls_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// One failure domain of the pool: its own StatefulSet, placed by node selector.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::data_centre, transform = schema::unwrap_descriptions)]
pub struct DataCentre {
    /// Name of the data centre, unique in the pool. Part of the StatefulSet name
    /// (`<pool>-<name>`) and of the `smtpfleet.io/data-centre` label of its pods.
    #[schemars(length(min = 1, max = 63), regex(pattern = patterns::DNS_LABEL))]
    pub name: String,

    /// Number of nodes in this data centre.
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: i32,

    /// Shorthand for `nodeSelector: {topology.kubernetes.io/zone: <zone>}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = patterns::LABEL_VALUE))]
    pub zone: Option<String>,

    /// Labels a node must carry to run this data centre's pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = rules::node_selector)]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of this data centre's pods, to run on tainted nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub tolerations: Vec<Toleration>,
}

/// Queue replication, storage, retries and expiry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct QueueSpec {
    /// Number of nodes that must hold a message durably before it is answered 250.
    /// Mail survives the loss of `replicationFactor - 1` nodes. Defaults to 2 (or to
    /// `minDataCentres` when larger), but never to more than the pool's total replicas,
    /// so that a one-node pool works without replication. Must not exceed the total
    /// replicas when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_REPLICATION_FACTOR))]
    pub replication_factor: Option<i32>,

    /// Number of distinct data centres the copies of a message must span before it is
    /// answered 250. 2 makes the pool survive the loss of a whole data centre. Must not
    /// exceed the number of data centres nor `replicationFactor`.
    #[serde(default = "defaults::min_data_centres")]
    #[schemars(range(min = 1, max = MAX_DATA_CENTRES))]
    pub min_data_centres: i32,

    /// The spool volume of each node.
    #[serde(default, skip_serializing_if = "StorageSpec::is_default")]
    #[schemars(extend("default" = {}))]
    pub storage: StorageSpec,

    /// When deliveries that failed temporarily are tried again.
    #[serde(default, skip_serializing_if = "RetrySpec::is_default")]
    #[schemars(extend("default" = {}))]
    pub retry: RetrySpec,

    /// How long a message may stay undelivered before it is bounced to its sender, as a
    /// duration such as `5d` or `36h`.
    #[serde(default = "defaults::max_age")]
    #[schemars(length(min = 2, max = 32), regex(pattern = patterns::DURATION))]
    pub max_age: String,
}

/// The per-node spool volume (a PersistentVolumeClaim per pod).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct StorageSpec {
    /// Size of each node's spool volume, as a quantity such as `10Gi`.
    #[serde(default = "defaults::storage_size")]
    #[schemars(transform = rules::positive_quantity)]
    pub size: Quantity,

    /// StorageClass of the spool volumes. The cluster's default class when omitted.
    /// Prefer a class whose volumes survive node loss; the queue's replication covers
    /// volumes that do not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = patterns::DNS_SUBDOMAIN))]
    pub storage_class_name: Option<String>,
}

/// Delivery retry timing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct RetrySpec {
    /// Delays between delivery attempts after a temporary failure: the first entry is
    /// the wait after the first failure, and the last entry repeats until
    /// `queue.maxAge`. Durations such as `5m` or `1h`.
    #[serde(default = "defaults::retry_schedule")]
    #[schemars(
        length(min = 1, max = 32),
        inner(length(min = 2, max = 32), regex(pattern = patterns::DURATION))
    )]
    pub schedule: Vec<String>,
}

/// Where the certificate of the SMTP listeners comes from: exactly one field is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::tls, transform = schema::unwrap_descriptions)]
pub struct TlsSpec {
    /// Have cert-manager issue and renew the certificate: the operator creates a
    /// cert-manager Certificate for `hostname`. Requires cert-manager in the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_manager: Option<CertManagerTls>,

    /// Name of a Secret of type `kubernetes.io/tls` in the pool's namespace, with
    /// `tls.crt` and `tls.key`. Nodes reload it when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = patterns::DNS_SUBDOMAIN))]
    pub secret_name: Option<String>,

    /// Have the operator issue and rotate a self-signed certificate (`selfSigned: {}`).
    /// Encrypts traffic, but clients that verify certificates will reject it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_signed: Option<SelfSignedTls>,
}

/// cert-manager as the certificate source.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct CertManagerTls {
    /// The cert-manager Issuer or ClusterIssuer that signs the certificate.
    pub issuer_ref: IssuerRef,
}

/// Reference to a cert-manager issuer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct IssuerRef {
    /// Name of the issuer.
    #[schemars(length(min = 1, max = 253), regex(pattern = patterns::DNS_SUBDOMAIN))]
    pub name: String,

    /// Kind of the issuer: `Issuer` (in the pool's namespace) or `ClusterIssuer`.
    #[serde(default)]
    pub kind: IssuerKind,

    /// API group of the issuer. Change it only for external issuers that implement
    /// cert-manager's issuer API.
    #[serde(default = "defaults::issuer_group")]
    #[schemars(length(min = 1, max = 253), regex(pattern = patterns::DNS_SUBDOMAIN))]
    pub group: String,
}

/// Kind of a cert-manager issuer.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum IssuerKind {
    /// A namespaced Issuer in the pool's namespace.
    #[default]
    Issuer,
    /// A cluster-wide ClusterIssuer.
    ClusterIssuer,
}

/// A self-signed certificate, issued and rotated by the operator. Has no settings.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct SelfSignedTls {}

/// Relay permissions.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct RelaySpec {
    /// Client networks allowed to relay without authentication, in CIDR notation
    /// (`10.0.0.0/8`, `2001:db8::/32`). Empty means no client relays without
    /// authenticating.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(length(min = 4, max = 49), regex(pattern = patterns::CIDR))
    )]
    pub allowed_networks: Vec<String>,

    /// Secret in the pool's namespace holding the users allowed to authenticate on the
    /// submission listeners. Required for `listeners.submission` and
    /// `listeners.implicitTls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_secret_ref: Option<SecretReference>,
}

/// Limits enforced by every node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::limits, transform = schema::unwrap_descriptions)]
pub struct LimitsSpec {
    /// Largest message accepted, as a quantity (`25Mi`) or a number of bytes. Advertised
    /// with the SIZE extension.
    #[serde(default = "defaults::max_message_size")]
    #[schemars(transform = rules::positive_quantity)]
    pub max_message_size: Quantity,

    /// Most recipients accepted per message.
    #[serde(default = "defaults::max_recipients")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_recipients: i32,

    /// Most simultaneous client connections per node.
    #[serde(default = "defaults::max_connections")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections: i32,

    /// Most simultaneous connections per client IP address per node. Must not exceed
    /// `maxConnections`.
    #[serde(default = "defaults::max_connections_per_client")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections_per_client: i32,

    /// Limits on outbound deliveries to each destination domain.
    #[serde(default, skip_serializing_if = "PerDestinationLimits::is_default")]
    #[schemars(extend("default" = {}))]
    pub per_destination: PerDestinationLimits,
}

/// Outbound limits per destination domain.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct PerDestinationLimits {
    /// Most simultaneous outbound connections per destination domain per node.
    #[serde(default = "defaults::destination_concurrency")]
    #[schemars(range(min = 1, max = 10000))]
    pub concurrency: i32,

    /// Most messages per minute per destination domain per node. Unlimited when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub rate_per_minute: Option<i32>,
}
