//! Metrics and logs as an operator meets them: the real `comfy-reality serve`
//! binary in front of a fake ComfyUI, its `/metrics` scraped over HTTP after
//! real gRPC calls, and its log lines parsed. Waits are on printed addresses
//! and execution states, never on fixed times.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use comfy_reality::pb::event_service_client::EventServiceClient;
use comfy_reality::pb::execution_service_client::ExecutionServiceClient;
use comfy_reality::pb::task_service_client::TaskServiceClient;
use comfy_reality::pb::{
    CreateTaskRequest, ExecuteWorkflowRequest, GetArtifactRequest, GetExecutionRequest,
    GetTaskRequest, SubscribeEventsRequest, TaskStatus, WorkflowExecution,
    execute_workflow_request::Workflow,
};
use comfy_reality_fake_comfyui::{FakeComfy, FakeOptions};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::runtime::Runtime;
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic::transport::Channel;

/// Upper bound on waiting for the child to print, exit, or finish an
/// execution. A hang guard, not a timing assertion.
const HANG_GUARD: Duration = Duration::from_secs(30);

const TASK_SERVICE: &str = "comfyreality.runtime.v1.TaskService";
const EXECUTION_SERVICE: &str = "comfyreality.runtime.v1.ExecutionService";
const EVENT_SERVICE: &str = "comfyreality.runtime.v1.EventService";

/// A fake ComfyUI and the tokio runtime that serves it and runs the test's
/// clients.
struct Backend {
    /// Runs the fake and the test's async calls.
    rt: Runtime,
    /// The fake; `None` once shut down.
    fake: Option<FakeComfy>,
}

impl Backend {
    fn start() -> Self {
        Self::start_with(FakeOptions::default())
    }

    fn start_with(options: FakeOptions) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let fake = rt
            .block_on(FakeComfy::start(options))
            .expect("fake ComfyUI starts");
        Self {
            rt,
            fake: Some(fake),
        }
    }

    fn url(&self) -> String {
        self.fake.as_ref().expect("fake running").base_url()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(fake) = self.fake.take() {
            self.rt.block_on(fake.shutdown());
        }
    }
}

/// A running `comfy-reality serve`.
struct ServeProcess {
    /// The child; killed on drop if still running.
    child: Child,
    /// The gRPC address from the first stdout line.
    addr: SocketAddr,
    /// The metrics address from the second stdout line.
    metrics_addr: SocketAddr,
    /// Collects everything the child writes to stderr.
    stderr: Option<JoinHandle<String>>,
    /// Keeps the data directory alive as long as the child.
    data: TempDir,
}

fn next_line(lines: &mpsc::Receiver<String>, child: &mut Child, what: &str) -> String {
    match lines.recv_timeout(HANG_GUARD) {
        Ok(line) => line,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no {what} line on stdout ({e})");
        }
    }
}

impl ServeProcess {
    /// Starts `serve` on port 0 for gRPC and metrics against `backend`, with
    /// `extra` flags and `env` variables, and reads both printed addresses.
    fn start(backend: &Backend, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let url = backend.url();
        let mut args = vec!["--comfyui", url.as_str()];
        args.extend_from_slice(extra);
        Self::launch(&args, env)
    }

    /// Like [`ServeProcess::start`], with `--config file` naming the backend
    /// (no `--comfyui`, which would replace the configured servers).
    fn start_with_config(config: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let config = config.to_str().expect("utf-8 path");
        let mut args = vec!["--config", config];
        args.extend_from_slice(extra);
        Self::launch(&args, env)
    }

