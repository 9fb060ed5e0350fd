//! Scheduling: queueing executions, carrying out the scheduler's actions
//! (dispatch to a backend, take back from a backend's queue, interrupt), the
//! attempts' "posted" and "started" reports, and the NODE tasks an execution
//! gets on its first dispatch.
//!
//! One part of the [`Actor`]'s `impl`, split by concern: it imports the
//! actor's state from its parent and the executor's lower modules, never
//! another part.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::comfy::client::{PromptLocation, PromptText};
use crate::model::{JsonObject, NewTask, Task, TaskStatus, TaskType};
use crate::runtime::executor::attempt::{self, AttemptSpec, Target};
use crate::runtime::executor::failure::{Failure, FailureKind};
use crate::runtime::executor::messages::{Control, Msg, NodeTasks};
use crate::runtime::executor::prompt_nodes::{PromptNodes, prompt_nodes};
use crate::runtime::executor::shared::LoadSnapshot;
use crate::runtime::scheduler::{
    Action, BackendId, ExecutionId, ExecutionKey, SchedulerError, TakenBackOutcome,
};
use crate::telemetry::metrics;

use super::{Actor, PRIORITIES, Phase, Run};

impl Actor {
    /// Puts `sched` in the scheduler's queue: QUEUED.
    pub(super) fn enqueue(&mut self, sched: ExecutionId) {
        let Some(live) = self.live.get_mut(&sched) else {
            return;
        };
        let key = ExecutionKey {
            id: sched,
            priority: live.priority,
            required: live.required.clone(),
        };
        match self.scheduler.submit(key) {
            Ok(()) | Err(SchedulerError::AlreadyScheduled(_)) => {}
            Err(error) => {
                tracing::error!(%error, "scheduler refused an admitted execution");
                return;
            }
        }
        live.phase = Phase::Scheduled;
        live.queued_at = std::time::Instant::now();
        self.set_status(sched, TaskStatus::Queued, Some("queued".into()));
    }

    /// Queue depth per priority and executions in flight, as gauges and as
    /// the shared [`LoadSnapshot`] GetRuntimeInfo reads. Runs after every
    /// turn; only what changed since the last turn is published (a labelled
    /// gauge is a registry lookup, the snapshot a lock and two vectors).
    pub(super) fn publish_gauges(&mut self) {
        let mut queued = [0; PRIORITIES.len()];
        for (depth, priority) in queued.iter_mut().zip(PRIORITIES) {
            *depth = self.scheduler.queue_depth(priority);
        }
        let running = self.scheduler.in_flight();
        let backends = self.shared.pool.backends();
        let published = &mut self.published;
        let unchanged = published.queued == Some(queued)
            && published.running == Some(running)
            && published.on_backend.len() == backends.len()
            && backends
                .iter()
                .zip(&published.on_backend)
                .all(|(backend, &n)| self.scheduler.on_backend(backend.id) == n);
        if unchanged {
            return;
        }
        for (i, priority) in PRIORITIES.into_iter().enumerate() {
            if published.queued.is_none_or(|q| q[i] != queued[i]) {
                metrics::set_queue_depth(priority.as_str(), queued[i]);
            }
        }
        if published.running != Some(running) {
            metrics::set_tasks_running(running);
        }
        published.queued = Some(queued);
        published.running = Some(running);
        published.on_backend = backends
            .iter()
            .map(|backend| self.scheduler.on_backend(backend.id))
            .collect();
        self.shared.set_load(LoadSnapshot {
            queued: PRIORITIES.into_iter().zip(queued).collect(),
            on_backend: published.on_backend.clone(),
        });
    }

    /// Carries out the scheduler's actions.
    pub(super) fn pump(&mut self) {
        for action in self.scheduler.next_actions() {
            match action {
                Action::Dispatch { id, backend } => self.dispatch(id, backend),
                Action::TakeBack { id, .. } => self.take_back(id),
                Action::Interrupt { id, .. } => {
                    if let Some(run) = self.live.get(&id).and_then(|l| l.run.as_ref()) {
                        let _ = run.control.send(Control::Interrupt);
                    }
                }
            }
        }
    }

