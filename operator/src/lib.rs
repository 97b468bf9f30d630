//! smtpfleet operator.
