//! TaskService end to end: every RPC with good and bad input, the state
//! machine as clients see it, error codes and their google.rpc details, and
//! exact JSON numbers through metadata and results.

mod common;

use std::collections::BTreeSet;

use comfy_reality::pb::task_service_client::TaskServiceClient;
use comfy_reality::pb::{
    CancelTaskRequest, CreateTaskRequest, GetTaskRequest, ListTasksRequest, RetryTaskRequest, Task,
    TaskPriority, TaskStatus, TaskType, UpdateTaskProgressRequest,
};
use common::{TestServer, assert_invalid_argument, assert_status, bad_request_fields};
use tonic::Code;
use tonic::transport::Channel;

type Client = TaskServiceClient<Channel>;

fn named(name: &str) -> CreateTaskRequest {
    CreateTaskRequest {
        name: name.to_owned(),
        ..CreateTaskRequest::default()
    }
}

async fn create(client: &mut Client, request: CreateTaskRequest) -> Task {
    client
        .create_task(request)
        .await
        .expect("create task")
        .into_inner()
        .task
        .expect("response carries the task")
}

async fn get(client: &mut Client, id: &str) -> Task {
    client
        .get_task(GetTaskRequest { id: id.to_owned() })
        .await
        .expect("get task")
        .into_inner()
        .task
        .expect("response carries the task")
}

fn to_status(id: &str, status: TaskStatus) -> UpdateTaskProgressRequest {
    UpdateTaskProgressRequest {
        id: id.to_owned(),
        status: Some(status.into()),
        ..UpdateTaskProgressRequest::default()
    }
}

async fn update(client: &mut Client, request: UpdateTaskProgressRequest) -> Task {
    client
        .update_task_progress(request)
        .await
        .expect("update task progress")
        .into_inner()
        .task
        .expect("response carries the task")
}

async fn set_status(client: &mut Client, id: &str, status: TaskStatus) -> Task {
    update(client, to_status(id, status)).await
}

async fn list(client: &mut Client, request: ListTasksRequest) -> (Vec<Task>, String) {
    let response = client
        .list_tasks(request)
        .await
        .expect("list tasks")
        .into_inner();
    (response.tasks, response.next_page_token)
}

fn ids(tasks: &[Task]) -> Vec<String> {
    tasks.iter().map(|t| t.id.clone()).collect()
}

fn time(t: &Option<prost_types::Timestamp>) -> (i64, i32) {
    let t = t.as_ref().expect("timestamp is set");
    (t.seconds, t.nanos)
}

// ---------- CreateTask ----------

#[tokio::test]
async fn create_task_applies_the_seed_defaults_and_computed_fields() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    let task = create(&mut client, named("  render frame 7 \n")).await;

    assert!(uuid::Uuid::parse_str(&task.id).is_ok(), "id {}", task.id);
    assert_eq!(task.name, "render frame 7");
    assert_eq!(task.status(), TaskStatus::Pending);
    assert_eq!(task.priority(), TaskPriority::Normal);
    assert_eq!(task.r#type(), TaskType::Node);
    assert_eq!(task.progress, 0.0);
    assert_eq!(task.retry_count, 0);
    assert_eq!(task.max_retries, 3);
    assert_eq!(task.metadata, "{}");
    assert!(task.result.is_none());
    assert!(task.error.is_none());
    assert!(task.created_at.is_some());
    assert!(!task.is_terminal);
    assert!(!task.is_active);
    assert!(!task.is_complete);
    assert!(!task.can_retry);
    let metrics = task.metrics.expect("metrics are always sent");
    assert!(metrics.start_time.is_none());
    assert!(metrics.end_time.is_none());
    assert!(metrics.duration_seconds.is_none());

    // What CreateTask returned is what GetTask returns.
    assert_eq!(get(&mut client, &task.id).await, task);
    server.shutdown().await;
}

#[tokio::test]
async fn create_task_keeps_given_fields_and_normalises_tags() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    let task = create(
        &mut client,
        CreateTaskRequest {
            name: "upscale".into(),
            r#type: Some(TaskType::Postprocessing.into()),
            priority: Some(TaskPriority::Critical.into()),
            description: Some("  2x  ".into()),
            tags: vec![" b ".into(), "a".into(), "b".into()],
            max_retries: Some(5),
            timeout_seconds: Some(12.5),
            ..CreateTaskRequest::default()
        },
    )
    .await;
    assert_eq!(task.r#type(), TaskType::Postprocessing);
    assert_eq!(task.priority(), TaskPriority::Critical);
    assert_eq!(task.description.as_deref(), Some("2x"));
    assert_eq!(task.tags, ["a", "b"]);
    assert_eq!(task.max_retries, 5);
    assert_eq!(task.timeout_seconds, Some(12.5));
    server.shutdown().await;
}

