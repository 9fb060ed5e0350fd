//! The Redis store with real processes: the `comfy-reality` binary with
//! `runtime.queue_type = "redis"` on a real `redis-server` (started by the
//! test on a free port, append-only), in front of a fake ComfyUI.
//!
//! - state, events and work outlive a runtime killed with SIGKILL: the next
//!   runtime waits out the dead one's lease, adopts what it left, and every
//!   execution completes with its prompt run exactly once on the backend;
//! - a second runtime on the same keys waits for the lease and then gives up,
//!   naming the holder; a runtime that stops cleanly releases it at once;
//! - Redis killed mid-run: readiness goes NOT_SERVING and submits fail with
//!   UNAVAILABLE within seconds; Redis restarted: SERVING again, and the work
//!   that was running completes.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use comfy_reality::pb::execution_service_client::ExecutionServiceClient;
use comfy_reality::pb::{
    ExecuteWorkflowRequest, GetExecutionRequest, TaskStatus, execute_workflow_request::Workflow,
};
use comfy_reality_fake_comfyui::{FakeComfy, FakeOptions, RedisServer};
use serde_json::json;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use common::process::ServerProcess as Server;

/// A configuration file for a runtime on `redis` in front of `backend`.
fn write_config(dir: &Path, redis: &RedisServer, backend: &str) -> PathBuf {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"[service]
data_dir = "{data}"

[runtime]
queue_type = "redis"
queue_url = "{url}"
max_concurrent_tasks = 2
task_retry_delay_seconds = 0.05
enable_metrics = false

[redis]
key_prefix = "it"
lease_seconds = 2.0
command_timeout_seconds = 1.0

[scheduling]
probe_interval_seconds = 0.1

[[servers]]
name = "gpu-0"
url = "{backend}"
silence_timeout_seconds = 2.0
"#,
            data = dir.join("state").display(),
            url = redis.url(),
        ),
    )
    .unwrap();
    config
}

fn delay_workflow(i: u64, seconds: f64) -> serde_json::Value {
    json!({"1": {"class_type": "TestDelay", "inputs": {"seconds": seconds, "steps": 3, "nonce": i}}})
}

async fn submit(
    channel: Channel,
    workflow: serde_json::Value,
    key: String,
) -> Result<String, tonic::Status> {
    let mut client = ExecutionServiceClient::new(channel);
    let request = ExecuteWorkflowRequest {
        workflow: Some(Workflow::WorkflowJson(workflow.to_string())),
        idempotency_key: Some(key),
        ..Default::default()
    };
    Ok(client
        .execute_workflow(request)
        .await?
        .into_inner()
        .execution
        .unwrap()
        .id)
}

