//! Prometheus metrics: every metric name (the runtime's and the gRPC
//! server's), their descriptions and histogram buckets, the recorder, and a
//! small typed API the runtime calls.
//!
//! Labels are low-cardinality only: a task type, a status, a priority, a node
//! class, a backend name, an error class. **Never a task, prompt, execution,
//! workflow or request id**: each distinct label set is a time series kept
//! for the life of the process, so an id label grows memory without bound.
//!
//! The recorder is process-global and installed only by the CLI's `serve`
//! ([`install_recorder`]); every function here is cheap, infallible, and a
//! no-op until a recorder is installed, so library users and tests that call
//! `comfy_reality::run` many times in one process pay nothing.

use std::sync::{OnceLock, PoisonError, RwLock};

use ::metrics::{
    Counter, Gauge, Histogram, Recorder, Unit, counter, describe_counter, describe_gauge,
    describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use crate::pb::API_VERSION;

/// Counter `{type}`: tasks accepted by the runtime.
pub const TASKS_SUBMITTED_TOTAL: &str = "comfy_reality_tasks_submitted_total";
/// Counter `{type,status}`: tasks that reached a terminal state.
pub const TASKS_FINISHED_TOTAL: &str = "comfy_reality_tasks_finished_total";
/// Histogram `{type,status}`: a finished task's run time, in seconds.
pub const TASK_DURATION_SECONDS: &str = "comfy_reality_task_duration_seconds";
/// Histogram: time from submission to the start of execution, in seconds.
pub const QUEUE_WAIT_SECONDS: &str = "comfy_reality_queue_wait_seconds";
/// Histogram `{class_type}`: one ComfyUI node's run time, in seconds.
pub const NODE_DURATION_SECONDS: &str = "comfy_reality_node_duration_seconds";
/// Gauge `{priority}`: tasks waiting in the queue.
pub const QUEUE_DEPTH: &str = "comfy_reality_queue_depth";
/// Gauge: tasks executing now.
pub const TASKS_RUNNING: &str = "comfy_reality_tasks_running";
/// Counter `{error_type}`: automatic retries.
pub const RETRIES_TOTAL: &str = "comfy_reality_retries_total";
/// Counter: tasks that ran past their timeout.
pub const TIMEOUTS_TOTAL: &str = "comfy_reality_timeouts_total";
/// Counter: cancellations.
pub const CANCELLATIONS_TOTAL: &str = "comfy_reality_cancellations_total";
/// Gauge `{backend}`: 1 when the ComfyUI backend answers, else 0.
pub const BACKEND_UP: &str = "comfy_reality_backend_up";
/// Gauge `{backend}`: prompts in the backend's own queue.
pub const BACKEND_QUEUE_DEPTH: &str = "comfy_reality_backend_queue_depth";
/// Counter `{backend}`: WebSocket reconnects to the backend.
pub const WEBSOCKET_RECONNECTS_TOTAL: &str = "comfy_reality_websocket_reconnects_total";
/// Gauge `{backend,device,type}`: memory of a backend's device, from its `/system_stats`, in
/// bytes (`device` is `type:index`, or the type for a device without an index).
pub const BACKEND_VRAM_TOTAL_BYTES: &str = "comfy_reality_backend_vram_total_bytes";
/// Gauge `{backend,device,type}`: free memory of a backend's device, in bytes.
pub const BACKEND_VRAM_FREE_BYTES: &str = "comfy_reality_backend_vram_free_bytes";
/// Gauge `{backend,device,type}`: memory torch has reserved on a backend's device, in bytes.
pub const BACKEND_TORCH_VRAM_TOTAL_BYTES: &str = "comfy_reality_backend_torch_vram_total_bytes";
/// Gauge `{backend,device,type}`: free memory inside torch's reservation, in bytes.
pub const BACKEND_TORCH_VRAM_FREE_BYTES: &str = "comfy_reality_backend_torch_vram_free_bytes";
/// Gauge `{backend}`: 1 while the backend's GPU memory in use is above
/// `executor.gpu_memory_fraction` of its total (it gets no new work), else 0.
pub const BACKEND_VRAM_OVER_FRACTION: &str = "comfy_reality_backend_vram_over_fraction";
/// Gauge `{index,name,uuid}`: memory allocated on a GPU of this host, in bytes (NVML).
pub const GPU_MEMORY_USED_BYTES: &str = "comfy_reality_gpu_memory_used_bytes";
/// Gauge `{index,name,uuid}`: memory installed on a GPU of this host, in bytes.
pub const GPU_MEMORY_TOTAL_BYTES: &str = "comfy_reality_gpu_memory_total_bytes";
/// Gauge `{index,name,uuid}`: share of the last sample period a kernel ran on the GPU, 0..1.
pub const GPU_UTILIZATION_RATIO: &str = "comfy_reality_gpu_utilization_ratio";
/// Gauge `{index,name,uuid}`: the GPU's core temperature, in degrees Celsius.
pub const GPU_TEMPERATURE_CELSIUS: &str = "comfy_reality_gpu_temperature_celsius";
/// Gauge `{index,name,uuid}`: the GPU's power draw, in watts.
pub const GPU_POWER_WATTS: &str = "comfy_reality_gpu_power_watts";
/// Gauge: open event subscriptions.
pub const EVENT_SUBSCRIBERS: &str = "comfy_reality_event_subscribers";
/// Counter `{kind}`: events published on the bus (`task`, `runtime`, `metric`).
pub const EVENTS_PUBLISHED_TOTAL: &str = "comfy_reality_events_published_total";
/// Gauge `{version,api_version}`: always 1; the labels say what runs.
pub const BUILD_INFO: &str = "comfy_reality_build_info";

/// Counter `{grpc_type,grpc_service,grpc_method}`: RPCs started (go-grpc-prometheus name).
pub const GRPC_SERVER_STARTED_TOTAL: &str = "grpc_server_started_total";
/// Counter `{grpc_type,grpc_service,grpc_method,grpc_code}`: RPCs completed.
pub const GRPC_SERVER_HANDLED_TOTAL: &str = "grpc_server_handled_total";
/// Histogram `{grpc_type,grpc_service,grpc_method}`: time from the call to its
/// status (the end of the stream for streaming RPCs), in seconds.
pub const GRPC_SERVER_HANDLING_SECONDS: &str = "grpc_server_handling_seconds";
/// Counter `{grpc_type,grpc_service,grpc_method}`: request messages received.
pub const GRPC_SERVER_MSG_RECEIVED_TOTAL: &str = "grpc_server_msg_received_total";
/// Counter `{grpc_type,grpc_service,grpc_method}`: response messages sent.
pub const GRPC_SERVER_MSG_SENT_TOTAL: &str = "grpc_server_msg_sent_total";

/// Buckets of task run times: ComfyUI jobs take from a second to an hour.
const TASK_DURATION_BUCKETS: [f64; 14] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];
/// Buckets of queue waits: from instant admission to a long backlog.
const QUEUE_WAIT_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
/// Buckets of node run times: from a cheap loader to a long sampler.
const NODE_DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// go-grpc-prometheus's default buckets, so dashboards built for it work.
const GRPC_HANDLING_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A Prometheus recorder builder with this service's histogram buckets
/// (without buckets the exporter would render summaries).
pub fn prometheus_builder() -> Result<PrometheusBuilder, BuildError> {
    let full = |name: &str| Matcher::Full(name.to_owned());
    PrometheusBuilder::new()
        .set_buckets_for_metric(full(TASK_DURATION_SECONDS), &TASK_DURATION_BUCKETS)?
        .set_buckets_for_metric(full(QUEUE_WAIT_SECONDS), &QUEUE_WAIT_BUCKETS)?
        .set_buckets_for_metric(full(NODE_DURATION_SECONDS), &NODE_DURATION_BUCKETS)?
        .set_buckets_for_metric(full(GRPC_SERVER_HANDLING_SECONDS), &GRPC_HANDLING_BUCKETS)
}

