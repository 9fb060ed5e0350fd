//! Python-compatible rendering of JSON values for the fake ComfyUI.
//!
//! ComfyUI is a Python program: its bodies are `json.dumps` output (", " and
//! ": " separators, non-ASCII escaped), its floats print like `repr(float)`
//! (`20.0`, `1e+16`), and its error messages embed `str()`/`repr()` of the
//! values a client sent (`'foo' not in ['a', 'b']`). This module owns those
//! renderings and the few Python coercions (`int()`, `float()`, `bool()`)
//! that prompt validation applies. It knows nothing of HTTP or prompts.

use std::cmp::Ordering;
use std::io;

use serde::Serialize;
use serde_json::{Map, Number, Value};

/// `repr(x)` of a Python float.
pub(crate) fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".to_owned();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.to_owned();
    }
    // `{:e}` yields the shortest round-trip digits, like Python's repr.
    let formatted = format!("{x:e}");
    let Some((mantissa, exponent)) = formatted.split_once('e') else {
        return formatted;
    };
    let Ok(exponent) = exponent.parse::<i32>() else {
        return formatted;
    };
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let point = exponent + 1;
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    if -4 < point && point <= 16 {
        let len = digits.len() as i32;
        if point <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-point) as usize));
            out.push_str(&digits);
        } else if point >= len {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', (point - len) as usize));
            out.push_str(".0");
        } else {
            let (int_part, frac_part) = digits.split_at(point as usize);
            out.push_str(int_part);
            out.push('.');
            out.push_str(frac_part);
        }
    } else {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        let e = point - 1;
        out.push('e');
        out.push(if e < 0 { '-' } else { '+' });
        out.push_str(&format!("{:02}", e.abs()));
    }
    out
}

/// A JSON number holding `repr(x)`, so it serializes like Python would.
pub(crate) fn float_number(x: f64) -> Value {
    if !x.is_finite() {
        // Python writes `Infinity`/`NaN`, which is not JSON; keep the body valid.
        return Value::Null;
    }
    serde_json::from_str::<Number>(&float_repr(x))
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// Whether a parsed JSON number is a Python `float` (as opposed to an `int`).
pub(crate) fn is_float(n: &Number) -> bool {
    n.to_string().contains(['.', 'e', 'E'])
}

/// Re-renders every float the way `json.loads` followed by `json.dumps`
/// would (`1e9` becomes `1000000000.0`), leaving integers exact.
pub(crate) fn pythonize(value: &mut Value) {
    match value {
        Value::Number(n) => {
            if is_float(n) {
                if let Some(x) = n.as_f64().filter(|x| x.is_finite())
                    && let Value::Number(new) = float_number(x)
                {
                    *n = new;
                }
            } else if n.to_string() == "-0" {
                *n = Number::from(0);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(pythonize),
        Value::Object(map) => map.values_mut().for_each(pythonize),
        _ => {}
    }
}

/// Python's `repr()` of a `str`.
pub(crate) fn str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0xa0).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `repr()` of the object `json.loads` would build from `value`.
pub(crate) fn repr(value: &Value) -> String {
    match value {
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Number(n) => number_str(n),
        Value::String(s) => str_repr(s),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(repr).collect();
            format!("[{}]", parts.join(", "))
        }
        Value::Object(map) => {
            let parts: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", str_repr(k), repr(v)))
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
    }
}

/// Python's `str()` of the object `json.loads` would build from `value`.
pub(crate) fn str_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => repr(other),
    }
}

/// `str()` of a JSON number as Python prints it.
fn number_str(n: &Number) -> String {
    if is_float(n) {
        n.as_f64().map(float_repr).unwrap_or_else(|| n.to_string())
    } else {
        n.to_string()
    }
}

/// Python's type name of the object `json.loads` would build from `value`.
pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if is_float(n) => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

/// Python truthiness (`bool(x)`).
pub(crate) fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
    }
}

/// Python `==` between two JSON-decoded objects (`1 == 1.0 == True`).
pub(crate) fn py_eq(a: &Value, b: &Value) -> bool {
    match (as_numeric(a), as_numeric(b)) {
        (Some(x), Some(y)) => return compare_numeric(&x, &y) == Ordering::Equal,
        (Some(_), None) | (None, Some(_)) => return false,
        (None, None) => {}
    }
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| py_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| py_eq(v, w)))
        }
        _ => false,
    }
}

/// A number in a form that compares exactly for integers.
#[derive(Debug, Clone)]
pub(crate) enum Numeric {
    /// An integer, as its canonical decimal digits (sign apart).
    Int { negative: bool, digits: String },
    /// A float.
    Float(f64),
}

