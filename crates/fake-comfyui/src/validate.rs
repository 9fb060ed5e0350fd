//! Prompt validation with ComfyUI's exact 400 bodies: `execution.validate_prompt`
//! and `validate_inputs` replayed step by step (missing node types, no
//! outputs, required inputs, ranges, combos, links, type mismatches,
//! dependency cycles, LoadImage's own check), including their quirks: only
//! the output's own errors make the top-level `details`, every invalid node
//! collects the ids of every failing output in `dependent_outputs`, and valid
//! inputs are coerced in place (a FLOAT `20` is stored as `20.0`).
//!
//! Pure logic over the prompt JSON; the only I/O is LoadImage's file check.

use serde_json::{Map, Value};

use super::files::Dirs;
use super::nodes::{self, InputType, NodeSpec, catalog};
use super::pyjson::{self, object};

/// A prompt that passed validation.
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    /// The output nodes that will run (`outputs_to_execute`).
    pub(crate) outputs: Vec<String>,
    /// Errors of the outputs that will not run (`node_errors`).
    pub(crate) node_errors: Value,
}

/// The body of a 400 answer to `POST /prompt`.
#[derive(Debug, Clone)]
pub(crate) struct ErrorBody {
    /// The top-level error object.
    pub(crate) error: Value,
    /// Per-node errors.
    pub(crate) node_errors: Value,
}

/// Why a prompt was not accepted.
#[derive(Debug, Clone)]
pub(crate) enum Rejected {
    /// A 400 with `{"error": …, "node_errors": …}`.
    Invalid(Box<ErrorBody>),
    /// The Python server would raise: a 500.
    Internal,
}

/// A Python exception raised while validating.
#[derive(Debug, Clone)]
struct PyError {
    /// `full_type_name` of the exception class.
    exception_type: &'static str,
    /// `str(exception)`.
    message: String,
    /// Line in `validate_inputs` that raised.
    line: u32,
}

/// `(valid, reasons)` of one node.
type Verdict = (bool, Vec<Value>);

/// A dict with Python's insertion order (a re-inserted key keeps its place).
#[derive(Debug, Default)]
struct Ordered<T> {
    /// Entries in insertion order.
    entries: Vec<(String, T)>,
}

