//! One reconciliation of a MailDomain: dereference → validate → keys (build + apply) →
//! DNS check → rotation → status. Decisions are the pure functions of the sibling
//! modules; this file only reads, writes and sequences.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference};
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};

use super::keys::{
    KeySource, StoredKey, StoredKeys, build_key_secret, key_secret_selector, new_stored_key,
    read_key_ring, secret_up_to_date,
};
use super::settings::{DomainSettings, InvalidSpec, KeySettings, publish_spec, rotation_policy};
use super::status::{
    DnsState, EventSpec, KeyOrigin, KeyState, PoolState, StatusInputs, conditions,
    invalid_spec_conditions, k8s_time, own_part, rotation_event, transition_events,
};
use super::validate::settings_from_spec;
use super::{Context, Error, FIELD_MANAGER, MailDomainRef};
use crate::api::mail_domain::{
    DkimStatus, DnsCheckResult, DnsRecordStatus, DnsRecordType, DnsStatus, MailDomain,
    MailDomainStatus, RECONCILE_REQUESTED_AT, reasons,
};
use crate::dkim_keys::{
    DkimKey, KeyAlgorithm, KeyMeta, KeyRing, RetiringKey, RotationAction, apply_rotation,
    decide_rotation,
};
use crate::dns::{
    CheckResult, DomainCheck, ExpectedRecord, RecordType, check_domain, expected_records,
    next_check_delay, question_count,
};

/// What the reconciler needs to know about a MailDomain.
#[derive(Debug, Clone)]
pub struct MailDomainView {
    pub object: MailDomainRef,
    pub generation: Option<i64>,
    /// Orders competing claims on one domain: the oldest wins.
    pub created: Option<DateTime<Utc>>,
    /// The spec, validated; or the first problem found.
    pub settings: Result<DomainSettings, InvalidSpec>,
    /// `spec.relayPoolRef.name`.
    pub relay_pool: String,
    /// The current status, to carry over transition times and skip no-op writes.
    pub status: Option<MailDomainStatus>,
    /// The [`RECONCILE_REQUESTED_AT`] annotation: a value not yet answered asks for a
    /// DNS check now.
    pub check_requested: Option<String>,
}

impl MailDomainView {
    pub fn from_object(md: &MailDomain) -> Result<Self, Error> {
        Ok(Self {
            object: MailDomainRef {
                name: md.name_any(),
                namespace: md.namespace().ok_or(Error::MissingMetadata("namespace"))?,
                uid: md.uid().ok_or(Error::MissingMetadata("uid"))?,
            },
            generation: md.metadata.generation,
            created: md
                .metadata
                .creation_timestamp
                .as_ref()
                .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0)),
            settings: settings_from_spec(&md.spec),
            relay_pool: md.spec.relay_pool_ref.name.clone(),
            status: md.status.clone(),
            check_requested: md.annotations().get(RECONCILE_REQUESTED_AT).cloned(),
        })
    }

    /// The check request not answered yet, if any.
    fn unanswered_request(&self) -> Option<&str> {
        let handled = self
            .status
            .as_ref()
            .and_then(|s| s.last_handled_reconcile_at.as_deref());
        self.check_requested
            .as_deref()
            .filter(|requested| Some(*requested) != handled)
    }

    fn conditions(&self) -> &[Condition] {
        self.status
            .as_ref()
            .map_or(&[], |s| s.conditions.as_slice())
    }
}

impl MailDomainRef {
    pub fn owner_reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: super::API_VERSION.to_string(),
            kind: super::KIND.to_string(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    pub fn object_reference(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some(super::API_VERSION.to_string()),
            kind: Some(super::KIND.to_string()),
            name: Some(self.name.clone()),
            namespace: Some(self.namespace.clone()),
            uid: Some(self.uid.clone()),
            ..Default::default()
        }
    }
}

/// What dereferencing found.
struct Dereferenced {
    pool: PoolState,
    /// Set only when the domain is bound (pool exists, no older claim on the domain).
    hostname: Option<String>,
    secrets: Vec<Secret>,
    /// The user's private key PEM, or why it cannot be read (reason, message).
    user_key: Option<Result<String, (String, String)>>,
}

