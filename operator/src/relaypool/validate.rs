//! Resolution of a RelayPool into the [`Pool`] model, and semantic checks beyond what
//! the API server's schema and CEL rules enforce.
//!
//! Problems found here do not stop the reconciliation: the pool is reconciled as far as
//! possible (a missing TLS Secret may be created a minute later, and the pods start
//! then) and every problem becomes a `Degraded` condition a person can act on. Values
//! that cannot be read (possible only for objects that bypassed validation) fall back
//! to their defaults and are reported the same way.

use std::time::Duration;

use kube::Resource;

use super::build::meta;
use super::dereference::{Dereferenced, ReferencedSecret};
use super::error::{Error, Result};
use super::model::{
    DataCentre, Limits, Listener, ListenerKind, Pool, PoolIdentity, Queue, Relay, Storage,
    TlsSource,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::api::relay_pool::{
    self, ImagePullPolicy, LimitsSpec, QueueSpec, RelayPool, RetrySpec, condition_types, reasons,
};

/// Key of the submission users file in the auth Secret: one `user:argon2-hash` line
/// per user.
pub const AUTH_USERS_KEY: &str = "users";

/// Something wrong with the pool that a person must fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// CamelCase reason for the `Degraded` condition.
    pub reason: &'static str,
    /// A sentence naming what is wrong and where.
    pub message: String,
    /// Whether the pool cannot serve as specified while this lasts (a Secret the pods
    /// mount is missing, too few nodes to replicate): such problems also make `Ready`
    /// false. The others only mark the pool `Degraded`.
    pub blocks_ready: bool,
}

impl Problem {
    /// A problem that keeps the pool from serving as specified.
    pub fn blocking(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            blocks_ready: true,
        }
    }

    /// A problem worth a person's attention that does not stop the pool from serving.
    pub fn warning(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            blocks_ready: false,
        }
    }

    fn invalid_spec(message: impl Into<String>) -> Self {
        Self::warning(reasons::INVALID_SPEC, message)
    }
}

/// A resolved pool and the problems found on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    /// The pool with every default applied.
    pub pool: Pool,
    /// Problems for the `Degraded` condition, most important first.
    pub problems: Vec<Problem>,
}

/// Resolves `pool` (with what its spec points at) and checks it. Fails only when the
/// object lacks metadata the API server always sets.
pub fn validate(pool: &RelayPool, refs: &Dereferenced, default_image: &str) -> Result<Validated> {
    let identity = identity(pool)?;
    let spec = &pool.spec;
    let mut problems = Vec::new();

    let listeners = spec
        .listeners
        .enabled()
        .into_iter()
        .filter_map(|l| {
            let port = u16::try_from(l.port).ok().filter(|p| *p > 0);
            if port.is_none() {
                problems.push(Problem::invalid_spec(format!(
                    "Listener port {} is not a valid TCP port.",
                    l.port
                )));
            }
            Some(Listener {
                kind: match l.kind {
                    relay_pool::ListenerKind::Relay => ListenerKind::Relay,
                    relay_pool::ListenerKind::Submission => ListenerKind::Submission,
                    relay_pool::ListenerKind::ImplicitTls => ListenerKind::ImplicitTls,
                },
                port: port?,
            })
        })
        .collect();

    let tls = match spec.tls_source() {
        Ok(relay_pool::TlsSource::Secret(name)) => Some(TlsSource::Secret(name.to_owned())),
        Ok(relay_pool::TlsSource::CertManager(_) | relay_pool::TlsSource::SelfSigned) => Some(
            TlsSource::Managed(meta::managed_tls_secret_name(&identity.name)),
        ),
        Err(err) => {
            problems.push(Problem::invalid_spec(format!("{err}.")));
            Some(TlsSource::Managed(meta::managed_tls_secret_name(
                &identity.name,
            )))
        }
    };

    let queue = queue(
        &spec.queue,
        spec.effective_replication_factor(),
        &mut problems,
    );
    let limits = limits(&spec.limits, &mut problems);

    if spec.listeners.requires_auth() && spec.relay.auth_secret_ref.is_none() {
        problems.push(Problem::invalid_spec(
            "spec.listeners.submission and spec.listeners.implicitTls need spec.relay.authSecretRef: \
             without users, no client can authenticate on them.",
        ));
    }

    let resolved = Pool {
        hostname: spec.hostname.clone(),
        image: spec
            .image
            .clone()
            .unwrap_or_else(|| default_image.to_owned()),
        image_pull_policy: spec.image_pull_policy.map(|p| {
            match p {
                ImagePullPolicy::Always => "Always",
                ImagePullPolicy::IfNotPresent => "IfNotPresent",
                ImagePullPolicy::Never => "Never",
            }
            .to_owned()
        }),
        resources: spec.resources.clone(),
        listeners,
        data_centres: spec
            .data_centres()
            .into_iter()
            .map(|dc| DataCentre {
                name: dc.name,
                replicas: dc.replicas,
                zone: dc.zone,
                node_selector: dc.node_selector,
                tolerations: dc.tolerations,
            })
            .collect(),
        queue,
        tls,
        relay: Relay {
            allowed_networks: spec.relay.allowed_networks.clone(),
            auth_secret: spec.relay.auth_secret_ref.as_ref().map(|r| r.name.clone()),
        },
        limits,
        domains: refs.domains.clone(),
        identity,
    };
    problems.splice(0..0, check(&resolved, refs));
    problems.extend(certificate(
        pool.status.as_ref().map_or(&[][..], |s| &s.conditions),
    ));
    Ok(Validated {
        pool: resolved,
        problems,
    })
}

