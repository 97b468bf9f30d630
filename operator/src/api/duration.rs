//! Durations as the API spells them: `90s`, `5m`, `1h30m`, `7d`.
//!
//! The format is Go's duration syntax restricted to integers, plus `d` for days (see
//! [`crate::api::patterns::DURATION`]). Parsing lives here so that the operator and the
//! tests read these fields exactly the way the schema validates them.

use std::time::Duration;

use super::error::SpecError;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string is empty.
    #[error("empty duration")]
    Empty,
    /// A number is not followed by one of the units `ms`, `s`, `m`, `h`, `d`.
    #[error("expected a unit (ms, s, m, h, d) after {0}")]
    MissingUnit(u64),
    /// A unit or other text where a number was expected.
    #[error("expected a number at {0:?}")]
    MissingNumber(String),
    /// The total does not fit in a `u64` of milliseconds.
    #[error("duration too large")]
    Overflow,
}

/// Parses a duration such as `1h30m` or `7d`.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut rest = text;
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(DurationError::MissingNumber(rest.to_owned()));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| DurationError::Overflow)?;
        rest = &rest[digits..];
        // `ms` must be tried before `m`.
        let (unit_ms, unit_len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('d') {
            (86_400_000, 1)
        } else {
            return Err(DurationError::MissingUnit(number));
        };
        rest = &rest[unit_len..];
        total_ms = number
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or(DurationError::Overflow)?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Parses the duration in `field`, naming the field in the error.
pub fn parse_field(field: &str, text: &str) -> Result<Duration, SpecError> {
    parse(text).map_err(|e| SpecError::Duration {
        field: field.to_owned(),
        value: text.to_owned(),
        reason: e.to_string(),
    })
}

/// Formats a duration in the API's syntax, largest units first (`1d2h`, `90s` → `1m30s`).
///
/// The inverse of [`parse`] for whole milliseconds; useful when the operator writes a
/// default or a computed value back into a status or a rendered config.
pub fn format(duration: Duration) -> String {
    let mut ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, unit_ms) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= unit_ms {
            out.push_str(&(ms / unit_ms).to_string());
            out.push_str(unit);
            ms %= unit_ms;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_units() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(parse("5d"), Ok(Duration::from_secs(432_000)));
    }

    #[test]
    fn parses_compound_durations() {
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse("1d12h"), Ok(Duration::from_secs(129_600)));
        assert_eq!(parse("1m500ms"), Ok(Duration::from_millis(60_500)));
    }

    #[test]
    fn rejects_malformed_text() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        assert_eq!(parse("5"), Err(DurationError::MissingUnit(5)));
        assert_eq!(parse("5w"), Err(DurationError::MissingUnit(5)));
        assert_eq!(parse("h"), Err(DurationError::MissingNumber("h".into())));
        assert_eq!(parse("1.5h"), Err(DurationError::MissingUnit(1)));
        assert_eq!(
            parse("-5m"),
            Err(DurationError::MissingNumber("-5m".into()))
        );
        assert_eq!(parse("99999999999999999999d"), Err(DurationError::Overflow));
        assert_eq!(parse("999999999999999d"), Err(DurationError::Overflow));
    }

    #[test]
    fn format_round_trips() {
        for text in ["5m", "1h30m", "7d", "1d2h3m4s5ms", "250ms"] {
            let parsed = parse(text).unwrap();
            assert_eq!(format(parsed), text);
        }
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
        assert_eq!(format(Duration::ZERO), "0s");
    }
}