async fn dereference(
    ctx: &Context,
    view: &MailDomainView,
    settings: &DomainSettings,
) -> Result<Dereferenced, Error> {
    let ns = &view.object.namespace;
    let older_claim = ctx
        .domain_claims(ns, &settings.domain)
        .await?
        .into_iter()
        .filter(|md| {
            md.uid().as_deref() != Some(view.object.uid.as_str())
                && md.metadata.deletion_timestamp.is_none()
        })
        .map(|md| {
            let created = md
                .metadata
                .creation_timestamp
                .as_ref()
                .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0));
            (created, md.name_any())
        })
        .filter(|claim| *claim < (view.created, view.object.name.clone()))
        .min();
    let (pool, hostname) = if let Some((_, other)) = older_claim {
        (
            PoolState::Conflict {
                other,
                domain: settings.domain.clone(),
            },
            None,
        )
    } else {
        match ctx.pool_hostname(ns, &view.relay_pool).await? {
            Some(h) => (
                PoolState::Bound {
                    name: view.relay_pool.clone(),
                    hostname: h.clone(),
                },
                Some(h),
            ),
            None => (
                PoolState::NotFound {
                    name: view.relay_pool.clone(),
                    namespace: ns.clone(),
                },
                None,
            ),
        }
    };
    let secrets_api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secrets = secrets_api
        .list(&ListParams::default().labels(&key_secret_selector(&view.object.name)))
        .await
        .map_err(|source| Error::Read {
            what: "DKIM key Secrets".into(),
            source,
        })?
        .items;
    let user_key = match &settings.key {
        KeySettings::UserProvided {
            secret_name,
            secret_key,
            ..
        } => Some(read_user_key(&secrets_api, secret_name, secret_key).await?),
        KeySettings::Generated { .. } => None,
    };
    Ok(Dereferenced {
        pool,
        hostname,
        secrets,
        user_key,
    })
}

async fn read_user_key(
    api: &Api<Secret>,
    name: &str,
    key: &str,
) -> Result<Result<String, (String, String)>, Error> {
    let secret = api.get_opt(name).await.map_err(|source| Error::Read {
        what: format!("Secret {name}"),
        source,
    })?;
    let Some(secret) = secret else {
        return Ok(Err((
            reasons::KEY_SECRET_NOT_FOUND.into(),
            format!("Secret {name} named by spec.dkim.privateKeySecretRef does not exist"),
        )));
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone());
    Ok(match value.map(String::from_utf8) {
        Some(Ok(pem)) => Ok(pem),
        Some(Err(_)) => Err((
            reasons::KEY_SECRET_INVALID.into(),
            format!("key {key} of Secret {name} is not PEM text"),
        )),
        None => Err((
            reasons::KEY_SECRET_INVALID.into(),
            format!("Secret {name} has no key {key} (spec.dkim.privateKeySecretRef.key)"),
        )),
    })
}

