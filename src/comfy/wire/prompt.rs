//! The `POST /prompt` route: the body the client sends, the 200 answer (with the node errors of a
//! partly valid prompt), and the 400 validation-error body keeping every node's errors. Also the
//! `{"error": "<text>"}` body ([`SimpleError`]) that the jobs routes and a duplicate prompt id
//! answer with.
//!
//! Pure data and parsing: sending the request, choosing the prompt id and deciding what an error
//! means for a task belong to the client and the runtime.

use std::collections::BTreeMap;
use std::fmt;

use serde::de;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Number, Value};

use super::NodeId;
use super::lenient::{
    lenient_map, lenient_opt_string, lenient_string, lenient_string_list, number_to_f64,
};

/// Body of `POST /prompt`. The client never sends `front` or `number`: the queue order is the
/// runtime's business, and a client-chosen `number` would compete with other users.
#[derive(Debug, Clone, Serialize)]
pub struct PromptRequest<'a> {
    /// The API-format graph: `{node_id: {class_type, inputs, _meta?}}`.
    pub prompt: &'a Value,
    /// The WebSocket clientId that receives this prompt's messages.
    pub client_id: &'a str,
    /// Canonical lowercase hyphenated UUID chosen by the client (ignored by servers before
    /// 0.3.45).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_id: Option<&'a str>,
    /// Passed through to the server (`extra_pnginfo`, `preview_method`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_data: Option<&'a Value>,
    /// Output node ids to run instead of all outputs (servers since 0.3.48).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partial_execution_targets: Option<&'a [NodeId]>,
}

/// `POST /prompt` 200 body. `node_errors` is non-empty when part of the prompt was invalid but at
/// least one output was valid: only the valid outputs run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PromptResponse {
    /// The id the server uses for this prompt. Use it rather than the one sent: servers older
    /// than 0.3.45 make up their own.
    pub prompt_id: String,
    /// The queue number: an integer counter, or the float a client gave.
    pub number: Number,
    /// Nodes that failed validation, keyed by node id (partly valid prompts only).
    #[serde(default, deserialize_with = "lenient_map")]
    pub node_errors: BTreeMap<NodeId, NodeError>,
}

impl PromptResponse {
    /// The queue number as a float.
    pub fn number_f64(&self) -> f64 {
        number_to_f64(&self.number)
    }
}

/// One error in a `POST /prompt` 400 body, at the top or for a node.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PromptError {
    /// Machine-readable kind: `prompt_outputs_failed_validation`, `missing_node_type`,
    /// `value_bigger_than_max`, ...
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Human-readable summary.
    #[serde(default)]
    pub message: String,
    /// More detail (an input name, joined node errors, ...); may be empty.
    #[serde(default, deserialize_with = "lenient_string")]
    pub details: String,
    /// Structured detail (`input_name`, `received_value`, `input_config`, `node_id`, ...).
    #[serde(default)]
    pub extra_info: Value,
}

impl PromptError {
    /// `extra_info.input_name`, when the error is about one input.
    pub fn input_name(&self) -> Option<&str> {
        self.extra_info.get("input_name").and_then(Value::as_str)
    }
}

/// The validation errors of one node.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NodeError {
    /// Every error of the node, in server order.
    #[serde(default)]
    pub errors: Vec<PromptError>,
    /// Output nodes that cannot run because of this node.
    #[serde(default, deserialize_with = "lenient_string_list")]
    pub dependent_outputs: Vec<NodeId>,
    /// The node's class (null when the node had none).
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub class_type: Option<String>,
}

/// `POST /prompt` 400 body: `{"error": {...}, "node_errors": {...}}`. Every node's errors are
/// kept. Also accepts the `{"error": "<text>"}` form some servers and routes use.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidationErrorBody {
    /// The top-level error (`prompt_outputs_failed_validation` when nodes failed).
    pub error: PromptError,
    /// Errors per node id.
    pub node_errors: BTreeMap<NodeId, NodeError>,
}

impl<'de> Deserialize<'de> for ValidationErrorBody {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut map = Map::<String, Value>::deserialize(d)?;
        let error = match map.remove("error") {
            Some(Value::String(message)) => PromptError {
                kind: String::new(),
                message,
                details: String::new(),
                extra_info: Value::Null,
            },
            Some(value @ Value::Object(_)) => {
                serde_json::from_value(value).map_err(de::Error::custom)?
            }
            _ => return Err(de::Error::custom("missing `error`")),
        };
        let node_errors = match map.remove("node_errors") {
            Some(Value::Object(nodes)) => nodes
                .into_iter()
                .map(|(k, v)| {
                    serde_json::from_value(v)
                        .map(|v| (k.clone(), v))
                        .map_err(|e| de::Error::custom(format!("node_errors.{k}: {e}")))
                })
                .collect::<Result<_, _>>()?,
            _ => BTreeMap::new(),
        };
        Ok(Self { error, node_errors })
    }
}

