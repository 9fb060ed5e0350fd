//! Helpers shared by the scheduler's unit tests; test builds only.

use crate::model::TaskPriority;
use crate::runtime::scheduler::{
    Action, BackendId, ExecutionId, ExecutionKey, RequiredClasses, Scheduler, SchedulerConfig,
};

/// Backend 0.
pub(super) const B0: BackendId = BackendId(0);
/// Backend 1.
pub(super) const B1: BackendId = BackendId(1);
/// Backend 2.
pub(super) const B2: BackendId = BackendId(2);

/// A scheduler with these limits and no backends.
pub(super) fn scheduler(max_queue_len: usize, max_concurrent_tasks: usize) -> Scheduler {
    Scheduler::new(SchedulerConfig {
        max_queue_len,
        max_concurrent_tasks,
        backend_pipeline_depth: 2,
    })
}

/// The key of execution `id` at `priority`, requiring no classes.
pub(super) fn key(id: u64, priority: TaskPriority) -> ExecutionKey {
    key_requiring(id, priority, &[])
}

/// The key of execution `id` at `priority`, requiring `classes`.
pub(super) fn key_requiring(id: u64, priority: TaskPriority, classes: &[&str]) -> ExecutionKey {
    ExecutionKey {
        id: ExecutionId(id),
        priority,
        required: RequiredClasses::new(classes.iter().copied()),
    }
}

/// Reports `backend` up with `classes`.
pub(super) fn up(s: &mut Scheduler, backend: BackendId, classes: &[&str]) {
    s.backend_up(backend, classes.iter().copied());
}

/// Submits execution `id` at `priority`; panics when refused.
pub(super) fn submit(s: &mut Scheduler, id: u64, priority: TaskPriority) {
    s.submit(key(id, priority)).unwrap();
}

/// The dispatch of execution `id` to `backend`.
pub(super) fn dispatch(id: u64, backend: BackendId) -> Action {
    Action::Dispatch {
        id: ExecutionId(id),
        backend,
    }
}

/// The take-back of execution `id` from `backend`.
pub(super) fn take_back(id: u64, backend: BackendId) -> Action {
    Action::TakeBack {
        id: ExecutionId(id),
        backend,
    }
}

/// Execution ids from raw numbers.
pub(super) fn ids(raw: &[u64]) -> Vec<ExecutionId> {
    raw.iter().copied().map(ExecutionId).collect()
}

/// Finishes whatever runs first on `backend` and returns the ids then dispatched.
pub(super) fn finish_front(s: &mut Scheduler, backend: BackendId) -> Vec<u64> {
    let status = s.backend_status(backend).unwrap();
    let front = status.running.or(status.waiting.first().copied()).unwrap();
    s.prompt_finished(backend, front).unwrap();
    s.next_actions()
        .into_iter()
        .filter_map(|action| match action {
            Action::Dispatch { id, .. } => Some(id.0),
            _ => None,
        })
        .collect()
}
