//! `GET /object_info` and `GET /object_info/{class}`: the node classes a server offers, with
//! their inputs (types, defaults, bounds, combo values) and outputs.
//!
//! Bounds stay [`Number`]s as sent (`max: 18446744073709551615` is exact). One class that cannot
//! be read is skipped, never fatal ([`parse_object_info`]). Checking a workflow against the
//! catalogue is the runtime's business, not this file's.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Number, Value};

use super::lenient::{
    lenient_bool, lenient_bool_list, lenient_map, lenient_string, lenient_string_list,
};
use super::{WireError, from_slice};

/// A type in `object_info`: an input's or output's type name, or a combo's allowed values.
#[derive(Debug, Clone, PartialEq)]
pub enum IoType {
    /// A named type: `INT`, `FLOAT`, `STRING`, `BOOLEAN`, `IMAGE`, `COMBO`, ...
    Named(String),
    /// A combo written as the list of allowed values.
    Combo(Vec<Value>),
    /// Something else (kept as sent).
    Other(Value),
}

impl IoType {
    fn from_value(value: Value) -> Self {
        match value {
            Value::String(s) => Self::Named(s),
            Value::Array(values) => Self::Combo(values),
            other => Self::Other(other),
        }
    }

    /// The type name; `COMBO` for a list of values, empty for anything else.
    pub fn name(&self) -> &str {
        match self {
            Self::Named(name) => name,
            Self::Combo(_) => "COMBO",
            Self::Other(_) => "",
        }
    }
}

impl<'de> Deserialize<'de> for IoType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::from_value(Value::deserialize(d)?))
    }
}

/// One input of a node class: `[type, {default, min, max, step, tooltip, ...}]`.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    /// The input's type.
    pub kind: IoType,
    /// The options object (empty when absent).
    pub options: Map<String, Value>,
}

impl<'de> Deserialize<'de> for InputSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Array(parts) => {
                let mut parts = parts.into_iter();
                let kind = IoType::from_value(parts.next().unwrap_or(Value::Null));
                let options = match parts.next() {
                    Some(Value::Object(options)) => options,
                    _ => Map::new(),
                };
                Self { kind, options }
            }
            // Hidden inputs are written as a bare type string.
            other => Self {
                kind: IoType::from_value(other),
                options: Map::new(),
            },
        })
    }
}

impl InputSpec {
    /// The type name (`COMBO` for a combo).
    pub fn type_name(&self) -> &str {
        self.kind.name()
    }

    /// The `default` option.
    pub fn default_value(&self) -> Option<&Value> {
        self.options.get("default")
    }

    /// The `min` option, exactly as sent.
    pub fn min(&self) -> Option<&Number> {
        self.options.get("min").and_then(Value::as_number)
    }

    /// The `max` option, exactly as sent (`18446744073709551615` stays exact).
    pub fn max(&self) -> Option<&Number> {
        self.options.get("max").and_then(Value::as_number)
    }

    /// The `step` option.
    pub fn step(&self) -> Option<&Number> {
        self.options.get("step").and_then(Value::as_number)
    }

    /// The allowed values of a combo: the list form `[[a, b]]`, or the newer
    /// `["COMBO", {"options": [a, b]}]`.
    pub fn allowed_values(&self) -> Option<&[Value]> {
        match &self.kind {
            IoType::Combo(values) => Some(values),
            IoType::Named(name) if name == "COMBO" => self
                .options
                .get("options")
                .and_then(Value::as_array)
                .map(Vec::as_slice),
            _ => None,
        }
    }

    /// Whether the input only accepts a link (`forceInput`).
    pub fn force_input(&self) -> bool {
        self.options
            .get("forceInput")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// The `tooltip` option.
    pub fn tooltip(&self) -> Option<&str> {
        self.options.get("tooltip").and_then(Value::as_str)
    }
}

/// `input` of a node class.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct NodeInputs {
    /// Inputs that must be given.
    #[serde(default, deserialize_with = "lenient_map")]
    pub required: BTreeMap<String, InputSpec>,
    /// Inputs that may be given.
    #[serde(default, deserialize_with = "lenient_map")]
    pub optional: BTreeMap<String, InputSpec>,
    /// Inputs the server fills in (`PROMPT`, `UNIQUE_ID`, ...).
    #[serde(default, deserialize_with = "lenient_map")]
    pub hidden: BTreeMap<String, InputSpec>,
}