    /// Hands `sched` to `backend_id`: takes its prompt's text (held since its
    /// submission, else the pending write's or the store's),
    /// creates its NODE tasks on the first dispatch and spawns the attempt,
    /// which posts that text. RUNNING.
    fn dispatch(&mut self, sched: ExecutionId, backend_id: BackendId) {
        let Some(backend) = self.shared.pool.get(backend_id).cloned() else {
            let _ = self.scheduler.prompt_finished(backend_id, sched);
            return;
        };
        let Some(live) = self.live.get_mut(&sched) else {
            let _ = self.scheduler.prompt_finished(backend_id, sched);
            return;
        };
        // The prompt's text, as it was written when it was submitted: posted as it is. Read
        // for its nodes only (their ids, classes and titles), not built into a tree.
        let prompt = match self.held_prompts.take(sched) {
            Some(prompt) => Some(prompt),
            // Past the held prompts' budget, a retry or a recovered execution: the write
            // still pending (a submit of this turn), else the store.
            None => match self.shared.execution_prompt(&live.id) {
                Ok(prompt) => prompt,
                Err(error) => {
                    tracing::error!(execution_id = %live.id, %error, "prompt could not be read");
                    None
                }
            },
        };
        // Read whole by `prompt_nodes`: one JSON object, as `json_text` wrote it.
        let read = prompt.and_then(|text| Some((prompt_nodes(&text)?, PromptText::checked(text))));
        let (nodes, prompt) = match read {
            Some(read) => read,
            None => {
                let _ = self.scheduler.prompt_finished(backend_id, sched);
                let failure = Failure::permanent(
                    FailureKind::Rejected,
                    "the stored prompt could not be read",
                );
                self.end_failed(sched, &failure);
                return;
            }
        };
        self.ensure_node_tasks(sched, &nodes);
        let Some(live) = self.live.get_mut(&sched) else {
            return;
        };
        live.attempt += 1;
        let waited = live.queued_at.elapsed().as_secs_f64();
        let (control, control_rx) = mpsc::unbounded_channel();
        let abandon = CancellationToken::new();
        let prompt_id = Uuid::new_v4();
        live.run = Some(Box::new(Run {
            backend: backend_id,
            prompt_id: None,
            control,
            abandon: abandon.clone(),
            take_back_pending: false,
            gpu_peak: None,
        }));
        let spec = AttemptSpec {
            sched,
            attempt: live.attempt,
            execution_id: live.id.to_string(),
            prompt_id,
            target: Target::Post(prompt),
            node_tasks: Arc::clone(&live.node_tasks),
            timeout: live.timeout,
            recorded: None,
        };
        let execution_id = live.id.clone();
        let name = backend.name.clone();
        tracing::info!(execution_id = %execution_id, backend = %name, attempt = spec.attempt, "dispatching");
        // The prompt id is recorded before the prompt is posted (the attempt
        // waits for that write), so a restart looks for it on the backend
        // instead of posting it again. Not when the execution was submitted in
        // this turn and its creation is still in the turn's batch: the record
        // then commits with the creation, in one transaction, and the prompt is
        // posted first, the store's writer woken to commit them right after
        // (`Actor::end_turn`). A crash before that commit keeps neither:
        // nothing is run again after a restart, and the submit, never answered,
        // leaves a prompt that ComfyUI runs unclaimed.
        let prompt_text = prompt_id.hyphenated().to_string();
        // With the socket's client id as well: the post's answer then has nothing to add (see
        // `posted`), and a job makes one write fewer.
        let client_id = backend.socket.client_id();
        let mut spec = spec;
        match self
            .shared
            .update_execution_then(&execution_id, |execution| {
                execution.backend = Some(name.clone());
                execution.prompt_id = Some(prompt_text);
                execution.client_id = client_id;
                Ok(())
            }) {
            Ok((_, commit)) => {
                spec.recorded = commit
                    .filter(|_| !self.shared.tasks.bus().gathering_creation_of(&execution_id));
            }
            Err(error) => tracing::warn!(%execution_id, %error, "execution not updated"),
        }
        self.posts_at_once |= spec.recorded.is_none();
        self.tracker.spawn(attempt::run(
            Arc::clone(&self.shared),
            Arc::clone(&backend),
            spec,
            control_rx,
            abandon,
            self.tx.clone(),
        ));
        self.set_status(
            sched,
            TaskStatus::Running,
            Some(format!("handed to {name}; waiting in its queue")),
        );
        metrics::queue_wait(waited);
        let context = self.context(sched);
        self.shared.metric(
            "queue_wait_seconds",
            waited,
            "seconds",
            context,
            &[("backend", &name)],
        );
    }

