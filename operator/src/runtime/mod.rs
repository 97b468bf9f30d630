//! The operator process runtime: run flags, logging, the HTTP endpoint for probes and
//! metrics, leader election, and the lifecycle that starts the controllers once this
//! replica leads and stops them on SIGTERM.
//!
//! `main` plugs controllers in like this:
//! ```no_run
//! # use smtpfleet_operator::runtime::{self, Context, RunArgs};
//! # async fn relay_pools(ctx: Context) -> Result<(), std::io::Error> { Ok(()) }
//! # async fn example(args: RunArgs) -> Result<(), runtime::RunError> {
//! runtime::run(args, |ctx: Context| async move {
//!     relay_pools(ctx).await?;
//!     Ok(())
//! })
//! .await
//! # }
//! ```

pub mod cli;
pub mod controllers;
pub mod exit;
pub mod http;
pub mod leader;
pub mod metrics;
mod run;
pub mod scope;
pub mod telemetry;

pub use cli::{LogFormat, RunArgs};
pub use controllers::{ControllerExit, Controllers};
pub use http::Health;
pub use metrics::{Metrics, ReconcileMetrics};
pub use run::{
    CONTROLLER_STOP_TIMEOUT, Context, ControllerError, DnsSettings, ElectionSettings, RunError,
    Runtime, RuntimeConfig, run, shutdown_on_signals,
};
