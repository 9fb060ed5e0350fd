//! Parsing ComfyUI API-format JSON (`{node_id: {"class_type", "inputs",
//! "_meta"?}}`, possibly wrapped as `{"prompt": {...}}`) into nodes, with the
//! structural hard errors (not JSON, too big or deep, not an object, no nodes,
//! a node without a class or inputs object), each on its path under
//! `workflow_json`.
//!
//! Imports point down only, to [`node`](super::node); the definition
//! (`workflow/mod.rs`) imports this module.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::model::{JsonObject, MAX_JSON_DEPTH, ValidationError, key_path};

use super::node::{ComfyNode, WORKFLOW_JSON};

/// Largest accepted `workflow_json`, in bytes (16 MiB).
pub const MAX_WORKFLOW_JSON_BYTES: usize = 16 * 1024 * 1024;

/// Most nodes accepted in one workflow.
pub const MAX_WORKFLOW_NODES: usize = 10_000;

/// Most structural violations reported for one `workflow_json`; the rest are
/// summed up in one last violation so a bad 16 MiB graph gives a short answer.
pub const MAX_REPORTED_PROBLEMS: usize = 100;

/// Collects violations up to [`MAX_REPORTED_PROBLEMS`], counting the rest.
struct Problems {
    errors: ValidationError,
    dropped: usize,
}

impl Problems {
    fn push(&mut self, field: String, description: &str) {
        if self.errors.len() < MAX_REPORTED_PROBLEMS {
            self.errors.push(field, description);
        } else {
            self.dropped += 1;
        }
    }

    fn finish(mut self) -> ValidationError {
        if self.dropped > 0 {
            self.errors.push(
                WORKFLOW_JSON,
                format!("{} more problems not shown", self.dropped),
            );
        }
        self.errors
    }
}

