//! Cancellation on request: an execution ends at once when nothing runs it,
//! else once its backend confirms the take-back or the interrupt. (Running
//! time limits are enforced by the attempt, see
//! [`attempt`](crate::runtime::executor::attempt).)
//!
//! One part of the [`Actor`]'s `impl`, split by concern: it imports the
//! actor's state from its parent and the executor's lower modules, never
//! another part.

use crate::model::TaskStatus;
use crate::runtime::scheduler::CancelOutcome;

use super::{Actor, Phase, execution_transition, live_reason};

impl Actor {
    /// Cancels an execution (see the module docs); one the actor does not
    /// hold is ended here when the store says it has not ended.
    pub(super) fn cancel(&mut self, execution_id: &str, reason: Option<String>) {
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
                    let reason = self.cancel_reason(sched);
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
        let Ok(Some(execution)) = self.shared.latest_execution(execution_id) else {
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
            && let Err(error) = self.shared.tasks.cancel_unwaited(root, reason)
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
}
