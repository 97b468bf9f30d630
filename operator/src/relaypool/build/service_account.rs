//! The pool's ServiceAccount.

use k8s_openapi::api::core::v1::ServiceAccount;

use super::meta;
use crate::relaypool::model::Pool;

/// `<pool>`: a dedicated identity for the pods, so that the Role on Leases (see
/// `rbac.rs`) goes to the mail nodes only and any RBAC a user binds to the default
/// account stays away from them. The account itself mounts no token: the pod template
/// asks for one, so other pods that borrow the account do not get it silently.
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
