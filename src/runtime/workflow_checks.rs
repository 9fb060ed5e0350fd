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
use crate::model::{JsonObject, ValidationError, WorkflowDefinition, join_path, key_path};

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
    let nodes = workflow
        .nodes
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

/// How two JSON numbers order, exactly (as written, not as floats): as integers when both
/// are (no copy, the common case of a seed or a step count against its bounds), else as
/// decimals. `None` when one is not a number [`parse_decimal`] reads.
fn exact_order(a: &Number, b: &Number) -> Option<Ordering> {
    if let (Some(a), Some(b)) = (a.as_i128(), b.as_i128()) {
        return Some(a.cmp(&b));
    }
    Some(parse_decimal(a.as_str())?.cmp(&parse_decimal(b.as_str())?))
}

/// JSON equality with numbers compared by value (`1` equals `1.0`, as in Python).
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            match (parse_decimal(x.as_str()), parse_decimal(y.as_str())) {
                (Some(x), Some(y)) => x == y,
                _ => x == y,
            }
        }
        _ => a == b,
    }
}

/// An exact decimal: `0.d1d2...dn * 10^exp`, normalized (no leading or
/// trailing zero digits; zero has no digits and is never negative), so two
/// spellings of one value (`1`, `1.0`, `10e-1`) are equal.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Decimal {
    /// Whether the value is below zero.
    negative: bool,
    /// Significant digits, each 0..=9, first and last non-zero.
    digits: Vec<u8>,
    /// Decimal exponent of the leading digit's place, plus one.
    exp: i64,
}

/// Exponents are clamped to this magnitude, far beyond any meaningful bound.
const EXPONENT_LIMIT: i64 = 1 << 60;

