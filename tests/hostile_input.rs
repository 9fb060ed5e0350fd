//! Hostile input: 10,000 generated malformed requests (workflows, overrides, filters, page
//! tokens, ids, dependency graphs, UTF-8 edge cases, huge numbers) against the real server:
//! none panics or hangs it, each is answered INVALID_ARGUMENT with field paths or another
//! documented status (never INTERNAL, UNKNOWN or UNIMPLEMENTED), and it still serves after.
//! The same generators drive the ComfyUI message parsers (HTTP bodies and WebSocket frames of
//! a hostile or broken backend): every input is parsed or refused with a typed error.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use comfy_reality::comfy::wire::{
    self, BinaryFrame, HistoryMap, JobList, PromptResponse, QueueStatus, SystemStats,
    ValidationErrorBody, WsMessage,
};
use comfy_reality::config::{Config, QueueType, ServerConfig};
use comfy_reality::pb::{
    self, CreateTaskRequest, ExecuteWorkflowRequest, GetExecutionRequest, InputValue,
    ListEventsRequest, ListExecutionsRequest, ListTasksRequest, NodeOverrides,
    RegisterWorkflowRequest, TaskDependency, input_value,
};
use common::TestServer;
use common::hostile::{hostile_id, hostile_json, hostile_json_text, hostile_string};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

/// Requests per group; five groups make 10,000.
const CASES_PER_GROUP: u32 = 2_000;

/// A call that takes longer than this counts as a hang.
const HANG_GUARD: Duration = Duration::from_secs(20);

fn input_value() -> impl Strategy<Value = InputValue> {
    prop_oneof![
        any::<i64>().prop_map(input_value::Kind::IntValue),
        any::<u64>().prop_map(input_value::Kind::UintValue),
        any::<f64>().prop_map(input_value::Kind::DoubleValue),
        hostile_string().prop_map(input_value::Kind::StringValue),
        any::<bool>().prop_map(input_value::Kind::BoolValue),
    ]
    .prop_map(|kind| InputValue { kind: Some(kind) })
    .boxed()
    .prop_union(Just(InputValue { kind: None }).boxed())
}

/// Tags or ids: usually a few, sometimes past the limit of 64.
fn tags() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        4 => proptest::collection::vec(hostile_string(), 0..4),
        1 => proptest::collection::vec("[a-z]{1,8}", 60..70),
    ]
}

/// Dependency ids: usually a few, sometimes past the limit of 256.
fn ids() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        4 => proptest::collection::vec(hostile_id(), 0..4),
        1 => proptest::collection::vec("[a-f0-9-]{36}", 250..300),
    ]
}

fn execute_request() -> impl Strategy<Value = ExecuteWorkflowRequest> {
    let overrides = proptest::collection::hash_map(
        hostile_string(),
        proptest::collection::hash_map(hostile_string(), input_value(), 0..4)
            .prop_map(|inputs| NodeOverrides { inputs }),
        0..4,
    );
    let dependencies = proptest::collection::vec(
        (hostile_id(), any::<i32>()).prop_map(|(task_id, dependency_type)| TaskDependency {
            task_id,
            dependency_type,
        }),
        0..4,
    )
    .boxed()
    .prop_union(
        proptest::collection::vec(
            hostile_id().prop_map(|task_id| TaskDependency {
                task_id,
                dependency_type: 1,
            }),
            250..300,
        )
        .boxed(),
    );
    (
        hostile_json_text(),
        overrides,
        tags(),
        dependencies,
        proptest::option::of(hostile_string()),
        proptest::option::of(any::<f64>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<i32>()),
    )
        .prop_map(
            |(json, overrides, tags, dependencies, idempotency_key, timeout, retries, priority)| {
                ExecuteWorkflowRequest {
                    workflow: Some(pb::execute_workflow_request::Workflow::WorkflowJson(json)),
                    overrides: overrides.into_iter().collect::<HashMap<_, _>>(),
                    tags,
                    dependencies,
                    idempotency_key,
                    timeout_seconds: timeout,
                    max_retries: retries,
                    priority,
                    ..Default::default()
                }
            },
        )
}

