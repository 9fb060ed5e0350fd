"""comfy-reality: a Python client for the comfy-reality gRPC runtime in front of ComfyUI.

    from comfy_reality import Client

    with Client("127.0.0.1:50051") as client:
        execution = client.execute("workflow.json", priority="high")
        for event in client.watch(execution.id):
            print(event.sequence, event.task_event.event_type)
        done = client.wait(execution.id)

Methods return the generated protobuf messages (`Execution` is
`comfyreality.runtime.v1.workflow_pb2.WorkflowExecution`); every RPC error is raised as a
`ComfyRealityError` subclass.
"""

from comfyreality.runtime.v1.event_service_pb2 import Event
from comfyreality.runtime.v1.task_pb2 import TaskEventType, TaskPriority, TaskStatus
from comfyreality.runtime.v1.workflow_pb2 import WorkflowDefinition
from comfyreality.runtime.v1.workflow_pb2 import WorkflowExecution as Execution

from ._async_client import AsyncClient
from ._channel import PEM, TLS, ClientCertificate
from ._client import Client, EventStream
from ._errors import (
    AlreadyExistsError,
    ComfyRealityError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from ._requests import WorkflowRef

__version__ = "0.1.0"

__all__ = [
    "TLS",
    "PEM",
    "ClientCertificate",
    "AlreadyExistsError",
    "AsyncClient",
    "Client",
    "ComfyRealityError",
    "DeadlineExceededError",
    "Event",
    "EventStream",
    "Execution",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "TaskEventType",
    "TaskPriority",
    "TaskStatus",
    "UnauthenticatedError",
    "UnavailableError",
    "WorkflowDefinition",
    "WorkflowRef",
    "__version__",
]