/// Whether `text` nests arrays/objects deeper than `limit`, by scanning the
/// text (no parse, no recursion). Brackets inside strings do not count; a
/// string is skipped to its next quote or backslash at a time (`memchr`), not
/// byte by byte: prompts and file names make most of a workflow's bytes.
fn nests_deeper_than(text: &str, limit: usize) -> bool {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut at = 0;
    while let Some(&b) = bytes.get(at) {
        at += 1;
        match b {
            b'"' => loop {
                // An unterminated string: nothing after it counts.
                let Some(found) = bytes
                    .get(at..)
                    .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
                else {
                    return false;
                };
                at += found + 1;
                if bytes[at - 1] == b'"' {
                    break;
                }
                // A backslash: the byte it escapes is part of the string.
                at += 1;
            },
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// A parsed graph.
pub(super) struct ParsedGraph {
    /// The nodes, by id.
    pub(super) nodes: BTreeMap<String, ComfyNode>,
    /// The field path of the object that holds the nodes: `workflow_json`,
    /// or `workflow_json.prompt` for a POST /prompt body.
    pub(super) base: String,
}

/// Whether `top` is a POST /prompt body: the graph is under "prompt" (unless
/// "prompt" is itself a node, which has a class_type).
fn is_wrapped(top: &JsonObject) -> bool {
    matches!(top.get("prompt"), Some(Value::Object(p)) if !p.contains_key("class_type"))
}

/// The field path of the object that holds the nodes of `text` (see
/// [`ParsedGraph::base`]); `workflow_json` when `text` is not a JSON object.
pub(super) fn graph_base(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(top)) if is_wrapped(&top) => format!("{WORKFLOW_JSON}.prompt"),
        _ => WORKFLOW_JSON.to_owned(),
    }
}

/// Parses and structurally checks API-format JSON into nodes.
pub(super) fn parse_api_graph(text: &str) -> Result<ParsedGraph, ValidationError> {
    if text.len() > MAX_WORKFLOW_JSON_BYTES {
        return Err(ValidationError::single(
            WORKFLOW_JSON,
            format!("must be at most {MAX_WORKFLOW_JSON_BYTES} bytes"),
        ));
    }
    if nests_deeper_than(text, MAX_JSON_DEPTH) {
        return Err(ValidationError::single(
            WORKFLOW_JSON,
            format!("must not nest deeper than {MAX_JSON_DEPTH} levels"),
        ));
    }
    if let Some(nodes) = plain_graph(text) {
        return Ok(ParsedGraph {
            nodes,
            base: WORKFLOW_JSON.to_owned(),
        });
    }
    parse_any_graph(text)
}

/// [`parse_api_graph`] after its size checks, for any JSON: through a JSON
/// tree, every violation reported on its path.
fn parse_any_graph(text: &str) -> Result<ParsedGraph, ValidationError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ValidationError::single(WORKFLOW_JSON, format!("is not valid JSON: {e}")))?;
    let Value::Object(mut top) = value else {
        return Err(ValidationError::single(
            WORKFLOW_JSON,
            "must be a JSON object of nodes keyed by node id",
        ));
    };
    let (graph, base) = if is_wrapped(&top) {
        match top.remove("prompt") {
            Some(Value::Object(graph)) => (graph, format!("{WORKFLOW_JSON}.prompt")),
            _ => (top, WORKFLOW_JSON.to_owned()),
        }
    } else {
        (top, WORKFLOW_JSON.to_owned())
    };
    if graph.is_empty() {
        return Err(ValidationError::single(
            base,
            "must contain at least one node",
        ));
    }
    if graph.len() > MAX_WORKFLOW_NODES {
        return Err(ValidationError::single(
            base,
            format!(
                "has {} nodes; at most {MAX_WORKFLOW_NODES} are allowed",
                graph.len()
            ),
        ));
    }

    let mut problems = Problems {
        errors: ValidationError::new(),
        dropped: 0,
    };
    let mut nodes = BTreeMap::new();
    for (id, node) in graph {
        // Built only for a problem: most graphs have none.
        let path = || key_path(&base, &id);
        if id.trim().is_empty() {
            problems.push(path(), "node id must not be empty");
        }
        let Value::Object(mut node) = node else {
            problems.push(path(), "node must be an object");
            continue;
        };
        let class_type = match node.remove("class_type") {
            Some(Value::String(c)) if !c.trim().is_empty() => Some(c),
            Some(Value::String(_)) => {
                problems.push(format!("{}.class_type", path()), "must not be empty");
                None
            }
            Some(_) => {
                problems.push(format!("{}.class_type", path()), "must be a string");
                None
            }
            None => {
                problems.push(format!("{}.class_type", path()), "is required");
                None
            }
        };
        let inputs = match node.remove("inputs") {
            Some(Value::Object(inputs)) => Some(inputs),
            Some(_) => {
                problems.push(format!("{}.inputs", path()), "must be an object");
                None
            }
            None => {
                problems.push(format!("{}.inputs", path()), "is required (an object)");
                None
            }
        };
        let metadata = match node.remove("_meta") {
            None => Some(JsonObject::new()),
            Some(Value::Object(meta)) => Some(meta),
            Some(_) => {
                problems.push(format!("{}._meta", path()), "must be an object");
                None
            }
        };
        if let (Some(class_type), Some(inputs), Some(metadata)) = (class_type, inputs, metadata) {
            nodes.insert(
                id.clone(),
                ComfyNode {
                    id,
                    class_type,
                    inputs,
                    outputs: Vec::new(),
                    metadata,
                },
            );
        }
    }
    problems.finish().into_result()?;
    Ok(ParsedGraph { nodes, base })
}

/// The nodes of a plain graph (the shape almost every submit has: a top
/// object of uniquely keyed nodes, none named `prompt`, each with a non-blank
/// string `class_type`, an `inputs` object and at most an object `_meta`),
/// read straight into [`ComfyNode`]s: no JSON tree of the graph and its nodes
/// to take apart again, keys a node does not use read and dropped. `None` for
/// anything else, which [`parse_any_graph`] then reads and reports on: the
/// same nodes as it finds for a plain graph (a proptest holds the two
/// together).
fn plain_graph(text: &str) -> Option<BTreeMap<String, ComfyNode>> {
    let mut reader = serde_json::Deserializer::from_str(text);
    let PlainGraph(nodes) = PlainGraph::deserialize(&mut reader).ok()?;
    reader.end().ok()?;
    Some(nodes)
}

/// What [`plain_graph`] reads; any error means "not plain".
struct PlainGraph(BTreeMap<String, ComfyNode>);

/// A node of a [`PlainGraph`].
struct PlainNode {
    class_type: String,
    inputs: JsonObject,
    metadata: JsonObject,
}

