//! Response metadata on every call (success and error, every service) and
//! AdminService.GetRuntimeInfo: version, seed defaults, secrets redacted.

mod common;

use comfy_reality::config::{Config, Secret, ServerConfig};
use comfy_reality::pb::{
    BackendState, CancelExecutionRequest, CreateTaskRequest, GetRuntimeInfoRequest,
    GetRuntimeInfoResponse, GetTaskRequest, GetWorkflowRequest, ListWorkflowsRequest, LogFormat,
    LogLevel, OptimizationLevel, QueueType, TaskPriority,
};
use common::TestServer;
use common::exec::{Harness, delay_workflow, harness};
use tonic::metadata::MetadataMap;
use tonic::{Code, Request};
use tonic_health::pb::HealthCheckRequest;

const REQUEST_ID: &str = "x-request-id";

fn with_request_id<T>(message: T, id: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(REQUEST_ID, id.parse().expect("ASCII request id"));
    request
}

/// Checks `x-duration-ms` and `x-api-version`, and returns `x-request-id`.
#[track_caller]
fn check_common_metadata(metadata: &MetadataMap, what: &str) -> String {
    let duration = metadata
        .get("x-duration-ms")
        .unwrap_or_else(|| panic!("{what}: no x-duration-ms in {metadata:?}"))
        .to_str()
        .expect("ASCII");
    let ms: f64 = duration
        .parse()
        .unwrap_or_else(|e| panic!("{what}: x-duration-ms {duration:?} is not a float: {e}"));
    assert!(ms.is_finite() && ms >= 0.0, "{what}: x-duration-ms {ms}");
    assert_eq!(
        metadata.get("x-api-version").map(|v| v.to_str().unwrap()),
        Some("v1"),
        "{what}: {metadata:?}"
    );
    metadata
        .get(REQUEST_ID)
        .unwrap_or_else(|| panic!("{what}: no x-request-id in {metadata:?}"))
        .to_str()
        .expect("ASCII")
        .to_owned()
}