impl<T> Ordered<T> {
    fn get(&self, key: &str) -> Option<&T> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut T> {
        self.entries
            .iter_mut()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    fn insert(&mut self, key: &str, value: T) {
        match self.get_mut(key) {
            Some(slot) => *slot = value,
            None => self.entries.push((key.to_owned(), value)),
        }
    }
}

/// One validation error object.
fn error(kind: &str, message: &str, details: String, extra_info: Value) -> Value {
    object([
        ("type", Value::String(kind.to_owned())),
        ("message", Value::String(message.to_owned())),
        ("details", Value::String(details)),
        ("extra_info", extra_info),
    ])
}

/// Traceback lines of an exception caught `depth` frames above its raise.
fn traceback(caught_in: &str, caught_line: u32, raised_line: u32) -> Value {
    Value::Array(vec![
        Value::String(format!(
            "  File \"<ComfyUI>/execution.py\", line {caught_line}, in {caught_in}\n"
        )),
        Value::String(format!(
            "  File \"<ComfyUI>/execution.py\", line {raised_line}, in validate_inputs\n"
        )),
    ])
}

/// Validates `prompt` (coercing literal inputs in place) the way ComfyUI's
/// `validate_prompt` does. `targets` is `partial_execution_targets`.
pub(crate) fn validate_prompt(
    prompt: &mut Map<String, Value>,
    targets: Option<&Value>,
    dirs: &Dirs,
) -> Result<Accepted, Rejected> {
    let mut outputs = Vec::new();
    for (id, node) in prompt.iter() {
        let Value::Object(node) = node else {
            return Err(Rejected::Internal);
        };
        let meta = match node.get("_meta") {
            None => None,
            Some(Value::Object(meta)) => Some(meta),
            Some(_) => return Err(Rejected::Internal),
        };
        let Some(class_type) = node.get("class_type") else {
            let title = meta
                .and_then(|m| m.get("title"))
                .cloned()
                .unwrap_or(Value::Null);
            let shown = if pyjson::truthy(&title) {
                pyjson::str_of(&title)
            } else {
                format!("ID #{id}")
            };
            return Err(invalid(error(
                "missing_node_type",
                &format!(
                    "Node '{shown}' has no class_type. The workflow may be corrupted or a custom node is missing."
                ),
                format!("Node ID '#{id}'"),
                object([
                    ("node_id", Value::String(id.clone())),
                    ("class_type", Value::Null),
                    ("node_title", title),
                ]),
            )));
        };
        if matches!(class_type, Value::Array(_) | Value::Object(_)) {
            return Err(Rejected::Internal);
        }
        let spec = class_type.as_str().and_then(|c| catalog().get(c));
        let Some(spec) = spec else {
            let title = meta
                .and_then(|m| m.get("title"))
                .cloned()
                .unwrap_or_else(|| class_type.clone());
            return Err(invalid(error(
                "missing_node_type",
                &format!(
                    "Node '{}' not found. The custom node may not be installed.",
                    pyjson::str_of(&title)
                ),
                format!("Node ID '#{id}'"),
                object([
                    ("node_id", Value::String(id.clone())),
                    ("class_type", class_type.clone()),
                    ("node_title", title),
                ]),
            )));
        };
        if spec.output_node && targeted(id, targets)? {
            outputs.push(id.clone());
        }
    }
    if outputs.is_empty() {
        return Err(invalid(error(
            "prompt_no_outputs",
            "Prompt has no outputs",
            String::new(),
            Value::Object(Map::new()),
        )));
    }

    let mut good = Vec::new();
    let mut failed: Vec<Vec<Value>> = Vec::new();
    let mut node_errors: Ordered<(Vec<Value>, Vec<String>)> = Ordered::default();
    let mut validated: Ordered<Verdict> = Ordered::default();
    for output in &outputs {
        let mut visiting = Vec::new();
        let (valid, reasons) =
            match validate_inputs(prompt, output, &mut validated, &mut visiting, dirs) {
                Ok(verdict) => verdict,
                Err(ex) => {
                    let reasons = vec![error(
                        "exception_during_validation",
                        "Exception when validating node",
                        ex.message.clone(),
                        object([
                            (
                                "exception_type",
                                Value::String(ex.exception_type.to_owned()),
                            ),
                            ("traceback", traceback("validate_prompt", 1184, ex.line)),
                        ]),
                    )];
                    validated.insert(output, (false, reasons.clone()));
                    (false, reasons)
                }
            };
        if valid {
            good.push(output.clone());
            continue;
        }
        failed.push(reasons);
        for (node_id, (valid, reasons)) in &validated.entries {
            if *valid || reasons.is_empty() {
                continue;
            }
            if node_errors.get(node_id).is_none() {
                node_errors.insert(node_id, (reasons.clone(), Vec::new()));
            }
            if let Some((_, dependents)) = node_errors.get_mut(node_id) {
                dependents.push(output.clone());
            }
        }
    }

    let mut rendered = Map::new();
    for (node_id, (errors, dependents)) in node_errors.entries {
        let class_type = prompt
            .get(&node_id)
            .and_then(|n| n.get("class_type"))
            .cloned()
            .unwrap_or(Value::Null);
        rendered.insert(
            node_id,
            object([
                ("errors", Value::Array(errors)),
                (
                    "dependent_outputs",
                    Value::Array(dependents.into_iter().map(Value::String).collect()),
                ),
                ("class_type", class_type),
            ]),
        );
    }
    let node_errors = Value::Object(rendered);

    if good.is_empty() {
        let details: Vec<String> = failed
            .iter()
            .flatten()
            .map(|e| {
                format!(
                    "{}: {}",
                    e.get("message").map(pyjson::str_of).unwrap_or_default(),
                    e.get("details").map(pyjson::str_of).unwrap_or_default()
                )
            })
            .collect();
        return Err(Rejected::Invalid(Box::new(ErrorBody {
            error: error(
                "prompt_outputs_failed_validation",
                "Prompt outputs failed validation",
                details.join("\n"),
                Value::Object(Map::new()),
            ),
            node_errors,
        })));
    }
    Ok(Accepted {
        outputs: good,
        node_errors,
    })
}

/// A 400 without node errors.
fn invalid(error: Value) -> Rejected {
    Rejected::Invalid(Box::new(ErrorBody {
        error,
        node_errors: Value::Object(Map::new()),
    }))
}

/// `x in partial_execution_targets` (any target when absent or null).
fn targeted(id: &str, targets: Option<&Value>) -> Result<bool, Rejected> {
    match targets {
        None | Some(Value::Null) => Ok(true),
        Some(Value::Array(items)) => Ok(items.iter().any(|t| t.as_str() == Some(id))),
        Some(Value::Object(map)) => Ok(map.contains_key(id)),
        Some(Value::String(text)) => Ok(text.contains(id)),
        Some(_) => Err(Rejected::Internal),
    }
}

/// `validate_node_input`: whether an output of `received` may feed `input`.
fn types_match(received: &str, input: &InputType) -> bool {
    let InputType::Named(input) = input else {
        return false;
    };
    if received == input {
        return true;
    }
    let split = |s: &str| -> Vec<String> { s.split(',').map(|t| t.trim().to_owned()).collect() };
    let (received, input) = (split(received), split(input));
    if received.iter().any(|t| t == "*") || input.iter().any(|t| t == "*") {
        return true;
    }
    received.iter().all(|t| input.contains(t))
}

/// Looks `key` up in the prompt the way `prompt[key]` would.
fn lookup_node<'a>(
    prompt: &'a Map<String, Value>,
    key: &Value,
    line: u32,
) -> Result<(&'a str, &'a NodeSpec), PyError> {
    let key_error = |key: &Value| PyError {
        exception_type: "KeyError",
        message: pyjson::repr(key),
        line,
    };
    let id = match key {
        Value::String(id) => id,
        Value::Array(_) | Value::Object(_) => {
            return Err(PyError {
                exception_type: "TypeError",
                message: format!("unhashable type: '{}'", pyjson::type_name(key)),
                line,
            });
        }
        other => return Err(key_error(other)),
    };
    let (id, node) = prompt.get_key_value(id).ok_or_else(|| key_error(key))?;
    let spec = node
        .get("class_type")
        .and_then(Value::as_str)
        .and_then(|c| catalog().get(c))
        .ok_or_else(|| key_error(&Value::String("class_type".to_owned())))?;
    Ok((id.as_str(), spec))
}

