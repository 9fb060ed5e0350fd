//! The harness of the execution tests: fake ComfyUI backends, the real
//! server configured for them (fast probes and retries), an artifact folder,
//! and waits on execution states (never on fixed times).

use std::time::Duration;

use comfy_reality::config::{Config, ServerConfig};
use comfy_reality::pb::{
    self, ExecuteWorkflowRequest, GetExecutionRequest, TaskPriority, TaskStatus, WorkflowExecution,
    execute_workflow_request::Workflow,
};
use comfy_reality_fake_comfyui::{FakeComfy, FakeOptions};
use serde_json::{Value, json};
use tempfile::TempDir;

use super::TestServer;

/// A harness: fake backends, the server configured for them, an artifact dir.
pub struct Harness {
    /// The server.
    pub server: TestServer,
    /// The fake backends, named gpu-0, gpu-1, ... in the configuration.
    pub fakes: Vec<FakeComfy>,
    /// Where artifacts are downloaded.
    pub artifacts: TempDir,
}

pub async fn harness(backends: usize, tune: impl FnOnce(&mut Config)) -> Harness {
    let mut fakes = Vec::new();
    for _ in 0..backends {
        fakes.push(
            FakeComfy::start(FakeOptions {
                time_scale: 1.0,
                ..FakeOptions::default()
            })
            .await
            .expect("fake starts"),
        );
    }
    let artifacts = TempDir::new().expect("tempdir");
    let mut config = Config {
        servers: Vec::new(),
        ..Config::default()
    };
    config.servers = fakes
        .iter()
        .enumerate()
        .map(|(i, fake)| ServerConfig {
            name: Some(format!("gpu-{i}")),
            url: fake.base_url(),
            ..ServerConfig::default()
        })
        .collect();
    config.scheduling.probe_interval_seconds = 0.1;
    config.scheduling.artifact_dir = Some(artifacts.path().to_path_buf());
    config.runtime.task_retry_delay_seconds = 0.05;
    tune(&mut config);
    let server = TestServer::start_with(config).await;
    let harness = Harness {
        server,
        fakes,
        artifacts,
    };
    harness.wait_backends_up().await;
    harness
}

impl Harness {
    /// Waits until ValidateWorkflow reports every backend up with its classes.
    pub async fn wait_backends_up(&self) {
        let want = self.fakes.len();
        for _ in 0..500 {
            let report = self
                .server
                .workflows()
                .validate_workflow(pb::ValidateWorkflowRequest {
                    workflow: Some(pb::validate_workflow_request::Workflow::WorkflowJson(
                        image_workflow("probe").to_string(),
                    )),
                    ..Default::default()
                })
                .await
                .expect("validate")
                .into_inner();
            if report.backends.len() == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("backends never came up");
    }

    pub async fn execute(&self, workflow: &Value, priority: TaskPriority) -> WorkflowExecution {
        self.execute_with(ExecuteWorkflowRequest {
            workflow: Some(Workflow::WorkflowJson(workflow.to_string())),
            priority: Some(priority.into()),
            ..Default::default()
        })
        .await
        .expect("execute")
    }

    /// Submits `workflow` inline, expecting a refusal with INVALID_ARGUMENT,
    /// and returns it (its violations name the fields).
    pub async fn refused(&self, workflow: &Value) -> tonic::Status {
        let status = self
            .execute_with(ExecuteWorkflowRequest {
                workflow: Some(Workflow::WorkflowJson(workflow.to_string())),
                ..Default::default()
            })
            .await
            .expect_err("the workflow is refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        status
    }

    pub async fn execute_with(
        &self,
        request: ExecuteWorkflowRequest,
    ) -> Result<WorkflowExecution, tonic::Status> {
        Ok(self
            .server
            .executions()
            .execute_workflow(request)
            .await?
            .into_inner()
            .execution
            .expect("execution"))
    }

    pub async fn get(&self, id: &str) -> WorkflowExecution {
        self.server
            .executions()
            .get_execution(GetExecutionRequest { id: id.to_owned() })
            .await
            .expect("get")
            .into_inner()
            .execution
            .expect("execution")
    }

    /// Waits until the execution is terminal and returns it.
    pub async fn wait_end(&self, id: &str) -> WorkflowExecution {
        for _ in 0..1500 {
            let execution = self.get(id).await;
            let status = TaskStatus::try_from(execution.status).unwrap();
            if matches!(
                status,
                TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
            ) {
                return execution;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("execution {id} never ended: {:?}", self.get(id).await);
    }

    /// Waits until `check` holds for the execution.
    pub async fn wait_for(&self, id: &str, what: &str, check: impl Fn(&WorkflowExecution) -> bool) {
        for _ in 0..1500 {
            if check(&self.get(id).await) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what} never happened: {:?}", self.get(id).await);
    }
}

/// The status of an execution.
pub fn status(execution: &WorkflowExecution) -> TaskStatus {
    TaskStatus::try_from(execution.status).unwrap()
}

/// EmptyImage -> SaveImage; `tag` makes the color unique so ComfyUI's cache
/// does not skip the work.
pub fn image_workflow(tag: &str) -> Value {
    let color = tag
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
        % 16_777_215;
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "sticker"}}
    })
}

/// One TestDelay node of `seconds` in 4 steps, unique by `nonce`.
pub fn delay_workflow(seconds: f64, nonce: u64) -> Value {
    json!({
        "1": {"class_type": "TestDelay", "inputs": {"seconds": seconds, "steps": 4, "nonce": nonce}}
    })
}
