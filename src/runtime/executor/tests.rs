//! When a prompt is posted against when the write recording its prompt id
//! commits, on the SQLite store in front of the fake ComfyUI. The store's
//! writer is held up by a second connection that holds the file's write lock
//! (`BEGIN IMMEDIATE`); the writer waits for it (its busy timeout is 5 s).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use comfy_reality_fake_comfyui::{FakeComfy, FakeOptions};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};

use crate::config::{Config, ServerConfig};
use crate::model::TaskStatus;
use crate::runtime::{ExecuteRequest, Runtime};
use crate::store::{SqliteStore, Store};

/// Longest wait for anything that takes milliseconds.
const HANG_GUARD: Duration = Duration::from_secs(20);

fn request(seconds: f64, nonce: u64) -> ExecuteRequest {
    let workflow = json!({
        "1": {"class_type": "TestDelay", "inputs": {"seconds": seconds, "steps": 1, "nonce": nonce}}
    });
    ExecuteRequest::inline(workflow.to_string())
}

/// The fake ComfyUI and a runtime on a new SQLite store with it as its one backend, which
/// ran a first job to the end (the backend is up).
struct Setup {
    fake: FakeComfy,
    /// Holds the store's folder.
    _dir: tempfile::TempDir,
    /// The store's file.
    path: PathBuf,
    runtime: Runtime,
}

impl Setup {
    /// With at most `max_concurrent` executions on the backends at once.
    async fn start(max_concurrent: usize) -> Self {
        comfy_reality_fake_comfyui::capture_test_logs();
        let fake = FakeComfy::start(FakeOptions::default()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
        let mut config = Config {
            servers: vec![ServerConfig::with_url(fake.base_url())],
            ..Config::default()
        };
        config.runtime.max_concurrent_tasks = max_concurrent;
        let runtime = Runtime::new(config, store).unwrap();
        let first = runtime.execute(request(0.0, 1)).await.unwrap();
        assert_eq!(
            ended(&runtime, &fake, &first.execution.id).await,
            TaskStatus::Completed
        );
        Self {
            fake,
            _dir: dir,
            path,
            runtime,
        }
    }

    async fn stop(self) {
        self.runtime.shutdown().await;
        self.fake.shutdown().await;
    }
}

/// Waits until execution `id` ends; its status. At the hang guard it fails with what the
/// runtime holds of the execution and what the fake did with its prompt (see [`hang_report`]).
async fn ended(runtime: &Runtime, fake: &FakeComfy, id: &str) -> TaskStatus {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let status = runtime.executor().view(id).unwrap().execution.status();
        if status.is_terminal() {
            return status;
        }
        if Instant::now() >= deadline {
            panic!("{}", hang_report(runtime, fake, id).await);
        }
        sleep(Duration::from_millis(5)).await;
    }
}

/// An execution that did not end in time, as far as the test can see it: its status, backend
/// and prompt id, its tasks, the backends as the runtime sees them, and the prompt in the
/// fake's history and queue. Tells apart a prompt the fake never finished from an end the
/// runtime did not hear of (the runtime's log lines are in the test's output too, see
/// `capture_test_logs`).
async fn hang_report(runtime: &Runtime, fake: &FakeComfy, id: &str) -> String {
    let execution = runtime.executor().view(id).unwrap().execution;
    let mut report = format!(
        "{id} still {:?} on {:?}, prompt {:?}",
        execution.status(),
        execution.backend,
        execution.prompt_id
    );
    for task in &execution.tasks {
        report += &format!(
            "\n  task {} {:?}, progress {} ({:?})",
            task.name,
            task.status(),
            task.progress(),
            task.progress_message
        );
    }
    for (name, state) in runtime.executor().backends() {
        report += &format!(
            "\n  backend {name}: probed {}, up {}, last error {:?}",
            state.probed, state.up, state.last_error
        );
    }
    if let Some(prompt) = &execution.prompt_id {
        let history = fake_json_text(fake, &format!("/history/{prompt}")).await;
        report += &format!("\n  the fake's history of the prompt: {history}");
    }
    report += &format!(
        "\n  the fake's queue: {}",
        fake_json_text(fake, "/queue").await
    );
    report
}

/// The fake's JSON answer at `path`, within 5 s (the fake may be what hangs); an error as text.
async fn fake_json(fake: &FakeComfy, path: &str) -> Result<Value, String> {
    let read = async {
        let answer = reqwest::get(format!("{}{path}", fake.base_url())).await?;
        answer.json::<Value>().await
    };
    match tokio::time::timeout(Duration::from_secs(5), read).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(format!("not read: {error}")),
        Err(_) => Err("not read within 5 s".to_owned()),
    }
}

