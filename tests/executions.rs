//! ExecutionService end to end: the real server on port 0 in front of fake
//! ComfyUI backends (never a real GPU or ComfyUI). Deterministic: tests wait
//! for states, never for fixed times.

mod common;

use comfy_reality::pb::input_value::Kind;
use comfy_reality::pb::{
    self, CancelExecutionRequest, ExecuteWorkflowRequest, GetArtifactRequest, TaskPriority,
    TaskStatus, execute_workflow_request::Workflow,
};
use common::exec::{delay_workflow, harness, image_workflow, status};
use serde_json::{Value, json};
use tokio_stream::StreamExt;
use tonic::Code;

#[tokio::test]
async fn an_execution_runs_to_completion_with_node_tasks_and_artifacts() {
    let h = harness(1, |_| {}).await;
    let execution = h
        .execute(&image_workflow("complete"), TaskPriority::Normal)
        .await;
    assert!(!execution.id.is_empty());
    assert_eq!(execution.tasks.len(), 3, "root + 2 node tasks");
    let done = h.wait_end(&execution.id).await;
    assert_eq!(status(&done), TaskStatus::Completed, "{done:?}");
    assert_eq!(done.progress, 1.0);
    assert_eq!(done.backend.as_deref(), Some("gpu-0"));
    // The client id is the one the prompt was posted under: empty in the
    // answer when not dispatched yet, never a different value later.
    assert!(uuid::Uuid::parse_str(&done.client_id).is_ok(), "{done:?}");
    assert!(
        execution.client_id.is_empty() || execution.client_id == done.client_id,
        "answer {:?} vs later {:?}",
        execution.client_id,
        done.client_id
    );
    assert!(done.total_duration_seconds.unwrap() > 0.0);
    assert_eq!(done.artifacts.len(), 1, "{:?}", done.artifacts);
    assert!(
        done.artifacts[0].starts_with("sticker_"),
        "{:?}",
        done.artifacts
    );
    let outputs: Value = serde_json::from_str(&done.outputs).unwrap();
    assert!(outputs["2"]["images"].is_array(), "{outputs}");
    // Root first, then one NODE task per node, every one COMPLETED.
    let root = &done.tasks[0];
    assert_eq!(Some(&root.id), done.root_task_id.as_ref());
    assert_eq!(root.r#type, pb::TaskType::Workflow as i32);
    for node in &done.tasks[1..] {
        assert_eq!(node.r#type, pb::TaskType::Node as i32);
        assert_eq!(node.parent_id.as_ref(), Some(&root.id));
        assert_eq!(node.status, TaskStatus::Completed as i32, "{node:?}");
    }
    assert_eq!(done.completed_tasks, 3);
    assert_eq!(done.node_metrics.len(), 2);
    // The file is on disk under the execution's folder and streams back whole.
    let on_disk =
        std::fs::read(h.artifacts.path().join(&done.id).join(&done.artifacts[0])).unwrap();
    assert_eq!(&on_disk[..8], b"\x89PNG\r\n\x1a\n");
    let mut stream = h
        .server
        .executions()
        .get_artifact(GetArtifactRequest {
            execution_id: done.id.clone(),
            path: done.artifacts[0].clone(),
        })
        .await
        .expect("artifact")
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.content_type.as_deref(), Some("image/png"));
    assert_eq!(first.size, Some(on_disk.len() as u64));
    let mut bytes = first.data;
    while let Some(chunk) = stream.next().await {
        bytes.extend(chunk.unwrap().data);
    }
    assert_eq!(bytes, on_disk);
}

/// ComfyUI's `progress_state` lists every node started so far: with 200 nodes its last ones
/// are larger than the socket's 16 KiB read buffer and each arrives over several reads.
#[tokio::test]
async fn socket_messages_larger_than_the_read_buffer_arrive_whole() {
    let h = harness(1, |_| {}).await;
    let graph: serde_json::Map<String, Value> = (1..=200u64)
        .map(|k| {
            (
                k.to_string(),
                json!({"class_type": "TestDelay", "inputs": {"seconds": 0.0, "steps": 1, "nonce": k}}),
            )
        })
        .collect();
    let execution = h.execute(&Value::Object(graph), TaskPriority::Normal).await;
    let done = h.wait_end(&execution.id).await;
    assert_eq!(status(&done), TaskStatus::Completed, "{done:?}");
    assert_eq!(done.completed_tasks, 201, "the root and every node");
    assert_eq!(done.progress, 1.0);
}

#[tokio::test]
async fn artifact_paths_outside_the_execution_are_refused() {
    let h = harness(1, |_| {}).await;
    let execution = h
        .execute(&image_workflow("traversal"), TaskPriority::Normal)
        .await;
    let done = h.wait_end(&execution.id).await;
    for path in [
        "../../etc/passwd",
        "/etc/passwd",
        "sticker.png",
        "..",
        "a/../../b",
    ] {
        let status = h
            .server
            .executions()
            .get_artifact(GetArtifactRequest {
                execution_id: done.id.clone(),
                path: path.to_owned(),
            })
            .await
            .err()
            .unwrap_or_else(|| panic!("{path} was served"));
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
    }
    let missing = h
        .server
        .executions()
        .get_artifact(GetArtifactRequest {
            execution_id: "no-such-execution".into(),
            path: "x.png".into(),
        })
        .await
        .err()
        .unwrap();
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test]
async fn priority_order_with_one_busy_backend() {
    let h = harness(1, |c| c.runtime.max_concurrent_tasks = 1).await;
    // Occupy the backend, then queue LOW, NORMAL, CRITICAL, HIGH.
    let blocker = h
        .execute(&delay_workflow(0.4, 1), TaskPriority::Normal)
        .await;
    h.wait_for(&blocker.id, "blocker running", |e| {
        status(e) == TaskStatus::Running
    })
    .await;
    let mut queued = Vec::new();
    for (i, priority) in [
        TaskPriority::Low,
        TaskPriority::Normal,
        TaskPriority::Critical,
        TaskPriority::High,
    ]
    .into_iter()
    .enumerate()
    {
        let e = h
            .execute(&delay_workflow(0.05, 100 + i as u64), priority)
            .await;
        assert_eq!(status(&e), TaskStatus::Queued, "{e:?}");
        queued.push((priority, e.id));
    }
    let mut ends = Vec::new();
    for (priority, id) in &queued {
        let done = h.wait_end(id).await;
        assert_eq!(status(&done), TaskStatus::Completed, "{done:?}");
        let start = done.tasks[0].metrics.as_ref().unwrap().start_time.unwrap();
        ends.push((start.seconds, start.nanos, *priority));
    }
    ends.sort();
    let order: Vec<TaskPriority> = ends.into_iter().map(|(_, _, p)| p).collect();
    assert_eq!(
        order,
        [
            TaskPriority::Critical,
            TaskPriority::High,
            TaskPriority::Normal,
            TaskPriority::Low
        ]
    );
}

#[tokio::test]
async fn cancel_a_queued_and_a_running_execution() {
    let h = harness(1, |c| c.runtime.max_concurrent_tasks = 1).await;
    let running = h
        .execute(&delay_workflow(30.0, 7), TaskPriority::Normal)
        .await;
    h.wait_for(&running.id, "prompt executing", |e| {
        e.tasks[0]
            .progress_message
            .as_deref()
            .is_some_and(|m| m.starts_with("executing"))
    })
    .await;
    let queued = h
        .execute(&delay_workflow(0.1, 8), TaskPriority::Normal)
        .await;
    assert_eq!(status(&queued), TaskStatus::Queued);
    let cancelled = h
        .server
        .executions()
        .cancel_execution(CancelExecutionRequest {
            id: queued.id.clone(),
            reason: Some("not needed".into()),
        })
        .await
        .unwrap()
        .into_inner()
        .execution
        .unwrap();
    assert_eq!(status(&cancelled), TaskStatus::Cancelled);
    assert_eq!(
        cancelled.tasks[0].progress_message.as_deref(),
        Some("not needed")
    );
    h.server
        .executions()
        .cancel_execution(CancelExecutionRequest {
            id: running.id.clone(),
            reason: None,
        })
        .await
        .unwrap();
    let done = h.wait_end(&running.id).await;
    assert_eq!(status(&done), TaskStatus::Cancelled, "{done:?}");
    // Idempotent: cancelling again returns it unchanged.
    let again = h
        .server
        .executions()
        .cancel_execution(CancelExecutionRequest {
            id: running.id.clone(),
            reason: None,
        })
        .await
        .unwrap()
        .into_inner()
        .execution
        .unwrap();
    assert_eq!(status(&again), TaskStatus::Cancelled);
    // The backend is free again: a new execution completes.
    let next = h
        .execute(&image_workflow("after-cancel"), TaskPriority::Normal)
        .await;
    assert_eq!(status(&h.wait_end(&next.id).await), TaskStatus::Completed);
}

#[tokio::test]
async fn a_node_exception_fails_without_retry_and_names_the_node() {
    let h = harness(1, |_| {}).await;
    let workflow = json!({
        "1": {"class_type": "TestFail", "inputs": {"message": "boom"}},
        "2": {"class_type": "TestDelay", "inputs": {"seconds": 0.0, "steps": 1, "nonce": 3, "value": ["1", 0]}}
    });
    let execution = h.execute(&workflow, TaskPriority::Normal).await;
    let done = h.wait_end(&execution.id).await;
    assert_eq!(status(&done), TaskStatus::Failed, "{done:?}");
    assert_eq!(done.error_type.as_deref(), Some("NodeExecutionError"));
    assert!(done.error.as_deref().unwrap().contains("boom"), "{done:?}");
    assert_eq!(done.tasks[0].retry_count, 0);
    assert_eq!(done.failed_tasks, 2, "root and the failing node: {done:?}");
}

#[tokio::test]
async fn a_workflow_over_the_node_limit_is_rejected_and_one_at_it_runs() {
    let h = harness(1, |config| config.scheduling.max_workflow_nodes = 2).await;
    // image_workflow has two nodes: at the limit.
    let at_limit = h
        .execute(&image_workflow("limit"), TaskPriority::Normal)
        .await;
    assert_eq!(at_limit.tasks.len(), 3, "root + 2 node tasks");
    assert_eq!(
        status(&h.wait_end(&at_limit.id).await),
        TaskStatus::Completed
    );
    let mut over = image_workflow("over");
    over["9"] =
        json!({"class_type": "TestDelay", "inputs": {"seconds": 0.0, "steps": 1, "nonce": 9}});
    let status = h.refused(&over).await;
    assert_eq!(
        common::bad_request_violations(&status),
        [(
            "workflow_json".to_owned(),
            "has 3 nodes; at most 2 are accepted".to_owned()
        )]
    );
}

#[tokio::test]
async fn invalid_workflows_are_rejected_with_field_paths() {
    let h = harness(1, |_| {}).await;
    let unknown = json!({
        "1": {"class_type": "NoSuchNode", "inputs": {}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}
    });
    let status = h.refused(&unknown).await;
    let fields = common::bad_request_violations(&status);
    assert!(
        fields
            .iter()
            .any(|(f, _)| f == "workflow_json[\"1\"].class_type"),
        "{fields:?}"
    );
    // A link to a missing node names the input that links.
    let dangling = json!({
        "2": {"class_type": "SaveImage", "inputs": {"images": ["99", 0], "filename_prefix": "x"}}
    });
    let status = h.refused(&dangling).await;
    assert_eq!(
        common::bad_request_violations(&status),
        [(
            r#"workflow_json["2"].inputs.images"#.to_owned(),
            "node 2 input images links to missing node 99".to_owned()
        )]
    );
    // Out of range, after an override.
    let status = h
        .execute_with(ExecuteWorkflowRequest {
            workflow: Some(Workflow::WorkflowJson(image_workflow("x").to_string())),
            overrides: overrides("1", "width", Kind::IntValue(0)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    // An override out of range names its own path, not the workflow's.
    let fields = common::bad_request_violations(&status);
    assert!(
        fields.iter().any(|(f, _)| f == r#"overrides["1"].width"#),
        "{fields:?}"
    );
    let status = h
        .execute_with(ExecuteWorkflowRequest {
            workflow: Some(Workflow::WorkflowJson(image_workflow("x").to_string())),
            max_retries: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap_err();
    common::assert_invalid_argument(&status, "max_retries");
    // An override of a link and of an unknown node.
    let mut links = overrides("2", "images", Kind::StringValue("x".into()));
    links.extend(overrides("9", "width", Kind::IntValue(1)));
    let status = h
        .execute_with(ExecuteWorkflowRequest {
            workflow: Some(Workflow::WorkflowJson(image_workflow("x").to_string())),
            overrides: links,
            ..Default::default()
        })
        .await
        .unwrap_err();
    let fields: Vec<String> = common::bad_request_violations(&status)
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    for expected in [r#"overrides["2"].images"#, r#"overrides["9"]"#] {
        assert!(
            fields.iter().any(|f| f == expected),
            "{expected}: {fields:?}"
        );
    }
    // A value with no kind set.
    let empty = [(
        "1".to_owned(),
        pb::NodeOverrides {
            inputs: [("height".to_owned(), pb::InputValue { kind: None })].into(),
        },
    )]
    .into();
    let status = h
        .execute_with(ExecuteWorkflowRequest {
            workflow: Some(Workflow::WorkflowJson(image_workflow("x").to_string())),
            overrides: empty,
            ..Default::default()
        })
        .await
        .unwrap_err();
    common::assert_invalid_argument(&status, r#"overrides["1"].height"#);
}

#[tokio::test]
async fn the_u64_seed_reaches_the_backend_exactly() {
    let h = harness(1, |_| {}).await;
    let workflow = json!({
        "1": {"class_type": "TestDelay", "inputs": {"seconds": 0.0, "steps": 1, "nonce": 1}}
    });
    let execution = h
        .execute_with(ExecuteWorkflowRequest {
            workflow: Some(Workflow::WorkflowJson(workflow.to_string())),
            overrides: overrides("1", "nonce", Kind::UintValue(u64::MAX)),
            ..Default::default()
        })
        .await
        .unwrap();
    let done = h.wait_end(&execution.id).await;
    assert_eq!(status(&done), TaskStatus::Completed, "{done:?}");
    let prompt_id = done.prompt_id.clone().unwrap();
    let history: Value =
        reqwest_json(&format!("{}/history/{prompt_id}", h.fakes[0].base_url())).await;
    let text = history.to_string();
    assert!(text.contains("18446744073709551615"), "{text}");
}

async fn reqwest_json(url: &str) -> Value {
    let body = reqwest::get(url).await.unwrap().text().await.unwrap();
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn output_nodes_are_judged_by_the_backends_object_info() {
    let h = harness(1, |_| {}).await;
    // TestFail is an output node only according to object_info.
    let workflow = json!({"1": {"class_type": "TestFail", "inputs": {"message": "alone"}}});
    let report = h
        .server
        .workflows()
        .validate_workflow(pb::ValidateWorkflowRequest {
            workflow: Some(pb::validate_workflow_request::Workflow::WorkflowJson(
                workflow.to_string(),
            )),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(report.valid, "{report:?}");
    assert!(report.object_info_checked);
    assert_eq!(report.required_classes, ["TestFail"]);
    assert_eq!(report.backends, ["gpu-0"]);
    // EmptyImage alone is no output node for anyone.
    let workflow = json!({"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}});
    let status = h
        .execute_with(ExecuteWorkflowRequest {
            workflow: Some(Workflow::WorkflowJson(workflow.to_string())),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let fields = common::bad_request_violations(&status);
    assert!(
        fields
            .iter()
            .any(|(f, d)| f == "workflow_json" && d.contains("output node")),
        "{fields:?}"
    );
}

#[tokio::test]
async fn clients_cannot_report_on_an_executions_tasks() {
    let h = harness(1, |_| {}).await;
    let execution = h
        .execute(&delay_workflow(0.2, 55), TaskPriority::Normal)
        .await;
    for task in &execution.tasks {
        let status = h
            .server
            .tasks()
            .update_task_progress(pb::UpdateTaskProgressRequest {
                id: task.id.clone(),
                status: Some(TaskStatus::Completed.into()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains(&execution.id), "{status:?}");
    }
    assert_eq!(
        status(&h.wait_end(&execution.id).await),
        TaskStatus::Completed
    );
}

#[tokio::test]
async fn client_input_that_could_wedge_an_execution_is_refused() {
    let h = harness(1, |_| {}).await;
    // A timeout beyond what a clock can add.
    let status = h
        .execute_with(ExecuteWorkflowRequest {
            workflow: Some(Workflow::WorkflowJson(delay_workflow(0.0, 61).to_string())),
            timeout_seconds: Some(1e19),
            ..Default::default()
        })
        .await
        .unwrap_err();
    common::assert_invalid_argument(&status, "timeout_seconds");
    let running = h
        .execute(&delay_workflow(0.3, 62), TaskPriority::Normal)
        .await;
    // A client task cannot be made a child of an execution's task.
    let status = h
        .server
        .tasks()
        .create_task(pb::CreateTaskRequest {
            name: "sneaky".into(),
            parent_id: running.root_task_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    common::assert_invalid_argument(&status, "parent_id");
    // A node task cannot be blocked: only whole executions are scheduled.
    let node = running.tasks[1].id.clone();
    let status = h
        .execute_with(ExecuteWorkflowRequest {
            workflow: Some(Workflow::WorkflowJson(delay_workflow(0.0, 63).to_string())),
            dependencies: vec![pb::TaskDependency {
                task_id: node,
                dependency_type: pb::DependencyType::Blocks.into(),
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    common::assert_invalid_argument(&status, "dependencies[0].task_id");
    assert_eq!(
        common::exec::status(&h.wait_end(&running.id).await),
        TaskStatus::Completed
    );
}

/// One typed override, as the `overrides` field of a request.
fn overrides(
    node: &str,
    input: &str,
    value: Kind,
) -> std::collections::HashMap<String, pb::NodeOverrides> {
    [(
        node.to_owned(),
        pb::NodeOverrides {
            inputs: [(input.to_owned(), pb::InputValue { kind: Some(value) })].into(),
        },
    )]
    .into()
}
