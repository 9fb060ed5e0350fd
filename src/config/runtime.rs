//! `[runtime]`: the seed's `RuntimeConfig`: task concurrency, timeouts and retries, where queued
//! work is kept (`queue_type`, `queue_url`), logging (level, format, file), the metrics endpoint
//! and UI updates, with the enums they are spelled in. Only settings, defaults and accessors live
//! here; bounds are checked in `validate.rs`. `Debug` and `Serialize` never show the password of
//! a `queue_url`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::redact::{redact_url, serialize_redacted_opt_url};
use super::{DEFAULT_METRICS_PORT, seconds};

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
    /// `redis` (state in Redis at `queue_url`, see `[redis]`); `rabbitmq` is refused at start
    /// (not implemented yet).
    ///
    /// [`Config::store_path`]: super::Config::store_path
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
    /// State, queue and event log in Redis at `queue_url` (`[redis]`).
    Redis,
    /// A RabbitMQ broker at `queue_url`: named by the seed, not implemented yet, so refused
    /// by validation (never quietly kept in memory).
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

#[cfg(test)]
mod tests {
    use crate::config::test_support::*;

    #[test]
    fn sqlite_and_memory_need_no_queue_url() {
        for queue_type in ["sqlite", "memory"] {
            let (result, _, _dir) =
                load_toml(&format!("[runtime]\nqueue_type = \"{queue_type}\"\n"));
            assert_eq!(result.unwrap().runtime.queue_type.as_str(), queue_type);
        }
    }

    #[test]
    fn a_queue_type_that_is_not_implemented_is_refused() {
        let (result, _, _dir) =
            load_toml("[runtime]\nqueue_type = \"rabbitmq\"\nqueue_url = \"amqp://broker:5672\"\n");
        let message = result.unwrap_err().to_string();
        assert!(
            message.contains("runtime.queue_type") && message.contains("not implemented"),
            "{message}"
        );
    }
}
