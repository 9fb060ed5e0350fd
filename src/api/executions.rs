//! ExecutionService handlers.

use std::pin::Pin;

use futures_util::Stream;
use tokio::io::AsyncReadExt;
use tonic::{Request, Response, Status};

use crate::pb::execution_service_server::ExecutionService;
use crate::pb::{
    CancelExecutionRequest, CancelExecutionResponse, ExecuteWorkflowRequest,
    ExecuteWorkflowResponse, GetArtifactRequest, GetArtifactResponse, GetExecutionRequest,
    GetExecutionResponse, ListExecutionsRequest, ListExecutionsResponse,
};
use crate::runtime::Runtime;

use super::convert;
use super::executions_convert::{self, execution_to_pb};
use super::record_span;
use super::status::invalid_argument;

/// Bytes per GetArtifact chunk.
const CHUNK_BYTES: usize = 64 * 1024;

/// Serves ExecutionService over the runtime's executor.
#[derive(Clone)]
pub struct ExecutionApi {
    /// The runtime handle.
    runtime: Runtime,
}

impl ExecutionApi {
    /// Handlers over `runtime`.
    pub fn new(runtime: Runtime) -> Self {
        Self { runtime }
    }
}

/// The stream GetArtifact answers with.
type ArtifactStream = Pin<Box<dyn Stream<Item = Result<GetArtifactResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExecutionService for ExecutionApi {
    async fn execute_workflow(
        &self,
        request: Request<ExecuteWorkflowRequest>,
    ) -> Result<Response<ExecuteWorkflowResponse>, Status> {
        let runtime = self.runtime.scoped(super::caller(&request));
        let request = executions_convert::execute_request(request.into_inner())
            .map_err(|e| invalid_argument(&e))?;
        if let crate::runtime::WorkflowSource::Registered { id, .. } = &request.workflow {
            record_span("workflow_id", id);
        }
        let view = runtime.execute(request).await?;
        record_span("execution_id", &view.execution.id);
        Ok(Response::new(ExecuteWorkflowResponse {
            execution: Some(execution_to_pb(&view)),
        }))
    }

    async fn get_execution(
        &self,
        request: Request<GetExecutionRequest>,
    ) -> Result<Response<GetExecutionResponse>, Status> {
        let runtime = self.runtime.scoped(super::caller(&request));
        let id =
            convert::require_id("id", &request.get_ref().id).map_err(|e| invalid_argument(&e))?;
        record_span("execution_id", &id);
        let view = runtime.get_execution(&id).await?;
        Ok(Response::new(GetExecutionResponse {
            execution: Some(execution_to_pb(&view)),
        }))
    }

    async fn list_executions(
        &self,
        request: Request<ListExecutionsRequest>,
    ) -> Result<Response<ListExecutionsResponse>, Status> {
        let runtime = self.runtime.scoped(super::caller(&request));
        let (filter, after, limit) = executions_convert::execution_listing(request.into_inner())
            .map_err(|e| invalid_argument(&e))?;
        let page = runtime.list_executions(&filter, after, limit)?;
        Ok(Response::new(ListExecutionsResponse {
            executions: page.items.iter().map(execution_to_pb).collect(),
            next_page_token: page
                .next
                .map(executions_convert::encode_execution_token)
                .unwrap_or_default(),
        }))
    }

    async fn cancel_execution(
        &self,
        request: Request<CancelExecutionRequest>,
    ) -> Result<Response<CancelExecutionResponse>, Status> {
        let runtime = self.runtime.scoped(super::caller(&request));
        let request = request.into_inner();
        let id = convert::require_id("id", &request.id).map_err(|e| invalid_argument(&e))?;
        record_span("execution_id", &id);
        let reason = request
            .reason
            .map(|r| r.trim().chars().take(1024).collect::<String>())
            .filter(|r| !r.is_empty());
        let view = runtime.cancel_execution(&id, reason).await?;
        Ok(Response::new(CancelExecutionResponse {
            execution: Some(execution_to_pb(&view)),
        }))
    }

    type GetArtifactStream = ArtifactStream;

    async fn get_artifact(
        &self,
        request: Request<GetArtifactRequest>,
    ) -> Result<Response<Self::GetArtifactStream>, Status> {
        let runtime = self.runtime.scoped(super::caller(&request));
        let request = request.into_inner();
        let id = convert::require_id("execution_id", &request.execution_id)
            .map_err(|e| invalid_argument(&e))?;
        record_span("execution_id", &id);
        if request.path.is_empty() {
            return Err(invalid_argument(&crate::model::ValidationError::single(
                "path",
                "must be one of the execution's artifacts",
            )));
        }
        let artifact = runtime.open_artifact(&id, &request.path).await?;
        let size = artifact.size;
        let content_type = artifact.content_type;
        let file = artifact.file;
        let stream =
            futures_util::stream::unfold((Some(file), true), move |(file, first)| async move {
                let mut file = file?;
                let mut buffer = vec![0u8; CHUNK_BYTES];
                let mut filled = 0;
                while filled < CHUNK_BYTES {
                    match file.read(&mut buffer[filled..]).await {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(error) => {
                            tracing::error!(%error, "artifact read failed");
                            return Some((
                                Err(Status::internal("the artifact could not be read")),
                                (None, false),
                            ));
                        }
                    }
                }
                if filled == 0 && !first {
                    return None;
                }
                buffer.truncate(filled);
                let chunk = GetArtifactResponse {
                    data: buffer,
                    content_type: first.then(|| content_type.to_owned()),
                    size: first.then_some(size),
                };
                let next = if filled < CHUNK_BYTES {
                    None
                } else {
                    Some(file)
                };
                Some((Ok(chunk), (next, false)))
            });
        Ok(Response::new(Box::pin(stream)))
    }
}