/// The numeric value of a JSON number or bool, if it is one.
pub(crate) fn as_numeric(value: &Value) -> Option<Numeric> {
    match value {
        Value::Bool(b) => Some(Numeric::Int {
            negative: false,
            digits: if *b { "1" } else { "0" }.to_owned(),
        }),
        Value::Number(n) if is_float(n) => n.as_f64().map(Numeric::Float),
        Value::Number(n) => Some(int_numeric(&n.to_string())),
        _ => None,
    }
}

/// Splits an integer literal into sign and digits without leading zeros.
fn int_numeric(text: &str) -> Numeric {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let trimmed = rest.trim_start_matches('0');
    let digits = if trimmed.is_empty() { "0" } else { trimmed };
    Numeric::Int {
        negative: negative && digits != "0",
        digits: digits.to_owned(),
    }
}

impl Numeric {
    /// The value as a float (lossy for huge integers).
    fn as_f64(&self) -> f64 {
        match self {
            Numeric::Float(x) => *x,
            Numeric::Int { negative, digits } => {
                let magnitude = digits.parse::<f64>().unwrap_or(f64::INFINITY);
                if *negative { -magnitude } else { magnitude }
            }
        }
    }
}

/// Orders two numbers like Python does (exactly for two integers).
pub(crate) fn compare_numeric(a: &Numeric, b: &Numeric) -> Ordering {
    match (a, b) {
        (
            Numeric::Int {
                negative: na,
                digits: da,
            },
            Numeric::Int {
                negative: nb,
                digits: db,
            },
        ) => {
            let magnitude = da.len().cmp(&db.len()).then_with(|| da.cmp(db));
            match (na, nb) {
                (false, false) => magnitude,
                (true, true) => magnitude.reverse(),
                (true, false) => Ordering::Less,
                (false, true) => Ordering::Greater,
            }
        }
        _ => a
            .as_f64()
            .partial_cmp(&b.as_f64())
            .unwrap_or(Ordering::Equal),
    }
}

/// Parses a Python integer literal the way `int(str)` does (surrounding
/// whitespace, a sign, underscores between digits).
pub(crate) fn parse_int_literal(text: &str) -> Option<Numeric> {
    let s = text.trim();
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    if body.is_empty()
        || body.starts_with('_')
        || body.ends_with('_')
        || body.contains("__")
        || !body.chars().all(|c| c.is_ascii_digit() || c == '_')
    {
        return None;
    }
    let cleaned: String = s.chars().filter(|c| *c != '_').collect();
    Some(int_numeric(&cleaned))
}

/// Parses a Python float literal the way `float(str)` does.
pub(crate) fn parse_float_literal(text: &str) -> Option<f64> {
    let s = text.trim();
    let lower = s.to_ascii_lowercase();
    let unsigned = lower.trim_start_matches(['+', '-']);
    if matches!(unsigned, "inf" | "infinity" | "nan") {
        return lower
            .parse::<f64>()
            .ok()
            .or(Some(if lower.starts_with('-') {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            }));
    }
    if s.contains("__") || s.starts_with('_') || s.ends_with('_') {
        return None;
    }
    let cleaned: String = s.chars().filter(|c| *c != '_').collect();
    if cleaned.is_empty()
        || !cleaned
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
    {
        return None;
    }
    cleaned.parse::<f64>().ok()
}

/// The JSON value of an integer `Numeric`.
pub(crate) fn numeric_to_value(n: &Numeric) -> Value {
    match n {
        Numeric::Float(x) => float_number(*x),
        Numeric::Int { negative, digits } => {
            let text = if *negative {
                format!("-{digits}")
            } else {
                digits.clone()
            };
            serde_json::from_str::<Number>(&text)
                .map(Value::Number)
                .unwrap_or(Value::Null)
        }
    }
}

/// `int(value)`: the coerced integer, or the message of the Python exception.
pub(crate) fn py_int(value: &Value) -> Result<Value, String> {
    match value {
        Value::Bool(b) => Ok(Value::from(u8::from(*b))),
        Value::Number(n) if is_float(n) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            if x.is_nan() {
                Err("cannot convert float NaN to integer".to_owned())
            } else if x.is_infinite() {
                Err("cannot convert float infinity to integer".to_owned())
            } else {
                let text = format!("{:.0}", x.trunc());
                Ok(numeric_to_value(&int_numeric(&text)))
            }
        }
        Value::Number(n) => Ok(numeric_to_value(&int_numeric(&n.to_string()))),
        Value::String(s) => parse_int_literal(s)
            .map(|n| numeric_to_value(&n))
            .ok_or_else(|| format!("invalid literal for int() with base 10: {}", str_repr(s))),
        other => Err(format!(
            "int() argument must be a string, a bytes-like object or a real number, not '{}'",
            type_name(other)
        )),
    }
}

