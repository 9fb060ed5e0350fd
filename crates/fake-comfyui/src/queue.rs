//! The fake's prompt queue and history, kept the way ComfyUI's `PromptQueue`
//! keeps them: a binary heap in Python `heapq` layout (so `GET /queue` shows
//! the same raw heap order), one running item, the `number` counter, the
//! worker flags of `POST /free`, and an insertion-ordered history capped at
//! 10000 entries whose re-used ids keep their place.
//!
//! Plain data behind the server's mutex; no I/O and no messages (callers
//! broadcast `status` while they hold the lock, so statuses keep the order
//! of the changes they report).

use std::cmp::Ordering;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::pyjson::{self, object};

/// ComfyUI's `MAXIMUM_HISTORY_SIZE`.
pub(crate) const MAX_HISTORY: usize = 10_000;

/// A queue item's `number`: the server counter (an int) or a client's
/// explicit number (always a float).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Priority {
    /// From the counter (negated by `front: true`).
    Counter(i64),
    /// Given by the client, turned into a float.
    Explicit(f64),
}

impl Priority {
    /// The value used for ordering.
    fn as_f64(self) -> f64 {
        match self {
            Priority::Counter(n) => n as f64,
            Priority::Explicit(x) => x,
        }
    }

    /// The JSON the server prints (`30`, `-1000.0`, `7.5`).
    pub(crate) fn to_value(self) -> Value {
        match self {
            Priority::Counter(n) => Value::from(n),
            Priority::Explicit(x) => pyjson::float_number(x),
        }
    }
}

/// One accepted prompt.
#[derive(Debug)]
pub(crate) struct QueueItem {
    /// Its priority.
    pub(crate) number: Priority,
    /// Its id.
    pub(crate) prompt_id: String,
    /// The validated (coerced) prompt.
    pub(crate) prompt: Map<String, Value>,
    /// `extra_data` without the sensitive keys, with `create_time`.
    pub(crate) extra_data: Map<String, Value>,
    /// The sensitive `extra_data` keys, kept for the run only.
    pub(crate) sensitive: Map<String, Value>,
    /// The output nodes that passed validation.
    pub(crate) outputs: Vec<String>,
    /// `[number, prompt_id, prompt, extra_data, outputs]`, built once.
    pub(crate) tuple: Value,
}

impl QueueItem {
    /// Builds an item and its JSON tuple.
    pub(crate) fn new(
        number: Priority,
        prompt_id: String,
        prompt: Map<String, Value>,
        extra_data: Map<String, Value>,
        sensitive: Map<String, Value>,
        outputs: Vec<String>,
    ) -> Self {
        let tuple = Value::Array(vec![
            number.to_value(),
            Value::String(prompt_id.clone()),
            Value::Object(prompt.clone()),
            Value::Object(extra_data.clone()),
            Value::Array(outputs.iter().cloned().map(Value::String).collect()),
        ]);
        Self {
            number,
            prompt_id,
            prompt,
            extra_data,
            sensitive,
            outputs,
            tuple,
        }
    }

    /// `extra_data["client_id"]` as the executor routes it: absent or null
    /// means "no client".
    pub(crate) fn client_id(&self) -> Option<&Value> {
        self.extra_data.get("client_id").filter(|v| !v.is_null())
    }

    /// Python's tuple comparison `(number, prompt_id, …) < (…)`.
    fn less_than(&self, other: &QueueItem) -> bool {
        match self
            .number
            .as_f64()
            .partial_cmp(&other.number.as_f64())
            .unwrap_or(Ordering::Equal)
        {
            Ordering::Less => true,
            Ordering::Greater => false,
            Ordering::Equal => self.prompt_id < other.prompt_id,
        }
    }
}

/// A finished prompt in the history.
#[derive(Debug, Clone)]
pub(crate) struct HistoryRecord {
    /// The prompt id (the history key).
    pub(crate) prompt_id: String,
    /// `{"prompt", "outputs", "status", "meta"}`.
    pub(crate) entry: Arc<Value>,
}

/// The worker flags set by `POST /free`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Flags {
    /// `free_memory`: drop the output cache.
    pub(crate) free_memory: bool,
    /// `unload_models`: nothing to unload in the fake, recorded only.
    pub(crate) unload_models: bool,
}

