//! Property tests of the whole scheduler: after any sequence of inputs, its
//! invariants hold (order, limits, one place per execution, work conserving).
//! Test builds only.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};

use proptest::prelude::*;

use super::{
    Action, BackendId, CancelOutcome, ExecutionId, ExecutionKey, Location, RequiredClasses,
    Scheduler, SchedulerConfig, SchedulerError, TakenBackOutcome,
};
use crate::model::TaskPriority;

const CLASS_SETS: [&[&str]; 4] = [&[], &["A"], &["B"], &["A", "B"]];

#[derive(Debug, Clone)]
enum Op {
    Submit {
        priority: u8,
        required: usize,
        reuse: Option<usize>,
    },
    Cancel(usize),
    Up {
        backend: u32,
        classes: usize,
    },
    Down(u32),
    /// 0 started, 1 finished, 2 taken back, 3 take-back failed;
    /// `pick` chooses an id on the backend, or any id if out of range.
    Event {
        kind: u8,
        backend: u32,
        pick: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..4, 0usize..4, proptest::option::weighted(0.2, 0usize..64))
            .prop_map(|(priority, required, reuse)| Op::Submit { priority, required, reuse }),
        1 => (0usize..64).prop_map(Op::Cancel),
        2 => (0u32..3, prop_oneof![3 => Just(0usize), 1 => 0usize..4])
            .prop_map(|(backend, classes)| Op::Up { backend, classes }),
        1 => (0u32..4).prop_map(Op::Down),
        8 => (0u8..4, 0u32..3, 0usize..8)
            .prop_map(|(kind, backend, pick)| Op::Event { kind, backend, pick }),
    ]
}

/// What the test knows independently of the scheduler.
#[derive(Default)]
struct Model {
    /// Every id ever admitted.
    submitted: Vec<ExecutionId>,
    /// Order key and class set of each held id.
    keys: HashMap<ExecutionId, ((Reverse<TaskPriority>, u64), usize)>,
    /// Ids the scheduler must hold.
    live: HashSet<ExecutionId>,
    /// Next submit sequence.
    seq: u64,
    /// Known backends: up, class set index.
    backends: BTreeMap<u32, (bool, usize)>,
}

impl Model {
    fn eligible(&self, id: ExecutionId, backend: BackendId) -> bool {
        let required = CLASS_SETS[self.keys[&id].1];
        self.backends.get(&backend.0).is_some_and(|(up, classes)| {
            *up && required.iter().all(|c| CLASS_SETS[*classes].contains(c))
        })
    }

    fn key(&self, id: ExecutionId) -> (Reverse<TaskPriority>, u64) {
        self.keys[&id].0
    }
}

fn apply(s: &mut Scheduler, m: &mut Model, op: &Op) {
    let before = format!("{s:?}");
    match *op {
        Op::Submit {
            priority,
            required,
            reuse,
        } => {
            let id = match reuse {
                Some(pick) if !m.submitted.is_empty() => m.submitted[pick % m.submitted.len()],
                _ => ExecutionId(m.submitted.len() as u64 + 1000),
            };
            let priority = TaskPriority::from_value(priority).unwrap();
            let result = s.submit(ExecutionKey {
                id,
                priority,
                required: RequiredClasses::new(CLASS_SETS[required].iter().copied()),
            });
            match result {
                Ok(()) => {
                    assert!(m.live.insert(id));
                    if !m.submitted.contains(&id) {
                        m.submitted.push(id);
                    }
                    m.keys.insert(id, ((Reverse(priority), m.seq), required));
                    m.seq += 1;
                }
                Err(SchedulerError::AlreadyScheduled(_)) => {
                    assert!(m.live.contains(&id));
                    assert_eq!(before, format!("{s:?}"));
                }
                Err(SchedulerError::QueueFull { .. }) => {
                    assert!(s.queued_len() >= s.config().max_queue_len);
                    assert_eq!(before, format!("{s:?}"));
                }
                Err(other) => panic!("unexpected {other}"),
            }
        }
        Op::Cancel(pick) => {
            let Some(&id) = m.submitted.get(pick % m.submitted.len().max(1)) else {
                return;
            };
            match s.cancel(id) {
                CancelOutcome::Removed => assert!(m.live.remove(&id)),
                CancelOutcome::NotFound => assert!(!m.live.contains(&id)),
                CancelOutcome::TakingBack { .. } | CancelOutcome::Interrupting { .. } => {
                    assert!(m.live.contains(&id));
                }
            }
        }
        Op::Up { backend, classes } => {
            s.backend_up(BackendId(backend), CLASS_SETS[classes].iter().copied());
            m.backends.insert(backend, (true, classes));
        }
        Op::Down(backend) => {
            for orphan in s.backend_down(BackendId(backend)) {
                assert!(m.live.remove(&orphan.id));
            }
            if let Some(known) = m.backends.get_mut(&backend) {
                known.0 = false;
            }
        }
        Op::Event {
            kind,
            backend,
            pick,
        } => {
            let backend = BackendId(backend);
            let on_it: Vec<ExecutionId> = s
                .backend_status(backend)
                .map(|status| status.running.into_iter().chain(status.waiting).collect())
                .unwrap_or_default();
            let on_it_pick = if pick < 6 {
                pick % on_it.len().max(1)
            } else {
                pick
            };
            let id = on_it.get(on_it_pick).copied().unwrap_or_else(|| {
                m.submitted
                    .get(pick)
                    .copied()
                    .unwrap_or(ExecutionId(u64::MAX))
            });
            let result = match kind {
                0 => s.prompt_started(backend, id),
                1 => s.prompt_finished(backend, id).map(|()| {
                    assert!(m.live.remove(&id));
                }),
                2 => s.taken_back(backend, id).map(|outcome| {
                    if outcome == TakenBackOutcome::Cancelled {
                        assert!(m.live.remove(&id));
                    }
                }),
                _ => s.take_back_failed(backend, id),
            };
            if result.is_err() {
                assert_eq!(before, format!("{s:?}"), "an error changes nothing");
            }
        }
    }
}

