//! Delivery: from the spool to the next hop.
//!
//! `manager` schedules queued messages per destination; `delivery` runs one connection
//! to a destination; `client` speaks SMTP; `mx` finds where a domain's mail goes;
//! `queue` holds the pure scheduling and state decisions.

pub mod client;
pub mod config;
pub mod metrics;
pub mod mx;
pub mod outcome;
pub mod queue;
pub mod throttle;
pub mod tls;
