//! Benchmark 3, event fan-out: `SubscribeEvents` streams (1, 100 and 1,000;
//! smoke: 1, 3 and 10) fed by one publisher calling `UpdateTaskProgress`,
//! the runtime (in-memory store) against the tonic broadcast baseline
//! (`baseline_broadcast.rs`) in alternating windows.
//!
//! It owns the fan-out load generator: subscribers that read raw frames (only
//! a sample decodes them, to time publish -> receive), spread 25 streams to
//! an HTTP/2 connection; a closed-loop publisher (4 calls in flight, never
//! more than 16 events ahead of the deliveries) for CPU and throughput, and
//! a steady-rate one for latencies. It also owns the stalled-subscriber
//! and idle-subscriber experiments, and an in-process measurement of the
//! runtime's `EventBus::publish_task` next to a bare tokio broadcast send,
//! each with 1, 100 and 1,000 receivers parked in `recv`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Buf as _, Bytes};
use comfy_reality::model::{TaskEvent, TaskEventType};
use comfy_reality::pb::subscribe_events_response::Item;
use comfy_reality::pb::task_service_client::TaskServiceClient;
use comfy_reality::pb::{
    CreateTaskRequest, SubscribeEventsRequest, SubscribeEventsResponse, TaskType,
    UpdateTaskProgressRequest, event,
};
use comfy_reality::runtime::EventBus;
use comfy_reality::runtime::bus::{DEFAULT_HISTORY, EventContext};
use comfy_reality::store::{MemoryStore, Store};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _};
use prost::Message as _;
use tokio::sync::Notify;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::BroadcastStream;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};

use crate::baseline_broadcast;
use crate::harness::{self, Mode, Paired, Report, StoreKind, fmt_bytes, fmt_rate, fmt_secs};

/// The benchmark's name in the result table.
const BENCH: &str = "3 fanout";
/// Subscription streams per HTTP/2 connection.
const STREAMS_PER_CONNECTION: usize = 25;
/// `UpdateTaskProgress` calls the closed-loop publisher keeps in flight
/// (each on its own task of the runtime).
const LANES: usize = 4;
/// Events the closed-loop publisher may publish ahead of the deliveries.
const OUTSTANDING: u64 = 16;
/// At most this many subscribers of a set decode their frames to time them.
const TIMED_PER_SET: usize = 100;
/// The method the subscribers call.
const SUBSCRIBE_PATH: &str = "/comfyreality.runtime.v1.EventService/SubscribeEvents";
/// First byte of a `SubscribeEventsResponse` that carries an event (field
/// 1, length-delimited); a heartbeat starts with 0x12.
const EVENT_TAG: u8 = 0x0a;
/// A backend that refuses connections, so the runtime runs nothing.
const CLOSED_BACKEND: &str = "http://127.0.0.1:9";
/// Backend probes once an hour: no runtime events during the windows.
const QUIET: &str = "\n[scheduling]\nprobe_interval_seconds = 3600\n";
/// Longest wait for deliveries that must come.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Target: runtime CPU per delivered event over the baseline's.
const CPU_RATIO_TARGET: f64 = 1.25;
/// Target: deliveries per second at the largest fan-out.
const DELIVERY_TARGET: f64 = 1_000_000.0;
/// Target ("flat"): publish cost at the largest fan-out over one subscriber.
const FLAT_TARGET: f64 = 1.25;
/// Target: others' p99 with one stalled subscriber over without.
const STALL_TARGET: f64 = 1.10;
/// Target: memory per idle subscription.
const IDLE_TARGET: f64 = 32.0 * 1024.0;

/// The sizes of a run.
struct Sizes {
    /// Subscriber counts, smallest first.
    subscribers: [usize; 3],
    /// How long a closed-loop window publishes.
    window: Duration,
    /// Calls of a steady-rate window.
    steady_calls: usize,
    /// Calls per second of a steady-rate window.
    steady_rate: f64,
    /// Subscribers that keep reading in the stalled-subscriber experiment.
    stall_subscribers: usize,
    /// Events published (closed loop) before a stall window is timed, so
    /// that the stalled stream's buffers are full.
    stall_warmup: u64,
    /// Calls of a timed stall window (p99 needs more samples than p50).
    stall_calls: usize,
    /// Calls per second of a timed stall window.
    stall_rate: f64,
    /// Idle subscriptions opened to weigh one.
    idle: usize,
    /// Pause before reading memory.
    settle: Duration,
    /// Publishes timed per in-process measurement.
    bus_publishes: usize,
}

impl Sizes {
    fn of(mode: Mode) -> Self {
        Self {
            subscribers: mode.pick([1, 3, 10], [1, 100, 1000]),
            window: mode.pick(Duration::from_millis(100), Duration::from_secs(2)),
            steady_calls: mode.pick(10, 100),
            steady_rate: mode.pick(200.0, 50.0),
            stall_subscribers: mode.pick(3, 100),
            stall_warmup: mode.pick(20, 1000),
            stall_calls: mode.pick(10, 400),
            stall_rate: mode.pick(200.0, 100.0),
            idle: mode.pick(10, 1000),
            settle: mode.pick(Duration::from_millis(50), Duration::from_millis(500)),
            bus_publishes: mode.pick(30, 1000),
        }
    }
}

