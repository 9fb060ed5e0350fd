//! The fake's worker: runs one prompt at a time in queue order and emits
//! exactly the messages ComfyUI's `prompt_worker` and `PromptExecutor` emit,
//! in their order:
//!
//! `status` (picked up) → `execution_start` → `execution_cached` → for
//! each node: `progress_state` running → `executing` → (`progress_state`,
//! `progress`, binary frames)* → `executed` → `progress_state` finished;
//! then one of `execution_success`, `execution_error`,
//! `execution_interrupted` → history written → `status` →
//! `executing {node: null}`.
//!
//! Nodes run in ComfyUI's `ExecutionList` order (output nodes first when
//! ready); unchanged nodes are served from an output cache keyed like
//! ComfyUI's input signatures, and cached output nodes re-send their UI.
//! Interrupts are honoured before every node, on every progress update and
//! during TestDelay sleeps. A restart or shutdown stops a run silently.
//!
//! The run (`Run`) is split by what it does: `graph` orders the nodes and
//! computes their cache keys, `cache` keeps results across prompts,
//! `run_node` runs one node, and `progress` sends what a run reports while
//! it works.

mod cache;
mod graph;
mod progress;
mod run_node;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::hub::Target;
use crate::nodes::{PyException, catalog};
use crate::pyjson::object;
use crate::queue::QueueItem;
use crate::shared::Shared;

use cache::{CacheEntry, OutputCache};
use graph::{ExecutionList, signatures};
use progress::NodeProgress;

/// Epoch milliseconds, as ComfyUI's `int(time.time() * 1000)`.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The worker loop: picks prompts until `cancel` fires.
pub(crate) async fn run_worker(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut cache = OutputCache::default();
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let flags = std::mem::take(&mut shared.lock().flags);
        if flags.free_memory {
            cache.clear();
        }
        let item = {
            let mut state = shared.lock();
            let item = state.pop_to_running();
            if item.is_some() {
                shared.interrupt.send_replace(false);
                shared.broadcast_status(&state);
            }
            item
        };
        let Some(item) = item else {
            tokio::select! {
                _ = shared.wake.notified() => continue,
                _ = cancel.cancelled() => return,
            }
        };
        let mut run = Run::new(&shared, &item, &cancel, &mut cache);
        let Some(result) = run.execute().await else {
            return;
        };
        let target = run.target.clone();
        let entry = object([
            ("prompt", item.tuple.clone()),
            ("outputs", result.outputs),
            (
                "status",
                object([
                    (
                        "status_str",
                        Value::String(if result.success { "success" } else { "error" }.to_owned()),
                    ),
                    ("completed", Value::Bool(result.success)),
                    ("messages", Value::Array(result.messages)),
                ]),
            ),
            ("meta", result.meta),
        ]);
        {
            let mut state = shared.lock();
            if cancel.is_cancelled() {
                return;
            }
            state.finish(&item.prompt_id, entry);
            shared.broadcast_status(&state);
        }
        if target.has_client() {
            shared.hub.send_json(
                "executing",
                object([
                    ("node", Value::Null),
                    ("prompt_id", Value::String(item.prompt_id.clone())),
                ]),
                &target,
            );
        }
    }
}

/// What a finished run leaves for the history.
struct RunResult {
    /// Whether it ended in `execution_success`.
    success: bool,
    /// `status.messages`.
    messages: Vec<Value>,
    /// History `outputs`.
    outputs: Value,
    /// History `meta`.
    meta: Value,
}

/// Why a node did not finish.
enum NodeFailure {
    /// The interrupt flag was seen.
    Interrupted,
    /// The fake restarts or shuts down: stop without a word.
    Aborted,
    /// The node raised; `current_inputs` are attached.
    Raised(Box<Raised>),
}

/// A node's exception with the inputs it was called with.
struct Raised {
    /// The exception.
    exception: PyException,
    /// `current_inputs` of the `execution_error`.
    current_inputs: Value,
}

