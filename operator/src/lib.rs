//! smtpfleet operator.

pub mod api;
pub mod crdgen;
pub mod runtime;
pub mod dkim_keys;
pub mod dns;
pub mod maildomain;