/// Reconciles one MailDomain.
pub async fn reconcile_view(view: &MailDomainView, ctx: &Arc<Context>) -> Result<Action, Error> {
    let now = ctx.now();
    let mut events: Vec<EventSpec> = Vec::new();

    let settings = match &view.settings {
        Ok(s) => s.clone(),
        Err(invalid) => {
            let conds = invalid_spec_conditions(
                &invalid.to_string(),
                view.generation,
                view.conditions(),
                now,
            );
            events.extend(transition_events(view.conditions(), &conds));
            let mut status = view.status.clone().unwrap_or_default();
            status.observed_generation = view.generation;
            status.conditions = conds;
            write_status(ctx, view, status).await?;
            publish_events(ctx, view, &events).await;
            return Ok(Action::await_change());
        }
    };

    let deref = dereference(ctx, view, &settings).await?;
    let mut stored = read_key_ring(&deref.secrets, now);
    for (name, why) in &stored.unusable {
        tracing::warn!(secret = %name, reason = %why, "ignoring an unusable DKIM key Secret");
    }
    // The key Secrets as they are after this reconciliation's own writes.
    let mut secrets = deref.secrets.clone();
    let conflict = matches!(deref.pool, PoolState::Conflict { .. });

    // Keys that do not depend on DNS: the first generated key, or the user's key.
    let mut key_failure: Option<(String, String)> = None;
    let policy = rotation_policy(&settings.key);
    match (&settings.key, &deref.user_key) {
        _ if conflict => {}
        (KeySettings::UserProvided { selector, .. }, Some(Ok(pem))) => {
            match DkimKey::from_private_key_pem(pem) {
                Ok(key) => {
                    let ring = adopt_user_key(&stored, selector, &key, now);
                    if ring != stored.ring || !user_key_stored(&stored, selector, &key) {
                        let mut keys = stored.keys.clone();
                        keys.insert(
                            selector.clone(),
                            new_stored_key(&view.object.name, selector, key, KeySource::User),
                        );
                        (stored, secrets) = persist(ctx, view, &secrets, ring, keys).await?;
                        events.push(EventSpec {
                            warning: false,
                            reason: "DKIMKeyImported".into(),
                            note: format!(
                                "signing with the key from spec.dkim.privateKeySecretRef under \
                                 selector {selector}"
                            ),
                        });
                    }
                }
                Err(e) => {
                    key_failure = Some((
                        reasons::KEY_SECRET_INVALID.into(),
                        format!("the key in spec.dkim.privateKeySecretRef cannot be used: {e}"),
                    ))
                }
            }
        }
        (KeySettings::UserProvided { .. }, Some(Err(failure))) => {
            key_failure = Some(failure.clone())
        }
        (KeySettings::UserProvided { .. }, None) => {}
        (KeySettings::Generated { .. }, _) => {
            if let Some(policy) = &policy
                && stored.ring.active.is_none()
            {
                let action = decide_rotation(policy, &stored.ring, false, now);
                (stored, secrets) =
                    carry_out(ctx, view, &secrets, &stored, &action, policy.algorithm, now).await?;
                events.extend(rotation_event(&action));
            }
        }
    }

    // DNS, then rotation steps that depend on it; a step that changes the published keys
    // is followed by a check of the new set (cached when the records did not change).
    let mut rotation: Option<RotationAction> = None;
    let requested = view.unanswered_request().map(str::to_owned);
    let plan = plan_dns(
        ctx,
        view,
        &settings,
        deref.hostname.as_deref(),
        &stored,
        requested.is_some(),
    );
    // A domain seen for the first time gets its status (key, binding) before its first
    // DNS check, which may wait briefly for the query-rate limit: the pool signs with
    // the key as soon as the status names it. (A check that has to wait longer is
    // booked instead, and the status below is written at once.)
    let first_check = view.status.as_ref().is_none_or(|s| s.dns.is_none());
    if first_check && matches!(plan, DnsPlan::Run { .. }) {
        let parts = StatusParts {
            settings: &settings,
            pool: &deref.pool,
            stored: &stored,
            key_failure: &key_failure,
            conflict,
            rotation: None,
            check: None,
            not_checked: CHECK_QUEUED,
            handled: view
                .status
                .as_ref()
                .and_then(|s| s.last_handled_reconcile_at.clone()),
        };
        let (interim, _) = compose_status(view, &parts, now);
        write_status(ctx, view, interim).await?;
    }
    let mut dns = carry_out_dns(ctx, view, plan, &stored).await;
    let answered = requested.is_some() && dns.fresh;
    if let Some(policy) = policy.as_ref().filter(|_| !conflict) {
        for _ in 0..4 {
            let next_published = match (&stored.ring.next, &dns.shown) {
                (Some(next), Some(c)) => c.check.dkim_published(&next.selector),
                _ => false,
            };
            let action = decide_rotation(policy, &stored.ring, next_published, now);
            rotation = Some(action.clone());
            if !action.changes_keys() {
                break;
            }
            (stored, secrets) =
                carry_out(ctx, view, &secrets, &stored, &action, policy.algorithm, now).await?;
            events.extend(rotation_event(&action));
            let plan = plan_dns(
                ctx,
                view,
                &settings,
                deref.hostname.as_deref(),
                &stored,
                false,
            );
            dns = carry_out_dns(ctx, view, plan, &stored).await;
        }
    }
    let check = dns.shown;

    if let Some(value) = requested.as_deref().filter(|_| answered) {
        tracing::info!(
            namespace = %view.object.namespace,
            maildomain = %view.object.name,
            request = value,
            "DNS checked on request"
        );
    }
    let handled = match &requested {
        Some(value) if answered => Some(value.clone()),
        _ => view
            .status
            .as_ref()
            .and_then(|s| s.last_handled_reconcile_at.clone()),
    };
    let parts = StatusParts {
        settings: &settings,
        pool: &deref.pool,
        stored: &stored,
        key_failure: &key_failure,
        conflict,
        rotation: rotation.as_ref(),
        check: check.as_ref(),
        not_checked: if dns.queued {
            CHECK_QUEUED
        } else {
            "DNS is checked once the domain is bound to its RelayPool: the expected records \
             depend on the pool's hostname"
        },
        handled,
    };
    let (status, transitions) = compose_status(view, &parts, now);
    events.extend(transitions);
    write_status(ctx, view, status).await?;
    publish_events(ctx, view, &events).await;

    // Requeue at the next DNS check (or the booked turn), or sooner when the key ring
    // has a deadline.
    let mut delay = dns
        .next
        .unwrap_or(ctx.schedule.unverified_interval.max(Duration::from_secs(1)));
    if let Some(at) = rotation.as_ref().and_then(RotationAction::deadline) {
        let until = (at - now).to_std().unwrap_or(Duration::ZERO);
        delay = delay.min(until.max(Duration::from_secs(1)));
    }
    Ok(Action::requeue(delay))
}

