//! The RelayPool controller.
//!
//! A reconciliation is a pipeline with one module per step:
//!
//! 1. [`dereference`]: read what the spec points at (TLS and auth Secrets, the
//!    MailDomains bound to the pool) into a plain struct;
//! 2. [`validate`] (pure): resolve the spec into the [`model::Pool`] with every default
//!    applied, and list the problems a person must fix;
//! 3. [`build`] (pure): every child object, fully typed;
//! 4. [`apply`]: server-side apply of every child under one field manager, then
//!    deletion of orphaned StatefulSets — the only step that writes children;
//! 5. [`status`] (pure): replica counts and conditions, written with one status patch.
//!
//! [`controller`] wires this into a kube-runtime `Controller` with the finalizer
//! ([`cleanup`] holds the deletion hook) and the error policy ([`backoff`]); [`changes`]
//! decides which changes deserve an Event.
//!
//! Start it with [`run`] and a [`Context`]:
//! ```no_run
//! # async fn example(runtime: smtpfleet_operator::runtime::Context) {
//! use std::sync::Arc;
//! use smtpfleet_operator::relaypool::{self, Context};
//! relaypool::run(Arc::new(Context::from_runtime(&runtime))).await.unwrap();
//! # }
//! ```

pub mod apply;
pub mod autoscale;
pub mod backoff;
pub mod build;
pub mod changes;
pub mod cleanup;
pub mod conditions;
pub mod context;
pub mod controller;
pub mod dereference;
pub mod error;
pub mod metrics;
pub mod model;
pub mod rollout;
pub mod scaledown;
pub mod status;
pub mod validate;

pub use context::{Context, NoMetrics, ReconcileObserver, ReconcileSpan, Settings};
pub use controller::{FINALIZER, RunError, error_policy, reconcile, run};
pub use error::{Error, Result};

#[cfg(test)]
mod testing;
