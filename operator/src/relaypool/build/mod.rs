//! Pure construction of every child object of a RelayPool, from the resolved
//! [`Pool`](super::model::Pool) model. Nothing here talks to the API server, so every
//! object can be checked in unit tests.

pub mod config;
pub mod domains;
pub mod layout;
pub mod meta;
pub mod node_config;
pub mod pdb;
pub mod rbac;
pub mod service;
pub mod service_account;
pub mod statefulset;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use thiserror::Error;

use super::model::Pool;

/// Every child object of a pool, fully specified.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    /// The pods' identity.
    pub service_account: ServiceAccount,
    /// The pods' permissions on Leases (the arbiter).
    pub role: Role,
    /// Binds [`Children::role`] to the ServiceAccount.
    pub role_binding: RoleBinding,
    /// The node configuration.
    pub config_map: ConfigMap,
    /// Headless Service for peer traffic.
    pub peer_service: Service,
    /// Service for SMTP clients.
    pub client_service: Service,
    /// One per data centre, in spec order.
    pub statefulsets: Vec<StatefulSet>,
    /// Voluntary disruption budget.
    pub pod_disruption_budget: PodDisruptionBudget,
}

/// Builds every child of `pool` but its domain set ([`domains::build`]).
///
/// The node configuration and the StatefulSets are built from
/// [`domains::restart_inputs`], the pool without its domains: what MailDomains change is
/// reloaded by the nodes and must never roll the pods.
pub fn build(pool: &Pool) -> Result<Children, BuildError> {
    let fixed = domains::restart_inputs(pool);
    let pool = &fixed;
    let rendered = config::render(pool)?;
    Ok(Children {
        service_account: service_account::service_account(pool),
        role: rbac::role(pool),
        role_binding: rbac::role_binding(pool),
        config_map: config::config_map(pool, &rendered),
        peer_service: service::peer_service(pool),
        client_service: service::client_service(pool),
        statefulsets: pool
            .data_centres
            .iter()
            .map(|dc| statefulset::statefulset(pool, dc, &rendered.hash))
            .collect(),
        pod_disruption_budget: pdb::pod_disruption_budget(pool),
    })
}

/// Why the desired objects could not be built.
#[derive(Debug, Error)]
pub enum BuildError {
    /// The rendered smtp-node configuration could not be serialized.
    #[error("rendering the smtp-node configuration: {0}")]
    RenderConfig(#[from] serde_yaml::Error),
}

#[cfg(test)]
mod tests;