/// What a status is made of.
struct StatusParts<'a> {
    settings: &'a DomainSettings,
    pool: &'a PoolState,
    stored: &'a StoredKeys,
    key_failure: &'a Option<(String, String)>,
    conflict: bool,
    rotation: Option<&'a RotationAction>,
    check: Option<&'a CheckOutcome>,
    /// Why DNS was not checked, when `check` is `None`.
    not_checked: &'a str,
    handled: Option<String>,
}

/// The status, and the Events its condition changes call for.
fn compose_status(
    view: &MailDomainView,
    parts: &StatusParts<'_>,
    now: DateTime<Utc>,
) -> (MailDomainStatus, Vec<EventSpec>) {
    let key_state = match (parts.key_failure, parts.stored.active()) {
        _ if parts.conflict => KeyState::Failed {
            reason: reasons::DOMAIN_CONFLICT.into(),
            message: "keys are not managed while an older MailDomain claims the same domain".into(),
        },
        (Some((reason, message)), _) => KeyState::Failed {
            reason: reason.clone(),
            message: message.clone(),
        },
        (None, Some((meta, key))) => KeyState::Active {
            selector: meta.selector.clone(),
            origin: match (&parts.settings.key, key.source) {
                (KeySettings::UserProvided { secret_name, .. }, KeySource::User) => {
                    KeyOrigin::Provided {
                        secret: secret_name.clone(),
                    }
                }
                _ => KeyOrigin::Generated,
            },
            rotation: parts.rotation.cloned(),
        },
        (None, None) => KeyState::Failed {
            reason: reasons::NOT_READY.into(),
            message: "no signing key yet".into(),
        },
    };
    let dns_state = match parts.check {
        Some(c) => DnsState::Checked(c.check.clone()),
        None => DnsState::NotChecked {
            message: parts.not_checked.to_owned(),
        },
    };
    let inputs = StatusInputs {
        generation: view.generation,
        pool: parts.pool.clone(),
        keys: key_state,
        dns: dns_state,
    };
    let conds = conditions(&inputs, view.conditions(), now);
    let events = transition_events(view.conditions(), &conds);
    let mut status = build_status(
        view.generation,
        if parts.conflict {
            None
        } else {
            Some(parts.stored)
        },
        parts.check,
        conds,
    );
    status.last_handled_reconcile_at = parts.handled.clone();
    (status, events)
}

fn user_key_stored(stored: &StoredKeys, selector: &str, key: &DkimKey) -> bool {
    stored
        .keys
        .get(selector)
        .is_some_and(|s| s.key == *key && s.source == KeySource::User)
}

