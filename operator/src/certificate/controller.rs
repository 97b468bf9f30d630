//! The certificate controller: makes sure every RelayPool has a listener certificate it
//! can serve, and says so in `status.certificate` and the `CertificateReady` condition.
//!
//! It runs beside the RelayPool controller and owns only those two status fields (the
//! RelayPool controller keeps conditions it does not compute), so certificate work —
//! issuing, waiting for cert-manager, re-checking before expiry — never holds up the
//! rollout of the pool. Nodes mount the Secret and reload it when it changes; the pod
//! template does not depend on the certificate, so a renewal rolls no pods.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use super::inspect::{self, CertInfo, CertProblem};
use super::peer_ca::{self, Phase};
use super::peer_secrets;
use crate::api::RelayPool;
use crate::api::conditions;
use crate::api::relay_pool::{CertificateStatus, condition_types, reasons};
use crate::api::relay_pool::{IssuerKind, IssuerRef, TlsSource};
use crate::events::{self, normal, publish_all, warning};
use crate::relaypool::build::layout::ADMIN_TOKEN_KEY;
use crate::relaypool::build::meta;
use crate::runtime::scope::{self, scoped};

/// Field manager of what this controller writes.
pub const FIELD_MANAGER: &str = "smtpfleet-certificates";
/// Re-check at least this often, so expiry and renewal happen without other events.
const RECHECK: Duration = Duration::from_secs(3600);
/// Wait between checks while cert-manager is missing: not an error loop.
const CERT_MANAGER_MISSING_RECHECK: Duration = Duration::from_secs(300);
/// Wait between checks while a certificate is being issued.
const PENDING_RECHECK: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("RelayPool has no namespace")]
    NoNamespace,
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Issue(#[from] inspect::IssueError),
    #[error(transparent)]
    Pki(#[from] peer_ca::PkiError),
}

pub struct Context {
    pub client: Client,
    pub events: events::Publisher,
    pub namespaces: Vec<String>,
}

impl Context {
    pub fn new(client: Client, namespaces: Vec<String>) -> Self {
        Self {
            events: events::Publisher::new(client.clone(), events::reporter()),
            client,
            namespaces,
        }
    }
}

/// What the controller found, before it is written to the status.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
    pub certificate: Option<CertificateStatus>,
    pub recheck: Duration,
}

impl Verdict {
    fn problem(reason: &'static str, message: String, recheck: Duration) -> Self {
        Self {
            status: "False",
            reason,
            message,
            certificate: None,
            recheck,
        }
    }
}

/// Turns an inspection into a verdict. Pure, for tests.
pub fn judge(secret_name: &str, inspected: Result<CertInfo, CertProblem>, now: i64) -> Verdict {
    match inspected {
        Err(problem) => Verdict::problem(
            problem.reason(),
            format!("Secret {secret_name}: {problem}."),
            RECHECK,
        ),
        Ok(info) => {
            let soon = inspect::expires_soon(info.not_after, now);
            let until_warning =
                (info.not_after - inspect::EXPIRY_WARNING_DAYS * 86_400 - now).max(60) as u64;
            let until_expiry = (info.not_after - now).max(60) as u64;
            Verdict {
                status: "True",
                reason: if soon {
                    reasons::CERTIFICATE_EXPIRING
                } else {
                    reasons::CERTIFICATE_ISSUED
                },
                message: if soon {
                    format!(
                        "The certificate in Secret {secret_name} expires at {} and has not been renewed.",
                        inspect::rfc3339(info.not_after)
                    )
                } else {
                    format!(
                        "Serving the certificate in Secret {secret_name} for {}, valid until {}.",
                        info.dns_names.join(", "),
                        inspect::rfc3339(info.not_after)
                    )
                },
                certificate: Some(CertificateStatus {
                    not_after: Timestamp::from_second(info.not_after).ok().map(Time),
                    secret_name: Some(secret_name.to_owned()),
                    serial: Some(info.serial),
                    dns_names: info.dns_names,
                }),
                recheck: RECHECK.min(Duration::from_secs(if soon {
                    until_expiry
                } else {
                    until_warning
                })),
            }
        }
    }
}

fn unix_now() -> i64 {
    Timestamp::now().as_second()
}

fn secret_bytes(secret: &Secret, key: &str) -> Vec<u8> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .unwrap_or_default()
}