#[tokio::test]
async fn create_task_with_empty_name_is_invalid_argument_naming_name() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    for name in ["", "   \t\n"] {
        let status = client
            .create_task(named(name))
            .await
            .expect_err("empty name must be rejected");
        assert_invalid_argument(&status, "name");
        assert_eq!(bad_request_fields(&status), ["name"], "{status:?}");
    }
    // Nothing was created.
    let (tasks, _) = list(&mut client, ListTasksRequest::default()).await;
    assert!(tasks.is_empty(), "{tasks:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn create_task_with_explicit_unspecified_enums_is_rejected() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    let status = client
        .create_task(CreateTaskRequest {
            priority: Some(TaskPriority::Unspecified.into()),
            ..named("job")
        })
        .await
        .expect_err("UNSPECIFIED priority must be rejected");
    assert_invalid_argument(&status, "priority");

    let status = client
        .create_task(CreateTaskRequest {
            r#type: Some(TaskType::Unspecified.into()),
            ..named("job")
        })
        .await
        .expect_err("UNSPECIFIED type must be rejected");
    assert_invalid_argument(&status, "type");

    let status = client
        .create_task(CreateTaskRequest {
            priority: Some(99),
            ..named("job")
        })
        .await
        .expect_err("an unknown priority number must be rejected");
    assert_invalid_argument(&status, "priority");
    server.shutdown().await;
}

#[tokio::test]
async fn create_task_reports_every_violation_at_once() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    let status = client
        .create_task(CreateTaskRequest {
            name: " ".into(),
            priority: Some(TaskPriority::Unspecified.into()),
            metadata: "[1, 2]".into(),
            ..CreateTaskRequest::default()
        })
        .await
        .expect_err("invalid request");
    let fields: BTreeSet<String> = bad_request_fields(&status).into_iter().collect();
    // The proto promises a BadRequest "naming each bad field".
    for field in ["name", "priority", "metadata"] {
        assert!(fields.contains(field), "{field} not in {fields:?}");
    }
    assert_invalid_argument(&status, "priority");
    server.shutdown().await;
}

