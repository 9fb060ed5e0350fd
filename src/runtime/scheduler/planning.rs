//! Planning: after every input, what the executor must do now. Buffered
//! take-backs and interrupts first, then dispatches of the most urgent
//! placeable executions to the least loaded eligible backends (within
//! `max_concurrent_tasks`), then preemption take-backs. It decides from the
//! queue and the backends' view; it reports nothing itself.

use std::cmp::Reverse;

use super::devices::placement_key;
use super::ids::{BackendId, ExecutionId};
use super::outcomes::Action;
use super::queue::QueueKey;
use super::{Entry, OnBackend, Place, Scheduler};

impl Scheduler {
    /// What to do now: buffered take-backs and interrupts, then dispatches to
    /// free slots in queue order, then preemption take-backs. Call after every
    /// input; calling it again with no input in between returns nothing new.
    pub fn next_actions(&mut self) -> Vec<Action> {
        let mut actions = std::mem::take(&mut self.pending);
        self.plan_dispatches(&mut actions);
        self.plan_take_backs(&mut actions);
        actions
    }

    /// Fills free slots, most urgent placeable execution first, each going to
    /// the least loaded eligible backend (ties: preferred device type, most
    /// free GPU memory, lowest id; see `devices`). Held backends get nothing.
    fn plan_dispatches(&mut self, actions: &mut Vec<Action>) {
        let depth = self.config.backend_pipeline_depth.max(1);
        while self.in_flight < self.config.max_concurrent_tasks {
            let mut best: Option<(QueueKey, BackendId)> = None;
            for group in self.groups.values() {
                let Some(head) = group.queue.first() else {
                    continue;
                };
                if best.is_some_and(|(key, _)| key <= *head) {
                    continue;
                }
                let target = group
                    .eligible
                    .iter()
                    .filter_map(|id| {
                        let backend = self.backends.get(id)?;
                        backend
                            .has_free_slot(depth)
                            .then(|| placement_key(&self.gpu, *id, backend))
                    })
                    .min();
                if let Some((_, _, _, backend)) = target {
                    best = Some((*head, backend));
                }
            }
            let Some((key, backend)) = best else {
                break;
            };
            self.dispatch(key, backend, actions);
        }
    }

