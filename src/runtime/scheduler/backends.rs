//! The backends as the scheduler sees them: each one's two slots (running,
//! waiting), which queued executions it can run, and the reports about what
//! happened on it (up, down, started, finished, taken back or not). It keeps
//! the view consistent; deciding what to send where is the planner's job.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use super::admission::SchedulerError;
use super::devices::{DeviceReport, Hold};
use super::ids::{BackendId, ExecutionId, RequiredClasses};
use super::outcomes::{Action, BackendStatus, Orphaned, TakenBackOutcome};
use super::{Entry, OnBackend, Place, Scheduler};

/// What a backend holds of ours, in its own queue's order: the first runs
/// (or is about to), the others wait behind it. At most the scheduler's
/// `backend_pipeline_depth`.
#[derive(Debug, Default, Clone)]
pub(super) struct Slots {
    /// Execution ids, front first.
    ids: Vec<ExecutionId>,
}

impl Slots {
    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }

    /// Running, or the next to run.
    pub(super) fn front(&self) -> Option<ExecutionId> {
        self.ids.first().copied()
    }

    /// Those waiting behind the front.
    pub(super) fn waiting(&self) -> impl Iterator<Item = ExecutionId> + '_ {
        self.ids.iter().skip(1).copied()
    }

    /// Adds `id` at the back of the backend's queue.
    pub(super) fn push(&mut self, id: ExecutionId) {
        self.ids.push(id);
    }

    /// Adds `id` in front (it is running already).
    pub(super) fn push_front(&mut self, id: ExecutionId) {
        self.ids.insert(0, id);
    }

    /// Removes `id`, moving those behind it forward; whether it was there.
    pub(super) fn remove(&mut self, id: ExecutionId) -> bool {
        match self.ids.iter().position(|held| *held == id) {
            Some(index) => {
                self.ids.remove(index);
                true
            }
            None => false,
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = ExecutionId> + '_ {
        self.ids.iter().copied()
    }
}

/// A backend of the pool.
#[derive(Debug)]
pub(super) struct Backend {
    /// Eligible for new work.
    pub(super) up: bool,
    /// Node classes it has (as last reported up).
    pub(super) classes: HashSet<Arc<str>>,
    /// What it holds of ours.
    pub(super) slots: Slots,
    /// The execution a preemption take-back is in flight for.
    pub(super) preempting: Option<ExecutionId>,
    /// Its devices, as last reported; `None` before any report.
    pub(super) devices: Option<DeviceReport>,
    /// Why it gets no new work although up (see `devices`).
    pub(super) hold: Option<Hold>,
}

impl Backend {
    /// A backend known from a report other than "up" (its devices): down, with no classes.
    pub(super) fn new_down() -> Self {
        Self {
            up: false,
            classes: HashSet::new(),
            slots: Slots::default(),
            preempting: None,
            devices: None,
            hold: None,
        }
    }

    /// Up and not held: it may be given new work.
    pub(super) fn takes_new_work(&self) -> bool {
        self.up && self.hold.is_none()
    }

    pub(super) fn has_free_slot(&self, depth: usize) -> bool {
        self.takes_new_work() && self.slots.len() < depth
    }
}

/// Up backends that have every class in `required`, by id.
pub(super) fn eligible_backends(
    backends: &BTreeMap<BackendId, Backend>,
    required: &RequiredClasses,
) -> Vec<BackendId> {
    backends
        .iter()
        .filter(|(_, backend)| backend.up && required.satisfied_by(&backend.classes))
        .map(|(id, _)| *id)
        .collect()
}