#[tokio::test]
async fn create_task_rejects_out_of_range_fields_naming_each() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    let deep = format!("{}1{}", r#"{"a":"#.repeat(70), "}".repeat(70));
    let cases: Vec<(CreateTaskRequest, &str)> = vec![
        (
            CreateTaskRequest {
                timeout_seconds: Some(-1.0),
                ..named("job")
            },
            "timeout_seconds",
        ),
        (
            CreateTaskRequest {
                timeout_seconds: Some(0.0),
                ..named("job")
            },
            "timeout_seconds",
        ),
        (
            CreateTaskRequest {
                timeout_seconds: Some(f64::NAN),
                ..named("job")
            },
            "timeout_seconds",
        ),
        (named(&"n".repeat(257)), "name"),
        (
            CreateTaskRequest {
                tags: vec!["ok".into(), "  ".into()],
                ..named("job")
            },
            "tags[1]",
        ),
        (
            CreateTaskRequest {
                metadata: deep,
                ..named("job")
            },
            "metadata",
        ),
    ];
    for (request, field) in cases {
        let status = client.create_task(request).await.expect_err("out of range");
        assert_invalid_argument(&status, field);
    }
    let (tasks, _) = list(&mut client, ListTasksRequest::default()).await;
    assert!(tasks.is_empty(), "nothing was created: {tasks:?}");
    // 256 characters is the longest name.
    let long = create(&mut client, named(&"n".repeat(256))).await;
    assert_eq!(long.name.len(), 256);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_with_one_request_id_make_one_task() {
    let server = TestServer::start().await;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let mut client = server.tasks();
        calls.spawn(async move {
            create(
                &mut client,
                CreateTaskRequest {
                    request_id: Some("same-key".into()),
                    ..named("raced")
                },
            )
            .await
            .id
        });
    }
    let mut ids = BTreeSet::new();
    while let Some(id) = calls.join_next().await {
        ids.insert(id.expect("call task"));
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    let (tasks, _) = list(&mut server.tasks(), ListTasksRequest::default()).await;
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn create_task_with_bad_metadata_is_invalid_argument() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    for metadata in ["not json", "[1]", "42"] {
        let status = client
            .create_task(CreateTaskRequest {
                metadata: metadata.into(),
                ..named("job")
            })
            .await
            .expect_err("metadata must be a JSON object");
        assert_invalid_argument(&status, "metadata");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn create_task_with_unknown_dependency_or_parent_names_the_field() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    let existing = create(&mut client, named("base")).await;

    let status = client
        .create_task(CreateTaskRequest {
            dependencies: vec!["no-such-task".into()],
            ..named("child")
        })
        .await
        .expect_err("unknown dependency");
    assert_invalid_argument(&status, "dependencies[0]");

    let status = client
        .create_task(CreateTaskRequest {
            dependencies: vec![existing.id.clone(), "no-such-task".into()],
            ..named("child")
        })
        .await
        .expect_err("unknown second dependency");
    assert_invalid_argument(&status, "dependencies[1]");
    assert!(!bad_request_fields(&status).contains(&"dependencies[0]".to_owned()));

    let status = client
        .create_task(CreateTaskRequest {
            parent_id: Some("no-such-parent".into()),
            ..named("child")
        })
        .await
        .expect_err("unknown parent");
    assert_invalid_argument(&status, "parent_id");

    // Known ones are accepted and kept.
    let child = create(
        &mut client,
        CreateTaskRequest {
            dependencies: vec![existing.id.clone()],
            parent_id: Some(existing.id.clone()),
            ..named("child")
        },
    )
    .await;
    assert_eq!(child.parent_id.as_deref(), Some(existing.id.as_str()));
    assert_eq!(child.dependencies.len(), 1);
    assert_eq!(child.dependencies[0].task_id, existing.id);
    server.shutdown().await;
}

#[tokio::test]
async fn create_task_is_idempotent_per_request_id() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    let request = CreateTaskRequest {
        request_id: Some("key-1".into()),
        metadata: r#"{"n": 1}"#.into(),
        ..named("job")
    };
    let first = create(&mut client, request.clone()).await;
    let again = create(&mut client, request.clone()).await;
    assert_eq!(again.id, first.id);
    assert_eq!(again, first);

    let status = client
        .create_task(CreateTaskRequest {
            metadata: r#"{"n": 2}"#.into(),
            ..request.clone()
        })
        .await
        .expect_err("same key, different body");
    assert_status(&status, Code::AlreadyExists, "TaskError");

    // Another key creates another task; only two tasks exist.
    let other = create(
        &mut client,
        CreateTaskRequest {
            request_id: Some("key-2".into()),
            ..request
        },
    )
    .await;
    assert_ne!(other.id, first.id);
    let (tasks, _) = list(&mut client, ListTasksRequest::default()).await;
    assert_eq!(ids(&tasks), [first.id, other.id]);

    let status = client
        .create_task(CreateTaskRequest {
            request_id: Some("  ".into()),
            ..named("job")
        })
        .await
        .expect_err("blank request_id");
    assert_invalid_argument(&status, "request_id");
    server.shutdown().await;
}

#[tokio::test]
async fn metadata_numbers_round_trip_exactly() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    let task = create(
        &mut client,
        CreateTaskRequest {
            metadata: r#"{"seed": 18446744073709551615, "f": 0.1234567890123456789}"#.into(),
            ..named("exact")
        },
    )
    .await;
    let fetched = get(&mut client, &task.id).await;
    for text in [&task.metadata, &fetched.metadata] {
        assert!(text.contains("18446744073709551615"), "{text}");
        assert!(text.contains("0.1234567890123456789"), "{text}");
    }
    let value: serde_json::Value = serde_json::from_str(&fetched.metadata).expect("JSON object");
    assert!(value.is_object(), "{value}");
    server.shutdown().await;
}

// ---------- GetTask ----------

#[tokio::test]
async fn get_task_unknown_is_not_found_and_empty_id_is_invalid() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    let status = client
        .get_task(GetTaskRequest {
            id: "7f3c0000-0000-4000-8000-000000000000".into(),
        })
        .await
        .expect_err("unknown task");
    assert_status(&status, Code::NotFound, "TaskError");
    assert!(
        status
            .message()
            .contains("7f3c0000-0000-4000-8000-000000000000"),
        "message names the task: {status:?}"
    );

    for id in ["", "  "] {
        let status = client
            .get_task(GetTaskRequest { id: id.into() })
            .await
            .expect_err("empty id");
        assert_invalid_argument(&status, "id");
    }
    server.shutdown().await;
}

// ---------- ListTasks ----------

