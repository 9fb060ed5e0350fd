"""The SDK's own logic, without the real server: value conversions, and the watch, error and
metadata handling against an in-process gRPC server that plays a scripted part."""

from __future__ import annotations

import json
import math
import pathlib
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from comfy_reality import (
    Client,
    ComfyRealityError,
    Event,
    NotFoundError,
    ResourceExhaustedError,
    TaskPriority,
    TaskStatus,
    UnavailableError,
    WorkflowRef,
)
from comfy_reality._requests import (
    execute_request,
    input_value,
    overrides_to_pb,
    priority_to_pb,
    subscribe_request,
)
from comfyreality.runtime.v1 import (
    event_service_pb2,
    event_service_pb2_grpc,
    events_pb2,
    execution_service_pb2,
    execution_service_pb2_grpc,
    task_pb2,
    workflow_pb2,
)

# Overrides ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind", "stored"),
    [
        (0, "int_value", 0),
        (-1, "int_value", -1),
        (-(2**63), "int_value", -(2**63)),
        (2**63 - 1, "int_value", 2**63 - 1),
        (2**63, "uint_value", 2**63),
        (2**64 - 1, "uint_value", 2**64 - 1),
        (True, "bool_value", True),
        (False, "bool_value", False),
        (0.5, "double_value", 0.5),
        (1e300, "double_value", 1e300),
        ("a cat", "string_value", "a cat"),
        ("", "string_value", ""),
    ],
)
def test_override_values_keep_their_exact_type_and_value(value: object, kind: str, stored: object) -> None:
    pb = input_value(value)
    assert pb.WhichOneof("kind") == kind
    assert getattr(pb, kind) == stored
    assert type(getattr(pb, kind)) is type(stored)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (2**64, ValueError),
        (-(2**63) - 1, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        (None, TypeError),
        ([1], TypeError),
        ({"a": 1}, TypeError),
        (b"bytes", TypeError),
    ],
)
def test_override_values_that_cannot_be_sent_are_refused(value: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        input_value(value)


def test_overrides_become_typed_node_inputs() -> None:
    pb = overrides_to_pb({"3": {"seed": 2**64 - 1, "cfg": 7.5, "text": "hi", "flag": True}, "4": {}})
    assert set(pb) == {"3", "4"}
    inputs = pb["3"].inputs
    assert inputs["seed"].uint_value == 2**64 - 1
    assert inputs["cfg"].double_value == 7.5
    assert inputs["text"].string_value == "hi"
    assert inputs["flag"].bool_value is True
    with pytest.raises(TypeError):
        overrides_to_pb({3: {"seed": 1}})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        overrides_to_pb({"3": 1})  # type: ignore[dict-item]


def test_execute_request_fields() -> None:
    request = execute_request(
        {"1": {"class_type": "X", "inputs": {"seed": 2**64 - 1}}},
        priority="critical",
        tags=["a", "b"],
        overrides={"1": {"seed": 5}},
        timeout_seconds=2,
        max_retries=0,
        idempotency_key="k",
        name="n",
    )
    assert json.loads(request.workflow_json)["1"]["inputs"]["seed"] == 2**64 - 1
    assert request.priority == TaskPriority.TASK_PRIORITY_CRITICAL
    assert list(request.tags) == ["a", "b"]
    assert request.overrides["1"].inputs["seed"].int_value == 5
    assert request.timeout_seconds == 2.0
    assert request.HasField("max_retries") and request.max_retries == 0
    assert request.idempotency_key == "k" and request.name == "n"

    bare = execute_request(WorkflowRef("wf"))
    assert bare.workflow_ref.id == "wf" and not bare.workflow_ref.HasField("version")
    assert not bare.HasField("priority") and not bare.HasField("max_retries")
    assert execute_request(WorkflowRef("wf", "1.2.0")).workflow_ref.version == "1.2.0"


@pytest.mark.parametrize("name", ["HIGH", "high", "High", "TASK_PRIORITY_HIGH", TaskPriority.TASK_PRIORITY_HIGH])
def test_priority_names_in_any_case(name: object) -> None:
    assert priority_to_pb(name) == TaskPriority.TASK_PRIORITY_HIGH


@pytest.mark.parametrize("name", ["urgent", "UNSPECIFIED", 0, 99, True, 1.0])
def test_unknown_priorities_are_refused(name: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        priority_to_pb(name)


def test_workflow_files_must_hold_a_json_object(tmp_path: pathlib.Path) -> None:
    array = tmp_path / "array.json"
    array.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not an object"):
        execute_request(array)
    with pytest.raises(FileNotFoundError):
        execute_request(tmp_path / "missing.json")
    with pytest.raises(TypeError):
        execute_request(42)  # type: ignore[arg-type]
    text = '{"1": {"class_type": "X", "inputs": {"seed": 18446744073709551615}}}'
    good = tmp_path / "good.json"
    good.write_text(text)
    assert execute_request(good).workflow_json == text  # sent as written


# A scripted server ----------------------------------------------------------------------------

ROOT = "root-task"


def event(
    sequence: int, task_id: str = "node-task", kind: task_pb2.TaskEventType.ValueType = task_pb2.TASK_EVENT_TYPE_PROGRESS
) -> event_service_pb2.SubscribeEventsResponse:
    return event_service_pb2.SubscribeEventsResponse(
        event=event_service_pb2.Event(
            sequence=sequence,
            execution_id="ex",
            task_id=task_id,
            node=task_id != ROOT,
            task_event=task_pb2.TaskEvent(task_id=task_id, event_type=kind, sequence=sequence),
        )
    )


def heartbeat(last: int) -> event_service_pb2.SubscribeEventsResponse:
    return event_service_pb2.SubscribeEventsResponse(heartbeat=event_service_pb2.Heartbeat(last_sequence=last))


class RichStatus(grpc.Status):
    """A status with google.rpc details in `grpc-status-details-bin`, as the server sends them."""

    def __init__(self, code: grpc.StatusCode, message: str, *details: Any) -> None:
        status = status_pb2.Status(code=code.value[0], message=message)
        for detail in details:
            status.details.add().Pack(detail)
        self.code = code
        self.details = message
        self.trailing_metadata = (("grpc-status-details-bin", status.SerializeToString()),)


rich_status = RichStatus


class Scripted(event_service_pb2_grpc.EventServiceServicer, execution_service_pb2_grpc.ExecutionServiceServicer):
    """Each SubscribeEvents call plays the next script: a list of responses, then maybe an error."""

    def __init__(self, scripts: list[tuple[list[event_service_pb2.SubscribeEventsResponse], grpc.Status | None]]) -> None:
        self.scripts = scripts
        self.after: list[int | None] = []
        self.metadata: list[dict[str, str]] = []
        self.lock = threading.Lock()

    def _record(self, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.metadata.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})

    def SubscribeEvents(
        self, request: event_service_pb2.SubscribeEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[event_service_pb2.SubscribeEventsResponse]:
        self._record(context)
        with self.lock:
            self.after.append(request.after_sequence if request.HasField("after_sequence") else None)
            script = self.scripts.pop(0) if self.scripts else ([], rich_status(grpc.StatusCode.UNAVAILABLE, "gone"))
        context.send_initial_metadata(())
        responses, error = script
        yield from responses
        if error is not None:
            context.abort_with_status(error)

    def GetExecution(
        self, request: execution_service_pb2.GetExecutionRequest, context: grpc.ServicerContext
    ) -> execution_service_pb2.GetExecutionResponse:
        self._record(context)
        if request.id != "ex":
            context.abort_with_status(
                rich_status(
                    grpc.StatusCode.NOT_FOUND,
                    f"execution {request.id} not found",
                    error_details_pb2.ErrorInfo(reason="WorkflowError", domain="comfy-reality"),
                )
            )
        return execution_service_pb2.GetExecutionResponse(
            execution=workflow_pb2.WorkflowExecution(id="ex", status=task_pb2.TASK_STATUS_RUNNING, root_task_id=ROOT)
        )

    def ExecuteWorkflow(
        self, request: execution_service_pb2.ExecuteWorkflowRequest, context: grpc.ServicerContext
    ) -> execution_service_pb2.ExecuteWorkflowResponse:
        self._record(context)
        context.abort_with_status(
            rich_status(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "the queue is full",
                error_details_pb2.ErrorInfo(reason="ResourceError"),
                error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2, nanos=500_000_000)),
            )
        )
        raise AssertionError("abort_with_status returns by raising")


