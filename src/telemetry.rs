//! Logging setup: a `tracing` subscriber writing JSON (one object per line)
//! or text, to stderr or to `log_file`, filtered by `log_level`.

use std::fs::OpenOptions;
use std::io::IsTerminal as _;
use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

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
}

/// Installs the global subscriber. Keep the returned guard alive for the
/// life of the process: dropping it flushes and stops the log writer.
pub fn init(runtime: &RuntimeConfig) -> Result<WorkerGuard, TelemetryError> {
    let filter = EnvFilter::new(runtime.log_level.tracing_directive());
    let (writer, guard) = match &runtime.log_file {
        Some(path) => tracing_appender::non_blocking(open_log_file(path)?),
        None => tracing_appender::non_blocking(std::io::stderr()),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(runtime.log_file.is_none() && std::io::stderr().is_terminal());
    let result = match runtime.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
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
