//! Service configuration: the typed settings, one file per section (`[service]`, `[runtime]`,
//! `[executor]`, `[scheduling]`, `[events]`, `[store]`, `[redis]`, `[[servers]]`, `[auth]`,
//! `[limits]`, `[tls]`), their layered loading
//! (defaults -> TOML file -> `COMFY_REALITY__SECTION__KEY` environment variables -> command-line
//! flags; `loading.rs`), validation that reports every violation with its dotted key and where the
//! value came from (`validate.rs`, errors in `error.rs`), and redaction for printing
//! (`redact.rs`).
//!
//! This file owns [`Config`], which ties the sections together, and what is derived from more than
//! one section (the metrics address, the store and artifact paths). The submodules are private:
//! every public item is re-exported here and reached as `crate::config::X`.
//!
//! The field names, defaults and bounds mirror the seed's `ServerConfig`, `RuntimeConfig` and
//! `TaskExecutorConfig`. This module is a leaf: it imports no other module of the crate, starts
//! nothing, never logs, and never puts a secret into a message or a printed configuration.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod auth;
mod error;
mod events;
mod executor;
mod limits;
mod loading;
mod redact;
mod redis;
mod runtime;
mod scheduling;
mod servers;
mod service;
mod store;
#[cfg(test)]
mod test_support;
mod tls;
mod validate;
mod validate_access;

pub use auth::{AuthConfig, AuthMode, PrincipalConfig, ReflectionAccess, Role, parse_sha256_hex};
pub use error::{ConfigError, ConfigViolation, ERROR_CODE};
pub use events::EventsConfig;
pub use executor::{OptimizationLevel, TaskExecutorConfig};
pub use limits::{LimitsConfig, LimitsOverride, PrincipalLimits};
pub use loading::{CliOverrides, ConfigSources, ENV_PREFIX, ENV_SEPARATOR, load, load_from};
pub use redact::{REDACTED, Secret, redact_url};
pub use redis::RedisConfig;
pub use runtime::{LogFormat, LogLevel, QueueType, RuntimeConfig};
pub use scheduling::SchedulingConfig;
pub use servers::ServerConfig;
pub use service::ServiceConfig;
pub use store::{STORE_FILE_NAME, StoreConfig, StoreSynchronous};
pub use tls::TlsConfig;

/// The default `runtime.metrics_port`; also the port [`Config::metrics_addr`] falls back to when
/// the configured one is out of range.
const DEFAULT_METRICS_PORT: u16 = 9090;

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
    /// `[redis]`: the Redis store's key prefix, lease, event retention and timeouts, used when
    /// `runtime.queue_type = "redis"` (not in the seed).
    pub redis: RedisConfig,
    /// `[[servers]]`: the ComfyUI backends. Default: one server at `http://127.0.0.1:8188`.
    /// Bound: at least one; urls unique; names, where given, unique.
    pub servers: Vec<ServerConfig>,
    /// `[auth]`: how callers authenticate, and the principals (not in the seed).
    pub auth: AuthConfig,
    /// `[limits]`: per-principal rate limits and quotas, and the transport's hard limits (not in
    /// the seed).
    pub limits: LimitsConfig,
    /// `[tls]`: TLS and mTLS for the gRPC listener (not in the seed). Default: plaintext.
    pub tls: TlsConfig,
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
            redis: RedisConfig::default(),
            servers: vec![ServerConfig::default()],
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            tls: TlsConfig::default(),
        }
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
}

/// `value` seconds as a duration; zero when it is negative, not finite or too large, which a
/// validated configuration never is.
fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;

    #[test]
    fn defaults_equal_the_seed() {
        let c = Config::default();
        assert_eq!(c.service.listen, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(c.service.metrics_listen, None);
        assert_eq!(c.service.data_dir, PathBuf::from("data"));
        assert_eq!(c.service.shutdown_grace_seconds, 10.0);
        assert_eq!(c.service.max_request_bytes, 32 * 1024 * 1024);
        assert_eq!(c.service.worker_threads, 1);

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
        assert_eq!(e.gpu_sample_interval(), Duration::from_secs(1));
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
        assert_eq!(s.pid, None);
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
        let c = load_env(&[
            (
                "COMFY_REALITY__EXECUTOR__GPU_SAMPLE_INTERVAL_SECONDS",
                "0.25",
            ),
            (
                "COMFY_REALITY__EXECUTOR__PREFER_GPU_TYPES",
                "[\"mps\", \"cuda\"]",
            ),
        ])
        .unwrap();
        assert_eq!(c.executor.gpu_sample_interval(), Duration::from_millis(250));
        assert_eq!(c.executor.prefer_gpu_types, ["mps", "cuda"]);
        let error =
            load_env(&[("COMFY_REALITY__EXECUTOR__GPU_SAMPLE_INTERVAL_SECONDS", "0")]).unwrap_err();
        assert_eq!(
            only_violation(&error).key,
            "executor.gpu_sample_interval_seconds"
        );
    }
}
