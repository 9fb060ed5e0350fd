use super::*;
use crate::model::TaskEventType;
use crate::store::MemoryStore;

fn task_event(i: u64) -> TaskEvent {
    TaskEvent::new(format!("t{i}"), TaskEventType::Created)
}

/// A bus on a fresh SQLite store (kept with its directory).
fn sqlite_bus() -> (tempfile::TempDir, Arc<crate::store::SqliteStore>, EventBus) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(crate::store::SqliteStore::open(&dir.path().join("s.db")).unwrap());
    let bus = EventBus::new(64, Some(Arc::clone(&store) as Arc<dyn Store>));
    (dir, store, bus)
}

/// One task event (task `t{i}`) in a write of its own, or in the thread's open batch.
fn publish(bus: &EventBus, i: u64) -> Commit {
    bus.commit(
        Changes::default(),
        vec![(EventPayload::Task(task_event(i)), EventContext::default())],
    )
}

/// An event as (sequence, task id; empty for other events).
fn numbered(event: &Event) -> (u64, String) {
    match &event.payload {
        EventPayload::Task(t) => (event.sequence, t.task_id.clone()),
        _ => (event.sequence, String::new()),
    }
}

/// The stored events as (sequence, task id).
fn stored_order(store: &crate::store::SqliteStore) -> Vec<(u64, String)> {
    store
        .events_after(0, 100)
        .unwrap()
        .iter()
        .map(numbered)
        .collect()
}

#[test]
fn a_batch_is_one_store_write_with_its_events_in_order() {
    let (_dir, store, bus) = sqlite_bus();
    let before = store.commit_count();
    let commits: Vec<Commit> = {
        let _batch = bus.batch();
        let inner = bus.batch();
        let commits = (0..3).map(|i| publish(&bus, i)).collect();
        drop(inner);
        assert_eq!(
            bus.last_sequence(),
            0,
            "nothing is handed over inside the batch"
        );
        commits
    };
    for commit in commits {
        commit.wait().unwrap();
    }
    assert_eq!(store.commit_count() - before, 1, "one write for the batch");
    assert_eq!(
        stored_order(&store),
        [(1, "t0".into()), (2, "t1".into()), (3, "t2".into())]
    );
    // Waiting inside a batch hands it over first instead of waiting forever.
    let _batch = bus.batch();
    publish(&bus, 9).wait().unwrap();
    assert_eq!(bus.last_sequence(), 4);
}

#[test]
fn waiting_for_a_commit_inside_a_hold_of_wakes_wakes_the_store_writer() {
    let (_dir, store, bus) = sqlite_bus();
    let hold = crate::store::hold_wakes();
    // Handed over with the writer's wake owed to the hold: the wait gives it instead of
    // waiting forever, alone and from inside a batch.
    publish(&bus, 1).wait().unwrap();
    let commit = {
        let _batch = bus.batch();
        publish(&bus, 2)
    };
    commit.wait().unwrap();
    drop(hold.release());
    assert_eq!(stored_order(&store), [(1, "t1".into()), (2, "t2".into())]);
}

#[tokio::test]
async fn events_published_alone_inside_a_batch_are_written_when_it_ends() {
    let (_dir, store, bus) = sqlite_bus();
    let mut live = bus.subscribe();
    for deferrable in [false, true] {
        let batch = if deferrable {
            bus.deferrable_batch()
        } else {
            bus.batch()
        };
        // A publish has nobody waiting for it: the batch holds no waiter.
        bus.publish_task(task_event(u64::from(deferrable)), EventContext::default());
        drop(batch);
    }
    bus.settled().await.unwrap();
    assert_eq!(stored_order(&store), [(1, "t0".into()), (2, "t1".into())]);
    for sequence in [1, 2] {
        assert_eq!(live.recv().await.unwrap().sequence, sequence);
    }
}

#[tokio::test(start_paused = true)]
async fn deferrable_writes_are_held_and_go_out_in_front_of_the_next_write() {
    let (_dir, store, bus) = sqlite_bus();
    for i in 0..3 {
        let _batch = bus.deferrable_batch();
        drop(publish(&bus, i));
    }
    assert!(bus.inner.holding.load(Ordering::Acquire), "held");
    assert_eq!(
        bus.inner.handed.load(Ordering::Acquire),
        0,
        "nothing handed over"
    );
    // The next write (nobody waits in a deferrable batch, but this one is waited
    // for) takes the held ones with it, in front: one commit, in order.
    publish(&bus, 3).committed().await.unwrap();
    assert_eq!(store.commit_count(), 1, "one write for all four");
    assert_eq!(
        stored_order(&store),
        [
            (1, "t0".into()),
            (2, "t1".into()),
            (3, "t2".into()),
            (4, "t3".into())
        ]
    );
    assert_eq!(bus.last_sequence(), 4, "announced");
}