#[tokio::test]
async fn list_tasks_filters_by_status_type_tags_and_parent() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    let parent = create(
        &mut client,
        CreateTaskRequest {
            r#type: Some(TaskType::Workflow.into()),
            tags: vec!["gpu".into(), "batch".into()],
            ..named("parent")
        },
    )
    .await;
    let child_a = create(
        &mut client,
        CreateTaskRequest {
            parent_id: Some(parent.id.clone()),
            tags: vec!["gpu".into()],
            ..named("child a")
        },
    )
    .await;
    let child_b = create(
        &mut client,
        CreateTaskRequest {
            parent_id: Some(parent.id.clone()),
            r#type: Some(TaskType::Cleanup.into()),
            ..named("child b")
        },
    )
    .await;
    let loner = create(
        &mut client,
        CreateTaskRequest {
            tags: vec!["batch".into()],
            ..named("loner")
        },
    )
    .await;
    set_status(&mut client, &child_a.id, TaskStatus::Running).await;
    set_status(&mut client, &loner.id, TaskStatus::Running).await;
    set_status(&mut client, &loner.id, TaskStatus::Completed).await;

    let all = [&parent, &child_a, &child_b, &loner];
    let (tasks, token) = list(&mut client, ListTasksRequest::default()).await;
    assert_eq!(ids(&tasks), all.map(|t| t.id.clone()), "oldest first");
    assert!(token.is_empty());

    let cases: Vec<(ListTasksRequest, Vec<&Task>)> = vec![
        (
            ListTasksRequest {
                statuses: vec![TaskStatus::Running.into()],
                ..ListTasksRequest::default()
            },
            vec![&child_a],
        ),
        (
            ListTasksRequest {
                statuses: vec![TaskStatus::Pending.into(), TaskStatus::Completed.into()],
                ..ListTasksRequest::default()
            },
            vec![&parent, &child_b, &loner],
        ),
        (
            ListTasksRequest {
                types: vec![TaskType::Node.into()],
                ..ListTasksRequest::default()
            },
            vec![&child_a, &loner],
        ),
        (
            ListTasksRequest {
                types: vec![TaskType::Workflow.into(), TaskType::Cleanup.into()],
                ..ListTasksRequest::default()
            },
            vec![&parent, &child_b],
        ),
        (
            ListTasksRequest {
                tags: vec!["gpu".into()],
                ..ListTasksRequest::default()
            },
            vec![&parent, &child_a],
        ),
        (
            ListTasksRequest {
                tags: vec!["gpu".into(), "batch".into()],
                ..ListTasksRequest::default()
            },
            vec![&parent],
        ),
        (
            ListTasksRequest {
                parent_id: Some(parent.id.clone()),
                ..ListTasksRequest::default()
            },
            vec![&child_a, &child_b],
        ),
        (
            ListTasksRequest {
                parent_id: Some(parent.id.clone()),
                types: vec![TaskType::Cleanup.into()],
                ..ListTasksRequest::default()
            },
            vec![&child_b],
        ),
        (
            ListTasksRequest {
                statuses: vec![TaskStatus::Failed.into()],
                ..ListTasksRequest::default()
            },
            vec![],
        ),
    ];
    for (request, want) in cases {
        let (tasks, _) = list(&mut client, request.clone()).await;
        let want: Vec<String> = want.iter().map(|t| t.id.clone()).collect();
        assert_eq!(ids(&tasks), want, "{request:?}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn list_tasks_pages_without_duplicates_or_gaps() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    let mut created = Vec::new();
    for i in 0..23 {
        let tags = if i % 2 == 0 {
            vec!["even".to_owned()]
        } else {
            vec![]
        };
        created.push(
            create(
                &mut client,
                CreateTaskRequest {
                    tags,
                    ..named(&format!("task {i}"))
                },
            )
            .await
            .id,
        );
    }

    for (filter_tags, page_size) in [(vec![], 5u32), (vec![], 23), (vec!["even".to_owned()], 4)] {
        let want: Vec<String> = if filter_tags.is_empty() {
            created.clone()
        } else {
            created.iter().step_by(2).cloned().collect()
        };
        let mut seen = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let (tasks, next) = list(
                &mut client,
                ListTasksRequest {
                    tags: filter_tags.clone(),
                    page_size,
                    page_token: token.clone(),
                    ..ListTasksRequest::default()
                },
            )
            .await;
            assert!(tasks.len() <= page_size as usize);
            pages += 1;
            assert!(pages <= want.len() + 1, "paging does not terminate");
            seen.extend(ids(&tasks));
            if next.is_empty() {
                break;
            }
            assert_eq!(
                tasks.len(),
                page_size as usize,
                "only the last page is short"
            );
            token = next;
        }
        assert_eq!(seen, want, "tags {filter_tags:?} page_size {page_size}");
        assert_eq!(pages, want.len().div_ceil(page_size as usize));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn list_tasks_rejects_bad_paging_and_filters() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    create(&mut client, named("one")).await;

    for token in ["garbage", "zz", "74313a", "77313a6162"] {
        let status = client
            .list_tasks(ListTasksRequest {
                page_token: token.into(),
                ..ListTasksRequest::default()
            })
            .await
            .expect_err("bad page token");
        assert_invalid_argument(&status, "page_token");
    }

    let status = client
        .list_tasks(ListTasksRequest {
            page_size: 5000,
            ..ListTasksRequest::default()
        })
        .await
        .expect_err("page_size over the maximum");
    assert_invalid_argument(&status, "page_size");

    let (tasks, _) = list(
        &mut client,
        ListTasksRequest {
            page_size: 1000,
            ..ListTasksRequest::default()
        },
    )
    .await;
    assert_eq!(tasks.len(), 1, "1000 is the largest allowed page size");

    let status = client
        .list_tasks(ListTasksRequest {
            statuses: vec![TaskStatus::Unspecified.into()],
            ..ListTasksRequest::default()
        })
        .await
        .expect_err("UNSPECIFIED status filter");
    assert_invalid_argument(&status, "statuses[0]");
    server.shutdown().await;
}

// ---------- UpdateTaskProgress ----------

#[tokio::test]
async fn progress_outside_zero_to_one_is_invalid_argument_naming_progress() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    let task = create(&mut client, named("job")).await;
    for progress in [1.5, -0.1, f64::NAN, f64::INFINITY] {
        let status = client
            .update_task_progress(UpdateTaskProgressRequest {
                id: task.id.clone(),
                progress: Some(progress),
                ..UpdateTaskProgressRequest::default()
            })
            .await
            .expect_err("progress out of range");
        assert_invalid_argument(&status, "progress");
    }
    // The task is untouched.
    assert_eq!(get(&mut client, &task.id).await, task);

    let updated = update(
        &mut client,
        UpdateTaskProgressRequest {
            id: task.id.clone(),
            progress: Some(0.25),
            progress_message: Some("a quarter".into()),
            ..UpdateTaskProgressRequest::default()
        },
    )
    .await;
    assert_eq!(updated.progress, 0.25);
    assert_eq!(updated.progress_message.as_deref(), Some("a quarter"));
    assert_eq!(updated.status(), TaskStatus::Pending);
    server.shutdown().await;
}

