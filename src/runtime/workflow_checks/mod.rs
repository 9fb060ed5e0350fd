//! Pure checks and rewrites of a ComfyUI graph before it is queued: validation
//! against the backends' cached `/object_info` (node classes, required inputs,
//! literal types, ranges, combo values, link slots and link types, output
//! nodes), per-execution input overrides, and the `filename_prefix` rewrite that
//! keeps every execution's outputs in its own subfolder.
//!
//! Everything here is synchronous and side-effect free: it neither talks to a
//! backend nor knows gRPC or the store. Numbers are compared exactly on their
//! JSON text (the crate enables serde_json's `arbitrary_precision`), so a seed of
//! `18446744073709551615` checks against a `max` of `2^64 - 1` without a round
//! trip through `f64`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Number, Value};

use crate::comfy::wire::{self, InputSpec, NodeInfo, WireError};
use crate::model::workflow::{MAX_REPORTED_PROBLEMS, shown};
use crate::model::{
    ComfyNode, JsonObject, ValidationError, WorkflowDefinition, join_path, key_path,
};

mod numbers;
mod prompt_edits;
#[cfg(test)]
mod tests;

use numbers::{exact_order, json_equal, parse_decimal};
#[cfg(test)]
pub(crate) use prompt_edits::filename_prefixes;
pub use prompt_edits::{
    apply_node_overrides, apply_overrides, rewrite_filename_prefixes,
    rewrite_node_filename_prefixes,
};

/// Field path under which [`check_against_object_info`] reports problems of a
/// workflow's graph.
pub const WORKFLOW_FIELD: &str = "workflow_json";

/// Field path of the per-execution input overrides in an execute request.
pub const OVERRIDES_FIELD: &str = "overrides";

/// First folder of every rewritten `filename_prefix`; one subfolder per execution
/// id lies below it.
pub const OUTPUT_ROOT: &str = "comfy-reality";

/// Prefix used when a `filename_prefix` sanitizes to nothing (ComfyUI's default).
pub const DEFAULT_FILENAME_PREFIX: &str = "ComfyUI";

/// The node classes the backends offer, by class name, as their cached
/// `GET /object_info` describes them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObjectInfoCatalogue {
    /// Node class name (a prompt's `class_type`) to its description.
    classes: BTreeMap<String, NodeInfo>,
}

impl ObjectInfoCatalogue {
    /// A catalogue of the given classes (what [`wire::parse_object_info`] returns).
    pub fn new(classes: BTreeMap<String, NodeInfo>) -> Self {
        Self { classes }
    }

    /// Parses a `GET /object_info` body. Classes whose entry cannot be read are
    /// left out (see [`wire::parse_object_info`]); their names are returned beside.
    pub fn from_object_info_json(body: &[u8]) -> Result<(Self, Vec<String>), WireError> {
        let (classes, skipped) = wire::parse_object_info(body)?;
        Ok((Self::new(classes), skipped))
    }

    /// The description of `class_type`, if a backend has it.
    pub fn get(&self, class_type: &str) -> Option<&NodeInfo> {
        self.classes.get(class_type)
    }

    /// Every class name, sorted.
    pub fn class_names(&self) -> impl Iterator<Item = &str> {
        self.classes.keys().map(String::as_str)
    }

    /// Whether a backend has `class_type`.
    pub fn contains(&self, class_type: &str) -> bool {
        self.classes.contains_key(class_type)
    }

    /// How many classes the catalogue holds.
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// Whether the catalogue holds no class.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }
}

impl From<BTreeMap<String, NodeInfo>> for ObjectInfoCatalogue {
    fn from(classes: BTreeMap<String, NodeInfo>) -> Self {
        Self::new(classes)
    }
}

// ---------------------------------------------------------------------------------------------
// Checking a graph against object_info
// ---------------------------------------------------------------------------------------------

/// Checks a parsed workflow against the backends' `/object_info` and reports
/// every problem at once, each as a violation under `workflow_json`:
///
/// * `workflow_json["7"].class_type`: the class is not in the catalogue;
/// * `workflow_json["3"].inputs.width`: a required input is missing; a literal
///   has the wrong JSON type for `INT`, `FLOAT`, `STRING` or `BOOLEAN`; a number
///   lies outside `[min, max]` (compared exactly); a combo value is not in the
///   allowed list; a list is not a `[node_id, output_index]` link; a link names a
///   node that is not in the graph, an output slot the source class does not
///   have, or a source output type the input does not accept (`*` matches
///   anything, comma-separated lists match when they share a type);
/// * `workflow_json`: no node's class is an output node (`output_node`).
///
/// Optional and hidden inputs may be absent; inputs the class does not declare
/// are ignored, as ComfyUI ignores them. Unlike ComfyUI, nodes that no output
/// depends on are checked too. At most [`MAX_REPORTED_PROBLEMS`] violations are
/// listed, the rest summed up in a last one.
pub fn check_against_object_info(
    workflow: &WorkflowDefinition,
    catalogue: &ObjectInfoCatalogue,
) -> Result<(), ValidationError> {
    check_nodes_against_object_info(&workflow.nodes, catalogue)
}