/// [`fake_json`] for a report: the answer, or why there is none.
async fn fake_json_text(fake: &FakeComfy, path: &str) -> String {
    fake_json(fake, path)
        .await
        .map_or_else(|why| why, |value| value.to_string())
}

/// The prompts the fake has: (in its queue, running or pending; in its history).
async fn on_fake(fake: &FakeComfy) -> (usize, usize) {
    let queue = fake_json(fake, "/queue").await.unwrap();
    let queued = ["queue_running", "queue_pending"]
        .iter()
        .map(|key| queue[key].as_array().map_or(0, Vec::len))
        .sum();
    let history = fake_json(fake, "/history")
        .await
        .unwrap()
        .as_object()
        .map_or(0, |h| h.len());
    (queued, history)
}

/// Waits until what the fake has (see [`on_fake`]) passes `test`; whether it did within `within`.
async fn fake_reaches(
    fake: &FakeComfy,
    within: Duration,
    test: impl Fn((usize, usize)) -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if test(on_fake(fake).await) {
            return true;
        }
        sleep(Duration::from_millis(5)).await;
    }
    false
}

/// Holds the store file's write lock until dropped or released.
struct WriteLock(rusqlite::Connection);

impl WriteLock {
    fn take(path: &Path) -> Self {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        Self(conn)
    }

    fn release(self) {
        self.0.execute_batch("COMMIT").unwrap();
    }
}

/// An execution submitted while its backend is free is dispatched in the turn that
/// creates it: the record of its prompt id is in the creation's write, and the prompt
/// goes to ComfyUI while that write commits. The submit itself is answered only once
/// it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_execution_is_posted_while_its_creation_commits() {
    let setup = Setup::start(10).await;
    let (fake, runtime) = (&setup.fake, &setup.runtime);
    let lock = WriteLock::take(&setup.path);
    let call = tokio::spawn({
        let runtime = runtime.clone();
        async move { runtime.execute(request(0.0, 2)).await }
    });
    // Within the store's busy timeout (5 s), past which the held-up commit would fail.
    assert!(
        fake_reaches(fake, Duration::from_secs(4), |(queued, history)| {
            queued + history == 2
        })
        .await,
        "the prompt waited for its execution's commit"
    );
    assert!(
        !call.is_finished(),
        "the submit was answered before its execution was stored"
    );
    lock.release();
    let second = tokio::time::timeout(HANG_GUARD, call)
        .await
        .expect("hang guard")
        .unwrap()
        .unwrap();
    assert_eq!(
        ended(runtime, &setup.fake, &second.execution.id).await,
        TaskStatus::Completed
    );
    setup.stop().await;
}

/// An execution stored earlier (queued behind another) is posted only once the write
/// recording its prompt id is durable: a restart then finds the prompt on its backend
/// instead of posting it a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_execution_is_posted_once_its_prompt_id_is_stored() {
    // One execution on the backends at a time: the second waits in the runtime's queue.
    let setup = Setup::start(1).await;
    let (fake, runtime) = (&setup.fake, &setup.runtime);
    // Long enough for the lock to be taken while it runs, on any machine.
    let running = runtime.execute(request(1.0, 2)).await.unwrap();
    assert!(
        fake_reaches(fake, HANG_GUARD, |seen| seen == (1, 1)).await,
        "the first prompt never ran"
    );
    let queued = runtime.execute(request(0.0, 3)).await.unwrap();
    assert_eq!(queued.execution.status(), TaskStatus::Queued);
    let lock = WriteLock::take(&setup.path);
    assert_eq!(
        on_fake(fake).await,
        (1, 1),
        "the queued execution was dispatched before the lock was taken"
    );
    // The running one ends on ComfyUI; the runtime hears of it and dispatches the
    // queued one, whose record cannot commit.
    assert!(fake_reaches(fake, HANG_GUARD, |(_, history)| history == 2).await);
    sleep(Duration::from_millis(300)).await;
    assert_eq!(
        on_fake(fake).await,
        (0, 2),
        "the queued execution's prompt was posted before its id was stored"
    );
    lock.release();
    assert_eq!(
        ended(runtime, fake, &running.execution.id).await,
        TaskStatus::Completed
    );
    assert_eq!(
        ended(runtime, fake, &queued.execution.id).await,
        TaskStatus::Completed
    );
    assert_eq!(on_fake(fake).await, (0, 3));
    setup.stop().await;
}

