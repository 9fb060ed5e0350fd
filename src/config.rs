//! Service configuration: the typed settings (`[service]`, `[runtime]`, `[executor]`,
//! `[[servers]]`), their layered loading (defaults -> TOML file ->
//! `COMFY_REALITY__SECTION__KEY` environment variables -> command-line flags), validation that
//! reports every violation with its dotted key and where the value came from, and redaction for
//! printing.
//!
//! The field names, defaults and bounds mirror the seed's `ServerConfig`, `RuntimeConfig` and
//! `TaskExecutorConfig`. This module is a leaf: it imports no other module of the crate, starts
//! nothing, never logs, and never puts a secret into a message or a printed configuration.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::error::{Kind, OneOf};
use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Prefix of the environment variables read by [`load`]; `__` separates section and key, as in
/// `COMFY_REALITY__RUNTIME__MAX_CONCURRENT_TASKS=4`. Matched case-insensitively.
pub const ENV_PREFIX: &str = "COMFY_REALITY__";

/// Separator between the section and key parts of an environment variable name.
pub const ENV_SEPARATOR: &str = "__";

/// What a secret prints as, everywhere.
pub const REDACTED: &str = "[REDACTED]";

/// The seed's error class for every configuration error (`ErrorInfo.reason`).
pub const ERROR_CODE: &str = "ConfigurationError";

/// Stands in for a password inside a printed URL. Unlike [`REDACTED`] it needs no
/// percent-encoding in a URL's user-info.
const URL_PASSWORD_PLACEHOLDER: &str = "REDACTED";

/// How environment variables name themselves as a source.
const ENV_SOURCE_NAME: &str = "environment variable";

/// The store's file name inside `service.data_dir` when `store.path` is not set.
pub const STORE_FILE_NAME: &str = "comfy-reality.db";

const DEFAULT_METRICS_PORT: u16 = 9090;
const MIN_REQUEST_BYTES: usize = 1024;
const MIN_MEMORY_MB: u64 = 100;

// ---------------------------------------------------------------------------------------------
// The configuration
// ---------------------------------------------------------------------------------------------

/// The whole configuration of a `comfy-reality` process.
///
/// Build it with [`load`] (which validates) or start from [`Config::default`], which equals the
/// seed's defaults and is valid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[service]`: the gRPC endpoint and process-level settings.
    pub service: ServiceConfig,
    /// `[runtime]`: the seed's `RuntimeConfig` (tasks, queue, logging, metrics, UI).
    pub runtime: RuntimeConfig,
    /// `[executor]`: the seed's `TaskExecutorConfig` (resource limits, GPU, optimization, cache).
    pub executor: TaskExecutorConfig,
    /// `[scheduling]`: how workflow executions are admitted, run and kept (not in the seed).
    pub scheduling: SchedulingConfig,
    /// `[events]`: event history and subscriptions (not in the seed).
    pub events: EventsConfig,
    /// `[store]`: the durable embedded store: where it lives, how long finished work is kept
    /// (not in the seed).
    pub store: StoreConfig,
    /// `[[servers]]`: the ComfyUI backends. Default: one server at `http://127.0.0.1:8188`.
    /// Bound: at least one; urls unique; names, where given, unique.
    pub servers: Vec<ServerConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            service: ServiceConfig::default(),
            runtime: RuntimeConfig::default(),
            executor: TaskExecutorConfig::default(),
            scheduling: SchedulingConfig::default(),
            events: EventsConfig::default(),
            store: StoreConfig::default(),
            servers: vec![ServerConfig::default()],
        }
    }
}

/// `[service]`: where the gRPC server listens and how the process behaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Address of the gRPC server. Default: `127.0.0.1:50051`. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Address of the Prometheus metrics endpoint. Default: none, meaning
    /// `127.0.0.1:{runtime.metrics_port}` (see [`Config::metrics_addr`]). Bound: must differ
    /// from `listen` unless the port is 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Directory for durable state, relative to the working directory unless absolute.
    /// Default: `data`. Bound: not empty.
    pub data_dir: PathBuf,
    /// How long shutdown waits for in-flight work before cancelling it, in seconds.
    /// Default: 10. Bound: finite, > 0.
    pub shutdown_grace_seconds: f64,
    /// Largest accepted gRPC request message, in bytes. Default: 32 MiB. Bound: >= 1024.
    pub max_request_bytes: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50051),
            metrics_listen: None,
            data_dir: PathBuf::from("data"),
            shutdown_grace_seconds: 10.0,
            max_request_bytes: 32 * 1024 * 1024,
        }
    }
}

impl ServiceConfig {
    /// `shutdown_grace_seconds` as a duration (zero when out of range, which a validated
    /// configuration never is).
    pub fn shutdown_grace(&self) -> Duration {
        seconds(self.shutdown_grace_seconds)
    }
}

/// `[runtime]`: the seed's `RuntimeConfig`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Most tasks executing at once. Default: 10. Bound: >= 1.
    pub max_concurrent_tasks: usize,
    /// Longest a task may run before it times out, in seconds. Default: 300. Bound: finite, > 0.
    pub task_timeout_seconds: f64,
    /// Wait before a failed task is retried, in seconds. Default: 5. Bound: finite, > 0.
    pub task_retry_delay_seconds: f64,
    /// Where tasks, executions and events are kept. Default: `sqlite` (durable, in
    /// [`Config::store_path`]; the seed's default is `memory`). One of `sqlite`, `memory`,
    /// `redis`, `rabbitmq`.
    pub queue_type: QueueType,
    /// Address of the queue broker. Default: none. Bound: required (not blank) when
    /// `queue_type` is `redis` or `rabbitmq`. A password in it is redacted when printed.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_redacted_opt_url"
    )]
    pub queue_url: Option<String>,
    /// Least severe level logged. Default: `info`. One of `debug`, `info`, `warning`, `error`,
    /// `critical`.
    pub log_level: LogLevel,
    /// Log line format. Default: `json` (one object per line). One of `json`, `text`.
    pub log_format: LogFormat,
    /// File logs are written to. Default: none (standard output). Bound: not empty when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_file: Option<PathBuf>,
    /// Whether the Prometheus metrics endpoint is served. Default: true.
    pub enable_metrics: bool,
    /// Port of the metrics endpoint when `service.metrics_listen` is not set. Default: 9090.
    /// Bound: 1..=65535. Wider than `u16` so that an out-of-range value is reported by
    /// validation, with its key and source, rather than as a parse error.
    pub metrics_port: i64,
    /// Whether progress updates for a UI are produced. Default: true.
    pub enable_ui: bool,
    /// Interval between UI progress updates, in seconds. Default: 0.5. Bound: finite, > 0.
    pub ui_update_interval_seconds: f64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_concurrent_tasks: 10,
            task_timeout_seconds: 300.0,
            task_retry_delay_seconds: 5.0,
            queue_type: QueueType::Sqlite,
            queue_url: None,
            log_level: LogLevel::Info,
            log_format: LogFormat::Json,
            log_file: None,
            enable_metrics: true,
            metrics_port: i64::from(DEFAULT_METRICS_PORT),
            enable_ui: true,
            ui_update_interval_seconds: 0.5,
        }
    }
}

impl RuntimeConfig {
    /// `task_timeout_seconds` as a duration (zero when out of range, which a validated
    /// configuration never is).
    pub fn task_timeout(&self) -> Duration {
        seconds(self.task_timeout_seconds)
    }

    /// `task_retry_delay_seconds` as a duration (zero when out of range, which a validated
    /// configuration never is).
    pub fn task_retry_delay(&self) -> Duration {
        seconds(self.task_retry_delay_seconds)
    }

    /// `ui_update_interval_seconds` as a duration (zero when out of range, which a validated
    /// configuration never is).
    pub fn ui_update_interval(&self) -> Duration {
        seconds(self.ui_update_interval_seconds)
    }
}

// Written by hand so that a password inside `queue_url` is never printed.
impl fmt::Debug for RuntimeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeConfig")
            .field("max_concurrent_tasks", &self.max_concurrent_tasks)
            .field("task_timeout_seconds", &self.task_timeout_seconds)
            .field("task_retry_delay_seconds", &self.task_retry_delay_seconds)
            .field("queue_type", &self.queue_type)
            .field("queue_url", &self.queue_url.as_deref().map(redact_url))
            .field("log_level", &self.log_level)
            .field("log_format", &self.log_format)
            .field("log_file", &self.log_file)
            .field("enable_metrics", &self.enable_metrics)
            .field("metrics_port", &self.metrics_port)
            .field("enable_ui", &self.enable_ui)
            .field(
                "ui_update_interval_seconds",
                &self.ui_update_interval_seconds,
            )
            .finish()
    }
}

/// `[scheduling]`: admission, retries, stall detection, backend probing and artifacts of
/// workflow executions (not in the seed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulingConfig {
    /// Most executions waiting in the runtime's queue; beyond it ExecuteWorkflow answers
    /// RESOURCE_EXHAUSTED. Default: 10000. Bound: >= 1.
    pub max_queue_len: usize,
    /// Longest delay between retries, in seconds (the delay doubles from
    /// `runtime.task_retry_delay_seconds` up to this). Default: 300. Bound: finite, > 0.
    pub retry_max_delay_seconds: f64,
    /// A running prompt with no message from its backend for this long is checked against
    /// history, then interrupted and retried (or failed). Default: 600. Bound: finite, > 0.
    pub stall_timeout_seconds: f64,
    /// How often each backend's health is probed, in seconds. Default: 5. Bound: finite, > 0.
    pub probe_interval_seconds: f64,
    /// Where downloaded outputs are kept, one folder per execution. Default: none, meaning
    /// `<service.data_dir>/artifacts`. Bound: not empty when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_dir: Option<PathBuf>,
    /// Largest workflow JSON accepted, in bytes. Default: 8 MiB. Bound: >= 1024.
    pub max_workflow_bytes: usize,
    /// Most nodes in one workflow. Default: 10000. Bound: >= 1.
    pub max_workflow_nodes: usize,
}

impl Default for SchedulingConfig {
    fn default() -> Self {
        Self {
            max_queue_len: 10_000,
            retry_max_delay_seconds: 300.0,
            stall_timeout_seconds: 600.0,
            probe_interval_seconds: 5.0,
            artifact_dir: None,
            max_workflow_bytes: 8 * 1024 * 1024,
            max_workflow_nodes: 10_000,
        }
    }
}