impl From<PyException> for NodeFailure {
    fn from(ex: PyException) -> Self {
        NodeFailure::Raised(Box::new(Raised {
            exception: ex,
            current_inputs: Value::Object(Map::new()),
        }))
    }
}

/// One prompt being executed.
struct Run<'a> {
    /// The fake's shared state (hub, settings, tracker).
    shared: &'a Arc<Shared>,
    /// The prompt being run.
    item: &'a QueueItem,
    /// Fires on restart or shutdown.
    cancel: &'a CancellationToken,
    /// The worker's output cache.
    cache: &'a mut OutputCache,
    /// Where per-prompt messages go.
    target: Target,
    /// `status.messages` so far.
    messages: Vec<Value>,
    /// The cumulative `progress_state`, in first-touch order.
    progress: Vec<(String, NodeProgress)>,
    /// Nodes that ran (not cached), in order.
    executed: Vec<String>,
    /// `ui_outputs`: node → (meta, output), Python dict order.
    ui_outputs: Vec<(String, Value, Value)>,
    /// Results available to this run, by node id.
    results: HashMap<String, Arc<CacheEntry>>,
    /// Input signature of every node.
    signatures: HashMap<String, u64>,
    /// The interrupt flag.
    interrupt: watch::Receiver<bool>,
}

impl<'a> Run<'a> {
    /// A run of `item` with the worker's cache.
    fn new(
        shared: &'a Arc<Shared>,
        item: &'a QueueItem,
        cancel: &'a CancellationToken,
        cache: &'a mut OutputCache,
    ) -> Self {
        Self {
            shared,
            item,
            cancel,
            cache,
            target: Target::for_client_id(item.client_id()),
            messages: Vec::new(),
            progress: Vec::new(),
            executed: Vec::new(),
            ui_outputs: Vec::new(),
            results: HashMap::new(),
            signatures: HashMap::new(),
            interrupt: shared.interrupt.subscribe(),
        }
    }

    /// The prompt id, as a JSON string.
    fn prompt_id(&self) -> Value {
        Value::String(self.item.prompt_id.clone())
    }

    /// `add_message`: records the event for the history and sends it when
    /// the prompt has a client (or when `broadcast`).
    fn add_message(&mut self, event: &str, mut data: Map<String, Value>, broadcast: bool) {
        data.insert("timestamp".to_owned(), Value::from(now_ms()));
        let data = Value::Object(data);
        self.messages.push(Value::Array(vec![
            Value::String(event.to_owned()),
            data.clone(),
        ]));
        if self.target.has_client() || broadcast {
            self.shared.hub.send_json(event, data, &self.target);
        }
    }

    /// Sends a per-prompt message only when the prompt has a client.
    fn send_to_client(&self, event: &str, data: Value) {
        if self.target.has_client() {
            self.shared.hub.send_json(event, data, &self.target);
        }
    }