/// `RETURN_TYPES[index]` with Python's indexing rules.
fn output_type<'a>(spec: &'a NodeSpec, index: &Value) -> Result<&'a str, PyError> {
    let position = match index {
        Value::Bool(b) => Some(i64::from(*b)),
        Value::Number(n) if !pyjson::is_float(n) => Some(n.as_i64().unwrap_or(i64::MAX)),
        _ => None,
    };
    let Some(position) = position else {
        return Err(PyError {
            exception_type: "TypeError",
            message: format!(
                "tuple indices must be integers or slices, not {}",
                pyjson::type_name(index)
            ),
            line: 935,
        });
    };
    let len = spec.outputs.len() as i64;
    let resolved = if position < 0 {
        position + len
    } else {
        position
    };
    usize::try_from(resolved)
        .ok()
        .and_then(|i| spec.outputs.get(i))
        .map(String::as_str)
        .ok_or(PyError {
            exception_type: "IndexError",
            message: "tuple index out of range".to_owned(),
            line: 935,
        })
}

/// How a node's `inputs` answers `name in inputs` / `inputs[name]`.
enum InputLookup {
    /// Not given.
    Missing,
    /// Given, with this value.
    Present(Value),
}

/// `x in inputs` then `inputs[x]`, with Python's behaviour for non-dicts.
fn input_lookup(inputs: &Value, name: &str) -> Result<InputLookup, PyError> {
    let type_error = |message: String| PyError {
        exception_type: "TypeError",
        message,
        line: 915,
    };
    match inputs {
        Value::Object(map) => Ok(map
            .get(name)
            .cloned()
            .map_or(InputLookup::Missing, InputLookup::Present)),
        Value::Array(items) => {
            if items.iter().any(|i| i.as_str() == Some(name)) {
                Err(type_error(
                    "list indices must be integers or slices, not str".to_owned(),
                ))
            } else {
                Ok(InputLookup::Missing)
            }
        }
        Value::String(text) => {
            if text.contains(name) {
                Err(type_error(
                    "string indices must be integers, not 'str'".to_owned(),
                ))
            } else {
                Ok(InputLookup::Missing)
            }
        }
        other => Err(type_error(format!(
            "argument of type '{}' is not iterable",
            pyjson::type_name(other)
        ))),
    }
}

