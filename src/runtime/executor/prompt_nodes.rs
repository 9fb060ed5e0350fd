//! The nodes of a queued prompt as the actor needs them (each node's id, class and title, in the
//! prompt's order), read from the prompt's JSON text without building its tree: the NODE
//! tasks an execution gets on its first dispatch, the classes a loaded execution requires.
//!
//! A prompt is written once, when it is submitted (`submit.rs`, `json_text`); the actor holds
//! that text, the store keeps it, and the attempt posts it as it is. This reads what the actor
//! needs from it and passes over the rest (the inputs, most of a prompt's bytes) without
//! keeping them. It reads as leniently as the actor did from a tree: a class or title that is
//! not a string reads as none, a node that is not an object as a node without either, and a
//! node id given twice as its last node in its first place.
//!
//! Imports nothing of the crate (serde, indexmap, foldhash); the actor imports this module.

use std::fmt;

use indexmap::IndexMap;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The `visit_*` methods of a visitor that reads any array, and any scalar but a string, as
/// `$value` (an array read to its end).
macro_rules! other_values {
    ($value:expr) => {
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            IgnoredAny.visit_seq(seq)?;
            Ok($value)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

/// One node of a prompt, as its NODE task is made from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PromptNode {
    /// Its `class_type`; empty when it has none that is a string.
    pub(crate) class_type: String,
    /// Its `_meta.title`, when that is a string.
    pub(crate) title: Option<String>,
}

/// A prompt's nodes by id, in the prompt's order.
pub(crate) type PromptNodes = IndexMap<String, PromptNode, foldhash::fast::RandomState>;

/// The nodes of `prompt` (the text of a JSON object of nodes); `None` when it is not one JSON
/// object, nothing but white space after it, or not UTF-8. The whole text is read: its syntax is
/// checked everywhere, the escapes of the strings it passes over (the inputs) are not decoded
/// (a lone surrogate's `\ud800` there is not refused, as a tree would).
pub(crate) fn prompt_nodes(prompt: &[u8]) -> Option<PromptNodes> {
    let text = std::str::from_utf8(prompt).ok()?;
    serde_json::from_str::<Nodes>(text)
        .ok()
        .map(|nodes| nodes.0)
}

/// What [`prompt_nodes`] reads.
struct Nodes(PromptNodes);

impl<'de> Deserialize<'de> for Nodes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NodesVisitor;
        impl<'de> Visitor<'de> for NodesVisitor {
            type Value = Nodes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object of nodes")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Nodes, A::Error> {
                let mut nodes = IndexMap::with_capacity_and_hasher(
                    map.size_hint().unwrap_or(0),
                    foldhash::fast::RandomState::default(),
                );
                while let Some(id) = map.next_key::<String>()? {
                    let node = map.next_value::<Node>()?.0;
                    nodes.insert(id, node);
                }
                Ok(Nodes(nodes))
            }
        }
        deserializer.deserialize_map(NodesVisitor)
    }
}

/// A node: its class and title from an object, nothing from any other value.
struct Node(PromptNode);

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a node")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut node = PromptNode::default();
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::ClassType => {
                            node.class_type = map.next_value::<Lenient>()?.0.unwrap_or_default();
                        }
                        Key::Meta => node.title = map.next_value::<Meta>()?.0,
                        Key::Title | Key::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Node(node))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
                Ok(Node(PromptNode::default()))
            }
            other_values!(Node(PromptNode::default()));
        }
        deserializer.deserialize_any(NodeVisitor)
    }
}

/// A node's `_meta`: its title, when it is an object with a string `title`.
struct Meta(Option<String>);

impl<'de> Deserialize<'de> for Meta {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MetaVisitor;
        impl<'de> Visitor<'de> for MetaVisitor {
            type Value = Meta;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a node's _meta")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Meta, A::Error> {
                let mut title = None;
                while let Some(key) = map.next_key::<Key>()? {
                    if key == Key::Title {
                        title = map.next_value::<Lenient>()?.0;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Meta(title))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Meta, E> {
                Ok(Meta(None))
            }
            other_values!(Meta(None));
        }
        deserializer.deserialize_any(MetaVisitor)
    }
}

/// A string, or `None` for any other value.
struct Lenient(Option<String>);

impl<'de> Deserialize<'de> for Lenient {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LenientVisitor;
        impl<'de> Visitor<'de> for LenientVisitor {
            type Value = Lenient;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Lenient, E> {
                Ok(Lenient(Some(value.to_owned())))
            }
            fn visit_string<E: de::Error>(self, value: String) -> Result<Lenient, E> {
                Ok(Lenient(Some(value)))
            }
            // A number reads as a map under serde_json's `arbitrary_precision`.
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Lenient, A::Error> {
                IgnoredAny.visit_map(map)?;
                Ok(Lenient(None))
            }
            other_values!(Lenient(None));
        }
        deserializer.deserialize_any(LenientVisitor)
    }
}