impl SchedulingConfig {
    /// `retry_max_delay_seconds` as a duration.
    pub fn retry_max_delay(&self) -> Duration {
        seconds(self.retry_max_delay_seconds)
    }

    /// `stall_timeout_seconds` as a duration.
    pub fn stall_timeout(&self) -> Duration {
        seconds(self.stall_timeout_seconds)
    }

    /// `probe_interval_seconds` as a duration.
    pub fn probe_interval(&self) -> Duration {
        seconds(self.probe_interval_seconds)
    }
}

/// `[events]`: how many events are kept in memory for resumption, and how
/// subscriptions behave (not in the seed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Events kept in memory (older ones are read from the store). Default: 8192 (about 10 MB when full; a subscriber further behind is caught up from the store).
    /// Bound: >= 16.
    pub history_len: usize,
    /// Events buffered per subscriber before it is caught up from history. Default: 256.
    /// Bound: 1..=65536.
    pub subscriber_buffer: usize,
    /// An idle subscription gets a heartbeat this often, in seconds. Default: 15.
    /// Bound: finite, > 0.
    pub heartbeat_seconds: f64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            history_len: 8_192,
            subscriber_buffer: 256,
            heartbeat_seconds: 15.0,
        }
    }
}

impl EventsConfig {
    /// `heartbeat_seconds` as a duration.
    pub fn heartbeat(&self) -> Duration {
        seconds(self.heartbeat_seconds)
    }
}

/// `[store]`: the durable embedded store (an SQLite file) that keeps tasks, executions with
/// their prompts, workflows, events and idempotency keys across restarts (not in the seed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The database file, relative to the working directory unless absolute. Default: none,
    /// meaning `<service.data_dir>/comfy-reality.db` (see [`Config::store_path`]). Bound: not
    /// empty when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Finished tasks and executions (completed, failed, cancelled), and events, are deleted
    /// this many days after they last changed. Default: 30. Bound: >= 1.
    pub retention_days: u32,
    /// Most events kept; the oldest beyond it are deleted. Default: 1000000. Bound: >= 1.
    pub max_events: u64,
    /// How far a commit waits for the disk: `normal` (survives a crash of the process; the
    /// last commits can be lost on power loss) or `full` (survives power loss, slower).
    /// Default: `normal`.
    pub synchronous: StoreSynchronous,
    /// How often old data is compacted away, in seconds. Default: 3600. Bound: finite, > 0.
    pub compaction_interval_seconds: f64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: None,
            retention_days: 30,
            max_events: 1_000_000,
            synchronous: StoreSynchronous::Normal,
            compaction_interval_seconds: 3600.0,
        }
    }
}

impl StoreConfig {
    /// `retention_days` as a duration.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(u64::from(self.retention_days) * 86_400)
    }

    /// `compaction_interval_seconds` as a duration (zero when out of range, which a validated
    /// configuration never is).
    pub fn compaction_interval(&self) -> Duration {
        seconds(self.compaction_interval_seconds)
    }
}

/// How far a store commit waits for the disk (`store.synchronous`), SQLite's `synchronous`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreSynchronous {
    /// Durable across a crash of the process; on power loss the last commits may be lost.
    #[default]
    Normal,
    /// Durable across power loss: every commit waits for the disk.
    Full,
}

impl StoreSynchronous {
    /// The configuration spelling: `normal` or `full`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Full => "full",
        }
    }
}

impl fmt::Display for StoreSynchronous {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where queued tasks are kept (`runtime.queue_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// The durable embedded store: an SQLite file (`[store]`); needs no `queue_url`. Not in
    /// the seed.
    #[default]
    Sqlite,
    /// In-process queue, lost when the process exits; needs no `queue_url`.
    Memory,
    /// A Redis broker at `queue_url`.
    Redis,
    /// A RabbitMQ broker at `queue_url`.
    Rabbitmq,
}

impl QueueType {
    /// The configuration spelling: `sqlite`, `memory`, `redis` or `rabbitmq`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Memory => "memory",
            Self::Redis => "redis",
            Self::Rabbitmq => "rabbitmq",
        }
    }
}

impl fmt::Display for QueueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Least severe log level written (`runtime.log_level`), spelled as the seed's `LogLevel`.
/// Defined here, not taken from the domain model, so that configuration stays a leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// `debug`.
    Debug,
    /// `info`.
    #[default]
    Info,
    /// `warning`.
    Warning,
    /// `error`.
    Error,
    /// `critical`.
    Critical,
}

impl LogLevel {
    /// The configuration spelling: `debug`, `info`, `warning`, `error` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Error => "error",
            Self::Critical => "critical",
        }
    }

    /// The matching `tracing` filter directive. `tracing` has no level above `error`, so
    /// `critical` maps to `error`.
    pub fn tracing_directive(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warning => "warn",
            Self::Error | Self::Critical => "error",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Log line format (`runtime.log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable text.
    Text,
}

impl LogFormat {
    /// The configuration spelling: `json` or `text`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Text => "text",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[executor]`: the seed's `TaskExecutorConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskExecutorConfig {
    /// Memory limit per execution, in MiB. Default: none (unlimited). Bound: >= 100.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_memory_mb: Option<u64>,
    /// CPU limit per execution, in percent. Default: none (unlimited). Bound: 0..=100.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_cpu_percent: Option<f64>,
    /// Share of GPU memory an execution may use. Default: 0.9. Bound: 0.1..=1.0.
    pub gpu_memory_fraction: f64,
    /// Whether executions may use a GPU. Default: true.
    pub enable_gpu: bool,
    /// GPU kinds in order of preference. Default: `["cuda", "mps", "directml"]`.
    pub prefer_gpu_types: Vec<String>,
    /// Whether workflow optimization is applied. Default: true.
    pub enable_optimization: bool,
    /// How hard to optimize. Default: `O2`. One of `O0`, `O1`, `O2`, `O3`.
    pub optimization_level: OptimizationLevel,
    /// Whether execution results are cached. Default: true.
    pub enable_cache: bool,
    /// Cache size, in MiB. Default: 1000. Bound: >= 0 (the type forbids negatives).
    pub cache_size_mb: u64,
    /// How long a cache entry lives, in seconds. Default: 3600. Bound: >= 0 (the type forbids
    /// negatives).
    pub cache_ttl_seconds: u64,
}

impl Default for TaskExecutorConfig {
    fn default() -> Self {
        Self {
            max_memory_mb: None,
            max_cpu_percent: None,
            gpu_memory_fraction: 0.9,
            enable_gpu: true,
            prefer_gpu_types: vec!["cuda".into(), "mps".into(), "directml".into()],
            enable_optimization: true,
            optimization_level: OptimizationLevel::O2,
            enable_cache: true,
            cache_size_mb: 1000,
            cache_ttl_seconds: 3600,
        }
    }
}

impl TaskExecutorConfig {
    /// `cache_ttl_seconds` as a duration.
    pub fn cache_ttl(&self) -> Duration {
        Duration::from_secs(self.cache_ttl_seconds)
    }
}

/// How hard workflows are optimized (`executor.optimization_level`), spelled `O0`..`O3`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub enum OptimizationLevel {
    /// No optimization.
    O0,
    /// Light optimization.
    O1,
    /// Default optimization.
    #[default]
    O2,
    /// Aggressive optimization.
    O3,
}

/// One `[[servers]]` entry: a ComfyUI backend (the seed's `ServerConfig`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Name used in logs and status. Default: none (the url identifies the server).
    /// Bound: not blank and unique when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Base URL of the ComfyUI HTTP API. Default: `http://127.0.0.1:8188`. Bound: an `http` or
    /// `https` URL with a host; unique across servers. A password in it is redacted when printed.
    #[serde(serialize_with = "serialize_redacted_url")]
    pub url: String,
    /// Timeout of one HTTP request to this server, in seconds. Default: 30. Bound: finite, > 0.
    pub timeout_seconds: f64,
    /// Retries of a failed request. Default: 3. Bound: >= 0 (the type forbids negatives).
    pub max_retries: u32,
    /// Whether the server's TLS certificate is verified. Default: true.
    pub verify_ssl: bool,
    /// API key sent to the server. Default: none. Bound: not empty, and not the `[REDACTED]`
    /// placeholder a printed configuration holds. Never printed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Secret>,
    /// Value of the `Authorization` header sent to the server. Default: none. Same bound as
    /// `api_key`. Never printed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_header: Option<Secret>,
    /// How long a submitted prompt may go without any WebSocket message before the client
    /// checks on it over HTTP (queue, then history), in seconds. Also how long a silent socket
    /// waits before it is pinged. Default: 30. Bound: finite, > 0.
    pub silence_timeout_seconds: f64,
    /// Longest wait between two WebSocket reconnect attempts (the backoff grows up to it), in
    /// seconds. Default: 30. Bound: finite, > 0.
    pub reconnect_max_delay_seconds: f64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            name: None,
            url: "http://127.0.0.1:8188".into(),
            timeout_seconds: 30.0,
            max_retries: 3,
            verify_ssl: true,
            api_key: None,
            auth_header: None,
            silence_timeout_seconds: 30.0,
            reconnect_max_delay_seconds: 30.0,
        }
    }
}

impl ServerConfig {
    /// A server at `url` with every other setting at its default.
    pub fn with_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// `timeout_seconds` as a duration (zero when out of range, which a validated
    /// configuration never is).
    pub fn timeout(&self) -> Duration {
        seconds(self.timeout_seconds)
    }

    /// `silence_timeout_seconds` as a duration (zero when out of range, which a validated
    /// configuration never is).
    pub fn silence_timeout(&self) -> Duration {
        seconds(self.silence_timeout_seconds)
    }

    /// `reconnect_max_delay_seconds` as a duration (zero when out of range, which a validated
    /// configuration never is).
    pub fn reconnect_max_delay(&self) -> Duration {
        seconds(self.reconnect_max_delay_seconds)
    }
}

// Written by hand so that a password inside `url` is never printed.
impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("name", &self.name)
            .field("url", &redact_url(&self.url))
            .field("timeout_seconds", &self.timeout_seconds)
            .field("max_retries", &self.max_retries)
            .field("verify_ssl", &self.verify_ssl)
            .field("api_key", &self.api_key)
            .field("auth_header", &self.auth_header)
            .field("silence_timeout_seconds", &self.silence_timeout_seconds)
            .field(
                "reconnect_max_delay_seconds",
                &self.reconnect_max_delay_seconds,
            )
            .finish()
    }
}

