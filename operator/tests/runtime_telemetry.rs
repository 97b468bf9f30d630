//! Logging set-up; its own test binary because it installs the process-wide subscriber.

use smtpfleet_operator::runtime::LogFormat;
use smtpfleet_operator::runtime::telemetry::{TelemetryError, init};

#[test]
fn second_initialisation_is_an_error_not_a_panic() {
    assert!(matches!(
        init(LogFormat::Json, "info,[unclosed"),
        Err(TelemetryError::InvalidFilter { .. })
    ));
    init(LogFormat::Json, "info,kube=warn").unwrap();
    tracing::info!("logging works");
    assert!(matches!(
        init(LogFormat::Text, "debug"),
        Err(TelemetryError::AlreadyInitialised(_))
    ));
}
