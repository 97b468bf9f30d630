//! One reconciliation of a MailDomain: dereference → validate → keys (build + apply) →
//! DNS check → rotation → status. Decisions are the pure functions of the sibling
//! modules; this file only reads, writes and sequences.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use serde_json::json;

use super::keys::{
    KeySource, StoredKeys, build_key_secret, key_secret_selector, new_stored_key, read_key_ring,
    secret_up_to_date,
};
use super::settings::{DomainSettings, InvalidSpec, KeySettings, publish_spec, rotation_policy};
use super::status::{
    DnsState, EventSpec, KeyState, PoolState, StatusInputs, conditions, rotation_event,
    transition_events,
};
use super::{Context, Error, FIELD_MANAGER, MailDomainRef};
use crate::dkim_keys::{
    DkimKey, KeyAlgorithm, KeyMeta, KeyRing, RetiringKey, RotationAction, apply_rotation,
    decide_rotation,
};
use crate::dns::{DomainCheck, ExpectedRecord, check_domain, expected_records, next_check_delay};

/// What the reconciler needs to know about a MailDomain, independent of how the API type
/// spells it.
#[derive(Debug, Clone)]
pub struct MailDomainView {
    pub object: MailDomainRef,
    pub generation: Option<i64>,
    /// The spec, validated; or the first problem found.
    pub settings: Result<DomainSettings, InvalidSpec>,
    /// `spec.relayPoolRef` as written (also when the rest is invalid).
    pub relay_pool: String,
    /// The current status, to carry over transition times and skip no-op writes.
    pub conditions: Vec<Condition>,
    pub status: serde_json::Value,
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
    hostname: Option<String>,
    secrets: Vec<Secret>,
    /// The user's private key PEM, or why it cannot be read.
    user_key: Option<Result<String, (String, String)>>,
}

async fn dereference(ctx: &Context, view: &MailDomainView) -> Result<Dereferenced, Error> {
    let ns = &view.object.namespace;
    let pool = ctx.pool_hostname(ns, &view.relay_pool).await?;
    let (pool, hostname) = match pool {
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
    let user_key = match &view.settings {
        Ok(DomainSettings {
            key:
                KeySettings::UserProvided {
                    secret_name,
                    secret_key,
                    ..
                },
            ..
        }) => Some(read_user_key(&secrets_api, secret_name, secret_key).await?),
        _ => None,
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
            "PrivateKeySecretNotFound".into(),
            format!("Secret {name} named by spec.dkim.privateKeySecretRef does not exist"),
        )));
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.clone().into_bytes())
        });
    Ok(match value.map(String::from_utf8) {
        Some(Ok(pem)) => Ok(pem),
        Some(Err(_)) => Err((
            "InvalidPrivateKey".into(),
            format!("key {key} of Secret {name} is not PEM text"),
        )),
        None => Err((
            "InvalidPrivateKey".into(),
            format!("Secret {name} has no key {key}"),
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
            let inputs = StatusInputs {
                generation: view.generation,
                invalid_spec: Some(invalid.to_string()),
                pool: PoolState::NotFound {
                    name: view.relay_pool.clone(),
                    namespace: view.object.namespace.clone(),
                },
                keys: KeyState::Failed {
                    reason: "InvalidSpec".into(),
                    message: invalid.to_string(),
                },
                dns: DnsState::NotChecked {
                    reason: "InvalidSpec".into(),
                    message: invalid.to_string(),
                },
            };
            let conds = conditions(&inputs, &view.conditions, now);
            events.extend(transition_events(&view.conditions, &conds));
            let status = status_json(view.generation, None, None, &conds);
            write_status(ctx, view, status).await?;
            publish_events(ctx, view, &events).await;
            return Ok(Action::await_change());
        }
    };

    let deref = dereference(ctx, view).await?;
    let mut stored = read_key_ring(&deref.secrets, now);
    // The key Secrets as they are after this reconciliation's own writes.
    let mut secrets = deref.secrets.clone();
    for (name, why) in &stored.unusable {
        tracing::warn!(secret = %name, reason = %why, "ignoring an unusable DKIM key Secret");
    }

    // Keys that do not depend on DNS: the first key, or the user's key.
    let mut key_failure: Option<(String, String)> = None;
    let policy = rotation_policy(&settings.key);
    match (&settings.key, &deref.user_key) {
        (KeySettings::UserProvided { selector, .. }, Some(user)) => match user {
            Ok(pem) => match DkimKey::from_private_key_pem(pem) {
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
                            note: format!("signing with the key from spec.dkim.privateKeySecretRef under selector {selector}"),
                        });
                    }
                }
                Err(e) => {
                    key_failure = Some((
                        "InvalidPrivateKey".into(),
                        format!("the key in spec.dkim.privateKeySecretRef cannot be used: {e}"),
                    ))
                }
            },
            Err(failure) => key_failure = Some(failure.clone()),
        },
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
        (KeySettings::UserProvided { .. }, None) => {}
    }

    // DNS, then rotation steps that depend on it; a step that changes the published keys
    // is followed by a fresh check, so status shows the records as they now are.
    let mut rotation: Option<RotationAction> = None;
    let mut check = dns_check(ctx, view, &settings, deref.hostname.as_deref(), &stored).await;
    if let Some(policy) = &policy {
        for _ in 0..3 {
            let next_published = match (&stored.ring.next, &check) {
                (Some(next), Some((c, _))) => c.dkim_published(&next.selector),
                _ => false,
            };
            let action = decide_rotation(policy, &stored.ring, next_published, now);
            let changes = matches!(
                action,
                RotationAction::GenerateInitial { .. }
                    | RotationAction::GenerateNext { .. }
                    | RotationAction::SwitchSigning { .. }
                    | RotationAction::Retire { .. }
            );
            rotation = Some(action.clone());
            if !changes {
                break;
            }
            (stored, secrets) =
                carry_out(ctx, view, &secrets, &stored, &action, policy.algorithm, now).await?;
            events.extend(rotation_event(&action));
            check = dns_check(ctx, view, &settings, deref.hostname.as_deref(), &stored).await;
        }
    }

    let key_state = match (&key_failure, stored.active()) {
        (Some((reason, message)), _) => KeyState::Failed {
            reason: reason.clone(),
            message: message.clone(),
        },
        (None, Some((meta, _))) => KeyState::Active {
            selector: meta.selector.clone(),
            rotation: rotation.clone(),
        },
        (None, None) => KeyState::Failed {
            reason: "KeyMissing".into(),
            message: "no signing key yet".into(),
        },
    };
    let dns_state = match &check {
        Some((c, _)) => DnsState::Checked(c.clone()),
        None => DnsState::NotChecked {
            reason: "RelayPoolNotFound".into(),
            message: format!(
                "the records depend on the pool's hostname: RelayPool {} does not exist",
                view.relay_pool
            ),
        },
    };
    let inputs = StatusInputs {
        generation: view.generation,
        invalid_spec: None,
        pool: deref.pool.clone(),
        keys: key_state,
        dns: dns_state,
    };
    let conds = conditions(&inputs, &view.conditions, now);
    events.extend(transition_events(&view.conditions, &conds));
    let status = status_json(
        view.generation,
        stored.active(),
        check.as_ref().map(|(c, _)| c),
        &conds,
    );
    write_status(ctx, view, status).await?;
    publish_events(ctx, view, &events).await;

    // Requeue at the next DNS check, or sooner when the key ring has a deadline.
    let mut delay = check
        .as_ref()
        .map(|(_, due)| *due)
        .unwrap_or(ctx.schedule.unverified_interval);
    if let Some(RotationAction::Idle { until: Some(at) }) = &rotation {
        let until = (*at - now).to_std().unwrap_or(Duration::ZERO);
        delay = delay.min(until.max(Duration::from_secs(1)));
    }
    Ok(Action::requeue(delay))
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
    tracing::info!(maildomain = %view.object.name, ?action, "DKIM key step");
    persist(ctx, view, existing, ring, keys).await
}

