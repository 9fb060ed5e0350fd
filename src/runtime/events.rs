//! Reading the event bus: filters, resumable subscriptions, paged history and
//! watching one execution.
//!
//! A subscription that resumes after sequence `n` gets every matching event
//! after `n` exactly once and in order: it registers for live events first,
//! then replays history (the in-memory window, then the store) and, when live,
//! skips what it already passed. A subscription is a stream that reads the bus
//! when its client's stream is polled, with no task or channel of its own. One
//! whose client reads slowly falls behind the live channel (shared by every
//! subscriber) and never makes the server buffer more for it: it is caught up
//! from history, a page at a time, and when history no longer reaches back far
//! enough, its stream ends with [`RuntimeError::SubscriberBehind`] naming the
//! last sequence it passed.

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::model::{EventCategory, LogLevel, TaskEventType};

use super::RuntimeError;
use super::bus::{Event, EventBus, EventPayload, LiveEvents, SharedEvent};

/// Events read from history per step of a catch-up.
const CATCH_UP_PAGE: usize = 512;
/// Most events one ListEvents call examines, matching or not.
pub const MAX_SCANNED_PER_PAGE: usize = 100_000;

/// Which events a reader wants. Empty lists mean "no filter".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    /// Only events about one of these tasks.
    pub task_ids: HashSet<String>,
    /// Only events about one of these executions.
    pub execution_ids: HashSet<String>,
    /// Only events about one of these workflows.
    pub workflow_ids: HashSet<String>,
    /// Only events whose task carries every one of these tags.
    pub tags: Vec<String>,
    /// Only task events of these types (other kinds are not affected).
    pub event_types: Vec<TaskEventType>,
    /// Only events of these categories (task events are TASK, metrics
    /// PERFORMANCE).
    pub categories: Vec<EventCategory>,
    /// Only events at least this severe.
    pub min_level: Option<LogLevel>,
    /// Whether events about single nodes of executions are wanted.
    pub include_node_events: bool,
}

impl EventFilter {
    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &Event) -> bool {
        let context = &event.context;
        if context.node && !self.include_node_events {
            return false;
        }
        if !self.task_ids.is_empty()
            && !context
                .task_id
                .as_ref()
                .is_some_and(|id| self.task_ids.contains(id))
        {
            return false;
        }
        if !self.execution_ids.is_empty()
            && !context
                .execution_id
                .as_ref()
                .is_some_and(|id| self.execution_ids.contains(id))
        {
            return false;
        }
        if !self.workflow_ids.is_empty()
            && !context
                .workflow_id
                .as_ref()
                .is_some_and(|id| self.workflow_ids.contains(id))
        {
            return false;
        }
        if !self.tags.iter().all(|tag| context.tags.contains(tag)) {
            return false;
        }
        if let EventPayload::Task(task_event) = &event.payload
            && !self.event_types.is_empty()
            && !self.event_types.contains(&task_event.event_type)
        {
            return false;
        }
        if !self.categories.is_empty() && !self.categories.contains(&event.category()) {
            return false;
        }
        self.min_level.is_none_or(|min| event.level() >= min)
    }
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// A matching event.
    Event(Arc<SharedEvent>),
    /// Nothing matched for a while; every event up to `last_sequence` was
    /// passed (resume after it).
    Heartbeat {
        /// The last sequence passed.
        last_sequence: u64,
    },
}

/// How a subscription behaves.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// Most events that wait for the client at once: a page of history while
    /// it catches up (at most 512). Live events wait in the bus's live
    /// channel, shared by every subscriber, until the client reads them.
    pub buffer: usize,
    /// Idle time before a heartbeat.
    pub heartbeat: Duration,
    /// Cancelled when the server starts draining: the subscription then ends
    /// at once with [`RuntimeError::StreamClosed`] naming the last sequence
    /// passed, instead of holding the drain open until its deadline.
    pub closing: CancellationToken,
}

/// A subscription's items, read by whoever polls it (the client's stream):
/// no task and no channel of its own between the bus and the client.
pub type Subscription = Pin<Box<dyn Stream<Item = Result<StreamItem, RuntimeError>> + Send>>;

