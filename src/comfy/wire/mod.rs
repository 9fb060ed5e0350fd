//! The ComfyUI wire protocol as typed values: HTTP request and response bodies for every route the
//! runtime uses, the WebSocket text messages, and the binary WebSocket frames.
//!
//! Everything here is pure data plus parsing: no I/O, no retries, no routing. Parsing outside input
//! never panics; a malformed message or frame is a [`WireError`]. Unknown fields are ignored and
//! unknown WebSocket message types become [`WsMessage::Unknown`], so newer servers keep working.
//!
//! Numbers that ComfyUI passes through from a prompt (queue `number`, node inputs, object_info
//! bounds such as `max: 18446744073709551615`) stay [`serde_json::Number`] or [`Value`], so they
//! round-trip exactly (the crate enables `arbitrary_precision`). For that reason no type here uses
//! `#[serde(flatten)]` or untagged enums: serde buffers those through a representation in which an
//! arbitrary-precision number no longer deserializes as a number.
//!
//! The shapes follow `shared/comfyui-protocol/README.md` (captured from ComfyUI 0.33.0) and the
//! version table in `VERSIONS.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use serde::de::{self, DeserializeOwned};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Number, Value};

/// A node id as ComfyUI writes it: an opaque string (`"4"`, or `"12:3"` inside subgraphs).
pub type NodeId = String;

/// Why a message, frame or body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The text is not JSON, or not the JSON shape expected.
    #[error("malformed json: {0}")]
    Json(String),
    /// A known WebSocket message type whose `data` does not have the documented shape.
    #[error("malformed {kind} message: {message}")]
    Message {
        /// The message `type`.
        kind: String,
        /// What was wrong.
        message: String,
    },
    /// A binary frame shorter than its header.
    #[error("binary frame of {len} bytes is shorter than its {need}-byte header")]
    ShortFrame {
        /// Length of the frame.
        len: usize,
        /// Bytes the header needs.
        need: usize,
    },
    /// A binary frame whose header or payload is inconsistent.
    #[error("malformed binary frame of event {event}: {message}")]
    Binary {
        /// The frame's event number.
        event: u32,
        /// What was wrong.
        message: String,
    },
}

fn json_error(error: serde_json::Error) -> WireError {
    WireError::Json(error.to_string())
}

/// Deserializes `value` into `T`, turning a shape error into [`WireError::Json`].
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, WireError> {
    serde_json::from_value(value).map_err(json_error)
}

/// Parses `bytes` as JSON into `T`, turning any error into [`WireError::Json`].
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    serde_json::from_slice(bytes).map_err(json_error)
}

// ---------------------------------------------------------------------------------------------
// Lenient scalar helpers
// ---------------------------------------------------------------------------------------------

/// A JSON number as `f64`, whatever its spelling (`1`, `1.0`, `1e9`).
pub fn number_to_f64(number: &Number) -> f64 {
    number
        .as_f64()
        .or_else(|| number.to_string().parse().ok())
        .unwrap_or(f64::NAN)
}

fn value_to_f64(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => Some(number_to_f64(n)),
        _ => None,
    }
}

fn value_to_i64(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            let f = number_to_f64(n);
            // Truncation is intended: timestamps are whole milliseconds.
            (f.is_finite() && f.abs() < 9.0e18).then_some(f as i64)
        }),
        _ => None,
    }
}

fn value_to_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64().or_else(|| {
            let f = number_to_f64(n);
            (f.is_finite() && (0.0..1.8e19).contains(&f)).then_some(f as u64)
        }),
        _ => None,
    }
}

/// `Option<i64>` that accepts an integer or a float and reads anything else as `None`.
fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(Option::<Value>::deserialize(d)?
        .as_ref()
        .and_then(value_to_i64))
}

/// `Option<u64>` that accepts an integer or a float and reads anything else as `None`.
fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(Option::<Value>::deserialize(d)?
        .as_ref()
        .and_then(value_to_u64))
}

/// `f64` that accepts any number; anything else (or absence, with `default`) is 0.
fn lenient_f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<Value>::deserialize(d)?
        .as_ref()
        .and_then(value_to_f64)
        .unwrap_or(0.0))
}

/// `Option<String>` that accepts a string, and reads a number as its decimal text and anything
/// else (null included) as `None`. Node ids are strings on the wire, but a few custom nodes write
/// integers.
fn lenient_opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// `Vec<String>` that keeps strings and numbers (as text) and skips anything else; null or
/// absence is empty.
fn lenient_string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::Array(items)) => items
            .into_iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    })
}

/// A map that reads `null` (or a list, as some old servers send for an empty `node_errors`) as
/// empty.
fn lenient_map<'de, D, T>(d: D) -> Result<BTreeMap<String, T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    match Option::<Value>::deserialize(d)? {
        Some(Value::Object(map)) => map
            .into_iter()
            .map(|(k, v)| {
                serde_json::from_value(v)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| de::Error::custom(format!("entry {k}: {e}")))
            })
            .collect(),
        _ => Ok(BTreeMap::new()),
    }
}

// ---------------------------------------------------------------------------------------------
// POST /prompt
// ---------------------------------------------------------------------------------------------

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

fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::String(s)) => s,
        None | Some(Value::Null) => String::new(),
        Some(other) => other.to_string(),
    })
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

// ---------------------------------------------------------------------------------------------
// Queue and history
// ---------------------------------------------------------------------------------------------

/// One queue or history item: `[number, prompt_id, prompt, extra_data, outputs_to_execute]`.
/// Extra trailing elements (newer servers) are ignored; the last three may be missing.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueItem {
    /// Queue number; the queue runs in ascending order, ties broken by `prompt_id`.
    pub number: Number,
    /// The prompt's id.
    pub prompt_id: String,
    /// The stored (validated, coerced) graph.
    pub prompt: Value,
    /// `client_id`, `create_time` (ms, since 0.3.69) and what else the client sent.
    pub extra_data: Value,
    /// Output nodes that passed validation and will run.
    pub outputs_to_execute: Vec<NodeId>,
}

impl QueueItem {
    /// The queue number as a float.
    pub fn number_f64(&self) -> f64 {
        number_to_f64(&self.number)
    }

    /// `extra_data.client_id`, when the prompt was posted with one.
    pub fn client_id(&self) -> Option<&str> {
        self.extra_data.get("client_id").and_then(Value::as_str)
    }

    /// `extra_data.create_time` in epoch milliseconds (servers since 0.3.69).
    pub fn create_time_ms(&self) -> Option<i64> {
        self.extra_data.get("create_time").and_then(value_to_i64)
    }
}

impl<'de> Deserialize<'de> for QueueItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items = Vec::<Value>::deserialize(d)?;
        let mut items = items.into_iter();
        let number = match items.next() {
            Some(Value::Number(n)) => n,
            _ => return Err(de::Error::custom("queue item: `number` is not a number")),
        };
        let prompt_id = match items.next() {
            Some(Value::String(s)) => s,
            _ => return Err(de::Error::custom("queue item: `prompt_id` is not a string")),
        };
        let prompt = items.next().unwrap_or(Value::Null);
        let extra_data = items.next().unwrap_or(Value::Null);
        let outputs_to_execute = match items.next() {
            Some(Value::Array(ids)) => ids
                .into_iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(Self {
            number,
            prompt_id,
            prompt,
            extra_data,
            outputs_to_execute,
        })
    }
}

/// `GET /queue`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct QueueStatus {
    /// The prompt being executed (zero or one item).
    #[serde(default)]
    pub queue_running: Vec<QueueItem>,
    /// Waiting prompts, in the server's raw heap order (see [`QueueStatus::pending_in_run_order`]).
    #[serde(default)]
    pub queue_pending: Vec<QueueItem>,
}

