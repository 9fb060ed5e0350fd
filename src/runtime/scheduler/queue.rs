//! The runtime's queue of executions waiting for a backend: its order
//! (priority, then submit order, kept across take-backs), its grouping by
//! required classes, per-priority counts, positions, and the executions no
//! up backend can run. It orders and counts; choosing a backend is the
//! planner's job.

use std::cmp::Reverse;
use std::collections::{BTreeSet, hash_map};
use std::ops::Bound;

use super::backends::eligible_backends;
use super::ids::{BackendId, ExecutionId, RequiredClasses};
use super::outcomes::Stranded;
use super::{Place, Scheduler};
use crate::model::TaskPriority;

/// Queue order: most urgent priority first, then submit order.
pub(super) type QueueKey = (Reverse<TaskPriority>, u64, ExecutionId);

/// Queued executions sharing one set of required classes.
#[derive(Debug)]
pub(super) struct Group {
    /// Their order.
    pub(super) queue: BTreeSet<QueueKey>,
    /// How many of them have each priority (indexed by its value), so a
    /// position is found without walking the queue.
    pub(super) by_priority: [usize; 4],
    /// Up backends able to run them, by id.
    pub(super) eligible: Vec<BackendId>,
}

impl Group {
    /// How many of its executions come before `key`: the more urgent ones
    /// by their counts, and those of the same priority by walking that
    /// priority's part of the queue from both ends at once, so the walk is
    /// as short as `key`'s distance to the nearer end (a recent submit sits
    /// near the back).
    fn count_before(&self, key: QueueKey) -> usize {
        let Reverse(priority) = key.0;
        let index = usize::from(priority.value());
        let more_urgent: usize = self.by_priority[index + 1..].iter().sum();
        let total = self.by_priority[index];
        let first = (key.0, 0, ExecutionId(0));
        let last = (key.0, u64::MAX, ExecutionId(u64::MAX));
        let in_group = usize::from(self.queue.contains(&key));
        let mut front = self.queue.range(first..key);
        let mut back = self
            .queue
            .range((Bound::Excluded(key), Bound::Included(last)))
            .rev();
        let (mut before, mut after) = (0, 0);
        loop {
            if front.next().is_none() {
                return more_urgent + before;
            }
            before += 1;
            if back.next().is_none() {
                return more_urgent + total - in_group - after;
            }
            after += 1;
        }
    }
}

impl Scheduler {
    /// Executions in the queue.
    pub fn queued_len(&self) -> usize {
        self.queued.iter().sum()
    }

    /// Executions in the queue at `priority`.
    pub fn queue_depth(&self, priority: TaskPriority) -> usize {
        self.queued[usize::from(priority.value())]
    }

    /// How many queued executions go before `id` (0: next), if it is queued.
    /// O(position): for metrics and tests.
    pub fn position(&self, id: ExecutionId) -> Option<usize> {
        let entry = self.entries.get(&id)?;
        if !matches!(entry.place, Place::Queued) {
            return None;
        }
        let key = entry.key(id);
        Some(
            self.groups
                .values()
                .map(|group| group.count_before(key))
                .sum(),
        )
    }

    /// The first `limit` queued executions, in queue order.
    pub fn queued_in_order(&self, limit: usize) -> Vec<ExecutionId> {
        let mut cursors: Vec<_> = self
            .groups
            .values()
            .map(|group| group.queue.iter().peekable())
            .collect();
        let mut out = Vec::with_capacity(limit.min(self.queued_len()));
        while out.len() < limit {
            let next = cursors
                .iter_mut()
                .enumerate()
                .filter_map(|(index, cursor)| cursor.peek().map(|key| (**key, index)))
                .min();
            let Some(((_, _, id), index)) = next else {
                break;
            };
            out.push(id);
            if let Some(cursor) = cursors.get_mut(index) {
                cursor.next();
            }
        }
        out
    }