/// A credential. `Debug`, `Display` and `Serialize` all write `[REDACTED]`; only
/// [`Secret::expose`] gives the clear value. Deserializing reads the clear value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a clear value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The clear value. Call it only where the credential is sent.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_string(SecretVisitor)
    }
}

/// Accepts only strings. serde's default rejection of a scalar quotes the value it got, so every
/// scalar is rejected here by hand, without the value.
struct SecretVisitor;

impl SecretVisitor {
    fn reject<E: de::Error>(found: &str) -> E {
        E::custom(format!(
            "invalid type: found {found}, expected a quoted string (the value is a secret and is not shown)"
        ))
    }
}

impl Visitor<'_> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
        Ok(Secret(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Secret, E> {
        Ok(Secret(v))
    }

    fn visit_char<E: de::Error>(self, v: char) -> Result<Secret, E> {
        Ok(Secret(v.to_string()))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Secret, E> {
        Err(Self::reject("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Secret, E> {
        Err(Self::reject("a number"))
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Secret, E> {
        Err(Self::reject("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Secret, E> {
        Err(Self::reject("a number"))
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Secret, E> {
        Err(Self::reject("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Secret, E> {
        Err(Self::reject("a number"))
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Secret, E> {
        Err(Self::reject("bytes"))
    }
}

impl Config {
    /// Address of the metrics endpoint: `service.metrics_listen`, or else
    /// `127.0.0.1:{runtime.metrics_port}`. Whether it is served at all is
    /// `runtime.enable_metrics`. An out-of-range `metrics_port`, which validation rejects, reads
    /// as the default 9090.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.service.metrics_listen.unwrap_or_else(|| {
            let port = u16::try_from(self.runtime.metrics_port).unwrap_or(DEFAULT_METRICS_PORT);
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
        })
    }

    /// Checks every bound and rule documented on the fields and returns all violations at once
    /// ([`ConfigError::Invalid`]). The violations carry no source; [`load`] adds them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let violations: Vec<ConfigViolation> =
            self.violations().into_iter().map(|p| p.violation).collect();
        if violations.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { violations })
        }
    }

    /// The configuration as TOML for `comfy-reality config print`. Secrets print as
    /// `[REDACTED]` (which validation rejects, so a printed file is never used with a
    /// placeholder credential) and passwords inside URLs as `REDACTED`. Without secrets the
    /// output loads back into an equal configuration.
    pub fn to_redacted_toml(&self) -> String {
        // Cannot fail: every field is a string, number, boolean, array or table, maps have
        // string keys, and `None` fields are skipped.
        toml::to_string(self).expect("a Config is always representable as TOML")
    }

    fn violations(&self) -> Vec<Pending> {
        let mut out = Collector::default();
        self.check_service(&mut out);
        self.check_runtime(&mut out);
        self.check_executor(&mut out);
        self.check_scheduling(&mut out);
        self.check_events(&mut out);
        self.check_store(&mut out);
        self.check_servers(&mut out);
        out.0
    }

    fn check_service(&self, out: &mut Collector) {
        let service = &self.service;
        if service.data_dir.as_os_str().is_empty() {
            out.push("service.data_dir", "must not be empty");
        }
        check_seconds(
            out,
            "service.shutdown_grace_seconds",
            service.shutdown_grace_seconds,
        );
        if service.max_request_bytes < MIN_REQUEST_BYTES {
            out.push(
                "service.max_request_bytes",
                format!(
                    "must be at least {MIN_REQUEST_BYTES}, got {}",
                    service.max_request_bytes
                ),
            );
        }
        let metrics = self.metrics_addr();
        // An out-of-range metrics_port is reported on its own; its fallback must not clash too.
        let metrics_known = service.metrics_listen.is_some()
            || u16::try_from(self.runtime.metrics_port).is_ok_and(|port| port != 0);
        if self.runtime.enable_metrics
            && metrics_known
            && metrics == service.listen
            && metrics.port() != 0
        {
            let key = if service.metrics_listen.is_some() {
                "service.metrics_listen"
            } else {
                "runtime.metrics_port"
            };
            out.push_blaming(
                key,
                format!(
                    "the metrics endpoint would share {metrics} with service.listen; choose another address"
                ),
                &[key, "service.listen"],
            );
        }
    }

    fn check_runtime(&self, out: &mut Collector) {
        let runtime = &self.runtime;
        if runtime.max_concurrent_tasks < 1 {
            out.push(
                "runtime.max_concurrent_tasks",
                format!("must be at least 1, got {}", runtime.max_concurrent_tasks),
            );
        }
        check_seconds(
            out,
            "runtime.task_timeout_seconds",
            runtime.task_timeout_seconds,
        );
        check_seconds(
            out,
            "runtime.task_retry_delay_seconds",
            runtime.task_retry_delay_seconds,
        );
        let queue_url_missing = runtime
            .queue_url
            .as_deref()
            .is_none_or(|url| url.trim().is_empty());
        let needs_broker = matches!(runtime.queue_type, QueueType::Redis | QueueType::Rabbitmq);
        if needs_broker && queue_url_missing {
            out.push_blaming(
                "runtime.queue_url",
                format!(
                    "is required when runtime.queue_type is {}",
                    runtime.queue_type
                ),
                &["runtime.queue_url", "runtime.queue_type"],
            );
        }
        if runtime
            .log_file
            .as_ref()
            .is_some_and(|path| path.as_os_str().is_empty())
        {
            out.push(
                "runtime.log_file",
                "must not be empty; leave it out to log to standard output",
            );
        }
        if !(1..=i64::from(u16::MAX)).contains(&runtime.metrics_port) {
            out.push(
                "runtime.metrics_port",
                format!("must be between 1 and 65535, got {}", runtime.metrics_port),
            );
        }
        check_seconds(
            out,
            "runtime.ui_update_interval_seconds",
            runtime.ui_update_interval_seconds,
        );
    }

    fn check_events(&self, out: &mut Collector) {
        let events = &self.events;
        if events.history_len < 16 {
            out.push(
                "events.history_len",
                format!("must be at least 16, got {}", events.history_len),
            );
        }
        if !(1..=65_536).contains(&events.subscriber_buffer) {
            out.push(
                "events.subscriber_buffer",
                format!(
                    "must be between 1 and 65536, got {}",
                    events.subscriber_buffer
                ),
            );
        }
        check_seconds(out, "events.heartbeat_seconds", events.heartbeat_seconds);
    }

    fn check_scheduling(&self, out: &mut Collector) {
        let scheduling = &self.scheduling;
        if scheduling.max_queue_len < 1 {
            out.push("scheduling.max_queue_len", "must be at least 1, got 0");
        }
        if scheduling.max_workflow_nodes < 1 {
            out.push("scheduling.max_workflow_nodes", "must be at least 1, got 0");
        }
        if scheduling.max_workflow_bytes < 1024 {
            out.push(
                "scheduling.max_workflow_bytes",
                format!(
                    "must be at least 1024, got {}",
                    scheduling.max_workflow_bytes
                ),
            );
        }
        for (key, value) in [
            (
                "scheduling.retry_max_delay_seconds",
                scheduling.retry_max_delay_seconds,
            ),
            (
                "scheduling.stall_timeout_seconds",
                scheduling.stall_timeout_seconds,
            ),
            (
                "scheduling.probe_interval_seconds",
                scheduling.probe_interval_seconds,
            ),
        ] {
            check_seconds(out, key, value);
        }
        if scheduling
            .artifact_dir
            .as_ref()
            .is_some_and(|path| path.as_os_str().is_empty())
        {
            out.push(
                "scheduling.artifact_dir",
                "must not be empty; leave it out to use <service.data_dir>/artifacts",
            );
        }
    }

    fn check_store(&self, out: &mut Collector) {
        let store = &self.store;
        if store
            .path
            .as_ref()
            .is_some_and(|path| path.as_os_str().is_empty())
        {
            out.push(
                "store.path",
                "must not be empty; leave it out to use <service.data_dir>/comfy-reality.db",
            );
        }
        if store.retention_days < 1 {
            out.push("store.retention_days", "must be at least 1, got 0");
        }
        if store.max_events < 1 {
            out.push("store.max_events", "must be at least 1, got 0");
        }
        check_seconds(
            out,
            "store.compaction_interval_seconds",
            store.compaction_interval_seconds,
        );
    }

    /// The store's database file: `store.path`, else `<service.data_dir>/comfy-reality.db`.
    pub fn store_path(&self) -> PathBuf {
        self.store
            .path
            .clone()
            .unwrap_or_else(|| self.service.data_dir.join(STORE_FILE_NAME))
    }

    /// Where artifacts are kept: `scheduling.artifact_dir`, else `<service.data_dir>/artifacts`.
    pub fn artifact_dir(&self) -> PathBuf {
        self.scheduling
            .artifact_dir
            .clone()
            .unwrap_or_else(|| self.service.data_dir.join("artifacts"))
    }

    fn check_executor(&self, out: &mut Collector) {
        let executor = &self.executor;
        if let Some(mb) = executor.max_memory_mb
            && mb < MIN_MEMORY_MB
        {
            out.push(
                "executor.max_memory_mb",
                format!("must be at least {MIN_MEMORY_MB}, got {mb}"),
            );
        }
        if let Some(percent) = executor.max_cpu_percent
            && !(0.0..=100.0).contains(&percent)
        {
            out.push(
                "executor.max_cpu_percent",
                format!("must be between 0 and 100, got {percent}"),
            );
        }
        if !(0.1..=1.0).contains(&executor.gpu_memory_fraction) {
            out.push(
                "executor.gpu_memory_fraction",
                format!(
                    "must be between 0.1 and 1.0, got {}",
                    executor.gpu_memory_fraction
                ),
            );
        }
    }

    fn check_servers(&self, out: &mut Collector) {
        if self.servers.is_empty() {
            out.push("servers", "at least one server is required");
        }
        let mut urls: BTreeMap<String, usize> = BTreeMap::new();
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, server) in self.servers.iter().enumerate() {
            let key = |field: &str| format!("servers[{i}].{field}");
            match check_server_url(&server.url) {
                Ok(normalized) => {
                    if let Some(first) = urls.insert(normalized, i) {
                        out.push_blaming(
                            key("url"),
                            format!("duplicates servers[{first}].url"),
                            &["servers"],
                        );
                    }
                }
                Err(message) => out.push_blaming(key("url"), message, &["servers"]),
            }
            if let Some(name) = &server.name {
                if name.trim().is_empty() {
                    out.push_blaming(key("name"), "must not be blank", &["servers"]);
                } else if let Some(first) = names.insert(name, i) {
                    out.push_blaming(
                        key("name"),
                        format!("duplicates servers[{first}].name"),
                        &["servers"],
                    );
                }
            }
            for (field, value) in [
                ("timeout_seconds", server.timeout_seconds),
                ("silence_timeout_seconds", server.silence_timeout_seconds),
                (
                    "reconnect_max_delay_seconds",
                    server.reconnect_max_delay_seconds,
                ),
            ] {
                if !seconds_ok(value) {
                    out.push_blaming(key(field), seconds_message(value), &["servers"]);
                }
            }
            for (field, secret) in [
                ("api_key", &server.api_key),
                ("auth_header", &server.auth_header),
            ] {
                let Some(secret) = secret else { continue };
                if secret.expose().is_empty() {
                    out.push_blaming(key(field), "must not be empty", &["servers"]);
                } else if secret.expose() == REDACTED {
                    out.push_blaming(
                        key(field),
                        "holds the [REDACTED] placeholder of a printed configuration; set the real value",
                        &["servers"],
                    );
                }
            }
        }
    }
}

/// Checks a server URL; on success returns its normalized form, used to find duplicates.
fn check_server_url(raw: &str) -> Result<String, String> {
    let url = url::Url::parse(raw).map_err(|e| {
        format!(
            "must be an http or https url with a host: {}",
            e.to_string().to_lowercase()
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "must be an http or https url, got scheme `{}`",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must be an http or https url with a host".into());
    }
    Ok(url.into())
}

fn seconds_ok(value: f64) -> bool {
    value > 0.0 && Duration::try_from_secs_f64(value).is_ok_and(|d| !d.is_zero())
}

fn seconds_message(value: f64) -> String {
    format!("must be a finite number of seconds greater than 0, got {value}")
}

fn check_seconds(out: &mut Collector, key: &str, value: f64) {
    if !seconds_ok(value) {
        out.push(key, seconds_message(value));
    }
}

fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value).unwrap_or(Duration::ZERO)
}

/// A violation found by validation, with the figment keys whose source explains it, tried in
/// order (the value at fault may be a default; the key that made it wrong has a source).
struct Pending {
    violation: ConfigViolation,
    lookups: Vec<String>,
}

#[derive(Default)]
struct Collector(Vec<Pending>);

impl Collector {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let key = key.into();
        let lookups = vec![key.clone()];
        self.push_pending(key, message.into(), lookups);
    }

    fn push_blaming(
        &mut self,
        key: impl Into<String>,
        message: impl Into<String>,
        lookups: &[&str],
    ) {
        let lookups = lookups.iter().map(|k| (*k).to_owned()).collect();
        self.push_pending(key.into(), message.into(), lookups);
    }

    fn push_pending(&mut self, key: String, message: String, lookups: Vec<String>) {
        self.0.push(Pending {
            violation: ConfigViolation {
                key,
                message,
                source: None,
            },
            lookups,
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Redaction
// ---------------------------------------------------------------------------------------------

/// `raw` with any password replaced by `REDACTED`. A string that does not parse as a URL but
/// looks like it has credentials (`scheme://...@host`) loses everything before the `@`.
fn redact_url(raw: &str) -> Cow<'_, str> {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_none() {
                return Cow::Borrowed(raw);
            }
            // Cannot fail: a URL that has a password can have one.
            let _ = url.set_password(Some(URL_PASSWORD_PLACEHOLDER));
            Cow::Owned(url.into())
        }
        Err(_) => match raw.split_once("://") {
            Some((scheme, rest)) if rest.contains('@') => {
                let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
                Cow::Owned(format!("{scheme}://{URL_PASSWORD_PLACEHOLDER}@{host}"))
            }
            _ => Cow::Borrowed(raw),
        },
    }
}

fn serialize_redacted_url<T: AsRef<str>, S: Serializer>(
    url: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&redact_url(url.as_ref()))
}

fn serialize_redacted_opt_url<S: Serializer>(
    url: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match url {
        Some(url) => serializer.serialize_some(&*redact_url(url)),
        None => serializer.serialize_none(),
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// One problem with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigViolation {
    /// Dotted key of the offending value, e.g. `runtime.max_concurrent_tasks` or
    /// `servers[1].url`; empty when the problem is not tied to a key.
    pub key: String,
    /// What is wrong, lowercase, without the key; never contains a secret.
    pub message: String,
    /// Where the value came from, e.g. `TOML file /etc/comfy-reality.toml`,
    /// `environment variable COMFY_REALITY__RUNTIME__METRICS_PORT` or
    /// `command-line flag --log-level`; `None` for defaults and for [`Config::validate`].
    pub source: Option<String>,
}

impl fmt::Display for ConfigViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, " (from {source})")?;
        }
        Ok(())
    }
}

