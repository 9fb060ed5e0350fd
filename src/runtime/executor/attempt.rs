//! One attempt of one execution on one backend: post the prompt (never with
//! `front`), follow its events, keep the NODE tasks and the execution's
//! progress up to date (a progress step is written as its event, the
//! records at most every `RECORD_EVERY`), enforce the running-time limit and the stall
//! detector, download the artifacts, and report to the actor.
//!
//! The actor decides everything about the execution's status; the attempt
//! only reports facts ([`Msg::Posted`], [`Msg::Started`], [`Msg::Finished`];
//! a failed post is a [`Msg::Finished`] with its failure). Each report carries the attempt number so that a late
//! report of an abandoned attempt is ignored.
//!
//! Imports point down only: to [`messages`](super::messages),
//! [`failure`](super::failure), [`shared`](super::shared) and
//! [`pool`](super::pool); the actor imports this module, never the reverse.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::comfy::client::{ComfyError, PromptLocation, PromptText};
use crate::comfy::wire::{NodeId, NodeOutput};
use crate::comfy::ws::{Completion, PromptEvent, PromptWatch};
use crate::model::{JsonObject, TaskStatus};
use crate::runtime::RuntimeError;
use crate::runtime::artifacts;
use crate::runtime::bus::Commit;
use crate::runtime::scheduler::ExecutionId;

use super::failure::{Failure, FailureKind};
use super::messages::{Control, Msg, NodeTasks, Outcome};
use super::pool::Backend;
use super::shared::Shared;

/// How long an attempt waits for the backend's WebSocket before posting anyway.
const SOCKET_WAIT: Duration = Duration::from_secs(5);

/// How long to wait for ComfyUI to confirm an interrupt before reporting anyway.
const INTERRUPT_GRACE: Duration = Duration::from_secs(30);

/// How often, at most, a running node's progress steps write the records of
/// its task and of the execution. A step is written as its progress event
/// (which carries the task's and the execution's progress); the records
/// follow at this pace and at the node's next change of state. In between,
/// this runtime's GetTask, GetExecution and lists read the newer state from
/// memory; another replica of a shared store, or the store after a crash,
/// has the records' progress, at most this much older.
const RECORD_EVERY: Duration = Duration::from_secs(1);

/// What the attempt needs to know.
pub(crate) struct AttemptSpec {
    /// The scheduler's id of the execution.
    pub sched: ExecutionId,
    /// The attempt number (the execution's dispatch count).
    pub attempt: u64,
    /// The execution's id.
    pub execution_id: String,
    /// The prompt id to post with.
    pub prompt_id: Uuid,
    /// The prompt to post, or the one to follow.
    pub target: Target,
    /// Node id -> its NODE task id, in the prompt's order.
    pub node_tasks: Arc<NodeTasks>,
    /// Longest running time, from the backend's execution_start.
    pub timeout: Duration,
    /// The write that records the prompt id; the prompt is posted once it
    /// is durable.
    pub recorded: Option<Commit>,
}

/// What an attempt does on its backend.
pub(crate) enum Target {
    /// Posts this prompt (its JSON text, as the execution's record holds it).
    Post(PromptText),
    /// Follows the prompt already on the backend under this id (found there
    /// after a restart of the runtime) instead of posting.
    Attach(String),
}

/// Follows a prompt already on the backend. Its earlier messages went to a
/// socket that no longer exists; the watch's reconciliation (on silence)
/// reads its outcome from history if it ends unheard.
async fn attach(
    backend: &Backend,
    prompt_id: &str,
) -> Result<(PromptWatch, crate::comfy::wire::PromptResponse), ComfyError> {
    let mut watch = backend.socket.watch(prompt_id).await?;
    watch.confirm(prompt_id).await?;
    let response = crate::comfy::wire::PromptResponse {
        prompt_id: prompt_id.to_owned(),
        number: serde_json::Number::from(0),
        node_errors: Default::default(),
    };
    Ok((watch, response))
}