    /// Queued executions that no up backend can run, grouped by what they
    /// need, ordered by their most urgent execution. O(n) at worst.
    pub fn stranded(&self) -> Vec<Stranded> {
        let mut stranded: Vec<(QueueKey, Stranded)> = self
            .groups
            .iter()
            .filter(|(_, group)| group.eligible.is_empty())
            .filter_map(|(required, group)| {
                let first = *group.queue.first()?;
                let missing = required
                    .0
                    .iter()
                    .filter(|class| {
                        !self
                            .backends
                            .values()
                            .any(|backend| backend.up && backend.classes.contains(*class))
                    })
                    .cloned()
                    .collect();
                let runnable_by_down_backend = self
                    .backends
                    .values()
                    .any(|backend| !backend.up && required.satisfied_by(&backend.classes));
                Some((
                    first,
                    Stranded {
                        required: required.clone(),
                        missing,
                        runnable_by_down_backend,
                        ids: group.queue.iter().map(|(_, _, id)| *id).collect(),
                    },
                ))
            })
            .collect();
        stranded.sort_by_key(|(first, _)| *first);
        stranded.into_iter().map(|(_, group)| group).collect()
    }

    pub(super) fn enqueue(&mut self, key: QueueKey, required: &RequiredClasses) {
        let group = match self.groups.entry(required.clone()) {
            hash_map::Entry::Occupied(occupied) => occupied.into_mut(),
            hash_map::Entry::Vacant(vacant) => vacant.insert(Group {
                queue: BTreeSet::new(),
                by_priority: [0; 4],
                eligible: eligible_backends(&self.backends, required),
            }),
        };
        if group.queue.insert(key) {
            let Reverse(priority) = key.0;
            group.by_priority[usize::from(priority.value())] += 1;
            self.queued[usize::from(priority.value())] += 1;
        }
    }

    pub(super) fn dequeue(&mut self, key: QueueKey, required: &RequiredClasses) {
        let Some(group) = self.groups.get_mut(required) else {
            return;
        };
        if group.queue.remove(&key) {
            let Reverse(priority) = key.0;
            let count = &mut group.by_priority[usize::from(priority.value())];
            *count = count.saturating_sub(1);
            let depth = &mut self.queued[usize::from(priority.value())];
            *depth = depth.saturating_sub(1);
        }
        if group.queue.is_empty() {
            self.groups.remove(required);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::TaskPriority;
    use crate::runtime::scheduler::ExecutionId;
    use crate::runtime::scheduler::test_support::{
        B0, dispatch, finish_front, ids, scheduler, submit, up,
    };

    #[test]
    fn priority_order_with_one_backend_busy() {
        use TaskPriority::*;
        let mut s = scheduler(100, 10);
        up(&mut s, B0, &[]);
        submit(&mut s, 100, Critical);
        submit(&mut s, 101, Critical);
        assert_eq!(s.next_actions(), vec![dispatch(100, B0), dispatch(101, B0)]);
        s.prompt_started(B0, ExecutionId(100)).unwrap();
        for (id, priority) in [(1, Low), (2, Normal), (3, High), (4, Critical), (5, Normal)] {
            submit(&mut s, id, priority);
            assert_eq!(s.next_actions(), vec![], "the backend is full");
        }
        assert_eq!(s.queued_in_order(10), ids(&[4, 3, 2, 5, 1]));
        assert_eq!(s.position(ExecutionId(4)), Some(0));
        assert_eq!(s.position(ExecutionId(1)), Some(4));
        assert_eq!(s.queue_depth(Normal), 2);
        let mut order: Vec<u64> = Vec::new();
        while s.in_flight() > 0 {
            order.extend(finish_front(&mut s, B0));
        }
        assert_eq!(order, vec![4, 3, 2, 5, 1]);
    }

    #[test]
    fn fifo_within_a_level() {
        use TaskPriority::*;
        let mut s = scheduler(100, 1);
        for (id, priority) in [(1, Normal), (2, Low), (3, Normal), (4, Low), (5, Normal)] {
            submit(&mut s, id, priority);
        }
        assert_eq!(s.next_actions(), vec![], "no backend yet");
        up(&mut s, B0, &[]);
        let mut order: Vec<u64> = Vec::new();
        loop {
            let dispatched: Vec<u64> = s
                .next_actions()
                .into_iter()
                .map(|action| action.id().0)
                .collect();
            order.extend(&dispatched);
            let Some(&last) = dispatched.last() else {
                break;
            };
            s.prompt_finished(B0, ExecutionId(last)).unwrap();
        }
        assert_eq!(order, vec![1, 3, 5, 2, 4]);
    }
}