    /// Runs the prompt; `None` when a restart or shutdown stopped it.
    async fn execute(&mut self) -> Option<RunResult> {
        self.shared.hub.set_client(self.item.client_id());
        let mut start = Map::new();
        start.insert("prompt_id".to_owned(), self.prompt_id());
        self.add_message("execution_start", start, false);

        self.signatures = signatures(&self.item.prompt, self.shared);
        let cached_nodes: Vec<Value> = self
            .item
            .prompt
            .keys()
            .filter(|id| {
                self.signatures
                    .get(*id)
                    .is_some_and(|s| self.cache.get(*s).is_some())
            })
            .map(|id| Value::String(id.clone()))
            .collect();
        let mut cached = Map::new();
        cached.insert("nodes".to_owned(), Value::Array(cached_nodes));
        cached.insert("prompt_id".to_owned(), self.prompt_id());
        self.add_message("execution_cached", cached, false);

        let mut list = ExecutionList::default();
        {
            let results = std::cell::RefCell::new(&mut self.results);
            let cache = &*self.cache;
            let signatures = &self.signatures;
            let is_cached = |id: &str| -> bool {
                let entry = signatures.get(id).and_then(|s| cache.get(*s));
                match entry {
                    Some(entry) => {
                        results.borrow_mut().insert(id.to_owned(), entry);
                        true
                    }
                    None => false,
                }
            };
            for output in &self.item.outputs {
                list.add_node(&self.item.prompt, output, &is_cached);
            }
        }

        let item: &QueueItem = self.item;
        let prompt = &item.prompt;
        let is_output = |id: &str| -> bool {
            prompt
                .get(id)
                .and_then(|n| n.get("class_type"))
                .and_then(Value::as_str)
                .and_then(|c| catalog().get(c))
                .is_some_and(|s| s.output_node)
        };
        let mut success = true;
        while !list.pending.is_empty() {
            let Some(node) = list.stage(&is_output) else {
                success = false;
                let ex = PyException {
                    exception_type: "comfy_execution.graph.DependencyCycleError".to_owned(),
                    message: "Dependency cycle detected".to_owned(),
                    traceback: Vec::new(),
                };
                let node = list.pending.first().cloned().unwrap_or_default();
                self.report_failure(&node, NodeFailure::from(ex));
                break;
            };
            match self.execute_node(&node).await {
                Ok(()) => list.complete(&node),
                Err(NodeFailure::Aborted) => return None,
                Err(failure) => {
                    success = false;
                    self.report_failure(&node, failure);
                    break;
                }
            }
        }
        if self.cancel.is_cancelled() {
            return None;
        }
        if success {
            let mut done = Map::new();
            done.insert("prompt_id".to_owned(), self.prompt_id());
            self.add_message("execution_success", done, false);
        }
        self.shared.hub.set_last_node(None);
        let mut outputs = Map::new();
        let mut meta = Map::new();
        for (node, node_meta, output) in std::mem::take(&mut self.ui_outputs) {
            outputs.insert(node.clone(), output);
            meta.insert(node, node_meta);
        }
        Some(RunResult {
            success,
            messages: std::mem::take(&mut self.messages),
            outputs: Value::Object(outputs),
            meta: Value::Object(meta),
        })
    }

    /// `handle_execution_error`.
    fn report_failure(&mut self, node: &str, failure: NodeFailure) {
        let class_type = self
            .item
            .prompt
            .get(node)
            .and_then(|n| n.get("class_type"))
            .cloned()
            .unwrap_or(Value::Null);
        let executed = Value::Array(self.executed.iter().cloned().map(Value::String).collect());
        let mut data = Map::new();
        data.insert("prompt_id".to_owned(), self.prompt_id());
        data.insert("node_id".to_owned(), Value::String(node.to_owned()));
        data.insert("node_type".to_owned(), class_type);
        data.insert("executed".to_owned(), executed);
        match failure {
            NodeFailure::Interrupted | NodeFailure::Aborted => {
                self.add_message("execution_interrupted", data, true);
            }
            NodeFailure::Raised(raised) => {
                let Raised {
                    exception: ex,
                    current_inputs,
                } = *raised;
                data.insert(
                    "exception_message".to_owned(),
                    Value::String(format!("{}\n", ex.message)),
                );
                data.insert(
                    "exception_type".to_owned(),
                    Value::String(ex.exception_type),
                );
                data.insert(
                    "traceback".to_owned(),
                    Value::Array(ex.traceback.into_iter().map(Value::String).collect()),
                );
                data.insert("current_inputs".to_owned(), current_inputs);
                data.insert(
                    "current_outputs".to_owned(),
                    Value::Array(
                        self.item
                            .prompt
                            .keys()
                            .cloned()
                            .map(Value::String)
                            .collect(),
                    ),
                );
                self.add_message("execution_error", data, false);
            }
        }
    }
}