/// The ring after adopting the user's key under `selector`: it becomes the signing key;
/// a previous signing key under another selector is kept for the default overlap.
fn adopt_user_key(
    stored: &StoredKeys,
    selector: &str,
    key: &DkimKey,
    now: DateTime<Utc>,
) -> KeyRing {
    let mut ring = stored.ring.clone();
    let same = ring.active.as_ref().is_some_and(|a| a.selector == selector)
        && user_key_stored(stored, selector, key);
    if same {
        return ring;
    }
    let previous = ring.active.take();
    ring.next = None;
    ring.next_published_at = None;
    ring.retiring.retain(|r| r.key.selector != selector);
    if let Some(prev) = previous.filter(|p| p.selector != selector) {
        ring.retiring.push(RetiringKey {
            key: prev,
            retire_at: now + chrono::Duration::hours(super::settings::DEFAULT_OVERLAP_HOURS),
        });
    }
    ring.active = Some(KeyMeta {
        selector: selector.to_string(),
        algorithm: key.algorithm,
        created_at: now,
    });
    ring
}

/// Carries out a rotation step: generates a key when asked, then writes the ring.
async fn carry_out(
    ctx: &Context,
    view: &MailDomainView,
    existing: &[Secret],
    stored: &StoredKeys,
    action: &RotationAction,
    algorithm: KeyAlgorithm,
    now: DateTime<Utc>,
) -> Result<(StoredKeys, Vec<Secret>), Error> {
    let mut keys = stored.keys.clone();
    if let RotationAction::GenerateInitial { selector }
    | RotationAction::GenerateNext { selector, .. } = action
    {
        let key = generate(algorithm).await?;
        keys.insert(
            selector.clone(),
            new_stored_key(&view.object.name, selector, key, KeySource::Generated),
        );
    }
    let ring = apply_rotation(&stored.ring, action, algorithm, now);
    tracing::info!(
        namespace = %view.object.namespace,
        maildomain = %view.object.name,
        ?action,
        "DKIM key step"
    );
    persist(ctx, view, existing, ring, keys).await
}

/// Key generations running at once: one per CPU. A thousand MailDomains applied together
/// would otherwise start a thousand blocking threads, each with its own allocator arena,
/// and the operator's memory would follow for no gain in speed.
fn keygen_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    })
}

/// RSA key generation takes a while: keep it off the async workers.
async fn generate(algorithm: KeyAlgorithm) -> Result<DkimKey, Error> {
    let _slot = keygen_slots()
        .acquire()
        .await
        .map_err(|e| Error::Join(e.to_string()))?;
    tokio::task::spawn_blocking(move || DkimKey::generate(algorithm))
        .await
        .map_err(|e| Error::Join(e.to_string()))?
        .map_err(Error::KeyGeneration)
}

/// Writes the key Secrets for `ring` (server-side apply, only where something changed)
/// and deletes the Secrets of keys no longer in it. Returns the new key state and the
/// Secrets as they now are.
async fn persist(
    ctx: &Context,
    view: &MailDomainView,
    existing: &[Secret],
    ring: KeyRing,
    mut keys: BTreeMap<String, StoredKey>,
) -> Result<(StoredKeys, Vec<Secret>), Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &view.object.namespace);
    let owner = view.object.owner_reference();
    let in_ring: Vec<String> = ring.selectors().into_iter().map(String::from).collect();
    keys.retain(|sel, _| in_ring.contains(sel));
    let mut now_existing = Vec::new();
    for (selector, stored) in &keys {
        let Some(desired) = build_key_secret(
            &view.object.name,
            &view.relay_pool,
            &view.object.namespace,
            &owner,
            &ring,
            selector,
            stored,
        ) else {
            continue;
        };
        let current = existing
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(stored.secret_name.as_str()));
        if let Some(c) = current.filter(|c| secret_up_to_date(c, &desired)) {
            now_existing.push(c.clone());
            continue;
        }
        let written = api
            .patch(
                &stored.secret_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&desired),
            )
            .await
            .map_err(|source| Error::Write {
                what: format!("Secret {}", stored.secret_name),
                source,
            })?;
        now_existing.push(written);
    }
    let keep: Vec<&str> = keys.values().map(|k| k.secret_name.as_str()).collect();
    for s in existing {
        let Some(name) = s.metadata.name.as_deref() else {
            continue;
        };
        let ours = s
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(super::keys::ANN_SELECTOR));
        if ours && !keep.contains(&name) {
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.is_not_found() => {}
                Err(source) => {
                    return Err(Error::Write {
                        what: format!("Secret {name}"),
                        source,
                    });
                }
            }
        }
    }
    Ok((
        StoredKeys {
            ring,
            keys,
            unusable: vec![],
        },
        now_existing,
    ))
}