/// Microseconds since the first call (the clock publishers stamp events with).
fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

// ---------------------------------------------------------------------------------------------
// Subscribers
// ---------------------------------------------------------------------------------------------

/// One frame as the raw decoder yields it.
enum Frame {
    /// An event, with its bytes when the subscriber times it.
    Event(Option<Bytes>),
    /// A heartbeat (or anything else).
    Other,
}

/// Encodes the subscribe request with prost; yields response frames without
/// decoding them (only timed subscribers keep the bytes).
#[derive(Debug, Clone, Copy)]
struct RawCodec {
    /// Whether frames keep their bytes.
    timed: bool,
}

/// The request half of [`RawCodec`].
#[derive(Debug, Clone, Copy)]
struct RequestEncoder;

impl Encoder for RequestEncoder {
    type Item = SubscribeEventsRequest;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

impl Decoder for RawCodec {
    type Item = Frame;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Frame>, Status> {
        let len = src.remaining();
        let is_event = src.chunk().first() == Some(&EVENT_TAG);
        if is_event && self.timed {
            return Ok(Some(Frame::Event(Some(src.copy_to_bytes(len)))));
        }
        src.advance(len);
        Ok(Some(if is_event {
            Frame::Event(None)
        } else {
            Frame::Other
        }))
    }
}

impl Codec for RawCodec {
    type Encode = SubscribeEventsRequest;
    type Decode = Frame;
    type Encoder = RequestEncoder;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RequestEncoder {
        RequestEncoder
    }

    fn decoder(&mut self) -> RawCodec {
        *self
    }
}

/// What one set of subscribers received, shared with their tasks.
struct Tally {
    /// Streams whose response headers arrived.
    opened: AtomicUsize,
    /// Streams that ended or failed.
    ended: AtomicUsize,
    /// Events received, all subscribers together.
    events: AtomicU64,
    /// The publisher wants a wake-up when `events` reaches this (`u64::MAX`: none).
    wake_at: AtomicU64,
    /// Wakes the publisher.
    wake: Notify,
    /// Timed subscribers time events stamped at or after this (`u64::MAX`: none).
    timed_from: AtomicU64,
    /// Publish -> receive latencies in seconds.
    latencies: Mutex<Vec<f64>>,
}

impl Tally {
    fn new() -> Self {
        Self {
            opened: AtomicUsize::new(0),
            ended: AtomicUsize::new(0),
            events: AtomicU64::new(0),
            wake_at: AtomicU64::new(u64::MAX),
            wake: Notify::new(),
            timed_from: AtomicU64::new(u64::MAX),
            latencies: Mutex::new(Vec::new()),
        }
    }

    fn events(&self) -> u64 {
        self.events.load(Ordering::SeqCst)
    }

    /// Counts one event; wakes the publisher when it waits for this count.
    fn count(&self) {
        let now = self.events.fetch_add(1, Ordering::SeqCst) + 1;
        let want = self.wake_at.load(Ordering::SeqCst);
        if now >= want
            && self
                .wake_at
                .compare_exchange(want, u64::MAX, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            self.wake.notify_one();
        }
    }

    /// Waits until `events` reaches `target`; false after `timeout`.
    async fn wait_for(&self, target: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.events() >= target {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.wake_at.store(target, Ordering::SeqCst);
            if self.events() >= target {
                self.wake_at.store(u64::MAX, Ordering::SeqCst);
                return true;
            }
            let _ = tokio::time::timeout(Duration::from_millis(5), self.wake.notified()).await;
        }
    }

    /// Times one event from its bytes: the message carries its send time.
    fn time(&self, bytes: &Bytes) {
        let received = now_us();
        let Ok(response) = SubscribeEventsResponse::decode(bytes.clone()) else {
            return;
        };
        let Some(Item::Event(event)) = response.item else {
            return;
        };
        let Some(event::Payload::TaskEvent(task_event)) = event.payload else {
            return;
        };
        let Some(sent) = task_event
            .message
            .as_deref()
            .and_then(|m| m.split(' ').next())
            .and_then(|us| us.parse::<u64>().ok())
        else {
            return;
        };
        if sent >= self.timed_from.load(Ordering::Relaxed) {
            let latency = received.saturating_sub(sent) as f64 / 1e6;
            self.latencies
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(latency);
        }
    }

    /// Starts timing events stamped from now on.
    fn start_timing(&self) {
        self.latencies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.timed_from.store(now_us(), Ordering::SeqCst);
    }