/// Waits until `id` ends; its status.
async fn wait_end(channel: Channel, id: &str) -> TaskStatus {
    let mut client = ExecutionServiceClient::new(channel);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client
            .get_execution(GetExecutionRequest { id: id.to_owned() })
            .await
        {
            Ok(response) => {
                let status =
                    TaskStatus::try_from(response.into_inner().execution.unwrap().status).unwrap();
                if matches!(
                    status,
                    TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
                ) {
                    return status;
                }
            }
            Err(status) if status.code() == tonic::Code::NotFound => {
                panic!("accepted execution {id} was lost")
            }
            Err(_) => {}
        }
        assert!(Instant::now() < deadline, "{id} did not end within 60 s");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// How many prompts the backend ran, from its /history.
async fn prompts_run(backend: &str) -> usize {
    let history: serde_json::Value = reqwest::get(format!("{backend}/history?max_items=100000"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    history.as_object().map_or(0, serde_json::Map::len)
}

async fn readiness(channel: Channel) -> Option<ServingStatus> {
    let mut health = HealthClient::new(channel);
    let request = tonic::Request::new(HealthCheckRequest {
        service: "readiness".into(),
    });
    health
        .check(request)
        .await
        .ok()
        .and_then(|r| ServingStatus::try_from(r.into_inner().status).ok())
}

#[test]
fn a_killed_runtime_is_replaced_and_its_work_runs_exactly_once() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let redis = RedisServer::start().expect("redis-server starts");
    let fake = rt
        .block_on(FakeComfy::start(FakeOptions::default()))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &redis, &fake.base_url());

    let first = Server::start(&config);
    let accepted: Vec<String> = rt.block_on(async {
        let channel = first.channel().await;
        let mut ids = Vec::new();
        for i in 0..8 {
            ids.push(
                submit(channel.clone(), delay_workflow(i, 0.2), format!("k-{i}"))
                    .await
                    .unwrap(),
            );
        }
        // Let the first ones start on the backend before the kill.
        tokio::time::sleep(Duration::from_millis(300)).await;
        ids
    });
    first.kill();

    // The next runtime waits out the dead one's lease (2 s), then carries on.
    let started = Instant::now();
    let second = Server::start(&config);
    let waited = started.elapsed();
    let (statuses, completed, sequences, again) = rt.block_on(async {
        let channel = second.channel().await;
        let mut statuses = Vec::new();
        for id in &accepted {
            statuses.push(wait_end(channel.clone(), id).await);
        }
        // The same idempotency key on the new runtime finds the same execution.
        let again = submit(channel.clone(), delay_workflow(0, 0.2), "k-0".into())
            .await
            .unwrap();
        let (sequences, completed) = common::process::event_log(channel).await;
        (statuses, completed, sequences, again)
    });
    let ran = rt.block_on(prompts_run(&fake.base_url()));
    println!(
        "redis failover: accepted {}, next runtime serving after {:.2} s, prompts run {ran}, events {}",
        accepted.len(),
        waited.as_secs_f64(),
        sequences.len()
    );
    assert!(
        statuses.iter().all(|s| *s == TaskStatus::Completed),
        "{statuses:?}"
    );
    assert_eq!(again, accepted[0]);
    assert_eq!(
        ran,
        accepted.len(),
        "each prompt runs exactly once on the backend"
    );
    assert_eq!(completed.len(), accepted.len(), "{completed:?}");
    assert!(completed.values().all(|n| *n == 1), "{completed:?}");
    assert_eq!(
        sequences,
        (1..=sequences.len() as u64).collect::<Vec<_>>(),
        "event sequences have a gap or a reuse"
    );
    // The keys are in Redis, under the prefix, and nowhere else.
    let keys = redis.command("KEYS *").unwrap();
    assert!(keys.contains("{it}:executions"), "{keys}");
    second.kill();
    rt.block_on(fake.shutdown());
}

#[test]
fn a_second_runtime_waits_for_the_lease_gives_up_naming_the_holder_and_takes_a_released_one() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let redis = RedisServer::start().expect("redis-server starts");
    let fake = rt
        .block_on(FakeComfy::start(FakeOptions::default()))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &redis, &fake.base_url());

    let first = Server::start(&config);
    let second = common::run_bounded(
        common::clean_command()
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config),
        Duration::from_secs(30),
    );
    assert!(!second.status.success());
    assert!(second.stdout.is_empty(), "announced an address");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("holds the lease") && stderr.contains("pid-"),
        "{stderr}"
    );

    // A clean stop gives the lease up (the next runtime need not wait it out), and the next
    // runtime takes it.
    let held = redis.command("GET {it}:lease").unwrap();
    assert!(held.contains("pid-"), "{held}");
    first.stop();
    assert_eq!(redis.command("EXISTS {it}:lease").unwrap(), ":0");
    let third = Server::start(&config);
    let taken = redis.command("GET {it}:lease").unwrap();
    assert!(taken.contains("pid-") && taken != held, "{taken}");
    third.kill();
    rt.block_on(fake.shutdown());
}

#[test]
fn redis_down_means_not_ready_and_unavailable_then_back_with_nothing_lost() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut redis = RedisServer::start().expect("redis-server starts");
    let fake = rt
        .block_on(FakeComfy::start(FakeOptions::default()))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &redis, &fake.base_url());
    let server = Server::start(&config);
    let channel = rt.block_on(server.channel());

    // Running on the backend when Redis goes away.
    let running = rt
        .block_on(submit(
            channel.clone(),
            delay_workflow(1, 2.0),
            "long".into(),
        ))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    redis.kill();

    let down = Instant::now();
    rt.block_on(async {
        loop {
            if readiness(channel.clone()).await == Some(ServingStatus::NotServing) {
                break;
            }
            assert!(
                down.elapsed() < Duration::from_secs(10),
                "readiness stayed SERVING"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let not_ready_after = down.elapsed();
    let refused = Instant::now();
    let error = rt
        .block_on(submit(
            channel.clone(),
            delay_workflow(2, 0.1),
            "during".into(),
        ))
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::Unavailable, "{error:?}");
    let refused_in = refused.elapsed();

    redis.restart().expect("redis-server restarts");
    let up = Instant::now();
    rt.block_on(async {
        loop {
            if readiness(channel.clone()).await == Some(ServingStatus::Serving) {
                break;
            }
            assert!(
                up.elapsed() < Duration::from_secs(15),
                "readiness stayed NOT_SERVING"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let ready_after = up.elapsed();
    let (status, after) = rt.block_on(async {
        let status = wait_end(channel.clone(), &running).await;
        let after = submit(channel.clone(), delay_workflow(3, 0.1), "after".into())
            .await
            .unwrap();
        (status, wait_end(channel.clone(), &after).await)
    });
    println!(
        "redis outage: NOT_SERVING after {:.2} s, submit refused in {:.2} s, SERVING {:.2} s after redis restarted",
        not_ready_after.as_secs_f64(),
        refused_in.as_secs_f64(),
        ready_after.as_secs_f64()
    );
    assert_eq!(status, TaskStatus::Completed);
    assert_eq!(after, TaskStatus::Completed);
    server.kill();
    rt.block_on(fake.shutdown());
}