    /// An attempt's prompt was accepted: records its prompt id, and takes it
    /// back now when a take-back was decided before the post.
    pub(super) fn posted(
        &mut self,
        sched: ExecutionId,
        attempt: u64,
        prompt_id: String,
        client_id: String,
    ) {
        let Some(live) = self.live.get_mut(&sched) else {
            return;
        };
        if live.attempt != attempt {
            return;
        }
        let Some(run) = live.run.as_mut() else {
            return;
        };
        run.prompt_id = Some(prompt_id.clone());
        let take_back = std::mem::take(&mut run.take_back_pending);
        let id = live.id.clone();
        // Recorded at dispatch already, unless ComfyUI chose another prompt id or the socket
        // reconnected under another client id in between.
        let recorded = self
            .shared
            .latest_execution(&id)
            .ok()
            .flatten()
            .is_some_and(|e| {
                e.prompt_id.as_deref() == Some(prompt_id.as_str()) && e.client_id == client_id
            });
        if !recorded
            && let Err(error) = self.shared.update_execution(&id, |execution| {
                execution.prompt_id = Some(prompt_id);
                execution.client_id = client_id;
                Ok(())
            })
        {
            tracing::warn!(execution_id = %id, %error, "execution not updated");
        }
        if take_back {
            self.take_back(sched);
        }
    }

    /// An attempt's prompt started executing on its backend.
    pub(super) fn started(&mut self, sched: ExecutionId, attempt: u64) {
        let Some(live) = self.live.get(&sched) else {
            return;
        };
        if live.attempt != attempt {
            return;
        }
        let Some(backend) = live.run.as_ref().map(|r| r.backend) else {
            return;
        };
        match self.scheduler.prompt_started(backend, sched) {
            Ok(()) => {}
            Err(SchedulerError::StartedOutOfOrder { .. }) => {
                self.deferred_starts.push((sched, backend));
            }
            Err(error) => tracing::debug!(%error, "start not applied"),
        }
        let watch = self.watch_gpu_memory(backend);
        if let Some(run) = self.live.get_mut(&sched).and_then(|l| l.run.as_mut())
            && run.gpu_peak.is_none()
        {
            run.gpu_peak = watch;
        }
        let name = self
            .shared
            .pool
            .get(backend)
            .map(|b| b.name.clone())
            .unwrap_or_default();
        self.update_root(sched, |task| {
            task.progress_message = Some(format!("executing on {name}"));
            Ok(())
        });
    }

    /// Starts deferred behind a prompt of `backend` that just finished.
    pub(super) fn apply_deferred_starts(&mut self, backend: BackendId) {
        let deferred = std::mem::take(&mut self.deferred_starts);
        for (sched, on) in deferred {
            if on != backend {
                self.deferred_starts.push((sched, on));
                continue;
            }
            if let Err(SchedulerError::StartedOutOfOrder { .. }) =
                self.scheduler.prompt_started(on, sched)
            {
                self.deferred_starts.push((sched, on));
            }
        }
    }

    /// Takes `sched`'s prompt back from its backend's queue (once it is
    /// posted); the outcome comes back as [`Msg::TakeBackDone`].
    fn take_back(&mut self, sched: ExecutionId) {
        let Some(live) = self.live.get_mut(&sched) else {
            return;
        };
        let attempt = live.attempt;
        let Some(run) = live.run.as_mut() else {
            return;
        };
        let Some(prompt_id) = run.prompt_id.clone() else {
            run.take_back_pending = true;
            return;
        };
        let Some(backend) = self.shared.pool.get(run.backend).cloned() else {
            return;
        };
        let tx = self.tx.clone();
        self.tracker.spawn(async move {
            let client = backend.client();
            let deleted = client
                .delete_from_queue(std::slice::from_ref(&prompt_id))
                .await;
            let taken = match (deleted, client.locate(&prompt_id).await) {
                (Ok(()), Ok(PromptLocation::Unknown)) => true,
                (_, Ok(PromptLocation::Pending(_))) | (Err(_), _) | (_, Err(_)) => false,
                (_, Ok(PromptLocation::Running(_) | PromptLocation::Finished(_))) => false,
            };
            let _ = tx.send(Msg::TakeBackDone {
                sched,
                attempt,
                taken,
            });
        });
    }