#[tokio::test]
async fn successful_responses_echo_the_request_id_and_carry_timing_and_version() {
    let server = TestServer::start().await;

    let response = server
        .tasks()
        .create_task(with_request_id(
            CreateTaskRequest {
                name: "job".into(),
                ..CreateTaskRequest::default()
            },
            "req-create-1",
        ))
        .await
        .expect("create");
    assert_eq!(
        check_common_metadata(response.metadata(), "CreateTask"),
        "req-create-1"
    );

    let response = server
        .workflows()
        .list_workflows(with_request_id(
            ListWorkflowsRequest::default(),
            "req-list-2",
        ))
        .await
        .expect("list workflows");
    assert_eq!(
        check_common_metadata(response.metadata(), "ListWorkflows"),
        "req-list-2"
    );

    let response = server
        .admin()
        .get_runtime_info(with_request_id(GetRuntimeInfoRequest {}, "req-admin-3"))
        .await
        .expect("runtime info");
    assert_eq!(
        check_common_metadata(response.metadata(), "GetRuntimeInfo"),
        "req-admin-3"
    );

    let response = server
        .health()
        .check(with_request_id(
            HealthCheckRequest::default(),
            "req-health-4",
        ))
        .await
        .expect("health");
    assert_eq!(
        check_common_metadata(response.metadata(), "Health/Check"),
        "req-health-4"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn error_responses_carry_the_same_metadata() {
    let server = TestServer::start().await;

    let status = server
        .tasks()
        .get_task(with_request_id(
            GetTaskRequest {
                id: "missing".into(),
            },
            "req-err-1",
        ))
        .await
        .expect_err("unknown task");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(
        check_common_metadata(status.metadata(), "GetTask NOT_FOUND"),
        "req-err-1"
    );

    let status = server
        .tasks()
        .create_task(with_request_id(CreateTaskRequest::default(), "req-err-2"))
        .await
        .expect_err("empty name");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        check_common_metadata(status.metadata(), "CreateTask INVALID_ARGUMENT"),
        "req-err-2"
    );

    let status = server
        .workflows()
        .get_workflow(with_request_id(
            GetWorkflowRequest {
                id: "missing".into(),
                version: None,
            },
            "req-err-3",
        ))
        .await
        .expect_err("unknown workflow");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(
        check_common_metadata(status.metadata(), "GetWorkflow NOT_FOUND"),
        "req-err-3"
    );

    let status = server
        .health()
        .check(with_request_id(
            HealthCheckRequest {
                service: "nope".into(),
            },
            "req-err-4",
        ))
        .await
        .expect_err("unknown health service");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(
        check_common_metadata(status.metadata(), "Health NOT_FOUND"),
        "req-err-4"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn missing_or_unusable_request_id_gets_a_fresh_uuid() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let response = client
            .create_task(CreateTaskRequest {
                name: "job".into(),
                ..CreateTaskRequest::default()
            })
            .await
            .expect("create");
        seen.push(check_common_metadata(response.metadata(), "no request id"));
    }
    let status = client
        .get_task(GetTaskRequest {
            id: "missing".into(),
        })
        .await
        .expect_err("unknown task");
    seen.push(check_common_metadata(
        status.metadata(),
        "error, no request id",
    ));

    let too_long = "x".repeat(200);
    for bad in ["has space", too_long.as_str()] {
        let response = client
            .create_task(with_request_id(
                CreateTaskRequest {
                    name: "job".into(),
                    ..CreateTaskRequest::default()
                },
                bad,
            ))
            .await
            .expect("create");
        let id = check_common_metadata(response.metadata(), "bad request id");
        assert_ne!(id, bad);
        seen.push(id);
    }
    for id in &seen {
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id} is not a UUID");
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "request ids repeat: {seen:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn runtime_info_reports_version_and_seed_defaults() {
    let server = TestServer::start().await;
    let info = server
        .admin()
        .get_runtime_info(GetRuntimeInfoRequest {})
        .await
        .expect("runtime info")
        .into_inner();
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.api_version, "v1");
    assert!(info.started_at.is_some());
    assert!(info.uptime_seconds >= 0.0 && info.uptime_seconds.is_finite());

    let config = info.config.expect("config");
    assert_eq!(config.max_concurrent_tasks, 10);
    assert_eq!(config.task_timeout_seconds, 300.0);
    assert_eq!(config.task_retry_delay_seconds, 5.0);
    assert_eq!(config.queue_type(), QueueType::Sqlite);
    assert_eq!(config.queue_url, None);
    assert_eq!(config.log_level(), LogLevel::Info);
    assert_eq!(config.log_format(), LogFormat::Json);
    assert_eq!(config.log_file, None);
    assert!(config.enable_metrics);
    assert_eq!(config.metrics_port, 9090);
    assert!(config.enable_ui);
    assert_eq!(config.ui_update_interval_seconds, 0.5);
    assert_eq!(config.listen, server.addr.to_string());
    assert_eq!(config.metrics_listen, "127.0.0.1:9090");
    assert_eq!(config.data_dir, "data");

    assert_eq!(config.servers.len(), 1);
    let backend = &config.servers[0];
    assert_eq!(backend.url, "http://127.0.0.1:8188");
    assert_eq!(backend.timeout_seconds, 30.0);
    assert_eq!(backend.max_retries, 3);
    assert!(backend.verify_ssl);
    assert_eq!(backend.api_key, None);
    assert_eq!(backend.auth_header, None);

    let executor = config.executor.expect("executor");
    assert_eq!(executor.max_memory_mb, None);
    assert_eq!(executor.max_cpu_percent, None);
    assert_eq!(executor.gpu_memory_fraction, 0.9);
    assert!(executor.enable_gpu);
    assert_eq!(executor.prefer_gpu_types, ["cuda", "mps", "directml"]);
    assert!(executor.enable_optimization);
    assert_eq!(executor.optimization_level(), OptimizationLevel::O2);
    assert!(executor.enable_cache);
    assert_eq!(executor.cache_size_mb, 1000);
    assert_eq!(executor.cache_ttl_seconds, 3600);

    assert_eq!(info.backends.len(), 1);
    assert_eq!(info.backends[0].url, "http://127.0.0.1:8188");
    // Nothing listens there: not probed yet, or probed and down.
    assert!(
        matches!(
            info.backends[0].state(),
            BackendState::Unknown | BackendState::Down
        ),
        "{:?}",
        info.backends[0]
    );
    assert_eq!(info.backends[0].name, "http://127.0.0.1:8188/");
    assert_eq!(info.backends[0].running, 0);
    // One queue depth per priority, CRITICAL first, all empty.
    let queue: Vec<(TaskPriority, u32)> = info
        .queue
        .iter()
        .map(|depth| (depth.priority(), depth.queued))
        .collect();
    assert_eq!(
        queue,
        [
            (TaskPriority::Critical, 0),
            (TaskPriority::High, 0),
            (TaskPriority::Normal, 0),
            (TaskPriority::Low, 0),
        ]
    );
    server.shutdown().await;
}