fn inspect_secret(secret: &Secret, hostname: &str, now: i64) -> Result<CertInfo, CertProblem> {
    inspect::inspect(
        &secret_bytes(secret, "tls.crt"),
        &secret_bytes(secret, "tls.key"),
        hostname,
        now,
    )
}

fn owner_meta(pool: &RelayPool, name: &str, namespace: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(meta::pool_labels(&pool.name_any())),
        owner_references: pool.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

pub async fn reconcile(pool: Arc<RelayPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    if pool.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = pool.namespace().ok_or(Error::NoNamespace)?;
    let Ok(source) = pool.spec.tls_source() else {
        // An invalid spec is reported by the RelayPool controller.
        return Ok(Action::await_change());
    };
    let name = pool.name_any();
    let hostname = pool.spec.hostname.clone();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let now = unix_now();
    let mut events = Vec::new();

    let verdict = match source {
        TlsSource::Secret(secret_name) => match secrets.get_opt(secret_name).await? {
            None => Verdict::problem(
                reasons::SECRET_NOT_FOUND,
                format!(
                    "Secret {secret_name} named in spec.tls.secretName does not exist in namespace {namespace}; create it (type kubernetes.io/tls, keys tls.crt and tls.key)."
                ),
                RECHECK,
            ),
            Some(secret) => judge(secret_name, inspect_secret(&secret, &hostname, now), now),
        },
        TlsSource::SelfSigned => {
            let secret_name = meta::managed_tls_secret_name(&name);
            let current = secrets.get_opt(&secret_name).await?;
            let usable = current
                .as_ref()
                .map(|s| inspect_secret(s, &hostname, now))
                .and_then(Result::ok)
                .filter(|info| !inspect::needs_renewal(info.not_before, info.not_after, now));
            match usable {
                Some(info) => judge(&secret_name, Ok(info), now),
                None => {
                    let (cert, key) = inspect::issue_self_signed(&hostname, now)?;
                    let secret = Secret {
                        metadata: owner_meta(&pool, &secret_name, &namespace),
                        type_: Some("kubernetes.io/tls".to_owned()),
                        data: Some(BTreeMap::from([
                            ("tls.crt".to_owned(), ByteString(cert.clone().into_bytes())),
                            ("tls.key".to_owned(), ByteString(key.clone().into_bytes())),
                            ("ca.crt".to_owned(), ByteString(cert.clone().into_bytes())),
                        ])),
                        ..Secret::default()
                    };
                    secrets
                        .patch(
                            &secret_name,
                            &PatchParams::apply(FIELD_MANAGER).force(),
                            &Patch::Apply(&secret),
                        )
                        .await?;
                    let verb = if current.is_some() {
                        "Renewed"
                    } else {
                        "Issued"
                    };
                    events.push(normal(
                        &format!("Certificate{verb}"),
                        "IssueCertificate",
                        format!("{verb} a self-signed certificate for {hostname} in Secret {secret_name}."),
                    ));
                    judge(
                        &secret_name,
                        inspect::inspect(cert.as_bytes(), key.as_bytes(), &hostname, now),
                        now,
                    )
                }
            }
        }
        TlsSource::CertManager(issuer) => {
            let secret_name = meta::managed_tls_secret_name(&name);
            match apply_certificate(&ctx.client, &pool, &namespace, &secret_name, issuer).await? {
                None => Verdict::problem(
                    reasons::CERT_MANAGER_MISSING,
                    "cert-manager is not installed in this cluster (no certificates.cert-manager.io \
                     resource); install cert-manager, or use spec.tls.selfSigned or spec.tls.secretName."
                        .to_owned(),
                    CERT_MANAGER_MISSING_RECHECK,
                ),
                Some(certificate) => match secrets.get_opt(&secret_name).await? {
                    Some(secret) => judge(&secret_name, inspect_secret(&secret, &hostname, now), now),
                    None => Verdict::problem(
                        reasons::CERTIFICATE_PENDING,
                        format!(
                            "Waiting for cert-manager to issue Certificate {secret_name}{}",
                            ready_message(&certificate)
                                .map(|m| format!(": {m}"))
                                .unwrap_or_else(|| ".".to_owned())
                        ),
                        PENDING_RECHECK,
                    ),
                },
            }
        }
    };

    let peer_recheck = ensure_peer_material(&ctx, &pool, &namespace, now, &mut events).await?;
    ensure_admin_token(&ctx, &pool, &namespace).await?;

    let previous = pool.status.clone().unwrap_or_default();
    let old = previous
        .conditions
        .iter()
        .find(|c| c.type_ == condition_types::CERTIFICATE_READY);
    let changed_reason =
        old.is_none_or(|c| c.reason != verdict.reason || c.status != verdict.status);
    if changed_reason {
        if verdict.status == "False" {
            events.push(warning(
                verdict.reason,
                "CheckCertificate",
                verdict.message.clone(),
            ));
        } else if verdict.reason == reasons::CERTIFICATE_EXPIRING {
            events.push(warning(
                "CertificateExpiringSoon",
                "CheckCertificate",
                verdict.message.clone(),
            ));
        }
    }
    let conditions = with_certificate_condition(
        &previous.conditions,
        &verdict,
        pool.meta().generation,
        Time(Timestamp::now()),
    );
    let certificate = verdict
        .certificate
        .clone()
        .or(if verdict.status == "False" {
            None
        } else {
            previous.certificate.clone()
        });
    if conditions != previous.conditions || certificate != previous.certificate {
        let api: Api<RelayPool> = Api::namespaced(ctx.client.clone(), &namespace);
        let body = json!({
            "metadata": { "resourceVersion": pool.resource_version() },
            "status": { "certificate": certificate, "conditions": conditions },
        });
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&body))
            .await?;
    }
    publish_all(&ctx.events, &pool.object_ref(&()), &events).await;
    Ok(Action::requeue(verdict.recheck.min(peer_recheck)))
}

