//! Benchmark 2, added latency: submit -> completed through the runtime (the
//! durable store in front of one fake ComfyUI) against a client that calls
//! the same fake directly over HTTP and WebSocket, in alternating windows.
//!
//! It owns the direct ComfyUI client (one socket kept open, a prompt id
//! chosen before posting), the runtime client (`ExecuteWorkflow`, then the
//! root task's end from one `SubscribeEvents` stream, or from
//! `WatchExecution` per job, measured as an informative variant), the
//! sequential and backlog windows, and the read of the fake's history that
//! shows whether the backend idled between prompts.
//!
//! The workflow is one `TestDelay` node of 0 seconds in 1 step: an output
//! node whose only output is a UI text, so nothing is downloaded. Every job
//! of both paths sends the same prompt with a fresh `nonce`, so the fake's
//! output cache never answers one (it keys `TestDelay` by its inputs and node
//! id, as ComfyUI does) and both paths make the fake do the same work.
//!
//! Chains of 5 and 25 such nodes (each feeding the next), in windows alternating with one-node
//! jobs, give the runtime's CPU per node beyond the first: equal at both lengths when a job
//! costs in proportion to its nodes (ComfyUI's `progress_state` repeats every node so far, so a
//! runtime that read it all would cost more per node the longer the chain).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use comfy_reality::pb::admin_service_client::AdminServiceClient;
use comfy_reality::pb::event_service_client::EventServiceClient;
use comfy_reality::pb::execute_workflow_request::Workflow;
use comfy_reality::pb::execution_service_client::ExecutionServiceClient;
use comfy_reality::pb::watch_execution_response::Update;
use comfy_reality::pb::{
    BackendState, EventCategory, ExecuteWorkflowRequest, GetRuntimeInfoRequest,
    SubscribeEventsRequest, TaskEventType, TaskStatus, WatchExecutionRequest, event,
    subscribe_events_response,
};
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tonic::transport::Channel;

use crate::harness::{self, Mode, Proc, Report, StoreKind, fmt_secs, median, percentile};

/// The benchmark's name in the result table.
const BENCH: &str = "2 latency";

/// Longest wait for one job (or one backlog) before the run is declared broken.
pub(crate) const JOB_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest wait for the runtime to report its backend up.
const UP_TIMEOUT: Duration = Duration::from_secs(30);

/// The zero-duration workflow, unique by `nonce`.
pub(crate) fn workflow(nonce: u64) -> Value {
    json!({
        "1": {"class_type": "TestDelay", "inputs": {"seconds": 0.0, "steps": 1, "nonce": nonce}}
    })
}

/// Node counts of the chained workflows whose CPU per node is compared: a job's cost should
/// grow with its nodes, not with their square.
const CHAINS: [usize; 2] = [5, 25];

/// Added to chain nonces, so that no chain node repeats a one-node job's inputs.
const CHAIN_NONCES: u64 = 1 << 48;

/// `nodes` zero-duration TestDelay nodes in a chain (each feeds its `value` to the next), unique
/// by `nonce` (at most 255 nodes).
pub(crate) fn workflow_chain(nonce: u64, nodes: usize) -> Value {
    let mut graph = serde_json::Map::new();
    for k in 1..=nodes {
        let mut inputs = json!({
            "seconds": 0.0,
            "steps": 1,
            "nonce": CHAIN_NONCES + nonce * 256 + k as u64,
        });
        if k > 1 {
            inputs["value"] = json!([(k - 1).to_string(), 0]);
        }
        graph.insert(
            k.to_string(),
            json!({"class_type": "TestDelay", "inputs": inputs}),
        );
    }
    Value::Object(graph)
}

/// Progress steps of the one-node workflow whose CPU per step is measured: a sampler reports
/// 20 to 50 a node.
const STEPS: u32 = 20;

/// The fake's time scale in this benchmark: its progress throttle (ComfyUI's 0.1 s between
/// two progress messages) becomes 5 ms, longer than the runtime holds a progress write back
/// (4 ms), so that each step is a write of its own as a real sampler's is (tens of
/// milliseconds apart); a stepped node (2 s before the scale) sleeps 100 ms.
const TIME_SCALE: f64 = 0.05;

/// One TestDelay node that sleeps `0.1 * STEPS` seconds (before the fake's time scale) in
/// `steps` progress steps, each a progress message of its own, unique by `nonce`.
pub(crate) fn workflow_steps(nonce: u64, steps: u32) -> Value {
    json!({
        "1": {"class_type": "TestDelay",
              "inputs": {"seconds": 0.1 * f64::from(STEPS), "steps": steps,
                         "nonce": CHAIN_NONCES + nonce * 256}}
    })
}

/// Hands out the nonces of both paths, so that no two jobs share one.
#[derive(Debug, Default)]
pub(crate) struct Nonces {
    /// The last nonce handed out.
    last: AtomicU64,
}

impl Nonces {
    /// A nonce never handed out before.
    pub(crate) fn next(&self) -> u64 {
        self.last.fetch_add(1, Ordering::Relaxed) + 1
    }
}