/// Runs the attempt until it ends, `abandon` is cancelled (taken back, backend
/// down), or the actor goes away.
pub(crate) async fn run(
    shared: Arc<Shared>,
    backend: Arc<Backend>,
    spec: AttemptSpec,
    mut control: mpsc::UnboundedReceiver<Control>,
    abandon: CancellationToken,
    tx: mpsc::UnboundedSender<Msg>,
) {
    let mut spec = spec;
    let recorded = spec.recorded.take();
    let report = |msg: Msg| {
        let _ = tx.send(msg);
    };
    let sched = spec.sched;
    let attempt = spec.attempt;
    let posted = tokio::select! {
        result = async {
            // Messages for a clientId without a socket are dropped by ComfyUI:
            // wait (briefly) for the socket; reconciliation covers the rest.
            let _ = tokio::time::timeout(SOCKET_WAIT, backend.socket.wait_connected()).await;
            let prompt = match &spec.target {
                Target::Post(prompt) => prompt,
                Target::Attach(prompt_id) => {
                    stored(recorded, &spec.execution_id).await;
                    return attach(&backend, prompt_id).await;
                }
            };
            // Watched before the post (a fast prompt must not finish unseen) and
            // while the write that records the prompt id commits: the socket
            // task's round trip is not left for after it, when only the post is.
            let watch = backend
                .socket
                .watch(&spec.prompt_id.hyphenated().to_string())
                .await?;
            stored(recorded, &spec.execution_id).await;
            backend.socket.post(watch, spec.prompt_id, prompt, None).await
        } => result,
        () = abandon.cancelled() => return,
    };
    let mut watch = match posted {
        Ok((watch, response)) => {
            report(Msg::Posted {
                sched,
                attempt,
                prompt_id: response.prompt_id.clone(),
                client_id: backend.socket.client_id(),
            });
            watch
        }
        Err(error) => {
            if error.is_retryable() {
                backend.suspect();
            }
            report(Msg::Finished {
                sched,
                attempt,
                outcome: Outcome::Failed(post_failure(&error)),
                ended: HashSet::new(),
            });
            return;
        }
    };
    let mut follower = Follower::new(&shared, &spec);
    let outcome = tokio::select! {
        outcome = follow(&shared, &backend, &spec, &mut watch, &mut control, &mut follower, &tx) => outcome,
        () = abandon.cancelled() => return,
    };
    let outcome = match outcome {
        Some(FollowEnd::Success(completion)) => {
            follower.finish_running(TaskStatus::Completed);
            let downloaded = tokio::select! {
                result = download(&shared, &backend, &spec, &completion) => result,
                () = abandon.cancelled() => return,
            };
            match downloaded {
                Ok(outcome) => outcome,
                Err(failure) => Outcome::Failed(failure),
            }
        }
        Some(FollowEnd::Outcome(outcome)) => outcome,
        None => return,
    };
    report(Msg::Finished {
        sched,
        attempt,
        outcome,
        ended: follower.ended,
    });
}

/// Waits until `recorded` (the write that records the prompt id) is durable;
/// a failed write is logged, and the prompt posted anyway.
async fn stored(recorded: Option<Commit>, execution_id: &str) {
    if let Some(recorded) = recorded
        && let Err(error) = recorded.committed().await
    {
        tracing::warn!(%execution_id, %error, "prompt id not stored; posting anyway");
    }
    tracing::debug!(%execution_id, "prompt id stored; posting");
}

/// How following the prompt ended.
enum FollowEnd {
    /// It succeeded; artifacts still to download.
    Success(Completion),
    /// Anything else.
    Outcome(Outcome),
}

