"""The synchronous client, on grpc's blocking API."""

from __future__ import annotations

import builtins
import os
import pathlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Protocol, TypeVar

import grpc
from grpc_health.v1 import health_pb2

from comfyreality.runtime.v1 import (
    event_service_pb2,
    event_service_pb2_grpc,
    execution_service_pb2,
    execution_service_pb2_grpc,
    workflow_pb2,
    workflow_service_pb2_grpc,
)

from . import _requests
from ._channel import TLS, ClientCertificate, call_metadata, credentials
from ._errors import ComfyRealityError, DeadlineExceededError, UnavailableError, from_rpc_error
from ._streams import Resume, WatchEnd, is_terminal

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")

HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def remaining(deadline: float | None) -> float | None:
    """Seconds left until `deadline` (time.monotonic), None for no deadline."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceededError("the deadline passed", code=grpc.StatusCode.DEADLINE_EXCEEDED)
    return left


def artifact_bytes(chunks: Iterable[execution_service_pb2.GetArtifactResponse]) -> bytes:
    """Joins an artifact's chunks, checking the size its first chunk announced."""
    size: int | None = None
    parts: builtins.list[bytes] = []
    for chunk in chunks:
        if size is None and chunk.HasField("size"):
            size = chunk.size
        parts.append(chunk.data)
    return check_artifact(b"".join(parts), size)


def check_artifact(data: bytes, size: int | None) -> bytes:
    if size is not None and len(data) != size:
        raise ComfyRealityError(
            f"the artifact ended after {len(data)} of {size} bytes", code=grpc.StatusCode.DATA_LOSS
        )
    return data


def write_artifact(data: bytes, artifact_path: str, dest: str | os.PathLike[str]) -> None:
    """Writes `data` to `dest`, or into it under the artifact's file name when it is a folder."""
    target = pathlib.Path(dest)
    if target.is_dir():
        target = target / pathlib.PurePosixPath(artifact_path).name
    target.write_bytes(data)


class _Cancellable(Protocol):
    def cancel(self) -> bool: ...