/// `float(value)`: the coerced float, or the message of the Python exception.
pub(crate) fn py_float(value: &Value) -> Result<f64, String> {
    match value {
        Value::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
        Value::Number(n) => match as_numeric(value) {
            Some(Numeric::Float(x)) => Ok(x),
            Some(int) => {
                let x = int.as_f64();
                if x.is_finite() {
                    Ok(x)
                } else {
                    Err("int too large to convert to float".to_owned())
                }
            }
            None => Err(format!(
                "could not convert string to float: {}",
                str_repr(&n.to_string())
            )),
        },
        Value::String(s) => parse_float_literal(s)
            .ok_or_else(|| format!("could not convert string to float: {}", str_repr(s))),
        other => Err(format!(
            "float() argument must be a string or a real number, not '{}'",
            type_name(other)
        )),
    }
}

/// A `serde_json` formatter that writes what Python's `json.dumps` writes.
struct PyFormatter;

impl serde_json::ser::Formatter for PyFormatter {
    fn begin_array_value<W>(&mut self, writer: &mut W, first: bool) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W>(&mut self, writer: &mut W, first: bool) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W>(&mut self, writer: &mut W) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        writer.write_all(b": ")
    }

    fn write_string_fragment<W>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        let mut start = 0;
        for (index, c) in fragment.char_indices() {
            if c.is_ascii() && c != '\x7f' {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[start..index])?;
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(writer, "\\u{unit:04x}")?;
            }
            start = index + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

/// `json.dumps(value)`.
pub(crate) fn dumps(value: &Value) -> String {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, PyFormatter);
    if value.serialize(&mut serializer).is_err() {
        return "null".to_owned();
    }
    String::from_utf8(out).unwrap_or_else(|_| "null".to_owned())
}

/// Builds a JSON object from key/value pairs, keeping their order.
pub(crate) fn object<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    let mut map = Map::with_capacity(N);
    for (key, value) in pairs {
        map.insert(key.to_owned(), value);
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_print_like_python_repr() {
        for (x, want) in [
            (20.0, "20.0"),
            (0.3, "0.3"),
            (1e9, "1000000000.0"),
            (7.5, "7.5"),
            (-1000.0, "-1000.0"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (123456.789, "123456.789"),
            (-0.0, "-0.0"),
        ] {
            assert_eq!(float_repr(x), want, "{x}");
        }
    }

    #[test]
    fn dumps_uses_python_separators_and_ascii() {
        let value = json!({"a": [1, 2.5], "b": "é\u{7f}", "c": null});
        assert_eq!(
            dumps(&value),
            r#"{"a": [1, 2.5], "b": "\u00e9\u007f", "c": null}"#
        );
    }

    #[test]
    fn pythonize_rewrites_floats_only() {
        let mut value: Value =
            serde_json::from_str(r#"{"n": 1e9, "i": 18446744073709551615, "f": 20.50}"#).unwrap();
        pythonize(&mut value);
        assert_eq!(
            value.to_string(),
            r#"{"n":1000000000.0,"i":18446744073709551615,"f":20.5}"#
        );
    }

    #[test]
    fn repr_matches_python() {
        let value = json!(["nearest-exact", 1, true, null, {"k": "it's"}]);
        assert_eq!(
            repr(&value),
            r#"['nearest-exact', 1, True, None, {'k': "it's"}]"#
        );
    }

    #[test]
    fn int_coercion_matches_python() {
        assert_eq!(py_int(&json!("12")).unwrap(), json!(12));
        assert_eq!(py_int(&json!(7.9)).unwrap(), json!(7));
        assert_eq!(
            py_int(&json!("abc")).unwrap_err(),
            "invalid literal for int() with base 10: 'abc'"
        );
        let big: Value = serde_json::from_str("18446744073709551616").unwrap();
        assert_eq!(py_int(&big).unwrap().to_string(), "18446744073709551616");
    }

    #[test]
    fn integers_compare_exactly() {
        let max = as_numeric(&serde_json::from_str("18446744073709551615").unwrap()).unwrap();
        let over = as_numeric(&serde_json::from_str("18446744073709551616").unwrap()).unwrap();
        assert_eq!(compare_numeric(&over, &max), Ordering::Greater);
        assert_eq!(
            compare_numeric(
                &as_numeric(&json!(-5)).unwrap(),
                &as_numeric(&json!(1)).unwrap()
            ),
            Ordering::Less
        );
        assert!(py_eq(&json!(1), &json!(1.0)));
        assert!(py_eq(&json!(true), &json!(1)));
    }
}
