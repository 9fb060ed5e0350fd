//! The lifecycle of workflow executions end to end, against fake ComfyUI
//! backends: dependencies between executions and client tasks, rejections at
//! submit, idempotency, cancellation and RetryTask in each state, listing,
//! admission, ValidateWorkflow, and a mixed run as a new user would try it.
//! Deterministic: every test waits for states, never for fixed times.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use comfy_reality::pb::{
    self, CancelExecutionRequest, CancelTaskRequest, CreateTaskRequest, DependencyType,
    ExecuteWorkflowRequest, GetTaskRequest, ListExecutionsRequest, RetryTaskRequest, Task,
    TaskDependency, TaskPriority, TaskStatus, TaskType, UpdateTaskProgressRequest,
    ValidateWorkflowRequest, WorkflowExecution, WorkflowRef, execute_workflow_request::Workflow,
    validate_workflow_request::Workflow as ValidateWorkflow,
};
use common::exec::{Harness, delay_workflow, harness, image_workflow, status};
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A graph whose first node raises: the execution fails with a node exception.
fn failing_workflow() -> Value {
    json!({
        "1": {"class_type": "TestFail", "inputs": {"message": "boom"}},
        "2": {"class_type": "TestDelay", "inputs": {"seconds": 0.0, "steps": 1, "nonce": 3, "value": ["1", 0]}}
    })
}

/// An edge to `task_id` of kind `kind`.
fn dep(task_id: &str, kind: DependencyType) -> TaskDependency {
    TaskDependency {
        task_id: task_id.to_owned(),
        dependency_type: kind.into(),
    }
}

/// An inline execution request of `workflow` with `dependencies`.
fn request(workflow: &Value, dependencies: Vec<TaskDependency>) -> ExecuteWorkflowRequest {
    ExecuteWorkflowRequest {
        workflow: Some(Workflow::WorkflowJson(workflow.to_string())),
        dependencies,
        ..Default::default()
    }
}

/// The root task id of an execution.
fn root_id(execution: &WorkflowExecution) -> String {
    execution.root_task_id.clone().expect("root task id")
}

/// The root task's progress message.
fn root_message(execution: &WorkflowExecution) -> &str {
    execution.tasks[0].progress_message.as_deref().unwrap_or("")
}

/// The status of a task.
fn task_status(task: &Task) -> TaskStatus {
    TaskStatus::try_from(task.status).unwrap()
}

/// When the root task entered RUNNING.
fn started_at(execution: &WorkflowExecution) -> (i64, i32) {
    let start = execution.tasks[0]
        .metrics
        .as_ref()
        .and_then(|m| m.start_time)
        .unwrap_or_else(|| panic!("no start time: {execution:?}"));
    (start.seconds, start.nanos)
}

/// When the root task ended.
fn ended_at(execution: &WorkflowExecution) -> (i64, i32) {
    let end = execution.tasks[0]
        .metrics
        .as_ref()
        .and_then(|m| m.end_time)
        .unwrap_or_else(|| panic!("no end time: {execution:?}"));
    (end.seconds, end.nanos)
}

/// Creates a client-reported PREPROCESSING task that requires `dependencies`.
async fn create_task(h: &Harness, name: &str, dependencies: &[&str]) -> Task {
    h.server
        .tasks()
        .create_task(CreateTaskRequest {
            name: name.to_owned(),
            r#type: Some(TaskType::Preprocessing.into()),
            dependencies: dependencies.iter().map(|d| (*d).to_owned()).collect(),
            ..Default::default()
        })
        .await
        .expect("create task")
        .into_inner()
        .task
        .expect("task")
}

/// Reports `to` for a client task.
async fn report(h: &Harness, id: &str, to: TaskStatus) -> Result<Task, tonic::Status> {
    let error = (to == TaskStatus::Failed).then(|| "upload broke".to_owned());
    Ok(h.server
        .tasks()
        .update_task_progress(UpdateTaskProgressRequest {
            id: id.to_owned(),
            status: Some(to.into()),
            error,
            ..Default::default()
        })
        .await?
        .into_inner()
        .task
        .expect("task"))
}

async fn get_task(h: &Harness, id: &str) -> Task {
    h.server
        .tasks()
        .get_task(GetTaskRequest { id: id.to_owned() })
        .await
        .expect("get task")
        .into_inner()
        .task
        .expect("task")
}

