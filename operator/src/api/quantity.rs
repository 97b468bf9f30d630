//! Kubernetes quantities (`25Mi`, `10Gi`, `1e6`, `26214400`) as byte counts.
//!
//! Sizes in the spec are [`Quantity`] values so that they read like every other size in
//! Kubernetes. smtp-node wants plain byte counts, so the operator converts them here,
//! following `resource.Quantity.Value()`: fractional results round up to the next byte.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Why a quantity could not be turned into a byte count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not a quantity at all.
    #[error("not a quantity: {0}")]
    Syntax(&'static str),
    /// Negative quantities make no sense as sizes.
    #[error("negative quantity")]
    Negative,
    /// Larger than `u64::MAX` bytes.
    #[error("quantity too large")]
    Overflow,
}

/// The byte count of a quantity, rounded up to a whole byte.
pub fn to_bytes(quantity: &Quantity) -> Result<u64, QuantityError> {
    parse_bytes(&quantity.0)
}

/// The byte count of a quantity string, rounded up to a whole byte.
pub fn parse_bytes(text: &str) -> Result<u64, QuantityError> {
    let text = text.trim();
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        Some(_) => (false, text),
        None => return Err(QuantityError::Syntax("empty")),
    };
    let number_len = unsigned
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let (number, suffix) = unsigned.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err(QuantityError::Syntax("no digits"));
    }
    if fraction.contains('.') {
        return Err(QuantityError::Syntax("more than one decimal point"));
    }
    // value = digits * 10^(exp10 - fraction.len()) * 2^exp2
    let digits = format!("{whole}{fraction}");
    let mantissa: u128 = digits.parse().map_err(|_| QuantityError::Overflow)?;
    let (exp10, exp2) = suffix_exponents(suffix)?;
    if negative && mantissa != 0 {
        return Err(QuantityError::Negative);
    }
    let exp10 = exp10 - i32::try_from(fraction.len()).map_err(|_| QuantityError::Overflow)?;
    let mut value = mantissa
        .checked_mul(1u128 << exp2)
        .ok_or(QuantityError::Overflow)?;
    if exp10 >= 0 {
        let scale = 10u128
            .checked_pow(exp10.unsigned_abs())
            .ok_or(QuantityError::Overflow)?;
        value = value.checked_mul(scale).ok_or(QuantityError::Overflow)?;
    } else {
        match 10u128.checked_pow(exp10.unsigned_abs()) {
            Some(scale) => value = value.div_ceil(scale),
            // Divisor beyond u128: any non-zero value is below one byte, which rounds up.
            None => value = u128::from(value != 0),
        }
    }
    u64::try_from(value).map_err(|_| QuantityError::Overflow)
}

/// Decimal and binary exponents of a quantity suffix.
fn suffix_exponents(suffix: &str) -> Result<(i32, u32), QuantityError> {
    let binary = match suffix {
        "Ki" => Some(10),
        "Mi" => Some(20),
        "Gi" => Some(30),
        "Ti" => Some(40),
        "Pi" => Some(50),
        "Ei" => Some(60),
        _ => None,
    };
    if let Some(exp2) = binary {
        return Ok((0, exp2));
    }
    let decimal = match suffix {
        "m" => Some(-3),
        "" => Some(0),
        "k" => Some(3),
        "M" => Some(6),
        "G" => Some(9),
        "T" => Some(12),
        "P" => Some(15),
        "E" => Some(18),
        _ => None,
    };
    if let Some(exp10) = decimal {
        return Ok((exp10, 0));
    }
    let exponent = suffix
        .strip_prefix('e')
        .or_else(|| suffix.strip_prefix('E'))
        .ok_or(QuantityError::Syntax("unknown suffix"))?;
    let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(QuantityError::Syntax("malformed exponent"));
    }
    let exp10: i32 = exponent.parse().map_err(|_| QuantityError::Overflow)?;
    Ok((exp10, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_decimal_suffixes() {
        assert_eq!(parse_bytes("25Mi"), Ok(25 * 1024 * 1024));
        assert_eq!(parse_bytes("10Gi"), Ok(10 * 1024 * 1024 * 1024));
        assert_eq!(parse_bytes("1Ki"), Ok(1024));
        assert_eq!(parse_bytes("1k"), Ok(1000));
        assert_eq!(parse_bytes("2M"), Ok(2_000_000));
        assert_eq!(parse_bytes("1E"), Ok(1_000_000_000_000_000_000));
        assert_eq!(parse_bytes("26214400"), Ok(26_214_400));
        assert_eq!(parse_bytes("+7"), Ok(7));
    }

    #[test]
    fn exponents_and_fractions_round_up() {
        assert_eq!(parse_bytes("1e6"), Ok(1_000_000));
        assert_eq!(parse_bytes("1E3"), Ok(1_000));
        assert_eq!(parse_bytes("1.5Ki"), Ok(1536));
        assert_eq!(parse_bytes("1.5"), Ok(2));
        assert_eq!(parse_bytes("1500m"), Ok(2));
        assert_eq!(parse_bytes("1m"), Ok(1));
        assert_eq!(parse_bytes(".5Mi"), Ok(512 * 1024));
        assert_eq!(parse_bytes("25e-1"), Ok(3));
        assert_eq!(parse_bytes("1e-200"), Ok(1));
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("-0"), Ok(0));
    }

    #[test]
    fn rejects_garbage_negative_and_huge() {
        assert_eq!(parse_bytes(""), Err(QuantityError::Syntax("empty")));
        assert_eq!(parse_bytes("Mi"), Err(QuantityError::Syntax("no digits")));
        assert_eq!(
            parse_bytes("10MB"),
            Err(QuantityError::Syntax("unknown suffix"))
        );
        assert_eq!(
            parse_bytes("1e"),
            Err(QuantityError::Syntax("malformed exponent"))
        );
        assert_eq!(
            parse_bytes("1.2.3"),
            Err(QuantityError::Syntax("more than one decimal point"))
        );
        assert_eq!(parse_bytes("-1Mi"), Err(QuantityError::Negative));
        assert_eq!(parse_bytes("16Ei"), Err(QuantityError::Overflow));
        assert_eq!(parse_bytes("1e40"), Err(QuantityError::Overflow));
    }

    #[test]
    fn reads_quantity_values() {
        assert_eq!(to_bytes(&Quantity("25Mi".into())), Ok(26_214_400));
    }
}
