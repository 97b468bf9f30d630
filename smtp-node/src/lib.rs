//! smtp-node: the smtpfleet SMTP relay.
pub mod config;
pub mod dkim;
pub mod dsn;
pub mod outbound;
pub mod spool;
