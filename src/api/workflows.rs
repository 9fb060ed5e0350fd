//! WorkflowService handlers.

use tonic::{Request, Response, Status};

use crate::pb::workflow_service_server::WorkflowService;
use crate::pb::{
    DeleteWorkflowRequest, DeleteWorkflowResponse, GetWorkflowRequest, GetWorkflowResponse,
    ListWorkflowsRequest, ListWorkflowsResponse, RegisterWorkflowRequest, RegisterWorkflowResponse,
    ValidateWorkflowRequest, ValidateWorkflowResponse,
};
use crate::runtime::Runtime;

use super::convert::{self, workflow_to_pb};
use super::record_span;
use super::status::invalid_argument;

/// Serves WorkflowService over the runtime's workflow registry.
#[derive(Clone)]
pub struct WorkflowApi {
    /// The runtime handle.
    runtime: Runtime,
}

impl WorkflowApi {
    /// Handlers over `runtime`.
    pub fn new(runtime: Runtime) -> Self {
        Self { runtime }
    }
}

#[tonic::async_trait]
impl WorkflowService for WorkflowApi {
    async fn register_workflow(
        &self,
        request: Request<RegisterWorkflowRequest>,
    ) -> Result<Response<RegisterWorkflowResponse>, Status> {
        let runtime = self.runtime.scoped(super::caller(&request));
        let register = convert::register_workflow_request(request.into_inner())
            .map_err(|e| invalid_argument(&e))?;
        let workflow = runtime.register_workflow(register).await?;
        record_span("workflow_id", &workflow.id);
        Ok(Response::new(RegisterWorkflowResponse {
            workflow: Some(workflow_to_pb(&workflow)),
        }))
    }

    async fn get_workflow(
        &self,
        request: Request<GetWorkflowRequest>,
    ) -> Result<Response<GetWorkflowResponse>, Status> {
        let runtime = self.runtime.scoped(super::caller(&request));
        let request = request.into_inner();
        let id = convert::require_id("id", &request.id).map_err(|e| invalid_argument(&e))?;
        record_span("workflow_id", &id);
        let workflow = runtime.get_workflow(&id, request.version.as_deref())?;
        Ok(Response::new(GetWorkflowResponse {
            workflow: Some(workflow_to_pb(&workflow)),
        }))
    }

    async fn list_workflows(
        &self,
        request: Request<ListWorkflowsRequest>,
    ) -> Result<Response<ListWorkflowsResponse>, Status> {
        let runtime = self.runtime.scoped(super::caller(&request));
        let (filter, after, limit) =
            convert::workflow_listing(request.into_inner()).map_err(|e| invalid_argument(&e))?;
        let page = runtime.list_workflows(&filter, after.as_ref(), limit)?;
        Ok(Response::new(ListWorkflowsResponse {
            workflows: page.items.iter().map(workflow_to_pb).collect(),
            next_page_token: page
                .next
                .as_ref()
                .map(convert::encode_workflow_token)
                .unwrap_or_default(),
        }))
    }

    async fn delete_workflow(
        &self,
        request: Request<DeleteWorkflowRequest>,
    ) -> Result<Response<DeleteWorkflowResponse>, Status> {
        let runtime = self.runtime.scoped(super::caller(&request));
        let request = request.into_inner();
        let id = convert::require_id("id", &request.id).map_err(|e| invalid_argument(&e))?;
        record_span("workflow_id", &id);
        let deleted_versions = runtime
            .delete_workflow(&id, request.version.as_deref())
            .await?;
        Ok(Response::new(DeleteWorkflowResponse { deleted_versions }))
    }

    async fn validate_workflow(
        &self,
        request: Request<ValidateWorkflowRequest>,
    ) -> Result<Response<ValidateWorkflowResponse>, Status> {
        let runtime = self.runtime.scoped(super::caller(&request));
        let (source, options) = super::executions_convert::validate_request(request.into_inner())
            .map_err(|e| invalid_argument(&e))?;
        if let crate::runtime::WorkflowSource::Registered { id, .. } = &source {
            record_span("workflow_id", id);
        }
        let report = runtime.validate_workflow(&source, &options)?;
        Ok(Response::new(
            super::executions_convert::validation_report_to_pb(&report),
        ))
    }
}
