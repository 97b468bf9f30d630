//! Small references to other objects in the same namespace.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{patterns, schema};

/// A Secret in the same namespace as the referring object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[schemars(transform = schema::unwrap_descriptions)]
pub struct SecretReference {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = patterns::DNS_SUBDOMAIN))]
    pub name: String,
}