/// Installs the process-global Prometheus recorder, describes every metric
/// and sets `build_info`. Call once per process, from the CLI only.
pub fn install_recorder() -> Result<PrometheusHandle, BuildError> {
    let handle = prometheus_builder()?.install_recorder()?;
    let _ = INSTALLED.set(Installed::new());
    describe_metrics();
    set_build_info();
    register_zero_series();
    Ok(handle)
}

/// The series the job path records, kept once registered with the process-global recorder
/// ([`install_recorder`]): a `counter!` with labels allocates its label values, builds the
/// key and hashes it into the recorder's registry on every call, a few hundred nanoseconds
/// that a job paid some twenty times. Calls made under another recorder (a test's local one,
/// through `metrics::with_local_recorder`) register as before.
#[derive(Debug)]
struct Installed {
    /// The address of the global recorder the series belong to.
    recorder: usize,
    /// `comfy_reality_tasks_submitted_total{type}`.
    tasks_submitted: Series<Counter, 1>,
    /// `comfy_reality_tasks_finished_total{type,status}`.
    tasks_finished: Series<Counter, 2>,
    /// `comfy_reality_task_duration_seconds{type,status}`.
    task_duration: Series<Histogram, 2>,
    /// `comfy_reality_queue_wait_seconds`.
    queue_wait: Histogram,
    /// `comfy_reality_node_duration_seconds{class_type}`.
    node_duration: Series<Histogram, 1>,
    /// `comfy_reality_queue_depth{priority}`.
    queue_depth: Series<Gauge, 1>,
    /// `comfy_reality_tasks_running`.
    tasks_running: Gauge,
    /// `comfy_reality_backend_queue_depth{backend}`.
    backend_queue_depth: Series<Gauge, 1>,
    /// `comfy_reality_events_published_total{kind}`.
    events_published: Series<Counter, 1>,
}