    fn launch(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let data = tempfile::tempdir().expect("tempdir");
        let mut command = common::clean_command();
        let mut child = command
            .env("COMFY_REALITY__SERVICE__DATA_DIR", data.path())
            .env("COMFY_REALITY__SCHEDULING__PROBE_INTERVAL_SECONDS", "0.1")
            .envs(env.iter().copied())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn comfy-reality serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut text);
            text
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let first = next_line(&lines, &mut child, "address");
        let addr = first
            .strip_prefix("comfy-reality listening on ")
            .unwrap_or_else(|| panic!("unexpected first stdout line {first:?}"))
            .parse()
            .unwrap_or_else(|e| panic!("bad address in {first:?}: {e}"));
        let second = next_line(&lines, &mut child, "metrics address");
        let metrics_addr = second
            .strip_prefix("comfy-reality metrics on http://")
            .and_then(|rest| rest.strip_suffix("/metrics"))
            .unwrap_or_else(|| panic!("unexpected second stdout line {second:?}"))
            .parse()
            .unwrap_or_else(|e| panic!("bad address in {second:?}: {e}"));
        Self {
            child,
            addr,
            metrics_addr,
            stderr: Some(stderr),
            data,
        }
    }

    /// A lazily connected channel to the server, driven by `rt`.
    fn channel(&self, rt: &Runtime) -> Channel {
        let _entered = rt.enter();
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("valid uri")
            .connect_lazy()
    }

    /// SIGTERM, then waits (bounded) for a clean exit and returns stderr.
    fn stop(&mut self) -> String {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let status = self.wait_exit();
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().expect("stderr reader"))
            .unwrap_or_default();
        assert!(status.success(), "exit status {status:?}\n{stderr}");
        stderr
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("server did not exit within {HANG_GUARD:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// EmptyImage -> SaveImage; `tag` makes the color unique so ComfyUI's cache
/// does not skip the work.
fn image_workflow(tag: &str) -> Value {
    let color = tag
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
        % 16_777_215;
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "metrics"}}
    })
}

async fn execute(channel: Channel, tag: &str, request_id: Option<&str>) -> WorkflowExecution {
    let mut request = tonic::Request::new(ExecuteWorkflowRequest {
        workflow: Some(Workflow::WorkflowJson(image_workflow(tag).to_string())),
        ..ExecuteWorkflowRequest::default()
    });
    if let Some(id) = request_id {
        request
            .metadata_mut()
            .insert("x-request-id", id.parse().expect("ascii id"));
    }
    ExecutionServiceClient::new(channel)
        .execute_workflow(request)
        .await
        .expect("execute")
        .into_inner()
        .execution
        .expect("execution")
}

/// Polls GetExecution until the execution is terminal.
async fn wait_end(channel: Channel, id: &str) -> (WorkflowExecution, u64) {
    let mut client = ExecutionServiceClient::new(channel);
    let deadline = Instant::now() + HANG_GUARD;
    let mut polls = 0;
    loop {
        polls += 1;
        let execution = client
            .get_execution(GetExecutionRequest { id: id.to_owned() })
            .await
            .expect("get execution")
            .into_inner()
            .execution
            .expect("execution");
        let status = TaskStatus::try_from(execution.status).expect("known status");
        if matches!(
            status,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        ) {
            return (execution, polls);
        }
        assert!(
            Instant::now() < deadline,
            "execution {id} never ended: {execution:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A label name and value.
type Label = (&'static str, &'static str);

/// One sample: labels and value, by metric name.
type Samples = BTreeMap<String, Vec<(BTreeMap<String, String>, f64)>>;

/// Parses the text exposition format (label values here hold no escaped
/// quotes or commas).
fn parse_exposition(text: &str) -> Samples {
    let mut samples = Samples::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split(',')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (k, v) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("bad label in {line}"));
                (k.to_owned(), v.trim_matches('"').to_owned())
            })
            .collect();
        let value = value
            .parse()
            .unwrap_or_else(|e| panic!("bad value in {line}: {e}"));
        samples
            .entry(name.to_owned())
            .or_default()
            .push((labels, value));
    }
    samples
}

/// The value of `name` with exactly `labels`, if present.
fn sample(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    samples
        .get(name)?
        .iter()
        .find(|(l, _)| *l == want)
        .map(|(_, v)| *v)
}

