//! AdminService handlers.

use chrono::Utc;
use tonic::{Request, Response, Status};

use crate::gpu::GpuSnapshot;
use crate::pb::admin_service_server::AdminService;
use crate::pb::{
    API_VERSION, BackendDevice, BackendInfo, BackendState, GetRuntimeInfoRequest,
    GetRuntimeInfoResponse, LocalGpu, QueueDepth,
};
use crate::runtime::Runtime;

use super::convert::{config_to_pb, priority_to_pb, timestamp};

/// Serves AdminService.
#[derive(Clone)]
pub struct AdminApi {
    /// The runtime handle.
    runtime: Runtime,
}

impl AdminApi {
    /// Handlers over `runtime`.
    pub fn new(runtime: Runtime) -> Self {
        Self { runtime }
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn get_runtime_info(
        &self,
        _request: Request<GetRuntimeInfoRequest>,
    ) -> Result<Response<GetRuntimeInfoResponse>, Status> {
        let config = self.runtime.config();
        let started_at = self.runtime.started_at();
        let uptime = (Utc::now() - started_at).to_std().unwrap_or_default();
        let load = self.runtime.executor().load();
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Ok(Response::new(GetRuntimeInfoResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            api_version: API_VERSION.to_owned(),
            config: Some(config_to_pb(config)),
            backends: config
                .servers
                .iter()
                .zip(self.runtime.executor().backends())
                .enumerate()
                .map(|(index, (server, (name, state)))| BackendInfo {
                    url: super::convert::redacted_url(&server.url),
                    state: match (state.probed, state.up) {
                        (false, _) => BackendState::Unknown,
                        (true, true) => BackendState::Up,
                        (true, false) => BackendState::Down,
                    }
                    .into(),
                    name,
                    node_classes: state
                        .catalogue
                        .as_ref()
                        .map_or(0, |c| u32::try_from(c.len()).unwrap_or(u32::MAX)),
                    last_error: state.last_error,
                    running: count(load.on_backend.get(index).copied().unwrap_or(0)),
                    devices: state.devices.iter().map(backend_device).collect(),
                    placement_hold: state.placement_hold,
                    pid: state.pid,
                })
                .collect(),
            started_at: Some(timestamp(started_at)),
            uptime_seconds: uptime.as_secs_f64(),
            queue: load
                .queued
                .iter()
                .map(|&(priority, queued)| QueueDepth {
                    priority: priority_to_pb(priority).into(),
                    queued: count(queued),
                })
                .collect(),
            local_gpus: self
                .runtime
                .gpu()
                .snapshots()
                .into_iter()
                .map(local_gpu)
                .collect(),
            local_gpus_unavailable: self.runtime.gpu().unavailable_reason().map(str::to_owned),
        }))
    }
}

fn backend_device(device: &crate::runtime::BackendDevice) -> BackendDevice {
    BackendDevice {
        name: device.name.clone(),
        r#type: device.device_type.clone(),
        index: device.index,
        vram_total_bytes: device.vram_total,
        vram_free_bytes: device.vram_free,
        torch_vram_total_bytes: device.torch_vram_total,
        torch_vram_free_bytes: device.torch_vram_free,
    }
}

fn local_gpu(snapshot: GpuSnapshot) -> LocalGpu {
    let reading = snapshot.reading;
    LocalGpu {
        index: snapshot.device.index,
        name: snapshot.device.name,
        uuid: snapshot.device.uuid,
        memory_used_bytes: reading.map(|r| r.memory_used_bytes),
        memory_total_bytes: reading.map(|r| r.memory_total_bytes),
        utilization_ratio: reading.and_then(|r| r.utilization_ratio),
        temperature_celsius: reading.and_then(|r| r.temperature_celsius),
        power_watts: reading.and_then(|r| r.power_watts),
        error: snapshot.error,
    }
}
