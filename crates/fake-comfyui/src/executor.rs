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

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::hub::Target;
use super::image::{self, PngLayout};
use super::nodes::{
    self, Datum, NodeInputs, NodeKind, NodeOutcome, NodeSpec, PyException, Site, catalog,
};
use super::pyjson::{self, object};
use super::queue::QueueItem;
use super::shared::Shared;

/// How many node results the output cache keeps.
const CACHE_LIMIT: usize = 1024;

/// The binary event of a plain preview image.
const PREVIEW_IMAGE: u32 = 1;
/// The binary event of a progress text.
const TEXT: u32 = 3;
/// The binary event of a preview with metadata.
const PREVIEW_IMAGE_WITH_METADATA: u32 = 4;

/// Epoch milliseconds, as ComfyUI's `int(time.time() * 1000)`.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A node's cached result.
#[derive(Debug)]
struct CacheEntry {
    /// One value per output slot.
    outputs: Vec<Datum>,
    /// `{"meta": …, "output": …}` when the node has a UI.
    ui: Option<(Value, Value)>,
}

/// ComfyUI's output cache, keyed by input signature, oldest evicted first.
#[derive(Debug, Default)]
struct OutputCache {
    /// Entries by signature.
    entries: HashMap<u64, Arc<CacheEntry>>,
    /// Signatures in insertion order, for eviction.
    order: VecDeque<u64>,
}

impl OutputCache {
    fn get(&self, signature: u64) -> Option<Arc<CacheEntry>> {
        self.entries.get(&signature).cloned()
    }