#[tokio::test]
async fn pending_running_completed_sets_metrics_and_progress() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    let task = create(&mut client, named("job")).await;

    let running = update(
        &mut client,
        UpdateTaskProgressRequest {
            progress: Some(0.5),
            ..to_status(&task.id, TaskStatus::Running)
        },
    )
    .await;
    assert_eq!(running.status(), TaskStatus::Running);
    assert_eq!(running.progress, 0.5);
    assert!(running.is_active);
    assert!(!running.is_terminal);
    let metrics = running.metrics.unwrap();
    assert!(metrics.start_time.is_some());
    assert!(metrics.end_time.is_none());
    assert!(metrics.duration_seconds.is_none());

    let done = update(
        &mut client,
        UpdateTaskProgressRequest {
            result: Some(r#"{"ok":true}"#.into()),
            ..to_status(&task.id, TaskStatus::Completed)
        },
    )
    .await;
    assert_eq!(done.status(), TaskStatus::Completed);
    assert_eq!(done.progress, 1.0);
    assert!(done.is_terminal);
    assert!(done.is_complete);
    assert!(!done.is_active);
    assert!(!done.can_retry);
    let metrics = done.metrics.unwrap();
    assert_eq!(metrics.start_time, running.metrics.unwrap().start_time);
    assert!(time(&metrics.end_time) >= time(&metrics.start_time));
    let duration = metrics
        .duration_seconds
        .expect("duration once both times are set");
    assert!(duration >= 0.0 && duration.is_finite(), "{duration}");
    assert_eq!(get(&mut client, &task.id).await, done);
    server.shutdown().await;
}

#[tokio::test]
async fn illegal_transition_is_failed_precondition_naming_both_states() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    let task = create(&mut client, named("job")).await;
    let status = client
        .update_task_progress(to_status(&task.id, TaskStatus::Retrying))
        .await
        .expect_err("PENDING -> RETRYING is not allowed");
    assert_status(&status, Code::FailedPrecondition, "TaskError");
    let message = status.message().to_lowercase();
    assert!(message.contains("pending"), "{status:?}");
    assert!(message.contains("retrying"), "{status:?}");
    assert_eq!(get(&mut client, &task.id).await, task, "task unchanged");

    let status = client
        .update_task_progress(to_status(&task.id, TaskStatus::Unspecified))
        .await
        .expect_err("UNSPECIFIED status");
    assert_invalid_argument(&status, "status");
    server.shutdown().await;
}

