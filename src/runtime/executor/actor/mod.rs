//! The executor's actor: the one task that owns the scheduler and decides
//! every change of an execution's status. Inputs arrive as [`Msg`]s (from the
//! API handle, the attempts, the probers, timers) and as "task ended" notices
//! from the task registry (for dependencies); outputs are the scheduler's
//! actions (dispatch, take back, interrupt) carried out by spawned tasks.
//!
//! Imports point down only: to [`attempt`](super::attempt) (which it spawns)
//! and to [`messages`](super::messages), [`failure`](super::failure),
//! [`shared`](super::shared) and [`pool`](super::pool); the handle
//! (`executor/mod.rs`) imports this module, never the reverse.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::Utc;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::comfy::client::PromptLocation;
use crate::model::TaskPriority;
use crate::model::{
    DependencyType, EventCategory, JsonObject, LogLevel, NewTask, Task, TaskStatus, TaskType,
    TransitionError,
};
use crate::runtime::RuntimeError;
use crate::runtime::bus::EventContext;
use crate::runtime::scheduler::{
    Action, BackendId, CancelOutcome, ExecutionId, ExecutionKey, RequiredClasses, Scheduler,
    SchedulerConfig, SchedulerError, TakenBackOutcome,
};
use crate::telemetry::metrics;

use super::attempt::{self, AttemptSpec};
use super::failure::{Failure, FailureKind};
use super::messages::{Control, Found, Msg, Outcome};
use super::pool::Backend;
use super::shared::Shared;

/// How an execution enters the actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// Just submitted: wait for dependencies, then queue.
    Fresh,
    /// A retry (manual, or RETRYING/QUEUED after a restart): queue now.
    Retry,
    /// RUNNING when the runtime stopped: hold until its backend answers.
    Recovering,
}

/// Where a live execution is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// PENDING: waiting for dependencies.
    WaitingDeps,
    /// In the scheduler (queued or on a backend).
    Scheduled,
    /// RETRYING: back-off running.
    RetryWait,
    /// RUNNING when the runtime stopped: waiting for its backend to say
    /// where the prompt is.
    Recovering,
}

/// The current attempt of a live execution.
struct Run {
    backend: BackendId,
    /// The prompt id the server answered (set once posted).
    prompt_id: Option<String>,
    control: mpsc::UnboundedSender<Control>,
    abandon: CancellationToken,
    /// A take-back was decided before the prompt was posted.
    take_back_pending: bool,
}

/// An execution the actor holds (not terminal).
struct Live {
    /// The execution's id, shared with `Actor::by_id`'s key.
    id: Arc<str>,
    /// Its root task's id, shared with `Actor::by_root`'s key.
    root: Arc<str>,
    priority: crate::model::TaskPriority,
    required: RequiredClasses,
    node_tasks: Arc<HashMap<String, String>>,
    timeout: Duration,
    phase: Phase,
    /// Dispatches so far; identifies the current attempt's reports.
    attempt: u64,
    /// Boxed: most live executions are queued, with no run.
    run: Option<Box<Run>>,
    /// Set when a cancel was requested, with its reason.
    cancel_reason: Option<String>,
    /// When it last entered the runtime's queue.
    queued_at: std::time::Instant,
    /// Its workflow.
    workflow_id: String,
    /// Its tags.
    tags: Vec<String>,
    /// For a recovered RUNNING execution: its backend's name and prompt id.
    recovered: Option<(String, String)>,
}

pub(crate) struct Actor {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Msg>,
    tracker: TaskTracker,
    scheduler: Scheduler,
    live: HashMap<ExecutionId, Live>,
    by_id: HashMap<Arc<str>, ExecutionId>,
    by_root: HashMap<Arc<str>, ExecutionId>,
    next_sched: u64,
    /// Starts reported before the prompt ahead of them on the backend was
    /// reported finished (their messages raced); applied after it finishes.
    deferred_starts: Vec<(ExecutionId, BackendId)>,
    /// One shared copy of each required-class list (see `intern`).
    interned: HashSet<RequiredClasses>,
    /// The empty NODE task map every never-dispatched execution shares.
    no_nodes: Arc<HashMap<String, String>>,
}

