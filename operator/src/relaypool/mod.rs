//! The RelayPool controller.

pub mod apply;
pub mod backoff;
pub mod build;
pub mod conditions;
pub mod error;

pub use error::{Error, Result};