async fn scrape(addr: SocketAddr) -> (String, String) {
    let response = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("scrape /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (content_type, response.text().await.expect("metrics body"))
}

#[test]
fn a_scrape_counts_the_grpc_calls_that_were_made() {
    let backend = Backend::start();
    let mut server = ServeProcess::start(&backend, &[], &[]);
    let channel = server.channel(&backend.rt);
    let metrics_addr = server.metrics_addr;
    let (content_type, text, artifact_messages, polls) = backend.rt.block_on(async move {
        // Before any call: build_info and no gRPC series yet.
        let (_, before) = scrape(metrics_addr).await;
        assert!(!before.contains("grpc_server_started_total{"), "{before}");

        let mut tasks = TaskServiceClient::new(channel.clone());
        tasks
            .create_task(CreateTaskRequest {
                name: "metered".into(),
                ..CreateTaskRequest::default()
            })
            .await
            .expect("create task");
        for _ in 0..2 {
            let missing = tasks
                .get_task(GetTaskRequest {
                    id: uuid::Uuid::new_v4().to_string(),
                })
                .await
                .expect_err("unknown task");
            assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
        }
        let mut executions = ExecutionServiceClient::new(channel.clone());
        let missing = executions
            .get_artifact(GetArtifactRequest {
                execution_id: uuid::Uuid::new_v4().to_string(),
                path: "nothing.png".into(),
            })
            .await
            .expect_err("unknown execution");
        assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

        // A server stream that succeeds: the artifact of a finished execution.
        let execution = execute(channel.clone(), "scrape", None).await;
        let (done, polls) = wait_end(channel.clone(), &execution.id).await;
        assert_eq!(
            TaskStatus::try_from(done.status),
            Ok(TaskStatus::Completed),
            "{done:?}"
        );
        let mut stream = executions
            .get_artifact(GetArtifactRequest {
                execution_id: done.id.clone(),
                path: done.artifacts[0].clone(),
            })
            .await
            .expect("artifact")
            .into_inner();
        let mut received = 0_u64;
        while let Some(chunk) = stream.next().await {
            chunk.expect("artifact chunk");
            received += 1;
        }
        let (content_type, text) = scrape(metrics_addr).await;
        (content_type, text, received, polls)
    });
    assert_eq!(content_type, "text/plain; version=0.0.4");
    let samples = parse_exposition(&text);

    let unary = |service: &'static str, method: &'static str| {
        [
            ("grpc_type", "unary"),
            ("grpc_service", service),
            ("grpc_method", method),
        ]
    };
    let with_code = |labels: [(&'static str, &'static str); 3], code: &'static str| {
        [labels[0], labels[1], labels[2], ("grpc_code", code)]
    };
    let create = unary(TASK_SERVICE, "CreateTask");
    let get = unary(TASK_SERVICE, "GetTask");
    let get_execution = unary(EXECUTION_SERVICE, "GetExecution");
    let artifact = [
        ("grpc_type", "server_stream"),
        ("grpc_service", EXECUTION_SERVICE),
        ("grpc_method", "GetArtifact"),
    ];
    let polls = polls as f64;
    let expect: Vec<(&str, Vec<Label>, f64)> = vec![
        ("grpc_server_started_total", create.to_vec(), 1.0),
        (
            "grpc_server_handled_total",
            with_code(create, "OK").to_vec(),
            1.0,
        ),
        ("grpc_server_msg_received_total", create.to_vec(), 1.0),
        ("grpc_server_msg_sent_total", create.to_vec(), 1.0),
        ("grpc_server_started_total", get.to_vec(), 2.0),
        (
            "grpc_server_handled_total",
            with_code(get, "NotFound").to_vec(),
            2.0,
        ),
        ("grpc_server_handling_seconds_count", get.to_vec(), 2.0),
        ("grpc_server_started_total", get_execution.to_vec(), polls),
        (
            "grpc_server_handled_total",
            with_code(get_execution, "OK").to_vec(),
            polls,
        ),
        ("grpc_server_started_total", artifact.to_vec(), 2.0),
        (
            "grpc_server_handled_total",
            with_code(artifact, "NotFound").to_vec(),
            1.0,
        ),
        (
            "grpc_server_handled_total",
            with_code(artifact, "OK").to_vec(),
            1.0,
        ),
        ("grpc_server_msg_received_total", artifact.to_vec(), 2.0),
        (
            "grpc_server_msg_sent_total",
            artifact.to_vec(),
            artifact_messages as f64,
        ),
        ("grpc_server_handling_seconds_count", artifact.to_vec(), 2.0),
        (
            "comfy_reality_build_info",
            vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("api_version", "v1"),
            ],
            1.0,
        ),
    ];
    for (name, labels, want) in expect {
        assert_eq!(
            sample(&samples, name, &labels),
            Some(want),
            "{name} {labels:?} in\n{text}"
        );
    }
    assert!(artifact_messages >= 1);
    // A failed unary call sent no message.
    assert_eq!(
        sample(&samples, "grpc_server_msg_sent_total", &get),
        None,
        "{text}"
    );
    // Histograms have buckets (not summaries), with go-grpc-prometheus's bounds.
    assert!(
        text.contains("# TYPE grpc_server_handling_seconds histogram"),
        "{text}"
    );
    let mut bucket = get.to_vec();
    bucket.push(("le", "+Inf"));
    assert_eq!(
        sample(&samples, "grpc_server_handling_seconds_bucket", &bucket),
        Some(2.0),
        "{text}"
    );
    // The runtime's own families count the work of the run: one image
    // execution (a root task and two node tasks) completed on an up backend.
    let finished = |task_type: &str| {
        sample(
            &samples,
            "comfy_reality_tasks_finished_total",
            &[("type", task_type), ("status", "completed")],
        )
    };
    assert_eq!(finished("workflow"), Some(1.0), "{text}");
    assert_eq!(finished("node"), Some(2.0), "{text}");
    assert_eq!(
        sample(
            &samples,
            "comfy_reality_tasks_submitted_total",
            &[("type", "workflow")]
        ),
        Some(1.0),
        "{text}"
    );
    assert!(text.contains("comfy_reality_backend_up{"), "{text}");
    assert!(
        text.contains("comfy_reality_node_duration_seconds_bucket{class_type=\"SaveImage\""),
        "{text}"
    );
    assert!(
        text.contains("comfy_reality_events_published_total{kind=\"task\"}"),
        "{text}"
    );
    // Series the server keeps once registered count like the others.
    assert_eq!(
        sample(
            &samples,
            "comfy_reality_task_duration_seconds_count",
            &[("type", "workflow"), ("status", "completed")]
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(&samples, "comfy_reality_queue_wait_seconds_count", &[]).is_some_and(|n| n >= 1.0),
        "{text}"
    );
    // No id is ever a label.
    for series in samples.values().flatten() {
        for key in series.0.keys() {
            assert!(!key.ends_with("_id"), "id label {key} in\n{text}");
        }
    }
    drop(server.stop());
}