/// Follows the prompt's events until its terminal event, with the timeout and
/// stall detector. `None` when the actor is gone.
async fn follow(
    shared: &Shared,
    backend: &Backend,
    spec: &AttemptSpec,
    watch: &mut PromptWatch,
    control: &mut mpsc::UnboundedReceiver<Control>,
    follower: &mut Follower<'_>,
    tx: &mpsc::UnboundedSender<Msg>,
) -> Option<FollowEnd> {
    let stall_timeout = shared.settings.stall_timeout;
    let mut last_event = Instant::now();
    let mut deadline: Option<Instant> = None;
    let mut interrupt_sent: Option<Instant> = None;
    let mut timed_out = false;
    let mut control_open = true;
    // Whether a silence check found the prompt running before it was heard to start.
    let mut found_running = false;
    loop {
        // Silence is checked whether or not the prompt was seen to start: a
        // backend silent from the first message on never reports the start.
        // `stalled` tells a prompt waiting in the backend's queue (no stall)
        // from one running there unheard, which gets one more silence when it
        // was not heard to start (it may have begun an instant ago).
        let stall_at = Some(last_event + stall_timeout);
        let wake = [
            interrupt_sent.map(|sent| sent + INTERRUPT_GRACE),
            deadline.filter(|_| interrupt_sent.is_none()),
            stall_at,
        ]
        .into_iter()
        .flatten()
        .min();
        tokio::select! {
            event = watch.next_event() => {
                // The message's writes (node tasks, the record, their events),
                // and those of the messages already waiting behind it, are
                // one store write; nobody waits for it, so the store may
                // commit it with the next prompt report's (or anything else's).
                let _batch = shared.tasks.bus().deferrable_batch();
                let mut event = event;
                loop {
                    let Some(current) = event else {
                        return Some(FollowEnd::Outcome(Outcome::Failed(Failure::transient(
                            FailureKind::PromptLost,
                            "the backend's websocket task stopped while the prompt was in flight",
                        ))));
                    };
                    last_event = Instant::now();
                    match current {
                        PromptEvent::Started { .. } => {
                            deadline = Instant::now().checked_add(spec.timeout);
                            if tx.send(Msg::Started { sched: spec.sched, attempt: spec.attempt }).is_err() {
                                return None;
                            }
                        }
                        PromptEvent::Cached { nodes } => follower.cached(&nodes),
                        PromptEvent::NodeStarted { node, .. } => {
                            if deadline.is_none() {
                                deadline = Instant::now().checked_add(spec.timeout);
                                if tx.send(Msg::Started { sched: spec.sched, attempt: spec.attempt }).is_err() {
                                    return None;
                                }
                            }
                            follower.node_started(&node);
                        }
                        PromptEvent::Progress { node, value, max } => {
                            follower.progress(node.as_deref(), value, max);
                        }
                        PromptEvent::Executed { node, .. } => follower.node_done(&node),
                        PromptEvent::Preview { .. } | PromptEvent::Text { .. } | PromptEvent::Lagged { .. } => {}
                        PromptEvent::Success(completion) => return Some(FollowEnd::Success(completion)),
                        PromptEvent::Error { error, .. } => {
                            let failure = node_failure(&error.node_id, &error.node_type, &error.exception_type, &error.exception_message);
                            follower.node_failed(&error.node_id, &failure);
                            follower.finish_running(TaskStatus::Failed);
                            return Some(FollowEnd::Outcome(Outcome::Failed(failure)));
                        }
                        PromptEvent::Interrupted { .. } => {
                            follower.interrupt_running();
                            if timed_out {
                                return Some(FollowEnd::Outcome(Outcome::Failed(timeout_failure(spec.timeout))));
                            }
                            return Some(FollowEnd::Outcome(Outcome::Interrupted));
                        }
                        // The runtime is stopping: leave every task as it is, for
                        // the recovery of the next start to reconcile.
                        PromptEvent::Lost { reason: crate::comfy::ws::LostReason::Shutdown } => return None,
                        PromptEvent::Lost { reason } => {
                            follower.interrupt_running();
                            return Some(FollowEnd::Outcome(Outcome::Failed(Failure::transient(
                                FailureKind::PromptLost,
                                format!("the prompt was lost on {}: {reason}", backend.name),
                            ))));
                        }
                    }
                    match watch.try_next_event() {
                        Some(next) => event = Some(next),
                        None => break,
                    }
                }
            }
            request = control.recv(), if control_open => {
                match request {
                    Some(Control::Interrupt) => {
                        if interrupt_sent.is_none() {
                            interrupt(backend, watch.prompt_id()).await;
                            interrupt_sent = Some(Instant::now());
                        }
                    }
                    None => control_open = false,
                }
            }
            () = sleep_until_or_forever(wake) => {
                if let Some(sent) = interrupt_sent
                    && Instant::now() >= sent + INTERRUPT_GRACE
                {
                    // No confirmation: ask the backend where the prompt is. It
                    // is reported stopped only once it no longer runs there.
                    match backend.client().locate(watch.prompt_id()).await {
                        Ok(PromptLocation::Finished(_) | PromptLocation::Unknown) => {
                            follower.interrupt_running();
                            if timed_out {
                                return Some(FollowEnd::Outcome(Outcome::Failed(timeout_failure(spec.timeout))));
                            }
                            return Some(FollowEnd::Outcome(Outcome::Interrupted));
                        }
                        Ok(PromptLocation::Pending(_)) => {
                            let _ = backend.client().delete_from_queue(&[watch.prompt_id().to_owned()]).await;
                        }
                        Ok(PromptLocation::Running(_)) => interrupt(backend, watch.prompt_id()).await,
                        Err(_) => backend.suspect(),
                    }
                    interrupt_sent = Some(Instant::now());
                    continue;
                }
                if let Some(at) = deadline
                    && !timed_out
                    && Instant::now() >= at
                {
                    tracing::warn!(execution_id = %spec.execution_id, prompt_id = %watch.prompt_id(), "execution timed out; interrupting its prompt");
                    timed_out = true;
                    interrupt(backend, watch.prompt_id()).await;
                    interrupt_sent = Some(Instant::now());
                    continue;
                }
                if let Some(stall_at) = stall_at
                    && Instant::now() >= stall_at
                {
                    let heard_start = deadline.is_some();
                    match stalled(backend, watch.prompt_id(), stall_timeout, heard_start, &mut found_running).await {
                        Some(failure) => {
                            follower.interrupt_running();
                            return Some(FollowEnd::Outcome(Outcome::Failed(failure)));
                        }
                        None => last_event = Instant::now(),
                    }
                }
            }
        }
    }
}