/// Starts a subscription: events after `after` (or from now when `None`)
/// that pass `filter`, as a stream that reads the bus when polled.
///
/// # Errors
/// [`RuntimeError::OutOfRange`] when `after` is older than what is kept;
/// [`RuntimeError::SequenceAhead`] when `after` is newer than the newest event
/// (a sequence this runtime never published: a typo, or a resume point from a
/// store that was since replaced); [`RuntimeError::Unavailable`] once the
/// server is draining.
pub fn subscribe(
    bus: &EventBus,
    filter: EventFilter,
    after: Option<u64>,
    options: SubscribeOptions,
) -> Result<Subscription, RuntimeError> {
    if options.closing.is_cancelled() {
        return Err(RuntimeError::Unavailable(
            "the server is shutting down".into(),
        ));
    }
    // Live first, so nothing published from here on can be missed.
    let live = bus.subscribe();
    let start = match after {
        Some(after) => {
            let newest = bus.last_sequence();
            if after > newest {
                return Err(RuntimeError::SequenceAhead { after, newest });
            }
            if let Err(oldest) = bus.history_after(after, 1) {
                return Err(RuntimeError::OutOfRange { after, oldest });
            }
            after
        }
        None => bus.last_sequence(),
    };
    let reader = Box::new(Reader {
        bus: bus.clone(),
        filter,
        live,
        last: start,
        heartbeat: options.heartbeat,
        page: options.buffer.clamp(1, CATCH_UP_PAGE),
        ready: VecDeque::new(),
        catching_up: true,
        held: None,
        ended: false,
        // A child of the drain's token: checking a token takes its lock, and
        // the drain's is shared by every stream; a child's is this stream's.
        closing: Box::pin(options.closing.child_token().cancelled_owned()),
        beat: None,
        active: tokio::time::Instant::now(),
        yields: tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread),
    });
    Ok(Box::pin(futures_util::stream::unfold(
        reader,
        |mut reader| async move {
            let item = reader.next_item().await?;
            Some((item, reader))
        },
    )))
}

/// A subscription between two items: where it is in the sequence, what is
/// ready for the client, and the waits it keeps from one item to the next
/// (the heartbeat timer is re-armed only when it fires, an event since then
/// pushing the beat back; the wait for the drain is registered once). Each
/// live event then costs one receive and no lock that other streams take.
struct Reader {
    bus: EventBus,
    filter: EventFilter,
    live: LiveEvents,
    /// The last sequence passed (delivered or filtered out).
    last: u64,
    /// Idle time before a heartbeat.
    heartbeat: Duration,
    /// Events read from history at once: at most this many wait for the
    /// client (`events.subscriber_buffer`).
    page: usize,
    /// Items for the client, oldest first.
    ready: VecDeque<Result<StreamItem, RuntimeError>>,
    /// Replaying history (at the start, after a lag) until it is exhausted.
    catching_up: bool,
    /// A live event that came before the history in front of it was replayed.
    held: Option<Arc<SharedEvent>>,
    /// Nothing comes after `ready`.
    ended: bool,
    /// The drain's wait.
    closing: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The heartbeat timer, armed at the first read.
    beat: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When the last live event or heartbeat came.
    active: tokio::time::Instant,
    /// Whether a stream woken by a publish among many subscribers yields before it passes the
    /// event: on a multi-thread runtime, which runs a woken task next (its LIFO slot). The
    /// current-thread runtime (one worker thread, the default) runs the other streams woken
    /// first anyway, and their connections after them.
    yields: bool,
}