/// Polls GetRuntimeInfo until `check` holds; panics (hang guard) after 1,500 tries.
async fn wait_runtime_info(
    h: &Harness,
    what: &str,
    check: impl Fn(&GetRuntimeInfoResponse) -> bool,
) -> GetRuntimeInfoResponse {
    let mut last = None;
    for _ in 0..1500 {
        let info = h
            .server
            .admin()
            .get_runtime_info(GetRuntimeInfoRequest {})
            .await
            .expect("runtime info")
            .into_inner();
        if check(&info) {
            return info;
        }
        last = Some(info);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{what} never showed in GetRuntimeInfo: {last:?}");
}

fn queued(info: &GetRuntimeInfoResponse, priority: TaskPriority) -> u32 {
    info.queue
        .iter()
        .find(|depth| depth.priority() == priority)
        .map_or(0, |depth| depth.queued)
}

#[tokio::test]
async fn runtime_info_reports_the_queue_and_what_each_backend_runs() {
    let h = harness(1, |c| c.runtime.max_concurrent_tasks = 1).await;
    let mut ids = Vec::new();
    for nonce in [1, 2] {
        ids.push(
            h.execute(&delay_workflow(30.0, nonce), TaskPriority::Normal)
                .await
                .id,
        );
    }
    let busy = wait_runtime_info(&h, "one queued, one on the backend", |info| {
        queued(info, TaskPriority::Normal) >= 1 && info.backends.iter().any(|b| b.running >= 1)
    })
    .await;
    assert_eq!(busy.queue.len(), 4, "{busy:?}");
    assert_eq!(queued(&busy, TaskPriority::Critical), 0, "{busy:?}");
    assert_eq!(busy.backends[0].state(), BackendState::Up, "{busy:?}");

    for id in &ids {
        h.server
            .executions()
            .cancel_execution(CancelExecutionRequest {
                id: id.clone(),
                reason: None,
            })
            .await
            .expect("cancel");
    }
    for id in &ids {
        h.wait_end(id).await;
    }
    wait_runtime_info(&h, "an idle runtime", |info| {
        info.queue.iter().all(|depth| depth.queued == 0)
            && info.backends.iter().all(|b| b.running == 0)
    })
    .await;
    h.server.shutdown().await;
}

#[tokio::test]
async fn runtime_info_never_reveals_secrets() {
    const SECRET: &str = "s3cr3t-key";
    let mut config = Config::default();
    config.servers[0].api_key = Some(Secret::new(SECRET));
    config.servers[0].auth_header = Some(Secret::new(format!("Bearer {SECRET}")));
    config.servers.push(ServerConfig::with_url(format!(
        "https://operator:{SECRET}@comfy.example:8443/base"
    )));
    let server = TestServer::start_with(config).await;

    let response = server
        .admin()
        .get_runtime_info(GetRuntimeInfoRequest {})
        .await
        .expect("runtime info");
    let printed = format!("{response:?}");
    assert!(!printed.contains(SECRET), "secret leaked: {printed}");
    assert!(printed.contains("[REDACTED]"), "{printed}");

    let info = response.into_inner();
    let servers = info.config.expect("config").servers;
    assert_eq!(servers.len(), 2);
    assert_eq!(servers[0].api_key.as_deref(), Some("[REDACTED]"));
    assert_eq!(servers[0].auth_header.as_deref(), Some("[REDACTED]"));
    assert_eq!(servers[1].api_key, None);
    assert!(
        servers[1].url.contains("comfy.example:8443"),
        "{}",
        servers[1].url
    );
    assert_eq!(info.backends.len(), 2);
    for backend in &info.backends {
        assert!(!backend.url.contains(SECRET), "{}", backend.url);
        assert!(!backend.name.contains(SECRET), "{}", backend.name);
        assert!(
            !backend.last_error.as_deref().unwrap_or("").contains(SECRET),
            "{backend:?}"
        );
    }
    server.shutdown().await;
}
