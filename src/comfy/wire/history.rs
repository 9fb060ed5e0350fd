//! The history routes: `GET /history` and `GET /history/{id}`, written when a prompt finishes.
//! An entry holds the queue item as it ran, every output node's UI dict, and the status with the
//! WebSocket messages that tell how the prompt ended ([`HistoryEntry::outcome`]).
//!
//! Pure data and parsing: it reads how a prompt ended, and must not decide what that means for a
//! watcher or a task (that is `ws` and the runtime).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::lenient::lenient_map;
use super::{
    ExecutionError, ExecutionInterrupted, NodeId, NodeOutput, OutputFile, QueueItem, WireError,
    WsMessage,
};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comfy::wire::from_value;
    use crate::comfy::wire::test_support::history;

    #[test]
    fn history_outcomes_and_outputs() {
        let success = history("success.json", "a12acd6c-351a-4f4a-9bf2-99c14525783c");
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

        let error = history(
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

        let interrupted = history("interrupt.json", "901ff72d-a98f-45e2-bc1b-abe9750b95b9");
        let HistoryOutcome::Interrupted(i) = interrupted.outcome() else {
            panic!("{:?}", interrupted.outcome())
        };
        assert_eq!(i.node_type, "TestDelay");

        let unknown: HistoryMap = from_value(serde_json::json!({})).unwrap();
        assert!(unknown.is_empty());
    }
}
