//! The RelayPool controller.

pub mod apply;
pub mod backoff;
pub mod build;
pub mod changes;
pub mod conditions;
pub mod context;
pub mod dereference;
pub mod error;
pub mod model;
pub mod status;
pub mod validate;

pub use error::{Error, Result};

#[cfg(test)]
mod testing;