/// One node class of `GET /object_info` or `GET /object_info/{class}`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct NodeInfo {
    /// The class name (the `class_type` of a prompt node).
    #[serde(deserialize_with = "lenient_string")]
    pub name: String,
    /// The name shown in the UI.
    #[serde(deserialize_with = "lenient_string")]
    pub display_name: String,
    /// A description; may be empty.
    #[serde(deserialize_with = "lenient_string")]
    pub description: String,
    /// Menu category, `/`-separated.
    #[serde(deserialize_with = "lenient_string")]
    pub category: String,
    /// The Python module that defines it (`nodes`, `custom_nodes.x`).
    #[serde(deserialize_with = "lenient_string")]
    pub python_module: String,
    /// The inputs.
    pub input: NodeInputs,
    /// Input names in display order, per section (`required`, `optional`, `hidden`).
    #[serde(deserialize_with = "lenient_map")]
    pub input_order: BTreeMap<String, Vec<String>>,
    /// Output types, in slot order.
    pub output: Vec<IoType>,
    /// Per output slot, whether it is a list.
    #[serde(deserialize_with = "lenient_bool_list")]
    pub output_is_list: Vec<bool>,
    /// Output slot names.
    #[serde(deserialize_with = "lenient_string_list")]
    pub output_name: Vec<String>,
    /// Whether the node is an output node (its result has a UI dict and makes the prompt run).
    #[serde(deserialize_with = "lenient_bool")]
    pub output_node: bool,
    /// Whether the node takes whole lists at once.
    #[serde(deserialize_with = "lenient_bool")]
    pub is_input_list: bool,
    /// Whether the node is deprecated.
    #[serde(deserialize_with = "lenient_bool")]
    pub deprecated: bool,
    /// Whether the node is experimental.
    #[serde(deserialize_with = "lenient_bool")]
    pub experimental: bool,
}

impl NodeInfo {
    /// An input by name, from `required`, then `optional`.
    pub fn input(&self, name: &str) -> Option<&InputSpec> {
        self.input
            .required
            .get(name)
            .or_else(|| self.input.optional.get(name))
    }
}

/// Parses an object_info body (`{class: info}`). A class whose entry cannot be read is skipped
/// rather than failing the whole catalogue (one broken custom node must not hide the others);
/// their names are returned beside the result.
pub fn parse_object_info(
    body: &[u8],
) -> Result<(BTreeMap<String, NodeInfo>, Vec<String>), WireError> {
    let map: Map<String, Value> = from_slice(body)?;
    let mut nodes = BTreeMap::new();
    let mut skipped = Vec::new();
    for (name, value) in map {
        match serde_json::from_value::<NodeInfo>(value) {
            Ok(info) => {
                nodes.insert(name, info);
            }
            Err(_) => skipped.push(name),
        }
    }
    Ok((nodes, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comfy::wire::test_support::{protocol_dir, responses, transcript};

    #[test]
    fn object_info_parses_with_types_bounds_and_combos() {
        let text = std::fs::read(protocol_dir().join("object_info.json")).unwrap();
        let (nodes, skipped) = parse_object_info(&text).unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(nodes.len(), 10);
        let delay = &nodes["TestDelay"];
        assert!(delay.output_node);
        assert_eq!(delay.input.required["seconds"].type_name(), "FLOAT");
        assert_eq!(
            delay.input.required["seconds"].max().unwrap().to_string(),
            "3600.0"
        );
        let nonce = &delay.input.required["nonce"];
        assert_eq!(nonce.type_name(), "INT");
        assert_eq!(nonce.max().unwrap().to_string(), "18446744073709551615");
        assert_eq!(nonce.min().unwrap().to_string(), "0");
        assert!(delay.input.optional["value"].force_input());
        assert_eq!(delay.input.hidden["unique_id"].type_name(), "UNIQUE_ID");
        assert_eq!(
            delay.input_order["optional"],
            ["value", "image", "progress_text"]
        );
        assert_eq!(delay.output_name, ["value"]);

        let scale = &nodes["ImageScale"];
        let method = scale.input("upscale_method").unwrap();
        assert_eq!(method.type_name(), "COMBO");
        assert_eq!(method.allowed_values().unwrap().len(), 5);
        assert_eq!(method.allowed_values().unwrap()[0], "nearest-exact");
        assert!(!scale.output_node);
        assert_eq!(scale.output[0], IoType::Named("IMAGE".into()));

        let load = &nodes["LoadImage"];
        assert_eq!(load.input("image").unwrap().options["image_upload"], true);
        assert_eq!(load.output.len(), 2);

        // The newer COMBO form and a broken class that is skipped, not fatal.
        let (nodes, skipped) = parse_object_info(
            br#"{"A": {"input": {"required": {"m": ["COMBO", {"options": ["x", "y"]}]}}},
                 "B": 7}"#,
        )
        .unwrap();
        assert_eq!(skipped, ["B"]);
        assert_eq!(
            nodes["A"]
                .input("m")
                .unwrap()
                .allowed_values()
                .unwrap()
                .len(),
            2
        );

        // GET /object_info/{class} responses from the transcripts.
        let t = transcript("misc.json");
        for (path, _, body) in responses(&t)
            .into_iter()
            .filter(|(p, _, _)| p.contains("/object_info/"))
        {
            let (nodes, skipped) = parse_object_info(body.to_string().as_bytes()).unwrap();
            assert!(skipped.is_empty());
            if path.ends_with("NoSuchNode") {
                assert!(nodes.is_empty());
            } else {
                assert_eq!(nodes.len(), 1);
            }
        }
    }
}