/// Sleeps until `at`, or forever when there is nothing to wake for.
async fn sleep_until_or_forever(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The stall detector's decision for a prompt silent for `silence`: `None`
/// when history shows it finished (its terminal event is on the way), when it
/// waits behind another prompt, or when it was found running before it was
/// heard to start (`found_running` false until then): it may have begun an
/// instant ago, when the prompt ahead of it ended, its start still on the way
/// over the socket, and gets one more silence to be heard. Else the failure to
/// report (after interrupting it when it still runs).
async fn stalled(
    backend: &Backend,
    prompt_id: &str,
    silence: Duration,
    started: bool,
    found_running: &mut bool,
) -> Option<Failure> {
    let location = backend.client().locate(prompt_id).await;
    let detail = match location {
        Ok(PromptLocation::Finished(_)) => return None,
        // Waiting behind another prompt: as long as that one runs, no stall.
        Ok(PromptLocation::Pending(_)) if !started => return None,
        Ok(PromptLocation::Running(_)) if !started && !*found_running => {
            *found_running = true;
            return None;
        }
        Ok(PromptLocation::Running(_)) => {
            interrupt(backend, prompt_id).await;
            "it is still running there; it was interrupted"
        }
        Ok(PromptLocation::Pending(_)) => {
            let _ = backend
                .client()
                .delete_from_queue(&[prompt_id.to_owned()])
                .await;
            "it is still queued there; it was removed from the queue"
        }
        Ok(PromptLocation::Unknown) => "the backend has no record of it",
        Err(_) => "its status could not be read",
    };
    Some(Failure::transient(
        FailureKind::Stalled,
        format!(
            "no message from {} about the prompt for {}s; {detail}",
            backend.name,
            silence.as_secs_f64()
        ),
    ))
}

/// Interrupts `prompt_id` on `backend`; a failure is logged (the stall
/// detector, backend probe or interrupt grace take it from there).
async fn interrupt(backend: &Backend, prompt_id: &str) {
    if let Err(error) = backend.client().interrupt(prompt_id).await {
        tracing::warn!(backend = %backend.name, prompt_id, %error, "interrupt failed");
    }
}

fn timeout_failure(timeout: Duration) -> Failure {
    Failure::permanent(
        FailureKind::Timeout,
        format!(
            "the execution ran longer than its timeout of {}s and was interrupted",
            timeout.as_secs_f64()
        ),
    )
}

/// The failure for a POST /prompt error.
fn post_failure(error: &ComfyError) -> Failure {
    match error {
        ComfyError::Validation(body) => {
            let mut message = format!("comfyui rejected the prompt: {}", body.error.message);
            for (node, errors) in &body.node_errors {
                for problem in &errors.errors {
                    message.push_str(&format!(
                        "; node {node} ({}): {}",
                        errors.class_type.as_deref().unwrap_or("no class"),
                        problem.message
                    ));
                    if !problem.details.is_empty() {
                        message.push_str(&format!(" ({})", problem.details));
                    }
                }
            }
            Failure::permanent(FailureKind::Rejected, message)
        }
        ComfyError::Transport { .. }
        | ComfyError::Timeout { .. }
        | ComfyError::WebSocket { .. }
        | ComfyError::SocketClosed { .. } => {
            Failure::transient(FailureKind::BackendUnavailable, error.to_string())
        }
        error if error.is_retryable() => {
            Failure::transient(FailureKind::BackendUnavailable, error.to_string())
        }
        error => Failure::permanent(FailureKind::Rejected, error.to_string()),
    }
}

/// The failure for an `execution_error`: out-of-memory errors are transient,
/// any other node exception is not.
fn node_failure(node: &str, node_type: &str, exception_type: &str, message: &str) -> Failure {
    let lower_type = exception_type.to_lowercase();
    let lower_message = message.to_lowercase();
    let text = format!(
        "node {node} ({node_type}) raised {exception_type}: {}",
        message.trim()
    );
    if lower_type.contains("outofmemory")
        || lower_message.contains("out of memory")
        || lower_message.contains("allocation on device")
        // torch's CPU allocator: "DefaultCPUAllocator: not enough memory: you
        // tried to allocate N bytes."
        || lower_message.contains("not enough memory")
    {
        Failure::transient(FailureKind::OutOfMemory, text)
    } else {
        Failure::permanent(FailureKind::NodeExecution, text)
    }
}

/// The outcome of a prompt that ended while nobody watched (found finished
/// in history after a restart of the runtime), its artifacts downloaded.
pub(crate) async fn collect(
    shared: &Shared,
    backend: &Backend,
    execution_id: &str,
    entry: crate::comfy::wire::HistoryEntry,
) -> Outcome {
    use crate::comfy::wire::HistoryOutcome;
    match entry.outcome() {
        HistoryOutcome::Success => {
            let files = artifacts::artifact_files(execution_id, &entry.outputs);
            match artifacts::download(
                backend.client(),
                &shared.settings.artifact_dir,
                execution_id,
                &files,
            )
            .await
            {
                Ok(written) => Outcome::Success {
                    outputs: outputs_json(&entry.outputs),
                    artifacts: written,
                },
                Err(error) => Outcome::Failed(Failure::transient(
                    FailureKind::BackendUnavailable,
                    format!(
                        "downloading the outputs from {} failed: {error}",
                        backend.name
                    ),
                )),
            }
        }
        HistoryOutcome::Error(error) => Outcome::Failed(node_failure(
            &error.node_id,
            &error.node_type,
            &error.exception_type,
            &error.exception_message,
        )),
        HistoryOutcome::Interrupted(_) => Outcome::Interrupted,
        HistoryOutcome::Failed => Outcome::Failed(Failure::permanent(
            FailureKind::NodeExecution,
            format!(
                "the prompt failed on {} (its history gives no reason)",
                backend.name
            ),
        )),
    }
}

/// Downloads the completion's artifacts and builds the success outcome.
async fn download(
    shared: &Shared,
    backend: &Backend,
    spec: &AttemptSpec,
    completion: &Completion,
) -> Result<Outcome, Failure> {
    let files = artifacts::artifact_files(&spec.execution_id, &completion.outputs);
    let written = artifacts::download(
        backend.client(),
        &shared.settings.artifact_dir,
        &spec.execution_id,
        &files,
    )
    .await
    .map_err(|error| {
        Failure::transient(
            FailureKind::BackendUnavailable,
            format!(
                "downloading the outputs from {} failed: {error}",
                backend.name
            ),
        )
    })?;
    Ok(Outcome::Success {
        outputs: outputs_json(&completion.outputs),
        artifacts: written,
    })
}

/// The outputs as a JSON object: node id -> its UI dict.
fn outputs_json(outputs: &BTreeMap<NodeId, NodeOutput>) -> JsonObject {
    outputs
        .iter()
        .map(|(node, output)| (node.clone(), Value::Object(output.0.clone())))
        .collect()
}

/// Keeps the NODE tasks and the execution's progress in step with the events.
struct Follower<'a> {
    shared: &'a Shared,
    execution_id: &'a str,
    node_tasks: &'a NodeTasks,
    /// Progress per node id in this attempt.
    progress: HashMap<String, f64>,
    /// The node executing now.
    running: Option<String>,
    /// The NODE tasks this attempt left ended (terminal), for the actor.
    ended: HashSet<String>,
    /// When each node's task record was last written, by node id: a
    /// progress step writes its event alone until `RECORD_EVERY` has passed.
    written: HashMap<String, Instant>,
    /// When the execution's record was last written by this attempt's
    /// progress.
    execution_written: Instant,
}