/// Why a bound domain has no DNS check yet.
const CHECK_QUEUED: &str =
    "the first DNS check is queued behind the operator's DNS query-rate limit";

/// The longest a reconciliation waits for the query-rate limit before its check runs.
/// Longer waits are booked ([`crate::dns::QueryLimiter::book`]) and the domain is
/// reconciled again at its turn: a thousand domains applied together would otherwise
/// each hold a reconciliation, and everything it read, for minutes.
pub const MAX_INLINE_WAIT: Duration = Duration::from_secs(2);

/// The same for a domain's first check, which comes with the domain's first
/// reconciliation: only an idle limit lets it run at once. A burst of new domains is
/// then reconciled (key, binding) at the pace of the API server, and their checks follow
/// at the query rate, instead of each new domain holding a reconciliation slot for its
/// lookups while the others wait for their keys.
pub const MAX_INLINE_WAIT_FIRST: Duration = Duration::from_millis(100);

/// A DNS check and when to run the next one.
struct CheckOutcome {
    check: DomainCheck,
    checked_at: DateTime<Utc>,
    delay: Duration,
}

/// What to do about the DNS check in this reconciliation (see [`check_turn`]).
enum DnsPlan {
    /// Not bound: the expected records depend on the pool's hostname.
    Unbound,
    /// The cached check stands: same records, not due yet, no request.
    Cached(CheckOutcome),
    /// Check now; the lookups wait at most briefly for the query-rate limit.
    Run { expected: Vec<ExpectedRecord> },
    /// Come back at the booked turn; meanwhile the last check made is shown.
    Wait {
        last: Option<CheckOutcome>,
        until: tokio::time::Instant,
    },
}

/// The decision behind [`DnsPlan`], from what is known without I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckTurn {
    UseCached,
    RunNow,
    /// The booked turn has not come.
    WaitForBooking,
    /// No turn booked and the limit is busy: book one.
    Book,
}

/// Whether to reuse the cached check, run one now, or wait for a turn. `first`: the
/// domain has never been checked. `cached_current`:
/// a check of the same records is cached and not due. `requested`: an unanswered
/// [`RECONCILE_REQUESTED_AT`] asks for a check regardless of the cache (it still waits
/// for its turn). `booking`: this domain's booked turn. `backlog`: how long a lookup
/// asked now would wait.
pub fn check_turn(
    first: bool,
    cached_current: bool,
    requested: bool,
    booking: Option<tokio::time::Instant>,
    backlog: Duration,
    now: tokio::time::Instant,
) -> CheckTurn {
    if cached_current && !requested {
        return CheckTurn::UseCached;
    }
    match booking {
        Some(at) if at <= now => CheckTurn::RunNow,
        Some(_) => CheckTurn::WaitForBooking,
        None if first && backlog <= MAX_INLINE_WAIT_FIRST => CheckTurn::RunNow,
        None if !first && backlog <= MAX_INLINE_WAIT => CheckTurn::RunNow,
        None => CheckTurn::Book,
    }
}

/// Decides how this reconciliation gets its DNS check: the cached one (reused while the
/// expected records are unchanged and the scheduled time has not come, so events that
/// wake the reconciler cause no queries), one made now, or one at a booked turn.
fn plan_dns(
    ctx: &Context,
    view: &MailDomainView,
    settings: &DomainSettings,
    hostname: Option<&str>,
    stored: &StoredKeys,
    requested: bool,
) -> DnsPlan {
    let Some(hostname) = hostname else {
        return DnsPlan::Unbound;
    };
    let expected: Vec<ExpectedRecord> = expected_records(&publish_spec(settings, hostname, stored));
    let key = (view.object.namespace.clone(), view.object.name.clone());
    let now = tokio::time::Instant::now();
    let cached = ctx.checks.lock().ok().and_then(|m| m.get(&key).cloned());
    let cached_current = cached
        .as_ref()
        .is_some_and(|c| c.expected == expected && c.due > now);
    let mut bookings = ctx.bookings.lock().unwrap_or_else(|e| e.into_inner());
    let booking = bookings.get(&key).copied();
    let last = |c: super::CachedCheck| CheckOutcome {
        check: c.check,
        checked_at: c.checked_at,
        delay: c.due.saturating_duration_since(now),
    };
    let first = cached.is_none() && view.status.as_ref().is_none_or(|s| s.dns.is_none());
    match check_turn(
        first,
        cached_current,
        requested,
        booking,
        ctx.resolver.limiter().backlog(),
        now,
    ) {
        CheckTurn::UseCached => match cached {
            Some(c) => DnsPlan::Cached(last(c)),
            None => DnsPlan::Run { expected },
        },
        CheckTurn::RunNow => {
            bookings.remove(&key);
            DnsPlan::Run { expected }
        }
        CheckTurn::WaitForBooking => DnsPlan::Wait {
            last: cached.map(last),
            until: booking.unwrap_or(now),
        },
        CheckTurn::Book => {
            let until = ctx.resolver.limiter().book(question_count(&expected));
            bookings.insert(key, until);
            DnsPlan::Wait {
                last: cached.map(last),
                until,
            }
        }
    }
}

