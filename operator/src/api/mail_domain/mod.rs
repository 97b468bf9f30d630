//! `MailDomain`: a sending domain served by a RelayPool.
//!
//! The operator generates (or takes) the domain's DKIM key, gives it to the bound pool
//! for signing, and checks DNS for the records the domain owner must publish: DKIM,
//! SPF, DMARC, MTA-STS and TLS-RPT. `status.dns.records` lists them exactly.

mod resolve;
mod status;

/// Annotation asking for a DNS check now: set it to any new value (the time, by
/// convention: `kubectl annotate maildomain/x smtpfleet.io/reconcile-requested-at="$(date
/// -u +%FT%TZ)" --overwrite`) and the domain is checked once at the next free slot of the
/// DNS query-rate limit; `status.lastHandledReconcileAt` then shows the value answered.
pub const RECONCILE_REQUESTED_AT: &str = "smtpfleet.io/reconcile-requested-at";

pub use status::{
    DeliveryRefusal, DeliveryStatus, DeliveryWindow, DkimStatus, DnsCheckResult, DnsRecordStatus,
    DnsRecordType, DnsStatus, MailDomainStatus, condition_types, reasons,
};

use kube::CustomResource;
use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};

use super::patterns;
use super::schema::{self, CelRule};

/// A mail domain the operator sets up for sending through a RelayPool.
// Each `printcolumn(...)` repeats `type_ = "string"`; clippy reads the repetition as a
// duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "smtpfleet.io",
    version = "v1alpha1",
    kind = "MailDomain",
    plural = "maildomains",
    singular = "maildomain",
    shortname = "md",
    category = "smtpfleet",
    namespaced,
    status = "MailDomainStatus",
    doc = "MailDomain is a sending domain served by a RelayPool: its DKIM key, and the DNS records (DKIM, SPF, DMARC, MTA-STS, TLS-RPT) the operator expects and verifies.",
    selectable = ".spec.domain",
    selectable = ".spec.relayPoolRef.name",
    printcolumn(
        name = "Domain",
        type_ = "string",
        json_path = ".spec.domain",
        description = "The mail domain"
    ),
    printcolumn(
        name = "Pool",
        type_ = "string",
        json_path = ".spec.relayPoolRef.name",
        description = "RelayPool that sends for the domain"
    ),
    printcolumn(
        name = "DNS",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"DNSVerified\")].status",
        description = "Whether DNS publishes every expected record"
    ),
    printcolumn(
        name = "DKIM",
        type_ = "string",
        json_path = ".status.dkim.selector",
        description = "DKIM selector in use"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Status of the Ready condition"
    ),
    printcolumn(
        name = "Delivered",
        type_ = "integer",
        json_path = ".status.delivery.lastHour.delivered",
        description = "Recipients delivered over the last hour, across the pool's nodes"
    ),
    printcolumn(
        name = "Bounce%",
        type_ = "number",
        json_path = ".status.delivery.lastHour.bounceRatePercent",
        description = "Bounced recipients over the last hour, in percent of those delivered or bounced"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct MailDomainSpec {
    /// The mail domain, lower case, as it appears after `@` in sender addresses
    /// (`example.com`). Cannot be changed: create another MailDomain instead.
    #[schemars(length(min = 3, max = 253), regex(pattern = patterns::FQDN), transform = immutable_domain)]
    pub domain: String,

    /// The RelayPool, in the same namespace, that sends mail for this domain and signs
    /// it with the domain's DKIM key.
    pub relay_pool_ref: RelayPoolReference,

    /// DKIM signing key: generated and rotated by the operator, or brought by the user.
    #[serde(default, skip_serializing_if = "DkimSpec::is_default")]
    #[schemars(extend("default" = {}))]
    pub dkim: DkimSpec,

    /// DMARC policy to publish at `_dmarc.<domain>`. No DMARC record is expected when
    /// omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmarc: Option<DmarcSpec>,

    /// SPF record to publish at the domain. When omitted, the expected record authorises
    /// the pool's hostname (`a:<hostname>`) and ends with `~all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spf: Option<SpfSpec>,

    /// MTA-STS policy (RFC 8461) announced at `_mta-sts.<domain>`. Not expected when
    /// omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mta_sts: Option<MtaStsSpec>,

    /// TLS reporting (RFC 8460) record to publish at `_smtp._tls.<domain>`. Not expected
    /// when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_rpt: Option<TlsRptSpec>,

    /// When the domain's delivery counts as unhealthy (the `DeliveryHealthy`
    /// condition). The defaults apply when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

/// Thresholds of the `DeliveryHealthy` condition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::unwrap_descriptions, transform = delivery_rules)]
pub struct DeliverySpec {
    /// Bounce rate over the last hour, in percent of the recipients delivered or
    /// bounced, above which `DeliveryHealthy` turns False and a Warning Event is
    /// recorded. More than 0, at most 100. 5 when omitted: receivers start to distrust
    /// senders whose mail bounces much more than that.
    #[serde(default = "default_bounce_rate_threshold")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub bounce_rate_threshold: f64,

    /// Recipients delivered or bounced over the last hour below which the bounce rate
    /// is not judged (`DeliveryHealthy` is Unknown): two bounces out of three say
    /// little. 20 when omitted.
    #[serde(default = "default_min_recipients")]
    #[schemars(range(min = 1, max = 1000000))]
    pub min_recipients: u32,
}

/// Default of `spec.delivery.bounceRateThreshold`, in percent.
pub const DEFAULT_BOUNCE_RATE_THRESHOLD: f64 = 5.0;
/// Default of `spec.delivery.minRecipients`.
pub const DEFAULT_MIN_RECIPIENTS: u32 = 20;

fn default_bounce_rate_threshold() -> f64 {
    DEFAULT_BOUNCE_RATE_THRESHOLD
}
fn default_min_recipients() -> u32 {
    DEFAULT_MIN_RECIPIENTS
}

impl Default for DeliverySpec {
    fn default() -> Self {
        Self {
            bounce_rate_threshold: DEFAULT_BOUNCE_RATE_THRESHOLD,
            min_recipients: DEFAULT_MIN_RECIPIENTS,
        }
    }
}

fn delivery_rules(schema: &mut Schema) {
    schema::push_rules(
        schema,
        [CelRule::new(
            "!has(self.bounceRateThreshold) || self.bounceRateThreshold > 0.0",
            "spec.delivery.bounceRateThreshold must be more than 0 (percent): with 0 every bounce would make the domain unhealthy",
        )
        .field_path(".bounceRateThreshold")],
    );
}

/// Reference to a RelayPool in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct RelayPoolReference {
    /// Name of the RelayPool.
    #[schemars(length(min = 1, max = 63), regex(pattern = patterns::DNS_LABEL))]
    pub name: String,
}

/// DKIM key settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = dkim_rules, transform = schema::unwrap_descriptions)]
pub struct DkimSpec {
    /// DKIM selector: the key is published at `<selector>._domainkey.<domain>`. With
    /// `rotateAfter`, each new key is published under a selector derived from this one;
    /// `status.dkim.selector` shows the selector in use.
    #[serde(default = "default_selector")]
    #[schemars(length(min = 1, max = 40), regex(pattern = patterns::DNS_LABEL))]
    pub selector: String,

    /// Key algorithm of generated keys: `rsa-2048` (understood by every verifier) or
    /// `ed25519` (RFC 8463, smaller; not every verifier supports it yet).
    #[serde(default)]
    pub algorithm: DkimAlgorithm,

    /// Rotate generated keys after this long, as a duration such as `90d`. Keys are not
    /// rotated when omitted. Cannot be combined with `privateKeySecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32), regex(pattern = patterns::DURATION))]
    pub rotate_after: Option<String>,

    /// During a rotation, how long the new key is published (and the old one kept
    /// signing) before signing switches, so that DNS caches see the new record first.
    #[serde(default = "default_rotation_overlap")]
    #[schemars(length(min = 2, max = 32), regex(pattern = patterns::DURATION))]
    pub rotation_overlap: String,

    /// Use this private key (PEM, PKCS#8 or PKCS#1) instead of generating one. The
    /// operator never rotates a user-supplied key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_secret_ref: Option<DkimKeySecretReference>,
}

/// Key algorithm of a DKIM key.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DkimAlgorithm {
    /// RSA with a 2048-bit modulus, `rsa-sha256`.
    #[default]
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    /// Ed25519, `ed25519-sha256` (RFC 8463).
    #[serde(rename = "ed25519")]
    Ed25519,
}

