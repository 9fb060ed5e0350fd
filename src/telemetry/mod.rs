//! Telemetry: logs and metrics.
//!
//! * Logs ([`init`]): a `tracing` subscriber writing JSON (one object per
//!   line, ids at the top level: [`json_log`]) or text, to stderr or to
//!   `log_file`, filtered by `log_level`.
//! * Metrics: names, descriptions, the recorder and the typed API the
//!   runtime calls ([`metrics`]); gRPC server metrics as a tower layer
//!   ([`grpc_metrics`]); the `/metrics` scrape endpoint ([`metrics_endpoint`]).
//!
//! Telemetry observes; it never changes what a request or task does.

pub mod grpc_metrics;
pub mod json_log;
pub mod metrics;
pub mod metrics_endpoint;

use std::fs::OpenOptions;
use std::io::IsTerminal as _;
use std::path::Path;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::JsonFields;

use crate::config::{LogFormat, RuntimeConfig};

/// Errors setting up telemetry.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log file cannot be opened for appending.
    #[error("cannot open log file {path}: {source}")]
    LogFile {
        /// The configured path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A global subscriber is already installed.
    #[error("logging is already initialised: {0}")]
    AlreadyInitialised(String),
    /// The Prometheus recorder cannot be built or installed (one is already installed).
    #[error("cannot install the metrics recorder: {0}")]
    MetricsRecorder(#[from] metrics_exporter_prometheus::BuildError),
}

/// Log lines the writer thread may be behind by before new ones are dropped.
/// The buffer is allocated (and touched) whole at start, 32 bytes a line:
/// tracing-appender's default of 128,000 lines was 4 MiB of the idle
/// process's 22 MiB. The writer drains a line in microseconds: lines are lost
/// only past a burst of 4,096 logged faster than stderr takes them.
const LOG_BUFFER_LINES: usize = 4_096;

/// Installs the global subscriber. Keep the returned guard alive for the
/// life of the process: dropping it flushes and stops the log writer.
pub fn init(runtime: &RuntimeConfig) -> Result<WorkerGuard, TelemetryError> {
    let filter = EnvFilter::new(runtime.log_level.tracing_directive());
    let buffer = || NonBlockingBuilder::default().buffered_lines_limit(LOG_BUFFER_LINES);
    let (writer, guard) = match &runtime.log_file {
        Some(path) => buffer().finish(open_log_file(path)?),
        None => buffer().finish(std::io::stderr()),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(runtime.log_file.is_none() && std::io::stderr().is_terminal());
    let result = match runtime.log_format {
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(json_log::FlatJson)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|e| TelemetryError::AlreadyInitialised(e.to_string()))?;
    Ok(guard)
}

fn open_log_file(path: &Path) -> Result<std::fs::File, TelemetryError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| TelemetryError::LogFile {
            path: path.display().to_string(),
            source,
        })
}
