//! One node of a ComfyUI graph ([`ComfyNode`]): its class, inputs (literals
//! and links `[node_id, output_index]`) and `_meta`, and whether its class is
//! an output node, by name.
//!
//! Also the name of the field every path of a workflow's problems starts from.
//!
//! The bottom of the workflow module: it imports nothing of its siblings.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::JsonObject;

/// The request field that carries a workflow's graph: where every field path
/// of the workflow's problems starts.
pub(super) const WORKFLOW_JSON: &str = "workflow_json";

/// Node classes known to be output nodes (ComfyUI's `OUTPUT_NODE = True`),
/// from the core nodes and the test nodes of the captured protocol.
pub const OUTPUT_NODE_CLASSES: &[&str] = &[
    "SaveImage",
    "PreviewImage",
    "SaveImageWebsocket",
    "SaveAnimatedWEBP",
    "SaveAnimatedPNG",
    "SaveLatent",
    "SaveAudio",
    "SaveVideo",
    "SaveGLB",
    "TestDelay",
    "TestWriteBlob",
];

/// Whether `class_type` is an output node, by name: one of
/// [`OUTPUT_NODE_CLASSES`] or any class starting with `Save` or `Preview`.
///
/// This is a heuristic for checking a graph without a backend; the executor
/// refines it with `/object_info` (`output_node`) of the backend it runs on.
pub fn is_output_class(class_type: &str) -> bool {
    OUTPUT_NODE_CLASSES.contains(&class_type)
        || class_type.starts_with("Save")
        || class_type.starts_with("Preview")
}

/// One node of a ComfyUI graph (the seed's `ComfyNode`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComfyNode {
    /// The node's id in the graph (the API format's key, e.g. `"3"`).
    pub id: String,
    /// The node class, e.g. `SaveImage` (the seed's `type`, ComfyUI's `class_type`).
    pub class_type: String,
    /// Input values exactly as received: literals, or links `[node_id, output_index]`.
    pub inputs: JsonObject,
    /// Output slot indices other nodes consume, as strings, sorted numerically.
    pub outputs: Vec<String>,
    /// The node's `_meta` object (e.g. `{"title": "Empty Image"}`).
    pub metadata: JsonObject,
}

impl ComfyNode {
    /// Whether this node is an output node (see [`is_output_class`]).
    pub fn is_output_node(&self) -> bool {
        is_output_class(&self.class_type)
    }

    /// The links among this node's inputs: `(input name, source node, output
    /// index)` where the index is the raw JSON number (validated by the graph checks).
    pub fn links(&self) -> impl Iterator<Item = (&str, &str, &serde_json::Number)> {
        self.inputs
            .iter()
            .filter_map(|(name, value)| as_link(value).map(|(src, idx)| (name.as_str(), src, idx)))
    }
}

/// A link is what ComfyUI's `is_link` accepts: a 2-element array of a string
/// (the source node id) and a number (the output index).
fn as_link(value: &Value) -> Option<(&str, &serde_json::Number)> {
    match value.as_array()?.as_slice() {
        [Value::String(src), Value::Number(idx)] => Some((src, idx)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_class_heuristic() {
        for (class, want) in [
            ("SaveImage", true),
            ("PreviewImage", true),
            ("SaveImageWebsocket", true),
            ("SaveGLB", true),
            ("TestDelay", true),
            ("TestWriteBlob", true),
            ("SaveAnything", true),
            ("PreviewAny", true),
            ("TestFail", false),
            ("ImageInvert", false),
            ("saveimage", false),
            ("", false),
        ] {
            assert_eq!(is_output_class(class), want, "{class}");
        }
    }
}