/// See [`Installed`]; set once by [`install_recorder`].
static INSTALLED: OnceLock<Installed> = OnceLock::new();

impl Installed {
    /// The series of the global recorder, which was just installed.
    fn new() -> Self {
        Self {
            recorder: current_recorder(),
            tasks_submitted: Series::default(),
            tasks_finished: Series::default(),
            task_duration: Series::default(),
            queue_wait: histogram!(QUEUE_WAIT_SECONDS),
            node_duration: Series::default(),
            queue_depth: Series::default(),
            tasks_running: gauge!(TASKS_RUNNING),
            backend_queue_depth: Series::default(),
            events_published: Series::default(),
        }
    }
}

/// The address of the recorder in effect on this thread.
fn current_recorder() -> usize {
    ::metrics::with_recorder(|recorder| {
        std::ptr::from_ref::<dyn Recorder>(recorder)
            .cast::<()>()
            .addr()
    })
}

/// The kept series, when the recorder in effect is the global one they belong to.
fn installed() -> Option<&'static Installed> {
    INSTALLED
        .get()
        .filter(|installed| installed.recorder == current_recorder())
}

/// The handle of `labels` in the family `family` picks from the kept series; registered per
/// call, as without them, when the recorder in effect is not the global one.
fn kept<T: Clone, const N: usize>(
    family: fn(&Installed) -> &Series<T, N>,
    labels: [&str; N],
    register: impl FnOnce() -> T,
) -> T {
    match installed() {
        Some(installed) => family(installed).get(labels, register),
        None => register(),
    }
}

/// Most label sets a [`Series`] keeps; more are registered per call, as without it. The
/// labels here are low-cardinality, so this is never reached by a sound deployment.
const MAX_KEPT_SERIES: usize = 256;

/// The handles of one labelled family, by label values, registered at their first use.
#[derive(Debug)]
struct Series<T, const N: usize> {
    /// Label values and handle, in registration order (a handful: a linear search is the
    /// cheapest lookup).
    kept: RwLock<Vec<([Box<str>; N], T)>>,
}

impl<T, const N: usize> Default for Series<T, N> {
    fn default() -> Self {
        Self {
            kept: RwLock::new(Vec::new()),
        }
    }
}

impl<T: Clone, const N: usize> Series<T, N> {
    /// The handle of `labels`, registered through `register` at their first use.
    fn get(&self, labels: [&str; N], register: impl FnOnce() -> T) -> T {
        let matches = |kept: &[Box<str>; N]| kept.iter().zip(labels).all(|(k, l)| **k == *l);
        {
            let kept = self.kept.read().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, handle)) = kept.iter().find(|(kept, _)| matches(kept)) {
                return handle.clone();
            }
        }
        let handle = register();
        let mut kept = self.kept.write().unwrap_or_else(PoisonError::into_inner);
        if kept.len() < MAX_KEPT_SERIES && !kept.iter().any(|(kept, _)| matches(kept)) {
            kept.push((labels.map(Box::from), handle.clone()));
        }
        handle
    }
}

