//! The WebSocket text messages, `{"type": ..., "data": {...}}`: one type per message ComfyUI
//! sends ([`WsMessage`]), and the `feature_flags` message the client sends first.
//!
//! Unknown message types become [`WsMessage::Unknown`] and unknown fields are ignored, so newer
//! servers keep working. Pure parsing: routing a message to the prompt it concerns is `ws`'s job.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use serde_json::value::RawValue;

use super::lenient::{
    lenient_f64, lenient_i64, lenient_map, lenient_opt_string, lenient_string, lenient_string_list,
    required_string, value_to_u64,
};
use super::{Features, NodeId, NodeOutput, WireError, json_error};

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
        /// The two values a status carries, read as it streams by: nothing else of it is
        /// kept (ComfyUI broadcasts one at every queue change).
        struct StatusVisitor;

        impl<'de> Visitor<'de> for StatusVisitor {
            type Value = StatusData;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a status object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StatusData, A::Error> {
                let mut status = StatusData::default();
                while let Some(key) = map.next_key::<Text<'de>>()? {
                    match key.0.as_ref() {
                        "status" => {
                            status.queue_remaining = map
                                .next_value_seed(Inside(&["exec_info", "queue_remaining"]))?
                                .as_ref()
                                .and_then(value_to_u64);
                        }
                        "sid" => {
                            status.sid = match map.next_value::<Value>()? {
                                Value::String(sid) => Some(sid),
                                _ => None,
                            };
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(status)
            }
        }

        d.deserialize_map(StatusVisitor)
    }
}

/// A map key or string, borrowed from the text when it has no escapes.
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;

        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }

        d.deserialize_str(TextVisitor)
    }
}

