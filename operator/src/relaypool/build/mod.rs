//! Pure construction of every child object of a RelayPool.

use thiserror::Error;

/// Why the desired objects could not be built.
#[derive(Debug, Error)]
pub enum BuildError {
    /// The rendered smtp-node configuration could not be serialized.
    #[error("rendering the smtp-node configuration: {0}")]
    RenderConfig(#[from] serde_yaml::Error),
}