/// Where a prompt stands in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueuePosition {
    /// Executing now.
    Running,
    /// Waiting; `ahead` prompts run before it.
    Pending {
        /// How many pending prompts run before this one.
        ahead: usize,
    },
}

impl QueueStatus {
    /// The pending items in the order they will run: ascending `number`, then `prompt_id`.
    pub fn pending_in_run_order(&self) -> Vec<&QueueItem> {
        let mut items: Vec<&QueueItem> = self.queue_pending.iter().collect();
        items.sort_by(|a, b| {
            a.number_f64()
                .total_cmp(&b.number_f64())
                .then_with(|| a.prompt_id.cmp(&b.prompt_id))
        });
        items
    }

    /// Where `prompt_id` is, if it is queued at all.
    pub fn position(&self, prompt_id: &str) -> Option<QueuePosition> {
        if self.queue_running.iter().any(|i| i.prompt_id == prompt_id) {
            return Some(QueuePosition::Running);
        }
        self.pending_in_run_order()
            .iter()
            .position(|i| i.prompt_id == prompt_id)
            .map(|ahead| QueuePosition::Pending { ahead })
    }

    /// The item for `prompt_id`, running or pending.
    pub fn item(&self, prompt_id: &str) -> Option<&QueueItem> {
        self.queue_running
            .iter()
            .chain(&self.queue_pending)
            .find(|i| i.prompt_id == prompt_id)
    }
}

/// `POST /queue` body. Deleting affects pending prompts only.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueDeleteRequest<'a> {
    /// Pending prompt ids to remove.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub delete: &'a [String],
    /// Remove every pending prompt.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub clear: bool,
}

/// `POST /interrupt` body. Without `prompt_id` the server interrupts whatever runs, so this client
/// always sends one.
#[derive(Debug, Clone, Serialize)]
pub struct InterruptRequest<'a> {
    /// The prompt to interrupt; ignored unless it is the one running.
    pub prompt_id: &'a str,
}

/// `POST /free` body. The worker applies it after the current prompt.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct FreeRequest {
    /// Unload models from memory.
    pub unload_models: bool,
    /// Free memory, which also clears the output cache.
    pub free_memory: bool,
}

/// A file produced by a node (or uploaded): what `GET /view` needs to fetch it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OutputFile {
    /// File name inside the folder.
    pub filename: String,
    /// Folder below the type's base directory; empty for none.
    #[serde(default)]
    pub subfolder: String,
    /// `output`, `input` or `temp` (see [`FileType`]).
    #[serde(rename = "type", default)]
    pub file_type: String,
}

/// The base directory a `GET /view` file lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    /// `output/`: what output nodes write.
    Output,
    /// `input/`: uploads.
    Input,
    /// `temp/`: previews.
    Temp,
}

impl FileType {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Output => "output",
            Self::Input => "input",
            Self::Temp => "temp",
        }
    }
}

impl fmt::Display for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FileType {
    type Err = WireError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "output" => Ok(Self::Output),
            "input" => Ok(Self::Input),
            "temp" => Ok(Self::Temp),
            other => Err(WireError::Json(format!(
                "file type `{other}` is not one of output, input, temp"
            ))),
        }
    }
}

/// The UI dict of one node: `{ui_key: [...]}`. Files appear under any key (`images`, `3d`,
/// `blobs`, ...) as `{filename, subfolder, type}` objects; other keys carry free-form values
/// (`text: [str]`). Key order is kept.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeOutput(pub Map<String, Value>);

impl NodeOutput {
    /// Every file in the dict with the key it is listed under, in order.
    pub fn files(&self) -> Vec<(&str, OutputFile)> {
        let mut files = Vec::new();
        for (key, value) in &self.0 {
            let Value::Array(items) = value else { continue };
            for item in items {
                let Value::Object(object) = item else {
                    continue;
                };
                if !object.get("filename").is_some_and(Value::is_string) {
                    continue;
                }
                if let Ok(file) = serde_json::from_value::<OutputFile>(item.clone()) {
                    files.push((key.as_str(), file));
                }
            }
        }
        files
    }

    /// The strings listed under `text` (what `TestDelay` and text-preview nodes report).
    pub fn texts(&self) -> Vec<&str> {
        self.0
            .get("text")
            .and_then(Value::as_array)
            .map(|items| items.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }
}

/// `status` of a history entry (and `execution_status` of a job).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HistoryStatus {
    /// `success` or `error` (an interrupt is `error` too; read `messages` to tell them apart).
    #[serde(default)]
    pub status_str: String,
    /// True only on success.
    #[serde(default)]
    pub completed: bool,
    /// `[event_name, data]` pairs: `execution_start`, `execution_cached`, then the outcome.
    #[serde(default, deserialize_with = "history_messages")]
    pub messages: Vec<(String, Value)>,
}

fn history_messages<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, Value)>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::Array(items)) => items
            .into_iter()
            .filter_map(|item| match item {
                Value::Array(pair) => {
                    let mut pair = pair.into_iter();
                    match (pair.next(), pair.next()) {
                        (Some(Value::String(name)), data) => {
                            Some((name, data.unwrap_or(Value::Null)))
                        }
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    })
}

impl HistoryStatus {
    /// The messages as typed WebSocket messages (an unparseable one is an error in place).
    pub fn typed_messages(&self) -> Vec<Result<WsMessage, WireError>> {
        self.messages
            .iter()
            .map(|(name, data)| WsMessage::from_parts(name, data.clone()))
            .collect()
    }

    /// How the prompt ended, read from the messages and, failing that, from `status_str`.
    pub fn outcome(&self) -> HistoryOutcome {
        for message in self.typed_messages().into_iter().rev().flatten() {
            match message {
                WsMessage::ExecutionSuccess(_) => return HistoryOutcome::Success,
                WsMessage::ExecutionError(e) => return HistoryOutcome::Error(e),
                WsMessage::ExecutionInterrupted(i) => return HistoryOutcome::Interrupted(i),
                _ => {}
            }
        }
        if self.completed || self.status_str == "success" {
            HistoryOutcome::Success
        } else {
            HistoryOutcome::Failed
        }
    }
}

/// How a finished prompt ended, according to its history entry.
#[derive(Debug, Clone, PartialEq)]
pub enum HistoryOutcome {
    /// `execution_success`, or a successful status without messages.
    Success,
    /// `execution_error`.
    Error(Box<ExecutionError>),
    /// `execution_interrupted`.
    Interrupted(ExecutionInterrupted),
    /// An `error` status without a message saying why.
    Failed,
}

/// One entry of `GET /history/{id}`, written when the prompt finishes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HistoryEntry {
    /// The queue item as it ran.
    pub prompt: QueueItem,
    /// UI dicts per output node; outputs produced before an error or interrupt are kept.
    #[serde(default, deserialize_with = "lenient_map")]
    pub outputs: BTreeMap<NodeId, NodeOutput>,
    /// Outcome and its messages; absent on very old servers.
    #[serde(default)]
    pub status: Option<HistoryStatus>,
    /// Per output node: `node_id`, `display_node`, `parent_node`, `real_node_id`.
    #[serde(default)]
    pub meta: Map<String, Value>,
}

impl HistoryEntry {
    /// How the prompt ended. An entry without `status` is read as a success (servers that
    /// predate it only wrote history for finished prompts).
    pub fn outcome(&self) -> HistoryOutcome {
        self.status
            .as_ref()
            .map_or(HistoryOutcome::Success, HistoryStatus::outcome)
    }

    /// Whether `file` is listed in any node's outputs.
    pub fn has_output_file(&self, file: &OutputFile) -> bool {
        self.outputs
            .values()
            .flat_map(NodeOutput::files)
            .any(|(_, f)| &f == file)
    }
}

/// `GET /history` and `GET /history/{id}`: entries keyed by prompt id (`{}` when unknown).
pub type HistoryMap = BTreeMap<String, HistoryEntry>;