// ---------------------------------------------------------------------------------------------
// A: the direct ComfyUI client
// ---------------------------------------------------------------------------------------------

/// Prompts waiting for their end, by prompt id.
type PromptWaiters = Arc<Mutex<HashMap<String, oneshot::Sender<Instant>>>>;

/// A ComfyUI client as a careful application writes one: one WebSocket kept
/// open for the whole run, a prompt id chosen and registered before posting,
/// the end of a prompt taken from `executing {node: null}`.
pub(crate) struct Direct {
    /// Keep-alive connection pool for `POST /prompt` and `GET /history`.
    http: reqwest::Client,
    /// The fake's base URL (`http://127.0.0.1:PORT`).
    base: String,
    /// The clientId of the socket, sent with every prompt.
    client_id: String,
    /// Prompts whose end the socket reader reports.
    waiters: PromptWaiters,
    /// The socket reader.
    reader: JoinHandle<()>,
}

/// When one direct job ended, measured from just before its `POST /prompt`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DirectTimes {
    /// Until `executing {node: null}` arrived.
    pub(crate) ended: f64,
    /// Until its `GET /history/{id}` (the outputs) answered.
    with_history: f64,
}

impl Direct {
    /// Opens the socket and waits for its first `status` frame (the server
    /// has registered the clientId by then).
    async fn connect(base: &str) -> Self {
        let client_id = uuid::Uuid::new_v4().simple().to_string();
        let ws_url = format!("{}/ws?clientId={client_id}", base.replacen("http", "ws", 1));
        let (mut socket, _) =
            tokio_tungstenite::connect_async_tls_with_config(ws_url, None, true, None)
                .await
                .expect("direct client: WebSocket handshake");
        match tokio::time::timeout(JOB_TIMEOUT, socket.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => {}
            other => panic!("direct client: no first status frame: {other:?}"),
        }
        let waiters: PromptWaiters = Arc::default();
        let reader = tokio::spawn(read_socket(socket, Arc::clone(&waiters)));
        Self {
            http: reqwest::Client::new(),
            base: base.to_owned(),
            client_id,
            waiters,
            reader,
        }
    }

    /// Registers a new prompt id and posts the prompt; returns the id and
    /// the receiver of its end.
    async fn post(&self, nonce: u64) -> (String, oneshot::Receiver<Instant>) {
        let prompt_id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .expect("waiters")
            .insert(prompt_id.clone(), tx);
        let body = json!({
            "prompt": workflow(nonce),
            "client_id": self.client_id,
            "prompt_id": prompt_id,
        });
        let response = self
            .http
            .post(format!("{}/prompt", self.base))
            .json(&body)
            .send()
            .await
            .expect("direct client: POST /prompt");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "direct client: POST /prompt answered {status}: {text}"
        );
        (prompt_id, rx)
    }

    /// One job: post, wait for its end, then read its outputs from history
    /// (what ComfyUI's own API example does, and what the runtime does).
    pub(crate) async fn job(&self, nonce: u64) -> DirectTimes {
        let start = Instant::now();
        let (prompt_id, rx) = self.post(nonce).await;
        let ended = wait(rx, "direct prompt").await;
        let history = self.history_one(&prompt_id).await;
        let with_history = start.elapsed().as_secs_f64();
        assert!(
            history.get(&prompt_id).is_some(),
            "direct client: no history for {prompt_id}"
        );
        DirectTimes {
            ended: (ended - start).as_secs_f64(),
            with_history,
        }
    }

    /// `GET /history/{prompt_id}`.
    pub(crate) async fn history_one(&self, prompt_id: &str) -> Value {
        self.http
            .get(format!("{}/history/{prompt_id}", self.base))
            .send()
            .await
            .expect("GET /history/{id}")
            .json()
            .await
            .expect("history JSON")
    }

    /// `GET /history?max_items=n`: the `n` newest entries, oldest first.
    async fn history_last(&self, n: usize) -> Value {
        self.http
            .get(format!("{}/history?max_items={n}", self.base))
            .send()
            .await
            .expect("GET /history")
            .json()
            .await
            .expect("history JSON")
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Reads the direct client's socket: `executing {node: null, prompt_id}`
/// ends that prompt's wait. Other frames are skipped without parsing.
async fn read_socket<S>(mut socket: S, waiters: PromptWaiters)
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    while let Some(Ok(message)) = socket.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let now = Instant::now();
        if !text.contains("\"executing\"") {
            continue;
        }
        let Ok(frame) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let data = &frame["data"];
        if frame["type"] != "executing" || !data["node"].is_null() {
            continue;
        }
        let Some(prompt_id) = data["prompt_id"].as_str() else {
            continue;
        };
        let waiter = waiters.lock().expect("waiters").remove(prompt_id);
        if let Some(tx) = waiter {
            let _ = tx.send(now);
        }
    }
}