impl Reader {
    /// The next item: history first, then live events that pass the filter,
    /// a heartbeat when idle; `None` when the stream ends.
    async fn next_item(&mut self) -> Option<Result<StreamItem, RuntimeError>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
            if self.ended {
                return None;
            }
            if self.catching_up {
                self.replay_page();
                // A long replay of events the filter drops yields to the
                // other tasks now and then.
                tokio::task::consume_budget().await;
                continue;
            }
            if let Some(event) = self.held.take() {
                self.forward(event);
                continue;
            }
            let heartbeat = self.heartbeat;
            let beat = self
                .beat
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(heartbeat)));
            tokio::select! {
                biased;
                () = &mut self.closing => {
                    // What was ready already reached the client: the status
                    // comes after the last event.
                    self.ended = true;
                    let end = RuntimeError::StreamClosed { last_sequence: self.last };
                    return Some(Err(end));
                }
                (received, waited) = receive(&mut self.live) => {
                    self.active = tokio::time::Instant::now();
                    match received {
                        Ok(event) => {
                            self.forward(event);
                            if self.yields
                                && waited
                                && !self.ready.is_empty()
                                && self.bus.relays()
                            {
                                // Woken by a publish among many subscribers: the
                                // other streams it woke take theirs first, so
                                // that each HTTP/2 connection writes their
                                // frames together (one `writev` for about five
                                // deliveries with 100 subscribers, not 2.6).
                                tokio::task::yield_now().await;
                            }
                        }
                        Err(RecvError::Lagged(_)) => self.catching_up = true,
                        Err(RecvError::Closed) => self.ended = true,
                    }
                }
                () = beat.as_mut() => {
                    let due = self.active + self.heartbeat;
                    if due > tokio::time::Instant::now() {
                        beat.as_mut().reset(due);
                        continue;
                    }
                    self.active = tokio::time::Instant::now();
                    beat.as_mut().reset(self.active + self.heartbeat);
                    return Some(Ok(StreamItem::Heartbeat { last_sequence: self.last }));
                }
            }
        }
    }

    /// Passes a live event unless it was passed already; when some before it
    /// were missed, history is replayed first and the event kept for after.
    fn forward(&mut self, event: Arc<SharedEvent>) {
        if event.sequence <= self.last {
            return;
        }
        if event.sequence > self.last + 1 {
            // Missed some (should not happen without a lag): history has them.
            self.held = Some(event);
            self.catching_up = true;
            return;
        }
        self.pass(event);
    }

    /// Readies `event` for the client if it matches; it is passed either way.
    fn pass(&mut self, event: Arc<SharedEvent>) {
        let sequence = event.sequence;
        if self.filter.matches(&event) {
            self.ready.push_back(Ok(StreamItem::Event(event)));
        }
        self.last = sequence;
    }

    /// Reads the next page of history after `last`: the end of the replay when
    /// it is empty, the end of the stream when history no longer reaches back.
    fn replay_page(&mut self) {
        match self.bus.history_after(self.last, self.page) {
            Ok(events) if events.is_empty() => self.catching_up = false,
            Ok(events) => {
                for event in events {
                    self.pass(event);
                }
            }
            Err(_) => {
                let end = RuntimeError::SubscriberBehind {
                    last_sequence: self.last,
                };
                self.ready.push_back(Err(end));
                self.ended = true;
            }
        }
    }
}

/// The next live event, and whether it had to be waited for (the stream was
/// woken for it) rather than found already in the live channel.
async fn receive(live: &mut LiveEvents) -> (Result<Arc<SharedEvent>, RecvError>, bool) {
    let mut recv = std::pin::pin!(live.recv());
    let mut waited = false;
    std::future::poll_fn(|cx| match recv.as_mut().poll(cx) {
        std::task::Poll::Ready(received) => std::task::Poll::Ready((received, waited)),
        std::task::Poll::Pending => {
            waited = true;
            std::task::Poll::Pending
        }
    })
    .await
}

/// One page of history.
#[derive(Debug, Clone, PartialEq)]
pub struct EventPage {
    /// Matching events, oldest first.
    pub events: Vec<Arc<SharedEvent>>,
    /// Resume after this sequence for the next page; `None` when the page
    /// reached the newest event.
    pub next_after: Option<u64>,
    /// The newest sequence published when the page was read.
    pub last_sequence: u64,
}

