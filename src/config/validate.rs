//! Validation: every bound and rule documented on the configuration's fields, checked at once so
//! that all violations are reported together, each with its dotted key and the keys whose source
//! explains it. Checks only: nothing here changes the configuration, reads a source or logs.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Config, ConfigError, ConfigViolation, QueueType, REDACTED};

/// Most `service.worker_threads`.
const MAX_WORKER_THREADS: usize = 1024;

/// Smallest `service.max_request_bytes`.
const MIN_REQUEST_BYTES: usize = 1024;
/// Smallest `executor.max_memory_mb`.
const MIN_MEMORY_MB: u64 = 100;

impl Config {
    /// Checks every bound and rule documented on the fields and returns all violations at once
    /// ([`ConfigError::Invalid`]). The violations carry no source; [`load`](super::load) adds
    /// them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let violations: Vec<ConfigViolation> =
            self.violations().into_iter().map(|p| p.violation).collect();
        if violations.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { violations })
        }
    }

    /// Every violation of the bounds and rules, in section order, each with the keys whose
    /// source explains it; [`load`](super::load) looks those sources up.
    pub(super) fn violations(&self) -> Vec<Pending> {
        let mut out = Collector::default();
        self.check_service(&mut out);
        self.check_runtime(&mut out);
        self.check_executor(&mut out);
        self.check_scheduling(&mut out);
        self.check_events(&mut out);
        self.check_store(&mut out);
        self.check_redis(&mut out);
        self.check_servers(&mut out);
        self.check_auth(&mut out);
        self.check_limits(&mut out);
        self.check_tls(&mut out);
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
        if service.worker_threads > MAX_WORKER_THREADS {
            out.push(
                "service.worker_threads",
                format!(
                    "must be at most {MAX_WORKER_THREADS} (0 means one per CPU core), got {}",
                    service.worker_threads
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
        if runtime.queue_type == QueueType::Rabbitmq {
            out.push(
                "runtime.queue_type",
                "rabbitmq is not implemented yet; use sqlite (the default, one process), memory or redis (several replicas)",
            );
        }
        if runtime.queue_type == QueueType::Redis
            && let Some(url) = runtime.queue_url.as_deref()
            && !url.trim().is_empty()
            && let Some(problem) = redis_url_problem(url)
        {
            out.push_blaming(
                "runtime.queue_url",
                problem,
                &["runtime.queue_url", "runtime.queue_type"],
            );
        }
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
        if !(1..=64).contains(&scheduling.backend_pipeline_depth) {
            out.push(
                "scheduling.backend_pipeline_depth",
                format!(
                    "must be between 1 and 64, got {}",
                    scheduling.backend_pipeline_depth
                ),
            );
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
        let mut seen: Vec<&str> = Vec::new();
        for (i, kind) in executor.prefer_gpu_types.iter().enumerate() {
            let key = format!("executor.prefer_gpu_types[{i}]");
            let well_formed = !kind.is_empty()
                && kind
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !well_formed {
                out.push_blaming(
                    key,
                    format!(
                        "must be a lowercase device type such as cuda, mps or directml, got `{kind}`"
                    ),
                    &["executor.prefer_gpu_types"],
                );
            } else if seen.contains(&kind.as_str()) {
                out.push_blaming(
                    key,
                    format!("duplicates `{kind}`"),
                    &["executor.prefer_gpu_types"],
                );
            }
            seen.push(kind);
        }
        check_seconds(
            out,
            "executor.gpu_sample_interval_seconds",
            executor.gpu_sample_interval_seconds,
        );
    }

    fn check_redis(&self, out: &mut Collector) {
        let redis = &self.redis;
        let prefix = &redis.key_prefix;
        if prefix.is_empty() || prefix.chars().count() > 64 {
            out.push(
                "redis.key_prefix",
                format!("must be 1 to 64 characters, got {}", prefix.chars().count()),
            );
        } else if prefix
            .chars()
            .any(|c| c == '{' || c == '}' || c.is_whitespace() || c.is_control())
        {
            out.push(
                "redis.key_prefix",
                "must not contain braces, whitespace or control characters",
            );
        }
        if !(1.0..=300.0).contains(&redis.lease_seconds) {
            out.push(
                "redis.lease_seconds",
                format!(
                    "must be between 1 and 300 seconds, got {}",
                    redis.lease_seconds
                ),
            );
        }
        if !seconds_ok(redis.command_timeout_seconds) || redis.command_timeout_seconds > 60.0 {
            out.push(
                "redis.command_timeout_seconds",
                format!(
                    "must be a finite number of seconds greater than 0 and at most 60, got {}",
                    redis.command_timeout_seconds
                ),
            );
        }
        if let Some(url) = &redis.advertise_url
            && let Some(problem) = advertise_url_problem(url)
        {
            out.push("redis.advertise_url", problem);
        }
        match (&redis.peer_cert_file, &redis.peer_key_file) {
            (Some(_), None) => out.push(
                "redis.peer_key_file",
                "is required with redis.peer_cert_file",
            ),
            (None, Some(_)) => out.push(
                "redis.peer_cert_file",
                "is required with redis.peer_key_file",
            ),
            _ => {}
        }
        check_paths_given(
            out,
            [
                ("redis.peer_ca_file", &redis.peer_ca_file),
                ("redis.peer_cert_file", &redis.peer_cert_file),
                ("redis.peer_key_file", &redis.peer_key_file),
            ],
        );
        let history = u64::try_from(self.events.history_len).unwrap_or(u64::MAX);
        if redis.event_retention < history {
            out.push_blaming(
                "redis.event_retention",
                format!(
                    "must be at least events.history_len ({history}), got {}: a subscriber resuming within the window must find its events",
                    redis.event_retention
                ),
                &["redis.event_retention", "events.history_len"],
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
            if server.pid == Some(0) {
                out.push_blaming(
                    key("pid"),
                    "must be a process id (at least 1)",
                    &["servers"],
                );
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

pub(super) fn seconds_ok(value: f64) -> bool {
    value > 0.0 && Duration::try_from_secs_f64(value).is_ok_and(|d| !d.is_zero())
}

pub(super) fn seconds_message(value: f64) -> String {
    format!("must be a finite number of seconds greater than 0, got {value}")
}

/// Reports each optional file path that is given but empty (leaving the key
/// out is how to say "none").
pub(super) fn check_paths_given<'a>(
    out: &mut Collector,
    paths: impl IntoIterator<Item = (&'static str, &'a Option<std::path::PathBuf>)>,
) {
    for (key, path) in paths {
        if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            out.push(key, "must not be empty; leave it out instead");
        }
    }
}

pub(super) fn check_seconds(out: &mut Collector, key: &str, value: f64) {
    if !seconds_ok(value) {
        out.push(key, seconds_message(value));
    }
}

/// A violation found by validation, with the figment keys whose source explains it, tried in
/// order (the value at fault may be a default; the key that made it wrong has a source).
pub(super) struct Pending {
    /// The violation, still without a source.
    pub(super) violation: ConfigViolation,
    /// Dotted figment keys to look the source up by, tried in order.
    pub(super) lookups: Vec<String>,
}

/// The violations found so far, in the order the checks ran.
#[derive(Default)]
pub(super) struct Collector(Vec<Pending>);

impl Collector {
    pub(super) fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let key = key.into();
        let lookups = vec![key.clone()];
        self.push_pending(key, message.into(), lookups);
    }

    pub(super) fn push_blaming(
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

/// Why `url` cannot be a Redis url the store connects to, or None.
/// Why `url` cannot be a replica's advertise url (`http(s)://host:port`), if it cannot.
fn advertise_url_problem(url: &str) -> Option<String> {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return Some(format!(
            "{url:?} is not a url; use http://host:port or https://host:port"
        ));
    };
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Some(format!("{url:?} must start with http:// or https://"));
    }
    if uri.host().is_none_or(str::is_empty) || uri.port_u16().is_none() {
        return Some(format!("{url:?} must name a host and a port"));
    }
    if uri
        .path_and_query()
        .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
    {
        return Some(format!("{url:?} must not have a path"));
    }
    None
}

fn redis_url_problem(url: &str) -> Option<String> {
    let Ok(parsed) = url::Url::parse(url) else {
        return Some("is not a url; use redis://host:port/db or unix:///path/to/redis.sock".into());
    };
    match parsed.scheme() {
        "redis" | "unix" | "redis+unix" => None,
        "rediss" => Some(
            "rediss:// (Redis over TLS) is not supported yet; reach Redis over a private network, a unix socket or a TLS tunnel"
                .into(),
        ),
        other => Some(format!(
            "has scheme {other}; use redis://host:port/db or unix:///path/to/redis.sock"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::test_support::*;
    use crate::config::{Secret, ServerConfig};

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
                "service.worker_threads",
                |c| c.service.worker_threads = 1025,
                |c| c.service.worker_threads = 1024,
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
                    c.runtime.queue_type = QueueType::Redis;
                    c.runtime.queue_url = Some("  ".into());
                },
                |c| {
                    c.runtime.queue_type = QueueType::Redis;
                    c.runtime.queue_url = Some("unix:///run/redis.sock".into());
                },
            ),
            (
                "runtime.queue_url",
                |c| {
                    c.runtime.queue_type = QueueType::Redis;
                    c.runtime.queue_url = Some("rediss://redis:6380".into());
                },
                |c| {
                    c.runtime.queue_type = QueueType::Redis;
                    c.runtime.queue_url = Some("redis://:secret@redis:6379/2".into());
                },
            ),
            (
                "redis.key_prefix",
                |c| c.redis.key_prefix = "{studio}".into(),
                |c| c.redis.key_prefix = "studio-a".into(),
            ),
            (
                "redis.lease_seconds",
                |c| c.redis.lease_seconds = 0.5,
                |c| c.redis.lease_seconds = 1.0,
            ),
            (
                "redis.command_timeout_seconds",
                |c| c.redis.command_timeout_seconds = 61.0,
                |c| c.redis.command_timeout_seconds = 60.0,
            ),
            (
                "redis.event_retention",
                |c| c.redis.event_retention = 100,
                |c| c.redis.event_retention = 8_192,
            ),
            (
                "redis.advertise_url",
                |c| c.redis.advertise_url = Some("10.0.0.5:50051".into()),
                |c| c.redis.advertise_url = Some("http://10.0.0.5:50051".into()),
            ),
            (
                "redis.advertise_url",
                |c| c.redis.advertise_url = Some("https://replica-0/api".into()),
                |c| c.redis.advertise_url = Some("https://replica-0:443".into()),
            ),
            (
                "redis.peer_key_file",
                |c| c.redis.peer_cert_file = Some(PathBuf::from("replica.pem")),
                |c| {
                    c.redis.peer_cert_file = Some(PathBuf::from("replica.pem"));
                    c.redis.peer_key_file = Some(PathBuf::from("replica.key"));
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
                "executor.gpu_sample_interval_seconds",
                |c| c.executor.gpu_sample_interval_seconds = 0.0,
                |c| c.executor.gpu_sample_interval_seconds = 0.05,
            ),
            (
                "executor.prefer_gpu_types[1]",
                |c| c.executor.prefer_gpu_types = vec!["mps".into(), "CUDA".into()],
                |c| c.executor.prefer_gpu_types = vec!["mps".into(), "cuda".into()],
            ),
            (
                "executor.prefer_gpu_types[2]",
                |c| c.executor.prefer_gpu_types = vec!["mps".into(), "xpu".into(), "mps".into()],
                |c| c.executor.prefer_gpu_types = vec![],
            ),
            (
                "executor.prefer_gpu_types[0]",
                |c| c.executor.prefer_gpu_types = vec![String::new()],
                |c| c.executor.prefer_gpu_types = vec!["directml".into()],
            ),
            (
                "servers[0].pid",
                |c| c.servers[0].pid = Some(0),
                |c| c.servers[0].pid = Some(1),
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
}