// ---------------------------------------------------------------------------------------------
// object_info
// ---------------------------------------------------------------------------------------------

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

fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(matches!(
        Option::<Value>::deserialize(d)?,
        Some(Value::Bool(true))
    ))
}

fn lenient_bool_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<bool>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::Array(items)) => items.iter().map(|v| v.as_bool().unwrap_or(false)).collect(),
        _ => Vec::new(),
    })
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

// ---------------------------------------------------------------------------------------------
// system_stats, features, uploads
// ---------------------------------------------------------------------------------------------

/// `GET /system_stats`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct SystemStats {
    /// The host and ComfyUI build.
    pub system: SystemInfo,
    /// Torch devices, primary first.
    pub devices: Vec<DeviceInfo>,
}

/// `system` of `GET /system_stats`. Every field is optional: older servers send fewer.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct SystemInfo {
    /// `linux`, `nt`, `darwin`, ...
    #[serde(deserialize_with = "lenient_opt_string")]
    pub os: Option<String>,
    /// Total RAM in bytes.
    #[serde(deserialize_with = "lenient_u64")]
    pub ram_total: Option<u64>,
    /// Free RAM in bytes.
    #[serde(deserialize_with = "lenient_u64")]
    pub ram_free: Option<u64>,
    /// The ComfyUI version (`0.33.0`; forks write things like `0.3.29.Diana`).
    #[serde(deserialize_with = "lenient_opt_string")]
    pub comfyui_version: Option<String>,
    /// The frontend version the server wants.
    #[serde(deserialize_with = "lenient_opt_string")]
    pub required_frontend_version: Option<String>,
    /// Python version string.
    #[serde(deserialize_with = "lenient_opt_string")]
    pub python_version: Option<String>,
    /// PyTorch version string.
    #[serde(deserialize_with = "lenient_opt_string")]
    pub pytorch_version: Option<String>,
    /// Whether ComfyUI runs on its embedded Python.
    pub embedded_python: Option<bool>,
    /// `local-git`, `desktop`, ... (since 0.25.0).
    #[serde(deserialize_with = "lenient_opt_string")]
    pub deploy_environment: Option<String>,
    /// The server's command line.
    #[serde(deserialize_with = "lenient_string_list")]
    pub argv: Vec<String>,
    /// Installed and required versions of companion packages (since 0.22.0).
    pub comfy_package_versions: Vec<PackageVersion>,
}

/// One entry of `comfy_package_versions`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct PackageVersion {
    /// Package name.
    #[serde(deserialize_with = "lenient_string")]
    pub name: String,
    /// Installed version.
    #[serde(deserialize_with = "lenient_opt_string")]
    pub installed: Option<String>,
    /// Required version.
    #[serde(deserialize_with = "lenient_opt_string")]
    pub required: Option<String>,
}

/// One device of `GET /system_stats`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct DeviceInfo {
    /// Device name (`cpu`, `cuda:0 NVIDIA H100 ...`).
    #[serde(deserialize_with = "lenient_string")]
    pub name: String,
    /// Device type (`cpu`, `cuda`, `mps`, ...).
    #[serde(rename = "type", deserialize_with = "lenient_string")]
    pub device_type: String,
    /// Device index; null for the CPU.
    #[serde(deserialize_with = "lenient_i64")]
    pub index: Option<i64>,
    /// Total memory in bytes.
    #[serde(deserialize_with = "lenient_u64")]
    pub vram_total: Option<u64>,
    /// Free memory in bytes.
    #[serde(deserialize_with = "lenient_u64")]
    pub vram_free: Option<u64>,
    /// Memory torch has reserved, in bytes.
    #[serde(deserialize_with = "lenient_u64")]
    pub torch_vram_total: Option<u64>,
    /// Free memory within torch's reservation, in bytes.
    #[serde(deserialize_with = "lenient_u64")]
    pub torch_vram_free: Option<u64>,
}

/// `GET /features` (since 0.3.45), also the data of the WebSocket `feature_flags` reply.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Features {
    /// Whether the server sends binary event 4 to clients that ask for it.
    pub supports_preview_metadata: bool,
    /// Largest accepted upload in bytes.
    pub max_upload_size: Option<u64>,
    /// Every flag as sent, known or not.
    pub raw: Map<String, Value>,
}

impl<'de> Deserialize<'de> for Features {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Map::<String, Value>::deserialize(d)?;
        Ok(Self {
            supports_preview_metadata: raw
                .get("supports_preview_metadata")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            max_upload_size: raw.get("max_upload_size").and_then(value_to_u64),
            raw,
        })
    }
}

/// The `POST /upload/image` 200 body: where the file landed (the server may rename it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UploadResponse {
    /// Final file name.
    pub name: String,
    /// Folder below `input/`.
    #[serde(default)]
    pub subfolder: String,
    /// `input` for uploads.
    #[serde(rename = "type", default)]
    pub file_type: String,
}

// ---------------------------------------------------------------------------------------------
// Jobs API (servers since 0.6.0)
// ---------------------------------------------------------------------------------------------

/// A job's status in the jobs API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStatus {
    /// Waiting in the queue.
    Pending,
    /// Running.
    InProgress,
    /// Finished successfully.
    Completed,
    /// Finished with an error (also interrupted jobs on 0.6-0.8).
    Failed,
    /// Interrupted or cancelled (since 0.9.0).
    Cancelled,
    /// A status this client does not know.
    Other(String),
}

impl From<String> for JobStatus {
    fn from(s: String) -> Self {
        match s.as_str() {
            "pending" => Self::Pending,
            "in_progress" => Self::InProgress,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => Self::Other(s),
        }
    }
}

impl<'de> Deserialize<'de> for JobStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(String::deserialize(d)?.into())
    }
}

impl JobStatus {
    /// Whether the job has finished one way or another.
    pub fn is_finished(&self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// `GET /api/jobs/{id}` (and each item of the list).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Job {
    /// The prompt id.
    pub id: String,
    /// Where the job stands.
    pub status: JobStatus,
    /// The queue number.
    #[serde(default)]
    pub priority: Option<Number>,
    /// Epoch ms when it was queued.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub create_time: Option<i64>,
    /// Epoch ms when it started.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub execution_start_time: Option<i64>,
    /// Epoch ms when it ended.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub execution_end_time: Option<i64>,
    /// Number of outputs.
    #[serde(default, deserialize_with = "lenient_u64")]
    pub outputs_count: Option<u64>,
    /// Number of outputs that can be previewed (since 0.32.0).
    #[serde(default, deserialize_with = "lenient_u64")]
    pub previewable_outputs_count: Option<u64>,
    /// One output picked for a preview.
    #[serde(default)]
    pub preview_output: Option<Value>,
    /// Outputs per node (single-job reads only).
    #[serde(default)]
    pub outputs: Option<BTreeMap<NodeId, NodeOutput>>,
    /// The history status (single-job reads only).
    #[serde(default)]
    pub execution_status: Option<HistoryStatus>,
    /// The `execution_error` data of a failed job.
    #[serde(default)]
    pub execution_error: Option<ExecutionError>,
    /// The prompt and extra_data as submitted (single-job reads only).
    #[serde(default)]
    pub workflow: Option<JobWorkflow>,
}

/// `workflow` of a job.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct JobWorkflow {
    /// The graph.
    pub prompt: Value,
    /// The extra data.
    pub extra_data: Value,
}

/// `GET /api/jobs`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct JobList {
    /// The jobs on this page.
    #[serde(default)]
    pub jobs: Vec<Job>,
    /// Paging information.
    #[serde(default)]
    pub pagination: Option<Pagination>,
}