/// Why a configuration could not be loaded. Every variant has the code `ConfigurationError`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named with `--config` does not exist.
    #[error("configuration file {} not found", path.display())]
    FileNotFound {
        /// The path as given.
        path: PathBuf,
    },
    /// The file exists but could not be read.
    #[error("configuration file {} could not be read", path.display())]
    FileUnreadable {
        /// The path as given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML. The message names no value, so no secret can leak from it.
    #[error("configuration file {} is not valid toml at line {line}, column {column}: {message}", path.display())]
    FileSyntax {
        /// The path as given.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What the TOML parser expected.
        message: String,
    },
    /// A value has the wrong type, an enum value is unknown, or a key is unknown.
    #[error("configuration is malformed: {}", join(violations))]
    Parse {
        /// Each problem with its key and source.
        violations: Vec<ConfigViolation>,
        /// The underlying figment error, for callers that want its details.
        error: Box<figment::Error>,
    },
    /// Values parsed but break a bound or rule; lists every violation.
    #[error("configuration is invalid: {}", join(violations))]
    Invalid {
        /// Each violation with its key and, when loaded, its source.
        violations: Vec<ConfigViolation>,
    },
}

impl ConfigError {
    /// The seed's error code, `ConfigurationError`, for `google.rpc.ErrorInfo` and exit reports.
    pub fn code(&self) -> &'static str {
        ERROR_CODE
    }

    /// The per-key problems, for `BadRequest` field violations; empty for file errors.
    pub fn violations(&self) -> &[ConfigViolation] {
        match self {
            Self::Parse { violations, .. } | Self::Invalid { violations } => violations,
            Self::FileNotFound { .. } | Self::FileUnreadable { .. } | Self::FileSyntax { .. } => {
                &[]
            }
        }
    }
}

fn join(violations: &[ConfigViolation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// Where [`load`] reads configuration from, beyond the built-in defaults.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// TOML file given with `--config`; it must exist. `None` reads no file.
    pub file: Option<PathBuf>,
    /// Whether `COMFY_REALITY__SECTION__KEY` environment variables are read. Default: false.
    pub env: bool,
    /// Values given as command-line flags; they win over everything else.
    pub overrides: CliOverrides,
}

/// Configuration given as command-line flags. `None` (or an empty `comfyui`) leaves the value
/// from the lower layers alone. Errors name the flag (`--listen`, `--metrics-listen`,
/// `--comfyui`, `--data-dir`, `--log-level`, `--log-format`).
#[derive(Clone, Default)]
pub struct CliOverrides {
    /// `--listen`: `service.listen`.
    pub listen: Option<SocketAddr>,
    /// `--metrics-listen`: `service.metrics_listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// `--comfyui`: when non-empty, replaces `servers` with one server per URL, each with default
    /// settings.
    pub comfyui: Vec<String>,
    /// `--data-dir`: `service.data_dir`.
    pub data_dir: Option<PathBuf>,
    /// `--log-level`: `runtime.log_level`, spelled as in the file.
    pub log_level: Option<String>,
    /// `--log-format`: `runtime.log_format`, spelled as in the file.
    pub log_format: Option<String>,
}

// Written by hand so that a password inside a `--comfyui` URL is never printed.
impl fmt::Debug for CliOverrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let comfyui: Vec<Cow<'_, str>> = self.comfyui.iter().map(|u| redact_url(u)).collect();
        f.debug_struct("CliOverrides")
            .field("listen", &self.listen)
            .field("metrics_listen", &self.metrics_listen)
            .field("comfyui", &comfyui)
            .field("data_dir", &self.data_dir)
            .field("log_level", &self.log_level)
            .field("log_format", &self.log_format)
            .finish()
    }
}

/// Loads and validates the configuration: defaults, then `sources.file`, then (when
/// `sources.env`) the process's `COMFY_REALITY__*` environment variables, then
/// `sources.overrides`. Each layer wins over the ones before it; a `[[servers]]` list replaces
/// the lower layer's list as a whole.
pub fn load(sources: &ConfigSources) -> Result<Config, ConfigError> {
    let env = if sources.env {
        process_env()?
    } else {
        Vec::new()
    };
    load_from(sources.file.as_deref(), env, &sources.overrides)
}

/// [`load`] with the environment given as `(name, value)` pairs instead of read from the
/// process, so that tests do not share process state. Pairs whose name does not start with
/// [`ENV_PREFIX`] (case-insensitively) are ignored.
pub fn load_from<I, K, V>(
    file: Option<&Path>,
    env: I,
    overrides: &CliOverrides,
) -> Result<Config, ConfigError>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut figment = Figment::new();
    if let Some(path) = file {
        figment = figment.merge(file_provider(path)?);
    }
    let vars = env
        .into_iter()
        .filter(|(name, _)| env_key(name.as_ref()).is_some())
        .map(|(name, value)| (name.as_ref().to_owned(), value.as_ref().to_owned()))
        .collect();
    figment = figment
        .merge(EnvProvider { vars })
        .merge(CliProvider::new(overrides)?);

    let config: Config = figment.extract().map_err(|error| ConfigError::Parse {
        violations: figment_violations(&error),
        error: Box::new(error),
    })?;

    let violations: Vec<ConfigViolation> = config
        .violations()
        .into_iter()
        .map(|pending| {
            let source = pending
                .lookups
                .iter()
                .find_map(|key| source_of(&figment, key));
            ConfigViolation {
                source,
                ..pending.violation
            }
        })
        .collect();
    if violations.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid { violations })
    }
}

