//! Admission: the scheduler's limits, why it refuses an input, and how an
//! execution gets in (a submit to the queue, or the adoption of one found on
//! a backend after a restart). A refused input changes nothing.

use std::cmp::Reverse;

use super::ids::{BackendId, ExecutionId, ExecutionKey};
use super::{Entry, OnBackend, Place, Scheduler};

/// The scheduler's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Most executions waiting in the runtime's queue; a submit beyond it is
    /// refused with [`SchedulerError::QueueFull`].
    pub max_queue_len: usize,
    /// Most executions dispatched and not finished (running plus waiting in
    /// backends' own queues), the runtime's `max_concurrent_tasks`.
    pub max_concurrent_tasks: usize,
    /// Most executions handed to one backend at once (running plus waiting
    /// in its own queue), `scheduling.backend_pipeline_depth`; at least 1.
    pub backend_pipeline_depth: usize,
}

/// Why the scheduler refused an input. On error nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    /// The queue holds `max_queue_len` executions; the API answers
    /// RESOURCE_EXHAUSTED and computes `retry-after` (the scheduler has no clock).
    #[error("execution queue is full ({capacity} queued)")]
    QueueFull {
        /// The configured `max_queue_len`.
        capacity: usize,
    },
    /// An execution with this id is already queued or dispatched.
    #[error("execution {0} is already scheduled")]
    AlreadyScheduled(ExecutionId),
    /// No backend with this id was ever reported up.
    #[error("backend {0} is unknown")]
    UnknownBackend(BackendId),
    /// The execution is not dispatched to that backend (it finished, was
    /// taken back, was lost with the backend, or never went there).
    #[error("execution {id} is not on backend {backend}")]
    NotOnBackend {
        /// The execution.
        id: ExecutionId,
        /// The backend named.
        backend: BackendId,
    },
    /// A backend runs its queue in order: `ahead` must be reported finished
    /// before `id` can start.
    #[error("execution {id} cannot start on backend {backend} before execution {ahead} ends")]
    StartedOutOfOrder {
        /// The execution reported started.
        id: ExecutionId,
        /// The backend.
        backend: BackendId,
        /// The execution ahead of it in that backend's queue.
        ahead: ExecutionId,
    },
    /// No take-back of that execution is in flight.
    #[error("no take-back of execution {id} is pending on backend {backend}")]
    NoTakeBackPending {
        /// The execution.
        id: ExecutionId,
        /// The backend named.
        backend: BackendId,
    },
}

impl Scheduler {
    /// Admits an execution to the queue. Refused when the queue is full or
    /// the id is already held.
    pub fn submit(&mut self, key: ExecutionKey) -> Result<(), SchedulerError> {
        if self.entries.contains_key(&key.id) {
            return Err(SchedulerError::AlreadyScheduled(key.id));
        }
        if self.queued_len() >= self.config.max_queue_len {
            return Err(SchedulerError::QueueFull {
                capacity: self.config.max_queue_len,
            });
        }
        let seq = self.next_seq;
        // 2^64 submits never happen; saturating keeps this panic-free.
        self.next_seq = self.next_seq.saturating_add(1);
        self.enqueue((Reverse(key.priority), seq, key.id), &key.required);
        self.entries.insert(
            key.id,
            Entry {
                priority: key.priority,
                seq,
                required: key.required,
                place: Place::Queued,
            },
        );
        Ok(())
    }

    /// Takes in an execution that is already on `backend` (found there after
    /// a restart of the runtime): running when `started`, else waiting in the
    /// backend's queue. It counts as in flight (it may push the count past
    /// `max_concurrent_tasks` once, which only delays new dispatches). Refused
    /// when the backend is unknown or down, the id is held, or the backend's
    /// slots are full (the caller then stops the prompt and queues it anew).
    pub fn adopt(
        &mut self,
        key: ExecutionKey,
        backend: BackendId,
        started: bool,
    ) -> Result<(), SchedulerError> {
        if self.entries.contains_key(&key.id) {
            return Err(SchedulerError::AlreadyScheduled(key.id));
        }
        let known = self.backend(backend)?;
        if !known.up || known.slots.len() >= self.config.backend_pipeline_depth {
            return Err(SchedulerError::NotOnBackend {
                id: key.id,
                backend,
            });
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        self.entries.insert(
            key.id,
            Entry {
                priority: key.priority,
                seq,
                required: key.required,
                place: Place::OnBackend(OnBackend {
                    backend,
                    started,
                    taking_back: false,
                    take_back_refused: started,
                    cancel_requested: false,
                }),
            },
        );
        if let Some(known) = self.backends.get_mut(&backend) {
            if started {
                // The running one goes first; those there wait behind it.
                known.slots.push_front(key.id);
            } else {
                known.slots.push(key.id);
            }
        }
        self.in_flight += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::model::TaskPriority;
    use crate::runtime::scheduler::test_support::{ids, key, scheduler, submit};
    use crate::runtime::scheduler::{
        Action, BackendId, ExecutionId, ExecutionKey, RequiredClasses, Scheduler, SchedulerConfig,
        SchedulerError,
    };

    #[test]
    fn adopted_executions_hold_their_backend_slots() {
        let mut s = Scheduler::new(SchedulerConfig {
            max_queue_len: 10,
            max_concurrent_tasks: 4,
            backend_pipeline_depth: 2,
        });
        s.backend_up(BackendId(0), ["A"]);
        let key = |id| ExecutionKey {
            id: ExecutionId(id),
            priority: TaskPriority::Normal,
            required: RequiredClasses::none(),
        };
        s.adopt(key(1), BackendId(0), false).unwrap();
        s.adopt(key(2), BackendId(0), true).unwrap();
        let status = s.backend_status(BackendId(0)).unwrap();
        assert_eq!(status.running, Some(ExecutionId(2)));
        assert_eq!(status.waiting, [ExecutionId(1)]);
        assert!(s.adopt(key(3), BackendId(0), false).is_err());
        assert!(s.adopt(key(2), BackendId(0), false).is_err());
        // A queued one waits for the slots the adopted ones free.
        s.submit(key(3)).unwrap();
        assert!(s.next_actions().is_empty());
        s.prompt_finished(BackendId(0), ExecutionId(2)).unwrap();
        assert_eq!(
            s.next_actions(),
            [Action::Dispatch {
                id: ExecutionId(3),
                backend: BackendId(0)
            }]
        );
    }

    #[test]
    fn a_full_queue_refuses_and_duplicates_are_refused() {
        let mut s = scheduler(2, 10);
        submit(&mut s, 1, TaskPriority::Low);
        submit(&mut s, 2, TaskPriority::Low);
        assert_eq!(
            s.submit(key(3, TaskPriority::Critical)),
            Err(SchedulerError::QueueFull { capacity: 2 })
        );
        assert_eq!(
            s.submit(key(1, TaskPriority::Low)),
            Err(SchedulerError::AlreadyScheduled(ExecutionId(1)))
        );
        s.cancel(ExecutionId(1));
        submit(&mut s, 3, TaskPriority::Critical);
        assert_eq!(s.queued_in_order(10), ids(&[3, 2]));
    }
}
