//! smtp-node: the smtpfleet SMTP relay.
pub mod config;
pub mod spool;
