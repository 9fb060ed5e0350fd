//! How an execution enters the actor: loading a stored execution (its root
//! task, required classes and the NODE tasks it has so far) into a
//! [`Live`] entry, then queueing it, or holding it PENDING until its
//! dependencies are met, or cancelling it when a REQUIRES dependency can no
//! longer complete ("task ended" notices from the task registry).
//!
//! One part of the [`Actor`]'s `impl`, split by concern: it imports the
//! actor's state from its parent and the executor's lower modules, never
//! another part.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::oneshot;

use crate::model::{DependencyType, Task, TaskStatus};
use crate::runtime::RuntimeError;
use crate::runtime::executor::messages::{Admitted, NodeTasks, Submitted};
use crate::runtime::executor::prompt_nodes::prompt_nodes;
use crate::runtime::scheduler::{ExecutionId, RequiredClasses};

use super::{Actor, Admission, Answer, Live, Phase};

impl Actor {
    /// Loads a stored execution into the actor and queues it (or waits for
    /// its dependencies). `retrying`: a manual retry of a FAILED execution.
    pub(super) fn admit(&mut self, execution_id: &str, retrying: bool) {
        self.admit_as(
            execution_id,
            if retrying {
                Admission::Retry
            } else {
                Admission::Fresh
            },
        );
    }

    /// Admits a new execution from what the handle handed over, never
    /// reading it back (and stores it, in this turn's write, when the handle
    /// did not); `reply` is answered at the end of the turn, with what the
    /// turn made of it.
    pub(super) fn admit_submitted(
        &mut self,
        admitted: Admitted,
        reply: oneshot::Sender<Submitted>,
    ) {
        let Admitted {
            execution,
            root,
            unstored,
            required,
            prompt,
        } = admitted;
        // Stored by the handle before this actor's recovery read the store (a submit that
        // arrived while a runtime taking over was still starting): recovery admitted it
        // already, and a second admission would run it twice.
        if unstored.is_none()
            && let Some(&sched) = self.by_id.get(execution.id.as_str())
        {
            let noop: Box<dyn FnOnce() + Send> = Box::new(|| {});
            self.answers.push(Answer {
                sched,
                execution_id: execution.id.clone(),
                root_id: root.id.clone(),
                forget: [noop, Box::new(|| {})],
                reply,
            });
            return;
        }
        // Read-modify-writes start from these, not from the store: stored
        // now (in this turn's write), or remembered as the handle stored them.
        let forget: [Box<dyn FnOnce() + Send>; 2] = match unstored {
            Some(record) => {
                self.shared.create_execution(record);
                [Box::new(|| {}), Box::new(|| {})]
            }
            None => [
                self.shared.remember_execution(&execution),
                self.shared.tasks.remember(&root),
            ],
        };
        let required = self.intern(RequiredClasses::new(required));
        let sched = self.start(
            &execution.id,
            root.id.clone(),
            required,
            NodeTasks::new(),
            &root,
            Admission::Fresh,
        );
        // Held (within a budget) for its dispatch, which then does not read the store.
        if self.live.contains_key(&sched) {
            self.held_prompts.hold(sched, prompt);
        }
        self.answers.push(Answer {
            sched,
            execution_id: execution.id.clone(),
            root_id: root.id.clone(),
            forget,
            reply,
        });
    }

    /// Answers the executions submitted in this turn, once its writes are
    /// handed to the store: each as the turn left it (PENDING, QUEUED, or
    /// dispatched with its NODE tasks), read from memory.
    pub(super) fn answer_submitted(&mut self) {
        if self.answers.is_empty() {
            return;
        }
        // What each caller is told is read before the turn's writes are handed over: until
        // then every state they hold is among the pending writes. Once handed over, the writer
        // may commit them while the answers are built (on the other core, under load), and a
        // state whose write committed, not kept as live, was read back from the store here,
        // on the runtime's thread: a read per answer late in a turn of many.
        let answers: Vec<(Answer, Submitted)> = std::mem::take(&mut self.answers)
            .into_iter()
            .map(|answer| {
                let submitted = self.submitted(&answer);
                (answer, submitted)
            })
            .collect();
        self.shared.tasks.bus().flush_batch();
        for (answer, submitted) in answers {
            for forget in answer.forget {
                forget();
            }
            let _ = answer.reply.send(submitted);
        }
    }

    /// What the caller of `answer` is told: the execution, its root task and NODE tasks as
    /// the turn left them, and its place in the queue.
    fn submitted(&self, answer: &Answer) -> Submitted {
        let live = self.live.get(&answer.sched);
        // Sized once: a task is large, and a vector grown from empty takes room for four.
        let mut tasks = Vec::with_capacity(1 + live.map_or(0, |live| live.node_tasks.len()));
        if let Ok(Some(root)) = self.shared.tasks.latest(&answer.root_id) {
            tasks.push(Arc::unwrap_or_clone(root));
        }
        for task_id in live.iter().flat_map(|live| live.node_tasks.values()) {
            if let Ok(Some(task)) = self.shared.tasks.latest(task_id) {
                tasks.push(Arc::unwrap_or_clone(task));
            }
        }
        Submitted {
            execution: self
                .shared
                .latest_execution(&answer.execution_id)
                .ok()
                .flatten()
                .map(Arc::unwrap_or_clone),
            tasks,
            position: self
                .scheduler
                .position(answer.sched)
                .and_then(|p| u32::try_from(p).ok()),
        }
    }