impl Scheduler {
    /// A backend answers with these node classes: it is up and eligible for
    /// the executions whose required classes it has. Reporting an up backend
    /// again replaces its classes and keeps what it holds.
    pub fn backend_up<I, S>(&mut self, backend: BackendId, classes: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<Arc<str>>,
    {
        let classes = classes.into_iter().map(Into::into).collect();
        match self.backends.get_mut(&backend) {
            Some(known) => {
                known.up = true;
                known.classes = classes;
            }
            None => {
                self.backends.insert(
                    backend,
                    Backend {
                        up: true,
                        classes,
                        ..Backend::new_down()
                    },
                );
            }
        }
        self.refresh_eligibility();
    }

    /// A backend stopped answering: it gets nothing until
    /// [`Scheduler::backend_up`]. Returns what it held (front first), which
    /// the scheduler forgets. An unknown backend holds nothing.
    pub fn backend_down(&mut self, backend: BackendId) -> Vec<Orphaned> {
        let Some(known) = self.backends.get_mut(&backend) else {
            return Vec::new();
        };
        let was_up = known.up;
        known.up = false;
        known.preempting = None;
        let slots = std::mem::take(&mut known.slots);
        let mut orphaned = Vec::with_capacity(slots.len());
        for id in slots.iter() {
            if let Some(entry) = self.entries.remove(&id) {
                self.in_flight = self.in_flight.saturating_sub(1);
                self.pending.retain(|action| action.id() != id);
                if let Place::OnBackend(on) = entry.place {
                    orphaned.push(Orphaned {
                        id,
                        started: on.started,
                        cancel_requested: on.cancel_requested,
                    });
                }
            }
        }
        if was_up {
            self.refresh_eligibility();
        }
        orphaned
    }

    /// The backend began running `id`, the first of ours in its queue.
    pub fn prompt_started(
        &mut self,
        backend: BackendId,
        id: ExecutionId,
    ) -> Result<(), SchedulerError> {
        let front = self.backend(backend)?.slots.front();
        let on = self.on_backend_mut(backend, id)?;
        match front {
            Some(front) if front != id => Err(SchedulerError::StartedOutOfOrder {
                id,
                backend,
                ahead: front,
            }),
            _ => {
                on.started = true;
                Ok(())
            }
        }
    }

    /// `id` ended on the backend (success, failure, interrupt, or its POST
    /// failed); its slot is free. Retrying is the executor's decision (it
    /// submits again).
    pub fn prompt_finished(
        &mut self,
        backend: BackendId,
        id: ExecutionId,
    ) -> Result<(), SchedulerError> {
        self.backend(backend)?;
        self.on_backend_mut(backend, id)?;
        self.remove_dispatched(backend, id);
        Ok(())
    }

    /// The executor deleted `id` from the backend's queue: it goes back into
    /// ours at its original place, or is forgotten if its cancel was requested.
    pub fn taken_back(
        &mut self,
        backend: BackendId,
        id: ExecutionId,
    ) -> Result<TakenBackOutcome, SchedulerError> {
        self.backend(backend)?;
        let on = *self.on_backend_mut(backend, id)?;
        if !on.taking_back {
            return Err(SchedulerError::NoTakeBackPending { id, backend });
        }
        let Some(mut entry) = self.remove_dispatched(backend, id) else {
            // on_backend_mut just found it; remove_dispatched cannot miss it.
            return Err(SchedulerError::NotOnBackend { id, backend });
        };
        if on.cancel_requested {
            return Ok(TakenBackOutcome::Cancelled);
        }
        entry.place = Place::Queued;
        self.enqueue(entry.key(id), &entry.required);
        self.entries.insert(id, entry);
        Ok(TakenBackOutcome::Requeued)
    }

    /// The delete from the backend's queue failed because `id` had started:
    /// it stays there (and is interrupted if its cancel was requested).
    pub fn take_back_failed(
        &mut self,
        backend: BackendId,
        id: ExecutionId,
    ) -> Result<(), SchedulerError> {
        self.backend(backend)?;
        let on = self.on_backend_mut(backend, id)?;
        if !on.taking_back {
            return Err(SchedulerError::NoTakeBackPending { id, backend });
        }
        on.taking_back = false;
        on.take_back_refused = true;
        let cancel_requested = on.cancel_requested;
        if cancel_requested {
            self.pending.push(Action::Interrupt { id, backend });
        }
        if let Some(known) = self.backends.get_mut(&backend)
            && known.preempting == Some(id)
        {
            known.preempting = None;
        }
        Ok(())
    }

    /// Known backends, by id.
    pub fn backend_ids(&self) -> impl Iterator<Item = BackendId> + '_ {
        self.backends.keys().copied()
    }

    /// How many executions `backend` holds of ours (running or waiting in its
    /// own queue); 0 for a backend never reported up.
    pub fn on_backend(&self, backend: BackendId) -> usize {
        self.backends
            .get(&backend)
            .map_or(0, |known| known.slots.len())
    }

    /// A backend's state, if it was ever reported up.
    pub fn backend_status(&self, backend: BackendId) -> Option<BackendStatus> {
        let known = self.backends.get(&backend)?;
        let mut status = BackendStatus {
            up: known.up,
            running: None,
            waiting: Vec::new(),
            preempting: known.preempting,
        };
        for id in known.slots.iter() {
            let started = matches!(
                self.entries.get(&id).map(|entry| &entry.place),
                Some(Place::OnBackend(OnBackend { started: true, .. }))
            );
            if started {
                status.running = Some(id);
            } else {
                status.waiting.push(id);
            }
        }
        Some(status)
    }