/// `pagination` of `GET /api/jobs`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct Pagination {
    /// Index of the first job.
    #[serde(deserialize_with = "lenient_u64")]
    pub offset: Option<u64>,
    /// Page size (null when unlimited).
    #[serde(deserialize_with = "lenient_u64")]
    pub limit: Option<u64>,
    /// Total matching jobs.
    #[serde(deserialize_with = "lenient_u64")]
    pub total: Option<u64>,
    /// Whether more pages follow.
    pub has_more: bool,
}

/// `POST /api/jobs/{id}/cancel` and `POST /api/jobs/cancel` (since 0.26.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct CancelResponse {
    /// Whether anything was cancelled.
    pub cancelled: bool,
}

// ---------------------------------------------------------------------------------------------
// WebSocket text messages
// ---------------------------------------------------------------------------------------------

/// `status`: broadcast to every socket whenever the queue changes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StatusData {
    /// Pending plus running prompts.
    pub queue_remaining: Option<u64>,
    /// The socket's clientId; only on the first frame after connecting.
    pub sid: Option<String>,
}

impl<'de> Deserialize<'de> for StatusData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let data = Map::<String, Value>::deserialize(d)?;
        let queue_remaining = data
            .get("status")
            .and_then(|s| s.get("exec_info"))
            .and_then(|e| e.get("queue_remaining"))
            .and_then(value_to_u64);
        let sid = data.get("sid").and_then(Value::as_str).map(str::to_owned);
        Ok(Self {
            queue_remaining,
            sid,
        })
    }
}

/// `execution_start` and `execution_success`: `{prompt_id, timestamp}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PromptStamp {
    /// The prompt.
    pub prompt_id: String,
    /// Epoch milliseconds on the server.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub timestamp: Option<i64>,
}

/// `execution_cached`: nodes whose cached result is reused (sent even when empty).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ExecutionCached {
    /// The cached node ids.
    #[serde(default, deserialize_with = "lenient_string_list")]
    pub nodes: Vec<NodeId>,
    /// The prompt.
    pub prompt_id: String,
    /// Epoch milliseconds on the server.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub timestamp: Option<i64>,
}

/// `executing`: a node started (`node` set), or the prompt ended (`node: null`). The replay sent
/// after reconnecting has no `prompt_id`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Executing {
    /// The node now running; `None` means end of prompt.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub node: Option<NodeId>,
    /// The node shown in the UI (differs inside subgraphs).
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub display_node: Option<NodeId>,
    /// The prompt; absent on the reconnect replay.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub prompt_id: Option<String>,
}

/// `progress`: a node's step counter.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Progress {
    /// Steps done.
    #[serde(deserialize_with = "lenient_f64")]
    pub value: f64,
    /// Steps in all.
    #[serde(deserialize_with = "lenient_f64")]
    pub max: f64,
    /// The prompt (absent on very old servers).
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub prompt_id: Option<String>,
    /// The node.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub node: Option<NodeId>,
}

/// A node's state in `progress_state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeState {
    /// Not started.
    Pending,
    /// Running (also the last state of a node that failed or was interrupted).
    Running,
    /// Done.
    Finished,
    /// Failed (defined by the server, never observed).
    Error,
    /// A state this client does not know.
    Other(String),
}

impl<'de> Deserialize<'de> for NodeState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "pending" => Self::Pending,
            "running" => Self::Running,
            "finished" => Self::Finished,
            "error" => Self::Error,
            _ => Self::Other(s),
        })
    }
}

/// One node of `progress_state`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NodeProgress {
    /// Progress value (`0.0` at start).
    #[serde(default, deserialize_with = "lenient_f64")]
    pub value: f64,
    /// Progress maximum (`1.0` at start).
    #[serde(default, deserialize_with = "lenient_f64")]
    pub max: f64,
    /// The node's state.
    pub state: NodeState,
    /// The node.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub node_id: Option<NodeId>,
    /// The node shown in the UI.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub display_node_id: Option<NodeId>,
    /// The enclosing subgraph node, if any.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub parent_node_id: Option<NodeId>,
    /// The node id in the graph as sent.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub real_node_id: Option<NodeId>,
}

/// `progress_state` (since 0.3.45): cumulative state of every node started so far.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ProgressState {
    /// The prompt.
    pub prompt_id: String,
    /// State per node id.
    #[serde(default, deserialize_with = "lenient_map")]
    pub nodes: BTreeMap<NodeId, NodeProgress>,
}

/// `executed`: a node with a UI dict finished (also sent for cached output nodes).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Executed {
    /// The node.
    #[serde(deserialize_with = "required_string")]
    pub node: NodeId,
    /// The node shown in the UI.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub display_node: Option<NodeId>,
    /// The node's UI dict.
    #[serde(default)]
    pub output: NodeOutput,
    /// The prompt.
    pub prompt_id: String,
}

fn required_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    lenient_opt_string(d)?.ok_or_else(|| de::Error::custom("expected a string"))
}

/// `execution_error`: the prompt stopped at a failing node.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ExecutionError {
    /// The prompt.
    pub prompt_id: String,
    /// The failing node.
    #[serde(default, deserialize_with = "lenient_string")]
    pub node_id: NodeId,
    /// Its class.
    #[serde(default, deserialize_with = "lenient_string")]
    pub node_type: String,
    /// Nodes that ran before the failure.
    #[serde(default, deserialize_with = "lenient_string_list")]
    pub executed: Vec<NodeId>,
    /// The exception's message.
    #[serde(default, deserialize_with = "lenient_string")]
    pub exception_message: String,
    /// The exception's Python type (`RuntimeError`, `torch.OutOfMemoryError`, ...).
    #[serde(default, deserialize_with = "lenient_string")]
    pub exception_type: String,
    /// Traceback lines.
    #[serde(default, deserialize_with = "lenient_string_list")]
    pub traceback: Vec<String>,
    /// The failing node's inputs: `{name: [values]}`.
    #[serde(default)]
    pub current_inputs: Value,
    /// Output node ids of the prompt.
    #[serde(default)]
    pub current_outputs: Value,
    /// Epoch milliseconds on the server.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub timestamp: Option<i64>,
}

/// `execution_interrupted`: the prompt was interrupted.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ExecutionInterrupted {
    /// The prompt.
    pub prompt_id: String,
    /// The node that was running.
    #[serde(default, deserialize_with = "lenient_string")]
    pub node_id: NodeId,
    /// Its class.
    #[serde(default, deserialize_with = "lenient_string")]
    pub node_type: String,
    /// Nodes that finished before the interrupt.
    #[serde(default, deserialize_with = "lenient_string_list")]
    pub executed: Vec<NodeId>,
    /// Epoch milliseconds on the server.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub timestamp: Option<i64>,
}

/// A WebSocket text message, `{"type": ..., "data": {...}}`.
#[derive(Debug, Clone, PartialEq)]
pub enum WsMessage {
    /// `status`.
    Status(StatusData),
    /// `execution_start`.
    ExecutionStart(PromptStamp),
    /// `execution_cached`.
    ExecutionCached(ExecutionCached),
    /// `executing`.
    Executing(Executing),
    /// `progress`.
    Progress(Progress),
    /// `progress_state`.
    ProgressState(ProgressState),
    /// `executed`.
    Executed(Executed),
    /// `execution_success`.
    ExecutionSuccess(PromptStamp),
    /// `execution_error`.
    ExecutionError(Box<ExecutionError>),
    /// `execution_interrupted`.
    ExecutionInterrupted(ExecutionInterrupted),
    /// `feature_flags`: the server's reply to the client's flags.
    FeatureFlags(Features),
    /// A type this client does not know (newer servers add some); kept as sent.
    Unknown {
        /// The message `type`.
        kind: String,
        /// The message `data`.
        data: Value,
    },
}

#[derive(Deserialize)]
struct RawMessage {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Value,
}

