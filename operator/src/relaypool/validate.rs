//! Semantic checks beyond what the API server's schema and CEL rules enforce, and the
//! resolution of the spec into the [`Pool`](super::model::Pool) model.
//!
//! Problems found here do not stop the reconciliation: the pool is still reconciled as
//! far as possible (a missing TLS Secret may be created a minute later, and the pods
//! start then) and every problem becomes a `Degraded` condition a person can act on.

use super::dereference::{Dereferenced, ReferencedSecret};
use super::model::Pool;

/// Something wrong with the pool that a person must fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// CamelCase reason for the `Degraded` condition.
    pub reason: &'static str,
    /// A sentence naming what is wrong and where.
    pub message: String,
}

/// Checks a resolved pool and what its spec points at.
pub fn check(pool: &Pool, refs: &Dereferenced) -> Vec<Problem> {
    let namespace = &pool.identity.namespace;
    let mut problems = Vec::new();
    if let Some(tls) = &refs.tls_secret {
        problems.extend(check_secret(
            tls,
            namespace,
            "SecretNotFound",
            &["tls.crt", "tls.key"],
        ));
    }
    if let Some(auth) = &refs.auth_secret {
        problems.extend(check_secret(auth, namespace, "SecretNotFound", &[]));
    }
    let total = pool.total_replicas();
    let factor = pool.queue.replication_factor;
    if i64::from(factor) > i64::from(total) && total > 0 {
        problems.push(Problem {
            reason: "InsufficientReplicas",
            message: format!(
                "spec.queue.replicationFactor is {factor} but the pool has {total} replica(s): \
                 nodes cannot place {factor} copies of a message and will refuse mail with 451. \
                 Add replicas or lower the replication factor."
            ),
        });
    }
    let min_dcs = pool.queue.min_data_centres;
    let dcs = pool
        .data_centres
        .iter()
        .filter(|dc| dc.replicas > 0)
        .count();
    if usize::try_from(min_dcs).unwrap_or(usize::MAX) > dcs {
        problems.push(Problem {
            reason: "InsufficientDataCentres",
            message: format!(
                "spec.queue.minDataCentres is {min_dcs} but only {dcs} data centre(s) have replicas: \
                 nodes cannot spread copies as required and will refuse mail with 451. \
                 Add data centres or lower minDataCentres."
            ),
        });
    }
    problems
}

fn check_secret(
    secret: &ReferencedSecret,
    namespace: &str,
    missing_reason: &'static str,
    required_keys: &[&str],
) -> Option<Problem> {
    let Some(found) = &secret.found else {
        return Some(Problem {
            reason: missing_reason,
            message: format!(
                "Secret {:?} referenced by {} not found in namespace {namespace:?}.",
                secret.name, secret.field
            ),
        });
    };
    let missing: Vec<&str> = required_keys
        .iter()
        .copied()
        .filter(|k| !found.keys.contains(*k))
        .collect();
    (!missing.is_empty()).then(|| Problem {
        reason: "SecretInvalid",
        message: format!(
            "Secret {:?} referenced by {} in namespace {namespace:?} lacks key(s) {}.",
            secret.name,
            secret.field,
            missing.join(", ")
        ),
    })
}