#[test]
fn a_long_lived_stream_is_handled_when_the_client_leaves() {
    let backend = Backend::start();
    let mut server = ServeProcess::start(&backend, &[], &[]);
    let channel = server.channel(&backend.rt);
    let metrics_addr = server.metrics_addr;
    let subscribe = [
        ("grpc_type", "server_stream"),
        ("grpc_service", EVENT_SERVICE),
        ("grpc_method", "SubscribeEvents"),
    ];
    let canceled = [
        subscribe[0],
        subscribe[1],
        subscribe[2],
        ("grpc_code", "Canceled"),
    ];
    backend.rt.block_on(async move {
        // Before anything happened: the table's counters read 0, not "no data".
        let (_, before) = scrape(metrics_addr).await;
        let before = parse_exposition(&before);
        assert_eq!(
            sample(&before, "comfy_reality_timeouts_total", &[]),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &before,
                "comfy_reality_retries_total",
                &[("error_type", "BackendUnavailableError")]
            ),
            Some(0.0)
        );
        let idle_subscribers = sample(&before, "comfy_reality_event_subscribers", &[]);
        assert_eq!(idle_subscribers, Some(0.0), "{before:?}");

        let mut stream = EventServiceClient::new(channel)
            .subscribe_events(SubscribeEventsRequest {
                after_sequence: Some(0),
                ..SubscribeEventsRequest::default()
            })
            .await
            .expect("subscribe")
            .into_inner();
        // The runtime's start-up events are retained, so one arrives at once.
        stream
            .next()
            .await
            .expect("an event")
            .expect("an event, not an error");
        let (_, open) = scrape(metrics_addr).await;
        let open = parse_exposition(&open);
        assert_eq!(
            sample(&open, "grpc_server_started_total", &subscribe),
            Some(1.0)
        );
        assert!(
            sample(&open, "grpc_server_msg_sent_total", &subscribe) >= Some(1.0),
            "{open:?}"
        );
        // Counted while open, with no event published since it opened.
        assert_eq!(
            sample(&open, "comfy_reality_event_subscribers", &[]),
            Some(1.0),
            "{open:?}"
        );
        assert!(
            !open
                .get("grpc_server_handled_total")
                .is_some_and(|series| series
                    .iter()
                    .any(|(labels, _)| labels.get("grpc_method").map(String::as_str)
                        == Some("SubscribeEvents"))),
            "an open stream is not handled yet: {open:?}"
        );

        drop(stream);
        // The server learns of the reset asynchronously: wait for it (bounded).
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            let (_, text) = scrape(metrics_addr).await;
            let samples = parse_exposition(&text);
            if sample(&samples, "grpc_server_handled_total", &canceled) == Some(1.0)
                && sample(&samples, "comfy_reality_event_subscribers", &[]) == Some(0.0)
            {
                assert_eq!(
                    sample(&samples, "grpc_server_handling_seconds_count", &subscribe),
                    Some(1.0),
                    "{text}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the dropped stream never counted as Canceled and closed:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    server.stop();
}

#[test]
fn json_log_lines_carry_the_ids_at_the_top_level() {
    const REQUEST_ID: &str = "it-metrics-logs-41c2";
    let backend = Backend::start();
    let mut server = ServeProcess::start(
        &backend,
        &["--log-format", "json", "--log-level", "debug"],
        &[],
    );
    let channel = server.channel(&backend.rt);
    let (task_id, execution_id) = backend.rt.block_on(async move {
        let mut request = tonic::Request::new(CreateTaskRequest {
            name: "logged".into(),
            ..CreateTaskRequest::default()
        });
        request
            .metadata_mut()
            .insert("x-request-id", REQUEST_ID.parse().expect("ascii id"));
        let task = TaskServiceClient::new(channel.clone())
            .create_task(request)
            .await
            .expect("create task")
            .into_inner()
            .task
            .expect("task");
        let execution = execute(channel.clone(), "logged", Some(REQUEST_ID)).await;
        wait_end(channel, &execution.id).await;
        (task.id, execution.id)
    });
    let stderr = server.stop();
    let mut lines = Vec::new();
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line:?}"));
        let object = value
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {line}"));
        for key in ["timestamp", "level", "target"] {
            assert!(
                object.get(key).is_some_and(Value::is_string),
                "{key}: {line}"
            );
        }
        lines.push(value);
    }
    let top = |key: &str, want: &str| {
        lines
            .iter()
            .filter(|v| v.get(key).and_then(Value::as_str) == Some(want))
            .collect::<Vec<_>>()
    };
    let tagged = top("request_id", REQUEST_ID);
    assert!(
        !tagged.is_empty(),
        "no line has request_id {REQUEST_ID} at the top level:\n{stderr}"
    );
    assert!(
        tagged
            .iter()
            .any(|v| v.get("task_id").and_then(Value::as_str) == Some(&task_id)),
        "no line of the request names task_id {task_id} at the top level:\n{stderr}"
    );
    assert!(
        tagged
            .iter()
            .any(|v| v.get("execution_id").and_then(Value::as_str) == Some(&execution_id)),
        "no line of the request names execution_id {execution_id} at the top level:\n{stderr}"
    );
    assert!(
        lines
            .iter()
            .any(|v| v.get("level").and_then(Value::as_str) == Some("DEBUG")),
        "debug level writes debug lines:\n{stderr}"
    );
}

/// A server started with an api_key for its backend, logging at debug level
/// in `format` to `log_file`, runs an execution (so the key is used over HTTP
/// and WebSocket) and never writes the key anywhere.
fn secret_stays_out_of_logs(format: &str) {
    const SECRET: &str = "sk-7d0c1e5b9a-never-log-me";
    let backend = Backend::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("comfy-reality.toml");
    std::fs::write(
        &config,
        format!(
            "[[servers]]\nname = \"gpu-secret\"\nurl = \"{}\"\napi_key = \"{SECRET}\"\n",
            backend.url()
        ),
    )
    .expect("write config");
    let log_file = dir.path().join("service.log");
    let log_file_str = log_file.to_str().expect("utf-8 path");
    let mut server = ServeProcess::start_with_config(
        &config,
        &["--log-format", format, "--log-level", "debug"],
        &[("COMFY_REALITY__RUNTIME__LOG_FILE", log_file_str)],
    );
    let channel = server.channel(&backend.rt);
    let done = backend.rt.block_on(async move {
        let execution = execute(channel.clone(), &format!("secret-{format}"), None).await;
        wait_end(channel, &execution.id).await.0
    });
    assert_eq!(
        TaskStatus::try_from(done.status),
        Ok(TaskStatus::Completed),
        "{done:?}"
    );
    let stderr = server.stop();
    let logged = std::fs::read_to_string(&log_file).expect("log_file written");
    assert!(logged.lines().count() > 5, "log_file is honoured: {logged}");
    assert!(
        logged.contains(&done.id),
        "the execution is logged: {logged}"
    );
    // The configured backend, the one holding the key, is the one logged.
    assert!(logged.contains("gpu-secret"), "{logged}");
    assert!(
        !logged.contains(SECRET),
        "secret in {format} log_file:\n{logged}"
    );
    assert!(!stderr.contains(SECRET), "secret on stderr:\n{stderr}");
    assert_no_secret_in(server.data.path(), SECRET);
}

/// No file under `dir` contains `secret`.
fn assert_no_secret_in(dir: &Path, secret: &str) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            assert_no_secret_in(&path, secret);
        } else {
            let bytes = std::fs::read(&path).expect("read file");
            assert!(
                !String::from_utf8_lossy(&bytes).contains(secret),
                "secret in {}",
                path.display()
            );
        }
    }
}