/// Registers the help text and unit of every metric with the current recorder.
pub fn describe_metrics() {
    describe_counter!(
        TASKS_SUBMITTED_TOTAL,
        Unit::Count,
        "Tasks accepted by the runtime, by task type."
    );
    describe_counter!(
        TASKS_FINISHED_TOTAL,
        Unit::Count,
        "Tasks that reached a terminal state, by task type and final status."
    );
    describe_histogram!(
        TASK_DURATION_SECONDS,
        Unit::Seconds,
        "Run time of finished tasks, by task type and final status."
    );
    describe_histogram!(
        QUEUE_WAIT_SECONDS,
        Unit::Seconds,
        "Time tasks waited in the queue before they started."
    );
    describe_histogram!(
        NODE_DURATION_SECONDS,
        Unit::Seconds,
        "Run time of ComfyUI nodes, by node class."
    );
    describe_gauge!(
        QUEUE_DEPTH,
        Unit::Count,
        "Tasks waiting in the queue, by priority."
    );
    describe_gauge!(TASKS_RUNNING, Unit::Count, "Tasks executing now.");
    describe_counter!(
        RETRIES_TOTAL,
        Unit::Count,
        "Automatic task retries, by error class."
    );
    describe_counter!(
        TIMEOUTS_TOTAL,
        Unit::Count,
        "Tasks that ran past their timeout."
    );
    describe_counter!(
        CANCELLATIONS_TOTAL,
        Unit::Count,
        "Cancelled tasks and executions."
    );
    describe_gauge!(
        BACKEND_UP,
        "1 when the ComfyUI backend answers its probes, else 0."
    );
    describe_gauge!(
        BACKEND_QUEUE_DEPTH,
        Unit::Count,
        "Prompts in the ComfyUI backend's own queue."
    );
    describe_counter!(
        WEBSOCKET_RECONNECTS_TOTAL,
        Unit::Count,
        "WebSocket reconnects to the ComfyUI backend."
    );
    describe_gauge!(
        BACKEND_VRAM_TOTAL_BYTES,
        Unit::Bytes,
        "Memory of a ComfyUI backend's device, from its /system_stats."
    );
    describe_gauge!(
        BACKEND_VRAM_FREE_BYTES,
        Unit::Bytes,
        "Free memory of a ComfyUI backend's device, from its /system_stats."
    );
    describe_gauge!(
        BACKEND_TORCH_VRAM_TOTAL_BYTES,
        Unit::Bytes,
        "Memory torch has reserved on a ComfyUI backend's device."
    );
    describe_gauge!(
        BACKEND_TORCH_VRAM_FREE_BYTES,
        Unit::Bytes,
        "Free memory inside torch's reservation on a ComfyUI backend's device."
    );
    describe_gauge!(
        BACKEND_VRAM_OVER_FRACTION,
        "1 while the backend's GPU memory in use is above executor.gpu_memory_fraction (no new work), else 0."
    );
    describe_gauge!(
        GPU_MEMORY_USED_BYTES,
        Unit::Bytes,
        "Memory allocated on a GPU of this host (NVML)."
    );
    describe_gauge!(
        GPU_MEMORY_TOTAL_BYTES,
        Unit::Bytes,
        "Memory installed on a GPU of this host (NVML)."
    );
    describe_gauge!(
        GPU_UTILIZATION_RATIO,
        "Share of the last sample period during which a kernel ran on the GPU (0..1)."
    );
    describe_gauge!(
        GPU_TEMPERATURE_CELSIUS,
        "Core temperature of a GPU of this host, in degrees Celsius."
    );
    describe_gauge!(
        GPU_POWER_WATTS,
        "Power draw of a GPU of this host, in watts."
    );
    describe_gauge!(EVENT_SUBSCRIBERS, Unit::Count, "Open event subscriptions.");
    describe_counter!(
        EVENTS_PUBLISHED_TOTAL,
        Unit::Count,
        "Events published on the event bus, by kind (task, runtime, metric)."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the labels name the running version and API version."
    );
    describe_counter!(
        GRPC_SERVER_STARTED_TOTAL,
        Unit::Count,
        "Total number of RPCs started on the server."
    );
    describe_counter!(
        GRPC_SERVER_HANDLED_TOTAL,
        Unit::Count,
        "Total number of RPCs completed on the server, regardless of success or failure."
    );
    describe_histogram!(
        GRPC_SERVER_HANDLING_SECONDS,
        Unit::Seconds,
        "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server."
    );
    describe_counter!(
        GRPC_SERVER_MSG_RECEIVED_TOTAL,
        Unit::Count,
        "Total number of RPC stream messages received on the server."
    );
    describe_counter!(
        GRPC_SERVER_MSG_SENT_TOTAL,
        Unit::Count,
        "Total number of gRPC stream messages sent by the server."
    );
}