impl Decimal {
    fn is_integer(&self) -> bool {
        self.digits.is_empty() || self.exp >= i64::try_from(self.digits.len()).unwrap_or(i64::MAX)
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        let sign = |d: &Decimal| match (d.digits.is_empty(), d.negative) {
            (true, _) => 0,
            (false, true) => -1,
            (false, false) => 1,
        };
        match sign(self).cmp(&sign(other)) {
            Ordering::Equal if sign(self) == 0 => Ordering::Equal,
            Ordering::Equal => {
                let magnitude = self
                    .exp
                    .cmp(&other.exp)
                    .then_with(|| self.digits.cmp(&other.digits));
                if self.negative {
                    magnitude.reverse()
                } else {
                    magnitude
                }
            }
            unequal => unequal,
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Parses a JSON number's text (`-12`, `3.50`, `1e9`, `18446744073709551616`)
/// without loss. `None` for anything that is not a decimal number.
fn parse_decimal(text: &str) -> Option<Decimal> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (mantissa, exponent) = match rest.split_once(['e', 'E']) {
        Some((m, e)) => (m, parse_exponent(e)?),
        None => (rest, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int_part.is_empty() && frac_part.is_empty())
        || !all_digits(int_part)
        || !all_digits(frac_part)
    {
        return None;
    }
    let mut digits: Vec<u8> = int_part
        .bytes()
        .chain(frac_part.bytes())
        .map(|b| b - b'0')
        .collect();
    let leading = digits.iter().take_while(|&&d| d == 0).count();
    digits.drain(..leading);
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        return Some(Decimal {
            negative: false,
            digits,
            exp: 0,
        });
    }
    let places = |n: usize| i64::try_from(n).unwrap_or(EXPONENT_LIMIT);
    let exp = places(int_part.len())
        .saturating_sub(places(leading))
        .saturating_add(exponent);
    Some(Decimal {
        negative,
        digits,
        exp,
    })
}

/// An exponent's digits with an optional sign, clamped to [`EXPONENT_LIMIT`].
fn parse_exponent(text: &str) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let magnitude = digits.bytes().fold(0i64, |acc, b| {
        acc.saturating_mul(10)
            .saturating_add(i64::from(b - b'0'))
            .min(EXPONENT_LIMIT)
    });
    Some(if negative { -magnitude } else { magnitude })
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

// ---------------------------------------------------------------------------------------------
// Overrides
// ---------------------------------------------------------------------------------------------

/// Applies per-execution input overrides (`{"<node id>": {"<input name>":
/// <value>}}`, from an execute request's `config`) to a POST /prompt `prompt`
/// object, setting or adding each input.
///
/// Rules, checked for every override before any is applied (so on error the
/// prompt is unchanged, and every violation is reported):
///
/// * the node id must be in the prompt (`overrides["9"]`), and its
///   overrides an object;
/// * a value must not be a list: ComfyUI reads every list as a link, and
///   overrides set values, they do not rewire the graph;
/// * an input that is linked to another node's output stays linked: an
///   override cannot replace a link with a literal (the source would run for
///   nothing, and its output type was what made the graph valid).
///
/// Values are copied as they are, so numbers keep their exact text. Inputs the
/// node did not have are added; run [`check_prompt_against_object_info`]
/// afterwards to judge the result.
pub fn apply_overrides(
    prompt: &mut JsonObject,
    overrides: &JsonObject,
) -> Result<(), ValidationError> {
    let mut errors = ValidationError::new();
    for (id, values) in overrides {
        let path = key_path(OVERRIDES_FIELD, id);
        let Some(node) = prompt.get(id) else {
            errors.push(path, format!("no node {} in the workflow", quoted(id)));
            continue;
        };
        let Some(values) = values.as_object() else {
            errors.push(path, "must be an object of input name to value");
            continue;
        };
        let Some(inputs) = node.get("inputs").and_then(Value::as_object) else {
            errors.push(path, "the node has no inputs object to override");
            continue;
        };
        for (name, value) in values {
            let field = key_path(&path, name);
            if value.is_array() {
                errors.push(
                    field,
                    "must be a literal value: ComfyUI reads a list as a link, and overrides cannot rewire the graph",
                );
            } else if let Some(Value::Array(link)) = inputs.get(name) {
                let source = match link.as_slice() {
                    [Value::String(source), index] => {
                        format!(" to output {index} of node {}", quoted(source))
                    }
                    _ => String::new(),
                };
                errors.push(
                    field,
                    format!("the input is linked{source}; an override cannot replace a link with a literal"),
                );
            }
        }
    }
    errors.into_result()?;
    for (id, values) in overrides {
        let Some(Value::Object(inputs)) =
            prompt.get_mut(id).and_then(|node| node.get_mut("inputs"))
        else {
            continue;
        };
        if let Some(values) = values.as_object() {
            for (name, value) in values {
                inputs.insert(name.clone(), value.clone());
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// filename_prefix rewrite
// ---------------------------------------------------------------------------------------------

/// Rewrites every string `filename_prefix` input of a POST /prompt `prompt`
/// object to `comfy-reality/<execution_id>/<original prefix, sanitized>`, so
/// two executions never write the same files in a shared ComfyUI output folder
/// and one execution's outputs all lie under one subfolder.
///
/// Sanitizing (of the prefix and of the execution id) turns backslashes into
/// `/` and drops empty, `.` and `..` components, so the result has no leading
/// `/`, no backslash, and cannot climb out of its subfolder; control
/// characters and `:` become `_`. An empty prefix becomes `ComfyUI`. A prefix
/// already under this execution's folder is kept, so rewriting twice changes
/// nothing. Linked `filename_prefix` inputs are left alone.
pub fn rewrite_filename_prefixes(prompt: &mut JsonObject, execution_id: &str) {
    // Joined by hand, each string sized once: this runs on every submit.
    let id = sanitize_path(execution_id);
    let mut folder = String::with_capacity(OUTPUT_ROOT.len() + 1 + id.len().max(1));
    folder.push_str(OUTPUT_ROOT);
    folder.push('/');
    if id.is_empty() {
        folder.push('_');
    } else {
        // The id is one folder, whatever separators it held.
        folder.extend(id.chars().map(|c| if c == '/' { '_' } else { c }));
    }
    for node in prompt.values_mut() {
        let Some(Value::String(prefix)) = node
            .get_mut("inputs")
            .and_then(|inputs| inputs.get_mut("filename_prefix"))
        else {
            continue;
        };
        let sanitized = sanitize_path(prefix);
        let in_folder = sanitized
            .strip_prefix(folder.as_str())
            .is_some_and(|rest| rest.starts_with('/'));
        let new_prefix = if in_folder {
            sanitized
        } else {
            let name = if sanitized.is_empty() {
                DEFAULT_FILENAME_PREFIX
            } else {
                sanitized.as_str()
            };
            let mut joined = String::with_capacity(folder.len() + 1 + name.len());
            joined.push_str(&folder);
            joined.push('/');
            joined.push_str(name);
            joined
        };
        *prefix = new_prefix;
    }
}

/// `(node id, prefix)` of every string `filename_prefix` input of `prompt`, in
/// prompt order: after [`rewrite_filename_prefixes`], what it rewrote.
#[cfg(test)]
pub(crate) fn filename_prefixes(prompt: &JsonObject) -> Vec<(String, String)> {
    prompt
        .iter()
        .filter_map(
            |(id, node)| match node.get("inputs")?.get("filename_prefix")? {
                Value::String(prefix) => Some((id.clone(), prefix.clone())),
                _ => None,
            },
        )
        .collect()
}

/// A relative `/`-separated path with no empty, `.` or `..` component, no
/// backslash, no control character and no `:`.
fn sanitize_path(raw: &str) -> String {
    let unsafe_char = |c: char| c == '\\' || c == ':' || c.is_control();
    // Most prefixes are already clean: one scan (by byte when ASCII), one copy.
    let has_unsafe = if raw.is_ascii() {
        raw.bytes().any(|b| unsafe_char(char::from(b)))
    } else {
        raw.chars().any(unsafe_char)
    };
    if !has_unsafe
        && raw
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
    {
        return raw.to_owned();
    }
    raw.split(['/', '\\'])
        .filter(|part| !part.is_empty() && *part != "." && *part != "..")
        .map(|part| {
            part.chars()
                .map(|c| if c.is_control() || c == ':' { '_' } else { c })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::model::NewWorkflow;

    /// Classes copied from the captured object_info.json, plus two custom
    /// ones for wildcard and comma-separated types and the newer COMBO form.
    const EMBEDDED_OBJECT_INFO: &str = r#"{
      "EmptyImage": {"input": {"required": {
          "width": ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}],
          "height": ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}],
          "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
          "color": ["INT", {"default": 0, "min": 0, "max": 16777215, "step": 1}]}},
        "output": ["IMAGE"], "output_node": false},
      "ImageInvert": {"input": {"required": {"image": ["IMAGE"]}}, "output": ["IMAGE"], "output_node": false},
      "ImageScale": {"input": {"required": {
          "image": ["IMAGE"],
          "upscale_method": [["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]],
          "width": ["INT", {"default": 512, "min": 0, "max": 16384, "step": 1}],
          "height": ["INT", {"default": 512, "min": 0, "max": 16384, "step": 1}],
          "crop": [["disabled", "center"]]}},
        "output": ["IMAGE"], "output_node": false},
      "SaveImage": {"input": {"required": {
          "images": ["IMAGE", {"tooltip": "The images to save."}],
          "filename_prefix": ["STRING", {"default": "ComfyUI"}]},
          "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}},
        "output": ["IMAGE"], "output_node": true},
      "PreviewImage": {"input": {"required": {"images": ["IMAGE"]},
          "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}},
        "output": ["IMAGE"], "output_node": true},
      "LoadImage": {"input": {"required": {"image": [["example.png"], {"image_upload": true}]}},
        "output": ["IMAGE", "MASK"], "output_node": false},
      "TestDelay": {"input": {"required": {
          "seconds": ["FLOAT", {"default": 3.0, "min": 0.0, "max": 3600.0, "step": 0.1}],
          "steps": ["INT", {"default": 10, "min": 1, "max": 10000}],
          "nonce": ["INT", {"default": 0, "min": 0, "max": 18446744073709551615}]},
          "optional": {"value": ["INT", {"forceInput": true}], "image": ["IMAGE"],
                       "progress_text": ["BOOLEAN", {"default": false}]},
          "hidden": {"unique_id": "UNIQUE_ID"}},
        "output": ["INT"], "output_node": true},
      "AnyPass": {"input": {"required": {"anything": ["*"], "mode": ["COMBO", {"options": ["a", 1.5]}]}},
        "output": ["*", "IMAGE,MASK"], "output_node": false},
      "MaskOnly": {"input": {"required": {"mask": ["MASK,LATENT"]}}, "output": ["MASK"], "output_node": false}
    }"#;

    fn embedded() -> ObjectInfoCatalogue {
        let (catalogue, skipped) =
            ObjectInfoCatalogue::from_object_info_json(EMBEDDED_OBJECT_INFO.as_bytes()).unwrap();
        assert!(skipped.is_empty());
        catalogue
    }

    fn protocol_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/comfyui-protocol")
    }

    /// The captured catalogue, when the shared protocol folder is present.
    fn captured() -> Option<ObjectInfoCatalogue> {
        let body = std::fs::read(protocol_dir().join("object_info.json")).ok()?;
        let (catalogue, skipped) = ObjectInfoCatalogue::from_object_info_json(&body).unwrap();
        assert!(skipped.is_empty());
        Some(catalogue)
    }

    /// The embedded catalogue, and the captured one when present: the core
    /// classes must judge alike in both.
    fn catalogues() -> Vec<ObjectInfoCatalogue> {
        let mut all = vec![embedded()];
        all.extend(captured());
        all
    }

    fn workflow(graph: Value) -> WorkflowDefinition {
        WorkflowDefinition::from_api_json(NewWorkflow::new("t"), &graph.to_string()).unwrap()
    }

    fn check(graph: Value, catalogue: &ObjectInfoCatalogue) -> Result<(), ValidationError> {
        let by_workflow = check_against_object_info(&workflow(graph.clone()), catalogue);
        let by_prompt =
            check_prompt_against_object_info(graph.as_object().unwrap(), catalogue, WORKFLOW_FIELD);
        assert_eq!(by_workflow, by_prompt, "both entry points must agree");
        by_workflow
    }

    fn fields(result: Result<(), ValidationError>) -> Vec<String> {
        result
            .unwrap_err()
            .violations
            .into_iter()
            .map(|v| v.field)
            .collect()
    }

    fn empty_image(width: Value) -> Value {
        json!({"class_type": "EmptyImage",
               "inputs": {"width": width, "height": 48, "batch_size": 1, "color": 0}})
    }

    fn save(images: Value) -> Value {
        json!({"class_type": "SaveImage", "inputs": {"images": images, "filename_prefix": "x"}})
    }

    fn nonce_graph(nonce: &str) -> Value {
        let text = format!(
            r#"{{"1": {{"class_type": "TestDelay", "inputs": {{"seconds": 0.1, "steps": 1, "nonce": {nonce}}}}}}}"#
        );
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn a_valid_graph_passes() {
        for c in catalogues() {
            let graph = json!({"1": empty_image(json!(64)), "2": save(json!(["1", 0]))});
            assert_eq!(check(graph, &c), Ok(()));
        }
    }

    #[test]
    fn unknown_class_is_named() {
        for c in catalogues() {
            let graph = json!({"1": {"class_type": "NoSuchNode", "inputs": {}},
                               "2": save(json!(["1", 0]))});
            let e = check(graph, &c).unwrap_err();
            assert_eq!(e.len(), 1, "{e}");
            assert_eq!(e.violations[0].field, r#"workflow_json["1"].class_type"#);
            assert!(e.violations[0].description.contains("\"NoSuchNode\""));
        }
    }

    #[test]
    fn missing_required_input_but_not_optional_or_hidden() {
        for c in catalogues() {
            let graph = json!({"1": empty_image(json!(64)),
                               "2": {"class_type": "ImageInvert", "inputs": {}},
                               "3": save(json!(["2", 0]))});
            assert_eq!(
                fields(check(graph, &c)),
                [r#"workflow_json["2"].inputs.image"#]
            );
            // TestDelay's optional value/image/progress_text and hidden unique_id may be absent.
            assert_eq!(check(nonce_graph("1"), &c), Ok(()));
        }
    }

    #[test]
    fn out_of_range_values_are_all_reported() {
        for c in catalogues() {
            let graph = json!({"1": {"class_type": "EmptyImage",
                                     "inputs": {"width": 0, "height": 99999, "batch_size": 1, "color": 0}},
                               "2": save(json!(["1", 0]))});
            let e = check(graph, &c).unwrap_err();
            assert_eq!(e.len(), 2, "{e}");
            assert!(e.has_field(r#"workflow_json["1"].inputs.width"#));
            assert!(e.has_field(r#"workflow_json["1"].inputs.height"#));
            assert!(e.to_string().contains("smaller than the minimum 1"), "{e}");
            assert!(
                e.to_string().contains("bigger than the maximum 16384"),
                "{e}"
            );
        }
    }

    #[test]
    fn u64_seed_edge_is_exact() {
        for c in catalogues() {
            assert_eq!(check(nonce_graph("18446744073709551615"), &c), Ok(()));
            assert_eq!(check(nonce_graph("0"), &c), Ok(()));
            for bad in [
                "18446744073709551616",
                "-1",
                "1e30",
                "184467440737095516150",
            ] {
                let e = check(nonce_graph(bad), &c).unwrap_err();
                assert_eq!(
                    e.violations[0].field, r#"workflow_json["1"].inputs.nonce"#,
                    "{bad}"
                );
            }
        }
    }

    #[test]
    fn float_bounds_are_exact_too() {
        let c = embedded();
        let graph = |seconds: &str| -> Value {
            serde_json::from_str(&format!(
                r#"{{"1": {{"class_type": "TestDelay", "inputs": {{"seconds": {seconds}, "steps": 1, "nonce": 0}}}}}}"#
            ))
            .unwrap()
        };
        for ok in ["0", "0.0", "3600", "3600.000", "3.6e3", "-0", "1e-400"] {
            assert_eq!(check(graph(ok), &c), Ok(()), "{ok}");
        }
        for bad in [
            "3600.0000000000000000001",
            "-1e-400",
            "3.6e4",
            "1e99999999999999999999",
        ] {
            assert!(check(graph(bad), &c).is_err(), "{bad}");
        }
    }

    #[test]
    fn combo_values_must_be_allowed() {
        for c in catalogues() {
            let scale = |method: Value| {
                json!({"1": empty_image(json!(64)),
                       "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0],
                             "upscale_method": method, "width": 8, "height": 8, "crop": "disabled"}},
                       "3": save(json!(["2", 0]))})
            };
            let e = check(scale(json!("foo")), &c).unwrap_err();
            assert_eq!(
                e.violations[0].field,
                r#"workflow_json["2"].inputs.upscale_method"#
            );
            assert!(e.violations[0].description.contains("\"nearest-exact\""));
            assert_eq!(check(scale(json!("lanczos")), &c), Ok(()));
        }
        // The newer ["COMBO", {"options": [...]}] form; numbers compare by value.
        let c = embedded();
        let any = |mode: Value| {
            json!({"1": {"class_type": "AnyPass", "inputs": {"anything": 3, "mode": mode}},
                   "2": save(json!(["1", 1]))})
        };
        assert_eq!(check(any(json!("a")), &c), Ok(()));
        let exact: Value = serde_json::from_str("1.50").unwrap();
        assert_eq!(check(any(exact), &c), Ok(()));
        assert!(check(any(json!("b")), &c).is_err());
        assert!(check(any(json!(1)), &c).is_err());
    }

    #[test]
    fn literals_of_the_wrong_type() {
        let c = embedded();
        let cases = [
            ("width", json!("abc")),
            ("width", json!("64")),
            ("width", json!(6.5)),
            ("width", json!(true)),
            ("width", Value::Null),
            ("seconds", json!("1")),
            ("progress_text", json!(1)),
            ("progress_text", json!("true")),
        ];
        for (input, value) in cases {
            let graph = if input == "width" {
                json!({"1": empty_image(value.clone()), "2": save(json!(["1", 0]))})
            } else {
                let mut g = nonce_graph("0");
                g["1"]["inputs"][input] = value.clone();
                g
            };
            let e = check(graph, &c).unwrap_err();
            assert_eq!(
                e.violations[0].field,
                format!(r#"workflow_json["1"].inputs.{input}"#),
                "{value}"
            );
            assert!(e.violations[0].description.starts_with("expected"), "{e}");
        }
        // An integer written as a float is still an integer; a FLOAT takes an integer.
        let g: Value = serde_json::from_str(
            r#"{"1": {"class_type": "TestDelay", "inputs": {"seconds": 2, "steps": 1.0, "nonce": 1e3}}}"#,
        )
        .unwrap();
        assert_eq!(check(g, &c), Ok(()));
    }

    #[test]
    fn link_problems() {
        for c in catalogues() {
            // Slot beyond the source's outputs.
            let graph = json!({"1": empty_image(json!(64)), "2": save(json!(["1", 5]))});
            let e = check(graph, &c).unwrap_err();
            assert_eq!(e.violations[0].field, r#"workflow_json["2"].inputs.images"#);
            assert!(e.violations[0].description.contains("has 1 output"), "{e}");
            // Missing source node.
            let graph = json!({"2": save(json!(["99", 0]))});
            assert_eq!(
                fields(check(graph, &c)),
                [r#"workflow_json["2"].inputs.images"#]
            );
            // A list that is not a link.
            let graph = json!({"1": empty_image(json!(64)), "2": save(json!(["1"]))});
            assert_eq!(
                fields(check(graph, &c)),
                [r#"workflow_json["2"].inputs.images"#]
            );
            // Type mismatch: IMAGE into INT.
            let mut graph = nonce_graph("1");
            graph["0"] = empty_image(json!(64));
            graph["1"]["inputs"]["value"] = json!(["0", 0]);
            let e = check(graph, &c).unwrap_err();
            assert_eq!(e.violations[0].field, r#"workflow_json["1"].inputs.value"#);
            assert!(
                e.violations[0].description.contains("receives IMAGE"),
                "{e}"
            );
            assert!(e.violations[0].description.contains("expects INT"), "{e}");
        }
    }

    #[test]
    fn wildcard_and_comma_types_match_like_comfyui() {
        assert!(types_compatible("IMAGE", "IMAGE"));
        assert!(types_compatible("*", "INT"));
        assert!(types_compatible("IMAGE", "*"));
        assert!(types_compatible("IMAGE,MASK", "MASK"));
        assert!(types_compatible("MASK", "MASK, LATENT"));
        assert!(!types_compatible("IMAGE", "INT"));
        assert!(!types_compatible("IMAGE,MASK", "LATENT,INT"));

        let c = embedded();
        // "*" output into IMAGE, and an IMAGE output into a "*" input.
        let graph = json!({"1": empty_image(json!(64)),
                           "2": {"class_type": "AnyPass", "inputs": {"anything": ["1", 0], "mode": "a"}},
                           "3": save(json!(["2", 0])),
                           "4": {"class_type": "MaskOnly", "inputs": {"mask": ["2", 1]}}});
        assert_eq!(check(graph, &c), Ok(()));
        let graph = json!({"1": empty_image(json!(64)),
                           "4": {"class_type": "MaskOnly", "inputs": {"mask": ["1", 0]}},
                           "5": save(json!(["1", 0]))});
        assert_eq!(
            fields(check(graph, &c)),
            [r#"workflow_json["4"].inputs.mask"#]
        );
    }

    #[test]
    fn no_output_node_by_catalogue_flags() {
        for c in catalogues() {
            let graph = json!({"1": empty_image(json!(64)),
                               "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}});
            assert_eq!(fields(check(graph, &c)), ["workflow_json"]);
        }
        // Judged by output_node, not by the class name.
        let mut info = embedded().classes;
        info.get_mut("SaveImage").unwrap().output_node = false;
        let c = ObjectInfoCatalogue::from(info);
        let graph = json!({"1": empty_image(json!(64)), "2": save(json!(["1", 0]))});
        assert_eq!(fields(check(graph, &c)), ["workflow_json"]);
    }

    #[test]
    fn unknown_extra_and_hidden_inputs_are_ignored() {
        let c = embedded();
        let mut graph = json!({"1": empty_image(json!(64)), "2": save(json!(["1", 0]))});
        graph["2"]["inputs"]["not_declared"] = json!([1, 2, 3]);
        graph["2"]["inputs"]["prompt"] = json!({"anything": true});
        assert_eq!(check(graph, &c), Ok(()));
    }

    #[test]
    fn several_problems_at_once_with_their_paths() {
        let c = embedded();
        let graph = json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": "abc", "height": 0, "batch_size": 1}},
            "2": {"class_type": "Mystery", "inputs": {}},
            "3": {"class_type": "ImageScale", "inputs": {"image": ["1", 3], "upscale_method": "foo",
                  "width": 8, "height": 8, "crop": "disabled"}},
            "10": {"class_type": "TestDelay", "inputs": {"seconds": 0.1, "steps": 1,
                   "nonce": 18446744073709551616u128, "value": ["3", 0]}}
        });
        let got = fields(check(graph, &c));
        assert_eq!(
            got,
            [
                r#"workflow_json["1"].inputs.color"#,
                r#"workflow_json["1"].inputs.width"#,
                r#"workflow_json["1"].inputs.height"#,
                r#"workflow_json["2"].class_type"#,
                r#"workflow_json["3"].inputs.image"#,
                r#"workflow_json["3"].inputs.upscale_method"#,
                r#"workflow_json["10"].inputs.nonce"#,
                r#"workflow_json["10"].inputs.value"#,
            ]
        );
    }

    #[test]
    fn reports_are_capped() {
        let c = embedded();
        let mut graph = JsonObject::new();
        for i in 0..150 {
            graph.insert(i.to_string(), json!({"class_type": "Nope", "inputs": {}}));
        }
        let e = check_prompt_against_object_info(&graph, &c, WORKFLOW_FIELD).unwrap_err();
        assert_eq!(e.len(), MAX_REPORTED_PROBLEMS + 1);
        assert!(
            e.violations
                .last()
                .unwrap()
                .description
                .contains("more problems")
        );
    }

    #[test]
    fn malformed_prompt_nodes_are_reported() {
        let c = embedded();
        let prompt = json!({"1": 7, "2": {"inputs": {}}, "3": save(json!(["2", 0]))});
        let got = fields(check_prompt_against_object_info(
            prompt.as_object().unwrap(),
            &c,
            "prompt",
        ));
        assert_eq!(got, [r#"prompt["1"]"#, r#"prompt["2"].class_type"#]);
    }

    /// Every 400 case of the captured validation transcript that maps onto a
    /// catalogue check is caught, at the node and input ComfyUI names.
    #[test]
    fn agrees_with_comfyui_validation_transcript() {
        let Some(c) = captured() else { return };
        let text = std::fs::read(protocol_dir().join("validation_error.json")).unwrap();
        let transcript: Value = serde_json::from_slice(&text).unwrap();
        let events = transcript["events"].as_array().unwrap();
        let mut compared = 0;
        let mut request: Option<&Value> = None;
        for event in events {
            if event["path"] != "/prompt" {
                continue;
            }
            match event["kind"].as_str() {
                Some("http_request") => request = event["body"].get("prompt"),
                Some("http_response") => {
                    let Some(prompt) = request.take().and_then(Value::as_object) else {
                        continue;
                    };
                    let body = &event["body"];
                    let result = check_prompt_against_object_info(prompt, &c, WORKFLOW_FIELD);
                    let kind = body["error"]["type"].as_str().unwrap_or_default();
                    match kind {
                        "missing_node_type" => {
                            let id = body["error"]["extra_info"]["node_id"].as_str().unwrap();
                            let field = key_path(WORKFLOW_FIELD, id);
                            assert!(
                                result
                                    .unwrap_err()
                                    .has_field(&join_path(&field, "class_type"))
                            );
                        }
                        "prompt_no_outputs" => {
                            assert!(result.unwrap_err().has_field(WORKFLOW_FIELD));
                        }
                        _ if body["node_errors"]
                            .as_object()
                            .is_some_and(|n| !n.is_empty()) =>
                        {
                            // 400 prompt_outputs_failed_validation, or a 200 for a partly
                            // valid prompt (ComfyUI runs the valid outputs; we refuse it).
                            let e = result.unwrap_err();
                            for (id, node) in body["node_errors"].as_object().unwrap() {
                                let node_path = key_path(WORKFLOW_FIELD, id);
                                for error in node["errors"].as_array().unwrap() {
                                    let input = error["extra_info"]["input_name"].as_str();
                                    let hit = e.violations.iter().any(|v| match input {
                                        Some(name) => {
                                            v.field
                                                == key_path(&join_path(&node_path, "inputs"), name)
                                        }
                                        None => v.field.starts_with(&node_path),
                                    });
                                    assert!(hit, "{}: {e}", error["type"]);
                                }
                            }
                        }
                        // Valid, or a case about the request rather than the graph.
                        _ if event["status"] == 200 => assert_eq!(result, Ok(()), "{body}"),
                        _ => {}
                    }
                    compared += 1;
                }
                _ => {}
            }
        }
        assert!(compared >= 10, "{compared}");
    }

    fn prompt_of(graph: Value) -> JsonObject {
        graph.as_object().unwrap().clone()
    }

    #[test]
    fn overrides_set_values_exactly() {
        let mut prompt = prompt_of(nonce_graph("1"));
        prompt.insert("0".into(), empty_image(json!(64)));
        prompt.insert("6".into(), save(json!(["0", 0])));
        let overrides: JsonObject = serde_json::from_str(
            r#"{"1": {"nonce": 18446744073709551615, "seconds": 0.10000000000000000001},
                "6": {"filename_prefix": "cats"}}"#,
        )
        .unwrap();
        apply_overrides(&mut prompt, &overrides).unwrap();
        let text = Value::Object(prompt.clone()).to_string();
        assert!(text.contains(r#""nonce":18446744073709551615"#), "{text}");
        assert!(
            text.contains(r#""seconds":0.10000000000000000001"#),
            "{text}"
        );
        assert_eq!(prompt["6"]["inputs"]["filename_prefix"], "cats");
        // Key order is kept: nonce stays where it was.
        let keys: Vec<&String> = prompt["1"]["inputs"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["seconds", "steps", "nonce"]);
        // The result still passes the checks.
        assert_eq!(
            check_prompt_against_object_info(&prompt, &embedded(), WORKFLOW_FIELD),
            Ok(())
        );
    }

    #[test]
    fn overrides_are_all_or_nothing_and_name_the_bad_ones() {
        let original = prompt_of(json!({"1": empty_image(json!(64)), "2": save(json!(["1", 0]))}));
        let mut prompt = original.clone();
        let overrides = prompt_of(json!({
            "1": {"width": 128},
            "9": {"seed": 1},
            "2": {"images": "literal", "filename_prefix": ["1", 0]},
            "x y": 5
        }));
        let e = apply_overrides(&mut prompt, &overrides).unwrap_err();
        let got: Vec<&str> = e.violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            got,
            [
                r#"overrides["9"]"#,
                r#"overrides["2"].images"#,
                r#"overrides["2"].filename_prefix"#,
                r#"overrides["x y"]"#,
            ]
        );
        assert!(
            e.to_string()
                .contains("cannot replace a link with a literal"),
            "{e}"
        );
        assert_eq!(prompt, original, "nothing applied on error");
        // A new input may be added; an empty override changes nothing.
        apply_overrides(
            &mut prompt,
            &prompt_of(json!({"1": {"extra": "x"}, "2": {}})),
        )
        .unwrap();
        assert_eq!(prompt["1"]["inputs"]["extra"], "x");
    }

    #[test]
    fn prefixes_are_rewritten_per_execution() {
        let graph = json!({
            "2": save(json!(["1", 0])),
            "3": {"class_type": "TestWriteBlob", "inputs": {"filename_prefix": "blobs/out"}},
            "4": {"class_type": "X", "inputs": {"filename_prefix": ["2", 0]}},
            "5": {"class_type": "Y", "inputs": {"other": "x"}}
        });
        let mut a = prompt_of(graph.clone());
        let mut b = prompt_of(graph);
        rewrite_filename_prefixes(&mut a, "exec-a");
        rewrite_filename_prefixes(&mut b, "exec-b");
        let (ra, rb) = (filename_prefixes(&a), filename_prefixes(&b));
        assert_eq!(
            ra,
            [
                ("2".to_owned(), "comfy-reality/exec-a/x".to_owned()),
                ("3".to_owned(), "comfy-reality/exec-a/blobs/out".to_owned()),
            ]
        );
        assert_eq!(
            a["3"]["inputs"]["filename_prefix"],
            "comfy-reality/exec-a/blobs/out"
        );
        assert_eq!(a["4"]["inputs"]["filename_prefix"], json!(["2", 0]));
        let set_a: BTreeSet<&String> = ra.iter().map(|(_, p)| p).collect();
        assert!(rb.iter().all(|(_, p)| !set_a.contains(p)));
        // Rewriting again is a no-op.
        rewrite_filename_prefixes(&mut a, "exec-a");
        assert_eq!(filename_prefixes(&a), ra);
    }

    #[test]
    fn prefix_traversal_is_neutralised() {
        let cases = [
            ("../../etc/x", "comfy-reality/e/etc/x"),
            ("/abs/path", "comfy-reality/e/abs/path"),
            ("a\\..\\..\\b", "comfy-reality/e/a/b"),
            ("./a//./b/..", "comfy-reality/e/a/b"),
            ("..", "comfy-reality/e/ComfyUI"),
            ("", "comfy-reality/e/ComfyUI"),
            ("C:\\x\ny", "comfy-reality/e/C_/x_y"),
            (
                "%date:yyyy-MM-dd%/img",
                "comfy-reality/e/%date_yyyy-MM-dd%/img",
            ),
        ];
        for (raw, want) in cases {
            let mut prompt = prompt_of(json!({"1": {"class_type": "SaveImage",
                                                    "inputs": {"filename_prefix": raw}}}));
            rewrite_filename_prefixes(&mut prompt, "e");
            let got = filename_prefixes(&prompt);
            assert_eq!(got[0].1, want, "{raw:?}");
        }
        // A hostile execution id stays one folder.
        let mut prompt =
            prompt_of(json!({"1": {"class_type": "S", "inputs": {"filename_prefix": "p"}}}));
        rewrite_filename_prefixes(&mut prompt, "../a/../../b");
        let got = filename_prefixes(&prompt);
        assert_eq!(got[0].1, "comfy-reality/a_b/p");
    }

    proptest! {
        /// A clean path comes back as it is, without the split; any other is rebuilt part by
        /// part, as before the shortcut.
        #[test]
        fn sanitized_paths_match_a_part_by_part_rebuild(raw in "[a-z./\\\\:\\n\u{85}é]{0,12}") {
            let rebuilt = raw
                .split(['/', '\\'])
                .filter(|part| !part.is_empty() && *part != "." && *part != "..")
                .map(|part| part.replace(|c: char| c.is_control() || c == ':', "_"))
                .collect::<Vec<_>>()
                .join("/");
            prop_assert_eq!(sanitize_path(&raw), rebuilt);
        }
    }

    #[test]
    fn decimals_compare_exactly() {
        let d = |s: &str| parse_decimal(s).unwrap();
        assert_eq!(d("1"), d("1.0"));
        assert_eq!(d("1"), d("10e-1"));
        assert_eq!(d("-0"), d("0.000"));
        assert!(d("18446744073709551615") < d("18446744073709551616"));
        assert!(d("-2") < d("-1.5"));
        assert!(d("0.125") > d("0.12"));
        assert!(d("1e-400") > d("0"));
        assert!(d("1e3").is_integer());
        assert!(!d("1.5").is_integer());
        for bad in ["", "-", ".", "1e", "e5", "1.2.3", "0x10", "1e+-1", "abc"] {
            assert_eq!(parse_decimal(bad), None, "{bad:?}");
        }
    }

    proptest! {
        /// The integer shortcut of [`exact_order`] orders as the decimals do, across integers
        /// past `i64` and `u64`, fractions and exponents.
        #[test]
        fn exact_order_agrees_with_the_decimals(
            a in "-?[0-9]{1,40}(\\.[0-9]{1,5})?([eE][+-]?[0-9]{1,3})?",
            b in "-?[0-9]{1,40}(\\.[0-9]{1,5})?([eE][+-]?[0-9]{1,3})?",
        ) {
            let (Ok(Value::Number(x)), Ok(Value::Number(y))) =
                (serde_json::from_str::<Value>(&a), serde_json::from_str::<Value>(&b))
            else {
                return Ok(());
            };
            let decimals = parse_decimal(x.as_str()).unwrap().cmp(&parse_decimal(y.as_str()).unwrap());
            prop_assert_eq!(exact_order(&x, &y), Some(decimals), "{} vs {}", a, b);
        }
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let ids = prop::sample::select(vec!["1", "2", "3", "10", "x"]);
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "-?[0-9]{1,25}(\\.[0-9]{0,5})?([eE][+-]?[0-9]{1,22})?"
                .prop_map(|t| serde_json::from_str::<Value>(&t).unwrap_or(Value::Null)),
            "[a-z.,*/\\\\ -]{0,12}".prop_map(Value::String),
            (ids, any::<i64>()).prop_map(|(id, slot)| json!([id, slot % 4])),
            prop::collection::vec(any::<u8>().prop_map(|b| json!(b)), 0..3).prop_map(Value::Array),
            Just(json!({"k": [1, "2"]})),
        ]
    }

    fn arb_graph() -> impl Strategy<Value = JsonObject> {
        let classes = prop::sample::select(vec![
            "EmptyImage",
            "ImageScale",
            "SaveImage",
            "TestDelay",
            "AnyPass",
            "MaskOnly",
            "LoadImage",
            "Unknown",
        ]);
        let names = prop::sample::select(vec![
            "width",
            "image",
            "images",
            "nonce",
            "seconds",
            "mode",
            "anything",
            "mask",
            "upscale_method",
            "progress_text",
            "value",
            "filename_prefix",
        ]);
        let node = (
            classes,
            prop::collection::btree_map(names, arb_value(), 0..6),
        )
            .prop_map(|(class, inputs)| json!({"class_type": class, "inputs": inputs}));
        let ids = prop::sample::select(vec!["1", "2", "3", "10", "x"]);
        prop::collection::btree_map(ids, prop_oneof![9 => node, 1 => arb_value()], 0..6)
            .prop_map(|nodes| nodes.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    proptest! {
        #[test]
        fn checks_never_panic_on_arbitrary_graphs(graph in arb_graph(), exec in "[a-z./\\\\]{0,8}") {
            let c = embedded();
            let by_prompt = check_prompt_against_object_info(&graph, &c, WORKFLOW_FIELD);
            if let Ok(workflow) = WorkflowDefinition::from_api_json(
                NewWorkflow::new("p"),
                &Value::Object(graph.clone()).to_string(),
            ) {
                // Well-formed graphs judge alike through both entry points.
                prop_assert_eq!(check_against_object_info(&workflow, &c), by_prompt);
            }
            let mut prompt = graph.clone();
            let _ = apply_overrides(&mut prompt, &graph);
            rewrite_filename_prefixes(&mut prompt, &exec);
            for (_, prefix) in filename_prefixes(&prompt) {
                prop_assert!(prefix.starts_with("comfy-reality/"));
                prop_assert!(!prefix.contains('\\'));
                prop_assert!(prefix.split('/').all(|p| !p.is_empty() && p != "." && p != ".."));
            }
        }
    }
}
