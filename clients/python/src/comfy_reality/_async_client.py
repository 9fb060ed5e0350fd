"""The asyncio client, on grpc.aio: the same methods as Client, as coroutines and async
iterators."""

from __future__ import annotations

import asyncio
import builtins
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio
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
from ._client import HEALTH_CHECK, check_artifact, remaining, write_artifact
from ._errors import ComfyRealityError, UnavailableError, from_rpc_error
from ._streams import Resume, WatchEnd, is_terminal

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class AsyncClient:
    """The asyncio twin of Client: `async with AsyncClient("host:port") as client: ...`.

    The same arguments and methods as Client; the unary methods are coroutines, and `list`,
    `watch` and `events` are async iterators (stop one with `aclose()` or by cancelling the
    task that iterates it).
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
            grpc.aio.secure_channel(address, creds, options=opts)
            if creds is not None
            else grpc.aio.insecure_channel(address, options=opts)
        )
        self._executions = execution_service_pb2_grpc.ExecutionServiceStub(self._channel)
        self._events = event_service_pb2_grpc.EventServiceStub(self._channel)
        self._workflows = workflow_service_pb2_grpc.WorkflowServiceStub(self._channel)
        self._health: grpc.aio.UnaryUnaryMultiCallable[
            health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
        ] = self._channel.unary_unary(
            HEALTH_CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )

    @property
    def channel(self) -> grpc.aio.Channel:
        """The underlying channel, for the generated stubs of the other services."""
        return self._channel

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _unary(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Req, _Resp],
        request: _Req,
        deadline: float | None = None,
    ) -> _Resp:
        timeout = remaining(deadline) if deadline is not None else self._timeout
        try:
            return await method(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    # Executions -------------------------------------------------------------------------------

    async def execute(
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
        """See Client.execute."""
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
        return (await self._unary(self._executions.ExecuteWorkflow, request)).execution

    async def get(self, id: str) -> workflow_pb2.WorkflowExecution:
        """See Client.get."""
        return await self._get(id, None)

    async def _get(self, id: str, deadline: float | None) -> workflow_pb2.WorkflowExecution:
        request = execution_service_pb2.GetExecutionRequest(id=id)
        return (await self._unary(self._executions.GetExecution, request, deadline)).execution

    def list(
        self,
        *,
        status: _requests.StatusFilter = None,
        tags: Iterable[str] = (),
        workflow_id: str | None = None,
        page_size: int | None = None,
    ) -> AsyncIterator[workflow_pb2.WorkflowExecution]:
        """See Client.list: `async for execution in client.list(...)`."""
        if isinstance(tags, str):
            raise TypeError("tags must be an iterable of str, not one str")
        request = execution_service_pb2.ListExecutionsRequest(
            statuses=_requests.statuses_to_pb(status), tags=builtins.list(tags), page_size=page_size or 0
        )
        if workflow_id is not None:
            request.workflow_id = workflow_id

        async def pages() -> AsyncIterator[workflow_pb2.WorkflowExecution]:
            while True:
                page = await self._unary(self._executions.ListExecutions, request)
                for execution in page.executions:
                    yield execution
                if not page.next_page_token:
                    return
                request.page_token = page.next_page_token

        return pages()

    async def cancel(self, id: str, reason: str | None = None) -> workflow_pb2.WorkflowExecution:
        """See Client.cancel."""
        request = execution_service_pb2.CancelExecutionRequest(id=id)
        if reason is not None:
            request.reason = reason
        return (await self._unary(self._executions.CancelExecution, request)).execution

    def watch(self, id: str) -> AsyncGenerator[event_service_pb2.Event, None]:
        """See Client.watch: `async for event in client.watch(id)`."""
        return self._watch(id, None)

    async def wait(self, id: str, timeout: float | None = None) -> workflow_pb2.WorkflowExecution:
        """See Client.wait."""
        deadline = None if timeout is None else time.monotonic() + timeout
        events = self._watch(id, deadline)
        try:
            async for _ in events:
                pass
        finally:
            await events.aclose()
        return await self._get(id, deadline)

    async def _watch(
        self, id: str, deadline: float | None
    ) -> AsyncGenerator[event_service_pb2.Event, None]:
        resume = Resume(None)
        end: WatchEnd | None = None
        while True:
            opened_from_now = resume.after is None
            request = _requests.subscribe_request(resume.after, execution_ids=[id], include_node_events=True)
            call = self._events.SubscribeEvents(request, timeout=remaining(deadline), metadata=self._metadata)
            try:
                try:
                    # Established (headers in): nothing that happens from here on is missed.
                    await call.initial_metadata()
                    if end is None or opened_from_now:
                        execution = await self._get(id, deadline)
                        if is_terminal(execution):
                            return
                        end = WatchEnd(execution)
                    async for response in call:
                        event = resume.observe(response)
                        if event is None:
                            continue
                        yield event
                        if end.is_last(event):
                            return
                    raise UnavailableError("the event stream ended early", code=grpc.StatusCode.UNAVAILABLE)
                except grpc.RpcError as e:
                    raise from_rpc_error(e) from None
            except ComfyRealityError as error:
                delay = resume.backoff(error)
                if delay is None:
                    raise
                await asyncio.sleep(delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic())))
            finally:
                call.cancel()

    async def download(
        self, execution_id: str, artifact_path: str, dest: str | os.PathLike[str] | None = None
    ) -> bytes:
        """See Client.download."""
        request = execution_service_pb2.GetArtifactRequest(execution_id=execution_id, path=artifact_path)
        size: int | None = None
        parts: builtins.list[bytes] = []
        try:
            async for chunk in self._executions.GetArtifact(request, timeout=self._timeout, metadata=self._metadata):
                if size is None and chunk.HasField("size"):
                    size = chunk.size
                parts.append(chunk.data)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        data = check_artifact(b"".join(parts), size)
        if dest is not None:
            write_artifact(data, artifact_path, dest)
        return data

    # Workflows --------------------------------------------------------------------------------

    async def register_workflow(
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
        """See Client.register_workflow."""
        request = _requests.register_request(
            workflow, name=name, version=version, description=description, id=id, tags=tags, author=author
        )
        return (await self._unary(self._workflows.RegisterWorkflow, request)).workflow

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
    ) -> AsyncGenerator[event_service_pb2.Event, None]:
        """See Client.events: `async for event in client.events(...)`."""
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
        return self._events_body(first, after)

    async def _events_body(
        self, first: event_service_pb2.SubscribeEventsRequest, after: int | None
    ) -> AsyncGenerator[event_service_pb2.Event, None]:
        resume = Resume(after)
        request = first
        while True:
            if resume.after is not None:
                request = event_service_pb2.SubscribeEventsRequest()
                request.CopyFrom(first)
                request.after_sequence = resume.after
            call = self._events.SubscribeEvents(request, metadata=self._metadata)
            try:
                try:
                    async for response in call:
                        event = resume.observe(response)
                        if event is not None:
                            yield event
                    raise UnavailableError("the event stream ended", code=grpc.StatusCode.UNAVAILABLE)
                except grpc.RpcError as e:
                    raise from_rpc_error(e) from None
            except ComfyRealityError as error:
                delay = resume.backoff(error)
                if delay is None:
                    raise
                await asyncio.sleep(delay)
            finally:
                call.cancel()

    # Health -----------------------------------------------------------------------------------

    async def health(self, service: str = "") -> str:
        """See Client.health."""
        response = await self._unary(self._health, health_pb2.HealthCheckRequest(service=service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