    fn insert(&mut self, signature: u64, entry: Arc<CacheEntry>) {
        if self.entries.insert(signature, entry).is_none() {
            self.order.push_back(signature);
        }
        while self.order.len() > CACHE_LIMIT {
            if let Some(old) = self.order.pop_front() {
                self.entries.remove(&old);
            }
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }
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

/// One node's entry in the cumulative `progress_state`.
#[derive(Debug, Clone)]
struct NodeProgress {
    /// Progress so far (`0.0` when started, then what the node reported).
    value: Value,
    /// Progress total (`1.0` when started, then what the node reported).
    max: Value,
    /// `pending`, `running` or `finished`.
    state: &'static str,
}

/// `ExecutionList`: which node runs next.
#[derive(Debug, Default)]
struct ExecutionList {
    /// Nodes still to run, in insertion order.
    pending: Vec<String>,
    /// How many pending nodes each node waits for.
    block_count: HashMap<String, usize>,
    /// Which nodes each node blocks, in insertion order.
    blocking: HashMap<String, Vec<String>>,
}

/// `is_link` of ComfyUI's graph utilities.
fn as_link(value: &Value) -> Option<(&str, &Value)> {
    match value {
        Value::Array(items) if items.len() == 2 => match (&items[0], &items[1]) {
            (Value::String(id), slot @ Value::Number(_)) => Some((id.as_str(), slot)),
            _ => None,
        },
        _ => None,
    }
}

impl ExecutionList {
    /// `add_node`: the node and, depth first, its uncached inputs.
    fn add_node(&mut self, prompt: &Map<String, Value>, node: &str, cached: &dyn Fn(&str) -> bool) {
        let mut stack = vec![node.to_owned()];
        let mut links = Vec::new();
        while let Some(id) = stack.pop() {
            if self.pending.contains(&id) {
                continue;
            }
            self.pending.push(id.clone());
            self.block_count.insert(id.clone(), 0);
            self.blocking.insert(id.clone(), Vec::new());
            let Some(Value::Object(inputs)) = prompt.get(&id).and_then(|n| n.get("inputs")) else {
                continue;
            };
            for value in inputs.values() {
                if let Some((from, _)) = as_link(value) {
                    if !prompt.contains_key(from) {
                        continue;
                    }
                    if !cached(from) {
                        stack.push(from.to_owned());
                    }
                    links.push((from.to_owned(), id.clone()));
                }
            }
        }
        for (from, to) in links {
            if cached(&from) {
                continue;
            }
            if !self.pending.contains(&from) {
                self.add_node(prompt, &from, cached);
            }
            let blocked = self.blocking.entry(from).or_default();
            if !blocked.contains(&to) {
                blocked.push(to.clone());
                *self.block_count.entry(to).or_default() += 1;
            }
        }
    }

    /// `stage_node_execution` with `ux_friendly_pick_node`.
    fn stage(&self, is_output: &dyn Fn(&str) -> bool) -> Option<String> {
        let ready: Vec<&String> = self
            .pending
            .iter()
            .filter(|id| self.block_count.get(*id).copied().unwrap_or(0) == 0)
            .collect();
        if let Some(id) = ready.iter().find(|id| is_output(id)) {
            return Some((*id).clone());
        }
        let blocks =
            |id: &str| -> &[String] { self.blocking.get(id).map(Vec::as_slice).unwrap_or(&[]) };
        if let Some(id) = ready
            .iter()
            .find(|id| blocks(id).iter().any(|b| is_output(b)))
        {
            return Some((*id).clone());
        }
        if let Some(id) = ready.iter().find(|id| {
            blocks(id)
                .iter()
                .any(|b| blocks(b).iter().any(|c| is_output(c)))
        }) {
            return Some((*id).clone());
        }
        ready.first().map(|id| (*id).clone())
    }

    /// `complete_node_execution`.
    fn complete(&mut self, node: &str) {
        self.pending.retain(|id| id != node);
        for blocked in self.blocking.remove(node).unwrap_or_default() {
            if let Some(count) = self.block_count.get_mut(&blocked) {
                *count = count.saturating_sub(1);
            }
        }
    }
}

/// The input signature of every node of a prompt (ComfyUI's cache key):
/// its class, its literal inputs and its inputs' signatures, plus the node
/// id for nodes with a hidden `UNIQUE_ID`. Computed bottom-up without
/// recursion, so deep or cyclic (unvalidated) parts cannot exhaust the stack.
fn signatures(prompt: &Map<String, Value>, shared: &Shared) -> HashMap<String, u64> {
    let links_of = |id: &str| -> Vec<String> {
        match prompt.get(id).and_then(|n| n.get("inputs")) {
            Some(Value::Object(inputs)) => inputs
                .values()
                .filter_map(as_link)
                .map(|(from, _)| from.to_owned())
                .filter(|from| prompt.contains_key(from))
                .collect(),
            _ => Vec::new(),
        }
    };
    let mut memo: HashMap<String, u64> = HashMap::new();
    for root in prompt.keys() {
        let mut on_path: HashSet<String> = HashSet::new();
        let mut stack: Vec<(String, bool)> = vec![(root.clone(), false)];
        while let Some((id, expanded)) = stack.pop() {
            if memo.contains_key(&id) {
                continue;
            }
            if expanded {
                let signature = node_signature(prompt, &id, &memo, shared);
                memo.insert(id.clone(), signature);
                on_path.remove(&id);
                continue;
            }
            if !on_path.insert(id.clone()) {
                continue;
            }
            stack.push((id.clone(), true));
            for from in links_of(&id) {
                if !memo.contains_key(&from) && !on_path.contains(&from) {
                    stack.push((from, false));
                }
            }
        }
    }
    memo
}

/// One node's signature, given its inputs' (a missing one closes a cycle).
fn node_signature(
    prompt: &Map<String, Value>,
    id: &str,
    memo: &HashMap<String, u64>,
    shared: &Shared,
) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    let Some(node) = prompt.get(id) else {
        "missing".hash(&mut hasher);
        return hasher.finish();
    };
    let class_type = node
        .get("class_type")
        .map(pyjson::dumps)
        .unwrap_or_default();
    class_type.hash(&mut hasher);
    let spec = node
        .get("class_type")
        .and_then(Value::as_str)
        .and_then(|c| catalog().get(c));
    if spec.is_some_and(NodeSpec::keyed_by_node_id) {
        id.hash(&mut hasher);
    }
    if spec.is_some_and(|s| s.kind == NodeKind::SaveImageWebsocket) {
        // Its IS_CHANGED returns time.time(): it never comes from the cache.
        uuid::Uuid::new_v4().hash(&mut hasher);
    }
    if let Some(Value::Object(inputs)) = node.get("inputs") {
        let mut names: Vec<&String> = inputs.keys().collect();
        names.sort();
        for name in names {
            name.hash(&mut hasher);
            let value = &inputs[name.as_str()];
            match as_link(value) {
                Some((from, slot)) => {
                    "link".hash(&mut hasher);
                    match memo.get(from) {
                        Some(signature) => signature.hash(&mut hasher),
                        None => ("cycle", from).hash(&mut hasher),
                    }
                    slot.to_string().hash(&mut hasher);
                }
                None => pyjson::dumps(value).hash(&mut hasher),
            }
            if spec.is_some_and(|s| s.kind == NodeKind::LoadImage) && name == "image" {
                nodes::load_image_fingerprint(value, &shared.dirs).hash(&mut hasher);
            }
        }
    }
    hasher.finish()
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

    /// Sends the cumulative `progress_state`.
    fn send_progress_state(&self) {
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
    fn progress_entry(&mut self, node: &str) -> &mut NodeProgress {
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

    fn start_progress(&mut self, node: &str) {
        let entry = self.progress_entry(node);
        entry.state = "running";
        entry.value = pyjson::float_number(0.0);
        entry.max = pyjson::float_number(1.0);
        self.send_progress_state();
    }

    fn finish_progress(&mut self, node: &str) {
        let entry = self.progress_entry(node);
        entry.state = "finished";
        entry.value = entry.max.clone();
        self.send_progress_state();
    }

    /// Whether the interrupt flag is up.
    fn interrupted(&self) -> bool {
        *self.interrupt.borrow()
    }

    /// The ProgressBar hook: interrupt check, `progress_state`, then
    /// `progress` with the preview frame in the order the client negotiated.
    fn progress_update(
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
    fn progress_text(&self, node: &str, text: &str) {
        let mut frame = Vec::with_capacity(8 + node.len() + text.len());
        frame.extend_from_slice(&TEXT.to_be_bytes());
        frame.extend_from_slice(&(node.len() as u32).to_be_bytes());
        frame.extend_from_slice(node.as_bytes());
        frame.extend_from_slice(text.as_bytes());
        self.shared.hub.send_binary(frame, &Target::All);
    }

    /// `get_input_data`: the node's declared inputs (links resolved from
    /// this run's results) and its hidden inputs.
    fn gather_inputs(&self, node: &str, spec: &NodeSpec) -> NodeInputs {
        let mut values = Vec::new();
        if let Some(Value::Object(inputs)) =
            self.item.prompt.get(node).and_then(|n| n.get("inputs"))
        {
            for (name, value) in inputs {
                if let Some((from, slot)) = as_link(value) {
                    let datum = slot
                        .as_u64()
                        .and_then(|slot| {
                            self.results
                                .get(from)
                                .and_then(|r| r.outputs.get(slot as usize).cloned())
                        })
                        .unwrap_or(Datum::Json(Value::Null));
                    values.push((name.clone(), datum));
                } else if spec.input(name).is_some() {
                    values.push((name.clone(), Datum::Json(value.clone())));
                }
            }
        }
        for (name, kind) in &spec.hidden {
            let value = match kind.as_str() {
                "UNIQUE_ID" => Value::String(node.to_owned()),
                "PROMPT" => Value::Object(self.item.prompt.clone()),
                "EXTRA_PNGINFO" => self
                    .item
                    .extra_data
                    .get("extra_pnginfo")
                    .cloned()
                    .unwrap_or(Value::Null),
                "AUTH_TOKEN_COMFY_ORG" => self
                    .item
                    .sensitive
                    .get("auth_token_comfy_org")
                    .cloned()
                    .unwrap_or(Value::Null),
                "API_KEY_COMFY_ORG" => self
                    .item
                    .sensitive
                    .get("api_key_comfy_org")
                    .cloned()
                    .unwrap_or(Value::Null),
                _ => Value::Null,
            };
            values.push((name.clone(), Datum::Json(value)));
        }
        NodeInputs { values }
    }

    /// Runs (or serves from the cache) one staged node.
    async fn execute_node(&mut self, node: &str) -> Result<(), NodeFailure> {
        let spec = self
            .item
            .prompt
            .get(node)
            .and_then(|n| n.get("class_type"))
            .and_then(Value::as_str)
            .and_then(|c| catalog().get(c))
            .ok_or_else(|| {
                NodeFailure::from(PyException::new(
                    "KeyError",
                    format!("'{node}'"),
                    "execution.py",
                    530,
                    "execute",
                ))
            })?;
        let signature = self.signatures.get(node).copied().unwrap_or_default();
        if let Some(entry) = self.cache.get(signature) {
            if let Some((meta, output)) = &entry.ui {
                self.send_to_client(
                    "executed",
                    object([
                        ("node", Value::String(node.to_owned())),
                        ("display_node", Value::String(node.to_owned())),
                        ("output", output.clone()),
                        ("prompt_id", self.prompt_id()),
                    ]),
                );
                self.record_ui(node, meta.clone(), output.clone());
            }
            self.finish_progress(node);
            self.results.insert(node.to_owned(), entry);
            return Ok(());
        }

        self.start_progress(node);
        let inputs = self.gather_inputs(node, spec);
        if self.target.has_client() {
            self.shared.hub.set_last_node(Some(node.to_owned()));
            self.send_to_client(
                "executing",
                object([
                    ("node", Value::String(node.to_owned())),
                    ("display_node", Value::String(node.to_owned())),
                    ("prompt_id", self.prompt_id()),
                ]),
            );
        }
        if self.interrupted() {
            return Err(NodeFailure::Interrupted);
        }
        let outcome = match spec.kind {
            NodeKind::TestDelay => self.test_delay(node, &inputs).await,
            NodeKind::SaveImageWebsocket => self.save_image_websocket(node, &inputs).await,
            kind => self.run_computing(kind, &inputs).await,
        };
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(NodeFailure::Raised(mut raised)) => {
                raised.current_inputs = inputs.formatted();
                return Err(NodeFailure::Raised(raised));
            }
            Err(other) => return Err(other),
        };
        let ui = outcome.ui.filter(|ui| !ui.is_empty()).map(|ui| {
            let meta = object([
                ("node_id", Value::String(node.to_owned())),
                ("display_node", Value::String(node.to_owned())),
                ("parent_node", Value::Null),
                ("real_node_id", Value::String(node.to_owned())),
            ]);
            (meta, Value::Object(ui))
        });
        if let Some((meta, output)) = &ui {
            self.record_ui(node, meta.clone(), output.clone());
            self.send_to_client(
                "executed",
                object([
                    ("node", Value::String(node.to_owned())),
                    ("display_node", Value::String(node.to_owned())),
                    ("output", output.clone()),
                    ("prompt_id", self.prompt_id()),
                ]),
            );
        }
        let entry = Arc::new(CacheEntry {
            outputs: outcome.outputs,
            ui,
        });
        self.cache.insert(signature, entry.clone());
        self.results.insert(node.to_owned(), entry);
        self.finish_progress(node);
        self.executed.push(node.to_owned());
        Ok(())
    }

    /// `ui_outputs[node] = …` (an existing key keeps its place).
    fn record_ui(&mut self, node: &str, meta: Value, output: Value) {
        match self.ui_outputs.iter_mut().find(|(id, _, _)| id == node) {
            Some(slot) => {
                slot.1 = meta;
                slot.2 = output;
            }
            None => self.ui_outputs.push((node.to_owned(), meta, output)),
        }
    }

    /// Runs a computing node on a blocking thread.
    async fn run_computing(
        &self,
        kind: NodeKind,
        inputs: &NodeInputs,
    ) -> Result<NodeOutcome, NodeFailure> {
        let env = nodes::NodeEnv {
            dirs: self.shared.dirs.clone(),
            prompt: Value::Object(self.item.prompt.clone()),
            extra_pnginfo: self.item.extra_data.get("extra_pnginfo").cloned(),
        };
        let inputs = inputs.clone();
        let task = self
            .shared
            .tracker
            .spawn_blocking(move || nodes::run_computing(kind, &inputs, &env));
        tokio::select! {
            joined = task => match joined {
                Ok(result) => result.map_err(NodeFailure::from),
                Err(_) => Err(NodeFailure::from(PyException::new(
                    "RuntimeError",
                    "node crashed",
                    "execution.py",
                    306,
                    "process_inputs",
                ))),
            },
            _ = self.cancel.cancelled() => Err(NodeFailure::Aborted),
        }
    }

    /// The ProgressBar throttle interval, scaled like the sleeps.
    fn throttle(&self) -> Duration {
        Duration::try_from_secs_f64(0.1 * self.shared.settings.time_scale).unwrap_or(Duration::MAX)
    }

    /// TestDelay: sleeps `seconds * time_scale` in `steps` progress steps.
    async fn test_delay(
        &mut self,
        node: &str,
        inputs: &NodeInputs,
    ) -> Result<NodeOutcome, NodeFailure> {
        let at = Site {
            file: "custom_nodes/zz_test_nodes.py",
            line: 41,
            function: "run",
        };
        let seconds = inputs.float("seconds", at)?;
        let steps = inputs.int("steps", at)?.max(1);
        let progress_text =
            matches!(inputs.get("progress_text"), Some(Datum::Json(v)) if pyjson::truthy(v));
        let value = match inputs.get("value") {
            Some(Datum::Json(v @ Value::Number(_))) => v.clone(),
            _ => Value::from(0),
        };
        let total = seconds * self.shared.settings.time_scale;
        let total = if total.is_finite() {
            total.clamp(0.0, 86_400.0)
        } else {
            0.0
        };
        let step = Duration::try_from_secs_f64(total / steps as f64).unwrap_or_default();
        let throttle = self.throttle();
        let start = Instant::now();
        let mut interrupt = self.interrupt.clone();
        let mut last_sent: Option<(Instant, i64)> = None;
        for i in 1..=steps {
            let deadline = start + step.mul_f64(i as f64);
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = interrupt.wait_for(|on| *on) => return Err(NodeFailure::Interrupted),
                _ = self.cancel.cancelled() => return Err(NodeFailure::Aborted),
            }
            // Throttle on the scheduled step times rather than the clock, so
            // a busy machine sees the same messages as an idle one.
            let due = match last_sent {
                None => true,
                Some(_) if i >= steps => true,
                Some((at, value)) => {
                    deadline.duration_since(at) >= throttle
                        && (i - value) as f64 / steps as f64 >= 0.005
                }
            };
            if due {
                self.progress_update(node, i, steps, None)?;
                last_sent = Some((deadline, i));
            }
            if progress_text {
                self.progress_text(node, &format!("step {i}/{steps}"));
            }
        }
        let mut ui = Map::new();
        ui.insert(
            "text".to_owned(),
            Value::Array(vec![Value::String(format!(
                "slept {}s in {steps} steps",
                pyjson::float_repr(seconds)
            ))]),
        );
        Ok(NodeOutcome {
            outputs: vec![Datum::Json(value)],
            ui: Some(ui),
        })
    }

    /// SaveImageWebsocket: one progress step with a PNG preview per image.
    async fn save_image_websocket(
        &mut self,
        node: &str,
        inputs: &NodeInputs,
    ) -> Result<NodeOutcome, NodeFailure> {
        let at = Site {
            file: "custom_nodes/websocket_image_save.py",
            line: 29,
            function: "save_images",
        };
        let images = inputs.image("images", at)?;
        let total = images.frames.len() as i64;
        for step in 0..images.frames.len() {
            let batch = images.clone();
            let task = self.shared.tracker.spawn_blocking(move || {
                image::encode_png(
                    batch.width,
                    batch.height,
                    PngLayout::Rgb,
                    &batch.frames[step],
                    &[],
                    true,
                )
            });
            let png = tokio::select! {
                joined = task => match joined {
                    Ok(Ok(png)) => png,
                    Ok(Err(message)) => return Err(at.raise("OSError", message).into()),
                    Err(_) => return Err(at.raise("RuntimeError", "encoder crashed").into()),
                },
                _ = self.cancel.cancelled() => return Err(NodeFailure::Aborted),
            };
            self.progress_update(node, step as i64, total, Some(&png))?;
        }
        Ok(NodeOutcome::default())
    }
}
