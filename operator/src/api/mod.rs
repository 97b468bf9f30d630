//! The smtpfleet API (`smtpfleet.io/v1alpha1`): the `RelayPool` and `MailDomain` custom
//! resources, their status types, condition vocabularies, and pure helpers that resolve
//! defaults for the reconcilers.
//!
//! The CRDs generated from these types (see [`crate::crdgen`]) carry the validation the
//! API server enforces; the helpers here assume a spec that passed it, and return
//! [`SpecError`] rather than panic when one did not.

pub mod conditions;
pub mod duration;
pub mod error;
pub mod mail_domain;
pub mod patterns;
pub mod quantity;
pub mod refs;
pub mod relay_pool;
pub mod schema;

pub use error::SpecError;
pub use mail_domain::{MailDomain, MailDomainSpec, MailDomainStatus};
pub use relay_pool::{RelayPool, RelayPoolSpec, RelayPoolStatus};

/// API group of every smtpfleet resource.
pub const GROUP: &str = "smtpfleet.io";
/// API version served and stored.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of smtpfleet objects.
pub const API_VERSION: &str = "smtpfleet.io/v1alpha1";
/// Category that `kubectl get smtpfleet` lists.
pub const CATEGORY: &str = "smtpfleet";
