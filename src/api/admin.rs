//! AdminService handlers.

use chrono::Utc;
use tonic::{Request, Response, Status};

use crate::pb::admin_service_server::AdminService;
use crate::pb::{
    API_VERSION, BackendInfo, BackendState, GetRuntimeInfoRequest, GetRuntimeInfoResponse,
};
use crate::runtime::Runtime;

use super::convert::{config_to_pb, timestamp};

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
        Ok(Response::new(GetRuntimeInfoResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            api_version: API_VERSION.to_owned(),
            config: Some(config_to_pb(config)),
            // Backends are not probed until the executor drives them; until
            // then their state is honestly UNKNOWN.
            backends: config
                .servers
                .iter()
                .map(|s| BackendInfo {
                    url: super::convert::redacted_url(&s.url),
                    state: BackendState::Unknown.into(),
                })
                .collect(),
            started_at: Some(timestamp(started_at)),
            uptime_seconds: uptime.as_secs_f64(),
        }))
    }
}