#[tokio::test(start_paused = true)]
async fn two_held_writes_that_cannot_be_one_go_out_in_order() {
    let (_dir, _store, bus) = sqlite_bus();
    // Each carries an execution's new tasks, which a write holds for one execution only.
    for (i, execution) in [(0, "e0"), (1, "e1")] {
        let _batch = bus.deferrable_batch();
        drop(bus.commit(
            Changes {
                new_execution_tasks: Some((execution.into(), Vec::new())),
                ..Changes::default()
            },
            vec![(EventPayload::Task(task_event(i)), EventContext::default())],
        ));
    }
    assert_eq!(
        bus.inner.handed.load(Ordering::Acquire),
        1,
        "the earlier handed over"
    );
    assert!(bus.inner.holding.load(Ordering::Acquire), "the later held");
    // Whatever the store made of them, they were numbered in the order they were made.
    let _ = bus.settled().await;
    let order: Vec<(u64, String)> = bus
        .history_after(0, 10)
        .unwrap()
        .iter()
        .map(|e| numbered(e))
        .collect();
    assert_eq!(order, [(1, "t0".into()), (2, "t1".into())]);
}

#[tokio::test(start_paused = true)]
async fn a_held_write_goes_out_on_its_own_after_a_while() {
    let (_dir, store, bus) = sqlite_bus();
    {
        let _batch = bus.deferrable_batch();
        drop(publish(&bus, 0));
    }
    tokio::time::sleep(HOLD_AT_MOST / 2).await;
    assert!(bus.inner.holding.load(Ordering::Acquire), "still held");
    tokio::time::sleep(HOLD_AT_MOST).await;
    assert!(
        !bus.inner.holding.load(Ordering::Acquire),
        "handed over by the timer"
    );
    assert_eq!(bus.inner.handed.load(Ordering::Acquire), 1);
    bus.settled().await.unwrap();
    assert_eq!(stored_order(&store), [(1, "t0".into())]);
}

#[tokio::test(start_paused = true)]
async fn a_hold_handed_over_early_does_not_cut_the_next_hold_short() {
    let (_dir, store, bus) = sqlite_bus();
    {
        let _batch = bus.deferrable_batch();
        drop(publish(&bus, 0));
    }
    // Handed over before its time, in front of a write that is not deferred.
    tokio::time::sleep(HOLD_AT_MOST / 2).await;
    drop(publish(&bus, 1));
    assert!(!bus.inner.holding.load(Ordering::Acquire));
    // The next job's reports are held from here, for their own whole time.
    {
        let _batch = bus.deferrable_batch();
        drop(publish(&bus, 2));
    }
    tokio::time::sleep(HOLD_AT_MOST * 3 / 4).await;
    assert!(
        bus.inner.holding.load(Ordering::Acquire),
        "the first hold's timer handed over the second hold"
    );
    assert_eq!(bus.inner.handed.load(Ordering::Acquire), 1);
    tokio::time::sleep(HOLD_AT_MOST / 2).await;
    assert!(
        !bus.inner.holding.load(Ordering::Acquire),
        "handed over by its own timer"
    );
    bus.settled().await.unwrap();
    assert_eq!(
        stored_order(&store),
        [(1, "t0".into()), (2, "t1".into()), (3, "t2".into())]
    );
}

#[tokio::test(start_paused = true)]
async fn waiting_for_a_held_write_hands_it_over() {
    use futures_util::FutureExt as _;
    let (_dir, store, bus) = sqlite_bus();
    let commit = {
        let _batch = bus.deferrable_batch();
        publish(&bus, 0)
    };
    assert!(bus.inner.holding.load(Ordering::Acquire));
    // Its first poll hands it over; no time has passed for the timer.
    let _ = commit.committed().now_or_never();
    assert!(!bus.inner.holding.load(Ordering::Acquire));
    // settled() too: the held write is one it waits for.
    {
        let _batch = bus.deferrable_batch();
        drop(publish(&bus, 1));
    }
    bus.settled().await.unwrap();
    assert_eq!(stored_order(&store), [(1, "t0".into()), (2, "t1".into())]);
}