/// [`check_against_object_info`] on a workflow's nodes (a submit's prompt,
/// after [`apply_node_overrides`], before it is written as JSON).
pub fn check_nodes_against_object_info(
    nodes: &BTreeMap<String, ComfyNode>,
    catalogue: &ObjectInfoCatalogue,
) -> Result<(), ValidationError> {
    let nodes = nodes
        .iter()
        .map(|(id, node)| {
            let view = NodeView {
                class_type: &node.class_type,
                inputs: &node.inputs,
            };
            (id.as_str(), Some(view))
        })
        .collect();
    let mut problems = Problems::default();
    check_nodes(&nodes, catalogue, WORKFLOW_FIELD, &mut problems);
    problems.finish(WORKFLOW_FIELD).into_result()
}

/// The same checks as [`check_against_object_info`] on a POST /prompt `prompt`
/// object (`{id: {"class_type", "inputs"}}`), such as one after
/// [`apply_overrides`]; paths start with `base` (e.g. `workflow_json`). A node
/// that is not an object with a string `class_type` and an object `inputs` is
/// reported too; links to it are not type-checked.
pub fn check_prompt_against_object_info(
    prompt: &JsonObject,
    catalogue: &ObjectInfoCatalogue,
    base: &str,
) -> Result<(), ValidationError> {
    let mut problems = Problems::default();
    let mut nodes = BTreeMap::new();
    for (id, node) in prompt {
        // Built only for a problem: a valid prompt allocates none.
        let path = || key_path(base, id);
        let view = match node {
            Value::Object(node) => {
                let class_type = node.get("class_type").and_then(Value::as_str);
                let inputs = node.get("inputs").and_then(Value::as_object);
                if class_type.is_none() {
                    problems.push(join_path(&path(), "class_type"), "must be a string".into());
                }
                if inputs.is_none() {
                    problems.push(join_path(&path(), "inputs"), "must be an object".into());
                }
                class_type
                    .zip(inputs)
                    .map(|(class_type, inputs)| NodeView { class_type, inputs })
            }
            _ => {
                problems.push(path(), "node must be an object".into());
                None
            }
        };
        nodes.insert(id.as_str(), view);
    }
    check_nodes(&nodes, catalogue, base, &mut problems);
    problems.finish(base).into_result()
}

/// What the checks need of one node.
#[derive(Clone, Copy)]
struct NodeView<'a> {
    /// The node's class.
    class_type: &'a str,
    /// The node's inputs: literals and links.
    inputs: &'a JsonObject,
}

/// Nodes by id; `None` for a node that exists but is malformed.
type NodeViews<'a> = BTreeMap<&'a str, Option<NodeView<'a>>>;

/// Collects violations up to [`MAX_REPORTED_PROBLEMS`], counting the rest.
#[derive(Default)]
struct Problems {
    /// The violations kept.
    errors: ValidationError,
    /// How many more were found.
    dropped: usize,
}

impl Problems {
    fn push(&mut self, field: String, description: String) {
        if self.errors.len() < MAX_REPORTED_PROBLEMS {
            self.errors.push(field, description);
        } else {
            self.dropped += 1;
        }
    }

    fn finish(mut self, field: &str) -> ValidationError {
        if self.dropped > 0 {
            self.errors
                .push(field, format!("{} more problems not shown", self.dropped));
        }
        self.errors
    }
}

