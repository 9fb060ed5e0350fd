"""Where an event subscription got to, so that it can be reopened without gap or duplicate,
and when a watch ends; shared by Client and AsyncClient (no I/O here)."""

from __future__ import annotations

import grpc

from comfyreality.runtime.v1 import event_service_pb2, task_pb2, workflow_pb2

from ._errors import ComfyRealityError

#: An execution in one of these states will not change any more.
TERMINAL_STATUSES = frozenset(
    {task_pb2.TASK_STATUS_COMPLETED, task_pb2.TASK_STATUS_FAILED, task_pb2.TASK_STATUS_CANCELLED}
)
#: A root task event of one of these types is the execution's last.
TERMINAL_EVENTS = frozenset(
    {task_pb2.TASK_EVENT_TYPE_COMPLETED, task_pb2.TASK_EVENT_TYPE_FAILED, task_pb2.TASK_EVENT_TYPE_CANCELLED}
)
#: Reconnects in a row, with nothing received in between, before the error is raised.
MAX_RECONNECTS = 5


class Resume:
    """The last sequence a subscription saw (event or heartbeat) and its failed reconnects."""

    def __init__(self, after: int | None) -> None:
        #: Resume after this sequence; None: nothing seen yet on a stream opened from now.
        self.after = after
        #: Reconnects in a row that received nothing.
        self.failures = 0

    def observe(self, response: event_service_pb2.SubscribeEventsResponse) -> event_service_pb2.Event | None:
        """The event to hand out, or None for a heartbeat (or a repeat, which never should come)."""
        which = response.WhichOneof("item")
        if which == "heartbeat":
            self.failures = 0
            last = response.heartbeat.last_sequence
            if self.after is None or last > self.after:
                self.after = last
            return None
        if which != "event":
            return None
        self.failures = 0
        event = response.event
        if self.after is not None and event.sequence <= self.after:
            return None
        self.after = event.sequence
        return event

    def backoff(self, error: ComfyRealityError) -> float | None:
        """Seconds to wait before reopening the stream after `error`, or None to raise it.

        A dropped stream (UNAVAILABLE: shutdown, connection reset) or a subscriber that fell
        behind (RESOURCE_EXHAUSTED) is reopened after the last sequence seen, or after the
        `last_sequence` the server named in the error when nothing was seen yet.
        """
        if error.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
            return None
        self.failures += 1
        if self.failures > MAX_RECONNECTS:
            return None
        if self.after is None:
            named = error.metadata.get("last_sequence")
            if named is not None and named.isdigit():
                self.after = int(named)
        return float(min(0.05 * (1 << (self.failures - 1)), 1.0))


class WatchEnd:
    """Recognises the event that ends a watch: the root task's COMPLETED, FAILED or CANCELLED."""

    def __init__(self, execution: workflow_pb2.WorkflowExecution) -> None:
        self.execution_id = execution.id
        self.root_task_id = execution.root_task_id if execution.HasField("root_task_id") else ""

    def is_last(self, event: event_service_pb2.Event) -> bool:
        if event.WhichOneof("payload") != "task_event":
            return False
        task_event = event.task_event
        if task_event.event_type not in TERMINAL_EVENTS:
            return False
        if self.root_task_id:
            return task_event.task_id == self.root_task_id
        return event.execution_id == self.execution_id and not event.node


def is_terminal(execution: workflow_pb2.WorkflowExecution) -> bool:
    return execution.status in TERMINAL_STATUSES
