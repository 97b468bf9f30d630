//! smtpfleet operator.

pub mod events;
pub mod relaypool;
pub mod runtime;