/// Waits (a few seconds at most) until the task is in `want`.
async fn wait_task(h: &Harness, id: &str, want: TaskStatus) -> Task {
    for _ in 0..250 {
        let task = get_task(h, id).await;
        if task_status(&task) == want {
            return task;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "task {id} never became {want:?}: {:?}",
        get_task(h, id).await
    );
}

async fn cancel_execution(h: &Harness, id: &str, reason: Option<&str>) -> WorkflowExecution {
    h.server
        .executions()
        .cancel_execution(CancelExecutionRequest {
            id: id.to_owned(),
            reason: reason.map(str::to_owned),
        })
        .await
        .expect("cancel")
        .into_inner()
        .execution
        .expect("execution")
}

async fn cancel_task(h: &Harness, id: &str) -> Task {
    h.server
        .tasks()
        .cancel_task(CancelTaskRequest {
            id: id.to_owned(),
            reason: None,
        })
        .await
        .expect("cancel task")
        .into_inner()
        .task
        .expect("task")
}

async fn retry_task(h: &Harness, id: &str) -> Result<Task, tonic::Status> {
    Ok(h.server
        .tasks()
        .retry_task(RetryTaskRequest { id: id.to_owned() })
        .await?
        .into_inner()
        .task
        .expect("task"))
}

/// Waits until the root task says the prompt is executing on a backend (not
/// only waiting in the backend's queue).
async fn wait_executing(h: &Harness, id: &str) {
    h.wait_for(id, "prompt executing", |e| {
        root_message(e).starts_with("executing")
    })
    .await;
}

async fn list(h: &Harness, request: ListExecutionsRequest) -> pb::ListExecutionsResponse {
    h.server
        .executions()
        .list_executions(request)
        .await
        .expect("list")
        .into_inner()
}

fn ids(executions: &[WorkflowExecution]) -> Vec<String> {
    executions.iter().map(|e| e.id.clone()).collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Dependencies
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn requires_on_a_client_task_waits_for_it_to_complete() {
    let h = harness(1, |_| {}).await;
    let upload = create_task(&h, "upload image", &[]).await;
    let execution = h
        .execute_with(request(
            &image_workflow("requires"),
            vec![dep(&upload.id, DependencyType::Requires)],
        ))
        .await
        .unwrap();
    assert_eq!(status(&execution), TaskStatus::Pending, "{execution:?}");
    assert!(
        root_message(&execution).starts_with("waiting for dependencies: ")
            && root_message(&execution).contains(&upload.id),
        "{execution:?}"
    );
    // The dependency runs: the execution still waits.
    report(&h, &upload.id, TaskStatus::Running).await.unwrap();
    let waiting = h.get(&execution.id).await;
    assert_eq!(status(&waiting), TaskStatus::Pending, "{waiting:?}");
    assert!(waiting.prompt_id.is_none(), "{waiting:?}");
    // It completes: the execution runs and completes.
    report(&h, &upload.id, TaskStatus::Completed).await.unwrap();
    let done = h.wait_end(&execution.id).await;
    assert_eq!(status(&done), TaskStatus::Completed, "{done:?}");
    assert_eq!(done.artifacts.len(), 1, "{done:?}");
}

#[tokio::test]
async fn requires_on_a_client_task_that_fails_cancels_the_execution() {
    let h = harness(1, |_| {}).await;
    let upload = create_task(&h, "upload image", &[]).await;
    let execution = h
        .execute_with(request(
            &image_workflow("requires-fail"),
            vec![dep(&upload.id, DependencyType::Requires)],
        ))
        .await
        .unwrap();
    assert_eq!(status(&execution), TaskStatus::Pending);
    report(&h, &upload.id, TaskStatus::Running).await.unwrap();
    report(&h, &upload.id, TaskStatus::Failed).await.unwrap();
    let done = h.wait_end(&execution.id).await;
    assert_eq!(status(&done), TaskStatus::Cancelled, "{done:?}");
    let reason = root_message(&done);
    assert!(
        reason.contains(&upload.id) && reason.contains("failed"),
        "the reason names the dependency: {done:?}"
    );
    assert!(
        done.prompt_id.is_none(),
        "never sent to a backend: {done:?}"
    );
    for node in &done.tasks[1..] {
        assert_eq!(node.status, TaskStatus::Cancelled as i32, "{node:?}");
    }
}

#[tokio::test]
async fn optional_on_a_client_task_that_is_cancelled_still_runs() {
    let h = harness(1, |_| {}).await;
    let upload = create_task(&h, "optional upload", &[]).await;
    let execution = h
        .execute_with(request(
            &image_workflow("optional"),
            vec![dep(&upload.id, DependencyType::Optional)],
        ))
        .await
        .unwrap();
    assert_eq!(status(&execution), TaskStatus::Pending, "{execution:?}");
    let cancelled = cancel_task(&h, &upload.id).await;
    assert_eq!(task_status(&cancelled), TaskStatus::Cancelled);
    let done = h.wait_end(&execution.id).await;
    assert_eq!(status(&done), TaskStatus::Completed, "{done:?}");
}

#[tokio::test]
async fn blocks_holds_a_pending_client_task_until_the_execution_ends() {
    let h = harness(1, |_| {}).await;
    let export = create_task(&h, "usdz export", &[]).await;
    let execution = h
        .execute_with(request(
            &delay_workflow(0.5, 11),
            vec![dep(&export.id, DependencyType::Blocks)],
        ))
        .await
        .unwrap();
    h.wait_for(&execution.id, "execution running", |e| {
        status(e) == TaskStatus::Running
    })
    .await;
    let refused = report(&h, &export.id, TaskStatus::Running)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains(&root_id(&execution)),
        "names the blocking task: {refused:?}"
    );
    assert_eq!(
        task_status(&get_task(&h, &export.id).await),
        TaskStatus::Pending
    );
    let done = h.wait_end(&execution.id).await;
    assert_eq!(status(&done), TaskStatus::Completed, "{done:?}");
    let running = report(&h, &export.id, TaskStatus::Running).await.unwrap();
    assert_eq!(task_status(&running), TaskStatus::Running);
}

#[tokio::test]
async fn an_execution_requiring_another_runs_after_it_and_is_cancelled_with_it() {
    let h = harness(1, |_| {}).await;
    // E2 waits for E1 to complete.
    let first = h
        .execute(&delay_workflow(0.5, 21), TaskPriority::Normal)
        .await;
    let second = h
        .execute_with(request(
            &delay_workflow(0.0, 22),
            vec![dep(&root_id(&first), DependencyType::Requires)],
        ))
        .await
        .unwrap();
    assert_eq!(status(&second), TaskStatus::Pending, "{second:?}");
    h.wait_for(&first.id, "E1 running", |e| {
        status(e) == TaskStatus::Running
    })
    .await;
    let while_first_runs = h.get(&second.id).await;
    assert_eq!(
        status(&while_first_runs),
        TaskStatus::Pending,
        "{while_first_runs:?}"
    );
    let first_done = h.wait_end(&first.id).await;
    assert_eq!(status(&first_done), TaskStatus::Completed, "{first_done:?}");
    let second_done = h.wait_end(&second.id).await;
    assert_eq!(
        status(&second_done),
        TaskStatus::Completed,
        "{second_done:?}"
    );
    assert!(
        started_at(&second_done) >= ended_at(&first_done),
        "E2 started before E1 ended: {second_done:?} {first_done:?}"
    );

    // E4 waits for E3; E3 is cancelled while it runs: E4 is cancelled too.
    let third = h
        .execute(&delay_workflow(30.0, 23), TaskPriority::Normal)
        .await;
    let fourth = h
        .execute_with(request(
            &delay_workflow(0.0, 24),
            vec![dep(&root_id(&third), DependencyType::Requires)],
        ))
        .await
        .unwrap();
    wait_executing(&h, &third.id).await;
    cancel_execution(&h, &third.id, Some("changed my mind")).await;
    assert_eq!(status(&h.wait_end(&third.id).await), TaskStatus::Cancelled);
    let fourth_done = h.wait_end(&fourth.id).await;
    assert_eq!(
        status(&fourth_done),
        TaskStatus::Cancelled,
        "{fourth_done:?}"
    );
    assert!(
        root_message(&fourth_done).contains(&root_id(&third)),
        "{fourth_done:?}"
    );
}

#[tokio::test]
async fn a_client_task_requiring_an_execution_is_cancelled_when_it_fails() {
    let h = harness(1, |_| {}).await;
    // A gate keeps E1 pending until the dependent client task exists, so E1
    // cannot fail before it.
    let gate = create_task(&h, "gate", &[]).await;
    let execution = h
        .execute_with(request(
            &failing_workflow(),
            vec![dep(&gate.id, DependencyType::Requires)],
        ))
        .await
        .unwrap();
    let export = create_task(&h, "usdz export", &[&root_id(&execution)]).await;
    assert_eq!(task_status(&export), TaskStatus::Pending);
    // It cannot start while the execution has not completed.
    let refused = report(&h, &export.id, TaskStatus::Running)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    report(&h, &gate.id, TaskStatus::Completed).await.unwrap();
    let done = h.wait_end(&execution.id).await;
    assert_eq!(status(&done), TaskStatus::Failed, "{done:?}");
    let export = wait_task(&h, &export.id, TaskStatus::Cancelled).await;
    assert!(
        export
            .progress_message
            .as_deref()
            .is_some_and(|m| m.contains(&root_id(&execution))),
        "{export:?}"
    );
}

/// A client task created to require an execution that has already failed can
/// never run: it must not be left PENDING forever (either CreateTask refuses
/// it, or it is cancelled at once as it would be had it existed before).
#[tokio::test]
async fn a_client_task_requiring_an_already_failed_execution_does_not_wait_forever() {
    let h = harness(1, |_| {}).await;
    let execution = h.execute(&failing_workflow(), TaskPriority::Normal).await;
    let done = h.wait_end(&execution.id).await;
    assert_eq!(status(&done), TaskStatus::Failed, "{done:?}");
    let created = h
        .server
        .tasks()
        .create_task(CreateTaskRequest {
            name: "export after a failed run".into(),
            r#type: Some(TaskType::Postprocessing.into()),
            dependencies: vec![root_id(&done)],
            ..Default::default()
        })
        .await;
    match created {
        Err(status) => assert!(
            matches!(
                status.code(),
                Code::InvalidArgument | Code::FailedPrecondition
            ),
            "{status:?}"
        ),
        Ok(response) => {
            let task = response.into_inner().task.unwrap();
            wait_task(&h, &task.id, TaskStatus::Cancelled).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Rejections at submit
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_dependencies_are_rejected_at_submit() {
    let h = harness(1, |_| {}).await;
    let workflow = image_workflow("deps");
    // Unknown id.
    let unknown = h
        .execute_with(request(
            &workflow,
            vec![dep("no-such-task", DependencyType::Requires)],
        ))
        .await
        .unwrap_err();
    common::assert_invalid_argument(&unknown, "dependencies[0].task_id");

    // The same id twice.
    let a = create_task(&h, "a", &[]).await;
    let twice = h
        .execute_with(request(
            &workflow,
            vec![
                dep(&a.id, DependencyType::Requires),
                dep(&a.id, DependencyType::Optional),
            ],
        ))
        .await
        .unwrap_err();
    common::assert_invalid_argument(&twice, "dependencies[1].task_id");

    // BLOCKS on a task that has started.
    let started = create_task(&h, "started", &[]).await;
    report(&h, &started.id, TaskStatus::Running).await.unwrap();
    let blocks_running = h
        .execute_with(request(
            &workflow,
            vec![dep(&started.id, DependencyType::Blocks)],
        ))
        .await
        .unwrap_err();
    common::assert_invalid_argument(&blocks_running, "dependencies[0].task_id");

    // REQUIRES and BLOCKS on one task: named twice (a cycle of length one).
    let requires_and_blocks = h
        .execute_with(request(
            &workflow,
            vec![
                dep(&a.id, DependencyType::Requires),
                dep(&a.id, DependencyType::Blocks),
            ],
        ))
        .await
        .unwrap_err();
    common::assert_invalid_argument(&requires_and_blocks, "dependencies[1].task_id");

    // A cycle through an execution: E1 requires A; X requires E1 and blocks A.
    let e1 = h
        .execute_with(request(
            &image_workflow("cycle-e1"),
            vec![dep(&a.id, DependencyType::Requires)],
        ))
        .await
        .unwrap();
    let cycle = h
        .execute_with(request(
            &workflow,
            vec![
                dep(&root_id(&e1), DependencyType::Requires),
                dep(&a.id, DependencyType::Blocks),
            ],
        ))
        .await
        .unwrap_err();
    common::assert_invalid_argument(&cycle, "dependencies[0].task_id");
    let violations = common::bad_request_violations(&cycle);
    assert!(
        violations.iter().any(|(_, d)| d.contains("cycle")),
        "{violations:?}"
    );

    // A cycle through a client task: B requires A; X requires B and blocks A.
    let b = create_task(&h, "b", &[&a.id]).await;
    let cycle = h
        .execute_with(request(
            &workflow,
            vec![
                dep(&a.id, DependencyType::Blocks),
                dep(&b.id, DependencyType::Requires),
            ],
        ))
        .await
        .unwrap_err();
    common::assert_invalid_argument(&cycle, "dependencies[1].task_id");

    // Nothing of the refused submissions was kept: only E1 exists, and A is
    // held by no one.
    let all = list(&h, ListExecutionsRequest::default()).await;
    assert_eq!(ids(&all.executions), vec![e1.id.clone()]);
    report(&h, &a.id, TaskStatus::Running).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 3. Idempotency
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_idempotency_key_returns_the_same_execution_or_conflicts() {
    let h = harness(1, |_| {}).await;
    let keyed = |priority: TaskPriority| ExecuteWorkflowRequest {
        workflow: Some(Workflow::WorkflowJson(
            image_workflow("idempotent").to_string(),
        )),
        priority: Some(priority.into()),
        tags: vec!["batch-7".into()],
        idempotency_key: Some("upload-42".into()),
        ..Default::default()
    };
    let first = h.execute_with(keyed(TaskPriority::High)).await.unwrap();
    let again = h.execute_with(keyed(TaskPriority::High)).await.unwrap();
    assert_eq!(again.id, first.id);
    let done = h.wait_end(&first.id).await;
    assert_eq!(status(&done), TaskStatus::Completed, "{done:?}");
    // After the end too, and nothing new is queued.
    let after_end = h.execute_with(keyed(TaskPriority::High)).await.unwrap();
    assert_eq!(after_end.id, first.id);
    assert_eq!(status(&after_end), TaskStatus::Completed);
    // The same key with another body.
    let conflict = h.execute_with(keyed(TaskPriority::Low)).await.unwrap_err();
    common::assert_status(&conflict, Code::AlreadyExists, "WorkflowError");
    let all = list(&h, ListExecutionsRequest::default()).await;
    assert_eq!(ids(&all.executions), vec![first.id.clone()]);
}

// ---------------------------------------------------------------------------------------------
// 4. Cancel in each state
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn cancelling_a_pending_execution_cancels_it_at_once_with_no_node_tasks() {
    let h = harness(1, |_| {}).await;
    let upload = create_task(&h, "upload", &[]).await;
    let execution = h
        .execute_with(request(
            &image_workflow("cancel-pending"),
            vec![dep(&upload.id, DependencyType::Requires)],
        ))
        .await
        .unwrap();
    assert_eq!(status(&execution), TaskStatus::Pending);
    let cancelled = cancel_execution(&h, &execution.id, Some("no longer needed")).await;
    assert_eq!(status(&cancelled), TaskStatus::Cancelled, "{cancelled:?}");
    assert_eq!(root_message(&cancelled), "no longer needed");
    // NODE tasks are created at the first dispatch; a never-dispatched
    // execution has only its root.
    assert_eq!(cancelled.tasks.len(), 1, "{cancelled:?}");
    assert_eq!(cancelled.tasks[0].status, TaskStatus::Cancelled as i32);
    // The client task it waited for is not touched; completing it later
    // does not revive the execution.
    assert_eq!(
        task_status(&get_task(&h, &upload.id).await),
        TaskStatus::Pending
    );
    report(&h, &upload.id, TaskStatus::Completed).await.unwrap();
    let later = h.get(&execution.id).await;
    assert_eq!(status(&later), TaskStatus::Cancelled, "{later:?}");
    assert!(later.prompt_id.is_none(), "{later:?}");
}

#[tokio::test]
async fn cancel_task_on_a_node_task_cancels_the_whole_running_execution() {
    let h = harness(1, |_| {}).await;
    let execution = h
        .execute(&delay_workflow(30.0, 41), TaskPriority::Normal)
        .await;
    wait_executing(&h, &execution.id).await;
    let node = execution.tasks[1].id.clone();
    assert_eq!(execution.tasks[1].r#type, TaskType::Node as i32);
    cancel_task(&h, &node).await;
    let done = h.wait_end(&execution.id).await;
    assert_eq!(status(&done), TaskStatus::Cancelled, "{done:?}");
    assert!(root_message(&done).contains(&node), "{done:?}");
    for task in &done.tasks {
        assert_eq!(task.status, TaskStatus::Cancelled as i32, "{task:?}");
    }
    // The backend is free again.
    let next = h
        .execute(&image_workflow("after-node-cancel"), TaskPriority::Normal)
        .await;
    assert_eq!(status(&h.wait_end(&next.id).await), TaskStatus::Completed);
}

/// The NODE tasks of an ended execution by node id: (status, progress message).
fn nodes_by_id(execution: &WorkflowExecution) -> BTreeMap<String, (TaskStatus, String)> {
    execution.tasks[1..]
        .iter()
        .map(|task| {
            let metadata: Value = serde_json::from_str(&task.metadata).expect("metadata");
            let node = metadata["node_id"].as_str().expect("node_id").to_owned();
            let message = task.progress_message.clone().unwrap_or_default();
            (node, (task_status(task), message))
        })
        .collect()
}

#[tokio::test]
async fn node_tasks_that_never_ran_are_settled_when_their_execution_ends() {
    let h = harness(1, |_| {}).await;
    // Node 3 feeds no output: ComfyUI never executes it.
    let mut unused = image_workflow("settled");
    unused["3"] = json!({"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}});
    let execution = h.execute(&unused, TaskPriority::Normal).await;
    let done = h.wait_end(&execution.id).await;
    assert_eq!(status(&done), TaskStatus::Completed, "{done:?}");
    let nodes = nodes_by_id(&done);
    assert_eq!(nodes["1"].0, TaskStatus::Completed, "{nodes:?}");
    assert_eq!(nodes["2"].0, TaskStatus::Completed, "{nodes:?}");
    assert_eq!(
        nodes["3"],
        (
            TaskStatus::Cancelled,
            "not executed: no output of the prompt needed it".to_owned()
        ),
        "{nodes:?}"
    );

    // Node 2 comes after the node that fails: it never runs.
    let execution = h.execute(&failing_workflow(), TaskPriority::Normal).await;
    let done = h.wait_end(&execution.id).await;
    assert_eq!(status(&done), TaskStatus::Failed, "{done:?}");
    let nodes = nodes_by_id(&done);
    assert_eq!(nodes["1"].0, TaskStatus::Failed, "{nodes:?}");
    assert_eq!(
        nodes["2"],
        (
            TaskStatus::Cancelled,
            "not run: the execution failed".to_owned()
        ),
        "{nodes:?}"
    );
}

#[tokio::test]
async fn cancelling_a_completed_execution_returns_it_unchanged() {
    let h = harness(1, |_| {}).await;
    let execution = h
        .execute(&image_workflow("cancel-done"), TaskPriority::Normal)
        .await;
    let done = h.wait_end(&execution.id).await;
    assert_eq!(status(&done), TaskStatus::Completed);
    let again = cancel_execution(&h, &execution.id, Some("too late")).await;
    assert_eq!(again, done);
    let root = cancel_task(&h, &root_id(&done)).await;
    assert_eq!(root, done.tasks[0]);
    let node = cancel_task(&h, &done.tasks[1].id).await;
    assert_eq!(node, done.tasks[1]);
    assert_eq!(h.get(&execution.id).await, done);
}

// ---------------------------------------------------------------------------------------------
// 5. RetryTask
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn retry_task_reruns_a_failed_execution_once() {
    let h = harness(1, |_| {}).await;
    let execution = h
        .execute_with(ExecuteWorkflowRequest {
            workflow: Some(Workflow::WorkflowJson(failing_workflow().to_string())),
            max_retries: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    let failed = h.wait_end(&execution.id).await;
    assert_eq!(status(&failed), TaskStatus::Failed, "{failed:?}");
    assert_eq!(failed.tasks[0].retry_count, 0, "not retried on its own");
    let first_prompt = failed.prompt_id.clone().unwrap();
    let root = root_id(&failed);

    // RetryTask on a NODE task is refused.
    let node = retry_task(&h, &failed.tasks[1].id).await.unwrap_err();
    assert_eq!(node.code(), Code::FailedPrecondition, "{node:?}");
    assert!(node.message().contains(&root), "{node:?}");

    // RetryTask on the root re-runs it.
    let retried = retry_task(&h, &root).await.unwrap();
    assert_eq!(retried.retry_count, 1, "{retried:?}");
    let retried_status = task_status(&retried);
    assert!(
        matches!(
            retried_status,
            TaskStatus::Retrying | TaskStatus::Queued | TaskStatus::Running | TaskStatus::Failed
        ),
        "{retried:?}"
    );
    let again = h.wait_end(&execution.id).await;
    assert_eq!(status(&again), TaskStatus::Failed, "{again:?}");
    assert_eq!(again.tasks[0].retry_count, 1, "{again:?}");
    assert_eq!(again.error_type.as_deref(), Some("NodeExecutionError"));
    assert_ne!(
        again.prompt_id.as_deref(),
        Some(first_prompt.as_str()),
        "a new prompt ran: {again:?}"
    );
    // No retry is left.
    let exhausted = retry_task(&h, &root).await.unwrap_err();
    assert_eq!(exhausted.code(), Code::FailedPrecondition, "{exhausted:?}");
}

#[tokio::test]
async fn retry_task_on_a_running_execution_is_refused() {
    let h = harness(1, |_| {}).await;
    let execution = h
        .execute(&delay_workflow(30.0, 51), TaskPriority::Normal)
        .await;
    wait_executing(&h, &execution.id).await;
    let refused = retry_task(&h, &root_id(&execution)).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let still = h.get(&execution.id).await;
    assert_eq!(status(&still), TaskStatus::Running, "{still:?}");
    assert_eq!(still.tasks[0].retry_count, 0);
    cancel_execution(&h, &execution.id, None).await;
    assert_eq!(
        status(&h.wait_end(&execution.id).await),
        TaskStatus::Cancelled
    );
}

// ---------------------------------------------------------------------------------------------
// 6. ListExecutions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn list_executions_pages_and_filters() {
    let h = harness(1, |_| {}).await;
    let registered = h
        .server
        .workflows()
        .register_workflow(pb::RegisterWorkflowRequest {
            name: "sticker".into(),
            workflow_json: image_workflow("registered").to_string(),
            workflow_id: Some("sticker-wf".into()),
            ..Default::default()
        })
        .await
        .expect("register")
        .into_inner()
        .workflow
        .expect("workflow");
    assert_eq!(registered.id, "sticker-wf");
    let by_ref = h
        .execute_with(ExecuteWorkflowRequest {
            workflow: Some(Workflow::WorkflowRef(WorkflowRef {
                id: "sticker-wf".into(),
                version: None,
            })),
            tags: vec!["red".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_ref.workflow_id, "sticker-wf");
    let mut created = vec![by_ref.id.clone()];
    for (i, tags) in [vec!["red", "big"], vec!["blue"], vec!["red", "big"]]
        .into_iter()
        .enumerate()
    {
        let e = h
            .execute_with(ExecuteWorkflowRequest {
                workflow: Some(Workflow::WorkflowJson(
                    image_workflow(&format!("list-{i}")).to_string(),
                )),
                tags: tags.into_iter().map(str::to_owned).collect(),
                ..Default::default()
            })
            .await
            .unwrap();
        created.push(e.id);
    }
    // The fifth waits for a client task: PENDING.
    let gate = create_task(&h, "gate", &[]).await;
    let pending = h
        .execute_with(request(
            &image_workflow("list-pending"),
            vec![dep(&gate.id, DependencyType::Requires)],
        ))
        .await
        .unwrap();
    created.push(pending.id.clone());
    for id in &created[..4] {
        assert_eq!(status(&h.wait_end(id).await), TaskStatus::Completed);
    }

    // Pages of two, oldest first.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = list(
            &h,
            ListExecutionsRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            },
        )
        .await;
        pages += 1;
        assert!(page.executions.len() <= 2);
        seen.extend(ids(&page.executions));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(seen, created);
    assert_eq!(pages, 3);

    // By status.
    let completed = list(
        &h,
        ListExecutionsRequest {
            statuses: vec![TaskStatus::Completed.into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&completed.executions), created[..4].to_vec());
    let waiting = list(
        &h,
        ListExecutionsRequest {
            statuses: vec![TaskStatus::Pending.into(), TaskStatus::Failed.into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&waiting.executions), vec![pending.id.clone()]);

    // By tags (all of them).
    let red_big = list(
        &h,
        ListExecutionsRequest {
            tags: vec!["big".into(), "red".into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        ids(&red_big.executions),
        vec![created[1].clone(), created[3].clone()]
    );
    let red = list(
        &h,
        ListExecutionsRequest {
            tags: vec!["red".into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        ids(&red.executions),
        vec![created[0].clone(), created[1].clone(), created[3].clone()]
    );

    // By workflow id.
    let of_workflow = list(
        &h,
        ListExecutionsRequest {
            workflow_id: Some("sticker-wf".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&of_workflow.executions), vec![by_ref.id.clone()]);

    // A bad token.
    let bad = h
        .server
        .executions()
        .list_executions(ListExecutionsRequest {
            page_token: "not a token".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    common::assert_invalid_argument(&bad, "page_token");
}

// ---------------------------------------------------------------------------------------------
// 7. Admission
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_full_queue_answers_resource_exhausted_with_retry_after() {
    let h = harness(1, |c| {
        c.scheduling.max_queue_len = 1;
        c.runtime.max_concurrent_tasks = 1;
    })
    .await;
    let running = h
        .execute(&delay_workflow(30.0, 71), TaskPriority::Normal)
        .await;
    h.wait_for(&running.id, "running", |e| status(e) == TaskStatus::Running)
        .await;
    let queued = h
        .execute(&delay_workflow(0.0, 72), TaskPriority::Normal)
        .await;
    assert_eq!(status(&queued), TaskStatus::Queued, "{queued:?}");
    let refused = h
        .execute_with(request(&delay_workflow(0.0, 73), Vec::new()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let retry_after = refused
        .metadata()
        .get("retry-after")
        .unwrap_or_else(|| panic!("no retry-after: {refused:?}"))
        .to_str()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    let info = refused
        .get_details_retry_info()
        .unwrap_or_else(|| panic!("no RetryInfo: {refused:?}"));
    assert!(info.retry_delay.is_some_and(|d| !d.is_zero()), "{info:?}");
    // A slot frees when the queued one is cancelled.
    cancel_execution(&h, &queued.id, None).await;
    let admitted = h
        .execute(&delay_workflow(0.0, 74), TaskPriority::Normal)
        .await;
    assert_eq!(status(&admitted), TaskStatus::Queued, "{admitted:?}");
    cancel_execution(&h, &running.id, None).await;
    assert_eq!(
        status(&h.wait_end(&admitted.id).await),
        TaskStatus::Completed
    );
}

/// Replaying an idempotent request creates nothing, so a full queue must not
/// refuse it: the client that lost the first answer gets its execution back.
#[tokio::test]
async fn an_idempotent_replay_is_answered_while_the_queue_is_full() {
    let h = harness(1, |c| {
        c.scheduling.max_queue_len = 1;
        c.runtime.max_concurrent_tasks = 1;
    })
    .await;
    let running = h
        .execute(&delay_workflow(30.0, 75), TaskPriority::Normal)
        .await;
    h.wait_for(&running.id, "running", |e| status(e) == TaskStatus::Running)
        .await;
    let keyed = ExecuteWorkflowRequest {
        idempotency_key: Some("replayed".into()),
        ..request(&delay_workflow(0.0, 76), Vec::new())
    };
    let queued = h.execute_with(keyed.clone()).await.unwrap();
    assert_eq!(status(&queued), TaskStatus::Queued, "{queued:?}");
    let replay = h.execute_with(keyed).await;
    let replay = replay.unwrap_or_else(|status| panic!("replay refused: {status:?}"));
    assert_eq!(replay.id, queued.id);
    cancel_execution(&h, &running.id, None).await;
}

// ---------------------------------------------------------------------------------------------
// 8. ValidateWorkflow
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn validate_workflow_reports_without_queueing() {
    let h = harness(1, |_| {}).await;
    let validate = |workflow: Option<ValidateWorkflow>| {
        let mut client = h.server.workflows();
        async move {
            client
                .validate_workflow(ValidateWorkflowRequest {
                    workflow,
                    ..Default::default()
                })
                .await
                .map(tonic::Response::into_inner)
        }
    };
    // Valid: node order is not class order, the answer is sorted.
    let valid = json!({
        "1": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "v"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}
    });
    let report = validate(Some(ValidateWorkflow::WorkflowJson(valid.to_string())))
        .await
        .unwrap();
    assert!(report.valid, "{report:?}");
    assert!(report.issues.is_empty(), "{report:?}");
    assert_eq!(report.backends, vec!["gpu-0".to_owned()]);
    assert!(report.object_info_checked);
    assert_eq!(
        report.required_classes,
        vec!["EmptyImage", "ImageInvert", "SaveImage"]
    );

    // Invalid: an unknown class, a value out of range, a combo value not in
    // the list.
    let invalid = json!({
        "1": {"class_type": "NoSuchNode", "inputs": {}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 8, "batch_size": 1, "color": 0}},
        "3": {"class_type": "ImageScale", "inputs": {"image": ["2", 0], "upscale_method": "foo", "width": 8, "height": 8, "crop": "disabled"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}}
    });
    let report = validate(Some(ValidateWorkflow::WorkflowJson(invalid.to_string())))
        .await
        .unwrap();
    assert!(!report.valid, "{report:?}");
    let fields: Vec<&str> = report.issues.iter().map(|i| i.field.as_str()).collect();
    for want in [
        r#"workflow_json["1"].class_type"#,
        r#"workflow_json["2"].inputs.width"#,
        r#"workflow_json["3"].inputs.upscale_method"#,
    ] {
        assert!(fields.contains(&want), "no issue on {want}: {fields:?}");
    }
    // Nothing was queued.
    let all = list(&h, ListExecutionsRequest::default()).await;
    assert!(all.executions.is_empty(), "{all:?}");

    // Neither workflow set.
    let neither = validate(None).await.unwrap_err();
    common::assert_invalid_argument(&neither, "workflow");
    // An unknown registered workflow.
    let unknown = validate(Some(ValidateWorkflow::WorkflowRef(WorkflowRef {
        id: "no-such-workflow".into(),
        version: None,
    })))
    .await
    .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
}

// ---------------------------------------------------------------------------------------------
// 9. A new user's run
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_new_users_mixed_run_ends_every_execution_as_it_should() {
    let h = harness(2, |c| c.runtime.max_concurrent_tasks = 2).await;
    // Occupy both slots: R (to be cancelled while running) and B (completes).
    let running = h
        .execute(&delay_workflow(30.0, 91), TaskPriority::High)
        .await;
    wait_executing(&h, &running.id).await;
    let blocker = h
        .execute(&delay_workflow(1.5, 92), TaskPriority::Normal)
        .await;
    wait_executing(&h, &blocker.id).await;
    // Q waits in the runtime's queue and is cancelled there.
    let queued = h.execute(&delay_workflow(0.1, 93), TaskPriority::Low).await;
    assert_eq!(status(&queued), TaskStatus::Queued, "{queued:?}");
    let cancelled = cancel_execution(&h, &queued.id, Some("queued, not wanted")).await;
    assert_eq!(status(&cancelled), TaskStatus::Cancelled, "{cancelled:?}");

    // Seven more, mixed priority: five images and two failures.
    let mut images = Vec::new();
    for (i, priority) in [
        TaskPriority::Low,
        TaskPriority::Critical,
        TaskPriority::Normal,
        TaskPriority::High,
        TaskPriority::Low,
    ]
    .into_iter()
    .enumerate()
    {
        let e = h
            .execute(&image_workflow(&format!("user-{i}")), priority)
            .await;
        assert_eq!(status(&e), TaskStatus::Queued, "{e:?}");
        images.push((e.id, priority));
    }
    let mut failures = Vec::new();
    for priority in [TaskPriority::High, TaskPriority::Low] {
        let e = h.execute(&failing_workflow(), priority).await;
        failures.push(e.id);
    }
    // R is cancelled while it runs.
    cancel_execution(&h, &running.id, Some("running, not wanted")).await;

    let r = h.wait_end(&running.id).await;
    assert_eq!(status(&r), TaskStatus::Cancelled, "{r:?}");
    let q = h.wait_end(&queued.id).await;
    assert_eq!(status(&q), TaskStatus::Cancelled, "{q:?}");
    assert!(q.prompt_id.is_none(), "never handed to a backend: {q:?}");
    let b = h.wait_end(&blocker.id).await;
    assert_eq!(status(&b), TaskStatus::Completed, "{b:?}");
    let mut backends = BTreeSet::new();
    backends.insert(b.backend.clone().unwrap());
    let mut starts = Vec::new();
    for (id, priority) in &images {
        let done = h.wait_end(id).await;
        assert_eq!(status(&done), TaskStatus::Completed, "{done:?}");
        assert_eq!(done.artifacts.len(), 1, "{done:?}");
        let file = h.artifacts.path().join(&done.id).join(&done.artifacts[0]);
        let bytes =
            std::fs::read(&file).unwrap_or_else(|e| panic!("{} not on disk: {e}", file.display()));
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        backends.insert(done.backend.clone().unwrap());
        starts.push((*priority, started_at(&done)));
    }
    for id in &failures {
        let done = h.wait_end(id).await;
        assert_eq!(status(&done), TaskStatus::Failed, "{done:?}");
        assert_eq!(done.error_type.as_deref(), Some("NodeExecutionError"));
        assert!(done.artifacts.is_empty(), "{done:?}");
    }
    assert_eq!(
        backends,
        BTreeSet::from(["gpu-0".to_owned(), "gpu-1".to_owned()]),
        "both backends did work"
    );
    // Queued together, the more urgent started no later than the less urgent.
    for (p, start) in &starts {
        for (q, other) in &starts {
            if p < q {
                assert!(start >= other, "{p:?} started before {q:?}: {starts:?}");
            }
        }
    }
    let all = list(&h, ListExecutionsRequest::default()).await;
    assert_eq!(all.executions.len(), 10);
}