impl WsMessage {
    /// Parses a text frame.
    pub fn parse(text: &str) -> Result<Self, WireError> {
        let raw: RawMessage = serde_json::from_str(text).map_err(json_error)?;
        Self::from_parts(&raw.kind, raw.data)
    }

    /// Builds a message from its type and data (also how history `messages` are typed).
    pub fn from_parts(kind: &str, data: Value) -> Result<Self, WireError> {
        fn typed<T: DeserializeOwned>(kind: &str, data: Value) -> Result<T, WireError> {
            // serde reads a struct from an array too; the protocol only sends objects.
            if !data.is_object() {
                return Err(WireError::Message {
                    kind: kind.to_owned(),
                    message: "data is not an object".into(),
                });
            }
            serde_json::from_value(data).map_err(|e| WireError::Message {
                kind: kind.to_owned(),
                message: e.to_string(),
            })
        }
        Ok(match kind {
            "status" => Self::Status(typed(kind, data)?),
            "execution_start" => Self::ExecutionStart(typed(kind, data)?),
            "execution_cached" => Self::ExecutionCached(typed(kind, data)?),
            "executing" => Self::Executing(typed(kind, data)?),
            "progress" => Self::Progress(typed(kind, data)?),
            "progress_state" => Self::ProgressState(typed(kind, data)?),
            "executed" => Self::Executed(typed(kind, data)?),
            "execution_success" => Self::ExecutionSuccess(typed(kind, data)?),
            "execution_error" => Self::ExecutionError(Box::new(typed(kind, data)?)),
            "execution_interrupted" => Self::ExecutionInterrupted(typed(kind, data)?),
            "feature_flags" => Self::FeatureFlags(typed(kind, data)?),
            _ => Self::Unknown {
                kind: kind.to_owned(),
                data,
            },
        })
    }

    /// The message `type`.
    pub fn kind(&self) -> &str {
        match self {
            Self::Status(_) => "status",
            Self::ExecutionStart(_) => "execution_start",
            Self::ExecutionCached(_) => "execution_cached",
            Self::Executing(_) => "executing",
            Self::Progress(_) => "progress",
            Self::ProgressState(_) => "progress_state",
            Self::Executed(_) => "executed",
            Self::ExecutionSuccess(_) => "execution_success",
            Self::ExecutionError(_) => "execution_error",
            Self::ExecutionInterrupted(_) => "execution_interrupted",
            Self::FeatureFlags(_) => "feature_flags",
            Self::Unknown { kind, .. } => kind,
        }
    }

    /// The prompt the message is about, when it says.
    pub fn prompt_id(&self) -> Option<&str> {
        match self {
            Self::ExecutionStart(m) | Self::ExecutionSuccess(m) => Some(&m.prompt_id),
            Self::ExecutionCached(m) => Some(&m.prompt_id),
            Self::Executing(m) => m.prompt_id.as_deref(),
            Self::Progress(m) => m.prompt_id.as_deref(),
            Self::ProgressState(m) => Some(&m.prompt_id),
            Self::Executed(m) => Some(&m.prompt_id),
            Self::ExecutionError(m) => Some(&m.prompt_id),
            Self::ExecutionInterrupted(m) => Some(&m.prompt_id),
            Self::Unknown { data, .. } => data.get("prompt_id").and_then(Value::as_str),
            Self::Status(_) | Self::FeatureFlags(_) => None,
        }
    }
}

/// The client's `feature_flags` message, sent as the first frame on servers that support it.
pub fn feature_flags_message(supports_preview_metadata: bool) -> String {
    serde_json::json!({
        "type": "feature_flags",
        "data": {"supports_preview_metadata": supports_preview_metadata},
    })
    .to_string()
}

// ---------------------------------------------------------------------------------------------
// WebSocket binary frames
// ---------------------------------------------------------------------------------------------

/// Binary event 1: a preview image with no metadata.
pub const EVENT_PREVIEW_IMAGE: u32 = 1;
/// Binary event 3: progress text of a node.
pub const EVENT_TEXT: u32 = 3;
/// Binary event 4: a preview image with its metadata (after negotiating
/// `supports_preview_metadata`).
pub const EVENT_PREVIEW_IMAGE_WITH_METADATA: u32 = 4;

/// Image format of a binary event 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// `1`.
    Jpeg,
    /// `2`.
    Png,
    /// Another code.
    Other(u32),
}

impl ImageFormat {
    fn from_code(code: u32) -> Self {
        match code {
            1 => Self::Jpeg,
            2 => Self::Png,
            other => Self::Other(other),
        }
    }

    /// The MIME type (`application/octet-stream` for unknown codes).
    pub fn mime(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::Other(_) => "application/octet-stream",
        }
    }
}

/// The JSON header of a binary event 4.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PreviewMetadata {
    /// The node that produced the preview.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub node_id: Option<NodeId>,
    /// The prompt.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub prompt_id: Option<String>,
    /// The node shown in the UI.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub display_node_id: Option<NodeId>,
    /// The enclosing subgraph node.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub parent_node_id: Option<NodeId>,
    /// The node id in the graph as sent.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub real_node_id: Option<NodeId>,
    /// The image's MIME type (`image/png`).
    #[serde(default, deserialize_with = "lenient_string")]
    pub image_type: String,
}

/// A binary WebSocket frame, read by its big-endian u32 headers.
#[derive(Debug, Clone, PartialEq)]
pub enum BinaryFrame {
    /// Event 1: `[event][image_type][image]`. Carries no prompt or node.
    PreviewImage {
        /// The image's format.
        format: ImageFormat,
        /// The encoded image.
        image: Bytes,
    },
    /// Event 3: `[event][node_id_len][node_id][text]`. Carries the node only.
    Text {
        /// The node.
        node_id: NodeId,
        /// The text.
        text: String,
    },
    /// Event 4: `[event][json_len][json][image]`.
    PreviewImageWithMetadata {
        /// The JSON header.
        metadata: PreviewMetadata,
        /// The encoded image.
        image: Bytes,
    },
    /// Any other event, kept as sent (event 2 is internal and never on the wire).
    Unknown {
        /// The event number.
        event: u32,
        /// The bytes after the event number.
        payload: Bytes,
    },
}