/// Writes a coerced value back into the prompt (`inputs[x] = val`).
fn store_input(prompt: &mut Map<String, Value>, node: &str, name: &str, value: Value) {
    if let Some(Value::Object(inputs)) = prompt.get_mut(node).and_then(|n| n.get_mut("inputs")) {
        inputs.insert(name.to_owned(), value);
    }
}

/// Python's default recursion limit, which bounds how deep a chain of
/// links validation follows (each level is one `validate_inputs` frame).
const MAX_DEPTH: usize = 990;

/// What checking one input decided.
enum Step {
    /// Checked; errors (if any) recorded.
    Done,
    /// A valid link: validate `source` next.
    Follow {
        /// The linked node.
        source: String,
        /// The link value, for error reports.
        link: Value,
    },
}

/// `validate_inputs` of one node (recursing into the nodes it links to).
/// The recursive frame is kept small; the checks live in helpers.
fn validate_inputs(
    prompt: &mut Map<String, Value>,
    unique_id: &str,
    validated: &mut Ordered<Verdict>,
    visiting: &mut Vec<String>,
    dirs: &Dirs,
) -> Result<Verdict, PyError> {
    if let Some(verdict) = validated.get(unique_id) {
        return Ok(verdict.clone());
    }
    if let Some(start) = visiting.iter().position(|v| v == unique_id) {
        return Ok(record_cycle(prompt, unique_id, start, validated, visiting));
    }
    if visiting.len() >= MAX_DEPTH {
        return Err(PyError {
            exception_type: "RecursionError",
            message: "maximum recursion depth exceeded".to_owned(),
            line: 962,
        });
    }
    let (inputs, spec) = node_parts(prompt, unique_id)?;
    let mut errors: Vec<Value> = Vec::new();
    let mut valid = true;
    for input in &spec.inputs {
        let Step::Follow { source, link } =
            check_input(prompt, unique_id, &inputs, input, spec, &mut errors)?
        else {
            continue;
        };
        visiting.push(unique_id.to_owned());
        let inner = validate_inputs(prompt, &source, validated, visiting, dirs);
        visiting.pop();
        match inner {
            Ok((true, _)) => {}
            Ok((false, _)) => valid = false,
            Err(ex) => {
                valid = false;
                record_inner_exception(validated, &source, input, link, ex);
            }
        }
    }
    Ok(conclude(
        prompt, unique_id, spec, errors, valid, validated, dirs,
    ))
}

/// The node's `inputs` and spec (`prompt[id]['inputs']`, its class).
#[inline(never)]
fn node_parts(
    prompt: &Map<String, Value>,
    unique_id: &str,
) -> Result<(Value, &'static NodeSpec), PyError> {
    let node = prompt.get(unique_id);
    let inputs = node.and_then(|n| n.get("inputs")).cloned().ok_or(PyError {
        exception_type: "KeyError",
        message: "'inputs'".to_owned(),
        line: 902,
    })?;
    let spec = node
        .and_then(|n| n.get("class_type"))
        .and_then(Value::as_str)
        .and_then(|c| catalog().get(c))
        .ok_or(PyError {
            exception_type: "KeyError",
            message: "'class_type'".to_owned(),
            line: 903,
        })?;
    Ok((inputs, spec))
}

/// Marks every node of the cycle that `unique_id` closes.
#[inline(never)]
fn record_cycle(
    prompt: &Map<String, Value>,
    unique_id: &str,
    start: usize,
    validated: &mut Ordered<Verdict>,
    visiting: &[String],
) -> Verdict {
    let class_of = |id: &str| -> String {
        prompt
            .get(id)
            .and_then(|n| n.get("class_type"))
            .map(pyjson::str_of)
            .unwrap_or_default()
    };
    let mut path: Vec<String> = visiting[start..].to_vec();
    path.push(unique_id.to_owned());
    let mut nodes: Vec<String> = Vec::new();
    for id in &path {
        if !nodes.contains(id) {
            nodes.push(id.clone());
        }
    }
    let shown: Vec<String> = path
        .iter()
        .map(|id| format!("{id} ({})", class_of(id)))
        .collect();
    for id in &nodes {
        validated.insert(
            id,
            (
                false,
                vec![error(
                    "dependency_cycle",
                    "Dependency cycle detected",
                    shown.join(" -> "),
                    object([
                        ("node_id", Value::String(id.clone())),
                        (
                            "cycle_nodes",
                            Value::Array(nodes.iter().cloned().map(Value::String).collect()),
                        ),
                    ]),
                )],
            ),
        );
    }
    validated
        .get(unique_id)
        .cloned()
        .unwrap_or((false, Vec::new()))
}

