//! What the operator reports about a MailDomain.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::conditions::conditions_list_schema;
use crate::api::schema;

/// Observed state of a MailDomain.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::unwrap_descriptions, transform = schema::strip_defaults)]
pub struct MailDomainStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The DKIM key the pool signs with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dkim: Option<DkimStatus>,

    /// The DNS records the domain must publish, and what DNS answered at the last check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsStatus>,

    /// Recipients of the domain's mail delivered, deferred and bounced by the pool's
    /// nodes over the last hour and the last 24 hours, and the most frequent refusals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryStatus>,

    /// Current state of the domain: `Ready`, `DNSVerified`, `DKIMKeyReady`,
    /// `PoolBound` and `DeliveryHealthy`.
    #[serde(default)]
    #[schemars(transform = conditions_list_schema)]
    pub conditions: Vec<Condition>,

    /// The value of the `smtpfleet.io/reconcile-requested-at` annotation the last
    /// on-demand DNS check answered: a different value asks for one more check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
}

/// The DKIM key in use.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct DkimStatus {
    /// Selector the pool signs with.
    pub selector: String,

    /// Public key as published in the `p=` tag of the DKIM record (base64).
    pub public_key: String,

    /// When the key was generated or first seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Time>,

    /// Selector of the key a rotation will switch to, published ahead of use; absent
    /// outside a rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_selector: Option<String>,
}

/// Deliverability of the domain across the pool, from the nodes' counters (`GET
/// /admin/delivery`) as the operator sampled them. The windows start when the operator
/// started sampling: just after an operator restart they cover less than their span.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct DeliveryStatus {
    /// The last 60 minutes.
    pub last_hour: DeliveryWindow,

    /// The last 24 hours.
    pub last24_hours: DeliveryWindow,

    /// The most frequent refusals over the last 24 hours, most frequent first (at most
    /// five).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_refusals: Vec<DeliveryRefusal>,

    /// Nodes of the pool that answered at the last sampling.
    pub nodes_reporting: u32,

    /// Nodes of the pool that did not answer at the last sampling (their mail is counted
    /// once they answer again, unless they restarted meanwhile).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nodes_missing: u32,

    /// When the operator started sampling the pool: windows reach back no further.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_since: Option<Time>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Recipient counts over one window.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct DeliveryWindow {
    /// Recipients the next hop accepted.
    pub delivered: u64,
    /// Attempts that failed temporarily and will be retried (one recipient may count
    /// several times).
    pub deferred: u64,
    /// Recipients refused for good (a bounce went to the sender).
    pub bounced: u64,
    /// `bounced` in percent of `delivered + bounced`, one decimal; absent when neither
    /// happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounce_rate_percent: Option<f64>,
}

/// One kind of refusal: a result and the enhanced status code of the replies.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct DeliveryRefusal {
    /// `bounced` or `deferred`.
    pub result: String,
    /// RFC 3463 enhanced status code of the replies (`5.1.1`), or `none` when the
    /// receivers gave none.
    pub code: String,
    /// What the code means.
    pub meaning: String,
    /// Recipients (attempts, for `deferred`) refused so over the last 24 hours.
    pub count: u64,
    /// A few destination domains that answered so.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<String>,
}

/// Result of the DNS check.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct DnsStatus {
    /// Every record the domain owner must publish, with what DNS holds now.
    #[serde(default)]
    pub records: Vec<DnsRecordStatus>,

    /// When DNS was last queried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<Time>,
}

/// One record to publish and its check result.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct DnsRecordStatus {
    /// Record type.
    #[serde(rename = "type")]
    pub type_: DnsRecordType,

    /// Owner name of the record, fully qualified (`smtpfleet._domainkey.example.com`).
    pub name: String,

    /// The record value to publish.
    pub expected: String,

    /// What DNS returned, when it returned anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<String>,

    /// Outcome of the comparison.
    pub result: DnsCheckResult,

    /// What to do about a record that does not match, or why the lookup failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// DNS record type.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum DnsRecordType {
    /// Mail exchanger.
    #[serde(rename = "MX")]
    Mx,
    /// Text record (DKIM, SPF, DMARC, MTA-STS, TLS-RPT).
    #[serde(rename = "TXT")]
    Txt,
}