/// Matching events after `after`, at most `limit`, examining at most
/// [`MAX_SCANNED_PER_PAGE`] events.
pub fn list(
    bus: &EventBus,
    filter: &EventFilter,
    after: u64,
    limit: usize,
) -> Result<EventPage, RuntimeError> {
    let newest = bus.last_sequence();
    let mut events = Vec::new();
    let mut position = after;
    let mut scanned = 0;
    while events.len() < limit && position < newest && scanned < MAX_SCANNED_PER_PAGE {
        let batch = bus
            .history_after(position, CATCH_UP_PAGE)
            .map_err(|oldest| RuntimeError::OutOfRange {
                after: position,
                oldest,
            })?;
        if batch.is_empty() {
            break;
        }
        for event in batch {
            scanned += 1;
            position = event.sequence;
            if filter.matches(&event) {
                events.push(event);
                if events.len() == limit {
                    break;
                }
            }
        }
    }
    Ok(EventPage {
        events,
        next_after: (position < newest).then_some(position),
        last_sequence: newest,
    })
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt as _;
    use proptest::prelude::*;

    use super::*;
    use crate::model::TaskEvent;
    use crate::runtime::bus::EventContext;
    use crate::store::{MemoryStore, Store};

    fn context(execution: &str, node: bool) -> EventContext {
        EventContext {
            task_id: Some(format!("task-{execution}")),
            execution_id: Some(execution.to_owned()),
            workflow_id: None,
            tags: vec!["ar".into()],
            node,
        }
    }

    fn publish(bus: &EventBus, i: u64) -> u64 {
        let event = TaskEvent::new(format!("t{i}"), TaskEventType::Progress);
        bus.publish_task(
            event,
            context(
                if i.is_multiple_of(2) { "even" } else { "odd" },
                i.is_multiple_of(5),
            ),
        )
    }

    /// Why a subscription was refused.
    fn refusal(subscribed: Result<Subscription, RuntimeError>) -> RuntimeError {
        match subscribed {
            Ok(_) => panic!("subscribed"),
            Err(refused) => refused,
        }
    }

    fn options() -> SubscribeOptions {
        SubscribeOptions {
            buffer: 4,
            heartbeat: Duration::from_secs(3600),
            closing: CancellationToken::new(),
        }
    }

    async fn collect(rx: &mut Subscription, until: u64) -> Vec<u64> {
        let mut seen = Vec::new();
        while let Some(item) = rx.next().await {
            if let Ok(StreamItem::Event(event)) = item {
                seen.push(event.sequence);
                if event.sequence >= until {
                    break;
                }
            }
        }
        seen
    }

    #[test]
    fn filters() {
        let bus = EventBus::new(64, None);
        for i in 1..=10 {
            publish(&bus, i);
        }
        let all = bus.history_after(0, 100).unwrap();
        let mut filter = EventFilter {
            include_node_events: true,
            ..EventFilter::default()
        };
        assert_eq!(all.iter().filter(|e| filter.matches(e)).count(), 10);
        filter.include_node_events = false;
        assert_eq!(all.iter().filter(|e| filter.matches(e)).count(), 8);
        filter.execution_ids.insert("even".into());
        assert_eq!(all.iter().filter(|e| filter.matches(e)).count(), 4);
        filter.event_types = vec![TaskEventType::Completed];
        assert_eq!(all.iter().filter(|e| filter.matches(e)).count(), 0);
        let filter = EventFilter {
            min_level: Some(LogLevel::Warning),
            include_node_events: true,
            ..EventFilter::default()
        };
        assert_eq!(all.iter().filter(|e| filter.matches(e)).count(), 0);
        let filter = EventFilter {
            tags: vec!["other".into()],
            include_node_events: true,
            ..EventFilter::default()
        };
        assert_eq!(all.iter().filter(|e| filter.matches(e)).count(), 0);
    }

    #[tokio::test]
    async fn a_resume_point_that_is_gone_is_out_of_range() {
        let bus = EventBus::new(16, None);
        for i in 1..=40 {
            publish(&bus, i);
        }
        let refused = refusal(subscribe(&bus, EventFilter::default(), Some(3), options()));
        assert!(
            matches!(
                refused,
                RuntimeError::OutOfRange {
                    after: 3,
                    oldest: 25
                }
            ),
            "{refused}"
        );
    }

    #[tokio::test]
    async fn a_resume_point_beyond_the_newest_event_is_refused() {
        let bus = EventBus::new(16, None);
        for i in 1..=5 {
            publish(&bus, i);
        }
        let refused = refusal(subscribe(&bus, EventFilter::default(), Some(6), options()));
        assert!(
            matches!(
                refused,
                RuntimeError::SequenceAhead {
                    after: 6,
                    newest: 5
                }
            ),
            "{refused}"
        );
        // The newest itself is a valid resume point: nothing to replay yet.
        assert!(subscribe(&bus, EventFilter::default(), Some(5), options(),).is_ok());
    }

    #[tokio::test]
    async fn draining_ends_an_idle_subscription_with_its_last_sequence() {
        let bus = EventBus::new(16, None);
        for i in 1..=3 {
            publish(&bus, i);
        }
        let closing = CancellationToken::new();
        let mut rx = subscribe(
            &bus,
            EventFilter {
                include_node_events: true,
                ..EventFilter::default()
            },
            Some(1),
            SubscribeOptions {
                closing: closing.clone(),
                ..options()
            },
        )
        .unwrap();
        for expected in [2, 3] {
            match rx.next().await {
                Some(Ok(StreamItem::Event(event))) => assert_eq!(event.sequence, expected),
                other => panic!("{other:?}"),
            }
        }
        closing.cancel();
        match rx.next().await {
            Some(Err(RuntimeError::StreamClosed { last_sequence })) => {
                assert_eq!(last_sequence, 3);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            rx.next().await.is_none(),
            "the stream ends after the status"
        );
        // And no new subscription starts once draining.
        let refused = refusal(subscribe(
            &bus,
            EventFilter::default(),
            None,
            SubscribeOptions {
                closing,
                ..options()
            },
        ));
        assert!(matches!(refused, RuntimeError::Unavailable(_)), "{refused}");
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_caught_up_from_the_store() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let bus = EventBus::new(16, Some(store));
        let filter = EventFilter {
            include_node_events: true,
            ..EventFilter::default()
        };
        let mut slow = subscribe(&bus, filter.clone(), Some(0), options()).unwrap();
        let mut fast = subscribe(&bus, filter, Some(0), options()).unwrap();
        let reader = tokio::spawn(async move { collect(&mut fast, 10_000).await });
        // Far more than the live channel and the window hold, while the slow
        // subscriber reads nothing and the fast one keeps up.
        for i in 1..=10_000 {
            publish(&bus, i);
            if i.is_multiple_of(256) {
                tokio::task::yield_now().await;
            }
        }
        let everything: Vec<u64> = (1..=10_000).collect();
        assert_eq!(reader.await.unwrap(), everything);
        // The slow one, not read meanwhile, held nothing: it lagged behind
        // the live channel and is caught up from the store.
        let seen = collect(&mut slow, 10_000).await;
        assert_eq!(seen, everything);
    }

    #[tokio::test]
    async fn many_subscribers_each_get_every_event_once_in_order() {
        // More than the publisher wakes itself: every stream yields once
        // when a publish wakes it, and still passes each event once.
        let bus = EventBus::new(64, None);
        let filter = EventFilter {
            include_node_events: true,
            ..EventFilter::default()
        };
        let readers: Vec<_> = (0..8)
            .map(|_| {
                let mut subscription = subscribe(&bus, filter.clone(), None, options()).unwrap();
                tokio::spawn(async move { collect(&mut subscription, 50).await })
            })
            .collect();
        for i in 1..=50 {
            publish(&bus, i);
            if i.is_multiple_of(8) {
                tokio::task::yield_now().await;
            }
        }
        for reader in readers {
            assert_eq!(reader.await.unwrap(), (1..=50).collect::<Vec<u64>>());
        }
    }

    #[tokio::test]
    async fn without_history_a_slow_subscriber_ends_with_its_position() {
        let bus = EventBus::new(16, None);
        let mut rx = subscribe(&bus, EventFilter::default(), Some(0), options()).unwrap();
        for i in 1..=10_000 {
            publish(&bus, i);
        }
        let mut last_event = 0;
        loop {
            match rx.next().await {
                Some(Ok(StreamItem::Event(event))) => last_event = event.sequence,
                Some(Ok(StreamItem::Heartbeat { .. })) => {}
                Some(Err(RuntimeError::SubscriberBehind { last_sequence })) => {
                    assert!(last_sequence >= last_event);
                    assert!(last_sequence < 10_000);
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn an_idle_subscription_gets_heartbeats() {
        let bus = EventBus::new(16, None);
        publish(&bus, 1);
        let mut rx = subscribe(
            &bus,
            EventFilter::default(),
            None,
            SubscribeOptions {
                buffer: 4,
                heartbeat: Duration::from_millis(20),
                closing: CancellationToken::new(),
            },
        )
        .unwrap();
        match rx.next().await {
            Some(Ok(StreamItem::Heartbeat { last_sequence })) => assert_eq!(last_sequence, 1),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn an_event_puts_the_next_heartbeat_off_by_a_full_period() {
        let bus = EventBus::new(16, None);
        publish(&bus, 1);
        let heartbeat = Duration::from_millis(60);
        let mut rx = subscribe(
            &bus,
            EventFilter {
                include_node_events: true,
                ..EventFilter::default()
            },
            None,
            SubscribeOptions {
                buffer: 4,
                heartbeat,
                closing: CancellationToken::new(),
            },
        )
        .unwrap();
        tokio::time::sleep(heartbeat / 2).await;
        publish(&bus, 2);
        match rx.next().await {
            Some(Ok(StreamItem::Event(event))) => assert_eq!(event.sequence, 2),
            other => panic!("{other:?}"),
        }
        let event_seen = tokio::time::Instant::now();
        match rx.next().await {
            Some(Ok(StreamItem::Heartbeat { last_sequence })) => assert_eq!(last_sequence, 2),
            other => panic!("{other:?}"),
        }
        // Timers never fire early: the timer armed at subscription (due
        // half a period after the event) was pushed back, not obeyed.
        assert!(event_seen.elapsed() >= heartbeat - Duration::from_millis(5));
    }

    #[test]
    fn listing_pages_with_filters() {
        let bus = EventBus::new(1000, None);
        for i in 1..=100 {
            publish(&bus, i);
        }
        let filter = EventFilter {
            execution_ids: HashSet::from(["odd".to_owned()]),
            include_node_events: true,
            ..EventFilter::default()
        };
        let mut after = 0;
        let mut seen = Vec::new();
        loop {
            let page = list(&bus, &filter, after, 7).unwrap();
            seen.extend(page.events.iter().map(|e| e.sequence));
            match page.next_after {
                Some(next) => after = next,
                None => break,
            }
        }
        assert_eq!(seen, (1..=100).filter(|i| i % 2 == 1).collect::<Vec<_>>());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Resuming from any sequence while others publish concurrently yields
        /// every later event exactly once, in order.
        #[test]
        fn resume_under_concurrent_publishing_is_exact(
            before in 0u64..300,
            resume_frac in 0.0f64..1.0,
            during in 1u64..2000,
            window in 16usize..256,
        ) {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
                let bus = EventBus::new(window, Some(store));
                for i in 1..=before {
                    publish(&bus, i);
                }
                let resume = (before as f64 * resume_frac) as u64;
                let filter = EventFilter { include_node_events: true, ..EventFilter::default() };
                let mut rx = subscribe(&bus, filter, Some(resume), options()).unwrap();
                let publisher = {
                    let bus = bus.clone();
                    tokio::spawn(async move {
                        for i in 1..=during {
                            publish(&bus, before + i);
                            if i.is_multiple_of(64) {
                                tokio::task::yield_now().await;
                            }
                        }
                    })
                };
                let total = before + during;
                let seen = collect(&mut rx, total).await;
                publisher.await.unwrap();
                assert_eq!(seen, ((resume + 1)..=total).collect::<Vec<_>>());
            });
        }
    }
}