/// The value at a path of keys inside an object, read leniently: `None` when a step is missing
/// or not an object (what `Value::get` along the path gives), and nothing else kept.
struct Inside<'p>(&'p [&'p str]);

impl<'de> DeserializeSeed<'de> for Inside<'_> {
    type Value = Option<Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Value>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Inside<'_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Value>, A::Error> {
        let Some((first, rest)) = self.0.split_first() else {
            // The path ends at this object: the caller wanted it whole.
            return Value::deserialize(MapAccessDeserializer::new(map)).map(Some);
        };
        let mut found = None;
        while let Some(key) = map.next_key::<Text<'de>>()? {
            if key.0 == *first {
                // The last of duplicate keys wins, as in a parsed `Value`.
                found = if rest.is_empty() {
                    Some(map.next_value::<Value>()?)
                } else {
                    map.next_value_seed(Inside(rest))?
                };
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Value>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Option<Value>, E> {
        Ok(None)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Option<Value>, E> {
        Ok(None)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Option<Value>, E> {
        Ok(None)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Option<Value>, E> {
        Ok(None)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Option<Value>, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Option<Value>, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Option<Value>, E> {
        Ok(None)
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
///
/// ComfyUI sends the whole map at every node's start and end, so a prompt's messages carry a
/// number of entries that grows with the square of its nodes. Following a prompt needs only
/// the prompt id; the nodes stay the JSON text they came as until [`ProgressState::nodes`]
/// reads them.
#[derive(Debug, Clone, Deserialize)]
pub struct ProgressState {
    /// The prompt.
    pub prompt_id: String,
    /// `nodes` as sent (`None` when absent or `null`).
    #[serde(default)]
    nodes: Option<Box<RawValue>>,
}

impl ProgressState {
    /// State per node id (empty when the map is absent, `null` or a list); an error when an
    /// entry is not a node's state.
    pub fn nodes(&self) -> Result<BTreeMap<NodeId, NodeProgress>, WireError> {
        /// The map, read as `lenient_map` reads it.
        #[derive(Deserialize)]
        struct Nodes(#[serde(deserialize_with = "lenient_map")] BTreeMap<NodeId, NodeProgress>);
        let Some(raw) = &self.nodes else {
            return Ok(BTreeMap::new());
        };
        serde_json::from_str::<Nodes>(raw.get())
            .map(|nodes| nodes.0)
            .map_err(|e| WireError::Message {
                kind: "progress_state".into(),
                message: format!("nodes: {e}"),
            })
    }
}

impl PartialEq for ProgressState {
    /// The same prompt and the same JSON nodes, however they were spaced.
    fn eq(&self, other: &Self) -> bool {
        fn json(nodes: Option<&RawValue>) -> Option<Value> {
            nodes.and_then(|raw| serde_json::from_str(raw.get()).ok())
        }
        self.prompt_id == other.prompt_id
            && json(self.nodes.as_deref()) == json(other.nodes.as_deref())
    }
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

/// A text frame read in one pass: `data` straight into its type when `type` came first, as
/// ComfyUI sends it (the socket's busiest path: reading `data` as text first and then into its
/// type lexed every frame twice); kept as text until the end when `data` came first.
struct Frame<'e> {
    /// Where a failure inside a known type's `data` is told, with its kind: the outer
    /// deserializer only passes the failure on as JSON.
    data_error: &'e Cell<Option<WireError>>,
}

impl<'de> Visitor<'de> for Frame<'_> {
    type Value = WsMessage;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a message object with a `type`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WsMessage, A::Error> {
        let mut kind: Option<Text<'de>> = None;
        let mut message = None;
        let mut later: Option<&'de RawValue> = None;
        let mut data_seen = false;
        while let Some(key) = map.next_key::<Text<'de>>()? {
            match key.0.as_ref() {
                "type" => {
                    if kind.is_some() {
                        return Err(de::Error::duplicate_field("type"));
                    }
                    kind = Some(map.next_value()?);
                }
                "data" => {
                    if std::mem::replace(&mut data_seen, true) {
                        return Err(de::Error::duplicate_field("data"));
                    }
                    match &kind {
                        Some(kind) => {
                            message = Some(map.next_value_seed(Data {
                                kind: &kind.0,
                                error: self.data_error,
                            })?);
                        }
                        // `null` reads as no data, as it always has.
                        None => later = map.next_value::<Option<&'de RawValue>>()?,
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let kind = kind.ok_or_else(|| de::Error::missing_field("type"))?;
        let read = match (message, later) {
            (Some(message), _) => return Ok(message),
            (None, Some(data)) => WsMessage::from_data(&kind.0, data),
            (None, None) => WsMessage::from_data(&kind.0, Value::Null),
        };
        read.map_err(|error| {
            let told = error.to_string();
            self.data_error.set(Some(error));
            de::Error::custom(told)
        })
    }
}

/// A frame's `data` read into the type its `kind` names (see [`WsMessage::from_data`]).
struct Data<'k, 'e> {
    /// The message `type`.
    kind: &'k str,
    /// Where a failure is told (see [`Frame`]).
    error: &'e Cell<Option<WireError>>,
}

impl<'de> DeserializeSeed<'de> for Data<'_, '_> {
    type Value = WsMessage;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<WsMessage, D::Error> {
        let kind = self.kind;
        let message = match kind {
            "status" => d.deserialize_map(Object::new()).map(WsMessage::Status),
            "execution_start" => d
                .deserialize_map(Object::new())
                .map(WsMessage::ExecutionStart),
            "execution_cached" => d
                .deserialize_map(Object::new())
                .map(WsMessage::ExecutionCached),
            "executing" => d.deserialize_map(Object::new()).map(WsMessage::Executing),
            "progress" => d.deserialize_map(Object::new()).map(WsMessage::Progress),
            "progress_state" => d
                .deserialize_map(Object::new())
                .map(WsMessage::ProgressState),
            "executed" => d.deserialize_map(Object::new()).map(WsMessage::Executed),
            "execution_success" => d
                .deserialize_map(Object::new())
                .map(WsMessage::ExecutionSuccess),
            "execution_error" => d
                .deserialize_map(Object::new())
                .map(|e| WsMessage::ExecutionError(Box::new(e))),
            "execution_interrupted" => d
                .deserialize_map(Object::new())
                .map(WsMessage::ExecutionInterrupted),
            "feature_flags" => d
                .deserialize_map(Object::new())
                .map(WsMessage::FeatureFlags),
            _ => {
                return Option::<Value>::deserialize(d).map(|data| WsMessage::Unknown {
                    kind: kind.to_owned(),
                    data: data.unwrap_or(Value::Null),
                });
            }
        };
        message.map_err(|e| {
            let message = e.to_string();
            self.error.set(Some(WireError::Message {
                kind: kind.to_owned(),
                message: message.clone(),
            }));
            de::Error::custom(message)
        })
    }
}

/// A message type read from an object only: serde reads a struct from an array too, and the
/// protocol only sends objects. Asked for as a map: with serde_json's `arbitrary_precision`, a
/// number comes to `deserialize_any` as a map too.
struct Object<T>(PhantomData<T>);

impl<T> Object<T> {
    fn new() -> Self {
        Self(PhantomData)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for Object<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map))
    }
}

/// A message's `data`, parsed (`Value`, as history `messages` carry it) or
/// still text (a socket frame).
trait MessageData: Sized {
    fn is_object(&self) -> bool;
    fn typed<T: DeserializeOwned>(self) -> Result<T, serde_json::Error>;
    fn into_value(self) -> Result<Value, serde_json::Error>;
}

impl MessageData for Value {
    fn is_object(&self) -> bool {
        Value::is_object(self)
    }

    fn typed<T: DeserializeOwned>(self) -> Result<T, serde_json::Error> {
        serde_json::from_value(self)
    }

    fn into_value(self) -> Result<Value, serde_json::Error> {
        Ok(self)
    }
}

impl MessageData for &RawValue {
    fn is_object(&self) -> bool {
        // Already valid JSON without surrounding whitespace.
        self.get().starts_with('{')
    }

    fn typed<T: DeserializeOwned>(self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.get())
    }

    fn into_value(self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(self.get())
    }
}

impl WsMessage {
    /// Parses a text frame.
    pub fn parse(text: &str) -> Result<Self, WireError> {
        let data_error = Cell::new(None);
        let mut reader = serde_json::Deserializer::from_str(text);
        let parsed = serde::Deserializer::deserialize_map(
            &mut reader,
            Frame {
                data_error: &data_error,
            },
        )
        .and_then(|message| reader.end().map(|()| message));
        match (parsed, data_error.take()) {
            (Ok(message), _) => Ok(message),
            (Err(_), Some(error)) => Err(error),
            (Err(error), None) => Err(json_error(error)),
        }
    }

    /// Builds a message from its type and data (also how history `messages` are typed).
    pub fn from_parts(kind: &str, data: Value) -> Result<Self, WireError> {
        Self::from_data(kind, data)
    }

    fn from_data(kind: &str, data: impl MessageData) -> Result<Self, WireError> {
        fn typed<T: DeserializeOwned>(kind: &str, data: impl MessageData) -> Result<T, WireError> {
            // serde reads a struct from an array too; the protocol only sends objects.
            if !data.is_object() {
                return Err(WireError::Message {
                    kind: kind.to_owned(),
                    message: "data is not an object".into(),
                });
            }
            data.typed().map_err(|e| WireError::Message {
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
                data: data.into_value().map_err(json_error)?,
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::comfy::wire::test_support::{arb_json, events, transcript, transcripts};

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
                // The nodes of `progress_state` are read on demand: every captured one reads.
                if let WsMessage::ProgressState(state) = &parsed {
                    let nodes = state
                        .nodes()
                        .unwrap_or_else(|err| panic!("{name}: {err}: {text}"));
                    assert_eq!(nodes.len(), msg["data"]["nodes"].as_object().unwrap().len());
                }
                // A frame is read from its text; history messages from parsed JSON: same message.
                assert_eq!(
                    WsMessage::from_parts(kind, msg["data"].clone()).as_ref(),
                    Ok(&parsed),
                    "{name}: {text}"
                );
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
        let nodes = state.nodes().unwrap();
        assert!(!nodes.is_empty());
        assert!(nodes.values().all(|n| n.state == NodeState::Finished));
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
        let nodes = state.nodes().unwrap();
        assert_eq!(nodes["1"].state, NodeState::Running);
        assert_eq!(nodes["1"].max, 2.0);
    }

    #[test]
    fn a_failure_inside_data_names_the_message_type_in_either_key_order() {
        for text in [
            r#"{"type":"progress","data":{"max":1}}"#,
            r#"{"data":{"max":1},"type":"progress"}"#,
        ] {
            match WsMessage::parse(text) {
                Err(WireError::Message { kind, message }) => {
                    assert_eq!(kind, "progress", "{text}");
                    assert!(message.contains("value"), "{text}: {message}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        // Outside `data`, a frame that is not JSON is a JSON error.
        for text in [
            r#"{"type":"progress","data":{"value":1,"max":2}} x"#,
            r#"{"data":{}"#,
        ] {
            assert!(
                matches!(WsMessage::parse(text), Err(WireError::Json(_))),
                "{text}"
            );
        }
        for text in [
            r#"{"type":"executing","type":"executing","data":{}}"#,
            r#"{"type":"executing","data":{},"data":{}}"#,
        ] {
            assert!(WsMessage::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn a_status_reads_its_two_values_whatever_else_it_holds() {
        let status =
            |data: &str| match WsMessage::parse(&format!(r#"{{"type":"status","data":{data}}}"#)) {
                Ok(WsMessage::Status(status)) => status,
                other => panic!("{data}: {other:?}"),
            };
        assert_eq!(
            status(r#"{"status":{"exec_info":{"queue_remaining":3,"x":[1]}},"sid":"s","y":{}}"#),
            StatusData {
                queue_remaining: Some(3),
                sid: Some("s".into())
            }
        );
        // Shapes a newer or broken server might send read as absent, as `Value::get` reads them.
        for odd in [
            r#"{"status":"busy","sid":5}"#,
            r#"{"status":{"exec_info":[1,2]},"sid":null}"#,
            r#"{"status":{"exec_info":{"queue_remaining":"3"}}}"#,
            r#"{"status":{"exec_info":{"queue_remaining":-1}}}"#,
            r#"{"status":7.5}"#,
            r#"{}"#,
        ] {
            assert_eq!(status(odd), StatusData::default(), "{odd}");
        }
        // The last of duplicate keys wins, as in parsed JSON.
        assert_eq!(
            status(r#"{"status":{"exec_info":{"queue_remaining":1}},"status":{"exec_info":{"queue_remaining":2}}}"#)
                .queue_remaining,
            Some(2)
        );
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
            // Read from the frame's text or from parsed JSON: the same message or an error both ways.
            prop_assert_eq!(WsMessage::parse(&text).ok(), WsMessage::from_parts(kind, data.clone()).ok());
            // `data` first is read after the loop, `type` first in one pass: the same outcome.
            let data_first = format!(r#"{{"data":{data},"type":"{kind}"}}"#);
            // (The wording of a failure may differ: where in the text it lies.)
            let outcome = |parsed: Result<WsMessage, WireError>| {
                parsed.map_err(|e| match e {
                    WireError::Message { kind, .. } => Some(kind),
                    _ => None,
                })
            };
            prop_assert_eq!(
                outcome(WsMessage::parse(&data_first)),
                outcome(WsMessage::parse(&text))
            );
        }

    }
}