impl fmt::Display for ValidationErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.error.kind.is_empty() {
            "error"
        } else {
            &self.error.kind
        };
        write!(f, "{kind}: {}", self.error.message.trim_end())?;
        for (node, errors) in &self.node_errors {
            let class = errors.class_type.as_deref().unwrap_or("?");
            for error in &errors.errors {
                write!(f, "; node {node} ({class}) {}", error.kind)?;
                if !error.details.is_empty() {
                    write!(f, ": {}", error.details)?;
                }
            }
        }
        Ok(())
    }
}

/// `{"error": "<text>"}`: the error body of the jobs routes and of a 409 duplicate prompt id.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SimpleError {
    /// The message.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comfy::wire::from_value;
    use crate::comfy::wire::test_support::{responses, transcript, transcripts};

    #[test]
    fn prompt_responses_parse_including_float_numbers_and_partial_errors() {
        let mut ok = 0;
        for (name, t) in transcripts() {
            for (path, status, body) in responses(&t) {
                if path != "/prompt" && path != "/api/prompt" || status != 200 {
                    continue;
                }
                if body.get("exec_info").is_some() {
                    // GET /prompt
                    continue;
                }
                let parsed: PromptResponse =
                    from_value(body.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(parsed.prompt_id, body["prompt_id"].as_str().unwrap());
                assert_eq!(parsed.number.to_string(), body["number"].to_string());
                ok += 1;
            }
        }
        assert!(ok > 30, "{ok}");

        let t = transcript("priority.json");
        let numbers: Vec<f64> = responses(&t)
            .into_iter()
            .filter(|(p, s, b)| p == "/prompt" && *s == 200 && b.get("number").is_some())
            .map(|(_, _, b)| from_value::<PromptResponse>(b).unwrap().number_f64())
            .collect();
        for expected in [-31.0, -1000.0, 1e9, 7.5] {
            assert!(numbers.contains(&expected), "{expected} in {numbers:?}");
        }

        let t = transcript("validation_error.json");
        let partial = responses(&t)
            .into_iter()
            .find(|(p, s, _)| p == "/prompt" && *s == 200)
            .unwrap();
        let partial: PromptResponse = from_value(partial.2).unwrap();
        assert_eq!(partial.node_errors.len(), 1);
        let node = &partial.node_errors["3"];
        assert_eq!(node.class_type.as_deref(), Some("ImageInvert"));
        assert_eq!(node.dependent_outputs, ["4"]);
        assert_eq!(node.errors[0].kind, "required_input_missing");
        assert_eq!(node.errors[0].input_name(), Some("image"));
    }

    #[test]
    fn every_validation_error_body_parses_keeping_every_node_error() {
        let t = transcript("validation_error.json");
        let bodies: Vec<ValidationErrorBody> = responses(&t)
            .into_iter()
            .filter(|(p, s, _)| p == "/prompt" && *s == 400)
            .map(|(_, _, b)| from_value(b).unwrap())
            .collect();
        assert_eq!(bodies.len(), 14);
        let kinds: Vec<&str> = bodies.iter().map(|b| b.error.kind.as_str()).collect();
        for kind in [
            "missing_node_type",
            "prompt_outputs_failed_validation",
            "prompt_no_outputs",
            "no_prompt",
            "invalid_prompt_id",
        ] {
            assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
        }
        let missing = &bodies[0];
        assert_eq!(missing.error.extra_info["class_type"], "NoSuchNode");
        let node_kinds: Vec<&str> = bodies
            .iter()
            .flat_map(|b| b.node_errors.values())
            .flat_map(|n| &n.errors)
            .map(|e| e.kind.as_str())
            .collect();
        for kind in [
            "required_input_missing",
            "value_bigger_than_max",
            "value_smaller_than_min",
            "exception_during_validation",
            "bad_linked_input",
            "return_type_mismatch",
            "value_not_in_list",
            "invalid_input_type",
        ] {
            assert!(node_kinds.contains(&kind), "{kind} in {node_kinds:?}");
        }
        // Several errors on one node are all kept.
        assert!(
            bodies
                .iter()
                .flat_map(|b| b.node_errors.values())
                .any(|n| n.errors.len() >= 2)
        );
        let text = bodies
            .iter()
            .find(|b| {
                b.node_errors
                    .values()
                    .any(|n| n.errors.iter().any(|e| e.kind == "value_not_in_list"))
            })
            .unwrap()
            .to_string();
        assert!(
            text.contains("node 2 (ImageScale) value_not_in_list: upscale_method"),
            "{text}"
        );

        let t = transcript("client_prompt_id.json");
        let upper = responses(&t)
            .into_iter()
            .find(|(_, s, _)| *s == 400)
            .unwrap();
        let upper: ValidationErrorBody = from_value(upper.2).unwrap();
        assert_eq!(upper.error.kind, "invalid_prompt_id");

        let simple: ValidationErrorBody =
            from_value(serde_json::json!({"error": "prompt_id already exists"})).unwrap();
        assert_eq!(simple.error.message, "prompt_id already exists");
        let legacy: ValidationErrorBody = from_value(
            serde_json::json!({"error": {"type": "x", "message": "y"}, "node_errors": []}),
        )
        .unwrap();
        assert!(legacy.node_errors.is_empty());
        assert!(from_value::<ValidationErrorBody>(serde_json::json!({"node_errors": {}})).is_err());
    }
}