#[test]
fn an_api_key_never_reaches_json_logs_at_debug_level() {
    secret_stays_out_of_logs("json");
}

#[test]
fn an_api_key_never_reaches_text_logs_at_debug_level() {
    secret_stays_out_of_logs("text");
}

/// The one series of `name` whose labels include `(key, value)`: its labels and value.
fn series_with(
    samples: &Samples,
    name: &str,
    key: &str,
    value: &str,
) -> Option<(BTreeMap<String, String>, f64)> {
    samples
        .get(name)?
        .iter()
        .find(|(labels, _)| labels.get(key).map(String::as_str) == Some(value))
        .cloned()
}

#[test]
fn backend_device_gauges_follow_system_stats_and_the_vram_fraction() {
    let backend = Backend::start_with(FakeOptions {
        device_type: comfy_reality_fake_comfyui::DeviceType::Cuda,
        vram_total_mb: Some(10_000),
        ..FakeOptions::default()
    });
    let mut server = ServeProcess::start(
        &backend,
        &[],
        &[("COMFY_REALITY__EXECUTOR__GPU_MEMORY_FRACTION", "0.5")],
    );
    let mib = 1024.0 * 1024.0;
    let fake = backend.fake.as_ref().expect("fake running");
    // Polls the scrape until `check` holds (bounded: a hang guard).
    let wait = |what: &str, check: &dyn Fn(&Samples) -> bool| -> Samples {
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            let (_, text) = backend.rt.block_on(scrape(server.metrics_addr));
            let samples = parse_exposition(&text);
            if check(&samples) {
                return samples;
            }
            assert!(Instant::now() < deadline, "{what} never scraped:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let samples = wait("the device gauges", &|s| {
        series_with(s, "comfy_reality_backend_vram_total_bytes", "type", "cuda").is_some()
    });
    let (labels, total) = series_with(
        &samples,
        "comfy_reality_backend_vram_total_bytes",
        "type",
        "cuda",
    )
    .unwrap();
    assert_eq!(total, 10_000.0 * mib);
    assert_eq!(labels["device"], "cuda:0");
    let name = labels["backend"].clone();
    let device = [
        ("backend", name.as_str()),
        ("device", "cuda:0"),
        ("type", "cuda"),
    ];
    assert_eq!(
        sample(&samples, "comfy_reality_backend_vram_free_bytes", &device),
        Some(10_000.0 * mib)
    );

    fake.set_vram_used_mb(6_000).unwrap();
    let samples = wait("the backend over its fraction", &|s| {
        sample(
            s,
            "comfy_reality_backend_vram_over_fraction",
            &[("backend", &name)],
        ) == Some(1.0)
    });
    assert_eq!(
        sample(&samples, "comfy_reality_backend_vram_free_bytes", &device),
        Some(4_000.0 * mib)
    );
    assert_eq!(
        sample(
            &samples,
            "comfy_reality_backend_torch_vram_total_bytes",
            &device
        ),
        Some(6_000.0 * mib)
    );
    fake.set_vram_used_mb(1_000).unwrap();
    wait("the backend back under its fraction", &|s| {
        sample(
            s,
            "comfy_reality_backend_vram_over_fraction",
            &[("backend", &name)],
        ) == Some(0.0)
    });
    let (_, text) = backend.rt.block_on(scrape(server.metrics_addr));
    assert!(
        text.contains("# HELP comfy_reality_backend_vram_total_bytes"),
        "described"
    );
    server.stop();
}