/// Keeps the peer CA and the node certificates current (see [`peer_ca`]). Returns when
/// to look again: the next rotation step, or the regular re-check.
async fn ensure_peer_material(
    ctx: &Context,
    pool: &RelayPool,
    namespace: &str,
    now: i64,
    events: &mut Vec<kube::runtime::events::Event>,
) -> Result<Duration, Error> {
    let name = pool.name_any();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let ca_name = meta::peer_ca_secret_name(&name);
    let peers_name = meta::peer_tls_secret_name(&name);
    let ca = secrets.get_opt(&ca_name).await?;
    let peers = secrets.get_opt(&peers_name).await?;
    let stored = peer_secrets::read(ca.as_ref(), peers.as_ref());
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);
    let selector = format!("{}={name}", meta::POOL_LABEL);
    let live: BTreeMap<String, i32> = sets
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .iter()
        .filter_map(|set| {
            let dc = set.labels().get(meta::DATA_CENTRE_LABEL)?;
            Some((dc.clone(), set.spec.as_ref()?.replicas.unwrap_or(1)))
        })
        .collect();
    let nodes = peer_secrets::nodes(&name, namespace, &pool.spec, &live);
    // CAs are issued with a not-before an hour in the past (clock skew).
    let rotate = match (pool_annotation_time(pool), &stored) {
        (Some(asked), Some(m)) => m.phase() == Phase::Stable && m.active.not_before + 3600 < asked,
        _ => false,
    };
    let planned = peer_ca::plan(
        &name,
        stored.clone(),
        &nodes,
        now,
        peer_ca::OVERLAP_SECONDS,
        rotate,
    )?;
    if stored.as_ref() != Some(&planned) {
        let (ca_data, peer_data) = peer_secrets::data(&planned);
        for (secret_name, data) in [(&ca_name, ca_data), (&peers_name, peer_data)] {
            let secret = Secret {
                metadata: owner_meta(pool, secret_name, namespace),
                type_: Some("Opaque".to_owned()),
                data: Some(data),
                ..Secret::default()
            };
            secrets
                .patch(
                    secret_name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&secret),
                )
                .await?;
        }
        let before = stored.as_ref().map(|m| m.phase());
        if before != Some(planned.phase()) {
            let note = match planned.phase() {
                Phase::Stable if stored.is_none() => "Created the peer CA and node certificates.".to_owned(),
                Phase::Stable => "Retired the previous peer CA.".to_owned(),
                Phase::Introducing => "Rotating the peer CA: the next CA joined the trust bundle.".to_owned(),
                Phase::Retiring => "Rotating the peer CA: node certificates re-issued by the new CA; the old CA stays trusted for the overlap.".to_owned(),
            };
            events.push(normal("PeerCARotation", "RotatePeerCA", note));
        }
    }
    let next_step = planned
        .next
        .as_ref()
        .map(|(_, since)| since + peer_ca::OVERLAP_SECONDS)
        .or(planned.previous.as_ref().map(|(_, until)| *until))
        .map(|at| Duration::from_secs((at - now).max(5) as u64 + 1));
    Ok(next_step.unwrap_or(RECHECK))
}

