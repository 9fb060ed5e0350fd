//! EventService end to end: subscriptions that resume exactly, filters,
//! heartbeats, ListEvents paging, and WatchExecution ending on every
//! terminal state, against the real server and fake ComfyUI backends.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use comfy_reality::pb::watch_execution_response::Update;
use comfy_reality::pb::{
    self, CancelExecutionRequest, ListEventsRequest, SubscribeEventsRequest, TaskEventType,
    TaskPriority, TaskStatus, WatchExecutionRequest, event::Payload,
    subscribe_events_response::Item,
};
use common::exec::{delay_workflow, harness, image_workflow};
use serde_json::json;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_types::StatusExt as _;

/// Reads events from `stream` until `done` says so (or panics after a while).
async fn read_until(
    stream: &mut tonic::Streaming<pb::SubscribeEventsResponse>,
    mut done: impl FnMut(&pb::Event) -> bool,
) -> Vec<pb::Event> {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let item = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("events in time")
            .expect("stream open")
            .expect("no error");
        if let Some(Item::Event(event)) = item.item {
            let stop = done(&event);
            events.push(event);
            if stop {
                return events;
            }
        }
    }
}

fn task_event(event: &pb::Event) -> Option<&pb::TaskEvent> {
    match &event.payload {
        Some(Payload::TaskEvent(e)) => Some(e),
        _ => None,
    }
}

fn is_root_completed(event: &pb::Event, root: &str) -> bool {
    task_event(event)
        .is_some_and(|e| e.task_id == root && e.event_type == TaskEventType::Completed as i32)
}

