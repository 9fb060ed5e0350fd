//! Exact comparisons of JSON numbers on their text (the crate enables serde_json's
//! `arbitrary_precision`): a value against a bound, a value against a combo's choices.

use std::cmp::Ordering;

use serde_json::{Number, Value};

/// How two JSON numbers order, exactly (as written, not as floats): as integers when both
/// are (no copy, the common case of a seed or a step count against its bounds), else as
/// decimals. `None` when one is not a number [`parse_decimal`] reads.
pub(super) fn exact_order(a: &Number, b: &Number) -> Option<Ordering> {
    if let (Some(a), Some(b)) = (a.as_i128(), b.as_i128()) {
        return Some(a.cmp(&b));
    }
    Some(parse_decimal(a.as_str())?.cmp(&parse_decimal(b.as_str())?))
}

/// JSON equality with numbers compared by value (`1` equals `1.0`, as in Python).
pub(super) fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            match (parse_decimal(x.as_str()), parse_decimal(y.as_str())) {
                (Some(x), Some(y)) => x == y,
                _ => x == y,
            }
        }
        _ => a == b,
    }
}

/// An exact decimal: `0.d1d2...dn * 10^exp`, normalized (no leading or
/// trailing zero digits; zero has no digits and is never negative), so two
/// spellings of one value (`1`, `1.0`, `10e-1`) are equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Decimal {
    /// Whether the value is below zero.
    negative: bool,
    /// Significant digits, each 0..=9, first and last non-zero.
    digits: Vec<u8>,
    /// Decimal exponent of the leading digit's place, plus one.
    exp: i64,
}

/// Exponents are clamped to this magnitude, far beyond any meaningful bound.
const EXPONENT_LIMIT: i64 = 1 << 60;

impl Decimal {
    pub(super) fn is_integer(&self) -> bool {
        self.digits.is_empty() || self.exp >= i64::try_from(self.digits.len()).unwrap_or(i64::MAX)
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        let sign = |d: &Decimal| match (d.digits.is_empty(), d.negative) {
            (true, _) => 0,
            (false, true) => -1,
            (false, false) => 1,
        };
        match sign(self).cmp(&sign(other)) {
            Ordering::Equal if sign(self) == 0 => Ordering::Equal,
            Ordering::Equal => {
                let magnitude = self
                    .exp
                    .cmp(&other.exp)
                    .then_with(|| self.digits.cmp(&other.digits));
                if self.negative {
                    magnitude.reverse()
                } else {
                    magnitude
                }
            }
            unequal => unequal,
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Parses a JSON number's text (`-12`, `3.50`, `1e9`, `18446744073709551616`)
/// without loss. `None` for anything that is not a decimal number.
pub(super) fn parse_decimal(text: &str) -> Option<Decimal> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (mantissa, exponent) = match rest.split_once(['e', 'E']) {
        Some((m, e)) => (m, parse_exponent(e)?),
        None => (rest, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int_part.is_empty() && frac_part.is_empty())
        || !all_digits(int_part)
        || !all_digits(frac_part)
    {
        return None;
    }
    let mut digits: Vec<u8> = int_part
        .bytes()
        .chain(frac_part.bytes())
        .map(|b| b - b'0')
        .collect();
    let leading = digits.iter().take_while(|&&d| d == 0).count();
    digits.drain(..leading);
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        return Some(Decimal {
            negative: false,
            digits,
            exp: 0,
        });
    }
    let places = |n: usize| i64::try_from(n).unwrap_or(EXPONENT_LIMIT);
    let exp = places(int_part.len())
        .saturating_sub(places(leading))
        .saturating_add(exponent);
    Some(Decimal {
        negative,
        digits,
        exp,
    })
}

/// An exponent's digits with an optional sign, clamped to [`EXPONENT_LIMIT`].
fn parse_exponent(text: &str) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let magnitude = digits.bytes().fold(0i64, |acc, b| {
        acc.saturating_mul(10)
            .saturating_add(i64::from(b - b'0'))
            .min(EXPONENT_LIMIT)
    });
    Some(if negative { -magnitude } else { magnitude })
}