/// The keys a node and its `_meta` are read by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    ClassType,
    Meta,
    Title,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "class_type" => Key::ClassType,
                    "_meta" => Key::Meta,
                    "title" => Key::Title,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    /// What the actor read from a tree before: each node's string class (else none) and
    /// string title, in the tree's order.
    fn from_tree(prompt: &Value) -> Option<Vec<(String, PromptNode)>> {
        let nodes = prompt.as_object()?;
        Some(
            nodes
                .iter()
                .map(|(id, node)| {
                    let class_type = node
                        .get("class_type")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    let title = node
                        .get("_meta")
                        .and_then(|meta| meta.get("title"))
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    (id.clone(), PromptNode { class_type, title })
                })
                .collect(),
        )
    }

    fn read(text: &str) -> Option<Vec<(String, PromptNode)>> {
        prompt_nodes(text.as_bytes()).map(|nodes| nodes.into_iter().collect())
    }

    #[test]
    fn reads_ids_classes_and_titles_in_order() {
        let text = r#"{"9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]},
            "_meta": {"title": "Save"}}, "1": {"inputs": {}, "class_type": "Empty\u0049mage"}}"#;
        let nodes = read(text).unwrap();
        assert_eq!(
            nodes,
            vec![
                (
                    "9".to_owned(),
                    PromptNode {
                        class_type: "SaveImage".into(),
                        title: Some("Save".into())
                    }
                ),
                (
                    "1".to_owned(),
                    PromptNode {
                        class_type: "EmptyImage".into(),
                        title: None
                    }
                ),
            ]
        );
    }

    #[test]
    fn reads_as_leniently_as_the_tree_did() {
        for text in [
            r#"{"1": 5, "2": "x", "3": null, "4": [1, {"class_type": "A"}], "5": true}"#,
            r#"{"1": {"class_type": 7, "_meta": {"title": 1.5}}, "2": {"class_type": ["A"], "_meta": [1]}}"#,
            r#"{"1": {"class_type": {"a": 1}, "_meta": "t"}, "2": {"_meta": {"title": null, "x": {}}}}"#,
            r#"{"1": {"class_type": "A"}, "2": {"class_type": "B"}, "1": {"class_type": "C"}}"#,
            r#"{"1": {"class_type": "A", "class_type": "B", "title": "not the meta's"}}"#,
            r#"{}"#,
        ] {
            let tree: Value = serde_json::from_str(text).unwrap();
            assert_eq!(read(text), from_tree(&tree), "{text}");
        }
    }

    #[test]
    fn anything_but_an_object_of_nodes_is_refused() {
        for text in [
            "",
            "null",
            "[]",
            "[{}]",
            "\"{}\"",
            "5",
            "{",
            r#"{"1": {"class_type": "A"}"#,
            "{} {}",
            r#"{"1": {"class_type": "A"},}"#,
        ] {
            assert_eq!(read(text), None, "{text}");
        }
        // Not UTF-8, in a string it passes over.
        assert_eq!(
            prompt_nodes(b"{\"1\": {\"inputs\": {\"a\": \"\xff\"}}}"),
            None
        );
    }

    fn arb_node() -> impl Strategy<Value = Value> {
        let scalar = prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
            "\\PC{0,6}".prop_map(Value::from),
        ];
        (
            proptest::option::of(scalar.clone()),
            proptest::option::of(proptest::option::of(scalar.clone())),
            proptest::collection::vec(("[a-z_]{1,6}", scalar), 0..3),
        )
            .prop_map(|(class_type, meta, inputs)| {
                let mut node = serde_json::Map::new();
                node.insert("inputs".into(), Value::Object(inputs.into_iter().collect()));
                if let Some(class_type) = class_type {
                    node.insert("class_type".into(), class_type);
                }
                match meta {
                    Some(Some(title)) => {
                        node.insert("_meta".into(), serde_json::json!({"title": title}));
                    }
                    Some(None) => {
                        node.insert("_meta".into(), serde_json::json!({}));
                    }
                    None => {}
                }
                Value::Object(node)
            })
    }

    proptest! {
        /// The nodes read from a prompt's text are those the actor read from its tree.
        #[test]
        fn the_text_reads_as_the_tree(
            nodes in proptest::collection::vec(("[0-9]{1,3}", arb_node()), 0..8),
        ) {
            let tree = Value::Object(nodes.into_iter().collect());
            let text = serde_json::to_string(&tree).unwrap();
            prop_assert_eq!(read(&text), from_tree(&tree));
        }
    }
}