impl Actor {
    pub(crate) fn new(
        shared: Arc<Shared>,
        tx: mpsc::UnboundedSender<Msg>,
        tracker: TaskTracker,
    ) -> Self {
        let scheduler = Scheduler::new(SchedulerConfig {
            // Admission is bounded before the store write (Shared::backlog);
            // the scheduler never refuses a re-entry.
            max_queue_len: usize::MAX,
            max_concurrent_tasks: shared.settings.max_concurrent,
        });
        Self {
            shared,
            tx,
            tracker,
            scheduler,
            live: HashMap::new(),
            by_id: HashMap::new(),
            by_root: HashMap::new(),
            next_sched: 1,
            deferred_starts: Vec::new(),
            interned: HashSet::new(),
            no_nodes: Arc::new(HashMap::new()),
        }
    }

    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Msg>,
        mut ended: mpsc::UnboundedReceiver<String>,
        cancel: CancellationToken,
    ) {
        self.recover();
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                Some(task_id) = ended.recv() => self.task_ended(&task_id),
                msg = rx.recv() => match msg {
                    Some(msg) => self.handle(msg),
                    None => break,
                },
            }
            self.pump();
            self.publish_gauges();
        }
        for live in self.live.values() {
            if let Some(run) = &live.run {
                run.abandon.cancel();
            }
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Submit {
                execution_id,
                reply,
            } => {
                self.admit(&execution_id, false);
                let _ = reply.send(());
            }
            Msg::Cancel {
                execution_id,
                reason,
                reply,
            } => {
                self.cancel(&execution_id, reason);
                let _ = reply.send(());
            }
            Msg::Retry {
                execution_id,
                reply,
            } => {
                let _ = reply.send(self.manual_retry(&execution_id));
            }
            Msg::Position {
                execution_id,
                reply,
            } => {
                let position = self
                    .by_id
                    .get(execution_id.as_str())
                    .and_then(|sched| self.scheduler.position(*sched))
                    .and_then(|p| u32::try_from(p).ok());
                let _ = reply.send(position);
            }
            Msg::BackendUp { backend, classes } => {
                let count = classes.len();
                self.scheduler.backend_up(backend, classes);
                self.backend_event(backend, true, format!("{count} node classes"));
                self.reconcile_on(backend);
                self.fail_unrunnable();
            }
            Msg::BackendDown { backend } => self.backend_down(backend),
            Msg::Posted {
                sched,
                attempt,
                prompt_id,
                client_id,
            } => self.posted(sched, attempt, prompt_id, client_id),
            Msg::Started { sched, attempt } => self.started(sched, attempt),
            Msg::Finished {
                sched,
                attempt,
                outcome,
            } => self.finished(sched, attempt, outcome),
            Msg::TakeBackDone {
                sched,
                attempt,
                taken,
            } => self.take_back_done(sched, attempt, taken),
            Msg::Reconciled {
                sched,
                attempt,
                found,
            } => self.reconciled(sched, attempt, found),
            Msg::RetryDue { sched, attempt } => {
                if let Some(live) = self.live.get(&sched)
                    && live.phase == Phase::RetryWait
                    && live.attempt == attempt
                {
                    self.enqueue(sched);
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Admission, dependencies
    // -----------------------------------------------------------------------------------------

    /// Loads a stored execution into the actor and queues it (or waits for
    /// its dependencies). `retrying`: a manual retry of a FAILED execution.
    fn admit(&mut self, execution_id: &str, retrying: bool) {
        self.admit_as(
            execution_id,
            if retrying {
                Admission::Retry
            } else {
                Admission::Fresh
            },
        );
    }

    fn admit_as(&mut self, execution_id: &str, admission: Admission) {
        let retrying = admission != Admission::Fresh;
        let loaded = self.load(execution_id);
        let (execution_root, required, node_tasks, root) = match loaded {
            Ok(Some(parts)) => parts,
            Ok(None) => {
                tracing::error!(execution_id, "admitted execution not found in the store");
                self.shared.backlog.fetch_sub(1, Ordering::SeqCst);
                return;
            }
            Err(error) => {
                tracing::error!(execution_id, %error, "execution could not be loaded");
                self.shared.backlog.fetch_sub(1, Ordering::SeqCst);
                return;
            }
        };
        let sched = ExecutionId(self.next_sched);
        self.next_sched += 1;
        let live = Live {
            id: Arc::from(execution_id),
            root: Arc::from(execution_root.as_str()),
            priority: root.priority,
            required,
            // Shared while empty: a queued execution has no NODE tasks yet.
            node_tasks: if node_tasks.is_empty() {
                Arc::clone(&self.no_nodes)
            } else {
                Arc::new(node_tasks)
            },
            timeout: root
                .timeout_seconds
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .unwrap_or(self.shared.settings.default_timeout),
            phase: if retrying {
                Phase::RetryWait
            } else {
                Phase::WaitingDeps
            },
            attempt: 0,
            run: None,
            cancel_reason: None,
            queued_at: std::time::Instant::now(),
            workflow_id: root
                .metadata
                .get("workflow_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            tags: root.tags.iter().cloned().collect(),
            recovered: None,
        };
        self.by_id.insert(live.id.clone(), sched);
        self.by_root.insert(live.root.clone(), sched);
        self.live.insert(sched, live);
        if admission == Admission::Recovering {
            if let Some(live) = self.live.get_mut(&sched) {
                live.phase = Phase::Recovering;
            }
            return;
        }
        if retrying {
            self.enqueue(sched);
            return;
        }
        self.check_dependencies(sched, &root);
    }

    /// Queues `sched` when nothing holds it; cancels it when a REQUIRES
    /// dependency can no longer complete; else records what it waits for.
    fn check_dependencies(&mut self, sched: ExecutionId, root: &Task) {
        for dep in &root.dependencies {
            if dep.dependency_type != DependencyType::Requires {
                continue;
            }
            if let Ok(Some(task)) = self.shared.store.get_task(&dep.task_id)
                && matches!(task.status(), TaskStatus::Failed | TaskStatus::Cancelled)
            {
                let reason = format!(
                    "required dependency {} is {}",
                    dep.task_id,
                    task.status().as_str()
                );
                self.end_cancelled(sched, reason);
                return;
            }
        }
        match self.shared.tasks.unmet_dependencies(root) {
            Ok(unmet) if unmet.is_empty() => self.enqueue(sched),
            Ok(unmet) => {
                let message = format!("waiting for dependencies: {}", unmet.join(", "));
                self.update_root(sched, |task| {
                    task.progress_message = Some(message);
                    Ok(())
                });
            }
            Err(error) => tracing::error!(%error, "dependencies could not be read"),
        }
    }

    /// A task ended: resolve what waits for it.
    fn task_ended(&mut self, task_id: &str) {
        let Ok(Some(ended)) = self.shared.store.get_task(task_id) else {
            return;
        };
        let status = ended.status();
        for (waiter, kind) in self.shared.tasks.dependents(task_id) {
            let broken = kind == DependencyType::Requires && status != TaskStatus::Completed;
            let reason = format!("required dependency {task_id} is {}", status.as_str());
            if let Some(&sched) = self.by_root.get(waiter.as_str()) {
                let Some(live) = self.live.get(&sched) else {
                    continue;
                };
                if broken {
                    self.cancel(&live.id.clone(), Some(reason));
                } else if live.phase == Phase::WaitingDeps
                    && let Ok(Some(root)) = self.shared.store.get_task(&waiter)
                {
                    self.check_dependencies(sched, &root);
                }
            } else if broken {
                // A client-reported task (or an execution that is already
                // over): cancel it if it has not ended.
                if let Ok(Some(task)) = self.shared.store.get_task(&waiter)
                    && !task.status().is_terminal()
                {
                    match self.shared.store.execution_of_task(&waiter) {
                        Ok(Some(_)) => {}
                        _ => {
                            if let Err(error) = self.shared.tasks.cancel(&waiter, Some(reason)) {
                                tracing::warn!(task_id = %waiter, %error, "dependent task not cancelled");
                            }
                        }
                    }
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Recovery after a restart of the runtime
    // -----------------------------------------------------------------------------------------

    /// Takes back every execution the store says has not ended: PENDING and
    /// QUEUED ones return to the queue in their original order (priority
    /// then creation), RETRYING ones too, and RUNNING ones wait for their
    /// backend to say where their prompt is.
    fn recover(&mut self) {
        if let Err(error) = self.shared.tasks.rebuild_indices() {
            tracing::error!(%error, "dependency indices could not be rebuilt");
        }
        let filter = crate::store::ExecutionFilter {
            statuses: vec![
                TaskStatus::Pending,
                TaskStatus::Queued,
                TaskStatus::Running,
                TaskStatus::Retrying,
            ],
            ..Default::default()
        };
        let mut after = None;
        let mut recovered = 0usize;
        loop {
            let page = match self.shared.store.list_executions(&filter, after, 1000) {
                Ok(page) => page,
                Err(error) => {
                    tracing::error!(%error, "executions to recover could not be read");
                    return;
                }
            };
            for execution in page.items {
                recovered += 1;
                self.shared.backlog.fetch_add(1, Ordering::SeqCst);
                match execution.status() {
                    TaskStatus::Running => self.admit_recovering(&execution),
                    TaskStatus::Retrying => self.admit(&execution.id, true),
                    _ => self.admit(&execution.id, false),
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        if recovered > 0 {
            let mut data = JsonObject::new();
            data.insert("executions".into(), Value::from(recovered));
            self.shared.runtime_event(
                EventCategory::System,
                LogLevel::Info,
                "executions.recovered",
                format!("{recovered} unfinished execution(s) taken back after a restart"),
                data,
                EventContext::default(),
            );
        }
    }

    /// A RUNNING execution after a restart: held until its backend answers.
    fn admit_recovering(&mut self, execution: &crate::model::WorkflowExecution) {
        let (Some(backend), Some(prompt_id)) =
            (execution.backend.clone(), execution.prompt_id.clone())
        else {
            // Never handed over: run it anew.
            self.admit(&execution.id, true);
            return;
        };
        let known = self
            .shared
            .pool
            .backends()
            .iter()
            .any(|b| b.name == backend);
        if !known {
            // Its backend is no longer configured: run it anew.
            self.admit(&execution.id, true);
            return;
        }
        self.admit_as(&execution.id, Admission::Recovering);
        let Some(&sched) = self.by_id.get(execution.id.as_str()) else {
            return;
        };
        if let Some(live) = self.live.get_mut(&sched) {
            live.recovered = Some((backend, prompt_id));
        }
        let message =
            "recovered after a restart; asking its backend where its prompt is".to_owned();
        self.update_root(sched, |task| {
            task.progress_message = Some(message);
            Ok(())
        });
    }

    /// Asks `backend` where the prompts of the recovered executions it had are.
    fn reconcile_on(&mut self, backend_id: BackendId) {
        let Some(backend) = self.shared.pool.get(backend_id).cloned() else {
            return;
        };
        let waiting: Vec<(ExecutionId, u64, String, String)> = self
            .live
            .iter()
            .filter(|(_, l)| l.phase == Phase::Recovering)
            .filter_map(|(sched, l)| {
                let (name, prompt) = l.recovered.as_ref()?;
                (*name == backend.name)
                    .then(|| (*sched, l.attempt, prompt.clone(), l.id.to_string()))
            })
            .collect();
        for (sched, attempt, prompt_id, execution_id) in waiting {
            let backend = Arc::clone(&backend);
            let shared = Arc::clone(&self.shared);
            let tx = self.tx.clone();
            self.tracker.spawn(async move {
                let found = match backend.client().locate(&prompt_id).await {
                    Ok(PromptLocation::Finished(entry)) => Found::Ended(
                        attempt::collect(&shared, &backend, &execution_id, *entry).await,
                    ),
                    Ok(PromptLocation::Running(_)) => Found::Running,
                    Ok(PromptLocation::Pending(_)) => Found::Pending,
                    Ok(PromptLocation::Unknown) => Found::Unknown,
                    Err(_) => Found::Unreachable,
                };
                let _ = tx.send(Msg::Reconciled {
                    sched,
                    attempt,
                    found,
                });
            });
        }
    }

    fn reconciled(&mut self, sched: ExecutionId, attempt: u64, found: Found) {
        let Some(live) = self.live.get(&sched) else {
            return;
        };
        if live.phase != Phase::Recovering || live.attempt != attempt {
            return;
        }
        let Some((name, prompt_id)) = live.recovered.clone() else {
            return;
        };
        let backend = self
            .shared
            .pool
            .backends()
            .iter()
            .find(|b| b.name == name)
            .cloned();
        tracing::info!(execution_id = %live.id, backend = %name, %prompt_id, "recovered execution reconciled");
        match found {
            Found::Ended(outcome) => {
                if let Some(live) = self.live.get_mut(&sched) {
                    live.phase = Phase::Scheduled;
                }
                self.settle_recovered(sched, outcome);
            }
            Found::Running | Found::Pending => {
                let started = matches!(found, Found::Running);
                let Some(backend) = backend else { return };
                let key = ExecutionKey {
                    id: sched,
                    priority: live.priority,
                    required: live.required.clone(),
                };
                if self.scheduler.adopt(key, backend.id, started).is_ok() {
                    self.attach(sched, &backend, prompt_id, started);
                } else {
                    // No slot for it: stop it there and run it anew here.
                    let client = backend.client().clone();
                    self.tracker.spawn(async move {
                        if started {
                            let _ = client.interrupt(&prompt_id).await;
                        } else {
                            let _ = client.delete_from_queue(&[prompt_id]).await;
                        }
                    });
                    if let Some(live) = self.live.get_mut(&sched) {
                        live.phase = Phase::Scheduled;
                        live.recovered = None;
                    }
                    self.enqueue(sched);
                }
            }
            Found::Unknown => {
                if let Some(live) = self.live.get_mut(&sched) {
                    live.phase = Phase::Scheduled;
                    live.recovered = None;
                }
                let failure = Failure::transient(
                    FailureKind::PromptLost,
                    format!("after a restart, backend {name} had no record of prompt {prompt_id}"),
                );
                self.failed(sched, &failure);
            }
            // The next BackendUp asks again.
            Found::Unreachable => {}
        }
    }

    /// Ends a recovered execution whose prompt ended unwatched.
    fn settle_recovered(&mut self, sched: ExecutionId, outcome: Outcome) {
        let cancelled = self
            .live
            .get(&sched)
            .is_some_and(|l| l.cancel_reason.is_some());
        match outcome {
            Outcome::Success { outputs, artifacts } => {
                self.end_completed(sched, outputs, artifacts)
            }
            Outcome::Interrupted | Outcome::Failed(_) if cancelled => {
                let reason = live_reason(self.live.get(&sched));
                self.end_cancelled(sched, reason);
            }
            Outcome::Interrupted => self.end_failed(
                sched,
                &Failure::permanent(
                    FailureKind::Interrupted,
                    "the prompt was interrupted on the backend while the runtime was down",
                ),
            ),
            Outcome::Failed(failure) => self.failed(sched, &failure),
        }
    }

    /// Follows a recovered prompt that is still on `backend`.
    fn attach(
        &mut self,
        sched: ExecutionId,
        backend: &Arc<Backend>,
        prompt_id: String,
        started: bool,
    ) {
        let Some(live) = self.live.get_mut(&sched) else {
            return;
        };
        live.phase = Phase::Scheduled;
        live.recovered = None;
        live.attempt += 1;
        let (control, control_rx) = mpsc::unbounded_channel();
        let abandon = CancellationToken::new();
        live.run = Some(Box::new(Run {
            backend: backend.id,
            prompt_id: Some(prompt_id.clone()),
            control,
            abandon: abandon.clone(),
            take_back_pending: false,
        }));
        let spec = AttemptSpec {
            sched,
            attempt: live.attempt,
            execution_id: live.id.to_string(),
            prompt_id: Uuid::new_v4(),
            attach: Some(prompt_id),
            prompt: Value::Null,
            node_tasks: Arc::clone(&live.node_tasks),
            timeout: live.timeout,
        };
        self.tracker.spawn(attempt::run(
            Arc::clone(&self.shared),
            Arc::clone(backend),
            spec,
            control_rx,
            abandon,
            self.tx.clone(),
        ));
        let message = if started {
            format!("recovered after a restart; executing on {}", backend.name)
        } else {
            format!(
                "recovered after a restart; waiting in {}'s queue",
                backend.name
            )
        };
        self.update_root(sched, |task| {
            task.progress_message = Some(message);
            Ok(())
        });
    }

    // -----------------------------------------------------------------------------------------
    // Scheduling
    // -----------------------------------------------------------------------------------------

    /// Puts `sched` in the scheduler's queue: QUEUED.
    fn enqueue(&mut self, sched: ExecutionId) {
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

    /// Queue depth per priority and executions in flight, as gauges.
    fn publish_gauges(&self) {
        for priority in [
            TaskPriority::Low,
            TaskPriority::Normal,
            TaskPriority::High,
            TaskPriority::Critical,
        ] {
            metrics::set_queue_depth(priority.as_str(), self.scheduler.queue_depth(priority));
        }
        metrics::set_tasks_running(self.scheduler.in_flight());
    }

    /// Carries out the scheduler's actions.
    fn pump(&mut self) {
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

    fn dispatch(&mut self, sched: ExecutionId, backend_id: BackendId) {
        let Some(backend) = self.shared.pool.get(backend_id).cloned() else {
            let _ = self.scheduler.prompt_finished(backend_id, sched);
            return;
        };
        let Some(live) = self.live.get_mut(&sched) else {
            let _ = self.scheduler.prompt_finished(backend_id, sched);
            return;
        };
        let prompt = match self.shared.store.execution_prompt(&live.id) {
            Ok(Some(bytes)) => serde_json::from_slice::<Value>(&bytes),
            Ok(None) => Ok(Value::Null),
            Err(error) => {
                tracing::error!(execution_id = %live.id, %error, "prompt could not be read");
                Ok(Value::Null)
            }
        };
        let prompt = match prompt {
            Ok(prompt) if prompt.is_object() => prompt,
            _ => {
                let _ = self.scheduler.prompt_finished(backend_id, sched);
                let failure = Failure::permanent(
                    FailureKind::Rejected,
                    "the stored prompt could not be read",
                );
                self.end_failed(sched, &failure);
                return;
            }
        };
        self.ensure_node_tasks(sched, &prompt);
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
        }));
        let spec = AttemptSpec {
            sched,
            attempt: live.attempt,
            execution_id: live.id.to_string(),
            prompt_id,
            attach: None,
            prompt,
            node_tasks: Arc::clone(&live.node_tasks),
            timeout: live.timeout,
        };
        let execution_id = live.id.clone();
        let name = backend.name.clone();
        tracing::info!(execution_id = %execution_id, backend = %name, attempt = spec.attempt, "dispatching");
        self.tracker.spawn(attempt::run(
            Arc::clone(&self.shared),
            Arc::clone(&backend),
            spec,
            control_rx,
            abandon,
            self.tx.clone(),
        ));
        let prompt_text = prompt_id.hyphenated().to_string();
        if let Err(error) = self.shared.update_execution(&execution_id, |execution| {
            execution.backend = Some(name.clone());
            execution.prompt_id = Some(prompt_text);
            Ok(())
        }) {
            tracing::warn!(%execution_id, %error, "execution not updated");
        }
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

    fn posted(&mut self, sched: ExecutionId, attempt: u64, prompt_id: String, client_id: String) {
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
        if let Err(error) = self.shared.update_execution(&id, |execution| {
            execution.prompt_id = Some(prompt_id);
            execution.client_id = client_id;
            Ok(())
        }) {
            tracing::warn!(execution_id = %id, %error, "execution not updated");
        }
        if take_back {
            self.take_back(sched);
        }
    }

    fn started(&mut self, sched: ExecutionId, attempt: u64) {
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
    fn apply_deferred_starts(&mut self, backend: BackendId) {
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

    fn take_back_done(&mut self, sched: ExecutionId, attempt: u64, taken: bool) {
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
                let reason = live_reason(self.live.get(&sched));
                self.end_cancelled(sched, reason);
            }
            Err(error) => tracing::debug!(%error, "take-back not applied"),
        }
    }

    /// Publishes a backend's change of state as a runtime event.
    fn backend_event(&self, backend: BackendId, up: bool, detail: String) {
        let Some(b) = self.shared.pool.get(backend) else {
            return;
        };
        let (event_type, level, message) = if up {
            (
                "backend.up",
                LogLevel::Info,
                format!("backend {} is up ({detail})", b.name),
            )
        } else {
            (
                "backend.down",
                LogLevel::Warning,
                format!("backend {} is down: {detail}", b.name),
            )
        };
        metrics::set_backend_up(&b.name, up);
        let mut data = JsonObject::new();
        data.insert("backend".into(), Value::from(b.name.clone()));
        self.shared.runtime_event(
            EventCategory::System,
            level,
            event_type,
            message,
            data,
            EventContext::default(),
        );
    }

    fn backend_down(&mut self, backend: BackendId) {
        let detail = self
            .shared
            .pool
            .get(backend)
            .and_then(|b| b.state().last_error)
            .unwrap_or_else(|| "it stopped answering".into());
        self.backend_event(backend, false, detail);
        let orphaned = self.scheduler.backend_down(backend);
        self.deferred_starts.retain(|(_, b)| *b != backend);
        let name = self
            .shared
            .pool
            .get(backend)
            .map(|b| b.name.clone())
            .unwrap_or_default();
        for orphan in orphaned {
            let Some(live) = self.live.get_mut(&orphan.id) else {
                continue;
            };
            if let Some(run) = live.run.take() {
                run.abandon.cancel();
            }
            // Reports of the abandoned attempt are stale from now on.
            live.attempt += 1;
            if live.cancel_reason.is_some() {
                let reason = live_reason(Some(live));
                self.end_cancelled(orphan.id, reason);
            } else {
                let failure = Failure::transient(
                    FailureKind::BackendUnavailable,
                    format!("backend {name} stopped answering while the execution was on it"),
                );
                self.failed(orphan.id, &failure);
            }
        }
    }

    /// Fails queued executions that no backend could ever run, once every
    /// backend has told its classes.
    fn fail_unrunnable(&mut self) {
        let all_known = self
            .shared
            .pool
            .backends()
            .iter()
            .all(|b| b.state().catalogue.is_some());
        if !all_known {
            return;
        }
        for stranded in self.scheduler.stranded() {
            if stranded.runnable_by_down_backend || stranded.missing.is_empty() {
                continue;
            }
            let missing: Vec<&str> = stranded.missing.iter().map(|c| &**c).collect();
            let failure = Failure::permanent(
                FailureKind::NoBackend,
                format!("no backend has the node classes {}", missing.join(", ")),
            );
            for sched in stranded.ids {
                if self.scheduler.cancel(sched) == CancelOutcome::Removed {
                    self.end_failed(sched, &failure);
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Endings
    // -----------------------------------------------------------------------------------------

    fn finished(&mut self, sched: ExecutionId, attempt: u64, outcome: Outcome) {
        let Some(live) = self.live.get_mut(&sched) else {
            return;
        };
        if live.attempt != attempt {
            return;
        }
        // No run: it was taken away (taken back, backend down) and this is a
        // late report of an abandoned attempt.
        let Some(run) = live.run.take() else {
            return;
        };
        if self.scheduler.prompt_finished(run.backend, sched).is_ok() {
            self.apply_deferred_starts(run.backend);
        }
        let cancelled = self
            .live
            .get(&sched)
            .is_some_and(|l| l.cancel_reason.is_some());
        match outcome {
            Outcome::Success { outputs, artifacts } => {
                self.end_completed(sched, outputs, artifacts)
            }
            Outcome::Interrupted if cancelled => {
                let reason = live_reason(self.live.get(&sched));
                self.end_cancelled(sched, reason);
            }
            Outcome::Interrupted => self.end_failed(
                sched,
                &Failure::permanent(
                    FailureKind::Interrupted,
                    "the prompt was interrupted on the backend by someone else",
                ),
            ),
            Outcome::Failed(_) if cancelled => {
                let reason = live_reason(self.live.get(&sched));
                self.end_cancelled(sched, reason);
            }
            Outcome::Failed(failure) => self.failed(sched, &failure),
        }
    }

    /// A failed attempt: retried when transient with retries left, else the end.
    fn failed(&mut self, sched: ExecutionId, failure: &Failure) {
        let Some(live) = self.live.get(&sched) else {
            return;
        };
        let root = self.shared.store.get_task(&live.root).ok().flatten();
        let retries_left = root.as_ref().is_some_and(Task::retries_left);
        if !failure.transient || !retries_left {
            self.end_failed(sched, failure);
            return;
        }
        let retry_count = root.map_or(0, |r| r.retry_count) + 1;
        let delay = backoff(
            self.shared.settings.retry_delay,
            self.shared.settings.retry_max_delay,
            retry_count,
        );
        tracing::warn!(
            execution_id = %live.id,
            error_type = failure.kind.as_str(),
            error = %failure.message,
            retry = retry_count,
            delay_seconds = delay.as_secs_f64(),
            "execution failed; retrying"
        );
        let message = format!(
            "retry {retry_count} in {:.1}s after {}: {}",
            delay.as_secs_f64(),
            failure.kind.as_str(),
            failure.message
        );
        self.set_status(sched, TaskStatus::Retrying, Some(message.clone()));
        metrics::retry(failure.kind.as_str());
        let mut data = JsonObject::new();
        data.insert("error_type".into(), Value::from(failure.kind.as_str()));
        data.insert("retry".into(), Value::from(retry_count));
        data.insert("delay_seconds".into(), Value::from(delay.as_secs_f64()));
        let context = self.context(sched);
        self.shared.runtime_event(
            EventCategory::Workflow,
            LogLevel::Warning,
            "execution.retrying",
            message,
            data,
            context,
        );
        let Some(live) = self.live.get_mut(&sched) else {
            return;
        };
        live.phase = Phase::RetryWait;
        let attempt = live.attempt;
        let tx = self.tx.clone();
        self.tracker.spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Msg::RetryDue { sched, attempt });
        });
    }

    fn manual_retry(&mut self, execution_id: &str) -> Result<(), RuntimeError> {
        if self.by_id.contains_key(execution_id) {
            return Err(RuntimeError::FailedPrecondition {
                kind: crate::runtime::ObjectKind::Execution,
                id: execution_id.to_owned(),
                reason: "the execution has not ended".into(),
            });
        }
        let execution = self
            .shared
            .store
            .get_execution(execution_id)?
            .ok_or_else(|| RuntimeError::execution_not_found(execution_id))?;
        let root_id = execution.root_task_id.clone().unwrap_or_default();
        if execution.status() != TaskStatus::Failed {
            return Err(RuntimeError::FailedPrecondition {
                kind: crate::runtime::ObjectKind::Execution,
                id: execution_id.to_owned(),
                reason: format!(
                    "only a failed execution can be retried; it is {}",
                    execution.status().as_str()
                ),
            });
        }
        let capacity = self.shared.settings.max_queue_len + self.shared.settings.max_concurrent;
        if self
            .shared
            .backlog
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < capacity).then_some(n + 1)
            })
            .is_err()
        {
            return Err(RuntimeError::ResourceExhausted {
                what: format!("execution queue ({capacity} executions admitted)"),
                retry_after: Duration::from_secs(5),
            });
        }
        if let Err(error) = self.shared.tasks.retry(&root_id) {
            self.shared.backlog.fetch_sub(1, Ordering::SeqCst);
            return Err(error);
        }
        self.shared.update_execution(execution_id, |execution| {
            execution
                .transition(TaskStatus::Retrying)
                .map_err(|e| execution_transition(execution, &e))
        })?;
        self.admit(execution_id, true);
        Ok(())
    }

    fn cancel(&mut self, execution_id: &str, reason: Option<String>) {
        let Some(&sched) = self.by_id.get(execution_id) else {
            self.cancel_unheld(execution_id, reason);
            return;
        };
        let Some(live) = self.live.get_mut(&sched) else {
            return;
        };
        if live.cancel_reason.is_none() {
            live.cancel_reason = Some(reason.unwrap_or_else(|| "cancelled on request".into()));
        }
        match live.phase {
            Phase::Recovering => {
                // Its prompt may still be on its backend: stop it there, best
                // effort (the backend may be down), and end it here.
                if let Some((name, prompt_id)) = live.recovered.clone()
                    && let Some(backend) =
                        self.shared.pool.backends().iter().find(|b| b.name == name)
                {
                    let client = backend.client().clone();
                    self.tracker.spawn(async move {
                        let _ = client
                            .delete_from_queue(std::slice::from_ref(&prompt_id))
                            .await;
                        let _ = client.interrupt(&prompt_id).await;
                    });
                }
                let reason = live_reason(Some(live));
                self.end_cancelled(sched, reason);
            }
            Phase::WaitingDeps | Phase::RetryWait => {
                let reason = live_reason(Some(live));
                self.end_cancelled(sched, reason);
            }
            Phase::Scheduled => match self.scheduler.cancel(sched) {
                CancelOutcome::Removed | CancelOutcome::NotFound => {
                    if let Some(run) = live.run.take() {
                        run.abandon.cancel();
                    }
                    let reason = live_reason(self.live.get(&sched));
                    self.end_cancelled(sched, reason);
                }
                CancelOutcome::TakingBack { .. } | CancelOutcome::Interrupting { .. } => {
                    let message = "cancelling: waiting for the backend to confirm".to_owned();
                    self.update_root(sched, |task| {
                        task.progress_message = Some(message);
                        Ok(())
                    });
                }
            },
        }
    }

    /// Cancels an execution the actor does not hold but the store says has
    /// not ended (it could not be loaded): nothing runs it, so it ends here.
    fn cancel_unheld(&mut self, execution_id: &str, reason: Option<String>) {
        let Ok(Some(execution)) = self.shared.store.get_execution(execution_id) else {
            return;
        };
        if execution.status().is_terminal() {
            return;
        }
        tracing::warn!(
            execution_id,
            "cancelling an execution the executor did not hold"
        );
        if let Some(root) = &execution.root_task_id
            && let Err(error) = self.shared.tasks.cancel(root, reason)
        {
            tracing::error!(execution_id, %error, "root task not cancelled");
        }
        if let Err(error) = self.shared.update_execution(execution_id, |execution| {
            execution
                .transition(TaskStatus::Cancelled)
                .map_err(|e| execution_transition(execution, &e))
        }) {
            tracing::error!(execution_id, %error, "execution not cancelled");
        }
    }

    fn end_completed(
        &mut self,
        sched: ExecutionId,
        outputs: crate::model::JsonObject,
        artifacts: Vec<String>,
    ) {
        let Some(live) = self.live.get(&sched) else {
            return;
        };
        let id = live.id.clone();
        let result = serde_json::json!({
            "artifacts": artifacts.clone(),
            "output_nodes": outputs.keys().cloned().collect::<Vec<_>>(),
        });
        if let Err(error) = self.shared.update_execution(&id, |execution| {
            execution.outputs = outputs;
            execution.artifacts = artifacts;
            Ok(())
        }) {
            tracing::error!(execution_id = %id, %error, "outputs not recorded");
        }
        self.settle_nodes(
            sched,
            "not executed: no output of the prompt needed it",
            true,
        );
        self.update_root(sched, |task| {
            task.progress_message = Some("completed".into());
            task.complete(Some(result))
                .map_err(|source| illegal(task, source))
        });
        self.finish(sched, TaskStatus::Completed);
    }

    fn end_failed(&mut self, sched: ExecutionId, failure: &Failure) {
        let Some(live) = self.live.get(&sched) else {
            return;
        };
        tracing::warn!(
            execution_id = %live.id,
            error_type = failure.kind.as_str(),
            error = %failure.message,
            "execution failed"
        );
        self.settle_nodes(sched, "not run: the execution failed", false);
        let message = failure.message.clone();
        let kind = failure.kind.as_str().to_owned();
        self.update_root(sched, |task| {
            task.fail(message, Some(kind))
                .map_err(|source| illegal(task, source))
        });
        self.finish(sched, TaskStatus::Failed);
    }

    fn end_cancelled(&mut self, sched: ExecutionId, reason: String) {
        let Some(live) = self.live.get(&sched) else {
            return;
        };
        tracing::info!(execution_id = %live.id, %reason, "execution cancelled");
        if let Err(error) = self.shared.tasks.cancel(&live.root, Some(reason)) {
            tracing::error!(execution_id = %live.id, %error, "root task not cancelled");
        }
        self.finish(sched, TaskStatus::Cancelled);
    }

    /// Cancels the NODE tasks that have not ended, with `reason`.
    /// Nodes that have not ended: on success, one still RUNNING did run (its
    /// end was not seen, e.g. it was followed again after a restart) and
    /// completes; any other is cancelled with `reason`.
    fn settle_nodes(&self, sched: ExecutionId, reason: &str, succeeded: bool) {
        let Some(live) = self.live.get(&sched) else {
            return;
        };
        for task_id in live.node_tasks.values() {
            if succeeded {
                // A node stopped for a retry that then ran unseen (followed
                // again after a restart) runs again first: RETRYING cannot
                // complete directly.
                let _ = self.shared.tasks.update(task_id, |task| {
                    if task.status() == TaskStatus::Retrying {
                        task.transition(TaskStatus::Running)
                            .map_err(|source| illegal(task, source))?;
                    }
                    Ok(())
                });
            }
            let result = self.shared.tasks.update(task_id, |task| {
                if succeeded && task.status() == TaskStatus::Running {
                    task.progress_message = Some("executed".into());
                    task.transition(TaskStatus::Completed)
                        .map_err(|source| illegal(task, source))?;
                } else if !task.status().is_terminal() {
                    task.progress_message = Some(reason.to_owned());
                    task.transition(TaskStatus::Cancelled)
                        .map_err(|source| illegal(task, source))?;
                }
                Ok(())
            });
            if let Err(error) = result {
                tracing::debug!(task_id, %error, "node task not settled");
            }
        }
    }

    /// Forgets an ended execution and records its end on the record.
    fn finish(&mut self, sched: ExecutionId, status: TaskStatus) {
        let Some(live) = self.live.remove(&sched) else {
            return;
        };
        self.by_id.remove(&live.id);
        self.by_root.remove(&live.root);
        self.deferred_starts.retain(|(s, _)| *s != sched);
        if let Some(run) = &live.run {
            run.abandon.cancel();
        }
        self.shared.backlog.fetch_sub(1, Ordering::SeqCst);
        let result = self.shared.update_execution(&live.id, |execution| {
            if execution.status() != status {
                execution
                    .transition(status)
                    .map_err(|e| execution_transition(execution, &e))?;
            }
            let seconds = (Utc::now() - execution.created_at)
                .to_std()
                .unwrap_or_default()
                .as_secs_f64();
            execution.total_duration_seconds = Some(seconds);
            Ok(())
        });
        match result {
            Ok(execution) => {
                if let Some(seconds) = execution.total_duration_seconds {
                    self.shared.record_duration(seconds);
                }
                self.ended_event(&live, &execution);
            }
            Err(error) => {
                tracing::error!(execution_id = %live.id, %error, "execution end not recorded")
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Helpers
    // -----------------------------------------------------------------------------------------

    /// An execution's root, required classes (from its stored prompt) and
    /// the NODE tasks it has so far (none before its first dispatch).
    fn load(&mut self, execution_id: &str) -> Result<Option<Loaded>, RuntimeError> {
        let store = &self.shared.store;
        let Some(execution) = store.get_execution(execution_id)? else {
            return Ok(None);
        };
        let Some(root_id) = execution.root_task_id.clone() else {
            return Ok(None);
        };
        let Some(root) = store.get_task(&root_id)? else {
            return Ok(None);
        };
        let mut node_tasks = HashMap::new();
        for child in store.child_ids(&root_id)? {
            if let Some(task) = store.get_task(&child)?
                && task.task_type == crate::model::TaskType::Node
                && let Some(node) = task.metadata.get("node_id").and_then(Value::as_str)
            {
                node_tasks.insert(node.to_owned(), task.id.clone());
            }
        }
        let classes: Vec<String> = match store.execution_prompt(execution_id)? {
            Some(prompt) => serde_json::from_slice::<HashMap<String, PromptNode>>(&prompt)
                .map(|nodes| nodes.into_values().map(|node| node.class_type).collect())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let required = self.intern(RequiredClasses::new(classes));
        Ok(Some((root_id, required, node_tasks, root)))
    }

    /// The shared copy of `required`: executions of one workflow hold one
    /// class list between them, not one each.
    fn intern(&mut self, required: RequiredClasses) -> RequiredClasses {
        if let Some(known) = self.interned.get(&required) {
            return known.clone();
        }
        self.interned.insert(required.clone());
        required
    }

    /// Creates the NODE tasks of an execution about to be dispatched for
    /// the first time, from its prompt; the tasks are stored and announced
    /// before the prompt is posted, so a restart finds them.
    fn ensure_node_tasks(&mut self, sched: ExecutionId, prompt: &Value) {
        let Some(live) = self.live.get(&sched) else {
            return;
        };
        if !live.node_tasks.is_empty() {
            return;
        }
        let Some(prompt) = prompt.as_object() else {
            return;
        };
        let root = match self.shared.store.get_task(&live.root) {
            Ok(Some(root)) => root,
            Ok(None) => return,
            Err(error) => {
                tracing::error!(execution_id = %live.id, %error, "root task could not be read");
                return;
            }
        };
        let nodes = node_tasks(&root, &live.id, prompt);
        if let Err(error) = self.shared.store.add_execution_tasks(&live.id, &nodes) {
            tracing::error!(execution_id = %live.id, %error, "node tasks not stored");
            return;
        }
        self.shared.tasks.announce_created(&nodes);
        let map: HashMap<String, String> = nodes
            .iter()
            .filter_map(|task| {
                let node = task.metadata.get("node_id").and_then(Value::as_str)?;
                Some((node.to_owned(), task.id.clone()))
            })
            .collect();
        if let Some(live) = self.live.get_mut(&sched) {
            live.node_tasks = Arc::new(map);
        }
    }

    /// Moves the root task and the execution record to `to`.
    fn set_status(&mut self, sched: ExecutionId, to: TaskStatus, message: Option<String>) {
        let Some(live) = self.live.get(&sched) else {
            return;
        };
        let id = live.id.clone();
        // The record first: the root task's event is what wakes watchers, and
        // they must then read the new status.
        if let Err(error) = self.shared.update_execution(&id, |execution| {
            if execution.status() != to {
                execution
                    .transition(to)
                    .map_err(|e| execution_transition(execution, &e))?;
            }
            Ok(())
        }) {
            tracing::error!(execution_id = %id, %error, "execution status not recorded");
        }
        self.update_root(sched, |task| {
            if task.status() != to {
                task.transition(to)
                    .map_err(|source| illegal(task, source))?;
            }
            if message.is_some() {
                task.progress_message = message;
            }
            Ok(())
        });
    }

    /// What events about `sched` are about.
    fn context(&self, sched: ExecutionId) -> EventContext {
        self.live
            .get(&sched)
            .map_or_else(EventContext::default, live_context)
    }

    /// Publishes the end of an execution (after its record is final, so a
    /// watcher woken by it reads the final state) and its duration.
    fn ended_event(&self, live: &Live, execution: &crate::model::WorkflowExecution) {
        let root = self.shared.store.get_task(&live.root).ok().flatten();
        let status = execution.status();
        let error_type = root.as_ref().and_then(|r| r.error_type.clone());
        let timed_out = error_type.as_deref() == Some(FailureKind::Timeout.as_str());
        match status {
            TaskStatus::Cancelled => metrics::cancellation(),
            TaskStatus::Failed if timed_out => metrics::timeout(),
            _ => {}
        }
        let (event_type, level) = match status {
            TaskStatus::Completed => ("execution.completed", LogLevel::Info),
            TaskStatus::Cancelled => ("execution.cancelled", LogLevel::Info),
            _ if timed_out => ("execution.timed_out", LogLevel::Error),
            _ => ("execution.failed", LogLevel::Error),
        };
        let mut message = format!("execution {} {}", live.id, status.as_str());
        if let Some(error) = root.as_ref().and_then(|r| r.error.as_deref()) {
            message.push_str(&format!(": {error}"));
        }
        let mut data = JsonObject::new();
        data.insert("status".into(), Value::from(status.as_str()));
        if let Some(seconds) = execution.total_duration_seconds {
            data.insert("duration_seconds".into(), Value::from(seconds));
        }
        let mut event_context = live_context(live);
        event_context.task_id = Some(live.root.to_string());
        let category = if status == TaskStatus::Failed {
            EventCategory::Error
        } else {
            EventCategory::Workflow
        };
        let event = self
            .shared
            .runtime_event_value(category, level, event_type, message, data, error_type);
        if let Some(event) = event {
            self.shared
                .tasks
                .bus()
                .publish_runtime(event, event_context.clone());
        }
        if let Some(seconds) = execution.total_duration_seconds {
            self.shared.metric(
                "execution_seconds",
                seconds,
                "seconds",
                event_context,
                &[("status", status.as_str())],
            );
        }
    }

    fn update_root<F>(&self, sched: ExecutionId, change: F)
    where
        F: FnOnce(&mut Task) -> Result<(), RuntimeError>,
    {
        let Some(live) = self.live.get(&sched) else {
            return;
        };
        if let Err(error) = self.shared.tasks.update(&live.root, change) {
            tracing::error!(execution_id = %live.id, %error, "root task not updated");
        }
    }
}

/// A stored execution as the actor loads it: root task id, required classes,
/// node id -> NODE task id, and the root task.
type Loaded = (String, RequiredClasses, HashMap<String, String>, Task);

/// The part of a stored prompt's node that admission reads.
#[derive(serde::Deserialize)]
struct PromptNode {
    /// The node's class.
    class_type: String,
}

/// What events about a live execution are about.
fn live_context(live: &Live) -> EventContext {
    EventContext {
        task_id: Some(live.root.to_string()),
        execution_id: Some(live.id.to_string()),
        workflow_id: Some(live.workflow_id.clone()).filter(|w| !w.is_empty()),
        tags: live.tags.clone(),
        node: false,
    }
}

fn live_reason(live: Option<&Live>) -> String {
    live.and_then(|l| l.cancel_reason.clone())
        .unwrap_or_else(|| "cancelled on request".into())
}

fn execution_transition(
    execution: &crate::model::WorkflowExecution,
    error: &crate::model::workflow::ExecutionTransitionError,
) -> RuntimeError {
    RuntimeError::FailedPrecondition {
        kind: crate::runtime::ObjectKind::Execution,
        id: execution.id.clone(),
        reason: error.to_string(),
    }
}

fn illegal(task: &Task, source: TransitionError) -> RuntimeError {
    RuntimeError::IllegalTransition {
        task_id: task.id.clone(),
        source,
    }
}

/// The delay before retry number `retry` (1-based): exponential from `base`,
/// capped at `max`, with jitter.
fn backoff(base: Duration, max: Duration, retry: u32) -> Duration {
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(base)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build();
    delays
        .nth(usize::try_from(retry.saturating_sub(1)).unwrap_or(usize::MAX))
        .unwrap_or(max)
        .min(max.max(base))
}

/// The NODE tasks of an execution, one per node of its stored `prompt`
/// (in the prompt's order), children of `root`: named by the node's
/// `_meta.title` (or class) and id, with the root's priority, tags and
/// retry limit. A node whose task cannot be built is skipped and logged.
fn node_tasks(root: &Task, execution_id: &str, prompt: &JsonObject) -> Vec<Task> {
    let workflow_id = root
        .metadata
        .get("workflow_id")
        .cloned()
        .unwrap_or(Value::Null);
    let mut tasks = Vec::with_capacity(prompt.len());
    for (node_id, node) in prompt {
        let class_type = node
            .get("class_type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let title = node
            .get("_meta")
            .and_then(|meta| meta.get("title"))
            .and_then(Value::as_str)
            .filter(|t| !t.trim().is_empty())
            .unwrap_or(class_type);
        let mut metadata = JsonObject::new();
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
            Ok(task) => tasks.push(task),
            Err(error) => {
                tracing::error!(execution_id, node_id, %error, "node task not created");
            }
        }
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        let first = backoff(base, max, 1);
        assert!(first >= base && first <= base * 2, "{first:?}");
        let third = backoff(base, max, 3);
        assert!(third >= base * 4 && third <= max, "{third:?}");
        assert!(backoff(base, max, 30) <= max);
    }
}
