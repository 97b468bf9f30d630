//! smtpfleet operator.

pub mod runtime;