#[test]
fn a_task_changed_twice_in_one_write_is_stored_once_as_it_is_now() {
    let task = |name: &str| {
        let mut new = crate::model::NewTask::new(name, crate::model::TaskType::Node);
        new.id = Some("t1".into());
        crate::model::Task::new(new).unwrap()
    };
    let write = |changed: Vec<crate::model::Task>| Write {
        changes: Changes {
            tasks: changed.into_iter().map(Arc::new).collect(),
            ..Changes::default()
        },
        ..Write::default()
    };
    let mut merged = write(vec![task("first")]);
    merged.absorb(write(vec![task("second")]));
    let names: Vec<&str> = merged
        .changes
        .tasks
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(names, ["second"]);
}

#[tokio::test(start_paused = true)]
async fn in_front_of_the_memory_store_nothing_is_held() {
    let bus = EventBus::new(16, Some(Arc::new(MemoryStore::new()) as Arc<dyn Store>));
    {
        let _batch = bus.deferrable_batch();
        drop(publish(&bus, 0));
    }
    assert!(!bus.inner.holding.load(Ordering::Acquire));
    assert_eq!(bus.last_sequence(), 1, "written and announced at once");
}

#[test]
fn without_a_tokio_runtime_a_deferrable_batch_is_written_at_once() {
    let (_dir, store, bus) = sqlite_bus();
    let commit = {
        let _batch = bus.deferrable_batch();
        publish(&bus, 0)
    };
    assert!(!bus.inner.holding.load(Ordering::Acquire));
    commit.wait().unwrap();
    assert_eq!(stored_order(&store), [(1, "t0".into())]);
}

#[tokio::test]
async fn settled_waits_for_every_write_handed_over_and_writes_nothing() {
    let (_dir, store, bus) = sqlite_bus();
    // Nothing handed over yet: nothing to wait for, and nothing written.
    bus.settled().await.unwrap();
    assert_eq!(store.commit_count(), 0);
    for round in 1..=20u64 {
        // Dropped: only settled() waits for these.
        for i in 0..5 {
            drop(publish(&bus, i));
        }
        bus.settled().await.unwrap();
        let last = round * 5;
        assert_eq!(store.last_event_sequence().unwrap(), last, "stored");
        assert_eq!(
            bus.history_after(last - 1, 1).unwrap().len(),
            1,
            "announced"
        );
    }
    let commits = store.commit_count();
    bus.settled().await.unwrap();
    assert_eq!(store.commit_count(), commits, "settled writes nothing");
    // A batch open on this thread is handed over, not waited on forever.
    let _batch = bus.batch();
    drop(publish(&bus, 7));
    bus.settled().await.unwrap();
    assert_eq!(store.last_event_sequence().unwrap(), 101);
}

#[tokio::test]
async fn a_settled_call_dropped_while_it_waits_is_no_longer_counted() {
    use futures_util::FutureExt as _;
    let (_dir, _store, bus) = sqlite_bus();
    let waiting = || bus.inner.settled.lock().unwrap().waiting;
    for _ in 0..100 {
        // Enough writes that the writer thread is still at them when polled.
        for i in 0..200 {
            drop(publish(&bus, i));
        }
        let mut call = Box::pin(bus.settled());
        if (&mut call).now_or_never().is_some() {
            continue;
        }
        assert_eq!(waiting(), 1, "a call that waits is counted");
        drop(call);
        assert_eq!(waiting(), 0, "a dropped call is not");
        bus.settled().await.unwrap();
        assert_eq!(waiting(), 0, "a call that returned is not");
        return;
    }
    panic!("settled() never had to wait for 200 writes");
}

/// Holds the store file's write lock (`BEGIN IMMEDIATE` from a connection of its own) until
/// released: the writer waits for it.
struct WriteLock(rusqlite::Connection);

impl WriteLock {
    fn take(dir: &tempfile::TempDir) -> Self {
        let conn = rusqlite::Connection::open(dir.path().join("s.db")).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        Self(conn)
    }

    fn release(self) {
        self.0.execute_batch("COMMIT").unwrap();
    }
}

/// A `settled` call off any runtime, polled by hand on a thread of its own, which parks
/// between polls: it must wait (a write is held back by the file's lock), and is woken once
/// the lock goes (at most 10 s; the thread is left behind when the call never returns).
fn settled_without_a_runtime(dir: &tempfile::TempDir, bus: &EventBus) {
    let lock = WriteLock::take(dir);
    drop(publish(bus, 1));
    let (waits, waiting) = std::sync::mpsc::channel();
    let (done, finished) = std::sync::mpsc::channel();
    let bus = bus.clone();
    std::thread::spawn(move || {
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Arc::new(Unpark(std::thread::current())).into();
        let mut cx = std::task::Context::from_waker(&waker);
        let mut call = std::pin::pin!(bus.settled());
        let mut polls = 0;
        let outcome = loop {
            if let std::task::Poll::Ready(outcome) = call.as_mut().poll(&mut cx) {
                break outcome;
            }
            polls += 1;
            if polls == 1 {
                let _ = waits.send(());
            }
            std::thread::park();
        };
        let _ = done.send(outcome);
    });
    waiting
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the call waits for the held write");
    lock.release();
    finished
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("a settled call off any runtime is woken")
        .unwrap();
}