/// Everything `PromptQueue` holds.
#[derive(Debug, Default)]
pub(crate) struct QueueState {
    /// Pending items in `heapq` layout.
    heap: Vec<Arc<QueueItem>>,
    /// The item the worker runs, if any.
    pub(crate) running: Option<Arc<QueueItem>>,
    /// Finished prompts in insertion order.
    history: Vec<HistoryRecord>,
    /// The next counter `number`.
    pub(crate) counter: i64,
    /// Flags the worker applies between prompts.
    pub(crate) flags: Flags,
}

impl QueueState {
    /// `get_tasks_remaining`: pending plus running.
    pub(crate) fn remaining(&self) -> usize {
        self.heap.len() + usize::from(self.running.is_some())
    }

    /// The `status` payload: `{"status": {"exec_info": {"queue_remaining": n}}}`.
    pub(crate) fn status(&self) -> Value {
        object([("status", self.queue_info())])
    }

    /// `{"exec_info": {"queue_remaining": n}}`.
    pub(crate) fn queue_info(&self) -> Value {
        object([(
            "exec_info",
            object([("queue_remaining", Value::from(self.remaining()))]),
        )])
    }

    /// The next counter value, advanced.
    pub(crate) fn next_number(&mut self) -> i64 {
        let n = self.counter;
        self.counter += 1;
        n
    }

    /// `heapq.heappush`.
    pub(crate) fn push(&mut self, item: Arc<QueueItem>) {
        self.heap.push(item);
        let last = self.heap.len() - 1;
        self.sift_down(0, last);
    }

    /// `heapq.heappop`, marking the item as running.
    pub(crate) fn pop_to_running(&mut self) -> Option<Arc<QueueItem>> {
        let last = self.heap.pop()?;
        let item = if self.heap.is_empty() {
            last
        } else {
            let first = std::mem::replace(&mut self.heap[0], last);
            self.sift_up(0);
            first
        };
        self.running = Some(item.clone());
        Some(item)
    }

    /// The pending items in raw heap order.
    pub(crate) fn pending(&self) -> &[Arc<QueueItem>] {
        &self.heap
    }

    /// `wipe_queue`.
    pub(crate) fn clear_pending(&mut self) {
        self.heap.clear();
    }

    /// `delete_queue_item(lambda a: a[1] == id)`: how many `status`
    /// broadcasts ComfyUI makes for it (0 when nothing matched, 2 when the
    /// deleted item was the only one, since it wipes then reports again).
    pub(crate) fn delete_pending(&mut self, prompt_id: &str) -> usize {
        let Some(index) = self.heap.iter().position(|i| i.prompt_id == prompt_id) else {
            return 0;
        };
        if self.heap.len() == 1 {
            self.heap.clear();
            return 2;
        }
        self.heap.remove(index);
        self.heapify();
        1
    }

    /// Whether `prompt_id` is pending.
    pub(crate) fn is_pending(&self, prompt_id: &str) -> bool {
        self.heap.iter().any(|i| i.prompt_id == prompt_id)
    }

    /// Whether `prompt_id` is the running prompt.
    pub(crate) fn is_running(&self, prompt_id: &str) -> bool {
        self.running
            .as_ref()
            .is_some_and(|r| r.prompt_id == prompt_id)
    }

    /// `task_done`: records the finished running item in the history.
    pub(crate) fn finish(&mut self, prompt_id: &str, entry: Value) {
        self.running = None;
        if self.history.len() > MAX_HISTORY {
            self.history.remove(0);
        }
        let entry = Arc::new(entry);
        match self.history.iter_mut().find(|r| r.prompt_id == prompt_id) {
            Some(record) => record.entry = entry,
            None => self.history.push(HistoryRecord {
                prompt_id: prompt_id.to_owned(),
                entry,
            }),
        }
    }

    /// The history entry of `prompt_id`, if any.
    pub(crate) fn history_entry(&self, prompt_id: &str) -> Option<Arc<Value>> {
        self.history
            .iter()
            .find(|r| r.prompt_id == prompt_id)
            .map(|r| r.entry.clone())
    }

    /// Every history record in insertion order.
    pub(crate) fn history(&self) -> &[HistoryRecord] {
        &self.history
    }

