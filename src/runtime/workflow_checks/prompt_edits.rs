//! What is changed in a POST /prompt `prompt` before it is queued: per-execution input
//! overrides, and the `filename_prefix` rewrite that keeps every execution's outputs in a
//! folder of its own.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{DEFAULT_FILENAME_PREFIX, OUTPUT_ROOT, OVERRIDES_FIELD, quoted};
use crate::model::{ComfyNode, JsonObject, ValidationError, key_path};

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
/// node did not have are added; run [`check_prompt_against_object_info`](super::check_prompt_against_object_info)
/// afterwards to judge the result.
pub fn apply_overrides(
    prompt: &mut JsonObject,
    overrides: &JsonObject,
) -> Result<(), ValidationError> {
    check_overrides(overrides, |id| {
        prompt
            .get(id)
            .map(|node| node.get("inputs").and_then(Value::as_object))
    })?;
    for (id, values) in overrides {
        if let Some(inputs) = prompt
            .get_mut(id)
            .and_then(|node| node.get_mut("inputs"))
            .and_then(Value::as_object_mut)
        {
            set_inputs(inputs, values);
        }
    }
    Ok(())
}

/// [`apply_overrides`] on a workflow's nodes (a submit's prompt before it is
/// written as JSON): the same rules, the same violations.
pub fn apply_node_overrides(
    nodes: &mut BTreeMap<String, ComfyNode>,
    overrides: &JsonObject,
) -> Result<(), ValidationError> {
    check_overrides(overrides, |id| nodes.get(id).map(|node| Some(&node.inputs)))?;
    for (id, values) in overrides {
        if let Some(node) = nodes.get_mut(id) {
            set_inputs(&mut node.inputs, values);
        }
    }
    Ok(())
}

/// Every violation of [`apply_overrides`]' rules; `inputs_of` gives a node's
/// inputs by id (`None`: no such node; `Some(None)`: no inputs object).
fn check_overrides<'a>(
    overrides: &JsonObject,
    inputs_of: impl Fn(&str) -> Option<Option<&'a JsonObject>>,
) -> Result<(), ValidationError> {
    let mut errors = ValidationError::new();
    for (id, values) in overrides {
        let path = key_path(OVERRIDES_FIELD, id);
        let Some(inputs) = inputs_of(id) else {
            errors.push(path, format!("no node {} in the workflow", quoted(id)));
            continue;
        };
        let Some(values) = values.as_object() else {
            errors.push(path, "must be an object of input name to value");
            continue;
        };
        let Some(inputs) = inputs else {
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
    errors.into_result()
}

/// Sets one node's overrides (`values`, checked by [`check_overrides`]) on
/// its `inputs`.
fn set_inputs(inputs: &mut JsonObject, values: &Value) {
    if let Some(values) = values.as_object() {
        for (name, value) in values {
            inputs.insert(name.clone(), value.clone());
        }
    }
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
    rewrite_prefixes(
        prompt
            .values_mut()
            .filter_map(|node| node.get_mut("inputs").and_then(Value::as_object_mut)),
        execution_id,
    );
}

/// [`rewrite_filename_prefixes`] on a workflow's nodes (a submit's prompt
/// before it is written as JSON).
pub fn rewrite_node_filename_prefixes(nodes: &mut BTreeMap<String, ComfyNode>, execution_id: &str) {
    rewrite_prefixes(
        nodes.values_mut().map(|node| &mut node.inputs),
        execution_id,
    );
}

/// Rewrites the string `filename_prefix` of each of `inputs` (see
/// [`rewrite_filename_prefixes`]).
fn rewrite_prefixes<'a>(inputs: impl Iterator<Item = &'a mut JsonObject>, execution_id: &str) {
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
    for inputs in inputs {
        let Some(Value::String(prefix)) = inputs.get_mut("filename_prefix") else {
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
pub(super) fn sanitize_path(raw: &str) -> String {
    let unsafe_char = |c: char| c == '\\' || c == ':' || c.is_control();
    // Most prefixes are already clean: a scan (by byte when ASCII), one copy. The
    // byte scan is `unsafe_char` for ASCII (its control characters are the bytes
    // below 0x20 and DEL) without an early exit, so it runs many bytes at once: a
    // long clean prefix (the usual case) is read to its end either way.
    let has_unsafe = if raw.is_ascii() {
        raw.bytes().fold(false, |found, b| {
            found | (b < 0x20) | (b == 0x7f) | (b == b'\\') | (b == b':')
        })
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