/// The DNS side of a reconciliation, as carried out.
struct DnsOutcome {
    /// The check to report: this reconciliation's, the cached one, or (while waiting
    /// for a turn) the last one made.
    shown: Option<CheckOutcome>,
    /// `shown` was made by this reconciliation (so it answers a check request).
    fresh: bool,
    /// Waiting for a turn.
    queued: bool,
    /// When to reconcile again for DNS: the next check is due, or the turn comes.
    next: Option<Duration>,
}

/// Carries out `plan`: runs the check when it is due now (its queries wait for the
/// shared query-rate limit) and caches it until the next one is due.
async fn carry_out_dns(
    ctx: &Context,
    view: &MailDomainView,
    plan: DnsPlan,
    stored: &StoredKeys,
) -> DnsOutcome {
    let expected = match plan {
        DnsPlan::Unbound => {
            return DnsOutcome {
                shown: None,
                fresh: false,
                queued: false,
                next: None,
            };
        }
        DnsPlan::Cached(c) => {
            return DnsOutcome {
                next: Some(c.delay),
                shown: Some(c),
                fresh: false,
                queued: false,
            };
        }
        DnsPlan::Wait { last, until } => {
            let wait = until.saturating_duration_since(tokio::time::Instant::now());
            return DnsOutcome {
                shown: last,
                fresh: false,
                queued: true,
                next: Some(wait.max(Duration::from_millis(100))),
            };
        }
        DnsPlan::Run { expected } => expected,
    };
    let key = (view.object.namespace.clone(), view.object.name.clone());
    let checked_at = ctx.now();
    let check = check_domain(&ctx.resolver, &expected).await;
    let now = tokio::time::Instant::now();
    // A next key waiting for its record keeps the fast schedule too: the user is about
    // to publish it, and the rotation proceeds on the first check that sees it.
    let settled = check.verified()
        && stored
            .ring
            .next
            .as_ref()
            .is_none_or(|n| check.dkim_published(&n.selector));
    let delay = next_check_delay(
        &ctx.schedule,
        settled,
        check.shortest_ttl,
        rand::random::<f64>(),
    );
    if let Ok(mut m) = ctx.checks.lock() {
        m.insert(
            key,
            super::CachedCheck {
                expected,
                check: check.clone(),
                checked_at,
                due: now + delay,
            },
        );
    }
    DnsOutcome {
        shown: Some(CheckOutcome {
            check,
            checked_at,
            delay,
        }),
        fresh: true,
        queued: false,
        next: Some(delay),
    }
}

/// The status to apply.
fn build_status(
    generation: Option<i64>,
    stored: Option<&StoredKeys>,
    check: Option<&CheckOutcome>,
    conditions: Vec<Condition>,
) -> MailDomainStatus {
    let dkim = stored.and_then(|s| {
        let (meta, key) = s.active()?;
        Some(DkimStatus {
            selector: meta.selector.clone(),
            public_key: key.key.dns_public_key.clone(),
            created_at: Some(k8s_time(meta.created_at)),
            next_selector: s.ring.next.as_ref().map(|n| n.selector.clone()),
        })
    });
    let dns = check.map(|c| DnsStatus {
        records: c
            .check
            .records
            .iter()
            .map(|r| DnsRecordStatus {
                type_: match r.record_type {
                    RecordType::Mx => DnsRecordType::Mx,
                    RecordType::Txt => DnsRecordType::Txt,
                },
                name: r.name.clone(),
                expected: r.expected.clone(),
                observed: r.observed.clone(),
                result: match r.result {
                    CheckResult::Match => DnsCheckResult::Match,
                    CheckResult::Missing => DnsCheckResult::Missing,
                    CheckResult::Mismatch => DnsCheckResult::Mismatch,
                    CheckResult::Error => DnsCheckResult::Error,
                },
                message: Some(r.message.clone()),
            })
            .collect(),
        checked_at: Some(k8s_time(c.checked_at)),
    });
    MailDomainStatus {
        observed_generation: generation,
        dkim,
        dns,
        // Written by the delivery sampler under its own field manager.
        delivery: None,
        conditions,
        last_handled_reconcile_at: None,
    }
}

