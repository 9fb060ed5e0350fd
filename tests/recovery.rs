//! Recovery after a restart of the runtime, in process: one store, two
//! runtimes one after the other, a fake ComfyUI that keeps running (or
//! restarts too). Executions that were queued run; one that was running is
//! reconciled with its backend: re-attached, collected from history, or
//! retried when the backend forgot it. (tests/crash.rs does the same with
//! `kill -9` on the real binary and the durable store.)

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use comfy_reality::config::{Config, ServerConfig};
use comfy_reality::model::events::EventPayload;
use comfy_reality::model::{TaskPriority, TaskStatus};
use comfy_reality::runtime::{
    ExecuteRequest, ExecutionOptions, ExecutionView, Runtime, WorkflowSource,
};
use comfy_reality::store::{MemoryStore, Store};
use comfy_reality_fake_comfyui::{FakeComfy, FakeOptions};
use serde_json::{Value, json};
use tempfile::TempDir;

fn config(fake: &FakeComfy, artifacts: &TempDir) -> Config {
    let mut config = Config {
        servers: vec![ServerConfig {
            name: Some("gpu-0".into()),
            url: fake.base_url(),
            ..ServerConfig::default()
        }],
        ..Config::default()
    };
    config.runtime.max_concurrent_tasks = 1;
    config.runtime.task_retry_delay_seconds = 0.05;
    config.scheduling.probe_interval_seconds = 0.1;
    config.scheduling.artifact_dir = Some(artifacts.path().to_path_buf());
    config
}

fn request(workflow: Value, priority: TaskPriority) -> ExecuteRequest {
    ExecuteRequest {
        workflow: WorkflowSource::Inline(workflow.to_string()),
        options: ExecutionOptions::default(),
        priority,
        tags: BTreeSet::new(),
        idempotency_key: None,
        dependencies: Vec::new(),
        name: None,
        ownership: None,
    }
}

fn image(color: u64) -> Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "r"}}
    })
}

fn delay(seconds: f64, nonce: u64) -> Value {
    json!({"1": {"class_type": "TestDelay", "inputs": {"seconds": seconds, "steps": 4, "nonce": nonce}}})
}