impl<'a> Follower<'a> {
    fn new(shared: &'a Shared, spec: &'a AttemptSpec) -> Self {
        Self {
            shared,
            execution_id: &spec.execution_id,
            node_tasks: &spec.node_tasks,
            progress: HashMap::new(),
            running: None,
            ended: HashSet::new(),
            written: HashMap::new(),
            execution_written: Instant::now(),
        }
    }

    /// Whether a progress step that was written `at` is due to write the
    /// record again (noting now if so); never written: due.
    fn record_due(at: Option<&mut Instant>) -> bool {
        match at {
            Some(at) if at.elapsed() < RECORD_EVERY => false,
            Some(at) => {
                *at = Instant::now();
                true
            }
            None => true,
        }
    }

    /// Applies `change` to the node's task, noting it when that leaves the
    /// task ended; errors are logged (a node task that cannot move, e.g.
    /// already COMPLETED by an earlier attempt, keeps its state).
    fn node_task<F>(&mut self, node: &str, change: F)
    where
        F: FnOnce(&mut crate::model::Task) -> Result<(), RuntimeError>,
    {
        let Some(task_id) = self.node_tasks.get(node) else {
            return;
        };
        let mut ended = false;
        let updated = self.shared.tasks.update(task_id, |task| {
            change(task)?;
            ended = task.status().is_terminal();
            Ok(())
        });
        match updated {
            Ok(()) => {
                if ended && !self.ended.contains(task_id) {
                    self.ended.insert(task_id.clone());
                }
            }
            Err(error) => tracing::debug!(task_id, %error, "node task not updated"),
        }
    }