/// A running node's progress step is written as its event alone: the records of its task
/// and of its execution keep their progress (they follow at most every second, and at the
/// node's end), while this runtime's reads (GetTask, GetExecution, the lists) already
/// have the step, and the end stores it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progress_step_is_its_event_and_the_records_follow_at_the_end() {
    use crate::model::TaskEventType;
    use crate::model::events::EventPayload;
    use crate::store::TaskFilter;

    let setup = Setup::start(10).await;
    let runtime = &setup.runtime;
    let mut live = runtime.bus().subscribe();
    // Four steps 150 ms apart: each well within a second of the node's start.
    let workflow = json!({
        "1": {"class_type": "TestDelay", "inputs": {"seconds": 0.6, "steps": 4, "nonce": 2}}
    });
    let view = runtime
        .execute(ExecuteRequest::inline(workflow.to_string()))
        .await
        .unwrap();
    let execution_id = view.execution.id.clone();
    let node = view
        .execution
        .tasks
        .iter()
        .find(|task| task.metadata.get("node_id") == Some(&json!("1")))
        .expect("the node's task")
        .id
        .clone();
    // The first step of the node, announced (so durable).
    let step = tokio::time::timeout(HANG_GUARD, async {
        loop {
            let event = live.recv().await.unwrap();
            if let EventPayload::Task(event) = &event.payload
                && event.task_id == node
                && event.event_type == TaskEventType::Progress
                && event.data.get("value").is_some()
            {
                return event.data["progress"].as_f64().unwrap();
            }
        }
    })
    .await
    .expect("no progress step");
    assert!(step > 0.0 && step < 1.0, "{step}");
    let store = runtime.tasks().store();
    let record = store.get_task(&node).unwrap().unwrap();
    assert_eq!(record.status(), TaskStatus::Running);
    assert_eq!(record.progress(), 0.0, "the step rewrote the task's record");
    let execution_record = store.get_execution(&execution_id).unwrap().unwrap();
    assert_eq!(
        execution_record.progress(),
        0.0,
        "the step rewrote the execution's record"
    );
    // Reads of durable state have the step.
    assert!(runtime.tasks().get(&node).unwrap().progress() >= step);
    let read = runtime.executor().view(&execution_id).unwrap();
    assert!(read.execution.progress() > 0.0);
    let in_view = read.execution.tasks.iter().find(|t| t.id == node).unwrap();
    assert!(in_view.progress() >= step);
    let filter = TaskFilter {
        parent_id: view.execution.root_task_id.clone(),
        ..TaskFilter::default()
    };
    let listed = runtime.tasks().list(&filter, None, 100).unwrap();
    let in_list = listed.items.iter().find(|t| t.id == node).unwrap();
    assert!(in_list.progress() >= step);
    // The end stores the node's and the execution's final state.
    assert_eq!(
        ended(runtime, &setup.fake, &execution_id).await,
        TaskStatus::Completed
    );
    let record = store.get_task(&node).unwrap().unwrap();
    assert_eq!(
        (record.status(), record.progress()),
        (TaskStatus::Completed, 1.0)
    );
    let execution_record = store.get_execution(&execution_id).unwrap().unwrap();
    assert_eq!(execution_record.progress(), 1.0);
    setup.stop().await;
}

/// A submission is answered from the states its turn wrote, never read back from the store:
/// the memory store commits a write as it is handed over, and a QUEUED state is not kept once
/// committed, so an answer built after the hand-over read the execution and its root task back.
#[tokio::test]
async fn a_submission_is_answered_without_reading_the_store() {
    let store = Arc::new(crate::store::MemoryStore::new());
    // A backend nothing listens on: the execution stays QUEUED.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let config = Config {
        servers: vec![ServerConfig::with_url(url)],
        ..Config::default()
    };
    let runtime = Runtime::new(config, Arc::clone(&store) as Arc<dyn Store>).unwrap();
    for nonce in 0..3 {
        let before = store.record_reads();
        let submitted = runtime.execute(request(0.0, nonce)).await.unwrap();
        assert_eq!(submitted.execution.status(), TaskStatus::Queued);
        assert_eq!(store.record_reads(), before, "submission {nonce}");
    }
    runtime.shutdown().await;
}