/// The process's `COMFY_REALITY__*` variables. A value that is not UTF-8 is an error: it cannot
/// be represented, and skipping it would silently change the configuration.
fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    let mut violations = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let Some(key) = env_key(name) else { continue };
        match value.into_string() {
            Ok(value) => vars.push((name.to_owned(), value)),
            Err(_) => violations.push(ConfigViolation {
                key,
                message: "value is not valid utf-8".into(),
                source: Some(format!("environment variable {name}")),
            }),
        }
    }
    if violations.is_empty() {
        Ok(vars)
    } else {
        Err(ConfigError::Invalid { violations })
    }
}

/// The dotted key an environment variable names (`COMFY_REALITY__RUNTIME__LOG_LEVEL` ->
/// `runtime.log_level`), or `None` when it lacks the prefix.
fn env_key(name: &str) -> Option<String> {
    let prefix = name.get(..ENV_PREFIX.len())?;
    if !prefix.eq_ignore_ascii_case(ENV_PREFIX) {
        return None;
    }
    Some(
        name[ENV_PREFIX.len()..]
            .to_ascii_lowercase()
            .split(ENV_SEPARATOR)
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// The environment variable that sets `keys`. Arrays cannot be indexed from the environment,
/// so the name stops before the first index (`servers.0.url` -> `COMFY_REALITY__SERVERS`).
fn env_var_name(_: &Profile, keys: &[&str]) -> String {
    let parts: Vec<String> = keys
        .iter()
        .take_while(|k| !k.bytes().all(|b| b.is_ascii_digit()))
        .map(|k| k.to_ascii_uppercase())
        .collect();
    format!("{ENV_PREFIX}{}", parts.join(ENV_SEPARATOR))
}

/// The flag that sets `keys`.
fn cli_flag_name(_: &Profile, keys: &[&str]) -> String {
    match keys {
        ["service", "listen", ..] => "--listen".into(),
        ["service", "metrics_listen", ..] => "--metrics-listen".into(),
        ["service", "data_dir", ..] => "--data-dir".into(),
        ["runtime", "log_level", ..] => "--log-level".into(),
        ["runtime", "log_format", ..] => "--log-format".into(),
        ["servers", ..] => "--comfyui".into(),
        _ => keys.join("."),
    }
}

/// Reads and parses the file here rather than through figment, to tell a missing file from an
/// unreadable one and to report syntax errors without the offending line (which may hold a
/// secret).
fn file_provider(path: &Path) -> Result<impl Provider, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ConfigError::FileNotFound { path: path.into() },
        _ => ConfigError::FileUnreadable {
            path: path.into(),
            source,
        },
    })?;
    if let Err(error) = toml::from_str::<toml::Table>(&text) {
        let offset = error.span().map_or(0, |span| span.start);
        let (line, column) = line_column(&text, offset);
        return Err(ConfigError::FileSyntax {
            path: path.into(),
            line,
            column,
            message: error.message().trim().to_lowercase().replace('\n', "; "),
        });
    }
    Ok(Described {
        inner: Toml::string(&text),
        metadata: Metadata::from("TOML file", path),
    })
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit_once('\n')
        .map_or(before, |(_, last)| last)
        .chars()
        .count()
        + 1;
    (line, column)
}

/// A provider with metadata of our choosing, so that every source names itself the same way.
struct Described<P> {
    inner: P,
    metadata: Metadata,
}

impl<P: Provider> Provider for Described<P> {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        self.inner.data()
    }
}

/// `COMFY_REALITY__SECTION__KEY` variables, parsed like figment's `Env` (values are read as
/// TOML-like literals: `4` is a number, `true` a boolean, `[{url = "..."}]` an array).
struct EnvProvider {
    vars: Vec<(String, String)>,
}