#[tokio::test]
async fn a_subscription_shows_an_execution_live_and_resumes_exactly() {
    let h = harness(1, |_| {}).await;
    let mut live = h
        .server
        .events()
        .subscribe_events(SubscribeEventsRequest {
            after_sequence: Some(0),
            include_node_events: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let execution = h
        .execute(&image_workflow("events"), TaskPriority::Normal)
        .await;
    let root = execution.root_task_id.clone().unwrap();
    let events = read_until(&mut live, |e| is_root_completed(e, &root)).await;
    // Strictly increasing, no gap from the start of the history.
    let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=sequences.len() as u64).collect::<Vec<_>>());
    // The root's whole life, in order.
    let root_types: Vec<i32> = events
        .iter()
        .filter_map(task_event)
        .filter(|e| e.task_id == root)
        .map(|e| e.event_type)
        .filter(|t| *t != TaskEventType::Progress as i32)
        .collect();
    assert_eq!(
        root_types,
        [
            TaskEventType::Created as i32,
            TaskEventType::Queued as i32,
            TaskEventType::Started as i32,
            TaskEventType::Completed as i32
        ]
    );
    // A node's events say which node it is, from its creation on.
    for event in events.iter().filter(|e| e.node).filter_map(task_event) {
        let data: serde_json::Value = serde_json::from_str(&event.data).expect("JSON data");
        assert!(data["node_id"].is_string(), "{event:?}");
        assert!(data["class_type"].is_string(), "{event:?}");
    }
    // Node events carry the execution; metrics and runtime events came too.
    assert!(
        events
            .iter()
            .any(|e| e.node && e.execution_id.as_deref() == Some(&execution.id))
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.payload, Some(Payload::Metric(m)) if m.name == "node_seconds"))
    );
    assert!(events.iter().any(
        |e| matches!(&e.payload, Some(Payload::RuntimeEvent(r)) if r.event_type == "backend.up")
    ));
    // Resuming from the middle yields the rest exactly once.
    let middle = sequences[sequences.len() / 2];
    let last = *sequences.last().unwrap();
    let mut resumed = h
        .server
        .events()
        .subscribe_events(SubscribeEventsRequest {
            after_sequence: Some(middle),
            include_node_events: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let rest = read_until(&mut resumed, |e| e.sequence >= last).await;
    assert_eq!(
        rest.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        ((middle + 1)..=last).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn filters_select_executions_types_and_levels() {
    let h = harness(1, |_| {}).await;
    let first = h.execute(&image_workflow("f1"), TaskPriority::Normal).await;
    let failing = json!({"1": {"class_type": "TestFail", "inputs": {"message": "boom"}}});
    let second = h.execute(&failing, TaskPriority::Normal).await;
    h.wait_end(&first.id).await;
    h.wait_end(&second.id).await;
    let list = |request: ListEventsRequest| {
        let mut client = h.server.events();
        async move { client.list_events(request).await.unwrap().into_inner() }
    };
    // Only the first execution, no node events.
    let page = list(ListEventsRequest {
        execution_ids: vec![first.id.clone()],
        page_size: 1000,
        ..Default::default()
    })
    .await;
    assert!(!page.events.is_empty());
    assert!(
        page.events
            .iter()
            .all(|e| e.execution_id.as_deref() == Some(&first.id) && !e.node)
    );
    // Only FAILED task events: the second execution's root (and its node, when asked).
    let page = list(ListEventsRequest {
        event_types: vec![TaskEventType::Failed.into()],
        categories: vec![pb::EventCategory::Task.into()],
        include_node_events: true,
        page_size: 1000,
        ..Default::default()
    })
    .await;
    let failed: HashSet<String> = page
        .events
        .iter()
        .filter_map(task_event)
        .map(|e| e.task_id.clone())
        .collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    // ERROR and above: the failure, as a task event and a runtime event.
    let page = list(ListEventsRequest {
        min_level: Some(pb::LogLevel::Error.into()),
        page_size: 1000,
        ..Default::default()
    })
    .await;
    assert!(page.events.iter().any(|e| matches!(&e.payload,
        Some(Payload::RuntimeEvent(r)) if r.event_type == "execution.failed"
            && r.error_type.as_deref() == Some("NodeExecutionError"))));
    assert!(
        page.events
            .iter()
            .all(|e| e.execution_id.as_deref() == Some(&second.id))
    );
    // Paging: small pages cover the same events as one big one.
    let all = list(ListEventsRequest {
        include_node_events: true,
        page_size: 1000,
        ..Default::default()
    })
    .await;
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(ListEventsRequest {
            include_node_events: true,
            page_size: 7,
            page_token: token.clone(),
            ..Default::default()
        })
        .await;
        paged.extend(page.events.iter().map(|e| e.sequence));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let all: Vec<u64> = all.events.iter().map(|e| e.sequence).collect();
    assert!(paged.starts_with(&all), "{paged:?} vs {all:?}");
}

#[tokio::test]
async fn bad_filters_and_tokens_name_the_field() {
    let h = harness(1, |_| {}).await;
    let status = h
        .server
        .events()
        .subscribe_events(SubscribeEventsRequest {
            event_types: vec![0],
            execution_ids: vec![String::new()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields = common::bad_request_fields(&status);
    assert!(fields.contains(&"event_types[0]".to_owned()), "{fields:?}");
    assert!(
        fields.contains(&"execution_ids[0]".to_owned()),
        "{fields:?}"
    );
    let status = h
        .server
        .events()
        .list_events(ListEventsRequest {
            page_token: "zz".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    common::assert_invalid_argument(&status, "page_token");
    let status = h
        .server
        .events()
        .watch_execution(WatchExecutionRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn a_resume_point_beyond_the_newest_event_is_out_of_range() {
    let h = harness(1, |_| {}).await;
    let listed = h
        .server
        .events()
        .list_events(ListEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let newest = listed.last_sequence;
    let status = h
        .server
        .events()
        .subscribe_events(SubscribeEventsRequest {
            after_sequence: Some(newest + 1_000),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(
        info.metadata.get("newest_sequence"),
        Some(&newest.to_string()),
        "{info:?}"
    );
    assert!(
        status.message().contains("has not been published"),
        "{status:?}"
    );
    // The newest sequence itself is a valid resume point.
    h.server
        .events()
        .subscribe_events(SubscribeEventsRequest {
            after_sequence: Some(newest),
            ..Default::default()
        })
        .await
        .expect("resume after the newest event");
}

/// Watches `id` to its end; returns the statuses seen.
async fn watch_to_end(h: &common::exec::Harness, id: &str) -> Vec<TaskStatus> {
    let mut stream = h
        .server
        .events()
        .watch_execution(WatchExecutionRequest { id: id.to_owned() })
        .await
        .unwrap()
        .into_inner();
    let mut statuses = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Some(item) = tokio::time::timeout_at(deadline, stream.next())
        .await
        .expect("watch ends in time")
    {
        match item.expect("no error").update.expect("an update") {
            Update::Execution(execution) => {
                statuses.push(TaskStatus::try_from(execution.status).unwrap());
            }
            Update::Progress(_) => {}
        }
    }
    statuses
}

#[tokio::test]
async fn watch_execution_sends_small_progress_steps_between_snapshots() {
    use prost::Message as _;
    let h = harness(1, |_| {}).await;
    // One slow node of 4 steps: progress comes between state changes.
    let running = h
        .execute(&delay_workflow(0.8, 73), TaskPriority::Normal)
        .await;
    let mut stream = h
        .server
        .events()
        .watch_execution(WatchExecutionRequest {
            id: running.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (mut snapshots, mut steps) = (Vec::new(), Vec::new());
    while let Some(item) = tokio::time::timeout_at(deadline, stream.next())
        .await
        .expect("watch ends in time")
    {
        let response = item.expect("no error");
        let size = response.encoded_len();
        match response.update.expect("an update") {
            Update::Execution(execution) => snapshots.push((execution, size)),
            Update::Progress(step) => steps.push((step, size)),
        }
    }
    let (first, _) = snapshots.first().expect("a first snapshot");
    assert_eq!(first.id, running.id);
    let (last, _) = snapshots.last().unwrap();
    assert_eq!(last.status, TaskStatus::Completed as i32, "{last:?}");
    assert!(!steps.is_empty(), "no progress step between snapshots");
    let largest_snapshot = snapshots.iter().map(|(_, size)| *size).max().unwrap();
    // Informative (see with --nocapture): what a watcher pays per message.
    println!(
        "WatchExecution: {} snapshots of up to {largest_snapshot} bytes, {} steps of {:?} bytes",
        snapshots.len(),
        steps.len(),
        steps.iter().map(|(_, size)| *size).collect::<Vec<_>>()
    );
    for (step, size) in &steps {
        assert_eq!(step.node_id, "1", "{step:?}");
        assert_eq!(step.class_type, "TestDelay", "{step:?}");
        assert_eq!(step.max, 4.0, "{step:?}");
        assert!(step.value >= 1.0 && step.value <= 4.0, "{step:?}");
        assert!(step.sequence > 0 && !step.task_id.is_empty(), "{step:?}");
        assert!((0.0..=1.0).contains(&step.execution_progress), "{step:?}");
        // Bytes, not kilobytes: a step is a small fraction of a snapshot.
        assert!(
            *size < 200 && size * 4 < largest_snapshot,
            "step of {size} bytes vs snapshots of up to {largest_snapshot}"
        );
    }
}

#[tokio::test]
async fn watch_execution_ends_on_every_terminal_state() {
    let h = harness(1, |c| c.runtime.max_concurrent_tasks = 1).await;
    // Completed.
    let done = h
        .execute(&delay_workflow(0.2, 71), TaskPriority::Normal)
        .await;
    let statuses = watch_to_end(&h, &done.id).await;
    assert_eq!(
        statuses.last(),
        Some(&TaskStatus::Completed),
        "{statuses:?}"
    );
    // Failed.
    let failing = json!({"1": {"class_type": "TestFail", "inputs": {"message": "boom"}}});
    let failed = h.execute(&failing, TaskPriority::Normal).await;
    let statuses = watch_to_end(&h, &failed.id).await;
    assert_eq!(statuses.last(), Some(&TaskStatus::Failed), "{statuses:?}");
    // Cancelled while running.
    let long = h
        .execute(&delay_workflow(30.0, 72), TaskPriority::Normal)
        .await;
    let watcher = {
        let id = long.id.clone();
        let h = &h;
        async move { watch_to_end(h, &id).await }
    };
    let cancel = async {
        h.wait_for(&long.id, "running", |e| {
            e.tasks[0]
                .progress_message
                .as_deref()
                .is_some_and(|m| m.starts_with("executing"))
        })
        .await;
        h.server
            .executions()
            .cancel_execution(CancelExecutionRequest {
                id: long.id.clone(),
                reason: None,
            })
            .await
            .unwrap();
    };
    let (statuses, ()) = tokio::join!(watcher, cancel);
    assert_eq!(
        statuses.last(),
        Some(&TaskStatus::Cancelled),
        "{statuses:?}"
    );
    assert!(statuses.contains(&TaskStatus::Running), "{statuses:?}");
    // Already ended: one message, then the stream closes.
    let statuses = watch_to_end(&h, &done.id).await;
    assert_eq!(statuses, [TaskStatus::Completed]);
}