    fn dispatch(&mut self, key: QueueKey, backend: BackendId, actions: &mut Vec<Action>) {
        let (_, _, id) = key;
        let Some(required) = self.entries.get(&id).map(|entry| entry.required.clone()) else {
            return;
        };
        self.dequeue(key, &required);
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.place = Place::OnBackend(OnBackend {
                backend,
                started: false,
                taking_back: false,
                take_back_refused: false,
                cancel_requested: false,
            });
        }
        if let Some(known) = self.backends.get_mut(&backend) {
            known.slots.push(id);
        }
        self.in_flight += 1;
        actions.push(Action::Dispatch { id, backend });
    }

    /// Walks the queue in order; each execution that could not be placed
    /// claims a preemption take-back already in flight on one of its eligible
    /// backends, or else starts one on the eligible backend whose waiting
    /// execution is least urgent and of strictly lower priority. Each backend
    /// is claimed at most once, so at most one preemption is in flight per
    /// backend; a group is dropped at its first execution that finds nothing,
    /// since those behind it are no more urgent and need the same backends.
    fn plan_take_backs(&mut self, actions: &mut Vec<Action>) {
        let claimable = self
            .backends
            .values()
            .filter(|backend| backend.takes_new_work())
            .count();
        let mut claimed: Vec<BackendId> = Vec::new();
        let mut victims: Vec<(BackendId, ExecutionId)> = Vec::new();
        let mut cursors: Vec<_> = self
            .groups
            .values()
            .map(|group| (group.queue.iter().peekable(), group.eligible.as_slice()))
            .collect();
        while claimed.len() < claimable {
            let next = cursors
                .iter_mut()
                .enumerate()
                .filter_map(|(index, (cursor, _))| cursor.peek().map(|key| (**key, index)))
                .min();
            let Some(((Reverse(priority), _, _), index)) = next else {
                break;
            };
            let Some((cursor, eligible)) = cursors.get_mut(index) else {
                break;
            };
            cursor.next();
            let in_flight = eligible.iter().find(|id| {
                !claimed.contains(id)
                    && self
                        .backends
                        .get(id)
                        .is_some_and(|backend| backend.preempting.is_some())
            });
            if let Some(backend) = in_flight {
                claimed.push(*backend);
                continue;
            }
            let victim = eligible
                .iter()
                .filter(|id| !claimed.contains(id))
                .filter_map(|backend_id| {
                    let backend = self.backends.get(backend_id)?;
                    if !backend.takes_new_work() || backend.preempting.is_some() {
                        return None;
                    }
                    // Its least urgent waiting execution that can move.
                    backend
                        .slots
                        .waiting()
                        .filter_map(|waiting| {
                            let entry = self.entries.get(&waiting)?;
                            let Place::OnBackend(on) = entry.place else {
                                return None;
                            };
                            let movable = !on.started
                                && !on.taking_back
                                && !on.take_back_refused
                                && !on.cancel_requested;
                            (movable && entry.priority < priority).then_some(entry.key(waiting))
                        })
                        .max()
                        .map(|key| (key, Reverse(*backend_id)))
                })
                .max();
            match victim {
                Some(((_, _, id), Reverse(backend))) => {
                    claimed.push(backend);
                    victims.push((backend, id));
                }
                None => {
                    // Drop this group: nothing behind its head can do better.
                    *cursor = std::collections::btree_set::Iter::default().peekable();
                }
            }
        }
        drop(cursors);
        for (backend, id) in victims {
            if let Some(Entry {
                place: Place::OnBackend(on),
                ..
            }) = self.entries.get_mut(&id)
            {
                on.taking_back = true;
            }
            if let Some(known) = self.backends.get_mut(&backend) {
                known.preempting = Some(id);
            }
            actions.push(Action::TakeBack { id, backend });
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::TaskPriority;
    use crate::runtime::scheduler::test_support::{
        B0, B1, B2, dispatch, finish_front, ids, scheduler, submit, take_back, up,
    };
    use crate::runtime::scheduler::{ExecutionId, Location, TakenBackOutcome};

    #[test]
    fn pipelining_keeps_exactly_one_waiting_per_backend() {
        let mut s = scheduler(100, 10);
        up(&mut s, B0, &[]);
        for id in 1..=4 {
            submit(&mut s, id, TaskPriority::Normal);
        }
        assert_eq!(s.next_actions(), vec![dispatch(1, B0), dispatch(2, B0)]);
        s.prompt_started(B0, ExecutionId(1)).unwrap();
        let status = s.backend_status(B0).unwrap();
        assert_eq!(status.running, Some(ExecutionId(1)));
        assert_eq!(status.waiting, ids(&[2]));
        assert_eq!(s.next_actions(), vec![]);
        // 1 ends: 2 moves up and 3 takes the waiting slot at once.
        s.prompt_finished(B0, ExecutionId(1)).unwrap();
        assert_eq!(s.next_actions(), vec![dispatch(3, B0)]);
        s.prompt_started(B0, ExecutionId(2)).unwrap();
        let status = s.backend_status(B0).unwrap();
        assert_eq!(status.running, Some(ExecutionId(2)));
        assert_eq!(status.waiting, ids(&[3]));
        assert_eq!(s.queued_in_order(10), ids(&[4]));
        assert_eq!(s.in_flight(), 2);
    }

    #[test]
    fn max_concurrent_caps_in_flight() {
        let mut s = scheduler(100, 2);
        for backend in [B0, B1, B2] {
            up(&mut s, backend, &[]);
        }
        for id in 1..=5 {
            submit(&mut s, id, TaskPriority::Normal);
        }
        assert_eq!(s.next_actions(), vec![dispatch(1, B0), dispatch(2, B1)]);
        assert_eq!(s.in_flight(), 2);
        assert_eq!(s.queued_len(), 3);
        s.prompt_finished(B1, ExecutionId(2)).unwrap();
        // B1 and B2 are empty; the lowest id wins the tie.
        assert_eq!(s.next_actions(), vec![dispatch(3, B1)]);
        assert_eq!(s.next_actions(), vec![]);
        assert_eq!(s.in_flight(), 2);
    }

    #[test]
    fn two_backends_share_the_load() {
        let mut s = scheduler(100, 10);
        up(&mut s, B0, &[]);
        up(&mut s, B1, &[]);
        for id in 1..=5 {
            submit(&mut s, id, TaskPriority::Normal);
        }
        assert_eq!(
            s.next_actions(),
            vec![
                dispatch(1, B0),
                dispatch(2, B1),
                dispatch(3, B0),
                dispatch(4, B1)
            ]
        );
        // B1 is now less loaded than B0.
        s.prompt_finished(B1, ExecutionId(2)).unwrap();
        assert_eq!(s.next_actions(), vec![dispatch(5, B1)]);
        s.prompt_finished(B0, ExecutionId(1)).unwrap();
        submit(&mut s, 6, TaskPriority::Normal);
        assert_eq!(s.next_actions(), vec![dispatch(6, B0)]);
    }

    #[test]
    fn critical_takes_back_a_waiting_low_which_keeps_its_place() {
        use TaskPriority::*;
        let mut s = scheduler(100, 10);
        up(&mut s, B0, &[]);
        submit(&mut s, 1, Low);
        submit(&mut s, 2, Low);
        assert_eq!(s.next_actions(), vec![dispatch(1, B0), dispatch(2, B0)]);
        s.prompt_started(B0, ExecutionId(1)).unwrap();
        submit(&mut s, 3, Low);
        assert_eq!(s.next_actions(), vec![], "equal priority never preempts");
        submit(&mut s, 4, Critical);
        assert_eq!(s.next_actions(), vec![take_back(2, B0)]);
        assert_eq!(
            s.location(ExecutionId(2)),
            Some(Location::Waiting {
                backend: B0,
                taking_back: true
            })
        );
        submit(&mut s, 5, Critical);
        assert_eq!(
            s.next_actions(),
            vec![],
            "one take-back in flight per backend"
        );
        assert_eq!(
            s.taken_back(B0, ExecutionId(2)),
            Ok(TakenBackOutcome::Requeued)
        );
        assert_eq!(s.next_actions(), vec![dispatch(4, B0)]);
        // 5 is as urgent as 4: no take-back of 4.
        assert_eq!(s.next_actions(), vec![]);
        assert_eq!(s.queued_in_order(10), ids(&[5, 2, 3]));
        assert_eq!(s.position(ExecutionId(2)), Some(1));
        let mut order: Vec<u64> = Vec::new();
        while s.in_flight() > 0 {
            order.extend(finish_front(&mut s, B0));
        }
        assert_eq!(order, vec![5, 2, 3]);
    }

    #[test]
    fn preemption_takes_back_the_least_urgent_waiting_one() {
        use TaskPriority::*;
        let mut s = scheduler(100, 10);
        up(&mut s, B0, &[]);
        up(&mut s, B1, &[]);
        for (id, priority) in [(1, High), (2, High), (3, Normal), (4, Low)] {
            submit(&mut s, id, priority);
        }
        assert_eq!(
            s.next_actions(),
            vec![
                dispatch(1, B0),
                dispatch(2, B1),
                dispatch(3, B0),
                dispatch(4, B1)
            ]
        );
        submit(&mut s, 5, Critical);
        assert_eq!(s.next_actions(), vec![take_back(4, B1)]);
        submit(&mut s, 6, Critical);
        assert_eq!(s.next_actions(), vec![take_back(3, B0)]);
        submit(&mut s, 7, Critical);
        assert_eq!(s.next_actions(), vec![], "every backend has one in flight");
    }
}
