//! The queue routes: `GET /queue` (what runs and what waits, and in which order it will run),
//! and the bodies of `POST /queue` (delete pending prompts), `POST /interrupt` and `POST /free`.
//!
//! Pure data and parsing. The run order is ComfyUI's (ascending `number`, then `prompt_id`);
//! this file only reads it and must not invent an order of its own.

use serde::de;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Number, Value};

use super::NodeId;
use super::lenient::{number_to_f64, value_to_i64};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comfy::wire::test_support::{responses, transcript, transcripts};
    use crate::comfy::wire::{HistoryMap, from_value};

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
}
