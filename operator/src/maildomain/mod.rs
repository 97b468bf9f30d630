//! The MailDomain controller: DKIM keys (generated and rotated, or the user's own), DNS
//! verification with the exact records to publish, and the domain's conditions.
//!
//! Pipeline per reconciliation (see [`reconcile`]): dereference the RelayPool, competing
//! MailDomains and the key Secrets → validate the spec ([`validate`]) → build and apply
//! the key Secrets ([`keys`], server-side apply with field manager [`FIELD_MANAGER`]) →
//! check DNS through the shared rate limit ([`crate::dns`]) → take a rotation step if
//! one is due ([`crate::dkim_keys`]) → compute conditions and events ([`status`]) → one
//! status apply, requeued for the next scheduled DNS check or key deadline.
//!
//! # For the RelayPool controller
//!
//! The signing key of a MailDomain is in the Secret named
//! [`active_key_secret_name`]`(maildomain)` (that is `<maildomain>-dkim-<status.dkim.selector>`,
//! see [`crate::dkim_keys::secret_name`]), in the MailDomain's namespace, with
//! `private.key` (PKCS#8 PEM) and `public.key` (SubjectPublicKeyInfo PEM); the full layout
//! is in [`keys`]. User-provided keys are copied into such a Secret too, so the rule
//! holds for every domain. Only domains whose `PoolBound` condition is True should be
//! served.

pub mod controller;
pub mod keys;
pub mod reconcile;
pub mod settings;
pub mod status;
pub mod validate;

pub use controller::{error_policy, reconcile, run};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use kube::ResourceExt as _;
use kube::api::{Api, ListParams, Patch, PatchParams};

use crate::api::mail_domain::{MailDomain, MailDomainStatus};
use crate::api::relay_pool::RelayPool;
use crate::dkim_keys::KeyError;
use crate::dns::{
    CheckSchedule, DnsResolver, DomainCheck, ExpectedRecord, QueryLimiter, ResolverError,
    ResolverSettings,
};

/// Field manager for everything this controller writes.
pub const FIELD_MANAGER: &str = "smtpfleet-operator";
pub const API_VERSION: &str = crate::api::API_VERSION;
pub const KIND: &str = "MailDomain";

/// The clock rotation decisions use; tests inject their own.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The Secret holding the key `maildomain` signs with, once it has one.
pub fn active_key_secret_name(maildomain: &MailDomain) -> Option<String> {
    let selector = &maildomain.status.as_ref()?.dkim.as_ref()?.selector;
    Some(crate::dkim_keys::secret_name(
        &maildomain.name_any(),
        selector,
    ))
}

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
    pub checked_at: DateTime<Utc>,
    pub due: tokio::time::Instant,
}

/// Shared by every reconciliation.
pub struct Context {
    pub client: kube::Client,
    /// Shared by all domains; carries the global query-rate limit.
    pub resolver: DnsResolver,
    pub schedule: CheckSchedule,
    /// Shared by all domains, so that its memory is bounded once (see [`crate::events`]).
    pub events: crate::events::Publisher,
    pub clock: Clock,
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    pub(crate) checks: Mutex<HashMap<(String, String), CachedCheck>>,
    /// Booked turns at the query-rate limit of checks that could not run at once: the
    /// domain is reconciled again when its turn comes, instead of waiting for it in a
    /// reconciliation that holds what it read.
    pub(crate) bookings: Mutex<HashMap<(String, String), tokio::time::Instant>>,
}

impl Context {
    /// The context `main` builds from the operator's flags: `nameservers` from
    /// `--dns-nameserver` (UDP and TCP; empty means the system resolver configuration),
    /// `query_rate` from `--dns-query-rate` (queries per second across all domains; 0
    /// means unlimited), `namespaces` from the namespace flag (empty means all).
    pub fn from_flags(
        client: kube::Client,
        nameservers: Vec<SocketAddr>,
        query_rate: u32,
        namespaces: Vec<String>,
    ) -> Result<Self, ResolverError> {
        let limiter = Arc::new(QueryLimiter::new(query_rate));
        let resolver = DnsResolver::new(&nameservers, &ResolverSettings::default(), limiter)?;
        Ok(Self::new(client, resolver, namespaces))
    }

    pub fn new(client: kube::Client, resolver: DnsResolver, namespaces: Vec<String>) -> Self {
        let events = crate::events::Publisher::new(client.clone(), crate::events::reporter());
        Self {
            client,
            resolver,
            schedule: CheckSchedule::default(),
            events,
            clock: Arc::new(Utc::now),
            namespaces,
            checks: Mutex::new(HashMap::new()),
            bookings: Mutex::new(HashMap::new()),
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

    /// Forgets a deleted domain's cached DNS check and booked turn.
    pub(crate) fn forget(&self, object: &MailDomainRef) {
        let key = (object.namespace.clone(), object.name.clone());
        if let Ok(mut m) = self.checks.lock() {
            m.remove(&key);
        }
        if let Ok(mut m) = self.bookings.lock() {
            m.remove(&key);
        }
    }

    /// `spec.hostname` of a RelayPool, `None` if the pool does not exist.
    pub(crate) async fn pool_hostname(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<String>, Error> {
        let api: Api<RelayPool> = Api::namespaced(self.client.clone(), namespace);
        let pool = api.get_opt(name).await.map_err(|source| Error::Read {
            what: format!("RelayPool {name}"),
            source,
        })?;
        Ok(pool.map(|p| p.spec.hostname))
    }

    /// Other MailDomains in `namespace` that claim `domain`.
    pub(crate) async fn domain_claims(
        &self,
        namespace: &str,
        domain: &str,
    ) -> Result<Vec<MailDomain>, Error> {
        let api: Api<MailDomain> = Api::namespaced(self.client.clone(), namespace);
        let read = |source| Error::Read {
            what: "MailDomains".into(),
            source,
        };
        // `spec.domain` is a selectable field of the CRD; an API server that does not
        // support selectable fields gets the whole list, filtered here.
        let listed = match api
            .list(&ListParams::default().fields(&format!("spec.domain={domain}")))
            .await
        {
            Ok(list) => list.items,
            Err(kube::Error::Api(e)) if e.code == 400 => {
                api.list(&ListParams::default()).await.map_err(read)?.items
            }
            Err(e) => return Err(read(e)),
        };
        Ok(listed
            .into_iter()
            .filter(|md| md.spec.domain.eq_ignore_ascii_case(domain))
            .collect())
    }

    pub(crate) async fn apply_status(
        &self,
        object: &MailDomainRef,
        status: &MailDomainStatus,
    ) -> Result<(), kube::Error> {
        let api: Api<MailDomain> = Api::namespaced(self.client.clone(), &object.namespace);
        let patch = serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": KIND,
            "status": status,
        });
        api.patch_status(
            &object.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
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
    #[error("the MailDomain has no {0}")]
    MissingMetadata(&'static str),
}

impl Error {
    /// A label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Read { .. } => "read",
            Self::Write { .. } => "write",
            Self::KeyGeneration(_) | Self::Join(_) => "keygen",
            Self::MissingMetadata(_) => "metadata",
        }
    }
}
