//! Test helpers shared by the `wire` and `ws` tests: the protocol transcripts captured from
//! ComfyUI 0.33.0 (`../shared/comfyui-protocol` from the crate root), and a JSON generator for
//! the property tests of the parsers. Compiled for tests only; no product code may use it.

use std::path::PathBuf;

use proptest::prelude::*;
use serde_json::Value;

use super::{HistoryEntry, HistoryMap, from_value};

/// The folder of the captured transcripts.
pub(crate) fn protocol_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/comfyui-protocol")
}

/// Every transcript: (file name, parsed JSON).
pub(crate) fn transcripts() -> Vec<(String, Value)> {
    let mut files: Vec<(String, Value)> = std::fs::read_dir(protocol_dir())
        .expect("the protocol transcripts are in ../shared/comfyui-protocol")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            (name, serde_json::from_str(&text).unwrap())
        })
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        files.len() >= 17,
        "expected every transcript, got {}",
        files.len()
    );
    files
}

/// The `events` of a transcript, in order.
pub(crate) fn events(transcript: &Value) -> &[Value] {
    transcript
        .get("events")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// One transcript, by file name.
pub(crate) fn transcript(name: &str) -> Value {
    let path = protocol_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// `(path, status, body)` of every http_response with a JSON body.
pub(crate) fn responses(transcript: &Value) -> Vec<(String, u64, Value)> {
    events(transcript)
        .iter()
        .filter(|e| e["kind"] == "http_response")
        .filter_map(|e| {
            let body = e.get("body")?.clone();
            Some((
                e["path"].as_str().unwrap().to_owned(),
                e["status"].as_u64().unwrap(),
                body,
            ))
        })
        .collect()
}

/// The history entry of `id` from the first `GET /history/{id}` answer in transcript `name`.
pub(crate) fn history(name: &str, id: &str) -> HistoryEntry {
    let t = transcript(name);
    let (_, _, body) = responses(&t)
        .into_iter()
        .find(|(p, _, _)| p == &format!("/history/{id}"))
        .unwrap();
    let mut map: HistoryMap = from_value(body).unwrap();
    map.remove(id).unwrap()
}

/// Any JSON value, biased towards the keys the wire types read.
pub(crate) fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| serde_json::json!(f)),
        "[a-z_0-9]{0,8}".prop_map(Value::String),
        Just(Value::String("prompt_id".into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("prompt_id".to_owned()),
                    Just("node".to_owned()),
                    Just("nodes".to_owned()),
                    Just("value".to_owned()),
                    Just("max".to_owned()),
                    Just("output".to_owned()),
                    Just("status".to_owned()),
                    Just("error".to_owned()),
                    Just("node_errors".to_owned()),
                    Just("prompt".to_owned()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..6,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