/// Outcome of checking one record.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum DnsCheckResult {
    /// DNS publishes the expected value.
    Match,
    /// DNS has no such record.
    Missing,
    /// DNS publishes a different value.
    Mismatch,
    /// The lookup failed (timeout, SERVFAIL); the record's state is unknown.
    Error,
}

/// Condition types of a MailDomain.
pub mod condition_types {
    /// The domain can send: key ready, pool bound, DNS verified.
    pub const READY: &str = "Ready";
    /// DNS publishes every required record as expected.
    pub const DNS_VERIFIED: &str = "DNSVerified";
    /// A DKIM key exists and the pool has it.
    pub const DKIM_KEY_READY: &str = "DKIMKeyReady";
    /// The RelayPool named in `spec.relayPoolRef` exists and serves the domain.
    pub const POOL_BOUND: &str = "PoolBound";

    /// All types the domain reconciler writes, in the order they are listed in a status.
    pub const ALL: [&str; 4] = [READY, DNS_VERIFIED, DKIM_KEY_READY, POOL_BOUND];
    /// The bounce rate over the last hour is under `spec.delivery.bounceRateThreshold`.
    /// Written by the pool's queue sampler, not by the domain reconciler, and not part
    /// of `Ready`: a domain whose mail bounces can still send.
    pub const DELIVERY_HEALTHY: &str = "DeliveryHealthy";
}

/// CamelCase reasons of MailDomain conditions.
pub mod reasons {
    /// Everything is in place (Ready).
    pub const DOMAIN_READY: &str = "DomainReady";
    /// Some prerequisite is missing; the message says which (Ready).
    pub const NOT_READY: &str = "NotReady";
    /// Every required record matches (DNSVerified).
    pub const RECORDS_MATCH: &str = "RecordsMatch";
    /// Some required records are not published (DNSVerified).
    pub const RECORDS_MISSING: &str = "RecordsMissing";
    /// Some records are published with other values (DNSVerified).
    pub const RECORDS_MISMATCH: &str = "RecordsMismatch";
    /// DNS lookups failed (DNSVerified = Unknown).
    pub const LOOKUP_FAILED: &str = "LookupFailed";
    /// DNS has not been checked yet (DNSVerified = Unknown).
    pub const CHECK_PENDING: &str = "CheckPending";
    /// The operator generated the key (DKIMKeyReady).
    pub const KEY_GENERATED: &str = "KeyGenerated";
    /// The key comes from `spec.dkim.privateKeySecretRef` (DKIMKeyReady).
    pub const KEY_PROVIDED: &str = "KeyProvided";
    /// A new key is published and waits for the overlap to pass (DKIMKeyReady).
    pub const KEY_ROTATING: &str = "KeyRotating";
    /// The Secret in `spec.dkim.privateKeySecretRef` does not exist (DKIMKeyReady).
    pub const KEY_SECRET_NOT_FOUND: &str = "KeySecretNotFound";
    /// The referenced Secret lacks the key or holds no usable private key (DKIMKeyReady).
    pub const KEY_SECRET_INVALID: &str = "KeySecretInvalid";
    /// The pool exists and has the domain (PoolBound).
    pub const POOL_FOUND: &str = "PoolFound";
    /// No RelayPool of that name in the namespace (PoolBound).
    pub const POOL_NOT_FOUND: &str = "PoolNotFound";
    /// Another MailDomain in the namespace claims the same domain (PoolBound, Ready).
    pub const DOMAIN_CONFLICT: &str = "DomainConflict";
    /// The spec cannot be acted on (Ready).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The bounce rate is at or under the threshold (DeliveryHealthy).
    pub const BOUNCE_RATE_NORMAL: &str = "BounceRateNormal";
    /// The bounce rate passed the threshold (DeliveryHealthy = False).
    pub const BOUNCE_RATE_HIGH: &str = "BounceRateHigh";
    /// Fewer recipients than `spec.delivery.minRecipients` in the last hour
    /// (DeliveryHealthy = Unknown).
    pub const TOO_FEW_RECIPIENTS: &str = "TooFewRecipients";
    /// The pool's nodes have not been sampled twice yet (DeliveryHealthy = Unknown).
    pub const AWAITING_SAMPLES: &str = "AwaitingSamples";
}
