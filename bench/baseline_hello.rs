//! The submit baseline: a minimal tonic server answering `ExecuteWorkflow`
//! with a fixed execution, built from the same generated code as the
//! runtime. It decodes the same request and encodes a response of the same
//! type, and does nothing else: whatever the runtime spends above it is the
//! runtime's own cost.

use std::pin::Pin;

use comfy_reality::pb::execution_service_server::{ExecutionService, ExecutionServiceServer};
use comfy_reality::pb::{
    CancelExecutionRequest, CancelExecutionResponse, ExecuteWorkflowRequest,
    ExecuteWorkflowResponse, GetArtifactRequest, GetArtifactResponse, GetExecutionRequest,
    GetExecutionResponse, ListExecutionsRequest, ListExecutionsResponse, WorkflowExecution,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Answers every submit with a new id and nothing else.
#[derive(Debug, Default)]
struct Hello;

#[tonic::async_trait]
impl ExecutionService for Hello {
    async fn execute_workflow(
        &self,
        request: Request<ExecuteWorkflowRequest>,
    ) -> Result<Response<ExecuteWorkflowResponse>, Status> {
        let request = request.into_inner();
        Ok(Response::new(ExecuteWorkflowResponse {
            execution: Some(WorkflowExecution {
                id: uuid::Uuid::new_v4().to_string(),
                tags: request.tags,
                ..WorkflowExecution::default()
            }),
        }))
    }

    async fn get_execution(
        &self,
        _: Request<GetExecutionRequest>,
    ) -> Result<Response<GetExecutionResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn list_executions(
        &self,
        _: Request<ListExecutionsRequest>,
    ) -> Result<Response<ListExecutionsResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn cancel_execution(
        &self,
        _: Request<CancelExecutionRequest>,
    ) -> Result<Response<CancelExecutionResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    type GetArtifactStream =
        Pin<Box<dyn Stream<Item = Result<GetArtifactResponse, Status>> + Send + 'static>>;

    async fn get_artifact(
        &self,
        _: Request<GetArtifactRequest>,
    ) -> Result<Response<Self::GetArtifactStream>, Status> {
        Err(Status::unimplemented("baseline"))
    }
}

/// Serves the baseline on a free port, printing `listening on ADDR`.
pub async fn serve() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    println!("hello baseline listening on {addr}");
    tonic::transport::Server::builder()
        .add_service(ExecutionServiceServer::new(Hello))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await
        .expect("serve");
}