    /// The execution's progress: the mean of its nodes' progress.
    fn overall(&self) -> f64 {
        let total = self.node_tasks.len().max(1) as f64;
        let sum: f64 = self.progress.values().sum();
        (sum / total).clamp(0.0, 1.0)
    }

    /// The node's progress, and the execution's with it (its record written
    /// at most every `RECORD_EVERY`: the end writes it anyway).
    fn set_progress(&mut self, node: &str, value: f64) {
        self.progress.insert(node.to_owned(), value.clamp(0.0, 1.0));
        let overall = self.overall();
        let record = Self::record_due(Some(&mut self.execution_written));
        if let Err(error) = self
            .shared
            .execution_progress(self.execution_id, overall, record)
        {
            tracing::debug!(execution_id = self.execution_id, %error, "execution progress not updated");
        }
    }

    fn cached(&mut self, nodes: &[NodeId]) {
        for node in nodes {
            self.node_task(node, |task| {
                if !task.status().is_terminal() {
                    task.progress_message = Some("cached: reused an earlier result".into());
                    task.transition(TaskStatus::Completed)
                        .map_err(|source| transition_error(task, source))?;
                }
                Ok(())
            });
            self.set_progress(node, 1.0);
        }
    }

    fn node_started(&mut self, node: &str) {
        if let Some(previous) = self.running.take()
            && previous != node
        {
            self.node_done(&previous);
        }
        self.running = Some(node.to_owned());
        self.written.insert(node.to_owned(), Instant::now());
        // A retry of the execution runs a failed node again: RETRYING first,
        // as its own change so that its event is published.
        self.node_task(node, |task| {
            if task.status() == TaskStatus::Failed && task.retries_left() {
                task.transition(TaskStatus::Retrying)
                    .map_err(|source| transition_error(task, source))?;
            }
            Ok(())
        });
        self.node_task(node, |task| {
            if matches!(
                task.status(),
                TaskStatus::Pending | TaskStatus::Queued | TaskStatus::Retrying
            ) {
                task.transition(TaskStatus::Running)
                    .map_err(|source| transition_error(task, source))?;
            }
            task.progress_message = Some("executing".into());
            Ok(())
        });
        self.set_progress(node, 0.0);
    }