/// RSA key generation takes a while: keep it off the async workers.
async fn generate(algorithm: KeyAlgorithm) -> Result<DkimKey, Error> {
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
    mut keys: BTreeMap<String, super::keys::StoredKey>,
) -> Result<(StoredKeys, Vec<Secret>), Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &view.object.namespace);
    let owner = view.object.owner_reference();
    let in_ring = ring
        .selectors()
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    keys.retain(|sel, _| in_ring.contains(sel));
    let mut now_existing = Vec::new();
    for (selector, stored) in &keys {
        let Some(desired) = build_key_secret(
            &view.object.name,
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
        let annotated = s
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(super::keys::ANN_SELECTOR));
        if annotated && !keep.contains(&name) {
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

/// Runs (or reuses) the DNS check. Reused while the expected records are unchanged and
/// the scheduled time has not come, so events that wake the reconciler do not cause
/// queries. Returns the check and the delay until the next one.
async fn dns_check(
    ctx: &Context,
    view: &MailDomainView,
    settings: &DomainSettings,
    hostname: Option<&str>,
    stored: &StoredKeys,
) -> Option<(DomainCheck, Duration)> {
    let hostname = hostname?;
    let expected: Vec<ExpectedRecord> = expected_records(&publish_spec(settings, hostname, stored));
    let key = (view.object.namespace.clone(), view.object.name.clone());
    let now = tokio::time::Instant::now();
    if let Some(cached) = ctx.checks.lock().ok().and_then(|m| m.get(&key).cloned())
        && cached.expected == expected
        && cached.due > now
    {
        return Some((cached.check, cached.due - now));
    }
    let check = check_domain(&ctx.resolver, &expected).await;
    // A next key waiting for its record keeps the fast schedule too: the user is about
    // to publish it, and signing switches on the first check that sees it.
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
                due: now + delay,
            },
        );
    }
    Some((check, delay))
}

/// The status object (camelCase, as the CRD's status schema spells it).
pub fn status_json(
    generation: Option<i64>,
    active: Option<(&KeyMeta, &super::keys::StoredKey)>,
    check: Option<&DomainCheck>,
    conditions: &[Condition],
) -> serde_json::Value {
    let dkim = active.map(|(meta, stored)| {
        json!({
            "selector": meta.selector,
            "publicKey": stored.key.dns_public_key,
            "createdAt": meta.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "secretName": stored.secret_name,
        })
    });
    let dns = check.map(|c| {
        json!({
            "records": c.records.iter().map(|r| {
                let mut rec = json!({
                    "type": r.record_type.as_str(),
                    "name": r.name,
                    "expected": r.expected,
                    "result": r.result.as_str(),
                    "message": r.message,
                });
                if let Some(o) = &r.observed {
                    rec["observed"] = json!(o);
                }
                rec
            }).collect::<Vec<_>>(),
        })
    });
    json!({
        "observedGeneration": generation,
        "dkim": dkim,
        "dns": dns,
        "conditions": conditions,
    })
}

async fn write_status(
    ctx: &Context,
    view: &MailDomainView,
    status: serde_json::Value,
) -> Result<(), Error> {
    if view.status == status {
        return Ok(());
    }
    ctx.patch_status(&view.object, json!({ "status": status }))
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
        if let Err(err) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %err, reason = %e.reason, "publishing an event failed");
        }
    }
}