/// Sets `comfy_reality_build_info{version,api_version} 1`.
pub fn set_build_info() {
    gauge!(
        BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "api_version" => API_VERSION
    )
    .set(1.0);
}

/// Converts a count to a gauge value; counts beyond 2^53 lose precision,
/// which no real queue reaches.
#[allow(clippy::cast_precision_loss)]
fn as_gauge(n: u64) -> f64 {
    n as f64
}

fn usize_gauge(n: usize) -> f64 {
    as_gauge(u64::try_from(n).unwrap_or(u64::MAX))
}

/// A task was accepted; `task_type` is its type (`workflow`, `node`, ...).
pub fn task_submitted(task_type: &str) {
    let register = || counter!(TASKS_SUBMITTED_TOTAL, "type" => task_type.to_owned());
    kept(|series| &series.tasks_submitted, [task_type], register).increment(1);
}

/// A task reached the terminal `status`; its run time when it ran.
pub fn task_finished(task_type: &str, status: &str, duration_seconds: Option<f64>) {
    let labels = || {
        [
            ("type", task_type.to_owned()),
            ("status", status.to_owned()),
        ]
    };
    let register = || counter!(TASKS_FINISHED_TOTAL, &labels());
    kept(
        |series| &series.tasks_finished,
        [task_type, status],
        register,
    )
    .increment(1);
    if let Some(seconds) = duration_seconds.filter(|s| s.is_finite() && *s >= 0.0) {
        let register = || histogram!(TASK_DURATION_SECONDS, &labels());
        kept(
            |series| &series.task_duration,
            [task_type, status],
            register,
        )
        .record(seconds);
    }
}

/// A task waited `seconds` in the queue before it started.
pub fn queue_wait(seconds: f64) {
    if seconds.is_finite() && seconds >= 0.0 {
        match installed() {
            Some(series) => series.queue_wait.record(seconds),
            None => histogram!(QUEUE_WAIT_SECONDS).record(seconds),
        }
    }
}

/// A node of class `class_type` ran for `seconds`.
pub fn node_duration(class_type: &str, seconds: f64) {
    if seconds.is_finite() && seconds >= 0.0 {
        let register = || histogram!(NODE_DURATION_SECONDS, "class_type" => class_type.to_owned());
        kept(|series| &series.node_duration, [class_type], register).record(seconds);
    }
}

/// `depth` tasks of `priority` wait in the queue.
pub fn set_queue_depth(priority: &str, depth: usize) {
    let register = || gauge!(QUEUE_DEPTH, "priority" => priority.to_owned());
    kept(|series| &series.queue_depth, [priority], register).set(usize_gauge(depth));
}

/// `n` tasks are executing.
pub fn set_tasks_running(n: usize) {
    match installed() {
        Some(series) => series.tasks_running.set(usize_gauge(n)),
        None => gauge!(TASKS_RUNNING).set(usize_gauge(n)),
    }
}

/// A task is retried after an error of class `error_type`.
pub fn retry(error_type: &str) {
    counter!(RETRIES_TOTAL, "error_type" => error_type.to_owned()).increment(1);
}