fn read_u32(frame: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = frame.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

impl BinaryFrame {
    /// Parses a binary frame. Never panics; a frame inconsistent with its header is an error.
    pub fn parse(frame: Bytes) -> Result<Self, WireError> {
        let event = read_u32(&frame, 0).ok_or(WireError::ShortFrame {
            len: frame.len(),
            need: 4,
        })?;
        let header = |frame: &Bytes| {
            read_u32(frame, 4).ok_or(WireError::ShortFrame {
                len: frame.len(),
                need: 8,
            })
        };
        match event {
            EVENT_PREVIEW_IMAGE => {
                let code = header(&frame)?;
                Ok(Self::PreviewImage {
                    format: ImageFormat::from_code(code),
                    image: frame.slice(8..),
                })
            }
            EVENT_TEXT | EVENT_PREVIEW_IMAGE_WITH_METADATA => {
                let len = usize::try_from(header(&frame)?).map_err(|_| WireError::Binary {
                    event,
                    message: "length does not fit in memory".into(),
                })?;
                let end = 8usize
                    .checked_add(len)
                    .filter(|end| *end <= frame.len())
                    .ok_or_else(|| WireError::Binary {
                        event,
                        message: format!(
                            "declared {len}-byte header but only {} bytes follow",
                            frame.len().saturating_sub(8)
                        ),
                    })?;
                let head = &frame[8..end];
                if event == EVENT_TEXT {
                    let utf8 = |bytes: &[u8], what: &str| {
                        std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| {
                            WireError::Binary {
                                event,
                                message: format!("{what} is not utf-8"),
                            }
                        })
                    };
                    Ok(Self::Text {
                        node_id: utf8(head, "node id")?,
                        text: utf8(&frame[end..], "text")?,
                    })
                } else {
                    let metadata = serde_json::from_slice::<Value>(head)
                        .ok()
                        .filter(Value::is_object)
                        .and_then(|v| serde_json::from_value::<PreviewMetadata>(v).ok())
                        .ok_or_else(|| WireError::Binary {
                            event,
                            message: "metadata is not a json object".into(),
                        })?;
                    Ok(Self::PreviewImageWithMetadata {
                        metadata,
                        image: frame.slice(end..),
                    })
                }
            }
            other => Ok(Self::Unknown {
                event: other,
                payload: frame.slice(4..),
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use proptest::prelude::*;

    use super::*;

    fn protocol_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/comfyui-protocol")
    }

    /// Every transcript: (file name, parsed JSON).
    fn transcripts() -> Vec<(String, Value)> {
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

    fn events(transcript: &Value) -> &[Value] {
        transcript
            .get("events")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }

    fn transcript(name: &str) -> Value {
        transcripts()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .unwrap()
    }

    /// `(path, status, body)` of every http_response with a JSON body.
    fn responses(transcript: &Value) -> Vec<(String, u64, Value)> {
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

    #[test]
    fn every_transcript_text_message_parses_into_its_type() {
        let mut seen = BTreeMap::<String, usize>::new();
        for (name, t) in transcripts() {
            for e in events(&t).iter().filter(|e| e["kind"] == "ws_recv") {
                let Some(msg) = e.get("msg") else { continue };
                let text = msg.to_string();
                let parsed =
                    WsMessage::parse(&text).unwrap_or_else(|err| panic!("{name}: {err}: {text}"));
                let kind = msg["type"].as_str().unwrap();
                assert_eq!(parsed.kind(), kind, "{name}");
                assert!(
                    !matches!(parsed, WsMessage::Unknown { .. }),
                    "{name}: {kind} is a known type"
                );
                // The prompt id is read wherever the message has one.
                let expected = msg["data"].get("prompt_id").and_then(Value::as_str);
                assert_eq!(parsed.prompt_id(), expected, "{name}: {text}");
                *seen.entry(kind.to_owned()).or_default() += 1;
            }
        }
        for kind in [
            "status",
            "execution_start",
            "execution_cached",
            "executing",
            "progress",
            "progress_state",
            "executed",
            "execution_success",
            "execution_error",
            "execution_interrupted",
            "feature_flags",
        ] {
            assert!(
                seen.get(kind).copied().unwrap_or(0) > 0,
                "no {kind} in the transcripts"
            );
        }
    }

    #[test]
    fn transcript_messages_carry_their_key_fields() {
        let t = transcript("execution_error.json");
        let error = events(&t)
            .iter()
            .filter_map(|e| e.get("msg"))
            .find(|m| m["type"] == "execution_error")
            .unwrap();
        let WsMessage::ExecutionError(error) = WsMessage::parse(&error.to_string()).unwrap() else {
            panic!("not an execution_error");
        };
        assert_eq!(error.node_id, "2");
        assert_eq!(error.node_type, "TestFail");
        assert_eq!(error.exception_type, "RuntimeError");
        assert_eq!(error.exception_message, "boom from TestFail\n");
        assert_eq!(error.executed, ["3", "1"]);
        assert_eq!(error.traceback.len(), 5);
        assert_eq!(error.current_inputs["message"][0], "boom from TestFail");
        assert_eq!(error.timestamp, Some(1795698288463));

        let t = transcript("ws_reconnect.json");
        let replay = events(&t)
            .iter()
            .filter_map(|e| e.get("msg"))
            .find(|m| m["type"] == "executing" && m["data"].get("prompt_id").is_none())
            .unwrap();
        assert_eq!(
            WsMessage::parse(&replay.to_string()).unwrap(),
            WsMessage::Executing(Executing {
                node: Some("1".into()),
                display_node: None,
                prompt_id: None,
            })
        );

        let end = r#"{"type":"executing","data":{"node":null,"prompt_id":"p"}}"#;
        let WsMessage::Executing(end) = WsMessage::parse(end).unwrap() else {
            panic!()
        };
        assert_eq!((end.node, end.prompt_id.as_deref()), (None, Some("p")));

        let t = transcript("artifact.json");
        let executed = events(&t)
            .iter()
            .filter_map(|e| e.get("msg"))
            .find(|m| m["type"] == "executed")
            .unwrap();
        let WsMessage::Executed(executed) = WsMessage::parse(&executed.to_string()).unwrap() else {
            panic!()
        };
        let files = executed.output.files();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].0, "3d");
        assert_eq!(files[0].1.filename, "out_00001_.usdz");
        assert_eq!(files[0].1.subfolder, "proto");

        let first = events(&t)
            .iter()
            .filter_map(|e| e.get("msg"))
            .find(|m| m["type"] == "status")
            .unwrap();
        let WsMessage::Status(status) = WsMessage::parse(&first.to_string()).unwrap() else {
            panic!()
        };
        assert_eq!(status.queue_remaining, Some(0));
        assert_eq!(
            status.sid.as_deref(),
            Some("69450aa6-1cfd-45b0-9f9d-23de4e000e27")
        );

        let t = transcript("progress.json");
        let state = events(&t)
            .iter()
            .filter_map(|e| e.get("msg"))
            .rfind(|m| m["type"] == "progress_state")
            .unwrap();
        let WsMessage::ProgressState(state) = WsMessage::parse(&state.to_string()).unwrap() else {
            panic!()
        };
        assert!(state.nodes.values().all(|n| n.state == NodeState::Finished));
        let progress = events(&t)
            .iter()
            .filter_map(|e| e.get("msg"))
            .find(|m| m["type"] == "progress" && m["data"]["value"] == 3)
            .unwrap();
        let WsMessage::Progress(progress) = WsMessage::parse(&progress.to_string()).unwrap() else {
            panic!()
        };
        assert_eq!((progress.value, progress.max), (3.0, 5.0));
    }

    /// Builds the bytes of a transcript binary frame from its header hex and decoded fields.
    fn frame_bytes(event: &Value) -> Bytes {
        let hex = event["first8_hex"].as_str().unwrap();
        let mut bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let decoded = &event["decoded"];
        let len = usize::try_from(event["len"].as_u64().unwrap()).unwrap();
        match decoded["event_type"].as_u64().unwrap() {
            3 => {
                bytes.extend_from_slice(decoded["node_id"].as_str().unwrap().as_bytes());
                bytes.extend_from_slice(decoded["text"].as_str().unwrap().as_bytes());
            }
            4 => {
                // The JSON text is not stored; re-encode it with Python's separators so the
                // declared length matches.
                let metadata = decoded["metadata"].to_string().replace(",\"", ", \"");
                let metadata = metadata.replace("\":", "\": ");
                bytes.extend_from_slice(metadata.as_bytes());
            }
            _ => {}
        }
        if decoded.get("image_magic_hex").is_some() {
            let magic = decoded["image_magic_hex"].as_str().unwrap();
            bytes.extend(
                (0..magic.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&magic[i..i + 2], 16).unwrap()),
            );
        }
        bytes.resize(len.max(bytes.len()), 0);
        assert_eq!(bytes.len(), len, "rebuilt frame has the recorded length");
        Bytes::from(bytes)
    }

    #[test]
    fn every_transcript_binary_frame_parses_into_its_type() {
        let mut count = 0;
        for (name, t) in transcripts() {
            for e in events(&t)
                .iter()
                .filter(|e| e["kind"] == "ws_recv" && e["binary"] == true)
            {
                count += 1;
                let decoded = &e["decoded"];
                let frame = BinaryFrame::parse(frame_bytes(e))
                    .unwrap_or_else(|err| panic!("{name}: {err}"));
                match (decoded["event_type"].as_u64().unwrap(), frame) {
                    (1, BinaryFrame::PreviewImage { format, image }) => {
                        assert_eq!(format, ImageFormat::Png);
                        assert_eq!(format.mime(), "image/png");
                        assert_eq!(image.len() as u64, decoded["image_len"].as_u64().unwrap());
                        assert_eq!(&image[..8], b"\x89PNG\r\n\x1a\n");
                    }
                    (3, BinaryFrame::Text { node_id, text }) => {
                        assert_eq!(node_id, decoded["node_id"].as_str().unwrap());
                        assert_eq!(text, decoded["text"].as_str().unwrap());
                        assert!(text.starts_with("step "));
                    }
                    (4, BinaryFrame::PreviewImageWithMetadata { metadata, image }) => {
                        let m = &decoded["metadata"];
                        assert_eq!(metadata.prompt_id.as_deref(), m["prompt_id"].as_str());
                        assert_eq!(metadata.node_id.as_deref(), Some("2"));
                        assert_eq!(metadata.parent_node_id, None);
                        assert_eq!(metadata.image_type, "image/png");
                        assert_eq!(image.len() as u64, decoded["image_len"].as_u64().unwrap());
                        assert_eq!(&image[..8], b"\x89PNG\r\n\x1a\n");
                    }
                    (event, frame) => panic!("{name}: event {event} parsed as {frame:?}"),
                }
            }
        }
        assert_eq!(count, 7, "the transcripts hold 7 binary frames");
    }

    #[test]
    fn malformed_binary_frames_are_errors() {
        let cases: &[&[u8]] = &[
            b"",
            b"\x00\x00\x00",
            b"\x00\x00\x00\x01",
            b"\x00\x00\x00\x03\x00\x00",
            b"\x00\x00\x00\x03\x00\x00\x00\x09node",
            b"\x00\x00\x00\x03\xff\xff\xff\xff",
            b"\x00\x00\x00\x03\x00\x00\x00\x01\xff",
            b"\x00\x00\x00\x04\x00\x00\x00\x02{}",
            b"\x00\x00\x00\x04\x00\x00\x00\x03[1]",
            b"\x00\x00\x00\x04\x00\x00\x00\x05{\"a\":",
        ];
        for case in cases {
            let result = BinaryFrame::parse(Bytes::copy_from_slice(case));
            // `{}` is a valid (empty) metadata object; everything else here is malformed.
            if *case == b"\x00\x00\x00\x04\x00\x00\x00\x02{}" {
                assert!(result.is_ok(), "{case:?}");
            } else {
                assert!(result.is_err(), "{case:?} parsed as {result:?}");
            }
        }
        assert_eq!(
            BinaryFrame::parse(Bytes::from_static(b"\x00\x00\x00\x02abc")).unwrap(),
            BinaryFrame::Unknown {
                event: 2,
                payload: Bytes::from_static(b"abc")
            }
        );
        assert_eq!(
            BinaryFrame::parse(Bytes::from_static(b"\x00\x00\x00\x03\x00\x00\x00\x01\x37"))
                .unwrap(),
            BinaryFrame::Text {
                node_id: "7".into(),
                text: String::new()
            }
        );
    }

    #[test]
    fn malformed_text_messages_are_errors_and_unknown_types_are_kept() {
        for bad in [
            "",
            "not json",
            "[]",
            "{}",
            r#"{"type": 5, "data": {}}"#,
            r#"{"type": "execution_start", "data": {}}"#,
            r#"{"type": "execution_start", "data": []}"#,
            r#"{"type": "execution_start", "data": ["p", 1]}"#,
            r#"{"type": "progress", "data": {"max": 1}}"#,
            r#"{"type": "executed", "data": {"prompt_id": "p"}}"#,
            r#"{"type": "execution_error", "data": null}"#,
        ] {
            assert!(WsMessage::parse(bad).is_err(), "{bad:?}");
        }
        let unknown = WsMessage::parse(
            r#"{"type":"execution_node_error","data":{"prompt_id":"p","node_id":"3"}}"#,
        )
        .unwrap();
        assert_eq!(unknown.kind(), "execution_node_error");
        assert_eq!(unknown.prompt_id(), Some("p"));
        assert!(matches!(unknown, WsMessage::Unknown { .. }));
        // Unknown fields of known types are ignored (newer servers add some).
        let state = WsMessage::parse(
            r#"{"type":"progress_state","data":{"prompt_id":"p","nodes":{"1":{"value":1,"max":2,"state":"running","activity":"loading","seconds":{"total":1.5}}}}}"#,
        )
        .unwrap();
        let WsMessage::ProgressState(state) = state else {
            panic!()
        };
        assert_eq!(state.nodes["1"].state, NodeState::Running);
        assert_eq!(state.nodes["1"].max, 2.0);
    }

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

    #[test]
    fn every_queue_and_history_body_parses() {
        let (mut queues, mut histories) = (0, 0);
        for (name, t) in transcripts() {
            for (path, status, body) in responses(&t) {
                let route = path.split('?').next().unwrap().trim_start_matches("/api");
                if route == "/queue" && status == 200 {
                    let q: QueueStatus =
                        from_value(body.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert_eq!(
                        q.queue_running.len(),
                        body["queue_running"].as_array().unwrap().len()
                    );
                    assert_eq!(
                        q.queue_pending.len(),
                        body["queue_pending"].as_array().unwrap().len()
                    );
                    queues += 1;
                } else if route.starts_with("/history") && status == 200 {
                    let h: HistoryMap =
                        from_value(body.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert_eq!(h.len(), body.as_object().unwrap().len());
                    for (id, entry) in &h {
                        assert_eq!(&entry.prompt.prompt_id, id);
                        assert!(entry.status.is_some());
                    }
                    histories += 1;
                }
            }
        }
        assert!(queues >= 10 && histories >= 15, "{queues} {histories}");

        // The pending queue is in heap order; the run order sorts it.
        let t = transcript("priority.json");
        let (_, _, body) = responses(&t)
            .into_iter()
            .find(|(p, _, b)| {
                p == "/queue" && b["queue_pending"].as_array().is_some_and(|a| a.len() == 5)
            })
            .unwrap();
        let q: QueueStatus = from_value(body).unwrap();
        let raw: Vec<f64> = q.queue_pending.iter().map(QueueItem::number_f64).collect();
        assert_eq!(raw, [-1000.0, 7.5, -31.0, 1e9, 30.0]);
        let ordered: Vec<f64> = q
            .pending_in_run_order()
            .iter()
            .map(|i| i.number_f64())
            .collect();
        assert_eq!(ordered, [-1000.0, -31.0, 7.5, 30.0, 1e9]);
        let first = q.pending_in_run_order()[0].prompt_id.clone();
        assert_eq!(
            q.position(&first),
            Some(QueuePosition::Pending { ahead: 0 })
        );
        let running = q.queue_running[0].prompt_id.clone();
        assert_eq!(q.position(&running), Some(QueuePosition::Running));
        assert_eq!(q.position("nope"), None);
        assert!(q.queue_running[0].client_id().is_some());
        assert!(q.queue_running[0].create_time_ms().is_some());
    }

    fn history_of(name: &str, id: &str) -> HistoryEntry {
        let t = transcript(name);
        let (_, _, body) = responses(&t)
            .into_iter()
            .find(|(p, _, _)| p == &format!("/history/{id}"))
            .unwrap();
        let mut map: HistoryMap = from_value(body).unwrap();
        map.remove(id).unwrap()
    }

    #[test]
    fn history_outcomes_and_outputs() {
        let success = history_of("success.json", "a12acd6c-351a-4f4a-9bf2-99c14525783c");
        assert_eq!(success.outcome(), HistoryOutcome::Success);
        let file = OutputFile {
            filename: "success_00001_.png".into(),
            subfolder: "proto".into(),
            file_type: "output".into(),
        };
        assert!(success.has_output_file(&file));
        assert!(!success.has_output_file(&OutputFile {
            filename: "other.png".into(),
            ..file.clone()
        }));
        assert_eq!(success.prompt.outputs_to_execute, ["4"]);
        assert_eq!(success.prompt.number_f64(), 0.0);

        let error = history_of(
            "execution_error.json",
            "6e9f15cf-c621-412a-86a0-6db8fc69168c",
        );
        let HistoryOutcome::Error(e) = error.outcome() else {
            panic!("{:?}", error.outcome())
        };
        assert_eq!(e.node_type, "TestFail");
        assert_eq!(error.status.as_ref().unwrap().status_str, "error");
        assert!(!error.status.as_ref().unwrap().completed);
        // Outputs produced before the error are kept.
        assert_eq!(
            error.outputs["3"].files()[0].1.filename,
            "err_sibling_00001_.bin"
        );
        assert_eq!(error.outputs["1"].texts(), ["slept 0.3s in 3 steps"]);

        let interrupted = history_of("interrupt.json", "901ff72d-a98f-45e2-bc1b-abe9750b95b9");
        let HistoryOutcome::Interrupted(i) = interrupted.outcome() else {
            panic!("{:?}", interrupted.outcome())
        };
        assert_eq!(i.node_type, "TestDelay");

        let unknown: HistoryMap = from_value(serde_json::json!({})).unwrap();
        assert!(unknown.is_empty());
    }

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

    #[test]
    fn system_stats_features_and_jobs_parse() {
        let t = transcript("misc.json");
        let mut stats_seen = 0;
        for (path, status, body) in responses(&t) {
            match path.trim_start_matches("/api") {
                "/system_stats" => {
                    let stats: SystemStats = from_value(body).unwrap();
                    assert_eq!(stats.system.comfyui_version.as_deref(), Some("0.33.0"));
                    assert_eq!(stats.system.ram_total, Some(25276510208));
                    assert_eq!(stats.devices[0].device_type, "cpu");
                    assert_eq!(stats.devices[0].index, None);
                    assert_eq!(stats.system.comfy_package_versions.len(), 5);
                    stats_seen += 1;
                }
                "/features" => {
                    let features: Features = from_value(body).unwrap();
                    assert!(features.supports_preview_metadata);
                    assert_eq!(features.max_upload_size, Some(104857600));
                    assert_eq!(features.raw["assets"], false);
                }
                _ => {
                    let _ = status;
                }
            }
        }
        assert_eq!(stats_seen, 2);

        let (mut jobs, mut lists) = (0, 0);
        for (name, t) in transcripts() {
            for (path, status, body) in responses(&t) {
                if !path.starts_with("/api/jobs") || path.ends_with("cancel") {
                    continue;
                }
                if status != 200 {
                    let error: SimpleError = from_value(body).unwrap();
                    assert!(!error.error.is_empty());
                } else if path.starts_with("/api/jobs?") {
                    let list: JobList = from_value(body).unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert!(list.pagination.is_some());
                    lists += 1;
                } else {
                    let job: Job =
                        from_value(body.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert_eq!(job.id, body["id"].as_str().unwrap());
                    jobs += 1;
                }
            }
        }
        assert!(jobs >= 5 && lists >= 2, "{jobs} {lists}");

        let t = transcript("execution_error.json");
        let (_, _, body) = responses(&t)
            .into_iter()
            .find(|(p, _, _)| p.starts_with("/api/jobs/"))
            .unwrap();
        let job: Job = from_value(body).unwrap();
        assert_eq!(job.status, JobStatus::Failed);
        assert_eq!(job.execution_error.unwrap().node_type, "TestFail");

        let t = transcript("jobs_api.json");
        let cancels: Vec<CancelResponse> = responses(&t)
            .into_iter()
            .filter(|(p, s, _)| p.ends_with("cancel") && *s == 200)
            .map(|(_, _, b)| from_value(b).unwrap())
            .collect();
        assert!(cancels.iter().any(|c| c.cancelled) && cancels.iter().any(|c| !c.cancelled));
        let statuses: Vec<JobStatus> = responses(&t)
            .into_iter()
            .filter(|(p, s, _)| p.starts_with("/api/jobs/") && !p.ends_with("cancel") && *s == 200)
            .map(|(_, _, b)| from_value::<Job>(b).unwrap().status)
            .collect();
        assert!(statuses.contains(&JobStatus::InProgress));
        assert!(statuses.contains(&JobStatus::Pending));
        assert!(statuses.contains(&JobStatus::Cancelled));
    }

    #[test]
    fn requests_serialize_without_front_or_number() {
        let prompt = serde_json::json!({"1": {"class_type": "TestDelay", "inputs": {"nonce": 18446744073709551615u64}}});
        let body = serde_json::to_value(PromptRequest {
            prompt: &prompt,
            client_id: "c",
            prompt_id: Some("p"),
            extra_data: None,
            partial_execution_targets: None,
        })
        .unwrap();
        assert_eq!(body["client_id"], "c");
        assert_eq!(body["prompt_id"], "p");
        assert!(body.get("front").is_none() && body.get("number").is_none());
        assert!(body.get("extra_data").is_none());
        assert!(body.to_string().contains("18446744073709551615"));

        let ids = ["a".to_owned()];
        let delete = serde_json::to_value(QueueDeleteRequest {
            delete: &ids,
            clear: false,
        })
        .unwrap();
        assert_eq!(delete, serde_json::json!({"delete": ["a"]}));
        assert_eq!(
            serde_json::to_value(InterruptRequest { prompt_id: "p" }).unwrap(),
            serde_json::json!({"prompt_id": "p"})
        );
        let flags: Value = serde_json::from_str(&feature_flags_message(true)).unwrap();
        assert_eq!(flags["type"], "feature_flags");
        assert_eq!(flags["data"]["supports_preview_metadata"], true);
        assert_eq!("temp".parse::<FileType>().unwrap(), FileType::Temp);
        assert!("bogus".parse::<FileType>().is_err());
    }

    proptest! {
        #[test]
        fn text_parser_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = WsMessage::parse(&text);
        }

        #[test]
        fn text_parser_never_panics_on_json(
            kind in prop_oneof![
                Just("status"), Just("execution_start"), Just("execution_cached"),
                Just("executing"), Just("progress"), Just("progress_state"), Just("executed"),
                Just("execution_success"), Just("execution_error"),
                Just("execution_interrupted"), Just("feature_flags"), Just("other"),
            ],
            data in arb_json(),
        ) {
            let text = serde_json::json!({"type": kind, "data": data}).to_string();
            let _ = WsMessage::parse(&text);
        }

        #[test]
        fn binary_parser_never_panics(
            event in 0u32..6,
            len in any::<u32>(),
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut frame = event.to_be_bytes().to_vec();
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(&tail);
            let _ = BinaryFrame::parse(Bytes::from(frame.clone()));
            for cut in 0..frame.len().min(10) {
                let _ = BinaryFrame::parse(Bytes::copy_from_slice(&frame[..cut]));
            }
        }

        #[test]
        fn binary_parser_never_panics_on_small_lengths(
            event in prop_oneof![Just(3u32), Just(4u32)],
            len in 0u32..80,
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut frame = event.to_be_bytes().to_vec();
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(&tail);
            let _ = BinaryFrame::parse(Bytes::from(frame));
        }

        #[test]
        fn history_and_queue_parsers_never_panic(data in arb_json()) {
            let _ = from_value::<HistoryMap>(data.clone());
            let _ = from_value::<QueueStatus>(data.clone());
            let _ = from_value::<ValidationErrorBody>(data.clone());
            let _ = parse_object_info(data.to_string().as_bytes());
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
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
}