/// Records the exception a linked node raised (`exception_during_inner_validation`).
#[inline(never)]
fn record_inner_exception(
    validated: &mut Ordered<Verdict>,
    source: &str,
    input: &nodes::InputSpec,
    link: Value,
    ex: PyError,
) {
    validated.insert(
        source,
        (
            false,
            vec![error(
                "exception_during_inner_validation",
                "Exception when validating inner node",
                ex.message.clone(),
                object([
                    ("input_name", Value::String(input.name.clone())),
                    ("input_config", input.config()),
                    ("exception_message", Value::String(ex.message)),
                    (
                        "exception_type",
                        Value::String(ex.exception_type.to_owned()),
                    ),
                    ("traceback", traceback("validate_inputs", 962, ex.line)),
                    ("linked_node", link),
                ]),
            )],
        ),
    );
}

/// Checks one declared input: missing, bad or mismatched links, coercion,
/// ranges and combos. Returns the link to follow when it is a valid one.
#[inline(never)]
fn check_input(
    prompt: &mut Map<String, Value>,
    unique_id: &str,
    inputs: &Value,
    input: &nodes::InputSpec,
    spec: &NodeSpec,
    errors: &mut Vec<Value>,
) -> Result<Step, PyError> {
    let name = input.name.as_str();
    let value = match input_lookup(inputs, name)? {
        InputLookup::Missing => {
            if input.required {
                errors.push(error(
                    "required_input_missing",
                    "Required input is missing",
                    name.to_owned(),
                    object([("input_name", Value::String(name.to_owned()))]),
                ));
            }
            return Ok(Step::Done);
        }
        InputLookup::Present(value) => value,
    };
    if let Value::Array(link) = &value {
        if link.len() != 2 {
            errors.push(error(
                "bad_linked_input",
                "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                name.to_owned(),
                object([
                    ("input_name", Value::String(name.to_owned())),
                    ("input_config", input.config()),
                    ("received_value", value.clone()),
                ]),
            ));
            return Ok(Step::Done);
        }
        let (source_id, source) = lookup_node(prompt, &link[0], 933)?;
        let source_id = source_id.to_owned();
        let received = output_type(source, &link[1])?;
        if !types_match(received, &input.ty) {
            errors.push(error(
                "return_type_mismatch",
                "Return type mismatch between linked nodes",
                format!(
                    "{name}, received_type({received}) mismatch input_type({})",
                    input.ty.display()
                ),
                object([
                    ("input_name", Value::String(name.to_owned())),
                    ("input_config", input.config()),
                    ("received_type", Value::String(received.to_owned())),
                    ("linked_node", value.clone()),
                ]),
            ));
            return Ok(Step::Done);
        }
        return Ok(Step::Follow {
            source: source_id,
            link: value,
        });
    }

    let mut value = value;
    if let Value::Object(wrapper) = &value
        && let Some(inner) = wrapper.get("__value__")
    {
        value = inner.clone();
        store_input(prompt, unique_id, name, value.clone());
    }
    let coerced = match &input.ty {
        InputType::Named(t) if t == "INT" => Some(pyjson::py_int(&value)),
        InputType::Named(t) if t == "FLOAT" => {
            Some(pyjson::py_float(&value).map(pyjson::float_number))
        }
        InputType::Named(t) if t == "STRING" => Some(Ok(Value::String(pyjson::str_of(&value)))),
        InputType::Named(t) if t == "BOOLEAN" => Some(Ok(Value::Bool(pyjson::truthy(&value)))),
        _ => None,
    };
    match coerced {
        Some(Ok(new)) => {
            value = new;
            store_input(prompt, unique_id, name, value.clone());
        }
        Some(Err(message)) => {
            errors.push(error(
                "invalid_input_type",
                &format!(
                    "Failed to convert an input value to a {} value",
                    input.ty.display()
                ),
                format!("{name}, {}, {message}", pyjson::str_of(&value)),
                object([
                    ("input_name", Value::String(name.to_owned())),
                    ("input_config", input.config()),
                    ("received_value", value.clone()),
                    ("exception_message", Value::String(message)),
                ]),
            ));
            return Ok(Step::Done);
        }
        None => {}
    }
    if spec.custom_validated.iter().any(|c| c == name) {
        return Ok(Step::Done);
    }
    if let Some(range_error) = range_error(name, input, &value) {
        errors.push(range_error);
        return Ok(Step::Done);
    }
    if let InputType::Combo(options) = &input.ty
        && !options.iter().any(|o| pyjson::py_eq(o, &value))
    {
        let (list_info, config) = if options.len() > 20 {
            (format!("(list of length {})", options.len()), Value::Null)
        } else {
            (pyjson::repr(&Value::Array(options.clone())), input.config())
        };
        errors.push(error(
            "value_not_in_list",
            "Value not in list",
            format!("{name}: {} not in {list_info}", pyjson::repr(&value)),
            object([
                ("input_name", Value::String(name.to_owned())),
                ("input_config", config),
                ("received_value", value),
            ]),
        ));
    }
    Ok(Step::Done)
}

