"""Pure conversions from Python values to request messages, shared by Client and AsyncClient.
Everything here raises TypeError or ValueError locally, before anything is sent."""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Union

from comfyreality.runtime.v1 import (
    event_service_pb2,
    events_pb2,
    execution_service_pb2,
    task_pb2,
    workflow_service_pb2,
)

__all__ = [
    "WorkflowRef",
    "WorkflowInput",
    "execute_request",
    "input_value",
    "overrides_to_pb",
    "priority_to_pb",
    "statuses_to_pb",
    "workflow_json",
]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1


@dataclass(frozen=True)
class WorkflowRef:
    """A registered workflow: its id and, optionally, a version (default: the highest)."""

    id: str
    version: str | None = None

    def to_pb(self) -> execution_service_pb2.WorkflowRef:
        ref = execution_service_pb2.WorkflowRef(id=self.id)
        if self.version is not None:
            ref.version = self.version
        return ref


#: What `execute` runs: an API-format graph (a mapping), a path to its JSON file (`str` or
#: `os.PathLike`), or a registered workflow.
WorkflowInput = Union[Mapping[str, Any], str, "os.PathLike[str]", WorkflowRef, execution_service_pb2.WorkflowRef]

#: A priority: "LOW", "NORMAL", "HIGH", "CRITICAL" (any case, with or without the TASK_PRIORITY_
#: prefix) or a TaskPriority value.
Priority = Union[str, task_pb2.TaskPriority.ValueType]

#: A status filter: one status ("COMPLETED" in any case, or a TaskStatus value), several, or None.
StatusFilter = Union[str, task_pb2.TaskStatus.ValueType, Iterable[Union[str, task_pb2.TaskStatus.ValueType]], None]

#: A literal override value: int (exact, up to 64 bits signed or unsigned), float, str or bool.
OverrideValue = Union[bool, int, float, str, execution_service_pb2.InputValue]


def workflow_json(workflow: Mapping[str, Any] | str | os.PathLike[str]) -> str:
    """The JSON text of an API-format graph given as a mapping or as a path to a JSON file.

    Raises ValueError when the file is not JSON or not a JSON object, TypeError for any other type.
    """
    if isinstance(workflow, Mapping):
        try:
            # Python ints are exact in JSON text, so a 64-bit seed survives.
            return json.dumps(workflow, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"the workflow cannot be written as JSON: {e}") from e
    if isinstance(workflow, (str, os.PathLike)):
        path = pathlib.Path(workflow)
        text = path.read_text(encoding="utf-8")
        try:
            parsed = json.loads(text)
        except ValueError as e:
            raise ValueError(f"workflow file {path} is not JSON: {e}") from e
        if not isinstance(parsed, dict):
            raise ValueError(f"workflow file {path} holds JSON but not an object of nodes")
        # The file's own text goes out, so its numbers keep exactly what was written.
        return text
    raise TypeError(
        f"workflow must be a mapping, a path to a JSON file or a WorkflowRef, not {type(workflow).__name__}"
    )