impl Provider for EnvProvider {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_SOURCE_NAME).interpolater(env_var_name)
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        let mut vars = self.vars.clone();
        // Sorted so that the result does not depend on the environment's order.
        vars.sort();
        let mut dict = Dict::new();
        for (name, value) in &vars {
            let Some(key) = env_key(name) else { continue };
            let path: Vec<&str> = key.split('.').collect();
            if path.iter().any(|part| part.is_empty()) {
                return Err(format!(
                    "environment variable {name} does not name a configuration key; expected {ENV_PREFIX}SECTION__KEY"
                )
                .into());
            }
            let Ok(value) = value.parse::<Value>();
            insert(&mut dict, &path, value);
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// Command-line flags as a figment layer, so that their errors name the flag.
struct CliProvider {
    dict: Dict,
}

impl CliProvider {
    fn new(overrides: &CliOverrides) -> Result<Self, ConfigError> {
        let mut dict = Dict::new();
        if let Some(listen) = overrides.listen {
            insert(&mut dict, &["service", "listen"], listen.to_string().into());
        }
        if let Some(addr) = overrides.metrics_listen {
            insert(
                &mut dict,
                &["service", "metrics_listen"],
                addr.to_string().into(),
            );
        }
        if let Some(dir) = &overrides.data_dir {
            // Configuration values are UTF-8 (TOML and figment have no other strings).
            let Some(dir) = dir.to_str() else {
                return Err(ConfigError::Invalid {
                    violations: vec![ConfigViolation {
                        key: "service.data_dir".into(),
                        message: "path is not valid utf-8".into(),
                        source: Some("command-line flag --data-dir".into()),
                    }],
                });
            };
            insert(&mut dict, &["service", "data_dir"], dir.into());
        }
        if let Some(level) = &overrides.log_level {
            insert(&mut dict, &["runtime", "log_level"], level.as_str().into());
        }
        if let Some(format) = &overrides.log_format {
            insert(
                &mut dict,
                &["runtime", "log_format"],
                format.as_str().into(),
            );
        }
        if !overrides.comfyui.is_empty() {
            let servers: Vec<Value> = overrides
                .comfyui
                .iter()
                .map(|url| {
                    let mut server = Dict::new();
                    server.insert("url".into(), url.as_str().into());
                    Value::from(server)
                })
                .collect();
            dict.insert("servers".into(), servers.into());
        }
        Ok(Self { dict })
    }
}

impl Provider for CliProvider {
    fn metadata(&self) -> Metadata {
        Metadata::named("command-line flag").interpolater(cli_flag_name)
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// Sets `path` in `dict` to `value`, creating (or replacing non-table values with) the tables
/// on the way.
fn insert(dict: &mut Dict, path: &[&str], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert((*last).to_owned(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry((*first).to_owned())
                .or_insert_with(|| Dict::new().into());
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            } else {
                let mut inner = Dict::new();
                insert(&mut inner, rest, value);
                *entry = inner.into();
            }
        }
    }
}

/// Every error in a figment error chain as a violation naming the key and the source.
fn figment_violations(error: &figment::Error) -> Vec<ConfigViolation> {
    error
        .clone()
        .into_iter()
        .map(|e| {
            let path: Vec<&str> = e.path.iter().map(String::as_str).collect();
            let mut message = match &e.kind {
                Kind::UnknownField(_, expected) => {
                    format!("unknown key; expected {}", OneOf(expected))
                }
                Kind::UnknownVariant(found, expected) => {
                    format!("unknown value `{found}`; expected {}", OneOf(expected))
                }
                kind => kind.to_string(),
            };
            let from_env = e.metadata.as_ref().is_some_and(|md| md.name == ENV_SOURCE_NAME);
            if from_env && path == ["servers"] {
                // `COMFY_REALITY__SERVERS__0__URL` makes a table, not a list.
                message.push_str(&format!(
                    "; set the whole list in {ENV_PREFIX}SERVERS, e.g. [{{url = \"http://host:8188\"}}]"
                ));
            }
            ConfigViolation {
                key: display_key(&path),
                message,
                source: e.metadata.as_ref().map(|md| describe_source(md, &path)),
            }
        })
        .collect()
}

/// Where the value at dotted `key` came from, if a source (not a default) set it. Arrays are
/// replaced whole, so a key under `servers` is looked up as `servers`.
fn source_of(figment: &Figment, key: &str) -> Option<String> {
    let key = if key.starts_with("servers") {
        "servers"
    } else {
        key
    };
    let metadata = figment.find_metadata(key)?;
    let path: Vec<&str> = key.split('.').collect();
    Some(describe_source(metadata, &path))
}

fn describe_source(metadata: &Metadata, path: &[&str]) -> String {
    match metadata.source.as_ref().and_then(|s| s.file_path()) {
        Some(file) => format!("{} {}", metadata.name, file.display()),
        None => format!(
            "{} {}",
            metadata.name,
            metadata.interpolate(&Profile::Default, path)
        ),
    }
}

/// `["servers", "1", "url"]` -> `servers[1].url`.
fn display_key(path: &[&str]) -> String {
    let mut key = String::new();
    for part in path {
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            key.push_str(&format!("[{part}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(part);
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_ENV: [(&str, &str); 0] = [];

    fn write_file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("comfy-reality.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn load_toml(text: &str) -> (Result<Config, ConfigError>, PathBuf, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(&dir, text);
        (
            load_from(Some(&path), NO_ENV, &CliOverrides::default()),
            path,
            dir,
        )
    }

    fn load_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        load_from(None, vars.iter().copied(), &CliOverrides::default())
    }

    fn only_violation(error: &ConfigError) -> &ConfigViolation {
        let violations = error.violations();
        assert_eq!(violations.len(), 1, "{error}");
        &violations[0]
    }

    #[test]
    fn defaults_equal_the_seed() {
        let c = Config::default();
        assert_eq!(c.service.listen, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(c.service.metrics_listen, None);
        assert_eq!(c.service.data_dir, PathBuf::from("data"));
        assert_eq!(c.service.shutdown_grace_seconds, 10.0);
        assert_eq!(c.service.max_request_bytes, 32 * 1024 * 1024);

        let r = &c.runtime;
        assert_eq!(r.max_concurrent_tasks, 10);
        assert_eq!(r.task_timeout_seconds, 300.0);
        assert_eq!(r.task_retry_delay_seconds, 5.0);
        // Not the seed's `memory`: durable by default.
        assert_eq!(r.queue_type, QueueType::Sqlite);
        assert_eq!(r.queue_url, None);
        assert_eq!(r.log_level, LogLevel::Info);
        assert_eq!(r.log_format, LogFormat::Json);
        assert_eq!(r.log_file, None);
        assert!(r.enable_metrics);
        assert_eq!(r.metrics_port, 9090);
        assert!(r.enable_ui);
        assert_eq!(r.ui_update_interval_seconds, 0.5);

        let e = &c.executor;
        assert_eq!(e.max_memory_mb, None);
        assert_eq!(e.max_cpu_percent, None);
        assert_eq!(e.gpu_memory_fraction, 0.9);
        assert!(e.enable_gpu);
        assert_eq!(e.prefer_gpu_types, ["cuda", "mps", "directml"]);
        assert!(e.enable_optimization);
        assert_eq!(e.optimization_level, OptimizationLevel::O2);
        assert!(e.enable_cache);
        assert_eq!(e.cache_size_mb, 1000);
        assert_eq!(e.cache_ttl_seconds, 3600);

        let st = &c.store;
        assert_eq!(st.path, None);
        assert_eq!(
            c.store_path(),
            PathBuf::from("data").join("comfy-reality.db")
        );
        assert_eq!(st.retention_days, 30);
        assert_eq!(st.retention(), Duration::from_secs(30 * 86_400));
        assert_eq!(st.max_events, 1_000_000);
        assert_eq!(st.synchronous, StoreSynchronous::Normal);
        assert_eq!(st.compaction_interval(), Duration::from_secs(3600));

        assert_eq!(c.servers.len(), 1);
        let s = &c.servers[0];
        assert_eq!(s.url, "http://127.0.0.1:8188");
        assert_eq!(s.timeout_seconds, 30.0);
        assert_eq!(s.max_retries, 3);
        assert!(s.verify_ssl);
        assert!(s.api_key.is_none() && s.auth_header.is_none() && s.name.is_none());
        assert_eq!(s.silence_timeout_seconds, 30.0);
        assert_eq!(s.reconnect_max_delay_seconds, 30.0);

        assert_eq!(c.metrics_addr(), "127.0.0.1:9090".parse().unwrap());
        c.validate().unwrap();
        // No file, no env, no flags: exactly the defaults.
        assert_eq!(load(&ConfigSources::default()).unwrap(), c);
    }

    #[test]
    fn enums_use_the_seed_spelling() {
        let json = serde_json::to_value(Config::default()).unwrap();
        assert_eq!(json["runtime"]["queue_type"], "sqlite");
        assert_eq!(json["runtime"]["log_level"], "info");
        assert_eq!(json["runtime"]["log_format"], "json");
        assert_eq!(json["executor"]["optimization_level"], "O2");
        let (config, _, _dir) = load_toml(
            "[runtime]\nlog_level = \"critical\"\nlog_format = \"text\"\n\
             [executor]\noptimization_level = \"O3\"\n",
        );
        let config = config.unwrap();
        assert_eq!(config.runtime.log_level, LogLevel::Critical);
        assert_eq!(config.runtime.log_level.tracing_directive(), "error");
        assert_eq!(config.runtime.log_format, LogFormat::Text);
        assert_eq!(config.executor.optimization_level, OptimizationLevel::O3);
    }

    type Mutation = fn(&mut Config);

    /// (key, a value just past the bound, the boundary value itself).
    fn bounds() -> Vec<(&'static str, Mutation, Mutation)> {
        vec![
            (
                "service.shutdown_grace_seconds",
                |c| c.service.shutdown_grace_seconds = 0.0,
                |c| c.service.shutdown_grace_seconds = 0.001,
            ),
            (
                "service.max_request_bytes",
                |c| c.service.max_request_bytes = 1023,
                |c| c.service.max_request_bytes = 1024,
            ),
            (
                "service.data_dir",
                |c| c.service.data_dir = PathBuf::new(),
                |c| c.service.data_dir = PathBuf::from("d"),
            ),
            (
                "runtime.max_concurrent_tasks",
                |c| c.runtime.max_concurrent_tasks = 0,
                |c| c.runtime.max_concurrent_tasks = 1,
            ),
            (
                "runtime.task_timeout_seconds",
                |c| c.runtime.task_timeout_seconds = 0.0,
                |c| c.runtime.task_timeout_seconds = 1e-6,
            ),
            (
                "runtime.task_timeout_seconds",
                |c| c.runtime.task_timeout_seconds = -1.0,
                |c| c.runtime.task_timeout_seconds = 86_400.0 * 365.0,
            ),
            (
                "runtime.task_timeout_seconds",
                |c| c.runtime.task_timeout_seconds = f64::NAN,
                |c| c.runtime.task_timeout_seconds = 300.0,
            ),
            (
                "runtime.task_timeout_seconds",
                |c| c.runtime.task_timeout_seconds = f64::INFINITY,
                |c| c.runtime.task_timeout_seconds = 300.0,
            ),
            (
                "runtime.task_retry_delay_seconds",
                |c| c.runtime.task_retry_delay_seconds = 0.0,
                |c| c.runtime.task_retry_delay_seconds = 0.001,
            ),
            (
                "runtime.queue_url",
                |c| c.runtime.queue_type = QueueType::Redis,
                |c| {
                    c.runtime.queue_type = QueueType::Redis;
                    c.runtime.queue_url = Some("redis://localhost:6379".into());
                },
            ),
            (
                "runtime.queue_url",
                |c| {
                    c.runtime.queue_type = QueueType::Rabbitmq;
                    c.runtime.queue_url = Some("  ".into());
                },
                |c| {
                    c.runtime.queue_type = QueueType::Rabbitmq;
                    c.runtime.queue_url = Some("amqp://localhost".into());
                },
            ),
            (
                "runtime.log_file",
                |c| c.runtime.log_file = Some(PathBuf::new()),
                |c| c.runtime.log_file = Some(PathBuf::from("x.log")),
            ),
            (
                "runtime.metrics_port",
                |c| c.runtime.metrics_port = 0,
                |c| c.runtime.metrics_port = 1,
            ),
            (
                "runtime.metrics_port",
                |c| c.runtime.metrics_port = 65536,
                |c| c.runtime.metrics_port = 65535,
            ),
            (
                "runtime.metrics_port",
                |c| c.runtime.metrics_port = -1,
                |c| c.runtime.metrics_port = 9091,
            ),
            (
                "runtime.metrics_port",
                |c| c.service.listen = "127.0.0.1:9090".parse().unwrap(),
                |c| {
                    c.service.listen = "127.0.0.1:9090".parse().unwrap();
                    c.runtime.enable_metrics = false;
                },
            ),
            (
                "service.metrics_listen",
                |c| c.service.metrics_listen = Some(c.service.listen),
                |c| c.service.metrics_listen = Some("127.0.0.1:0".parse().unwrap()),
            ),
            (
                "runtime.ui_update_interval_seconds",
                |c| c.runtime.ui_update_interval_seconds = 0.0,
                |c| c.runtime.ui_update_interval_seconds = 0.01,
            ),
            (
                "executor.max_memory_mb",
                |c| c.executor.max_memory_mb = Some(99),
                |c| c.executor.max_memory_mb = Some(100),
            ),
            (
                "executor.max_cpu_percent",
                |c| c.executor.max_cpu_percent = Some(-0.1),
                |c| c.executor.max_cpu_percent = Some(0.0),
            ),
            (
                "executor.max_cpu_percent",
                |c| c.executor.max_cpu_percent = Some(100.1),
                |c| c.executor.max_cpu_percent = Some(100.0),
            ),
            (
                "executor.max_cpu_percent",
                |c| c.executor.max_cpu_percent = Some(f64::NAN),
                |c| c.executor.max_cpu_percent = Some(50.0),
            ),
            (
                "executor.gpu_memory_fraction",
                |c| c.executor.gpu_memory_fraction = 0.09,
                |c| c.executor.gpu_memory_fraction = 0.1,
            ),
            (
                "executor.gpu_memory_fraction",
                |c| c.executor.gpu_memory_fraction = 1.01,
                |c| c.executor.gpu_memory_fraction = 1.0,
            ),
            (
                "store.path",
                |c| c.store.path = Some(PathBuf::new()),
                |c| c.store.path = Some(PathBuf::from("s.db")),
            ),
            (
                "store.retention_days",
                |c| c.store.retention_days = 0,
                |c| c.store.retention_days = 1,
            ),
            (
                "store.max_events",
                |c| c.store.max_events = 0,
                |c| c.store.max_events = 1,
            ),
            (
                "store.compaction_interval_seconds",
                |c| c.store.compaction_interval_seconds = 0.0,
                |c| c.store.compaction_interval_seconds = 0.001,
            ),
            (
                "servers",
                |c| c.servers.clear(),
                |c| c.servers = vec![ServerConfig::with_url("https://comfy.example:443")],
            ),
            (
                "servers[0].timeout_seconds",
                |c| c.servers[0].timeout_seconds = 0.0,
                |c| c.servers[0].timeout_seconds = 0.001,
            ),
            (
                "servers[0].silence_timeout_seconds",
                |c| c.servers[0].silence_timeout_seconds = 0.0,
                |c| c.servers[0].silence_timeout_seconds = 0.001,
            ),
            (
                "servers[0].silence_timeout_seconds",
                |c| c.servers[0].silence_timeout_seconds = f64::NAN,
                |c| c.servers[0].silence_timeout_seconds = 30.0,
            ),
            (
                "servers[0].reconnect_max_delay_seconds",
                |c| c.servers[0].reconnect_max_delay_seconds = -1.0,
                |c| c.servers[0].reconnect_max_delay_seconds = 0.001,
            ),
            (
                "servers[0].reconnect_max_delay_seconds",
                |c| c.servers[0].reconnect_max_delay_seconds = f64::INFINITY,
                |c| c.servers[0].reconnect_max_delay_seconds = 30.0,
            ),
            (
                "servers[0].url",
                |c| c.servers[0].url = "ftp://comfy.example".into(),
                |c| c.servers[0].url = "https://comfy.example".into(),
            ),
            (
                "servers[0].url",
                |c| c.servers[0].url = "not a url".into(),
                |c| c.servers[0].url = "http://10.0.0.1:8188/".into(),
            ),
            (
                "servers[0].url",
                |c| c.servers[0].url = "unix:/run/comfy.sock".into(),
                |c| c.servers[0].url = "http://[::1]:8188".into(),
            ),
            (
                "servers[1].url",
                |c| {
                    c.servers
                        .push(ServerConfig::with_url("http://127.0.0.1:8188/"))
                },
                |c| {
                    c.servers
                        .push(ServerConfig::with_url("http://127.0.0.1:8189"))
                },
            ),
            (
                "servers[1].name",
                |c| {
                    c.servers[0].name = Some("gpu".into());
                    c.servers.push(ServerConfig::with_url("http://b:1"));
                    c.servers[1].name = Some("gpu".into());
                },
                |c| {
                    c.servers[0].name = Some("gpu".into());
                    c.servers.push(ServerConfig::with_url("http://b:1"));
                    c.servers[1].name = Some("gpu2".into());
                },
            ),
            (
                "servers[0].api_key",
                |c| c.servers[0].api_key = Some(Secret::new("")),
                |c| c.servers[0].api_key = Some(Secret::new("k")),
            ),
            (
                "servers[0].auth_header",
                |c| c.servers[0].auth_header = Some(Secret::new(REDACTED)),
                |c| c.servers[0].auth_header = Some(Secret::new("Bearer x")),
            ),
        ]
    }

    #[test]
    fn every_bound_rejects_past_it_and_accepts_at_it() {
        for (key, violate, boundary) in bounds() {
            let mut bad = Config::default();
            violate(&mut bad);
            let error = bad
                .validate()
                .expect_err(&format!("{key} should be rejected"));
            assert_eq!(error.code(), "ConfigurationError");
            let violation = only_violation(&error);
            assert_eq!(violation.key, key, "{error}");
            assert!(error.to_string().contains(key), "{error}");

            let mut good = Config::default();
            boundary(&mut good);
            if let Err(error) = good.validate() {
                panic!("{key} boundary should be accepted: {error}");
            }
        }
    }

    #[test]
    fn server_socket_timings_load_and_are_checked() {
        let (result, _, _dir) = load_toml(
            "[[servers]]\nurl = \"http://a:1\"\nsilence_timeout_seconds = 0.25\n\
             reconnect_max_delay_seconds = 5\n",
        );
        let c = result.unwrap();
        assert_eq!(c.servers[0].silence_timeout(), Duration::from_millis(250));
        assert_eq!(c.servers[0].reconnect_max_delay(), Duration::from_secs(5));

        let (result, path, _dir) = load_toml("[[servers]]\nsilence_timeout_seconds = 0\n");
        let error = result.unwrap_err();
        let violation = only_violation(&error);
        assert_eq!(violation.key, "servers[0].silence_timeout_seconds");
        assert_eq!(
            violation.source.as_deref(),
            Some(format!("TOML file {}", path.display()).as_str())
        );
    }

    #[test]
    fn validation_collects_every_violation() {
        let mut c = Config::default();
        c.runtime.max_concurrent_tasks = 0;
        c.runtime.metrics_port = 70_000;
        c.executor.gpu_memory_fraction = 2.0;
        c.servers[0].url = "nope".into();
        let error = c.validate().unwrap_err();
        let keys: Vec<&str> = error.violations().iter().map(|v| v.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "runtime.max_concurrent_tasks",
                "runtime.metrics_port",
                "executor.gpu_memory_fraction",
                "servers[0].url",
            ]
        );
        assert!(matches!(error, ConfigError::Invalid { .. }));
    }

    #[test]
    fn store_section_loads_from_file_and_environment() {
        let (result, _, _dir) = load_toml(
            "[service]\ndata_dir = \"/srv/cr\"\n\
             [store]\nretention_days = 7\nmax_events = 5000\nsynchronous = \"full\"\n\
             compaction_interval_seconds = 60\n",
        );
        let config = result.unwrap();
        assert_eq!(
            config.store_path(),
            PathBuf::from("/srv/cr/comfy-reality.db")
        );
        assert_eq!(config.store.retention_days, 7);
        assert_eq!(config.store.max_events, 5000);
        assert_eq!(config.store.synchronous, StoreSynchronous::Full);
        assert_eq!(config.store.compaction_interval(), Duration::from_secs(60));

        let config = load_env(&[
            ("COMFY_REALITY__STORE__PATH", "/var/lib/cr/state.db"),
            ("COMFY_REALITY__STORE__SYNCHRONOUS", "full"),
        ])
        .unwrap();
        assert_eq!(config.store_path(), PathBuf::from("/var/lib/cr/state.db"));
        assert_eq!(config.store.synchronous, StoreSynchronous::Full);

        let (result, _, _dir) = load_toml("[store]\nsynchronous = \"extra\"\n");
        assert!(
            result
                .unwrap_err()
                .to_string()
                .contains("store.synchronous")
        );
        let (result, _, _dir) = load_toml("[store]\nretention = 3\n");
        assert!(result.unwrap_err().to_string().contains("store.retention"));
    }

    #[test]
    fn sqlite_and_memory_need_no_queue_url() {
        for queue_type in ["sqlite", "memory"] {
            let (result, _, _dir) =
                load_toml(&format!("[runtime]\nqueue_type = \"{queue_type}\"\n"));
            assert_eq!(result.unwrap().runtime.queue_type.as_str(), queue_type);
        }
    }

    #[test]
    fn queue_url_is_required_for_redis_and_blames_the_queue_type_source() {
        let (result, path, _dir) = load_toml("[runtime]\nqueue_type = \"redis\"\n");
        let error = result.unwrap_err();
        let violation = only_violation(&error);
        assert_eq!(violation.key, "runtime.queue_url");
        assert!(violation.message.contains("redis"), "{error}");
        assert_eq!(
            violation.source.as_deref(),
            Some(format!("TOML file {}", path.display()).as_str())
        );

        let (result, _, _dir) =
            load_toml("[runtime]\nqueue_type = \"redis\"\nqueue_url = \"redis://q:6379\"\n");
        assert_eq!(
            result.unwrap().runtime.queue_url.as_deref(),
            Some("redis://q:6379")
        );
    }

    #[test]
    fn layers_apply_in_order_defaults_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(
            &dir,
            r#"
            [service]
            listen = "0.0.0.0:6000"
            [runtime]
            max_concurrent_tasks = 2
            task_timeout_seconds = 60
            log_level = "debug"
            [[servers]]
            url = "http://file-a:8188"
            [[servers]]
            url = "http://file-b:8188"
            max_retries = 7
            "#,
        );
        let env = [
            ("COMFY_REALITY__RUNTIME__MAX_CONCURRENT_TASKS", "4"),
            ("COMFY_REALITY__RUNTIME__LOG_LEVEL", "warning"),
            ("comfy_reality__executor__enable_gpu", "false"),
            ("OTHER_APP__RUNTIME__BOGUS", "ignored"),
        ];
        let flags = CliOverrides {
            log_level: Some("error".into()),
            ..CliOverrides::default()
        };

        // File over defaults.
        let from_file = load_from(Some(&path), NO_ENV, &CliOverrides::default()).unwrap();
        assert_eq!(from_file.service.listen, "0.0.0.0:6000".parse().unwrap());
        assert_eq!(from_file.runtime.max_concurrent_tasks, 2);
        assert_eq!(from_file.runtime.task_timeout_seconds, 60.0);
        assert_eq!(from_file.runtime.log_level, LogLevel::Debug);
        assert_eq!(from_file.runtime.task_retry_delay_seconds, 5.0);
        let urls: Vec<&str> = from_file.servers.iter().map(|s| s.url.as_str()).collect();
        assert_eq!(urls, ["http://file-a:8188", "http://file-b:8188"]);
        assert_eq!(from_file.servers[0].max_retries, 3);
        assert_eq!(from_file.servers[1].max_retries, 7);

        // Env over file.
        let from_env = load_from(Some(&path), env, &CliOverrides::default()).unwrap();
        assert_eq!(from_env.runtime.max_concurrent_tasks, 4);
        assert_eq!(from_env.runtime.log_level, LogLevel::Warning);
        assert!(!from_env.executor.enable_gpu);
        assert_eq!(from_env.service.listen, "0.0.0.0:6000".parse().unwrap());

        // Flags over env.
        let from_flags = load_from(Some(&path), env, &flags).unwrap();
        assert_eq!(from_flags.runtime.log_level, LogLevel::Error);
        assert_eq!(from_flags.runtime.max_concurrent_tasks, 4);

        // Flags replace the server list and set addresses and paths.
        let flags = CliOverrides {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            metrics_listen: Some("127.0.0.1:9999".parse().unwrap()),
            comfyui: vec!["http://flag:1".into()],
            data_dir: Some(PathBuf::from("/var/lib/cr")),
            log_format: Some("text".into()),
            ..CliOverrides::default()
        };
        let c = load_from(Some(&path), env, &flags).unwrap();
        assert_eq!(c.servers, [ServerConfig::with_url("http://flag:1")]);
        assert_eq!(c.service.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(c.metrics_addr(), "127.0.0.1:9999".parse().unwrap());
        assert_eq!(c.service.data_dir, PathBuf::from("/var/lib/cr"));
        assert_eq!(c.runtime.log_format, LogFormat::Text);
    }

    #[test]
    fn servers_can_be_set_from_the_environment_as_a_whole() {
        let c = load_env(&[(
            "COMFY_REALITY__SERVERS",
            r#"[{url = "http://env-a:8188"}, {url = "https://env-b", api_key = "k"}]"#,
        )])
        .unwrap();
        assert_eq!(c.servers.len(), 2);
        assert_eq!(c.servers[1].url, "https://env-b");
        assert_eq!(c.servers[1].api_key.as_ref().unwrap().expose(), "k");

        // Arrays cannot be indexed from the environment; the error says how to set them.
        let error = load_env(&[("COMFY_REALITY__SERVERS__0__URL", "http://x:1")]).unwrap_err();
        let violation = only_violation(&error);
        assert_eq!(violation.key, "servers");
        assert!(
            violation.message.contains("COMFY_REALITY__SERVERS"),
            "{error}"
        );

        let c = load_env(&[("COMFY_REALITY__SERVICE__LISTEN", "0.0.0.0:7000")]).unwrap();
        assert_eq!(c.service.listen, "0.0.0.0:7000".parse().unwrap());
    }

    #[test]
    fn unknown_key_in_file_names_the_key_and_the_file() {
        let (result, path, _dir) = load_toml("[runtime]\nmax_concurent_tasks = 3\n");
        let error = result.unwrap_err();
        assert!(matches!(error, ConfigError::Parse { .. }), "{error}");
        let violation = only_violation(&error);
        assert_eq!(violation.key, "runtime.max_concurent_tasks");
        assert!(violation.message.starts_with("unknown key"), "{error}");
        let text = error.to_string();
        assert!(text.contains("runtime.max_concurent_tasks"), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");

        let (result, _, _dir) = load_toml("[[servers]]\nurl = \"http://a:1\"\napi_kye = \"x\"\n");
        let error = result.unwrap_err();
        assert_eq!(only_violation(&error).key, "servers[0].api_kye", "{error}");

        let (result, _, _dir) = load_toml("[telemetry]\nx = 1\n");
        assert_eq!(only_violation(&result.unwrap_err()).key, "telemetry");
    }

    #[test]
    fn unknown_env_key_names_the_variable() {
        let error = load_env(&[("COMFY_REALITY__RUNTIME__BOGUS", "1")]).unwrap_err();
        let violation = only_violation(&error);
        assert_eq!(violation.key, "runtime.bogus");
        assert_eq!(
            violation.source.as_deref(),
            Some("environment variable COMFY_REALITY__RUNTIME__BOGUS")
        );
        assert!(
            error.to_string().contains("COMFY_REALITY__RUNTIME__BOGUS"),
            "{error}"
        );

        let error = load_env(&[("COMFY_REALITY__RUNTIME____X", "1")]).unwrap_err();
        assert!(
            error.to_string().contains("COMFY_REALITY__RUNTIME____X"),
            "{error}"
        );
    }

    #[test]
    fn bad_env_value_names_the_variable_as_source() {
        // Out of range: a validation error.
        let error = load_env(&[("COMFY_REALITY__RUNTIME__METRICS_PORT", "70000")]).unwrap_err();
        assert!(matches!(error, ConfigError::Invalid { .. }), "{error}");
        let violation = only_violation(&error);
        assert_eq!(violation.key, "runtime.metrics_port");
        assert_eq!(
            violation.source.as_deref(),
            Some("environment variable COMFY_REALITY__RUNTIME__METRICS_PORT")
        );

        // Wrong type: a parse error.
        let error =
            load_env(&[("COMFY_REALITY__RUNTIME__MAX_CONCURRENT_TASKS", "many")]).unwrap_err();
        assert!(matches!(error, ConfigError::Parse { .. }), "{error}");
        let violation = only_violation(&error);
        assert_eq!(violation.key, "runtime.max_concurrent_tasks");
        assert_eq!(
            violation.source.as_deref(),
            Some("environment variable COMFY_REALITY__RUNTIME__MAX_CONCURRENT_TASKS")
        );

        // Unknown enum value.
        let error = load_env(&[("COMFY_REALITY__RUNTIME__QUEUE_TYPE", "kafka")]).unwrap_err();
        let violation = only_violation(&error);
        assert_eq!(violation.key, "runtime.queue_type", "{error}");
        assert!(
            violation
                .message
                .starts_with("unknown value `kafka`; expected one of `sqlite`, `memory`"),
            "{error}"
        );
    }

    #[test]
    fn negative_counts_are_rejected_naming_the_key() {
        for (text, key) in [
            ("[executor]\ncache_size_mb = -1\n", "executor.cache_size_mb"),
            (
                "[executor]\ncache_ttl_seconds = -1\n",
                "executor.cache_ttl_seconds",
            ),
            (
                "[runtime]\nmax_concurrent_tasks = -1\n",
                "runtime.max_concurrent_tasks",
            ),
            ("[[servers]]\nmax_retries = -1\n", "servers[0].max_retries"),
        ] {
            let (result, path, _dir) = load_toml(text);
            let error = result.unwrap_err();
            let violation = only_violation(&error);
            assert_eq!(violation.key, key, "{error}");
            assert_eq!(
                violation.source.as_deref(),
                Some(format!("TOML file {}", path.display()).as_str())
            );
        }
        // Zero is the boundary and is accepted.
        let (result, _, _dir) = load_toml("[executor]\ncache_size_mb = 0\ncache_ttl_seconds = 0\n");
        result.unwrap();
    }

    #[test]
    fn bad_flag_names_the_flag() {
        let flags = CliOverrides {
            log_level: Some("loud".into()),
            ..CliOverrides::default()
        };
        let error = load_from(None, NO_ENV, &flags).unwrap_err();
        let violation = only_violation(&error);
        assert_eq!(violation.key, "runtime.log_level");
        assert_eq!(
            violation.source.as_deref(),
            Some("command-line flag --log-level")
        );

        let flags = CliOverrides {
            comfyui: vec!["ftp://x".into()],
            ..CliOverrides::default()
        };
        let error = load_from(None, NO_ENV, &flags).unwrap_err();
        let violation = only_violation(&error);
        assert_eq!(violation.key, "servers[0].url");
        assert_eq!(
            violation.source.as_deref(),
            Some("command-line flag --comfyui")
        );
    }

    #[test]
    fn missing_config_file_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.toml");
        let sources = ConfigSources {
            file: Some(path.clone()),
            ..ConfigSources::default()
        };
        let error = load(&sources).unwrap_err();
        assert!(matches!(error, ConfigError::FileNotFound { .. }), "{error}");
        assert!(error.to_string().contains(&path.display().to_string()));
        assert_eq!(error.code(), "ConfigurationError");
    }

    #[test]
    fn syntax_error_gives_position_but_not_the_line() {
        let (result, path, _dir) = load_toml("[[servers]]\napi_key = s3cr3t\n");
        let error = result.unwrap_err();
        let ConfigError::FileSyntax { line, .. } = &error else {
            panic!("expected a syntax error, got {error}");
        };
        assert_eq!(*line, 2);
        let text = error.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");
    }

    fn config_with_secrets() -> Config {
        let mut c = Config::default();
        c.servers[0].api_key = Some(Secret::new("s3cr3t"));
        c.servers[0].auth_header = Some(Secret::new("Bearer s3cr3t"));
        c.servers
            .push(ServerConfig::with_url("https://user:s3cr3t@comfy.example"));
        c.runtime.queue_type = QueueType::Redis;
        c.runtime.queue_url = Some("redis://:s3cr3t@queue:6379/0".into());
        c
    }

    #[test]
    fn secrets_never_print() {
        let c = config_with_secrets();
        c.validate().unwrap();
        assert_eq!(c.servers[0].api_key.as_ref().unwrap().expose(), "s3cr3t");
        let printed = [
            format!("{c:?}"),
            format!("{c:#?}"),
            format!("{}", c.servers[0].api_key.as_ref().unwrap()),
            c.to_redacted_toml(),
            serde_json::to_string(&c).unwrap(),
            format!(
                "{:?}",
                CliOverrides {
                    comfyui: vec!["http://u:s3cr3t@h:1".into()],
                    ..CliOverrides::default()
                }
            ),
        ];
        for text in printed {
            assert!(!text.contains("s3cr3t"), "{text}");
            assert!(text.contains("REDACTED"), "{text}");
        }
        assert!(c.to_redacted_toml().contains("api_key = \"[REDACTED]\""));
    }

    #[test]
    fn secret_with_wrong_type_is_rejected_without_its_value() {
        let (result, _, _dir) = load_toml("[[servers]]\napi_key = 987654321\n");
        let error = result.unwrap_err();
        assert_eq!(only_violation(&error).key, "servers[0].api_key");
        assert!(!error.to_string().contains("987654321"), "{error}");
        assert!(!format!("{error:?}").contains("987654321"), "{error:?}");
    }

    #[test]
    fn printed_config_with_secrets_does_not_load_silently() {
        let (result, _, _dir) = load_toml(&config_with_secrets().to_redacted_toml());
        let error = result.unwrap_err();
        let keys: Vec<&str> = error.violations().iter().map(|v| v.key.as_str()).collect();
        assert_eq!(keys, ["servers[0].api_key", "servers[0].auth_header"]);
        assert!(!error.to_string().contains("s3cr3t"));
    }

    #[test]
    fn redacted_toml_round_trips_without_secrets() {
        let default = Config::default();
        let (loaded, _, _dir) = load_toml(&default.to_redacted_toml());
        assert_eq!(loaded.unwrap(), default);

        let mut c = Config::default();
        c.service.metrics_listen = Some("0.0.0.0:9100".parse().unwrap());
        c.service.shutdown_grace_seconds = 2.5;
        c.runtime.queue_type = QueueType::Rabbitmq;
        c.runtime.queue_url = Some("amqp://broker:5672".into());
        c.runtime.log_file = Some(PathBuf::from("/var/log/cr.log"));
        c.runtime.log_level = LogLevel::Debug;
        c.executor.max_memory_mb = Some(4096);
        c.executor.max_cpu_percent = Some(75.5);
        c.executor.optimization_level = OptimizationLevel::O0;
        c.executor.prefer_gpu_types = vec!["mps".into()];
        c.servers[0].name = Some("primary".into());
        c.servers.push(ServerConfig {
            url: "https://b.example:8443/comfy".into(),
            verify_ssl: false,
            max_retries: 0,
            ..ServerConfig::default()
        });
        let text = c.to_redacted_toml();
        let (loaded, _, _dir) = load_toml(&text);
        assert_eq!(loaded.unwrap(), c, "{text}");
    }

    #[test]
    fn durations_and_metrics_addr() {
        let c = Config::default();
        assert_eq!(c.runtime.task_timeout(), Duration::from_secs(300));
        assert_eq!(c.runtime.ui_update_interval(), Duration::from_millis(500));
        assert_eq!(c.servers[0].timeout(), Duration::from_secs(30));
        assert_eq!(c.servers[0].silence_timeout(), Duration::from_secs(30));
        assert_eq!(c.servers[0].reconnect_max_delay(), Duration::from_secs(30));
        assert_eq!(c.service.shutdown_grace(), Duration::from_secs(10));
        assert_eq!(c.executor.cache_ttl(), Duration::from_secs(3600));
        let c = load_env(&[("COMFY_REALITY__RUNTIME__METRICS_PORT", "9100")]).unwrap();
        assert_eq!(c.metrics_addr(), "127.0.0.1:9100".parse().unwrap());
    }

    #[test]
    fn helpers() {
        assert_eq!(display_key(&["servers", "1", "url"]), "servers[1].url");
        assert_eq!(display_key(&["runtime"]), "runtime");
        assert_eq!(
            env_key("COMFY_REALITY__RUNTIME__LOG_LEVEL").as_deref(),
            Some("runtime.log_level")
        );
        assert_eq!(env_key("COMFY_REALITY_X"), None);
        assert_eq!(line_column("a\nbc\nd", 4), (2, 3));
        assert_eq!(redact_url("http://h:1"), "http://h:1");
        assert_eq!(redact_url("http://u:p@h:1/"), "http://u:REDACTED@h:1/");
        assert_eq!(redact_url("x://u:p@[bad"), "x://REDACTED@[bad");
    }
}