/// A task ran past its timeout.
pub fn timeout() {
    counter!(TIMEOUTS_TOTAL).increment(1);
}

/// A task or execution was cancelled.
pub fn cancellation() {
    counter!(CANCELLATIONS_TOTAL).increment(1);
}

/// Backend `backend` went up or down.
pub fn set_backend_up(backend: &str, up: bool) {
    gauge!(BACKEND_UP, "backend" => backend.to_owned()).set(if up { 1.0 } else { 0.0 });
}

/// Backend `backend` has `depth` prompts in its own queue.
pub fn set_backend_queue_depth(backend: &str, depth: u64) {
    let register = || gauge!(BACKEND_QUEUE_DEPTH, "backend" => backend.to_owned());
    kept(|series| &series.backend_queue_depth, [backend], register).set(as_gauge(depth));
}

/// Backend `backend`'s WebSocket has reconnected `total` times since start
/// (an absolute value: the counter never goes down).
pub fn set_websocket_reconnects(backend: &str, total: u64) {
    counter!(WEBSOCKET_RECONNECTS_TOTAL, "backend" => backend.to_owned()).absolute(total);
}

/// The labels of one GPU of this host: low-cardinality (a host has a handful of GPUs).
#[derive(Debug, Clone, Copy)]
pub struct GpuLabels<'a> {
    /// The GPU's index.
    pub index: &'a str,
    /// Its product name.
    pub name: &'a str,
    /// Its UUID.
    pub uuid: &'a str,
}

/// Sets the GPU gauge `metric` (one of the `GPU_*` names) of `gpu` to `value`.
pub fn set_gpu_gauge(metric: &'static str, gpu: GpuLabels<'_>, value: f64) {
    gauge!(
        metric,
        "index" => gpu.index.to_owned(),
        "name" => gpu.name.to_owned(),
        "uuid" => gpu.uuid.to_owned()
    )
    .set(value);
}

/// Sets the device gauge `metric` (one of the `BACKEND_*VRAM*_BYTES` names) of device
/// `device` (of type `device_type`) of backend `backend` to `bytes`.
pub fn set_backend_device_bytes(
    metric: &'static str,
    backend: &str,
    device: &str,
    device_type: &str,
    bytes: u64,
) {
    gauge!(
        metric,
        "backend" => backend.to_owned(),
        "device" => device.to_owned(),
        "type" => device_type.to_owned()
    )
    .set(as_gauge(bytes));
}

/// Backend `backend` is (or is no longer) above its GPU memory fraction.
pub fn set_backend_vram_over_fraction(backend: &str, over: bool) {
    gauge!(BACKEND_VRAM_OVER_FRACTION, "backend" => backend.to_owned()).set(if over {
        1.0
    } else {
        0.0
    });
}

/// An event subscription opened (SubscribeEvents, WatchExecution, or an
/// internal reader of the bus).
pub fn event_subscriber_opened() {
    gauge!(EVENT_SUBSCRIBERS).increment(1.0);
}

/// An event subscription closed.
pub fn event_subscriber_closed() {
    gauge!(EVENT_SUBSCRIBERS).decrement(1.0);
}

/// The error classes a retry is counted under (`error_type` of
/// `comfy_reality_retries_total`), so each series exists from the start.
/// (the executor's failure classes; a test there checks that each is listed).
pub const RETRY_ERROR_TYPES: &[&str] = &[
    "ValidationError",
    "NodeExecutionError",
    "OutOfMemoryError",
    "TimeoutError",
    "StalledError",
    "BackendUnavailableError",
    "PromptLostError",
    "NoBackendError",
    "InterruptedError",
];

/// Creates every counter and gauge the README's metric table lists at zero,
/// so that dashboards and alerts see 0 from the first scrape instead of "no
/// data" until the first retry or timeout. Labelled families get the label
/// values known in advance (priorities, retry error classes).
pub fn register_zero_series() {
    for error_type in RETRY_ERROR_TYPES {
        counter!(RETRIES_TOTAL, "error_type" => *error_type).absolute(0);
    }
    counter!(TIMEOUTS_TOTAL).absolute(0);
    counter!(CANCELLATIONS_TOTAL).absolute(0);
    gauge!(EVENT_SUBSCRIBERS).increment(0.0);
    gauge!(TASKS_RUNNING).increment(0.0);
    for priority in crate::model::TaskPriority::ALL {
        gauge!(QUEUE_DEPTH, "priority" => priority.as_str()).increment(0.0);
    }
}

