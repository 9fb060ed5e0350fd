//! Ownership against the real server and the fake ComfyUI: a principal sees, cancels,
//! downloads, watches and subscribes to its tenant's work only; another tenant's ids answer
//! NOT_FOUND; lists and event streams leave them out; dependencies on them are refused;
//! idempotency keys are per tenant; admins see everything; `max_queued` is hit and recovered.

mod common;

use std::time::Duration;

use comfy_reality::api::access::key_sha256_hex;
use comfy_reality::config::{
    AuthMode, Config, LimitsOverride, PrincipalConfig, QueueType, Role, Secret, ServerConfig,
};
use comfy_reality::pb::execute_workflow_request::Workflow;
use comfy_reality::pb::subscribe_events_response::Item;
use comfy_reality::pb::{
    self, CancelExecutionRequest, CancelTaskRequest, CreateTaskRequest, ExecuteWorkflowRequest,
    GetArtifactRequest, GetExecutionRequest, GetTaskRequest, GetWorkflowRequest,
    ListExecutionsRequest, ListTasksRequest, ListWorkflowsRequest, RegisterWorkflowRequest,
    SubscribeEventsRequest, TaskDependency, WatchExecutionRequest,
};
use comfy_reality_fake_comfyui::{FakeComfy, FakeOptions};
use common::TestServer;
use common::exec::{delay_workflow, image_workflow};
use tokio_stream::StreamExt as _;
use tonic::{Code, Request, Status};

const ALICE: &str = "alice-key-0123456789";
const CAROL: &str = "carol-key-0123456789";
const BOB: &str = "bob-key-0123456789";
const ADMIN: &str = "admin-key-0123456789";

fn principal(name: &str, tenant: &str, role: Role, key: &str) -> PrincipalConfig {
    PrincipalConfig {
        name: name.into(),
        tenant: Some(tenant.into()),
        role,
        api_key_sha256: vec![Secret::new(key_sha256_hex(key))],
        cert_names: vec![],
        limits: LimitsOverride::default(),
    }
}

