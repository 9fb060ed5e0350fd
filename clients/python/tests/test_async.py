"""AsyncClient against the real server and the fake ComfyUI."""

from __future__ import annotations

import asyncio
import pathlib

import grpc
import pytest

from comfy_reality import AsyncClient, Event, InvalidArgumentError, NotFoundError, TaskEventType, TaskStatus
from conftest import Server, delay_workflow, image_workflow, unique
from test_server import fake_file


def test_async_execute_watch_wait_download(server: Server, tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.address, timeout=30) as client:
            assert await client.health() == "SERVING"
            tag = unique("async")
            execution = await client.execute(image_workflow(unique("async")), tags=[tag], priority="LOW")
            events: list[Event] = [event async for event in client.watch(execution.id)]
            # Empty when the execution ended before the watch began, as documented.
            if events:
                sequences = [e.sequence for e in events]
                assert sequences == sorted(set(sequences))
                assert events[-1].task_event.task_id == execution.root_task_id
                assert events[-1].task_event.event_type == TaskEventType.TASK_EVENT_TYPE_COMPLETED

            done = await client.wait(execution.id, timeout=30)
            assert done.status == TaskStatus.TASK_STATUS_COMPLETED
            data = await client.download(done.id, done.artifacts[0], tmp_path / "a.png")
            assert data == fake_file(server, done.artifacts[0]) == (tmp_path / "a.png").read_bytes()
            assert [e.id async for e in client.list(tags=[tag], page_size=1)] == [execution.id]

            with pytest.raises(NotFoundError) as missing:
                await client.get("no-such-execution")
            assert missing.value.code == grpc.StatusCode.NOT_FOUND
            with pytest.raises(InvalidArgumentError) as invalid:
                await client.execute({"1": {"inputs": {}}})
            assert invalid.value.field_violations == [('workflow_json["1"].class_type', "is required")]

    asyncio.run(scenario())


def test_async_cancel_and_overrides(server: Server) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.address, timeout=30) as client:
            execution = await client.execute(delay_workflow(400, steps=400), overrides={"1": {"nonce": 2**64 - 1}})
            async for event in client.watch(execution.id):
                if event.node and event.task_event.event_type == TaskEventType.TASK_EVENT_TYPE_PROGRESS:
                    break
            await client.cancel(execution.id)
            done = await client.wait(execution.id, timeout=15)
            assert done.status == TaskStatus.TASK_STATUS_CANCELLED

    asyncio.run(scenario())
