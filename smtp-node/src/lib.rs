//! smtp-node: the smtpfleet SMTP relay.
pub mod config;
pub mod outbound;
pub mod spool;
