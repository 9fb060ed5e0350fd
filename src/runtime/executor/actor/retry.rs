//! Retries: a failed attempt is retried after an exponential back-off (with
//! jitter) when its failure is transient and retries are left; RetryTask runs
//! a FAILED execution again.
//!
//! One part of the [`Actor`]'s `impl`, split by concern: it imports the
//! actor's state from its parent and the executor's lower modules, never
//! another part.

use std::sync::atomic::Ordering;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use serde_json::Value;

use crate::model::{EventCategory, JsonObject, LogLevel, Task, TaskStatus};
use crate::runtime::RuntimeError;
use crate::runtime::executor::failure::Failure;
use crate::runtime::executor::messages::Msg;
use crate::runtime::scheduler::ExecutionId;
use crate::telemetry::metrics;

use super::{Actor, Phase, execution_transition};

impl Actor {
    /// A failed attempt: retried when transient with retries left, else the end.
    pub(super) fn failed(&mut self, sched: ExecutionId, failure: &Failure) {
        let Some(live) = self.live.get(&sched) else {
            return;
        };
        let root = self.shared.tasks.latest(&live.root).ok().flatten();
        let retries_left = root.as_deref().is_some_and(Task::retries_left);
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

    /// RetryTask: a FAILED execution, with room in the queue, runs again.
    pub(super) fn manual_retry(&mut self, execution_id: &str) -> Result<(), RuntimeError> {
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
        match self.shared.tasks.retry_now(&root_id) {
            // Not waited for here, on the actor's thread: writes commit in
            // order, and `Executor::retry` answers once every write handed
            // over so far (this one and the execution's below) is durable.
            Ok((_, commit)) => drop(commit),
            Err(error) => {
                self.shared.backlog.fetch_sub(1, Ordering::SeqCst);
                return Err(error);
            }
        }
        self.shared.update_execution(execution_id, |execution| {
            execution
                .transition(TaskStatus::Retrying)
                .map_err(|e| execution_transition(execution, &e))
        })?;
        self.admit(execution_id, true);
        Ok(())
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