#[test]
fn settled_calls_are_woken_by_the_settler_on_their_runtime_or_by_the_writer_without_one() {
    use futures_util::FutureExt as _;
    let (dir, store, bus) = sqlite_bus();
    let started = || bus.inner.settler.started.load(Ordering::SeqCst);
    // No runtime: nothing to start the settler on; the writer wakes the call.
    settled_without_a_runtime(&dir, &bus);
    assert!(!started());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let lock = WriteLock::take(&dir);
        drop(publish(&bus, 2));
        let mut call = Box::pin(bus.settled());
        assert!((&mut call).now_or_never().is_none(), "the call waits");
        assert!(started(), "a call that waits starts the settler");
        lock.release();
        tokio::time::timeout(std::time::Duration::from_secs(10), call)
            .await
            .expect("the settler wakes the call")
            .unwrap();
    });
    // Its runtime gone, the settler is too, and the writer wakes the calls again.
    drop(runtime);
    assert!(!started());
    settled_without_a_runtime(&dir, &bus);
    assert_eq!(
        store.last_event_sequence().unwrap(),
        3,
        "every write settled"
    );
}

#[tokio::test]
async fn numbers_keeps_and_broadcasts_in_order() {
    let bus = EventBus::new(3, None);
    let mut live = bus.subscribe();
    for i in 0..5 {
        assert_eq!(
            bus.publish_task(task_event(i), EventContext::default()),
            i + 1
        );
    }
    for i in 1..=5 {
        assert_eq!(live.recv().await.unwrap().sequence, i);
    }
    let kept = bus.history_after(2, 10).unwrap();
    assert_eq!(
        kept.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [3, 4, 5]
    );
    // Without a store, what left the window is gone.
    assert_eq!(bus.history_after(0, 10).unwrap_err(), 3);
    assert!(bus.history_after(5, 10).unwrap().is_empty());
    assert_eq!(bus.last_sequence(), 5);
}

/// A subscriber of `bus` parked in `recv` on `runtime` (which starts the
/// relay), reading `n` events; gives their sequences.
fn parked_reader(
    runtime: &tokio::runtime::Runtime,
    bus: &EventBus,
    n: usize,
) -> tokio::task::JoinHandle<Vec<u64>> {
    let mut parked = bus.subscribe();
    let reader = runtime.spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < n {
            seen.push(parked.recv().await.unwrap().sequence);
        }
        seen
    });
    runtime.block_on(tokio::task::yield_now());
    reader
}

/// A bus on a current-thread runtime, a subscriber parked there reading `n`
/// events (which starts the relay), and a subscriber that reads by polling.
fn relayed_bus(
    n: usize,
) -> (
    tokio::runtime::Runtime,
    EventBus,
    tokio::task::JoinHandle<Vec<u64>>,
    LiveEvents,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let bus = EventBus::new(16, None);
    let waiter = parked_reader(&runtime, &bus, n);
    let watcher = bus.subscribe();
    (runtime, bus, waiter, watcher)
}

#[test]
fn publishing_leaves_the_waking_to_the_relay() {
    let (runtime, bus, waiter, mut watcher) = relayed_bus(3);
    // More subscribers than the publisher wakes by itself.
    let _others: Vec<_> = (0..DIRECT_SUBSCRIBERS).map(|_| bus.subscribe()).collect();
    for i in 0..3 {
        bus.publish_task(task_event(i), EventContext::default());
    }
    // Announced (the window has them) but not sent: the publisher only
    // handed them to the relay, which has not run yet.
    assert_eq!(bus.last_sequence(), 3);
    assert!(matches!(
        watcher.try_recv(),
        Err(broadcast::error::TryRecvError::Empty)
    ));
    assert_eq!(runtime.block_on(waiter).unwrap(), [1, 2, 3]);
    for i in 1..=3 {
        assert_eq!(watcher.try_recv().unwrap().sequence, i);
    }
    // Once the relay's runtime is gone, publishers send by themselves.
    drop(runtime);
    bus.publish_task(task_event(4), EventContext::default());
    assert_eq!(watcher.try_recv().unwrap().sequence, 4);
}

