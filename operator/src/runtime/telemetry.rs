//! Process-wide logging setup.
//!
//! The filter comes only from `--log-level` (or `SMTPFLEET_LOG_LEVEL`), not from
//! `RUST_LOG`, so that one documented setting controls verbosity in the Helm chart.

use std::io::IsTerminal;

use thiserror::Error;
use tracing_subscriber::EnvFilter;

use super::cli::LogFormat;

/// Why logging could not be set up.
#[derive(Debug, Error)]
pub enum TelemetryError {
    /// The `--log-level` directive does not parse.
    #[error("invalid --log-level {directive:?}: {source}")]
    InvalidFilter {
        /// The directive as given.
        directive: String,
        /// The parser's complaint.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber is already installed; a second one would silently lose logs.
    #[error("logging is already initialised: {0}")]
    AlreadyInitialised(String),
}

/// Installs the global `tracing` subscriber writing to stdout in the given format.
///
/// Returns an error rather than panicking when called twice, so that embedding the
/// runtime (tests, another binary) cannot crash the process over logging.
pub fn init(format: LogFormat, directive: &str) -> Result<(), TelemetryError> {
    let filter = EnvFilter::try_new(directive).map_err(|source| TelemetryError::InvalidFilter {
        directive: directive.to_owned(),
        source,
    })?;
    // Colours only on a terminal: escape codes make `kubectl logs` unreadable.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    let installed = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    installed.map_err(|err| TelemetryError::AlreadyInitialised(err.to_string()))
}