#[tokio::test]
async fn updating_a_terminal_task_is_failed_precondition() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    for terminal in [
        TaskStatus::Completed,
        TaskStatus::Cancelled,
        TaskStatus::Failed,
    ] {
        let task = create(&mut client, named("job")).await;
        let finished = set_status(&mut client, &task.id, terminal).await;
        assert!(finished.is_terminal);
        for request in [
            UpdateTaskProgressRequest {
                id: task.id.clone(),
                progress: Some(0.5),
                ..UpdateTaskProgressRequest::default()
            },
            to_status(&task.id, TaskStatus::Running),
        ] {
            let status = client
                .update_task_progress(request)
                .await
                .expect_err("terminal tasks do not change");
            assert_status(&status, Code::FailedPrecondition, "TaskError");
        }
        assert_eq!(get(&mut client, &task.id).await, finished);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn error_is_only_accepted_with_status_failed() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    let task = create(&mut client, named("job")).await;
    set_status(&mut client, &task.id, TaskStatus::Running).await;

    let status = client
        .update_task_progress(UpdateTaskProgressRequest {
            error: Some("boom".into()),
            ..to_status(&task.id, TaskStatus::Completed)
        })
        .await
        .expect_err("error with COMPLETED");
    assert_invalid_argument(&status, "error");

    let status = client
        .update_task_progress(UpdateTaskProgressRequest {
            id: task.id.clone(),
            error_type: Some("TaskError".into()),
            ..UpdateTaskProgressRequest::default()
        })
        .await
        .expect_err("error_type without a status");
    assert_invalid_argument(&status, "error_type");
    assert_eq!(
        get(&mut client, &task.id).await.status(),
        TaskStatus::Running
    );

    let failed = update(
        &mut client,
        UpdateTaskProgressRequest {
            error: Some("boom".into()),
            error_type: Some("TaskError".into()),
            ..to_status(&task.id, TaskStatus::Failed)
        },
    )
    .await;
    assert_eq!(failed.status(), TaskStatus::Failed);
    assert_eq!(failed.error.as_deref(), Some("boom"));
    assert_eq!(failed.error_type.as_deref(), Some("TaskError"));
    assert!(failed.can_retry);
    assert!(failed.is_terminal);
    server.shutdown().await;
}

#[tokio::test]
async fn result_json_round_trips_exactly() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    let task = create(&mut client, named("job")).await;
    set_status(&mut client, &task.id, TaskStatus::Running).await;
    let result = r#"{"images":["out_00001_.png"],"seed":18446744073709551615,"cfg":0.1234567890123456789,"nested":{"z":1,"a":[1.0,2]}}"#;
    let done = update(
        &mut client,
        UpdateTaskProgressRequest {
            result: Some(result.into()),
            ..to_status(&task.id, TaskStatus::Completed)
        },
    )
    .await;
    assert_eq!(done.result.as_deref(), Some(result));
    assert_eq!(
        get(&mut client, &task.id).await.result.as_deref(),
        Some(result)
    );

    // Any JSON value is a result; text that is not JSON is not.
    let other = create(&mut client, named("scalar")).await;
    let updated = update(
        &mut client,
        UpdateTaskProgressRequest {
            id: other.id.clone(),
            result: Some("42".into()),
            ..UpdateTaskProgressRequest::default()
        },
    )
    .await;
    assert_eq!(updated.result.as_deref(), Some("42"));
    let status = client
        .update_task_progress(UpdateTaskProgressRequest {
            id: other.id.clone(),
            result: Some("{not json".into()),
            ..UpdateTaskProgressRequest::default()
        })
        .await
        .expect_err("result must be JSON");
    assert_invalid_argument(&status, "result");
    server.shutdown().await;
}

#[tokio::test]
async fn updated_at_is_set_by_updates_and_never_goes_back() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    let task = create(&mut client, named("job")).await;
    let created = time(&task.created_at);
    if let Some(t) = &task.updated_at {
        assert!((t.seconds, t.nanos) >= created);
    }
    let first = update(
        &mut client,
        UpdateTaskProgressRequest {
            id: task.id.clone(),
            progress: Some(0.1),
            ..UpdateTaskProgressRequest::default()
        },
    )
    .await;
    let t1 = time(&first.updated_at);
    assert!(t1 >= created, "{t1:?} < {created:?}");
    let second = set_status(&mut client, &task.id, TaskStatus::Running).await;
    let t2 = time(&second.updated_at);
    assert!(t2 >= t1, "{t2:?} < {t1:?}");
    let third = update(
        &mut client,
        UpdateTaskProgressRequest {
            id: task.id.clone(),
            progress_message: Some("still going".into()),
            ..UpdateTaskProgressRequest::default()
        },
    )
    .await;
    let t3 = time(&third.updated_at);
    assert!(t3 >= t2, "{t3:?} < {t2:?}");
    assert_eq!(
        third.created_at, task.created_at,
        "created_at never changes"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn update_of_unknown_task_is_not_found_and_empty_id_invalid() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    let status = client
        .update_task_progress(to_status("missing", TaskStatus::Running))
        .await
        .expect_err("unknown task");
    assert_status(&status, Code::NotFound, "TaskError");
    let status = client
        .update_task_progress(to_status("", TaskStatus::Running))
        .await
        .expect_err("empty id");
    assert_invalid_argument(&status, "id");
    server.shutdown().await;
}

// ---------- CancelTask ----------