fn check(s: &Scheduler, m: &Model, actions: &[Action]) {
    let config = *s.config();
    // Backends: at most one running and depth - 1 more waiting; one preemption.
    let mut held = HashSet::new();
    let mut load = 0;
    for backend in s.backend_ids() {
        let status = s.backend_status(backend).unwrap();
        assert!(
            status.load() <= config.backend_pipeline_depth,
            "{backend}: {status:?}"
        );
        if !status.up {
            assert_eq!(status.load(), 0);
        }
        if let Some(running) = status.running {
            assert_eq!(s.location(running), Some(Location::Running { backend }));
            assert!(held.insert(running));
        }
        for &waiting in &status.waiting {
            assert!(matches!(
                s.location(waiting),
                Some(Location::Waiting { backend: b, .. }) if b == backend
            ));
            assert!(held.insert(waiting), "{waiting} is in two places");
        }
        if let Some(preempting) = status.preempting {
            // Held there; it may have started since (the take-back will fail).
            assert!(status.running == Some(preempting) || status.waiting.contains(&preempting));
        }
        load += status.load();
    }
    assert_eq!(s.in_flight(), load);
    assert!(s.in_flight() <= config.max_concurrent_tasks);

    // Every admitted id is in exactly one place, or nowhere once done.
    let queued = s.queued_in_order(usize::MAX);
    for (position, &id) in queued.iter().enumerate() {
        assert!(held.insert(id), "{id} is queued and elsewhere");
        assert_eq!(s.position(id), Some(position));
        let Reverse(priority) = m.key(id).0;
        assert_eq!(s.location(id), Some(Location::Queued { priority }));
    }
    assert_eq!(held, m.live);
    for id in &m.submitted {
        if !m.live.contains(id) {
            assert_eq!(s.location(*id), None);
        }
    }
    for priority in TaskPriority::ALL {
        let depth = queued
            .iter()
            .filter(|id| m.key(**id).0 == Reverse(priority))
            .count();
        assert_eq!(s.queue_depth(priority), depth);
    }
    // Queue order: priority, then submit order (kept across take-backs).
    for pair in queued.windows(2) {
        assert!(m.key(pair[0]) < m.key(pair[1]));
    }

    // Dispatches: in queue order, and nothing queued that could have
    // gone to the same backend is more urgent.
    let dispatched: Vec<(ExecutionId, BackendId)> = actions
        .iter()
        .filter_map(|action| match *action {
            Action::Dispatch { id, backend } => Some((id, backend)),
            _ => None,
        })
        .collect();
    for pair in dispatched.windows(2) {
        assert!(m.key(pair[0].0) < m.key(pair[1].0));
    }
    for &(id, backend) in &dispatched {
        assert!(m.eligible(id, backend), "{id} sent to incapable {backend}");
        for &q in &queued {
            if m.eligible(q, backend) {
                assert!(m.key(q) > m.key(id), "{q} passed over for {id}");
            }
        }
    }
    // Work conserving: below the cap, nothing queued fits a free slot.
    if s.in_flight() < config.max_concurrent_tasks {
        for &q in &queued {
            for backend in s.backend_ids() {
                let free =
                    s.backend_status(backend).unwrap().load() < config.backend_pipeline_depth;
                assert!(!(free && m.eligible(q, backend)), "{q} fits {backend}");
            }
        }
    }
    for action in actions {
        match *action {
            Action::Dispatch { .. } => {}
            Action::TakeBack { id, backend } => assert_eq!(
                s.location(id),
                Some(Location::Waiting {
                    backend,
                    taking_back: true
                })
            ),
            Action::Interrupt { id, backend } => assert!(matches!(
                s.location(id),
                Some(Location::Running { backend: b } | Location::Waiting { backend: b, .. })
                    if b == backend
            )),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn invariants_hold_after_every_input(
        max_queue_len in prop_oneof![1 => 0usize..3, 4 => 3usize..12],
        max_concurrent_tasks in prop_oneof![1 => Just(0usize), 6 => 1usize..7],
        backend_pipeline_depth in 1usize..5,
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let mut s = Scheduler::new(SchedulerConfig { max_queue_len, max_concurrent_tasks, backend_pipeline_depth });
        let mut m = Model::default();
        for op in &ops {
            apply(&mut s, &mut m, op);
            let actions = s.next_actions();
            check(&s, &m, &actions);
        }
    }
}
