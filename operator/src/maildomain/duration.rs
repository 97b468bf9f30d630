//! Durations in specs (`rotateAfter`, `overlap`): Go/Kubernetes style (`2160h`,
//! `1h30m`, `90s`) plus `d` (days) and `w` (weeks), which key rotation periods are
//! naturally given in.

use chrono::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a duration: use a number and a unit (w, d, h, m, s), e.g. 90d or 2160h")]
pub struct DurationError(pub String);

/// Parses `90d`, `2160h`, `1h30m`, `45s`, `2w`; a sum of such parts, no sign, no spaces.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let err = || DurationError(text.to_string());
    let s = text.trim();
    if s.is_empty() {
        return Err(err());
    }
    let mut total = Duration::zero();
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err());
        }
        let n: i64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let part = match &rest[..unit_len] {
            "w" => Duration::try_weeks(n),
            "d" => Duration::try_days(n),
            "h" => Duration::try_hours(n),
            "m" => Duration::try_minutes(n),
            "s" => Duration::try_seconds(n),
            _ => None,
        }
        .ok_or_else(err)?;
        total = total.checked_add(&part).ok_or_else(err)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_sums() {
        assert_eq!(parse_duration("90d").unwrap(), Duration::days(90));
        assert_eq!(parse_duration("2160h").unwrap(), Duration::days(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::minutes(90));
        assert_eq!(parse_duration("720h0m0s").unwrap(), Duration::days(30));
        assert_eq!(parse_duration("2w").unwrap(), Duration::days(14));
        assert_eq!(parse_duration(" 45s ").unwrap(), Duration::seconds(45));
        for bad in [
            "",
            "d",
            "10",
            "10x",
            "-1d",
            "1.5h",
            "1 h",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