fn as_<T>(key: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

struct Setup {
    server: TestServer,
    _fake: FakeComfy,
}

async fn setup(tune: impl FnOnce(&mut Config)) -> Setup {
    let fake = FakeComfy::start(FakeOptions::default()).await.unwrap();
    let mut config = Config::default();
    config.runtime.queue_type = QueueType::Memory;
    config.scheduling.probe_interval_seconds = 0.1;
    config.servers = vec![ServerConfig::with_url(fake.base_url())];
    config.auth.mode = AuthMode::ApiKey;
    config.auth.principals = vec![
        principal("alice", "studio-a", Role::Submitter, ALICE),
        principal("carol", "studio-a", Role::Viewer, CAROL),
        principal("bob", "studio-b", Role::Submitter, BOB),
        principal("ada", "ops", Role::Admin, ADMIN),
    ];
    tune(&mut config);
    let server = TestServer::start_with(config).await;
    // Bounded wait for the backend's catalogue (ValidateWorkflow reports it when known).
    for attempt in 0.. {
        let report = server
            .workflows()
            .validate_workflow(as_(
                ADMIN,
                pb::ValidateWorkflowRequest {
                    workflow: Some(pb::validate_workflow_request::Workflow::WorkflowJson(
                        image_workflow("probe").to_string(),
                    )),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        if !report.backends.is_empty() {
            break;
        }
        assert!(attempt < 500, "the backend never came up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Setup {
        server,
        _fake: fake,
    }
}

async fn execute(
    server: &TestServer,
    key: &str,
    nonce: u64,
) -> Result<pb::WorkflowExecution, Status> {
    Ok(server
        .executions()
        .execute_workflow(as_(
            key,
            ExecuteWorkflowRequest {
                workflow: Some(Workflow::WorkflowJson(
                    delay_workflow(30.0, nonce).to_string(),
                )),
                ..Default::default()
            },
        ))
        .await?
        .into_inner()
        .execution
        .unwrap())
}

/// Follows the execution as `key` until it ends; returns its final status.
async fn wait_end(server: &TestServer, key: &str, id: &str) -> pb::TaskStatus {
    use pb::watch_execution_response::Update;
    let mut stream = server
        .events()
        .watch_execution(as_(key, WatchExecutionRequest { id: id.to_owned() }))
        .await
        .unwrap()
        .into_inner();
    let mut last = pb::TaskStatus::Unspecified;
    while let Some(update) = stream.next().await {
        if let Some(Update::Execution(execution)) = update.unwrap().update {
            last = execution.status();
        }
    }
    last
}

fn not_found<T: std::fmt::Debug>(result: Result<T, Status>, what: &str) {
    match result {
        Err(status) => assert_eq!(status.code(), Code::NotFound, "{what}: {status:?}"),
        Ok(value) => panic!("{what}: expected NOT_FOUND, got {value:?}"),
    }
}

#[tokio::test]
async fn another_tenant_sees_nothing_and_touches_nothing() {
    let Setup { server, _fake } = setup(|_| {}).await;
    let execution = execute(&server, ALICE, 1).await.unwrap();
    let root = execution.root_task_id.clone().unwrap();
    let task = server
        .tasks()
        .create_task(as_(
            ALICE,
            CreateTaskRequest {
                name: "alice's task".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    let workflow = server
        .workflows()
        .register_workflow(as_(
            ALICE,
            RegisterWorkflowRequest {
                name: "alice's workflow".into(),
                workflow_json: image_workflow("a").to_string(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .workflow
        .unwrap();

    // Bob, of another tenant: every id is unknown.
    let id = || execution.id.clone();
    not_found(
        server
            .executions()
            .get_execution(as_(BOB, GetExecutionRequest { id: id() }))
            .await,
        "get execution",
    );
    not_found(
        server
            .executions()
            .cancel_execution(as_(
                BOB,
                CancelExecutionRequest {
                    id: id(),
                    reason: None,
                },
            ))
            .await,
        "cancel execution",
    );
    not_found(
        server
            .executions()
            .get_artifact(as_(
                BOB,
                GetArtifactRequest {
                    execution_id: id(),
                    path: "x.png".into(),
                },
            ))
            .await
            .map(|_| ()),
        "download",
    );
    not_found(
        server
            .events()
            .watch_execution(as_(BOB, WatchExecutionRequest { id: id() }))
            .await
            .map(|_| ()),
        "watch",
    );
    for task_id in [&task.id, &root] {
        not_found(
            server
                .tasks()
                .get_task(as_(
                    BOB,
                    GetTaskRequest {
                        id: task_id.clone(),
                    },
                ))
                .await,
            "get task",
        );
        not_found(
            server
                .tasks()
                .cancel_task(as_(
                    BOB,
                    CancelTaskRequest {
                        id: task_id.clone(),
                        reason: None,
                    },
                ))
                .await,
            "cancel task",
        );
    }
    not_found(
        server
            .workflows()
            .get_workflow(as_(
                BOB,
                GetWorkflowRequest {
                    id: workflow.id.clone(),
                    version: None,
                },
            ))
            .await,
        "get workflow",
    );
    not_found(
        server
            .executions()
            .execute_workflow(as_(
                BOB,
                ExecuteWorkflowRequest {
                    workflow: Some(Workflow::WorkflowRef(pb::WorkflowRef {
                        id: workflow.id.clone(),
                        version: None,
                    })),
                    ..Default::default()
                },
            ))
            .await,
        "run another tenant's workflow",
    );
    let listed = server
        .executions()
        .list_executions(as_(BOB, ListExecutionsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.executions.is_empty(), "{listed:?}");
    let tasks = server
        .tasks()
        .list_tasks(as_(BOB, ListTasksRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(tasks.tasks.is_empty(), "{tasks:?}");
    let workflows = server
        .workflows()
        .list_workflows(as_(BOB, ListWorkflowsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(workflows.workflows.is_empty(), "{workflows:?}");

    // Dependencies on another tenant's tasks read as unknown ids.
    let status = server
        .executions()
        .execute_workflow(as_(
            BOB,
            ExecuteWorkflowRequest {
                workflow: Some(Workflow::WorkflowJson(delay_workflow(0.1, 2).to_string())),
                dependencies: vec![TaskDependency {
                    task_id: task.id.clone(),
                    dependency_type: pb::DependencyType::Requires.into(),
                }],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    common::assert_invalid_argument(&status, "dependencies[0].task_id");
    let status = server
        .tasks()
        .create_task(as_(
            BOB,
            CreateTaskRequest {
                name: "after alice".into(),
                dependencies: vec![root.clone()],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    common::assert_invalid_argument(&status, "dependencies[0]");

    // Bob's event stream replays history without a single event about alice's work.
    let mut stream = server
        .events()
        .subscribe_events(as_(
            BOB,
            SubscribeEventsRequest {
                after_sequence: Some(0),
                include_node_events: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let marker = server
        .tasks()
        .create_task(as_(
            BOB,
            CreateTaskRequest {
                name: "bob's marker".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    loop {
        let item = stream.next().await.expect("stream open").expect("item");
        let Some(Item::Event(event)) = item.item else {
            continue;
        };
        let text = format!("{event:?}");
        assert!(
            !text.contains(&execution.id) && !text.contains(&task.id) && !text.contains(&root),
            "bob saw alice's event: {text}"
        );
        if text.contains(&marker.id) {
            break;
        }
    }

    // Carol, of alice's tenant, sees alice's work; a viewer cannot cancel it.
    server
        .executions()
        .get_execution(as_(CAROL, GetExecutionRequest { id: id() }))
        .await
        .unwrap();
    let listed = server
        .executions()
        .list_executions(as_(CAROL, ListExecutionsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.executions.len(), 1);
    let status = server
        .executions()
        .cancel_execution(as_(
            CAROL,
            CancelExecutionRequest {
                id: id(),
                reason: None,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // The admin sees and cancels it.
    server
        .executions()
        .cancel_execution(as_(
            ADMIN,
            CancelExecutionRequest {
                id: id(),
                reason: None,
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        wait_end(&server, ADMIN, &execution.id).await,
        pb::TaskStatus::Cancelled
    );
    server.shutdown().await;
}

#[tokio::test]
async fn idempotency_keys_are_per_tenant() {
    let Setup { server, _fake } = setup(|_| {}).await;
    let create = |key: &'static str, name: &str| {
        as_(
            key,
            CreateTaskRequest {
                name: name.into(),
                request_id: Some("nightly-42".into()),
                ..Default::default()
            },
        )
    };
    let a = server
        .tasks()
        .create_task(create(ALICE, "a"))
        .await
        .unwrap();
    let b = server.tasks().create_task(create(BOB, "b")).await.unwrap();
    assert_ne!(
        a.into_inner().task.unwrap().id,
        b.into_inner().task.unwrap().id
    );
    // Within a tenant the key still means the same request.
    let status = server
        .tasks()
        .create_task(create(ALICE, "different"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    server.shutdown().await;
}

#[tokio::test]
async fn max_queued_is_hit_then_recovered() {
    let Setup { server, _fake } = setup(|config| {
        config.auth.principals[2].limits.max_queued = Some(1);
    })
    .await;
    let first = execute(&server, BOB, 10).await.unwrap();
    let status = execute(&server, BOB, 11).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.metadata().get("retry-after").is_some());
    // Another principal is not held by bob's quota.
    execute(&server, ALICE, 12).await.unwrap();
    server
        .executions()
        .cancel_execution(as_(
            BOB,
            CancelExecutionRequest {
                id: first.id.clone(),
                reason: None,
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        wait_end(&server, BOB, &first.id).await,
        pb::TaskStatus::Cancelled
    );
    execute(&server, BOB, 13).await.unwrap();
    server.shutdown().await;
}