    /// A take-back ended: requeued (or cancelled) when the prompt left the
    /// queue, else it stays where it is.
    pub(super) fn take_back_done(&mut self, sched: ExecutionId, attempt: u64, taken: bool) {
        let Some(live) = self.live.get_mut(&sched) else {
            return;
        };
        if live.attempt != attempt {
            return;
        }
        let Some(backend) = live.run.as_ref().map(|r| r.backend) else {
            return;
        };
        if !taken {
            if let Err(error) = self.scheduler.take_back_failed(backend, sched) {
                tracing::debug!(%error, "take-back failure not applied");
            }
            return;
        }
        if let Some(run) = live.run.take() {
            run.abandon.cancel();
        }
        live.attempt += 1;
        match self.scheduler.taken_back(backend, sched) {
            Ok(TakenBackOutcome::Requeued) => {
                self.apply_deferred_starts(backend);
                self.set_status(
                    sched,
                    TaskStatus::Queued,
                    Some("taken back from the backend's queue for a more urgent execution".into()),
                );
            }
            Ok(TakenBackOutcome::Cancelled) => {
                self.apply_deferred_starts(backend);
                let reason = self.cancel_reason(sched);
                self.end_cancelled(sched, reason);
            }
            Err(error) => tracing::debug!(%error, "take-back not applied"),
        }
    }

    /// Creates the NODE tasks of an execution about to be dispatched for
    /// the first time, from its prompt; the tasks are stored and announced
    /// before the prompt is posted, so a restart finds them.
    fn ensure_node_tasks(&mut self, sched: ExecutionId, prompt: &PromptNodes) {
        let Some(live) = self.live.get(&sched) else {
            return;
        };
        if !live.node_tasks.is_empty() {
            return;
        }
        let root = match self.shared.tasks.latest(&live.root) {
            Ok(Some(root)) => root,
            Ok(None) => return,
            Err(error) => {
                tracing::error!(execution_id = %live.id, %error, "root task could not be read");
                return;
            }
        };
        let nodes: Vec<Arc<Task>> = node_tasks(&root, &live.id, prompt)
            .into_iter()
            .map(Arc::new)
            .collect();
        let map: NodeTasks = nodes
            .iter()
            .filter_map(|task| {
                let node = task.metadata.get("node_id").and_then(Value::as_str)?;
                Some((node.to_owned(), task.id.clone()))
            })
            .collect();
        // Stored with their CREATED events in one write, not waited for.
        self.shared.tasks.create_execution_tasks(&live.id, nodes);
        if let Some(live) = self.live.get_mut(&sched) {
            live.node_tasks = Arc::new(map);
        }
    }
}

/// The NODE tasks of an execution, one per node of its stored `prompt`
/// (in the prompt's order), children of `root`: named by the node's
/// `_meta.title` (or class) and id, with the root's priority, tags and
/// retry limit. A node whose task cannot be built is skipped and logged.
fn node_tasks(root: &Task, execution_id: &str, prompt: &PromptNodes) -> Vec<Task> {
    let workflow_id = root
        .metadata
        .get("workflow_id")
        .cloned()
        .unwrap_or(Value::Null);
    let mut tasks = Vec::with_capacity(prompt.len());
    for (node_id, node) in prompt {
        let class_type = node.class_type.as_str();
        let title = node
            .title
            .as_deref()
            .filter(|t| !t.trim().is_empty())
            .unwrap_or(class_type);
        // Sized: kept with the task (grown an entry at a time, four would have room for seven).
        let mut metadata = JsonObject::with_capacity(4);
        metadata.insert("execution_id".into(), Value::from(execution_id));
        metadata.insert("workflow_id".into(), workflow_id.clone());
        metadata.insert("node_id".into(), Value::from(node_id.clone()));
        metadata.insert("class_type".into(), Value::from(class_type));
        let name: String = format!("{title} #{node_id}").chars().take(256).collect();
        match Task::new(NewTask {
            id: None,
            task_type: TaskType::Node,
            priority: root.priority,
            name,
            description: None,
            // A node carries its execution's tags, so filters by tag see it.
            tags: root.tags.iter().cloned().collect(),
            parent_id: Some(root.id.clone()),
            dependencies: Vec::new(),
            max_retries: root.max_retries,
            timeout_seconds: None,
            metadata,
        }) {
            Ok(mut task) => {
                task.ownership = root.ownership.clone();
                tasks.push(task);
            }
            Err(error) => {
                tracing::error!(execution_id, node_id, %error, "node task not created");
            }
        }
    }
    tasks
}
