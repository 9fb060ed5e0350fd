//! How an execution ends: an attempt's outcome decides COMPLETED, FAILED
//! (or a retry) or CANCELLED; the root task, the NODE tasks not yet ended and
//! the execution record are settled, and the end is published.
//!
//! One part of the [`Actor`]'s `impl`, split by concern: it imports the
//! actor's state from its parent and the executor's lower modules, never
//! another part.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use chrono::Utc;
use serde_json::Value;

use crate::model::{EventCategory, JsonObject, LogLevel, TaskStatus};
use crate::runtime::executor::failure::{Failure, FailureKind};
use crate::runtime::executor::messages::Outcome;
use crate::runtime::scheduler::ExecutionId;
use crate::telemetry::metrics;

use super::{Actor, Live, execution_transition, illegal, live_context};

impl Actor {
    /// An attempt ended: its outcome decides the execution's end (or a
    /// retry); `ended`, the NODE tasks it left ended.
    pub(super) fn finished(
        &mut self,
        sched: ExecutionId,
        attempt: u64,
        outcome: Outcome,
        ended: HashSet<String>,
    ) {
        let Some(live) = self.live.get_mut(&sched) else {
            return;
        };
        if live.attempt != attempt {
            return;
        }
        // No run: it was taken away (taken back, backend down) and this is a
        // late report of an abandoned attempt.
        let Some(mut run) = live.run.take() else {
            return;
        };
        self.record_gpu_peak(sched, run.gpu_peak.take());
        if self.scheduler.prompt_finished(run.backend, sched).is_ok() {
            self.apply_deferred_starts(run.backend);
        }
        let cancelled = self
            .live
            .get(&sched)
            .is_some_and(|l| l.cancel_reason.is_some());
        self.ended_nodes = ended;
        self.end_attempt(sched, outcome, cancelled);
        self.ended_nodes = HashSet::new();
    }

    /// Ends `sched` (or retries it) as its attempt's `outcome` says.
    fn end_attempt(&mut self, sched: ExecutionId, outcome: Outcome, cancelled: bool) {
        match outcome {
            Outcome::Success { outputs, artifacts } => {
                self.end_completed(sched, outputs, artifacts)
            }
            Outcome::Interrupted if cancelled => {
                let reason = self.cancel_reason(sched);
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
                let reason = self.cancel_reason(sched);
                self.end_cancelled(sched, reason);
            }
            Outcome::Failed(failure) => self.failed(sched, &failure),
        }
    }

    /// Ends `sched` COMPLETED with its outputs and artifacts.
    pub(super) fn end_completed(
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
        let ended = self.record_end(sched, TaskStatus::Completed);
        self.update_root(sched, |task| {
            task.progress_message = Some("completed".into());
            task.complete(Some(result))
                .map_err(|source| illegal(task, source))
        });
        self.finish(sched, ended);
    }

    /// Ends `sched` FAILED with `failure` (no retry).
    pub(super) fn end_failed(&mut self, sched: ExecutionId, failure: &Failure) {
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
        let ended = self.record_end(sched, TaskStatus::Failed);
        self.update_root(sched, |task| {
            task.fail(message, Some(kind))
                .map_err(|source| illegal(task, source))
        });
        self.finish(sched, ended);
    }

    /// Ends `sched` CANCELLED with `reason`.
    pub(super) fn end_cancelled(&mut self, sched: ExecutionId, reason: String) {
        let Some(live) = self.live.get(&sched) else {
            return;
        };
        tracing::info!(execution_id = %live.id, %reason, "execution cancelled");
        let root = live.root.clone();
        let ended = self.record_end(sched, TaskStatus::Cancelled);
        if let Err(error) = self.shared.tasks.cancel_unwaited(&root, Some(reason)) {
            tracing::error!(execution_id = %ended.as_ref().map(|e| e.id.clone()).unwrap_or_default(), %error, "root task not cancelled");
        }
        self.finish(sched, ended);
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
            // Most nodes ended as they ran: the attempt says so, or else one read
            // (an ended task is read from the store), and it is left alone.
            if self.ended_nodes.contains(task_id) {
                continue;
            }
            match self.shared.tasks.latest(task_id) {
                Ok(Some(task)) if task.status().is_terminal() => continue,
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(task_id, %error, "node task not settled");
                    continue;
                }
            }
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

    /// Records the end of `sched` on its execution record (status and total
    /// duration). Called before its root task ends: the root's terminal event
    /// is written after the record, so whoever reads the execution on that
    /// event sees it ended.
    fn record_end(
        &self,
        sched: ExecutionId,
        status: TaskStatus,
    ) -> Option<Arc<crate::model::WorkflowExecution>> {
        let live = self.live.get(&sched)?;
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
            Ok(execution) => Some(execution),
            Err(error) => {
                tracing::error!(execution_id = %live.id, %error, "execution end not recorded");
                None
            }
        }
    }

    /// Forgets an ended execution (its record ended by
    /// [`Actor::record_end`], given as `ended`) and announces its end.
    fn finish(&mut self, sched: ExecutionId, ended: Option<Arc<crate::model::WorkflowExecution>>) {
        let Some(live) = self.live.remove(&sched) else {
            return;
        };
        self.held_prompts.take(sched);
        self.by_id.remove(&live.id);
        self.by_root.remove(&live.root);
        self.deferred_starts.retain(|(s, _)| *s != sched);
        if let Some(run) = &live.run {
            run.abandon.cancel();
        }
        self.shared.backlog.fetch_sub(1, Ordering::SeqCst);
        if let Some(execution) = ended {
            if let Some(seconds) = execution.total_duration_seconds {
                self.shared.record_duration(seconds);
            }
            self.ended_event(&live, &execution);
        }
    }

    /// Publishes the end of an execution (after its record is final, so a
    /// watcher woken by it reads the final state) and its duration.
    fn ended_event(&self, live: &Live, execution: &crate::model::WorkflowExecution) {
        let root = self.shared.tasks.latest(&live.root).ok().flatten();
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
}
