//! The Redis store with real processes: the `comfy-reality` binary with
//! `runtime.queue_type = "redis"` on a real `redis-server` (started by the
//! test on a free port, append-only), in front of a fake ComfyUI.
//!
//! - state, events and work outlive a runtime killed with SIGKILL: the next
//!   runtime takes the lease once the dead one's expires, adopts what it left, and every
//!   execution completes with its prompt run exactly once on the backend;
//! - a second runtime on the same keys serves as a forwarding replica: every
//!   call it gets is answered by the lease holder; a holder that stops cleanly
//!   releases the lease at once and the replica takes over;
//! - API keys pass through a forwarding replica and the holder authenticates;
//!   a client certificate's names pass as headers the replica signs, and
//!   unsigned claims are refused;
//! - three replicas in front of four backends, the holder killed halfway
//!   through 300 executions: each completes with its prompt run exactly once,
//!   and a subscriber on another replica sees every completion, no gaps;
//! - a CRITICAL execution submitted to one replica starts before NORMAL ones
//!   queued earlier on another;
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

/// What most tests start from: a tokio runtime, a redis-server, a fake ComfyUI and a
/// directory for the configuration and state.
fn setup() -> (
    tokio::runtime::Runtime,
    RedisServer,
    FakeComfy,
    tempfile::TempDir,
) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let redis = RedisServer::start().expect("redis-server starts");
    let fake = rt
        .block_on(FakeComfy::start(FakeOptions::default()))
        .unwrap();
    (rt, redis, fake, tempfile::tempdir().unwrap())
}

/// A configuration file for a runtime on `redis` in front of `backend`.
fn write_config(dir: &Path, redis: &RedisServer, backend: &str) -> PathBuf {
    write_config_with(dir, redis, &[backend.to_owned()], 2, "")
}

