//! GPU awareness end to end: the real server on port 0 in front of fake ComfyUIs that report
//! configurable devices, with this host's GPUs seen through a fake probe (no GPU needed).
//! Placement by GPU memory fraction and device type, the devices and local GPUs
//! GetRuntimeInfo shows, the events about holds, and a task's peak GPU memory. Waits poll
//! with a bound; nothing sleeps to wait for a server.

mod common;

use std::sync::Arc;
use std::time::Duration;

use comfy_reality::config::{Config, ServerConfig};
use comfy_reality::gpu::{FakeGpuProbe, GpuMonitor, GpuProbe, GpuReading};
use comfy_reality::pb::{
    self, Event, GetRuntimeInfoRequest, GetRuntimeInfoResponse, SubscribeEventsRequest,
    TaskPriority, TaskStatus, event::Payload, subscribe_events_response::Item,
};
use comfy_reality_fake_comfyui::{DeviceType, FakeComfy, FakeOptions};
use common::TestServer;
use common::exec::{Harness, image_workflow, status};
use tempfile::TempDir;
use tokio_stream::StreamExt as _;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// Upper bound on polling loops: a hang guard, not a timing assertion.
const POLLS: usize = 1500;
const POLL_EVERY: Duration = Duration::from_millis(10);

/// One fake backend: its device and memory.
struct FakeSpec {
    device_type: DeviceType,
    vram_total_mb: Option<u64>,
}

fn spec(device_type: DeviceType, vram_total_mb: u64) -> FakeSpec {
    FakeSpec {
        device_type,
        vram_total_mb: Some(vram_total_mb),
    }
}

/// Fakes as specified (named gpu-0, gpu-1, ...), the server configured for them over `gpu`,
/// after `tune`; waits until every backend is up.
async fn start(
    fakes: &[FakeSpec],
    gpu: GpuMonitor,
    tune: impl FnOnce(&mut Config, &[FakeComfy]),
) -> Harness {
    let mut started = Vec::new();
    for fake in fakes {
        started.push(
            FakeComfy::start(FakeOptions {
                device_type: fake.device_type,
                vram_total_mb: fake.vram_total_mb,
                ..FakeOptions::default()
            })
            .await
            .expect("fake starts"),
        );
    }
    let artifacts = TempDir::new().expect("tempdir");
    let mut config = Config {
        servers: started
            .iter()
            .enumerate()
            .map(|(i, fake)| ServerConfig {
                name: Some(format!("gpu-{i}")),
                url: fake.base_url(),
                ..ServerConfig::default()
            })
            .collect(),
        ..Config::default()
    };
    config.scheduling.probe_interval_seconds = 0.05;
    config.scheduling.artifact_dir = Some(artifacts.path().to_path_buf());
    config.executor.gpu_sample_interval_seconds = 0.01;
    // `events_so_far` reads until the first heartbeat of an idle subscription.
    config.events.heartbeat_seconds = 0.2;
    tune(&mut config, &started);
    let server = TestServer::start_with_gpu(config, gpu).await;
    let harness = Harness {
        server,
        fakes: started,
        artifacts,
    };
    harness.wait_backends_up().await;
    harness
}

fn no_gpus() -> GpuMonitor {
    GpuMonitor::unavailable("no GPUs in this test")
}

async fn runtime_info(h: &Harness) -> GetRuntimeInfoResponse {
    h.server
        .admin()
        .get_runtime_info(GetRuntimeInfoRequest {})
        .await
        .expect("GetRuntimeInfo")
        .into_inner()
}

/// Polls GetRuntimeInfo until `check` holds.
async fn wait_info(
    h: &Harness,
    what: &str,
    check: impl Fn(&GetRuntimeInfoResponse) -> bool,
) -> GetRuntimeInfoResponse {
    for _ in 0..POLLS {
        let info = runtime_info(h).await;
        if check(&info) {
            return info;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    panic!("{what} never happened: {:?}", runtime_info(h).await);
}

fn backend<'a>(info: &'a GetRuntimeInfoResponse, name: &str) -> &'a pb::BackendInfo {
    info.backends
        .iter()
        .find(|b| b.name == name)
        .unwrap_or_else(|| panic!("no backend {name} in {info:?}"))
}

/// Runs one image workflow to completion; returns the backend it ran on.
async fn run_one(h: &Harness, tag: &str) -> String {
    let execution = h.execute(&image_workflow(tag), TaskPriority::Normal).await;
    let done = h.wait_end(&execution.id).await;
    assert_eq!(status(&done), TaskStatus::Completed, "{done:?}");
    done.backend
        .expect("a completed execution names its backend")
}