fn register_request() -> impl Strategy<Value = RegisterWorkflowRequest> {
    (
        hostile_string(),
        proptest::option::of(hostile_string()),
        hostile_json_text(),
        tags(),
        proptest::option::of(hostile_id()),
    )
        .prop_map(|(name, version, workflow_json, tags, workflow_id)| {
            RegisterWorkflowRequest {
                name,
                version,
                workflow_json,
                tags,
                workflow_id,
                ..Default::default()
            }
        })
}

fn create_task_request() -> impl Strategy<Value = CreateTaskRequest> {
    (
        hostile_string(),
        hostile_json().prop_map(|v| v.to_string()),
        ids(),
        proptest::option::of(hostile_id()),
        proptest::option::of(any::<f64>()),
        proptest::option::of(hostile_string()),
        proptest::option::of(any::<i32>()),
    )
        .prop_map(
            |(name, metadata, dependencies, parent_id, timeout_seconds, request_id, r#type)| {
                CreateTaskRequest {
                    name,
                    metadata,
                    dependencies,
                    parent_id,
                    timeout_seconds,
                    request_id,
                    r#type,
                    ..Default::default()
                }
            },
        )
}

/// One listing or lookup with hostile filters, page tokens and ids.
#[derive(Debug, Clone)]
enum Lookup {
    Executions(ListExecutionsRequest),
    Tasks(ListTasksRequest),
    Events(ListEventsRequest),
    Execution(String),
}

fn lookup() -> impl Strategy<Value = Lookup> {
    let ints = || proptest::collection::vec(any::<i32>(), 0..6);
    let strings = tags;
    prop_oneof![
        (
            ints(),
            strings(),
            hostile_string(),
            any::<u32>(),
            proptest::option::of(hostile_id())
        )
            .prop_map(|(statuses, tags, page_token, page_size, workflow_id)| {
                Lookup::Executions(ListExecutionsRequest {
                    statuses,
                    tags,
                    page_token,
                    page_size,
                    workflow_id,
                })
            }),
        (ints(), ints(), strings(), hostile_string(), any::<u32>()).prop_map(
            |(statuses, types, tags, page_token, page_size)| Lookup::Tasks(ListTasksRequest {
                statuses,
                types,
                tags,
                page_token,
                page_size,
                ..Default::default()
            })
        ),
        (
            any::<u64>(),
            hostile_string(),
            any::<u32>(),
            ints(),
            ints(),
            strings(),
            proptest::option::of(any::<i32>())
        )
            .prop_map(
                |(after, page_token, page_size, categories, event_types, ids, min_level)| {
                    Lookup::Events(ListEventsRequest {
                        after_sequence: after,
                        page_token,
                        page_size,
                        categories,
                        event_types,
                        task_ids: ids.clone(),
                        execution_ids: ids,
                        min_level,
                        ..Default::default()
                    })
                }
            ),
        hostile_id().prop_map(Lookup::Execution),
    ]
}

/// OK, or a documented refusal; INVALID_ARGUMENT names at least one field.
fn check(result: Result<(), Status>) -> Result<(), TestCaseError> {
    let Err(status) = result else { return Ok(()) };
    match status.code() {
        Code::InvalidArgument => {
            let fields = status
                .get_details_bad_request()
                .map(|b| b.field_violations)
                .unwrap_or_default();
            prop_assert!(
                !fields.is_empty() && fields.iter().all(|f| !f.field.is_empty()),
                "INVALID_ARGUMENT without field paths: {status:?}"
            );
            prop_assert!(status.get_details_error_info().is_some(), "{status:?}");
            Ok(())
        }
        Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::ResourceExhausted
        | Code::OutOfRange => Ok(()),
        _ => Err(TestCaseError::fail(format!(
            "undocumented answer: {status:?}"
        ))),
    }
}