#[test]
fn a_few_subscribers_are_sent_to_by_the_publisher_in_order() {
    let (runtime, bus, waiter, mut watcher) = relayed_bus(4);
    bus.publish_task(task_event(0), EventContext::default());
    // Sent at once, without the relay running.
    assert_eq!(watcher.try_recv().unwrap().sequence, 1);
    // Past the limit the relay takes over; back under it, the publisher
    // waits until the relay has sent what it holds, so order holds.
    let others: Vec<_> = (0..DIRECT_SUBSCRIBERS).map(|_| bus.subscribe()).collect();
    bus.publish_task(task_event(1), EventContext::default());
    drop(others);
    bus.publish_task(task_event(2), EventContext::default());
    assert!(matches!(
        watcher.try_recv(),
        Err(broadcast::error::TryRecvError::Empty)
    ));
    runtime.block_on(tokio::task::yield_now());
    runtime.block_on(tokio::task::yield_now());
    bus.publish_task(task_event(3), EventContext::default());
    assert_eq!(runtime.block_on(waiter).unwrap(), [1, 2, 3, 4]);
    for i in 2..=4 {
        assert_eq!(watcher.try_recv().unwrap().sequence, i);
    }
}

#[test]
fn several_events_from_outside_the_runtime_go_through_the_relay() {
    let (runtime, bus, waiter, mut watcher) = relayed_bus(3);
    // One event from this thread (no runtime here): sent at once.
    bus.publish_task(task_event(0), EventContext::default());
    assert_eq!(watcher.try_recv().unwrap().sequence, 1);
    // Two in one write: handed to the relay, which sends them when the
    // runtime runs it (one wake instead of one per event).
    {
        let _batch = bus.batch();
        bus.publish_task(task_event(1), EventContext::default());
        bus.publish_task(task_event(2), EventContext::default());
    }
    assert_eq!(bus.last_sequence(), 3);
    assert!(matches!(
        watcher.try_recv(),
        Err(broadcast::error::TryRecvError::Empty)
    ));
    assert_eq!(runtime.block_on(waiter).unwrap(), [1, 2, 3]);
    for i in 2..=3 {
        assert_eq!(watcher.try_recv().unwrap().sequence, i);
    }
    // On a thread of the runtime, both go out at once.
    runtime.block_on(async {
        let _batch = bus.batch();
        bus.publish_task(task_event(3), EventContext::default());
        bus.publish_task(task_event(4), EventContext::default());
    });
    for i in 4..=5 {
        assert_eq!(watcher.try_recv().unwrap().sequence, i);
    }
}

#[test]
fn many_subscribers_get_every_event_in_order_from_publishing_threads() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let bus = EventBus::new(64, None);
    let readers: Vec<_> = (0..50)
        .map(|_| {
            let mut live = bus.subscribe();
            runtime.spawn(async move {
                let mut seen = Vec::new();
                while seen.len() < 2_000 {
                    match live.recv().await {
                        Ok(event) => seen.push(event.sequence),
                        Err(error) => panic!("{error}"),
                    }
                }
                seen
            })
        })
        .collect();
    // Two threads outside the runtime publish 1,000 each (fewer than the
    // live channel holds, so nobody lags).
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                for i in 0..1_000 {
                    bus.publish_task(task_event(i), EventContext::default());
                }
            });
        }
    });
    let everything: Vec<u64> = (1..=2_000).collect();
    for reader in readers {
        assert_eq!(runtime.block_on(reader).unwrap(), everything);
    }
}

#[test]
fn a_shared_event_is_encoded_once() {
    let bus = EventBus::new(4, None);
    bus.publish_task(task_event(1), EventContext::default());
    let first = bus.history_after(0, 1).unwrap().remove(0);
    let again = bus.history_after(0, 1).unwrap().remove(0);
    let mut encodings = 0;
    let mut encode = |event: &Event| {
        encodings += 1;
        Bytes::from(event.sequence.to_string())
    };
    assert_eq!(first.encoded(&mut encode), "1");
    assert_eq!(again.encoded(&mut encode), "1");
    assert_eq!(encodings, 1, "the window hands out the same shared event");
}

#[test]
fn the_store_serves_what_left_the_window_and_numbering_continues() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let bus = EventBus::new(2, Some(Arc::clone(&store)));
    for i in 0..6 {
        bus.publish_task(task_event(i), EventContext::default());
    }
    let events = bus.history_after(0, 4).unwrap();
    assert_eq!(
        events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    match &events[0].payload {
        EventPayload::Task(event) => assert_eq!(event.sequence, 1),
        other => panic!("{other:?}"),
    }
    let again = EventBus::new(2, Some(store));
    assert_eq!(again.last_sequence(), 6);
    assert_eq!(
        again.publish_task(task_event(9), EventContext::default()),
        7
    );
}
