//! What a run reports while it works: the cumulative `progress_state`, the
//! `progress` messages with their preview frames, progress texts, and the
//! interrupt check that ComfyUI's ProgressBar hook makes.
//!
//! It only sends messages and keeps the progress table; it decides nothing
//! about the run's order or outcome.

use std::time::Duration;

use serde_json::{Map, Value};

use super::{NodeFailure, Run};
use crate::hub::Target;
use crate::pyjson::{self, object};

/// The binary event of a plain preview image.
const PREVIEW_IMAGE: u32 = 1;
/// The binary event of a progress text.
const TEXT: u32 = 3;
/// The binary event of a preview with metadata.
const PREVIEW_IMAGE_WITH_METADATA: u32 = 4;

/// One node's entry in the cumulative `progress_state`.
#[derive(Debug, Clone)]
pub(super) struct NodeProgress {
    /// Progress so far (`0.0` when started, then what the node reported).
    value: Value,
    /// Progress total (`1.0` when started, then what the node reported).
    max: Value,
    /// `pending`, `running` or `finished`.
    state: &'static str,
}

impl Run<'_> {
    /// Sends the cumulative `progress_state`.
    pub(super) fn send_progress_state(&self) {
        let mut nodes = Map::new();
        for (id, progress) in &self.progress {
            nodes.insert(
                id.clone(),
                object([
                    ("value", progress.value.clone()),
                    ("max", progress.max.clone()),
                    ("state", Value::String(progress.state.to_owned())),
                    ("node_id", Value::String(id.clone())),
                    ("prompt_id", self.prompt_id()),
                    ("display_node_id", Value::String(id.clone())),
                    ("parent_node_id", Value::Null),
                    ("real_node_id", Value::String(id.clone())),
                ]),
            );
        }
        self.shared.hub.send_json(
            "progress_state",
            object([
                ("prompt_id", self.prompt_id()),
                ("nodes", Value::Object(nodes)),
            ]),
            &self.target,
        );
    }

    /// The progress entry of `node`, created as ComfyUI's `ensure_entry` does.
    pub(super) fn progress_entry(&mut self, node: &str) -> &mut NodeProgress {
        let index = match self.progress.iter().position(|(id, _)| id == node) {
            Some(index) => index,
            None => {
                self.progress.push((
                    node.to_owned(),
                    NodeProgress {
                        value: Value::from(0),
                        max: Value::from(1),
                        state: "pending",
                    },
                ));
                self.progress.len() - 1
            }
        };
        &mut self.progress[index].1
    }

    /// Marks `node` running at 0 of 1.
    pub(super) fn start_progress(&mut self, node: &str) {
        let entry = self.progress_entry(node);
        entry.state = "running";
        entry.value = pyjson::float_number(0.0);
        entry.max = pyjson::float_number(1.0);
        self.send_progress_state();
    }

    /// Marks `node` finished at its max.
    pub(super) fn finish_progress(&mut self, node: &str) {
        let entry = self.progress_entry(node);
        entry.state = "finished";
        entry.value = entry.max.clone();
        self.send_progress_state();
    }

    /// Whether the interrupt flag is up.
    pub(super) fn interrupted(&self) -> bool {
        *self.interrupt.borrow()
    }

    /// The ProgressBar hook: interrupt check, `progress_state`, then
    /// `progress` with the preview frame in the order the client negotiated.
    pub(super) fn progress_update(
        &mut self,
        node: &str,
        value: i64,
        total: i64,
        preview: Option<&[u8]>,
    ) -> Result<(), NodeFailure> {
        if self.interrupted() {
            return Err(NodeFailure::Interrupted);
        }
        let entry = self.progress_entry(node);
        entry.state = "running";
        entry.value = Value::from(value);
        entry.max = Value::from(total);
        self.send_progress_state();
        let with_metadata = self.shared.hub.supports_preview_metadata(&self.target);
        if let (Some(png), true) = (preview, with_metadata) {
            let metadata = pyjson::dumps(&object([
                ("node_id", Value::String(node.to_owned())),
                ("prompt_id", self.prompt_id()),
                ("display_node_id", Value::String(node.to_owned())),
                ("parent_node_id", Value::Null),
                ("real_node_id", Value::String(node.to_owned())),
                ("image_type", Value::String("image/png".to_owned())),
            ]));
            let mut frame = Vec::with_capacity(8 + metadata.len() + png.len());
            frame.extend_from_slice(&PREVIEW_IMAGE_WITH_METADATA.to_be_bytes());
            frame.extend_from_slice(&(metadata.len() as u32).to_be_bytes());
            frame.extend_from_slice(metadata.as_bytes());
            frame.extend_from_slice(png);
            self.shared.hub.send_binary(frame, &self.target);
        }
        self.shared.hub.send_json(
            "progress",
            object([
                ("value", Value::from(value)),
                ("max", Value::from(total)),
                ("prompt_id", self.prompt_id()),
                ("node", Value::String(node.to_owned())),
            ]),
            &self.target,
        );
        if let (Some(png), false) = (preview, with_metadata) {
            let mut frame = Vec::with_capacity(8 + png.len());
            frame.extend_from_slice(&PREVIEW_IMAGE.to_be_bytes());
            frame.extend_from_slice(&2u32.to_be_bytes());
            frame.extend_from_slice(png);
            self.shared.hub.send_binary(frame, &self.target);
        }
        Ok(())
    }

    /// `send_progress_text`: always broadcast.
    pub(super) fn progress_text(&self, node: &str, text: &str) {
        let mut frame = Vec::with_capacity(8 + node.len() + text.len());
        frame.extend_from_slice(&TEXT.to_be_bytes());
        frame.extend_from_slice(&(node.len() as u32).to_be_bytes());
        frame.extend_from_slice(node.as_bytes());
        frame.extend_from_slice(text.as_bytes());
        self.shared.hub.send_binary(frame, &Target::All);
    }

    /// The ProgressBar throttle interval, scaled like the sleeps.
    pub(super) fn throttle(&self) -> Duration {
        Duration::try_from_secs_f64(0.1 * self.shared.settings.time_scale).unwrap_or(Duration::MAX)
    }
}