/// A key of a Secret in the MailDomain's namespace holding a DKIM private key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct DkimKeySecretReference {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = patterns::DNS_SUBDOMAIN))]
    pub name: String,

    /// Key inside the Secret's data that holds the PEM private key.
    #[serde(default = "default_private_key_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = patterns::SECRET_KEY))]
    pub key: String,
}

/// DMARC record settings (RFC 7489).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct DmarcSpec {
    /// What receivers should do with mail that fails DMARC: `none` (monitor only),
    /// `quarantine` or `reject`.
    #[serde(default)]
    pub policy: DmarcPolicy,

    /// Where receivers send aggregate reports: `mailto:` URIs or plain addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 8),
        inner(length(min = 3, max = 256), regex(pattern = patterns::MAILTO_URI))
    )]
    pub rua: Vec<String>,

    /// Percentage of failing mail the policy applies to, 0 to 100. 100 when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub pct: Option<i32>,
}

/// DMARC policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DmarcPolicy {
    /// Monitor only.
    #[default]
    None,
    /// Treat failing mail as suspicious.
    Quarantine,
    /// Reject failing mail.
    Reject,
}

/// SPF record settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct SpfSpec {
    /// Extra mechanisms placed after the pool's own and before the final `all`, for
    /// other services that send for the domain (`include:_spf.example.net`,
    /// `ip4:192.0.2.0/24`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(length(min = 1, max = 255), regex(pattern = patterns::SPF_MECHANISM))
    )]
    pub mechanisms: Vec<String>,

    /// Result for senders no mechanism matched: `softfail` (`~all`), `fail` (`-all`) or
    /// `neutral` (`?all`).
    #[serde(default)]
    pub all: SpfAll,
}

