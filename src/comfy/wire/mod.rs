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
//!
//! One file per part of the protocol:
//! - HTTP routes: `prompt.rs` (`POST /prompt`), `queue.rs` (queue, interrupt, free),
//!   `history.rs`, `outputs.rs` (UI dicts, `/view` files, uploads), `object_info.rs`,
//!   `system.rs` (system_stats, features) and `jobs.rs`;
//! - the WebSocket: text messages in `ws_messages.rs`, binary frames in `ws_binary.rs`;
//! - `lenient.rs`: how fields that ComfyUI's Python writes loosely are read;
//! - here: the shared [`NodeId`] and [`WireError`], and the JSON entry points [`from_value`] and
//!   [`from_slice`].
//!
//! Every type is re-exported here, so callers name `wire::X` and never the file it lives in.

mod history;
mod jobs;
mod lenient;
mod object_info;
mod outputs;
mod prompt;
mod queue;
mod system;
#[cfg(test)]
pub(crate) mod test_support;
mod ws_binary;
mod ws_messages;

pub use history::{HistoryEntry, HistoryMap, HistoryOutcome, HistoryStatus};
pub use jobs::{CancelResponse, Job, JobList, JobStatus, JobWorkflow, Pagination};
pub use lenient::number_to_f64;
pub use object_info::{InputSpec, IoType, NodeInfo, NodeInputs, parse_object_info};
pub use outputs::{FileType, NodeOutput, OutputFile, UploadResponse};
pub use prompt::{
    NodeError, PromptError, PromptRequest, PromptResponse, SimpleError, ValidationErrorBody,
};
pub use queue::{
    FreeRequest, InterruptRequest, QueueDeleteRequest, QueueItem, QueuePosition, QueueStatus,
};
pub use system::{DeviceInfo, Features, PackageVersion, SystemInfo, SystemStats};
pub use ws_binary::{
    BinaryFrame, EVENT_PREVIEW_IMAGE, EVENT_PREVIEW_IMAGE_WITH_METADATA, EVENT_TEXT, ImageFormat,
    PreviewMetadata,
};
pub use ws_messages::{
    Executed, Executing, ExecutionCached, ExecutionError, ExecutionInterrupted, NodeProgress,
    NodeState, Progress, ProgressState, PromptStamp, StatusData, WsMessage, feature_flags_message,
};

use serde::de::DeserializeOwned;
use serde_json::Value;

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

/// A `serde_json` error as a [`WireError::Json`].
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::comfy::wire::test_support::arb_json;

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
        fn history_and_queue_parsers_never_panic(data in arb_json()) {
            let _ = from_value::<HistoryMap>(data.clone());
            let _ = from_value::<QueueStatus>(data.clone());
            let _ = from_value::<ValidationErrorBody>(data.clone());
            let _ = parse_object_info(data.to_string().as_bytes());
        }

    }
}