/// Waits for one end notice, or panics after [`JOB_TIMEOUT`].
async fn wait(rx: oneshot::Receiver<Instant>, what: &str) -> Instant {
    match tokio::time::timeout(JOB_TIMEOUT, rx).await {
        Ok(Ok(at)) => at,
        Ok(Err(_)) => panic!("{what}: the reader stopped"),
        Err(_) => panic!("{what}: no end after {JOB_TIMEOUT:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// B: through the runtime
// ---------------------------------------------------------------------------------------------

/// What the event reader knows about one execution's end.
pub(crate) enum Slot {
    /// A job waits for it.
    Waiting(oneshot::Sender<(Instant, i32)>),
    /// It ended before its job asked (when, and the event type).
    Ended(Instant, i32),
}

/// Executions' ends, by execution id.
pub(crate) type EndSlots = Arc<Mutex<HashMap<String, Slot>>>;

/// One `SubscribeEvents` stream of root-task ends (COMPLETED, FAILED,
/// CANCELLED; no node events, no runtime events or metrics): how a client
/// that runs many jobs learns that each ended.
pub(crate) struct Subscription {
    /// Ends seen and ends awaited.
    pub(crate) slots: EndSlots,
    /// The stream reader.
    reader: JoinHandle<()>,
}

impl Subscription {
    /// Opens the stream (from now on).
    pub(crate) async fn open(events: &EventServiceClient<Channel>) -> Self {
        let ends = [
            TaskEventType::Completed,
            TaskEventType::Failed,
            TaskEventType::Cancelled,
        ];
        let stream = events
            .clone()
            .subscribe_events(SubscribeEventsRequest {
                event_types: ends.iter().map(|t| *t as i32).collect(),
                categories: vec![EventCategory::Task as i32],
                include_node_events: false,
                ..SubscribeEventsRequest::default()
            })
            .await
            .expect("SubscribeEvents")
            .into_inner();
        let slots: EndSlots = Arc::default();
        let reader = tokio::spawn(read_events(stream, Arc::clone(&slots)));
        Self { slots, reader }
    }

    /// Waits for the end of `execution_id`; panics unless it COMPLETED.
    pub(crate) async fn wait_end(&self, execution_id: String) -> Instant {
        let rx = {
            let mut slots = self.slots.lock().expect("slots");
            match slots.remove(&execution_id) {
                Some(Slot::Ended(at, kind)) => return completed(at, kind, &execution_id),
                _ => {
                    let (tx, rx) = oneshot::channel();
                    slots.insert(execution_id.clone(), Slot::Waiting(tx));
                    rx
                }
            }
        };
        match tokio::time::timeout(JOB_TIMEOUT, rx).await {
            Ok(Ok((at, kind))) => completed(at, kind, &execution_id),
            Ok(Err(_)) => panic!("execution {execution_id}: the event stream ended"),
            Err(_) => panic!("execution {execution_id}: no end after {JOB_TIMEOUT:?}"),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// `at`, when `kind` is COMPLETED.
fn completed(at: Instant, kind: i32, execution_id: &str) -> Instant {
    assert_eq!(
        kind,
        TaskEventType::Completed as i32,
        "execution {execution_id} did not complete"
    );
    at
}

/// Reads a subscription: each root task's end goes to its execution's slot.
async fn read_events(
    mut stream: tonic::Streaming<comfy_reality::pb::SubscribeEventsResponse>,
    slots: EndSlots,
) {
    while let Ok(Some(response)) = stream.message().await {
        let now = Instant::now();
        let Some(subscribe_events_response::Item::Event(event)) = response.item else {
            continue;
        };
        let (Some(event::Payload::TaskEvent(task_event)), Some(execution_id), false) =
            (event.payload, event.execution_id, event.node)
        else {
            continue;
        };
        let kind = task_event.event_type;
        let mut slots = slots.lock().expect("slots");
        match slots.remove(&execution_id) {
            Some(Slot::Waiting(tx)) => {
                let _ = tx.send((now, kind));
            }
            _ => {
                slots.insert(execution_id, Slot::Ended(now, kind));
            }
        }
    }
}

/// A gRPC client of the runtime: one HTTP/2 channel for every call.
pub(crate) struct RuntimeClient {
    /// ExecuteWorkflow.
    executions: ExecutionServiceClient<Channel>,
    /// SubscribeEvents and WatchExecution.
    pub(crate) events: EventServiceClient<Channel>,
}

impl RuntimeClient {
    /// Connects, then waits until the runtime reports its backend UP.
    pub(crate) async fn connect(endpoint: String) -> Self {
        let channel = Channel::from_shared(endpoint)
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to the runtime");
        let mut admin = AdminServiceClient::new(channel.clone());
        let deadline = Instant::now() + UP_TIMEOUT;
        loop {
            let info = admin
                .get_runtime_info(GetRuntimeInfoRequest {})
                .await
                .expect("GetRuntimeInfo")
                .into_inner();
            if !info.backends.is_empty()
                && info
                    .backends
                    .iter()
                    .all(|b| b.state == BackendState::Up as i32 && b.node_classes > 0)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the runtime's backend is not up after {UP_TIMEOUT:?}: {:?}",
                info.backends
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            executions: ExecutionServiceClient::new(channel.clone()),
            events: EventServiceClient::new(channel),
        }
    }

    /// `ExecuteWorkflow` with the inline workflow; returns the execution id.
    pub(crate) async fn submit(&self, nonce: u64) -> String {
        self.submit_workflow(&workflow(nonce)).await
    }

    /// `ExecuteWorkflow` with `workflow` inline; returns the execution id.
    pub(crate) async fn submit_workflow(&self, workflow: &Value) -> String {
        let request = ExecuteWorkflowRequest {
            workflow: Some(Workflow::WorkflowJson(workflow.to_string())),
            ..ExecuteWorkflowRequest::default()
        };
        self.executions
            .clone()
            .execute_workflow(request)
            .await
            .expect("ExecuteWorkflow")
            .into_inner()
            .execution
            .expect("an execution")
            .id
    }

    /// One job, its end read from `subscription`; seconds to the end.
    pub(crate) async fn job_subscribed(&self, subscription: &Subscription, nonce: u64) -> f64 {
        self.workflow_subscribed(subscription, &workflow(nonce))
            .await
    }

    /// One job of `workflow`, its end read from `subscription`; seconds to the end.
    async fn workflow_subscribed(&self, subscription: &Subscription, workflow: &Value) -> f64 {
        let start = Instant::now();
        let id = self.submit_workflow(workflow).await;
        (subscription.wait_end(id).await - start).as_secs_f64()
    }

    /// One job, its end read from `WatchExecution`; seconds to the end.
    async fn job_watched(&self, nonce: u64) -> f64 {
        let start = Instant::now();
        let id = self.submit(nonce).await;
        let mut stream = self
            .events
            .clone()
            .watch_execution(WatchExecutionRequest { id: id.clone() })
            .await
            .expect("WatchExecution")
            .into_inner();
        loop {
            let next = tokio::time::timeout(JOB_TIMEOUT, stream.message())
                .await
                .unwrap_or_else(|_| panic!("execution {id}: no end after {JOB_TIMEOUT:?}"))
                .expect("WatchExecution stream");
            let Some(update) = next.and_then(|r| r.update) else {
                panic!("execution {id}: WatchExecution closed before its end");
            };
            let Update::Execution(execution) = update else {
                // A progress step between snapshots.
                continue;
            };
            let status = execution.status;
            if status == TaskStatus::Completed as i32 {
                return start.elapsed().as_secs_f64();
            }
            assert!(
                status != TaskStatus::Failed as i32 && status != TaskStatus::Cancelled as i32,
                "execution {id} did not complete: {execution:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Windows
// ---------------------------------------------------------------------------------------------

/// Which path a window measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// A: the direct ComfyUI client.
    Direct,
    /// B: the runtime, ends from one SubscribeEvents stream.
    Subscribed,
    /// B': the runtime, ends from WatchExecution per job.
    Watched,
}

/// Everything the benchmark runs against.
pub(crate) struct Setup {
    /// The fake ComfyUI.
    pub(crate) fake: harness::Fake,
    /// The runtime in front of it.
    pub(crate) runtime: harness::Runtime,
    /// The load generator's tokio runtime.
    pub(crate) rt: tokio::runtime::Runtime,
    /// The direct client (its socket stays open for the whole run).
    pub(crate) direct: Direct,
    /// The runtime's client.
    pub(crate) client: RuntimeClient,
    /// Nonces for both paths.
    pub(crate) nonces: Nonces,
}

/// CPU seconds used so far by the runtime, the fake and this process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cpu {
    /// The runtime's.
    pub(crate) runtime: f64,
    /// The fake ComfyUI's.
    pub(crate) fake: f64,
    /// The load generator's (this process).
    pub(crate) own: f64,
}

impl Cpu {
    /// Reads all three now.
    fn now(runtime: &Proc, fake: &Proc) -> Self {
        Self {
            runtime: runtime.cpu(),
            fake: fake.cpu(),
            own: harness::own_cpu_seconds(),
        }
    }

    /// What was used since `before`.
    pub(crate) fn since(self, before: Cpu) -> Cpu {
        Cpu {
            runtime: self.runtime - before.runtime,
            fake: self.fake - before.fake,
            own: self.own - before.own,
        }
    }
}

/// One sequential window: jobs one at a time.
#[derive(Debug, Clone)]
struct Sequential {
    /// Seconds from submit to the end notice, per job.
    ended: Vec<f64>,
    /// Direct only: seconds until the history read answered, per job.
    with_history: Vec<f64>,
    /// CPU used during the window.
    cpu: Cpu,
}

/// One backlog window: every job submitted at once.
#[derive(Debug, Clone)]
struct Backlog {
    /// Seconds from the first submit to the last end.
    wall: f64,
    /// CPU used during the window.
    cpu: Cpu,
    /// How the fake spent the window.
    idle: Idle,
}

/// The fake's idle time between the prompts of a window, from its history
/// (`execution_start` and `execution_success` timestamps, in milliseconds).
#[derive(Debug, Clone, Copy, Default)]
struct Idle {
    /// Prompts found.
    prompts: usize,
    /// From the first start to the last end, in ms.
    span_ms: f64,
    /// The sum of the gaps between one prompt's end and the next one's start, in ms.
    idle_ms: f64,
    /// The largest gap, in ms.
    max_gap_ms: f64,
}

impl Idle {
    /// The share of the span the fake spent idle between prompts.
    fn fraction(&self) -> f64 {
        if self.span_ms > 0.0 {
            self.idle_ms / self.span_ms
        } else {
            0.0
        }
    }

    /// Reads it from a `GET /history` page.
    fn of(history: &Value) -> Self {
        let stamp = |messages: &[Value], name: &str| {
            messages
                .iter()
                .find(|m| m[0] == name)
                .and_then(|m| m[1]["timestamp"].as_f64())
        };
        let mut spans: Vec<(f64, f64)> = history
            .as_object()
            .map(|entries| {
                entries
                    .values()
                    .filter_map(|entry| {
                        let messages = entry["status"]["messages"].as_array()?;
                        Some((
                            stamp(messages, "execution_start")?,
                            stamp(messages, "execution_success")?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        spans.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let Some(&(first_start, first_end)) = spans.first() else {
            return Self::default();
        };
        let mut idle = Idle {
            prompts: spans.len(),
            ..Idle::default()
        };
        let mut busy_until = first_end;
        for &(start, end) in &spans[1..] {
            let gap = (start - busy_until).max(0.0);
            idle.idle_ms += gap;
            idle.max_gap_ms = idle.max_gap_ms.max(gap);
            busy_until = busy_until.max(end);
        }
        idle.span_ms = busy_until - first_start;
        idle
    }
}

impl Setup {
    /// Starts the fake and the runtime (durable store) and connects both clients.
    pub(crate) fn start() -> Self {
        // Its progress throttle 5 ms (`TIME_SCALE`). Zero-second jobs do not sleep at any
        // scale.
        let fake = harness::start_fake_scaled(TIME_SCALE);
        let runtime = harness::start_runtime(StoreKind::Sqlite, &[&fake.url], "");
        let rt = harness::client_runtime();
        let direct = rt.block_on(Direct::connect(&fake.url));
        let client = rt.block_on(RuntimeClient::connect(runtime.endpoint()));
        Self {
            fake,
            runtime,
            rt,
            direct,
            client,
            nonces: Nonces::default(),
        }
    }

    /// Closes the clients' connections first, so that the runtime's
    /// graceful shutdown has nothing to wait for, then stops both servers.
    pub(crate) fn stop(self) {
        let Setup {
            fake,
            runtime,
            rt,
            direct,
            client,
            nonces: _,
        } = self;
        drop(client);
        drop(direct);
        drop(rt);
        runtime.proc.stop();
        fake.proc.stop();
    }

    /// CPU used so far.
    pub(crate) fn cpu(&self) -> Cpu {
        Cpu::now(&self.runtime.proc, &self.fake.proc)
    }

    /// Runs `jobs` jobs one at a time through `path`.
    fn sequential(&self, path: Path, jobs: usize) -> Sequential {
        // A client opens its subscription once, before its jobs: outside the
        // measured window, and closed after it so that other windows do not
        // pay for streaming to it.
        let subscription = (path == Path::Subscribed)
            .then(|| self.rt.block_on(Subscription::open(&self.client.events)));
        let before = self.cpu();
        let (ended, with_history) = self.rt.block_on(async {
            let mut ended = Vec::with_capacity(jobs);
            let mut with_history = Vec::new();
            for _ in 0..jobs {
                let nonce = self.nonces.next();
                match (path, &subscription) {
                    (Path::Direct, _) => {
                        let times = self.direct.job(nonce).await;
                        ended.push(times.ended);
                        with_history.push(times.with_history);
                    }
                    (_, Some(subscription)) => {
                        ended.push(self.client.job_subscribed(subscription, nonce).await);
                    }
                    (_, None) => ended.push(self.client.job_watched(nonce).await),
                }
            }
            (ended, with_history)
        });
        let cpu = self.cpu().since(before);
        drop(subscription);
        Sequential {
            ended,
            with_history,
            cpu,
        }
    }

    /// Runs `jobs` jobs of a `nodes`-node chain one at a time through the runtime, their ends
    /// read from one SubscribeEvents stream.
    fn chains(&self, nodes: usize, jobs: usize) -> Sequential {
        self.jobs_of(|nonce| workflow_chain(nonce, nodes), jobs)
    }

    /// Runs `jobs` jobs of the workflows `make` builds (from a fresh nonce each) one at a time
    /// through the runtime, their ends read from one SubscribeEvents stream.
    fn jobs_of(&self, make: impl Fn(u64) -> Value, jobs: usize) -> Sequential {
        let subscription = self.rt.block_on(Subscription::open(&self.client.events));
        let before = self.cpu();
        let ended = self.rt.block_on(async {
            let mut ended = Vec::with_capacity(jobs);
            for _ in 0..jobs {
                let workflow = make(self.nonces.next());
                ended.push(
                    self.client
                        .workflow_subscribed(&subscription, &workflow)
                        .await,
                );
            }
            ended
        });
        let cpu = self.cpu().since(before);
        drop(subscription);
        Sequential {
            ended,
            with_history: Vec::new(),
            cpu,
        }
    }

    /// Submits `jobs` jobs at once through `path` (Direct or Subscribed) and
    /// waits for all of them.
    fn backlog(&self, path: Path, jobs: usize) -> Backlog {
        let subscription = (path != Path::Direct)
            .then(|| self.rt.block_on(Subscription::open(&self.client.events)));
        let before = self.cpu();
        let wall = self.rt.block_on(async {
            let start = Instant::now();
            let mut last = start;
            match &subscription {
                None => {
                    let posts = (0..jobs).map(|_| self.direct.post(self.nonces.next()));
                    for (_, rx) in futures_util::future::join_all(posts).await {
                        last = last.max(wait(rx, "direct backlog prompt").await);
                    }
                }
                Some(subscription) => {
                    let submits = (0..jobs).map(|_| self.client.submit(self.nonces.next()));
                    for id in futures_util::future::join_all(submits).await {
                        last = last.max(subscription.wait_end(id).await);
                    }
                }
            }
            (last - start).as_secs_f64()
        });
        let cpu = self.cpu().since(before);
        drop(subscription);
        let history = self.rt.block_on(self.direct.history_last(jobs));
        let idle = Idle::of(&history);
        assert_eq!(
            idle.prompts, jobs,
            "the fake's history lacks some of the backlog's prompts"
        );
        Backlog { wall, cpu, idle }
    }
}

// ---------------------------------------------------------------------------------------------
// The benchmark
// ---------------------------------------------------------------------------------------------

/// The sum of one CPU figure over windows, per job.
fn cpu_per_job(windows: &[Sequential], figure: impl Fn(&Cpu) -> f64) -> f64 {
    let jobs: usize = windows.iter().map(|w| w.ended.len()).sum();
    let cpu: f64 = windows.iter().map(|w| figure(&w.cpu)).sum();
    if jobs == 0 { 0.0 } else { cpu / jobs as f64 }
}

/// The median over pairs of `p`-th percentiles: (A's, B's, B's - A's).
pub(crate) fn paired_percentile(a: &[Vec<f64>], b: &[Vec<f64>], p: f64) -> (f64, f64, f64) {
    let a_p: Vec<f64> = a.iter().map(|w| percentile(w, p)).collect();
    let b_p: Vec<f64> = b.iter().map(|w| percentile(w, p)).collect();
    let added: Vec<f64> = a_p.iter().zip(&b_p).map(|(a, b)| b - a).collect();
    (median(&a_p), median(&b_p), median(&added))
}

/// `+X` or `-X` for an added time.
pub(crate) fn fmt_added(seconds: f64) -> String {
    if seconds >= 0.0 {
        format!("+{}", fmt_secs(seconds))
    } else {
        format!("-{}", fmt_secs(-seconds))
    }
}

/// Runs benchmark 2.
pub fn run(mode: Mode, report: &mut Report) {
    let jobs = mode.pick(3, 300);
    let backlog_jobs = mode.pick(5, 50);
    let warm = mode.pick(2, 30);
    let pairs = mode.pairs();
    println!(
        "workflow: one TestDelay(0 s, 1 step, fresh nonce); {jobs} sequential jobs per window, \
         backlog {backlog_jobs}, {pairs} pair(s)"
    );
    let setup = Setup::start();
    println!(
        "fake ComfyUI at {}, runtime (durable store) at {}; backend up",
        setup.fake.url, setup.runtime.addr
    );
    // Warm up: connections, the runtime's socket to the fake, SQLite's pages.
    for path in [Path::Direct, Path::Subscribed, Path::Watched] {
        setup.sequential(path, warm);
    }

    let mut direct = Vec::new();
    let mut subscribed = Vec::new();
    let mut watched = Vec::new();
    for pair in 0..pairs {
        let a = setup.sequential(Path::Direct, jobs);
        let b = setup.sequential(Path::Subscribed, jobs);
        let w = setup.sequential(Path::Watched, jobs);
        println!(
            "pair {pair}: p50 direct {} (+history {}), subscribed {}, watched {}; \
             runtime CPU {} / {} / {}, fake CPU {} / {} / {}, client CPU {} / {} / {}",
            fmt_secs(median(&a.ended)),
            fmt_secs(median(&a.with_history)),
            fmt_secs(median(&b.ended)),
            fmt_secs(median(&w.ended)),
            fmt_secs(a.cpu.runtime),
            fmt_secs(b.cpu.runtime),
            fmt_secs(w.cpu.runtime),
            fmt_secs(a.cpu.fake),
            fmt_secs(b.cpu.fake),
            fmt_secs(w.cpu.fake),
            fmt_secs(a.cpu.own),
            fmt_secs(b.cpu.own),
            fmt_secs(w.cpu.own),
        );
        direct.push(a);
        subscribed.push(b);
        watched.push(w);
    }
    let a_ended: Vec<Vec<f64>> = direct.iter().map(|w| w.ended.clone()).collect();
    let a_history: Vec<Vec<f64>> = direct.iter().map(|w| w.with_history.clone()).collect();
    let b_ended: Vec<Vec<f64>> = subscribed.iter().map(|w| w.ended.clone()).collect();
    let w_ended: Vec<Vec<f64>> = watched.iter().map(|w| w.ended.clone()).collect();

    let (a50, b50, added50) = paired_percentile(&a_ended, &b_ended, 50.0);
    report.add(
        BENCH,
        "added p50, submit -> completed (SubscribeEvents)",
        format!(
            "{} vs direct {} = {}",
            fmt_secs(b50),
            fmt_secs(a50),
            fmt_added(added50)
        ),
        "<= +250 µs",
        Some(added50 <= 250e-6),
    );
    let (a99, b99, added99) = paired_percentile(&a_ended, &b_ended, 99.0);
    report.add(
        BENCH,
        "added p99, submit -> completed (SubscribeEvents)",
        format!(
            "{} vs direct {} = {}",
            fmt_secs(b99),
            fmt_secs(a99),
            fmt_added(added99)
        ),
        "<= +1 ms",
        Some(added99 <= 1e-3),
    );
    let (h50, _, added_h50) = paired_percentile(&a_history, &b_ended, 50.0);
    let (h99, _, added_h99) = paired_percentile(&a_history, &b_ended, 99.0);
    report.add(
        BENCH,
        "added p50 / p99 vs a direct client that also reads /history/{id}",
        format!(
            "direct {} / {}: {} / {}",
            fmt_secs(h50),
            fmt_secs(h99),
            fmt_added(added_h50),
            fmt_added(added_h99)
        ),
        "informative",
        None,
    );
    let (_, w50, added_w50) = paired_percentile(&a_ended, &w_ended, 50.0);
    let (_, w99, added_w99) = paired_percentile(&a_ended, &w_ended, 99.0);
    report.add(
        BENCH,
        "added p50 / p99 with WatchExecution per job instead",
        format!(
            "{} / {}: {} / {}",
            fmt_secs(w50),
            fmt_secs(w99),
            fmt_added(added_w50),
            fmt_added(added_w99)
        ),
        "informative",
        None,
    );
    let runtime_cpu = cpu_per_job(&subscribed, |c| c.runtime);
    report.add(
        BENCH,
        "runtime CPU per job lifecycle (SubscribeEvents)",
        format!(
            "{} (idle during direct windows: {}/job; ComfyUI's job proxy: 0.8-1.1 ms)",
            fmt_secs(runtime_cpu),
            fmt_secs(cpu_per_job(&direct, |c| c.runtime))
        ),
        "<= 100 µs",
        Some(runtime_cpu <= 100e-6),
    );
    report.add(
        BENCH,
        "runtime CPU per job with WatchExecution per job",
        fmt_secs(cpu_per_job(&watched, |c| c.runtime)),
        "informative",
        None,
    );
    let fake_a = cpu_per_job(&direct, |c| c.fake);
    let fake_b = cpu_per_job(&subscribed, |c| c.fake);
    report.add(
        BENCH,
        "fake ComfyUI CPU per job, via runtime vs direct (+history)",
        format!(
            "{} vs {} = {:.2}x",
            fmt_secs(fake_b),
            fmt_secs(fake_a),
            if fake_a > 0.0 { fake_b / fake_a } else { 0.0 }
        ),
        "informative",
        None,
    );

    chains(&setup, mode, report);

    println!("backlog: {backlog_jobs} jobs at once");
    setup.backlog(Path::Direct, backlog_jobs);
    setup.backlog(Path::Subscribed, backlog_jobs);
    let mut wall = harness::Paired::default();
    let mut idle = harness::Paired::default();
    let mut max_gap = harness::Paired::default();
    let mut runtime_cpu = Vec::new();
    for pair in 0..pairs {
        let a = setup.backlog(Path::Direct, backlog_jobs);
        let b = setup.backlog(Path::Subscribed, backlog_jobs);
        println!(
            "pair {pair}: wall direct {}, via runtime {}; fake idle {:.1} of {:.1} ms \
             (max gap {:.0} ms) vs {:.1} of {:.1} ms (max gap {:.0} ms); runtime CPU {}",
            fmt_secs(a.wall),
            fmt_secs(b.wall),
            a.idle.idle_ms,
            a.idle.span_ms,
            a.idle.max_gap_ms,
            b.idle.idle_ms,
            b.idle.span_ms,
            b.idle.max_gap_ms,
            fmt_secs(b.cpu.runtime),
        );
        wall.push(a.wall, b.wall);
        idle.push(a.idle.fraction(), b.idle.fraction());
        max_gap.push(a.idle.max_gap_ms, b.idle.max_gap_ms);
        runtime_cpu.push(b.cpu.runtime / backlog_jobs as f64);
    }
    let ratio = wall.ratio();
    report.add(
        BENCH,
        &format!("{backlog_jobs} jobs at once, wall time via runtime vs direct"),
        format!(
            "{} vs {} = {ratio:.2}x",
            fmt_secs(wall.b_median()),
            fmt_secs(wall.a_median())
        ),
        "<= 1.1x",
        Some(ratio <= 1.1),
    );
    report.add(
        BENCH,
        "fake idle between prompts with a backlog (ms timestamps)",
        format!(
            "via runtime {:.0}% (max gap {:.0} ms) vs direct {:.0}% (max gap {:.0} ms)",
            idle.b_median() * 100.0,
            max_gap.b_median(),
            idle.a_median() * 100.0,
            max_gap.a_median()
        ),
        "never idles: max gap <= direct's (or 1 ms)",
        Some(max_gap.b_median() <= max_gap.a_median().max(1.0)),
    );
    report.add(
        BENCH,
        "runtime CPU per job with a backlog",
        fmt_secs(median(&runtime_cpu)),
        "informative",
        None,
    );
    setup.stop();
}

/// Runtime CPU per job of one-node jobs and of chains of `CHAINS` nodes, in alternating
/// windows; the CPU per node beyond the first, at the short and at the long chain.
fn chains(setup: &Setup, mode: Mode, report: &mut Report) {
    let jobs = mode.pick(2, 60);
    let [short, long] = CHAINS;
    println!("chains: 1, {short} and {long} TestDelay nodes, {jobs} sequential jobs per window");
    for nodes in CHAINS {
        setup.chains(nodes, mode.pick(1, 5));
    }
    setup.jobs_of(|nonce| workflow_steps(nonce, STEPS), mode.pick(1, 5));
    let mut one = Vec::new();
    let mut per_node = harness::Paired::default();
    let mut per_job = [Vec::new(), Vec::new()];
    let mut per_step = Vec::new();
    for pair in 0..mode.pairs() {
        let base = setup.sequential(Path::Subscribed, jobs);
        let base_cpu = base.cpu.runtime / jobs as f64;
        let mut cpus = [0.0; 2];
        for (i, nodes) in CHAINS.into_iter().enumerate() {
            let window = setup.chains(nodes, jobs);
            cpus[i] = window.cpu.runtime / jobs as f64;
            per_job[i].push(cpus[i]);
        }
        // Two nodes of the same length, one of `STEPS` steps and one of 2: the runtime's CPU
        // while they sleep is the same in both.
        let stepped = setup.jobs_of(|nonce| workflow_steps(nonce, STEPS), jobs);
        let stepped_cpu = stepped.cpu.runtime / jobs as f64;
        let two = setup.jobs_of(|nonce| workflow_steps(nonce, 2), jobs);
        let two_cpu = two.cpu.runtime / jobs as f64;
        // The nodes beyond the first: what a job's size adds to it.
        let node = |cpu: f64, nodes: usize| (cpu - base_cpu).max(0.0) / (nodes - 1) as f64;
        println!(
            "pair {pair}: runtime CPU per job, 1 / {short} / {long} nodes: {} / {} / {}; \
             1 node of 2 / {STEPS} steps: {} / {}",
            fmt_secs(base_cpu),
            fmt_secs(cpus[0]),
            fmt_secs(cpus[1]),
            fmt_secs(two_cpu),
            fmt_secs(stepped_cpu),
        );
        one.push(base_cpu);
        per_node.push(node(cpus[0], short), node(cpus[1], long));
        // What each progress step of a sampler adds to a job.
        per_step.push((stepped_cpu - two_cpu).max(0.0) / f64::from(STEPS - 2));
    }
    report.add(
        BENCH,
        &format!("runtime CPU per job, 1 / {short} / {long}-node chain (SubscribeEvents)"),
        format!(
            "{} / {} / {}",
            fmt_secs(median(&one)),
            fmt_secs(median(&per_job[0])),
            fmt_secs(median(&per_job[1]))
        ),
        "informative",
        None,
    );
    report.add(
        BENCH,
        &format!("runtime CPU per node beyond the first, {long}-node vs {short}-node chain"),
        format!(
            "{} vs {} = {:.2}x",
            fmt_secs(per_node.b_median()),
            fmt_secs(per_node.a_median()),
            per_node.ratio()
        ),
        "informative: linear in nodes is 1x",
        None,
    );
    report.add(
        BENCH,
        &format!(
            "runtime CPU per progress step, one node of {STEPS} vs 2 steps (5 ms apart or more)"
        ),
        fmt_secs(median(&per_step)),
        "informative",
        None,
    );
}
