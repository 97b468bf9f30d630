//! Errors from reading values out of a spec.
//!
//! The API server already validates every field with the CRD schema and CEL rules, so
//! these errors only show up for objects that bypassed validation (an older CRD, a
//! hand-edited etcd) or for values that schema patterns can only approximate.

use thiserror::Error;

/// A spec value that does not mean what the schema promises.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpecError {
    /// A duration string (`5m`, `7d`) that does not parse.
    #[error("{field}: invalid duration {value:?}: {reason}")]
    Duration {
        /// Field path, for the message.
        field: String,
        /// The offending value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A Kubernetes quantity (`25Mi`) that does not parse or is out of range.
    #[error("{field}: invalid quantity {value:?}: {reason}")]
    Quantity {
        /// Field path, for the message.
        field: String,
        /// The offending value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// More than one of a set of mutually exclusive fields is set.
    #[error("{field}: set exactly one of {options}")]
    ExactlyOne {
        /// Field path of the enclosing object.
        field: String,
        /// The alternatives, for the message.
        options: String,
    },
}