#[tokio::test]
async fn cancel_cascades_to_unfinished_descendants() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    let root = create(&mut client, named("root")).await;
    let child = create(
        &mut client,
        CreateTaskRequest {
            parent_id: Some(root.id.clone()),
            ..named("child")
        },
    )
    .await;
    let grandchild = create(
        &mut client,
        CreateTaskRequest {
            parent_id: Some(child.id.clone()),
            ..named("grandchild")
        },
    )
    .await;
    let finished_child = create(
        &mut client,
        CreateTaskRequest {
            parent_id: Some(root.id.clone()),
            ..named("finished child")
        },
    )
    .await;
    set_status(&mut client, &finished_child.id, TaskStatus::Running).await;
    let finished_child = set_status(&mut client, &finished_child.id, TaskStatus::Completed).await;
    let bystander = create(&mut client, named("bystander")).await;
    set_status(&mut client, &child.id, TaskStatus::Running).await;

    let cancelled = client
        .cancel_task(CancelTaskRequest {
            id: root.id.clone(),
            reason: Some("user asked".into()),
        })
        .await
        .expect("cancel")
        .into_inner()
        .task
        .expect("task");
    assert_eq!(cancelled.status(), TaskStatus::Cancelled);
    assert!(cancelled.is_terminal);
    assert!(!cancelled.can_retry);
    assert_eq!(cancelled.progress_message.as_deref(), Some("user asked"));
    assert!(cancelled.metrics.unwrap().end_time.is_some());

    for id in [&root.id, &child.id, &grandchild.id] {
        assert_eq!(
            get(&mut client, id).await.status(),
            TaskStatus::Cancelled,
            "task {id}"
        );
    }
    assert_eq!(get(&mut client, &finished_child.id).await, finished_child);
    assert_eq!(get(&mut client, &bystander.id).await, bystander);
    server.shutdown().await;
}

#[tokio::test]
async fn cancelling_a_finished_task_returns_it_unchanged() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    let task = create(&mut client, named("job")).await;
    set_status(&mut client, &task.id, TaskStatus::Running).await;
    let done = set_status(&mut client, &task.id, TaskStatus::Completed).await;
    let response = client
        .cancel_task(CancelTaskRequest {
            id: task.id.clone(),
            reason: Some("too late".into()),
        })
        .await
        .expect("cancelling a finished task is not an error")
        .into_inner()
        .task
        .expect("task");
    assert_eq!(response, done);
    assert_eq!(get(&mut client, &task.id).await, done);

    // Cancelling twice is also not an error.
    let other = create(&mut client, named("other")).await;
    let first = client
        .cancel_task(CancelTaskRequest {
            id: other.id.clone(),
            reason: None,
        })
        .await
        .expect("cancel")
        .into_inner()
        .task
        .unwrap();
    let second = client
        .cancel_task(CancelTaskRequest {
            id: other.id.clone(),
            reason: None,
        })
        .await
        .expect("cancel again")
        .into_inner()
        .task
        .unwrap();
    assert_eq!(first.status(), TaskStatus::Cancelled);
    assert_eq!(second, first);
    server.shutdown().await;
}

#[tokio::test]
async fn cancel_of_unknown_task_is_not_found_and_empty_id_invalid() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    let status = client
        .cancel_task(CancelTaskRequest {
            id: "missing".into(),
            reason: None,
        })
        .await
        .expect_err("unknown task");
    assert_status(&status, Code::NotFound, "TaskError");
    let status = client
        .cancel_task(CancelTaskRequest {
            id: " ".into(),
            reason: None,
        })
        .await
        .expect_err("empty id");
    assert_invalid_argument(&status, "id");
    server.shutdown().await;
}

// ---------- RetryTask ----------

async fn fail(client: &mut Client, id: &str) -> Task {
    set_status(client, id, TaskStatus::Running).await;
    update(
        client,
        UpdateTaskProgressRequest {
            error: Some("backend lost".into()),
            ..to_status(id, TaskStatus::Failed)
        },
    )
    .await
}

#[tokio::test]
async fn retry_moves_a_failed_task_to_retrying_until_retries_run_out() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    let task = create(
        &mut client,
        CreateTaskRequest {
            max_retries: Some(1),
            ..named("flaky")
        },
    )
    .await;
    let failed = fail(&mut client, &task.id).await;
    assert!(failed.can_retry);

    let retrying = client
        .retry_task(RetryTaskRequest {
            id: task.id.clone(),
        })
        .await
        .expect("retry a failed task")
        .into_inner()
        .task
        .expect("task");
    assert_eq!(retrying.status(), TaskStatus::Retrying);
    assert_eq!(retrying.retry_count, 1);
    assert!(!retrying.can_retry, "only FAILED tasks can be retried");
    assert!(retrying.is_active);
    assert!(!retrying.is_terminal);
    assert_eq!(retrying.progress, 0.0);
    let metrics = retrying.metrics.unwrap();
    assert!(
        metrics.end_time.is_none(),
        "a retried task is no longer finished"
    );
    assert!(metrics.duration_seconds.is_none());
    assert_eq!(get(&mut client, &task.id).await, retrying);

    // Retrying a task that is not FAILED is refused.
    let status = client
        .retry_task(RetryTaskRequest {
            id: task.id.clone(),
        })
        .await
        .expect_err("RETRYING is not FAILED");
    assert_status(&status, Code::FailedPrecondition, "TaskError");

    // Fail again: the one retry is used up.
    let failed_again = fail(&mut client, &task.id).await;
    assert_eq!(failed_again.retry_count, 1);
    assert!(!failed_again.can_retry);
    let status = client
        .retry_task(RetryTaskRequest {
            id: task.id.clone(),
        })
        .await
        .expect_err("retries exhausted");
    assert_status(&status, Code::FailedPrecondition, "TaskError");
    assert_eq!(get(&mut client, &task.id).await, failed_again);
    server.shutdown().await;
}

