//! The MailDomain controller: DKIM keys (generated and rotated, or the user's own), DNS
//! verification with the exact records to publish, and the domain's conditions.
//!
//! Pipeline per reconciliation (see [`reconcile`]): dereference the RelayPool and the
//! key Secrets → validate the spec ([`settings`]) → build and apply the key Secrets
//! ([`keys`], server-side apply with field manager [`FIELD_MANAGER`]) → check DNS through
//! the shared rate limit ([`crate::dns`]) → take a rotation step if one is due
//! ([`crate::dkim_keys`]) → compute conditions and events ([`status`]) → one status
//! patch, requeued for the next scheduled DNS check.
//!
//! For the RelayPool controller: `status.dkim.selector` and `status.dkim.secretName`
//! name the signing key; the Secret holds `private.key` (PKCS#8 PEM) and `public.key`
//! (see [`keys`] for the full layout).

pub mod duration;
pub mod keys;
pub mod reconcile;
pub mod settings;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::events::{Recorder, Reporter};

use crate::dkim_keys::KeyError;
use crate::dns::{CheckSchedule, DnsResolver, DomainCheck, ExpectedRecord};

/// Field manager for everything this controller writes.
pub const FIELD_MANAGER: &str = "smtpfleet-operator";
pub const GROUP: &str = "smtpfleet.io";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "smtpfleet.io/v1alpha1";
pub const KIND: &str = "MailDomain";

/// The clock rotation decisions use; tests inject their own.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Identity of a MailDomain object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailDomainRef {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

/// A DNS check kept until its scheduled successor.
#[derive(Debug, Clone)]
pub(crate) struct CachedCheck {
    pub expected: Vec<ExpectedRecord>,
    pub check: DomainCheck,
    pub due: tokio::time::Instant,
}

/// Shared by every reconciliation.
pub struct Context {
    pub client: kube::Client,
    /// Shared by all domains; carries the global query-rate limit.
    pub resolver: DnsResolver,
    pub schedule: CheckSchedule,
    pub recorder: Recorder,
    pub clock: Clock,
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    pub(crate) checks: Mutex<HashMap<(String, String), CachedCheck>>,
}

impl Context {
    pub fn new(client: kube::Client, resolver: DnsResolver, namespaces: Vec<String>) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.to_string(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        Self {
            client,
            resolver,
            schedule: CheckSchedule::default(),
            recorder,
            clock: Arc::new(Utc::now),
            namespaces,
            checks: Mutex::new(HashMap::new()),
        }
    }

    pub fn with_schedule(mut self, schedule: CheckSchedule) -> Self {
        self.schedule = schedule;
        self
    }

    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    fn resource(kind: &str, plural: &str) -> ApiResource {
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, kind), plural)
    }

    /// `spec.hostname` of a RelayPool, `None` if the pool does not exist.
    pub(crate) async fn pool_hostname(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<String>, Error> {
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            namespace,
            &Self::resource("RelayPool", "relaypools"),
        );
        let pool = api.get_opt(name).await.map_err(|source| Error::Read {
            what: format!("RelayPool {name}"),
            source,
        })?;
        Ok(pool.map(|p| {
            p.data
                .get("spec")
                .and_then(|s| s.get("hostname"))
                .and_then(|h| h.as_str())
                .unwrap_or_default()
                .to_string()
        }))
    }

    pub(crate) async fn patch_status(
        &self,
        object: &MailDomainRef,
        patch: serde_json::Value,
    ) -> Result<(), kube::Error> {
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &object.namespace,
            &Self::resource(KIND, "maildomains"),
        );
        api.patch_status(&object.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
    }
}

/// Why a reconciliation failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing {what}: {source}")]
    Write {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("generating a DKIM key: {0}")]
    KeyGeneration(#[source] KeyError),
    #[error("the key generation task failed: {0}")]
    Join(String),
}

impl Error {
    /// A label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Read { .. } => "read",
            Self::Write { .. } => "write",
            Self::KeyGeneration(_) | Self::Join(_) => "keygen",
        }
    }
}