def _enum_value(value: object, enum: Any, prefix: str, what: str) -> int:
    """Accepts the enum's int value, its full name, or its short name in any case."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a name or a {prefix.lower()} value, not bool")
    if isinstance(value, int):
        if value == 0 or value not in enum.values():
            raise ValueError(f"{what} {value} is not one of {', '.join(_short_names(enum, prefix))}")
        return value
    if isinstance(value, str):
        name = value.strip().upper()
        if not name.startswith(prefix):
            name = prefix + name
        if name == prefix + "UNSPECIFIED" or name not in enum.keys():
            raise ValueError(f"{what} {value!r} is not one of {', '.join(_short_names(enum, prefix))}")
        return int(enum.Value(name))
    raise TypeError(f"{what} must be a name or an enum value, not {type(value).__name__}")


def _short_names(enum: Any, prefix: str) -> list[str]:
    return [name[len(prefix) :] for name in enum.keys() if not name.endswith("UNSPECIFIED")]


def priority_to_pb(priority: object) -> task_pb2.TaskPriority.ValueType:
    """`"HIGH"` (any case), `"TASK_PRIORITY_HIGH"` or `TaskPriority.TASK_PRIORITY_HIGH`."""
    return task_pb2.TaskPriority.ValueType(_enum_value(priority, task_pb2.TaskPriority, "TASK_PRIORITY_", "priority"))


def status_to_pb(status: object) -> task_pb2.TaskStatus.ValueType:
    """`"COMPLETED"` (any case), `"TASK_STATUS_COMPLETED"` or `TaskStatus.TASK_STATUS_COMPLETED`."""
    return task_pb2.TaskStatus.ValueType(_enum_value(status, task_pb2.TaskStatus, "TASK_STATUS_", "status"))


def statuses_to_pb(status: object) -> list[task_pb2.TaskStatus.ValueType]:
    """One status or an iterable of them; None means no filter."""
    if status is None:
        return []
    if isinstance(status, (str, int)):
        return [status_to_pb(status)]
    if isinstance(status, Iterable):
        return [status_to_pb(s) for s in status]
    raise TypeError(f"status must be a status or an iterable of them, not {type(status).__name__}")


def input_value(value: object, where: str = "value") -> execution_service_pb2.InputValue:
    """One literal override value as an InputValue, with ints mapped exactly.

    bool -> bool_value (checked before int: bool is an int in Python); an int in int64 range ->
    int_value, above it up to 2**64 - 1 -> uint_value; a finite float -> double_value;
    str -> string_value. Raises ValueError for an int outside both ranges or a non-finite
    float, TypeError for any other type.
    """
    if isinstance(value, execution_service_pb2.InputValue):
        return value
    if isinstance(value, bool):
        return execution_service_pb2.InputValue(bool_value=value)
    if isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            return execution_service_pb2.InputValue(int_value=value)
        if _INT64_MAX < value <= _UINT64_MAX:
            return execution_service_pb2.InputValue(uint_value=value)
        raise ValueError(f"{where}: {value} does not fit in a 64-bit signed or unsigned integer")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value} is not a finite number")
        return execution_service_pb2.InputValue(double_value=value)
    if isinstance(value, str):
        return execution_service_pb2.InputValue(string_value=value)
    raise TypeError(f"{where}: an override is an int, float, str or bool, not {type(value).__name__}")


def overrides_to_pb(
    overrides: Mapping[str, Mapping[str, object]] | None,
) -> dict[str, execution_service_pb2.NodeOverrides]:
    """`{node_id: {input: value}}` as the request's typed overrides."""
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise TypeError(f"overrides must be a mapping of node id to inputs, not {type(overrides).__name__}")
    out: dict[str, execution_service_pb2.NodeOverrides] = {}
    for node_id, inputs in overrides.items():
        if not isinstance(node_id, str):
            raise TypeError(f"overrides: node id {node_id!r} must be a str")
        if not isinstance(inputs, Mapping):
            raise TypeError(f"overrides[{node_id!r}] must be a mapping of input name to value")
        node = execution_service_pb2.NodeOverrides()
        for name, value in inputs.items():
            if not isinstance(name, str):
                raise TypeError(f"overrides[{node_id!r}]: input name {name!r} must be a str")
            node.inputs[name].CopyFrom(input_value(value, f"overrides[{node_id!r}][{name!r}]"))
        out[node_id] = node
    return out