/// Every event so far, read from the start of the history until the heartbeat.
async fn events_so_far(h: &Harness) -> Vec<Event> {
    let mut stream = h
        .server
        .events()
        .subscribe_events(SubscribeEventsRequest {
            after_sequence: Some(0),
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    let mut events = Vec::new();
    while let Some(item) = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("the stream answers (hang guard)")
    {
        match item.expect("stream item").item {
            Some(Item::Event(event)) => events.push(event),
            Some(Item::Heartbeat(_)) | None => break,
        }
    }
    events
}

fn runtime_events<'a>(events: &'a [Event], event_type: &str) -> Vec<&'a pb::RuntimeEvent> {
    events
        .iter()
        .filter_map(|e| match &e.payload {
            Some(Payload::RuntimeEvent(r)) if r.event_type == event_type => Some(r),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_backend_above_the_vram_fraction_gets_no_new_work_until_it_falls_below() {
    let h = start(
        &[
            spec(DeviceType::Cuda, 10_000),
            spec(DeviceType::Cuda, 10_000),
        ],
        no_gpus(),
        |config, _| config.executor.gpu_memory_fraction = 0.5,
    )
    .await;
    // gpu-0 has more free memory at first: it wins while both are idle.
    h.fakes[1].set_vram_used_mb(1_000).unwrap();
    wait_info(&h, "gpu-1's memory in use seen", |info| {
        backend(info, "gpu-1")
            .devices
            .first()
            .and_then(|d| d.vram_free_bytes)
            == Some(9_000 * MIB)
    })
    .await;
    assert_eq!(run_one(&h, "before").await, "gpu-0");

    // Above half of its memory: held, and the work goes to gpu-1.
    h.fakes[0].set_vram_used_mb(6_000).unwrap();
    let info = wait_info(&h, "gpu-0 held", |info| {
        backend(info, "gpu-0").placement_hold.is_some()
    })
    .await;
    let hold = backend(&info, "gpu-0").placement_hold.clone().unwrap();
    assert!(
        hold.contains("GPU memory in use 6000 MiB of 10000 MiB")
            && hold.contains("gpu_memory_fraction 0.5"),
        "{hold}"
    );
    assert_eq!(backend(&info, "gpu-0").state, pb::BackendState::Up as i32);
    assert_eq!(backend(&info, "gpu-1").placement_hold, None);
    for i in 0..3 {
        assert_eq!(run_one(&h, &format!("held-{i}")).await, "gpu-1");
    }

    // Back below: it takes work again (and has the most free memory).
    h.fakes[0].set_vram_used_mb(0).unwrap();
    wait_info(&h, "gpu-0 released", |info| {
        backend(info, "gpu-0").placement_hold.is_none()
    })
    .await;
    assert_eq!(run_one(&h, "after").await, "gpu-0");

    let events = events_so_far(&h).await;
    let held = runtime_events(&events, "backend.held");
    assert_eq!(held.len(), 1, "one event per change: {held:?}");
    assert!(held[0].message.contains("backend gpu-0 gets no new work"));
    let data: serde_json::Value = serde_json::from_str(&held[0].data).unwrap();
    assert_eq!(data["reason"], "vram_above_fraction");
    assert_eq!(data["vram_used_bytes"], 6_000 * MIB);
    let released = runtime_events(&events, "backend.released");
    assert_eq!(released.len(), 1, "{released:?}");
    assert!(
        released[0]
            .message
            .contains("backend gpu-0 takes new work again")
    );
    h.server.shutdown().await;
}

#[tokio::test]
async fn idle_backends_go_by_prefer_gpu_types() {
    let h = start(
        &[
            FakeSpec {
                device_type: DeviceType::Cpu,
                vram_total_mb: None,
            },
            spec(DeviceType::Cuda, 24_576),
            spec(DeviceType::Mps, 65_536),
            spec(DeviceType::Directml, 8_192),
        ],
        no_gpus(),
        |config, _| {
            config.executor.prefer_gpu_types = vec!["directml".into(), "cuda".into()];
            config.executor.gpu_memory_fraction = 0.9;
        },
    )
    .await;
    let info = wait_info(&h, "every backend's devices read", |info| {
        info.backends.iter().all(|b| !b.devices.is_empty())
    })
    .await;
    // The fake's DirectML device reports torch's "privateuseone"; the runtime names it.
    assert_eq!(backend(&info, "gpu-3").devices[0].r#type, "directml");
    assert_eq!(backend(&info, "gpu-2").devices[0].r#type, "mps");
    // One at a time, each on idle backends: the preferred types in order, then unlisted GPU
    // types, then the CPU. Filling the winner's memory takes it out of the running.
    for (fill, winner) in [
        (None, "gpu-3"),
        (Some((3, 8_000)), "gpu-1"),
        (Some((1, 24_000)), "gpu-2"),
        (Some((2, 65_000)), "gpu-0"),
    ] {
        if let Some((index, used_mb)) = fill {
            h.fakes[index].set_vram_used_mb(used_mb).unwrap();
            let name = format!("gpu-{index}");
            wait_info(&h, "the backend held", |info| {
                backend(info, &name).placement_hold.is_some()
            })
            .await;
        }
        assert_eq!(run_one(&h, winner).await, winner);
    }
    h.server.shutdown().await;
}

#[tokio::test]
async fn with_gpu_disabled_only_cpu_backends_get_work() {
    let h = start(
        &[
            spec(DeviceType::Cuda, 24_576),
            FakeSpec {
                device_type: DeviceType::Cpu,
                vram_total_mb: None,
            },
        ],
        no_gpus(),
        |config, _| config.executor.enable_gpu = false,
    )
    .await;
    let info = wait_info(&h, "the cuda backend held", |info| {
        backend(info, "gpu-0").placement_hold.is_some()
    })
    .await;
    assert_eq!(
        backend(&info, "gpu-0").placement_hold.as_deref(),
        Some("it has a GPU and executor.enable_gpu is false")
    );
    assert_eq!(backend(&info, "gpu-1").placement_hold, None);
    for i in 0..3 {
        assert_eq!(run_one(&h, &format!("cpu-{i}")).await, "gpu-1");
    }
    let events = events_so_far(&h).await;
    let held = runtime_events(&events, "backend.held");
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(held[0].data.contains("gpu_disabled"));
    h.server.shutdown().await;
}

fn probe_with_two_gpus() -> Arc<FakeGpuProbe> {
    let probe = Arc::new(FakeGpuProbe::new());
    probe.add_gpu(0, "Fake H200", 141 * GIB);
    probe.add_gpu(1, "Fake L4", 24 * GIB);
    probe.set_reading(
        1,
        GpuReading {
            memory_used_bytes: 2 * GIB,
            memory_total_bytes: 24 * GIB,
            utilization_ratio: Some(0.75),
            temperature_celsius: Some(55.0),
            power_watts: Some(70.5),
        },
    );
    probe
}

#[tokio::test]
async fn runtime_info_shows_backend_devices_and_local_gpus() {
    let probe = probe_with_two_gpus();
    let gpu = GpuMonitor::new(Arc::clone(&probe) as Arc<dyn GpuProbe>);
    let h = start(&[spec(DeviceType::Cuda, 8_192)], gpu, |_, _| {}).await;
    h.fakes[0].set_vram_used_mb(2_048).unwrap();
    let info = wait_info(&h, "devices and a gpu sample", |info| {
        info.local_gpus
            .get(1)
            .is_some_and(|g| g.memory_used_bytes.is_some())
            && backend(info, "gpu-0")
                .devices
                .first()
                .is_some_and(|d| d.vram_free_bytes == Some(6_144 * MIB))
    })
    .await;
    assert_eq!(info.local_gpus_unavailable, None);
    assert_eq!(info.local_gpus.len(), 2);
    let l4 = &info.local_gpus[1];
    assert_eq!(
        (l4.index, l4.name.as_str(), l4.uuid.as_str()),
        (1, "Fake L4", "GPU-fake-0001")
    );
    assert_eq!(l4.memory_used_bytes, Some(2 * GIB));
    assert_eq!(l4.memory_total_bytes, Some(24 * GIB));
    assert_eq!(l4.utilization_ratio, Some(0.75));
    assert_eq!(l4.temperature_celsius, Some(55.0));
    assert_eq!(l4.power_watts, Some(70.5));
    let device = &backend(&info, "gpu-0").devices[0];
    assert_eq!(device.r#type, "cuda");
    assert_eq!(device.index, Some(0));
    assert_eq!(device.vram_total_bytes, Some(8_192 * MIB));
    assert_eq!(device.torch_vram_total_bytes, Some(2_048 * MIB));
    // The in-process fake listens in this very process: found by its port.
    assert_eq!(backend(&info, "gpu-0").pid, Some(std::process::id()));
    h.server.shutdown().await;

    // Without GPUs the answer says why.
    let h = start(&[spec(DeviceType::Cpu, 1_024)], no_gpus(), |_, _| {}).await;
    let info = runtime_info(&h).await;
    assert!(info.local_gpus.is_empty());
    assert_eq!(
        info.local_gpus_unavailable.as_deref(),
        Some("no GPUs in this test")
    );
    h.server.shutdown().await;
}

#[tokio::test]
async fn the_default_server_says_why_it_has_no_local_gpus_or_lists_them() {
    // NVML as this machine has it: without a driver, a reason; with one, the GPUs.
    let h = start(
        &[spec(DeviceType::Cpu, 1_024)],
        GpuMonitor::load_nvml(),
        |_, _| {},
    )
    .await;
    let info = runtime_info(&h).await;
    match info.local_gpus_unavailable.as_deref() {
        Some(reason) => {
            assert!(info.local_gpus.is_empty());
            assert!(!reason.is_empty());
        }
        None => assert!(!info.local_gpus.is_empty()),
    }
    h.server.shutdown().await;
}

#[tokio::test]
async fn a_task_gets_the_peak_gpu_memory_its_backend_process_held() {
    let probe = probe_with_two_gpus();
    let gpu = GpuMonitor::new(Arc::clone(&probe) as Arc<dyn GpuProbe>);
    // A configured pid: the process of "this backend" on the fake GPUs.
    let comfy_pid = 4242;
    let h = start(&[spec(DeviceType::Cuda, 8_192)], gpu, |config, _| {
        config.servers[0].pid = Some(comfy_pid);
    })
    .await;
    probe.set_process_memory(0, comfy_pid, 3 * GIB);
    probe.set_process_memory(1, comfy_pid, GIB / 2);
    probe.set_process_memory(0, 999, 50 * GIB);
    // The sampler has seen the process once it reports the GPU's memory in use.
    let info = wait_info(&h, "a sample with the process", |info| {
        info.local_gpus.first().and_then(|g| g.memory_used_bytes) == Some(53 * GIB)
            && info.local_gpus.get(1).and_then(|g| g.memory_used_bytes) == Some(GIB / 2)
    })
    .await;
    assert_eq!(backend(&info, "gpu-0").pid, Some(comfy_pid));

    let execution = h
        .execute(&image_workflow("peak"), TaskPriority::Normal)
        .await;
    let done = h.wait_end(&execution.id).await;
    assert_eq!(status(&done), TaskStatus::Completed, "{done:?}");
    let root_id = done.root_task_id.clone().unwrap();
    let root = done
        .tasks
        .iter()
        .find(|t| t.id == root_id)
        .expect("root task");
    let expected_mb = (3 * GIB + GIB / 2) as f64 / MIB as f64;
    assert_eq!(
        root.metrics.as_ref().and_then(|m| m.gpu_memory_mb),
        Some(expected_mb),
        "{root:?}"
    );
    let events = events_so_far(&h).await;
    let metric = events
        .iter()
        .find_map(|e| match &e.payload {
            Some(Payload::Metric(m))
                if m.name == "gpu_memory_mb"
                    && e.execution_id.as_deref() == Some(&execution.id) =>
            {
                Some(m)
            }
            _ => None,
        })
        .expect("a gpu_memory_mb metric for the execution");
    assert_eq!(metric.value, expected_mb);
    assert_eq!(metric.unit, "MiB");
    assert_eq!(metric.task_id.as_deref(), Some(root_id.as_str()));
    h.server.shutdown().await;
}

#[tokio::test]
async fn work_waits_while_every_backend_is_held_and_runs_when_one_frees_up() {
    let h = start(&[spec(DeviceType::Cuda, 10_000)], no_gpus(), |config, _| {
        config.executor.gpu_memory_fraction = 0.5
    })
    .await;
    h.fakes[0].set_vram_used_mb(9_000).unwrap();
    wait_info(&h, "gpu-0 held", |info| {
        backend(info, "gpu-0").placement_hold.is_some()
    })
    .await;
    let execution = h
        .execute(&image_workflow("waits"), TaskPriority::Normal)
        .await;
    // Queued, not failed, and nothing handed to the held backend.
    let info = wait_info(&h, "the execution counted as queued", |info| {
        info.queue.iter().map(|q| q.queued).sum::<u32>() == 1
    })
    .await;
    assert_eq!(backend(&info, "gpu-0").running, 0);
    assert_eq!(status(&h.get(&execution.id).await), TaskStatus::Queued);
    h.fakes[0].set_vram_used_mb(4_000).unwrap();
    let done = h.wait_end(&execution.id).await;
    assert_eq!(status(&done), TaskStatus::Completed, "{done:?}");
    assert_eq!(done.backend.as_deref(), Some("gpu-0"));
    h.server.shutdown().await;
}
