//! AdminService handlers.

use chrono::Utc;
use tonic::{Request, Response, Status};

use crate::pb::admin_service_server::AdminService;
use crate::pb::{
    API_VERSION, BackendInfo, BackendState, GetRuntimeInfoRequest, GetRuntimeInfoResponse,
    QueueDepth,
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
        }))
    }
}