/// Keeps the pool's admin token Secret (`<pool>-admin`): made once with a random token,
/// never rewritten while it holds one, so a node and the operator always agree. Deleting
/// the Secret rotates the token (the nodes read the mounted file on each call).
async fn ensure_admin_token(ctx: &Context, pool: &RelayPool, namespace: &str) -> Result<(), Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let name = meta::admin_secret_name(&pool.name_any());
    let existing = secrets.get_opt(&name).await?;
    if existing
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .and_then(|d| d.get(ADMIN_TOKEN_KEY))
        .is_some_and(|t| !t.0.is_empty())
    {
        return Ok(());
    }
    let secret = Secret {
        metadata: owner_meta(pool, &name, namespace),
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            ADMIN_TOKEN_KEY.to_owned(),
            ByteString(new_token().into_bytes()),
        )])),
        ..Secret::default()
    };
    secrets
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await?;
    Ok(())
}

/// 256 random bits, hex.
fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Annotation asking for a peer CA rotation; its value is an RFC 3339 time, and a CA
/// issued before that time is rotated (once).
pub const ROTATE_ANNOTATION: &str = "smtpfleet.io/rotate-peer-ca";

fn pool_annotation_time(pool: &RelayPool) -> Option<i64> {
    let value = pool.annotations().get(ROTATE_ANNOTATION)?;
    value.parse::<Timestamp>().ok().map(|t| t.as_second())
}

/// The conditions with `CertificateReady` set from the verdict, in place (see
/// [`conditions::upsert`]: the others keep their order, the time its status flipped).
fn with_certificate_condition(
    previous: &[Condition],
    verdict: &Verdict,
    generation: Option<i64>,
    now: Time,
) -> Vec<Condition> {
    let mut out = previous.to_vec();
    conditions::upsert(
        &mut out,
        conditions::new(
            condition_types::CERTIFICATE_READY,
            verdict.status,
            verdict.reason,
            verdict.message.clone(),
            generation,
            now,
        ),
    );
    out
}

fn certificate_resource() -> ApiResource {
    ApiResource {
        group: "cert-manager.io".to_owned(),
        version: "v1".to_owned(),
        api_version: "cert-manager.io/v1".to_owned(),
        kind: "Certificate".to_owned(),
        plural: "certificates".to_owned(),
    }
}

/// Applies the cert-manager Certificate for the pool. `None` when cert-manager's API is
/// not installed.
async fn apply_certificate(
    client: &Client,
    pool: &RelayPool,
    namespace: &str,
    name: &str,
    issuer: &IssuerRef,
) -> Result<Option<DynamicObject>, Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &certificate_resource());
    let meta = owner_meta(pool, name, namespace);
    let body = json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": meta.labels,
            "ownerReferences": meta.owner_references,
        },
        "spec": {
            "secretName": name,
            "commonName": pool.spec.hostname,
            "dnsNames": [pool.spec.hostname],
            "usages": ["server auth", "digital signature", "key encipherment"],
            "issuerRef": {
                "name": issuer.name,
                "kind": match issuer.kind {
                    IssuerKind::Issuer => "Issuer",
                    IssuerKind::ClusterIssuer => "ClusterIssuer",
                },
                "group": issuer.group,
            },
        },
    });
    match api
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
    {
        Ok(object) => Ok(Some(object)),
        Err(kube::Error::Api(response)) if response.code == 404 => Ok(None),
        Err(other) => Err(other.into()),
    }
}

/// cert-manager's own `Ready` message, when it is not Ready.
fn ready_message(certificate: &DynamicObject) -> Option<String> {
    let conditions = certificate
        .data
        .get("status")?
        .get("conditions")?
        .as_array()?;
    let ready = conditions
        .iter()
        .find(|c| c.get("type").and_then(|t| t.as_str()) == Some("Ready"))?;
    if ready.get("status").and_then(|s| s.as_str()) == Some("True") {
        return None;
    }
    ready
        .get("message")
        .and_then(|m| m.as_str())
        .map(str::to_owned)
}