@pytest.fixture
def scripted() -> Iterator[tuple[Scripted, str]]:
    servicer = Scripted([])  # type: ignore[abstract]  # the stubs' servicers are abstract, grpc's are not
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    event_service_pb2_grpc.add_EventServiceServicer_to_server(servicer, server)
    execution_service_pb2_grpc.add_ExecutionServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=None)


def test_watch_resumes_dropped_streams_without_gap_or_duplicate(scripted: tuple[Scripted, str]) -> None:
    servicer, address = scripted
    behind = rich_status(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "subscriber behind",
        error_details_pb2.ErrorInfo(reason="EventError", metadata={"last_sequence": "6"}),
    )
    servicer.scripts = [
        ([event(1), heartbeat(3), event(4)], rich_status(grpc.StatusCode.UNAVAILABLE, "shutting down")),
        # A replayed event (4) must not come out twice.
        ([event(4), event(5), event(6)], behind),
        ([heartbeat(8)], rich_status(grpc.StatusCode.UNAVAILABLE, "connection reset")),
        ([event(9), event(10, ROOT, task_pb2.TASK_EVENT_TYPE_COMPLETED), event(11)], None),
    ]
    with Client(address, api_key="secret-key") as client:
        events: list[Event] = list(client.watch("ex"))
    assert [e.sequence for e in events] == [1, 4, 5, 6, 9, 10]
    assert servicer.after == [None, 4, 6, 8]
    assert all(m.get("authorization") == "Bearer secret-key" for m in servicer.metadata)
    assert len(servicer.metadata) == 5  # 4 subscriptions + 1 GetExecution (the stream was never lost from now)