/// Runs the node's own `VALIDATE_INPUTS` and records its verdict, joined
/// with any cycle error recorded while its inputs were validated.
#[inline(never)]
fn conclude(
    prompt: &Map<String, Value>,
    unique_id: &str,
    spec: &NodeSpec,
    mut errors: Vec<Value>,
    valid: bool,
    validated: &mut Ordered<Verdict>,
    dirs: &Dirs,
) -> Verdict {
    for name in &spec.custom_validated {
        let Some(Value::Object(current)) = prompt.get(unique_id).and_then(|n| n.get("inputs"))
        else {
            continue;
        };
        let Some(value) = current.get(name.as_str()) else {
            continue;
        };
        let checked = if value.is_array() {
            Value::Null
        } else {
            value.clone()
        };
        if let Err(reason) = nodes::validate_load_image(&checked, dirs) {
            errors.push(error(
                "custom_validation_failed",
                "Custom validation failed for node",
                format!("{name} - {reason}"),
                object([("input_name", Value::String(name.clone()))]),
            ));
        }
    }
    let (previous_valid, mut reasons) = validated
        .get(unique_id)
        .cloned()
        .unwrap_or((true, Vec::new()));
    let ok = previous_valid && valid && errors.is_empty();
    for e in errors {
        if !reasons.contains(&e) {
            reasons.push(e);
        }
    }
    validated.insert(unique_id, (ok, reasons.clone()));
    (ok, reasons)
}