    /// Loads a stored execution and starts it as `admission` says.
    pub(super) fn admit_as(&mut self, execution_id: &str, admission: Admission) {
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
        self.start(
            execution_id,
            execution_root,
            required,
            node_tasks,
            &root,
            admission,
        );
    }

    /// Makes a loaded execution live and starts it as `admission` says;
    /// returns its scheduler id.
    fn start(
        &mut self,
        execution_id: &str,
        execution_root: String,
        required: RequiredClasses,
        node_tasks: NodeTasks,
        root: &Task,
        admission: Admission,
    ) -> ExecutionId {
        let retrying = admission != Admission::Fresh;
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
        self.live.insert(sched, Box::new(live));
        if admission == Admission::Recovering {
            if let Some(live) = self.live.get_mut(&sched) {
                live.phase = Phase::Recovering;
            }
        } else if retrying {
            self.enqueue(sched);
        } else {
            self.check_dependencies(sched, root);
        }
        sched
    }

    /// Queues `sched` when nothing holds it; cancels it when a REQUIRES
    /// dependency can no longer complete; else records what it waits for.
    fn check_dependencies(&mut self, sched: ExecutionId, root: &Task) {
        for dep in &root.dependencies {
            if dep.dependency_type != DependencyType::Requires {
                continue;
            }
            if let Ok(Some(task)) = self.shared.tasks.latest(&dep.task_id)
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
    pub(super) fn task_ended(&mut self, task_id: &str) {
        // Most tasks (every node of every execution) have nothing waiting for them: an ended
        // task is no longer cached, so it is read from the store only when something waits.
        let dependents = self.shared.tasks.take_dependents(task_id);
        if dependents.is_empty() {
            return;
        }
        let Ok(Some(ended)) = self.shared.tasks.latest(task_id) else {
            return;
        };
        let status = ended.status();
        for (waiter, kind) in dependents {
            let broken = kind == DependencyType::Requires && status != TaskStatus::Completed;
            let reason = format!("required dependency {task_id} is {}", status.as_str());
            if let Some(&sched) = self.by_root.get(waiter.as_str()) {
                let Some(live) = self.live.get(&sched) else {
                    continue;
                };
                if broken {
                    self.cancel(&live.id.clone(), Some(reason));
                } else if live.phase == Phase::WaitingDeps
                    && let Ok(Some(root)) = self.shared.tasks.latest(&waiter)
                {
                    self.check_dependencies(sched, &root);
                }
            } else if broken {
                // A client-reported task (or an execution that is already
                // over): cancel it if it has not ended.
                if let Ok(Some(task)) = self.shared.tasks.latest(&waiter)
                    && !task.status().is_terminal()
                {
                    match self.shared.store.execution_of_task(&waiter) {
                        Ok(Some(_)) => {}
                        _ => {
                            if let Err(error) =
                                self.shared.tasks.cancel_unwaited(&waiter, Some(reason))
                            {
                                tracing::warn!(task_id = %waiter, %error, "dependent task not cancelled");
                            }
                        }
                    }
                }
            }
        }
    }

    /// An execution's root, required classes (from its stored prompt) and
    /// the NODE tasks it has so far (none before its first dispatch).
    fn load(&mut self, execution_id: &str) -> Result<Option<Loaded>, RuntimeError> {
        let store = &self.shared.store;
        let Some(execution) = self.shared.latest_execution(execution_id)? else {
            return Ok(None);
        };
        let Some(root_id) = execution.root_task_id.clone() else {
            return Ok(None);
        };
        let Some(root) = self.shared.tasks.latest(&root_id)? else {
            return Ok(None);
        };
        let mut node_tasks = NodeTasks::new();
        for child in store.child_ids(&root_id)? {
            if let Some(task) = store.get_task(&child)?
                && task.task_type == crate::model::TaskType::Node
                && let Some(node) = task.metadata.get("node_id").and_then(Value::as_str)
            {
                node_tasks.insert(node.to_owned(), task.id.clone());
            }
        }
        let classes: Vec<String> = self
            .shared
            .execution_prompt(execution_id)?
            .and_then(|prompt| prompt_nodes(&prompt))
            .map(|nodes| nodes.into_values().map(|node| node.class_type).collect())
            .unwrap_or_default();
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
}

/// A stored execution as the actor loads it: root task id, required classes,
/// node id -> NODE task id, and the root task.
type Loaded = (String, RequiredClasses, NodeTasks, Arc<Task>);