    /// Stops timing; returns the latencies collected.
    fn stop_timing(&self) -> Vec<f64> {
        self.timed_from.store(u64::MAX, Ordering::SeqCst);
        std::mem::take(
            &mut *self
                .latencies
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }
}

/// A subscription to everything from now on.
fn subscribe_request() -> SubscribeEventsRequest {
    SubscribeEventsRequest {
        include_node_events: true,
        ..SubscribeEventsRequest::default()
    }
}

/// Opens one subscription on `channel`.
async fn open_stream(channel: Channel, timed: bool) -> Result<tonic::Streaming<Frame>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let response = grpc
        .server_streaming(
            tonic::Request::new(subscribe_request()),
            http::uri::PathAndQuery::from_static(SUBSCRIBE_PATH),
            RawCodec { timed },
        )
        .await?;
    Ok(response.into_inner())
}

/// One subscriber: counts (and, when `timed`, times) events until the stream ends.
async fn subscriber(channel: Channel, timed: bool, tally: Arc<Tally>) {
    let mut stream = match open_stream(channel, timed).await {
        Ok(stream) => stream,
        Err(status) => {
            eprintln!("fanout: subscription refused: {status}");
            tally.ended.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    tally.opened.fetch_add(1, Ordering::SeqCst);
    while let Ok(Some(frame)) = stream.message().await {
        if let Frame::Event(bytes) = frame {
            if let Some(bytes) = bytes {
                tally.time(&bytes);
            }
            tally.count();
        }
    }
    tally.ended.fetch_add(1, Ordering::SeqCst);
}

/// A new HTTP/2 connection to `endpoint`.
async fn connect(endpoint: &str) -> Channel {
    Endpoint::from_shared(endpoint.to_owned())
        .expect("endpoint")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {endpoint}: {e}"))
}

/// One server's subscribers; dropping them closes their streams.
struct Subscribers {
    /// What they received.
    tally: Arc<Tally>,
    /// Their tasks.
    tasks: Vec<JoinHandle<()>>,
    /// How many there are.
    count: usize,
}

impl Drop for Subscribers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Opens `n` subscriptions to `endpoint`, [`STREAMS_PER_CONNECTION`] to a
/// connection, `timed` of them (spread evenly) timing events; returns when
/// every one has its response headers.
async fn open_subscribers(endpoint: &str, n: usize, timed: usize) -> Subscribers {
    let tally = Arc::new(Tally::new());
    let connections = n.div_ceil(STREAMS_PER_CONNECTION).max(1);
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(connect(endpoint).await);
    }
    let every = n.checked_div(timed.min(n)).unwrap_or(usize::MAX).max(1);
    let tasks = (0..n)
        .map(|i| {
            let timed = timed > 0 && i % every == 0;
            tokio::spawn(subscriber(
                channels[i % connections].clone(),
                timed,
                Arc::clone(&tally),
            ))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while tally.opened.load(Ordering::SeqCst) < n {
        let ended = tally.ended.load(Ordering::SeqCst);
        assert!(
            ended == 0 && Instant::now() < deadline,
            "only {} of {n} subscriptions to {endpoint} opened ({ended} failed)",
            tally.opened.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Subscribers {
        tally,
        tasks,
        count: n,
    }
}

/// A subscription that is never read, on its own connection with the
/// smallest HTTP/2 windows (64 KiB), so the server soon cannot send to it.
struct Stalled {
    /// Its connection.
    _channel: Channel,
    /// The stream, not polled until [`Stalled::buffered`].
    stream: tonic::Streaming<Frame>,
}

impl Stalled {
    /// Reads, without waiting, the events the client side already holds:
    /// what the server sent before flow control stopped it.
    fn buffered(&mut self) -> u64 {
        let mut count = 0;
        while let Some(Ok(Some(frame))) = self.stream.message().now_or_never() {
            if matches!(frame, Frame::Event(_)) {
                count += 1;
            }
        }
        count
    }
}

async fn open_stalled(endpoint: &str) -> Stalled {
    let channel = Endpoint::from_shared(endpoint.to_owned())
        .expect("endpoint")
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {endpoint}: {e}"));
    let stream = open_stream(channel.clone(), false)
        .await
        .unwrap_or_else(|status| panic!("stalled subscription refused: {status}"));
    Stalled {
        _channel: channel,
        stream,
    }
}

// ---------------------------------------------------------------------------------------------
// Publisher
// ---------------------------------------------------------------------------------------------

/// A server under test, as the load generator sees it.
struct Server {
    /// `runtime` or `baseline`.
    label: &'static str,
    /// Its process id, for CPU and memory.
    pid: u32,
    /// `http://ADDR`.
    endpoint: String,
    /// The publisher's client, on its own connection.
    client: TaskServiceClient<Channel>,
    /// The tasks the publisher reports progress on, one per lane.
    tasks: Vec<String>,
    /// The client whose calls the steady windows time (see [`Timed`]); set
    /// outside the load generator's runtime.
    timed: Option<Timed>,
}

/// A client of its own for the timed `UpdateTaskProgress` calls: its
/// connection and its calls run on a thread of their own, not on the load
/// generator's one thread with the subscribers' streams. There, the reply to
/// a timed call waited behind the deliveries of the event it published (the
/// current-thread scheduler runs up to 61 ready tasks before it polls the
/// future it blocks on again): a delay of the load generator's, growing with
/// the subscribers, that the RPC's latency does not have.
struct Timed {
    /// One worker thread: it drives the client's connection and runs its calls.
    rt: tokio::runtime::Runtime,
    /// The client, connected from `rt`.
    client: TaskServiceClient<Channel>,
}

impl Timed {
    /// Connects to `endpoint` from a runtime of its own. Not from inside
    /// another runtime.
    fn connect(endpoint: &str) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let client = rt.block_on(async { TaskServiceClient::new(connect(endpoint).await) });
        Self { rt, client }
    }

    /// [`publish`] on this client's thread.
    async fn publish(&self, id: String, counter: u64) -> Result<Duration, Status> {
        self.rt
            .spawn(publish(self.client.clone(), id, counter))
            .await
            .unwrap_or_else(|e| Err(Status::internal(format!("timed call failed: {e}"))))
    }
}

impl Server {
    /// Connects the publisher; on the runtime, creates its client tasks
    /// (PREPROCESSING, so their events are not node events).
    async fn connect(label: &'static str, pid: u32, endpoint: String, create: bool) -> Self {
        let mut client = TaskServiceClient::new(connect(&endpoint).await);
        let mut tasks = Vec::with_capacity(LANES);
        for lane in 0..LANES {
            let id = if create {
                let response = client
                    .create_task(CreateTaskRequest {
                        name: format!("fanout-{lane}"),
                        r#type: Some(TaskType::Preprocessing.into()),
                        ..CreateTaskRequest::default()
                    })
                    .await
                    .unwrap_or_else(|status| panic!("CreateTask on {label}: {status}"));
                response.into_inner().task.expect("task").id
            } else {
                uuid::Uuid::new_v4().to_string()
            };
            tasks.push(id);
        }
        Self {
            label,
            pid,
            endpoint,
            client,
            tasks,
            timed: None,
        }
    }
}

/// One `UpdateTaskProgress` whose message carries its send time (and a
/// counter, so that it always changes); returns its round-trip time.
async fn publish(
    mut client: TaskServiceClient<Channel>,
    id: String,
    counter: u64,
) -> Result<Duration, Status> {
    let started = Instant::now();
    client
        .update_task_progress(UpdateTaskProgressRequest {
            id,
            progress_message: Some(format!("{} {counter}", now_us())),
            ..UpdateTaskProgressRequest::default()
        })
        .await?;
    Ok(started.elapsed())
}

/// When a closed-loop run stops publishing.
#[derive(Debug, Clone, Copy)]
enum Until {
    /// After this long.
    Elapsed(Duration),
    /// After this many events.
    Published(u64),
}

/// What a closed-loop run measured.
struct Burst {
    /// Events the subscribers received.
    deliveries: u64,
    /// Events published.
    published: u64,
    /// Wall-clock seconds, until the last delivery.
    wall: f64,
    /// Server CPU seconds.
    server_cpu: f64,
    /// This process's CPU seconds (the load generator).
    client_cpu: f64,
    /// Deliveries that never came.
    missing: u64,
}

/// Publishes as fast as the subscribers take it: [`LANES`] calls in flight,
/// never more than [`OUTSTANDING`] events ahead of the deliveries; then
/// waits for the last deliveries.
async fn burst(server: &Server, subs: &Subscribers, until: Until) -> Burst {
    let n = subs.count as u64;
    let tally = &subs.tally;
    let base = tally.events();
    let cpu0 = harness::cpu_seconds(server.pid);
    let own0 = harness::own_cpu_seconds();
    let t0 = Instant::now();
    let mut inflight = FuturesUnordered::new();
    let mut sent = 0u64;
    let mut ok = 0u64;
    let mut done =
        |result: Option<Result<Result<Duration, Status>, tokio::task::JoinError>>| match result {
            Some(Ok(Ok(_))) => ok += 1,
            Some(Ok(Err(status))) => eprintln!("fanout: UpdateTaskProgress failed: {status}"),
            Some(Err(e)) => eprintln!("fanout: publisher task failed: {e}"),
            None => {}
        };
    loop {
        let more = match until {
            Until::Elapsed(limit) => t0.elapsed() < limit,
            Until::Published(count) => sent < count,
        };
        if !more {
            break;
        }
        if inflight.len() >= LANES {
            done(inflight.next().await);
            continue;
        }
        let need = base + (sent + 1).saturating_sub(OUTSTANDING) * n;
        if !tally.wait_for(need, DRAIN_TIMEOUT).await {
            eprintln!("fanout: {} subscribers stopped receiving", server.label);
            break;
        }
        let id = server.tasks[sent as usize % server.tasks.len()].clone();
        inflight.push(tokio::spawn(publish(server.client.clone(), id, sent)));
        sent += 1;
    }
    while let Some(result) = inflight.next().await {
        done(Some(result));
    }
    tally.wait_for(base + ok * n, DRAIN_TIMEOUT).await;
    let wall = t0.elapsed().as_secs_f64();
    let deliveries = tally.events() - base;
    Burst {
        deliveries,
        published: ok,
        wall,
        server_cpu: harness::cpu_seconds(server.pid) - cpu0,
        client_cpu: harness::own_cpu_seconds() - own0,
        missing: (ok * n).saturating_sub(deliveries),
    }
}

/// What a steady-rate run measured.
struct Steady {
    /// Round-trip times of the publisher's calls, in seconds.
    rtts: Vec<f64>,
    /// Publish -> receive latencies of the timed subscribers, in seconds.
    latencies: Vec<f64>,
}

/// Publishes `calls` events one at a time at `rate` per second, timing each
/// call and each timed delivery; then waits for the last deliveries.
async fn steady(server: &Server, subs: &Subscribers, calls: usize, rate: f64) -> Steady {
    let n = subs.count as u64;
    let tally = &subs.tally;
    let base = tally.events();
    tally.start_timing();
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut next = tokio::time::Instant::now();
    let mut rtts = Vec::with_capacity(calls);
    for i in 0..calls {
        next += period;
        tokio::time::sleep_until(next).await;
        let id = server.tasks[i % server.tasks.len()].clone();
        let call = match &server.timed {
            Some(timed) => timed.publish(id, i as u64).await,
            None => publish(server.client.clone(), id, i as u64).await,
        };
        match call {
            Ok(rtt) => rtts.push(rtt.as_secs_f64()),
            Err(status) => eprintln!("fanout: UpdateTaskProgress failed: {status}"),
        }
    }
    let published = rtts.len() as u64;
    tally.wait_for(base + published * n, DRAIN_TIMEOUT).await;
    Steady {
        rtts,
        latencies: tally.stop_timing(),
    }
}

/// One fan-out window: a closed-loop run, then a steady-rate one.
async fn window(server: &Server, subs: &Subscribers, sizes: &Sizes) -> Vec<(&'static str, f64)> {
    let burst = burst(server, subs, Until::Elapsed(sizes.window)).await;
    let steady = steady(server, subs, sizes.steady_calls, sizes.steady_rate).await;
    let deliveries = burst.deliveries.max(1) as f64;
    println!(
        "    {:<8} N={:<5} {} deliveries in {:.2} s ({}), {} server CPU, {} client CPU{}",
        server.label,
        subs.count,
        burst.deliveries,
        burst.wall,
        fmt_rate(burst.deliveries as f64 / burst.wall, "deliveries"),
        fmt_secs(burst.server_cpu),
        fmt_secs(burst.client_cpu),
        if burst.missing > 0 {
            format!(", {} MISSING", burst.missing)
        } else {
            String::new()
        }
    );
    vec![
        ("cpu_per_delivery", burst.server_cpu / deliveries),
        ("deliveries_per_s", burst.deliveries as f64 / burst.wall),
        (
            "cpu_per_publish",
            burst.server_cpu / burst.published.max(1) as f64,
        ),
        ("client_cpu_per_delivery", burst.client_cpu / deliveries),
        ("rtt_p50", harness::percentile(&steady.rtts, 50.0)),
        ("latency_p50", harness::percentile(&steady.latencies, 50.0)),
        ("latency_p99", harness::percentile(&steady.latencies, 99.0)),
    ]
}

/// One stall window on two identical servers at once, so that both see the
/// same noise of this shared machine: `stalled` gets one more subscriber
/// that never reads, `clean` does not. Both get a closed-loop warm-up
/// (which fills the stalled stream's buffers), then the same steady-rate
/// run side by side. Returns the others' p99 on (`stalled`, `clean`).
async fn stall_window(
    stalled: (&Server, &Subscribers),
    clean: (&Server, &Subscribers),
    sizes: &Sizes,
) -> (f64, f64) {
    let mut stuck = open_stalled(&stalled.0.endpoint).await;
    let warmup = Until::Published(sizes.stall_warmup);
    let (warm, _) = tokio::join!(
        burst(stalled.0, stalled.1, warmup),
        burst(clean.0, clean.1, warmup)
    );
    let (with, without) = tokio::join!(
        steady(stalled.0, stalled.1, sizes.stall_calls, sizes.stall_rate),
        steady(clean.0, clean.1, sizes.stall_calls, sizes.stall_rate)
    );
    let held = stuck.buffered();
    drop(stuck);
    let p99_with = harness::percentile(&with.latencies, 99.0);
    let p99_without = harness::percentile(&without.latencies, 99.0);
    println!(
        "    {:<8} p99 {} with a stalled subscriber (it got {held} of {} events), {} without, over {} and {} deliveries",
        stalled.0.label,
        fmt_secs(p99_with),
        warm.published + with.rtts.len() as u64,
        fmt_secs(p99_without),
        with.latencies.len(),
        without.latencies.len()
    );
    (p99_with, p99_without)
}

// ---------------------------------------------------------------------------------------------
// In-process publish cost
// ---------------------------------------------------------------------------------------------

/// Publishes `publishes` times (after a warm-up) on a one-thread runtime
/// where `n` receiver tasks are parked in `recv`, letting them all take
/// each event before the next; returns the publishing thread's CPU seconds
/// per publish. `publish(i)` publishes once and returns the CPU it took.
async fn parked_publishes(
    n: usize,
    publishes: usize,
    received: &AtomicU64,
    mut publish: impl FnMut(usize) -> f64,
) -> f64 {
    // Let every receiver reach its first `recv`.
    tokio::task::yield_now().await;
    let warmup = publishes / 10 + 1;
    let mut spent = 0.0;
    for i in 0..warmup + publishes {
        let cpu = publish(i);
        if i >= warmup {
            spent += cpu;
        }
        let target = ((i + 1) * n) as u64;
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while received.load(Ordering::Relaxed) < target && Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
    }
    spent / publishes as f64
}

/// CPU per `EventBus::publish_task` (in-memory store, default window) with
/// `n` live receivers parked in `recv`, as the runtime's subscriptions are.
fn bus_publish_cpu(n: usize, publishes: usize) -> f64 {
    let rt = harness::client_runtime();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let bus = EventBus::new(DEFAULT_HISTORY, Some(store));
    let received = Arc::new(AtomicU64::new(0));
    for _ in 0..n {
        let mut live = bus.subscribe();
        let received = Arc::clone(&received);
        rt.spawn(async move {
            loop {
                match live.recv().await {
                    Ok(_) => {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }
    let task_id = uuid::Uuid::new_v4().to_string();
    let context = EventContext {
        task_id: Some(task_id.clone()),
        ..EventContext::default()
    };
    let per_publish = rt.block_on(parked_publishes(n, publishes, &received, |i| {
        let mut event = TaskEvent::new(task_id.clone(), TaskEventType::Progress);
        event.source = Some("runtime".into());
        event.message = Some(format!("{} {i}", now_us()));
        event
            .data
            .insert("progress".into(), serde_json::Value::from(0.0));
        let context = context.clone();
        let before = harness::thread_cpu_seconds();
        bus.publish_task(event, context);
        harness::thread_cpu_seconds() - before
    }));
    drop(bus);
    rt.shutdown_timeout(Duration::from_secs(1));
    per_publish
}

/// CPU per `broadcast::Sender::send` of the baseline's item with `n`
/// `BroadcastStream`s parked, as the baseline's subscriptions are.
fn broadcast_send_cpu(n: usize, publishes: usize) -> f64 {
    let rt = harness::client_runtime();
    let (sender, _) = broadcast::channel::<SubscribeEventsResponse>(4096);
    let received = Arc::new(AtomicU64::new(0));
    for _ in 0..n {
        let mut stream = BroadcastStream::new(sender.subscribe());
        let received = Arc::clone(&received);
        rt.spawn(async move {
            while let Some(item) = stream.next().await {
                if item.is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let task_id = uuid::Uuid::new_v4().to_string();
    let per_publish = rt.block_on(parked_publishes(n, publishes, &received, |i| {
        let item = baseline_broadcast::progress_event(
            i as u64 + 1,
            task_id.clone(),
            Some(format!("{} {i}", now_us())),
            0.0,
        );
        let before = harness::thread_cpu_seconds();
        let _ = sender.send(item);
        harness::thread_cpu_seconds() - before
    }));
    drop(sender);
    rt.shutdown_timeout(Duration::from_secs(1));
    per_publish
}

/// The in-process publish cost rows.
fn in_process(mode: Mode, sizes: &Sizes, report: &mut Report) {
    println!("  in-process publish cost, receivers parked in recv");
    let counts = sizes.subscribers;
    let mut bus = [Vec::new(), Vec::new(), Vec::new()];
    let mut send = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..mode.pairs() {
        for (i, &n) in counts.iter().enumerate() {
            bus[i].push(bus_publish_cpu(n, sizes.bus_publishes));
            send[i].push(broadcast_send_cpu(n, sizes.bus_publishes));
        }
    }
    // Pair by pair: the largest fan-out over a single receiver.
    let flat = |values: &[Vec<f64>; 3]| {
        let mut paired = Paired::default();
        for (one, many) in values[0].iter().zip(&values[2]) {
            paired.push(*one, *many);
        }
        paired.ratio()
    };
    let medians = |values: &[Vec<f64>; 3]| {
        values
            .iter()
            .map(|v| fmt_secs(harness::median(v)))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let counts_text = format!("{} / {} / {}", counts[0], counts[1], counts[2]);
    let bus_ratio = flat(&bus);
    report.add(
        BENCH,
        &format!("EventBus::publish_task thread CPU, {counts_text} receivers (in-process)"),
        format!("{} ({bus_ratio:.2}x)", medians(&bus)),
        &format!(
            "flat: <= {FLAT_TARGET:.2}x at {} vs {}",
            counts[2], counts[0]
        ),
        Some(bus_ratio <= FLAT_TARGET),
    );
    let send_ratio = flat(&send);
    report.add(
        BENCH,
        &format!("tokio broadcast send thread CPU, {counts_text} receivers (in-process)"),
        format!("{} ({send_ratio:.2}x)", medians(&send)),
        "informative: the baseline's publish",
        None,
    );
}

// ---------------------------------------------------------------------------------------------
// The benchmark
// ---------------------------------------------------------------------------------------------

/// Server memory per idle subscription: RSS after opening `k` idle ones
/// (`k / 25` connections) minus before, over `k` (one subscription is
/// opened first, so one-time costs are not counted).
async fn idle_memory(server: &Server, k: usize, settle: Duration) -> f64 {
    let warm = open_subscribers(&server.endpoint, 1, 0).await;
    tokio::time::sleep(settle).await;
    let before = harness::rss_bytes(server.pid);
    let idle = open_subscribers(&server.endpoint, k, 0).await;
    tokio::time::sleep(settle).await;
    let after = harness::rss_bytes(server.pid);
    drop(idle);
    drop(warm);
    tokio::time::sleep(settle).await;
    (after as f64 - before as f64) / k as f64
}

/// Runs the benchmark.
pub fn run(mode: Mode, report: &mut Report) {
    let sizes = Sizes::of(mode);
    now_us();
    in_process(mode, &sizes, report);

    let rt = harness::client_runtime();
    let baseline_proc = harness::start_baseline("broadcast");
    let runtime_proc = harness::start_runtime(StoreKind::Memory, &[CLOSED_BACKEND], QUIET);
    let (mut a, mut b) = rt.block_on(async {
        let a = Server::connect(
            "baseline",
            baseline_proc.proc.pid(),
            baseline_proc.endpoint(),
            false,
        )
        .await;
        let b = Server::connect(
            "runtime",
            runtime_proc.proc.pid(),
            runtime_proc.endpoint(),
            true,
        )
        .await;
        (a, b)
    });

    // The steady windows time their calls from a client of their own (see `Timed`).
    a.timed = Some(Timed::connect(&a.endpoint));
    b.timed = Some(Timed::connect(&b.endpoint));

    // Idle memory first, on fresh processes (freed memory is not returned).
    println!("  idle subscriptions: {}", sizes.idle);
    let (idle_a, idle_b) = rt.block_on(async {
        let idle_a = idle_memory(&a, sizes.idle, sizes.settle).await;
        let idle_b = idle_memory(&b, sizes.idle, sizes.settle).await;
        (idle_a, idle_b)
    });
    report.add(
        BENCH,
        &format!(
            "server memory per idle subscriber (runtime, {})",
            sizes.idle
        ),
        fmt_bytes(idle_b),
        "< 32 KiB",
        Some(idle_b < IDLE_TARGET),
    );
    report.add(
        BENCH,
        &format!(
            "server memory per idle subscriber (baseline, {})",
            sizes.idle
        ),
        fmt_bytes(idle_a),
        "informative",
        None,
    );

    let mut rtt_b = Vec::new();
    let mut rtt_a = Vec::new();
    for &n in &sizes.subscribers {
        println!("  {n} subscriber(s)");
        let timed = TIMED_PER_SET.min(n);
        let (subs_a, subs_b) = rt.block_on(async {
            let subs_a = open_subscribers(&a.endpoint, n, timed).await;
            let subs_b = open_subscribers(&b.endpoint, n, timed).await;
            // Warm-up, not recorded.
            burst(&a, &subs_a, Until::Elapsed(sizes.window / 4)).await;
            burst(&b, &subs_b, Until::Elapsed(sizes.window / 4)).await;
            (subs_a, subs_b)
        });
        let figures = harness::alternate(
            mode.pairs(),
            || rt.block_on(window(&a, &subs_a, &sizes)),
            || rt.block_on(window(&b, &subs_b, &sizes)),
        );
        let get = |name: &str| figures.get(name).cloned().unwrap_or_default();
        let cpu = get("cpu_per_delivery");
        report.add(
            BENCH,
            &format!("server CPU per delivered event, {n} subscriber(s)"),
            format!(
                "{} vs {} baseline ({:.2}x)",
                fmt_secs(cpu.b_median()),
                fmt_secs(cpu.a_median()),
                cpu.ratio()
            ),
            &format!("<= {CPU_RATIO_TARGET:.2}x baseline"),
            Some(cpu.ratio() <= CPU_RATIO_TARGET),
        );
        let rate = get("deliveries_per_s");
        if n == sizes.subscribers[2] {
            report.add(
                BENCH,
                &format!("deliveries/s, {n} subscribers (closed loop)"),
                format!(
                    "{} (baseline {})",
                    fmt_rate(rate.b_median(), "deliveries"),
                    fmt_rate(rate.a_median(), "deliveries")
                ),
                ">= 1,000,000/s",
                Some(rate.b_median() >= DELIVERY_TARGET),
            );
        } else {
            report.add(
                BENCH,
                &format!("deliveries/s, {n} subscriber(s) (closed loop)"),
                format!(
                    "{} (baseline {})",
                    fmt_rate(rate.b_median(), "deliveries"),
                    fmt_rate(rate.a_median(), "deliveries")
                ),
                "informative",
                None,
            );
        }
        if n == sizes.subscribers[2] {
            // What the server could deliver with every core to itself and a
            // load generator that costs nothing: the ceiling, free of noise.
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            report.add(
                BENCH,
                &format!("deliveries/s ceiling, {cores} cores / CPU per delivery, {n} subscribers"),
                format!(
                    "{} (baseline {})",
                    fmt_rate(cores as f64 / cpu.b_median(), "deliveries"),
                    fmt_rate(cores as f64 / cpu.a_median(), "deliveries")
                ),
                "informative",
                None,
            );
        }
        let per_publish = get("cpu_per_publish");
        let client = get("client_cpu_per_delivery");
        report.add(
            BENCH,
            &format!("server CPU per published event, {n} subscriber(s) (closed loop)"),
            format!(
                "{} vs {} baseline; load generator {} per delivery",
                fmt_secs(per_publish.b_median()),
                fmt_secs(per_publish.a_median()),
                fmt_secs(client.b_median()),
            ),
            "informative",
            None,
        );
        let p50 = get("latency_p50");
        let p99 = get("latency_p99");
        report.add(
            BENCH,
            &format!(
                "publish -> receive p50 / p99, {n} subscriber(s), {} events/s",
                sizes.steady_rate
            ),
            format!(
                "{} / {} vs {} / {} baseline",
                fmt_secs(p50.b_median()),
                fmt_secs(p99.b_median()),
                fmt_secs(p50.a_median()),
                fmt_secs(p99.a_median())
            ),
            "informative",
            None,
        );
        let rtt = get("rtt_p50");
        rtt_b.push(rtt.b_median());
        rtt_a.push(rtt.a_median());
        drop(subs_a);
        drop(subs_b);
        // Let the aborted streams close before the next size.
        rt.block_on(async { tokio::time::sleep(sizes.settle).await });
    }
    let counts = sizes.subscribers;
    let flat_b = rtt_b[2] / rtt_b[0].max(f64::MIN_POSITIVE);
    let flat_a = rtt_a[2] / rtt_a[0].max(f64::MIN_POSITIVE);
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| fmt_secs(*x))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    report.add(
        BENCH,
        &format!(
            "UpdateTaskProgress p50 (runtime), {} / {} / {} subscribers, {} calls/s",
            counts[0], counts[1], counts[2], sizes.steady_rate
        ),
        format!("{} ({flat_b:.2}x)", list(&rtt_b)),
        &format!(
            "flat: <= {FLAT_TARGET:.2}x at {} vs {}",
            counts[2], counts[0]
        ),
        Some(flat_b <= FLAT_TARGET),
    );
    report.add(
        BENCH,
        &format!(
            "UpdateTaskProgress p50 (baseline), {} / {} / {} subscribers",
            counts[0], counts[1], counts[2]
        ),
        format!("{} ({flat_a:.2}x)", list(&rtt_a)),
        "informative",
        None,
    );

    // One stalled subscriber: two servers of a kind side by side, the
    // stalled subscriber on one then on the other, pair after pair.
    let n = sizes.stall_subscribers;
    println!("  {n} subscribers on each of two twins, one more stalled on either");
    let twin_baseline = harness::start_baseline("broadcast");
    let twin_runtime = harness::start_runtime(StoreKind::Memory, &[CLOSED_BACKEND], QUIET);
    let (c, d) = rt.block_on(async {
        let c = Server::connect(
            "baseline",
            twin_baseline.proc.pid(),
            twin_baseline.endpoint(),
            false,
        )
        .await;
        let d = Server::connect(
            "runtime",
            twin_runtime.proc.pid(),
            twin_runtime.endpoint(),
            true,
        )
        .await;
        (c, d)
    });
    for (first, second, judged) in [(&b, &d, true), (&a, &c, false)] {
        let (subs_1, subs_2) = rt.block_on(async {
            (
                open_subscribers(&first.endpoint, n, n).await,
                open_subscribers(&second.endpoint, n, n).await,
            )
        });
        let mut p99 = Paired::default();
        for _ in 0..mode.pairs() {
            let (with, without) =
                rt.block_on(stall_window((first, &subs_1), (second, &subs_2), &sizes));
            p99.push(without, with);
            let (with, without) =
                rt.block_on(stall_window((second, &subs_2), (first, &subs_1), &sizes));
            p99.push(without, with);
        }
        report.add(
            BENCH,
            &format!(
                "others' publish -> receive p99 with one stalled subscriber ({}, {n} others, {} events/s)",
                first.label, sizes.stall_rate
            ),
            format!(
                "{} vs {} without ({:.2}x)",
                fmt_secs(p99.b_median()),
                fmt_secs(p99.a_median()),
                p99.ratio()
            ),
            if judged { "< 1.10x" } else { "informative" },
            judged.then(|| p99.ratio() < STALL_TARGET),
        );
        drop((subs_1, subs_2));
        rt.block_on(async { tokio::time::sleep(sizes.settle).await });
    }
    // Closing the client runtime closes every connection, so the servers
    // stop at once rather than wait out their drain.
    drop((a, b, c, d));
    drop(rt);
    for proc in [
        runtime_proc.proc,
        baseline_proc.proc,
        twin_runtime.proc,
        twin_baseline.proc,
    ] {
        proc.stop();
    }
}