    /// Whether some known backend, up or down, has every class in `required`.
    /// `false` means no backend seen so far could ever run it.
    pub fn runnable_by_known_backend(&self, required: &RequiredClasses) -> bool {
        self.backends
            .values()
            .any(|backend| required.satisfied_by(&backend.classes))
    }

    pub(super) fn backend(&self, backend: BackendId) -> Result<&Backend, SchedulerError> {
        self.backends
            .get(&backend)
            .ok_or(SchedulerError::UnknownBackend(backend))
    }

    /// `id`'s dispatch state, if it is dispatched to `backend`.
    fn on_backend_mut(
        &mut self,
        backend: BackendId,
        id: ExecutionId,
    ) -> Result<&mut OnBackend, SchedulerError> {
        match self.entries.get_mut(&id).map(|entry| &mut entry.place) {
            Some(Place::OnBackend(on)) if on.backend == backend => Ok(on),
            _ => Err(SchedulerError::NotOnBackend { id, backend }),
        }
    }

    /// Frees `id`'s slot on `backend` and forgets it; returns its entry.
    pub(super) fn remove_dispatched(
        &mut self,
        backend: BackendId,
        id: ExecutionId,
    ) -> Option<Entry> {
        if let Some(known) = self.backends.get_mut(&backend) {
            known.slots.remove(id);
            if known.preempting == Some(id) {
                known.preempting = None;
            }
        }
        let entry = self.entries.remove(&id)?;
        self.in_flight = self.in_flight.saturating_sub(1);
        self.pending.retain(|action| action.id() != id);
        Some(entry)
    }

