//! Lenient readers for the loose JSON that ComfyUI's Python writes: numbers that are integers
//! one time and floats the next (`1`, `1.0`, `1e9`), node ids that a few custom nodes write as
//! integers, `null` where a string, list or object is expected, and an empty `node_errors` sent
//! as `[]`.
//!
//! A value of the wrong kind is read as absent (or empty, or 0) rather than failing the whole
//! body: only a required field ([`required_string`]) and a map entry of the wrong shape
//! ([`lenient_map`]) are errors. Only [`number_to_f64`] is public (as `wire::number_to_f64`); the
//! rest are `deserialize_with` helpers for the wire types. Nothing here knows a route or a message
//! type. These readers are for numbers the client only reads (timestamps, sizes, counts): a
//! number that must round-trip exactly stays a [`Number`] or [`Value`] in its type and must not
//! pass through here.

use std::collections::BTreeMap;

use serde::de::{self, DeserializeOwned};
use serde::{Deserialize, Deserializer};
use serde_json::{Number, Value};

/// A JSON number as `f64`, whatever its spelling (`1`, `1.0`, `1e9`).
pub fn number_to_f64(number: &Number) -> f64 {
    number
        .as_f64()
        .or_else(|| number.to_string().parse().ok())
        .unwrap_or(f64::NAN)
}

/// Any JSON number as `f64`; `None` for anything else.
fn value_to_f64(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => Some(number_to_f64(n)),
        _ => None,
    }
}

/// An integer as `i64`, also from a float (truncated); `None` for anything else or out of range.
pub(super) fn value_to_i64(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            let f = number_to_f64(n);
            // Truncation is intended: timestamps are whole milliseconds.
            (f.is_finite() && f.abs() < 9.0e18).then_some(f as i64)
        }),
        _ => None,
    }
}

/// An integer as `u64`, also from a float (truncated); `None` for anything else or out of range.
pub(super) fn value_to_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64().or_else(|| {
            let f = number_to_f64(n);
            (f.is_finite() && (0.0..1.8e19).contains(&f)).then_some(f as u64)
        }),
        _ => None,
    }
}

/// `Option<i64>` that accepts an integer or a float and reads anything else as `None`.
pub(super) fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(Option::<Value>::deserialize(d)?
        .as_ref()
        .and_then(value_to_i64))
}

/// `Option<u64>` that accepts an integer or a float and reads anything else as `None`.
pub(super) fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(Option::<Value>::deserialize(d)?
        .as_ref()
        .and_then(value_to_u64))
}

/// `f64` that accepts any number; anything else (or absence, with `default`) is 0.
pub(super) fn lenient_f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<Value>::deserialize(d)?
        .as_ref()
        .and_then(value_to_f64)
        .unwrap_or(0.0))
}

/// `Option<String>` that accepts a string, and reads a number as its decimal text and anything
/// else (null included) as `None`. Node ids are strings on the wire, but a few custom nodes write
/// integers.
pub(super) fn lenient_opt_string<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// `Vec<String>` that keeps strings and numbers (as text) and skips anything else; null or
/// absence is empty.
pub(super) fn lenient_string_list<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::Array(items)) => items
            .into_iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    })
}

/// A map that reads `null` (or a list, as some old servers send for an empty `node_errors`) as
/// empty.
pub(super) fn lenient_map<'de, D, T>(d: D) -> Result<BTreeMap<String, T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    match Option::<Value>::deserialize(d)? {
        Some(Value::Object(map)) => map
            .into_iter()
            .map(|(k, v)| {
                serde_json::from_value(v)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| de::Error::custom(format!("entry {k}: {e}")))
            })
            .collect(),
        _ => Ok(BTreeMap::new()),
    }
}

/// `String` that reads `null` or absence as empty, and any other non-string as its JSON text.
pub(super) fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::String(s)) => s,
        None | Some(Value::Null) => String::new(),
        Some(other) => other.to_string(),
    })
}

/// `bool` that is true only for JSON `true`; anything else (`null`, `1`, `"true"`) is false.
pub(super) fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(matches!(
        Option::<Value>::deserialize(d)?,
        Some(Value::Bool(true))
    ))
}

/// `Vec<bool>` in which an item that is not a bool is false; anything but a list is empty.
pub(super) fn lenient_bool_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<bool>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::Array(items)) => items.iter().map(|v| v.as_bool().unwrap_or(false)).collect(),
        _ => Vec::new(),
    })
}

/// A required string that also accepts a number (as its decimal text); absence, `null` or
/// another kind is an error.
pub(super) fn required_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    lenient_opt_string(d)?.ok_or_else(|| de::Error::custom("expected a string"))
}
