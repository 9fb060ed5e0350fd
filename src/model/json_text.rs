//! JSON values written as compact text, byte for byte as `serde_json::to_writer` writes them,
//! with a string that needs no escape copied whole.
//!
//! serde_json looks each byte of a string up in its escape table, one at a time, and a
//! workflow's bytes are mostly strings (prompts, file names): writing a submitted prompt back
//! out was 13% of a submit's instructions. Here a string is first scanned for a byte serde_json
//! escapes (a quote, a backslash, a byte below 0x20; DEL and the C1 controls it writes as they
//! are) in a loop with no early exit, which runs many bytes at once; a string with none (nearly
//! every one) is copied as it is, and one with any is handed to serde_json, which escapes it. A
//! number is written as its exact text (the crate builds serde_json with
//! `arbitrary_precision`), as serde_json writes it.
//!
//! What it must not do: differ from serde_json by a byte. A stored prompt, an idempotent
//! retry's comparison and the API's text read the same whichever of the two wrote them.

use serde_json::Value;

use super::JsonObject;

/// Appends `value` to `out` as compact JSON: the text `serde_json::to_writer` would write.
pub fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(number) => out.push_str(number.as_str()),
        Value::String(text) => write_str(out, text),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(object) => write_object(out, object),
    }
}

/// Appends `object` to `out` as compact JSON (see [`write_value`]).
pub fn write_object(out: &mut String, object: &JsonObject) {
    out.push('{');
    for (i, (key, item)) in object.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(out, key);
        out.push(':');
        write_value(out, item);
    }
    out.push('}');
}

/// `object` as compact JSON text (see [`write_value`]).
pub fn object_text(object: &JsonObject) -> String {
    let mut out = String::with_capacity(64);
    write_object(&mut out, object);
    out
}

/// Appends `text` as a JSON string: copied whole between its quotes when no byte of it needs
/// an escape, else escaped by serde_json.
pub fn write_str(out: &mut String, text: &str) {
    let needs_escape = text.bytes().fold(false, |found, b| {
        found | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if needs_escape {
        // A string always encodes.
        if let Ok(escaped) = serde_json::to_string(text) {
            out.push_str(&escaped);
        }
    } else {
        out.reserve(text.len() + 2);
        out.push('"');
        out.push_str(text);
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::{object_text, write_value};

    fn written(value: &Value) -> Vec<u8> {
        let mut out = String::new();
        write_value(&mut out, value);
        out.into_bytes()
    }

    #[test]
    fn every_kind_of_value_is_written_as_serde_json_writes_it() {
        let values = [
            json!(null),
            json!(true),
            json!(false),
            json!(0),
            json!(-12),
            json!(1.5),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(""),
            json!("plain text, with / and ünïcödé and 🚀"),
            json!("a \"quote\", a \\ backslash, a\ttab, a\nnewline, \u{1} and \u{1f} and \u{7f}"),
            // Control characters serde_json writes as they are: copied whole here too.
            json!("\u{7f}"),
            json!("\u{85}\u{2028}\u{feff}\u{200b}"),
            json!([]),
            json!({}),
            json!([1, "two", [3.0], {"four": null}]),
            json!({"b": 1, "a": {"nested": ["x", {"\"key\"": "\u{8}"}]}, "": false}),
        ];
        for value in &values {
            assert_eq!(
                written(value),
                serde_json::to_vec(value).expect("encodes"),
                "{value}"
            );
        }
        // A number keeps the exact text it was read with.
        let exact: Value = serde_json::from_str(
            r#"{"n": 1.50, "big": 123456789012345678901234567890, "e": 1e400}"#,
        )
        .expect("parses");
        assert_eq!(
            written(&exact),
            serde_json::to_vec(&exact).expect("encodes")
        );
        assert!(
            written(&exact).starts_with(br#"{"n":1.50,"big":123456789012345678901234567890,"#),
            "{exact}"
        );
        let Value::Object(object) = exact else {
            unreachable!()
        };
        assert_eq!(
            object_text(&object),
            serde_json::to_string(&object).expect("encodes")
        );
    }

    /// Any string: any characters of all of Unicode (C0 and C1 controls, quotes, backslashes,
    /// format characters included), or ASCII alone, where escapes come thick.
    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::collection::vec(any::<char>(), 0..24).prop_map(String::from_iter),
            "[\\x00-\\x7f]{0,24}",
        ]
    }

    /// Any JSON value, strings from [`any_text`], nested a few levels.
    fn any_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            any_text().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::vec((any_text(), inner), 0..8)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_value_is_written_as_serde_json_writes_it(value in any_value()) {
            prop_assert_eq!(written(&value), serde_json::to_vec(&value).expect("encodes"));
        }
    }
}