/// The keys of a node that [`PlainNode`] keeps; the values of others are read and dropped.
enum NodeKey {
    ClassType,
    Inputs,
    Meta,
    Other,
}

/// Not a plain graph: [`parse_any_graph`] reads it.
fn not_plain<E: de::Error>() -> E {
    E::custom("not a plain graph")
}

/// A key serde_json gives a meaning of its own when it opens an object (an exact number, a
/// raw value): such an object is read by the tree read, as it always was.
fn is_reserved(key: &str) -> bool {
    key.starts_with("$serde_json::private::")
}

impl<'de> Deserialize<'de> for PlainGraph {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Nodes;
        impl<'de> Visitor<'de> for Nodes {
            type Value = PlainGraph;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of nodes")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PlainGraph, A::Error> {
                let mut nodes = BTreeMap::new();
                while let Some(id) = map.next_key::<String>()? {
                    if id == "prompt"
                        || id.trim().is_empty()
                        || is_reserved(&id)
                        || nodes.len() == MAX_WORKFLOW_NODES
                    {
                        return Err(not_plain());
                    }
                    let PlainNode {
                        class_type,
                        inputs,
                        metadata,
                    } = map.next_value()?;
                    match nodes.entry(id) {
                        Entry::Occupied(_) => return Err(not_plain()),
                        Entry::Vacant(slot) => {
                            let id = slot.key().clone();
                            slot.insert(ComfyNode {
                                id,
                                class_type,
                                inputs,
                                outputs: Vec::new(),
                                metadata,
                            });
                        }
                    }
                }
                if nodes.is_empty() {
                    return Err(not_plain());
                }
                Ok(PlainGraph(nodes))
            }
        }
        deserializer.deserialize_map(Nodes)
    }
}

impl<'de> Deserialize<'de> for PlainNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Node;
        impl<'de> Visitor<'de> for Node {
            type Value = PlainNode;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a node object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PlainNode, A::Error> {
                let (mut class_type, mut inputs, mut metadata) = (None, None, None);
                // A repeated key: the last one counts, as in a JSON object read whole.
                // Objects are read as `Value`s, as the tree read reads them (serde_json's
                // own keys for exact numbers and raw values mean something there), and a
                // key a node does not use is read whole too (skipping it unread would not
                // check its string escapes as the tree read does).
                let object = |value: Value| match value {
                    Value::Object(object) => Ok(object),
                    _ => Err(not_plain()),
                };
                while let Some(key) = map.next_key::<NodeKey>()? {
                    match key {
                        NodeKey::ClassType => class_type = Some(map.next_value::<String>()?),
                        NodeKey::Inputs => inputs = Some(object(map.next_value()?)?),
                        NodeKey::Meta => metadata = Some(object(map.next_value()?)?),
                        NodeKey::Other => {
                            map.next_value::<Value>()?;
                        }
                    }
                }
                match (class_type, inputs) {
                    (Some(class_type), Some(inputs)) if !class_type.trim().is_empty() => {
                        Ok(PlainNode {
                            class_type,
                            inputs,
                            metadata: metadata.unwrap_or_default(),
                        })
                    }
                    _ => Err(not_plain()),
                }
            }
        }
        deserializer.deserialize_map(Node)
    }
}