fn check_nodes(
    nodes: &NodeViews<'_>,
    catalogue: &ObjectInfoCatalogue,
    base: &str,
    problems: &mut Problems,
) {
    let mut ordered: Vec<(&str, NodeView<'_>)> = nodes
        .iter()
        .filter_map(|(id, view)| view.map(|v| (*id, v)))
        .collect();
    ordered.sort_by(|a, b| node_id_order(a.0, b.0));

    let mut has_output = false;
    for (id, node) in ordered {
        // The paths are built only for a problem: a valid node allocates none.
        let path = || key_path(base, id);
        let input_path = |name: &str| key_path(&join_path(&path(), "inputs"), name);
        let Some(info) = catalogue.get(node.class_type) else {
            problems.push(
                join_path(&path(), "class_type"),
                format!(
                    "unknown node class {}: no backend's object_info has it (is the custom node installed?)",
                    quoted(node.class_type)
                ),
            );
            continue;
        };
        has_output |= info.output_node;
        for name in info.input.required.keys() {
            if !node.inputs.contains_key(name) {
                problems.push(
                    input_path(name),
                    format!("required input of {} is missing", node.class_type),
                );
            }
        }
        for (name, value) in node.inputs {
            let Some(spec) = info.input(name) else {
                continue;
            };
            let problem = match value {
                Value::Array(items) => check_link(items, spec, nodes, catalogue),
                literal => check_literal(literal, spec),
            };
            if let Some(description) = problem {
                problems.push(input_path(name), description);
            }
        }
    }
    if nodes.is_empty() {
        problems.push(base.to_owned(), "has no nodes, so no output node".into());
    } else if !has_output {
        problems.push(
            base.to_owned(),
            "has no output node: no node's class is an output node (output_node) in the backends' object_info".into(),
        );
    }
}

/// Checks an input given as a list, which ComfyUI always reads as a link.
fn check_link(
    items: &[Value],
    spec: &InputSpec,
    nodes: &NodeViews<'_>,
    catalogue: &ObjectInfoCatalogue,
) -> Option<String> {
    let [Value::String(source), Value::Number(index)] = items else {
        return Some(
            "a list is read as a link and must be [node_id, output_index] (a string and a number)"
                .into(),
        );
    };
    let Some(slot) = index.as_u64() else {
        return Some(format!(
            "link output index {} must be a non-negative integer",
            shown(index.as_str())
        ));
    };
    let Some(source_node) = nodes.get(source.as_str()) else {
        return Some(format!(
            "links to node {}, which is not in the workflow",
            quoted(source)
        ));
    };
    // A malformed or unknown source is reported on its own; nothing more to check here.
    let source_node = (*source_node)?;
    let source_info = catalogue.get(source_node.class_type)?;
    let outputs = source_info.output.len();
    let Some(received) = usize::try_from(slot)
        .ok()
        .and_then(|s| source_info.output.get(s))
    else {
        return Some(format!(
            "links to output {slot} of node {} ({}), which has {outputs} output{}",
            quoted(source),
            source_node.class_type,
            if outputs == 1 { "" } else { "s" }
        ));
    };
    let received = received.name();
    let expected = spec.type_name();
    (!types_compatible(received, expected)).then(|| {
        format!(
            "receives {received} from output {slot} of node {} ({}), but the input expects {expected}",
            quoted(source),
            source_node.class_type
        )
    })
}

/// ComfyUI's `validate_node_input` (non-strict): equal names, a `*` on either
/// side, or comma-separated lists that share a type. An unknown (empty) type
/// on either side is not judged.
fn types_compatible(received: &str, expected: &str) -> bool {
    if received == expected || received.is_empty() || expected.is_empty() {
        return true;
    }
    let received: BTreeSet<&str> = received.split(',').map(str::trim).collect();
    let expected: BTreeSet<&str> = expected.split(',').map(str::trim).collect();
    received.contains("*") || expected.contains("*") || !received.is_disjoint(&expected)
}

/// Checks a literal (not a list) against its input's type, allowed values and bounds.
fn check_literal(value: &Value, spec: &InputSpec) -> Option<String> {
    if let Some(allowed) = spec.allowed_values() {
        if allowed.iter().any(|a| json_equal(a, value)) {
            return None;
        }
        return Some(format!(
            "value {} is not one of the allowed values: {}",
            shown_value(value),
            list_values(allowed)
        ));
    }
    let type_name = spec.type_name();
    // Other types (IMAGE, custom ones) take whatever a node makes of a literal.
    let (fits, expected) = match type_name {
        "INT" => (
            matches!(value, Value::Number(n)
                if n.is_i64() || n.is_u64()
                    || parse_decimal(n.as_str()).is_some_and(|d| d.is_integer())),
            "an integer",
        ),
        "FLOAT" => (value.is_number(), "a number"),
        "STRING" => (value.is_string(), "a string"),
        "BOOLEAN" => (value.is_boolean(), "true or false"),
        _ => (true, ""),
    };
    if !fits {
        let got = match value {
            Value::Number(n) => shown(n.as_str()),
            other => json_kind(other).to_owned(),
        };
        return Some(format!("expected {type_name} ({expected}), got {got}"));
    }
    let Value::Number(number) = value else {
        return None;
    };
    check_bounds(number, spec)
}

/// Checks a number against the input's `min` and `max`, exactly.
fn check_bounds(number: &Number, spec: &InputSpec) -> Option<String> {
    let text = number.as_str();
    if let Some(min) = spec.min()
        && exact_order(number, min) == Some(Ordering::Less)
    {
        return Some(format!(
            "value {} is smaller than the minimum {min}",
            shown(text)
        ));
    }
    if let Some(max) = spec.max()
        && exact_order(number, max) == Some(Ordering::Greater)
    {
        return Some(format!(
            "value {} is bigger than the maximum {max}",
            shown(text)
        ));
    }
    None
}

/// Orders node ids: numeric ids numerically, before the others, which sort as text.
fn node_id_order(a: &str, b: &str) -> Ordering {
    let numeric = |s: &str| {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (numeric(a), numeric(b)) {
        (Some(x), Some(y)) => x.cmp(&y).then_with(|| a.cmp(b)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

/// What kind of JSON value `value` is, for messages.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A string as a JSON literal, shortened.
fn quoted(text: &str) -> String {
    shown(&Value::String(text.to_owned()).to_string())
}

/// A value as JSON, shortened.
fn shown_value(value: &Value) -> String {
    shown(&value.to_string())
}

/// The allowed values of a combo, the first few of them.
fn list_values(values: &[Value]) -> String {
    const SHOWN: usize = 10;
    let mut text = values
        .iter()
        .take(SHOWN)
        .map(shown_value)
        .collect::<Vec<_>>()
        .join(", ");
    if values.len() > SHOWN {
        text.push_str(&format!(" and {} more", values.len() - SHOWN));
    }
    text
}
