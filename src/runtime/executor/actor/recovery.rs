//! Recovery after a restart of the runtime: every execution the store says
//! has not ended is taken back; a RUNNING one waits until its backend says
//! where its prompt is (ended, running, queued, unknown), and is then settled,
//! followed again, or run anew.
//!
//! One part of the [`Actor`]'s `impl`, split by concern: it imports the
//! actor's state from its parent and the executor's lower modules, never
//! another part.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::comfy::client::PromptLocation;
use crate::model::{EventCategory, JsonObject, LogLevel, TaskStatus};
use crate::runtime::bus::EventContext;
use crate::runtime::executor::attempt::{self, AttemptSpec, Target};
use crate::runtime::executor::failure::{Failure, FailureKind};
use crate::runtime::executor::messages::{Found, Msg, Outcome};
use crate::runtime::executor::pool::Backend;
use crate::runtime::scheduler::{BackendId, ExecutionId, ExecutionKey};

use super::{Actor, Admission, Phase, Run};

impl Actor {
    /// Takes back every execution the store says has not ended: PENDING and
    /// QUEUED ones return to the queue in their original order (priority
    /// then creation), RETRYING ones too, and RUNNING ones wait for their
    /// backend to say where their prompt is.
    pub(super) fn recover(&mut self) {
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
    pub(super) fn reconcile_on(&mut self, backend_id: BackendId) {
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

    /// What the backend knows of a recovered execution's prompt decides it:
    /// settled, followed again, run anew, or failed as lost.
    pub(super) fn reconciled(&mut self, sched: ExecutionId, attempt: u64, found: Found) {
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
                let reason = self.cancel_reason(sched);
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
            gpu_peak: None,
        }));
        let spec = AttemptSpec {
            sched,
            attempt: live.attempt,
            execution_id: live.id.to_string(),
            prompt_id: Uuid::new_v4(),
            target: Target::Attach(prompt_id),
            node_tasks: Arc::clone(&live.node_tasks),
            timeout: live.timeout,
            recorded: None,
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
}