pub fn error_policy(pool: Arc<RelayPool>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(pool = %pool.name_any(), %error, "certificate check failed; retrying");
    Action::requeue(Duration::from_secs(10))
}

/// Runs the controller in each watched namespace (all when none is named).
pub async fn run(ctx: Arc<Context>) {
    let scopes = scope::scopes(&ctx.namespaces);
    futures::future::join_all(scopes.into_iter().map(|ns| run_scope(ctx.clone(), ns))).await;
}

async fn run_scope(ctx: Arc<Context>, namespace: Option<String>) {
    let pools: Api<RelayPool> = scoped(&ctx.client, namespace.as_deref());
    let secrets: Api<Secret> = scoped(&ctx.client, namespace.as_deref());
    let controller = Controller::new(pools, watcher::Config::default().any_semantic());
    let store = controller.store();
    controller
        .watches(
            secrets,
            watcher::Config::default(),
            move |secret: Secret| {
                let name = secret.name_any();
                let namespace = secret.namespace();
                store
                    .state()
                    .into_iter()
                    .filter(|pool| pool.namespace() == namespace)
                    .filter(|pool| tls_secret_name(pool).as_deref() == Some(name.as_str()))
                    .map(|pool| ObjectRef::from_obj(&*pool))
                    .collect::<Vec<_>>()
            },
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "certificate reconcile loop");
            }
        })
        .await;
}

/// The Secret the pool's listener certificate lives in.
fn tls_secret_name(pool: &RelayPool) -> Option<String> {
    match pool.spec.tls_source().ok()? {
        TlsSource::Secret(name) => Some(name.to_owned()),
        TlsSource::SelfSigned | TlsSource::CertManager(_) => {
            Some(meta::managed_tls_secret_name(&pool.name_any()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(not_after: i64) -> CertInfo {
        CertInfo {
            not_before: 0,
            not_after,
            serial: "0A".into(),
            dns_names: vec!["mx.example.com".into()],
        }
    }

    #[test]
    fn verdicts_name_the_secret_and_schedule_the_next_look() {
        let day = 86_400;
        let v = judge("pool-tls", Ok(info(100 * day)), 10 * day);
        assert_eq!((v.status, v.reason), ("True", reasons::CERTIFICATE_ISSUED));
        assert_eq!(v.recheck, RECHECK);
        let cert = v.certificate.unwrap();
        assert_eq!(cert.secret_name.as_deref(), Some("pool-tls"));
        assert_eq!(cert.serial.as_deref(), Some("0A"));

        let v = judge("pool-tls", Ok(info(100 * day)), 90 * day);
        assert_eq!(
            (v.status, v.reason),
            ("True", reasons::CERTIFICATE_EXPIRING)
        );
        assert!(v.message.contains("has not been renewed"), "{}", v.message);

        let v = judge(
            "user-tls",
            Err(CertProblem::Expired { not_after: 5 }),
            10 * day,
        );
        assert_eq!((v.status, v.reason), ("False", "Expired"));
        assert!(
            v.message
                .starts_with("Secret user-tls: the certificate expired"),
            "{}",
            v.message
        );
        assert!(v.certificate.is_none());
    }

    #[test]
    fn the_condition_is_replaced_in_place() {
        let t = Time(Timestamp::from_second(1).unwrap());
        let c = |type_: &str, status: &str| Condition {
            type_: type_.into(),
            status: status.into(),
            reason: "R".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: t.clone(),
        };
        let previous = vec![
            c("Ready", "True"),
            c("CertificateReady", "True"),
            c("Degraded", "False"),
        ];
        let v = judge("x", Ok(info(i64::MAX / 2)), 0);
        let later = Time(Timestamp::from_second(2).unwrap());
        let out = with_certificate_condition(&previous, &v, Some(2), later.clone());
        let types: Vec<&str> = out.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Ready", "CertificateReady", "Degraded"]);
        assert_eq!(out[1].last_transition_time, t, "same status keeps its time");
        let appended = with_certificate_condition(&previous[..1], &v, Some(2), later.clone());
        assert_eq!(appended[1].type_, "CertificateReady");
        assert_eq!(
            appended[1].last_transition_time, later,
            "a new one is stamped now"
        );
    }
}