/// The `value_smaller_than_min` / `value_bigger_than_max` error, if any.
fn range_error(name: &str, input: &nodes::InputSpec, value: &Value) -> Option<Value> {
    let numeric = pyjson::as_numeric(value)?;
    for (key, kind, word, wrong) in [
        (
            "min",
            "value_smaller_than_min",
            "smaller than min",
            std::cmp::Ordering::Less,
        ),
        (
            "max",
            "value_bigger_than_max",
            "bigger than max",
            std::cmp::Ordering::Greater,
        ),
    ] {
        let Some(limit) = input.extra.get(key) else {
            continue;
        };
        let Some(limit_numeric) = pyjson::as_numeric(limit) else {
            continue;
        };
        if pyjson::compare_numeric(&numeric, &limit_numeric) == wrong {
            return Some(error(
                kind,
                &format!(
                    "Value {} {word} of {}",
                    pyjson::str_of(value),
                    pyjson::str_of(limit)
                ),
                name.to_owned(),
                object([
                    ("input_name", Value::String(name.to_owned())),
                    ("input_config", input.config()),
                    ("received_value", value.clone()),
                ]),
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dirs() -> Dirs {
        let root = std::env::temp_dir();
        Dirs {
            output: root.join("o"),
            input: root.join("i"),
            temp: root.join("t"),
        }
    }

    fn run(prompt: Value) -> Result<Accepted, Rejected> {
        let Value::Object(mut prompt) = prompt else {
            panic!("prompt must be an object")
        };
        validate_prompt(&mut prompt, None, &dirs())
    }

    fn rejected(prompt: Value) -> (Value, Value) {
        match run(prompt) {
            Err(Rejected::Invalid(body)) => (body.error, body.node_errors),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn out_of_range_reports_both_sides() {
        let (error, nodes) = rejected(json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 99999, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}
        }));
        assert_eq!(error["type"], "prompt_outputs_failed_validation");
        assert_eq!(error["details"], "");
        let errors = nodes["1"]["errors"].as_array().unwrap();
        let messages: Vec<&str> = errors
            .iter()
            .map(|e| e["message"].as_str().unwrap())
            .collect();
        assert!(messages.contains(&"Value 0 smaller than min of 1"));
        assert!(messages.contains(&"Value 99999 bigger than max of 16384"));
        assert_eq!(nodes["1"]["dependent_outputs"], json!(["2"]));
    }

    #[test]
    fn link_errors_match_the_capture() {
        let (error, nodes) = rejected(json!({
            "2": {"class_type": "SaveImage", "inputs": {"images": ["99", 0], "filename_prefix": "x"}}
        }));
        assert_eq!(error["details"], "Exception when validating node: '99'");
        assert_eq!(
            nodes["2"]["errors"][0]["extra_info"]["exception_type"],
            "KeyError"
        );
        let (error, _) = rejected(json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 5], "filename_prefix": "x"}}
        }));
        assert_eq!(
            error["details"],
            "Exception when validating node: tuple index out of range"
        );
        let (error, _) = rejected(json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 0}},
            "2": {"class_type": "TestDelay", "inputs": {"seconds": 0.1, "steps": 1, "nonce": 1, "value": ["1", 0]}}
        }));
        assert_eq!(
            error["details"],
            "Return type mismatch between linked nodes: value, received_type(IMAGE) mismatch input_type(INT)"
        );
    }

    #[test]
    fn combo_and_conversion_messages() {
        let (_, nodes) = rejected(json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 0}},
            "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "foo", "width": 8, "height": 8, "crop": "disabled"}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}}
        }));
        assert_eq!(
            nodes["2"]["errors"][0]["details"],
            "upscale_method: 'foo' not in ['nearest-exact', 'bilinear', 'area', 'bicubic', 'lanczos']"
        );
        let (_, nodes) = rejected(json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": "abc", "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}
        }));
        assert_eq!(
            nodes["1"]["errors"][0]["details"],
            "width, abc, invalid literal for int() with base 10: 'abc'"
        );
    }

    #[test]
    fn partly_valid_prompt_runs_the_valid_output() {
        let accepted = run(json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "p"}},
            "3": {"class_type": "ImageInvert", "inputs": {}},
            "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}}
        }))
        .unwrap();
        assert_eq!(accepted.outputs, ["2"]);
        assert_eq!(accepted.node_errors["3"]["dependent_outputs"], json!(["4"]));
    }

    #[test]
    fn cycles_are_reported() {
        let (_, nodes) = rejected(json!({
            "1": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}
        }));
        assert_eq!(nodes["1"]["errors"][0]["type"], "dependency_cycle");
    }

    #[test]
    fn floats_are_coerced_in_place() {
        let Value::Object(mut prompt) = json!({
            "1": {"class_type": "TestDelay", "inputs": {"seconds": 20, "steps": 40, "nonce": 1}}
        }) else {
            unreachable!()
        };
        validate_prompt(&mut prompt, None, &dirs()).unwrap();
        assert_eq!(prompt["1"]["inputs"]["seconds"].to_string(), "20.0");
    }

    #[test]
    fn deep_chains_fail_like_python_instead_of_overflowing() {
        let chain = |depth: usize| -> Map<String, Value> {
            let mut prompt = Map::new();
            prompt.insert(
                "0".into(),
                json!({"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}),
            );
            for i in 1..depth {
                prompt.insert(
                    i.to_string(),
                    json!({"class_type": "ImageInvert", "inputs": {"image": [(i - 1).to_string(), 0]}}),
                );
            }
            prompt.insert(
                "out".into(),
                json!({"class_type": "SaveImage", "inputs": {"images": [(depth - 1).to_string(), 0], "filename_prefix": "x"}}),
            );
            prompt
        };
        // A tokio worker's stack size: deep prompts must not need more.
        let outcome = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || {
                let shallow = validate_prompt(&mut chain(300), None, &dirs()).is_ok();
                let deep = match validate_prompt(&mut chain(5000), None, &dirs()) {
                    Err(Rejected::Invalid(body)) => {
                        body.node_errors.to_string().contains("RecursionError")
                    }
                    _ => false,
                };
                (shallow, deep)
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(outcome, (true, true));
    }

    #[test]
    fn non_object_nodes_are_internal_errors() {
        assert!(matches!(run(json!({"1": "x"})), Err(Rejected::Internal)));
        assert!(matches!(
            run(json!({"1": {"class_type": ["x"]}})),
            Err(Rejected::Internal)
        ));
    }
}
