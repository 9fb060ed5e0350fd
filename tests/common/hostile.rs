//! Generators of hostile input (proptest strategies): strings with UTF-8 edge cases, control
//! characters and huge lengths; numbers at and past every limit; JSON that is deep, wide,
//! truncated or not JSON at all. The hostile-input suite drives both the gRPC API and the
//! ComfyUI message parsers with them.

use proptest::prelude::*;
use serde_json::Value;

/// Strings a careless parser trips on.
pub fn hostile_string() -> impl Strategy<Value = String> {
    let edge = prop_oneof![
        Just(String::new()),
        Just(" ".to_owned()),
        Just("\u{0}".to_owned()),
        Just("\u{feff}id".to_owned()),
        Just("\u{202e}txet".to_owned()),
        Just("🦀".repeat(300)),
        Just("a".repeat(5000)),
        Just("../../etc/passwd".to_owned()),
        Just("%00%ff".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("-9223372036854775809".to_owned()),
        Just("1e309".to_owned()),
        Just("NaN".to_owned()),
        Just("\r\nx-injected: 1".to_owned()),
        Just("{\"".to_owned()),
    ];
    prop_oneof![
        3 => edge,
        3 => "\\PC{0,40}",
        2 => "\\PC{0,12}",
        1 => proptest::collection::vec(any::<char>(), 0..24).prop_map(|c| c.into_iter().collect()),
    ]
}

/// Numbers past every bound, as JSON.
fn hostile_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        Just(
            serde_json::from_str::<Value>("123456789012345678901234567890")
                .expect("arbitrary precision number")
        ),
        Just(serde_json::from_str::<Value>("1e400").unwrap_or(Value::Null)),
    ]
}

/// One JSON scalar.
fn hostile_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        hostile_number(),
        hostile_string().prop_map(Value::String),
    ]
}

/// Arbitrary JSON, deep and wide.
pub fn hostile_json() -> impl Strategy<Value = Value> {
    hostile_leaf().prop_recursive(6, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::btree_map(hostile_string(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// JSON-ish text: JSON, JSON cut short, deep nesting, graphs with bad links, or noise.
pub fn hostile_json_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => hostile_json().prop_map(|v| v.to_string()),
        2 => (hostile_json(), any::<prop::sample::Index>()).prop_map(|(v, at)| {
            let text = v.to_string();
            let cut = at.index(text.len() + 1);
            let mut end = cut.min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text[..end].to_owned()
        }),
        1 => prop_oneof![Just(200usize), Just(20_000usize)].prop_map(|depth| "[".repeat(depth) + &"]".repeat(depth)),
        2 => comfy_graph(),
        1 => hostile_string(),
    ]
}

/// ComfyUI API-format graphs with hostile node ids, classes, links and inputs.
pub fn comfy_graph() -> impl Strategy<Value = String> {
    let node = (
        hostile_string(),
        proptest::collection::btree_map(
            hostile_string(),
            prop_oneof![
                hostile_leaf(),
                (hostile_string(), any::<i64>()).prop_map(|(n, i)| serde_json::json!([n, i])),
            ],
            0..6,
        ),
    )
        .prop_map(|(class_type, inputs)| {
            serde_json::json!({"class_type": class_type, "inputs": Value::Object(inputs.into_iter().collect())})
        });
    proptest::collection::btree_map(hostile_string(), node, 0..12)
        .prop_map(|nodes| Value::Object(nodes.into_iter().collect()).to_string())
}

/// Ids: hostile strings, or UUID-looking ones that exist nowhere.
pub fn hostile_id() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => hostile_string(),
        1 => any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string()),
    ]
}