/// An event of `kind` (`task`, `runtime` or `metric`) was published.
pub fn event_published(kind: &str) {
    let register = || counter!(EVENTS_PUBLISHED_TOTAL, "kind" => kind.to_owned());
    kept(|series| &series.events_published, [kind], register).increment(1);
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use metrics_exporter_prometheus::PrometheusRecorder;

    use super::*;

    /// One sample of a rendered exposition: name, labels, value.
    pub(crate) type Sample = (String, BTreeMap<String, String>, f64);

    /// Parses the text exposition format (enough of it for these tests:
    /// label values hold no escaped quotes or commas).
    pub(crate) fn parse(text: &str) -> Vec<Sample> {
        text.lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("sample has a value");
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => (name, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                let labels = labels
                    .split(',')
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once('=').expect("label has a value");
                        (k.to_owned(), v.trim_matches('"').to_owned())
                    })
                    .collect();
                (
                    name.to_owned(),
                    labels,
                    value.parse().expect("numeric value"),
                )
            })
            .collect()
    }

    /// The value of the sample named `name` whose labels are exactly `labels`.
    pub(crate) fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        samples
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .map(|(_, _, v)| *v)
    }

    pub(crate) fn recorder() -> PrometheusRecorder {
        prometheus_builder().expect("buckets").build_recorder()
    }

    #[test]
    fn the_typed_api_writes_the_documented_names_and_label_sets() {
        let recorder = recorder();
        let handle = recorder.handle();
        ::metrics::with_local_recorder(&recorder, || {
            describe_metrics();
            set_build_info();
            task_submitted("workflow");
            task_submitted("workflow");
            task_finished("workflow", "completed", Some(2.0));
            task_finished("node", "failed", None);
            queue_wait(0.2);
            node_duration("KSampler", 3.0);
            set_queue_depth("high", 4);
            set_tasks_running(2);
            retry("backend_unavailable");
            timeout();
            cancellation();
            set_backend_up("gpu-0", true);
            set_backend_up("gpu-1", false);
            set_backend_queue_depth("gpu-0", 7);
            set_websocket_reconnects("gpu-0", 3);
            set_websocket_reconnects("gpu-0", 5);
            event_subscriber_opened();
            event_subscriber_opened();
            event_subscriber_closed();
            event_published("task");
        });
        let text = handle.render();
        let samples = parse(&text);
        let expect = [
            (TASKS_SUBMITTED_TOTAL, vec![("type", "workflow")], 2.0),
            (
                TASKS_FINISHED_TOTAL,
                vec![("type", "workflow"), ("status", "completed")],
                1.0,
            ),
            (
                TASKS_FINISHED_TOTAL,
                vec![("type", "node"), ("status", "failed")],
                1.0,
            ),
            (
                "comfy_reality_task_duration_seconds_count",
                vec![("type", "workflow"), ("status", "completed")],
                1.0,
            ),
            (
                "comfy_reality_task_duration_seconds_bucket",
                vec![("type", "workflow"), ("status", "completed"), ("le", "2.5")],
                1.0,
            ),
            (
                "comfy_reality_task_duration_seconds_bucket",
                vec![("type", "workflow"), ("status", "completed"), ("le", "1")],
                0.0,
            ),
            ("comfy_reality_queue_wait_seconds_count", vec![], 1.0),
            (
                "comfy_reality_node_duration_seconds_sum",
                vec![("class_type", "KSampler")],
                3.0,
            ),
            (QUEUE_DEPTH, vec![("priority", "high")], 4.0),
            (TASKS_RUNNING, vec![], 2.0),
            (
                RETRIES_TOTAL,
                vec![("error_type", "backend_unavailable")],
                1.0,
            ),
            (TIMEOUTS_TOTAL, vec![], 1.0),
            (CANCELLATIONS_TOTAL, vec![], 1.0),
            (BACKEND_UP, vec![("backend", "gpu-0")], 1.0),
            (BACKEND_UP, vec![("backend", "gpu-1")], 0.0),
            (BACKEND_QUEUE_DEPTH, vec![("backend", "gpu-0")], 7.0),
            (WEBSOCKET_RECONNECTS_TOTAL, vec![("backend", "gpu-0")], 5.0),
            (EVENT_SUBSCRIBERS, vec![], 1.0),
            (EVENTS_PUBLISHED_TOTAL, vec![("kind", "task")], 1.0),
            (
                BUILD_INFO,
                vec![
                    ("version", env!("CARGO_PKG_VERSION")),
                    ("api_version", API_VERSION),
                ],
                1.0,
            ),
        ];
        for (name, labels, want) in expect {
            assert_eq!(
                value(&samples, name, &labels),
                Some(want),
                "{name} {labels:?} in\n{text}"
            );
        }
        // No duration sample for a task that never ran.
        assert_eq!(
            value(
                &samples,
                "comfy_reality_task_duration_seconds_count",
                &[("type", "node"), ("status", "failed")]
            ),
            None
        );
        assert!(
            text.contains("# TYPE comfy_reality_task_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("# HELP comfy_reality_queue_depth Tasks waiting in the queue"),
            "{text}"
        );
    }

    #[test]
    fn without_a_recorder_every_call_is_a_no_op() {
        // Nothing installed on this thread or globally by unit tests: must not panic.
        task_submitted("workflow");
        task_finished("workflow", "completed", Some(f64::NAN));
        queue_wait(-1.0);
        node_duration("KSampler", f64::INFINITY);
        set_websocket_reconnects("gpu-0", 1);
    }

    #[test]
    fn counters_of_the_metric_table_exist_at_zero_before_anything_happens() {
        let recorder = recorder();
        let handle = recorder.handle();
        ::metrics::with_local_recorder(&recorder, || {
            describe_metrics();
            register_zero_series();
        });
        let samples = parse(&handle.render());
        let value = |name: &str, labels: &[(&str, &str)]| {
            samples
                .iter()
                .find(|(n, l, _)| {
                    n == name
                        && l.len() == labels.len()
                        && labels
                            .iter()
                            .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
                })
                .map(|(_, _, v)| *v)
        };
        assert_eq!(value(TIMEOUTS_TOTAL, &[]), Some(0.0));
        assert_eq!(value(CANCELLATIONS_TOTAL, &[]), Some(0.0));
        assert_eq!(value(EVENT_SUBSCRIBERS, &[]), Some(0.0));
        assert_eq!(value(TASKS_RUNNING, &[]), Some(0.0));
        for error_type in RETRY_ERROR_TYPES {
            assert_eq!(
                value(RETRIES_TOTAL, &[("error_type", error_type)]),
                Some(0.0),
                "{error_type}"
            );
        }
        assert_eq!(value(QUEUE_DEPTH, &[("priority", "critical")]), Some(0.0));
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        let names = [
            TASKS_SUBMITTED_TOTAL,
            TASKS_FINISHED_TOTAL,
            TASK_DURATION_SECONDS,
            QUEUE_WAIT_SECONDS,
            NODE_DURATION_SECONDS,
            QUEUE_DEPTH,
            TASKS_RUNNING,
            RETRIES_TOTAL,
            TIMEOUTS_TOTAL,
            CANCELLATIONS_TOTAL,
            BACKEND_UP,
            BACKEND_QUEUE_DEPTH,
            WEBSOCKET_RECONNECTS_TOTAL,
            EVENT_SUBSCRIBERS,
            EVENTS_PUBLISHED_TOTAL,
            BUILD_INFO,
        ];
        for name in names {
            assert!(name.starts_with("comfy_reality_"), "{name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
        }
        let sorted: std::collections::BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(sorted.len(), names.len(), "a name is used twice");
        for buckets in [
            &TASK_DURATION_BUCKETS[..],
            &QUEUE_WAIT_BUCKETS,
            &NODE_DURATION_BUCKETS,
            &GRPC_HANDLING_BUCKETS,
        ] {
            assert!(buckets.windows(2).all(|w| w[0] < w[1]), "{buckets:?}");
        }
    }
}
