//! smtpfleet operator.

pub mod api;
pub mod crdgen;
pub mod events;
pub mod relaypool;
pub mod runtime;
