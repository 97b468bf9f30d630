//! smtpfleet operator.
pub mod dkim_keys;