#[tokio::test]
async fn retry_of_non_failed_unknown_or_unretryable_tasks_is_refused() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    let pending = create(&mut client, named("pending")).await;
    let status = client
        .retry_task(RetryTaskRequest {
            id: pending.id.clone(),
        })
        .await
        .expect_err("PENDING is not FAILED");
    assert_status(&status, Code::FailedPrecondition, "TaskError");
    assert_eq!(get(&mut client, &pending.id).await, pending);

    let no_retries = create(
        &mut client,
        CreateTaskRequest {
            max_retries: Some(0),
            ..named("no retries")
        },
    )
    .await;
    let failed = fail(&mut client, &no_retries.id).await;
    assert!(!failed.can_retry);
    let status = client
        .retry_task(RetryTaskRequest {
            id: no_retries.id.clone(),
        })
        .await
        .expect_err("max_retries 0");
    assert_status(&status, Code::FailedPrecondition, "TaskError");

    let status = client
        .retry_task(RetryTaskRequest {
            id: "missing".into(),
        })
        .await
        .expect_err("unknown task");
    assert_status(&status, Code::NotFound, "TaskError");
    let status = client
        .retry_task(RetryTaskRequest { id: String::new() })
        .await
        .expect_err("empty id");
    assert_invalid_argument(&status, "id");
    server.shutdown().await;
}

#[tokio::test]
async fn a_retried_task_drops_the_error_of_the_failed_attempt() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    let task = create(&mut client, named("flaky")).await;
    set_status(&mut client, &task.id, TaskStatus::Running).await;
    let failed = update(
        &mut client,
        UpdateTaskProgressRequest {
            error: Some("out of memory".into()),
            error_type: Some("TaskError".into()),
            ..to_status(&task.id, TaskStatus::Failed)
        },
    )
    .await;
    assert_eq!(failed.error.as_deref(), Some("out of memory"));
    let retrying = client
        .retry_task(RetryTaskRequest {
            id: task.id.clone(),
        })
        .await
        .expect("retry")
        .into_inner()
        .task
        .expect("task");
    assert_eq!(retrying.error, None);
    assert_eq!(retrying.error_type, None);
    set_status(&mut client, &task.id, TaskStatus::Running).await;
    let done = set_status(&mut client, &task.id, TaskStatus::Completed).await;
    assert_eq!(done.error, None, "a completed task carries no error");
    server.shutdown().await;
}

#[tokio::test]
async fn reporting_retrying_without_retries_left_says_so() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    let task = create(
        &mut client,
        CreateTaskRequest {
            max_retries: Some(0),
            ..named("one shot")
        },
    )
    .await;
    set_status(&mut client, &task.id, TaskStatus::Running).await;
    let status = client
        .update_task_progress(to_status(&task.id, TaskStatus::Retrying))
        .await
        .expect_err("no retries left");
    assert_status(&status, Code::FailedPrecondition, "TaskError");
    assert!(
        status.message().contains("no retries left"),
        "{}",
        status.message()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_and_overlong_fields_are_refused_with_small_errors() {
    let server = TestServer::start().await;
    let mut client = server.tasks();
    let status = client
        .create_task(CreateTaskRequest {
            tags: vec![String::new(); 3000],
            dependencies: vec!["x".repeat(300)],
            description: Some("d".repeat(10_000)),
            ..named("big")
        })
        .await
        .expect_err("too many tags, overlong id and description");
    assert_invalid_argument(&status, "tags");
    let fields = bad_request_fields(&status);
    assert!(fields.contains(&"dependencies[0]".to_owned()), "{fields:?}");
    assert!(fields.contains(&"description".to_owned()), "{fields:?}");
    assert!(status.message().len() <= 1024, "{}", status.message().len());

    let status = client
        .get_task(GetTaskRequest {
            id: "i".repeat(100_000),
        })
        .await
        .expect_err("overlong id");
    assert_invalid_argument(&status, "id");
    assert!(status.message().len() <= 1024);
    server.shutdown().await;
}