fn identity(pool: &RelayPool) -> Result<PoolIdentity> {
    let meta = &pool.metadata;
    Ok(PoolIdentity {
        name: meta.name.clone().ok_or(Error::MissingObjectKey("name"))?,
        namespace: meta
            .namespace
            .clone()
            .ok_or(Error::MissingObjectKey("namespace"))?,
        uid: meta.uid.clone().ok_or(Error::MissingObjectKey("uid"))?,
        generation: meta.generation,
        api_version: RelayPool::api_version(&()).into_owned(),
        kind: RelayPool::kind(&()).into_owned(),
    })
}

fn queue(spec: &QueueSpec, replication_factor: i32, problems: &mut Vec<Problem>) -> Queue {
    let retry_schedule = spec.retry_schedule().unwrap_or_else(|err| {
        problems.push(Problem::invalid_spec(format!(
            "{err}; using the default schedule."
        )));
        QueueSpec {
            retry: RetrySpec::default(),
            ..spec.clone()
        }
        .retry_schedule()
        .unwrap_or_default()
    });
    let max_age = spec.max_age().unwrap_or_else(|err| {
        problems.push(Problem::invalid_spec(format!("{err}; using 5d.")));
        Duration::from_secs(5 * 24 * 3600)
    });
    Queue {
        replication_factor: u32::try_from(replication_factor.max(1)).unwrap_or(1),
        min_data_centres: u32::try_from(spec.min_data_centres.max(1)).unwrap_or(1),
        storage: Storage {
            size: spec.storage.size.clone(),
            class: spec.storage.storage_class_name.clone(),
        },
        retry_schedule,
        max_age,
    }
}

fn limits(spec: &LimitsSpec, problems: &mut Vec<Problem>) -> Limits {
    let defaults = LimitsSpec::default();
    let max_message_size = spec.max_message_size_bytes().unwrap_or_else(|err| {
        problems.push(Problem::invalid_spec(format!(
            "{err}; using {}.",
            defaults.max_message_size.0
        )));
        defaults
            .max_message_size_bytes()
            .unwrap_or(25 * 1024 * 1024)
    });
    let positive = |v: i32| u32::try_from(v.max(1)).unwrap_or(1);
    Limits {
        max_message_size,
        max_recipients: positive(spec.max_recipients),
        max_connections: positive(spec.max_connections),
        max_connections_per_client: positive(spec.max_connections_per_client),
        per_destination_concurrency: positive(spec.per_destination.concurrency),
        per_destination_rate_per_minute: spec.per_destination.rate_per_minute.map(positive),
    }
}

