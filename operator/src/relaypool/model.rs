//! The resolved view of a RelayPool that the builders consume.
//!
//! The CRD keeps user input as typed; this model has every default applied and every
//! shorthand expanded (an implicit `default` data centre, a `zone` as a node selector,
//! listener defaults). Builders then read one flat, complete structure and never
//! repeat defaulting rules.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Name of the data centre of a pool that lists none.
pub const DEFAULT_DATA_CENTRE: &str = "default";

/// Identity of the pool object, for names, labels and owner references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolIdentity {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.uid`, for owner references.
    pub uid: String,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `apiVersion` of the RelayPool kind.
    pub api_version: String,
    /// `kind` (always `RelayPool`).
    pub kind: String,
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ListenerKind {
    /// Port 25 style relay: plain SMTP with STARTTLS, from allowed networks.
    Relay,
    /// Port 587 style submission: STARTTLS required before AUTH.
    Submission,
    /// Port 465 style submission over implicit TLS (RFC 8314).
    ImplicitTls,
}

impl ListenerKind {
    /// Port name used on container and Service ports (at most 15 characters).
    pub fn port_name(self) -> &'static str {
        match self {
            Self::Relay => "smtp",
            Self::Submission => "submission",
            Self::ImplicitTls => "submissions",
        }
    }

    /// The unprivileged port smtp-node binds inside the pod. Pods run as non-root with
    /// no capabilities, so they cannot bind ports below 1024; the client Service maps
    /// the well-known port users asked for onto these.
    pub fn container_port(self) -> u16 {
        match self {
            Self::Relay => 2525,
            Self::Submission => 2587,
            Self::ImplicitTls => 2465,
        }
    }
}

/// One SMTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    /// What it speaks.
    pub kind: ListenerKind,
    /// The port clients use (the client Service's port).
    pub port: u16,
}

/// One data centre: a StatefulSet of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct DataCentre {
    /// Name, part of the StatefulSet name and the data-centre label.
    pub name: String,
    /// Desired replicas.
    pub replicas: i32,
    /// Zone the pods are pinned to, if any.
    pub zone: Option<String>,
    /// Extra node selector from the spec (without the zone).
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations from the spec.
    pub tolerations: Vec<Toleration>,
}

/// Spool storage per pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Storage {
    /// PVC size.
    pub size: Quantity,
    /// Storage class; `None` uses the cluster default.
    pub class: Option<String>,
}

/// Queue behaviour.
#[derive(Debug, Clone, PartialEq)]
pub struct Queue {
    /// Copies durable before 250.
    pub replication_factor: u32,
    /// Distinct data centres among those copies.
    pub min_data_centres: u32,
    /// Spool volume.
    pub storage: Storage,
    /// Delays between delivery attempts.
    pub retry_schedule: Vec<Duration>,
    /// Age after which undelivered mail bounces.
    pub max_age: Duration,
}

/// Where the listeners' certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// A `kubernetes.io/tls` Secret named by the user (`spec.tls.secretName`). Pods do
    /// not start without it: the user asked for this certificate, and serving none
    /// would silently downgrade clients.
    Secret(String),
    /// A Secret the operator fills (through cert-manager or its own self-signed
    /// issuer) under this name. Mounted as optional: the certificate may arrive after
    /// the pods start (cert-manager can take minutes, or be missing altogether, which
    /// `CertificateReady` reports), and nodes pick it up when it appears.
    Managed(String),
}

impl TlsSource {
    /// Name of the Secret holding `tls.crt` and `tls.key`.
    pub fn secret_name(&self) -> &str {
        match self {
            Self::Secret(name) | Self::Managed(name) => name,
        }
    }

    /// Whether pods may start while the Secret does not exist.
    pub fn optional(&self) -> bool {
        matches!(self, Self::Managed(_))
    }
}

/// Who may relay.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Relay {
    /// CIDRs allowed to relay without authentication.
    pub allowed_networks: Vec<String>,
    /// Secret with submission users, if any.
    pub auth_secret: Option<String>,
}

/// Limits applied by every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted message, bytes.
    pub max_message_size: u64,
    /// Recipients per message.
    pub max_recipients: u32,
    /// Concurrent inbound connections per node.
    pub max_connections: u32,
    /// Concurrent inbound connections per client IP per node.
    pub max_connections_per_client: u32,
    /// Concurrent outbound connections per destination domain per node.
    pub per_destination_concurrency: u32,
    /// Outbound messages per minute per destination domain per node; `None` is unlimited.
    pub per_destination_rate_per_minute: Option<u32>,
}

/// A domain the pool sends for (a MailDomain bound through `relayPoolRef`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SigningDomain {
    /// The MailDomain object's name.
    pub object: String,
    /// The mail domain (`example.com`).
    pub domain: String,
    /// Active DKIM key, once one exists.
    pub dkim: Option<DkimKey>,
}

/// DKIM key algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DkimAlgorithm {
    /// `rsa-sha256`.
    Rsa,
    /// `ed25519-sha256` (RFC 8463).
    Ed25519,
}

/// Where a DKIM private key is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DkimKey {
    /// Selector the signatures carry.
    pub selector: String,
    /// Key algorithm.
    pub algorithm: DkimAlgorithm,
    /// Secret holding the key.
    pub secret: String,
    /// Key inside the Secret's data.
    pub secret_key: String,
}

/// A RelayPool with defaults applied: everything the builders need.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    /// The object's identity.
    pub identity: PoolIdentity,
    /// EHLO name and certificate name.
    pub hostname: String,
    /// smtp-node image.
    pub image: String,
    /// Image pull policy; `None` leaves Kubernetes' default.
    pub image_pull_policy: Option<String>,
    /// Container resources.
    pub resources: Option<ResourceRequirements>,
    /// SMTP listeners, at least one.
    pub listeners: Vec<Listener>,
    /// Data centres, at least one, names unique.
    pub data_centres: Vec<DataCentre>,
    /// Queue settings.
    pub queue: Queue,
    /// Listener certificate, if TLS is configured.
    pub tls: Option<TlsSource>,
    /// Relay permissions.
    pub relay: Relay,
    /// Limits.
    pub limits: Limits,
    /// Domains this pool serves and signs for, sorted by domain.
    pub domains: Vec<SigningDomain>,
}

impl Pool {
    /// Total desired replicas over all data centres.
    pub fn total_replicas(&self) -> i32 {
        self.data_centres.iter().map(|dc| dc.replicas).sum()
    }
}