    /// `get_history(max_items, offset)`: the records a listing returns.
    pub(crate) fn history_page(
        &self,
        max_items: Option<i64>,
        offset: Option<i64>,
    ) -> Vec<HistoryRecord> {
        let len = self.history.len() as i64;
        let mut offset = offset.unwrap_or(-1);
        if offset < 0
            && let Some(max) = max_items
        {
            offset = len.saturating_sub(max);
        }
        let mut out = Vec::new();
        for (i, record) in self.history.iter().enumerate() {
            if (i as i64) >= offset {
                out.push(record.clone());
                if max_items.is_some_and(|max| out.len() as i64 >= max) {
                    break;
                }
            }
        }
        out
    }

    /// `delete_history_item`.
    pub(crate) fn delete_history(&mut self, prompt_id: &str) {
        self.history.retain(|r| r.prompt_id != prompt_id);
    }

    /// `wipe_history`.
    pub(crate) fn clear_history(&mut self) {
        self.history.clear();
    }

    /// `heapq._siftdown`: moves the item at `pos` up towards `start`.
    fn sift_down(&mut self, start: usize, mut pos: usize) {
        while pos > start {
            let parent = (pos - 1) / 2;
            if self.heap[pos].less_than(&self.heap[parent]) {
                self.heap.swap(pos, parent);
                pos = parent;
            } else {
                break;
            }
        }
    }

    /// `heapq._siftup`: moves the smaller child up to a leaf, then sifts down.
    fn sift_up(&mut self, start: usize) {
        let end = self.heap.len();
        let mut pos = start;
        let mut child = 2 * pos + 1;
        while child < end {
            let right = child + 1;
            if right < end && !self.heap[child].less_than(&self.heap[right]) {
                child = right;
            }
            self.heap.swap(pos, child);
            pos = child;
            child = 2 * pos + 1;
        }
        self.sift_down(start, pos);
    }

    /// `heapq.heapify`.
    fn heapify(&mut self) {
        for i in (0..self.heap.len() / 2).rev() {
            self.sift_up(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(number: Priority, id: &str) -> Arc<QueueItem> {
        Arc::new(QueueItem::new(
            number,
            id.to_owned(),
            Map::new(),
            Map::new(),
            Map::new(),
            Vec::new(),
        ))
    }

    fn numbers(state: &QueueState) -> Vec<String> {
        state
            .pending()
            .iter()
            .map(|i| i.number.to_value().to_string())
            .collect()
    }

    #[test]
    fn heap_layout_matches_the_capture() {
        let mut state = QueueState::default();
        state.push(item(Priority::Counter(30), "b"));
        state.push(item(Priority::Counter(-31), "c"));
        state.push(item(Priority::Explicit(-1000.0), "d"));
        state.push(item(Priority::Explicit(1e9), "e"));
        state.push(item(Priority::Explicit(7.5), "f"));
        assert_eq!(
            numbers(&state),
            ["-1000.0", "7.5", "-31", "1000000000.0", "30"]
        );
        let order: Vec<String> = std::iter::from_fn(|| state.pop_to_running())
            .map(|i| i.prompt_id.clone())
            .collect();
        assert_eq!(order, ["d", "c", "f", "b", "e"]);
    }

    #[test]
    fn ties_break_on_prompt_id() {
        let mut state = QueueState::default();
        state.push(item(Priority::Counter(1), "z"));
        state.push(item(Priority::Explicit(1.0), "a"));
        assert_eq!(state.pop_to_running().unwrap().prompt_id, "a");
    }

    #[test]
    fn deleting_the_only_item_reports_twice() {
        let mut state = QueueState::default();
        state.push(item(Priority::Counter(1), "a"));
        state.push(item(Priority::Counter(2), "b"));
        assert_eq!(state.delete_pending("a"), 1);
        assert_eq!(state.delete_pending("nope"), 0);
        assert_eq!(state.delete_pending("b"), 2);
        assert_eq!(state.remaining(), 0);
    }

    #[test]
    fn history_paging_follows_comfyui() {
        let mut state = QueueState::default();
        for id in ["a", "b", "c", "d"] {
            state.finish(id, Value::Null);
        }
        state.finish("b", Value::Bool(true));
        let ids = |records: Vec<HistoryRecord>| -> Vec<String> {
            records.into_iter().map(|r| r.prompt_id).collect()
        };
        assert_eq!(ids(state.history_page(Some(2), None)), ["c", "d"]);
        assert_eq!(ids(state.history_page(Some(1), Some(0))), ["a"]);
        assert_eq!(ids(state.history_page(None, None)), ["a", "b", "c", "d"]);
        assert_eq!(*state.history_entry("b").unwrap(), Value::Bool(true));
    }
}