class EventStream(Iterator[event_service_pb2.Event]):
    """An iterator of events that can be stopped from any thread with `close()` (or `with`)."""

    def __init__(self, body: Callable[[EventStream], Iterator[event_service_pb2.Event]]) -> None:
        self._lock = threading.Lock()
        self._call: _Cancellable | None = None
        self._closed = False
        self._body = body(self)

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> event_service_pb2.Event:
        return next(self._body)

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Ends the stream: a blocked `next()` returns StopIteration in the iterating thread."""
        with self._lock:
            self._closed = True
            call = self._call
        if call is not None:
            call.cancel()
        try:
            self._body.close()  # type: ignore[attr-defined]
        except ValueError:
            pass  # running in another thread: the cancelled call ends it there

    def _attach(self, call: _Cancellable) -> bool:
        """Makes `call` the one close() cancels; False (and cancelled) when already closed."""
        with self._lock:
            self._call = call
            closed = self._closed
        if closed:
            call.cancel()
        return not closed


class Client:
    """A blocking client for comfy-reality.

    `address` is `host:port`. `api_key` goes out as `authorization: Bearer <key>` on every
    call. `tls`: None/False for plaintext, True for TLS with the system's roots,
    grpc.ChannelCredentials, or a CA certificate to trust as PEM bytes or a PEM file path.
    `client_certificate`: (certificate chain, private key), each PEM bytes or a file path, for
    a server that takes client certificates (mTLS; implies TLS).
    `timeout` is the deadline in seconds of each unary call and each download (not of the
    event streams). Use it as a context manager, or call `close()`.

    Every RPC error is raised as a ComfyRealityError subclass (see comfy_reality.errors).
    """

    def __init__(
        self,
        address: str,
        *,
        api_key: str | None = None,
        tls: TLS = None,
        client_certificate: ClientCertificate = None,
        timeout: float | None = None,
        options: Iterable[tuple[str, Any]] = (),
    ) -> None:
        creds = credentials(tls, client_certificate)
        opts = list(options)
        self._metadata = call_metadata(api_key)
        self._timeout = timeout
        self._channel = (
            grpc.secure_channel(address, creds, options=opts)
            if creds is not None
            else grpc.insecure_channel(address, options=opts)
        )
        self._executions = execution_service_pb2_grpc.ExecutionServiceStub(self._channel)
        self._events = event_service_pb2_grpc.EventServiceStub(self._channel)
        self._workflows = workflow_service_pb2_grpc.WorkflowServiceStub(self._channel)
        self._health: grpc.UnaryUnaryMultiCallable[
            health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
        ] = self._channel.unary_unary(
            HEALTH_CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )

    @property
    def channel(self) -> grpc.Channel:
        """The underlying channel, for the generated stubs of the other services."""
        return self._channel

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _unary(
        self, method: grpc.UnaryUnaryMultiCallable[_Req, _Resp], request: _Req, deadline: float | None = None
    ) -> _Resp:
        timeout = remaining(deadline) if deadline is not None else self._timeout
        try:
            return method(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    # Executions -------------------------------------------------------------------------------

    def execute(
        self,
        workflow: _requests.WorkflowInput,
        *,
        priority: _requests.Priority | None = None,
        tags: Iterable[str] = (),
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        timeout_seconds: float | None = None,
        max_retries: int | None = None,
        idempotency_key: str | None = None,
        name: str | None = None,
    ) -> workflow_pb2.WorkflowExecution:
        """Queues a workflow and returns the admitted execution (PENDING, QUEUED or RUNNING).

        `workflow`: an API-format graph (a dict), the path of its JSON file (str or Path; a
        file that is not JSON raises ValueError before anything is sent), or a WorkflowRef.
        `priority`: "LOW", "NORMAL", "HIGH", "CRITICAL" (any case) or a TaskPriority value.
        `overrides`: `{node_id: {input: value}}` literal inputs for this run; ints stay exact
        up to 64 bits (a seed of 18446744073709551615 arrives as it is), bools, floats, strs.
        """
        request = _requests.execute_request(
            workflow,
            priority=priority,
            tags=tags,
            overrides=overrides,
            timeout_seconds=timeout_seconds,
            max_retries=max_retries,
            idempotency_key=idempotency_key,
            name=name,
        )
        return self._unary(self._executions.ExecuteWorkflow, request).execution

    def get(self, id: str) -> workflow_pb2.WorkflowExecution:
        """One execution with its tasks. NotFoundError when there is none."""
        return self._get(id, None)

    def _get(self, id: str, deadline: float | None) -> workflow_pb2.WorkflowExecution:
        request = execution_service_pb2.GetExecutionRequest(id=id)
        return self._unary(self._executions.GetExecution, request, deadline).execution

    def list(
        self,
        *,
        status: _requests.StatusFilter = None,
        tags: Iterable[str] = (),
        workflow_id: str | None = None,
        page_size: int | None = None,
    ) -> Iterator[workflow_pb2.WorkflowExecution]:
        """Every matching execution, oldest first, fetching page after page as it is iterated.

        `status`: one status ("COMPLETED", any case, or a TaskStatus value) or several.
        """
        if isinstance(tags, str):
            raise TypeError("tags must be an iterable of str, not one str")
        request = execution_service_pb2.ListExecutionsRequest(
            statuses=_requests.statuses_to_pb(status), tags=builtins.list(tags), page_size=page_size or 0
        )
        if workflow_id is not None:
            request.workflow_id = workflow_id

        def pages() -> Iterator[workflow_pb2.WorkflowExecution]:
            while True:
                page = self._unary(self._executions.ListExecutions, request)
                yield from page.executions
                if not page.next_page_token:
                    return
                request.page_token = page.next_page_token

        return pages()

    def cancel(self, id: str, reason: str | None = None) -> workflow_pb2.WorkflowExecution:
        """Cancels an execution; returns it CANCELLED, or RUNNING until ComfyUI confirms the
        interrupt. A finished execution comes back unchanged."""
        request = execution_service_pb2.CancelExecutionRequest(id=id)
        if reason is not None:
            request.reason = reason
        return self._unary(self._executions.CancelExecution, request).execution

    def watch(self, id: str) -> EventStream:
        """The execution's events (its root task's and its nodes'), as they happen, ending
        right after the event that ends it (at once when it has already ended).

        One server stream, no polling; a dropped stream is reopened where it stopped, with no
        gap and no duplicate (after a few failed reconnects in a row the error is raised).
        """
        return EventStream(lambda stream: self._watch(stream, id, None))

    def wait(self, id: str, timeout: float | None = None) -> workflow_pb2.WorkflowExecution:
        """Waits until the execution ends and returns it. DeadlineExceededError (also a
        TimeoutError) after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with EventStream(lambda stream: self._watch(stream, id, deadline)) as events:
            for _ in events:
                pass
        return self._get(id, deadline)

    def _watch(self, stream: EventStream, id: str, deadline: float | None) -> Iterator[event_service_pb2.Event]:
        resume = Resume(None)
        end: WatchEnd | None = None
        while True:
            opened_from_now = resume.after is None
            request = _requests.subscribe_request(resume.after, execution_ids=[id], include_node_events=True)
            call = self._events.SubscribeEvents(request, timeout=remaining(deadline), metadata=self._metadata)
            if not stream._attach(call):
                return
            try:
                try:
                    # Established (headers in): nothing that happens from here on is missed.
                    call.initial_metadata()
                    if end is None or opened_from_now:
                        execution = self._get(id, deadline)
                        if is_terminal(execution):
                            return
                        end = WatchEnd(execution)
                    for response in call:
                        event = resume.observe(response)
                        if event is None:
                            continue
                        yield event
                        if end.is_last(event):
                            return
                    raise UnavailableError("the event stream ended early", code=grpc.StatusCode.UNAVAILABLE)
                except grpc.RpcError as e:
                    if stream.closed:
                        return
                    raise from_rpc_error(e) from None
            except ComfyRealityError as error:
                delay = resume.backoff(error)
                if delay is None:
                    raise
                time.sleep(delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic())))
            finally:
                call.cancel()

    def download(
        self, execution_id: str, artifact_path: str, dest: str | os.PathLike[str] | None = None
    ) -> bytes:
        """One of the execution's `artifacts`, whole. When `dest` is given the bytes are also
        written there (into it, under the artifact's file name, when it is a folder)."""
        request = execution_service_pb2.GetArtifactRequest(execution_id=execution_id, path=artifact_path)
        try:
            data = artifact_bytes(
                self._executions.GetArtifact(request, timeout=self._timeout, metadata=self._metadata)
            )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        if dest is not None:
            write_artifact(data, artifact_path, dest)
        return data

    # Workflows --------------------------------------------------------------------------------

    def register_workflow(
        self,
        workflow: Mapping[str, Any] | str | os.PathLike[str],
        *,
        name: str,
        version: str,
        description: str | None = None,
        id: str | None = None,
        tags: Iterable[str] = (),
        author: str | None = None,
    ) -> workflow_pb2.WorkflowDefinition:
        """Registers an API-format graph (dict or JSON file path) as a named, versioned
        workflow; run it with `execute(WorkflowRef(definition.id))`."""
        request = _requests.register_request(
            workflow, name=name, version=version, description=description, id=id, tags=tags, author=author
        )
        return self._unary(self._workflows.RegisterWorkflow, request).workflow

    # Events -----------------------------------------------------------------------------------

    def events(
        self,
        after: int | None = 0,
        *,
        execution_ids: Iterable[str] = (),
        task_ids: Iterable[str] = (),
        workflow_ids: Iterable[str] = (),
        tags: Iterable[str] = (),
        include_node_events: bool = False,
        event_types: Iterable[str | int] = (),
        categories: Iterable[str | int] = (),
        min_level: str | int | None = None,
    ) -> EventStream:
        """Every matching event after sequence `after` (0: from the oldest retained; None: from
        now), then live ones, until closed. Dropped streams are reopened where they stopped."""
        first = _requests.subscribe_request(
            after,
            execution_ids=execution_ids,
            task_ids=task_ids,
            workflow_ids=workflow_ids,
            tags=tags,
            include_node_events=include_node_events,
            event_types=event_types,
            categories=categories,
            min_level=min_level,
        )
        return EventStream(lambda stream: self._events_body(stream, first, after))

    def _events_body(
        self, stream: EventStream, first: event_service_pb2.SubscribeEventsRequest, after: int | None
    ) -> Iterator[event_service_pb2.Event]:
        resume = Resume(after)
        request = first
        while True:
            if resume.after is not None:
                request = event_service_pb2.SubscribeEventsRequest()
                request.CopyFrom(first)
                request.after_sequence = resume.after
            call = self._events.SubscribeEvents(request, metadata=self._metadata)
            if not stream._attach(call):
                return
            try:
                try:
                    for response in call:
                        event = resume.observe(response)
                        if event is not None:
                            yield event
                    raise UnavailableError("the event stream ended", code=grpc.StatusCode.UNAVAILABLE)
                except grpc.RpcError as e:
                    if stream.closed:
                        return
                    raise from_rpc_error(e) from None
            except ComfyRealityError as error:
                delay = resume.backoff(error)
                if delay is None:
                    raise
                time.sleep(delay)
            finally:
                call.cancel()

    # Health -----------------------------------------------------------------------------------

    def health(self, service: str = "") -> str:
        """The serving status name of `service` ("" is the whole server): "SERVING",
        "NOT_SERVING", ..."""
        response = self._unary(self._health, health_pb2.HealthCheckRequest(service=service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
