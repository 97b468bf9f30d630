//! The pool's ServiceAccount.

use k8s_openapi::api::core::v1::ServiceAccount;

use super::meta;
use crate::relaypool::model::Pool;

/// `<pool>`: a dedicated identity for the pods, with no token mounted. smtp-node never
/// calls the Kubernetes API (its peers come from the rendered configuration), so a
/// token would only be something to steal; a dedicated account keeps any RBAC a user
/// binds to the default account away from the mail nodes.
pub fn service_account(pool: &Pool) -> ServiceAccount {
    let name = &pool.identity.name;
    ServiceAccount {
        metadata: meta::child_meta(
            &pool.identity,
            meta::service_account_name(name),
            meta::pool_labels(name),
        ),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}