impl<'de> Deserialize<'de> for NodeKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Key;
        impl Visitor<'_> for Key {
            type Value = NodeKey;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a node key")
            }

            fn visit_str<E: de::Error>(self, key: &str) -> Result<NodeKey, E> {
                Ok(match key {
                    "class_type" => NodeKey::ClassType,
                    "inputs" => NodeKey::Inputs,
                    "_meta" => NodeKey::Meta,
                    _ if is_reserved(key) => return Err(not_plain()),
                    _ => NodeKey::Other,
                })
            }
        }
        deserializer.deserialize_identifier(Key)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::model::workflow::test_support::parse;

    #[test]
    fn structural_errors_are_hard_errors() {
        let cases: &[(&str, &str)] = &[
            ("", "workflow_json"),
            ("not json", "workflow_json"),
            ("[1, 2]", "workflow_json"),
            ("42", "workflow_json"),
            ("{}", "workflow_json"),
            (r#"{"prompt": {}}"#, "workflow_json.prompt"),
            (r#"{"1": 5}"#, r#"workflow_json["1"]"#),
            (r#"{"prompt": "x"}"#, "workflow_json.prompt"),
            (
                r#"{"1": {"inputs": {}}}"#,
                r#"workflow_json["1"].class_type"#,
            ),
            (
                r#"{"1": {"class_type": " ", "inputs": {}}}"#,
                r#"workflow_json["1"].class_type"#,
            ),
            (
                r#"{"1": {"class_type": 7, "inputs": {}}}"#,
                r#"workflow_json["1"].class_type"#,
            ),
            (
                r#"{"1": {"class_type": "A"}}"#,
                r#"workflow_json["1"].inputs"#,
            ),
            (
                r#"{"1": {"class_type": "A", "inputs": []}}"#,
                r#"workflow_json["1"].inputs"#,
            ),
            (
                r#"{"1": {"class_type": "A", "inputs": {}, "_meta": 1}}"#,
                r#"workflow_json["1"]._meta"#,
            ),
            (
                r#"{"": {"class_type": "A", "inputs": {}}}"#,
                r#"workflow_json[""]"#,
            ),
            (
                r#"{"prompt": {"7": {"class_type": "A", "inputs": 1}}, "client_id": "c"}"#,
                r#"workflow_json.prompt["7"].inputs"#,
            ),
        ];
        for (json, field) in cases {
            let e = parse(json).unwrap_err();
            assert!(e.has_field(field), "{json}: {e}");
        }
        // Every node problem at once.
        let e = parse(r#"{"1": {"inputs": {}}, "2": {"class_type": "A"}}"#).unwrap_err();
        assert_eq!(e.len(), 2, "{e}");
    }

    #[test]
    fn size_limits_are_hard_errors() {
        let deep = format!(
            "{}{}",
            "[".repeat(MAX_JSON_DEPTH + 1),
            "]".repeat(MAX_JSON_DEPTH + 1)
        );
        let e = parse(&format!(
            r#"{{"1": {{"class_type": "SaveImage", "inputs": {{"x": {deep}}}}}}}"#
        ))
        .unwrap_err();
        assert!(
            e.has_field("workflow_json") && e.to_string().contains("nest"),
            "{e}"
        );
        // Brackets inside strings do not count.
        let text = format!(
            r#"{{"1": {{"class_type": "SaveImage", "inputs": {{"x": "{}\"{}"}}}}}}"#,
            "[".repeat(100),
            "{".repeat(100)
        );
        assert!(parse(&text).is_ok());

        let big = format!(
            r#"{{"1": {{"class_type": "SaveImage", "inputs": {{"x": "{}"}}}}}}"#,
            "a".repeat(MAX_WORKFLOW_JSON_BYTES)
        );
        let e = parse(&big).unwrap_err();
        assert!(e.to_string().contains("bytes"), "{e}");

        let mut graph = JsonObject::new();
        for i in 0..=MAX_WORKFLOW_NODES {
            graph.insert(
                i.to_string(),
                json!({"class_type": "SaveImage", "inputs": {}}),
            );
        }
        let e = parse(&Value::Object(graph).to_string()).unwrap_err();
        assert!(
            e.has_field("workflow_json") && e.to_string().contains("nodes"),
            "{e}"
        );

        let mut graph = JsonObject::new();
        for i in 0..500 {
            graph.insert(i.to_string(), json!(1));
        }
        let e = parse(&Value::Object(graph).to_string()).unwrap_err();
        assert_eq!(e.len(), MAX_REPORTED_PROBLEMS + 1);
        assert!(
            e.to_string().ends_with("400 more problems not shown"),
            "{e}"
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            prop_oneof![
                Just("1".to_owned()),
                Just("prompt".to_owned()),
                "[a-z0-9_]{0,6}",
                ".{0,8}"
            ]
            .prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("class_type".to_owned()),
                        Just("inputs".to_owned()),
                        Just("_meta".to_owned()),
                        Just("prompt".to_owned()),
                        "[0-9]{1,2}",
                        ".{0,4}",
                    ],
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Graph-shaped JSON: nodes with class types and link-ish inputs.
    fn arb_graph() -> impl Strategy<Value = Value> {
        let input = prop_oneof![
            (0u8..8, -2i64..4).prop_map(|(n, i)| json!([n.to_string(), i])),
            arb_json(),
        ];
        let node = (
            prop_oneof![Just("SaveImage"), Just("ImageInvert"), Just(""), Just("PreviewX")],
            prop::collection::btree_map("[a-z]{1,3}", input, 0..4),
        )
            .prop_map(|(c, inputs)| {
                json!({"class_type": c, "inputs": Value::Object(inputs.into_iter().collect())})
            });
        prop::collection::btree_map(0u8..8, node, 0..8)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
    }

    fn check_invariants(text: &str) {
        if let Ok(wf) = parse(text) {
            assert_eq!(wf.is_valid, wf.validation_errors.is_empty());
            assert_eq!(wf.validate_graph(), wf.validation_errors);
            assert_eq!(wf.graph_problems.len(), wf.validation_errors.len());
            for (problem, description) in wf.graph_problems.iter().zip(&wf.validation_errors) {
                assert_eq!(&problem.description, description);
                assert!(problem.field.starts_with("workflow_json"), "{problem:?}");
            }
            assert_eq!(wf.workflow_json, text);
            for (from, to) in &wf.edges {
                assert!(wf.nodes.contains_key(from) && wf.nodes.contains_key(to));
            }
        }
    }

    /// Graph text with what a plain graph may also hold (`_meta`, keys a node does not
    /// use, a key given twice) and what makes one not plain (ids given twice, a node named
    /// `prompt`, a blank or non-string class, inputs or `_meta` not objects).
    fn arb_graph_text() -> impl Strategy<Value = String> {
        let object = prop_oneof![
            2 => Just(r#"{}"#.to_owned()),
            1 => Just(r#"{"$serde_json::private::Number": "5"}"#.to_owned()),
            1 => Just(r#"{"$serde_json::private::RawValue": "{\"a\": 1}"}"#.to_owned()),
            2 => Just(
                r#"{"a": 1.50, "b": ["1", 0], "seed": 123456789012345678901234567890}"#.to_owned()
            ),
            1 => arb_json().prop_map(|v| v.to_string()),
        ];
        let node = (
            prop_oneof![
                4 => Just(r#""SaveImage""#),
                4 => Just(r#""ImageInvert""#),
                1 => Just(r#""""#),
                1 => Just(r#"" ""#),
                1 => Just("7")
            ],
            prop::option::weighted(0.9, object.clone()),
            prop::option::of(object),
            prop::option::of(prop_oneof![
                4 => arb_json().prop_map(|v| v.to_string()),
                1 => Just(r#""\udc00""#.to_owned()),
                1 => Just(r#"["\ud800\udc00", "\ud800"]"#.to_owned()),
            ]),
            any::<bool>(),
        )
            .prop_map(|(class, inputs, meta, other, twice)| {
                let mut fields = vec![format!(r#""class_type": {class}"#)];
                if twice {
                    fields.insert(0, r#""class_type": "Earlier""#.to_owned());
                }
                fields.extend(inputs.map(|i| format!(r#""inputs": {i}"#)));
                fields.extend(meta.map(|m| format!(r#""_meta": {m}"#)));
                fields.extend(other.map(|o| format!(r#""is_changed": {o}"#)));
                format!("{{{}}}", fields.join(", "))
            });
        let id = prop_oneof![
            1 => Just("1".to_owned()),
            1 => Just("prompt".to_owned()),
            1 => Just("$serde_json::private::Number".to_owned()),
            1 => Just(" ".to_owned()),
            12 => "[0-9]{1,3}",
        ];
        prop::collection::vec((id, node), 0..5).prop_map(|nodes| {
            let entries: Vec<String> = nodes
                .into_iter()
                .map(|(id, node)| format!("{}: {node}", Value::String(id)))
                .collect();
            format!("{{{}}}", entries.join(", "))
        })
    }

    #[test]
    fn plain_graphs_are_read_without_a_tree() {
        let plain = [
            r#"{"1": {"class_type": "EmptyImage", "inputs": {"width": 64}}}"#,
            r#"{"1": {"class_type": "A", "inputs": {}, "_meta": {"title": "t"}, "is_changed": [1]},
                "2": {"inputs": {"image": ["1", 0]}, "class_type": "SaveImage"}}"#,
        ];
        for text in plain {
            let nodes = plain_graph(text).expect(text);
            let tree = parse_any_graph(text).expect(text);
            assert_eq!(nodes, tree.nodes, "{text}");
        }
        let other = [
            r#"{"prompt": {"1": {"class_type": "A", "inputs": {}}}}"#,
            r#"{"prompt": {"class_type": "A", "inputs": {}}}"#,
            r#"{"1": {"class_type": "A", "inputs": {}}, "1": {"class_type": "B", "inputs": {}}}"#,
            r#"{" ": {"class_type": "A", "inputs": {}}}"#,
            r#"{"1": {"class_type": " ", "inputs": {}}}"#,
            r#"{"1": {"class_type": "A"}}"#,
            r#"{"1": {"class_type": "A", "inputs": {}, "_meta": null}}"#,
            r#"{"1": 5}"#,
            r#"{}"#,
            r#"[]"#,
            r#"{"1": {"class_type": "A", "inputs": {}}} x"#,
        ];
        for text in other {
            assert!(plain_graph(text).is_none(), "{text}");
        }
        // What serde_json reads its own way (its keys for exact numbers and raw values,
        // string escapes in a value nobody uses) goes the tree's way, with its outcome.
        let unusual = [
            r#"{"1": {"class_type": "A", "inputs": {}, "x": "\udc00"}}"#,
            r#"{"1": {"class_type": "A", "inputs": {"$serde_json::private::RawValue": "{\"seed\": 1}"}}}"#,
            r#"{"1": {"class_type": "A", "inputs": {}, "_meta": {"$serde_json::private::RawValue": "{}"}}}"#,
            r#"{"1": {"class_type": "A", "inputs": {"$serde_json::private::Number": "5"}}}"#,
            r#"{"1": {"$serde_json::private::Number": "1", "class_type": "A", "inputs": {}}}"#,
            r#"{"$serde_json::private::RawValue": {"class_type": "A", "inputs": {}}}"#,
        ];
        for text in unusual {
            assert_same_outcome(text);
        }
    }

    /// `parse_api_graph` (the plain read first) and the tree read alone give the same nodes,
    /// or the same problems.
    fn assert_same_outcome(text: &str) {
        match (parse_api_graph(text), parse_any_graph(text)) {
            (Ok(first), Ok(tree)) => {
                assert_eq!(first.base, tree.base, "{text}");
                assert_eq!(first.nodes, tree.nodes, "{text}");
            }
            (Err(first), Err(tree)) => assert_eq!(first.to_string(), tree.to_string(), "{text}"),
            (first, tree) => panic!(
                "{text}: {:?} against {:?}",
                first.map(|p| p.nodes),
                tree.map(|p| p.nodes)
            ),
        }
    }

    proptest! {
        /// Whatever the plain read accepts, the read through a JSON tree finds the same
        /// nodes in, and it has no problem with.
        #[test]
        fn the_plain_read_agrees_with_the_tree(text in arb_graph_text()) {
            if let Some(nodes) = plain_graph(&text) {
                let tree = parse_any_graph(&text);
                prop_assert!(tree.is_ok(), "{}: {:?}", text, tree.err());
                let tree = tree.expect("checked");
                prop_assert_eq!(tree.base, WORKFLOW_JSON);
                prop_assert_eq!(tree.nodes, nodes);
            }
            assert_same_outcome(&text);
        }

        #[test]
        fn never_panics_on_arbitrary_strings(text in ".{0,200}") {
            check_invariants(&text);
        }

        #[test]
        fn never_panics_on_arbitrary_json(value in arb_json()) {
            check_invariants(&value.to_string());
            check_invariants(&json!({"prompt": value}).to_string());
        }

        #[test]
        fn never_panics_on_graph_shaped_json(value in arb_graph()) {
            check_invariants(&value.to_string());
        }

        /// The depth scan that skips strings with `memchr` counts like one that looks at
        /// every byte, escapes and unterminated strings included.
        #[test]
        fn depth_scan_matches_a_byte_by_byte_scan(
            text in r#"[\[\]{}"\\a]{0,40}"#,
            limit in 0usize..5,
        ) {
            prop_assert_eq!(nests_deeper_than(&text, limit), deeper_byte_by_byte(&text, limit));
        }
    }

    /// The scan as it was before it skipped strings with `memchr`.
    fn deeper_byte_by_byte(text: &str, limit: usize) -> bool {
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        for b in text.bytes() {
            if in_string {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => {
                    depth += 1;
                    if depth > limit {
                        return true;
                    }
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        false
    }
}