async fn wait(
    runtime: &Runtime,
    id: &str,
    what: &str,
    check: impl Fn(&ExecutionView) -> bool,
) -> ExecutionView {
    for _ in 0..2000 {
        let view = runtime.get_execution(id).await.expect("execution");
        if check(&view) {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "{what} never happened: {:?}",
        runtime.get_execution(id).await
    );
}

async fn wait_end(runtime: &Runtime, id: &str) -> ExecutionView {
    wait(runtime, id, "the end", |v| {
        v.execution.status().is_terminal()
    })
    .await
}

fn executing(view: &ExecutionView) -> bool {
    view.root()
        .and_then(|r| r.progress_message.as_deref())
        .is_some_and(|m| m.starts_with("executing"))
}

/// Every event's sequence, and how many times each execution completed.
fn audit(store: &Arc<dyn Store>) -> (Vec<u64>, std::collections::HashMap<String, usize>) {
    let events = store.events_after(0, 1_000_000).unwrap();
    let mut completed = std::collections::HashMap::new();
    for event in &events {
        if let EventPayload::Runtime(r) = &event.payload
            && r.event_type == "execution.completed"
        {
            *completed
                .entry(event.context.execution_id.clone().unwrap())
                .or_insert(0) += 1;
        }
    }
    (events.iter().map(|e| e.sequence).collect(), completed)
}

#[tokio::test]
async fn queued_and_running_executions_survive_a_restart_of_the_runtime() {
    let fake = FakeComfy::start(FakeOptions::default()).await.unwrap();
    let artifacts = TempDir::new().unwrap();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let first = Runtime::new(config(&fake, &artifacts), Arc::clone(&store)).unwrap();
    let running = first
        .execute(request(delay(1.0, 1), TaskPriority::Normal))
        .await
        .unwrap();
    wait(&first, &running.execution.id, "executing", executing).await;
    let low = first
        .execute(request(image(11), TaskPriority::Low))
        .await
        .unwrap();
    let high = first
        .execute(request(image(12), TaskPriority::High))
        .await
        .unwrap();
    first.shutdown().await;

    let second = Runtime::new(config(&fake, &artifacts), Arc::clone(&store)).unwrap();
    let mut ends = Vec::new();
    for id in [&running.execution.id, &high.execution.id, &low.execution.id] {
        let done = wait_end(&second, id).await;
        assert_eq!(done.execution.status(), TaskStatus::Completed, "{done:?}");
        ends.push((done.root().unwrap().metrics.end_time.unwrap(), id.clone()));
    }
    // The re-attached prompt was not run twice, and kept its prompt id.
    let recovered = second.get_execution(&running.execution.id).await.unwrap();
    assert_eq!(recovered.root().unwrap().retry_count, 0, "{recovered:?}");
    // Its node ran (it was followed again), so it completed.
    assert_eq!(recovered.execution.completed_tasks(), 2, "{recovered:?}");
    assert_eq!(recovered.execution.failed_tasks(), 0);
    assert!(
        recovered.execution.tasks[1..]
            .iter()
            .all(|t| t.status() == TaskStatus::Completed),
        "{recovered:?}"
    );
    assert_eq!(
        recovered.execution.prompt_id,
        running
            .execution
            .prompt_id
            .clone()
            .or(recovered.execution.prompt_id.clone())
    );
    // HIGH before LOW, as queued.
    ends.sort();
    let order: Vec<&String> = ends.iter().map(|(_, id)| id).collect();
    assert_eq!(
        order,
        [&running.execution.id, &high.execution.id, &low.execution.id]
    );
    // Artifacts of the image executions are on disk.
    for id in [&high.execution.id, &low.execution.id] {
        let view = second.get_execution(id).await.unwrap();
        assert_eq!(view.execution.artifacts.len(), 1);
        assert!(
            artifacts
                .path()
                .join(id)
                .join(&view.execution.artifacts[0])
                .is_file()
        );
    }
    let (sequences, completed) = audit(&store);
    assert_eq!(
        sequences,
        (1..=sequences.len() as u64).collect::<Vec<_>>(),
        "no gap, no reuse"
    );
    assert_eq!(completed.len(), 3);
    assert!(completed.values().all(|n| *n == 1), "{completed:?}");
    second.shutdown().await;
}

#[tokio::test]
async fn a_prompt_that_finished_while_the_runtime_was_down_is_collected() {
    let fake = FakeComfy::start(FakeOptions::default()).await.unwrap();
    let artifacts = TempDir::new().unwrap();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let first = Runtime::new(config(&fake, &artifacts), Arc::clone(&store)).unwrap();
    let workflow = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 99}},
        "2": {"class_type": "TestDelay", "inputs": {"seconds": 0.5, "steps": 2, "nonce": 5, "image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "late"}}
    });
    let execution = first
        .execute(request(workflow, TaskPriority::Normal))
        .await
        .unwrap();
    let id = execution.execution.id.clone();
    wait(&first, &id, "executing", executing).await;
    first.shutdown().await;
    // The prompt finishes on the backend while nobody watches.
    let prompt_id = first
        .get_execution(&id)
        .await
        .unwrap()
        .execution
        .prompt_id
        .unwrap();
    for _ in 0..500 {
        let history = reqwest::get(format!("{}/history/{prompt_id}", fake.base_url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if history.contains("\"completed\": true") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = Runtime::new(config(&fake, &artifacts), Arc::clone(&store)).unwrap();
    let done = wait_end(&second, &id).await;
    assert_eq!(done.execution.status(), TaskStatus::Completed, "{done:?}");
    assert_eq!(done.execution.artifacts.len(), 1, "{done:?}");
    assert!(
        artifacts
            .path()
            .join(&id)
            .join(&done.execution.artifacts[0])
            .is_file()
    );
    second.shutdown().await;
}

#[tokio::test]
async fn a_prompt_the_backend_forgot_is_retried_after_a_restart_of_both() {
    let fake = FakeComfy::start(FakeOptions::default()).await.unwrap();
    let artifacts = TempDir::new().unwrap();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let first = Runtime::new(config(&fake, &artifacts), Arc::clone(&store)).unwrap();
    let execution = first
        .execute(request(delay(30.0, 9), TaskPriority::Normal))
        .await
        .unwrap();
    let id = execution.execution.id.clone();
    wait(&first, &id, "executing", executing).await;
    first.shutdown().await;
    fake.restart().await;
    let mut config = config(&fake, &artifacts);
    config.runtime.task_timeout_seconds = 300.0;
    let second = Runtime::new(config, Arc::clone(&store)).unwrap();
    // Lost by the backend: retried (a new prompt), then it runs again.
    let view = wait(&second, &id, "the retry", |v| {
        v.root().is_some_and(|r| r.retry_count == 1) && executing(v)
    })
    .await;
    assert_ne!(view.execution.prompt_id, execution.execution.prompt_id);
    second
        .cancel_execution(&id, Some("enough".into()))
        .await
        .unwrap();
    let done = wait_end(&second, &id).await;
    assert_eq!(done.execution.status(), TaskStatus::Cancelled);
    second.shutdown().await;
}