/// Checks a resolved pool against what its spec points at.
pub fn check(pool: &Pool, refs: &Dereferenced) -> Vec<Problem> {
    let namespace = &pool.identity.namespace;
    let mut problems = Vec::new();
    if let Some(tls) = &refs.tls_secret {
        problems.extend(check_secret(tls, namespace, &["tls.crt", "tls.key"]));
    }
    if let Some(auth) = &refs.auth_secret {
        problems.extend(check_secret(auth, namespace, &[AUTH_USERS_KEY]));
    }
    let total = pool.total_replicas();
    let factor = pool.queue.replication_factor;
    if i64::from(factor) > i64::from(total) {
        problems.push(Problem::blocking(
            reasons::INSUFFICIENT_REPLICAS,
            format!(
                "spec.queue.replicationFactor is {factor} but the pool has {total} replica(s): \
                 nodes cannot place {factor} copies of a message and will refuse mail with 451. \
                 Add replicas or lower the replication factor."
            ),
        ));
    }
    let min_dcs = pool.queue.min_data_centres;
    let dcs = pool
        .data_centres
        .iter()
        .filter(|dc| dc.replicas > 0)
        .count();
    if usize::try_from(min_dcs).unwrap_or(usize::MAX) > dcs {
        problems.push(Problem::blocking(
            reasons::INSUFFICIENT_DATA_CENTRES,
            format!(
                "spec.queue.minDataCentres is {min_dcs} but only {dcs} data centre(s) have replicas: \
                 nodes cannot spread copies as required and will refuse mail with 451. \
                 Add data centres or lower minDataCentres."
            ),
        ));
    }
    problems
}

/// The certificate controller's verdict (`CertificateReady`, from the stored status) as
/// a problem of the pool: without a usable certificate the nodes cannot offer the TLS
/// the spec asks for, so it blocks `Ready`. A certificate still being issued is not a
/// problem yet, and a missing user Secret is already reported by [`check`].
fn certificate(conditions: &[Condition]) -> Option<Problem> {
    let verdict = conditions
        .iter()
        .find(|c| c.type_ == condition_types::CERTIFICATE_READY)?;
    let transient = [reasons::CERTIFICATE_PENDING, reasons::SECRET_NOT_FOUND];
    (verdict.status == "False" && !transient.contains(&verdict.reason.as_str())).then(|| {
        Problem::blocking(
            reasons::CERTIFICATE_NOT_READY,
            format!(
                "The listener certificate is not usable ({}): {}",
                verdict.reason, verdict.message
            ),
        )
    })
}

fn check_secret(
    secret: &ReferencedSecret,
    namespace: &str,
    required_keys: &[&str],
) -> Option<Problem> {
    let Some(found) = &secret.found else {
        return Some(Problem::blocking(
            reasons::SECRET_NOT_FOUND,
            format!(
                "Secret {:?} referenced by {} not found in namespace {namespace:?}.",
                secret.name, secret.field
            ),
        ));
    };
    let missing: Vec<&str> = required_keys
        .iter()
        .copied()
        .filter(|k| !found.keys.contains(*k))
        .collect();
    (!missing.is_empty()).then(|| {
        Problem::blocking(
            reasons::SECRET_INVALID,
            format!(
                "Secret {:?} referenced by {} in namespace {namespace:?} lacks key(s) {}.",
                secret.name,
                secret.field,
                missing.join(", ")
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn verdict(status: &str, reason: &str) -> Vec<Condition> {
        vec![Condition {
            type_: condition_types::CERTIFICATE_READY.into(),
            status: status.into(),
            reason: reason.into(),
            message: "Secret \"user-tls\": the certificate expired".into(),
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            observed_generation: None,
        }]
    }

    #[test]
    fn an_unusable_certificate_blocks_ready_naming_the_verdict() {
        let problem = certificate(&verdict("False", "Expired")).unwrap();
        assert!(problem.blocks_ready);
        assert_eq!(problem.reason, reasons::CERTIFICATE_NOT_READY);
        assert!(problem.message.contains("(Expired)"), "{}", problem.message);
        assert!(problem.message.contains("user-tls"), "{}", problem.message);
        assert!(certificate(&verdict("False", reasons::CERT_MANAGER_MISSING)).is_some());
    }

    #[test]
    fn issued_pending_or_unchecked_certificates_are_no_problem() {
        assert_eq!(certificate(&[]), None);
        assert_eq!(
            certificate(&verdict("True", reasons::CERTIFICATE_ISSUED)),
            None
        );
        assert_eq!(
            certificate(&verdict("True", reasons::CERTIFICATE_EXPIRING)),
            None
        );
        assert_eq!(
            certificate(&verdict("False", reasons::CERTIFICATE_PENDING)),
            None
        );
        // Reported by `check` already, with the field that names the Secret.
        assert_eq!(
            certificate(&verdict("False", reasons::SECRET_NOT_FOUND)),
            None
        );
    }
}
