//! Crash recovery with real processes: the `comfy-reality` binary on its
//! durable store, killed with SIGKILL at random points in several rounds and
//! started again on the same data directory, in front of a fake ComfyUI
//! (which is also restarted, losing its queue, in one round). Every accepted
//! execution must reach exactly one terminal state, none may be reported
//! completed twice, none may be lost, event sequences must have no gap and no
//! reuse, and completed executions must have their artifacts on disk. The
//! counts are printed (`cargo test --test crash -- --nocapture`).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use comfy_reality::pb::execution_service_client::ExecutionServiceClient;
use comfy_reality::pb::{
    ExecuteWorkflowRequest, GetExecutionRequest, TaskPriority, TaskStatus,
    execute_workflow_request::Workflow,
};
use comfy_reality_fake_comfyui::{FakeComfy, FakeOptions};
use serde_json::json;

use common::process::ServerProcess as Server;

fn workflow(i: u64) -> serde_json::Value {
    if i.is_multiple_of(3) {
        json!({"1": {"class_type": "TestDelay", "inputs": {"seconds": 0.3, "steps": 3, "nonce": i}}})
    } else {
        json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": i}},
            "2": {"class_type": "TestDelay", "inputs": {"seconds": 0.1, "steps": 2, "nonce": i, "image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "crash"}}
        })
    }
}

/// Submits executions `from..to`; returns the ids acknowledged (a submit
/// cut by a kill is not acknowledged and not counted).
async fn submit(server: &Server, from: u64, to: u64) -> Vec<String> {
    let mut client = ExecutionServiceClient::new(server.channel().await);
    let mut ids = Vec::new();
    for i in from..to {
        let priority =
            [TaskPriority::Low, TaskPriority::Normal, TaskPriority::High][(i % 3) as usize];
        let request = ExecuteWorkflowRequest {
            workflow: Some(Workflow::WorkflowJson(workflow(i).to_string())),
            priority: Some(priority.into()),
            idempotency_key: Some(format!("crash-{i}")),
            ..Default::default()
        };
        if let Ok(response) = client.execute_workflow(request).await {
            ids.push(response.into_inner().execution.unwrap().id);
        }
    }
    ids
}

fn pseudo_random(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn killed_servers_lose_nothing_and_finish_everything_once() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let fake = rt
        .block_on(FakeComfy::start(FakeOptions::default()))
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"[service]
data_dir = "{data}"

[runtime]
max_concurrent_tasks = 2
task_retry_delay_seconds = 0.05
enable_metrics = false

[scheduling]
probe_interval_seconds = 0.1

[[servers]]
name = "gpu-0"
url = "{url}"
silence_timeout_seconds = 2.0
"#,
            data = data.path().join("state").display(),
            url = fake.base_url()
        ),
    )
    .unwrap();

    let mut accepted = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = 0;
    for round in 0..4 {
        let server = Server::start(&config);
        accepted.extend(rt.block_on(submit(&server, next, next + 6)));
        next += 6;
        let pause = 50 + pseudo_random(&mut seed) % 600;
        std::thread::sleep(Duration::from_millis(pause));
        if round == 2 {
            // The backend restarts too and forgets its queue.
            rt.block_on(fake.restart());
        }
        server.kill();
    }

    // A last start runs everything to the end.
    let server = Server::start(&config);
    let (statuses, completed_events, sequences) = rt.block_on(async {
        let channel = server.channel().await;
        let mut executions = ExecutionServiceClient::new(channel.clone());
        let mut statuses = HashMap::new();
        for id in &accepted {
            let mut status = TaskStatus::Unspecified;
            for _ in 0..3000 {
                match executions
                    .get_execution(GetExecutionRequest { id: id.clone() })
                    .await
                {
                    Ok(response) => {
                        let execution = response.into_inner().execution.unwrap();
                        status = TaskStatus::try_from(execution.status).unwrap();
                        if matches!(
                            status,
                            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
                        ) {
                            if status == TaskStatus::Completed && !execution.artifacts.is_empty() {
                                for artifact in &execution.artifacts {
                                    let path = data
                                        .path()
                                        .join("state/artifacts")
                                        .join(&execution.id)
                                        .join(artifact);
                                    assert!(path.is_file(), "{} missing", path.display());
                                }
                            }
                            break;
                        }
                    }
                    Err(status) if status.code() == tonic::Code::NotFound => {
                        panic!("accepted execution {id} was lost");
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            statuses.insert(id.clone(), status);
        }
        let (sequences, completed) = common::process::event_log(channel).await;
        (statuses, completed, sequences)
    });
    server.kill();
    rt.block_on(fake.shutdown());

    let count = |s: TaskStatus| statuses.values().filter(|v| **v == s).count();
    let lost = statuses
        .values()
        .filter(|s| {
            !matches!(
                s,
                TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
            )
        })
        .count();
    let duplicated = completed_events.values().filter(|n| **n > 1).count();
    println!(
        "crash recovery: accepted {}, completed {}, failed {}, cancelled {}, lost {lost}, duplicated {duplicated}, events {}",
        accepted.len(),
        count(TaskStatus::Completed),
        count(TaskStatus::Failed),
        count(TaskStatus::Cancelled),
        sequences.len()
    );
    assert_eq!(lost, 0, "{statuses:?}");
    assert_eq!(duplicated, 0, "{completed_events:?}");
    assert_eq!(count(TaskStatus::Completed), accepted.len(), "{statuses:?}");
    assert_eq!(
        sequences,
        (sequences[0]..sequences[0] + sequences.len() as u64).collect::<Vec<_>>(),
        "event sequences have a gap or a reuse"
    );
    assert_eq!(sequences[0], 1);
}

#[test]
fn a_second_server_on_the_same_store_refuses_to_start_and_names_it() {
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[service]\ndata_dir = \"{}\"\n\n[runtime]\nenable_metrics = false\n",
            data.path().join("state").display()
        ),
    )
    .unwrap();
    let first = Server::start(&config);
    let second = common::clean_command()
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .output()
        .expect("the binary runs");
    assert!(!second.status.success());
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(stdout.is_empty(), "announced an address: {stdout}");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("comfy-reality.db"), "{stderr}");
    first.kill();
}
