//! TaskService handlers.

use tonic::{Request, Response, Status};

use crate::pb::task_service_server::TaskService;
use crate::pb::{
    CancelTaskRequest, CancelTaskResponse, CreateTaskRequest, CreateTaskResponse, GetTaskRequest,
    GetTaskResponse, ListTasksRequest, ListTasksResponse, RetryTaskRequest, RetryTaskResponse,
    UpdateTaskProgressRequest, UpdateTaskProgressResponse,
};
use crate::runtime::Runtime;

use super::convert::{self, task_to_pb};
use super::record_span;
use super::status::invalid_argument;

/// Serves TaskService over the runtime's task registry.
#[derive(Clone)]
pub struct TaskApi {
    /// The runtime handle.
    runtime: Runtime,
}

impl TaskApi {
    /// Handlers over `runtime`.
    pub fn new(runtime: Runtime) -> Self {
        Self { runtime }
    }
}

#[tonic::async_trait]
impl TaskService for TaskApi {
    async fn create_task(
        &self,
        request: Request<CreateTaskRequest>,
    ) -> Result<Response<CreateTaskResponse>, Status> {
        let runtime = self.runtime.scoped(super::caller(&request));
        let new_task =
            convert::create_task_request(request.into_inner()).map_err(|e| invalid_argument(&e))?;
        let task = runtime.create_task(new_task).await?;
        record_span("task_id", &task.id);
        Ok(Response::new(CreateTaskResponse {
            task: Some(task_to_pb(&task)),
        }))
    }

    async fn get_task(
        &self,
        request: Request<GetTaskRequest>,
    ) -> Result<Response<GetTaskResponse>, Status> {
        let runtime = self.runtime.scoped(super::caller(&request));
        let id =
            convert::require_id("id", &request.get_ref().id).map_err(|e| invalid_argument(&e))?;
        record_span("task_id", &id);
        let task = runtime.get_task(&id)?;
        Ok(Response::new(GetTaskResponse {
            task: Some(task_to_pb(&task)),
        }))
    }

    async fn list_tasks(
        &self,
        request: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let runtime = self.runtime.scoped(super::caller(&request));
        let (filter, after, limit) =
            convert::task_listing(request.into_inner()).map_err(|e| invalid_argument(&e))?;
        let page = runtime.list_tasks(&filter, after, limit)?;
        Ok(Response::new(ListTasksResponse {
            tasks: page.items.iter().map(task_to_pb).collect(),
            next_page_token: page
                .next
                .map(convert::encode_task_token)
                .unwrap_or_default(),
        }))
    }

    async fn update_task_progress(
        &self,
        request: Request<UpdateTaskProgressRequest>,
    ) -> Result<Response<UpdateTaskProgressResponse>, Status> {
        let runtime = self.runtime.scoped(super::caller(&request));
        let (id, update) =
            convert::progress_update(request.into_inner()).map_err(|e| invalid_argument(&e))?;
        record_span("task_id", &id);
        let task = runtime.update_task_progress(&id, update).await?;
        Ok(Response::new(UpdateTaskProgressResponse {
            task: Some(task_to_pb(&task)),
        }))
    }

    async fn cancel_task(
        &self,
        request: Request<CancelTaskRequest>,
    ) -> Result<Response<CancelTaskResponse>, Status> {
        let runtime = self.runtime.scoped(super::caller(&request));
        let request = request.into_inner();
        let id = convert::cancel_request(&request).map_err(|e| invalid_argument(&e))?;
        record_span("task_id", &id);
        let task = runtime.cancel_task(&id, request.reason).await?;
        Ok(Response::new(CancelTaskResponse {
            task: Some(task_to_pb(&task)),
        }))
    }

    async fn retry_task(
        &self,
        request: Request<RetryTaskRequest>,
    ) -> Result<Response<RetryTaskResponse>, Status> {
        let runtime = self.runtime.scoped(super::caller(&request));
        let id =
            convert::require_id("id", &request.get_ref().id).map_err(|e| invalid_argument(&e))?;
        record_span("task_id", &id);
        let task = runtime.retry_task(&id).await?;
        Ok(Response::new(RetryTaskResponse {
            task: Some(task_to_pb(&task)),
        }))
    }
}