#[test]
fn ten_thousand_malformed_requests_are_refused_cleanly() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(async {
        let mut config = Config::default();
        config.runtime.queue_type = QueueType::Memory;
        // Nothing listens there: graphs are checked without a catalogue and queued.
        config.servers = vec![ServerConfig::with_url("http://127.0.0.1:1")];
        // Smaller than the defaults, so that size limits are reached often.
        config.service.max_request_bytes = 256 * 1024;
        config.scheduling.max_workflow_bytes = 64 * 1024;
        TestServer::start_with(config).await
    });
    let call = |future: std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), Status>> + Send + '_>,
    >| {
        runtime.block_on(async {
            tokio::time::timeout(HANG_GUARD, future)
                .await
                .map_err(|_| TestCaseError::fail("the call hung"))
        })
    };
    let config = RunnerConfig {
        cases: CASES_PER_GROUP,
        failure_persistence: None,
        ..RunnerConfig::default()
    };

    let mut runner = TestRunner::new(config.clone());
    runner
        .run(&execute_request(), |request| {
            check(call(Box::pin(async {
                server
                    .executions()
                    .execute_workflow(request)
                    .await
                    .map(|_| ())
            }))?)
        })
        .unwrap();
    let mut runner = TestRunner::new(config.clone());
    runner
        .run(&register_request(), |request| {
            check(call(Box::pin(async {
                server
                    .workflows()
                    .register_workflow(request)
                    .await
                    .map(|_| ())
            }))?)
        })
        .unwrap();
    let mut runner = TestRunner::new(config.clone());
    runner
        .run(&create_task_request(), |request| {
            check(call(Box::pin(async {
                server.tasks().create_task(request).await.map(|_| ())
            }))?)
        })
        .unwrap();
    let mut runner = TestRunner::new(config.clone());
    runner
        .run(&lookup(), |lookup| {
            check(call(Box::pin(async {
                match lookup {
                    Lookup::Executions(r) => {
                        server.executions().list_executions(r).await.map(|_| ())
                    }
                    Lookup::Tasks(r) => server.tasks().list_tasks(r).await.map(|_| ()),
                    Lookup::Events(r) => server.events().list_events(r).await.map(|_| ()),
                    Lookup::Execution(id) => server
                        .executions()
                        .get_execution(GetExecutionRequest { id })
                        .await
                        .map(|_| ()),
                }
            }))?)
        })
        .unwrap();
    // The fifth group: validation of the same hostile graphs without running them.
    let mut runner = TestRunner::new(config);
    runner
        .run(&hostile_json_text(), |json| {
            check(call(Box::pin(async {
                server
                    .workflows()
                    .validate_workflow(pb::ValidateWorkflowRequest {
                        workflow: Some(pb::validate_workflow_request::Workflow::WorkflowJson(json)),
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
            }))?)
        })
        .unwrap();

    // Still serving: a well-formed call is answered.
    runtime.block_on(async {
        let task = server
            .tasks()
            .create_task(CreateTaskRequest {
                name: "after the storm".into(),
                ..Default::default()
            })
            .await
            .expect("the server still serves");
        assert_eq!(task.into_inner().task.unwrap().name, "after the storm");
        server.shutdown().await;
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, failure_persistence: None, ..ProptestConfig::default() })]

    /// WebSocket text frames and HTTP bodies from a hostile backend: parsed or a typed error.
    #[test]
    fn comfy_text_and_bodies_are_parsed_or_refused(text in hostile_json_text(), json in hostile_json()) {
        let _: Result<WsMessage, wire::WireError> = WsMessage::parse(&text);
        let _: Result<HistoryMap, wire::WireError> = wire::from_value(json.clone());
        let _: Result<QueueStatus, wire::WireError> = wire::from_value(json.clone());
        let _: Result<ValidationErrorBody, wire::WireError> = wire::from_value(json.clone());
        let _: Result<PromptResponse, wire::WireError> = wire::from_value(json.clone());
        let _: Result<SystemStats, wire::WireError> = wire::from_value(json.clone());
        let _: Result<JobList, wire::WireError> = wire::from_value(json.clone());
        let _ = wire::parse_object_info(text.as_bytes());
        let _ = wire::parse_object_info(json.to_string().as_bytes());
    }

    /// WebSocket binary frames: parsed or a typed error.
    #[test]
    fn comfy_binary_frames_are_parsed_or_refused(
        head in proptest::collection::vec(any::<u8>(), 0..16),
        text in hostile_json_text(),
    ) {
        let mut frame = head;
        frame.extend_from_slice(text.as_bytes());
        let _: Result<BinaryFrame, wire::WireError> = BinaryFrame::parse(Bytes::from(frame));
    }
}
