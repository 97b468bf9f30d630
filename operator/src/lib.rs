//! smtpfleet operator.
pub mod dkim_keys;
pub mod dns;
pub mod maildomain;