/// A configuration file for runtimes on `redis` in front of `backends`, with `scheduling`
/// at most `max_concurrent_tasks` executions running and `scheduling` lines added to
/// `[scheduling]`.
fn write_config_with(
    dir: &Path,
    redis: &RedisServer,
    backends: &[String],
    max_concurrent_tasks: usize,
    scheduling: &str,
) -> PathBuf {
    let config = dir.join("config.toml");
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, url)| {
            format!(
                "\n[[servers]]\nname = \"gpu-{i}\"\nurl = \"{url}\"\nsilence_timeout_seconds = 2.0\n"
            )
        })
        .collect();
    std::fs::write(
        &config,
        format!(
            r#"[service]
data_dir = "{data}"

[runtime]
queue_type = "redis"
queue_url = "{url}"
max_concurrent_tasks = {max_concurrent_tasks}
task_retry_delay_seconds = 0.05
enable_metrics = false

[redis]
key_prefix = "it"
lease_seconds = 2.0
command_timeout_seconds = 1.0

[scheduling]
probe_interval_seconds = 0.1
{scheduling}
{servers}"#,
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
    let (rt, redis, fake, dir) = setup();
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

    // The next runtime forwards (answering UNAVAILABLE: there is no holder to forward to) until
    // the dead one's lease (2 s) expires, then takes it and carries on.
    let started = Instant::now();
    let second = Server::start(&config);
    let (statuses, completed, sequences, again, waited) = rt.block_on(async {
        let channel = second.channel().await;
        let mut statuses = Vec::new();
        let mut waited = None;
        for id in &accepted {
            statuses.push(wait_end(channel.clone(), id).await);
            waited.get_or_insert_with(|| started.elapsed());
        }
        // The same idempotency key on the new runtime finds the same execution.
        let again = submit(channel.clone(), delay_workflow(0, 0.2), "k-0".into())
            .await
            .unwrap();
        let (sequences, completed) = common::process::event_log(channel).await;
        (
            statuses,
            completed,
            sequences,
            again,
            waited.unwrap_or_default(),
        )
    });
    let ran = rt.block_on(prompts_run(&fake.base_url()));
    println!(
        "redis failover: accepted {}, next runtime answered after {:.2} s, prompts run {ran}, events {}",
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
fn a_second_runtime_forwards_to_the_holder_and_takes_over_a_released_lease() {
    let (rt, redis, fake, dir) = setup();
    let config = write_config(dir.path(), &redis, &fake.base_url());

    let first = Server::start(&config);
    let second = Server::start(&config);
    let held = redis.command("GET {it}:lease").unwrap();
    assert!(
        held.contains("pid-") && held.contains(&format!("http://{}", first.addr)),
        "the lease names the holder's url: {held}"
    );
    // The second answers health itself and every call by forwarding it to the holder.
    let (via_second, seen_by_first) = rt.block_on(async {
        let channel = second.channel().await;
        wait_serving(channel.clone()).await;
        let id = submit(channel.clone(), delay_workflow(1, 0.05), "fwd-1".into())
            .await
            .unwrap();
        assert_eq!(wait_end(channel, &id).await, TaskStatus::Completed);
        let seen = wait_end(first.channel().await, &id).await;
        (id, seen)
    });
    assert_eq!(seen_by_first, TaskStatus::Completed, "{via_second}");

    // A clean stop gives the lease up; the forwarding replica takes it at once and carries on
    // with the same state, and a restarted runtime forwards to it.
    first.stop();
    let started = Instant::now();
    let (status, took_over) = rt.block_on(async {
        let channel = second.channel().await;
        loop {
            if let Ok(status) = ExecutionServiceClient::new(channel.clone())
                .get_execution(GetExecutionRequest {
                    id: via_second.clone(),
                })
                .await
            {
                let status =
                    TaskStatus::try_from(status.into_inner().execution.unwrap().status).unwrap();
                return (status, started.elapsed());
            }
            assert!(started.elapsed() < Duration::from_secs(10), "no takeover");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert_eq!(status, TaskStatus::Completed);
    let taken = redis.command("GET {it}:lease").unwrap();
    assert!(
        taken.contains(&format!("http://{}", second.addr)),
        "{taken}"
    );
    let restarted = Server::start(&config);
    let again = rt.block_on(async {
        let channel = restarted.channel().await;
        wait_serving(channel.clone()).await;
        let id = submit(channel.clone(), delay_workflow(2, 0.05), "fwd-2".into())
            .await
            .unwrap();
        wait_end(channel, &id).await
    });
    assert_eq!(again, TaskStatus::Completed);
    println!(
        "forwarding replica: took over a released lease in {:.2} s",
        took_over.as_secs_f64()
    );
    assert!(took_over < Duration::from_secs(2), "{took_over:?}");
    restarted.kill();
    second.kill();
    rt.block_on(fake.shutdown());
}

#[test]
fn a_forwarding_replica_passes_api_keys_to_the_holder_which_authenticates() {
    const KEY: &str = "replica-submitter-key-0123456789";
    let (rt, redis, fake, dir) = setup();
    let config = write_config(dir.path(), &redis, &fake.base_url());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[auth]\nmode = \"api_key\"\n\n[[auth.principals]]\nname = \"sam\"\nrole = \"submitter\"\napi_key_sha256 = [\"{}\"]\n",
        comfy_reality::api::access::key_sha256_hex(KEY)
    ));
    std::fs::write(&config, text).unwrap();
    let holder = Server::start(&config);
    let replica = Server::start(&config);
    rt.block_on(async {
        let channel = replica.channel().await;
        wait_serving(channel.clone()).await;
        let keyed = |message: ExecuteWorkflowRequest, key: Option<&str>| {
            let mut request = tonic::Request::new(message);
            if let Some(key) = key {
                request
                    .metadata_mut()
                    .insert("authorization", format!("Bearer {key}").parse().unwrap());
            }
            request
        };
        let message = |i| ExecuteWorkflowRequest {
            workflow: Some(Workflow::WorkflowJson(delay_workflow(i, 0.02).to_string())),
            ..Default::default()
        };
        let mut client = ExecutionServiceClient::new(channel.clone());
        let refused = client
            .execute_workflow(keyed(message(1), None))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
        let wrong = client
            .execute_workflow(keyed(message(2), Some("not-the-key")))
            .await
            .unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated, "{wrong:?}");
        let accepted = client
            .execute_workflow(keyed(message(3), Some(KEY)))
            .await
            .unwrap()
            .into_inner()
            .execution
            .unwrap();
        // The holder ran it, as sam.
        let mut on_holder = ExecutionServiceClient::new(holder.channel().await);
        let mut get = tonic::Request::new(GetExecutionRequest {
            id: accepted.id.clone(),
        });
        get.metadata_mut()
            .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
        on_holder.get_execution(get).await.unwrap();
    });
    replica.kill();
    holder.kill();
    rt.block_on(fake.shutdown());
}

#[test]
fn a_client_certificate_passes_through_a_forwarding_replica_as_signed_names() {
    use common::certs::{TestCa, write};
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

    let (rt, redis, fake, dir) = setup();
    let servers = TestCa::new("server ca");
    let clients = TestCa::new("client ca");
    let server = servers.server();
    let alice = clients.client("alice.internal", &["alice.internal"]);
    // The replicas' own certificate: signed by the client CA, no principal's.
    let replica_cert = clients.client("replica.internal", &["replica.internal"]);
    let d = dir.path();
    let config = write_config(d, &redis, &fake.base_url());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text = text.replacen(
        "[redis]\n",
        &format!(
            "[redis]\npeer_ca_file = {:?}\npeer_cert_file = {:?}\npeer_key_file = {:?}\n",
            write(d, "server-ca.pem", &servers.pem()),
            write(d, "replica.pem", &replica_cert.cert),
            write(d, "replica.key", &replica_cert.key),
        ),
        1,
    );
    text.push_str(&format!(
        "\n[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n\n\
         [auth]\nmode = \"mtls\"\n\n[[auth.principals]]\nname = \"alice\"\nrole = \"submitter\"\ncert_names = [\"alice.internal\"]\n",
        write(d, "server.pem", &server.cert),
        write(d, "server.key", &server.key),
        write(d, "client-ca.pem", &clients.pem()),
    ));
    std::fs::write(&config, text).unwrap();
    let holder = Server::start(&config);
    let replica = Server::start(&config);
    let connect = |addr: std::net::SocketAddr, who: &common::certs::Pem| {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(servers.pem()))
            .identity(Identity::from_pem(&who.cert, &who.key))
            .domain_name("localhost");
        async move {
            Endpoint::from_shared(format!("https://{addr}"))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await
                .unwrap()
        }
    };
    rt.block_on(async {
        let via_replica = connect(replica.addr, &alice).await;
        wait_serving(via_replica.clone()).await;
        // Alice's certificate ends at the replica; the holder takes her names from the
        // replica's signed headers (the replica's own certificate names no principal).
        let deadline = Instant::now() + Duration::from_secs(10);
        let id = loop {
            match submit(
                via_replica.clone(),
                delay_workflow(1, 0.02),
                "mtls-1".into(),
            )
            .await
            {
                Ok(id) => break id,
                // The holder stores the signing secret as it starts; a replica reads it then.
                Err(status) if Instant::now() < deadline => {
                    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(status) => panic!("alice refused through the replica: {status:?}"),
            }
        };
        assert!(!id.is_empty());
        // Names claimed without the replica's signature are refused, even next to a valid
        // certificate.
        let direct = connect(holder.addr, &alice).await;
        let mut request = tonic::Request::new(ExecuteWorkflowRequest {
            workflow: Some(Workflow::WorkflowJson(delay_workflow(2, 0.02).to_string())),
            ..Default::default()
        });
        request.metadata_mut().insert(
            "x-comfy-reality-forwarded-cert",
            "WyJhZG1pbiJd".parse().unwrap(),
        );
        request.metadata_mut().insert(
            "x-comfy-reality-forwarded-signature",
            "1.00".parse().unwrap(),
        );
        let forged = ExecutionServiceClient::new(direct)
            .execute_workflow(request)
            .await
            .unwrap_err();
        assert_eq!(forged.code(), tonic::Code::Unauthenticated, "{forged:?}");
    });
    replica.kill();
    holder.kill();
    rt.block_on(fake.shutdown());
}

/// Waits until `channel`'s readiness is SERVING.
async fn wait_serving(channel: Channel) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while readiness(channel.clone()).await != Some(ServingStatus::Serving) {
        assert!(Instant::now() < deadline, "never SERVING");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Submits with `key`, again and again while the replica answers UNAVAILABLE (a takeover in
/// progress) or the call's connection was cut under it (UNKNOWN or CANCELLED from the transport:
/// its outcome is unknown), as a client should: the key makes a repeat find the first.
async fn submit_retrying(channel: Channel, workflow: serde_json::Value, key: String) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match submit(channel.clone(), workflow.clone(), key.clone()).await {
            Ok(id) => return id,
            Err(status) => {
                if status.code() != tonic::Code::Unavailable {
                    println!("replicas: {key} answered {status:?}; retrying");
                }
                assert!(
                    matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                    ) && Instant::now() < deadline,
                    "{key}: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// What a subscriber saw: every event's sequence, and the executions whose
/// `execution.completed` it got (with how many times).
#[derive(Default)]
struct Seen {
    sequences: Vec<u64>,
    completed: std::collections::HashMap<String, usize>,
}

/// Follows every event on `addr`, resuming after the last sequence whenever the stream ends,
/// until `executions` executions completed (or 90 s).
async fn subscribe_until(addr: std::net::SocketAddr, executions: usize) -> Seen {
    use comfy_reality::pb::SubscribeEventsRequest;
    use comfy_reality::pb::event::Payload;
    use comfy_reality::pb::event_service_client::EventServiceClient;
    use comfy_reality::pb::subscribe_events_response::Item;

    let mut seen = Seen::default();
    let deadline = Instant::now() + Duration::from_secs(90);
    while seen.completed.len() < executions && Instant::now() < deadline {
        let Ok(channel) = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let request = SubscribeEventsRequest {
            after_sequence: Some(seen.sequences.last().copied().unwrap_or(0)),
            include_node_events: true,
            ..Default::default()
        };
        let Ok(stream) = EventServiceClient::new(channel)
            .subscribe_events(request)
            .await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut stream = stream.into_inner();
        while let Ok(Some(item)) = stream.message().await {
            let Some(Item::Event(event)) = item.item else {
                continue;
            };
            seen.sequences.push(event.sequence);
            if let Some(Payload::RuntimeEvent(r)) = &event.payload
                && r.event_type == "execution.completed"
            {
                *seen
                    .completed
                    .entry(event.execution_id.clone().unwrap_or_default())
                    .or_default() += 1;
            }
            if seen.completed.len() >= executions {
                break;
            }
        }
    }
    seen
}

#[test]
fn three_replicas_share_four_backends_and_lose_nothing_when_the_holder_is_killed() {
    const EXECUTIONS: u64 = 300;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let redis = RedisServer::start().expect("redis-server starts");
    let fakes: Vec<FakeComfy> = rt.block_on(async {
        let mut fakes = Vec::new();
        for _ in 0..4 {
            fakes.push(FakeComfy::start(FakeOptions::default()).await.unwrap());
        }
        fakes
    });
    let urls: Vec<String> = fakes.iter().map(FakeComfy::base_url).collect();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(dir.path(), &redis, &urls, 16, "");

    // The first to start holds the lease; the other two forward to it.
    let replicas = vec![
        Server::start(&config),
        Server::start(&config),
        Server::start(&config),
    ];
    let addrs: Vec<_> = replicas.iter().map(|r| r.addr).collect();
    let mut replicas: Vec<Option<Server>> = replicas.into_iter().map(Some).collect();
    let (ids, seen, failover) = rt.block_on(async {
        let mut channels = Vec::new();
        for replica in replicas.iter().flatten() {
            let channel = replica.channel().await;
            wait_serving(channel.clone()).await;
            channels.push(channel);
        }
        // A subscriber on the third replica, which is not killed.
        let subscriber = tokio::spawn(subscribe_until(addrs[2], EXECUTIONS as usize));
        let mut ids = Vec::new();
        let mut failover = None;
        for i in 0..EXECUTIONS {
            if i == EXECUTIONS / 2 {
                // Halfway: SIGKILL the lease holder, with work queued and running on it.
                replicas[0].take().unwrap().kill();
                failover = Some(Instant::now());
            }
            let alive = if failover.is_some() {
                1 + (i as usize % 2)
            } else {
                i as usize % 3
            };
            ids.push(
                submit_retrying(
                    channels[alive].clone(),
                    delay_workflow(i, 0.02),
                    format!("r-{i}"),
                )
                .await,
            );
            if i == EXECUTIONS / 2
                && let Some(at) = failover
            {
                println!(
                    "replicas: a submit answered {:.2} s after the kill",
                    at.elapsed().as_secs_f64()
                );
            }
        }
        let mut statuses = Vec::new();
        for (n, id) in ids.iter().enumerate() {
            statuses.push(wait_end(channels[1 + n % 2].clone(), id).await);
        }
        assert!(
            statuses.iter().all(|s| *s == TaskStatus::Completed),
            "{statuses:?}"
        );
        let seen = subscriber.await.unwrap();
        (ids, seen, failover)
    });
    assert!(failover.is_some());
    let ran: Vec<usize> = rt.block_on(async {
        let mut ran = Vec::new();
        for url in &urls {
            ran.push(prompts_run(url).await);
        }
        ran
    });
    println!(
        "replicas: {} executions on 3 replicas, holder killed halfway; prompts run per backend {ran:?}; subscriber saw {} events, {} completions",
        ids.len(),
        seen.sequences.len(),
        seen.completed.len()
    );
    assert_eq!(
        ran.iter().sum::<usize>(),
        EXECUTIONS as usize,
        "each prompt runs exactly once on the backends"
    );
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "each key made its own execution");
    for id in &ids {
        assert_eq!(
            seen.completed.get(id),
            Some(&1),
            "{id}: {:?}",
            seen.completed.get(id)
        );
    }
    let first = seen.sequences[0];
    assert_eq!(
        seen.sequences,
        (first..first + seen.sequences.len() as u64).collect::<Vec<_>>(),
        "the subscriber saw a gap or a repeat"
    );
    drop(replicas);
    rt.block_on(async {
        for fake in fakes {
            fake.shutdown().await;
        }
    });
}

#[test]
fn a_critical_execution_on_one_replica_starts_before_normal_ones_queued_on_another() {
    use comfy_reality::pb::TaskPriority;
    use comfy_reality::pb::event::Payload;

    let (rt, redis, fake, dir) = setup();
    let config = write_config_with(
        dir.path(),
        &redis,
        &[fake.base_url()],
        1,
        "backend_pipeline_depth = 1",
    );
    let holder = Server::start(&config);
    let other = Server::start(&config);
    let (normal, critical, starts) = rt.block_on(async {
        let a = holder.channel().await;
        let c = other.channel().await;
        wait_serving(c.clone()).await;
        let blocker = submit(a.clone(), delay_workflow(0, 0.5), "blocker".into())
            .await
            .unwrap();
        let mut normal = Vec::new();
        for i in 1..=3 {
            normal.push(
                submit(a.clone(), delay_workflow(i, 0.02), format!("normal-{i}"))
                    .await
                    .unwrap(),
            );
        }
        let critical = ExecutionServiceClient::new(c.clone())
            .execute_workflow(ExecuteWorkflowRequest {
                workflow: Some(Workflow::WorkflowJson(delay_workflow(9, 0.02).to_string())),
                priority: Some(TaskPriority::Critical as i32),
                idempotency_key: Some("critical".into()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .execution
            .unwrap()
            .id;
        for id in normal.iter().chain([&critical, &blocker]) {
            assert_eq!(wait_end(c.clone(), id).await, TaskStatus::Completed);
        }
        // The first STARTED event of each execution, by sequence (one order for all replicas).
        let mut starts = std::collections::HashMap::new();
        let mut events = comfy_reality::pb::event_service_client::EventServiceClient::new(c);
        let page = events
            .list_events(comfy_reality::pb::ListEventsRequest {
                page_size: 1000,
                include_node_events: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for event in page.events {
            if let Some(Payload::TaskEvent(task)) = &event.payload
                && task.event_type == comfy_reality::pb::TaskEventType::Started as i32
            {
                starts
                    .entry(event.execution_id.clone().unwrap_or_default())
                    .or_insert(event.sequence);
            }
        }
        (normal, critical, starts)
    });
    let critical_start = starts[&critical];
    for id in &normal {
        assert!(
            critical_start < starts[id],
            "CRITICAL (submitted to the other replica) started at #{critical_start}, NORMAL {id} at #{}",
            starts[id]
        );
    }
    other.kill();
    holder.kill();
    rt.block_on(fake.shutdown());
}

#[test]
fn redis_down_means_not_ready_and_unavailable_then_back_with_nothing_lost() {
    let (rt, mut redis, fake, dir) = setup();
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