    fn progress(&mut self, node: Option<&str>, value: f64, max: f64) {
        let Some(node) = node.map(str::to_owned).or_else(|| self.running.clone()) else {
            return;
        };
        if max.is_nan() || max <= 0.0 || !value.is_finite() {
            return;
        }
        let fraction = (value / max).clamp(0.0, 1.0);
        self.progress.insert(node.clone(), fraction);
        let mut step = JsonObject::with_capacity(3);
        step.insert("value".into(), Value::from(value));
        step.insert("max".into(), Value::from(max));
        step.insert("execution_progress".into(), Value::from(self.overall()));
        if let Some(task_id) = self.node_tasks.get(&node) {
            // A step is its event; the task's record follows at most every
            // `RECORD_EVERY`, and at the node's end.
            let record = Self::record_due(self.written.get_mut(&node));
            let updated = self.shared.tasks.update_with_event_data(
                task_id,
                |task| {
                    if task.status() == TaskStatus::Running {
                        task.set_progress(fraction)?;
                        task.progress_message = Some(format!("step {value} of {max}"));
                    }
                    Ok(())
                },
                Some(&step),
                record,
            );
            if let Err(error) = updated {
                tracing::debug!(task_id, %error, "node task not updated");
            }
        }
        self.set_progress(&node, fraction);
    }

    fn node_done(&mut self, node: &str) {
        if self.running.as_deref() == Some(node) {
            self.running = None;
        }
        let mut finished = false;
        self.node_task(node, |task| {
            if task.status() == TaskStatus::Running {
                task.progress_message = Some("executed".into());
                task.transition(TaskStatus::Completed)
                    .map_err(|source| transition_error(task, source))?;
                finished = true;
            }
            Ok(())
        });
        if finished {
            self.node_metric(node);
        }
        self.set_progress(node, 1.0);
    }

    /// Publishes the node's execution time as a performance metric.
    fn node_metric(&self, node: &str) {
        let Some(task_id) = self.node_tasks.get(node) else {
            return;
        };
        let Ok(Some(task)) = self.shared.tasks.latest(task_id) else {
            return;
        };
        let Some(seconds) = task.metrics.duration_seconds() else {
            return;
        };
        let class = task
            .metadata
            .get("class_type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        crate::telemetry::metrics::node_duration(&class, seconds);
        let context = crate::runtime::tasks::task_context(&task);
        self.shared.metric(
            "node_seconds",
            seconds,
            "seconds",
            context,
            &[("node_id", node), ("class_type", &class)],
        );
    }

    fn node_failed(&mut self, node: &str, failure: &Failure) {
        if self.running.as_deref() == Some(node) {
            self.running = None;
        }
        let message = failure.message.clone();
        let error_type = failure.kind.as_str().to_owned();
        self.node_task(node, |task| {
            if matches!(task.status(), TaskStatus::Pending | TaskStatus::Queued) {
                task.transition(TaskStatus::Running)
                    .map_err(|source| transition_error(task, source))?;
            }
            if task.status() == TaskStatus::Running {
                task.fail(message, Some(error_type))
                    .map_err(|source| transition_error(task, source))?;
            }
            Ok(())
        });
    }

    /// Ends the running node (if any) with `status`.
    fn finish_running(&mut self, status: TaskStatus) {
        if let Some(node) = self.running.take() {
            match status {
                TaskStatus::Completed => self.node_done(&node),
                _ => self.node_task(&node, |task| {
                    if task.status() == TaskStatus::Running {
                        task.transition(TaskStatus::Cancelled)
                            .map_err(|source| transition_error(task, source))?;
                    }
                    Ok(())
                }),
            }
        }
    }

    /// The running node was stopped (interrupt, loss): it goes back to
    /// RETRYING when it may run again, else stays for the actor to settle.
    fn interrupt_running(&mut self) {
        if let Some(node) = self.running.take() {
            self.node_task(&node, |task| {
                if task.status() == TaskStatus::Running && task.retries_left() {
                    task.progress_message = Some("stopped before it finished".into());
                    task.transition(TaskStatus::Retrying)
                        .map_err(|source| transition_error(task, source))?;
                }
                Ok(())
            });
        }
    }
}

fn transition_error(
    task: &crate::model::Task,
    source: crate::model::TransitionError,
) -> RuntimeError {
    RuntimeError::IllegalTransition {
        task_id: task.id.clone(),
        source,
    }
}
