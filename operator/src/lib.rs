//! smtpfleet operator.

pub mod api;
pub mod crdgen;
pub mod runtime;