def test_watch_gives_up_after_a_few_failed_reconnects(scripted: tuple[Scripted, str]) -> None:
    servicer, address = scripted
    with Client(address) as client:
        with pytest.raises(UnavailableError):
            list(client.watch("ex"))
    assert len(servicer.after) == 6  # the first try and 5 reconnects


def test_error_details_decode(scripted: tuple[Scripted, str]) -> None:
    _, address = scripted
    with Client(address) as client:
        with pytest.raises(ResourceExhaustedError) as exhausted:
            client.execute({"1": {"class_type": "X", "inputs": {}}})
        assert exhausted.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert exhausted.value.reason == "ResourceError"
        assert exhausted.value.retry_after == 2.5
        with pytest.raises(NotFoundError) as missing:
            client.get("nope")
        assert isinstance(missing.value, ComfyRealityError)
        assert missing.value.reason == "WorkflowError"
        assert missing.value.message == "execution nope not found"
        assert missing.value.retry_after is None and missing.value.field_violations == []


def test_the_sdk_uses_the_same_code_numbers_as_google_rpc() -> None:
    assert grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] == code_pb2.RESOURCE_EXHAUSTED
    assert TaskStatus.Name(TaskStatus.TASK_STATUS_COMPLETED) == "TASK_STATUS_COMPLETED"


def test_event_filters_take_names_in_any_case() -> None:
    request = subscribe_request(
        5,
        event_types=["completed", "TASK_EVENT_TYPE_FAILED"],
        categories=["system"],
        min_level="Warning",
    )
    assert request.after_sequence == 5
    assert [task_pb2.TaskEventType.Name(t) for t in request.event_types] == [
        "TASK_EVENT_TYPE_COMPLETED",
        "TASK_EVENT_TYPE_FAILED",
    ]
    assert [events_pb2.EventCategory.Name(c) for c in request.categories] == ["EVENT_CATEGORY_SYSTEM"]
    assert events_pb2.LogLevel.Name(request.min_level) == "LOG_LEVEL_WARNING"
    assert not subscribe_request(None).HasField("after_sequence")
    with pytest.raises(ValueError, match="event type"):
        subscribe_request(0, event_types=["exploded"])
    with pytest.raises(ValueError, match="min_level"):
        subscribe_request(0, min_level="unspecified")
    with pytest.raises(TypeError):
        subscribe_request(0, categories="system")