/// Final `all` qualifier of the SPF record.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SpfAll {
    /// `~all`.
    #[default]
    Softfail,
    /// `-all`.
    Fail,
    /// `?all`.
    Neutral,
}

/// MTA-STS settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct MtaStsSpec {
    /// Policy mode: `testing` (report failures, deliver anyway), `enforce` (refuse
    /// delivery without valid TLS) or `none` (withdraw a policy).
    #[serde(default)]
    pub mode: MtaStsMode,

    /// How long senders may cache the policy, as a duration such as `7d` (RFC 8461
    /// allows at most one year).
    #[serde(default = "default_mta_sts_max_age")]
    #[schemars(length(min = 2, max = 32), regex(pattern = patterns::DURATION))]
    pub max_age: String,
}

/// MTA-STS policy mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MtaStsMode {
    /// Report failures but deliver anyway.
    #[default]
    Testing,
    /// Refuse delivery without a valid TLS connection to a listed MX.
    Enforce,
    /// No policy in force.
    None,
}

/// TLS reporting settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct TlsRptSpec {
    /// Where senders send TLS reports: `mailto:` or `https://` URIs, or plain addresses.
    #[schemars(
        length(min = 1, max = 8),
        inner(length(min = 3, max = 256), regex(pattern = patterns::TLSRPT_URI))
    )]
    pub rua: Vec<String>,
}

fn default_selector() -> String {
    "smtpfleet".to_owned()
}
fn default_rotation_overlap() -> String {
    "7d".to_owned()
}
fn default_private_key_key() -> String {
    "private.key".to_owned()
}
fn default_mta_sts_max_age() -> String {
    "7d".to_owned()
}

impl Default for DkimSpec {
    fn default() -> Self {
        Self {
            selector: default_selector(),
            algorithm: DkimAlgorithm::default(),
            rotate_after: None,
            rotation_overlap: default_rotation_overlap(),
            private_key_secret_ref: None,
        }
    }
}

impl DkimSpec {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Default for MtaStsSpec {
    fn default() -> Self {
        Self {
            mode: MtaStsMode::default(),
            max_age: default_mta_sts_max_age(),
        }
    }
}

fn immutable_domain(schema: &mut Schema) {
    schema::push_rules(
        schema,
        [CelRule::new(
            "self == oldSelf",
            "spec.domain is immutable: create another MailDomain for another domain",
        )
        .reason("FieldValueForbidden")],
    );
}

fn dkim_rules(schema: &mut Schema) {
    schema::push_rules(
        schema,
        [CelRule::new(
            "!(has(self.privateKeySecretRef) && has(self.rotateAfter))",
            "spec.dkim.privateKeySecretRef and spec.dkim.rotateAfter are mutually exclusive: the operator does not rotate a key it did not generate",
        )
        .field_path(".rotateAfter")
        .reason("FieldValueForbidden")],
    );
}