async fn write_status(
    ctx: &Context,
    view: &MailDomainView,
    status: MailDomainStatus,
) -> Result<(), Error> {
    let status = own_part(&status);
    if view.status.as_ref().map(own_part) == Some(status.clone()) {
        return Ok(());
    }
    ctx.apply_status(&view.object, &status)
        .await
        .map_err(|source| Error::Write {
            what: "MailDomain status".into(),
            source,
        })
}

async fn publish_events(ctx: &Context, view: &MailDomainView, events: &[EventSpec]) {
    let reference = view.object.object_reference();
    for e in events {
        let event = Event {
            type_: if e.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: e.reason.clone(),
            note: Some(e.note.chars().take(1024).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        // Events are best effort: a failure must not fail the reconciliation.
        if let Err(err) = ctx.events.publish(&event, &reference).await {
            tracing::warn!(error = %err, reason = %e.reason, "publishing an event failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_turn_table() {
        let now = tokio::time::Instant::now();
        let s = Duration::from_secs;
        let busy = MAX_INLINE_WAIT + s(1);
        // (first, cached current, requested, booking, backlog) -> turn
        let cases = [
            // A first check runs at once only when the limit is nearly idle.
            (
                (true, false, false, None, Duration::ZERO),
                CheckTurn::RunNow,
            ),
            (
                (true, false, false, None, MAX_INLINE_WAIT_FIRST),
                CheckTurn::RunNow,
            ),
            ((true, false, false, None, MAX_INLINE_WAIT), CheckTurn::Book),
            ((true, false, true, None, s(1)), CheckTurn::Book),
            ((true, false, false, Some(now), busy), CheckTurn::RunNow),
        ];
        for ((first, cached, requested, booking, backlog), want) in cases {
            assert_eq!(
                check_turn(first, cached, requested, booking, backlog, now),
                want,
                "first={first} cached={cached} requested={requested} booking={booking:?}"
            );
        }
        // (cached current, requested, booking, backlog) -> turn, for a domain checked before
        let cases = [
            // A current cached check is reused, however busy the limit is...
            ((true, false, None, busy), CheckTurn::UseCached),
            ((true, false, Some(now + s(30)), busy), CheckTurn::UseCached),
            // ...unless a check is requested, which then waits for its turn like any.
            ((true, true, None, Duration::ZERO), CheckTurn::RunNow),
            ((true, true, None, busy), CheckTurn::Book),
            (
                (true, true, Some(now + s(30)), Duration::ZERO),
                CheckTurn::WaitForBooking,
            ),
            // Due or never checked: now when the limit is nearly free, else a turn.
            ((false, false, None, Duration::ZERO), CheckTurn::RunNow),
            ((false, false, None, MAX_INLINE_WAIT), CheckTurn::RunNow),
            ((false, false, None, busy), CheckTurn::Book),
            // A booked turn is kept: not earlier, even when the limit has become free
            // (later turns were booked after it), and run once it has come.
            (
                (false, false, Some(now + s(1)), Duration::ZERO),
                CheckTurn::WaitForBooking,
            ),
            ((false, false, Some(now), busy), CheckTurn::RunNow),
            ((false, true, Some(now - s(5)), busy), CheckTurn::RunNow),
        ];
        for ((cached, requested, booking, backlog), want) in cases {
            assert_eq!(
                check_turn(false, cached, requested, booking, backlog, now),
                want,
                "cached={cached} requested={requested} booking={booking:?} backlog={backlog:?}"
            );
        }
    }
}