    fn refresh_eligibility(&mut self) {
        for (required, group) in &mut self.groups {
            group.eligible = eligible_backends(&self.backends, required);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::model::TaskPriority;
    use crate::runtime::scheduler::test_support::{
        B0, B1, B2, dispatch, ids, key_requiring, scheduler, submit, take_back, up,
    };
    use crate::runtime::scheduler::{
        BackendId, ExecutionId, Location, Orphaned, RequiredClasses, SchedulerError, Stranded,
    };

    #[test]
    fn take_back_fails_when_it_already_started() {
        use TaskPriority::*;
        let mut s = scheduler(100, 10);
        up(&mut s, B0, &[]);
        submit(&mut s, 1, Low);
        submit(&mut s, 2, Low);
        s.next_actions();
        submit(&mut s, 3, Critical);
        assert_eq!(s.next_actions(), vec![take_back(2, B0)]);
        // 1 ended and 2 started before the delete reached the backend.
        s.prompt_finished(B0, ExecutionId(1)).unwrap();
        assert_eq!(s.next_actions(), vec![dispatch(3, B0)]);
        s.prompt_started(B0, ExecutionId(2)).unwrap();
        s.take_back_failed(B0, ExecutionId(2)).unwrap();
        assert_eq!(s.next_actions(), vec![]);
        let status = s.backend_status(B0).unwrap();
        assert_eq!(status.running, Some(ExecutionId(2)));
        assert_eq!(status.waiting, ids(&[3]));
        assert_eq!(status.preempting, None);
        assert_eq!(
            s.take_back_failed(B0, ExecutionId(2)),
            Err(SchedulerError::NoTakeBackPending {
                id: ExecutionId(2),
                backend: B0
            })
        );
    }

    #[test]
    fn a_refused_take_back_is_not_retried() {
        use TaskPriority::*;
        let mut s = scheduler(100, 10);
        up(&mut s, B0, &[]);
        submit(&mut s, 1, Low);
        submit(&mut s, 2, Low);
        s.next_actions();
        submit(&mut s, 3, Critical);
        assert_eq!(s.next_actions(), vec![take_back(2, B0)]);
        // Reported failed before the finish of 1 arrives.
        s.take_back_failed(B0, ExecutionId(2)).unwrap();
        assert_eq!(s.next_actions(), vec![]);
    }

    #[test]
    fn backend_down_returns_its_executions_and_is_skipped() {
        let mut s = scheduler(100, 10);
        up(&mut s, B0, &[]);
        up(&mut s, B1, &[]);
        for id in 1..=4 {
            submit(&mut s, id, TaskPriority::Normal);
        }
        s.next_actions();
        s.prompt_started(B0, ExecutionId(1)).unwrap();
        // Running or waiting behind it: both count as held by the backend.
        assert_eq!((s.on_backend(B0), s.on_backend(B1)), (2, 2));
        assert_eq!(s.on_backend(BackendId(9)), 0, "never reported up");
        s.cancel(ExecutionId(3));
        assert_eq!(
            s.backend_down(B0),
            vec![
                Orphaned {
                    id: ExecutionId(1),
                    started: true,
                    cancel_requested: false
                },
                Orphaned {
                    id: ExecutionId(3),
                    started: false,
                    cancel_requested: true
                },
            ]
        );
        assert_eq!(
            s.next_actions(),
            vec![],
            "the take-back of 3 went with its backend"
        );
        assert_eq!(s.in_flight(), 2);
        assert_eq!((s.on_backend(B0), s.on_backend(B1)), (0, 2));
        assert_eq!(s.backend_down(B0), vec![]);
        // The executor retries 1; B0 is skipped, B1 is full.
        submit(&mut s, 5, TaskPriority::Normal);
        submit(&mut s, 1, TaskPriority::Normal);
        assert_eq!(s.next_actions(), vec![]);
        assert_eq!(
            s.prompt_finished(B0, ExecutionId(1)),
            Err(SchedulerError::NotOnBackend {
                id: ExecutionId(1),
                backend: B0
            })
        );
        s.prompt_finished(B1, ExecutionId(2)).unwrap();
        assert_eq!(s.next_actions(), vec![dispatch(5, B1)]);
        up(&mut s, B0, &[]);
        assert_eq!(s.next_actions(), vec![dispatch(1, B0)]);
    }

    #[test]
    fn class_requirements_route_to_a_capable_backend_or_stay_queued() {
        let mut s = scheduler(100, 10);
        up(&mut s, B0, &["A"]);
        up(&mut s, B1, &["A", "B"]);
        s.submit(key_requiring(1, TaskPriority::Normal, &["B"]))
            .unwrap();
        assert_eq!(s.next_actions(), vec![dispatch(1, B1)]);
        s.submit(key_requiring(2, TaskPriority::Normal, &["A"]))
            .unwrap();
        assert_eq!(s.next_actions(), vec![dispatch(2, B0)], "least loaded");
        s.submit(key_requiring(3, TaskPriority::High, &["C", "A"]))
            .unwrap();
        assert_eq!(s.next_actions(), vec![]);
        let needs_c = RequiredClasses::new(["A", "C"]);
        assert!(!s.runnable_by_known_backend(&needs_c));
        assert_eq!(
            s.stranded(),
            vec![Stranded {
                required: needs_c.clone(),
                missing: vec![Arc::from("C")],
                runnable_by_down_backend: false,
                ids: ids(&[3]),
            }]
        );
        s.backend_down(B1);
        s.submit(key_requiring(4, TaskPriority::Normal, &["B"]))
            .unwrap();
        assert_eq!(s.next_actions(), vec![]);
        let stranded = s.stranded();
        assert_eq!(stranded.len(), 2);
        assert_eq!(stranded[1].ids, ids(&[4]));
        assert!(stranded[1].runnable_by_down_backend);
        up(&mut s, B2, &["A", "C"]);
        assert_eq!(s.next_actions(), vec![dispatch(3, B2)]);
        assert_eq!(s.stranded().len(), 1);
    }

    #[test]
    fn inconsistent_events_are_refused() {
        let mut s = scheduler(10, 10);
        up(&mut s, B0, &[]);
        submit(&mut s, 1, TaskPriority::Normal);
        submit(&mut s, 2, TaskPriority::Normal);
        s.next_actions();
        assert_eq!(
            s.prompt_started(B0, ExecutionId(2)),
            Err(SchedulerError::StartedOutOfOrder {
                id: ExecutionId(2),
                backend: B0,
                ahead: ExecutionId(1)
            })
        );
        assert_eq!(
            s.prompt_started(B1, ExecutionId(1)),
            Err(SchedulerError::UnknownBackend(B1))
        );
        assert_eq!(
            s.taken_back(B0, ExecutionId(1)),
            Err(SchedulerError::NoTakeBackPending {
                id: ExecutionId(1),
                backend: B0
            })
        );
        assert_eq!(
            s.location(ExecutionId(2)),
            Some(Location::Waiting {
                backend: B0,
                taking_back: false
            })
        );
    }
}