def execute_request(
    workflow: WorkflowInput,
    *,
    priority: Priority | None = None,
    tags: Iterable[str] = (),
    overrides: Mapping[str, Mapping[str, object]] | None = None,
    timeout_seconds: float | None = None,
    max_retries: int | None = None,
    idempotency_key: str | None = None,
    name: str | None = None,
) -> execution_service_pb2.ExecuteWorkflowRequest:
    """The ExecuteWorkflowRequest for `Client.execute` (see there)."""
    if isinstance(tags, str):
        raise TypeError("tags must be an iterable of str, not one str")
    request = execution_service_pb2.ExecuteWorkflowRequest(tags=list(tags))
    if isinstance(workflow, WorkflowRef):
        request.workflow_ref.CopyFrom(workflow.to_pb())
    elif isinstance(workflow, execution_service_pb2.WorkflowRef):
        request.workflow_ref.CopyFrom(workflow)
    else:
        request.workflow_json = workflow_json(workflow)
    if priority is not None:
        request.priority = priority_to_pb(priority)
    for node_id, node in overrides_to_pb(overrides).items():
        request.overrides[node_id].CopyFrom(node)
    if timeout_seconds is not None:
        if isinstance(timeout_seconds, bool) or not isinstance(timeout_seconds, (int, float)):
            raise TypeError("timeout_seconds must be a number")
        request.timeout_seconds = float(timeout_seconds)
    if max_retries is not None:
        if isinstance(max_retries, bool) or not isinstance(max_retries, int):
            raise TypeError("max_retries must be an int")
        if not 0 <= max_retries <= 2**32 - 1:
            raise ValueError(f"max_retries {max_retries} is out of range")
        request.max_retries = max_retries
    if idempotency_key is not None:
        request.idempotency_key = idempotency_key
    if name is not None:
        request.name = name
    return request


def register_request(
    workflow: Mapping[str, Any] | str | os.PathLike[str],
    *,
    name: str,
    version: str,
    description: str | None = None,
    id: str | None = None,
    tags: Iterable[str] = (),
    author: str | None = None,
) -> workflow_service_pb2.RegisterWorkflowRequest:
    """The RegisterWorkflowRequest for `Client.register_workflow`."""
    if isinstance(tags, str):
        raise TypeError("tags must be an iterable of str, not one str")
    request = workflow_service_pb2.RegisterWorkflowRequest(
        name=name, version=version, workflow_json=workflow_json(workflow), tags=list(tags)
    )
    if description is not None:
        request.description = description
    if id is not None:
        request.workflow_id = id
    if author is not None:
        request.author = author
    return request


def subscribe_request(
    after: int | None,
    *,
    execution_ids: Iterable[str] = (),
    task_ids: Iterable[str] = (),
    workflow_ids: Iterable[str] = (),
    tags: Iterable[str] = (),
    include_node_events: bool = False,
    event_types: Iterable[str | int] = (),
    categories: Iterable[str | int] = (),
    min_level: str | int | None = None,
) -> event_service_pb2.SubscribeEventsRequest:
    """The SubscribeEventsRequest for `events` and `watch`; `after=None` means from now.

    `event_types` ("completed", "TASK_EVENT_TYPE_COMPLETED" or TaskEventType values),
    `categories` ("system", ... or EventCategory values) and `min_level` ("warning", ... or a
    LogLevel value) take names in any case, with or without their prefix."""
    for what, value in (("execution_ids", execution_ids), ("task_ids", task_ids),
                        ("workflow_ids", workflow_ids), ("tags", tags),
                        ("event_types", event_types), ("categories", categories)):
        if isinstance(value, str):
            raise TypeError(f"{what} must be an iterable, not one str")
    request = event_service_pb2.SubscribeEventsRequest(
        execution_ids=list(execution_ids),
        task_ids=list(task_ids),
        workflow_ids=list(workflow_ids),
        tags=list(tags),
        include_node_events=include_node_events,
        event_types=[
            task_pb2.TaskEventType.ValueType(
                _enum_value(t, task_pb2.TaskEventType, "TASK_EVENT_TYPE_", "event type")
            )
            for t in event_types
        ],
        categories=[
            events_pb2.EventCategory.ValueType(
                _enum_value(c, events_pb2.EventCategory, "EVENT_CATEGORY_", "category")
            )
            for c in categories
        ],
    )
    if min_level is not None:
        request.min_level = events_pb2.LogLevel.ValueType(
            _enum_value(min_level, events_pb2.LogLevel, "LOG_LEVEL_", "min_level")
        )
    if after is not None:
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise ValueError(f"after must be a sequence number >= 0 or None, not {after!r}")
        request.after_sequence = after
    return request
