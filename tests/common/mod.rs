//! Shared harness of the integration tests: a real server on `127.0.0.1:0`
//! (bound before the server task starts, so no test ever waits or sleeps for
//! readiness), typed clients over one lazily connected channel, and helpers
//! that read the `google.rpc` details out of a `tonic::Status`.
//!
//! Each test binary uses a different subset of this module.
#![allow(dead_code)]

pub mod certs;
pub mod exec;
pub mod hostile;
pub mod process;

use std::net::SocketAddr;
use std::time::Duration;

use comfy_reality::config::Config;
use comfy_reality::pb::admin_service_client::AdminServiceClient;
use comfy_reality::pb::event_service_client::EventServiceClient;
use comfy_reality::pb::execution_service_client::ExecutionServiceClient;
use comfy_reality::pb::task_service_client::TaskServiceClient;
use comfy_reality::pb::workflow_service_client::WorkflowServiceClient;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient as ReflectionV1Client;
use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as ReflectionV1AlphaClient;
use tonic_types::StatusExt;

/// The `google.rpc.ErrorInfo.domain` the service puts on every error.
pub const ERROR_DOMAIN: &str = "comfyreality.runtime.v1";

/// A server running inside the test's tokio runtime.
pub struct TestServer {
    /// The address the server's listener is bound to.
    pub addr: SocketAddr,
    /// One channel shared by every client the test asks for.
    channel: Channel,
    /// Cancelling it starts the server's graceful shutdown.
    token: CancellationToken,
    /// The server task; `None` once `shutdown` awaited it.
    handle: Option<JoinHandle<Result<(), comfy_reality::ServeError>>>,
    /// The directory of the server's own store file, removed on drop.
    _data: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Starts a server with the default configuration.
    pub async fn start() -> Self {
        Self::start_with(Config::default()).await
    }

    /// Starts a server with `config`. The listener is bound before the
    /// server task is spawned, so calls can be made at once: the kernel
    /// queues the connection until the server accepts it.
    pub async fn start_with(config: Config) -> Self {
        Self::start_inner(config, None).await
    }

    /// Starts a server with `config` whose runtime sees this host's GPUs
    /// through `gpu` (a monitor over a fake probe) instead of NVML.
    pub async fn start_with_gpu(config: Config, gpu: comfy_reality::gpu::GpuMonitor) -> Self {
        Self::start_inner(config, Some(gpu)).await
    }

    async fn start_inner(mut config: Config, gpu: Option<comfy_reality::gpu::GpuMonitor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        config.service.listen = addr;
        // Each server gets its own store file, so that its durable store
        // never meets another test's (unless the test chose one itself).
        let data = config.store.path.is_none().then(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            config.store.path = Some(dir.path().join("comfy-reality.db"));
            dir
        });
        let token = CancellationToken::new();
        let handle = match gpu {
            None => tokio::spawn(comfy_reality::run(config, listener, token.clone())),
            Some(gpu) => {
                let store = comfy_reality::server::open_store(&config).expect("open the store");
                let runtime = comfy_reality::runtime::Runtime::with_gpu(config, store, gpu)
                    .expect("the runtime starts");
                tokio::spawn(comfy_reality::server::serve_with_runtime(
                    runtime,
                    listener,
                    None,
                    token.clone(),
                ))
            }
        };
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .expect("valid endpoint")
            .connect_lazy();
        Self {
            addr,
            channel,
            token,
            handle: Some(handle),
            _data: data,
        }
    }

    /// A clone of the shared channel.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// EventService client.
    pub fn events(&self) -> EventServiceClient<Channel> {
        EventServiceClient::new(self.channel())
    }

    /// ExecutionService client.
    pub fn executions(&self) -> ExecutionServiceClient<Channel> {
        ExecutionServiceClient::new(self.channel())
    }

    /// TaskService client.
    pub fn tasks(&self) -> TaskServiceClient<Channel> {
        TaskServiceClient::new(self.channel())
    }

    /// WorkflowService client.
    pub fn workflows(&self) -> WorkflowServiceClient<Channel> {
        WorkflowServiceClient::new(self.channel())
    }

    /// AdminService client.
    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel())
    }

    /// grpc.health.v1.Health client.
    pub fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel())
    }

    /// grpc.reflection.v1 client.
    pub fn reflection_v1(&self) -> ReflectionV1Client<Channel> {
        ReflectionV1Client::new(self.channel())
    }

    /// grpc.reflection.v1alpha client.
    pub fn reflection_v1alpha(&self) -> ReflectionV1AlphaClient<Channel> {
        ReflectionV1AlphaClient::new(self.channel())
    }

    /// Requests shutdown without waiting for it (streams stay readable).
    pub fn request_shutdown(&self) {
        self.token.cancel();
    }

    /// Cancels the shutdown token and awaits the server task; panics if the
    /// server returned an error or panicked.
    pub async fn shutdown(mut self) {
        self.token.cancel();
        if let Some(handle) = self.handle.take() {
            handle
                .await
                .expect("server task panicked")
                .expect("server returned an error");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // A test that ends without `shutdown` must not leave a server behind.
        self.token.cancel();
    }
}

/// The `ErrorInfo.reason` of a status, if it has an ErrorInfo.
pub fn error_reason(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

/// The fields named by the status's BadRequest violations, in order.
pub fn bad_request_fields(status: &Status) -> Vec<String> {
    bad_request_violations(status)
        .into_iter()
        .map(|(field, _)| field)
        .collect()
}

/// `(field, description)` of every BadRequest violation, in order.
pub fn bad_request_violations(status: &Status) -> Vec<(String, String)> {
    status
        .get_details_bad_request()
        .map(|bad| {
            bad.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts the status is INVALID_ARGUMENT with reason `ValidationError`, the
/// service's domain, and a BadRequest violation on `field`.
#[track_caller]
pub fn assert_invalid_argument(status: &Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, "ValidationError", "{status:?}");
    assert_eq!(info.domain, ERROR_DOMAIN, "{status:?}");
    let fields = bad_request_fields(status);
    assert!(
        fields.iter().any(|f| f == field),
        "expected a BadRequest violation on `{field}`, got {fields:?} in {status:?}"
    );
}

/// Asserts the status has `code` and ErrorInfo reason `reason`.
#[track_caller]
pub fn assert_status(status: &Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(error_reason(status).as_deref(), Some(reason), "{status:?}");
}

/// A command for the `comfy-reality` binary that inherits no
/// `COMFY_REALITY*` variable from the test's environment, so that only what a
/// test sets configures the child.
pub fn clean_command() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_comfy-reality"));
    for (name, _) in std::env::vars_os() {
        if name
            .to_str()
            .is_some_and(|n| n.to_ascii_uppercase().starts_with("COMFY_REALITY"))
        {
            command.env_remove(name);
        }
    }
    command
}

/// Runs `command` to completion with captured output, killing it (and
/// failing) if it is still running after `guard` (a hang guard, not a
/// timing assertion).
pub fn run_bounded(command: &mut std::process::Command, guard: Duration) -> std::process::Output {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    wait_bounded(&mut child, guard)
}

/// Waits for `child` (spawned with piped stdout and stderr) and collects its
/// output, killing it (and failing) if it is still running after `guard`.
pub fn wait_bounded(child: &mut std::process::Child, guard: Duration) -> std::process::Output {
    use std::io::Read as _;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout.read_to_end(&mut bytes);
        bytes
    });
    let err = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.read_to_end(&mut bytes);
        bytes
    });
    let deadline = std::time::Instant::now() + guard;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the command did not exit within {guard:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}
