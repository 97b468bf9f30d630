//! smtp-node: the smtpfleet SMTP relay.
pub mod admin;
pub mod auth;
pub mod config;
pub mod dkim;
pub mod domains;
pub mod dsn;
pub mod exit;
pub mod http;
pub mod inbound;
pub mod metrics;
pub mod node;
pub mod outbound;
pub mod peer_tls;
pub mod policy;
pub mod replication;
pub mod spool;
pub mod supervisor;
