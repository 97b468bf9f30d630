//! Pure construction of every child object of a RelayPool, from the resolved
//! [`Pool`](super::model::Pool) model. Nothing here talks to the API server, so every
//! object can be checked in unit tests.

pub mod layout;
pub mod meta;
pub mod pdb;
pub mod service;
pub mod service_account;
pub mod statefulset;

use thiserror::Error;

/// Why the desired objects could not be built.
#[derive(Debug, Error)]
pub enum BuildError {
    /// The rendered smtp-node configuration could not be serialized.
    #[error("rendering the smtp-node configuration: {0}")]
    RenderConfig(#[from] serde_yaml::Error),
}

#[cfg(test)]
mod tests;
