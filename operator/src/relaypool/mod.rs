//! The RelayPool controller.

pub mod apply;
pub mod backoff;
pub mod build;
pub mod conditions;
pub mod context;
pub mod error;
pub mod model;

pub use error::{Error, Result};
