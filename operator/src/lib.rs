//! smtpfleet operator.

pub mod relaypool;
