//! smtpfleet operator.

pub mod api;
pub mod certificate;
pub mod crdgen;
pub mod delivery;
pub mod dkim_keys;
pub mod dns;
pub mod events;
pub mod maildomain;
pub mod queue;
pub mod relaypool;
pub mod runtime;
