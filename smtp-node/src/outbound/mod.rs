//! Delivery: from the spool to the next hop.
//!
//! [`QueueManager`] schedules queued messages per destination (`manager`, with the pure
//! decisions in `queue`); `delivery` runs one connection's worth of work; `client` speaks
//! SMTP; `mx` finds where a domain's mail goes; `tls` holds the trust policies.
//!
//! Wiring it into a node:
//! ```text
//! let keyring = Arc::new(DkimKeyring::load(&dkim_configs)?);
//! let metrics = OutboundMetrics::register(&mut registry);
//! let manager = QueueManager::new(&delivery_config, keyring, Authority::Standalone(node_id), spool, metrics)?;
//! tokio::spawn(manager.run(stored_ids_rx, shutdown_token.cancelled_owned()));
//! ```

pub mod client;
pub mod config;
pub mod deliverability;
pub mod delivery;
pub mod manager;
pub mod metrics;
pub mod mx;
pub mod outcome;
pub mod queue;
#[cfg(test)]
pub(crate) mod test_support;
pub mod throttle;
pub mod tls;

pub use config::{DeliveryConfig, DkimAlgorithm, DkimConfig, SmarthostConfig, SmarthostTls};
pub use deliverability::{DeliveryLedger, DeliveryReport};
pub use manager::{OutboundError, QueueManager};
pub use metrics::OutboundMetrics;
